/*
 * kernels_f32_neon.c -- aarch64 Advanced SIMD (NEON) float32 kernels: four
 * float lanes per float32x4_t, the designs of kernels_neon.c with twice the
 * lanes. NEON is architectural on aarch64: no runtime probe, no extra
 * compiler flags. Accumulation and measured errors: kernels_f32_scalar.c.
 * No libm call anywhere (math.h is here for the INFINITY and NAN macros).
 *
 *   exp          expf2sum_v: the algorithm of attnx_internal_f32.h in four
 *                lanes with FMA (Estrin in r^2), 2^n from the shifter's
 *                bits (subnormal results come out of one rounding multiply:
 *                aarch64 has no underflow assist to avoid); reads x, writes
 *                y once (8*n bytes)
 *   dot_scores   four key rows per iteration, two FMA accumulators per row
 *                across d, q shared by the four rows, pairwise adds for the
 *                reduction; reads K once (4*T*d bytes)
 *   softmax      three passes: vector max (FMAX propagates NaN), exp of the
 *                exact two-sum x - max with the sum in float64 lanes, then
 *                y = e * r_hi + e * r_lo (r = 1/sum as two floats, one FMA);
 *                reads x twice, y once, writes y twice (20*n bytes)
 *   log_softmax  max, the float64 sum of exps, then (x - max) - log(sum)
 *                in float64 lanes; reads x three times, writes y (16*n)
 *   context      four nonzero-weight value rows folded per pass over ctx, so
 *                ctx is loaded and stored once per four rows; zero weights
 *                skip their row unread; reads each used value row once
 *   attend       online softmax over blocks of 16 keys: the block's unmasked
 *                rows scored four at a time, the block's exps vectorised,
 *                then its value rows folded four at a time into acc; the
 *                running sum in float64; masked keys and p == 0 keys skip
 *                their rows; reads each key and value row once
 *                (4*T*(d+dv) bytes), allocates nothing
 *   attend_rows  flash attention for a chunk of queries (64 at a time), the
 *                x86 design at NEON width: key blocks of 8 packed transposed
 *                (d x 8), register-blocked 8x8 score tiles and 8x8 P.V tiles
 *                accumulating in the ctx rows, per-row (m, l) on the stack;
 *                O(8 d) extra memory (on the heap only when d > 256); K and
 *                V read once per 64 queries; fewer than 4 queries go
 *                through attend one by one. Checked under qemu only: its
 *                speed on real aarch64 hardware is unmeasured
 */
#include "attnx_internal_f32.h"

#if defined(ATTNX_HAVE_NEON)

#include <arm_neon.h>
#include <math.h>
#include <stdlib.h>

#define BLOCK 16   /* keys per online-softmax step: scores stay in L1 */

static inline float32x4_t vzero(void) { return vdupq_n_f32(0.0f); }

/* ------------------------------------------------------------------ exp */

/* exp(hi + lo) per lane, the algorithm of attnx_internal_f32.h. lo must be
 * finite (expf_diff_v zeroes it where hi is outside the exp range). */
static inline float32x4_t expf2sum_v(float32x4_t hi, float32x4_t lo)
{
    /* FMAX/FMIN return NaN when an input is NaN: the clamp keeps NaN, which
     * then flows through the arithmetic */
    float32x4_t x = vminq_f32(vmaxq_f32(hi, vdupq_n_f32(ATTNX_EXPF_LO_CLAMP)), vdupq_n_f32(ATTNX_EXPF_HI_CLAMP));
    const float32x4_t shifter = vdupq_n_f32(ATTNX_SHIFTERF);
    float32x4_t t = vfmaq_f32(shifter, x, vdupq_n_f32(ATTNX_LOG2EF));
    float32x4_t n = vsubq_f32(t, shifter);
    float32x4_t rh = vfmsq_f32(x, n, vdupq_n_f32(ATTNX_LN2F_HI));
    float32x4_t rl = vfmsq_f32(lo, n, vdupq_n_f32(ATTNX_LN2F_LO));
    float32x4_t r = vaddq_f32(rh, rl);
    float32x4_t r2 = vmulq_f32(r, r);
    float32x4_t a1 = vfmaq_f32(vdupq_n_f32(ATTNX_EXPF_C2), r, vdupq_n_f32(ATTNX_EXPF_C3));
    float32x4_t a2 = vfmaq_f32(vdupq_n_f32(ATTNX_EXPF_C4), r, vdupq_n_f32(ATTNX_EXPF_C5));
    float32x4_t a3 = vfmaq_f32(vdupq_n_f32(ATTNX_EXPF_C6), r, vdupq_n_f32(ATTNX_EXPF_C7));
    float32x4_t q = vfmaq_f32(a1, r2, vfmaq_f32(a2, r2, a3));
    const float32x4_t one = vdupq_n_f32(1.0f);
    float32x4_t sh = vaddq_f32(one, rh);
    float32x4_t sl = vaddq_f32(vsubq_f32(one, sh), rh);           /* exact: Fast2Sum */
    float32x4_t er = vaddq_f32(sh, vaddq_f32(sl, vfmaq_f32(rl, r2, q)));
    /* n as an integer: the shifter's bits plus n (t stays in [2^23, 2^24)) */
    int32x4_t k = vsubq_s32(vreinterpretq_s32_f32(t), vreinterpretq_s32_f32(shifter));
    int32x4_t k1 = vshrq_n_s32(k, 1);                              /* floor(k / 2) */
    const int32x4_t bias = vdupq_n_s32(127);
    float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(k1, bias), 23));
    float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vsubq_s32(k, k1), bias), 23));
    return vmulq_f32(vmulq_f32(er, s1), s2);
}

