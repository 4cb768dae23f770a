from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

_F64 = NDArray[np.float64]
_Axis = int | tuple[int, ...] | None

def dot_score(
    query: ArrayLike,
    keys: ArrayLike,
    *,
    scale: float = 1.0,
    out: _F64 | None = None,
    num_threads: int | None = None,
) -> _F64: ...
def softmax(
    x: ArrayLike,
    axis: _Axis = -1,
    *,
    out: _F64 | None = None,
    num_threads: int | None = None,
) -> _F64: ...
def context(
    weights: ArrayLike,
    values: ArrayLike,
    *,
    out: _F64 | None = None,
    num_threads: int | None = None,
) -> _F64: ...
@overload
def attend(
    query: ArrayLike,
    keys: ArrayLike,
    values: ArrayLike | None = None,
    *,
    scale: float = 1.0,
    mask: ArrayLike | None = None,
    causal: bool = False,
    return_weights: Literal[False] = False,
    out: _F64 | None = None,
    num_threads: int | None = None,
) -> _F64: ...
@overload
def attend(
    query: ArrayLike,
    keys: ArrayLike,
    values: ArrayLike | None = None,
    *,
    scale: float = 1.0,
    mask: ArrayLike | None = None,
    causal: bool = False,
    return_weights: Literal[True],
    out: _F64 | tuple[_F64 | None, _F64 | None] | None = None,
    num_threads: int | None = None,
) -> tuple[_F64, _F64]: ...
