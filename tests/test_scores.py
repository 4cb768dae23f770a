"""Luong's general and Bahdanau's additive scores, and attend(score=...),
against NumPy; attnx's own tanh against long double."""
import sys

import numpy as np
import pytest

import attnx
import reference as ref
from attnx import kernels

rng = np.random.default_rng(2015)


def additive_ref(q, Kp, W_q, v):
    a = np.asarray(q) @ np.asarray(W_q).T
    a = a[..., None, :]                       # (..., 1 or Lq, 1, h) against (..., T, h)
    if np.ndim(q) > 1:
        Kp = np.asarray(Kp)[..., None, :, :]
    return np.tanh(a + Kp) @ v


def test_general_score():
    q, K, W = rng.standard_normal(5), rng.standard_normal((9, 7)), rng.standard_normal((5, 7))
    np.testing.assert_allclose(attnx.general_score(q, K, W), K @ W.T @ q, rtol=1e-13, atol=1e-13)
    Q = rng.standard_normal((2, 3, 4, 5))
    Kb = rng.standard_normal((3, 9, 7))
    want = np.einsum("...id,de,...te->...it", Q, W, Kb)
    np.testing.assert_allclose(attnx.general_score(Q, Kb, W, scale=0.5), 0.5 * want,
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(4,\).*\(5, 7\)"):
        attnx.general_score(np.ones(4), K, W)


def test_attend_general_is_dot_of_the_projected_query():
    Q, K, V, W = (rng.standard_normal(s) for s in ((3, 6), (10, 4), (10, 2), (6, 4)))
    ctx, w = attnx.attend(Q, K, V, score="general", W=W, return_weights=True, causal=True)
    want_ctx, want_w = ref.attend(Q @ W, K, V, causal=True)
    np.testing.assert_allclose(ctx, want_ctx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w, want_w, rtol=1e-12, atol=1e-300)


def test_project_keys():
    K, Wk = rng.standard_normal((2, 9, 7)), rng.standard_normal((5, 7))
    Kp = attnx.project_keys(K, Wk)
    assert Kp.flags.c_contiguous and Kp.shape == (2, 9, 5)
    np.testing.assert_allclose(Kp, K @ Wk.T, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError):
        attnx.project_keys(K, np.ones((5, 6)))


@pytest.mark.parametrize("T", ref.SIZES)
@pytest.mark.parametrize("h", (1, 3, 8, 16, 17, 64, 129))
def test_additive_score_sizes(T, h):
    q, Kp = rng.standard_normal(6), rng.standard_normal((T, h))
    W_q, v = rng.standard_normal((h, 6)), rng.standard_normal(h)
    got = attnx.additive_score(q, Kp, W_q, v)
    np.testing.assert_allclose(got, additive_ref(q, Kp, W_q, v), rtol=1e-13,
                               atol=1e-13 * np.abs(v).sum())


@pytest.mark.parametrize("qshape,kshape", [((4, 6), (9, 5)), ((2, 4, 6), (2, 9, 5)),
                                           ((2, 3, 4, 6), (3, 9, 5)), ((6,), (3, 9, 5))])
def test_additive_score_broadcasting(qshape, kshape):
    q, Kp = rng.standard_normal(qshape), rng.standard_normal(kshape)
    W_q, v = rng.standard_normal((5, 6)), rng.standard_normal(5)
    got = attnx.additive_score(q, Kp, W_q, v)
    want = additive_ref(q, Kp, W_q, v)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(attnx.additive_score(q, Kp, W_q, v, num_threads=2), got)


def test_additive_nan_propagates():
    q, Kp, W_q, v = rng.standard_normal(3), rng.standard_normal((4, 2)), \
        rng.standard_normal((2, 3)), rng.standard_normal(2)
    Kp[1, 0] = np.nan
    s = attnx.additive_score(q, Kp, W_q, v)
    assert np.isnan(s[1]) and np.isfinite(s[[0, 2, 3]]).all()


@pytest.mark.parametrize("use_W_k", [False, True])
def test_attend_additive(use_W_k):
    Q, K, V = rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 8, 4)), \
        rng.standard_normal((2, 8, 5))
    W_q, W_k, v = rng.standard_normal((7, 6)), rng.standard_normal((7, 4)), rng.standard_normal(7)
    mask = rng.random((3, 8)) > 0.3
    mask[1] = False                                        # a query with nothing to attend to
    kw = {"W_k": W_k} if use_W_k else {"keys_proj": attnx.project_keys(K, W_k)}
    ctx, w = attnx.attend(Q, K, V, score="additive", W_q=W_q, v=v, mask=mask,
                          return_weights=True, **kw)
    s = additive_ref(Q, K @ W_k.T, W_q, v)
    s = np.where(mask, s, -np.inf)
    with np.errstate(invalid="ignore"):
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        want_w = np.nan_to_num(e / e.sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(w, want_w, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(ctx, want_w @ V, rtol=1e-12, atol=1e-12)
    assert (ctx[:, 1] == 0).all() and (w[:, 1] == 0).all()
    # single query attending the first key only, out=
    out = np.empty(5)
    kw1 = {"W_k": W_k} if use_W_k else {"keys_proj": attnx.project_keys(K[0], W_k)}
    first = np.arange(K.shape[1]) == 0
    res = attnx.attend(Q[0, 0], K[0], V[0], score="additive", W_q=W_q, v=v, mask=first,
                       out=out, **kw1)
    assert res is out
    np.testing.assert_allclose(out, V[0, 0], rtol=1e-15)
    # causal=True with one (d,) query would see key 0 only: refused (issue 16)
    with pytest.raises(ValueError, match="query_offset"):
        attnx.attend(Q[0, 0], K[0], V[0], score="additive", W_q=W_q, v=v, causal=True, **kw1)


def test_attend_score_argument_errors():
    q, K = np.ones(3), np.ones((4, 3))
    with pytest.raises(ValueError, match="score must be"):
        attnx.attend(q, K, score="cosine")
    with pytest.raises(ValueError, match="needs W"):
        attnx.attend(q, K, score="general")
    with pytest.raises(ValueError, match="W_q"):
        attnx.attend(q, K, score="additive", keys_proj=np.ones((4, 2)))
    with pytest.raises(ValueError, match="exactly one"):
        attnx.attend(q, K, score="additive", W_q=np.ones((2, 3)), v=np.ones(2))
    with pytest.raises(ValueError, match="belong to"):
        attnx.attend(q, K, W=np.eye(3))
    with pytest.raises(ValueError, match="same number of keys"):
        attnx.attend(q, K, score="additive", W_q=np.ones((2, 3)), v=np.ones(2),
                     keys_proj=np.ones((5, 2)))


def test_tanh_accuracy():
    x = np.concatenate([rng.uniform(-20, 20, 600_000), rng.uniform(-1, 1, 300_000),
                        rng.uniform(-1e-3, 1e-3, 100_000),
                        [0.0, -0.0, 1e-300, -1e-300, 5e-324, 19.06, 50.0, -50.0, 1e308]])
    y = kernels._tanh(x, np.empty_like(x))
    if ref.LONG_IS_WIDER:
        err = ref.ulp_error(y, np.tanh(x.astype(np.longdouble)))
    else:
        err = np.abs(y - np.tanh(x)) / np.spacing(np.abs(np.tanh(x)))
    print(f"\ntanh max error {err.max():.3f} ulp over {len(x)} points")
    assert err.max() <= 2.0
    specials = kernels._tanh(np.array([np.inf, -np.inf, np.nan, -0.0]), np.empty(4))
    assert specials[0] == 1.0 and specials[1] == -1.0 and np.isnan(specials[2])
    assert specials[3] == 0.0 and np.signbit(specials[3])


def test_attend_additive_out_is_checked_before_anything_is_written():
    Q, K, V = rng.standard_normal((3, 6)), rng.standard_normal((8, 4)), rng.standard_normal((8, 5))
    W_q, W_k, v = rng.standard_normal((7, 6)), rng.standard_normal((7, 4)), rng.standard_normal(7)
    Kp = attnx.project_keys(K, W_k)
    kw = dict(score="additive", W_q=W_q, v=v, keys_proj=Kp, return_weights=True)
    co = np.full((3, 5), 7.0)
    with pytest.raises(ValueError):
        attnx.attend(Q, K, V, out=(co, np.empty(5)), **kw)          # weights out unfit
    assert (co == 7.0).all()                                          # context untouched
    before = Kp.copy()
    with pytest.raises(ValueError, match="memory"):
        attnx.attend(Q, K, V, out=(None, Kp.reshape(-1)[:24].reshape(3, 8)), **kw)  # on keys_proj
    np.testing.assert_array_equal(Kp, before)
    with pytest.raises(ValueError, match="pair"):
        attnx.attend(Q, K, V, out=(None, None, None), **kw)
    ctx, w = attnx.attend(Q, K, V, out=(co, None), **kw)
    assert ctx is co and w.shape == (3, 8)


def test_additive_computes_in_float64():
    q, Kp = rng.standard_normal(3).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    W_q, v = np.ones((2, 3), np.float32), np.ones(2, np.float32)
    assert attnx.additive_score(q, Kp, W_q, v).dtype == np.float64


# --- attend(score="additive") is one C call: mask and causality applied in C ---

def additive_attend_ref(Q, Kp, V, W_q, v, mask=None, causal=False, diag=0):
    """attend(score="additive") in NumPy float64 from the definitions: only
    the keys a query sees enter its softmax and its context (NaN or inf in
    the others' rows of keys_proj or values cannot reach the result)."""
    s = additive_ref(Q, Kp, W_q, v)
    seen = np.ones(s.shape, bool)
    if mask is not None:
        seen &= np.broadcast_to(mask, s.shape)
    if causal:
        seen &= np.tril(np.ones(s.shape[-2:], bool), diag)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.where(seen, s, -np.inf)
        m = s.max(axis=-1, keepdims=True)
        e = np.where(seen, np.exp(s - np.where(np.isfinite(m), m, 0.0)), 0.0)
        w = np.where(seen.any(axis=-1, keepdims=True), e / e.sum(axis=-1, keepdims=True), 0.0)
        Vb = V if np.ndim(Q) == 1 else np.asarray(V)[..., None, :, :]
        ctx = np.where(seen[..., None], w[..., None] * Vb, 0.0).sum(axis=-2)
    return ctx, w


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "per_query", "shared"])
@pytest.mark.parametrize("return_weights", [False, True])
@pytest.mark.parametrize("T", [41, 203])
def test_attend_additive_masks_in_c(causal, mask_kind, return_weights, T):
    """Against the NumPy reference at every SIMD level (the simd fixture),
    with NaN in keys_proj and inf/NaN in values on rows no query sees (T =
    203: the keys a mask lets through are gathered 64 at a time)."""
    g = np.random.default_rng(12)
    h, dv = 9, 6
    Q = g.standard_normal((2, 3, 5, 4))
    Kp, V = g.standard_normal((3, T, h)), g.standard_normal((3, T, dv))
    W_q, v = g.standard_normal((h, 4)), g.standard_normal(h)
    hidden = [4, 17, 40]                      # keys no query attends
    mask = None if mask_kind == "none" else (
        g.random((2, 3, 5, T)) > 0.3 if mask_kind == "per_query" else g.random(T) > 0.2)
    if mask is None:
        mask = np.ones(T, bool)
    mask[..., hidden] = False
    mask_arg = None if mask_kind == "none" else mask
    if mask_kind == "none":                   # hide them causally instead: past every query
        hidden = []
    Kp[:, hidden, 0] = np.nan
    V[:, hidden, 0] = np.inf
    V[:, hidden, 1] = np.nan
    if mask_kind == "per_query":
        mask[0, 1, 2] = False                 # a query that attends nothing
    K = g.standard_normal((3, T, 4))          # keys: only their count is read
    got = attnx.attend(Q, K, V, score="additive", keys_proj=Kp, W_q=W_q, v=v, mask=mask_arg,
                       causal=causal, return_weights=return_weights)
    ctx, w = got if return_weights else (got, None)
    want_ctx, want_w = additive_attend_ref(Q, Kp, V, W_q, v, mask_arg, causal)
    assert np.isfinite(ctx).all()
    np.testing.assert_allclose(ctx, want_ctx, rtol=1e-12, atol=1e-13)
    if return_weights:
        np.testing.assert_allclose(w, want_w, rtol=1e-12, atol=1e-300)
        assert (w[..., hidden] == 0).all()
    if mask_kind == "per_query":
        assert (ctx[0, 1, 2] == 0).all()
    # the same bits at any thread count, and with or without weights
    again = attnx.attend(Q, K, V, score="additive", keys_proj=Kp, W_q=W_q, v=v, mask=mask_arg,
                         causal=causal, num_threads=3)
    np.testing.assert_array_equal(again, ctx)


