/*
 * kernels_avx512.c -- AVX-512F kernels (8 doubles a vector). Built with
 * -mavx512f -mavx2 -mfma (MSVC: /arch:AVX512); uses AVX-512F alone (plus the
 * SSE2/AVX2 that any AVX-512F CPU has), which is all dispatch.c checks for.
 * Same semantics as kernels_scalar.c; only the order of additions differs.
 *
 *   exp          exp_f64x8: the algorithm of attnx_internal.h with FMA (Horner
 *                in r^2 over pairs of coefficients to shorten the dependency
 *                chain), 2^n built from the shifter's integer bits; within
 *                1 ulp over [-745, 709.78], NaN/inf/subnormal as the scalar
 *   dot_scores   8 key rows at a time, the reduction across d vectorised and
 *                the 8 partial vectors transposed-and-added into one vector of
 *                8 scores; reads K once (8*T*d bytes)
 *   softmax      three passes: max (NaN-aware), exp of the exact two-sum
 *                x - max with a per-lane Kahan sum (lanes then combined with a
 *                compensated scalar sum), one division per element; within
 *                4 ulp; reads x twice, writes y, then reads/writes y once
 *   context      ctx in registers, 64 columns at a time; zero weights skip
 *                their row; reads w once per 64 columns and V once
 *   attend       online softmax over blocks of 8 keys: 8 dot products into
 *                one vector of scores, one max, one vector exp, at most one
 *                rescale per block; K and V rows read once each (8*T*(d+dv)
 *                bytes), prefetched ahead; allocates nothing
 *   attend_rows  flash attention for a chunk of queries: key blocks of 16
 *                packed transposed (d x 16, stack), register-blocked 8x16
 *                score tiles and 8x16 P.V tiles accumulating in ctx; per-row
 *                (m, l) on the stack; O(d * 16) extra memory (heap only when
 *                d > 128); reads K and V once per 64 queries
 */
#include "attnx_internal.h"

#if defined(ATTNX_HAVE_X86)

#include <immintrin.h>
#include <stdlib.h>

#if defined(_MSC_VER)
#define AX_INLINE static __forceinline
#else
#define AX_INLINE static inline __attribute__((always_inline))
#endif

#define NEG_INF (-HUGE_VAL)

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
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(ATTNX_LN2_HI), x);
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(ATTNX_LN2_LO), r);
    r = _mm512_add_pd(r, lo);
    /* q = sum_k C_{k+2} r^k as Horner in r^2 over (C_2k + C_2k+1 r): six
     * chained FMAs instead of twelve; the terms are small enough that the
     * regrouping changes nothing at the 1-ulp level. */
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
    __m512d p = _mm512_fmadd_pd(r2, q, r);
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
    return _mm512_mul_pd(_mm512_mul_pd(_mm512_add_pd(_mm512_set1_pd(1.0), p), s1), s2);
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

/* Neumaier sum of v[0..n): the lanes' Kahan sums and their compensations. */
static double compensated_sum(const double *v, size_t n)
{
    double s = 0.0, c = 0.0;
    for (size_t i = 0; i < n; i++) {
        double t = s + v[i];
        if ((s >= 0 ? s : -s) >= (v[i] >= 0 ? v[i] : -v[i]))
            c += (s - t) + v[i];
        else
            c += (v[i] - t) + s;
        s = t;
    }
    return s + c;
}

/* One Kahan step per lane. */
AX_INLINE void kahan_f64x8(__m512d *sum, __m512d *comp, __m512d e)
{
    __m512d yk = _mm512_sub_pd(e, *comp);
    __m512d t = _mm512_add_pd(*sum, yk);
    *comp = _mm512_sub_pd(_mm512_sub_pd(t, *sum), yk);
    *sum = t;
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
    double parts[32];
    _mm512_storeu_pd(parts, s0);
    _mm512_storeu_pd(parts + 8, s1);
    _mm512_storeu_pd(parts + 16, _mm512_sub_pd(_mm512_setzero_pd(), c0));
    _mm512_storeu_pd(parts + 24, _mm512_sub_pd(_mm512_setzero_pd(), c1));
    const __m512d sv = _mm512_set1_pd(compensated_sum(parts, 32));
    /* pass 3: a true division (a reciprocal multiply would add an ulp) */
    for (i = 0; i + 16 <= n; i += 16) {
        _mm512_storeu_pd(y + i, _mm512_div_pd(_mm512_loadu_pd(y + i), sv));
        _mm512_storeu_pd(y + i + 8, _mm512_div_pd(_mm512_loadu_pd(y + i + 8), sv));
    }
    for (; i < n; i += 8) {
        __mmask8 k = n - i >= 8 ? (__mmask8)0xFF : tail_mask8(n - i);
        _mm512_mask_storeu_pd(y + i, k, _mm512_div_pd(_mm512_maskz_loadu_pd(k, y + i), sv));
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

/* Bit i set when mask[i] != 0, for i < 8 (8 bytes readable). */
AX_INLINE unsigned mask_bits8(const unsigned char *mask)
{
    __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)mask);
    return ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(b, _mm_setzero_si128())) & 0xFFu;
}

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

