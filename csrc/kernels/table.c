/*
 * kernels/table.c -- the level's kernel table, filled with this level
 * file's instances of every op (kernels/names.h). dispatch.c picks one
 * level record per process.
 */
#if defined(ATTNX_F32)
const attnx_kernels_f32 K_TABLE = {
    K_LEVEL_NAME, K_exp, K_dot_scores, K_softmax, K_log_softmax, K_context, K_attend_online, K_shape_scores, K_ATTEND_ROWS, K_ATTEND_BACKWARD,
};
#else
const attnx_kernels K_TABLE = {
    K_LEVEL_NAME, K_exp, K_dot_scores, K_softmax, K_log_softmax, K_context, K_attend_online, K_shape_scores, K_ATTEND_ROWS, K_ATTEND_BACKWARD,
};
#endif
