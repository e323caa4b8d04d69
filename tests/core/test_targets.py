"""Target splits: deterministic, disjoint, sized per subtask; user target files checked row by row."""

import hashlib
import json
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtp_pipeline.core.ingest.records import RejectReason
from gtp_pipeline.core.ingest.targets import TargetSpec, TargetSpecError, load_target, target_frame

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
        {"prompt": "Capital of Spain?", "response": "Madrid", "subtask": "geo"},
    ]
    path = tmp_path / "target.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    examples, rejects = load_target(TargetSpec(name="mine", kind="files", files=(str(path),), n_dev=1, n_test=5))
    frame = target_frame(examples, "mine")
    assert [(r.row, r.reason) for r in rejects] == [(5, RejectReason.BAD_VALUE), (6, RejectReason.DUPLICATE)]
    assert rejects[1].detail == f"repeats {path}:4"
    math_dev = frame.filter((frame["subtask"] == "math") & (frame["split"] == "dev")).row(0, named=True)
    assert math_dev["choices"] == ["3", "4"] and math_dev["answer_index"] == 1
    assert frame.filter(frame["subtask"] == "geo")["split"].sort().to_list() == ["dev", "test"]


GOOD = {"prompt": "Which is red?", "response": "apple", "choices": ["apple", "sky"], "answer_index": 0}
GOOD_ROWS = [
    GOOD,
    {"prompt": "Plain question?", "response": "Plain answer.", "split": None, "subtask": None},
    {"prompt": "Which is blue?", "choices": ["apple", " sky "], "answer_index": 1},  # response: the marked choice
    {"prompt": "Dev question?", "response": "Dev answer.", "split": "dev", "subtask": "other"},
]
BAD_ROWS = [
    ({**GOOD, "answer_index": "abc"}, RejectReason.WRONG_TYPE, "answer_index"),
    ({**GOOD, "answer_index": None}, RejectReason.WRONG_TYPE, "got null"),
    ({**GOOD, "answer_index": "1"}, RejectReason.WRONG_TYPE, "got string '1'"),
    ({**GOOD, "answer_index": 1.7}, RejectReason.WRONG_TYPE, "got number 1.7"),
    ({**GOOD, "answer_index": True}, RejectReason.WRONG_TYPE, "got boolean True"),
    ({**GOOD, "answer_index": 2}, RejectReason.BAD_VALUE, "outside choices 0..1"),
    ({**GOOD, "answer_index": -1}, RejectReason.BAD_VALUE, "outside choices"),
    ({k: v for k, v in GOOD.items() if k != "answer_index"}, RejectReason.MISSING_FIELD, "answer_index"),
    ({"prompt": "p?", "response": "r", "answer_index": 0}, RejectReason.BAD_VALUE, "answer_index without choices"),
    ({**GOOD, "choices": 5}, RejectReason.WRONG_TYPE, "got integer 5"),
    ({**GOOD, "choices": "abc"}, RejectReason.WRONG_TYPE, "got string 'abc'"),
    ({**GOOD, "choices": ["apple", 3]}, RejectReason.WRONG_TYPE, "choices[1] must be a string"),
    ({**GOOD, "choices": ["apple"]}, RejectReason.BAD_VALUE, "at least 2"),
    ({**GOOD, "choices": []}, RejectReason.BAD_VALUE, "at least 2"),
    ({**GOOD, "choices": ["apple", "  "]}, RejectReason.BAD_VALUE, "choices[1] is empty"),
    ({**GOOD, "choices": ["apple", " apple"]}, RejectReason.BAD_VALUE, "choices[1] repeats choices[0]"),
    ({**GOOD, "response": "sky"}, RejectReason.RESPONSE_MISMATCH, "'sky' is not choices[0] 'apple'"),
    ({**GOOD, "split": "train"}, RejectReason.BAD_VALUE, 'accepted: "dev", "test", or absent/null'),
    ({**GOOD, "split": "DEV"}, RejectReason.BAD_VALUE, "'DEV' is not accepted"),
    ({**GOOD, "split": 7}, RejectReason.WRONG_TYPE, "got integer 7"),
    ({**GOOD, "subtask": 3}, RejectReason.WRONG_TYPE, "subtask"),
    ({**GOOD, "subtask": ""}, RejectReason.BAD_VALUE, "subtask"),
    ({"prompt": "p?", "choices": ["a", "b"], "answer_index": 0, "response": 1}, RejectReason.WRONG_TYPE, "response"),
    ({"choices": ["a", "b"], "answer_index": 0}, RejectReason.MISSING_FIELD, "prompt"),
    ({"prompt": "p?"}, RejectReason.MISSING_FIELD, "response"),
]


