"""Target splits: deterministic, disjoint, sized per subtask; user target files."""

import json

import pytest

from gtp_pipeline.core.targets import TargetSpec, TargetSpecError, load_target, target_frame

BBH_PAIR = ("date_understanding", "logical_deduction/three_objects")


def test_split_is_deterministic_and_disjoint_per_subtask():
    spec = TargetSpec(name="bbh2", kind="bigbench", tasks=BBH_PAIR, n_dev=3, n_test=20, seed=7)
    a = target_frame(load_target(spec)[0], spec.name)
    b = target_frame(load_target(spec)[0], spec.name)
    assert a.equals(b)
    counts = {(r["subtask"], r["split"]): r["len"] for r in a.group_by(["subtask", "split"]).len().to_dicts()}
    assert counts == {(t, "dev"): 3 for t in BBH_PAIR} | {(t, "test"): 20 for t in BBH_PAIR}
    dev = set(a.filter(a["split"] == "dev")["content_hash"])
    assert not dev & set(a.filter(a["split"] == "test")["content_hash"])


def test_another_seed_gives_another_dev_split():
    first = target_frame(load_target(TargetSpec(n_dev=5, n_test=5, seed=0))[0], "x")
    other = target_frame(load_target(TargetSpec(n_dev=5, n_test=5, seed=1))[0], "x")
    assert set(first.filter(first["split"] == "dev")["example_id"]) != set(
        other.filter(other["split"] == "dev")["example_id"]
    )


def test_user_target_files_keep_given_splits_and_choices(tmp_path):
    rows = [
        {
            "prompt": "2+2?",
            "response": "4",
            "choices": ["3", "4"],
            "answer_index": 1,
            "split": "dev",
            "subtask": "math",
        },
        {"prompt": "3+3?", "response": "6", "split": "test", "subtask": "math"},
        {"prompt": "Capital of France?", "response": "Paris", "subtask": "geo"},
        {"prompt": "Capital of Spain?", "response": "Madrid", "subtask": "geo"},
        {"prompt": "bad", "response": "x", "choices": ["a"], "answer_index": 5},
    ]
    path = tmp_path / "target.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    examples, rejects = load_target(TargetSpec(name="mine", kind="files", files=(str(path),), n_dev=1, n_test=5))
    frame = target_frame(examples, "mine")
    assert len(rejects) == 1
    math_dev = frame.filter((frame["subtask"] == "math") & (frame["split"] == "dev")).row(0, named=True)
    assert math_dev["choices"] == ["3", "4"] and math_dev["answer_index"] == 1
    assert frame.filter(frame["subtask"] == "geo")["split"].sort().to_list() == ["dev", "test"]


@pytest.mark.parametrize(
    "spec",
    [
        TargetSpec(kind="nope"),
        TargetSpec(kind="bigbench", tasks=("no_such_task",)),
        TargetSpec(kind="files", files=()),
        TargetSpec(n_dev=0),
        TargetSpec(kind="bigbench", tasks=("social_iqa",), n_dev=10_000),
    ],
)
def test_impossible_target_specs_raise_clear_errors(spec):
    with pytest.raises(TargetSpecError):
        load_target(spec)
