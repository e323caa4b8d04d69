"""Gradient stage: LoRA warm-up checkpoints, then per-checkpoint projected gradient features of pool and target."""

import dagster as dg

from gtp_pipeline.assets.locations import (
    combined_hash,
    corpus_version,
    gradient_store_path,
    resolve_checkpoint,
    target_version,
    warmup_key,
    warmup_parts,
)
from gtp_pipeline.assets.metadata import metadata_table
from gtp_pipeline.automation import ON_INPUT_DATA_CHANGE
from gtp_pipeline.core.ingest.records import text_examples
from gtp_pipeline.gpu_workers import GPU_STEP_TAGS
from gtp_pipeline.partitions import N_SHARDS, checkpoint_shard, model_checkpoint
from gtp_pipeline.resources.compute import ComputeResource
from gtp_pipeline.resources.models import ModelSource
from gtp_pipeline.resources.profile import ProfileResource
from gtp_pipeline.resources.storage import ArtifactStore

GRADIENTS_CODE_VERSION = "1"
TRANSIENT = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)  # e.g. a CUDA OOM from a neighbour


def lora_config(
    settings, epochs: int, n_layers: int | None = None, seed: int | None = None, save_every_steps: int = 0
):
    """The profile's LoRA recipe as core's LoraTrainConfig (one recipe for warm-up and fine-tuning)."""
    from gtp_pipeline.core.training.lora_train import LoraTrainConfig

    g = settings.gradients
    layers = tuple(range(n_layers - g.lora_layers, n_layers)) if g.lora_layers and n_layers else None
    return LoraTrainConfig(
        lora_r=g.lora_r,
        lora_alpha=g.lora_alpha,
        layers=layers,
        lr=g.lr,
        epochs=epochs,
        batch_size=g.batch_size,
        max_len=g.max_len,
        precision=g.train_precision,
        seed=settings.budgets.seed if seed is None else seed,
        save_every_steps=save_every_steps,
    )