@pytest.mark.parametrize(("bad", "reason", "detail"), BAD_ROWS, ids=[f"{r}:{d}" for _, r, d in BAD_ROWS])
def test_each_bad_target_row_is_refused_with_its_reason_and_good_rows_keep_their_values(tmp_path, bad, reason, detail):
    path = tmp_path / "target.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*GOOD_ROWS, bad]) + "\n")
    examples, rejects = load_target(TargetSpec(name="t", kind="files", files=(str(path),), n_dev=1, n_test=5))
    assert [(r.origin, r.row, r.reason) for r in rejects] == [(str(path), len(GOOD_ROWS) + 1, reason)]
    assert detail in rejects[0].detail
    kept = {ex.row: (ex.subtask, ex.prompt, ex.response, ex.choices, ex.answer_index, split) for ex, split in examples}
    assert kept[1][1:5] == ("Which is red?", "apple", ("apple", "sky"), 0)
    assert kept[2][:5] == ("target", "Plain question?", "Plain answer.", (), -1)
    assert kept[3][2:5] == ("sky", ("apple", "sky"), 1)  # choices cleaned like text; the response is the choice
    assert kept[4] == ("other", "Dev question?", "Dev answer.", (), -1, "dev")
    assert {kept[r][5] for r in (1, 2, 3)} == {"dev", "test"}


def test_rows_beyond_n_dev_plus_n_test_are_surplus_rejects_and_the_draw_is_unchanged(tmp_path):
    rows = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(10)]
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    spec = TargetSpec(name="m", kind="files", files=(str(path),), n_dev=2, n_test=3, seed=3)
    examples, rejects = load_target(spec)
    order = np.random.default_rng(int(hashlib.sha256(b"3:many").hexdigest()[:8], 16)).permutation(10)
    assert [(ex.row, split) for ex, split in examples] == [(int(i) + 1, "dev") for i in order[:2]] + [
        (int(i) + 1, "test") for i in order[2:5]
    ]
    assert sorted(r.row for r in rejects) == sorted(int(i) + 1 for i in order[5:])
    assert {r.reason for r in rejects} == {RejectReason.SURPLUS}
    assert "n_dev=2 + n_test=3" in rejects[0].detail and "'many'" in rejects[0].detail


def test_packaged_targets_account_for_every_row():
    spec = TargetSpec(name="s", kind="bigbench", tasks=("sports_understanding",), n_dev=5, n_test=50)
    examples, rejects = load_target(spec)
    assert len(examples) == 55
    assert sorted([ex.row for ex, _ in examples] + [r.row for r in rejects]) == list(range(1, 1001))
    duplicates = [r for r in rejects if r.reason == RejectReason.DUPLICATE]
    assert len(duplicates) == 14 and all(r.detail.startswith("repeats bigbench/") for r in duplicates)


