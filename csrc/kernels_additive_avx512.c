/*
 * kernels_additive_avx512.c -- AVX-512F additive-attention kernels (8
 * doubles a vector). Built with -mavx512f -mavx2 -mfma (MSVC:
 * /arch:AVX512); uses AVX-512F alone (plus the AVX2/FMA every AVX-512F CPU
 * has): bit operations go through the integer forms, since the _pd ones
 * are AVX-512DQ. Same semantics as kernels_additive_scalar.c. Tails use
 * masked loads and stores: lanes outside a buffer are never accessed.
 *
 *   tanh     tanh_f64x8: the algorithm of attnx_internal_additive.h with
 *            FMA (exact quotient residual in one FMA, exp polynomial as
 *            Horner in r^2 over pairs of coefficients, 2^n from the
 *            shifter's integer bits); both branches for every lane, one
 *            blend; one division (1/D). Max error 0.62 ulp
 *            (tests/test_additive.c). Reads x once, writes y once.
 *   scores   four Kp rows per iteration, 8 columns of h per vector: a and
 *            v loaded once for the four rows, x = a + Kp and its tanh in
 *            registers, one FMA into each row's accumulator; the four
 *            accumulators reduced together (halves, then an AVX2
 *            transpose-and-add) into one vector of four scores. A leftover
 *            row is reduced in the same order, so a score does not depend
 *            on T or on the row's position. Reads Kp once (8*T*h bytes),
 *            no temporary array;
 *            error <= (h + 2) eps sum_j |v_j tanh_j| (a + Kp rounded,
 *            the tanh's 0.62 ulp, the sum's roundings; at most 1.3 eps
 *            sum|v tanh| measured on the test sizes).
 */
#include "attnx_internal_additive.h"

#if defined(ATTNX_HAVE_X86)

#include <immintrin.h>

#if defined(_MSC_VER)
#define AX_INLINE static __forceinline
#else
#define AX_INLINE static inline __attribute__((always_inline))
#endif

/* First n lanes (1 <= n <= 8). */
AX_INLINE __mmask8 tail_mask8(size_t n) { return (__mmask8)((1u << n) - 1u); }

