"""Pure-NumPy references for every attnx kernel.

Written independently of the C code: plain float64 NumPy (matmul, max, exp,
sum) for shape and semantics, and np.longdouble versions for accuracy. They
encode the documented semantics (docs/failure-model.md): -inf scores weigh 0,
NaN or +inf in a softmax slice makes it NaN, an all -inf softmax slice is NaN,
a query with nothing to attend to gets zeros, masked keys are never read and
zero weights do not contribute.
"""
import tracemalloc

import numpy as np

LONG_IS_WIDER = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant


def dot_score(q, K, scale=1.0):
    q = np.asarray(q, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if q.ndim == 1:
        return scale * (K @ q)
    return scale * (q @ np.swapaxes(K, -1, -2))


def softmax(x, axis=-1, dtype=np.float64):
    """Stable softmax in `dtype` over one axis, a tuple of axes, or None (all),
    with SciPy's semantics for NaN, +inf and all -inf slices."""
    x = np.asarray(x, dtype=np.float64).astype(dtype)
    if axis is None:
        axis = tuple(range(x.ndim))
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        m = np.max(x, axis=axis, keepdims=True) if x.size else x
        e = np.exp(x - m)
        return (e / np.sum(e, axis=axis, keepdims=True)).astype(np.float64)


def context(w, V):
    """sum_t w[..., t] * V[..., t, :], zero weights skipped (their rows unread)."""
    w = np.asarray(w, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    Vz = np.where((w == 0)[..., None], 0.0, V[..., :, :]) if V.size else V
    return np.einsum("...t,...tj->...j", w, Vz)


def attend(q, K, V=None, scale=1.0, mask=None, causal=False, dtype=np.float64):
    """Attention by the book: scores, masked to -inf, softmax (rows with
    nothing to attend to give zeros), then the weighted sum. Returns
    (context, weights) in float64; `dtype` is the working precision."""
    q = np.asarray(q, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    V = K if V is None else np.asarray(V, dtype=np.float64)
    single = q.ndim == 1
    q2 = q[None, :] if single else q
    qd, Kd, Vd = q2.astype(dtype), K.astype(dtype), V.astype(dtype)
    s = dtype(scale) * (qd @ np.swapaxes(Kd, -1, -2))
    Lq, T = s.shape[-2], s.shape[-1]
    allowed = np.ones(s.shape, dtype=bool)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if single:
            m = m[..., None, :]
        allowed = allowed & m
    if causal:
        allowed = allowed & np.tril(np.ones((Lq, T), dtype=bool))
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        s = np.where(allowed, s, -np.inf)
        m = np.max(s, axis=-1, keepdims=True)
        nothing = m == -np.inf
        e = np.exp(s - np.where(nothing, 0, m))
        w = np.where(nothing, 0, e / np.where(nothing, 1, e.sum(axis=-1, keepdims=True)))
        Vb = np.broadcast_to(Vd, np.broadcast_shapes(Vd.shape[:-2], w.shape[:-2]) + Vd.shape[-2:])
        Vz = np.where((w == 0)[..., :, :, None], 0, Vb[..., None, :, :]) if Vd.size else Vb[..., None, :, :]
        ctx = np.einsum("...it,...itj->...ij", w, Vz)
    ctx, w = ctx.astype(np.float64), w.astype(np.float64)
    if single:
        ctx, w = ctx[..., 0, :], w[..., 0, :]
    return ctx, w


def ulp_error(got, exact):
    """|got - exact| in units of the last place of exact rounded to float64
    (exact given in long double; subnormal ulps below DBL_MIN)."""
    got = np.asarray(got, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.longdouble)
    ref = exact.astype(np.float64)
    both_nan = np.isnan(got) & np.isnan(ref)
    same_inf = np.isinf(got) & (got == ref)
    ulp = np.spacing(np.abs(ref)).astype(np.longdouble)
    with np.errstate(invalid="ignore"):
        err = (np.abs(got.astype(np.longdouble) - exact) / ulp).astype(np.float64)
    err[both_nan | same_inf] = 0.0
    return err


def softmax_exact(x, axis=-1):
    """Softmax in long double (the 'correctly rounded' reference to within a
    fraction of a float64 ulp where long double is wider)."""
    x = np.asarray(x, dtype=np.float64).astype(np.longdouble)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        e = np.exp(x - m)
        return e / np.sum(e, axis=axis, keepdims=True)


# Sizes around the SIMD widths (2, 4, 8 doubles) and block sizes.
SIZES = (1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 129)


def layouts(a):
    """The same values as `a` in the layouts a user may pass: C order, Fortran
    order, a strided view, a transposed copy transposed back, read-only, a
    list, and byte-swapped."""
    a = np.asarray(a, dtype=np.float64)
    out = {"c": np.ascontiguousarray(a), "fortran": np.asfortranarray(a)}
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],)) if a.ndim else np.zeros(2)
    if a.ndim:
        big[..., ::2] = a
        out["strided"] = big[..., ::2]
        out["transposed"] = np.ascontiguousarray(a.T).T
    ro = a.copy()
    ro.flags.writeable = False
    out["readonly"] = ro
    out["list"] = a.tolist()
    out["byteswapped"] = a.astype(a.dtype.newbyteorder())
    return out


