"""Hypothesis properties of softmax and attend, at every SIMD level."""
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import attnx

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def vectors(min_size=1, max_size=70, elements=finite):
    return hnp.arrays(np.float64, st.integers(min_size, max_size), elements=elements)


@given(vectors(elements=st.floats(-1e300, 1e300)))
def test_weights_sum_to_one(x):
    w = attnx.softmax(x)
    assert np.all(w >= 0) and np.all(w <= 1)
    assert abs(w.sum() - 1.0) <= 1e-15 * len(x) + 4e-16


@given(vectors(), st.floats(-1e3, 1e3))
def test_invariant_to_a_constant_shift(x, c):
    # shifting rounds x + c, so compare with the softmax of exactly what was
    # passed, against the longdouble result of the unrounded shift
    y = x + c
    assume(np.all(np.isfinite(y)))
    w0, w1 = attnx.softmax(x), attnx.softmax(y)
    spread = np.abs(x).max() + abs(c) + 1
    np.testing.assert_allclose(w1, w0, rtol=0, atol=8 * spread * np.finfo(float).eps)


@st.composite
def attention_case(draw):
    T = draw(st.integers(1, 40))
    d = draw(st.integers(1, 20))
    dv = draw(st.integers(1, 12))
    el = st.floats(-10, 10)
    q = draw(hnp.arrays(np.float64, d, elements=el))
    K = draw(hnp.arrays(np.float64, (T, d), elements=el))
    V = draw(hnp.arrays(np.float64, (T, dv), elements=el))
    perm = draw(st.permutations(range(T)))
    mask = draw(hnp.arrays(np.bool_, T))
    return q, K, V, np.array(perm, dtype=np.intp), mask


@given(attention_case())
def test_permutation_equivariance(case):
    q, K, V, p, _ = case
    ctx, w = attnx.attend(q, K, V, return_weights=True)
    ctx_p, w_p = attnx.attend(q, K[p], V[p], return_weights=True)
    np.testing.assert_allclose(w_p, w[p], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(ctx_p, ctx, rtol=1e-11, atol=1e-11 * (np.abs(V).max() + 1))


@given(attention_case())
def test_mask_equals_minus_inf_scores(case):
    q, K, V, _, mask = case
    ctx, w = attnx.attend(q, K, V, mask=mask, return_weights=True)
    s = attnx.dot_score(q, K)
    s[~mask] = -np.inf
    if mask.any():
        w_ref = attnx.softmax(s)
        ctx_ref = attnx.context(w_ref, V)
    else:                                   # nothing to attend to: zeros
        w_ref, ctx_ref = np.zeros_like(s), np.zeros(V.shape[1])
    np.testing.assert_allclose(w, w_ref, rtol=1e-14, atol=0)
    np.testing.assert_allclose(ctx, ctx_ref, rtol=1e-13, atol=1e-13 * (np.abs(V).max() + 1))
    fused = attnx.attend(q, K, V, mask=mask)
    np.testing.assert_allclose(fused, ctx, rtol=1e-12, atol=1e-12 * (np.abs(V).max() + 1))


@given(attention_case())
def test_fused_equals_two_pass(case):
    q, K, V, _, _ = case
    fused = attnx.attend(q, K, V)
    ctx, _ = attnx.attend(q, K, V, return_weights=True)
    np.testing.assert_allclose(fused, ctx, rtol=1e-12, atol=1e-12 * (np.abs(V).max() + 1))
