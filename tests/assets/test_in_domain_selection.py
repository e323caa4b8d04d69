"""The selection assets in the in-domain mode (run config target: in_domain): the pool's own mean is the target."""

import shutil

import dagster as dg
import polars as pl


def test_in_domain_selections_match_the_pool_mean_not_the_target(tiny_pipeline, tmp_path):
    from gtp_pipeline.resources import resources_for_profile

    root, instance, defs, _, _ = tiny_pipeline
    copy = shutil.copytree(root, tmp_path / "artifacts")  # the same stores; the shared run stays untouched
    with dg.instance_for_test() as fresh:
        fresh.add_dynamic_partitions("model_checkpoint", instance.get_dynamic_partitions("model_checkpoint"))
        config = {"ops": {f"{m}_selection": {"config": {"target": "in_domain"}} for m in ("gtp", "topk")}}
        result = dg.materialize(
            defs.assets,
            selection=["gtp_selection", "topk_selection"],
            resources=resources_for_profile("tiny", str(copy)),
            instance=fresh,
            run_config=config,
        )
    assert result.success
    residual = {}
    for method in ("gtp", "topk"):
        meta = result.asset_materializations_for_node(f"{method}_selection")[0].metadata
        assert meta["target"].value == "in_domain"
        residual[method] = [r.data["relative_residual"] for r in meta["per_budget"].value.records]
    assert all(g <= t + 1e-9 for g, t in zip(residual["gtp"], residual["topk"], strict=True))
    in_domain = result.output_for_node("gtp_selection")
    on_target = pl.read_parquet(root / "gtp_selection" / "data.parquet")
    assert set(in_domain["example_id"]) != set(on_target["example_id"])
