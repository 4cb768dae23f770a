# cython: language_level=3
"""C-level API of attnx for Cython code: ``cimport attnx.kernels as ak``.

Every function is the function of the same name in csrc/attnx.h without the
``attnx_`` prefix: raw pointers to row-major contiguous float64 data, sizes as
``size_t``, strides in elements, an ``int`` status (``OK`` == 0) as result.
They are ``noexcept nogil``: call them inside ``with nogil:``. They resolve at
import time through this module's C-level export table (``__pyx_capi__``), so a
downstream extension needs no include path and no link step.

This list is frozen by tests/abi/kernels_pxd.txt: adding is allowed, changing
or removing a declaration is a failure.
"""

cdef enum:
    OK = 0
    ERR_NULL = 1
    ERR_EMPTY = 2
    ERR_OVERFLOW = 3
    ERR_OVERLAP = 4
    ERR_NOMEM = 5
    ERR_ARG = 6
    ERR_UNSUPPORTED = 7
    MAX_BATCH_DIMS = 32

cdef int dot_scores(const double *q, const double *K, size_t T, size_t d,
                    double scale, double *scores) noexcept nogil
cdef int softmax(const double *x, size_t n, double *y) noexcept nogil
cdef int context(const double *w, const double *V, size_t T, size_t dv,
                 double *ctx) noexcept nogil
cdef int attend(const double *q, const double *K, const double *V,
                size_t T, size_t d, size_t dv, double scale,
                const unsigned char *mask, double *ctx, double *weights) noexcept nogil
cdef int exp(const double *x, size_t n, double *y) noexcept nogil

cdef int dot_scores_batch(const double *Q, const double *K,
                          size_t nbatch, const size_t *batch_shape,
                          const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                          size_t Lq, size_t T, size_t d, double scale,
                          double *scores, int num_threads) noexcept nogil
cdef int softmax_rows(const double *x, size_t rows, size_t n, double *y,
                      int num_threads) noexcept nogil
cdef int context_batch(const double *W, const double *V,
                       size_t nbatch, const size_t *batch_shape,
                       const ptrdiff_t *w_strides, const ptrdiff_t *v_strides,
                       size_t Lq, size_t T, size_t dv,
                       double *ctx, int num_threads) noexcept nogil
cdef int attend_batch(const double *Q, const double *K, const double *V,
                      size_t nbatch, const size_t *batch_shape,
                      const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                      const ptrdiff_t *v_strides,
                      size_t Lq, size_t T, size_t d, size_t dv, double scale,
                      const unsigned char *mask, const ptrdiff_t *mask_strides,
                      ptrdiff_t mask_row_stride, int causal,
                      double *ctx, double *weights, int num_threads) noexcept nogil

cdef const char *strerror(int status) noexcept nogil
cdef const char *simd_level_name() noexcept nogil

# --- API version 2 -------------------------------------------------------------
cdef int log_softmax(const double *x, size_t n, double *y) noexcept nogil
cdef int log_softmax_rows(const double *x, size_t rows, size_t n, double *y,
                          int num_threads) noexcept nogil
cdef int tanh(const double *x, size_t n, double *y) noexcept nogil
cdef int additive_scores(const double *a, const double *Kp, const double *v,
                         size_t T, size_t h, double *scores) noexcept nogil
cdef int additive_scores_batch(const double *A, const double *Kp, const double *v,
                               size_t nbatch, const size_t *batch_shape,
                               const ptrdiff_t *a_strides, const ptrdiff_t *kp_strides,
                               size_t Lq, size_t T, size_t h, double *scores,
                               int num_threads) noexcept nogil
cdef int dot_scores_f32(const float *q, const float *K, size_t T, size_t d, float scale,
                        float *scores) noexcept nogil
cdef int softmax_f32(const float *x, size_t n, float *y) noexcept nogil
cdef int context_f32(const float *w, const float *V, size_t T, size_t dv, float *ctx) noexcept nogil
cdef int attend_f32(const float *q, const float *K, const float *V, size_t T, size_t d,
                    size_t dv, float scale, const unsigned char *mask, float *ctx,
                    float *weights) noexcept nogil
cdef int dot_scores_batch_f32(const float *Q, const float *K, size_t nbatch,
                              const size_t *batch_shape, const ptrdiff_t *q_strides,
                              const ptrdiff_t *k_strides, size_t Lq, size_t T, size_t d,
                              float scale, float *scores, int num_threads) noexcept nogil
cdef int softmax_rows_f32(const float *x, size_t rows, size_t n, float *y, int num_threads) noexcept nogil
cdef int context_batch_f32(const float *W, const float *V, size_t nbatch,
                           const size_t *batch_shape, const ptrdiff_t *w_strides,
                           const ptrdiff_t *v_strides, size_t Lq, size_t T, size_t dv,
                           float *ctx, int num_threads) noexcept nogil
