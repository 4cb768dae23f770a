/*
 * kernels_scalar.c -- portable C99 kernels: the reference every SIMD level is
 * tested against, and what runs on a CPU with no supported vector unit.
 *
 *   exp          attnx_exp2sum_scalar (attnx_internal.h), within 1 ulp
 *   dot_scores   four partial sums per dot product; reads K once (8*T*d bytes)
 *   softmax      three passes: max (NaN-aware), exp of the exact two-sum
 *                s - max with a Kahan-compensated sum, then one division per
 *                element (correctly rounded quotient); within 4 ulp
 *   context      row-by-row axpy into ctx; zero weights skip their row
 *   attend       online softmax over blocks of 16 keys; reads each key and
 *                value row once (8*T*(d+dv) bytes), allocates nothing
 */
#include <math.h>

#include "attnx_internal.h"

#define BLOCK 16

static void exp_scalar(const double *x, size_t n, double *y)
{
    for (size_t i = 0; i < n; i++) y[i] = attnx_exp2sum_scalar(x[i], 0.0);
}

static double dot_scalar(const double *a, const double *b, size_t d)
{
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    size_t j = 0;
    for (; j + 4 <= d; j += 4) {
        a0 += a[j] * b[j];
        a1 += a[j + 1] * b[j + 1];
        a2 += a[j + 2] * b[j + 2];
        a3 += a[j + 3] * b[j + 3];
    }
    for (; j < d; j++) a0 += a[j] * b[j];
    return (a0 + a1) + (a2 + a3);
}

static void dot_scores_scalar(const double *q, const double *K, size_t T, size_t d,
                              double scale, double *s)
{
    for (size_t t = 0; t < T; t++) s[t] = scale * dot_scalar(q, K + t * d, d);
}

static int softmax_scalar(const double *x, size_t n, double *y)
{
    double m = -INFINITY;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        nan |= (v != v);
        if (v > m) m = v;
    }
    if (nan || m == -INFINITY) {
        for (size_t i = 0; i < n; i++) y[i] = NAN;
        return !nan;
    }
    /* Kahan summation: the sum's relative error stays O(eps) for any n. */
    double sum = 0.0, comp = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = attnx_exp_diff_scalar(x[i], m);
        y[i] = e;
        double yk = e - comp;
        double t = sum + yk;
        comp = (t - sum) - yk;
        sum = t;
    }
    for (size_t i = 0; i < n; i++) y[i] = y[i] / sum;
    return 0;
}

static void context_scalar(const double *w, const double *V, size_t T, size_t dv,
                           double *ctx)
{
    for (size_t j = 0; j < dv; j++) ctx[j] = 0.0;
    for (size_t t = 0; t < T; t++) {
        double wt = w[t];
        if (wt == 0.0) continue;
        const double *v = V + t * dv;
        for (size_t j = 0; j < dv; j++) ctx[j] += wt * v[j];
    }
}

static void attend_online_scalar(const double *q, const double *K, const double *V,
                                 size_t T, size_t d, size_t dv, double scale,
                                 const unsigned char *mask, attnx_online *st,
                                 double *acc)
{
    double s[BLOCK];
    for (size_t t0 = 0; t0 < T; t0 += BLOCK) {
        size_t nb = T - t0 < BLOCK ? T - t0 : BLOCK;
        double bm = -INFINITY;
        int nan = 0;
        for (size_t b = 0; b < nb; b++) {
            size_t t = t0 + b;
            if (mask && !mask[t]) {
                s[b] = -INFINITY;
                continue;
            }
            double v = scale * dot_scalar(q, K + t * d, d);
            s[b] = v;
            nan |= (v != v);
            if (v > bm) bm = v;
        }
        if (nan) st->l = NAN;      /* poisons the result; finalisation sees it */
        if (bm == -INFINITY) continue;
        if (bm > st->m) {
            double c = st->m == -INFINITY ? 0.0 : attnx_exp_diff_scalar(st->m, bm);
            st->l *= c;
            if (c == 0.0) {        /* not acc *= 0: inf * 0 would be NaN */
                for (size_t j = 0; j < dv; j++) acc[j] = 0.0;
            } else {
                for (size_t j = 0; j < dv; j++) acc[j] *= c;
            }
            st->m = bm;
        }
        double m = st->m;
        for (size_t b = 0; b < nb; b++) {
            if (s[b] == -INFINITY) continue;
            double p = attnx_exp_diff_scalar(s[b], m);
            if (p == 0.0) continue;
            st->l += p;
            const double *v = V + (t0 + b) * dv;
            for (size_t j = 0; j < dv; j++) acc[j] += p * v[j];
        }
    }
}

const attnx_kernels attnx_kernels_scalar = {
    "scalar",
    exp_scalar,
    dot_scores_scalar,
    softmax_scalar,
    context_scalar,
    attend_online_scalar,
    NULL,
};
