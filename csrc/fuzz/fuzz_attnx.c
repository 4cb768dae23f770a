/*
 * fuzz_attnx.c -- libFuzzer harness for the attnx C API (csrc/attnx.h).
 *
 * Build and run: .ci/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined,
 * every SIMD level of this CPU, the corpus in csrc/fuzz/corpus/, 60 s).
 *
 *   FUZZ_SECONDS=3600 .ci/fuzz.sh          an hour
 *   FUZZ_JOBS=2 FUZZ_SECONDS=3600 .ci/fuzz.sh   two processes in parallel
 *   FUZZ_KEEP=1 .ci/fuzz.sh                keep the build (path printed),
 *                                          then, by hand, e.g.
 *     $BUILD/fuzz_attnx -max_total_time=3600 -max_len=4096 -timeout=20 \
 *         $BUILD/corpus csrc/fuzz/corpus     (new inputs go to the first dir)
 *     $BUILD/fuzz_attnx crash-<sha1>         replay one input
 *     $BUILD/fuzz_attnx -minimize_crash=1 -runs=20000 crash-<sha1>
 *
 * Without libFuzzer (gcc, or to replay under a debugger) build with
 * -DFUZZ_STANDALONE: main() then runs every file named on the command line.
 *     make -C csrc BUILD=/tmp/fz SANITIZE=1 /tmp/fz/libattnx.a
 *     gcc -std=c99 -g -fsanitize=address,undefined -DFUZZ_STANDALONE -Icsrc \
 *         csrc/fuzz/fuzz_attnx.c /tmp/fz/libattnx.a -lm -pthread -o /tmp/fz/replay
 *     /tmp/fz/replay csrc/fuzz/corpus/seed-* csrc/fuzz/corpus/bug-*
 *
 * Out of reach by design: the flash-decoding split of one long query
 * (T >= 4096 and threads; .ci/fuzz.sh builds with -DATTNX_NO_THREADS so
 * that runs are deterministic); .ci/sanitize.sh's pytest run covers it.
 *
 * One input drives one operation, chosen by its first byte, at every SIMD
 * level (attnx_set_simd_level), scalar first as the reference:
 *   attnx_attend (fused and two-pass), attnx_softmax (in place and not),
 *   attnx_dot_scores, attnx_context, attnx_exp, attnx_attend_batch,
 *   attnx_softmax_rows, attnx_dot_scores_batch, attnx_context_batch,
 *   attnx_additive_attention.
 *
 * Input layout (bytes past the end read as 0 in the header; past the end of
 * the data, values come from a small generator seeded by the input):
 *   0  op (mod 10: 0,1 attend; 2 softmax; 3 dot_scores; 4 context; 5 exp;
 *      6 attend_batch; 7 softmax_rows; 8 dot_scores_batch; 9 context_batch;
 *      but 230 and up: additive_attention, read as attend_batch with d the
 *      additive width h, Q and K the projected queries and keys, and v
 *      (h values) after V)
 *   1  flags: 1 mask, 2 causal, 4 weights (two-pass), 8 in place,
 *      16 overlapping outputs, 32 one invalid argument, 64 wide sizes
 *      (d to 200; dv to 127, then b + 45 up to 300; T to 40), 128 V is K
 *      (when dv == d)
 *   2-3 T (little endian, mod 301)    4 d (mod 71)    5 dv (mod 71)
 *   6  Lq (mod 72)                    7 nbatch (bits 0-1); bit 2: batch
 *                                       dimension (bits 3-7) mod nbatch is 0
 *   8  batch shape: 2 bits a dimension, sizes 1..4
 *   9  broadcast bits of Q/W (0-2) and K (3-5); gap between matrices (6-7)
 *   10 broadcast bits of V (0-2) and mask (3-5); mask row stride mode (6-7)
 *   11 negative-stride bits, one an operand
 *   12 scale: bits 0-1 pick 1, 1/sqrt(d), a value from the data, -(b>>2)/8;
 *      additive attention: (int8_t)b / 4 is query_offset - key_offset
 *   13 unit: ordinary values are multiples of 2^(b % 16 - 6)
 *   14 mask mode (bits 0-1: from the data, all masked, all attend, window)
 *   15, 16 mask parameters   17, 18 misalignment of each buffer (doubles)
 *   19 which invalid argument / overlap   20 num_threads selector
 *   21... values: a selector byte each, see value()
 *
 * Every buffer is allocated for exactly its contents, behind and ahead of
 * poisoned guard zones that hold canaries (ASan reports any access; without
 * ASan the canaries still catch stray writes). Memory the contract says is
 * never read is poisoned for the duration of each call: masked (and, with
 * causal, future) key and value rows, value rows whose weight is exactly 0
 * in attnx_context, and the gaps between batch items.
 *
 * Checks (any failure prints the case and calls abort()):
 *   - status codes: NULL, EMPTY, OVERFLOW, OVERLAP, ARG for invalid calls,
 *     one invalid argument at a time, and then nothing written at all;
 *   - successful calls write every output element, nothing outside their
 *     outputs, and leave the inputs unchanged (but an in-place target);
 *   - weights are in [0, 1] or NaN; a row is all NaN, all zero (nothing
 *     attended), or sums to 1 within (n + 8) DBL_EPSILON; masked and
 *     causally hidden keys weigh exactly 0 (in a NaN row they are NaN
 *     too); attending nothing gives zeros; NaN in an
 *     attended query or score makes its row NaN; softmax is NaN exactly when
 *     its input has NaN or +inf or is all -inf;
 *   - on tame inputs (every value read finite with |x| < 1e100) each level
 *     agrees with the scalar level: scores and contexts within a bound
 *     relative to sum |a|*|b| of the terms (cancellation-proof), weights
 *     within a bound that grows with the scores' own rounding error; the
 *     fused pass agrees with the two-pass one, batched with single calls;
 *   - on any input, a context the two-pass path computes finite is finite
 *     from the fused pass too;
 *   - exp agrees across levels within 2 ulp everywhere; in-place results
 *     equal out-of-place ones bit for bit.
 */
#define _POSIX_C_SOURCE 200112L

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnx.h"

#if defined(__SANITIZE_ADDRESS__)
#define FZ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FZ_ASAN 1
#endif
#endif
#if defined(FZ_ASAN)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) __asan_poison_memory_region((p), (n))
#define UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define T_MAX 300
#define D_MAX 70
#define LQ_MAX 71
#define WIDE_T_MAX 40
#define WIDE_D_MAX 200  /* past AVX-512's 128-double stack packing of keys */
#define WIDE_DV_MAX 300 /* past the 256-double zero row of the SIMD kernels */
#define WORK_MAX 200000.0   /* multiply-adds a batched call may cost */
#define GUARD 8         /* canary doubles each side of an output */
#define EPS DBL_EPSILON
#define TAME 1e100

/* Signalling NaNs with payloads: arithmetic never produces them (it returns
 * quiet NaNs), so finding one in an output means "not written". */
#define CANARY_BITS 0x7ff4c0ffeec0ffeeULL
#define UNWRITTEN_BITS 0x7ff4deadbeef0001ULL

/* ------------------------------------------------------------- failure */

static struct {
    const char *op;
    const char *call;
    const char *level;
    size_t T, d, dv, Lq, nbatch;
} cur;

static void fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "\n==attnx-fuzz== CHECK FAILED: op=%s call=%s level=%s T=%zu d=%zu dv=%zu "
            "Lq=%zu nbatch=%zu\n==attnx-fuzz== ", cur.op ? cur.op : "-", cur.call ? cur.call : "-",
            cur.level ? cur.level : "-", cur.T, cur.d, cur.dv, cur.Lq, cur.nbatch);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    abort();
}

