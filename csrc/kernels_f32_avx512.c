/*
 * kernels_f32_avx512.c -- AVX-512F float32 kernels (16 floats a vector, 32
 * registers): the designs of kernels_avx512.c with twice the lanes. Built
 * with -mavx512f -mavx2 -mfma (MSVC: /arch:AVX512); uses AVX-512F alone
 * (plus the SSE/AVX2/FMA every AVX-512F CPU has), which is all dispatch.c
 * checks for. Accumulation and measured errors: kernels_f32_scalar.c.
 * Tails use masked loads and stores: lanes outside a buffer are never
 * accessed.
 *
 *   exp          expf2sum_x16: the algorithm of attnx_internal_f32.h with
 *                FMA (Estrin in r^2), 2^n from the shifter's bits; results
 *                below 2^-126 rounded by an integer add instead of an
 *                underflowing multiply (a microcode assist on Zen); within
 *                0.64 ulp measured; reads x, writes y once (8*n bytes)
 *   dot_scores   16 key rows at a time, the reduction across d in vectors
 *                (16 independent FMA chains), the 16 partial vectors
 *                transposed-and-added into one vector of scores; reads K
 *                once (4*T*d bytes)
 *   softmax      three passes: max (NaN-aware), exp of the exact two-sum
 *                x - max with the sum in float64 lanes, then
 *                y = e * r_hi + e * r_lo (r = 1/sum as two floats, one
 *                FMA); reads x twice, y once, writes y twice (20*n bytes)
 *   log_softmax  max, the float64 sum of exps, then (x - max) - log(sum)
 *                in float64 lanes; reads x three times, writes y (16*n)
 *   context      ctx in registers, 128 columns at a time, even and odd
 *                rows in two sets; zero weights skip their row unread;
 *                reads w once per 128 columns, V once
 *   attend       online softmax over blocks of 16 keys: 16 dot products
 *                into one vector of scores, one max, one vector exp, at most
 *                one rescale per block, the next block's scores computed
 *                before this block's exp; the running sum in float64;
 *                rows whose offset in their cache line is not 0 (NumPy's
 *                16-byte alignment) are read from the line base when d, dv
 *                are multiples of 16; the 16 value rows added with acc in
 *                registers, in memory order; prefetched ahead past 8 MB;
 *                K and V rows read once (4*T*(d+dv) bytes), masked and
 *                p == 0 rows not at all; allocates nothing
 *   attend_rows  flash attention for a chunk of queries (64 at a time): key
 *                blocks of 32 packed transposed (d x 32, 16x16 register
 *                transposes), register-blocked 8x32 score tiles and 8x32
 *                P.V tiles accumulating in the ctx rows, per-row (m, l) on
 *                the stack; O(32 d) extra memory (on the heap only when
 *                d > 128); K and V read once per 64 queries; fewer than 4
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
AX_INLINE unsigned lowest_bit(uint32_t b)
{
#if defined(_MSC_VER)
    unsigned long i;
    _BitScanForward(&i, b);
    return (unsigned)i;
#else
    return (unsigned)__builtin_ctz(b);
#endif
}

/* First n lanes (0 <= n <= 16). */
AX_INLINE __mmask16 tail16(size_t n) { return (__mmask16)((1u << n) - 1u); }

/* The upper 8 floats (AVX-512F alone has no 32x8 extract). */
AX_INLINE __m256 upper8(__m512 v)
{
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

/* Two 8-float halves into one vector. */
AX_INLINE __m512 join8(__m256 lo, __m256 hi)
{
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)),
                                               _mm256_castps_pd(hi), 1));
}

AX_INLINE double hsum_pd8(__m512d v)
{
    __m256d a = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
    __m128d b = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(b, _mm_unpackhi_pd(b, b)));
}

/* The 16 lanes widened to double and added: the running sums stay exact
 * to 2^-53 whatever the number of terms. */
AX_INLINE __m512d widen_sum(__m512 v)
{
    return _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(upper8(v)));
}

/* Max of 16 lanes; no lane may be NaN. */
AX_INLINE float hmax16(__m512 v)
{
    __m256 a = _mm256_max_ps(_mm512_castps512_ps256(v), upper8(v));
    __m128 b = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_max_ps(b, _mm_movehl_ps(b, b));
    b = _mm_max_ss(b, _mm_shuffle_ps(b, b, 1));
    return _mm_cvtss_f32(b);
}

