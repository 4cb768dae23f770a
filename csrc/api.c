/*
 * api.c -- the public entry points of attnx.h: argument checks, batching,
 * threads, and the calls through the dispatch table. Kernels never see an
 * argument this file has not validated.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "attnx_api_util.h"

/* The Python build writes the compiler and flags into a generated header. */
#if defined(ATTNX_HAVE_BUILD_INFO_H)
#include "attnx_build_info.h"
#endif
#ifndef ATTNX_BUILD_INFO
#define ATTNX_BUILD_INFO "C library build (" __DATE__ ")"
#endif

/* Below this many multiply-adds a call stays on one thread: waking a team
 * costs a few microseconds. */
/* A single query is split across threads (flash-decoding) from this many keys. */
#define MIN_SPLIT_KEYS 4096

const char *attnx_strerror(int status)
{
    switch (status) {
    case ATTNX_OK: return "success";
    case ATTNX_ERR_NULL: return "a required pointer is NULL";
    case ATTNX_ERR_EMPTY: return "the key sequence is empty (T == 0)";
    case ATTNX_ERR_OVERFLOW: return "array sizes overflow size_t";
    case ATTNX_ERR_OVERLAP: return "an output overlaps an input";
    case ATTNX_ERR_NOMEM: return "out of memory";
    case ATTNX_ERR_ARG: return "invalid argument";
    case ATTNX_ERR_UNSUPPORTED: return "SIMD level not supported on this CPU or build";
    default: return "unknown attnx status";
    }
}

const char *attnx_build_info(void) { return ATTNX_BUILD_INFO; }

int attnx_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 0;
#endif
}

/* r = a * b as a count of doubles whose byte size fits in size_t. */
static int elems(size_t a, size_t b, size_t *r) { return attnx_elems(a, b, sizeof(double), r); }

static int overlaps(const double *a, size_t na, const void *b, size_t nb_bytes)
{
    return attnx_overlap(a, na * sizeof(double), b, nb_bytes);
}

static void fill(double *y, size_t n, double v)
{
    for (size_t i = 0; i < n; i++) y[i] = v;
}

/* ---------------------------------------------------------------- kernels */

/* ctx = acc / l, or zeros when nothing was attended, or NaN when poisoned. */
static void online_finish(const attnx_online *st, double *acc, size_t dv)
{
    if (st->l != st->l) {
        fill(acc, dv, NAN);
    } else if (st->m == -INFINITY) {
        fill(acc, dv, 0.0);
    } else {
        double l = st->l;
        for (size_t j = 0; j < dv; j++) acc[j] /= l;
    }
}

static void attend_fused(const attnx_kernels *kt, const double *q, const double *K,
                         const double *V, size_t T, size_t d, size_t dv, double scale,
                         const unsigned char *mask, double *ctx)
{
    attnx_online st = {-INFINITY, 0.0};
    fill(ctx, dv, 0.0);
    kt->attend_online(q, K, V, T, d, dv, scale, mask, &st, ctx);
    online_finish(&st, ctx, dv);
}

/* Scores of the keys the mask lets through, in runs of consecutive keys, so
 * that masked rows are never read; masked scores are -inf. */
static void masked_scores(const attnx_kernels *kt, const double *q, const double *K,
                          size_t T, size_t d, double scale, const unsigned char *mask,
                          double *s)
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
static void attend_two_pass(const attnx_kernels *kt, const double *q, const double *K,
                            const double *V, size_t T, size_t d, size_t dv, double scale,
                            const unsigned char *mask, double *ctx, double *w)
{
    masked_scores(kt, q, K, T, d, scale, mask, w);
    if (kt->softmax(w, T, w)) {        /* nothing to attend to */
        fill(w, T, 0.0);
        fill(ctx, dv, 0.0);
        return;
    }
    if (w[0] != w[0]) {                /* a NaN row is all NaN, masked keys too: */
        fill(ctx, dv, NAN);            /* the context is NaN, and masked value */
        return;                        /* rows stay unread */
    }
    kt->context(w, V, T, dv, ctx);
}

