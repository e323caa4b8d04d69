"""Normalization, ids, duplicates and contamination in core.ingest.corpus."""

import random

import pytest

from gtp_pipeline.core.ingest.corpus import CorpusConfig, build_corpus, content_hash, prompt_key, table_version
from gtp_pipeline.core.ingest.records import RawRecord, RejectReason


def records(pairs, source="s"):
    return [RawRecord(source, "<memory>", i, fields={"prompt": p, "response": r}) for i, (p, r) in enumerate(pairs, 1)]


PAIRS = [(f"question {i}", f"answer {i % 7}") for i in range(40)] + [("question 3", "answer 3")] * 3


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("duplicates", ["keep_first", "keep_all"])
def test_ids_are_stable_under_shuffling(seed, duplicates):
    config = CorpusConfig(duplicates=duplicates)
    base = build_corpus(records(PAIRS), config).corpus
    shuffled = PAIRS[:]
    random.Random(seed).shuffle(shuffled)
    again = build_corpus(records(shuffled), config).corpus
    cols = ["example_id", "content_hash", "prompt", "response"]
    assert base.select(cols).equals(again.select(cols))
    assert table_version(base, ("example_id", "content_hash")) == table_version(again, ("example_id", "content_hash"))


def test_keep_first_refuses_later_copies_with_a_pointer_to_the_first():
    built = build_corpus(records(PAIRS), CorpusConfig(duplicates="keep_first"))
    assert built.corpus.height == 40
    assert built.n_duplicates == 3
    assert built.rejects["reason"].to_list() == [RejectReason.DUPLICATE] * 3
    first = built.corpus.filter(built.corpus["prompt"] == "question 3")["example_id"].item()
    assert all(first in d for d in built.rejects["detail"])


def test_keep_all_keeps_copies_flagged_with_distinct_ids():
    built = build_corpus(records(PAIRS), CorpusConfig(duplicates="keep_all"))
    assert built.corpus.height == 43
    assert built.corpus["example_id"].n_unique() == 43
    assert int(built.corpus["is_duplicate"].sum()) == 3


def test_duplicates_across_sources_count_once():
    built = build_corpus(records([("p", "r")], "a") + records([("p", "r")], "b"))
    assert built.corpus["source"].to_list() == ["a"]
    assert built.n_duplicates == 1


@pytest.mark.parametrize("policy,in_corpus", [("exclude", 1), ("flag", 2)])
def test_target_contamination_is_excluded_or_flagged(policy, in_corpus):
    pool = records([("What is 2+2?", "4"), ("Say hi", "hi")])
    built = build_corpus(pool, CorpusConfig(contamination=policy), frozenset({prompt_key("  what IS 2+2? ")}))
    assert built.n_contaminated == 1
    assert built.corpus.height == in_corpus
    if policy == "exclude":
        assert built.rejects["reason"].to_list() == [RejectReason.TARGET_CONTAMINATION]
    else:
        assert built.corpus.filter(built.corpus["contaminated"])["prompt"].to_list() == ["What is 2+2?"]


def test_text_is_nfc_normalized_and_stripped_before_hashing():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    built = build_corpus(records([(f"  {composed} ", "ok"), (decomposed, "ok")]))
    assert built.corpus.height == 1 and built.n_duplicates == 1
    assert built.corpus["content_hash"].item() == content_hash(composed, "ok")


def test_optional_fields_of_the_wrong_type_are_refused():
    rec = RawRecord("s", "<memory>", 1, fields={"prompt": "p", "response": "r", "task": ["not", "a", "string"]})
    built = build_corpus([rec])
    assert built.rejects["reason"].to_list() == [RejectReason.WRONG_TYPE]
    assert "task" in built.rejects["detail"].item()