/* exp(hi + lo) on 16 lanes: see attnx_internal_f32.h. lo must be finite. */
AX_INLINE __m512 expf2sum_x16(__m512 hi, __m512 lo)
{
    const __m512 shifter = _mm512_set1_ps(ATTNX_SHIFTERF);
    /* max/min return their second operand when either is NaN: x second, so
     * a NaN passes through the clamp */
    __m512 x = _mm512_max_ps(_mm512_set1_ps(ATTNX_EXPF_LO_CLAMP), hi);
    x = _mm512_min_ps(_mm512_set1_ps(ATTNX_EXPF_HI_CLAMP), x);
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(ATTNX_LOG2EF), shifter);
    __m512 n = _mm512_sub_ps(t, shifter);
    __m512 rh = _mm512_fnmadd_ps(n, _mm512_set1_ps(ATTNX_LN2F_HI), x);
    __m512 rl = _mm512_fnmadd_ps(n, _mm512_set1_ps(ATTNX_LN2F_LO), lo);
    __m512 r = _mm512_add_ps(rh, rl);
    /* q = C2 + C3 r + ... + C7 r^5 by Estrin: three FMA levels, not five */
    __m512 r2 = _mm512_mul_ps(r, r);
    __m512 a1 = _mm512_fmadd_ps(_mm512_set1_ps(ATTNX_EXPF_C3), r, _mm512_set1_ps(ATTNX_EXPF_C2));
    __m512 a2 = _mm512_fmadd_ps(_mm512_set1_ps(ATTNX_EXPF_C5), r, _mm512_set1_ps(ATTNX_EXPF_C4));
    __m512 a3 = _mm512_fmadd_ps(_mm512_set1_ps(ATTNX_EXPF_C7), r, _mm512_set1_ps(ATTNX_EXPF_C6));
    __m512 q = _mm512_fmadd_ps(_mm512_fmadd_ps(a3, r2, a2), r2, a1);
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 sh = _mm512_add_ps(one, rh);
    __m512 sl = _mm512_add_ps(_mm512_sub_ps(one, sh), rh);        /* exact: Fast2Sum */
    __m512 er = _mm512_add_ps(sh, _mm512_add_ps(sl, _mm512_fmadd_ps(r2, q, rl)));
    /* n as an integer: the shifter's bits plus n (t stays in [2^23, 2^24)) */
    __m512i k = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(shifter));
    __m512i k1 = _mm512_srai_epi32(k, 1);
    const __m512i bias = _mm512_set1_epi32(127);
    __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k1, bias), 23));
    __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_sub_epi32(k, k1), bias), 23));
    /* Results below 2^-126 (n <= -127): er * 2^n rounded to the 2^-149 grid
     * by adding 2^23 to er * 2^(n + 149) (exact, normal): the same single
     * rounding as the multiply, without its underflow assist. */
    const __mmask16 sub = _mm512_cmp_ps_mask(n, _mm512_set1_ps(-126.5f), _CMP_LT_OQ);
    if (sub) {
        const __m512 two23 = _mm512_set1_ps(0x1p23f);
        __m512 z = _mm512_mul_ps(er, _mm512_castsi512_ps(_mm512_slli_epi32(
                                         _mm512_add_epi32(k, _mm512_set1_epi32(149 + 127)), 23)));
        __m512 tiny = _mm512_castsi512_ps(_mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(z, two23)),
                                                           _mm512_castps_si512(two23)));
        s1 = _mm512_mask_blend_ps(sub, s1, one);
        s2 = _mm512_mask_blend_ps(sub, s2, one);
        return _mm512_mask_blend_ps(sub, _mm512_mul_ps(_mm512_mul_ps(er, s1), s2), tiny);
    }
    return _mm512_mul_ps(_mm512_mul_ps(er, s1), s2);
}

/* exp(a - b) with the subtraction's rounding compensated (exact two-sum;
 * lo zeroed where hi is outside the exp range or NaN). */
AX_INLINE __m512 expf_diff_x16(__m512 a, __m512 b)
{
    __m512 hi = _mm512_sub_ps(a, b);
    __m512 z = _mm512_sub_ps(hi, a);
    __m512 lo = _mm512_sub_ps(_mm512_sub_ps(a, _mm512_sub_ps(hi, z)), _mm512_add_ps(b, z));
    __mmask16 sane = _mm512_cmp_ps_mask(hi, _mm512_set1_ps(ATTNX_EXPF_LO_CLAMP), _CMP_GE_OQ);
    sane = _mm512_mask_cmp_ps_mask(sane, hi, _mm512_set1_ps(ATTNX_EXPF_HI_CLAMP), _CMP_LE_OQ);
    return expf2sum_x16(hi, _mm512_maskz_mov_ps(sane, lo));
}

/* ------------------------------------------------------------------ exp */

static void exp_f32_avx512(const float *x, size_t n, float *y)
{
    const __m512 zero = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        _mm512_storeu_ps(y + i, expf2sum_x16(a, zero));
        _mm512_storeu_ps(y + i + 16, expf2sum_x16(b, zero));
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : tail16(n - i);
        _mm512_mask_storeu_ps(y + i, k, expf2sum_x16(_mm512_maskz_loadu_ps(k, x + i), zero));
    }
}

/* ----------------------------------------------------------- dot scores */

/* Lane i = sum of the lanes of a[i], i < 16: four rounds of shuffles. */
AX_INLINE __m512 transpose_sum16(const __m512 *a)
{
    __m512 t[8], u[4];
    /* per 128-bit lane: (a_2i 0+2, a_2i+1 0+2, a_2i 1+3, a_2i+1 1+3) */
    for (int i = 0; i < 8; i++)
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    /* per 128-bit lane: the partial sums of rows 4i .. 4i+3 */
    for (int i = 0; i < 4; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
    /* 128-bit lanes (L0+L1, L2+L3) of u0 then u1; of u2 then u3 */
    __m512 v0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
    __m512 v1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x88), _mm512_shuffle_f32x4(v0, v1, 0xDD));
}

/* Lane i = dot(q, k[i]) for 16 rows of length d. */
AX_INLINE __m512 dots16(const float *q, const float *const k[16], size_t d)
{
    __m512 a[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_setzero_ps();
    size_t j = 0;
    for (; j + 16 <= d; j += 16) {
        __m512 qv = _mm512_loadu_ps(q + j);
        for (int i = 0; i < 16; i++) a[i] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k[i] + j), a[i]);
    }
    if (j < d) {
        const __mmask16 m = tail16(d - j);
        __m512 qv = _mm512_maskz_loadu_ps(m, q + j);
        for (int i = 0; i < 16; i++) a[i] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k[i] + j), a[i]);
    }
    return transpose_sum16(a);
}

static void dot_scores_f32_avx512(const float *q, const float *K, size_t T, size_t d,
                                  float scale, float *s)
{
    const __m512 sc = _mm512_set1_ps(scale);
    const float *k[16];
    for (size_t t0 = 0; t0 < T; t0 += 16) {
        size_t nb = T - t0 < 16 ? T - t0 : 16;
        /* rows past T re-read the block's first row; their lanes are not stored */
        for (size_t i = 0; i < 16; i++) k[i] = K + (t0 + (i < nb ? i : 0)) * d;
        _mm512_mask_storeu_ps(s + t0, tail16(nb), _mm512_mul_ps(sc, dots16(q, k, d)));
    }
}

/* -------------------------------------------------------------- softmax */

