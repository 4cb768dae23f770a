"""attnx as a PyTorch operator: ``attnx.torch.scaled_dot_product_attention``.

The same signature and semantics as `torch.nn.functional.scaled_dot_product_attention`
on CPU float32 and float64 tensors (``scale`` and ``enable_gqa`` keyword-only,
as torch's), computed by `attnx.attend` forward and `attnx.attend_backward`
(the flash backward: no L x S buffer) backward.

It is registered as the custom operators ``attnx::sdpa`` and
``attnx::sdpa_backward`` (`torch.library.custom_op`), with an autograd
formula and fake (meta) implementations, so it works eagerly, under
`torch.compile(fullgraph=True)` and passes `torch.library.opcheck`.

Contiguous CPU tensors reach attnx without a copy (``Tensor.numpy()`` shares
their memory); a non-contiguous one is copied once by attnx. The results are
NumPy arrays handed to torch with `torch.from_numpy`, also without a copy.

Not supported (a clear error naming the argument): ``dropout_p != 0``,
tensors on other devices, dtypes other than float32/float64, and a float
`attn_mask` whose dtype is not the query's. A float `attn_mask` that
requires grad gets its gradient (attnx's ``grad_bias``). A query
whose every key is masked gets zeros and zero gradients, as torch 2.13's own
CPU sdpa does. First derivatives only: a second backward (``create_graph``
then differentiating the gradients, gradgradcheck) raises
NotImplementedError, and ``torch.func.grad`` is refused by torch 2.13 for
custom operators registered this way.

Autocast is ignored: under ``torch.autocast("cpu", ...)`` torch's own sdpa
computes in the autocast dtype (bfloat16 by default), while attnx.torch
computes in, and returns, the dtype of its inputs (float32 or float64;
attnx has no bfloat16 or float16 kernels, and such inputs are a TypeError).

With ``enable_gqa=True``, key and value may have different numbers of heads
(as torch allows), each dividing the query's: they are then repeated
(``repeat_interleave``, a copy) to the least common multiple of the two
head counts, and autograd sums their gradients back. With equal head counts,
the usual case, nothing is copied.

Importing ``attnx`` never imports this module (nor torch); ``import
attnx.torch`` does. Install with ``pip install "attnx[torch]"``.
"""
import math
from typing import Optional

import numpy as np
import torch

import attnx

__all__ = ["scaled_dot_product_attention"]

_DTYPES = (torch.float32, torch.float64)


def _np(t: torch.Tensor) -> np.ndarray:
    # a view of the tensor's memory: no copy (attnx copies a non-contiguous one once)
    return t.detach().numpy()


def _mask_kw(attn_mask):
    # a bool attn_mask is attnx's mask (True = attends); a float one is added
    # to the scores: attnx's bias
    if attn_mask is None:
        return {}
    if attn_mask.dtype == torch.bool:
        return {"mask": _np(attn_mask)}
    return {"bias": _np(attn_mask)}


def _batch_shape(query, key, value, attn_mask):
    shapes = [query.shape[:-2], key.shape[:-2], value.shape[:-2]]
    if attn_mask is not None:
        shapes.append(attn_mask.shape[:-2])
    return torch.broadcast_shapes(*shapes)


@torch.library.custom_op("attnx::sdpa", mutates_args=(), device_types="cpu")
def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
          attn_mask: Optional[torch.Tensor], is_causal: bool,
          scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): attention and each query row's logsumexp (saved for the backward)."""
    out, lse = attnx.attend(_np(query), _np(key), _np(value), scale=scale,
                            causal=is_causal, return_lse=True, **_mask_kw(attn_mask))
    return torch.from_numpy(out), torch.from_numpy(lse)


@_sdpa.register_fake
def _sdpa_fake(query, key, value, attn_mask, is_causal, scale):
    batch = _batch_shape(query, key, value, attn_mask)
    L, Ev = query.shape[-2], value.shape[-1]
    return query.new_empty((*batch, L, Ev)), query.new_empty((*batch, L))


