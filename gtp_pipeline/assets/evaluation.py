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
CACHE_FORMAT = "v2"  # v2 caches hold per-example scores; older caches lack them, so they are recomputed
PER_EXAMPLE_FILE = "per_example.parquet"
ALL_FINETUNES = [dg.AssetDep("finetuned_model", partition_mapping=dg.AllPartitionMapping())]


def eval_inputs(target_examples, settings):
    """The target's test examples as EvalExamples, and the scoring settings every evaluation of them uses."""
    from gtp_pipeline.core.evaluation.evaluate import EvalConfig, EvalExample

    test = target_examples.filter(target_examples["split"] == "test")
    if test.height == 0:
        raise ValueError("the target has no test examples (n_test=0): nothing to evaluate on")
    examples = [
        EvalExample(r["example_id"], r["prompt"], r["response"], tuple(r["choices"]), r["answer_index"])
        for r in test.iter_rows(named=True)
    ]
    config = EvalConfig(
        max_len=settings.gradients.max_len,
        batch_size=settings.budgets.eval_batch_size,
        precision=settings.gradients.train_precision,  # evaluate in the precision the models were trained in
    )
    return examples, config


def _per_example_rows(run: dict, method: str, budget: str, result: dict) -> list[dict]:
    """One row per test example of one model: what the report's paired comparisons resample."""
    return [
        {
            "run": run["run"],
            "method": method,
            "budget": budget,
            "seed": run["seed"],
            "example_id": e["example_id"],
            "loss": e["loss"],
            "correct": e["correct"],
        }
        for e in result["per_example"]
    ]


