/*
 * dispatch.c -- choose the level record (every kernel table of one SIMD
 * level) once per process.
 *
 * x86-64: CPUID says what the CPU implements, XGETBV what the OS saves on a
 * context switch; a level is usable only when both agree (a VM or an OS can
 * mask AVX-512 state while CPUID still reports it). No probe kernel is ever
 * executed. aarch64: NEON (Advanced SIMD) is architectural.
 * ATTNX_SIMD=scalar|avx2|avx512|neon lowers the choice; a level the CPU lacks
 * is ignored (the Python layer warns about it).
 */
#include <stdlib.h>
#include <string.h>

#include "attnx_internal.h"
#include "attnx_internal_additive.h"
#include "attnx_internal_f32.h"

/* One row per level: adding an ISA adds a row (and its vocabulary header,
 * csrc/simd/<isa>.h). */
static const attnx_level level_scalar = {"scalar", &attnx_kernels_scalar, &attnx_kernels_f32_scalar,
                                         &attnx_additive_kernels_scalar};
#if defined(ATTNX_HAVE_X86)
static const attnx_level level_avx2 = {"avx2", &attnx_kernels_avx2, &attnx_kernels_f32_avx2,
                                       &attnx_additive_kernels_avx2};
static const attnx_level level_avx512 = {"avx512", &attnx_kernels_avx512, &attnx_kernels_f32_avx512,
                                         &attnx_additive_kernels_avx512};
#endif
#if defined(ATTNX_HAVE_NEON)
static const attnx_level level_neon = {"neon", &attnx_kernels_neon, &attnx_kernels_f32_neon,
                                       &attnx_additive_kernels_neon};
#endif

#if defined(ATTNX_HAVE_X86)
#if defined(_MSC_VER)
#include <windows.h>
#include <intrin.h>
#include <immintrin.h>
static void cpuid(int leaf, int sub, unsigned r[4])
{
    int out[4];
    __cpuidex(out, leaf, sub);
    r[0] = (unsigned)out[0];
    r[1] = (unsigned)out[1];
    r[2] = (unsigned)out[2];
    r[3] = (unsigned)out[3];
}
static unsigned long long xgetbv0(void) { return _xgetbv(0); }
#else
#include <cpuid.h>
static void cpuid(int leaf, int sub, unsigned r[4])
{
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}
static unsigned long long xgetbv0(void)
{
    unsigned lo, hi;
    /* the xgetbv opcode, so no -mxsave is needed */
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

enum { HAS_AVX2 = 1, HAS_AVX512 = 2 };

static int x86_features(void)
{
    unsigned r[4];
    int f = 0;
    cpuid(0, 0, r);
    unsigned max_leaf = r[0];
    if (max_leaf < 7) return 0;
    cpuid(1, 0, r);
    int osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1, fma = (r[2] >> 12) & 1;
    if (!osxsave || !avx) return 0;
    unsigned long long xcr0 = xgetbv0();
    int ymm_state = (xcr0 & 0x6) == 0x6;              /* XMM | YMM */
    int zmm_state = (xcr0 & 0xe6) == 0xe6;            /* + opmask, ZMM_Hi256, Hi16_ZMM */
    cpuid(7, 0, r);
    int avx2 = (r[1] >> 5) & 1, avx512f = (r[1] >> 16) & 1;
    if (ymm_state && avx2 && fma) f |= HAS_AVX2;
    if ((f & HAS_AVX2) && zmm_state && avx512f) f |= HAS_AVX512;
    return f;
}
#endif

/* Levels this CPU and build support, best first, into lv (NULL-terminated);
 * returns how many. Pure: safe to call from any thread. */
#if defined(ATTNX_HAVE_X86)
/* CPUID traps to the hypervisor in a VM (about 12 us a call here), so the
 * feature bits are read once and cached; racing first calls store the same
 * value. -1: not read yet. */
static int g_features = -1;

static int cached_features(void)
{
#if defined(_MSC_VER)
    int f = (int)InterlockedCompareExchange((volatile long *)&g_features, -1, -1);
    if (f < 0) {
        f = x86_features();
        InterlockedExchange((volatile long *)&g_features, f);
    }
#else
    int f = __atomic_load_n(&g_features, __ATOMIC_RELAXED);
    if (f < 0) {
        f = x86_features();
        __atomic_store_n(&g_features, f, __ATOMIC_RELAXED);
    }
#endif
    return f;
}
#endif

/* Levels this CPU and build support, best first, into lv (NULL-terminated);
 * returns how many. Safe to call from any thread. */
static size_t available(const attnx_level *lv[4])
{
    size_t n = 0;
#if defined(ATTNX_HAVE_X86)
    int f = cached_features();
    if (f & HAS_AVX512) lv[n++] = &level_avx512;
    if (f & HAS_AVX2) lv[n++] = &level_avx2;
#elif defined(ATTNX_HAVE_NEON)
    lv[n++] = &level_neon;
#endif
    lv[n++] = &level_scalar;
    lv[n] = NULL;
    return n;
}

static const attnx_level *find(const char *name)
{
    const attnx_level *lv[4];
    available(lv);
    if (strcmp(name, "best") == 0) return lv[0];
    for (size_t i = 0; lv[i]; i++)
        if (strcmp(lv[i]->name, name) == 0) return lv[i];
    return NULL;
}

static const attnx_level *choose(void)
{
    const char *env = getenv("ATTNX_SIMD");
    const attnx_level *k = (env && *env) ? find(env) : NULL;
    return k ? k : find("best");
}

/* The table pointer is published with release/acquire atomics: racing first
 * calls all compute the same answer, and none can see a half-written value. */
static const attnx_level *g_table;

#if defined(_MSC_VER)
#include <windows.h>
static const attnx_level *load_table(void)
{
    return (const attnx_level *)InterlockedCompareExchangePointer((PVOID volatile *)&g_table, NULL, NULL);
}
static void store_table(const attnx_level *t)
{
    InterlockedExchangePointer((PVOID volatile *)&g_table, (PVOID)t);
}
#else
static const attnx_level *load_table(void) { return __atomic_load_n(&g_table, __ATOMIC_ACQUIRE); }
static void store_table(const attnx_level *t) { __atomic_store_n(&g_table, t, __ATOMIC_RELEASE); }
#endif

const attnx_level *attnx_level_get(void)
{
    const attnx_level *t = load_table();
    if (t) return t;
    t = choose();
    store_table(t);
    return t;
}

const attnx_kernels *attnx_kernels_get(void) { return attnx_level_get()->f64; }

const char *attnx_simd_level(void) { return attnx_level_get()->name; }

int attnx_set_simd_level(const char *name)
{
    static const char *const known[] = {"scalar", "avx2", "avx512", "neon", "best"};
    if (!name) return ATTNX_ERR_NULL;
    int ok = 0;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) ok |= strcmp(name, known[i]) == 0;
    if (!ok) return ATTNX_ERR_ARG;
    const attnx_level *k = find(name);
    if (!k) return ATTNX_ERR_UNSUPPORTED;
    store_table(k);
    return ATTNX_OK;
}

const char *attnx_simd_available(void)
{
    const attnx_level *lv[4];
    size_t n = available(lv);
    /* one literal per possible set, so no buffer is shared between threads */
    if (n == 3) return "avx512 avx2 scalar";
    if (n == 2) return strcmp(lv[0]->name, "neon") == 0 ? "neon scalar" : "avx2 scalar";
    return "scalar";
}
