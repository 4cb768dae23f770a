/*
 * api_impl.h -- the public entry points of attnx.h, written once for both
 * element types: argument checks, batching, threads, and the calls through
 * the kernel table. Kernels never see an argument this code has not
 * validated. api.c includes it for float64 and api_f32.c for float32, each
 * after defining
 *
 *   AX_T                     the element type (double, float)
 *   AX_KERNELS               its kernel table type
 *   AX_KERNELS_GET()         the active table of that type
 *   AX_API(name)             the public name: attnx_name, attnx_name_f32
 *
 * Internal: not installed, included once per translation unit.
 */
#if !defined(AX_T) || !defined(AX_KERNELS) || !defined(AX_API)
#error "api_impl.h: define AX_T, AX_KERNELS, AX_KERNELS_GET and AX_API first"
#endif

#include <math.h>     /* INFINITY, NAN: macros only, no libm call */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attnx_api_util.h"


/* r = a * b as a count of elements whose byte size fits in size_t. */
static int elems(size_t a, size_t b, size_t *r) { return attnx_elems(a, b, sizeof(AX_T), r); }

static int overlaps(const AX_T *a, size_t na, const void *b, size_t nb_bytes)
{
    return attnx_overlap(a, na * sizeof(AX_T), b, nb_bytes);
}

static void fill(AX_T *y, size_t n, AX_T v)
{
    for (size_t i = 0; i < n; i++) y[i] = v;
}

/* y[0..n) *= v where not 0: a zero stays +0 under a negative (or non-finite)
 * scale, so that keys no row weighs get +0 on every path. */
static void scale_nonzero(AX_T *y, size_t n, AX_T v)
{
    for (size_t i = 0; i < n; i++)
        if (y[i] != 0) y[i] *= v;
}

/* ---------------------------------------------------------------- kernels */

/* Scores of the keys the mask lets through, in runs of consecutive keys, so
 * that masked rows are never read; masked scores are -inf. md (NULL: none)
 * shapes them as the fused kernels do (it is this row's: attnx_mods_row). */
static void masked_scores(const AX_KERNELS *kt, const AX_T *q, const AX_T *K,
                          size_t T, size_t d, AX_T scale, const unsigned char *mask,
                          const attnx_mods *md, AX_T *s)
{
    if (!attnx_mods_shape(md)) md = NULL;
    size_t t = 0;
    while (t < T) {
        if (mask && !mask[t]) {
            s[t++] = -INFINITY;
            continue;
        }
        size_t u = t + 1;
        while (u < T && (!mask || mask[u])) u++;
        kt->dot_scores(q, K + t * d, u - t, d, scale, s + t);
        if (md) kt->shape_scores(md, 0, t, u - t, s + t);
        t = u;
    }
}

/* Weights then context; w has room for T entries. */
/* The second half of attend_two_pass: w holds the masked scores. */
static void weights_then_context(const AX_KERNELS *kt, const AX_T *V, size_t T, size_t dv,
                                 AX_T *ctx, AX_T *w)
{
    if (kt->softmax(w, T, w)) {        /* nothing to attend to */
        fill(w, T, 0);
        fill(ctx, dv, 0);
        return;
    }
    if (w[0] != w[0]) {                /* a NaN row is all NaN, masked keys too: */
        fill(ctx, dv, (AX_T)NAN);            /* the context is NaN, and masked value */
        return;                        /* rows stay unread */
    }
    kt->context(w, V, T, dv, ctx);
}

static void attend_two_pass(const AX_KERNELS *kt, const AX_T *q, const AX_T *K,
                            const AX_T *V, size_t T, size_t d, size_t dv, AX_T scale,
                            const unsigned char *mask, const attnx_mods *md, AX_T *ctx, AX_T *w)
{
    masked_scores(kt, q, K, T, d, scale, mask, md, w);
    weights_then_context(kt, V, T, dv, ctx, w);
}

/* Whether some c[j] is inf or NaN: its exponent field is all ones, so adding
 * one to that field carries into the sign bit. Integer ops with no branch,
 * which the compiler vectorises, in the loop that writes c[j] = EXPR (EXPR
 * may read c[j]); the flag goes to FLAG. */
#define NF_LOOP(U, EXP, ONE, c, n, EXPR, FLAG)                  \
    do {                                                        \
        U acc_ = 0;                                             \
        for (size_t j = 0; j < (n); j++) {                      \
            U u_;                                               \
            c[j] = (EXPR);                                      \
            memcpy(&u_, &c[j], sizeof u_);                      \
            acc_ |= (U)((u_ & (EXP)) + (ONE));                  \
        }                                                       \
        FLAG = (int)(acc_ >> (8 * sizeof(U) - 1));              \
    } while (0)
#define NF_CHECKED(c, n, EXPR, FLAG)                                                        \
    do {                                                                                    \
        if (sizeof(AX_T) == 8)                                                              \
            NF_LOOP(uint64_t, 0x7ff0000000000000ull, 0x0010000000000000ull, c, n, EXPR, FLAG); \
        else                                                                                \
            NF_LOOP(uint32_t, 0x7f800000u, 0x00800000u, c, n, EXPR, FLAG);                  \
    } while (0)

/* 1 when some c[j] is inf or NaN. */
static int nonfinite(AX_T *c, size_t n)
{
    int bad;
    NF_CHECKED(c, n, c[j], bad);
    return bad;
}

/* The online softmax's finish (c = c / l; zeros when m == -inf, nothing
 * attended; NaN when l is), and whether
 * the context needs attend_safe: some entry is inf or NaN though l is not
 * (a NaN l is a NaN score: NaN is the answer). Checked in the division's own
 * loop, which it does not slow down: it runs after every fused call. */
static int finish_checked(double m, double l, AX_T *c, size_t dv)
{
    int bad;
    if (l != l) {
        fill(c, dv, (AX_T)NAN);
        return 0;
    }
    if (m == -INFINITY) {
        fill(c, dv, 0);
        return 0;
    }
    /* the kernels' finish to the bit: float32 times 1/l in double
     * (attnx_online_finish_f32), float64 the quotient correctly rounded
     * (the tiled kernel's Markstein finish gives the same) */
    const double rl = 1.0 / l;
    if (sizeof(AX_T) == sizeof(float))
        NF_CHECKED(c, dv, (AX_T)((double)c[j] * rl), bad);
    else
        NF_CHECKED(c, dv, (AX_T)((double)c[j] / l), bad);
    return bad;
}

