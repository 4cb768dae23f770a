/*
 * api_backward.h -- the gradient of attention (attnx_attention_backward),
 * written once for both element types: included by api.c and api_f32.c
 * right after api_impl.h, whose helpers and AX_* definitions it uses.
 *
 * The FlashAttention-2 backward. The forward's out and lse are kept; the
 * weights are recomputed, never stored: for query row i and key t,
 *   p_it  = exp(scale q_i.k_t - lse_i)       (0 for a key the row does not see)
 *   D_i   = dO_i . O_i
 *   dp_it = dO_i . v_t
 *   ds_it = p_it (dp_it - D_i)
 *   dQ_i  = scale sum_t ds_it k_t
 *   dK_t  = scale sum_i ds_it q_i
 *   dV_t  = sum_i p_it dO_i
 * Two passes, so that no two threads ever add into the same output: pass 1
 * splits the query rows (each computes its dQ row from a row of T scores);
 * pass 2 splits the keys into blocks (each block sums over every query row,
 * in row order, into its own dK and dV rows). The accumulation order is fixed
 * by the shapes: the bits do not depend on the thread count. Scratch: a few
 * rows of T (pass 1) or of BWD_KEYS (pass 2) per work item, never Lq x T.
 * The scores and dp are the SIMD level's dot-score kernel, p its exp, dQ its
 * context kernel; the rank-1 updates of pass 2 are plain loops.
 *
 * A row whose |lse| passes LSE_EXACT takes its weights from its own state
 * instead: lse holds its rounding, eps |lse|, and that becomes the error of
 * every weight of the row (every one of them, for a row whose keys all
 * carry an additive mask of -1e9: 1 in float32, not 1 / T). Such a row's
 * largest score m and l = sum exp(s - m) come from its scores as the
 * backward computes them (pass 1, or the tiled kernel's row_states), and
 * p = exp(s - m) / l. Each row is a pair (shift, wt): (lse, 1) or (m, 1/l).
 */

#define BWD_KEYS 64     /* keys per pass-2 block */
#define BWD_ROWS 16     /* query rows per pass-1 item */
#define LSE_EXACT 64.0  /* |lse| past this: the row's own state (see the top) */

typedef struct {
    const attn_args *a;
    const AX_T *O, *dO, *lse;
    const ptrdiff_t *o_strides, *do_strides, *lse_strides;
    AX_T *dQ, *dK, *dV, *dS;  /* dS: the bias's gradient, or NULL */
    AX_T *shift, *wt;         /* per row (count x Lq): see the top */
    size_t nrow_items, nkey_items;
    int failed;               /* scratch could not be allocated */
} bwd_job;

/* The backward-only operands of batch item b. */
static void bwd_ptrs(const bwd_job *j, size_t b, const AX_T **O, const AX_T **dO,
                     const AX_T **lse)
{
    const attn_args *a = j->a;
    *O = j->O;
    *dO = j->dO;
    *lse = j->lse;
    if (a->nbatch) {
        *O += attnx_batch_offset(a->nbatch, a->batch_shape, j->o_strides, b);
        *dO += attnx_batch_offset(a->nbatch, a->batch_shape, j->do_strides, b);
        *lse += attnx_batch_offset(a->nbatch, a->batch_shape, j->lse_strides, b);
    }
}

/* Batch item b's operands, forward and backward, its mods, and Tb, the
 * keys it attends (its key length, or T). */
typedef struct {
    const AX_T *q, *k, *v, *O, *dO, *lse;
    const unsigned char *m;
    attnx_mods md;
    size_t Tb;
} bwd_item;

static void bwd_item_at(const bwd_job *j, size_t b, bwd_item *x)
{
    item_ptrs(j->a, b, &x->q, &x->k, &x->v, &x->m);
    bwd_ptrs(j, b, &x->O, &x->dO, &x->lse);
    x->Tb = item_mods(j->a, b, &x->md);
}

static AX_T dot_n(const AX_T *x, const AX_T *y, size_t n)
{
    double s = 0.0;
    for (size_t j = 0; j < n; j++) s += (double)x[j] * (double)y[j];
    return (AX_T)s;
}

