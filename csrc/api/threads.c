/*
 * threads.c -- the thread pool of attnx_threads.h.
 *
 * POSIX: one process-wide pool of detached workers, created on demand (up
 * to the CPUs the process may use, minus the caller) and kept. A job is
 * published under a mutex with a generation number; workers with an index
 * below the job's width wake, take ranges of items with an atomic counter,
 * and the last one out signals the caller, which takes ranges too. One job
 * at a time: a second caller arriving while a job runs computes its own
 * items serially (two callers on a 2-core machine have nothing to gain from
 * sharing). After fork() the child forgets the workers (they do not exist
 * there) and makes new ones when it next needs them.
 */
#if !defined(_WIN32) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE   /* sched_getaffinity, CPU_COUNT */
#endif

#include "attnx_threads.h"

#include <stdlib.h>
#include <string.h>

#if !defined(ATTNX_NO_THREADS)
/* ATTNX_NUM_THREADS or OMP_NUM_THREADS (first entry), or 0. */
static int env_threads(void)
{
    const char *names[2] = {"ATTNX_NUM_THREADS", "OMP_NUM_THREADS"};
    for (int k = 0; k < 2; k++) {
        const char *s = getenv(names[k]);
        if (!s || !*s) continue;
        char *end;
        long v = strtol(s, &end, 10);
        if (end != s && v >= 1) return v > (1L << 20) ? (1 << 20) : (int)v;
    }
    return 0;
}
#endif

#if defined(ATTNX_NO_THREADS)

int attnx_cpu_count(void) { return 1; }
int attnx_default_threads(void) { return 1; }

void attnx_parallel_for(int nt, size_t n, attnx_range_fn fn, void *ctx)
{
    (void)nt;
    if (n) fn(ctx, 0, n);
}

#elif defined(_WIN32)

#include <windows.h>
#ifdef _OPENMP
#include <omp.h>
#endif

int attnx_cpu_count(void)
{
    DWORD_PTR proc, sys;
    int n = 0;
    if (GetProcessAffinityMask(GetCurrentProcess(), &proc, &sys))
        for (; proc; proc &= proc - 1) n++;
    if (n < 1) {
        SYSTEM_INFO si;
        GetSystemInfo(&si);
        n = (int)si.dwNumberOfProcessors;
    }
    return n < 1 ? 1 : n;
}

int attnx_default_threads(void)
{
    static volatile LONG cached = -1;
    LONG e = cached;
    if (e < 0) {
        e = env_threads();
        InterlockedExchange(&cached, e);
    }
    int cpus = attnx_cpu_count();
    return e > 0 && e < cpus ? (int)e : cpus;
}

void attnx_parallel_for(int nt, size_t n, attnx_range_fn fn, void *ctx)
{
#ifdef _OPENMP
    if (nt > 1 && n > 1) {
        long long i, nn = (long long)n;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (i = 0; i < nn; i++) fn(ctx, (size_t)i, (size_t)i + 1);
        return;
    }
#else
    (void)nt;
#endif
    if (n) fn(ctx, 0, n);
}

#else /* POSIX */

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#define MAX_WORKERS 1023

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wake = PTHREAD_COND_INITIALIZER;   /* a new job */
static pthread_cond_t g_done = PTHREAD_COND_INITIALIZER;   /* its workers left */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* All below under g_lock, but g_next (atomic). */
static int g_nworkers;            /* workers alive, indices 0 .. g_nworkers-1 */
static unsigned long g_gen;       /* the current job's number */
static int g_busy;                /* a caller owns the pool */
static int g_width;               /* workers with index < g_width join the job */
static int g_active;              /* of those, still working */
static attnx_range_fn g_fn;
static void *g_ctx;
static size_t g_n, g_grain;
static size_t g_next;             /* first item not handed out */
static int g_env = -1;            /* env_threads(), read once */

static void run_ranges(attnx_range_fn fn, void *ctx, size_t n, size_t grain)
{
    for (;;) {
        size_t b = __atomic_fetch_add(&g_next, grain, __ATOMIC_RELAXED);
        if (b >= n) return;
        fn(ctx, b, n - b < grain ? n : b + grain);
    }
}

