# cython: language_level=3, cdivision=True
# cython: embedsignature=True, embedsignature.format=python
"""NumPy API of attnx: dot_score, softmax, context, attend.

Each function first tries a fast path (float64 or float32, C-contiguous,
aligned inputs of the plain shapes; no Python-level validation layers), and
otherwise takes
the general path: convert array_likes once, check shapes with messages that
name both shapes, broadcast the leading dimensions as numpy.matmul does (with
zero strides, never copies), and call the batched C entry point.
"""

cimport cython
cimport numpy as cnp
from cpython.pystate cimport PyThreadState
from libc.stdint cimport uintptr_t
from libc.math cimport INFINITY, isfinite, isinf
from libc.string cimport memcpy, memset

cimport attnx.kernels as ak

import inspect
import numbers
import operator
import sys
import types

import numpy as np

try:
    from numpy.exceptions import AxisError
    from numpy.lib.array_utils import normalize_axis_tuple
except ImportError:  # NumPy < 2.0
    from numpy import AxisError
    from numpy.core.numeric import normalize_axis_tuple

cnp.import_array()

cdef extern from "Python.h":
    PyThreadState *PyEval_SaveThread() nogil
    void PyEval_RestoreThread(PyThreadState *) nogil

cdef extern from *:
    """
    #if defined(Py_GIL_DISABLED)
    #define ATTNX_FREE_THREADED 1
    #else
    #define ATTNX_FREE_THREADED 0
    #endif
    """
    # With the GIL, a run of attribute reads that calls no Python code is
    # atomic; without it (3.13t+), such a snapshot needs a lock.
    const bint ATTNX_FREE_THREADED

cdef enum:
    # Multiply-adds above which a call releases the GIL (releasing and
    # re-taking it costs about 100 ns, the whole of a tiny call).
    NOGIL_WORK = 4096
    # Above this a single query goes through the batched entry point, which
    # may split the keys across threads.
    SERIAL_WORK = 1 << 18
    # From this many keys the batched entry point splits a few query rows
    # into fixed partitions (csrc/attnx.h, split-K): the fast paths, which
    # call the unsplit single-query kernel, stay below it so that every
    # path gives the same bits.
    SPLIT_MIN_KEYS = 8192

cdef int _IN_FLAGS = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
cdef int _OUT_FLAGS = _IN_FLAGS | cnp.NPY_ARRAY_WRITEABLE


# --- checks and conversions ---------------------------------------------------

cdef inline PyThreadState *_release_gil(bint cond) noexcept:
    """Release the GIL when `cond` (work worth more than the release costs)."""
    if cond:
        return PyEval_SaveThread()
    return NULL


cdef inline void _reacquire_gil(PyThreadState *ts) noexcept:
    if ts != NULL:
        PyEval_RestoreThread(ts)


cdef inline bint _is_type(object a, int typenum, int flags) noexcept:
    """a is a native-endian ndarray of `typenum` with all of `flags`."""
    if not cnp.PyArray_Check(a):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum
            and (cnp.PyArray_FLAGS(arr) & flags) == flags
            and cnp.PyArray_ISNOTSWAPPED(arr))


cdef inline void *_data(object a) noexcept:
    """The data pointer of an ndarray, taken while the GIL is held: code
    between _release_gil and _reacquire_gil must touch no Python object."""
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline bint _is_f64(object a, int flags) noexcept:
    return _is_type(a, cnp.NPY_DOUBLE, flags)


cdef inline int _fast_type(object a, object b, object c) noexcept:
    """NPY_DOUBLE or NPY_FLOAT when every argument (c may be None) is an
    aligned, C-contiguous, native array of that one float type, else -1:
    the condition for a fast path."""
    if not cnp.PyArray_Check(a):
        return -1
    cdef int tn = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if tn != cnp.NPY_DOUBLE and tn != cnp.NPY_FLOAT:
        return -1
    if not (_is_type(a, tn, _IN_FLAGS) and _is_type(b, tn, _IN_FLAGS)):
        return -1
    if c is not None and not _is_type(c, tn, _IN_FLAGS):
        return -1
    return tn


cdef inline object _fast_out(object out, cnp.npy_intp n, int tn):
    """A new 1-D result of n elements of `tn`, or `out` when it fits exactly;
    None when it does not (the general path then says why)."""
    cdef cnp.npy_intp dim = n
    if out is None:
        return cnp.PyArray_EMPTY(1, &dim, tn, 0)
    if (_is_type(out, tn, _OUT_FLAGS) and cnp.PyArray_NDIM(<cnp.ndarray>out) == 1
            and cnp.PyArray_DIMS(<cnp.ndarray>out)[0] == n):
        return out
    return None


cdef inline double *_dptr(cnp.ndarray a) noexcept:
    return <double *>cnp.PyArray_DATA(a)


cdef inline float *_fptr(cnp.ndarray a) noexcept:
    return <float *>cnp.PyArray_DATA(a)


_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)


cdef object _work_dtype(tuple inputs):
    """float32 when NumPy would compute these inputs in float32 (every one an
    ndarray or NumPy scalar whose common type is float32 or float16), else
    float64."""
    dts = []
    for a in inputs:
        if a is None:
            continue
        if cnp.PyArray_Check(a):
            dt = (<cnp.ndarray>a).dtype
        elif isinstance(a, np.generic):      # a NumPy scalar has its dtype, as an array
            dt = a.dtype
        else:
            return _FLOAT64
        if dt.kind not in "biuf":
            # datetime, complex, object, str...: refused by the caller's
            # per-argument check, whose error names the argument
            # (np.result_type would raise first, naming none)
            return _FLOAT64
        dts.append(dt)
    if not dts:
        return _FLOAT64
    r = np.result_type(*dts)
    return _FLOAT32 if r.kind == "f" and r.itemsize <= 4 else _FLOAT64


cdef object _asarray(object x, str name):
    """np.asarray(x), with an error that names the argument when x is not a
    rectangular array (a ragged nested list, say)."""
    try:
        return np.asarray(x)
    except ValueError as e:
        raise ValueError(f"{name} is not a rectangular array of numbers "
                         f"(a ragged nested list?): {e}") from None


cdef object _as_real(object x, str name, object dtype):
    """x as a C-contiguous array of `dtype` (float32 or float64)."""
    if dtype is _FLOAT64:
        return _as_f64(x, name)
    arr = x if cnp.PyArray_Check(x) else _asarray(x, name)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (bool, integer or float), "
                        f"got dtype {arr.dtype}")
    return _narrowed(arr, name, dtype)


cdef object _as_f64(object x, str name):
    """x as a C-contiguous float64 array: x itself when it already is one,
    else one converted copy. Real numbers only (bool, int, uint, float)."""
    if _is_f64(x, _IN_FLAGS):
        return x
    arr = x if cnp.PyArray_Check(x) else _asarray(x, name)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (bool, integer or float), "
                        f"got dtype {arr.dtype}")
    return _narrowed(arr, name, _FLOAT64)


cdef object _as_forward_result(object x, str name, object dtype):
    """x, a result of the forward passed back to a backward (its `out` or
    `lse`), as a C-contiguous array of the work `dtype`, which the backward's
    grad_out, query, keys and values decide, as the forward's query, keys and
    values did. It must be real floating, as the forward returned it: an
    integer lse (a truncated copy) would give wrong gradients, silently. A
    float of another precision is converted to `dtype`."""
    arr = x if cnp.PyArray_Check(x) else _asarray(x, name)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a real floating array, as the forward returned it, "
                        f"got dtype {arr.dtype}")
    return _narrowed(arr, name, dtype)


cdef object _narrowed(object arr, str name, object dtype):
    """arr converted to dtype, C-contiguous. A wider float (long double) is
    rounded to dtype, as NumPy's casts do, but a finite value beyond dtype's
    range is an error: it would become inf and the result NaN, silently."""
    res = np.asarray(arr, dtype=dtype, order="C")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > res.dtype.itemsize and res.size:
        with np.errstate(over="ignore", invalid="ignore"):
            lost = np.isinf(res) & np.isfinite(arr)
        if lost.any():
            raise ValueError(
                f"{name} holds {arr.dtype} values beyond the range of {res.dtype} "
                f"(e.g. {arr[lost].flat[0]!r}), which attnx computes in; scale them first")
    return res


cdef double _as_scale(object scale) except? -1.0:
    """`scale` as a C double, or a TypeError that names it (Cython's own
    conversion says only "must be real number, not str")."""
    if isinstance(scale, float):        # a NumPy float64 too: holds its value exactly
        return <double>scale
    if cnp.PyArray_Check(scale):
        arr = <object>scale
        if arr.ndim == 0 and arr.dtype.kind in "biuf":
            return _finite_double(arr[()], "scale")
        raise TypeError(f"scale must be a real number (one float), got an array of shape "
                        f"{arr.shape} and dtype {arr.dtype}")
    if isinstance(scale, (numbers.Real, np.bool_)):    # bools as NumPy takes them: 0, 1
        return _finite_double(scale, "scale")
    raise TypeError(f"scale must be a real number (one float), got "
                    f"{type(scale).__name__} {scale!r}")


cdef inline double _finite_double(object x, str name) except? -1.0:
    """float(x), or a ValueError naming `name` when x is finite and float64
    cannot hold it (an int past 1.8e308, a long double like 1e4000): it
    would become inf, and the result NaN. C-level: on attend's per-call
    path for a NumPy or integer scale, the checks cost only an inf."""
    cdef double v
    try:
        v = float(x)
    except OverflowError:
        v = INFINITY
    if (v == INFINITY or v == -INFINITY) and not (isinstance(x, (float, np.floating)) and np.isinf(x)):
        raise ValueError(f"{name} is beyond float64's range, which attnx computes in: got {x!r}")
    return v


cdef int _scale_beyond_f32(double sc) except -1:
    raise ValueError(f"scale is beyond float32's range, which attnx computes in for float32 "
                     f"inputs: got {sc!r} (it would become inf, and the result NaN); pass "
                     f"float64 inputs, or a smaller scale")


cdef inline float _f32_scale(double sc) except? -1.0:
    """sc rounded to float32, for float32 work; a finite sc that rounds to
    inf is a ValueError naming scale (the rule of _narrowed and
    _finite_double: every result would be NaN, silently). C-level: on the
    fast paths' per-call cost, one compare. Call it with the GIL held."""
    cdef float f = <float>sc
    if isinf(f) and isfinite(sc):
        _scale_beyond_f32(sc)
    return f


