/*
 * simd/avx512.h -- the vector vocabulary for AVX-512F (32 zmm registers):
 * 16 floats (ATTNX_F32 defined) or 8 doubles a vector. The names and their
 * meaning are listed at the top of simd/avx2.h. Uses AVX-512F alone (plus
 * the AVX2/FMA every AVX-512F CPU has), which is all dispatch checks for.
 * Tails and predicates are opmask registers: a partial load or store never
 * touches the lanes outside.
 */
#ifndef ATTNX_SIMD_AVX512_H
#define ATTNX_SIMD_AVX512_H

#include <immintrin.h>
#include <stdint.h>

#include "simd/x86.h"

/* 32 registers: two sets of 8 accumulators fit at every slice width */
#define VX_DOT_CHAINS 1
#define VX_EXP_HORNER 0
#define VX_CTX_PAIR_NV 8
#define VX_HAS_FMA 1
#define VX_UNROLL 2
#define VX_TILE_ROWS 8   /* 16 accumulators of 32 */
#define VX_ROWS_KERNEL 1
#define VX_ALIGN_ROWS 1

#if defined(ATTNX_F32)
/* ----------------------------------------------------------- 16 floats */
typedef float vx_float;
typedef __m512 vx_t;
typedef __mmask16 vx_mask_t;
#define VX_W 16
#define VX_DOT_ROWS 16
#define VX_MANT 23
/* the intrinsic of this element type, its integer twin, the casts */
#define VXI(op) op##_ps
#define VXM(op) op##_ps_mask
#define VXB(op) op##_epi32
#define VX_TO_SI _mm512_castps_si512
#define VX_FROM_SI _mm512_castsi512_ps
#else
/* ------------------------------------------------------------ 8 doubles */
typedef double vx_float;
typedef __m512d vx_t;
typedef __mmask8 vx_mask_t;
#define VX_W 8
#define VX_DOT_ROWS 8
#define VX_MANT 52
#define VXI(op) op##_pd
#define VXM(op) op##_pd_mask
#define VXB(op) op##_epi64
#define VX_TO_SI _mm512_castpd_si512
#define VX_FROM_SI _mm512_castsi512_pd
#endif
typedef vx_mask_t vx_bool_t;
typedef __m512i vx_bits_t;

