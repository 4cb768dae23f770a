"""attend_backward with what shapes the scores (bias, ALiBi, windows, key
lengths, softcap, lower-right causal, GQA): gradients against central finite
differences of attnx.attend (float64), against torch autograd where torch has
the feature, at every SIMD level; bits independent of the thread count."""
import numpy as np
import pytest

import attnx

OPTS = {
    "bias": lambda rng, H, Lq, T: {"bias": rng.standard_normal((H, Lq, T))},
    "bias_row": lambda rng, H, Lq, T: {"bias": rng.standard_normal((1, 1, T))},
    "alibi": lambda rng, H, Lq, T: {"alibi_slopes": 0.1 + 0.2 * rng.random(H)},
    "window": lambda rng, H, Lq, T: {"window": (3, 1)},
    "key_lengths": lambda rng, H, Lq, T: {"key_lengths": np.array([T - 3, T - 1][:H])},
    "softcap": lambda rng, H, Lq, T: {"softcap": 1.5},
    "lower_right": lambda rng, H, Lq, T: {"causal": "lower_right"},
    "causal": lambda rng, H, Lq, T: {"causal": True},
}


def _case(rng, names, H=2, Lq=5, T=9, d=4, dv=3):
    q = rng.standard_normal((H, Lq, d))
    K = rng.standard_normal((H, T, d))
    V = rng.standard_normal((H, T, dv))
    kw = {}
    for n in names:
        kw.update(OPTS[n](rng, H, Lq, T))
    return q, K, V, kw


