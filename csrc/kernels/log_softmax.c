/*
 * kernels/log_softmax.c -- y = (x - max) - log(sum exp(x - max)) over
 * n >= 1 elements, y may be x; without underflow (x - max = -1000 gives
 * -1000 - log S, where softmax is 0). scipy's rules for non-finite input:
 * a NaN or an all -inf row gives NaN; a +inf gives NaN there and -inf
 * elsewhere.
 *
 * Computes: the max (row_max, kernels/softmax.c); log S from the sums of
 * exp(x - max) of softmax's exp_sum (compensated subtraction, vx_exp_diff;
 * a float64 sum at both dtypes). S = 1 + R, the max's own term 1 exactly
 * and R the rest: log S = log1p(R), R summed without the max's entry, so
 * that a dominant score's -log1p(R) ~ -R keeps R's digits, which 1 + R
 * would round away (float32 first sums everything, and re-sums without the
 * max only when S < 1 + 2^-20, where the float64 S holds too few of R's
 * digits for a float result; float64 always does). The logarithms are
 * attnx_log_f64 / attnx_log1p_f64 (api_log_softmax.c, no libm). Then each
 * output: float32 as ((double)x - max) - log S rounded once to float;
 * float64 as (hi - log S) + lo, hi + lo = x - max an exact two-sum, so
 * the subtraction loses nothing even where the scores spread over
 * thousands.
 * Accuracy: float64 within 4 ulp, float32 0.5 ulp (one rounding of a
 * ~1e-16 relative result), a dominant score's tiny value included.
 * Memory: reads x three times (float32: once more in the log1p case),
 * writes y once.
 */
#define LOG1P_SWITCH 0x1p-20
/* exp_sum is exact to its rounding from R_TRUSTED up (see it in
 * softmax.c: its small exps leave the sum) */
#if defined(ATTNX_F32)
#define R_TRUSTED 0x1p-60
#else
#define R_TRUSTED 0x1p-850
#endif

/* log S, S = sum exp(x_i - m) with m the row max (finite) */
static double log_sum(const vx_float *x, size_t n, vx_float m)
{
#if defined(ATTNX_F32)
    const double s = exp_sum(x, n, m, NULL, 0);
    if (s - 1.0 >= LOG1P_SWITCH) return attnx_log_f64(s);
#endif
    size_t i = 0;
    while (x[i] != m) i++;
    /* another entry equal to m adds its exact 1 to R: still log1p(R) */
    double R = exp_sum(x, i, m, NULL, 0) + exp_sum(x + i + 1, n - i - 1, m, NULL, 0);
    /* A smaller R (every other score far below the max) is exp(m2 - m) R2,
     * with m2 the largest of the others and R2 >= 1 (m2's own term); the
     * exp scaled by 2^512, so that a subnormal one keeps its digits until
     * the product is scaled back (one rounding, only if R is subnormal). */
    if (R < R_TRUSTED) {
        const vx_float lo = i ? row_max(x, i) : -INFINITY, hi = row_max(x + i + 1, n - i - 1);
        const vx_float m2 = lo > hi ? lo : hi;
        if (m2 == -INFINITY || (double)m2 - (double)m < -1000.0) return 0.0;   /* R < 2^-1370 */
        const double R2 = exp_sum(x, i, m2, NULL, 0) + exp_sum(x + i + 1, n - i - 1, m2, NULL, 0);
        R = attnx_exp_diff_scaled_scalar(m2, m, 512) * R2 * 0x1p-512;
    }
    return attnx_log1p_f64(R);
}

static void K_log_softmax(const vx_float *x, size_t n, vx_float *y)
{
    const vx_float mx = row_max(x, n);
    if (mx != mx || mx == -INFINITY) {
        for (size_t i = 0; i < n; i++) y[i] = NAN;
        return;
    }
    if (mx == INFINITY) {
        for (size_t i = 0; i < n; i++) y[i] = x[i] == INFINITY ? NAN : -INFINITY;
        return;
    }
    const double ls = log_sum(x, n, mx);
#if !defined(ATTNX_F32)
    const vx_t mv = vx_set1(mx), lsv = vx_set1(ls), ninf = vx_set1(-INFINITY);
#endif
    for (size_t i = 0; i < n; i += VX_W) {
        const vx_mask_t k = vx_tail(n - i >= VX_W ? VX_W : n - i);
        const vx_t v = vx_load_part(x + i, k);
#if defined(ATTNX_F32)
        vx_store_part(y + i, k, vx_log_sub(v, mx, ls));
#else
        /* hi + lo = v - m exactly (two-sum); lo is NaN where hi = -inf */
        const vx_t hi = vx_sub(v, mv), z = vx_sub(hi, v);
        const vx_t lo = vx_sub(vx_sub(v, vx_sub(hi, z)), vx_add(mv, z));
        vx_store_part(y + i, k, vx_add(vx_sub(hi, lsv), vx_keep(vx_lt(ninf, hi), lo)));
#endif
    }
}
