/*
 * kernels_avx512.c -- AVX-512F kernels (8 doubles a vector, 32 registers).
 * Built with -mavx512f -mavx2 -mfma (MSVC: /arch:AVX512); uses AVX-512F
 * alone (plus the SSE2/AVX2/FMA every AVX-512F CPU has), which is all
 * dispatch.c checks for. Same semantics as kernels_scalar.c; only the order
 * of additions differs (and FMA roundings). Tails use masked loads and
 * stores: lanes outside a buffer are never accessed.
 *
 *   exp          exp2sum_f64x8: the algorithm of attnx_internal.h with FMA
 *                (1 + rh carried exactly, Horner in r^2 over pairs of
 *                coefficients to halve the dependency chain), 2^n built
 *                from the shifter's integer bits; results below 2^-1022
 *                rounded by an integer add instead of an underflowing
 *                multiply (which takes a microcode assist: 3x slower);
 *                0.67 ulp measured in the normal range, 1 ulp at the
 *                subnormal boundary (as the scalar); reads x, writes y once
 *   dot_scores   8 key rows at a time, the reduction across d in vectors
 *                and the 8 partial vectors transposed-and-added into one
 *                vector of scores; reads K once (8*T*d bytes)
 *   softmax      three passes: max (NaN-aware), exp of the exact two-sum
 *                x - max with per-lane Kahan sums (combined by a tree of
 *                exact two-sums), one division per element; within 4 ulp;
 *                reads x twice, y once, writes y twice (32*n bytes)
 *   context      ctx in registers, 64 columns at a time; zero weights skip
 *                their row unread; reads w once per 64 columns, V once
 *   attend       online softmax over blocks of 8 keys: 8 dot products into
 *                one vector of scores, one max, one vector exp, at most one
 *                rescale per block, the next block's scores computed before
 *                this block's exp; rows whose offset in their cache line is
 *                not 0 (NumPy's 16-byte alignment) are read from the line
 *                base when d, dv are multiples of 8; prefetched ahead past
 *                8 MB; K and V rows read once (8*T*(d+dv) bytes), masked
 *                and p == 0 rows not at all; allocates nothing
 *   attend_rows  flash attention for a chunk of queries (64 at a time): key
 *                blocks of 16 packed transposed (d x 16, 8x8 register
 *                transposes), register-blocked 8x16 score tiles and 8x16
 *                P.V tiles accumulating in the ctx rows, per-row (m, l) on
 *                the stack; O(16 d) extra memory (on the heap only when
 *                d > 128); K and V read once per 64 queries; fewer than 4
 *                queries go through attend one by one
 */
#include "attnx_internal.h"

#if defined(ATTNX_HAVE_X86)

#include <immintrin.h>
#include <math.h>   /* INFINITY, NAN: macros only, no libm call */
#include <stdlib.h>

#if defined(_MSC_VER)
#define AX_INLINE static __forceinline
#else
#define AX_INLINE static inline __attribute__((always_inline))
#endif

#define NEG_INF (-INFINITY)

/* Index of the lowest set bit of b != 0. */
AX_INLINE unsigned lowest_bit(unsigned b)
{
#if defined(_MSC_VER)
    unsigned long i;
    _BitScanForward(&i, b);
    return (unsigned)i;
#else
    return (unsigned)__builtin_ctz(b);
#endif
}

/* First n lanes (1 <= n <= 8). */
AX_INLINE __mmask8 tail_mask8(size_t n) { return (__mmask8)((1u << n) - 1u); }

AX_INLINE double hsum_f64x8(__m512d v)
{
    __m256d a = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
    __m128d b = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(b, _mm_unpackhi_pd(b, b)));
}

/* Max of 8 lanes; no lane may be NaN. */
AX_INLINE double hmax_f64x8(__m512d v)
{
    __m256d a = _mm256_max_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
    __m128d b = _mm_max_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_max_sd(b, _mm_unpackhi_pd(b, b)));
}

/* exp(hi + lo) on 8 lanes: see attnx_internal.h. lo must be finite. */
AX_INLINE __m512d exp2sum_f64x8(__m512d hi, __m512d lo)
{
    const __m512d shifter = _mm512_set1_pd(ATTNX_SHIFTER);
    /* max/min return their second operand when either is NaN: put x second
     * so that a NaN passes through the clamp. */
    __m512d x = _mm512_max_pd(_mm512_set1_pd(ATTNX_EXP_LO_CLAMP), hi);
    x = _mm512_min_pd(_mm512_set1_pd(ATTNX_EXP_HI_CLAMP), x);
    __m512d t = _mm512_fmadd_pd(x, _mm512_set1_pd(ATTNX_LOG2E), shifter);
    __m512d n = _mm512_sub_pd(t, shifter);
    /* rh exact (ln2_hi has 32 bits, Sterbenz); 1 + rh is carried exactly as
     * sh + sl below, so only the final add rounds */
    __m512d rh = _mm512_fnmadd_pd(n, _mm512_set1_pd(ATTNX_LN2_HI), x);
    __m512d rl = _mm512_fnmadd_pd(n, _mm512_set1_pd(ATTNX_LN2_LO), lo);
    __m512d r = _mm512_add_pd(rh, rl);
    /* q = sum_k C_(k+2) r^k as Horner in r^2 over (C_2k + C_2k+1 r): six
     * chained FMAs instead of twelve; q only enters through r^2 q, so the
     * regrouping is invisible at the 1-ulp level */
    __m512d r2 = _mm512_mul_pd(r, r);
    __m512d a6 = _mm512_fmadd_pd(_mm512_set1_pd(ATTNX_EXP_C13), r, _mm512_set1_pd(ATTNX_EXP_C12));
    __m512d a5 = _mm512_fmadd_pd(_mm512_set1_pd(ATTNX_EXP_C11), r, _mm512_set1_pd(ATTNX_EXP_C10));
    __m512d a4 = _mm512_fmadd_pd(_mm512_set1_pd(ATTNX_EXP_C9), r, _mm512_set1_pd(ATTNX_EXP_C8));
    __m512d a3 = _mm512_fmadd_pd(_mm512_set1_pd(ATTNX_EXP_C7), r, _mm512_set1_pd(ATTNX_EXP_C6));
    __m512d a2 = _mm512_fmadd_pd(_mm512_set1_pd(ATTNX_EXP_C5), r, _mm512_set1_pd(ATTNX_EXP_C4));
    __m512d a1 = _mm512_fmadd_pd(_mm512_set1_pd(ATTNX_EXP_C3), r, _mm512_set1_pd(ATTNX_EXP_C2));
    __m512d q = _mm512_fmadd_pd(a6, r2, a5);
    q = _mm512_fmadd_pd(q, r2, a4);
    q = _mm512_fmadd_pd(q, r2, a3);
    q = _mm512_fmadd_pd(q, r2, a2);
    q = _mm512_fmadd_pd(q, r2, a1);
    const __m512d one = _mm512_set1_pd(1.0);
    __m512d sh = _mm512_add_pd(one, rh);
    __m512d sl = _mm512_add_pd(_mm512_sub_pd(one, sh), rh);     /* exact: Fast2Sum, |1| >= |rh| */
    __m512d er = _mm512_add_pd(sh, _mm512_add_pd(sl, _mm512_fmadd_pd(r2, q, rl)));
    /* bits(t) = bits(shifter) + n, and bits(shifter) is even with no bit
     * below 50: (bits >> 1) = B/2 + floor(n/2), and after << 52 only the
     * n part survives. So 2^floor(n/2) and 2^(n - floor(n/2)) need no 64-bit
     * int<->double conversion. */
    __m512i ti = _mm512_castpd_si512(t);
    __m512i h = _mm512_srli_epi64(ti, 1);
    const __m512i bias = _mm512_set1_epi64(1023);
    __m512d s1 = _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_add_epi64(h, bias), 52));
    __m512d s2 = _mm512_castsi512_pd(
        _mm512_slli_epi64(_mm512_add_epi64(_mm512_sub_epi64(ti, h), bias), 52));
    /* Results below 2^-1022 (n <= -1023): a multiply that underflows takes
     * a microcode assist (3-4x slower on Zen); such lanes are common in
     * softmax over a wide spread. There er * 2^n is rounded to the
     * 2^-1074 grid by adding 2^52 to er * 2^(n + 1074) (exact, normal):
     * the same single rounding, and the low bits are the subnormal. */
    const __mmask8 sub = _mm512_cmp_pd_mask(n, _mm512_set1_pd(-1022.5), _CMP_LT_OQ);
    if (sub) {
        const __m512d two52 = _mm512_set1_pd(0x1p52);
        __m512d z = _mm512_mul_pd(er, _mm512_castsi512_pd(_mm512_slli_epi64(
                                          _mm512_add_epi64(ti, _mm512_set1_epi64(1074 + 1023)), 52)));
        __m512d tiny = _mm512_castsi512_pd(_mm512_sub_epi64(_mm512_castpd_si512(_mm512_add_pd(z, two52)),
                                                            _mm512_castpd_si512(two52)));
        s1 = _mm512_mask_blend_pd(sub, s1, one);
        s2 = _mm512_mask_blend_pd(sub, s2, one);
        return _mm512_mask_blend_pd(sub, _mm512_mul_pd(_mm512_mul_pd(er, s1), s2), tiny);
    }
    return _mm512_mul_pd(_mm512_mul_pd(er, s1), s2);
}

