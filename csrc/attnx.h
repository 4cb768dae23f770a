/*
 * attnx.h -- the C contract of attnx: dot-product attention on float64.
 *
 * Plain C99. Every array is row-major, contiguous float64 unless a stride says
 * otherwise; sizes are size_t; strides are in elements (not bytes) and may be 0
 * to broadcast. Inputs are const. Every function returns a status code
 * (ATTNX_OK == 0) instead of touching errno, and writes nothing unless it
 * returns ATTNX_OK. The single-query functions never allocate. No global state
 * exists beyond the dispatch table, which is filled once, thread-safely, on
 * first use (or by attnx_simd_level()).
 *
 * The computation, for a query q (d), keys K (T, d) and values V (T, dv):
 *
 *     scores[t]  = scale * dot(q, K[t])
 *     weights    = softmax(scores)      max-subtracted, so scores up to +-1e308
 *                                       never overflow
 *     context[j] = sum_t weights[t] * V[t, j]
 *
 * Numerics shared by every function (the failure model, docs/failure-model.md):
 *   - softmax subtracts the row maximum with an exact two-sum, so the rounding
 *     of s - max is compensated and each weight is within a few ulp of the
 *     correctly rounded result even when scores spread over 1000;
 *   - a NaN anywhere in a softmax row makes the whole row NaN; +inf in a row
 *     makes it NaN (inf - inf); -inf entries get weight exactly 0; a row that is
 *     entirely -inf is NaN in attnx_softmax (as scipy.special.softmax) but gives
 *     zero weights and a zero context in attnx_attend (nothing to attend to);
 *   - a weight of exactly 0 contributes nothing to a context: its value row is
 *     not read, so NaN or inf there cannot leak into the result;
 *   - masked keys (mask[t] == 0) are never read, neither their key nor their
 *     value row.
 */
#ifndef ATTNX_H
#define ATTNX_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this C API: the number of additions to the function table
 * (attnx_api_table below). 1: the float64 kernels; 2: log-softmax, tanh and
 * additive scores, the float32 family; 3: attnx_attention (one entry point
 * with every option, logsumexp, position offsets), attnx_merge_attention and
 * attnx_attention_backward. */
#define ATTNX_API_VERSION 3

/* Status codes. Every function returns one; attnx_strerror() names it. */
enum attnx_status {
    ATTNX_OK = 0,
    ATTNX_ERR_NULL = 1,        /* a required pointer is NULL */
    ATTNX_ERR_EMPTY = 2,       /* T == 0 where at least one key is required */
    ATTNX_ERR_OVERFLOW = 3,    /* a size product overflows size_t */
    ATTNX_ERR_OVERLAP = 4,     /* an output overlaps an input where that is not allowed */
    ATTNX_ERR_NOMEM = 5,       /* a multi-threaded call could not allocate scratch */
    ATTNX_ERR_ARG = 6,         /* any other invalid argument (see the function) */
    ATTNX_ERR_UNSUPPORTED = 7  /* the requested SIMD level is not available */
};

/* Largest number of leading (batch) dimensions the batched functions take. */
#define ATTNX_MAX_BATCH_DIMS 32

/* The options of attnx_attention (API version 3; see its comment below). */
/* (The same definition, guarded, is in attnx/kernels.pxd for Cython users,
 * who need no include path: tests/test_c_api.py checks the two agree.) */
#ifndef ATTNX_ATTENTION_PARAMS_DEFINED
#define ATTNX_ATTENTION_PARAMS_DEFINED
typedef struct attnx_attention_params {
    size_t size;                       /* sizeof(attnx_attention_params) */
    const void *query;                 /* (..., Lq, d) */
    const void *keys;                  /* (..., T, d) */
    const void *values;                /* (..., T, dv) */
    size_t nbatch;                     /* leading dimensions, as attend_batch */
    const size_t *batch_shape;
    const ptrdiff_t *query_strides, *key_strides, *value_strides;
    size_t Lq, T, d, dv;
    double scale;
    const unsigned char *mask;         /* NULL: none; else as attend_batch */
    const ptrdiff_t *mask_strides;
    ptrdiff_t mask_row_stride;
    int causal;                        /* 0 or 1 */
    ptrdiff_t query_offset, key_offset;
    void *out;                         /* (..., Lq, dv), required */
    void *weights;                     /* (..., Lq, T) or NULL */
    void *lse;                         /* (..., Lq) or NULL */
    int num_threads;                   /* 0: attnx_max_threads() */
} attnx_attention_params;
#endif