/* exp(a - b) with the rounding of the subtraction compensated: two-sum
 * hi + lo = a - b exactly; lo used only where hi is in the exp range. */
static inline float32x4_t expf_diff_v(float32x4_t a, float32x4_t b)
{
    float32x4_t hi = vsubq_f32(a, b);
    float32x4_t z = vsubq_f32(hi, a);
    float32x4_t lo = vaddq_f32(vsubq_f32(a, vsubq_f32(hi, z)), vsubq_f32(vnegq_f32(b), z));
    uint32x4_t sane = vandq_u32(vcgeq_f32(hi, vdupq_n_f32(ATTNX_EXPF_LO_CLAMP)),
                                vcleq_f32(hi, vdupq_n_f32(ATTNX_EXPF_HI_CLAMP)));
    lo = vreinterpretq_f32_u32(vandq_u32(sane, vreinterpretq_u32_f32(lo)));
    return expf2sum_v(hi, lo);
}

/* Up to 3 floats into a vector (the other lanes `pad`), and back. */
static inline float32x4_t load_part(const float *x, size_t n, float pad)
{
    float b[4] = {pad, pad, pad, pad};
    for (size_t i = 0; i < n; i++) b[i] = x[i];
    return vld1q_f32(b);
}
static inline void store_part(float *y, size_t n, float32x4_t v)
{
    float b[4];
    vst1q_f32(b, v);
    for (size_t i = 0; i < n; i++) y[i] = b[i];
}

static void exp_f32_neon(const float *x, size_t n, float *y)
{
    const float32x4_t z = vzero();
    size_t i = 0;
    /* two independent vectors per step hide the polynomial's latency */
    for (; i + 8 <= n; i += 8) {
        float32x4_t a = expf2sum_v(vld1q_f32(x + i), z);
        float32x4_t b = expf2sum_v(vld1q_f32(x + i + 4), z);
        vst1q_f32(y + i, a);
        vst1q_f32(y + i + 4, b);
    }
    if (i + 4 <= n) {
        vst1q_f32(y + i, expf2sum_v(vld1q_f32(x + i), z));
        i += 4;
    }
    if (i < n) store_part(y + i, n - i, expf2sum_v(load_part(x + i, n - i, 0.0f), z));
}

/* ------------------------------------------------------------------ dot */

/* (dot(q, k0), dot(q, k1), dot(q, k2), dot(q, k3)): two accumulators per
 * row keep eight FMA chains in flight. */
static inline float32x4_t dot4(const float *q, const float *k0, const float *k1, const float *k2,
                               const float *k3, size_t d)
{
    float32x4_t a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
    float32x4_t b0 = vzero(), b1 = vzero(), b2 = vzero(), b3 = vzero();
    size_t j = 0;
    for (; j + 8 <= d; j += 8) {
        float32x4_t qa = vld1q_f32(q + j), qb = vld1q_f32(q + j + 4);
        a0 = vfmaq_f32(a0, qa, vld1q_f32(k0 + j));
        b0 = vfmaq_f32(b0, qb, vld1q_f32(k0 + j + 4));
        a1 = vfmaq_f32(a1, qa, vld1q_f32(k1 + j));
        b1 = vfmaq_f32(b1, qb, vld1q_f32(k1 + j + 4));
        a2 = vfmaq_f32(a2, qa, vld1q_f32(k2 + j));
        b2 = vfmaq_f32(b2, qb, vld1q_f32(k2 + j + 4));
        a3 = vfmaq_f32(a3, qa, vld1q_f32(k3 + j));
        b3 = vfmaq_f32(b3, qb, vld1q_f32(k3 + j + 4));
    }
    if (j + 4 <= d) {
        float32x4_t qa = vld1q_f32(q + j);
        a0 = vfmaq_f32(a0, qa, vld1q_f32(k0 + j));
        a1 = vfmaq_f32(a1, qa, vld1q_f32(k1 + j));
        a2 = vfmaq_f32(a2, qa, vld1q_f32(k2 + j));
        a3 = vfmaq_f32(a3, qa, vld1q_f32(k3 + j));
        j += 4;
    }
    if (j < d) {   /* the last 1-3 columns, zero-padded (0 * 0 adds nothing) */
        float32x4_t qa = load_part(q + j, d - j, 0.0f);
        b0 = vfmaq_f32(b0, qa, load_part(k0 + j, d - j, 0.0f));
        b1 = vfmaq_f32(b1, qa, load_part(k1 + j, d - j, 0.0f));
        b2 = vfmaq_f32(b2, qa, load_part(k2 + j, d - j, 0.0f));
        b3 = vfmaq_f32(b3, qa, load_part(k3 + j, d - j, 0.0f));
    }
    a0 = vaddq_f32(a0, b0);
    a1 = vaddq_f32(a1, b1);
    a2 = vaddq_f32(a2, b2);
    a3 = vaddq_f32(a3, b3);
    /* pairwise adds reduce the four rows into the four lanes */
    return vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3));
}

