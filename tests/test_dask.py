"""fastla on dask arrays: every supported function against the in-memory NumPy result, on the
synchronous scheduler and on a 2-process LocalCluster; uneven chunks; errors at build time; a worker
lost mid-computation; inputs never modified."""

import os
import re
import signal
import time

import numpy as np
import pytest

import fastla as fl

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from fastla.dask import RechunkWarning  # noqa: E402

# workers compile (or load from the cache) the kernels they run: too slow without the JIT
pytestmark = pytest.mark.slow

RNG = np.random.default_rng(20261123)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=40,
    )
    c = distributed.Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


class _Scheduler:
    """``sched(*lazy)`` computes on the scheduler under test; ``sched.active()`` makes it the default
    (for ``power_iteration``, which computes as it goes)."""

    def __init__(self, client=None):
        self.client = client

    def __call__(self, *xs):
        if self.client is None:
            return dask.compute(*xs, scheduler="synchronous")
        return tuple(self.client.compute(list(xs), sync=True))

    def active(self):
        return dask.config.set(scheduler=self.client or "synchronous")


@pytest.fixture(params=["sync", "cluster"])
def compute(request):
    return _Scheduler(request.getfixturevalue("client") if request.param == "cluster" else None)


def _chunked(x, chunks):
    return da.from_array(x.copy(), chunks=chunks)


def _unchanged(*pairs):
    for orig, arr in pairs:
        got = arr.compute(scheduler="synchronous") if isinstance(arr, da.Array) else arr
        np.testing.assert_array_equal(got, orig)


# --------------------------------------------------------------------------- matmul


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_matmul_uneven_chunks(compute, backend):
    a = RNG.standard_normal((70, 50))
    b = RNG.standard_normal((50, 45))
    A, B = _chunked(a, (30, 20)), _chunked(b, (20, 16))  # k split unevenly: partial sums
    (res,) = compute(fl.matmul(A, B, backend=backend))
    np.testing.assert_allclose(res, a @ b, rtol=1e-12, atol=1e-12)
    _unchanged((a, A), (b, B))


def test_matmul_promotions_and_stacks(compute):
    a = RNG.standard_normal((3, 20, 12)).astype(np.float32)
    b = RNG.standard_normal((12, 9)).astype(np.float32)
    v = RNG.standard_normal(12).astype(np.float32)
    A = _chunked(a, (2, 7, 5))
    got = compute(
        fl.matmul(A, b), fl.matmul(A, v), fl.matmul(v, _chunked(b, (5, 4))), fl.matmul(v, _chunked(v, 5))
    )
    want = (a @ b, a @ v, v @ b, v @ v)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32 and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_matmul_numpy_operand_and_ints(compute):
    a = RNG.integers(-5, 5, (30, 8))
    (res,) = compute(fl.matmul(_chunked(a, (7, 3)), a.T))
    assert res.dtype == a.dtype
    np.testing.assert_array_equal(res, a @ a.T)


def test_matmul_float16_over_chunks_of_k_as_accurate_as_numpy():
    """NumPy's float16 product accumulates in float32 and rounds once; the partial products over
    chunks of k are summed in float32 too (float16 partial sums were 3x less accurate)."""
    a = (RNG.standard_normal((40, 300)) * 3).astype(np.float16)
    b = (RNG.standard_normal((300, 20)) * 3).astype(np.float16)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    got = fl.matmul(_chunked(a, (40, 50)), _chunked(b, (50, 20))).compute(scheduler="sync")
    assert got.dtype == np.float16
    assert np.abs(got - exact).max() <= 1.5 * np.abs(np.matmul(a, b) - exact).max()


def test_matmul_errors_at_build_time():
    A = da.ones((4, 5), chunks=2)
    with pytest.raises(ValueError, match="contracted dimension"):
        fl.matmul(A, da.ones((4, 3)))
    with pytest.raises(ValueError, match="not have enough dimensions"):
        fl.matmul(A, da.ones(()))
    with pytest.raises(TypeError, match="out="):
        fl.matmul(A, np.ones((5, 2)), out=np.empty((4, 2)))


# --------------------------------------------------------------------------- solve


def test_solve_stacks(compute):
    a = RNG.standard_normal((101, 4, 4)) + 4 * np.eye(4)
    b = RNG.standard_normal((101, 4, 2))
    v = RNG.standard_normal(4)
    A, B = _chunked(a, (30, 4, 4)), _chunked(b, (41, 4, 2))  # different batch chunks: unified
    x, y = compute(fl.solve(A, B, backend="numba"), fl.solve(A, v))
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-10)
    np.testing.assert_allclose(y, np.linalg.solve(a, v), rtol=1e-10)
    _unchanged((a, A), (b, B))


