"""A run's configuration file: one YAML file holds every setting of a run, over a named profile's defaults.

    GTP_CONFIG=configs/cpu-example.yaml make demo

    name: my-run                  # the run's name: artifacts/<name>/, .dagster/<name>/ (default: the file's stem)
    profile: full                 # the defaults to start from: tiny | demo | experiment | multitarget | full
    model: hf_folder              # tiny | smollm2 | hf_folder (then model_dir, or GTP_MODEL_DIR)
    model_dir: /models/my-llama
    pool:                         # replaces the profile's pool; one entry per source
      - {kind: files, files: [pool.jsonl]}
    target: {kind: files, files: [target.jsonl], n_dev: 5, n_test: 100}
    gradients: {lora_r: 8, proj_dim: 1024, max_len: 256}   # any field of a section; the rest keep the defaults
    budgets: {budgets: [0.01, 0.05], finetune_seeds: [0, 1, 2]}

Sections (corpus, clusters, budgets, gradients, target) are merged field by field over the profile's; `pool` and
`contamination_targets` are lists that replace the profile's. Relative file paths are read from the configuration
file's folder. Every key is checked: an unknown key, or a value of the
wrong type, fails with the key's path, the value and the file (a ConfigurationError).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from gtp_pipeline.core.config.config_errors import ConfigurationError
from gtp_pipeline.core.config.profiles import (
    PROFILES,
    BudgetSettings,
    ClusterSettings,
    GradientSettings,
    Profile,
    SourceSpec,
)
from gtp_pipeline.core.ingest.corpus import CorpusConfig
from gtp_pipeline.core.ingest.targets import TargetSpec

CONFIG_ENV = "GTP_CONFIG"
SECTIONS: dict[str, type] = {
    "corpus": CorpusConfig,
    "clusters": ClusterSettings,
    "budgets": BudgetSettings,
    "gradients": GradientSettings,
    "target": TargetSpec,
}
LISTS: dict[str, type] = {"pool": SourceSpec, "contamination_targets": TargetSpec}
SCALARS = {"name", "profile", "model", "model_dir"}
MODELS = ("tiny", "smollm2", "hf_folder")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class RunConfigError(ConfigurationError):
    """A configuration file that cannot be used, with where and why."""

    def __init__(self, path: Path, where: str, message: str):
        self.path, self.where = path, where
        Exception.__init__(self, f"{path}: {where}: {message}" if where else f"{path}: {message}")


def _unknown(path: Path, where: str, keys: set[str], allowed: set[str]) -> None:
    for key in sorted(keys - allowed):
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {sorted(allowed)}"
        raise RunConfigError(path, f"{where}{key}", f"unknown key{hint}")


def _validated(path: Path, where: str, cls: type, values: Any, base: Any = None) -> Any:
    """`values` (a mapping) over `base`'s fields, as `cls`, type-checked by pydantic, errors naming the key."""
    import pydantic

    if not isinstance(values, dict):
        raise RunConfigError(path, where.rstrip("."), f"expected a mapping of {cls.__name__} fields, got {values!r}")
    _unknown(path, where, set(values), {f.name for f in dataclasses.fields(cls)})
    merged = {**(dataclasses.asdict(base) if base is not None else {}), **values}
    try:
        return pydantic.TypeAdapter(cls).validate_python(merged)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise RunConfigError(path, f"{where}{key}", f"{first['msg']} (got {first.get('input')!r})") from None
    except (TypeError, ValueError) as err:  # a dataclass's own check (__post_init__)
        raise RunConfigError(path, where.rstrip("."), str(err)) from None


def profile_from_mapping(data: Any, path: Path) -> Profile:
    """The Profile a configuration file's parsed content describes (see the module docstring)."""
    if not isinstance(data, dict):
        raise RunConfigError(path, "", f"expected a mapping of settings at the top, got {type(data).__name__}")
    _unknown(path, "", set(data), SCALARS | set(SECTIONS) | set(LISTS))
    base_name = data.get("profile", "demo")
    if base_name not in PROFILES:
        raise RunConfigError(path, "profile", f"unknown profile {base_name!r}; expected one of {sorted(PROFILES)}")
    profile = PROFILES[base_name]
    name = str(data.get("name", path.stem))
    if not NAME_RE.match(name):
        raise RunConfigError(
            path, "name", f"{name!r} must be 1-64 letters, digits, '.', '_' or '-' (it names folders)"
        )
    model = data.get("model", profile.model)
    if model not in MODELS:
        raise RunConfigError(path, "model", f"unknown model kind {model!r}; expected one of {list(MODELS)}")
    model_dir = data.get("model_dir", profile.model_dir)
    if not isinstance(model_dir, str):
        raise RunConfigError(path, "model_dir", f"expected a folder path, got {model_dir!r}")
    changes: dict[str, Any] = {"name": name, "model": model, "model_dir": model_dir}
    for key, cls in SECTIONS.items():
        if key in data:
            changes[key] = _validated(path, f"{key}.", cls, data[key], getattr(profile, key))
    for key, cls in LISTS.items():
        if key in data:
            items = data[key]
            if not isinstance(items, list):
                raise RunConfigError(path, key, f"expected a list of {cls.__name__} mappings, got {items!r}")
            changes[key] = tuple(_validated(path, f"{key}[{i}].", cls, item) for i, item in enumerate(items))
    return _files_relative_to(replace(profile, **changes), path.parent)


def _files_relative_to(profile: Profile, folder: Path) -> Profile:
    """Relative file paths in the pool and targets read from the configuration file's folder, as a user expects."""

    def place(files: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f if "://" in f or Path(f).is_absolute() else str(folder / f) for f in files)

    return replace(
        profile,
        pool=tuple(replace(s, files=place(s.files)) for s in profile.pool),
        target=replace(profile.target, files=place(profile.target.files)),
        contamination_targets=tuple(replace(t, files=place(t.files)) for t in profile.contamination_targets),
    )


def load_run_config(path: str | Path) -> Profile:
    """The Profile a YAML configuration file describes; every key checked, errors naming the key and the file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigurationError(
            f"cannot read the configuration file ({err.strerror})", CONFIG_ENV, str(path)
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RunConfigError(path, "", f"not valid YAML: {err}") from None
    return profile_from_mapping(data if data is not None else {}, path)


def profile_yaml(profile: Profile) -> str:
    """The resolved configuration as YAML, in the file format above: what a run used, written beside its artifacts."""
    import yaml

    data = dataclasses.asdict(profile)
    data = {"name": data.pop("name"), **data}

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return yaml.safe_dump(plain(data), sort_keys=False)