static inline float dot1(const float *q, const float *k, size_t d)
{
    float32x4_t a = vzero(), b = vzero();
    size_t j = 0;
    for (; j + 8 <= d; j += 8) {
        a = vfmaq_f32(a, vld1q_f32(q + j), vld1q_f32(k + j));
        b = vfmaq_f32(b, vld1q_f32(q + j + 4), vld1q_f32(k + j + 4));
    }
    if (j + 4 <= d) {
        a = vfmaq_f32(a, vld1q_f32(q + j), vld1q_f32(k + j));
        j += 4;
    }
    if (j < d) b = vfmaq_f32(b, load_part(q + j, d - j, 0.0f), load_part(k + j, d - j, 0.0f));
    return vaddvq_f32(vaddq_f32(a, b));
}

static void dot_scores_f32_neon(const float *q, const float *K, size_t T, size_t d, float scale, float *s)
{
    const float32x4_t vs = vdupq_n_f32(scale);
    size_t t = 0;
    for (; t + 4 <= T; t += 4) {
        const float *k = K + t * d;
        vst1q_f32(s + t, vmulq_f32(vs, dot4(q, k, k + d, k + 2 * d, k + 3 * d, d)));
    }
    for (; t < T; t++) s[t] = scale * dot1(q, K + t * d, d);
}

/* -------------------------------------------------------------- softmax */

/* The row max; NaN when the row holds one (FMAX propagates it). */
static float row_max(const float *x, size_t n)
{
    float32x4_t m0 = vdupq_n_f32(-INFINITY), m1 = m0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        m0 = vmaxq_f32(m0, vld1q_f32(x + i));
        m1 = vmaxq_f32(m1, vld1q_f32(x + i + 4));
    }
    if (i + 4 <= n) {
        m0 = vmaxq_f32(m0, vld1q_f32(x + i));
        i += 4;
    }
    if (i < n) m1 = vmaxq_f32(m1, load_part(x + i, n - i, -INFINITY));
    return vmaxvq_f32(vmaxq_f32(m0, m1));
}

static void fill_f(float *y, size_t n, float v)
{
    const float32x4_t vv = vdupq_n_f32(v);
    size_t j = 0;
    for (; j + 4 <= n; j += 4) vst1q_f32(y + j, vv);
    for (; j < n; j++) y[j] = v;
}

/* Both float64 halves of v added to s. */
static inline float64x2_t add_wide(float64x2_t s, float32x4_t v)
{
    return vaddq_f64(s, vaddq_f64(vcvt_f64_f32(vget_low_f32(v)), vcvt_high_f64_f32(v)));
}

/* sum of exp(x - m) in double; y = the exps when y != NULL. */
static double exp_sum(const float *x, size_t n, float m, float *y)
{
    const float32x4_t vm = vdupq_n_f32(m);
    float64x2_t s0 = vdupq_n_f64(0.0), s1 = s0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float32x4_t e0 = expf_diff_v(vld1q_f32(x + i), vm);
        float32x4_t e1 = expf_diff_v(vld1q_f32(x + i + 4), vm);
        if (y) {
            vst1q_f32(y + i, e0);
            vst1q_f32(y + i + 4, e1);
        }
        s0 = add_wide(s0, e0);
        s1 = add_wide(s1, e1);
    }
    if (i + 4 <= n) {
        float32x4_t e0 = expf_diff_v(vld1q_f32(x + i), vm);
        if (y) vst1q_f32(y + i, e0);
        s0 = add_wide(s0, e0);
        i += 4;
    }
    if (i < n) {   /* padding lanes are exp(-inf - m) = 0 */
        float32x4_t e1 = expf_diff_v(load_part(x + i, n - i, -INFINITY), vm);
        if (y) store_part(y + i, n - i, e1);
        s1 = add_wide(s1, e1);
    }
    return vaddvq_f64(vaddq_f64(s0, s1));
}

