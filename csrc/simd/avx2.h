/*
 * simd/avx2.h -- the vector vocabulary for AVX2 + FMA (16 ymm registers).
 *
 * Included by a level file that first defines ATTNX_F32 (8 floats a vector)
 * or nothing (4 doubles a vector). Every ISA header defines the same names;
 * the kernels in csrc/kernels are written against these and nothing else:
 *
 *   vx_float, vx_t, VX_W     element type, vector type, lanes
 *   vx_mask_t, vx_tail(n)    the first n lanes (0 <= n <= VX_W), for
 *                            vx_load_part/vx_store_part, which never touch
 *                            the lanes outside (vmaskmov)
 *   vx_bool_t                a lane predicate (compare result)
 *   vx_bits_t                the lanes as integers of the element's width
 *   vx_max(a, b), vx_min     b when either lane is NaN (x86 semantics; NEON's
 *                            FMAX returns NaN, so "put the value second"
 *                            keeps a NaN at every level)
 *   vx_fma(a, b, c)          a * b + c, one rounding where the ISA has FMA
 *   vx_fnma(a, b, c)         c - a * b
 *   vx_transpose_sum(a)      lane i = the sum of the lanes of a[i], i < VX_W
 *
 * and the tuning constants that differ by register file (not by algorithm):
 *
 *   VX_DOT_ROWS              key rows per dot_scores step (a multiple of VX_W)
 *   VX_DOT_CHAINS            independent partial sums per row and lane in
 *                            dot_scores (1: the lanes are the chains)
 *   VX_CTX_PAIR_NV           context: column slices up to this many vectors
 *                            sum even and odd rows apart (FMA latency)
 *   VX_EXP_HORNER            1: exp's polynomial in plain Horner form (one
 *                            lane, no FMA: the chain's latency is no
 *                            concern), 0: Horner in r^2 over pairs
 *
 * This is the only header, with simd/avx512.h, simd/neon.h and
 * simd/scalar.h, where intrinsics appear.
 */
#ifndef ATTNX_SIMD_AVX2_H
#define ATTNX_SIMD_AVX2_H

#include <immintrin.h>
#include <stdint.h>

#if defined(_MSC_VER)
#define VX_INLINE static __forceinline
#else
#define VX_INLINE static inline __attribute__((always_inline))
#endif

#define VX_DOT_ROWS 8
#define VX_DOT_CHAINS 1
#define VX_EXP_HORNER 0
#define VX_CTX_PAIR_NV 3

#if defined(ATTNX_F32)
/* ------------------------------------------------------------ 8 floats */
typedef float vx_float;
typedef __m256 vx_t;
typedef __m256i vx_mask_t;
typedef __m256 vx_bool_t;
typedef __m256i vx_bits_t;
#define VX_W 8

