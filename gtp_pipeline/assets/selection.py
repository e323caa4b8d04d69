"""Selection stage: GTP's joint pursuit, LESS top-k and random, each at every budget, on the same gradient stores."""

import time

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
    gtp_fill: str = "residual"  # rank GTP's fill by the final "residual" (OMP) or the "target" (LESS's score)
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
    missing = [str(p) for p in candidate_paths + target_paths if not (p / "zarr.json").exists()]
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
    import numpy as np
    import polars as pl

    from gtp_pipeline.core.config.profiles import budget_count, budget_label
    from gtp_pipeline.core.evaluation.plots import lines_png
    from gtp_pipeline.core.selection.gtp_variants import GTPVariant, describe_fill
    from gtp_pipeline.core.selection.pursuit import PursuitConfig
    from gtp_pipeline.core.selection.selection_baselines import evaluate_selection
    from gtp_pipeline.core.selection.selection_methods import in_domain_target, select
    from gtp_pipeline.core.selection.selection_stats import duplicate_stats

    target, per_example = targets
    variant = GTPVariant(targets=config.gtp_targets, center=config.gtp_center)
    if config.target == "in_domain":  # the pool's own mean, matched as one target
        target, per_example, variant = in_domain_target(view), None, GTPVariant()
    b = target.vector
    corpus_by_id = raw_corpus.select("example_id", "source", "task", "content_hash", "prompt")
    frames, summary, curves, fill_notes = [], [], {}, []
    for budget in profile.settings().budgets.budgets:
        k = budget_count(budget, int(view.valid_mask().sum()))
        pconfig = PursuitConfig(
            budget=k,
            accept_ratio=config.accept_ratio,
            swap_rounds=config.swap_rounds,
            seed=config.seed,
            fill=config.gtp_fill,
        )
        start = time.perf_counter()
        chosen = select(method, view, target, pconfig, per_example, variant)
        seconds = time.perf_counter() - start
        _, residual = evaluate_selection(view, chosen.indices, b)
        rows = view.gather(chosen.indices)
        label = budget_label(budget)
        picked = pl.DataFrame(
            {
                "example_id": ids[chosen.indices],
                "weight": chosen.weights.astype(np.float64),
                "rank": np.arange(1, k + 1),
            }
        )
        picked = picked.join(corpus_by_id, on="example_id", how="left")
        dups = duplicate_stats(rows, picked["content_hash"].to_list(), picked["prompt"].to_list())
        frames.append(
            picked.select(
                pl.lit(label).alias("budget"),
                pl.lit(float(budget)).alias("budget_value"),
                "example_id",
                "weight",
                "rank",
                pl.lit(round(seconds, 4)).alias("select_seconds"),
            )
        )
        if chosen.residuals.size:
            curves[label] = (
                list(range(1, chosen.residuals.size + 1)),
                (chosen.residuals / chosen.target_norm).tolist(),
            )
        summary.append(
            {
                "budget": label,
                "k": k,
                "relative_residual": round(residual / float(np.linalg.norm(b)), 4),
                "passes": chosen.passes,
                "rounds": chosen.rounds,
                "fitted": k - chosen.fill,
                "fill": chosen.fill,
                "stop": chosen.stop_reason,
                "exact_duplicates": dups["exact"],
                "near_duplicates": dups["near"],
                "seconds": round(seconds, 3),
            }
        )
        context.log.info(
            f"{method} @ {label}: k={k}, relative NNLS residual {summary[-1]['relative_residual']}, {seconds:.2f}s"
        )
        if method == "gtp":
            fill_notes.append(f"- {label}: {describe_fill(chosen)}")
    table = pl.concat(frames)
    composition = (
        table.join(raw_corpus.select("example_id", "source", "task"), on="example_id")
        .group_by("budget", "source")
        .len("examples")
        .sort("budget", "examples", descending=[False, True])
    )
    metadata = {
        **provenance,
        "engine": f"dask ({config.dask_scheduler})" if config.dask_scheduler else "in process",
        "method": method,
        "target": config.target,
        "per_budget": metadata_table(summary),
        **(
            {"gtp_variant": variant.name, "fitted_and_fill": dg.MetadataValue.md("\n".join(fill_notes))}
            if fill_notes
            else {}
        ),
        "composition_by_source": metadata_table(composition.to_dicts()),
        **(
            {
                "residual_per_round": md_image(
                    lines_png(
                        curves, title=f"{method}: ||r|| / ||b|| per round", xlabel="round", ylabel="relative residual"
                    ),
                    "residuals",
                )
            }
            if curves
            else {}
        ),
    }
    return dg.Output(table, metadata=metadata)


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