static int softmax_f32_neon(const float *x, size_t n, float *y)
{
    float m = row_max(x, n);
    if (m != m || m == -INFINITY) {
        fill_f(y, n, NAN);
        return m == -INFINITY;
    }
    double sum = exp_sum(x, n, m, y);
    /* y = e / sum as e * rh + e * rl, rh + rl = 1/sum to 2^-48: one FMA
     * rounding instead of a division (sum >= 1: the max gives exp(0) = 1) */
    const double r = 1.0 / sum;
    const float rhf = (float)r, rlf = (float)(r - rhf);
    const float32x4_t rh = vdupq_n_f32(rhf), rl = vdupq_n_f32(rlf);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t e = vld1q_f32(y + i);
        vst1q_f32(y + i, vfmaq_f32(vmulq_f32(e, rl), e, rh));
    }
    if (i < n) {
        float32x4_t e = load_part(y + i, n - i, 0.0f);
        store_part(y + i, n - i, vfmaq_f32(vmulq_f32(e, rl), e, rh));
    }
    return 0;
}

/* (x - m) - ls for 4 floats, in double. */
static inline float32x4_t log_sub4(float32x4_t v, float64x2_t md, float64x2_t ls)
{
    float64x2_t a = vsubq_f64(vsubq_f64(vcvt_f64_f32(vget_low_f32(v)), md), ls);
    float64x2_t b = vsubq_f64(vsubq_f64(vcvt_high_f64_f32(v), md), ls);
    return vcvt_high_f32_f64(vcvt_f32_f64(a), b);
}

/* exp_sum with the signature attnx_log_sum_f32 takes. */
static double sum_exps(const float *x, size_t n, float m) { return exp_sum(x, n, m, NULL); }

static void log_softmax_f32_neon(const float *x, size_t n, float *y)
{
    float m = row_max(x, n);
    if (m != m || m == -INFINITY) {
        fill_f(y, n, NAN);
        return;
    }
    if (m == INFINITY) {
        attnx_log_softmax_inf_f32(x, n, y);
        return;
    }
    const float64x2_t ls = vdupq_n_f64(attnx_log_sum_f32(x, n, m, sum_exps));
    const float64x2_t md = vdupq_n_f64(m);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, log_sub4(vld1q_f32(x + i), md, ls));
    if (i < n) store_part(y + i, n - i, log_sub4(load_part(x + i, n - i, 0.0f), md, ls));
}

/* ---------------------------------------------------------- context/axpy */

/* acc[j] += p0*v0[j] + p1*v1[j] + p2*v2[j] + p3*v3[j] (each fused, in that
 * order): acc is loaded and stored once for four value rows. */
static inline void axpy4(float *acc, size_t dv, const float *p, const float *const *v)
{
    const float *v0 = v[0], *v1 = v[1], *v2 = v[2], *v3 = v[3];
    size_t j = 0;
    for (; j + 8 <= dv; j += 8) {
        float32x4_t a = vld1q_f32(acc + j), b = vld1q_f32(acc + j + 4);
        a = vfmaq_n_f32(a, vld1q_f32(v0 + j), p[0]);
        b = vfmaq_n_f32(b, vld1q_f32(v0 + j + 4), p[0]);
        a = vfmaq_n_f32(a, vld1q_f32(v1 + j), p[1]);
        b = vfmaq_n_f32(b, vld1q_f32(v1 + j + 4), p[1]);
        a = vfmaq_n_f32(a, vld1q_f32(v2 + j), p[2]);
        b = vfmaq_n_f32(b, vld1q_f32(v2 + j + 4), p[2]);
        a = vfmaq_n_f32(a, vld1q_f32(v3 + j), p[3]);
        b = vfmaq_n_f32(b, vld1q_f32(v3 + j + 4), p[3]);
        vst1q_f32(acc + j, a);
        vst1q_f32(acc + j + 4, b);
    }
    if (j + 4 <= dv) {
        float32x4_t a = vld1q_f32(acc + j);
        a = vfmaq_n_f32(a, vld1q_f32(v0 + j), p[0]);
        a = vfmaq_n_f32(a, vld1q_f32(v1 + j), p[1]);
        a = vfmaq_n_f32(a, vld1q_f32(v2 + j), p[2]);
        a = vfmaq_n_f32(a, vld1q_f32(v3 + j), p[3]);
        vst1q_f32(acc + j, a);
        j += 4;
    }
    if (j < dv) {
        size_t r = dv - j;
        float32x4_t a = load_part(acc + j, r, 0.0f);
        a = vfmaq_n_f32(a, load_part(v0 + j, r, 0.0f), p[0]);
        a = vfmaq_n_f32(a, load_part(v1 + j, r, 0.0f), p[1]);
        a = vfmaq_n_f32(a, load_part(v2 + j, r, 0.0f), p[2]);
        a = vfmaq_n_f32(a, load_part(v3 + j, r, 0.0f), p[3]);
        store_part(acc + j, r, a);
    }
}

