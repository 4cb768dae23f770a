/*
 * api_additive.c -- the public entry points of additive (Bahdanau / concat)
 * attention in attnx.h: the scores, and attention with them (mask and
 * causality applied here, as attnx_attend_batch applies them to dot
 * scores): argument checks, batching, threads, and the calls through the
 * additive and float64 kernel tables of the active SIMD level. Kernels never
 * see an argument this file has not validated. The checks, status codes and
 * batch conventions are those of api_impl.h.
 */
#include <math.h>     /* INFINITY, NAN: macros only, no libm call */
#include <stdint.h>
#include <stdlib.h>

#include "attnx_api_util.h"
#include "attnx_internal_additive.h"

/* Below this much work (in multiply-adds) a call stays on one thread, as in
 * api.c: waking a team costs a few microseconds. */
/* One tanh plus its FMA costs about as much as this many dot-product
 * multiply-adds (measured: AVX-512 scores vs dot_scores at h = 128). */
#define TANH_COST 16.0
/* Keys per work item when a batch is split along T: a multiple of the
 * kernels' four-row blocks, and enough rows to amortise the item. */
#define MIN_CHUNK_KEYS 64
/* Work items per thread of a threaded call (load balance vs. hand-out cost). */
#define ITEMS_PER_THREAD 8

/* The additive table of the float64 level in use, so that both families
 * always run at the same level (ATTNX_SIMD and attnx_set_simd_level()
 * switch them together). */
static const attnx_additive_kernels *additive_kernels(void) { return attnx_level_get()->additive; }

/* r = a * b as a count of doubles whose byte size fits in size_t. */
static int elems(size_t a, size_t b, size_t *r) { return attnx_elems(a, b, sizeof(double), r); }

static int overlaps(const double *a, size_t na, const void *b, size_t nb_bytes)
{
    return attnx_overlap(a, na * sizeof(double), b, nb_bytes);
}

/* ---------------------------------------------------------------- single */

int attnx_tanh(const double *x, size_t n, double *y)
{
    if (!x || !y) return ATTNX_ERR_NULL;
    if (!elems(n, 1, &n)) return ATTNX_ERR_OVERFLOW;
    if (x != y && overlaps(y, n, x, n * sizeof(double))) return ATTNX_ERR_OVERLAP;
    if (n) additive_kernels()->tanh(x, n, y);
    return ATTNX_OK;
}

int attnx_additive_scores(const double *a, const double *Kp, const double *v,
                          size_t T, size_t h, double *scores)
{
    size_t Th, T1;
    if (!a || !Kp || !v || !scores) return ATTNX_ERR_NULL;
    /* T itself too: with h == 0 no product catches a T no scores fit */
    if (!elems(T, h, &Th) || !elems(T, 1, &T1)) return ATTNX_ERR_OVERFLOW;
    const size_t hb = h * sizeof(double);
    if (overlaps(scores, T, a, hb) || overlaps(scores, T, v, hb) ||
        overlaps(scores, T, Kp, Th * sizeof(double)))
        return ATTNX_ERR_OVERLAP;
    if (T) additive_kernels()->scores(a, Kp, NULL, v, T, h, scores);
    return ATTNX_OK;
}

/* ----------------------------------------------------------------- batch */

/* One batched call: scores alone (ctx == NULL), or attention. Work items
 * are (group of query rows, chunk of keys); see additive_run. */
typedef struct {
    const attnx_additive_kernels *ka;
    const attnx_kernels *kt;                 /* softmax and context */
    const double *A, *Kp, *v, *V;
    size_t nbatch;
    const size_t *batch_shape;
    const ptrdiff_t *a_strides, *kp_strides, *v_strides, *mask_strides;
    const unsigned char *mask;
    ptrdiff_t mask_row_stride;
    int causal;
    ptrdiff_t diag;                          /* query_offset - key_offset */
    size_t rows, Lq, T, h, dv, group, chunk, nchunks;
    double *s;                               /* rows x T: scores, then weights */
    double *ctx;                             /* rows x dv, or NULL: scores only */
} additive_job;

