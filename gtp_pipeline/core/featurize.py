"""LESS gradient features into a FeatureStore: per-example LoRA gradient -> Adam direction -> project -> normalize.

LESS (arXiv 2402.04333, less/data_selection/collect_grad_reps.py) computes, per checkpoint and per example,
the LoRA gradient of the mean response loss; candidates (kind "adam") use m'/sqrt(v'+eps) with the checkpoint's
Adam moments, targets (kind "sgd") the plain gradient; every vector goes through one shared Rademacher
projection (core/projection.py) and is unit-normalized. Features are stored as fp16 rows.

Work goes chunk by chunk through `FeatureStore` (core/feature_store.py): a chunk's rows are batched by
length, their gradients are computed with `BatchedGrads` (one forward/backward per batch) into a (rows, P)
buffer, the whole chunk is projected at once (so each generated block of the matrix serves every row of the
chunk), then the chunk is written and marked done. A rerun skips done chunks; since a chunk's computation
depends only on its own rows, an interrupted-then-resumed run writes the same bytes as an uninterrupted one.

Rows that cannot be features are written as zeros with valid=False and reported with a reason: the response
was truncated away or empty (core/text.py), or the gradient was not finite or zero. Everything that changes
the numbers (model, checkpoint, kind, projection seed/dim/type, text settings, precision) is in the store's
identity, so a store written differently is refused (StoreMismatchError) instead of being mixed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from gtp_pipeline.core.feature_store import FeatureStore, StoreMeta
from gtp_pipeline.core.lora_train import (
    CheckpointInfo,
    LoraTrainConfig,
    load_lora_model,
    load_moments,
    make_lora_model,
)
from gtp_pipeline.core.per_example_grads import (
    BatchedGrads,
    Precision,
    adam_direction,
    prepare_model,
    set_attention,
    tune_cpu_allocator,
)
from gtp_pipeline.core.projection import BlockProjector, ProjectionConfig
from gtp_pipeline.core.text import Encoded, Excluded, collate, encode_example, length_buckets, pad_id, resolve_format

logger = logging.getLogger(__name__)

GRADIENT_NOT_FINITE = "gradient_not_finite"
GRADIENT_ZERO = "gradient_zero"
INVALID_IN_EARLIER_RUN = "gradient_not_finite_or_zero"  # an invalid row of a chunk done by an earlier run
FEATURES_VERSION = 1  # bump when the feature computation changes in a way the identity does not capture


@dataclass(frozen=True)
class FeatureConfig:
    """How features are computed. Whatever changes the values is in the store identity (kind, projection seed/dim,
    max_len, min_prompt_tokens, precision; lora when there is no checkpoint); batch_size, attention and the
    projection's block_rows/cache_bytes only change speed (and fp32 rounding), chunk_rows is in the store meta."""

    kind: Literal["adam", "sgd"] = "adam"  # LESS: "adam" for candidates, "sgd" for targets
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    max_len: int = 128  # tokens per example (core/text.py)
    min_prompt_tokens: int = 16  # the prompt is cut from the left down to this (core/text.py)
    batch_size: int = 8  # examples per forward/backward; 8 x 128 tokens already runs the matmuls near peak
    chunk_rows: int = 64  # rows per store chunk: the unit of resume and of one projection call
    precision: Precision = "fp32"  # "bf16": ~3x faster on AVX512-BF16 CPUs, cosine ~0.999 to fp32 (tests, bench)
    lora: LoraTrainConfig = field(default_factory=LoraTrainConfig)  # only used without a checkpoint (fresh LoRA)
    attention: str = "auto"  # "auto": eager on CPU (faster for bf16 backward), the model's default elsewhere


@dataclass
class FeaturizeReport:
    """What one featurize call did; `invalid` lists every invalid row of the store, with its reason."""

    store_path: str
    n_examples: int
    n_valid: int
    invalid: list[tuple[str, str]]  # (example_id, reason)
    chunks_written: int
    chunks_skipped: int
    seconds: float
    seconds_gradients: float
    seconds_projecting: float
    examples_per_s: float  # rows computed by this call / seconds (0 when everything was already done)
    identity: dict[str, Any]


