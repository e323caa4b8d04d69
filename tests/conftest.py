"""Test-wide settings: the tiny profile, no hub access, and a fresh artifact root per test."""

import os

os.environ.setdefault("GTP_PROFILE", "tiny")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if not _has_cuda():  # Triton kernels run in its CPU interpreter (read when a kernel is defined, so set it first)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def tiny_resources(tmp_path):
    """Resources for the tiny profile with the artifact root in tmp_path."""
    from gtp_pipeline.resources import resources_for_profile

    return resources_for_profile("tiny", artifact_root=str(tmp_path / "artifacts"))


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """One real run of the whole tiny pipeline, shared by the tests that read its outputs (a couple of minutes):
    (artifact root, instance, definitions, first run's report, second run's report). The instance lives in the
    artifact root's dagster_home/."""
    import dagster as dg

    from gtp_pipeline.definitions import defs
    from gtp_pipeline.demo import run_demo
    from gtp_pipeline.instance import write_instance_yaml
    from gtp_pipeline.resources import resources_for_profile

    root = tmp_path_factory.mktemp("tiny_pipeline")
    tiny_defs = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, resources=resources_for_profile("tiny", str(root))
    )
    home = root / "dagster_home"
    write_instance_yaml(home)  # the demo's own instance configuration, so `dagster dev` can open it too
    with dg.DagsterInstance.from_config(str(home)) as instance:
        first = run_demo(tiny_defs, instance, log=lambda _: None)
        second = run_demo(tiny_defs, instance, log=lambda _: None)
        yield root, instance, tiny_defs, first, second


def pytest_collection_modifyitems(config, items):
    """`cuda` tests skip cleanly on machines without an NVIDIA GPU (CI has none)."""
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def failed_step_attempts(result) -> tuple[int, str]:
    """(how many times the failing step of a Dagster result ran, the message of its final failure)."""
    import dagster as dg

    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    starts = (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED)
    runs = sum(e.event_type in starts and e.step_key == failure.step_key for e in result.all_events)
    return runs, failure.step_failure_data.error.message
