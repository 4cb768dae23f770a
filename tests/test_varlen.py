"""attnx.attend_varlen: flash-attn's varlen layout (packed sequences,
cu_seqlens offsets), against tests/reference.py's `attention` run on each
sequence alone (causal lower-right aligned, as flash-attn), in float64 and
float32, at every SIMD level; and its errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attnx
import reference as ref

RNG = np.random.default_rng(31)
TOL = {np.float64: 1e-12, np.float32: 2e-4}
LSE_TOL = {np.float64: 1e-12, np.float32: 2e-5}


def packed(lq, lk, H, Hkv, d, dv, dtype=np.float64, cu_dtype=np.int32):
    q = RNG.standard_normal((sum(lq), H, d)).astype(dtype)
    k = RNG.standard_normal((sum(lk), Hkv, d)).astype(dtype)
    v = RNG.standard_normal((sum(lk), Hkv, dv)).astype(dtype)
    cq = np.concatenate([[0], np.cumsum(lq)]).astype(cu_dtype)
    ck = np.concatenate([[0], np.cumsum(lk)]).astype(cu_dtype)
    return q, k, v, cq, ck


def reference(q, k, v, cq, ck, scale=1.0, causal=False, window=None, alibi_slopes=None,
              softcap=None, enable_gqa=False):
    """Each sequence alone, heads first, lower-right aligned."""
    H, dv = q.shape[1], v.shape[2]
    out = np.zeros((q.shape[0], H, dv))
    lse = np.full((q.shape[0], H), -np.inf)
    for s in range(len(cq) - 1):
        qs, ks, vs = (x[a:b].transpose(1, 0, 2) for x, a, b in
                      ((q, cq[s], cq[s + 1]), (k, ck[s], ck[s + 1]), (v, ck[s], ck[s + 1])))
        if qs.shape[1] == 0 or ks.shape[1] == 0:
            continue
        sl = None
        if alibi_slopes is not None:
            sl = np.asarray(alibi_slopes)
            sl = sl[s] if sl.ndim == 2 else sl
        # lower-right positions for window and ALiBi, with or without causal:
        # "lower_right" plus a window that lets every key through when not causal
        kw = dict(scale=scale, window=window, alibi_slopes=sl, softcap=softcap,
                  enable_gqa=enable_gqa and k.shape[1] != H)
        if causal:
            o, _, l = ref.attention(qs, ks, vs, causal="lower_right", **kw)
        else:
            o, _, l = ref.attention(qs, ks, vs, query_offset=ks.shape[1] - qs.shape[1], **kw)
        out[cq[s]:cq[s + 1]] = o.transpose(1, 0, 2)
        lse[cq[s]:cq[s + 1]] = l.T
    return out, lse


def check(q, k, v, cq, ck, dtype, **kw):
    want, want_lse = reference(q, k, v, cq, ck, **kw)
    got = attnx.attend_varlen(q, k, v, cq, ck, **kw)
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])
    got2, lse = attnx.attend_varlen(q, k, v, cq, ck, return_lse=True, **kw)
    np.testing.assert_allclose(got2, want, rtol=TOL[dtype], atol=TOL[dtype])
    assert lse.shape == want_lse.shape and lse.dtype == dtype
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[fin], want_lse[fin], rtol=LSE_TOL[dtype], atol=LSE_TOL[dtype])
    return got


LENGTHS = {
    "equal": ([5, 5, 5], [5, 5, 5]),
    "mixed": ([1, 7, 3, 12], [4, 7, 20, 12]),
    "decode": ([1, 1, 1], [9, 33, 2]),
    "empty_seqs": ([0, 4, 3, 2], [3, 0, 5, 2]),          # no queries / no keys
    "more_queries": ([6, 2], [3, 2]),                      # early rows see nothing (causal)
    "tiled": ([70, 130], [300, 130]),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lengths", sorted(LENGTHS))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(1, 1), (4, 4), (4, 2), (6, 1)])
def test_matches_each_sequence_alone(simd, dtype, lengths, causal, heads):
    H, Hkv = heads
    q, k, v, cq, ck = packed(*LENGTHS[lengths], H, Hkv, 16, 8, dtype)
    check(q, k, v, cq, ck, dtype, scale=0.25, causal=causal, enable_gqa=Hkv not in (1, H))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", [
    dict(window=(3, 0), causal=True), dict(window=(2, 2)), dict(window=(None, 0)),
    dict(softcap=2.0), dict(alibi_slopes="H"), dict(alibi_slopes="BH", causal=True),
    dict(window=(4, 1), softcap=5.0, alibi_slopes="H", causal=True, enable_gqa=True),
], ids=lambda kw: "-".join(sorted(kw)))
def test_features(simd, dtype, kw):
    lq, lk = LENGTHS["mixed"]
    H, Hkv = 4, 2 if kw.get("enable_gqa") else 4
    q, k, v, cq, ck = packed(lq, lk, H, Hkv, 8, 5, dtype)
    kw = dict(kw)
    if kw.get("alibi_slopes") == "H":
        kw["alibi_slopes"] = RNG.random(H).astype(dtype)
    elif kw.get("alibi_slopes") == "BH":
        kw["alibi_slopes"] = RNG.random((len(lq), H)).astype(dtype)
    check(q, k, v, cq, ck, dtype, scale=8 ** -0.5, **kw)


def test_equals_attend_on_padded_batches(simd):
    """Equal lengths: the same as attend on (B, H, L, d) with
    causal='lower_right', bit for bit."""
    B, H, Lq, T, d = 3, 2, 4, 6, 8
    q, k, v = (RNG.standard_normal((B, H, n, d)) for n in (Lq, T, T))
    want = attnx.attend(q, k, v, causal="lower_right", scale=0.3)
    cq, ck = np.arange(B + 1) * Lq, np.arange(B + 1) * T
    got = attnx.attend_varlen(q.transpose(0, 2, 1, 3).reshape(B * Lq, H, d),
                              k.transpose(0, 2, 1, 3).reshape(B * T, H, d),
                              v.transpose(0, 2, 1, 3).reshape(B * T, H, d), cq, ck,
                              causal=True, scale=0.3)
    np.testing.assert_array_equal(got, want.transpose(0, 2, 1, 3).reshape(B * Lq, H, d))


def test_out_and_int64_offsets(simd):
    q, k, v, cq, ck = packed([3, 5], [4, 5], 2, 2, 8, 3, cu_dtype=np.int64)
    want, want_lse = attnx.attend_varlen(q, k, v, cq, ck, return_lse=True)
    o, lo = np.empty_like(want), np.empty_like(want_lse)
    res = attnx.attend_varlen(q, k, v, cq, ck, return_lse=True, out=(o, lo))
    assert res[0] is o and res[1] is lo
    np.testing.assert_array_equal(o, want)
    np.testing.assert_array_equal(lo, want_lse)
    assert attnx.attend_varlen(q, k, v, cq, ck, out=o) is o
    r = attnx.attend_varlen(q, k, v, cq, ck, return_lse=True, out=o)
    assert r[0] is o
    with pytest.raises(ValueError, match="out has shape"):
        attnx.attend_varlen(q, k, v, cq, ck, out=np.empty((8, 2, 4)))
    with pytest.raises(ValueError, match="shares memory"):
        attnx.attend_varlen(q, k, v, cq, ck, out=q.reshape(-1)[:48].reshape(8, 2, 3))
    # lists and float16 inputs are converted as attend's
    assert attnx.attend_varlen(q.astype(np.float16), k.astype(np.float32),
                               v.astype(np.float32), cq, ck).dtype == np.float32


def test_memory_beyond_the_results_is_that_of_one_sequence(simd):
    """Many heads, many sequences: the forward and the backward work one
    sequence at a time, so the memory they take beyond their results is
    about one sequence's (NumPy's allocations, as tracemalloc sees them),
    not a copy of the packed batch."""
    n, L, H, Hkv, d = 64, 32, 4, 2, 32
    q, k, v, cq, ck = packed([L] * n, [L] * n, H, Hkv, d, d)
    kw = dict(scale=d ** -0.5, causal=True, enable_gqa=True)
    batch = q.nbytes + k.nbytes + v.nbytes
    per_seq = batch // n
    for step in ("forward", "backward"):
        if step == "backward":
            out, lse = attnx.attend_varlen(q, k, v, cq, ck, return_lse=True, **kw)
            args = (np.ones_like(out), q, k, v, out, lse, cq, ck)
            fn = attnx.attend_varlen_backward
        else:
            args, fn = (q, k, v, cq, ck), attnx.attend_varlen
        res, peak = ref.peak_traced(
            lambda: fn(*args, return_lse=True, **kw) if step == "forward" else fn(*args, **kw))
        results = sum(r.nbytes for r in res)
        # the old forward copied query, keys, values and its result whole
        assert peak - results < 8 * per_seq, (step, peak - results, batch)
        if step == "forward":
            want, want_lse = reference(q, k, v, cq, ck, **kw)
            np.testing.assert_allclose(res[0], want, rtol=TOL[np.float64], atol=TOL[np.float64])


@settings(max_examples=30)
@given(st.data())
def test_random_batches(simd, data):
    B = data.draw(st.integers(1, 5))
    lq = data.draw(st.lists(st.integers(0, 9), min_size=B, max_size=B))
    lk = data.draw(st.lists(st.integers(0, 12), min_size=B, max_size=B))
    Hkv = data.draw(st.integers(1, 3))
    H = Hkv * data.draw(st.integers(1, 3))
    dtype = data.draw(st.sampled_from([np.float64, np.float32]))
    q, k, v, cq, ck = packed(lq, lk, H, Hkv, data.draw(st.integers(1, 9)),
                             data.draw(st.integers(1, 5)), dtype)
    side = st.one_of(st.none(), st.integers(0, 10))
    kw = dict(causal=data.draw(st.booleans()), enable_gqa=True)
    if data.draw(st.booleans()):
        kw["window"] = (data.draw(side), data.draw(side))
    if data.draw(st.booleans()):
        kw["softcap"] = data.draw(st.floats(0.5, 10))
    if data.draw(st.booleans()):
        kw["alibi_slopes"] = RNG.random(H).astype(dtype)
    check(q, k, v, cq, ck, dtype, **kw)


@pytest.mark.simd_independent
class TestErrors:
    q, k, v, cq, ck = packed([2, 3], [4, 1], 4, 2, 8, 3)

    def call(self, **kw):
        args = dict(query=self.q, keys=self.k, values=self.v, cu_seqlens_q=self.cq,
                    cu_seqlens_k=self.ck, enable_gqa=True)
        args.update(kw)
        return attnx.attend_varlen(**args)

    @pytest.mark.parametrize("which", ["cu_seqlens_q", "cu_seqlens_k"])
    def test_cu_seqlens(self, which):
        good = getattr(self, "cq" if which == "cu_seqlens_q" else "ck")
        total = good[-1]
        for bad, exc, says in [
            (good.astype(np.float64), TypeError, "int32 or int64"),
            (good.astype(np.uint32), TypeError, "int32 or int64"),
            (good.tolist(), None, None),                           # a list of ints is int64
            (np.array([1, 2, total], np.int32), ValueError, "start at 0"),
            (np.array([0, total, 1, total], np.int32), ValueError, "non-decreasing"),
            (np.array([0, 1, total + 1], np.int32), ValueError, "end at the total"),
            (np.array([0, 1, total - 1], np.int32), ValueError, "end at the total"),
            (good.reshape(1, -1), ValueError, "1-D"),
            (np.array([0, 1, 2, total], np.int32), ValueError, "both are B \\+ 1 long"),
        ]:
            if exc is None:
                self.call(**{which: bad})
                continue
            with pytest.raises(exc, match=f"{which}.*{says}|{says}"):
                self.call(**{which: bad})

    def test_shapes_and_heads(self):
        with pytest.raises(ValueError, match="query must have shape"):
            self.call(query=self.q[:, 0])
        with pytest.raises(ValueError, match="keys must have shape"):
            self.call(keys=self.k[None])
        with pytest.raises(ValueError, match="the last dimension"):
            self.call(query=self.q[..., :4])
        with pytest.raises(ValueError, match="values"):
            self.call(values=self.v[:, :1])
        with pytest.raises(ValueError, match="enable_gqa=True"):
            self.call(enable_gqa=False)
        with pytest.raises(ValueError, match="H % Hkv"):
            self.call(query=RNG.standard_normal((5, 3, 8)))
        with pytest.raises(ValueError, match="alibi_slopes has shape"):
            self.call(alibi_slopes=np.ones(3))
        with pytest.raises(ValueError, match="window"):
            self.call(window=(-1, 0))
        with pytest.raises(ValueError, match="softcap"):
            self.call(softcap=0.0)
        with pytest.raises(ValueError, match="pair"):
            self.call(return_lse=True, out=(None, None, None))

    def test_causal_message_is_varlens(self):
        """varlen's causal is lower-right (flash-attn's): a bad value is not
        told that True means top-left, attend's alignment."""
        for bad, exc in (("top_left", ValueError), (0.5, TypeError),
                         (np.array([True]), TypeError)):    # as attend's: a type is a TypeError
            with pytest.raises(exc, match="causal must be True \\(lower-right aligned"):
                self.call(causal=bad)
        out, lse = self.call(return_lse=True)
        with pytest.raises(ValueError, match="causal must be True \\(lower-right aligned"):
            attnx.attend_varlen_backward(np.ones_like(out), self.q, self.k, self.v, out, lse,
                                         self.cq, self.ck, enable_gqa=True, causal="top_left")
        np.testing.assert_array_equal(self.call(causal="lower_right"), self.call(causal=True))


