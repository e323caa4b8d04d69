"""featurize: resumable, deterministic across runs and processes, refuses foreign stores, reports exclusions."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gtp_pipeline.core.feature_store import FeatureStore, StoreMismatchError
from gtp_pipeline.core.featurize import GRADIENT_ZERO, FeatureConfig, featurize
from gtp_pipeline.core.lora_train import LoraTrainConfig, train_lora
from gtp_pipeline.core.projection import ProjectionConfig
from gtp_pipeline.core.text import EMPTY_RESPONSE, RESPONSE_TRUNCATED_AWAY

LORA = LoraTrainConfig(lora_r=4, lora_alpha=16, lr=1e-2, epochs=2, batch_size=4, max_len=64, seed=0)
CFG = FeatureConfig(
    kind="adam",
    projection=ProjectionConfig(dim=64, seed=0, block_rows=512),
    max_len=64,
    batch_size=3,
    chunk_rows=5,
    lora=LORA,
)
EXAMPLES = [
    (f"ex{i:02d}", f"Question {i}: what is {i} squared?", f"It is {i * i}." + " Indeed." * (i % 4)) for i in range(13)
]


class Interrupted(RuntimeError):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/core/conftest.py


@pytest.fixture(scope="module")
def ckpts(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("warmup")
    return train_lora(tiny.model, tiny.tokenizer, EXAMPLES[:8], root, LORA, model_id=tiny.model_id).checkpoints


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_all(path) -> tuple[np.ndarray, np.ndarray]:
    store = FeatureStore.open(path)
    return np.concatenate([store.read_chunk(c) for c in range(store.n_chunks)]).astype(np.float32), store.valid_mask()


def run(tiny, ckpt, path, cfg=CFG, examples=EXAMPLES, **kw):
    return featurize(tiny.model, tiny.tokenizer, examples, path, ckpt, cfg, model_id=tiny.model_id, **kw)


def test_features_are_unit_rows_with_identity_in_the_store(tmp_path, tiny, ckpts):
    report = run(tiny, ckpts[-1], tmp_path / "s")
    feats, valid = read_all(tmp_path / "s")
    assert report.n_valid == 13 == valid.sum() and report.invalid == [] and report.chunks_written == 3
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=2e-3)  # fp16 rows
    ident = FeatureStore.open(tmp_path / "s").meta.identity
    assert (
        ident["checkpoint_id"] == ckpts[-1].checkpoint_id
        and ident["projection_dim"] == 64
        and ident["feature_kind"] == "adam"
    )
    assert ident["model_id"] == tiny.model_id and ident["max_len"] == 64
    assert report.examples_per_s > 0 and report.seconds_projecting > 0


def test_resume_after_interruption_writes_identical_bytes(tmp_path, tiny, ckpts):
    run(tiny, ckpts[-1], tmp_path / "whole")

    def stop_after_first_chunk(done, total):
        raise Interrupted

    with pytest.raises(Interrupted):
        run(tiny, ckpts[-1], tmp_path / "part", progress=stop_after_first_chunk)
    assert FeatureStore.open(tmp_path / "part").missing_chunks() == [1, 2]
    report = run(tiny, ckpts[-1], tmp_path / "part")
    assert (report.chunks_written, report.chunks_skipped) == (2, 1)
    assert files(tmp_path / "part") == files(tmp_path / "whole")
    again = run(tiny, ckpts[-1], tmp_path / "part")
    assert again.chunks_written == 0 and again.examples_per_s == 0


def test_same_seed_gives_the_same_features_across_runs_and_processes(tmp_path, tiny, ckpts):
    run(tiny, ckpts[0], tmp_path / "a")
    run(tiny, ckpts[0], tmp_path / "b")
    assert files(tmp_path / "a") == files(tmp_path / "b")
    script = """
import sys, torch
torch.set_num_threads(1)
from gtp_pipeline.core.featurize import featurize
from gtp_pipeline.core.lora_train import read_checkpoint
from gtp_pipeline.core.models import tiny_model
from tests.core.test_featurize import CFG, EXAMPLES
tiny = tiny_model()
featurize(tiny.model, tiny.tokenizer, EXAMPLES, sys.argv[1], read_checkpoint(sys.argv[2]), CFG, model_id=tiny.model_id)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "c"), ckpts[0].path],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert files(tmp_path / "c") == files(tmp_path / "a")


