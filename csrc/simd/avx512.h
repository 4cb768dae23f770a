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

#if defined(_MSC_VER)
#define VX_INLINE static __forceinline
#else
#define VX_INLINE static inline __attribute__((always_inline))
#endif

/* 32 registers: two sets of 8 accumulators fit at every slice width */
#define VX_DOT_CHAINS 1
#define VX_EXP_HORNER 0
#define VX_CTX_PAIR_NV 8

#if defined(ATTNX_F32)
/* ----------------------------------------------------------- 16 floats */
typedef float vx_float;
typedef __m512 vx_t;
typedef __mmask16 vx_mask_t;
typedef __mmask16 vx_bool_t;
typedef __m512i vx_bits_t;
#define VX_W 16
#define VX_DOT_ROWS 16

VX_INLINE vx_mask_t vx_tail(size_t n) { return (__mmask16)((1u << n) - 1u); }
VX_INLINE vx_t vx_zero(void) { return _mm512_setzero_ps(); }
VX_INLINE vx_t vx_set1(vx_float x) { return _mm512_set1_ps(x); }
VX_INLINE vx_t vx_load(const vx_float *p) { return _mm512_loadu_ps(p); }
VX_INLINE void vx_store(vx_float *p, vx_t v) { _mm512_storeu_ps(p, v); }
VX_INLINE vx_t vx_load_part(const vx_float *p, vx_mask_t m) { return _mm512_maskz_loadu_ps(m, p); }
VX_INLINE void vx_store_part(vx_float *p, vx_mask_t m, vx_t v) { _mm512_mask_storeu_ps(p, m, v); }
VX_INLINE vx_t vx_add(vx_t a, vx_t b) { return _mm512_add_ps(a, b); }
VX_INLINE vx_t vx_sub(vx_t a, vx_t b) { return _mm512_sub_ps(a, b); }
VX_INLINE vx_t vx_mul(vx_t a, vx_t b) { return _mm512_mul_ps(a, b); }
VX_INLINE vx_t vx_fma(vx_t a, vx_t b, vx_t c) { return _mm512_fmadd_ps(a, b, c); }
VX_INLINE vx_t vx_fnma(vx_t a, vx_t b, vx_t c) { return _mm512_fnmadd_ps(a, b, c); }
VX_INLINE vx_t vx_max(vx_t a, vx_t b) { return _mm512_max_ps(a, b); }
VX_INLINE vx_t vx_min(vx_t a, vx_t b) { return _mm512_min_ps(a, b); }
VX_INLINE vx_bool_t vx_lt(vx_t a, vx_t b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
VX_INLINE vx_bool_t vx_le(vx_t a, vx_t b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
VX_INLINE vx_bool_t vx_ge(vx_t a, vx_t b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
VX_INLINE vx_bool_t vx_and_b(vx_bool_t a, vx_bool_t b) { return (vx_bool_t)(a & b); }
VX_INLINE int vx_any(vx_bool_t b) { return b != 0; }
VX_INLINE vx_t vx_select(vx_bool_t b, vx_t f, vx_t t) { return _mm512_mask_blend_ps(b, f, t); }
VX_INLINE vx_t vx_keep(vx_bool_t b, vx_t v) { return _mm512_maskz_mov_ps(b, v); }
VX_INLINE vx_bits_t vx_to_bits(vx_t v) { return _mm512_castps_si512(v); }
VX_INLINE vx_t vx_from_bits(vx_bits_t b) { return _mm512_castsi512_ps(b); }
VX_INLINE vx_bits_t vb_set1(int64_t x) { return _mm512_set1_epi32((int32_t)x); }
VX_INLINE vx_bits_t vb_add(vx_bits_t a, vx_bits_t b) { return _mm512_add_epi32(a, b); }
VX_INLINE vx_bits_t vb_sub(vx_bits_t a, vx_bits_t b) { return _mm512_sub_epi32(a, b); }
VX_INLINE vx_bits_t vb_shr1(vx_bits_t a) { return _mm512_srli_epi32(a, 1); }
VX_INLINE vx_bits_t vb_shl_mant(vx_bits_t a) { return _mm512_slli_epi32(a, 23); }

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
/* ------------------------------------------------------------ 8 doubles */
typedef double vx_float;
typedef __m512d vx_t;
typedef __mmask8 vx_mask_t;
typedef __mmask8 vx_bool_t;
typedef __m512i vx_bits_t;
#define VX_W 8
#define VX_DOT_ROWS 8

VX_INLINE vx_mask_t vx_tail(size_t n) { return (__mmask8)((1u << n) - 1u); }
VX_INLINE vx_t vx_zero(void) { return _mm512_setzero_pd(); }
VX_INLINE vx_t vx_set1(vx_float x) { return _mm512_set1_pd(x); }
VX_INLINE vx_t vx_load(const vx_float *p) { return _mm512_loadu_pd(p); }
VX_INLINE void vx_store(vx_float *p, vx_t v) { _mm512_storeu_pd(p, v); }
VX_INLINE vx_t vx_load_part(const vx_float *p, vx_mask_t m) { return _mm512_maskz_loadu_pd(m, p); }
VX_INLINE void vx_store_part(vx_float *p, vx_mask_t m, vx_t v) { _mm512_mask_storeu_pd(p, m, v); }
VX_INLINE vx_t vx_add(vx_t a, vx_t b) { return _mm512_add_pd(a, b); }
VX_INLINE vx_t vx_sub(vx_t a, vx_t b) { return _mm512_sub_pd(a, b); }
VX_INLINE vx_t vx_mul(vx_t a, vx_t b) { return _mm512_mul_pd(a, b); }
VX_INLINE vx_t vx_fma(vx_t a, vx_t b, vx_t c) { return _mm512_fmadd_pd(a, b, c); }
VX_INLINE vx_t vx_fnma(vx_t a, vx_t b, vx_t c) { return _mm512_fnmadd_pd(a, b, c); }
VX_INLINE vx_t vx_max(vx_t a, vx_t b) { return _mm512_max_pd(a, b); }
VX_INLINE vx_t vx_min(vx_t a, vx_t b) { return _mm512_min_pd(a, b); }
VX_INLINE vx_bool_t vx_lt(vx_t a, vx_t b) { return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ); }
VX_INLINE vx_bool_t vx_le(vx_t a, vx_t b) { return _mm512_cmp_pd_mask(a, b, _CMP_LE_OQ); }
VX_INLINE vx_bool_t vx_ge(vx_t a, vx_t b) { return _mm512_cmp_pd_mask(a, b, _CMP_GE_OQ); }
VX_INLINE vx_bool_t vx_and_b(vx_bool_t a, vx_bool_t b) { return (vx_bool_t)(a & b); }
VX_INLINE int vx_any(vx_bool_t b) { return b != 0; }
VX_INLINE vx_t vx_select(vx_bool_t b, vx_t f, vx_t t) { return _mm512_mask_blend_pd(b, f, t); }
VX_INLINE vx_t vx_keep(vx_bool_t b, vx_t v) { return _mm512_maskz_mov_pd(b, v); }
VX_INLINE vx_bits_t vx_to_bits(vx_t v) { return _mm512_castpd_si512(v); }
VX_INLINE vx_t vx_from_bits(vx_bits_t b) { return _mm512_castsi512_pd(b); }
VX_INLINE vx_bits_t vb_set1(int64_t x) { return _mm512_set1_epi64((long long)x); }
VX_INLINE vx_bits_t vb_add(vx_bits_t a, vx_bits_t b) { return _mm512_add_epi64(a, b); }
VX_INLINE vx_bits_t vb_sub(vx_bits_t a, vx_bits_t b) { return _mm512_sub_epi64(a, b); }
VX_INLINE vx_bits_t vb_shr1(vx_bits_t a) { return _mm512_srli_epi64(a, 1); }
VX_INLINE vx_bits_t vb_shl_mant(vx_bits_t a) { return _mm512_slli_epi64(a, 52); }

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
