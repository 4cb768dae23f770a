/*
 * attnx_api_util.h -- argument arithmetic shared by the entry-point files
 * (api.c, api_f32.c, api_additive.c, api_log_softmax.c): checked size
 * products, batch shapes and offsets, the memory a strided operand spans, and
 * how many threads a call gets. Internal; every helper is static inline.
 */
#ifndef ATTNX_API_UTIL_H
#define ATTNX_API_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "attnx_internal.h"
#include "attnx_threads.h"

/* Below this many multiply-adds a call stays on one thread: waking a team
 * costs a few microseconds. */
#define ATTNX_MIN_WORK_PER_THREAD ((double)(1 << 16))

/* r = a * b, a count of elements of esize bytes whose byte size still fits
 * in size_t; 0 on overflow. */
static inline int attnx_elems(size_t a, size_t b, size_t esize, size_t *r)
{
    if (a != 0 && b > SIZE_MAX / esize / a) return 0;
    *r = a * b;
    return 1;
}

/* Product of a batch shape into *count, or a status. */
static inline int attnx_batch_count(size_t nbatch, const size_t *shape, size_t *count)
{
    size_t c = 1;
    if (nbatch > ATTNX_MAX_BATCH_DIMS) return ATTNX_ERR_ARG;
    if (nbatch && !shape) return ATTNX_ERR_NULL;
    for (size_t i = 0; i < nbatch; i++)
        if (!attnx_elems(c, shape[i], sizeof(double), &c)) return ATTNX_ERR_OVERFLOW;
    *count = c;
    return ATTNX_OK;
}

/* Element offset of flat batch item b (C order) for one operand's strides. */
static inline ptrdiff_t attnx_batch_offset(size_t nbatch, const size_t *shape,
                                           const ptrdiff_t *strides, size_t b)
{
    ptrdiff_t off = 0;
    for (size_t i = nbatch; i-- > 0;) {
        size_t n = shape[i];
        off += (ptrdiff_t)(b % n) * strides[i];
        b /= n;
    }
    return off;
}

/* Does [p, p + nbytes) overlap the memory a batched operand spans? The
 * operand: items of `item` bytes at base + the batch offsets of its strides
 * (elements of `esize` bytes; 0 or negative allowed). Computed in unsigned
 * arithmetic: absurd strides wrap instead of overflowing. */
static inline int attnx_overlaps_batched(const void *p, size_t nbytes, const void *base,
                                         size_t esize, size_t nbatch, const size_t *shape,
                                         const ptrdiff_t *strides, size_t item)
{
    uintptr_t lo = (uintptr_t)base, hi = (uintptr_t)base + item;
    for (size_t i = 0; i < nbatch; i++) {
        uintptr_t s = (uintptr_t)strides[i], n = (uintptr_t)(shape[i] - 1);
        if (strides[i] < 0) lo -= n * (0 - s) * esize;
        else hi += n * s * esize;
    }
    return attnx_overlap(p, nbytes, (const void *)lo, item ? hi - lo : 0);
}

/* The bytes one batch item of a mask spans: Lq rows of T bytes,
 * row_stride apart (0 shares one row; negative runs backwards). *first is
 * the lowest byte of the item at mask. */
static inline size_t attnx_mask_span(const unsigned char *mask, ptrdiff_t row_stride, size_t Lq,
                                     size_t T, const void **first)
{
    uintptr_t step = row_stride < 0 ? 0 - (uintptr_t)row_stride : (uintptr_t)row_stride;
    size_t back = Lq ? (Lq - 1) * step : 0;
    *first = row_stride < 0 ? (const void *)((uintptr_t)mask - back) : (const void *)mask;
    return back + T;
}

/* Threads for a call: the request (0 = attnx_default_threads()), capped by
 * the CPUs this process may use, by the number of independent items and by
 * the amount of work. Asks the OS nothing for a call too small to split. */
static inline int attnx_pick_threads(int requested, size_t items, double work)
{
    double by_work = work / ATTNX_MIN_WORK_PER_THREAD;
    if (requested == 1 || items < 2 || by_work < 2.0) return 1;
    int nt = requested == 0 ? attnx_default_threads() : requested;
    int cpus = attnx_cpu_count();
    if (nt > cpus) nt = cpus;
    if (by_work < nt) nt = (int)by_work;
    if ((size_t)nt > items) nt = (int)items;
    return nt < 1 ? 1 : nt;
}

#endif /* ATTNX_API_UTIL_H */
