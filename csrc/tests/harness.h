/*
 * tests/harness.h -- what the C test and benchmark programs share: the
 * CHECK macro, its counters and the test driver (left out with
 * HARNESS_NO_CHECK, for the benchmarks, which get their level list and
 * command line instead), a seeded xorshift generator (HARNESS_SEED before the
 * include picks the stream, so each program keeps its own inputs) and a
 * monotonic clock.
 */
#ifndef ATTNX_TESTS_HARNESS_H
#define ATTNX_TESTS_HARNESS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnx.h"

#if !defined(HARNESS_NO_CHECK)
static int g_pass, g_fail;
static const char *g_level = "?";

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) {                                                             \
            g_pass++;                                                           \
        } else {                                                                \
            g_fail++;                                                           \
            printf("FAIL [%s] %s:%d: %s -- ", g_level, __FILE__, __LINE__, #cond); \
            printf(__VA_ARGS__);                                                \
            printf("\n");                                                       \
        }                                                                       \
    } while (0)

/* The driver of every C test program, made by HARNESS_MAIN(title, (once
 * tests), (per-level tests)): `--levels` prints the SIMD levels this CPU
 * has (the Makefile runs each program once per level). Otherwise: the
 * once tests at the dispatched level, then the per-level tests at every
 * level the CPU has, or at the one ATTNX_SIMD pins; then "N passed, N
 * failed". The exit status is nonzero on any failure. */
typedef void (*harness_test)(void);

static void harness_run(const harness_test *tests)
{
    for (; *tests; tests++) (*tests)();
}

static int harness_main(int argc, char **argv, const char *title, const harness_test *once,
                        const harness_test *per_level)
{
    const char *avail = attnx_simd_available();
    if (argc > 1 && strcmp(argv[1], "--levels") == 0) {
        printf("%s\n", avail);
        return 0;
    }
    char levels[64];
    g_level = attnx_simd_level();
    printf("attnx %s C tests; levels available: %s; dispatched: %s; build: %s\n", title, avail,
           g_level, attnx_build_info());
    harness_run(once);
    const char *pin = getenv("ATTNX_SIMD");
    snprintf(levels, sizeof levels, "%s", (pin && *pin) ? attnx_simd_level() : avail);
    for (char *lv = strtok(levels, " "); lv; lv = strtok(NULL, " ")) {
        if (attnx_set_simd_level(lv) != ATTNX_OK) {
            CHECK(0, "cannot select level %s", lv);
            continue;
        }
        g_level = attnx_simd_level();
        CHECK(strcmp(g_level, lv) == 0, "level %s selected", lv);
        harness_run(per_level);
        printf("level %-7s done\n", lv);
    }
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail != 0;
}

/* main() of a test program: HARNESS_MAIN("float64", (test_a, test_b),
 * (test_c, test_d, test_e)) runs test_a and test_b once, the others at
 * every level, in that order. */
#define HARNESS_LIST(...) __VA_ARGS__
#define HARNESS_MAIN(title, once, per_level)                                         \
    int main(int argc, char **argv)                                                  \
    {                                                                                \
        static const harness_test once_[] = {HARNESS_LIST once, NULL};               \
        static const harness_test per_level_[] = {HARNESS_LIST per_level, NULL};     \
        return harness_main(argc, argv, title, once_, per_level_);                   \
    }
#endif

#if defined(HARNESS_NO_CHECK)
/* The benchmarks: the SIMD levels of this CPU, best first (scalar last),
 * and the regimes the command line names (none named: all). */
static const char *g_levels[4];
static int g_nlevels;

static void bench_levels(void)
{
    static char names[64];
    snprintf(names, sizeof names, "%s", attnx_simd_available());
    for (char *lv = strtok(names, " "); lv && g_nlevels < 4; lv = strtok(NULL, " ")) g_levels[g_nlevels++] = lv;
}

static int wanted(int argc, char **argv, const char *name)
{
    if (argc < 2) return 1;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0) return 1;
    return 0;
}
#endif

#if !defined(HARNESS_SEED)
#define HARNESS_SEED 0x2545F4914F6CDD1Dull
#endif
static uint64_t g_rng = HARNESS_SEED;

static inline uint64_t next_u64(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

/* uniform in [-1, 1) */
static inline double urand(void) { return (double)(next_u64() >> 11) * 0x1p-52 - 1.0; }

static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif /* ATTNX_TESTS_HARNESS_H */
