"""Asset checks: what must hold of an asset before anything downstream may use it.

Blocking checks stop downstream assets in the same run when they fail (wrong ids, overlapping
splits); warning checks report without stopping (a high reject rate, contamination kept by flag).
"""

import os

import dagster as dg

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