/* exp(a - b) with the subtraction's rounding compensated (exact two-sum;
 * lo zeroed where hi is outside the exp range or NaN). */
AX_INLINE __m512d exp_diff_f64x8(__m512d a, __m512d b)
{
    __m512d hi = _mm512_sub_pd(a, b);
    __m512d z = _mm512_sub_pd(hi, a);
    __m512d lo = _mm512_sub_pd(_mm512_sub_pd(a, _mm512_sub_pd(hi, z)), _mm512_add_pd(b, z));
    __mmask8 sane = _mm512_cmp_pd_mask(hi, _mm512_set1_pd(ATTNX_EXP_LO_CLAMP), _CMP_GE_OQ);
    sane = _mm512_mask_cmp_pd_mask(sane, hi, _mm512_set1_pd(ATTNX_EXP_HI_CLAMP), _CMP_LE_OQ);
    return exp2sum_f64x8(hi, _mm512_maskz_mov_pd(sane, lo));
}

/* ------------------------------------------------------------------ exp */

static void exp_f64_avx512(const double *x, size_t n, double *y)
{
    const __m512d zero = _mm512_setzero_pd();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512d a = _mm512_loadu_pd(x + i), b = _mm512_loadu_pd(x + i + 8);
        _mm512_storeu_pd(y + i, exp2sum_f64x8(a, zero));
        _mm512_storeu_pd(y + i + 8, exp2sum_f64x8(b, zero));
    }
    for (; i < n; i += 8) {
        __mmask8 k = n - i >= 8 ? (__mmask8)0xFF : tail_mask8(n - i);
        _mm512_mask_storeu_pd(y + i, k, exp2sum_f64x8(_mm512_maskz_loadu_pd(k, x + i), zero));
    }
}

/* ----------------------------------------------------------- dot scores */

/* Lane i = sum of the lanes of a_i: three rounds of pairwise shuffles. */
AX_INLINE __m512d transpose_sum8(__m512d a0, __m512d a1, __m512d a2, __m512d a3, __m512d a4,
                                 __m512d a5, __m512d a6, __m512d a7)
{
    /* each 128-bit lane: (pair sum of a_even, pair sum of a_odd) */
    __m512d t01 = _mm512_add_pd(_mm512_unpacklo_pd(a0, a1), _mm512_unpackhi_pd(a0, a1));
    __m512d t23 = _mm512_add_pd(_mm512_unpacklo_pd(a2, a3), _mm512_unpackhi_pd(a2, a3));
    __m512d t45 = _mm512_add_pd(_mm512_unpacklo_pd(a4, a5), _mm512_unpackhi_pd(a4, a5));
    __m512d t67 = _mm512_add_pd(_mm512_unpacklo_pd(a6, a7), _mm512_unpackhi_pd(a6, a7));
    /* 128-bit lanes (L0+L1, L2+L3) of t01 then of t23 */
    __m512d u0 = _mm512_add_pd(_mm512_shuffle_f64x2(t01, t23, 0x88), _mm512_shuffle_f64x2(t01, t23, 0xDD));
    __m512d u1 = _mm512_add_pd(_mm512_shuffle_f64x2(t45, t67, 0x88), _mm512_shuffle_f64x2(t45, t67, 0xDD));
    return _mm512_add_pd(_mm512_shuffle_f64x2(u0, u1, 0x88), _mm512_shuffle_f64x2(u0, u1, 0xDD));
}