/* The row max, NaN when the row holds a NaN (max_ps alone would lose it). */
static float row_max(const float *x, size_t n)
{
    const __m512 ninf = _mm512_set1_ps(NEG_INF);
    __m512 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
    __mmask16 nan = 0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        __m512 c = _mm512_loadu_ps(x + i + 32), e = _mm512_loadu_ps(x + i + 48);
        nan |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(c, e, _CMP_UNORD_Q);
        m0 = _mm512_max_ps(m0, a);
        m1 = _mm512_max_ps(m1, b);
        m2 = _mm512_max_ps(m2, c);
        m3 = _mm512_max_ps(m3, e);
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : tail16(n - i);
        __m512 a = _mm512_mask_loadu_ps(ninf, k, x + i);
        nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
        m0 = _mm512_max_ps(m0, a);
    }
    if (nan) return NAN;
    return hmax16(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
}

static void fill_nan(float *y, size_t n)
{
    const __m512 qnan = _mm512_set1_ps(NAN);
    for (size_t i = 0; i < n; i += 16)
        _mm512_mask_storeu_ps(y + i, n - i >= 16 ? (__mmask16)0xFFFF : tail16(n - i), qnan);
}

/* sum of exp(x - m) in double; y = the exps when store. */
AX_INLINE double exp_sum(const float *x, size_t n, float m, float *y, int store)
{
    const __m512 mv = _mm512_set1_ps(m);
    __m512d s0 = _mm512_setzero_pd(), s1 = s0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 e0 = expf_diff_x16(_mm512_loadu_ps(x + i), mv);
        __m512 e1 = expf_diff_x16(_mm512_loadu_ps(x + i + 16), mv);
        if (store) {
            _mm512_storeu_ps(y + i, e0);
            _mm512_storeu_ps(y + i + 16, e1);
        }
        s0 = _mm512_add_pd(s0, widen_sum(e0));
        s1 = _mm512_add_pd(s1, widen_sum(e1));
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : tail16(n - i);
        __m512 e = _mm512_maskz_mov_ps(k, expf_diff_x16(_mm512_maskz_loadu_ps(k, x + i), mv));
        if (store) _mm512_mask_storeu_ps(y + i, k, e);
        s0 = _mm512_add_pd(s0, widen_sum(e));
    }
    return hsum_pd8(_mm512_add_pd(s0, s1));
}

static int softmax_f32_avx512(const float *x, size_t n, float *y)
{
    float mx = row_max(x, n);
    if (mx != mx || mx == NEG_INF) {
        fill_nan(y, n);
        return mx == NEG_INF;
    }
    double sum = exp_sum(x, n, mx, y, 1);
    /* y = e / sum as e * rh + e * rl, rh + rl = 1/sum to 2^-48: one FMA
     * rounding instead of a division (sum >= 1: the max gives exp(0) = 1) */
    const double r = 1.0 / sum;
    const float rhf = (float)r;
    const __m512 rh = _mm512_set1_ps(rhf), rl = _mm512_set1_ps((float)(r - rhf));
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 e0 = _mm512_loadu_ps(y + i), e1 = _mm512_loadu_ps(y + i + 16);
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(e0, rh, _mm512_mul_ps(e0, rl)));
        _mm512_storeu_ps(y + i + 16, _mm512_fmadd_ps(e1, rh, _mm512_mul_ps(e1, rl)));
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : tail16(n - i);
        __m512 e = _mm512_maskz_loadu_ps(k, y + i);
        _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(e, rh, _mm512_mul_ps(e, rl)));
    }
    return 0;
}

/* (x - m) - ls for 16 floats, in double. */
AX_INLINE __m512 log_sub16(__m512 x, __m512d md, __m512d ls)
{
    __m512d a = _mm512_sub_pd(_mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(x)), md), ls);
    __m512d b = _mm512_sub_pd(_mm512_sub_pd(_mm512_cvtps_pd(upper8(x)), md), ls);
    return join8(_mm512_cvtpd_ps(a), _mm512_cvtpd_ps(b));
}

/* exp_sum with the signature attnx_log_sum_f32 takes. */
static double sum_exps(const float *x, size_t n, float m) { return exp_sum(x, n, m, NULL, 0); }

static void log_softmax_f32_avx512(const float *x, size_t n, float *y)
{
    float mx = row_max(x, n);
    if (mx != mx || mx == NEG_INF) {
        fill_nan(y, n);
        return;
    }
    if (mx == INFINITY) {
        attnx_log_softmax_inf_f32(x, n, y);
        return;
    }
    const __m512d ls = _mm512_set1_pd(attnx_log_sum_f32(x, n, mx, sum_exps));
    const __m512d md = _mm512_set1_pd(mx);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : tail16(n - i);
        _mm512_mask_storeu_ps(y + i, k, log_sub16(_mm512_maskz_loadu_ps(k, x + i), md, ls));
    }
}

/* -------------------------------------------------------------- context */

/* ctx[0 .. nv vectors) (last one masked by km) = sum_t w[t] V[t, :] for one
 * column slice; nv is a constant after inlining, so acc stays in registers.
 * Even and odd rows in two sets: short slices would otherwise wait on the
 * FMA latency. */
AX_INLINE void context_cols(const float *w, const float *V, size_t T, size_t dv, int nv,
                            __mmask16 km, float *ctx)
{
    __m512 acc[8], acc2[8];
    for (int v = 0; v < nv; v++) acc[v] = acc2[v] = _mm512_setzero_ps();
    size_t t = 0;
    for (; t + 2 <= T; t += 2) {
        float w0 = w[t], w1 = w[t + 1];
        const float *v0 = V + t * dv, *v1 = v0 + dv;
        if (w0 != 0.0f) {
            __m512 b = _mm512_set1_ps(w0);
            for (int v = 0; v < nv - 1; v++) acc[v] = _mm512_fmadd_ps(b, _mm512_loadu_ps(v0 + 16 * v), acc[v]);
            acc[nv - 1] = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(km, v0 + 16 * (nv - 1)), acc[nv - 1]);
        }
        if (w1 != 0.0f) {
            __m512 b = _mm512_set1_ps(w1);
            for (int v = 0; v < nv - 1; v++) acc2[v] = _mm512_fmadd_ps(b, _mm512_loadu_ps(v1 + 16 * v), acc2[v]);
            acc2[nv - 1] = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(km, v1 + 16 * (nv - 1)), acc2[nv - 1]);
        }
    }
    if (t < T && w[t] != 0.0f) {
        const float *v0 = V + t * dv;
        __m512 b = _mm512_set1_ps(w[t]);
        for (int v = 0; v < nv - 1; v++) acc[v] = _mm512_fmadd_ps(b, _mm512_loadu_ps(v0 + 16 * v), acc[v]);
        acc[nv - 1] = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(km, v0 + 16 * (nv - 1)), acc[nv - 1]);
    }
    for (int v = 0; v < nv - 1; v++) _mm512_storeu_ps(ctx + 16 * v, _mm512_add_ps(acc[v], acc2[v]));
    _mm512_mask_storeu_ps(ctx + 16 * (nv - 1), km, _mm512_add_ps(acc[nv - 1], acc2[nv - 1]));
}

