/*
 * kernels_additive_scalar.c -- portable C99 additive-attention kernels: the
 * reference every SIMD level is tested against, and what runs without a
 * supported vector unit. No libm call (nm -u shows none): libm's tanh is
 * slow and its exp is a GLIBC_2.29 symbol that would narrow the wheels.
 *
 *   tanh     attnx_tanh_scalar (attnx_internal_additive.h): an odd
 *            polynomial below |x| = 0.3, 1 - 2/(exp(2|x|) + 1) with a
 *            double-double E and a residual-corrected quotient above,
 *            clamped at |x| = 20 (tanh is 1.0 there); -0.0 stays -0.0, NaN
 *            propagates, +-inf gives +-1.
 *            Max error 0.62 ulp, at this level and at every SIMD level
 *            (where one FMA gives the quotient's residual): measured against 80-bit
 *            long double tanhl, 0.6187 ulp (AVX-512, AVX2) and 0.6167
 *            (portable) over 1.2e8 random points on [0, 20], 0.614 (NEON,
 *            against 128-bit tanhl under qemu, 4e6 points on [0, 1]); the
 *            polynomial branch alone 0.57-0.59, |x| >= 4 0.50.
 *            tests/test_additive.c prints it per level over 4.4e6 points
 *            (3.1e6 evenly spread on [-20, 20], 1e6 random on [-2, 2] and
 *            [-0.6, 0.6], tiny values down to 2^-1074, huge ones up to
 *            DBL_MAX, the thresholds, random bit patterns; 1.8e6 where long
 *            double is a software quad): 0.596 to 0.612, and asserts
 *            <= 1 ulp. Reads x once, writes y once (16*n bytes).
 *   scores   s[t] = sum_j v[j] * tanh(a[j] + Kp[t, j]): four partial sums
 *            per row, tanh inlined; reads Kp once (8*T*h bytes; a and v
 *            stay in L1), no temporary array;
 *            error <= (h + 2) eps sum_j |v_j tanh_j| (a + Kp rounded,
 *            the tanh's 0.62 ulp, the sum's roundings; at most 1.3 eps
 *            sum|v tanh| measured on the test sizes).
 */
#include "attnx_internal_additive.h"

static void tanh_scalar(const double *x, size_t n, double *y)
{
    for (size_t i = 0; i < n; i++) y[i] = attnx_tanh_scalar(x[i]);
}

static void additive_scores_scalar(const double *a, const double *Kp, const double *v,
                                   size_t T, size_t h, double *s)
{
    for (size_t t = 0; t < T; t++) {
        const double *k = Kp + t * h;
        /* four chains, so the adds need not wait on each other */
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
        size_t j = 0;
        for (; j + 4 <= h; j += 4) {
            s0 += v[j] * attnx_tanh_scalar(a[j] + k[j]);
            s1 += v[j + 1] * attnx_tanh_scalar(a[j + 1] + k[j + 1]);
            s2 += v[j + 2] * attnx_tanh_scalar(a[j + 2] + k[j + 2]);
            s3 += v[j + 3] * attnx_tanh_scalar(a[j + 3] + k[j + 3]);
        }
        for (; j < h; j++) s0 += v[j] * attnx_tanh_scalar(a[j] + k[j]);
        s[t] = (s0 + s1) + (s2 + s3);
    }
}

const attnx_additive_kernels attnx_additive_kernels_scalar = {
    "scalar",
    tanh_scalar,
    additive_scores_scalar,
};