/* Lane i = dot(q, k_i) for 8 rows of length d. */
AX_INLINE __m512d dots8(const double *q, const double *const k[8], size_t d)
{
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    size_t j = 0;
    for (; j + 8 <= d; j += 8) {
        __m512d qv = _mm512_loadu_pd(q + j);
        a0 = _mm512_fmadd_pd(qv, _mm512_loadu_pd(k[0] + j), a0);
        a1 = _mm512_fmadd_pd(qv, _mm512_loadu_pd(k[1] + j), a1);
        a2 = _mm512_fmadd_pd(qv, _mm512_loadu_pd(k[2] + j), a2);
        a3 = _mm512_fmadd_pd(qv, _mm512_loadu_pd(k[3] + j), a3);
        a4 = _mm512_fmadd_pd(qv, _mm512_loadu_pd(k[4] + j), a4);
        a5 = _mm512_fmadd_pd(qv, _mm512_loadu_pd(k[5] + j), a5);
        a6 = _mm512_fmadd_pd(qv, _mm512_loadu_pd(k[6] + j), a6);
        a7 = _mm512_fmadd_pd(qv, _mm512_loadu_pd(k[7] + j), a7);
    }
    if (j < d) {
        __mmask8 m = tail_mask8(d - j);
        __m512d qv = _mm512_maskz_loadu_pd(m, q + j);
        a0 = _mm512_fmadd_pd(qv, _mm512_maskz_loadu_pd(m, k[0] + j), a0);
        a1 = _mm512_fmadd_pd(qv, _mm512_maskz_loadu_pd(m, k[1] + j), a1);
        a2 = _mm512_fmadd_pd(qv, _mm512_maskz_loadu_pd(m, k[2] + j), a2);
        a3 = _mm512_fmadd_pd(qv, _mm512_maskz_loadu_pd(m, k[3] + j), a3);
        a4 = _mm512_fmadd_pd(qv, _mm512_maskz_loadu_pd(m, k[4] + j), a4);
        a5 = _mm512_fmadd_pd(qv, _mm512_maskz_loadu_pd(m, k[5] + j), a5);
        a6 = _mm512_fmadd_pd(qv, _mm512_maskz_loadu_pd(m, k[6] + j), a6);
        a7 = _mm512_fmadd_pd(qv, _mm512_maskz_loadu_pd(m, k[7] + j), a7);
    }
    return transpose_sum8(a0, a1, a2, a3, a4, a5, a6, a7);
}

static void dot_scores_f64_avx512(const double *q, const double *K, size_t T, size_t d,
                                  double scale, double *s)
{
    const __m512d sc = _mm512_set1_pd(scale);
    const double *k[8];
    for (size_t t0 = 0; t0 < T; t0 += 8) {
        size_t nb = T - t0 < 8 ? T - t0 : 8;
        /* rows past T re-read the block's first row; their lanes are not stored */
        for (size_t i = 0; i < 8; i++) k[i] = K + (t0 + (i < nb ? i : 0)) * d;
        __m512d v = _mm512_mul_pd(sc, dots8(q, k, d));
        _mm512_mask_storeu_pd(s + t0, tail_mask8(nb), v);
    }
}

/* -------------------------------------------------------------- softmax */

/* TwoSum: a + b = *t + err exactly. */
AX_INLINE __m256d two_sum4(__m256d a, __m256d b, __m256d *t)
{
    __m256d s = _mm256_add_pd(a, b), bb = _mm256_sub_pd(s, a);
    *t = s;
    return _mm256_add_pd(_mm256_sub_pd(a, _mm256_sub_pd(s, bb)), _mm256_sub_pd(b, bb));
}

/* sum of the lanes of s + sum of the lanes of e, folding s with exact
 * two-sums (their errors go into e): the lanes' Kahan sums combined
 * without losing what their compensation kept. */
static double sum_lanes_compensated(__m512d s, __m512d e)
{
    __m256d t4, e4 = two_sum4(_mm512_castpd512_pd256(s), _mm512_extractf64x4_pd(s, 1), &t4);
    e4 = _mm256_add_pd(e4, _mm256_add_pd(_mm512_castpd512_pd256(e), _mm512_extractf64x4_pd(e, 1)));
    __m128d a = _mm256_castpd256_pd128(t4), b = _mm256_extractf128_pd(t4, 1);
    __m128d t2 = _mm_add_pd(a, b), bb = _mm_sub_pd(t2, a);
    __m128d e2 = _mm_add_pd(_mm_add_pd(_mm_sub_pd(a, _mm_sub_pd(t2, bb)), _mm_sub_pd(b, bb)),
                            _mm_add_pd(_mm256_castpd256_pd128(e4), _mm256_extractf128_pd(e4, 1)));
    double x = _mm_cvtsd_f64(t2), y = _mm_cvtsd_f64(_mm_unpackhi_pd(t2, t2));
    double t = x + y, bt = t - x;
    double err = (x - (t - bt)) + (y - bt) + _mm_cvtsd_f64(e2) + _mm_cvtsd_f64(_mm_unpackhi_pd(e2, e2));
    return t + err;
}

/* One Kahan step per lane. */
AX_INLINE void kahan_f64x8(__m512d *sum, __m512d *comp, __m512d e)
{
    __m512d yk = _mm512_sub_pd(e, *comp);
    __m512d t = _mm512_add_pd(*sum, yk);
    *comp = _mm512_sub_pd(_mm512_sub_pd(t, *sum), yk);
    *sum = t;
}

/* e / S from the reciprocal r = 1/S: q = e r, then q + (e - q S) r with the
 * remainder exact (one FMA), Markstein's correction: the quotient a division
 * gives, at a fraction of vdivpd's cost. Below DBL_MIN e r rounds twice, so
 * the (rare) lanes with a nonzero subnormal quotient divide. */
AX_INLINE __m512d div_by_f64x8(__m512d e, __m512d S, __m512d r)
{
    __m512d q = _mm512_mul_pd(e, r);
    q = _mm512_fmadd_pd(_mm512_fnmadd_pd(q, S, e), r, q);
    __mmask8 tiny = _mm512_cmp_pd_mask(q, _mm512_set1_pd(0x1p-1022), _CMP_LT_OQ) &
                    _mm512_cmp_pd_mask(e, _mm512_setzero_pd(), _CMP_NEQ_OQ);
    if (tiny) q = _mm512_mask_div_pd(q, tiny, e, S);
    return q;
}

