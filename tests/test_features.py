"""What shapes the scores (issue 13): bias, ALiBi slopes, grouped-query
attention, sliding windows, lower-right causal alignment, key lengths and
softcap, alone and together, on every path (single query, batched, tiled,
split-K), in float64 and float32, at every SIMD level. References: PyTorch's
scaled_dot_product_attention where it has the feature (float attn_mask,
enable_gqa, is_causal, causal_lower_right), and tests/reference.py's
`attention` (dense float64 scores) for the rest."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attnx
import reference as ref

RNG = np.random.default_rng(13)
# the bounds of the existing tests: contexts 1e-12 (float64) relative to
# max(|value|, 1); float32 2e-5 x 10 as tests/test_merge.py; lse 1e-13 / 2e-5
CTX_TOL = {np.float64: 1e-12, np.float32: 2e-4}
LSE_TOL = {np.float64: 1e-12, np.float32: 2e-5}
W_TOL = {np.float64: 1e-12, np.float32: 2e-4}


def rand(*shape, dtype=np.float64, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


def check(got, want, dtype, what="context"):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert got.dtype == dtype, (what, got.dtype)
    tol = {"context": CTX_TOL, "lse": LSE_TOL, "weights": W_TOL}[what][dtype]
    if what == "lse":
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=what)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], rtol=tol, atol=tol, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


def check_all(dtype, q, K, V, **kw):
    """attend on its three routes (context only: the fused or tiled kernel;
    with lse; with weights and lse: two passes) against the reference."""
    want_ctx, want_w, want_lse = ref.attention(q, K, V, **kw)
    check(attnx.attend(q, K, V, **kw), want_ctx, dtype)
    ctx, lse = attnx.attend(q, K, V, return_lse=True, **kw)
    check(ctx, want_ctx, dtype)
    check(lse, want_lse, dtype, "lse")
    ctx, w, lse = attnx.attend(q, K, V, return_weights=True, return_lse=True, **kw)
    check(ctx, want_ctx, dtype)
    check(w, want_w, dtype, "weights")
    check(lse, want_lse, dtype, "lse")
    return want_ctx, want_lse


# --- PyTorch where it has the feature ------------------------------------------

torch = None
try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    pass
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


def sdpa(q, k, v, **kw):
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (q, k, v)]
    m = kw.get("attn_mask")
    if isinstance(m, np.ndarray):
        kw["attn_mask"] = torch.from_numpy(np.ascontiguousarray(m))
    return F.scaled_dot_product_attention(*t, **kw).numpy()


@needs_torch
@pytest.mark.parametrize("bshape", [(5, 7), (2, 1, 5, 7), (1, 3, 1, 7), (1, 7), (2, 3, 5, 7),
                                    (3, 5, 1)])
def test_bias_matches_torch_float_attn_mask(bshape):
    q, k, v = rand(2, 3, 5, 8), rand(2, 3, 7, 8), rand(2, 3, 7, 4)
    bias = rand(*bshape, scale=2.0)
    bias[..., 0] = -np.inf if bshape[-1] > 1 else bias[..., 0]      # -inf masks a key
    want = sdpa(q, k, v, attn_mask=bias)
    got = attnx.attend(q, k, v, scale=8 ** -0.5, bias=bias)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@needs_torch
@pytest.mark.parametrize("H,Hkv", [(8, 2), (8, 1), (4, 4), (6, 3)])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_matches_torch(H, Hkv, causal):
    q, k, v = rand(2, H, 9, 16), rand(2, Hkv, 9, 16), rand(2, Hkv, 9, 8)
    want = sdpa(q, k, v, is_causal=causal, enable_gqa=True)
    got = attnx.attend(q, k, v, scale=0.25, causal=causal, enable_gqa=True)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@needs_torch
@pytest.mark.parametrize("Lq,T", [(1, 1), (1, 9), (4, 9), (9, 9), (70, 300)])
def test_lower_right_causal_matches_torch(Lq, T):
    from torch.nn.attention.bias import causal_lower_right
    q, k, v = rand(2, 3, Lq, 16), rand(2, 3, T, 16), rand(2, 3, T, 8)
    t = [torch.from_numpy(a) for a in (q, k, v)]
    want = F.scaled_dot_product_attention(*t, attn_mask=causal_lower_right(Lq, T)).numpy()
    np.testing.assert_allclose(attnx.attend(q, k, v, scale=0.25, causal="lower_right"), want,
                               rtol=1e-12, atol=1e-12)
    if Lq == T:      # the same as top-left
        np.testing.assert_allclose(attnx.attend(q, k, v, scale=0.25, causal=True), want,
                                   rtol=1e-12, atol=1e-12)


@needs_torch
def test_gqa_bias_and_causal_together_match_torch():
    """torch takes a float attn_mask with enable_gqa (not with is_causal):
    the causal part goes into torch's mask as -inf."""
    H, Hkv, L = 8, 2, 33
    q, k, v = rand(2, H, L, 16), rand(2, Hkv, L, 16), rand(2, Hkv, L, 16)
    bias = rand(1, H, L, L)
    causal = np.where(np.tri(L, dtype=bool), 0.0, -np.inf)
    want = sdpa(q, k, v, attn_mask=bias + causal, enable_gqa=True)
    got = attnx.attend(q, k, v, scale=0.25, bias=bias, causal=True, enable_gqa=True)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# --- the reference: each feature, each path ---------------------------------------

