# cython: language_level=3
"""The compiled core of attnx: the C kernels (csrc/) linked into this one
module, their C-level exports for Cython (kernels.pxd), and the dispatch
queries. attnx._core and downstream extensions both call through here, so a
process holds one copy of the kernels and one dispatch table."""

from cpython.pycapsule cimport PyCapsule_New

cdef extern from "attnx.h" nogil:
    ctypedef struct attnx_api_table:
        unsigned int version
        unsigned int size
    const attnx_api_table *attnx_api()

    int attnx_dot_scores(const double *q, const double *K, size_t T, size_t d,
                         double scale, double *scores)
    int attnx_softmax(const double *x, size_t n, double *y)
    int attnx_context(const double *w, const double *V, size_t T, size_t dv, double *ctx)
    int attnx_attend(const double *q, const double *K, const double *V,
                     size_t T, size_t d, size_t dv, double scale,
                     const unsigned char *mask, double *ctx, double *weights)
    int attnx_exp(const double *x, size_t n, double *y)
    int attnx_dot_scores_batch(const double *Q, const double *K,
                               size_t nbatch, const size_t *batch_shape,
                               const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                               size_t Lq, size_t T, size_t d, double scale,
                               double *scores, int num_threads)
    int attnx_softmax_rows(const double *x, size_t rows, size_t n, double *y,
                           int num_threads)
    int attnx_context_batch(const double *W, const double *V,
                            size_t nbatch, const size_t *batch_shape,
                            const ptrdiff_t *w_strides, const ptrdiff_t *v_strides,
                            size_t Lq, size_t T, size_t dv, double *ctx, int num_threads)
    int attnx_attend_batch(const double *Q, const double *K, const double *V,
                           size_t nbatch, const size_t *batch_shape,
                           const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                           const ptrdiff_t *v_strides,
                           size_t Lq, size_t T, size_t d, size_t dv, double scale,
                           const unsigned char *mask, const ptrdiff_t *mask_strides,
                           ptrdiff_t mask_row_stride, int causal,
                           double *ctx, double *weights, int num_threads)
    int attnx_log_softmax(const double *x, size_t n, double *y)
    int attnx_log_softmax_rows(const double *x, size_t rows, size_t n, double *y,
                               int num_threads)
    int attnx_tanh(const double *x, size_t n, double *y)
    int attnx_additive_scores(const double *a, const double *Kp, const double *v,
                              size_t T, size_t h, double *scores)
    int attnx_additive_scores_batch(const double *A, const double *Kp, const double *v,
                                    size_t nbatch, const size_t *batch_shape,
                                    const ptrdiff_t *a_strides, const ptrdiff_t *kp_strides,
                                    size_t Lq, size_t T, size_t h, double *scores,
                                    int num_threads)
    int attnx_dot_scores_f32(const float *q, const float *K, size_t T, size_t d, float scale,
                             float *scores)
    int attnx_softmax_f32(const float *x, size_t n, float *y)
    int attnx_context_f32(const float *w, const float *V, size_t T, size_t dv, float *ctx)
    int attnx_attend_f32(const float *q, const float *K, const float *V, size_t T, size_t d,
                         size_t dv, float scale, const unsigned char *mask, float *ctx,
                         float *weights)
    int attnx_dot_scores_batch_f32(const float *Q, const float *K, size_t nbatch,
                                   const size_t *batch_shape, const ptrdiff_t *q_strides,
                                   const ptrdiff_t *k_strides, size_t Lq, size_t T, size_t d,
                                   float scale, float *scores, int num_threads)
    int attnx_softmax_rows_f32(const float *x, size_t rows, size_t n, float *y, int num_threads)
    int attnx_context_batch_f32(const float *W, const float *V, size_t nbatch,
                                const size_t *batch_shape, const ptrdiff_t *w_strides,
                                const ptrdiff_t *v_strides, size_t Lq, size_t T, size_t dv,
                                float *ctx, int num_threads)
    int attnx_attend_batch_f32(const float *Q, const float *K, const float *V, size_t nbatch,
                               const size_t *batch_shape, const ptrdiff_t *q_strides,
                               const ptrdiff_t *k_strides, const ptrdiff_t *v_strides, size_t Lq,
                               size_t T, size_t d, size_t dv, float scale, const unsigned char *mask,
                               const ptrdiff_t *mask_strides, ptrdiff_t mask_row_stride, int causal,
                               float *ctx, float *weights, int num_threads)
    int attnx_log_softmax_rows_f32(const float *x, size_t rows, size_t n, float *y, int num_threads)
    int attnx_attention(const attnx_attention_params *params)
    int attnx_attention_f32(const attnx_attention_params *params)
    int attnx_merge_attention(size_t P, size_t rows, size_t dv, const double *outs,
                              const double *lses, double *out, double *lse)
    int attnx_merge_attention_f32(size_t P, size_t rows, size_t dv, const float *outs,
                                  const float *lses, float *out, float *lse)
    int attnx_attention_backward(const attnx_attention_params *params, const void *grad_out,
                                 const ptrdiff_t *grad_out_strides, const ptrdiff_t *out_strides,
                                 const ptrdiff_t *lse_strides, void *grad_query, void *grad_keys,
                                 void *grad_values)
    int attnx_attention_backward_f32(const attnx_attention_params *params, const void *grad_out,
                                     const ptrdiff_t *grad_out_strides,
                                     const ptrdiff_t *out_strides, const ptrdiff_t *lse_strides,
                                     void *grad_query, void *grad_keys, void *grad_values)
    int attnx_additive_attention(const double *A, const double *Kp, const double *v,
                                 const double *V, size_t nbatch, const size_t *batch_shape,
                                 const ptrdiff_t *a_strides, const ptrdiff_t *kp_strides,
                                 const ptrdiff_t *v_strides, size_t Lq, size_t T, size_t h,
                                 size_t dv, const unsigned char *mask,
                                 const ptrdiff_t *mask_strides, ptrdiff_t mask_row_stride,
                                 int causal, ptrdiff_t query_offset, ptrdiff_t key_offset,
                                 double *ctx, double *weights, int num_threads)
    const char *attnx_strerror(int status)
    const char *attnx_simd_level()
    int attnx_set_simd_level(const char *name)
    const char *attnx_simd_available()
    int attnx_max_threads()
    const char *attnx_build_info()