static int softmax_f64_avx512(const double *x, size_t n, double *y)
{
    const __m512d ninf = _mm512_set1_pd(NEG_INF);
    /* pass 1: max, and whether any NaN (max_pd alone would lose it) */
    __m512d m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
    __mmask8 nan = 0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512d a = _mm512_loadu_pd(x + i), b = _mm512_loadu_pd(x + i + 8);
        __m512d c = _mm512_loadu_pd(x + i + 16), e = _mm512_loadu_pd(x + i + 24);
        nan |= _mm512_cmp_pd_mask(a, b, _CMP_UNORD_Q) | _mm512_cmp_pd_mask(c, e, _CMP_UNORD_Q);
        m0 = _mm512_max_pd(m0, a);
        m1 = _mm512_max_pd(m1, b);
        m2 = _mm512_max_pd(m2, c);
        m3 = _mm512_max_pd(m3, e);
    }
    for (; i < n; i += 8) {
        __mmask8 k = n - i >= 8 ? (__mmask8)0xFF : tail_mask8(n - i);
        __m512d a = _mm512_mask_loadu_pd(ninf, k, x + i);
        nan |= _mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q);
        m0 = _mm512_max_pd(m0, a);
    }
    m0 = _mm512_max_pd(_mm512_max_pd(m0, m1), _mm512_max_pd(m2, m3));
    double mx = hmax_f64x8(m0);
    if (nan || mx == NEG_INF) {
        const __m512d qnan = _mm512_set1_pd(NAN);
        for (i = 0; i < n; i += 8)
            _mm512_mask_storeu_pd(y + i, n - i >= 8 ? (__mmask8)0xFF : tail_mask8(n - i), qnan);
        return !nan;
    }
    /* pass 2: e = exp(x - max) compensated, y = e, Kahan sums per lane */
    const __m512d mv = _mm512_set1_pd(mx);
    __m512d s0 = _mm512_setzero_pd(), c0 = s0, s1 = s0, c1 = s0;
    for (i = 0; i + 16 <= n; i += 16) {
        __m512d e0 = exp_diff_f64x8(_mm512_loadu_pd(x + i), mv);
        __m512d e1 = exp_diff_f64x8(_mm512_loadu_pd(x + i + 8), mv);
        _mm512_storeu_pd(y + i, e0);
        _mm512_storeu_pd(y + i + 8, e1);
        kahan_f64x8(&s0, &c0, e0);
        kahan_f64x8(&s1, &c1, e1);
    }
    for (; i < n; i += 8) {
        __mmask8 k = n - i >= 8 ? (__mmask8)0xFF : tail_mask8(n - i);
        __m512d e = _mm512_maskz_mov_pd(k, exp_diff_f64x8(_mm512_maskz_loadu_pd(k, x + i), mv));
        _mm512_mask_storeu_pd(y + i, k, e);
        kahan_f64x8(&s0, &c0, e);
    }
    /* the two Kahan sets: s0 + s1 exactly as S + err, minus both compensations */
    __m512d S = _mm512_add_pd(s0, s1), bb = _mm512_sub_pd(S, s0);
    __m512d err = _mm512_add_pd(_mm512_sub_pd(s0, _mm512_sub_pd(S, bb)), _mm512_sub_pd(s1, bb));
    err = _mm512_sub_pd(err, _mm512_add_pd(c0, c1));
    const double sum = sum_lanes_compensated(S, err);
    const __m512d sv = _mm512_set1_pd(sum), rv = _mm512_set1_pd(1.0 / sum);
    /* pass 3: y / S as q = y * (1/S) plus one FMA correction with the exact
     * remainder y - q S: the accuracy of a division at a fraction of
     * vdivpd's cost (which made this pass 30% of the softmax) */
    for (i = 0; i + 16 <= n; i += 16) {
        _mm512_storeu_pd(y + i, div_by_f64x8(_mm512_loadu_pd(y + i), sv, rv));
        _mm512_storeu_pd(y + i + 8, div_by_f64x8(_mm512_loadu_pd(y + i + 8), sv, rv));
    }
    for (; i < n; i += 8) {
        __mmask8 k = n - i >= 8 ? (__mmask8)0xFF : tail_mask8(n - i);
        _mm512_mask_storeu_pd(y + i, k, div_by_f64x8(_mm512_maskz_loadu_pd(k, y + i), sv, rv));
    }
    return 0;
}

/* -------------------------------------------------------------- context */

/* ctx[0 .. nv vectors) (last one masked by km) = sum_t w[t] V[t, :] for one
 * column slice; nv is a constant after inlining, so acc stays in registers. */
AX_INLINE void context_cols(const double *w, const double *V, size_t T, size_t dv, int nv,
                            __mmask8 km, double *ctx)
{
    __m512d acc[8], acc2[8];
    for (int v = 0; v < nv; v++) acc[v] = acc2[v] = _mm512_setzero_pd();
    size_t t = 0;
    /* two rows per step into two sets: short slices would otherwise wait on
     * the FMA latency */
    for (; t + 2 <= T; t += 2) {
        double w0 = w[t], w1 = w[t + 1];
        const double *v0 = V + t * dv, *v1 = v0 + dv;
        if (w0 != 0.0) {
            __m512d b = _mm512_set1_pd(w0);
            for (int v = 0; v < nv - 1; v++) acc[v] = _mm512_fmadd_pd(b, _mm512_loadu_pd(v0 + 8 * v), acc[v]);
            acc[nv - 1] = _mm512_fmadd_pd(b, _mm512_maskz_loadu_pd(km, v0 + 8 * (nv - 1)), acc[nv - 1]);
        }
        if (w1 != 0.0) {
            __m512d b = _mm512_set1_pd(w1);
            for (int v = 0; v < nv - 1; v++) acc2[v] = _mm512_fmadd_pd(b, _mm512_loadu_pd(v1 + 8 * v), acc2[v]);
            acc2[nv - 1] = _mm512_fmadd_pd(b, _mm512_maskz_loadu_pd(km, v1 + 8 * (nv - 1)), acc2[nv - 1]);
        }
    }
    if (t < T && w[t] != 0.0) {
        const double *v0 = V + t * dv;
        __m512d b = _mm512_set1_pd(w[t]);
        for (int v = 0; v < nv - 1; v++) acc[v] = _mm512_fmadd_pd(b, _mm512_loadu_pd(v0 + 8 * v), acc[v]);
        acc[nv - 1] = _mm512_fmadd_pd(b, _mm512_maskz_loadu_pd(km, v0 + 8 * (nv - 1)), acc[nv - 1]);
    }
    for (int v = 0; v < nv - 1; v++) _mm512_storeu_pd(ctx + 8 * v, _mm512_add_pd(acc[v], acc2[v]));
    _mm512_mask_storeu_pd(ctx + 8 * (nv - 1), km, _mm512_add_pd(acc[nv - 1], acc2[nv - 1]));
}

static void context_f64_avx512(const double *w, const double *V, size_t T, size_t dv,
                               double *ctx)
{
    for (size_t c = 0; c < dv; c += 64) {
        size_t nc = dv - c < 64 ? dv - c : 64;
        int nv = (int)((nc + 7) / 8);
        __mmask8 km = tail_mask8(nc - 8 * (size_t)(nv - 1));
        const double *Vc = V + c;
        double *cc = ctx + c;
        switch (nv) {
        case 1: context_cols(w, Vc, T, dv, 1, km, cc); break;
        case 2: context_cols(w, Vc, T, dv, 2, km, cc); break;
        case 3: context_cols(w, Vc, T, dv, 3, km, cc); break;
        case 4: context_cols(w, Vc, T, dv, 4, km, cc); break;
        case 5: context_cols(w, Vc, T, dv, 5, km, cc); break;
        case 6: context_cols(w, Vc, T, dv, 6, km, cc); break;
        case 7: context_cols(w, Vc, T, dv, 7, km, cc); break;
        default: context_cols(w, Vc, T, dv, 8, km, cc); break;
        }
    }
}

/* ------------------------------------------------------- attend (online) */

/* acc[0..n) *= c, or zero it when c == 0 (inf * 0 would be NaN). */
static void rescale_acc(double *acc, size_t n, double c)
{
    const __m512d cv = _mm512_set1_pd(c);
    for (size_t j = 0; j < n; j += 8) {
        __mmask8 k = n - j >= 8 ? (__mmask8)0xFF : tail_mask8(n - j);
        __m512d a = c == 0.0 ? _mm512_setzero_pd() : _mm512_mul_pd(_mm512_maskz_loadu_pd(k, acc + j), cv);
        _mm512_mask_storeu_pd(acc + j, k, a);
    }
}

