"""Side-by-side benchmarks: ``python -m attnx bench [--quick] [--threads N]``.

Every row times attnx and its competitors in the same process, interleaved
round by round (so a noisy neighbour hits all of them alike), and reports the
median time per call and the ratio competitor / attnx (> 1: attnx is faster).
NumPy runs with single-threaded BLAS (threadpoolctl, from ``attnx[bench]``)
unless a row says otherwise, and which BLAS kernel it used is printed; without
threadpoolctl the bench still runs and says what it could not do. A floor (a
plain read of the same bytes) is a bound, not a competitor: it appears in the
row's note. One table is printed, aligned text or (``--markdown``) Markdown.

Competitors: the tutorial's pipeline (exp in long double, its workaround for
the overflow), the best hand-written stable NumPy pipeline, SciPy's softmax,
and PyTorch's scaled_dot_product_attention and softmax when torch imports.
"""
import contextlib
import os
import platform
import statistics
import sys
import time

import numpy as np

from . import _core, kernels
from ._core import KVCache
from ._version import __version__


# --- timing -----------------------------------------------------------------

def _per_call(fn, min_time):
    """Seconds per call of fn, timing enough calls to fill min_time."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time or n >= 1 << 24:
            return dt / n, n
        n = max(n * 2, int(n * min_time / max(dt, 1e-9) * 1.2))


def compare(fns, rounds, min_time, settle=0.0):
    """{name: median seconds per call}, the candidates interleaved per round.
    settle: seconds to sleep before each candidate's turn, so that worker
    threads another left spinning (OpenMP's, after torch's multi-threaded
    calls) have gone idle and do not take its cores."""
    counts = {}
    for name, fn in fns.items():          # warm up and size the inner loops
        fn()
        counts[name] = _per_call(fn, min_time / 4)[1]
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = counts[name]
            if settle:
                time.sleep(settle)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


def _fmt_time(s):
    for unit, f in (("s", 1), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if s >= f:
            return f"{s / f:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


# --- competitors ------------------------------------------------------------

def numpy_stable(q, K, V):
    """The best hand-written stable NumPy pipeline."""
    s = K @ q
    s -= s.max()
    np.exp(s, out=s)
    s /= s.sum()
    return s @ V


def tutorial(q, K, V):
    """The tutorial's pipeline: naive softmax, made to work in long double."""
    s = (K @ q).astype(np.longdouble)
    w = np.exp(s)
    w /= w.sum()
    return (w[:, None] * V).sum(axis=0).astype(np.float64)


def numpy_softmax(x):
    s = x - x.max()
    np.exp(s, out=s)
    s /= s.sum()
    return s


def _t4(torch, a):
    """a NumPy array as a torch tensor of 4 dimensions (leading 1s), no copy:
    torch's CPU flash kernel takes 4-D inputs only, and 3-D ones fall back
    to its math path, 2-3x slower (measured on torch 2.13), which would flatter
    attnx's ratios"""
    t = torch.from_numpy(a)
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))


def _torch():
    try:
        import torch
        return torch
    except Exception:
        return None


