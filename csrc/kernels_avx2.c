/*
 * kernels_avx2.c -- AVX2 + FMA kernels (4 doubles a vector, 16 registers).
 * Built with -mavx2 -mfma (MSVC: /arch:AVX2). Same semantics as
 * kernels_scalar.c; only the order of additions differs (and FMA
 * roundings). Tails use vmaskmovpd loads (masked-off lanes are never
 * touched) and, outside hot loops, stores.
 *
 *   exp          exp2sum_f64x4: the algorithm of attnx_internal.h with FMA
 *                (1 + rh carried exactly, Horner in r^2 over pairs of
 *                coefficients), 2^n built from the shifter's integer bits
 *                (AVX2 has no 64-bit int<->double conversion); results
 *                below 2^-1022 rounded by an integer add instead of an
 *                underflowing multiply (microcode assist); 0.67 ulp
 *                measured in the normal range, 1 ulp at the subnormal
 *                boundary (as the scalar); reads x, writes y once
 *   dot_scores   8 key rows at a time, q loaded once per 4 columns for all
 *                8, the partial vectors transposed-and-added into two
 *                vectors of scores; reads K once (8*T*d bytes)
 *   softmax      three passes: max (NaN-aware), exp of the exact two-sum
 *                x - max with per-lane Kahan sums (combined by a tree of
 *                exact two-sums), one division per element; within 4 ulp;
 *                reads x twice, y once, writes y twice (32*n bytes)
 *   context      ctx in registers, 32 columns at a time; zero weights skip
 *                their row unread; reads w once per 32 columns, V once
 *   attend       online softmax over blocks of 8 keys: 8 dot products into
 *                two vectors of scores, one max, two vector exps, at most
 *                one rescale per block, the next block's scores computed
 *                before this block's exp; misaligned rows read from their
 *                32-byte base when d, dv are multiples of 4; prefetched
 *                ahead past 8 MB; K and V rows read once (8*T*(d+dv)
 *                bytes), masked and p == 0 rows not at all; no allocation
 *   attend_rows  flash attention for a chunk of queries (64 at a time): key
 *                blocks of 8 packed transposed (d x 8, 4x4 register
 *                transposes), register-blocked 6x8 score tiles and 6x8 P.V
 *                tiles accumulating in the ctx rows, per-row (m, l) on the
 *                stack; O(8 d) extra memory (on the heap only when
 *                d > 256); K and V read once per 64 queries; fewer than 4
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

static const int64_t tail_tab[8] = {-1, -1, -1, -1, 0, 0, 0, 0};

/* First n lanes (0 <= n <= 4) as a vmaskmovpd mask. */
AX_INLINE __m256i tail_mask4(size_t n)
{
    return _mm256_loadu_si256((const __m256i *)(const void *)(tail_tab + 4 - n));
}

/* Lanes i with bit i of b set. */
AX_INLINE __m256d bits_mask4(unsigned b)
{
    const __m256i sel = _mm256_set_epi64x(8, 4, 2, 1);
    __m256i v = _mm256_and_si256(_mm256_set1_epi64x((long long)b), sel);
    return _mm256_castsi256_pd(_mm256_cmpeq_epi64(v, sel));
}

AX_INLINE double hsum_f64x4(__m256d v)
{
    __m128d b = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(b, _mm_unpackhi_pd(b, b)));
}

/* Max of 4 lanes; no lane may be NaN. */
AX_INLINE double hmax_f64x4(__m256d v)
{
    __m128d b = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(b, _mm_unpackhi_pd(b, b)));
}

/* exp(hi + lo) on 4 lanes: see attnx_internal.h. lo must be finite. */
AX_INLINE __m256d exp2sum_f64x4(__m256d hi, __m256d lo)
{
    const __m256d shifter = _mm256_set1_pd(ATTNX_SHIFTER);
    /* max/min return their second operand when either is NaN: put x second
     * so that a NaN passes through the clamp. */
    __m256d x = _mm256_max_pd(_mm256_set1_pd(ATTNX_EXP_LO_CLAMP), hi);
    x = _mm256_min_pd(_mm256_set1_pd(ATTNX_EXP_HI_CLAMP), x);
    __m256d t = _mm256_fmadd_pd(x, _mm256_set1_pd(ATTNX_LOG2E), shifter);
    __m256d n = _mm256_sub_pd(t, shifter);
    /* rh exact (ln2_hi has 32 bits, Sterbenz); 1 + rh is carried exactly as
     * sh + sl below, so only the final add rounds */
    __m256d rh = _mm256_fnmadd_pd(n, _mm256_set1_pd(ATTNX_LN2_HI), x);
    __m256d rl = _mm256_fnmadd_pd(n, _mm256_set1_pd(ATTNX_LN2_LO), lo);
    __m256d r = _mm256_add_pd(rh, rl);
    /* q = sum_k C_(k+2) r^k as Horner in r^2 over (C_2k + C_2k+1 r): six
     * chained FMAs instead of twelve; q only enters through r^2 q, so the
     * regrouping is invisible at the 1-ulp level */
    __m256d r2 = _mm256_mul_pd(r, r);
    __m256d a6 = _mm256_fmadd_pd(_mm256_set1_pd(ATTNX_EXP_C13), r, _mm256_set1_pd(ATTNX_EXP_C12));
    __m256d a5 = _mm256_fmadd_pd(_mm256_set1_pd(ATTNX_EXP_C11), r, _mm256_set1_pd(ATTNX_EXP_C10));
    __m256d a4 = _mm256_fmadd_pd(_mm256_set1_pd(ATTNX_EXP_C9), r, _mm256_set1_pd(ATTNX_EXP_C8));
    __m256d a3 = _mm256_fmadd_pd(_mm256_set1_pd(ATTNX_EXP_C7), r, _mm256_set1_pd(ATTNX_EXP_C6));
    __m256d a2 = _mm256_fmadd_pd(_mm256_set1_pd(ATTNX_EXP_C5), r, _mm256_set1_pd(ATTNX_EXP_C4));
    __m256d a1 = _mm256_fmadd_pd(_mm256_set1_pd(ATTNX_EXP_C3), r, _mm256_set1_pd(ATTNX_EXP_C2));
    __m256d q = _mm256_fmadd_pd(a6, r2, a5);
    q = _mm256_fmadd_pd(q, r2, a4);
    q = _mm256_fmadd_pd(q, r2, a3);
    q = _mm256_fmadd_pd(q, r2, a2);
    q = _mm256_fmadd_pd(q, r2, a1);
    const __m256d one = _mm256_set1_pd(1.0);
    __m256d sh = _mm256_add_pd(one, rh);
    __m256d sl = _mm256_add_pd(_mm256_sub_pd(one, sh), rh);     /* exact: Fast2Sum, |1| >= |rh| */
    __m256d er = _mm256_add_pd(sh, _mm256_add_pd(sl, _mm256_fmadd_pd(r2, q, rl)));
    /* bits(t) = bits(shifter) + n, bits(shifter) even with no set bit below
     * 50: (bits >> 1) = B/2 + floor(n/2), and after << 52 only the n part
     * survives. 64-bit logical shifts and adds are all AVX2 has, and all
     * this needs. */
    __m256i ti = _mm256_castpd_si256(t);
    __m256i h = _mm256_srli_epi64(ti, 1);
    const __m256i bias = _mm256_set1_epi64x(1023);
    __m256d s1 = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(h, bias), 52));
    __m256d s2 = _mm256_castsi256_pd(
        _mm256_slli_epi64(_mm256_add_epi64(_mm256_sub_epi64(ti, h), bias), 52));
    /* Results below 2^-1022 (n <= -1023): a multiply that underflows takes
     * a microcode assist (3-4x slower on Zen); such lanes are common in
     * softmax over a wide spread. There er * 2^n is rounded to the
     * 2^-1074 grid by adding 2^52 to er * 2^(n + 1074) (exact, normal):
     * the same single rounding, and the low bits are the subnormal. */
    const __m256d sub = _mm256_cmp_pd(n, _mm256_set1_pd(-1022.5), _CMP_LT_OQ);
    if (_mm256_movemask_pd(sub)) {
        const __m256d two52 = _mm256_set1_pd(0x1p52);
        __m256d z = _mm256_mul_pd(er, _mm256_castsi256_pd(_mm256_slli_epi64(
                                          _mm256_add_epi64(ti, _mm256_set1_epi64x(1074 + 1023)), 52)));
        __m256d tiny = _mm256_castsi256_pd(_mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(z, two52)),
                                                            _mm256_castpd_si256(two52)));
        s1 = _mm256_blendv_pd(s1, one, sub);
        s2 = _mm256_blendv_pd(s2, one, sub);
        return _mm256_blendv_pd(_mm256_mul_pd(_mm256_mul_pd(er, s1), s2), tiny, sub);
    }
    return _mm256_mul_pd(_mm256_mul_pd(er, s1), s2);
}