def assert_softmax_close(got, x, axis=-1, want=None):
    """got agrees with the textbook float64 softmax (this module's, which is
    SciPy's algorithm; or `want`) within that algorithm's own error: rounding
    x - max costs |x - max| * eps relative, plus a few eps for exp, sum and
    division. attnx itself is held to 4 ulp by the long-double tests."""
    x = np.asarray(x, dtype=np.float64)
    if want is None:
        want = softmax(x, axis=axis)
    ax = tuple(range(x.ndim)) if axis is None else axis
    with np.errstate(invalid="ignore"):
        spread = np.abs(x - np.max(x, axis=ax, keepdims=True)) if x.size else x
    rtol = (spread + 8) * np.finfo(np.float64).eps * 2
    got, want = np.asarray(got), np.asarray(want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    close = np.abs(got - want) <= rtol * np.abs(want) + 1e-300
    bad = ~(same | close)
    assert not bad.any(), (f"{bad.sum()} elements differ beyond SciPy's error bound; "
                           f"first at {np.argwhere(bad)[0]}: {got[bad][0]!r} vs {want[bad][0]!r}")


def attend_grad(q, K, V, dO, scale=1.0, allowed=None):
    """Gradients (dq, dK, dV) of attention by the book, in float64, with the
    weights as a dense (..., Lq, T) matrix: P = softmax(scale Q K^T) over the
    allowed keys, dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dP P)),
    dQ = scale dS K, dK = scale dS^T Q. Rows that attend nothing have zero
    gradients. Shapes: q (..., Lq, d), K (..., T, d), V (..., T, dv),
    dO (..., Lq, dv); the results have the broadcast batch shape."""
    q, K, V, dO = (np.asarray(a, dtype=np.float64) for a in (q, K, V, dO))
    s = scale * (q @ np.swapaxes(K, -1, -2))
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    with np.errstate(invalid="ignore"):
        m = s.max(axis=-1, keepdims=True)
        none = m == -np.inf
        e = np.exp(s - np.where(none, 0, m))
        P = np.where(none, 0, e / np.where(none, 1, e.sum(axis=-1, keepdims=True)))
    dV = np.swapaxes(P, -1, -2) @ dO
    dP = dO @ np.swapaxes(V, -1, -2)
    dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))
    return scale * dS @ K, scale * np.swapaxes(dS, -1, -2) @ q, dV


