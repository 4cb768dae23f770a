"""Thread safety: many Python threads calling every function at once on
shared read-only inputs and separate outputs get results bit-identical to a
serial run; a KeyboardInterrupt during a long call leaves the process usable."""
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import attnx

rng = np.random.default_rng(9)


def frozen(a):
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


q, K, V = frozen(rng.standard_normal(64)), frozen(rng.standard_normal((700, 64))), \
    frozen(rng.standard_normal((700, 32)))
Qb = frozen(rng.standard_normal((2, 4, 20, 64)))
Kb, Vb = frozen(rng.standard_normal((2, 4, 50, 64))), frozen(rng.standard_normal((2, 4, 50, 16)))
X = frozen(rng.standard_normal((40, 300)))
W = frozen(attnx.softmax(rng.standard_normal(700)))
LONG_K = frozen(rng.standard_normal((40_000, 8)))
LONG_V = frozen(rng.standard_normal((40_000, 8)))
LONG_Q = frozen(rng.standard_normal(8))
W_GEN = frozen(rng.standard_normal((64, 64)))
W_Q, V_ADD = frozen(rng.standard_normal((16, 64))), frozen(rng.standard_normal(16))
KP = frozen(attnx.project_keys(K, rng.standard_normal((16, 64))))
CACHE = attnx.KVCache(64, 32, capacity=700)
CACHE.extend(K, V)


def work(outs):
    """Every public function, writing into this thread's own outputs."""
    attnx.attend(q, K, V, out=outs["ctx"])
    attnx.attend(Qb, Kb, Vb, causal=True, return_weights=True, out=(outs["bctx"], outs["bw"]))
    attnx.softmax(X, out=outs["sm"])
    attnx.softmax(X, axis=0, out=outs["sm0"])
    attnx.context(W, V, out=outs["c"])
    attnx.dot_score(Qb, Kb, out=outs["s"])
    attnx.attend(LONG_Q, LONG_K, LONG_V, out=outs["long"])     # split across the pool's threads
    attnx.log_softmax(X, out=outs["lsm"])
    attnx.general_score(q, K, W_GEN, out=outs["gen"])
    attnx.additive_score(q, KP, W_Q, V_ADD, out=outs["add"])
    CACHE.attend(q, out=outs["cache"])
    return outs


def new_outs():
    return {"ctx": np.empty(32), "bctx": np.empty((2, 4, 20, 16)), "bw": np.empty((2, 4, 20, 50)),
            "sm": np.empty((40, 300)), "sm0": np.empty((40, 300)), "c": np.empty(32),
            "s": np.empty((2, 4, 20, 50)), "long": np.empty(8), "lsm": np.empty((40, 300)),
            "gen": np.empty(700), "add": np.empty(700), "cache": np.empty(32)}


def test_concurrent_calls_are_bit_identical_to_serial():
    serial = work(new_outs())
    n_threads, rounds = 8, 25

    def run(_):
        outs = new_outs()
        results = []
        for _ in range(rounds):
            results.append({k: v.copy() for k, v in work(outs).items()})
        return results

    with ThreadPoolExecutor(n_threads) as ex:
        for results in ex.map(run, range(n_threads)):
            for res in results:
                for k in serial:
                    np.testing.assert_array_equal(res[k], serial[k], err_msg=k)


