/*
 * kernels_f32_avx2.c -- AVX2 + FMA float32 kernels (8 floats a vector, 16
 * registers): the designs of kernels_avx2.c with twice the lanes. Built
 * with -mavx2 -mfma (MSVC: /arch:AVX2). Accumulation and measured errors:
 * kernels_f32_scalar.c. Tails use vmaskmovps loads and stores (masked-off
 * lanes are never touched).
 *
 *   exp          expf2sum_x8: the algorithm of attnx_internal_f32.h with
 *                FMA (Estrin in r^2), 2^n from the shifter's bits; results
 *                below 2^-126 rounded by an integer add instead of an
 *                underflowing multiply (a microcode assist on Zen); within
 *                0.64 ulp measured; reads x, writes y once (8*n bytes)
 *   dot_scores   8 key rows at a time, q loaded once per 8 columns for all
 *                8, the partial vectors transposed-and-added into one vector
 *                of scores; reads K once (4*T*d bytes)
 *   softmax      three passes: max (NaN-aware), exp of the exact two-sum
 *                x - max with the sum in float64 lanes, then
 *                y = e * r_hi + e * r_lo (r = 1/sum as two floats, one
 *                FMA); reads x twice, y once, writes y twice (20*n bytes)
 *   log_softmax  max, the float64 sum of exps, then (x - max) - log(sum)
 *                in float64 lanes; reads x three times, writes y (16*n)
 *   context      ctx in registers, 64 columns at a time (narrow slices sum
 *                even and odd rows apart); zero weights skip their row
 *                unread; reads w once per 64 columns, V once
 *   attend       online softmax over blocks of 8 keys: 8 dot products into
 *                one vector of scores, one max, one vector exp, at most one
 *                rescale per block, the next block's scores computed before
 *                this block's exp; the running sum in float64; prefetched
 *                ahead past 8 MB; K and V rows read once (4*T*(d+dv)
 *                bytes), masked and p == 0 rows not at all; no allocation
 *   attend_rows  flash attention for a chunk of queries (64 at a time): key
 *                blocks of 16 packed transposed (d x 16, 8x8 register
 *                transposes), register-blocked 6x16 score tiles and 6x16
 *                P.V tiles accumulating in the ctx rows, per-row (m, l) on
 *                the stack; O(16 d) extra memory (on the heap only when
 *                d > 256); K and V read once per 64 queries; fewer than 4
 *                queries go through attend one by one
 */
#include "attnx_internal_f32.h"

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

static const int32_t tail_tab[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* First n lanes (0 <= n <= 8) as a vmaskmovps mask. */
AX_INLINE __m256i tail8(size_t n)
{
    return _mm256_loadu_si256((const __m256i *)(const void *)(tail_tab + 8 - n));
}

/* Lanes i with bit i of b set. */
AX_INLINE __m256 bits_mask8(unsigned b)
{
    const __m256i sel = _mm256_set_epi32(128, 64, 32, 16, 8, 4, 2, 1);
    __m256i v = _mm256_and_si256(_mm256_set1_epi32((int)b), sel);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(v, sel));
}

AX_INLINE double hsum_pd4(__m256d v)
{
    __m128d b = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(b, _mm_unpackhi_pd(b, b)));
}

