/*
 * bench_core.c -- times the kernels of every SIMD level side by side in the
 * regimes attnx is built for, and prints each level's time and its speed-up
 * over the portable (scalar) kernels. Single thread unless a line says so.
 * Medians of repeated runs: the machines this runs on are shared.
 *
 *   make -C csrc bench                 everything (needs ~1.1 GiB for "long")
 *   build/bench_core tiny mid rows     only the named regimes
 *
 * Regimes: tiny (attend T=4, d=3), mid (attend T=1024, d=dv=64), long
 * (attend T=2^20, d=dv=64, GB/s against a streaming-sum read of the same
 * bytes), rows (B=8, H=8, Lq=T=512, d=64 batched fused attention, plain and
 * causal), softmax (n=1000 and 10^6), parts (dot_scores, context, exp).
 */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnx.h"
#define HARNESS_NO_CHECK
#include "tests/harness.h"

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#endif

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double *rand_array(size_t n, double amp)
{
    double *a = malloc(n * sizeof(double));
    if (!a) {
        fprintf(stderr, "bench_core: out of memory (%zu doubles)\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) a[i] = amp * urand();
    return a;
}

/* One benchmark case: run(arg) once per call. */
typedef void (*run_fn)(void *arg);

/* Median over `runs` of the time per call of `reps` back-to-back calls. */
static double time_call(run_fn f, void *arg, int reps, int runs)
{
    double t[64];
    if (runs > 64) runs = 64;
    f(arg); /* warm up: caches, page faults, dispatch */
    for (int r = 0; r < runs; r++) {
        double t0 = now();
        for (int i = 0; i < reps; i++) f(arg);
        t[r] = (now() - t0) / reps;
    }
    qsort(t, (size_t)runs, sizeof t[0], cmp_double);
    return t[runs / 2];
}


/* Times f at each level; prints "name  t_level ... (x speed-up vs scalar)". */
static void row(const char *name, const char *unit, double unit_scale, run_fn f, void *arg,
                int reps, int runs, double bytes)
{
    double t[4];
    printf("%-34s", name);
    for (int l = 0; l < g_nlevels; l++) {
        attnx_set_simd_level(g_levels[l]);
        t[l] = time_call(f, arg, reps, runs);
        printf("  %9.3f %s", t[l] * unit_scale, unit);
    }
    double ts = t[g_nlevels - 1]; /* scalar is last */
    printf("  |");
    for (int l = 0; l < g_nlevels - 1; l++) printf(" %s %.2fx", g_levels[l], ts / t[l]);
    if (bytes > 0) printf("  | best %.2f GB/s", bytes / t[0] * 1e-9);
    printf("\n");
    fflush(stdout);
    attnx_set_simd_level("best");
}

/* ------------------------------------------------------------- the cases */

typedef struct {
    const double *q, *K, *V;
    size_t T, d, dv;
    double scale;
    double *ctx, *w;
} attend_case;

static void run_attend(void *p)
{
    attend_case *c = p;
    attnx_attend(c->q, c->K, c->V, c->T, c->d, c->dv, c->scale, NULL, c->ctx, c->w);
}

static void run_dot(void *p)
{
    attend_case *c = p;
    attnx_dot_scores(c->q, c->K, c->T, c->d, c->scale, c->w);
}

static void run_context(void *p)
{
    attend_case *c = p;
    attnx_context(c->w, c->V, c->T, c->dv, c->ctx);
}

typedef struct {
    const double *x;
    double *y;
    size_t n;
} vec_case;

static void run_softmax(void *p)
{
    vec_case *c = p;
    attnx_softmax(c->x, c->n, c->y);
}

static void run_exp(void *p)
{
    vec_case *c = p;
    attnx_exp(c->x, c->n, c->y);
}

typedef struct {
    const double *Q, *K, *V;
    size_t B, H, Lq, T, d;
    int causal, threads;
    double *ctx;
} rows_case;

static void run_rows(void *p)
{
    rows_case *c = p;
    size_t shape[2] = {c->B, c->H};
    ptrdiff_t qs[2] = {(ptrdiff_t)(c->H * c->Lq * c->d), (ptrdiff_t)(c->Lq * c->d)};
    ptrdiff_t ks[2] = {(ptrdiff_t)(c->H * c->T * c->d), (ptrdiff_t)(c->T * c->d)};
    attnx_attend_batch(c->Q, c->K, c->V, 2, shape, qs, ks, ks, c->Lq, c->T, c->d, c->d,
                       1.0 / sqrt((double)c->d), NULL, NULL, 0, c->causal, c->ctx, NULL, c->threads);
}

/* Sum of n doubles with eight independent SSE2 accumulators (baseline
 * x86-64; plain C elsewhere): the read bandwidth one core can reach, to
 * compare the long attend against. */
static volatile double g_sink;
static void run_stream(void *p)
{
    vec_case *c = p;
    const double *x = c->x;
#if defined(__SSE2__) || defined(_M_X64)
    __m128d a[8];
    for (int k = 0; k < 8; k++) a[k] = _mm_setzero_pd();
    for (size_t i = 0; i + 16 <= c->n; i += 16)
        for (int k = 0; k < 8; k++) a[k] = _mm_add_pd(a[k], _mm_loadu_pd(x + i + 2 * k));
    for (int k = 1; k < 8; k++) a[0] = _mm_add_pd(a[0], a[k]);
    g_sink = _mm_cvtsd_f64(a[0]) + _mm_cvtsd_f64(_mm_unpackhi_pd(a[0], a[0]));
#else
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t i = 0; i + 4 <= c->n; i += 4) {
        a0 += x[i];
        a1 += x[i + 1];
        a2 += x[i + 2];
        a3 += x[i + 3];
    }
    g_sink = a0 + a1 + a2 + a3;
#endif
}

int main(int argc, char **argv)
{
    bench_levels();
    printf("attnx bench_core; levels %s; build: %s\n", attnx_simd_available(), attnx_build_info());
    printf("%-34s", "case");
    for (int l = 0; l < g_nlevels; l++) printf("  %12s", g_levels[l]);
    printf("  | speed-up over scalar\n");

    if (wanted(argc, argv, "tiny")) {
        const double q[3] = {5, 1, 20};
        const double K[12] = {3, 12, 45, 59, 2, 5, 1, 43, 5, 4, 3, 45.3};
        double ctx[3], w[4];
        attend_case c = {q, K, K, 4, 3, 3, 1.0, ctx, NULL};
        row("attend fused T=4 d=3", "ns", 1e9, run_attend, &c, 200000, 15, 0);
        c.w = w;
        row("attend +weights T=4 d=3", "ns", 1e9, run_attend, &c, 200000, 15, 0);
    }
    if (wanted(argc, argv, "mid")) {
        size_t T = 1024, d = 64;
        double *q = rand_array(d, 1.0), *K = rand_array(T * d, 1.0), *V = rand_array(T * d, 1.0);
        double *ctx = malloc(d * sizeof(double)), *w = malloc(T * sizeof(double));
        attend_case c = {q, K, V, T, d, d, 0.125, ctx, NULL};
        row("attend fused T=1024 d=64", "us", 1e6, run_attend, &c, 2000, 15, 16.0 * T * d);
        c.w = w;
        row("attend +weights T=1024 d=64", "us", 1e6, run_attend, &c, 2000, 15, 16.0 * T * d);
        free(q); free(K); free(V); free(ctx); free(w);
    }
    if (wanted(argc, argv, "long")) {
        size_t T = (size_t)1 << 20, d = 64;
        double *q = rand_array(d, 1.0), *K = rand_array(T * d, 1.0), *V = rand_array(T * d, 1.0);
        double *ctx = malloc(d * sizeof(double));
        vec_case sk = {K, NULL, T * d}, sv = {V, NULL, T * d};
        double tk = time_call(run_stream, &sk, 1, 7), tv = time_call(run_stream, &sv, 1, 7);
        double bytes = 16.0 * (double)T * (double)d;
        printf("%-34s  %9.3f ms  (%.2f GB/s single-thread read)\n", "stream sum over K and V (1 GiB)",
               (tk + tv) * 1e3, bytes / (tk + tv) * 1e-9);
        attend_case c = {q, K, V, T, d, d, 0.125, ctx, NULL};
        row("attend fused T=2^20 d=64 (1 GiB)", "ms", 1e3, run_attend, &c, 1, 7, bytes);
        free(q); free(K); free(V); free(ctx);
    }
    if (wanted(argc, argv, "rows")) {
        size_t B = 8, H = 8, L = 512, d = 64;
        double *Q = rand_array(B * H * L * d, 1.0), *K = rand_array(B * H * L * d, 1.0);
        double *V = rand_array(B * H * L * d, 1.0), *ctx = malloc(B * H * L * d * sizeof(double));
        rows_case c = {Q, K, V, B, H, L, L, d, 0, 1, ctx};
        double flops = 4.0 * B * H * L * L * d;
        row("rows B8 H8 L512 d64, 1 thread", "ms", 1e3, run_rows, &c, 1, 5, 0);
        printf("%-34s  (%.2f GFLOP per call)\n", "", flops * 1e-9);
        c.causal = 1;
        row("rows ... causal, 1 thread", "ms", 1e3, run_rows, &c, 1, 5, 0);
        c.causal = 0;
        c.threads = 2;
        row("rows B8 H8 L512 d64, 2 threads", "ms", 1e3, run_rows, &c, 1, 5, 0);
        c.Lq = 1;
        c.threads = 1;
        row("rows Lq=1 T=512 x64 heads (decode)", "us", 1e6, run_rows, &c, 20, 9, 0);
        free(Q); free(K); free(V); free(ctx);
    }
    if (wanted(argc, argv, "softmax")) {
        size_t n = 1000000;
        double *x = rand_array(n, 500.0), *y = malloc(n * sizeof(double));
        vec_case c = {x, y, 1000};
        row("softmax n=1000", "us", 1e6, run_softmax, &c, 2000, 15, 0);
        c.n = n;
        row("softmax n=10^6", "ms", 1e3, run_softmax, &c, 5, 9, 0);
        free(x); free(y);
    }
    if (wanted(argc, argv, "parts")) {
        size_t T = 1024, d = 64, n = 100000;
        double *q = rand_array(d, 1.0), *K = rand_array(T * d, 1.0), *V = rand_array(T * d, 1.0);
        double *ctx = malloc(d * sizeof(double)), *w = rand_array(T, 1.0);
        attend_case c = {q, K, V, T, d, d, 0.125, ctx, w};
        row("dot_scores T=1024 d=64", "us", 1e6, run_dot, &c, 2000, 15, 0);
        row("context T=1024 dv=64", "us", 1e6, run_context, &c, 2000, 15, 0);
        double *x = rand_array(n, 700.0), *y = malloc(n * sizeof(double));
        vec_case e = {x, y, n};
        row("exp n=10^5", "us", 1e6, run_exp, &e, 50, 15, 0);
        free(q); free(K); free(V); free(ctx); free(w); free(x); free(y);
    }
    return 0;
}