cdef int _raise_status(int rc) except -1:
    msg = ak.strerror(rc).decode()
    if rc == ak.ERR_NOMEM:
        raise MemoryError(msg)
    if rc == ak.ERR_NULL:
        raise RuntimeError(f"attnx internal error: {msg}")
    if rc == ak.ERR_OVERLAP:
        raise ValueError("out shares memory with an input; pass a separate array")
    raise ValueError(msg)


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Byte ranges of a and b overlap (for contiguous arrays: they share memory)."""
    cdef uintptr_t a0 = <uintptr_t>cnp.PyArray_DATA(a)
    cdef uintptr_t b0 = <uintptr_t>cnp.PyArray_DATA(b)
    cdef size_t na = <size_t>cnp.PyArray_NBYTES(a)
    cdef size_t nb = <size_t>cnp.PyArray_NBYTES(b)
    return na != 0 and nb != 0 and a0 < b0 + nb and b0 < a0 + na


cdef object _result(object out, tuple shape, list inputs, object dtype=_FLOAT64):
    """`out` checked against the result's shape and dtype (and for memory
    shared with an input), or a new array of that shape."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not cnp.PyArray_Check(out):
        raise ValueError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype or not cnp.PyArray_ISNOTSWAPPED(out):
        raise ValueError(f"out must have dtype {dtype} (native byte order), the result's, "
                         f"got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape} but the result has shape {shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    if not out.flags.aligned:
        raise ValueError("out must be aligned")
    for a in inputs:
        if a is None:
            continue
        if (_overlap(<cnp.ndarray>out, <cnp.ndarray>a)
                if a.dtype.kind == "f" and a.flags.c_contiguous
                else np.may_share_memory(out, a)):
            raise ValueError("out shares memory with an input; pass a separate array")
    return out


cdef object _integer(object x, str name, str what):
    """x as a Python int (operator.index), or a TypeError naming it (a bool
    too: KVCache(True) is a mistake, not d=1)."""
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be {what}, got {x!r}")
    try:
        return operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be {what}, got {type(x).__name__} {x!r}") from None


cdef object _size(object x, str name, str what):
    """x as a Python int (_integer's rules) that a Py_ssize_t holds, or a
    ValueError naming it (Cython's own conversion says only "Python int too
    large to convert to C ssize_t"): a size no buffer can have."""
    n = _integer(x, name, what)
    if n > sys.maxsize:
        raise ValueError(f"{name} must be at most {sys.maxsize} (no buffer holds more), got {n}")
    if n < -sys.maxsize - 1:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


cdef bint _flag(object x, str name) except -1:
    """x's truth value, as ``if x:`` takes it, for a boolean option; a
    TypeError naming the option where x has none (a multi-element array:
    NumPy's "truth value of an array ... is ambiguous" named nothing)."""
    if x is True:
        return True
    if x is False or x is None:
        return False
    try:
        return bool(x)
    except (ValueError, TypeError):
        got = (f"an array of shape {x.shape}" if cnp.PyArray_Check(x)
               else f"{type(x).__name__} {x!r}")
        raise TypeError(f"{name} must be a bool, got {got}") from None


cdef int _threads(object num_threads) except -1:
    if num_threads is None:
        return 0
    n = _integer(num_threads, "num_threads", "a positive integer or None")   # bools refused there
    if n < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    return min(n, 1 << 30)     # more than there are: as many as there are


def _axes(axis, Py_ssize_t ndim):
    """axis (None, an integer or a tuple of integers) as a tuple of axes in
    [0, ndim): NumPy's normalize_axis_tuple, with the types NumPy's
    reductions refuse (a bool, a list) refused too, and an integer too large
    for a C long an AxisError like any other out-of-range axis."""
    if axis is None:
        return tuple(range(ndim))
    for a in (axis if type(axis) is tuple else (axis,)):
        if isinstance(a, (bool, np.bool_)) or not hasattr(a, "__index__"):
            raise TypeError(f"axis must be an integer, a tuple of integers or None, got {axis!r}")
    try:
        return normalize_axis_tuple(axis, ndim)
    except OverflowError:
        raise AxisError(f"axis {axis!r} is out of bounds for array of dimension {ndim}") from None


cdef tuple _broadcast_batch(list operands):
    """Broadcast the leading (batch) dimensions of (array, n_core_dims, name)
    operands; the error names every shape involved."""
    shapes = [a.shape[:a.ndim - core] for a, core, _ in operands]
    if max(len(sh) for sh in shapes) > ak.MAX_BATCH_DIMS:
        raise ValueError(f"at most {ak.MAX_BATCH_DIMS} leading (batch) dimensions are "
                         f"supported, got {max(len(sh) for sh in shapes)}")
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        desc = ", ".join(f"{name} {a.shape}" for a, _, name in operands)
        raise ValueError(f"leading (batch) dimensions do not broadcast: {desc}") from None


cdef int _fill_strides(object a, int core, Py_ssize_t itemsize, tuple batch,
                       ptrdiff_t *out) except -1:
    """Element strides of a's batch dimensions, right-aligned to `batch`; 0
    where a is broadcast."""
    cdef Py_ssize_t nb = len(batch), na = a.ndim - core, off = nb - na, i
    for i in range(nb):
        out[i] = 0
    for i in range(na):
        if a.shape[i] != 1:
            out[off + i] = a.strides[i] // itemsize
    return 0


# --- dot_score ------------------------------------------------------------------

def dot_score(query, keys, *, scale=1.0, out=None, num_threads=None):
    """Dot-product attention scores, ``scale * keys @ query``.

    Parameters
    ----------
    query : array_like, shape (d,) or (..., Lq, d)
        One query vector, or Lq query rows with any leading dimensions.
    keys : array_like, shape (..., T, d)
        T key rows. Leading dimensions broadcast against the query's as in
        `numpy.matmul`.
    scale : float, optional
        Factor applied to every dot product. ``1.0`` is Luong's dot score;
        ``1/sqrt(d)`` gives scaled dot-product attention.
    out : ndarray, optional
        C-contiguous, writeable array of exactly the result's shape and dtype;
        filled and returned, with no allocation. Must not share memory with
        the inputs.
    num_threads : int, optional
        Threads for batched input (default: `attnx.max_threads()`).

    Returns
    -------
    scores : ndarray, shape (..., T) or (..., Lq, T)
        float32 when NumPy would compute the inputs in float32 (float32 or
        float16 arrays), else float64; bool, integer and other float inputs
        are converted once.

    Raises
    ------
    TypeError
        For complex, object or string input.
    ValueError
        When shapes do not match (the message names both) or `out` is unfit.

    Examples
    --------
    The worked example: a decoder state scored against four annotations.

    >>> import numpy as np, attnx
    >>> q = np.array([5., 1., 20.])
    >>> keys = np.array([[3, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]])
    >>> print(attnx.dot_score(q, keys))
    [927. 397. 148. 929.]
    """
    cdef cnp.ndarray q, K
    cdef size_t T, d
    cdef int rc
    cdef PyThreadState *ts
    cdef double sc = _as_scale(scale)
    cdef float sc32 = 0
    cdef int tn = _fast_type(query, keys, None) if num_threads is None else -1
    if tn >= 0:
        q = <cnp.ndarray>query
        K = <cnp.ndarray>keys
        if cnp.PyArray_NDIM(q) == 1 and cnp.PyArray_NDIM(K) == 2:
            d = <size_t>cnp.PyArray_DIMS(q)[0]
            T = <size_t>cnp.PyArray_DIMS(K)[0]
            res = _fast_out(out, <cnp.npy_intp>T, tn) if cnp.PyArray_DIMS(K)[1] == d else None
            if res is not None:
                if tn == cnp.NPY_FLOAT:
                    sc32 = _f32_scale(sc)
                ts = _release_gil(T * (d + 1) >= NOGIL_WORK)
                if tn == cnp.NPY_DOUBLE:
                    rc = ak.dot_scores(_dptr(q), _dptr(K), T, d, sc, _dptr(<cnp.ndarray>res))
                else:
                    rc = ak.dot_scores_f32(_fptr(q), _fptr(K), T, d, sc32,
                                           _fptr(<cnp.ndarray>res))
                _reacquire_gil(ts)
                if rc != 0:
                    _raise_status(rc)
                return res
    return _dot_score_general(query, keys, sc, out, num_threads)


def _dot_score_general(query, keys, double scale, out, num_threads):
    dt = _work_dtype((query, keys))
    q = _as_real(query, "query", dt)
    K = _as_real(keys, "keys", dt)
    if q.ndim < 1:
        raise ValueError(f"query must have shape (d,) or (..., Lq, d), got shape {q.shape}")
    if K.ndim < 2:
        raise ValueError(f"keys must have shape (..., T, d), got shape {K.shape}")
    if q.shape[-1] != K.shape[-1]:
        raise ValueError(f"query has shape {q.shape} but keys has shape {K.shape}: "
                         f"the last dimension (d) must match")
    single = q.ndim == 1
    d, T = q.shape[-1], K.shape[-2]
    Lq = 1 if single else q.shape[-2]
    batch = _broadcast_batch([(q, 1 if single else 2, "query"), (K, 2, "keys")])
    shape = batch + ((T,) if single else (Lq, T))
    res = _result(out, shape, [q, K], dt)
    cdef int nt = _threads(num_threads)
    cdef size_t bshape[32]
    cdef ptrdiff_t qs[32]
    cdef ptrdiff_t ks[32]
    cdef size_t nb = len(batch), i
    cdef Py_ssize_t isz = dt.itemsize
    for i in range(nb):
        bshape[i] = batch[i]
    _fill_strides(q, 1 if single else 2, isz, batch, qs)
    _fill_strides(K, 2, isz, batch, ks)
    cdef int rc
    cdef bint f32 = dt is _FLOAT32
    cdef void *qp = _data(q)
    cdef void *kp = _data(K)
    cdef void *rp = _data(res)
    cdef size_t cLq = Lq, cT = T, cd = d
    cdef float sc32 = _f32_scale(scale) if f32 else 0
    cdef PyThreadState *ts = _release_gil(res.size * (d + 1) >= NOGIL_WORK)
    if f32:
        rc = ak.dot_scores_batch_f32(<float *>qp, <float *>kp, nb, bshape, qs, ks, cLq, cT, cd,
                                     sc32, <float *>rp, nt)
    else:
        rc = ak.dot_scores_batch(<double *>qp, <double *>kp, nb, bshape, qs, ks, cLq, cT, cd,
                                 scale, <double *>rp, nt)
    _reacquire_gil(ts)
    if rc != 0:
        _raise_status(rc)
    return res


# --- softmax --------------------------------------------------------------------

def softmax(x, axis=-1, *, out=None, num_threads=None):
    """Numerically stable softmax, ``exp(x - max) / sum(exp(x - max))``.

    Parameters
    ----------
    x : array_like
        Real input of any shape.
    axis : int, tuple of ints or None, optional
        Axis or axes to normalise over (jointly); None means all elements.
        The default is the last axis (-1), as for attention weights, which
        differs from `scipy.special.softmax`, whose default is None: on 2-D
        input ``softmax(x)`` normalises each row, SciPy's ``softmax(x)`` the
        whole array. Pass the axis explicitly when porting SciPy code.
    out : ndarray, optional
        C-contiguous, writeable array of x's shape and of the result's dtype.
        It may be `x`
        itself (in place), but must not otherwise share memory with it.
    num_threads : int, optional
        Threads for many rows (default: `attnx.max_threads()`).

    Returns
    -------
    ndarray
        Same shape as x; float32 for float32/float16 input, else float64 (a
        numpy scalar for 0-d input with
        ``axis=None``).

    Notes
    -----
    The maximum is subtracted with an exact two-sum whose low part is folded
    into the exponential, and the sum is compensated, so every weight is within
    a few ulp of the correctly rounded value, even when x spans a range of
    1000; scores up to +-1e308 never overflow. ``-inf`` entries get weight 0.
    A slice containing NaN is all NaN; a slice containing ``+inf`` is NaN
    (inf - inf); an all ``-inf`` slice is NaN, as in SciPy. An empty axis
    gives an empty result.

    Raises
    ------
    numpy.exceptions.AxisError
        For an axis out of range.
    TypeError
        For complex, object or string input.

    Examples
    --------
    Where ``exp(x) / exp(x).sum()`` overflows to NaN:

    >>> import attnx
    >>> print(attnx.softmax([927., 397., 148., 929.]))
    [1.19202922e-001 7.94715151e-232 0.00000000e+000 8.80797078e-001]
    """
    cdef cnp.ndarray a, res
    cdef cnp.npy_intp n, total
    cdef int rc
    cdef PyThreadState *ts
    cdef int tn = _fast_type(x, x, None) if num_threads is None and type(axis) is int else -1
    if tn >= 0 and cnp.PyArray_NDIM(<cnp.ndarray>x) >= 1:
        a = <cnp.ndarray>x
        if axis == -1 or axis == cnp.PyArray_NDIM(a) - 1:
            if out is None:
                res = <cnp.ndarray>cnp.PyArray_EMPTY(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a),
                                                     tn, 0)
            elif (_is_type(out, tn, _OUT_FLAGS)
                  and cnp.PyArray_NDIM(<cnp.ndarray>out) == cnp.PyArray_NDIM(a)
                  and cnp.PyArray_SAMESHAPE(<cnp.ndarray>out, a)):
                res = <cnp.ndarray>out    # the C call refuses a partial overlap
            else:
                return _softmax_general(x, axis, out, num_threads)
            total = cnp.PyArray_SIZE(a)
            n = cnp.PyArray_DIMS(a)[cnp.PyArray_NDIM(a) - 1]
            if total == 0:
                return res
            ts = _release_gil(total >= NOGIL_WORK)
            if tn == cnp.NPY_FLOAT:
                rc = ak.softmax_rows_f32(_fptr(a), <size_t>(total // n), <size_t>n, _fptr(res), 0)
            elif total == n:
                rc = ak.softmax(_dptr(a), <size_t>n, _dptr(res))
            else:
                rc = ak.softmax_rows(_dptr(a), <size_t>(total // n), <size_t>n, _dptr(res), 0)
            _reacquire_gil(ts)
            if rc != 0:
                _raise_status(rc)
            return res
    return _softmax_general(x, axis, out, num_threads)


def _softmax_general(x, axis, out, num_threads, bint log=False):
    dt = _work_dtype((x,))
    a = _as_real(x, "x", dt)
    cdef Py_ssize_t nd = a.ndim
    axes = _axes(axis, nd)
    cdef int nt = _threads(num_threads)
    # out may be x itself (in place: the same memory and layout) but must not
    # otherwise share memory with it; a converted copy of x shares nothing.
    same = out is not None and (out is x or (
        cnp.PyArray_Check(out) and cnp.PyArray_DATA(<cnp.ndarray>out) == cnp.PyArray_DATA(<cnp.ndarray>a)
        and out.shape == a.shape))
    res = _result(out, a.shape, [] if same or a is not x else [a], dt)
    if a.size == 0:
        return res
    cdef Py_ssize_t k = len(axes)
    trailing = tuple(sorted(axes)) == tuple(range(nd - k, nd))
    cdef size_t n = 1
    for ax in axes:
        n *= a.shape[ax]
    if trailing:
        src, dst = a, res
    else:
        # move the softmax axes last, normalise rows, move them back
        perm = [i for i in range(nd) if i not in axes] + list(axes)
        src = np.array(a.transpose(perm), order="C", copy=True)   # never a view of x
        dst = src
    cdef size_t rows = <size_t>(a.size // n)
    cdef int rc
    cdef bint f32 = dt is _FLOAT32
    cdef void *sp = _data(src)
    cdef void *dp = _data(dst)
    cdef PyThreadState *ts = _release_gil(rows * n >= NOGIL_WORK)
    if f32 and log:
        rc = ak.log_softmax_rows_f32(<float *>sp, rows, n, <float *>dp, nt)
    elif f32:
        rc = ak.softmax_rows_f32(<float *>sp, rows, n, <float *>dp, nt)
    elif log:
        rc = ak.log_softmax_rows(<double *>sp, rows, n, <double *>dp, nt)
    else:
        rc = ak.softmax_rows(<double *>sp, rows, n, <double *>dp, nt)
    _reacquire_gil(ts)
    if rc != 0:
        _raise_status(rc)
    if not trailing:
        np.copyto(res, dst.transpose(np.argsort(perm)))
    if nd == 0 and out is None:
        return res[()]
    return res


def log_softmax(x, axis=-1, *, out=None, num_threads=None):
    """Logarithm of the softmax, ``(x - max) - log(sum(exp(x - max)))``.

    Parameters
    ----------
    x : array_like
        Real input of any shape.
    axis : int, tuple of ints or None, optional
        Axis or axes to normalise over; None means all elements. The default
        is the last axis (-1), unlike `scipy.special.log_softmax`, whose
        default is None (the whole array).
    out : ndarray, optional
        C-contiguous, writeable array of x's shape and of the result's dtype;
        may be `x` itself.
    num_threads : int, optional
        Threads for many rows (default: `attnx.max_threads()`).

    Returns
    -------
    ndarray
        Same shape as x; float32 for float32/float16 input, else float64.

    Notes
    -----
    Accurate where ``log(softmax(x))`` fails: a score 1000 below the maximum
    has a softmax weight that underflows to 0 (log gives -inf), while its
    log-softmax is finite and computed to full precision. The subtraction of
    the maximum is an exact two-sum; the logarithm is attnx's own. As in
    SciPy: NaN in a slice, or an all ``-inf`` slice, gives NaN; a ``+inf``
    entry gives NaN there and ``-inf`` elsewhere in its slice; other ``-inf``
    entries give ``-inf``.

    Examples
    --------
    >>> import numpy as np, attnx
    >>> print(attnx.log_softmax([0.0, -1000.0]))
    [    0. -1000.]
    >>> with np.errstate(divide="ignore"):
    ...     print(np.log(attnx.softmax([0.0, -1000.0])))
    [  0. -inf]
    """
    cdef cnp.ndarray a, res
    cdef cnp.npy_intp n, total
    cdef int rc
    cdef PyThreadState *ts
    cdef int tn = _fast_type(x, x, None) if num_threads is None and type(axis) is int else -1
    if tn >= 0 and cnp.PyArray_NDIM(<cnp.ndarray>x) >= 1:
        a = <cnp.ndarray>x
        if axis == -1 or axis == cnp.PyArray_NDIM(a) - 1:
            if out is None:
                res = <cnp.ndarray>cnp.PyArray_EMPTY(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a),
                                                     tn, 0)
            elif (_is_type(out, tn, _OUT_FLAGS)
                  and cnp.PyArray_NDIM(<cnp.ndarray>out) == cnp.PyArray_NDIM(a)
                  and cnp.PyArray_SAMESHAPE(<cnp.ndarray>out, a)):
                res = <cnp.ndarray>out    # the C call refuses a partial overlap
            else:
                return _softmax_general(x, axis, out, num_threads, True)
            total = cnp.PyArray_SIZE(a)
            n = cnp.PyArray_DIMS(a)[cnp.PyArray_NDIM(a) - 1]
            if total == 0:
                return res
            ts = _release_gil(total >= NOGIL_WORK)
            if tn == cnp.NPY_FLOAT:
                rc = ak.log_softmax_rows_f32(_fptr(a), <size_t>(total // n), <size_t>n,
                                             _fptr(res), 0)
            else:
                rc = ak.log_softmax_rows(_dptr(a), <size_t>(total // n), <size_t>n, _dptr(res), 0)
            _reacquire_gil(ts)
            if rc != 0:
                _raise_status(rc)
            return res
    return _softmax_general(x, axis, out, num_threads, True)


# --- context --------------------------------------------------------------------

def context(weights, values, *, out=None, num_threads=None):
    """Context vectors, the weighted sums ``sum_t weights[t] * values[t]``.

    Parameters
    ----------
    weights : array_like, shape (T,) or (..., T)
        Attention weights; every leading dimension is a separate set.
    values : array_like, shape (..., T, dv)
        Value rows. The leading dimensions of `weights` (all but the last)
        broadcast against those of `values` (all but the last two).
    out : ndarray, optional
        C-contiguous, writeable array of exactly the result's shape and
        dtype; must not share memory with the inputs.
    num_threads : int, optional
        Threads for batched input (default: `attnx.max_threads()`).

    Returns
    -------
    ndarray, shape (..., dv)
        float32 for float32 inputs, else float64. With ``T == 0`` the context
        is zeros.

    Notes
    -----
    A weight of exactly 0 contributes nothing: its value row is not read, so
    NaN or inf there does not reach the result (unlike ``weights @ values``,
    where 0 * inf is NaN). For batched attention weights of shape
    (..., Lq, T) pair them with ``values[..., None, :, :]``.

    Examples
    --------
    >>> import numpy as np, attnx
    >>> annotations = np.array([[3, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]])
    >>> w = attnx.softmax([927., 397., 148., 929.])
    >>> print(attnx.context(w, annotations).round(8))
    [ 3.88079708  4.0728263  45.26423912]
    """
    cdef cnp.ndarray w, V
    cdef size_t T, dv
    cdef int rc
    cdef PyThreadState *ts
    cdef int tn = _fast_type(weights, values, None) if num_threads is None else -1
    if tn >= 0:
        w = <cnp.ndarray>weights
        V = <cnp.ndarray>values
        if cnp.PyArray_NDIM(w) == 1 and cnp.PyArray_NDIM(V) == 2:
            T = <size_t>cnp.PyArray_DIMS(w)[0]
            dv = <size_t>cnp.PyArray_DIMS(V)[1]
            res = _fast_out(out, <cnp.npy_intp>dv, tn) if cnp.PyArray_DIMS(V)[0] == T else None
            if res is not None:
                ts = _release_gil(T * (dv + 1) >= NOGIL_WORK)
                if tn == cnp.NPY_DOUBLE:
                    rc = ak.context(_dptr(w), _dptr(V), T, dv, _dptr(<cnp.ndarray>res))
                else:
                    rc = ak.context_f32(_fptr(w), _fptr(V), T, dv, _fptr(<cnp.ndarray>res))
                _reacquire_gil(ts)
                if rc != 0:
                    _raise_status(rc)
                return res
    return _context_general(weights, values, out, num_threads)


def _context_general(weights, values, out, num_threads):
    dt = _work_dtype((weights, values))
    w = _as_real(weights, "weights", dt)
    V = _as_real(values, "values", dt)
    if w.ndim < 1:
        raise ValueError(f"weights must have shape (T,) or (..., T), got shape {w.shape}")
    if V.ndim < 2:
        raise ValueError(f"values must have shape (..., T, dv), got shape {V.shape}")
    if w.shape[-1] != V.shape[-2]:
        raise ValueError(f"weights has shape {w.shape} but values has shape {V.shape}: "
                         f"the number of keys (T) must match")
    T, dv = w.shape[-1], V.shape[-1]
    batch = _broadcast_batch([(w, 1, "weights"), (V, 2, "values")])
    res = _result(out, batch + (dv,), [w, V], dt)
    cdef int nt = _threads(num_threads)
    cdef size_t bshape[32]
    cdef ptrdiff_t ws[32]
    cdef ptrdiff_t vs[32]
    cdef size_t nb = len(batch), i
    cdef Py_ssize_t isz = dt.itemsize
    for i in range(nb):
        bshape[i] = batch[i]
    _fill_strides(w, 1, isz, batch, ws)
    _fill_strides(V, 2, isz, batch, vs)
    cdef int rc
    cdef bint f32 = dt is _FLOAT32
    cdef void *wp = _data(w)
    cdef void *vp = _data(V)
    cdef void *rp = _data(res)
    cdef size_t cT = T, cdv = dv
    cdef PyThreadState *ts = _release_gil((res.size + 1) * T >= NOGIL_WORK)
    if f32:
        rc = ak.context_batch_f32(<float *>wp, <float *>vp, nb, bshape, ws, vs, 1, cT, cdv,
                                  <float *>rp, nt)
    else:
        rc = ak.context_batch(<double *>wp, <double *>vp, nb, bshape, ws, vs, 1, cT, cdv,
                              <double *>rp, nt)
    _reacquire_gil(ts)
    if rc != 0:
        _raise_status(rc)
    return res


# --- attend ---------------------------------------------------------------------

def attend(query, keys, values=None, *, scale=1.0, mask=None, causal=False,
           return_weights=False, out=None, num_threads=None, **options):
    """Dot-product attention: ``softmax(scale * keys @ query) @ values``.

    Parameters
    ----------
    query : array_like, shape (d,) or (..., Lq, d)
        One query (e.g. a decoder hidden state), or Lq query rows.
    keys : array_like, shape (..., T, d)
        The T keys (annotations). Must hold at least one key.
    values : array_like, shape (..., T, dv), optional
        The value rows averaged into the context; defaults to `keys`.
        Leading dimensions of query, keys and values broadcast as in
        `numpy.matmul`.
    scale : float, optional
        Score factor: 1.0 (default) is the tutorial's (Luong) dot score,
        ``1/sqrt(d)`` scaled dot-product attention.
    mask : array_like of bool, optional
        Broadcastable to the scores' shape, (..., T) or (..., Lq, T); True
        means "attends" (as in `torch.nn.functional.scaled_dot_product_attention`).
        Masked keys are never read. A query with every key masked gets a
        context and weights of zeros, never NaN.
    causal : bool or "lower_right", optional
        ``True``: query row i attends keys ``t <= i`` only (top-left aligned,
        as PyTorch's ``is_causal``); combined with `mask` by AND. Needs query
        rows, shape (..., Lq, d): with a single (d,) query it is a
        ValueError, since top-left alignment would let it see key 0 only.
        ``"lower_right"``: the last query row is aligned with the last key
        (row i sees ``t <= i + T - Lq``; torch's ``causal_lower_right``,
        flash-attn's ``causal=True``), what a decoder with a cache needs; a
        single query then sees every key. With `key_lengths`, T is the batch
        item's key length: the queries are the last Lq positions of its
        real keys, as flash-attn's ``cache_seqlens`` (the same as attending
        ``keys[:n]`` alone); padded queries of a padded self-attention batch
        want ``causal=True`` instead. `window` and `alibi_slopes` take
        their positions from the same alignment (top-left unless
        ``"lower_right"``).
    bias : array_like of float, optional
        Added to the scaled (and soft-capped) scores before the softmax;
        broadcastable to the scores' shape, (..., T) or (..., Lq, T). This is
        torch's float ``attn_mask``: ``-inf`` masks a key. It is read in place
        through its strides (a broadcast bias is never expanded); only a
        bias of another dtype, or whose last axis is strided, is copied once
        at its own shape.
    alibi_slopes : array_like of float, shape (H,) or (..., H), optional
        ALiBi (as flash-attn): adds ``-slope * |i - j|`` to the scores of
        query position i and key position j, computed on the fly. H is the
        last batch dimension (the heads); the slopes broadcast against the
        batch dimensions.
    enable_gqa : bool, optional
        Grouped-query attention, as torch: query (..., H, Lq, d), keys and
        values (..., Hkv, T, .) with ``H % Hkv == 0``; query head h reads kv
        head ``h // (H // Hkv)``. Keys and values are never copied.
    window : (int or None, int or None), optional
        Sliding window ``(left, right)``: query position i sees keys
        ``i - left <= j <= i + right``; None on a side is unbounded.
        ``(256, 0)`` with ``causal=True`` is a causal window of 257 keys.
        Keys outside the window are never read.
    key_lengths : array_like of int, optional
        Broadcastable to the batch dimensions (...): key ``t`` is seen only
        if ``t < key_lengths[...]`` (a padding mask without a mask array;
        padded keys are never read). Each in [0, T].
    softcap : float, optional
        Scores become ``softcap * tanh(scores / softcap)`` before the bias
        and masking (Gemma 2, flash-attn's ``softcap``; attnx's own tanh).
        Must be > 0; None (default) caps nothing. float32 work takes it
        rounded to float32: one that rounds to inf caps nothing, one that
        rounds to 0 is the smallest float32 subnormal.
    return_weights : bool, optional
        Also return the attention weights.
    out : ndarray or tuple, optional
        Array for the context (C-contiguous, writeable, of exactly its dtype and
        shape; filled and returned with no allocation). With
        `return_weights` or `return_lse`, a tuple with one entry per result
        (``(context_out, weights_out)``, ``(context_out, lse_out)`` or all
        three), any of which may be None. Must not share memory with the
        inputs.
    return_lse : bool, optional
        Also return each query row's logsumexp: the natural log of the sum
        of ``exp(score)`` over the keys it attends (its final scores: scaled,
        capped, biased and masked), shape (...) for a 1-D query, else
        (..., Lq); ``-inf`` for a query that attends nothing. The result is
        then ``(context, lse)``, or ``(context, weights, lse)`` with
        `return_weights`. `merge_attention` combines results over disjoint
        key chunks with it.
    key_offset, query_offset : int, optional
        Positions of the first key and the first query (default 0): query
        row i sits at ``query_offset + i`` and key t at ``key_offset + t``,
        and `causal` lets a query see the keys at or before its position. A
        chunk of keys attended with its own `key_offset` then masks exactly
        as it would inside the whole sequence, and ``query_offset = T - Lq``
        aligns a block of queries with the end of the keys (a decoder's
        cache). A query that sees no key gets zeros (and ``lse = -inf``).
        Each offset, and their difference, lies within +-2**62.
    num_threads : int, optional
        Threads for batched queries, or for one query over a long sequence
        (the keys are split across threads and the partial softmax states
        merged). Default: `attnx.max_threads()`.
    score : {"dot", "general", "additive"}, optional
        The score function (Luong et al. 2015; Bahdanau et al. 2015):
        ``"dot"`` (default) ``q . k``; ``"general"`` ``q^T W k`` (pass `W`,
        shape (dq, dk); computed as the dot of ``W^T q`` with the keys, in
        the same fused pass); ``"additive"`` ``v^T tanh(W_q q + W_k k)``
        (pass `W_q` (h, dq), `v` (h,), and `keys_proj` = ``keys @ W_k.T``
        from `project_keys`, or `W_k` (h, dk) to project here). `scale`
        multiplies dot and general scores only.
    W, W_q, v, keys_proj, W_k : array_like, optional
        The parameters of the chosen score function.

    Returns
    -------
    context : ndarray, shape (dv,) or (..., Lq, dv)
    weights : ndarray, shape (..., T) or (..., Lq, T)
        Only with ``return_weights=True``.
    lse : ndarray, shape (...) or (..., Lq)
        Only with ``return_lse=True``.

    Raises
    ------
    TypeError
        For complex, object or string input, or a non-boolean mask.
    ValueError
        For mismatched shapes (the message names both), an empty key
        sequence (T = 0), or an unfit `out`; for a bias, slopes or key
        lengths that do not broadcast, ``H % Hkv != 0`` with `enable_gqa`, a
        negative window side, key lengths outside [0, T], ``softcap <= 0``,
        or a finite `scale` beyond the range of the dtype the work is done in
        (float32's for float32 inputs) (each message names the argument).

    Notes
    -----
    Without `return_weights` this is one fused pass over keys and values
    (online softmax); with it, weights are computed, normalised, then reduced.
    NaN in a query or its keys makes that query's output NaN; ``-inf`` scores
    get weight 0; scores up to +-1e308 never overflow. A key whose weight is
    exactly 0 does not contribute (its value row is not read). float32
    inputs (all float32, or float32 with float16 or small integers, as NumPy
    would promote) run the float32 kernels and give float32 results.

    Examples
    --------
    The worked example of the tutorial, where the naive softmax gives NaN:

    >>> import numpy as np, attnx
    >>> q = np.array([5., 1., 20.])
    >>> annotations = np.array([[3, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]])
    >>> ctx, w = attnx.attend(q, annotations, return_weights=True)
    >>> print(w)
    [1.19202922e-001 7.94715151e-232 0.00000000e+000 8.80797078e-001]
    >>> print(ctx.round(8))
    [ 3.88079708  4.0728263  45.26423912]

    Batched, causal, scaled dot-product attention:

    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.standard_normal((3, 2, 4, 5, 8))   # (batch, heads, L, d)
    >>> attnx.attend(Q, K, V, scale=8 ** -0.5, causal=True).shape
    (2, 4, 5, 8)

    Two chunks of keys, each attended on its own, merge into the whole:

    >>> a = attnx.attend(Q, K[..., :3, :], V[..., :3, :], causal=True, return_lse=True)
    >>> b = attnx.attend(Q, K[..., 3:, :], V[..., 3:, :], causal=True, return_lse=True,
    ...                  key_offset=3)
    >>> ctx, lse = attnx.merge_attention([a[0], b[0]], [a[1], b[1]])
    >>> np.allclose(ctx, attnx.attend(Q, K, V, causal=True), rtol=1e-14, atol=1e-14)
    True

    A causal sliding window of 3 keys is the causal mask of that band:

    >>> band = np.tri(5, 5, dtype=bool) & ~np.tri(5, 5, -3, dtype=bool)
    >>> np.allclose(attnx.attend(Q, K, V, causal=True, window=(2, 0)),
    ...             attnx.attend(Q, K, V, mask=band), rtol=1e-14, atol=1e-14)
    True

    Grouped-query attention, 8 query heads over the 4 heads of K and V (no copy):

    >>> Qh = rng.standard_normal((2, 8, 5, 8))
    >>> attnx.attend(Qh, K, V, enable_gqa=True, causal="lower_right").shape
    (2, 8, 5, 8)
    """
    cdef cnp.ndarray q, K, V
    cdef size_t T, d, dv
    cdef int rc
    cdef PyThreadState *ts
    cdef double sc = _as_scale(scale)
    cdef float sc32 = 0
    cdef int tn = -1
    # The rarer options (the score functions, return_lse, the offsets) come
    # through **options: each named keyword-only parameter costs every call
    # a few ns of argument parsing, which is most of a tiny call.
    # causal: only False itself takes the fast path (an identity test); any
    # other value, falsy or not, is checked by _causal_mode on the general
    # path ("" or 0.0 was read as False here, refused there)
    if mask is None and causal is False and return_weights is False and num_threads is None \
            and not options:
        tn = _fast_type(query, keys, values)
    if tn >= 0:
        q = <cnp.ndarray>query
        K = <cnp.ndarray>keys
        V = K if values is None else <cnp.ndarray>values
        if cnp.PyArray_NDIM(q) == 1 and cnp.PyArray_NDIM(K) == 2 and cnp.PyArray_NDIM(V) == 2:
            d = <size_t>cnp.PyArray_DIMS(q)[0]
            T = <size_t>cnp.PyArray_DIMS(K)[0]
            dv = <size_t>cnp.PyArray_DIMS(V)[1]
            res = None
            if (<size_t>cnp.PyArray_DIMS(K)[1] == d and <size_t>cnp.PyArray_DIMS(V)[0] == T
                    and T > 0 and T < SPLIT_MIN_KEYS and T * (d + dv) < SERIAL_WORK):
                res = _fast_out(out, <cnp.npy_intp>dv, tn)
            if res is not None:
                if tn == cnp.NPY_FLOAT:
                    sc32 = _f32_scale(sc)
                ts = _release_gil(T * (d + dv + 1) >= NOGIL_WORK)
                if tn == cnp.NPY_DOUBLE:
                    rc = ak.attend(_dptr(q), _dptr(K), _dptr(V), T, d, dv, sc, NULL,
                                   _dptr(<cnp.ndarray>res), NULL)
                else:
                    rc = ak.attend_f32(_fptr(q), _fptr(K), _fptr(V), T, d, dv, sc32,
                                       NULL, _fptr(<cnp.ndarray>res), NULL)
                _reacquire_gil(ts)
                if rc != 0:
                    _raise_status(rc)   # ERR_OVERLAP: out shares memory with an input
                return res
    cdef bint rw = _flag(return_weights, "return_weights")
    score = options.pop("score", _DOT)
    W = options.pop("W", None)
    W_q = options.pop("W_q", None)
    v = options.pop("v", None)
    keys_proj = options.pop("keys_proj", None)
    W_k = options.pop("W_k", None)
    cdef bint return_lse = _flag(options.pop("return_lse", False), "return_lse")
    cdef ptrdiff_t qoff, koff
    _offsets(options.pop("query_offset", 0), options.pop("key_offset", 0), &qoff, &koff)
    cdef _Shaping sh = _shaping(causal, options)
    if options:
        raise TypeError(f"attend() got an unexpected keyword argument {next(iter(options))!r}")
    if not (score is _DOT or score == "dot"):
        if score == "general" and W is not None:
            if W_q is not None or v is not None or keys_proj is not None or W_k is not None:
                raise ValueError("score='general' takes W only")
            return _attend_general(_general_query(query, W, keys), keys, values, sc, mask,
                                   rw, out, num_threads, return_lse, qoff, koff, sh)
        # what the score itself lacks first: the message below is additive's
        if score == "general":
            raise ValueError("score='general' needs W, shape (dq, dk)")
        if not (isinstance(score, str) and score == "additive"):
            raise ValueError(f"score must be 'dot', 'general' or 'additive', got {score!r}")
        if return_lse or koff or qoff or sh.shaped:
            raise ValueError("return_lse, key_offset, query_offset, bias, alibi_slopes, "
                             "enable_gqa, window, key_lengths and softcap work with the dot "
                             "score (score='dot' or 'general'), not score='additive'")
        return _attend_scored(query, keys, values, sc, mask, sh.causal, sh.lower_right,
                              rw, out, num_threads, score, W, W_q, v, keys_proj,
                              W_k)
    if W is not None or W_q is not None or v is not None or keys_proj is not None \
            or W_k is not None:
        raise ValueError("W, W_q, v, keys_proj and W_k belong to score='general' or "
                         "score='additive'; the default score is 'dot'")
    return _attend_general(query, keys, values, sc, mask, rw, out,
                           num_threads, return_lse, qoff, koff, sh)


cdef ptrdiff_t _offset(object x, str name) except? -1:
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {x!r}")
    try:
        n = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(x).__name__}") from None
    if not -(1 << 62) <= n <= (1 << 62):
        raise ValueError(f"{name} must be within +-2**62 (inclusive), got {n}")
    return n


cdef int _offsets(object query_offset, object key_offset, ptrdiff_t *q, ptrdiff_t *k) except -1:
    """*q, *k = query_offset, key_offset, each checked by _offset, and their
    difference (the queries' position relative to the keys) within +-2**62
    as well: the C core computes positions and ALiBi distances from it."""
    q[0] = _offset(query_offset, "query_offset")
    k[0] = _offset(key_offset, "key_offset")
    cdef ptrdiff_t lim = (<ptrdiff_t>1) << 62
    if k[0] < q[0] - lim or q[0] < k[0] - lim:     # |q - k| > 2^62, in range
        raise ValueError(f"query_offset - key_offset must be within +-2**62 (inclusive), got "
                         f"{query_offset} - ({key_offset}) = {<object>q[0] - <object>k[0]}")
    return 0


_CAUSAL_SINGLE = (
    "causal=True with a single query of shape (d,) and no offsets: causal masks are "
    "top-left aligned (query row i sees keys t <= i), so a lone query at position 0 "
    "would attend to key 0 only. For a decoding step, where the query is the newest "
    "position and every key is in its past, leave causal=False, pass "
    "causal='lower_right' (the last query aligned with the last key), or say where the "
    "query sits: query_offset=T - 1 (and for query rows that end at the last key, "
    "query_offset=T - Lq)")


_DOT = "dot"

# attend's full signature, for inspect and IDEs (its rarer keywords arrive
# through **options)
def _attend_signature():
    P = inspect.Parameter
    pos = [P(n, P.POSITIONAL_OR_KEYWORD, default=d) if d is not P.empty
           else P(n, P.POSITIONAL_OR_KEYWORD)
           for n, d in (("query", P.empty), ("keys", P.empty), ("values", None))]
    kw = [P(n, P.KEYWORD_ONLY, default=d) for n, d in (
        ("scale", 1.0), ("mask", None), ("causal", False), ("return_weights", False),
        ("out", None), ("num_threads", None), ("score", "dot"), ("W", None), ("W_q", None),
        ("v", None), ("keys_proj", None), ("W_k", None), ("return_lse", False),
        ("key_offset", 0), ("query_offset", 0), ("bias", None), ("alibi_slopes", None),
        ("enable_gqa", False), ("window", None), ("key_lengths", None), ("softcap", None))]
    return inspect.Signature(pos + kw)


attend.__signature__ = _attend_signature()


def _attend_scored(query, keys, values, double scale, mask, bint causal, bint lower_right,
                   bint return_weights, out, num_threads, score, W, W_q, v, keys_proj, W_k):
    """attend with score='additive' (score='general' with its W goes to
    _attend_general; here only its errors)."""
    if score == "general":
        raise ValueError("score='general' needs W, shape (dq, dk)")
    if score != "additive":
        raise ValueError(f"score must be 'dot', 'general' or 'additive', got {score!r}")
    if W is not None:
        raise ValueError("score='additive' takes W_q, v and keys_proj (or W_k), not W")
    if W_q is None or v is None:
        raise ValueError("score='additive' needs W_q (h, dq) and v (h,)")
    if (keys_proj is None) == (W_k is None):
        raise ValueError("score='additive' needs exactly one of keys_proj "
                         "(= project_keys(keys, W_k)) and W_k")
    K = _as_f64(keys, "keys")
    V = K if values is None else _as_f64(values, "values")
    Kp = project_keys(K, W_k) if keys_proj is None else _as_f64(keys_proj, "keys_proj")
    if K.ndim < 2 or V.ndim < 2 or Kp.ndim < 2 or not (K.shape[-2] == V.shape[-2] == Kp.shape[-2]):
        raise ValueError(f"keys {K.shape}, values {V.shape} and keys_proj {Kp.shape} must hold "
                         f"the same number of keys (..., T, .)")
    if K.shape[-2] == 0:
        raise ValueError(f"keys has shape {K.shape}: attend needs at least one key (T = 0)")
    A, Kp, vv = _additive_operands(query, Kp, W_q, v)
    single = A.ndim == 1
    if causal and single and not lower_right:
        raise ValueError(_CAUSAL_SINGLE)
    h, T, dv = vv.shape[0], Kp.shape[-2], V.shape[-1]
    Lq = 1 if single else A.shape[-2]
    batch = _broadcast_batch([(A, 1 if single else 2, "query"), (Kp, 2, "keys_proj"),
                              (V, 2, "values")])
    scores_shape = batch + ((T,) if single else (Lq, T))
    cdef size_t nb = len(batch), i
    cdef size_t bshape[32]
    cdef ptrdiff_t as_[32], ks[32], vs[32], ms[32]     # batch strides: A, Kp, V, mask
    cdef ptrdiff_t mrow = 0
    m = _mask_operand(mask, scores_shape, single, batch, ms, &mrow)
    cdef const unsigned char *mptr = NULL if m is None else \
        <const unsigned char *>cnp.PyArray_DATA(<cnp.ndarray>m)
    # every output is checked (shape, dtype, memory shared with any input)
    # before anything is written
    if not return_weights:
        ctx_out, w_out = out, None
    elif out is None or cnp.PyArray_Check(out):
        ctx_out, w_out = out, None
    elif isinstance(out, tuple) and len(out) == 2:
        ctx_out, w_out = out
    else:
        raise ValueError("with return_weights=True, out must be an array for the context "
                         "or a pair (context_out, weights_out)")
    inputs = [a for a in (np.asarray(query), K, V, Kp, np.asarray(W_q), np.asarray(v))
              if a.dtype.kind in "biuf"] + [m]
    ctx = _result(ctx_out, batch + ((dv,) if single else (Lq, dv)), inputs)
    w = _result(w_out, scores_shape, inputs + [ctx]) if return_weights else None
    cdef int nt = _threads(num_threads)
    rows = Lq
    for i in range(nb):
        bshape[i] = batch[i]
        rows *= batch[i]
    _fill_strides(A, 1 if single else 2, 8, batch, as_)
    _fill_strides(Kp, 2, 8, batch, ks)
    _fill_strides(V, 2, 8, batch, vs)
    cdef double *ap = <double *>_data(A)
    cdef double *kpp = <double *>_data(Kp)
    cdef double *vp = <double *>_data(vv)
    cdef double *valp = <double *>_data(V)
    cdef double *cp = <double *>_data(ctx)
    cdef double *wp = NULL if w is None else <double *>_data(w)
    cdef size_t cLq = Lq, cT = T, ch = h, cdv = dv
    cdef int rc
    cdef bint cz = causal
    cdef ptrdiff_t qoff = T - Lq if lower_right else 0     # lower right: row i sees t <= i + T - Lq
    # one C call: scores, mask and causality, softmax, context
    cdef PyThreadState *ts = _release_gil(rows * T * (h + dv + 1) >= NOGIL_WORK)
    rc = ak.additive_attention(ap, kpp, vp, valp, nb, bshape, as_, ks, vs, cLq, cT, ch, cdv,
                               mptr, ms, mrow, cz, qoff, 0, cp, wp, nt)
    _reacquire_gil(ts)
    if rc != 0:
        _raise_status(rc)
    return ctx if w is None else (ctx, w)


cdef int _check_qkv(object q, object K, object V) except -1:
    """The shape rules of attention's operands, with messages naming them."""
    if q.ndim < 1:
        raise ValueError(f"query must have shape (d,) or (..., Lq, d), got shape {q.shape}")
    if K.ndim < 2:
        raise ValueError(f"keys must have shape (..., T, d), got shape {K.shape}")
    if V.ndim < 2:
        raise ValueError(f"values must have shape (..., T, dv), got shape {V.shape}")
    if q.shape[-1] != K.shape[-1]:
        raise ValueError(f"query has shape {q.shape} but keys has shape {K.shape}: "
                         f"the last dimension (d) must match")
    if V.shape[-2] != K.shape[-2]:
        raise ValueError(f"keys has shape {K.shape} but values has shape {V.shape}: "
                         f"the number of keys (T) must match")
    if K.shape[-2] == 0:
        raise ValueError(f"keys has shape {K.shape}: attend needs at least one key (T = 0)")
    return 0


cdef object _bool_mask(object mask, tuple scores_shape, bint add_query_axis):
    """mask as a boolean array broadcast (zero strides, no copy) to the
    scores' shape, its last axis contiguous."""
    m = mask if cnp.PyArray_Check(mask) else _asarray(mask, "mask")
    if m.dtype != np.bool_:
        raise TypeError(f"mask must be boolean (True = attends), got dtype {m.dtype}")
    try:
        m = np.broadcast_to(m[..., None, :] if add_query_axis else m, scores_shape)
    except ValueError:
        raise ValueError(f"mask has shape {np.shape(mask)}, which does not broadcast to "
                         f"the scores' shape {scores_shape}") from None
    if scores_shape[-1] > 1 and m.strides[-1] != 1:
        m = np.ascontiguousarray(m)
    return m


cdef object _mask_operand(object mask, tuple scores_shape, bint single, tuple batch,
                          ptrdiff_t *strides, ptrdiff_t *row_stride):
    """mask (None: no mask) as the C attention calls take it: the boolean
    array of _bool_mask, which the caller keeps alive through the call, with
    its batch strides and its row stride (0 for a single query) filled in."""
    if mask is None:
        return None
    m = _bool_mask(mask, scores_shape, False)
    row_stride[0] = 0 if single else m.strides[-2]
    _fill_strides(m, 1 if single else 2, 1, batch, strides)
    return m


# --- what shapes the scores (issue 13) -------------------------------------------

cdef class _Shaping:
    """attend's keywords that shape the scores beyond `mask` (issue 13),
    checked on their own; _fit_* fit them to the operands' shapes."""
    cdef public bint causal, lower_right, gqa, shaped, any_new
    cdef public object bias, alibi_slopes, key_lengths
    cdef public ptrdiff_t window_left, window_right
    cdef public double softcap


_CAUSAL_VALUES = "True (top-left aligned, torch's is_causal), False or 'lower_right'"


cdef int _causal_mode(object causal, _Shaping sh) except -1:
    if causal is False or causal is None:
        return 0
    if causal is True:
        sh.causal = True
        return 0
    if isinstance(causal, str):
        if causal != "lower_right":
            raise ValueError(f"causal must be {_CAUSAL_VALUES}, got {causal!r}")
        sh.causal = sh.lower_right = True
        return 0
    if isinstance(causal, (bool, np.bool_, numbers.Integral)):
        sh.causal = bool(causal)
        return 0
    raise TypeError(f"causal must be {_CAUSAL_VALUES}, got {type(causal).__name__} {causal!r}")


def _causal_value(causal):
    """causal checked by attend's rules (its errors), as False, True or
    'lower_right': for attnx.dask, which takes the same values."""
    cdef _Shaping sh = _Shaping()
    _causal_mode(causal, sh)
    return "lower_right" if sh.lower_right else bool(sh.causal)


cdef int _window(object window, _Shaping sh) except -1:
    """window=(left, right): each side an integer >= 0, or None (unbounded)."""
    if window is None:
        return 0
    # a pair: a tuple, a list or a 1-D array (a set has no order, a dict's
    # keys are not its sides; window[k] took a dict's values at keys 0, 1)
    if not (isinstance(window, (tuple, list))
            or (cnp.PyArray_Check(window) and window.ndim == 1)):
        raise TypeError(f"window must be a pair (left, right) of integers >= 0 or None (a "
                        f"tuple, list or 1-D array), got {type(window).__name__} {window!r}")
    if len(window) != 2:
        raise ValueError(f"window must be a pair (left, right), got {window!r} "
                         f"(length {len(window)})")
    cdef ptrdiff_t sides[2]
    cdef int k
    for k in range(2):
        x = window[k]
        name = ("left", "right")[k]
        if x is None:
            sides[k] = -1
            continue
        if isinstance(x, (bool, np.bool_)):
            raise TypeError(f"window's {name} side must be an integer >= 0 or None, got {x!r}")
        try:
            n = operator.index(x)
        except TypeError:
            raise TypeError(f"window's {name} side must be an integer >= 0 or None, got "
                            f"{type(x).__name__} {x!r}") from None
        if n < 0:
            raise ValueError(f"window's {name} side must be >= 0 (None: unbounded), got {n} "
                             f"in window={window!r}")
        sides[k] = min(n, (1 << 63) - 1)  # the C core saturates its bounds from there
    sh.window_left, sh.window_right = sides[0], sides[1]
    return 0


cdef double _softcap(object softcap) except -1.0:
    """softcap > 0 as a double (inf: no cap, its limit), or a clear error."""
    if isinstance(softcap, (bool, np.bool_)):
        raise TypeError(f"softcap must be a real number > 0 or None, got {softcap!r}")
    if cnp.PyArray_Check(softcap):
        if softcap.ndim != 0 or softcap.dtype.kind not in "iuf":
            raise TypeError(f"softcap must be a real number > 0 or None, got an array of shape "
                            f"{softcap.shape} and dtype {softcap.dtype}")
    elif not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap must be a real number > 0 or None, got "
                        f"{type(softcap).__name__} {softcap!r}")
    cdef double c
    try:
        c = float(softcap)
    except OverflowError:                # an int past float64: no cap, as inf
        c = float("inf")
    if not c > 0:
        raise ValueError(f"softcap must be > 0 (None: no cap; flash-attn's softcap=0.0 is "
                         f"softcap=None here), got {softcap!r}")
    return 0.0 if c == float("inf") else c


cdef _Shaping _shaping(object causal, dict options):
    """Pop attend's issue-13 keywords from `options` and check each alone."""
    cdef _Shaping sh = _Shaping.__new__(_Shaping)
    sh.window_left = sh.window_right = -1
    _causal_mode(causal, sh)
    if options:
        sh.bias = options.pop("bias", None)
        sh.alibi_slopes = options.pop("alibi_slopes", None)
        sh.key_lengths = options.pop("key_lengths", None)
        sh.gqa = _flag(options.pop("enable_gqa", False), "enable_gqa")
        _window(options.pop("window", None), sh)
        softcap = options.pop("softcap", None)
        if softcap is not None:
            sh.softcap = _softcap(softcap)
    sh.shaped = (sh.gqa or sh.bias is not None or sh.alibi_slopes is not None
                 or sh.key_lengths is not None or sh.window_left >= 0 or sh.window_right >= 0
                 or sh.softcap != 0)
    sh.any_new = sh.shaped or sh.lower_right
    return sh


cdef tuple _gqa_views(object q, object K, object V):
    """enable_gqa: query (..., H, Lq, d) viewed as (..., Hkv, G, Lq, d), keys
    and values (..., Hkv, T, .) as (..., Hkv, 1, T, .): a broadcast over G
    (stride 0), never a copy. Query head h = hkv G + g reads kv head hkv."""
    if q.ndim < 3 or K.ndim < 3 or V.ndim < 3:
        raise ValueError(f"enable_gqa needs a heads axis: query (..., H, Lq, d), keys "
                         f"(..., Hkv, T, d) and values (..., Hkv, T, dv); got query {q.shape}, "
                         f"keys {K.shape}, values {V.shape}")
    H, Hkv = q.shape[-3], K.shape[-3]
    if V.shape[-3] != Hkv:
        raise ValueError(f"enable_gqa: keys has {Hkv} heads but values has {V.shape[-3]} "
                         f"(keys {K.shape}, values {V.shape}): they must be equal")
    if (Hkv == 0 and H != 0) or (Hkv != 0 and H % Hkv != 0):
        raise ValueError(f"enable_gqa: the query's H = {H} heads are not a multiple of the "
                         f"Hkv = {Hkv} heads of keys and values (query {q.shape}, keys "
                         f"{K.shape}): H % Hkv must be 0")
    G = H // Hkv if Hkv else 1
    q = q.reshape(q.shape[:-3] + (Hkv, G) + q.shape[-2:])
    return q, K[..., None, :, :], V[..., None, :, :], H


cdef object _batch_operand(object x, str name, tuple ext, tuple batch, str expect):
    """x (its dtype already checked) broadcast to the batch dimensions `ext`
    (leading length-1 axes beyond them dropped), then viewed in the internal
    batch shape (GQA splits the heads axis: a view)."""
    while x.ndim > len(ext) and x.shape[0] == 1:
        x = x[0]
    try:
        xb = np.broadcast_to(x, ext)
    except ValueError:
        raise ValueError(f"{name} has shape {x.shape}: expected {expect} broadcastable to the "
                         f"batch dimensions {ext}") from None
    return xb.reshape(batch) if ext != batch else xb


cdef int _batch_strides(object xb, Py_ssize_t nb, Py_ssize_t itemsize,
                        ptrdiff_t *out) except -1:
    """Element strides of xb's first nb axes (shaped exactly as the batch);
    0 where broadcast or of length 1."""
    cdef Py_ssize_t i
    for i in range(nb):
        out[i] = 0 if xb.shape[i] == 1 else xb.strides[i] // itemsize
    return 0


cdef class _Call:
    """attnx_attention_params filled from attend's operands (query, keys,
    values, mask and the _Shaping keywords), with the stride buffers it
    points into and the arrays it reads kept alive as long as it is. Used by
    attend and attend_backward, which set the outputs themselves."""
    cdef ak.attnx_attention_params p
    cdef size_t bshape[32]
    cdef ptrdiff_t qs[32]
    cdef ptrdiff_t ks[32]
    cdef ptrdiff_t vs[32]
    cdef ptrdiff_t ms[32]
    cdef ptrdiff_t bis[32]
    cdef ptrdiff_t als[32]
    cdef ptrdiff_t kls[32]
    cdef object ins      # the operands read: q, K, V, mask, bias (converted), slopes
    cdef object bias     # the bias array the caller's bias became (its shape: grad_bias's)
    cdef object keep


cdef _Call _call_params(_Shaping sh, q, K, V, tuple batch, tuple ext, bint single,
                        Lq, T, d, dv, double scale, mask, dt,
                        ptrdiff_t query_offset, ptrdiff_t key_offset, int nt):
    """The call's params: q is (..., d) for a single query (Lq == 1) or
    (..., Lq, d), K and V (..., T, d|dv), all broadcasting to `batch`
    (GQA: the (..., Hkv, G) views); ext is the batch shape the caller sees."""
    cdef _Call c = _Call()
    cdef size_t nb = len(batch), i
    cdef Py_ssize_t isz = dt.itemsize
    cdef ptrdiff_t mrow = 0, brow = 0, bcol = 0
    cdef const unsigned char *mptr = NULL
    core = (T,) if single else (Lq, T)
    scores_shape = ext + core
    m = None
    if mask is not None:
        m = _bool_mask(mask, scores_shape, False)
        if sh.gqa:
            m = m.reshape(batch + core)
        mrow = 0 if single else m.strides[-2]
        _fill_strides(m, 1 if single else 2, 1, batch, c.ms)
        mptr = <const unsigned char *>cnp.PyArray_DATA(<cnp.ndarray>m)
    b = bv = None
    if sh.bias is not None:
        b, bv = _fit_bias(sh.bias, dt, scores_shape, batch + core)
        _batch_strides(bv, nb, isz, c.bis)
        if not single and Lq > 1:
            brow = bv.strides[-2] // isz
        if T > 1:
            bcol = bv.strides[-1] // isz
    a = None
    if sh.alibi_slopes is not None:
        a = _as_real(sh.alibi_slopes, "alibi_slopes", dt)
        a = _batch_operand(a, "alibi_slopes", ext, batch, "(H,) or (..., H)")
        _batch_strides(a, nb, isz, c.als)
    kl = None
    if sh.key_lengths is not None:
        kl = _fit_key_lengths(sh.key_lengths, T)
        kl = _batch_operand(kl, "key_lengths", ext, batch, "an integer array")
        _batch_strides(kl, nb, kl.itemsize, c.kls)
    c.ins = [q, K, V, m, b, a]
    c.bias = b
    c.keep = (bv, kl)
    for i in range(nb):
        c.bshape[i] = batch[i]
    _fill_strides(q, 1 if single else 2, isz, batch, c.qs)
    _fill_strides(K, 2, isz, batch, c.ks)
    _fill_strides(V, 2, isz, batch, c.vs)
    cdef ak.attnx_attention_params *p = &c.p
    memset(p, 0, sizeof(c.p))
    p.size = sizeof(c.p)
    p.query, p.keys, p.values = _data(q), _data(K), _data(V)
    p.nbatch, p.batch_shape = nb, c.bshape
    p.query_strides, p.key_strides, p.value_strides = c.qs, c.ks, c.vs
    p.Lq, p.T, p.d, p.dv = Lq, T, d, dv
    if dt is _FLOAT32:
        _f32_scale(scale)     # the C core rounds it to float32: refused if that is inf
    p.scale = scale
    p.mask, p.mask_strides, p.mask_row_stride = mptr, c.ms, mrow
    p.causal = sh.causal
    p.query_offset, p.key_offset = query_offset, key_offset
    p.num_threads = nt
    if bv is not None:
        p.bias, p.bias_strides = cnp.PyArray_DATA(<cnp.ndarray>bv), c.bis
        p.bias_row_stride, p.bias_col_stride = brow, bcol
    if a is not None:
        p.alibi_slopes, p.alibi_strides = cnp.PyArray_DATA(<cnp.ndarray>a), c.als
    if kl is not None:
        p.key_lengths = <const long long *>cnp.PyArray_DATA(<cnp.ndarray>kl)
        p.key_lengths_strides = c.kls
    p.lower_right = sh.lower_right
    p.window = sh.window_left >= 0 or sh.window_right >= 0
    p.window_left, p.window_right = sh.window_left, sh.window_right
    p.softcap = sh.softcap
    return c


cdef tuple _qkv_layout(q, K, V, _Shaping sh):
    """attend's shapes from checked q, K, V: (q, K, V, single, Lq, T, d, dv,
    batch, ext), with GQA's (..., Hkv, G) views; ext is the batch shape the
    caller sees (GQA: (..., H) where batch has (..., Hkv, G))."""
    single = q.ndim == 1
    d, T, dv = q.shape[-1], K.shape[-2], V.shape[-1]
    Lq = 1 if single else q.shape[-2]
    H = 0
    if sh.gqa:
        q, K, V, H = _gqa_views(q, K, V)
    batch = _broadcast_batch([(q, 1 if single else 2, "query"), (K, 2, "keys"),
                              (V, 2, "values")])
    ext = batch[:-2] + (H,) if sh.gqa else batch
    return q, K, V, single, Lq, T, d, dv, batch, ext


def _attend_general(query, keys, values, double scale, mask, bint return_weights, out,
                    num_threads, bint return_lse=False, ptrdiff_t query_offset=0,
                    ptrdiff_t key_offset=0, _Shaping sh=None):
    if sh is None:
        sh = _shaping(False, {})
    dt = _work_dtype((query, keys, values))
    q = _as_real(query, "query", dt)
    K = _as_real(keys, "keys", dt)
    V = K if values is None else _as_real(values, "values", dt)
    _check_qkv(q, K, V)
    if sh.causal and not sh.lower_right and q.ndim == 1 and query_offset == 0 and key_offset == 0:
        raise ValueError(_CAUSAL_SINGLE)
    q, K, V, single, Lq, T, d, dv, batch, ext = _qkv_layout(q, K, V, sh)
    core = (T,) if single else (Lq, T)
    scores_shape = ext + core
    ctx_shape = ext + ((dv,) if single else (Lq, dv))
    cdef size_t nb = len(batch), i
    cdef _Call c = _call_params(sh, q, K, V, batch, ext, single, Lq, T, d, dv, scale, mask, dt,
                                query_offset, key_offset, _threads(num_threads))
    ins = c.ins
    w = lse = None
    cdef int nres = 1 + return_weights + return_lse
    if nres > 1:
        if out is None:
            out = (None,) * nres
        elif cnp.PyArray_Check(out):
            out = (out,) + (None,) * (nres - 1)
        elif not (isinstance(out, tuple) and len(out) == nres):
            names = ", ".join(["context_out"] + ["weights_out"] * return_weights
                              + ["lse_out"] * return_lse)
            raise ValueError(f"with return_weights={bool(return_weights)} and "
                             f"return_lse={bool(return_lse)}, out must be an array for the "
                             f"context or a tuple ({names})")
        ctx = _result(out[0], ctx_shape, ins, dt)
        if return_weights:
            w = _result(out[1], scores_shape, ins + [ctx], dt)
        if return_lse:
            lse = _result(out[nres - 1], scores_shape[:-1], ins + [ctx, w], dt)
    else:
        ctx = _result(out, ctx_shape, ins, dt)
    cdef bint f32 = dt is _FLOAT32
    cdef int rc
    # outputs are C-contiguous: the (..., H) and (..., Hkv, G) layouts are one
    c.p.out = _data(ctx)
    c.p.weights = NULL if w is None else _data(w)
    c.p.lse = NULL if lse is None else _data(lse)
    rows = 1
    for i in range(nb):
        rows *= batch[i]
    cdef PyThreadState *ts = _release_gil(rows * Lq * T * (d + dv + 1) >= NOGIL_WORK)
    rc = ak.attention_f32(&c.p) if f32 else ak.attention(&c.p)
    _reacquire_gil(ts)
    if rc != 0:
        _raise_status(rc)
    res = (ctx,) + ((w,) if return_weights else ()) + ((lse,) if return_lse else ())
    return res if nres > 1 else ctx


cdef tuple _fit_bias(object bias, object dt, tuple scores_shape, tuple internal):
    """(the array kept alive, its view broadcast to the scores): bias in the
    work dtype, its last axis of stride 0 or 1 element. A copy only of the
    array the caller passed (converted, or made contiguous), never of the
    broadcast (..., Lq, T)."""
    b = bias if cnp.PyArray_Check(bias) else _asarray(bias, "bias")
    if b.dtype.kind == "b":
        raise TypeError("bias must hold numbers (an additive float bias); for a boolean "
                        "mask (True = attends) pass mask=")
    if b.dtype.kind not in "iuf":
        raise TypeError(f"bias must hold real numbers, got dtype {b.dtype}")
    cdef Py_ssize_t isz = dt.itemsize
    if b.dtype != dt or not b.dtype.isnative or not b.flags.aligned \
            or any(s % isz for s in b.strides) \
            or (b.ndim and b.shape[-1] != 1 and b.strides[-1] not in (0, isz)):
        b = _narrowed(b, "bias", dt)
    try:
        bv = np.broadcast_to(b, scores_shape)
    except ValueError:
        raise ValueError(f"bias has shape {b.shape}, which does not broadcast to the scores' "
                         f"shape {scores_shape}") from None
    if internal != scores_shape:
        bv = bv.reshape(internal)
    return b, bv


cdef object _fit_key_lengths(object key_lengths, Py_ssize_t T):
    """key_lengths as an int64 (C long long) array of its own shape, each in
    [0, T]."""
    x = key_lengths if cnp.PyArray_Check(key_lengths) else _asarray(key_lengths, "key_lengths")
    if x.dtype.kind not in "iu":
        raise TypeError(f"key_lengths must be integers (the keys seen per batch item), got "
                        f"dtype {x.dtype}")
    if x.size:
        lo, hi = x.min(), x.max()
        if lo < 0 or hi > T:
            raise ValueError(f"key_lengths must lie in [0, T={T}], got values from {lo} to {hi}")
    return np.ascontiguousarray(x, dtype=np.longlong)


# --- variable-length batches (flash-attn's varlen layout) ------------------------

cdef object _cu_seqlens(object x, str name, Py_ssize_t total):
    """cu_seqlens as an int64 array: int32/int64, 1-D, starting at 0,
    non-decreasing, ending at the total."""
    a = x if cnp.PyArray_Check(x) else _asarray(x, name)
    if a.dtype != np.int32 and a.dtype != np.int64:
        raise TypeError(f"{name} must be int32 or int64 offsets (flash-attn's cu_seqlens), got "
                        f"dtype {a.dtype}")
    if a.ndim != 1 or a.shape[0] < 1:
        raise ValueError(f"{name} must be 1-D of length B + 1 (batch B), got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a[0] != 0:
        raise ValueError(f"{name} must start at 0, got {name}[0] = {a[0]}")
    if a.shape[0] > 1 and (np.diff(a) < 0).any():
        k = int(np.argmax(np.diff(a) < 0))
        raise ValueError(f"{name} must be non-decreasing (monotonic), got {name}[{k}] = {a[k]} > "
                         f"{name}[{k + 1}] = {a[k + 1]}")
    if a[-1] != total:
        raise ValueError(f"{name} must end at the total number of rows, {total}, got "
                         f"{name}[-1] = {a[-1]}")
    return a


cdef object _varlen_slopes(object alibi_slopes, object dt, Py_ssize_t B, Py_ssize_t H):
    """alibi_slopes of attend_varlen (and its backward) broadcast to (B, H)."""
    a = _as_real(alibi_slopes, "alibi_slopes", dt)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    try:
        a = np.broadcast_to(a, (B, H))
    except ValueError:
        raise ValueError(f"alibi_slopes has shape {a.shape}: expected (H,) or (B, H) with "
                         f"H = {H}, B = {B}") from None
    return a


cdef object _varlen_causal(object causal):
    """attend_varlen's causal: always lower-right aligned (flash-attn's), so
    its message is not attend's (True there is top-left)."""
    if isinstance(causal, str) and causal == "lower_right":
        return causal
    if causal is None or isinstance(causal, (bool, np.bool_, numbers.Integral)):
        return bool(causal)
    # as attend's _causal_mode: another string is a ValueError, any other
    # type (a float, an array) a TypeError
    raise (ValueError if isinstance(causal, str) else TypeError)(
        f"causal must be True (lower-right aligned, as flash-attn's causal: the last query of "
        f"a sequence sees up to its last key) or False, got {type(causal).__name__} {causal!r}")


cdef tuple _varlen_checks(q, K, V, enable_gqa, cu_seqlens_q, cu_seqlens_k):
    """attend_varlen's (and its backward's) operand checks: (total, heads,
    d) layouts, heads and GQA, the offsets; returns them as int64 arrays."""
    for x, name, form in ((q, "query", "(total_q, H, d)"), (K, "keys", "(total_k, Hkv, d)"),
                          (V, "values", "(total_k, Hkv, dv)")):
        if x.ndim != 3:
            raise ValueError(f"{name} must have shape {form}, got shape {x.shape}")
    if q.shape[2] != K.shape[2]:
        raise ValueError(f"query has shape {q.shape} but keys has shape {K.shape}: the last "
                         f"dimension (d) must match")
    if K.shape[:2] != V.shape[:2]:
        raise ValueError(f"keys has shape {K.shape} but values has shape {V.shape}: total_k and "
                         f"Hkv must match")
    H, Hkv = q.shape[1], K.shape[1]
    if Hkv != H and Hkv != 1 and not (enable_gqa and Hkv != 0 and H % Hkv == 0):
        if enable_gqa:
            raise ValueError(f"enable_gqa: the query's H = {H} heads are not a multiple of the "
                             f"Hkv = {Hkv} heads of keys and values (query {q.shape}, keys "
                             f"{K.shape}): H % Hkv must be 0")
        raise ValueError(f"query has {H} heads but keys and values have {Hkv} (query {q.shape}, "
                         f"keys {K.shape}): pass enable_gqa=True for grouped-query attention")
    cq = _cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q.shape[0])
    ck = _cu_seqlens(cu_seqlens_k, "cu_seqlens_k", K.shape[0])
    if cq.shape[0] != ck.shape[0]:
        raise ValueError(f"cu_seqlens_q has {cq.shape[0]} offsets but cu_seqlens_k has "
                         f"{ck.shape[0]}: both are B + 1 long (B sequences)")
    return cq, ck


cdef void _swap_axes(char *dst, const char *src, Py_ssize_t a, Py_ssize_t b,
                     Py_ssize_t width) noexcept nogil:
    """src (a, b, width bytes) copied to dst as (b, a, width): a packed
    sequence (rows, heads) to head-major and back."""
    cdef Py_ssize_t i, j
    for j in range(b):
        for i in range(a):
            memcpy(dst + (j * a + i) * width, src + (i * b + j) * width, width)


def attend_varlen(query, keys, values, cu_seqlens_q, cu_seqlens_k, *, scale=1.0,
                  causal=False, window=None, alibi_slopes=None, softcap=None,
                  enable_gqa=False, return_lse=False, out=None, num_threads=None):
    """Attention over a batch of sequences of different lengths, packed
    without padding (flash-attn's ``flash_attn_varlen_func`` layout).

    Sequence s owns query rows ``cu_seqlens_q[s]:cu_seqlens_q[s+1]`` and key
    and value rows ``cu_seqlens_k[s]:cu_seqlens_k[s+1]``; it attends to its
    own keys only.

    Parameters
    ----------
    query : array_like, shape (total_q, H, d)
    keys : array_like, shape (total_k, Hkv, d)
    values : array_like, shape (total_k, Hkv, dv)
    cu_seqlens_q, cu_seqlens_k : array_like of int32 or int64, shape (B + 1,)
        Offsets of the sequences: start at 0, non-decreasing, end at
        total_q (total_k).
    scale : float, optional
        Score factor (flash-attn's ``softmax_scale``; its default is
        ``1/sqrt(d)``, attnx's 1.0).
    causal : bool, optional
        Lower-right aligned, as flash-attn: the last query of a sequence is
        aligned with its last key (query row i of a sequence with Lq queries
        and T keys sees keys ``j <= i + T - Lq``). `window` and
        `alibi_slopes` take the same alignment, with or without `causal`.
    window : (int or None, int or None), optional
        ``(left, right)`` as in `attend` (flash-attn's ``window_size``, whose
        -1 is None here).
    alibi_slopes : array_like, shape (H,) or (B, H), optional
        As in `attend`.
    softcap : float, optional
        As in `attend` (flash-attn's ``softcap=0.0`` is None here).
    enable_gqa : bool, optional
        Allow ``Hkv`` dividing ``H`` (grouped-query attention; query head h
        reads kv head ``h // (H // Hkv)``). Hkv = 1 or H needs no flag.
    return_lse : bool, optional
        Also return the logsumexp of each query row and head,
        shape (total_q, H); ``-inf`` for a row that sees no key.
    out : ndarray or tuple, optional
        Array for the result, (total_q, H, dv); with `return_lse`, a pair
        ``(out, lse_out)``, either of which may be None.
    num_threads : int, optional
        Threads per sequence (default: `attnx.max_threads()`).

    Returns
    -------
    out : ndarray, shape (total_q, H, dv)
    lse : ndarray, shape (total_q, H)
        Only with ``return_lse=True``.

    Notes
    -----
    One `attention` call of the C core per sequence, the GIL released over
    the whole loop. The C core reads query, key and value rows contiguous
    (row stride d), so with more than one head each sequence is gathered
    head-major into scratch sized for the longest sequence (not for the
    whole batch; no copy with one head), and its result, written
    head-major, is scattered back into `out`. A sequence with no keys gives
    zeros and ``lse = -inf``.

    Examples
    --------
    Two sequences, of 3 and 5 tokens, against attending each on its own:

    >>> import numpy as np, attnx
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.standard_normal((3, 8, 2, 4))           # (total, H, d)
    >>> cu = np.array([0, 3, 8], dtype=np.int32)
    >>> o = attnx.attend_varlen(q, k, v, cu, cu, causal=True)
    >>> o.shape
    (8, 2, 4)
    >>> first = attnx.attend(q[:3].transpose(1, 0, 2), k[:3].transpose(1, 0, 2),
    ...                      v[:3].transpose(1, 0, 2), causal=True)
    >>> np.allclose(o[:3], first.transpose(1, 0, 2), rtol=1e-14, atol=1e-14)
    True
    """
    cdef double sc = _as_scale(scale)
    cdef _Shaping sh = _shaping(_varlen_causal(causal), {"window": window, "softcap": softcap})
    enable_gqa = _flag(enable_gqa, "enable_gqa")
    return_lse = _flag(return_lse, "return_lse")
    dt = _work_dtype((query, keys, values))
    q = _as_real(query, "query", dt)
    K = _as_real(keys, "keys", dt)
    V = _as_real(values, "values", dt)
    cq, ck = _varlen_checks(q, K, V, enable_gqa, cu_seqlens_q, cu_seqlens_k)
    cdef Py_ssize_t total_q = q.shape[0], total_k = K.shape[0]
    cdef Py_ssize_t H = q.shape[1], Hkv = K.shape[1], d = q.shape[2], dv = V.shape[2]
    cdef Py_ssize_t G = H // Hkv if Hkv else 1
    cdef Py_ssize_t B = cq.shape[0] - 1
    cdef Py_ssize_t isz = dt.itemsize
    a = None
    cdef ptrdiff_t a_seq = 0, a_head = 0
    if alibi_slopes is not None:
        a = _varlen_slopes(alibi_slopes, dt, B, H)
        a_seq = 0 if B == 1 else a.strides[0] // isz
        a_head = 0 if H == 1 else a.strides[1] // isz
    # outputs
    if return_lse:
        if out is None:
            out = (None, None)
        elif cnp.PyArray_Check(out):
            out = (out, None)
        elif not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError("with return_lse=True, out must be an array for the result or a "
                             "pair (out, lse_out)")
    else:
        out = (out, None)
    ins = [q, K, V, a]
    res = _result(out[0], (total_q, H, dv), ins, dt)
    lse = _result(out[1], (total_q, H), ins + [res], dt) if return_lse else None
    cdef int nt = _threads(num_threads)
    cdef const long long *cqp = <const long long *>_data(cq)
    cdef const long long *ckp = <const long long *>_data(ck)
    cdef Py_ssize_t s, lq, tk, q0, k0, mq = 0, mk = 0
    for s in range(B):
        mq = max(mq, cqp[s + 1] - cqp[s])
        mk = max(mk, ckp[s + 1] - ckp[s])
    # The C core reads query, key and value rows contiguous, d apart, one
    # head after another. With one head (one kv head) the packed rows are
    # that already; else each sequence is gathered head-major into scratch
    # sized for the longest one (not the whole batch), and its result
    # scattered back.
    cdef bint hq = H > 1, hk = Hkv > 1
    scratch = np.empty((mq * H * (d + dv + 1) if hq else 0)
                       + (mk * Hkv * (d + dv) if hk else 0), dt)
    cdef char *qs_ = <char *>_data(scratch)
    cdef char *ks_ = qs_ + (mq * H * d * isz if hq else 0)
    cdef char *vs_ = ks_ + (mk * Hkv * d * isz if hk else 0)
    cdef char *os_ = vs_ + (mk * Hkv * dv * isz if hk else 0)
    cdef char *ls_ = os_ + mq * H * dv * isz
    cdef size_t bshape[2]
    cdef ptrdiff_t qs[2]
    cdef ptrdiff_t ks[2]
    cdef ptrdiff_t vs[2]
    cdef ptrdiff_t als[2]
    bshape[0], bshape[1] = Hkv, G
    ks[1] = vs[1] = 0
    als[0], als[1] = G * a_head, a_head
    cdef ak.attnx_attention_params p
    memset(&p, 0, sizeof(p))
    p.size = sizeof(p)
    p.nbatch, p.batch_shape = 2, bshape
    p.query_strides, p.key_strides, p.value_strides = qs, ks, vs
    p.d, p.dv = d, dv
    if isz == 4:
        _f32_scale(sc)        # the C core rounds it to float32: refused if that is inf
    p.scale = sc
    p.causal = sh.causal
    p.lower_right = 1
    p.window = sh.window_left >= 0 or sh.window_right >= 0
    p.window_left, p.window_right = sh.window_left, sh.window_right
    p.softcap = sh.softcap
    p.num_threads = nt
    if a is not None:
        p.alibi_strides = als
    cdef char *qb = <char *>_data(q)
    cdef char *kb = <char *>_data(K)
    cdef char *vb = <char *>_data(V)
    cdef char *ab = NULL if a is None else <char *>_data(a)
    cdef char *rb = <char *>_data(res)
    cdef char *lrb = NULL if lse is None else <char *>_data(lse)
    cdef Py_ssize_t i
    cdef int rc = 0
    cdef double work = 0
    for s in range(B):
        work += <double>(cqp[s + 1] - cqp[s]) * (ckp[s + 1] - ckp[s])
    work *= H * (d + dv + 1)
    cdef PyThreadState *ts = _release_gil(work >= NOGIL_WORK)
    for s in range(B):
        q0, k0 = cqp[s], ckp[s]
        lq, tk = cqp[s + 1] - q0, ckp[s + 1] - k0
        if lq == 0:
            continue
        if tk == 0:             # nothing to see: zeros, lse -inf
            memset(rb + q0 * H * dv * isz, 0, lq * H * dv * isz)
            if lrb != NULL:
                for i in range(lq * H):
                    if isz == 8:
                        (<double *>lrb)[q0 * H + i] = -INFINITY
                    else:
                        (<float *>lrb)[q0 * H + i] = -INFINITY
            continue
        qs[0], qs[1] = G * lq * d, lq * d
        ks[0], vs[0] = tk * d, tk * dv
        if hq:
            _swap_axes(qs_, qb + q0 * H * d * isz, lq, H, d * isz)
            p.query = qs_
            p.out = os_
            p.lse = NULL if lrb == NULL else ls_
        else:                   # (lq, 1, d) is (1, lq, d)
            p.query = qb + q0 * d * isz
            p.out = rb + q0 * dv * isz
            p.lse = NULL if lrb == NULL else lrb + q0 * isz
        if hk:
            _swap_axes(ks_, kb + k0 * Hkv * d * isz, tk, Hkv, d * isz)
            _swap_axes(vs_, vb + k0 * Hkv * dv * isz, tk, Hkv, dv * isz)
            p.keys, p.values = ks_, vs_
        else:
            p.keys, p.values = kb + k0 * d * isz, vb + k0 * dv * isz
        p.Lq, p.T = lq, tk
        if ab != NULL:
            p.alibi_slopes = ab + s * a_seq * isz
        rc = ak.attention_f32(&p) if isz == 4 else ak.attention(&p)
        if rc != 0:
            break
        if hq:                  # written (H, lq, dv): back to (lq, H, dv)
            _swap_axes(rb + q0 * H * dv * isz, os_, H, lq, dv * isz)
            if lrb != NULL:
                _swap_axes(lrb + q0 * H * isz, ls_, H, lq, isz)
    _reacquire_gil(ts)
    if rc != 0:
        _raise_status(rc)
    return (res, lse) if return_lse else res


def attend_varlen_backward(grad_out, query, keys, values, out, lse, cu_seqlens_q, cu_seqlens_k,
                           *, scale=1.0, causal=False, window=None, alibi_slopes=None,
                           softcap=None, enable_gqa=False, num_threads=None):
    """Gradients of `attend_varlen` with respect to query, keys and values.

    Parameters
    ----------
    grad_out : array_like, shape (total_q, H, dv)
        Gradient of the loss with respect to `attend_varlen`'s result.
    query, keys, values
        The forward's inputs.
    out, lse : array_like, shapes (total_q, H, dv) and (total_q, H)
        What ``attend_varlen(..., return_lse=True)`` returned: real floating
        (an integer, bool or complex array is a TypeError), converted to the
        dtype the work is done in, which grad_out, query, keys and values
        decide (as query, keys and values did the forward's).
    cu_seqlens_q, cu_seqlens_k
        The forward's offsets.
    scale, causal, window, alibi_slopes, softcap, enable_gqa, num_threads
        As given to the forward call (`causal`, `window` and ALiBi aligned
        lower-right, as there).

    Returns
    -------
    grad_query : ndarray, shape (total_q, H, d)
    grad_keys : ndarray, shape (total_k, Hkv, d)
    grad_values : ndarray, shape (total_k, Hkv, dv)
        With grouped (or one shared) kv head, each kv head's gradient sums
        over the query heads that read it. Rows of a sequence with no
        queries or no keys get zeros.

    Notes
    -----
    `attend_backward` once per sequence, on the sequence's head-major
    views (the same tiled C backward, O(T) extra memory, bits independent
    of the thread count); a sequence's query rows are aligned with its keys
    through ``query_offset = T_s - Lq_s``, which is the lower-right
    alignment.

    Examples
    --------
    >>> import numpy as np, attnx
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.standard_normal((3, 8, 2, 4))           # (total, H, d)
    >>> cu = np.array([0, 3, 8], dtype=np.int32)
    >>> o, lse = attnx.attend_varlen(q, k, v, cu, cu, causal=True, return_lse=True)
    >>> dq, dk, dv = attnx.attend_varlen_backward(np.ones_like(o), q, k, v, o, lse, cu, cu,
    ...                                           causal=True)
    >>> h = 1e-6; e = np.zeros_like(q); e[4, 1, 2] = h   # d(sum(o))/dq[4, 1, 2]
    >>> f = lambda x: attnx.attend_varlen(x, k, v, cu, cu, causal=True).sum()
    >>> bool(abs(dq[4, 1, 2] - (f(q + e) - f(q - e)) / (2 * h)) < 1e-8)
    True
    """
    cdef double sc = _as_scale(scale)
    _shaping(_varlen_causal(causal), {"window": window, "softcap": softcap})   # the keywords' own checks
    enable_gqa = _flag(enable_gqa, "enable_gqa")
    dt = _work_dtype((grad_out, query, keys, values))    # out and lse follow it
    q = _as_real(query, "query", dt)
    K = _as_real(keys, "keys", dt)
    V = _as_real(values, "values", dt)
    O = _as_forward_result(out, "out", dt)
    dO = _as_real(grad_out, "grad_out", dt)
    L = _as_forward_result(lse, "lse", dt)
    cq, ck = _varlen_checks(q, K, V, enable_gqa, cu_seqlens_q, cu_seqlens_k)
    total_q, H, d = q.shape
    total_k, Hkv, dv = V.shape
    if O.shape != (total_q, H, dv):
        raise ValueError(f"out has shape {O.shape}, but the forward's result has shape "
                         f"{(total_q, H, dv)}: pass the out that attend_varlen returned")
    if dO.shape != O.shape:
        raise ValueError(f"grad_out has shape {dO.shape}; it must have the shape of out, "
                         f"{(total_q, H, dv)}")
    if L.shape != (total_q, H):
        raise ValueError(f"lse has shape {L.shape}, but the forward's lse has shape "
                         f"{(total_q, H)}: pass the lse that attend_varlen(..., "
                         f"return_lse=True) returned")
    B = cq.shape[0] - 1
    a = None
    if alibi_slopes is not None:
        a = _varlen_slopes(alibi_slopes, dt, B, H)
    gq = np.zeros((total_q, H, d), dt)
    gk = np.zeros((total_k, Hkv, d), dt)
    gv = np.zeros((total_k, Hkv, dv), dt)
    gqa = Hkv != H and Hkv != 1
    for s in range(B):
        q0, q1, k0, k1 = int(cq[s]), int(cq[s + 1]), int(ck[s]), int(ck[s + 1])
        if q1 == q0 or k1 == k0:
            continue              # no query, or no key: no weight, no gradient
        hm = lambda x, a0, a1: x[a0:a1].transpose(1, 0, 2)   # (heads, rows, .)
        g = attend_backward(hm(dO, q0, q1), hm(q, q0, q1), hm(K, k0, k1), hm(V, k0, k1),
                            hm(O, q0, q1), L[q0:q1].T, scale=sc, causal=bool(causal),
                            query_offset=(k1 - k0) - (q1 - q0), window=window,
                            alibi_slopes=None if a is None else a[s], softcap=softcap,
                            enable_gqa=gqa, num_threads=num_threads)
        gq[q0:q1] = g[0].transpose(1, 0, 2)
        gk[k0:k1] = g[1].transpose(1, 0, 2)
        gv[k0:k1] = g[2].transpose(1, 0, 2)
    return gq, gk, gv


# --- gradients ------------------------------------------------------------------

cdef object _unbroadcast(object g, tuple shape):
    """g summed over the leading dimensions that `shape` broadcast from (the
    gradient of a broadcast operand)."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and g.shape[lead + i] != 1)
    r = np.asarray(g.sum(axis=axes)).reshape(shape)   # a 0-d bias: a 0-d array (ascontiguousarray makes it 1-d)
    return r if r.flags.c_contiguous else np.ascontiguousarray(r)


def attend_backward(grad_out, query, keys, values, out, lse, *, scale=1.0, mask=None,
                    causal=False, key_offset=0, query_offset=0, num_threads=None,
                    bias=None, alibi_slopes=None, enable_gqa=False, window=None,
                    key_lengths=None, softcap=None, grad_bias=False):
    """Gradients of `attend` with respect to query, keys and values (and bias).

    The FlashAttention-2 backward: the attention weights are recomputed from
    the forward's `lse`, tile by tile, and never stored, so the extra memory
    is O(T) per thread (no Lq x T buffer); no two threads add into the same
    output, and the result is bit for bit the same at any thread count.

    Parameters
    ----------
    grad_out : array_like, shape of `out`
        Gradient of the loss with respect to the forward's result.
    query, keys, values
        The forward's inputs (``values=None``: the keys serve as values, and
        `grad_keys` includes both roles).
    out, lse : array_like
        What ``attend(query, keys, values, ..., return_lse=True)`` returned:
        real floating (an integer, bool or complex array is a TypeError),
        converted to the dtype the work is done in, which grad_out, query,
        keys and values decide (as query, keys and values did the forward's).
    scale, mask, causal, key_offset, query_offset, num_threads
        As given to the forward call.
    bias, alibi_slopes, enable_gqa, window, key_lengths, softcap
        As given to the forward call: the weights are recomputed with them
        (the softcap's tanh derivative included). With `enable_gqa`, each kv
        head's gradient sums over its query group. The ALiBi slopes get no
        gradient.
    grad_bias : bool
        Also return the gradient with respect to `bias`, shaped like the bias
        as given (summed over the dimensions it broadcasts over). It passes
        through a buffer of the scores' full shape (..., Lq, T).

    Returns
    -------
    grad_query, grad_keys, grad_values : ndarray
        Shaped like query, keys and values (a broadcast operand's gradient is
        summed over its broadcast dimensions); `grad_values` is None when
        `values` is None.
    grad_bias : ndarray
        With ``grad_bias=True`` only: shaped like `bias`.

    Examples
    --------
    >>> import numpy as np, attnx
    >>> rng = np.random.default_rng(0)
    >>> q, K, V = rng.standard_normal(4), rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    >>> out, lse = attnx.attend(q, K, V, return_lse=True)
    >>> dq, dK, dV = attnx.attend_backward(np.ones(3), q, K, V, out, lse)
    >>> h = 1e-6; e = np.eye(4)[0] * h          # d(sum(out))/dq[0] by central differences
    >>> fd = (attnx.attend(q + e, K, V).sum() - attnx.attend(q - e, K, V).sum()) / (2 * h)
    >>> bool(abs(dq[0] - fd) < 1e-8)
    True
    """
    cdef double sc = _as_scale(scale)
    cdef ptrdiff_t qoff, koff
    _offsets(query_offset, key_offset, &qoff, &koff)
    cdef _Shaping sh = _shaping(causal, {"bias": bias, "alibi_slopes": alibi_slopes,
                                         "enable_gqa": enable_gqa, "window": window,
                                         "key_lengths": key_lengths, "softcap": softcap})
    grad_bias = _flag(grad_bias, "grad_bias")
    if grad_bias and bias is None:
        raise ValueError("grad_bias=True asks for the gradient of a bias, but no bias was given")
    shared = values is None
    dt = _work_dtype((grad_out, query, keys, values))    # out and lse follow it
    q = _as_real(query, "query", dt)
    K = _as_real(keys, "keys", dt)
    V = K if shared else _as_real(values, "values", dt)
    O = _as_forward_result(out, "out", dt)
    dO = _as_real(grad_out, "grad_out", dt)
    L = _as_forward_result(lse, "lse", dt)
    _check_qkv(q, K, V)
    if sh.causal and not sh.lower_right and q.ndim == 1 and qoff == 0 and koff == 0:
        raise ValueError(_CAUSAL_SINGLE)      # as the forward: it would see key 0 only
    q_shape, k_shape, v_shape = q.shape, K.shape, V.shape
    q, K, V, single, Lq, T, d, dv, batch, ext = _qkv_layout(q, K, V, sh)
    ctx_shape = ext + ((dv,) if single else (Lq, dv))
    lse_shape = ext + (() if single else (Lq,))
    if O.shape != ctx_shape:
        raise ValueError(f"out has shape {O.shape}, but the forward's result has shape "
                         f"{ctx_shape}: pass the out that attend returned")
    if dO.shape != ctx_shape:
        raise ValueError(f"grad_out has shape {dO.shape}; it must have the shape of out, "
                         f"{ctx_shape}")
    if L.shape != lse_shape:
        raise ValueError(f"lse has shape {L.shape}, but the forward's lse has shape "
                         f"{lse_shape}: pass the lse that attend(..., return_lse=True) returned")
    cdef _Call c = _call_params(sh, q, K, V, batch, ext, single, Lq, T, d, dv, sc, mask, dt,
                                qoff, koff, _threads(num_threads))
    O = np.ascontiguousarray(O).reshape(batch + ((dv,) if single else (Lq, dv)))
    dO = np.ascontiguousarray(dO).reshape(O.shape)
    L = np.ascontiguousarray(L).reshape(batch + (() if single else (Lq,)))
    if single:   # a query axis of 1, as the C backward's rows
        O, dO, L = O[..., None, :], dO[..., None, :], L[..., None]
    cdef size_t nb = len(batch), i
    cdef ptrdiff_t os_[32]
    cdef ptrdiff_t ds[32]
    cdef ptrdiff_t ls[32]
    cdef Py_ssize_t isz = dt.itemsize
    _fill_strides(O, 2, isz, batch, os_)
    _fill_strides(dO, 2, isz, batch, ds)
    _fill_strides(L, 1, isz, batch, ls)
    gq = np.empty(batch + (Lq, d), dt)
    gk = np.empty(batch + (T, d), dt)
    gv = np.empty(batch + (T, dv), dt)
    gb = np.empty(batch + (Lq, T), dt) if grad_bias else None
    c.p.out, c.p.lse = _data(O), _data(L)
    if gb is not None:
        c.p.grad_bias = _data(gb)
    cdef void *dop = _data(dO)
    cdef void *gqp = _data(gq)
    cdef void *gkp = _data(gk)
    cdef void *gvp = _data(gv)
    cdef bint f32 = dt is _FLOAT32
    cdef int rc
    rows = 1
    for i in range(nb):
        rows *= batch[i]
    cdef PyThreadState *ts = _release_gil(rows * Lq * T * (d + dv + 1) >= NOGIL_WORK)
    if f32:
        rc = ak.attention_backward_f32(&c.p, dop, ds, os_, ls, gqp, gkp, gvp)
    else:
        rc = ak.attention_backward(&c.p, dop, ds, os_, ls, gqp, gkp, gvp)
    _reacquire_gil(ts)
    if rc != 0:
        _raise_status(rc)
    if single:
        gq = gq[..., 0, :]
    if sh.gqa:   # (..., Hkv, G, .): the query heads back, kv heads summed over G
        gq = gq.reshape(ext + gq.shape[len(batch):])
        gk = gk.sum(axis=len(batch) - 1)
        gv = gv.sum(axis=len(batch) - 1)
    gq = _unbroadcast(gq, q_shape)
    res = (gq, _unbroadcast(gk + gv, k_shape), None) if shared else \
        (gq, _unbroadcast(gk, k_shape), _unbroadcast(gv, v_shape))
    if gb is not None:
        gb = gb.reshape(ext + ((T,) if single else (Lq, T)))
        res += (_unbroadcast(gb, tuple(np.shape(c.bias))),)
    return res


# --- merging partial results ----------------------------------------------------

def merge_attention(outs, lses, *, out=None):
    """Combine attention results computed over disjoint sets of keys.

    Given P partial results ``(out_p, lse_p)`` from ``attend(...,
    return_lse=True)`` over P chunks of the keys, returns what attention over
    all the keys gives: ``lse = log(sum_p exp(lse_p))`` and ``out = sum_p
    exp(lse_p - lse) * out_p``. Computed max-first in float64 in the order
    p = 0, 1, ..., so nothing overflows and the result is the same bits every
    time. This is the reduction of split-K decoding, of `attnx.dask` and of
    ring attention.

    Parameters
    ----------
    outs : array_like, shape (P, ..., dv), or a sequence of P arrays (..., dv)
        The partial contexts.
    lses : array_like, shape (P, ...), or a sequence of P arrays (...)
        Their logsumexps. Leading dimensions of ``outs[p]`` without its last
        and of ``lses[p]`` broadcast together.
    out : ndarray or tuple, optional
        An array for the merged context, or a pair ``(out, lse_out)``, either
        of which may be None.

    Returns
    -------
    out : ndarray, shape (..., dv)
    lse : ndarray, shape (...)
        float32 when every partial is float32, else float64.

    Notes
    -----
    A partial with ``lse = -inf`` (every key of its chunk masked) weighs
    nothing, and its context is not read; when all are ``-inf`` the result is
    zeros and ``-inf``, as attention over nothing. A NaN in any ``lse_p``
    makes that row NaN; a NaN in an ``out_p`` of non-zero weight reaches the
    merged context as arithmetic does.

    Examples
    --------
    >>> import numpy as np, attnx
    >>> rng = np.random.default_rng(0)
    >>> q, K, V = rng.standard_normal(4), rng.standard_normal((10, 4)), rng.standard_normal((10, 3))
    >>> parts = [attnx.attend(q, K[i:i + 5], V[i:i + 5], return_lse=True) for i in (0, 5)]
    >>> ctx, lse = attnx.merge_attention([o for o, _ in parts], [l for _, l in parts])
    >>> np.allclose(ctx, attnx.attend(q, K, V), rtol=1e-14)
    True
    """
    if isinstance(outs, (list, tuple)):
        if not isinstance(lses, (list, tuple)):
            raise TypeError("outs is a sequence, so lses must be one too")
        if len(outs) != len(lses):
            raise ValueError(f"outs holds {len(outs)} partial results but lses holds "
                             f"{len(lses)}: one lse per partial result")
        if len(outs) == 0:
            raise ValueError("merge_attention needs at least one partial result (P = 0)")
        dt = _work_dtype(tuple(outs) + tuple(lses))
        O = [_as_real(o, f"outs[{i}]", dt) for i, o in enumerate(outs)]
        Ls = [_as_real(x, f"lses[{i}]", dt) for i, x in enumerate(lses)]
        for i, o in enumerate(O):
            if o.ndim < 1:
                raise ValueError(f"outs[{i}] has shape {o.shape}: expected (..., dv)")
        try:
            shape = np.broadcast_shapes(*[o.shape[:-1] for o in O], *[x.shape for x in Ls])
        except ValueError:
            raise ValueError("the partial results do not broadcast together: outs shapes "
                             f"{[o.shape for o in O]}, lses shapes {[x.shape for x in Ls]}") from None
        dvs = {o.shape[-1] for o in O}
        if len(dvs) != 1:
            raise ValueError(f"outs have different last dimensions (dv): {[o.shape for o in O]}")
        dv = dvs.pop()
        Oa = np.empty((len(O),) + shape + (dv,), dt)
        La = np.empty((len(O),) + shape, dt)
        for i in range(len(O)):
            Oa[i] = O[i]
            La[i] = Ls[i]
    else:
        dt = _work_dtype((outs, lses))
        Oa = _as_real(outs, "outs", dt)
        La = _as_real(lses, "lses", dt)
        if Oa.ndim < 2:
            raise ValueError(f"outs has shape {Oa.shape}: expected (P, ..., dv)")
        if La.ndim < 1 or La.shape[0] != Oa.shape[0]:
            raise ValueError(f"outs has shape {Oa.shape} but lses has shape {La.shape}: "
                             f"both start with the number of partial results P")
        if Oa.shape[0] == 0:
            raise ValueError("merge_attention needs at least one partial result (P = 0)")
        try:
            shape = np.broadcast_shapes(Oa.shape[1:-1], La.shape[1:])
        except ValueError:
            raise ValueError(f"outs has shape {Oa.shape} and lses has shape {La.shape}: "
                             f"{Oa.shape[1:-1]} and {La.shape[1:]} do not broadcast") from None
        dv = Oa.shape[-1]
        Oa = np.ascontiguousarray(np.broadcast_to(Oa, (Oa.shape[0],) + shape + (dv,)))
        La = np.ascontiguousarray(np.broadcast_to(La, (La.shape[0],) + shape))
    if out is None:
        out = (None, None)
    elif cnp.PyArray_Check(out):
        out = (out, None)
    elif not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError("out must be an array for the merged context or a pair (out, lse_out)")
    ins = [Oa, La]
    res = _result(out[0], shape + (dv,), ins, dt)
    lse = _result(out[1], shape, ins + [res], dt)
    cdef size_t P = Oa.shape[0], rows = La[0].size, cdv = dv
    cdef void *op = _data(Oa)
    cdef void *lp = _data(La)
    cdef void *rp = _data(res)
    cdef void *sp = _data(lse)
    cdef bint f32 = dt is _FLOAT32
    cdef int rc
    cdef PyThreadState *ts = _release_gil(P * rows * (cdv + 1) >= NOGIL_WORK)
    if f32:
        rc = ak.merge_attention_f32(P, rows, cdv, <float *>op, <float *>lp, <float *>rp,
                                    <float *>sp)
    else:
        rc = ak.merge_attention(P, rows, cdv, <double *>op, <double *>lp, <double *>rp,
                                <double *>sp)
    _reacquire_gil(ts)
    if rc != 0:
        _raise_status(rc)
    return res, lse


# --- score functions (Luong's general, Bahdanau's additive) --------------------

def general_score(query, keys, W, *, scale=1.0, out=None, num_threads=None):
    """Luong's "general" score, ``scale * query^T W key`` for every key.

    Computed as a dot product of ``W^T query`` with each key (one small
    matrix-vector product, then the dot-score kernel), never as a matrix
    product per key.

    Parameters
    ----------
    query : array_like, shape (dq,) or (..., Lq, dq)
    keys : array_like, shape (..., T, dk)
    W : array_like, shape (dq, dk)
    scale, out, num_threads
        As in `dot_score`.

    Returns
    -------
    ndarray, shape (..., T) or (..., Lq, T)

    Examples
    --------
    >>> import numpy as np, attnx
    >>> q, keys = np.array([1.0, 2.0]), np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    >>> W = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    >>> print(attnx.general_score(q, keys, W))     # q @ W @ k for each key
    [3. 0.]
    """
    cdef double sc = _as_scale(scale)
    u = _general_query(query, W, keys)
    return dot_score(u, keys, scale=sc, out=out, num_threads=num_threads)


cdef object _general_query(object query, object W, object keys):
    """W^T query, once the shapes of query, W and keys are known to fit (the
    errors name the arrays the caller passed, not this product)."""
    dt = _work_dtype((query, W))
    q = _as_real(query, "query", dt)
    Wm = _as_real(W, "W", dt)
    if Wm.ndim != 2:
        raise ValueError(f"W must have shape (dq, dk), got shape {Wm.shape}")
    if q.ndim < 1 or q.shape[-1] != Wm.shape[0]:
        raise ValueError(f"query has shape {q.shape} but W has shape {Wm.shape}: "
                         f"the query's last dimension must be W's first")
    kshape = keys.shape if cnp.PyArray_Check(keys) else np.shape(keys)
    if len(kshape) < 2 or kshape[-1] != Wm.shape[1]:
        raise ValueError(f"keys has shape {kshape} but W has shape {Wm.shape} (query {q.shape}): "
                         f"expected keys (..., T, dk) with dk = W's last dimension")
    return np.ascontiguousarray(q @ Wm)


def project_keys(keys, W_k):
    """Keys projected for additive attention, ``keys @ W_k.T``.

    Computed once per sequence, then reused by every `additive_score` call.

    Parameters
    ----------
    keys : array_like, shape (..., T, dk)
    W_k : array_like, shape (h, dk)

    Returns
    -------
    ndarray, shape (..., T, h), float64, C-contiguous

    Examples
    --------
    >>> import numpy as np, attnx
    >>> attnx.project_keys(np.ones((4, 3)), np.ones((5, 3))).shape
    (4, 5)
    """
    K = _as_f64(keys, "keys")
    Wk = _as_f64(W_k, "W_k")
    if Wk.ndim != 2 or K.ndim < 2 or K.shape[-1] != Wk.shape[1]:
        raise ValueError(f"keys has shape {K.shape} but W_k has shape {Wk.shape}: expected "
                         f"keys (..., T, dk) and W_k (h, dk)")
    return np.ascontiguousarray(K @ Wk.T)


cdef tuple _additive_operands(object query, object keys_proj, object W_q, object v):
    """(W_q query, keys_proj, v) as float64 arrays, A = W_q query C-contiguous,
    after the shape checks of additive_score (its messages)."""
    q = _as_f64(query, "query")
    Kp = _as_f64(keys_proj, "keys_proj")
    Wq = _as_f64(W_q, "W_q")
    vv = _as_f64(v, "v")
    if Wq.ndim != 2 or vv.ndim != 1 or Wq.shape[0] != vv.shape[0]:
        raise ValueError(f"W_q has shape {Wq.shape} and v has shape {vv.shape}: expected "
                         f"W_q (h, dq) and v (h,)")
    if q.ndim < 1 or q.shape[-1] != Wq.shape[1]:
        raise ValueError(f"query has shape {q.shape} but W_q has shape {Wq.shape}: the query's "
                         f"last dimension must be W_q's second")
    if Kp.ndim < 2 or Kp.shape[-1] != vv.shape[0]:
        raise ValueError(f"keys_proj has shape {Kp.shape} but v has shape {vv.shape}: expected "
                         f"keys_proj (..., T, h)")
    return np.ascontiguousarray(q @ Wq.T), Kp, vv      # A: (..., h) or (..., Lq, h)


def additive_score(query, keys_proj, W_q, v, *, out=None, num_threads=None):
    """Bahdanau's additive (concat) score, ``v^T tanh(W_q query + keys_proj[t])``.

    Parameters
    ----------
    query : array_like, shape (dq,) or (..., Lq, dq)
    keys_proj : array_like, shape (..., T, h)
        The keys projected once by `project_keys` (``keys @ W_k.T``).
    W_q : array_like, shape (h, dq)
    v : array_like, shape (h,)
    out, num_threads
        As in `dot_score`.

    Returns
    -------
    ndarray, shape (..., T) or (..., Lq, T)

    Notes
    -----
    One fused pass over ``keys_proj`` per query: the tanh (attnx's own,
    vectorised, 0.62 ulp measured) and the dot with `v` never materialise
    the (T, h) intermediate. Additive scores are computed in float64 for
    every input type (there is no float32 tanh kernel), and so is
    ``attend(score="additive")``.

    Examples
    --------
    >>> import numpy as np, attnx
    >>> rng = np.random.default_rng(0)
    >>> keys, q = rng.standard_normal((6, 4)), rng.standard_normal(3)
    >>> W_k, W_q, v = rng.standard_normal((5, 4)), rng.standard_normal((5, 3)), rng.standard_normal(5)
    >>> s = attnx.additive_score(q, attnx.project_keys(keys, W_k), W_q, v)
    >>> np.allclose(s, np.tanh(W_q @ q + keys @ W_k.T) @ v)
    True
    """
    A, Kp, vv = _additive_operands(query, keys_proj, W_q, v)
    single = A.ndim == 1
    h, T = vv.shape[0], Kp.shape[-2]
    Lq = 1 if single else A.shape[-2]
    batch = _broadcast_batch([(A, 1 if single else 2, "query"), (Kp, 2, "keys_proj")])
    shape = batch + ((T,) if single else (Lq, T))
    res = _result(out, shape, [A, Kp, vv])
    cdef int nt = _threads(num_threads)
    cdef size_t bshape[32]
    cdef ptrdiff_t as_[32]
    cdef ptrdiff_t ks[32]
    cdef size_t nb = len(batch), i
    for i in range(nb):
        bshape[i] = batch[i]
    _fill_strides(A, 1 if single else 2, 8, batch, as_)
    _fill_strides(Kp, 2, 8, batch, ks)
    cdef int rc
    cdef double *ap = <double *>_data(A)
    cdef double *kpp = <double *>_data(Kp)
    cdef double *vp = <double *>_data(vv)
    cdef double *rp = <double *>_data(res)
    cdef size_t cLq = Lq, cT = T, ch = h
    cdef PyThreadState *ts = _release_gil(res.size * h >= NOGIL_WORK)
    rc = ak.additive_scores_batch(ap, kpp, vp, nb, bshape, as_, ks, cLq, cT, ch, rp, nt)
    _reacquire_gil(ts)
    if rc != 0:
        _raise_status(rc)
    return res


# --- KVCache ----------------------------------------------------------------------

cdef class KVCache:
    """Keys and values of a decoding loop, kept ready between steps.

    Holds the keys in one contiguous (capacity, d) buffer and the values in
    another (capacity, dv), appends rows in place (amortised doubling: existing
    rows are copied only when the capacity is exceeded) and attends over the
    rows held so far. ``attend(q, out=out)`` on a float64 query is the lowest
    overhead path attnx has: one C call over buffers it owns.

    Parameters
    ----------
    d : int
        Key (and query) width.
    dv : int, optional
        Value width. None (default): the values are the keys themselves, as
        in the tutorial, and `append` takes only keys.
    capacity : int, optional
        Rows to reserve up front (default 64).
    dtype : {numpy.float64, numpy.float32}, optional
        Storage and compute type. float32 halves the memory and runs the
        float32 kernels (twice the lanes); queries are converted to it.

    Examples
    --------
    >>> import numpy as np, attnx
    >>> cache = attnx.KVCache(3, capacity=2)
    >>> for h in [[3, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]]:
    ...     cache.append(h)
    >>> len(cache), cache.capacity          # grew once, to at least 16 rows
    (4, 16)
    >>> print(cache.attend(np.array([5., 1., 20.])).round(8))
    [ 3.88079708  4.0728263  45.26423912]
    """
    cdef readonly Py_ssize_t d
    cdef readonly Py_ssize_t dv
    cdef readonly Py_ssize_t length
    cdef readonly Py_ssize_t capacity
    cdef readonly bint shared
    cdef readonly object dtype
    cdef bint _f32
    cdef object _K
    cdef object _V
    cdef object _Kro     # read-only views of _K and _V (for keys/values)
    cdef object _Vro
    # Held by every change of the state (append, extend, reserve, clear, a
    # re-__init__) and by readers while they take a snapshot of it (buffers,
    # length, widths), never while converting input (an __array__ may call
    # back into the cache) nor during a computation. The buffers are never
    # written below `length`: a change that would (clear, re-__init__)
    # installs new ones, so an attend that released the GIL keeps reading
    # the rows it started with.
    cdef cython.pymutex _lock

    def __init__(self, d, dv=None, *, capacity=64, dtype=np.float64):
        # validate and allocate first: a failure leaves the cache as it was
        cdef Py_ssize_t nd = _size(d, "d", "an integer")
        cdef Py_ssize_t ncap = _size(capacity, "capacity", "an integer")
        if nd < 0 or ncap < 0:
            raise ValueError(f"d and capacity must be >= 0, got d={nd}, capacity={ncap}")
        cdef bint shared = dv is None
        cdef Py_ssize_t ndv = nd if shared else _size(dv, "dv", "an integer or None")
        if ndv < 0:
            raise ValueError(f"dv must be >= 0, got {dv}")
        dt = np.dtype(dtype)
        if dt != _FLOAT64 and dt != _FLOAT32:
            raise TypeError(f"dtype must be float64 or float32, got {dt}")
        dt = _FLOAT32 if dt == _FLOAT32 else _FLOAT64
        K, V = _cache_buffers(f"KVCache(d={nd}, dv={ndv}, capacity={ncap})", ncap, nd, ndv,
                              dt, shared)
        with self._lock:
            self.shared = shared
            self.d = nd
            self.dv = ndv
            self.dtype = dt
            self._f32 = dt is _FLOAT32
            self.length = 0
            self._install(K, V)

    def __len__(self):
        return self.length

    def __repr__(self):
        return (f"KVCache(d={self.d}, dv={None if self.shared else self.dv}, "
                f"length={self.length}, capacity={self.capacity}, dtype={self.dtype})")

    cdef void _install(self, K, V) noexcept:
        """Make K and V the buffers (under the lock)."""
        self._K = K
        self._V = V
        self.capacity = (<cnp.ndarray>K).shape[0]
        # views over a read-only memoryview: no one can set them writeable
        self._Kro = np.asarray(memoryview(K).toreadonly())
        self._Vro = self._Kro if V is K else np.asarray(memoryview(V).toreadonly())

    # inspect.signature(KVCache): a cdef class has no introspectable __init__
    __signature__ = inspect.Signature([
        inspect.Parameter("d", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("dv", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        inspect.Parameter("capacity", inspect.Parameter.KEYWORD_ONLY, default=64),
        inspect.Parameter("dtype", inspect.Parameter.KEYWORD_ONLY, default=np.float64),
    ])

    @classmethod
    def __class_getitem__(cls, item):
        """``KVCache[np.float32]``: the stubs make KVCache generic over its
        dtype; at run time the subscript is only an annotation."""
        return types.GenericAlias(cls, item)

    def __reduce__(self):
        """Pickle the rows held (not the spare capacity)."""
        with self._lock:
            K = np.array(self._K[:self.length])
            V = None if self.shared else np.array(self._V[:self.length])
        return (_kvcache_restore,
                (self.d, None if self.shared else self.dv, self.dtype.name, K, V))

    @property
    def keys(self):
        """The keys held, a read-only (length, d) view."""
        with self._lock:
            return self._Kro[:self.length]

    @property
    def values(self):
        """The values held, a read-only (length, dv) view."""
        with self._lock:
            return self._Vro[:self.length]

    cdef int _reserve(self, Py_ssize_t n) except -1:
        """Room for n rows, doubling the capacity when it must grow (under the
        lock; allocates, but calls no user code)."""
        if n <= self.capacity:
            return 0
        cdef Py_ssize_t cap = max(n, 2 * self.capacity, 16)
        K, V = _cache_buffers(f"KVCache(d={self.d}, dv={self.dv}, capacity={self.capacity}) "
                              f"growing to {cap} rows", cap, self.d, self.dv, self.dtype,
                              self.shared)
        K[:self.length] = self._K[:self.length]
        if not self.shared:
            V[:self.length] = self._V[:self.length]
        self._install(K, V)
        return 0

    def reserve(self, n):
        """Make room for at least n rows in total.

        Parameters
        ----------
        n : int
            Rows the cache can then hold without growing (it never shrinks).
        """
        cdef Py_ssize_t rows = _size(n, "n", "an integer")
        if rows < 0:
            raise ValueError(f"n must be >= 0, got {rows}")
        with self._lock:
            self._reserve(rows)

    cdef bint _fast_row(self, k, v) noexcept:
        """k (and v) are float64 rows this cache can copy as they are."""
        return (not self._f32 and _is_f64(k, _IN_FLAGS)
                and cnp.PyArray_NDIM(<cnp.ndarray>k) == 1
                and cnp.PyArray_DIMS(<cnp.ndarray>k)[0] == self.d
                and ((self.shared and v is None) or (
                    not self.shared and _is_f64(v, _IN_FLAGS)
                    and cnp.PyArray_NDIM(<cnp.ndarray>v) == 1
                    and cnp.PyArray_DIMS(<cnp.ndarray>v)[0] == self.dv)))

    def append(self, k, v=None):
        """Add one key and, unless the values are the keys, one value.

        Parameters
        ----------
        k : array_like, shape (d,)
            The key row (converted to the cache's dtype).
        v : array_like, shape (dv,), optional
            The value row: required when the cache was made with `dv`, and
            refused when its values are its keys (``dv=None``).
        """
        if not self._fast_row(k, v):
            # convert outside the lock: an array-like's __array__ may append
            # to this very cache
            if self.shared and v is not None:
                raise ValueError("this cache's values are its keys (dv=None): append(k) only")
            if not self.shared and v is None:
                raise ValueError("append(k, v) needs a value row: this cache has dv="
                                 f"{self.dv}")
            k = _as_real(k, "k", self.dtype)
            if not self.shared:
                v = _as_real(v, "v", self.dtype)
        with self._lock:
            self._append(k, v)

    cdef int _append(self, k, v) except -1:
        """Under the lock; k and v converted (the cache may have been
        re-initialised since: checked again here)."""
        if self._fast_row(k, v) and self.length < self.capacity:
            memcpy(_dptr(<cnp.ndarray>self._K) + self.length * self.d,
                   _dptr(<cnp.ndarray>k), self.d * sizeof(double))
            if not self.shared:
                memcpy(_dptr(<cnp.ndarray>self._V) + self.length * self.dv,
                       _dptr(<cnp.ndarray>v), self.dv * sizeof(double))
            self.length += 1
            return 0
        if self.shared != (v is None):
            raise ValueError("the cache was re-initialised while appending: values do not match")
        if k.dtype != self.dtype or k.shape != (self.d,):
            raise ValueError(f"k has shape {k.shape}, expected ({self.d},)")
        if not self.shared and (v.dtype != self.dtype or v.shape != (self.dv,)):
            raise ValueError(f"v has shape {v.shape}, expected ({self.dv},)")
        self._reserve(self.length + 1)
        self._K[self.length] = k
        if not self.shared:
            self._V[self.length] = v
        self.length += 1
        return 0

    def extend(self, keys, values=None):
        """Add many rows at once, in order.

        Parameters
        ----------
        keys : array_like, shape (n, d)
        values : array_like, shape (n, dv), optional
            Required exactly when the cache was made with `dv`.
        """
        if self.shared != (values is None):
            raise ValueError("values must be given exactly when the cache was made with dv")
        K = _as_real(keys, "keys", self.dtype)      # outside the lock, as in append
        V = None if values is None else _as_real(values, "values", self.dtype)
        with self._lock:
            self._extend(K, V)

    cdef int _extend(self, K, V) except -1:
        if K.dtype != self.dtype or K.ndim != 2 or K.shape[1] != self.d:
            raise ValueError(f"keys has shape {K.shape}, expected (n, {self.d})")
        if self.shared != (V is None):
            raise ValueError("values must be given exactly when the cache was made with dv")
        if not self.shared:
            if V.dtype != self.dtype or V.shape != (K.shape[0], self.dv):
                raise ValueError(f"keys has shape {K.shape} but values has shape {V.shape}: "
                                 f"expected ({K.shape[0]}, {self.dv})")
        n = K.shape[0]
        self._reserve(self.length + n)
        self._K[self.length:self.length + n] = K
        if not self.shared:
            self._V[self.length:self.length + n] = V
        self.length += n
        return 0

    def clear(self):
        """Forget every row (the capacity stays). An attend running in another
        thread keeps reading the rows it started with: the cache moves to new
        buffers rather than overwriting those."""
        K = np.empty((self.capacity, self.d), dtype=self.dtype)
        V = K if self.shared else np.empty((self.capacity, self.dv), dtype=self.dtype)
        with self._lock:
            if K.shape[1] != self.d or V.shape[1] != self.dv or (V is K) != self.shared \
                    or K.dtype != self.dtype:
                # re-initialised meanwhile: allocate for what it is now
                K = np.empty((self.capacity, self.d), dtype=self.dtype)
                V = K if self.shared else np.empty((self.capacity, self.dv), dtype=self.dtype)
            self.length = 0
            self._install(K, V)

    def attend(self, query, *, scale=1.0, out=None, return_weights=False,
               num_threads=None):
        """Attention of `query` over the rows held: as
        ``attnx.attend(query, cache.keys, cache.values, ...)``.

        Parameters
        ----------
        query : array_like, shape (d,) or (..., Lq, d)
        scale : float, optional
            Score factor (default 1.0; ``1/sqrt(d)`` for scaled dot-product).
        out : ndarray, optional
            Array for the context, (dv,) or (..., Lq, dv) of the cache's
            dtype; with `return_weights`, a pair ``(context, weights)``.
        return_weights : bool, optional
            Also return the weights over the rows held.
        num_threads : int, optional
            As `attnx.attend`.

        Returns
        -------
        context : ndarray
        weights : ndarray
            Only with ``return_weights=True``.
        """
        cdef cnp.ndarray q, Kb, Vb, rb
        cdef int rc
        cdef size_t T, d, dv
        cdef PyThreadState *ts
        cdef bint f32 = self._f32
        cdef int tn = cnp.NPY_FLOAT if f32 else cnp.NPY_DOUBLE
        cdef double sc = _as_scale(scale)
        cdef float sc32 = _f32_scale(sc) if f32 else 0     # a float32 cache works in float32
        if f32 and not _is_type(query, tn, _IN_FLAGS):
            query = _as_real(query, "query", _FLOAT32)    # the cache's type decides
        res = None
        if return_weights is False and num_threads is None and _is_type(query, tn, _IN_FLAGS) \
                and cnp.PyArray_NDIM(<cnp.ndarray>query) == 1:
            res = _fast_out(out, <cnp.npy_intp>self.dv, tn)
        # One snapshot of the state: buffers, rows and widths
        # of the same generation. The local references keep the buffers alive
        # through the call whatever other threads do to the cache meanwhile
        # (grow, clear and re-__init__ install new buffers).
        # (With the GIL the reads below call no Python code: atomic as they are.)
        if ATTNX_FREE_THREADED:
            self._lock.acquire()
        Kb = <cnp.ndarray>self._K
        Vb = <cnp.ndarray>self._V
        T = <size_t>self.length
        d = <size_t>self.d
        dv = <size_t>self.dv
        cdef bint same = self._f32 == f32
        if ATTNX_FREE_THREADED:
            self._lock.release()
        if (res is not None and same
                and <size_t>cnp.PyArray_DIMS(<cnp.ndarray>query)[0] == d
                and <size_t>cnp.PyArray_DIMS(<cnp.ndarray>res)[0] == dv
                and T > 0 and T < SPLIT_MIN_KEYS and T * (d + dv) < SERIAL_WORK):
            q = <cnp.ndarray>query
            rb = <cnp.ndarray>res
            ts = _release_gil(T * (d + dv + 1) >= NOGIL_WORK)
            if tn == cnp.NPY_FLOAT:
                rc = ak.attend_f32(_fptr(q), _fptr(Kb), _fptr(Vb), T, d, dv, sc32, NULL,
                                   _fptr(rb), NULL)
            else:
                rc = ak.attend(_dptr(q), _dptr(Kb), _dptr(Vb), T, d, dv, sc, NULL, _dptr(rb),
                               NULL)
            _reacquire_gil(ts)
            if rc != 0:
                _raise_status(rc)
            return res
        # (the general path: read-only views of the snapshot's rows)
        Ks = np.asarray(memoryview(Kb).toreadonly())[:T]
        Vs = Ks if Vb is Kb else np.asarray(memoryview(Vb).toreadonly())[:T]
        return attend(query, Ks, Vs, scale=sc, out=out, return_weights=return_weights,
                      num_threads=num_threads)


cdef tuple _cache_buffers(str where, Py_ssize_t rows, Py_ssize_t d, Py_ssize_t dv, object dt,
                          bint shared):
    """New (rows, d) key and (rows, dv) value buffers (one, when the values
    are the keys); an allocation that fails says which cache it was for
    (`where`): a MemoryError, or NumPy's ValueError for a size past its
    limit, chained from NumPy's own. (NumPy's MemoryError subclass cannot be
    re-raised with a message alone: its __init__ takes the shape and dtype.)"""
    try:
        K = np.empty((rows, d), dtype=dt)
        V = K if shared else np.empty((rows, dv), dtype=dt)
    except MemoryError as e:
        raise MemoryError(f"{where}: {e}") from e
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    return K, V


def _kvcache_restore(d, dv, dtype, keys, values):
    """Unpickle a KVCache (see KVCache.__reduce__)."""
    cache = KVCache(d, dv, capacity=len(keys), dtype=dtype)
    if len(keys):
        cache.extend(keys, values)
    return cache