/* exp(a - b) with the subtraction's rounding compensated (exact two-sum;
 * lo zeroed where hi is outside the exp range or NaN). */
AX_INLINE __m256d exp_diff_f64x4(__m256d a, __m256d b)
{
    __m256d hi = _mm256_sub_pd(a, b);
    __m256d z = _mm256_sub_pd(hi, a);
    __m256d lo = _mm256_sub_pd(_mm256_sub_pd(a, _mm256_sub_pd(hi, z)), _mm256_add_pd(b, z));
    __m256d sane = _mm256_and_pd(_mm256_cmp_pd(hi, _mm256_set1_pd(ATTNX_EXP_LO_CLAMP), _CMP_GE_OQ),
                                 _mm256_cmp_pd(hi, _mm256_set1_pd(ATTNX_EXP_HI_CLAMP), _CMP_LE_OQ));
    return exp2sum_f64x4(hi, _mm256_and_pd(sane, lo));
}

/* ------------------------------------------------------------------ exp */

static void exp_f64_avx2(const double *x, size_t n, double *y)
{
    const __m256d zero = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256d a = _mm256_loadu_pd(x + i), b = _mm256_loadu_pd(x + i + 4);
        _mm256_storeu_pd(y + i, exp2sum_f64x4(a, zero));
        _mm256_storeu_pd(y + i + 4, exp2sum_f64x4(b, zero));
    }
    for (; i < n; i += 4) {
        __m256i k = tail_mask4(n - i >= 4 ? 4 : n - i);
        _mm256_maskstore_pd(y + i, k, exp2sum_f64x4(_mm256_maskload_pd(x + i, k), zero));
    }
}

/* ----------------------------------------------------------- dot scores */

/* Lane i = sum of the lanes of a_i. */
AX_INLINE __m256d transpose_sum4(__m256d a0, __m256d a1, __m256d a2, __m256d a3)
{
    __m256d t01 = _mm256_hadd_pd(a0, a1);   /* a0 01, a1 01, a0 23, a1 23 */
    __m256d t23 = _mm256_hadd_pd(a2, a3);
    return _mm256_add_pd(_mm256_permute2f128_pd(t01, t23, 0x20), _mm256_permute2f128_pd(t01, t23, 0x31));
}

/* Lanes of *lo / *hi = dot(q, k_i) for rows 0-3 / 4-7. */
AX_INLINE void dots8(const double *q, const double *const k[8], size_t d, __m256d *lo, __m256d *hi)
{
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    size_t j = 0;
    for (; j + 4 <= d; j += 4) {
        __m256d qv = _mm256_loadu_pd(q + j);
        a0 = _mm256_fmadd_pd(qv, _mm256_loadu_pd(k[0] + j), a0);
        a1 = _mm256_fmadd_pd(qv, _mm256_loadu_pd(k[1] + j), a1);
        a2 = _mm256_fmadd_pd(qv, _mm256_loadu_pd(k[2] + j), a2);
        a3 = _mm256_fmadd_pd(qv, _mm256_loadu_pd(k[3] + j), a3);
        a4 = _mm256_fmadd_pd(qv, _mm256_loadu_pd(k[4] + j), a4);
        a5 = _mm256_fmadd_pd(qv, _mm256_loadu_pd(k[5] + j), a5);
        a6 = _mm256_fmadd_pd(qv, _mm256_loadu_pd(k[6] + j), a6);
        a7 = _mm256_fmadd_pd(qv, _mm256_loadu_pd(k[7] + j), a7);
    }
    if (j < d) {
        __m256i m = tail_mask4(d - j);
        __m256d qv = _mm256_maskload_pd(q + j, m);
        a0 = _mm256_fmadd_pd(qv, _mm256_maskload_pd(k[0] + j, m), a0);
        a1 = _mm256_fmadd_pd(qv, _mm256_maskload_pd(k[1] + j, m), a1);
        a2 = _mm256_fmadd_pd(qv, _mm256_maskload_pd(k[2] + j, m), a2);
        a3 = _mm256_fmadd_pd(qv, _mm256_maskload_pd(k[3] + j, m), a3);
        a4 = _mm256_fmadd_pd(qv, _mm256_maskload_pd(k[4] + j, m), a4);
        a5 = _mm256_fmadd_pd(qv, _mm256_maskload_pd(k[5] + j, m), a5);
        a6 = _mm256_fmadd_pd(qv, _mm256_maskload_pd(k[6] + j, m), a6);
        a7 = _mm256_fmadd_pd(qv, _mm256_maskload_pd(k[7] + j, m), a7);
    }
    *lo = transpose_sum4(a0, a1, a2, a3);
    *hi = transpose_sum4(a4, a5, a6, a7);
}

