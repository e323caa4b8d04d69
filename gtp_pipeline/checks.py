"""Asset checks: what must hold of an asset before anything downstream may use it.

Blocking checks stop downstream assets in the same run when they fail (wrong ids, overlapping
splits); warning checks report without stopping (a high reject rate, contamination kept by flag).
"""

import warnings

import dagster as dg

from gtp_pipeline.core.config import settings as env
from gtp_pipeline.core.config.profiles import SELECTION_METHODS
from gtp_pipeline.partitions import finetune_partitions, model_checkpoint
from gtp_pipeline.resources.profile import ProfileResource
from gtp_pipeline.resources.storage import ArtifactStore

# A reject share above this warns: usually a schema mismatch in the user's files, not bad rows.
MAX_REJECT_SHARE = float(env.get("GTP_MAX_REJECT_SHARE"))


@dg.asset_check(asset="raw_corpus", blocking=True, description="example_id is unique and no text is empty.")
def raw_corpus_ids_unique(raw_corpus) -> dg.AssetCheckResult:
    n_ids = raw_corpus["example_id"].n_unique()
    empty = int(
        (raw_corpus["prompt"].str.len_chars() == 0).sum() + (raw_corpus["response"].str.len_chars() == 0).sum()
    )
    return dg.AssetCheckResult(
        passed=n_ids == raw_corpus.height and empty == 0,
        metadata={"rows": raw_corpus.height, "unique_ids": n_ids, "empty_texts": empty},
    )


@dg.asset_check(
    asset="raw_corpus",
    additional_ins={"target_examples": dg.AssetIn()},
    description="No pool prompt is a target prompt, checked anew against the target (and every target the profile "
    "lists): under policy 'exclude' one would be an error; under 'flag' the kept ones are reported as a warning.",
)
def raw_corpus_contamination(raw_corpus, target_examples, profile: ProfileResource) -> dg.AssetCheckResult:
    from gtp_pipeline.core.ingest.corpus import prompt_key
    from gtp_pipeline.core.ingest.targets import contamination_keys

    settings = profile.settings()
    keys = contamination_keys(target_examples["prompt"], settings.contamination_targets)
    matching = [
        eid for eid, p in zip(raw_corpus["example_id"], raw_corpus["prompt"], strict=True) if prompt_key(p) in keys
    ]
    policy = settings.corpus.contamination
    return dg.AssetCheckResult(
        passed=not matching,
        severity=dg.AssetCheckSeverity.ERROR if policy == "exclude" else dg.AssetCheckSeverity.WARN,
        metadata={
            "policy": policy,
            "target_prompts_in_pool": len(matching),
            "flagged_contaminated": int(raw_corpus["contaminated"].sum()),
            "example_ids": ", ".join(matching[:20]),
        },
    )


@dg.asset_check(
    asset="corpus_rejects",
    additional_ins={"raw_corpus": dg.AssetIn()},
    description=f"The share of refused rows stays below GTP_MAX_REJECT_SHARE (default {MAX_REJECT_SHARE:.0%}).",
)
def corpus_reject_rate(corpus_rejects, raw_corpus) -> dg.AssetCheckResult:
    share = corpus_rejects.height / max(corpus_rejects.height + raw_corpus.height, 1)
    return dg.AssetCheckResult(
        passed=share <= MAX_REJECT_SHARE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "refused_share": round(share, 4),
            "threshold": MAX_REJECT_SHARE,
            "refused_rows": corpus_rejects.height,
        },
    )


@dg.asset_check(
    asset="target_examples", blocking=True, description="dev and test splits are disjoint and dev is non-empty."
)
def target_splits_disjoint(target_examples) -> dg.AssetCheckResult:
    dev = set(target_examples.filter(target_examples["split"] == "dev")["content_hash"])
    test = set(target_examples.filter(target_examples["split"] == "test")["content_hash"])
    return dg.AssetCheckResult(
        passed=bool(dev) and not (dev & test),
        metadata={"dev": len(dev), "test": len(test), "overlap": len(dev & test)},
    )