# --- attend_varlen_backward -------------------------------------------------------

def fd_grads(q, k, v, cq, ck, W, h=1e-6, **kw):
    """d sum(W * out) / d(q, k, v) by central differences of the NumPy
    reference (no attnx kernel involved)."""
    f = lambda a, b, c: float((reference(a, b, c, cq, ck, **kw)[0] * W).sum())
    grads = []
    for which in range(3):
        x = (q, k, v)[which]
        g = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[i] += h
            xm[i] -= h
            a = [q, k, v]
            a[which] = xp
            fp = f(*a)
            a[which] = xm
            g[i] = (fp - f(*a)) / (2 * h)
        grads.append(g)
    return grads


BACKWARD_CASES = [
    dict(),
    dict(causal=True),
    dict(window=(2, 1)),
    dict(causal=True, window=(3, None), softcap=1.5),
    dict(alibi_slopes="BH"),
    dict(causal=True, alibi_slopes="H", enable_gqa=True),
]


@pytest.mark.parametrize("kw", BACKWARD_CASES, ids=lambda kw: "-".join(sorted(kw)) or "plain")
def test_backward_matches_finite_differences(simd, kw):
    lq, lk = [2, 0, 3, 4], [3, 2, 0, 5]          # a sequence without queries, one without keys
    H, Hkv = (4, 2) if kw.get("enable_gqa") else (2, 2)
    q, k, v, cq, ck = packed(lq, lk, H, Hkv, 3, 2)
    kw = dict(kw, scale=0.7)
    if kw.get("alibi_slopes") == "H":
        kw["alibi_slopes"] = RNG.random(H)
    elif kw.get("alibi_slopes") == "BH":
        kw["alibi_slopes"] = RNG.random((len(lq), H))
    out, lse = attnx.attend_varlen(q, k, v, cq, ck, return_lse=True, **kw)
    W = RNG.standard_normal(out.shape)
    got = attnx.attend_varlen_backward(W, q, k, v, out, lse, cq, ck, **kw)
    want = fd_grads(q, k, v, cq, ck, W, **kw)
    for name, g, w, x in zip(("query", "keys", "values"), got, want, (q, k, v)):
        assert g.shape == x.shape and g.dtype == np.float64, name
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=name)
    # rows of the sequence without keys, keys of the one without queries: 0
    assert not got[0][cq[2]:cq[3]].any()
    assert not got[1][ck[1]:ck[2]].any() and not got[2][ck[1]:ck[2]].any()


