"""A typed user of attnx: `mypy --strict` must accept it (tests/test_typing.py)."""
import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import attnx


def decode_step(q: NDArray[np.float64], keys: NDArray[np.float64],
                out: NDArray[np.float64]) -> NDArray[np.float64]:
    return attnx.attend(q, keys, out=out)


def with_weights(q: NDArray[np.float64], keys: NDArray[np.float64]) -> float:
    ctx, w = attnx.attend(q, keys, return_weights=True, scale=0.5, causal=False)
    total: float = float(w.sum()) + float(ctx[0])
    return total


def tour() -> str:
    q = np.array([5.0, 1.0, 20.0])
    keys = np.array([[3.0, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]])
    s: NDArray[np.float64] = attnx.dot_score(q, keys, scale=1.0)
    w = attnx.softmax(s, axis=-1)
    w2 = attnx.softmax(s[None, :], axis=(0, 1))
    c = attnx.context(w, keys)
    decode_step(q, keys, np.empty(3))
    mask = np.array([True, False, True, True])
    attnx.attend(q, keys, keys, mask=mask, num_threads=1)
    include: str = attnx.get_include()
    level: str = attnx.simd_level()
    return f"{c.sum() + w2.sum() + with_weights(q, keys)} {include} {level} {attnx.__version__}"


def float32_tour(q: NDArray[np.float32], keys: NDArray[np.float32],
                 out: NDArray[np.float32]) -> NDArray[np.float32]:
    """float32 inputs give float32 results (the float32 overloads)."""
    s: NDArray[np.float32] = attnx.dot_score(q, keys)
    w: NDArray[np.float32] = attnx.softmax(s)
    lw: NDArray[np.float32] = attnx.log_softmax(s, axis=None)
    c: NDArray[np.float32] = attnx.context(w, keys)
    ctx, w2 = attnx.attend(q, keys, keys, return_weights=True)
    both: NDArray[np.float32] = ctx + c + w2.sum() + lw.sum()
    h = np.ones(3, dtype=np.float16)
    half: NDArray[np.float32] = attnx.softmax(h)
    mixed: NDArray[np.float64] = attnx.softmax(q.astype(np.float64))
    g: NDArray[np.float32] = attnx.general_score(q, keys, np.eye(3, dtype=np.float32))
    r: NDArray[np.float32] = attnx.attend(q, keys, out=out)
    assert both.size + half.size + mixed.size + g.size > 0
    return r


def typed_pairs(q: NDArray[np.float64], keys: NDArray[np.float64],
                q32: NDArray[np.float32], keys32: NDArray[np.float32], flag: bool) -> None:
    """Results are typed by dtype: no Any for the weights of a typed call
    (issue 16). An NDArray[Any] input (np.array of a literal list) matches
    the float32 and the float64 overloads alike, and mypy types such a call Any."""
    ctx, w = attnx.attend(q, keys, return_weights=True)
    assert_type(ctx, NDArray[np.float64])
    assert_type(w, NDArray[np.float64])
    ctx32, w32 = attnx.attend(q32, keys32, return_weights=True)
    assert_type(w32, NDArray[np.float32])
    lw = attnx.attend([5.0, 1.0], [[1.0, 2.0]], return_weights=True)[1]
    assert_type(lw, NDArray[np.float64])
    # a return_weights known only at run time: either form
    either = attnx.attend(q, keys, return_weights=flag)
    assert_type(either, NDArray[np.float64] | tuple[NDArray[np.float64], NDArray[np.float64]])


def generic_cache() -> None:
    """KVCache is generic over its dtype, chosen by dtype= (issue 16)."""
    c64 = attnx.KVCache(3)
    assert_type(c64, attnx.KVCache[np.float64])
    assert_type(c64.keys, NDArray[np.float64])
    assert_type(c64.attend([5.0, 1.0, 20.0]), NDArray[np.float64])
    c32 = attnx.KVCache(3, 2, dtype=np.float32)
    assert_type(c32, attnx.KVCache[np.float32])
    assert_type(c32.keys, NDArray[np.float32])
    assert_type(c32.values, NDArray[np.float32])
    assert_type(c32.attend(np.ones(3)), NDArray[np.float32])
    ctx, w = c32.attend(np.ones(3), return_weights=True)
    assert_type(w, NDArray[np.float32])
    named: attnx.KVCache[np.float32] = attnx.KVCache(3, dtype="float32")
    assert_type(named.dtype, np.dtype[np.float32])


def issue13_tour(q: NDArray[np.float64], keys: NDArray[np.float64]) -> NDArray[np.float64]:
    """The keywords of issue 13, and attend_varlen."""
    ctx: NDArray[np.float64] = attnx.attend(
        q, keys, keys, bias=np.zeros(4), causal="lower_right", window=(2, None),
        key_lengths=np.array(3), softcap=30.0, alibi_slopes=np.ones(1), enable_gqa=False)
    cu = np.array([0, 2, 4], dtype=np.int32)
    q3, k3 = np.ones((4, 2, 3)), np.ones((4, 1, 3))
    o: NDArray[np.float64] = attnx.attend_varlen(q3, k3, k3, cu, cu, causal=True, window=(1, 0))
    o2, lse = attnx.attend_varlen(q3, k3, k3, cu, cu, return_lse=True)
    assert o2.shape == (4, 2, 3) and lse.shape == (4, 2) and o.shape == o2.shape
    return ctx
