/*
 * simd/scalar.h -- the vector vocabulary in portable C99: one lane, the
 * element type selected by the including file (ATTNX_F32: float, else
 * double). The names and their meaning are listed at the top of
 * simd/avx2.h. The kernels written against the vocabulary run here
 * unchanged on a CPU with no supported vector unit (or ATTNX_NO_SIMD).
 *
 * vx_fma is a multiply then an add, two roundings: portable C has no
 * guaranteed fused multiply-add (libm's fma() is a slow software routine
 * on a CPU without one), and the build's -ffp-contract=off keeps the
 * compiler from fusing it on its own, so results do not depend on the
 * compiler.
 */
#ifndef ATTNX_SIMD_SCALAR_H
#define ATTNX_SIMD_SCALAR_H

#include <stdint.h>
#include <string.h>

#define VX_INLINE static inline

#define VX_W 1
/* One lane: dot_scores keeps four partial sums per row (j mod 4), as the
 * 4-lane levels do, so the reference and the vector levels round alike;
 * context sums rows in order (no second set: one lane has no FMA latency
 * to hide); exp's polynomial is plain Horner, the reference form stated in
 * attnx_internal.h. */
#define VX_DOT_ROWS 4
#define VX_DOT_CHAINS 4
#define VX_CTX_PAIR_NV 0
#define VX_EXP_HORNER 1
#define VX_HAS_FMA 0
#define VX_UNROLL 1
#define VX_ALIGN_ROWS 0
#define VX_ROWS_KERNEL 0   /* batched queries fold one at a time */
#define VX_TILE_ROWS 1

#if defined(ATTNX_F32)
typedef float vx_float;
typedef uint32_t vx_bits_t;
#define VX_MANT_BITS 23
#else
typedef double vx_float;
typedef uint64_t vx_bits_t;
#define VX_MANT_BITS 52
#endif
typedef vx_float vx_t;
typedef size_t vx_mask_t;
typedef int vx_bool_t;

VX_INLINE vx_mask_t vx_tail(size_t n) { return n; }
VX_INLINE vx_t vx_zero(void) { return 0; }
VX_INLINE vx_t vx_set1(vx_float x) { return x; }
VX_INLINE vx_t vx_load(const vx_float *p) { return *p; }
VX_INLINE void vx_store(vx_float *p, vx_t v) { *p = v; }
VX_INLINE vx_t vx_load_a(const vx_float *p) { return *p; }
VX_INLINE void vx_store_a(vx_float *p, vx_t v) { *p = v; }
VX_INLINE vx_t vx_load_part(const vx_float *p, vx_mask_t m) { return m ? *p : 0; }
VX_INLINE void vx_store_part(vx_float *p, vx_mask_t m, vx_t v)
{
    if (m) *p = v;
}
VX_INLINE vx_t vx_add(vx_t a, vx_t b) { return a + b; }
VX_INLINE vx_t vx_sub(vx_t a, vx_t b) { return a - b; }
VX_INLINE vx_t vx_mul(vx_t a, vx_t b) { return a * b; }
VX_INLINE vx_t vx_fma(vx_t a, vx_t b, vx_t c) { return a * b + c; }
VX_INLINE vx_t vx_fnma(vx_t a, vx_t b, vx_t c) { return c - a * b; }
/* b when either is NaN, as x86's maxpd/minpd */
VX_INLINE vx_t vx_max(vx_t a, vx_t b) { return a > b ? a : b; }
VX_INLINE vx_t vx_min(vx_t a, vx_t b) { return a < b ? a : b; }
VX_INLINE vx_bool_t vx_lt(vx_t a, vx_t b) { return a < b; }
VX_INLINE vx_bool_t vx_le(vx_t a, vx_t b) { return a <= b; }
VX_INLINE vx_bool_t vx_ge(vx_t a, vx_t b) { return a >= b; }
VX_INLINE vx_bool_t vx_and_b(vx_bool_t a, vx_bool_t b) { return a & b; }
VX_INLINE int vx_any(vx_bool_t b) { return b; }
VX_INLINE vx_t vx_select(vx_bool_t b, vx_t f, vx_t t) { return b ? t : f; }
VX_INLINE vx_t vx_keep(vx_bool_t b, vx_t v) { return b ? v : 0; }
VX_INLINE vx_bits_t vx_to_bits(vx_t v)
{
    vx_bits_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}
