/*
 * kernels_neon.c -- aarch64 Advanced SIMD (NEON) kernels: two float64 lanes
 * per float64x2_t. Same semantics as kernels_scalar.c, which the unit tests
 * compare against. NEON is architectural on aarch64: no runtime probe, no
 * extra compiler flags. No libm call anywhere (math.h is here for the
 * INFINITY and NAN macros only).
 *
 *   exp          exp2sum_v: the algorithm of attnx_internal.h in two lanes
 *                (Cody-Waite reduction kept as rh + rl, degree-13 Taylor
 *                polynomial with FMA, 1 + rh split exactly); within 1 ulp
 *                over [-745, 709.78]; reads x once, writes y once (16*n bytes)
 *   dot_scores   four key rows per iteration, two FMA accumulators per row
 *                across d, q shared by the four rows; reads K once
 *                (8*T*d bytes; q stays in L1)
 *   softmax      three passes: vector max (FMAX propagates NaN), exp of the
 *                exact two-sum x - max with a Kahan-compensated sum per lane
 *                (four lanes, combined by a final Kahan sum), then one
 *                division per element (correctly rounded quotient); within
 *                4 ulp; reads x twice, y once, writes y twice (40*n bytes)
 *   context      four nonzero-weight value rows folded per pass over ctx, so
 *                ctx is loaded and stored once per four rows; zero weights
 *                skip their row unread; reads each used value row once
 *                (8*T*dv bytes)
 *   attend       online softmax over blocks of 16 keys: the block's unmasked
 *                rows scored four at a time, the block's exps vectorised,
 *                then its value rows folded four at a time into acc; masked
 *                keys and p == 0 keys skip their rows; reads each key and
 *                value row once (8*T*(d+dv) bytes), allocates nothing
 *   attend_rows  the same for two queries at a time: each key and value
 *                vector loaded once feeds both queries, which halves the
 *                loads per FMA when K and V sit in cache (a lone query or a
 *                row whose weight is 0 for one query takes the one-query
 *                path); 8*T*(d+dv) bytes per pair of queries
 */
#include "attnx_internal.h"

#if defined(ATTNX_HAVE_NEON)

#include <arm_neon.h>
#include <math.h>

#define BLOCK 16   /* keys per online-softmax step: scores stay in L1 */

/* ------------------------------------------------------------------ exp */

static inline float64x2_t vzero(void) { return vdupq_n_f64(0.0); }

/* exp(hi + lo) per lane, the algorithm of attnx_internal.h. lo must be
 * finite (exp_diff_v zeroes it where hi is outside the exp range). */
static inline float64x2_t exp2sum_v(float64x2_t hi, float64x2_t lo)
{
    /* FMAX/FMIN return NaN when an input is NaN: the clamp keeps NaN, which
     * then flows through the arithmetic (its integer conversion gives 0). */
    float64x2_t x = vminq_f64(vmaxq_f64(hi, vdupq_n_f64(ATTNX_EXP_LO_CLAMP)),
                              vdupq_n_f64(ATTNX_EXP_HI_CLAMP));
    const float64x2_t shifter = vdupq_n_f64(ATTNX_SHIFTER);
    /* adding 1.5*2^52 rounds x/ln2 to an integer in the low mantissa bits */
    float64x2_t n = vsubq_f64(vfmaq_f64(shifter, x, vdupq_n_f64(ATTNX_LOG2E)), shifter);
    /* Cody-Waite: n*ln2_hi is exact, so rh = x - n*ln2_hi is exact too;
     * rl = lo - n*ln2_lo is tiny. The rounded r = rh + rl feeds only the
     * r^2 terms. */
    float64x2_t rh = vfmsq_f64(x, n, vdupq_n_f64(ATTNX_LN2_HI));
    float64x2_t rl = vfmsq_f64(lo, n, vdupq_n_f64(ATTNX_LN2_LO));
    float64x2_t r = vaddq_f64(rh, rl);
    float64x2_t q = vdupq_n_f64(ATTNX_EXP_C13);
    q = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C12), q, r);
    q = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C11), q, r);
    q = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C10), q, r);
    q = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C9), q, r);
    q = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C8), q, r);
    q = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C7), q, r);
    q = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C6), q, r);
    q = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C5), q, r);
    q = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C4), q, r);
    q = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C3), q, r);
    q = vfmaq_f64(vdupq_n_f64(ATTNX_EXP_C2), q, r);
    /* e^r = (1 + rh) + (rl + r^2 q): 1 + rh split exactly into sh + sl
     * (Fast2Sum, |rh| < 1), so only the final add rounds noticeably */
    const float64x2_t one = vdupq_n_f64(1.0);
    float64x2_t tail = vfmaq_f64(rl, vmulq_f64(r, r), q);
    float64x2_t sh = vaddq_f64(one, rh);
    float64x2_t sl = vaddq_f64(vsubq_f64(one, sh), rh);
    float64x2_t er = vaddq_f64(sh, vaddq_f64(sl, tail));
    /* 2^n as two powers 2^(n/2) * 2^(n - n/2), built from integer bits:
     * n in [-1076, 1025] is out of reach of one normal power, and the
     * scaling is exact except where the result overflows or goes subnormal,
     * which then rounds once. */
    int64x2_t k = vcvtq_s64_f64(n);
    int64x2_t k1 = vshrq_n_s64(k, 1);          /* arithmetic: floor(k / 2) */
    int64x2_t k2 = vsubq_s64(k, k1);
    const int64x2_t bias = vdupq_n_s64(1023);
    float64x2_t s1 = vreinterpretq_f64_s64(vshlq_n_s64(vaddq_s64(k1, bias), 52));
    float64x2_t s2 = vreinterpretq_f64_s64(vshlq_n_s64(vaddq_s64(k2, bias), 52));
    return vmulq_f64(vmulq_f64(er, s1), s2);
}