static void context_f32_avx512(const float *w, const float *V, size_t T, size_t dv, float *ctx)
{
    for (size_t c = 0; c < dv; c += 128) {
        size_t nc = dv - c < 128 ? dv - c : 128;
        int nv = (int)((nc + 15) / 16);
        __mmask16 km = tail16(nc - 16 * (size_t)(nv - 1));
        const float *Vc = V + c;
        float *cc = ctx + c;
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
static void rescale_acc(float *acc, size_t n, float c)
{
    const __m512 cv = _mm512_set1_ps(c);
    for (size_t j = 0; j < n; j += 16) {
        __mmask16 k = n - j >= 16 ? (__mmask16)0xFFFF : tail16(n - j);
        __m512 a = c == 0.0f ? _mm512_setzero_ps() : _mm512_mul_ps(_mm512_maskz_loadu_ps(k, acc + j), cv);
        _mm512_mask_storeu_ps(acc + j, k, a);
    }
}

/* Bits k < kn set where mask[k] != 0 (kn <= 32 bytes readable). */
AX_INLINE uint32_t mask_bits(const unsigned char *mask, size_t kn)
{
    if (kn == 16) {
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)mask);
        return ~(uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(b, _mm_setzero_si128())) & 0xFFFFu;
    }
    if (kn == 32) {
        __m256i b = _mm256_loadu_si256((const __m256i *)(const void *)mask);
        return ~(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(b, _mm256_setzero_si256()));
    }
    uint32_t bits = 0;
    for (size_t k = 0; k < kn; k++) bits |= (uint32_t)(mask[k] != 0) << k;
    return bits;
}

/* --- online softmax for one query.
 *
 * Blocks of 16 keys: 16 dot products (the reduction across d in vectors,
 * 16 independent FMA chains) transposed-and-added into one vector of
 * scores, one max and at most one rescale per block, one vector exp, then
 * the 16 value rows folded into acc in one pass over acc. The scores of
 * block b + 1 are computed before block b's exp and P.V: the two are
 * independent, so the out-of-order core overlaps the next block's key
 * loads with this block's exp latency.
 *
 * Aligned variant (al): NumPy's (malloc's) large buffers are only 16-byte
 * aligned, and a 64-byte load that straddles two cache lines costs two
 * (T = 1024, d = dv = 64 from L2: 7.2 us misaligned, 4.3 us aligned). When
 * d and dv are multiples of 16, every key row starts at the same offset km
 * (in floats) within its cache line, so rows are read from their line
 * base -- first and last chunk masked, the lanes outside the row are not
 * accessed -- against a copy of q shifted by km; the value rows likewise
 * accumulate into a copy of acc shifted by vm. */

#define ZERO_ROW 512 /* dv up to this: p == 0 rows read zero_row instead */
#if defined(_MSC_VER)
__declspec(align(64)) static const float zero_row[ZERO_ROW + 16];
#else
static const float zero_row[ZERO_ROW + 16] __attribute__((aligned(64)));
#endif
#define AL_MAX 512   /* largest d, dv of the aligned variant (stack copies) */

/* Past this many bytes of K and V a call prefetches PF_KEYS keys ahead
 * (DRAM-sized sequences need more lines in flight than the hardware
 * prefetcher keeps; for cache-sized ones the prefetches only compete with
 * the loads). PF_KEYS: the float64 kernels' distance in bytes. */
#define PF_MIN_BYTES ((size_t)8 << 20)
#define PF_KEYS 32
#define PF_BATCH_BYTES ((size_t)64 << 10)

AX_INLINE void prefetch_block(const float *K, const float *V, size_t t, size_t d, size_t dv)
{
    const char *pk = (const char *)(K + t * d), *pv = (const char *)(V + t * dv);
    for (size_t b = 0; b < 16 * d * sizeof(float); b += 64) _mm_prefetch(pk + b, _MM_HINT_T0);
    for (size_t b = 0; b < 16 * dv * sizeof(float); b += 64) _mm_prefetch(pv + b, _MM_HINT_T0);
}

AX_INLINE const float *line_base(const float *p)
{
    return (const float *)(uintptr_t)((uintptr_t)p & ~(uintptr_t)63);
}

/* Attended keys of [t0, t0 + nb), nb <= 16. */
AX_INLINE uint32_t block_live(const unsigned char *mask, size_t t0, size_t nb)
{
    if (mask) return mask_bits(mask + t0, nb);
    return (1u << nb) - 1u;
}

/* Lane i = dot(q, row i) for 16 rows. al: q is the shifted copy and k[i]
 * line bases (see above); else any d, any alignment. */
AX_INLINE __m512 dots_block(const float *q, const float *const k[16], size_t d, int al, unsigned km)
{
    if (!al) return dots16(q, k, d);
    __m512 a[16];
    const __mmask16 mf = (__mmask16)(0xFFFFu << km);
    __m512 qv = _mm512_load_ps(q);
    for (int i = 0; i < 16; i++) a[i] = _mm512_mul_ps(qv, _mm512_maskz_load_ps(mf, k[i]));
    size_t j = 16;
    for (; j < d; j += 16) {
        qv = _mm512_load_ps(q + j);
        for (int i = 0; i < 16; i++) a[i] = _mm512_fmadd_ps(qv, _mm512_load_ps(k[i] + j), a[i]);
    }
    if (km) {
        const __mmask16 ml = tail16(km);
        qv = _mm512_load_ps(q + j);
        for (int i = 0; i < 16; i++) a[i] = _mm512_fmadd_ps(qv, _mm512_maskz_load_ps(ml, k[i] + j), a[i]);
    }
    return transpose_sum16(a);
}

