/*
 * attnx_capi.h -- call attnx from a C extension module, through the function
 * table attnx publishes in the capsule `attnx._C_API` (the pattern of
 * NumPy's import_array()). Nothing to link: the kernels stay in attnx.
 *
 *     #include "attnx_capi.h"        // from attnx.get_include()
 *
 *     PyMODINIT_FUNC PyInit_mymod(void) {
 *         if (import_attnx() < 0) return NULL;    // ImportError set
 *         ...
 *     }
 *     ...
 *     Py_BEGIN_ALLOW_THREADS
 *     rc = attnx_attend(q, K, V, T, d, dv, scale, NULL, ctx, NULL);
 *     Py_END_ALLOW_THREADS
 *
 * After import_attnx() the functions of attnx.h are callable under their own
 * names with their own signatures (they are macros into the table). Every
 * translation unit that calls them must call import_attnx() once (the table
 * pointer is static, as NumPy's is by default).
 *
 * The table (attnx_api_table in attnx.h) only ever grows at its end, and its
 * version field counts those additions: import_attnx() refuses an installed
 * attnx older than this header with a clear ImportError.
 */
#ifndef ATTNX_CAPI_H
#define ATTNX_CAPI_H

#include <Python.h>

/* the types, constants and table of attnx.h, without its prototypes (the
 * names are macros below) */
#define ATTNX_NO_PROTOTYPES
#include "attnx.h"

/* The oldest table version this extension accepts: by default the one this
 * header describes. (Overridable to test the refusal path.) */
#ifndef ATTNX_CAPI_REQUIRED_VERSION
#define ATTNX_CAPI_REQUIRED_VERSION ATTNX_API_VERSION
#endif

static const attnx_api_table *attnx_capi_table = NULL;

/* 0 on success; -1 with ImportError (or the import's own error) set. */
static int import_attnx(void)
{
    const attnx_api_table *t = (const attnx_api_table *)PyCapsule_Import("attnx._C_API", 0);
    if (t == NULL) return -1;
    if (t->version < ATTNX_CAPI_REQUIRED_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "the installed attnx provides C API version %u, but this extension was "
                     "built against version %u (attnx_capi.h): upgrade attnx",
                     (unsigned)t->version, (unsigned)ATTNX_CAPI_REQUIRED_VERSION);
        return -1;
    }
    attnx_capi_table = t;
    return 0;
}

#define attnx_strerror (attnx_capi_table->strerror)
#define attnx_dot_scores (attnx_capi_table->dot_scores)
#define attnx_softmax (attnx_capi_table->softmax)
#define attnx_context (attnx_capi_table->context)
#define attnx_attend (attnx_capi_table->attend)
#define attnx_exp (attnx_capi_table->exp)
#define attnx_dot_scores_batch (attnx_capi_table->dot_scores_batch)
#define attnx_softmax_rows (attnx_capi_table->softmax_rows)
#define attnx_context_batch (attnx_capi_table->context_batch)
#define attnx_attend_batch (attnx_capi_table->attend_batch)
#define attnx_simd_level (attnx_capi_table->simd_level)
#define attnx_simd_available (attnx_capi_table->simd_available)
#define attnx_max_threads (attnx_capi_table->max_threads)
#define attnx_build_info (attnx_capi_table->build_info)
/* version 2 */
#define attnx_log_softmax (attnx_capi_table->log_softmax)
#define attnx_log_softmax_rows (attnx_capi_table->log_softmax_rows)
#define attnx_tanh (attnx_capi_table->tanh)
#define attnx_additive_scores (attnx_capi_table->additive_scores)
#define attnx_additive_scores_batch (attnx_capi_table->additive_scores_batch)
#define attnx_dot_scores_f32 (attnx_capi_table->dot_scores_f32)
#define attnx_softmax_f32 (attnx_capi_table->softmax_f32)
#define attnx_context_f32 (attnx_capi_table->context_f32)
#define attnx_attend_f32 (attnx_capi_table->attend_f32)
#define attnx_dot_scores_batch_f32 (attnx_capi_table->dot_scores_batch_f32)
#define attnx_softmax_rows_f32 (attnx_capi_table->softmax_rows_f32)
#define attnx_context_batch_f32 (attnx_capi_table->context_batch_f32)
#define attnx_attend_batch_f32 (attnx_capi_table->attend_batch_f32)
#define attnx_log_softmax_rows_f32 (attnx_capi_table->log_softmax_rows_f32)
/* version 3 */
#define attnx_attention (attnx_capi_table->attention)
#define attnx_attention_f32 (attnx_capi_table->attention_f32)
#define attnx_merge_attention (attnx_capi_table->merge_attention)
#define attnx_merge_attention_f32 (attnx_capi_table->merge_attention_f32)
#define attnx_attention_backward (attnx_capi_table->attention_backward)
#define attnx_attention_backward_f32 (attnx_capi_table->attention_backward_f32)

#endif /* ATTNX_CAPI_H */
