"""ParquetIOManager: polars DataFrames as Parquet under the artifact root (local or fsspec), one file per asset (partition)."""

from typing import Any

import dagster as dg

from gtp_pipeline.resources.storage import ArtifactStore


def column_schema(frame) -> dg.TableSchema:
    """A polars frame's columns and types, as Dagster's `dagster/column_schema` (shown on the asset page)."""
    return dg.TableSchema(columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()])


class ParquetIOManager(dg.ConfigurableIOManager):
    """`<root>/<asset key path>/<partition or "data">.parquet`, written atomically (rename locally, one PUT remotely)."""

    store: dg.ResourceDependency[ArtifactStore]

    def _path(self, key: dg.AssetKey, partition: str | None) -> Any:
        return self.store.path_for(*key.path, f"{partition or 'data'}.parquet")

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        from gtp_pipeline.core.storage.atomic import write_parquet

        partition = context.partition_key if context.has_partition_key else None
        path = write_parquet(obj, self._path(context.asset_key, partition))
        context.add_output_metadata(
            {
                "path": dg.MetadataValue.path(str(path)),
                "dagster/row_count": obj.height,
                "dagster/column_schema": column_schema(obj),
            }
        )

    def load_input(self, context: dg.InputContext):
        from gtp_pipeline.core.storage.atomic import read_parquet

        key = context.upstream_output.asset_key if context.upstream_output else context.asset_key
        partition = context.asset_partition_key if context.has_asset_partitions else None
        path = self._path(key, partition)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: materialize {key.to_user_string()} first")
        return read_parquet(path)
