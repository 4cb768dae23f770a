"""attend_backward (the flash backward) against PyTorch's autograd of its own
sdpa, a dense NumPy reference and finite differences, at every SIMD level,
in float64 and float32; broadcasting, masks, causality and positions; bits
that do not depend on the thread count; errors that name the argument."""
import numpy as np
import pytest

import attnx

from reference import attend_grad

rng = np.random.default_rng(15)


def positions_allowed(Lq, T, causal, qoff=0, koff=0):
    if not causal:
        return np.ones((Lq, T), bool)
    return (koff + np.arange(T))[None, :] <= (qoff + np.arange(Lq))[:, None]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("Lq,T,d,dv", [(1, 1, 1, 1), (3, 7, 5, 4), (17, 65, 8, 3), (9, 130, 33, 16),
                                      (101, 70, 8, 5)])
@pytest.mark.parametrize("causal,qoff,koff", [(False, 0, 0), (True, 0, 0), (True, 0, 3),
                                              (True, 40, 0)])
def test_gradients_match_the_dense_reference(simd, dtype, Lq, T, d, dv, causal, qoff, koff):
    scale = 0.7
    Q = rng.standard_normal((2, Lq, d)).astype(dtype)
    K = rng.standard_normal((2, T, d)).astype(dtype)
    V = rng.standard_normal((2, T, dv)).astype(dtype)
    G = rng.standard_normal((2, Lq, dv)).astype(dtype)
    mask = rng.random((2, Lq, T)) < 0.8
    allowed = positions_allowed(Lq, T, causal, qoff, koff) & mask
    kw = dict(scale=scale, mask=mask, causal=causal, query_offset=qoff, key_offset=koff)
    out, lse = attnx.attend(Q, K, V, return_lse=True, **kw)
    dq, dk, dv_ = attnx.attend_backward(G, Q, K, V, out, lse, **kw)
    want = attend_grad(Q, K, V, G, scale, allowed)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    for got, ref, name in zip((dq, dk, dv_), want, ("dq", "dk", "dv")):
        assert got.dtype == dtype and got.shape == ref.shape, name
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max(initial=1),
                                   err_msg=name)




@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_nonfinite_masked_keys_over_many_rows(simd, dtype, causal):
    """101 query rows (past the kernel's groups of rows whose dK and dV go
    into one product) and keys whose masked rows hold inf and NaN: the
    gradients equal those of the same call with those rows zeroed, and the
    masked keys' gradients are 0."""
    Lq, T, d, dv = 101, 40, 8, 5
    r = np.random.default_rng(151)
    Q = r.standard_normal((2, Lq, d)).astype(dtype)
    K = r.standard_normal((2, T, d)).astype(dtype)
    V = r.standard_normal((2, T, dv)).astype(dtype)
    G = r.standard_normal((2, Lq, dv)).astype(dtype)
    mask = np.ones((Lq, T), bool)
    mask[:, [3, 17, 31]] = False
    mask[5, :] = False                           # a row that attends nothing
    Kbad, Vbad = K.copy(), V.copy()
    Kbad[:, 3], Vbad[:, 17], Kbad[:, 31], Vbad[:, 31] = np.inf, np.nan, np.nan, -np.inf
    K[:, [3, 17, 31]] = 0
    V[:, [3, 17, 31]] = 0
    kw = dict(scale=0.4, mask=mask, causal=causal)
    out, lse = attnx.attend(Q, K, V, return_lse=True, **kw)
    want = attend_grad(Q, K, V, G, 0.4, positions_allowed(Lq, T, causal) & mask)
    got = attnx.attend_backward(G, Q, Kbad, Vbad, out, lse, **kw)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    for g, w, name in zip(got, want, ("dq", "dk", "dv")):
        assert np.isfinite(g).all(), name
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * np.abs(w).max(initial=1), err_msg=name)
    assert not got[1][:, [3, 17, 31]].any() and not got[2][:, [3, 17, 31]].any()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gradients_match_torch_autograd(simd, causal, dtype):
    torch = pytest.importorskip("torch")
    Q, K, V, G = (rng.standard_normal((2, 4, 33, 16)).astype(dtype) for _ in range(4))
    mask = rng.random((33, 33)) < 0.7
    np.fill_diagonal(mask, True)
    for m in (None, mask):
        out, lse = attnx.attend(Q, K, V, scale=0.25, mask=m, causal=causal, return_lse=True)
        got = attnx.attend_backward(G, Q, K, V, out, lse, scale=0.25, mask=m, causal=causal)
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (Q, K, V))
        to = torch.nn.functional.scaled_dot_product_attention(
            tq, tk, tv, attn_mask=None if m is None else torch.tensor(m), scale=0.25,
            is_causal=causal)
        to.backward(torch.tensor(G))
        tol = 1e-10 if dtype == np.float64 else 1e-4
        np.testing.assert_allclose(out, to.detach().numpy(), rtol=tol, atol=tol)
        for g, t in zip(got, (tq, tk, tv)):
            np.testing.assert_allclose(g, t.grad.numpy(), rtol=tol, atol=tol)


