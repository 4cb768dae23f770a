"""attnx.torch.scaled_dot_product_attention against torch's own sdpa: forward,
gradients (gradcheck and torch's autograd), GQA, opcheck, torch.compile and
errors. Skipped only when torch is absent (CI installs torch==2.13.0, CPU)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import attnx  # noqa: E402
import attnx.torch as at  # noqa: E402

# the op wraps kernels tested per SIMD level elsewhere; once is enough here
pytestmark = pytest.mark.simd_independent
F = torch.nn.functional
GEN = torch.Generator().manual_seed(15)


def randn(*shape, dtype=torch.float64, grad=True):
    return torch.randn(*shape, generator=GEN, dtype=dtype).requires_grad_(grad)


def bool_mask(*shape):
    m = torch.rand(*shape, generator=GEN) < 0.7
    m[..., 0] = True            # every query row sees a key (torch and attnx agree anyway)
    return m


CASES = {
    # name: (query shape, key shape, value shape, kwargs)
    "plain": ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4), {}),
    "scale": ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4), {"scale": 0.3}),
    "causal": ((2, 3, 6, 8), (2, 3, 9, 8), (2, 3, 9, 5), {"is_causal": True}),
    "bool_mask": ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4), {"mask": (3, 5, 7)}),
    "mask_broadcast": ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4), {"mask": (5, 7)}),
    "gqa": ((2, 6, 5, 8), (2, 2, 7, 8), (2, 2, 7, 4), {"enable_gqa": True}),
    "gqa_causal_scale": ((1, 4, 6, 8), (1, 2, 6, 8), (1, 2, 6, 8),
                         {"enable_gqa": True, "is_causal": True, "scale": 0.7}),
    "gqa_mask": ((2, 6, 5, 8), (2, 2, 7, 8), (2, 2, 7, 4),
                 {"enable_gqa": True, "mask": (2, 6, 5, 7)}),
    "gqa_mask_one_head": ((2, 4, 5, 8), (2, 1, 7, 8), (2, 1, 7, 4),
                          {"enable_gqa": True, "mask": (2, 1, 5, 7)}),
    # key and value with different head counts, each dividing the query's
    # (torch allows it: query head h reads key head h // (Hq // Hk) and value
    # head h // (Hq // Hv))
    "gqa_kv_heads_differ": ((2, 6, 5, 8), (2, 2, 7, 8), (2, 3, 7, 4), {"enable_gqa": True}),
    "gqa_kv_heads_differ_mask": ((2, 6, 5, 8), (2, 3, 7, 8), (2, 1, 7, 4),
                                 {"enable_gqa": True, "mask": (2, 6, 5, 7)}),
    "gqa_kv_heads_differ_causal": ((1, 12, 6, 8), (1, 4, 6, 8), (1, 6, 6, 5),
                                   {"enable_gqa": True, "is_causal": True, "scale": 0.7}),
}


def make(case, dtype=torch.float64):
    qs, ks, vs, kw = CASES[case]
    kw = dict(kw)
    if "mask" in kw:
        kw["attn_mask"] = bool_mask(*kw.pop("mask"))
    return randn(*qs, dtype=dtype), randn(*ks, dtype=dtype), randn(*vs, dtype=dtype), kw


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_and_gradients_match_torch_sdpa(case, dtype):
    q, k, v, kw = make(case, dtype)
    out = at.scaled_dot_product_attention(q, k, v, **kw)
    ref = F.scaled_dot_product_attention(q, k, v, **kw)
    assert out.dtype == dtype and out.shape == ref.shape
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    g = torch.randn(ref.shape, generator=GEN, dtype=dtype)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for name, a, b in zip("qkv", got, want):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item(),
                                   msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("case", ["scale", "causal", "bool_mask", "gqa", "gqa_mask",
                                  "gqa_causal_scale"])
def test_gradcheck(case):
    q, k, v, kw = make(case)
    assert torch.autograd.gradcheck(
        lambda q_, k_, v_: at.scaled_dot_product_attention(q_, k_, v_, **kw), (q, k, v))


def test_second_derivatives_are_a_clear_error():
    """create_graph works (the first gradients are right), differentiating
    them again raises NotImplementedError saying what to use instead
    (before: torch's hint to register an autograd formula, on internals)."""
    q, k, v, kw = make("causal")
    out = at.scaled_dot_product_attention(q, k, v, **kw)
    (dq,) = torch.autograd.grad(out.square().sum(), (q,), create_graph=True)
    (want,) = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, **kw).square().sum(), (q,))
    torch.testing.assert_close(dq, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(NotImplementedError, match="first derivatives only"):
        dq.sum().backward()


def test_fully_masked_rows_give_zeros_like_torch():
    """torch 2.13's CPU sdpa and attnx both give a row that sees no key zeros
    (and zero gradients); older torch gave NaN there."""
    q, k, v = randn(1, 2, 4, 8), randn(1, 2, 6, 8), randn(1, 2, 6, 3)
    m = bool_mask(4, 6)
    m[2] = False
    out = at.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert torch.equal(out[..., 2, :], torch.zeros_like(out[..., 2, :]))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    (dq,) = torch.autograd.grad(out.sum(), (q,))
    assert torch.equal(dq[..., 2, :], torch.zeros_like(dq[..., 2, :]))


def test_contiguous_tensors_reach_attnx_without_copies(monkeypatch):
    seen = {}
    real_attend, real_backward = attnx.attend, attnx.attend_backward

    def attend(query, keys, values, **kw):
        seen["fwd"] = (query, keys, values, kw["mask"])
        return real_attend(query, keys, values, **kw)

    def attend_backward(grad_out, query, keys, values, out, lse, **kw):
        seen["bwd"] = (query, keys, values, out, lse)
        return real_backward(grad_out, query, keys, values, out, lse, **kw)

    monkeypatch.setattr(attnx, "attend", attend)
    monkeypatch.setattr(attnx, "attend_backward", attend_backward)
    q, k, v = randn(2, 3, 5, 8), randn(2, 3, 7, 8), randn(2, 3, 7, 4)
    m = bool_mask(5, 7)
    out = at.scaled_dot_product_attention(q, k, v, attn_mask=m)
    for arr, t in zip(seen["fwd"], (q, k, v, m)):
        assert arr.ctypes.data == t.data_ptr()          # the tensor's own memory
    out.sum().backward()
    for arr, t in zip(seen["bwd"][:4], (q, k, v, out)):
        assert arr.ctypes.data == t.data_ptr()


def test_opcheck():
    q, k, v = randn(2, 3, 5, 8), randn(2, 3, 7, 8), randn(2, 3, 7, 4)
    for mask, causal in ((None, False), (None, True), (bool_mask(5, 7), False)):
        torch.library.opcheck(torch.ops.attnx.sdpa.default, (q, k, v, mask, causal, 0.4))
    q5, k5 = randn(2, 1, 3, 5, 8), randn(2, 1, 1, 7, 8)      # the GQA layout: broadcast heads
    torch.library.opcheck(torch.ops.attnx.sdpa.default, (q5, k5, k5.detach().clone()
                                                         .requires_grad_(), None, False, 0.4))


def test_opcheck_backward_with_transposed_operands():
    """The backward's fake gives the real op's (contiguous) strides, also
    for operands in the (B, L, H, E).transpose(1, 2) layout; a fake that
    kept their strides failed opcheck and torch.compile's backward."""
    q = torch.randn(2, 5, 3, 8, dtype=torch.float64).transpose(1, 2)
    k, v = torch.randn(2, 3, 7, 8, dtype=torch.float64), torch.randn(2, 3, 7, 4, dtype=torch.float64)
    mask = torch.randn(2, 7, 5, dtype=torch.float64).transpose(1, 2)[:, None]   # (2, 1, 5, 7), strided
    for m, mg in ((None, False), (mask, True)):
        out, lse = torch.ops.attnx.sdpa(q, k, v, m, False, 0.4)
        torch.library.opcheck(torch.ops.attnx.sdpa_backward.default,
                              (torch.randn_like(out), q, k, v, m, out, lse, False, 0.4, mg))


def test_torch_compile_fullgraph(tmp_path, monkeypatch):
    """One small compiled function (the first compile costs ~30 s): forward
    and backward of causal GQA agree with eager. Inductor's cache goes to a
    directory of this test's own: a cache another attnx build left behind
    could hold an operator of another signature."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()

    def f(q, k, v):
        return at.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).sum()

    cf = torch.compile(f, fullgraph=True)
    # q in the usual projection layout, (B, L, H, E).transpose(1, 2): the
    # backward's fake must give the real op's strides, not q's
    q = torch.randn(1, 6, 4, 8, dtype=torch.float64).transpose(1, 2).requires_grad_()
    k, v = randn(1, 2, 6, 8), randn(1, 2, 6, 8)
    got = cf(q, k, v)
    gg = torch.autograd.grad(got, (q, k, v))
    want = f(q, k, v)
    gw = torch.autograd.grad(want, (q, k, v))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_signature_is_torchs():
    """torch's sdpa takes scale and enable_gqa by keyword only (a seventh
    positional argument is a TypeError there): so does the drop-in."""
    import inspect
    P = inspect.Parameter
    want = [("query", P.POSITIONAL_OR_KEYWORD, P.empty), ("key", P.POSITIONAL_OR_KEYWORD, P.empty),
            ("value", P.POSITIONAL_OR_KEYWORD, P.empty),
            ("attn_mask", P.POSITIONAL_OR_KEYWORD, None),
            ("dropout_p", P.POSITIONAL_OR_KEYWORD, 0.0),
            ("is_causal", P.POSITIONAL_OR_KEYWORD, False),
            ("scale", P.KEYWORD_ONLY, None), ("enable_gqa", P.KEYWORD_ONLY, False)]
    got = [(p.name, p.kind, p.default)
           for p in inspect.signature(at.scaled_dot_product_attention).parameters.values()]
    assert got == want
    q = randn(1, 2, 3, 4, grad=False)
    for f in (F.scaled_dot_product_attention, at.scaled_dot_product_attention):
        with pytest.raises(TypeError):
            f(q, q, q, None, 0.0, False, 0.5)
        with pytest.raises(TypeError):
            f(q, q, q, None, 0.0, False, None, True)
        f(q, q, q, None, 0.0, False)                     # six positionally: both take them


def test_autocast_is_ignored_and_documented():
    """Under CPU autocast torch's sdpa computes in bfloat16; attnx.torch
    computes in its inputs' dtype, as its module docstring says."""
    q = randn(1, 2, 3, 4, dtype=torch.float32, grad=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = at.scaled_dot_product_attention(q, q, q)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, at.scaled_dot_product_attention(q, q, q), rtol=0, atol=0)
    assert "autocast" in " ".join(at.__doc__.split()).lower()


