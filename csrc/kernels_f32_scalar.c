/*
 * kernels_f32_scalar.c -- portable C99 float32 kernels: what runs on a CPU
 * with no supported vector unit, and the statement, for every level, of how
 * the float32 kernels accumulate and how far they land from float64.
 *
 * Accumulation (the same design at every level; the SIMD files only widen
 * it, change the order of additions and fuse multiply-adds):
 *
 *   exp          float arithmetic throughout: the algorithm of
 *                attnx_internal_f32.h (Cody-Waite reduction carried as
 *                rh + rl, a fitted degree-7 polynomial, 1 + rh split
 *                exactly, two exact power-of-2 scalings, subnormal results
 *                rounded once by an integer add); reads x, writes y once
 *   dot_scores   float32 products and sums, in several independent partial
 *                sums (4 here, 8-16 vector accumulators in the SIMD files),
 *                then scaled: worst case (d + 1) * 2^-24 * sum|q_j K_tj|,
 *                typically far less (4*T*d bytes of K read once)
 *   softmax      max (NaN-aware); exp of the exact float two-sum x - max,
 *                stored; the sum of those exps in float64 (each float exp
 *                converted: the sum's rounding is 2^-53-sized, for any n);
 *                then y = e / sum, here divided in double, in the SIMD
 *                files e * r_hi + e * r_lo (r = 1/sum split into two
 *                floats, one fused multiply-add): one rounding to float.
 *                So each weight carries the exp's error plus one final
 *                rounding. Reads x twice, y once, writes y twice (20*n bytes)
 *   log_softmax  as softmax for the max and the float64 sum, then
 *                y = ((double)x - max) - log(sum) in double (log:
 *                attnx_log_pos_f64), rounded once to float: correct where
 *                softmax underflows (x - max = -1000 gives -1000 - log(sum))
 *   context      float32 accumulators, value rows added in order (the SIMD
 *                files keep ctx in registers and sum even and odd rows
 *                apart); zero weights skip their row unread
 *   attend       online softmax: scores as dot_scores (float32); the running
 *                max m (a float value) and the running sum l in float64;
 *                p = exp(s - m) in float via the exact two-sum; the rescale
 *                factor exp(m_old - m_new) computed in double and applied
 *                to l in double and, rounded to float, to the float32
 *                accumulator acc[dv]; ctx = acc / l. Blocks of 16 keys here
 *                (the SIMD files: one vector of scores per block); reads
 *                each key and value row once (4*T*(d+dv) bytes), masked and
 *                p == 0 rows not at all; allocates nothing. The batched
 *                flash kernels (attend_rows, SIMD files) accumulate the
 *                same way: float32 score and P.V tiles, (m, l) per query
 *                with l in float64. Split across threads (api_f32.c), the
 *                partial results are merged in float64.
 *
 * Measured against the float64 functions on the same inputs (converted),
 * random inputs in [-1, 1) with d, T up to 4096 (tests/test_attnx_f32.c
 * prints these for every level on every run; the worst over x86-64
 * avx512/avx2/scalar and aarch64 neon/scalar under qemu):
 *
 *   exp           0.64 ulp (float32 ulp); 0.76 ulp of 2^-149 for
 *                 subnormal results; 4e5 points over the whole range
 *   dot_scores    |err| <= 1.2e-7 * scale * sum_j |q_j K_tj|
 *   softmax       1.2e-7 relative (1 ulp), scores spread over 100 and 1000
 *   log_softmax   6.2e-8 relative (0.5 ulp)
 *   context       |err_j| <= 3.4e-7 * sum_t w_t |V_tj|
 *   attend        weights 6.3e-7 relative; context |err_j| <= 1.5e-7 *
 *                 max_j sum_t w_t |V_tj| at scale 1/sqrt(d), 7.2e-7 at
 *                 4/sqrt(d) (batched rows): the float32 scores dominate, a
 *                 score error e scaling a weight by e^e
 *
 * The test asserts, per case, the worst-case bounds of this design (far
 * above these figures at a few thousand terms) and, over all cases, these
 * figures with a margin of 1.2 to 4 (check_error_budget).
 */
#include <math.h>   /* INFINITY, NAN: macros only, no libm call */

#include "attnx_internal_f32.h"

#define BLOCK 16

static void exp_f32_scalar(const float *x, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++) y[i] = attnx_expf2sum_scalar(x[i], 0.0f);
}

