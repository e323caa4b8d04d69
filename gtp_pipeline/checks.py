"""Asset checks: what must hold of an asset before anything downstream may use it.

Blocking checks stop downstream assets in the same run when they fail (wrong ids, overlapping
splits); warning checks report without stopping (a high reject rate, contamination kept by flag).
"""

import os

import dagster as dg

from gtp_pipeline.resources.storage import ArtifactStore

# A reject share above this warns: usually a schema mismatch in the user's files, not bad rows.
MAX_REJECT_SHARE = float(os.environ.get("GTP_MAX_REJECT_SHARE", "0.2"))


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
    description="Target examples kept in the pool (contamination policy 'flag') are reported; none is expected.",
)
def raw_corpus_contamination(raw_corpus) -> dg.AssetCheckResult:
    flagged = raw_corpus.filter(raw_corpus["contaminated"])
    return dg.AssetCheckResult(
        passed=flagged.height == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "contaminated_in_pool": flagged.height,
            "example_ids": ", ".join(flagged["example_id"].head(20).to_list()),
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
        from gtp_pipeline.core.profiles import budget_count

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


gtp_selection_valid = _selection_check("gtp_selection")
topk_selection_valid = _selection_check("topk_selection")
random_selection_valid = _selection_check("random_selection")


def _store_check(asset: str):
    def check_fn(context, raw_corpus, target_examples, store: ArtifactStore) -> dg.AssetCheckResult:
        import numpy as np

        from gtp_pipeline.assets.locations import corpus_version, gradient_store_path, target_version
        from gtp_pipeline.core.feature_store import FeatureStore
        from gtp_pipeline.partitions import model_checkpoint

        version = corpus_version(raw_corpus)
        if asset == "target_gradients":
            version, n_rows = (
                f"{version}-{target_version(target_examples)}",
                int((target_examples["split"] == "dev").sum()),
            )
        else:
            n_rows = raw_corpus.height
        problems, checked = [], 0
        for key in context.instance.get_dynamic_partitions(model_checkpoint.name):
            path = gradient_store_path(store, asset, key, version)
            if not (path / "zarr.json").exists():
                continue  # not materialized yet for this partition: nothing to check
            fs = FeatureStore.open(path)
            checked += 1
            if fs.meta.n_rows != n_rows or not fs.is_complete():
                problems.append(
                    f"{key}: {fs.meta.n_rows} rows (expected {n_rows}), {len(fs.missing_chunks())} chunks missing"
                )
                continue
            corrupt = {c: p for c in range(fs.n_chunks) if (p := fs.chunk_problem(c))}
            if corrupt:
                problems.extend(f"{key}: chunk {c} {p}" for c, p in list(corrupt.items())[:3])
            elif not all(np.isfinite(fs.read_chunk(c)).all() for c in range(fs.n_chunks)):
                problems.append(f"{key}: non-finite values")
        return dg.AssetCheckResult(
            passed=not problems, metadata={"stores_checked": checked, "problems": "; ".join(problems) or "none"}
        )

    return dg.asset_check(
        asset=asset,
        name="stores_sound",
        blocking=True,
        additional_ins={"raw_corpus": dg.AssetIn(), "target_examples": dg.AssetIn()},
        description="Each checkpoint's store for the current corpus is complete, of the expected shape, and finite.",
    )(check_fn)


gradient_stores_sound = _store_check("gradient_trajectories")
target_stores_sound = _store_check("target_gradients")