@pytest.mark.simd_independent
def test_keyboard_interrupt_during_a_long_call():
    code = textwrap.dedent("""
        import os, signal, threading, numpy as np, attnx
        rng = np.random.default_rng(0)
        q, K = rng.standard_normal(64), rng.standard_normal((400_000, 64))
        small_q, small_K = np.array([5., 1., 20.]), np.array([[3, 12, 45], [59, 2, 5.]])
        want = attnx.attend(small_q, small_K)
        # Python leaves SIGINT alone when it starts ignored (a CI job run
        # in the background of a shell without job control inherits that)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            for _ in range(10_000):
                attnx.attend(q, K)      # ~20 ms each, GIL released
            print("no interrupt")
        except KeyboardInterrupt:
            print("interrupted")
        assert (attnx.attend(small_q, small_K) == want).all()
        assert np.isfinite(attnx.attend(q, K)).all()
        print("usable")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd="/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["interrupted", "usable"]


def _long_call(name):
    """One call, of a few milliseconds at least, of an entry point that
    releases the GIL: long enough that a waiting thread is woken and takes
    the GIL while the call runs, even on a loaded machine."""
    g = np.random.default_rng(21)
    T, d, dv = 1 << 18, 64, 16
    q = g.random(d)

    def kv():
        return g.random((T, d)), g.random((T, dv))

    if name in ("attend", "attend_weights", "attend_general", "attend_additive", "kvcache_attend"):
        K, V = kv()
        if name == "attend":
            return lambda: attnx.attend(q, K, V, num_threads=1)
        if name == "attend_weights":
            return lambda: attnx.attend(q, K, V, return_weights=True, num_threads=1)
        if name == "attend_general":
            W = g.random((d, d))
            return lambda: attnx.attend(q, K, V, score="general", W=W, num_threads=1)
        if name == "attend_additive":
            W_q, v = g.random((32, d)), g.random(32)
            keys_proj = attnx.project_keys(K, g.random((32, d)))
            return lambda: attnx.attend(q, K, V, score="additive", W_q=W_q, v=v,
                                        keys_proj=keys_proj, num_threads=1)
        cache = attnx.KVCache(d, dv, capacity=T)
        cache.extend(K, V)
        return lambda: cache.attend(q, num_threads=1)
    if name == "attend_float32":
        K32, q32 = g.random((2 * T, d), dtype=np.float32), q.astype(np.float32)
        return lambda: attnx.attend(q32, K32, num_threads=1)
    if name == "attend_batched":          # compute-bound: 2^28 multiply-adds
        Qb, Kb = g.random((1, 1, 512, d)), g.random((1, 1, 4096, d))
        return lambda: attnx.attend(Qb, Kb, num_threads=1)
    # the fast paths (default num_threads): twice the data for two threads
    if name == "dot_score":
        K = g.random((2 * T, d))
        return lambda: attnx.dot_score(q, K)
    if name in ("softmax", "log_softmax"):
        row = g.random(1 << 23)
        f = getattr(attnx, name)
        return lambda: f(row)
    if name == "dot_score_zero_width":    # 0 bytes per key, still a loop over T
        q0, K0 = np.zeros(0), np.zeros((1 << 24, 0))
        return lambda: attnx.dot_score(q0, K0)
    if name == "context":
        w, V = attnx.softmax(g.random(2 * T)), g.random((2 * T, d))
        return lambda: attnx.context(w, V)
    raise KeyError(name)


LONG_CALLS = ["attend", "attend_weights", "attend_float32", "attend_batched", "attend_general",
              "attend_additive", "dot_score", "softmax", "log_softmax", "context",
              "kvcache_attend", "dot_score_zero_width"]


@pytest.mark.simd_independent
@pytest.mark.parametrize("name", LONG_CALLS)
def test_the_gil_is_released_during_long_calls(name):
    """Deterministic, no clock involved. With the interpreter's switch interval
    raised far beyond the test's length, CPython never forces a thread switch:
    the main thread can run only when the worker blocks or releases the GIL.
    The worker repeats a long call until it sees that the main thread has run.
    Were the GIL held through the calls, the main thread could run only after
    the worker had finished all of them; released, it runs during the first."""
    import threading
    call = _long_call(name)
    call()  # warm: first-call allocations and dispatch outside the measurement
    rounds = 50
    started, main_ran = threading.Event(), threading.Event()
    done = []

    def worker():
        started.set()
        for i in range(rounds):
            if main_ran.is_set():
                break
            call()
            done.append(i)

    old = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        t = threading.Thread(target=worker)
        t.start()
        started.wait()
        main_ran.set()
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert len(done) < rounds, f"the main thread ran only after all {rounds} {name} calls"


@pytest.mark.simd_independent
def test_kvcache_growing_while_another_thread_attends():
    """reserve/append reallocate the cache's buffers; an attend running at
    that moment must keep reading the buffers it started with, never freed
    memory (a subprocess, so a crash fails this test instead of pytest)."""
    code = textwrap.dedent("""
        import threading, numpy as np, attnx
        rng = np.random.default_rng(0)
        cache = attnx.KVCache(16, 16, capacity=8000)
        cache.extend(rng.standard_normal((8000, 16)), rng.standard_normal((8000, 16)))
        q, out = rng.standard_normal(16), np.empty(16)
        want = attnx.attend(q, cache.keys, cache.values)
        stop = threading.Event()
        def grow():
            for _ in range(12):
                cache.reserve(2 * cache.capacity)
            stop.set()
        t = threading.Thread(target=grow)
        t.start()
        n = 0
        while not stop.is_set() or n < 50:
            cache.attend(q, out=out)
            assert np.array_equal(out, want)
            n += 1
        t.join()
        print("ok", n)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       cwd="/")
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert p.stdout.startswith("ok")


