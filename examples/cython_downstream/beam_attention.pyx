# cython: language_level=3
"""A downstream Cython extension using attnx at C level: one attention per
beam of a beam-search decoder, all of it inside `with nogil:`.

`cimport attnx.kernels` resolves the kernels through attnx's C-level export
table at import time: no include path, no linking."""
import numpy as np

cimport attnx.kernels as ak


def attend_beams(const double[:, ::1] queries, const double[:, ::1] keys,
                 const double[:, ::1] values, double scale=1.0):
    """Context vector of every beam's query over the same keys and values."""
    cdef Py_ssize_t B = queries.shape[0], T = keys.shape[0]
    cdef Py_ssize_t d = keys.shape[1], dv = values.shape[1]
    if queries.shape[1] != d or values.shape[0] != T or T == 0 or d == 0 or dv == 0:
        raise ValueError("queries (B, d), keys (T, d), values (T, dv) with T, d, dv >= 1")
    out = np.empty((B, dv))
    cdef double[:, ::1] ctx = out
    cdef int rc = ak.OK
    cdef Py_ssize_t b
    with nogil:
        for b in range(B):
            rc = ak.attend(&queries[b, 0], &keys[0, 0], &values[0, 0], T, d, dv, scale,
                           NULL, &ctx[b, 0], NULL)
            if rc != ak.OK:
                break
    if rc != ak.OK:
        raise ValueError(ak.strerror(rc).decode())
    return out


def beam_scores(double[::1] logits):
    """Softmax of a beam's logits, in place, without the GIL."""
    cdef int rc
    with nogil:
        rc = ak.softmax(&logits[0], logits.shape[0], &logits[0])
    if rc != ak.OK:
        raise ValueError(ak.strerror(rc).decode())
    return np.asarray(logits)
