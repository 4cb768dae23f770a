/*
 * kernels/softmax.c -- y = softmax(x) over n >= 1 elements; y may be x.
 * Returns 1 when the row max is -inf (all -inf: y is NaN), else 0.
 *
 * Computes, in three passes:
 *   1. the max, and whether any element is NaN (vx_max alone would lose
 *      it): NaN anywhere, or an all -inf row, gives NaN everywhere;
 *   2. e = exp(x - max) with the subtraction's rounding compensated
 *      (vx_exp_diff), stored in y, and summed: float64 in per-lane Kahan
 *      sums (VX_UNROLL sets), combined by exact two-sums (vx_hsum2);
 *      float32 in float64 lanes (each float exp converted exactly);
 *   3. y = e / sum: float64 as q = e * (1/sum) plus one FMA correction with
 *      the exact remainder (Markstein: a division's result at a fraction of
 *      its cost; lanes with a subnormal quotient divide, and levels without
 *      FMA divide); float32 as e * r_hi + e * r_lo, r_hi + r_lo = 1/sum to
 *      2^-48, one FMA rounding (levels without FMA divide in double).
 *      Both on e * 2^64, the result scaled back by 2^-64: the correction
 *      terms (e * r_lo, e - q * sum) lie 2^24 / 2^53 below e / sum, so for
 *      a normal result far below 1 they would be subnormal, and Intel cores
 *      take a microcode assist on each such product (7x slower softmax when
 *      10% of float32 scores sit at max - 60). Power-of-2 scalings are
 *      exact while the values stay normal: the same bits as without them.
 * Overflow cannot happen: x - max <= 0, and the max's own term is 1, so
 * sum >= 1. -inf entries get weight 0.
 * Accuracy: float64 within 4 ulp of the exact weights; float32 one
 * rounding after exp's 0.64 ulp (1 ulp measured).
 * Memory: reads x twice and y once, writes y twice (4 passes of
 * sizeof(element) * n bytes; float32's sum lives in registers).
 */

/* The row max, or NaN when the row holds a NaN. */
static vx_float row_max(const vx_float *x, size_t n)
{
    const vx_t ninf = vx_set1(-INFINITY);
    vx_t m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
    vx_bool_t nan = vx_false();
    size_t i = 0;
    for (; i + 4 * VX_W <= n; i += 4 * VX_W) {
        vx_t a = vx_load(x + i), b = vx_load(x + i + VX_W);
        vx_t c = vx_load(x + i + 2 * VX_W), e = vx_load(x + i + 3 * VX_W);
        nan = vx_or_b(nan, vx_or_b(vx_unord(a, b), vx_unord(c, e)));
        m0 = vx_max(m0, a);
        m1 = vx_max(m1, b);
        m2 = vx_max(m2, c);
        m3 = vx_max(m3, e);
    }
    for (; i < n; i += VX_W) {
        vx_t a = vx_load_part_or(x + i, vx_tail(n - i >= VX_W ? VX_W : n - i), -INFINITY);
        nan = vx_or_b(nan, vx_unord(a, a));
        m0 = vx_max(m0, a);
    }
    if (vx_any(nan)) return NAN;
    return vx_hmax(vx_max(vx_max(m0, m1), vx_max(m2, m3)));
}

#if defined(ATTNX_F32)
/* The sum of exp(x - m) in double; y = the exps when store. Exps below
 * 2^-125 (the subnormal floats, whose widening is an assist on Intel)
 * leave the sum (exp_diff_kept): the callers' sums are at least 1
 * (softmax) or R_TRUSTED = 2^-60 (log_softmax), where n of them are
 * nothing at float precision. */
VX_INLINE double exp_sum(const vx_float *x, size_t n, vx_float m, vx_float *y, int store)
{
    const vx_t mv = vx_set1(m);
    vx_t k;
    vx_wide_t s[VX_UNROLL];
    for (int u = 0; u < VX_UNROLL; u++) s[u] = vx_wide_zero();
    size_t i = 0;
    for (; i + VX_UNROLL * VX_W <= n; i += VX_UNROLL * VX_W)
        for (int u = 0; u < VX_UNROLL; u++) {
            vx_t e = exp_diff_kept(vx_load(x + i + u * VX_W), mv, &k);
            if (store) vx_store(y + i + u * VX_W, e);
            s[u] = vx_wide_add(s[u], k);
        }
    for (; i < n; i += VX_W) {
        const vx_mask_t t = vx_tail(n - i >= VX_W ? VX_W : n - i);
        vx_t e = vx_keep_tail(t, exp_diff_kept(vx_load_part(x + i, t), mv, &k));
        if (store) vx_store_part(y + i, t, e);
        s[0] = vx_wide_add(s[0], vx_keep_tail(t, k));
    }
    for (int u = 1; u < VX_UNROLL; u++) s[0] = vx_wide_sum2(s[0], s[u]);
    return vx_wide_hsum(s[0]);
}

/* y = e / sum, in place */
static void divide_by(vx_float *y, size_t n, double sum)
{
#if VX_HAS_FMA
    const double r = 1.0 / sum;
    const float rhf = (float)r, rlf = (float)(r - rhf);
    /* (e 2^64) r_h + (e 2^64) r_l as e (2^64 r_h) + e (2^64 r_l): the same
     * exact products (power-of-2 scalings of normal numbers), one multiply
     * fewer per vector */
    const vx_t rh = vx_set1(rhf * 0x1p64f), rl = vx_set1(rlf * 0x1p64f), down = vx_set1(0x1p-64f);
    size_t i = 0;
    for (; i + VX_UNROLL * VX_W <= n; i += VX_UNROLL * VX_W)
        for (int u = 0; u < VX_UNROLL; u++) {
            vx_t e = vx_load(y + i + u * VX_W);
            vx_store(y + i + u * VX_W, vx_mul(vx_fma(e, rh, vx_mul(e, rl)), down));
        }
    for (; i < n; i += VX_W) {
        const vx_mask_t k = vx_tail(n - i >= VX_W ? VX_W : n - i);
        vx_t e = vx_load_part(y + i, k);
        vx_store_part(y + i, k, vx_mul(vx_fma(e, rh, vx_mul(e, rl)), down));
    }
#else
    for (size_t i = 0; i < n; i++) y[i] = (float)((double)y[i] / sum);
#endif
}

