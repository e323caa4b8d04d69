"""The selection methods by name: one registry and one entry point, for the pipeline's selection assets and the
variant study alike. A method takes the candidates' trajectories, the target (subtask means), each dev example's
own trajectory, the pursuit settings (the budget among them) and the GTP variant, and returns a Selection.

Adding a method here (`@register("name")`) makes it selectable by name everywhere `select` is called; its name in
core/profiles.SELECTION_METHODS puts it in the pipeline as well (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gtp_pipeline.core.features.target_trajectory import TargetTrajectory
from gtp_pipeline.core.features.trajectory import Trajectories
from gtp_pipeline.core.selection.gtp_variants import GTPVariant, select_gtp
from gtp_pipeline.core.selection.pursuit import PursuitConfig, Selection
from gtp_pipeline.core.selection.selection_baselines import less_topk, random_k

SelectFn = Callable[[Trajectories, TargetTrajectory, TargetTrajectory | None, PursuitConfig, GTPVariant], Selection]
REGISTRY: dict[str, SelectFn] = {}


def register(name: str) -> Callable[[SelectFn], SelectFn]:
    """Register a selection method under `name` (no '-' or '|': names appear in run keys)."""
    if not name or "-" in name or "|" in name:
        raise ValueError(f"a method name is non-empty, without '-' or '|': {name!r}")

    def add(fn: SelectFn) -> SelectFn:
        if name in REGISTRY and REGISTRY[name] is not fn:
            raise ValueError(f"a selection method named {name!r} is already registered")
        REGISTRY[name] = fn
        return fn

    return add


@register("gtp")
def _gtp(view, target, per_example, config, variant):
    return select_gtp(view, target, config, variant, per_example)


@register("topk")
def _topk(view, target, per_example, config, variant):
    return less_topk(view, target, config)


@register("random")
def _random(view, target, per_example, config, variant):
    return random_k(view, config)


def in_domain_target(view: Trajectories) -> TargetTrajectory:
    """The pool's own mean trajectory as the target: select a small set that stands in for the whole pool."""
    return TargetTrajectory(view.mean()[None, :].astype(np.float64), np.zeros(1), np.ones(1))


def select(
    method: str,
    view: Trajectories,
    target: TargetTrajectory,
    config: PursuitConfig,
    per_example: TargetTrajectory | None = None,
    variant: GTPVariant = GTPVariant(),
) -> Selection:
    """Run the method registered as `method`; an unknown name is an error that lists the known ones."""
    if method not in REGISTRY:
        raise ValueError(f"unknown selection method {method!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[method](view, target, per_example, config, variant)