def _selection_check(asset: str):
    def check_fn(table, raw_corpus) -> dg.AssetCheckResult:
        from gtp_pipeline.core.config.profiles import budget_count

        problems = []
        for (budget,), group in table.group_by(["budget"]):
            k = budget_count(float(group["budget_value"][0]), raw_corpus.height)
            if group["example_id"].n_unique() != group.height:
                problems.append(f"{budget}: repeated example ids")
            if group.height > k:
                problems.append(f"{budget}: {group.height} rows > budget {k}")
            unknown = int((~group["example_id"].is_in(raw_corpus["example_id"].implode())).sum())
            if unknown:
                problems.append(f"{budget}: {unknown} ids not in raw_corpus")
        return dg.AssetCheckResult(
            passed=not problems, metadata={"problems": "; ".join(problems) or "none", "rows": table.height}
        )

    return dg.asset_check(
        asset=asset,
        name="selection_valid",
        blocking=True,
        additional_ins={"raw_corpus": dg.AssetIn()},
        description="Per budget: example ids are unique, exist in raw_corpus, and number at most the budget.",
    )(check_fn)


selection_checks = [_selection_check(f"{m}_selection") for m in SELECTION_METHODS]


# A check per checkpoint partition, so the UI shows which checkpoint's store is damaged; preview in the pinned Dagster.
warnings.filterwarnings("ignore", message=r"Specifying a partitions_def on an AssetCheckSpec")


