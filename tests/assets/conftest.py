"""One real run of the whole pipeline on the tiny profile, shared by the asset tests (it takes a couple of minutes)."""

import dagster as dg
import pytest


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """(artifact root, instance, definitions, first run's report, second run's report) of the tiny pipeline."""
    from gtp_pipeline.definitions import defs
    from gtp_pipeline.demo import run_demo
    from gtp_pipeline.resources import resources_for_profile

    root = tmp_path_factory.mktemp("tiny_pipeline")
    tiny_defs = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, resources=resources_for_profile("tiny", str(root))
    )
    with dg.instance_for_test() as instance:
        first = run_demo(tiny_defs, instance, log=lambda _: None)
        second = run_demo(tiny_defs, instance, log=lambda _: None)
        yield root, instance, tiny_defs, first, second


def latest_metadata(instance, key: str, partition: str | None = None) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None), limit=1
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
