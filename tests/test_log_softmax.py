"""attnx.log_softmax against scipy.special.log_softmax and a long-double
oracle, including the tail where log(softmax(x)) underflows to -inf."""
import numpy as np
import pytest

import attnx
import reference as ref

RNG = np.random.default_rng(99)


def exact(x, axis=-1):
    """log-softmax in long double, with log1p of the non-maximal terms: the
    dominant entry's value is -log1p(R), which log(1 + R) would round to 0
    once R is below long double's epsilon."""
    xl = np.asarray(x, dtype=np.float64).astype(np.longdouble)
    m = np.max(xl, axis=axis, keepdims=True)
    e = np.exp(xl - m)
    at_max = xl == m
    c = np.sum(at_max, axis=axis, keepdims=True)
    r = np.sum(np.where(at_max, 0, e), axis=axis, keepdims=True)
    log_s = np.where(c == 1, np.log1p(r), np.log(c + r))
    return (xl - m) - log_s


def max_ulp(got, x, axis=-1):
    return ref.ulp_error(got, exact(x, axis)).max()


@pytest.mark.parametrize("n", ref.SIZES + (1000, 100_000))
def test_accuracy_over_a_spread_of_1000(n):
    if not ref.LONG_IS_WIDER:
        pytest.skip("long double is float64 here")
    x = RNG.uniform(-500, 500, n)
    assert max_ulp(attnx.log_softmax(x), x) <= 4.0


def test_accuracy_report(capsys):
    if not ref.LONG_IS_WIDER:
        pytest.skip("long double is float64 here")
    sp = pytest.importorskip("scipy.special")
    x = RNG.uniform(-500, 500, (20, 5000))
    ours, theirs = max_ulp(attnx.log_softmax(x), x), max_ulp(sp.log_softmax(x, axis=-1), x)
    with capsys.disabled():
        print(f"\nlog_softmax max error, spread 1000: attnx {ours:.2f} ulp, scipy {theirs:.2f} ulp")
    assert ours <= 4.0


def test_tail_where_softmax_underflows():
    x = np.array([0.0, -1000.0, -5000.0, 3.0])
    got = attnx.log_softmax(x)
    assert np.isfinite(got).all()
    with np.errstate(divide="ignore"):
        naive = np.log(attnx.softmax(x))
    assert np.isneginf(naive[1]) and np.isneginf(naive[2])
    np.testing.assert_allclose(got, (exact(x)).astype(float), rtol=4e-16)


@pytest.mark.parametrize("shape,axis", [((5, 7), -1), ((5, 7), 0), ((3, 4, 5), (0, 2)),
                                        ((3, 4, 5), None), ((6,), 0)])
def test_axes_match_scipy(shape, axis):
    sp = pytest.importorskip("scipy.special")
    x = RNG.standard_normal(shape) * 20
    got = attnx.log_softmax(x, axis=axis)
    want = sp.log_softmax(x, axis=axis)
    assert got.shape == x.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_consistent_with_softmax():
    x = RNG.standard_normal((4, 50)) * 5
    np.testing.assert_allclose(np.exp(attnx.log_softmax(x)), attnx.softmax(x), rtol=1e-14)


def test_special_values_like_scipy():
    sp = pytest.importorskip("scipy.special")
    rows = np.array([[1.0, np.nan, 2.0], [1.0, np.inf, 2.0], [-np.inf] * 3, [-np.inf, 0.0, 1.0],
                     [1e308, -1e308, 0.0]])
    got = attnx.log_softmax(rows)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        want = sp.log_softmax(rows, axis=-1)
    np.testing.assert_array_equal(got[:3], want[:3])
    assert np.isnan(got[[0, 2]]).all()
    np.testing.assert_array_equal(got[1], [-np.inf, np.nan, -np.inf])
    assert got[3, 0] == -np.inf and np.isfinite(got[3, 1:]).all()
    assert got[4, 0] == 0.0 and got[4, 1] == -np.inf and got[4, 2] == -1e308