#else
/* One Kahan step per lane. */
VX_INLINE void kahan(vx_t *sum, vx_t *comp, vx_t e)
{
    vx_t yk = vx_sub(e, *comp);
    vx_t t = vx_add(*sum, yk);
    *comp = vx_sub(vx_sub(t, *sum), yk);
    *sum = t;
}

/* e / S from r = 1/S (Markstein, see the top), on e 2^64 */
VX_INLINE vx_t div_by(vx_t e, vx_t S, vx_t r)
{
    const vx_t es = vx_mul(e, vx_set1(0x1p64));
    vx_t q = vx_mul(es, r);
    q = vx_mul(vx_fma(vx_fnma(q, S, es), r, q), vx_set1(0x1p-64));
    vx_bool_t tiny = vx_and_b(vx_lt(q, vx_set1(0x1p-1022)), vx_ne(e, vx_zero()));
    if (vx_any(tiny)) q = vx_select(tiny, q, vx_div(e, S));
    return q;
}

/* Each Kahan lane starts at SUM_BIAS, subtracted at the end: a lane
 * whose running sum were below 2^-969 (its exps all far below the max,
 * e^-680: every lane, for a row whose other scores sit that far below)
 * would make compensations below the normal range, an Intel microcode
 * assist at each element. From SUM_BIAS up, a compensation is the
 * rounding error of adding a normal exp (a multiple of its lowest bit,
 * 0 or at least 2^-1021) or the whole exp (normal): never subnormal.
 * The callers' sums are at least 1 (softmax: the max's own term) or at
 * least R_TRUSTED = 2^-850 (log_softmax), where the bias costs one
 * rounding. Exps below 2^-1021 (beyond max - 707.7: the subnormal ones)
 * leave the sum instead (exp_diff_kept): under n 2^-1021 of it, nothing
 * beside 2^-850. */
#define SUM_BIAS 0x1p-900

/* The sum of exp(x - m), Kahan-summed per lane (VX_UNROLL sets, combined
 * by exact two-sums, from SUM_BIAS); y = the exps when store. */
VX_INLINE double exp_sum(const vx_float *x, size_t n, vx_float m, vx_float *y, int store)
{
    const vx_t mv = vx_set1(m);
    vx_t k;
    vx_t s[VX_UNROLL], c[VX_UNROLL];
    for (int u = 0; u < VX_UNROLL; u++) {
        s[u] = vx_set1(SUM_BIAS);
        c[u] = vx_zero();
    }
    size_t i = 0;
    for (; i + VX_UNROLL * VX_W <= n; i += VX_UNROLL * VX_W)
        for (int u = 0; u < VX_UNROLL; u++) {
            vx_t e = exp_diff_kept(vx_load(x + i + u * VX_W), mv, &k);
            if (store) vx_store(y + i + u * VX_W, e);
            kahan(&s[u], &c[u], k);
        }
    for (; i < n; i += VX_W) {
        const vx_mask_t t = vx_tail(n - i >= VX_W ? VX_W : n - i);
        vx_t e = vx_keep_tail(t, exp_diff_kept(vx_load_part(x + i, t), mv, &k));
        if (store) vx_store_part(y + i, t, e);
        kahan(&s[0], &c[0], vx_keep_tail(t, k));
    }
    /* the Kahan sets: s0 + s1 exactly as S + err, minus the compensations */
    vx_t S = s[0], err = vx_sub(vx_zero(), c[0]);
    if (VX_UNROLL == 2) {
        vx_t bb;
        S = vx_add(s[0], s[VX_UNROLL - 1]);
        bb = vx_sub(S, s[0]);
        err = vx_add(vx_sub(s[0], vx_sub(S, bb)), vx_sub(s[VX_UNROLL - 1], bb));
        err = vx_sub(err, vx_add(c[0], c[VX_UNROLL - 1]));
    }
    return vx_hsum2(S, err) - VX_UNROLL * VX_W * SUM_BIAS;
}

/* y = e / sum, in place */
static void divide_by(vx_float *y, size_t n, double sum)
{
    size_t i = 0;
#if VX_HAS_FMA
    const vx_t sv = vx_set1(sum), rv = vx_set1(1.0 / sum);
    for (; i + VX_UNROLL * VX_W <= n; i += VX_UNROLL * VX_W)
        for (int u = 0; u < VX_UNROLL; u++)
            vx_store(y + i + u * VX_W, div_by(vx_load(y + i + u * VX_W), sv, rv));
#endif
    for (; i < n; i++) y[i] = y[i] / sum;
}
#endif

static int K_softmax(const vx_float *x, size_t n, vx_float *y)
{
    const vx_float mx = row_max(x, n);
    if (mx != mx || mx == -INFINITY) {
        for (size_t i = 0; i < n; i++) y[i] = NAN;
        return mx == -INFINITY;
    }
    const double sum = exp_sum(x, n, mx, y, 1);
    divide_by(y, n, sum);
    return 0;
}
