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
 *   vx_load_part_or(p, m, f) the first m lanes, f in the others
 *   vx_keep_tail(m, v)       v in the first m lanes, 0 in the others
 *   vx_hmax(v)               the largest lane (no lane may be NaN)
 *   vx_hsum2(s, e)           float64: the sum of the lanes of s plus those of
 *                            e, s folded by exact two-sums (Kahan partial
 *                            sums combined without losing their errors)
 *   vx_wide_t, vx_wide_add   float32: a float64 accumulator vector, and
 *                            s + (the float lanes widened, added pairwise)
 *   vx_wide_hsum(s)          float32: the sum of its lanes, in double
 *   vx_log_sub(v, a, b)      float32: lanes (float)(((double)v - a) - b)
 *   vx_lanes(b), vx_nz_bits  lane predicate from / bits of the lanes that
 *                            are nonzero or NaN (bit i: lane i)
 *   vx_head(n)               lanes n .. VX_W-1 (the aligned-row variant)
 *   vx_rot_t, vx_rot(k)      lane i = lane (i + k) mod VX_W of v, by
 *   vx_rotate(v, r)          vx_rotate(v, vx_rot(k)) (the aligned-row
 *                            variant turns its sums back to the lanes the
 *                            unaligned one sums in: the same bits)
 *   vx_load_a, vx_store_a    vector-aligned load and store
 *   vx_transpose_store(r, o, s)  row c of the transpose of the VX_W x VX_W
 *                            block r to o + c * s
 *   vx_bytes_nz(m, n)        bit k set where the byte m[k] != 0, n <= 32
 *   vx_abs, vx_sign, vx_or_bits   |x|, x's sign bit alone, a | b
 *
 * and the tuning constants that differ by register file (not by algorithm):
 *
 *   VX_DOT_ROWS              key rows per dot_scores step (a multiple of VX_W)
 *   VX_DOT_CHAINS            independent partial sums per row and lane in
 *                            dot_scores (1: the lanes are the chains)
 *   VX_CTX_PAIR_NV           context: column slices up to this many vectors
 *                            sum even and odd rows apart (FMA latency)
 *   VX_HAS_FMA               vx_fma rounds once (Markstein division is exact)
 *   VX_UNROLL                vectors per step of a streaming loop (partial
 *                            sums kept apart)
 *   VX_ALIGN_ROWS            1: the online fold reads key/value rows from
 *                            their vector-aligned base (NumPy's 16-byte
 *                            aligned buffers would split every other load)
 *   VX_TILE_ROWS             queries per register tile of the batched rows
 *                            kernel (2 x VX_TILE_ROWS accumulators)
 *   VX_ROWS_KERNEL           0: no batched rows kernel (one query at a time)
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

#include "simd/x86.h"

#define VX_DOT_ROWS 8
#define VX_HAS_FMA 1
#define VX_UNROLL 2
#define VX_TILE_ROWS 6   /* 12 accumulators + 2 loads + 1 broadcast of 16 */
#define VX_ROWS_KERNEL 1
#define VX_DOT_CHAINS 1
#define VX_EXP_HORNER 0
#define VX_CTX_PAIR_NV 3

#if defined(ATTNX_F32)
/* ------------------------------------------------------------ 8 floats */
typedef float vx_float;
typedef __m256 vx_t;
typedef int32_t vx_lane_int;
#define VX_W 8
#define VX_ALIGN_ROWS 0   /* measured no gain at 8 floats */
#define VX_MANT 23
/* the intrinsic of this element type, its integer twin, the casts */
#define VXI(op) op##_ps
#define VXB(op) op##_epi32
#define VX_TO_SI _mm256_castps_si256
#define VX_FROM_SI _mm256_castsi256_ps
#define VX_SET1_BITS(x) _mm256_set1_epi32((int32_t)(x))
#define VX_TO_PS(v) (v)
#define VX_FROM_PS(v) (v)
#define VX_LANE_BITS _mm256_set_epi32(128, 64, 32, 16, 8, 4, 2, 1)
#else
/* ----------------------------------------------------------- 4 doubles */
typedef double vx_float;
typedef __m256d vx_t;
typedef int64_t vx_lane_int;
#define VX_W 4
#define VX_ALIGN_ROWS 1
#define VX_MANT 52
#define VXI(op) op##_pd
#define VXB(op) op##_epi64
#define VX_TO_SI _mm256_castpd_si256
#define VX_FROM_SI _mm256_castsi256_pd
#define VX_SET1_BITS(x) _mm256_set1_epi64x((long long)(x))
#define VX_TO_PS _mm256_castpd_ps
#define VX_FROM_PS _mm256_castps_pd
#define VX_LANE_BITS _mm256_set_epi64x(8, 4, 2, 1)
#endif
typedef __m256i vx_mask_t;
typedef vx_t vx_bool_t;
typedef __m256i vx_bits_t;