/* The scores s[0..n) of row r of an item against keys t0 .. t0 + n, which
 * the row sees, as the forward computed them (md: the item's mods, row r
 * relative to it). With a softcap (md's: none where the element type
 * rounds it to inf), g[t] = its derivative sech^2(y), y = s / softcap, and
 * g is returned; else g is untouched, and NULL returned. The tanh is the
 * forward's, bit for bit: the kernel's softcap at 1 is tanh itself (x / 1
 * and 1 * tanh are exact). sech^2(y) = 4e / (1 + e)^2, e = exp(-2|y|), as
 * the tiled kernel's sech2_vec (1 - tanh^2 cancels where tanh nears 1), 0
 * where e would leave the normal range. */
static const AX_T *bwd_scores(const attn_args *a, const AX_T *qr, const AX_T *K, const unsigned char *mrow,
                              const attnx_mods *md, size_t r, size_t t0, size_t n, AX_T *s, AX_T *g)
{
    attnx_mods rm = attnx_mods_row(md, r, t0, sizeof(AX_T));
    const unsigned char *mk = mrow ? mrow + t0 : NULL;
    if (!(rm.softcap > 0)) {
        masked_scores(a->kt, qr, K + t0 * a->d, n, a->d, a->scale, mk, &rm, s);
        return NULL;
    }
    const AX_T c = (AX_T)rm.softcap;
    attnx_mods unit = rm;             /* tanh alone first */
    unit.bias = NULL;
    unit.slope = 0;
    unit.softcap = 1;
    masked_scores(a->kt, qr, K + t0 * a->d, n, a->d, a->scale, mk, NULL, s);
    const AX_T lo = sizeof(AX_T) == sizeof(float) ? (AX_T)-86.5 : (AX_T)-707.0;   /* as SECH2_LO */
    for (size_t t = 0; t < n; t++) {
        s[t] /= c;                    /* a masked key stays -inf */
        const AX_T z = -2 * (s[t] < 0 ? -s[t] : s[t]);
        g[t] = z >= lo ? z : 0;       /* NaN: 0 too */
    }
    a->kt->exp(g, n, g);
    for (size_t t = 0; t < n; t++) {
        const AX_T z = -2 * (s[t] < 0 ? -s[t] : s[t]), e1 = 1 + g[t];
        g[t] = z >= lo ? 4 * g[t] / (e1 * e1) : 0;
    }
    a->kt->shape_scores(&unit, 0, 0, n, s);
    for (size_t t = 0; t < n; t++) s[t] = mk && !mk[t] ? -INFINITY : c * s[t];
    rm.softcap = 0;                   /* then bias and ALiBi on the capped scores */
    if (attnx_mods_shape(&rm))
        for (size_t t = 0; t < n; t++)
            if (!mk || mk[t]) a->kt->shape_scores(&rm, 0, t, 1, s + t);
    return g;
}

/* A row's state from its n scores s (see the top): *shift = the largest,
 * *wt = 1 / sum exp(s - shift), summed compensated in double; -inf and 1
 * where every score is -inf, NaN where one is NaN or +inf. e: n of scratch. */
static void bwd_state(const AX_KERNELS *kt, const AX_T *s, size_t n, AX_T *e, AX_T *shift, AX_T *wt)
{
    AX_T m = (AX_T)-INFINITY;
    for (size_t t = 0; t < n; t++) {
        if (s[t] != s[t] || s[t] == (AX_T)INFINITY) {
            *shift = *wt = (AX_T)NAN;
            return;
        }
        if (s[t] > m) m = s[t];
    }
    *shift = m;
    *wt = 1;
    if (m == -INFINITY) return;
    for (size_t t = 0; t < n; t++) e[t] = s[t] == -INFINITY ? s[t] : s[t] - m;
    kt->exp(e, n, e);
    double sum = 0, c = 0;
    for (size_t t = 0; t < n; t++) {
        const double y = (double)e[t] - c, u = sum + y;
        c = (u - sum) - y;
        sum = u;
    }
    *wt = (AX_T)(1.0 / sum);
}

