"""warm_up: LoRA on a seeded fraction of the pool, resumable, with a row per checkpoint."""

import polars as pl
import pytest

from gtp_pipeline.core.ingest.records import text_examples
from gtp_pipeline.core.training.lora_train import LoraTrainConfig, warmup_subset
from gtp_pipeline.core.training.warm_up import warm_up

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/core/conftest.py

LORA = LoraTrainConfig(lora_r=4, lora_alpha=16, lr=1e-2, epochs=2, batch_size=4, max_len=64, seed=0)
POOL = pl.DataFrame(
    {
        "example_id": [f"ex{i:02d}" for i in range(20)],
        "prompt": [f"Question {i}: what is {i} plus one?" for i in range(20)],
        "response": [f"It is {i + 1}." for i in range(20)],
    }
)


def test_text_examples_are_the_rows_as_id_prompt_response():
    assert text_examples(POOL.head(2)) == [("ex00", "Question 0: what is 0 plus one?", "It is 1.")] + [
        ("ex01", "Question 1: what is 1 plus one?", "It is 2.")
    ]


def test_warm_up_trains_on_the_seeded_subset_and_resumes(tmp_path, tiny):
    lines = []
    run = warm_up(tiny, POOL, 0.4, 3, LORA, tmp_path, log=lines.append)
    assert run.n_examples == len(warmup_subset(20, 0.4, 3)) == 8
    assert lines[0] == "warm-up: 8 of 20 examples, 2 epochs, LoRA r=4, device cpu"
    assert lines[-1].startswith("warm-up step 4/4: loss ")  # 8 examples / batch 4 x 2 epochs; the last step logs
    assert [r["epoch"] for r in run.checkpoint_rows(["a", "b"])] == [1.0, 2.0]
    assert [r["partition"] for r in run.checkpoint_rows(["a", "b"])] == ["a", "b"]
    assert run.version() == "-".join(c.checkpoint_id for c in run.result.checkpoints)
    assert run.summary()["steps_run"] == 4 and run.summary()["warmup_examples"] == 8

    again = warm_up(tiny, POOL, 0.4, 3, LORA, tmp_path, log=lines.append)
    assert again.result.steps_run == 0 and again.version() == run.version()  # finished checkpoints are kept
