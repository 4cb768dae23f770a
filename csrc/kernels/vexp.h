/*
 * kernels/vexp.h -- exp on vectors, written once over the vocabulary
 * (simd/<isa>.h) for the element type the level file selected: the
 * algorithm stated in attnx_internal.h (float64) and attnx_internal_f32.h
 * (float32), which also give its constants and measured error.
 *
 *   vx_exp2sum(hi, lo)   exp(hi + lo) per lane; lo must be finite
 *   vx_exp_diff(a, b)    exp(a - b) with the subtraction's rounding
 *                        compensated (exact two-sum, lo zeroed where hi
 *                        is outside the exp range or NaN)
 *   exp_diff_kept(a, b, &k)  the same, and k = it with its lanes below
 *                        2^-1021 (float 2^-125) zeroed: a summand that
 *                        keeps softmax's Kahan sums in the normal range
 *   vx_exp_below(a, b)   vx_exp_diff where a <= b (or NaN) in every lane,
 *                        the same results without the overflow test
 *
 * Accuracy: 0.67 ulp (float64) / 0.64 ulp (float32) measured where the
 * result is normal, 0.75 ulp at the subnormal boundary, at the FMA levels;
 * the portable level (two roundings for each vx_fma) stays within 1 ulp
 * (tests/test_exp.py and csrc/tests measure every level). No memory
 * traffic: registers only.
 */
#ifndef ATTNX_KERNELS_VEXP_H
#define ATTNX_KERNELS_VEXP_H

#if defined(ATTNX_F32)
#define VX_EXP_LO ATTNX_EXPF_LO_CLAMP
#define VX_EXP_HI ATTNX_EXPF_HI_CLAMP
#define VX_LOG2E ATTNX_LOG2EF
#define VX_LN2_HI ATTNX_LN2F_HI
#define VX_LN2_LO ATTNX_LN2F_LO
#define VX_SHIFTER ATTNX_SHIFTERF
#define VX_EXP_BIAS 127
#define VX_SUBNORMAL_SHIFT 149      /* 2^-149: the float subnormal grid */
#define VX_SUBNORMAL_N (-125.5f)    /* n below: the result may be subnormal */
#define VX_TOP_N 127.5f             /* n above: 2^n is not a float */
#define VX_TWO_MANT 0x1p23f
#define VX_EXP_NC 6
static const vx_float vx_exp_c[VX_EXP_NC] = {ATTNX_EXPF_C2, ATTNX_EXPF_C3, ATTNX_EXPF_C4,
                                             ATTNX_EXPF_C5, ATTNX_EXPF_C6, ATTNX_EXPF_C7};
#else
#define VX_EXP_LO ATTNX_EXP_LO_CLAMP
#define VX_EXP_HI ATTNX_EXP_HI_CLAMP
#define VX_LOG2E ATTNX_LOG2E
#define VX_LN2_HI ATTNX_LN2_HI
#define VX_LN2_LO ATTNX_LN2_LO
#define VX_SHIFTER ATTNX_SHIFTER
#define VX_EXP_BIAS 1023
#define VX_SUBNORMAL_SHIFT 1074
#define VX_SUBNORMAL_N (-1021.5)    /* n below: the result may be subnormal */
#define VX_TOP_N 1023.5
#define VX_TWO_MANT 0x1p52
#define VX_EXP_NC 12
static const vx_float vx_exp_c[VX_EXP_NC] = {
    ATTNX_EXP_C2, ATTNX_EXP_C3, ATTNX_EXP_C4,  ATTNX_EXP_C5,  ATTNX_EXP_C6,  ATTNX_EXP_C7,
    ATTNX_EXP_C8, ATTNX_EXP_C9, ATTNX_EXP_C10, ATTNX_EXP_C11, ATTNX_EXP_C12, ATTNX_EXP_C13};
#endif

/* q(r) = sum_k c_k r^k, which enters exp only as r^2 q: as Horner in r^2
 * over pairs (c_2i + c_2i+1 r), half the dependency chain, or plain Horner
 * where the vocabulary asks for it (VX_EXP_HORNER) */
