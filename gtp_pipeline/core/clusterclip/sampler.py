"""ClusterClip sampling plans: which example each of M training draws uses.

What it computes: a stream of M example indices (0..N-1) from the cluster labels of the pool
(ClusterClip, Shao et al., arXiv 2402.14526; docs/ALGORITHMS.md §3.3 and §4 items 7-9; the official
code github.com/choosewhatulike/cluster-clip has no sampler, this follows the reconstruction):

* "clusterclip": each draw picks a cluster uniformly among the ACTIVE clusters and takes the next
  member of a shuffled cycle inside it (a fresh shuffle each pass). A cluster retires once every
  member was used R times (R full passes; with cycling, "per-sample cap R" is "cluster capped at
  R n_k draws", §4 item 7). If every cluster retires before M draws, the rest of the stream falls back
  to random shuffled epochs over the whole pool, and `fallback_step` records where (§4 item 8).
* "uniform" (the paper's cluster-balanced baseline): the same without the clip; small clusters repeat.
* "random" (the paper's baseline): shuffled epochs over the whole pool.

Uniform over the active clusters is realized by rejection: the choice draws from a list `pool` of
clusters (all non-empty ones at first) and redraws when it hits a retired one; once more than half of
`pool` has retired, `pool` is compacted to the active clusters, so at least half of the draws are
accepted. Accepted draws are exactly uniform over the active clusters, as in the §3.3 pseudo-code.

Randomness: everything derives from `seed` through numpy SeedSequence spawn keys, one stream per role,
so the order in which events happen never changes what another role draws:
  (0,)   cluster choice: one double u per pick, cluster = pool[floor(u |pool|)];
  (1, k) cluster k's shuffles: pass p's order = members_k[permutation(n_k)], the p-th call (none if n_k = 1);
  (2,)   epochs of "random" and of the fallback: numpy `permutation(N)` per epoch.

Implementations: `reference_plan` (the plain per-draw loop of docs/ALGORITHMS.md §3.3, for tests) and
`plan_samples` (vectorized, identical stream). The fast one handles a whole block of picks at once:
whether a pick of cluster k is accepted depends only on how many picks of k came before it (its rank
within k, from one stable sort) and k's remaining budget, never on the other clusters, so a block runs
straight through retirements; it is cut only where `pool` is compacted (about log2 K times in all).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gtp_pipeline.core.config.profiles import budget_count, budget_label

log = logging.getLogger(__name__)

_NO_CAP = np.iinfo(np.int64).max // 4  # "uniform": a cap no cluster reaches


class SamplerInputError(ValueError):
    """The labels, budget or config cannot give a plan (the message names the numbers)."""


@dataclass(frozen=True)
class SamplerConfig:
    """How to turn cluster labels into a stream of draws."""

    method: Literal["clusterclip", "uniform", "random"] = "clusterclip"  # the paper's method and its baselines
    R: int = 2  # clip threshold: max uses of an example before fallback; Figure 1 shows R=2 (§3.4, sweep 2-10)
    seed: int = 0  # all randomness derives from it: same seed, same plan

    def __post_init__(self) -> None:
        if self.method not in ("clusterclip", "uniform", "random"):
            raise SamplerInputError(f"method must be clusterclip, uniform or random, got {self.method!r}")
        if self.R < 1:
            raise SamplerInputError(f"R (repetition clip) must be >= 1, got R={self.R}")


@dataclass(frozen=True)
class SamplingPlan:
    """A stream of M draws and what it did to each example and cluster."""

    method: str
    R: int | None  # None unless method == "clusterclip"
    seed: int
    stream: np.ndarray  # (M,) int64 example index of each draw, in order
    use_counts: np.ndarray  # (N,) int64 times each example is drawn
    cluster_draws: np.ndarray  # (K,) int64 draws whose example is in cluster k (fallback included)
    fallback_step: int | None  # first draw of the random fallback, None if the clip phase covered M
    retired_at: np.ndarray  # (K,) int64 draw index that retired cluster k, -1 if never (or empty cluster)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _check(labels: np.ndarray, M: int, n_clusters: int | None) -> tuple[np.ndarray, int]:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise SamplerInputError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise SamplerInputError(f"labels must be integers, got dtype {labels.dtype}")
    if M < 0:
        raise SamplerInputError(f"M (number of draws) must be >= 0, got M={M}")
    K = int(labels.max()) + 1 if n_clusters is None else n_clusters
    if K < 1 or labels.min() < 0 or labels.max() >= K:
        raise SamplerInputError(
            f"labels must lie in 0..{K - 1} (n_clusters={K}), found min {labels.min()} and max {labels.max()}"
        )
    return labels.astype(np.int64), K


def _plan(config: SamplerConfig, labels, K, stream, fallback_step, retired_at) -> SamplingPlan:
    return SamplingPlan(
        method=config.method,
        R=config.R if config.method == "clusterclip" else None,
        seed=config.seed,
        stream=stream,
        use_counts=np.bincount(stream, minlength=labels.size),
        cluster_draws=np.bincount(labels[stream], minlength=K),
        fallback_step=fallback_step,
        retired_at=retired_at,
    )


def _epochs(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """(m,) the first m indices of shuffled epochs over range(n)."""
    parts, have = [], 0
    while have < m:
        parts.append(rng.permutation(n))
        have += n
    return np.concatenate(parts)[:m] if parts else np.zeros(0, dtype=np.int64)


# --- reference: the per-draw loop of docs/ALGORITHMS.md §3.3 -----------------------------------------------


def reference_plan(labels: np.ndarray, M: int, config: SamplerConfig, n_clusters: int | None = None) -> SamplingPlan:
    """Plain Python loop, one pick at a time; the oracle the fast plan is tested against."""
    labels, K = _check(labels, M, n_clusters)
    retired_at = np.full(K, -1, dtype=np.int64)
    if config.method == "random":
        return _plan(config, labels, K, _epochs(labels.size, M, _rng(config.seed, 2)), None, retired_at)
    clusters = [np.flatnonzero(labels == k) for k in range(K)]  # members, ascending
    gens: dict[int, np.random.Generator] = {}

    def shuffle(k: int) -> np.ndarray:
        if clusters[k].size == 1:
            return clusters[k]
        if k not in gens:
            gens[k] = _rng(config.seed, 1, k)
        return clusters[k][gens[k].permutation(clusters[k].size)]

    clip = config.method == "clusterclip"
    pool = [k for k in range(K) if clusters[k].size > 0]  # active clusters, plus some retired since compaction
    retired = [False] * K
    n_active, n_retired_in_pool = len(pool), 0
    perm = {k: shuffle(k) for k in pool}
    pos = dict.fromkeys(pool, 0)
    passes = dict.fromkeys(pool, 0)
    choice = _rng(config.seed, 0)
    stream: list[int] = []
    fallback_step = None
    while len(stream) < M:
        if n_active == 0:  # every example used R times: random epochs for the rest (§4 item 8)
            fallback_step = len(stream)
            break
        k = pool[min(int(choice.random() * len(pool)), len(pool) - 1)]
        if retired[k]:  # rejection: what is accepted is uniform over the ACTIVE clusters
            continue
        stream.append(int(perm[k][pos[k]]))
        pos[k] += 1
        if pos[k] == perm[k].size:  # finished one pass over cluster k
            passes[k] += 1
            pos[k] = 0
            if clip and passes[k] >= config.R:  # every member used R times: clip the cluster
                retired[k] = True
                retired_at[k] = len(stream) - 1
                n_active -= 1
                n_retired_in_pool += 1
                if 2 * n_retired_in_pool > len(pool):  # keep the acceptance rate above 1/2
                    pool = [c for c in pool if not retired[c]]
                    n_retired_in_pool = 0
            else:
                perm[k] = shuffle(k)
    out = np.asarray(stream, dtype=np.int64)
    if fallback_step is not None:
        out = np.concatenate([out, _epochs(labels.size, M - fallback_step, _rng(config.seed, 2))])
    return _plan(config, labels, K, out, fallback_step, retired_at)


# --- fast: blocks of draws, cut only at compactions -------------------------------------------------------


class _Uniforms:
    """The choice stream's doubles, handed out in blocks; values not consumed are handed out again."""

    def __init__(self, rng: np.random.Generator, chunk: int = 1 << 20):
        self.rng, self.chunk = rng, chunk
        self.buf = np.zeros(0)
        self.pos = 0

    def peek(self, n: int) -> np.ndarray:
        if self.buf.size - self.pos < n:
            self.buf = np.concatenate([self.buf[self.pos :], self.rng.random(max(n, self.chunk))])
            self.pos = 0
        return self.buf[self.pos : self.pos + n]

    def consume(self, n: int) -> None:
        self.pos += n


