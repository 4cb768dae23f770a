"""One million calls of each public function grow neither RSS nor the Python
heap (tracemalloc), and leave the inputs' reference counts unchanged. The
numbers measured are printed."""
import gc
import os
import resource
import sys
import tracemalloc

import numpy as np
import pytest

import attnx

pytestmark = pytest.mark.simd_independent
N_CALLS = int(os.environ.get("ATTNX_LEAK_CALLS", "1000000"))


def rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:   # not Linux: peak RSS is the best available
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


rng = np.random.default_rng(0)
q, K, V = rng.standard_normal(8), rng.standard_normal((6, 8)), rng.standard_normal((6, 4))
x, w = rng.standard_normal(6), attnx.softmax(rng.standard_normal(6))
o_ctx, o_s, o_x = np.empty(4), np.empty(6), np.empty(6)
Qb, mask = rng.standard_normal((2, 3, 8)), rng.random((3, 6)) > 0.3

CASES = {
    "attend": (lambda: attnx.attend(q, K, V), lambda: attnx.attend(q, K, V, out=o_ctx)),
    "softmax": (lambda: attnx.softmax(x), lambda: attnx.softmax(x, out=o_x)),
    "context": (lambda: attnx.context(w, V), lambda: attnx.context(w, V, out=o_ctx)),
    "dot_score": (lambda: attnx.dot_score(q, K), lambda: attnx.dot_score(q, K, out=o_s)),
    # the general path: conversion, broadcasting, masks, weights
    "attend general": (lambda: attnx.attend(Qb, K, V, mask=mask, return_weights=True),
                       lambda: attnx.attend(Qb.tolist(), K, V, causal=True)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_no_growth(name):
    plain, with_out = CASES[name]
    calls = N_CALLS // 10 if name.endswith("general") else N_CALLS
    inputs = [q, K, V, x, w, o_ctx, o_s, o_x, Qb, mask]
    refs = [sys.getrefcount(a) for a in inputs]
    for _ in range(20_000):                 # warm up caches and free lists
        plain()
        with_out()
    gc.collect()
    tracemalloc.start()
    heap0, rss0 = tracemalloc.get_traced_memory()[0], rss_bytes()
    for _ in range(calls // 2):
        plain()
        with_out()
    gc.collect()
    heap1, rss1 = tracemalloc.get_traced_memory()[0], rss_bytes()
    tracemalloc.stop()
    refs_after = [sys.getrefcount(a) for a in inputs]
    print(f"\n{name}: {calls} calls, RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB "
          f"({(rss1 - rss0) / 2**10:+.0f} KiB), traced heap {heap1 - heap0:+d} bytes")
    assert refs_after == refs
    assert heap1 - heap0 < 64 * 1024           # a leak of 1 byte per call would be 1 MB
    assert rss1 - rss0 < 4 * 2**20
