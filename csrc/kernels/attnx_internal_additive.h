/*
 * attnx_internal_additive.h -- what the additive-attention kernel files
 * share: their function table (one per SIMD level, in the level record
 * with the float64 table), the tanh algorithm and its constants, and the
 * split-product residual the portable level needs without FMA.
 * Never installed; nothing here is part of the public contract.
 *
 * Every helper is `static inline`, for the reason given at the top of
 * attnx_internal.h: each kernel file is compiled with its own ISA flags.
 */
#ifndef ATTNX_INTERNAL_ADDITIVE_H
#define ATTNX_INTERNAL_ADDITIVE_H

#include "attnx_internal.h"

/* The additive kernels of one SIMD level. Arguments are validated by
 * api_additive.c: no NULL pointer, no overflowing size. */
typedef struct attnx_additive_kernels {
    const char *name;

    /* y[i] = tanh(x[i]); y may be x. */
    void (*tanh)(const double *x, size_t n, double *y);

    /* s[t] = sum_j v[j] * tanh(a[j] + Kp[r, j]) for t < T, j < h, with r =
     * t, or idx[t] when idx is not NULL (the keys a mask lets through,
     * gathered into whole blocks). A score depends on a, v and its Kp row
     * alone (not on T or on where the row sits in a block), so splitting T,
     * or gathering rows, is bitwise neutral. */
    void (*scores)(const double *a, const double *Kp, const size_t *idx, const double *v,
                   size_t T, size_t h, double *s);
} attnx_additive_kernels;

extern const attnx_additive_kernels attnx_additive_kernels_scalar;
#if defined(ATTNX_HAVE_X86)
extern const attnx_additive_kernels attnx_additive_kernels_avx2;
extern const attnx_additive_kernels attnx_additive_kernels_avx512;
#endif
#if defined(ATTNX_HAVE_NEON)
extern const attnx_additive_kernels attnx_additive_kernels_neon;
#endif

/* -------------------------------------------------------------------------
 * tanh(x): the algorithm every level implements (on |x|; the sign of x is
 * put back at the end with a bit OR, so -0.0 stays -0.0 and the function is
 * exactly odd).
 *
 *   |x| < 0.3   tanh = x + x^3 P(x^2), P the degree-7 relative minimax
 *               approximation of (tanh(x)/x - 1)/x^2 on [0, 0.09] (Remez,
 *               rel. error 8.2e-17). The correction x^3 P is at most 3% of
 *               the result, so its rounding errors count for little: the
 *               last FMA/add dominates (0.57-0.59 ulp measured).
 *   |x| >= 0.3  tanh = 1 - 2/(E + 1), E = exp(2|x|) by the exp algorithm
 *               of attnx_internal.h (n <= 58 here: one 2^n scaling), but
 *               with e^r kept as a double-double sh + tl -> eh + el, so E
 *               carries ~2^-55.5 relative error instead of 0.5 ulp. Then
 *               D = E + 1 = dh + dl exactly (Fast2Sum, E > 1), q = 1/dh,
 *               and the exact residual 1 - q*dh (an FMA; split products
 *               in portable C) minus q*dl corrects the quotient; the final
 *               1 - 2q is split exactly (Fast2Sum) so only the last add
 *               rounds. Without the correction the rounding of 2/(E + 1)
 *               is amplified by the cancellation in 1 - u: 2.5 ulp at
 *               |x| = 0.3 instead of 0.62.
 *   |x| > 20    clamped to 20: 2/(e^40 + 1) < 2^-54, so 1 - u rounds to
 *               exactly 1 (tanh rounds to 1 from |x| ~ 19.06 on); +-inf
 *               give +-1. NaN passes the clamp and the arithmetic.
 *
 * The threshold 0.3 (not the usual 0.55) is where the two branches cost
 * least together: the corrected exp form stays within 0.62 ulp down to
 * 0.3, and the polynomial on [0, 0.3] needs degree 7 in x^2 where [0, 0.55]
 * needs 10. Both branches are computed for every lane and blended.
 * ------------------------------------------------------------------------- */
#define ATTNX_TANH_SMALL 0.3
#define ATTNX_TANH_CLAMP 20.0
#define ATTNX_TANH_P0 (-0x1.5555555555555p-2)
#define ATTNX_TANH_P1 0x1.1111111110b9fp-3
#define ATTNX_TANH_P2 (-0x1.ba1ba1b8dd820p-5)
#define ATTNX_TANH_P3 0x1.664f47a533f77p-6
#define ATTNX_TANH_P4 (-0x1.226de97477227p-7)
#define ATTNX_TANH_P5 0x1.d6b77a6548122p-9
#define ATTNX_TANH_P6 (-0x1.7ab0ce92794e6p-10)
#define ATTNX_TANH_P7 0x1.0bdf558e19719p-11

/* a with the low 27 bits of its significand cleared: at most 26
 * significant bits, and a - hi has at most 27. A bit mask rather than
 * Veltkamp's (2^27 + 1) a split, which breaks when a compiler contracts
 * c - a into an FMA. */
static inline double attnx_split_hi(double a)
{
    return attnx_bits_to_f64(attnx_f64_to_bits(a) & ~(uint64_t)0x7FFFFFF);
}

/* 1 - q*d for q within a few ulps of 1/d, to far better than the ~2^-53
 * it is worth: 1 - qh*dh is exact (an exact product near 1, Sterbenz), the
 * other products are exact or nearly, and their rounding sits ~2^-26 below
 * the result. Right with and without FMA contraction (portable C has no
 * FMA to ask for, and contracting p = q*d; 1 - p would make Dekker's
 * correction of p count twice). */
static inline double attnx_recip_residual(double q, double d)
{
    double qh = attnx_split_hi(q), ql = q - qh;
    double dh = attnx_split_hi(d), dl = d - dh;
    return ((1.0 - qh * dh) - (qh * dl + ql * dh)) - ql * dl;
}


#endif /* ATTNX_INTERNAL_ADDITIVE_H */
