"""Assembles the Dagster definitions: assets per stage, checks, jobs, schedules, resources for the profile.

The profile comes from GTP_PROFILE (tiny | demo | experiment | full; default demo), the executor from
GTP_EXECUTOR (unset: Dagster's default; "dask": steps on a Dask cluster, see gtp_pipeline/executors.py).
"""

from __future__ import annotations

import dagster as dg

from gtp_pipeline import automation, checks
from gtp_pipeline.assets import (
    clusterclip,
    corpus,
    evaluation,
    for_the_catalog,
    gradients,
    inputs,
    selection,
    training,
)
from gtp_pipeline.core.config import settings as env
from gtp_pipeline.executors import executor_for_env
from gtp_pipeline.resources import resources_for_profile

defs = dg.Definitions(
    assets=for_the_catalog(
        dg.load_assets_from_modules([inputs, corpus, clusterclip, gradients, selection, training, evaluation])
    ),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=[automation.corpus_job, automation.gradients_job],
    schedules=[automation.corpus_refresh_schedule],
    sensors=[automation.automation_sensor, automation.new_checkpoint_sensor],
    resources=resources_for_profile(env.get("GTP_PROFILE")),
    executor=executor_for_env(),
)
