"""No kernel reads or makes a subnormal number where its results are normal.

Intel cores take a microcode assist (about a hundred cycles) for every
floating-point operation with a subnormal operand or result; AMD cores do
not, so a benchmark on AMD cannot show such a cliff. The processor records
both events in sticky flags of MXCSR, on any vendor: DE (an operand was
subnormal) and UE (a result was tiny). Each test clears them, makes one call
on the calling thread (num_threads=1) with inputs whose weights and results
are all normal numbers, and asserts that neither flag was raised, at every
SIMD level. The flags are read through glibc's fegetenv, whose x86-64
environment ends with MXCSR; elsewhere these tests skip.

The first of them found the exp of the fused kernels handing a subnormal,
made of the wrapped bits of an unused scale factor, to an add whenever a
vector mixed a masked (or padding) key with a weight near e^-30 (float64) or
e^-13 (float32): every causal, masked, windowed or ragged tile.
"""
import ctypes
import ctypes.util
import platform
import sys

import numpy as np
import pytest

import attnx

DE, UE = 0x02, 0x10
MXCSR_OFFSET = 28          # glibc x86-64 fenv_t: the x87 environment, then mxcsr

_libm = None
if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64"):
    _name = ctypes.util.find_library("m")
    if _name:
        _libm = ctypes.CDLL(_name)
pytestmark = pytest.mark.skipif(_libm is None, reason="reads MXCSR through glibc on x86-64 Linux")


def _env():
    buf = ctypes.create_string_buffer(64)
    assert _libm.fegetenv(buf) == 0
    return buf


def _mxcsr():
    return int.from_bytes(_env().raw[MXCSR_OFFSET:MXCSR_OFFSET + 4], "little")


def _clear_flags():
    buf = _env()
    csr = int.from_bytes(buf.raw[MXCSR_OFFSET:MXCSR_OFFSET + 4], "little") & ~0x3F
    ctypes.memmove(ctypes.addressof(buf) + MXCSR_OFFSET, csr.to_bytes(4, "little"), 4)
    assert _libm.fesetenv(buf) == 0


def flags_of(fn):
    """The subnormal flags (DE, UE) that fn() raised on this thread."""
    _clear_flags()
    fn()
    return _mxcsr() & (DE | UE)


def _names(f):
    return "+".join(n for b, n in ((DE, "subnormal operand (DE)"), (UE, "tiny result (UE)")) if f & b)


def test_the_flags_are_read():
    """The probe itself: NumPy multiplying a subnormal raises DE, and a
    product below the normal range raises UE; normal arithmetic neither."""
    x = np.array([1e-310])
    assert flags_of(lambda: x * 3.0) & DE
    y = np.array([1e-200])
    assert flags_of(lambda: y * 1e-120) & UE
    z = np.array([1.5])
    assert flags_of(lambda: z * 3.0) == 0


def _scale(dt):
    # score spreads up to ~60 (float32) / ~200 (float64): every weight is a
    # normal number, and many sit where the exp's scalings go subnormal
    return 1.0 if dt == np.float32 else 3.0


def _qkv(rng, dt, L, T, d, dv=None):
    r = lambda *s: rng.standard_normal(s).astype(dt)
    return r(L, d), r(T, d), r(T, dv or d)


SHAPES = [(64, 512, 64), (200, 300, 80), (17, 33, 7), (1, 300, 64), (64, 64, 64)]
KEYWORDS = {
    "full": {},
    "causal": {"causal": True},
    "lower_right": {"causal": "lower_right"},
    "window": {"window": (16, 4)},
    "softcap": {"softcap": 20.0},
}