VX_INLINE vx_t vx_from_bits(vx_bits_t b)
{
    vx_t v;
    memcpy(&v, &b, sizeof v);
    return v;
}
VX_INLINE vx_bits_t vb_set1(int64_t x) { return (vx_bits_t)x; }
VX_INLINE vx_bits_t vb_add(vx_bits_t a, vx_bits_t b) { return a + b; }
VX_INLINE vx_bits_t vb_sub(vx_bits_t a, vx_bits_t b) { return a - b; }
VX_INLINE vx_bits_t vb_shr1(vx_bits_t a) { return a >> 1; }
VX_INLINE vx_bits_t vb_shl_mant(vx_bits_t a) { return (vx_bits_t)(a << VX_MANT_BITS); }
VX_INLINE vx_t vx_transpose_sum(const vx_t *a) { return a[0]; }
VX_INLINE vx_t vx_load_part_or(const vx_float *p, vx_mask_t m, vx_float f) { return m ? *p : f; }
VX_INLINE vx_t vx_keep_tail(vx_mask_t m, vx_t v) { return m ? v : 0; }
VX_INLINE vx_t vx_div(vx_t a, vx_t b) { return a / b; }
VX_INLINE vx_bool_t vx_ne(vx_t a, vx_t b) { return a < b || a > b; }
VX_INLINE vx_bool_t vx_unord(vx_t a, vx_t b) { return a != a || b != b; }
VX_INLINE vx_bool_t vx_or_b(vx_bool_t a, vx_bool_t b) { return a | b; }
VX_INLINE vx_bool_t vx_false(void) { return 0; }
VX_INLINE vx_float vx_hmax(vx_t v) { return v; }
VX_INLINE double vx_hsum2(vx_t s, vx_t e) { return (double)s + (double)e; }
VX_INLINE double vx_hsum(vx_t v) { return v; }
/* |x|, the sign bit of x alone, and a bitwise or (float64 tanh) */
VX_INLINE vx_t vx_abs(vx_t x) { return vx_from_bits(vx_to_bits(x) & ~((vx_bits_t)1 << (sizeof(vx_bits_t) * 8 - 1))); }
VX_INLINE vx_t vx_sign(vx_t x) { return vx_from_bits(vx_to_bits(x) & ((vx_bits_t)1 << (sizeof(vx_bits_t) * 8 - 1))); }
VX_INLINE vx_t vx_or_bits(vx_t a, vx_t b) { return vx_from_bits(vx_to_bits(a) | vx_to_bits(b)); }
VX_INLINE vx_bool_t vx_lanes(unsigned b) { return (int)(b & 1u); }
VX_INLINE unsigned vx_nz_bits(vx_t v) { return !(v == 0); }
VX_INLINE void vx_transpose_store(const vx_t *r, vx_float *o, size_t s)
{
    (void)s;
    *o = *r;
}
VX_INLINE unsigned vx_bytes_nz(const unsigned char *m, size_t n)
{
    unsigned bits = 0;
    for (size_t k = 0; k < n; k++) bits |= (unsigned)(m[k] != 0) << k;
    return bits;
}
VX_INLINE void vx_prefetch(const void *p) { (void)p; }
typedef double vx_wide_t;
VX_INLINE vx_wide_t vx_wide_zero(void) { return 0.0; }
VX_INLINE vx_wide_t vx_wide_add(vx_wide_t s, vx_t v) { return s + (double)v; }
VX_INLINE vx_wide_t vx_wide_sum2(vx_wide_t a, vx_wide_t b) { return a + b; }
VX_INLINE double vx_wide_hsum(vx_wide_t v) { return v; }
VX_INLINE vx_t vx_log_sub(vx_t v, double a, double b) { return (vx_float)(((double)v - a) - b); }

#endif /* ATTNX_SIMD_SCALAR_H */