/* lanes [0, n) and [n, VX_W) */
VX_INLINE vx_mask_t vx_tail(size_t n) { return (vx_mask_t)((1u << n) - 1u); }
VX_INLINE vx_mask_t vx_head(size_t n) { return (vx_mask_t)(((1u << VX_W) - 1u) << n); }
/* lane i = lane (i + k) mod VX_W (simd/avx2.h) */
typedef __m512i vx_rot_t;
#if defined(ATTNX_F32)
VX_INLINE vx_rot_t vx_rot(unsigned k)
{
    const __m512i i = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm512_and_si512(_mm512_add_epi32(i, _mm512_set1_epi32((int)k)), _mm512_set1_epi32(15));
}
VX_INLINE vx_t vx_rotate(vx_t v, vx_rot_t r) { return _mm512_permutexvar_ps(r, v); }
#else
VX_INLINE vx_rot_t vx_rot(unsigned k)
{
    const __m512i i = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm512_and_si512(_mm512_add_epi64(i, _mm512_set1_epi64((long long)k)), _mm512_set1_epi64(7));
}
VX_INLINE vx_t vx_rotate(vx_t v, vx_rot_t r) { return _mm512_permutexvar_pd(r, v); }
#endif
VX_INLINE vx_t vx_zero(void) { return VXI(_mm512_setzero)(); }
VX_INLINE vx_t vx_set1(vx_float x) { return VXI(_mm512_set1)(x); }
VX_INLINE vx_t vx_load(const vx_float *p) { return VXI(_mm512_loadu)(p); }
VX_INLINE void vx_store(vx_float *p, vx_t v) { VXI(_mm512_storeu)(p, v); }
VX_INLINE vx_t vx_load_a(const vx_float *p) { return VXI(_mm512_load)(p); }
VX_INLINE void vx_store_a(vx_float *p, vx_t v) { VXI(_mm512_store)(p, v); }
VX_INLINE vx_t vx_load_part(const vx_float *p, vx_mask_t m) { return VXI(_mm512_maskz_loadu)(m, p); }
VX_INLINE void vx_store_part(vx_float *p, vx_mask_t m, vx_t v) { VXI(_mm512_mask_storeu)(p, m, v); }
VX_INLINE vx_t vx_load_part_or(const vx_float *p, vx_mask_t m, vx_float f) { return VXI(_mm512_mask_loadu)(vx_set1(f), m, p); }
VX_INLINE vx_t vx_keep_tail(vx_mask_t m, vx_t v) { return VXI(_mm512_maskz_mov)(m, v); }
VX_INLINE vx_t vx_add(vx_t a, vx_t b) { return VXI(_mm512_add)(a, b); }
VX_INLINE vx_t vx_sub(vx_t a, vx_t b) { return VXI(_mm512_sub)(a, b); }
VX_INLINE vx_t vx_mul(vx_t a, vx_t b) { return VXI(_mm512_mul)(a, b); }
VX_INLINE vx_t vx_div(vx_t a, vx_t b) { return VXI(_mm512_div)(a, b); }
VX_INLINE vx_t vx_fma(vx_t a, vx_t b, vx_t c) { return VXI(_mm512_fmadd)(a, b, c); }
VX_INLINE vx_t vx_fnma(vx_t a, vx_t b, vx_t c) { return VXI(_mm512_fnmadd)(a, b, c); }
VX_INLINE vx_t vx_max(vx_t a, vx_t b) { return VXI(_mm512_max)(a, b); }
VX_INLINE vx_t vx_min(vx_t a, vx_t b) { return VXI(_mm512_min)(a, b); }
VX_INLINE vx_bool_t vx_lt(vx_t a, vx_t b) { return VXM(_mm512_cmp)(a, b, _CMP_LT_OQ); }
VX_INLINE vx_bool_t vx_le(vx_t a, vx_t b) { return VXM(_mm512_cmp)(a, b, _CMP_LE_OQ); }
VX_INLINE vx_bool_t vx_ge(vx_t a, vx_t b) { return VXM(_mm512_cmp)(a, b, _CMP_GE_OQ); }
VX_INLINE vx_bool_t vx_ne(vx_t a, vx_t b) { return VXM(_mm512_cmp)(a, b, _CMP_NEQ_OQ); }
VX_INLINE vx_bool_t vx_unord(vx_t a, vx_t b) { return VXM(_mm512_cmp)(a, b, _CMP_UNORD_Q); }
VX_INLINE vx_bool_t vx_and_b(vx_bool_t a, vx_bool_t b) { return (vx_bool_t)(a & b); }
VX_INLINE vx_bool_t vx_or_b(vx_bool_t a, vx_bool_t b) { return (vx_bool_t)(a | b); }
VX_INLINE vx_bool_t vx_false(void) { return 0; }
VX_INLINE int vx_any(vx_bool_t b) { return b != 0; }
/* t where b, else f */
VX_INLINE vx_t vx_select(vx_bool_t b, vx_t f, vx_t t) { return VXI(_mm512_mask_blend)(b, f, t); }
/* v where b, else 0 */
VX_INLINE vx_t vx_keep(vx_bool_t b, vx_t v) { return VXI(_mm512_maskz_mov)(b, v); }
VX_INLINE vx_bool_t vx_lanes(unsigned b) { return (vx_bool_t)b; }
VX_INLINE unsigned vx_nz_bits(vx_t v) { return (unsigned)VXM(_mm512_cmp)(v, vx_zero(), _CMP_NEQ_UQ); }
VX_INLINE vx_bits_t vx_to_bits(vx_t v) { return VX_TO_SI(v); }
VX_INLINE vx_t vx_from_bits(vx_bits_t b) { return VX_FROM_SI(b); }
VX_INLINE vx_bits_t vb_set1(int64_t x) { return VXB(_mm512_set1)(x); }
VX_INLINE vx_bits_t vb_add(vx_bits_t a, vx_bits_t b) { return VXB(_mm512_add)(a, b); }
VX_INLINE vx_bits_t vb_sub(vx_bits_t a, vx_bits_t b) { return VXB(_mm512_sub)(a, b); }
VX_INLINE vx_bits_t vb_shr1(vx_bits_t a) { return VXB(_mm512_srli)(a, 1); }
VX_INLINE vx_bits_t vb_shl_mant(vx_bits_t a) { return VXB(_mm512_slli)(a, VX_MANT); }