def test_spec_errors_name_the_target_files_and_the_refused_rows(tmp_path):
    path = tmp_path / "tiny.jsonl"
    rows = [{"prompt": "Only one?", "response": "Yes."}, {"prompt": "x", "response": "y", "split": "train"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(TargetSpecError) as err:
        load_target(TargetSpec(name="t", kind="files", files=(str(path),), n_dev=1, n_test=1))
    assert str(path) in str(err.value) and "bad_value: 1" in str(err.value) and f"{path}:2" in str(err.value)


# The fuzz test: valid rows (plain and multiple choice), each with one field replaced by any value, valid or
# not, from WILD; checked against a plain restatement of the rules (`_expected`).
ABSENT = object()  # leaves the key out of the row
words = st.text(alphabet=string.ascii_letters + " é中", min_size=1, max_size=12)  # all-blank is invalid
prompts = st.one_of(st.sampled_from(["Q1?", " Q1? ", "Q2?"]), words)  # a small pool, so rows repeat
VALID_CHOICES = [["red", "green"], ["red", " green ", "blue"]]
plain_row = st.fixed_dictionaries({"prompt": prompts, "response": st.one_of(st.sampled_from(["A1.", " A1"]), words)})
choice_row = st.sampled_from(VALID_CHOICES).flatmap(
    lambda choices: st.integers(0, len(choices) - 1).flatmap(
        lambda i: st.fixed_dictionaries(
            {
                "prompt": prompts,
                "choices": st.just(choices),
                "answer_index": st.just(i),
                "response": st.sampled_from([ABSENT, None, choices[i], f" {choices[i]} "]),
            }
        )
    )
)
optional_fields = st.fixed_dictionaries(
    {}, optional={"split": st.sampled_from([None, "dev", "test"]), "subtask": st.sampled_from([None, "a", "b"])}
)
WILD = {
    "prompt": st.one_of(st.sampled_from(["Q1?", 5, None, ABSENT, "   "]), words),
    "response": st.sampled_from(["red", " green", "blue", 5, None, ABSENT, ""]),
    "choices": st.sampled_from([ABSENT, None, *VALID_CHOICES, "abc", 5, ["red", 1], ["red"], [], ["red", "red "]]),
    "answer_index": st.sampled_from([ABSENT, None, 0, 1, 2, -1, "1", 1.7, True, False]),
    "split": st.sampled_from([ABSENT, None, "dev", "test", "train", "DEV", 7]),
    "subtask": st.sampled_from([ABSENT, None, "a", "b", "", 3]),
}
one_wild_field = st.sampled_from(sorted(WILD)).flatmap(lambda key: WILD[key].map(lambda value: {key: value}))
row_objects = st.builds(
    lambda row, optional, wild: {k: v for k, v in {**row, **optional, **wild}.items() if v is not ABSENT},
    st.one_of(plain_row, choice_row),
    optional_fields,
    one_wild_field,
)
fuzz_line = st.one_of(
    row_objects.map(lambda r: json.dumps(r).encode()), st.sampled_from([b"{not json", b"[1, 2]", b'"text"'])
)
# Some lines again, in a shuffled file: exact repeats are what the duplicate rule is for.
fuzz_lines = st.lists(fuzz_line, min_size=10, max_size=40).flatmap(
    lambda lines: st.lists(st.sampled_from(lines), max_size=10).flatmap(lambda again: st.permutations(lines + again))
)
SUBTASKS = ("a", "b", "fuzz")  # "fuzz": the file's name, the subtask of rows without one


def _expected(line: bytes) -> tuple[str, str, str, str | None] | None:
    """(subtask, prompt, response, given split) of a row every rule accepts; None for a row one rule refuses."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(row, dict):
        return None
    choices, index, response = row.get("choices"), row.get("answer_index"), row.get("response")
    if choices is None:
        if index is not None:
            return None
    else:
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            return None
        choices = [c.strip() for c in choices]
        if len(choices) < 2 or "" in choices or len(set(choices)) < len(choices):
            return None
        if type(index) is not int or not 0 <= index < len(choices):
            return None
        if response is None:
            response = choices[index]
    split, subtask, prompt = row.get("split"), row.get("subtask"), row.get("prompt")
    if split not in (None, "dev", "test") or (subtask is not None and not (isinstance(subtask, str) and subtask)):
        return None
    if not all(isinstance(t, str) and t.strip() for t in (prompt, response)):
        return None
    if choices is not None and response.strip() != choices[index]:
        return None
    return subtask or "fuzz", prompt.strip(), response.strip(), split


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=fuzz_lines)
def test_every_target_file_row_lands_once_in_the_targets_or_the_rejects(tmp_path, lines):
    pads = [
        json.dumps({"prompt": f"pad {s} {i}", "response": "pad", "subtask": s}).encode()
        for s in SUBTASKS
        for i in range(3)
    ]
    lines = pads + lines  # three valid rows per subtask: the spec can always be met, so nothing may raise
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    examples, rejects = load_target(TargetSpec(name="f", kind="files", files=(str(path),), n_dev=1, n_test=2))

    landed = [(ex.origin, ex.row) for ex, _ in examples] + [(r.origin, r.row) for r in rejects]
    assert sorted(landed) == [(str(path), i) for i in range(1, len(lines) + 1)]  # each row exactly once
    for ex, split in examples:
        assert split in ("dev", "test")
        assert type(ex.answer_index) is int
        if ex.choices:
            assert 0 <= ex.answer_index < len(ex.choices) and ex.response == ex.choices[ex.answer_index]
        else:
            assert ex.answer_index == -1
    split_of = {ex.row: split for ex, split in examples}
    reason_of = {r.row: r.reason for r in rejects}
    seen, drawn = set(), {s: 0 for s in SUBTASKS}
    for lineno, line in enumerate(lines, 1):
        expected = _expected(line)
        if expected is None:
            assert reason_of[lineno] not in (RejectReason.DUPLICATE, RejectReason.SURPLUS), lineno
            continue
        *key, given_split = expected
        if tuple(key) in seen:
            assert reason_of.get(lineno) == RejectReason.DUPLICATE, lineno
            continue
        seen.add(tuple(key))
        if given_split:
            assert split_of.get(lineno) == given_split, lineno
        else:
            assert split_of.get(lineno) or reason_of[lineno] == RejectReason.SURPLUS, lineno
            drawn[key[0]] += 1
    for subtask, n in drawn.items():
        drawn_splits = [s for ex, s in examples if ex.subtask == subtask and _expected(lines[ex.row - 1])[3] is None]
        assert sorted(drawn_splits) == ["dev"] + ["test"] * min(2, n - 1), subtask


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


def test_all_target_prompts_are_every_row_drawn_or_not_and_a_listed_target_keeps_its_sizes():
    from gtp_pipeline.core.config.profiles import MULTI_TARGETS, get_profile
    from gtp_pipeline.core.ingest.targets import all_target_prompts

    gsm8k = next(t for t in MULTI_TARGETS if t.name == "gsm8k")
    prompts = all_target_prompts(gsm8k)
    assert len(prompts) == 1319  # the whole GSM8K test file, not the 8 + 150 drawn
    examples, _ = load_target(gsm8k)
    assert {ex.prompt for ex, _ in examples} < set(prompts)
    chosen = get_profile("multitarget", target_task="gsm8k")
    assert chosen.target == gsm8k and chosen.contamination_targets == MULTI_TARGETS
    other = get_profile("demo", target_task="gsm8k").target  # not listed: the profile's sizes, the task swapped in
    assert (other.kind, other.tasks, other.n_test) == ("gsm8k", (), 100)