static uint64_t bits_of(double x)
{
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static double from_bits(uint64_t u)
{
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* ----------------------------------------------------------- the input */

typedef struct {
    const uint8_t *p;
    size_t n, i;
    uint64_t rng;
    double unit;
} reader;

static uint8_t hdr(reader *r) { return r->i < r->n ? r->p[r->i++] : 0; }

static uint64_t rng_next(reader *r)
{
    r->rng = r->rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return r->rng >> 11;
}

static uint8_t data8(reader *r) { return r->i < r->n ? r->p[r->i++] : (uint8_t)(rng_next(r) >> 40); }

/* One value. Selector byte s:
 *   0x00-0x7f  (s - 64) * unit                 ordinary, one byte
 *   0x80-0xbf  int16 (next 2 bytes) / 256 * unit   ordinary, finer
 *   0xc0-0xc7  the next 8 bytes as the double's bits
 *   0xc8-0xcf  +0 / -0 (bit 0)
 *   0xd0-0xd7  NaN (bit 0: negative sign)
 *   0xd8-0xdf  +inf / -inf
 *   0xe0-0xe7  +-1e308 (bit 1: +-DBL_MAX instead)
 *   0xe8-0xef  subnormal +-(b + 1) * 2^-1074 (bit 1: * 2^-1040 instead)
 *   0xf0-0xf7  big +-(1 + b/256) * 2^(16..351)
 *   0xf8-0xff  tiny +-(1 + b/256) * 2^-(1..1021)
 * Past the end of the input: ordinary values in [-8, 8] * unit. */
static double value(reader *r)
{
    if (r->i >= r->n) return ((double)(rng_next(r) % 65) - 32.0) / 4.0 * r->unit;
    uint8_t s = r->p[r->i++];
    double sign = (s & 1) ? -1.0 : 1.0;
    if (s < 0x80) return ((double)s - 64.0) * r->unit;
    if (s < 0xc0) {
        unsigned lo = data8(r), hi = data8(r);
        return (int16_t)(uint16_t)(lo | hi << 8) / 256.0 * r->unit;
    }
    switch (s >> 3) {
    case 0xc0 >> 3: {
        uint64_t u = 0;
        for (int k = 0; k < 8; k++) u |= (uint64_t)data8(r) << (8 * k);
        return from_bits(u);
    }
    case 0xc8 >> 3: return sign * 0.0;
    case 0xd0 >> 3: return sign * NAN;
    case 0xd8 >> 3: return sign * INFINITY;
    case 0xe0 >> 3: return sign * ((s & 2) ? DBL_MAX : 1e308);
    case 0xe8 >> 3: return sign * (data8(r) + 1.0) * ldexp(1.0, (s & 2) ? -1040 : -1074);
    case 0xf0 >> 3: {
        double m = 1.0 + data8(r) / 256.0;
        return sign * ldexp(m, 16 + data8(r) % 336);   /* m is read first: its own statement */
    }
    default: {
        double m = 1.0 + data8(r) / 256.0;
        unsigned lo = data8(r), hi = data8(r) & 3;
        return sign * ldexp(m, -(1 + (int)(lo | hi << 8) % 1021));
    }
    }
}

typedef struct {
    unsigned op, flags;
    size_t T, d, dv, Lq;
    size_t nbatch, shape[3];
    unsigned bc_q, bc_k, bc_v, bc_m, gap, mrs_mode, neg;
    unsigned scale_mode;
    unsigned mask_mode, mask_a, mask_b;
    unsigned mis_a, mis_b;
    unsigned inval;
    int threads;
} header;

/* op bytes from here on: additive attention (below: op % 10, so the kept
 * corpus keeps its meaning) */
#define OP_ADDITIVE_FROM 230

enum {
    F_MASK = 1, F_CAUSAL = 2, F_WEIGHTS = 4, F_INPLACE = 8, F_OVERLAP = 16, F_INVALID = 32,
    F_WIDE = 64, F_ALIAS = 128
};

static void read_header(reader *r, header *h)
{
    unsigned op = hdr(r);
    h->op = op >= OP_ADDITIVE_FROM ? 10 : op % 10;
    h->flags = hdr(r);
    unsigned t = hdr(r);
    t |= (unsigned)hdr(r) << 8;
    int wide = (h->flags & F_WIDE) != 0;
    h->T = t % (T_MAX + 1);
    if (wide) h->T %= WIDE_T_MAX + 1;
    h->d = hdr(r) % ((wide ? WIDE_D_MAX : D_MAX) + 1);
    unsigned dvb = hdr(r);
    /* wide: 0..127, then 173..300 (one byte reaches past 256) */
    h->dv = wide ? (dvb < 128 ? dvb : dvb + (WIDE_DV_MAX - 255)) : dvb % (D_MAX + 1);
    h->Lq = hdr(r) % (LQ_MAX + 1);
    unsigned b = hdr(r), s = hdr(r);
    h->nbatch = b & 3;
    for (int i = 0; i < 3; i++) h->shape[i] = 1 + ((s >> (2 * i)) & 3);
    if ((b & 4) && h->nbatch) h->shape[(b >> 3) % h->nbatch] = 0;
    b = hdr(r);
    h->bc_q = b & 7;
    h->bc_k = (b >> 3) & 7;
    h->gap = b >> 6;
    b = hdr(r);
    h->bc_v = b & 7;
    h->bc_m = (b >> 3) & 7;
    h->mrs_mode = b >> 6;
    h->neg = hdr(r);
    h->scale_mode = hdr(r);
    r->unit = ldexp(1.0, (int)(hdr(r) % 16) - 6);
    h->mask_mode = hdr(r);
    h->mask_a = hdr(r);
    h->mask_b = hdr(r);
    h->mis_a = hdr(r);
    h->mis_b = hdr(r);
    h->inval = hdr(r);
    static const int threads[4] = {1, 0, 2, 1};
    h->threads = threads[hdr(r) & 3];
}

static double read_scale(reader *r, const header *h)
{
    switch (h->scale_mode & 3) {
    case 0: return 1.0;
    case 1: return 1.0 / sqrt((double)(h->d ? h->d : 1));
    case 2: return value(r);
    default: return -(double)(h->scale_mode >> 2) / 8.0;
    }
}

/* --------------------------------------------------------------- buffers */

/* A buffer: [front guard][payload n elements][back guard], one allocation
 * of exactly that size. Guards hold canaries and stay poisoned. `deny`
 * marks payload elements no call may touch (poisoned during calls). `init`
 * is what the payload must hold after a call that fails, and what an output
 * is reset to before each call. */
typedef struct {
    const char *name;
    unsigned char *raw;
    size_t esize, front, n, back;
    void *p;
    unsigned char *init;
    unsigned char *deny;   /* NULL: nothing denied */
    int output;            /* reset before each call; may be written */
} buf;

#define MAX_BUFS 24
static buf g_pool[MAX_BUFS];   /* static: they outlive the op that made them */
static size_t g_nbufs;

static void buf_fill_canary(buf *b, unsigned char *p, size_t bytes)
{
    if (b->esize == sizeof(double)) {
        for (size_t i = 0; i < bytes / 8; i++) memcpy(p + 8 * i, &(uint64_t){CANARY_BITS}, 8);
    } else {
        memset(p, 0xc5, bytes);
    }
}

static buf *buf_new(const char *name, size_t esize, size_t n, size_t front, size_t back, int output)
{
    if (g_nbufs == MAX_BUFS) abort();
    buf *b = &g_pool[g_nbufs++];
    memset(b, 0, sizeof *b);
    b->name = name;
    b->esize = esize;
    b->n = n;
    b->front = front;
    b->back = back;
    b->output = output;
    size_t bytes = (front + n + back) * esize;
    void *m = NULL;
    if (posix_memalign(&m, 64, bytes ? bytes : 1) != 0) abort();
    b->raw = (unsigned char *)m;
    b->p = b->raw + front * esize;
    b->init = (unsigned char *)malloc(n * esize + 1);
    if (!b->init) abort();
    buf_fill_canary(b, b->raw, front * esize);
    buf_fill_canary(b, b->raw + (front + n) * esize, back * esize);
    if (output && esize == sizeof(double)) {
        for (size_t i = 0; i < n; i++) memcpy(b->init + 8 * i, &(uint64_t){UNWRITTEN_BITS}, 8);
    } else {
        memset(b->init, 0, n * esize);
    }
    memcpy(b->p, b->init, n * esize);
    POISON(b->raw, front * esize);
    POISON(b->raw + (front + n) * esize, back * esize);
    return b;
}

static double *dp(const buf *b) { return (double *)b->p; }

/* input of n doubles, misaligned by mis doubles from a 64-byte boundary */
static buf *in_new(const char *name, size_t n, unsigned mis)
{
    return buf_new(name, sizeof(double), n, mis & 7, 1, 0);
}

static buf *out_new(const char *name, size_t n, unsigned mis)
{
    return buf_new(name, sizeof(double), n, GUARD + (mis & 7), GUARD, 1);
}

/* after filling an input's payload: remember it */
static void buf_seal(buf *b) { memcpy(b->init, b->p, b->n * b->esize); }

static void buf_deny(buf *b, size_t from, size_t count)
{
    if (!count) return;
    if (!b->deny) {
        b->deny = (unsigned char *)calloc(b->n + 1, 1);
        if (!b->deny) abort();
    }
    memset(b->deny + from, 1, count);
}

/* poison (on) or unpoison (off) the denied runs */
static void buf_arm(buf *b, int on)
{
    if (!b->deny) return;
    for (size_t i = 0; i < b->n;) {
        if (!b->deny[i]) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < b->n && b->deny[j]) j++;
        if (on)
            POISON((unsigned char *)b->p + i * b->esize, (j - i) * b->esize);
        else
            UNPOISON((unsigned char *)b->p + i * b->esize, (j - i) * b->esize);
        i = j;
    }
}

static void buf_check_guards(const buf *b)
{
    size_t fb = b->front * b->esize, bb = b->back * b->esize;
    unsigned char *tail = b->raw + fb + b->n * b->esize;
    UNPOISON(b->raw, fb);
    UNPOISON(tail, bb);
    for (size_t i = 0; i < fb; i++) {
        unsigned char want = b->esize == 8 ? (unsigned char)(CANARY_BITS >> (8 * (i % 8))) : 0xc5;
        if (b->raw[i] != want) fail("%s: canary %zu bytes before the buffer overwritten", b->name, fb - i);
    }
    for (size_t i = 0; i < bb; i++) {
        unsigned char want = b->esize == 8 ? (unsigned char)(CANARY_BITS >> (8 * (i % 8))) : 0xc5;
        if (tail[i] != want) fail("%s: canary %zu bytes past the end overwritten", b->name, i);
    }
    POISON(b->raw, fb);
    POISON(tail, bb);
}

static void bufs_free(void)
{
    for (size_t k = 0; k < g_nbufs; k++) {
        buf *b = &g_pool[k];
        UNPOISON(b->raw, (b->front + b->n + b->back) * b->esize);
        free(b->raw);
        free(b->init);
        free(b->deny);
    }
    g_nbufs = 0;
}

static unsigned g_mis_a, g_mis_b, g_nmis;
static unsigned next_mis(void)
{
    unsigned k = g_nmis++;
    return ((g_mis_a >> (k & 7)) & 1) ? (g_mis_b + 3 * k) & 7 : 0;
}

static void fill_values(reader *r, buf *b)
{
    double *x = dp(b);
    for (size_t i = 0; i < b->n; i++) x[i] = value(r);
    buf_seal(b);
}

/* ------------------------------------------------------------ the calls */

#define MAX_LEVELS 4
static const char *g_levels[MAX_LEVELS];
static size_t g_nlevels;

static void set_level(const char *lv)
{
    int rc = attnx_set_simd_level(lv);
    if (rc != ATTNX_OK) fail("attnx_set_simd_level(%s) = %d", lv, rc);
    if (strcmp(attnx_simd_level(), lv) != 0) fail("level %s requested, %s in use", lv, attnx_simd_level());
    cur.level = lv;
}

/* Before a call: outputs back to their initial content (so whatever a
 * caller wants to keep from the previous call it copies first), denied
 * memory poisoned. */
static void call_begin(const char *name)
{
    cur.call = name;
    for (size_t k = 0; k < g_nbufs; k++) {
        buf *b = &g_pool[k];
        if (b->output) memcpy(b->p, b->init, b->n * b->esize);
        buf_arm(b, 1);
    }
}

/* After a call: the status, the guards, the inputs, and (on failure)
 * that no output changed. */
static void call_end(int rc, int expect)
{
    for (size_t k = 0; k < g_nbufs; k++) buf_arm(&g_pool[k], 0);
    if (rc != expect) fail("status %d (%s), expected %d (%s)", rc, attnx_strerror(rc), expect, attnx_strerror(expect));
    for (size_t k = 0; k < g_nbufs; k++) {
        buf *b = &g_pool[k];
        buf_check_guards(b);
        if ((!b->output || rc != ATTNX_OK) && memcmp(b->p, b->init, b->n * b->esize) != 0) {
            size_t i = 0;
            while (((unsigned char *)b->p)[i] == b->init[i]) i++;
            fail("%s changed at byte %zu (%s)", b->name, i,
                 b->output ? "by a call that failed" : "an input");
        }
    }
}

/* every one of n doubles was written */
static void check_written(const double *x, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (bits_of(x[i]) == UNWRITTEN_BITS) fail("%s[%zu] not written", what, i);
}

static double *copy_of(const double *x, size_t n)
{
    double *c = (double *)malloc(n * sizeof(double) + 8);
    if (!c) abort();
    memcpy(c, x, n * sizeof(double));
    return c;
}

/* ----------------------------------------------------- comparing results */

static int tame(const double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabs(x[i]) < TAME)) return 0;
    return 1;
}

