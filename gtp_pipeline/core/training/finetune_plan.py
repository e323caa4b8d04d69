"""What one fine-tune trains on: the pool rows a run's selection (or ClusterClip stream, or the full pool) names, their
loss weights, its description, how often it saves, and the identity its adapter is filed under."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from gtp_pipeline.core.config.run_key import FULL, RunKey
from gtp_pipeline.core.ingest.records import TextExample, text_examples

STREAM_SAVE_EVERY_STEPS = 25  # a ClusterClip stream has no epochs to checkpoint at: save often so a killed run resumes


@dataclass(frozen=True)
class FinetunePlan:
    run: str
    seed: int
    epochs: int
    rows: np.ndarray  # indices into the pool
    weights: np.ndarray | None  # per-example loss weights; None = uniform
    stream: list[int] | None  # pool indices in draw order (ClusterClip); None = epochs over `rows`
    description: str
    examples: list[TextExample]  # of `rows`, in order
    source_table: pl.DataFrame | None  # the selection or ClusterClip plan that chose the data; None for the full pool

    @property
    def save_every_steps(self) -> int:
        return STREAM_SAVE_EVERY_STEPS if self.stream else 0

    @property
    def draws(self) -> int:
        return len(self.stream) if self.stream else self.epochs * len(self.examples)

    @property
    def distinct_examples(self) -> int:
        return len(set(self.stream)) if self.stream else len(self.examples)

    def identity(self, corpus_version: str, table_version: Callable[[pl.DataFrame], str]) -> dict:
        """What the adapter was trained on; `table_version` hashes the source table (the selection's version)."""
        return {
            "run": self.run,
            "seed": self.seed,
            "corpus_version": corpus_version,
            "selection_version": table_version(self.source_table) if self.source_table is not None else "-",
            "weighted": self.weights is not None,
        }


def plan_finetune(
    run: str,
    seed: int,
    raw_corpus: pl.DataFrame,
    selections: dict[str, pl.DataFrame],
    clusterclip_plan: pl.DataFrame,
    epochs: int,
    use_weights: bool,
) -> FinetunePlan:
    """The plan of fine-tune `run` (a RunKey run name) at `seed`; `selections` maps method -> selection table."""
    rows, weights, stream, description = training_set(
        run, raw_corpus, selections, clusterclip_plan, epochs, use_weights
    )
    subset = raw_corpus[rows]
    examples = text_examples(subset)
    method = RunKey.from_run(run).method
    source_table = clusterclip_plan if method == "clusterclip" else selections.get(method)
    return FinetunePlan(run, seed, epochs, rows, weights, stream, description, examples, source_table)


def training_set(run: str, raw_corpus, selections: dict, clusterclip_plan, epochs: int, use_weights: bool):
    """(example indices into raw_corpus, per-example weights or None, stream or None, description) for a run."""
    key = RunKey.from_run(run)
    if key.method == FULL:
        return np.arange(raw_corpus.height), None, None, f"all {raw_corpus.height} pool examples, {epochs} epochs"
    method, budget = key.method, key.budget
    position = {eid: i for i, eid in enumerate(raw_corpus["example_id"])}
    if method == "clusterclip":
        plan = clusterclip_plan.filter((pl.col("method") == "clusterclip") & (pl.col("budget") == budget)).sort("step")
        if plan.height == 0:
            raise ValueError(
                f"clusterclip_plan has no stream for budget {budget!r}; rematerialize it with this profile"
            )
        stream = [position[e] for e in plan["example_id"]]
        return np.arange(raw_corpus.height), None, stream, f"ClusterClip stream of {len(stream)} draws"
    table = selections[method].filter(pl.col("budget") == budget).sort("rank")
    if table.height == 0:
        raise ValueError(f"{method}_selection has no rows for budget {budget!r}; rematerialize it with this profile")
    rows = np.asarray([position[e] for e in table["example_id"]])
    weights = table["weight"].to_numpy() if use_weights and method == "gtp" else None
    return rows, weights, None, f"{table.height} {method} examples x {epochs} epochs = {epochs * table.height} draws"


def train_planned(plan: FinetunePlan, loaded, recipe, out_dir, device, log: Callable[[str], None] = lambda _: None):
    """Train the plan's LoRA adapter into `out_dir` (resuming from its last saved step), logging the loss every 20
    steps; `loaded` is a core.training.models.LoadedModel, `recipe` a LoraTrainConfig. Returns the TrainResult."""
    from gtp_pipeline.core.training.lora_train import train_lora  # torch: only where a run trains

    def progress(step: int, total: int, loss: float) -> None:
        if step == total or step % 20 == 0:
            log(f"{plan.run} seed {plan.seed}: step {step}/{total}, loss {loss:.4f}")

    return train_lora(
        loaded.model,
        loaded.tokenizer,
        plan.examples,
        out_dir,
        recipe,
        loaded.model_id,
        weights=plan.weights,
        stream=plan.stream,
        device=device,
        progress=progress,
    )