/* p (n entries) = exp(s - shift) wt in place, 0 where s = -inf (a masked
 * key) or the row attends nothing (shift = -inf); dp becomes ds = p (dp -
 * D), times the softcap's derivative g where g is not NULL. */
static void bwd_probs(const AX_KERNELS *kt, AX_T *s, AX_T *dp, size_t n, AX_T shift, AX_T wt, AX_T D,
                      const AX_T *g, AX_T *gb)
{
    if (shift == -INFINITY) {
        fill(s, n, 0);
        fill(dp, n, 0);
        return;
    }
    /* a masked key (score -inf) weighs 0 whatever shift is (a NaN lse must
     * not make it NaN: its key and value rows are never read) */
    for (size_t t = 0; t < n; t++) s[t] = s[t] == -INFINITY ? s[t] : s[t] - shift;
    kt->exp(s, n, s);
    if (wt != 1)   /* a masked key's 0 stays 0, even where wt is NaN */
        for (size_t t = 0; t < n; t++) s[t] = s[t] != 0 ? s[t] * wt : s[t];
    /* a masked key (its dp -inf: its value row unread) has p = 0 and ds 0 */
    for (size_t t = 0; t < n; t++) dp[t] = s[t] != 0 ? s[t] * (dp[t] - D) : 0;
    if (gb)   /* the bias's gradient: before the softcap's derivative */
        for (size_t t = 0; t < n; t++) gb[t] = dp[t];
    if (g)
        for (size_t t = 0; t < n; t++) dp[t] = s[t] != 0 ? dp[t] * g[t] : 0;
}

/* Pass 1: dQ for the rows of item it (batch item, chunk of BWD_ROWS rows). */
static void bwd_rows(void *ptr, size_t it0, size_t it1)
{
    bwd_job *j = (bwd_job *)ptr;
    const attn_args *a = j->a;
    const size_t per = (a->Lq + BWD_ROWS - 1) / BWD_ROWS;
    AX_T *s = (AX_T *)malloc(3 * a->T * sizeof(AX_T));
    if (!s) {
        j->failed = 1;
        return;
    }
    AX_T *dp = s + a->T, *g = dp + a->T;
    for (size_t it = it0; it < it1; it++) {
        size_t b = it / per, r0 = (it % per) * BWD_ROWS;
        size_t r1 = r0 + BWD_ROWS < a->Lq ? r0 + BWD_ROWS : a->Lq;
        bwd_item x;
        bwd_item_at(j, b, &x);
        for (size_t r = r0; r < r1; r++) {
            AX_T *dq = j->dQ + (b * a->Lq + r) * a->d;
            AX_T *gb = j->dS ? j->dS + (b * a->Lq + r) * a->T : NULL;
            size_t lo, hi;
            attnx_mods_range(&x.md, r, x.Tb, &lo, &hi);
            fill(dq, a->d, 0);
            if (gb) fill(gb, a->T, 0);
            if (lo == hi) continue;
            const size_t n = hi - lo;
            const AX_T *dor = x.dO + r * a->dv;
            const AX_T *gr = bwd_scores(a, x.q + r * a->d, x.k, x.m ? x.m + (ptrdiff_t)r * a->mask_row_stride : NULL,
                                        &x.md, r, lo, n, s, g);
            AX_T *sh = j->shift + b * a->Lq + r, *wt = j->wt + b * a->Lq + r;
            if (*wt == 0) bwd_state(a->kt, s, n, dp, sh, wt);   /* pass 2 reads it too */
            masked_scores(a->kt, dor, x.v + lo * a->dv, n, a->dv, (AX_T)1,
                          x.m ? x.m + (ptrdiff_t)r * a->mask_row_stride + lo : NULL, NULL, dp);
            bwd_probs(a->kt, s, dp, n, *sh, *wt, dot_n(dor, x.O + r * a->dv, a->dv), gr, gb ? gb + lo : NULL);
            a->kt->context(dp, x.k + lo * a->d, n, a->d, dq);
            for (size_t c = 0; c < a->d; c++) dq[c] *= a->scale;
        }
    }
    free(s);
}

