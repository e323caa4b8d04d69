"""The Rademacher projection with R generated on the GPU: `TritonProjector`, same matrix as core/features/projection.py.

At 7B scale (LoRA r=128 on q/k/v/o: P ~ 134M, d = 8192) R has ~1.1e12 entries: it can neither be cached nor made on
the CPU per call (numpy's Philox makes ~0.5 G entries/s, so one pass over R would take half an hour). Here R never
exists as a matrix. Each call walks R in slabs of rows (whole TILE_ROWS tiles, SLAB_BITS bits each) and runs two
kernels per slab:

1. `_philox_words`: the slab's raw random words, exactly `rademacher_rows`'s definition: tile k of seed s is
   numpy's Philox4x64-10 stream keyed by (s, k), counters 1, 2, ... (4 words of 64 bits each), bits row-major,
   least significant first, bit 1 meaning -1. One thread per counter; the 64-bit multiply-high is `tl.umulhi`.
   The words land in a reusable device buffer (1/8 byte per entry of R, instead of 2 for bf16 entries).
2. `_sign_gemm`: parts[s] += G[:, slab] @ S, where the bf16 tile of S (+-1) is expanded from those words in
   registers and fed straight to the tensor cores (`tl.dot`, fp32 accumulation). S costs a few integer ops per entry
   and no memory traffic beyond its bits, and is paid once per call whatever the number of rows in G; that is why
   featurize projects a whole buffer of rows per call (core/features/featurize.py).

Why this design: the first kernel is the definition, so it can be checked word for word against numpy, and the
second is an ordinary GEMM whose B operand is decoded from bits (as dequantizing GEMMs decode int4 weights), so the
matrix is bit for bit the CPU one on any GPU (unlike TRAK's fast_jl, whose matrix depends on the SM count) and
existing stores stay valid (same PROJECTION_TYPE). Only the fp32 summation order differs from the CPU projectors.

Determinism: every output element is summed in an order fixed by (P, d, KernelConfig): split-K partitions depend
on the slab, not on the number of rows, and the split partials are added in a fixed order without atomics. So a
row's features do not depend on which other rows share its call, and a resumed store gets the same bytes.

Tests run both kernels on the CPU in Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py without a
GPU): there `tl.dot` sees fp32 operands (the interpreter's bf16 dot is wrong), which are the same +-1 and bf16 values.
Needs d % 32 == 0 (rows of R start on 32-bit words); `make_projector` falls back to the CPU-generated blocks
otherwise, and wherever Triton or CUDA is missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gtp_pipeline.core.config import settings as env
from gtp_pipeline.core.features.projection import TILE_ROWS, ProjectionConfig, ProjectionError, Projector

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU-only install: TritonProjector is unavailable, the block projector is used
    triton = tl = None

SLAB_BITS = 1 << 33  # bits of R per slab: a 1 GiB word buffer; 1,048,576 rows at d = 8192
PHILOX_BLOCK = 256  # counters per program of _philox_words


def triton_available() -> bool:
    return triton is not None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (tests without a GPU)."""
    return env.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes of `_sign_gemm`. They change speed and fp32 summation order, never the matrix.

    `programs` sets the split-K factor from d alone (splits = ceil(programs / column tiles)), so the partition of a
    row's sum never depends on how many rows a call has. The default, read off the compiled code for sm_90 (no
    spills, 166 registers: three programs share an SM, so one's tensor-core work overlaps another's decoding), is
    measured against the alternatives by bench/gradients.py --kernel-sweep."""

    block_m: int = 128  # rows of G per program: a buffer of up to 128 rows decodes each tile of R once
    block_n: int = 64  # columns of R per program; a multiple of 32
    block_k: int = 64  # rows of R per step
    num_warps: int = 4
    num_stages: int = 3
    programs: int = 4096  # per slab: ~10 waves of resident programs on an H100/H200, so the last wave idles little

    def splits(self, dim: int) -> int:
        return max(1, -(-self.programs // -(-dim // self.block_n)))

    @classmethod
    def parse(cls, text: str) -> KernelConfig:
        """ "block_m,block_n,block_k,num_warps,num_stages", as bench/gradients.py --kernel takes it."""
        try:
            bm, bn, bk, warps, stages = (int(v) for v in text.split(","))
        except ValueError as err:
            raise ProjectionError(f"kernel config {text!r}: expected five integers bm,bn,bk,warps,stages") from err
        return cls(block_m=bm, block_n=bn, block_k=bk, num_warps=warps, num_stages=stages)

    def __str__(self) -> str:
        return f"{self.block_m},{self.block_n},{self.block_k},{self.num_warps},{self.num_stages}"


if triton is not None:

    @triton.jit(do_not_specialize=["seed", "tile0"])
    def _philox_words(out_ptr, seed, tile0, n_ctr, BLOCK: tl.constexpr):
        """Words of tiles tile0 + program_id(1): counter i (1-based) of a tile -> words 4(i-1) .. 4(i-1)+3."""
        t = tl.program_id(1)
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) counter index in the tile, 0-based
        live = i < n_ctr
        c0 = (i + 1).to(tl.uint64)  # numpy's Philox increments its counter before the first block
        c1 = tl.zeros_like(c0)
        c2 = tl.zeros_like(c0)
        c3 = tl.zeros_like(c0)
        k0 = tl.zeros_like(c0) + seed
        k1 = tl.zeros_like(c0) + tile0 + t
        for r in tl.static_range(10):  # Philox4x64-10 (Salmon et al. 2011; numpy's philox.h)
            if r > 0:
                k0 = k0 + 0x9E3779B97F4A7C15
                k1 = k1 + 0xBB67AE8584CAA73B
            hi0 = tl.umulhi(c0, 0xD2E7470EE14C6C93)
            lo0 = c0 * 0xD2E7470EE14C6C93
            hi1 = tl.umulhi(c2, 0xCA5A826395121157)
            lo1 = c2 * 0xCA5A826395121157
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        base = out_ptr + t.to(tl.int64) * n_ctr * 4 + i * 4
        tl.store(base, c0, mask=live)
        tl.store(base + 1, c1, mask=live)
        tl.store(base + 2, c2, mask=live)
        tl.store(base + 3, c3, mask=live)

    @triton.jit
    def _rotr(x, k: tl.constexpr):
        return (x >> k) | (x << (32 - k))  # uint32: one funnel shift

    @triton.jit
    def _signs(w, BK: tl.constexpr, BN: tl.constexpr, F32: tl.constexpr):
        """(BK, BN/32) int32 words -> (BK, BN) signs (+-1) in *pair order*: position f of a word's 32 holds bit
        f // 2 + 16 (f % 2), i.e. bits b and b + 16 sit side by side (`pair_order_columns` maps positions back).

        Why that order: rotating a word left by 15 - b puts bit b at bit 15 and bit b + 16 at bit 31, the sign bits
        of the two bf16 halves of one register, so one rotation and one mask-and-or (0x3F80 is bf16 +1.0) make two
        signs. A tree of joins makes the 16 rotations (each from the previous, 15 shifts per word) and keeps every
        value in the thread that loaded its word, so the tile needs no layout conversion."""
        x = _rotr(w.to(tl.uint32, bitcast=True), 17)  # rotate left by 15: bit 0 -> 15, bit 16 -> 31
        x = tl.join(x, _rotr(x, 8))  # (BK, BN/32, 2): axis a rotates right by 8 a more
        x = tl.join(x, _rotr(x, 4))
        x = tl.join(x, _rotr(x, 2))
        x = tl.join(x, _rotr(x, 1))  # (BK, BN/32, 2, 2, 2, 2): bits b, b + 16 at 15, 31 with b = 8a + 4b' + 2c + d
        if F32:
            lo = ((x << 16) & 0x80000000) | 0x3F800000  # fp32 +1.0 is 0x3F800000
            hi = (x & 0x80000000) | 0x3F800000
            pair = tl.join(lo, hi).to(tl.float32, bitcast=True)
        else:
            x = (x & 0x80008000) | 0x3F803F80  # two bf16 signs per word
            pair = tl.join((x & 0xFFFF).to(tl.uint16), (x >> 16).to(tl.uint16)).to(tl.bfloat16, bitcast=True)
        return tl.reshape(pair, (BK, BN))

    @triton.jit
    def _pair_order_columns(col0, BN: tl.constexpr):
        """The column of R at each position of a `_signs` tile starting at column col0 (a multiple of 32)."""
        n = tl.arange(0, BN)
        return col0 + (n // 32) * 32 + (n % 32) // 2 + 16 * (n % 2)

    @triton.jit
    def _sign_step(acc, g_rows, row_ok, words_ptr, words_per_row, rw, word_ok, k0, k_hi,
                   BK: tl.constexpr, BN: tl.constexpr, MASK_K: tl.constexpr, F32_DOT: tl.constexpr,
                   IEEE: tl.constexpr):  # fmt: skip
        """acc += G[:, k0:k0+BK] @ S[k0:k0+BK, columns]; MASK_K only for a split's ragged last step."""
        rk = k0 + tl.arange(0, BK)  # (BK,) rows of the slab
        w_rows = words_ptr + rk[:, None].to(tl.int64) * words_per_row  # (BK, 1)
        if MASK_K:
            k_ok = rk < k_hi
            a = tl.load(g_rows + rk[None, :], mask=row_ok & k_ok[None, :], other=0.0)  # (BM, BK)
            w = tl.load(w_rows + rw[None, :], mask=k_ok[:, None] & word_ok, other=0)  # (BK, BN/32)
        else:
            a = tl.load(g_rows + rk[None, :], mask=row_ok, other=0.0)
            w = tl.load(w_rows + rw[None, :], mask=word_ok, other=0)
        sign = _signs(w, BK, BN, F32_DOT)  # (BK, BN) +-1
        if F32_DOT:
            if IEEE:
                return tl.dot(a.to(tl.float32), sign, acc, input_precision="ieee")
            return tl.dot(a.to(tl.float32), sign, acc)
        return tl.dot(a, sign, acc)

    @triton.jit(do_not_specialize=["N", "K"])  # one compiled kernel whatever the rows of a call or of a last slab
    def _sign_gemm(
        g_ptr,  # (N, P) bf16 or fp32, row stride stride_g
        words_ptr,  # the slab's words as int32: row r of the slab is words [r * d/32, (r+1) * d/32)
        part_ptr,  # (splits, N, d) fp32 partial sums, added to
        N,
        K,  # rows of R in this slab
        k_off,  # the slab's first row of R = its first column of G
        stride_g,
        d,
        split_k,  # rows of the slab per split (a multiple of BK)
        BM: tl.constexpr,
        BN: tl.constexpr,
        BK: tl.constexpr,
        F32_DOT: tl.constexpr,  # fp32 operands (the interpreter; or ProjectionConfig.dtype == "fp32")
        IEEE: tl.constexpr,  # exact fp32 products on a GPU (no tf32)
    ):
        pid = tl.program_id(0)
        s = tl.program_id(1)
        n_col_tiles = tl.cdiv(d, BN)
        rm = (pid // n_col_tiles) * BM + tl.arange(0, BM)  # (BM,) rows of G
        rw = (pid % n_col_tiles) * (BN // 32) + tl.arange(0, BN // 32)  # (BN/32,) words of these columns
        words_per_row = d // 32
        k_lo = s * split_k
        k_hi = tl.minimum(k_lo + split_k, K)
        k_full = k_lo + tl.maximum(k_hi - k_lo, 0) // BK * BK  # steps before k_full need no mask along k
        row_ok = rm[:, None] < N
        word_ok = rw[None, :] < words_per_row
        g_rows = g_ptr + rm[:, None].to(tl.int64) * stride_g + k_off  # (BM, 1)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(k_lo, k_full, BK):
            acc = _sign_step(acc, g_rows, row_ok, words_ptr, words_per_row, rw, word_ok, k0, k_hi,
                             BK, BN, False, F32_DOT, IEEE)  # fmt: skip
        if k_full < k_hi:
            acc = _sign_step(acc, g_rows, row_ok, words_ptr, words_per_row, rw, word_ok, k_full, k_hi,
                             BK, BN, True, F32_DOT, IEEE)  # fmt: skip
        rn = _pair_order_columns((pid % n_col_tiles) * BN, BN)  # (BN,) columns of acc's positions
        out = part_ptr + s.to(tl.int64) * N * d + rm[:, None].to(tl.int64) * d + rn[None, :]
        ok = row_ok & (rn[None, :] < d)
        tl.store(out, tl.load(out, mask=ok, other=0.0) + acc, mask=ok)


def philox_words(seed: int, tile0: int, n_tiles: int, dim: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The raw Philox words of tiles [tile0, tile0 + n_tiles) of R, (n_tiles * 4 * dim,) uint64, on out's device.

    Word w of tile k equals `np.random.Philox(key=[seed, k]).random_raw(4 * dim)[w]`."""
    _require_triton()
    n_ctr = TILE_ROWS * dim // 256  # counters per tile: 256 bits each
    if out is None:
        out = torch.empty(n_tiles * 4 * n_ctr, dtype=torch.uint64, device="cpu" if interpreting() else "cuda")
    elif out.numel() < n_tiles * 4 * n_ctr or out.dtype != torch.uint64:
        raise ProjectionError(f"word buffer too small or not uint64: {tuple(out.shape)} {out.dtype}")
    _philox_words[(triton.cdiv(n_ctr, PHILOX_BLOCK), n_tiles)](out, seed, tile0, n_ctr, BLOCK=PHILOX_BLOCK)
    return out


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _require_triton() -> None:
    if triton is None:
        raise ProjectionError("TritonProjector needs the triton package (pip install triton)")


class TritonProjector(Projector):
    """G (N, P) -> G R / sqrt(d) with R made slab by slab on the device (see the module docstring)."""

    def __init__(self, n_params: int, config: ProjectionConfig, kernel: KernelConfig = KernelConfig()):
        super().__init__(n_params, config)
        _require_triton()
        if config.dim % 32:
            raise ProjectionError(f"TritonProjector needs dim % 32 == 0, got {config.dim}")
        if kernel.block_n % 32 or kernel.block_k < 16 or kernel.block_m < 16:
            raise ProjectionError(f"bad kernel tiles {kernel}")
        self.kernel = kernel
        tiles = max(1, SLAB_BITS // (TILE_ROWS * config.dim))
        self.slab_rows = tiles * TILE_ROWS  # a whole number of tiles: slabs start where numpy's keys change
        self._words: torch.Tensor | None = None  # reusable (slab tiles x 4d,) uint64 buffer on the device

    def slabs(self) -> list[tuple[int, int]]:
        """[start, stop) rows of R per slab."""
        return [(r0, min(r0 + self.slab_rows, self.n_params)) for r0 in range(0, self.n_params, self.slab_rows)]

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        self._check(grads)
        if grads.device.type != "cuda" and not interpreting():
            raise ProjectionError(f"TritonProjector runs on CUDA tensors, got {grads.device}")
        exact = self.config.dtype == "fp32"
        G = grads if grads.dtype == (torch.float32 if exact else torch.bfloat16) else grads.to(self.dtype)
        if G.stride(1) != 1:
            G = G.contiguous()
        n, d, kc = G.shape[0], self.config.dim, self.kernel
        splits = kc.splits(d)
        words_len = _ceil_div(min(self.slab_rows, self.n_params), TILE_ROWS) * 4 * d  # one slab, or all of R
        if self._words is None or self._words.device != G.device or self._words.numel() != words_len:
            self._words = torch.empty(words_len, dtype=torch.uint64, device=G.device)
        parts = torch.zeros(splits, n, d, dtype=torch.float32, device=G.device)  # (splits, N, d)
        grid_mn = triton.cdiv(n, kc.block_m) * triton.cdiv(d, kc.block_n)
        for r0, r1 in self.slabs():
            rows = r1 - r0
            philox_words(self.config.seed, r0 // TILE_ROWS, -(-rows // TILE_ROWS), d, out=self._words)
            split_k = _ceil_div(_ceil_div(rows, splits), kc.block_k) * kc.block_k  # whole steps per split
            _sign_gemm[(grid_mn, splits)](
                G, self._words.view(torch.int32), parts, n, rows, r0, G.stride(0), d, split_k,
                BM=kc.block_m, BN=kc.block_n, BK=kc.block_k,
                F32_DOT=exact or interpreting(), IEEE=exact and not interpreting(),
                num_warps=kc.num_warps, num_stages=kc.num_stages,
            )  # fmt: skip
        out = parts[0]
        for s in range(1, splits):  # a fixed order: no atomics, so the same bytes every time
            out += parts[s]
        return out.div_(math.sqrt(d))

    def free_memory(self) -> None:
        self._words = None
