"""The worked example of DESIGN.md: the tutorial's decoder state and four
annotations, where the naive softmax returns NaN."""
import numpy as np
import pytest

import attnx

Q = np.array([5.0, 1.0, 20.0])
ANNOTATIONS = np.array([[3, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]])  # rows = keys


def test_scores():
    np.testing.assert_array_equal(attnx.dot_score(Q, ANNOTATIONS), [927, 397, 148, 929])


def test_naive_softmax_is_nan_and_attnx_is_not():
    s = ANNOTATIONS @ Q
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(s) / np.exp(s).sum()
    assert np.isnan(naive).any()          # the failure attnx exists to avoid
    w = attnx.softmax(s)
    assert np.isfinite(w).all()


def test_weights_match_closed_form():
    w = attnx.softmax(attnx.dot_score(Q, ANNOTATIONS))
    e2 = np.exp(np.longdouble(2))
    exact = [1 / (1 + e2), np.exp(np.longdouble(-532)) / (1 + np.exp(np.longdouble(-2))),
             0.0, e2 / (1 + e2)]
    np.testing.assert_allclose(w, np.array(exact, dtype=np.float64), rtol=4e-16, atol=0)
    np.testing.assert_allclose(w, [1.19202922e-01, 7.94715151e-232, 0.0, 8.80797078e-01],
                               rtol=1e-8)
    assert w[2] == 0.0          # exp(-781) is below the smallest subnormal


@pytest.mark.parametrize("return_weights", [False, True])
def test_context(return_weights):
    res = attnx.attend(Q, ANNOTATIONS, return_weights=return_weights)
    ctx = res[0] if return_weights else res
    np.testing.assert_allclose(ctx, [3.88079708, 4.0728263, 45.26423912], rtol=1e-8)
    exact = attnx.context(attnx.softmax(ANNOTATIONS @ Q), ANNOTATIONS)
    np.testing.assert_allclose(ctx, exact, rtol=1e-15)


def test_tutorial_layout_columns():
    """The tutorial stores annotations as columns of a (3, 4) matrix; the
    transpose (a non-contiguous view) gives the same answer."""
    cols = ANNOTATIONS.T.copy()
    np.testing.assert_allclose(attnx.attend(Q, cols.T), attnx.attend(Q, ANNOTATIONS), rtol=0)