/* The smallest size attnx_attention accepts: every field up to num_threads
 * (version 3's struct). */
#define ATTNX_ATTENTION_PARAMS_V1_SIZE sizeof(attnx_attention_params)

/* attnx_capi.h includes this header for its types only: there the function
 * names are macros into the capsule table. */
#ifndef ATTNX_NO_PROTOTYPES

/* A static, never-NULL English message for a status code. */
const char *attnx_strerror(int status);

/* ------------------------------------------------------------------------ */
/* Single-query kernels. None allocates, none starts a thread.              */
/* ------------------------------------------------------------------------ */

/* scores[t] = scale * dot(q, K[t]) for t < T.  q: d, K: T x d, scores: T.
 * d == 0 gives zeros; T == 0 writes nothing.
 * Errors: NULL, OVERFLOW (T*d), OVERLAP (scores overlaps q or K). */
int attnx_dot_scores(const double *q, const double *K, size_t T, size_t d,
                     double scale, double *scores);

/* y = softmax(x) over n elements; y may be x (in place), but must not
 * otherwise overlap it. n == 0 writes nothing. Errors: NULL, OVERLAP. */
int attnx_softmax(const double *x, size_t n, double *y);

/* ctx[j] = sum_t w[t] * V[t, j].  w: T, V: T x dv, ctx: dv.  T == 0 gives a
 * zero context. Zero weights skip their value row (see above).
 * Errors: NULL, OVERFLOW (T*dv), OVERLAP (ctx overlaps w or V). */
int attnx_context(const double *w, const double *V, size_t T, size_t dv, double *ctx);

/* Attention for one query: ctx = softmax(scale * K q) V.
 * q: d, K: T x d, V: T x dv (V may be K when dv == d), mask: T bytes or NULL
 * (nonzero = attends), ctx: dv, weights: T or NULL.
 * With weights == NULL the computation is one fused pass over K and V (online
 * softmax: running max, running sum, rescaled accumulator), reading each key
 * and value row once and allocating nothing. With weights != NULL the scores
 * are computed, normalised into weights, then reduced (two passes).
 * A query that attends to nothing (every key masked, or every score -inf)
 * gets a zero context and zero weights.
 * Errors: NULL (q, K, V or ctx), EMPTY (T == 0), OVERFLOW, OVERLAP (ctx or
 * weights overlaps an input or each other). */
int attnx_attend(const double *q, const double *K, const double *V,
                 size_t T, size_t d, size_t dv, double scale,
                 const unsigned char *mask,
                 double *ctx, double *weights);

/* y[i] = exp(x[i]) with attnx's own vectorised exp (within 1 ulp over
 * [-745, 709.78]; tests/test_exp.py measures it). y may be x. */
int attnx_exp(const double *x, size_t n, double *y);

/* ------------------------------------------------------------------------ */
/* Batched kernels.                                                          */
/*                                                                           */
/* A batch is nbatch leading dimensions of sizes batch_shape[0..nbatch). Each */
/* operand gives, per batch dimension, the stride in elements between        */
/* consecutive matrices (0 broadcasts it). Inside one batch item every       */
/* operand is a contiguous row-major matrix; outputs are contiguous over the */
/* whole batch, in C order. nbatch == 0 means a single item (the strides may */
/* then be NULL). num_threads: 0 = attnx_max_threads(), 1 = serial, n = at  */
/* most n threads, and never more than the CPUs of the process's affinity    */
/* mask. The threads are attnx's own pool: safe in a child of fork().        */
/* Errors, besides those of the single-query forms: ARG (nbatch >            */
/* ATTNX_MAX_BATCH_DIMS, num_threads < 0), NULL (also NULL batch_shape or    */
/* strides with nbatch > 0), OVERLAP (an output on an input's span), NOMEM.  */
/* ------------------------------------------------------------------------ */

/* scores[b, i, t] = scale * dot(Q[b, i], K[b, t]).
 * Q[b]: Lq x d, K[b]: T x d, scores: batch x Lq x T. */
int attnx_dot_scores_batch(const double *Q, const double *K,
                           size_t nbatch, const size_t *batch_shape,
                           const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                           size_t Lq, size_t T, size_t d, double scale,
                           double *scores, int num_threads);