static inline void axpy1(float *acc, size_t dv, float p, const float *v)
{
    size_t j = 0;
    for (; j + 4 <= dv; j += 4) vst1q_f32(acc + j, vfmaq_n_f32(vld1q_f32(acc + j), vld1q_f32(v + j), p));
    if (j < dv) {
        size_t r = dv - j;
        store_part(acc + j, r, vfmaq_n_f32(load_part(acc + j, r, 0.0f), load_part(v + j, r, 0.0f), p));
    }
}

static inline void scale_v(float *a, size_t n, float c)
{
    size_t j = 0;
    for (; j + 4 <= n; j += 4) vst1q_f32(a + j, vmulq_n_f32(vld1q_f32(a + j), c));
    for (; j < n; j++) a[j] *= c;
}

/* Rows are collected four at a time (pointer + weight) and folded together. */
typedef struct rowbuf {
    const float *v[4];
    float p[4];
    int n;
} rowbuf;

static inline void rowbuf_push(rowbuf *rb, float *acc, size_t dv, float p, const float *v)
{
    rb->p[rb->n] = p;
    rb->v[rb->n] = v;
    if (++rb->n == 4) {
        axpy4(acc, dv, rb->p, rb->v);
        rb->n = 0;
    }
}

static inline void rowbuf_flush(rowbuf *rb, float *acc, size_t dv)
{
    for (int i = 0; i < rb->n; i++) axpy1(acc, dv, rb->p[i], rb->v[i]);
    rb->n = 0;
}

static void context_f32_neon(const float *w, const float *V, size_t T, size_t dv, float *ctx)
{
    rowbuf rb;
    rb.n = 0;
    fill_f(ctx, dv, 0.0f);
    for (size_t t = 0; t < T; t++) {
        float wt = w[t];
        if (wt == 0.0f) continue;     /* its row is never read */
        rowbuf_push(&rb, ctx, dv, wt, V + t * dv);
    }
    rowbuf_flush(&rb, ctx, dv);
}

/* --------------------------------------------------------------- attend */

/* Scores of one block: s[b] = scale * dot(q, K[t0 + b]) for the unmasked
 * keys, -inf for masked ones and for the padding b in [nb, BLOCK). */
static inline void block_scores(const float *q, const float *K, size_t t0, size_t nb, size_t d, float scale,
                                const unsigned char *mask, float *s)
{
    unsigned char live[BLOCK];
    size_t nl = 0;
    for (size_t b = 0; b < BLOCK; b++) s[b] = -INFINITY;
    for (size_t b = 0; b < nb; b++)
        if (!mask || mask[t0 + b]) live[nl++] = (unsigned char)b;
    const float32x4_t vs = vdupq_n_f32(scale);
    size_t i = 0;
    for (; i + 4 <= nl; i += 4) {
        float o[4];
        vst1q_f32(o, vmulq_f32(vs, dot4(q, K + (t0 + live[i]) * d, K + (t0 + live[i + 1]) * d,
                                        K + (t0 + live[i + 2]) * d, K + (t0 + live[i + 3]) * d, d)));
        for (int k = 0; k < 4; k++) s[live[i + k]] = o[k];
    }
    for (; i < nl; i++) s[live[i]] = scale * dot1(q, K + (t0 + live[i]) * d, d);
}

/* Max over the block's non-NaN scores (-inf if none) and whether any is
 * NaN. FMAXNM ignores a NaN operand, FMAX propagates it. */
static inline float block_max(const float *s, int *nan)
{
    float32x4_t mn = vld1q_f32(s), mx = mn;
    for (size_t b = 4; b < BLOCK; b += 4) {
        float32x4_t v = vld1q_f32(s + b);
        mn = vmaxnmq_f32(mn, v);
        mx = vmaxq_f32(mx, v);
    }
    float all = vmaxvq_f32(mx), bm = vmaxnmvq_f32(mn);
    *nan = all != all;
    return bm != bm ? -INFINITY : bm;   /* NaN only when every score is NaN */
}

