"""attnx's own vectorised exp: within 1 ulp of the exact result over
[-745, 709.78], measured on 10^6 points against long double (or mpmath where
long double is no wider than float64). The measured maximum is printed."""
import numpy as np
import pytest

from attnx import kernels
import reference as ref

RNG = np.random.default_rng(2026)


def attnx_exp(x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    return kernels._exp(x, np.empty_like(x))


def test_one_million_points_within_one_ulp():
    x = np.concatenate([
        RNG.uniform(-745.0, 709.78, 600_000),
        RNG.uniform(-1.0, 1.0, 200_000),            # where the polynomial matters most
        RNG.uniform(-745.0, -708.0, 100_000),       # subnormal results
        RNG.uniform(-40.0, 0.0, 100_000),           # softmax's working range
    ])
    y = attnx_exp(x)
    if ref.LONG_IS_WIDER:
        exact = np.exp(x.astype(np.longdouble))
        err = ref.ulp_error(y, exact)
    else:
        mpmath = pytest.importorskip("mpmath")
        mpmath.mp.dps = 30
        pick = RNG.choice(len(x), 100_000, replace=False)
        x, y = x[pick], y[pick]
        exact = np.array([float(mpmath.exp(mpmath.mpf(v))) for v in x])
        err = np.abs(y - exact) / np.spacing(np.abs(exact))
    i = int(np.argmax(err))
    print(f"\nexp max error {err.max():.3f} ulp at x = {x[i]!r}; "
          f"{np.mean(err > 0.5) * 100:.2f}% of {len(x)} points not correctly rounded")
    assert err.max() <= 1.0


def test_special_values():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 709.79, 710.0, 1e308, -745.2, -1e308,
                  1e-300, -1e-300, 709.782712893384, -745.1332191019411])
    y = attnx_exp(x)
    assert y[0] == 1.0 and y[1] == 1.0
    assert y[2] == np.inf and y[3] == 0.0 and np.isnan(y[4])
    assert y[5] == np.inf and y[6] == np.inf and y[7] == np.inf
    assert y[8] == 0.0 and y[9] == 0.0
    assert y[10] == 1.0 and y[11] == 1.0
    assert np.isfinite(y[12]) and y[12] > 1.79e308            # largest finite result
    assert y[13] == 5e-324                                    # smallest subnormal


def test_in_place_and_sizes():
    for n in (1, 2, 3, 7, 8, 9, 15, 16, 17, 33):
        x = RNG.uniform(-20, 20, n)
        want = np.exp(x)
        kernels._exp(x, x)
        np.testing.assert_allclose(x, want, rtol=4e-16)
