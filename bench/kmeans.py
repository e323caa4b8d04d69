"""Benchmark ClusterClip's core: our spherical k-means against faiss-cpu and scikit-learn, and the sampler.

One run, same synthetic clustered unit-norm data (N x d, hierarchical topics -> subtopics -> rows, Zipf
sizes), same init centroids (K distinct random rows), same number of iterations for every method:
  ours bf16 / ours fp32    gtp_pipeline.core.clusterclip.kmeans.spherical_kmeans (identical labels by construction)
  faiss                    faiss.Kmeans(spherical=True), IndexFlatL2 assignment
  sklearn                  KMeans(algorithm="lloyd", n_init=1, init=<the same centroids>, tol=0)
s/iter = whole fit wall time / E-steps it ran (ours and sklearn: iters + 1, faiss: iters), best of
`reps` interleaved repetitions (other processes on the machine only ever add time); cpu_s_per_iter is
the same with the process's CPU time (all threads), a check that holds up when the machine is shared. Objective of each
method = mean over rows of max_k cos(x, c_k / |c_k|) with its centroids after `iters` M-steps. The
E-step rate is 2 N d K / (s/iter), against this machine's fp32 and bf16 matmul peaks measured here.
Then the sampler: draws/s of plan_samples (fast) and reference_plan on the k-means labels.

Run: python bench/kmeans.py            (full: N=100k, d=384, K=1000, a few minutes)
     python bench/kmeans.py --quick    (under a minute)
Prints one JSON line. Goal: ratio_bf16_vs_best_baseline <= 0.8 with equal objectives.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time

import numpy as np
import torch

from gtp_pipeline.core.clusterclip.kmeans import KMeansConfig, spherical_kmeans
from gtp_pipeline.core.clusterclip.sampler import SamplerConfig, plan_samples, reference_plan

# --- defaults (full mode); --quick overrides below ---
N = 100_000  # rows
D = 384  # all-MiniLM-L6-v2's dimension
K = 1000  # clusters
ITERS = 10  # M-steps per fit
REPS = 3  # timed repetitions, interleaved across methods
SEED = 0
CHUNK_ROWS = 8192
SAMPLER_R = 3  # clip threshold for the sampler timing (the whole stream is the clip phase: M = R N)
REFERENCE_DRAWS = 300_000  # the reference loop is slow: time it on a prefix
QUICK = dict(N=30_000, K=1000, ITERS=5, REPS=2, REFERENCE_DRAWS=60_000)


def synthetic(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) float32 unit rows: 100 topics x 20 subtopics, Zipf subtopic sizes, cos(row, subtopic) ~ 0.7."""
    g = np.random.default_rng(seed)
    topics = g.standard_normal((100, d))
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    sub = topics.repeat(20, 0) + 0.9 * g.standard_normal((2000, d)) / np.sqrt(d)  # (2000, d)
    sub /= np.linalg.norm(sub, axis=1, keepdims=True)
    w = g.permutation(1.0 / np.arange(1, 2001) ** 0.7)
    x = sub[g.choice(2000, n, p=w / w.sum())] + g.standard_normal((n, d)) / np.sqrt(d)  # (n, d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def mean_max_cos(x: torch.Tensor, centroids: np.ndarray) -> float:
    c = torch.nn.functional.normalize(torch.as_tensor(np.asarray(centroids, dtype=np.float32)), dim=1)
    return float(
        sum((x[s : s + CHUNK_ROWS] @ c.T).max(dim=1).values.double().sum() for s in range(0, len(x), CHUNK_ROWS))
    ) / len(x)


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n^3 matmul in `dtype` on this machine, now."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # burn-in
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def run_ours(x, c0, precision):
    """-> (E-steps run, centroids after ITERS M-steps, result)."""
    cfg = KMeansConfig(K=len(c0), max_iter=ITERS + 1, tol=0.0, precision=precision, chunk_rows=CHUNK_ROWS)
    res = spherical_kmeans(x, cfg, init_centroids=c0)
    return res.iterations, res.centroids, res


def run_faiss(x, c0):
    import faiss

    km = faiss.Kmeans(x.shape[1], len(c0), niter=ITERS, spherical=True, seed=SEED, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=10**9)  # fmt: skip
    km.train(x, init_centroids=c0)
    return ITERS, km.centroids, None


def run_sklearn(x, c0):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=len(c0), init=c0, n_init=1, max_iter=ITERS, tol=0.0, algorithm="lloyd", random_state=SEED)
    km.fit(x)
    assert km.n_iter_ == ITERS, f"sklearn stopped after {km.n_iter_} iterations"
    return ITERS + 1, km.cluster_centers_, None  # + its final E-step