static void attend_online_f32_neon(const float *q, const float *K, const float *V, size_t T, size_t d,
                                   size_t dv, float scale, const unsigned char *mask, attnx_online *st,
                                   float *acc)
{
    float s[BLOCK], p[BLOCK];
    rowbuf rb;
    rb.n = 0;
    if (st->l != st->l) return;          /* poisoned: the result is NaN anyway */
    for (size_t t0 = 0; t0 < T; t0 += BLOCK) {
        size_t nb = T - t0 < BLOCK ? T - t0 : BLOCK;
        int nan;
        block_scores(q, K, t0, nb, d, scale, mask, s);
        float bm = block_max(s, &nan);
        if (nan) {
            st->l = NAN;                 /* finalisation sees it */
            break;
        }
        if (bm == -INFINITY) continue;
        if (bm > st->m) {
            rowbuf_flush(&rb, acc, dv);  /* rows of earlier blocks first */
            double c = attnx_rescale_factor(st->m, bm);
            float cf = (float)c;
            st->l *= c;
            if (cf == 0.0f)              /* not acc *= 0: inf * 0 would be NaN */
                fill_f(acc, dv, 0.0f);
            else
                scale_v(acc, dv, cf);
            st->m = bm;
        }
        /* masked keys and the padding have s = -inf, hence p = 0 */
        const float32x4_t vm = vdupq_n_f32((float)st->m);
        float64x2_t ls = vdupq_n_f64(0.0);
        for (size_t b = 0; b < nb; b += 4) {
            float32x4_t e = expf_diff_v(vld1q_f32(s + b), vm);
            vst1q_f32(p + b, e);
            ls = add_wide(ls, e);
        }
        st->l += vaddvq_f64(ls);
        if (st->l != st->l) break;       /* a +inf score: inf - inf */
        for (size_t b = 0; b < nb; b++) {
            if (p[b] == 0.0f) continue;  /* masked, or underflowed: row unread */
            rowbuf_push(&rb, acc, dv, p[b], V + (t0 + b) * dv);
        }
    }
    rowbuf_flush(&rb, acc, dv);
}

/* ------------------------------------------------- attend_rows (flash) */

#define RQ 64          /* queries per sub-chunk: its ctx rows stay in L1/L2 */
#define KB 8           /* keys per block: two vectors of scores per query */
#define MR 8           /* queries per register tile: 16 accumulators of 32 */
#define KT_STACK 256   /* d up to this packs K on the stack */
#define FEW_QUERIES 4  /* below this, packing K costs more than it saves */

static const uint32_t lane_bits[4] = {1, 2, 4, 8};

/* Lanes i with bit i of b set (b < 16). */
static inline uint32x4_t bits_mask4(unsigned b)
{
    return vtstq_u32(vdupq_n_u32(b), vld1q_u32(lane_bits));
}

/* Bit i set where lane i is nonzero. */
static inline unsigned mask_to_bits(uint32x4_t m)
{
    return vaddvq_u32(vandq_u32(m, vld1q_u32(lane_bits)));
}

/* Kt[j][k] = Kb[k][j] for the keys k in `any` (zero columns for the
 * others, which stay unread); rows j < d of Kt are written. Once per key
 * block and 64 queries: plain stores are cheap enough. */
static void pack_kt(const float *Kb, size_t d, unsigned any, float *Kt)
{
    for (size_t k = 0; k < KB; k++) {
        if ((any >> k) & 1) {
            const float *r = Kb + k * d;
            for (size_t j = 0; j < d; j++) Kt[KB * j + k] = r[j];
        } else {
            for (size_t j = 0; j < d; j++) Kt[KB * j + k] = 0.0f;
        }
    }
}

/* s[r][0..8) = dot(Q_r, key k) for r < mr, keys packed as Kt[j][k]. */
static inline void score_tile(const float *Q, size_t d, const float *Kt, int mr, float *s)
{
    float32x4_t a[MR][2];
    for (int r = 0; r < mr; r++) a[r][0] = a[r][1] = vzero();
    for (size_t j = 0; j < d; j++) {
        float32x4_t k0 = vld1q_f32(Kt + KB * j), k1 = vld1q_f32(Kt + KB * j + 4);
        for (int r = 0; r < mr; r++) {
            float b = Q[(size_t)r * d + j];
            a[r][0] = vfmaq_n_f32(a[r][0], k0, b);
            a[r][1] = vfmaq_n_f32(a[r][1], k1, b);
        }
    }
    for (int r = 0; r < mr; r++) {
        vst1q_f32(s + KB * r, a[r][0]);
        vst1q_f32(s + KB * r + 4, a[r][1]);
    }
}

/* C_r[c .. c + 8) += sum_i P[r][kidx[i]] V[kidx[i]][c .. c + 8) for r < mr
 * (a full slice: c + 8 <= dv). */
static inline void pv_slice(const float *P, const unsigned char *kidx, int nk, const float *Vb, size_t dv,
                            int mr, float *C, size_t c)
{
    float32x4_t a[MR][2];
    for (int r = 0; r < mr; r++) {
        a[r][0] = vld1q_f32(C + (size_t)r * dv + c);
        a[r][1] = vld1q_f32(C + (size_t)r * dv + c + 4);
    }
    for (int i = 0; i < nk; i++) {
        const int kk = kidx[i];
        const float *vr = Vb + (size_t)kk * dv + c;
        float32x4_t v0 = vld1q_f32(vr), v1 = vld1q_f32(vr + 4);
        for (int r = 0; r < mr; r++) {
            float b = P[KB * r + kk];
            a[r][0] = vfmaq_n_f32(a[r][0], v0, b);
            a[r][1] = vfmaq_n_f32(a[r][1], v1, b);
        }
    }
    for (int r = 0; r < mr; r++) {
        vst1q_f32(C + (size_t)r * dv + c, a[r][0]);
        vst1q_f32(C + (size_t)r * dv + c + 4, a[r][1]);
    }
}