/* Queries [q0, q0 + nq) of one batch item: Q, ctx, w and mask point at row q0. */
static void attend_rows(const attnx_kernels *kt, const double *Q, size_t nq, size_t q0,
                        const double *K, const double *V, size_t T, size_t d, size_t dv,
                        double scale, const unsigned char *mask, ptrdiff_t mask_row_stride,
                        int causal, double *ctx, double *w)
{
    if (!w && kt->attend_rows) {
        kt->attend_rows(Q, nq, q0, K, V, T, d, dv, scale, mask, mask_row_stride, causal, ctx);
        return;
    }
    for (size_t r = 0; r < nq; r++) {
        size_t lim = causal && q0 + r + 1 < T ? q0 + r + 1 : T;
        const unsigned char *mr = mask ? mask + (ptrdiff_t)r * mask_row_stride : NULL;
        if (w) {
            attend_two_pass(kt, Q + r * d, K, V, lim, d, dv, scale, mr, ctx + r * dv, w + r * T);
            fill(w + r * T + lim, T - lim, 0.0);
        } else {
            attend_fused(kt, Q + r * d, K, V, lim, d, dv, scale, mr, ctx + r * dv);
        }
    }
}

/* ------------------------------------------------------------ single query */

int attnx_dot_scores(const double *q, const double *K, size_t T, size_t d,
                     double scale, double *scores)
{
    size_t Td;
    if (!q || !K || !scores) return ATTNX_ERR_NULL;
    if (!elems(T, d, &Td) || !elems(T, 1, &T)) return ATTNX_ERR_OVERFLOW;
    if (overlaps(scores, T, q, d * sizeof(double)) || overlaps(scores, T, K, Td * sizeof(double)))
        return ATTNX_ERR_OVERLAP;
    attnx_kernels_get()->dot_scores(q, K, T, d, scale, scores);
    return ATTNX_OK;
}

int attnx_softmax(const double *x, size_t n, double *y)
{
    if (!x || !y) return ATTNX_ERR_NULL;
    if (!elems(n, 1, &n)) return ATTNX_ERR_OVERFLOW;
    if (x != y && overlaps(y, n, x, n * sizeof(double))) return ATTNX_ERR_OVERLAP;
    if (n) attnx_kernels_get()->softmax(x, n, y);
    return ATTNX_OK;
}

int attnx_context(const double *w, const double *V, size_t T, size_t dv, double *ctx)
{
    size_t Tdv;
    if (!w || !V || !ctx) return ATTNX_ERR_NULL;
    if (!elems(T, dv, &Tdv) || !elems(T, 1, &T)) return ATTNX_ERR_OVERFLOW;
    if (overlaps(ctx, dv, w, T * sizeof(double)) || overlaps(ctx, dv, V, Tdv * sizeof(double)))
        return ATTNX_ERR_OVERLAP;
    attnx_kernels_get()->context(w, V, T, dv, ctx);
    return ATTNX_OK;
}

int attnx_attend(const double *q, const double *K, const double *V,
                 size_t T, size_t d, size_t dv, double scale,
                 const unsigned char *mask, double *ctx, double *weights)
{
    size_t Td, Tdv, T1;
    if (!q || !K || !V || !ctx) return ATTNX_ERR_NULL;
    if (T == 0) return ATTNX_ERR_EMPTY;
    /* T itself too: with d == dv == 0 no product catches a T no weights fit */
    if (!elems(T, d, &Td) || !elems(T, dv, &Tdv) || !elems(T, 1, &T1)) return ATTNX_ERR_OVERFLOW;
    const size_t qb = d * sizeof(double), Kb = Td * sizeof(double), Vb = Tdv * sizeof(double);
    if (overlaps(ctx, dv, q, qb) || overlaps(ctx, dv, K, Kb) || overlaps(ctx, dv, V, Vb) ||
        (mask && overlaps(ctx, dv, mask, T)))
        return ATTNX_ERR_OVERLAP;
    if (weights &&
        (overlaps(weights, T, q, qb) || overlaps(weights, T, K, Kb) || overlaps(weights, T, V, Vb) ||
         overlaps(weights, T, ctx, dv * sizeof(double)) || (mask && overlaps(weights, T, mask, T))))
        return ATTNX_ERR_OVERLAP;
    const attnx_kernels *kt = attnx_kernels_get();
    if (weights)
        attend_two_pass(kt, q, K, V, T, d, dv, scale, mask, ctx, weights);
    else
        attend_fused(kt, q, K, V, T, d, dv, scale, mask, ctx);
    return ATTNX_OK;
}

