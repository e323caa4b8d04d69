"""GTP and its baselines against independent oracles: scipy's NNLS, planted sparse solutions, LESS top-1, OMP."""

import numpy as np
import pytest
from scipy.optimize import nnls as scipy_nnls

from gtp_pipeline.core.features.sharded_trajectories import ShardedTrajectories
from gtp_pipeline.core.features.store_trajectories import StoreTrajectories
from gtp_pipeline.core.features.trajectory import DenseTrajectories
from gtp_pipeline.core.selection.nnls import CholeskySupport, NNLSError, nnls_gram
from gtp_pipeline.core.selection.omp_baselines import cholesky_omp, gradmatch_omp
from gtp_pipeline.core.selection.pursuit import PursuitConfig, gtp
from gtp_pipeline.core.selection.selection_baselines import evaluate_selection, less_topk, random_k
from gtp_pipeline.core.storage.feature_store import FeatureStore
from gtp_pipeline.core.storage.store_records import StoreMeta

LR = (1.6877e-05, 1.2859e-05, 7.7030e-06)


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clustered(n=600, d=32, T=3, clusters=12, seed=0):
    """T per-checkpoint (n, d) fp16 blocks of clustered rows, like gradients of similar examples."""
    g = np.random.default_rng(seed)
    centre = g.standard_normal((clusters, d))
    label = g.integers(clusters, size=n)
    return [unit(centre[label] + 1.2 * g.standard_normal((n, d))).astype(np.float16) for _ in range(T)]


def write_stores(root, blocks, valid=None, chunk_rows=64):
    n, d = blocks[0].shape
    valid = np.ones(n, dtype=bool) if valid is None else valid
    stores = []
    for t, x in enumerate(blocks):
        meta = StoreMeta("candidate_features", n, d, chunk_rows, identity={"checkpoint_id": f"ckpt{t}"})
        st = FeatureStore.create_or_open(root / f"cand{t}", meta, [f"ex{i}" for i in range(n)])
        for c in range(st.n_chunks):
            a, b = st.chunk_bounds(c)
            st.write_chunk(c, np.where(valid[a:b, None], x[a:b], 0), valid[a:b])
        stores.append(st)
    return stores


def target_of(view, rows, noise=0.3, seed=1):
    g = np.random.default_rng(seed)
    b = view.gather(np.asarray(rows)).astype(np.float64).mean(axis=0)
    return b + noise * np.linalg.norm(b) * g.standard_normal(b.size) / np.sqrt(b.size)


def true_residual(view, sel, b):
    return float(np.linalg.norm(b - sel.weights @ view.gather(sel.indices).astype(np.float64)))


