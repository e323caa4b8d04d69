"""LESS gradient features into a FeatureStore: per-example LoRA gradient -> Adam direction -> project -> normalize.

LESS (arXiv 2402.04333, less/data_selection/collect_grad_reps.py) computes, per checkpoint and per example,
the LoRA gradient of the mean response loss; candidates (kind "adam") use m'/sqrt(v'+eps) with the checkpoint's
Adam moments, targets (kind "sgd") the plain gradient; every vector goes through one shared Rademacher
projection (core/features/projection.py) and is unit-normalized. Features are stored as fp16 rows.

Work goes through a projection buffer of `buffer_rows` rows (FeatureComputer): the rows of the chunks still missing
in the `FeatureStore` (core/storage/feature_store.py) are batched by length within their chunk, their gradients are
computed with `BatchedGrads` (one forward/backward per batch) straight into the buffer, and each fill of the buffer
is projected in one call, so each generated part of the matrix serves every row of the fill (on a GPU, the matrix
is generated there: core/features/projection_triton.py). A chunk is written and marked done as soon as all its rows are
projected: chunk_rows is only the unit of resume and of the store, and memory is bounded by the buffer. A rerun
skips done chunks; since a row's features depend only on its own chunk, an interrupted-then-resumed run writes the
same bytes as an uninterrupted one.

Rows that cannot be features are written as zeros with valid=False and reported with a reason: the response
was truncated away or empty (core/training/text.py), or the gradient was not finite or zero. Everything that changes
the numbers (model, checkpoint, kind, projection seed/dim/type, text settings, precision) is in the store's
identity, so a store written differently is refused (StoreMismatchError) instead of being mixed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from gtp_pipeline.core.features.per_example_grads import (
    BatchedGrads,
    Precision,
    adam_direction,
    prepare_model,
    set_attention,
    tune_cpu_allocator,
)
from gtp_pipeline.core.features.projection import ProjectionConfig, Projector, buffer_rows_for, make_projector
from gtp_pipeline.core.ingest.records import TextExample
from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.storage.store_records import StoreMeta
from gtp_pipeline.core.training.checkpoints import CheckpointInfo
from gtp_pipeline.core.training.lora_train import LoraTrainConfig, load_lora_model, load_moments, make_lora_model
from gtp_pipeline.core.training.text import (
    Encoded,
    Excluded,
    collate,
    encode_example,
    length_buckets,
    pad_id,
    resolve_format,
)

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
    max_len: int = 128  # tokens per example (core/training/text.py)
    min_prompt_tokens: int = 16  # the prompt is cut from the left down to this (core/training/text.py)
    batch_size: int = 8  # examples per forward/backward; 8 x 128 tokens already runs the matmuls near peak
    chunk_rows: int = 64  # rows per store chunk: the unit of resume and of the store
    buffer_rows: int = 0  # gradient rows projected per call; 0: one chunk on a CPU, sized from memory on a GPU
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
    buffer_rows: int = 0  # rows of the projection buffer used (0 when nothing was computed)

    def summary(self) -> dict[str, Any]:
        """What this call did, in plain numbers; a rate only where it computed chunks."""
        rate = {"examples_per_s": round(self.examples_per_s, 2)} if self.chunks_written else {}
        return {
            "chunks": self.chunks_written + self.chunks_skipped,  # in scope: computed now or done before
            "chunks_resumed": self.chunks_skipped,
            "examples": self.n_examples,
            "valid": self.n_valid,
            **rate,
            "seconds": round(self.seconds, 1),
        }

    def describe(self) -> str:
        """One line: chunks computed (and how fast) and chunks already done."""
        rate = f" at {self.examples_per_s:.1f} examples/s" if self.chunks_written else ""
        return f"{self.chunks_written} chunks computed{rate}, {self.chunks_skipped} already done"


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

    The model shares the base's weights (`weight_sharing_copy`: LoRA injected into a copy of the module tree, the
    base never modified or duplicated). Gradients go straight into a (buffer_rows, P) projection buffer (in the
    Adam direction for kind "adam", cast to the projection dtype), batch by batch; each fill of the buffer is
    projected in one call, so the matrix is generated once per fill, not once per batch (core/features/projection_triton.py).
    Memory is bounded by the buffer, whatever the number of rows asked for.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        checkpoint: CheckpointInfo | None,
        config: FeatureConfig,
        device: torch.device | str = "cpu",
        projector: Projector | None = None,
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
        if self.device.type == "cuda" and config.precision == "bf16":
            # bf16 adapter weights: autocast multiplies bf16-rounded weights and inputs anyway (and the per-example
            # products use bf16 operands on a GPU, per_example_grads.outer_sums), so every value is the same; but peft
            # then stops keeping an fp32 copy of each adapted layer's input for the backward (~1 GB per example at 7B).
            for p in self.model.parameters():
                if p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
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
        self.projector = projector or make_projector(self.n_params, config.projection, self.device)
        self.pad = pad_id(tokenizer)
        self.buffer_rows = buffer_rows_for(
            self.n_params, config.buffer_rows, config.chunk_rows, config.projection.dtype, self.device
        )
        buffer_dtype = torch.bfloat16 if config.projection.dtype == "bf16" else torch.float32
        self.buffer = torch.empty(self.buffer_rows, self.n_params, dtype=buffer_dtype, device=self.device)
        self.seconds_gradients = self.seconds_projecting = 0.0

    def _adam(self, g: torch.Tensor, sl: slice) -> torch.Tensor:
        return adam_direction(g, self.moments[0][sl], self.moments[1][sl], out=g)

    def _fill(self, rows: Sequence[Encoded], pieces: Sequence[tuple[int, int]]) -> tuple[np.ndarray, list[str | None]]:
        """Gradients of `rows` into the buffer, batches formed within each piece [lo, hi) and written to consecutive
        buffer slots in batch order, then one projection of the filled slots."""
        t0 = time.perf_counter()
        n = len(rows)
        reasons: list[str | None] = [None] * n
        transform = self._adam if self.moments is not None else None
        row_of_slot: list[int] = []
        for lo, hi in pieces:
            for pos in length_buckets([len(e) for e in rows[lo:hi]], self.config.batch_size):
                batch = collate([rows[lo + k] for k in pos], self.pad)
                slots = self.buffer[len(row_of_slot) : len(row_of_slot) + len(pos)]  # (B, P) view
                finite = self.grads.grads_into(slots, batch["input_ids"], batch["labels"], batch["lengths"], transform)
                for j, (k, fin) in enumerate(zip(pos, finite.tolist(), strict=True)):
                    row_of_slot.append(lo + k)
                    if not fin:
                        reasons[lo + k] = GRADIENT_NOT_FINITE
                        slots[j].zero_()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        projected = self.projector.project(self.buffer[:n])  # (n, d) fp32, in slot order
        norms = projected.norm(dim=1)  # (n,)
        by_slot = (projected / norms.clamp_min(1e-30)[:, None]).cpu().numpy()
        feats = np.empty_like(by_slot)
        feats[row_of_slot] = by_slot
        for slot in (norms == 0).nonzero().flatten().tolist():
            reasons[row_of_slot[slot]] = reasons[row_of_slot[slot]] or GRADIENT_ZERO
        feats[[k for k in range(n) if reasons[k] is not None]] = 0.0
        self.seconds_gradients += t1 - t0
        self.seconds_projecting += time.perf_counter() - t1
        return feats, reasons

    def compute_groups(
        self, groups: Sequence[Sequence[Encoded]]
    ) -> Iterator[tuple[int, np.ndarray, list[str | None]]]:
        """(group index, (n, d) fp32 unit features with zero rows where invalid, per row None or the reason it is
        invalid), each group as soon as all its rows are projected.

        A group is cut into pieces of at most buffer_rows rows, batches never cross a piece, and as many whole
        pieces as fit share a buffer fill. So a row's features depend only on its own group (its gradient batch) and
        on itself (the projection of a row does not depend on its neighbours): a store's chunk, computed as one
        group, gets the same values whichever chunks it is computed with."""
        d = self.config.projection.dim
        out = [np.zeros((len(g), d), dtype=np.float32) for g in groups]
        why: list[list[str | None]] = [[None] * len(g) for g in groups]
        left = [-(-len(g) // self.buffer_rows) for g in groups]  # pieces not yet projected, per group
        pieces = [
            (gi, lo, min(lo + self.buffer_rows, len(g)))
            for gi, g in enumerate(groups)
            for lo in range(0, len(g), self.buffer_rows)
        ]
        for gi, g in enumerate(groups):
            if not g:
                yield gi, out[gi], why[gi]
        fill: list[tuple[int, int, int]] = []
        for k, piece in enumerate(pieces):
            fill.append(piece)
            used = sum(hi - lo for _, lo, hi in fill)
            nxt = pieces[k + 1][2] - pieces[k + 1][1] if k + 1 < len(pieces) else self.buffer_rows + 1
            if used + nxt <= self.buffer_rows:
                continue
            rows, spans, at = [], [], 0
            for gi, lo, hi in fill:
                rows.extend(groups[gi][lo:hi])
                spans.append((at, at + hi - lo))
                at += hi - lo
            feats, reasons = self._fill(rows, spans)
            for (gi, lo, hi), (a, b) in zip(fill, spans, strict=True):
                out[gi][lo:hi] = feats[a:b]
                why[gi][lo:hi] = reasons[a:b]
                left[gi] -= 1
                if left[gi] == 0:
                    yield gi, out[gi], why[gi]
            fill = []

    def compute(self, encoded: Sequence[Encoded]) -> tuple[np.ndarray, list[str | None]]:
        """(n, d) fp32 unit features (zero rows where invalid) and, per row, None or the reason it is invalid."""
        ((_, feats, reasons),) = list(self.compute_groups([encoded]))
        return feats, reasons

    def free_memory(self) -> None:
        self.buffer = torch.empty(0)
        self.projector.free_memory()


def featurize(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[TextExample],
    store_path: str | Path,
    checkpoint: CheckpointInfo | None,
    config: FeatureConfig = FeatureConfig(),
    model_id: str = "",
    identity: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    store_kind: str | None = None,
    projector: Projector | None = None,
    chunks: Sequence[int] | None = None,
) -> FeaturizeReport:
    """Compute the features of (example_id, prompt, response) examples into the store at store_path; resumes.

    Args:
        model: the base causal LM (copied, never modified).
        checkpoint: a warm-up checkpoint (its adapter, and for kind "adam" its Adam moments); None = a fresh
            LoRA from `config.lora` (SGD only).
        config: see FeatureConfig.
        model_id: identifies the base weights (core/training/models.py).
        identity: the caller's extra identity keys (e.g. corpus version); model/checkpoint/projection/... are added.
        progress: called as progress(rows_done, rows_to_do) after every chunk this call computes.
        store_kind: FeatureStore kind; default "candidate_features" for adam, "target_features" for sgd.
        projector: the projector to use; by default `make_projector` picks one for the device (on a GPU with
            Triton the matrix is generated on the device; on a CPU the process-wide cache of generated blocks of
            core/features/projection.py is reused by every call).
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
    missing = store.chunks_to_write(scope)  # not done, or done but failing its checksum
    invalid: dict[int, str] = {i: e.reason for i, e in enumerate(encoded) if isinstance(e, Excluded) and in_scope[i]}
    rows_to_do = sum(store.chunk_bounds(c)[1] - store.chunk_bounds(c)[0] for c in missing)
    t_grad = t_proj = 0.0
    rows_computed = buffer_rows = 0
    if missing:
        computer = FeatureComputer(model, tokenizer, checkpoint, config, device, projector)
        buffer_rows = computer.buffer_rows
        chunk_rows = [[i for i in range(*store.chunk_bounds(c)) if i not in invalid] for c in missing]
        t0 = time.perf_counter()
        for k, feats, reasons in computer.compute_groups([[encoded[i] for i in rows] for rows in chunk_rows]):
            c, (start, stop) = missing[k], store.chunk_bounds(missing[k])
            out = np.zeros((stop - start, config.projection.dim), dtype=np.float32)  # (chunk rows, d)
            valid = np.zeros(stop - start, dtype=bool)
            for j, i in enumerate(chunk_rows[k]):
                if reasons[j] is None:
                    out[i - start] = feats[j]
                    valid[i - start] = True
                else:
                    invalid[i] = reasons[j]
            store.write_chunk(c, out, valid)
            rows_computed += stop - start
            if progress is not None:
                progress(rows_computed, rows_to_do)
            logger.info("chunk %d (%d rows) done, %.1f s since the last", c, stop - start, time.perf_counter() - t0)
            t0 = time.perf_counter()
        t_grad, t_proj = computer.seconds_gradients, computer.seconds_projecting
        computer.free_memory()

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
        buffer_rows=buffer_rows,
    )
