"""Instance configuration: the local template, per-profile homes, and the Postgres deployment file."""

import dagster as dg
import yaml
from dagster._core.instance.config import dagster_instance_config

from gtp_pipeline.instance import REPO_ROOT, instance_home, write_instance_yaml


def test_local_instance_yaml_validates_with_pools_retries_and_no_telemetry(tmp_path):
    write_instance_yaml(tmp_path)
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_retries"]["enabled"] is True
    assert config["telemetry"]["enabled"] is False
    assert config["storage"]["sqlite"]["base_dir"] == str(tmp_path / "storage")


def test_each_profile_and_artifact_root_gets_its_own_instance(tmp_path):
    demo, tiny = instance_home("demo"), instance_home("tiny")
    elsewhere = instance_home("demo", str(tmp_path / "other_root"))
    assert len({demo, tiny, elsewhere}) == 3
    assert all(p.parent == REPO_ROOT / ".dagster" for p in (demo, tiny, elsewhere))
    instance = dg.DagsterInstance.from_config(str(tiny))
    assert type(instance.run_storage).__name__ == "SqliteRunStorage"
    instance.dispose()


def test_deploy_yaml_uses_postgres_with_the_psycopg2_driver():
    config = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert config["telemetry"]["enabled"] is False