def _latest_finetunes(instance) -> list[dict]:
    """The latest materialization of each finetuned_model partition: run, seed and the metadata it recorded."""
    records = instance.fetch_materializations(dg.AssetKey("finetuned_model"), limit=10_000).records  # newest first
    latest: dict[str, dict] = {}
    for record in records:
        mat = record.asset_materialization
        if mat.partition in latest:
            continue
        meta = {k: v.value for k, v in mat.metadata.items()}
        key = RunKey.parse(mat.partition)
        latest[mat.partition] = {"run": key.run, "seed": key.seed, **meta}
    return sorted(latest.values(), key=lambda r: (r["run"], r["seed"]))


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
    import json

    import polars as pl

    from gtp_pipeline.core.evaluation.evaluate import evaluate
    from gtp_pipeline.core.storage.atomic import write_bytes, write_parquet
    from gtp_pipeline.core.training.lora_train import load_lora_model

    settings = profile.settings()
    device = compute.configure_torch()
    examples, eval_config = eval_inputs(target_examples, settings)
    loaded = model.load()
    test_key = target_version(target_examples)
    runs = [
        {"run": "base", "seed": -1, "checkpoint_id": f"base-{loaded.model_id}", "adapter": None}
    ] + _latest_finetunes(context.instance)
    rows, per_example = [], []
    for run in runs:
        cache = store.path_for(
            "evaluation", "cache", f"{run['checkpoint_id']}-{test_key}-{eval_config.precision}-{CACHE_FORMAT}.json"
        )
        if cache.exists():  # evaluated by an earlier run: results are a function of (adapter, test set)
            result = json.loads(cache.read_text())
        else:
            if run["adapter"] is None:
                net = loaded.model
            elif "adapter_folder" not in run:  # recorded before adapters were read through the store
                net = load_lora_model(loaded.model, run["adapter"])
            else:
                with store.local_folder(*run["adapter_folder"].split("/")) as folder:  # pulled if the root is remote
                    net = load_lora_model(loaded.model, folder / run["adapter_checkpoint"])
            scored = evaluate(net, loaded.tokenizer, examples, eval_config, device)
            result = {
                "loss": scored.loss,
                "accuracy": scored.accuracy,
                "n_loss": scored.n_loss,
                "n_choice": scored.n_choice,
                "excluded": len(scored.excluded),
                "per_example": [
                    {"example_id": e["example_id"], "loss": e["loss"], "correct": e["correct"]}
                    for e in scored.per_example
                ],
            }
            write_bytes(json.dumps(result).encode(), cache)
            del net
        key = RunKey.from_run(run["run"], run["seed"])
        method, budget = key.method, key.budget_column
        rows.append(
            {
                "run": run["run"],
                "method": method,
                "budget": budget,
                "seed": run["seed"],
                "loss": result["loss"],
                "accuracy": result["accuracy"],
                "n_test": result["n_loss"],
                "n_choice": result["n_choice"],
                "examples": run.get("examples"),
                "draws": run.get("draws"),
                "train_seconds": run.get("train_seconds"),
                "checkpoint_id": run["checkpoint_id"],
            }
        )
        per_example.extend(_per_example_rows(run, method, budget, result))
        context.log.info(f"{run['run']} seed {run['seed']}: loss {result['loss']:.4f}, accuracy {result['accuracy']}")
    table = pl.DataFrame(
        rows,
        schema_overrides={
            "accuracy": pl.Float64,
            "examples": pl.Int64,
            "draws": pl.Int64,
            "train_seconds": pl.Float64,
        },
    )
    per_example_path = write_parquet(
        pl.DataFrame(
            per_example,
            schema={
                "run": pl.String,
                "method": pl.String,
                "budget": pl.String,
                "seed": pl.Int64,
                "example_id": pl.String,
                "loss": pl.Float64,
                "correct": pl.Boolean,
            },
        ),
        store.path_for("evaluation", PER_EXAMPLE_FILE),
    )
    return dg.Output(
        table,
        metadata={
            "per_example": dg.MetadataValue.path(str(per_example_path)),
            "per_example_rows": len(per_example),
            "test_examples": len(examples),
            "target": settings.target.name
            + (f" ({', '.join(Path(f).name for f in settings.target.files)})" if settings.target.files else ""),
            "models": len(rows),
            "results": metadata_table(  # the base model has no fine-tune seed: an empty cell, not its -1 sentinel
                [
                    {**{k: r[k] for k in ("run", "loss", "accuracy")}, "seed": r["seed"] if r["seed"] >= 0 else None}
                    for r in rows
                ],
                ["run", "seed", "loss", "accuracy"],
            ),
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
        evaluation,
        by_method(selection_tables),
        clusterclip_plan,
        raw_corpus,
        per_example=per_example,
    )
    write_bytes(report.markdown.encode(), store.path_for("selection_report", "report.md"))
    for name, png in report.plots.items():
        write_bytes(png, store.path_for("selection_report", f"{name}.png"))
    glance = md_inline_svg(report.glance_svg) if report.glance_svg else None
    return dg.MaterializeResult(
        metadata={
            **({"loss_at_a_glance": glance} if glance else {}),  # first, and drawn without a click
            "table": metadata_table(
                [
                    {k: r.get(k) for k in ("method", "budget", "seeds", "loss", "loss_sd", "accuracy", "examples")}
                    for r in report.rows
                ]
            ),
            "runs": len(report.rows),
            # one number per method and budget, so the UI plots them across materializations
            **{f"loss {r['method']} {r['budget']}": float(r["loss"]) for r in report.rows},
            **{
                f"accuracy {r['method']} {r['budget']}": float(r["accuracy"])
                for r in report.rows
                if isinstance(r["accuracy"], float) and r["accuracy"] == r["accuracy"]  # NaN/None: not multiple choice
            },
            **({"verdict": metadata_table(report.verdicts)} if report.verdicts else {}),
            "report": dg.MetadataValue.path(str(store.path_for("selection_report", "report.md"))),
            **{name: md_image(png, name) for name, png in report.plots.items()},
            **{
                f"{name}_file": dg.MetadataValue.path(str(store.path_for("selection_report", f"{name}.png")))
                for name in report.plots
            },
        }
    )
