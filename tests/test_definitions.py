"""The cheapest layer: definitions load, fast, without torch, with the asset contract's names."""

import subprocess
import sys

import dagster as dg

# The asset contract (README, "The pipeline"): these names are the public interface.
CONTRACT_ASSETS = {
    "raw_corpus",
    "corpus_rejects",
    "target_examples",
    "target_rejects",
    "embeddings",
    "clusters",
    "warmup_checkpoints",
    "gradient_trajectories",
    "target_gradients",
    "gtp_selection",
    "topk_selection",
    "random_selection",
    "clusterclip_plan",
    "finetuned_model",
    "evaluation",
    "selection_report",
}


def test_definitions_load_and_validate():
    from gtp_pipeline.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert CONTRACT_ASSETS <= keys
    assert defs.resolve_job_def("corpus_job") and defs.resolve_job_def("gradients_job")
    assert {s.name for s in defs.sensors} == {"automation", "new_checkpoint_sensor"}


def test_every_asset_has_a_code_version_group_and_description():
    from gtp_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.code_version or key in graph.observable_asset_keys, key  # sources are observed, not coded
        assert node.group_name and node.group_name != "default", key
        assert node.description, key
        assert node.kinds, key


def test_loading_definitions_imports_no_torch_or_transformers():
    code = "import sys, gtp_pipeline.definitions; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_profile_env_var_picks_the_resources():
    code = "from gtp_pipeline.definitions import defs; print(defs.resources['profile'].name)"
    env = {**__import__("os").environ, "GTP_PROFILE": "tiny"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "tiny"


def test_each_profile_gets_its_model_source():
    from gtp_pipeline.resources import model_source_for_profile
    from gtp_pipeline.resources.models import HFFolderSource, SmolLM2Source, TinyModelSource

    assert isinstance(model_source_for_profile("tiny"), TinyModelSource)
    assert isinstance(model_source_for_profile("demo"), SmolLM2Source)
    assert isinstance(model_source_for_profile("experiment"), SmolLM2Source)  # the demo's model, a larger pool
    assert isinstance(model_source_for_profile("full"), HFFolderSource)


def test_layers_import_only_downward():
    """core imports no Dagster and nothing above it; resources import no assets (docs/ARCHITECTURE.md)."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "gtp_pipeline"
    forbidden = {
        "core": ("dagster", "gtp_pipeline.assets", "gtp_pipeline.resources", "gtp_pipeline.definitions"),
        "resources": ("gtp_pipeline.assets", "gtp_pipeline.definitions"),
    }
    found = []
    for layer, names in forbidden.items():
        for path in (package / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                modules += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                found += [f"{path.name}: {m}" for m in modules if any(m == n or m.startswith(n + ".") for n in names)]
    assert found == []


def test_a_method_registered_in_core_and_named_once_becomes_an_asset_a_check_partitions_and_a_report_input():
    code = """
import numpy as np
from gtp_pipeline.core.config import profiles
from gtp_pipeline.core.selection.selection_methods import register, random_k

@register("toy")
def toy(view, target, per_example, config, variant):
    return random_k(view, config)

profiles.SELECTION_METHODS = (*profiles.SELECTION_METHODS, "toy")  # the one registration line
profiles.FINETUNE_METHODS = (*profiles.SELECTION_METHODS, "clusterclip")
import dagster as dg
from gtp_pipeline.definitions import defs
from gtp_pipeline.partitions import finetune_partitions
graph = defs.resolve_asset_graph()
key = dg.AssetKey("toy_selection")
print(graph.has(key))
print(any(c.asset_key == key for c in graph.asset_check_keys))
print(key in graph.get(dg.AssetKey("finetuned_model")).parent_keys, key in graph.get(dg.AssetKey("selection_report")).parent_keys)
print(sorted({k.keys_by_dimension["run"] for k in finetune_partitions.get_partition_keys() if k.keys_by_dimension["run"].startswith("toy")}))
"""
    env = {**__import__("os").environ, "GTP_PROFILE": "tiny"}
    env.pop("GTP_CONFIG", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:4] == ["True", "True", "True True", "['toy-20pct', 'toy-5pct']"]


def test_a_budget_override_in_run_config_is_refused_naming_the_key():
    """Budgets come from the profile or configuration file, which every stage reads; a per-run override that only
    the selections would see is refused by Dagster's config check before anything runs."""
    import dagster as dg
    import pytest

    from gtp_pipeline.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance, pytest.raises(dg.DagsterInvalidConfigError, match="budgets"):
        job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("gtp_selection")],
            run_config={"ops": {"gtp_selection": {"config": {"budgets": [0.1]}}}},
        )