@pytest.mark.parametrize(
    "change",
    [
        {"cfg": replace(CFG, projection=replace(CFG.projection, seed=1))},
        {"cfg": replace(CFG, projection=replace(CFG.projection, dim=32))},
        {"cfg": replace(CFG, kind="sgd")},
        {"cfg": replace(CFG, max_len=48)},
        {"cfg": replace(CFG, precision="bf16")},
        {"ckpt": 0},
        {"model_id": "another-model"},
    ],
    ids=["seed", "dim", "kind", "max_len", "precision", "checkpoint", "model"],
)
def test_store_written_with_another_identity_is_refused(tmp_path, tiny, ckpts, change):
    run(tiny, ckpts[-1], tmp_path / "s", examples=EXAMPLES[:5])
    cfg = change.get("cfg", CFG)
    ckpt = ckpts[change.get("ckpt", -1)]
    with pytest.raises(StoreMismatchError):
        featurize(
            tiny.model,
            tiny.tokenizer,
            EXAMPLES[:5],
            tmp_path / "s",
            ckpt,
            cfg,
            model_id=change.get("model_id", tiny.model_id),
            store_kind="candidate_features",
        )


def test_truncated_away_and_empty_responses_are_excluded_and_reported(tmp_path, tiny, ckpts):
    examples = [
        ("short", "hi", "there you go"),  # prompt under the floor: the response keeps 5 tokens
        ("long", "a long question " * 4, "answer"),  # prompt fills max_len: nothing of the response fits
        ("empty", "question", "  "),
        ("fine", "hello", "world"),
    ]
    cfg = replace(CFG, max_len=40, min_prompt_tokens=40, chunk_rows=2)
    report = run(tiny, ckpts[-1], tmp_path / "s", cfg=cfg, examples=examples)
    assert report.invalid == [("long", RESPONSE_TRUNCATED_AWAY), ("empty", EMPTY_RESPONSE)]
    feats, valid = read_all(tmp_path / "s")
    assert valid.tolist() == [True, False, False, True] and (feats[~valid] == 0).all()
    resumed = run(tiny, ckpts[-1], tmp_path / "s", cfg=cfg, examples=examples)  # reasons survive a no-op rerun
    assert resumed.invalid == report.invalid


def test_sgd_features_without_checkpoint_and_adam_needs_one(tmp_path, tiny):
    cfg = replace(CFG, kind="sgd")
    report = run(tiny, None, tmp_path / "s", cfg=cfg, examples=EXAMPLES[:4])
    assert report.n_valid == 4 and FeatureStore.open(tmp_path / "s").meta.kind == "target_features"
    assert json.dumps(report.identity)  # JSON-able for asset metadata
    with pytest.raises(ValueError, match="needs a checkpoint"):
        run(tiny, None, tmp_path / "t", examples=EXAMPLES[:4])


def test_zero_gradient_rows_are_invalid_not_nan(tmp_path, tiny):
    """With A = B = 0 every LoRA gradient is exactly zero: such rows are reported and zero, never NaN."""
    import copy

    from gtp_pipeline.core.featurize import FeatureComputer
    from gtp_pipeline.core.text import encode_example

    cfg = replace(CFG, kind="sgd")
    computer = FeatureComputer(tiny.model, tiny.tokenizer, None, cfg)
    with torch.no_grad():
        for p in computer.model.parameters():
            if p.requires_grad:
                p.zero_()
    enc = encode_example(tiny.tokenizer, "q", "a", max_len=64)
    feats, reasons = computer.compute([enc, copy.copy(enc)])
    assert reasons == [GRADIENT_ZERO, GRADIENT_ZERO] and (feats == 0).all() and np.isfinite(feats).all()


def test_bf16_features_stay_within_cosine_099_of_fp32(tmp_path, tiny, ckpts):
    run(tiny, ckpts[-1], tmp_path / "fp32")
    run(tiny, ckpts[-1], tmp_path / "bf16", cfg=replace(CFG, precision="bf16"))
    a, _ = read_all(tmp_path / "fp32")
    b, _ = read_all(tmp_path / "bf16")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99, cos


@pytest.mark.cuda
def test_cuda_features_match_cpu(tmp_path, tiny, ckpts):
    run(tiny, ckpts[-1], tmp_path / "cpu")
    run(tiny, ckpts[-1], tmp_path / "gpu", device="cuda")
    a, _ = read_all(tmp_path / "cpu")
    b, _ = read_all(tmp_path / "gpu")
    assert ((a * b).sum(1) > 0.999).all()