/* Row-wise softmax of a contiguous rows x n matrix; y may be x. */
int attnx_softmax_rows(const double *x, size_t rows, size_t n, double *y,
                       int num_threads);

/* ctx[b, i, :] = sum_t W[b, i, t] * V[b, t, :].
 * W[b]: Lq x T, V[b]: T x dv, ctx: batch x Lq x dv. */
int attnx_context_batch(const double *W, const double *V,
                        size_t nbatch, const size_t *batch_shape,
                        const ptrdiff_t *w_strides, const ptrdiff_t *v_strides,
                        size_t Lq, size_t T, size_t dv,
                        double *ctx, int num_threads);

/* Batched attention: ctx[b, i] = softmax(scale * K[b] Q[b, i] | mask) V[b].
 * Q[b]: Lq x d, K[b]: T x d, V[b]: T x dv. ctx: batch x Lq x dv (contiguous);
 * weights: batch x Lq x T (contiguous) or NULL for the fused pass.
 * mask: NULL, or bytes with mask[b] + i * mask_row_stride + t (the last axis
 * contiguous; mask_row_stride may be 0 to share one row across queries).
 * causal != 0: query i attends keys t <= i (top-left aligned, as
 * torch.nn.functional.scaled_dot_product_attention(is_causal=True)), combined
 * with mask by AND. With num_threads != 1 and a single long query, the key
 * sequence is split across threads and the partial results merged with their
 * running max and sum (flash-decoding); that path may allocate. */
int attnx_attend_batch(const double *Q, const double *K, const double *V,
                       size_t nbatch, const size_t *batch_shape,
                       const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                       const ptrdiff_t *v_strides,
                       size_t Lq, size_t T, size_t d, size_t dv, double scale,
                       const unsigned char *mask, const ptrdiff_t *mask_strides,
                       ptrdiff_t mask_row_stride, int causal,
                       double *ctx, double *weights, int num_threads);

/* ------------------------------------------------------------------------ */
/* Dispatch.                                                                 */
/* ------------------------------------------------------------------------ */

/* Name of the kernel set this process uses: "avx512", "avx2", "neon" or
 * "scalar". Chosen once from CPUID and XGETBV (the OS must have enabled the
 * vector registers), lowered by the environment variable
 * ATTNX_SIMD=scalar|avx2|avx512 (a level above what the CPU has is ignored). */
const char *attnx_simd_level(void);

/* Switch the kernel set for the whole process ("scalar", "avx2", "avx512",
 * "neon", or "best"). Meant for tests; not for use while other threads call
 * attnx. Errors: NULL, ARG (unknown name), UNSUPPORTED (not on this CPU). */
int attnx_set_simd_level(const char *name);

/* Space-separated names of the levels this CPU and build support, best first,
 * e.g. "avx512 avx2 scalar". */
const char *attnx_simd_available(void);

/* The largest thread count a num_threads == 0 call would use: the CPUs this
 * process may run on (its affinity mask), or fewer by ATTNX_NUM_THREADS or
 * OMP_NUM_THREADS; 1 in a build without threads. */
int attnx_max_threads(void);

/* Compiler, flags and threads of this build, as one human-readable line. */
const char *attnx_build_info(void);

/* ------------------------------------------------------------------------ */
/* log-softmax (API version 2)                                               */
/* ------------------------------------------------------------------------ */

/* y = log(softmax(x)) = (x - max) - log(sum exp(x - max)), accurate where
 * softmax itself underflows (x - max = -1000 gives -1000 - log(sum), not
 * -inf); the subtraction of the max is an exact two-sum. NaN/+inf/all -inf
 * slices behave as attnx_softmax's (NaN); -inf entries give -inf. y may be x.
 * Errors: NULL, OVERLAP (partial). */
int attnx_log_softmax(const double *x, size_t n, double *y);
int attnx_log_softmax_rows(const double *x, size_t rows, size_t n, double *y,
                           int num_threads);

/* ------------------------------------------------------------------------ */
/* Additive (Bahdanau / concat) scores (API version 2)                       */
/* ------------------------------------------------------------------------ */

/* y[i] = tanh(x[i]) with attnx's own vectorised tanh (error bound stated in
 * attnx_internal_additive.h and measured by tests). y may be x. */
int attnx_tanh(const double *x, size_t n, double *y);

