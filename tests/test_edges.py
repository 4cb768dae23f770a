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


@pytest.mark.parametrize("axis", [True, np.True_, [0, 1], [1], 1.0, "0", (0, 1.5), (True,)])
def test_softmax_axis_types_numpy_refuses_are_refused(axis):
    """axis is None, an integer or a tuple of integers, as in NumPy's
    reductions and scipy.special.softmax: NumPy raises TypeError for each of
    these, and so does attnx, at every entry point taking axis."""
    x = np.ones((2, 3))
    with pytest.raises(TypeError):
        np.max(x, axis=axis)
    for f in (attnx.softmax, attnx.log_softmax):
        with pytest.raises(TypeError):
            f(x, axis=axis)


@pytest.mark.parametrize("axis", [2, -3, 2**31, -2**31 - 1, 2**70, (0, 5)])
def test_softmax_axis_out_of_range_is_an_axis_error_however_large(axis):
    x = np.ones((2, 3))
    for f in (attnx.softmax, attnx.log_softmax):
        with pytest.raises(np.exceptions.AxisError):
            f(x, axis=axis)


def test_softmax_repeated_axis_and_integer_likes():
    x = np.arange(6.0).reshape(2, 3)
    with pytest.raises(ValueError, match="repeated axis|duplicate"):
        attnx.softmax(x, axis=(1, -1))
    want = attnx.softmax(x, axis=0)
    for ax in (np.int64(0), np.int8(0), np.uint64(0), (np.int32(0),), -2):
        np.testing.assert_array_equal(attnx.softmax(x, axis=ax), want)


@pytest.mark.parametrize("n", [2**31, 2**40, 10**30])
def test_more_threads_than_exist_is_as_many_as_exist(n):
    q, K = np.ones(3), np.arange(12.0).reshape(4, 3)
    want = attnx.attend(q, K, num_threads=1)
    np.testing.assert_array_equal(attnx.attend(q, K, num_threads=n), want)
    np.testing.assert_array_equal(attnx.softmax(K, num_threads=n), attnx.softmax(K))


@pytest.mark.parametrize("n", [True, False, 1.0, "2"])
def test_num_threads_that_is_not_an_integer_is_a_type_error(n):
    with pytest.raises(TypeError, match="num_threads must be a positive integer or None"):
        attnx.attend(np.ones(3), np.ones((4, 3)), num_threads=n)


def test_general_score_shape_errors_name_the_arrays_passed():
    q, K, W = np.ones(2), np.ones((4, 5)), np.ones((2, 3))
    for call in (lambda: attnx.general_score(q, K, W),
                 lambda: attnx.attend(np.ones((6, 2)), K, score="general", W=W)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "(4, 5)" in msg and "(2, 3)" in msg
        assert "(3,)" not in msg and "(6, 3)" not in msg      # not the internal q @ W


def test_an_empty_result_returns_at_once_whatever_the_row_count():
    """(2^40, 0) contexts hold nothing: no loop over 2^40 rows. The call
    would otherwise run for hours; a subprocess with a timeout tells."""
    import subprocess
    import sys
    code = ("import numpy as np, attnx\n"
            "print(attnx.attend(np.empty((2**40, 0)), np.empty((3, 0))).shape)\n"
            "print(attnx.attend(np.empty((2, 2**40, 0)), np.empty((3, 0)), np.empty((3, 0))).shape)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd="/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == [f"({2**40}, 0)", f"(2, {2**40}, 0)"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("Lq, T, d, dv", [(1, 300, 64, 8), (2, 2048, 16, 16), (3, 700, 32, 4),
                                          (100, 300, 16, 8)])
def test_bits_do_not_depend_on_where_the_rows_lie_in_memory(simd, dtype, Lq, T, d, dv):
    """The fold reads key rows from their vector-aligned base when they are
    not aligned (AVX2, AVX-512); its sums must come out in the lanes, and so
    with the bits, of aligned rows: at every element offset within 64 bytes,
    for the keys, the values and the query, the same results bit for bit."""
    g = np.random.default_rng(Lq * T + d)
    q, K, V = (g.standard_normal(s).astype(dtype) for s in ((Lq, d), (T, d), (T, dv)))
    want = attnx.attend(q, ref.placed(K, 0), ref.placed(V, 0), return_lse=True)
    size = np.dtype(dtype).itemsize
    for off in range(size, 64, size):
        for args in ((q, ref.placed(K, off), V), (q, K, ref.placed(V, off)),
                     (ref.placed(q, off), ref.placed(K, (3 * off) % 64), ref.placed(V, (5 * off) % 64))):
            got = attnx.attend(*args, return_lse=True)
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b, err_msg=f"offset {off}")
    # the values are the keys
    want = attnx.attend(q, ref.placed(K, 0))
    for off in range(size, 64, size):
        np.testing.assert_array_equal(attnx.attend(q, ref.placed(K, off)), want, err_msg=f"offset {off}")


@pytest.mark.parametrize("dtype, big", [(np.float64, 1e308), (np.float32, 3e38)], ids=["float64", "float32"])
def test_lse_and_out_agree_when_a_score_overflows_in_one_summation_order_only(simd, dtype, big):
    """q.k = big * (1+1+...-1-0.75) is finite, but summed in order over d it
    overflows at the second term; lane by lane (8 lanes of float64 at
    AVX-512) it does not. The tiled kernel then saw inf and the row was
    recomputed two-pass with a finite context, while its lse stayed the
    tile's NaN. Whatever the order, out and lse of a row tell the same."""
    k = np.array([1.0] * 8 + [-1.0] * 7 + [-0.75], dtype=dtype)
    q = np.full((9, 16), big, dtype=dtype)
    K = np.zeros((5, 16), dtype=dtype)
    K[2] = k
    V = np.random.default_rng(0).standard_normal((5, 3)).astype(dtype)
    mask = np.zeros((9, 5), dtype=bool)
    mask[:, 2] = True
    out, lse = attnx.attend(q, K, V, mask=mask, return_lse=True)
    for r in range(9):
        assert np.isfinite(lse[r]) == np.isfinite(out[r]).all(), (r, lse[r], out[r])
        if np.isfinite(lse[r]):
            assert np.array_equal(out[r], V[2])
        else:
            assert np.isnan(out[r]).all() and np.isnan(lse[r])