def test_backward_float32_threads_and_padded_equality(simd):
    """float32 within its precision of float64; bits independent of the
    thread count; equal lengths give attend_backward on the padded batch."""
    lq, lk = [37, 5, 64], [70, 5, 64]
    q, k, v, cq, ck = packed(lq, lk, 4, 2, 16, 8)
    kw = dict(scale=0.25, causal=True, window=(40, None), enable_gqa=True)
    out, lse = attnx.attend_varlen(q, k, v, cq, ck, return_lse=True, **kw)
    W = RNG.standard_normal(out.shape)
    g64 = attnx.attend_varlen_backward(W, q, k, v, out, lse, cq, ck, **kw)
    f = lambda x: x.astype(np.float32)
    out32, lse32 = attnx.attend_varlen(f(q), f(k), f(v), cq, ck, return_lse=True, **kw)
    g1 = attnx.attend_varlen_backward(f(W), f(q), f(k), f(v), out32, lse32, cq, ck,
                                      num_threads=1, **kw)
    g2 = attnx.attend_varlen_backward(f(W), f(q), f(k), f(v), out32, lse32, cq, ck,
                                      num_threads=2, **kw)
    for a, b, c in zip(g1, g2, g64):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=2e-3, atol=2e-3 * np.abs(c).max())
    B, H, L, d = 3, 2, 6, 4
    qb, kb, vb = (RNG.standard_normal((B, H, L, d)) for _ in range(3))
    o, l = attnx.attend(qb, kb, vb, causal="lower_right", return_lse=True)
    G = RNG.standard_normal(o.shape)
    want = attnx.attend_backward(G, qb, kb, vb, o, l, causal="lower_right")
    pk = lambda x: x.transpose(0, 2, 1, 3).reshape(B * L, H, -1)
    cu = np.arange(B + 1) * L
    got = attnx.attend_varlen_backward(pk(G), pk(qb), pk(kb), pk(vb), pk(o),
                                       l.transpose(0, 2, 1).reshape(B * L, H), cu, cu,
                                       causal=True)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, pk(b))