def _numeric(f, x, G, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        g[idx] = (np.sum(f(x + e) * G) - np.sum(f(x - e) * G)) / (2 * h)
    return g


COMBOS = [(n,) for n in OPTS] + [
    ("bias", "window", "key_lengths", "causal"),
    ("alibi", "softcap", "lower_right"),
    ("bias_row", "softcap", "window"),
    ("alibi", "key_lengths", "lower_right", "window"),
]


@pytest.mark.parametrize("names", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_gradients_match_finite_differences(simd, names):
    rng = np.random.default_rng(len(names) * 1000 + sum(map(ord, ''.join(names))))
    q, K, V, kw = _case(rng, names)
    scale = 0.7
    out, lse = attnx.attend(q, K, V, scale=scale, return_lse=True, **kw)
    G = rng.standard_normal(out.shape)
    dq, dK, dV = attnx.attend_backward(G, q, K, V, out, lse, scale=scale, **kw)
    nq = _numeric(lambda x: attnx.attend(x, K, V, scale=scale, **kw), q, G)
    nK = _numeric(lambda x: attnx.attend(q, x, V, scale=scale, **kw), K, G)
    nV = _numeric(lambda x: attnx.attend(q, K, x, scale=scale, **kw), V, G)
    for got, want, name in ((dq, nq, "dq"), (dK, nK, "dK"), (dV, nV, "dV")):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-7, err_msg=name)


def test_gqa_gradients_sum_over_each_group(simd):
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 4, 6, 5))         # H = 4 query heads
    K = rng.standard_normal((2, 2, 8, 5))         # Hkv = 2
    V = rng.standard_normal((2, 2, 8, 3))
    kw = dict(enable_gqa=True, causal="lower_right", scale=0.5)
    out, lse = attnx.attend(q, K, V, return_lse=True, **kw)
    G = rng.standard_normal(out.shape)
    dq, dK, dV = attnx.attend_backward(G, q, K, V, out, lse, **kw)
    # the same gradients with K and V repeated per query head (no GQA)
    Kr, Vr = np.repeat(K, 2, axis=1), np.repeat(V, 2, axis=1)
    kw2 = dict(causal="lower_right", scale=0.5)
    o2, l2 = attnx.attend(q, Kr, Vr, return_lse=True, **kw2)
    dq2, dK2, dV2 = attnx.attend_backward(G, q, Kr, Vr, o2, l2, **kw2)
    np.testing.assert_allclose(dq, dq2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dK, dK2.reshape(2, 2, 2, 8, 5).sum(2), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dV, dV2.reshape(2, 2, 2, 8, 3).sum(2), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bias_and_gqa_match_torch_autograd(simd, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    B, H, Hkv, L, T, d = 2, 4, 2, 7, 11, 8
    q = rng.standard_normal((B, H, L, d)).astype(dtype)
    K = rng.standard_normal((B, Hkv, T, d)).astype(dtype)
    V = rng.standard_normal((B, Hkv, T, d)).astype(dtype)
    bias = rng.standard_normal((1, H, L, T)).astype(dtype)
    G = rng.standard_normal((B, H, L, d)).astype(dtype)
    out, lse = attnx.attend(q, K, V, scale=d ** -0.5, bias=bias, enable_gqa=True, return_lse=True)
    dq, dK, dV = attnx.attend_backward(G, q, K, V, out, lse, scale=d ** -0.5, bias=bias,
                                       enable_gqa=True)
    tq, tK, tV = (torch.tensor(x, requires_grad=True) for x in (q, K, V))
    to = torch.nn.functional.scaled_dot_product_attention(tq, tK, tV, attn_mask=torch.tensor(bias),
                                                          enable_gqa=True)
    to.backward(torch.tensor(G))
    tol = 1e-10 if dtype == np.float64 else 2e-4
    for got, want in ((dq, tq.grad), (dK, tK.grad), (dV, tV.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=tol, atol=tol)


def test_feature_gradients_do_not_depend_on_threads(simd):
    rng = np.random.default_rng(11)
    q, K, V = (rng.standard_normal((3, 40, 8)) for _ in range(3))
    kw = dict(scale=0.3, bias=rng.standard_normal((40, 40)), window=(9, 2), softcap=2.0,
              alibi_slopes=np.array([0.1, 0.2, 0.3]), key_lengths=np.array([40, 31, 17]))
    out, lse = attnx.attend(q, K, V, return_lse=True, **kw)
    G = rng.standard_normal(out.shape)
    runs = [attnx.attend_backward(G, q, K, V, out, lse, num_threads=n, **kw) for n in (1, 2, 3)]
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            assert a.tobytes() == b.tobytes()
    # keys beyond a row's key length get no gradient
    assert not runs[0][1][2, 17:].any() and not runs[0][2][1, 31:].any()


@pytest.mark.parametrize("shape", [(2, 5, 9), (1, 9), (5, 1), (2, 1, 1)], ids=str)
@pytest.mark.parametrize("extra", [{}, {"softcap": 1.5, "window": (3, 1)}], ids=["plain", "cap+window"])
def test_grad_bias_matches_finite_differences(simd, shape, extra):
    """grad_bias=True: the gradient with respect to the bias, summed to the
    bias's own (broadcast) shape, against central differences of attend."""
    rng = np.random.default_rng(21)
    q, K, V = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 9, 4)), rng.standard_normal((2, 9, 3))
    bias = rng.standard_normal(shape)
    kw = dict(scale=0.7, causal="lower_right", **extra)
    out, lse = attnx.attend(q, K, V, bias=bias, return_lse=True, **kw)
    G = rng.standard_normal(out.shape)
    dq, dK, dV, db = attnx.attend_backward(G, q, K, V, out, lse, bias=bias, grad_bias=True, **kw)
    assert db.shape == bias.shape
    nb = _numeric(lambda x: attnx.attend(q, K, V, bias=x, **kw), bias, G)
    np.testing.assert_allclose(db, nb, rtol=2e-6, atol=2e-7)
    # the other gradients are those of the call without grad_bias
    for a, b in zip((dq, dK, dV), attnx.attend_backward(G, q, K, V, out, lse, bias=bias, **kw)):
        assert a.tobytes() == b.tobytes()


def test_grad_bias_needs_a_bias():
    q = np.ones((2, 3))
    out, lse = attnx.attend(q, q, q, return_lse=True)
    with pytest.raises(ValueError, match="grad_bias"):
        attnx.attend_backward(out, q, q, q, out, lse, grad_bias=True)


@pytest.mark.parametrize("dtype, cap_exp, tol", [(np.float64, -1060, 1e-12), (np.float32, -140, 2e-5)],
                         ids=["float64", "float32"])
def test_a_subnormal_softcap_has_its_own_derivative(simd, dtype, cap_exp, tol):
    """softcap = 2^cap_exp, subnormal in the dtype (14 and 9 bits), and
    queries 2^cap_exp * a / 4 with a and the keys small integers: the scores
    over softcap, x = a.k / 4, are exact, so the derivative 1 - tanh(x)^2
    has a float64 NumPy reference. The capped score softcap * tanh(x) keeps
    only the subnormal's bits, so a derivative taken from it is off by
    ~2^-15 (float64) or ~2^-10 (float32)."""
    rng = np.random.default_rng(5)
    c = 2.0 ** cap_exp
    H, Lq, T, d, dv = 2, 6, 9, 5, 3
    a = rng.integers(-4, 5, (H, Lq, d))
    Ki = rng.integers(-2, 3, (H, T, d))
    q, K = (c * a / 4).astype(dtype), Ki.astype(dtype)
    V, G = rng.standard_normal((H, T, dv)).astype(dtype), rng.standard_normal((H, Lq, dv)).astype(dtype)
    assert np.array_equal(q.astype(np.float64) / c * 4, a)        # q exact in the dtype
    kw = dict(softcap=c, window=(4, 1))
    out, lse = attnx.attend(q, K, V, return_lse=True, **kw)
    dq = attnx.attend_backward(G, q, K, V, out, lse, **kw)[0]
    # the reference: every capped score is within a subnormal of 0, so the
    # seen keys weigh alike
    x = a @ np.swapaxes(Ki, 1, 2) / 4.0
    i, t = np.arange(Lq)[:, None], np.arange(T)[None, :]
    seen = (t >= i - 4) & (t <= i + 1)
    p = seen / seen.sum(1, keepdims=True)
    V64, G64 = V.astype(np.float64), G.astype(np.float64)
    o = p @ V64
    dp = G64 @ np.swapaxes(V64, 1, 2)
    ds = p * (dp - np.sum(G64 * o, -1, keepdims=True)) * (1 - np.tanh(x) ** 2)
    want = ds @ Ki
    np.testing.assert_allclose(out, o, rtol=tol, atol=tol)
    np.testing.assert_allclose(dq, want, rtol=0, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("cap, same_as", [(1e39, None), (1e300, None), (1e-50, 2.0 ** -149)],
                         ids=["1e39", "1e300", "1e-50"])
def test_a_float32_softcap_beyond_float_is_that_of_its_rounding(simd, cap, same_as):
    """float32 takes the softcap rounded to float (attnx_api.def): one that
    rounds to inf caps nothing, one that rounds to 0 is the smallest positive
    float. Forward and backward, bit for bit, with a bias (the row path of
    the portable level shapes the scores itself)."""
    rng = np.random.default_rng(9)
    q = rng.standard_normal((2, 6, 4)).astype(np.float32)
    K, V = rng.standard_normal((2, 11, 4)).astype(np.float32), rng.standard_normal((2, 11, 3)).astype(np.float32)
    G = rng.standard_normal((2, 6, 3)).astype(np.float32)
    bias = rng.standard_normal((6, 1)).astype(np.float32)
    runs = []
    for c in (cap, same_as):
        out, lse = attnx.attend(q, K, V, return_lse=True, softcap=c, bias=bias, window=(5, 2))
        grads = attnx.attend_backward(G, q, K, V, out, lse, softcap=c, bias=bias, window=(5, 2))
        runs.append((out, lse) + grads)
    for a, b in zip(*runs):
        assert np.isfinite(a).all() and a.tobytes() == b.tobytes()


def test_keys_beyond_the_length_get_plus_zero_whatever_the_threads(simd):
    """1024 keys of one item are 4 key partitions of the tiled backward; a
    partition wholly beyond the key length once zero-filled rows of the
    partitions before it, which those scale by -1 (+0 or -0 by thread
    timing). Every unseen key's gradient is +0, as the row path leaves it,
    at any thread count."""
    rng = np.random.default_rng(0)
    q, K, V = rng.standard_normal((1, 256, 8)), rng.standard_normal((1, 1024, 8)), rng.standard_normal((1, 1024, 8))
    kw = dict(scale=-1.0, key_lengths=np.array([250]))
    out, lse = attnx.attend(q, K, V, return_lse=True, **kw)
    G = rng.standard_normal(out.shape)
    first = attnx.attend_backward(G, q, K, V, out, lse, num_threads=1, **kw)
    for g in first[1:]:
        assert not g[0, 250:].any() and not np.signbit(g[0, 250:]).any()
        assert np.all(g[0, :250] != 0)
    for n in (2, 3, 2, 3, 2, 3, 2, 3):
        again = attnx.attend_backward(G, q, K, V, out, lse, num_threads=n, **kw)
        for a, b in zip(first, again):
            assert a.tobytes() == b.tobytes()


@pytest.mark.simd_independent
@pytest.mark.parametrize("bias", [0.7, np.float32(0.7), np.array(0.7), np.array([0.7])], ids=repr)
def test_grad_bias_of_a_0d_bias_is_0d(bias):
    rng = np.random.default_rng(0)
    q, K, V = rng.standard_normal((6, 5)), rng.standard_normal((11, 5)), rng.standard_normal((11, 3))
    o, lse = attnx.attend(q, K, V, bias=bias, return_lse=True)
    gb = attnx.attend_backward(np.ones_like(o), q, K, V, o, lse, bias=bias, grad_bias=True)[3]
    assert isinstance(gb, np.ndarray) and gb.shape == np.shape(bias)
    # a bias added to every score moves no weight: its gradient is sum(G * out) - sum(G * out) = 0
    assert abs(float(gb.reshape(-1)[0])) < 1e-12


def test_a_tiny_scale_with_huge_queries_keeps_the_key_gradient(simd):
    """scale 1e-300, one query row ~1e151 and keys ~1e150 (scores up to ~60):
    a key of weight p down to ~1e-37 gets dK = scale * dS q down to ~1e-186,
    normal, but scale * dS alone is 0 (the portable row path's order). Against
    np.longdouble, within 1e-10 of the terms' magnitude (the scores' own
    rounding moves p by ~1e-14; the lost product moved dK by 100%)."""
    rng = np.random.default_rng(4)
    scale = 1e-300
    q = 1e151 * rng.standard_normal((3, 1, 5))
    K, V = 1e150 * rng.standard_normal((3, 13, 5)), rng.standard_normal((3, 13, 3))
    G = rng.standard_normal((3, 1, 3))
    out, lse = attnx.attend(q, K, V, scale=scale, return_lse=True)
    dK = attnx.attend_backward(G, q, K, V, out, lse, scale=scale)[1]
    ld = np.longdouble
    qL, KL, VL, GL = (x.astype(ld) for x in (q, K, V, G))
    s = (qL @ np.swapaxes(KL, 1, 2)) * ld(scale)            # (3, 1, 13)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert p.min() < 1e-30 and np.abs(s).max() < 200        # weights where scale * dS underflows
    dp, D = GL @ np.swapaxes(VL, 1, 2), np.sum(GL * (p @ VL), -1, keepdims=True)
    T = np.swapaxes
    want = (T(p * (dp - D), 1, 2) @ qL) * ld(scale)
    mag = (T(p * (np.abs(dp) + np.abs(D)), 1, 2) @ np.abs(qL)) * ld(scale)
    assert np.all(np.abs(dK - want) <= 1e-10 * mag)


@pytest.mark.parametrize("dtype, shift, tol", [(np.float64, 2.0 ** 30, 1e-13), (np.float32, 2.0 ** 20, 2e-6)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("Lq, T", [(1, 40), (3, 40), (37, 70), (64, 300)])
def test_rows_of_a_large_lse_keep_exact_weights(simd, dtype, shift, tol, Lq, T):
    """A row whose scores all carry a large constant (an additive mask of
    -1e9 over a padding row, a large scale) has a large |lse|, and lse's
    own rounding, eps |lse|, became the error of every weight recomputed
    from it: in float32 at -1e9 every weight came back 1, not 1 / T. Here
    the scores are integers and the shift a power of 2, so every shifted
    score is exact: softmax does not see the shift, and the gradients of
    the shifted rows must be those of the plain ones, to a few ulp."""
    rng = np.random.default_rng(Lq * 1000 + T)
    H, d, dv = 2, 8, 5
    q = rng.integers(-3, 4, (H, Lq, d)).astype(dtype)
    K = rng.integers(-3, 4, (H, T, d)).astype(dtype)
    V, G = rng.standard_normal((H, T, dv)).astype(dtype), rng.standard_normal((H, Lq, dv)).astype(dtype)
    shifted = (np.arange(Lq) % 2 == 0)[:, None]
    biases = [np.zeros((Lq, T), dtype), np.broadcast_to(np.where(shifted, -shift, 0).astype(dtype), (Lq, T))]
    for kw in ({}, {"causal": "lower_right"}, {"window": (5, 3)}):
        grads = []
        for bias in biases:
            out, lse = attnx.attend(q, K, V, bias=bias, return_lse=True, **kw)
            grads.append(attnx.attend_backward(G, q, K, V, out, lse, bias=bias, grad_bias=True, **kw))
        assert (np.abs(lse[:, shifted[:, 0]]) > shift / 2).all()
        for want, got in zip(*grads):
            np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max(), err_msg=str(kw))


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-4)], ids=["float64", "float32"])
@pytest.mark.parametrize("Lq, T", [(1, 30), (20, 50)])
def test_the_softcap_derivative_where_tanh_saturates(simd, dtype, tol, Lq, T):
    """Every score over softcap in [8.4, 16], where tanh is within 1e-7 of 1:
    the derivative 1 - tanh^2 lost every bit there (the gradients came out
    0, or 100% off, in float32; 1e-6 off in float64). Against a long-double
    reference that takes sech^2 as 4e / (1 + e)^2, e = exp(-2|y|)."""
    rng = np.random.default_rng(Lq + T)
    d, dv = 4, 3
    q = rng.uniform(2.8, 4.0, (Lq, d)).astype(dtype)
    K = rng.uniform(0.75, 1.0, (T, d)).astype(dtype)
    V, G = rng.standard_normal((T, dv)).astype(dtype), rng.standard_normal((Lq, dv)).astype(dtype)
    out, lse = attnx.attend(q, K, V, softcap=1.0, return_lse=True)
    dq, dk, dv_ = attnx.attend_backward(G, q, K, V, out, lse, softcap=1.0)
    ql, Kl, Vl, Gl = (x.astype(np.longdouble) for x in (q, K, V, G))
    y = ql @ Kl.T
    assert y.min() > 8
    s = np.tanh(y)
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    o = p @ Vl
    e = np.exp(-2 * np.abs(y))
    ds = p * (Gl @ Vl.T - np.sum(Gl * o, 1, keepdims=True)) * (4 * e / (1 + e) ** 2)
    for got, want in ((dq, ds @ Kl), (dk, ds.T @ ql), (dv_, p.T @ Gl)):
        want = want.astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


def test_a_masked_key_of_a_nan_row_of_its_own_state_gets_zero(simd):
    """A row past |lse| = 64 whose own state is NaN (a NaN key after the
    forward): its masked key still weighs 0, so that key's dK, dV and bias
    gradient are 0, as for a row with a NaN lse; its seen keys are NaN."""
    q = np.array([[1.0, 0.0]])
    K = np.array([[1.0, 2.0], [0.5, 0.0], [2.0, 1.0], [-1.0, 1.0]])
    V = np.arange(8.0).reshape(4, 2)
    mask = np.array([[True, True, True, False]])
    bias = np.full((1, 4), 2.0 ** 20)
    out, lse = attnx.attend(q, K, V, bias=bias, mask=mask, return_lse=True)
    K[0, 0] = np.nan
    dq, dk, dv, db = attnx.attend_backward(np.ones((1, 2)), q, K, V, out, lse, bias=bias, mask=mask,
                                           grad_bias=True)
    assert np.array_equal(dk[3], [0, 0]) and np.array_equal(dv[3], [0, 0]) and db[0, 3] == 0
    assert np.isnan(dv[:3]).all() and np.isnan(dq).all()
