"""How a feature store lies in Zarr: a group holding `features` (n_rows x dim, one chunk per store chunk), `valid`,
`example_id`, and the identity in the group's attrs, written last; local or at any fsspec location."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gtp_pipeline.core.storage.atomic import AnyPath, is_local
from gtp_pipeline.core.storage.store_records import StoreMeta

LAYOUT_MARKER = "zarr.json"  # the group's metadata file: a store exists where it does


def open_group(path: AnyPath, mode: str) -> Any:
    """The Zarr group at `path`: a local folder, or Zarr's FsspecStore for any fsspec location."""
    import zarr
    from zarr.errors import ContainsGroupError

    if is_local(path):
        return zarr.open_group(str(path), mode=mode)
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url(str(path), storage_options=dict(path.storage_options))
    try:
        return zarr.open_group(store=store, mode=mode)
    except ContainsGroupError:  # mode "a": another creator made the group between zarr's check and its create
        return zarr.open_group(store=store, mode="r+")


def init_group(group: Any, meta: StoreMeta, example_ids: Sequence[str], overwrite: bool) -> None:
    """The store's arrays, ids and (last) identity attrs. With overwrite=False, existing arrays are reused."""
    from zarr.errors import ContainsArrayError

    def make(name: str, **kw: Any) -> Any:
        if overwrite:
            return group.create_array(name, **kw)
        try:
            return group.create_array(name, overwrite=False, **kw)
        except (
            ContainsArrayError
        ):  # another creator made it first (same identity, or compare_identity refuses it below)
            return group[name]

    make(
        "features",
        shape=(meta.n_rows, meta.dim),
        chunks=(meta.chunk_rows, meta.dim),
        dtype=meta.dtype,
        compressors=None,
        fill_value=0,
    )
    make("valid", shape=(meta.n_rows,), chunks=(meta.chunk_rows,), dtype="bool", fill_value=False)
    ids = make("example_id", shape=(meta.n_rows,), chunks=(meta.n_rows,), dtype=str)
    ids[:] = np.asarray(list(example_ids), dtype=str)
    group.attrs["meta"] = meta.to_attrs()