/* Scores of block [t0, t0 + 16): -inf where not live. Rows that are not
 * live are not read: their lanes dot q with itself (any readable d floats
 * do; with al, q is the aligned copy) and are then overwritten. */
AX_INLINE __m512 block_scores(const float *q, const float *K, size_t t0, size_t d, __m512 sc, uint32_t live,
                              int al, unsigned km)
{
    const float *k[16];
    for (size_t i = 0; i < 16; i++) {
        const float *r = K + (t0 + i) * d;
        k[i] = (live >> i) & 1 ? (al ? line_base(r) : r) : q;
    }
    return _mm512_mask_blend_ps((__mmask16)live, _mm512_set1_ps(NEG_INF),
                                _mm512_mul_ps(sc, dots_block(q, k, d, al, km)));
}

/* acc += sum_i p_i V_i over 16 rows, one 16-column chunk at j: V loads
 * masked by k when masked; al: acc is the aligned copy, v[i] line bases. */
AX_INLINE void axpy_chunk(float *acc, const __m512 *pb, const float *const v[16], size_t j, __mmask16 k,
                          int masked, int al)
{
#define LD(i) (masked ? (al ? _mm512_maskz_load_ps(k, v[i] + j) : _mm512_maskz_loadu_ps(k, v[i] + j)) \
                      : (al ? _mm512_load_ps(v[i] + j) : _mm512_loadu_ps(v[i] + j)))
    /* four chains of four: the accumulator waits on one FMA latency per
     * four rows */
    __m512 a = al ? _mm512_load_ps(acc + j) : masked ? _mm512_maskz_loadu_ps(k, acc + j) : _mm512_loadu_ps(acc + j);
    __m512 b = _mm512_mul_ps(pb[4], LD(4));
    __m512 c = _mm512_mul_ps(pb[8], LD(8));
    __m512 e = _mm512_mul_ps(pb[12], LD(12));
    a = _mm512_fmadd_ps(pb[0], LD(0), a);
    b = _mm512_fmadd_ps(pb[5], LD(5), b);
    c = _mm512_fmadd_ps(pb[9], LD(9), c);
    e = _mm512_fmadd_ps(pb[13], LD(13), e);
    a = _mm512_fmadd_ps(pb[1], LD(1), a);
    b = _mm512_fmadd_ps(pb[6], LD(6), b);
    c = _mm512_fmadd_ps(pb[10], LD(10), c);
    e = _mm512_fmadd_ps(pb[14], LD(14), e);
    a = _mm512_fmadd_ps(pb[2], LD(2), a);
    b = _mm512_fmadd_ps(pb[7], LD(7), b);
    c = _mm512_fmadd_ps(pb[11], LD(11), c);
    e = _mm512_fmadd_ps(pb[15], LD(15), e);
    a = _mm512_fmadd_ps(pb[3], LD(3), a);
#undef LD
    a = _mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, e));
    if (al)
        _mm512_store_ps(acc + j, a);
    else if (masked)
        _mm512_mask_storeu_ps(acc + j, k, a);
    else
        _mm512_storeu_ps(acc + j, a);
}

/* acc[0 .. nv chunks) += sum_i p_i V_i with acc in registers and the rows
 * read in memory order, one sequential stream (7% faster than chunk by
 * chunk across the 16 rows at T = 1024, d = dv = 64); even and odd rows in
 * two sets. Chunk 0 loads with kf, chunk nv - 1 with kl (al: acc is the
 * aligned copy: full aligned loads and stores). */
AX_INLINE void axpy_regs(float *acc, const float *p, const float *const v[16], int nv, __mmask16 kf,
                         __mmask16 kl, int al)
{
    __m512 a[8], b[8];
    for (int c = 0; c < nv; c++) {
        __mmask16 k = c == 0 ? kf : c == nv - 1 ? kl : (__mmask16)0xFFFF;
        a[c] = al ? _mm512_load_ps(acc + 16 * c) : _mm512_maskz_loadu_ps(k, acc + 16 * c);
        b[c] = _mm512_setzero_ps();
    }
    for (int i = 0; i < 16; i += 2) {
        const __m512 p0 = _mm512_set1_ps(p[i]), p1 = _mm512_set1_ps(p[i + 1]);
        for (int c = 0; c < nv; c++) {
            __mmask16 k = c == 0 ? kf : c == nv - 1 ? kl : (__mmask16)0xFFFF;
            a[c] = _mm512_fmadd_ps(p0, _mm512_maskz_loadu_ps(k, v[i] + 16 * c), a[c]);
            b[c] = _mm512_fmadd_ps(p1, _mm512_maskz_loadu_ps(k, v[i + 1] + 16 * c), b[c]);
        }
    }
    for (int c = 0; c < nv; c++) {
        __mmask16 k = c == 0 ? kf : c == nv - 1 ? kl : (__mmask16)0xFFFF;
        if (al)
            _mm512_store_ps(acc + 16 * c, _mm512_add_ps(a[c], b[c]));
        else
            _mm512_mask_storeu_ps(acc + 16 * c, k, _mm512_add_ps(a[c], b[c]));
    }
}

/* acc += sum_i p_i V_i for 16 rows (al: line bases, shifted acc): in
 * registers up to 128 columns, else 16 columns at a time over the rows. */