/* Pass 2: dK and dV for the keys of item it (batch item, block of BWD_KEYS
 * keys), summing over every query row in order. */
static void bwd_keys(void *ptr, size_t it0, size_t it1)
{
    bwd_job *j = (bwd_job *)ptr;
    const attn_args *a = j->a;
    const size_t per = (a->T + BWD_KEYS - 1) / BWD_KEYS;
    AX_T s[BWD_KEYS], dp[BWD_KEYS], g[BWD_KEYS];
    for (size_t it = it0; it < it1; it++) {
        size_t b = it / per, t0 = (it % per) * BWD_KEYS;
        size_t nb = t0 + BWD_KEYS < a->T ? BWD_KEYS : a->T - t0;
        bwd_item x;
        bwd_item_at(j, b, &x);
        AX_T *dk = j->dK + (b * a->T + t0) * a->d, *dv = j->dV + (b * a->T + t0) * a->dv;
        fill(dk, nb * a->d, 0);
        fill(dv, nb * a->dv, 0);
        for (size_t r = 0; r < a->Lq; r++) {
            size_t lo, hi;
            attnx_mods_range(&x.md, r, x.Tb, &lo, &hi);
            if (lo < t0) lo = t0;
            if (hi > t0 + nb) hi = t0 + nb;
            if (lo >= hi) continue;
            const size_t n = hi - lo, o = lo - t0;
            const AX_T *dor = x.dO + r * a->dv, *qr = x.q + r * a->d;
            const AX_T *gr = bwd_scores(a, qr, x.k, x.m ? x.m + (ptrdiff_t)r * a->mask_row_stride : NULL, &x.md, r, lo, n, s, g);
            masked_scores(a->kt, dor, x.v + lo * a->dv, n, a->dv, (AX_T)1,
                          x.m ? x.m + (ptrdiff_t)r * a->mask_row_stride + lo : NULL, NULL, dp);
            bwd_probs(a->kt, s, dp, n, j->shift[b * a->Lq + r], j->wt[b * a->Lq + r],
                      dot_n(dor, x.O + r * a->dv, a->dv), gr, NULL);
            for (size_t t = 0; t < n; t++) {
                const AX_T pt = s[t], dst = dp[t];
                AX_T *dvt = dv + (o + t) * a->dv, *dkt = dk + (o + t) * a->d;
                if (pt != 0)
                    for (size_t c = 0; c < a->dv; c++) dvt[c] += pt * dor[c];
                if (dst != 0)
                    for (size_t c = 0; c < a->d; c++) dkt[c] += dst * qr[c];
            }
        }
        /* the scale last, as the tiled kernel: scale * dS alone can
         * underflow where the gradient does not (a tiny scale, huge queries) */
        scale_nonzero(dk, nb * a->d, a->scale);
    }
}

/* -- the tiled backward: the SIMD level's kernel, one pass per batch item
 * (and key partition). Work items are (item, partition); partitions exist
 * only when there are fewer than 8 items, and their number and bounds
 * depend on the shapes alone. Each partition's dQ goes to its own buffer,
 * summed in partition order: the bits never depend on the thread count. */
typedef struct {
    bwd_job *j;
    size_t nparts, keys;
    AX_T *dqp;                /* count * nparts * Lq * d, or NULL (one partition) */
} bwd_tiled_job;