static ptrdiff_t item_offset(const additive_job *j, const ptrdiff_t *strides, size_t b)
{
    return j->nbatch ? attnx_batch_offset(j->nbatch, j->batch_shape, strides, b) : 0;
}

/* Keys [0, lim) query row i sees: with causality t <= i + diag (the key's
 * position at or before the query's); may be none. */
static size_t row_lim(const additive_job *j, size_t i)
{
    if (!j->causal) return j->T;
    ptrdiff_t lim = (ptrdiff_t)i + 1 + j->diag;
    return lim <= 0 ? 0 : (size_t)lim < j->T ? (size_t)lim : j->T;
}

/* The scores of keys [t0, t1) of one row: a key masked out or past lim
 * scores -inf and its row of Kp is not read. Under a mask, the keys let
 * through in each stretch of GATHER are scored together (gathered), in
 * whole blocks of the kernel rather than one short run at a time. A score
 * depends on a, v and its own key row only (attnx_additive_kernels), so the
 * gathering, like the chunks, changes no bit of it. */
#define GATHER 64
static void row_scores(const additive_job *j, size_t row, size_t t0, size_t t1)
{
    const size_t b = row / j->Lq, i = row % j->Lq, h = j->h, lim = row_lim(j, i);
    const size_t te = t1 < lim ? t1 : lim;
    const double *a = j->A + item_offset(j, j->a_strides, b) + i * h;
    const double *kp = j->Kp + item_offset(j, j->kp_strides, b);
    const unsigned char *m = j->mask ? j->mask + item_offset(j, j->mask_strides, b) +
                                           (ptrdiff_t)i * j->mask_row_stride : NULL;
    double *s = j->s + row * j->T;
    for (size_t t = te > t0 ? te : t0; t < t1; t++) s[t] = -INFINITY;
    if (!m) {
        if (te > t0) j->ka->scores(a, kp + t0 * h, NULL, j->v, te - t0, h, s + t0);
        return;
    }
    for (size_t g = t0; g < te; g += GATHER) {
        size_t idx[GATHER], n = 0;
        double got[GATHER];
        for (size_t t = g; t < te && t < g + GATHER; t++) {
            if (m[t]) idx[n++] = t;
            else s[t] = -INFINITY;
        }
        if (n) j->ka->scores(a, kp, idx, j->v, n, h, got);
        for (size_t k = 0; k < n; k++) s[idx[k]] = got[k];
    }
}

/* A row's scores into weights, then its context, by the rules of
 * attnx_attend: a row that attends nothing gets zeros, a NaN row NaN (its
 * value rows unread), and a weight of exactly 0 leaves its value row
 * unread. The softmax runs over all T scores (those not seen are -inf), as
 * attnx.softmax did when Python composed this call; the context reads the
 * keys up to the causal limit only (the rest weigh exactly 0). */
static void row_finish(const additive_job *j, size_t row)
{
    const size_t T = j->T, dv = j->dv;
    double *w = j->s + row * T, *c = j->ctx + row * dv;
    if (j->kt->softmax(w, T, w)) {
        for (size_t t = 0; t < T; t++) w[t] = 0.0;
        for (size_t k = 0; k < dv; k++) c[k] = 0.0;
    } else if (w[0] != w[0]) {
        for (size_t k = 0; k < dv; k++) c[k] = NAN;
    } else {
        const double *vb = j->V + item_offset(j, j->v_strides, row / j->Lq);
        j->kt->context(w, vb, row_lim(j, row % j->Lq), dv, c);
    }
}

/* Work items [it0, it1): item it is key chunk it % nchunks of query-row
 * group it / nchunks. An item that holds whole rows finishes them too. */