#if defined(ATTNX_F32)
/* |x|, the sign bit of x alone, and a bitwise or (tanh), AVX-512F alone */
VX_INLINE vx_t vx_abs(vx_t x) { return _mm512_castsi512_ps(_mm512_and_epi32(_mm512_castps_si512(x), _mm512_set1_epi32(0x7FFFFFFF))); }
VX_INLINE vx_t vx_sign(vx_t x) { return _mm512_castsi512_ps(_mm512_andnot_epi32(_mm512_set1_epi32(0x7FFFFFFF), _mm512_castps_si512(x))); }
VX_INLINE vx_t vx_or_bits(vx_t a, vx_t b) { return _mm512_castsi512_ps(_mm512_or_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b))); }

/* the upper 8 floats, with AVX-512F alone (no DQ) */
VX_INLINE __m256 vx_upper8(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }

VX_INLINE vx_float vx_hmax(vx_t v)
{
    __m256 a = _mm256_max_ps(_mm512_castps512_ps256(v), vx_upper8(v));
    __m128 b = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_max_ps(b, _mm_movehl_ps(b, b));
    b = _mm_max_ss(b, _mm_shuffle_ps(b, b, 1));
    return _mm_cvtss_f32(b);
}

typedef __m512d vx_wide_t;
VX_INLINE vx_wide_t vx_wide_zero(void) { return _mm512_setzero_pd(); }
VX_INLINE vx_wide_t vx_wide_add(vx_wide_t s, vx_t v)
{
    return _mm512_add_pd(s, _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(vx_upper8(v))));
}
VX_INLINE vx_wide_t vx_wide_sum2(vx_wide_t a, vx_wide_t b) { return _mm512_add_pd(a, b); }
VX_INLINE double vx_wide_hsum(vx_wide_t v) { return vx_sum4d(_mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1))); }

VX_INLINE vx_t vx_log_sub(vx_t v, double a, double b)
{
    const __m512d av = _mm512_set1_pd(a), bv = _mm512_set1_pd(b);
    __m512d lo = _mm512_sub_pd(_mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), av), bv);
    __m512d hi = _mm512_sub_pd(_mm512_sub_pd(_mm512_cvtps_pd(vx_upper8(v)), av), bv);
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo))),
                                               _mm256_castps_pd(_mm512_cvtpd_ps(hi)), 1));
}

VX_INLINE void vx_transpose_store(const vx_t *r, vx_float *o, size_t s)
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
        _mm512_storeu_ps(o + (size_t)(0 + e) * s, _mm512_shuffle_f32x4(v0, v2, 0x88));
        _mm512_storeu_ps(o + (size_t)(4 + e) * s, _mm512_shuffle_f32x4(v0, v2, 0xDD));
        _mm512_storeu_ps(o + (size_t)(8 + e) * s, _mm512_shuffle_f32x4(v1, v3, 0x88));
        _mm512_storeu_ps(o + (size_t)(12 + e) * s, _mm512_shuffle_f32x4(v1, v3, 0xDD));
    }
}

VX_INLINE vx_t vx_transpose_sum(const vx_t *a)
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

#else
VX_INLINE vx_float vx_hmax(vx_t v)
{
    __m256d a = _mm256_max_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
    __m128d b = _mm_max_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_max_sd(b, _mm_unpackhi_pd(b, b)));
}

VX_INLINE double vx_hsum(vx_t v) { return vx_sum4d(_mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1))); }

/* |x|, the sign bit of x alone, and a bitwise or (float64 tanh); integer
 * ops, since AVX-512F has no and/or on doubles (that is AVX-512DQ) */
VX_INLINE vx_t vx_abs(vx_t x) { return _mm512_castsi512_pd(_mm512_and_epi64(_mm512_castpd_si512(x), _mm512_set1_epi64(0x7FFFFFFFFFFFFFFFll))); }
VX_INLINE vx_t vx_sign(vx_t x) { return _mm512_castsi512_pd(_mm512_andnot_epi64(_mm512_set1_epi64(0x7FFFFFFFFFFFFFFFll), _mm512_castpd_si512(x))); }
VX_INLINE vx_t vx_or_bits(vx_t a, vx_t b) { return _mm512_castsi512_pd(_mm512_or_epi64(_mm512_castpd_si512(a), _mm512_castpd_si512(b))); }