/* vmaskmov masks: lanes [0, n) of the tail table, lanes [n, VX_W) of the
 * head table (indexed so that one table serves both lane widths) */
static const vx_lane_int vx_tail_tab[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
static const vx_lane_int vx_head_tab[16] = {0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1};
VX_INLINE vx_mask_t vx_tail(size_t n) { return _mm256_loadu_si256((const __m256i *)(const void *)(vx_tail_tab + 8 - n)); }
VX_INLINE vx_mask_t vx_head(size_t n) { return _mm256_loadu_si256((const __m256i *)(const void *)(vx_head_tab + 8 - n)); }
/* lane rotation by vpermps over 32-bit lanes (a double is two of them) */
typedef __m256i vx_rot_t;
VX_INLINE vx_rot_t vx_rot(unsigned k)
{
    const __m256i step = _mm256_set1_epi32((int)(k * (8 / VX_W)));
    return _mm256_and_si256(_mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), step), _mm256_set1_epi32(7));
}
VX_INLINE vx_t vx_rotate(vx_t v, vx_rot_t r) { return VX_FROM_PS(_mm256_permutevar8x32_ps(VX_TO_PS(v), r)); }

VX_INLINE vx_t vx_zero(void) { return VXI(_mm256_setzero)(); }
VX_INLINE vx_t vx_set1(vx_float x) { return VXI(_mm256_set1)(x); }
VX_INLINE vx_t vx_load(const vx_float *p) { return VXI(_mm256_loadu)(p); }
VX_INLINE void vx_store(vx_float *p, vx_t v) { VXI(_mm256_storeu)(p, v); }
VX_INLINE vx_t vx_load_a(const vx_float *p) { return VXI(_mm256_load)(p); }
VX_INLINE void vx_store_a(vx_float *p, vx_t v) { VXI(_mm256_store)(p, v); }
VX_INLINE vx_t vx_load_part(const vx_float *p, vx_mask_t m) { return VXI(_mm256_maskload)(p, m); }
VX_INLINE void vx_store_part(vx_float *p, vx_mask_t m, vx_t v) { VXI(_mm256_maskstore)(p, m, v); }
VX_INLINE vx_t vx_load_part_or(const vx_float *p, vx_mask_t m, vx_float f)
{
    return VXI(_mm256_blendv)(vx_set1(f), vx_load_part(p, m), VX_FROM_SI(m));
}
VX_INLINE vx_t vx_keep_tail(vx_mask_t m, vx_t v) { return VXI(_mm256_and)(VX_FROM_SI(m), v); }
VX_INLINE vx_t vx_add(vx_t a, vx_t b) { return VXI(_mm256_add)(a, b); }
VX_INLINE vx_t vx_sub(vx_t a, vx_t b) { return VXI(_mm256_sub)(a, b); }
VX_INLINE vx_t vx_mul(vx_t a, vx_t b) { return VXI(_mm256_mul)(a, b); }
VX_INLINE vx_t vx_div(vx_t a, vx_t b) { return VXI(_mm256_div)(a, b); }
VX_INLINE vx_t vx_fma(vx_t a, vx_t b, vx_t c) { return VXI(_mm256_fmadd)(a, b, c); }
VX_INLINE vx_t vx_fnma(vx_t a, vx_t b, vx_t c) { return VXI(_mm256_fnmadd)(a, b, c); }
VX_INLINE vx_t vx_max(vx_t a, vx_t b) { return VXI(_mm256_max)(a, b); }
VX_INLINE vx_t vx_min(vx_t a, vx_t b) { return VXI(_mm256_min)(a, b); }
VX_INLINE vx_bool_t vx_lt(vx_t a, vx_t b) { return VXI(_mm256_cmp)(a, b, _CMP_LT_OQ); }
VX_INLINE vx_bool_t vx_le(vx_t a, vx_t b) { return VXI(_mm256_cmp)(a, b, _CMP_LE_OQ); }
VX_INLINE vx_bool_t vx_ge(vx_t a, vx_t b) { return VXI(_mm256_cmp)(a, b, _CMP_GE_OQ); }
VX_INLINE vx_bool_t vx_ne(vx_t a, vx_t b) { return VXI(_mm256_cmp)(a, b, _CMP_NEQ_OQ); }
VX_INLINE vx_bool_t vx_unord(vx_t a, vx_t b) { return VXI(_mm256_cmp)(a, b, _CMP_UNORD_Q); }
VX_INLINE vx_bool_t vx_and_b(vx_bool_t a, vx_bool_t b) { return VXI(_mm256_and)(a, b); }
VX_INLINE vx_bool_t vx_or_b(vx_bool_t a, vx_bool_t b) { return VXI(_mm256_or)(a, b); }
VX_INLINE vx_bool_t vx_false(void) { return vx_zero(); }
VX_INLINE int vx_any(vx_bool_t b) { return VXI(_mm256_movemask)(b) != 0; }
/* t where b, else f */
VX_INLINE vx_t vx_select(vx_bool_t b, vx_t f, vx_t t) { return VXI(_mm256_blendv)(f, t, b); }
/* v where b, else 0 */
VX_INLINE vx_t vx_keep(vx_bool_t b, vx_t v) { return VXI(_mm256_and)(b, v); }
VX_INLINE vx_bool_t vx_lanes(unsigned b)
{
    const __m256i sel = VX_LANE_BITS;
    return VX_FROM_SI(VXB(_mm256_cmpeq)(_mm256_and_si256(VX_SET1_BITS(b), sel), sel));
}
VX_INLINE unsigned vx_nz_bits(vx_t v) { return (unsigned)VXI(_mm256_movemask)(VXI(_mm256_cmp)(v, vx_zero(), _CMP_NEQ_UQ)); }
VX_INLINE vx_bits_t vx_to_bits(vx_t v) { return VX_TO_SI(v); }
VX_INLINE vx_t vx_from_bits(vx_bits_t b) { return VX_FROM_SI(b); }
VX_INLINE vx_bits_t vb_set1(int64_t x) { return VX_SET1_BITS(x); }
VX_INLINE vx_bits_t vb_add(vx_bits_t a, vx_bits_t b) { return VXB(_mm256_add)(a, b); }
VX_INLINE vx_bits_t vb_sub(vx_bits_t a, vx_bits_t b) { return VXB(_mm256_sub)(a, b); }
VX_INLINE vx_bits_t vb_shr1(vx_bits_t a) { return VXB(_mm256_srli)(a, 1); }
/* into the exponent field */
VX_INLINE vx_bits_t vb_shl_mant(vx_bits_t a) { return VXB(_mm256_slli)(a, VX_MANT); }