def main() -> None:
    global N, K, ITERS, REPS, REFERENCE_DRAWS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    args = ap.parse_args()
    if args.quick:
        N, K, ITERS, REPS, REFERENCE_DRAWS = (QUICK[k] for k in ("N", "K", "ITERS", "REPS", "REFERENCE_DRAWS"))
    load_before = os.getloadavg()[0]
    x = synthetic(N, D, SEED)
    c0 = x[np.sort(np.random.default_rng(SEED + 1).choice(N, K, replace=False))].copy()  # (K, d) shared init
    methods = {
        "ours_bf16": lambda: run_ours(x, c0, "bf16"),
        "ours_fp32": lambda: run_ours(x, c0, "fp32"),
        "faiss": lambda: run_faiss(x, c0),
        "sklearn": lambda: run_sklearn(x, c0),
    }
    if importlib.util.find_spec("faiss") is None:  # faiss-cpu is a bench-only dependency
        del methods["faiss"]

    # burn-in: every code path once on a slice (thread pools, MKL/oneDNN kernels, the bf16 probe at this K)
    saved, ITERS = ITERS, 1
    for precision in ("bf16", "fp32"):
        run_ours(x[: 2 * CHUNK_ROWS], c0, precision)
    run_sklearn(x[: 2 * CHUNK_ROWS], c0)
    if "faiss" in methods:
        run_faiss(x[: 2 * CHUNK_ROWS], c0)
    ITERS = saved

    wall: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    cents: dict[str, np.ndarray] = {}
    ours = None
    for _ in range(REPS):  # interleaved, so slow phases of the machine hit every method alike
        for name, fn in methods.items():
            t, c_start = time.perf_counter(), time.process_time()
            esteps, cents[name], res = fn()
            wall[name].append((time.perf_counter() - t) / esteps)
            cpu[name].append((time.process_time() - c_start) / esteps)  # all threads of this process
            ours = res if name == "ours_bf16" else ours
    s_iter = {m: min(v) for m, v in wall.items()}
    cpu_iter = {m: min(v) for m, v in cpu.items()}
    xt = torch.from_numpy(x)
    objective = {m: mean_max_cos(xt, c) for m, c in cents.items()}
    best_baseline = min(s_iter[m] for m in ("faiss", "sklearn") if m in s_iter)
    best_cpu_baseline = min(cpu_iter[m] for m in ("faiss", "sklearn") if m in cpu_iter)
    flops = 2 * N * D * K
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}

    labels = ours.labels
    t = time.perf_counter()
    fast = plan_samples(labels, SAMPLER_R * N, SamplerConfig(R=SAMPLER_R, seed=SEED))
    fast_rate = SAMPLER_R * N / (time.perf_counter() - t)
    t = time.perf_counter()
    ref = reference_plan(labels, REFERENCE_DRAWS, SamplerConfig(R=SAMPLER_R, seed=SEED))
    ref_rate = REFERENCE_DRAWS / (time.perf_counter() - t)
    assert np.array_equal(ref.stream, fast.stream[:REFERENCE_DRAWS]), "fast and reference samplers disagree"
    t = time.perf_counter()
    plan_samples(labels, 10 * N, SamplerConfig(method="uniform", seed=SEED))
    uniform_rate = 10 * N / (time.perf_counter() - t)

    out = {
        "bench": "kmeans",
        "mode": "quick" if args.quick else "full",
        "device": f"{_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "versions": {"torch": torch.__version__, "numpy": np.__version__, **_baseline_versions()},
        "N": N, "d": D, "K": K, "iters": ITERS, "reps": REPS,
        "s_per_iter": {m: round(v, 4) for m, v in s_iter.items()},
        "ratio_bf16_vs_best_baseline": round(s_iter["ours_bf16"] / best_baseline, 3),
        "ratio_fp32_vs_best_baseline": round(s_iter["ours_fp32"] / best_baseline, 3),
        "cpu_s_per_iter": {m: round(v, 4) for m, v in cpu_iter.items()},
        "cpu_ratio_bf16_vs_best_baseline": round(cpu_iter["ours_bf16"] / best_cpu_baseline, 3),
        "goal_ratio": 0.8,
        "objective_mean_cos": {m: round(v, 6) for m, v in objective.items()},
        "objective_max_rel_diff": round(max(objective.values()) / min(objective.values()) - 1, 6),
        "bf16_recheck_fraction": round(ours.recheck_fraction, 4),
        "estep_gflops": {m: round(flops / v / 1e9, 1) for m, v in s_iter.items()},
        "peak_gflops": {k: round(v, 1) for k, v in peak.items()},
        "ours_bf16_frac_of_fp32_peak": round(flops / s_iter["ours_bf16"] / 1e9 / peak["fp32"], 3),
        "ours_bf16_frac_of_bf16_peak": round(flops / s_iter["ours_bf16"] / 1e9 / peak["bf16"], 3),
        "sampler": {
            "R": SAMPLER_R, "draws": SAMPLER_R * N,
            "fast_draws_per_s": round(fast_rate), "reference_draws_per_s": round(ref_rate),
            "speedup": round(fast_rate / ref_rate, 1), "uniform_fast_draws_per_s": round(uniform_rate),
            "fallback_step": fast.fallback_step,
        },
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }  # fmt: skip
    print(json.dumps(out))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        flags = open("/proc/cpuinfo").read()
        return (names[0] if names else platform.machine()) + (" (avx512_bf16)" if "avx512_bf16" in flags else "")
    except OSError:
        return platform.machine()


def _baseline_versions() -> dict[str, str]:
    import sklearn

    v = {"sklearn": sklearn.__version__}
    try:
        import faiss

        v["faiss"] = faiss.__version__
    except ImportError:
        v["faiss"] = "not installed"
    return v


if __name__ == "__main__":
    main()
