"""Featurizing one shard of a store, and one example set at several checkpoints."""

import pytest

from gtp_pipeline.core.features.featurize import featurize
from gtp_pipeline.core.features.featurize_checkpoints import (
    CheckpointFeatures,
    featurize_checkpoints,
    featurize_shard,
    shard_chunks,
)
from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.training.lora_train import train_lora
from gtp_pipeline.core.training.text import EMPTY_RESPONSE
from tests.core.test_featurize import CFG, EXAMPLES, LORA

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/core/conftest.py


@pytest.fixture(scope="module")
def ckpts(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("warmup")
    return train_lora(tiny.model, tiny.tokenizer, EXAMPLES[:8], root, LORA, model_id=tiny.model_id).checkpoints


def test_shard_chunks_interleave_and_cover_the_store_once():
    shards = [shard_chunks(13, 5, s, 2) for s in range(2)]  # 13 rows in chunks of 5: chunks 0, 1, 2
    assert shards == [[0, 2], [1]]
    assert shard_chunks(13, 5, 3, 4) == []


def test_shards_fill_the_same_store_a_whole_run_would(tmp_path, tiny, ckpts):
    ident = {"data_version": "v"}
    reports = [featurize_shard(tiny, EXAMPLES, tmp_path / "s", ckpts[-1], CFG, ident, "cpu", s, 2) for s in (0, 1)]
    assert [r.summary()["chunks"] for r in reports] == [2, 1]
    assert reports[1].describe().startswith("1 chunks computed at ") and reports[1].describe().endswith(
        ", 0 already done"
    )
    whole = featurize(tiny.model, tiny.tokenizer, EXAMPLES, tmp_path / "w", ckpts[-1], CFG, tiny.model_id, ident)
    assert FeatureStore.open(tmp_path / "s").content_hash() == FeatureStore.open(tmp_path / "w").content_hash()
    resumed = featurize_shard(tiny, EXAMPLES, tmp_path / "s", ckpts[-1], CFG, ident, "cpu", 0, 2)
    assert "examples_per_s" not in resumed.summary() and resumed.summary()["chunks_resumed"] == 2
    assert resumed.describe() == "0 chunks computed, 2 already done" and whole.n_valid == 13


def test_each_checkpoint_gets_its_own_store_row_and_hash(tmp_path, tiny, ckpts):
    examples = [*EXAMPLES[:6], ("empty", "A question?", "")]
    by_key = {"first": ckpts[0], "last": ckpts[-1]}
    lines = []
    features = featurize_checkpoints(
        tiny,
        examples,
        ["first", "last"],
        resolve=by_key.__getitem__,
        path_for=lambda key: tmp_path / key,
        config=CFG,
        data_version="v7",
        device="cpu",
        label="grads",
        log=lines.append,
    )
    assert [r["checkpoint"] for r in features.rows] == ["first", "last"]
    assert [r["valid"] for r in features.rows] == [6, 6] and features.rows[0]["chunks_computed"] == 2
    assert features.hashes == [FeatureStore.open(tmp_path / k).content_hash() for k in ("first", "last")]
    assert features.hashes[0] != features.hashes[1]
    assert FeatureStore.open(tmp_path / "last").meta.identity["data_version"] == "v7"
    assert features.invalid == [
        {"checkpoint": k, "example_id": "empty", "reason": EMPTY_RESPONSE} for k in ("first", "last")
    ]
    assert features.excluded_frame().height == 2 and lines[-1].startswith("grads[last]: 6/7 valid, ")
    assert any(line.startswith("grads[first]: ") and line.endswith(" examples") for line in lines)


def test_excluded_frame_is_typed_when_nothing_is_excluded():
    frame = CheckpointFeatures(rows=[], hashes=[], invalid=[]).excluded_frame()
    assert frame.height == 0 and frame.columns == ["checkpoint", "example_id", "reason"]