/* --- online softmax for one query.
 *
 * Blocks of 8 keys: 8 dot products (the reduction across d in vectors, 8
 * independent FMA chains) transposed-and-added into one vector of scores,
 * one max and at most one rescale per block, one vector exp, then the 8
 * value rows folded into acc in one pass over acc. The scores of block
 * b + 1 are computed before block b's exp and P.V: the two are
 * independent, so the out-of-order core overlaps the next block's key
 * loads with this block's exp latency. (Blocks of 16 measured no faster:
 * the extra accumulators spill.)
 *
 * Aligned variant (al): NumPy's (malloc's) large buffers are only 16-byte
 * aligned, and a 64-byte load that straddles two cache lines costs two
 * (~15-30% of an L2-resident attend). When d and dv are multiples of 8,
 * every key row starts at the same offset km (in doubles) within its cache
 * line, so rows are read from their line base -- first and last chunk
 * masked, the lanes outside the row are not accessed -- against a copy of
 * q shifted by km; the value rows likewise accumulate into a copy of acc
 * shifted by vm. */

#define ZERO_ROW 256 /* dv up to this: p == 0 rows read zero_row instead */
#if defined(_MSC_VER)
__declspec(align(64)) static const double zero_row[ZERO_ROW + 8];
#else
static const double zero_row[ZERO_ROW + 8] __attribute__((aligned(64)));
#endif
#define AL_MAX 256   /* largest d, dv of the aligned variant (stack copies) */

AX_INLINE const double *line_base(const double *p)
{
    return (const double *)(uintptr_t)((uintptr_t)p & ~(uintptr_t)63);
}

/* Bits k < kn set where mask[k] != 0 (kn <= 16 bytes readable). */
AX_INLINE unsigned mask_bits16(const unsigned char *mask, size_t kn)
{
    if (kn == 8) {
        __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)mask);
        return ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(b, _mm_setzero_si128())) & 0xFFu;
    }
    if (kn == 16) {
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)mask);
        return ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(b, _mm_setzero_si128())) & 0xFFFFu;
    }
    unsigned bits = 0;
    for (size_t k = 0; k < kn; k++) bits |= (unsigned)(mask[k] != 0) << k;
    return bits;
}

/* Attended keys of [t0, t0 + nb), nb <= 8. */
AX_INLINE unsigned block_live(const unsigned char *mask, size_t t0, size_t nb)
{
    if (mask) return mask_bits16(mask + t0, nb);
    return (1u << nb) - 1u;
}

/* Lane i = dot(q, row i) for 8 rows. al: q is the shifted copy and k[i]
 * line bases (see above); else any d, any alignment. */
AX_INLINE __m512d dots_block(const double *q, const double *const k[8], size_t d, int al,
                             unsigned km)
{
    __m512d a[8];
    size_t j;
    if (al) {
        const __mmask8 mf = (__mmask8)(0xFFu << km);
        __m512d qv = _mm512_load_pd(q);
        for (int i = 0; i < 8; i++) a[i] = _mm512_mul_pd(qv, _mm512_maskz_load_pd(mf, k[i]));
        for (j = 8; j < d; j += 8) {
            qv = _mm512_load_pd(q + j);
            for (int i = 0; i < 8; i++) a[i] = _mm512_fmadd_pd(qv, _mm512_load_pd(k[i] + j), a[i]);
        }
        if (km) {
            const __mmask8 ml = tail_mask8(km);
            qv = _mm512_load_pd(q + j);
            for (int i = 0; i < 8; i++) a[i] = _mm512_fmadd_pd(qv, _mm512_maskz_load_pd(ml, k[i] + j), a[i]);
        }
    } else {
        for (int i = 0; i < 8; i++) a[i] = _mm512_setzero_pd();
        for (j = 0; j + 8 <= d; j += 8) {
            __m512d qv = _mm512_loadu_pd(q + j);
            for (int i = 0; i < 8; i++) a[i] = _mm512_fmadd_pd(qv, _mm512_loadu_pd(k[i] + j), a[i]);
        }
        if (j < d) {
            const __mmask8 m = tail_mask8(d - j);
            __m512d qv = _mm512_maskz_loadu_pd(m, q + j);
            for (int i = 0; i < 8; i++) a[i] = _mm512_fmadd_pd(qv, _mm512_maskz_loadu_pd(m, k[i] + j), a[i]);
        }
    }
    return transpose_sum8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
}

/* Scores of block [t0, t0 + 8): -inf where not live. Rows that are not live
 * are not read: their lanes dot q with itself (any readable d doubles do)
 * and are then overwritten, never combined. */
AX_INLINE __m512d block_scores(const double *q, const double *K, size_t t0, size_t d, __m512d sc,
                               unsigned live, int al, unsigned km)
{
    const double *k[8];
    for (size_t i = 0; i < 8; i++) {
        const double *r = K + (t0 + i) * d;
        k[i] = (live >> i) & 1 ? (al ? line_base(r) : r) : q;
    }
    return _mm512_mask_blend_pd((__mmask8)live, _mm512_set1_pd(NEG_INF),
                                _mm512_mul_pd(sc, dots_block(q, k, d, al, km)));
}

/* One 8-column chunk of acc += sum_i p_i V_i over 8 rows; masked: loads
 * and stores with k (the columns inside the rows). */
AX_INLINE void axpy_chunk(double *acc, const __m512d *pb, const double *const v[8], size_t j,
                          __mmask8 k, int masked, int al)
{
#define LD(i) (masked ? (al ? _mm512_maskz_load_pd(k, v[i] + j) : _mm512_maskz_loadu_pd(k, v[i] + j)) \
                      : (al ? _mm512_load_pd(v[i] + j) : _mm512_loadu_pd(v[i] + j)))
    /* two chains of four: halves the FMA latency on the accumulator */
    __m512d a = al ? _mm512_load_pd(acc + j) : masked ? _mm512_maskz_loadu_pd(k, acc + j) : _mm512_loadu_pd(acc + j);
    __m512d b = _mm512_mul_pd(pb[4], LD(4));
    a = _mm512_fmadd_pd(pb[0], LD(0), a);
    b = _mm512_fmadd_pd(pb[5], LD(5), b);
    a = _mm512_fmadd_pd(pb[1], LD(1), a);
    b = _mm512_fmadd_pd(pb[6], LD(6), b);
    a = _mm512_fmadd_pd(pb[2], LD(2), a);
    b = _mm512_fmadd_pd(pb[7], LD(7), b);
    a = _mm512_fmadd_pd(pb[3], LD(3), a);
#undef LD
    a = _mm512_add_pd(a, b);
    if (al)
        _mm512_store_pd(acc + j, a);
    else if (masked)
        _mm512_mask_storeu_pd(acc + j, k, a);
    else
        _mm512_storeu_pd(acc + j, a);
}