def test_solve_singular_and_chunked_matrix(compute):
    a = np.tile(np.eye(3), (20, 1, 1))
    a[13] = 0.0
    with pytest.raises(np.linalg.LinAlgError, match="Singular"):
        compute(fl.solve(_chunked(a, (5, 3, 3)), np.ones(3)))
    b = np.arange(3.0)
    with pytest.raises(
        ValueError,
        match="each matrix axis of a must be one chunk, and the dask array splits axis 1 \\(2 chunks\\)",
    ):
        fl.solve(da.from_array(a, chunks=(5, 2, 3)), b, rechunk=False)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "row axis of b must be one chunk, and the dask array splits axis 0 (2 chunks); rechunk it (b."
        ),
    ):
        fl.solve(_chunked(a, (5, 3, 3)), da.from_array(b, chunks=2), rechunk=False)
    ok = np.delete(a, 13, axis=0)
    want = np.linalg.solve(ok, b)
    with pytest.warns(RechunkWarning, match="splits axes 1 \\(2 chunks\\), 2 \\(2 chunks\\)"):
        x = fl.solve(da.from_array(ok, chunks=(5, 2, 2)), b)
    np.testing.assert_array_equal(compute(x)[0], want)
    with pytest.warns(RechunkWarning, match="row axis of b"):
        x = fl.solve(_chunked(ok, (5, 3, 3)), da.from_array(np.tile(b, (19, 1)).T, chunks=(2, 4)))
    np.testing.assert_array_equal(compute(x)[0], np.linalg.solve(ok, np.tile(b, (19, 1)).T))
    with pytest.raises(ValueError, match="does not match"):
        fl.solve(da.from_array(a, chunks=5), np.ones(4))


# --------------------------------------------------------------------------- softmax family


@pytest.mark.parametrize("fn", [fl.softmax, fl.log_softmax])
def test_softmax_chunks_and_rechunk(compute, fn):
    x = RNG.standard_normal((37, 3, 50)).astype(np.float32)
    X = _chunked(x, (10, 2, 50))
    (res,) = compute(fn(X, axis=-1, backend="numba"))
    np.testing.assert_allclose(res, fn(x), rtol=1e-5, atol=1e-6)
    with pytest.warns(RechunkWarning, match=r"axis 0 \(4 chunks\).*rechunk=False") as rec:
        lazy = fn(X, axis=0)
    assert rec[0].filename == __file__  # the warning points at the caller
    (res,) = compute(lazy)
    np.testing.assert_allclose(res, fn(x, axis=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="must be one chunk"):
        fn(X, axis=(0, 2), rechunk=False)
    _unchanged((x, X))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_index_and_prob(compute, reduction):
    x = RNG.standard_normal((45, 6, 7))
    t = RNG.integers(0, 6, (45, 7))
    t[::5, 0] = -100
    p = fl.softmax(RNG.standard_normal(x.shape), axis=1)
    X, T, P = _chunked(x, (20, 6, 4)), _chunked(t, (9, 7)), _chunked(p, (11, 6, 7))
    got = compute(
        fl.cross_entropy(X, T, axis=1, reduction=reduction, label_smoothing=0.1),
        fl.cross_entropy(X, P, axis=1, reduction=reduction),
    )
    want = (
        fl.cross_entropy(x, t, axis=1, reduction=reduction, label_smoothing=0.1, backend="numpy"),
        fl.cross_entropy(x, p, axis=1, reduction=reduction, backend="numpy"),
    )
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12)
    _unchanged((x, X), (t, T))
    weight = RNG.random(6) + 0.1  # class weights: the mean divides by the entries' weights
    got = compute(
        fl.cross_entropy(X, T, weight, axis=1, reduction=reduction, label_smoothing=0.1),
        fl.cross_entropy(X, P, weight, axis=1, reduction=reduction),
    )
    want = (
        fl.cross_entropy(x, t, weight, axis=1, reduction=reduction, label_smoothing=0.1, backend="numpy"),
        fl.cross_entropy(x, p, weight, axis=1, reduction=reduction, backend="numpy"),
    )
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cross_entropy_keeps_the_logits_dtype(dtype):
    """Every reduction gives the in-memory result's type (the logits' float dtype, as torch), the
    float16 sums accumulated in float32 as in memory."""
    x = (RNG.standard_normal((230, 9)) * 3).astype(dtype)
    t = RNG.integers(0, 9, 230)
    t[::7] = -100
    p = fl.softmax(RNG.standard_normal(x.shape)).astype(dtype)
    X, T, P = _chunked(x, (70, 9)), _chunked(t, 70), _chunked(p, (70, 9))
    tol = 4 * np.finfo(dtype).eps
    for reduction in ("mean", "sum", "none"):
        for kwargs in ({}, {"weight": RNG.random(9) + 0.1}, {"label_smoothing": 0.1}):
            for target, chunked in ((t, T), (p, P)):
                got = fl.cross_entropy(X, chunked, reduction=reduction, **kwargs).compute(scheduler="sync")
                want = fl.cross_entropy(x, target, reduction=reduction, **kwargs)
                assert type(got) is type(want) and got.dtype == want.dtype, (reduction, kwargs, target.ndim)
                np.testing.assert_allclose(np.float64(got), np.float64(want), rtol=tol)


