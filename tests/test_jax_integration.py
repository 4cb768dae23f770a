"""attnx.jax.dot_product_attention against jax.nn.dot_product_attention and a
float64 jnp reference: forward, gradients (check_grads and jax.grad), jit,
vmap, GQA and errors. Skipped only when jax is absent (CI installs it)."""
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import attnx.jax as aj  # noqa: E402

pytestmark = pytest.mark.simd_independent
RNG = np.random.default_rng(15)


@pytest.fixture(autouse=True)
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def reference(q, k, v, mask=None, scale=None, is_causal=False):
    """Attention in the (B, T, N, H) layout, in jnp at the inputs' precision
    (jax.nn.dot_product_attention computes its logits in float32)."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(H) if scale is None else scale
    kk, vv = jnp.repeat(k, N // K, axis=2), jnp.repeat(v, N // K, axis=2)
    s = jnp.einsum("btnh,bsnh->bnts", q, kk) * scale
    allowed = jnp.ones((B, N, T, S), bool)
    if mask is not None:
        allowed = allowed & mask
    if is_causal:
        allowed = allowed & jnp.tril(jnp.ones((T, S), bool))
    p = jax.nn.softmax(jnp.where(allowed, s, -jnp.inf), axis=-1)
    return jnp.einsum("bnts,bsnh->btnh", p, vv)


CASES = {
    "plain": ((2, 5, 4, 8), (2, 7, 4, 8), {}),
    "scale": ((2, 5, 4, 8), (2, 7, 4, 8), {"scale": 0.3}),
    "causal": ((2, 6, 4, 8), (2, 9, 4, 8), {"is_causal": True}),
    "mask": ((2, 5, 4, 8), (2, 7, 4, 8), {"mask": (2, 1, 5, 7)}),
    "gqa": ((2, 5, 6, 8), (2, 7, 2, 8), {}),
    "gqa_mask_causal": ((2, 6, 6, 8), (2, 6, 3, 8), {"mask": (2, 6, 6, 6), "is_causal": True}),
    "unbatched_mask": ((5, 4, 8), (7, 2, 8), {"mask": (5, 7)}),
    "gqa_mask_broadcast": ((2, 5, 6, 8), (2, 7, 2, 8), {"mask": (1, 6, 1, 7)}),
}


def make(case, dtype=np.float64):
    qs, ks, kw = CASES[case]
    kw = dict(kw)
    if "mask" in kw:
        m = RNG.random(kw["mask"]) < 0.7
        m[..., 0] = True     # jax.nn gives a fully masked row the mean of V; attnx zeros
        kw["mask"] = m
    q, k, v = (RNG.standard_normal(s).astype(dtype) for s in (qs, ks, ks))
    return q, k, v, kw


def loss(fn, kw, w):
    return lambda q, k, v: (fn(q, k, v, **kw) * w).sum()


@pytest.mark.parametrize("case,dtype", [(c, np.float64) for c in sorted(CASES)]
                         + [(c, np.float32) for c in ("plain", "gqa_mask_causal")])
def test_forward_and_gradients_match_jax(case, dtype):
    q, k, v, kw = make(case, dtype)
    got = jax.jit(lambda *a: aj.dot_product_attention(*a, **kw))(q, k, v)
    assert got.dtype == dtype and got.shape == q.shape
    batched = q.ndim == 4
    ref_kw = dict(kw)
    if not batched and "mask" in ref_kw:
        ref_kw["mask"] = ref_kw["mask"][None]
    add_b = (lambda a: a) if batched else (lambda a: a[None])
    # jax.nn's own function: its float32 logits bound the agreement
    want = jax.jit(lambda *a: jax.nn.dot_product_attention(*a, **kw))(q, k, v)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    w = RNG.standard_normal(got.shape).astype(dtype)
    g = jax.jit(jax.grad(loss(aj.dot_product_attention, kw, w), argnums=(0, 1, 2)))(q, k, v)
    gj = jax.jit(jax.grad(loss(jax.nn.dot_product_attention, kw, w), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g, gj):
        assert a.shape == b.shape and a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # the same computation in jnp at full precision: tight in float64
    tol = 1e-12 if dtype == np.float64 else 1e-5

    def ref(q_, k_, v_):
        return reference(add_b(q_), add_b(k_), add_b(v_), **ref_kw)[0 if not batched else ...]

    np.testing.assert_allclose(got, jax.jit(ref)(q, k, v), rtol=tol, atol=tol)
    gr = jax.jit(jax.grad(lambda *a: (ref(*a) * w).sum(), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g, gr):
        np.testing.assert_allclose(a, b, rtol=100 * tol, atol=100 * tol)


@pytest.mark.parametrize("case", ["scale", "causal", "mask", "gqa_mask_causal"])
def test_check_grads_float64(case):
    q, k, v, kw = make(case)
    check_grads(lambda *a: aj.dot_product_attention(*a, **kw), (q, k, v), order=1,
                modes=["rev"])


def test_vmap_and_jit_of_grad():
    q, k, v, _ = make("gqa")
    qs = np.stack([q, 2 * q])
    f = jax.jit(jax.vmap(jax.grad(lambda q_: aj.dot_product_attention(q_, k, v).sum())))
    g = f(qs)
    for i in range(2):
        want = jax.grad(lambda q_: reference(q_, k, v).sum())(qs[i])
        np.testing.assert_allclose(g[i], want, rtol=1e-10, atol=1e-12)


def test_fully_masked_rows_give_zeros():
    """A documented difference: jax.nn gives such a row the mean of V."""
    q, k, v, _ = make("plain")
    m = np.ones((2, 4, 5, 7), bool)
    m[:, :, 3] = False
    out = aj.dot_product_attention(q, k, v, mask=m)
    assert np.all(np.asarray(out[:, 3]) == 0)
    g = jax.grad(lambda q_: aj.dot_product_attention(q_, k, v, mask=m).sum())(q)
    assert np.all(np.asarray(g[:, 3]) == 0)


def test_rows_whose_bias_is_all_minus_inf_give_zeros():
    """As a fully masked row (documented next to it): zeros and zero
    gradients, where jax.nn gives NaN. The other rows are those of the same
    row masked instead, and so are the key and value gradients."""
    q, k, v, _ = make("plain")
    b = RNG.standard_normal((2, 4, 5, 7))
    b[:, 1:3, 3] = -np.inf                    # row 3 of heads 1 and 2: no key
    m = np.ones(b.shape, bool)
    m[:, 1:3, 3] = False
    b_masked = np.where(m, b, 0.0)
    out = aj.dot_product_attention(q, k, v, bias=b)
    assert np.all(np.asarray(out[:, 3, 1:3]) == 0)
    np.testing.assert_array_equal(out, aj.dot_product_attention(q, k, v, bias=b_masked, mask=m))
    loss = lambda q_, k_, v_, b_: (aj.dot_product_attention(q_, k_, v_, bias=b_) ** 2).sum()
    gq, gk, gv, gb = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, b)
    assert np.all(np.asarray(gq[:, 3, 1:3]) == 0) and np.all(np.asarray(gb[:, 1:3, 3]) == 0)
    for g in (gq, gk, gv, gb):
        assert np.all(np.isfinite(np.asarray(g)))
    loss_m = lambda q_, k_, v_, b_: (aj.dot_product_attention(q_, k_, v_, bias=b_, mask=m)
                                     ** 2).sum()
    for a, want in zip((gq, gk, gv, gb), jax.grad(loss_m, argnums=(0, 1, 2, 3))(q, k, v, b_masked)):
        np.testing.assert_array_equal(a, want)
    doc = " ".join(aj.__doc__.split())
    assert "bias` is ``-inf`` at every key" in doc and "jax.nn gives it NaN" in doc


def test_errors_name_the_argument():
    q, k, v, _ = make("plain")
    with pytest.raises(TypeError, match="bias has dtype"):
        aj.dot_product_attention(q, k, v, bias=np.zeros((2, 4, 5, 7), np.float32))
    with pytest.raises(TypeError, match="key has dtype"):
        aj.dot_product_attention(q, k.astype(np.float16), v)
    with pytest.raises(TypeError, match="mask must be boolean"):
        aj.dot_product_attention(q, k, v, mask=np.ones((5, 7)))
    with pytest.raises(ValueError, match="heads"):
        aj.dot_product_attention(q, k[:, :, :3], v[:, :, :3])
    with pytest.raises(ValueError, match="query must have shape"):
        aj.dot_product_attention(q[0, 0], k[0, 0], v[0, 0])
    # a head axis of the kv heads' count does not broadcast to (B, N, T, S)
    # (jax.nn refuses it too); it was taken per kv group
    qg, kg, vg = (RNG.standard_normal(s) for s in ((1, 5, 4, 8), (1, 7, 2, 8), (1, 7, 2, 8)))
    with pytest.raises(ValueError, match="bias must broadcast"):
        aj.dot_product_attention(qg, kg, vg, bias=np.zeros((1, 2, 5, 7)))
    with pytest.raises(ValueError, match="mask must broadcast"):
        aj.dot_product_attention(qg, kg, vg, mask=np.ones((1, 2, 5, 7), bool))
    with pytest.raises(ValueError, match="bias must broadcast"):
        aj.dot_product_attention(qg, kg, vg, bias=np.zeros((5, 6)))
    with pytest.raises(ValueError, match="no keys"):
        aj.dot_product_attention(qg, kg[:, :0], vg[:, :0])
    # key's features unlike the query's: named before the kernel call (it
    # surfaced as the callback's INTERNAL error)
    with pytest.raises(ValueError, match=r"key \(1, 7, 2, 9\) must have the query's H = 8"):
        aj.dot_product_attention(qg, RNG.standard_normal((1, 7, 2, 9)), vg)
    with pytest.raises(TypeError, match="scale must be"):
        jax.jit(lambda q, s: aj.dot_product_attention(q, kg, vg, scale=s))(qg, 0.5)
    with pytest.raises(TypeError, match="scale must be a Python or NumPy number or None"):
        aj.dot_product_attention(qg, kg, vg, scale="a")


def test_docstring_example_runs():
    import doctest
    test = doctest.DocTestParser().get_doctest(aj.dot_product_attention.__doc__, {},
                                               "dot_product_attention", None, 0)
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


@pytest.mark.parametrize("bshape", [(2, 4, 5, 7), (1, 1, 5, 7), (4, 1, 7)], ids=str)
@pytest.mark.parametrize("gqa", [False, True])
def test_bias_forward_and_gradients_match_jax(bshape, gqa):
    """An additive bias: the forward, and the gradients for query, key, value
    and the bias itself, as JAX's autodiff of a float64 jnp reference
    (jax.nn.dot_product_attention computes its logits in float32), under
    jit; and the forward as jax.nn's to float32 accuracy."""
    K = 2 if gqa else 4
    q = jnp.asarray(RNG.standard_normal((2, 5, 4, 8)))
    k = jnp.asarray(RNG.standard_normal((2, 7, K, 8)))
    v = jnp.asarray(RNG.standard_normal((2, 7, K, 8)))
    b = jnp.asarray(RNG.standard_normal(bshape))
    f = jax.jit(lambda *a: aj.dot_product_attention(*a))

    def ref(q, k, v, b):
        N, Kh = q.shape[2], k.shape[2]
        kk, vv = jnp.repeat(k, N // Kh, axis=2), jnp.repeat(v, N // Kh, axis=2)
        s = jnp.einsum("btnh,bsnh->bnts", q, kk) / math.sqrt(q.shape[-1]) + b
        return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(s, axis=-1), vv)

    np.testing.assert_allclose(f(q, k, v, b), ref(q, k, v, b), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f(q, k, v, b), jax.nn.dot_product_attention(q, k, v, b), atol=1e-5)
    G = jnp.asarray(RNG.standard_normal((2, 5, 4, 8)))
    got = jax.grad(lambda *a: jnp.sum(f(*a) * G), argnums=(0, 1, 2, 3))(q, k, v, b)
    want = jax.grad(lambda *a: jnp.sum(ref(*a) * G), argnums=(0, 1, 2, 3))(q, k, v, b)
    for x, y in zip(got, want):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-11)
