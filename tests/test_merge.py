"""Logsumexp, key/query positions, merging partial results, and results that
do not depend on the thread count (split-K): the building blocks of
decoding over long contexts and of attnx.dask. References: SciPy's
logsumexp, tests/reference.py in float64, and attention over the whole key
sequence."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.special import logsumexp

import attnx

from reference import attend as ref_attend

rng = np.random.default_rng(14)
TOL = {np.float64: 1e-13, np.float32: 2e-5}


def allowed_mask(Lq, T, causal, qoff, koff):
    """Which keys each query row sees, from positions (query_offset + i,
    key_offset + t), as the docs define it."""
    if not causal:
        return np.ones((Lq, T), bool)
    return (koff + np.arange(T))[None, :] <= (qoff + np.arange(Lq))[:, None]


def ref_lse(Q, K, scale, allowed):
    s = scale * (Q.astype(np.float64) @ np.swapaxes(K.astype(np.float64), -1, -2))
    s = np.where(allowed, s, -np.inf)
    with np.errstate(divide="ignore"):
        return logsumexp(s, axis=-1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("Lq,T", [(1, 7), (5, 33), (9, 300), (2, 9000), (70, 40)])
@pytest.mark.parametrize("causal,qoff,koff", [(False, 0, 0), (True, 0, 0), (True, 0, 5),
                                              (True, 20, 0), (True, -3, 2)])
def test_lse_and_offsets_match_the_reference(simd, dtype, Lq, T, causal, qoff, koff):
    d, dv, scale = 8, 5, 0.4
    Q = rng.standard_normal((2, Lq, d)).astype(dtype)
    K = rng.standard_normal((2, T, d)).astype(dtype)
    V = rng.standard_normal((2, T, dv)).astype(dtype)
    allowed = allowed_mask(Lq, T, causal, qoff, koff)
    ctx, w, lse = attnx.attend(Q, K, V, scale=scale, causal=causal, return_weights=True,
                               return_lse=True, query_offset=qoff, key_offset=koff)
    ctx2, lse2 = attnx.attend(Q, K, V, scale=scale, causal=causal, return_lse=True,
                              query_offset=qoff, key_offset=koff)
    want_ctx, want_w = ref_attend(Q, K, V, scale=scale, mask=allowed)
    want_lse = ref_lse(Q, K, scale, allowed)
    tol = TOL[dtype]
    assert ctx.dtype == lse.dtype == dtype and lse.shape == (2, Lq)
    np.testing.assert_allclose(ctx, want_ctx, rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(ctx2, want_ctx, rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(w, want_w, rtol=tol * 10, atol=tol * 10)
    for got in (lse, lse2):
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want_lse))
        fin = np.isfinite(want_lse)
        np.testing.assert_allclose(got[fin], want_lse[fin], rtol=tol, atol=tol)
    # a query that sees no key: zeros, weights zeros, lse -inf
    none = ~allowed.any(axis=1)
    assert (ctx[:, none] == 0).all() and (w[:, none] == 0).all() and np.isneginf(lse[:, none]).all()


def test_lse_of_a_single_query_and_of_masks(simd):
    q, K = rng.standard_normal(6), rng.standard_normal((40, 6))
    mask = rng.random(40) < 0.5
    ctx, lse = attnx.attend(q, K, mask=mask, return_lse=True)
    assert lse.shape == () and ctx.shape == (6,)
    assert lse == pytest.approx(logsumexp((K @ q)[mask]), rel=1e-14)
    _, lse0 = attnx.attend(q, K, mask=np.zeros(40, bool), return_lse=True)
    assert lse0 == -np.inf
    qn = q.copy()
    qn[0] = np.nan
    assert np.isnan(attnx.attend(qn, K, return_lse=True)[1])
    # huge scores: the lse is finite where exp would overflow
    _, big = attnx.attend(np.array([1.0]), np.array([[1e300], [1e300]]), return_lse=True)
    assert big == pytest.approx(1e300, rel=1e-15)


def chunks_of(T, rng_):
    cuts = np.sort(rng_.choice(np.arange(1, T), size=min(T - 1, rng_.integers(1, 6)),
                               replace=False))
    return [0, *cuts.tolist(), T]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_merging_chunks_equals_attention_over_all_keys(simd, dtype, causal):
    """Any split of the keys, each chunk attended with its own key_offset,
    merged: the whole. With causality some chunks are entirely in some
    queries' future (lse = -inf) and must weigh nothing."""
    g = np.random.default_rng(7)
    for _ in range(20):
        Lq, T, d, dv = g.integers(1, 12), g.integers(2, 60), g.integers(1, 9), g.integers(1, 6)
        Q = g.standard_normal((3, Lq, d)).astype(dtype)
        K = g.standard_normal((3, T, d)).astype(dtype)
        V = g.standard_normal((3, T, dv)).astype(dtype)
        mask = g.random((3, Lq, T)) < 0.8
        qoff = int(T - Lq) if causal and g.random() < 0.5 else 0
        whole, whole_lse = attnx.attend(Q, K, V, mask=mask, causal=causal, return_lse=True,
                                        query_offset=qoff)
        cuts = chunks_of(T, g)
        outs, lses = [], []
        for a, b in zip(cuts[:-1], cuts[1:]):
            o, lz = attnx.attend(Q, K[:, a:b], V[:, a:b], mask=mask[..., a:b], causal=causal,
                                 return_lse=True, key_offset=a, query_offset=qoff)
            outs.append(o)
            lses.append(lz)
        got, got_lse = attnx.merge_attention(outs, lses)
        stacked, stacked_lse = attnx.merge_attention(np.stack(outs), np.stack(lses))
        np.testing.assert_array_equal(got, stacked)
        np.testing.assert_array_equal(got_lse, stacked_lse)
        assert got.dtype == got_lse.dtype == dtype
        tol = TOL[dtype]
        np.testing.assert_allclose(got, whole, rtol=10 * tol, atol=10 * tol)
        np.testing.assert_array_equal(np.isneginf(got_lse), np.isneginf(whole_lse))
        fin = np.isfinite(whole_lse)
        np.testing.assert_allclose(got_lse[fin], whole_lse[fin], rtol=tol, atol=tol)