def test_cross_entropy_errors():
    X = da.zeros((10, 5), chunks=(3, 5))
    with pytest.raises(ValueError, match="class-index target"):
        fl.cross_entropy(X, da.zeros(9, dtype=int, chunks=3))
    with pytest.raises(ValueError, match="reduction"):
        fl.cross_entropy(X, np.zeros(10, int), reduction="avg")
    with pytest.raises(IndexError, match="out of bounds"):  # needs the data: raised by compute
        fl.cross_entropy(X, np.full(10, 7)).compute(scheduler="synchronous")
    with pytest.warns(RechunkWarning, match="class axis"):
        fl.cross_entropy(da.zeros((10, 5), chunks=2), np.zeros(10, int))


# --------------------------------------------------------------------------- cosine


def test_cosine_similarity(compute):
    x = RNG.standard_normal((53, 24)).astype(np.float32)
    x[7] = 0.0
    y = RNG.standard_normal((31, 24)).astype(np.float32)
    X, Y = _chunked(x, (20, 24)), _chunked(y, (13, 24))
    sym, pair, vec = compute(
        fl.cosine_similarity(X, backend="numba"), fl.cosine_similarity(X, Y), fl.cosine_similarity(X, y[0])
    )
    np.testing.assert_allclose(sym, fl.cosine_similarity(x, backend="numpy"), rtol=1e-5, atol=1e-6)
    assert (sym == sym.T).all() and (np.delete(np.diag(sym), 7) == 1).all() and sym[7, 7] == 0
    np.testing.assert_allclose(pair, fl.cosine_similarity(x, y, backend="numpy"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vec, fl.cosine_similarity(x, y[0]), rtol=1e-5, atol=1e-6)
    with pytest.warns(RechunkWarning, match="feature axis"):
        fl.cosine_similarity(da.from_array(x, chunks=(20, 10)))
    with pytest.raises(ValueError, match="incompatible dimension"):
        fl.cosine_similarity(X, np.ones((3, 5)))
    _unchanged((x, X), (y, Y))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_cosine_topk_tree_merge(compute, backend):
    corpus = RNG.standard_normal((211, 16))
    corpus[50] = corpus[3]  # a tie across chunks: the lower index first
    corpus[120] = np.nan  # NaN scores last
    q = RNG.standard_normal((23, 16))
    q[4] = corpus[3]
    C = _chunked(corpus, (40, 16))  # 6 chunks, the last short; split_every=2: three merge levels
    Q = _chunked(q, (10, 16))
    s, i = compute(*fl.cosine_topk(Q, C, 12, backend=backend, split_every=2))
    s0, i0 = fl.cosine_topk(q, corpus, 12, backend="numpy")
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_allclose(s, s0, rtol=1e-12)
    assert list(i[4, :2]) == [3, 50]
    # k larger than a chunk, one query vector, all of the corpus (NaN row last)
    s, i = compute(*fl.cosine_topk(q[0], C, 211))
    np.testing.assert_array_equal(i, fl.cosine_topk(q[0], corpus, 211)[1])
    assert i[-1] == 120
    _unchanged((corpus, C), (q, Q))


def test_cosine_topk_merge_keeps_the_kernels_order():
    """The merge (a stable sort by decreasing score of lists in corpus order) against a full sort by
    the rule: score down, ties by lower index (-0.0 ties 0.0), NaN last, over long rows of ties."""
    from fastla.dask import _merge_topk

    q, k, n_parts = 7, 25, 9
    parts = []
    for j in range(n_parts):
        s = RNG.choice(np.array([0.5, 0.25, 0.0, -0.0, -0.5, np.nan]), size=(q, k))
        i = j * 1000 + RNG.permuted(np.tile(np.arange(k), (q, 1)), axis=1)
        nan = np.isnan(s)
        order = np.lexsort((i, np.where(nan, 0, -s), nan), axis=-1)  # each list sorted by the rule
        parts.append((np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)))
    all_s = np.concatenate([p[0] for p in parts], axis=1)
    all_i = np.concatenate([p[1] for p in parts], axis=1)
    nan = np.isnan(all_s)
    order = np.lexsort((all_i, np.where(nan, 0, -all_s), nan), axis=-1)[:, : 3 * k]
    s, i = _merge_topk(parts, 3 * k)
    np.testing.assert_array_equal(i, np.take_along_axis(all_i, order, 1))
    np.testing.assert_array_equal(s, np.take_along_axis(all_s, order, 1))


