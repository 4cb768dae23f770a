"""attnx: fast, numerically stable dot-product attention on float64.

    >>> import numpy as np, attnx
    >>> q = np.array([5., 1., 20.])
    >>> annotations = np.array([[3, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]])
    >>> print(attnx.attend(q, annotations).round(8))
    [ 3.88079708  4.0728263  45.26423912]

Functions: dot_score, softmax, context, attend (NumPy API); simd_level and
get_include (for C and Cython users, with attnx.kernels and attnx_capi.h).
"""
import os as _os
import warnings as _warnings

from ._version import __version__
from .kernels import _C_API, build_info, max_threads, simd_available, simd_level
from ._core import (KVCache, additive_score, attend, context, dot_score, general_score,
                    log_softmax, project_keys, softmax)

__all__ = [
    "__version__",
    "KVCache",
    "attend",
    "context",
    "dot_score",
    "general_score",
    "additive_score",
    "project_keys",
    "log_softmax",
    "softmax",
    "get_include",
    "simd_level",
    "simd_available",
    "build_info",
    "max_threads",
]


def get_include() -> str:
    """Directory holding ``attnx.h`` and ``attnx_capi.h``.

    Add it to the include path of a C extension that calls attnx through its
    capsule (``#include "attnx_capi.h"`` and ``import_attnx()``). Cython code
    needs no include path: ``cimport attnx.kernels``.

    Examples
    --------
    >>> import os, attnx
    >>> os.path.exists(os.path.join(attnx.get_include(), "attnx.h"))
    True
    """
    return _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "include")


def _check_simd_env() -> None:
    wanted = _os.environ.get("ATTNX_SIMD", "").strip()
    if wanted and wanted != simd_level():
        _warnings.warn(
            f"ATTNX_SIMD={wanted!r} is not available here (this CPU and build offer "
            f"{', '.join(simd_available())}); using {simd_level()!r}",
            RuntimeWarning,
            stacklevel=2,
        )


_check_simd_env()