def _check(fn, what):
    f = flags_of(fn)
    assert f == 0, f"{what}: {_names(f)}"


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L%d-T%d-d%d" % s)
def test_attend_and_its_backward(simd, dt, shape):
    rng = np.random.default_rng(sum(shape))
    L, T, d = shape
    Q, K, V = _qkv(rng, dt, L, T, d)
    sc = _scale(dt)
    cases = dict(KEYWORDS)
    cases["mask"] = {"mask": rng.random((L, T)) < 0.6}
    cases["bias"] = {"bias": rng.standard_normal((L, T)).astype(dt)}
    for name, kw in cases.items():
        _check(lambda: attnx.attend(Q, K, V, scale=sc, num_threads=1, **kw), f"attend {name}")
        out, lse = attnx.attend(Q, K, V, scale=sc, return_lse=True, num_threads=1, **kw)
        assert np.isfinite(out).all()
        go = rng.standard_normal(out.shape).astype(dt)
        _check(lambda: attnx.attend_backward(go, Q, K, V, out, lse, scale=sc, num_threads=1, **kw),
               f"attend_backward {name}")
    # one query: the online fold
    _check(lambda: attnx.attend(Q[0], K, V, scale=sc, num_threads=1), "attend, one query")


@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_batched_features(simd, dt):
    """key_lengths, ALiBi, GQA and varlen: ragged and partial tiles."""
    rng = np.random.default_rng(7)
    r = lambda *s: rng.standard_normal(s).astype(dt)
    sc = _scale(dt)
    Q, K, V = r(2, 4, 100, 32), r(2, 4, 130, 32), r(2, 4, 130, 32)
    kl = np.array([130, 57])[:, None]
    _check(lambda: attnx.attend(Q, K, V, scale=sc, key_lengths=kl, num_threads=1), "key_lengths")
    # slopes small enough that 130 keys stay within the normal range
    slopes = np.array([0.05, 0.1, 0.2, 0.3])
    _check(lambda: attnx.attend(Q, K, V, scale=sc, alibi_slopes=slopes, causal=True, num_threads=1),
           "alibi")
    Kg, Vg = K[:, :2], V[:, :2]
    _check(lambda: attnx.attend(Q, Kg, Vg, scale=sc, enable_gqa=True, causal=True, num_threads=1), "gqa")
    out, lse = attnx.attend(Q, Kg, Vg, scale=sc, enable_gqa=True, causal=True, return_lse=True,
                            num_threads=1)
    go = r(*out.shape)
    _check(lambda: attnx.attend_backward(go, Q, Kg, Vg, out, lse, scale=sc, enable_gqa=True,
                                         causal=True, num_threads=1), "gqa backward")
    lens = np.array([5, 64, 33, 100])
    cu = np.concatenate([[0], np.cumsum(lens)])
    q, k, v = r(cu[-1], 2, 24), r(cu[-1], 2, 24), r(cu[-1], 2, 24)
    _check(lambda: attnx.attend_varlen(q, k, v, cu, cu, scale=sc, causal=True, num_threads=1), "varlen")


@pytest.mark.parametrize("dt, shift", [(np.float64, 715.0), (np.float32, 90.0)], ids=["float64", "float32"])
@pytest.mark.parametrize("T", [17, 32, 300])
def test_backward_rows_of_their_own_state(simd, dt, shift, T):
    """Rows whose |lse| passes 64 take P = exp(S - m) / l in the backward.
    Scores shifted up by 715 (float64) / 90 (float32), weights unchanged and
    normal: a partial key block's padding lanes and masked keys have exps
    near or below the normal range against such an m, which the 1 / l
    factor must not take as operands (it did, before their lanes were
    zeroed first)."""
    rng = np.random.default_rng(T)
    r = lambda *s: rng.standard_normal(s).astype(dt)
    q, K, V = r(5, 4), r(T, 4), r(T, 4)
    every_other = np.broadcast_to(np.arange(T) % 2 == 0, (5, T))
    for name, kw in (("bias", {}), ("bias and mask", {"mask": every_other}),
                     ("causal", {"causal": "lower_right"})):
        kw["bias"] = np.full((5, T), shift, dt)
        out, lse = attnx.attend(q, K, V, return_lse=True, num_threads=1, **kw)
        assert (lse > 64).all()
        _check(lambda: attnx.attend_backward(np.ones_like(out), q, K, V, out, lse, num_threads=1, **kw),
               f"backward, own state, {name}")


