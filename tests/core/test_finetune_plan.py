"""What a fine-tune trains on: a selection's budget in rank order, a ClusterClip stream, or the whole pool."""

import polars as pl
import pytest

from gtp_pipeline.core.training.finetune_plan import plan_finetune, train_planned
from gtp_pipeline.core.training.lora_train import LoraTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/core/conftest.py


def corpus(n=10):
    return pl.DataFrame(
        {
            "example_id": [f"p{i}" for i in range(n)],
            "prompt": [f"Count to {i % 3 + 1}." for i in range(n)],
            "response": [" ".join(str(k) for k in range(1, i % 3 + 2)) for i in range(n)],
        }
    )


def selection(picks):
    """A selection table: {budget: [(example_id, weight, rank)]}."""
    rows = [
        {"budget": b, "budget_value": 0.0, "example_id": e, "weight": w, "rank": r, "select_seconds": 0.1}
        for b, picked in picks.items()
        for e, w, r in picked
    ]
    return pl.DataFrame(rows)


SELECTIONS = {
    "gtp": selection({"20pct": [("p7", 0.5, 2), ("p3", 2.0, 1)], "50pct": [("p1", 1.0, 1)]}),
    "topk": selection({"20pct": [("p2", 0.0, 1), ("p9", 0.0, 2)]}),
}
CLUSTERCLIP = pl.DataFrame(
    {
        "method": ["clusterclip"] * 5,
        "budget": ["20pct"] * 5,
        "step": [3, 1, 2, 4, 0],
        "example_id": ["p4", "p1", "p1", "p8", "p0"],
    }
)


def test_a_selection_run_trains_on_its_budget_in_rank_order_with_weights_only_for_weighted_gtp():
    plan = plan_finetune("gtp-20pct", 1, corpus(), SELECTIONS, CLUSTERCLIP, epochs=3, use_weights=True)
    assert plan.rows.tolist() == [3, 7]
    assert plan.weights.tolist() == [2.0, 0.5]
    assert [e[0] for e in plan.examples] == ["p3", "p7"] and plan.examples[0][1:] == ("Count to 1.", "1")
    assert (plan.stream, plan.save_every_steps, plan.draws, plan.distinct_examples) == (None, 0, 6, 2)
    assert plan.description == "2 gtp examples x 3 epochs = 6 draws"
    identity = plan.identity("corpus-v", lambda t: f"{t.height} rows")
    assert identity == {
        "run": "gtp-20pct",
        "seed": 1,
        "corpus_version": "corpus-v",
        "selection_version": "3 rows",  # the whole selection table, every budget
        "weighted": True,
    }
    assert plan_finetune("gtp-20pct", 1, corpus(), SELECTIONS, CLUSTERCLIP, 3, use_weights=False).weights is None
    topk = plan_finetune("topk-20pct", 0, corpus(), SELECTIONS, CLUSTERCLIP, 3, use_weights=True)
    assert topk.weights is None and topk.rows.tolist() == [2, 9]


def test_a_clusterclip_run_follows_its_stream_and_saves_every_25_steps():
    plan = plan_finetune("clusterclip-20pct", 0, corpus(), SELECTIONS, CLUSTERCLIP, epochs=3, use_weights=True)
    assert plan.stream == [0, 1, 1, 4, 8]  # in step order
    assert plan.rows.tolist() == list(range(10)) and plan.weights is None
    assert (plan.save_every_steps, plan.draws, plan.distinct_examples) == (25, 5, 4)
    assert plan.description == "ClusterClip stream of 5 draws"
    assert plan.identity("c", lambda t: f"{t.height} steps")["selection_version"] == "5 steps"


def test_the_full_run_trains_on_the_whole_pool_and_has_no_selection_version():
    plan = plan_finetune("full", 0, corpus(), SELECTIONS, CLUSTERCLIP, epochs=2, use_weights=True)
    assert plan.rows.tolist() == list(range(10)) and plan.weights is None and plan.stream is None
    assert (plan.draws, plan.distinct_examples, plan.description) == (20, 10, "all 10 pool examples, 2 epochs")
    identity = plan.identity("c", lambda t: pytest.fail("no table to version"))
    assert identity["selection_version"] == "-" and identity["weighted"] is False


@pytest.mark.parametrize(
    ("run", "says"),
    [("gtp-5pct", "gtp_selection has no rows for budget '5pct'"), ("clusterclip-50pct", "no stream for budget")],
)
def test_a_budget_the_tables_lack_is_refused_naming_it(run, says):
    with pytest.raises(ValueError, match=says):
        plan_finetune(run, 0, corpus(), SELECTIONS, CLUSTERCLIP, 1, False)


def test_training_the_plan_logs_progress_and_writes_its_checkpoints(tmp_path, tiny):
    plan = plan_finetune("gtp-20pct", 0, corpus(), SELECTIONS, CLUSTERCLIP, epochs=1, use_weights=True)
    recipe = LoraTrainConfig(lora_r=4, lora_alpha=16, epochs=1, batch_size=1, max_len=32)
    logged = []
    result = train_planned(plan, tiny, recipe, tmp_path, "cpu", logged.append)
    assert result.checkpoints[-1].step == 2 and result.steps_run == 2
    assert len(logged) == 1 and logged[0].startswith("gtp-20pct seed 0: step 2/2, loss ")  # the last step only
