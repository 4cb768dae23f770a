/*
 * kernels_additive_avx2.c -- AVX2 + FMA additive-attention kernels (4
 * doubles a vector, 16 registers). Built with -mavx2 -mfma (MSVC:
 * /arch:AVX2). Same semantics as kernels_additive_scalar.c. Tails use
 * vmaskmovpd: lanes outside a buffer are never accessed.
 *
 *   tanh     tanh_f64x4: the algorithm of attnx_internal_additive.h with
 *            FMA (exact quotient residual in one FMA, exp polynomial as
 *            Horner in r^2 over pairs of coefficients, 2^n from the
 *            shifter's integer bits); both branches for every lane, one
 *            blend; one division (1/D). Max error 0.62 ulp
 *            (tests/test_additive.c). Reads x once, writes y once.
 *   scores   four Kp rows per iteration, 4 columns of h per vector: a and
 *            v loaded once for the four rows, x = a + Kp and its tanh in
 *            registers, one FMA into each row's accumulator; the four
 *            accumulators transposed-and-added into one vector of four
 *            scores. A leftover row is reduced in the same order, so a
 *            score does not depend on T or on the row's position. Reads Kp
 *            once (8*T*h bytes), no temporary array;
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

static const int64_t tail_lanes[8] = {-1, -1, -1, -1, 0, 0, 0, 0};

/* First n lanes (0 <= n <= 4) as a vmaskmovpd mask. */
AX_INLINE __m256i tail_mask4(size_t n)
{
    return _mm256_loadu_si256((const __m256i *)(const void *)(tail_lanes + 4 - n));
}

/* tanh on 4 lanes: see attnx_internal_additive.h. */
AX_INLINE __m256d tanh_f64x4(__m256d x)
{
    const __m256d signbit = _mm256_castsi256_pd(_mm256_set1_epi64x((long long)ATTNX_SIGN_BIT));
    const __m256d one = _mm256_set1_pd(1.0);
    const __m256d sign = _mm256_and_pd(x, signbit);
    /* min returns its second operand when either is NaN: NaN passes */
    __m256d ax = _mm256_min_pd(_mm256_set1_pd(ATTNX_TANH_CLAMP), _mm256_andnot_pd(signbit, x));

    /* |x| < 0.3: x + x^3 P(x^2) */
    __m256d s = _mm256_mul_pd(ax, ax);
    __m256d p = _mm256_fmadd_pd(_mm256_set1_pd(ATTNX_TANH_P7), s, _mm256_set1_pd(ATTNX_TANH_P6));
    p = _mm256_fmadd_pd(p, s, _mm256_set1_pd(ATTNX_TANH_P5));
    p = _mm256_fmadd_pd(p, s, _mm256_set1_pd(ATTNX_TANH_P4));
    p = _mm256_fmadd_pd(p, s, _mm256_set1_pd(ATTNX_TANH_P3));
    p = _mm256_fmadd_pd(p, s, _mm256_set1_pd(ATTNX_TANH_P2));
    p = _mm256_fmadd_pd(p, s, _mm256_set1_pd(ATTNX_TANH_P1));
    p = _mm256_fmadd_pd(p, s, _mm256_set1_pd(ATTNX_TANH_P0));
    const __m256d small = _mm256_fmadd_pd(_mm256_mul_pd(ax, s), p, ax);

    /* E = exp(2|x|) = 2^n (eh + el) */
    const __m256d shifter = _mm256_set1_pd(ATTNX_SHIFTER);
    __m256d y = _mm256_add_pd(ax, ax);
    __m256d t = _mm256_fmadd_pd(y, _mm256_set1_pd(ATTNX_LOG2E), shifter);
    __m256d n = _mm256_sub_pd(t, shifter);
    __m256d rh = _mm256_fnmadd_pd(n, _mm256_set1_pd(ATTNX_LN2_HI), y);   /* exact */
    __m256d rl = _mm256_mul_pd(n, _mm256_set1_pd(-ATTNX_LN2_LO));
    __m256d r = _mm256_add_pd(rh, rl);
    __m256d r2 = _mm256_mul_pd(r, r);
    /* Horner in r^2 over pairs: half the dependency chain of plain Horner */
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
    __m256d sh = _mm256_add_pd(one, rh);
    __m256d sl = _mm256_add_pd(_mm256_sub_pd(one, sh), rh);
    __m256d tl = _mm256_add_pd(sl, _mm256_fmadd_pd(r2, q, rl));
    __m256d eh = _mm256_add_pd(sh, tl);
    __m256d el = _mm256_sub_pd(tl, _mm256_sub_pd(eh, sh));
    /* 2^n: the low bits of t hold n (0 <= n <= 58) */
    __m256d sc = _mm256_castsi256_pd(
        _mm256_slli_epi64(_mm256_add_epi64(_mm256_castpd_si256(t), _mm256_set1_epi64x(1023)), 52));
    eh = _mm256_mul_pd(eh, sc);
    el = _mm256_mul_pd(el, sc);

    /* D = E + 1 = dh + dl; 1/D = qh (1 + res) */
    __m256d dh = _mm256_add_pd(eh, one);
    __m256d dl = _mm256_add_pd(_mm256_sub_pd(one, _mm256_sub_pd(dh, eh)), el);
    __m256d qh = _mm256_div_pd(one, dh);
    __m256d res = _mm256_fnmadd_pd(qh, dh, one);    /* exact */
    res = _mm256_fnmadd_pd(qh, dl, res);
    /* 1 - 2 qh (1 + res), with 1 - 2qh split exactly */
    __m256d q2 = _mm256_add_pd(qh, qh);
    __m256d s1 = _mm256_sub_pd(one, q2);
    __m256d e1 = _mm256_sub_pd(_mm256_sub_pd(one, s1), q2);
    __m256d large = _mm256_add_pd(s1, _mm256_fnmadd_pd(res, q2, e1));

    __m256d lt = _mm256_cmp_pd(ax, _mm256_set1_pd(ATTNX_TANH_SMALL), _CMP_LT_OQ);
    return _mm256_or_pd(_mm256_blendv_pd(large, small, lt), sign);
}