/* 8 lanes to 4 by an exact two-sum, then as in simd/avx2.h */
VX_INLINE double vx_hsum2(vx_t s, vx_t e)
{
    __m256d s0 = _mm512_castpd512_pd256(s), s1 = _mm512_extractf64x4_pd(s, 1);
    __m256d t4 = _mm256_add_pd(s0, s1), b4 = _mm256_sub_pd(t4, s0);
    __m256d e4 = _mm256_add_pd(_mm256_sub_pd(s0, _mm256_sub_pd(t4, b4)), _mm256_sub_pd(s1, b4));
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

VX_INLINE void vx_transpose_store(const vx_t *r, vx_float *o, size_t s)
{
    __m512d t0 = _mm512_unpacklo_pd(r[0], r[1]), t1 = _mm512_unpackhi_pd(r[0], r[1]);
    __m512d t2 = _mm512_unpacklo_pd(r[2], r[3]), t3 = _mm512_unpackhi_pd(r[2], r[3]);
    __m512d t4 = _mm512_unpacklo_pd(r[4], r[5]), t5 = _mm512_unpackhi_pd(r[4], r[5]);
    __m512d t6 = _mm512_unpacklo_pd(r[6], r[7]), t7 = _mm512_unpackhi_pd(r[6], r[7]);
    __m512d u0 = _mm512_shuffle_f64x2(t0, t2, 0x88), u1 = _mm512_shuffle_f64x2(t0, t2, 0xDD);
    __m512d u2 = _mm512_shuffle_f64x2(t1, t3, 0x88), u3 = _mm512_shuffle_f64x2(t1, t3, 0xDD);
    __m512d u4 = _mm512_shuffle_f64x2(t4, t6, 0x88), u5 = _mm512_shuffle_f64x2(t4, t6, 0xDD);
    __m512d u6 = _mm512_shuffle_f64x2(t5, t7, 0x88), u7 = _mm512_shuffle_f64x2(t5, t7, 0xDD);
    _mm512_storeu_pd(o + 0 * s, _mm512_shuffle_f64x2(u0, u4, 0x88));
    _mm512_storeu_pd(o + 4 * s, _mm512_shuffle_f64x2(u0, u4, 0xDD));
    _mm512_storeu_pd(o + 2 * s, _mm512_shuffle_f64x2(u1, u5, 0x88));
    _mm512_storeu_pd(o + 6 * s, _mm512_shuffle_f64x2(u1, u5, 0xDD));
    _mm512_storeu_pd(o + 1 * s, _mm512_shuffle_f64x2(u2, u6, 0x88));
    _mm512_storeu_pd(o + 5 * s, _mm512_shuffle_f64x2(u2, u6, 0xDD));
    _mm512_storeu_pd(o + 3 * s, _mm512_shuffle_f64x2(u3, u7, 0x88));
    _mm512_storeu_pd(o + 7 * s, _mm512_shuffle_f64x2(u3, u7, 0xDD));
}

/* three rounds of pairwise shuffles */
VX_INLINE vx_t vx_transpose_sum(const vx_t *a)
{
    /* each 128-bit lane: (pair sum of a_even, pair sum of a_odd) */
    __m512d t01 = _mm512_add_pd(_mm512_unpacklo_pd(a[0], a[1]), _mm512_unpackhi_pd(a[0], a[1]));
    __m512d t23 = _mm512_add_pd(_mm512_unpacklo_pd(a[2], a[3]), _mm512_unpackhi_pd(a[2], a[3]));
    __m512d t45 = _mm512_add_pd(_mm512_unpacklo_pd(a[4], a[5]), _mm512_unpackhi_pd(a[4], a[5]));
    __m512d t67 = _mm512_add_pd(_mm512_unpacklo_pd(a[6], a[7]), _mm512_unpackhi_pd(a[6], a[7]));
    /* 128-bit lanes (L0+L1, L2+L3) of t01 then of t23 */
    __m512d u0 = _mm512_add_pd(_mm512_shuffle_f64x2(t01, t23, 0x88), _mm512_shuffle_f64x2(t01, t23, 0xDD));
    __m512d u1 = _mm512_add_pd(_mm512_shuffle_f64x2(t45, t67, 0x88), _mm512_shuffle_f64x2(t45, t67, 0xDD));
    return _mm512_add_pd(_mm512_shuffle_f64x2(u0, u1, 0x88), _mm512_shuffle_f64x2(u0, u1, 0xDD));
}
#endif

#endif /* ATTNX_SIMD_AVX512_H */