int attnx_exp(const double *x, size_t n, double *y)
{
    if (!x || !y) return ATTNX_ERR_NULL;
    if (!elems(n, 1, &n)) return ATTNX_ERR_OVERFLOW;
    if (x != y && overlaps(y, n, x, n * sizeof(double))) return ATTNX_ERR_OVERLAP;
    attnx_kernels_get()->exp(x, n, y);
    return ATTNX_OK;
}

/* ----------------------------------------------------------------- batches */

int attnx_dot_scores_batch(const double *Q, const double *K,
                           size_t nbatch, const size_t *batch_shape,
                           const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                           size_t Lq, size_t T, size_t d, double scale,
                           double *scores, int num_threads)
{
    size_t count, rows, tmp;
    int rc;
    if (!Q || !K || !scores) return ATTNX_ERR_NULL;
    if (num_threads < 0) return ATTNX_ERR_ARG;
    if ((rc = attnx_batch_count(nbatch, batch_shape, &count)) != ATTNX_OK) return rc;
    if (nbatch && (!q_strides || !k_strides)) return ATTNX_ERR_NULL;
    if (!elems(count, Lq, &rows) || !elems(rows, T, &tmp) || !elems(Lq, d, &tmp) || !elems(T, d, &tmp))
        return ATTNX_ERR_OVERFLOW;
    if (count && (attnx_overlaps_batched(scores, rows * T * sizeof(double), Q, sizeof(double), nbatch,
                                   batch_shape, q_strides, Lq * d * sizeof(double)) ||
                  attnx_overlaps_batched(scores, rows * T * sizeof(double), K, sizeof(double), nbatch,
                                   batch_shape, k_strides, T * d * sizeof(double))))
        return ATTNX_ERR_OVERLAP;
    const attnx_kernels *kt = attnx_kernels_get();
    int nt = attnx_pick_threads(num_threads, rows, (double)rows * T * (d + 1));
    long long nrows = (long long)rows, i;
    (void)nt; /* unused without OpenMP */
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (i = 0; i < nrows; i++) {
        size_t b = (size_t)i / Lq, r = (size_t)i % Lq;
        const double *qb = Q + (nbatch ? attnx_batch_offset(nbatch, batch_shape, q_strides, b) : 0);
        const double *kb = K + (nbatch ? attnx_batch_offset(nbatch, batch_shape, k_strides, b) : 0);
        kt->dot_scores(qb + r * d, kb, T, d, scale, scores + (size_t)i * T);
    }
    return ATTNX_OK;
}

int attnx_softmax_rows(const double *x, size_t rows, size_t n, double *y, int num_threads)
{
    size_t total;
    if (!x || !y) return ATTNX_ERR_NULL;
    if (num_threads < 0) return ATTNX_ERR_ARG;
    if (!elems(rows, n, &total)) return ATTNX_ERR_OVERFLOW;
    if (x != y && overlaps(y, total, x, total * sizeof(double))) return ATTNX_ERR_OVERLAP;
    if (n == 0) return ATTNX_OK;
    const attnx_kernels *kt = attnx_kernels_get();
    int nt = attnx_pick_threads(num_threads, rows, (double)total * 8);
    long long nr = (long long)rows, i;
    (void)nt; /* unused without OpenMP */
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (i = 0; i < nr; i++) kt->softmax(x + (size_t)i * n, n, y + (size_t)i * n);
    return ATTNX_OK;
}