@dg.asset(
    automation_condition=ON_INPUT_DATA_CHANGE,
    group_name="gradients",
    kinds={"torch", "safetensors"},
    code_version=GRADIENTS_CODE_VERSION,
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    retry_policy=TRANSIENT,
    deps=["warmup_recipe"],
)
def warmup_checkpoints(
    context: dg.AssetExecutionContext,
    raw_corpus,
    profile: ProfileResource,
    store: ArtifactStore,
    model: ModelSource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """LoRA warm-up checkpoints (adapter, Adam moments, LR weight), one per epoch; each becomes a model_checkpoint partition."""
    from gtp_pipeline.core.training.warm_up import warm_up

    settings = profile.settings()
    device = compute.configure_torch()
    version = corpus_version(raw_corpus)
    loaded = model.load()
    config = lora_config(settings, settings.gradients.warmup_epochs, loaded.model.config.num_hidden_layers)
    fraction, seed = settings.gradients.warmup_fraction, settings.budgets.seed
    with store.local_folder(*warmup_parts(version)) as out_dir:  # resumes from (and keeps) finished checkpoints
        run = warm_up(loaded, raw_corpus, fraction, seed, config, out_dir, device, context.log.info)
    keys = [warmup_key(c.epoch) for c in run.result.checkpoints]
    context.instance.add_dynamic_partitions(model_checkpoint.name, keys)
    return dg.MaterializeResult(
        metadata={
            "checkpoints": metadata_table(run.checkpoint_rows(keys)),
            "partitions_registered": ", ".join(keys),
            **run.summary(),
            "model_id": loaded.model_id,
            "path": dg.MetadataValue.path(str(store.path_for(*warmup_parts(version)))),
        },
        data_version=dg.DataVersion(run.version()),
    )


def feature_config(profile: ProfileResource, kind: str):
    """The profile's gradient-feature settings as core's FeatureConfig ("adam" candidates, "sgd" targets)."""
    from gtp_pipeline.core.features.featurize import FeatureConfig
    from gtp_pipeline.core.features.projection import ProjectionConfig

    g = profile.settings().gradients
    return FeatureConfig(
        kind=kind,
        projection=ProjectionConfig(dim=g.proj_dim, seed=g.proj_seed),
        max_len=g.max_len,
        batch_size=g.feature_batch_size,
        chunk_rows=g.chunk_rows,
        buffer_rows=g.buffer_rows,
        precision=g.feature_precision,
    )


@dg.asset(
    partitions_def=checkpoint_shard,
    group_name="gradients",
    kinds={"torch", "zarr"},
    code_version=GRADIENTS_CODE_VERSION,
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    retry_policy=TRANSIENT,
    deps=["warmup_checkpoints", "feature_recipe"],
    automation_condition=ON_INPUT_DATA_CHANGE,
)
def gradient_shards(
    context: dg.AssetExecutionContext,
    raw_corpus,
    profile: ProfileResource,
    store: ArtifactStore,
    model: ModelSource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """One shard of a checkpoint's pool gradient features: store chunks c with c % shards == shard, in the shared store."""
    from gtp_pipeline.core.features.featurize_checkpoints import featurize_shard

    key = context.partition_key.keys_by_dimension
    checkpoint_key, shard = key["checkpoint"], int(key["shard"])
    version = corpus_version(raw_corpus)
    config, loaded = feature_config(profile, "adam"), model.load()
    report = featurize_shard(
        loaded,
        text_examples(raw_corpus),
        gradient_store_path(store, "gradient_trajectories", checkpoint_key, version),
        resolve_checkpoint(store, version, checkpoint_key, profile.checkpoint_dir),
        config,
        {"data_version": version, "checkpoint": checkpoint_key},
        compute.configure_torch(),
        shard,
        N_SHARDS,
    )
    context.log.info(f"shard {shard}/{N_SHARDS} of {checkpoint_key}: {report.describe()}")
    return dg.MaterializeResult(metadata=report.summary())


def _featurize_partitions(
    context, examples, asset: str, kind: str, corpus_ver: str, store_key: str, profile, store, model, compute
) -> dg.MaterializeResult:
    """Shared body of the two gradient assets: one store per checkpoint key in this run (single-run backfills)."""
    from gtp_pipeline.core.features.featurize_checkpoints import featurize_checkpoints
    from gtp_pipeline.core.storage.atomic import write_parquet

    g = profile.settings().gradients
    device = compute.configure_torch()
    loaded = model.load()
    features = featurize_checkpoints(
        loaded,
        examples,
        context.partition_keys,
        resolve=lambda key: resolve_checkpoint(store, corpus_ver, key, profile.checkpoint_dir),
        path_for=lambda key: gradient_store_path(store, asset, key, store_key),
        config=feature_config(profile, kind),
        data_version=store_key,
        device=device,
        label=asset,
        log=context.log.info,
    )
    write_parquet(features.excluded_frame(), store.path_for(asset, f"excluded-{store_key}.parquet"))
    hashes = features.hashes
    return dg.MaterializeResult(
        metadata={
            "per_checkpoint": metadata_table(features.rows),
            "excluded_examples": metadata_table(features.invalid[:50]),
            "excluded_count": len(features.invalid),
            "projection": f"rademacher d={g.proj_dim} seed={g.proj_seed}",
            "feature_kind": kind,
            "store_version": store_key,  # the stores' folder name: stores_sound reads back what was written
            "store_rows": len(examples),
            "model_id": loaded.model_id,
            "precision": g.feature_precision,
        },
        data_version=dg.DataVersion(hashes[0] if len(hashes) == 1 else combined_hash(hashes)),
    )


@dg.asset(
    automation_condition=ON_INPUT_DATA_CHANGE,
    partitions_def=model_checkpoint,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="gradients",
    kinds={"torch", "zarr"},
    code_version=GRADIENTS_CODE_VERSION,
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    retry_policy=TRANSIENT,
    deps=[
        "warmup_checkpoints",
        "feature_recipe",
        dg.AssetDep(
            "gradient_shards",
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="checkpoint"),
        ),
    ],
)
def gradient_trajectories(
    context: dg.AssetExecutionContext,
    raw_corpus,
    profile: ProfileResource,
    store: ArtifactStore,
    model: ModelSource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """Per checkpoint: every pool example's LoRA gradient as an Adam direction, projected and unit-normalized (Zarr, fp16).

    Chunks already written by gradient_shards (e.g. on other workers) are kept; any missing chunk is computed here.
    """
    examples = text_examples(raw_corpus)
    version = corpus_version(raw_corpus)
    return _featurize_partitions(
        context, examples, "gradient_trajectories", "adam", version, version, profile, store, model, compute
    )


@dg.asset(
    automation_condition=ON_INPUT_DATA_CHANGE,
    partitions_def=model_checkpoint,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="gradients",
    kinds={"torch", "zarr"},
    code_version=GRADIENTS_CODE_VERSION,
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    retry_policy=TRANSIENT,
    deps=["warmup_checkpoints", "feature_recipe"],
)
def target_gradients(
    context: dg.AssetExecutionContext,
    raw_corpus,
    target_examples,
    profile: ProfileResource,
    store: ArtifactStore,
    model: ModelSource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """Per checkpoint: the target dev examples' plain SGD LoRA gradients, same projection (Zarr, fp16)."""
    dev = target_examples.filter(target_examples["split"] == "dev")
    examples = text_examples(dev)
    corpus_ver = corpus_version(raw_corpus)
    store_key = f"{corpus_ver}-{target_version(target_examples)}"  # warm-up (corpus) x target set
    return _featurize_partitions(
        context, examples, "target_gradients", "sgd", corpus_ver, store_key, profile, store, model, compute
    )