def test_attend_additive_nan_score_poisons_its_row_only():
    g = np.random.default_rng(13)
    Q, Kp, V = g.standard_normal((4, 3)), g.standard_normal((6, 5)), g.standard_normal((6, 2))
    W_q, v = g.standard_normal((5, 3)), g.standard_normal(5)
    Kp[2, 1] = np.nan
    ctx, w = attnx.attend(Q, Kp, V, score="additive", keys_proj=Kp, W_q=W_q, v=v, causal=True,
                          return_weights=True)
    assert np.isfinite(ctx[:2]).all() and np.isfinite(w[:2]).all()
    assert np.isnan(ctx[2:]).all() and np.isnan(w[2:]).all()


def test_attend_additive_is_one_c_call(monkeypatch):
    """attend(score="additive") no longer composes the public Python
    functions (scores, then softmax and context, masked in NumPy)."""
    core = sys.modules["attnx._core"]

    def refuse(*args, **kwargs):
        raise AssertionError("attend(score='additive') called a public Python function")

    g = np.random.default_rng(14)
    Q, K, V = g.standard_normal((3, 4)), g.standard_normal((7, 5)), g.standard_normal((7, 2))
    W_q, W_k, v = g.standard_normal((6, 4)), g.standard_normal((6, 5)), g.standard_normal(6)
    want = attnx.attend(Q, K, V, score="additive", W_q=W_q, W_k=W_k, v=v, causal=True)
    for name in ("additive_score", "softmax", "context"):
        monkeypatch.setattr(core, name, refuse)
    got = attnx.attend(Q, K, V, score="additive", W_q=W_q, W_k=W_k, v=v, causal=True)
    np.testing.assert_array_equal(got, want)