/* scores[t] = sum_j v[j] * tanh(a[j] + Kp[t, j]) for t < T: additive
 * attention, where a = W_q q (h) and Kp = keys W_k^T (T x h) are computed
 * once by the caller. Errors: NULL, OVERFLOW, OVERLAP. */
int attnx_additive_scores(const double *a, const double *Kp, const double *v,
                          size_t T, size_t h, double *scores);

/* Batched: scores[b, i, t] = sum_j v[j] tanh(A[b, i, j] + Kp[b, t, j]).
 * A[b]: Lq x h, Kp[b]: T x h, v: h (shared), scores: batch x Lq x T. */
int attnx_additive_scores_batch(const double *A, const double *Kp, const double *v,
                                size_t nbatch, const size_t *batch_shape,
                                const ptrdiff_t *a_strides, const ptrdiff_t *kp_strides,
                                size_t Lq, size_t T, size_t h, double *scores,
                                int num_threads);

/* ------------------------------------------------------------------------ */
/* float32 (API version 2)                                                   */
/* ------------------------------------------------------------------------ */
/* The same contracts as the float64 functions, on float data, with native  */
/* float32 kernels at every SIMD level (twice the lanes). How each kernel   */
/* accumulates, and its measured error against float64, is stated in        */
/* csrc/attnx_internal_f32.h.                                               */

int attnx_dot_scores_f32(const float *q, const float *K, size_t T, size_t d,
                         float scale, float *scores);
int attnx_softmax_f32(const float *x, size_t n, float *y);
int attnx_context_f32(const float *w, const float *V, size_t T, size_t dv, float *ctx);
int attnx_attend_f32(const float *q, const float *K, const float *V,
                     size_t T, size_t d, size_t dv, float scale,
                     const unsigned char *mask, float *ctx, float *weights);
int attnx_dot_scores_batch_f32(const float *Q, const float *K,
                               size_t nbatch, const size_t *batch_shape,
                               const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                               size_t Lq, size_t T, size_t d, float scale,
                               float *scores, int num_threads);
int attnx_softmax_rows_f32(const float *x, size_t rows, size_t n, float *y,
                           int num_threads);
int attnx_context_batch_f32(const float *W, const float *V,
                            size_t nbatch, const size_t *batch_shape,
                            const ptrdiff_t *w_strides, const ptrdiff_t *v_strides,
                            size_t Lq, size_t T, size_t dv,
                            float *ctx, int num_threads);
int attnx_attend_batch_f32(const float *Q, const float *K, const float *V,
                           size_t nbatch, const size_t *batch_shape,
                           const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                           const ptrdiff_t *v_strides,
                           size_t Lq, size_t T, size_t d, size_t dv, float scale,
                           const unsigned char *mask, const ptrdiff_t *mask_strides,
                           ptrdiff_t mask_row_stride, int causal,
                           float *ctx, float *weights, int num_threads);
int attnx_log_softmax_rows_f32(const float *x, size_t rows, size_t n, float *y,
                               int num_threads);

/* ------------------------------------------------------------------------ */
/* Attention with every option, and merging (API version 3)                 */
/* ------------------------------------------------------------------------ */
/* attnx_attention(&p) computes what attnx_attend_batch does, with the      */
/* options in one struct that grows only at its end: set p.size to          */
/* sizeof(attnx_attention_params) (zero the struct first); fields beyond a  */
/* caller's size read as 0. query/keys/values/out/weights/lse point at      */
/* double for attnx_attention and at float for attnx_attention_f32.         */
/*                                                                          */
/* Positions: query row i sits at query_offset + i, key t at key_offset + t.*/
/* causal = 1: a query sees the keys at or before its position (offsets 0:  */
/* torch's is_causal; query_offset = T - Lq: aligned at the lower right, as */
/* a decoder with a cache needs). A query that sees no key gets zeros and   */
/* lse = -inf. lse (NULL: not wanted) receives each row's natural-log       */
/* logsumexp of its scaled, masked scores: -inf when nothing is attended,   */
/* NaN for a NaN row; attnx_merge_attention combines such results.          */
/*                                                                          */
/* Determinism: results depend on the arguments, never on num_threads. Up   */
/* to 4 query rows with T >= 8192 keys (and no weights) are split into      */
/* partitions of 4096 keys merged in a fixed pairwise tree (split-K); the   */
/* bits then differ in rounding from the single-query attnx_attend, which   */
/* never splits. The same holds for attnx_attend_batch.                     */
/* Errors: as attnx_attend_batch; ARG for a NULL-free params with size too  */
/* small or causal not 0 or 1; OVERFLOW when query_offset - key_offset      */
/* does; NOMEM when the split cannot allocate its scratch.                  */