def attention(q, K, V=None, scale=1.0, mask=None, causal=False, bias=None, alibi_slopes=None,
              enable_gqa=False, window=None, key_lengths=None, softcap=None,
              query_offset=0, key_offset=0):
    """Attention with everything that shapes the scores (issue 13), by the
    book in float64, with the (..., Lq, T) scores materialised: scale *
    q.k, softcap * tanh(s / softcap), + bias, - slope * |pos_i - t|; key t
    seen iff t < key_lengths, the mask, causal (t <= pos_i) and the window
    (pos_i - left <= t <= pos_i + right) allow it, with pos_i = i +
    query_offset - key_offset (+ key_lengths - Lq for causal="lower_right").
    GQA repeats the kv heads (query head h reads kv head h // (H // Hkv)).
    Returns (context, weights, lse) in float64; a row that sees nothing (or
    whose seen scores are all -inf) gets zeros and lse = -inf."""
    q = np.asarray(q, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    V = K if V is None else np.asarray(V, dtype=np.float64)
    single = q.ndim == 1
    if single:
        q = q[None, :]
    if enable_gqa:
        G = q.shape[-3] // K.shape[-3]
        K, V = np.repeat(K, G, axis=-3), np.repeat(V, G, axis=-3)
    with np.errstate(invalid="ignore", over="ignore"):
        s = scale * (q @ np.swapaxes(K, -1, -2))
    Lq, T = s.shape[-2:]
    if bias is not None:
        b = np.asarray(bias, dtype=np.float64)
        s = np.broadcast_to(s, np.broadcast_shapes(s.shape, b[..., None, :].shape if single
                                                   else b.shape))
    batch = s.shape[:-2]
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    if bias is not None:
        s = s + (b[..., None, :] if single else b)
    kl = np.full(batch, T) if key_lengths is None else _to_batch(key_lengths, batch)
    kl = kl[..., None, None]
    i = np.arange(Lq)[:, None]
    t = np.arange(T)[None, :]
    pos = i + query_offset - key_offset + ((kl - Lq) if causal == "lower_right" else 0)
    if alibi_slopes is not None:
        sl = _to_batch(np.asarray(alibi_slopes, dtype=np.float64), batch)
        s = s - sl[..., None, None] * np.abs(pos - t)
    seen = t < kl
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        seen = seen & (m[..., None, :] if single else m)
    if causal:
        seen = seen & (t <= pos)
    if window is not None:
        left, right = window
        if left is not None:
            seen = seen & (t >= pos - left)
        if right is not None:
            seen = seen & (t <= pos + right)
    seen = np.broadcast_to(seen, s.shape)
    with np.errstate(invalid="ignore", over="ignore", under="ignore", divide="ignore"):
        s = np.where(seen, s, -np.inf)
        m = np.max(s, axis=-1, keepdims=True)
        nothing = m == -np.inf
        e = np.exp(s - np.where(nothing, 0, m))
        tot = e.sum(axis=-1, keepdims=True)
        w = np.where(nothing, 0, e / np.where(nothing, 1, tot))
        lse = np.where(nothing, -np.inf, m + np.log(np.where(nothing, 1, tot)))[..., 0]
        ctx = w @ V          # finite values only: 0 * V adds nothing
    if single:
        ctx, w, lse = ctx[..., 0, :], w[..., 0, :], lse[..., 0]
    return ctx, w, lse


def _to_batch(x, batch):
    """x broadcast to the batch shape, leading length-1 axes beyond it dropped."""
    x = np.asarray(x)
    while x.ndim > len(batch) and x.shape[0] == 1:
        x = x[0]
    return np.broadcast_to(x, batch)


# ---------------------------------------------------------------- test aids
# (not references: where a test's inputs lie in memory, what a call allocates)

def placed(a, offset):
    """A copy of a that starts `offset` bytes past a 64-byte boundary."""
    buf = np.empty(a.nbytes + 128, np.uint8)
    at = (-buf.ctypes.data) % 64 + offset
    out = buf[at:at + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 64 == offset
    return out


def peak_traced(fn):
    """fn's result, and the peak of the bytes NumPy and Python allocated
    while it ran (tracemalloc: NumPy reports its buffers to it)."""
    tracemalloc.start()
    try:
        res = fn()
        return res, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