def plan_samples(labels: np.ndarray, M: int, config: SamplerConfig, n_clusters: int | None = None) -> SamplingPlan:
    """The plan for M draws from the labelled pool: the same stream as `reference_plan`, several times faster."""
    labels, K = _check(labels, M, n_clusters)
    N = labels.size
    retired_at = np.full(K, -1, dtype=np.int64)
    if config.method == "random":
        return _plan(config, labels, K, _epochs(N, M, _rng(config.seed, 2)), None, retired_at)

    members = np.argsort(labels, kind="stable")  # (N,) example ids grouped by cluster, ascending within
    n = np.bincount(labels, minlength=K)  # (K,) cluster sizes
    off = np.concatenate([[0], np.cumsum(n)[:-1]])  # (K,) start of each cluster in `members`
    cap = n * config.R if config.method == "clusterclip" else np.full(K, _NO_CAP)  # (K,) draws before retiring
    drawn = np.zeros(K, dtype=np.int64)  # (K,) accepted draws so far = position in the cluster's cycle
    cur = members.copy()  # (N,) the current pass's order of each cluster
    cur_pass = np.where(n == 1, _NO_CAP, -1)  # (K,) pass held in `cur`; singletons need no shuffle
    gens: dict[int, np.random.Generator] = {}
    pool = np.flatnonzero(n > 0)  # (L,) like the reference's list
    n_active, n_retired_in_pool = pool.size, 0
    uniforms = _Uniforms(_rng(config.seed, 0))
    stream = np.empty(M, dtype=np.int64)
    step = 0
    while step < M and n_active > 0:
        L = pool.size
        B = min(2 * (M - step) + 64, 1 << 20)  # acceptance >= 1/2, so this usually finishes the budget
        j = np.minimum((uniforms.peek(B) * L).astype(np.int64), L - 1)  # (B,) index into `pool`
        order = np.argsort(j.astype(np.uint16) if L <= 1 << 16 else j, kind="stable")  # uint16: radix sort
        cnt = np.bincount(j, minlength=L)  # (L,)
        rank = np.empty(B, dtype=np.int64)
        rank[order] = np.arange(B) - np.repeat(np.cumsum(cnt) - cnt, cnt)  # (B,) earlier picks of the same cluster
        k = pool[j]  # (B,) cluster of each pick
        g = drawn[k] + rank  # (B,) position in the cluster's cycle, if accepted
        # A pick is accepted iff its cluster has not retired yet; a cluster's own picks are accepted up to
        # its cap, so acceptance needs no knowledge of the other clusters: the block runs past retirements.
        acc = g < cap[k]
        n_acc = np.cumsum(acc)  # (B,)
        used = B
        if n_acc[-1] >= M - step:  # the budget ends inside the block
            used = int(np.searchsorted(n_acc, M - step)) + 1
        events = np.flatnonzero(g[:used] == cap[k[:used]] - 1)  # picks that complete an R-th pass
        need = L // 2 + 1 - n_retired_in_pool  # the retirement after which the reference compacts the pool
        compact = events.size >= need
        if compact:
            used = int(events[need - 1]) + 1
            events = events[:need]
        uniforms.consume(used)
        keep = np.flatnonzero(acc[:used])  # (a,) accepted picks, in order
        ka_all, ga = k[keep], g[keep]

        cnt_k = np.bincount(ka_all, minlength=K)
        ka = np.flatnonzero(cnt_k)  # clusters drawn in this block
        last_pass = (drawn[ka] + cnt_k[ka] - 1) // n[ka]
        grow = last_pass > cur_pass[ka]  # clusters whose draws reach passes not shuffled yet
        ext_base = np.zeros(K, dtype=np.int64)  # start of cluster k's new shuffles in `ext`
        ext_parts, ext_len = [], 0
        for kk, lp in zip(ka[grow].tolist(), last_pass[grow].tolist(), strict=True):
            rows = lp - int(cur_pass[kk])
            if kk not in gens:
                gens[kk] = _rng(config.seed, 1, kk)
            # `permuted` row by row = `rows` successive permutation(n_k) calls, as in the reference
            shuffles = members[off[kk] + gens[kk].permuted(np.tile(np.arange(n[kk]), (rows, 1)), axis=1)]
            ext_base[kk] = ext_len
            ext_parts.append(shuffles.ravel())
            ext_len += shuffles.size
        ext = np.concatenate(ext_parts) if ext_parts else np.zeros(1, dtype=np.int64)

        nk = n[ka_all]
        p = ga // nk  # pass of each accepted draw
        q = ga - p * nk  # position inside that pass
        in_cur = p <= cur_pass[ka_all]  # (cur_pass is "infinite" for singletons)
        from_cur = cur[off[ka_all] + np.where(in_cur, q, 0)]
        from_ext = ext[np.where(in_cur, 0, ext_base[ka_all] + (p - cur_pass[ka_all] - 1) * nk + q)]
        stream[step : step + keep.size] = np.where(in_cur, from_cur, from_ext)
        for kk, lp in zip(ka[grow].tolist(), last_pass[grow].tolist(), strict=True):
            nk_ = int(n[kk])
            last = ext_base[kk] + (lp - int(cur_pass[kk]) - 1) * nk_
            cur[off[kk] : off[kk] + nk_] = ext[last : last + nk_]
            cur_pass[kk] = lp
        drawn += cnt_k
        if events.size:  # stream index of each retiring draw = accepted picks before it
            retired_at[k[events]] = step + n_acc[events] - 1
            n_active -= events.size
            n_retired_in_pool += events.size
        step += keep.size
        if compact:
            pool = pool[drawn[pool] < cap[pool]]
            n_retired_in_pool = 0
    fallback_step = None
    if step < M:  # every cluster retired (only possible with the clip)
        fallback_step = step
        stream[step:] = _epochs(N, M - step, _rng(config.seed, 2))
        log.info("ClusterClip: all %d clusters clipped after %d of %d draws; random epochs for the rest", K, step, M)
    return _plan(config, labels, K, stream, fallback_step, retired_at)