def test_attend_additive_values_broadcast_like_dot():
    """Leading dimensions of values broadcast with the query's and
    keys_proj's, as they do for the dot score."""
    g = np.random.default_rng(15)
    q, K, V = g.standard_normal(4), g.standard_normal((7, 5)), g.standard_normal((2, 7, 3))
    W_q, W_k, v = g.standard_normal((6, 4)), g.standard_normal((6, 5)), g.standard_normal(6)
    ctx = attnx.attend(q, K, V, score="additive", W_q=W_q, W_k=W_k, v=v)
    assert ctx.shape == (2, 3)
    for b in range(2):
        np.testing.assert_array_equal(ctx[b], attnx.attend(q, K, V[b], score="additive", W_q=W_q,
                                                           W_k=W_k, v=v))


@pytest.mark.parametrize("Lq", [1, 5, 9])
def test_attend_additive_lower_right_in_c(Lq):
    """causal="lower_right": query row i sees keys t <= i + T - Lq (none at
    all for the first rows when Lq > T), applied in C as top-left is."""
    g = np.random.default_rng(16)
    T, h = 7, 5
    Q, Kp, V = g.standard_normal((2, Lq, 3)), g.standard_normal((2, T, h)), g.standard_normal((2, T, 4))
    W_q, v = g.standard_normal((h, 3)), g.standard_normal(h)
    K = np.zeros((2, T, 1))
    ctx, w = attnx.attend(Q, K, V, score="additive", keys_proj=Kp, W_q=W_q, v=v,
                          causal="lower_right", return_weights=True)
    want_ctx, want_w = additive_attend_ref(Q, Kp, V, W_q, v, causal=True, diag=T - Lq)
    np.testing.assert_allclose(ctx, want_ctx, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(w, want_w, rtol=1e-12, atol=1e-300)
    if Lq > T:
        assert (ctx[:, :Lq - T] == 0).all() and (w[:, :Lq - T] == 0).all()