#if defined(ATTNX_F32)
/* |x|, the sign bit of x alone, and a bitwise or (tanh) */
VX_INLINE vx_t vx_abs(vx_t x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
VX_INLINE vx_t vx_sign(vx_t x) { return _mm256_and_ps(x, _mm256_set1_ps(-0.0f)); }
VX_INLINE vx_t vx_or_bits(vx_t a, vx_t b) { return _mm256_or_ps(a, b); }

VX_INLINE vx_float vx_hmax(vx_t v)
{
    __m128 b = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_max_ps(b, _mm_movehl_ps(b, b));
    b = _mm_max_ss(b, _mm_shuffle_ps(b, b, 1));
    return _mm_cvtss_f32(b);
}

typedef __m256d vx_wide_t;
VX_INLINE vx_wide_t vx_wide_zero(void) { return _mm256_setzero_pd(); }
VX_INLINE vx_wide_t vx_wide_add(vx_wide_t s, vx_t v)
{
    return _mm256_add_pd(s, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                                          _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
}
VX_INLINE vx_wide_t vx_wide_sum2(vx_wide_t a, vx_wide_t b) { return _mm256_add_pd(a, b); }
VX_INLINE double vx_wide_hsum(vx_wide_t v) { return vx_sum4d(v); }

VX_INLINE vx_t vx_log_sub(vx_t v, double a, double b)
{
    const __m256d av = _mm256_set1_pd(a), bv = _mm256_set1_pd(b);
    __m256d lo = _mm256_sub_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), av), bv);
    __m256d hi = _mm256_sub_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), av), bv);
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}