/* The 8 lanes widened to double and added (4 lanes). */
AX_INLINE __m256d widen_sum(__m256 v)
{
    return _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

/* Max of 8 lanes; no lane may be NaN. */
AX_INLINE float hmax8(__m256 v)
{
    __m128 b = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_max_ps(b, _mm_movehl_ps(b, b));
    b = _mm_max_ss(b, _mm_shuffle_ps(b, b, 1));
    return _mm_cvtss_f32(b);
}

/* exp(hi + lo) on 8 lanes: see attnx_internal_f32.h. lo must be finite. */
AX_INLINE __m256 expf2sum_x8(__m256 hi, __m256 lo)
{
    const __m256 shifter = _mm256_set1_ps(ATTNX_SHIFTERF);
    /* max/min return their second operand when either is NaN: x second, so
     * a NaN passes through the clamp */
    __m256 x = _mm256_max_ps(_mm256_set1_ps(ATTNX_EXPF_LO_CLAMP), hi);
    x = _mm256_min_ps(_mm256_set1_ps(ATTNX_EXPF_HI_CLAMP), x);
    __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(ATTNX_LOG2EF), shifter);
    __m256 n = _mm256_sub_ps(t, shifter);
    __m256 rh = _mm256_fnmadd_ps(n, _mm256_set1_ps(ATTNX_LN2F_HI), x);
    __m256 rl = _mm256_fnmadd_ps(n, _mm256_set1_ps(ATTNX_LN2F_LO), lo);
    __m256 r = _mm256_add_ps(rh, rl);
    /* q = C2 + C3 r + ... + C7 r^5 by Estrin */
    __m256 r2 = _mm256_mul_ps(r, r);
    __m256 a1 = _mm256_fmadd_ps(_mm256_set1_ps(ATTNX_EXPF_C3), r, _mm256_set1_ps(ATTNX_EXPF_C2));
    __m256 a2 = _mm256_fmadd_ps(_mm256_set1_ps(ATTNX_EXPF_C5), r, _mm256_set1_ps(ATTNX_EXPF_C4));
    __m256 a3 = _mm256_fmadd_ps(_mm256_set1_ps(ATTNX_EXPF_C7), r, _mm256_set1_ps(ATTNX_EXPF_C6));
    __m256 q = _mm256_fmadd_ps(_mm256_fmadd_ps(a3, r2, a2), r2, a1);
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 sh = _mm256_add_ps(one, rh);
    __m256 sl = _mm256_add_ps(_mm256_sub_ps(one, sh), rh);        /* exact: Fast2Sum */
    __m256 er = _mm256_add_ps(sh, _mm256_add_ps(sl, _mm256_fmadd_ps(r2, q, rl)));
    /* n as an integer: the shifter's bits plus n (t stays in [2^23, 2^24)) */
    __m256i k = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(shifter));
    __m256i k1 = _mm256_srai_epi32(k, 1);
    const __m256i bias = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(k, k1), bias), 23));
    /* Results below 2^-126 (n <= -127): er * 2^n rounded to the 2^-149 grid
     * by adding 2^23 to er * 2^(n + 149) (exact, normal): the same single
     * rounding as the multiply, without its underflow assist. */
    const __m256 sub = _mm256_cmp_ps(n, _mm256_set1_ps(-126.5f), _CMP_LT_OQ);
    if (_mm256_movemask_ps(sub)) {
        const __m256 two23 = _mm256_set1_ps(0x1p23f);
        __m256 z = _mm256_mul_ps(er, _mm256_castsi256_ps(_mm256_slli_epi32(
                                         _mm256_add_epi32(k, _mm256_set1_epi32(149 + 127)), 23)));
        __m256 tiny = _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(z, two23)),
                                                           _mm256_castps_si256(two23)));
        s1 = _mm256_blendv_ps(s1, one, sub);
        s2 = _mm256_blendv_ps(s2, one, sub);
        return _mm256_blendv_ps(_mm256_mul_ps(_mm256_mul_ps(er, s1), s2), tiny, sub);
    }
    return _mm256_mul_ps(_mm256_mul_ps(er, s1), s2);
}

/* exp(a - b) with the subtraction's rounding compensated (exact two-sum;
 * lo zeroed where hi is outside the exp range or NaN). */
AX_INLINE __m256 expf_diff_x8(__m256 a, __m256 b)
{
    __m256 hi = _mm256_sub_ps(a, b);
    __m256 z = _mm256_sub_ps(hi, a);
    __m256 lo = _mm256_sub_ps(_mm256_sub_ps(a, _mm256_sub_ps(hi, z)), _mm256_add_ps(b, z));
    __m256 sane = _mm256_and_ps(_mm256_cmp_ps(hi, _mm256_set1_ps(ATTNX_EXPF_LO_CLAMP), _CMP_GE_OQ),
                                _mm256_cmp_ps(hi, _mm256_set1_ps(ATTNX_EXPF_HI_CLAMP), _CMP_LE_OQ));
    return expf2sum_x8(hi, _mm256_and_ps(sane, lo));
}

/* ------------------------------------------------------------------ exp */

static void exp_f32_avx2(const float *x, size_t n, float *y)
{
    const __m256 zero = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        _mm256_storeu_ps(y + i, expf2sum_x8(a, zero));
        _mm256_storeu_ps(y + i + 8, expf2sum_x8(b, zero));
    }
    for (; i < n; i += 8) {
        __m256i k = tail8(n - i >= 8 ? 8 : n - i);
        _mm256_maskstore_ps(y + i, k, expf2sum_x8(_mm256_maskload_ps(x + i, k), zero));
    }
}

/* ----------------------------------------------------------- dot scores */

/* Lane i = sum of the lanes of a[i], i < 8. */
AX_INLINE __m256 transpose_sum8(const __m256 *a)
{
    /* per 128-bit half: (a0, a1, a2, a3) partial sums, likewise a4..a7 */
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* Lane i = dot(q, k[i]) for 8 rows of length d. */
AX_INLINE __m256 dots8(const float *q, const float *const k[8], size_t d)
{
    __m256 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 8 <= d; j += 8) {
        __m256 qv = _mm256_loadu_ps(q + j);
        for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[i] + j), a[i]);
    }
    if (j < d) {
        const __m256i m = tail8(d - j);
        __m256 qv = _mm256_maskload_ps(q + j, m);
        for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k[i] + j, m), a[i]);
    }
    return transpose_sum8(a);
}

