/*
 * api_table.c -- the function table of attnx.h, published to C extensions
 * through the capsule attnx._C_API (see attnx_capi.h). Members are only
 * ever appended; tests/test_c_api.py checks the table against the prototypes.
 */
#include "attnx.h"

static const attnx_api_table table = {
    ATTNX_API_VERSION,
    (unsigned int)sizeof(attnx_api_table),
    attnx_strerror,
    attnx_dot_scores,
    attnx_softmax,
    attnx_context,
    attnx_attend,
    attnx_exp,
    attnx_dot_scores_batch,
    attnx_softmax_rows,
    attnx_context_batch,
    attnx_attend_batch,
    attnx_simd_level,
    attnx_simd_available,
    attnx_max_threads,
    attnx_build_info,
    /* version 2 */
    attnx_log_softmax,
    attnx_log_softmax_rows,
    attnx_tanh,
    attnx_additive_scores,
    attnx_additive_scores_batch,
    attnx_dot_scores_f32,
    attnx_softmax_f32,
    attnx_context_f32,
    attnx_attend_f32,
    attnx_dot_scores_batch_f32,
    attnx_softmax_rows_f32,
    attnx_context_batch_f32,
    attnx_attend_batch_f32,
    attnx_log_softmax_rows_f32,
    /* version 3 */
    attnx_attention,
    attnx_attention_f32,
    attnx_merge_attention,
    attnx_merge_attention_f32,
    attnx_attention_backward,
    attnx_attention_backward_f32,
};

const attnx_api_table *attnx_api(void) { return &table; }
