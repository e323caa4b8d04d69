"""Test-wide settings: the tiny profile, no hub access, and a fresh artifact root per test."""

import os

os.environ.setdefault("GTP_PROFILE", "tiny")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture
def tiny_resources(tmp_path):
    """Resources for the tiny profile with the artifact root in tmp_path."""
    from gtp_pipeline.resources import resources_for_profile

    return resources_for_profile("tiny", artifact_root=str(tmp_path / "artifacts"))


def pytest_collection_modifyitems(config, items):
    """`cuda` tests skip cleanly on machines without an NVIDIA GPU (CI has none)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