def test_errors_name_the_argument():
    q, k, v = randn(1, 2, 3, 4), randn(1, 2, 5, 4), randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="dropout_p"):
        at.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
    with pytest.raises(TypeError, match="attn_mask has dtype torch.float32"):
        at.scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros(3, 5))
    with pytest.raises(TypeError, match="query has dtype torch.float16"):
        at.scaled_dot_product_attention(q.half(), k.half(), v.half())
    with pytest.raises(TypeError, match="key has dtype torch.bfloat16"):
        at.scaled_dot_product_attention(q, k.bfloat16(), v)
    with pytest.raises(TypeError, match="share a dtype"):
        at.scaled_dot_product_attention(q, k.float(), v)
    with pytest.raises(ValueError, match="value is on device meta"):
        at.scaled_dot_product_attention(q, k, v.to("meta"))
    with pytest.raises(RuntimeError, match="attn_mask and is_causal"):
        at.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask(3, 5), is_causal=True)
    with pytest.raises(ValueError, match="enable_gqa"):
        at.scaled_dot_product_attention(randn(1, 3, 3, 4), k, v, enable_gqa=True)
    # key and value heads may differ, but each must divide the query's (torch: a
    # RuntimeError; with zero kv heads, a crash)
    for hk, hv in ((4, 3), (2, 4), (0, 3), (3, 0)):
        with pytest.raises(ValueError, match="enable_gqa=True needs key and value head counts "
                                             "that divide the query's"):
            at.scaled_dot_product_attention(randn(1, 6, 3, 4), randn(1, hk, 5, 4),
                                            randn(1, hv, 5, 4), enable_gqa=True)
    # degenerate shapes: clear errors, not ZeroDivisionError / modulo by zero
    with pytest.raises(ValueError, match="no keys"):
        at.scaled_dot_product_attention(randn(1, 2, 3, 4), randn(1, 2, 0, 4), randn(1, 2, 0, 5))
    with pytest.raises(TypeError, match="is_causal must be bool"):   # as torch's
        at.scaled_dot_product_attention(q, k, v, is_causal="no")
    with pytest.raises(TypeError, match="scale must be a float or None"):
        at.scaled_dot_product_attention(q, k, v, scale="a")
    with pytest.raises(ValueError, match="head dimension"):   # torch: an IndexError
        at.scaled_dot_product_attention(randn(2, 3, 4, 8), randn(5, 8), randn(5, 8), enable_gqa=True)
    # an attn_mask that does not broadcast: named, with the caller's shapes
    # (not attnx's bias/mask, nor the GQA reshape's five axes)
    q6, k3, v3 = randn(2, 6, 4, 8), randn(2, 3, 5, 8), randn(2, 3, 5, 8)
    for m in (torch.zeros(4, 6, dtype=torch.float64), bool_mask(4, 6), bool_mask(3, 4, 5)):
        with pytest.raises(ValueError, match=r"attn_mask has shape .* \(2, 6, 4, 5\) \(query "
                                             r"\(2, 6, 4, 8\), key \(2, 3, 5, 8\)"):
            at.scaled_dot_product_attention(q6, k3, v3, attn_mask=m, enable_gqa=True)
    with pytest.raises(ValueError, match=r"attn_mask has shape \(1, 3, 5\)"):
        at.scaled_dot_product_attention(randn(3, 4), randn(5, 4), randn(5, 2),
                                        attn_mask=bool_mask(1, 3, 5))


