"""featurize: resumable, deterministic across runs and processes, refuses foreign stores, reports exclusions."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gtp_pipeline.core.features.featurize import GRADIENT_ZERO, FeatureConfig, featurize
from gtp_pipeline.core.features.projection import ProjectionConfig
from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.storage.store_records import StoreCorruptError, StoreMismatchError
from gtp_pipeline.core.training.lora_train import LoraTrainConfig, train_lora
from gtp_pipeline.core.training.text import EMPTY_RESPONSE, RESPONSE_TRUNCATED_AWAY
from tests.core.test_feature_store import damage_file

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


@pytest.mark.parametrize("damage", ["flip", "zero", "truncate", "delete"])
def test_a_damaged_finished_chunk_is_refused_on_read_and_recomputed_on_resume(tmp_path, tiny, ckpts, damage):
    run(tiny, ckpts[-1], tmp_path / "s")
    before = files(tmp_path / "s")
    damage_file(Path(FeatureStore.open(tmp_path / "s").chunk_file(1)), damage)
    with pytest.raises(StoreCorruptError, match=r"chunk 1 of store .*/s is corrupt: its features file"):
        FeatureStore.open(tmp_path / "s").read_chunk(1)
    report = run(tiny, ckpts[-1], tmp_path / "s")
    assert (report.chunks_written, report.chunks_skipped) == (1, 2)
    assert files(tmp_path / "s") == before


def test_same_seed_gives_the_same_features_across_runs_and_processes(tmp_path, tiny, ckpts):
    run(tiny, ckpts[0], tmp_path / "a")
    run(tiny, ckpts[0], tmp_path / "b")
    assert files(tmp_path / "a") == files(tmp_path / "b")
    script = """
import sys, torch
torch.set_num_threads(1)
from gtp_pipeline.core.features.featurize import featurize
from gtp_pipeline.core.training.checkpoints import read_checkpoint
from gtp_pipeline.core.training.models import tiny_model
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

    from gtp_pipeline.core.features.featurize import FeatureComputer
    from gtp_pipeline.core.training.text import encode_example

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


def test_resume_in_the_middle_of_a_buffer_fill_writes_identical_bytes(tmp_path, tiny, ckpts):
    """A fill of 10 rows holds chunks 0 and 1; a kill after chunk 0 is written leaves chunk 1 to a later fill, where
    it shares the buffer with chunk 2 instead of chunk 0: its rows must still get the same bytes."""
    cfg = replace(CFG, buffer_rows=10)
    run(tiny, ckpts[-1], tmp_path / "whole", cfg=cfg)

    def stop_after_first_chunk(done, total):
        raise Interrupted

    with pytest.raises(Interrupted):
        run(tiny, ckpts[-1], tmp_path / "part", cfg=cfg, progress=stop_after_first_chunk)
    assert FeatureStore.open(tmp_path / "part").missing_chunks() == [1, 2]
    report = run(tiny, ckpts[-1], tmp_path / "part", cfg=cfg)
    assert report.buffer_rows == 10 and (report.chunks_written, report.chunks_skipped) == (2, 1)
    assert files(tmp_path / "part") == files(tmp_path / "whole")


@pytest.mark.parametrize("buffer_rows", [2, 4, 13])
def test_buffer_size_changes_speed_not_features(tmp_path, tiny, ckpts, buffer_rows):
    """Pieces of 2 rows (a chunk over three fills), or all three chunks in one fill: the same features up to the
    fp32 rounding of differently shaped batches."""
    run(tiny, ckpts[-1], tmp_path / "default")
    report = run(tiny, ckpts[-1], tmp_path / "other", cfg=replace(CFG, buffer_rows=buffer_rows))
    assert report.buffer_rows == buffer_rows and report.n_valid == 13
    a, _ = read_all(tmp_path / "default")
    b, _ = read_all(tmp_path / "other")
    np.testing.assert_allclose(a, b, atol=2e-3)  # fp16 rows of unit vectors: a last-bit flip is ~5e-4


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_device_generated_projection_gives_todays_features(tiny, ckpts, dtype):
    """The Triton path (here in its CPU interpreter) against the CPU-generated blocks, same model and rows: equal
    within fp32 rounding in fp32; in bf16 the block path rounds each block's product to bf16 (the device path sums
    in fp32), so there the rows agree to that rounding."""
    from gtp_pipeline.core.features.featurize import FeatureComputer
    from gtp_pipeline.core.features.projection_triton import TritonProjector
    from gtp_pipeline.core.training.text import encode_example

    pytest.importorskip("triton")
    cfg = replace(CFG, projection=replace(CFG.projection, dtype=dtype), buffer_rows=13)
    encoded = [encode_example(tiny.tokenizer, p, r, cfg.max_len, cfg.min_prompt_tokens) for _, p, r in EXAMPLES]
    blocks = FeatureComputer(
        tiny.model, tiny.tokenizer, ckpts[-1], replace(cfg, projection=replace(cfg.projection, kernel="blocks"))
    )
    device = FeatureComputer(
        tiny.model, tiny.tokenizer, ckpts[-1], replace(cfg, projection=replace(cfg.projection, kernel="triton"))
    )
    assert isinstance(device.projector, TritonProjector)
    a, reasons_a = blocks.compute(encoded)
    b, reasons_b = device.compute(encoded)
    assert reasons_a == reasons_b == [None] * 13
    if dtype == "fp32":
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    else:
        assert ((a * b).sum(1) > 0.99999).all()


def test_memory_is_bounded_by_the_buffer_not_the_chunk(tmp_path, tiny, ckpts):
    """A LoRA of P = 2.1M parameters and chunks of 256 rows: one (chunk, P) bf16 buffer would take 1.07 GB, which
    this process may not allocate (RLIMIT_AS: its size after start-up + 640 MiB); a buffer of 8 rows (34 MB) fits."""
    script = """
import resource, sys, torch
from dataclasses import replace
torch.set_num_threads(1)
from gtp_pipeline.core.features.featurize import FeatureConfig, featurize
from gtp_pipeline.core.training.lora_train import LoraTrainConfig
from gtp_pipeline.core.training.models import tiny_model
from gtp_pipeline.core.features.projection import ProjectionConfig
tiny = tiny_model()
examples = [(f"ex{i}", f"Question {i}?", f"Answer {i}.") for i in range(20)]
lora = LoraTrainConfig(lora_r=2048, lora_alpha=16, max_len=48)
cfg = FeatureConfig(kind="sgd", projection=ProjectionConfig(dim=32, kernel="blocks"), max_len=48, batch_size=4,
                    chunk_rows=256, buffer_rows=int(sys.argv[2]), lora=lora)
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + (640 << 20), resource.RLIM_INFINITY))
try:
    report = featurize(tiny.model, tiny.tokenizer, examples, sys.argv[1], None, cfg, model_id=tiny.model_id)
except (MemoryError, RuntimeError) as err:
    print("OUT OF MEMORY", type(err).__name__)
    sys.exit(3)
print("rows", report.n_valid, "buffer", report.buffer_rows)
"""

    def attempt(buffer_rows: int, where: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / where), str(buffer_rows)],
            cwd=Path(__file__).parents[2],
            capture_output=True,
            text=True,
            timeout=300,
        )

    small = attempt(8, "small")
    assert small.returncode == 0 and "rows 20 buffer 8" in small.stdout, small.stderr[-2000:]
    whole_chunk = attempt(256, "whole")  # what computing a whole chunk at once would need: refused
    assert whole_chunk.returncode == 3 and "OUT OF MEMORY" in whole_chunk.stdout, whole_chunk.stderr[-2000:]
