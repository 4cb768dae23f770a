/*
 * attnx_internal_f32.h -- what the float32 kernel files share: the function
 * table every SIMD level fills, the float32 exp algorithm and its constants,
 * and small scalar helpers (a float64 log for log-softmax among them).
 * Never installed; nothing here is part of the public contract.
 *
 * Every helper is `static inline`, for the reason given at the top of
 * attnx_internal.h: each levels/f32_<isa>.c is compiled with its own ISA
 * flags, and one shared out-of-line copy could be the one compiled for the
 * widest ISA.
 *
 * How each kernel accumulates, and the errors that result:
 *
 * Accumulation (one design, csrc/kernels, at every level; the levels
 * differ only in lane count, order of additions and fused multiply-adds):
 *
 *   exp          float arithmetic throughout: the algorithm of
 *                attnx_internal_f32.h (Cody-Waite reduction carried as
 *                rh + rl, a fitted degree-7 polynomial, 1 + rh split
 *                exactly, two exact power-of-2 scalings, subnormal results
 *                rounded once by an integer add); reads x, writes y once
 *   dot_scores   float32 products and sums, in several independent partial
 *                sums (4 at the portable level, 8-16 vector lanes),
 *                then scaled: worst case (d + 1) * 2^-24 * sum|q_j K_tj|,
 *                typically far less (4*T*d bytes of K read once)
 *   softmax      max (NaN-aware); exp of the exact float two-sum x - max,
 *                stored; the sum of those exps in float64 (each float exp
 *                converted: the sum's rounding is 2^-53-sized, for any n);
 *                then y = e / sum, divided in double without FMA,
 *                else e * r_hi + e * r_lo (r = 1/sum split into two
 *                floats, one fused multiply-add): one rounding to float.
 *                So each weight carries the exp's error plus one final
 *                rounding. Reads x twice, y once, writes y twice (20*n bytes)
 *   log_softmax  as softmax for the max and the float64 sum, then
 *                y = ((double)x - max) - log(sum) in double (log:
 *                attnx_log_f64; log1p of the sum without the max where the
 *                sum is near 1), rounded once to float: correct where
 *                softmax underflows (x - max = -1000 gives -1000 - log(sum))
 *   context      float32 accumulators, value rows added in order (ctx in registers; slices
 *                of up to VX_CTX_PAIR_NV vectors sum even and odd rows
 *                apart); zero weights skip their row unread
 *   attend       online softmax: scores as dot_scores (float32); the running
 *                max m (a float value) and the running sum l in float64;
 *                p = exp(s - m) in float via the exact two-sum; the rescale
 *                factor exp(m_old - m_new) computed in double and applied
 *                to l in double and, rounded to float, to the float32
 *                accumulator acc[dv]; ctx = acc / l. Blocks of VX_DOT_ROWS
 *                keys, each block's P.V summed apart and the sums of 256
 *                keys added to acc together (acc takes T / 256 roundings,
 *                not one per key: over long one-signed V that had cost
 *                3.4e-5 at T = 20000); reads
 *                each key and value row once (4*T*(d+dv) bytes), masked and
 *                p == 0 rows not at all; allocates nothing. The batched
 *                flash kernels (attend_rows) accumulate the
 *                same way: float32 score and P.V tiles, (m, l) per query
 *                with l in float64, each register tile's P.V summed apart
 *                and then added to ctx. Split across threads (api_f32.c), the
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
 *                 score error e scaling a weight by e^e. With V of one
 *                 sign (in [0, 1), or 1) over T = 8000 to 20000 keys the
 *                 accumulation shows: 6.7e-7 (tests/test_float32.py)
 *
 * The test asserts, per case, the worst-case bounds of this design (far
 * above these figures at a few thousand terms) and, over all cases, these
 * figures with a margin of 1.2 to 4 (check_error_budget).
 */

#ifndef ATTNX_INTERNAL_F32_H
#define ATTNX_INTERNAL_F32_H

#include <math.h>     /* INFINITY: a macro, no libm call */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "attnx_internal.h"

/* The float32 kernels of one SIMD level. Sizes are validated by the caller
 * (api_f32.c): kernels never see NULL pointers or overflowing sizes.
 * The online-softmax state is attnx_online (attnx_internal.h): m holds a
 * float value (the largest score seen), l the running sum in double. */