@torch.library.custom_op("attnx::sdpa_backward", mutates_args=(), device_types="cpu")
def _sdpa_backward(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                   value: torch.Tensor, attn_mask: Optional[torch.Tensor],
                   out: torch.Tensor, lse: torch.Tensor, is_causal: bool,
                   scale: float, mask_grad: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for query, key, value and (mask_grad: a float attn_mask; else
    an empty tensor), each shaped like its operand (attnx sums a broadcast
    operand's gradient over the broadcast dimensions)."""
    grads = attnx.attend_backward(_np(grad_out), _np(query), _np(key), _np(value),
                                  _np(out), _np(lse), scale=scale, causal=is_causal,
                                  grad_bias=mask_grad, **_mask_kw(attn_mask))
    # C-contiguous whatever the operands' strides: the fake below says so,
    # and torch.compile checks the two agree
    dm = torch.from_numpy(np.ascontiguousarray(grads[3])) if mask_grad else query.new_empty((0,))
    return tuple(torch.from_numpy(np.ascontiguousarray(g)) for g in grads[:3]) + (dm,)


@_sdpa_backward.register_fake
def _sdpa_backward_fake(grad_out, query, key, value, attn_mask, out, lse, is_causal, scale,
                        mask_grad):
    # contiguous, as the real op returns them (empty_like would keep a
    # transposed operand's strides, and Inductor's stride check then fails)
    dm = attn_mask.new_empty(attn_mask.shape) if mask_grad else query.new_empty((0,))
    return query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape), dm


def _setup_context(ctx, inputs, output):
    query, key, value, attn_mask, is_causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, attn_mask, out, lse)
    ctx.is_causal, ctx.scale = is_causal, scale
    # lse is a residual for the backward, not a result anyone differentiates
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    query, key, value, attn_mask, out, lse = ctx.saved_tensors
    mask_grad = bool(ctx.needs_input_grad[3]) and attn_mask is not None \
        and attn_mask.dtype != torch.bool
    dq, dk, dv, dm = _sdpa_backward(grad_out.contiguous(), query, key, value, attn_mask, out,
                                    lse, ctx.is_causal, ctx.scale, mask_grad)
    return dq, dk, dv, (dm if mask_grad else None), None, None


_sdpa.register_autograd(_backward, setup_context=_setup_context)


def _no_second_derivative(ctx, *grads):
    raise NotImplementedError(
        "attnx.torch.scaled_dot_product_attention has first derivatives only: its backward "
        "(attnx::sdpa_backward) is not itself differentiable, so double backward, "
        "gradgradcheck and Hessians need torch's own scaled_dot_product_attention")


_sdpa_backward.register_autograd(_no_second_derivative, setup_context=lambda ctx, inputs, output: None)


def _check(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on device {t.device}: attnx.torch runs on CPU tensors only "
                         f"(move it with .cpu(), or use torch's own sdpa on {t.device.type})")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}: attnx.torch supports torch.float32 and "
                        f"torch.float64")
    if t.dim() < 2:
        raise ValueError(f"{name} must have shape (..., L, E), got {tuple(t.shape)}")


def _check_mask_shape(attn_mask, query, key, value, gqa):
    """attn_mask must broadcast to the weights' shape (..., Hq, L, S), as in
    torch: checked here so that the error names attn_mask and the shapes the
    caller passed (not attnx's bias/mask, nor the GQA reshape's)."""
    try:
        if gqa:   # the kv heads broadcast over the query's groups
            lead = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])
            weights = (*lead, query.shape[-3], query.shape[-2], key.shape[-2])
        else:
            lead = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
            weights = (*lead, query.shape[-2], key.shape[-2])
    except RuntimeError:
        return    # query, key and value themselves do not broadcast: attnx says so
    try:
        ok = torch.broadcast_shapes(attn_mask.shape, weights) == weights
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"attn_mask has shape {tuple(attn_mask.shape)}, which does not "
                         f"broadcast to the attention weights' shape {tuple(weights)} (query "
                         f"{tuple(query.shape)}, key {tuple(key.shape)}: (..., Hq, L, S))")


