"""Fixtures shared by the core tests that train or differentiate the tiny model."""

import pytest
import torch

from gtp_pipeline.core.training.models import tiny_model


@pytest.fixture
def one_thread():
    """One torch thread: exact comparisons against loops, and no OpenMP stalls on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()
