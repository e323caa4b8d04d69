"""result_rows: the evaluation table as a reader sees it."""

import polars as pl

from gtp_pipeline.core.evaluation.scoring import BASE_SEED, RESULT_COLUMNS, result_rows


def test_the_base_models_seed_is_an_empty_cell_and_only_the_result_columns_are_kept():
    table = pl.DataFrame(
        {"run": ["base", "gtp-5pct"], "method": ["base", "gtp"], "seed": [BASE_SEED, 0], "loss": [3.0, 2.0]}
    ).with_columns(pl.Series("accuracy", [0.25, None], pl.Float64))
    assert result_rows(table) == [
        {"run": "base", "seed": None, "loss": 3.0, "accuracy": 0.25},
        {"run": "gtp-5pct", "seed": 0, "loss": 2.0, "accuracy": None},
    ]
    assert list(result_rows(table)[0]) == RESULT_COLUMNS
