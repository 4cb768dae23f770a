/*
 * api.c -- the float64 entry points of attnx.h (their bodies: api_impl.h,
 * shared with float32), the status messages, build facts and attnx_exp.
 */
#include <math.h>
#include <stddef.h>

#include "attnx_api_util.h"

/* The Python build writes the compiler and flags into a generated header. */
#if defined(ATTNX_HAVE_BUILD_INFO_H)
#include "attnx_build_info.h"
#endif
#ifndef ATTNX_BUILD_INFO
#define ATTNX_BUILD_INFO "C library build (" __DATE__ ")"
#endif

const char *attnx_strerror(int status)
{
    switch (status) {
    case ATTNX_OK: return "success";
    case ATTNX_ERR_NULL: return "a required pointer is NULL";
    case ATTNX_ERR_EMPTY: return "the key sequence is empty (T == 0)";
    case ATTNX_ERR_OVERFLOW: return "array sizes overflow size_t";
    case ATTNX_ERR_OVERLAP: return "an output overlaps an input";
    case ATTNX_ERR_NOMEM: return "out of memory";
    case ATTNX_ERR_ARG: return "invalid argument";
    case ATTNX_ERR_UNSUPPORTED: return "SIMD level not supported on this CPU or build";
    default: return "unknown attnx status";
    }
}

const char *attnx_build_info(void) { return ATTNX_BUILD_INFO; }

int attnx_max_threads(void) { return attnx_default_threads(); }

#define AX_T double
#define AX_KERNELS attnx_kernels
#define AX_KERNELS_GET attnx_kernels_get
#define AX_API(name) attnx_##name
#include "api_impl.h"
#include "api_backward.h"

int attnx_exp(const double *x, size_t n, double *y)
{
    if (!x || !y) return ATTNX_ERR_NULL;
    if (!elems(n, 1, &n)) return ATTNX_ERR_OVERFLOW;
    if (x != y && overlaps(y, n, x, n * sizeof(double))) return ATTNX_ERR_OVERLAP;
    attnx_kernels_get()->exp(x, n, y);
    return ATTNX_OK;
}