/* |got - ref| <= rel * mag[i] + abs_tol, NaN where and only where ref is NaN. */
static void close_to(const double *got, const double *ref, const double *mag, size_t n, double rel,
                     double abs_tol, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        double g = got[i], e = ref[i];
        if (isnan(g) || isnan(e)) {
            if (isnan(g) != isnan(e)) fail("%s[%zu] = %.17g, reference %.17g", what, i, g, e);
            continue;
        }
        if (g == e) continue;
        double m = mag ? mag[i] : fmax(fabs(g), fabs(e));
        double tol = rel * m + abs_tol;
        if (!(fabs(g - e) <= tol))
            fail("%s[%zu] = %.17g, reference %.17g: |diff| %.3g > tolerance %.3g (rel %.3g)", what, i, g, e,
                 fabs(g - e), tol, rel);
    }
}

static void same_bits(const double *got, const double *ref, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (bits_of(got[i]) != bits_of(ref[i]) && !(isnan(got[i]) && isnan(ref[i])))
            fail("%s[%zu] = %.17g, expected bit-identical %.17g", what, i, got[i], ref[i]);
}

/* distance in ulps along the ordered doubles (+0 and -0 one apart) */
static uint64_t ulp_dist(double a, double b)
{
    uint64_t x = bits_of(a), y = bits_of(b);
    x = (x >> 63) ? ~x : x | 0x8000000000000000ULL;
    y = (y >> 63) ? ~y : y | 0x8000000000000000ULL;
    return x > y ? x - y : y - x;
}

enum { ROW_ZERO, ROW_NORMAL, ROW_NAN };

/* One row of weights, n entries of which the first lim are the row proper
 * (causal: the keys a query may see; past them weights are exactly 0).
 * live[t] == 0: key t must weigh exactly 0 -- unless the row is NaN, which
 * makes every entry NaN, masked and causally hidden ones included (one rule
 * for every excluded key). */
static int check_weights_row(const double *w, size_t n, size_t lim, const unsigned char *live, const char *what)
{
    size_t nan = 0;
    for (size_t t = 0; t < lim; t++) nan += isnan(w[t]) != 0;
    for (size_t t = lim; t < n; t++)
        if (nan ? !isnan(w[t]) : w[t] != 0.0)
            fail("%s[%zu] = %.17g past the causal limit %zu in a %s row", what, t, w[t], lim,
                 nan ? "NaN" : "finite");
    if (nan) {
        if (nan != lim) fail("%s: %zu of %zu weights NaN (a row is all NaN or none)", what, nan, lim);
        return ROW_NAN;
    }
    long double s = 0.0L;
    int any = 0;
    for (size_t t = 0; t < n; t++) {
        double x = w[t];
        if (!(x >= 0.0 && x <= 1.0)) fail("%s[%zu] = %.17g is outside [0, 1]", what, t, x);
        if (live && !live[t] && x != 0.0) fail("%s[%zu] = %.17g for a masked key", what, t, x);
        s += x;
        any |= x != 0.0;
    }
    if (!any) return ROW_ZERO;
    long double tol = (long double)(n + 8) * EPS;
    if (fabsl(s - 1.0L) > tol) fail("%s: weights sum to 1 + %.3Lg (n = %zu, tolerance %.3Lg)", what, s - 1.0L, n, tol);
    return ROW_NORMAL;
}

static void all_equal(const double *x, size_t n, double v, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (!(x[i] == v || (isnan(v) && isnan(x[i]))))
            fail("%s[%zu] = %.17g, expected %g", what, i, x[i], v);
}

/* |scale| * sum_j |q_j k_j|: the scale of a score's rounding error */
static double score_mag(const double *q, const double *k, size_t d, double scale)
{
    double s = 0.0;
    for (size_t j = 0; j < d; j++) s += fabs(q[j] * k[j]);
    return fabs(scale) * s;
}

/* ---------------------------------------------------------- attend rows */

/* What one query row of attention saw; filled by the caller. */
typedef struct {
    const double *q, *K, *V;
    const unsigned char *mask;  /* NULL: every key */
    size_t lim;                 /* keys [0, lim) considered (causal), <= T */
} att_row;

/* live[t] for t < T: key t attended by this row (mask and causal) */
static size_t row_live(const att_row *a, size_t T, unsigned char *live)
{
    size_t n = 0;
    for (size_t t = 0; t < T; t++) {
        live[t] = t < a->lim && (!a->mask || a->mask[t]);
        n += live[t];
    }
    return n;
}

/* Is the row tame, and the rounding scale of its scores. */
static int row_tame(const att_row *a, size_t d, size_t dv, double scale, const unsigned char *live,
                    size_t T, double *bmax)
{
    int ok = tame(&scale, 1) && tame(a->q, d);
    double b = 0.0;
    for (size_t t = 0; t < T && ok; t++) {
        if (!live[t]) continue;
        ok = tame(a->K + t * d, d) && tame(a->V + t * dv, dv);
        double m = score_mag(a->q, a->K + t * d, d, scale);
        if (m > b) b = m;
    }
    *bmax = b;
    return ok;
}

/* Invariants of one row's results (weights may be NULL: fused). Returns the
 * row class. */
static int check_attend_row(const att_row *a, size_t T, size_t d, size_t dv, double scale,
                            const double *ctx, const double *w, const unsigned char *live,
                            size_t nlive, const char *what)
{
    char name[160];
    int cls = -1;
    if (w) {
        snprintf(name, sizeof name, "%s weights", what);
        cls = check_weights_row(w, T, a->lim, live, name);
    }
    snprintf(name, sizeof name, "%s context", what);
    if (nlive == 0) {
        /* nothing to attend to: zeros, whatever the data */
        if (w && cls != ROW_ZERO) fail("%s: no key attended, yet the weights are not all 0", what);
        all_equal(ctx, dv, 0.0, name);
        return ROW_ZERO;
    }
    /* NaN in the query (or the scale) reaches every attended score */
    int qnan = isnan(scale) && d > 0;
    for (size_t j = 0; j < d; j++) qnan |= isnan(a->q[j]) != 0;
    if (qnan) {
        if (w && cls != ROW_NAN) fail("%s: NaN in the query or scale, weights not NaN", what);
        all_equal(ctx, dv, NAN, name);
        return ROW_NAN;
    }
    if (w && cls == ROW_NAN) all_equal(ctx, dv, NAN, name);
    if (w && cls == ROW_ZERO) all_equal(ctx, dv, 0.0, name);
    (void)scale;
    return cls;
}

/* ctx magnitude for tolerances: sum_t w_t |V_tj| */
static void ctx_mag(const double *w, const double *V, size_t T, size_t dv, double *mag)
{
    for (size_t j = 0; j < dv; j++) mag[j] = 0.0;
    for (size_t t = 0; t < T; t++) {
        if (w[t] == 0.0 || isnan(w[t])) continue;
        for (size_t j = 0; j < dv; j++) mag[j] += fabs(w[t] * V[t * dv + j]);
    }
}

/* Tolerances of one row, computed once from the scalar reference: whether
 * it is tame at all, the weights' relative tolerance (it grows with the
 * rounding error of the scores, |scale| * sum |q_j k_j| * (d + 2) eps, which
 * exp turns into a relative error), and sum_t w_t |V_tj| for the context. */
typedef struct {
    int tame, numeric;
    double tol_w, rel_c, abs_c;
    double *mag;   /* dv entries, owned */
} row_tol;

static void row_tol_init(row_tol *rt, const att_row *a, size_t T, size_t d, size_t dv, double scale,
                         const unsigned char *live, const double *ref_w)
{
    double bmax;
    memset(rt, 0, sizeof *rt);
    rt->tame = row_tame(a, d, dv, scale, live, T, &bmax);
    if (!rt->tame) return;
    /* with tame values nothing overflows: the NaN pattern is exact; the
     * numbers are compared when the scores are well enough conditioned */
    rt->tol_w = 2.5 * 2.0 * (double)(d + 2) * EPS * bmax + 32.0 * EPS;
    rt->numeric = rt->tol_w < 1e-2;
    if (!rt->numeric) return;
    rt->mag = (double *)malloc(dv * sizeof(double) + 8);
    if (!rt->mag) abort();
    ctx_mag(ref_w, a->V, T, dv, rt->mag);
    double vmax = 0.0;
    for (size_t t = 0; t < T; t++)
        if (live[t])
            for (size_t j = 0; j < dv; j++) vmax = fmax(vmax, fabs(a->V[t * dv + j]));
    rt->rel_c = rt->tol_w + 4.0 * (double)(T + dv + 8) * EPS;
    rt->abs_c = (double)(T + 1) * 1e-300 * (vmax + 1.0);
}

/* Compare one row (ctx, and weights unless NULL) against a reference. */
static void compare_row(const row_tol *rt, size_t T, size_t dv, const double *ctx, const double *w,
                        const double *ref_ctx, const double *ref_w, const char *what)
{
    if (!rt->tame) return;
    char name[160];
    if (w) {
        snprintf(name, sizeof name, "%s weights", what);
        if (rt->numeric) close_to(w, ref_w, NULL, T, rt->tol_w, 1e-300, name);
        else for (size_t t = 0; t < T; t++)
            if (isnan(w[t]) != isnan(ref_w[t])) fail("%s[%zu] NaN mismatch", name, t);
    }
    snprintf(name, sizeof name, "%s context", what);
    if (rt->numeric) {
        close_to(ctx, ref_ctx, rt->mag, dv, rt->rel_c, rt->abs_c, name);
    } else {
        for (size_t j = 0; j < dv; j++)
            if (isnan(ctx[j]) != isnan(ref_ctx[j])) fail("%s[%zu] NaN mismatch", name, j);
    }
}

/* ------------------------------------------------------------ operations */

