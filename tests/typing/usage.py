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