/* The natural-log logsumexp of a row's scores from its online state:
 * m + log(l); -inf when nothing was attended, NaN when poisoned. */
static AX_T state_lse(double m, double l) { return (AX_T)attnx_state_lse(m, l); }

/* attend_two_pass and the logsumexp of the row, which the weights give
 * exactly enough: at the largest score s_j = m, w_j = 1 / l (within the
 * softmax's 4 ulp), so lse = m - log(w_j). */
static void attend_two_pass_lse(const AX_KERNELS *kt, const AX_T *q, const AX_T *K,
                                const AX_T *V, size_t T, size_t d, size_t dv, AX_T scale,
                                const unsigned char *mask, const attnx_mods *md, AX_T *ctx,
                                AX_T *w, AX_T *lse)
{
    if (!lse) {
        attend_two_pass(kt, q, K, V, T, d, dv, scale, mask, md, ctx, w);
        return;
    }
    masked_scores(kt, q, K, T, d, scale, mask, md, w);
    size_t jmax = 0;
    for (size_t t = 1; t < T; t++)
        if (w[t] > w[jmax] || w[jmax] != w[jmax]) jmax = t;
    const double m = (double)w[jmax];
    weights_then_context(kt, V, T, dv, ctx, w);
    if (w[0] != w[0]) *lse = (AX_T)NAN;
    else if (m == -INFINITY) *lse = (AX_T)-INFINITY;
    else *lse = (AX_T)(m - attnx_log_f64((double)w[jmax]));
}

/* The rare-case path behind every fused attend whose context comes out inf
 * or NaN. The fused kernels keep an unnormalised accumulator (it overflows
 * where sum_t exp(s_t - m) |V[t]| does, though the context itself is
 * representable) and read a value row with the weight it has at the time
 * (inf * a later rescale of exactly 0 is NaN, though the key's final weight
 * is 0). The two-pass path has neither problem: its weights are final and
 * normalised before any value row is read, and a weight of exactly 0 never
 * reads its row. So the context is recomputed by it, bit for bit what
 * return_weights gives, with the weights in a scratch buffer of T (the
 * one allocation of the single-query path, in this rare case only; should
 * even that fail, the fused result stands). The lse (unless NULL) is
 * recomputed with it: a score near the overflow threshold can be finite in
 * one summation order and inf in another, and the row's lse and context
 * must tell the same. */
static void attend_safe(const AX_KERNELS *kt, const AX_T *q, const AX_T *K, const AX_T *V,
                        size_t T, size_t d, size_t dv, AX_T scale, const unsigned char *mask,
                        const attnx_mods *md, AX_T *ctx, AX_T *lse)
{
    if (T == 0) return;
    AX_T *w = (AX_T *)malloc(T * sizeof(AX_T));
    if (!w) return;
    attend_two_pass_lse(kt, q, K, V, T, d, dv, scale, mask, md, ctx, w, lse);
    free(w);
}

/* One query, fused; its logsumexp into *lse unless lse is NULL. */
static void attend_fused(const AX_KERNELS *kt, const AX_T *q, const AX_T *K,
                         const AX_T *V, size_t T, size_t d, size_t dv, AX_T scale,
                         const unsigned char *mask, const attnx_mods *md, AX_T *ctx, AX_T *lse)
{
    attnx_online st = {-INFINITY, 0.0};
    fill(ctx, dv, 0);
    kt->attend_online(q, K, V, T, d, dv, scale, mask, md, &st, ctx);
    if (lse) *lse = state_lse(st.m, st.l);
    if (finish_checked(st.m, st.l, ctx, dv)) attend_safe(kt, q, K, V, T, d, dv, scale, mask, md, ctx, lse);
}

/* Queries [0, nq) of one batch item (a chunk of its rows): Q, ctx, w, lse
 * and mask point at the chunk's first row, md is relative to it (row 0),
 * T is the item's key count (its key length), Tw the weights' row length.
 * Without weights the SIMD level's tiled kernel takes every row; with
 * weights each row is two-pass over its own keys. */
static void attend_rows(const AX_KERNELS *kt, const AX_T *Q, size_t nq, const AX_T *K, const AX_T *V,
                        size_t T, size_t Tw, size_t d, size_t dv, AX_T scale, const unsigned char *mask,
                        ptrdiff_t mask_row_stride, const attnx_mods *md, AX_T *ctx, AX_T *w, AX_T *lse)
{
    if (!w && kt->attend_rows) {
        /* the kernel tells whether a row needs the scan (which was a pass
         * over the whole output, out of cache: 2% of a batched call) */
        if (!kt->attend_rows(Q, nq, K, V, T, d, dv, scale, mask, mask_row_stride, md, ctx, lse)) return;
        for (size_t r = 0; r < nq; r++) {
            if (!nonfinite(ctx + r * dv, dv)) continue;
            size_t t0, t1;
            attnx_mods_range(md, r, T, &t0, &t1);
            attnx_mods rm = attnx_mods_row(md, r, t0, sizeof(AX_T));
            attend_safe(kt, Q + r * d, K + t0 * d, V + t0 * dv, t1 - t0, d, dv, scale,
                        mask ? mask + (ptrdiff_t)r * mask_row_stride + t0 : NULL, &rm, ctx + r * dv,
                        lse ? lse + r : NULL);
        }
        return;
    }
    for (size_t r = 0; r < nq; r++) {
        size_t t0, t1;
        attnx_mods_range(md, r, T, &t0, &t1);
        attnx_mods rm = attnx_mods_row(md, r, t0, sizeof(AX_T));
        const unsigned char *mr = mask ? mask + (ptrdiff_t)r * mask_row_stride + t0 : NULL;
        const AX_T *qr = Q + r * d, *Kr = K + t0 * d, *Vr = V + t0 * dv;
        AX_T *c = ctx + r * dv, *lr = lse ? lse + r : NULL;
        if (t0 == t1) {
            fill(c, dv, 0);
            if (lr) *lr = (AX_T)-INFINITY;
            if (w) fill(w + r * Tw, Tw, 0);
        } else if (w) {
            AX_T *wr = w + r * Tw;
            attend_two_pass_lse(kt, qr, Kr, Vr, t1 - t0, d, dv, scale, mr, &rm, c, wr + t0, lr);
            /* keys the row does not see weigh 0, or NaN in a NaN row: the
             * rule of masked keys */
            AX_T w0 = wr[t0], z = w0 != w0 ? w0 : (AX_T)0;
            fill(wr, t0, z);
            fill(wr + t1, Tw - t1, z);
        } else {
            attend_fused(kt, qr, Kr, Vr, t1 - t0, d, dv, scale, mr, &rm, c, lr);
        }
    }
}

