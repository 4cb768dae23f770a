/*
 * api_additive.c -- the public entry points of the additive (Bahdanau /
 * concat) attention scores in attnx.h: argument checks, batching, threads,
 * and the calls through the additive kernel table of the active SIMD level.
 * Kernels never see an argument this file has not validated. The checks,
 * status codes and batch conventions are those of api.c (whose helpers are
 * static there, hence the small copies below).
 */
#include <stdint.h>

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
    if (T) additive_kernels()->scores(a, Kp, v, T, h, scores);
    return ATTNX_OK;
}

/* ----------------------------------------------------------------- batch */

typedef struct {
    const attnx_additive_kernels *kt;
    const double *A, *Kp, *v;
    size_t nbatch;
    const size_t *batch_shape;
    const ptrdiff_t *a_strides, *kp_strides;
    size_t rows, Lq, T, h, group, chunk, nchunks;
    double *scores;
} additive_job;

/* Work items [it0, it1): item it is key chunk it % nchunks of query-row
 * group it / nchunks. */
static void additive_items(void *p, size_t it0, size_t it1)
{
    const additive_job *j = (const additive_job *)p;
    for (size_t it = it0; it < it1; it++) {
        size_t g = it / j->nchunks, t0 = (it % j->nchunks) * j->chunk;
        size_t nk = j->T - t0 < j->chunk ? j->T - t0 : j->chunk;
        size_t r1 = (g + 1) * j->group < j->rows ? (g + 1) * j->group : j->rows;
        for (size_t row = g * j->group; row < r1; row++) {
            size_t b = row / j->Lq, i = row % j->Lq;
            const double *ab = j->A + (j->nbatch ? attnx_batch_offset(j->nbatch, j->batch_shape, j->a_strides, b) : 0);
            const double *kb = j->Kp + (j->nbatch ? attnx_batch_offset(j->nbatch, j->batch_shape, j->kp_strides, b) : 0);
            j->kt->scores(ab + i * j->h, kb + t0 * j->h, j->v, nk, j->h, j->scores + row * j->T + t0);
        }
    }
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
    const attnx_additive_kernels *kt = additive_kernels();

    /* Work items: (group of query rows, chunk of keys), about
     * ITEMS_PER_THREAD per thread and handed out dynamically, so that a
     * thread slowed by other work on its core does not hold up the call.
     * With few rows each row's keys are split too, so that a single query
     * over a long sequence still uses every thread. A score depends on its
     * own key row only: the split changes no bit of the result. */
    size_t max_chunks = (T + MIN_CHUNK_KEYS - 1) / MIN_CHUNK_KEYS;
    double work = (double)total * (double)h * TANH_COST;
    int nt = attnx_pick_threads(num_threads, rows * max_chunks, work);   /* <= total: no overflow */
    size_t group = 1, chunk = T;
    if (nt > 1) {
        size_t target = ITEMS_PER_THREAD * (size_t)nt;
        if (rows >= target) {
            group = rows / target;
        } else {
            size_t split = (target + rows - 1) / rows;
            chunk = (T + split - 1) / split;
            chunk = (chunk + 7) & ~(size_t)7;   /* whole blocks of key rows */
            if (chunk < MIN_CHUNK_KEYS) chunk = MIN_CHUNK_KEYS;
            if (chunk > T) chunk = T;
        }
    } else {
        group = rows;
    }
    const size_t nchunks = (T + chunk - 1) / chunk, ngroups = (rows + group - 1) / group;
    additive_job job = {kt, A, Kp, v, nbatch, batch_shape, a_strides, kp_strides,
                        rows, Lq, T, h, group, chunk, nchunks, scores};
    attnx_parallel_for(nt, ngroups * nchunks, additive_items, &job);
    return ATTNX_OK;
}