int attnx_attention(const attnx_attention_params *params);
int attnx_attention_f32(const attnx_attention_params *params);

/* The gradient of attnx_attention: params as for the forward call, with
 * params->out and params->lse the forward's results (read here; weights
 * must be NULL), grad_out the gradient of the loss with respect to out, in
 * the layout of out (batch strides in elements: grad_out_strides,
 * out_strides, lse_strides; NULL when nbatch == 0). Writes grad_query
 * (..., Lq, d), grad_keys (..., T, d) and grad_values (..., T, dv), each
 * contiguous over the whole batch shape (a broadcast operand's gradient is
 * the sum over its broadcast dimensions: the caller's to take). The
 * FlashAttention-2 backward: the weights are recomputed from lse, never
 * stored (scratch of O(T) per thread), no two threads add into the same
 * output, and the bits do not depend on num_threads. Errors: as
 * attnx_attention, ARG for non-NULL weights, NOMEM for the scratch. */
int attnx_attention_backward(const attnx_attention_params *params, const void *grad_out,
                             const ptrdiff_t *grad_out_strides, const ptrdiff_t *out_strides,
                             const ptrdiff_t *lse_strides, void *grad_query, void *grad_keys,
                             void *grad_values);
int attnx_attention_backward_f32(const attnx_attention_params *params, const void *grad_out,
                                 const ptrdiff_t *grad_out_strides, const ptrdiff_t *out_strides,
                                 const ptrdiff_t *lse_strides, void *grad_query, void *grad_keys,
                                 void *grad_values);

/* Merge P partial attention results over disjoint key sets, each of `rows`
 * rows: outs (P, rows, dv) and lses (P, rows) contiguous, into out (rows,
 * dv) and lse (rows). Max-first in double, in the order p = 0..P-1, so
 * nothing overflows and the bits are fixed: lse = logsumexp_p lse_p, out =
 * sum_p exp(lse_p - lse) out_p. A partial with lse_p = -inf (all masked)
 * weighs nothing and its out_p is not read; all -inf gives zeros and -inf;
 * a NaN lse_p gives a NaN row. Errors: NULL, EMPTY (P == 0), OVERFLOW,
 * OVERLAP (an output on an input or on the other output). */
int attnx_merge_attention(size_t P, size_t rows, size_t dv, const double *outs,
                          const double *lses, double *out, double *lse);
int attnx_merge_attention_f32(size_t P, size_t rows, size_t dv, const float *outs,
                              const float *lses, float *out, float *lse);

/* The table of every function above, for attnx_capi.h (the capsule
 * attnx._C_API holds this pointer) and for programs that load attnx with
 * dlopen. Never NULL; static storage. */
struct attnx_api_table;
const struct attnx_api_table *attnx_api(void);

#endif /* ATTNX_NO_PROTOTYPES */

