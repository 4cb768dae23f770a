/*
 * simd/neon.h -- the vector vocabulary for aarch64 Advanced SIMD (32
 * registers of 128 bits): 4 floats (ATTNX_F32 defined) or 2 doubles a
 * vector. The names and their meaning are listed at the top of
 * simd/avx2.h. NEON is architectural on aarch64: no flags, no probe.
 *
 * NEON has no masked load or store: a tail mask is the lane count, and a
 * partial load copies the lanes through a zeroed stack buffer, so memory
 * outside the row is never touched. FMAX/FMIN return NaN when either lane
 * is NaN, which keeps the "NaN passes" guarantee of vx_max/vx_min.
 */
#ifndef ATTNX_SIMD_NEON_H
#define ATTNX_SIMD_NEON_H

#include <arm_neon.h>
#include <stdint.h>
#include <string.h>

#if defined(_MSC_VER)
#define VX_INLINE static __forceinline
#else
#define VX_INLINE static inline __attribute__((always_inline))
#endif

#define VX_DOT_ROWS 4
#define VX_HAS_FMA 1
#define VX_UNROLL 2
#define VX_TILE_ROWS 8   /* 16 accumulators of 32 */
#define VX_ROWS_KERNEL 1
#define VX_ALIGN_ROWS 0
/* context: rows in order, one chain per column (the 8 vectors of a slice
 * are 8 independent chains already) */
#define VX_CTX_PAIR_NV 0

typedef size_t vx_mask_t;
VX_INLINE vx_mask_t vx_tail(size_t n) { return n; }

#if defined(ATTNX_F32)
/* ------------------------------------------------------------ 4 floats */
typedef float vx_float;
typedef float32x4_t vx_t;
typedef uint32x4_t vx_bool_t;
typedef uint32x4_t vx_bits_t;
#define VX_W 4
#define VX_DOT_CHAINS 2   /* two accumulators per row hide the FMA latency */
#define VX_EXP_HORNER 0
#define VX_MANT 23
/* the intrinsic of this element type and of its unsigned twin */
#define VXN(op) op##_f32
#define VXU(op) op##_u32
#define VX_AS_U vreinterpretq_u32_f32
#define VX_FROM_U vreinterpretq_f32_u32
/* lanes as the 32-bit words vmvnq works on */
#define VX_NOT(b) vmvnq_u32(b)
#define VX_ANY(b) (vmaxvq_u32(b) != 0)
typedef uint32_t vx_ulane;
static const uint32_t vx_lane_bit[4] = {1, 2, 4, 8};
#else
/* ----------------------------------------------------------- 2 doubles */
typedef double vx_float;
typedef float64x2_t vx_t;
typedef uint64x2_t vx_bool_t;
typedef uint64x2_t vx_bits_t;
#define VX_W 2
#define VX_DOT_CHAINS 2   /* four partial sums per row, as at 4 lanes */
#define VX_EXP_HORNER 1   /* plain Horner with FMA measured as fast on two lanes */
#define VX_MANT 52
#define VXN(op) op##_f64
#define VXU(op) op##_u64
#define VX_AS_U vreinterpretq_u64_f64
#define VX_FROM_U vreinterpretq_f64_u64
#define VX_NOT(b) vreinterpretq_u64_u32(vmvnq_u32(vreinterpretq_u32_u64(b)))
#define VX_ANY(b) (vmaxvq_u32(vreinterpretq_u32_u64(b)) != 0)
typedef uint64_t vx_ulane;
static const uint64_t vx_lane_bit[2] = {1, 2};
#endif

