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

#endif /* ATTNX_KERNELS_NAMES_H */