/* ------------------------------------------------------------------------ */
/* The function table. It only ever grows at its end: a new function is a   */
/* new last member and ATTNX_API_VERSION + 1, so code built against an older */
/* header keeps working, and code built against a newer one can refuse an    */
/* older library by comparing `version`.                                      */
/* ------------------------------------------------------------------------ */
typedef struct attnx_api_table {
    unsigned int version;   /* ATTNX_API_VERSION of the library that filled it */
    unsigned int size;      /* sizeof(attnx_api_table) in that library */
    const char *(*strerror)(int status);
    int (*dot_scores)(const double *q, const double *K, size_t T, size_t d,
                      double scale, double *scores);
    int (*softmax)(const double *x, size_t n, double *y);
    int (*context)(const double *w, const double *V, size_t T, size_t dv, double *ctx);
    int (*attend)(const double *q, const double *K, const double *V,
                  size_t T, size_t d, size_t dv, double scale,
                  const unsigned char *mask, double *ctx, double *weights);
    int (*exp)(const double *x, size_t n, double *y);
    int (*dot_scores_batch)(const double *Q, const double *K,
                            size_t nbatch, const size_t *batch_shape,
                            const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                            size_t Lq, size_t T, size_t d, double scale,
                            double *scores, int num_threads);
    int (*softmax_rows)(const double *x, size_t rows, size_t n, double *y,
                        int num_threads);
    int (*context_batch)(const double *W, const double *V,
                         size_t nbatch, const size_t *batch_shape,
                         const ptrdiff_t *w_strides, const ptrdiff_t *v_strides,
                         size_t Lq, size_t T, size_t dv,
                         double *ctx, int num_threads);
    int (*attend_batch)(const double *Q, const double *K, const double *V,
                        size_t nbatch, const size_t *batch_shape,
                        const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                        const ptrdiff_t *v_strides,
                        size_t Lq, size_t T, size_t d, size_t dv, double scale,
                        const unsigned char *mask, const ptrdiff_t *mask_strides,
                        ptrdiff_t mask_row_stride, int causal,
                        double *ctx, double *weights, int num_threads);
    const char *(*simd_level)(void);
    const char *(*simd_available)(void);
    int (*max_threads)(void);
    const char *(*build_info)(void);
    /* version 2 */
    int (*log_softmax)(const double *x, size_t n, double *y);
    int (*log_softmax_rows)(const double *x, size_t rows, size_t n, double *y, int num_threads);
    int (*tanh)(const double *x, size_t n, double *y);
    int (*additive_scores)(const double *a, const double *Kp, const double *v, size_t T, size_t h, double *scores);
    int (*additive_scores_batch)(const double *A, const double *Kp, const double *v, size_t nbatch, const size_t *batch_shape, const ptrdiff_t *a_strides, const ptrdiff_t *kp_strides, size_t Lq, size_t T, size_t h, double *scores, int num_threads);
    int (*dot_scores_f32)(const float *q, const float *K, size_t T, size_t d, float scale, float *scores);
    int (*softmax_f32)(const float *x, size_t n, float *y);
    int (*context_f32)(const float *w, const float *V, size_t T, size_t dv, float *ctx);
    int (*attend_f32)(const float *q, const float *K, const float *V, size_t T, size_t d, size_t dv, float scale, const unsigned char *mask, float *ctx, float *weights);
    int (*dot_scores_batch_f32)(const float *Q, const float *K, size_t nbatch, const size_t *batch_shape, const ptrdiff_t *q_strides, const ptrdiff_t *k_strides, size_t Lq, size_t T, size_t d, float scale, float *scores, int num_threads);
    int (*softmax_rows_f32)(const float *x, size_t rows, size_t n, float *y, int num_threads);
    int (*context_batch_f32)(const float *W, const float *V, size_t nbatch, const size_t *batch_shape, const ptrdiff_t *w_strides, const ptrdiff_t *v_strides, size_t Lq, size_t T, size_t dv, float *ctx, int num_threads);
    int (*attend_batch_f32)(const float *Q, const float *K, const float *V, size_t nbatch, const size_t *batch_shape, const ptrdiff_t *q_strides, const ptrdiff_t *k_strides, const ptrdiff_t *v_strides, size_t Lq, size_t T, size_t d, size_t dv, float scale, const unsigned char *mask, const ptrdiff_t *mask_strides, ptrdiff_t mask_row_stride, int causal, float *ctx, float *weights, int num_threads);
    int (*log_softmax_rows_f32)(const float *x, size_t rows, size_t n, float *y, int num_threads);
    /* version 3 */
    int (*attention)(const attnx_attention_params *params);
    int (*attention_f32)(const attnx_attention_params *params);
    int (*merge_attention)(size_t P, size_t rows, size_t dv, const double *outs, const double *lses, double *out, double *lse);
    int (*merge_attention_f32)(size_t P, size_t rows, size_t dv, const float *outs, const float *lses, float *out, float *lse);
    int (*attention_backward)(const attnx_attention_params *params, const void *grad_out, const ptrdiff_t *grad_out_strides, const ptrdiff_t *out_strides, const ptrdiff_t *lse_strides, void *grad_query, void *grad_keys, void *grad_values);
    int (*attention_backward_f32)(const attnx_attention_params *params, const void *grad_out, const ptrdiff_t *grad_out_strides, const ptrdiff_t *out_strides, const ptrdiff_t *lse_strides, void *grad_query, void *grad_keys, void *grad_values);
    /* append new members here, and bump ATTNX_API_VERSION */
} attnx_api_table;

#ifdef __cplusplus
}
#endif

#endif /* ATTNX_H */