/* C_r += sum_i P[r][kidx[i]] V[kidx[i]] for r < mr: 8 columns at a time in
 * registers, the last dv % 8 columns row by row. Every listed key has
 * p != 0 in every row. */
static inline void pv_tile(const float *P, const unsigned char *kidx, int nk, const float *Vb, size_t dv,
                           int mr, float *C)
{
    size_t c = 0;
    for (; c + 8 <= dv; c += 8) pv_slice(P, kidx, nk, Vb, dv, mr, C, c);
    if (c < dv)
        for (int r = 0; r < mr; r++)
            for (int i = 0; i < nk; i++) {
                const float *vr = Vb + (size_t)kidx[i] * dv;
                float b = P[KB * r + kidx[i]];
                for (size_t j = c; j < dv; j++) C[(size_t)r * dv + j] += b * vr[j];
            }
}

#define TILE_SWITCH(mr, CALL) \
    switch (mr) {             \
    case 1: CALL(1); break;   \
    case 2: CALL(2); break;   \
    case 3: CALL(3); break;   \
    case 4: CALL(4); break;   \
    case 5: CALL(5); break;   \
    case 6: CALL(6); break;   \
    case 7: CALL(7); break;   \
    default: CALL(8); break;  \
    }

/* Queries [qa, qa + nr) (nr <= RQ), all against keys [0, T): key blocks of
 * 8 packed transposed, register-blocked 8x8 score and P.V tiles, the
 * x86 kernels' flash design at NEON width. */
