"""The corpus assets materialize on the tiny profile and on a user's own files."""

import json

import dagster as dg
import polars as pl
import pytest

from gtp_pipeline import checks
from gtp_pipeline.assets import corpus
from gtp_pipeline.resources import resources_for_profile
from tests.conftest import failed_step_attempts

ASSETS = [*dg.load_assets_from_modules([corpus]), *dg.load_asset_checks_from_modules([checks])]


def materialization(result, key):
    return next(
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == key
    )


def test_corpus_assets_materialize_on_the_tiny_profile(tiny_resources, tmp_path):
    result = dg.materialize(ASSETS, resources=tiny_resources)
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())
    pool = pl.read_parquet(tmp_path / "artifacts" / "raw_corpus" / "data.parquet")
    assert 250 <= pool.height <= 400
    assert set(pool["source"]) == {"chatterbot", "natural_instructions", "bbc_news"}
    meta = materialization(result, "raw_corpus").metadata
    assert meta["examples"].value == pool.height
    assert meta["rows_read"].value == pool.height + meta["rows_refused"].value
    assert "n_tokens histogram" in meta["n_tokens_histogram"].value
    assert (tmp_path / "artifacts" / "raw_corpus" / "n_tokens_histogram.png").stat().st_size > 1000
    target = pl.read_parquet(tmp_path / "artifacts" / "target_examples" / "data.parquet")
    assert sorted(set(target["split"])) == ["dev", "test"]


def test_rematerializing_unchanged_inputs_gives_the_same_data_version(tiny_resources):
    with dg.instance_for_test() as instance:
        first = dg.materialize(ASSETS, resources=tiny_resources, instance=instance)
        second = dg.materialize(ASSETS, resources=tiny_resources, instance=instance)
    for key in ("raw_corpus", "corpus_rejects", "target_examples", "target_rejects"):
        v1 = materialization(first, key).tags["dagster/data_version"]
        assert v1 == materialization(second, key).tags["dagster/data_version"], key


def test_users_files_feed_the_full_profile_and_bad_rows_go_to_rejects(tmp_path, monkeypatch):
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(
        b'{"prompt": "What is the capital of France?", "response": "Paris."}\n'
        b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "task": "chat"}\n'
        b"{broken json\n"
        b'{"prompt": "Q?", "response": ""}\n'
        b'{"prompt": "Tell me about Kyoto", "response": "\xff\xfe"}\n'
    )
    target = tmp_path / "target.jsonl"
    target.write_text(
        "\n".join(
            json.dumps({"prompt": f"What is {i} + {i}?", "response": str(2 * i), "subtask": "sums"}) for i in range(6)
        )
        + "\n"
        + json.dumps(
            {"prompt": "What is the capital of France?", "response": "Paris", "subtask": "geo", "split": "test"}
        )
        + "\n"
        + json.dumps({"prompt": "What is 1 + 1?", "response": "2", "choices": "12", "answer_index": 1})
    )
    monkeypatch.setenv("GTP_CORPUS_FILES", str(pool))
    monkeypatch.setenv("GTP_TARGET_FILES", str(target))
    resources = resources_for_profile("full", artifact_root=str(tmp_path / "art"))
    result = dg.materialize(ASSETS, resources=resources)
    assert result.success
    corpus_frame = pl.read_parquet(tmp_path / "art" / "raw_corpus" / "data.parquet")
    rejects = pl.read_parquet(tmp_path / "art" / "corpus_rejects" / "data.parquet")
    assert corpus_frame["prompt"].to_list() == ["Hi"]
    assert dict(zip(rejects["row"], rejects["reason"], strict=True)) == {
        1: "target_contamination",
        3: "malformed_json",
        4: "empty_text",
        5: "invalid_utf8",
    }
    target_rejects = pl.read_parquet(tmp_path / "art" / "target_rejects" / "data.parquet")
    assert target_rejects.select("row", "reason").rows() == [(8, "wrong_type")]
    assert materialization(result, "target_rejects").metadata["rows_refused"].value == 1


def test_a_missing_corpus_or_target_file_fails_once_naming_the_setting_and_the_path(tmp_path, monkeypatch):
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"prompt": f"q{i}?", "response": f"a{i}"}) for i in range(12)) + "\n")
    for variable, other in (("GTP_CORPUS_FILES", "GTP_TARGET_FILES"), ("GTP_TARGET_FILES", "GTP_CORPUS_FILES")):
        monkeypatch.setenv(variable, str(tmp_path / "typo.jsonl"))
        monkeypatch.setenv(other, str(good))
        resources = resources_for_profile("full", artifact_root=str(tmp_path / variable))
        result = dg.materialize(ASSETS, resources=resources, raise_on_error=False)
        runs, message = failed_step_attempts(result)
        assert not result.success and runs == 1
        assert f"{variable}='{tmp_path / 'typo.jsonl'}': {tmp_path / 'typo.jsonl'} does not exist" in message


