"""Read every source a profile's pool names, in order, as one stream of raw records."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from gtp_pipeline.core.config.config_errors import require_files
from gtp_pipeline.core.ingest import packaged
from gtp_pipeline.core.ingest.corpus import CorpusBuild, build_corpus
from gtp_pipeline.core.ingest.records import RawRecord
from gtp_pipeline.core.ingest.targets import contamination_keys
from gtp_pipeline.core.ingest.user_files import read_user_files


def read_pool(sources: Iterable, data_root: Path | None = None) -> Iterator[RawRecord]:
    """Yield the raw records of each `SourceSpec` (see core.config.profiles) in order."""
    for spec in sources:
        if spec.kind == "files":
            require_files(spec.files, "GTP_CORPUS_FILES")  # a missing file is a setting to fix, not a row to refuse
            yield from read_user_files(spec.files)
        elif spec.kind == "sharegpt":
            yield from packaged.sharegpt(limit=spec.limit)
        elif spec.kind == "natural_instructions":
            yield from packaged.natural_instructions(spec.tasks, spec.limit_per_task, data_root)
        elif spec.kind in packaged.POOL_SOURCES:
            yield from packaged.POOL_SOURCES[spec.kind](spec.tasks, spec.limit_per_task)
        else:
            raise ValueError(
                f"unknown pool source {spec.kind!r}; expected files or one of {sorted(packaged.POOL_SOURCES)}"
            )


def ingest_pool(profile: Any, drawn_target_prompts: Iterable[str]) -> CorpusBuild:
    """The pool of `profile` (a core.config.profiles.Profile) as a corpus, without the target's drawn prompts and
    without any row of the profile's contamination targets."""
    target_prompts = contamination_keys(drawn_target_prompts, profile.contamination_targets)
    return build_corpus(read_pool(profile.pool), profile.corpus, target_prompts)