static void dot_scores_f32_avx2(const float *q, const float *K, size_t T, size_t d, float scale, float *s)
{
    const __m256 sc = _mm256_set1_ps(scale);
    const float *k[8];
    for (size_t t0 = 0; t0 < T; t0 += 8) {
        size_t nb = T - t0 < 8 ? T - t0 : 8;
        /* rows past T re-read the block's first row; their lanes are not stored */
        for (size_t i = 0; i < 8; i++) k[i] = K + (t0 + (i < nb ? i : 0)) * d;
        __m256 v = _mm256_mul_ps(sc, dots8(q, k, d));
        if (nb == 8)
            _mm256_storeu_ps(s + t0, v);
        else
            _mm256_maskstore_ps(s + t0, tail8(nb), v);
    }
}

/* -------------------------------------------------------------- softmax */

/* The row max, NaN when the row holds a NaN (max_ps alone would lose it). */
static float row_max(const float *x, size_t n)
{
    const __m256 ninf = _mm256_set1_ps(NEG_INF);
    __m256 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf, nan = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        __m256 c = _mm256_loadu_ps(x + i + 16), e = _mm256_loadu_ps(x + i + 24);
        nan = _mm256_or_ps(nan, _mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_UNORD_Q), _mm256_cmp_ps(c, e, _CMP_UNORD_Q)));
        m0 = _mm256_max_ps(m0, a);
        m1 = _mm256_max_ps(m1, b);
        m2 = _mm256_max_ps(m2, c);
        m3 = _mm256_max_ps(m3, e);
    }
    for (; i < n; i += 8) {
        __m256 k = _mm256_castsi256_ps(tail8(n - i >= 8 ? 8 : n - i));
        __m256 a = _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + i, _mm256_castps_si256(k)), k);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
        m0 = _mm256_max_ps(m0, a);
    }
    if (_mm256_movemask_ps(nan)) return NAN;
    return hmax8(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
}

/* sum of exp(x - m) in double; y = the exps when store. */
AX_INLINE double exp_sum(const float *x, size_t n, float m, float *y, int store)
{
    const __m256 mv = _mm256_set1_ps(m);
    __m256d s0 = _mm256_setzero_pd(), s1 = s0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 e0 = expf_diff_x8(_mm256_loadu_ps(x + i), mv);
        __m256 e1 = expf_diff_x8(_mm256_loadu_ps(x + i + 8), mv);
        if (store) {
            _mm256_storeu_ps(y + i, e0);
            _mm256_storeu_ps(y + i + 8, e1);
        }
        s0 = _mm256_add_pd(s0, widen_sum(e0));
        s1 = _mm256_add_pd(s1, widen_sum(e1));
    }
    for (; i < n; i += 8) {
        __m256i k = tail8(n - i >= 8 ? 8 : n - i);
        __m256 e = _mm256_and_ps(_mm256_castsi256_ps(k), expf_diff_x8(_mm256_maskload_ps(x + i, k), mv));
        if (store) _mm256_maskstore_ps(y + i, k, e);
        s0 = _mm256_add_pd(s0, widen_sum(e));
    }
    return hsum_pd4(_mm256_add_pd(s0, s1));
}

static int softmax_f32_avx2(const float *x, size_t n, float *y)
{
    float mx = row_max(x, n);
    if (mx != mx || mx == NEG_INF) {
        for (size_t i = 0; i < n; i++) y[i] = NAN;
        return mx == NEG_INF;
    }
    double sum = exp_sum(x, n, mx, y, 1);
    /* y = e / sum as e * rh + e * rl, rh + rl = 1/sum to 2^-48: one FMA
     * rounding instead of a division (sum >= 1: the max gives exp(0) = 1) */
    const double r = 1.0 / sum;
    const float rhf = (float)r, rlf = (float)(r - rhf);
    const __m256 rh = _mm256_set1_ps(rhf), rl = _mm256_set1_ps(rlf);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 e0 = _mm256_loadu_ps(y + i), e1 = _mm256_loadu_ps(y + i + 8);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(e0, rh, _mm256_mul_ps(e0, rl)));
        _mm256_storeu_ps(y + i + 8, _mm256_fmadd_ps(e1, rh, _mm256_mul_ps(e1, rl)));
    }
    for (; i < n; i += 8) {
        __m256i k = tail8(n - i >= 8 ? 8 : n - i);
        __m256 e = _mm256_maskload_ps(y + i, k);
        _mm256_maskstore_ps(y + i, k, _mm256_fmadd_ps(e, rh, _mm256_mul_ps(e, rl)));
    }
    return 0;
}

/* exp_sum with the signature attnx_log_sum_f32 takes. */
static double sum_exps(const float *x, size_t n, float m) { return exp_sum(x, n, m, NULL, 0); }

