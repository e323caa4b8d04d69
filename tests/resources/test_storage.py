"""ArtifactStore keeps paths under its root; the Parquet IO manager round-trips a table."""

import dagster as dg
import polars as pl
import pytest

from gtp_pipeline.resources.io_managers import ParquetIOManager
from gtp_pipeline.resources.storage import ArtifactPathError, ArtifactStore


@pytest.mark.parametrize("parts", [("..", "escape.txt"), ("/etc", "passwd"), ("a", "..", "..", "b")])
def test_path_for_refuses_paths_outside_the_root(tmp_path, parts):
    with pytest.raises(ArtifactPathError):
        ArtifactStore(root=str(tmp_path / "root")).path_for(*parts)


def test_path_for_creates_parents_under_the_root(tmp_path):
    path = ArtifactStore(root=str(tmp_path)).path_for("a", "b", "c.parquet")
    assert path.parent.is_dir() and path.parent.parent.parent == tmp_path.resolve()


def test_parquet_io_manager_writes_under_asset_key_and_reads_back(tmp_path):
    @dg.asset
    def table():
        return pl.DataFrame({"x": [1, 2, 3]})

    @dg.asset
    def doubled(table: pl.DataFrame) -> pl.DataFrame:
        return table.with_columns(pl.col("x") * 2)

    store = ArtifactStore(root=str(tmp_path))
    result = dg.materialize([table, doubled], resources={"io_manager": ParquetIOManager(store=store)})
    assert result.success
    assert pl.read_parquet(tmp_path / "doubled" / "data.parquet")["x"].to_list() == [2, 4, 6]
    meta = result.asset_materializations_for_node("table")[0].metadata
    assert meta["dagster/row_count"].value == 3
