/*
 * kernels/vtanh.h -- tanh on float64 vectors, written once over the
 * vocabulary: the algorithm, constants and error analysis stated in
 * attnx_internal_additive.h. Both branches are computed for every lane
 * and blended: |x| < 0.3 a polynomial x + x^3 P(x^2); else 1 - 2/(E + 1),
 * E = exp(2|x|) kept as a double-double, the quotient corrected by its
 * exact residual (one FMA; split products where the level has no FMA),
 * 1 - 2q split exactly. The sign goes back with a bit or: -0.0 stays
 * -0.0, the function is exactly odd, NaN passes.
 * Accuracy: 0.62 ulp measured (csrc/tests/test_additive.c). Registers
 * only; one division (1/D).
 */
#ifndef ATTNX_KERNELS_VTANH_H
#define ATTNX_KERNELS_VTANH_H

static const vx_float vx_tanh_p[8] = {ATTNX_TANH_P0, ATTNX_TANH_P1, ATTNX_TANH_P2, ATTNX_TANH_P3,
                                      ATTNX_TANH_P4, ATTNX_TANH_P5, ATTNX_TANH_P6, ATTNX_TANH_P7};

VX_INLINE vx_t vx_tanh(vx_t x)
{
    const vx_t one = vx_set1(1.0), sign = vx_sign(x);
    /* x second: a NaN passes through the clamp (see vx_min) */
    const vx_t ax = vx_min(vx_set1(ATTNX_TANH_CLAMP), vx_abs(x));

    /* |x| < 0.3: x + x^3 P(x^2) */
    const vx_t s = vx_mul(ax, ax);
    vx_t p = vx_fma(vx_set1(vx_tanh_p[7]), s, vx_set1(vx_tanh_p[6]));
    for (int k = 5; k >= 0; k--) p = vx_fma(p, s, vx_set1(vx_tanh_p[k]));
    const vx_t small = vx_fma(vx_mul(ax, s), p, ax);

    /* E = exp(2|x|) = 2^n (eh + el), the exp of kernels/vexp.h without
     * its final rounding: e^r = sh + tl, then eh + el exactly (Fast2Sum) */
    const vx_t shifter = vx_set1(VX_SHIFTER);
    const vx_t y = vx_add(ax, ax);
    const vx_t t = vx_fma(y, vx_set1(VX_LOG2E), shifter);
    const vx_t n = vx_sub(t, shifter);
    const vx_t rh = vx_fnma(n, vx_set1(VX_LN2_HI), y);   /* exact */
    const vx_t rl = vx_mul(n, vx_set1(-VX_LN2_LO));
    const vx_t r = vx_add(rh, rl), r2 = vx_mul(r, r);
    vx_t q = vx_exp_poly(r, r2);
    const vx_t sh = vx_add(one, rh);
    const vx_t sl = vx_add(vx_sub(one, sh), rh);
    const vx_t tl = vx_add(sl, vx_fma(r2, q, rl));
    vx_t eh = vx_add(sh, tl);
    vx_t el = vx_sub(tl, vx_sub(eh, sh));
    /* 2^n, 0 <= n <= 58: t's low bits hold n (see vx_exp2sum) */
    const vx_t sc = vx_from_bits(vb_shl_mant(vb_add(vx_to_bits(t), vb_set1(VX_EXP_BIAS))));
    eh = vx_mul(eh, sc);
    el = vx_mul(el, sc);

    /* D = E + 1 = dh + dl; 1/D = qh (1 + res) */
    const vx_t dh = vx_add(eh, one);
    const vx_t dl = vx_add(vx_sub(one, vx_sub(dh, eh)), el);
    const vx_t qh = vx_div(one, dh);
#if VX_HAS_FMA
    vx_t res = vx_fnma(qh, dh, one);   /* exact */
#else
    vx_t res = attnx_recip_residual(qh, dh);   /* one lane: split products */
#endif
    res = vx_fnma(qh, dl, res);
    /* 1 - 2 qh (1 + res), with 1 - 2qh split exactly */
    const vx_t q2 = vx_add(qh, qh);
    const vx_t s1 = vx_sub(one, q2);
    const vx_t e1 = vx_sub(vx_sub(one, s1), q2);
    const vx_t large = vx_add(s1, vx_fnma(res, q2, e1));

    return vx_or_bits(vx_select(vx_lt(ax, vx_set1(ATTNX_TANH_SMALL)), large, small), sign);
}

#endif /* ATTNX_KERNELS_VTANH_H */