static float dot_f32(const float *a, const float *b, size_t d)
{
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
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

static void dot_scores_f32_scalar(const float *q, const float *K, size_t T, size_t d,
                                  float scale, float *s)
{
    for (size_t t = 0; t < T; t++) s[t] = scale * dot_f32(q, K + t * d, d);
}

/* The row max, or NaN when the row holds a NaN. */
static float row_max(const float *x, size_t n)
{
    float m = -INFINITY;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        nan |= (v != v);
        if (v > m) m = v;
    }
    return nan ? NAN : m;
}

static int softmax_f32_scalar(const float *x, size_t n, float *y)
{
    float m = row_max(x, n);
    if (m != m || m == -INFINITY) {
        for (size_t i = 0; i < n; i++) y[i] = NAN;
        return m == -INFINITY;
    }
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        float e = attnx_expf_diff_scalar(x[i], m);
        y[i] = e;
        sum += e;
    }
    for (size_t i = 0; i < n; i++) y[i] = (float)((double)y[i] / sum);
    return 0;
}

static double exp_sum(const float *x, size_t n, float m)
{
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += attnx_expf_diff_scalar(x[i], m);
    return sum;
}

static void log_softmax_f32_scalar(const float *x, size_t n, float *y)
{
    float m = row_max(x, n);
    if (m != m || m == -INFINITY) {
        for (size_t i = 0; i < n; i++) y[i] = NAN;
        return;
    }
    if (m == INFINITY) {
        attnx_log_softmax_inf_f32(x, n, y);
        return;
    }
    const double ls = attnx_log_sum_f32(x, n, m, exp_sum), md = m;
    for (size_t i = 0; i < n; i++) y[i] = (float)(((double)x[i] - md) - ls);
}

static void context_f32_scalar(const float *w, const float *V, size_t T, size_t dv,
                               float *ctx)
{
    for (size_t j = 0; j < dv; j++) ctx[j] = 0.0f;
    for (size_t t = 0; t < T; t++) {
        float wt = w[t];
        if (wt == 0.0f) continue;
        const float *v = V + t * dv;
        for (size_t j = 0; j < dv; j++) ctx[j] += wt * v[j];
    }
}

static void attend_online_f32_scalar(const float *q, const float *K, const float *V,
                                     size_t T, size_t d, size_t dv, float scale,
                                     const unsigned char *mask, attnx_online *st,
                                     float *acc)
{
    float s[BLOCK];
    if (st->l != st->l) return;          /* poisoned: the result is NaN anyway */
    for (size_t t0 = 0; t0 < T; t0 += BLOCK) {
        size_t nb = T - t0 < BLOCK ? T - t0 : BLOCK;
        float bm = -INFINITY;
        int nan = 0;
        for (size_t b = 0; b < nb; b++) {
            size_t t = t0 + b;
            if (mask && !mask[t]) {
                s[b] = -INFINITY;
                continue;
            }
            float v = scale * dot_f32(q, K + t * d, d);
            s[b] = v;
            nan |= (v != v);
            if (v > bm) bm = v;
        }
        if (nan) {
            st->l = NAN;                 /* finalisation sees it */
            return;
        }
        if (bm == -INFINITY) continue;
        if (bm > st->m) {
            double c = attnx_rescale_factor(st->m, bm);
            float cf = (float)c;
            st->l *= c;
            if (cf == 0.0f) {            /* not acc *= 0: inf * 0 would be NaN */
                for (size_t j = 0; j < dv; j++) acc[j] = 0.0f;
            } else {
                for (size_t j = 0; j < dv; j++) acc[j] *= cf;
            }
            st->m = bm;
        }
        const float m = (float)st->m;
        for (size_t b = 0; b < nb; b++) {
            if (s[b] == -INFINITY) continue;
            float p = attnx_expf_diff_scalar(s[b], m);
            if (p == 0.0f) continue;
            st->l += p;
            const float *v = V + (t0 + b) * dv;
            for (size_t j = 0; j < dv; j++) acc[j] += p * v[j];
        }
        if (st->l != st->l) return;      /* a +inf score: inf - inf */
    }
}

const attnx_kernels_f32 attnx_kernels_f32_scalar = {
    "scalar",
    exp_f32_scalar,
    dot_scores_f32_scalar,
    softmax_f32_scalar,
    log_softmax_f32_scalar,
    context_f32_scalar,
    attend_online_f32_scalar,
    NULL,
};