static void rows_chunk(const float *Q, size_t nr, size_t qa, const float *K, const float *V, size_t T,
                       size_t d, size_t dv, float scale, const unsigned char *mask, ptrdiff_t mask_row_stride,
                       int causal, float *ctx, float *Kt)
{
    double m[RQ], l[RQ];
    float S[MR * KB], P[MR * KB];
    unsigned live[RQ];
    unsigned char kidx[KB];
    const float32x4_t sc = vdupq_n_f32(scale), ninf = vdupq_n_f32(-INFINITY), zero = vzero();
    for (size_t r = 0; r < nr; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0;
    }
    fill_f(ctx, nr * dv, 0.0f);
    /* causal: the last query attends keys < qa + nr */
    size_t tend = causal && qa + nr < T ? qa + nr : T;
    for (size_t t0 = 0; t0 < tend; t0 += KB) {
        size_t kn = tend - t0 < KB ? tend - t0 : KB;
        const unsigned base = (1u << kn) - 1u;
        unsigned any = 0;
        for (size_t r = 0; r < nr; r++) {
            unsigned lv = base;
            if (causal) {
                size_t i = qa + r;
                lv = i < t0 ? 0u : i - t0 < KB - 1 ? lv & ((2u << (i - t0)) - 1u) : lv;
            }
            if (lv && mask) {
                const unsigned char *mr = mask + (ptrdiff_t)r * mask_row_stride + (ptrdiff_t)t0;
                for (size_t k = 0; k < kn; k++)
                    if (!mr[k]) lv &= ~(1u << k);
            }
            if (l[r] != l[r]) lv = 0;  /* poisoned rows are done */
            live[r] = lv;
            any |= lv;
        }
        if (!any) continue;
        pack_kt(K + t0 * d, d, any, Kt);
        const float *Vb = V + t0 * dv;
        for (size_t g = 0; g < nr; g += MR) {
            int mr = nr - g < MR ? (int)(nr - g) : MR;
            unsigned gl = 0;
            for (int r = 0; r < mr; r++) gl |= live[g + r];
            if (!gl) continue;
            const float *Qg = Q + g * d;
#define SCORE_CALL(n) score_tile(Qg, d, Kt, n, S)
            TILE_SWITCH(mr, SCORE_CALL)
#undef SCORE_CALL
            unsigned colall = 0xFFu, colany = 0;
            for (int r = 0; r < mr; r++) {
                size_t row = g + (size_t)r;
                unsigned lv = live[row];
                float32x4_t s0 = vbslq_f32(bits_mask4(lv & 15u), vmulq_f32(sc, vld1q_f32(S + KB * r)), ninf);
                float32x4_t s1 = vbslq_f32(bits_mask4(lv >> 4), vmulq_f32(sc, vld1q_f32(S + KB * r + 4)), ninf);
                float bm = -INFINITY;
                if (lv) {
                    uint32x4_t ok = vandq_u32(vceqq_f32(s0, s0), vceqq_f32(s1, s1));
                    if (vminvq_u32(ok) == 0)
                        l[row] = NAN;
                    else
                        bm = vmaxvq_f32(vmaxq_f32(s0, s1));
                }
                if (bm == -INFINITY) {
                    vst1q_f32(P + KB * r, zero);
                    vst1q_f32(P + KB * r + 4, zero);
                    colall = 0;
                    continue;
                }
                if (bm > m[row]) {
                    double c = attnx_rescale_factor(m[row], bm);
                    float cf = (float)c;
                    l[row] *= c;
                    if (cf == 0.0f)      /* not acc *= 0: inf * 0 would be NaN */
                        fill_f(ctx + row * dv, dv, 0.0f);
                    else
                        scale_v(ctx + row * dv, dv, cf);
                    m[row] = bm;
                }
                const float32x4_t mv = vdupq_n_f32((float)m[row]);
                float32x4_t p0 = expf_diff_v(s0, mv), p1 = expf_diff_v(s1, mv);
                l[row] += vaddvq_f64(add_wide(add_wide(vdupq_n_f64(0.0), p0), p1));
                unsigned nz = mask_to_bits(vmvnq_u32(vceqq_f32(p0, zero))) |
                              mask_to_bits(vmvnq_u32(vceqq_f32(p1, zero))) << 4;
                if (l[row] != l[row]) {  /* +inf score: poisoned, skip */
                    nz = 0;
                    p0 = p1 = zero;
                }
                vst1q_f32(P + KB * r, p0);
                vst1q_f32(P + KB * r + 4, p1);
                colall &= nz;
                colany |= nz;
            }
            /* keys every row of the tile weighs: the register-blocked tile */
            int nk = 0;
            for (unsigned k = 0; k < KB; k++)
                if ((colall >> k) & 1) kidx[nk++] = (unsigned char)k;
            if (nk) {
                float *Cg = ctx + g * dv;
#define PV_CALL(n) pv_tile(P, kidx, nk, Vb, dv, n, Cg)
                TILE_SWITCH(mr, PV_CALL)
#undef PV_CALL
            }
            /* keys only some rows weigh: row by row, skipping p == 0 */
            for (unsigned k = 0; k < KB; k++) {
                if (!(((colany & ~colall) >> k) & 1)) continue;
                for (int r = 0; r < mr; r++) {
                    float pr = P[KB * r + k];
                    if (pr != 0.0f) axpy1(ctx + (g + (size_t)r) * dv, dv, pr, Vb + (size_t)k * dv);
                }
            }
        }
    }
    for (size_t r = 0; r < nr; r++) attnx_online_finish_f32(m[r], l[r], ctx + r * dv, dv);
}

static void attend_rows_f32_neon(const float *Q, size_t nq, size_t q0, const float *K, const float *V, size_t T,
                                 size_t d, size_t dv, float scale, const unsigned char *mask,
                                 ptrdiff_t mask_row_stride, int causal, float *ctx)
{
    float kt_stack[KT_STACK * KB];
    float *Kt = kt_stack;
    if (nq >= FEW_QUERIES && d > KT_STACK) Kt = (float *)malloc(d * KB * sizeof(float));
    if (nq < FEW_QUERIES || !Kt) {
        /* one fused pass per query (also the fallback without memory) */
        for (size_t r = 0; r < nq; r++) {
            size_t lim = causal && q0 + r + 1 < T ? q0 + r + 1 : T;
            attnx_online st = {-INFINITY, 0.0};
            float *c = ctx + r * dv;
            fill_f(c, dv, 0.0f);
            attend_online_f32_neon(Q + r * d, K, V, lim, d, dv, scale,
                                   mask ? mask + (ptrdiff_t)r * mask_row_stride : NULL, &st, c);
            attnx_online_finish_f32(st.m, st.l, c, dv);
        }
        return;
    }
    for (size_t r0 = 0; r0 < nq; r0 += RQ) {
        size_t nr = nq - r0 < RQ ? nq - r0 : RQ;
        rows_chunk(Q + r0 * d, nr, q0 + r0, K, V, T, d, dv, scale,
                   mask ? mask + (ptrdiff_t)r0 * mask_row_stride : NULL, mask_row_stride, causal, ctx + r0 * dv, Kt);
    }
    if (Kt != kt_stack) free(Kt);
}

const attnx_kernels_f32 attnx_kernels_f32_neon = {
    "neon",
    exp_f32_neon,
    dot_scores_f32_neon,
    softmax_f32_neon,
    log_softmax_f32_neon,
    context_f32_neon,
    attend_online_f32_neon,
    attend_rows_f32_neon,
};

#endif /* ATTNX_HAVE_NEON */