/* ------------------------------------------------------------ single query */

int AX_API(dot_scores)(const AX_T *q, const AX_T *K, size_t T, size_t d,
                     AX_T scale, AX_T *scores)
{
    size_t Td;
    if (!q || !K || !scores) return ATTNX_ERR_NULL;
    if (!elems(T, d, &Td) || !elems(T, 1, &T)) return ATTNX_ERR_OVERFLOW;
    if (overlaps(scores, T, q, d * sizeof(AX_T)) || overlaps(scores, T, K, Td * sizeof(AX_T)))
        return ATTNX_ERR_OVERLAP;
    AX_KERNELS_GET()->dot_scores(q, K, T, d, scale, scores);
    return ATTNX_OK;
}

int AX_API(softmax)(const AX_T *x, size_t n, AX_T *y)
{
    if (!x || !y) return ATTNX_ERR_NULL;
    if (!elems(n, 1, &n)) return ATTNX_ERR_OVERFLOW;
    if (x != y && overlaps(y, n, x, n * sizeof(AX_T))) return ATTNX_ERR_OVERLAP;
    if (n) AX_KERNELS_GET()->softmax(x, n, y);
    return ATTNX_OK;
}

int AX_API(context)(const AX_T *w, const AX_T *V, size_t T, size_t dv, AX_T *ctx)
{
    size_t Tdv;
    if (!w || !V || !ctx) return ATTNX_ERR_NULL;
    if (!elems(T, dv, &Tdv) || !elems(T, 1, &T)) return ATTNX_ERR_OVERFLOW;
    if (overlaps(ctx, dv, w, T * sizeof(AX_T)) || overlaps(ctx, dv, V, Tdv * sizeof(AX_T)))
        return ATTNX_ERR_OVERLAP;
    AX_KERNELS_GET()->context(w, V, T, dv, ctx);
    return ATTNX_OK;
}

int AX_API(attend)(const AX_T *q, const AX_T *K, const AX_T *V,
                 size_t T, size_t d, size_t dv, AX_T scale,
                 const unsigned char *mask, AX_T *ctx, AX_T *weights)
{
    size_t Td, Tdv, T1;
    if (!q || !K || !V || !ctx) return ATTNX_ERR_NULL;
    if (T == 0) return ATTNX_ERR_EMPTY;
    /* T itself too: with d == dv == 0 no product catches a T no weights fit */
    if (!elems(T, d, &Td) || !elems(T, dv, &Tdv) || !elems(T, 1, &T1)) return ATTNX_ERR_OVERFLOW;
    const size_t qb = d * sizeof(AX_T), Kb = Td * sizeof(AX_T), Vb = Tdv * sizeof(AX_T);
    if (overlaps(ctx, dv, q, qb) || overlaps(ctx, dv, K, Kb) || overlaps(ctx, dv, V, Vb) ||
        (mask && overlaps(ctx, dv, mask, T)))
        return ATTNX_ERR_OVERLAP;
    if (weights &&
        (overlaps(weights, T, q, qb) || overlaps(weights, T, K, Kb) || overlaps(weights, T, V, Vb) ||
         overlaps(weights, T, ctx, dv * sizeof(AX_T)) || (mask && overlaps(weights, T, mask, T))))
        return ATTNX_ERR_OVERLAP;
    if (dv == 0 && !weights) return ATTNX_OK;   /* nothing to write: no O(T) walk */
    const AX_KERNELS *kt = AX_KERNELS_GET();
    if (weights)
        attend_two_pass(kt, q, K, V, T, d, dv, scale, mask, NULL, ctx, weights);
    else
        attend_fused(kt, q, K, V, T, d, dv, scale, mask, NULL, ctx, NULL);
    return ATTNX_OK;
}

/* ----------------------------------------------------------------- batches */

typedef struct {
    const AX_KERNELS *kt;
    const AX_T *Q, *K;
    size_t nbatch;
    const size_t *batch_shape;
    const ptrdiff_t *q_strides, *k_strides;
    size_t Lq, T, d;
    AX_T scale;
    AX_T *scores;
} scores_job;

static void scores_rows(void *p, size_t i0, size_t i1)
{
    const scores_job *j = (const scores_job *)p;
    for (size_t i = i0; i < i1; i++) {
        size_t b = i / j->Lq, r = i % j->Lq;
        const AX_T *qb = j->Q + (j->nbatch ? attnx_batch_offset(j->nbatch, j->batch_shape, j->q_strides, b) : 0);
        const AX_T *kb = j->K + (j->nbatch ? attnx_batch_offset(j->nbatch, j->batch_shape, j->k_strides, b) : 0);
        j->kt->dot_scores(qb + r * j->d, kb, j->T, j->d, j->scale, j->scores + i * j->T);
    }
}

int AX_API(dot_scores_batch)(const AX_T *Q, const AX_T *K,
                           size_t nbatch, const size_t *batch_shape,
                           const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                           size_t Lq, size_t T, size_t d, AX_T scale,
                           AX_T *scores, int num_threads)
{
    size_t count, rows, tmp;
    int rc;
    if (!Q || !K || !scores) return ATTNX_ERR_NULL;
    if (num_threads < 0) return ATTNX_ERR_ARG;
    if ((rc = attnx_batch_count(nbatch, batch_shape, &count)) != ATTNX_OK) return rc;
    if (nbatch && (!q_strides || !k_strides)) return ATTNX_ERR_NULL;
    if (!elems(count, Lq, &rows) || !elems(rows, T, &tmp) || !elems(Lq, d, &tmp) || !elems(T, d, &tmp))
        return ATTNX_ERR_OVERFLOW;
    if (count && (attnx_overlaps_batched(scores, rows * T * sizeof(AX_T), Q, sizeof(AX_T), nbatch,
                                   batch_shape, q_strides, Lq * d * sizeof(AX_T)) ||
                  attnx_overlaps_batched(scores, rows * T * sizeof(AX_T), K, sizeof(AX_T), nbatch,
                                   batch_shape, k_strides, T * d * sizeof(AX_T))))
        return ATTNX_ERR_OVERLAP;
    if (rows == 0 || T == 0) return ATTNX_OK;   /* nothing to write */
    scores_job job = {AX_KERNELS_GET(), Q, K, nbatch, batch_shape, q_strides, k_strides,
                      Lq, T, d, scale, scores};
    attnx_parallel_for(attnx_pick_threads(num_threads, rows, (double)rows * T * (d + 1)), rows,
                       scores_rows, &job);
    return ATTNX_OK;
}