def test_gradients_match_finite_differences(simd):
    q, K, V = rng.standard_normal(4), rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    w = rng.standard_normal(3)     # the loss: w . out

    def loss(q_, K_, V_):
        return attnx.attend(q_, K_, V_, scale=0.9) @ w

    out, lse = attnx.attend(q, K, V, scale=0.9, return_lse=True)
    dq, dK, dV = attnx.attend_backward(w, q, K, V, out, lse, scale=0.9)
    h = 1e-6
    for arr, grad, idx in ((q, dq, [(0,), (3,)]), (K, dK, [(0, 0), (5, 2)]),
                           (V, dV, [(1, 1), (4, 0)])):
        for i in idx:
            e = np.zeros_like(arr)
            e[i] = h
            args = [q, K, V]
            k = 0 if arr is q else 1 if arr is K else 2
            plus, minus = list(args), list(args)
            plus[k], minus[k] = arr + e, arr - e
            fd = (loss(*plus) - loss(*minus)) / (2 * h)
            assert grad[i] == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_broadcast_operands_get_summed_gradients(simd):
    """K and V shared by every head (shape (1, T, d) against 4 heads): their
    gradient is the sum over the heads, shaped like them; a 1-D query gives
    a 1-D gradient; values=None folds both roles into grad_keys."""
    Q = rng.standard_normal((4, 5, 6))
    K, V = rng.standard_normal((1, 9, 6)), rng.standard_normal((1, 9, 2))
    G = rng.standard_normal((4, 5, 2))
    out, lse = attnx.attend(Q, K, V, return_lse=True)
    dq, dk, dv = attnx.attend_backward(G, Q, K, V, out, lse)
    want = attend_grad(Q, K, V, G)
    # each element is a sum with cancellation: its error is relative to the
    # sum of its terms' sizes, not to itself, so the bound's floor is 1e-12
    # of the largest gradient (as every other gradient test here)
    for got, w in ((dq, want[0]), (dk, want[1].sum(axis=0, keepdims=True)),
                   (dv, want[2].sum(axis=0, keepdims=True))):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12 * np.abs(w).max())
    assert dk.shape == K.shape and dv.shape == V.shape
    q = Q[0, 0]
    o1, l1 = attnx.attend(q, K[0], V[0], return_lse=True)
    g1 = attnx.attend_backward(G[0, 0], q, K[0], V[0], o1, l1)
    assert g1[0].shape == q.shape
    w1 = attend_grad(q[None], K[0], V[0], G[0, 0][None])
    np.testing.assert_allclose(g1[0], w1[0][0], rtol=1e-12)
    o2, l2 = attnx.attend(Q, K, return_lse=True)
    G2 = rng.standard_normal(o2.shape)
    dq2, dk2, none = attnx.attend_backward(G2, Q, K, None, o2, l2)
    w2 = attend_grad(Q, K, K, G2)
    assert none is None
    np.testing.assert_allclose(dk2, (w2[1] + w2[2]).sum(axis=0, keepdims=True), rtol=1e-12)


def test_rows_that_see_nothing_have_zero_gradients(simd):
    Q, K, V = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    out, lse = attnx.attend(Q, K, V, causal=True, query_offset=-2, return_lse=True)
    assert np.isneginf(lse[:2]).all()
    dq, dk, dv = attnx.attend_backward(np.ones((4, 2)), Q, K, V, out, lse, causal=True,
                                       query_offset=-2)
    assert (dq[:2] == 0).all()
    assert (dk[2:] == 0).all() and (dv[2:] == 0).all()     # keys no query sees