# --- the non-negative re-fit --------------------------------------------------------------------------------------
@pytest.mark.parametrize("m, n", [(40, 10), (60, 45), (25, 40)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refit_equals_scipy_nnls(m, n, seed):
    g = np.random.default_rng(seed)
    A = g.standard_normal((m, n))
    b = g.standard_normal(m)
    w = nnls_gram(A.T @ A, A.T @ b)
    w_ref, res_ref = scipy_nnls(A, b)
    assert (w >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(A @ w - b), res_ref, rtol=1e-7, atol=1e-9)
    if m >= n:  # full column rank: the minimizer is unique
        np.testing.assert_allclose(w, w_ref, atol=1e-7)
    np.testing.assert_allclose(nnls_gram(A.T @ A, A.T @ b, w0=g.random(n)), w, atol=1e-7)  # warm start, same answer


def test_incremental_support_weights_are_exact_nnls_after_every_add():
    drops = 0
    for seed in range(20):
        g = np.random.default_rng(seed)
        m = g.standard_normal(8)
        A = unit(m + np.linalg.norm(m) * g.standard_normal((40, 8)) / np.sqrt(8))  # (40, 8) atoms around m
        b = g.standard_normal(8) + m
        sup = CholeskySupport(8)
        for _ in range(12):
            r = sup.residual(b)
            c = A @ r
            c[sup.indices] = -np.inf
            j = int(np.argmax(c))
            if c[j] <= 1e-9:
                break
            S, A64 = sup.indices, A.astype(np.float64)
            sup.add(j, A[j], A64[S] @ A64[j], float(A64[j] @ A64[j]), float(A64[j] @ b))
            drops += int(sup.last_dropped.size > 0)
            AS = A[sup.indices].astype(np.float64)
            np.testing.assert_allclose(sup.weights, scipy_nnls(AS.T, b)[0], atol=1e-6)
            assert (sup.weights > 0).all()
    assert drops > 0  # the negative-weight path was exercised


def test_support_removals_keep_factor_gram_weights_and_slots_exact():
    """Single removals (first, last, one with more trailing rows than a downdate block), a multiple removal, adds
    into freed slots, and a restore: the factor still factors the Gram of the support (independently computed), the
    packed rows equal the dense ones, the weights are scipy's NNLS and the residual is b - A_S w."""
    g = np.random.default_rng(0)
    D, n = 256, 150
    A = unit(g.standard_normal((n + 30, D)))
    A64 = A.astype(np.float64)
    b = (g.random(n) + 0.5) @ A64[:n]  # a positive combination of the first n atoms
    sup = CholeskySupport(D)

    def add(j):
        S = sup.indices
        return sup.add(j, A[j], A64[S] @ A64[j], float(A64[j] @ A64[j]), float(A64[j] @ b))

    def check():
        S, s = sup.indices, sup.s
        L = sup.L[:s, :s]
        np.testing.assert_allclose(L @ L.T, A64[S] @ A64[S].T, atol=1e-9)
        np.testing.assert_allclose(sup.gram(), A64[S] @ A64[S].T, atol=1e-12)
        packed = np.concatenate([L[i, : i + 1] for i in range(s)])
        np.testing.assert_array_equal(sup.Lp[: packed.size], packed)
        np.testing.assert_allclose(sup.weights, scipy_nnls(A64[S].T, b)[0], atol=1e-6)
        np.testing.assert_allclose(sup.residual(b), b - sup.weights @ A64[S], atol=1e-4)

    for j in range(n):
        add(j)
    assert sup.s > 100  # more than a downdate block (64 rows) behind position 20
    check()
    for pos in ([0], [-1], [20], [5, 90, 91]):  # -1: the last position
        pos = [p % sup.s for p in pos]
        before = sup.indices
        sup.remove(np.array(pos))
        assert not np.isin(before[pos], sup.indices).any()
        check()
    snap, hi = sup.state(), sup.hi
    for j in range(n, n + 30):
        add(j)
        check()
    assert sup.hi <= max(hi, sup.s + len(sup.free))  # freed slots were reused before new ones
    sup.restore(snap)
    check()


# --- GTP against its oracles ---------------------------------------------------------------------------------------
def test_gtp_with_k1_picks_less_top1():
    view = DenseTrajectories.from_blocks(clustered(seed=3), LR)
    b = target_of(view, [5, 17, 99])
    assert (
        gtp(view, b, PursuitConfig(budget=1)).indices.tolist()
        == less_topk(view, b, PursuitConfig(budget=1)).indices.tolist()
    )


def test_ten_identical_copies_gtp_picks_at_most_one_topk_picks_all_ten():
    blocks = clustered(n=300, seed=4)
    copies = np.arange(100, 110)
    for x in blocks:
        x[copies] = x[7]  # ten exact duplicates of row 7 (eleven rows with one trajectory)
    view = DenseTrajectories.from_blocks(blocks, LR)
    b = target_of(view, [7], noise=0.4)
    cfg = PursuitConfig(budget=11)
    picked = np.isin(gtp(view, b, cfg).indices, np.append(copies, 7)).sum()
    assert picked <= 1
    assert np.isin(less_topk(view, b, cfg).indices, np.append(copies, 7)).sum() == 11


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_nonnegative_sparse_combination_is_recovered_exactly(seed):
    g = np.random.default_rng(seed)
    A = unit(g.standard_normal((400, 128)))
    support = g.choice(400, size=8, replace=False)
    w_star = g.uniform(0.5, 1.5, size=8)
    b = w_star @ A[support].astype(np.float64)
    view = DenseTrajectories(A)
    for fit in (gtp, cholesky_omp):
        sel = fit(view, b, PursuitConfig(budget=8))
        order = np.argsort(sel.indices)
        np.testing.assert_array_equal(sel.indices[order], np.sort(support))
        np.testing.assert_allclose(sel.weights[order], w_star[np.argsort(support)], atol=1e-4)
        assert sel.stop_reason == "tolerance" and sel.relative_residual < 1e-4
    sel = gtp(view, b, PursuitConfig(budget=12))  # budget beyond the exact fit: the rest is zero-weight fill
    assert sel.fill == 4 and set(sel.indices[sel.weights > 0]) == set(support) and (sel.weights[-4:] == 0).all()


def test_residual_sequence_never_increases_and_is_the_true_residual():
    view = DenseTrajectories.from_blocks(clustered(n=800, seed=5), LR)
    b = target_of(view, [1, 2, 3, 50])
    sel = gtp(view, b, PursuitConfig(budget=60, atoms_per_round=8, swap_rounds=3))
    assert sel.rounds > 5 and (np.diff(sel.residuals) <= 1e-12).all()
    assert sel.residual == pytest.approx(true_residual(view, sel, b), rel=1e-5)
    assert sel.indices.size == 60 and np.unique(sel.indices).size == 60 and (sel.weights >= 0).all()


def test_gtp_ends_within_5_percent_of_omp_in_far_fewer_passes():
    view = DenseTrajectories.from_blocks(clustered(n=3000, d=48, clusters=30, seed=6), LR)
    b = target_of(view, [10, 20, 30, 40, 50])
    cfg = PursuitConfig(budget=80)
    fast, omp, gm = gtp(view, b, cfg), cholesky_omp(view, b, cfg), gradmatch_omp(view, b, cfg)
    assert fast.residual <= 1.05 * omp.residual
    assert fast.passes <= 10 and omp.passes >= 80 and gm.passes == 80
    assert omp.residual == pytest.approx(true_residual(view, omp, b), rel=1e-5)
    assert evaluate_selection(view, fast.indices, b)[1] == pytest.approx(fast.residual, rel=1e-4)


def near_duplicate_pool(n=1500, d=64, pairs=150, seed=11):
    """Unit rows, the first `pairs` of them each with a near-copy at n + i (cosine about 0.99)."""
    g = np.random.default_rng(seed)
    A = unit(g.standard_normal((n, d)) + 0.8)  # a shared direction, as LESS-style features have
    twins = unit(A[:pairs] + 0.02 * g.standard_normal((pairs, d)))
    return np.vstack([A, twins])


def brute_force_fill(A, score, chosen, n, max_cosine):
    """The fill by definition: rows by descending score, skipping any within max_cosine of a kept row."""
    kept, out = list(chosen), []
    for i in np.argsort(-score, kind="stable"):
        if i in chosen:
            continue
        if kept and (A[kept] @ A[i]).max() >= max_cosine:
            continue
        kept.append(i)
        out.append(i)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("fill", ["residual", "target"])
def test_fill_is_ranked_as_configured_and_holds_no_near_duplicates(fill):
    A = near_duplicate_pool()
    view = DenseTrajectories(A)
    b = A[[3, 40]].astype(np.float64).sum(axis=0) + A[:150].astype(np.float64).mean(axis=0)  # the twins rank high
    sel = gtp(view, b, PursuitConfig(budget=300, fill=fill))
    fitted = sel.indices[: sel.indices.size - sel.fill]
    assert 0 < sel.fill < 300 and sel.stop_reason in ("no_progress", "tolerance")
    residual = b - A[fitted].astype(np.float64).T @ sel.weights[: fitted.size]
    score = A.astype(np.float64) @ (b if fill == "target" else residual)
    want = brute_force_fill(A, score, fitted.tolist(), sel.fill, 0.95)
    got = sel.indices[fitted.size :]
    # residual scores are all <= 0 and many nearly tie: the same scores in the same order, up to float32 rounding
    np.testing.assert_allclose(score[got], score[want], atol=1e-5)
    assert len(set(got.tolist()) & set(int(i) for i in want)) > 0.9 * len(want)
    assert sel.info["fill_ranked_by"] == fill
    cos = A[sel.indices] @ A[sel.indices].T
    assert (cos[np.triu_indices(300, 1)] < 0.95).all() and sel.info["fill_near_duplicates"] == 0
    plain = gtp(view, b, PursuitConfig(budget=300, fill_max_cosine=1.0))
    cos_plain = A[plain.indices] @ A[plain.indices].T
    assert (cos_plain[np.triu_indices(300, 1)] >= 0.95).sum() >= 10  # what the de-duplicating fill prevents


def test_fill_completes_the_budget_with_near_duplicates_only_when_nothing_else_is_left():
    A = near_duplicate_pool(n=40, pairs=40)  # every row has a twin: 40 distinct directions, 80 rows
    b = A[:40].astype(np.float64).mean(axis=0)
    sel = gtp(DenseTrajectories(A), b, PursuitConfig(budget=60))
    assert sel.indices.size == 60 and np.unique(sel.indices).size == 60
    fitted, filled = (
        sel.indices[: 60 - sel.fill] % 40,
        sel.indices[60 - sel.fill :] % 40,
    )  # row i and i+40: one direction
    assert set(fitted) | set(filled) == set(range(40))  # every direction is taken before any twin
    assert sel.info["fill_near_duplicates"] == sel.fill - (40 - len(set(fitted))) > 0


def test_unknown_fill_is_refused():
    with pytest.raises(ValueError, match="fill must be"):
        PursuitConfig(fill="random")


# --- streaming, sharding, invalid rows -----------------------------------------------------------------------------
def test_streaming_store_selection_equals_in_memory(tmp_path):
    blocks = clustered(n=500, seed=7)
    view = StoreTrajectories(write_stores(tmp_path, blocks, chunk_rows=64), LR, block_rows=24)  # 8 chunks, ragged
    dense = DenseTrajectories.from_blocks(blocks, LR)
    b = target_of(dense, [3, 4, 5])
    cfg = PursuitConfig(budget=25, atoms_per_round=10)
    for fit in (gtp, cholesky_omp):
        streamed, inmem = fit(view, b, cfg), fit(dense, b, cfg)
        np.testing.assert_array_equal(streamed.indices, inmem.indices)
        np.testing.assert_allclose(streamed.weights, inmem.weights, atol=1e-5)
    np.testing.assert_array_equal(less_topk(view, b, cfg).indices, less_topk(dense, b, cfg).indices)


def test_sharded_over_two_processes_equals_single_process(tmp_path):
    blocks = clustered(n=500, seed=8)
    stores = write_stores(tmp_path, blocks, chunk_rows=64)
    single = StoreTrajectories(stores, LR)
    b = target_of(single, [9, 99])
    cfg = PursuitConfig(budget=30, atoms_per_round=12)
    with ShardedTrajectories([st.path for st in stores], LR, n_workers=2) as sharded:
        np.testing.assert_allclose(sharded.mean(), single.mean(), atol=1e-7)
        got, want = gtp(sharded, b, cfg), gtp(single, b, cfg)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.weights, want.weights)
    assert got.passes == want.passes


@pytest.mark.parametrize("device, atol", [("cpu", 1e-6), pytest.param("cuda", 1e-5, marks=pytest.mark.cuda)])
def test_device_pass_gives_the_same_selection(tmp_path, device, atol):
    blocks = clustered(n=500, seed=9)
    stores = write_stores(tmp_path, blocks, chunk_rows=64)
    default, on_device = StoreTrajectories(stores, LR), StoreTrajectories(stores, LR, device=device)
    b = target_of(default, [5, 50])
    cfg = PursuitConfig(budget=30, atoms_per_round=12)
    got, want = gtp(on_device, b, cfg), gtp(default, b, cfg)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.weights, want.weights, atol=atol)
    assert got.passes == want.passes


