"""A materialization against a real PostgreSQL server, through deploy/dagster.yaml."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.servers import REPO, Postgres, postgres_bin

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        postgres_bin() is None, reason="needs Debian's postgresql package (make setup installs it as root)"
    ),
]


def test_materialize_with_the_postgres_instance_config(tmp_path):
    pg = Postgres()
    try:
        home = tmp_path / "home"
        home.mkdir()
        shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
        env = {
            **os.environ,
            **pg.env(),
            "DAGSTER_HOME": str(home),
            "DAGSTER_COMPUTE_LOG_DIR": str(tmp_path / "logs"),
            "DAGSTER_ARTIFACT_DIR": str(tmp_path / "dagster_artifacts"),
            "GTP_PROFILE": "tiny",
            "GTP_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        }
        dagster = str(Path(sys.executable).with_name("dagster"))
        subprocess.run(
            [
                dagster,
                "asset",
                "materialize",
                "-m",
                "gtp_pipeline.definitions",
                "--select",
                "target_examples,target_rejects",
            ],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        probe = (
            "import dagster as dg; i = dg.DagsterInstance.get(); "
            "print(type(i.run_storage).__name__, type(i.event_log_storage).__name__, "
            "i.get_latest_materialization_event(dg.AssetKey('target_examples')) is not None)"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True, timeout=120
        )
        assert out.stdout.split() == ["PostgresRunStorage", "PostgresEventLogStorage", "True"]
    finally:
        pg.stop()