/* The row function f (softmax or log-softmax through the table kt) over each
 * row of a rows x n matrix, the rows split across threads. */
typedef void (*ax_row_fn)(const AX_KERNELS *kt, const AX_T *x, size_t n, AX_T *y);

typedef struct {
    const AX_KERNELS *kt;
    const AX_T *x;
    size_t n;
    AX_T *y;
    ax_row_fn f;
} rows_job;

static void rows_range(void *p, size_t i0, size_t i1)
{
    const rows_job *j = (const rows_job *)p;
    for (size_t i = i0; i < i1; i++) j->f(j->kt, j->x + i * j->n, j->n, j->y + i * j->n);
}

static int rows_apply(const AX_T *x, size_t rows, size_t n, AX_T *y, int num_threads, ax_row_fn f)
{
    size_t total;
    if (!x || !y) return ATTNX_ERR_NULL;
    if (num_threads < 0) return ATTNX_ERR_ARG;
    if (!elems(rows, n, &total)) return ATTNX_ERR_OVERFLOW;
    if (x != y && overlaps(y, total, x, total * sizeof(AX_T))) return ATTNX_ERR_OVERLAP;
    if (n == 0) return ATTNX_OK;
    rows_job job = {AX_KERNELS_GET(), x, n, y, f};
    attnx_parallel_for(attnx_pick_threads(num_threads, rows, (double)total * 8), rows,
                       rows_range, &job);
    return ATTNX_OK;
}

static void softmax_row(const AX_KERNELS *kt, const AX_T *x, size_t n, AX_T *y)
{
    (void)kt->softmax(x, n, y);
}

int AX_API(softmax_rows)(const AX_T *x, size_t rows, size_t n, AX_T *y, int num_threads)
{
    return rows_apply(x, rows, n, y, num_threads, softmax_row);
}

typedef struct {
    const AX_KERNELS *kt;
    const AX_T *W, *V;
    size_t nbatch;
    const size_t *batch_shape;
    const ptrdiff_t *w_strides, *v_strides;
    size_t Lq, T, dv;
    AX_T *ctx;
} context_job;

static void context_rows(void *p, size_t i0, size_t i1)
{
    const context_job *j = (const context_job *)p;
    for (size_t i = i0; i < i1; i++) {
        size_t b = i / j->Lq, r = i % j->Lq;
        const AX_T *wb = j->W + (j->nbatch ? attnx_batch_offset(j->nbatch, j->batch_shape, j->w_strides, b) : 0);
        const AX_T *vb = j->V + (j->nbatch ? attnx_batch_offset(j->nbatch, j->batch_shape, j->v_strides, b) : 0);
        j->kt->context(wb + r * j->T, vb, j->T, j->dv, j->ctx + i * j->dv);
    }
}

int AX_API(context_batch)(const AX_T *W, const AX_T *V,
                        size_t nbatch, const size_t *batch_shape,
                        const ptrdiff_t *w_strides, const ptrdiff_t *v_strides,
                        size_t Lq, size_t T, size_t dv, AX_T *ctx, int num_threads)
{
    size_t count, rows, tmp;
    int rc;
    if (!W || !V || !ctx) return ATTNX_ERR_NULL;
    if (num_threads < 0) return ATTNX_ERR_ARG;
    if ((rc = attnx_batch_count(nbatch, batch_shape, &count)) != ATTNX_OK) return rc;
    if (nbatch && (!w_strides || !v_strides)) return ATTNX_ERR_NULL;
    if (!elems(count, Lq, &rows) || !elems(rows, dv, &tmp) || !elems(Lq, T, &tmp) || !elems(T, dv, &tmp))
        return ATTNX_ERR_OVERFLOW;
    if (count && (attnx_overlaps_batched(ctx, rows * dv * sizeof(AX_T), W, sizeof(AX_T), nbatch,
                                   batch_shape, w_strides, Lq * T * sizeof(AX_T)) ||
                  attnx_overlaps_batched(ctx, rows * dv * sizeof(AX_T), V, sizeof(AX_T), nbatch,
                                   batch_shape, v_strides, T * dv * sizeof(AX_T))))
        return ATTNX_ERR_OVERLAP;
    if (rows == 0 || dv == 0) return ATTNX_OK;  /* nothing to write */
    context_job job = {AX_KERNELS_GET(), W, V, nbatch, batch_shape, w_strides, v_strides,
                       Lq, T, dv, ctx};
    attnx_parallel_for(attnx_pick_threads(num_threads, rows, (double)rows * T * (dv + 1)), rows,
                       context_rows, &job);
    return ATTNX_OK;
}

/* ------------------------------------------------- attention, in general */

/* Every argument of an attention call, validated. */
typedef struct {
    const AX_KERNELS *kt;
    const AX_T *Q, *K, *V;
    size_t nbatch;
    const size_t *batch_shape;
    const ptrdiff_t *q_strides, *k_strides, *v_strides;
    const unsigned char *mask;
    const ptrdiff_t *mask_strides;
    ptrdiff_t mask_row_stride;
    size_t Lq, T, d, dv;
    AX_T scale;
    int causal;
    ptrdiff_t diag;           /* query_offset - key_offset */
    AX_T *ctx, *weights, *lse;
    size_t count, rows;       /* batch items, and count * Lq */
    /* what shapes the scores (attnx_attention_params, version 4) */
    const AX_T *bias;
    const ptrdiff_t *bias_strides;
    ptrdiff_t bias_row, bias_col;
    const AX_T *slopes;
    const ptrdiff_t *slope_strides;
    const long long *klen;
    const ptrdiff_t *klen_strides;
    int lower_right;
    ptrdiff_t wl, wr;         /* < 0: unbounded */
    double softcap;
} attn_args;

/* x clamped to [-2^60, 2^60]: bounds beyond see all keys or none alike
 * (sizes stay below 2^60), and sums of two never overflow */
#define POS_LIM ((ptrdiff_t)1 << 60)
#define POS_ALIBI (((ptrdiff_t)1 << 62) + ((ptrdiff_t)1 << 61))  /* 2^62 past any lower-right shift */
static ptrdiff_t pos_clamp(ptrdiff_t x) { return x < -POS_LIM ? -POS_LIM : x > POS_LIM ? POS_LIM : x; }