def test_merge_special_cases():
    o = rng.standard_normal((3, 4, 2))
    # all partials masked: zeros and -inf
    out, lse = attnx.merge_attention(o, np.full((3, 4), -np.inf))
    assert (out == 0).all() and np.isneginf(lse).all()
    # a -inf partial is not read, even if its context is NaN or inf
    o2 = o.copy()
    o2[1] = np.nan
    o2[2] = np.inf
    lz = np.zeros((3, 4))
    lz[1:] = -np.inf
    out, lse = attnx.merge_attention(o2, lz)
    np.testing.assert_array_equal(out, o[0])
    assert (lse == 0).all()
    # a NaN lse makes its row NaN, and only that row
    lz = np.zeros((3, 4))
    lz[1, 2] = np.nan
    out, lse = attnx.merge_attention(o, lz)
    assert np.isnan(out[2]).all() and np.isnan(lse[2])
    assert np.isfinite(out[[0, 1, 3]]).all()
    # huge lse: max-first, nothing overflows
    out, lse = attnx.merge_attention(o[:2], np.array([[1e308] * 4, [1e308] * 4]))
    np.testing.assert_allclose(out, o[:2].mean(axis=0), rtol=1e-15)
    assert np.isfinite(lse).all()
    # one partial is itself
    out, lse = attnx.merge_attention(o[:1], np.full((1, 4), 2.5))
    np.testing.assert_array_equal(out, o[0])
    assert (lse == 2.5).all()
    # lses broadcast against outs' leading dimensions
    out, lse = attnx.merge_attention(o, np.zeros((3, 1)))
    np.testing.assert_allclose(out, o.mean(axis=0), rtol=1e-15)
    assert lse.shape == (4,)


def test_merge_errors_name_the_argument():
    o, lz = rng.standard_normal((3, 4, 2)), np.zeros((3, 4))
    with pytest.raises(ValueError, match="outs holds 2 .* lses holds 3"):
        attnx.merge_attention([o[0], o[1]], [lz[0], lz[1], lz[2]])
    with pytest.raises(ValueError, match="both start with the number of partial results"):
        attnx.merge_attention(o, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="do not broadcast"):
        attnx.merge_attention(o, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="P = 0"):
        attnx.merge_attention([], [])
    with pytest.raises(ValueError, match="last dimensions"):
        attnx.merge_attention([o[0], o[0][:, :1]], [lz[0], lz[0]])
    with pytest.raises(TypeError, match="lses"):
        attnx.merge_attention([o[0]], lz)
    with pytest.raises(TypeError, match=r"outs\[0\]"):
        attnx.merge_attention([np.array(["a"])], [lz[0]])
    with pytest.raises(ValueError, match="out"):
        attnx.merge_attention(o, lz, out=np.empty((4, 3)))
    res, res_lse = np.empty((4, 2)), np.empty(4)
    out, lse = attnx.merge_attention(o, lz, out=(res, res_lse))
    assert out is res and lse is res_lse


