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
 * attnx_attention_backward; 4: attnx_attention_params grows what shapes the
 * scores (bias, ALiBi, key lengths, windows, lower-right alignment, softcap),
 * so that a caller who sets them can refuse a library that would not read
 * them; 5: attnx_additive_attention (additive attention in one call, mask
 * and causality applied in C). */
#define ATTNX_API_VERSION 5

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
    /* -- API version 4: what shapes the scores (see attnx_api.def). A
     * version-3 caller's shorter struct reads all of these as 0: none. */
    const void *bias;                  /* NULL, or added to the scores */
    const ptrdiff_t *bias_strides;     /* per batch dimension (0: broadcast) */
    ptrdiff_t bias_row_stride;         /* between query rows (0: broadcast) */
    ptrdiff_t bias_col_stride;         /* between keys: 1, or 0 (broadcast) */
    const void *alibi_slopes;          /* NULL, or one slope per batch item */
    const ptrdiff_t *alibi_strides;    /* per batch dimension (0: broadcast) */
    const long long *key_lengths;      /* NULL, or keys seen per batch item */
    const ptrdiff_t *key_lengths_strides;
    int lower_right;                   /* 1: align the last query, last key */
    int window;                        /* 1: window_left/right apply */
    ptrdiff_t window_left, window_right;   /* < 0: unbounded on that side */
    double softcap;                    /* 0: none; else > 0 */
    void *grad_bias;                   /* attnx_attention_backward: NULL, or dS */
} attnx_attention_params;
#endif

/* The smallest size attnx_attention accepts: every field up to num_threads
 * (version 3's struct). */
#define ATTNX_ATTENTION_PARAMS_V1_SIZE \
    (offsetof(attnx_attention_params, num_threads) + sizeof(int))

/* attnx_capi.h includes this header for its types only: there each function
 * name is a static inline caller through the capsule table. */
#ifndef ATTNX_NO_PROTOTYPES
/* Every function of the table, declared from the one list (attnx_api.def,
 * which documents each). */
#define ATTNX_FN(ret, name, member, params, args) ret name params;
#include "attnx_api.def"
#undef ATTNX_FN

/* Switch the kernel set for the whole process ("scalar", "avx2", "avx512",
 * "neon", or "best"). Meant for tests; not for use while other threads call
 * attnx. Errors: NULL, ARG (unknown name), UNSUPPORTED (not on this CPU). */
int attnx_set_simd_level(const char *name);

/* The table of every function of attnx_api.def, for attnx_capi.h (the capsule
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
#define ATTNX_FN(ret, name, member, params, args) ret (*member) params;
#include "attnx_api.def"
#undef ATTNX_FN
    /* new members: new entries at the end of attnx_api.def */
} attnx_api_table;

#ifdef __cplusplus
}
#endif

#endif /* ATTNX_H */