/* exp(a - b) with the rounding of the subtraction compensated: Knuth's
 * two-sum gives a - b = hi + lo exactly; lo is used only where hi is in the
 * exp range (elsewhere it may be NaN from inf - inf and must not leak). */
static inline float64x2_t exp_diff_v(float64x2_t a, float64x2_t b)
{
    float64x2_t hi = vsubq_f64(a, b);
    float64x2_t z = vsubq_f64(hi, a);
    float64x2_t lo = vaddq_f64(vsubq_f64(a, vsubq_f64(hi, z)), vsubq_f64(vnegq_f64(b), z));
    uint64x2_t sane = vandq_u64(vcgeq_f64(hi, vdupq_n_f64(ATTNX_EXP_LO_CLAMP)),
                                vcleq_f64(hi, vdupq_n_f64(ATTNX_EXP_HI_CLAMP)));
    lo = vreinterpretq_f64_u64(vandq_u64(sane, vreinterpretq_u64_f64(lo)));
    return exp2sum_v(hi, lo);
}

static inline double exp_diff1(double a, double b)
{
    return vgetq_lane_f64(exp_diff_v(vdupq_n_f64(a), vdupq_n_f64(b)), 0);
}

static void exp_neon(const double *x, size_t n, double *y)
{
    const float64x2_t z = vzero();
    size_t i = 0;
    /* two independent vectors per step hide the polynomial's latency */
    for (; i + 4 <= n; i += 4) {
        float64x2_t a = exp2sum_v(vld1q_f64(x + i), z);
        float64x2_t b = exp2sum_v(vld1q_f64(x + i + 2), z);
        vst1q_f64(y + i, a);
        vst1q_f64(y + i + 2, b);
    }
    if (i + 2 <= n) {
        vst1q_f64(y + i, exp2sum_v(vld1q_f64(x + i), z));
        i += 2;
    }
    if (i < n)   /* one element: load and store lane 0 only */
        vst1q_lane_f64(y + i, exp2sum_v(vld1q_lane_f64(x + i, z, 0), z), 0);
}

/* ------------------------------------------------------------------ dot */

/* Lanes (dot(q, k0), dot(q, k1)) into *r01 and (dot(q, k2), dot(q, k3))
 * into *r23. Two accumulators per row keep eight FMA chains in flight. */
static inline void dot4(const double *q, const double *k0, const double *k1,
                        const double *k2, const double *k3, size_t d,
                        float64x2_t *r01, float64x2_t *r23)
{
    float64x2_t a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
    float64x2_t b0 = vzero(), b1 = vzero(), b2 = vzero(), b3 = vzero();
    size_t j = 0;
    for (; j + 4 <= d; j += 4) {
        float64x2_t qa = vld1q_f64(q + j), qb = vld1q_f64(q + j + 2);
        a0 = vfmaq_f64(a0, qa, vld1q_f64(k0 + j));
        b0 = vfmaq_f64(b0, qb, vld1q_f64(k0 + j + 2));
        a1 = vfmaq_f64(a1, qa, vld1q_f64(k1 + j));
        b1 = vfmaq_f64(b1, qb, vld1q_f64(k1 + j + 2));
        a2 = vfmaq_f64(a2, qa, vld1q_f64(k2 + j));
        b2 = vfmaq_f64(b2, qb, vld1q_f64(k2 + j + 2));
        a3 = vfmaq_f64(a3, qa, vld1q_f64(k3 + j));
        b3 = vfmaq_f64(b3, qb, vld1q_f64(k3 + j + 2));
    }
    if (j + 2 <= d) {
        float64x2_t qa = vld1q_f64(q + j);
        a0 = vfmaq_f64(a0, qa, vld1q_f64(k0 + j));
        a1 = vfmaq_f64(a1, qa, vld1q_f64(k1 + j));
        a2 = vfmaq_f64(a2, qa, vld1q_f64(k2 + j));
        a3 = vfmaq_f64(a3, qa, vld1q_f64(k3 + j));
        j += 2;
    }
    if (j < d) {   /* last column in lane 0; lane 1 adds 0 * 0 */
        const float64x2_t z = vzero();
        float64x2_t qa = vld1q_lane_f64(q + j, z, 0);
        b0 = vfmaq_f64(b0, qa, vld1q_lane_f64(k0 + j, z, 0));
        b1 = vfmaq_f64(b1, qa, vld1q_lane_f64(k1 + j, z, 0));
        b2 = vfmaq_f64(b2, qa, vld1q_lane_f64(k2 + j, z, 0));
        b3 = vfmaq_f64(b3, qa, vld1q_lane_f64(k3 + j, z, 0));
    }
    /* pairwise adds reduce two rows into the two lanes of one vector */
    *r01 = vpaddq_f64(vaddq_f64(a0, b0), vaddq_f64(a1, b1));
    *r23 = vpaddq_f64(vaddq_f64(a2, b2), vaddq_f64(a3, b3));
}