VX_INLINE vx_t vx_zero(void) { return VXN(vdupq_n)(0); }
VX_INLINE vx_t vx_set1(vx_float x) { return VXN(vdupq_n)(x); }
VX_INLINE vx_t vx_load(const vx_float *p) { return VXN(vld1q)(p); }
VX_INLINE void vx_store(vx_float *p, vx_t v) { VXN(vst1q)(p, v); }
VX_INLINE vx_t vx_add(vx_t a, vx_t b) { return VXN(vaddq)(a, b); }
VX_INLINE vx_t vx_sub(vx_t a, vx_t b) { return VXN(vsubq)(a, b); }
VX_INLINE vx_t vx_mul(vx_t a, vx_t b) { return VXN(vmulq)(a, b); }
VX_INLINE vx_t vx_div(vx_t a, vx_t b) { return VXN(vdivq)(a, b); }
VX_INLINE vx_t vx_fma(vx_t a, vx_t b, vx_t c) { return VXN(vfmaq)(c, a, b); }
VX_INLINE vx_t vx_fnma(vx_t a, vx_t b, vx_t c) { return VXN(vfmsq)(c, a, b); }
VX_INLINE vx_t vx_max(vx_t a, vx_t b) { return VXN(vmaxq)(a, b); }
VX_INLINE vx_t vx_min(vx_t a, vx_t b) { return VXN(vminq)(a, b); }
VX_INLINE vx_bool_t vx_lt(vx_t a, vx_t b) { return VXN(vcltq)(a, b); }
VX_INLINE vx_bool_t vx_le(vx_t a, vx_t b) { return VXN(vcleq)(a, b); }
VX_INLINE vx_bool_t vx_ge(vx_t a, vx_t b) { return VXN(vcgeq)(a, b); }
VX_INLINE vx_bool_t vx_ne(vx_t a, vx_t b) { return VX_NOT(VXN(vceqq)(a, b)); }
/* a or b is NaN: a != a or b != b */
VX_INLINE vx_bool_t vx_unord(vx_t a, vx_t b) { return VX_NOT(VXU(vandq)(VXN(vceqq)(a, a), VXN(vceqq)(b, b))); }
VX_INLINE vx_bool_t vx_and_b(vx_bool_t a, vx_bool_t b) { return VXU(vandq)(a, b); }
VX_INLINE vx_bool_t vx_or_b(vx_bool_t a, vx_bool_t b) { return VXU(vorrq)(a, b); }
VX_INLINE vx_bool_t vx_false(void) { return VXU(vdupq_n)(0); }
VX_INLINE int vx_any(vx_bool_t b) { return VX_ANY(b); }
VX_INLINE vx_t vx_select(vx_bool_t b, vx_t f, vx_t t) { return VXN(vbslq)(b, t, f); }
VX_INLINE vx_t vx_keep(vx_bool_t b, vx_t v) { return VX_FROM_U(VXU(vandq)(b, VX_AS_U(v))); }
VX_INLINE vx_float vx_hmax(vx_t v) { return VXN(vmaxvq)(v); }
VX_INLINE vx_bool_t vx_lanes(unsigned b) { return VXU(vtstq)(VXU(vdupq_n)(b), VXU(vld1q)(vx_lane_bit)); }
VX_INLINE unsigned vx_nz_bits(vx_t v) { return (unsigned)VXU(vaddvq)(VXU(vandq)(vx_ne(v, vx_zero()), VXU(vld1q)(vx_lane_bit))); }
VX_INLINE vx_bits_t vx_to_bits(vx_t v) { return VX_AS_U(v); }
VX_INLINE vx_t vx_from_bits(vx_bits_t b) { return VX_FROM_U(b); }
VX_INLINE vx_bits_t vb_set1(int64_t x) { return VXU(vdupq_n)((vx_ulane)x); }
VX_INLINE vx_bits_t vb_add(vx_bits_t a, vx_bits_t b) { return VXU(vaddq)(a, b); }
VX_INLINE vx_bits_t vb_sub(vx_bits_t a, vx_bits_t b) { return VXU(vsubq)(a, b); }
VX_INLINE vx_bits_t vb_shr1(vx_bits_t a) { return VXU(vshrq_n)(a, 1); }
VX_INLINE vx_bits_t vb_shl_mant(vx_bits_t a) { return VXU(vshlq_n)(a, VX_MANT); }

#if defined(ATTNX_F32)
/* |x|, the sign bit of x alone, and a bitwise or (tanh) */
VX_INLINE vx_t vx_abs(vx_t x) { return vabsq_f32(x); }
VX_INLINE vx_t vx_sign(vx_t x) { return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(x), vdupq_n_u32(0x80000000u))); }
VX_INLINE vx_t vx_or_bits(vx_t a, vx_t b) { return vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(a), vreinterpretq_u32_f32(b))); }

typedef float64x2_t vx_wide_t;
VX_INLINE vx_wide_t vx_wide_zero(void) { return vdupq_n_f64(0.0); }
VX_INLINE vx_wide_t vx_wide_add(vx_wide_t s, vx_t v)
{
    return vaddq_f64(s, vaddq_f64(vcvt_f64_f32(vget_low_f32(v)), vcvt_high_f64_f32(v)));
}
VX_INLINE vx_wide_t vx_wide_sum2(vx_wide_t a, vx_wide_t b) { return vaddq_f64(a, b); }
VX_INLINE double vx_wide_hsum(vx_wide_t v) { return vaddvq_f64(v); }