/* acc += sum_i p_i V_i for the 8 rows v[i]. */
AX_INLINE void axpy8(double *acc, const double *p, const double *const v[8], size_t dv)
{
    __m512d p0 = _mm512_set1_pd(p[0]), p1 = _mm512_set1_pd(p[1]), p2 = _mm512_set1_pd(p[2]);
    __m512d p3 = _mm512_set1_pd(p[3]), p4 = _mm512_set1_pd(p[4]), p5 = _mm512_set1_pd(p[5]);
    __m512d p6 = _mm512_set1_pd(p[6]), p7 = _mm512_set1_pd(p[7]);
    size_t j = 0;
    for (; j < dv; j += 8) {
        __mmask8 k = dv - j >= 8 ? (__mmask8)0xFF : tail_mask8(dv - j);
        /* two chains of four: halves the FMA latency on the accumulator */
        __m512d a = _mm512_maskz_loadu_pd(k, acc + j);
        __m512d b = _mm512_mul_pd(p4, _mm512_maskz_loadu_pd(k, v[4] + j));
        a = _mm512_fmadd_pd(p0, _mm512_maskz_loadu_pd(k, v[0] + j), a);
        b = _mm512_fmadd_pd(p5, _mm512_maskz_loadu_pd(k, v[5] + j), b);
        a = _mm512_fmadd_pd(p1, _mm512_maskz_loadu_pd(k, v[1] + j), a);
        b = _mm512_fmadd_pd(p6, _mm512_maskz_loadu_pd(k, v[6] + j), b);
        a = _mm512_fmadd_pd(p2, _mm512_maskz_loadu_pd(k, v[2] + j), a);
        b = _mm512_fmadd_pd(p7, _mm512_maskz_loadu_pd(k, v[7] + j), b);
        a = _mm512_fmadd_pd(p3, _mm512_maskz_loadu_pd(k, v[3] + j), a);
        _mm512_mask_storeu_pd(acc + j, k, _mm512_add_pd(a, b));
    }
}

/* acc += p V for one row. */
AX_INLINE void axpy1(double *acc, double p, const double *v, size_t dv)
{
    const __m512d pv = _mm512_set1_pd(p);
    for (size_t j = 0; j < dv; j += 8) {
        __mmask8 k = dv - j >= 8 ? (__mmask8)0xFF : tail_mask8(dv - j);
        _mm512_mask_storeu_pd(acc + j, k,
                              _mm512_fmadd_pd(pv, _mm512_maskz_loadu_pd(k, v + j),
                                              _mm512_maskz_loadu_pd(k, acc + j)));
    }
}

/* Prefetch distance, in keys, for the K and V streams (long sequences are
 * DRAM-bound; the hardware prefetcher alone leaves bandwidth unused). */
#define PF_KEYS 16

static void attend_online_f64_avx512(const double *q, const double *K, const double *V,
                                     size_t T, size_t d, size_t dv, double scale,
                                     const unsigned char *mask, attnx_online *st,
                                     double *acc)
{
    double m = st->m, l = st->l;
    if (l != l) return;                  /* poisoned: the result is NaN anyway */
    const __m512d sc = _mm512_set1_pd(scale), ninf = _mm512_set1_pd(NEG_INF);
    const double *k[8], *v[8];
    double p[8];
    const size_t rowk = d * sizeof(double), rowv = dv * sizeof(double);
    for (size_t t0 = 0; t0 < T; t0 += 8) {
        size_t nb = T - t0 < 8 ? T - t0 : 8;
        unsigned live;
        if (nb == 8) {
            live = mask ? mask_bits8(mask + t0) : 0xFFu;
            if (t0 + 8 + PF_KEYS <= T) {
                /* the block PF_KEYS keys ahead, one line at a time */
                const char *pk = (const char *)(K + (t0 + PF_KEYS) * d);
                const char *pv = (const char *)(V + (t0 + PF_KEYS) * dv);
                for (size_t b = 0; b < 8 * rowk; b += 64) _mm_prefetch(pk + b, _MM_HINT_T0);
                for (size_t b = 0; b < 8 * rowv; b += 64) _mm_prefetch(pv + b, _MM_HINT_T0);
            }
        } else {
            live = 0;
            for (size_t i = 0; i < nb; i++) live |= (unsigned)(!mask || mask[t0 + i]) << i;
        }
        if (!live) continue;
        /* unattended lanes read q itself (any readable d doubles will do);
         * their scores are replaced by -inf below, never combined */
        for (size_t i = 0; i < 8; i++) k[i] = (live >> i) & 1 ? K + (t0 + i) * d : q;
        __m512d s = _mm512_mul_pd(sc, dots8(q, k, d));
        s = _mm512_mask_blend_pd((__mmask8)live, ninf, s);
        if (_mm512_cmp_pd_mask(s, s, _CMP_UNORD_Q)) {
            l = NAN;                    /* poisons the result; finalisation sees it */
            break;
        }
        double bm = hmax_f64x8(s);
        if (bm == NEG_INF) continue;
        if (bm > m) {
            double c = m == NEG_INF ? 0.0 : attnx_exp_diff_scalar(m, bm);
            l *= c;
            rescale_acc(acc, dv, c);
            m = bm;
        }
        __m512d pv = exp_diff_f64x8(s, _mm512_set1_pd(m));
        l += hsum_f64x8(pv);
        if (l != l) break;              /* +inf score: inf - inf */
        __mmask8 nz = _mm512_cmp_pd_mask(pv, _mm512_setzero_pd(), _CMP_NEQ_UQ);
        _mm512_storeu_pd(p, pv);
        if (nz == 0xFF) {
            for (size_t i = 0; i < 8; i++) v[i] = V + (t0 + i) * dv;
            axpy8(acc, p, v, dv);
        } else {
            /* p == 0 (masked, -inf, or underflow): the value row is not read */
            for (unsigned b = nz; b; b &= b - 1) {
                unsigned i = (unsigned)__builtin_ctz(b);
                axpy1(acc, p[i], V + (t0 + i) * dv, dv);
            }
        }
    }
    st->m = m;
    st->l = l;
}
