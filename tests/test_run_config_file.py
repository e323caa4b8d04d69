"""GTP_CONFIG drives the definitions: resources, model, artifact root and fine-tune partitions come from the file,
and a typo stops the code location from loading with the key named."""

import os
import subprocess
import sys

from gtp_pipeline.instance import REPO_ROOT

SHOW = (
    "from gtp_pipeline.definitions import defs; from gtp_pipeline.partitions import finetune_partitions as f; "
    "p = defs.resources['profile']; print(p.name, p.settings().gradients.proj_dim, type(defs.resources['model']).__name__, "
    "defs.resources['store'].root.endswith('/artifacts/my-run'), sorted({k.keys_by_dimension['run'] for k in "
    "f.get_partition_keys()}), sorted({k.keys_by_dimension['seed'] for k in f.get_partition_keys()}))"
)


def run(config_text: str, tmp_path):
    path = tmp_path / "my-run.yaml"
    path.write_text(config_text)
    env = {**os.environ, "GTP_CONFIG": str(path), "GTP_PROFILE": "demo"}
    env.pop("GTP_ARTIFACT_ROOT", None)
    return subprocess.run([sys.executable, "-c", SHOW], env=env, cwd=REPO_ROOT, capture_output=True, text=True)


def test_the_configuration_file_shapes_resources_and_partitions(tmp_path):
    done = run(
        "profile: tiny\ngradients: {proj_dim: 128}\nbudgets: {budgets: [0.1], finetune_seeds: [3, 4]}\n", tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[0] == (
        "my-run 128 TinyModelSource True ['clusterclip-10pct', 'full', 'gtp-10pct', 'random-10pct', 'topk-10pct'] ['3', '4']"
    )


def test_a_typo_in_the_configuration_stops_the_definitions_naming_the_key(tmp_path):
    done = run("profile: tiny\ngradients: {projdim: 128}\n", tmp_path)
    assert done.returncode != 0
    assert "my-run.yaml: gradients.projdim: unknown key; did you mean 'proj_dim'?" in done.stderr


def test_make_ui_opens_the_instance_the_configured_demo_wrote_to(tmp_path):
    path = tmp_path / "my-run.yaml"
    path.write_text("profile: tiny\n")
    env = {**os.environ, "GTP_CONFIG": str(path), "GTP_PROFILE": "demo"}
    env.pop("GTP_ARTIFACT_ROOT", None)
    done = subprocess.run(
        [sys.executable, "-m", "gtp_pipeline.instance"], env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(REPO_ROOT / ".dagster" / "my-run")  # the demo's: instance_home(name, root)
