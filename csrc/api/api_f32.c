/*
 * api_f32.c -- the float32 entry points of attnx.h: the same argument
 * checks, batching, threads and numerics as float64 (api_impl.h, shared),
 * on float data, through the float32 kernel table of the SIMD level the
 * float64 family uses.
 */
#include "attnx_api_util.h"
#include "attnx_internal_f32.h"

/* The float32 table of the level in use (or a test set with
 * attnx_set_simd_level), so both families always agree. */
const attnx_kernels_f32 *attnx_kernels_f32_get(void) { return attnx_level_get()->f32; }

#define AX_T float
#define AX_KERNELS attnx_kernels_f32
#define AX_KERNELS_GET attnx_kernels_f32_get
#define AX_API(name) attnx_##name##_f32
#include "api_impl.h"
#include "api_backward.h"

static void log_softmax_row(const attnx_kernels_f32 *kt, const float *x, size_t n, float *y)
{
    kt->log_softmax(x, n, y);
}

int attnx_log_softmax_rows_f32(const float *x, size_t rows, size_t n, float *y,
                               int num_threads)
{
    return rows_apply(x, rows, n, y, num_threads, log_softmax_row);
}
