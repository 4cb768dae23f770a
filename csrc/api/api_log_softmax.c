/*
 * api_log_softmax.c -- float64 log(softmax(x)) rows over the level's kernel
 * (kernels/log_softmax.c, which float32 shares), threads over rows; and
 * the logarithms every level's kernels call, out of line so that they are
 * the same at every level and need no libm (whose log would tie wheels to
 * a newer glibc): attnx_log_f64, attnx_log1p_f64.
 */
#include <math.h>
#include <stdint.h>

#include "attnx_api_util.h"

/* log(x) for finite x >= DBL_MIN (the caller's S is in [1, n]):
 * x = 2^k (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)); s = f / (2 + f), so
 * log(1 + f) = 2 atanh(s) = f - s (f - R(s^2)), R the odd series of 2 atanh
 * beyond its first term, to s^23 (|s| <= 0.1716: truncation < 2^-60).
 * f is exact (Sterbenz), so the error is a few roundings of the small
 * correction term and the final add: about 1 ulp. */
static double log_kernel(double f, int k);
static double log_scalar(double x);

double attnx_log_f64(double x) { return log_scalar(x); }

static double log_scalar(double x)
{
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    int k = (int)((u >> 52) & 0x7ff) - 1023;
    u = (u & 0x000fffffffffffffull) | 0x3ff0000000000000ull;   /* 1 <= m < 2 */
    double m;
    memcpy(&m, &u, sizeof m);
    if (m > 0x1.6a09e667f3bcdp0) {   /* sqrt(2): keep 1 + f within [0.707, 1.414) */
        m *= 0.5;
        k += 1;
    }
    return log_kernel(m - 1.0, k);
}

/* log(2^k (1 + f)) for 1 + f in [sqrt(1/2), sqrt(2)), f exact. */
static double log_kernel(double f, int k)
{
    double s = f / (2.0 + f);
    double z = s * s;
    double R = z * (2.0 / 3 + z * (2.0 / 5 + z * (2.0 / 7 + z * (2.0 / 9 + z * (2.0 / 11 +
               z * (2.0 / 13 + z * (2.0 / 15 + z * (2.0 / 17 + z * (2.0 / 19 + z * (2.0 / 21 +
               z * (2.0 / 23)))))))))));
    double dk = (double)k;
    return dk * ATTNX_LN2_HI + (f - (s * (f - R) - dk * ATTNX_LN2_LO));
}

/* log(1 + r) for r >= 0, accurate for small r (no rounding of 1 + r). */
double attnx_log1p_f64(double r)
{
    /* log1p(r) = r - r^2/2 + ..., and r^2/2 is below a quarter ulp of r:
     * r is the rounded result (and s * s below would leave the normal
     * range for r < 2^-511, an assist on Intel cores) */
    if (r < 0x1p-54) return r;
    if (r < 0x1.6a09e667f3bcdp-2)          /* sqrt(2) - 1: 1 + r < sqrt(2) */
        return log_kernel(r, 0);
    return log_scalar(1.0 + r);
}

int attnx_log_softmax(const double *x, size_t n, double *y)
{
    return attnx_log_softmax_rows(x, 1, n, y, 1);
}

typedef struct {
    const attnx_kernels *kt;
    const double *x;
    size_t n;
    double *y;
} log_softmax_job;

static void log_softmax_range(void *p, size_t i0, size_t i1)
{
    const log_softmax_job *j = (const log_softmax_job *)p;
    for (size_t i = i0; i < i1; i++) j->kt->log_softmax(j->x + i * j->n, j->n, j->y + i * j->n);
}

int attnx_log_softmax_rows(const double *x, size_t rows, size_t n, double *y, int num_threads)
{
    if (!x || !y) return ATTNX_ERR_NULL;
    if (num_threads < 0) return ATTNX_ERR_ARG;
    size_t total;
    if (!attnx_elems(rows, n, sizeof(double), &total)) return ATTNX_ERR_OVERFLOW;
    if (x != y && attnx_overlap(y, total * sizeof(double), x, total * sizeof(double)))
        return ATTNX_ERR_OVERLAP;
    if (n == 0) return ATTNX_OK;
    log_softmax_job job = {attnx_kernels_get(), x, n, y};
    attnx_parallel_for(attnx_pick_threads(num_threads, rows, (double)total * 8), rows,
                       log_softmax_range, &job);
    return ATTNX_OK;
}
