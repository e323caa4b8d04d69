"""One streaming pass of the pursuit over a LESS-sized store: time, bandwidth and memory, against the machine's ceiling.

LESS's setting (Xia et al. 2024): 270k candidates x 4 checkpoints x 8192 projected dims in fp16, 17.7 GB of feature
stores. One synthetic store of that shape (clustered rows, written chunk by chunk with the pipeline's FeatureStore;
reused when --store already holds it, resumed when a write was cut short) is streamed through StoreTrajectories and
each kind of pass is timed beside the machine's own ceiling, in the same run, in the same order every repetition:
  read       a plain sequential read of the same chunk files in the pass's order (readinto one reused buffer)
  correlate  StoreTrajectories.correlate(b): every row's score against one target (one pass)
  scan       StoreTrajectories.scan(b, top=2k+1), k = 1% of N: GTP's first pass, which keeps its pool as fp32 rows
  gemv       a torch fp32 GEMV over a block of trajectories held in memory, scaled to N rows (the compute ceiling)
Cache: "cold" evicts the store from the page cache (posix_fadvise DONTNEED) before every timed read and pass, so each
reads the disk; "warm" reads the store once and keeps it cached; "auto" is cold when the store is larger than half
of MemAvailable. Memory: /proc/self/status sampled every 10 ms during each pass, file-backed RSS (mapped chunks: page
cache the kernel may drop) apart from anonymous RSS (what the process owns). Bounded memory means the anonymous growth
over a pass does not depend on N beyond a few floats per row (norms, scores); a scan adds its 2k+1 pool rows.
--device cuda converts and multiplies each chunk on the GPU (StoreTrajectories(device="cuda"): chunks read on the CPU,
copied through pinned memory); one CPU pass of each kind is timed in the same run, with the largest score difference.
--gtp also runs gtp (pursuit.py) once to k on the store; otherwise its time is estimated as 5 passes (bench/pursuit.py
measures 5 passes at k = 1%) plus its in-memory algebra, which is not measured here.

Run: python bench/pursuit_scale.py --threads 1 --store /tmp/less_store   (full: N=270k, 17.7 GB written once, kept)
     python bench/pursuit_scale.py --quick      (N=16,384: 1.1 GB in a temp dir, warm; under a minute)
     python bench/pursuit_scale.py --device cuda --device-size   (a GPU machine: N=32,768, 2.1 GB in a temp dir;
                                   54 s on an H200 machine with one store writer, under 60 s with the default)
Needs numpy, torch and zarr (not Dagster). Progress goes to stderr; the last line on stdout is one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from gtp_pipeline.core.features.store_trajectories import StoreTrajectories
from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.storage.store_records import StoreMeta

# --- defaults (full mode: LESS's sizes); --quick overrides N ---
N = 270_000  # candidate rows (LESS: the 270k-example instruction pool)
T = 4  # checkpoints (LESS: 4 epochs)
D_CKPT = 8192  # projected dims per checkpoint (LESS's default); trajectory dim = 32,768
CHUNK_ROWS = 1024  # the full profile's chunk: 1024 x 8192 x 2 B = 16 MiB per checkpoint
K_FRAC = 0.01  # k = 1% of the pool; a scan keeps GTP's first pool of 2k + 1 rows
REPS = 3  # timed repetitions of read / correlate / scan (median reported)
THREADS = 1  # torch intra-op threads, as bench/pursuit.py; the chunk reader is one more thread
GEMV_BYTES = 512 << 20  # fp32 block for the compute ceiling: 512 MiB, far past the CPU caches
CLUSTERS, CENTRE, DRIFT, NOISE = 256, 0.3, 0.2, 1.0  # row = centre + per-checkpoint drift + noise (bench/pursuit.py)
LR = (1.6877e-05, 1.2859e-05, 7.7030e-06, 2.5616e-06)  # LESS README checkpoint weights
SEED = 0
QUICK_N = 16_384
WRITERS = max(1, min(8, (os.cpu_count() or 1) // 2))  # store writers: 1 on this 2-core VM, 8 on a GPU host
DEVICE_N = 32_768  # --device-size: 2.1 GB, written and measured in 54 s on an H200 machine (one writer)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the store -------------------------------------------------------------------------------------------------------
def synthetic_store(root: str, n: int, d: int, t_ckpt: int, chunk_rows: int, writers: int = 1) -> list[FeatureStore]:
    """T candidate stores of clustered unit rows; only missing chunks are written (a store at `root` is reused).

    `writers` processes write disjoint chunks (as the gradient shards do); each chunk's rows come from its own seed,
    so the bytes do not depend on how many wrote them or on a resumed write.
    """
    ids = [f"ex{i:07d}" for i in range(n)]
    stores = []
    for t in range(t_ckpt):
        meta = StoreMeta(
            "candidate_features", n, d, chunk_rows, identity={"checkpoint_id": f"ckpt{t}", "synthetic": SEED}
        )
        stores.append(FeatureStore.create_or_open(os.path.join(root, f"cand{t}"), meta, ids))
    todo = sorted(set().union(*(st.missing_chunks() for st in stores)))
    paths = [str(st.path) for st in stores]
    if writers > 1 and len(todo) > 1:
        parts = [p.tolist() for p in np.array_split(np.asarray(todo), min(writers, len(todo)))]
        with ProcessPoolExecutor(len(parts), mp_context=mp.get_context("spawn")) as ex:
            list(ex.map(write_chunks, [paths] * len(parts), parts))
    elif todo:
        write_chunks(paths, todo)
    if todo:
        os.sync()  # dirty pages cannot be evicted: flush them before the first cold read
    return stores


def write_chunks(paths: list[str], chunks: list[int]) -> None:
    """Write the given chunks of every checkpoint store: row = centre of its cluster + checkpoint drift + noise."""
    stores = [FeatureStore.open(p) for p in paths]
    d = stores[0].meta.dim
    g = np.random.default_rng(SEED)
    centre = CENTRE * _unit(g.standard_normal((CLUSTERS, d), dtype=np.float32))  # (C, d)
    drift = DRIFT * _unit(g.standard_normal((len(stores), CLUSTERS, d), dtype=np.float32))  # (T, C, d)
    t0 = time.perf_counter()
    for i, c in enumerate(chunks):
        start, stop = stores[0].chunk_bounds(c)
        gc = np.random.default_rng([SEED, c])  # per chunk: any writer, any resume gives the same bytes
        cl = gc.integers(CLUSTERS, size=stop - start)  # (rows,) cluster of each row
        for t, st in enumerate(stores):
            x = gc.random((stop - start, d), dtype=np.float32)  # (rows, d); uniform: 3.6x faster than normal
            x -= 0.5
            x *= NOISE * np.sqrt(12 / d)  # unit variance per row, like the Gaussian noise of bench/pursuit.py
            x += centre[cl]
            x += drift[t, cl]
            if not st.is_chunk_done(c):
                st.write_chunk(c, _unit(x).astype(np.float16), np.ones(stop - start, dtype=bool))
        if i % 32 == 31:
            log(f"  wrote {i + 1}/{len(chunks)} chunks ({time.perf_counter() - t0:.0f} s)")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def chunk_files(stores: list[FeatureStore]) -> list[str]:
    """Every chunk file in the order a pass reads them: chunk by chunk, checkpoint by checkpoint."""
    return [st.chunk_file(c) for c in range(stores[0].n_chunks) for st in stores]


def evict(paths: list[str]) -> None:
    """Drop the files' pages from the page cache (clean, unmapped pages; no root needed)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_files(paths: list[str], buf: bytearray) -> int:
    """The plain sequential read the pass is compared with: each file in order, into one reused buffer."""
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while k := fh.readinto(buf):
                total += k
    return total


