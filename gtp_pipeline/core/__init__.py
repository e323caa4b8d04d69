"""Dagster-free library: every algorithm and data reader of gtp_pipeline lives here (numpy/torch/polars/zarr)."""