@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_softmax_family_at_the_cliff(simd, dt):
    """The bench's cliff rows: 10% of the scores at max - 60 (float32) /
    max - 680 (float64), weights still normal."""
    rng = np.random.default_rng(3)
    for n in (1000, 100_003):
        x = rng.standard_normal(n).astype(dt)
        y = x.copy()
        y[rng.random(n) < 0.1] = x.max() - (60.0 if dt == np.float32 else 680.0)
        for arr, what in ((x, "ordinary"), (y, "cliff")):
            _check(lambda: attnx.softmax(arr, num_threads=1), f"softmax {what} n={n}")
            _check(lambda: attnx.log_softmax(arr, num_threads=1), f"log_softmax {what} n={n}")
        rows = y[: 1000 * (n // 1000)].reshape(-1, 1000)
        # one thread: MXCSR is per thread, a worker's flags are not seen
        _check(lambda: attnx.softmax(rows, axis=-1, num_threads=1), "softmax rows")
        _check(lambda: attnx.log_softmax(rows, axis=-1, num_threads=1), "log_softmax rows")
    if dt == np.float64:
        # every other score 590-700 below the max: log_softmax's R is tiny
        # (its result for the max, -log1p(R), a tiny normal number)
        far = np.concatenate([np.zeros((50, 1)), -rng.uniform(590.0, 700.0, (50, 300))], axis=1)
        _check(lambda: attnx.log_softmax(far, num_threads=1), "log_softmax, one dominant score")
        # the same for softmax: weights e^-590..e^-700, normal numbers whose
        # running sums (Kahan compensations included) must stay normal too
        _check(lambda: attnx.softmax(far, num_threads=1), "softmax, one dominant score")
        # log_softmax's results stay normal further out, where exps are
        # subnormal (e^-709..e^-800): they must not enter its sums
        wide = np.concatenate([np.zeros((50, 1)), np.full((50, 1), -600.0),
                               -rng.uniform(590.0, 800.0, (50, 300))], axis=1)
        _check(lambda: attnx.log_softmax(wide, num_threads=1), "log_softmax, scores beyond the exp's range")
        # every other exp subnormal, the max's result still normal (-2.5e-306)
        sub = np.concatenate([[0.0], np.full(4096, -712.0)])
        _check(lambda: attnx.log_softmax(sub, num_threads=1), "log_softmax, every other exp subnormal")
    else:
        # float32: every other exp a subnormal float, the result normal
        sub = np.concatenate([[0.0], np.full(100_000, -95.0)]).astype(dt)
        _check(lambda: attnx.log_softmax(sub, num_threads=1), "log_softmax, every other exp subnormal")
    # the fused attend on the same scores: column 0 of K against q = e0
    T = 4096
    K = np.zeros((T, 8), dt)
    K[:, 0] = y[:T]
    q = np.zeros(8, dt)
    q[0] = 1
    V = rng.standard_normal((T, 8)).astype(dt)
    _check(lambda: attnx.attend(q, K, V, scale=1.0, num_threads=1), "attend at the cliff")
    _check(lambda: attnx.attend(np.tile(q, (40, 1)), K, V, scale=1.0, num_threads=1),
           "attend rows at the cliff")


def test_the_other_kernels(simd):
    rng = np.random.default_rng(11)
    q, K, V = rng.standard_normal(48), rng.standard_normal((300, 48)), rng.standard_normal((300, 20))
    w = attnx.softmax(3.0 * attnx.dot_score(q, K))
    _check(lambda: attnx.context(w, V), "context")
    _check(lambda: attnx.dot_score(q, K), "dot_score")
    Wk, Wq, v = rng.standard_normal((16, 48)), rng.standard_normal((16, 48)), rng.standard_normal(16)
    kp = attnx.project_keys(K, Wk)
    _check(lambda: attnx.additive_score(q, kp, Wq, v), "additive_score")
    outs = np.stack([attnx.attend(q, K[:150], V[:150]), attnx.attend(q, K[150:], V[150:])])
    lses = np.array([attnx.attend(q[None], K[:150], V[:150], return_lse=True)[1][0],
                     attnx.attend(q[None], K[150:], V[150:], return_lse=True)[1][0]])
    _check(lambda: attnx.merge_attention(outs, lses), "merge_attention")
    cache = attnx.KVCache(48, 20, capacity=8)
    for t in range(300):
        cache.append(K[t], V[t])
    _check(lambda: cache.attend(q), "KVCache.attend")
