"""Edge cases of the failure model (docs/failure-model.md) not covered
elsewhere: +inf scores, subnormals, huge shapes through stride tricks,
too many batch dimensions."""
import numpy as np
import pytest

import attnx
import reference as ref
from numpy.lib.stride_tricks import as_strided


def test_plus_inf_score_gives_nan():
    q, K, V = np.array([1e308]), np.array([[10.0], [1.0]]), np.array([[1.0], [2.0]])
    assert attnx.dot_score(q, K)[0] == np.inf
    assert np.isnan(attnx.attend(q, K, V)).all()
    ctx, w = attnx.attend(q, K, V, return_weights=True)
    assert np.isnan(ctx).all() and np.isnan(w).all()


def test_subnormals_are_not_flushed():
    tiny = 5e-324
    np.testing.assert_array_equal(attnx.softmax([tiny, 0.0]), [0.5, 0.5])
    w = attnx.softmax([0.0, -740.0])
    assert 0 < w[1] < 2.2250738585072014e-308            # a subnormal weight
    if ref.LONG_IS_WIDER:
        assert ref.ulp_error(w, ref.softmax_exact(np.array([0.0, -740.0]))).max() <= 1.0
    # subnormal inputs everywhere: scores are subnormal products, weights uniform
    q, K, V = np.full(3, 1e-310), np.full((4, 3), 1e-10), np.arange(8.0).reshape(4, 2)
    np.testing.assert_allclose(attnx.attend(q, K, V), V.mean(axis=0), rtol=1e-15)
    np.testing.assert_array_equal(attnx.context([tiny, 0.0], [[1.0], [1.0]]), [tiny])


@pytest.mark.parametrize("func", ["attend", "dot_score", "softmax", "context"])
def test_huge_broadcast_views_raise_cleanly(func):
    """A zero-stride view claiming 2^40 x 64 elements must fail with a Python
    exception (it would need a copy of 2^49 bytes), never crash or read out of
    bounds."""
    huge = as_strided(np.zeros(1), shape=(1 << 40, 64), strides=(0, 0))
    with pytest.raises((MemoryError, ValueError)):
        if func == "attend":
            attnx.attend(np.zeros(64), huge)
        elif func == "dot_score":
            attnx.dot_score(np.zeros(64), huge)
        elif func == "softmax":
            attnx.softmax(huge)
        else:
            attnx.context(as_strided(np.zeros(1), shape=(1 << 40,), strides=(0,)), huge)


def test_shapes_numpy_cannot_hold():
    with pytest.raises(ValueError):
        as_strided(np.zeros(1), shape=(1 << 62, 1 << 10), strides=(0, 0))


def test_too_many_batch_dimensions():
    q = np.ones((1,) * 33 + (2, 3))
    with pytest.raises(ValueError, match="32"):
        attnx.attend(q, np.ones((4, 3)))
    # 32 leading dimensions are fine
    q = np.ones((1,) * 32 + (2, 3))
    assert attnx.attend(q, np.ones((4, 3))).shape == (1,) * 32 + (2, 3)


def test_zero_dim_and_scalars():
    with pytest.raises(ValueError):
        attnx.attend(3.0, np.ones((2, 1)))
    with pytest.raises(ValueError):
        attnx.dot_score(np.ones(1), 2.0)
    with pytest.raises(ValueError):
        attnx.context(0.5, np.ones((1, 2)))
    assert attnx.softmax(np.float64(7.0), axis=None) == 1.0