def test_a_pool_with_no_valid_row_fails_with_its_reasons_and_corpus_rejects_written(tmp_path, monkeypatch):
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(b'{"prompt": "\\u200b", "response": "x"}\r{"prompt": "a\\u0000", "response": "b"}\r')
    target = tmp_path / "target.jsonl"
    target.write_text("\n".join(json.dumps({"prompt": f"q{i}?", "response": f"a{i}"}) for i in range(8)) + "\n")
    monkeypatch.setenv("GTP_CORPUS_FILES", str(pool))
    monkeypatch.setenv("GTP_TARGET_FILES", str(target))
    result = dg.materialize(
        ASSETS, resources=resources_for_profile("full", artifact_root=str(tmp_path / "art")), raise_on_error=False
    )
    runs, message = failed_step_attempts(result)
    assert not result.success and runs == 1
    assert "no valid examples among 2 rows read" in message and "empty_text: 1, control_character: 1" in message
    rejects = pl.read_parquet(tmp_path / "art" / "corpus_rejects" / "data.parquet")
    assert rejects.select("row", "reason").rows() == [(1, "empty_text"), (2, "control_character")]


def test_a_multi_target_pool_is_decontaminated_against_every_row_of_every_listed_target(tmp_path, monkeypatch):
    from gtp_pipeline.core.config.profiles import MULTI_TARGETS
    from gtp_pipeline.core.ingest.targets import all_target_prompts

    gsm8k, dates = (next(t for t in MULTI_TARGETS if t.name == n) for n in ("gsm8k", "date_understanding"))
    planted = [all_target_prompts(gsm8k)[-1], all_target_prompts(dates)[-1], "A question no target has?"]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(json.dumps({"prompt": p, "response": "an answer"}) for p in planted) + "\n")
    monkeypatch.setenv("GTP_CORPUS_FILES", str(pool))
    monkeypatch.delenv("GTP_TARGET_TASK", raising=False)  # the active target is social_iqa: the others still count
    result = dg.materialize(ASSETS, resources=resources_for_profile("multitarget", str(tmp_path / "art")))
    assert result.success
    rejects = pl.read_parquet(tmp_path / "art" / "corpus_rejects" / "data.parquet")
    user = rejects.filter(pl.col("source") == "pool")  # user files are named by their stem
    assert sorted(user["row"]) == [1, 2] and set(user["reason"]) == {"target_contamination"}
    pool_frame = pl.read_parquet(tmp_path / "art" / "raw_corpus" / "data.parquet")
    assert planted[2] in pool_frame["prompt"].to_list()
    meta = materialization(result, "raw_corpus").metadata
    assert meta["decontaminated_against"].value == "social_iqa, date_understanding, gsm8k"


@pytest.mark.parametrize("policy", ["exclude", "flag"])
def test_the_contamination_check_rechecks_the_pool_under_the_active_policy(tmp_path, monkeypatch, policy):
    from dataclasses import replace

    from gtp_pipeline.core.config import profiles

    full = profiles.PROFILES["full"]
    monkeypatch.setitem(profiles.PROFILES, "full", replace(full, corpus=replace(full.corpus, contamination=policy)))
    target = tmp_path / "target.jsonl"
    target.write_text(
        "\n".join(json.dumps({"prompt": f"What is {i} + {i}?", "response": str(2 * i)}) for i in range(8))
    )
    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        json.dumps({"prompt": "what is 3 +  3?", "response": "6"})
        + "\n"
        + json.dumps({"prompt": "Hi", "response": "Hello"})
    )
    monkeypatch.setenv("GTP_CORPUS_FILES", str(pool))
    monkeypatch.setenv("GTP_TARGET_FILES", str(target))
    result = dg.materialize(ASSETS, resources=resources_for_profile("full", artifact_root=str(tmp_path / "art")))
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "raw_corpus_contamination"]
    meta = {k: v.value for k, v in check.metadata.items()}
    assert meta["policy"] == policy
    if policy == "exclude":  # refused by the corpus stage, so the re-check finds none
        assert check.passed and meta["target_prompts_in_pool"] == 0
    else:  # kept and flagged: the check says so, as a warning
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        assert meta["target_prompts_in_pool"] == 1 and meta["flagged_contaminated"] == 1
