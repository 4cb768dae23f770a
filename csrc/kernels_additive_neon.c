/*
 * kernels_additive_neon.c -- aarch64 Advanced SIMD (NEON) additive-attention
 * kernels: two float64 lanes per float64x2_t. NEON is architectural on
 * aarch64: no runtime probe, no extra compiler flags. Same semantics as
 * kernels_additive_scalar.c, which the unit tests compare against. No libm
 * call.
 *
 *   tanh     tanh_v: the algorithm of attnx_internal_additive.h with FMA
 *            (exact quotient residual in one FMS, exp polynomial as Horner
 *            in r^2 over pairs of coefficients, 2^n from the shifter's
 *            integer bits); both branches for every lane, one bit-select;
 *            one division (1/D). Max error 0.62 ulp (tests/test_additive.c,
 *            under qemu). Reads x once, writes y once (16*n bytes).
 *   scores   four Kp rows per iteration, 2 columns of h per vector: a and
 *            v loaded once for the four rows, x = a + Kp and its tanh in
 *            registers, one FMA into each row's accumulator; the
 *            accumulators reduced pairwise (vpaddq) into two vectors of
 *            scores. A leftover row is reduced the same way (one add), so a
 *            score does not depend on T or on the row's position. Reads Kp
 *            once (8*T*h bytes), no temporary array;
 *            error <= (h + 2) eps sum_j |v_j tanh_j| (a + Kp rounded,
 *            the tanh's 0.62 ulp, the sum's roundings; at most 1.3 eps
 *            sum|v tanh| measured on the test sizes).
 */
#include "attnx_internal_additive.h"

#if defined(ATTNX_HAVE_NEON)

#include <arm_neon.h>

/* tanh on 2 lanes: see attnx_internal_additive.h. */
static inline float64x2_t tanh_v(float64x2_t x)
{
    const uint64x2_t sign = vandq_u64(vreinterpretq_u64_f64(x), vdupq_n_u64(ATTNX_SIGN_BIT));
    const float64x2_t one = vdupq_n_f64(1.0);
    /* FMIN returns NaN when an input is NaN: NaN passes the clamp */
    float64x2_t ax = vminq_f64(vabsq_f64(x), vdupq_n_f64(ATTNX_TANH_CLAMP));

    /* |x| < 0.3: x + x^3 P(x^2) */
    float64x2_t s = vmulq_f64(ax, ax);
    float64x2_t p = vfmaq_f64(vdupq_n_f64(ATTNX_TANH_P6), vdupq_n_f64(ATTNX_TANH_P7), s);
    p = vfmaq_f64(vdupq_n_f64(ATTNX_TANH_P5), p, s);
    p = vfmaq_f64(vdupq_n_f64(ATTNX_TANH_P4), p, s);
    p = vfmaq_f64(vdupq_n_f64(ATTNX_TANH_P3), p, s);
    p = vfmaq_f64(vdupq_n_f64(ATTNX_TANH_P2), p, s);
    p = vfmaq_f64(vdupq_n_f64(ATTNX_TANH_P1), p, s);
    p = vfmaq_f64(vdupq_n_f64(ATTNX_TANH_P0), p, s);
    const float64x2_t small = vfmaq_f64(ax, vmulq_f64(ax, s), p);

    /* E = exp(2|x|) = 2^n (eh + el) */
    const float64x2_t shifter = vdupq_n_f64(ATTNX_SHIFTER);
    float64x2_t y = vaddq_f64(ax, ax);
    float64x2_t t = vfmaq_f64(shifter, y, vdupq_n_f64(ATTNX_LOG2E));
    float64x2_t n = vsubq_f64(t, shifter);
    float64x2_t rh = vfmsq_f64(y, n, vdupq_n_f64(ATTNX_LN2_HI));   /* exact */
    float64x2_t rl = vmulq_f64(n, vdupq_n_f64(-ATTNX_LN2_LO));
    float64x2_t r = vaddq_f64(rh, rl);
    float64x2_t r2 = vmulq_f64(r, r);
    /* Horner in r^2 over pairs: half the dependency chain of plain Horner */
    float64x2_t a6 = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C12), vdupq_n_f64(ATTNX_EXP_C13), r);
    float64x2_t a5 = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C10), vdupq_n_f64(ATTNX_EXP_C11), r);
    float64x2_t a4 = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C8), vdupq_n_f64(ATTNX_EXP_C9), r);
    float64x2_t a3 = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C6), vdupq_n_f64(ATTNX_EXP_C7), r);
    float64x2_t a2 = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C4), vdupq_n_f64(ATTNX_EXP_C5), r);
    float64x2_t a1 = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C2), vdupq_n_f64(ATTNX_EXP_C3), r);
    float64x2_t q = vfmaq_f64(a5, a6, r2);
    q = vfmaq_f64(a4, q, r2);
    q = vfmaq_f64(a3, q, r2);
    q = vfmaq_f64(a2, q, r2);
    q = vfmaq_f64(a1, q, r2);
    float64x2_t sh = vaddq_f64(one, rh);
    float64x2_t sl = vaddq_f64(vsubq_f64(one, sh), rh);
    float64x2_t tl = vaddq_f64(sl, vfmaq_f64(rl, r2, q));
    float64x2_t eh = vaddq_f64(sh, tl);
    float64x2_t el = vsubq_f64(tl, vsubq_f64(eh, sh));
    /* 2^n: the low bits of t hold n (0 <= n <= 58) */
    float64x2_t sc = vreinterpretq_f64_u64(
        vshlq_n_u64(vaddq_u64(vreinterpretq_u64_f64(t), vdupq_n_u64(1023)), 52));
    eh = vmulq_f64(eh, sc);
    el = vmulq_f64(el, sc);

    /* D = E + 1 = dh + dl; 1/D = qh (1 + res) */
    float64x2_t dh = vaddq_f64(eh, one);
    float64x2_t dl = vaddq_f64(vsubq_f64(one, vsubq_f64(dh, eh)), el);
    float64x2_t qh = vdivq_f64(one, dh);
    float64x2_t res = vfmsq_f64(one, qh, dh);      /* exact */
    res = vfmsq_f64(res, qh, dl);
    /* 1 - 2 qh (1 + res), with 1 - 2qh split exactly */
    float64x2_t q2 = vaddq_f64(qh, qh);
    float64x2_t s1 = vsubq_f64(one, q2);
    float64x2_t e1 = vsubq_f64(vsubq_f64(one, s1), q2);
    float64x2_t large = vaddq_f64(s1, vfmsq_f64(e1, res, q2));

    uint64x2_t lt = vcltq_f64(ax, vdupq_n_f64(ATTNX_TANH_SMALL));
    float64x2_t th = vbslq_f64(lt, small, large);
    return vreinterpretq_f64_u64(vorrq_u64(vreinterpretq_u64_f64(th), sign));
}

