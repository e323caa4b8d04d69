"""Seeded Rademacher random projection of flattened LoRA gradients, P -> d, never materialized whole.

LESS (arXiv 2402.04333, less/data_selection/collect_grad_reps.py) projects every gradient with TRAK's
projector (Park et al., arXiv 2303.14186, trak/projectors.py): `proj_type=rademacher`, one matrix shared by
all checkpoints and by candidates and targets. The matrix R (P x d) has entries +-1/sqrt(d), so
E||x R||^2 = ||x||^2 (Johnson-Lindenstrauss).

R is defined tile by tile: rows [k*TILE_ROWS, (k+1)*TILE_ROWS) are the bits of a counter-based Philox stream
keyed by (seed, k) (numpy's `Philox.random_raw`, a stable bit stream), row-major, least significant bit first,
bit 0 -> +1, bit 1 -> -1. So any
block of rows can be generated on its own, in any order, in any process, and R does not depend on the
block size used to apply it. The same bits are generated on the CPU (numpy) or on a GPU (core/features/projection_triton.py,
checked word for word against numpy), so features never depend on the hardware that made them.

Implementations (TRAK's AbstractProjector interface: `project(grads) -> Tensor`):
  - `DenseProjector`: materializes R and computes grads @ R. Slow and memory-hungry; for tests, small sizes
    and the LESS-style baseline of bench/gradients.py.
  - `BlockProjector`: fused per block of rows: generate R[block] (or take it from a cache), multiply,
    accumulate. Generating costs ~2-3 ns per entry (more than a 64-row product), so gradients are projected a
    whole store chunk per call, and blocks are cached up to `cache_bytes` (the rest is regenerated per call).
    The cache is shared by every projector of the process that applies the same matrix, so the features of
    every checkpoint and of the targets reuse it (`clear_projection_cache` releases it).
  - `TritonProjector` (core/features/projection_triton.py): R generated on the GPU inside the product, for sizes whose R
    cannot be cached (a 7B model's LoRA gradients: ~1.1e12 entries).
`make_projector` picks one for a device.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

logger = logging.getLogger(__name__)

TILE_ROWS = 256  # rows of R per Philox key; a block is a whole number of tiles
PROJECTION_TYPE = "rademacher-philox-v1"  # goes into store identities: a new scheme must change this string


class ProjectionError(ValueError):
    """Bad projection sizes, or gradients of the wrong width."""


@dataclass(frozen=True)
class ProjectionConfig:
    """The projection. `dim` and `seed` define R; the rest only decides how fast it is applied."""

    dim: int = 8192  # d; LESS's default (it also reports 1024-4096). The CPU demo uses 1024-2048
    seed: int = 0  # LESS/TRAK use seed 0; shared by all checkpoints, candidates and targets
    block_rows: int = 16_384  # rows of R per fused block: 16k x 1024 x 2 B = 32 MiB, cache-friendly
    dtype: Literal["fp32", "bf16"] = "bf16"  # product dtype; bf16 entries +-1 are exact, sums accumulate in fp32
    cache_bytes: int = 2 << 30  # keep generated blocks up to 2 GiB; beyond that they are regenerated per call
    kernel: Literal["auto", "blocks", "triton"] = "auto"  # auto: triton on CUDA when it can, else CPU-made blocks

    def identity(self) -> dict[str, object]:
        """What makes two projections the same matrix (not how it is applied)."""
        return {"projection_type": PROJECTION_TYPE, "projection_dim": self.dim, "projection_seed": self.seed}


_TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sign_table(dtype: torch.dtype) -> np.ndarray:
    """(256, 8) table: byte -> the float bit patterns of its 8 signs (bit 0 -> +1, bit 1 -> -1), LSB first."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1  # (256, 8)
    if dtype == torch.bfloat16:
        return (bits.astype(np.uint16) << 15) | np.uint16(0x3F80)  # bf16 +1.0 is 0x3F80; the sign is bit 15
    return (bits.astype(np.uint32) << 31) | np.uint32(0x3F800000)  # fp32 +1.0 is 0x3F800000


_TABLES = {torch.float32: _sign_table(torch.float32), torch.bfloat16: _sign_table(torch.bfloat16)}
_INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16}