/* a + b, saturated at PTRDIFF_MIN / PTRDIFF_MAX */
static ptrdiff_t sat_add(ptrdiff_t a, ptrdiff_t b)
{
    if (b > 0 && a > PTRDIFF_MAX - b) return PTRDIFF_MAX;
    if (b < 0 && a < PTRDIFF_MIN - b) return PTRDIFF_MIN;
    return a + b;
}

/* pos_clamp(d + w + x), exactly: d any, w >= 0 or w <= 0 (not PTRDIFF_MIN),
 * |x| < 2^61. d + w can only saturate away from 0 on w's side, by more
 * than x can bring back, so the clamp sees the sign it would have seen. */
static ptrdiff_t bound_at(ptrdiff_t d, ptrdiff_t w, ptrdiff_t x) { return pos_clamp(sat_add(sat_add(d, w), x)); }

/* Batch item b's keys seen at most (its key length) and its mods, for its
 * query row 0: the window and causal rules as offsets, bias, ALiBi slope,
 * softcap. */
static size_t item_mods(const attn_args *a, size_t b, attnx_mods *md)
{
    size_t Tb = a->T;
    ptrdiff_t off;
    if (a->klen) {
        off = a->nbatch ? attnx_batch_offset(a->nbatch, a->batch_shape, a->klen_strides, b) : 0;
        Tb = (size_t)a->klen[off];
    }
    /* query row 0's position relative to key 0 (lower right: shifted by
     * Tb - Lq); the window's and causal bounds are computed exactly before
     * they are clamped (a wide window reaches back from a far position) */
    const ptrdiff_t shift = a->lower_right ? (ptrdiff_t)Tb - (ptrdiff_t)a->Lq : 0;
    const ptrdiff_t pos = bound_at(a->diag, 0, shift);
    /* ALiBi's distances need the position itself: exact for every
     * query_offset - key_offset the Python API accepts (+-2^62) and any
     * lower-right shift (|Tb - Lq| < 2^60), rows added to it included */
    const ptrdiff_t at = sat_add(a->diag, shift);
    md->bias = NULL;
    md->bias_row = a->bias_row;
    md->bias_col = a->bias_col;
    if (a->bias)
        md->bias = a->bias + (a->nbatch ? attnx_batch_offset(a->nbatch, a->batch_shape, a->bias_strides, b) : 0);
    md->slope = 0;
    if (a->slopes) {
        off = a->nbatch ? attnx_batch_offset(a->nbatch, a->batch_shape, a->slope_strides, b) : 0;
        md->slope = (double)a->slopes[off];
    }
    /* the cap as the element type holds it (a subnormal one too: its
     * derivative needs its own bits). One beyond the type's range caps
     * nothing there (x / inf would be 0, and inf * tanh(0) NaN); one that
     * rounds to 0 caps at the smallest positive value (0 / 0 would be NaN) */
    md->softcap = a->softcap;
    if (md->softcap > 0) {
        if ((AX_T)md->softcap == (AX_T)INFINITY) md->softcap = 0.0;
        else if ((AX_T)md->softcap == 0) md->softcap = sizeof(AX_T) == 4 ? 0x1p-149 : 0x1p-1074;
    }
    md->pos = at < -POS_ALIBI ? -POS_ALIBI : at > POS_ALIBI ? POS_ALIBI : at;
    md->lo = a->wl >= 0 ? bound_at(a->diag, -a->wl, shift) : ATTNX_NO_LO;
    md->hi = ATTNX_NO_HI;
    if (a->causal) md->hi = pos + 1;
    if (a->wr >= 0 && bound_at(a->diag, a->wr, shift) + 1 < md->hi) md->hi = bound_at(a->diag, a->wr, shift) + 1;
    return Tb;
}

/* md moved down to row i of its item */
static attnx_mods mods_from(const attnx_mods *md, size_t i)
{
    attnx_mods o = *md;
    if (o.bias) o.bias = (const AX_T *)o.bias + (ptrdiff_t)i * o.bias_row;
    o.pos += (ptrdiff_t)i;
    o.lo += (ptrdiff_t)i;   /* the unbounded stay unbounded: |i| < 2^60 */
    o.hi += (ptrdiff_t)i;
    return o;
}

/* Operands of batch item b. */
static void item_ptrs(const attn_args *a, size_t b, const AX_T **q, const AX_T **k,
                      const AX_T **v, const unsigned char **m)
{
    *q = a->Q;
    *k = a->K;
    *v = a->V;
    *m = a->mask;
    if (a->nbatch) {
        *q += attnx_batch_offset(a->nbatch, a->batch_shape, a->q_strides, b);
        *k += attnx_batch_offset(a->nbatch, a->batch_shape, a->k_strides, b);
        *v += attnx_batch_offset(a->nbatch, a->batch_shape, a->v_strides, b);
        if (*m) *m += attnx_batch_offset(a->nbatch, a->batch_shape, a->mask_strides, b);
    }
}

/* -- split-K: few query rows over many keys.
 * Each row's keys are cut into partitions of split_keys(T) keys (the last
 * shorter), a cut that depends on T alone: from SPLIT_KEYS up, doubled
 * (to at most 64 Ki) while there would be more than 16. Few, long
 * partitions keep the fold's prefetching on (it streams from 8 MB up; 4096
 * keys of d = dv = 64 are 4 MB) and still feed 16 threads. Each partition
 * folds into its own state (m, l, acc); the states merge in a fixed
 * pairwise tree over the partition index (1 into 0, 3 into 2, ..., then 2
 * into 0, ...). Threads only choose who computes which partition, so the
 * bits are those of a serial run at any thread count. */
#define SPLIT_KEYS 4096
#define SPLIT_MIN_KEYS (2 * SPLIT_KEYS)
#define SPLIT_MAX_ROWS 4

static size_t split_keys(size_t T)
{
    size_t p = SPLIT_KEYS;
    while (T / p > 16 && p < ((size_t)64 << 10)) p *= 2;
    return p;
}

typedef struct {
    const attn_args *a;
    size_t nparts, keys;      /* partitions per row, keys per partition */
    attnx_online *st;         /* rows * nparts */
    AX_T *acc;                /* rows * nparts * dv */
} split_job;

