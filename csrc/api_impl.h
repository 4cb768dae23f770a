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
 *   AX_FINISH(m, l, c, dv)   c = c / l in place; zeros when m == -inf
 *                            (nothing attended), NaN when l is NaN
 *
 * Internal: not installed, included once per translation unit.
 */
#if !defined(AX_T) || !defined(AX_KERNELS) || !defined(AX_API) || !defined(AX_FINISH)
#error "api_impl.h: define AX_T, AX_KERNELS, AX_KERNELS_GET, AX_API and AX_FINISH first"
#endif

#include <math.h>     /* INFINITY, NAN: macros only, no libm call */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attnx_api_util.h"

/* A single query is split across threads (flash-decoding) from this many
 * keys; below ATTNX_MIN_WORK_PER_THREAD multiply-adds a call stays on one
 * thread (attnx_pick_threads). */
#define MIN_SPLIT_KEYS 4096

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

/* ---------------------------------------------------------------- kernels */

/* Scores of the keys the mask lets through, in runs of consecutive keys, so
 * that masked rows are never read; masked scores are -inf. */
static void masked_scores(const AX_KERNELS *kt, const AX_T *q, const AX_T *K,
                          size_t T, size_t d, AX_T scale, const unsigned char *mask,
                          AX_T *s)
{
    if (!mask) {
        kt->dot_scores(q, K, T, d, scale, s);
        return;
    }
    size_t t = 0;
    while (t < T) {
        if (!mask[t]) {
            s[t++] = -INFINITY;
            continue;
        }
        size_t u = t + 1;
        while (u < T && mask[u]) u++;
        kt->dot_scores(q, K + t * d, u - t, d, scale, s + t);
        t = u;
    }
}