def test_invalid_rows_are_never_selected(tmp_path):
    blocks = clustered(n=300, seed=9)
    dense = DenseTrajectories.from_blocks(blocks, LR)
    b = target_of(dense, [0, 1, 2])
    best = np.argsort(-dense.correlate(b)[:, 0])[:40]
    valid = np.ones(300, dtype=bool)
    valid[best[::2]] = False  # half of the most correlated rows are invalid
    view = StoreTrajectories(write_stores(tmp_path, blocks, valid), LR)
    cfg = PursuitConfig(budget=50)
    for sel in (
        gtp(view, b, cfg),
        cholesky_omp(view, b, cfg),
        gradmatch_omp(view, b, cfg),
        less_topk(view, b, cfg),
        random_k(view, cfg),
    ):
        assert valid[sel.indices].all(), sel.method
        assert sel.indices.size == 50 and np.unique(sel.indices).size == 50


def test_gradmatch_fills_randomly_with_weight_one_and_gtp_with_zero_weight_when_nothing_correlates():
    g = np.random.default_rng(10)
    view = DenseTrajectories(unit(np.c_[np.full(200, 3.0), g.standard_normal((200, 15))]))  # (200, 16)
    b = -np.eye(16)[0]  # every atom has a negative correlation: no non-negative fit can help
    cfg = PursuitConfig(budget=5, seed=3)
    gm = gradmatch_omp(view, b, cfg)
    assert gm.fill == 5 and (gm.weights == 1).all()
    np.testing.assert_array_equal(gradmatch_omp(view, b, cfg).indices, gm.indices)  # seeded
    sel = gtp(view, b, cfg)
    assert sel.stop_reason == "no_progress" and sel.fill == 5 and (sel.weights == 0).all()


