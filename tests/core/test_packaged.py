"""Each packaged source parses the real data that `make setup` installed."""

from collections import Counter

import pytest

from gtp_pipeline.core.ingest import packaged
from gtp_pipeline.core.ingest.corpus import build_corpus
from gtp_pipeline.core.ingest.targets import TargetSpec, load_target


def test_chatterbot_reads_all_21_english_topics():
    records = list(packaged.chatterbot())
    topics = Counter(r.fields["task"] for r in records if r.fields)
    assert len(topics) == 21
    assert topics["tech_support"] > 500 and topics["trivia"] > 200
    assert all(r.origin.startswith("chatterbot_corpus/data/english/") for r in records)


def test_bbc_news_has_five_sections_and_2225_articles():
    records = list(packaged.bbc_news())
    assert len(records) == 2225
    assert Counter(r.fields["task"] for r in records) == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }
    first = records[0].fields
    assert first["prompt"].startswith("Write a BBC News article for the business section with the headline:")
    assert len(first["response"]) > 200


def test_sharegpt_yields_short_first_turn_pairs_despite_truncated_file():
    records = list(packaged.sharegpt(limit=50))
    assert len(records) == 50
    built = build_corpus(records)
    assert built.corpus.height + built.rejects.height == 50
    assert built.corpus.height >= 45
    assert (built.corpus["prompt"].str.len_chars() <= 500).all()


def test_natural_instructions_has_61_subtasks_with_definitions():
    records = list(packaged.natural_instructions(limit_per_task=1))
    assert len(records) == 61
    assert all(r.fields["prompt"].startswith("Definition:") or "Input:" in r.fields["prompt"] for r in records)
    assert len({r.fields["task"] for r in records}) == 61


def test_limit_per_task_takes_the_same_rows_every_time():
    a = [
        r.fields["prompt"]
        for r in packaged.natural_instructions(("subtask003_mctaco_question_generation_event_duration",), 5)
    ]
    b = [
        r.fields["prompt"]
        for r in packaged.natural_instructions(("subtask003_mctaco_question_generation_event_duration",), 5)
    ]
    assert a == b and len(a) == 5


@pytest.mark.parametrize(
    "task,n_total,multiple_choice",
    [
        ("social_iqa", 1954, True),
        ("strategyqa", 2290, True),
        ("disfl_qa", 8000, False),
        ("date_understanding", 369, True),
    ],
)
def test_bigbench_targets_parse_with_choices(task, n_total, multiple_choice):
    spec = TargetSpec(name=task, kind="bigbench", tasks=(task,), n_dev=5, n_test=n_total)
    examples, rejects = load_target(spec)
    assert {r.reason for r in rejects} <= {"duplicate"}  # a few exact repeats; every other row is drawn
    assert len(examples) + len(rejects) == n_total and len(rejects) <= 0.03 * n_total
    chosen = [ex for ex, _ in examples if ex.choices]
    assert bool(chosen) == multiple_choice
    for ex in chosen:
        assert ex.choices[ex.answer_index] == ex.response


def test_gsm8k_target_has_1319_questions_with_answers():
    spec = TargetSpec(name="gsm8k", kind="gsm8k", n_dev=5, n_test=2000)
    examples, _ = load_target(spec)
    assert len(examples) == 1319
    assert all("####" in ex.response for ex, _ in examples)
