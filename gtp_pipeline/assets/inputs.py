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


@dg.observable_source_asset(
    group_name=GROUP, tags=FILE_KIND, description="The target task: its spec and its files' content."
)
def target_input(profile: ProfileResource) -> dg.DataVersion:
    from gtp_pipeline.core.input_versions import target_input_version

    return dg.DataVersion(target_input_version(profile.settings()))


@dg.observable_source_asset(
    group_name=GROUP,
    tags=FILE_KIND,
    description="The pool: its sources, the corpus rules, the targets it is decontaminated against, its files' content.",
)
def pool_input(profile: ProfileResource) -> dg.DataVersion:
    from gtp_pipeline.core.input_versions import pool_input_version

    return dg.DataVersion(pool_input_version(profile.settings()))


def _recipe(name: str, shapes: str):
    @dg.observable_source_asset(
        name=name, group_name=GROUP, tags=SETTINGS_KIND, description=f"The settings that shape {shapes}."
    )
    def observe(profile: ProfileResource) -> dg.DataVersion:
        from gtp_pipeline.core.input_versions import recipe_version

        return dg.DataVersion(recipe_version(profile.settings(), name))

    return observe


warmup_recipe = _recipe("warmup_recipe", "the warm-up checkpoints")
feature_recipe = _recipe("feature_recipe", "the gradient features")
cluster_recipe = _recipe("cluster_recipe", "the clusters and the ClusterClip plan")
selection_recipe = _recipe("selection_recipe", "the selections and the ClusterClip plan")
finetune_recipe = _recipe("finetune_recipe", "the fine-tunes and their evaluation")