int attnx_context_batch(const double *W, const double *V,
                        size_t nbatch, const size_t *batch_shape,
                        const ptrdiff_t *w_strides, const ptrdiff_t *v_strides,
                        size_t Lq, size_t T, size_t dv, double *ctx, int num_threads)
{
    size_t count, rows, tmp;
    int rc;
    if (!W || !V || !ctx) return ATTNX_ERR_NULL;
    if (num_threads < 0) return ATTNX_ERR_ARG;
    if ((rc = attnx_batch_count(nbatch, batch_shape, &count)) != ATTNX_OK) return rc;
    if (nbatch && (!w_strides || !v_strides)) return ATTNX_ERR_NULL;
    if (!elems(count, Lq, &rows) || !elems(rows, dv, &tmp) || !elems(Lq, T, &tmp) || !elems(T, dv, &tmp))
        return ATTNX_ERR_OVERFLOW;
    if (count && (attnx_overlaps_batched(ctx, rows * dv * sizeof(double), W, sizeof(double), nbatch,
                                   batch_shape, w_strides, Lq * T * sizeof(double)) ||
                  attnx_overlaps_batched(ctx, rows * dv * sizeof(double), V, sizeof(double), nbatch,
                                   batch_shape, v_strides, T * dv * sizeof(double))))
        return ATTNX_ERR_OVERLAP;
    const attnx_kernels *kt = attnx_kernels_get();
    int nt = attnx_pick_threads(num_threads, rows, (double)rows * T * (dv + 1));
    long long nrows = (long long)rows, i;
    (void)nt; /* unused without OpenMP */
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (i = 0; i < nrows; i++) {
        size_t b = (size_t)i / Lq, r = (size_t)i % Lq;
        const double *wb = W + (nbatch ? attnx_batch_offset(nbatch, batch_shape, w_strides, b) : 0);
        const double *vb = V + (nbatch ? attnx_batch_offset(nbatch, batch_shape, v_strides, b) : 0);
        kt->context(wb + r * T, vb, T, dv, ctx + (size_t)i * dv);
    }
    return ATTNX_OK;
}

/* One query over a long key sequence, split into nt chunks folded in
 * parallel, then merged: each chunk's (m, l, acc) is rescaled to the global
 * max. Allocates nt * (dv + 2) doubles. */
static int attend_split(const attnx_kernels *kt, const double *q, const double *K,
                        const double *V, size_t T, size_t d, size_t dv, double scale,
                        const unsigned char *mask, double *ctx, int nt)
{
    size_t chunk = (T + (size_t)nt - 1) / (size_t)nt;
    double *acc = (double *)malloc((size_t)nt * (dv ? dv : 1) * sizeof(double));
    attnx_online *st = (attnx_online *)malloc((size_t)nt * sizeof(attnx_online));
    if (!acc || !st) {
        free(acc);
        free(st);
        return ATTNX_ERR_NOMEM;
    }
    long long p;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (p = 0; p < nt; p++) {
        size_t t0 = (size_t)p * chunk, t1 = t0 + chunk < T ? t0 + chunk : T;
        double *a = acc + (size_t)p * dv;
        st[p].m = -INFINITY;
        st[p].l = 0.0;
        fill(a, dv, 0.0);
        if (t0 < t1)
            kt->attend_online(q, K + t0 * d, V + t0 * dv, t1 - t0, d, dv, scale,
                              mask ? mask + t0 : NULL, &st[p], a);
    }
    attnx_online tot = {-INFINITY, 0.0};
    for (p = 0; p < nt; p++) {
        if (st[p].l != st[p].l) tot.l = NAN;
        if (st[p].m > tot.m) tot.m = st[p].m;
    }
    fill(ctx, dv, 0.0);
    if (tot.m != -INFINITY && tot.l == tot.l) {
        for (p = 0; p < nt; p++) {
            if (st[p].m == -INFINITY) continue;
            double c = attnx_exp_diff_scalar(st[p].m, tot.m);
            if (c == 0.0) continue;
            tot.l += st[p].l * c;
            const double *a = acc + (size_t)p * dv;
            for (size_t j = 0; j < dv; j++) ctx[j] += a[j] * c;
        }
    }
    online_finish(&tot, ctx, dv);
    free(acc);
    free(st);
    return ATTNX_OK;
}

