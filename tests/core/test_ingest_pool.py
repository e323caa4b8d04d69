"""ingest_pool: a profile's pool files built into the corpus, decontaminated, with what the stage reports."""

import json
from dataclasses import replace

import pytest

from gtp_pipeline.core.config.profiles import TINY, SourceSpec
from gtp_pipeline.core.ingest.corpus import CorpusConfig
from gtp_pipeline.core.ingest.pool import ingest_pool
from gtp_pipeline.core.ingest.records import RejectReason


def profile_with_files(*files, **corpus):
    return replace(
        TINY,
        pool=(SourceSpec("files", files=tuple(str(f) for f in files)),),
        corpus=CorpusConfig(**corpus),
        contamination_targets=(),
    )


@pytest.fixture
def pool_file(tmp_path):
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(6)]
    rows += [{"prompt": "question 0", "response": "answer 0"}, {"prompt": "", "response": "no prompt"}]
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_the_drawn_target_prompts_are_dropped_and_every_row_is_counted(pool_file):
    built = ingest_pool(profile_with_files(pool_file), ["question 2"])
    assert sorted(built.corpus["prompt"]) == ["question 0", "question 1", "question 3", "question 4", "question 5"]
    reasons = sorted(built.rejects["reason"])
    assert reasons == sorted([RejectReason.DUPLICATE, RejectReason.TARGET_CONTAMINATION, RejectReason.EMPTY_TEXT])
    assert built.rejects_summary() == {"rows_refused": 3, "refused_share": round(3 / 8, 4)}
    assert built.describe() == "read 8 rows: 5 examples, 3 refused (1 duplicates, 1 contaminated)"
    assert built.unreadable_files() == ""


def test_summary_names_the_policies_and_every_target_decontaminated_against(pool_file):
    other = replace(TINY.target, name="other_task")
    profile = replace(profile_with_files(pool_file, duplicates="keep_all"), contamination_targets=(other, TINY.target))
    summary = ingest_pool(profile, []).summary(profile)
    assert summary["duplicate_policy"] == "keep_all" and summary["duplicates"] == 1 and summary["examples"] == 7
    assert summary["decontaminated_against"] == f"{TINY.target.name}, other_task"  # the active target once, first


def test_an_unreadable_file_is_named_and_an_empty_pool_says_why(tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    built = ingest_pool(profile_with_files(broken), [])
    assert built.corpus.height == 0
    assert "unreadable_file" in built.unreadable_files() and str(broken) in built.unreadable_files()
    assert built.empty_pool_reason().startswith("no valid examples among 1 rows read; 1 row(s) refused")


def test_length_summary_of_the_examples(pool_file):
    built = ingest_pool(profile_with_files(pool_file), [])
    lengths = built.corpus["n_tokens"]
    assert built.length_summary() == {
        "mean": round(float(lengths.mean()), 1),
        "median": float(lengths.median()),
        "p90": float(lengths.quantile(0.9)),
        "max": int(lengths.max()),
    }
    assert built.length_summary()["max"] == 2 * 2  # "question N" + "answer N": two tokens each
