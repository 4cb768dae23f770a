/*
 * attnx_threads.h -- attnx's own thread pool: the one way the entry points
 * run work items in parallel. Internal; never installed.
 *
 * Why not OpenMP: libgomp is not fork-safe (a child of a process that used
 * its pool blocks forever in its first parallel region: every
 * multiprocessing.Pool on Linux), it starts as many threads as it is asked
 * for (num_threads=10**6 started 15,626), and Apple's compiler has none.
 * This pool is POSIX threads with a pthread_atfork handler that forgets the
 * workers in the child (they are re-created on demand), never runs more
 * threads than the CPUs this process may use (its affinity mask), and, when
 * a thread cannot be created, runs with fewer. Windows, which has no fork,
 * keeps OpenMP (or runs serially without it); -DATTNX_NO_THREADS builds a
 * serial library (the fuzzer's, whose runs must repeat exactly).
 *
 * Items are handed out dynamically, so who computes an item depends on
 * timing; callers make every item's result independent of that, so results
 * depend only on how the work is cut into items.
 */
#ifndef ATTNX_THREADS_H
#define ATTNX_THREADS_H

#include <stddef.h>

/* Items [begin, end) of a job, with the job's context. */
typedef void (*attnx_range_fn)(void *ctx, size_t begin, size_t end);

/* Run fn over the items [0, n) on at most nt threads (the caller is one of
 * them), in ranges of about n / (4 nt) items handed out as threads come
 * free, and return when all are done. nt <= 1, n <= 1, or a pool busy with
 * another caller's job: the caller runs fn(ctx, 0, n) itself. */
void attnx_parallel_for(int nt, size_t n, attnx_range_fn fn, void *ctx);

/* CPUs this process may run on now (its affinity mask), at least 1. */
int attnx_cpu_count(void);

/* Threads a call with num_threads == 0 uses: ATTNX_NUM_THREADS, else
 * OMP_NUM_THREADS (its first entry), read once; else attnx_cpu_count().
 * Never more than attnx_cpu_count(). */
int attnx_default_threads(void);

#endif /* ATTNX_THREADS_H */