static void split_parts(void *ptr, size_t i0, size_t i1)
{
    const split_job *j = (const split_job *)ptr;
    const attn_args *a = j->a;
    for (size_t i = i0; i < i1; i++) {
        size_t row = i / j->nparts, p = i % j->nparts;
        size_t b = row / a->Lq, r = row % a->Lq;
        const AX_T *q, *k, *v;
        const unsigned char *m;
        item_ptrs(a, b, &q, &k, &v, &m);
        attnx_mods md;
        size_t lo, hi, Tb = item_mods(a, b, &md);
        attnx_mods_range(&md, r, Tb, &lo, &hi);
        size_t t0 = p * j->keys, t1 = t0 + j->keys;
        if (t0 < lo) t0 = lo;
        if (t1 > hi) t1 = hi;
        attnx_online *st = j->st + i;
        AX_T *acc = j->acc + i * a->dv;
        st->m = -INFINITY;
        st->l = 0.0;
        fill(acc, a->dv, 0);
        if (t0 < t1) {
            attnx_mods rm = attnx_mods_row(&md, r, t0, sizeof(AX_T));
            a->kt->attend_online(q + r * a->d, k + t0 * a->d, v + t0 * a->dv, t1 - t0, a->d,
                                 a->dv, a->scale,
                                 m ? m + (ptrdiff_t)r * a->mask_row_stride + t0 : NULL, &rm, st, acc);
        }
    }
}

/* Merge state (sb, accb) into (sa, acca), in double. */
static void merge_state(attnx_online *sa, double *acca, const attnx_online *sb,
                        const double *accb, size_t dv)
{
    if (sb->l != sb->l) sa->l = NAN;
    if (sa->l != sa->l || sb->m == -INFINITY) return;
    if (sa->m == -INFINITY) {
        *sa = *sb;
        for (size_t j = 0; j < dv; j++) acca[j] = accb[j];
        return;
    }
    double m = sa->m > sb->m ? sa->m : sb->m;
    double ca = attnx_exp_diff_scalar(sa->m, m), cb = attnx_exp_diff_scalar(sb->m, m);
    sa->m = m;
    sa->l = sa->l * ca + sb->l * cb;
    for (size_t j = 0; j < dv; j++) acca[j] = acca[j] * ca + accb[j] * cb;
}

static int attend_split(const attn_args *a, int nt)
{
    const size_t dv = a->dv, keys = split_keys(a->T), nparts = (a->T + keys - 1) / keys;
    const size_t n = a->rows * nparts;
    attnx_online *st = (attnx_online *)malloc(n * sizeof(attnx_online));
    AX_T *acc = (AX_T *)malloc(n * (dv ? dv : 1) * sizeof(AX_T));
    double *sum = (double *)malloc(nparts * (dv ? dv : 1) * sizeof(double));
    if (!st || !acc || !sum) {
        free(st);
        free(acc);
        free(sum);
        return ATTNX_ERR_NOMEM;
    }
    split_job job = {a, nparts, keys, st, acc};
    attnx_parallel_for(nt, n, split_parts, &job);
    for (size_t row = 0; row < a->rows; row++) {
        attnx_online *s = st + row * nparts;
        const AX_T *ac = acc + row * nparts * dv;
        for (size_t i = 0; i < nparts * dv; i++) sum[i] = (double)ac[i];
        for (size_t w = 1; w < nparts; w *= 2)
            for (size_t p = 0; p + w < nparts; p += 2 * w)
                merge_state(&s[p], sum + p * dv, &s[p + w], sum + (p + w) * dv, dv);
        AX_T *c = a->ctx + row * dv;
        if (a->lse) a->lse[row] = state_lse(s->m, s->l);
        if (s->l != s->l) fill(c, dv, (AX_T)NAN);
        else if (s->m == -INFINITY) fill(c, dv, 0);
        else for (size_t j = 0; j < dv; j++) c[j] = (AX_T)(sum[j] / s->l);
        const AX_T *q, *k, *v;
        const unsigned char *m;
        size_t r = row % a->Lq;
        item_ptrs(a, row / a->Lq, &q, &k, &v, &m);
        if (nonfinite(c, dv)) {
            attnx_mods md;
            size_t lo, hi, Tb = item_mods(a, row / a->Lq, &md);
            attnx_mods_range(&md, r, Tb, &lo, &hi);
            attnx_mods rm = attnx_mods_row(&md, r, lo, sizeof(AX_T));
            attend_safe(a->kt, q + r * a->d, k + lo * a->d, v + lo * dv, hi - lo, a->d, dv, a->scale,
                        m ? m + (ptrdiff_t)r * a->mask_row_stride + lo : NULL, &rm, c,
                        a->lse ? a->lse + row : NULL);
        }
    }
    free(st);
    free(acc);
    free(sum);
    return ATTNX_OK;
}

/* -- everything else: work items of (batch item, chunk of query rows) */
typedef struct {
    const attn_args *a;
    size_t chunk, nchunks;
} rows_job_t;

/* Items [it0, it1): item it is chunk it % nchunks of the query rows of
 * batch item it / nchunks. */
static void attn_items(void *ptr, size_t it0, size_t it1)
{
    const rows_job_t *j = (const rows_job_t *)ptr;
    const attn_args *a = j->a;
    for (size_t it = it0; it < it1; it++) {
        size_t b = it / j->nchunks, i0 = (it % j->nchunks) * j->chunk;
        size_t nq = a->Lq - i0 < j->chunk ? a->Lq - i0 : j->chunk;
        const AX_T *qb, *kb, *vb;
        const unsigned char *mb;
        item_ptrs(a, b, &qb, &kb, &vb, &mb);
        if (mb) mb += (ptrdiff_t)i0 * a->mask_row_stride;
        size_t row = b * a->Lq + i0;
        attnx_mods md;
        size_t Tb = item_mods(a, b, &md);
        attnx_mods mc = mods_from(&md, i0);
        attend_rows(a->kt, qb + i0 * a->d, nq, kb, vb, Tb, a->T, a->d, a->dv, a->scale, mb,
                    a->mask_row_stride, &mc, a->ctx + row * a->dv,
                    a->weights ? a->weights + row * a->T : NULL, a->lse ? a->lse + row : NULL);
    }
}

/* Validate, then run. Results depend on the arguments alone, never on the
 * thread count: the split and the chunking of query rows are fixed by the
 * shapes. */