/* mask bytes for n keys, by the header's mask mode; `row` shifts windows */
static void fill_mask(reader *r, const header *h, unsigned char *m, size_t n, size_t row)
{
    switch (h->mask_mode & 3) {
    case 0:
        for (size_t t = 0; t < n; t++) {
            uint8_t b = data8(r);
            m[t] = (b & 1) ? (unsigned char)(b | 1) : 0;   /* any nonzero byte attends */
        }
        break;
    case 1: memset(m, 0, n); break;
    case 2: memset(m, (h->mask_mode & 4) ? 0xff : 1, n); break;
    default: {
        size_t lo = (h->mask_a + row * (h->mask_mode >> 3)) % (n + 1), len = h->mask_b % (n + 1);
        for (size_t t = 0; t < n; t++) m[t] = t >= lo && t < lo + len;
    }
    }
}

static int pick_overlap(const header *h) { return (h->flags & F_OVERLAP) != 0; }
static int pick_invalid(const header *h) { return (h->flags & F_INVALID) != 0; }

/* the contract's notion: two ranges overlap when both are non-empty and share a byte */
static int ov(const void *a, size_t abytes, const void *b, size_t bbytes)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return a && b && abytes && bbytes && x < y + bbytes && y < x + abytes;
}

/* a count whose product with per (>= 1) doubles overflows size_t in bytes */
static size_t huge_count(const header *h, size_t per)
{
    return SIZE_MAX / (per ? per : 1) / sizeof(double) + 1 + (h->inval >> 4);
}

/* ---- attnx_attend: fused and two-pass, one query */
static void op_attend(reader *r, header *h)
{
    if (pick_invalid(h) && h->T == 0) h->T = 1;   /* one invalid argument at a time */
    size_t T = h->T, d = h->d, dv = h->dv;
    int use_mask = (h->flags & F_MASK) != 0, alias = (h->flags & F_ALIAS) && dv == d;
    double scale = read_scale(r, h);
    cur.op = "attend";
    cur.T = T;
    buf *bq = in_new("q", d, next_mis());
    buf *bK = in_new("K", T * d, next_mis());
    buf *bV = NULL, *bM = NULL;
    fill_values(r, bq);
    fill_values(r, bK);
    if (!alias) {
        bV = in_new("V", T * dv, next_mis());
        fill_values(r, bV);
    }
    const double *q = dp(bq), *K = dp(bK), *V = alias ? K : dp(bV);
    const unsigned char *mask = NULL;
    if (use_mask) {
        bM = buf_new("mask", 1, T, 0, 0, 0);
        fill_mask(r, h, (unsigned char *)bM->p, T, 0);
        buf_seal(bM);
        mask = (const unsigned char *)bM->p;
    }

    if (pick_invalid(h)) {
        /* every level must refuse it and write nothing */
        buf *bc = out_new("ctx", dv, next_mis()), *bw = out_new("weights", T, next_mis());
        const double *qa = q, *Ka = K, *Va = V;
        double *ca = dp(bc), *wa = (h->flags & F_WEIGHTS) ? dp(bw) : NULL;
        size_t Ta = T;
        int expect;
        switch (h->inval % 6) {
        case 0: qa = NULL; expect = ATTNX_ERR_NULL; break;
        case 1: Ka = NULL; expect = ATTNX_ERR_NULL; break;
        case 2: Va = NULL; expect = ATTNX_ERR_NULL; break;
        case 3: ca = NULL; expect = ATTNX_ERR_NULL; break;
        case 4: Ta = 0; expect = ATTNX_ERR_EMPTY; break;
        default:
            /* T * d, T * dv or the T weights overflow size_t: no buffer that
             * large exists, so the call must stop before touching any */
            if (d == 0 && dv == 0) wa = dp(bw);
            Ta = huge_count(h, d > dv ? d : dv);
            expect = ATTNX_ERR_OVERFLOW;
            break;
        }
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_attend (invalid)");
            call_end(attnx_attend(qa, Ka, Va, Ta, d, dv, scale, mask, ca, wa), expect);
        }
        return;
    }

    if (pick_overlap(h) && T > 0) {
        /* an output sharing memory with an input or with the other output */
        double *ca = NULL, *wa = NULL;
        size_t sel = h->inval % 4, off = h->inval >> 2;
        if (sel == 1 && dv && T * d >= dv) {                     /* ctx inside K */
            ca = dp(bK) + off % (T * d - dv + 1);
        } else if (sel == 2 && !alias && dv && T * dv >= T) {    /* weights inside V */
            ca = dp(out_new("ctx", dv, next_mis()));
            wa = dp(bV) + off % (T * dv - T + 1);
        } else if (sel == 3 && dv && d >= dv) {                  /* ctx inside q */
            ca = dp(bq) + off % (d - dv + 1);
        } else {                                                 /* ctx and weights */
            size_t o = dv ? off % dv : 0;
            buf *sh = out_new("ctx+weights", o + T > dv ? o + T : dv, next_mis());
            ca = dp(sh);
            wa = dp(sh) + o;
        }
        size_t cb = dv * 8, wb = T * 8;
        int any = ov(ca, cb, q, d * 8) || ov(ca, cb, K, T * d * 8) || ov(ca, cb, V, T * dv * 8) ||
                  ov(ca, cb, wa, wb) || ov(wa, wb, q, d * 8) || ov(wa, wb, K, T * d * 8) ||
                  ov(wa, wb, V, T * dv * 8);
        if (!any) return;   /* dv == 0 with ctx and weights apart: nothing overlaps */
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_attend (overlapping output)");
            call_end(attnx_attend(q, K, V, T, d, dv, scale, mask, ca, wa), ATTNX_ERR_OVERLAP);
        }
        return;
    }

    /* masked key and value rows are never read */
    unsigned char *live = (unsigned char *)malloc(T + 1);
    if (!live) abort();
    att_row a = {q, K, V, mask, T};
    size_t nlive = row_live(&a, T, live);
    for (size_t t = 0; t < T; t++) {
        if (live[t]) continue;
        buf_deny(bK, t * d, d);
        if (!alias) buf_deny(bV, t * dv, dv);
    }
    buf *bc = out_new("ctx", dv, next_mis()), *bw = out_new("weights", T, next_mis());
    double *ctx = dp(bc), *w = dp(bw);
    int expect = T == 0 ? ATTNX_ERR_EMPTY : ATTNX_OK;
    double *ref_ctx = NULL, *ref_w = NULL;
    row_tol rt = {0, 0, 0.0, 0.0, 0.0, NULL};
    for (size_t L = 0; L < g_nlevels; L++) {
        set_level(g_levels[L]);
        call_begin("attnx_attend (two-pass)");
        call_end(attnx_attend(q, K, V, T, d, dv, scale, mask, ctx, w), expect);
        if (expect != ATTNX_OK) {
            call_begin("attnx_attend (fused)");
            call_end(attnx_attend(q, K, V, T, d, dv, scale, mask, ctx, NULL), expect);
            continue;
        }
        check_written(ctx, dv, "ctx");
        check_written(w, T, "weights");
        int cls = check_attend_row(&a, T, d, dv, scale, ctx, w, live, nlive, "two-pass");
        double *c2 = copy_of(ctx, dv), *w2 = copy_of(w, T);

        call_begin("attnx_attend (fused)");
        call_end(attnx_attend(q, K, V, T, d, dv, scale, mask, ctx, NULL), expect);
        check_written(ctx, dv, "ctx");
        check_attend_row(&a, T, d, dv, scale, ctx, NULL, live, nlive, "fused");
        if (cls == ROW_NAN) all_equal(ctx, dv, NAN, "fused context (two-pass weights NaN)");
        if (cls == ROW_ZERO) all_equal(ctx, dv, 0.0, "fused context (two-pass weights 0)");
        if (L == 0) row_tol_init(&rt, &a, T, d, dv, scale, live, w2);
        /* same level: fused agrees with two-pass; then both with scalar */
        compare_row(&rt, T, dv, ctx, NULL, c2, w2, "fused vs two-pass");
        /* on any input: the fused pass never makes inf or NaN of a context
         * the two-pass one computes finite (a value row of weight exactly 0
         * is not read; the unnormalised sum may not overflow) */
        for (size_t j = 0; j < dv; j++)
            if (isfinite(c2[j]) && !isfinite(ctx[j]))
                fail("fused context[%zu] = %g where the two-pass one is %.17g", j, ctx[j], c2[j]);
        if (L == 0) {
            ref_ctx = c2;
            ref_w = w2;
            continue;
        }
        compare_row(&rt, T, dv, c2, w2, ref_ctx, ref_w, "two-pass vs scalar");
        compare_row(&rt, T, dv, ctx, NULL, ref_ctx, ref_w, "fused vs scalar");
        free(c2);
        free(w2);
    }
    free(ref_ctx);
    free(ref_w);
    free(rt.mag);
    free(live);
}

/* softmax invariants of one row y = softmax(x) */
static void check_softmax_row(const double *x, const double *y, size_t n, const char *what)
{
    int nan = 0, pinf = 0, allninf = 1;
    for (size_t i = 0; i < n; i++) {
        nan |= isnan(x[i]) != 0;
        pinf |= x[i] == INFINITY;
        allninf &= x[i] == -INFINITY;
    }
    int cls = check_weights_row(y, n, n, NULL, what);
    if (n == 0) return;
    if (nan || pinf || allninf) {
        if (cls != ROW_NAN) fail("%s: input has NaN, +inf or is all -inf, yet the result is not NaN", what);
        return;
    }
    if (cls != ROW_NORMAL) fail("%s: finite maximum, yet the weights are %s", what, cls == ROW_NAN ? "NaN" : "all 0");
    for (size_t i = 0; i < n; i++)
        if (x[i] == -INFINITY && y[i] != 0.0) fail("%s[%zu]: -inf input, weight %.17g", what, i, y[i]);
}

