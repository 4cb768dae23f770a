"""attnx.dot_score and attnx.context against NumPy."""
import numpy as np
import pytest

import attnx
import reference as ref

RNG = np.random.default_rng(11)


def rand(*shape):
    return RNG.standard_normal(shape)


@pytest.mark.parametrize("T", ref.SIZES)
@pytest.mark.parametrize("d", (1, 2, 7, 8, 9, 33, 64, 129))
def test_dot_score_sizes(T, d):
    q, K = rand(d), rand(T, d)
    got = attnx.dot_score(q, K, scale=0.7)
    np.testing.assert_allclose(got, ref.dot_score(q, K, 0.7), rtol=1e-13, atol=1e-13 * np.sqrt(d))


@pytest.mark.parametrize("qshape,kshape", [
    ((5, 8), (7, 8)), ((2, 5, 8), (2, 7, 8)), ((2, 3, 5, 8), (3, 7, 8)),
    ((8,), (4, 7, 8)), ((1, 5, 8), (4, 1, 7, 8)),
])
def test_dot_score_broadcasting(qshape, kshape):
    q, K = rand(*qshape), rand(*kshape)
    got = attnx.dot_score(q, K)
    want = ref.dot_score(q, K)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(attnx.dot_score(q, K, num_threads=2), got, rtol=0, atol=0)


def test_dot_score_edges():
    assert attnx.dot_score(np.ones(3), np.ones((0, 3))).shape == (0,)
    np.testing.assert_array_equal(attnx.dot_score(np.ones(0), np.ones((4, 0))), np.zeros(4))
    np.testing.assert_array_equal(attnx.dot_score([1, 2], [[3, 4], [5, 6]]), [11, 17])
    q = np.array([np.nan, 1.0])
    assert np.isnan(attnx.dot_score(q, np.ones((3, 2)))).all()
    with pytest.raises(ValueError, match=r"\(3,\).*\(4, 2\)"):
        attnx.dot_score(np.ones(3), np.ones((4, 2)))
    with pytest.raises(TypeError):
        attnx.dot_score(np.ones(2, complex), np.ones((4, 2)))
    out = np.empty(4)
    assert attnx.dot_score(np.ones(2), np.ones((4, 2)), out=out) is out
    np.testing.assert_array_equal(out, 2.0)
    with pytest.raises(ValueError):
        attnx.dot_score(np.ones(2), np.ones((4, 2)), out=np.empty(5))


@pytest.mark.parametrize("T", ref.SIZES)
@pytest.mark.parametrize("dv", (1, 3, 8, 16, 17, 64, 65))
def test_context_sizes(T, dv):
    w, V = RNG.random(T), rand(T, dv)
    np.testing.assert_allclose(attnx.context(w, V), w @ V, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("wshape,vshape", [
    ((7,), (7, 3)), ((5, 7), (7, 3)), ((2, 7), (2, 7, 3)), ((4, 2, 7), (2, 7, 3)),
    ((2, 1, 7), (3, 7, 5)), ((7,), (4, 7, 2)),
])
def test_context_broadcasting(wshape, vshape):
    w, V = RNG.random(wshape), rand(*vshape)
    got = attnx.context(w, V)
    want = ref.context(w, V)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_context_composes_with_softmax_and_dot_score():
    """attend == context(softmax(dot_score)) for batched attention, with the
    values given a query axis."""
    q, K, V = rand(2, 5, 8), rand(2, 9, 8), rand(2, 9, 4)
    w = attnx.softmax(attnx.dot_score(q, K, scale=0.25))
    np.testing.assert_allclose(attnx.context(w, V[:, None]), attnx.attend(q, K, V, scale=0.25),
                               rtol=1e-13, atol=1e-13)


def test_context_edges():
    np.testing.assert_array_equal(attnx.context(np.ones(0), np.ones((0, 3))), np.zeros(3))
    # a zero weight does not read its value row: NaN/inf there does not leak
    V = np.array([[1.0, 2.0], [np.nan, np.inf], [3.0, 4.0]])
    np.testing.assert_array_equal(attnx.context([0.5, 0.0, 0.5], V), [2.0, 3.0])
    assert np.isnan(attnx.context([0.5, 0.1, 0.4], V)).any()
    with pytest.raises(ValueError, match=r"\(3,\).*\(4, 2\)"):
        attnx.context(np.ones(3), np.ones((4, 2)))
    with pytest.raises(ValueError):
        attnx.context(np.ones(3), np.ones(3))
    with pytest.raises(TypeError):
        attnx.context(["x", "y"], np.ones((2, 2)))
    w, V = RNG.random(4), rand(4, 3)
    out = np.empty(3)
    assert attnx.context(w, V, out=out) is out
    with pytest.raises(ValueError, match="memory"):
        attnx.context(w, V, out=V[0])
