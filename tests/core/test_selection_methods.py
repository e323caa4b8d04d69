"""The selection registry: each registered method is the function it names, and a new method registered in one
place is selectable by name in the pipeline's entry point and in the variant study."""

import numpy as np
import pytest

from gtp_pipeline.core.evaluation.variant_study import parse_method
from gtp_pipeline.core.evaluation.variant_study import select as study_select
from gtp_pipeline.core.features.target_trajectory import TargetTrajectory
from gtp_pipeline.core.features.trajectory import DenseTrajectories
from gtp_pipeline.core.selection.gtp_variants import GTPVariant, select_gtp
from gtp_pipeline.core.selection.pursuit import PursuitConfig, Selection
from gtp_pipeline.core.selection.selection_baselines import less_topk, random_k
from gtp_pipeline.core.selection.selection_methods import REGISTRY, in_domain_target, register, select


def problem(n=80, d=24, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, d))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    dev = rng.normal(size=(3, d))
    target = TargetTrajectory(dev.mean(axis=0, keepdims=True), np.array(["t"]), np.array([3]))
    per_example = TargetTrajectory(dev, np.array(["0", "1", "2"]), np.ones(3, dtype=int))
    return DenseTrajectories(A.astype(np.float32)), target, per_example


def test_registered_methods_are_the_functions_they_name():
    view, target, per_example = problem()
    config = PursuitConfig(budget=10, seed=3)
    variant = GTPVariant("per_example")
    pairs = {
        "gtp": select_gtp(view, target, config, variant, per_example),
        "topk": less_topk(view, target, config),
        "random": random_k(view, config),
    }
    for name, direct in pairs.items():
        chosen = select(name, view, target, config, per_example, variant)
        assert np.array_equal(chosen.indices, direct.indices), name
    pool_mean = in_domain_target(view)
    assert np.allclose(pool_mean.vector, view.gather(np.arange(80)).astype(np.float64).mean(axis=0), atol=1e-6)
    with pytest.raises(ValueError, match=r"unknown selection method 'lesss'; registered: \['gtp', 'random', 'topk'"):
        select("lesss", view, target, config)


def test_a_toy_method_registered_in_one_place_is_selectable_everywhere():
    def largest_norm_first(view, target, per_example, config, variant):
        rows = np.argsort(-np.linalg.norm(view.gather(np.arange(view.n_rows)), axis=1))[: config.budget]
        k = rows.size
        return Selection("toy", rows.astype(np.int64), np.ones(k), np.zeros(0), float("nan"), 0, 0, 0.0, 0, "ranked")

    view, target, per_example = problem()
    try:
        register("toy")(largest_norm_first)
        chosen = select("toy", view, target, PursuitConfig(budget=5))
        assert chosen.method == "toy" and chosen.indices.size == 5
        spec = parse_method("toy")  # the variant study knows it too, and refuses options it does not take
        assert np.array_equal(study_select(spec, view, target, per_example, 5).indices, chosen.indices)
        with pytest.raises(ValueError, match="toy takes no options"):
            parse_method("toy+centered")
        with pytest.raises(ValueError, match="already registered"):
            register("toy")(lambda *a: None)
    finally:
        REGISTRY.pop("toy", None)
    with pytest.raises(ValueError, match="without '-' or '\\|'"):
        register("my-method")
