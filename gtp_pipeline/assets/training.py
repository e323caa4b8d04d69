"""Training stage: one LoRA fine-tune of the base model per (selection method at a budget, seed), same recipe for all."""

from pathlib import Path

import dagster as dg

from gtp_pipeline.assets.gradients import TRANSIENT, lora_config
from gtp_pipeline.assets.locations import combined_hash, corpus_version, selection_version
from gtp_pipeline.assets.metadata import md_image
from gtp_pipeline.assets.selection import by_method, selection_inputs
from gtp_pipeline.automation import ON_INPUT_DATA_CHANGE
from gtp_pipeline.core.config.run_key import FULL, RunKey
from gtp_pipeline.gpu_workers import GPU_STEP_TAGS
from gtp_pipeline.partitions import finetune_partitions
from gtp_pipeline.resources.compute import ComputeResource
from gtp_pipeline.resources.models import ModelSource
from gtp_pipeline.resources.profile import ProfileResource
from gtp_pipeline.resources.storage import ArtifactStore

TRAINING_CODE_VERSION = "1"


class FinetuneConfig(dg.Config):
    """Run-config knobs of the fine-tune recipe."""

    use_weights: bool = False  # GTP only: train with its NNLS weights as loss weights (default: uniform, as LESS)


def training_set(run: str, raw_corpus, selections: dict, clusterclip_plan, epochs: int, use_weights: bool):
    """(example indices into raw_corpus, per-example weights or None, stream or None, description) for a run."""
    import numpy as np
    import polars as pl

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


@dg.asset(
    partitions_def=finetune_partitions,
    ins=selection_inputs(),
    group_name="training",
    kinds={"torch", "safetensors"},
    code_version=TRAINING_CODE_VERSION,
    deps=["finetune_recipe"],
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    retry_policy=TRANSIENT,
    automation_condition=ON_INPUT_DATA_CHANGE,
)
def finetuned_model(
    context: dg.AssetExecutionContext,
    raw_corpus,
    clusterclip_plan,
    profile: ProfileResource,
    store: ArtifactStore,
    model: ModelSource,
    compute: ComputeResource,
    config: FinetuneConfig,
    **selection_tables,
) -> dg.MaterializeResult:
    """A LoRA adapter (safetensors) fine-tuned on one method's data at one budget, with the selection's identity."""
    from gtp_pipeline.core.evaluation.plots import lines_png
    from gtp_pipeline.core.training.lora_train import train_lora

    keys = context.partition_key.keys_by_dimension
    run, seed = keys["run"], int(keys["seed"])
    settings = profile.settings()
    epochs = settings.budgets.train_epochs
    selections = by_method(selection_tables)
    rows, weights, stream, description = training_set(
        run, raw_corpus, selections, clusterclip_plan, epochs, config.use_weights
    )
    subset = raw_corpus[rows]
    examples = list(zip(subset["example_id"], subset["prompt"], subset["response"], strict=True))
    loaded = model.load()
    # a ClusterClip stream has no epochs to checkpoint at: save every 25 steps so a killed run resumes
    recipe = lora_config(settings, epochs, loaded.model.config.num_hidden_layers, seed, 25 if stream else 0)
    method = RunKey.from_run(run).method
    source_table = clusterclip_plan if method == "clusterclip" else selections.get(method)
    identity = {
        "run": run,
        "seed": seed,
        "corpus_version": corpus_version(raw_corpus),
        "selection_version": selection_version(source_table) if source_table is not None else "-",
        "weighted": weights is not None,
    }
    folder = ("finetuned_model", run, f"seed{seed}", combined_hash([f"{k}={v}" for k, v in identity.items()]))
    context.log.info(f"fine-tune {run} seed {seed}: {description}")

    def progress(step: int, total: int, loss: float) -> None:
        if step == total or step % 20 == 0:
            context.log.info(f"{run} seed {seed}: step {step}/{total}, loss {loss:.4f}")

    with store.local_folder(*folder) as out_dir:  # resumes from the last saved step (pulled first if remote)
        result = train_lora(
            loaded.model,
            loaded.tokenizer,
            examples,
            out_dir,
            recipe,
            loaded.model_id,
            weights=weights,
            stream=stream,
            device=compute.configure_torch(),
            progress=progress,
        )
    final = result.checkpoints[-1]
    losses = [c.mean_loss for c in result.checkpoints]
    return dg.MaterializeResult(
        metadata={
            **{f"selection_{k}": str(v) for k, v in identity.items()},
            "training_data": description,
            "draws": len(stream) if stream else epochs * len(examples),
            "examples": len(set(stream)) if stream else len(examples),
            "excluded_examples": len(result.excluded),
            "steps": final.step,
            "steps_run_now": result.steps_run,
            "final_mean_loss": round(final.mean_loss, 4),
            "train_seconds": round(result.seconds, 1),
            "adapter": dg.MetadataValue.path(str(store.path_for(*folder, Path(final.path).name))),
            "adapter_folder": "/".join(folder),  # evaluation reads the adapter back through the artifact store
            "adapter_checkpoint": Path(final.path).name,
            "checkpoint_id": final.checkpoint_id,
            "model_id": loaded.model_id,
            **(
                {
                    "loss_per_checkpoint": md_image(
                        lines_png(
                            {"mean loss": (list(range(1, len(losses) + 1)), losses)},
                            title=f"{run} seed {seed}",
                            xlabel="checkpoint",
                        ),
                        "loss",
                    )
                }
                if len(losses) > 1
                else {}
            ),
        },
        data_version=dg.DataVersion(final.checkpoint_id),
    )