static inline double dot1(const double *q, const double *k, size_t d)
{
    float64x2_t a = vzero(), b = vzero();
    size_t j = 0;
    for (; j + 4 <= d; j += 4) {
        a = vfmaq_f64(a, vld1q_f64(q + j), vld1q_f64(k + j));
        b = vfmaq_f64(b, vld1q_f64(q + j + 2), vld1q_f64(k + j + 2));
    }
    if (j + 2 <= d) {
        a = vfmaq_f64(a, vld1q_f64(q + j), vld1q_f64(k + j));
        j += 2;
    }
    if (j < d) {
        const float64x2_t z = vzero();
        b = vfmaq_f64(b, vld1q_lane_f64(q + j, z, 0), vld1q_lane_f64(k + j, z, 0));
    }
    return vaddvq_f64(vaddq_f64(a, b));
}

static void dot_scores_neon(const double *q, const double *K, size_t T, size_t d,
                            double scale, double *s)
{
    const float64x2_t vs = vdupq_n_f64(scale);
    size_t t = 0;
    for (; t + 4 <= T; t += 4) {
        const double *k = K + t * d;
        float64x2_t r01, r23;
        dot4(q, k, k + d, k + 2 * d, k + 3 * d, d, &r01, &r23);
        vst1q_f64(s + t, vmulq_f64(vs, r01));
        vst1q_f64(s + t + 2, vmulq_f64(vs, r23));
    }
    for (; t < T; t++) s[t] = scale * dot1(q, K + t * d, d);
}

/* -------------------------------------------------------------- softmax */

/* One Kahan step per lane: the sum's relative error stays O(eps) for any n. */
static inline void kahan_v(float64x2_t *sum, float64x2_t *comp, float64x2_t e)
{
    float64x2_t yk = vsubq_f64(e, *comp);
    float64x2_t t = vaddq_f64(*sum, yk);
    *comp = vsubq_f64(vsubq_f64(t, *sum), yk);
    *sum = t;
}

static int softmax_neon(const double *x, size_t n, double *y)
{
    /* max: FMAX propagates NaN, so m is NaN iff the row holds one */
    float64x2_t m0 = vdupq_n_f64(-INFINITY), m1 = m0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        m0 = vmaxq_f64(m0, vld1q_f64(x + i));
        m1 = vmaxq_f64(m1, vld1q_f64(x + i + 2));
    }
    if (i + 2 <= n) m0 = vmaxq_f64(m0, vld1q_f64(x + i));
    double m = vmaxvq_f64(vmaxq_f64(m0, m1));
    if (n & 1) m = vget_lane_f64(vmax_f64(vdup_n_f64(m), vld1_f64(x + n - 1)), 0);
    if (m != m || m == -INFINITY) {
        const float64x2_t nan = vdupq_n_f64(NAN);
        for (i = 0; i + 2 <= n; i += 2) vst1q_f64(y + i, nan);
        if (i < n) y[i] = NAN;
        return m == -INFINITY;
    }

    /* exp of the exact two-sum, Kahan sums in four lanes */
    const float64x2_t vm = vdupq_n_f64(m);
    float64x2_t s0 = vzero(), c0 = vzero(), s1 = vzero(), c1 = vzero();
    for (i = 0; i + 4 <= n; i += 4) {
        float64x2_t e0 = exp_diff_v(vld1q_f64(x + i), vm);
        float64x2_t e1 = exp_diff_v(vld1q_f64(x + i + 2), vm);
        vst1q_f64(y + i, e0);
        vst1q_f64(y + i + 2, e1);
        kahan_v(&s0, &c0, e0);
        kahan_v(&s1, &c1, e1);
    }
    if (i + 2 <= n) {
        float64x2_t e0 = exp_diff_v(vld1q_f64(x + i), vm);
        vst1q_f64(y + i, e0);
        kahan_v(&s0, &c0, e0);
        i += 2;
    }
    if (i < n) {   /* lane 1 is exp(-inf - m) = 0 */
        float64x2_t e1 = exp_diff_v(vld1q_lane_f64(x + i, vdupq_n_f64(-INFINITY), 0), vm);
        vst1q_lane_f64(y + i, e1, 0);
        kahan_v(&s1, &c1, e1);
    }
    /* combine: Kahan over the lane sums, then over the lane corrections */
    double parts[8];
    vst1q_f64(parts, s0);
    vst1q_f64(parts + 2, s1);
    vst1q_f64(parts + 4, vnegq_f64(c0));
    vst1q_f64(parts + 6, vnegq_f64(c1));
    double sum = 0.0, comp = 0.0;
    for (int k = 0; k < 8; k++) {
        double yk = parts[k] - comp;
        double t = sum + yk;
        comp = (t - sum) - yk;
        sum = t;
    }

    /* a true division per element, not a reciprocal: correctly rounded */
    const float64x2_t vsum = vdupq_n_f64(sum);
    for (i = 0; i + 2 <= n; i += 2) vst1q_f64(y + i, vdivq_f64(vld1q_f64(y + i), vsum));
    if (i < n) y[i] = y[i] / sum;
    return 0;
}

