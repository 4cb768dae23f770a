"""Regressions of the second trust review (issue 10): a memory-corrupting
re-__init__, fork, thread counts, values that leak through weights of
exactly 0, overflow where the context is finite, a clear() racing an attend,
zero-byte inputs, re-entrant writers, and the smaller defects. Anything that
could crash or hang runs in a subprocess with a timeout, so that it fails
this test instead of the whole run."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import attnx
from attnx import kernels

from reference import attend as ref_attend


def run_py(code, timeout=300, env=None):
    """Run code in a fresh interpreter (outside the source tree) and return
    its stdout; fail with its stderr if it crashes, hangs or exits non-zero."""
    try:
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                           text=True, timeout=timeout, cwd="/", env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"timed out after {timeout} s (a hang); stdout: {e.stdout!r}")
    assert p.returncode == 0, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    return p.stdout


# --- 1. a failed __init__ leaves the cache as it was ------------------------

@pytest.mark.simd_independent
def test_failed_reinit_leaves_the_cache_intact():
    out = run_py("""
        import numpy as np, attnx
        c = attnx.KVCache(4, capacity=8)
        c.append(np.arange(4.))
        for bad in [dict(capacity=2**60), dict(dtype=np.int32), dict(dv=-1)]:
            args = (4000,) if "dtype" in bad else (4,)
            try:
                c.__init__(*args, **bad)
            except (ValueError, TypeError, MemoryError):
                pass
            else:
                raise SystemExit(f"no error for {bad}")
            assert (c.d, c.dv, len(c), c.capacity) == (4, 4, 1, 8), repr(c)
        for i in range(20000):
            c.append(np.full(4, float(i % 7)))
        assert len(c) == 20001 and c.keys.shape == (20001, 4)
        assert c.keys[0].tolist() == [0., 1., 2., 3.]
        q = np.ones(4)
        np.testing.assert_allclose(c.attend(q), attnx.attend(q, np.array(c.keys)))
        print("ok")
    """)
    assert out.split() == ["ok"]


# --- 2. fork after the pool was used ---------------------------------------

@pytest.mark.simd_independent
def test_a_forked_child_of_a_threaded_parent_computes_the_same_bits():
    """The parent runs every threaded entry point first (so a pool exists),
    then a fork-started Pool(2) repeats them with threads in each child."""
    out = run_py("""
        import multiprocessing as mp, numpy as np, attnx
        rng = np.random.default_rng(0)
        Q = rng.standard_normal((2, 4, 64, 32))
        K, V = rng.standard_normal((2, 4, 300, 32)), rng.standard_normal((2, 4, 300, 16))
        q, LK, LV = rng.standard_normal(16), rng.standard_normal((200_000, 16)), rng.standard_normal((200_000, 16))
        X = rng.standard_normal((4000, 64))

        def f(i):
            return [attnx.attend(Q, K, V, causal=True, num_threads=2),
                    attnx.attend(q, LK, LV, num_threads=2),
                    attnx.softmax(X, num_threads=2), attnx.log_softmax(X, num_threads=2),
                    attnx.dot_score(Q, K, num_threads=2), attnx.attend(Q, K, V)]

        want = f(0)
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map(f, range(4))
        for g in got:
            for a, b in zip(g, want):
                assert np.array_equal(a, b)
        print("ok")
    """, timeout=180)
    assert out.split() == ["ok"]


# --- 3. never more threads than CPUs ----------------------------------------

@pytest.mark.simd_independent
def test_num_threads_is_capped_at_the_cpus_of_the_affinity_mask():
    out = run_py("""
        import os, numpy as np, attnx
        cpus = len(os.sched_getaffinity(0))
        x = np.random.default_rng(0).standard_normal((200_000, 64))
        base = len(os.listdir("/proc/self/task"))
        want = attnx.softmax(x, num_threads=1)
        got = attnx.softmax(x, num_threads=10**6)
        assert np.array_equal(got, want)
        started = len(os.listdir("/proc/self/task")) - base
        assert started <= cpus - 1, (started, cpus)     # the caller is one of them
        assert attnx.max_threads() == cpus
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        assert attnx.max_threads() == 1
        print("ok", started)
    """)
    assert out.split()[0] == "ok"


@pytest.mark.simd_independent
@pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer does not support RLIMIT_AS (its shadow memory "
                           "and allocator need the address space the limit takes away)")
def test_a_thread_that_cannot_be_created_is_not_fatal():
    """Under an address-space limit, a pool worker's stack may not fit: the
    call then runs on fewer threads (libgomp aborted the process)."""
    out = run_py("""
        import resource, numpy as np, attnx
        x = np.random.default_rng(0).standard_normal((100_000, 64))
        y = np.empty_like(x)
        want = attnx.softmax(x, num_threads=1)
        with open("/proc/self/status") as f:
            vm = next(int(l.split()[1]) for l in f if l.startswith("VmSize")) * 1024
        threads = len(__import__("os").listdir("/proc/self/task"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (4 << 20), resource.RLIM_INFINITY))
        attnx.softmax(x, out=y, num_threads=10**6)     # no room for an 8 MB stack
        started = len(__import__("os").listdir("/proc/self/task")) - threads
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert started == 0, started
        assert np.array_equal(y, want)
        print("ok")
    """)
    assert out.split() == ["ok"]


@pytest.mark.simd_independent
def test_the_thread_environment_variable_limits_the_default():
    env = dict(os.environ, ATTNX_NUM_THREADS="1")
    out = run_py("import attnx; print(attnx.max_threads())", env=env)
    assert out.split() == ["1"]


# --- 4 and 5. weights of exactly 0, and overflow with a finite context ------

def _zero_weight_case(dtype):
    # the filler keys are finite in dtype (an -inf score is skipped unread)
    f64 = dtype == np.float64
    K = np.full((9, 1), -1e300 if f64 else -1e30)
    K[0], K[4], K[8] = (0.0, 400.0, 800.0) if f64 else (0.0, 60.0, 120.0)
    V = np.ones((9, 1))
    V[0] = np.inf      # its final weight, exp(-800) (float32: exp(-120)), is 0: never read
    with np.errstate(over="ignore"):
        return K.astype(dtype), V.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_weight_of_exactly_zero_never_reads_its_value_row(simd, dtype):
    K, V = _zero_weight_case(dtype)
    q = np.ones(1, dtype)
    assert attnx.attend(q, K, V).tolist() == [1.0]                   # fused
    assert attnx.attend(q, K, V, return_weights=True)[0].tolist() == [1.0]
    assert attnx.attend(np.ones((6, 1), dtype), K, V).ravel().tolist() == [1.0] * 6   # tiled
    cache = attnx.KVCache(1, 1, dtype=dtype)
    cache.extend(K, V)
    assert cache.attend(q).tolist() == [1.0]
    # a NaN row behaves the same
    V2 = V.copy()
    V2[0] = np.nan
    assert attnx.attend(q, K, V2).tolist() == [1.0]
    assert attnx.attend(np.ones((6, 1), dtype), K, V2).ravel().tolist() == [1.0] * 6


@pytest.mark.parametrize("dtype,T,big", [(np.float64, 2, 1e308), (np.float32, 40, 1e37),
                                         (np.float64, 5000, 1e308)])
def test_no_overflow_where_the_context_is_representable(simd, dtype, T, big):
    q, K = np.zeros(1, dtype), np.zeros((T, 1), dtype)
    V = np.full((T, 1), big, dtype)
    want = np.array([big], dtype)
    # (T equal weights 1/T, each rounded: a few ulp per term at most)
    close = dict(rtol=1e-12 if dtype == np.float64 else 1e-5, atol=0)
    np.testing.assert_allclose(attnx.attend(q, K, V), want, **close)
    np.testing.assert_allclose(attnx.attend(q, K, V, num_threads=2), want, **close)   # split
    np.testing.assert_allclose(attnx.attend(np.zeros((8, 1), dtype), K, V),
                               np.full((8, 1), big, dtype), **close)                  # tiled
    np.testing.assert_allclose(attnx.attend(np.zeros((3, 2, 1), dtype), K, V, causal=True),
                               np.full((3, 2, 1), big, dtype), **close)               # batched
    cache = attnx.KVCache(1, 1, dtype=dtype)
    cache.extend(K, V)
    np.testing.assert_allclose(cache.attend(q), want, **close)
    # mixed signs: the exact context is 0, and 0 it is, not inf - inf
    V2 = V.copy()
    V2[1::2] = -big
    if T % 2 == 0:
        assert attnx.attend(q, K, V2).tolist() == [0.0]


def test_overflow_fallback_keeps_masks_and_causality(simd):
    """The rare-case path sees the same keys as the fused one: masked and
    causally excluded rows (here: the ones holding inf) stay unread."""
    T = 6
    K = np.zeros((T, 1))
    V = np.full((T, 1), 1e308)
    V[3:] = np.inf
    mask = np.array([1, 1, 1, 0, 0, 0], bool)
    np.testing.assert_array_equal(attnx.attend(np.zeros(1), K, V, mask=mask), [1e308])
    got = attnx.attend(np.zeros((T, 1)), K, V, causal=True).ravel()
    np.testing.assert_array_equal(got[:3], [1e308] * 3)
    assert np.isinf(got[3:]).all()


# --- differential: every SIMD level, special values --------------------------

SPECIALS = [np.inf, -np.inf, np.nan, 1e308, -1e308, 1e300, 0.0, 5e-324]


def _special_case(rng, dtype):
    T, d, dv = rng.integers(1, 40), rng.integers(1, 9), rng.integers(1, 9)
    q = rng.standard_normal(d) * rng.choice([1, 30, 300])
    K = rng.standard_normal((T, d)) * rng.choice([1, 30, 300])
    V = rng.standard_normal((T, dv)) * rng.choice([1, 1e300])
    for a in (q, K, V):
        n = rng.integers(0, 3)
        a.flat[rng.integers(0, a.size, n)] = rng.choice(SPECIALS, n)
    with np.errstate(over="ignore"):
        return q.astype(dtype), K.astype(dtype), V.astype(dtype)


@pytest.mark.simd_independent
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_simd_level_agrees_on_special_values(dtype):
    """The same random cases, with inf, NaN and huge values, at every level:
    the same pattern of finite, infinite and NaN outputs, and finite outputs
    within the bounds of the ordinary tests of each other and of the
    reference, for the fused, tiled, two-pass and KVCache paths."""
    rng = np.random.default_rng(10)
    cases = [_special_case(rng, dtype) for _ in range(300)]
    rtol = 1e-11 if dtype == np.float64 else 2e-5
    per_level = {}
    try:
        for lv in attnx.simd_available():
            kernels._set_simd_level(lv)
            res = []
            for q, K, V in cases:
                Q = np.stack([q] * 5)
                cache = attnx.KVCache(K.shape[1], V.shape[1], dtype=dtype)
                cache.extend(K, V)
                res.append([attnx.attend(q, K, V), attnx.attend(Q, K, V)[2],
                            attnx.attend(q, K, V, return_weights=True)[0], cache.attend(q)])
            per_level[lv] = res
    finally:
        kernels._set_simd_level(attnx.simd_available()[0])
    levels = list(per_level)
    for i, (q, K, V) in enumerate(cases):
        with np.errstate(all="ignore"):
            want = ref_attend(q.astype(np.float64), K.astype(np.float64), V.astype(np.float64))[0]
        base = per_level[levels[0]][i][0]
        for lv in levels:
            for path, got in zip(("fused", "tiled", "two-pass", "cache"), per_level[lv][i]):
                where = f"case {i}, level {lv}, {path}"
                np.testing.assert_array_equal(np.isnan(got), np.isnan(base), err_msg=where)
                np.testing.assert_array_equal(np.isinf(got), np.isinf(base), err_msg=where)
                fin = np.isfinite(got)
                np.testing.assert_allclose(got[fin], base[fin], rtol=rtol, atol=0, err_msg=where)
                ok = fin & np.isfinite(want) & (np.abs(want) < np.finfo(dtype).max)
                np.testing.assert_allclose(got[ok], want[ok], rtol=rtol,
                                           atol=rtol * np.abs(V).max(initial=0, where=np.isfinite(V)),
                                           err_msg=where)


# --- 6. clear() racing an attend --------------------------------------------

@pytest.mark.simd_independent
@pytest.mark.parametrize("T", [3000, 20000])
def test_clear_never_mixes_rows_into_a_running_attend(T):
    """Generation g fills the cache with rows of value g: an attend that
    sees one generation's rows returns exactly g; mixing two gives another
    number. T = 3000 takes the fast path, 20000 the general one."""
    out = run_py(f"""
        import threading, numpy as np, attnx
        T, d = {T}, 16
        cache = attnx.KVCache(d, 1, capacity=T)
        cache.extend(np.zeros((T, d)), np.zeros((T, 1)))
        q, stop, bad, n = np.zeros(d), threading.Event(), [], [0]
        def reader():
            while not stop.is_set():
                r = cache.attend(q)[0]
                if r != round(r):
                    bad.append(r)
                n[0] += 1
        ts = [threading.Thread(target=reader) for _ in range(2)]
        for t in ts:
            t.start()
        for g in range(1, 300):
            cache.clear()
            cache.extend(np.zeros((T, d)), np.full((T, 1), float(g)))
        stop.set()
        for t in ts:
            t.join()
        assert not bad, bad[:5]
        print("ok", n[0])
    """)
    assert out.split()[0] == "ok"


# --- 7. zero-byte inputs ----------------------------------------------------

@pytest.mark.simd_independent
def test_an_empty_result_returns_at_once_whatever_T_is():
    out = run_py("""
        import numpy as np, attnx
        assert attnx.attend(np.zeros(0), np.zeros((2**33, 0))).shape == (0,)
        assert attnx.attend(np.zeros((3, 0)), np.zeros((2**33, 0))).shape == (3, 0)
        c = attnx.KVCache(0)
        c.extend(np.zeros((2**33, 0)))
        assert c.attend(np.zeros(0)).shape == (0,)
        print("ok")
    """, timeout=60)
    assert out.split() == ["ok"]


# --- 8. a writer whose input appends to the same cache ------------------------

@pytest.mark.simd_independent
def test_a_reentrant_writer_does_not_deadlock():
    out = run_py("""
        import numpy as np, attnx
        cache = attnx.KVCache(2, 2)
        class Row:
            def __init__(self, x): self.x = x
            def __array__(self, dtype=None, copy=None):
                cache.append(np.full(2, -1.0), np.full(2, -1.0))   # re-enters the cache
                return np.full(2, self.x)
        cache.append(Row(1.0), np.full(2, 1.0))
        cache.extend(Row(2.0).__array__()[None], [[2.0, 2.0]])
        cache.extend([Row(3.0)], [Row(3.0)])
        cache.attend(Row(0.5))
        rows = cache.keys[:, 0].tolist()
        assert sorted(rows) == [-1.0] * 5 + [1.0, 2.0, 3.0], rows
        print("ok")
    """, timeout=60)
    assert out.split() == ["ok"]


# --- 9. the smaller defects --------------------------------------------------

@pytest.mark.simd_independent
def test_kvcache_rows_cannot_be_made_writeable():
    cache = attnx.KVCache(3, 2)
    cache.append([1.0, 2.0, 3.0], [4.0, 5.0])
    for view in (cache.keys, cache.values):
        with pytest.raises(ValueError):
            view.flags.writeable = True
        with pytest.raises(ValueError):
            view[0, 0] = 9.0
    shared = attnx.KVCache(3)
    shared.append([1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        shared.keys.flags.writeable = True
    assert cache.keys.tolist() == [[1.0, 2.0, 3.0]]


def test_a_nan_row_is_nan_for_causally_excluded_keys_too(simd):
    """One rule for every excluded key: a NaN query row's weights are all
    NaN, for keys the mask excludes and keys causality excludes alike."""
    rng = np.random.default_rng(3)
    Q, K = rng.standard_normal((4, 3)), rng.standard_normal((6, 3))
    Q[1, 0] = np.nan
    _, w_causal = attnx.attend(Q, K, causal=True, return_weights=True)
    _, w_mask = attnx.attend(Q, K, mask=np.tril(np.ones((4, 6), bool)), return_weights=True)
    assert np.isnan(w_causal[1]).all() and np.isnan(w_mask[1]).all()
    np.testing.assert_array_equal(w_causal, w_mask)
    assert (w_causal[0, 1:] == 0).all()


@pytest.mark.simd_independent
@pytest.mark.skipif(np.finfo(np.longdouble).max <= np.finfo(np.float64).max,
                    reason="long double is double on this platform")
def test_long_double_beyond_float64_is_an_error_not_nan():
    x = np.array([np.longdouble("1e4000"), np.longdouble(0)])
    with pytest.raises(ValueError, match="x holds"), np.errstate(over="ignore"):
        attnx.softmax(x)
    with pytest.raises(ValueError, match="keys holds"), np.errstate(over="ignore"):
        attnx.attend(np.zeros(2), np.stack([x, x]))
    # within range it is rounded to float64, as NumPy's casts do
    ok = np.array([1, 2], np.longdouble)
    np.testing.assert_array_equal(attnx.softmax(ok), attnx.softmax(np.array([1.0, 2.0])))


@pytest.mark.simd_independent
def test_set_simd_level_refuses_none_and_nul():
    with pytest.raises(TypeError):
        kernels._set_simd_level(None)
    with pytest.raises(ValueError, match="NUL"):
        kernels._set_simd_level("scalar\0x")
    assert attnx.simd_level() in attnx.simd_available()