/* acc += sum_i p_i V_i for 8 rows (al: line bases, shifted acc). */
AX_INLINE void axpy_block(double *acc, const double *p, const double *const v[8], size_t dv, int al,
                          unsigned vm)
{
    __m512d pb[8];
    for (int i = 0; i < 8; i++) pb[i] = _mm512_set1_pd(p[i]);
    if (al) {
        axpy_chunk(acc, pb, v, 0, (__mmask8)(0xFFu << vm), 1, 1);
        for (size_t j = 8; j < dv; j += 8) axpy_chunk(acc, pb, v, j, 0xFF, 0, 1);
        if (vm) axpy_chunk(acc, pb, v, dv, tail_mask8(vm), 1, 1);
    } else {
        size_t j = 0;
        for (; j + 8 <= dv; j += 8) axpy_chunk(acc, pb, v, j, 0xFF, 0, 0);
        if (j < dv) axpy_chunk(acc, pb, v, j, tail_mask8(dv - j), 1, 0);
    }
}

/* acc += p V for one row (al as axpy_block). */
AX_INLINE void axpy1(double *acc, double p, const double *v, size_t dv, int al, unsigned vm)
{
    const __m512d pv = _mm512_set1_pd(p);
    if (al) {
        const size_t end = dv + (vm ? 8 : 0);
        for (size_t j = 0; j < end; j += 8) {
            __mmask8 k = (__mmask8)((j == 0 ? 0xFFu << vm : 0xFFu) & (j == dv ? (1u << vm) - 1u : 0xFFu));
            _mm512_store_pd(acc + j, _mm512_fmadd_pd(pv, _mm512_maskz_load_pd(k, v + j), _mm512_load_pd(acc + j)));
        }
    } else {
        for (size_t j = 0; j < dv; j += 8) {
            __mmask8 k = dv - j >= 8 ? (__mmask8)0xFF : tail_mask8(dv - j);
            _mm512_mask_storeu_pd(acc + j, k,
                                  _mm512_fmadd_pd(pv, _mm512_maskz_loadu_pd(k, v + j),
                                                  _mm512_maskz_loadu_pd(k, acc + j)));
        }
    }
}

/* Softmax bookkeeping of one block (scores s; -inf where unattended):
 * updates (m, l), rescales acc[0..nacc) when the max grows, writes p[8].
 * Returns the keys with p != 0 (whose value rows are then added; the
 * others are not read), or -1 when the state is poisoned (stop: the result
 * is NaN whatever follows). */
AX_INLINE int block_softmax(__m512d s, double *m, double *l, double *acc, size_t nacc, double *p)
{
    if (_mm512_cmp_pd_mask(s, s, _CMP_UNORD_Q)) {
        *l = NAN;                       /* poisons the result; finalisation sees it */
        return -1;
    }
    double bm = hmax_f64x8(s);
    if (bm == NEG_INF) return 0;
    if (bm > *m) {
        double c = *m == NEG_INF ? 0.0 : attnx_exp_diff_scalar(*m, bm);
        *l *= c;
        rescale_acc(acc, nacc, c);
        *m = bm;
    }
    __m512d pv = exp_diff_f64x8(s, _mm512_set1_pd(*m));
    _mm512_storeu_pd(p, pv);
    *l += hsum_f64x8(pv);
    if (*l != *l) return -1;            /* +inf score: inf - inf */
    return (int)_mm512_cmp_pd_mask(pv, _mm512_setzero_pd(), _CMP_NEQ_UQ);
}

/* Past this many bytes of K and V a call prefetches PF_KEYS keys ahead:
 * DRAM-sized sequences need more lines in flight than the hardware
 * prefetcher keeps (measured +30-70%), while for L2/L3-sized ones the
 * prefetch instructions only compete with the demand loads (-15-25% at
 * 1 MB). 16 keys measured best of 8..32. */
#define PF_MIN_BYTES ((size_t)8 << 20)
#define PF_KEYS 16
#define PF_BATCH_BYTES ((size_t)64 << 10)

AX_INLINE void prefetch_block(const double *K, const double *V, size_t t, size_t d, size_t dv)
{
    const char *pk = (const char *)(K + t * d), *pv = (const char *)(V + t * dv);
    for (size_t b = 0; b < 8 * d * sizeof(double); b += 64) _mm_prefetch(pk + b, _MM_HINT_T0);
    for (size_t b = 0; b < 8 * dv * sizeof(double); b += 64) _mm_prefetch(pv + b, _MM_HINT_T0);
}

/* The fold over keys [0, T): q and acc are the caller's (al == 0) or the
 * shifted aligned copies (al == 1). */
AX_INLINE void online_run(const double *q, const double *K, const double *V, size_t T, size_t d,
                          size_t dv, double scale, const unsigned char *mask, double *m, double *l,
                          double *acc, size_t nacc, int al, unsigned km, unsigned vm, int pf)
{
    const __m512d sc = _mm512_set1_pd(scale), ninf = _mm512_set1_pd(NEG_INF);
    double p[8];
    const double *v[8];
    __m512d s = ninf, s_next = ninf;
    unsigned live = block_live(mask, 0, T < 8 ? T : 8), live_next = 0;
    if (live) s = block_scores(q, K, 0, d, sc, live, al, km);
    for (size_t t0 = 0; t0 < T; t0 += 8) {
        if (t0 + 8 < T) {
            size_t t1 = t0 + 8, nn = T - t1 < 8 ? T - t1 : 8;
            live_next = block_live(mask, t1, nn);
            s_next = live_next ? block_scores(q, K, t1, d, sc, live_next, al, km) : ninf;
        }
        if (pf && t0 + 8 + PF_KEYS <= T) prefetch_block(K, V, t0 + PF_KEYS, d, dv);
        if (live) {
            int nz = block_softmax(s, m, l, acc, nacc, p);
            if (nz < 0) break;
            if (nz == 0xFF || (nz && dv <= ZERO_ROW)) {
                /* p == 0 (masked, -inf, underflow): the value row is not
                 * read; a row of zeros stands in (0 * 0 adds nothing) */
                for (size_t i = 0; i < 8; i++) {
                    const double *r = V + (t0 + i) * dv;
                    v[i] = (nz >> i) & 1 ? (al ? line_base(r) : r) : zero_row;
                }
                axpy_block(acc, p, v, dv, al, vm);
            } else {
                for (unsigned b = (unsigned)nz; b; b &= b - 1) {
                    unsigned i = lowest_bit(b);
                    const double *r = V + (t0 + i) * dv;
                    axpy1(acc, p[i], al ? line_base(r) : r, dv, al, vm);
                }
            }
        }
        s = s_next;
        live = live_next;
    }
}

/* ------------------------------------------------- attend_rows (flash) */

#define RQ 64          /* queries per sub-chunk: its ctx rows stay in L1/L2 */
#define KB 16          /* keys per block: two vectors of scores per query */
#define MR 8           /* queries per register tile */
#define KT_STACK 128   /* d up to this packs K on the stack */
#define FEW_QUERIES 4  /* below this, packing K costs more than it saves */

