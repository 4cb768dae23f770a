/*
 * kernels/exp.c -- y[i] = exp(x[i]) for i < n; y may be x.
 *
 * Computes: vx_exp2sum (kernels/vexp.h) two vectors per step, the tail
 * through partial loads and stores. Accuracy: that of vx_exp2sum, within
 * 1 ulp at every level. Memory: reads x once, writes y once
 * (2 * sizeof(element) * n bytes). Not public: the tests measure it.
 */
static void K_exp(const vx_float *x, size_t n, vx_float *y)
{
    const vx_t zero = vx_zero();
    size_t i = 0;
    for (; i + 2 * VX_W <= n; i += 2 * VX_W) {
        vx_t a = vx_load(x + i), b = vx_load(x + i + VX_W);
        vx_store(y + i, vx_exp2sum(a, zero));
        vx_store(y + i + VX_W, vx_exp2sum(b, zero));
    }
    for (; i < n; i += VX_W) {
        vx_mask_t k = vx_tail(n - i >= VX_W ? VX_W : n - i);
        vx_store_part(y + i, k, vx_exp2sum(vx_load_part(x + i, k), zero));
    }
}