/* ---- attnx_softmax (out of place, in place) and attnx_softmax_rows */
static void op_softmax(reader *r, const header *h, int rows_form)
{
    size_t n = h->T, rows = rows_form ? h->Lq : 1;
    if (rows * n > 20000) n = 20000 / rows;
    size_t total = rows * n;
    cur.op = rows_form ? "softmax_rows" : "softmax";
    cur.T = n;
    cur.Lq = rows;
    buf *bx = in_new("x", total, next_mis());
    fill_values(r, bx);
    const double *x = dp(bx);
    int threads = h->threads;

    if (pick_invalid(h)) {
        buf *by = out_new("y", total, next_mis());
        const double *xa = x;
        double *ya = dp(by);
        size_t na = n, ra = rows;
        int expect, th = threads;
        switch (h->inval % (rows_form ? 4 : 3)) {
        case 0: xa = NULL; expect = ATTNX_ERR_NULL; break;
        case 1: ya = NULL; expect = ATTNX_ERR_NULL; break;
        case 2:
            if (rows_form) {
                na = n ? n : 1;
                ra = huge_count(h, na);
            } else {
                na = huge_count(h, 1);
            }
            expect = ATTNX_ERR_OVERFLOW;
            break;
        default: th = -1 - (int)(h->inval >> 4); expect = ATTNX_ERR_ARG; break;
        }
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("softmax (invalid)");
            int rc = rows_form ? attnx_softmax_rows(xa, ra, na, ya, th) : attnx_softmax(xa, na, ya);
            call_end(rc, expect);
        }
        return;
    }

    if (pick_overlap(h) && total > 1) {
        /* y partially overlapping x: refused (y == x exactly is in place) */
        size_t off = 1 + h->inval % (total - 1);
        buf *sh = in_new("x+y", total + off, next_mis());
        fill_values(r, sh);
        const double *xa = (h->inval & 0x80) ? dp(sh) + off : dp(sh);
        double *ya = (h->inval & 0x80) ? dp(sh) : dp(sh) + off;
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("softmax (partial overlap)");
            int rc = rows_form ? attnx_softmax_rows(xa, rows, n, ya, threads) : attnx_softmax(xa, n, ya);
            call_end(rc, ATTNX_ERR_OVERLAP);
        }
        return;
    }

    buf *by = out_new("y", total, next_mis());
    buf *bi = buf_new("in-place x", sizeof(double), total, GUARD + next_mis(), GUARD, 1);
    memcpy(bi->init, bx->init, total * sizeof(double));
    double *y = dp(by), *xi = dp(bi), *ref = NULL;
    for (size_t L = 0; L < g_nlevels; L++) {
        set_level(g_levels[L]);
        call_begin("softmax");
        int rc = rows_form ? attnx_softmax_rows(x, rows, n, y, threads) : attnx_softmax(x, n, y);
        call_end(rc, ATTNX_OK);
        check_written(y, total, "y");
        char name[64];
        for (size_t i = 0; i < rows; i++) {
            snprintf(name, sizeof name, "softmax row %zu", i);
            check_softmax_row(x + i * n, y + i * n, n, name);
        }
        double *got = copy_of(y, total);
        if (rows_form) {   /* each row as attnx_softmax computes it */
            for (size_t i = 0; i < rows; i++) {   /* (each call_begin resets y) */
                call_begin("attnx_softmax (a row of softmax_rows)");
                call_end(attnx_softmax(x + i * n, n, y + i * n), ATTNX_OK);
                same_bits(y + i * n, got + i * n, n, "attnx_softmax row by row vs softmax_rows");
            }
        }
        call_begin("softmax (in place)");
        rc = rows_form ? attnx_softmax_rows(xi, rows, n, xi, threads) : attnx_softmax(xi, n, xi);
        call_end(rc, ATTNX_OK);
        same_bits(xi, got, total, "in-place softmax vs out of place");
        if (L == 0) {
            ref = got;
            continue;
        }
        for (size_t i = 0; i < rows; i++)
            if (tame(x + i * n, n)) {
                snprintf(name, sizeof name, "softmax row %zu vs scalar", i);
                close_to(got + i * n, ref + i * n, NULL, n, 16.0 * EPS, 1e-300, name);
            }
        free(got);
    }
    free(ref);
}

/* ---- attnx_dot_scores */
static void op_dot_scores(reader *r, const header *h)
{
    size_t T = h->T, d = h->d;
    double scale = read_scale(r, h);
    cur.op = "dot_scores";
    buf *bq = in_new("q", d, next_mis()), *bK = in_new("K", T * d, next_mis());
    fill_values(r, bq);
    fill_values(r, bK);
    const double *q = dp(bq), *K = dp(bK);
    if (pick_invalid(h)) {
        buf *bs = out_new("scores", T, next_mis());
        const double *qa = q, *Ka = K;
        double *sa = dp(bs);
        size_t Ta = T;
        int expect;
        switch (h->inval % 4) {
        case 0: qa = NULL; expect = ATTNX_ERR_NULL; break;
        case 1: Ka = NULL; expect = ATTNX_ERR_NULL; break;
        case 2: sa = NULL; expect = ATTNX_ERR_NULL; break;
        default: Ta = huge_count(h, d ? d : 1); expect = ATTNX_ERR_OVERFLOW; break;
        }
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_dot_scores (invalid)");
            call_end(attnx_dot_scores(qa, Ka, Ta, d, scale, sa), expect);
        }
        return;
    }
    if (pick_overlap(h) && T > 0 && d > 0) {
        double *sa;
        if (!(h->inval & 1)) sa = dp(bK) + (h->inval >> 1) % (T * d - T + 1);   /* inside K */
        else if (d >= T) sa = dp(bq) + (h->inval >> 1) % (d - T + 1);           /* inside q */
        else sa = dp(bq);                                                      /* over q, on */
        if (sa == dp(bq) && d < T) {
            /* scores longer than q: a shared buffer holding q then the rest */
            buf *sh = in_new("q+scores", T, next_mis());
            fill_values(r, sh);
            q = dp(sh);
            sa = dp(sh);
        }
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_dot_scores (overlap)");
            call_end(attnx_dot_scores(q, K, T, d, scale, sa), ATTNX_ERR_OVERLAP);
        }
        return;
    }
    buf *bs = out_new("scores", T, next_mis());
    double *sc = dp(bs), *ref = NULL;
    int qnan = 0;
    for (size_t j = 0; j < d; j++) qnan |= isnan(q[j]) != 0;
    for (size_t L = 0; L < g_nlevels; L++) {
        set_level(g_levels[L]);
        call_begin("attnx_dot_scores");
        call_end(attnx_dot_scores(q, K, T, d, scale, sc), ATTNX_OK);
        check_written(sc, T, "scores");
        for (size_t t = 0; t < T; t++) {
            const double *k = K + t * d;
            int knan = 0;
            for (size_t j = 0; j < d; j++) knan |= isnan(k[j]) != 0;
            if (d && (qnan || knan || isnan(scale)) && !isnan(sc[t]))
                fail("scores[%zu] = %.17g with NaN among its inputs", t, sc[t]);
            if (d == 0 && isfinite(scale) && sc[t] != 0.0) fail("d == 0: scores[%zu] = %.17g, expected 0", t, sc[t]);
        }
        if (L == 0) {
            ref = copy_of(sc, T);
            continue;
        }
        if (!tame(&scale, 1) || !tame(q, d)) continue;
        for (size_t t = 0; t < T; t++) {
            const double *k = K + t * d;
            if (!tame(k, d)) continue;
            double mag = score_mag(q, k, d, scale);
            close_to(sc + t, ref + t, &mag, 1, 2.0 * (double)(d + 2) * EPS, 1e-300 * (double)(d + 1),
                     "scores vs scalar");
        }
    }
    free(ref);
}

/* ---- attnx_context */
static void op_context(reader *r, const header *h)
{
    size_t T = h->T, dv = h->dv;
    cur.op = "context";
    buf *bw = in_new("w", T, next_mis()), *bV = in_new("V", T * dv, next_mis());
    fill_values(r, bw);
    fill_values(r, bV);
    const double *w = dp(bw), *V = dp(bV);
    if (pick_invalid(h)) {
        buf *bc = out_new("ctx", dv, next_mis());
        const double *wa = w, *Va = V;
        double *ca = dp(bc);
        size_t Ta = T;
        int expect;
        switch (h->inval % 4) {
        case 0: wa = NULL; expect = ATTNX_ERR_NULL; break;
        case 1: Va = NULL; expect = ATTNX_ERR_NULL; break;
        case 2: ca = NULL; expect = ATTNX_ERR_NULL; break;
        default: Ta = huge_count(h, dv ? dv : 1); expect = ATTNX_ERR_OVERFLOW; break;
        }
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_context (invalid)");
            call_end(attnx_context(wa, Va, Ta, dv, ca), expect);
        }
        return;
    }
    if (pick_overlap(h) && dv > 0 && T > 0) {
        double *ca;
        if (h->inval & 1) ca = dp(bV) + (h->inval >> 1) % (T * dv - dv + 1);   /* inside V */
        else if (T >= dv) ca = dp(bw) + (h->inval >> 1) % (T - dv + 1);        /* inside w */
        else ca = dp(bV);
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_context (overlap)");
            call_end(attnx_context(w, V, T, dv, ca), ATTNX_ERR_OVERLAP);
        }
        return;
    }
    /* value rows of zero weights are never read */
    for (size_t t = 0; t < T; t++)
        if (w[t] == 0.0) buf_deny(bV, t * dv, dv);
    buf *bc = out_new("ctx", dv, next_mis());
    double *ctx = dp(bc), *ref = NULL;
    double *mag = (double *)calloc(dv + 1, sizeof(double));
    if (!mag) abort();
    int tm = tame(w, T);
    for (size_t t = 0; t < T && tm; t++) {
        if (w[t] == 0.0) continue;
        tm = tame(V + t * dv, dv);
        for (size_t j = 0; j < dv; j++) mag[j] += fabs(w[t] * V[t * dv + j]);
    }
    for (size_t L = 0; L < g_nlevels; L++) {
        set_level(g_levels[L]);
        call_begin("attnx_context");
        call_end(attnx_context(w, V, T, dv, ctx), ATTNX_OK);
        check_written(ctx, dv, "ctx");
        for (size_t t = 0; t < T; t++)
            if (isnan(w[t])) all_equal(ctx, dv, NAN, "ctx (a NaN weight)");
        if (T == 0) all_equal(ctx, dv, 0.0, "ctx (T == 0)");
        if (L == 0) {
            ref = copy_of(ctx, dv);
            continue;
        }
        if (tm) close_to(ctx, ref, mag, dv, 2.0 * (double)(T + 2) * EPS, 1e-300 * (double)(T + 1), "ctx vs scalar");
    }
    free(ref);
    free(mag);
}

