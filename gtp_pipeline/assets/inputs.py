"""What the stages read besides each other's outputs, as observable source assets: the target task and the pool
(by the content of the user's files and their settings) and the recipes that shape each stage. Observing them
(`make demo` does first; in the UI, "Observe sources" on the lineage graph) records a new data version when a file
or a setting changed, and Dagster then shows exactly the stages that read it as stale."""

import warnings

import dagster as dg

from gtp_pipeline.resources.profile import ProfileResource

GROUP = "inputs"
FILE_KIND, SETTINGS_KIND = {"dagster/kind/file": ""}, {"dagster/kind/settings": ""}  # the badges the UI draws
warnings.filterwarnings("ignore", message=".*observable_source_asset.*", category=dg.BetaWarning)


def _observed(described: dict) -> dg.ObserveResult:
    """The version of what was read, and what it is, as metadata the UI shows (settings values, file digests)."""
    import json

    from gtp_pipeline.core.config.input_versions import input_version

    metadata = {
        key: value
        if isinstance(value, int | float | str | bool)
        else dg.MetadataValue.json(json.loads(json.dumps(value, default=str)))
        for key, value in described.items()
    }
    return dg.ObserveResult(data_version=dg.DataVersion(input_version(described)), metadata=metadata)


@dg.observable_source_asset(
    group_name=GROUP, tags=FILE_KIND, description="The target task: its spec and its files' content."
)
def target_input(profile: ProfileResource) -> dg.ObserveResult:
    from gtp_pipeline.core.config import input_versions

    return _observed(input_versions.target_input(profile.settings()))


@dg.observable_source_asset(
    group_name=GROUP,
    tags=FILE_KIND,
    description="The pool: its sources, the corpus rules, the targets it is decontaminated against, its files' content.",
)
def pool_input(profile: ProfileResource) -> dg.ObserveResult:
    from gtp_pipeline.core.config import input_versions

    return _observed(input_versions.pool_input(profile.settings()))


def _recipe(name: str, shapes: str):
    @dg.observable_source_asset(
        name=name, group_name=GROUP, tags=SETTINGS_KIND, description=f"The settings that shape {shapes}."
    )
    def observe(profile: ProfileResource) -> dg.ObserveResult:
        from gtp_pipeline.core.config.input_versions import recipe_settings

        return _observed(recipe_settings(profile.settings(), name))

    return observe


warmup_recipe = _recipe("warmup_recipe", "the warm-up checkpoints")
feature_recipe = _recipe("feature_recipe", "the gradient features")
cluster_recipe = _recipe("cluster_recipe", "the clusters and the ClusterClip plan")
selection_recipe = _recipe("selection_recipe", "the selections and the ClusterClip plan")
finetune_recipe = _recipe("finetune_recipe", "the fine-tunes and their evaluation")