# --- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, -3, 201, 2.5])
def test_budget_outside_one_to_valid_rows_raises(k):
    view = DenseTrajectories.from_blocks(clustered(n=200), LR)
    for fit in (gtp, cholesky_omp, gradmatch_omp, less_topk):
        with pytest.raises(ValueError, match="budget k must be an integer in 1..200"):
            fit(view, np.ones(view.dim), PursuitConfig(budget=k))
    with pytest.raises(ValueError, match="budget"):
        random_k(view, PursuitConfig(budget=k))


@pytest.mark.parametrize(
    "target, message",
    [(np.ones(95), "dimension 95 .* 96"), (np.full(96, np.nan), "non-finite"), (np.zeros(96), "zero")],
)
def test_bad_targets_raise(target, message):
    view = DenseTrajectories.from_blocks(clustered(n=100), LR)
    for fit in (gtp, cholesky_omp, gradmatch_omp, less_topk):
        with pytest.raises(ValueError, match=message):
            fit(view, target, PursuitConfig(budget=3))


def test_empty_support_raises():
    view = DenseTrajectories.from_blocks(clustered(n=100), LR)
    with pytest.raises(NNLSError, match="empty support"):
        evaluate_selection(view, np.array([], dtype=np.int64), np.ones(96))
    with pytest.raises(NNLSError, match="empty support"):
        nnls_gram(np.zeros((0, 0)), np.zeros(0))