/* Kt[j][k] = Kb[k][j] for the keys k in `any` (zero columns for the
 * others, which stay unread), 8x8 blocks transposed in registers. Rows j
 * of Kt up to d rounded up to 8 are written. */
static void pack_kt(const double *Kb, size_t d, unsigned any, double *Kt)
{
    for (size_t j0 = 0; j0 < d; j0 += 8) {
        const __mmask8 m = d - j0 >= 8 ? (__mmask8)0xFF : tail_mask8(d - j0);
        for (size_t h = 0; h < KB; h += 8) {
            __m512d r[8];
            for (size_t i = 0; i < 8; i++)
                r[i] = (any >> (h + i)) & 1 ? _mm512_maskz_loadu_pd(m, Kb + (h + i) * d + j0) : _mm512_setzero_pd();
            __m512d t0 = _mm512_unpacklo_pd(r[0], r[1]), t1 = _mm512_unpackhi_pd(r[0], r[1]);
            __m512d t2 = _mm512_unpacklo_pd(r[2], r[3]), t3 = _mm512_unpackhi_pd(r[2], r[3]);
            __m512d t4 = _mm512_unpacklo_pd(r[4], r[5]), t5 = _mm512_unpackhi_pd(r[4], r[5]);
            __m512d t6 = _mm512_unpacklo_pd(r[6], r[7]), t7 = _mm512_unpackhi_pd(r[6], r[7]);
            __m512d u0 = _mm512_shuffle_f64x2(t0, t2, 0x88), u1 = _mm512_shuffle_f64x2(t0, t2, 0xDD);
            __m512d u2 = _mm512_shuffle_f64x2(t1, t3, 0x88), u3 = _mm512_shuffle_f64x2(t1, t3, 0xDD);
            __m512d u4 = _mm512_shuffle_f64x2(t4, t6, 0x88), u5 = _mm512_shuffle_f64x2(t4, t6, 0xDD);
            __m512d u6 = _mm512_shuffle_f64x2(t5, t7, 0x88), u7 = _mm512_shuffle_f64x2(t5, t7, 0xDD);
            double *o = Kt + KB * j0 + h;
            _mm512_storeu_pd(o + 0 * KB, _mm512_shuffle_f64x2(u0, u4, 0x88));
            _mm512_storeu_pd(o + 4 * KB, _mm512_shuffle_f64x2(u0, u4, 0xDD));
            _mm512_storeu_pd(o + 2 * KB, _mm512_shuffle_f64x2(u1, u5, 0x88));
            _mm512_storeu_pd(o + 6 * KB, _mm512_shuffle_f64x2(u1, u5, 0xDD));
            _mm512_storeu_pd(o + 1 * KB, _mm512_shuffle_f64x2(u2, u6, 0x88));
            _mm512_storeu_pd(o + 5 * KB, _mm512_shuffle_f64x2(u2, u6, 0xDD));
            _mm512_storeu_pd(o + 3 * KB, _mm512_shuffle_f64x2(u3, u7, 0x88));
            _mm512_storeu_pd(o + 7 * KB, _mm512_shuffle_f64x2(u3, u7, 0xDD));
        }
    }
}

