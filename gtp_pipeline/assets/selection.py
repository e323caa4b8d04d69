"""Selection stage: GTP's joint pursuit, LESS top-k and random, each at every budget, on the same gradient stores."""

import dagster as dg

from gtp_pipeline.assets.locations import corpus_version, gradient_store_path, resolve_checkpoint, target_version
from gtp_pipeline.assets.metadata import md_image, metadata_table
from gtp_pipeline.automation import ON_INPUT_DATA_CHANGE
from gtp_pipeline.core.config.profiles import SELECTION_METHODS
from gtp_pipeline.partitions import model_checkpoint
from gtp_pipeline.resources.profile import ProfileResource
from gtp_pipeline.resources.storage import ArtifactStore

SELECTION_CODE_VERSION = "1"
ALL_CHECKPOINTS = [
    dg.AssetDep("gradient_trajectories", partition_mapping=dg.AllPartitionMapping()),
    dg.AssetDep("target_gradients", partition_mapping=dg.AllPartitionMapping()),
]


class SelectionConfig(dg.Config):
    """Run-config knobs of one selection run. Budgets are not among them: they come from the profile or the
    configuration file, which the ClusterClip plan, the fine-tune partitions and the report read as well."""

    target: str = "target"  # "target": the target task's dev gradients; "in_domain": the pool's mean trajectory
    accept_ratio: float = 0.5  # GTP gamma (core/selection/pursuit.py): lower = fewer passes, slightly higher residual
    swap_rounds: int = 1  # GTP refinement passes after the support is full
    seed: int = 0  # random_selection only
    gtp_targets: str = "mean"  # GTP matches the "mean" target, or jointly: per_subtask / per_example / per_checkpoint
    gtp_center: bool = False  # GTP on trajectories centered on the pool's mean (core/features/centered.py)
    gtp_fill: str = "target"  # rank GTP's fill by the "target" (LESS's score) or the final "residual" (OMP)
    dask_scheduler: str = ""  # "tcp://host:8786": run the streaming passes as Dask tasks there (same selection)


def open_trajectories(instance, raw_corpus, target_examples, profile: ProfileResource, store: ArtifactStore):
    """The candidates' view over every registered checkpoint, the target trajectory (subtask means), each dev
    example's own trajectory, and the checkpoint keys and gradient-store paths they were read from."""
    import numpy as np

    from gtp_pipeline.core.features.store_trajectories import StoreTrajectories
    from gtp_pipeline.core.features.target_trajectory import build_target
    from gtp_pipeline.core.storage.feature_store import FeatureStore

    keys = instance.get_dynamic_partitions(model_checkpoint.name)
    if not keys:
        raise ValueError(
            "no model_checkpoint partitions: materialize warmup_checkpoints (or let the checkpoint sensor register yours)"
        )
    corpus_ver, target_ver = corpus_version(raw_corpus), target_version(target_examples)
    candidate_paths, target_paths, lr = [], [], []
    for key in keys:
        lr.append(resolve_checkpoint(store, corpus_ver, key, profile.checkpoint_dir).lr_weight)
        candidate_paths.append(gradient_store_path(store, "gradient_trajectories", key, corpus_ver))
        target_paths.append(gradient_store_path(store, "target_gradients", key, f"{corpus_ver}-{target_ver}"))
    missing = [str(p) for p in candidate_paths + target_paths if not FeatureStore.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"gradient stores missing for this corpus/target: {missing[:4]}; materialize gradient_trajectories and target_gradients for every checkpoint"
        )
    view = StoreTrajectories.from_paths(candidate_paths, lr)
    target_stores = [FeatureStore.open(p) for p in target_paths]
    dev = target_examples.filter(target_examples["split"] == "dev")
    order = {eid: i for i, eid in enumerate(dev["example_id"])}
    subtasks = np.asarray([dev["subtask"][order[eid]] for eid in target_stores[0].example_ids()])
    target = build_target(target_stores, lr, subtasks, candidates=view)
    valid = np.logical_and.reduce([st.valid_mask() for st in target_stores])
    own = np.where(valid, np.arange(valid.size), np.argmax(valid))  # invalid rows share a label and are never read
    per_example = build_target(target_stores, lr, own)
    return view, target, per_example, keys, candidate_paths, lr


def _trajectories(
    context, raw_corpus, target_examples, profile: ProfileResource, store: ArtifactStore, dask_scheduler: str = ""
):
    """`open_trajectories`, with the view streamed here or by Dask tasks on `dask_scheduler`, the candidates'
    example ids, and provenance metadata."""
    import numpy as np

    view, target, per_example, keys, candidate_paths, lr = open_trajectories(
        context.instance, raw_corpus, target_examples, profile, store
    )
    ids = np.asarray(view.stores[0].example_ids())
    if dask_scheduler:
        from gtp_pipeline.core.features.dask_trajectories import DaskTrajectories

        context.log.info(f"streaming passes as Dask tasks on {dask_scheduler}")
        view = DaskTrajectories(candidate_paths, lr, dask_scheduler)
    provenance = {
        "corpus_version": corpus_version(raw_corpus),
        "target_version": target_version(target_examples),
        "checkpoints": ", ".join(keys),
        "lr_weights": ", ".join(f"{w / sum(lr):.4f}" for w in lr),
        "gradient_data_versions": metadata_table(_latest_versions(context.instance, keys)),
    }
    return view, (target, per_example), ids, provenance