@pytest.mark.parametrize("is_causal", [False, True])
def test_degenerate_shapes_give_torchs_results(is_causal):
    """E = 0: every score is 0, the weights uniform over the keys each row
    sees (torch's 1/sqrt(0) gives the same); no heads with enable_gqa: an
    empty result, as torch's."""
    F = torch.nn.functional.scaled_dot_product_attention
    q, k = randn(1, 2, 3, 0), randn(1, 2, 4, 0)
    v = randn(1, 2, 4, 5)
    got = at.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    want = F(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(got, want, rtol=1e-15, atol=1e-15)
    g = randn(*got.shape)
    torch.testing.assert_close(torch.autograd.grad(got, v, g)[0], torch.autograd.grad(want, v, g)[0],
                               rtol=1e-15, atol=1e-15)
    q0, k0, v0 = randn(2, 0, 3, 4), randn(2, 0, 5, 4), randn(2, 0, 5, 4)
    got = at.scaled_dot_product_attention(q0, k0, v0, enable_gqa=True, is_causal=is_causal)
    assert got.shape == F(q0, k0, v0, enable_gqa=True, is_causal=is_causal).shape == (2, 0, 3, 4)


def test_keys_the_mask_excludes_are_never_read():
    """The documented difference from torch: a NaN in the key and value rows
    of a masked-out key does not reach the result."""
    q, k, v = (randn(1, 1, n, 4, grad=False) for n in (3, 4, 4))
    m = bool_mask(3, 4)
    m[:, 2] = False
    want = at.scaled_dot_product_attention(q, k, v, attn_mask=m)
    k[0, 0, 2] = v[0, 0, 2] = float("nan")
    torch.testing.assert_close(at.scaled_dot_product_attention(q, k, v, attn_mask=m), want,
                               rtol=0, atol=0)


def test_docstring_example_runs():
    import doctest
    test = doctest.DocTestParser().get_doctest(at.scaled_dot_product_attention.__doc__, {},
                                               "scaled_dot_product_attention", None, 0)
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gqa", [False, True])
def test_float_attn_mask_matches_torch_forward_and_backward(dtype, gqa):
    """A float (additive) attn_mask is attnx's bias: forward and gradients for
    query, key, value and the mask itself (broadcast over the batch) as
    torch's own sdpa, with -inf masking keys."""
    g = torch.Generator().manual_seed(5)
    hkv = 2 if gqa else 4
    q = torch.randn(2, 4, 6, 8, dtype=dtype, generator=g, requires_grad=True)
    k = torch.randn(2, hkv, 9, 8, dtype=dtype, generator=g, requires_grad=True)
    v = torch.randn(2, hkv, 9, 5, dtype=dtype, generator=g, requires_grad=True)
    m = torch.randn(4, 6, 9, dtype=dtype, generator=g)
    m[:, :, 3] = -torch.inf
    m.requires_grad_()
    out = at.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=gqa)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=gqa)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    G = torch.randn(out.shape, dtype=dtype, generator=g)
    got = torch.autograd.grad(out, (q, k, v, m), G)
    want = torch.autograd.grad(ref, (q, k, v, m), G)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=100 * tol, atol=100 * tol)