FEATURES = {
    "bias": dict(bias="full"),
    "bias_row": dict(bias="row"),
    "alibi": dict(alibi_slopes="heads"),
    "alibi_causal": dict(alibi_slopes="heads", causal=True),
    "alibi_lower_right": dict(alibi_slopes="heads", causal="lower_right"),
    "window": dict(window=(3, 2)),
    "window_left": dict(window=(4, None)),
    "window_right": dict(window=(None, 1)),
    "window_causal": dict(window=(5, 0), causal=True),
    "window_lower_right": dict(window=(5, 0), causal="lower_right"),
    "key_lengths": dict(key_lengths="batch"),
    "key_lengths_lower_right": dict(key_lengths="batch", causal="lower_right"),
    "softcap": dict(softcap=2.5),
    "softcap_bias": dict(softcap=1.5, bias="full"),
    "gqa": dict(enable_gqa=True),
    "everything": dict(bias="full", window=(6, 1), enable_gqa=True, key_lengths="batch",
                       causal=True, alibi_slopes="heads", softcap=3.0),
    "everything_lower_right": dict(bias="row", window=(4, 0), enable_gqa=True,
                                   key_lengths="batch", causal="lower_right",
                                   alibi_slopes="heads", softcap=3.0),
}


def make_case(feature, dtype, B, H, Lq, T, d, dv, single=False, Hkv=None):
    """query, keys, values and the keyword arguments of a FEATURES entry."""
    kw = dict(FEATURES[feature])
    gqa = kw.get("enable_gqa", False)
    Hkv = (H // 2 if H % 2 == 0 else H) if gqa and Hkv is None else (Hkv or H)
    q = rand(d, dtype=dtype) if single else rand(B, H, Lq, d, dtype=dtype)   # (d,): broadcast
    K, V = rand(B, Hkv, T, d, dtype=dtype), rand(B, Hkv, T, dv, dtype=dtype)
    sc = (B, H) if single else (B, H, Lq)
    if kw.get("bias") == "full":
        kw["bias"] = rand(*sc, T, dtype=dtype)
    elif kw.get("bias") == "row":                        # broadcast over B (and the rows)
        kw["bias"] = rand(H, T, dtype=dtype) if single else rand(H, 1, T, dtype=dtype)
    if "alibi_slopes" in kw:
        kw["alibi_slopes"] = (2.0 ** -np.arange(1, H + 1)).astype(dtype)
    if "key_lengths" in kw:
        kw["key_lengths"] = RNG.integers(1, T + 1, size=(B, 1))
    return q, K, V, dict(kw, scale=d ** -0.5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_each_feature_batched(simd, dtype, feature):
    q, K, V, kw = make_case(feature, dtype, B=2, H=4, Lq=9, T=23, d=8, dv=5)
    check_all(dtype, q, K, V, **kw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_each_feature_single_query(simd, dtype, feature):
    """A (d,) query against (B, H) batches of keys: causal only lower-right aligned
    (top-left refuses a lone query); without causal, positions are top-left
    (the query sits at 0) unless "lower_right"."""
    kw0 = FEATURES[feature]
    if kw0.get("causal") is True or kw0.get("enable_gqa"):
        pytest.skip("top-left causal refuses a lone query; GQA needs query rows")
    q, K, V, kw = make_case(feature, dtype, B=2, H=4, Lq=1, T=37, d=8, dv=5, single=True)
    check_all(dtype, q, K, V, **kw)
    # the same as a one-row query
    kw_rows = dict(kw)
    if "bias" in kw:
        kw_rows["bias"] = kw["bias"][..., None, :]          # (..., T) -> (..., 1, T)
    one = attnx.attend(q[..., None, :], K, V, **kw_rows)[..., 0, :]
    np.testing.assert_allclose(attnx.attend(q, K, V, **kw), one, rtol=CTX_TOL[dtype],
                               atol=CTX_TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("feature", ["bias", "window_causal", "key_lengths_lower_right",
                                     "alibi_causal", "softcap", "everything",
                                     "everything_lower_right"])
def test_each_feature_tiled(simd, dtype, feature):
    """Lq >= 64 and T in the hundreds: the tiled kernel (context only), whose
    tiles wholly outside a window or past a key length are skipped."""
    q, K, V, kw = make_case(feature, dtype, B=1, H=2, Lq=100, T=700, d=32, dv=16)
    check_all(dtype, q, K, V, **kw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", [dict(causal="lower_right"), dict(window=(40, 3)),
                                dict(causal="lower_right", window=(17, 0)),
                                dict(causal=True, key_lengths=np.array([[150], [190]]))],
                         ids=["lower_right", "window", "window_lower_right", "causal_key_lengths"])
def test_tiled_chunks_whose_keys_end_off_the_block_grid(simd, dtype, kw):
    """The tiled kernel takes queries in chunks of 64 rows and packs K once
    for all of them: a later chunk whose rows see keys past where an earlier
    chunk's range ended (not on a 16-key edge) must still see them all.
    150 rows = 64 + 64 + 22; T = 203."""
    q, K, V = rand(2, 2, 150, 24, dtype=dtype), rand(2, 2, 203, 24, dtype=dtype), rand(2, 2, 203, 8, dtype=dtype)
    check_all(dtype, q, K, V, scale=0.3, **kw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("dv", [1, 15, 16, 17, 37, 69, 80])
@pytest.mark.parametrize("causal", [False, True])
def test_tiled_value_widths(simd, dtype, dv, causal):
    """With more than 64 query rows in a work item (8 batch items: the rows
    are not split further) the tiled kernel packs V once, in column panels
    of 2 vectors (16 float64 / 32 float32 at AVX-512), and its P.V tiles
    take the last columns a vector at a time: value widths below, at, and
    past a panel, and past two with a tail, each against the reference."""
    q, K, V = rand(8, 130, 24, dtype=dtype), rand(8, 203, 24, dtype=dtype), rand(8, 203, dv, dtype=dtype)
    check_all(dtype, q, K, V, scale=0.3, causal=causal)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tiled_keys_some_rows_weigh(simd, dtype):
    """A scattered mask: most register tiles hold keys that only some of
    their rows weigh (the tiled kernel gives the other rows 0 weights there
    when the values are finite). A non-finite value row reaches only the
    rows whose mask lets it through: those rows are not finite, every other
    row equals the reference with that value row zeroed."""
    r = np.random.default_rng(7)
    Lq, T = 100, 203
    # 8 batch items: each work item keeps its 100 rows, so K and V are packed once
    q, K, V = (r.standard_normal(s).astype(dtype) for s in ((8, Lq, 24), (8, T, 24), (8, T, 8)))
    mask = r.random((8, Lq, T)) < 0.7
    bad = [5, 150]
    mask[:, :, bad] = False
    mask[:, [3, 40, 77], 5] = True                  # three rows see key 5, one key 150
    mask[:, 64, 150] = True
    Vbad = V.copy()
    Vbad[:, 5] = np.nan
    Vbad[:, 150, 2] = np.inf
    V[:, bad] = 0
    check_all(dtype, q, K, V, mask=mask, scale=0.3)   # finite values: every route
    want, _, _ = ref.attention(q, K, V, mask=mask, scale=0.3)
    got = attnx.attend(q, K, Vbad, mask=mask, scale=0.3)
    sees = mask[:, :, bad].any(axis=2)
    assert not np.isfinite(got[sees]).all(axis=-1).any()
    check(got[~sees], want[~sees], dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("feature", ["bias", "window_lower_right", "key_lengths_lower_right",
                                     "alibi_lower_right", "softcap"])
def test_each_feature_split_k(simd, dtype, feature):
    """A few query rows over T >= 8192 keys: the split-K path."""
    q, K, V, kw = make_case(feature, dtype, B=1, H=2, Lq=1, T=9000, d=8, dv=4, single=True)
    if feature == "window_lower_right":
        kw["window"] = (5000, 0)                     # spans two partitions
    check_all(dtype, q, K, V, **kw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_in_bias_reaches_only_its_rows(simd, dtype):
    q, K, V = rand(2, 3, 10, 8, dtype=dtype), rand(2, 3, 12, 8, dtype=dtype), \
        rand(2, 3, 12, 4, dtype=dtype)
    bias = rand(2, 3, 10, 12, dtype=dtype)
    bias[1, 2, 4, 7] = np.nan                 # row (1, 2, 4)
    bias[0, 1, 6, 11] = np.nan                # a key that row 6 does not see (window)
    kw = dict(bias=bias, window=(3, 3))
    want_ctx, want_lse = check_all(dtype, q, K, V, **kw)
    ctx, lse = attnx.attend(q, K, V, return_lse=True, **kw)
    nan_rows = np.isnan(ctx).any(axis=-1)
    expected = np.zeros(nan_rows.shape, bool)
    expected[1, 2, 4] = True
    np.testing.assert_array_equal(nan_rows, expected)
    assert np.isnan(ctx[1, 2, 4]).all() and np.isnan(lse[1, 2, 4])
    assert np.isfinite(lse[~expected]).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T", [64, 700])
def test_a_nan_score_among_minus_inf_ones_makes_its_row_nan(simd, dtype, T):
    """Every row's scores are -inf but one NaN, at a different key per row
    (every lane of every key block among the rows); with T=700 the rows
    also have finite scores in the first superblock, so the NaN sits in a
    later one whose other scores are all -inf. The max over those scores
    may drop the NaN; the row must be NaN all the same."""
    Lq = 96
    q, K, V = rand(1, 2, Lq, 8, dtype=dtype), rand(1, 2, T, 8, dtype=dtype), \
        rand(1, 2, T, 4, dtype=dtype)
    bias = np.full((Lq, T), -np.inf, dtype)
    rows = np.arange(Lq)
    bias[rows, (T - 64) + rows % 64] = np.nan
    if T > 256:
        bias[:, :10] = 0.0
    want_ctx, want_lse = ref.attention(q, K, V, bias=bias)[::2]
    assert np.isnan(want_ctx).all() and np.isnan(want_lse).all()
    for out in (attnx.attend(q, K, V, bias=bias, return_lse=True),
                attnx.attend(q, K, V, bias=bias, return_weights=True, return_lse=True)[::2]):
        ctx, lse = out
        assert np.isnan(ctx).all(), np.argwhere(~np.isnan(ctx))[:5]
        assert np.isnan(lse).all(), np.argwhere(~np.isnan(lse))[:5]
    assert np.isnan(attnx.attend(q, K, V, bias=bias)).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("how", ["key_lengths_zero", "window_before_keys", "lower_right_Lq_gt_T",
                                 "bias_all_-inf", "everything_together"])
def test_fully_masked_rows_give_zeros_and_lse_minus_inf(simd, dtype, how):
    B, H, Lq, T = 2, 2, 12, 8
    q, K, V = rand(B, H, Lq, 8, dtype=dtype), rand(B, H, T, 8, dtype=dtype), \
        rand(B, H, T, 3, dtype=dtype)
    kw = {
        "key_lengths_zero": dict(key_lengths=[[0], [5]]),
        "window_before_keys": dict(window=(0, 0), key_lengths=4),  # rows >= 4 see nothing
        "lower_right_Lq_gt_T": dict(causal="lower_right"),         # rows < Lq - T
        "bias_all_-inf": dict(bias=np.where(np.arange(Lq)[:, None] % 3 == 0, -np.inf,
                                            np.zeros((Lq, T))).astype(dtype)),
        "everything_together": dict(causal="lower_right", window=(1, 0), key_lengths=[[3], [8]],
                                    mask=np.arange(T) != 2, softcap=1.0),
    }[how]
    want_ctx, want_lse = check_all(dtype, q, K, V, **kw)
    none = np.isneginf(want_lse)
    assert none.any() and not none.all()
    for ctx, lse in (attnx.attend(q, K, V, return_lse=True, **kw),
                     attnx.attend(q, K, V, return_lse=True, return_weights=True, **kw)[::2]):
        assert (ctx[none] == 0).all() and np.isneginf(lse[none]).all()
    assert (attnx.attend(q, K, V, **kw)[none] == 0).all()


def test_window_equals_the_band_mask(simd):
    q, K, V = rand(3, 40, 8), rand(3, 50, 8), rand(3, 50, 8)
    i, t = np.arange(40)[:, None], np.arange(50)[None, :]
    for left, right in [(0, 0), (3, 5), (None, 2), (7, None), (100, 100)]:
        band = np.ones((40, 50), bool)
        if left is not None:
            band &= t >= i - left
        if right is not None:
            band &= t <= i + right
        # equal up to rounding: tiles outside the window are skipped, not masked
        np.testing.assert_allclose(attnx.attend(q, K, V, window=(left, right)),
                                   attnx.attend(q, K, V, mask=band), rtol=1e-13, atol=1e-13)


def test_key_lengths_equal_a_padding_mask_and_skip_padded_keys(simd):
    """key_lengths[b] = n: the same as the mask t < n; padded keys (NaN here)
    are never read."""
    q, K, V = rand(3, 4, 6, 8), rand(3, 4, 20, 8), rand(3, 4, 20, 5)
    lengths = np.array([20, 7, 1])
    K[1, :, 7:] = np.nan
    V[2, :, 1:] = np.inf
    mask = np.arange(20) < lengths[:, None, None, None]
    want = attnx.attend(q, K, V, mask=mask)
    assert np.isfinite(want).all()
    np.testing.assert_allclose(attnx.attend(q, K, V, key_lengths=lengths[:, None]), want,
                               rtol=1e-13, atol=1e-13)
    # a (d,) query against 3 sequences
    got = attnx.attend(q[0, 0, 0], K[:, 0], V[:, 0], key_lengths=lengths)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, attnx.attend(q[0, 0, 0], K[:, 0], V[:, 0],
                                                 mask=mask[:, 0, 0]), rtol=1e-13, atol=1e-13)


def test_gqa_reads_kv_head_h_over_group(simd):
    """Query head h reads kv head h // (H // Hkv): the same as repeating the
    kv heads (np.repeat), bit for bit; K and V are never copied."""
    q, K, V = rand(2, 6, 5, 8), rand(2, 3, 9, 8), rand(2, 3, 9, 4)
    want = attnx.attend(q, np.repeat(K, 2, axis=1), np.repeat(V, 2, axis=1))
    np.testing.assert_array_equal(attnx.attend(q, K, V, enable_gqa=True), want)
    # MQA: one kv head needs no flag (it broadcasts), and the flag changes nothing
    np.testing.assert_array_equal(attnx.attend(q, K[:, :1], V[:, :1], enable_gqa=True),
                                  attnx.attend(q, K[:, :1], V[:, :1]))


def test_gqa_never_copies_keys_or_values(simd):
    H, Hkv, T, d = 16, 2, 4096, 64
    q, K, V = rand(1, H, 1, d), rand(1, Hkv, T, d), rand(1, Hkv, T, d)
    attnx.attend(q, K, V, enable_gqa=True)
    _, peak = ref.peak_traced(lambda: attnx.attend(q, K, V, enable_gqa=True))
    assert peak < K.nbytes // 4, peak


def test_broadcast_bias_is_never_expanded(simd):
    """A (1, 1, L, L) bias, or a broadcast view of (T,), is read through its
    strides: no (B, H, Lq, T) buffer appears."""
    B, H, L = 4, 4, 256
    q, K, V = rand(B, H, L, 16), rand(B, H, L, 16), rand(B, H, L, 16)
    small = rand(1, 1, L, L)
    view = np.broadcast_to(rand(L), (B, H, L, L))
    for bias in (small, view):
        attnx.attend(q, K, V, bias=bias)
        _, peak = ref.peak_traced(lambda: attnx.attend(q, K, V, bias=bias))
        assert peak < 2 * q.nbytes, peak          # the result, nothing of (B, H, L, L)
        want = attnx.attend(q, K, V, bias=np.ascontiguousarray(np.broadcast_to(bias, (B, H, L, L))))
        np.testing.assert_array_equal(attnx.attend(q, K, V, bias=bias), want)


@pytest.mark.parametrize("layout", ["fortran", "reversed", "strided", "float32_to_64", "list",
                                    "int"])
def test_bias_layouts_and_dtypes(simd, layout):
    q, K, V = rand(2, 5, 8), rand(2, 7, 8), rand(2, 7, 3)
    b = rand(2, 5, 7)
    bias = {"fortran": np.asfortranarray(b), "reversed": b[..., ::-1].copy()[..., ::-1],
            "strided": np.repeat(b, 2, axis=-1)[..., ::2], "float32_to_64": b.astype(np.float32),
            "list": b.tolist(), "int": np.round(b * 3).astype(np.int64)}[layout]
    want_ctx, _, _ = ref.attention(q, K, V, bias=np.asarray(bias, dtype=np.float64))
    check(attnx.attend(q, K, V, bias=bias), want_ctx, np.float64)


def test_float32_bias_and_slopes_follow_the_query(simd):
    """bias and slopes take the work dtype (the query's): float64 ones with
    float32 operands are rounded to float32, the result stays float32."""
    q, K, V = rand(2, 5, 8, dtype=np.float32), rand(2, 7, 8, dtype=np.float32), \
        rand(2, 7, 3, dtype=np.float32)
    bias, slopes = rand(5, 7), np.array([0.5, 0.25])
    got = attnx.attend(q, K, V, bias=bias, alibi_slopes=slopes)
    assert got.dtype == np.float32
    want = attnx.attend(q, K, V, bias=bias.astype(np.float32),
                        alibi_slopes=slopes.astype(np.float32))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kl_shape", [(), (1,), (2, 1), (2, 3), (1, 3), (1, 1, 1)])
@pytest.mark.parametrize("sl_shape", [(3,), (1, 3), (2, 3), (1,)])
def test_key_lengths_and_slopes_broadcast(simd, kl_shape, sl_shape):
    q, K, V = rand(2, 3, 6, 8), rand(2, 3, 11, 8), rand(2, 3, 11, 4)
    kl = RNG.integers(0, 12, size=kl_shape)
    slopes = RNG.random(sl_shape)
    check_all(np.float64, q, K, V, key_lengths=kl, alibi_slopes=slopes, causal="lower_right")


def test_gqa_broadcasts_masks_bias_slopes_and_lengths_per_query_head(simd):
    H, Hkv = 6, 2
    q, K, V = rand(2, H, 7, 8), rand(2, Hkv, 10, 8), rand(2, Hkv, 10, 4)
    kw = dict(mask=RNG.random((1, H, 7, 10)) > 0.2, bias=rand(H, 1, 10),
              alibi_slopes=RNG.random(H), key_lengths=RNG.integers(1, 11, size=(2, H)),
              enable_gqa=True, causal="lower_right", window=(None, 2))
    check_all(np.float64, q, K, V, **kw)


def test_return_lse_shapes_and_out(simd):
    H, Hkv = 4, 2
    q, K, V = rand(3, H, 5, 8), rand(3, Hkv, 9, 8), rand(3, Hkv, 9, 6)
    kw = dict(enable_gqa=True, bias=rand(5, 9), window=(2, None), causal=True)
    ctx, w, lse = attnx.attend(q, K, V, return_weights=True, return_lse=True, **kw)
    assert ctx.shape == (3, H, 5, 6) and w.shape == (3, H, 5, 9) and lse.shape == (3, H, 5)
    outs = (np.empty_like(ctx), np.empty_like(w), np.empty_like(lse))
    res = attnx.attend(q, K, V, return_weights=True, return_lse=True, out=outs, **kw)
    assert all(r is o for r, o in zip(res, outs))
    for r, x in zip(res, (ctx, w, lse)):
        np.testing.assert_array_equal(r, x)
    o = np.empty_like(ctx)
    assert attnx.attend(q, K, V, out=o, **kw) is o
    np.testing.assert_array_equal(o, attnx.attend(q, K, V, **kw))
    # a 1-D query: lse of shape () per batch item
    c1, l1 = attnx.attend(q[0, 0, 0], K[0, 0], V[0, 0], return_lse=True, softcap=2.0)
    assert c1.shape == (6,) and l1.shape == ()
    # out sharing memory with the bias is refused, nothing written
    buf = np.zeros((3, H, 5, 9))
    o = np.ndarray((3, H, 5, 6), dtype=np.float64, buffer=buf)
    with pytest.raises(ValueError, match="shares memory"):
        attnx.attend(q, K, V, out=o, enable_gqa=True, bias=buf)
    assert (buf == 0).all()


def test_causal_modes(simd):
    q, K = rand(4, 8), rand(9, 8)
    np.testing.assert_array_equal(attnx.attend(q, K, causal="lower_right"),
                                  attnx.attend(q, K, causal=True, query_offset=5))
    np.testing.assert_array_equal(attnx.attend(q, K, causal=np.True_), attnx.attend(q, K, causal=True))
    np.testing.assert_array_equal(attnx.attend(q, K, causal=0), attnx.attend(q, K))
    # a lone query lower-right aligned sees every key
    np.testing.assert_array_equal(attnx.attend(q[0], K, causal="lower_right"), attnx.attend(q[0], K))
    # the additive score takes "lower_right" too
    Wq, v, Wk = rand(5, 8), rand(5), rand(5, 8)
    got = attnx.attend(q, K, causal="lower_right", score="additive", W_q=Wq, v=v, W_k=Wk)
    band = np.tril(np.ones((4, 9), bool), 5)
    np.testing.assert_allclose(got, attnx.attend(q, K, mask=band, score="additive", W_q=Wq,
                                                 v=v, W_k=Wk), rtol=1e-15, atol=1e-15)
    # the general score takes every new keyword (it is a dot score of W^T q)
    W, bias = rand(8, 8), rand(9)
    np.testing.assert_allclose(
        attnx.attend(q, K, score="general", W=W, window=(1, 1), bias=bias),
        attnx.attend(q @ W, K, window=(1, 1), bias=bias), rtol=1e-13, atol=1e-13)


def test_lower_right_with_key_lengths_aligns_to_each_items_length(simd):
    """With key_lengths, "lower_right" puts the last query at each item's
    last real key (flash-attn's cache_seqlens): the same as attending that
    item's keys[:n] alone, lower-right; window and ALiBi positions follow."""
    B, Lq, T, d = 3, 4, 11, 8
    q, K, V = rand(B, Lq, d), rand(B, T, d), rand(B, T, 5)
    kl = np.array([11, 7, 4])
    for kw in ({}, {"window": (2, 0)}, {"alibi_slopes": np.array([0.3, 0.5, 0.7])}):
        got = attnx.attend(q, K, V, causal="lower_right", key_lengths=kl, **kw)
        for b in range(B):
            n = kl[b]
            one = {k: (v[b] if k == "alibi_slopes" else v) for k, v in kw.items()}
            want = attnx.attend(q[b], K[b, :n], V[b, :n], causal="lower_right", **one)
            np.testing.assert_allclose(got[b], want, rtol=1e-14, atol=1e-14)
    # and not at T: with Lq == T, key_lengths = 2 leaves rows 0 and 1 with no key
    q1, K1 = rand(4, d), rand(4, d)
    got = attnx.attend(q1, K1, np.eye(4), causal="lower_right", key_lengths=2)
    np.testing.assert_array_equal(got[:2], 0)
    np.testing.assert_array_equal(got[2], [1, 0, 0, 0])        # row 2 sees key 0 alone
    assert got[3, 2:].max() == 0 and abs(got[3, :2].sum() - 1) < 1e-15   # row 3: keys 0, 1


@settings(max_examples=40)
@given(st.data())
def test_random_combinations_match_the_reference(simd, data):
    """Hypothesis draws shapes, dtypes and any subset of the features."""
    dtype = data.draw(st.sampled_from([np.float64, np.float32]))
    Hkv = data.draw(st.integers(1, 3))
    G = data.draw(st.integers(1, 3))
    gqa = G > 1 or data.draw(st.booleans())
    H = Hkv * G if gqa else Hkv
    B = data.draw(st.integers(1, 2))
    Lq = data.draw(st.sampled_from([1, 2, 5, 17, 70]))
    T = data.draw(st.sampled_from([1, 3, 8, 31, 130]))
    d, dv = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 9))
    g = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    q = g.standard_normal((B, H, Lq, d)).astype(dtype)
    K = g.standard_normal((B, Hkv, T, d)).astype(dtype)
    V = g.standard_normal((B, Hkv, T, dv)).astype(dtype)
    kw = {"scale": float(d) ** -0.5, "enable_gqa": gqa}
    kw["causal"] = data.draw(st.sampled_from([False, True, "lower_right"]))
    if data.draw(st.booleans()):
        shape = data.draw(st.sampled_from([(B, H, Lq, T), (Lq, T), (T,), (H, 1, T), (1, Lq, 1)]))
        kw["bias"] = (g.standard_normal(shape) * 2).astype(dtype)
    if data.draw(st.booleans()):
        kw["alibi_slopes"] = (g.random(data.draw(st.sampled_from([(H,), (B, H)])))).astype(dtype)
    if data.draw(st.booleans()):
        side = st.one_of(st.none(), st.integers(0, 2 * T))
        kw["window"] = (data.draw(side), data.draw(side))
    if data.draw(st.booleans()):
        kw["key_lengths"] = g.integers(0, T + 1, size=data.draw(st.sampled_from([(), (B, 1),
                                                                                   (B, H)])))
    if data.draw(st.booleans()):
        kw["softcap"] = data.draw(st.floats(0.5, 30))
    if data.draw(st.booleans()):
        kw["mask"] = g.random((Lq, T)) > 0.3
    check_all(dtype, q, K, V, **kw)


# --- bad input ------------------------------------------------------------------------

@pytest.mark.simd_independent
class TestErrors:
    q, K, V = rand(2, 4, 5, 8), rand(2, 2, 7, 8), rand(2, 2, 7, 3)

    def test_bias(self):
        q, K = rand(2, 5, 8), rand(2, 7, 8)
        for shape in [(5, 6), (3, 5, 7), (2, 4, 7), (7, 5)]:
            with pytest.raises(ValueError, match=r"bias has shape .* does not broadcast"):
                attnx.attend(q, K, bias=np.zeros(shape))
        with pytest.raises(TypeError, match="bias.*mask="):
            attnx.attend(q, K, bias=np.ones((5, 7), bool))
        with pytest.raises(TypeError, match="bias"):
            attnx.attend(q, K, bias=np.ones((5, 7), complex))
        with pytest.raises(TypeError, match="bias"):
            attnx.attend(q, K, bias="zero")

    def test_gqa_heads(self):
        with pytest.raises(ValueError, match=r"enable_gqa.*H % Hkv"):
            attnx.attend(rand(2, 5, 5, 8), self.K, self.V, enable_gqa=True)
        with pytest.raises(ValueError, match="enable_gqa.*heads axis"):
            attnx.attend(rand(5, 8), rand(7, 8), enable_gqa=True)
        with pytest.raises(ValueError, match="enable_gqa.*values"):
            attnx.attend(self.q, self.K, rand(2, 1, 7, 3), enable_gqa=True)
        with pytest.raises(ValueError, match="do not broadcast"):     # without the flag
            attnx.attend(self.q, self.K, self.V)

    @pytest.mark.parametrize("window,exc,says", [
        ((-1, 0), ValueError, "left side must be >= 0"), ((0, -2), ValueError, "right side"),
        ((1.5, 0), TypeError, "left side must be an integer"), ((0, "1"), TypeError, "right"),
        ((True, 0), TypeError, "left"), ((1, 2, 3), ValueError, "pair"), ((1,), ValueError, "pair"),
        (3, TypeError, "pair"), ("ab", TypeError, "pair")])
    def test_window(self, window, exc, says):
        with pytest.raises(exc, match=f"window.*{says}|{says}.*window"):
            attnx.attend(self.q, self.K, self.V, enable_gqa=True, window=window)

    @pytest.mark.parametrize("kl,exc,says", [
        (-1, ValueError, r"key_lengths must lie in \[0, T=7\]"), ([[3], [8]], ValueError, "T=7"),
        (2.0, TypeError, "key_lengths must be integers"), ([True, False], TypeError, "integers"),
        (np.zeros((3, 1), int), ValueError, "key_lengths has shape"),
        (np.zeros((2, 2, 2), int), ValueError, "key_lengths has shape")])
    def test_key_lengths(self, kl, exc, says):
        with pytest.raises(exc, match=says):
            attnx.attend(self.q, self.K, self.V, enable_gqa=True, key_lengths=kl)

    @pytest.mark.parametrize("cap,exc", [(0, ValueError), (0.0, ValueError), (-1.0, ValueError),
                                         (float("nan"), ValueError), ("1", TypeError),
                                         (True, TypeError), (np.ones(2), TypeError)])
    def test_softcap(self, cap, exc):
        with pytest.raises(exc, match="softcap"):
            attnx.attend(self.q, self.K, self.V, enable_gqa=True, softcap=cap)

    @pytest.mark.parametrize("slopes", [np.ones(3), np.ones((3, 4)), np.ones((2, 2, 4)),
                                        np.ones((4, 1, 1))])
    def test_alibi_slopes(self, slopes):
        with pytest.raises(ValueError, match=r"alibi_slopes has shape .*\(H,\) or \(\.\.\., H\)"):
            attnx.attend(self.q, self.K, self.V, enable_gqa=True, alibi_slopes=slopes)
        with pytest.raises(TypeError, match="alibi_slopes"):
            attnx.attend(self.q, self.K, self.V, enable_gqa=True, alibi_slopes=np.ones(4, complex))

    def test_causal(self):
        with pytest.raises(ValueError, match="causal must be"):
            attnx.attend(self.q, self.K, self.V, enable_gqa=True, causal="upper_left")
        with pytest.raises(TypeError, match="causal must be"):
            attnx.attend(self.q, self.K, self.V, enable_gqa=True, causal=1.5)

    def test_new_keywords_belong_to_the_dot_score(self):
        q, K = rand(5, 8), rand(7, 8)
        with pytest.raises(ValueError, match="dot score"):
            attnx.attend(q, K, score="additive", W_q=rand(3, 8), v=rand(3), W_k=rand(3, 8),
                         bias=np.zeros(7))
        with pytest.raises(TypeError, match="unexpected keyword argument 'windows'"):
            attnx.attend(q, K, windows=(1, 1))

def test_empty_shapes(simd):
    """Lq = 0, a batch dimension of 0, dv = 0: empty results of the right
    shapes, with every keyword."""
    kw = dict(bias=np.zeros((1, 7)), window=(1, 1), key_lengths=3, softcap=2.0,
              alibi_slopes=np.ones(2), causal="lower_right")
    assert attnx.attend(rand(2, 0, 8), rand(2, 7, 8), rand(2, 7, 3), **kw).shape == (2, 0, 3)
    assert attnx.attend(rand(0, 2, 5, 8), rand(7, 8), **kw).shape == (0, 2, 5, 8)
    q, K = rand(2, 5, 8), rand(2, 7, 8)
    ctx, lse = attnx.attend(q, K, rand(2, 7, 0), return_lse=True, **kw)
    assert ctx.shape == (2, 5, 0)
    check(lse, ref.attention(q, K, **kw)[2], np.float64, "lse")      # rows 0, 1 see nothing
    o, l = attnx.attend_varlen(rand(0, 2, 8), rand(0, 2, 8), rand(0, 2, 3), [0], [0],
                               return_lse=True)
    assert o.shape == (0, 2, 3) and l.shape == (0, 2)