/* Weights then context; w has room for T entries. */
static void attend_two_pass(const AX_KERNELS *kt, const AX_T *q, const AX_T *K,
                            const AX_T *V, size_t T, size_t d, size_t dv, AX_T scale,
                            const unsigned char *mask, AX_T *ctx, AX_T *w)
{
    masked_scores(kt, q, K, T, d, scale, mask, w);
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

/* 1 when some c[j] is inf or NaN: its exponent field is all ones, so adding
 * one to that field carries into the sign bit. Integer ops with no branch,
 * which the compiler vectorises: it runs after every fused call. */
static int nonfinite(const AX_T *c, size_t n)
{
#define NF_CHECK(U, EXP, ONE)                                   \
    U acc = 0;                                                  \
    for (size_t j = 0; j < n; j++) {                            \
        U u;                                                    \
        memcpy(&u, &c[j], sizeof u);                            \
        acc |= (U)((u & (EXP)) + (ONE));                        \
    }                                                           \
    return (int)(acc >> (8 * sizeof(U) - 1));
    if (sizeof(AX_T) == 8) {
        NF_CHECK(uint64_t, 0x7ff0000000000000ull, 0x0010000000000000ull)
    } else {
        NF_CHECK(uint32_t, 0x7f800000u, 0x00800000u)
    }
#undef NF_CHECK
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
 * even that fail, the fused result stands). */
static void attend_safe(const AX_KERNELS *kt, const AX_T *q, const AX_T *K, const AX_T *V,
                        size_t T, size_t d, size_t dv, AX_T scale, const unsigned char *mask,
                        AX_T *ctx)
{
    AX_T *w = (AX_T *)malloc(T * sizeof(AX_T));
    if (!w) return;
    attend_two_pass(kt, q, K, V, T, d, dv, scale, mask, ctx, w);
    free(w);
}

static void attend_fused(const AX_KERNELS *kt, const AX_T *q, const AX_T *K,
                         const AX_T *V, size_t T, size_t d, size_t dv, AX_T scale,
                         const unsigned char *mask, AX_T *ctx)
{
    attnx_online st = {-INFINITY, 0.0};
    fill(ctx, dv, 0);
    kt->attend_online(q, K, V, T, d, dv, scale, mask, &st, ctx);
    AX_FINISH(st.m, st.l, ctx, dv);
    if (nonfinite(ctx, dv)) attend_safe(kt, q, K, V, T, d, dv, scale, mask, ctx);
}

/* Queries [q0, q0 + nq) of one batch item: Q, ctx, w and mask point at row q0. */
static void attend_rows(const AX_KERNELS *kt, const AX_T *Q, size_t nq, size_t q0,
                        const AX_T *K, const AX_T *V, size_t T, size_t d, size_t dv,
                        AX_T scale, const unsigned char *mask, ptrdiff_t mask_row_stride,
                        int causal, AX_T *ctx, AX_T *w)
{
    if (!w && kt->attend_rows) {
        kt->attend_rows(Q, nq, q0, K, V, T, d, dv, scale, mask, mask_row_stride, causal, ctx);
        for (size_t r = 0; r < nq; r++) {
            if (!nonfinite(ctx + r * dv, dv)) continue;
            size_t lim = causal && q0 + r + 1 < T ? q0 + r + 1 : T;
            attend_safe(kt, Q + r * d, K, V, lim, d, dv, scale,
                        mask ? mask + (ptrdiff_t)r * mask_row_stride : NULL, ctx + r * dv);
        }
        return;
    }
    for (size_t r = 0; r < nq; r++) {
        size_t lim = causal && q0 + r + 1 < T ? q0 + r + 1 : T;
        const unsigned char *mr = mask ? mask + (ptrdiff_t)r * mask_row_stride : NULL;
        if (w) {
            attend_two_pass(kt, Q + r * d, K, V, lim, d, dv, scale, mr, ctx + r * dv, w + r * T);
            /* causally excluded keys weigh 0, or NaN in a NaN row: the
             * rule of masked keys */
            AX_T w0 = w[r * T];
            fill(w + r * T + lim, T - lim, w0 != w0 ? w0 : (AX_T)0);
        } else {
            attend_fused(kt, Q + r * d, K, V, lim, d, dv, scale, mr, ctx + r * dv);
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
        attend_two_pass(kt, q, K, V, T, d, dv, scale, mask, ctx, weights);
    else
        attend_fused(kt, q, K, V, T, d, dv, scale, mask, ctx);
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

typedef struct {
    const AX_KERNELS *kt;
    const AX_T *q, *K, *V;
    size_t T, d, dv, chunk;
    AX_T scale;
    const unsigned char *mask;
    AX_T *acc;
    attnx_online *st;
} split_job;

/* Fold chunks [p0, p1) of keys into their own states. */
static void split_parts(void *ptr, size_t p0, size_t p1)
{
    const split_job *j = (const split_job *)ptr;
    for (size_t p = p0; p < p1; p++) {
        size_t t0 = p * j->chunk, t1 = t0 + j->chunk < j->T ? t0 + j->chunk : j->T;
        AX_T *a = j->acc + p * j->dv;
        j->st[p].m = -INFINITY;
        j->st[p].l = 0.0;
        fill(a, j->dv, 0);
        if (t0 < t1)
            j->kt->attend_online(j->q, j->K + t0 * j->d, j->V + t0 * j->dv, t1 - t0, j->d, j->dv,
                                 j->scale, j->mask ? j->mask + t0 : NULL, &j->st[p], a);
    }
}

/* One query over a long key sequence, split into nt chunks folded in
 * parallel, then merged in double: each chunk's (m, l, acc) is rescaled to
 * the global max. Allocates nt * dv elements, nt states and dv doubles. */
static int attend_split(const AX_KERNELS *kt, const AX_T *q, const AX_T *K,
                        const AX_T *V, size_t T, size_t d, size_t dv, AX_T scale,
                        const unsigned char *mask, AX_T *ctx, int nt)
{
    size_t chunk = (T + (size_t)nt - 1) / (size_t)nt;
    AX_T *acc = (AX_T *)malloc((size_t)nt * (dv ? dv : 1) * sizeof(AX_T));
    double *sum = (double *)malloc((dv ? dv : 1) * sizeof(double));
    attnx_online *st = (attnx_online *)malloc((size_t)nt * sizeof(attnx_online));
    if (!acc || !sum || !st) {
        free(acc);
        free(sum);
        free(st);
        return ATTNX_ERR_NOMEM;
    }
    split_job job = {kt, q, K, V, T, d, dv, chunk, scale, mask, acc, st};
    attnx_parallel_for(nt, (size_t)nt, split_parts, &job);
    long long p;
    attnx_online tot = {-INFINITY, 0.0};
    for (p = 0; p < nt; p++) {
        if (st[p].l != st[p].l) tot.l = NAN;
        if (st[p].m > tot.m) tot.m = st[p].m;
    }
    for (size_t j = 0; j < dv; j++) sum[j] = 0.0;
    if (tot.m != -INFINITY && tot.l == tot.l) {
        for (p = 0; p < nt; p++) {
            if (st[p].m == -INFINITY) continue;
            double c = attnx_exp_diff_scalar(st[p].m, tot.m);
            if (c == 0.0) continue;
            tot.l += st[p].l * c;
            const AX_T *a = acc + (size_t)p * dv;
            for (size_t j = 0; j < dv; j++) sum[j] += (double)a[j] * c;
        }
    }
    if (tot.l != tot.l) {
        fill(ctx, dv, (AX_T)NAN);
    } else if (tot.m == -INFINITY) {
        fill(ctx, dv, 0);
    } else {
        for (size_t j = 0; j < dv; j++) ctx[j] = (AX_T)(sum[j] / tot.l);
    }
    free(acc);
    free(sum);
    free(st);
    if (nonfinite(ctx, dv)) attend_safe(kt, q, K, V, T, d, dv, scale, mask, ctx);
    return ATTNX_OK;
}

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
    AX_T *ctx, *weights;
    size_t chunk, nchunks;
} batch_job;

/* Work items [it0, it1): item it is chunk it % nchunks of the query rows of
 * batch item it / nchunks. */
static void batch_items(void *ptr, size_t it0, size_t it1)
{
    const batch_job *j = (const batch_job *)ptr;
    for (size_t it = it0; it < it1; it++) {
        size_t b = it / j->nchunks, i0 = (it % j->nchunks) * j->chunk;
        size_t nq = j->Lq - i0 < j->chunk ? j->Lq - i0 : j->chunk;
        const AX_T *qb = j->Q, *kb = j->K, *vb = j->V;
        const unsigned char *mb = j->mask;
        if (j->nbatch) {
            qb += attnx_batch_offset(j->nbatch, j->batch_shape, j->q_strides, b);
            kb += attnx_batch_offset(j->nbatch, j->batch_shape, j->k_strides, b);
            vb += attnx_batch_offset(j->nbatch, j->batch_shape, j->v_strides, b);
            if (mb) mb += attnx_batch_offset(j->nbatch, j->batch_shape, j->mask_strides, b);
        }
        if (mb) mb += (ptrdiff_t)i0 * j->mask_row_stride;
        size_t row = b * j->Lq + i0;
        attend_rows(j->kt, qb + i0 * j->d, nq, i0, kb, vb, j->T, j->d, j->dv, j->scale, mb,
                    j->mask_row_stride, j->causal, j->ctx + row * j->dv,
                    j->weights ? j->weights + row * j->T : NULL);
    }
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
    size_t count, rows, tmp;
    int rc;
    if (!Q || !K || !V || !ctx) return ATTNX_ERR_NULL;
    if (num_threads < 0) return ATTNX_ERR_ARG;
    if ((rc = attnx_batch_count(nbatch, batch_shape, &count)) != ATTNX_OK) return rc;
    if (nbatch && (!q_strides || !k_strides || !v_strides || (mask && !mask_strides)))
        return ATTNX_ERR_NULL;
    if (T == 0) return ATTNX_ERR_EMPTY;
    if (!elems(count, Lq, &rows) || !elems(rows, dv, &tmp) || !elems(rows, T, &tmp) ||
        !elems(Lq, d, &tmp) || !elems(T, d, &tmp) || !elems(T, dv, &tmp))
        return ATTNX_ERR_OVERFLOW;
    if (rows == 0 || (dv == 0 && !weights)) return ATTNX_OK;   /* nothing to write */
    {
        const size_t cb = rows * dv * sizeof(AX_T), wb = weights ? rows * T * sizeof(AX_T) : 0;
        const size_t qi = Lq * d * sizeof(AX_T), ki = T * d * sizeof(AX_T), vi = T * dv * sizeof(AX_T);
        /* a mask item: Lq rows of T bytes, mask_row_stride apart */
        uintptr_t mrow = mask_row_stride < 0 ? 0 - (uintptr_t)mask_row_stride : (uintptr_t)mask_row_stride;
        size_t mi = (Lq - 1) * mrow + T;
        const void *m0 = mask_row_stride < 0 ? (const void *)((uintptr_t)mask - (Lq - 1) * mrow) : mask;
        if (attnx_overlaps_batched(ctx, cb, Q, sizeof(AX_T), nbatch, batch_shape, q_strides, qi) ||
            attnx_overlaps_batched(ctx, cb, K, sizeof(AX_T), nbatch, batch_shape, k_strides, ki) ||
            attnx_overlaps_batched(ctx, cb, V, sizeof(AX_T), nbatch, batch_shape, v_strides, vi) ||
            (mask && attnx_overlaps_batched(ctx, cb, m0, 1, nbatch, batch_shape, mask_strides, mi)) ||
            attnx_overlap(weights, wb, ctx, cb) ||
            attnx_overlaps_batched(weights, wb, Q, sizeof(AX_T), nbatch, batch_shape, q_strides, qi) ||
            attnx_overlaps_batched(weights, wb, K, sizeof(AX_T), nbatch, batch_shape, k_strides, ki) ||
            attnx_overlaps_batched(weights, wb, V, sizeof(AX_T), nbatch, batch_shape, v_strides, vi) ||
            (mask && attnx_overlaps_batched(weights, wb, m0, 1, nbatch, batch_shape, mask_strides, mi)))
            return ATTNX_ERR_OVERLAP;
    }
    const AX_KERNELS *kt = AX_KERNELS_GET();
    double work = (double)rows * (double)T * (double)(d + dv + 1);

    if (rows == 1 && !weights && !causal && num_threads != 1 && T >= MIN_SPLIT_KEYS) {
        int nt = attnx_pick_threads(num_threads, T / (MIN_SPLIT_KEYS / 2), work);
        if (nt > 1) return attend_split(kt, Q, K, V, T, d, dv, scale, mask, ctx, nt);
    }

    /* Work items: (batch item, chunk of query rows); chunks shrink until
     * there are a few items per thread. */
    int nt = attnx_pick_threads(num_threads, rows, work);
    size_t chunk = Lq;
    while (chunk > 8 && count * ((Lq + chunk - 1) / chunk) < 4 * (size_t)nt) chunk = (chunk + 1) / 2;
    size_t nchunks = (Lq + chunk - 1) / chunk;
    batch_job job = {kt, Q, K, V, nbatch, batch_shape, q_strides, k_strides, v_strides,
                     mask, mask_strides, mask_row_stride, Lq, T, d, dv, scale, causal,
                     ctx, weights, chunk, nchunks};
    attnx_parallel_for(nt, count * nchunks, batch_items, &job);
    return ATTNX_OK;
}