@pytest.mark.simd_independent
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kvcache_several_writers_lose_and_mix_nothing(dtype):
    """Four threads append (fast path, converted lists, one-row extends) to
    one cache that starts with room for one row, so it reallocates while
    others write. Every row is a key k with value 2k: a lost, doubled or
    interleaved row shows up as a wrong count or a row where v != 2k."""
    import threading
    cache = attnx.KVCache(8, 8, capacity=1, dtype=dtype)
    n_threads, n_rows = 4, 3000

    def writer(seed):
        g = np.random.default_rng(seed)
        for i in range(n_rows):
            k = g.standard_normal(8).astype(dtype)
            if i % 3 == 0:
                cache.append(k.tolist(), (2 * k).tolist())
            elif i % 3 == 1:
                cache.extend(k[None], 2 * k[None])
            else:
                cache.append(k, 2 * k)
            if i % 500 == 0:
                cache.reserve(len(cache) + 64)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == n_threads * n_rows
    np.testing.assert_array_equal(cache.values, 2 * cache.keys)
    # each thread's rows, in its own order, are all there
    got = {tuple(r) for r in cache.keys.tolist()}
    for s in range(n_threads):
        g = np.random.default_rng(s)
        want = {tuple(g.standard_normal(8).astype(dtype).tolist()) for _ in range(n_rows)}
        assert want <= got


SMALL_STACK_SCRIPT = textwrap.dedent("""
    import threading, sys
    import numpy as np, attnx
    def work():
        rng = np.random.default_rng(0)
        for dt in (np.float64, np.float32):
            for d in (64, 130):
                q, k, v, g = (rng.standard_normal((2, 2, 70, d)).astype(dt) for _ in range(4))
                bias = rng.standard_normal((70, 70)).astype(dt)
                for nt in (1, 2):
                    kw = dict(causal=True, bias=bias, softcap=5.0, num_threads=nt)
                    out, lse = attnx.attend(q, k, v, return_lse=True, **kw)
                    attnx.attend_backward(g, q, k, v, out, lse, grad_bias=True, **kw)
                qp, kp, vp = q[0].transpose(1, 0, 2).copy(), k[0].transpose(1, 0, 2).copy(), \\
                    v[0].transpose(1, 0, 2).copy()
                cu = np.array([0, 30, 70])
                o, l = attnx.attend_varlen(qp, kp, vp, cu, cu, causal=True, return_lse=True)
                attnx.attend_varlen_backward(o, qp, kp, vp, o, l, cu, cu, causal=True)
                w = attnx.softmax(attnx.dot_score(q[0, 0, 0], k[0, 0]))
                attnx.context(w, v[0, 0])
                attnx.attend(q[0, 0, 0], k[0, 0], v[0, 0])
                attnx.log_softmax(q, axis=-1)
                c = attnx.KVCache(d, d, dtype=dt)
                c.extend(k[0, 0], v[0, 0])
                c.attend(q[0, 0, 0])
            attnx.additive_score(q[0, 0, 0, :8], k[0, 0, :, :8], np.eye(8, dtype=dt), q[0, 0, 1, :8])
        print("done")
    threading.stack_size(128 * 1024)
    t = threading.Thread(target=work)
    t.start()
    t.join()
""")


def test_every_kernel_runs_on_a_128_kib_thread_stack(simd):
    """musl's default thread stack is 128 KiB, and a caller may set one with
    threading.stack_size: the calling thread and attnx's own workers (whose
    default stack glibc takes from `ulimit -s`, set here to 128 KiB) must
    not overflow it. The backward once kept 0.5-1 MiB of scratch on the
    stack whatever d was, and crashed there."""
    import resource

    def small_stack():
        resource.setrlimit(resource.RLIMIT_STACK, (128 * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    p = subprocess.run([sys.executable, "-c", SMALL_STACK_SCRIPT], capture_output=True, text=True,
                       env={**os.environ, "ATTNX_SIMD": simd}, preexec_fn=small_stack, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "done", (p.returncode, p.stderr[-2000:])