static void dot_scores_f64_avx2(const double *q, const double *K, size_t T, size_t d,
                                double scale, double *s)
{
    const __m256d sc = _mm256_set1_pd(scale);
    const double *k[8];
    for (size_t t0 = 0; t0 < T; t0 += 8) {
        size_t nb = T - t0 < 8 ? T - t0 : 8;
        /* rows past T re-read the block's first row; their lanes are not stored */
        for (size_t i = 0; i < 8; i++) k[i] = K + (t0 + (i < nb ? i : 0)) * d;
        __m256d lo, hi;
        dots8(q, k, d, &lo, &hi);
        lo = _mm256_mul_pd(sc, lo);
        hi = _mm256_mul_pd(sc, hi);
        if (nb == 8) {
            _mm256_storeu_pd(s + t0, lo);
            _mm256_storeu_pd(s + t0 + 4, hi);
        } else {
            _mm256_maskstore_pd(s + t0, tail_mask4(nb >= 4 ? 4 : nb), lo);
            _mm256_maskstore_pd(s + t0 + 4, tail_mask4(nb > 4 ? nb - 4 : 0), hi);
        }
    }
}

/* -------------------------------------------------------------- softmax */

/* sum of the lanes of s + sum of the lanes of e, folding s with exact
 * two-sums (their errors go into e): the lanes' Kahan sums combined
 * without losing what their compensation kept. */
static double sum_lanes_compensated(__m256d s, __m256d e)
{
    __m128d a = _mm256_castpd256_pd128(s), b = _mm256_extractf128_pd(s, 1);
    __m128d t2 = _mm_add_pd(a, b), bb = _mm_sub_pd(t2, a);
    __m128d e2 = _mm_add_pd(_mm_add_pd(_mm_sub_pd(a, _mm_sub_pd(t2, bb)), _mm_sub_pd(b, bb)),
                            _mm_add_pd(_mm256_castpd256_pd128(e), _mm256_extractf128_pd(e, 1)));
    double x = _mm_cvtsd_f64(t2), y = _mm_cvtsd_f64(_mm_unpackhi_pd(t2, t2));
    double t = x + y, bt = t - x;
    double err = (x - (t - bt)) + (y - bt) + _mm_cvtsd_f64(e2) + _mm_cvtsd_f64(_mm_unpackhi_pd(e2, e2));
    return t + err;
}

/* One Kahan step per lane. */
AX_INLINE void kahan_f64x4(__m256d *sum, __m256d *comp, __m256d e)
{
    __m256d yk = _mm256_sub_pd(e, *comp);
    __m256d t = _mm256_add_pd(*sum, yk);
    *comp = _mm256_sub_pd(_mm256_sub_pd(t, *sum), yk);
    *sum = t;
}

/* e / S from the reciprocal r = 1/S: q = e r, then q + (e - q S) r with the
 * remainder exact (one FMA), Markstein's correction: the quotient a division
 * gives, at a fraction of vdivpd's cost. Below DBL_MIN e r rounds twice, so
 * the (rare) lanes with a nonzero subnormal quotient divide. */
AX_INLINE __m256d div_by_f64x4(__m256d e, __m256d S, __m256d r)
{
    __m256d q = _mm256_mul_pd(e, r);
    q = _mm256_fmadd_pd(_mm256_fnmadd_pd(q, S, e), r, q);
    __m256d tiny = _mm256_and_pd(_mm256_cmp_pd(q, _mm256_set1_pd(0x1p-1022), _CMP_LT_OQ),
                                 _mm256_cmp_pd(e, _mm256_setzero_pd(), _CMP_NEQ_OQ));
    if (_mm256_movemask_pd(tiny)) q = _mm256_blendv_pd(q, _mm256_div_pd(e, S), tiny);
    return q;
}