typedef struct attnx_kernels_f32 {
    const char *name;

    /* y[i] = exp(x[i]); y may be x. Not public: the tests measure it. */
    void (*exp)(const float *x, size_t n, float *y);

    /* s[t] = scale * dot(q, K[t]). */
    void (*dot_scores)(const float *q, const float *K, size_t T, size_t d,
                       float scale, float *s);

    /* y = softmax(x), y may be x. Returns 1 when the row max is -inf (the
     * row is all -inf; y is then NaN), else 0. n >= 1. */
    int (*softmax)(const float *x, size_t n, float *y);

    /* y = (x - max) - log(sum exp(x - max)), y may be x. scipy's rules
     * for non-finite input: a NaN or an all -inf row gives NaN; a +inf gives
     * NaN there and -inf elsewhere. n >= 1. */
    void (*log_softmax)(const float *x, size_t n, float *y);

    /* ctx[j] = sum_{t: w[t] != 0} w[t] * V[t, j]. */
    void (*context)(const float *w, const float *V, size_t T, size_t dv,
                    float *ctx);

    /* Fold keys [0, T) into an online-softmax state (st, acc[dv]); keys with
     * mask[t] == 0 are skipped unread (mask may be NULL). */
    void (*attend_online)(const float *q, const float *K, const float *V,
                          size_t T, size_t d, size_t dv, float scale,
                          const unsigned char *mask, const attnx_mods *mods,
                          attnx_online *st, float *acc);

    /* s[0..n) (keys t0.. of row `row`) shaped by mods (softcap, bias,
     * ALiBi; not the window), in place, exactly as the fused kernels do. */
    void (*shape_scores)(const attnx_mods *mods, size_t row, size_t t0, size_t n, float *s);

    /* Fused attention for nq consecutive queries (see attnx_kernels in
     * attnx_internal.h: same arguments, same meaning). NULL: the generic
     * loop over attend_online in api_f32.c. */
    int (*attend_rows)(const float *Q, size_t nq, const float *K, const float *V,
                        size_t T, size_t d, size_t dv, float scale,
                        const unsigned char *mask, ptrdiff_t mask_row_stride,
                        const attnx_mods *mods, float *ctx, float *lse);

    /* Gradients of one batch item (queries [0, Lq), rows contiguous)
     * against keys [k0, k1): dK, dV rows k0..k1 overwritten, dQ added to;
     * dK and dQ lack the factor scale. D[r] = dO_r . O_r. dS (NULL: not
     * wanted; rows ldS apart) gets the bias's gradient at the keys each row
     * sees. The weights are exp(S - shift[r]) wt[r]; rows whose wt is 0
     * on entry first get the state of their scores over all of [0, T)
     * (shift their largest score, wt 1 / their sum of exps: k0 == k1 does
     * only that). mods as attend_rows (never NULL here). Returns -1 when
     * out of memory. NULL: api_backward.h's row-by-row passes. */
    int (*attend_backward)(const float *Q, const float *K, const float *V, const float *dO,
                           float *shift, float *wt, const float *D, size_t Lq, size_t T, size_t d,
                           size_t dv, float scale, const unsigned char *mask,
                           ptrdiff_t mask_row_stride, const attnx_mods *mods, size_t k0,
                           size_t k1, float *dQ, float *dK, float *dV, float *dS,
                           size_t ldS);
} attnx_kernels_f32;

extern const attnx_kernels_f32 attnx_kernels_f32_scalar;
#if defined(ATTNX_HAVE_X86)
extern const attnx_kernels_f32 attnx_kernels_f32_avx2;
extern const attnx_kernels_f32 attnx_kernels_f32_avx512;
#endif
#if defined(ATTNX_HAVE_NEON)
extern const attnx_kernels_f32 attnx_kernels_f32_neon;
#endif

/* The float32 table matching the float64 level in use (api_f32.c), so the
 * two families always run at the same level. Never NULL. */
const attnx_kernels_f32 *attnx_kernels_f32_get(void);