# --- C-level exports (declared in kernels.pxd) -------------------------------

cdef int dot_scores(const double *q, const double *K, size_t T, size_t d,
                    double scale, double *scores) noexcept nogil:
    return attnx_dot_scores(q, K, T, d, scale, scores)

cdef int softmax(const double *x, size_t n, double *y) noexcept nogil:
    return attnx_softmax(x, n, y)

cdef int context(const double *w, const double *V, size_t T, size_t dv,
                 double *ctx) noexcept nogil:
    return attnx_context(w, V, T, dv, ctx)

cdef int attend(const double *q, const double *K, const double *V,
                size_t T, size_t d, size_t dv, double scale,
                const unsigned char *mask, double *ctx, double *weights) noexcept nogil:
    return attnx_attend(q, K, V, T, d, dv, scale, mask, ctx, weights)

cdef int exp(const double *x, size_t n, double *y) noexcept nogil:
    return attnx_exp(x, n, y)

cdef int dot_scores_batch(const double *Q, const double *K,
                          size_t nbatch, const size_t *batch_shape,
                          const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                          size_t Lq, size_t T, size_t d, double scale,
                          double *scores, int num_threads) noexcept nogil:
    return attnx_dot_scores_batch(Q, K, nbatch, batch_shape, q_strides, k_strides,
                                  Lq, T, d, scale, scores, num_threads)

cdef int softmax_rows(const double *x, size_t rows, size_t n, double *y,
                      int num_threads) noexcept nogil:
    return attnx_softmax_rows(x, rows, n, y, num_threads)

cdef int context_batch(const double *W, const double *V,
                       size_t nbatch, const size_t *batch_shape,
                       const ptrdiff_t *w_strides, const ptrdiff_t *v_strides,
                       size_t Lq, size_t T, size_t dv,
                       double *ctx, int num_threads) noexcept nogil:
    return attnx_context_batch(W, V, nbatch, batch_shape, w_strides, v_strides,
                               Lq, T, dv, ctx, num_threads)

cdef int attend_batch(const double *Q, const double *K, const double *V,
                      size_t nbatch, const size_t *batch_shape,
                      const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                      const ptrdiff_t *v_strides,
                      size_t Lq, size_t T, size_t d, size_t dv, double scale,
                      const unsigned char *mask, const ptrdiff_t *mask_strides,
                      ptrdiff_t mask_row_stride, int causal,
                      double *ctx, double *weights, int num_threads) noexcept nogil:
    return attnx_attend_batch(Q, K, V, nbatch, batch_shape, q_strides, k_strides,
                              v_strides, Lq, T, d, dv, scale, mask, mask_strides,
                              mask_row_stride, causal, ctx, weights, num_threads)

cdef int log_softmax(const double *x, size_t n, double *y) noexcept nogil:
    return attnx_log_softmax(x, n, y)

cdef int log_softmax_rows(const double *x, size_t rows, size_t n, double *y,
                          int num_threads) noexcept nogil:
    return attnx_log_softmax_rows(x, rows, n, y, num_threads)

cdef int tanh(const double *x, size_t n, double *y) noexcept nogil:
    return attnx_tanh(x, n, y)

