from collections.abc import Sequence
from typing import Any, Generic, Literal, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray
from typing_extensions import disjoint_base

_F64 = NDArray[np.float64]
_F32 = NDArray[np.float32]
# float32 or float16 arrays compute and return float32 (NumPy's promotion);
# anything else float64. The float32 overloads come first.
_Lo = NDArray[np.float32] | NDArray[np.float16]
_Axis = int | tuple[int, ...] | None
_Score = Literal["dot", "general", "additive"]
# True: top-left aligned (torch's is_causal); "lower_right": the last query on the last key
_Causal = bool | Literal["lower_right"]
_Window = tuple[int | None, int | None]

@overload
def dot_score(  # type: ignore[overload-overlap, unused-ignore]
    query: _Lo,
    keys: _Lo,
    *,
    scale: float = 1.0,
    out: _F32 | None = None,
    num_threads: int | None = None,
) -> _F32: ...
@overload
def dot_score(
    query: ArrayLike,
    keys: ArrayLike,
    *,
    scale: float = 1.0,
    out: _F64 | None = None,
    num_threads: int | None = None,
) -> _F64: ...
@overload
def softmax(  # type: ignore[overload-overlap, unused-ignore]
    x: _Lo,
    axis: _Axis = -1,
    *,
    out: _F32 | None = None,
    num_threads: int | None = None,
) -> _F32: ...
@overload
def softmax(
    x: ArrayLike,
    axis: _Axis = -1,
    *,
    out: _F64 | None = None,
    num_threads: int | None = None,
) -> _F64: ...
@overload
def log_softmax(  # type: ignore[overload-overlap, unused-ignore]
    x: _Lo,
    axis: _Axis = -1,
    *,
    out: _F32 | None = None,
    num_threads: int | None = None,
) -> _F32: ...
@overload
def log_softmax(
    x: ArrayLike,
    axis: _Axis = -1,
    *,
    out: _F64 | None = None,
    num_threads: int | None = None,
) -> _F64: ...
@overload
def context(  # type: ignore[overload-overlap, unused-ignore]
    weights: _Lo,
    values: _Lo,
    *,
    out: _F32 | None = None,
    num_threads: int | None = None,
) -> _F32: ...
@overload
def context(
    weights: ArrayLike,
    values: ArrayLike,
    *,
    out: _F64 | None = None,
    num_threads: int | None = None,
) -> _F64: ...
@overload
def attend(  # type: ignore[overload-overlap, unused-ignore]
    query: _Lo,
    keys: _Lo,
    values: _Lo | None = None,
    *,
    scale: float = 1.0,
    mask: ArrayLike | None = None,
    causal: _Causal = False,
    return_weights: Literal[False] = False,
    out: _F32 | None = None,
    num_threads: int | None = None,
    score: _Score = "dot",
    W: ArrayLike | None = None,
    W_q: ArrayLike | None = None,
    v: ArrayLike | None = None,
    keys_proj: ArrayLike | None = None,
    W_k: ArrayLike | None = None,
    return_lse: Literal[False] = False,
    key_offset: int = 0,
    query_offset: int = 0,
    bias: ArrayLike | None = None,
    alibi_slopes: ArrayLike | None = None,
    enable_gqa: bool = False,
    window: _Window | None = None,
    key_lengths: ArrayLike | None = None,
    softcap: float | None = None,
) -> _F32: ...
@overload
def attend(  # type: ignore[overload-overlap, unused-ignore]
    query: _Lo,
    keys: _Lo,
    values: _Lo | None = None,
    *,
    scale: float = 1.0,
    mask: ArrayLike | None = None,
    causal: _Causal = False,
    return_weights: Literal[True],
    out: _F32 | tuple[_F32 | None, _F32 | None] | None = None,
    num_threads: int | None = None,
    score: _Score = "dot",
    W: ArrayLike | None = None,
    W_q: ArrayLike | None = None,
    v: ArrayLike | None = None,
    keys_proj: ArrayLike | None = None,
    W_k: ArrayLike | None = None,
    return_lse: Literal[False] = False,
    key_offset: int = 0,
    query_offset: int = 0,
    bias: ArrayLike | None = None,
    alibi_slopes: ArrayLike | None = None,
    enable_gqa: bool = False,
    window: _Window | None = None,
    key_lengths: ArrayLike | None = None,
    softcap: float | None = None,
) -> tuple[_F32, _F32]: ...
@overload
def attend(  # type: ignore[overload-overlap, unused-ignore]
    query: ArrayLike,
    keys: ArrayLike,
    values: ArrayLike | None = None,
    *,
    scale: float = 1.0,
    mask: ArrayLike | None = None,
    causal: _Causal = False,
    return_weights: Literal[False] = False,
    out: _F64 | None = None,
    num_threads: int | None = None,
    score: _Score = "dot",
    W: ArrayLike | None = None,
    W_q: ArrayLike | None = None,
    v: ArrayLike | None = None,
    keys_proj: ArrayLike | None = None,
    W_k: ArrayLike | None = None,
    return_lse: Literal[False] = False,
    key_offset: int = 0,
    query_offset: int = 0,
    bias: ArrayLike | None = None,
    alibi_slopes: ArrayLike | None = None,
    enable_gqa: bool = False,
    window: _Window | None = None,
    key_lengths: ArrayLike | None = None,
    softcap: float | None = None,
) -> _F64: ...
@overload
def attend(  # type: ignore[overload-overlap, unused-ignore]
    query: ArrayLike,
    keys: ArrayLike,
    values: ArrayLike | None = None,
    *,
    scale: float = 1.0,
    mask: ArrayLike | None = None,
    causal: _Causal = False,
    return_weights: Literal[True],
    out: _F64 | tuple[_F64 | None, _F64 | None] | None = None,
    num_threads: int | None = None,
    score: _Score = "dot",
    W: ArrayLike | None = None,
    W_q: ArrayLike | None = None,
    v: ArrayLike | None = None,
    keys_proj: ArrayLike | None = None,
    W_k: ArrayLike | None = None,
    return_lse: Literal[False] = False,
    key_offset: int = 0,
    query_offset: int = 0,
    bias: ArrayLike | None = None,
    alibi_slopes: ArrayLike | None = None,
    enable_gqa: bool = False,
    window: _Window | None = None,
    key_lengths: ArrayLike | None = None,
    softcap: float | None = None,
) -> tuple[_F64, _F64]: ...
@overload
def attend(  # type: ignore[overload-overlap, unused-ignore]
    query: _Lo,
    keys: _Lo,
    values: _Lo | None = None,
    *,
    scale: float = 1.0,
    mask: ArrayLike | None = None,
    causal: _Causal = False,
    return_weights: bool,
    out: _F32 | tuple[_F32 | None, _F32 | None] | None = None,
    num_threads: int | None = None,
    score: _Score = "dot",
    W: ArrayLike | None = None,
    W_q: ArrayLike | None = None,
    v: ArrayLike | None = None,
    keys_proj: ArrayLike | None = None,
    W_k: ArrayLike | None = None,
    return_lse: Literal[False] = False,
    key_offset: int = 0,
    query_offset: int = 0,
    bias: ArrayLike | None = None,
    alibi_slopes: ArrayLike | None = None,
    enable_gqa: bool = False,
    window: _Window | None = None,
    key_lengths: ArrayLike | None = None,
    softcap: float | None = None,
) -> _F32 | tuple[_F32, _F32]: ...
@overload
def attend(
    query: ArrayLike,
    keys: ArrayLike,
    values: ArrayLike | None = None,
    *,
    scale: float = 1.0,
    mask: ArrayLike | None = None,
    causal: _Causal = False,
    return_weights: bool,
    out: _F64 | tuple[_F64 | None, _F64 | None] | None = None,
    num_threads: int | None = None,
    score: _Score = "dot",
    W: ArrayLike | None = None,
    W_q: ArrayLike | None = None,
    v: ArrayLike | None = None,
    keys_proj: ArrayLike | None = None,
    W_k: ArrayLike | None = None,
    return_lse: Literal[False] = False,
    key_offset: int = 0,
    query_offset: int = 0,
    bias: ArrayLike | None = None,
    alibi_slopes: ArrayLike | None = None,
    enable_gqa: bool = False,
    window: _Window | None = None,
    key_lengths: ArrayLike | None = None,
    softcap: float | None = None,
) -> _F64 | tuple[_F64, _F64]: ...
@overload
def attend(
    query: ArrayLike,
    keys: ArrayLike,
    values: ArrayLike | None = None,
    *,
    scale: float = 1.0,
    mask: ArrayLike | None = None,
    causal: _Causal = False,
    return_weights: bool = False,
    out: NDArray[Any] | tuple[NDArray[Any] | None, ...] | None = None,
    num_threads: int | None = None,
    score: _Score = "dot",
    W: ArrayLike | None = None,
    W_q: ArrayLike | None = None,
    v: ArrayLike | None = None,
    keys_proj: ArrayLike | None = None,
    W_k: ArrayLike | None = None,
    return_lse: Literal[True],
    key_offset: int = 0,
    query_offset: int = 0,
    bias: ArrayLike | None = None,
    alibi_slopes: ArrayLike | None = None,
    enable_gqa: bool = False,
    window: _Window | None = None,
    key_lengths: ArrayLike | None = None,
    softcap: float | None = None,
) -> tuple[NDArray[Any], ...]: ...
def attend_backward(
    grad_out: ArrayLike,
    query: ArrayLike,
    keys: ArrayLike,
    values: ArrayLike | None,
    out: ArrayLike,
    lse: ArrayLike,
    *,
    scale: float = 1.0,
    mask: ArrayLike | None = None,
    causal: _Causal = False,
    key_offset: int = 0,
    query_offset: int = 0,
    num_threads: int | None = None,
    bias: ArrayLike | None = None,
    alibi_slopes: ArrayLike | None = None,
    enable_gqa: bool = False,
    window: _Window | None = None,
    key_lengths: ArrayLike | None = None,
    softcap: float | None = None,
    grad_bias: bool = False,
) -> tuple[NDArray[Any], ...]: ...
@overload
def attend_varlen(  # type: ignore[overload-overlap, unused-ignore]
    query: _Lo,
    keys: _Lo,
    values: _Lo,
    cu_seqlens_q: ArrayLike,
    cu_seqlens_k: ArrayLike,
    *,
    scale: float = 1.0,
    causal: _Causal = False,
    window: _Window | None = None,
    alibi_slopes: ArrayLike | None = None,
    softcap: float | None = None,
    enable_gqa: bool = False,
    return_lse: Literal[False] = False,
    out: _F32 | None = None,
    num_threads: int | None = None,
) -> _F32: ...
@overload
def attend_varlen(
    query: ArrayLike,
    keys: ArrayLike,
    values: ArrayLike,
    cu_seqlens_q: ArrayLike,
    cu_seqlens_k: ArrayLike,
    *,
    scale: float = 1.0,
    causal: _Causal = False,
    window: _Window | None = None,
    alibi_slopes: ArrayLike | None = None,
    softcap: float | None = None,
    enable_gqa: bool = False,
    return_lse: Literal[False] = False,
    out: _F64 | None = None,
    num_threads: int | None = None,
) -> _F64: ...
@overload
def attend_varlen(
    query: ArrayLike,
    keys: ArrayLike,
    values: ArrayLike,
    cu_seqlens_q: ArrayLike,
    cu_seqlens_k: ArrayLike,
    *,
    scale: float = 1.0,
    causal: _Causal = False,
    window: _Window | None = None,
    alibi_slopes: ArrayLike | None = None,
    softcap: float | None = None,
    enable_gqa: bool = False,
    return_lse: Literal[True],
    out: NDArray[Any] | tuple[NDArray[Any] | None, NDArray[Any] | None] | None = None,
    num_threads: int | None = None,
) -> tuple[NDArray[Any], NDArray[Any]]: ...
def attend_varlen_backward(
    grad_out: ArrayLike,
    query: ArrayLike,
    keys: ArrayLike,
    values: ArrayLike,
    out: ArrayLike,
    lse: ArrayLike,
    cu_seqlens_q: ArrayLike,
    cu_seqlens_k: ArrayLike,
    *,
    scale: float = 1.0,
    causal: _Causal = False,
    window: _Window | None = None,
    alibi_slopes: ArrayLike | None = None,
    softcap: float | None = None,
    enable_gqa: bool = False,
    num_threads: int | None = None,
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]: ...
def merge_attention(
    outs: ArrayLike | Sequence[ArrayLike],
    lses: ArrayLike | Sequence[ArrayLike],
    *,
    out: NDArray[Any] | tuple[NDArray[Any] | None, NDArray[Any] | None] | None = None,
) -> tuple[NDArray[Any], NDArray[Any]]: ...
@overload
def general_score(  # type: ignore[overload-overlap, unused-ignore]
    query: _Lo,
    keys: _Lo,
    W: _Lo,
    *,
    scale: float = 1.0,
    out: _F32 | None = None,
    num_threads: int | None = None,
) -> _F32: ...
@overload
def general_score(
    query: ArrayLike,
    keys: ArrayLike,
    W: ArrayLike,
    *,
    scale: float = 1.0,
    out: _F64 | None = None,
    num_threads: int | None = None,
) -> _F64: ...
def project_keys(keys: ArrayLike, W_k: ArrayLike) -> _F64: ...
def additive_score(
    query: ArrayLike,
    keys_proj: ArrayLike,
    W_q: ArrayLike,
    v: ArrayLike,
    *,
    out: _F64 | None = None,
    num_threads: int | None = None,
) -> _F64: ...

