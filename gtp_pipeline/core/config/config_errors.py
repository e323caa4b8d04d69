"""Configuration errors: a setting that names something missing or unusable.

Raised where the problem is found (a model folder, a corpus or target file), carrying the setting's name and
value when the caller knows them, so the message says what to change. A run that fails on one is never retried
(retrying cannot make a missing file appear): resources/failures.py turns it into a Dagster failure without retries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConfigurationError(ValueError):
    """`setting` (an environment variable or run-config field) has `value`, and `problem` is why that cannot work."""

    def __init__(self, problem: str, setting: str | None = None, value: Any = None):
        self.problem, self.setting, self.value = problem, setting, value
        super().__init__(f"{setting}={value!r}: {problem}" if setting else problem)

    def for_setting(self, setting: str, value: Any = None) -> ConfigurationError:
        """The same problem, named after the setting it came from."""
        return ConfigurationError(self.problem, setting, self.value if value is None else value)


def require_files(paths: list[str] | tuple[str, ...], setting: str) -> None:
    """Raise ConfigurationError naming `setting` and the first path that is not a readable file."""
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise ConfigurationError(f"{path} does not exist", setting, str(p))
        if not path.is_file():
            raise ConfigurationError(f"{path} is not a file", setting, str(p))