static int softmax_f64_avx2(const double *x, size_t n, double *y)
{
    const __m256d ninf = _mm256_set1_pd(NEG_INF);
    /* pass 1: max, and whether any NaN (max_pd alone would lose it) */
    __m256d m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf, nan = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256d a = _mm256_loadu_pd(x + i), b = _mm256_loadu_pd(x + i + 4);
        __m256d c = _mm256_loadu_pd(x + i + 8), e = _mm256_loadu_pd(x + i + 12);
        nan = _mm256_or_pd(nan, _mm256_or_pd(_mm256_cmp_pd(a, b, _CMP_UNORD_Q), _mm256_cmp_pd(c, e, _CMP_UNORD_Q)));
        m0 = _mm256_max_pd(m0, a);
        m1 = _mm256_max_pd(m1, b);
        m2 = _mm256_max_pd(m2, c);
        m3 = _mm256_max_pd(m3, e);
    }
    for (; i < n; i += 4) {
        __m256d k = _mm256_castsi256_pd(tail_mask4(n - i >= 4 ? 4 : n - i));
        __m256d a = _mm256_blendv_pd(ninf, _mm256_maskload_pd(x + i, _mm256_castpd_si256(k)), k);
        nan = _mm256_or_pd(nan, _mm256_cmp_pd(a, a, _CMP_UNORD_Q));
        m0 = _mm256_max_pd(m0, a);
    }
    m0 = _mm256_max_pd(_mm256_max_pd(m0, m1), _mm256_max_pd(m2, m3));
    double mx = hmax_f64x4(m0);
    int has_nan = _mm256_movemask_pd(nan) != 0;
    if (has_nan || mx == NEG_INF) {
        for (i = 0; i < n; i++) y[i] = NAN;
        return !has_nan;
    }
    /* pass 2: e = exp(x - max) compensated, y = e, Kahan sums per lane */
    const __m256d mv = _mm256_set1_pd(mx);
    __m256d s0 = _mm256_setzero_pd(), c0 = s0, s1 = s0, c1 = s0;
    for (i = 0; i + 8 <= n; i += 8) {
        __m256d e0 = exp_diff_f64x4(_mm256_loadu_pd(x + i), mv);
        __m256d e1 = exp_diff_f64x4(_mm256_loadu_pd(x + i + 4), mv);
        _mm256_storeu_pd(y + i, e0);
        _mm256_storeu_pd(y + i + 4, e1);
        kahan_f64x4(&s0, &c0, e0);
        kahan_f64x4(&s1, &c1, e1);
    }
    for (; i < n; i += 4) {
        __m256i k = tail_mask4(n - i >= 4 ? 4 : n - i);
        __m256d e = _mm256_and_pd(_mm256_castsi256_pd(k), exp_diff_f64x4(_mm256_maskload_pd(x + i, k), mv));
        _mm256_maskstore_pd(y + i, k, e);
        kahan_f64x4(&s0, &c0, e);
    }
    /* the two Kahan sets: s0 + s1 exactly as S + err, minus both compensations */
    __m256d S = _mm256_add_pd(s0, s1), bb = _mm256_sub_pd(S, s0);
    __m256d err = _mm256_add_pd(_mm256_sub_pd(s0, _mm256_sub_pd(S, bb)), _mm256_sub_pd(s1, bb));
    err = _mm256_sub_pd(err, _mm256_add_pd(c0, c1));
    const double sum = sum_lanes_compensated(S, err);
    const __m256d sv = _mm256_set1_pd(sum), rv = _mm256_set1_pd(1.0 / sum);
    /* pass 3: y / S as q = y * (1/S) plus one FMA correction with the exact
     * remainder (see div_by_f64x4): a division's accuracy, cheaper */
    for (i = 0; i + 8 <= n; i += 8) {
        _mm256_storeu_pd(y + i, div_by_f64x4(_mm256_loadu_pd(y + i), sv, rv));
        _mm256_storeu_pd(y + i + 4, div_by_f64x4(_mm256_loadu_pd(y + i + 4), sv, rv));
    }
    for (; i < n; i++) y[i] = y[i] / sum;
    return 0;
}

/* -------------------------------------------------------------- context */

/* ctx[0 .. nv vectors) (last masked by km) = sum_t w[t] V[t, :] for one column
 * slice; nv and nset are constants after inlining, so acc stays in registers.
 * nset == 2 sums even and odd rows apart: short slices would otherwise wait
 * on the FMA latency. */
AX_INLINE void context_cols(const double *w, const double *V, size_t T, size_t dv, int nv,
                            int nset, __m256i km, double *ctx)
{
    __m256d acc[8], acc2[8];
    for (int v = 0; v < nv; v++) acc[v] = acc2[v] = _mm256_setzero_pd();
    size_t t = 0;
    if (nset == 2) {
        for (; t + 2 <= T; t += 2) {
            double w0 = w[t], w1 = w[t + 1];
            const double *v0 = V + t * dv, *v1 = v0 + dv;
            if (w0 != 0.0) {
                __m256d b = _mm256_set1_pd(w0);
                for (int v = 0; v < nv - 1; v++) acc[v] = _mm256_fmadd_pd(b, _mm256_loadu_pd(v0 + 4 * v), acc[v]);
                acc[nv - 1] = _mm256_fmadd_pd(b, _mm256_maskload_pd(v0 + 4 * (nv - 1), km), acc[nv - 1]);
            }
            if (w1 != 0.0) {
                __m256d b = _mm256_set1_pd(w1);
                for (int v = 0; v < nv - 1; v++) acc2[v] = _mm256_fmadd_pd(b, _mm256_loadu_pd(v1 + 4 * v), acc2[v]);
                acc2[nv - 1] = _mm256_fmadd_pd(b, _mm256_maskload_pd(v1 + 4 * (nv - 1), km), acc2[nv - 1]);
            }
        }
    }
    for (; t < T; t++) {
        double w0 = w[t];
        if (w0 == 0.0) continue;
        const double *v0 = V + t * dv;
        __m256d b = _mm256_set1_pd(w0);
        for (int v = 0; v < nv - 1; v++) acc[v] = _mm256_fmadd_pd(b, _mm256_loadu_pd(v0 + 4 * v), acc[v]);
        acc[nv - 1] = _mm256_fmadd_pd(b, _mm256_maskload_pd(v0 + 4 * (nv - 1), km), acc[nv - 1]);
    }
    if (nset == 2)
        for (int v = 0; v < nv; v++) acc[v] = _mm256_add_pd(acc[v], acc2[v]);
    for (int v = 0; v < nv - 1; v++) _mm256_storeu_pd(ctx + 4 * v, acc[v]);
    _mm256_maskstore_pd(ctx + 4 * (nv - 1), km, acc[nv - 1]);
}

static void context_f64_avx2(const double *w, const double *V, size_t T, size_t dv, double *ctx)
{
    for (size_t c = 0; c < dv; c += 32) {
        size_t nc = dv - c < 32 ? dv - c : 32;
        int nv = (int)((nc + 3) / 4);
        __m256i km = tail_mask4(nc - 4 * (size_t)(nv - 1));
        const double *Vc = V + c;
        double *cc = ctx + c;
        switch (nv) {
        case 1: context_cols(w, Vc, T, dv, 1, 2, km, cc); break;
        case 2: context_cols(w, Vc, T, dv, 2, 2, km, cc); break;
        case 3: context_cols(w, Vc, T, dv, 3, 2, km, cc); break;
        case 4: context_cols(w, Vc, T, dv, 4, 1, km, cc); break;
        case 5: context_cols(w, Vc, T, dv, 5, 1, km, cc); break;
        case 6: context_cols(w, Vc, T, dv, 6, 1, km, cc); break;
        case 7: context_cols(w, Vc, T, dv, 7, 1, km, cc); break;
        default: context_cols(w, Vc, T, dv, 8, 1, km, cc); break;
        }
    }
}