static void log_softmax_f32_avx2(const float *x, size_t n, float *y)
{
    float mx = row_max(x, n);
    if (mx != mx || mx == NEG_INF) {
        for (size_t i = 0; i < n; i++) y[i] = NAN;
        return;
    }
    if (mx == INFINITY) {
        attnx_log_softmax_inf_f32(x, n, y);
        return;
    }
    const __m256d ls = _mm256_set1_pd(attnx_log_sum_f32(x, n, mx, sum_exps));
    const __m256d md = _mm256_set1_pd(mx);
    for (size_t i = 0; i < n; i += 8) {
        __m256i k = tail8(n - i >= 8 ? 8 : n - i);
        __m256 v = _mm256_maskload_ps(x + i, k);
        __m256d a = _mm256_sub_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), md), ls);
        __m256d b = _mm256_sub_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), md), ls);
        __m256 r = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(a)), _mm256_cvtpd_ps(b), 1);
        _mm256_maskstore_ps(y + i, k, r);
    }
}

/* -------------------------------------------------------------- context */

/* ctx[0 .. nv vectors) (last masked by km) = sum_t w[t] V[t, :] for one
 * column slice; nv and nset are constants after inlining, so acc stays in
 * registers. nset == 2 sums even and odd rows apart: short slices would
 * otherwise wait on the FMA latency. */
AX_INLINE void context_cols(const float *w, const float *V, size_t T, size_t dv, int nv, int nset,
                            __m256i km, float *ctx)
{
    __m256 acc[8], acc2[8];
    for (int v = 0; v < nv; v++) acc[v] = acc2[v] = _mm256_setzero_ps();
    size_t t = 0;
    if (nset == 2) {
        for (; t + 2 <= T; t += 2) {
            float w0 = w[t], w1 = w[t + 1];
            const float *v0 = V + t * dv, *v1 = v0 + dv;
            if (w0 != 0.0f) {
                __m256 b = _mm256_set1_ps(w0);
                for (int v = 0; v < nv - 1; v++) acc[v] = _mm256_fmadd_ps(b, _mm256_loadu_ps(v0 + 8 * v), acc[v]);
                acc[nv - 1] = _mm256_fmadd_ps(b, _mm256_maskload_ps(v0 + 8 * (nv - 1), km), acc[nv - 1]);
            }
            if (w1 != 0.0f) {
                __m256 b = _mm256_set1_ps(w1);
                for (int v = 0; v < nv - 1; v++) acc2[v] = _mm256_fmadd_ps(b, _mm256_loadu_ps(v1 + 8 * v), acc2[v]);
                acc2[nv - 1] = _mm256_fmadd_ps(b, _mm256_maskload_ps(v1 + 8 * (nv - 1), km), acc2[nv - 1]);
            }
        }
    }
    for (; t < T; t++) {
        float w0 = w[t];
        if (w0 == 0.0f) continue;
        const float *v0 = V + t * dv;
        __m256 b = _mm256_set1_ps(w0);
        for (int v = 0; v < nv - 1; v++) acc[v] = _mm256_fmadd_ps(b, _mm256_loadu_ps(v0 + 8 * v), acc[v]);
        acc[nv - 1] = _mm256_fmadd_ps(b, _mm256_maskload_ps(v0 + 8 * (nv - 1), km), acc[nv - 1]);
    }
    if (nset == 2)
        for (int v = 0; v < nv; v++) acc[v] = _mm256_add_ps(acc[v], acc2[v]);
    for (int v = 0; v < nv - 1; v++) _mm256_storeu_ps(ctx + 8 * v, acc[v]);
    _mm256_maskstore_ps(ctx + 8 * (nv - 1), km, acc[nv - 1]);
}

static void context_f32_avx2(const float *w, const float *V, size_t T, size_t dv, float *ctx)
{
    for (size_t c = 0; c < dv; c += 64) {
        size_t nc = dv - c < 64 ? dv - c : 64;
        int nv = (int)((nc + 7) / 8);
        __m256i km = tail8(nc - 8 * (size_t)(nv - 1));
        const float *Vc = V + c;
        float *cc = ctx + c;
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

/* Bits k < kn set where mask[k] != 0 (kn <= 16 bytes readable). */
AX_INLINE unsigned mask_bits(const unsigned char *mask, size_t kn)
{
    if (kn == 8) return mask_bits8(mask);
    if (kn == 16) {
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)mask);
        return ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(b, _mm_setzero_si128())) & 0xFFFFu;
    }
    unsigned bits = 0;
    for (size_t k = 0; k < kn; k++) bits |= (unsigned)(mask[k] != 0) << k;
    return bits;
}