@pytest.mark.parametrize("far", [2**60 + 10, 2**61, 2**62 - 8])
def test_far_positions_mask_and_bias_exactly(far):
    """Windows, causal and ALiBi at positions beyond 2**60 (the C core
    clamped positions and window sides there apart, then combined them: a
    window reaching back from a far query saw every key, and ALiBi's
    distances stopped at 2**60). Each result equals the same layout moved
    near 0, forward and backward; found by two reviewers."""
    g = np.random.default_rng(far % 1000)
    q, K, V = g.standard_normal((2, 3)), g.standard_normal((6, 3)), g.standard_normal((6, 2))
    go = g.standard_normal((2, 2))
    for near, kw in ((5, dict(window=(3, None))), (5, dict(window=(None, 2))),
                     (2, dict(causal=True)), (-4, dict(window=(None, 5)))):
        shifted = dict(query_offset=far + near, key_offset=far, **kw)
        o, l = attnx.attend(q, K, V, return_lse=True, **shifted)
        o0, l0 = attnx.attend(q, K, V, return_lse=True, query_offset=near, **kw)
        np.testing.assert_array_equal(o, o0)
        np.testing.assert_array_equal(l, l0)
        for a, b in zip(attnx.attend_backward(go, q, K, V, o, l, **shifted),
                        attnx.attend_backward(go, q, K, V, o0, l0, query_offset=near, **kw)):
            np.testing.assert_array_equal(a, b)
    # a window reaching back from far away sees what it would near 0
    o = attnx.attend(q, K, V, query_offset=far, window=(far - 3, None))
    np.testing.assert_array_equal(o, attnx.attend(q, K, V, query_offset=5, window=(2, None)))
    # a window side past 2**62 (Python used to clamp it there): a query at
    # far sees key 0 when the side reaches back to it
    o = attnx.attend(q, K, V, query_offset=far, window=(far + 1, None))
    np.testing.assert_array_equal(o, attnx.attend(q, K, V))
    o = attnx.attend(q, K, V, key_offset=far, window=(None, far - 1))   # row i sees keys < i
    np.testing.assert_array_equal(o[1], V[0])
    # ALiBi: the lse carries the distance itself, -slope * (far - key)
    _, lse = attnx.attend(np.zeros((1, 1)), np.zeros((1, 1)), np.ones((1, 1)), alibi_slopes=1.0,
                          query_offset=far, return_lse=True)
    assert lse[0] == -float(far)
    # ... past a lower-right shift too (the position was clamped at 2**62)
    T = 1000
    _, lse = attnx.attend(np.zeros((1, 1)), np.zeros((T, 1)), np.ones((T, 1)), alibi_slopes=2.0 ** -40,
                          query_offset=2**62, causal="lower_right", return_lse=True)
    dist = np.arange(T)[::-1].astype(np.longdouble) + np.longdouble(2**62)
    want = np.log(np.exp(-(dist - dist.min()) * np.longdouble(2.0 ** -40)).sum()) - dist.min() * 2.0 ** -40
    assert abs(lse[0] - float(want)) <= 4 * np.spacing(abs(float(want)))


