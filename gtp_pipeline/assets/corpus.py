"""Corpus stage: the normalized pool (raw_corpus), every refused row (corpus_rejects), and the target task."""

import dagster as dg

from gtp_pipeline.assets.locations import corpus_version, target_version
from gtp_pipeline.assets.metadata import counts_table, md_image, md_table
from gtp_pipeline.automation import ON_INPUT_DATA_CHANGE
from gtp_pipeline.resources.profile import ProfileResource
from gtp_pipeline.resources.storage import ArtifactStore

CORPUS_CODE_VERSION = "1"


@dg.asset(group_name="corpus", kinds={"polars", "parquet"}, code_version=CORPUS_CODE_VERSION)
def target_examples(context: dg.AssetExecutionContext, profile: ProfileResource) -> dg.Output:
    """The target task's dev examples (for target gradients) and its disjoint held-out test split."""
    from gtp_pipeline.core.targets import load_target, target_frame

    spec = profile.settings().target
    examples, rejects = load_target(spec)
    frame = target_frame(examples, spec.name)
    for reject in rejects:
        context.log.warning(f"target row refused: {reject.origin}:{reject.row} {reject.reason} {reject.detail}")
    context.log.info(f"target {spec.name}: {frame.height} examples over {frame['subtask'].n_unique()} subtask(s)")
    return dg.Output(
        frame,
        data_version=dg.DataVersion(target_version(frame)),
        metadata={
            "task": spec.name,
            "dev_examples": int((frame["split"] == "dev").sum()),
            "test_examples": int((frame["split"] == "test").sum()),
            "multiple_choice": bool(frame["choices"].list.len().max() or 0),
            "refused_rows": len(rejects),
            "by_subtask_and_split": counts_table(frame, ["subtask", "split"]),
        },
    )


@dg.multi_asset(
    outs={
        "raw_corpus": dg.AssetOut(
            automation_condition=ON_INPUT_DATA_CHANGE,
            kinds={"polars", "parquet"},
            code_version=CORPUS_CODE_VERSION,
            description="The normalized candidate pool: example_id, content_hash, source, task, prompt, response, n_tokens.",
        ),
        "corpus_rejects": dg.AssetOut(
            automation_condition=ON_INPUT_DATA_CHANGE,
            kinds={"polars", "parquet"},
            code_version=CORPUS_CODE_VERSION,
            description="Every input row that was refused, with its source, row number and reason.",
        ),
    },
    group_name="corpus",
)
def corpus(context: dg.AssetExecutionContext, profile: ProfileResource, store: ArtifactStore, target_examples):
    """Read every pool source, validate, de-duplicate, drop target contamination, and id each example."""
    from gtp_pipeline.core.atomic import write_bytes
    from gtp_pipeline.core.corpus import REJECT_COLUMNS, build_corpus, prompt_key, table_version
    from gtp_pipeline.core.plots import histogram_png
    from gtp_pipeline.core.pool import read_pool

    settings = profile.settings()
    target_prompts = frozenset(prompt_key(p) for p in target_examples["prompt"])
    built = build_corpus(read_pool(settings.pool), settings.corpus, target_prompts)
    pool, rejects = built.corpus, built.rejects
    if pool.height == 0:
        raise ValueError(f"no valid examples among {built.n_read} rows read; see corpus_rejects for why")
    context.log.info(
        f"read {built.n_read} rows: {pool.height} examples, {rejects.height} refused "
        f"({built.n_duplicates} duplicates, {built.n_contaminated} contaminated)"
    )
    histogram = histogram_png(
        pool["n_tokens"].to_list(), bins=40, title="raw_corpus length", xlabel="n_tokens (words + punctuation)"
    )
    write_bytes(histogram, store.path_for("raw_corpus", "n_tokens_histogram.png"))
    yield dg.Output(
        pool,
        output_name="raw_corpus",
        data_version=dg.DataVersion(corpus_version(pool)),
        metadata={
            "examples": pool.height,
            "rows_read": built.n_read,
            "rows_refused": rejects.height,
            "duplicates": built.n_duplicates,
            "duplicate_policy": settings.corpus.duplicates,
            "contaminated": built.n_contaminated,
            "contamination_policy": settings.corpus.contamination,
            "by_source": counts_table(pool, ["source"]),
            "by_source_and_task": counts_table(pool, ["source", "task"]),
            "n_tokens": md_table([_length_summary(pool["n_tokens"])]),
            "n_tokens_histogram": md_image(histogram, "n_tokens histogram"),
        },
    )
    yield dg.Output(
        rejects,
        output_name="corpus_rejects",
        data_version=dg.DataVersion(table_version(rejects, REJECT_COLUMNS)),
        metadata={
            "rows_refused": rejects.height,
            "refused_share": round(rejects.height / max(built.n_read, 1), 4),
            "by_reason": counts_table(rejects, ["reason"]) if rejects.height else md_table([]),
            "by_source_and_reason": counts_table(rejects, ["source", "reason"]) if rejects.height else md_table([]),
        },
    )


def _length_summary(lengths) -> dict[str, float]:
    return {
        "mean": round(float(lengths.mean()), 1),
        "median": float(lengths.median()),
        "p90": float(lengths.quantile(0.9)),
        "max": int(lengths.max()),
    }
