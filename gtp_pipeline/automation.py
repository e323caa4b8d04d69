"""Jobs, schedules and sensors."""

from __future__ import annotations

import dagster as dg

corpus_job = dg.define_asset_job("corpus_job", selection=dg.AssetSelection.groups("corpus"))

# Nightly refresh of the corpus; content-hash data versions keep downstream fresh when nothing changed.
corpus_refresh_schedule = dg.ScheduleDefinition(job=corpus_job, cron_schedule="0 3 * * *", name="nightly_corpus_refresh")