def test_attend_offset_and_lse_errors():
    q, K = np.ones(2), np.ones((3, 2))
    with pytest.raises(TypeError, match="key_offset"):
        attnx.attend(q, K, key_offset=1.5)
    with pytest.raises(TypeError, match="query_offset"):
        attnx.attend(q, K, query_offset=True)
    with pytest.raises(ValueError, match="key_offset"):
        attnx.attend(q, K, key_offset=2**70)
    # the bound is +-2**62 on both sides, as it says
    for off in (2**62 + 1, -2**62 - 1):
        with pytest.raises(ValueError, match="query_offset must be within"):
            attnx.attend(q, K, query_offset=off)
    K2 = np.arange(6.0).reshape(3, 2)
    for off in (2**62, -2**62):   # a query at the first key's position sees it alone
        got = attnx.attend(q, K2, key_offset=off, query_offset=off, causal=True)
        np.testing.assert_array_equal(got, K2[0])
    # each offset within the bound, their difference not: named, for the
    # forward and the backward (the C core's generic overflow before)
    out, lse = attnx.attend(q[None], K, return_lse=True)
    for f in (lambda: attnx.attend(q, K, query_offset=2**62, key_offset=-1),
              lambda: attnx.attend_backward(np.ones_like(out), q[None], K, None, out, lse,
                                            query_offset=-2**62, key_offset=2**62)):
        with pytest.raises(ValueError, match=r"query_offset - key_offset must be within"):
            f()
    with pytest.raises(ValueError, match="dot score"):
        attnx.attend(q, K, score="additive", W_q=np.ones((2, 2)), v=np.ones(2),
                     W_k=np.ones((2, 2)), return_lse=True)
    # what the score lacks is named before what it cannot do
    with pytest.raises(ValueError, match="score='general' needs W"):
        attnx.attend(q, K, score="general", return_lse=True)
    with pytest.raises(ValueError, match="score must be 'dot', 'general' or 'additive'"):
        attnx.attend(q, K, score="cosine", key_offset=3)
    with pytest.raises(ValueError, match="lse_out"):
        attnx.attend(q, K, return_lse=True, out=(np.empty(2),))
    ctx_out, lse_out = np.empty(2), np.empty(())
    ctx, lse = attnx.attend(q, K, return_lse=True, out=(ctx_out, lse_out))
    assert ctx is ctx_out and lse is lse_out and lse == pytest.approx(np.log(3) + 2)


# --- results that do not depend on the thread count ----------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_split_k_is_bit_identical_for_any_thread_count(simd, dtype):
    g = np.random.default_rng(3)
    for Lq, T in [(1, 8192), (1, 100_003), (3, 50_000), (4, 20_000)]:
        Q = g.standard_normal((Lq, 32)).astype(dtype)
        K = g.standard_normal((T, 32)).astype(dtype)
        V = g.standard_normal((T, 16)).astype(dtype)
        mask = g.random((Lq, T)) < 0.9
        for kw in ({}, {"mask": mask}, {"causal": True, "query_offset": T - Lq}):
            runs = [attnx.attend(Q, K, V, num_threads=n, return_lse=True, **kw)
                    for n in (1, 2, 3, 8)]
            for ctx, lse in runs[1:]:
                np.testing.assert_array_equal(ctx, runs[0][0])
                np.testing.assert_array_equal(lse, runs[0][1])
            want = ref_attend(Q, K, V, mask=kw.get("mask"), causal=False)[0] if "causal" not in kw \
                else ref_attend(Q, K, V, mask=allowed_mask(Lq, T, True, T - Lq, 0))[0]
            np.testing.assert_allclose(runs[0][0], want, rtol=100 * TOL[dtype],
                                       atol=100 * TOL[dtype])
        # a single query: the default path, 1-D input and the KVCache agree bit for bit
        q = Q[0]
        one = attnx.attend(q, K, V, num_threads=1)
        np.testing.assert_array_equal(attnx.attend(q, K, V), one)
        np.testing.assert_array_equal(attnx.attend(q[None], K, V, num_threads=2)[0], one)
        cache = attnx.KVCache(32, 16, dtype=dtype)
        cache.extend(K, V)
        np.testing.assert_array_equal(cache.attend(q), one)
        np.testing.assert_array_equal(cache.attend(q, num_threads=2), one)


def test_batched_attention_is_bit_identical_for_any_thread_count(simd):
    g = np.random.default_rng(4)
    for shape in [(1, 1, 64), (2, 3, 17), (1, 2, 9), (8, 1, 100)]:
        Q = g.standard_normal(shape + (24,))
        K = g.standard_normal(shape[:2] + (150, 24))
        runs = [attnx.attend(Q, K, K, causal=True, num_threads=n) for n in (1, 2, 3, 8)]
        for r in runs[1:]:
            np.testing.assert_array_equal(r, runs[0])


@pytest.mark.simd_independent
def test_the_thread_limit_of_the_environment_changes_no_bit():
    code = textwrap.dedent("""
        import numpy as np, attnx
        g = np.random.default_rng(5)
        q, K = g.standard_normal(16), g.standard_normal((60_000, 16))
        Q = g.standard_normal((2, 40, 16))
        print(attnx.attend(q, K, K).tobytes().hex(), attnx.attend(Q, K[:300], causal=True).tobytes().hex())
    """)
    outs = []
    for n in ("1", "2", "7"):
        env = dict(os.environ, ATTNX_NUM_THREADS=n)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120, cwd="/", env=env)
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout)
    assert outs[0] == outs[1] == outs[2]