/* ---- attnx_exp */
static void op_exp(reader *r, const header *h)
{
    size_t n = h->T;
    cur.op = "exp";
    buf *bx = in_new("x", n, next_mis());
    fill_values(r, bx);
    const double *x = dp(bx);
    if (pick_invalid(h)) {
        buf *by = out_new("y", n, next_mis());
        const double *xa = x;
        double *ya = dp(by);
        size_t na = n;
        int expect;
        switch (h->inval % 3) {
        case 0: xa = NULL; expect = ATTNX_ERR_NULL; break;
        case 1: ya = NULL; expect = ATTNX_ERR_NULL; break;
        default: na = huge_count(h, 1); expect = ATTNX_ERR_OVERFLOW; break;
        }
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_exp (invalid)");
            call_end(attnx_exp(xa, na, ya), expect);
        }
        return;
    }
    if (pick_overlap(h) && n > 1) {
        size_t off = 1 + h->inval % (n - 1);
        buf *sh = in_new("x+y", n + off, next_mis());
        fill_values(r, sh);
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_exp (partial overlap)");
            call_end(attnx_exp(dp(sh), n, dp(sh) + off), ATTNX_ERR_OVERLAP);
        }
        return;
    }
    buf *by = out_new("y", n, next_mis());
    buf *bi = buf_new("in-place x", sizeof(double), n, GUARD + next_mis(), GUARD, 1);
    memcpy(bi->init, bx->init, n * sizeof(double));
    double *y = dp(by), *xi = dp(bi), *ref = NULL;
    for (size_t L = 0; L < g_nlevels; L++) {
        set_level(g_levels[L]);
        call_begin("attnx_exp");
        call_end(attnx_exp(x, n, y), ATTNX_OK);
        check_written(y, n, "y");
        for (size_t i = 0; i < n; i++) {
            if (isnan(x[i]) != isnan(y[i])) fail("exp(%.17g) = %.17g", x[i], y[i]);
            if (!isnan(x[i]) && !(y[i] >= 0.0)) fail("exp(%.17g) = %.17g < 0", x[i], y[i]);
            if (x[i] == -INFINITY && y[i] != 0.0) fail("exp(-inf) = %.17g", y[i]);
            if (x[i] == INFINITY && y[i] != INFINITY) fail("exp(inf) = %.17g", y[i]);
            if (x[i] == 0.0 && y[i] != 1.0) fail("exp(0) = %.17g", y[i]);
        }
        double *got = copy_of(y, n);   /* the next call_begin resets y */
        call_begin("attnx_exp (in place)");
        call_end(attnx_exp(xi, n, xi), ATTNX_OK);
        same_bits(xi, got, n, "in-place exp vs out of place");
        if (L == 0) {
            ref = got;
            continue;
        }
        for (size_t i = 0; i < n; i++)
            if (!isnan(x[i]) && ulp_dist(got[i], ref[i]) > 2)
                fail("exp(%.17g) = %.17g, scalar %.17g: %llu ulp apart", x[i], got[i], ref[i],
                     (unsigned long long)ulp_dist(got[i], ref[i]));
        free(got);
    }
    free(ref);
}

/* ---------------------------------------------------------------- batches */

/* Layout of one batched operand: per batch dimension a stride (0 to
 * broadcast, negative when flipped), `gap` unused elements after each
 * matrix. The operand's base is payload - min_off. */
typedef struct {
    ptrdiff_t strides[3];
    size_t msize;
    ptrdiff_t min_off;
    size_t extent;
} layout;

static void make_layout(layout *L, const header *h, size_t msize, unsigned bcast, int neg, size_t gap)
{
    ptrdiff_t run = (ptrdiff_t)(msize + gap), lo = 0, hi = 0;
    memset(L, 0, sizeof *L);
    L->msize = msize;
    for (size_t i = h->nbatch; i-- > 0;) {
        size_t n = h->shape[i];
        int bc = (bcast >> i) & 1;
        ptrdiff_t s = bc ? 0 : run;
        if (!bc) run *= (ptrdiff_t)(n ? n : 1);
        if (neg && ((h->neg >> i) & 1)) s = -s;
        L->strides[i] = s;
        if (n) {
            ptrdiff_t span = (ptrdiff_t)(n - 1) * s;
            if (span < 0) lo += span;
            else hi += span;
        }
    }
    L->min_off = lo;
    L->extent = (size_t)(hi - lo) + msize;
}

static size_t batch_items(const header *h)
{
    size_t c = 1;
    for (size_t i = 0; i < h->nbatch; i++) c *= h->shape[i];
    return c;
}

/* element offset of item b from the operand's base */
static ptrdiff_t item_off(const header *h, const layout *L, size_t b)
{
    ptrdiff_t off = 0;
    for (size_t i = h->nbatch; i-- > 0;) {
        off += (ptrdiff_t)(b % h->shape[i]) * L->strides[i];
        b /= h->shape[i];
    }
    return off;
}

/* Allocate an operand's extent and fill it; every element no item uses is
 * denied. Returns the operand's base pointer. */
static double *batch_operand(reader *r, const header *h, buf **out, const char *name, const layout *L,
                             size_t count)
{
    buf *b = in_new(name, L->extent, next_mis());
    fill_values(r, b);
    double *base = dp(b) - L->min_off;
    buf_deny(b, 0, L->extent);
    for (size_t i = 0; i < count && L->msize; i++)
        memset(b->deny + (base + item_off(h, L, i) - dp(b)), 0, L->msize);
    *out = b;
    return base;
}

/* keep a batched call's cost bounded: shrink Lq, then T */
static void budget(header *h, size_t count, size_t per_key)
{
    while (h->Lq > 1 && (double)count * h->Lq * h->T * (double)(per_key + 1) > WORK_MAX) h->Lq /= 2;
    while (h->T > 1 && (double)count * (h->Lq ? h->Lq : 1) * h->T * (double)(per_key + 1) > WORK_MAX) h->T /= 2;
}

/* The arguments of a batched call that an invalid case may spoil. */
typedef struct {
    const double *in0, *in1, *in2;   /* in2: NULL for the two-operand forms */
    double *out;
    size_t nbatch;
    const size_t *shape;
    const ptrdiff_t *s0, *s1, *s2;
    size_t Lq, T;
    int threads;
} bargs;

/* Spoil one argument; returns the status expected, or -1 when the case
 * does not apply (then nothing is called). per_row: elements a query row
 * reads from its own operand (Lq * per_row is a product the call checks). */
static int spoil(const header *h, bargs *a, size_t count, size_t per_row, int attend_form)
{
    switch (h->inval % (attend_form ? 10 : 9)) {
    case 0: a->in0 = NULL; return ATTNX_ERR_NULL;
    case 1: a->in1 = NULL; return ATTNX_ERR_NULL;
    case 2: if (attend_form) a->in2 = NULL; else a->out = NULL; return ATTNX_ERR_NULL;
    case 3: a->out = NULL; return ATTNX_ERR_NULL;
    case 4: a->threads = -1 - (int)(h->inval >> 4); return ATTNX_ERR_ARG;
    case 5: a->nbatch = ATTNX_MAX_BATCH_DIMS + 1 + (h->inval >> 4); return ATTNX_ERR_ARG;
    case 6:
        if (!a->nbatch) return -1;
        a->shape = NULL;
        return ATTNX_ERR_NULL;
    case 7:
        if (!a->nbatch) return -1;
        if ((h->inval >> 4) & 1) a->s1 = NULL; else a->s0 = NULL;
        return ATTNX_ERR_NULL;
    case 8:
        /* Lq huge: count * Lq or Lq * per_row overflows, unless both are 0 */
        a->Lq = huge_count(h, 1);
        return count || per_row ? ATTNX_ERR_OVERFLOW : ATTNX_OK;
    default: a->T = 0; return ATTNX_ERR_EMPTY;   /* attend only */
    }
}

/* additive attention: query_offset - key_offset, from the scale byte (the
 * additive score has no scale) */
static ptrdiff_t g_diag;

/* attnx_attend_batch, or with v (additive attention) attnx_additive_attention
 * on the same operands: Q and K the projected queries and keys, d their
 * width h, no scale, the queries at g_diag */
static int attention_call(const double *v, const double *Q, const double *K, const double *V, size_t nbatch,
                          const size_t *shape, const ptrdiff_t *sq, const ptrdiff_t *sk, const ptrdiff_t *sv,
                          size_t Lq, size_t T, size_t d, size_t dv, double scale, const unsigned char *M,
                          const ptrdiff_t *sm, ptrdiff_t mrs, int causal, double *ctx, double *w, int threads)
{
    if (v)
        return attnx_additive_attention(Q, K, v, V, nbatch, shape, sq, sk, sv, Lq, T, d, dv, M, sm, mrs, causal,
                                        g_diag, 0, ctx, w, threads);
    return attnx_attend_batch(Q, K, V, nbatch, shape, sq, sk, sv, Lq, T, d, dv, scale, M, sm, mrs, causal, ctx, w,
                              threads);
}

/* The composition attnx_additive_attention stands for, from public calls
 * at the level in use, reading the rows of live keys only: their scores
 * (-inf for the others), the softmax of the whole row (zeros when every
 * score is -inf: no key live, or -inf scores), then the context, NaN for a
 * NaN row (its value rows unread). */
static void additive_row_ref(const att_row *a, const double *v, size_t T, size_t h, size_t dv,
                             const unsigned char *live, double *ctx, double *w)
{
    int none = 1;
    for (size_t t = 0, u; t < T; t = u) {
        for (u = t; u < T && live[u]; u++) {}
        if (u > t) attnx_additive_scores(a->q, a->K + t * h, v, u - t, h, w + t);
        for (; u < T && !live[u]; u++) w[u] = -INFINITY;
    }
    for (size_t t = 0; t < T; t++) none &= w[t] == -INFINITY;
    attnx_softmax(w, T, w);
    if (none)
        for (size_t t = 0; t < T; t++) w[t] = 0.0;
    if (T && isnan(w[0]))
        for (size_t j = 0; j < dv; j++) ctx[j] = NAN;
    else
        attnx_context(w, a->V, T, dv, ctx);
}

