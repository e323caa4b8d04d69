"""The JSONL/Parquet readers plus normalization: every input row lands in the corpus or the rejects."""

import json
import string

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtp_pipeline.core.ingest.corpus import CorpusConfig, build_corpus
from gtp_pipeline.core.ingest.records import RejectReason
from gtp_pipeline.core.ingest.user_files import read_jsonl, read_parquet, read_user_files

MAX_CHARS = 200
text = st.text(alphabet=string.ascii_letters + string.digits + " .,?!é中", min_size=1, max_size=40).filter(
    lambda s: s.strip()
)

# Each generator yields (line bytes, expected reason or None for a valid row, expected (prompt, response) if valid).
valid_pair = st.builds(
    lambda p, r: (json.dumps({"prompt": p, "response": r}).encode(), None, (p.strip(), r.strip())), text, text
)
valid_messages = st.builds(
    lambda p, r: (
        json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}).encode(),
        None,
        (p.strip(), r.strip()),
    ),
    text,
    text,
)
malformed = st.sampled_from([b'{"prompt": "a", "response": ', b"{not json}", b'{"prompt": "a"]', b"nul\x00l"]).map(
    lambda b: (b, RejectReason.MALFORMED_JSON, None)
)
invalid_utf8 = st.builds(
    lambda p: (b'{"prompt": "' + p.encode() + b'\xff\xfe", "response": "x"}', RejectReason.INVALID_UTF8, None), text
)
not_object = st.sampled_from([b"[1, 2]", b'"just a string"', b"42", b"null"]).map(
    lambda b: (b, RejectReason.NOT_AN_OBJECT, None)
)
unknown = st.builds(
    lambda p: (json.dumps({"question": p, "answer": p}).encode(), RejectReason.UNKNOWN_SCHEMA, None), text
)
missing = st.builds(lambda p: (json.dumps({"prompt": p}).encode(), RejectReason.MISSING_FIELD, None), text)
wrong_type = st.builds(
    lambda p, n: (json.dumps({"prompt": p, "response": n}).encode(), RejectReason.WRONG_TYPE, None),
    text,
    st.integers(),
)
empty = st.builds(
    lambda p: (json.dumps({"prompt": p, "response": "   "}).encode(), RejectReason.EMPTY_TEXT, None), text
)
too_long = st.builds(
    lambda p: (json.dumps({"prompt": p, "response": "y" * (MAX_CHARS + 1)}).encode(), RejectReason.TOO_LONG, None),
    text,
)
bad_messages = st.sampled_from(
    [
        {"messages": []},
        {"messages": [{"role": "assistant", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": 3}]},
    ]
).map(lambda o: (json.dumps(o).encode(), RejectReason.BAD_MESSAGES, None))
surrogate = st.just((b'{"prompt": "a\\ud800b", "response": "x"}', RejectReason.INVALID_UTF8, None))
invisible = st.sampled_from(["\u200b", "\u200b \u200d\ufeff", "\u2060\u00ad"]).map(
    lambda z: (json.dumps({"prompt": "p", "response": z}).encode(), RejectReason.EMPTY_TEXT, None)
)
control = st.sampled_from(["\u0000", "a\u0000b", "x\u001by", "\u007f"]).map(
    lambda c: (json.dumps({"prompt": c, "response": "r"}).encode(), RejectReason.CONTROL_CHARACTER, None)
)
any_line = st.one_of(
    valid_pair,
    valid_messages,
    malformed,
    invalid_utf8,
    not_object,
    unknown,
    missing,
    wrong_type,
    empty,
    too_long,
    bad_messages,
    surrogate,
    invisible,
    control,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(any_line, min_size=1, max_size=30))
def test_every_jsonl_row_lands_in_corpus_or_rejects_with_its_reason(tmp_path, lines):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(line for line, _, _ in lines) + b"\n")
    built = build_corpus(read_jsonl(path), CorpusConfig(max_chars=MAX_CHARS, duplicates="keep_all"))
    assert built.corpus.height + built.rejects.height == len(lines)
    assert set(built.rejects["reason"]) <= set(RejectReason.ALL)
    expected_valid = sorted(pair for _, reason, pair in lines if reason is None)
    assert sorted(zip(built.corpus["prompt"], built.corpus["response"], strict=True)) == expected_valid
    rejected = dict(zip(built.rejects["row"], built.rejects["reason"], strict=True))
    for lineno, (_, reason, _) in enumerate(lines, 1):
        if reason is not None:
            assert rejected[lineno] == reason, f"line {lineno}"


def test_blank_lines_and_bom_are_not_rows(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "p", "response": "r"}\n\n   \n{"prompt": "q", "response": "s"}\n')
    records = list(read_jsonl(path))
    assert [r.row for r in records] == [1, 4]
    assert all(r.error is None for r in records)


@pytest.mark.parametrize("newline", [b"\r", b"\r\n", b"\n"])
def test_lines_end_at_cr_crlf_or_lf(tmp_path, newline):
    rows = [json.dumps({"prompt": f"p{i}", "response": f"r{i}\ttab"}).encode() for i in range(3)]
    path = tmp_path / "a.jsonl"
    path.write_bytes(newline.join(rows) + newline)
    records = list(read_jsonl(path))
    assert [(r.row, r.error, r.fields["prompt"]) for r in records] == [(i + 1, None, f"p{i}") for i in range(3)]


def test_text_with_tabs_newlines_and_form_feeds_is_kept(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"prompt": "a\tb\nc\r\nd\fe", "response": "\u200bok"}) + "\n")
    built = build_corpus(read_jsonl(path))
    assert built.rejects.height == 0 and built.corpus["prompt"].item() == "a\tb\nc\r\nd\fe"


def test_parquet_rows_with_bad_cells_are_refused_one_by_one(tmp_path):
    path = tmp_path / "pool.parquet"
    frame = pl.DataFrame(
        {
            "prompt": [b"fine", b"bad \xff byte", b"also fine", b"x"],
            "response": [b"ok", b"ok", b"ok", None],
            "task": ["t1", "t1", "t2", "t2"],
        }
    )
    frame.write_parquet(path)
    built = build_corpus(read_parquet(path))
    assert built.corpus.height == 2
    assert sorted(built.corpus["task"]) == ["t1", "t2"]
    assert dict(zip(built.rejects["row"], built.rejects["reason"], strict=True)) == {
        2: RejectReason.INVALID_UTF8,
        4: RejectReason.MISSING_FIELD,
    }


def test_parquet_chat_messages_and_optional_fields(tmp_path):
    path = tmp_path / "chat.parquet"
    pl.DataFrame(
        {
            "messages": [
                [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "Hello."},
                ],
            ],
            "id": ["u-1"],
            "source": ["mychat"],
        }
    ).write_parquet(path)
    built = build_corpus(read_parquet(path))
    row = built.corpus.row(0, named=True)
    assert (row["prompt"], row["response"], row["source"], row["task"], row["source_id"]) == (
        "Be brief.\n\nHi?",
        "Hello.",
        "mychat",
        "mychat",
        "u-1",
    )


@pytest.mark.parametrize(
    "name,content", [("broken.parquet", b"PAR1 not really"), ("missing.jsonl", None), ("notes.txt", b"hello")]
)
def test_unreadable_files_become_one_reject_not_a_crash(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    built = build_corpus(read_user_files([path]))
    assert built.corpus.height == 0
    assert built.rejects["reason"].to_list() == [RejectReason.UNREADABLE_FILE]
    assert built.rejects["origin"].to_list() == [str(path)]