/* tanh on 8 lanes: see attnx_internal_additive.h. */
AX_INLINE __m512d tanh_f64x8(__m512d x)
{
    const __m512i signbit = _mm512_set1_epi64((long long)ATTNX_SIGN_BIT);
    const __m512d one = _mm512_set1_pd(1.0);
    const __m512i xi = _mm512_castpd_si512(x);
    const __m512i sign = _mm512_and_epi64(xi, signbit);
    /* min returns its second operand when either is NaN: NaN passes */
    __m512d ax = _mm512_min_pd(_mm512_set1_pd(ATTNX_TANH_CLAMP),
                               _mm512_castsi512_pd(_mm512_andnot_epi64(signbit, xi)));

    /* |x| < 0.3: x + x^3 P(x^2) */
    __m512d s = _mm512_mul_pd(ax, ax);
    __m512d p = _mm512_fmadd_pd(_mm512_set1_pd(ATTNX_TANH_P7), s, _mm512_set1_pd(ATTNX_TANH_P6));
    p = _mm512_fmadd_pd(p, s, _mm512_set1_pd(ATTNX_TANH_P5));
    p = _mm512_fmadd_pd(p, s, _mm512_set1_pd(ATTNX_TANH_P4));
    p = _mm512_fmadd_pd(p, s, _mm512_set1_pd(ATTNX_TANH_P3));
    p = _mm512_fmadd_pd(p, s, _mm512_set1_pd(ATTNX_TANH_P2));
    p = _mm512_fmadd_pd(p, s, _mm512_set1_pd(ATTNX_TANH_P1));
    p = _mm512_fmadd_pd(p, s, _mm512_set1_pd(ATTNX_TANH_P0));
    const __m512d small = _mm512_fmadd_pd(_mm512_mul_pd(ax, s), p, ax);

    /* E = exp(2|x|) = 2^n (eh + el) */
    const __m512d shifter = _mm512_set1_pd(ATTNX_SHIFTER);
    __m512d y = _mm512_add_pd(ax, ax);
    __m512d t = _mm512_fmadd_pd(y, _mm512_set1_pd(ATTNX_LOG2E), shifter);
    __m512d n = _mm512_sub_pd(t, shifter);
    __m512d rh = _mm512_fnmadd_pd(n, _mm512_set1_pd(ATTNX_LN2_HI), y);   /* exact */
    __m512d rl = _mm512_mul_pd(n, _mm512_set1_pd(-ATTNX_LN2_LO));
    __m512d r = _mm512_add_pd(rh, rl);
    __m512d r2 = _mm512_mul_pd(r, r);
    /* Horner in r^2 over pairs: half the dependency chain of plain Horner */
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
    __m512d sh = _mm512_add_pd(one, rh);
    __m512d sl = _mm512_add_pd(_mm512_sub_pd(one, sh), rh);
    __m512d tl = _mm512_add_pd(sl, _mm512_fmadd_pd(r2, q, rl));
    __m512d eh = _mm512_add_pd(sh, tl);
    __m512d el = _mm512_sub_pd(tl, _mm512_sub_pd(eh, sh));
    /* 2^n: the low bits of t hold n (0 <= n <= 58) */
    __m512d sc = _mm512_castsi512_pd(
        _mm512_slli_epi64(_mm512_add_epi64(_mm512_castpd_si512(t), _mm512_set1_epi64(1023)), 52));
    eh = _mm512_mul_pd(eh, sc);
    el = _mm512_mul_pd(el, sc);

    /* D = E + 1 = dh + dl; 1/D = qh (1 + res) */
    __m512d dh = _mm512_add_pd(eh, one);
    __m512d dl = _mm512_add_pd(_mm512_sub_pd(one, _mm512_sub_pd(dh, eh)), el);
    __m512d qh = _mm512_div_pd(one, dh);
    __m512d res = _mm512_fnmadd_pd(qh, dh, one);    /* exact */
    res = _mm512_fnmadd_pd(qh, dl, res);
    /* 1 - 2 qh (1 + res), with 1 - 2qh split exactly */
    __m512d q2 = _mm512_add_pd(qh, qh);
    __m512d s1 = _mm512_sub_pd(one, q2);
    __m512d e1 = _mm512_sub_pd(_mm512_sub_pd(one, s1), q2);
    __m512d large = _mm512_add_pd(s1, _mm512_fnmadd_pd(res, q2, e1));

    __mmask8 lt = _mm512_cmp_pd_mask(ax, _mm512_set1_pd(ATTNX_TANH_SMALL), _CMP_LT_OQ);
    __m512d th = _mm512_mask_blend_pd(lt, large, small);
    return _mm512_castsi512_pd(_mm512_or_epi64(_mm512_castpd_si512(th), sign));
}

static void tanh_avx512(const double *x, size_t n, double *y)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512d a = _mm512_loadu_pd(x + i), b = _mm512_loadu_pd(x + i + 8);
        _mm512_storeu_pd(y + i, tanh_f64x8(a));
        _mm512_storeu_pd(y + i + 8, tanh_f64x8(b));
    }
    for (; i < n; i += 8) {
        __mmask8 k = n - i >= 8 ? (__mmask8)0xFF : tail_mask8(n - i);
        _mm512_mask_storeu_pd(y + i, k, tanh_f64x8(_mm512_maskz_loadu_pd(k, x + i)));
    }
}

/* ----------------------------------------------------------------- scores */

/* Lanes (l0+l4, l1+l5, l2+l6, l3+l7) of a row's accumulator. */
AX_INLINE __m256d fold_halves(__m512d c)
{
    return _mm256_add_pd(_mm512_castpd512_pd256(c), _mm512_extractf64x4_pd(c, 1));
}