static const int32_t vx_tail_tab[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
VX_INLINE vx_mask_t vx_tail(size_t n) { return _mm256_loadu_si256((const __m256i *)(const void *)(vx_tail_tab + 8 - n)); }

VX_INLINE vx_t vx_zero(void) { return _mm256_setzero_ps(); }
VX_INLINE vx_t vx_set1(vx_float x) { return _mm256_set1_ps(x); }
VX_INLINE vx_t vx_load(const vx_float *p) { return _mm256_loadu_ps(p); }
VX_INLINE void vx_store(vx_float *p, vx_t v) { _mm256_storeu_ps(p, v); }
VX_INLINE vx_t vx_load_part(const vx_float *p, vx_mask_t m) { return _mm256_maskload_ps(p, m); }
VX_INLINE void vx_store_part(vx_float *p, vx_mask_t m, vx_t v) { _mm256_maskstore_ps(p, m, v); }
VX_INLINE vx_t vx_add(vx_t a, vx_t b) { return _mm256_add_ps(a, b); }
VX_INLINE vx_t vx_sub(vx_t a, vx_t b) { return _mm256_sub_ps(a, b); }
VX_INLINE vx_t vx_mul(vx_t a, vx_t b) { return _mm256_mul_ps(a, b); }
VX_INLINE vx_t vx_fma(vx_t a, vx_t b, vx_t c) { return _mm256_fmadd_ps(a, b, c); }
VX_INLINE vx_t vx_fnma(vx_t a, vx_t b, vx_t c) { return _mm256_fnmadd_ps(a, b, c); }
VX_INLINE vx_t vx_max(vx_t a, vx_t b) { return _mm256_max_ps(a, b); }
VX_INLINE vx_t vx_min(vx_t a, vx_t b) { return _mm256_min_ps(a, b); }
VX_INLINE vx_bool_t vx_lt(vx_t a, vx_t b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
VX_INLINE vx_bool_t vx_le(vx_t a, vx_t b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
VX_INLINE vx_bool_t vx_ge(vx_t a, vx_t b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
VX_INLINE vx_bool_t vx_and_b(vx_bool_t a, vx_bool_t b) { return _mm256_and_ps(a, b); }
VX_INLINE int vx_any(vx_bool_t b) { return _mm256_movemask_ps(b) != 0; }
/* t where b, else f */
VX_INLINE vx_t vx_select(vx_bool_t b, vx_t f, vx_t t) { return _mm256_blendv_ps(f, t, b); }
/* v where b, else 0 */
VX_INLINE vx_t vx_keep(vx_bool_t b, vx_t v) { return _mm256_and_ps(b, v); }
VX_INLINE vx_bits_t vx_to_bits(vx_t v) { return _mm256_castps_si256(v); }
VX_INLINE vx_t vx_from_bits(vx_bits_t b) { return _mm256_castsi256_ps(b); }
VX_INLINE vx_bits_t vb_set1(int64_t x) { return _mm256_set1_epi32((int32_t)x); }
VX_INLINE vx_bits_t vb_add(vx_bits_t a, vx_bits_t b) { return _mm256_add_epi32(a, b); }
VX_INLINE vx_bits_t vb_sub(vx_bits_t a, vx_bits_t b) { return _mm256_sub_epi32(a, b); }
VX_INLINE vx_bits_t vb_shr1(vx_bits_t a) { return _mm256_srli_epi32(a, 1); }
/* into the exponent field */
VX_INLINE vx_bits_t vb_shl_mant(vx_bits_t a) { return _mm256_slli_epi32(a, 23); }

VX_INLINE vx_t vx_transpose_sum(const vx_t *a)
{
    /* per 128-bit half: (a0, a1, a2, a3) partial sums, likewise a4..a7 */
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

#else
/* ----------------------------------------------------------- 4 doubles */
typedef double vx_float;
typedef __m256d vx_t;
typedef __m256i vx_mask_t;
typedef __m256d vx_bool_t;
typedef __m256i vx_bits_t;
#define VX_W 4

static const int64_t vx_tail_tab[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
VX_INLINE vx_mask_t vx_tail(size_t n) { return _mm256_loadu_si256((const __m256i *)(const void *)(vx_tail_tab + 4 - n)); }

VX_INLINE vx_t vx_zero(void) { return _mm256_setzero_pd(); }
VX_INLINE vx_t vx_set1(vx_float x) { return _mm256_set1_pd(x); }
VX_INLINE vx_t vx_load(const vx_float *p) { return _mm256_loadu_pd(p); }
VX_INLINE void vx_store(vx_float *p, vx_t v) { _mm256_storeu_pd(p, v); }
VX_INLINE vx_t vx_load_part(const vx_float *p, vx_mask_t m) { return _mm256_maskload_pd(p, m); }
VX_INLINE void vx_store_part(vx_float *p, vx_mask_t m, vx_t v) { _mm256_maskstore_pd(p, m, v); }
VX_INLINE vx_t vx_add(vx_t a, vx_t b) { return _mm256_add_pd(a, b); }
VX_INLINE vx_t vx_sub(vx_t a, vx_t b) { return _mm256_sub_pd(a, b); }
VX_INLINE vx_t vx_mul(vx_t a, vx_t b) { return _mm256_mul_pd(a, b); }
VX_INLINE vx_t vx_fma(vx_t a, vx_t b, vx_t c) { return _mm256_fmadd_pd(a, b, c); }
VX_INLINE vx_t vx_fnma(vx_t a, vx_t b, vx_t c) { return _mm256_fnmadd_pd(a, b, c); }
VX_INLINE vx_t vx_max(vx_t a, vx_t b) { return _mm256_max_pd(a, b); }
VX_INLINE vx_t vx_min(vx_t a, vx_t b) { return _mm256_min_pd(a, b); }
VX_INLINE vx_bool_t vx_lt(vx_t a, vx_t b) { return _mm256_cmp_pd(a, b, _CMP_LT_OQ); }
VX_INLINE vx_bool_t vx_le(vx_t a, vx_t b) { return _mm256_cmp_pd(a, b, _CMP_LE_OQ); }
VX_INLINE vx_bool_t vx_ge(vx_t a, vx_t b) { return _mm256_cmp_pd(a, b, _CMP_GE_OQ); }
VX_INLINE vx_bool_t vx_and_b(vx_bool_t a, vx_bool_t b) { return _mm256_and_pd(a, b); }
VX_INLINE int vx_any(vx_bool_t b) { return _mm256_movemask_pd(b) != 0; }
VX_INLINE vx_t vx_select(vx_bool_t b, vx_t f, vx_t t) { return _mm256_blendv_pd(f, t, b); }
VX_INLINE vx_t vx_keep(vx_bool_t b, vx_t v) { return _mm256_and_pd(b, v); }
VX_INLINE vx_bits_t vx_to_bits(vx_t v) { return _mm256_castpd_si256(v); }
VX_INLINE vx_t vx_from_bits(vx_bits_t b) { return _mm256_castsi256_pd(b); }
VX_INLINE vx_bits_t vb_set1(int64_t x) { return _mm256_set1_epi64x((long long)x); }
VX_INLINE vx_bits_t vb_add(vx_bits_t a, vx_bits_t b) { return _mm256_add_epi64(a, b); }
VX_INLINE vx_bits_t vb_sub(vx_bits_t a, vx_bits_t b) { return _mm256_sub_epi64(a, b); }
VX_INLINE vx_bits_t vb_shr1(vx_bits_t a) { return _mm256_srli_epi64(a, 1); }
VX_INLINE vx_bits_t vb_shl_mant(vx_bits_t a) { return _mm256_slli_epi64(a, 52); }

VX_INLINE vx_t vx_transpose_sum(const vx_t *a)
{
    __m256d t01 = _mm256_hadd_pd(a[0], a[1]);   /* a0 01, a1 01, a0 23, a1 23 */
    __m256d t23 = _mm256_hadd_pd(a[2], a[3]);
    return _mm256_add_pd(_mm256_permute2f128_pd(t01, t23, 0x20), _mm256_permute2f128_pd(t01, t23, 0x31));
}
#endif

#endif /* ATTNX_SIMD_AVX2_H */