def _latest_versions(instance, keys: list[str]) -> list[dict]:
    rows = []
    for asset in ("gradient_trajectories", "target_gradients"):
        for key in keys:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1
            ).records
            tags = records[0].asset_materialization.tags if records else {}
            rows.append(
                {"asset": asset, "checkpoint": key, "data_version": (tags or {}).get("dagster/data_version", "-")}
            )
    return rows


def _select(
    context,
    method: str,
    raw_corpus,
    target_examples,
    profile: ProfileResource,
    store: ArtifactStore,
    config: SelectionConfig,
):
    """Run one method at every budget; a table of (budget, example_id, weight, rank) plus metadata."""
    view, targets, ids, provenance = _trajectories(
        context, raw_corpus, target_examples, profile, store, config.dask_scheduler
    )
    try:
        return _select_all(context, method, view, targets, ids, provenance, raw_corpus, profile, config)
    finally:
        if hasattr(view, "close"):
            view.close()  # a Dask view drops its workers' cached stores and its client


def _select_all(context, method, view, targets, ids, provenance, raw_corpus, profile, config):
    from gtp_pipeline.core.selection.budget_selections import select_at_budgets
    from gtp_pipeline.core.selection.gtp_variants import GTPVariant
    from gtp_pipeline.core.selection.pursuit import PursuitConfig

    pursuit = PursuitConfig(
        accept_ratio=config.accept_ratio, swap_rounds=config.swap_rounds, seed=config.seed, fill=config.gtp_fill
    )
    result = select_at_budgets(
        method,
        view,
        *targets,
        ids,
        raw_corpus,
        profile.settings().budgets.budgets,
        pursuit,
        GTPVariant(targets=config.gtp_targets, center=config.gtp_center),
        in_domain=config.target == "in_domain",
        log=context.log.info,
    )
    return dg.Output(result.table, metadata=_selection_metadata(method, result, provenance, config))


def _selection_metadata(method, result, provenance, config) -> dict:
    from gtp_pipeline.core.evaluation.plots import lines_png

    metadata = {
        **provenance,
        "engine": f"dask ({config.dask_scheduler})" if config.dask_scheduler else "in process",
        "method": method,
        "target": config.target,
        "per_budget": metadata_table(result.summary),
    }
    if result.fill_notes:
        metadata["gtp_variant"] = result.variant.name
        metadata["fitted_and_fill"] = dg.MetadataValue.md("\n".join(result.fill_notes))
    metadata["composition_by_source"] = metadata_table(result.composition.to_dicts())
    if result.curves:
        title = f"{method}: ||r|| / ||b|| per round"
        plot = lines_png(result.curves, title=title, xlabel="round", ylabel="relative residual")
        metadata["residual_per_round"] = md_image(plot, "residuals")
    return metadata


def _selection_asset(method: str, description: str):
    @dg.asset(
        name=f"{method}_selection",
        description=description,
        group_name="selection",
        kinds={"numpy", "parquet"},
        code_version=SELECTION_CODE_VERSION,
        deps=[*ALL_CHECKPOINTS, "selection_recipe"],
        automation_condition=ON_INPUT_DATA_CHANGE,
    )
    def _asset(
        context: dg.AssetExecutionContext,
        raw_corpus,
        target_examples,
        profile: ProfileResource,
        store: ArtifactStore,
        config: SelectionConfig,
    ):
        return _select(context, method, raw_corpus, target_examples, profile, store, config)

    return _asset


DESCRIPTIONS = {
    "gtp": "GTP's joint non-negative pursuit of the target gradient trajectory, per budget: example_id, weight, rank.",
    "topk": "LESS top-k by LR-weighted cosine (mean per subtask, max over subtasks), per budget.",
    "random": "A seeded uniform random subset of the pool, per budget (the baseline every method must beat).",
}


def selection_inputs() -> dict[str, dg.AssetIn]:
    """Every selection asset as an input, for the stages that read them all (fine-tunes, report)."""
    return {f"{m}_selection": dg.AssetIn() for m in SELECTION_METHODS}


def by_method(selections: dict) -> dict:
    """{"gtp_selection": table, ...} as {"gtp": table, ...}."""
    return {name.removesuffix("_selection"): table for name, table in selections.items()}


# one asset per method in SELECTION_METHODS (core/config/profiles.py)
selection_assets = [
    _selection_asset(m, DESCRIPTIONS.get(m, f"The {m!r} selection of the pool, per budget: example_id, weight, rank."))
    for m in SELECTION_METHODS
]