/* s[r][0..16) = dot(Q_r, key k) for r < mr, keys packed as Kt[j][k]. */
AX_INLINE void score_tile(const double *Q, size_t d, const double *Kt, int mr, double *s)
{
    __m512d a[MR][2];
    for (int r = 0; r < mr; r++) a[r][0] = a[r][1] = _mm512_setzero_pd();
    for (size_t j = 0; j < d; j++) {
        __m512d k0 = _mm512_loadu_pd(Kt + KB * j), k1 = _mm512_loadu_pd(Kt + KB * j + 8);
        for (int r = 0; r < mr; r++) {
            __m512d b = _mm512_set1_pd(Q[(size_t)r * d + j]);
            a[r][0] = _mm512_fmadd_pd(b, k0, a[r][0]);
            a[r][1] = _mm512_fmadd_pd(b, k1, a[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        _mm512_storeu_pd(s + KB * r, a[r][0]);
        _mm512_storeu_pd(s + KB * r + 8, a[r][1]);
    }
}

/* One 16-column slice of C_r += sum_i P[r][kidx[i]] V[kidx[i]] for r < mr
 * (k0, k1 mask the columns; all-ones except at the end of a row). */
AX_INLINE void pv_slice(const double *P, const unsigned char *kidx, int nk, const double *Vb,
                        size_t dv, int mr, double *C, size_t c, __mmask8 k0, __mmask8 k1, int full)
{
    __m512d a[MR][2];
    for (int r = 0; r < mr; r++) {
        a[r][0] = _mm512_maskz_loadu_pd(k0, C + (size_t)r * dv + c);
        a[r][1] = _mm512_maskz_loadu_pd(k1, C + (size_t)r * dv + c + 8);
    }
    for (int i = 0; i < nk; i++) {
        const int kk = full ? i : kidx[i];
        const double *vr = Vb + (size_t)kk * dv + c;
        __m512d v0, v1;
        if (full && k0 == 0xFF && k1 == 0xFF) {
            v0 = _mm512_loadu_pd(vr);
            v1 = _mm512_loadu_pd(vr + 8);
        } else {
            v0 = _mm512_maskz_loadu_pd(k0, vr);
            v1 = _mm512_maskz_loadu_pd(k1, vr + 8);
        }
        for (int r = 0; r < mr; r++) {
            __m512d b = _mm512_set1_pd(P[KB * r + kk]);
            a[r][0] = _mm512_fmadd_pd(b, v0, a[r][0]);
            a[r][1] = _mm512_fmadd_pd(b, v1, a[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        _mm512_mask_storeu_pd(C + (size_t)r * dv + c, k0, a[r][0]);
        _mm512_mask_storeu_pd(C + (size_t)r * dv + c + 8, k1, a[r][1]);
    }
}

/* C_r += sum_i P[r][kidx[i]] V[kidx[i]] for r < mr: ctx rows C (stride dv),
 * 16 columns at a time in registers. Every listed key has p != 0 in every
 * row; nk == KB means all keys of the block, in order. */
AX_INLINE void pv_tile(const double *P, const unsigned char *kidx, int nk, const double *Vb,
                       size_t dv, int mr, double *C)
{
    size_t c = 0;
    if (nk == KB) {
        for (; c + 16 <= dv; c += 16) pv_slice(P, kidx, KB, Vb, dv, mr, C, c, 0xFF, 0xFF, 1);
    } else {
        for (; c + 16 <= dv; c += 16) pv_slice(P, kidx, nk, Vb, dv, mr, C, c, 0xFF, 0xFF, 0);
    }
    if (c < dv) {
        size_t rem = dv - c;
        __mmask8 k0 = rem >= 8 ? (__mmask8)0xFF : tail_mask8(rem);
        __mmask8 k1 = rem > 8 ? tail_mask8(rem - 8) : (__mmask8)0;
        pv_slice(P, kidx, nk, Vb, dv, mr, C, c, k0, k1, 0);
    }
}

#define TILE_SWITCH(mr, CALL) \
    switch (mr) {                   \
    case 1: CALL(1); break;         \
    case 2: CALL(2); break;         \
    case 3: CALL(3); break;         \
    case 4: CALL(4); break;         \
    case 5: CALL(5); break;         \
    case 6: CALL(6); break;         \
    case 7: CALL(7); break;         \
    default: CALL(8); break;        \
    }

/* ctx = acc / l, zeros when nothing was attended, NaN when poisoned
 * (api.c's online_finish). */
static void finish_row(double m, double l, double *c, size_t dv)
{
    const __m512d lv = _mm512_set1_pd(l), qnan = _mm512_set1_pd(NAN);
    for (size_t j = 0; j < dv; j += 8) {
        __mmask8 k = dv - j >= 8 ? (__mmask8)0xFF : tail_mask8(dv - j);
        __m512d v = l != l ? qnan
                  : m == NEG_INF ? _mm512_setzero_pd()
                  : _mm512_div_pd(_mm512_maskz_loadu_pd(k, c + j), lv);
        _mm512_mask_storeu_pd(c + j, k, v);
    }
}

/* Queries [qa, qa + nr) (nr <= RQ), all against keys [0, T). */
static void rows_chunk(const double *Q, size_t nr, size_t qa, const double *K, const double *V,
                       size_t T, size_t d, size_t dv, double scale, const unsigned char *mask,
                       ptrdiff_t mask_row_stride, int causal, double *ctx, double *Kt)
{
    double m[RQ], l[RQ], S[MR * KB], P[MR * KB];
    unsigned live[RQ];
    unsigned char kidx[KB];
    const __m512d sc = _mm512_set1_pd(scale), ninf = _mm512_set1_pd(NEG_INF);
    const __m512d zero = _mm512_setzero_pd();
    for (size_t r = 0; r < nr; r++) {
        m[r] = NEG_INF;
        l[r] = 0.0;
        double *c = ctx + r * dv;
        for (size_t j = 0; j < dv; j += 8)
            _mm512_mask_storeu_pd(c + j, dv - j >= 8 ? (__mmask8)0xFF : tail_mask8(dv - j), zero);
    }
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
            if (lv && mask) lv &= mask_bits16(mask + (ptrdiff_t)r * mask_row_stride + (ptrdiff_t)t0, kn);
            if (l[r] != l[r]) lv = 0;  /* poisoned rows are done */
            live[r] = lv;
            any |= lv;
        }
        if (!any) continue;
        pack_kt(K + t0 * d, d, any, Kt);
        const double *Vb = V + t0 * dv;
        for (size_t g = 0; g < nr; g += MR) {
            int mr = nr - g < MR ? (int)(nr - g) : MR;
            unsigned gl = 0;
            for (int r = 0; r < mr; r++) gl |= live[g + r];
            if (!gl) continue;
            const double *Qg = Q + g * d;
#define SCORE_CALL(n) score_tile(Qg, d, Kt, n, S)
            TILE_SWITCH(mr, SCORE_CALL)
#undef SCORE_CALL
            unsigned colall = 0xFFFFu, colany = 0;
            for (int r = 0; r < mr; r++) {
                size_t row = g + (size_t)r;
                unsigned lv = live[row];
                __m512d s0 = _mm512_mask_blend_pd((__mmask8)lv, ninf, _mm512_mul_pd(sc, _mm512_loadu_pd(S + KB * r)));
                __m512d s1 = _mm512_mask_blend_pd((__mmask8)(lv >> 8), ninf,
                                                  _mm512_mul_pd(sc, _mm512_loadu_pd(S + KB * r + 8)));
                double bm = NEG_INF;
                if (lv) {
                    if (_mm512_cmp_pd_mask(s0, s0, _CMP_UNORD_Q) | _mm512_cmp_pd_mask(s1, s1, _CMP_UNORD_Q)) {
                        l[row] = NAN;
                    } else {
                        bm = hmax_f64x8(_mm512_max_pd(s0, s1));
                    }
                }
                if (bm == NEG_INF) {
                    _mm512_storeu_pd(P + KB * r, zero);
                    _mm512_storeu_pd(P + KB * r + 8, zero);
                    colall = 0;
                    continue;
                }
                if (bm > m[row]) {
                    double c = m[row] == NEG_INF ? 0.0 : attnx_exp_diff_scalar(m[row], bm);
                    l[row] *= c;
                    rescale_acc(ctx + row * dv, dv, c);
                    m[row] = bm;
                }
                const __m512d mv = _mm512_set1_pd(m[row]);
                __m512d p0 = exp_diff_f64x8(s0, mv), p1 = exp_diff_f64x8(s1, mv);
                l[row] += hsum_f64x8(_mm512_add_pd(p0, p1));
                unsigned nz = (unsigned)_mm512_cmp_pd_mask(p0, zero, _CMP_NEQ_UQ) |
                              (unsigned)_mm512_cmp_pd_mask(p1, zero, _CMP_NEQ_UQ) << 8;
                if (l[row] != l[row]) nz = 0;   /* +inf score: poisoned, skip */
                if (!nz) {
                    p0 = p1 = zero;
                }
                _mm512_storeu_pd(P + KB * r, p0);
                _mm512_storeu_pd(P + KB * r + 8, p1);
                colall &= nz;
                colany |= nz;
            }
            /* keys every row of the tile weighs: the register-blocked tile */
            int nk = 0;
            for (unsigned b = colall; b; b &= b - 1) kidx[nk++] = (unsigned char)lowest_bit(b);
            if (nk) {
                double *Cg = ctx + g * dv;
#define PV_CALL(n) pv_tile(P, kidx, nk, Vb, dv, n, Cg)
                TILE_SWITCH(mr, PV_CALL)
#undef PV_CALL
            }
            /* keys only some rows weigh: row by row, skipping p == 0 */
            for (unsigned b = colany & ~colall; b; b &= b - 1) {
                unsigned k = lowest_bit(b);
                for (int r = 0; r < mr; r++) {
                    double pr = P[KB * r + k];
                    if (pr != 0.0) axpy1(ctx + (g + (size_t)r) * dv, pr, Vb + (size_t)k * dv, dv, 0, 0);
                }
            }
        }
    }
    for (size_t r = 0; r < nr; r++) finish_row(m[r], l[r], ctx + r * dv, dv);
}

#define KF_T double
#define KF_W 8
#define KF_SFX f64_avx512
#define KF_ALIGNED 1
#define KF_FINISH finish_row
#include "kernels_fold.h"

const attnx_kernels attnx_kernels_avx512 = {
    "avx512",
    exp_f64_avx512,
    dot_scores_f64_avx512,
    softmax_f64_avx512,
    context_f64_avx512,
    attend_online_f64_avx512,
    attend_rows_f64_avx512,
};

#endif /* ATTNX_HAVE_X86 */