/* acc[0..n) *= c, or zero it when c == 0 (inf * 0 would be NaN). */
static void rescale_acc(float *acc, size_t n, float c)
{
    const __m256 cv = _mm256_set1_ps(c);
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(acc + j, c == 0.0f ? _mm256_setzero_ps() : _mm256_mul_ps(_mm256_loadu_ps(acc + j), cv));
    for (; j < n; j++) acc[j] = c == 0.0f ? 0.0f : acc[j] * c;
}

/* acc += sum_i p_i V_i for the 8 rows v[i]. */
AX_INLINE void axpy8(float *acc, const float *p, const float *const v[8], size_t dv)
{
    __m256 pb[8];
    for (int i = 0; i < 8; i++) pb[i] = _mm256_set1_ps(p[i]);
    size_t j = 0;
    for (; j + 8 <= dv; j += 8) {
        /* two chains of four: halves the FMA latency on the accumulator */
        __m256 a = _mm256_loadu_ps(acc + j);
        __m256 b = _mm256_mul_ps(pb[4], _mm256_loadu_ps(v[4] + j));
        a = _mm256_fmadd_ps(pb[0], _mm256_loadu_ps(v[0] + j), a);
        b = _mm256_fmadd_ps(pb[5], _mm256_loadu_ps(v[5] + j), b);
        a = _mm256_fmadd_ps(pb[1], _mm256_loadu_ps(v[1] + j), a);
        b = _mm256_fmadd_ps(pb[6], _mm256_loadu_ps(v[6] + j), b);
        a = _mm256_fmadd_ps(pb[2], _mm256_loadu_ps(v[2] + j), a);
        b = _mm256_fmadd_ps(pb[7], _mm256_loadu_ps(v[7] + j), b);
        a = _mm256_fmadd_ps(pb[3], _mm256_loadu_ps(v[3] + j), a);
        _mm256_storeu_ps(acc + j, _mm256_add_ps(a, b));
    }
    if (j < dv) {
        const __m256i k = tail8(dv - j);
        __m256 a = _mm256_maskload_ps(acc + j, k);
        for (int i = 0; i < 8; i++) a = _mm256_fmadd_ps(pb[i], _mm256_maskload_ps(v[i] + j, k), a);
        _mm256_maskstore_ps(acc + j, k, a);
    }
}

/* acc += p V for one row. */
AX_INLINE void axpy1(float *acc, float p, const float *v, size_t dv)
{
    const __m256 pv = _mm256_set1_ps(p);
    size_t j = 0;
    for (; j + 8 <= dv; j += 8)
        _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + j), _mm256_loadu_ps(acc + j)));
    if (j < dv) {
        const __m256i k = tail8(dv - j);
        _mm256_maskstore_ps(acc + j, k, _mm256_fmadd_ps(pv, _mm256_maskload_ps(v + j, k), _mm256_maskload_ps(acc + j, k)));
    }
}

/* --- online softmax for one query.
 *
 * Blocks of 8 keys: 8 dot products into one vector of scores, one max and
 * at most one rescale per block, one vector exp, the 8 value rows folded
 * into acc in one pass over acc. The scores of block b + 1 are computed
 * before block b's exp and P.V: the two are independent, so the
 * out-of-order core overlaps the next block's key loads with this block's
 * exp latency. */

/* Past this many bytes of K and V a call prefetches PF_KEYS keys ahead
 * (as the float64 kernels, in bytes). */
#define PF_MIN_BYTES ((size_t)8 << 20)
#define PF_KEYS 32
#define PF_BATCH_BYTES ((size_t)64 << 10)

#define ZERO_ROW 512   /* dv up to this: p == 0 rows read zero_row instead */
#if defined(_MSC_VER)
__declspec(align(32)) static const float zero_row[ZERO_ROW + 8];
#else
static const float zero_row[ZERO_ROW + 8] __attribute__((aligned(32)));
#endif

AX_INLINE void prefetch_block(const float *K, const float *V, size_t t, size_t d, size_t dv)
{
    const char *pk = (const char *)(K + t * d), *pv = (const char *)(V + t * dv);
    for (size_t b = 0; b < 8 * d * sizeof(float); b += 64) _mm_prefetch(pk + b, _MM_HINT_T0);
    for (size_t b = 0; b < 8 * dv * sizeof(float); b += 64) _mm_prefetch(pv + b, _MM_HINT_T0);
}

/* Attended keys of [t0, t0 + nb), nb <= 8. */
AX_INLINE unsigned block_live(const unsigned char *mask, size_t t0, size_t nb)
{
    if (nb == 8) return mask ? mask_bits8(mask + t0) : 0xFFu;
    unsigned lv = 0;
    for (size_t i = 0; i < nb; i++) lv |= (unsigned)(!mask || mask[t0 + i]) << i;
    return lv;
}

/* Scores of keys [t0, t0 + 8): -inf where not live. Rows that are not live
 * are not read: their lanes dot q with itself (any readable d floats do)
 * and are then overwritten, never combined. */