/* -------------------------------------------------------------------------
 * expf(x): the algorithm every level implements (float arithmetic only).
 *
 *   clamp x to [-104, 89]            (beyond: 0 or inf come out of the
 *                                     scaling; NaN passes through)
 *   n  = round(x / ln2)              (add-and-subtract 1.5 * 2^23)
 *   rh = x - n*ln2_hi                exact: ln2_hi has 15 significant bits
 *                                     and |n| <= 150 has 8, so n*ln2_hi is
 *                                     exact, and the subtraction cancels
 *                                     exactly (Sterbenz)
 *   rl = lo - n*ln2_lo               tiny; r = rh + rl, |r| <= 0.3466
 *   u  = r^2 * q(r), q of degree 5   (fitted, see below: approximation
 *                                     error < 6e-11 relative)
 *   e^r = (1 + rh) + (rl + u)        1 + rh split exactly into sh + sl
 *                                     (Fast2Sum), so the only large
 *                                     rounding is the final add
 *   e^x = e^r * 2^(n/2) * 2^(n - n/2)    two exact-power scalings, so the
 *                                     result overflows or goes subnormal
 *                                     with a single rounding
 *
 * `lo` carries the rounding error of a preceding subtraction: softmax and
 * attend pass s - max as an exact two-sum hi + lo, so a score spread of
 * 100 (where s - max itself rounds by 2^-18) costs no accuracy. The tests
 * measure the result against float64 exp: at most 0.64 ulp for normal
 * results, 0.76 ulp (of 2^-149) for subnormal ones, at every level;
 * asserted <= 1 ulp.
 * ------------------------------------------------------------------------- */
#define ATTNX_EXPF_LO_CLAMP (-104.0f)   /* e^-104 < 2^-150: rounds to 0 */
#define ATTNX_EXPF_HI_CLAMP 89.0f       /* e^89 > FLT_MAX */
#define ATTNX_LOG2EF 0x1.715476p0f
#define ATTNX_LN2F_HI 0x1.62e4p-1f
#define ATTNX_LN2F_LO 0x1.7f7d1cp-20f
#define ATTNX_SHIFTERF 0x1.8p23f
/* q(r) = (e^r - 1 - r) / r^2 ~ C2 + C3 r + ... + C7 r^5 on |r| <= ln2/2: a
 * weighted least-max fit of degree 5 (error in e^r below 6e-11, against
 * 7e-9 for the Taylor coefficients 1/k!, which would add 0.1 ulp), rounded
 * to float */
#define ATTNX_EXPF_C2 0.5f
#define ATTNX_EXPF_C3 0x1.555554p-3f
#define ATTNX_EXPF_C4 0x1.55549p-5f
#define ATTNX_EXPF_C5 0x1.11126cp-7f
#define ATTNX_EXPF_C6 0x1.6d8c1p-10f
#define ATTNX_EXPF_C7 0x1.9f0dbep-13f

/* The online-softmax rescale factor exp(m_old - m_new) (0 when nothing was
 * seen yet), computed in double: the running sum l is double, and the
 * float accumulator takes (float)c, rounded once even when subnormal. */
static inline double attnx_rescale_factor(double m_old, double m_new)
{
    return m_old == -(double)INFINITY ? 0.0 : attnx_exp_diff_scalar(m_old, m_new);
}

/* ctx = acc / l for one query's online-softmax state (m, l): acc times 1/l
 * in double, rounded to float, zeros when nothing was attended (m == -inf),
 * NaN when poisoned (l is NaN). Every level's attend_rows and fold use it;
 * api_impl.h's finish_checked (the fused single-query and KVCache paths)
 * computes the same expression, so all of them agree to the bit. */
static inline void attnx_online_finish_f32(double m, double l, float *c, size_t dv)
{
    if (l != l) {
        for (size_t j = 0; j < dv; j++) c[j] = (float)l;        /* NaN */
    } else if (m == -(double)INFINITY) {
        for (size_t j = 0; j < dv; j++) c[j] = 0.0f;
    } else {
        /* times 1/l in double: the float result is the same as of c / l
         * but where c / l lies within 2^-52 of a rounding boundary of
         * float, and one division per row, not per element (a vdivpd
         * per 8 elements cost the tiled kernel 3% on Intel) */
        const double rl = 1.0 / l;
        for (size_t j = 0; j < dv; j++) c[j] = (float)((double)c[j] * rl);
    }
}

#endif /* ATTNX_INTERNAL_F32_H */