VX_INLINE vx_t vx_exp_poly(vx_t r, vx_t r2)
{
#if VX_EXP_HORNER
    vx_t q = vx_set1(vx_exp_c[VX_EXP_NC - 1]);
    for (int k = VX_EXP_NC - 2; k >= 0; k--) q = vx_fma(q, r, vx_set1(vx_exp_c[k]));
#else
    vx_t q = vx_fma(vx_set1(vx_exp_c[VX_EXP_NC - 1]), r, vx_set1(vx_exp_c[VX_EXP_NC - 2]));
    for (int k = VX_EXP_NC - 4; k >= 0; k -= 2)
        q = vx_fma(q, r2, vx_fma(vx_set1(vx_exp_c[k + 1]), r, vx_set1(vx_exp_c[k])));
#endif
    (void)r2;
    return q;
}

/* exp2sum_kept's slow path: er 2^n where n is outside the normal
 * exponents in some lane (sub: those below) */
VX_INLINE vx_t exp_scaled_twice(vx_t er, vx_bits_t ti, vx_bool_t sub)
{
    const vx_t one = vx_set1(1);
    const vx_bits_t bias = vb_set1(VX_EXP_BIAS);
    /* (bits(shifter) even) (bits >> 1) carries floor(n/2), bits -
     * (bits >> 1) ceil(n/2): two exact power-of-2 scalings, so overflow
     * and underflow round once. */
    vx_bits_t h = vb_shr1(ti);
    vx_t s1 = vx_from_bits(vb_shl_mant(vb_add(h, bias)));
    vx_t s2 = vx_from_bits(vb_shl_mant(vb_add(vb_sub(ti, h), bias)));
    /* Subnormal results: a multiply that underflows takes a microcode
     * assist on x86 (3-4x slower), and such lanes are common in softmax
     * over a wide spread. er * 2^n is rounded to the subnormal grid by
     * adding 2^mant to er * 2^(n + shift) (exact, normal): the same single
     * rounding, and the low bits are the subnormal. The other lanes
     * scale by 1: their 2^(n + shift) would not fit the exponent field,
     * and its wrapped bits can be a subnormal (an assist of its own). */
    if (vx_any(sub)) {
        const vx_t two_m = vx_set1(VX_TWO_MANT);
        vx_t zs = vx_select(sub, one, vx_from_bits(vb_shl_mant(vb_add(ti, vb_set1(VX_SUBNORMAL_SHIFT + VX_EXP_BIAS)))));
        vx_t z = vx_mul(er, zs);
        /* sub holds n = the lowest normal exponent too, whose er < 1 makes
         * a subnormal and er >= 1 does not (z >= 2^mant: scaled) */
        const vx_bool_t tl = vx_and_b(sub, vx_lt(z, two_m));
        vx_t tiny = vx_from_bits(vb_sub(vx_to_bits(vx_add(z, two_m)), vx_to_bits(two_m)));
        s1 = vx_select(tl, s1, one);
        s2 = vx_select(tl, s2, one);
        return vx_select(tl, vx_mul(vx_mul(er, s1), s2), tiny);
    }
    return vx_mul(vx_mul(er, s1), s2);
}

#if defined(__GNUC__) || defined(__clang__)
#define VX_LIKELY(x) __builtin_expect(!!(x), 1)
#else
#define VX_LIKELY(x) (x)
#endif

/* exp(hi + lo); with kept (a constant NULL or not: inlined either way),
 * *kept = the same with its lanes below 2^-1021 (float: 2^-125; the
 * subnormal ones and the lowest normal binade) zeroed, the summand of a
 * sum far above them (exp_sum in kernels/softmax.c); a blend in the slow
 * path only, where those lanes are. nonpos (a constant): the caller knows
 * hi <= 0 or NaN in every lane (softmax weights against their maximum),
 * so the upper clamp and the overflow test are left out. */