/* ---------------------------------------------------------- context/axpy */

/* acc[j] += p0*v0[j], then p1*v1[j], p2*v2[j], p3*v3[j] (in that order, each
 * fused): ctx is loaded and stored once for four value rows. */
static inline void axpy4(double *acc, size_t dv, double p0, const double *v0,
                         double p1, const double *v1, double p2, const double *v2,
                         double p3, const double *v3)
{
    size_t j = 0;
    for (; j + 4 <= dv; j += 4) {
        float64x2_t a = vld1q_f64(acc + j), b = vld1q_f64(acc + j + 2);
        a = vfmaq_n_f64(a, vld1q_f64(v0 + j), p0);
        b = vfmaq_n_f64(b, vld1q_f64(v0 + j + 2), p0);
        a = vfmaq_n_f64(a, vld1q_f64(v1 + j), p1);
        b = vfmaq_n_f64(b, vld1q_f64(v1 + j + 2), p1);
        a = vfmaq_n_f64(a, vld1q_f64(v2 + j), p2);
        b = vfmaq_n_f64(b, vld1q_f64(v2 + j + 2), p2);
        a = vfmaq_n_f64(a, vld1q_f64(v3 + j), p3);
        b = vfmaq_n_f64(b, vld1q_f64(v3 + j + 2), p3);
        vst1q_f64(acc + j, a);
        vst1q_f64(acc + j + 2, b);
    }
    if (j + 2 <= dv) {
        float64x2_t a = vld1q_f64(acc + j);
        a = vfmaq_n_f64(a, vld1q_f64(v0 + j), p0);
        a = vfmaq_n_f64(a, vld1q_f64(v1 + j), p1);
        a = vfmaq_n_f64(a, vld1q_f64(v2 + j), p2);
        a = vfmaq_n_f64(a, vld1q_f64(v3 + j), p3);
        vst1q_f64(acc + j, a);
        j += 2;
    }
    if (j < dv) {
        /* vfma_f64 with a dup, not vfma_n_f64: GCC 12 splits the latter
         * into a multiply and an add */
        float64x1_t a = vld1_f64(acc + j);
        a = vfma_f64(a, vld1_f64(v0 + j), vdup_n_f64(p0));
        a = vfma_f64(a, vld1_f64(v1 + j), vdup_n_f64(p1));
        a = vfma_f64(a, vld1_f64(v2 + j), vdup_n_f64(p2));
        a = vfma_f64(a, vld1_f64(v3 + j), vdup_n_f64(p3));
        vst1_f64(acc + j, a);
    }
}

static inline void axpy1(double *acc, size_t dv, double p, const double *v)
{
    size_t j = 0;
    for (; j + 4 <= dv; j += 4) {
        vst1q_f64(acc + j, vfmaq_n_f64(vld1q_f64(acc + j), vld1q_f64(v + j), p));
        vst1q_f64(acc + j + 2, vfmaq_n_f64(vld1q_f64(acc + j + 2), vld1q_f64(v + j + 2), p));
    }
    if (j + 2 <= dv) {
        vst1q_f64(acc + j, vfmaq_n_f64(vld1q_f64(acc + j), vld1q_f64(v + j), p));
        j += 2;
    }
    if (j < dv) vst1_f64(acc + j, vfma_f64(vld1_f64(acc + j), vld1_f64(v + j), vdup_n_f64(p)));
}

static inline void fill_v(double *a, size_t n, double v)
{
    const float64x2_t vv = vdupq_n_f64(v);
    size_t j = 0;
    for (; j + 2 <= n; j += 2) vst1q_f64(a + j, vv);
    if (j < n) a[j] = v;
}

static inline void scale_v(double *a, size_t n, double c)
{
    size_t j = 0;
    for (; j + 2 <= n; j += 2) vst1q_f64(a + j, vmulq_n_f64(vld1q_f64(a + j), c));
    if (j < n) a[j] *= c;
}

/* Rows are collected four at a time (pointer + weight) and folded together. */
typedef struct rowbuf {
    const double *v[4];
    double p[4];
    int n;
} rowbuf;