/* ------------------------------------------------------- attend (online) */

/* Bit i set when mask[i] != 0, for i < 8 (8 bytes readable). */
AX_INLINE unsigned mask_bits8(const unsigned char *mask)
{
    __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)mask);
    return ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(b, _mm_setzero_si128())) & 0xFFu;
}

/* acc[0..n) *= c, or zero it when c == 0 (inf * 0 would be NaN). */
static void rescale_acc(double *acc, size_t n, double c)
{
    const __m256d cv = _mm256_set1_pd(c);
    size_t j = 0;
    for (; j + 4 <= n; j += 4)
        _mm256_storeu_pd(acc + j, c == 0.0 ? _mm256_setzero_pd() : _mm256_mul_pd(_mm256_loadu_pd(acc + j), cv));
    for (; j < n; j++) acc[j] = c == 0.0 ? 0.0 : acc[j] * c;
}

/* acc += sum_i p_i V_i for the 8 rows v[i]. */
AX_INLINE void axpy8(double *acc, const double *p, const double *const v[8], size_t dv)
{
    __m256d p0 = _mm256_set1_pd(p[0]), p1 = _mm256_set1_pd(p[1]), p2 = _mm256_set1_pd(p[2]);
    __m256d p3 = _mm256_set1_pd(p[3]), p4 = _mm256_set1_pd(p[4]), p5 = _mm256_set1_pd(p[5]);
    __m256d p6 = _mm256_set1_pd(p[6]), p7 = _mm256_set1_pd(p[7]);
    size_t j = 0;
    for (; j + 4 <= dv; j += 4) {
        /* two chains of four: halves the FMA latency on the accumulator */
        __m256d a = _mm256_loadu_pd(acc + j);
        __m256d b = _mm256_mul_pd(p4, _mm256_loadu_pd(v[4] + j));
        a = _mm256_fmadd_pd(p0, _mm256_loadu_pd(v[0] + j), a);
        b = _mm256_fmadd_pd(p5, _mm256_loadu_pd(v[5] + j), b);
        a = _mm256_fmadd_pd(p1, _mm256_loadu_pd(v[1] + j), a);
        b = _mm256_fmadd_pd(p6, _mm256_loadu_pd(v[6] + j), b);
        a = _mm256_fmadd_pd(p2, _mm256_loadu_pd(v[2] + j), a);
        b = _mm256_fmadd_pd(p7, _mm256_loadu_pd(v[7] + j), b);
        a = _mm256_fmadd_pd(p3, _mm256_loadu_pd(v[3] + j), a);
        _mm256_storeu_pd(acc + j, _mm256_add_pd(a, b));
    }
    for (; j < dv; j++) {
        double a = acc[j];
        for (int i = 0; i < 8; i++) a += p[i] * v[i][j];
        acc[j] = a;
    }
}

/* acc += p V for one row. */
AX_INLINE void axpy1(double *acc, double p, const double *v, size_t dv)
{
    const __m256d pv = _mm256_set1_pd(p);
    size_t j = 0;
    for (; j + 4 <= dv; j += 4)
        _mm256_storeu_pd(acc + j, _mm256_fmadd_pd(pv, _mm256_loadu_pd(v + j), _mm256_loadu_pd(acc + j)));
    for (; j < dv; j++) acc[j] += p * v[j];
}

/* --- online softmax for one query.
 *
 * Blocks of 8 keys: 8 dot products into two vectors of scores, one max and
 * at most one rescale per block, two vector exps, the 8 value rows folded
 * into acc in one pass over acc. The scores of block b + 1 are computed
 * before block b's exp and P.V: the two are independent, so the
 * out-of-order core overlaps the next block's key loads with this block's
 * exp latency.
 *
 * Aligned variant (al): NumPy's (malloc's) large buffers are only 16-byte
 * aligned, so every other 32-byte load would straddle two cache lines.
 * When d and dv are multiples of 4, every key row starts at the same
 * offset km (in doubles) within its 32-byte block, so rows are read from
 * that aligned base -- first and last chunk masked, the lanes outside the
 * row are not accessed -- against a copy of q shifted by km; the value rows
 * likewise accumulate into a copy of acc shifted by vm. */

/* Past this many bytes of K and V a call prefetches PF_KEYS keys ahead:
 * DRAM-sized sequences need more lines in flight than the hardware
 * prefetcher keeps, while for L2/L3-sized ones the prefetch instructions
 * only compete with the demand loads. */
#define PF_MIN_BYTES ((size_t)8 << 20)
#define PF_KEYS 16
#define PF_BATCH_BYTES ((size_t)64 << 10)

#define ZERO_ROW 256   /* dv up to this: p == 0 rows read zero_row instead */
#if defined(_MSC_VER)
__declspec(align(32)) static const double zero_row[ZERO_ROW + 4];
#else
static const double zero_row[ZERO_ROW + 4] __attribute__((aligned(32)));
#endif
#define AL_MAX 256     /* largest d, dv of the aligned variant (stack copies) */

static const int64_t head_tab[8] = {0, 0, 0, 0, -1, -1, -1, -1};

/* Lanes >= n (0 <= n <= 4) as a vmaskmovpd mask. */
AX_INLINE __m256i head_mask4(size_t n)
{
    return _mm256_loadu_si256((const __m256i *)(const void *)(head_tab + 4 - n));
}

AX_INLINE const double *base32(const double *p)
{
    return (const double *)(uintptr_t)((uintptr_t)p & ~(uintptr_t)31);
}

/* Attended keys of [t0, t0 + nb), nb <= 8. */
AX_INLINE unsigned block_live(const unsigned char *mask, size_t t0, size_t nb)
{
    if (nb == 8) return mask ? mask_bits8(mask + t0) : 0xFFu;
    unsigned lv = 0;
    for (size_t i = 0; i < nb; i++) lv |= (unsigned)(!mask || mask[t0 + i]) << i;
    return lv;
}

