/*
 * kernels/names.h -- every kernel symbol, spelled out once: grep a name
 * (exp_f32_avx2, attnx_kernels_avx512, ...) and it is found here, on the
 * line of its op. The columns are the levels, in this order:
 *
 *   f64 scalar, f64 avx2, f64 avx512, f64 neon,
 *   f32 scalar, f32 avx2, f32 avx512, f32 neon
 *
 * A level file (csrc/levels/<dtype>_<isa>.c) defines ATTNX_NAME to pick its
 * column, then includes the vocabulary and kernels/ops.h; each op source
 * defines its function as K_<op>. A new op adds one line here; a new ISA
 * adds one column.
 */
#ifndef ATTNX_KERNELS_NAMES_H
#define ATTNX_KERNELS_NAMES_H

#define K_exp ATTNX_NAME(exp_f64_scalar, exp_f64_avx2, exp_f64_avx512, exp_f64_neon, \
                         exp_f32_scalar, exp_f32_avx2, exp_f32_avx512, exp_f32_neon)
#define K_dot_scores ATTNX_NAME(dot_scores_f64_scalar, dot_scores_f64_avx2, dot_scores_f64_avx512, dot_scores_f64_neon, \
                                dot_scores_f32_scalar, dot_scores_f32_avx2, dot_scores_f32_avx512, dot_scores_f32_neon)
#define K_context ATTNX_NAME(context_f64_scalar, context_f64_avx2, context_f64_avx512, context_f64_neon, \
                             context_f32_scalar, context_f32_avx2, context_f32_avx512, context_f32_neon)

#define K_softmax ATTNX_NAME(softmax_f64_scalar, softmax_f64_avx2, softmax_f64_avx512, softmax_f64_neon, \
                             softmax_f32_scalar, softmax_f32_avx2, softmax_f32_avx512, softmax_f32_neon)
#define K_log_softmax ATTNX_NAME(log_softmax_f64_scalar, log_softmax_f64_avx2, log_softmax_f64_avx512, log_softmax_f64_neon, \
                                 log_softmax_f32_scalar, log_softmax_f32_avx2, log_softmax_f32_avx512, log_softmax_f32_neon)
#define K_attend_online ATTNX_NAME(attend_online_f64_scalar, attend_online_f64_avx2, attend_online_f64_avx512, attend_online_f64_neon, \
                                   attend_online_f32_scalar, attend_online_f32_avx2, attend_online_f32_avx512, attend_online_f32_neon)
#define K_attend_rows ATTNX_NAME(attend_rows_f64_scalar, attend_rows_f64_avx2, attend_rows_f64_avx512, attend_rows_f64_neon, \
                                 attend_rows_f32_scalar, attend_rows_f32_avx2, attend_rows_f32_avx512, attend_rows_f32_neon)
#define K_attend_backward ATTNX_NAME(attend_backward_f64_scalar, attend_backward_f64_avx2, attend_backward_f64_avx512, attend_backward_f64_neon, \
                                     attend_backward_f32_scalar, attend_backward_f32_avx2, attend_backward_f32_avx512, attend_backward_f32_neon)
#define K_shape_scores ATTNX_NAME(shape_scores_f64_scalar, shape_scores_f64_avx2, shape_scores_f64_avx512, shape_scores_f64_neon, \
                                  shape_scores_f32_scalar, shape_scores_f32_avx2, shape_scores_f32_avx512, shape_scores_f32_neon)
#define K_tanh ATTNX_NAME(tanh_f64_scalar, tanh_f64_avx2, tanh_f64_avx512, tanh_f64_neon, \
                          tanh_f32_none, tanh_f32_none, tanh_f32_none, tanh_f32_none)
#define K_additive_scores ATTNX_NAME(additive_scores_f64_scalar, additive_scores_f64_avx2, additive_scores_f64_avx512, \
                                     additive_scores_f64_neon, additive_scores_f32_none, additive_scores_f32_none, \
                                     additive_scores_f32_none, additive_scores_f32_none)

/* the level's table (attnx_internal.h, attnx_internal_f32.h) and name */
#define K_TABLE ATTNX_NAME(attnx_kernels_scalar, attnx_kernels_avx2, attnx_kernels_avx512, attnx_kernels_neon, \
                           attnx_kernels_f32_scalar, attnx_kernels_f32_avx2, attnx_kernels_f32_avx512, attnx_kernels_f32_neon)
#define K_ADD_TABLE ATTNX_NAME(attnx_additive_kernels_scalar, attnx_additive_kernels_avx2, attnx_additive_kernels_avx512, \
                               attnx_additive_kernels_neon, attnx_additive_kernels_f32_none, attnx_additive_kernels_f32_none, \
                               attnx_additive_kernels_f32_none, attnx_additive_kernels_f32_none)
#define K_LEVEL_NAME ATTNX_NAME("scalar", "avx2", "avx512", "neon", "scalar", "avx2", "avx512", "neon")

#endif /* ATTNX_KERNELS_NAMES_H */