static void bwd_tiled(void *ptr, size_t i0, size_t i1)
{
    bwd_tiled_job *tj = (bwd_tiled_job *)ptr;
    bwd_job *j = tj->j;
    const attn_args *a = j->a;
    const size_t Lq = a->Lq, T = a->T, d = a->d, dv = a->dv;
    AX_T *D = (AX_T *)malloc((Lq ? Lq : 1) * sizeof(AX_T));
    if (!D) {
        j->failed = 1;
        return;
    }
    for (size_t it = i0; it < i1; it++) {
        const size_t b = it / tj->nparts, part = it % tj->nparts;
        bwd_item x;
        bwd_item_at(j, b, &x);
        size_t k0 = part * tj->keys, k1 = k0 + tj->keys < T ? k0 + tj->keys : T;
        AX_T *dq = tj->dqp ? tj->dqp + it * Lq * d : j->dQ + b * Lq * d;
        AX_T *dk = j->dK + b * T * d, *dvo = j->dV + b * T * dv;
        fill(dq, Lq * d, 0);
        AX_T *gb = j->dS ? j->dS + b * Lq * T : NULL;
        if (gb)
            for (size_t r = 0; r < Lq; r++) fill(gb + r * T + k0, k1 - k0, 0);
        for (size_t r = 0; r < Lq; r++) D[r] = dot_n(x.dO + r * dv, x.O + r * dv, dv);
        const size_t e0 = k0 < x.Tb ? k0 : x.Tb, e1 = k1 < x.Tb ? k1 : x.Tb;
        if (a->kt->attend_backward(x.q, x.k, x.v, x.dO, j->shift + b * Lq, j->wt + b * Lq, D, Lq, x.Tb, d, dv, a->scale,
                                   x.m, a->mask_row_stride, &x.md, e0, e1, dq, dk, dvo, gb, T))
            j->failed = 1;
        /* only this partition's rows [k0, k1): another thread owns the rest */
        if (e1 > k0) scale_nonzero(dk + k0 * d, (e1 - k0) * d, a->scale);
        const size_t f0 = e1 > k0 ? e1 : k0;      /* keys beyond the item's length */
        fill(dk + f0 * d, (k1 - f0) * d, 0);
        fill(dvo + f0 * dv, (k1 - f0) * dv, 0);
    }
    free(D);
}

/* The states of the rows that want them (wt 0), item by item, before the
 * partitions: two partitions of an item must not both compute them. */
static void bwd_states(void *ptr, size_t i0, size_t i1)
{
    bwd_job *j = (bwd_job *)ptr;
    const attn_args *a = j->a;
    for (size_t b = i0; b < i1; b++) {
        AX_T *sh = j->shift + b * a->Lq, *wt = j->wt + b * a->Lq;
        size_t r = 0;
        while (r < a->Lq && wt[r] != 0) r++;
        if (r == a->Lq) continue;
        bwd_item x;
        bwd_item_at(j, b, &x);
        if (a->kt->attend_backward(x.q, x.k, x.v, x.dO, sh, wt, sh, a->Lq, x.Tb, a->d, a->dv, a->scale, x.m,
                                   a->mask_row_stride, &x.md, 0, 0, NULL, NULL, NULL, NULL, 0))
            j->failed = 1;
    }
}

static int bwd_run_tiled(bwd_job *j, int num_threads, double work, int states)
{
    const attn_args *a = j->a;
    if (states) {
        attnx_parallel_for(attnx_pick_threads(num_threads, a->count, work / 4), a->count, bwd_states, j);
        if (j->failed) return ATTNX_ERR_NOMEM;
    }
    bwd_tiled_job tj = {j, 1, a->T, NULL};
    if (a->count < 8) {
        const size_t want = (8 + a->count - 1) / a->count;
        size_t keys = (a->T + want - 1) / want;
        keys = keys < 256 ? 256 : (keys + 63) / 64 * 64;
        tj.nparts = (a->T + keys - 1) / keys;
        tj.keys = keys;
    }
    if (tj.nparts > 1) {
        tj.dqp = (AX_T *)malloc(a->count * tj.nparts * a->Lq * (a->d ? a->d : 1) * sizeof(AX_T));
        if (!tj.dqp) return ATTNX_ERR_NOMEM;
    }
    const size_t n = a->count * tj.nparts;
    attnx_parallel_for(attnx_pick_threads(num_threads, n, work), n, bwd_tiled, &tj);
    const size_t nq = a->Lq * a->d;
    for (size_t b = 0; b < a->count; b++) {
        AX_T *dq = j->dQ + b * nq;
        if (tj.dqp) {
            const AX_T *src = tj.dqp + b * tj.nparts * nq;
            for (size_t i = 0; i < nq; i++) dq[i] = src[i];
            for (size_t p = 1; p < tj.nparts; p++)
                for (size_t i = 0; i < nq; i++) dq[i] += src[p * nq + i];
        }
        for (size_t i = 0; i < nq; i++) dq[i] *= a->scale;
    }
    free(tj.dqp);
    return j->failed ? ATTNX_ERR_NOMEM : ATTNX_OK;
}

