/*
 * kernels/context.c -- ctx[j] = sum_{t: w[t] != 0} w[t] * V[t, j].
 *
 * Computes: ctx in registers, CTX_NV vectors of columns at a time; each
 * nonzero weight broadcast and folded into the slice with one FMA per
 * vector (zero weights skip their row unread: masked keys cost nothing).
 * Slices of up to VX_CTX_PAIR_NV vectors sum even and odd rows in two sets
 * (else the FMA latency, not the loads, sets the pace), added at the end.
 * Rows come in blocks of CTX_ROWS, each block summed apart and then added
 * to ctx: the running sum takes T / CTX_ROWS roundings, not T.
 * Accuracy: per block a sum of up to CTX_ROWS terms in one or two chains,
 * one rounding per term with FMA, then T / CTX_ROWS additions:
 * |err_j| <= (CTX_ROWS + T / CTX_ROWS + 2) eps sum_t |w_t V_tj|. Memory: reads V once
 * (sizeof(element) * T * dv bytes), w once per slice, writes ctx once.
 */
#define CTX_NV 8   /* vectors of a column slice: acc (and acc2) in registers */
#define CTX_ROWS 256   /* rows summed apart before they reach ctx */

/* ctx[0 .. nv vectors) (the last one masked by km) for one column slice,
 * rows [t, T) (add: ctx += their sum, else ctx = it); nv and nset are
 * constants after inlining */
VX_INLINE void context_block(const vx_float *w, const vx_float *V, size_t t, size_t T, size_t dv, int nv,
                             int nset, vx_mask_t km, vx_float *ctx, int add)
{
    vx_t acc[CTX_NV], acc2[CTX_NV];
    for (int v = 0; v < nv; v++) acc[v] = acc2[v] = vx_zero();
    if (nset == 2) {
        for (; t + 2 <= T; t += 2) {
            vx_float w0 = w[t], w1 = w[t + 1];
            const vx_float *v0 = V + t * dv, *v1 = v0 + dv;
            if (w0 != 0) {
                vx_t b = vx_set1(w0);
                for (int v = 0; v < nv - 1; v++) acc[v] = vx_fma(b, vx_load(v0 + VX_W * v), acc[v]);
                acc[nv - 1] = vx_fma(b, vx_load_part(v0 + VX_W * (nv - 1), km), acc[nv - 1]);
            }
            if (w1 != 0) {
                vx_t b = vx_set1(w1);
                for (int v = 0; v < nv - 1; v++) acc2[v] = vx_fma(b, vx_load(v1 + VX_W * v), acc2[v]);
                acc2[nv - 1] = vx_fma(b, vx_load_part(v1 + VX_W * (nv - 1), km), acc2[nv - 1]);
            }
        }
    }
    for (; t < T; t++) {
        vx_float w0 = w[t];
        if (w0 == 0) continue;
        const vx_float *v0 = V + t * dv;
        vx_t b = vx_set1(w0);
        for (int v = 0; v < nv - 1; v++) acc[v] = vx_fma(b, vx_load(v0 + VX_W * v), acc[v]);
        acc[nv - 1] = vx_fma(b, vx_load_part(v0 + VX_W * (nv - 1), km), acc[nv - 1]);
    }
    if (nset == 2)
        for (int v = 0; v < nv; v++) acc[v] = vx_add(acc[v], acc2[v]);
    if (add) {
        for (int v = 0; v < nv - 1; v++) acc[v] = vx_add(vx_load(ctx + VX_W * v), acc[v]);
        acc[nv - 1] = vx_add(vx_load_part(ctx + VX_W * (nv - 1), km), acc[nv - 1]);
    }
    for (int v = 0; v < nv - 1; v++) vx_store(ctx + VX_W * v, acc[v]);
    vx_store_part(ctx + VX_W * (nv - 1), km, acc[nv - 1]);
}

/* ctx for one column slice, CTX_ROWS rows at a time */
VX_INLINE void context_cols(const vx_float *w, const vx_float *V, size_t T, size_t dv, int nv,
                            int nset, vx_mask_t km, vx_float *ctx)
{
    for (size_t t0 = 0; t0 < T || t0 == 0; t0 += CTX_ROWS) {
        const size_t t1 = T - t0 < CTX_ROWS ? T : t0 + CTX_ROWS;
        context_block(w, V, t0, t1, dv, nv, nset, km, ctx, t0 > 0);
    }
}

#define CTX_SETS(nv) ((nv) <= VX_CTX_PAIR_NV ? 2 : 1)

static void K_context(const vx_float *w, const vx_float *V, size_t T, size_t dv, vx_float *ctx)
{
    for (size_t c = 0; c < dv; c += CTX_NV * VX_W) {
        size_t nc = dv - c < CTX_NV * VX_W ? dv - c : CTX_NV * VX_W;
        int nv = (int)((nc + VX_W - 1) / VX_W);
        const vx_mask_t km = vx_tail(nc - VX_W * (size_t)(nv - 1));
        const vx_float *Vc = V + c;
        vx_float *cc = ctx + c;
        switch (nv) {
        case 1: context_cols(w, Vc, T, dv, 1, CTX_SETS(1), km, cc); break;
        case 2: context_cols(w, Vc, T, dv, 2, CTX_SETS(2), km, cc); break;
        case 3: context_cols(w, Vc, T, dv, 3, CTX_SETS(3), km, cc); break;
        case 4: context_cols(w, Vc, T, dv, 4, CTX_SETS(4), km, cc); break;
        case 5: context_cols(w, Vc, T, dv, 5, CTX_SETS(5), km, cc); break;
        case 6: context_cols(w, Vc, T, dv, 6, CTX_SETS(6), km, cc); break;
        case 7: context_cols(w, Vc, T, dv, 7, CTX_SETS(7), km, cc); break;
        default: context_cols(w, Vc, T, dv, 8, CTX_SETS(8), km, cc); break;
        }
    }
}
