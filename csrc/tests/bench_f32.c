/*
 * bench_f32.c -- float32 against float64, side by side, at every SIMD
 * level: the same shapes, the float64 inputs rounded to float. Prints each
 * level's float64 time, float32 time and the speed-up. Single thread
 * unless a line says so; medians of repeated runs (the machines are
 * shared). Not built by the Makefile (its bench target builds bench_core);
 * by hand, after `make -C csrc BUILD=/tmp/b`:
 *
 *   cc -O2 -pthread -Icsrc csrc/tests/bench_f32.c /tmp/b/libattnx.a -lm -o /tmp/b/bench_f32
 *   /tmp/b/bench_f32 [mid long rows softmax parts]
 *
 * Regimes: mid (attend T=1024, d=dv=64, fused and with weights), long
 * (attend T=2^20, d=dv=64: 1 GiB of K and V in float64, 0.5 GiB in
 * float32), rows (B=8, H=8, Lq=T=512, d=64 batched fused attention: plain,
 * causal, 2 threads, and a decode step Lq=1), softmax (n=1000, 10^6, and
 * log-softmax 10^6), parts (dot_scores, context).
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

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "bench_f32: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* n random doubles in [-amp, amp) and the same values as floats. */
typedef struct {
    double *d;
    float *f;
} pair;

static pair rand_pair(size_t n, double amp)
{
    pair p = {xmalloc(n * sizeof(double)), xmalloc(n * sizeof(float))};
    for (size_t i = 0; i < n; i++) {
        p.f[i] = (float)(amp * urand());
        p.d[i] = p.f[i];
    }
    return p;
}

static pair out_pair(size_t n)
{
    pair p = {xmalloc(n * sizeof(double)), xmalloc(n * sizeof(float))};
    memset(p.d, 0, n * sizeof(double));
    memset(p.f, 0, n * sizeof(float));
    return p;
}

static void free_pair(pair p)
{
    free(p.d);
    free(p.f);
}

typedef void (*run_fn)(void *arg, int f32);

/* Median over `runs` of the time per call of `reps` back-to-back calls. */
static double time_call(run_fn f, void *arg, int f32, int reps, int runs)
{
    double t[64];
    if (runs > 64) runs = 64;
    f(arg, f32); /* warm up: caches, page faults, dispatch */
    for (int r = 0; r < runs; r++) {
        double t0 = now();
        for (int i = 0; i < reps; i++) f(arg, f32);
        t[r] = (now() - t0) / reps;
    }
    qsort(t, (size_t)runs, sizeof t[0], cmp_double);
    return t[runs / 2];
}


/* One line: per level "f64 / f32 (speed-up)". */
static void row(const char *name, const char *unit, double unit_scale, run_fn f, void *arg, int reps,
                int runs)
{
    printf("%-32s", name);
    for (int l = 0; l < g_nlevels; l++) {
        attnx_set_simd_level(g_levels[l]);
        double t64 = time_call(f, arg, 0, reps, runs), t32 = time_call(f, arg, 1, reps, runs);
        printf("  %8.3f / %8.3f %s (%.2fx)", t64 * unit_scale, t32 * unit_scale, unit, t64 / t32);
    }
    printf("\n");
    fflush(stdout);
    attnx_set_simd_level("best");
}

/* ------------------------------------------------------------- the cases */

typedef struct {
    pair q, K, V, ctx, w;
    size_t T, d, dv;
    int weights;
} attend_case;

static void run_attend(void *p, int f32)
{
    attend_case *c = p;
    if (f32)
        attnx_attend_f32(c->q.f, c->K.f, c->V.f, c->T, c->d, c->dv, 0.125f, NULL, c->ctx.f,
                         c->weights ? c->w.f : NULL);
    else
        attnx_attend(c->q.d, c->K.d, c->V.d, c->T, c->d, c->dv, 0.125, NULL, c->ctx.d,
                     c->weights ? c->w.d : NULL);
}

static void run_dot(void *p, int f32)
{
    attend_case *c = p;
    if (f32)
        attnx_dot_scores_f32(c->q.f, c->K.f, c->T, c->d, 0.125f, c->w.f);
    else
        attnx_dot_scores(c->q.d, c->K.d, c->T, c->d, 0.125, c->w.d);
}

static void run_context(void *p, int f32)
{
    attend_case *c = p;
    if (f32)
        attnx_context_f32(c->w.f, c->V.f, c->T, c->dv, c->ctx.f);
    else
        attnx_context(c->w.d, c->V.d, c->T, c->dv, c->ctx.d);
}

typedef struct {
    pair x, y;
    size_t n;
    int log;
} vec_case;

static void run_softmax(void *p, int f32)
{
    vec_case *c = p;
    if (c->log) {
        if (f32)
            attnx_log_softmax_rows_f32(c->x.f, 1, c->n, c->y.f, 1);
        else
            attnx_log_softmax_rows(c->x.d, 1, c->n, c->y.d, 1);
    } else if (f32) {
        attnx_softmax_f32(c->x.f, c->n, c->y.f);
    } else {
        attnx_softmax(c->x.d, c->n, c->y.d);
    }
}

