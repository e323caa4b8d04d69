"""Training stage: one LoRA fine-tune of the base model per (selection method at a budget, seed), same recipe for all."""

from pathlib import Path

import dagster as dg

from gtp_pipeline.assets.gradients import TRANSIENT, lora_config
from gtp_pipeline.assets.locations import combined_hash, corpus_version, selection_version
from gtp_pipeline.assets.metadata import md_image
from gtp_pipeline.assets.selection import by_method, selection_inputs
from gtp_pipeline.automation import ON_INPUT_DATA_CHANGE
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
    from gtp_pipeline.core.training.finetune_plan import plan_finetune, train_planned

    keys = context.partition_key.keys_by_dimension
    run, seed = keys["run"], int(keys["seed"])
    settings = profile.settings()
    selections = by_method(selection_tables)
    epochs = settings.budgets.train_epochs
    plan = plan_finetune(run, seed, raw_corpus, selections, clusterclip_plan, epochs, config.use_weights)
    loaded = model.load()
    recipe = lora_config(settings, epochs, loaded.model.config.num_hidden_layers, seed, plan.save_every_steps)
    identity = plan.identity(corpus_version(raw_corpus), selection_version)
    folder = ("finetuned_model", run, f"seed{seed}", combined_hash([f"{k}={v}" for k, v in identity.items()]))
    context.log.info(f"fine-tune {run} seed {seed}: {plan.description}")
    with store.local_folder(*folder) as out_dir:  # resumes from the last saved step (pulled first if remote)
        result = train_planned(plan, loaded, recipe, out_dir, compute.configure_torch(), context.log.info)
    return dg.MaterializeResult(
        metadata=_finetune_metadata(plan, identity, folder, result, store, loaded.model_id),
        data_version=dg.DataVersion(result.checkpoints[-1].checkpoint_id),
    )


def _finetune_metadata(plan, identity: dict, folder: tuple, result, store: ArtifactStore, model_id: str) -> dict:
    from gtp_pipeline.core.evaluation.plots import lines_png

    final = result.checkpoints[-1]
    losses = [c.mean_loss for c in result.checkpoints]
    metadata = {
        **{f"selection_{k}": str(v) for k, v in identity.items()},
        "training_data": plan.description,
        "draws": plan.draws,
        "examples": plan.distinct_examples,
        "excluded_examples": len(result.excluded),
        "steps": final.step,
        "steps_run_now": result.steps_run,
        "final_mean_loss": round(final.mean_loss, 4),
        "train_seconds": round(result.seconds, 1),
        "adapter": dg.MetadataValue.path(str(store.path_for(*folder, Path(final.path).name))),
        "adapter_folder": "/".join(folder),  # evaluation reads the adapter back through the artifact store
        "adapter_checkpoint": Path(final.path).name,
        "checkpoint_id": final.checkpoint_id,
        "model_id": model_id,
    }
    if len(losses) > 1:
        plot = lines_png(
            {"mean loss": (list(range(1, len(losses) + 1)), losses)},
            title=f"{plan.run} seed {plan.seed}",
            xlabel="checkpoint",
        )
        metadata["loss_per_checkpoint"] = md_image(plot, "loss")
    return metadata