static inline void rowbuf_push(rowbuf *rb, double *acc, size_t dv, double p, const double *v)
{
    rb->p[rb->n] = p;
    rb->v[rb->n] = v;
    if (++rb->n == 4) {
        axpy4(acc, dv, rb->p[0], rb->v[0], rb->p[1], rb->v[1], rb->p[2], rb->v[2],
              rb->p[3], rb->v[3]);
        rb->n = 0;
    }
}

static inline void rowbuf_flush(rowbuf *rb, double *acc, size_t dv)
{
    for (int i = 0; i < rb->n; i++) axpy1(acc, dv, rb->p[i], rb->v[i]);
    rb->n = 0;
}

static void context_neon(const double *w, const double *V, size_t T, size_t dv,
                         double *ctx)
{
    rowbuf rb;
    rb.n = 0;
    fill_v(ctx, dv, 0.0);
    for (size_t t = 0; t < T; t++) {
        double wt = w[t];
        if (wt == 0.0) continue;      /* its row is never read */
        rowbuf_push(&rb, ctx, dv, wt, V + t * dv);
    }
    rowbuf_flush(&rb, ctx, dv);
}

/* --------------------------------------------------------------- attend */

/* Scores of one block: s[b] = scale * dot(q, K[t0 + b]) for the unmasked
 * keys, -inf for masked ones and for the padding b in [nb, BLOCK). */
static inline void block_scores(const double *q, const double *K, size_t t0, size_t nb,
                                size_t d, double scale, const unsigned char *mask,
                                double *s)
{
    unsigned char live[BLOCK];
    size_t nl = 0;
    for (size_t b = 0; b < BLOCK; b++) s[b] = -INFINITY;
    for (size_t b = 0; b < nb; b++)
        if (!mask || mask[t0 + b]) live[nl++] = (unsigned char)b;
    const float64x2_t vs = vdupq_n_f64(scale);
    size_t i = 0;
    for (; i + 4 <= nl; i += 4) {
        float64x2_t r01, r23;
        dot4(q, K + (t0 + live[i]) * d, K + (t0 + live[i + 1]) * d,
             K + (t0 + live[i + 2]) * d, K + (t0 + live[i + 3]) * d, d, &r01, &r23);
        r01 = vmulq_f64(vs, r01);
        r23 = vmulq_f64(vs, r23);
        s[live[i]] = vgetq_lane_f64(r01, 0);
        s[live[i + 1]] = vgetq_lane_f64(r01, 1);
        s[live[i + 2]] = vgetq_lane_f64(r23, 0);
        s[live[i + 3]] = vgetq_lane_f64(r23, 1);
    }
    for (; i < nl; i++) s[live[i]] = scale * dot1(q, K + (t0 + live[i]) * d, d);
}

/* Max over the block's non-NaN scores (-inf if none) and whether any is NaN.
 * FMAXNM ignores a NaN operand, FMAX propagates it. */
static inline double block_max(const double *s, int *nan)
{
    float64x2_t mn = vld1q_f64(s), mx = mn;
    for (size_t b = 2; b < BLOCK; b += 2) {
        float64x2_t v = vld1q_f64(s + b);
        mn = vmaxnmq_f64(mn, v);
        mx = vmaxq_f64(mx, v);
    }
    double all = vmaxvq_f64(mx), bm = vmaxnmvq_f64(mn);
    *nan = all != all;
    return bm != bm ? -INFINITY : bm;   /* NaN only when every score is NaN */
}

/* Rescale (st, acc) to a new, larger running max bm. */
static inline void online_raise(attnx_online *st, double *acc, size_t dv, double bm)
{
    double c = st->m == -INFINITY ? 0.0 : exp_diff1(st->m, bm);
    st->l *= c;
    if (c == 0.0)           /* not acc *= 0: inf * 0 would be NaN */
        fill_v(acc, dv, 0.0);
    else
        scale_v(acc, dv, c);
    st->m = bm;
}

/* p[b] = exp(s[b] - m) for the first nb scores (rounded up to a pair; the
 * padding is -inf and gives 0). Masked keys have s = -inf, hence p = 0. */
static inline void block_exps(const double *s, size_t nb, double m, double *p)
{
    const float64x2_t vm = vdupq_n_f64(m);
    for (size_t b = 0; b < nb; b += 2) vst1q_f64(p + b, exp_diff_v(vld1q_f64(s + b), vm));
}