typedef struct {
    pair Q, K, V, ctx;
    size_t B, H, Lq, T, d;
    int causal, threads;
} rows_case;

static void run_rows(void *p, int f32)
{
    rows_case *c = p;
    size_t shape[2] = {c->B, c->H};
    ptrdiff_t qs[2] = {(ptrdiff_t)(c->H * c->Lq * c->d), (ptrdiff_t)(c->Lq * c->d)};
    ptrdiff_t ks[2] = {(ptrdiff_t)(c->H * c->T * c->d), (ptrdiff_t)(c->T * c->d)};
    double scale = 1.0 / sqrt((double)c->d);
    if (f32)
        attnx_attend_batch_f32(c->Q.f, c->K.f, c->V.f, 2, shape, qs, ks, ks, c->Lq, c->T, c->d, c->d,
                               (float)scale, NULL, NULL, 0, c->causal, c->ctx.f, NULL, c->threads);
    else
        attnx_attend_batch(c->Q.d, c->K.d, c->V.d, 2, shape, qs, ks, ks, c->Lq, c->T, c->d, c->d, scale,
                           NULL, NULL, 0, c->causal, c->ctx.d, NULL, c->threads);
}

int main(int argc, char **argv)
{
    bench_levels();
    printf("attnx bench_f32: float64 / float32 time (speed-up of float32); build: %s\n", attnx_build_info());
    printf("%-32s", "case");
    for (int l = 0; l < g_nlevels; l++) printf("  %-32s", g_levels[l]);
    printf("\n");

    if (wanted(argc, argv, "mid")) {
        size_t T = 1024, d = 64;
        attend_case c = {rand_pair(d, 1.0), rand_pair(T * d, 1.0), rand_pair(T * d, 1.0), out_pair(d),
                         out_pair(T), T, d, d, 0};
        row("attend fused T=1024 d=64", "us", 1e6, run_attend, &c, 2000, 15);
        c.weights = 1;
        row("attend +weights T=1024 d=64", "us", 1e6, run_attend, &c, 2000, 15);
        free_pair(c.q); free_pair(c.K); free_pair(c.V); free_pair(c.ctx); free_pair(c.w);
    }
    if (wanted(argc, argv, "long")) {
        size_t T = (size_t)1 << 20, d = 64;
        attend_case c = {rand_pair(d, 1.0), rand_pair(T * d, 1.0), rand_pair(T * d, 1.0), out_pair(d),
                         out_pair(1), T, d, d, 0};
        row("attend fused T=2^20 d=64", "ms", 1e3, run_attend, &c, 1, 7);
        free_pair(c.q); free_pair(c.K); free_pair(c.V); free_pair(c.ctx); free_pair(c.w);
    }
    if (wanted(argc, argv, "rows")) {
        size_t B = 8, H = 8, L = 512, d = 64, n = B * H * L * d;
        rows_case c = {rand_pair(n, 1.0), rand_pair(n, 1.0), rand_pair(n, 1.0), out_pair(n), B, H, L, L, d, 0, 1};
        row("rows B8 H8 L512 d64, 1 thread", "ms", 1e3, run_rows, &c, 1, 5);
        c.causal = 1;
        row("rows ... causal, 1 thread", "ms", 1e3, run_rows, &c, 1, 5);
        c.causal = 0;
        c.threads = 2;
        row("rows B8 H8 L512 d64, 2 threads", "ms", 1e3, run_rows, &c, 1, 5);
        c.Lq = 1;
        c.threads = 1;
        row("rows Lq=1 T=512 x64 heads", "us", 1e6, run_rows, &c, 20, 9);
        free_pair(c.Q); free_pair(c.K); free_pair(c.V); free_pair(c.ctx);
    }
    if (wanted(argc, argv, "softmax")) {
        size_t n = 1000000;
        vec_case c = {rand_pair(n, 500.0), out_pair(n), 1000, 0};
        row("softmax n=1000", "us", 1e6, run_softmax, &c, 2000, 15);
        c.n = n;
        row("softmax n=10^6", "ms", 1e3, run_softmax, &c, 5, 9);
        c.log = 1;
        row("log_softmax n=10^6", "ms", 1e3, run_softmax, &c, 5, 9);
        vec_case s = {rand_pair(n, 5.0), out_pair(n), n, 0};
        row("softmax n=10^6, spread 10", "ms", 1e3, run_softmax, &s, 5, 9);
        free_pair(c.x); free_pair(c.y); free_pair(s.x); free_pair(s.y);
    }
    if (wanted(argc, argv, "parts")) {
        size_t T = 1024, d = 64;
        attend_case c = {rand_pair(d, 1.0), rand_pair(T * d, 1.0), rand_pair(T * d, 1.0), out_pair(d),
                         rand_pair(T, 1.0), T, d, d, 0};
        row("dot_scores T=1024 d=64", "us", 1e6, run_dot, &c, 2000, 15);
        row("context T=1024 dv=64", "us", 1e6, run_context, &c, 2000, 15);
        free_pair(c.q); free_pair(c.K); free_pair(c.V); free_pair(c.ctx); free_pair(c.w);
    }
    return 0;
}
