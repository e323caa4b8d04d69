"""Compare selection methods and GTP variants by fine-tuning, with several seeds and a verdict with intervals.

    GTP_PROFILE=demo python -m gtp_pipeline.variant_study --budgets 0.05 --seeds 0,1,2

Reads what the pipeline materialized for the profile (the corpus, the target's dev and test splits, the gradient
stores of every checkpoint: run `make demo`, or the pipeline on your own data, first), selects with every method
(`core/evaluation/variant_study.py` explains the specs), fine-tunes each selection with every seed using the profile's recipe,
scores every test example (and, unless `--held-out-alignment no`, featurizes the test split at every checkpoint to
say how each selection lines up with it: core/evaluation/alignment.py; selection never sees it), and writes under `<artifact root>/variant_study/<target>/`: selections.parquet (what each
method picked, fitted vs fill, near-duplicates, sources), per_example.parquet, and study.md with the verdict
(core/evaluation/verdict.py) and its forest plot. Interrupted, it resumes: finished runs are read back, a half-trained one
continues from its last checkpoint. The base model and the full-pool fine-tunes depend only on the pool, so they
live in `variant_study/shared/` and studies of several targets on one pool (gtp_pipeline/multi_target.py) train
them once. The pipeline's own assets are not touched.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

DEFAULT_METHODS = (
    "gtp",
    "gtp+residual_fill",
    "gtp+per_example",
    "gtp+centered",
    "gtp+per_example+centered",
    "gtp+weights",
    "topk",
    "random",
)


SHARED_FOLDER = "shared"


def study_folder_name(target_name: str) -> str:
    """The study's folder under <artifact root>/variant_study/: one per target, named after it."""
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]", "_", target_name).strip(".") or "target"
    return f"{name}_" if name == SHARED_FOLDER else name


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated method specs")
    p.add_argument("--budgets", default="", help="comma-separated fractions or counts; default: the profile's")
    p.add_argument("--seeds", default="0,1,2", help="fine-tune seeds of every selection")
    p.add_argument("--full-seeds", default="0", help="seeds of the full-pool fine-tune ('' to skip it)")
    p.add_argument(
        "--held-out-alignment",
        default="yes",
        choices=("yes", "no"),
        help="featurize the target's test split to describe how each selection lines up with it (never selects)",
    )
    return p.parse_args(argv)


def held_out_target(loaded, device, view, target_examples, raw_corpus, keys, lr, profile, store, folder):
    """The target trajectory of the test split (None if it has none): its examples featurized at every checkpoint
    exactly as the dev examples are, into `folder` (resumed if there). It only describes selections."""
    import numpy as np

    from gtp_pipeline.assets.gradients import feature_config
    from gtp_pipeline.assets.locations import corpus_version, resolve_checkpoint
    from gtp_pipeline.core.features.featurize_checkpoints import featurize_checkpoints
    from gtp_pipeline.core.features.target_trajectory import build_target
    from gtp_pipeline.core.ingest.records import text_examples
    from gtp_pipeline.core.storage.feature_store import FeatureStore

    test = target_examples.filter(target_examples["split"] == "test")
    if test.height == 0:
        return None
    version = corpus_version(raw_corpus)
    featurize_checkpoints(
        loaded,
        text_examples(test),
        keys,
        lambda key: resolve_checkpoint(store, version, key, profile.checkpoint_dir),
        lambda key: folder / f"{key}.zarr",
        feature_config(profile, "sgd"),
        folder.name,
        device,
        "held-out test split",
        print,
    )
    stores = [FeatureStore.open(folder / f"{key}.zarr") for key in keys]
    subtask_of = dict(zip(test["example_id"], test["subtask"], strict=True))
    subtasks = np.asarray([subtask_of[eid] for eid in stores[0].example_ids()])
    return build_target(stores, lr, subtasks, candidates=view).vector