int attnx_attend_batch(const double *Q, const double *K, const double *V,
                       size_t nbatch, const size_t *batch_shape,
                       const ptrdiff_t *q_strides, const ptrdiff_t *k_strides,
                       const ptrdiff_t *v_strides,
                       size_t Lq, size_t T, size_t d, size_t dv, double scale,
                       const unsigned char *mask, const ptrdiff_t *mask_strides,
                       ptrdiff_t mask_row_stride, int causal,
                       double *ctx, double *weights, int num_threads)
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
    if (rows == 0) return ATTNX_OK;
    {
        const size_t cb = rows * dv * sizeof(double), wb = weights ? rows * T * sizeof(double) : 0;
        const size_t qi = Lq * d * sizeof(double), ki = T * d * sizeof(double), vi = T * dv * sizeof(double);
        /* a mask item: Lq rows of T bytes, mask_row_stride apart */
        uintptr_t mrow = mask_row_stride < 0 ? 0 - (uintptr_t)mask_row_stride : (uintptr_t)mask_row_stride;
        size_t mi = (Lq - 1) * mrow + T;
        const void *m0 = mask_row_stride < 0 ? (const void *)((uintptr_t)mask - (Lq - 1) * mrow) : mask;
        if (attnx_overlaps_batched(ctx, cb, Q, sizeof(double), nbatch, batch_shape, q_strides, qi) ||
            attnx_overlaps_batched(ctx, cb, K, sizeof(double), nbatch, batch_shape, k_strides, ki) ||
            attnx_overlaps_batched(ctx, cb, V, sizeof(double), nbatch, batch_shape, v_strides, vi) ||
            (mask && attnx_overlaps_batched(ctx, cb, m0, 1, nbatch, batch_shape, mask_strides, mi)) ||
            attnx_overlap(weights, wb, ctx, cb) ||
            attnx_overlaps_batched(weights, wb, Q, sizeof(double), nbatch, batch_shape, q_strides, qi) ||
            attnx_overlaps_batched(weights, wb, K, sizeof(double), nbatch, batch_shape, k_strides, ki) ||
            attnx_overlaps_batched(weights, wb, V, sizeof(double), nbatch, batch_shape, v_strides, vi) ||
            (mask && attnx_overlaps_batched(weights, wb, m0, 1, nbatch, batch_shape, mask_strides, mi)))
            return ATTNX_ERR_OVERLAP;
    }
    const attnx_kernels *kt = attnx_kernels_get();
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
    long long nitems = (long long)(count * nchunks), it;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(dynamic, 1)
    for (it = 0; it < nitems; it++) {
        size_t b = (size_t)it / nchunks, i0 = ((size_t)it % nchunks) * chunk;
        size_t nq = Lq - i0 < chunk ? Lq - i0 : chunk;
        const double *qb = Q, *kb = K, *vb = V;
        const unsigned char *mb = mask;
        if (nbatch) {
            qb += attnx_batch_offset(nbatch, batch_shape, q_strides, b);
            kb += attnx_batch_offset(nbatch, batch_shape, k_strides, b);
            vb += attnx_batch_offset(nbatch, batch_shape, v_strides, b);
            if (mb) mb += attnx_batch_offset(nbatch, batch_shape, mask_strides, b);
        }
        if (mb) mb += (ptrdiff_t)i0 * mask_row_stride;
        size_t row = b * Lq + i0;
        attend_rows(kt, qb + i0 * d, nq, i0, kb, vb, T, d, dv, scale, mb, mask_row_stride,
                    causal, ctx + row * dv, weights ? weights + row * T : NULL);
    }
    return ATTNX_OK;
}