VX_INLINE vx_t exp2sum_core(vx_t hi, vx_t lo, vx_t *kept, int nonpos)
{
    const vx_t shifter = vx_set1(VX_SHIFTER), one = vx_set1(1);
    /* x second: a NaN passes through the clamp (see vx_max) */
    vx_t x = vx_max(vx_set1(VX_EXP_LO), hi);
    if (!nonpos) x = vx_min(vx_set1(VX_EXP_HI), x);
    vx_t t = vx_fma(x, vx_set1(VX_LOG2E), shifter);   /* n in t's low bits */
    vx_t n = vx_sub(t, shifter);
    /* rh exact (Cody-Waite, Sterbenz); 1 + rh is carried exactly as
     * sh + sl below, so only the final add rounds */
    vx_t rh = vx_fnma(n, vx_set1(VX_LN2_HI), x);
    vx_t rl = vx_fnma(n, vx_set1(VX_LN2_LO), lo);
    vx_t r = vx_add(rh, rl);
    vx_t r2 = vx_mul(r, r);
    vx_t q = vx_exp_poly(r, r2);
    vx_t sh = vx_add(one, rh);
    vx_t sl = vx_add(vx_sub(one, sh), rh);                  /* exact: Fast2Sum */
    vx_t er = vx_add(sh, vx_add(sl, vx_fma(r2, q, rl)));
    /* bits(t) = bits(shifter) + n, and bits(shifter) has no set bit that
     * survives the shift into the exponent field (nor the sign bit): with
     * n a normal exponent (every lane, the common case) the result is er
     * times 2^n, one exact power of 2, rounded once. */
    vx_bits_t ti = vx_to_bits(t);
    const vx_bits_t bias = vb_set1(VX_EXP_BIAS);
    const vx_bool_t sub = vx_lt(n, vx_set1(VX_SUBNORMAL_N));
    if (VX_LIKELY(!vx_any(nonpos ? sub : vx_or_b(sub, vx_lt(vx_set1(VX_TOP_N), n))))) {
        const vx_t e = vx_mul(er, vx_from_bits(vb_shl_mant(vb_add(ti, bias))));
        if (kept) *kept = e;
        return e;
    }
    const vx_t e = exp_scaled_twice(er, ti, sub);   /* two scalings */
    if (kept) *kept = vx_select(sub, e, vx_zero());
    return e;
}

VX_INLINE vx_t exp2sum_kept(vx_t hi, vx_t lo, vx_t *kept)
{
    return exp2sum_core(hi, lo, kept, 0);
}

VX_INLINE vx_t vx_exp2sum(vx_t hi, vx_t lo)
{
    return exp2sum_core(hi, lo, NULL, 0);
}

/* exp(a - b), see the top; kept and nonpos (a <= b or NaN) as in
 * exp2sum_core */
VX_INLINE vx_t exp_diff_core(vx_t a, vx_t b, vx_t *kept, int nonpos)
{
    vx_t hi = vx_sub(a, b);
    vx_t z = vx_sub(hi, a);
    vx_t lo = vx_sub(vx_sub(a, vx_sub(hi, z)), vx_add(b, z));
    vx_bool_t sane = vx_ge(hi, vx_set1(VX_EXP_LO));
    if (!nonpos) sane = vx_and_b(sane, vx_le(hi, vx_set1(VX_EXP_HI)));
    return exp2sum_core(hi, vx_keep(sane, lo), kept, nonpos);
}

VX_INLINE vx_t exp_diff_kept(vx_t a, vx_t b, vx_t *kept)
{
    return exp_diff_core(a, b, kept, 0);
}

VX_INLINE vx_t vx_exp_diff(vx_t a, vx_t b)
{
    return exp_diff_core(a, b, NULL, 0);
}

/* exp(a - b) where a <= b or NaN in every lane: a weight against its
 * row's maximum */
VX_INLINE vx_t vx_exp_below(vx_t a, vx_t b)
{
    return exp_diff_core(a, b, NULL, 1);
}

#endif /* ATTNX_KERNELS_VEXP_H */
