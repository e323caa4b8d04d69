"""Where spherical k-means starts: random rows (the ClusterClip code's choice) or greedy k-means++ with D = 1 - cos."""

from __future__ import annotations

import math

import numpy as np
import torch

from gtp_pipeline.core.clusterclip.kmeans_blocks import Source


def starting_centroids(
    src: Source, init: str, K: int, sample_per_cluster: int, rng: np.random.Generator
) -> torch.Tensor:
    """K starting centroids: K distinct random rows, or k-means++ on a sample of sample_per_cluster x K rows."""
    if init == "random":  # the official code: K distinct random rows
        return src.rows(np.sort(rng.choice(src.n, K, replace=False))).clone()
    m = min(src.n, sample_per_cluster * K)
    sample = np.arange(src.n) if m == src.n else np.sort(rng.choice(src.n, m, replace=False))
    xs = src.rows(sample)  # (m, d)
    return xs[kmeanspp(xs, K, rng)].clone()


def kmeanspp(xs: torch.Tensor, K: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ (Arthur & Vassilvitskii; sklearn's 2 + log K local trials) with D = 1 - cos."""
    m = xs.shape[0]
    trials = 2 + int(math.log(K))
    chosen = [int(rng.integers(m))]
    closest = (1 - xs @ xs[chosen[0]]).clamp_min_(0).double()  # (m,) distance to the nearest chosen row
    pot = float(closest.sum())
    for _ in range(1, K):
        if pot <= 0:  # every row coincides with a chosen one: take any unchosen row
            rest = np.setdiff1d(np.arange(m), chosen)
            chosen.append(int(rest[0]))
            continue
        cum = torch.cumsum(closest, 0).numpy()
        cand = np.minimum(np.searchsorted(cum, rng.random(trials) * pot), m - 1)  # (trials,)
        dist = (1 - xs[torch.from_numpy(cand)] @ xs.t()).clamp_min_(0).double()  # (trials, m)
        dist = torch.minimum(dist, closest[None, :])
        pots = dist.sum(dim=1)  # (trials,)
        best = int(torch.argmin(pots))
        chosen.append(int(cand[best]))
        closest, pot = dist[best], float(pots[best])
    return np.asarray(chosen, dtype=np.int64)
