"""Configuration errors end a run at once, without the retries that transient errors get."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from gtp_pipeline.core.config.config_errors import ConfigurationError


@contextmanager
def fail_fast(setting: str | None = None, value: object = None) -> Iterator[None]:
    """Turn a ConfigurationError raised inside into a Dagster failure that is not retried.

    `setting`/`value`: the setting the code inside was given, named in the message when the error does not
    already name one.
    """
    try:
        yield
    except ConfigurationError as err:
        if err.setting is None and setting is not None:
            err = err.for_setting(setting, value)
        raise dg.Failure(
            description=str(err),
            metadata={"setting": err.setting or "", "value": str(err.value), "problem": err.problem},
            allow_retries=False,
        ) from err
