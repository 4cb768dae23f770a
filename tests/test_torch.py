"""PyTorch as an independent oracle: scaled_dot_product_attention in float64
for batched, causal and masked attention. Skipped when torch is absent (CI
installs torch==2.13.0, the CPU build)."""
import numpy as np
import pytest

import attnx

torch = pytest.importorskip("torch")
F = torch.nn.functional
RNG = np.random.default_rng(3)


def sdpa(q, k, v, **kw):
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (q, k, v)]
    if kw.get("attn_mask") is not None:
        kw["attn_mask"] = torch.from_numpy(np.ascontiguousarray(kw["attn_mask"]))
    return F.scaled_dot_product_attention(*t, **kw).numpy()


@pytest.mark.parametrize("B,H,Lq,T,d,dv", [
    (1, 1, 1, 1, 1, 1), (2, 3, 5, 7, 8, 4), (2, 2, 17, 33, 64, 64), (1, 4, 64, 64, 16, 8),
])
def test_batched(B, H, Lq, T, d, dv):
    q, k, v = RNG.standard_normal((B, H, Lq, d)), RNG.standard_normal((B, H, T, d)), \
        RNG.standard_normal((B, H, T, dv))
    want = sdpa(q, k, v)                      # default scale 1/sqrt(d)
    got = attnx.attend(q, k, v, scale=1 / np.sqrt(d))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("Lq,T", [(1, 1), (6, 6), (16, 16), (9, 9), (40, 40)])
def test_causal(Lq, T):
    q, k, v = (RNG.standard_normal((2, 3, n, 16)) for n in (Lq, T, T))
    want = sdpa(q, k, v, is_causal=True)
    np.testing.assert_allclose(attnx.attend(q, k, v, scale=0.25, causal=True), want,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mshape", [(5, 7), (2, 1, 5, 7), (1, 3, 1, 7), (1, 7)])
def test_bool_mask(mshape):
    q, k, v = (RNG.standard_normal((2, 3, n, 8)) for n in (5, 7, 7))
    mask = RNG.random(mshape) > 0.3
    mask[..., 0] = True                       # torch gives NaN for fully masked rows
    want = sdpa(q, k, v, attn_mask=mask)
    got = attnx.attend(q, k, v, scale=8 ** -0.5, mask=mask)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_softmax_matches_torch():
    x = RNG.standard_normal((7, 300)) * 40
    want = torch.softmax(torch.from_numpy(x), dim=-1).numpy()
    np.testing.assert_allclose(attnx.softmax(x), want, rtol=1e-13, atol=1e-300)
