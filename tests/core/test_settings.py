"""One module reads the environment; every GTP_* variable it declares is in the README's table, and no other."""

import re
from pathlib import Path

import pytest

from gtp_pipeline.core.config import settings

REPO = Path(__file__).resolve().parents[2]


def test_only_the_settings_module_touches_the_environment():
    readers = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "gtp_pipeline").rglob("*.py")
        if re.search(r"os\.environ|os\.getenv|getenv\(", p.read_text())
    )
    assert readers == ["gtp_pipeline/core/config/settings.py"]


def test_the_readme_table_lists_exactly_the_declared_gtp_variables():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| variable | what it sets | default |") :].split("\n\n")[0]
    documented = set(re.findall(r"`(GTP_[A-Z_]+)`", table))
    assert documented == {name for name in settings.SETTINGS if name.startswith("GTP_")}


def test_a_blank_value_means_the_default_and_unknown_names_are_refused(monkeypatch):
    monkeypatch.setenv("GTP_DEVICE", "  ")
    assert settings.get("GTP_DEVICE") == "auto"
    monkeypatch.setenv("GTP_DEVICE", "cpu")
    assert settings.get("GTP_DEVICE") == "cpu"
    assert settings.get("GTP_DEVICE", {"GTP_DEVICE": "cuda"}) == "cuda"
    assert settings.raw("CUDA_VISIBLE_DEVICES", {"CUDA_VISIBLE_DEVICES": ""}) == ""  # set but blank: no GPUs
    with pytest.raises(KeyError, match="GTP_DEVICES is not a declared setting"):
        settings.get("GTP_DEVICES")
    with pytest.raises(KeyError):
        settings.child_environment(GTP_TYPO="1")
    assert settings.child_environment(GTP_TARGET_TASK="gsm8k")["GTP_TARGET_TASK"] == "gsm8k"
