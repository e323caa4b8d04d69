"""The run configuration file: every key checked, errors that name the key and the file, profiles as defaults."""

from dataclasses import replace
from pathlib import Path

import pytest

from gtp_pipeline.core.config.config_errors import ConfigurationError
from gtp_pipeline.core.config.profiles import DEMO, FULL
from gtp_pipeline.core.config.run_config import load_run_config, profile_yaml

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_values_override_the_named_profile_field_by_field_and_files_are_read_from_the_config_folder(tmp_path):
    path = write(
        tmp_path,
        "profile: full\nmodel: smollm2\npool:\n  - {kind: files, files: [pool.jsonl, /abs/b.jsonl]}\n"
        "target: {kind: files, files: [t.jsonl], n_dev: 3}\ngradients: {lora_r: 4, proj_dim: 512}\n"
        "budgets: {budgets: [0.02], finetune_seeds: [0, 1]}\n",
    )
    profile = load_run_config(path)
    assert profile.name == "run" and profile.model == "smollm2"  # the name defaults to the file's stem
    assert profile.gradients == replace(FULL.gradients, lora_r=4, proj_dim=512)  # the rest: full's defaults
    assert profile.budgets.budgets == (0.02,) and profile.budgets.finetune_seeds == (0, 1)
    assert profile.pool[0].files == (str(tmp_path / "pool.jsonl"), "/abs/b.jsonl")
    assert profile.target.files == (str(tmp_path / "t.jsonl"),) and profile.target.n_dev == 3
    assert profile.target.n_test == FULL.target.n_test
    assert load_run_config(write(tmp_path, "name: x\n")) == replace(DEMO, name="x")  # demo is the default base


def test_the_resolved_yaml_reads_back_as_the_same_settings(tmp_path):
    profile = load_run_config(REPO / "configs" / "cpu-example.yaml")
    again = load_run_config(write(tmp_path, profile_yaml(profile), "again.yaml"))
    assert again == replace(profile, name="cpu-example")


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_configuration_loads(config):
    profile = load_run_config(config)
    assert profile.name == config.stem and profile.pool and profile.target.files


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("gradient: {lora_r: 8}\n", "run.yaml: gradient: unknown key; did you mean 'gradients'?"),
        ("gradients: {lora_rr: 8}\n", "run.yaml: gradients.lora_rr: unknown key; did you mean 'lora_r'?"),
        ("gradients: {lora_r: eight}\n", "run.yaml: gradients.lora_r: Input should be a valid integer"),
        (
            "gradients: {lora_r: 8.5}\n",
            "gradients.lora_r: Input should be a valid integer, got a number with a fractional part",
        ),
        (
            "corpus: {contamination: flagg}\n",
            "corpus.contamination: Input should be 'exclude' or 'flag' (got 'flagg')",
        ),
        ("budgets: {budgets: 0.05}\n", "budgets.budgets: Input should be a valid tuple (got 0.05)"),
        ("pool: {kind: files}\n", "run.yaml: pool: expected a list of SourceSpec mappings"),
        ("pool:\n  - {kind: files, file: [a.jsonl]}\n", "pool[0].file: unknown key; did you mean 'files'?"),
        ("pool:\n  - {files: [a.jsonl]}\n", "pool[0].kind: Field required"),
        ("target: 5\n", "run.yaml: target: expected a mapping of TargetSpec fields, got 5"),
        ("profile: ful\n", "run.yaml: profile: unknown profile 'ful'"),
        ("model: llama\n", "run.yaml: model: unknown model kind 'llama'"),
        ("name: a/b\n", "run.yaml: name: 'a/b' must be 1-64 letters"),
        ("- a\n- b\n", "run.yaml: expected a mapping of settings at the top, got list"),
        ("gradients: {lora_r: [\n", "run.yaml: not valid YAML"),
    ],
)
def test_a_bad_key_or_value_fails_naming_the_key_the_value_and_the_file(tmp_path, text, says):
    with pytest.raises(ConfigurationError) as err:
        load_run_config(write(tmp_path, text))
    assert says in str(err.value)


def test_a_missing_file_names_the_setting(tmp_path):
    with pytest.raises(ConfigurationError, match=r"GTP_CONFIG='.*nope.yaml': cannot read the configuration file"):
        load_run_config(tmp_path / "nope.yaml")
