/*
 * kernels/log_softmax.c -- float32: y = (x - max) - log(sum exp(x - max)),
 * y may be x (float64 log-softmax is api_log_softmax.c over the exp
 * kernel). scipy's rules for non-finite input: a NaN or an all -inf row
 * gives NaN; a +inf gives NaN there and -inf elsewhere.
 *
 * Computes: the max (row_max, kernels/softmax.c), the float64 sum of
 * exps (exp_sum), its log by attnx_log_sum_f32 (which re-sums without the
 * max when the sum is within 2^-20 of 1, for log1p accuracy), then each
 * output as ((double)x - max) - log(sum), rounded once to float. Correct
 * where softmax underflows (x - max = -1000 gives -1000 - log(sum)).
 * Accuracy: 0.5 ulp measured (one rounding of a ~1e-16 relative result).
 * Memory: reads x three times (twice more in the log1p case), writes y
 * once.
 */
static double sum_exps(const vx_float *x, size_t n, vx_float m) { return exp_sum(x, n, m, NULL, 0); }

static void K_log_softmax(const vx_float *x, size_t n, vx_float *y)
{
    const vx_float mx = row_max(x, n);
    if (mx != mx || mx == -INFINITY) {
        for (size_t i = 0; i < n; i++) y[i] = NAN;
        return;
    }
    if (mx == INFINITY) {
        attnx_log_softmax_inf_f32(x, n, y);
        return;
    }
    const double ls = attnx_log_sum_f32(x, n, mx, sum_exps), md = mx;
    for (size_t i = 0; i < n; i += VX_W) {
        const vx_mask_t k = vx_tail(n - i >= VX_W ? VX_W : n - i);
        vx_store_part(y + i, k, vx_log_sub(vx_load_part(x + i, k), md, ls));
    }
}
