"""A typed user of attnx: `mypy --strict` must accept it (tests/test_typing.py)."""
import numpy as np
from numpy.typing import NDArray

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
