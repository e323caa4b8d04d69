"""Corpus stage: the normalized pool (raw_corpus), every refused row (corpus_rejects), and the target task
(target_examples, with its refused and surplus rows in target_rejects)."""

import dagster as dg

from gtp_pipeline.assets.locations import corpus_version, target_version
from gtp_pipeline.assets.metadata import counts_or_none, counts_table, md_image, metadata_table
from gtp_pipeline.automation import ON_INPUT_DATA_CHANGE
from gtp_pipeline.resources.failures import fail_fast
from gtp_pipeline.resources.profile import ProfileResource
from gtp_pipeline.resources.storage import ArtifactStore

CORPUS_CODE_VERSION = "1"


@dg.multi_asset(
    outs={
        "target_examples": dg.AssetOut(
            kinds={"polars", "parquet"},
            code_version=CORPUS_CODE_VERSION,
            description="The target task's dev examples (for target gradients) and its disjoint held-out test split.",
        ),
        "target_rejects": dg.AssetOut(
            kinds={"polars", "parquet"},
            code_version=CORPUS_CODE_VERSION,
            description="Every target row not among target_examples: refused (with the rule it broke) or surplus.",
        ),
    },
    group_name="corpus",
    deps=["target_input"],
)
def target(context: dg.AssetExecutionContext, profile: ProfileResource):
    """Read the target task, check each row, split dev/test; every row read lands in exactly one of the two."""
    from gtp_pipeline.core.ingest.corpus import REJECT_COLUMNS, table_version
    from gtp_pipeline.core.ingest.records import RejectReason
    from gtp_pipeline.core.ingest.targets import load_target, refusal_log_lines, target_frame, target_rejects_frame

    with fail_fast():  # a missing file or an impossible split is a setting to fix: no retry
        spec = profile.settings().target
        examples, refused = load_target(spec)
    frame, rejects = target_frame(examples, spec.name), target_rejects_frame(refused)
    warning, info = refusal_log_lines(refused)
    if warning:
        context.log.warning(warning)
    if info:
        context.log.info(info)
    context.log.info(f"target {spec.name}: {frame.height} examples over {frame['subtask'].n_unique()} subtask(s)")
    yield dg.Output(
        frame,
        output_name="target_examples",
        data_version=dg.DataVersion(target_version(frame)),
        metadata={
            "task": spec.name,
            "dev_examples": int((frame["split"] == "dev").sum()),
            "test_examples": int((frame["split"] == "test").sum()),
            "multiple_choice": bool(frame["choices"].list.len().max() or 0),
            "refused_rows": int((rejects["reason"] != RejectReason.SURPLUS).sum()),  # surplus rows broke no rule
            "surplus_rows": int((rejects["reason"] == RejectReason.SURPLUS).sum()),
            "by_subtask_and_split": counts_table(frame, ["subtask", "split"]),
        },
    )
    yield dg.Output(  # every run, even empty, so target_rejects always describes the current target_examples
        rejects,
        output_name="target_rejects",
        data_version=dg.DataVersion(table_version(rejects, REJECT_COLUMNS)),
        metadata={
            "rows_refused": rejects.height,
            "by_reason": counts_or_none(rejects, ["reason"]),
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
    deps=["pool_input"],
)
def corpus(context: dg.AssetExecutionContext, profile: ProfileResource, store: ArtifactStore, target_examples):
    """Read every pool source, validate, de-duplicate, drop target contamination, and id each example."""
    from gtp_pipeline.core.evaluation.plots import histogram_png
    from gtp_pipeline.core.ingest.pool import ingest_pool
    from gtp_pipeline.core.storage.atomic import write_bytes

    with fail_fast():  # a missing corpus file is a setting to fix: no retry
        settings = profile.settings()
        built = ingest_pool(settings, target_examples["prompt"])
    pool, rejects = built.corpus, built.rejects
    if unreadable := built.unreadable_files():
        context.log.warning(f"files that could not be read, see corpus_rejects: {unreadable}")
    yield dg.Output(  # first, so that it exists for the user to read even when the pool turns out empty
        rejects,
        output_name="corpus_rejects",
        data_version=dg.DataVersion(built.rejects_version()),
        metadata={
            **built.rejects_summary(),
            "by_reason": counts_or_none(rejects, ["reason"]),
            "by_source_and_reason": counts_or_none(rejects, ["source", "reason"]),
        },
    )
    if pool.height == 0:
        raise dg.Failure(built.empty_pool_reason(), allow_retries=False)
    context.log.info(built.describe())
    lengths = pool["n_tokens"].to_list()
    histogram = histogram_png(lengths, bins=40, title="raw_corpus length", xlabel="n_tokens (words + punctuation)")
    write_bytes(histogram, store.path_for("raw_corpus", "n_tokens_histogram.png"))
    yield dg.Output(
        pool,
        output_name="raw_corpus",
        data_version=dg.DataVersion(corpus_version(pool)),
        metadata={
            **built.summary(settings),
            "by_source": counts_table(pool, ["source"]),
            "by_source_and_task": counts_table(pool, ["source", "task"]),
            "n_tokens": metadata_table([built.length_summary()]),
            "n_tokens_histogram": md_image(histogram, "n_tokens histogram"),
        },
    )