def _gqa_mask(attn_mask, hkv, group):
    """A mask broadcastable to (..., Hq, L, S) made broadcastable to (..., Hkv, G, L, S)."""
    if attn_mask.dim() < 3:
        return attn_mask                          # no head dimension: broadcasts as it is
    if attn_mask.shape[-3] == 1:
        return attn_mask.unsqueeze(-3)
    return attn_mask.unflatten(-3, (hkv, group))


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, *, scale=None, enable_gqa=False):
    """`torch.nn.functional.scaled_dot_product_attention`, computed by attnx.

    Parameters
    ----------
    query : Tensor, shape (..., Hq, L, E)
    key : Tensor, shape (..., H, S, E)
    value : Tensor, shape (..., H, S, Ev)
        (With `enable_gqa`, key and value may have Hk and Hv heads.)
        CPU tensors, all float32 or all float64. Leading dimensions broadcast.
        S must be at least 1 (torch returns zeros for S = 0; attnx.torch
        raises a ValueError).
    attn_mask : Tensor, optional
        Broadcastable to (..., Hq, L, S). Bool: True means "attends". Float
        (the query's dtype): added to the scaled scores (attnx's ``bias=``),
        ``-inf`` masking a key; differentiable when it requires grad.
    dropout_p : float
        Must be 0.0 (dropout is out of scope: a ValueError otherwise).
    is_causal : bool
        Top-left causal mask (query i sees keys ``t <= i``). With `attn_mask`
        as well it is a RuntimeError, as in torch.
    scale : float, optional
        Keyword-only, as in torch. Score factor; default ``1/sqrt(E)`` (with
        E = 0 the scores are 0 whatever the factor: uniform weights, as
        torch's).
    enable_gqa : bool
        Keyword-only, as in torch. Grouped-query attention: Hq must be a
        multiple of H; query head h uses key/value head ``h // (Hq // H)``.
        Done by a reshape of the query and a broadcast axis in key and
        value, never a copy of them. As in torch, key and value may have
        different head counts Hk and Hv, each dividing Hq (query head h
        uses key head ``h // (Hq // Hk)`` and value head ``h // (Hq // Hv)``):
        then both are repeated to ``lcm(Hk, Hv)`` heads first (a copy).

    Returns
    -------
    Tensor, shape (..., Hq, L, Ev)
        Differentiable in query, key and value (attnx.attend_backward).

    Notes
    -----
    One difference from torch: a key that `attn_mask` or `is_causal`
    excludes is never read, so a NaN or inf in its key or value row does
    not reach the result (torch multiplies its weight, 0, by the NaN and
    returns NaN for every query row).

    Examples
    --------
    >>> import torch, attnx.torch
    >>> q, k, v = (torch.randn(2, 4, 8, 16, dtype=torch.float64) for _ in range(3))
    >>> out = attnx.torch.scaled_dot_product_attention(q, k, v, is_causal=True)
    >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    >>> bool(torch.allclose(out, ref, rtol=1e-12, atol=1e-12))
    True
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        _check(name, t)
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"query, key and value must share a dtype, got {query.dtype}, "
                        f"{key.dtype} and {value.dtype}")
    if not isinstance(is_causal, (bool, np.bool_)):   # as torch's own argument parser
        raise TypeError(f"is_causal must be bool, got {type(is_causal).__name__} {is_causal!r}")
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p={dropout_p!r}: attnx.torch does not implement dropout; "
                         f"pass dropout_p=0.0 (apply dropout outside the attention, or use "
                         f"torch's sdpa while training with it)")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a torch.Tensor or None, got "
                            f"{type(attn_mask).__name__}")
        if attn_mask.device.type != "cpu":
            raise ValueError(f"attn_mask is on device {attn_mask.device}: attnx.torch runs on "
                             f"CPU tensors only")
        if attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
            raise TypeError(f"attn_mask has dtype {attn_mask.dtype}: a bool mask, or a float "
                            f"(additive) one of the query's dtype {query.dtype}")
        if is_causal:
            # torch's own rule (attnx.attend could AND the two; the drop-in keeps torch's)
            raise RuntimeError("attn_mask and is_causal=True were both given: as torch's sdpa, "
                               "attnx.torch takes one or the other (fold the causal mask "
                               "into attn_mask)")
    if scale is None:
        # E = 0: every score is an empty sum, 0, whatever the factor; torch's
        # 1/sqrt(0) gives them 0 too (uniform weights), and so does 1.0
        scale = 1.0 / math.sqrt(query.shape[-1]) if query.shape[-1] else 1.0
    else:
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise TypeError(f"scale must be a float or None, got {type(scale).__name__} "
                            f"{scale!r}") from None
    if key.dim() >= 2 and key.shape[-2] == 0:
        raise ValueError(f"key {tuple(key.shape)} has no keys (S = 0): attnx.torch needs at "
                         f"least one (torch's sdpa returns zeros there)")
    # no heads at all (Hq = Hkv = 0): nothing to group, torch returns the empty result
    gqa = enable_gqa and not (query.dim() >= 3 and key.dim() >= 3
                              and query.shape[-3] == key.shape[-3] == 0)
    if gqa and (query.dim() < 3 or key.dim() < 3 or value.dim() < 3):
        raise ValueError(f"enable_gqa=True needs a head dimension (..., H, L, E): got query "
                         f"{tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}")
    if attn_mask is not None:
        _check_mask_shape(attn_mask, query, key, value, gqa)
    if not gqa:
        out, _ = _sdpa(query, key, value, attn_mask, bool(is_causal), scale)
        return out
    hq, hk, hv = query.shape[-3], key.shape[-3], value.shape[-3]
    if hk == 0 or hv == 0 or hq % hk or hq % hv:
        raise ValueError(f"enable_gqa=True needs key and value head counts that divide the "
                         f"query's: got query {tuple(query.shape)}, key {tuple(key.shape)}, "
                         f"value {tuple(value.shape)}")
    hkv = math.lcm(hk, hv)          # divides hq, as hk and hv do
    if hk != hkv:   # unequal head counts (torch allows them): a copy, autograd sums it back
        key = key.repeat_interleave(hkv // hk, dim=-3)
    if hv != hkv:
        value = value.repeat_interleave(hkv // hv, dim=-3)
    group = hq // hkv
    q5 = query.unflatten(-3, (hkv, group))                   # (..., Hkv, G, L, E), a view
    k5, v5 = key.unsqueeze(-3), value.unsqueeze(-3)          # (..., Hkv, 1, S, E), views
    m5 = None if attn_mask is None else _gqa_mask(attn_mask, hkv, group)
    out, _ = _sdpa(q5, k5, v5, m5, bool(is_causal), scale)
    return out.flatten(-4, -3)