static void attend_online_neon(const double *q, const double *K, const double *V,
                               size_t T, size_t d, size_t dv, double scale,
                               const unsigned char *mask, attnx_online *st,
                               double *acc)
{
    double s[BLOCK], p[BLOCK];
    rowbuf rb;
    rb.n = 0;
    for (size_t t0 = 0; t0 < T; t0 += BLOCK) {
        size_t nb = T - t0 < BLOCK ? T - t0 : BLOCK;
        int nan;
        block_scores(q, K, t0, nb, d, scale, mask, s);
        double bm = block_max(s, &nan);
        if (nan) st->l = NAN;      /* poisons the result; finalisation sees it */
        if (bm == -INFINITY) continue;
        if (bm > st->m) {
            rowbuf_flush(&rb, acc, dv);    /* rows of earlier blocks first */
            online_raise(st, acc, dv, bm);
        }
        block_exps(s, nb, st->m, p);
        for (size_t b = 0; b < nb; b++) {
            if (p[b] == 0.0) continue;     /* masked, or underflowed: row unread */
            st->l += p[b];
            rowbuf_push(&rb, acc, dv, p[b], V + (t0 + b) * dv);
        }
    }
    rowbuf_flush(&rb, acc, dv);
}

/* ---------------------------------------------------- attend, two queries */

/* ctx = acc / l, as api.c finishes a fused pass: zeros when nothing was
 * attended, NaN when a score was NaN. */
static inline void online_finish(const attnx_online *st, double *acc, size_t dv)
{
    if (st->l != st->l) {
        fill_v(acc, dv, NAN);
    } else if (st->m == -INFINITY) {
        fill_v(acc, dv, 0.0);
    } else {
        const float64x2_t vl = vdupq_n_f64(st->l);
        size_t j = 0;
        for (; j + 2 <= dv; j += 2) vst1q_f64(acc + j, vdivq_f64(vld1q_f64(acc + j), vl));
        if (j < dv) acc[j] = acc[j] / st->l;
    }
}

/* One query over keys [0, T), as api.c's loop would run it. */
static void attend_one_row(const double *q, const double *K, const double *V, size_t T,
                           size_t d, size_t dv, double scale, const unsigned char *mask,
                           double *ctx)
{
    attnx_online st = {-INFINITY, 0.0};
    fill_v(ctx, dv, 0.0);
    attend_online_neon(q, K, V, T, d, dv, scale, mask, &st, ctx);
    online_finish(&st, ctx, dv);
}

/* out[0] = (a.k0, a.k1), out[1] = (a.k2, a.k3), out[2] = (b.k0, b.k1),
 * out[3] = (b.k2, b.k3): each key vector loaded once serves both queries,
 * eight independent FMA chains. */
static inline void dot2x4(const double *qa, const double *qb, const double *k0,
                          const double *k1, const double *k2, const double *k3, size_t d,
                          float64x2_t out[4])
{
    float64x2_t a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
    float64x2_t b0 = vzero(), b1 = vzero(), b2 = vzero(), b3 = vzero();
    size_t j = 0;
    for (; j + 2 <= d; j += 2) {
        float64x2_t xa = vld1q_f64(qa + j), xb = vld1q_f64(qb + j), k;
        k = vld1q_f64(k0 + j);
        a0 = vfmaq_f64(a0, xa, k);
        b0 = vfmaq_f64(b0, xb, k);
        k = vld1q_f64(k1 + j);
        a1 = vfmaq_f64(a1, xa, k);
        b1 = vfmaq_f64(b1, xb, k);
        k = vld1q_f64(k2 + j);
        a2 = vfmaq_f64(a2, xa, k);
        b2 = vfmaq_f64(b2, xb, k);
        k = vld1q_f64(k3 + j);
        a3 = vfmaq_f64(a3, xa, k);
        b3 = vfmaq_f64(b3, xb, k);
    }
    if (j < d) {   /* last column in lane 0; lane 1 adds 0 * 0 */
        const float64x2_t z = vzero();
        float64x2_t xa = vld1q_lane_f64(qa + j, z, 0), xb = vld1q_lane_f64(qb + j, z, 0), k;
        k = vld1q_lane_f64(k0 + j, z, 0);
        a0 = vfmaq_f64(a0, xa, k);
        b0 = vfmaq_f64(b0, xb, k);
        k = vld1q_lane_f64(k1 + j, z, 0);
        a1 = vfmaq_f64(a1, xa, k);
        b1 = vfmaq_f64(b1, xb, k);
        k = vld1q_lane_f64(k2 + j, z, 0);
        a2 = vfmaq_f64(a2, xa, k);
        b2 = vfmaq_f64(b2, xb, k);
        k = vld1q_lane_f64(k3 + j, z, 0);
        a3 = vfmaq_f64(a3, xa, k);
        b3 = vfmaq_f64(b3, xb, k);
    }
    out[0] = vpaddq_f64(a0, a1);
    out[1] = vpaddq_f64(a2, a3);
    out[2] = vpaddq_f64(b0, b1);
    out[3] = vpaddq_f64(b2, b3);
}