AX_INLINE void axpy_block(float *acc, const float *p, const float *const v[16], size_t dv, int al, unsigned vm)
{
    size_t nchunk = al ? dv / 16 + (vm ? 1 : 0) : (dv + 15) / 16;
    if (nchunk == 0) return;
    if (nchunk <= 8) {
        __mmask16 kf, kl;
        if (al) {
            kf = (__mmask16)(0xFFFFu << vm);
            kl = vm ? tail16(vm) : (__mmask16)0xFFFF;
            if (nchunk == 1) kf &= kl;
        } else {
            kf = 0xFFFF;
            kl = dv % 16 ? tail16(dv % 16) : (__mmask16)0xFFFF;
            if (nchunk == 1) kf = kl;
        }
        switch (nchunk) {
        case 1: axpy_regs(acc, p, v, 1, kf, kl, al); return;
        case 2: axpy_regs(acc, p, v, 2, kf, kl, al); return;
        case 3: axpy_regs(acc, p, v, 3, kf, kl, al); return;
        case 4: axpy_regs(acc, p, v, 4, kf, kl, al); return;
        case 5: axpy_regs(acc, p, v, 5, kf, kl, al); return;
        case 6: axpy_regs(acc, p, v, 6, kf, kl, al); return;
        case 7: axpy_regs(acc, p, v, 7, kf, kl, al); return;
        default: axpy_regs(acc, p, v, 8, kf, kl, al); return;
        }
    }
    __m512 pb[16];
    for (int i = 0; i < 16; i++) pb[i] = _mm512_set1_ps(p[i]);
    if (al) {
        axpy_chunk(acc, pb, v, 0, (__mmask16)(0xFFFFu << vm), 1, 1);
        for (size_t j = 16; j < dv; j += 16) axpy_chunk(acc, pb, v, j, 0xFFFF, 0, 1);
        if (vm) axpy_chunk(acc, pb, v, dv, tail16(vm), 1, 1);
    } else {
        size_t j = 0;
        for (; j + 16 <= dv; j += 16) axpy_chunk(acc, pb, v, j, 0xFFFF, 0, 0);
        if (j < dv) axpy_chunk(acc, pb, v, j, tail16(dv - j), 1, 0);
    }
}

/* acc += p V for one row (al as axpy_block). */
AX_INLINE void axpy1(float *acc, float p, const float *v, size_t dv, int al, unsigned vm)
{
    const __m512 pv = _mm512_set1_ps(p);
    if (al) {
        const size_t end = dv + (vm ? 16 : 0);
        for (size_t j = 0; j < end; j += 16) {
            __mmask16 k = (__mmask16)((j == 0 ? 0xFFFFu << vm : 0xFFFFu) & (j == dv ? (1u << vm) - 1u : 0xFFFFu));
            _mm512_store_ps(acc + j, _mm512_fmadd_ps(pv, _mm512_maskz_load_ps(k, v + j), _mm512_load_ps(acc + j)));
        }
    } else {
        for (size_t j = 0; j < dv; j += 16) {
            __mmask16 k = dv - j >= 16 ? (__mmask16)0xFFFF : tail16(dv - j);
            _mm512_mask_storeu_ps(acc + j, k,
                                  _mm512_fmadd_ps(pv, _mm512_maskz_loadu_ps(k, v + j), _mm512_maskz_loadu_ps(k, acc + j)));
        }
    }
}

/* Softmax bookkeeping of one block (scores s; -inf where unattended):
 * updates (m, l), rescales acc[0..nacc) when the max grows, writes p[16].
 * Returns the keys with p != 0 (whose value rows are then added; the
 * others are not read), or -1 when the state is poisoned (stop: the result
 * is NaN whatever follows). */
AX_INLINE int block_softmax(__m512 s, double *m, double *l, float *acc, size_t nacc, float *p)
{
    if (_mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q)) {
        *l = NAN;                       /* finalisation sees it */
        return -1;
    }
    float bm = hmax16(s);
    if (bm == NEG_INF) return 0;
    if (bm > *m) {
        double c = attnx_rescale_factor(*m, bm);
        *l *= c;
        rescale_acc(acc, nacc, (float)c);
        *m = bm;
    }
    __m512 pv = expf_diff_x16(s, _mm512_set1_ps((float)*m));
    _mm512_storeu_ps(p, pv);
    *l += hsum_pd8(widen_sum(pv));
    if (*l != *l) return -1;            /* +inf score: inf - inf */
    return (int)_mm512_cmp_ps_mask(pv, _mm512_setzero_ps(), _CMP_NEQ_UQ);
}

/* The fold over keys [0, T): q and acc are the caller's (al == 0) or the
 * shifted aligned copies (al == 1, nacc = dv + 16). */
