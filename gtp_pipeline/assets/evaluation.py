"""Evaluation stage: every fine-tuned model (and the base model) on the target's held-out test split, and the report."""

from pathlib import Path

import dagster as dg

from gtp_pipeline.assets.locations import target_version
from gtp_pipeline.assets.metadata import md_image, md_inline_svg, metadata_table
from gtp_pipeline.assets.selection import by_method, selection_inputs
from gtp_pipeline.automation import ON_INPUT_DATA_CHANGE
from gtp_pipeline.core.config.run_key import RunKey
from gtp_pipeline.gpu_workers import GPU_STEP_TAGS
from gtp_pipeline.resources.compute import ComputeResource
from gtp_pipeline.resources.models import ModelSource
from gtp_pipeline.resources.profile import ProfileResource
from gtp_pipeline.resources.storage import ArtifactStore

EVALUATION_CODE_VERSION = "2"  # 2: per-example results (evaluation/per_example.parquet) and the report's verdict
PER_EXAMPLE_FILE = "per_example.parquet"
ALL_FINETUNES = [dg.AssetDep("finetuned_model", partition_mapping=dg.AllPartitionMapping())]


def _models_to_score(instance, loaded, store: ArtifactStore) -> list:
    """The base model, then the latest materialization of each finetuned_model partition (its adapter read back
    through the artifact store, pulled first when the root is remote)."""
    from contextlib import contextmanager, nullcontext

    from gtp_pipeline.core.evaluation.scoring import BASE_SEED, ModelToScore
    from gtp_pipeline.core.training.lora_train import load_lora_model

    @contextmanager
    def adapter(meta: dict):
        if "adapter_folder" not in meta:  # recorded before adapters were read through the store: a local path
            yield load_lora_model(loaded.model, meta["adapter"])
            return
        with store.local_folder(*meta["adapter_folder"].split("/")) as folder:
            yield load_lora_model(loaded.model, folder / meta["adapter_checkpoint"])

    models = [ModelToScore("base", BASE_SEED, f"base-{loaded.model_id}", lambda: nullcontext(loaded.model))]
    latest: dict[str, dict] = {}
    for record in instance.fetch_materializations(dg.AssetKey("finetuned_model"), limit=10_000).records:  # newest 1st
        latest.setdefault(record.asset_materialization.partition, record.asset_materialization.metadata)
    for partition in sorted(latest, key=lambda p: (RunKey.parse(p).run, RunKey.parse(p).seed)):
        meta, key = {k: v.value for k, v in latest[partition].items()}, RunKey.parse(partition)
        models.append(ModelToScore(key.run, key.seed, meta["checkpoint_id"], lambda m=meta: adapter(m), meta))
    return models


@dg.asset(
    group_name="evaluation",
    kinds={"torch", "parquet"},
    code_version=EVALUATION_CODE_VERSION,
    deps=[*ALL_FINETUNES, "finetune_recipe"],
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    automation_condition=ON_INPUT_DATA_CHANGE,
)
def evaluation(
    context: dg.AssetExecutionContext,
    target_examples,
    profile: ProfileResource,
    store: ArtifactStore,
    model: ModelSource,
    compute: ComputeResource,
):
    """Target test loss (mean response-token NLL) and multiple-choice accuracy of the base model and every fine-tune."""
    from gtp_pipeline.core.evaluation.evaluate import scoring_numerics
    from gtp_pipeline.core.evaluation.scoring import RESULT_COLUMNS, eval_inputs, result_rows, score_models
    from gtp_pipeline.core.storage.atomic import write_parquet

    settings = profile.settings()
    examples, eval_config = eval_inputs(target_examples, settings)
    loaded, device = model.load(), compute.configure_torch()
    table, per_example = score_models(
        _models_to_score(context.instance, loaded, store),
        loaded.tokenizer,
        examples,
        eval_config,
        device,
        store.path_for("evaluation", "cache"),
        target_version(target_examples),
        context.log.info,
    )
    per_example_path = write_parquet(per_example, store.path_for("evaluation", PER_EXAMPLE_FILE))
    files = f" ({', '.join(Path(f).name for f in settings.target.files)})" if settings.target.files else ""
    return dg.Output(
        table,
        metadata={
            "per_example": dg.MetadataValue.path(str(per_example_path)),
            "per_example_rows": per_example.height,
            "test_examples": len(examples),
            "target": settings.target.name + files,
            "models": table.height,
            "scored_with": scoring_numerics(eval_config, device),  # scores pair only within one arithmetic
            "results": metadata_table(result_rows(table), RESULT_COLUMNS),
        },
    )


def _read_per_example(store: ArtifactStore, evaluation):
    """The per-example scores the evaluation wrote beside its table, restricted to the models in that table.

    None when the evaluation was materialized before per-example results were kept. Rows of models not in the
    table are dropped, so the verdict is never about models the summary does not show.
    """
    from gtp_pipeline.core.storage.atomic import read_parquet

    path = store.path_for("evaluation", PER_EXAMPLE_FILE)
    if not path.exists():
        return None
    return read_parquet(path).join(evaluation.select("run", "seed").unique(), on=["run", "seed"], how="semi")


@dg.asset(
    group_name="evaluation",
    kinds={"polars", "markdown"},
    code_version=EVALUATION_CODE_VERSION,
    automation_condition=ON_INPUT_DATA_CHANGE,
    ins=selection_inputs(),
)
def selection_report(
    context: dg.AssetExecutionContext,
    evaluation,
    clusterclip_plan,
    raw_corpus,
    store: ArtifactStore,
    **selection_tables,
) -> dg.MaterializeResult:
    """Which data wins: method x budget -> loss and accuracy (mean, spread over seeds), paired verdicts, plots."""
    from gtp_pipeline.core.evaluation.report import build_report
    from gtp_pipeline.core.storage.atomic import write_bytes

    per_example = _read_per_example(store, evaluation)
    if per_example is None:
        context.log.warning("no per-example evaluation results: the report has no verdict (re-run evaluation)")
    report = build_report(
        evaluation, by_method(selection_tables), clusterclip_plan, raw_corpus, per_example=per_example
    )
    files = report.files()
    paths = {name: store.path_for("selection_report", name) for name in files}
    for name, data in files.items():
        write_bytes(data, paths[name])
    glance = md_inline_svg(report.glance_svg) if report.glance_svg else None
    return dg.MaterializeResult(
        metadata={
            **({"loss_at_a_glance": glance} if glance else {}),  # first, and drawn without a click
            "table": metadata_table(report.table_rows()),
            "runs": len(report.rows),
            **report.numbers(),  # one number per method and budget, so the UI plots them across materializations
            **({"verdict": metadata_table(report.verdicts)} if report.verdicts else {}),
            "report": dg.MetadataValue.path(str(paths["report.md"])),
            **{name: md_image(png, name) for name, png in report.plots.items()},
            **{f"{name}_file": dg.MetadataValue.path(str(paths[f"{name}.png"])) for name in report.plots},
        }
    )