/* (a.k, b.k) in the two lanes */
static inline float64x2_t dot2x1(const double *qa, const double *qb, const double *k, size_t d)
{
    float64x2_t a0 = vzero(), a1 = vzero(), b0 = vzero(), b1 = vzero();
    size_t j = 0;
    for (; j + 4 <= d; j += 4) {
        float64x2_t k0 = vld1q_f64(k + j), k1 = vld1q_f64(k + j + 2);
        a0 = vfmaq_f64(a0, vld1q_f64(qa + j), k0);
        b0 = vfmaq_f64(b0, vld1q_f64(qb + j), k0);
        a1 = vfmaq_f64(a1, vld1q_f64(qa + j + 2), k1);
        b1 = vfmaq_f64(b1, vld1q_f64(qb + j + 2), k1);
    }
    if (j + 2 <= d) {
        float64x2_t k0 = vld1q_f64(k + j);
        a0 = vfmaq_f64(a0, vld1q_f64(qa + j), k0);
        b0 = vfmaq_f64(b0, vld1q_f64(qb + j), k0);
        j += 2;
    }
    if (j < d) {
        const float64x2_t z = vzero();
        float64x2_t k0 = vld1q_lane_f64(k + j, z, 0);
        a1 = vfmaq_f64(a1, vld1q_lane_f64(qa + j, z, 0), k0);
        b1 = vfmaq_f64(b1, vld1q_lane_f64(qb + j, z, 0), k0);
    }
    return vpaddq_f64(vaddq_f64(a0, a1), vaddq_f64(b0, b1));
}

/* aa[j] += pa_i * v_i[j] and ab[j] += pb_i * v_i[j] for four rows i, each
 * value vector loaded once for both accumulators. */
typedef struct pairbuf {
    const double *v[4];
    double pa[4], pb[4];
    int n;
} pairbuf;

static inline void axpy2x4(double *aa, double *ab, size_t dv, const pairbuf *buf)
{
    const double *v0 = buf->v[0], *v1 = buf->v[1], *v2 = buf->v[2], *v3 = buf->v[3];
    size_t j = 0;
    for (; j + 2 <= dv; j += 2) {
        float64x2_t a = vld1q_f64(aa + j), b = vld1q_f64(ab + j), v;
        v = vld1q_f64(v0 + j);
        a = vfmaq_n_f64(a, v, buf->pa[0]);
        b = vfmaq_n_f64(b, v, buf->pb[0]);
        v = vld1q_f64(v1 + j);
        a = vfmaq_n_f64(a, v, buf->pa[1]);
        b = vfmaq_n_f64(b, v, buf->pb[1]);
        v = vld1q_f64(v2 + j);
        a = vfmaq_n_f64(a, v, buf->pa[2]);
        b = vfmaq_n_f64(b, v, buf->pb[2]);
        v = vld1q_f64(v3 + j);
        a = vfmaq_n_f64(a, v, buf->pa[3]);
        b = vfmaq_n_f64(b, v, buf->pb[3]);
        vst1q_f64(aa + j, a);
        vst1q_f64(ab + j, b);
    }
    if (j < dv) {
        float64x1_t a = vld1_f64(aa + j), b = vld1_f64(ab + j);
        for (int i = 0; i < 4; i++) {
            float64x1_t v = vld1_f64(buf->v[i] + j);
            a = vfma_f64(a, v, vdup_n_f64(buf->pa[i]));
            b = vfma_f64(b, v, vdup_n_f64(buf->pb[i]));
        }
        vst1_f64(aa + j, a);
        vst1_f64(ab + j, b);
    }
}

static inline void pairbuf_flush(pairbuf *buf, double *aa, double *ab, size_t dv)
{
    for (int i = 0; i < buf->n; i++) {
        axpy1(aa, dv, buf->pa[i], buf->v[i]);
        axpy1(ab, dv, buf->pb[i], buf->v[i]);
    }
    buf->n = 0;
}

/* Queries a and b (rows of Q) over keys [0, la) and [0, lb), la <= lb,
 * with their own masks (NULL: none). A key row is read when either query
 * attends it; a key one query does not attend gets score -inf and weight 0
 * there, so its rows never reach that query's result. */
