"""attnx for JAX: ``attnx.jax.dot_product_attention``.

`jax.nn.dot_product_attention`'s layout (query (B, T, N, H), key and value
(B, S, K, H), N a multiple of K for grouped-query attention) and semantics,
computed on the CPU by `attnx.attend` (forward) and `attnx.attend_backward`
(backward) through `jax.pure_callback`, with a `jax.custom_vjp` for the
gradients. It works under `jax.jit` and `jax.grad`; float64 needs
``jax.config.update("jax_enable_x64", True)``.

Differences from jax.nn.dot_product_attention:
- a query row whose every key is masked gets zeros (and zero gradients);
  JAX's XLA implementation gives it the plain mean of all the value rows;
- so does a row whose `bias` is ``-inf`` at every key (or whose keys are
  excluded by `mask` and `bias` together): zeros, and zero gradients for
  query, key, value and bias from that row; jax.nn gives it NaN (and NaN
  gradients);
- `bias` gets its gradient through attnx's ``grad_bias`` (a buffer of the
  scores' full shape in the backward);
- the sequence-length, window and implementation options are not offered.

Importing ``attnx`` never imports this module (nor jax); ``import
attnx.jax`` does. Install with ``pip install "attnx[jax]"``.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

import attnx

__all__ = ["dot_product_attention"]


def _batch(*shapes):
    return np.broadcast_shapes(*(s[:-2] for s in shapes))


def _host(a):
    # pure_callback hands over jax Arrays; np.asarray views a CPU one without a
    # copy, and gives attnx an ndarray whose dtype (float32) it computes in
    # (attnx takes a non-ndarray array_like as float64)
    return None if a is None else np.asarray(a)


def _forward_host(q, k, v, mask, bias, causal, scale):
    return attnx.attend(_host(q), _host(k), _host(v), scale=scale, mask=_host(mask),
                        bias=_host(bias), causal=causal, return_lse=True)


def _backward_host(g, q, k, v, mask, bias, out, lse, causal, scale):
    return attnx.attend_backward(*(_host(a) for a in (g, q, k, v, out, lse)), scale=scale,
                                 mask=_host(mask), bias=_host(bias), causal=causal,
                                 grad_bias=bias is not None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attend(q, k, v, mask, bias, causal, scale):
    return _attend_fwd(q, k, v, mask, bias, causal, scale)[0]


def _attend_fwd(q, k, v, mask, bias, causal, scale):
    shapes = [q.shape, k.shape, v.shape] + [x.shape for x in (mask, bias) if x is not None]
    batch = _batch(*shapes)
    L, dv = q.shape[-2], v.shape[-1]
    result = (jax.ShapeDtypeStruct((*batch, L, dv), q.dtype),
              jax.ShapeDtypeStruct((*batch, L), q.dtype))
    out, lse = jax.pure_callback(
        lambda q_, k_, v_, m_, b_: _forward_host(q_, k_, v_, m_, b_, causal, scale),
        result, q, k, v, mask, bias, vmap_method="broadcast_all")
    return out, (q, k, v, mask, bias, out, lse)


def _attend_bwd(causal, scale, res, g):
    q, k, v, mask, bias, out, lse = res
    result = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype)
                   for a in (q, k, v) + (() if bias is None else (bias,)))
    grads = jax.pure_callback(
        lambda g_, q_, k_, v_, m_, b_, o_, l_: _backward_host(g_, q_, k_, v_, m_, b_, o_, l_,
                                                              causal, scale)[:len(result)],
        result, g, q, k, v, mask, bias, out, lse, vmap_method="broadcast_all")
    dq, dk, dv = grads[:3]
    return dq, dk, dv, None, (None if bias is None else grads[3])


_attend.defvjp(_attend_fwd, _attend_bwd)


def _check(name, x):
    if x.dtype not in (jnp.float32, jnp.float64):
        raise TypeError(f"{name} has dtype {x.dtype}: attnx.jax supports float32 and float64 "
                        f"(float64 needs jax_enable_x64)")
    if x.ndim not in (3, 4):
        raise ValueError(f"{name} must have shape (B, T, N, H) or (T, N, H), got {x.shape}")


def _scores_operand(name, x, B, N, T, S, K, G):
    """`mask` or `bias` as attnx takes it: checked to broadcast to
    (B, N, T, S) (a head axis of K kv heads does not: jax.nn refuses it
    too), then (B, K, G, T, S) with its broadcast axes kept (no copy): a
    full head axis split into (K, G), a size-1 one given a second."""
    if x.ndim > 4:
        raise ValueError(f"{name} must broadcast to (B, N, T, S) = {(B, N, T, S)}, got shape {x.shape}")
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)
    if any(a not in (1, b) for a, b in zip(x.shape, (B, N, T, S))):
        raise ValueError(f"{name} must broadcast to (B, N, T, S) = {(B, N, T, S)}, got shape {x.shape}")
    return x.reshape(x.shape[0], K, G, *x.shape[2:]) if x.shape[1] == N else x[:, :, None]


def dot_product_attention(query, key, value, bias=None, mask=None, *, scale=None,
                          is_causal=False):
    """`jax.nn.dot_product_attention` computed by attnx (CPU, float32/float64).

    Parameters
    ----------
    query : array, shape (B, T, N, H) or (T, N, H)
    key, value : array, shape (B, S, K, H) or (S, K, H)
        N must be a multiple of K (grouped-query attention: query head n uses
        kv head ``n // (N // K)``). All three share one dtype.
    bias : array, optional
        Broadcastable to (B, N, T, S), of the query's dtype: added to the
        scaled scores (``-inf`` masks a key). Differentiable.
    mask : array of bool, optional
        Broadcastable to (B, N, T, S); True means "attends".
    scale : float, optional
        Score factor; default ``1/sqrt(H)``. A constant (a Python or NumPy
        number), not a traced value.
    is_causal : bool
        Top-left causal mask (query t sees keys ``s <= t``), ANDed with `mask`.

    Returns
    -------
    array, shape of `query` (with value's H)
        Differentiable in query, key, value and bias in reverse mode
        (``jax.grad``, ``jax.vjp``: a custom VJP calling
        attnx.attend_backward); forward mode (``jvp``, ``jacfwd``,
        ``hessian``) is not supported. S must be at least 1.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, attnx.jax
    >>> q, k, v = (jax.random.normal(jax.random.key(i), (2, 8, 4, 16)) for i in range(3))
    >>> out = attnx.jax.dot_product_attention(q, k, v, is_causal=True)
    >>> ref = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    >>> bool(jnp.allclose(out, ref, atol=1e-5))
    True
    """
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    for name, x in (("query", query), ("key", key), ("value", value)):
        _check(name, x)
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"query, key and value must share a dtype, got {query.dtype}, "
                        f"{key.dtype} and {value.dtype}")
    if not (query.ndim == key.ndim == value.ndim):
        raise ValueError(f"query, key and value must have the same rank, got shapes "
                         f"{query.shape}, {key.shape} and {value.shape}")
    single = query.ndim == 3
    if single:
        query, key, value = query[None], key[None], value[None]
    B, T, N, H = query.shape
    S, K = key.shape[1], key.shape[2]
    if value.shape[1:3] != (S, K) or key.shape[0] != B or value.shape[0] != B:
        raise ValueError(f"key {key.shape} and value {value.shape} must share (B, S, K) "
                         f"with query {query.shape}")
    if key.shape[3] != H:
        raise ValueError(f"key {key.shape} must have the query's H = {H} features (query "
                         f"{query.shape}): the scores are dot products of the two")
    if N % K:
        raise ValueError(f"query has {N} heads and key {K}: the query's heads must be a "
                         f"multiple of the key's (grouped-query attention)")
    G = N // K
    if S == 0:
        raise ValueError(f"key {key.shape} has no keys (S = 0): attnx.jax needs at least one")
    if scale is None:
        if H == 0:
            raise ValueError("query has H = 0 features: pass scale= (the default 1/sqrt(H) "
                             "is undefined)")
        scale = 1.0 / math.sqrt(H)
    else:
        try:
            scale = float(scale)
        except jax.errors.ConcretizationTypeError:
            raise TypeError("scale must be a Python or NumPy number, not a traced value "
                            "(attnx.jax takes it as a constant of the kernel call)") from None
        except (TypeError, ValueError):
            raise TypeError(f"scale must be a Python or NumPy number or None, got "
                            f"{type(scale).__name__} {scale!r}") from None
    # attnx's layout, (..., rows, features): query (B, K, G, T, H), key and
    # value (B, K, 1, S, H); the size-1 axis broadcasts over the group, and
    # attend_backward sums the kv gradients over it
    q = query.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4)
    k = key.transpose(0, 2, 1, 3)[:, :, None]
    v = value.transpose(0, 2, 1, 3)[:, :, None]
    m = None
    if mask is not None:
        m = jnp.asarray(mask)
        if m.dtype != jnp.bool_:
            raise TypeError(f"mask must be boolean (True = attends), got dtype {m.dtype}")
        m = _scores_operand("mask", m, B, N, T, S, K, G)
    bb = None
    if bias is not None:
        bb = jnp.asarray(bias)
        if bb.dtype != query.dtype:
            raise TypeError(f"bias has dtype {bb.dtype}: it must have the query's dtype "
                            f"{query.dtype}")
        bb = _scores_operand("bias", bb, B, N, T, S, K, G)
    out = _attend(q, k, v, m, bb, bool(is_causal), scale)     # (B, K, G, T, Hv)
    out = out.transpose(0, 3, 1, 2, 4).reshape(B, T, N, value.shape[-1])
    return out[0] if single else out
