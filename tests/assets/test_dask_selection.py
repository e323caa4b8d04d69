"""gtp_selection with its streaming passes on a real Dask cluster picks exactly what the in-process run picked."""

import shutil

import dagster as dg
import polars as pl
import pytest

pytest.importorskip("distributed", reason="pip install dagster-dask (brings dask.distributed)")


def test_gtp_selection_on_a_dask_cluster_equals_the_in_process_selection(tiny_pipeline, tmp_path):
    from distributed import LocalCluster

    from gtp_pipeline.resources import resources_for_profile

    root, instance, defs, _, _ = tiny_pipeline
    copy = shutil.copytree(root, tmp_path / "artifacts")  # the same stores; the shared run stays untouched
    keys = instance.get_dynamic_partitions("model_checkpoint")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster,
        dg.instance_for_test() as fresh,
    ):
        fresh.add_dynamic_partitions("model_checkpoint", keys)
        config = {"ops": {"gtp_selection": {"config": {"dask_scheduler": cluster.scheduler_address}}}}
        resources = resources_for_profile("tiny", str(copy))
        result = dg.materialize(
            defs.assets, selection=["gtp_selection"], resources=resources, instance=fresh, run_config=config
        )
    assert result.success
    meta = result.asset_materializations_for_node("gtp_selection")[0].metadata
    assert meta["engine"].value.startswith("dask (tcp://127.0.0.1:")
    columns = ["budget", "example_id", "weight", "rank"]
    on_dask = result.output_for_node("gtp_selection").select(columns)
    in_process = pl.read_parquet(root / "gtp_selection" / "data.parquet").select(columns)
    assert on_dask.equals(in_process)