/* dots8 over aligned row bases against the shifted q (see above). */
AX_INLINE void dots8_al(const double *qs, const double *const k[8], size_t d, unsigned km,
                        __m256d *lo, __m256d *hi)
{
    __m256d a[8];
    const __m256i mf = head_mask4(km);
    __m256d qv = _mm256_load_pd(qs);
    for (int i = 0; i < 8; i++) a[i] = _mm256_mul_pd(qv, _mm256_maskload_pd(k[i], mf));
    size_t j = 4;
    for (; j < d; j += 4) {
        qv = _mm256_load_pd(qs + j);
        for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_pd(qv, _mm256_load_pd(k[i] + j), a[i]);
    }
    if (km) {
        const __m256i ml = tail_mask4(km);
        qv = _mm256_load_pd(qs + j);
        for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_pd(qv, _mm256_maskload_pd(k[i] + j, ml), a[i]);
    }
    *lo = transpose_sum4(a[0], a[1], a[2], a[3]);
    *hi = transpose_sum4(a[4], a[5], a[6], a[7]);
}

/* Scores of keys [t0, t0 + 8): -inf where not live. Rows that are not live
 * are not read: their lanes dot q with itself (any readable d doubles do)
 * and are then overwritten, never combined. */
AX_INLINE void block_scores(const double *q, const double *K, size_t t0, size_t d, __m256d sc,
                            unsigned live, int al, unsigned km, __m256d *s0, __m256d *s1)
{
    const double *k[8];
    for (size_t i = 0; i < 8; i++) {
        const double *r = K + (t0 + i) * d;
        k[i] = (live >> i) & 1 ? (al ? base32(r) : r) : q;
    }
    __m256d lo, hi;
    if (al)
        dots8_al(q, k, d, km, &lo, &hi);
    else
        dots8(q, k, d, &lo, &hi);
    const __m256d ninf = _mm256_set1_pd(NEG_INF);
    *s0 = _mm256_blendv_pd(ninf, _mm256_mul_pd(sc, lo), bits_mask4(live & 15u));
    *s1 = _mm256_blendv_pd(ninf, _mm256_mul_pd(sc, hi), bits_mask4(live >> 4));
}

/* One 4-column chunk of as += sum_i p_i V_i over 8 aligned row bases;
 * masked: V loads with k. */
AX_INLINE void axpy_chunk_al(double *as, const __m256d *pb, const double *const v[8], size_t j,
                             __m256i k, int masked)
{
#define LD(i) (masked ? _mm256_maskload_pd(v[i] + j, k) : _mm256_load_pd(v[i] + j))
    __m256d a = _mm256_load_pd(as + j);
    __m256d b = _mm256_mul_pd(pb[4], LD(4));
    a = _mm256_fmadd_pd(pb[0], LD(0), a);
    b = _mm256_fmadd_pd(pb[5], LD(5), b);
    a = _mm256_fmadd_pd(pb[1], LD(1), a);
    b = _mm256_fmadd_pd(pb[6], LD(6), b);
    a = _mm256_fmadd_pd(pb[2], LD(2), a);
    b = _mm256_fmadd_pd(pb[7], LD(7), b);
    a = _mm256_fmadd_pd(pb[3], LD(3), a);
#undef LD
    _mm256_store_pd(as + j, _mm256_add_pd(a, b));
}

AX_INLINE void axpy8_al(double *as, const double *p, const double *const v[8], size_t dv, unsigned vm)
{
    __m256d pb[8];
    for (int i = 0; i < 8; i++) pb[i] = _mm256_set1_pd(p[i]);
    axpy_chunk_al(as, pb, v, 0, head_mask4(vm), 1);
    for (size_t j = 4; j < dv; j += 4) axpy_chunk_al(as, pb, v, j, head_mask4(0), 0);
    if (vm) axpy_chunk_al(as, pb, v, dv, tail_mask4(vm), 1);
}

AX_INLINE void axpy1_al(double *as, double p, const double *v, size_t dv, unsigned vm)
{
    const __m256d pv = _mm256_set1_pd(p);
    _mm256_store_pd(as, _mm256_fmadd_pd(pv, _mm256_maskload_pd(v, head_mask4(vm)), _mm256_load_pd(as)));
    size_t j = 4;
    for (; j < dv; j += 4) _mm256_store_pd(as + j, _mm256_fmadd_pd(pv, _mm256_load_pd(v + j), _mm256_load_pd(as + j)));
    if (vm) _mm256_store_pd(as + j, _mm256_fmadd_pd(pv, _mm256_maskload_pd(v + j, tail_mask4(vm)), _mm256_load_pd(as + j)));
}

/* The fold over keys [0, T): q and acc are the caller's (al == 0) or the
 * shifted aligned copies (al == 1, nacc = dv + 4). */