int AX_API(attention_backward)(const attnx_attention_params *params, const void *grad_out,
                             const ptrdiff_t *grad_out_strides, const ptrdiff_t *out_strides,
                             const ptrdiff_t *lse_strides, void *grad_query, void *grad_keys,
                             void *grad_values)
{
    attnx_attention_params p;
    attn_args a;
    size_t tmp;
    int rc;
    if ((rc = params_copy(params, &p)) != ATTNX_OK) return rc;
    if (!p.query || !p.keys || !p.values || !p.out || !p.lse || !grad_out || !grad_query ||
        !grad_keys || !grad_values)
        return ATTNX_ERR_NULL;
    if (p.weights || p.num_threads < 0) return ATTNX_ERR_ARG;
    if ((rc = args_from_params(&p, &a)) != ATTNX_OK) return rc;
    a.ctx = a.lse = NULL;
    if ((rc = attnx_batch_count(a.nbatch, a.batch_shape, &a.count)) != ATTNX_OK) return rc;
    if (a.nbatch && (!a.q_strides || !a.k_strides || !a.v_strides || (a.mask && !a.mask_strides) ||
                     (a.bias && !a.bias_strides) || (a.slopes && !a.slope_strides) ||
                     (a.klen && !a.klen_strides) || !grad_out_strides || !out_strides || !lse_strides))
        return ATTNX_ERR_NULL;
    if (!(a.softcap >= 0) || a.softcap == INFINITY || (a.bias && a.bias_col != 0 && a.bias_col != 1) ||
        (a.lower_right != 0 && a.lower_right != 1))
        return ATTNX_ERR_ARG;
    if (a.klen)
        for (size_t b = 0; b < a.count; b++) {
            long long n = a.klen[a.nbatch ? attnx_batch_offset(a.nbatch, a.batch_shape, a.klen_strides, b) : 0];
            if (n < 0 || (unsigned long long)n > (unsigned long long)a.T) return ATTNX_ERR_ARG;
        }
    if (a.T == 0) return ATTNX_ERR_EMPTY;
    if (!elems(a.count, a.Lq, &a.rows) || !elems(a.rows, a.d, &tmp) || !elems(a.rows, a.dv, &tmp) ||
        !elems(a.count, a.T, &tmp) || !elems(tmp, a.d + a.dv, &tmp) || !elems(a.T, 2, &tmp) ||
        !elems(a.rows, a.T, &tmp))
        return ATTNX_ERR_OVERFLOW;
    {   /* outputs (contiguous) on no input and on no other output */
        const size_t nb = a.nbatch, *bs = a.batch_shape, es = sizeof(AX_T);
        const size_t ob[4] = {a.rows * a.d * es, a.count * a.T * a.d * es, a.count * a.T * a.dv * es,
                              a.rows * a.T * es};
        void *outs[4] = {grad_query, grad_keys, grad_values, p.grad_bias};
        const void *ins[6] = {a.Q, a.K, a.V, p.out, grad_out, p.lse};
        const ptrdiff_t *ist[6] = {a.q_strides, a.k_strides, a.v_strides, out_strides,
                                   grad_out_strides, lse_strides};
        const size_t isz[6] = {a.Lq * a.d * es, a.T * a.d * es, a.T * a.dv * es,
                               a.Lq * a.dv * es, a.Lq * a.dv * es, a.Lq * es};
        for (int o = 0; o < 4; o++) {
            if (!outs[o]) continue;
            if ((a.slopes && attnx_overlaps_batched(outs[o], ob[o], a.slopes, es, nb, bs, a.slope_strides, es)) ||
                (a.klen && attnx_overlaps_batched(outs[o], ob[o], a.klen, sizeof(long long), nb, bs,
                                                  a.klen_strides, sizeof(long long))))
                return ATTNX_ERR_OVERLAP;
            if (a.bias && a.Lq) {   /* a bias item: Lq rows bias_row apart (see attention()) */
                const uintptr_t brow = a.bias_row < 0 ? 0 - (uintptr_t)a.bias_row : (uintptr_t)a.bias_row;
                const AX_T *b0 = a.bias_row < 0 ? a.bias - (a.Lq - 1) * brow : a.bias;
                if (attnx_overlaps_batched(outs[o], ob[o], b0, es, nb, bs, a.bias_strides,
                                           ((a.Lq - 1) * brow + (a.T - 1) * (size_t)a.bias_col + 1) * es))
                    return ATTNX_ERR_OVERLAP;
            }
            for (int i = 0; i < 6; i++)
                if (attnx_overlaps_batched(outs[o], ob[o], ins[i], es, nb, bs, ist[i], isz[i]))
                    return ATTNX_ERR_OVERLAP;
            if (a.mask && a.Lq &&
                attnx_overlaps_batched(outs[o], ob[o], a.mask, 1, nb, bs, a.mask_strides,
                                       (a.Lq - 1) * (size_t)(a.mask_row_stride < 0 ? -a.mask_row_stride
                                                                                  : a.mask_row_stride) + a.T))
                return ATTNX_ERR_OVERLAP;
            for (int o2 = 0; o2 < o; o2++)
                if (attnx_overlap(outs[o], ob[o], outs[o2], ob[o2])) return ATTNX_ERR_OVERLAP;
        }
    }
    if (a.count == 0) return ATTNX_OK;
    a.kt = AX_KERNELS_GET();
    AX_T *rowp = (AX_T *)malloc(2 * (a.rows ? a.rows : 1) * sizeof(AX_T));
    if (!rowp) return ATTNX_ERR_NOMEM;
    bwd_job j = {&a, (const AX_T *)p.out, (const AX_T *)grad_out, (const AX_T *)p.lse,
                 out_strides, grad_out_strides, lse_strides, (AX_T *)grad_query,
                 (AX_T *)grad_keys, (AX_T *)grad_values, (AX_T *)p.grad_bias, rowp, rowp + a.rows, 0, 0, 0};
    int states = 0;   /* some row wants its own state */
    for (size_t b = 0; b < a.count; b++) {
        const AX_T *O, *dO, *lse;
        bwd_ptrs(&j, b, &O, &dO, &lse);
        for (size_t r = 0; r < a.Lq; r++) {
            const AX_T x = lse[r], ax = x < 0 ? -x : x;
            const int own = ax > (AX_T)LSE_EXACT && ax != (AX_T)INFINITY;
            j.shift[b * a.Lq + r] = x;
            j.wt[b * a.Lq + r] = own ? 0 : 1;
            states |= own;
        }
    }
    j.nrow_items = a.count * ((a.Lq + BWD_ROWS - 1) / BWD_ROWS);
    j.nkey_items = a.count * ((a.T + BWD_KEYS - 1) / BWD_KEYS);
    const double work = (double)a.rows * (double)a.T * (double)(a.d + a.dv + 1);
    if (a.kt->attend_backward) {
        rc = bwd_run_tiled(&j, p.num_threads, work, states);
    } else {
        if (a.rows)
            attnx_parallel_for(attnx_pick_threads(p.num_threads, j.nrow_items, work), j.nrow_items,
                               bwd_rows, &j);
        attnx_parallel_for(attnx_pick_threads(p.num_threads, j.nkey_items, work), j.nkey_items,
                           bwd_keys, &j);
        rc = j.failed ? ATTNX_ERR_NOMEM : ATTNX_OK;
    }
    free(rowp);
    return rc;
}

#undef BWD_KEYS
#undef BWD_ROWS
#undef LSE_EXACT