def feature_identity(
    config: FeatureConfig,
    model_id: str,
    checkpoint: CheckpointInfo | None,
    text_format: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The store identity: the caller's keys plus everything that determines the feature values."""
    ident: dict[str, Any] = dict(extra or {})
    ident.update(
        model_id=model_id,
        checkpoint_id=checkpoint.checkpoint_id if checkpoint is not None else "none",
        feature_kind=config.kind,
        max_len=config.max_len,
        min_prompt_tokens=config.min_prompt_tokens,
        text_format=text_format,
        precision=config.precision,
        features_version=FEATURES_VERSION,
        **config.projection.identity(),
    )
    if checkpoint is None:  # a fresh LoRA: its shape and init seed define the parameters
        lora = config.lora
        ident["lora"] = (
            f"r{lora.lora_r}-a{lora.lora_alpha}-{'+'.join(lora.target_modules)}-layers{lora.layers}-seed{lora.seed}"
        )
    return ident


class FeatureComputer:
    """A LoRA model at one checkpoint plus the projector: encoded examples -> unit-norm projected features.

    The model is a private copy of the base (LoRA injected, frozen weights cast for `config.precision`);
    `compute` is one "chunk": gradients batch by batch into an (n, P) buffer, then one projection call.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        checkpoint: CheckpointInfo | None,
        config: FeatureConfig,
        device: torch.device | str = "cpu",
        projector: BlockProjector | None = None,
    ):
        if config.kind == "adam" and checkpoint is None:
            raise ValueError("kind 'adam' needs a checkpoint with optimizer moments; use kind 'sgd' without one")
        self.config, self.device = config, torch.device(device)
        if self.device.type == "cpu":
            tune_cpu_allocator()
        lora_model = (
            load_lora_model(model, checkpoint) if checkpoint is not None else make_lora_model(model, config.lora)
        )
        self.model = prepare_model(lora_model, config.precision).to(self.device).eval()
        set_attention(self.model, config.attention, self.device)
        self.grads = BatchedGrads(self.model, config.precision)
        self.n_params = self.grads.layout.n_params  # P
        self.moments = None
        if config.kind == "adam":
            self.moments = tuple(t.to(self.device) for t in load_moments(checkpoint, self.model))  # (P,), (P,)
        if projector is not None and (projector.n_params != self.n_params or projector.config != config.projection):
            raise ValueError(
                f"the given projector is for P={projector.n_params}, {projector.config}; "
                f"this model needs P={self.n_params}, {config.projection}"
            )
        # Generated blocks are shared by every BlockProjector of the process with this matrix (core/projection.py).
        self.projector = projector or BlockProjector(self.n_params, config.projection)
        self.pad = pad_id(tokenizer)
        self.buffer_dtype = torch.bfloat16 if config.projection.dtype == "bf16" else torch.float32
        self.seconds_gradients = self.seconds_projecting = 0.0

    def compute(self, encoded: Sequence[Encoded]) -> tuple[np.ndarray, list[str | None]]:
        """(n, d) fp32 unit features (zero rows where invalid) and, per row, None or the reason it is invalid."""
        t0 = time.perf_counter()
        n = len(encoded)
        G = torch.zeros(n, self.n_params, dtype=self.buffer_dtype, device=self.device)  # (n, P)
        reasons: list[str | None] = [None] * n
        for pos in length_buckets([len(e) for e in encoded], self.config.batch_size):
            batch = collate([encoded[k] for k in pos], self.pad)
            g = self.grads.grads(batch["input_ids"], batch["labels"], batch["lengths"])  # (B, P) fp32
            finite = torch.isfinite(g).all(dim=1)  # (B,)
            g = torch.where(finite[:, None], g, 0.0)
            if self.moments is not None:
                g = adam_direction(g, *self.moments, out=g)
            G[pos] = g.to(self.buffer_dtype)
            for k, fin in zip(pos, finite.tolist(), strict=True):
                if not fin:
                    reasons[k] = GRADIENT_NOT_FINITE
        t1 = time.perf_counter()
        feats = self.projector.project(G)  # (n, d) fp32
        norms = feats.norm(dim=1)  # (n,)
        feats = (feats / norms.clamp_min(1e-30)[:, None]).cpu().numpy()
        for k in (norms == 0).nonzero().flatten().tolist():
            reasons[k] = reasons[k] or GRADIENT_ZERO
        feats[[k for k in range(n) if reasons[k] is not None]] = 0.0
        self.seconds_gradients += t1 - t0
        self.seconds_projecting += time.perf_counter() - t1
        return feats, reasons

    def free_memory(self) -> None:
        self.projector.free_memory()


def featurize(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[tuple[str, str, str]],
    store_path: str | Path,
    checkpoint: CheckpointInfo | None,
    config: FeatureConfig = FeatureConfig(),
    model_id: str = "",
    identity: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    store_kind: str | None = None,
    projector: BlockProjector | None = None,
    chunks: Sequence[int] | None = None,
) -> FeaturizeReport:
    """Compute the features of (example_id, prompt, response) examples into the store at store_path; resumes.

    Args:
        model: the base causal LM (copied, never modified).
        checkpoint: a warm-up checkpoint (its adapter, and for kind "adam" its Adam moments); None = a fresh
            LoRA from `config.lora` (SGD only).
        config: see FeatureConfig.
        model_id: identifies the base weights (core/models.py).
        identity: the caller's extra identity keys (e.g. corpus version); model/checkpoint/projection/... are added.
        progress: called as progress(rows_done, rows_to_do) after every chunk this call computes.
        store_kind: FeatureStore kind; default "candidate_features" for adam, "target_features" for sgd.
        projector: a BlockProjector to use; by default a new one, which still reuses the process-wide cache of
            generated matrix blocks (core/projection.py).
    """
    t_start = time.perf_counter()
    if config.kind not in ("adam", "sgd"):
        raise ValueError(f"kind must be 'adam' or 'sgd', got {config.kind!r}")
    if config.kind == "adam" and checkpoint is None:
        raise ValueError("kind 'adam' needs a checkpoint with optimizer moments; use kind 'sgd' without one")
    if not examples:
        raise ValueError("no examples to featurize")
    ids = [str(e[0]) for e in examples]
    form = resolve_format(tokenizer)
    ident = feature_identity(config, model_id, checkpoint, form, identity)
    kind = store_kind or ("candidate_features" if config.kind == "adam" else "target_features")
    meta = StoreMeta(
        kind=kind, n_rows=len(examples), dim=config.projection.dim, chunk_rows=config.chunk_rows, identity=ident
    )
    store = FeatureStore.create_or_open(store_path, meta, ids)  # raises StoreMismatchError on another identity

    encoded: list[Encoded | Excluded] = [
        encode_example(tokenizer, p, r, config.max_len, config.min_prompt_tokens) for _, p, r in examples
    ]
    scope = sorted(set(range(store.n_chunks) if chunks is None else chunks))
    if scope and not 0 <= scope[0] <= scope[-1] < store.n_chunks:
        raise ValueError(f"chunks must lie in 0..{store.n_chunks - 1}, got {scope[0]}..{scope[-1]}")
    in_scope = np.zeros(len(examples), dtype=bool)  # (n,) rows this call reports on
    for c in scope:
        in_scope[slice(*store.chunk_bounds(c))] = True
    missing = [c for c in store.missing_chunks() if c in set(scope)]
    invalid: dict[int, str] = {i: e.reason for i, e in enumerate(encoded) if isinstance(e, Excluded) and in_scope[i]}
    rows_to_do = sum(store.chunk_bounds(c)[1] - store.chunk_bounds(c)[0] for c in missing)
    t_grad = t_proj = 0.0
    rows_computed = 0
    if missing:
        computer = FeatureComputer(model, tokenizer, checkpoint, config, device, projector)
        for c in missing:
            t0 = time.perf_counter()
            start, stop = store.chunk_bounds(c)
            rows = [i for i in range(start, stop) if i not in invalid]
            feats, reasons = computer.compute([encoded[i] for i in rows])  # (n, d) fp32, unit rows
            out = np.zeros((stop - start, config.projection.dim), dtype=np.float32)  # (chunk rows, d)
            valid = np.zeros(stop - start, dtype=bool)
            for k, i in enumerate(rows):
                if reasons[k] is None:
                    out[i - start] = feats[k]
                    valid[i - start] = True
                else:
                    invalid[i] = reasons[k]
            store.write_chunk(c, out, valid)
            rows_computed += stop - start
            if progress is not None:
                progress(rows_computed, rows_to_do)
            logger.info("chunk %d (%d rows) in %.1f s", c, stop - start, time.perf_counter() - t0)
        t_grad, t_proj = computer.seconds_gradients, computer.seconds_projecting

    # Invalid rows of chunks done by an earlier run: their exact reason was not stored.
    valid_mask = store.valid_mask()
    for i in np.flatnonzero(~valid_mask & in_scope).tolist():
        invalid.setdefault(i, INVALID_IN_EARLIER_RUN)
    seconds = time.perf_counter() - t_start
    return FeaturizeReport(
        store_path=str(store_path),
        n_examples=int(in_scope.sum()),
        n_valid=int((valid_mask & in_scope).sum()),
        invalid=[(ids[i], invalid[i]) for i in sorted(invalid)],
        chunks_written=len(missing),
        chunks_skipped=len(scope) - len(missing),
        seconds=seconds,
        seconds_gradients=t_grad,
        seconds_projecting=t_proj,
        examples_per_s=rows_computed / seconds if rows_computed else 0.0,
        identity=ident,
    )