static int attention(attn_args *a, int num_threads)
{
    size_t tmp;
    int rc;
    if (!a->Q || !a->K || !a->V || !a->ctx) return ATTNX_ERR_NULL;
    if (num_threads < 0) return ATTNX_ERR_ARG;
    if ((rc = attnx_batch_count(a->nbatch, a->batch_shape, &a->count)) != ATTNX_OK) return rc;
    if (a->nbatch && (!a->q_strides || !a->k_strides || !a->v_strides ||
                      (a->mask && !a->mask_strides) || (a->bias && !a->bias_strides) ||
                      (a->slopes && !a->slope_strides) || (a->klen && !a->klen_strides)))
        return ATTNX_ERR_NULL;
    if (!(a->softcap >= 0) || a->softcap == INFINITY || (a->bias && a->bias_col != 0 && a->bias_col != 1) ||
        (a->lower_right != 0 && a->lower_right != 1))
        return ATTNX_ERR_ARG;
    const size_t Lq = a->Lq, T = a->T, d = a->d, dv = a->dv;
    if (T == 0) return ATTNX_ERR_EMPTY;
    if (!elems(a->count, Lq, &a->rows) || !elems(a->rows, dv, &tmp) || !elems(a->rows, T, &tmp) ||
        !elems(Lq, d, &tmp) || !elems(T, d, &tmp) || !elems(T, dv, &tmp))
        return ATTNX_ERR_OVERFLOW;
    const size_t rows = a->rows;
    if (a->klen)
        for (size_t b = 0; b < a->count; b++) {
            long long n = a->klen[a->nbatch ? attnx_batch_offset(a->nbatch, a->batch_shape, a->klen_strides, b) : 0];
            if (n < 0 || (unsigned long long)n > (unsigned long long)T) return ATTNX_ERR_ARG;
        }
    if (rows == 0 || (dv == 0 && !a->weights && !a->lse)) return ATTNX_OK;   /* nothing to write */
    {
        const size_t nbatch = a->nbatch, *bs = a->batch_shape;
        const size_t cb = rows * dv * sizeof(AX_T), wb = a->weights ? rows * T * sizeof(AX_T) : 0;
        const size_t lb = a->lse ? rows * sizeof(AX_T) : 0;
        const size_t qi = Lq * d * sizeof(AX_T), ki = T * d * sizeof(AX_T), vi = T * dv * sizeof(AX_T);
        /* a mask item: Lq rows of T bytes, mask_row_stride apart */
        const ptrdiff_t mrs = a->mask_row_stride;
        uintptr_t mrow = mrs < 0 ? 0 - (uintptr_t)mrs : (uintptr_t)mrs;
        size_t mi = (Lq - 1) * mrow + T;
        const void *m0 = mrs < 0 ? (const void *)((uintptr_t)a->mask - (Lq - 1) * mrow) : a->mask;
        /* a bias item: Lq rows bias_row apart, of T entries bias_col apart */
        const ptrdiff_t brs = a->bias_row;
        uintptr_t brow = brs < 0 ? 0 - (uintptr_t)brs : (uintptr_t)brs;
        size_t bi = ((Lq - 1) * brow + (T - 1) * (size_t)a->bias_col + 1) * sizeof(AX_T);
        const AX_T *b0 = brs < 0 ? a->bias - (Lq - 1) * brow : a->bias;
        void *outs[3] = {a->ctx, a->weights, a->lse};
        const size_t ob[3] = {cb, wb, lb};
        for (int o = 0; o < 3; o++) {
            if (!outs[o]) continue;
            if (attnx_overlaps_batched(outs[o], ob[o], a->Q, sizeof(AX_T), nbatch, bs, a->q_strides, qi) ||
                attnx_overlaps_batched(outs[o], ob[o], a->K, sizeof(AX_T), nbatch, bs, a->k_strides, ki) ||
                attnx_overlaps_batched(outs[o], ob[o], a->V, sizeof(AX_T), nbatch, bs, a->v_strides, vi) ||
                (a->mask && attnx_overlaps_batched(outs[o], ob[o], m0, 1, nbatch, bs, a->mask_strides, mi)) ||
                (a->bias && attnx_overlaps_batched(outs[o], ob[o], b0, sizeof(AX_T), nbatch, bs, a->bias_strides, bi)) ||
                (a->slopes && attnx_overlaps_batched(outs[o], ob[o], a->slopes, sizeof(AX_T), nbatch, bs,
                                                     a->slope_strides, sizeof(AX_T))) ||
                (a->klen && attnx_overlaps_batched(outs[o], ob[o], a->klen, sizeof(long long), nbatch, bs,
                                                   a->klen_strides, sizeof(long long))))
                return ATTNX_ERR_OVERLAP;
            for (int o2 = 0; o2 < o; o2++)
                if (outs[o2] && attnx_overlap(outs[o], ob[o], outs[o2], ob[o2])) return ATTNX_ERR_OVERLAP;
        }
    }
    a->kt = AX_KERNELS_GET();
    const double work = (double)rows * (double)T * (double)(d + dv + 1);

    if (rows <= SPLIT_MAX_ROWS && !a->weights && T >= SPLIT_MIN_KEYS) {
        size_t nparts = (T + split_keys(T) - 1) / split_keys(T);
        return attend_split(a, attnx_pick_threads(num_threads, rows * nparts, work));
    }

    /* Work items: (batch item, chunk of query rows). Chunks halve (not below
     * 8 rows) until there are at least 8 items, whatever the thread count: a
     * row's bits may depend on the rows beside it in the tiled kernel. */
    size_t chunk = Lq;
    while (chunk > 8 && a->count * ((Lq + chunk - 1) / chunk) < 8) chunk = (chunk + 1) / 2;
    rows_job_t job = {a, chunk, (Lq + chunk - 1) / chunk};
    attnx_parallel_for(attnx_pick_threads(num_threads, a->count * job.nchunks, work),
                       a->count * job.nchunks, attn_items, &job);
    return ATTNX_OK;
}

int AX_API(attend_batch)(const AX_T *Q, const AX_T *K, const AX_T *V,
                       size_t nbatch, const size_t *batch_shape,
                       const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                       const ptrdiff_t *v_strides,
                       size_t Lq, size_t T, size_t d, size_t dv, AX_T scale,
                       const unsigned char *mask, const ptrdiff_t *mask_strides,
                       ptrdiff_t mask_row_stride, int causal,
                       AX_T *ctx, AX_T *weights, int num_threads)
{
    attn_args a;
    memset(&a, 0, sizeof a);
    a.Q = Q, a.K = K, a.V = V;
    a.nbatch = nbatch, a.batch_shape = batch_shape;
    a.q_strides = q_strides, a.k_strides = k_strides, a.v_strides = v_strides;
    a.mask = mask, a.mask_strides = mask_strides, a.mask_row_stride = mask_row_stride;
    a.Lq = Lq, a.T = T, a.d = d, a.dv = dv, a.scale = scale, a.causal = causal != 0;
    a.ctx = ctx, a.weights = weights;
    a.wl = a.wr = -1;
    return attention(&a, num_threads);
}

