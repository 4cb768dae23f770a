"""attnx.attend against the NumPy reference: single and batched queries,
broadcasting, masks, causal, weights, out=, threads, layouts and errors."""
import numpy as np
import pytest

import attnx
import reference as ref

RNG = np.random.default_rng(7)


def rand(*shape, scale=1.0):
    return RNG.standard_normal(shape) * scale


def check(got, want, rtol=1e-12):
    """Contexts of unit-scale values: relative to the larger of the value
    and 1 (a context can cancel to near zero)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("T", ref.SIZES)
@pytest.mark.parametrize("d", (1, 3, 8, 17, 64, 65))
def test_single_query_sizes(T, d):
    dv = (T + d) % 19 + 1
    q, K, V = rand(d), rand(T, d), rand(T, dv)
    scale = 1 / np.sqrt(d)
    want_ctx, want_w = ref.attend(q, K, V, scale=scale)
    check(attnx.attend(q, K, V, scale=scale), want_ctx)
    ctx, w = attnx.attend(q, K, V, scale=scale, return_weights=True)
    check(ctx, want_ctx)
    np.testing.assert_allclose(w, want_w, rtol=1e-13, atol=0)


def test_values_default_to_keys():
    q, K = rand(6), rand(11, 6)
    want, _ = ref.attend(q, K, K)
    check(attnx.attend(q, K), want)
    check(attnx.attend(q, K, None), want)


@pytest.mark.parametrize("qshape,kshape,vshape", [
    ((5, 8), (7, 8), (7, 3)),                       # Lq queries, shared keys
    ((2, 5, 8), (2, 7, 8), (2, 7, 3)),              # batch
    ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4)),     # batch x heads
    ((2, 3, 5, 8), (3, 7, 8), (3, 7, 4)),           # keys broadcast over batch
    ((2, 3, 5, 8), (2, 1, 7, 8), (2, 1, 7, 4)),     # keys shared across heads
    ((1, 3, 5, 8), (4, 1, 7, 8), (1, 1, 7, 2)),     # both broadcast
    ((8,), (4, 7, 8), (4, 7, 5)),                   # one query, batched keys
    ((5, 8), (3, 7, 8), (7, 2)),                    # matmul-style promotion
])
def test_broadcasting(qshape, kshape, vshape):
    q, K, V = rand(*qshape), rand(*kshape), rand(*vshape)
    want_ctx, want_w = ref.attend(q, K, V, scale=0.3)
    ctx, w = attnx.attend(q, K, V, scale=0.3, return_weights=True)
    check(ctx, want_ctx)
    np.testing.assert_allclose(w, want_w, rtol=1e-13, atol=1e-300)
    check(attnx.attend(q, K, V, scale=0.3), want_ctx)


@pytest.mark.parametrize("mshape", [(7,), (5, 7), (1, 7), (2, 1, 5, 7), (2, 3, 1, 7), (5, 1)])
def test_mask_broadcasting(mshape):
    q, K, V = rand(2, 3, 5, 8), rand(2, 3, 7, 8), rand(2, 3, 7, 4)
    mask = RNG.random(mshape) > 0.4
    want_ctx, want_w = ref.attend(q, K, V, mask=mask)
    ctx, w = attnx.attend(q, K, V, mask=mask, return_weights=True)
    check(ctx, want_ctx)
    np.testing.assert_allclose(w, want_w, rtol=1e-13, atol=1e-300)
    check(attnx.attend(q, K, V, mask=mask), want_ctx)
    assert (w[~np.broadcast_to(mask, w.shape)] == 0).all()


def test_mask_single_query_and_non_contiguous_mask():
    q, K, V = rand(4), rand(9, 4), rand(9, 3)
    mask = (RNG.random((9, 2)) > 0.5)[:, 0]          # strided view
    want, _ = ref.attend(q, K, V, mask=mask)
    check(attnx.attend(q, K, V, mask=mask), want)
    check(attnx.attend(q, K, V, mask=mask.tolist()), want)
    rev = np.ones((3, 9), dtype=bool)
    rev[:, ::2] = False
    Q = rand(3, 4)
    want, _ = ref.attend(Q, K, V, mask=rev[::-1])     # negative row stride
    check(attnx.attend(Q, K, V, mask=rev[::-1]), want)


def test_fully_masked_queries_give_zeros():
    q, K, V = rand(3, 4), rand(6, 4), rand(6, 5)
    mask = np.ones((3, 6), dtype=bool)
    mask[1] = False
    ctx, w = attnx.attend(q, K, V, mask=mask, return_weights=True)
    assert (ctx[1] == 0).all() and (w[1] == 0).all()
    assert np.isfinite(ctx).all() and np.isfinite(w).all()
    np.testing.assert_array_equal(attnx.attend(q, K, V, mask=mask)[1], 0.0)
    np.testing.assert_array_equal(attnx.attend(q[0], K, V, mask=np.zeros(6, bool)), 0.0)


def test_masked_keys_are_never_read():
    q, K, V = rand(4), rand(6, 4), rand(6, 3)
    mask = np.array([1, 0, 1, 0, 1, 1], dtype=bool)
    want = attnx.attend(q, K, V, mask=mask)
    K2, V2 = K.copy(), V.copy()
    K2[~mask] = np.nan
    V2[~mask] = np.inf
    check(attnx.attend(q, K2, V2, mask=mask), want, rtol=0)
    ctx, w = attnx.attend(q, K2, V2, mask=mask, return_weights=True)
    check(ctx, want, rtol=1e-15)


@pytest.mark.parametrize("Lq,T", [(1, 1), (5, 5), (3, 8), (8, 3), (17, 33), (64, 64)])
def test_causal(Lq, T):
    q, K, V = rand(2, Lq, 8), rand(2, T, 8), rand(2, T, 4)
    want_ctx, want_w = ref.attend(q, K, V, causal=True, scale=0.5)
    ctx, w = attnx.attend(q, K, V, causal=True, scale=0.5, return_weights=True)
    check(ctx, want_ctx)
    np.testing.assert_allclose(w, want_w, rtol=1e-13, atol=1e-300)
    check(attnx.attend(q, K, V, causal=True, scale=0.5), want_ctx)
    assert (np.triu(w[0], 1) == 0).all()


def test_causal_and_mask():
    q, K, V = rand(6, 8), rand(6, 8), rand(6, 4)
    mask = RNG.random(6) > 0.3
    want, _ = ref.attend(q, K, V, mask=mask, causal=True)
    check(attnx.attend(q, K, V, mask=mask, causal=True), want)


def test_scale():
    q, K, V = rand(8), rand(10, 8), rand(10, 2)
    for scale in (0.0, -1.0, 0.125, 3.0):
        want, _ = ref.attend(q, K, V, scale=scale)
        check(attnx.attend(q, K, V, scale=scale), want)
    # scale 0: uniform weights, the mean of the values
    check(attnx.attend(q, K, V, scale=0.0), V.mean(axis=0))


def test_special_values():
    q, K, V = rand(3), rand(5, 3), rand(5, 2)
    qn = q.copy()
    qn[0] = np.nan
    assert np.isnan(attnx.attend(qn, K, V)).all()
    ctx, w = attnx.attend(qn, K, V, return_weights=True)
    assert np.isnan(ctx).all() and np.isnan(w).all()
    # scores near +-1e308 never overflow in the online rescale
    q = np.array([1e308])
    K = np.array([[1.0], [-1.0], [0.5]])
    V = np.array([[1.0], [2.0], [3.0]])
    np.testing.assert_array_equal(attnx.attend(q, K, V), [1.0])
    ctx, w = attnx.attend(q, K, V, return_weights=True)
    np.testing.assert_array_equal(w, [1.0, 0.0, 0.0])
    # -inf in the keys: that key's score is -inf (weight 0) or NaN
    K = rand(4, 2)
    K[2] = [-np.inf, 0.0]
    ctx, w = attnx.attend(np.array([1.0, 0.0]), K, rand(4, 2), return_weights=True)
    assert w[2] == 0.0 and np.isfinite(ctx).all()


@pytest.mark.parametrize("layout", ["c", "fortran", "strided", "transposed", "readonly", "list",
                                    "byteswapped"])
def test_layouts(layout):
    q, K, V = rand(5, 6), rand(9, 6), rand(9, 4)
    want = attnx.attend(q, K, V)
    lq, lk, lv = (ref.layouts(a)[layout] for a in (q, K, V))
    np.testing.assert_array_equal(attnx.attend(lq, lk, lv), want)
    np.testing.assert_array_equal(attnx.attend(lq[0], lk, lv), attnx.attend(q[0], K, V))


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, bool, np.int64])
def test_real_dtypes(dtype):
    q, K = np.array([1, 0, 2]), np.array([[1, 2, 0], [0, 1, 1], [2, 2, 2]])
    got = attnx.attend(q.astype(dtype), K.astype(dtype))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, attnx.attend(q.astype(dtype).astype(float),
                                                    K.astype(dtype).astype(float)))


def test_float32_mixed_with_float64_promotes():
    q, K = rand(4).astype(np.float32), rand(6, 4)
    got = attnx.attend(q, K)
    assert got.dtype == np.float64
    want, _ = ref.attend(q.astype(np.float64), K)
    check(got, want)


class TestErrors:
    def test_shape_mismatch_names_both(self):
        with pytest.raises(ValueError, match=r"\(5,\).*\(4, 3\)"):
            attnx.attend(np.ones(5), np.ones((4, 3)))
        with pytest.raises(ValueError, match=r"\(4, 3\).*\(5, 2\)"):
            attnx.attend(np.ones(3), np.ones((4, 3)), np.ones((5, 2)))
        with pytest.raises(ValueError, match="broadcast"):
            attnx.attend(np.ones((2, 5, 3)), np.ones((3, 4, 3)))

    def test_empty_keys(self):
        with pytest.raises(ValueError, match="T = 0"):
            attnx.attend(np.ones(3), np.ones((0, 3)))
        with pytest.raises(ValueError):
            attnx.attend(np.ones((2, 3)), np.ones((0, 3)), np.ones((0, 4)))

    @pytest.mark.parametrize("q,K", [(np.float64(1.0), np.ones((2, 1))), (np.ones(3), np.ones(3)),
                                     (np.ones(3), np.ones(()))])
    def test_too_few_dims(self, q, K):
        with pytest.raises(ValueError):
            attnx.attend(q, K)

    @pytest.mark.parametrize("bad", [np.ones(3, complex), np.array(["a", "b", "c"]),
                                     np.array([1, 2, 3], dtype=object), None, "abc"])
    def test_type_errors(self, bad):
        with pytest.raises(TypeError):
            attnx.attend(bad, np.ones((2, 3)))
        with pytest.raises(TypeError):
            attnx.attend(np.ones(3), np.ones((2, 3)), np.array([bad, bad]) if bad is not None
                         else np.array([[None] * 3] * 2))

    def test_mask_errors(self):
        q, K = np.ones(3), np.ones((4, 3))
        with pytest.raises(TypeError, match="boolean"):
            attnx.attend(q, K, mask=np.ones(4))
        with pytest.raises(ValueError, match=r"\(5,\).*\(4,\)"):
            attnx.attend(q, K, mask=np.ones(5, bool))
        with pytest.raises(ValueError):
            attnx.attend(q, K, mask=np.ones((2, 4), bool))   # would enlarge the result

    def test_num_threads(self):
        for bad in (0, -2):
            with pytest.raises(ValueError):
                attnx.attend(np.ones(3), np.ones((4, 3)), num_threads=bad)
        with pytest.raises(TypeError):
            attnx.attend(np.ones(3), np.ones((4, 3)), num_threads=1.5)


class TestOut:
    def test_single(self):
        q, K, V = rand(4), rand(6, 4), rand(6, 3)
        out = np.full(3, np.nan)
        assert attnx.attend(q, K, V, out=out) is out
        np.testing.assert_array_equal(out, attnx.attend(q, K, V))

    def test_batched_and_weights(self):
        q, K, V = rand(2, 5, 4), rand(2, 6, 4), rand(2, 6, 3)
        want_ctx, want_w = attnx.attend(q, K, V, return_weights=True)
        co, wo = np.empty((2, 5, 3)), np.empty((2, 5, 6))
        ctx, w = attnx.attend(q, K, V, return_weights=True, out=(co, wo))
        assert ctx is co and w is wo
        np.testing.assert_array_equal(co, want_ctx)
        np.testing.assert_array_equal(wo, want_w)
        ctx, w = attnx.attend(q, K, V, return_weights=True, out=(None, wo))
        assert w is wo
        ctx, w = attnx.attend(q, K, V, return_weights=True, out=co)
        assert ctx is co

    @pytest.mark.parametrize("bad", [np.empty(4), np.empty(3, np.float32), np.empty(6)[::2],
                                     np.empty((1, 3)), [0.0, 0.0, 0.0], np.empty(3, ">f8")])
    def test_unfit(self, bad):
        with pytest.raises(ValueError):
            attnx.attend(np.ones(4), np.ones((6, 4)), np.ones((6, 3)), out=bad)

    def test_read_only(self):
        out = np.empty(3)
        out.flags.writeable = False
        with pytest.raises(ValueError, match="writeable"):
            attnx.attend(np.ones(4), np.ones((6, 4)), np.ones((6, 3)), out=out)

    @pytest.mark.parametrize("batched", [False, True])
    def test_aliasing_an_input_is_refused(self, batched):
        K = rand(6, 4)
        q = rand(2, 4) if batched else rand(4)
        before = (q.copy(), K.copy())
        with pytest.raises(ValueError, match="memory"):
            attnx.attend(q, K, out=q)
        with pytest.raises(ValueError, match="memory"):
            attnx.attend(q, K, out=K[:q.shape[0]] if batched else K[0])
        np.testing.assert_array_equal(q, before[0])
        np.testing.assert_array_equal(K, before[1])


def test_threads_agree():
    q, K, V = rand(3, 4, 16, 32), rand(3, 4, 40, 32), rand(3, 4, 40, 8)
    one = attnx.attend(q, K, V, causal=True, num_threads=1)
    np.testing.assert_array_equal(attnx.attend(q, K, V, causal=True, num_threads=2), one)
    np.testing.assert_array_equal(attnx.attend(q, K, V, causal=True), one)


def test_long_single_query_split_across_threads():
    """A long sequence goes through the flash-decoding split (partial states
    merged by their running max and sum); it must equal the reference."""
    T, d, dv = 70_000, 4, 3
    q, K, V = rand(d, scale=2.0), rand(T, d, scale=2.0), rand(T, dv)
    mask = np.ones(T, bool)
    mask[: T // 2] = False                           # a whole chunk masked
    for m in (None, mask):
        want, _ = ref.attend(q, K, V, mask=m)
        for nt in (1, 2, None):
            check(attnx.attend(q, K, V, mask=m, num_threads=nt), want, rtol=1e-11)


def test_d_and_dv_zero():
    q, K, V = np.ones(0), np.ones((5, 0)), rand(5, 3)
    check(attnx.attend(q, K, V), V.mean(axis=0))          # all scores 0: uniform
    assert attnx.attend(rand(3), rand(5, 3), np.ones((5, 0))).shape == (0,)


def test_empty_batch():
    ctx, w = attnx.attend(np.ones((0, 4, 3)), np.ones((0, 5, 3)), return_weights=True)
    assert ctx.shape == (0, 4, 3) and w.shape == (0, 4, 5)
    assert attnx.attend(np.ones((0, 3)), np.ones((5, 3))).shape == (0, 3)