AX_INLINE void online_run(const double *q, const double *K, const double *V, size_t T, size_t d,
                          size_t dv, double scale, const unsigned char *mask, double *m, double *l,
                          double *acc, size_t nacc, int al, unsigned km, unsigned vm, int pf)
{
    const __m256d sc = _mm256_set1_pd(scale), ninf = _mm256_set1_pd(NEG_INF);
    const __m256d zero = _mm256_setzero_pd();
    const double *v[8];
    double p[8];
    __m256d s0 = ninf, s1 = ninf, n0 = ninf, n1 = ninf;
    unsigned live = block_live(mask, 0, T < 8 ? T : 8), live_next = 0;
    if (live) block_scores(q, K, 0, d, sc, live, al, km, &s0, &s1);
    for (size_t t0 = 0; t0 < T; t0 += 8) {
        if (t0 + 8 < T) {
            size_t t1 = t0 + 8, nn = T - t1 < 8 ? T - t1 : 8;
            live_next = block_live(mask, t1, nn);
            n0 = n1 = ninf;
            if (live_next) block_scores(q, K, t1, d, sc, live_next, al, km, &n0, &n1);
        }
        if (pf && t0 + 8 + PF_KEYS <= T) {
            const char *pk = (const char *)(K + (t0 + PF_KEYS) * d);
            const char *pv = (const char *)(V + (t0 + PF_KEYS) * dv);
            for (size_t b = 0; b < 8 * d * sizeof(double); b += 64) _mm_prefetch(pk + b, _MM_HINT_T0);
            for (size_t b = 0; b < 8 * dv * sizeof(double); b += 64) _mm_prefetch(pv + b, _MM_HINT_T0);
        }
        if (live) {
            if (_mm256_movemask_pd(_mm256_cmp_pd(s0, s1, _CMP_UNORD_Q))) {
                *l = NAN;               /* poisons the result; finalisation sees it */
                break;
            }
            double bm = hmax_f64x4(_mm256_max_pd(s0, s1));
            if (bm != NEG_INF) {
                if (bm > *m) {
                    double c = *m == NEG_INF ? 0.0 : attnx_exp_diff_scalar(*m, bm);
                    *l *= c;
                    rescale_acc(acc, nacc, c);
                    *m = bm;
                }
                const __m256d mv = _mm256_set1_pd(*m);
                __m256d p0 = exp_diff_f64x4(s0, mv), p1 = exp_diff_f64x4(s1, mv);
                *l += hsum_f64x4(_mm256_add_pd(p0, p1));
                if (*l != *l) break;    /* +inf score: inf - inf */
                unsigned nz = (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(p0, zero, _CMP_NEQ_UQ)) |
                              (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(p1, zero, _CMP_NEQ_UQ)) << 4;
                _mm256_storeu_pd(p, p0);
                _mm256_storeu_pd(p + 4, p1);
                if (nz == 0xFF || (nz && dv <= ZERO_ROW)) {
                    /* p == 0 (masked, -inf, underflow): the value row is
                     * not read; a row of zeros stands in (0 * 0 adds nothing) */
                    for (size_t i = 0; i < 8; i++) {
                        const double *r = V + (t0 + i) * dv;
                        v[i] = (nz >> i) & 1 ? (al ? base32(r) : r) : zero_row;
                    }
                    if (al)
                        axpy8_al(acc, p, v, dv, vm);
                    else
                        axpy8(acc, p, v, dv);
                } else {
                    for (unsigned b = nz; b; b &= b - 1) {
                        unsigned i = lowest_bit(b);
                        const double *r = V + (t0 + i) * dv;
                        if (al)
                            axpy1_al(acc, p[i], base32(r), dv, vm);
                        else
                            axpy1(acc, p[i], r, dv);
                    }
                }
            }
        }
        s0 = n0;
        s1 = n1;
        live = live_next;
    }
}

/* ------------------------------------------------- attend_rows (flash) */

#define RQ 64          /* queries per sub-chunk: its ctx rows stay in L1/L2 */
#define KB 8           /* keys per block: two vectors of scores per query */
#define MR 6           /* queries per register tile: 12 accumulators + 2 loads + 1 broadcast */
#define KT_STACK 256   /* d up to this packs K on the stack */
#define FEW_QUERIES 4  /* below this, packing K costs more than it saves */

/* Bits k < kn set where mask[k] != 0 (kn bytes readable). */
AX_INLINE unsigned mask_bits_kb(const unsigned char *mask, size_t kn)
{
    if (kn == KB) return mask_bits8(mask);
    unsigned bits = 0;
    for (size_t k = 0; k < kn; k++) bits |= (unsigned)(mask[k] != 0) << k;
    return bits;
}