def test_out_in_place_and_errors():
    x = RNG.standard_normal((3, 8))
    want = attnx.log_softmax(x)
    out = np.empty((3, 8))
    assert attnx.log_softmax(x, out=out) is out
    np.testing.assert_array_equal(out, want)
    y = x.copy()
    assert attnx.log_softmax(y, out=y) is y
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(attnx.log_softmax(x.T.copy().T), want)   # Fortran order
    np.testing.assert_array_equal(attnx.log_softmax(x.tolist()), want)
    with pytest.raises(ValueError):
        attnx.log_softmax(x, out=np.empty((3, 7)))
    buf = np.zeros(10)
    with pytest.raises(ValueError):
        attnx.log_softmax(buf[:8], out=buf[2:])
    with pytest.raises(TypeError):
        attnx.log_softmax(np.ones(3, complex))
    assert attnx.log_softmax(np.empty((2, 0))).shape == (2, 0)
    assert attnx.log_softmax(2.0, axis=None) == 0.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dominant_score_with_an_inexact_difference(dtype):
    """One dominant score whose differences to the others round (a max near
    1000, gaps of 5 to 700): its log-softmax, -log1p(R), needs R from the
    exps of the exact differences, exp(hi + lo); exps of the rounded hi
    alone cost up to 445 ulp in float64. Every entry within 4 ulp of a long
    double oracle, in the dtype's own ulps."""
    if not ref.LONG_IS_WIDER:
        pytest.skip("long double is float64 here")
    g = np.random.default_rng(5)
    top = 700.0 if dtype == np.float64 else 80.0     # float32: R stays normal
    a = g.uniform(100.0, 1000.0, (300, 1))
    x = np.concatenate([a, a - g.uniform(5.0, top, (300, 3))], axis=1).astype(dtype)
    got = attnx.log_softmax(x)
    assert got.dtype == dtype
    want = exact(x)
    ulp = np.spacing(np.abs(want.astype(dtype))).astype(np.longdouble)
    err = (np.abs(got.astype(np.longdouble) - want) / ulp).astype(np.float64)
    assert err[:, 0].max() <= 4.0, (err[:, 0].max(), x[np.argmax(err[:, 0])])
    assert err.max() <= 4.0


def test_every_other_score_far_below_the_max():
    """float64 rows whose other scores all sit 590 to 740 below the max: R,
    the sum of their exps, is below 2^-850 (its lanes' Kahan compensations
    would be subnormal), so the kernel sums relative to the second largest
    score and scales by exp(m2 - m). The max's entry, -log1p(R) ~ -R, is a
    tiny normal number (or subnormal past ~708) and every entry stays within
    4 ulp of a long double oracle."""
    if not ref.LONG_IS_WIDER:
        pytest.skip("long double is float64 here")
    g = np.random.default_rng(6)
    a = g.uniform(-50.0, 50.0, (200, 1))
    x = np.concatenate([a, a - g.uniform(590.0, 740.0, (200, 40))], axis=1)
    x[:, [0, 7]] = x[:, [7, 0]]                  # the max not first
    got = attnx.log_softmax(x)
    want = exact(x)
    ulp = np.spacing(np.abs(want.astype(np.float64))).astype(np.longdouble)
    err = (np.abs(got.astype(np.longdouble) - want) / ulp).astype(np.float64)
    assert err[:, 7].max() <= 4.0, (err[:, 7].max(), x[np.argmax(err[:, 7])])
    assert err.max() <= 4.0
    assert (got[:, 7] < 0).all()                 # never rounded to 0


@pytest.mark.parametrize("dtype,gaps", [(np.float64, (700.0, 712.0, 715.0, 720.0, 746.0)),
                                         (np.float32, (80.0, 95.0, 100.0))])
def test_dominant_score_over_subnormal_exps(dtype, gaps):
    """One score at 0 and n others at -gap, their exps subnormal (or near
    it): the max's entry is -log1p(n e^-gap), a tiny number (normal, or
    subnormal for the widest gaps). Summing the subnormal exps, or one
    exp(m2 - m) rounded to the subnormal grid and then multiplied by n,
    cost 30 to 45000 ulp; within 4 ulp now (subnormal results: within 2
    units of their grid). Found by a reviewer."""
    if not ref.LONG_IS_WIDER:
        pytest.skip("long double is float64 here")
    for gap in gaps:
        for n in (10, 4096, 100_000):
            x = np.concatenate([[0.0], np.full(n, -gap)]).astype(dtype)
            got = attnx.log_softmax(x)
            R = n * np.exp(np.longdouble(-gap) + 0)      # the exact x - m is -gap
            want = -np.log1p(R)
            tiny = np.finfo(dtype).tiny
            unit = np.spacing(dtype(abs(want))) if abs(want) >= tiny else np.finfo(dtype).smallest_subnormal
            err = abs(np.longdouble(got[0]) - want) / np.longdouble(unit)
            bound = 4.0 if abs(want) >= tiny else 2.0
            assert err <= bound, (dtype, gap, n, got[0], want, float(err))
            assert (got[1:] == dtype(-gap)).all()      # -gap - log1p(R): R far below its ulp


def test_dominant_score_keeps_its_tiny_log():
    """With one dominant score the answer for it is -log1p(R) ~ -R; forming
    log(1 + R) would round it to 0 (SciPy's answer), losing all digits."""
    for gap in (40.0, 60.0, 300.0):
        y = attnx.log_softmax([0.0, -gap])
        np.testing.assert_allclose(y[0], -np.exp(-gap), rtol=4e-16)
        assert y[1] == -gap