# a KVCache stores and computes in one dtype, chosen by dtype= (float64 by
# default): KVCache[np.float32] types its keys, values and results as float32
_S = TypeVar("_S", np.float64, np.float32)
_F32Spec = type[np.float32] | np.dtype[np.float32] | Literal["float32", "f4", "<f4", "single"]
_F64Spec = type[np.float64] | type[float] | np.dtype[np.float64] | Literal[
    "float64", "f8", "<f8", "double", "float"]

@disjoint_base
class KVCache(Generic[_S]):
    d: int
    dv: int
    length: int
    capacity: int
    shared: bool
    dtype: np.dtype[_S]
    @overload
    def __init__(
        self: KVCache[np.float64], d: int, dv: int | None = None, *, capacity: int = 64,
        dtype: _F64Spec = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: KVCache[np.float32], d: int, dv: int | None = None, *, capacity: int = 64,
        dtype: _F32Spec,
    ) -> None: ...
    def __class_getitem__(cls, item: Any) -> Any: ...
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __len__(self) -> int: ...
    @property
    def keys(self) -> NDArray[_S]: ...
    @property
    def values(self) -> NDArray[_S]: ...
    def reserve(self, n: int) -> None: ...
    def append(self, k: ArrayLike, v: ArrayLike | None = None) -> None: ...
    def extend(self, keys: ArrayLike, values: ArrayLike | None = None) -> None: ...
    def clear(self) -> None: ...
    @overload
    def attend(  # type: ignore[overload-overlap, unused-ignore]
        self,
        query: ArrayLike,
        *,
        scale: float = 1.0,
        out: NDArray[_S] | None = None,
        return_weights: Literal[False] = False,
        num_threads: int | None = None,
    ) -> NDArray[_S]: ...
    @overload
    def attend(  # type: ignore[overload-overlap, unused-ignore]
        self,
        query: ArrayLike,
        *,
        scale: float = 1.0,
        out: NDArray[_S] | tuple[NDArray[_S] | None, NDArray[_S] | None] | None = None,
        return_weights: Literal[True],
        num_threads: int | None = None,
    ) -> tuple[NDArray[_S], NDArray[_S]]: ...
    @overload
    def attend(
        self,
        query: ArrayLike,
        *,
        scale: float = 1.0,
        out: NDArray[_S] | tuple[NDArray[_S] | None, NDArray[_S] | None] | None = None,
        return_weights: bool,
        num_threads: int | None = None,
    ) -> NDArray[_S] | tuple[NDArray[_S], NDArray[_S]]: ...