def test_cosine_topk_errors():
    C = da.ones((30, 4), chunks=(10, 2))
    with pytest.raises(ValueError, match=r"k=31 must be in \[0, n_corpus=30\]"):
        fl.cosine_topk(np.ones(4), C, 31)
    with pytest.raises(ValueError, match="must be one chunk"):
        fl.cosine_topk(np.ones(4), C, 3, rechunk=False)


# --------------------------------------------------------------------------- power iteration


def test_power_iteration(compute):
    q, _ = np.linalg.qr(RNG.standard_normal((90, 90)))
    lam = np.r_[10.0, -6.0, 3.0, np.linspace(1.5, 0.1, 87)]
    a = (q * lam) @ q.T
    a = (a + a.T) / 2
    A = _chunked(a, (40, 35))
    with compute.active():
        w, v = fl.power_iteration(A, k=2, seed=0, tol=1e-10)
        w1 = fl.power_iteration(A, seed=0, return_eigenvectors=False, symmetric=False)
    np.testing.assert_allclose(w, [10.0, -6.0], rtol=1e-8)
    np.testing.assert_allclose(np.abs(v.T @ q[:, :2]), np.eye(2), atol=1e-6)
    np.testing.assert_allclose(w1, [10.0], rtol=1e-7)
    _unchanged((a, A))
    with pytest.raises(ValueError, match="infs or NaNs"):
        fl.power_iteration(da.from_array(np.full((4, 4), np.nan), chunks=2))
    with pytest.raises(ValueError, match="square"):
        fl.power_iteration(da.ones((4, 5), chunks=2))


# --------------------------------------------------------------------------- call path


def test_dispatch_explain_and_unsupported():
    X = da.ones((8, 8), chunks=4)
    assert fl.explain("matmul", X, X)[0] == "dask"
    assert "numba" in fl.explain("softmax", X, backend="numba")[1]
    with pytest.raises(TypeError, match="lu_factor: dask arrays are not supported"):
        fl.lu_factor(X)
    # numpy inputs never take the dask path
    assert isinstance(fl.matmul(np.ones((2, 2)), np.ones((2, 2))), np.ndarray)


def test_worker_threads_capped(client):
    def probe():
        from threadpoolctl import threadpool_info

        import fastla

        return fastla.get_num_threads(), [
            p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"
        ]

    X = da.from_array(RNG.standard_normal((64, 64)), chunks=32)
    client.compute(fl.matmul(X, X), sync=True)
    for numba_threads, blas in client.run(probe).values():
        assert numba_threads == 1 and all(n == 1 for n in blas)


def test_in_process_workers_leave_the_client_threads_alone(monkeypatch):
    import fastla.dask as fdask

    monkeypatch.setattr(fdask, "_limited_pid", None)
    before = fl.get_num_threads()
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0", silence_logs=40
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as c,
    ):
        X = da.from_array(RNG.standard_normal((64, 64)), chunks=32)
        c.compute(fl.matmul(X, X, backend="numba"), sync=True)
    assert fl.get_num_threads() == before


def test_worker_lost_mid_computation(client):
    """A worker process killed while it holds tasks: the scheduler reruns them; the result is exact."""
    # generated on the workers (a graph embedding 10 MB of data would warn)
    C = da.random.default_rng(7).standard_normal((40_000, 64), chunks=(1000, 64), dtype=np.float32)
    q = RNG.standard_normal((400, 64)).astype(np.float32)
    s_lazy, i_lazy = fl.cosine_topk(_chunked(q, (100, 64)), C, 5, backend="numpy")
    victim = next(iter(client.scheduler_info()["workers"]))
    pid = client.run(os.getpid, workers=[victim])[victim]
    futures = client.compute([s_lazy, i_lazy])
    deadline = time.monotonic() + 60
    while not client.processing().get(victim) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert client.processing().get(victim), "the victim never got work"
    os.kill(pid, signal.SIGKILL)
    s, i = client.gather(futures)
    assert victim not in client.scheduler_info()["workers"]  # it really died mid-computation
    s0, i0 = fl.cosine_topk(q, C.compute(scheduler="synchronous"), 5, backend="numpy")
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_allclose(s, s0, rtol=1e-6)
