"""The ways GTP can be asked to match a target, as one choice: which target vectors, centered or not.

- targets="mean": one target, the mean over subtasks of each subtask's mean dev trajectory (`gtp`, the paper's form).
- targets="per_subtask": each subtask's mean as its own column, one shared support (`joint_gtp`).
- targets="per_example": each dev example's trajectory as its own column, one shared support (`joint_gtp`).
- targets="per_checkpoint": the mean target cut into its checkpoints' blocks, each block its own column (zero
  elsewhere), one shared support: each checkpoint's gradient is matched with its own weights (`joint_gtp`).
- targets="pool_mean": the in-domain mode, no target task: the mean trajectory of the whole pool, so the selection
  is a small set whose combined gradient stands in for the pool's (a coreset in the sense of CRAIG and GradMatch).
- center=True: atoms and targets centered on the pool's mean trajectory first (`CenteredTrajectories`).

A single target far outside the pool's cone saturates after a few atoms and the rest of the budget is fill
(core/selection/pursuit.py); several targets and centering are the two ways offered to let the fit use more of it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from gtp_pipeline.core.features.centered import CenteredTrajectories
from gtp_pipeline.core.features.target_trajectory import TargetTrajectory
from gtp_pipeline.core.features.trajectory import Trajectories
from gtp_pipeline.core.selection.joint_pursuit import joint_gtp
from gtp_pipeline.core.selection.pursuit import PursuitConfig, Selection, gtp

TARGET_MODES = ("mean", "per_subtask", "per_example", "per_checkpoint", "pool_mean")


@dataclass(frozen=True)
class GTPVariant:
    targets: str = "mean"
    center: bool = False

    def __post_init__(self):
        if self.targets not in TARGET_MODES:
            raise ValueError(f"targets must be one of {TARGET_MODES}, got {self.targets!r}")

    @property
    def name(self) -> str:
        return self.targets + ("+centered" if self.center else "")


def target_matrix(
    variant: GTPVariant, target: TargetTrajectory, per_example: TargetTrajectory | None, n_checkpoints: int = 1
) -> np.ndarray:
    """(J, D) the target vectors the variant matches (J = 1 for "mean")."""
    if variant.targets == "mean":
        return target.vector[None, :]
    if variant.targets == "per_checkpoint":
        b = target.vector
        if n_checkpoints < 1 or b.size % n_checkpoints:
            raise ValueError(f"a {b.size}-dim trajectory does not split into {n_checkpoints} checkpoint blocks")
        d = b.size // n_checkpoints
        return np.stack([np.where(np.arange(b.size) // d == t, b, 0.0) for t in range(n_checkpoints)])
    if variant.targets == "pool_mean":
        raise ValueError("targets='pool_mean' is the pool's own mean: select_gtp computes it from the view")
    if variant.targets == "per_subtask":
        return target.per_subtask
    if per_example is None:
        raise ValueError("targets='per_example' needs the per-example target trajectories")
    return per_example.per_subtask


def select_gtp(
    view: Trajectories,
    target: TargetTrajectory,
    config: PursuitConfig,
    variant: GTPVariant = GTPVariant(),
    per_example: TargetTrajectory | None = None,
) -> Selection:
    """GTP in the given variant; indices are rows of `view` whichever variant ran."""
    if variant.targets == "pool_mean":
        B = view.mean()[None, :].astype(np.float64)
    else:
        B = target_matrix(variant, target, per_example, view.n_checkpoints)
    if variant.center:
        view = CenteredTrajectories(view)
        B = view.center(B)
    if B.shape[0] == 1:
        return gtp(view, B[0], config)
    return joint_gtp(view, B, config)


def fitted_support(selection: Selection) -> Selection:
    """The selection without its fill: the examples the joint fit chose (the support the target needs), weights kept."""
    n = selection.indices.size - selection.fill
    if n <= 0:
        raise ValueError(f"{selection.method}: the joint fit chose nothing, so there is no support to train on")
    info = {**selection.info, "fill_dropped": selection.fill}
    return replace(selection, indices=selection.indices[:n], weights=selection.weights[:n], fill=0, info=info)


def repeat_to(rows: np.ndarray, k: int) -> np.ndarray:
    """`rows` taken in turn until there are k: a fine-tune on them sees as many draws as on k distinct examples, so
    training longer on a small support costs what the budget allows, no more."""
    rows = np.asarray(rows)
    if rows.size == 0 or k < rows.size:
        raise ValueError(f"cannot repeat {rows.size} rows to {k}")
    return np.resize(rows, k)


def describe_fill(selection: Selection) -> str:
    """One sentence a user can read next to the numbers: how much of the selection the fit chose."""
    k = selection.indices.size
    fitted = k - selection.fill
    if selection.fill == 0:
        return f"all {k} examples were chosen by the joint fit ({selection.stop_reason})."
    ranked = {"target": "LESS's score against the target", "residual": "correlation with the final residual"}
    return (
        f"{fitted} of {k} examples were chosen by the joint fit; it stopped improving there ({selection.stop_reason}): "
        f"the target is reached as far as non-negative combinations of the pool can reach it. The other "
        f"{selection.fill} are fill, ranked by {ranked[selection.info.get('fill_ranked_by', 'target')]}, with "
        f"near-duplicates of earlier picks skipped ({selection.info.get('fill_near_duplicates', 0)} taken anyway). "
        f"The {fitted} are the support this target needs: `make study` with `gtp+support` measures training on them "
        f"alone, each repeated to the budget's size."
    )