static void tanh_neon(const double *x, size_t n, double *y)
{
    const float64x2_t z = vdupq_n_f64(0.0);
    size_t i = 0;
    /* two independent vectors per step hide the latency */
    for (; i + 4 <= n; i += 4) {
        float64x2_t a = tanh_v(vld1q_f64(x + i));
        float64x2_t b = tanh_v(vld1q_f64(x + i + 2));
        vst1q_f64(y + i, a);
        vst1q_f64(y + i + 2, b);
    }
    if (i + 2 <= n) {
        vst1q_f64(y + i, tanh_v(vld1q_f64(x + i)));
        i += 2;
    }
    if (i < n)   /* one element: load and store lane 0 only */
        vst1q_lane_f64(y + i, tanh_v(vld1q_lane_f64(x + i, z, 0)), 0);
}

/* ----------------------------------------------------------------- scores */

static void additive_scores_neon(const double *a, const double *Kp, const double *v,
                                 size_t T, size_t h, double *s)
{
    const float64x2_t zero = vdupq_n_f64(0.0);
    const size_t hv = h & ~(size_t)1;
    size_t t = 0;
    for (; t + 4 <= T; t += 4) {
        const double *k0 = Kp + t * h, *k1 = k0 + h, *k2 = k1 + h, *k3 = k2 + h;
        float64x2_t c0 = zero, c1 = zero, c2 = zero, c3 = zero;
        for (size_t j = 0; j < hv; j += 2) {
            float64x2_t av = vld1q_f64(a + j), vv = vld1q_f64(v + j);
            c0 = vfmaq_f64(c0, vv, tanh_v(vaddq_f64(av, vld1q_f64(k0 + j))));
            c1 = vfmaq_f64(c1, vv, tanh_v(vaddq_f64(av, vld1q_f64(k1 + j))));
            c2 = vfmaq_f64(c2, vv, tanh_v(vaddq_f64(av, vld1q_f64(k2 + j))));
            c3 = vfmaq_f64(c3, vv, tanh_v(vaddq_f64(av, vld1q_f64(k3 + j))));
        }
        if (h & 1) {
            /* last column in lane 0; lane 1: tanh(0 + 0) * 0 = 0 */
            float64x2_t av = vld1q_lane_f64(a + hv, zero, 0), vv = vld1q_lane_f64(v + hv, zero, 0);
            c0 = vfmaq_f64(c0, vv, tanh_v(vaddq_f64(av, vld1q_lane_f64(k0 + hv, zero, 0))));
            c1 = vfmaq_f64(c1, vv, tanh_v(vaddq_f64(av, vld1q_lane_f64(k1 + hv, zero, 0))));
            c2 = vfmaq_f64(c2, vv, tanh_v(vaddq_f64(av, vld1q_lane_f64(k2 + hv, zero, 0))));
            c3 = vfmaq_f64(c3, vv, tanh_v(vaddq_f64(av, vld1q_lane_f64(k3 + hv, zero, 0))));
        }
        vst1q_f64(s + t, vpaddq_f64(c0, c1));
        vst1q_f64(s + t + 2, vpaddq_f64(c2, c3));
    }
    for (; t < T; t++) {
        const double *k = Kp + t * h;
        float64x2_t c = zero;
        for (size_t j = 0; j < hv; j += 2)
            c = vfmaq_f64(c, vld1q_f64(v + j), tanh_v(vaddq_f64(vld1q_f64(a + j), vld1q_f64(k + j))));
        if (h & 1)
            c = vfmaq_f64(c, vld1q_lane_f64(v + hv, zero, 0),
                          tanh_v(vaddq_f64(vld1q_lane_f64(a + hv, zero, 0),
                                           vld1q_lane_f64(k + hv, zero, 0))));
        s[t] = vaddvq_f64(c);
    }
}

const attnx_additive_kernels attnx_additive_kernels_neon = {
    "neon",
    tanh_neon,
    additive_scores_neon,
};

#endif /* ATTNX_HAVE_NEON */