cdef int additive_scores(const double *a, const double *Kp, const double *v,
                         size_t T, size_t h, double *scores) noexcept nogil:
    return attnx_additive_scores(a, Kp, v, T, h, scores)

cdef int additive_scores_batch(const double *A, const double *Kp, const double *v,
                               size_t nbatch, const size_t *batch_shape,
                               const ptrdiff_t *a_strides, const ptrdiff_t *kp_strides,
                               size_t Lq, size_t T, size_t h, double *scores,
                               int num_threads) noexcept nogil:
    return attnx_additive_scores_batch(A, Kp, v, nbatch, batch_shape, a_strides, kp_strides,
                                       Lq, T, h, scores, num_threads)

cdef int dot_scores_f32(const float *q, const float *K, size_t T, size_t d, float scale,
                        float *scores) noexcept nogil:
    return attnx_dot_scores_f32(q, K, T, d, scale, scores)

cdef int softmax_f32(const float *x, size_t n, float *y) noexcept nogil:
    return attnx_softmax_f32(x, n, y)

cdef int context_f32(const float *w, const float *V, size_t T, size_t dv, float *ctx) noexcept nogil:
    return attnx_context_f32(w, V, T, dv, ctx)

cdef int attend_f32(const float *q, const float *K, const float *V, size_t T, size_t d,
                    size_t dv, float scale, const unsigned char *mask, float *ctx,
                    float *weights) noexcept nogil:
    return attnx_attend_f32(q, K, V, T, d, dv, scale, mask, ctx, weights)

cdef int dot_scores_batch_f32(const float *Q, const float *K, size_t nbatch,
                              const size_t *batch_shape, const ptrdiff_t *q_strides,
                              const ptrdiff_t *k_strides, size_t Lq, size_t T, size_t d,
                              float scale, float *scores, int num_threads) noexcept nogil:
    return attnx_dot_scores_batch_f32(Q, K, nbatch, batch_shape, q_strides, k_strides, Lq, T, d, scale, scores, num_threads)

cdef int softmax_rows_f32(const float *x, size_t rows, size_t n, float *y, int num_threads) noexcept nogil:
    return attnx_softmax_rows_f32(x, rows, n, y, num_threads)

cdef int context_batch_f32(const float *W, const float *V, size_t nbatch,
                           const size_t *batch_shape, const ptrdiff_t *w_strides,
                           const ptrdiff_t *v_strides, size_t Lq, size_t T, size_t dv,
                           float *ctx, int num_threads) noexcept nogil:
    return attnx_context_batch_f32(W, V, nbatch, batch_shape, w_strides, v_strides, Lq, T, dv, ctx, num_threads)

cdef int attend_batch_f32(const float *Q, const float *K, const float *V, size_t nbatch,
                          const size_t *batch_shape, const ptrdiff_t *q_strides,
                          const ptrdiff_t *k_strides, const ptrdiff_t *v_strides, size_t Lq,
                          size_t T, size_t d, size_t dv, float scale, const unsigned char *mask,
                          const ptrdiff_t *mask_strides, ptrdiff_t mask_row_stride, int causal,
                          float *ctx, float *weights, int num_threads) noexcept nogil:
    return attnx_attend_batch_f32(Q, K, V, nbatch, batch_shape, q_strides, k_strides, v_strides, Lq, T, d, dv, scale, mask, mask_strides, mask_row_stride, causal, ctx, weights, num_threads)

cdef int log_softmax_rows_f32(const float *x, size_t rows, size_t n, float *y, int num_threads) noexcept nogil:
    return attnx_log_softmax_rows_f32(x, rows, n, y, num_threads)

cdef int attention(const attnx_attention_params *params) noexcept nogil:
    return attnx_attention(params)

cdef int attention_f32(const attnx_attention_params *params) noexcept nogil:
    return attnx_attention_f32(params)

cdef int merge_attention(size_t P, size_t rows, size_t dv, const double *outs,
                         const double *lses, double *out, double *lse) noexcept nogil:
    return attnx_merge_attention(P, rows, dv, outs, lses, out, lse)

cdef int merge_attention_f32(size_t P, size_t rows, size_t dv, const float *outs,
                             const float *lses, float *out, float *lse) noexcept nogil:
    return attnx_merge_attention_f32(P, rows, dv, outs, lses, out, lse)

cdef int attention_backward(const attnx_attention_params *params, const void *grad_out,
                            const ptrdiff_t *grad_out_strides, const ptrdiff_t *out_strides,
                            const ptrdiff_t *lse_strides, void *grad_query, void *grad_keys,
                            void *grad_values) noexcept nogil:
    return attnx_attention_backward(params, grad_out, grad_out_strides, out_strides,
                                    lse_strides, grad_query, grad_keys, grad_values)

