"""A demo killed mid-run leaves a STARTED run holding a "gpu" slot; the next demo releases it instead of waiting."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import dagster as dg

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import dagster as dg

    @dg.asset(pool="gpu")
    def slow():
        time.sleep(600)

    with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
        dg.materialize([slow], instance=instance)
    """
)


def test_a_killed_runs_slot_is_released_by_the_next_demo(tmp_path):
    from gtp_pipeline.demo import release_orphaned_runs
    from gtp_pipeline.instance import write_instance_yaml

    home = tmp_path / "home"
    write_instance_yaml(home)  # gtp_pipeline/instance.yaml: pool "gpu" limited to 1
    (tmp_path / "run.py").write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run.py"), str(home)], start_new_session=True)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        deadline = time.time() + 120
        while not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots:
            assert proc.poll() is None and time.time() < deadline, "the run never claimed its slot"
            time.sleep(0.2)
        (live,) = instance.get_runs()
        assert release_orphaned_runs(instance) == []  # alive: left alone
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert release_orphaned_runs(instance) == [live.run_id]
        assert instance.get_run_by_id(live.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