def rademacher_rows(seed: int, start: int, stop: int, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows [start, stop) of the unscaled sign matrix (+-1), shape (stop - start, dim), on the CPU."""
    if not 0 <= start <= stop or dim < 1:
        raise ProjectionError(f"bad rows [{start}, {stop}) or dim={dim}")
    if dtype not in _TABLES:
        raise ProjectionError(f"dtype must be float32 or bfloat16, got {dtype}")
    first, last = start // TILE_ROWS, -(-stop // TILE_ROWS)
    words = TILE_ROWS * dim // 64  # uint64 words per tile (TILE_ROWS * dim is a multiple of 64)
    table = _TABLES[dtype]
    out = torch.empty((last - first) * TILE_ROWS, dim, dtype=dtype)  # whole tiles; sliced below
    # Write the float bit patterns straight into `out`: one table lookup per random byte (8 signs).
    flat = out.view(_INT_VIEW[dtype]).numpy().view(table.dtype).reshape(-1, 8)  # (tiles * TILE_ROWS * dim / 8, 8)
    per_tile = TILE_ROWS * dim // 8
    for j, k in enumerate(range(first, last)):
        raw = np.random.Philox(key=np.array([seed, k], dtype=np.uint64)).random_raw(words).view(np.uint8)
        np.take(table, raw, axis=0, out=flat[j * per_tile : (j + 1) * per_tile])
    lo = start - first * TILE_ROWS
    return out[lo : lo + stop - start]  # (stop - start, dim)


class Projector(ABC):
    """Maps gradients (N, P) to features (N, d) with the shared seeded Rademacher matrix R / sqrt(d)."""

    def __init__(self, n_params: int, config: ProjectionConfig):
        if n_params < 1 or config.dim < 1:
            raise ProjectionError(f"need n_params >= 1 and dim >= 1, got {n_params} and {config.dim}")
        if config.block_rows < TILE_ROWS or config.block_rows % TILE_ROWS:
            raise ProjectionError(f"block_rows must be a positive multiple of {TILE_ROWS}, got {config.block_rows}")
        self.n_params, self.config = n_params, config
        self.dtype = _TORCH_DTYPE[config.dtype]

    def _check(self, grads: torch.Tensor) -> None:
        if grads.ndim != 2 or grads.shape[1] != self.n_params:
            raise ProjectionError(
                f"projector expects gradients of shape (N, {self.n_params}), got {tuple(grads.shape)}"
            )

    @abstractmethod
    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """(N, P) gradients -> (N, d) fp32 features, on the gradients' device."""

    def free_memory(self) -> None:  # noqa: B027 - optional, as TRAK's AbstractProjector.free_memory
        """Drop cached matrix blocks (a no-op for projectors without a cache)."""


class DenseProjector(Projector):
    """Materializes R (P x d) once: the obvious reference (P x d x 4 bytes of memory)."""

    def __init__(self, n_params: int, config: ProjectionConfig):
        super().__init__(n_params, config)
        self._matrix: torch.Tensor | None = None

    def matrix(self, device: torch.device | str = "cpu") -> torch.Tensor:
        if self._matrix is None or self._matrix.device != torch.device(device):
            R = rademacher_rows(self.config.seed, 0, self.n_params, self.config.dim, self.dtype)  # (P, d)
            self._matrix = R.to(device)
        return self._matrix

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        self._check(grads)
        out = grads.to(self.dtype) @ self.matrix(grads.device)  # (N, d)
        return out.float() / math.sqrt(self.config.dim)

    def free_memory(self) -> None:
        self._matrix = None


class _BlockCache:
    """Generated blocks of one matrix (seed, dim, dtype, block_rows, P), by (block, device), within a byte budget."""

    def __init__(self, budget: int):
        self.blocks: dict[tuple[int, str], torch.Tensor] = {}
        self.budget, self.nbytes = budget, 0

    def get(self, key: tuple[int, str]) -> torch.Tensor | None:
        return self.blocks.get(key)

    def put(self, key: tuple[int, str], block: torch.Tensor) -> None:
        size = block.numel() * block.element_size()
        if self.nbytes + size <= self.budget:
            self.blocks[key] = block
            self.nbytes += size

    def clear(self) -> None:
        self.blocks.clear()
        self.nbytes = 0


# The blocks of the most recently used matrix, shared by every BlockProjector of this process that applies the same
# matrix (the projection is shared by all checkpoints and by candidates and targets, LESS §1.1): a later featurize
# call reuses them instead of regenerating ~1 GiB. One matrix at a time, so memory stays within cache_bytes.
_SHARED: dict[tuple, _BlockCache] = {}


def clear_projection_cache() -> None:
    """Release the shared block cache (e.g. when a process is done with gradient features)."""
    for cache in _SHARED.values():
        cache.clear()
    _SHARED.clear()


class BlockProjector(Projector):
    """Fused block-wise product: for each block of rows, R_b = cached-or-generated, out += G[:, b] @ R_b."""

    def __init__(self, n_params: int, config: ProjectionConfig, shared_cache: bool = True):
        super().__init__(n_params, config)
        key = (config.seed, config.dim, config.dtype, config.block_rows, n_params, config.cache_bytes)
        if shared_cache:
            if key not in _SHARED:
                clear_projection_cache()
                _SHARED[key] = _BlockCache(config.cache_bytes)
            self._cache = _SHARED[key]
        else:
            self._cache = _BlockCache(config.cache_bytes)
        self.seconds_generating = 0.0  # time spent making blocks (for benchmarks)

    def _block(self, b: int, device: torch.device) -> torch.Tensor:
        key = (b, str(device))
        R = self._cache.get(key)
        if R is None:
            start = b * self.config.block_rows
            stop = min(start + self.config.block_rows, self.n_params)
            t0 = time.perf_counter()
            R = rademacher_rows(self.config.seed, start, stop, self.config.dim, self.dtype).to(device)  # (rows, d)
            self.seconds_generating += time.perf_counter() - t0
            self._cache.put(key, R)
        return R

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        self._check(grads)
        out = torch.zeros(grads.shape[0], self.config.dim, dtype=torch.float32, device=grads.device)  # (N, d)
        n_blocks = -(-self.n_params // self.config.block_rows)
        for b in range(n_blocks):
            start = b * self.config.block_rows
            stop = min(start + self.config.block_rows, self.n_params)
            G = grads[:, start:stop].to(self.dtype)  # (N, rows)
            out += (G @ self._block(b, grads.device)).float()  # partial sums are summed in fp32
        return out.div_(math.sqrt(self.config.dim))

    def free_memory(self) -> None:
        self._cache.clear()


def make_projector(n_params: int, config: ProjectionConfig, device: torch.device | str = "cpu") -> Projector:
    """The projector for gradients on `device`: on CUDA the device-generated TritonProjector when Triton is installed
    and dim % 32 == 0 (config.kernel "auto" or "triton"), else the BlockProjector (blocks made on the CPU, cached)."""
    if config.kernel not in ("auto", "blocks", "triton"):
        raise ProjectionError(f"kernel must be 'auto', 'blocks' or 'triton', got {config.kernel!r}")
    if config.kernel == "blocks":
        return BlockProjector(n_params, config)
    from gtp_pipeline.core.features import projection_triton  # imports triton: only where a GPU path is wanted

    on_gpu = torch.device(device).type == "cuda" or projection_triton.interpreting()
    usable = projection_triton.triton_available() and config.dim % 32 == 0
    if config.kernel == "triton":
        if not (on_gpu and usable):
            raise ProjectionError(
                f"kernel 'triton' needs CUDA (or TRITON_INTERPRET=1), the triton package and dim % 32 == 0; "
                f"device={device}, triton installed={projection_triton.triton_available()}, dim={config.dim}"
            )
        return projection_triton.TritonProjector(n_params, config)
    if on_gpu and usable and torch.device(device).type == "cuda":
        return projection_triton.TritonProjector(n_params, config)
    if torch.device(device).type == "cuda":
        logger.warning("projection on %s with blocks made on the CPU (slow at scale): %s", device,
                       "dim % 32 != 0" if projection_triton.triton_available() else "triton is not installed")  # fmt: skip
    return BlockProjector(n_params, config)


BUFFER_MEMORY_SHARE = 0.4  # auto buffer on a GPU: this share of its memory (the rest: weights, activations)
MAX_BUFFER_ROWS = 256  # beyond this the matrix generation is paid over enough rows that more only costs memory


def buffer_rows_for(n_params: int, requested: int, chunk_rows: int, dtype: str, device: torch.device) -> int:
    """Gradient rows projected per call: `requested`, or when 0, one store chunk (`chunk_rows`) on the CPU (where
    the generated blocks are cached, so nothing is gained by more) and on a GPU as many rows as fit in
    BUFFER_MEMORY_SHARE of the device's memory, between 16 and MAX_BUFFER_ROWS (a multiple of 16)."""
    if requested > 0:
        return requested
    if device.type != "cuda":
        return chunk_rows
    row_bytes = n_params * (2 if dtype == "bf16" else 4)
    fit = int(BUFFER_MEMORY_SHARE * torch.cuda.get_device_properties(device).total_memory) // row_bytes
    return max(16, min(MAX_BUFFER_ROWS, fit // 16 * 16))
