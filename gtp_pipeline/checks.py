"""Asset checks: what must hold of an asset before anything downstream may use it."""

import dagster as dg


@dg.asset_check(asset="raw_corpus", blocking=True, description="example_id is unique and no text is empty.")
def raw_corpus_ids_unique(raw_corpus) -> dg.AssetCheckResult:
    n_ids = raw_corpus["example_id"].n_unique()
    empty = int((raw_corpus["prompt"].str.len_chars() == 0).sum() + (raw_corpus["response"].str.len_chars() == 0).sum())
    return dg.AssetCheckResult(
        passed=n_ids == raw_corpus.height and empty == 0,
        metadata={"rows": raw_corpus.height, "unique_ids": n_ids, "empty_texts": empty},
    )


@dg.asset_check(asset="target_examples", blocking=True, description="dev and test splits are disjoint and dev is non-empty.")
def target_splits_disjoint(target_examples) -> dg.AssetCheckResult:
    dev = set(target_examples.filter(target_examples["split"] == "dev")["content_hash"])
    test = set(target_examples.filter(target_examples["split"] == "test")["content_hash"])
    return dg.AssetCheckResult(
        passed=bool(dev) and not (dev & test),
        metadata={"dev": len(dev), "test": len(test), "overlap": len(dev & test)},
    )
