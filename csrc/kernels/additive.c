/*
 * kernels/additive.c -- additive (Bahdanau) attention, float64:
 *   tanh              y[i] = tanh(x[i]); y may be x
 *   additive_scores   s[t] = sum_j v[j] tanh(a[j] + Kp[t, j]), t < T, j < h
 *                     (Kp row idx[t] instead of t when idx is not NULL)
 *
 * Computes: tanh by vx_tanh (kernels/vtanh.h), two vectors a step, the
 * tail through partial loads and stores. The scores as dot_scores does
 * (reduce_rows, kernels/dot_scores.c): VX_DOT_ROWS rows of Kp at a time,
 * a and v loaded once for them, x = a + Kp and its tanh in registers, one
 * FMA into each row's accumulator, the accumulators transposed and added.
 * A row's score depends on a, v and its own row only, so splitting T
 * (threads, batches) is bitwise neutral.
 * Accuracy: tanh 0.62 ulp; a score within (h + 2) eps sum_j |v_j tanh_j|
 * (a + Kp rounded, the tanh, the sum's roundings).
 * Memory: tanh reads x and writes y once; scores read Kp once
 * (8 * T * h bytes), a and v from L1, no temporary array.
 */
static void K_tanh(const vx_float *x, size_t n, vx_float *y)
{
    size_t i = 0;
    for (; i + 2 * VX_W <= n; i += 2 * VX_W) {
        vx_t a = vx_load(x + i), b = vx_load(x + i + VX_W);
        vx_store(y + i, vx_tanh(a));
        vx_store(y + i + VX_W, vx_tanh(b));
    }
    for (; i < n; i += VX_W) {
        const vx_mask_t k = vx_tail(n - i >= VX_W ? VX_W : n - i);
        vx_store_part(y + i, k, vx_tanh(vx_load_part(x + i, k)));
    }
}

static void K_additive_scores(const vx_float *a, const vx_float *Kp, const size_t *idx, const vx_float *v,
                              size_t T, size_t h, vx_float *s)
{
    scores_rows(a, v, Kp, idx, T, h, NULL, s, 1);
}

const attnx_additive_kernels K_ADD_TABLE = {K_LEVEL_NAME, K_tanh, K_additive_scores};