def read_bandwidth(nbytes, rounds):
    """Single-thread read bandwidth (bytes/s) of a large array, and the probe
    that achieved it: the best of NumPy's vectorised max, BLAS ddot and
    attnx's own dot_score (which streams the rows once). Each reads every
    byte once and does too little arithmetic to be the bottleneck."""
    a = np.ones(nbytes // 8)
    A = a.reshape(-1, 64)
    q = np.ones(64)
    s = np.empty(A.shape[0])
    probes = {"numpy max": a.max, "BLAS ddot": lambda: np.dot(a, a),
              "attnx dot_score": lambda: _core.dot_score(q, A, out=s, num_threads=1)}
    best = {}
    for name, fn in probes.items():
        fn()
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        best[name] = a.nbytes / statistics.median(ts)
    name = max(best, key=best.get)
    return best[name], name


def _floor_note(t_attnx, t_numpy, t_floor, nbytes):
    """The read floor (BLAS ddot reading the same K and V once: no single-query
    attention reads fewer bytes) as a note: attnx's share of it, and the
    ratio to NumPy that the floor itself would reach, attnx's ceiling here."""
    gbs, floor = nbytes / t_attnx, nbytes / t_floor
    return (f"read floor (BLAS ddot over K, V once) {_fmt_time(t_floor)}: attnx at "
            f"{100 * gbs / floor:.0f}% of its {floor / 1e9:.1f} GB/s; NumPy / floor = "
            f"{t_numpy / t_floor:.2f}x")


# --- the table ----------------------------------------------------------------

class Table:
    """Rows of (case, implementation, time, ratio, note), printed once at the
    end, as aligned text or Markdown. The first implementation of a case is
    the base of its ratios."""
    HEAD = ("case", "implementation", "time per call", "its time / attnx's", "note")

    def __init__(self):
        self.rows = []

    def add(self, case, times, base="attnx", note=""):
        t0 = times[base]
        order = [base] + [n for n in times if n != base]
        for name in order:
            t = times[name]
            ratio = "" if name == base else f"{t / t0:.2f}x"
            self.rows.append((case if name == base else "", name, _fmt_time(t), ratio,
                              note if name == base else ""))
        print(f"  {case}: attnx {_fmt_time(t0)}", file=sys.stderr, flush=True)

    def markdown(self):
        out = ["| " + " | ".join(self.HEAD) + " |", "|---|---|---:|---:|---|"]
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(out)

    def text(self):
        """Aligned columns sized to their longest entry; the note, free text,
        comes last."""
        cols = list(zip(self.HEAD, *self.rows))
        width = [max(len(x) for x in col) for col in cols[:4]]
        right = (False, False, True, True)

        def line(r):
            cells = [c.rjust(w) if rt else c.ljust(w) for c, w, rt in zip(r[:4], width, right)]
            return ("  ".join(cells) + ("  " + r[4] if r[4] else "")).rstrip()
        out = [line(self.HEAD), "  ".join("-" * w for w in width)]
        out += [line(r) for r in self.rows]
        return "\n".join(out)


def machine():
    """The CPU, named well enough to compare tables: model name, and on
    Linux/x86 the family/model numbers and whether AVX-512 is there (cloud
    VMs often report only "AMD EPYC" or "Intel Xeon Processor")."""
    cpu = platform.processor() or platform.machine()
    extra = []
    try:
        info = {}
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break                       # the first processor is enough
                k, _, v = line.partition(":")
                info[k.strip()] = v.strip()
        cpu = info.get("model name", cpu)
        if "cpu family" in info:
            extra.append(f"family {info['cpu family']} model {info.get('model', '?')}")
        flags = info.get("flags", "").split()
        if flags:
            extra.append("AVX-512" if "avx512f" in flags else
                         "AVX2, no AVX-512" if "avx2" in flags else "no AVX2")
    except OSError:
        pass
    extra_s = f" ({'; '.join(extra)})" if extra else ""
    return f"{cpu}{extra_s}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


ROWS = ("tiny", "cache", "long", "softmax", "gemm", "batched", "float32", "cliff", "loop",
        "threads", "bias", "window", "key_lengths", "gqa", "varlen")


def gemm_rate(n, dtype, rounds):
    """Single-thread GFLOP/s of NumPy's BLAS multiplying two square n x n
    matrices (2 n^3 flops): the reference rate of the batched rows, which do
    two GEMMs' worth of work (4 L T d flops)."""
    g = np.random.default_rng(1)
    a, b = g.standard_normal((n, n)).astype(dtype), g.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    t = compare({"gemm": lambda: np.matmul(a, b, out=c)}, rounds, 0.2)["gemm"]
    return 2.0 * n ** 3 / t / 1e9


def _rate_note(t, flops, gemm):
    """GFLOP/s of a batched row and its share of the same-run GEMM rate."""
    rate = flops / t / 1e9
    return f"{rate:.1f} GFLOP/s = {100 * rate / gemm:.0f}% of the GEMM rate" if gemm else \
        f"{rate:.1f} GFLOP/s"


def cliff_scores(n, dtype, rng):
    """Ordinary scores (N(0, 1)) and the same with 10% of them set to
    max - 60 (float32) / max - 680 (float64): their exp is a normal number
    whose products with a rounding correction are subnormal, the operands on
    which Intel cores take a microcode assist."""
    x = rng.standard_normal(n).astype(dtype)
    gap = 60.0 if dtype == np.float32 else 680.0
    y = x.copy()
    idx = rng.choice(n, n // 10, replace=False)
    y[idx] = x.max() - gap
    return x, y


def _blas_control():
    """(context manager limiting BLAS to one thread, description of NumPy's
    BLAS, what was skipped or None): threadpoolctl when it is installed."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return (contextlib.nullcontext(), "not reported",
                "threadpoolctl is not installed (pip install \"attnx[bench]\"): NumPy's BLAS "
                "runs with its default thread count and its kernel is not reported")
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')})"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return threadpool_limits(1), ", ".join(blas) or "none found", None


def run(quick=False, threads=None, only=None):
    """Time the rows named in `only` (default: all of ROWS); return the Table."""
    only = ROWS if only is None else tuple(only)
    unknown = set(only) - set(ROWS)
    if unknown:
        raise ValueError(f"unknown bench rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    rng = np.random.default_rng(0)
    rounds, min_time = (5, 0.02) if quick else (15, 0.05)
    nthreads = threads or max(2, min(os.cpu_count() or 1, 2))
    torch = _torch()
    limit_blas, blas, skipped = _blas_control()
    print(f"attnx {__version__}, kernels {kernels.simd_level()}, {kernels.build_info()}")
    print(f"machine: {machine()}")
    print(f"numpy {np.__version__}, BLAS: {blas}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    if skipped:
        print(f"skipped: {skipped}")
    print(f"torch {torch.__version__}" if torch is not None
          else "torch not installed: its columns are left out")
    print(f"median of {rounds} interleaved rounds; ratio = competitor time / attnx time\n")
    table = Table()
    d = 64
    state = {}

    with limit_blas:
        if torch is not None:
            torch.set_num_threads(1)

        if "tiny" in only:
            # the worked example, attend with out=
            q = np.array([5.0, 1.0, 20.0])
            K = np.array([[3, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]])
            out = np.empty(3)
            fns = {"attnx": lambda: _core.attend(q, K, K, out=out),
                   "numpy stable pipeline": lambda: numpy_stable(q, K, K),
                   "tutorial pipeline": lambda: tutorial(q, K, K)}
            if torch is not None:
                tq, tk = _t4(torch, q[None]), _t4(torch, K)
                fns["torch sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(
                    tq, tk, tk, scale=1.0)
            table.add("tiny: T=4, d=3, out=", compare(fns, rounds, min_time))

        if "cache" in only:
            # cache-resident single query
            T = 1024
            q, K, V = rng.standard_normal(d), rng.standard_normal((T, d)), rng.standard_normal((T, d))
            out = np.empty(d)
            Kf, Vf = K.ravel(), V.ravel()
            fns = {"attnx": lambda: _core.attend(q, K, V, out=out),
                   "numpy stable pipeline": lambda: numpy_stable(q, K, V),
                   "tutorial pipeline": lambda: tutorial(q, K, V)}
            if torch is not None:
                tq, tk, tv = (_t4(torch, a) for a in (q[None], K, V))
                fns["torch sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
            # the floor, timed in the same interleaved rounds but reported as a
            # note: one read of the same K and V by BLAS ddot
            fns["floor"] = lambda: np.dot(Kf, Vf)
            res = compare(fns, rounds, min_time)
            floor = res.pop("floor")
            table.add(f"cache: T={T}, d=dv={d}", res,
                      note=_floor_note(res["attnx"], res["numpy stable pipeline"], floor,
                                       16 * T * d))
            # values = keys: half the bytes (512 KB)
            fns = {"attnx": lambda: _core.attend(q, K, out=out),
                   "numpy stable pipeline": lambda: numpy_stable(q, K, K),
                   "floor": lambda: np.dot(Kf, Kf)}
            res = compare(fns, rounds, min_time)
            floor = res.pop("floor")
            table.add(f"cache: T={T}, d={d}, values=keys", res,
                      note=_floor_note(res["attnx"], res["numpy stable pipeline"], floor,
                                       8 * T * d))

        if "long" in only or "threads" in only:
            # long single query, DRAM-bound
            T = 1 << (18 if quick else 20)
            K = rng.standard_normal((T, d))
            V = rng.standard_normal((T, d))
            q = rng.standard_normal(d)
            out = np.empty(d)
            state["long"] = (q, K, V, out, T)
        if "long" in only:
            bw, probe = read_bandwidth(512 << 20 if not quick else 128 << 20, 5)
            fns = {"attnx": lambda: _core.attend(q, K, V, out=out, num_threads=1),
                   "numpy stable pipeline": lambda: numpy_stable(q, K, V)}
            res = compare(fns, max(3, rounds // 3), min_time)
            gbs = 16 * T * d / res["attnx"]
            table.add(f"long: T=2^{T.bit_length() - 1}, d=dv={d}", res,
                      note=f"{gbs / 1e9:.1f} GB/s = {100 * gbs / bw:.0f}% of the "
                           f"{bw / 1e9:.1f} GB/s single-thread read ({probe})")
            state["long_1"] = res["attnx"]

        if "softmax" in only:
            for n in (1_000_000, 1000):
                x = rng.standard_normal(n) * 10
                y = np.empty(n)
                fns = {"attnx": lambda: _core.softmax(x, out=y),
                       "numpy stable softmax": lambda: numpy_softmax(x)}
                try:
                    import scipy.special
                    fns["scipy.special.softmax"] = lambda: scipy.special.softmax(x)
                except ImportError:
                    pass
                if torch is not None:
                    tx = torch.from_numpy(x)
                    fns["torch softmax"] = lambda: torch.softmax(tx, 0)
                table.add(f"softmax: n={n}", compare(fns, rounds, min_time))

        B, H, L = (2, 4, 256) if quick else (8, 8, 512)
        scale = d ** -0.5
        gemm = {}
        if "gemm" in only or "batched" in only or "float32" in only:
            n = 1024 if quick else 2048
            for dt, name in ((np.float64, "float64"), (np.float32, "float32")):
                gemm[name] = gemm_rate(n, dt, max(3, rounds // 3))
            if "gemm" in only:
                table.add(f"GEMM reference: {n}x{n}, NumPy BLAS, 1 thread",
                          {"numpy matmul": 2.0 * n ** 3 / gemm["float64"] / 1e9},
                          base="numpy matmul",
                          note=f"float64 {gemm['float64']:.1f} GFLOP/s, "
                               f"float32 {gemm['float32']:.1f} GFLOP/s")
        flops = 4.0 * B * H * L * L * d
        if "batched" in only or "float32" in only:
            Q, Kb, Vb = (rng.standard_normal((B, H, L, d)) for _ in range(3))
        if "batched" in only:
            # batched multi-query attention vs PyTorch, same thread count
            ob = np.empty((B, H, L, d))
            for nt in (1, nthreads):
                fns = {"attnx": lambda nt=nt: _core.attend(Q, Kb, Vb, scale=scale, out=ob,
                                                           num_threads=nt)}
                if torch is not None:
                    tQ, tK, tV = (torch.from_numpy(a) for a in (Q, Kb, Vb))

                    def sdpa(nt=nt):
                        torch.set_num_threads(nt)
                        return torch.nn.functional.scaled_dot_product_attention(tQ, tK, tV)
                    fns["torch sdpa (float64)"] = sdpa
                if nt > 1:
                    # the speedup from the same rounds (the machine's drift
                    # between two separate runs fell on the ratio)
                    fns["attnx, 1 thread"] = lambda: _core.attend(Q, Kb, Vb, scale=scale, out=ob,
                                                                  num_threads=1)
                # with threads, OpenMP's workers spin on after each torch call
                # (measured here: attnx's 2-thread time 8% longer right after one)
                res = compare(fns, max(3, rounds // 3), min_time, settle=0.5 if nt > 1 else 0.0)
                if nt == 1:
                    batched_1 = res["attnx"]
                    table.add(f"batched: B={B} H={H} L={L} d={d}, 1 thread", res,
                              note=_rate_note(res["attnx"], flops, gemm.get("float64")))
                else:
                    table.add(f"batched, {nt} threads", res,
                              note=f"{res['attnx, 1 thread'] / res['attnx']:.2f}x its 1-thread time "
                                   f"(same rounds)")
            # causal: about half the tiles, against the full row above
            fns = {"attnx": lambda: _core.attend(Q, Kb, Vb, scale=scale, causal=True, out=ob,
                                                 num_threads=1)}
            if torch is not None:
                tQ, tK, tV = (torch.from_numpy(a) for a in (Q, Kb, Vb))
                torch.set_num_threads(1)
                fns["torch sdpa (float64)"] = lambda: torch.nn.functional.scaled_dot_product_attention(
                    tQ, tK, tV, is_causal=True)
            res = compare(fns, max(3, rounds // 3), min_time)
            table.add(f"batched causal: B={B} H={H} L={L} d={d}, 1 thread", res,
                      note=f"{batched_1 / res['attnx']:.2f}x faster than full")
            if torch is not None:
                torch.set_num_threads(1)

        if "float32" in only:
            # the same kernels with twice the lanes, against NumPy and PyTorch in float32
            T = 1024
            q32, K32, V32 = (rng.standard_normal(s).astype(np.float32)
                             for s in ((d,), (T, d), (T, d)))
            o32 = np.empty(d, np.float32)
            fns = {"attnx": lambda: _core.attend(q32, K32, V32, out=o32),
                   "numpy stable pipeline": lambda: numpy_stable(q32, K32, V32)}
            if torch is not None:
                tq, tk, tv = (_t4(torch, a) for a in (q32[None], K32, V32))
                fns["torch sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
            table.add(f"float32 cache: T={T}, d=dv={d}", compare(fns, rounds, min_time))
            x32 = rng.standard_normal(1_000_000).astype(np.float32) * 10
            y32 = np.empty_like(x32)
            fns = {"attnx": lambda: _core.softmax(x32, out=y32),
                   "numpy stable softmax": lambda: numpy_softmax(x32)}
            if torch is not None:
                tx32 = torch.from_numpy(x32)
                fns["torch softmax"] = lambda: torch.softmax(tx32, 0)
            table.add("float32 softmax: n=1000000", compare(fns, rounds, min_time))
            Q32, Kb32, Vb32 = (a.astype(np.float32) for a in (Q, Kb, Vb))
            ob32 = np.empty(Q32.shape, np.float32)
            fns = {"attnx": lambda: _core.attend(Q32, Kb32, Vb32, scale=scale, out=ob32,
                                                 num_threads=1)}
            if torch is not None:
                tQ32, tK32, tV32 = (torch.from_numpy(a) for a in (Q32, Kb32, Vb32))
                fns["torch sdpa (float32)"] = lambda: \
                    torch.nn.functional.scaled_dot_product_attention(tQ32, tK32, tV32)
            res = compare(fns, max(3, rounds // 3), min_time)
            table.add(f"float32 batched: B={B} H={H} L={L}, 1 thread", res,
                      note=_rate_note(res["attnx"], flops, gemm.get("float32")))

        if "cliff" in only:
            # the same kernels on scores whose exp products go subnormal
            n = 200_000 if quick else 1_000_000
            for dt in (np.float32, np.float64):
                x, y = cliff_scores(n, dt, rng)
                out = np.empty_like(x)
                for name, f in (("softmax", _core.softmax), ("log_softmax", _core.log_softmax)):
                    res = compare({"attnx ordinary": lambda f=f: f(x, out=out),
                                   "attnx cliff": lambda f=f: f(y, out=out)}, rounds, min_time)
                    table.add(f"cliff: {name} {np.dtype(dt).name} n={n}", res,
                              base="attnx ordinary",
                              note=f"cliff/ordinary {res['attnx cliff'] / res['attnx ordinary']:.2f}x")
                # the fused attend: the scores are column 0 of K against q = e0.
                # K and V within L2 (256 KB each in float64): the cliff is in
                # the arithmetic, and DRAM-sized arrays made this row's ratio
                # swing 0.65-1.35x with where each array's pages fell
                T = 4096
                K1 = np.zeros((T, 8), dt)
                qe = np.zeros(8, dt)
                qe[0] = 1
                Kx, Ky = K1.copy(), K1.copy()
                Kx[:, 0], Ky[:, 0] = x[:T], y[:T]
                V1 = rng.standard_normal((T, 8)).astype(dt)
                o8 = np.empty(8, dt)
                res = compare({"attnx ordinary": lambda: _core.attend(qe, Kx, V1, out=o8,
                                                                       num_threads=1),
                               "attnx cliff": lambda: _core.attend(qe, Ky, V1, out=o8,
                                                                    num_threads=1)},
                              rounds, min_time)
                table.add(f"cliff: attend {np.dtype(dt).name} T={T} d=8", res,
                          base="attnx ordinary",
                          note=f"cliff/ordinary {res['attnx cliff'] / res['attnx ordinary']:.2f}x")

        if "loop" in only:
            # a decoding loop: append a key and a value, attend
            steps = 300 if quick else 1000
            ks, vs, qs = (rng.standard_normal((steps, d)) for _ in range(3))
            ctx = np.empty(d)

            def loop_attnx():
                cache = KVCache(d, d, capacity=16)
                for t in range(steps):
                    cache.append(ks[t], vs[t])
                    cache.attend(qs[t], out=ctx)

            def loop_numpy():
                Kbuf, Vbuf = np.empty((steps, d)), np.empty((steps, d))
                for t in range(steps):
                    Kbuf[t], Vbuf[t] = ks[t], vs[t]
                    numpy_stable(qs[t], Kbuf[:t + 1], Vbuf[:t + 1])

            fns = {"attnx KVCache": loop_attnx, "numpy, preallocated": loop_numpy}
            if torch is not None:
                tks, tvs, tqs = (torch.from_numpy(a) for a in (ks, vs, qs))

                def loop_torch():
                    Kbuf, Vbuf = torch.empty((1, 1, steps, d), dtype=torch.float64), \
                        torch.empty((1, 1, steps, d), dtype=torch.float64)
                    for t in range(steps):
                        Kbuf[0, 0, t], Vbuf[0, 0, t] = tks[t], tvs[t]
                        torch.nn.functional.scaled_dot_product_attention(
                            tqs[t][None, None, None], Kbuf[:, :, :t + 1], Vbuf[:, :, :t + 1])
                fns["torch sdpa, preallocated"] = loop_torch
            table.add(f"decoding loop: {steps} steps, d=dv={d}",
                      compare(fns, max(3, rounds // 3), min_time), base="attnx KVCache")

        if "threads" in only:
            # threads on the long single query (flash-decoding split)
            q, K, V, out, T = state["long"]
            res = compare({"attnx": lambda: _core.attend(q, K, V, out=out, num_threads=nthreads)},
                          max(3, rounds // 3), min_time)
            # split-K: the same bits at any thread count
            same = np.array_equal(_core.attend(q, K, V, num_threads=1),
                                  _core.attend(q, K, V, num_threads=nthreads))
            note = (f"{state['long_1'] / res['attnx']:.2f}x its 1-thread time"
                    if "long_1" in state else "")
            note += f"{'; ' if note else ''}bits {'equal to' if same else 'DIFFER from'} 1 thread"
            table.add(f"long: T=2^{T.bit_length() - 1}, {nthreads} threads", res, note=note)
            # merging: the long query as 64 key chunks, each attended with
            # return_lse, then merge_attention, against the one call
            chunk = T // 64
            parts = [_core.attend(q, K[a:a + chunk], V[a:a + chunk], return_lse=True,
                                  num_threads=1) for a in range(0, T, chunk)]
            outs, lses = np.stack([o for o, _ in parts]), np.stack([x for _, x in parts])
            res = compare({"merge_attention of 64 partials": lambda: _core.merge_attention(outs, lses)},
                          rounds, min_time)
            if "long_1" in state:
                share = res["merge_attention of 64 partials"] / state["long_1"]
                note = f"{100 * share:.2f}% of the 1-thread attention time of the whole"
            else:
                note = ""
            table.add(f"merge: 64 chunks of T=2^{T.bit_length() - 1}, dv={V.shape[1]}", res,
                      base="merge_attention of 64 partials", note=note)
        _feature_rows(table, only, quick, rng, rounds, min_time, d)
    return table


def _feature_rows(table, only, quick, rng, rounds, min_time, d):
    """Issue 13's options against attnx without them, in the same run, one
    thread: what each costs or saves, with the target in the note."""
    r = max(3, rounds // 3)
    scale = d ** -0.5
    # a few % apart: more rounds of a smaller batch than the batched rows'
    B, H, L = (2, 4, 256) if quick else (4, 4, 512)
    if "bias" in only or "key_lengths" in only:
        Q, K, V = (rng.standard_normal((B, H, L, d)) for _ in range(3))
        out = np.empty_like(Q)
    if "bias" in only:
        bias = rng.standard_normal((1, 1, L, L))
        res = compare({"attnx, no bias": lambda: _core.attend(Q, K, V, scale=scale, out=out,
                                                               num_threads=1),
                       "attnx, bias (1, 1, L, L)": lambda: _core.attend(
                           Q, K, V, scale=scale, bias=bias, out=out, num_threads=1)},
                      rounds, min_time)
        cost = res["attnx, bias (1, 1, L, L)"] / res["attnx, no bias"] - 1
        table.add(f"bias: B={B} H={H} L={L} d={d}, 1 thread", res, base="attnx, no bias",
                  note=f"a broadcast bias costs {100 * cost:+.0f}% (target <= 15%)")
    if "key_lengths" in only:
        half = np.full((B, 1), L // 2)
        res = compare({"attnx, all T keys": lambda: _core.attend(Q, K, V, scale=scale, out=out,
                                                                  num_threads=1),
                       "attnx, key_lengths = T/2": lambda: _core.attend(
                           Q, K, V, scale=scale, key_lengths=half, out=out, num_threads=1)},
                      rounds, min_time)
        gain = res["attnx, all T keys"] / res["attnx, key_lengths = T/2"]
        table.add(f"key_lengths: B={B} H={H} L=T={L} d={d}, 1 thread", res,
                  base="attnx, all T keys",
                  note=f"{gain:.2f}x faster at half the keys (target >= 1.8x)")
    if "window" in only:
        Lw = 2048 if quick else 4096
        Qw, Kw, Vw = (rng.standard_normal((1, 1, Lw, d)) for _ in range(3))
        ow = np.empty_like(Qw)
        res = compare({"attnx, causal": lambda: _core.attend(Qw, Kw, Vw, scale=scale,
                                                              causal=True, out=ow,
                                                              num_threads=1),
                       "attnx, causal window=(256, 0)": lambda: _core.attend(
                           Qw, Kw, Vw, scale=scale, causal=True, window=(256, 0), out=ow,
                           num_threads=1)}, r, min_time)
        gain = res["attnx, causal"] / res["attnx, causal window=(256, 0)"]
        table.add(f"window: L={Lw} d={d}, 1 thread", res, base="attnx, causal",
                  note=f"{gain:.2f}x faster than full causal (target >= 5x at L=4096)")
    if "gqa" in only:
        Hq, Hkv = 16, 2
        Lg = 256 if quick else 512
        Qg = rng.standard_normal((2, Hq, Lg, d))
        Kg, Vg = (rng.standard_normal((2, Hkv, Lg, d)) for _ in range(2))
        Km, Vm = (rng.standard_normal((2, Hq, Lg, d)) for _ in range(2))
        og = np.empty_like(Qg)
        res = compare({"attnx, MHA (16 kv heads)": lambda: _core.attend(
                           Qg, Km, Vm, scale=scale, causal=True, out=og, num_threads=1),
                       "attnx, GQA (2 kv heads)": lambda: _core.attend(
                           Qg, Kg, Vg, scale=scale, causal=True, enable_gqa=True, out=og,
                           num_threads=1)}, r, min_time)
        ratio = res["attnx, MHA (16 kv heads)"] / res["attnx, GQA (2 kv heads)"]
        table.add(f"GQA H/Hkv=8: B=2 H=16 L={Lg} d={d} causal, 1 thread", res,
                  base="attnx, MHA (16 kv heads)",
                  note=f"GQA {ratio:.2f}x the speed of MHA (target >= 1x)")
        # decoding: one query row per head over a long cache, where K and V dominate
        Td = 4096 if quick else 16384
        q1 = rng.standard_normal((1, Hq, 1, d))
        Kg1, Vg1 = (rng.standard_normal((1, Hkv, Td, d)) for _ in range(2))
        Km1, Vm1 = (rng.standard_normal((1, Hq, Td, d)) for _ in range(2))
        o1 = np.empty_like(q1)
        res = compare({"attnx, MHA (16 kv heads)": lambda: _core.attend(
                           q1, Km1, Vm1, scale=scale, out=o1, num_threads=1),
                       "attnx, GQA (2 kv heads)": lambda: _core.attend(
                           q1, Kg1, Vg1, scale=scale, enable_gqa=True, out=o1, num_threads=1)},
                      r, min_time)
        ratio = res["attnx, MHA (16 kv heads)"] / res["attnx, GQA (2 kv heads)"]
        table.add(f"GQA decode: H=16 Hkv=2 Lq=1 T={Td} d={d}, 1 thread", res,
                  base="attnx, MHA (16 kv heads)",
                  note=f"GQA {ratio:.2f}x the speed of MHA (8x fewer K/V bytes)")
    if "varlen" in only:
        lens = np.array([64, 128, 256, 512, 1024, 96, 384, 768]) // (4 if quick else 1)
        Hv, Lmax, n = 4, int(lens.max()), int(lens.sum())
        cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        qv, kv, vv = (rng.standard_normal((n, Hv, d)) for _ in range(3))
        ov = np.empty_like(qv)
        # the same sequences padded to the longest: (8, H, Lmax, d), key_lengths
        pads = []
        for x in (qv, kv, vv):
            p = np.zeros((len(lens), Hv, Lmax, d))
            for s in range(len(lens)):
                p[s, :, :lens[s]] = x[cu[s]:cu[s + 1]].transpose(1, 0, 2)
            pads.append(p)
        Qp, Kp, Vp = pads
        op = np.empty_like(Qp)
        kl = lens[:, None]
        res = compare({"attnx, padded + key_lengths": lambda: _core.attend(
                           Qp, Kp, Vp, scale=scale, causal=True, key_lengths=kl, out=op,
                           num_threads=1),
                       "attnx attend_varlen": lambda: _core.attend_varlen(
                           qv, kv, vv, cu, cu, scale=scale, causal=True, out=ov,
                           num_threads=1)}, r, min_time)
        gain = res["attnx, padded + key_lengths"] / res["attnx attend_varlen"]
        table.add(f"varlen: 8 sequences of {lens.min()}..{Lmax} tokens, H={Hv} d={d} causal, "
                  f"1 thread", res, base="attnx, padded + key_lengths",
                  note=f"varlen {gain:.2f}x faster than padding to the longest (target > 1x)")


def sweep(quick=False):
    """Shapes users bring: d in {32, 64, 80, 128}, L in {64, 512, 4096},
    float64 and float32, with and without causal, one thread, against torch
    sdpa when it is installed. Batch x heads shrinks as L grows (about 2^22
    query-key pairs a call; quick: 2^20)."""
    torch = _torch()
    rng = np.random.default_rng(2)
    rounds = 3
    table = Table()
    print(f"attnx {__version__}, kernels {kernels.simd_level()}; machine: {machine()}")
    print("torch " + (torch.__version__ if torch is not None else "not installed") +
          "; median of 3 interleaved rounds, 1 thread\n")
    if torch is not None:
        torch.set_num_threads(1)
    pairs = 1 << (20 if quick else 22)
    for dt in (np.float64, np.float32):
        for d in (32, 64, 80, 128):
            for L in (64, 512, 4096):
                BH = max(1, pairs // (L * L))
                # (1, BH, L, d): 4-D for torch (see _t4)
                Q, K, V = (rng.standard_normal((1, BH, L, d)).astype(dt) for _ in range(3))
                out = np.empty_like(Q)
                for causal in (False, True):
                    fns = {"attnx": lambda causal=causal: _core.attend(
                        Q, K, V, scale=d ** -0.5, causal=causal, out=out, num_threads=1)}
                    if torch is not None:
                        tq, tk, tv = (torch.from_numpy(a) for a in (Q, K, V))
                        fns["torch sdpa"] = lambda causal=causal: \
                            torch.nn.functional.scaled_dot_product_attention(tq, tk, tv,
                                                                             is_causal=causal)
                    res = compare(fns, rounds, 0.02)
                    flops = 4.0 * BH * L * L * d / (2 if causal else 1)
                    table.add(f"{np.dtype(dt).name} d={d} L={L} BH={BH}"
                              f"{' causal' if causal else ''}", res,
                              note=_rate_note(res["attnx"], flops, None))
    return table


def main(args):
    only = None if not getattr(args, "only", None) else [r.strip() for r in args.only.split(",")]
    if getattr(args, "sweep", False):
        table = sweep(quick=args.quick)
        print(table.markdown() if getattr(args, "markdown", False) else table.text())
        return 0
    try:
        table = run(quick=args.quick, threads=args.threads, only=only)
    except ValueError as e:
        print(f"attnx bench: {e}", file=sys.stderr)
        return 2
    print(table.markdown() if getattr(args, "markdown", False) else table.text())
    return 0
