/*
 * api_log_softmax.c -- log(softmax(x)) without underflow:
 *
 *     y_i = (x_i - max) - log(sum_j exp(x_j - max))
 *
 * x_i - max is an exact two-sum (hi + lo), so y_i = (hi - log S) + lo loses
 * nothing to the subtraction even when the scores spread over thousands;
 * where softmax itself underflows to 0 (x_i - max < -745) this still gives
 * the finite answer. S = c + R: c elements equal the max and contribute
 * exactly 1 each; R, the rest, is Kahan-summed over exps from the active
 * SIMD level's kernel. With c == 1, log S = log1p(R) is taken from R itself:
 * forming 1 + R first would cost up to 15 ulp when log S is small (S near 1,
 * one dominant score). The logarithm is this file's own (no libm).
 * Passes: max (read x), sum (read x), result (read x, write y): 32n bytes.
 */
#include <math.h>
#include <stdint.h>

#include "attnx_api_util.h"

#define CHUNK 256

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
static double log1p_scalar(double r)
{
    if (r < 0x1.6a09e667f3bcdp-2)          /* sqrt(2) - 1: 1 + r < sqrt(2) */
        return log_kernel(r, 0);
    return log_scalar(1.0 + r);
}

/* One row, with scipy.special.log_softmax's rules for non-finite input: any
 * NaN, or an all -inf row, gives NaN; a +inf gives NaN there and -inf at the
 * other entries (inf - inf, finite - inf). */
static void log_softmax_row(const attnx_kernels *kt, const double *x, size_t n, double *y)
{
    double m = -INFINITY;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        nan |= (v != v);
        m = v > m ? v : m;
    }
    if (nan || m == -INFINITY) {
        for (size_t i = 0; i < n; i++) y[i] = NAN;
        return;
    }
    if (m == INFINITY) {
        for (size_t i = 0; i < n; i++) y[i] = x[i] == INFINITY ? NAN : -INFINITY;
        return;
    }
    double buf[CHUNK], sum = 0.0, comp = 0.0;
    size_t at_max = 0;
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t c = n - i < CHUNK ? n - i : CHUNK;
        for (size_t j = 0; j < c; j++) buf[j] = x[i + j] - m;
        kt->exp(buf, c, buf);
        for (size_t j = 0; j < c; j++) {
            if (x[i + j] == m) {             /* exactly 1: counted, not summed */
                at_max++;
                continue;
            }
            double t = sum + (buf[j] - comp);    /* Kahan: R's error stays O(eps) */
            comp = (t - sum) - (buf[j] - comp);
            sum = t;
        }
    }
    double logs = at_max == 1 ? log1p_scalar(sum) : log_scalar((double)at_max + sum);
    for (size_t i = 0; i < n; i++) {
        double lo;
        double hi = attnx_two_diff(x[i], m, &lo);
        lo = hi > -INFINITY ? lo : 0.0;      /* hi = -inf: lo is NaN */
        y[i] = (hi - logs) + lo;
    }
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
    for (size_t i = i0; i < i1; i++) log_softmax_row(j->kt, j->x + i * j->n, j->n, j->y + i * j->n);
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
