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

#define VX_INLINE static inline __attribute__((always_inline))

#define VX_DOT_ROWS 4
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

VX_INLINE vx_t vx_zero(void) { return vdupq_n_f32(0.0f); }
VX_INLINE vx_t vx_set1(vx_float x) { return vdupq_n_f32(x); }
VX_INLINE vx_t vx_load(const vx_float *p) { return vld1q_f32(p); }
VX_INLINE void vx_store(vx_float *p, vx_t v) { vst1q_f32(p, v); }
VX_INLINE vx_t vx_add(vx_t a, vx_t b) { return vaddq_f32(a, b); }
VX_INLINE vx_t vx_sub(vx_t a, vx_t b) { return vsubq_f32(a, b); }
VX_INLINE vx_t vx_mul(vx_t a, vx_t b) { return vmulq_f32(a, b); }
VX_INLINE vx_t vx_fma(vx_t a, vx_t b, vx_t c) { return vfmaq_f32(c, a, b); }
VX_INLINE vx_t vx_fnma(vx_t a, vx_t b, vx_t c) { return vfmsq_f32(c, a, b); }
VX_INLINE vx_t vx_max(vx_t a, vx_t b) { return vmaxq_f32(a, b); }
VX_INLINE vx_t vx_min(vx_t a, vx_t b) { return vminq_f32(a, b); }
VX_INLINE vx_bool_t vx_lt(vx_t a, vx_t b) { return vcltq_f32(a, b); }
VX_INLINE vx_bool_t vx_le(vx_t a, vx_t b) { return vcleq_f32(a, b); }
VX_INLINE vx_bool_t vx_ge(vx_t a, vx_t b) { return vcgeq_f32(a, b); }
VX_INLINE vx_bool_t vx_and_b(vx_bool_t a, vx_bool_t b) { return vandq_u32(a, b); }
VX_INLINE int vx_any(vx_bool_t b) { return vmaxvq_u32(b) != 0; }
VX_INLINE vx_t vx_select(vx_bool_t b, vx_t f, vx_t t) { return vbslq_f32(b, t, f); }
VX_INLINE vx_t vx_keep(vx_bool_t b, vx_t v) { return vreinterpretq_f32_u32(vandq_u32(b, vreinterpretq_u32_f32(v))); }
VX_INLINE vx_bits_t vx_to_bits(vx_t v) { return vreinterpretq_u32_f32(v); }
VX_INLINE vx_t vx_from_bits(vx_bits_t b) { return vreinterpretq_f32_u32(b); }
VX_INLINE vx_bits_t vb_set1(int64_t x) { return vdupq_n_u32((uint32_t)x); }
VX_INLINE vx_bits_t vb_add(vx_bits_t a, vx_bits_t b) { return vaddq_u32(a, b); }
VX_INLINE vx_bits_t vb_sub(vx_bits_t a, vx_bits_t b) { return vsubq_u32(a, b); }
VX_INLINE vx_bits_t vb_shr1(vx_bits_t a) { return vshrq_n_u32(a, 1); }
VX_INLINE vx_bits_t vb_shl_mant(vx_bits_t a) { return vshlq_n_u32(a, 23); }
VX_INLINE vx_t vx_transpose_sum(const vx_t *a)
{
    return vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3]));
}

#else
/* ----------------------------------------------------------- 2 doubles */
typedef double vx_float;
typedef float64x2_t vx_t;
typedef uint64x2_t vx_bool_t;
typedef uint64x2_t vx_bits_t;
#define VX_W 2
#define VX_DOT_CHAINS 2   /* four partial sums per row, as at 4 lanes */
#define VX_EXP_HORNER 1   /* plain Horner with FMA measured as fast on two lanes */

VX_INLINE vx_t vx_zero(void) { return vdupq_n_f64(0.0); }
VX_INLINE vx_t vx_set1(vx_float x) { return vdupq_n_f64(x); }
VX_INLINE vx_t vx_load(const vx_float *p) { return vld1q_f64(p); }
VX_INLINE void vx_store(vx_float *p, vx_t v) { vst1q_f64(p, v); }
VX_INLINE vx_t vx_add(vx_t a, vx_t b) { return vaddq_f64(a, b); }
VX_INLINE vx_t vx_sub(vx_t a, vx_t b) { return vsubq_f64(a, b); }
VX_INLINE vx_t vx_mul(vx_t a, vx_t b) { return vmulq_f64(a, b); }
VX_INLINE vx_t vx_fma(vx_t a, vx_t b, vx_t c) { return vfmaq_f64(c, a, b); }
VX_INLINE vx_t vx_fnma(vx_t a, vx_t b, vx_t c) { return vfmsq_f64(c, a, b); }
VX_INLINE vx_t vx_max(vx_t a, vx_t b) { return vmaxq_f64(a, b); }
VX_INLINE vx_t vx_min(vx_t a, vx_t b) { return vminq_f64(a, b); }
VX_INLINE vx_bool_t vx_lt(vx_t a, vx_t b) { return vcltq_f64(a, b); }
VX_INLINE vx_bool_t vx_le(vx_t a, vx_t b) { return vcleq_f64(a, b); }
VX_INLINE vx_bool_t vx_ge(vx_t a, vx_t b) { return vcgeq_f64(a, b); }
VX_INLINE vx_bool_t vx_and_b(vx_bool_t a, vx_bool_t b) { return vandq_u64(a, b); }
VX_INLINE int vx_any(vx_bool_t b) { return vmaxvq_u32(vreinterpretq_u32_u64(b)) != 0; }
VX_INLINE vx_t vx_select(vx_bool_t b, vx_t f, vx_t t) { return vbslq_f64(b, t, f); }
VX_INLINE vx_t vx_keep(vx_bool_t b, vx_t v) { return vreinterpretq_f64_u64(vandq_u64(b, vreinterpretq_u64_f64(v))); }
VX_INLINE vx_bits_t vx_to_bits(vx_t v) { return vreinterpretq_u64_f64(v); }
VX_INLINE vx_t vx_from_bits(vx_bits_t b) { return vreinterpretq_f64_u64(b); }
VX_INLINE vx_bits_t vb_set1(int64_t x) { return vdupq_n_u64((uint64_t)x); }
VX_INLINE vx_bits_t vb_add(vx_bits_t a, vx_bits_t b) { return vaddq_u64(a, b); }
VX_INLINE vx_bits_t vb_sub(vx_bits_t a, vx_bits_t b) { return vsubq_u64(a, b); }
VX_INLINE vx_bits_t vb_shr1(vx_bits_t a) { return vshrq_n_u64(a, 1); }
VX_INLINE vx_bits_t vb_shl_mant(vx_bits_t a) { return vshlq_n_u64(a, 52); }
VX_INLINE vx_t vx_transpose_sum(const vx_t *a) { return vpaddq_f64(a[0], a[1]); }
#endif

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

#endif /* ATTNX_SIMD_NEON_H */