static void attend_pair(const double *qa, const double *qb, const double *K, const double *V,
                        size_t la, size_t lb, size_t d, size_t dv, double scale,
                        const unsigned char *ma, const unsigned char *mb,
                        double *ca, double *cb)
{
    attnx_online sa = {-INFINITY, 0.0}, sb = {-INFINITY, 0.0};
    double s_a[BLOCK], s_b[BLOCK], p_a[BLOCK], p_b[BLOCK];
    unsigned char live[BLOCK];
    rowbuf ra, rb;
    pairbuf both;
    ra.n = rb.n = both.n = 0;
    fill_v(ca, dv, 0.0);
    fill_v(cb, dv, 0.0);
    const float64x2_t vs = vdupq_n_f64(scale);
    for (size_t t0 = 0; t0 < lb; t0 += BLOCK) {
        size_t nb = lb - t0 < BLOCK ? lb - t0 : BLOCK, nl = 0;
        int la_live[BLOCK], lb_live[BLOCK];
        for (size_t b = 0; b < BLOCK; b++) s_a[b] = s_b[b] = -INFINITY;
        for (size_t b = 0; b < nb; b++) {
            size_t t = t0 + b;
            la_live[b] = t < la && (!ma || ma[t]);
            lb_live[b] = !mb || mb[t];
            if (la_live[b] || lb_live[b]) live[nl++] = (unsigned char)b;
        }
        /* scores of both queries for every key either attends */
        size_t i = 0;
        for (; i + 4 <= nl; i += 4) {
            float64x2_t r[4];
            dot2x4(qa, qb, K + (t0 + live[i]) * d, K + (t0 + live[i + 1]) * d,
                   K + (t0 + live[i + 2]) * d, K + (t0 + live[i + 3]) * d, d, r);
            double o[8];
            for (int k = 0; k < 4; k++) vst1q_f64(o + 2 * k, vmulq_f64(vs, r[k]));
            for (int k = 0; k < 4; k++) {
                size_t b = live[i + k];
                if (la_live[b]) s_a[b] = o[k];
                if (lb_live[b]) s_b[b] = o[4 + k];
            }
        }
        for (; i < nl; i++) {
            size_t b = live[i];
            float64x2_t r = vmulq_f64(vs, dot2x1(qa, qb, K + (t0 + b) * d, d));
            if (la_live[b]) s_a[b] = vgetq_lane_f64(r, 0);
            if (lb_live[b]) s_b[b] = vgetq_lane_f64(r, 1);
        }
        /* per-query online update, as attend_online_neon */
        int nan_a, nan_b;
        double bm_a = block_max(s_a, &nan_a), bm_b = block_max(s_b, &nan_b);
        if (nan_a) sa.l = NAN;
        if (nan_b) sb.l = NAN;
        int go_a = bm_a != -INFINITY, go_b = bm_b != -INFINITY;
        if ((go_a && bm_a > sa.m) || (go_b && bm_b > sb.m)) {
            /* pending rows were weighted for the old max */
            pairbuf_flush(&both, ca, cb, dv);
            rowbuf_flush(&ra, ca, dv);
            rowbuf_flush(&rb, cb, dv);
            if (go_a && bm_a > sa.m) online_raise(&sa, ca, dv, bm_a);
            if (go_b && bm_b > sb.m) online_raise(&sb, cb, dv, bm_b);
        }
        for (size_t b = 0; b < BLOCK; b++) p_a[b] = p_b[b] = 0.0;
        if (go_a) block_exps(s_a, nb, sa.m, p_a);
        if (go_b) block_exps(s_b, nb, sb.m, p_b);
        for (size_t b = 0; b < nb; b++) {
            double pa = p_a[b], pb = p_b[b];
            const double *v = V + (t0 + b) * dv;
            if (pa != 0.0) sa.l += pa;
            if (pb != 0.0) sb.l += pb;
            if (pa != 0.0 && pb != 0.0) {
                both.v[both.n] = v;
                both.pa[both.n] = pa;
                both.pb[both.n] = pb;
                if (++both.n == 4) {
                    axpy2x4(ca, cb, dv, &both);
                    both.n = 0;
                }
            } else if (pa != 0.0) {
                rowbuf_push(&ra, ca, dv, pa, v);
            } else if (pb != 0.0) {
                rowbuf_push(&rb, cb, dv, pb, v);
            }
        }
    }
    pairbuf_flush(&both, ca, cb, dv);
    rowbuf_flush(&ra, ca, dv);
    rowbuf_flush(&rb, cb, dv);
    online_finish(&sa, ca, dv);
    online_finish(&sb, cb, dv);
}

static void attend_rows_neon(const double *Q, size_t nq, size_t q0, const double *K,
                             const double *V, size_t T, size_t d, size_t dv, double scale,
                             const unsigned char *mask, ptrdiff_t mask_row_stride, int causal,
                             double *ctx)
{
    size_t r = 0;
    for (; r + 2 <= nq; r += 2) {
        size_t la = causal && q0 + r + 1 < T ? q0 + r + 1 : T;
        size_t lb = causal && q0 + r + 2 < T ? q0 + r + 2 : T;
        const unsigned char *ma = mask ? mask + (ptrdiff_t)r * mask_row_stride : NULL;
        const unsigned char *mb = mask ? mask + (ptrdiff_t)(r + 1) * mask_row_stride : NULL;
        attend_pair(Q + r * d, Q + (r + 1) * d, K, V, la, lb, d, dv, scale, ma, mb,
                    ctx + r * dv, ctx + (r + 1) * dv);
    }
    if (r < nq) {
        size_t lim = causal && q0 + r + 1 < T ? q0 + r + 1 : T;
        const unsigned char *mr = mask ? mask + (ptrdiff_t)r * mask_row_stride : NULL;
        attend_one_row(Q + r * d, K, V, lim, d, dv, scale, mr, ctx + r * dv);
    }
}

const attnx_kernels attnx_kernels_neon = {
    "neon",
    exp_neon,
    dot_scores_neon,
    softmax_neon,
    context_neon,
    attend_online_neon,
    attend_rows_neon,
};

#endif /* ATTNX_HAVE_NEON */
