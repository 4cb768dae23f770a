"""attnx.dask: attention over keys and values that do not fit one machine.

Keys and values are dask arrays chunked along the sequence (T) and along any
batch dimension. Every key chunk is attended on a worker by `attnx.attend`
with ``return_lse=True`` and its position (``key_offset``), and the partial
results are merged by `attnx.merge_attention` in a fixed tree over the chunk
index. No task ever reads more than one chunk of the keys or of the values;
a chunk made straight from its source (dask.array.random, a chunk task that
reads no other task) is made inside the task that attends it, so it is never
moved between workers.

This module needs Dask (``pip install "attnx[dask]"``); ``import attnx``
never imports it.
"""
import operator
from itertools import product

import numpy as np

try:
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
    from dask._task_spec import Task, TaskRef
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "attnx.dask needs Dask: pip install \"attnx[dask]\" "
        "(dask[array,distributed])") from exc

import attnx
from attnx import _core

__all__ = ["attend", "DEFAULT_SPLIT_EVERY"]

#: Partial results merged per task when `split_every` is not given. A
#: constant (not Dask's ``split_every`` config), so that the bits of a result
#: depend only on the chunking.
DEFAULT_SPLIT_EVERY = 8


def attend(query, keys, values=None, *, scale=1.0, mask=None, causal=False, bias=None,
           key_lengths=None, enable_gqa=False, return_lse=False, split_every=None):
    """Dot-product attention on Dask arrays, as `attnx.attend` computes it.

    Each chunk of the keys (along T, and along any batch dimension) is
    attended on a worker with ``attnx.attend(..., return_lse=True,
    key_offset=<chunk start>)``; the partial results over the key chunks are
    merged with `attnx.merge_attention` in a tree that groups `split_every`
    consecutive chunks per task, level by level. Batch and query-row chunks
    map blockwise. The result is lazy: call ``.compute()`` (or
    ``dask.compute``) on it.

    Parameters
    ----------
    query : dask or NumPy array, shape (d,) or (..., Lq, d)
        May be chunked along its batch dimensions and along Lq, not along d.
    keys : dask or NumPy array, shape (..., T, d)
        Chunked along T and along any batch dimension, not along d. A NumPy
        array is one chunk.
    values : dask or NumPy array, shape (..., T, dv), optional
        Defaults to `keys`. Rechunked to the chunks of `keys` along T and the
        batch dimensions if they differ; not chunked along dv.
    scale : float, optional
        Score factor, as in `attnx.attend`.
    mask : dask or NumPy array of bool, optional
        Broadcastable to the scores, (..., Lq, T) (or (..., T) for a 1-D
        query); True means "attends".
    causal : bool or "lower_right", optional
        As `attnx.attend`. ``True``: top-left aligned, query row i sees keys
        ``t <= i`` (a ValueError for a single (d,) query, which would see
        key 0 only). ``"lower_right"``: the last query row is aligned with
        the last key (with `key_lengths`, with each item's last real key).
        Either holds across chunk boundaries (each chunk is attended at its
        own position).
    bias : dask or NumPy array of real numbers, optional
        Added to the scaled scores, as `attnx.attend`'s `bias` (PyTorch's
        float ``attn_mask``; ``-inf`` masks a key). Broadcastable to the
        scores, (..., Lq, T) (or (..., T) for a 1-D query); rechunked along T
        to the keys' chunks and along Lq to the query's, so each task reads
        only its block.
    key_lengths : integer array, optional
        Broadcastable (NumPy rules) to the batch dimensions of the result
        (its ``...``); key t is attended only where ``t < key_lengths``.
        Each chunk applies it as a small boolean mask of shape
        (..., 1, chunk length). Values must lie in [0, T]. With heads, a
        per-sequence length has shape (B, 1).
    enable_gqa : bool, optional
        Grouped-query attention, as PyTorch's: query (..., H, Lq, d), keys
        and values (..., Hkv, T, d) with ``H % Hkv == 0``; query head h reads
        key/value head ``h // (H // Hkv)``. The keys and values are not
        copied per query head (the query is viewed as (..., Hkv, G, Lq, d)).
    return_lse : bool, optional
        Also return the logsumexp of each query row's scores, as
        `attnx.attend` does (``-inf`` for a row that attends nothing).
    split_every : int, optional
        Partial results merged per task, at least 2 (default
        `DEFAULT_SPLIT_EVERY`, 8). The result's bits depend only on the
        chunking of the keys and on `split_every`: not on the number of
        workers, where tasks run, or how often they are recomputed.

    Returns
    -------
    context : dask array, shape (dv,) or (..., Lq, dv)
    lse : dask array, shape (...) or (..., Lq)
        Only with ``return_lse=True``.

    Raises
    ------
    TypeError
        For complex, object or string input, a non-boolean `mask`, a
        non-numeric `bias`, or non-integer `key_lengths`.
    ValueError
        For shapes that do not match or broadcast (the message names the
        arguments), chunks along d or dv, `key_lengths` outside [0, T], or
        ``H % Hkv != 0`` with `enable_gqa`.

    Examples
    --------
    >>> import numpy as np, dask.array as da, attnx, attnx.dask
    >>> rng = np.random.default_rng(0)
    >>> q, K, V = rng.standard_normal((3, 8)), rng.standard_normal((100, 8)), rng.standard_normal((100, 4))
    >>> ctx = attnx.dask.attend(q, da.from_array(K, chunks=(30, 8)),
    ...                         da.from_array(V, chunks=(30, 4)), causal=True)
    >>> ctx
    dask.array<attnx-attend, shape=(3, 4), dtype=float64, chunksize=(3, 4), chunktype=numpy.ndarray>
    >>> np.allclose(ctx.compute(scheduler="sync"), attnx.attend(q, K, V, causal=True), rtol=1e-13)
    True
    """
    if split_every is None:
        split_every = DEFAULT_SPLIT_EVERY
    if isinstance(split_every, (bool, np.bool_)) or not isinstance(split_every, (int, np.integer)):
        raise TypeError(f"split_every must be an integer, not {type(split_every).__name__}")
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__} {scale!r}") from None
    causal = _core._causal_value(causal)     # attnx.attend's values, and its errors

    q = _as_dask(query, "query", "biuf")
    k = _as_dask(keys, "keys", "biuf")
    v = k if values is None else _as_dask(values, "values", "biuf")
    if q.ndim < 1:
        raise ValueError(f"query must have shape (d,) or (..., Lq, d), got {q.shape}")
    for name, x in (("keys", k), ("values", v)):
        if x.ndim < 2:
            raise ValueError(f"{name} must have shape (..., T, {'d' if name == 'keys' else 'dv'}), "
                             f"got {x.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"query and keys differ in d: query {q.shape}, keys {k.shape}")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"keys and values differ in T: keys {k.shape}, values {v.shape}")
    T = k.shape[-2]
    if T == 0:
        raise ValueError(f"keys hold no key (T = 0): keys {k.shape}")
    for name, x in (("query", q), ("keys", k), ("values", v)):
        if len(x.chunks[-1]) > 1:
            raise ValueError(
                f"{name} is chunked along its last axis (chunks {x.chunks[-1]}); attnx.dask "
                f"needs whole rows: rechunk it with .rechunk({{-1: -1}})")
    # the result dtype, as attnx.attend promotes (float32 stays float32)
    dtype = attnx.attend(np.zeros((1, 1), q.dtype), np.zeros((1, 1), k.dtype),
                         np.zeros((1, 1), v.dtype)).dtype

    one_query = q.ndim == 1
    if one_query:
        if causal is True:      # as attnx.attend: it would sit at position 0
            raise ValueError("causal=True with a single query of shape (d,): causal masks are "
                             "top-left aligned (query row i sees keys t <= i), so a lone query "
                             "would attend to key 0 only; for a decoding step leave "
                             "causal=False or pass causal='lower_right'")
        q = q[None, :]
    def scores_operand(x, name, kinds):   # mask, bias: as (..., 1 or Lq, 1 or T)
        y = _as_dask(x, name, kinds)
        if one_query and y.ndim >= 1:
            y = y[..., None, :]
        if y.ndim < 2:
            y = y.reshape((1,) * (2 - y.ndim) + y.shape)
        Lq = q.shape[-2]
        if y.shape[-2] not in (1, Lq) or y.shape[-1] not in (1, T):
            raise ValueError(f"{name} of shape {tuple(np.shape(x))} does not broadcast to the "
                             f"scores (..., {'' if one_query else f'{Lq}, '}{T})")
        return y

    m = None if mask is None else scores_operand(mask, "mask", "b")
    bb = None if bias is None else scores_operand(bias, "bias", "iuf")
    kl = None
    if key_lengths is not None:
        kl = _as_dask(key_lengths, "key_lengths", "iu")
        if not isinstance(key_lengths, da.Array):
            kl_np = np.asarray(key_lengths)
            if kl_np.size and (kl_np.min() < 0 or kl_np.max() > T):
                raise ValueError(f"key_lengths must lie in [0, T={T}], got values from "
                                 f"{kl_np.min()} to {kl_np.max()}")

    heads = None
    if enable_gqa:
        if q.ndim < 3 or k.ndim < 3 or v.ndim < 3:
            raise ValueError(
                "enable_gqa needs a heads axis: query (..., H, Lq, d), keys and values "
                f"(..., Hkv, T, d); got query {q.shape}, keys {k.shape}, values {v.shape}")
        H, Hkv = q.shape[-3], k.shape[-3]
        if v.shape[-3] != Hkv:
            raise ValueError(f"enable_gqa: keys and values differ in heads: keys {k.shape}, "
                             f"values {v.shape}")
        if Hkv == 0 or H % Hkv:
            raise ValueError(f"enable_gqa: the query's {H} heads are not a multiple of the "
                             f"{Hkv} heads of keys and values (query {q.shape}, keys {k.shape})")
        G = H // Hkv
        heads = H
        # query head h = j * G + g reads kv head j: view the query as (..., Hkv, G, Lq, d)
        # and give keys/values a length-1 G axis (a broadcast, not a copy)
        q = q.reshape(q.shape[:-3] + (Hkv, G) + q.shape[-2:])
        k = k[..., None, :, :]
        v = v[..., None, :, :]
        if m is not None and m.ndim >= 3:
            m = _split_heads(m, -3, H, Hkv, G, "mask")
        if bb is not None and bb.ndim >= 3:
            bb = _split_heads(bb, -3, H, Hkv, G, "bias")
        if kl is not None and kl.ndim >= 1:
            kl = _split_heads(kl, -1, H, Hkv, G, "key_lengths")

    shapes = [("query", q.shape[:-2]), ("keys", k.shape[:-2]), ("values", v.shape[:-2])]
    if m is not None:
        shapes.append(("mask", m.shape[:-2]))
    if bb is not None:
        shapes.append(("bias", bb.shape[:-2]))
    if kl is not None:
        shapes.append(("key_lengths", kl.shape))
    try:
        batch = np.broadcast_shapes(*(s for _, s in shapes))
    except ValueError:
        raise ValueError("batch dimensions do not broadcast: " +
                         ", ".join(f"{n} {s}" for n, s in shapes)) from None
    nb = len(batch)

    def lift(x, core):  # prepend length-1 batch axes (a view)
        return x[(None,) * (nb + core - x.ndim)] if x.ndim < nb + core else x

    q, k, v = lift(q, 2), lift(k, 2), lift(v, 2)
    m = None if m is None else lift(m, 2)
    bb = None if bb is None else lift(bb, 2)
    kl = None if kl is None else lift(kl, 0)

    # one chunking per batch axis (from keys first, so that keys are never
    # rechunked along a batch axis), T from keys, Lq from the query
    arrays = {"keys": k, "values": v, "query": q, "mask": m, "bias": bb, "key_lengths": kl}
    want = {n: {} for n in arrays}
    for a in range(nb):
        ref = None
        for n, x in arrays.items():
            if x is not None and x.shape[a] == batch[a] and batch[a] != 1:
                if ref is None:
                    ref = x.chunks[a]
                elif x.chunks[a] != ref:
                    want[n][a] = ref
    if v.chunks[-2] != k.chunks[-2]:
        want["values"][nb] = k.chunks[-2]
    for n in ("mask", "bias"):
        x = arrays[n]
        if x is None:
            continue
        if x.shape[-1] == T and T != 1 and x.chunks[-1] != k.chunks[-2]:
            want[n][nb + 1] = k.chunks[-2]
        if x.shape[-2] == q.shape[-2] and q.shape[-2] != 1 and x.chunks[-2] != q.chunks[-2]:
            want[n][nb] = q.chunks[-2]
    for n, ch in want.items():
        if ch:
            arrays[n] = arrays[n].rechunk(ch)
    k, v, q, m, bb, kl = (arrays[n] for n in ("keys", "values", "query", "mask", "bias",
                                              "key_lengths"))

    bchunks = tuple(
        next((x.chunks[a] for x in (k, v, q, m, bb, kl)
              if x is not None and x.shape[a] == batch[a]),
             (batch[a],))
        for a in range(nb))
    qchunks, kchunks = q.chunks[-2], k.chunks[-2]
    qstarts = np.concatenate([[0], np.cumsum(qchunks)[:-1]]).tolist()
    kstarts = np.concatenate([[0], np.cumsum(kchunks)[:-1]]).tolist()
    dv = v.shape[-1]

    # lower-right causal: the last query row aligned with the last key, so
    # query row i sits at i + T - Lq; with key_lengths at i + n - Lq for each
    # item's n keys, which _partial turns into a mask
    if causal == "lower_right" and kl is None:
        causal, qshift = True, T - q.shape[-2]
    else:
        qshift = 0
    token = tokenize(q, k, v, m, bb, kl, scale, causal, qshift, split_every, T)
    pname, mname = "attnx-partial-" + token, "attnx-merge-" + token
    oname, lname = "attnx-attend-" + token, "attnx-lse-" + token

    def bkey(x, bidx, *core):
        return (x.name,) + tuple(b if x.numblocks[a] > 1 else 0 for a, b in enumerate(bidx)) + core

    made_here = _ChunkSources()
    kept = set()  # names of the key/value arrays some task still reads by key
    tree, out_tasks, lse_tasks = {}, {}, {}
    for bidx in product(*(range(len(c)) for c in bchunks)):
        for i in range(len(qchunks)):
            level = []
            for j in range(len(kchunks)):
                if kchunks[j] == 0:
                    continue
                key = (pname,) + bidx + (i, j)
                mk, bk = (None if x is None else bkey(
                    x, bidx, i if x.numblocks[-2] > 1 else 0, j if x.numblocks[-1] > 1 else 0)
                    for x in (m, bb))
                lk = None if kl is None else bkey(kl, bidx)
                # a key (value) chunk made straight from its source is made
                # in this task (see _ChunkSources); any other is read by key
                kk, vk = bkey(k, bidx, j, 0), bkey(v, bidx, j, 0)
                kt, vt = made_here(k, kk), made_here(v, vk)
                kept.update(x.name for x, t in ((k, kt), (v, vt)) if t is None)
                kt = TaskRef(kk) if kt is None else kt
                vt = TaskRef(vk) if vt is None else vt
                # the same chunk as keys and values (values=None) is passed once
                tree[key] = Task(key, _partial, _ref(mk), _ref(bk), _ref(lk), scale, causal,
                                 qstarts[i] + qshift, kstarts[j], T, q.shape[-2],
                                 _ref(bkey(q, bidx, i, 0)),
                                 kt, *(() if vk == kk else (vt,)))
                level.append(key)
            depth = 0
            while len(level) > 1:
                nxt = []
                for g in range(0, len(level), split_every):
                    group = level[g:g + split_every]
                    if len(group) == 1:
                        nxt.append(group[0])
                        continue
                    key = (mname, depth) + bidx + (i, g // split_every)
                    tree[key] = (_merge, group)
                    nxt.append(key)
                level, depth = nxt, depth + 1
            out_tasks[(oname,) + bidx + (i, 0)] = (operator.getitem, level[0], 0)
            lse_tasks[(lname,) + bidx + (i,)] = (operator.getitem, level[0], 1)

    deps = [x for x in (q, m, bb, kl) if x is not None]
    deps += [x for x in ((k,) if v is k else (k, v)) if x.name in kept]
    meta = np.empty((0,) * (nb + 2), dtype)
    out = da.Array(HighLevelGraph.from_collections(oname, {**tree, **out_tasks}, deps),
                   oname, bchunks + (qchunks, (dv,)), meta=meta)
    lse = da.Array(HighLevelGraph.from_collections(lname, {**tree, **lse_tasks}, deps),
                   lname, bchunks + (qchunks,), meta=np.empty((0,) * (nb + 1), dtype))
    if heads is not None:
        out = out.reshape(out.shape[:-4] + (heads,) + out.shape[-2:])
        lse = lse.reshape(lse.shape[:-3] + (heads,) + lse.shape[-1:])
    if one_query:
        out, lse = out[..., 0, :], lse[..., 0]
    return (out, lse) if return_lse else out


def _as_dask(x, name, kinds):
    """A dask array of x; NumPy input becomes one chunk."""
    if not isinstance(x, da.Array):
        x = np.asarray(x)
        _check_kind(x.dtype, name, kinds)
        return da.from_array(x, chunks=x.shape or ())
    _check_kind(x.dtype, name, kinds)
    return x


def _check_kind(dtype, name, kinds):
    if dtype.kind not in kinds:
        what = {"b": "boolean", "iu": "integer"}.get(kinds, "real numeric")
        raise TypeError(f"{name} must be {what}, got dtype {dtype}")


def _split_heads(x, axis, H, Hkv, G, name):
    """x's heads axis (length H or 1) as (Hkv, G) or (1, 1)."""
    n = x.shape[axis]
    ax = x.ndim + axis
    if n == H:
        return x.reshape(x.shape[:ax] + (Hkv, G) + x.shape[ax + 1:])
    if n == 1:
        return x[(slice(None),) * (ax + 1) + (None,)]
    raise ValueError(f"enable_gqa: {name} of shape {x.shape} has {n} heads where the query "
                     f"has {H} (want {H} or 1)")


class _ChunkSources:
    """Finds the tasks that make chunks straight from a source, so that the
    task attending key chunk j can make key chunk j and value chunk j itself.

    A chunk of ``dask.array.random`` (or of any array whose chunk task reads
    no other task: ``from_delayed`` of a function of constants, ``ones``, a
    chunk made from a seed) is cheap to describe and large to move. Left as
    its own task, the distributed scheduler hands the key chunks and the
    value chunks to whichever worker is free, so key chunk j and value chunk
    j are made on different workers and one of them (here 32 MiB) crosses
    between processes before they can be attended (measured at T = 2**22 on
    2 workers: 38 of 64 attention tasks waited for such a transfer, 2.0 s of
    transfers against 1.0 s of attention). Made inside the task that attends
    them, they are made where they are attended and only the small
    (context, lse) partial leaves the worker. Dask's own fuse_roots
    optimization means to do this, but its fuse no longer applies to the
    task specs Dask now builds.

    A chunk that reads another task (a persisted or loaded array, a rechunk,
    a slice, a NumPy array handed to from_array) is read by key as before.
    Inlined, a chunk that something else also reads in the same compute is
    made twice (the same values, so the result does not change)."""

    def __init__(self):
        self.layers = {}

    def __call__(self, x, key):
        layer = self.layers.get(x.name, False)
        if layer is False:
            graph = x.__dask_graph__()
            layer = getattr(graph, "layers", {}).get(x.name)
            if layer is not None and graph.dependencies.get(x.name):
                layer = None  # the array's chunks read another layer's
            self.layers[x.name] = layer
        task = None if layer is None else layer.get(key)
        if type(task) is Task and not task.dependencies:
            return task
        return None


def _ref(key):
    return None if key is None else TaskRef(key)


def _partial(mask, bias, key_lengths, scale, causal, query_offset, key_offset, T, Lq, q, k,
             v=None):
    """One key chunk: (context, lse) over keys key_offset ... + len(k) for
    query rows query_offset ... + len(q) of Lq; `v` None means the values
    are the keys."""
    if v is None:
        v = k
    if key_lengths is not None:
        if key_lengths.size and (key_lengths.min() < 0 or key_lengths.max() > T):
            raise ValueError(f"key_lengths must lie in [0, T={T}], got values from "
                             f"{key_lengths.min()} to {key_lengths.max()}")
        n = key_lengths[..., None, None]
        t = key_offset + np.arange(k.shape[-2])
        # (..., 1, Tc): which keys of this chunk lie before each sequence's length
        seen = t < n
        if causal == "lower_right":
            # (..., Lq_chunk, Tc): query row i of an item with n keys sees the
            # keys up to i + n - Lq (its last row, the last real key)
            seen = seen & (t <= (query_offset + np.arange(q.shape[-2]))[:, None] + (n - Lq))
            causal = False
        mask = seen if mask is None else mask & seen
    return attnx.attend(q, k, v, scale=scale, mask=mask, bias=bias, causal=causal,
                        return_lse=True, key_offset=key_offset, query_offset=query_offset)


def _merge(parts):
    """Merge consecutive chunks' partial results, in chunk order."""
    return attnx.merge_attention([p[0] for p in parts], [p[1] for p in parts])