static void additive_items(void *p, size_t it0, size_t it1)
{
    const additive_job *j = (const additive_job *)p;
    for (size_t it = it0; it < it1; it++) {
        size_t g = it / j->nchunks, t0 = (it % j->nchunks) * j->chunk;
        size_t t1 = j->T - t0 < j->chunk ? j->T : t0 + j->chunk;
        size_t r1 = (g + 1) * j->group < j->rows ? (g + 1) * j->group : j->rows;
        for (size_t row = g * j->group; row < r1; row++) {
            row_scores(j, row, t0, t1);
            if (j->ctx && j->nchunks == 1) row_finish(j, row);
        }
    }
}

static void finish_items(void *p, size_t r0, size_t r1)
{
    for (size_t row = r0; row < r1; row++) row_finish((const additive_job *)p, row);
}

/* Run a validated job. Work items: (group of query rows, chunk of keys),
 * about ITEMS_PER_THREAD per thread and handed out dynamically, so that a
 * thread slowed by other work on its core does not hold up the call. With
 * few rows each row's keys are split too, so that a single query over a
 * long sequence still uses every thread; its softmax and context then
 * follow in a second pass over the rows. Neither cut changes a bit. */
static void additive_run(additive_job *j, int num_threads)
{
    const size_t rows = j->rows, T = j->T;
    size_t max_chunks = (T + MIN_CHUNK_KEYS - 1) / MIN_CHUNK_KEYS;
    double per_key = (double)j->h * TANH_COST + (j->ctx ? (double)j->dv + 8.0 : 0.0);
    int nt = attnx_pick_threads(num_threads, rows * max_chunks, (double)rows * (double)T * per_key);
    j->group = 1;
    j->chunk = T;
    if (nt > 1) {
        size_t target = ITEMS_PER_THREAD * (size_t)nt;
        if (rows >= target) {
            j->group = rows / target;
        } else {
            size_t split = (target + rows - 1) / rows;
            size_t chunk = (T + split - 1) / split;
            chunk = (chunk + 7) & ~(size_t)7;   /* whole blocks of key rows */
            if (chunk < MIN_CHUNK_KEYS) chunk = MIN_CHUNK_KEYS;
            j->chunk = chunk > T ? T : chunk;
        }
    } else {
        j->group = rows;
    }
    j->nchunks = (T + j->chunk - 1) / j->chunk;
    attnx_parallel_for(nt, (rows + j->group - 1) / j->group * j->nchunks, additive_items, j);
    if (j->ctx && j->nchunks > 1)
        attnx_parallel_for(attnx_pick_threads(num_threads, rows, (double)rows * (double)T * (j->dv + 8.0)),
                           rows, finish_items, j);
}

int attnx_additive_scores_batch(const double *A, const double *Kp, const double *v,
                                size_t nbatch, const size_t *batch_shape,
                                const ptrdiff_t *a_strides, const ptrdiff_t *kp_strides,
                                size_t Lq, size_t T, size_t h, double *scores,
                                int num_threads)
{
    size_t count, rows, total, tmp;
    int rc;
    if (!A || !Kp || !v || !scores) return ATTNX_ERR_NULL;
    if (num_threads < 0) return ATTNX_ERR_ARG;
    if ((rc = attnx_batch_count(nbatch, batch_shape, &count)) != ATTNX_OK) return rc;
    if (nbatch && (!a_strides || !kp_strides)) return ATTNX_ERR_NULL;
    if (!elems(count, Lq, &rows) || !elems(rows, T, &total) || !elems(Lq, h, &tmp) ||
        !elems(T, h, &tmp))
        return ATTNX_ERR_OVERFLOW;
    if (total == 0) return ATTNX_OK;
    {
        const size_t sb = total * sizeof(double);
        if (attnx_overlaps_batched(scores, sb, A, sizeof(double), nbatch, batch_shape, a_strides, Lq * h * sizeof(double)) ||
            attnx_overlaps_batched(scores, sb, Kp, sizeof(double), nbatch, batch_shape, kp_strides, T * h * sizeof(double)) ||
            overlaps(scores, total, v, h * sizeof(double)))
            return ATTNX_ERR_OVERLAP;
    }
    additive_job job = {additive_kernels(), NULL, A, Kp, v, NULL, nbatch, batch_shape, a_strides,
                        kp_strides, NULL, NULL, NULL, 0, 0, 0, rows, Lq, T, h, 0, 0, 0, 0, scores, NULL};
    additive_run(&job, num_threads);
    return ATTNX_OK;
}