/* s[r][0..8) = dot(Q_r, key k) for r < mr, keys packed as Kt[j][k]. */
AX_INLINE void score_tile(const double *Q, size_t d, const double *Kt, int mr, double *s)
{
    __m256d a[MR][2];
    for (int r = 0; r < mr; r++) a[r][0] = a[r][1] = _mm256_setzero_pd();
    for (size_t j = 0; j < d; j++) {
        __m256d k0 = _mm256_loadu_pd(Kt + KB * j), k1 = _mm256_loadu_pd(Kt + KB * j + 4);
        for (int r = 0; r < mr; r++) {
            __m256d b = _mm256_broadcast_sd(Q + (size_t)r * d + j);
            a[r][0] = _mm256_fmadd_pd(b, k0, a[r][0]);
            a[r][1] = _mm256_fmadd_pd(b, k1, a[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        _mm256_storeu_pd(s + KB * r, a[r][0]);
        _mm256_storeu_pd(s + KB * r + 4, a[r][1]);
    }
}

/* One 8-column slice of C_r += sum_i P[r][kidx[i]] V[kidx[i]] for r < mr;
 * masked: k0, k1 cover the last columns of a row. */
AX_INLINE void pv_slice(const double *P, const unsigned char *kidx, int nk, const double *Vb,
                        size_t dv, int mr, double *C, size_t c, __m256i k0, __m256i k1, int masked,
                        int full)
{
    __m256d a[MR][2];
    for (int r = 0; r < mr; r++) {
        const double *cr = C + (size_t)r * dv + c;
        a[r][0] = masked ? _mm256_maskload_pd(cr, k0) : _mm256_loadu_pd(cr);
        a[r][1] = masked ? _mm256_maskload_pd(cr + 4, k1) : _mm256_loadu_pd(cr + 4);
    }
    for (int i = 0; i < nk; i++) {
        const int kk = full ? i : kidx[i];
        const double *vr = Vb + (size_t)kk * dv + c;
        __m256d v0 = masked ? _mm256_maskload_pd(vr, k0) : _mm256_loadu_pd(vr);
        __m256d v1 = masked ? _mm256_maskload_pd(vr + 4, k1) : _mm256_loadu_pd(vr + 4);
        for (int r = 0; r < mr; r++) {
            __m256d b = _mm256_broadcast_sd(P + KB * r + kk);
            a[r][0] = _mm256_fmadd_pd(b, v0, a[r][0]);
            a[r][1] = _mm256_fmadd_pd(b, v1, a[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        double *cr = C + (size_t)r * dv + c;
        if (masked) {
            _mm256_maskstore_pd(cr, k0, a[r][0]);
            _mm256_maskstore_pd(cr + 4, k1, a[r][1]);
        } else {
            _mm256_storeu_pd(cr, a[r][0]);
            _mm256_storeu_pd(cr + 4, a[r][1]);
        }
    }
}

/* C_r += sum_i P[r][kidx[i]] V[kidx[i]] for r < mr: ctx rows C (stride dv),
 * 8 columns at a time in registers. Every listed key has p != 0 in every
 * row; nk == KB means all keys of the block, in order. */
AX_INLINE void pv_tile(const double *P, const unsigned char *kidx, int nk, const double *Vb,
                       size_t dv, int mr, double *C)
{
    const __m256i ones = _mm256_set1_epi64x(-1);
    size_t c = 0;
    if (nk == KB) {
        for (; c + 8 <= dv; c += 8) pv_slice(P, kidx, KB, Vb, dv, mr, C, c, ones, ones, 0, 1);
    } else {
        for (; c + 8 <= dv; c += 8) pv_slice(P, kidx, nk, Vb, dv, mr, C, c, ones, ones, 0, 0);
    }
    if (c < dv) {
        size_t rem = dv - c;
        pv_slice(P, kidx, nk, Vb, dv, mr, C, c, tail_mask4(rem >= 4 ? 4 : rem),
                 tail_mask4(rem > 4 ? rem - 4 : 0), 1, 0);
    }
}

/* Kt[j][k] = Kb[k][j] for the keys k in `any` (zero columns for the
 * others, which stay unread), 4x4 blocks transposed in registers. Rows j
 * of Kt up to d rounded up to 4 are written. */
static void pack_kt(const double *Kb, size_t d, unsigned any, double *Kt)
{
    for (size_t j0 = 0; j0 < d; j0 += 4) {
        const __m256i m = tail_mask4(d - j0 >= 4 ? 4 : d - j0);
        for (size_t h = 0; h < KB; h += 4) {
            __m256d r[4];
            for (size_t i = 0; i < 4; i++)
                r[i] = (any >> (h + i)) & 1 ? _mm256_maskload_pd(Kb + (h + i) * d + j0, m) : _mm256_setzero_pd();
            __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
            __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
            double *o = Kt + KB * j0 + h;
            _mm256_storeu_pd(o + 0 * KB, _mm256_permute2f128_pd(t0, t2, 0x20));
            _mm256_storeu_pd(o + 1 * KB, _mm256_permute2f128_pd(t1, t3, 0x20));
            _mm256_storeu_pd(o + 2 * KB, _mm256_permute2f128_pd(t0, t2, 0x31));
            _mm256_storeu_pd(o + 3 * KB, _mm256_permute2f128_pd(t1, t3, 0x31));
        }
    }
}

#define TILE_SWITCH(mr, CALL) \
    switch (mr) {             \
    case 1: CALL(1); break;   \
    case 2: CALL(2); break;   \
    case 3: CALL(3); break;   \
    case 4: CALL(4); break;   \
    case 5: CALL(5); break;   \
    default: CALL(6); break;  \
    }

/* ctx = acc / l, zeros when nothing was attended, NaN when poisoned
 * (api.c's online_finish). */
static void finish_row(double m, double l, double *c, size_t dv)
{
    if (l != l) {
        for (size_t j = 0; j < dv; j++) c[j] = NAN;
    } else if (m == NEG_INF) {
        for (size_t j = 0; j < dv; j++) c[j] = 0.0;
    } else {
        const __m256d lv = _mm256_set1_pd(l);
        size_t j = 0;
        for (; j + 4 <= dv; j += 4) _mm256_storeu_pd(c + j, _mm256_div_pd(_mm256_loadu_pd(c + j), lv));
        for (; j < dv; j++) c[j] /= l;
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
    const __m256d sc = _mm256_set1_pd(scale), ninf = _mm256_set1_pd(NEG_INF);
    const __m256d zero = _mm256_setzero_pd();
    for (size_t r = 0; r < nr; r++) {
        m[r] = NEG_INF;
        l[r] = 0.0;
    }
    for (size_t j = 0; j < nr * dv; j++) ctx[j] = 0.0;
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
            if (lv && mask) lv &= mask_bits_kb(mask + (ptrdiff_t)r * mask_row_stride + (ptrdiff_t)t0, kn);
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
            unsigned colall = 0xFFu, colany = 0;
            for (int r = 0; r < mr; r++) {
                size_t row = g + (size_t)r;
                unsigned lv = live[row];
                __m256d s0 = _mm256_blendv_pd(ninf, _mm256_mul_pd(sc, _mm256_loadu_pd(S + KB * r)), bits_mask4(lv & 15u));
                __m256d s1 = _mm256_blendv_pd(ninf, _mm256_mul_pd(sc, _mm256_loadu_pd(S + KB * r + 4)), bits_mask4(lv >> 4));
                double bm = NEG_INF;
                if (lv) {
                    if (_mm256_movemask_pd(_mm256_cmp_pd(s0, s1, _CMP_UNORD_Q)))
                        l[row] = NAN;
                    else
                        bm = hmax_f64x4(_mm256_max_pd(s0, s1));
                }
                if (bm == NEG_INF) {
                    _mm256_storeu_pd(P + KB * r, zero);
                    _mm256_storeu_pd(P + KB * r + 4, zero);
                    colall = 0;
                    continue;
                }
                if (bm > m[row]) {
                    double c = m[row] == NEG_INF ? 0.0 : attnx_exp_diff_scalar(m[row], bm);
                    l[row] *= c;
                    rescale_acc(ctx + row * dv, dv, c);
                    m[row] = bm;
                }
                const __m256d mv = _mm256_set1_pd(m[row]);
                __m256d p0 = exp_diff_f64x4(s0, mv), p1 = exp_diff_f64x4(s1, mv);
                l[row] += hsum_f64x4(_mm256_add_pd(p0, p1));
                unsigned nz = (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(p0, zero, _CMP_NEQ_UQ)) |
                              (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(p1, zero, _CMP_NEQ_UQ)) << 4;
                if (l[row] != l[row]) nz = 0;   /* +inf score: poisoned, skip */
                if (!nz) p0 = p1 = zero;
                _mm256_storeu_pd(P + KB * r, p0);
                _mm256_storeu_pd(P + KB * r + 4, p1);
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
                    if (pr != 0.0) axpy1(ctx + (g + (size_t)r) * dv, pr, Vb + (size_t)k * dv, dv);
                }
            }
        }
    }
    for (size_t r = 0; r < nr; r++) finish_row(m[r], l[r], ctx + r * dv, dv);
}

#define KF_T double
#define KF_W 4
#define KF_SFX f64_avx2
#define KF_ALIGNED 1
#define KF_FINISH finish_row
#include "kernels_fold.h"

const attnx_kernels attnx_kernels_avx2 = {
    "avx2",
    exp_f64_avx2,
    dot_scores_f64_avx2,
    softmax_f64_avx2,
    context_f64_avx2,
    attend_online_f64_avx2,
    attend_rows_f64_avx2,
};

#endif /* ATTNX_HAVE_X86 */