def run_variant_study(defs, instance, args: argparse.Namespace):
    """The study on what `instance` materialized with `defs`; returns the path of study.md."""
    import polars as pl

    from gtp_pipeline.assets.gradients import lora_config
    from gtp_pipeline.assets.selection import open_trajectories
    from gtp_pipeline.core.config.profiles import budget_count, budget_label
    from gtp_pipeline.core.evaluation.evaluate import evaluate, scoring_numerics
    from gtp_pipeline.core.evaluation.scoring import eval_inputs
    from gtp_pipeline.core.evaluation.variant_study import parse_method, run_study, scores_key, study_markdown
    from gtp_pipeline.core.ingest.records import TextExample
    from gtp_pipeline.core.storage.atomic import write_bytes, write_parquet
    from gtp_pipeline.core.training.lora_train import load_lora_model, train_lora

    methods = [parse_method(m) for m in args.methods.split(",") if m.strip()]
    profile, store = defs.resources["profile"], defs.resources["store"]
    if store.is_remote():
        raise SystemExit("the variant study writes plain files: point GTP_ARTIFACT_ROOT at a local folder")
    settings = profile.settings()
    raw_corpus = defs.load_asset_value("raw_corpus", instance=instance)
    target_examples = defs.load_asset_value("target_examples", instance=instance)
    materialized = sorted(set(target_examples["task"]))
    if materialized != [settings.target.name]:
        raise SystemExit(
            f"the materialized target_examples are {materialized}, the profile's target is {settings.target.name!r}: "
            "run `python -m gtp_pipeline.demo --through target_gradients,gradient_trajectories` with this target first"
        )
    view, target, per_example, keys, _, lr = open_trajectories(instance, raw_corpus, target_examples, profile, store)
    by_id = {r["example_id"]: r for r in raw_corpus.iter_rows(named=True)}
    corpus = [by_id[eid] for eid in view.stores[0].example_ids()]
    n_valid = int(view.valid_mask().sum())
    fractions = [float(b) for b in args.budgets.split(",") if b.strip()] or list(settings.budgets.budgets)
    budgets = [(budget_label(b), budget_count(b, n_valid)) for b in fractions]

    device = defs.resources["compute"].configure_torch()
    loaded = defs.resources["model"].load()
    n_layers = loaded.model.config.num_hidden_layers
    epochs = settings.budgets.train_epochs
    tests, eval_config = eval_inputs(target_examples, settings)

    def finetune(rows, weights, seed, folder):
        if not rows:
            return loaded.model
        examples = [TextExample(corpus[i]["example_id"], corpus[i]["prompt"], corpus[i]["response"]) for i in rows]
        recipe = lora_config(settings, epochs, n_layers, seed)
        result = train_lora(
            loaded.model, loaded.tokenizer, examples, folder, recipe, loaded.model_id, weights=weights, device=device
        )
        return load_lora_model(loaded.model, result.checkpoints[-1].path)

    def score(model):
        scored = evaluate(model, loaded.tokenizer, tests, eval_config, device)
        return [
            {"example_id": r["example_id"], "loss": r["loss"], "correct": r["correct"]} for r in scored.per_example
        ]

    root = store.path_for("variant_study", study_folder_name(settings.target.name))
    shared = store.path_for("variant_study", SHARED_FOLDER)  # base and full-pool runs, whatever the target
    test_set = f"{settings.target.name}|{loaded.model_id}"
    test_ids = [t.example_id for t in tests]
    numerics = scoring_numerics(eval_config, device)  # scores from another arithmetic are not paired with these
    test_key = scores_key(f"{test_set}|{numerics}", test_ids)
    held_out = None
    if args.held_out_alignment == "yes":  # before any fine-tune touches the model
        folder = root / "held_out_gradients" / scores_key(test_set, test_ids)  # features, not scores
        held_out = held_out_target(loaded, device, view, target_examples, raw_corpus, keys, lr, profile, store, folder)
    print(
        f"variant study: profile={profile.name}, {len(corpus)} pool rows ({n_valid} valid), checkpoints {keys}, "
        f"{len(tests)} test examples, budgets {budgets}, methods {[m.name for m in methods]}, seeds {args.seeds}"
    )
    start = time.perf_counter()
    result = run_study(
        view,
        target,
        per_example,
        corpus,
        methods,
        budgets,
        _ints(args.seeds),
        _ints(args.full_seeds),
        root,
        finetune,
        score,
        report=print,
        shared_root=shared,
        test_key=test_key,
        held_out=held_out,
    )
    selections = pl.DataFrame(result.selections)
    scores = pl.DataFrame(result.per_example, schema_overrides={"loss": pl.Float64, "correct": pl.Boolean})
    for name, frame in (("selections", selections), ("per_example", scores)):
        write_parquet(frame, root / f"{name}.parquet")
    command = f"GTP_PROFILE={profile.name} python -m gtp_pipeline.variant_study " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(v)}" for k, v in vars(args).items()
    )
    markdown, plots = study_markdown(selections, scores, settings.target.name, command, numerics)
    for name, png in plots.items():
        write_bytes(png, root / f"{name}.png")
    write_bytes(markdown.encode(), root / "study.md")
    print(f"\nDone in {time.perf_counter() - start:.0f}s: {root / 'study.md'}")
    return root / "study.md"


def main(argv: list[str] | None = None) -> int:
    import dagster as dg

    from gtp_pipeline.definitions import defs
    from gtp_pipeline.instance import instance_home

    args = parse_args(argv)
    home = instance_home(defs.resources["profile"].name, defs.resources["store"].root)
    run_variant_study(defs, dg.DagsterInstance.from_config(str(home)), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