cdef int attention_backward_f32(const attnx_attention_params *params, const void *grad_out,
                                const ptrdiff_t *grad_out_strides, const ptrdiff_t *out_strides,
                                const ptrdiff_t *lse_strides, void *grad_query, void *grad_keys,
                                void *grad_values) noexcept nogil:
    return attnx_attention_backward_f32(params, grad_out, grad_out_strides, out_strides,
                                        lse_strides, grad_query, grad_keys, grad_values)

cdef int additive_attention(const double *A, const double *Kp, const double *v,
                            const double *V, size_t nbatch, const size_t *batch_shape,
                            const ptrdiff_t *a_strides, const ptrdiff_t *kp_strides,
                            const ptrdiff_t *v_strides, size_t Lq, size_t T, size_t h,
                            size_t dv, const unsigned char *mask,
                            const ptrdiff_t *mask_strides, ptrdiff_t mask_row_stride,
                            int causal, ptrdiff_t query_offset, ptrdiff_t key_offset,
                            double *ctx, double *weights, int num_threads) noexcept nogil:
    return attnx_additive_attention(A, Kp, v, V, nbatch, batch_shape, a_strides, kp_strides,
                                    v_strides, Lq, T, h, dv, mask, mask_strides,
                                    mask_row_stride, causal, query_offset, key_offset, ctx,
                                    weights, num_threads)

cdef const char *strerror(int status) noexcept nogil:
    return attnx_strerror(status)

cdef const char *simd_level_name() noexcept nogil:
    return attnx_simd_level()


# --- the capsule for C extensions (attnx_capi.h) ------------------------------

cdef const char *_CAPSULE_NAME = "attnx._C_API"
# Points at a static table in this module: valid for the life of the process.
_C_API = PyCapsule_New(<void *>attnx_api(), _CAPSULE_NAME, NULL)


# --- Python-level queries ----------------------------------------------------

def simd_level():
    """Name of the kernel set this process dispatched to.

    One of ``"avx512"``, ``"avx2"``, ``"neon"`` or ``"scalar"``, chosen once
    from what the CPU and the operating system support, and lowered by the
    environment variable ``ATTNX_SIMD`` (``scalar``, ``avx2`` or ``avx512``).

    Examples
    --------
    >>> import attnx
    >>> attnx.simd_level() in {"avx512", "avx2", "neon", "scalar"}
    True
    """
    return attnx_simd_level().decode()


def simd_available():
    """The kernel sets this CPU and build support, best first, as a tuple.

    Examples
    --------
    >>> import attnx
    >>> levels = attnx.simd_available()
    >>> "scalar" in levels and attnx.simd_level() in levels
    True
    """
    return tuple(attnx_simd_available().decode().split())


def build_info():
    """Compiler, flags and threads of the build, as one line.

    Examples
    --------
    >>> import attnx
    >>> "compiler" in attnx.build_info()
    True
    """
    return attnx_build_info().decode()


def max_threads():
    """Threads a call with ``num_threads=None`` may use: the CPUs this process
    may run on (its affinity mask), or fewer when ``ATTNX_NUM_THREADS`` (or
    ``OMP_NUM_THREADS``) says so; 1 in a build without threads.

    Examples
    --------
    >>> import os, attnx
    >>> 1 <= attnx.max_threads() <= (os.cpu_count() or 1)
    True
    """
    return attnx_max_threads()


def _set_simd_level(str name not None):
    """Switch the kernel set for the whole process (for tests only: not safe
    while other threads are inside attnx). ``name`` is a level or "best"."""
    if "\0" in name:
        raise ValueError(f"cannot select SIMD level {name!r}: it holds a NUL character")
    cdef bytes b = name.encode()
    cdef int rc = attnx_set_simd_level(b)
    if rc != 0:
        raise ValueError(f"cannot select SIMD level {name!r}: "
                         f"{attnx_strerror(rc).decode()} (available: {simd_available()})")


def _tanh(const double[::1] x not None, double[::1] out not None):
    """out = tanh(x) with attnx's vectorised tanh (exposed for accuracy tests)."""
    if x.shape[0] != out.shape[0]:
        raise ValueError("x and out must have the same length")
    cdef int rc
    if x.shape[0] == 0:
        return out
    with nogil:
        rc = attnx_tanh(&x[0], x.shape[0], &out[0])
    if rc != 0:
        raise ValueError(attnx_strerror(rc).decode())
    return out


def _exp(const double[::1] x not None, double[::1] out not None):
    """out = exp(x) with attnx's vectorised exp (exposed for accuracy tests)."""
    if x.shape[0] != out.shape[0]:
        raise ValueError("x and out must have the same length")
    cdef int rc
    if x.shape[0] == 0:
        return out
    with nogil:
        rc = attnx_exp(&x[0], x.shape[0], &out[0])
    if rc != 0:
        raise ValueError(attnx_strerror(rc).decode())
    return out