def _latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str) -> dict | None:
    """The metadata of the asset partition's latest materialization (None if it has none)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()} if records else None


def _store_check(asset: str):
    def check_fn(context, store: ArtifactStore) -> dg.AssetCheckResult:
        import numpy as np

        from gtp_pipeline.assets.locations import gradient_store_path
        from gtp_pipeline.core.storage.feature_store import FeatureStore

        problems = []
        for key in context.partition_keys:  # one, or a range in a single-run backfill
            meta = _latest_metadata(context.instance, asset, key)
            if meta is None or "store_version" not in meta:
                problems.append(f"{key}: no materialization that names its store")
                continue
            path = gradient_store_path(store, asset, key, meta["store_version"])
            if not FeatureStore.exists(path):
                problems.append(f"{key}: no store at {path}")
                continue
            fs = FeatureStore.open(path)
            if fs.meta.n_rows != meta["store_rows"] or not fs.is_complete():
                problems.append(
                    f"{key}: {fs.meta.n_rows} rows (expected {meta['store_rows']}), "
                    f"{len(fs.missing_chunks())} chunks missing"
                )
            elif corrupt := {c: p for c in range(fs.n_chunks) if (p := fs.chunk_problem(c))}:
                problems.extend(f"{key}: chunk {c} {p}" for c, p in list(corrupt.items())[:3])
            elif not all(np.isfinite(fs.read_chunk(c)).all() for c in range(fs.n_chunks)):
                problems.append(f"{key}: non-finite values")
        return dg.AssetCheckResult(
            passed=not problems,
            metadata={"checkpoints": ", ".join(context.partition_keys), "problems": "; ".join(problems) or "none"},
        )

    return dg.asset_check(
        asset=asset,
        name="stores_sound",
        blocking=True,
        partitions_def=model_checkpoint,
        description="The store this checkpoint's materialization wrote is complete, of its recorded shape, verified "
        "against its checksums, and finite.",
    )(check_fn)


gradient_stores_sound = _store_check("gradient_trajectories")
target_stores_sound = _store_check("target_gradients")


@dg.asset_check(
    asset="finetuned_model",
    name="adapter_sound",
    blocking=True,
    partitions_def=finetune_partitions,
    description="This fine-tune's saved adapter is the one it recorded (hash), with a finite loss and finite weights.",
)
def adapter_sound(context, store: ArtifactStore) -> dg.AssetCheckResult:
    from pathlib import Path

    from gtp_pipeline.core.training.checkpoints import checkpoint_problem

    problems = []
    for key in context.partition_keys:
        meta = _latest_metadata(context.instance, "finetuned_model", key)
        if meta is None:
            problems.append(f"{key}: never materialized")
            continue
        with store.local_folder(*meta["adapter_folder"].split("/")) as folder:
            if problem := checkpoint_problem(Path(folder) / meta["adapter_checkpoint"]):
                problems.append(f"{key}: {problem}")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"fine_tunes": ", ".join(context.partition_keys), "problems": "; ".join(problems) or "none"},
    )


@dg.asset_check(
    asset="evaluation",
    description="The base model and every materialized fine-tune (run x seed) are scored, and every loss is finite.",
)
def evaluation_complete(context, evaluation) -> dg.AssetCheckResult:
    import math

    from gtp_pipeline.core.config.run_key import RunKey

    trained = {RunKey.parse(k) for k in context.instance.get_materialized_partitions(dg.AssetKey("finetuned_model"))}
    scored = {(r["run"], r["seed"]) for r in evaluation.iter_rows(named=True)}
    unscored = sorted(k.partition_key for k in trained if (k.run, k.seed) not in scored)
    non_finite = [f"{r['run']}|{r['seed']}" for r in evaluation.iter_rows(named=True) if not math.isfinite(r["loss"])]
    has_base = any(r == "base" for r, _ in scored)
    return dg.AssetCheckResult(
        passed=has_base and not unscored and not non_finite,
        metadata={
            "models_scored": len(scored),
            "fine_tunes_materialized": len(trained),
            "base_model_scored": has_base,
            "unscored": ", ".join(unscored[:20]) or "none",
            "non_finite_loss": ", ".join(non_finite[:20]) or "none",
        },
    )


@dg.asset_check(
    asset="clusters",
    additional_ins={"raw_corpus": dg.AssetIn()},
    description="Every pool example has exactly one cluster, a label in [0, K), and a finite similarity in [-1, 1].",
)
def clusters_cover_the_pool(clusters, raw_corpus) -> dg.AssetCheckResult:
    import polars as pl

    missing = raw_corpus.height - clusters.join(raw_corpus.select("example_id"), on="example_id", how="semi").height
    repeated = clusters.height - clusters["example_id"].n_unique()
    n_clusters = clusters["cluster"].n_unique()
    bad_label = int((clusters["cluster"] < 0).sum())
    similarity = clusters["similarity"].cast(pl.Float64)
    bad_similarity = int((~similarity.is_finite() | (similarity.abs() > 1 + 1e-4)).sum())
    return dg.AssetCheckResult(
        passed=not (missing or repeated or bad_label or bad_similarity or clusters.height != raw_corpus.height),
        metadata={
            "rows": clusters.height,
            "pool_examples_without_cluster": missing,
            "repeated_examples": repeated,
            "clusters_used": n_clusters,
            "negative_labels": bad_label,
            "bad_similarities": bad_similarity,
        },
    )


@dg.asset_check(
    asset="embeddings",
    additional_ins={"raw_corpus": dg.AssetIn()},
    description="The embedding store of this corpus is complete, its chunks match their checksums, rows are unit "
    "vectors.",
)
def embeddings_sound(raw_corpus, store: ArtifactStore) -> dg.AssetCheckResult:
    import numpy as np

    from gtp_pipeline.assets.locations import corpus_version, embeddings_path
    from gtp_pipeline.core.storage.feature_store import FeatureStore

    path = embeddings_path(store, corpus_version(raw_corpus))
    if not FeatureStore.exists(path):
        return dg.AssetCheckResult(passed=False, metadata={"problems": f"no embedding store at {path}"})
    fs = FeatureStore.open(path)
    problems = []
    if fs.meta.n_rows != raw_corpus.height or not fs.is_complete():
        problems.append(
            f"{fs.meta.n_rows} rows (expected {raw_corpus.height}), {len(fs.missing_chunks())} chunks missing"
        )
    else:
        problems += [f"chunk {c}: {p}" for c in range(fs.n_chunks) if (p := fs.chunk_problem(c))][:3]
        if not problems:
            norms = np.concatenate(
                [np.linalg.norm(fs.read_chunk(c).astype(np.float64), axis=1) for c in range(fs.n_chunks)]
            )
            valid = fs.valid_mask()
            if not np.allclose(norms[valid], 1.0, atol=1e-2):
                problems.append(f"row norms from {norms[valid].min():.3f} to {norms[valid].max():.3f}, not 1")
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})