AX_INLINE __m256 block_scores(const float *q, const float *K, size_t t0, size_t d, __m256 sc, unsigned live)
{
    const float *k[8];
    for (size_t i = 0; i < 8; i++) k[i] = (live >> i) & 1 ? K + (t0 + i) * d : q;
    return _mm256_blendv_ps(_mm256_set1_ps(NEG_INF), _mm256_mul_ps(sc, dots8(q, k, d)), bits_mask8(live));
}

/* Softmax bookkeeping of one block (scores s; -inf where unattended):
 * updates (m, l), rescales acc when the max grows, writes p[8]. Returns
 * the keys with p != 0, or -1 when the state is poisoned. */
AX_INLINE int block_softmax(__m256 s, double *m, double *l, float *acc, size_t dv, float *p)
{
    if (_mm256_movemask_ps(_mm256_cmp_ps(s, s, _CMP_UNORD_Q))) {
        *l = NAN;                       /* finalisation sees it */
        return -1;
    }
    float bm = hmax8(s);
    if (bm == NEG_INF) return 0;
    if (bm > *m) {
        double c = attnx_rescale_factor(*m, bm);
        *l *= c;
        rescale_acc(acc, dv, (float)c);
        *m = bm;
    }
    __m256 pv = expf_diff_x8(s, _mm256_set1_ps((float)*m));
    _mm256_storeu_ps(p, pv);
    *l += hsum_pd4(widen_sum(pv));
    if (*l != *l) return -1;            /* +inf score: inf - inf */
    return _mm256_movemask_ps(_mm256_cmp_ps(pv, _mm256_setzero_ps(), _CMP_NEQ_UQ));
}