# --- the plans of a run: every method at every budget -----------------------------------------------------

PLAN_METHODS = ("clusterclip", "uniform", "random")


def equal_draws(budget: float, n_pool: int, train_epochs: int) -> int:
    """Draws of a plan at a budget: as many as a selection's fine-tune makes, so the methods compare at equal cost."""
    return train_epochs * budget_count(budget, n_pool)


@dataclass(frozen=True)
class BudgetPlans:
    """Every method's plan at every budget, as one table, with what each plan did."""

    table: Any  # polars.DataFrame: method, budget (label), step, example_id; one row per draw
    summary: list[dict[str, Any]]  # per plan: method, budget, draws, distinct_examples, max_repetitions, ...
    fallbacks: list[str]  # one line per plan whose clusters all retired before its last draw
    longest: SamplingPlan  # the longest ClusterClip plan (the last one among equals)
    cluster_order: np.ndarray  # (K,) clusters, largest share of the pool first
    share_gap: np.ndarray  # (K,) in cluster_order: the longest plan's share of draws minus the pool's share


def plan_budgets(
    labels: np.ndarray, example_ids: np.ndarray, budgets: Sequence[float], train_epochs: int, R: int, seed: int
) -> BudgetPlans:
    """The ClusterClip, uniform and random plans at each budget, each with `equal_draws` draws from the pool."""
    import polars as pl

    n_clusters = int(labels.max()) + 1
    frames, summary, fallbacks, longest = [], [], [], None
    for budget in budgets:
        M, label = equal_draws(budget, len(labels), train_epochs), budget_label(budget)
        for method in PLAN_METHODS:
            start = time.perf_counter()
            plan = plan_samples(labels, M, SamplerConfig(method=method, R=R, seed=seed), n_clusters=n_clusters)
            steps = {"step": np.arange(M), "example_id": example_ids[plan.stream]}
            frames.append(pl.DataFrame({"method": method, "budget": label, **steps}))
            summary.append(
                {
                    "method": method,
                    "budget": label,
                    "draws": M,
                    "distinct_examples": int((plan.use_counts > 0).sum()),
                    "max_repetitions": int(plan.use_counts.max()),
                    "fallback_step": "-" if plan.fallback_step is None else plan.fallback_step,
                    "seconds": round(time.perf_counter() - start, 4),
                }
            )
            if plan.fallback_step is not None:
                fallbacks.append(
                    f"{method} @ {label}: every cluster retired at draw {plan.fallback_step} of {M}; "
                    "random fallback after that"
                )
            if method == "clusterclip" and (longest is None or M >= longest.stream.size):
                longest = plan
    if longest is None:
        raise SamplerInputError("no budgets to plan")
    pool_share = np.bincount(labels, minlength=n_clusters) / len(labels)
    order = np.argsort(-pool_share)
    gap = (longest.cluster_draws / longest.cluster_draws.sum() - pool_share)[order]
    return BudgetPlans(pl.concat(frames), summary, fallbacks, longest, order, gap)
