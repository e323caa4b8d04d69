"""One module per pipeline stage; each asset reads inputs, calls core, writes outputs, reports metadata."""

import warnings

import dagster as dg

# Content-hash data versions on Output are how this pipeline keeps lineage; Dagster marks the parameter
# beta. Silence that one warning, nothing else.
warnings.filterwarnings("ignore", message=r"Parameter `data_version` of initializer `Output.__init__`")
warnings.filterwarnings("ignore", message=r"Parameter `backfill_policy` of function `asset`")  # single-run backfills
warnings.filterwarnings("ignore", message=r"Class `MultiToSingleDimensionPartitionMapping`")  # shards -> checkpoint


OWNER = "team:data-selection"  # the catalog's owner filter; a deployment puts its own team (or e-mail) here


def for_the_catalog(assets: list) -> list:
    """Every asset with its owner and a `stage` tag (its group), so the catalog can filter by both."""

    def annotate(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.merge_attributes(owners=[OWNER], tags={"stage": spec.group_name or "default"})

    return [
        dg.map_asset_specs(annotate, [a])[0] if isinstance(a, dg.AssetsDefinition) and a.is_materializable else a
        for a in assets
    ]