/* Four scores s_i = (b_i[0] + b_i[1]) + (b_i[2] + b_i[3]). */
AX_INLINE __m256d reduce4(__m512d c0, __m512d c1, __m512d c2, __m512d c3)
{
    __m256d t01 = _mm256_hadd_pd(fold_halves(c0), fold_halves(c1));
    __m256d t23 = _mm256_hadd_pd(fold_halves(c2), fold_halves(c3));
    return _mm256_add_pd(_mm256_permute2f128_pd(t01, t23, 0x20),
                         _mm256_permute2f128_pd(t01, t23, 0x31));
}

/* One score, the additions in the order of reduce4. */
AX_INLINE double reduce1(__m512d c)
{
    __m256d b = fold_halves(c);
    __m128d h = _mm_hadd_pd(_mm256_castpd256_pd128(b), _mm256_extractf128_pd(b, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

static void additive_scores_avx512(const double *a, const double *Kp, const double *v,
                                   size_t T, size_t h, double *s)
{
    const __m512d zero = _mm512_setzero_pd();
    const size_t hv = h & ~(size_t)7;
    const __mmask8 m = (h & 7) ? tail_mask8(h & 7) : (__mmask8)0;
    size_t t = 0;
    for (; t + 4 <= T; t += 4) {
        const double *k0 = Kp + t * h, *k1 = k0 + h, *k2 = k1 + h, *k3 = k2 + h;
        __m512d c0 = zero, c1 = zero, c2 = zero, c3 = zero;
        for (size_t j = 0; j < hv; j += 8) {
            __m512d av = _mm512_loadu_pd(a + j), vv = _mm512_loadu_pd(v + j);
            c0 = _mm512_fmadd_pd(vv, tanh_f64x8(_mm512_add_pd(av, _mm512_loadu_pd(k0 + j))), c0);
            c1 = _mm512_fmadd_pd(vv, tanh_f64x8(_mm512_add_pd(av, _mm512_loadu_pd(k1 + j))), c1);
            c2 = _mm512_fmadd_pd(vv, tanh_f64x8(_mm512_add_pd(av, _mm512_loadu_pd(k2 + j))), c2);
            c3 = _mm512_fmadd_pd(vv, tanh_f64x8(_mm512_add_pd(av, _mm512_loadu_pd(k3 + j))), c3);
        }
        if (m) {
            /* lanes past h: x = 0 + 0, tanh(0) = 0, times v = 0 */
            __m512d av = _mm512_maskz_loadu_pd(m, a + hv), vv = _mm512_maskz_loadu_pd(m, v + hv);
            c0 = _mm512_fmadd_pd(vv, tanh_f64x8(_mm512_add_pd(av, _mm512_maskz_loadu_pd(m, k0 + hv))), c0);
            c1 = _mm512_fmadd_pd(vv, tanh_f64x8(_mm512_add_pd(av, _mm512_maskz_loadu_pd(m, k1 + hv))), c1);
            c2 = _mm512_fmadd_pd(vv, tanh_f64x8(_mm512_add_pd(av, _mm512_maskz_loadu_pd(m, k2 + hv))), c2);
            c3 = _mm512_fmadd_pd(vv, tanh_f64x8(_mm512_add_pd(av, _mm512_maskz_loadu_pd(m, k3 + hv))), c3);
        }
        _mm256_storeu_pd(s + t, reduce4(c0, c1, c2, c3));
    }
    for (; t < T; t++) {
        const double *k = Kp + t * h;
        __m512d c = zero;
        for (size_t j = 0; j < hv; j += 8)
            c = _mm512_fmadd_pd(_mm512_loadu_pd(v + j),
                                tanh_f64x8(_mm512_add_pd(_mm512_loadu_pd(a + j), _mm512_loadu_pd(k + j))), c);
        if (m)
            c = _mm512_fmadd_pd(_mm512_maskz_loadu_pd(m, v + hv),
                                tanh_f64x8(_mm512_add_pd(_mm512_maskz_loadu_pd(m, a + hv),
                                                         _mm512_maskz_loadu_pd(m, k + hv))), c);
        s[t] = reduce1(c);
    }
}

const attnx_additive_kernels attnx_additive_kernels_avx512 = {
    "avx512",
    tanh_avx512,
    additive_scores_avx512,
};

#endif /* ATTNX_HAVE_X86 */
