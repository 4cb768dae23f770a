/*
 * tests/harness.h -- what the C test and benchmark programs share: the
 * CHECK macro and its counters (left out with HARNESS_NO_CHECK, for the
 * benchmarks), a seeded xorshift generator (HARNESS_SEED before the
 * include picks the stream, so each program keeps its own inputs) and a
 * monotonic clock.
 */
#ifndef ATTNX_TESTS_HARNESS_H
#define ATTNX_TESTS_HARNESS_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>

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