VX_INLINE void vx_transpose_store(const vx_t *r, vx_float *o, size_t s)
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    /* per 128-bit half: u_e = rows 0..3 of column 4*half + e; w_e rows 4..7 */
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 w0 = _mm256_shuffle_ps(t4, t6, 0x44), w1 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 w2 = _mm256_shuffle_ps(t5, t7, 0x44), w3 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(o + 0 * s, _mm256_permute2f128_ps(u0, w0, 0x20));
    _mm256_storeu_ps(o + 1 * s, _mm256_permute2f128_ps(u1, w1, 0x20));
    _mm256_storeu_ps(o + 2 * s, _mm256_permute2f128_ps(u2, w2, 0x20));
    _mm256_storeu_ps(o + 3 * s, _mm256_permute2f128_ps(u3, w3, 0x20));
    _mm256_storeu_ps(o + 4 * s, _mm256_permute2f128_ps(u0, w0, 0x31));
    _mm256_storeu_ps(o + 5 * s, _mm256_permute2f128_ps(u1, w1, 0x31));
    _mm256_storeu_ps(o + 6 * s, _mm256_permute2f128_ps(u2, w2, 0x31));
    _mm256_storeu_ps(o + 7 * s, _mm256_permute2f128_ps(u3, w3, 0x31));
}

VX_INLINE vx_t vx_transpose_sum(const vx_t *a)
{
    /* per 128-bit half: (a0, a1, a2, a3) partial sums, likewise a4..a7 */
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

#else
VX_INLINE vx_float vx_hmax(vx_t v)
{
    __m128d b = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(b, _mm_unpackhi_pd(b, b)));
}

VX_INLINE double vx_hsum(vx_t v) { return vx_sum4d(v); }

/* |x|, the sign bit of x alone, and a bitwise or (float64 tanh) */
VX_INLINE vx_t vx_signbit(void) { return _mm256_castsi256_pd(_mm256_set1_epi64x((long long)0x8000000000000000ull)); }
VX_INLINE vx_t vx_abs(vx_t x) { return _mm256_andnot_pd(vx_signbit(), x); }
VX_INLINE vx_t vx_sign(vx_t x) { return _mm256_and_pd(x, vx_signbit()); }
VX_INLINE vx_t vx_or_bits(vx_t a, vx_t b) { return _mm256_or_pd(a, b); }

VX_INLINE double vx_hsum2(vx_t s, vx_t e)
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

VX_INLINE void vx_transpose_store(const vx_t *r, vx_float *o, size_t s)
{
    __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    _mm256_storeu_pd(o + 0 * s, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(o + 1 * s, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(o + 2 * s, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(o + 3 * s, _mm256_permute2f128_pd(t1, t3, 0x31));
}

VX_INLINE vx_t vx_transpose_sum(const vx_t *a)
{
    __m256d t01 = _mm256_hadd_pd(a[0], a[1]);   /* a0 01, a1 01, a0 23, a1 23 */
    __m256d t23 = _mm256_hadd_pd(a[2], a[3]);
    return _mm256_add_pd(_mm256_permute2f128_pd(t01, t23, 0x20), _mm256_permute2f128_pd(t01, t23, 0x31));
}
#endif

#endif /* ATTNX_SIMD_AVX2_H */