/* ---- attnx_attend_batch, and attnx_additive_attention (additive) */
static void op_attend_batch(reader *r, header *h, int additive)
{
    if (pick_invalid(h) && h->T == 0) h->T = 1;   /* one invalid argument at a time */
    size_t count = batch_items(h);
    budget(h, count, additive ? 8 * h->d + h->dv : h->d + h->dv);   /* a tanh costs ~8 FMAs */
    size_t T = h->T, d = h->d, dv = h->dv, Lq = h->Lq, rows = count * Lq;
    int causal = (h->flags & F_CAUSAL) != 0, want_w = (h->flags & F_WEIGHTS) != 0;
    int use_mask = (h->flags & F_MASK) != 0;
    double scale = read_scale(r, h);
    g_diag = additive ? (ptrdiff_t)((int8_t)h->scale_mode / 4) : 0;
    cur.op = additive ? "additive_attention" : "attend_batch";
    cur.T = T;
    cur.Lq = Lq;
    cur.nbatch = h->nbatch;
    layout lq, lk, lv, lm;
    make_layout(&lq, h, Lq * d, h->bc_q, 1, h->gap);
    make_layout(&lk, h, T * d, h->bc_k, 1, h->gap);
    make_layout(&lv, h, T * dv, h->bc_v, 1, h->gap);
    buf *bQ, *bK, *bV;
    double *Qb = batch_operand(r, h, &bQ, "Q", &lq, count);
    double *Kb = batch_operand(r, h, &bK, "K", &lk, count);
    double *Vb = batch_operand(r, h, &bV, "V", &lv, count);
    const double *vv = NULL;
    if (additive) {
        buf *bv = in_new("v", d, next_mis());
        fill_values(r, bv);
        vv = dp(bv);
    }
    /* mask rows: T apart, shared (stride 0), or padded */
    ptrdiff_t mrs = h->mrs_mode == 1 ? 0 : h->mrs_mode == 2 ? (ptrdiff_t)T + 1 + (h->mask_b & 7) : (ptrdiff_t)T;
    size_t mitem = Lq == 0 ? 0 : (size_t)(Lq - 1) * (size_t)mrs + T;
    const unsigned char *Mb = NULL;
    memset(&lm, 0, sizeof lm);
    if (use_mask) {
        make_layout(&lm, h, mitem, h->bc_m, 0, 0);
        buf *bM = buf_new("mask", 1, lm.extent, 0, 0, 0);
        unsigned char *mp = (unsigned char *)bM->p;
        for (size_t from = 0, row = 0; from < lm.extent; from += T ? T : 1, row++)
            fill_mask(r, h, mp + from, lm.extent - from < T ? lm.extent - from : T, row);
        buf_seal(bM);
        Mb = mp;
    }

    if (pick_invalid(h)) {
        buf *bc = out_new("ctx", rows * dv, next_mis()), *bw = out_new("weights", rows * T, next_mis());
        bargs a = {Qb, Kb, Vb, dp(bc), h->nbatch, h->shape, lq.strides, lk.strides, lv.strides, Lq, T, h->threads};
        int expect = spoil(h, &a, count, d, 1);
        if (expect < 0) return;
        /* too many dimensions: arrays long enough for them anyway */
        static size_t shape_big[ATTNX_MAX_BATCH_DIMS + 16];
        static ptrdiff_t str_big[ATTNX_MAX_BATCH_DIMS + 16];
        if (a.nbatch > 3) {
            for (size_t i = 0; i < ATTNX_MAX_BATCH_DIMS + 16; i++) shape_big[i] = 1, str_big[i] = 0;
            a.shape = shape_big;
            a.s0 = a.s1 = a.s2 = str_big;
        }
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("(invalid)");
            int rc = attention_call(vv, a.in0, a.in1, a.in2, a.nbatch, a.shape, a.s0, a.s1, a.s2, a.Lq, a.T, d, dv,
                                    scale, Mb, a.nbatch > 3 ? str_big : lm.strides, mrs, causal, a.out,
                                    want_w ? dp(bw) : NULL, a.threads);
            call_end(rc, expect);
        }
        return;
    }

    if (pick_overlap(h) && rows && T && dv) {
        /* ctx over the first query matrix, or ctx and weights sharing
         * memory: attnx.h says the batched forms return the single-query
         * forms' errors, OVERLAP among them */
        double *ca, *wa = NULL;
        size_t off = h->inval >> 1;
        ptrdiff_t q0 = Qb + item_off(h, &lq, 0) - dp(bQ);
        if ((h->inval & 1) && lq.msize && (size_t)q0 + rows * dv <= lq.extent) {
            ca = dp(bQ) + q0;
            memset(bQ->deny + q0, 0, rows * dv);   /* a clean status check, not an ASan report */
            if (want_w) wa = dp(out_new("weights", rows * T, next_mis()));
        } else {
            size_t o = off % (rows * dv);
            buf *sh = out_new("ctx+weights", o + rows * T > rows * dv ? o + rows * T : rows * dv, next_mis());
            ca = dp(sh);
            wa = dp(sh) + o;
        }
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("(overlapping output)");
            int rc = attention_call(vv, Qb, Kb, Vb, h->nbatch, h->shape, lq.strides, lk.strides, lv.strides, Lq, T,
                                    d, dv, scale, Mb, lm.strides, mrs, causal, ca, wa, h->threads);
            call_end(rc, ATTNX_ERR_OVERLAP);
        }
        return;
    }

    /* live keys of every (item, query); keys no query attends stay unread */
    unsigned char *live = (unsigned char *)malloc(rows * T + 1);
    size_t *nlive = (size_t *)malloc((rows + 1) * sizeof(size_t));
    att_row *ar = (att_row *)malloc((rows + 1) * sizeof(att_row));
    unsigned char *kt = (unsigned char *)calloc(lk.extent + 1, 1), *vt = (unsigned char *)calloc(lv.extent + 1, 1);
    if (!live || !nlive || !ar || !kt || !vt) abort();
    for (size_t b = 0; b < count; b++) {
        for (size_t i = 0; i < Lq; i++) {
            size_t row = b * Lq + i;
            att_row *a = &ar[row];
            a->q = Qb + item_off(h, &lq, b) + i * d;
            a->K = Kb + item_off(h, &lk, b);
            a->V = Vb + item_off(h, &lv, b);
            a->mask = Mb ? Mb + item_off(h, &lm, b) + (ptrdiff_t)i * mrs : NULL;
            ptrdiff_t lim = (ptrdiff_t)i + 1 + g_diag;   /* causal: keys t <= i + g_diag */
            a->lim = !causal || lim >= (ptrdiff_t)T ? T : lim < 0 ? 0 : (size_t)lim;
            nlive[row] = row_live(a, T, live + row * T);
            for (size_t t = 0; t < T; t++) {
                if (!live[row * T + t]) continue;
                memset(kt + (a->K - dp(bK)) + t * d, 1, d);
                memset(vt + (a->V - dp(bV)) + t * dv, 1, dv);
            }
        }
    }
    for (size_t e = 0; e < lk.extent; e++)
        if (!kt[e]) bK->deny[e] = 1;
    for (size_t e = 0; e < lv.extent; e++)
        if (!vt[e]) bV->deny[e] = 1;
    free(kt);
    free(vt);

    buf *bc = out_new("ctx", rows * dv, next_mis()), *bw = out_new("weights", rows * T, next_mis());
    buf *brc = out_new("reference ctx", dv, 0), *brw = out_new("reference weights", T, 0);
    int expect = T == 0 ? ATTNX_ERR_EMPTY : ATTNX_OK;
    double *ref_c = (double *)malloc((rows * dv + 1) * sizeof(double));
    double *ref_w = (double *)malloc((rows * T + 1) * sizeof(double));
    row_tol *rts = (row_tol *)calloc(rows + 1, sizeof(row_tol));
    if (!ref_c || !ref_w || !rts) abort();
    /* the reference: each row through the single-query call at the scalar
     * level (two-pass, so that the weights come with it); for additive
     * attention, the composition at each level, below */
    if (expect == ATTNX_OK && !additive) {
        set_level("scalar");
        for (size_t row = 0; row < rows; row++) {
            const att_row *a = &ar[row];
            call_begin("attnx_attend (reference row)");
            call_end(attnx_attend(a->q, a->K, a->V, a->lim, d, dv, scale, a->mask, dp(brc), dp(brw)), ATTNX_OK);
            memcpy(ref_c + row * dv, dp(brc), dv * sizeof(double));
            memcpy(ref_w + row * T, dp(brw), a->lim * sizeof(double));
            for (size_t t = a->lim; t < T; t++) ref_w[row * T + t] = 0.0;
            row_tol_init(&rts[row], a, T, d, dv, scale, live + row * T, ref_w + row * T);
        }
    }
    for (size_t L = 0; L < g_nlevels; L++) {
        set_level(g_levels[L]);
        for (size_t row = 0; additive && expect == ATTNX_OK && row < rows; row++)
            additive_row_ref(&ar[row], vv, T, d, dv, live + row * T, ref_c + row * dv, ref_w + row * T);
        for (int fused = 0; fused < 2; fused++) {
            if (fused && want_w) break;   /* weights wanted: the two-pass call only */
            call_begin(fused ? "(fused)" : "(weights)");
            int rc = attention_call(vv, Qb, Kb, Vb, h->nbatch, h->shape, lq.strides, lk.strides, lv.strides, Lq, T,
                                    d, dv, scale, Mb, lm.strides, mrs, causal, dp(bc), fused ? NULL : dp(bw),
                                    h->threads);
            call_end(rc, expect);
            if (rc != ATTNX_OK) continue;
            check_written(dp(bc), rows * dv, "ctx");
            if (!fused) check_written(dp(bw), rows * T, "weights");
            for (size_t row = 0; row < rows; row++) {
                char what[128];
                snprintf(what, sizeof what, "%s row %zu (item %zu, query %zu)", fused ? "fused" : "two-pass", row,
                         row / Lq, row % Lq);
                const double *c = dp(bc) + row * dv, *w = fused ? NULL : dp(bw) + row * T;
                check_attend_row(&ar[row], T, d, dv, additive ? 1.0 : scale, c, w, live + row * T, nlive[row], what);
                if (!additive) {
                    compare_row(&rts[row], T, dv, c, w, ref_c + row * dv, ref_w + row * T, what);
                    continue;
                }
                /* the composition of public calls, bit for bit */
                same_bits(c, ref_c + row * dv, dv, what);
                if (w) same_bits(w, ref_w + row * T, T, what);
            }
        }
    }
    for (size_t row = 0; row < rows; row++) free(rts[row].mag);
    free(rts);
    free(ref_c);
    free(ref_w);
    free(live);
    free(nlive);
    free(ar);
}