typedef struct {
    int index;
    unsigned long seen;
} worker_arg;

static void *worker(void *p)
{
    worker_arg a = *(worker_arg *)p;
    free(p);
    pthread_mutex_lock(&g_lock);
    for (;;) {
        while (a.seen == g_gen) pthread_cond_wait(&g_wake, &g_lock);
        a.seen = g_gen;
        if (a.index >= g_width) continue;
        attnx_range_fn fn = g_fn;
        void *ctx = g_ctx;
        size_t n = g_n, grain = g_grain;
        pthread_mutex_unlock(&g_lock);
        run_ranges(fn, ctx, n, grain);
        pthread_mutex_lock(&g_lock);
        if (--g_active == 0) pthread_cond_signal(&g_done);
    }
    return NULL;
}

/* fork(): hold the lock across it so the child sees a consistent pool, then
 * in the child forget the workers, which fork did not copy. */
static void atfork_prepare(void) { pthread_mutex_lock(&g_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&g_lock); }
static void atfork_child(void)
{
    g_nworkers = 0;
    g_busy = 0;
    g_width = 0;
    g_active = 0;
    pthread_mutex_init(&g_lock, NULL);
    pthread_cond_init(&g_wake, NULL);
    pthread_cond_init(&g_done, NULL);
}

static void init_once(void)
{
    g_env = env_threads();
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

int attnx_cpu_count(void)
{
    int n = 0;
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
#endif
    if (n < 1) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (c > (1L << 20) ? (1 << 20) : (int)c) : 1;
    }
    return n;
}

int attnx_default_threads(void)
{
    pthread_once(&g_once, init_once);
    int cpus = attnx_cpu_count();
    return g_env > 0 && g_env < cpus ? g_env : cpus;
}

/* Start workers until there are `want` (under g_lock); returns how many
 * there are. Workers block every signal: Python's SIGINT must reach the
 * main thread. A failed pthread_create (ulimit -v, RLIMIT_NPROC) leaves
 * fewer workers, never an error. */
static int grow(int want)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    int ok = pthread_attr_init(&attr) == 0;
    if (ok) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (ok && g_nworkers < want) {
        worker_arg *a = (worker_arg *)malloc(sizeof *a);
        pthread_t th;
        if (!a) break;
        a->index = g_nworkers;
        a->seen = g_gen;   /* the job about to be published is new to it */
        if (pthread_create(&th, &attr, worker, a) != 0) {
            free(a);
            break;
        }
        g_nworkers++;
    }
    if (ok) pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return g_nworkers;
}

void attnx_parallel_for(int nt, size_t n, attnx_range_fn fn, void *ctx)
{
    if (n == 0) return;
    if (nt > 1 && n > 1) {
        pthread_once(&g_once, init_once);
        int cpus = attnx_cpu_count();
        if (nt > cpus) nt = cpus;
        if ((size_t)nt > n) nt = (int)n;
        if (nt > MAX_WORKERS + 1) nt = MAX_WORKERS + 1;
    }
    if (nt <= 1 || n <= 1) {
        fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&g_lock);
    if (g_busy) {
        pthread_mutex_unlock(&g_lock);
        fn(ctx, 0, n);
        return;
    }
    int helpers = grow(nt - 1);
    if (helpers > nt - 1) helpers = nt - 1;
    if (helpers == 0) {
        pthread_mutex_unlock(&g_lock);
        fn(ctx, 0, n);
        return;
    }
    size_t grain = n / (4 * (size_t)(helpers + 1));
    g_busy = 1;
    g_fn = fn;
    g_ctx = ctx;
    g_n = n;
    g_grain = grain ? grain : 1;
    __atomic_store_n(&g_next, 0, __ATOMIC_RELAXED);
    g_width = helpers;
    g_active = helpers;
    g_gen++;
    pthread_cond_broadcast(&g_wake);
    pthread_mutex_unlock(&g_lock);

    run_ranges(fn, ctx, n, grain ? grain : 1);

    pthread_mutex_lock(&g_lock);
    while (g_active > 0) pthread_cond_wait(&g_done, &g_lock);
    g_busy = 0;
    pthread_mutex_unlock(&g_lock);
}

#endif
