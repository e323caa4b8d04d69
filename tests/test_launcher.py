"""`make demo` launches its stages through the code location: real runs and backfills in the instance, tagged."""

import dagster as dg
from dagster._core.storage.dagster_run import RunsFilter


def test_demo_stages_are_launched_runs_and_a_partitioned_stage_one_backfill(tmp_path, monkeypatch):
    from gtp_pipeline.definitions import defs
    from gtp_pipeline.demo import with_upstream
    from gtp_pipeline.instance import write_instance_yaml
    from gtp_pipeline.launcher import launch_demo
    from gtp_pipeline.resources import resources_for_profile

    root = tmp_path / "artifacts"
    monkeypatch.setenv("GTP_ARTIFACT_ROOT", str(root))  # the code location's processes read it
    tiny = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, resources=resources_for_profile("tiny", str(root))
    )
    write_instance_yaml(tmp_path / "home")  # the demo's own instance configuration: queued runs, pool limits
    instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
    tags = {"gtp/profile": "tiny", "gtp/launched_by": "demo"}
    only = with_upstream(tiny, ["target_gradients"])
    lines: list[str] = []

    report = launch_demo(tiny, instance, tags, log=lines.append, only=only, timeout_s=600)

    assert {r["status"] for r in report} == {"materialized"}, report
    assert [r["assets"] for r in report][-1] == "target_gradients [warmup-e1...warmup-e2]"  # one single-run backfill
    launched = [r for r in instance.get_runs() if r.remote_job_origin is not None]
    assert len(launched) == len(report) and all(r.status == dg.DagsterRunStatus.SUCCESS for r in launched)
    assert all(r.tags["gtp/profile"] == "tiny" and r.tags["dagster/code_location"] == "gtp_pipeline" for r in launched)
    (backfill,) = instance.get_backfills()
    assert backfill.status.value == "COMPLETED_SUCCESS" and backfill.tags["gtp/profile"] == "tiny"
    assert len(instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))) == 1
    assert any(line.startswith("  backfill    ") for line in lines)

    again = launch_demo(tiny, instance, tags, log=lines.append, only=only, timeout_s=600)
    assert {r["status"] for r in again} == {"up to date"}
    assert len([r for r in instance.get_runs() if r.remote_job_origin is not None]) == len(launched)