VX_INLINE vx_t vx_log_sub(vx_t v, double a, double b)
{
    const float64x2_t av = vdupq_n_f64(a), bv = vdupq_n_f64(b);
    float64x2_t lo = vsubq_f64(vsubq_f64(vcvt_f64_f32(vget_low_f32(v)), av), bv);
    float64x2_t hi = vsubq_f64(vsubq_f64(vcvt_high_f64_f32(v), av), bv);
    return vcvt_high_f32_f64(vcvt_f32_f64(lo), hi);
}

VX_INLINE vx_t vx_transpose_sum(const vx_t *a)
{
    return vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3]));
}

#else
VX_INLINE double vx_hsum(vx_t v) { return vaddvq_f64(v); }
/* |x|, the sign bit of x alone, and a bitwise or (float64 tanh) */
VX_INLINE vx_t vx_abs(vx_t x) { return vabsq_f64(x); }
VX_INLINE vx_t vx_sign(vx_t x) { return vreinterpretq_f64_u64(vandq_u64(vreinterpretq_u64_f64(x), vdupq_n_u64(0x8000000000000000ull))); }
VX_INLINE vx_t vx_or_bits(vx_t a, vx_t b) { return vreinterpretq_f64_u64(vorrq_u64(vreinterpretq_u64_f64(a), vreinterpretq_u64_f64(b))); }

/* two lanes by an exact two-sum, plus e's lanes */
VX_INLINE double vx_hsum2(vx_t s, vx_t e)
{
    double x = vgetq_lane_f64(s, 0), y = vgetq_lane_f64(s, 1);
    double t = x + y, bt = t - x;
    double err = (x - (t - bt)) + (y - bt) + vgetq_lane_f64(e, 0) + vgetq_lane_f64(e, 1);
    return t + err;
}

VX_INLINE vx_t vx_transpose_sum(const vx_t *a) { return vpaddq_f64(a[0], a[1]); }
#endif

/* NEON loads need no alignment: VX_ALIGN_ROWS is 0 */
VX_INLINE vx_t vx_load_a(const vx_float *p) { return vx_load(p); }
VX_INLINE void vx_store_a(vx_float *p, vx_t v) { vx_store(p, v); }

/* the first m lanes through a zeroed buffer: nothing outside is read */
VX_INLINE vx_t vx_load_part(const vx_float *p, vx_mask_t m)
{
    vx_float buf[VX_W] = {0};
    memcpy(buf, p, m * sizeof *p);
    return vx_load(buf);
}

VX_INLINE void vx_store_part(vx_float *p, vx_mask_t m, vx_t v)
{
    vx_float buf[VX_W];
    vx_store(buf, v);
    memcpy(p, buf, m * sizeof *p);
}

VX_INLINE vx_t vx_load_part_or(const vx_float *p, vx_mask_t m, vx_float f)
{
    vx_float buf[VX_W];
    for (size_t i = 0; i < VX_W; i++) buf[i] = f;
    memcpy(buf, p, m * sizeof *p);
    return vx_load(buf);
}

/* v in the first m lanes, 0 in the others */
VX_INLINE vx_t vx_keep_tail(vx_mask_t m, vx_t v)
{
    vx_float buf[VX_W];
    vx_store(buf, v);
    for (size_t i = m; i < VX_W; i++) buf[i] = 0;
    return vx_load(buf);
}

/* row c of the transpose of the VX_W x VX_W block r to o + c * s (packing
 * only: through a buffer) */
VX_INLINE void vx_transpose_store(const vx_t *r, vx_float *o, size_t s)
{
    vx_float buf[VX_W * VX_W];
    for (size_t i = 0; i < VX_W; i++) vx_store(buf + i * VX_W, r[i]);
    for (size_t c = 0; c < VX_W; c++)
        for (size_t i = 0; i < VX_W; i++) o[c * s + i] = buf[i * VX_W + c];
}

/* bit k set where m[k] != 0, k < n <= 32 */
VX_INLINE unsigned vx_bytes_nz(const unsigned char *m, size_t n)
{
    unsigned bits = 0;
    for (size_t k = 0; k < n; k++) bits |= (unsigned)(m[k] != 0) << k;
    return bits;
}

VX_INLINE void vx_prefetch(const void *p)
{
#if defined(__GNUC__)
    __builtin_prefetch(p);
#else
    (void)p;
#endif
}

#endif /* ATTNX_SIMD_NEON_H */