# --- memory ----------------------------------------------------------------------------------------------------------
def rss_kib() -> dict[str, int]:
    """Current RssAnon / RssFile / RssShmem of this process in KiB (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon", "RssFile", "RssShmem")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


class PeakRss:
    """Peaks of anonymous and file-backed RSS while the block runs, sampled every 10 ms on a thread."""

    def __enter__(self) -> PeakRss:
        self.base = rss_kib()
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            for key, value in rss_kib().items():
                self.peak[key] = max(self.peak[key], value)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for key, value in rss_kib().items():
            self.peak[key] = max(self.peak[key], value)

    def mib(self) -> dict[str, float]:
        p, b = self.peak, self.base
        return dict(
            peak_anon_MiB=p["RssAnon"] / 1024,
            anon_growth_MiB=(p["RssAnon"] - b["RssAnon"]) / 1024,
            peak_file_MiB=p["RssFile"] / 1024,
            peak_total_MiB=(p["RssAnon"] + p["RssFile"] + p["RssShmem"]) / 1024,
        )


# --- the measurement -------------------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, dict, object]:
    sync(device)
    with PeakRss() as mem:
        t = time.perf_counter()
        value = fn()
        sync(device)
        seconds = time.perf_counter() - t
    return seconds, mem.mib(), value


def gemv_ceiling(view: StoreTrajectories, b: np.ndarray, device: str) -> tuple[float, int]:
    """Best of 5 torch fp32 GEMVs over the first rows of the trajectories held on `device` (seconds, rows)."""
    rows = int(min(view.n_rows, max(1, GEMV_BYTES // (4 * view.dim))))
    A = torch.from_numpy(view.gather(np.arange(rows))).to(device)  # (rows, D) fp32
    x = torch.from_numpy(b.astype(np.float32)).to(device)
    best = float("inf")
    for _ in range(6):  # the first call is the burn-in
        sync(device)
        t = time.perf_counter()
        A @ x
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, rows


def target(view: StoreTrajectories, n: int) -> np.ndarray:
    """A target trajectory: the mean of 8 rows of the pool plus noise (GTP's b; the timing does not depend on it)."""
    g = np.random.default_rng(SEED + 1)
    b = view.gather(np.sort(g.choice(n, size=min(8, n), replace=False))).astype(np.float64).mean(axis=0)
    return b + 0.5 * np.linalg.norm(b) * g.standard_normal(b.size) / np.sqrt(b.size)


def measure(args: argparse.Namespace, root: str) -> dict:
    t0 = time.perf_counter()
    stores = synthetic_store(root, args.n, args.dims, args.checkpoints, args.chunk_rows, args.writers)
    write_s = time.perf_counter() - t0
    paths = chunk_files(stores)
    nbytes = sum(os.path.getsize(p) for p in paths)  # what a pass streams (the last chunk is padded on disk)
    avail = _meminfo_kib("MemAvailable") * 1024
    cache = args.cache if args.cache != "auto" else ("cold" if nbytes > avail / 2 else "warm")
    log(f"store {root}: {nbytes / 1e9:.2f} GB (write {write_s:.0f} s); cache {cache}")
    device = args.device
    view = StoreTrajectories(stores, LR, block_rows=args.block_rows, device=None if device == "cpu" else device)
    cpu_view = StoreTrajectories(stores, LR, block_rows=args.block_rows) if device != "cpu" else None
    k = max(1, int(K_FRAC * args.n))
    top = 2 * k + 1

    buf = bytearray(stores[0].meta.chunk_rows * args.dims * 2)
    if cache == "cold":
        evict(paths)
    first_s, first_mem, _ = timed(lambda: view.correlate(np.ones(view.dim)), device)  # burn-in; computes the norms
    if cpu_view is not None:
        timed(lambda: cpu_view.correlate(np.ones(view.dim)), "cpu")  # its own burn-in (norms)
    b = target(view, args.n)
    gemv_s, gemv_rows = gemv_ceiling(view, b, device)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # from here on: the passes' own device memory
    ops = {
        "read": lambda: read_files(paths, buf),
        "correlate": lambda: view.correlate(b),
        "scan": lambda: view.scan(b, top=top),
    }
    if cpu_view is not None:  # one CPU pass of each kind, in the same order, for the device's ratio
        ops["cpu_correlate"] = lambda: cpu_view.correlate(b)
        ops["cpu_scan"] = lambda: cpu_view.scan(b, top=top)
    if cache == "warm":
        read_files(paths, buf)
    times = {name: [] for name in ops}
    mems, values = {}, {}
    for rep in range(args.reps):
        for name, fn in ops.items():
            if name.startswith("cpu_") and rep > 0:
                continue
            if cache == "cold":
                evict(paths)
            seconds, mem, value = timed(fn, device)
            values[name] = getattr(value, "top", value)  # a scan's pool rows are dropped here, not kept in memory
            del value
            times[name].append(seconds)
            if name not in mems or mem["peak_anon_MiB"] > mems[name]["peak_anon_MiB"]:
                mems[name] = mem
            log(f"  rep {rep}: {name} {seconds:.2f} s ({nbytes / seconds / 1e9:.2f} GB/s)")
    med = {name: float(np.median(v)) for name, v in times.items()}

    out = dict(
        n=args.n,
        checkpoints=args.checkpoints,
        d_per_checkpoint=args.dims,
        trajectory_dim=view.dim,
        chunk_rows=stores[0].meta.chunk_rows,
        block_rows=args.block_rows,
        store_GB=nbytes / 1e9,
        mem_total_GB=_meminfo_kib("MemTotal") * 1024 / 1e9,
        mem_available_GB_at_start=avail / 1e9,
        cache=cache,
        store_write_s=write_s,
        first_pass_s=first_s,
        read_s=med["read"],
        read_GBps=nbytes / med["read"] / 1e9,
        correlate_s=med["correlate"],
        correlate_GBps=nbytes / med["correlate"] / 1e9,
        scan_s=med["scan"],
        scan_GBps=nbytes / med["scan"] / 1e9,
        scan_top=top,
        each_run_s={name: [round(x, 3) for x in v] for name, v in times.items()},
        correlate_vs_read=med["read"] / med["correlate"],
        scan_vs_read=med["read"] / med["scan"],
        inmem_fp32_gemv_rows=gemv_rows,
        inmem_fp32_gemv_s_scaled_to_n=gemv_s * args.n / gemv_rows,
        correlate_vs_inmem_fp32_gemv=gemv_s * args.n / gemv_rows / med["correlate"],
        memory_MiB={"first_pass": first_mem, **mems},
        norms_and_scores_MiB=(args.checkpoints + 1) * args.n * 4 / 2**20,  # cached 1/|row| (T, N), scores (N,)
        scan_pool_rows_MiB=top * view.dim * 4 / 2**20,
        gtp_estimate_s_5_passes=5 * med["scan"],
    )
    if device == "cuda":
        out["gpu_peak_allocated_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    if cpu_view is not None:
        out["cpu_correlate_s"], out["cpu_scan_s"] = med["cpu_correlate"], med["cpu_scan"]
        out[f"{device}_vs_cpu_correlate"] = med["cpu_correlate"] / med["correlate"]
        out[f"{device}_vs_cpu_scan"] = med["cpu_scan"] / med["scan"]
        fin = np.isfinite(values["cpu_correlate"])
        out["max_abs_score_diff_vs_cpu"] = float(np.abs(values["correlate"] - values["cpu_correlate"])[fin].max())
        out["scan_top_equal_to_cpu"] = bool(np.array_equal(values["scan"], values["cpu_scan"]))
        # rows whose scores differ by rounding only can trade places in the order; the set is what a pursuit keeps
        out["scan_top_same_rows_fraction"] = np.intersect1d(values["scan"], values["cpu_scan"]).size / top
    if args.gtp:
        out.update(run_gtp(view, b, k, paths if cache == "cold" else None, device))
    return out


def run_gtp(view: StoreTrajectories, b: np.ndarray, k: int, cold_paths: list[str] | None, device: str) -> dict:
    """One gtp run to k on the store (passes through the page cache as it is; cold: evicted before the start)."""
    from gtp_pipeline.core.selection.pursuit import PursuitConfig, gtp  # needs scipy; only here

    if cold_paths is not None:
        evict(cold_paths)
    seconds, mem, sel = timed(lambda: gtp(view, b, PursuitConfig(budget=k, seed=SEED)), device)
    return dict(
        gtp_k=k,
        gtp_wall_s=seconds,
        gtp_passes=sel.passes,
        gtp_rounds=sel.rounds,
        gtp_stop_reason=sel.stop_reason,
        gtp_fill=sel.fill,
        gtp_memory_MiB=mem,
    )


def _meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"N={QUICK_N:,} in a temp dir, under a minute")
    ap.add_argument("--device-size", action="store_true", help=f"N={DEVICE_N:,}: a GPU machine's short check")
    ap.add_argument("--n", type=int, default=None, help=f"pool rows (default {N:,}; --quick {QUICK_N:,})")
    ap.add_argument("--dims", type=int, default=D_CKPT, help="projected dims per checkpoint")
    ap.add_argument("--checkpoints", type=int, default=T)
    ap.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    ap.add_argument("--block-rows", type=int, default=512, help="StoreTrajectories block_rows (CPU conversion)")
    ap.add_argument("--store", default=None, help="store folder, kept and reused; default: a temp dir, deleted")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--cache", choices=("auto", "cold", "warm"), default="auto")
    ap.add_argument("--reps", type=int, default=REPS)
    ap.add_argument("--writers", type=int, default=WRITERS, help="processes writing the store")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--gtp", action="store_true", help="also run gtp once to k = 1%% on the store")
    args = ap.parse_args()
    args.n = args.n or (QUICK_N if args.quick else DEVICE_N if args.device_size else N)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    cpu = f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    result = dict(
        bench="pursuit_scale",
        mode="quick" if args.quick else "device_size" if args.device_size else "full",
        device=torch.cuda.get_device_name() if args.device == "cuda" else cpu,
        host=cpu,
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        loadavg_at_start=[round(x, 2) for x in os.getloadavg()],
    )
    if args.store:
        result.update(measure(args, args.store))
    else:
        with tempfile.TemporaryDirectory(prefix="bench_pursuit_scale_") as tmp:
            result.update(measure(args, tmp))
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(_rounded(result)))


def _rounded(v):
    if isinstance(v, float):
        return float(f"{v:.5g}")  # significant digits: a 3e-8 score difference must not print as 0
    if isinstance(v, dict):
        return {key: _rounded(x) for key, x in v.items()}
    return v


if __name__ == "__main__":
    main()
