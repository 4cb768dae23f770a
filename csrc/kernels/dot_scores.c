/*
 * kernels/dot_scores.c -- s[t] = scale * dot(q, K[t]) for t < T.
 *
 * Computes: VX_DOT_ROWS key rows at a time, one vector accumulator per row
 * across d (q loaded once per vector of columns for all the rows), then the
 * rows' partial vectors transposed and added (vx_transpose_sum) into whole
 * vectors of scores, scaled, stored (the tail of d and of T through partial
 * loads and stores). Accuracy: each dot product is VX_W * VX_DOT_CHAINS
 * interleaved partial sums (one rounding per term where the level has FMA)
 * and a tree of adds: |err| <= (d / 4 + 4) eps sum_j |q_j K_tj| at every
 * level (every level keeps at least 4 partial sums).
 * Memory: reads K once (sizeof(element) * T * d bytes), q from L1, writes
 * s once.
 */
#define DOT_NV (VX_DOT_ROWS / VX_W)   /* vectors of scores per step */

#define DOT_STEP (VX_W * VX_DOT_CHAINS)   /* columns per step */

/* out[g] lane i = sum_j term(j, k[g * VX_W + i]) with term q_j k_j
 * (dot) or v_j tanh(q_j + k_j) (additive, float64: kernels/additive.c);
 * chain c of row i sums the columns j with (j / VX_W) mod VX_DOT_CHAINS
 * == c, the tail goes to chain 0, and the chains are added pairwise. A
 * row's sum depends on nothing but its row (not on T or its block). */
#if defined(ATTNX_F32)
#define TERM_FMA(qv, vv, kv, a) ((void)(vv), vx_fma(qv, kv, a))
#else
#define TERM_FMA(qv, vv, kv, a) (additive ? vx_fma(vv, vx_tanh(vx_add(qv, kv)), a) : vx_fma(qv, kv, a))
#endif
VX_INLINE void reduce_rows(const vx_float *q, const vx_float *v, const vx_float *const *k, size_t d, vx_t *out,
                           int additive)
{
    vx_t a[VX_DOT_CHAINS][VX_DOT_ROWS];
    for (int c = 0; c < VX_DOT_CHAINS; c++)
        for (int i = 0; i < VX_DOT_ROWS; i++) a[c][i] = vx_zero();
    size_t j = 0;
    for (; j + DOT_STEP <= d; j += DOT_STEP)
        for (int c = 0; c < VX_DOT_CHAINS; c++) {
            vx_t qv = vx_load(q + j + c * VX_W), vv = additive ? vx_load(v + j + c * VX_W) : qv;
            for (int i = 0; i < VX_DOT_ROWS; i++)
                a[c][i] = TERM_FMA(qv, vv, vx_load(k[i] + j + c * VX_W), a[c][i]);
        }
    for (; j < d; j += VX_W) {
        const vx_mask_t m = vx_tail(d - j < VX_W ? d - j : VX_W);
        /* lanes past d: 0 * 0, or 0 * tanh(0 + 0) = 0 */
        vx_t qv = vx_load_part(q + j, m), vv = additive ? vx_load_part(v + j, m) : qv;
        for (int i = 0; i < VX_DOT_ROWS; i++) a[0][i] = TERM_FMA(qv, vv, vx_load_part(k[i] + j, m), a[0][i]);
    }
    for (int w = 1; w < VX_DOT_CHAINS; w *= 2)
        for (int c = 0; c + w < VX_DOT_CHAINS; c += 2 * w)
            for (int i = 0; i < VX_DOT_ROWS; i++) a[c][i] = vx_add(a[c][i], a[c + w][i]);
    for (int g = 0; g < DOT_NV; g++) out[g] = vx_transpose_sum(a[0] + g * VX_W);
    (void)v, (void)additive;
}

VX_INLINE void dot_rows(const vx_float *q, const vx_float *const *k, size_t d, vx_t *out)
{
    reduce_rows(q, NULL, k, d, out, 0);
}

/* s[t] = the reduction of row t of K for t < T (of row idx[t] when idx is
 * not NULL), VX_DOT_ROWS at a time */
VX_INLINE void scores_rows(const vx_float *q, const vx_float *v, const vx_float *K, const size_t *idx, size_t T,
                           size_t d, const vx_t *sc, vx_float *s, int additive)
{
    const vx_float *k[VX_DOT_ROWS];
    vx_t r[DOT_NV];
    for (size_t t0 = 0; t0 < T; t0 += VX_DOT_ROWS) {
        size_t nb = T - t0 < VX_DOT_ROWS ? T - t0 : VX_DOT_ROWS;
        /* rows past T re-read the block's first row; their lanes are not stored */
        for (size_t i = 0; i < VX_DOT_ROWS; i++) {
            size_t t = t0 + (i < nb ? i : 0);
            k[i] = K + (idx ? idx[t] : t) * d;
        }
        reduce_rows(q, v, k, d, r, additive);
        for (size_t g = 0; g < DOT_NV; g++) {
            size_t lo = g * VX_W;
            vx_t x = sc ? vx_mul(*sc, r[g]) : r[g];
            if (nb >= lo + VX_W)
                vx_store(s + t0 + lo, x);
            else if (nb > lo)
                vx_store_part(s + t0 + lo, vx_tail(nb - lo), x);
        }
    }
}

static void K_dot_scores(const vx_float *q, const vx_float *K, size_t T, size_t d, vx_float scale,
                         vx_float *s)
{
    const vx_t sc = vx_set1(scale);
    scores_rows(q, NULL, K, NULL, T, d, &sc, s, 0);
}