/* The fold over keys [0, T) for one query. */
AX_INLINE void online_run(const float *q, const float *K, const float *V, size_t T, size_t d, size_t dv,
                          float scale, const unsigned char *mask, double *m, double *l, float *acc, size_t nacc,
                          int al, unsigned km, unsigned vm, int pf)
{
    const __m256 sc = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(NEG_INF);
    (void)al, (void)km, (void)vm;           /* no aligned-load variant here */
    float p[8];
    const float *v[8];
    unsigned live = block_live(mask, 0, T < 8 ? T : 8), live_next = 0;
    __m256 s = live ? block_scores(q, K, 0, d, sc, live) : ninf, s_next = ninf;
    for (size_t t0 = 0; t0 < T; t0 += 8) {
        if (t0 + 8 < T) {
            size_t t1 = t0 + 8, nn = T - t1 < 8 ? T - t1 : 8;
            live_next = block_live(mask, t1, nn);
            s_next = live_next ? block_scores(q, K, t1, d, sc, live_next) : ninf;
        }
        if (pf && t0 + 8 + PF_KEYS <= T) prefetch_block(K, V, t0 + PF_KEYS, d, dv);
        if (live) {
            int nz = block_softmax(s, m, l, acc, nacc, p);
            if (nz < 0) break;
            if (nz == 0xFF || (nz && dv <= ZERO_ROW)) {
                /* p == 0 rows are not read: a row of zeros stands in */
                for (size_t i = 0; i < 8; i++) v[i] = (nz >> i) & 1 ? V + (t0 + i) * dv : zero_row;
                axpy8(acc, p, v, dv);
            } else {
                for (unsigned b = (unsigned)nz; b; b &= b - 1) {
                    unsigned i = lowest_bit(b);
                    axpy1(acc, p[i], V + (t0 + i) * dv, dv);
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
#define MR 6           /* queries per register tile: 12 accumulators + 2 loads + 1 broadcast */
#define KT_STACK 256   /* d up to this packs K on the stack */
#define FEW_QUERIES 4  /* below this, packing K costs more than it saves */

/* Kt[j][k] = Kb[k][j] for the keys k in `any` (zero columns for the
 * others, which stay unread), 8x8 blocks transposed in registers. Rows j
 * of Kt up to d rounded up to 8 are written. */
static void pack_kt(const float *Kb, size_t d, unsigned any, float *Kt)
{
    for (size_t j0 = 0; j0 < d; j0 += 8) {
        const __m256i m = tail8(d - j0 >= 8 ? 8 : d - j0);
        for (size_t h = 0; h < KB; h += 8) {
            __m256 r[8];
            for (size_t i = 0; i < 8; i++)
                r[i] = (any >> (h + i)) & 1 ? _mm256_maskload_ps(Kb + (h + i) * d + j0, m) : _mm256_setzero_ps();
            __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
            __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
            __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
            __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
            /* per 128-bit half: u_e = rows 0..3 of column 4*half + e; w_e rows 4..7 */
            __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            __m256 w0 = _mm256_shuffle_ps(t4, t6, 0x44), w1 = _mm256_shuffle_ps(t4, t6, 0xEE);
            __m256 w2 = _mm256_shuffle_ps(t5, t7, 0x44), w3 = _mm256_shuffle_ps(t5, t7, 0xEE);
            float *o = Kt + KB * j0 + h;
            _mm256_storeu_ps(o + 0 * KB, _mm256_permute2f128_ps(u0, w0, 0x20));
            _mm256_storeu_ps(o + 1 * KB, _mm256_permute2f128_ps(u1, w1, 0x20));
            _mm256_storeu_ps(o + 2 * KB, _mm256_permute2f128_ps(u2, w2, 0x20));
            _mm256_storeu_ps(o + 3 * KB, _mm256_permute2f128_ps(u3, w3, 0x20));
            _mm256_storeu_ps(o + 4 * KB, _mm256_permute2f128_ps(u0, w0, 0x31));
            _mm256_storeu_ps(o + 5 * KB, _mm256_permute2f128_ps(u1, w1, 0x31));
            _mm256_storeu_ps(o + 6 * KB, _mm256_permute2f128_ps(u2, w2, 0x31));
            _mm256_storeu_ps(o + 7 * KB, _mm256_permute2f128_ps(u3, w3, 0x31));
        }
    }
}

/* s[r][0..16) = dot(Q_r, key k) for r < mr, keys packed as Kt[j][k]. */
AX_INLINE void score_tile(const float *Q, size_t d, const float *Kt, int mr, float *s)
{
    __m256 a[MR][2];
    for (int r = 0; r < mr; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
    for (size_t j = 0; j < d; j++) {
        __m256 k0 = _mm256_loadu_ps(Kt + KB * j), k1 = _mm256_loadu_ps(Kt + KB * j + 8);
        for (int r = 0; r < mr; r++) {
            __m256 b = _mm256_broadcast_ss(Q + (size_t)r * d + j);
            a[r][0] = _mm256_fmadd_ps(b, k0, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(b, k1, a[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        _mm256_storeu_ps(s + KB * r, a[r][0]);
        _mm256_storeu_ps(s + KB * r + 8, a[r][1]);
    }
}

/* One 16-column slice of C_r += sum_i P[r][kidx[i]] V[kidx[i]] for r < mr;
 * masked: k0, k1 cover the last columns of a row. */
AX_INLINE void pv_slice(const float *P, const unsigned char *kidx, int nk, const float *Vb, size_t dv, int mr,
                        float *C, size_t c, __m256i k0, __m256i k1, int masked, int full)
{
    __m256 a[MR][2];
    for (int r = 0; r < mr; r++) {
        const float *cr = C + (size_t)r * dv + c;
        a[r][0] = masked ? _mm256_maskload_ps(cr, k0) : _mm256_loadu_ps(cr);
        a[r][1] = masked ? _mm256_maskload_ps(cr + 8, k1) : _mm256_loadu_ps(cr + 8);
    }
    for (int i = 0; i < nk; i++) {
        const int kk = full ? i : kidx[i];
        const float *vr = Vb + (size_t)kk * dv + c;
        __m256 v0 = masked ? _mm256_maskload_ps(vr, k0) : _mm256_loadu_ps(vr);
        __m256 v1 = masked ? _mm256_maskload_ps(vr + 8, k1) : _mm256_loadu_ps(vr + 8);
        for (int r = 0; r < mr; r++) {
            __m256 b = _mm256_broadcast_ss(P + KB * r + kk);
            a[r][0] = _mm256_fmadd_ps(b, v0, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(b, v1, a[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        float *cr = C + (size_t)r * dv + c;
        if (masked) {
            _mm256_maskstore_ps(cr, k0, a[r][0]);
            _mm256_maskstore_ps(cr + 8, k1, a[r][1]);
        } else {
            _mm256_storeu_ps(cr, a[r][0]);
            _mm256_storeu_ps(cr + 8, a[r][1]);
        }
    }
}

/* C_r += sum_i P[r][kidx[i]] V[kidx[i]] for r < mr: ctx rows C (stride dv),
 * 16 columns at a time in registers. Every listed key has p != 0 in every
 * row; nk == KB means all keys of the block, in order. */
AX_INLINE void pv_tile(const float *P, const unsigned char *kidx, int nk, const float *Vb, size_t dv, int mr,
                       float *C)
{
    const __m256i ones = _mm256_set1_epi32(-1);
    size_t c = 0;
    if (nk == KB) {
        for (; c + 16 <= dv; c += 16) pv_slice(P, kidx, KB, Vb, dv, mr, C, c, ones, ones, 0, 1);
    } else {
        for (; c + 16 <= dv; c += 16) pv_slice(P, kidx, nk, Vb, dv, mr, C, c, ones, ones, 0, 0);
    }
    if (c < dv) {
        size_t rem = dv - c;
        pv_slice(P, kidx, nk, Vb, dv, mr, C, c, tail8(rem >= 8 ? 8 : rem), tail8(rem > 8 ? rem - 8 : 0), 1, 0);
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

/* Queries [qa, qa + nr) (nr <= RQ), all against keys [0, T). */
static void rows_chunk(const float *Q, size_t nr, size_t qa, const float *K, const float *V, size_t T, size_t d,
                       size_t dv, float scale, const unsigned char *mask, ptrdiff_t mask_row_stride, int causal,
                       float *ctx, float *Kt)
{
    double m[RQ], l[RQ];
    float S[MR * KB], P[MR * KB];
    unsigned live[RQ];
    unsigned char kidx[KB];
    const __m256 sc = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(NEG_INF);
    const __m256 zero = _mm256_setzero_ps();
    for (size_t r = 0; r < nr; r++) {
        m[r] = NEG_INF;
        l[r] = 0.0;
    }
    for (size_t j = 0; j < nr * dv; j++) ctx[j] = 0.0f;
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
            if (lv && mask) lv &= mask_bits(mask + (ptrdiff_t)r * mask_row_stride + (ptrdiff_t)t0, kn);
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
            unsigned colall = 0xFFFFu, colany = 0;
            for (int r = 0; r < mr; r++) {
                size_t row = g + (size_t)r;
                unsigned lv = live[row];
                __m256 s0 = _mm256_blendv_ps(ninf, _mm256_mul_ps(sc, _mm256_loadu_ps(S + KB * r)), bits_mask8(lv & 0xFFu));
                __m256 s1 = _mm256_blendv_ps(ninf, _mm256_mul_ps(sc, _mm256_loadu_ps(S + KB * r + 8)), bits_mask8(lv >> 8));
                float bm = NEG_INF;
                if (lv) {
                    if (_mm256_movemask_ps(_mm256_cmp_ps(s0, s1, _CMP_UNORD_Q)))
                        l[row] = NAN;
                    else
                        bm = hmax8(_mm256_max_ps(s0, s1));
                }
                if (bm == NEG_INF) {
                    _mm256_storeu_ps(P + KB * r, zero);
                    _mm256_storeu_ps(P + KB * r + 8, zero);
                    colall = 0;
                    continue;
                }
                if (bm > m[row]) {
                    double c = attnx_rescale_factor(m[row], bm);
                    l[row] *= c;
                    rescale_acc(ctx + row * dv, dv, (float)c);
                    m[row] = bm;
                }
                const __m256 mv = _mm256_set1_ps((float)m[row]);
                __m256 p0 = expf_diff_x8(s0, mv), p1 = expf_diff_x8(s1, mv);
                l[row] += hsum_pd4(_mm256_add_pd(widen_sum(p0), widen_sum(p1)));
                unsigned nz = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(p0, zero, _CMP_NEQ_UQ)) |
                              (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(p1, zero, _CMP_NEQ_UQ)) << 8;
                if (l[row] != l[row]) nz = 0;   /* +inf score: poisoned, skip */
                if (!nz) p0 = p1 = zero;
                _mm256_storeu_ps(P + KB * r, p0);
                _mm256_storeu_ps(P + KB * r + 8, p1);
                colall &= nz;
                colany |= nz;
            }
            /* keys every row of the tile weighs: the register-blocked tile */
            int nk = 0;
            for (unsigned b = colall; b; b &= b - 1) kidx[nk++] = (unsigned char)lowest_bit(b);
            if (nk) {
                float *Cg = ctx + g * dv;
#define PV_CALL(n) pv_tile(P, kidx, nk, Vb, dv, n, Cg)
                TILE_SWITCH(mr, PV_CALL)
#undef PV_CALL
            }
            /* keys only some rows weigh: row by row, skipping p == 0 */
            for (unsigned b = colany & ~colall; b; b &= b - 1) {
                unsigned k = lowest_bit(b);
                for (int r = 0; r < mr; r++) {
                    float pr = P[KB * r + k];
                    if (pr != 0.0f) axpy1(ctx + (g + (size_t)r) * dv, pr, Vb + (size_t)k * dv, dv);
                }
            }
        }
    }
    for (size_t r = 0; r < nr; r++) attnx_online_finish_f32(m[r], l[r], ctx + r * dv, dv);
}

#define KF_T float
#define KF_W 8
#define KF_SFX f32_avx2
#define KF_ALIGNED 0
#define KF_FINISH attnx_online_finish_f32
#include "kernels_fold.h"

const attnx_kernels_f32 attnx_kernels_f32_avx2 = {
    "avx2",
    exp_f32_avx2,
    dot_scores_f32_avx2,
    softmax_f32_avx2,
    log_softmax_f32_avx2,
    context_f32_avx2,
    attend_online_f32_avx2,
    attend_rows_f32_avx2,
};

#endif /* ATTNX_HAVE_X86 */