/* ------------------------------------------------------------- attention */

int attnx_additive_attention(const double *A, const double *Kp, const double *v, const double *V,
                             size_t nbatch, const size_t *batch_shape, const ptrdiff_t *a_strides,
                             const ptrdiff_t *kp_strides, const ptrdiff_t *v_strides,
                             size_t Lq, size_t T, size_t h, size_t dv,
                             const unsigned char *mask, const ptrdiff_t *mask_strides,
                             ptrdiff_t mask_row_stride, int causal, ptrdiff_t query_offset,
                             ptrdiff_t key_offset, double *ctx, double *weights, int num_threads)
{
    size_t count, rows, tmp;
    int rc;
    if (!A || !Kp || !v || !V || !ctx) return ATTNX_ERR_NULL;
    if (num_threads < 0 || causal < 0 || causal > 1) return ATTNX_ERR_ARG;
    if (key_offset < 0 ? query_offset > PTRDIFF_MAX + key_offset
                       : query_offset < PTRDIFF_MIN + key_offset)
        return ATTNX_ERR_OVERFLOW;              /* query_offset - key_offset would */
    if ((rc = attnx_batch_count(nbatch, batch_shape, &count)) != ATTNX_OK) return rc;
    if (nbatch && (!a_strides || !kp_strides || !v_strides || (mask && !mask_strides)))
        return ATTNX_ERR_NULL;
    if (T == 0) return ATTNX_ERR_EMPTY;
    if (!elems(count, Lq, &rows) || !elems(rows, T, &tmp) || !elems(rows, dv, &tmp) ||
        !elems(Lq, h, &tmp) || !elems(T, h, &tmp) || !elems(T, dv, &tmp))
        return ATTNX_ERR_OVERFLOW;
    if (rows == 0 || (dv == 0 && !weights)) return ATTNX_OK;   /* nothing to write */
    {
        const void *m0;
        const size_t mi = attnx_mask_span(mask, mask_row_stride, Lq, T, &m0), d8 = sizeof(double);
        double *outs[2] = {ctx, weights};
        const size_t ob[2] = {rows * dv * d8, weights ? rows * T * d8 : 0};
        for (int o = 0; o < 2; o++)
            if (attnx_overlaps_batched(outs[o], ob[o], A, d8, nbatch, batch_shape, a_strides, Lq * h * d8) ||
                attnx_overlaps_batched(outs[o], ob[o], Kp, d8, nbatch, batch_shape, kp_strides, T * h * d8) ||
                attnx_overlaps_batched(outs[o], ob[o], V, d8, nbatch, batch_shape, v_strides, T * dv * d8) ||
                attnx_overlap(outs[o], ob[o], v, h * d8) ||
                (mask && attnx_overlaps_batched(outs[o], ob[o], m0, 1, nbatch, batch_shape, mask_strides, mi)))
                return ATTNX_ERR_OVERLAP;
        if (attnx_overlap(ctx, ob[0], weights, ob[1])) return ATTNX_ERR_OVERLAP;
    }
    /* without weights wanted, the scores need a place: rows x T, as the
     * weights would */
    double *s = weights ? weights : (double *)malloc(rows * T * sizeof(double));
    if (!s) return ATTNX_ERR_NOMEM;
    additive_job job = {additive_kernels(), attnx_kernels_get(), A, Kp, v, V, nbatch, batch_shape,
                        a_strides, kp_strides, v_strides, mask_strides, mask, mask_row_stride,
                        causal, query_offset - key_offset, rows, Lq, T, h, dv, 0, 0, 0, s, ctx};
    additive_run(&job, num_threads);
    if (!weights) free(s);
    return ATTNX_OK;
}
