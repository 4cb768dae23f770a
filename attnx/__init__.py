"""attnx: fast, numerically stable dot-product attention for NumPy, in
float64 and float32 (float32 and float16 inputs compute in float32, every
other real input in float64).

    >>> import numpy as np, attnx
    >>> q = np.array([5., 1., 20.])
    >>> annotations = np.array([[3, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]])
    >>> print(attnx.attend(q, annotations).round(8))
    [ 3.88079708  4.0728263  45.26423912]

NumPy API:
    attend          fused attention, softmax(scale * keys @ query) @ values
    attend_varlen   attention over sequences of different lengths, packed (flash-attn)
    merge_attention combine attention over disjoint chunks of keys (return_lse)
    attend_backward gradients of attend (flash backward, O(T) memory)
    attend_varlen_backward  gradients of attend_varlen
    dot_score       the scores, scale * keys @ query
    general_score   Luong's general score, query^T W key
    additive_score  Bahdanau's additive score, v^T tanh(W_q query + keys_proj)
    project_keys    keys_proj = keys @ W_k.T, once per sequence
    softmax         stable softmax (default axis -1, unlike SciPy's None)
    log_softmax     its logarithm, accurate where softmax underflows
    context         weighted sum of value rows
    KVCache         a decoding loop's keys and values, appended in place

Build and machine:
    simd_level, simd_available   kernels in use / on offer (ATTNX_SIMD forces one)
    max_threads, build_info      threads a call may use; compiler and flags
    get_include                  headers for C extensions (attnx_capi.h);
                                 Cython: cimport attnx.kernels

Command line: python -m attnx (or attnx) demo | info | bench, --version.
"""
import os as _os
import warnings as _warnings

from ._version import __version__


def _use_installed_build() -> None:
    """In a source checkout, `python -m attnx ...` from the repository root
    puts the tree first on sys.path, and the tree has no compiled modules.
    Then take them from the installed attnx (the README's `pip install .`):
    this package's __path__ gains the installed package's directory."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    import sys
    for entry in sys.path:
        cand = _os.path.join(_os.path.abspath(entry or _os.curdir), "attnx")
        if _os.path.realpath(cand) == _os.path.realpath(here):
            continue
        if any(name.startswith("kernels.") and name.endswith((".so", ".pyd"))
               for name in (_os.listdir(cand) if _os.path.isdir(cand) else ())):
            __path__.append(cand)
            return
    raise ImportError(
        "attnx's compiled modules are missing: this is a source tree that was not built. "
        "Install it (pip install .) and run from another directory, or keep the repository "
        "root off sys.path (python -P, or plain pytest)")


try:
    from . import kernels  # noqa: F401  (the compiled core)
except ImportError:
    _use_installed_build()

from .kernels import _C_API, build_info, max_threads, simd_available, simd_level
from ._core import (KVCache, additive_score, attend, attend_backward, attend_varlen,
                    attend_varlen_backward, context, dot_score, general_score, log_softmax,
                    merge_attention, project_keys, softmax)

__all__ = [
    "__version__",
    "KVCache",
    "attend",
    "attend_varlen",
    "merge_attention",
    "attend_backward",
    "attend_varlen_backward",
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
    for d in __path__:          # the installed package's, also from a source tree
        inc = _os.path.join(d, "include")
        if _os.path.isfile(_os.path.join(inc, "attnx.h")):
            return inc
    return _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "include")


def _check_simd_env() -> None:
    # the C side matches ATTNX_SIMD exactly (no stripping); "best" is the default
    wanted = _os.environ.get("ATTNX_SIMD", "")
    if wanted and wanted != "best" and wanted != simd_level():
        _warnings.warn(
            f"ATTNX_SIMD={wanted!r} is not one of the levels this CPU and build offer "
            f"({', '.join(simd_available())}); using {simd_level()!r}",
            RuntimeWarning,
            stacklevel=2,
        )


_check_simd_env()