cdef int attend_batch_f32(const float *Q, const float *K, const float *V, size_t nbatch,
                          const size_t *batch_shape, const ptrdiff_t *q_strides,
                          const ptrdiff_t *k_strides, const ptrdiff_t *v_strides, size_t Lq,
                          size_t T, size_t d, size_t dv, float scale, const unsigned char *mask,
                          const ptrdiff_t *mask_strides, ptrdiff_t mask_row_stride, int causal,
                          float *ctx, float *weights, int num_threads) noexcept nogil
cdef int log_softmax_rows_f32(const float *x, size_t rows, size_t n, float *y, int num_threads) noexcept nogil

# --- attnx_attention's options (csrc/attnx.h, API version 3) -----------------
# The C definition, guarded, so that a downstream module needs no include path;
# tests/test_c_api.py checks it against attnx.h.
cdef extern from *:
    """
    #ifndef ATTNX_ATTENTION_PARAMS_DEFINED
    #define ATTNX_ATTENTION_PARAMS_DEFINED
    #include <stddef.h>
        typedef struct attnx_attention_params {
            size_t size;
            const void *query;
            const void *keys;
            const void *values;
            size_t nbatch;
            const size_t *batch_shape;
            const ptrdiff_t *query_strides, *key_strides, *value_strides;
            size_t Lq, T, d, dv;
            double scale;
            const unsigned char *mask;
            const ptrdiff_t *mask_strides;
            ptrdiff_t mask_row_stride;
            int causal;
            ptrdiff_t query_offset, key_offset;
            void *out;
            void *weights;
            void *lse;
            int num_threads;
            const void *bias;
            const ptrdiff_t *bias_strides;
            ptrdiff_t bias_row_stride;
            ptrdiff_t bias_col_stride;
            const void *alibi_slopes;
            const ptrdiff_t *alibi_strides;
            const long long *key_lengths;
            const ptrdiff_t *key_lengths_strides;
            int lower_right;
            int window;
            ptrdiff_t window_left, window_right;
            double softcap;
            void *grad_bias;
        } attnx_attention_params;
    #endif
    """
    ctypedef struct attnx_attention_params:
        size_t size
        const void *query
        const void *keys
        const void *values
        size_t nbatch
        const size_t *batch_shape
        const ptrdiff_t *query_strides
        const ptrdiff_t *key_strides
        const ptrdiff_t *value_strides
        size_t Lq
        size_t T
        size_t d
        size_t dv
        double scale
        const unsigned char *mask
        const ptrdiff_t *mask_strides
        ptrdiff_t mask_row_stride
        int causal
        ptrdiff_t query_offset
        ptrdiff_t key_offset
        void *out
        void *weights
        void *lse
        int num_threads
        const void *bias
        const ptrdiff_t *bias_strides
        ptrdiff_t bias_row_stride
        ptrdiff_t bias_col_stride
        const void *alibi_slopes
        const ptrdiff_t *alibi_strides
        const long long *key_lengths
        const ptrdiff_t *key_lengths_strides
        int lower_right
        int window
        ptrdiff_t window_left
        ptrdiff_t window_right
        double softcap
        void *grad_bias

cdef int attention(const attnx_attention_params *params) noexcept nogil
cdef int attention_f32(const attnx_attention_params *params) noexcept nogil
cdef int merge_attention(size_t P, size_t rows, size_t dv, const double *outs,
                         const double *lses, double *out, double *lse) noexcept nogil
cdef int merge_attention_f32(size_t P, size_t rows, size_t dv, const float *outs,
                             const float *lses, float *out, float *lse) noexcept nogil
cdef int attention_backward(const attnx_attention_params *params, const void *grad_out,
                            const ptrdiff_t *grad_out_strides, const ptrdiff_t *out_strides,
                            const ptrdiff_t *lse_strides, void *grad_query, void *grad_keys,
                            void *grad_values) noexcept nogil
cdef int attention_backward_f32(const attnx_attention_params *params, const void *grad_out,
                                const ptrdiff_t *grad_out_strides, const ptrdiff_t *out_strides,
                                const ptrdiff_t *lse_strides, void *grad_query, void *grad_keys,
                                void *grad_values) noexcept nogil

# --- API version 5 -------------------------------------------------------------
cdef int additive_attention(const double *A, const double *Kp, const double *v,
                            const double *V, size_t nbatch, const size_t *batch_shape,
                            const ptrdiff_t *a_strides, const ptrdiff_t *kp_strides,
                            const ptrdiff_t *v_strides, size_t Lq, size_t T, size_t h,
                            size_t dv, const unsigned char *mask,
                            const ptrdiff_t *mask_strides, ptrdiff_t mask_row_stride,
                            int causal, ptrdiff_t query_offset, ptrdiff_t key_offset,
                            double *ctx, double *weights, int num_threads) noexcept nogil
