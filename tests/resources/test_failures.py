"""Configuration errors fail a run once, naming the setting; transient errors keep their retries."""

import re

import dagster as dg
import pytest

from gtp_pipeline.assets.gradients import TRANSIENT
from gtp_pipeline.resources.embedder import EmbedderResource
from gtp_pipeline.resources.models import HFFolderSource, ModelSource
from tests.conftest import failed_step_attempts

QUICK_RETRY = dg.RetryPolicy(max_retries=TRANSIENT.max_retries)  # the policy the GPU steps use, without its delay


@dg.asset(retry_policy=QUICK_RETRY)
def loads_the_model(model: ModelSource) -> None:
    model.load()


@pytest.mark.parametrize(
    "path, message",
    [
        ("", r"GTP_MODEL_DIR='': is not set; this profile loads its model from a local Hugging Face folder"),
        ("/no/such/model", r"GTP_MODEL_DIR='/no/such/model': /no/such/model is not a folder"),
    ],
)
def test_a_bad_model_folder_fails_once_naming_the_variable(path, message):
    result = dg.materialize([loads_the_model], resources={"model": HFFolderSource(path=path)}, raise_on_error=False)
    assert not result.success
    runs, error = failed_step_attempts(result)
    assert runs == 1
    assert re.search(message, error), error


def test_a_folder_without_a_model_names_what_is_missing(tmp_path):
    result = dg.materialize(
        [loads_the_model], resources={"model": HFFolderSource(path=str(tmp_path))}, raise_on_error=False
    )
    runs, error = failed_step_attempts(result)
    assert runs == 1 and "no config.json" in error and f"GTP_MODEL_DIR='{tmp_path}'" in error


class FlakyModelSource(ModelSource):
    """A source whose load fails the way a busy GPU does (not a configuration problem)."""

    def load(self):
        raise RuntimeError("CUDA out of memory (a neighbour's job)")


def test_a_transient_error_is_still_retried():
    result = dg.materialize([loads_the_model], resources={"model": FlakyModelSource()}, raise_on_error=False)
    runs, error = failed_step_attempts(result)
    assert runs == 1 + TRANSIENT.max_retries and "Exceeded max_retries" in error


@dg.asset(retry_policy=QUICK_RETRY)
def loads_the_embedder(embedder: EmbedderResource) -> None:
    embedder.embedder()


def test_a_bad_embedder_folder_fails_once_naming_the_variable(tmp_path):
    result = dg.materialize(
        [loads_the_embedder], resources={"embedder": EmbedderResource(model_dir=str(tmp_path))}, raise_on_error=False
    )
    runs, error = failed_step_attempts(result)
    assert runs == 1 and f"GTP_EMBEDDER_DIR='{tmp_path}'" in error and "no modules.json" in error