AX_INLINE void online_run(const float *q, const float *K, const float *V, size_t T, size_t d, size_t dv,
                          float scale, const unsigned char *mask, double *m, double *l, float *acc, size_t nacc,
                          int al, unsigned km, unsigned vm, int pf)
{
    const __m512 sc = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(NEG_INF);
    float p[16];
    const float *v[16];
    uint32_t live = block_live(mask, 0, T < 16 ? T : 16), live_next = 0;
    __m512 s = live ? block_scores(q, K, 0, d, sc, live, al, km) : ninf, s_next = ninf;
    for (size_t t0 = 0; t0 < T; t0 += 16) {
        if (t0 + 16 < T) {
            size_t t1 = t0 + 16, nn = T - t1 < 16 ? T - t1 : 16;
            live_next = block_live(mask, t1, nn);
            s_next = live_next ? block_scores(q, K, t1, d, sc, live_next, al, km) : ninf;
        }
        if (pf && t0 + 16 + PF_KEYS <= T) prefetch_block(K, V, t0 + PF_KEYS, d, dv);
        if (live) {
            int nz = block_softmax(s, m, l, acc, nacc, p);
            if (nz < 0) break;
            if (nz == 0xFFFF || (nz && dv <= ZERO_ROW)) {
                /* p == 0 (masked, -inf, underflow): the value row is not
                 * read; a row of zeros stands in (0 * 0 adds nothing) */
                for (size_t i = 0; i < 16; i++) {
                    const float *r = V + (t0 + i) * dv;
                    v[i] = (nz >> i) & 1 ? (al ? line_base(r) : r) : zero_row;
                }
                axpy_block(acc, p, v, dv, al, vm);
            } else {
                for (uint32_t b = (uint32_t)nz; b; b &= b - 1) {
                    unsigned i = lowest_bit(b);
                    const float *r = V + (t0 + i) * dv;
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
#define KB 32          /* keys per block: two vectors of scores per query */
#define MR 8           /* queries per register tile: 16 accumulators */
#define KT_STACK 128   /* d up to this packs K on the stack */
#define FEW_QUERIES 4  /* below this, packing K costs more than it saves */

/* 16 rows r[i] (16 floats each) transposed: o[c * ostride + i] = r[i][c].
 * Unpack pairs, shuffle quads, then a 4x4 transpose of 128-bit lanes. */
AX_INLINE void transpose16_store(const __m512 *r, float *o, size_t ostride)
{
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* u[4g + e], 128-bit lane L: rows 4g .. 4g+3 of column 4L + e */
    for (int g = 0; g < 4; g++) {
        u[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
        u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
    }
    for (int e = 0; e < 4; e++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0x44), v1 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0xEE);
        __m512 v2 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0x44);
        __m512 v3 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0xEE);
        _mm512_storeu_ps(o + (size_t)(0 + e) * ostride, _mm512_shuffle_f32x4(v0, v2, 0x88));
        _mm512_storeu_ps(o + (size_t)(4 + e) * ostride, _mm512_shuffle_f32x4(v0, v2, 0xDD));
        _mm512_storeu_ps(o + (size_t)(8 + e) * ostride, _mm512_shuffle_f32x4(v1, v3, 0x88));
        _mm512_storeu_ps(o + (size_t)(12 + e) * ostride, _mm512_shuffle_f32x4(v1, v3, 0xDD));
    }
}

/* Kt[j][k] = Kb[k][j] for the keys k in `any` (zero columns for the
 * others, which stay unread). Rows j of Kt up to d rounded up to 16 are
 * written. */
static void pack_kt(const float *Kb, size_t d, uint32_t any, float *Kt)
{
    for (size_t j0 = 0; j0 < d; j0 += 16) {
        const __mmask16 m = d - j0 >= 16 ? (__mmask16)0xFFFF : tail16(d - j0);
        for (size_t h = 0; h < KB; h += 16) {
            __m512 r[16];
            for (size_t i = 0; i < 16; i++)
                r[i] = (any >> (h + i)) & 1 ? _mm512_maskz_loadu_ps(m, Kb + (h + i) * d + j0) : _mm512_setzero_ps();
            transpose16_store(r, Kt + KB * j0 + h, KB);
        }
    }
}

/* s[r][0..32) = dot(Q_r, key k) for r < mr, keys packed as Kt[j][k]. */
AX_INLINE void score_tile(const float *Q, size_t d, const float *Kt, int mr, float *s)
{
    __m512 a[MR][2];
    for (int r = 0; r < mr; r++) a[r][0] = a[r][1] = _mm512_setzero_ps();
    for (size_t j = 0; j < d; j++) {
        __m512 k0 = _mm512_loadu_ps(Kt + KB * j), k1 = _mm512_loadu_ps(Kt + KB * j + 16);
        for (int r = 0; r < mr; r++) {
            __m512 b = _mm512_set1_ps(Q[(size_t)r * d + j]);
            a[r][0] = _mm512_fmadd_ps(b, k0, a[r][0]);
            a[r][1] = _mm512_fmadd_ps(b, k1, a[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        _mm512_storeu_ps(s + KB * r, a[r][0]);
        _mm512_storeu_ps(s + KB * r + 16, a[r][1]);
    }
}

/* One 32-column slice of C_r += sum_i P[r][kidx[i]] V[kidx[i]] for r < mr
 * (k0, k1 mask the columns; all-ones except at the end of a row). */
AX_INLINE void pv_slice(const float *P, const unsigned char *kidx, int nk, const float *Vb, size_t dv,
                        int mr, float *C, size_t c, __mmask16 k0, __mmask16 k1, int full)
{
    __m512 a[MR][2];
    for (int r = 0; r < mr; r++) {
        a[r][0] = _mm512_maskz_loadu_ps(k0, C + (size_t)r * dv + c);
        a[r][1] = _mm512_maskz_loadu_ps(k1, C + (size_t)r * dv + c + 16);
    }
    for (int i = 0; i < nk; i++) {
        const int kk = full ? i : kidx[i];
        const float *vr = Vb + (size_t)kk * dv + c;
        __m512 v0, v1;
        if (full && k0 == 0xFFFF && k1 == 0xFFFF) {
            v0 = _mm512_loadu_ps(vr);
            v1 = _mm512_loadu_ps(vr + 16);
        } else {
            v0 = _mm512_maskz_loadu_ps(k0, vr);
            v1 = _mm512_maskz_loadu_ps(k1, vr + 16);
        }
        for (int r = 0; r < mr; r++) {
            __m512 b = _mm512_set1_ps(P[KB * r + kk]);
            a[r][0] = _mm512_fmadd_ps(b, v0, a[r][0]);
            a[r][1] = _mm512_fmadd_ps(b, v1, a[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        _mm512_mask_storeu_ps(C + (size_t)r * dv + c, k0, a[r][0]);
        _mm512_mask_storeu_ps(C + (size_t)r * dv + c + 16, k1, a[r][1]);
    }
}

/* C_r += sum_i P[r][kidx[i]] V[kidx[i]] for r < mr: ctx rows C (stride dv),
 * 32 columns at a time in registers. Every listed key has p != 0 in every
 * row; nk == KB means all keys of the block, in order. */
AX_INLINE void pv_tile(const float *P, const unsigned char *kidx, int nk, const float *Vb, size_t dv,
                       int mr, float *C)
{
    size_t c = 0;
    if (nk == KB) {
        for (; c + 32 <= dv; c += 32) pv_slice(P, kidx, KB, Vb, dv, mr, C, c, 0xFFFF, 0xFFFF, 1);
    } else {
        for (; c + 32 <= dv; c += 32) pv_slice(P, kidx, nk, Vb, dv, mr, C, c, 0xFFFF, 0xFFFF, 0);
    }
    if (c < dv) {
        size_t rem = dv - c;
        __mmask16 k0 = rem >= 16 ? (__mmask16)0xFFFF : tail16(rem);
        __mmask16 k1 = rem > 16 ? tail16(rem - 16) : (__mmask16)0;
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

/* Queries [qa, qa + nr) (nr <= RQ), all against keys [0, T). */
static void rows_chunk(const float *Q, size_t nr, size_t qa, const float *K, const float *V, size_t T,
                       size_t d, size_t dv, float scale, const unsigned char *mask,
                       ptrdiff_t mask_row_stride, int causal, float *ctx, float *Kt)
{
    double m[RQ], l[RQ];
    float S[MR * KB], P[MR * KB];
    uint32_t live[RQ];
    unsigned char kidx[KB];
    const __m512 sc = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(NEG_INF);
    const __m512 zero = _mm512_setzero_ps();
    for (size_t r = 0; r < nr; r++) {
        m[r] = NEG_INF;
        l[r] = 0.0;
        float *c = ctx + r * dv;
        for (size_t j = 0; j < dv; j += 16)
            _mm512_mask_storeu_ps(c + j, dv - j >= 16 ? (__mmask16)0xFFFF : tail16(dv - j), zero);
    }
    /* causal: the last query attends keys < qa + nr */
    size_t tend = causal && qa + nr < T ? qa + nr : T;
    for (size_t t0 = 0; t0 < tend; t0 += KB) {
        size_t kn = tend - t0 < KB ? tend - t0 : KB;
        const uint32_t base = kn == 32 ? 0xFFFFFFFFu : (1u << kn) - 1u;
        uint32_t any = 0;
        for (size_t r = 0; r < nr; r++) {
            uint32_t lv = base;
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
            uint32_t gl = 0;
            for (int r = 0; r < mr; r++) gl |= live[g + r];
            if (!gl) continue;
            const float *Qg = Q + g * d;
#define SCORE_CALL(n) score_tile(Qg, d, Kt, n, S)
            TILE_SWITCH(mr, SCORE_CALL)
#undef SCORE_CALL
            uint32_t colall = 0xFFFFFFFFu, colany = 0;
            for (int r = 0; r < mr; r++) {
                size_t row = g + (size_t)r;
                uint32_t lv = live[row];
                __m512 s0 = _mm512_mask_blend_ps((__mmask16)lv, ninf, _mm512_mul_ps(sc, _mm512_loadu_ps(S + KB * r)));
                __m512 s1 = _mm512_mask_blend_ps((__mmask16)(lv >> 16), ninf,
                                                 _mm512_mul_ps(sc, _mm512_loadu_ps(S + KB * r + 16)));
                float bm = NEG_INF;
                if (lv) {
                    if (_mm512_cmp_ps_mask(s0, s0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(s1, s1, _CMP_UNORD_Q))
                        l[row] = NAN;
                    else
                        bm = hmax16(_mm512_max_ps(s0, s1));
                }
                if (bm == NEG_INF) {
                    _mm512_storeu_ps(P + KB * r, zero);
                    _mm512_storeu_ps(P + KB * r + 16, zero);
                    colall = 0;
                    continue;
                }
                if (bm > m[row]) {
                    double c = attnx_rescale_factor(m[row], bm);
                    l[row] *= c;
                    rescale_acc(ctx + row * dv, dv, (float)c);
                    m[row] = bm;
                }
                const __m512 mv = _mm512_set1_ps((float)m[row]);
                __m512 p0 = expf_diff_x16(s0, mv), p1 = expf_diff_x16(s1, mv);
                l[row] += hsum_pd8(_mm512_add_pd(widen_sum(p0), widen_sum(p1)));
                uint32_t nz = (uint32_t)_mm512_cmp_ps_mask(p0, zero, _CMP_NEQ_UQ) |
                              (uint32_t)_mm512_cmp_ps_mask(p1, zero, _CMP_NEQ_UQ) << 16;
                if (l[row] != l[row]) {         /* +inf score: poisoned, skip */
                    nz = 0;
                    p0 = p1 = zero;
                }
                _mm512_storeu_ps(P + KB * r, p0);
                _mm512_storeu_ps(P + KB * r + 16, p1);
                colall &= nz;
                colany |= nz;
            }
            /* keys every row of the tile weighs: the register-blocked tile */
            int nk = 0;
            for (uint32_t b = colall; b; b &= b - 1) kidx[nk++] = (unsigned char)lowest_bit(b);
            if (nk) {
                float *Cg = ctx + g * dv;
#define PV_CALL(n) pv_tile(P, kidx, nk, Vb, dv, n, Cg)
                TILE_SWITCH(mr, PV_CALL)
#undef PV_CALL
            }
            /* keys only some rows weigh: row by row, skipping p == 0 */
            for (uint32_t b = colany & ~colall; b; b &= b - 1) {
                unsigned k = lowest_bit(b);
                for (int r = 0; r < mr; r++) {
                    float pr = P[KB * r + k];
                    if (pr != 0.0f) axpy1(ctx + (g + (size_t)r) * dv, pr, Vb + (size_t)k * dv, dv, 0, 0);
                }
            }
        }
    }
    for (size_t r = 0; r < nr; r++) attnx_online_finish_f32(m[r], l[r], ctx + r * dv, dv);
}

#define KF_T float
#define KF_W 16
#define KF_SFX f32_avx512
#define KF_ALIGNED 1
#define KF_FINISH attnx_online_finish_f32
#include "kernels_fold.h"

const attnx_kernels_f32 attnx_kernels_f32_avx512 = {
    "avx512",
    exp_f32_avx512,
    dot_scores_f32_avx512,
    softmax_f32_avx512,
    log_softmax_f32_avx512,
    context_f32_avx512,
    attend_online_f32_avx512,
    attend_rows_f32_avx512,
};

#endif /* ATTNX_HAVE_X86 */