@pytest.mark.parametrize("case", ["inf key, -inf score", "inf value, underflowed weight"])
def test_a_key_of_weight_zero_adds_nothing_even_when_not_finite(simd, case):
    """A key every row sees, but with weight exactly 0 (its score is -inf, or
    exp underflows), holding inf: the gradients are those of the same call
    without that key (0 x inf must not reach them), that key's own are 0."""
    g = np.random.default_rng(7)
    Lq, T, d, dv, t = 8, 12, 3, 2, 5
    Q, K, V = g.standard_normal((Lq, d)), g.standard_normal((T, d)), g.standard_normal((T, dv))
    if case.startswith("inf key"):
        Q[:, 0] = -np.abs(Q[:, 0]) - 0.5
        K[t] = [np.inf, 0.0, 0.0]            # score -inf for every row
    else:
        Q[:, 0] = np.abs(Q[:, 0]) + 0.5
        K[t] = [-4000.0, 0.0, 0.0]           # exp(score - lse) underflows to 0
        V[t] = [np.inf, 1.0]
    G = g.standard_normal((Lq, dv))
    out, lse = attnx.attend(Q, K, V, return_lse=True)
    assert np.isfinite(out).all()
    dq, dk, dv_ = attnx.attend_backward(G, Q, K, V, out, lse)
    keep = np.arange(T) != t
    o2, l2 = attnx.attend(Q, K[keep], V[keep], return_lse=True)
    dq2, dk2, dv2 = attnx.attend_backward(G, Q, K[keep], V[keep], o2, l2)
    np.testing.assert_allclose(dq, dq2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dk[keep], dk2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dv_[keep], dv2, rtol=1e-12, atol=1e-14)
    assert (dk[t] == 0).all() and (dv_[t] == 0).all()


def test_bits_do_not_depend_on_the_thread_count(simd):
    Q, K, V = (rng.standard_normal((2, 2, 300, 16)) for _ in range(3))
    G = rng.standard_normal((2, 2, 300, 16))
    out, lse = attnx.attend(Q, K, V, causal=True, return_lse=True)
    runs = [attnx.attend_backward(G, Q, K, V, out, lse, causal=True, num_threads=n)
            for n in (1, 2, 3, 8)]
    for r in runs[1:]:
        for a, b in zip(r, runs[0]):
            np.testing.assert_array_equal(a, b)


def test_errors_name_the_argument():
    q, K = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    out, lse = attnx.attend(q, K, return_lse=True)
    g = np.ones_like(out)
    with pytest.raises(ValueError, match="grad_out has shape"):
        attnx.attend_backward(g[:2], q, K, K, out, lse)
    with pytest.raises(ValueError, match="out has shape"):
        attnx.attend_backward(g, q, K, K, out[:, :2], lse)
    with pytest.raises(ValueError, match="lse has shape"):
        attnx.attend_backward(g, q, K, K, out, lse[:2])
    with pytest.raises(TypeError, match="lse"):
        attnx.attend_backward(g, q, K, K, out, None)
    with pytest.raises(ValueError, match="the last dimension"):
        attnx.attend_backward(g, q[:, :3], K, K, out, lse)
    with pytest.raises(ValueError, match="T = 0"):
        attnx.attend_backward(g, q, K[:0], K[:0], out, lse)
    # a lone (d,) query with top-left causal: refused as by the forward (it
    # would see key 0 only, unlike the out and lse it was given)
    o1, l1 = attnx.attend(q[0], K, return_lse=True)
    with pytest.raises(ValueError, match="causal=True with a single query"):
        attnx.attend_backward(np.ones_like(o1), q[0], K, K, o1, l1, causal=True)
    g1 = attnx.attend_backward(np.ones_like(o1), q[0], K, K, o1, l1, causal=True,
                               query_offset=K.shape[0] - 1)
    for a, b in zip(g1, attnx.attend_backward(np.ones_like(o1), q[0], K, K, o1, l1)):
        np.testing.assert_array_equal(a, b)
