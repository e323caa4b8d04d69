"""The multi-target experiment: one pool, several targets, every method at every budget with several seeds, and one
report with a verdict per target and budget.

    python -m gtp_pipeline.multi_target                         # GTP_PROFILE defaults to multitarget
    python -m gtp_pipeline.multi_target --stage report          # the report from whatever has finished

For each target in turn, a child process with GTP_TARGET_TASK set (the definitions read the target when they are
imported) materializes what selection needs (`demo --through`: corpus, warm-up and pool gradients are skipped once
up to date, since the pool is decontaminated against every target of the profile), then runs the variant study
(gtp_pipeline/variant_study.py) into `variant_study/<target>/`. Stages, each resumable after a kill:

  select   every target's selections, fine-tunes and scores (the full-pool fine-tune left out)
  full     the full-pool fine-tune, trained once in variant_study/shared/, scored on every target
  report   variant_study/multi_target.md and its forest plot (core/evaluation/multi_target.py)

`--stage all` (the default) runs the three in order. Point it at your own data with GTP_PROFILE=full,
GTP_CORPUS_FILES and `--targets` naming packaged tasks (gsm8k, BIG-bench task paths such as strategyqa). There the
pool is decontaminated against the active target only, so a pool that holds rows of one of the targets gets a
corpus version (and gradient stores) of its own for that target; a profile that lists its targets in
`contamination_targets` (as multitarget does) has one pool for all.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from gtp_pipeline.core.config import settings as env

DEFAULT_PROFILE = "multitarget"
DEFAULT_METHODS = "gtp,gtp+residual_fill,gtp+support,gtp+per_example,gtp+per_checkpoint,topk,random"
STAGES = ("select", "full", "report")
NEEDS = "target_gradients,gradient_trajectories"  # what the variant study reads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="", help="comma-separated target tasks; default: the profile's targets")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="method specs (see gtp_pipeline/variant_study.py)")
    p.add_argument("--budgets", default="", help="comma-separated fractions or counts; default: the profile's")
    p.add_argument("--seeds", default="0,1,2", help="fine-tune seeds of every selection")
    p.add_argument("--full-seeds", default="0", help="seeds of the full-pool fine-tune")
    p.add_argument("--stage", default="all", choices=("all", *STAGES))
    return p.parse_args(argv)


def profile_targets(profile_name: str) -> list[str]:
    """The targets the configuration file (GTP_CONFIG) or the named profile lists in contamination_targets."""
    from gtp_pipeline.core.config.profiles import PROFILES
    from gtp_pipeline.core.config.run_config import load_run_config

    config = env.get("GTP_CONFIG")
    profile = load_run_config(config) if config else PROFILES.get(profile_name)
    names = [t.name for t in profile.contamination_targets] if profile else []
    if not names:
        raise SystemExit(f"{config or f'profile {profile_name!r}'} lists no targets: pass --targets")
    return names


def _child(module: str, args: list[str], environ: dict[str, str], log) -> None:
    command = [sys.executable, "-m", module, *args]
    log(f"$ GTP_TARGET_TASK={environ['GTP_TARGET_TASK']} {shlex.join(command[1:])}")
    subprocess.run(command, env=environ, check=True)


def study_target(target: str, args: argparse.Namespace, full_seeds: str, log=print) -> None:
    """Materialize what `target`'s study reads, then run the study (resuming whatever it finished before)."""
    child_env = env.child_environment(GTP_TARGET_TASK=target)
    _child("gtp_pipeline.demo", ["--through", NEEDS], child_env, log)  # target_input sees the target change
    study = ["--methods", args.methods, "--budgets", args.budgets, "--seeds", args.seeds, "--full-seeds", full_seeds]
    _child("gtp_pipeline.variant_study", study, child_env, log)


def write_report(root: Path, targets: list[str], command: str) -> Path:
    """variant_study/multi_target.md from every target whose study has written its tables."""
    import polars as pl

    from gtp_pipeline.core.evaluation.multi_target import multi_target_markdown
    from gtp_pipeline.core.storage.atomic import write_bytes
    from gtp_pipeline.variant_study import study_folder_name

    selections, per_example = {}, {}
    for target in targets:
        folder = root / study_folder_name(target)
        if (folder / "per_example.parquet").exists() and (folder / "selections.parquet").exists():
            selections[target] = pl.read_parquet(folder / "selections.parquet")
            per_example[target] = pl.read_parquet(folder / "per_example.parquet")
    markdown, plots, _, _ = multi_target_markdown(selections, per_example, command)
    missing = [t for t in targets if t not in per_example]
    if missing:
        markdown += f"\n\n_Not yet studied: {', '.join(missing)}._\n"
    for name, png in plots.items():
        write_bytes(png, root / f"{name}.png")
    write_bytes(markdown.encode(), root / "multi_target.md")
    return root / "multi_target.md"


def main(argv: list[str] | None = None) -> int:
    env.set_default("GTP_PROFILE", DEFAULT_PROFILE)
    args = parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] or profile_targets(env.get("GTP_PROFILE"))
    stages = STAGES if args.stage == "all" else (args.stage,)
    start = time.perf_counter()
    if "select" in stages:
        for target in targets:
            study_target(target, args, full_seeds="")
    if "full" in stages:
        for target in targets:  # the first trains the shared full-pool model, the others only score it
            study_target(target, args, full_seeds=args.full_seeds)
    if "report" in stages:
        from gtp_pipeline.definitions import defs

        command = f"GTP_PROFILE={env.get('GTP_PROFILE')} python -m gtp_pipeline.multi_target " + shlex.join(
            a for k, v in vars(args).items() if k != "stage" for a in (f"--{k.replace('_', '-')}", v)
        )
        report = write_report(defs.resources["store"].path_for("variant_study"), targets, command)
        print(f"report: {report}")
    print(f"multi-target stages {', '.join(stages)} done in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