@pytest.mark.simd_independent
def test_backward_errors():
    q, k, v, cq, ck = packed([2, 3], [4, 1], 4, 2, 8, 3)
    out, lse = attnx.attend_varlen(q, k, v, cq, ck, return_lse=True, enable_gqa=True)
    call = lambda **kw: attnx.attend_varlen_backward(
        kw.pop("grad_out", out), q, k, v, kw.pop("out", out), kw.pop("lse", lse),
        kw.pop("cu_seqlens_q", cq), ck, **{"enable_gqa": True, **kw})
    with pytest.raises(ValueError, match="out has shape"):
        call(out=out[:, :2])
    with pytest.raises(ValueError, match="grad_out has shape"):
        call(grad_out=out[:4])
    with pytest.raises(ValueError, match="lse has shape"):
        call(lse=lse[:, :1])
    with pytest.raises(ValueError, match="cu_seqlens_q must end"):
        call(cu_seqlens_q=np.array([0, 2, 4], np.int32))
    with pytest.raises(ValueError, match="enable_gqa"):
        call(enable_gqa=False)
    with pytest.raises(ValueError, match="alibi_slopes"):
        call(alibi_slopes=np.ones(3))


@pytest.mark.simd_independent
def test_backward_out_and_lse_dtypes():
    """out and lse must be real floating (an integer lse gave wrong gradients,
    silently), and follow the work dtype that grad_out, query, keys and
    values decide."""
    q, k, v, cq, ck = packed([2, 3], [4, 1], 4, 2, 8, 3, dtype=np.float32)
    out, lse = attnx.attend_varlen(q, k, v, cq, ck, return_lse=True, enable_gqa=True)
    g = np.ones_like(out)
    call = lambda o, l: attnx.attend_varlen_backward(g, q, k, v, o, l, cq, ck, enable_gqa=True)
    for bad in (np.int64, np.bool_, np.complex64):
        with pytest.raises(TypeError, match="^lse must be a real floating array"):
            call(out, lse.astype(bad))
        with pytest.raises(TypeError, match="^out must be a real floating array"):
            call(out.astype(bad), lse)
    want = call(out, lse)
    for a, b in zip(call(out.astype(np.float64), lse.astype(np.float64)), want):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