static void tanh_avx2(const double *x, size_t n, double *y)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256d a = _mm256_loadu_pd(x + i), b = _mm256_loadu_pd(x + i + 4);
        _mm256_storeu_pd(y + i, tanh_f64x4(a));
        _mm256_storeu_pd(y + i + 4, tanh_f64x4(b));
    }
    for (; i < n; i += 4) {
        __m256i k = tail_mask4(n - i >= 4 ? 4 : n - i);
        _mm256_maskstore_pd(y + i, k, tanh_f64x4(_mm256_maskload_pd(x + i, k)));
    }
}

/* ----------------------------------------------------------------- scores */

/* Four scores s_i = (c_i[0] + c_i[1]) + (c_i[2] + c_i[3]). */
AX_INLINE __m256d reduce4(__m256d c0, __m256d c1, __m256d c2, __m256d c3)
{
    __m256d t01 = _mm256_hadd_pd(c0, c1);
    __m256d t23 = _mm256_hadd_pd(c2, c3);
    return _mm256_add_pd(_mm256_permute2f128_pd(t01, t23, 0x20),
                         _mm256_permute2f128_pd(t01, t23, 0x31));
}

/* One score, the additions in the order of reduce4. */
AX_INLINE double reduce1(__m256d c)
{
    __m128d h = _mm_hadd_pd(_mm256_castpd256_pd128(c), _mm256_extractf128_pd(c, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

static void additive_scores_avx2(const double *a, const double *Kp, const double *v,
                                 size_t T, size_t h, double *s)
{
    const __m256d zero = _mm256_setzero_pd();
    const size_t hv = h & ~(size_t)3;
    const __m256i m = tail_mask4(h & 3);
    size_t t = 0;
    for (; t + 4 <= T; t += 4) {
        const double *k0 = Kp + t * h, *k1 = k0 + h, *k2 = k1 + h, *k3 = k2 + h;
        __m256d c0 = zero, c1 = zero, c2 = zero, c3 = zero;
        for (size_t j = 0; j < hv; j += 4) {
            __m256d av = _mm256_loadu_pd(a + j), vv = _mm256_loadu_pd(v + j);
            c0 = _mm256_fmadd_pd(vv, tanh_f64x4(_mm256_add_pd(av, _mm256_loadu_pd(k0 + j))), c0);
            c1 = _mm256_fmadd_pd(vv, tanh_f64x4(_mm256_add_pd(av, _mm256_loadu_pd(k1 + j))), c1);
            c2 = _mm256_fmadd_pd(vv, tanh_f64x4(_mm256_add_pd(av, _mm256_loadu_pd(k2 + j))), c2);
            c3 = _mm256_fmadd_pd(vv, tanh_f64x4(_mm256_add_pd(av, _mm256_loadu_pd(k3 + j))), c3);
        }
        if (h & 3) {
            /* lanes past h: x = 0 + 0, tanh(0) = 0, times v = 0 */
            __m256d av = _mm256_maskload_pd(a + hv, m), vv = _mm256_maskload_pd(v + hv, m);
            c0 = _mm256_fmadd_pd(vv, tanh_f64x4(_mm256_add_pd(av, _mm256_maskload_pd(k0 + hv, m))), c0);
            c1 = _mm256_fmadd_pd(vv, tanh_f64x4(_mm256_add_pd(av, _mm256_maskload_pd(k1 + hv, m))), c1);
            c2 = _mm256_fmadd_pd(vv, tanh_f64x4(_mm256_add_pd(av, _mm256_maskload_pd(k2 + hv, m))), c2);
            c3 = _mm256_fmadd_pd(vv, tanh_f64x4(_mm256_add_pd(av, _mm256_maskload_pd(k3 + hv, m))), c3);
        }
        _mm256_storeu_pd(s + t, reduce4(c0, c1, c2, c3));
    }
    for (; t < T; t++) {
        const double *k = Kp + t * h;
        __m256d c = zero;
        for (size_t j = 0; j < hv; j += 4)
            c = _mm256_fmadd_pd(_mm256_loadu_pd(v + j),
                                tanh_f64x4(_mm256_add_pd(_mm256_loadu_pd(a + j), _mm256_loadu_pd(k + j))), c);
        if (h & 3)
            c = _mm256_fmadd_pd(_mm256_maskload_pd(v + hv, m),
                                tanh_f64x4(_mm256_add_pd(_mm256_maskload_pd(a + hv, m),
                                                         _mm256_maskload_pd(k + hv, m))), c);
        s[t] = reduce1(c);
    }
}

const attnx_additive_kernels attnx_additive_kernels_avx2 = {
    "avx2",
    tanh_avx2,
    additive_scores_avx2,
};

#endif /* ATTNX_HAVE_X86 */
