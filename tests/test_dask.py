"""attnx.dask on a real dask.distributed cluster: a LocalCluster of 2 worker
processes started here. The oracle is attnx.attend over the whole keys in
this process (itself tested against tests/reference.py); GQA is checked
against attention with the key/value heads repeated, key_lengths against the
equivalent boolean mask."""
import os
import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
import dask  # noqa: E402

import attnx  # noqa: E402
import attnx.dask  # noqa: E402

import dask_tasks  # noqa: E402  (tests/, on sys.path through conftest.py)
import reference as ref  # noqa: E402

# the workers run whatever SIMD level is best; one run of this module suffices
pytestmark = pytest.mark.simd_independent
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def client():
    # starting worker processes sets OMP_NUM_THREADS=1 (and more) in this
    # process's environment for good (distributed's pre-spawn-environ); put it
    # back, or later tests' subprocesses run attnx on one thread
    saved = dict(os.environ)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    c = distributed.Client(cluster)
    # the workers cannot import this module: what they run comes from here
    c.upload_file(dask_tasks.__file__)
    yield c
    c.close()
    cluster.close()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def two_workers(client):
    client.wait_for_workers(2, timeout=60)
    return client


def assert_close(got, want, rtol):
    """Relative to the largest magnitude, so near-zero entries do not fail
    a relative bound that their absolute error easily meets."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    scale = np.abs(want[fin]).max() if fin.any() else 1.0
    np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=rtol * scale)


def local(Q, K, V, *, causal=False, mask=None, bias=None, key_lengths=None, gqa=False,
          scale=1.0):
    """What attnx.dask.attend must give, with attnx.attend on the whole."""
    if gqa:
        G = Q.shape[-3] // K.shape[-3]
        K, V = np.repeat(K, G, axis=-3), np.repeat(V, G, axis=-3)
    if causal == "lower_right" and key_lengths is not None:
        # aligned with each item's last real key: attend's own key_lengths
        return attnx.attend(Q, K, V, scale=scale, causal=causal, mask=mask, bias=bias,
                            key_lengths=key_lengths, return_lse=True)
    if key_lengths is not None:
        seen = np.arange(K.shape[-2]) < np.asarray(key_lengths)[..., None, None]
        mask = seen if mask is None else mask & seen
    return attnx.attend(Q, K, V, scale=scale, causal=causal, mask=mask, bias=bias,
                        return_lse=True)


def make(dtype=np.float64, B=2, H=4, Hkv=2, Lq=7, T=203, d=8, dv=5, seed=0):
    g = np.random.default_rng(seed)
    return (g.standard_normal((B, H, Lq, d)).astype(dtype),
            g.standard_normal((B, Hkv, T, d)).astype(dtype),
            g.standard_normal((B, Hkv, T, dv)).astype(dtype))


CASES = {
    "plain": {},
    "causal": dict(causal=True),
    "key_lengths": dict(key_lengths=np.array([[37], [203]])),
    "causal+key_lengths+mask": dict(causal=True, key_lengths=np.array([[5], [150]]), mask=True),
    "gqa": dict(gqa=True),
    "gqa+causal+key_lengths": dict(gqa=True, causal=True, key_lengths=np.array([[64], [1]])),
    "gqa+mask": dict(gqa=True, mask=True),
    "bias+causal": dict(bias=True, causal=True),
    "gqa+bias+mask+key_lengths": dict(gqa=True, bias=True, mask=True,
                                      key_lengths=np.array([[64], [190]])),
    # the last query row aligned with the last key (T = 203), or with each
    # item's last real key (5 < Lq: its first rows see nothing)
    "lower_right": dict(causal="lower_right"),
    "gqa+lower_right+key_lengths+mask": dict(gqa=True, causal="lower_right", mask=True,
                                             key_lengths=np.array([[5], [150]])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_local_attend_across_chunk_boundaries(two_workers, case):
    """Key chunks of 50 (uneven: 203 = 4*50 + 3), batch chunks of 1, query
    rows in chunks of 3: causal, key_lengths, masks and GQA all cross chunk
    boundaries (a key length of 37, 64 or 150, query rows 0-6)."""
    opts = dict(CASES[case])
    gqa = opts.pop("gqa", False)
    Q, K, V = make()
    if not gqa:
        K, V = np.repeat(K, 2, axis=1), np.repeat(V, 2, axis=1)
    mask = None
    if opts.pop("mask", False):
        mask = np.random.default_rng(1).random((2, 1, 7, 203)) < 0.7
    bias = None
    if opts.pop("bias", False):   # per head and row, -inf on some keys
        g = np.random.default_rng(2)
        bias = np.where(g.random((2, 4, 7, 203)) < 0.1, -np.inf, g.standard_normal((2, 4, 7, 203)))
    want, want_lse = local(Q, K, V, mask=mask, bias=bias, gqa=gqa, scale=0.3, **opts)
    dq = da.from_array(Q, chunks=(1, 2, 3, 8))
    dk = da.from_array(K, chunks=(1, K.shape[1], 50, 8))
    dv = da.from_array(V, chunks=(1, V.shape[1], 50, 5))
    dm = None if mask is None else da.from_array(mask, chunks=(1, 1, 7, 60))
    db = None if bias is None else da.from_array(bias, chunks=(2, 2, 4, 70))
    out, lse = attnx.dask.attend(dq, dk, dv, mask=dm, bias=db, scale=0.3, enable_gqa=gqa,
                                 return_lse=True, **opts)
    assert isinstance(out, da.Array) and isinstance(lse, da.Array)
    got, got_lse = dask.compute(out, lse)
    assert_close(got, want, 1e-13)
    assert_close(got_lse, want_lse, 1e-13)


def test_causal_is_attends_and_refuses_what_it_refuses():
    """causal takes attnx.attend's values, nothing truthy besides; a lone
    (d,) query with top-left causal is refused (it would see key 0 only),
    while 'lower_right' lets it see every key. Graph building only."""
    Q, K, V = make(B=1, H=2, Hkv=2, Lq=3, T=20)
    dk = da.from_array(K, chunks=(1, 2, 6, 8))
    dv = da.from_array(V, chunks=(1, 2, 6, 5))
    for bad, exc in (("upper", ValueError), ("false", ValueError), (0.5, TypeError)):
        with pytest.raises(exc, match="causal must be True"):
            attnx.dask.attend(Q, dk, dv, causal=bad)
    with pytest.raises(ValueError, match="single query"):
        attnx.dask.attend(Q[0, 0, 0], dk[0, 0], dv[0, 0], causal=True)
    got = attnx.dask.attend(Q[0, 0, 0], dk[0, 0], dv[0, 0], causal="lower_right")
    np.testing.assert_array_equal(got.compute(scheduler="sync"),
                                  attnx.dask.attend(Q[0, 0, 0], dk[0, 0], dv[0, 0]).compute(
                                      scheduler="sync"))
    # one graph holding both alignments keeps them apart
    a = attnx.dask.attend(Q, dk, dv, causal=True)
    b = attnx.dask.attend(Q, dk, dv, causal="lower_right")
    assert a.name != b.name
    ga, gb = dask.compute(a, b, scheduler="sync")
    assert_close(ga, attnx.attend(Q, K, V, causal=True), 1e-13)
    assert_close(gb, attnx.attend(Q, K, V, causal="lower_right"), 1e-13)


def test_float32_and_numpy_inputs(two_workers):
    Q, K, V = make(np.float32, Lq=3)
    out, lse = attnx.dask.attend(Q, da.from_array(K, chunks=(2, 1, 40, 8)),
                                 da.from_array(V, chunks=(2, 1, 40, 5)), causal=True,
                                 enable_gqa=True, return_lse=True, split_every=2)
    got, got_lse = dask.compute(out, lse)
    want, want_lse = local(Q, K, V, causal=True, gqa=True)
    assert got.dtype == got_lse.dtype == np.float32
    assert_close(got, want, 2e-5)
    assert_close(got_lse, want_lse, 2e-5)
    # all-NumPy input (one chunk), and one 1-D query with a (T,) mask
    q, k = Q[0, 0, 0].astype(np.float64), K[0, 0].astype(np.float64)
    m = np.arange(203) % 3 != 0
    got = attnx.dask.attend(q, da.from_array(k, chunks=(64, 8)), mask=m).compute()
    assert got.shape == (8,)
    assert_close(got, attnx.attend(q, k, mask=m), 1e-13)
    assert_close(attnx.dask.attend(q, k, mask=m).compute(), attnx.attend(q, k, mask=m), 1e-13)


def graph_and_workers(client, x, **kw):
    with distributed.get_task_stream(client) as ts:
        res = client.compute(x, **kw).result()
    return res, {t["worker"] for t in ts.data}


def test_bits_do_not_depend_on_the_workers(two_workers):
    """The same chunking gives the same bits: repeated runs, all tasks on
    one worker, spread over two, and the synchronous scheduler in this
    process."""
    client = two_workers
    Q, K, V = make(Lq=2, T=4000, seed=3)
    K, V = np.repeat(K, 2, axis=1), np.repeat(V, 2, axis=1)
    dk = da.from_array(K, chunks=(1, 2, 250, 8))
    dv = da.from_array(V, chunks=(1, 2, 250, 5))
    out = attnx.dask.attend(Q, dk, dv, causal=True, key_lengths=np.array([[3999], [1234]]))
    both, used = graph_and_workers(client, out)
    assert len(used) == 2, "both workers should have run tasks"
    again, _ = graph_and_workers(client, out)
    w0 = sorted(client.scheduler_info()["workers"])[0]
    one, used1 = graph_and_workers(client, out, workers=[w0], allow_other_workers=False)
    assert used1 == {w0}
    sync = out.compute(scheduler="sync")
    for other in (again, one, sync):
        np.testing.assert_array_equal(other, both)
    # a different tree or chunking: other rounding, the same result
    for dk2, dv2, se in ((dk, dv, 2), (dk.rechunk((1, 2, 333, 8)), dv.rechunk((1, 2, 333, 5)), None)):
        other = attnx.dask.attend(Q, dk2, dv2, causal=True, split_every=se,
                                  key_lengths=np.array([[3999], [1234]])).compute()
        assert_close(other, both, 1e-13)


def test_no_task_reads_more_than_one_key_chunk_and_nothing_runs_early():
    """The graph: every task that reads the keys or values reads one chunk
    of each; building the result computes nothing."""
    def boom(block):
        raise RuntimeError("computed too early")

    K = da.zeros((1000, 4), chunks=(100, 4)).map_blocks(boom, dtype=float)
    V = da.zeros((1000, 3), chunks=(100, 3)).map_blocks(boom, dtype=float)
    out = attnx.dask.attend(np.ones((2, 4)), K, V, causal=True)   # must not raise
    dsk = dict(out.__dask_graph__())
    kv = {key for key in dsk if isinstance(key, tuple) and key[0] in (K.name, V.name)}
    assert len(kv) == 20
    readers = 0
    for key, task in dsk.items():
        deps = dask.core.get_dependencies(dsk, key) & kv
        if deps:
            readers += 1
            assert {d[0] for d in deps} <= {K.name, V.name}
            assert sum(d[0] == K.name for d in deps) == 1
            assert sum(d[0] == V.name for d in deps) == 1
    assert readers == 10
    with pytest.raises(RuntimeError, match="too early"):
        out.compute(scheduler="sync")


def test_chunks_made_from_a_source_are_made_where_they_are_attended(two_workers):
    """Keys and values from dask.array.random: each task makes its key chunk
    and its value chunk and attends them, so no chunk crosses between the
    workers (only the small partials do), and the bits are those of the
    same values persisted first."""
    client = two_workers
    rng = da.random.default_rng(11)
    K = rng.standard_normal((4096, 16), chunks=(256, 16))
    V = rng.standard_normal((4096, 8), chunks=(256, 8))
    q = np.random.default_rng(12).standard_normal((2, 16))
    out = attnx.dask.attend(q, K, V, causal=True)
    dsk = dict(out.__dask_graph__())
    assert not any(isinstance(k, tuple) and k[0] in (K.name, V.name) for k in dsk), \
        "the chunk tasks should be inside the attention tasks"
    with distributed.get_task_stream(client) as ts:
        got = client.compute(out).result()
    assert not [t["key"] for t in ts.data if isinstance(t["key"], tuple) and
                t["key"][0] in (K.name, V.name)], "a chunk was made in a task of its own"
    # what an attention task waits for: the query's one chunk, nothing of K or V
    partials = [key for key in dsk if isinstance(key, tuple) and key[0].startswith("attnx-partial")]
    assert len(partials) == 16
    for key in partials:
        assert len(dask.core.get_dependencies(dsk, key)) == 1
    Kp, Vp = client.persist([K, V])
    distributed.wait([Kp, Vp])
    np.testing.assert_array_equal(attnx.dask.attend(q, Kp, Vp, causal=True).compute(), got)
    assert_close(got, attnx.attend(q, K.compute(), V.compute(), causal=True), 1e-13)
    # values=None: the keys are made once per task and read as the values too
    np.testing.assert_array_equal(attnx.dask.attend(q, K).compute(),
                                  attnx.dask.attend(q, Kp).compute())


def test_bits_do_not_depend_on_where_a_chunk_lies_in_memory():
    """A chunk that crossed between workers may start 8 bytes off a 16-byte
    boundary, and one made in a task anywhere NumPy's allocator puts it;
    the result is still the same bits (the kernels' sums do not depend on
    a row's offset within a vector, which at AVX-512 is 64 bytes)."""
    g = np.random.default_rng(13)
    q, K, V = g.standard_normal((2, 64)), g.standard_normal((2048, 64)), g.standard_normal((2048, 8))
    dk, dv = da.from_array(K, chunks=(512, 64)), da.from_array(V, chunks=(512, 8))
    want = attnx.dask.attend(q, dk, dv).compute(scheduler="sync")
    seen = []

    def moved(block, block_info=None):
        out = ref.placed(block, 8 + 16 * block_info[0]["chunk-location"][0])   # 8, 24, 40, 56
        seen.append(out.ctypes.data % 64)
        return out

    got = attnx.dask.attend(q, dk.map_blocks(moved, meta=K[:0]), dv).compute(scheduler="sync")
    assert sorted(seen) == [8, 24, 40, 56]
    np.testing.assert_array_equal(got, want)


def test_a_worker_killed_mid_computation_changes_nothing(two_workers, tmp_path):
    """A task SIGKILLs its worker process once: the nanny restarts it, the
    scheduler recomputes what was lost, and the result has the same bits."""
    client = two_workers
    g = np.random.default_rng(5)
    q, K, V = g.standard_normal((3, 16)), g.standard_normal((6000, 16)), g.standard_normal((6000, 4))
    dk = da.from_array(K, chunks=(500, 16))
    dv = da.from_array(V, chunks=(500, 4))
    want = attnx.dask.attend(q, dk, dv, causal=True, split_every=3).compute()
    marker = str(tmp_path / "killed")
    dk2 = dk.map_blocks(dask_tasks.die_once, marker, dtype=K.dtype)
    got = attnx.dask.attend(q, dk2, dv, causal=True, split_every=3).compute()
    assert os.path.exists(marker), "no worker was killed"
    np.testing.assert_array_equal(got, want)
    assert_close(got, attnx.attend(q, K, V, causal=True), 1e-13)
    client.wait_for_workers(2, timeout=60)


class TestErrors:
    Q, K, V = make(Lq=2, T=20)

    def test_bias(self):
        with pytest.raises(ValueError, match=r"bias of shape \(2, 19\) does not broadcast"):
            attnx.dask.attend(self.Q, self.K, self.V, bias=np.zeros((2, 19)), enable_gqa=True)
        with pytest.raises(TypeError, match="bias must be real numeric"):
            attnx.dask.attend(self.Q, self.K, self.V, bias=np.zeros((2, 20), bool),
                              enable_gqa=True)
        with pytest.raises(ValueError, match=r"enable_gqa: bias of shape .* has 3 heads"):
            attnx.dask.attend(self.Q, self.K, self.V, bias=np.zeros((3, 2, 20)),
                              enable_gqa=True)

    def test_scale_is_named(self):
        with pytest.raises(TypeError, match="scale must be a real number"):
            attnx.dask.attend(self.Q, self.K, self.V, scale="a", enable_gqa=True)

    def test_gqa_heads(self):
        Q = np.zeros((2, 3, 2, 8))
        with pytest.raises(ValueError, match=r"enable_gqa.*3 heads.*2 heads"):
            attnx.dask.attend(Q, self.K, self.V, enable_gqa=True)
        with pytest.raises(ValueError, match="enable_gqa needs a heads axis"):
            attnx.dask.attend(np.zeros((2, 8)), self.K[0, 0], enable_gqa=True)
        with pytest.raises(ValueError, match="mask"):
            attnx.dask.attend(self.Q, self.K, self.V, enable_gqa=True,
                              mask=np.ones((2, 3, 2, 20), bool))

    def test_shapes(self):
        with pytest.raises(ValueError, match=r"query and keys differ in d"):
            attnx.dask.attend(np.zeros((2, 7)), self.K)
        with pytest.raises(ValueError, match=r"keys and values differ in T"):
            attnx.dask.attend(self.Q, self.K, self.V[..., :19, :], enable_gqa=True)
        with pytest.raises(ValueError, match=r"batch dimensions do not broadcast.*keys"):
            attnx.dask.attend(np.zeros((3, 2, 8)), np.zeros((2, 20, 8)))
        with pytest.raises(ValueError, match=r"mask of shape \(2, 19\)"):
            attnx.dask.attend(self.Q, self.K, self.V, enable_gqa=True, mask=np.ones((2, 19), bool))
        with pytest.raises(ValueError, match="T = 0"):
            attnx.dask.attend(np.zeros(8), np.zeros((0, 8)))

    def test_chunks_along_d(self):
        for name, args in (("keys", (np.zeros(8), da.zeros((20, 8), chunks=(10, 4)))),
                           ("query", (da.zeros((2, 8), chunks=(2, 4)), np.zeros((20, 8)))),
                           ("values", (np.zeros(8), np.zeros((20, 8)), da.zeros((20, 6), chunks=3)))):
            with pytest.raises(ValueError, match=f"{name} is chunked along its last axis"):
                attnx.dask.attend(*args)

    def test_key_lengths(self):
        with pytest.raises(TypeError, match="key_lengths must be integer"):
            attnx.dask.attend(self.Q, self.K, self.V, enable_gqa=True, key_lengths=np.array([3.5]))
        with pytest.raises(ValueError, match=r"key_lengths must lie in \[0, T=20\]"):
            attnx.dask.attend(self.Q, self.K, self.V, enable_gqa=True, key_lengths=np.array([-1]))
        with pytest.raises(ValueError, match=r"key_lengths of shape \(3,\) has 3 heads"):
            attnx.dask.attend(self.Q, self.K, self.V, enable_gqa=True, key_lengths=np.array([1, 2, 3]))
        with pytest.raises(ValueError, match=r"batch dimensions do not broadcast.*key_lengths \(3,\)"):
            attnx.dask.attend(np.zeros((2, 1, 8)), np.zeros((2, 20, 8)), key_lengths=np.array([1, 2, 3]))
        with pytest.raises(ValueError, match="key_lengths"):   # a dask array: checked on compute
            attnx.dask.attend(self.Q, self.K, self.V, enable_gqa=True,
                              key_lengths=da.from_array(np.array([[21], [3]]))).compute(scheduler="sync")

    def test_types(self):
        with pytest.raises(TypeError, match="mask must be boolean"):
            attnx.dask.attend(self.Q, self.K, self.V, enable_gqa=True, mask=np.ones(20))
        with pytest.raises(TypeError, match="keys must be real numeric"):
            attnx.dask.attend(self.Q, self.K.astype(complex))
        with pytest.raises(ValueError, match="split_every must be at least 2"):
            attnx.dask.attend(self.Q, self.K, self.V, enable_gqa=True, split_every=1)


def test_long_context_example_runs_on_the_cluster(two_workers):
    """examples/dask_long_context.py at its small default size, on this
    cluster through its --address (as on a real cluster); it checks itself
    against attnx.attend and exits non-zero on a difference."""
    addr = two_workers.scheduler.address
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "dask_long_context.py"),
                        "--address", addr], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "max relative difference from attnx.attend over the whole" in r.stdout


def test_docstring_example_runs():
    import doctest
    test = doctest.DocTestParser().get_doctest(attnx.dask.attend.__doc__, {}, "attend", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert test.examples and runner.failures == 0