/* ---- attnx_dot_scores_batch and attnx_context_batch */
static void op_batch2(reader *r, header *h, int ctx_form)
{
    size_t count = batch_items(h);
    budget(h, count, ctx_form ? h->dv : h->d);
    size_t T = h->T, d = h->d, dv = h->dv, Lq = h->Lq, rows = count * Lq;
    size_t inner = ctx_form ? dv : d, cols = ctx_form ? dv : T;
    double scale = ctx_form ? 1.0 : read_scale(r, h);
    cur.op = ctx_form ? "context_batch" : "dot_scores_batch";
    cur.T = T;
    cur.Lq = Lq;
    cur.nbatch = h->nbatch;
    /* dot: Q (Lq x d) and K (T x d); context: W (Lq x T) and V (T x dv) */
    layout l0, l1;
    make_layout(&l0, h, ctx_form ? Lq * T : Lq * d, h->bc_q, 1, h->gap);
    make_layout(&l1, h, T * inner, h->bc_k, 1, h->gap);
    buf *b0, *b1;
    double *A = batch_operand(r, h, &b0, ctx_form ? "W" : "Q", &l0, count);
    double *B = batch_operand(r, h, &b1, ctx_form ? "V" : "K", &l1, count);

    if (pick_invalid(h)) {
        buf *bo = out_new("out", rows * cols, next_mis());
        bargs a = {A, B, NULL, dp(bo), h->nbatch, h->shape, l0.strides, l1.strides, NULL, Lq, T, h->threads};
        int expect = spoil(h, &a, count, ctx_form ? T : d, 0);
        if (expect < 0) return;
        static size_t shape_big[ATTNX_MAX_BATCH_DIMS + 16];
        static ptrdiff_t str_big[ATTNX_MAX_BATCH_DIMS + 16];
        if (a.nbatch > 3) {
            for (size_t i = 0; i < ATTNX_MAX_BATCH_DIMS + 16; i++) shape_big[i] = 1, str_big[i] = 0;
            a.shape = shape_big;
            a.s0 = a.s1 = str_big;
        }
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin(ctx_form ? "attnx_context_batch (invalid)" : "attnx_dot_scores_batch (invalid)");
            int rc = ctx_form ? attnx_context_batch(a.in0, a.in1, a.nbatch, a.shape, a.s0, a.s1, a.Lq, a.T, dv, a.out,
                                                    a.threads)
                              : attnx_dot_scores_batch(a.in0, a.in1, a.nbatch, a.shape, a.s0, a.s1, a.Lq, a.T, d,
                                                       scale, a.out, a.threads);
            call_end(rc, expect);
        }
        return;
    }
    if (pick_overlap(h) && rows && cols) {
        /* the output over the first item of an input (attnx.h: the batched
         * forms return the single-query forms' errors, OVERLAP among them) */
        buf *in = (h->inval & 1) ? b1 : b0;
        const layout *lin = (h->inval & 1) ? &l1 : &l0;
        double *base = (h->inval & 1) ? B : A;
        ptrdiff_t o = base + item_off(h, lin, 0) - dp(in);
        double *oa;
        if (lin->msize && (size_t)o + rows * cols <= lin->extent) {
            oa = dp(in) + o;
            memset(in->deny + o, 0, rows * cols);   /* a clean status check, not an ASan report */
        } else {
            return;
        }
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin(ctx_form ? "attnx_context_batch (overlap)" : "attnx_dot_scores_batch (overlap)");
            int rc = ctx_form ? attnx_context_batch(A, B, h->nbatch, h->shape, l0.strides, l1.strides, Lq, T, dv, oa,
                                                    h->threads)
                              : attnx_dot_scores_batch(A, B, h->nbatch, h->shape, l0.strides, l1.strides, Lq, T, d,
                                                       scale, oa, h->threads);
            call_end(rc, ATTNX_ERR_OVERLAP);
        }
        return;
    }
    if (ctx_form) {
        /* V rows whose weight is 0 in every row that uses them stay unread */
        unsigned char *vt = (unsigned char *)calloc(l1.extent + 1, 1);
        if (!vt) abort();
        for (size_t b = 0; b < count; b++) {
            const double *Wi = A + item_off(h, &l0, b), *Vi = B + item_off(h, &l1, b);
            for (size_t i = 0; i < Lq; i++)
                for (size_t t = 0; t < T; t++)
                    if (Wi[i * T + t] != 0.0) memset(vt + (Vi - dp(b1)) + t * dv, 1, dv);
        }
        for (size_t e = 0; e < l1.extent; e++)
            if (!vt[e]) b1->deny[e] = 1;
        free(vt);
    }
    buf *bo = out_new("out", rows * cols, next_mis()), *br = out_new("reference row", cols, 0);
    double *ref = (double *)malloc((rows * cols + 1) * sizeof(double));
    double *mag = (double *)malloc((rows * cols + 1) * sizeof(double));
    unsigned char *rtame = (unsigned char *)malloc(rows * cols + 1);
    if (!ref || !mag || !rtame) abort();
    /* the reference: each row through the single-query call, scalar level */
    set_level("scalar");
    for (size_t b = 0; b < count; b++) {
        const double *Ai = A + item_off(h, &l0, b), *Bi = B + item_off(h, &l1, b);
        for (size_t i = 0; i < Lq; i++) {
            size_t row = b * Lq + i;
            call_begin("reference row");
            int rc = ctx_form ? attnx_context(Ai + i * T, Bi, T, dv, dp(br))
                              : attnx_dot_scores(Ai + i * d, Bi, T, d, scale, dp(br));
            call_end(rc, ATTNX_OK);
            memcpy(ref + row * cols, dp(br), cols * sizeof(double));
            for (size_t c = 0; c < cols; c++) {
                double *m = mag + row * cols + c;
                unsigned char *tm = rtame + row * cols + c;
                if (ctx_form) {
                    const double *w = Ai + i * T;
                    *m = 0.0;
                    *tm = (unsigned char)tame(w, T);
                    for (size_t t = 0; t < T; t++) {
                        if (w[t] == 0.0) continue;
                        double v = Bi[t * dv + c];
                        *tm &= fabs(v) < TAME;
                        *m += fabs(w[t] * v);
                    }
                } else {
                    *m = score_mag(Ai + i * d, Bi + c * d, d, scale);
                    *tm = (unsigned char)(tame(&scale, 1) && tame(Ai + i * d, d) && tame(Bi + c * d, d));
                }
            }
        }
    }
    double rel = 2.0 * (double)((ctx_form ? T : d) + 2) * EPS;
    for (size_t L = 0; L < g_nlevels; L++) {
        set_level(g_levels[L]);
        call_begin(ctx_form ? "attnx_context_batch" : "attnx_dot_scores_batch");
        int rc = ctx_form ? attnx_context_batch(A, B, h->nbatch, h->shape, l0.strides, l1.strides, Lq, T, dv, dp(bo),
                                                h->threads)
                          : attnx_dot_scores_batch(A, B, h->nbatch, h->shape, l0.strides, l1.strides, Lq, T, d, scale,
                                                   dp(bo), h->threads);
        call_end(rc, ATTNX_OK);
        check_written(dp(bo), rows * cols, "out");
        for (size_t e = 0; e < rows * cols; e++) {
            const double *o = dp(bo) + e;
            if (rtame[e])
                close_to(o, ref + e, mag + e, 1, rel, 1e-300 * (double)(T + d + 1), "batched vs single-row scalar");
            else if (L == 0 && isnan(ref[e]) != isnan(*o))
                fail("out[%zu] = %.17g, the same row through the single call %.17g", e, *o, ref[e]);
        }
    }
    free(ref);
    free(mag);
    free(rtame);
}

/* ------------------------------------------------------------- entry */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* the levels of this CPU and build, scalar first: the reference */
    static char names[128];
    snprintf(names, sizeof names, "%s", attnx_simd_available());
    g_levels[g_nlevels++] = "scalar";
    for (char *tok = strtok(names, " "); tok && g_nlevels < MAX_LEVELS; tok = strtok(NULL, " "))
        if (strcmp(tok, "scalar") != 0) g_levels[g_nlevels++] = tok;
    fprintf(stderr, "attnx fuzz: levels");
    for (size_t i = 0; i < g_nlevels; i++) fprintf(stderr, " %s", g_levels[i]);
    fprintf(stderr, "; %s\n", attnx_build_info());
    /* the level switch itself */
    cur.op = "set_simd_level";
    if (attnx_set_simd_level(NULL) != ATTNX_ERR_NULL) fail("set_simd_level(NULL)");
    if (attnx_set_simd_level("sse9") != ATTNX_ERR_ARG) fail("set_simd_level(sse9)");
    int has_neon = strstr(attnx_simd_available(), "neon") != NULL;
    if (!has_neon && attnx_set_simd_level("neon") != ATTNX_ERR_UNSUPPORTED) fail("set_simd_level(neon)");
    if (attnx_set_simd_level("best") != ATTNX_OK) fail("set_simd_level(best)");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_nlevels) LLVMFuzzerInitialize(NULL, NULL);
    reader r = {data, size, 0, 0x9e3779b97f4a7c15ULL ^ size, 1.0};
    for (size_t i = 0; i < size && i < 64; i++) r.rng = (r.rng ^ data[i]) * 0x100000001b3ULL;
    header h;
    read_header(&r, &h);
    memset(&cur, 0, sizeof cur);
    cur.T = h.T;
    cur.d = h.d;
    cur.dv = h.dv;
    cur.Lq = h.Lq;
    g_mis_a = h.mis_a;
    g_mis_b = h.mis_b;
    g_nmis = 0;
    switch (h.op) {
    case 0:
    case 1: op_attend(&r, &h); break;
    case 2: op_softmax(&r, &h, 0); break;
    case 3: op_dot_scores(&r, &h); break;
    case 4: op_context(&r, &h); break;
    case 5: op_exp(&r, &h); break;
    case 6: op_attend_batch(&r, &h, 0); break;
    case 7: op_softmax(&r, &h, 1); break;
    case 8: op_batch2(&r, &h, 0); break;
    case 9: op_batch2(&r, &h, 1); break;
    default: op_attend_batch(&r, &h, 1); break;
    }
    bufs_free();
    return 0;
}

#if defined(FUZZ_STANDALONE)
/* Replay inputs without libFuzzer: fuzz_attnx FILE... */
int main(int argc, char **argv)
{
    LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            return 2;
        }
        static uint8_t buf_[1 << 20];
        size_t n = fread(buf_, 1, sizeof buf_, f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf_, n);
    }
    fprintf(stderr, "attnx fuzz: %d input(s) passed\n", argc - 1);
    return 0;
}
#endif