/* The caller's params as this library's struct: a shorter (older) one
 * reads 0 beyond its size; a longer (newer) one is refused unless the
 * fields this library does not know are all 0. */
static int params_copy(const attnx_attention_params *params, attnx_attention_params *p)
{
    if (!params) return ATTNX_ERR_NULL;
    if (params->size < ATTNX_ATTENTION_PARAMS_V1_SIZE) return ATTNX_ERR_ARG;
    memset(p, 0, sizeof *p);
    memcpy(p, params, params->size < sizeof *p ? params->size : sizeof *p);
    for (size_t i = sizeof *p; i < params->size; i++)
        if (((const unsigned char *)params)[i]) return ATTNX_ERR_ARG;
    return ATTNX_OK;
}

/* attn_args from validated-size params (the checks of attention() follow) */
static int args_from_params(const attnx_attention_params *p, attn_args *a)
{
    if (p->causal < 0 || p->causal > 1 || p->window < 0 || p->window > 1) return ATTNX_ERR_ARG;
    if (p->key_offset < 0 ? p->query_offset > PTRDIFF_MAX + p->key_offset
                          : p->query_offset < PTRDIFF_MIN + p->key_offset)
        return ATTNX_ERR_OVERFLOW;              /* query_offset - key_offset would */
    memset(a, 0, sizeof *a);
    a->Q = (const AX_T *)p->query, a->K = (const AX_T *)p->keys, a->V = (const AX_T *)p->values;
    a->nbatch = p->nbatch, a->batch_shape = p->batch_shape;
    a->q_strides = p->query_strides, a->k_strides = p->key_strides, a->v_strides = p->value_strides;
    a->mask = p->mask, a->mask_strides = p->mask_strides, a->mask_row_stride = p->mask_row_stride;
    a->Lq = p->Lq, a->T = p->T, a->d = p->d, a->dv = p->dv, a->scale = (AX_T)p->scale;
    a->causal = p->causal, a->diag = p->query_offset - p->key_offset;
    a->ctx = (AX_T *)p->out, a->weights = (AX_T *)p->weights, a->lse = (AX_T *)p->lse;
    a->bias = (const AX_T *)p->bias, a->bias_strides = p->bias_strides;
    a->bias_row = p->bias_row_stride, a->bias_col = p->bias_col_stride;
    a->slopes = (const AX_T *)p->alibi_slopes, a->slope_strides = p->alibi_strides;
    a->klen = p->key_lengths, a->klen_strides = p->key_lengths_strides;
    a->lower_right = p->lower_right;
    a->wl = !p->window || p->window_left < 0 ? -1 : p->window_left;
    a->wr = !p->window || p->window_right < 0 ? -1 : p->window_right;
    a->softcap = p->softcap;
    return ATTNX_OK;
}

int AX_API(attention)(const attnx_attention_params *params)
{
    attnx_attention_params p;
    attn_args a;
    int rc = params_copy(params, &p);
    if (rc == ATTNX_OK && p.grad_bias) rc = ATTNX_ERR_ARG;   /* a backward output */
    if (rc == ATTNX_OK) rc = args_from_params(&p, &a);
    return rc == ATTNX_OK ? attention(&a, p.num_threads) : rc;
}

/* ----------------------------------------------------------------- merging */

/* Partial results over disjoint key sets, merged max-first in double, in the
 * order p = 0, 1, ...: with M the largest lse_p and S = sum_p exp(lse_p - M),
 * lse = M + log(S) and out = sum_p (exp(lse_p - M) / S) out_p. A partial with
 * lse_p = -inf weighs nothing and its out_p is not read; all -inf: zeros
 * and -inf. A NaN lse_p makes the row NaN. */
int AX_API(merge_attention)(size_t P, size_t rows, size_t dv, const AX_T *outs,
                          const AX_T *lses, AX_T *out, AX_T *lse)
{
    size_t n, tmp;
    if (!outs || !lses || !out || !lse) return ATTNX_ERR_NULL;
    if (P == 0) return ATTNX_ERR_EMPTY;
    if (!elems(rows, dv, &n) || !elems(P, n, &tmp) || !elems(P, rows, &tmp))
        return ATTNX_ERR_OVERFLOW;
    if (overlaps(out, n, outs, P * n * sizeof(AX_T)) || overlaps(out, n, lses, P * rows * sizeof(AX_T)) ||
        overlaps(lse, rows, outs, P * n * sizeof(AX_T)) ||
        overlaps(lse, rows, lses, P * rows * sizeof(AX_T)) || overlaps(lse, rows, out, n * sizeof(AX_T)))
        return ATTNX_ERR_OVERLAP;
    for (size_t r = 0; r < rows; r++) {
        double M = -INFINITY;
        int nan = 0;
        for (size_t p = 0; p < P; p++) {
            double x = (double)lses[p * rows + r];
            if (x != x) nan = 1;
            else if (x > M) M = x;
        }
        AX_T *o = out + r * dv;
        if (nan || M == INFINITY) {
            fill(o, dv, (AX_T)NAN);
            lse[r] = (AX_T)NAN;
            continue;
        }
        if (M == -INFINITY) {
            fill(o, dv, 0);
            lse[r] = (AX_T)-INFINITY;
            continue;
        }
        double S = 0.0;
        for (size_t p = 0; p < P; p++) {
            double x = (double)lses[p * rows + r];
            if (x != -INFINITY) S += attnx_exp_diff_scalar(x, M);
        }
        const double L = M + attnx_log_f64(S);
        lse[r] = (AX_T)L;
        /* out in double, accumulated in o when AX_T is double; a small
         * stack block otherwise */
        for (size_t j0 = 0; j0 < dv; j0 += 64) {
            double acc[64];
            size_t nj = dv - j0 < 64 ? dv - j0 : 64;
            for (size_t j = 0; j < nj; j++) acc[j] = 0.0;
            for (size_t p = 0; p < P; p++) {
                double x = (double)lses[p * rows + r];
                if (x == -INFINITY) continue;
                /* exp(lse_p - M) / S rather than exp(lse_p - lse): lse rounds
                 * M + log(S), which loses log(S) when |M| is huge */
                double c = attnx_exp_diff_scalar(x, M) / S;
                if (c == 0.0) continue;
                const AX_T *op = outs + (p * rows + r) * dv + j0;
                for (size_t j = 0; j < nj; j++) acc[j] += c * (double)op[j];
            }
            for (size_t j = 0; j < nj; j++) o[j0 + j] = (AX_T)acc[j];
        }
    }
    return ATTNX_OK;
}
