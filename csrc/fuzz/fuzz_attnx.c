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
 *     gcc -std=c99 -g -fsanitize=address,undefined -DFUZZ_STANDALONE -Icsrc -Icsrc/include \
 *         csrc/fuzz/fuzz_attnx.c /tmp/fz/libattnx.a -lm -pthread -o /tmp/fz/replay
 *     /tmp/fz/replay csrc/fuzz/corpus/seed-* csrc/fuzz/corpus/bug-*
 *
 * Out of reach by design: the flash-decoding split of one long query
 * (T >= 4096 and threads; .ci/fuzz.sh builds with -DATTNX_NO_THREADS so
 * that runs are deterministic) and attnx_attention's split-K (T >= 8192);
 * .ci/sanitize.sh's pytest run and csrc/tests/test_attention.c cover them.
 *
 * One input drives one operation, chosen by its first byte, at every SIMD
 * level (attnx_set_simd_level), scalar first as the reference:
 *   attnx_attend (fused and two-pass), attnx_softmax (in place and not;
 *   with attnx_log_softmax and _f32 on the same rows), attnx_dot_scores,
 *   attnx_context, attnx_exp, attnx_attend_batch, attnx_softmax_rows
 *   (with attnx_log_softmax_rows), attnx_dot_scores_batch, attnx_context_batch;
 *   and (first byte >= 0x80) attnx_attention with every option (fused and
 *   two-pass), chunks of keys merged by attnx_merge_attention,
 *   attnx_merge_attention on partials from the data, and
 *   attnx_attention_backward, each in float64 or float32; and
 *   attnx_additive_attention.
 *
 * Input layout (bytes past the end read as 0 in the header; past the end of
 * the data, values come from a small generator seeded by the input):
 *   0  op: below 0x80, mod 10: 0,1 attend; 2 softmax; 3 dot_scores;
 *      4 context; 5 exp; 6 attend_batch; 7 softmax_rows; 8 dot_scores_batch;
 *      9 context_batch. From 0x80 (no input of older harnesses has one),
 *      bits 0-1: 10 attention; 11 merge of key chunks; 12 merge of partials
 *      from the data; 13 attention_backward; bit 2: the _f32 function.
 *      But with bits 3 and 4 set too (0x98-0x9f, 0xb8-0xbf, 0xd8-0xdf,
 *      0xf8-0xff): additive_attention, read as attend_batch with d the
 *      additive width h, Q and K the projected queries and keys, and v
 *      (h values) after V
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
 * Ops 10, 11 and 13 read the header above, then 12 more bytes (xheader;
 * make_corpus.py writes them), then their values:
 *   21 options: 1 bias, 2 ALiBi slopes, 4 key lengths, 8 window,
 *      16 lower_right, 32 softcap, 64 lse wanted
 *   22 bias: bits 0-1 row stride (T, 0, padded, -T), bit 2 column stride 0,
 *      bits 3-5 batch broadcast, bit 6 NaN at one entry a seen key adds
 *      (picked by byte 23), bit 7 NaN at every entry no seen key adds
 *   24 broadcast bits of the slopes (0-2) and key lengths (3-5); how the key
 *      lengths are drawn (6-7: data, T, up to T/2, first 0)
 *   25, 26 window_left, window_right (signed: < 0 unbounded)
 *   27, 28 query_offset, key_offset (signed)
 *   29 offsets: bits 0-1 as they are, + T - Lq, 2^61 apart (no ALiBi), x 16
 *   30 softcap: bits 0-2 from the data or 1, 5, 30, 0.5, 1e-3, 1e4, 2
 *   31 struct size: bits 0-1 ours, version 3's (no version-4 field), larger
 *      with a zero tail
 *   32 merge: chunks - 1 (mod 4); backward: grad_out broadcast bits
 * and then: scale, softcap, Q, K, V, mask, bias, slopes, key lengths (a byte
 * each), chunk cuts or grad_out. Op 12 (merge of partials) takes P = 1 +
 * d % 8, rows = Lq and dv from the header; outs, then lses (with mask: a
 * byte a partial, odd makes its lse -inf). The struct is handed over in a
 * buffer of exactly its size, so reading past it is an ASan report.
 *
 * Every buffer is allocated for exactly its contents, behind and ahead of
 * poisoned guard zones that hold canaries (ASan reports any access; without
 * ASan the canaries still catch stray writes). Memory the contract says is
 * never read is poisoned for the duration of each call: masked (and, with
 * causal, future) key and value rows, value rows whose weight is exactly 0
 * in attnx_context, and the gaps between batch items. For attnx_attention
 * and its backward: the key and value rows no row of any item sharing them
 * sees (beyond its key length, outside its window or causal range, masked),
 * bias padding between rows (the bias of unseen keys may be read); for the
 * merge, the partial outs whose lse is -inf.
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
 * attnx_attention (ops 10, 11): every status code of attnx_api.def one
 * invalid argument at a time (NULL params or pointers, size too small, a
 * newer struct with a nonzero unknown field, num_threads, nbatch, NULL
 * shape or strides, causal / window / lower_right not 0 or 1, softcap < 0,
 * NaN or inf, bias_col_stride, a key length outside [0, T], T == 0, Lq and
 * offset overflows) and every output over every input or over another
 * output, nothing written; then, at each level, fused and two-pass:
 *   - against a reference in long double spelled out from attnx_api.def
 *     (the seen set from key lengths, mask, causal, window, lower_right and
 *     offsets; scores scaled, softcapped with tanhl, biased, minus slope *
 *     |pos - t|): a row that sees nothing gives zeros, lse -inf and zero
 *     weights; unseen keys weigh exactly 0 (NaN in a NaN row); NaN reaching
 *     a seen score (query, scale, key row, bias entry, slope) makes the row
 *     NaN; on tame rows the class (NaN exactly when a seen bias entry is)
 *     and, when well conditioned, weights, out and lse within bounds that
 *     grow with the scores' error (the same bounds at float32's epsilon);
 *   - fused within twice that of two-pass, each level of scalar, and a
 *     fused out finite wherever the two-pass one is;
 *   - NaN at bias entries no seen key adds changes no bit (a clean copy);
 *   - op 11: the keys cut in up to 4 chunks (key_offset moved, key lengths
 *     cut), each attended with lse, merged: within the reference's bound.
 * attnx_merge_attention (op 12): status codes; a NaN lse makes its row NaN,
 * all -inf gives zeros and -inf; else out and lse within a bound of a long
 * double reference; the same bits at every level.
 * attnx_attention_backward (op 13): the status codes (those of the forward,
 * NULL gradients, out, lse, grad_out or their strides, weights set) and
 * overlaps (a gradient over any input or another gradient); the forward's
 * out and lse as inputs; every gradient written; a row that sees nothing
 * and a key no row sees get exactly 0 (unless a NaN row of the item makes
 * them NaN); dQ, dK, dV against the long double gradients of the reference
 * within bounds from their terms' magnitudes, and each level against scalar.
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
#define UNWRITTEN_F32_BITS 0x7fa0beefU   /* a float signalling NaN */

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
    unsigned op, f32, flags;
    size_t T, d, dv, Lq;
    size_t nbatch, shape[3];
    unsigned bc_q, bc_k, bc_v, bc_m, gap, mrs_mode, neg;
    unsigned scale_mode;
    unsigned mask_mode, mask_a, mask_b;
    unsigned mis_a, mis_b;
    unsigned inval;
    int threads;
} header;

/* the op number of additive attention (first bytes: see the top) */
#define OP_ADDITIVE 14

enum {
    F_MASK = 1, F_CAUSAL = 2, F_WEIGHTS = 4, F_INPLACE = 8, F_OVERLAP = 16, F_INVALID = 32,
    F_WIDE = 64, F_ALIAS = 128
};

static void read_header(reader *r, header *h)
{
    /* < 0x80: the ops of the first ten (as ever); >= 0x80: the struct entry
     * point and friends (10 + bits 0-1), bit 2 their float32 form; bits 3
     * and 4 both set: additive attention */
    unsigned op = hdr(r);
    h->op = op < 0x80 ? op % 10 : (op & 0x18) == 0x18 ? OP_ADDITIVE : 10 + (op & 3);
    h->f32 = op >= 0x80 && (op & 4) && h->op != OP_ADDITIVE;
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

#define MAX_BUFS 64
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
    } else if (output && esize == sizeof(float)) {
        for (size_t i = 0; i < n; i++) memcpy(b->init + 4 * i, &(uint32_t){UNWRITTEN_F32_BITS}, 4);
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

/* log-softmax of one row in long double, by attnx_api.def's rules: NaN
 * anywhere or all -inf gives NaN; a +inf gives NaN there and -inf
 * elsewhere; else (x - max) - log1p(R), R the exps of every entry but the
 * first maximal one (x - max exact in long double's 64-bit significand to
 * within 2^-64 of itself). */
static void log_softmax_ref(const double *x, size_t n, long double *ref)
{
    int nan = 0;
    double m = -INFINITY;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        nan |= isnan(x[i]) != 0;
        if (x[i] > m) {
            m = x[i];
            at = i;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (nan || m == -INFINITY) ref[i] = NAN;
        else if (m == INFINITY) ref[i] = x[i] == INFINITY ? NAN : -INFINITY;
    }
    if (nan || m == -INFINITY || m == INFINITY) return;
    long double R = 0.0L;
    for (size_t i = 0; i < n; i++)
        if (i != at) R += expl((long double)x[i] - (long double)m);
    long double ls = log1pl(R);
    for (size_t i = 0; i < n; i++) ref[i] = ((long double)x[i] - (long double)m) - ls;
}

/* got within ulps of the long double reference (eps the dtype's epsilon,
 * tiny its smallest subnormal: each of the n exps rounds to that grid) */
static void log_softmax_close(const long double *ref, size_t n, size_t i0, double got, int f32,
                              const char *what)
{
    const long double e = ref[i0];
    const double eps = f32 ? FLT_EPSILON : EPS, tiny = f32 ? 0x1p-149 : 0x1p-1074;
    const double er = f32 ? (double)(float)e : (double)e;   /* beyond the dtype: -inf */
    if (isnan(e) || isnan(got)) {
        if (isnan(e) != isnan(got)) fail("%s[%zu] = %.17g, reference %.17Lg", what, i0, got, e);
        return;
    }
    if (isinf(er) || isinf(got)) {
        if (got != er) fail("%s[%zu] = %.17g, reference %.17Lg", what, i0, got, e);
        return;
    }
    if (got > 0) fail("%s[%zu] = %.17g > 0", what, i0, got);
    long double tol = 4.0L * eps * fabsl(e) + (long double)(n + 4) * tiny;
    if (!(fabsl((long double)got - e) <= tol))
        fail("%s[%zu] = %.17g, reference %.17Lg: |diff| %.3Lg > tolerance %.3Lg", what, i0, got, e,
             fabsl((long double)got - e), tol);
}

/* attnx_log_softmax_rows (and _f32 on x rounded to float) at this level:
 * against the long double reference within 4 ulp, row by row
 * (attnx_log_softmax) and in place bit-identical; *ref64 / *ref32 hold the
 * first level's results, which the others must match within a few ulp */
static void check_log_softmax(const double *x, size_t rows, size_t n, int threads, double **ref64,
                              float **ref32)
{
    size_t total = rows * n;
    double *y = (double *)malloc(total * sizeof(double) + 8), *yi = copy_of(x, total);
    float *xf = (float *)malloc(total * sizeof(float) + 4), *yf = (float *)malloc(total * sizeof(float) + 4);
    long double *ref = (long double *)malloc((n + 1) * sizeof(long double));
    double *xd = (double *)malloc((n + 1) * sizeof(double));
    if (!y || !xf || !yf || !ref || !xd) abort();
    for (size_t i = 0; i < total; i++) xf[i] = (float)x[i];
    cur.call = "log_softmax_rows";
    int rc = attnx_log_softmax_rows(x, rows, n, y, threads);
    if (rc != ATTNX_OK) fail("status %d (%s)", rc, attnx_strerror(rc));
    cur.call = "log_softmax_rows (in place)";
    rc = attnx_log_softmax_rows(yi, rows, n, yi, threads);
    if (rc != ATTNX_OK) fail("status %d (%s)", rc, attnx_strerror(rc));
    same_bits(yi, y, total, "in-place log_softmax vs out of place");
    cur.call = "log_softmax_rows_f32";
    rc = attnx_log_softmax_rows_f32(xf, rows, n, yf, threads);
    if (rc != ATTNX_OK) fail("status %d (%s)", rc, attnx_strerror(rc));
    for (size_t r = 0; r < rows; r++) {
        const double *xr = x + r * n;
        cur.call = "log_softmax (a row)";
        rc = attnx_log_softmax(xr, n, yi);
        if (rc != ATTNX_OK) fail("status %d (%s)", rc, attnx_strerror(rc));
        same_bits(yi, y + r * n, n, "attnx_log_softmax row by row vs log_softmax_rows");
        log_softmax_ref(xr, n, ref);
        for (size_t i = 0; i < n; i++) log_softmax_close(ref, n, i, y[r * n + i], 0, "log_softmax");
        for (size_t i = 0; i < n; i++) xd[i] = (double)xf[r * n + i];
        log_softmax_ref(xd, n, ref);
        for (size_t i = 0; i < n; i++)
            log_softmax_close(ref, n, i, (double)yf[r * n + i], 1, "log_softmax_f32");
    }
    if (!*ref64) {
        *ref64 = copy_of(y, total);
        *ref32 = (float *)malloc(total * sizeof(float) + 4);
        if (!*ref32) abort();
        memcpy(*ref32, yf, total * sizeof(float));
    } else {
        close_to(y, *ref64, NULL, total, 8.0 * EPS, 8e-323, "log_softmax vs the first level");
        for (size_t i = 0; i < total; i++) {
            double a = (double)yf[i], b = (double)(*ref32)[i];
            if (!(a == b || (isnan(a) && isnan(b)) || fabs(a - b) <= 8.0 * FLT_EPSILON * fmax(fabs(a), fabs(b)) + 1e-44))
                fail("log_softmax_f32[%zu] = %.9g, first level %.9g", i, a, b);
        }
    }
    free(y);
    free(yi);
    free(xf);
    free(yf);
    free(ref);
    free(xd);
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
    double *y = dp(by), *xi = dp(bi), *ref = NULL, *lref64 = NULL;
    float *lref32 = NULL;
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
        if (total) check_log_softmax(x, rows, n, threads, &lref64, &lref32);
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
    free(lref64);
    free(lref32);
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

/* ================================================================== */
/* attnx_attention (every option), attnx_merge_attention and           */
/* attnx_attention_backward, float64 and float32 (ops 10-13)           */
/* ================================================================== */

#define TAME_F32 1e8   /* float32: |x| below this keeps scores, sums and gradients finite */

/* element i of a float64 or float32 array, as a double */
static double elv(const void *base, ptrdiff_t i, int f32)
{
    return f32 ? (double)((const float *)base)[i] : ((const double *)base)[i];
}

static void elset(void *base, ptrdiff_t i, double x, int f32)
{
    if (f32) ((float *)base)[i] = (float)x;
    else ((double *)base)[i] = x;
}

static int tame_lim(double x, double lim) { return fabs(x) < lim; }

/* An output of either element type: every element written, then as doubles */
static void read_out(const buf *b, double *dst, const char *what)
{
    for (size_t i = 0; i < b->n; i++) {
        if (b->esize == sizeof(float)) {
            uint32_t u;
            memcpy(&u, (const unsigned char *)b->p + 4 * i, 4);
            if (u == UNWRITTEN_F32_BITS) fail("%s[%zu] not written", what, i);
        } else if (bits_of(dp(b)[i]) == UNWRITTEN_BITS) {
            fail("%s[%zu] not written", what, i);
        }
        dst[i] = elv(b->p, (ptrdiff_t)i, b->esize == sizeof(float));
    }
}

static double *dalloc(size_t n)
{
    double *x = (double *)calloc(n + 1, sizeof(double));
    if (!x) abort();
    return x;
}

static buf *in_new_e(const char *name, size_t n, unsigned mis, size_t es)
{
    return buf_new(name, es, n, mis & 7, 1, 0);
}

static buf *out_new_e(const char *name, size_t n, unsigned mis, size_t es)
{
    return buf_new(name, es, n, GUARD + (mis & 7), GUARD, 1);
}

static void fill_values_e(reader *r, buf *b, int f32)
{
    for (size_t i = 0; i < b->n; i++) elset(b->p, (ptrdiff_t)i, value(r), f32);
    buf_seal(b);
}

/* a count whose product with per (>= 1) elements of es bytes overflows size_t */
static size_t huge_count_e(const header *h, size_t per, size_t es)
{
    return SIZE_MAX / (per ? per : 1) / es + 1 + (h->inval >> 4);
}

/* A batched operand of either type, `pad` spare (denied) elements after its
 * extent (room for an output placed over it). Returns the base pointer. */
static void *batch_operand_e(reader *r, const header *h, buf **out, const char *name, const layout *L,
                             size_t count, int f32, size_t pad)
{
    size_t es = f32 ? 4 : 8;
    buf *b = in_new_e(name, L->extent + pad, next_mis(), es);
    fill_values_e(r, b, f32);
    char *base = (char *)b->p - L->min_off * (ptrdiff_t)es;
    buf_deny(b, 0, b->n);
    for (size_t i = 0; i < count && L->msize; i++)
        memset(b->deny + (item_off(h, L, i) - L->min_off), 0, L->msize);
    *out = b;
    return base;
}

/* The extension header of ops 10-13: 12 bytes after the 21 of the header. */
typedef struct {
    unsigned opts;
    unsigned bias_mode, bias_pick;
    unsigned bc_slope, bc_klen, klen_mode;
    int wl, wr, qoff, koff;
    unsigned off_mode, cap_mode, size_mode, aux;
} xheader;

enum {
    A_BIAS = 1, A_ALIBI = 2, A_KLEN = 4, A_WINDOW = 8, A_LOWER_RIGHT = 16, A_SOFTCAP = 32, A_LSE = 64,
    A_V4 = A_BIAS | A_ALIBI | A_KLEN | A_WINDOW | A_LOWER_RIGHT | A_SOFTCAP
};

static int sbyte(unsigned b) { return b < 128 ? (int)b : (int)b - 256; }

static void read_xheader(reader *r, xheader *x)
{
    x->opts = hdr(r);
    x->bias_mode = hdr(r);
    x->bias_pick = hdr(r);
    unsigned b = hdr(r);
    x->bc_slope = b & 7;
    x->bc_klen = (b >> 3) & 7;
    x->klen_mode = b >> 6;
    x->wl = sbyte(hdr(r));
    x->wr = sbyte(hdr(r));
    x->qoff = sbyte(hdr(r));
    x->koff = sbyte(hdr(r));
    x->off_mode = hdr(r);
    x->cap_mode = hdr(r);
    x->size_mode = hdr(r);
    x->aux = hdr(r);
}

/* Everything one attention call reads, and what the rules make of it. */
typedef struct {
    const header *h;
    int f32;
    size_t es;
    double eps, tl, tiny;     /* rounding unit, tame limit, absolute tolerance unit */
    size_t count, Lq, T, d, dv, rows;
    unsigned opts;            /* the A_* options in force */
    layout lq, lk, lv, lm, lb, ls, ll;
    buf *bQ, *bK, *bV, *bM, *bB, *bBc, *bS, *bL;
    const char *Q, *K, *V, *B, *Bc, *S;   /* bases (B, Bc: row 0 of item 0's layout) */
    const unsigned char *M;
    const long long *KL;
    ptrdiff_t mrs, brs, bcs, bmin;
    double scale, softcap;
    double cap;               /* softcap as the element type holds it (0: none) */
    double umin;              /* the element type's smallest subnormal */
    int causal, lower_right, window, alias;
    ptrdiff_t wl, wr, qoff, koff;
    size_t psize;             /* the params struct's size */
    /* derived */
    unsigned char *seen;      /* rows x T: key t seen by row */
    size_t *nseen;            /* rows */
    size_t *Tb;               /* count: keys of each item */
    long double *pos;         /* rows: the query's position in key indices */
} att;

static void att_free(att *a)
{
    free(a->seen);
    free(a->nseen);
    free(a->Tb);
    free(a->pos);
}

/* element offsets of item b's row i from each base */
static ptrdiff_t q_at(const att *a, size_t b, size_t i) { return item_off(a->h, &a->lq, b) + (ptrdiff_t)(i * a->d); }
static ptrdiff_t k_at(const att *a, size_t b, size_t t) { return item_off(a->h, &a->lk, b) + (ptrdiff_t)(t * a->d); }
static ptrdiff_t v_at(const att *a, size_t b, size_t t)
{
    return item_off(a->h, a->alias ? &a->lk : &a->lv, b) + (ptrdiff_t)(t * a->dv);
}
static ptrdiff_t b_at(const att *a, size_t b, size_t i, size_t t)
{
    return item_off(a->h, &a->lb, b) + (ptrdiff_t)i * a->brs + (ptrdiff_t)t * a->bcs;
}

static size_t overlap_pad(const att *a, const header *h, size_t es)
{
    if (!(h->flags & F_OVERLAP)) return 0;
    return (a->rows * (a->T + a->dv + a->d + 1) * 8 + 64) / es;
}

/* Read the operands (scale, softcap, Q, K, V, mask, bias, slopes, key
 * lengths, in that order from the data) and find the keys each row sees.
 * merge: positions as explicit offsets (lower_right folded in when it can
 * be), so that chunks of keys are the same problem with key_offset moved. */
static void att_setup(reader *r, header *h, const xheader *x, att *a, int merge)
{
    memset(a, 0, sizeof *a);
    if (pick_invalid(h) && h->T == 0) h->T = 1;   /* one invalid argument at a time */
    size_t count = batch_items(h);
    budget(h, count, h->d + h->dv);
    a->h = h;
    a->f32 = (int)h->f32;
    a->es = a->f32 ? 4 : 8;
    a->eps = a->f32 ? FLT_EPSILON : EPS;
    a->tl = a->f32 ? TAME_F32 : TAME;
    a->tiny = a->f32 ? 1e-37 : 1e-300;
    a->umin = a->f32 ? 0x1p-149 : 0x1p-1074;
    a->count = count;
    a->Lq = h->Lq;
    a->T = h->T;
    a->d = h->d;
    a->dv = h->dv;
    a->rows = count * h->Lq;
    size_t T = a->T, Lq = a->Lq, es = a->es;
    unsigned sm = x->size_mode & 3;
    a->psize = sm == 1 ? ATTNX_ATTENTION_PARAMS_V1_SIZE
             : sm == 2 ? sizeof(attnx_attention_params) + 8 * (1 + ((x->size_mode >> 2) & 3))
                       : sizeof(attnx_attention_params);
    a->opts = x->opts;
    if (sm == 1) a->opts &= ~(unsigned)A_V4;   /* a version-3 caller has none of them */
    cur.op = h->f32 ? "attention_f32" : "attention";
    cur.T = T;
    cur.Lq = Lq;
    cur.nbatch = h->nbatch;

    a->scale = read_scale(r, h);
    if (a->opts & A_SOFTCAP) {
        static const double caps[8] = {0, 1.0, 5.0, 30.0, 0.5, 1e-3, 1e4, 2.0};
        unsigned m = x->cap_mode & 7;
        a->softcap = m ? caps[m] : fabs(value(r));
        if ((x->cap_mode & 0x38) == 0x38) a->softcap = ldexp(1.0, (int)(x->cap_mode >> 6) * 40 - 60);
        if (!(a->softcap > 0) || isinf(a->softcap)) a->softcap = 1.0;   /* valid: > 0, finite */
        /* the _f32 functions' cap: rounded to float, the smallest positive
         * float where that is 0, none where it is inf (attnx_api.def) */
        a->cap = a->softcap;
        if (a->f32) a->cap = isinf((float)a->softcap) ? 0.0 : (float)a->softcap == 0 ? 0x1p-149 : (float)a->softcap;
    }
    a->causal = (h->flags & F_CAUSAL) != 0;
    size_t pad = 0;
    make_layout(&a->lq, h, Lq * a->d, h->bc_q, 1, h->gap);
    make_layout(&a->lk, h, T * a->d, h->bc_k, 1, h->gap);
    make_layout(&a->lv, h, T * a->dv, h->bc_v, 1, h->gap);
    pad = overlap_pad(a, h, es);
    a->Q = (const char *)batch_operand_e(r, h, &a->bQ, "Q", &a->lq, count, a->f32, pad);
    a->K = (const char *)batch_operand_e(r, h, &a->bK, "K", &a->lk, count, a->f32, pad);
    a->alias = (h->flags & F_ALIAS) && a->dv == a->d && h->bc_v == h->bc_k;
    if (a->alias) {
        a->V = a->K;
        a->bV = a->bK;
    } else {
        a->V = (const char *)batch_operand_e(r, h, &a->bV, "V", &a->lv, count, a->f32, pad);
    }
    /* mask rows: T apart, shared (stride 0), or padded (as attend_batch) */
    a->mrs = h->mrs_mode == 1 ? 0 : h->mrs_mode == 2 ? (ptrdiff_t)T + 1 + (h->mask_b & 7) : (ptrdiff_t)T;
    if (h->flags & F_MASK) {
        size_t mitem = Lq == 0 ? 0 : (size_t)(Lq - 1) * (size_t)a->mrs + T;
        make_layout(&a->lm, h, mitem, h->bc_m, 0, 0);
        size_t mp = overlap_pad(a, h, 1);
        a->bM = buf_new("mask", 1, a->lm.extent + mp, 0, 0, 0);
        unsigned char *m = (unsigned char *)a->bM->p;
        for (size_t from = 0, row = 0; from < a->lm.extent; from += T ? T : 1, row++)
            fill_mask(r, h, m + from, a->lm.extent - from < T ? a->lm.extent - from : T, row);
        buf_seal(a->bM);
        buf_deny(a->bM, a->lm.extent, mp);
        a->M = m;
    }
    if (a->opts & A_BIAS) {
        /* Lq rows brs apart of T entries bcs apart (bcs 0: one per row) */
        a->bcs = (x->bias_mode & 4) ? 0 : 1;
        ptrdiff_t unit = a->bcs ? (ptrdiff_t)T : 1;
        switch (x->bias_mode & 3) {
        case 0: a->brs = unit; break;
        case 1: a->brs = 0; break;
        case 2: a->brs = unit + 1 + (ptrdiff_t)(x->bias_pick & 3); break;
        default: a->brs = -unit; break;
        }
        ptrdiff_t lo = 0, hi = 0;
        if (Lq && T) {
            ptrdiff_t span = (ptrdiff_t)(Lq - 1) * a->brs;
            lo = span < 0 ? span : 0;
            hi = (span > 0 ? span : 0) + (ptrdiff_t)(T - 1) * a->bcs;
        }
        a->bmin = lo;
        make_layout(&a->lb, h, (size_t)(hi - lo + 1), (x->bias_mode >> 3) & 7, 1, h->gap);
        char *base = (char *)batch_operand_e(r, h, &a->bB, "bias", &a->lb, count, a->f32, overlap_pad(a, h, es));
        a->B = base - lo * (ptrdiff_t)es;   /* row 0 of item 0 */
        /* deny what no (item, row, key) addresses: padding between rows */
        unsigned char *addr = (unsigned char *)calloc(a->bB->n + 1, 1);
        if (!addr) abort();
        for (size_t b = 0; b < count; b++)
            for (size_t i = 0; i < Lq; i++)
                for (size_t t = 0; t < T; t++)
                    addr[(a->B - (const char *)a->bB->p) / (ptrdiff_t)es + b_at(a, b, i, t)] = 1;
        for (size_t e = 0; e < a->bB->n; e++)
            if (!addr[e]) a->bB->deny[e] = 1;
        free(addr);
    }
    if (a->opts & A_ALIBI) {
        make_layout(&a->ls, h, 1, x->bc_slope, 1, 0);
        a->S = (const char *)batch_operand_e(r, h, &a->bS, "alibi_slopes", &a->ls, count, a->f32,
                                             overlap_pad(a, h, es));
    }
    if (a->opts & A_KLEN) {
        make_layout(&a->ll, h, 1, x->bc_klen, 1, 0);
        size_t lp = overlap_pad(a, h, 8);
        a->bL = buf_new("key_lengths", sizeof(long long), a->ll.extent + lp, next_mis() & 7, 1, 0);
        long long *kl = (long long *)a->bL->p;
        for (size_t e = 0; e < a->bL->n; e++) {
            unsigned v = data8(r);
            switch (x->klen_mode) {
            case 0: kl[e] = (long long)(v % (T + 1)); break;
            case 1: kl[e] = (long long)T; break;
            case 2: kl[e] = (long long)(v % (T / 2 + 1)); break;
            default: kl[e] = e == 0 ? 0 : (long long)(T - v % (T / 4 + 1)); break;
            }
        }
        buf_seal(a->bL);
        buf_deny(a->bL, a->ll.extent, lp);
        a->KL = kl - a->ll.min_off;
    }
    if (a->opts & A_WINDOW) {
        a->window = 1;
        a->wl = x->wl;
        a->wr = x->wr;
    }
    a->lower_right = (a->opts & A_LOWER_RIGHT) != 0;
    a->qoff = x->qoff;
    a->koff = x->koff;
    switch (x->off_mode & 3) {
    case 1: a->qoff += (ptrdiff_t)T - (ptrdiff_t)Lq; break;   /* a decoder's cache */
    case 2:
        /* far apart: past the library's 2^60 clamp of positions (no ALiBi,
         * whose distances a double cannot hold there) */
        if (!a->S) a->qoff += (x->off_mode & 4) ? -((ptrdiff_t)1 << 61) : ((ptrdiff_t)1 << 61);
        break;
    case 3: a->qoff *= 16, a->koff *= 16; break;
    default: break;
    }
    if (merge && a->lower_right) {
        /* chunks have their own key lengths: fold the alignment into the
         * offsets where every item has T keys, else drop it */
        if (!a->KL) a->qoff += (ptrdiff_t)T - (ptrdiff_t)Lq;
        a->lower_right = 0;
    }
}

/* The keys each row sees (attnx_api.def's rule), once the key lengths are valid. */
static void att_seen(att *a)
{
    size_t T = a->T, Lq = a->Lq, rows = a->rows;
    a->seen = (unsigned char *)calloc(rows * T + 1, 1);
    a->nseen = (size_t *)calloc(rows + 1, sizeof(size_t));
    a->Tb = (size_t *)calloc(a->count + 1, sizeof(size_t));
    a->pos = (long double *)calloc(rows + 1, sizeof(long double));
    if (!a->seen || !a->nseen || !a->Tb || !a->pos) abort();
    for (size_t b = 0; b < a->count; b++) {
        size_t Tb = a->KL ? (size_t)a->KL[item_off(a->h, &a->ll, b)] : T;
        a->Tb[b] = Tb;
        const unsigned char *mb = a->M ? a->M + item_off(a->h, &a->lm, b) : NULL;
        for (size_t i = 0; i < Lq; i++) {
            size_t row = b * Lq + i;
            long double pos = (long double)i + (long double)a->qoff - (long double)a->koff;
            if (a->lower_right) pos += (long double)Tb - (long double)Lq;
            a->pos[row] = pos;
            for (size_t t = 0; t < T; t++) {
                long double tt = (long double)t;
                int s = t < Tb && (!mb || mb[(ptrdiff_t)i * a->mrs + (ptrdiff_t)t]);
                s = s && (!a->causal || tt <= pos);
                s = s && (!a->window || a->wl < 0 || tt >= pos - (long double)a->wl);
                s = s && (!a->window || a->wr < 0 || tt <= pos + (long double)a->wr);
                a->seen[row * T + t] = (unsigned char)s;
                a->nseen[row] += (size_t)s;
            }
        }
    }
}

/* NaN in the bias: bit 6 of bias_mode, at one entry a seen key adds (its
 * rows become NaN); bit 7, at every entry no seen key adds (nothing may
 * change: a clean copy runs beside it and must give the same bits). */
static void att_bias_nan(reader *r, att *a, const xheader *x)
{
    (void)r;
    if (!a->B || !(x->bias_mode & 0xc0)) return;
    size_t n = a->bB->n, es = a->es;
    ptrdiff_t b0 = (a->B - (const char *)a->bB->p) / (ptrdiff_t)es;
    unsigned char *used = (unsigned char *)calloc(n + 1, 1);
    if (!used) abort();
    size_t nused = 0;
    for (size_t b = 0; b < a->count; b++)
        for (size_t i = 0; i < a->Lq; i++)
            for (size_t t = 0; t < a->T; t++)
                if (a->seen[(b * a->Lq + i) * a->T + t]) {
                    size_t e = (size_t)(b0 + b_at(a, b, i, t));
                    nused += !used[e];
                    used[e] = 1;
                }
    if ((x->bias_mode & 0x40) && nused) {
        size_t k = x->bias_pick % nused;
        for (size_t e = 0; e < n; e++)
            if (used[e] && k-- == 0) {
                elset(a->bB->p, (ptrdiff_t)e, NAN, a->f32);
                break;
            }
    }
    if (x->bias_mode & 0x80) {
        /* the clean copy first: the same layout, other memory */
        a->bBc = buf_new("bias (clean)", es, n, next_mis() & 7, 1, 0);
        memcpy(a->bBc->p, a->bB->p, n * es);
        buf_seal(a->bBc);
        if (a->bB->deny) {
            a->bBc->deny = (unsigned char *)malloc(n + 1);
            if (!a->bBc->deny) abort();
            memcpy(a->bBc->deny, a->bB->deny, n);
        }
        a->Bc = (const char *)a->bBc->p + b0 * (ptrdiff_t)es;
        for (size_t e = 0; e < n; e++)
            if (!used[e] && !(a->bB->deny && a->bB->deny[e])) elset(a->bB->p, (ptrdiff_t)e, NAN, a->f32);
    }
    buf_seal(a->bB);
    free(used);
}

/* Key and value rows no row of any item sees are never read: deny them. */
static void att_deny_unseen(att *a)
{
    size_t T = a->T;
    unsigned char *kt = (unsigned char *)calloc(a->bK->n + 1, 1), *vt = (unsigned char *)calloc(a->bV->n + 1, 1);
    if (!kt || !vt) abort();
    ptrdiff_t k0 = (a->K - (const char *)a->bK->p) / (ptrdiff_t)a->es;
    ptrdiff_t v0 = (a->V - (const char *)a->bV->p) / (ptrdiff_t)a->es;
    for (size_t b = 0; b < a->count; b++)
        for (size_t i = 0; i < a->Lq; i++)
            for (size_t t = 0; t < T; t++) {
                if (!a->seen[(b * a->Lq + i) * T + t]) continue;
                memset(kt + k0 + k_at(a, b, t), 1, a->d);
                memset(vt + v0 + v_at(a, b, t), 1, a->dv);
            }
    if (a->alias)
        for (size_t e = 0; e < a->bK->n; e++) kt[e] |= vt[e];
    buf_deny(a->bK, 0, 0);
    for (size_t e = 0; e < a->bK->n; e++)
        if (!kt[e]) buf_deny(a->bK, e, 1);
    if (!a->alias)
        for (size_t e = 0; e < a->bV->n; e++)
            if (!vt[e]) buf_deny(a->bV, e, 1);
    free(kt);
    free(vt);
}

static attnx_attention_params att_params(const att *a)
{
    attnx_attention_params p;
    memset(&p, 0, sizeof p);
    p.size = sizeof p;
    p.query = a->Q;
    p.keys = a->K;
    p.values = a->V;
    p.nbatch = a->h->nbatch;
    p.batch_shape = a->h->shape;
    p.query_strides = a->lq.strides;
    p.key_strides = a->lk.strides;
    p.value_strides = a->alias ? a->lk.strides : a->lv.strides;
    p.Lq = a->Lq;
    p.T = a->T;
    p.d = a->d;
    p.dv = a->dv;
    p.scale = a->scale;
    p.mask = a->M;
    p.mask_strides = a->M ? a->lm.strides : NULL;
    p.mask_row_stride = a->mrs;
    p.causal = a->causal;
    p.query_offset = a->qoff;
    p.key_offset = a->koff;
    p.num_threads = a->h->threads;
    p.bias = a->B;
    p.bias_strides = a->B ? a->lb.strides : NULL;
    p.bias_row_stride = a->brs;
    p.bias_col_stride = a->bcs;
    p.alibi_slopes = a->S;
    p.alibi_strides = a->S ? a->ls.strides : NULL;
    p.key_lengths = a->KL;
    p.key_lengths_strides = a->KL ? a->ll.strides : NULL;
    p.lower_right = a->lower_right;
    p.window = a->window;
    p.window_left = a->wl;
    p.window_right = a->wr;
    p.softcap = a->softcap;
    return p;
}

/* The struct as a caller of size `bytes` hands it over: a buffer of exactly
 * that many bytes (reading past it is an ASan report), the fields beyond
 * ours 0 unless tail != 0. */
static void params_store(buf *bp, const attnx_attention_params *p, size_t size_field, unsigned char tail)
{
    attnx_attention_params q = *p;
    q.size = size_field;
    memset(bp->p, 0, bp->n);
    memcpy(bp->p, &q, bp->n < sizeof q ? bp->n : sizeof q);
    if (bp->n > sizeof q) ((unsigned char *)bp->p)[bp->n - 1 - (tail & 7)] = tail;
    buf_seal(bp);
}

static int run_attention(const att *a, buf *bp, const attnx_attention_params *p)
{
    params_store(bp, p, a->psize, 0);
    return a->f32 ? attnx_attention_f32(bp->p) : attnx_attention(bp->p);
}

/* ---- the reference, in long double, from attnx_api.def's rules */

typedef struct {
    int tame, numeric, nan_forced;
    int cls;                 /* tame rows: ROW_ZERO, ROW_NORMAL or ROW_NAN */
    double E;                /* bound on the error of any seen score */
    double tol_w, rel_c, abs_c, tol_lse, lse;
} rref;

typedef struct {
    rref *r;                 /* rows */
    double *w, *c, *mag;     /* rows x T, rows x dv, rows x dv */
    long double *s, *g;      /* rows x T: shaped scores; softcap derivative */
} aref;

static void aref_free(aref *R)
{
    free(R->r);
    free(R->w);
    free(R->c);
    free(R->mag);
    free(R->s);
    free(R->g);
}

static void att_reference(const att *a, aref *R)
{
    size_t T = a->T, d = a->d, dv = a->dv, Lq = a->Lq, rows = a->rows;
    int f = a->f32;
    double eps = a->eps;
    R->r = (rref *)calloc(rows + 1, sizeof(rref));
    R->w = dalloc(rows * T);
    R->c = dalloc(rows * dv);
    R->mag = dalloc(rows * dv);
    R->s = (long double *)calloc(rows * T + 1, sizeof(long double));
    R->g = (long double *)calloc(rows * T + 1, sizeof(long double));
    if (!R->r || !R->s || !R->g) abort();
    long double sc = a->cap;
    long double *cl = (long double *)calloc(dv + 1, sizeof(long double));
    if (!cl) abort();
    for (size_t b = 0; b < a->count; b++) {
        double slope = a->S ? elv(a->S, item_off(a->h, &a->ls, b), f) : 0.0;
        for (size_t i = 0; i < Lq; i++) {
            size_t row = b * Lq + i;
            rref *rr = &R->r[row];
            const unsigned char *sn = a->seen + row * T;
            ptrdiff_t qi = q_at(a, b, i);
            int qnan = d > 0 && isnan(a->scale), tm = tame_lim(a->scale, a->tl);
            for (size_t j = 0; j < d; j++) {
                double q = elv(a->Q, qi + (ptrdiff_t)j, f);
                qnan |= isnan(q) != 0;
                tm &= tame_lim(q, a->tl);
            }
            if (a->S) tm &= tame_lim(slope, a->tl);
            int bnan = 0, nan = 0;
            long double m = -INFINITY;
            double E = 0.0, vmax = 0.0;
            for (size_t t = 0; t < T; t++) {
                if (!sn[t]) continue;
                ptrdiff_t ki = k_at(a, b, t), vi = v_at(a, b, t);
                long double dot = 0, smag = 0;
                for (size_t j = 0; j < d; j++) {
                    double q = elv(a->Q, qi + (ptrdiff_t)j, f), k = elv(a->K, ki + (ptrdiff_t)j, f);
                    qnan |= isnan(k) != 0;
                    tm &= tame_lim(k, a->tl);
                    dot += (long double)q * k;
                    smag += fabsl((long double)q * k);
                }
                for (size_t j = 0; j < dv; j++) {
                    double v = elv(a->V, vi + (ptrdiff_t)j, f);
                    tm &= tame_lim(v, a->tl);
                    vmax = fmax(vmax, fabs(v));
                }
                long double x = (long double)a->scale * dot;
                /* relative error, and the absolute floor of the element
                 * type's subnormal grid (half its spacing a rounding, d for
                 * the dot, scaled, one for the scale's product): a subnormal
                 * softcap magnifies it by 1 / softcap */
                double Et = 2.0 * (double)(d + 2) * eps * (double)(fabsl((long double)a->scale) * smag) +
                            2.0 * eps * (double)fabsl(x) + ((double)d * fabs(a->scale) + 1.0) * a->umin;
                R->g[row * T + t] = 1;
                if (a->cap > 0) {
                    long double th = tanhl(x / sc);
                    x = sc * th;
                    R->g[row * T + t] = 1 - th * th;
                    Et += 16.0 * eps * (double)fabsl(x) + 2.0 * eps * a->cap + a->umin;
                }
                if (a->B) {
                    double bv = elv(a->B, b_at(a, b, i, t), f);
                    if (isnan(bv)) bnan = 1;
                    else tm &= tame_lim(bv, a->tl);
                    Et += 4.0 * eps * ((double)fabsl(x) + fabs(bv));
                    x += bv;
                }
                if (a->S) {
                    long double al = (long double)slope * fabsl(a->pos[row] - (long double)t);
                    Et += 4.0 * eps * (double)fabsl(al);
                    x -= al;
                }
                Et += 2.0 * eps * (double)fabsl(x);
                if (Et > E) E = Et;
                R->s[row * T + t] = x;
                if (isnan(x)) nan = 1;
                else if (x > m) m = x;
            }
            rr->nan_forced = a->nseen[row] && (qnan || bnan || (a->S && isnan(slope)));
            rr->tame = tm;
            rr->E = E;
            if (!tm) continue;
            if (a->nseen[row] == 0) {
                rr->cls = ROW_ZERO;
                rr->lse = -INFINITY;
                rr->numeric = 1;
                continue;
            }
            if (nan) {
                rr->cls = ROW_NAN;
                rr->lse = NAN;
                continue;
            }
            rr->cls = ROW_NORMAL;
            long double l = 0;
            for (size_t t = 0; t < T; t++)
                if (sn[t]) l += expl(R->s[row * T + t] - m);
            long double lse = m + logl(l);
            rr->lse = (double)lse;
            for (size_t j = 0; j < dv; j++) cl[j] = 0;
            for (size_t t = 0; t < T; t++) {
                long double w = sn[t] ? expl(R->s[row * T + t] - m) / l : 0;
                R->w[row * T + t] = (double)w;
                if (!sn[t]) continue;
                ptrdiff_t vi = v_at(a, b, t);
                for (size_t j = 0; j < dv; j++) {
                    long double v = elv(a->V, vi + (ptrdiff_t)j, f);
                    cl[j] += w * v;
                    R->mag[row * dv + j] += (double)(w * fabsl(v));
                }
            }
            for (size_t j = 0; j < dv; j++) R->c[row * dv + j] = (double)cl[j];
            rr->tol_w = 2.5 * E + 32.0 * eps;
            rr->numeric = rr->tol_w < 1e-2;
            rr->rel_c = rr->tol_w + 4.0 * (double)(T + dv + 8) * eps;
            rr->abs_c = (double)(T + 1) * a->tiny * (vmax + 1.0);
            rr->tol_lse = 2.0 * E + (double)(T + 16) * eps + 4.0 * eps * fabs(rr->lse);
        }
    }
    free(cl);
}

/* ---- checks of one call's results (as doubles; w, lse may be NULL) */

/* A row of weights: all NaN or none; else in [0, 1], unseen keys exactly 0,
 * all 0 or summing to 1. Returns the row class. */
static int weights_row_e(const double *w, size_t n, const unsigned char *live, double eps, const char *what)
{
    size_t nan = 0;
    for (size_t t = 0; t < n; t++) nan += isnan(w[t]) != 0;
    if (nan) {
        if (nan != n) fail("%s: %zu of %zu weights NaN (a row is all NaN or none)", what, nan, n);
        return ROW_NAN;
    }
    long double s = 0.0L;
    int any = 0;
    for (size_t t = 0; t < n; t++) {
        if (!(w[t] >= 0.0 && w[t] <= 1.0)) fail("%s[%zu] = %.17g is outside [0, 1]", what, t, w[t]);
        if (!live[t] && w[t] != 0.0) fail("%s[%zu] = %.17g for a key the row does not see", what, t, w[t]);
        s += w[t];
        any |= w[t] != 0.0;
    }
    if (!any) return ROW_ZERO;
    long double tol = (long double)(n + 8) * eps;
    if (fabsl(s - 1.0L) > tol) fail("%s: weights sum to 1 + %.3Lg (n = %zu, tolerance %.3Lg)", what, s - 1.0L, n, tol);
    return ROW_NORMAL;
}

static void lse_is(double got, double want, const char *what, size_t row)
{
    if (!(got == want || (isnan(got) && isnan(want))))
        fail("%s lse[%zu] = %.17g, expected %g", what, row, got, want);
}

/* The rules on any input, then the reference on tame rows. */
static void att_check(const att *a, const aref *R, const double *out, const double *w, const double *lse,
                      const char *what)
{
    size_t T = a->T, dv = a->dv;
    char name[160];
    for (size_t row = 0; row < a->rows; row++) {
        const rref *rr = &R->r[row];
        const double *o = out + row * dv, *wr = w ? w + row * T : NULL;
        const double *l = lse ? lse + row : NULL;
        const unsigned char *sn = a->seen + row * T;
        snprintf(name, sizeof name, "%s row %zu (item %zu, query %zu, sees %zu of %zu keys)", what, row,
                 row / (a->Lq ? a->Lq : 1), row % (a->Lq ? a->Lq : 1), a->nseen[row], T);
        int cls = -1;
        if (wr) cls = weights_row_e(wr, T, sn, a->eps, name);
        if (a->nseen[row] == 0) {
            if (wr && cls != ROW_ZERO) fail("%s: sees no key, yet the weights are not all 0", name);
            all_equal(o, dv, 0.0, name);
            if (l) lse_is(*l, -INFINITY, name, row);
            continue;
        }
        if (rr->nan_forced) {
            /* NaN in the query, the scale, a seen key row, a seen bias entry
             * or the slope reaches a seen score */
            if (wr && cls != ROW_NAN) fail("%s: NaN reaches a seen score, weights not NaN", name);
            all_equal(o, dv, NAN, name);
            if (l) lse_is(*l, NAN, name, row);
        }
        if (cls == ROW_NAN) {
            all_equal(o, dv, NAN, name);
            if (l) lse_is(*l, NAN, name, row);
        } else if (cls == ROW_ZERO) {   /* every seen score -inf */
            all_equal(o, dv, 0.0, name);
            if (l) lse_is(*l, -INFINITY, name, row);
        } else if (cls == ROW_NORMAL && l && (isnan(*l) || *l == -INFINITY)) {
            fail("%s: a normal row, lse %g", name, *l);
        }
        if (l && !wr) {   /* the fused pass: lse and context tell the same */
            if (isnan(*l)) all_equal(o, dv, NAN, name);
            if (*l == -INFINITY) all_equal(o, dv, 0.0, name);
        }
        if (!rr->tame) continue;
        /* tame: the reference's class, then its numbers */
        if (rr->cls == ROW_NAN) {
            if (wr && cls != ROW_NAN) fail("%s: a seen bias entry is NaN, the weights are not", name);
            all_equal(o, dv, NAN, name);
            if (l) lse_is(*l, NAN, name, row);
            continue;
        }
        if (wr && cls != ROW_NORMAL)
            fail("%s: tame row with seen keys (reference lse %.17g), yet the weights are all %s", name, rr->lse,
                 cls == ROW_NAN ? "NaN" : "0");
        for (size_t j = 0; j < dv; j++)
            if (!isfinite(o[j])) fail("%s: tame row, out[%zu] = %g", name, j, o[j]);
        if (l && !isfinite(*l)) fail("%s: tame row, lse %g", name, *l);
        if (!rr->numeric) continue;
        char nm[200];
        if (wr) {
            snprintf(nm, sizeof nm, "%s weights vs reference", name);
            close_to(wr, R->w + row * T, NULL, T, rr->tol_w, a->tiny, nm);
        }
        snprintf(nm, sizeof nm, "%s out vs reference", name);
        close_to(o, R->c + row * dv, R->mag + row * dv, dv, rr->rel_c, rr->abs_c, nm);
        if (l && !(fabs(*l - rr->lse) <= rr->tol_lse))
            fail("%s: lse %.17g, reference %.17g: |diff| %.3g > tolerance %.3g (E %.3g)", name, *l, rr->lse,
                 fabs(*l - rr->lse), rr->tol_lse, rr->E);
    }
}

/* Two results of the same call (fused and two-pass, or a level and scalar):
 * on tame rows within twice the reference's tolerance of each other. */
static void att_pair(const att *a, const aref *R, const double *o1, const double *o2, const double *w1,
                     const double *w2, const double *l1, const double *l2, const char *what)
{
    size_t T = a->T, dv = a->dv;
    char name[160];
    for (size_t row = 0; row < a->rows; row++) {
        const rref *rr = &R->r[row];
        snprintf(name, sizeof name, "%s row %zu", what, row);
        /* on any input: a context one pass computes finite is finite from the other too */
        if (!w1 && w2)
            for (size_t j = 0; j < dv; j++)
                if (isfinite(o2[row * dv + j]) && !isfinite(o1[row * dv + j]))
                    fail("%s: out[%zu] = %g where the two-pass one is %.17g", name, j, o1[row * dv + j],
                         o2[row * dv + j]);
        if (!rr->tame || !rr->numeric || rr->cls != ROW_NORMAL) continue;
        close_to(o1 + row * dv, o2 + row * dv, R->mag + row * dv, dv, 2.0 * rr->rel_c, 2.0 * rr->abs_c, name);
        if (w1 && w2) close_to(w1 + row * T, w2 + row * T, NULL, T, 2.0 * rr->tol_w, a->tiny, name);
        if (l1 && l2 && !(fabs(l1[row] - l2[row]) <= 2.0 * rr->tol_lse))
            fail("%s: lse %.17g vs %.17g, tolerance %.3g", name, l1[row], l2[row], 2.0 * rr->tol_lse);
    }
}

static void same_bits_n(const double *x, const double *y, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (bits_of(x[i]) != bits_of(y[i]))
            fail("%s[%zu] = %.17g, the same call without the NaN bias of unseen keys %.17g", what, i, x[i], y[i]);
}

/* ---- invalid arguments and overlapping outputs, shared by attention and backward */

/* Spoil one argument of p (the full struct; *psize: the size the caller
 * claims, *tail: a nonzero byte past our struct); k varies the spoiling
 * (its number, which stride). Returns the status
 * expected, or -1 when the case does not apply. */
static int att_spoil(const att *a, const header *h, attnx_attention_params *p, unsigned sel, unsigned k,
                     size_t *psize, unsigned char *tail, int *null_params)
{
    size_t es = a->es;
    static size_t shape_big[ATTNX_MAX_BATCH_DIMS + 16];
    static ptrdiff_t str_big[ATTNX_MAX_BATCH_DIMS + 16];
    switch (sel) {
    case 0: *null_params = 1; return ATTNX_ERR_NULL;
    case 1: *psize = ATTNX_ATTENTION_PARAMS_V1_SIZE - 1 - k % 64; return ATTNX_ERR_ARG;
    case 2: p->query = NULL; return ATTNX_ERR_NULL;
    case 3: p->keys = NULL; return ATTNX_ERR_NULL;
    case 4: p->values = NULL; return ATTNX_ERR_NULL;
    case 5: p->out = NULL; return ATTNX_ERR_NULL;
    case 6: p->num_threads = -1 - (int)k; return ATTNX_ERR_ARG;
    case 7:
        p->nbatch = ATTNX_MAX_BATCH_DIMS + 1 + k;
        for (size_t i = 0; i < ATTNX_MAX_BATCH_DIMS + 16; i++) shape_big[i] = 1, str_big[i] = 0;
        p->batch_shape = shape_big;
        p->query_strides = p->key_strides = p->value_strides = p->mask_strides = str_big;
        if (p->bias) p->bias_strides = str_big;
        if (p->alibi_slopes) p->alibi_strides = str_big;
        if (p->key_lengths) p->key_lengths_strides = str_big;
        return ATTNX_ERR_ARG;
    case 8:
        if (!p->nbatch) return -1;
        p->batch_shape = NULL;
        return ATTNX_ERR_NULL;
    case 9: {
        if (!p->nbatch) return -1;
        const ptrdiff_t **s[7] = {&p->query_strides, &p->key_strides, &p->value_strides, &p->mask_strides,
                                  &p->bias_strides, &p->alibi_strides, &p->key_lengths_strides};
        const void *set[7] = {p, p, p, p->mask, p->bias, p->alibi_slopes, p->key_lengths};
        unsigned n = 0;
        for (int i = 0; i < 7; i++) n += set[i] != NULL;
        unsigned pick = k % n;
        for (int i = 0; i < 7; i++)
            if (set[i] && pick-- == 0) *s[i] = NULL;
        return ATTNX_ERR_NULL;
    }
    case 10: p->causal = (k & 1) ? -1 : 2 + (int)(k >> 1); return ATTNX_ERR_ARG;
    case 11: p->window = (k & 1) ? -1 : 2 + (int)(k >> 1); return ATTNX_ERR_ARG;
    case 12: {
        static const double bad[4] = {-1.0, NAN, INFINITY, -1e-300};
        p->softcap = bad[k & 3];
        return ATTNX_ERR_ARG;
    }
    case 13:
        if (!p->bias) return -1;
        p->bias_col_stride = (k & 1) ? -1 : 2 + (ptrdiff_t)(k >> 1);
        return ATTNX_ERR_ARG;
    case 14: p->lower_right = (k & 1) ? -1 : 2 + (int)(k >> 1); return ATTNX_ERR_ARG;
    case 15: {
        if (!a->KL) return -1;
        /* one stored length out of [0, T] (the buffer is an input: sealed anew) */
        long long *kl = (long long *)a->bL->p;
        kl[k % a->ll.extent] = (k & 32) ? -1 - (long long)(k & 7) : (long long)a->T + 1 + (long long)(k & 7);
        buf_seal(a->bL);
        return a->count ? ATTNX_ERR_ARG : ATTNX_OK;
    }
    case 16: p->T = 0; return ATTNX_ERR_EMPTY;
    case 17:
        /* Lq huge: count * Lq or Lq * d overflows, unless both are 0 */
        p->Lq = huge_count_e(h, 1, es);
        return a->count || a->d ? ATTNX_ERR_OVERFLOW : ATTNX_OK;
    case 18:
        /* query_offset - key_offset overflows ptrdiff_t */
        if (k & 1) {
            p->query_offset = PTRDIFF_MAX - (ptrdiff_t)((k >> 1) & 7);
            p->key_offset = -1 - (ptrdiff_t)((k >> 1) & 7) - (ptrdiff_t)(k >> 4);
        } else {
            p->query_offset = PTRDIFF_MIN + (ptrdiff_t)((k >> 1) & 7);
            p->key_offset = 1 + (ptrdiff_t)((k >> 1) & 7) + (ptrdiff_t)(k >> 4);
        }
        return ATTNX_ERR_OVERFLOW;
    default:
        /* a newer caller's struct with a field we do not know set */
        *psize = sizeof(attnx_attention_params) + 8 + 8 * (k & 3);
        *tail = (unsigned char)(1 + (k >> 2) % 255);
        return ATTNX_ERR_ARG;
    }
}

/* A pointer to `bytes` bytes inside b overlapping its element e, aligned to
 * es; NULL when it does not fit. The overlapped part is made readable (a
 * status check reports, not ASan). */
static void *place_over(buf *b, size_t e, size_t bytes, size_t es)
{
    size_t tb = b->n * b->esize, sb = e * b->esize;
    sb -= sb % es;
    if (!bytes || sb + bytes > tb || sb >= tb) return NULL;
    if (b->deny) {
        size_t e0 = sb / b->esize, e1 = (sb + bytes + b->esize - 1) / b->esize;
        memset(b->deny + e0, 0, e1 - e0);
    }
    return (unsigned char *)b->p + sb;
}

/* the element of b that item 0 of an operand starts at (base: row 0) */
static size_t first_el(const buf *b, const void *base, const layout *L, const header *h)
{
    return (size_t)(((const char *)base - (const char *)b->p) / (ptrdiff_t)b->esize + item_off(h, L, 0));
}

/* ---- attnx_attention / attnx_attention_f32 */
static void op_attention(reader *r, header *h)
{
    xheader x;
    read_xheader(r, &x);
    att A, *a = &A;
    att_setup(r, h, &x, a, 0);
    size_t T = a->T, dv = a->dv, rows = a->rows, es = a->es;
    int use_lse = (a->opts & A_LSE) != 0;
    attnx_attention_params p = att_params(a);

    if (pick_invalid(h)) {
        buf *bo = out_new_e("out", rows * dv, next_mis(), es), *bw = out_new_e("weights", rows * T, next_mis(), es);
        buf *bl = out_new_e("lse", rows, next_mis(), es);
        p.out = bo->p;
        p.weights = (h->flags & F_WEIGHTS) ? bw->p : NULL;
        p.lse = use_lse ? bl->p : NULL;
        size_t psize = sizeof p;
        unsigned char tail = 0;
        int nullp = 0;
        unsigned sel = h->inval % 20, k = h->inval / 20;
        if (sel == 16 && a->KL) sel = 2;   /* T = 0 would spoil the key lengths too */
        int expect = att_spoil(a, h, &p, sel, k, &psize, &tail, &nullp);
        if (expect < 0) {
            att_free(a);
            return;
        }
        buf *bp = buf_new("params", 1, psize > sizeof p ? psize : sizeof p, 0, 8, 0);
        params_store(bp, &p, psize, tail);
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_attention (invalid)");
            const attnx_attention_params *pp = nullp ? NULL : (const attnx_attention_params *)bp->p;
            int rc = a->f32 ? attnx_attention_f32(pp) : attnx_attention(pp);
            call_end(rc, expect);
        }
        att_free(a);
        return;
    }

    if (pick_overlap(h)) {
        /* one output over an input (item 0's first element) or two outputs
         * sharing memory: OVERLAP, nothing written */
        if (!rows || !T) {
            att_free(a);
            return;
        }
        unsigned sel = h->inval % 12, k = h->inval / 12;
        size_t ob = rows * dv * es, wb = rows * T * es, lb = rows * es;
        void *o = NULL, *w = NULL, *l = NULL;
        buf *tgt = NULL;
        const void *tb = NULL;
        const layout *tl = NULL;
        size_t bytes = ob;
        switch (sel < 7 ? sel : sel == 7 ? k % 3 : sel == 8 ? 3 + k % 4 : 99) {
        case 0: tgt = a->bQ, tb = a->Q, tl = &a->lq; break;
        case 1: tgt = a->bK, tb = a->K, tl = &a->lk; break;
        case 2: tgt = a->bV, tb = a->V, tl = a->alias ? &a->lk : &a->lv; break;
        case 3: tgt = a->bM, tb = a->M, tl = &a->lm; break;
        case 4: tgt = a->bB, tb = a->B, tl = &a->lb; break;
        case 5: tgt = a->bS, tb = a->S, tl = &a->ls; break;
        case 6: tgt = a->bL, tb = a->KL, tl = &a->ll; break;
        default: break;
        }
        if (sel == 7) bytes = wb;
        if (sel == 8) bytes = lb;
        if (sel <= 8) {
            if (!tgt || !tl->msize) {
                att_free(a);
                return;
            }
            void *at = place_over(tgt, first_el(tgt, tb, tl, h), bytes, es);
            if (!at) {
                att_free(a);
                return;
            }
            if (sel < 7) o = at;
            else if (sel == 7) w = at;
            else l = at;
        } else {
            size_t n1 = sel == 11 ? rows * T : rows * dv, n2 = sel == 9 ? rows * T : rows;
            if (!n1 || !n2) {
                att_free(a);
                return;
            }
            size_t off = k % n1;
            buf *sh = out_new_e("shared outputs", off + n2 > n1 ? off + n2 : n1, next_mis(), es);
            char *b0 = (char *)sh->p;
            if (sel == 9) o = b0, w = b0 + off * es;
            else if (sel == 10) o = b0, l = b0 + off * es;
            else w = b0, l = b0 + off * es;
        }
        if (!o) o = out_new_e("out", rows * dv, next_mis(), es)->p;
        p.out = o;
        p.weights = w;
        p.lse = l;
        buf *bp = buf_new("params", 1, sizeof p, 0, 8, 0);
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_attention (overlapping output)");
            params_store(bp, &p, sizeof p, 0);
            int rc = a->f32 ? attnx_attention_f32(bp->p) : attnx_attention(bp->p);
            call_end(rc, ATTNX_ERR_OVERLAP);
        }
        att_free(a);
        return;
    }

    att_seen(a);
    att_bias_nan(r, a, &x);
    att_deny_unseen(a);
    aref R;
    memset(&R, 0, sizeof R);
    att_reference(a, &R);
    buf *bo = out_new_e("out", rows * dv, next_mis(), es), *bw = out_new_e("weights", rows * T, next_mis(), es);
    buf *bl = out_new_e("lse", rows, next_mis(), es);
    buf *bp = buf_new("params", 1, a->psize, 0, 8, 0);
    int expect = T == 0 ? ATTNX_ERR_EMPTY : ATTNX_OK;
    double *o1 = dalloc(rows * dv), *o2 = dalloc(rows * dv), *w2 = dalloc(rows * T);
    double *l1 = dalloc(rows), *l2 = dalloc(rows);
    double *so1 = dalloc(rows * dv), *so2 = dalloc(rows * dv), *sw2 = dalloc(rows * T);
    double *sl1 = dalloc(rows), *sl2 = dalloc(rows);
    double *t1 = dalloc(rows * dv + rows * T + rows);
    const double *L1 = use_lse ? l1 : NULL, *L2 = use_lse ? l2 : NULL;
    for (size_t L = 0; L < g_nlevels; L++) {
        set_level(g_levels[L]);
        p.out = bo->p;
        p.weights = bw->p;
        p.lse = use_lse ? bl->p : NULL;
        call_begin("attnx_attention (weights)");
        call_end(run_attention(a, bp, &p), expect);
        if (expect != ATTNX_OK) {
            p.weights = NULL;
            call_begin("attnx_attention (fused)");
            call_end(run_attention(a, bp, &p), expect);
            continue;
        }
        read_out(bo, o2, "out");
        read_out(bw, w2, "weights");
        if (use_lse) read_out(bl, l2, "lse");
        att_check(a, &R, o2, w2, L2, "two-pass");
        p.weights = NULL;
        call_begin("attnx_attention (fused)");
        call_end(run_attention(a, bp, &p), expect);
        read_out(bo, o1, "out");
        if (use_lse) read_out(bl, l1, "lse");
        att_check(a, &R, o1, NULL, L1, "fused");
        att_pair(a, &R, o1, o2, NULL, w2, L1, L2, "fused vs two-pass");
        if (a->Bc) {
            /* NaN bias entries no seen key adds change nothing, bit for bit */
            p.bias = a->Bc;
            p.weights = bw->p;
            call_begin("attnx_attention (weights, clean bias)");
            call_end(run_attention(a, bp, &p), expect);
            read_out(bo, t1, "out");
            same_bits_n(o2, t1, rows * dv, "two-pass out");
            read_out(bw, t1, "weights");
            same_bits_n(w2, t1, rows * T, "weights");
            if (use_lse) {
                read_out(bl, t1, "lse");
                same_bits_n(l2, t1, rows, "two-pass lse");
            }
            p.weights = NULL;
            call_begin("attnx_attention (fused, clean bias)");
            call_end(run_attention(a, bp, &p), expect);
            read_out(bo, t1, "out");
            same_bits_n(o1, t1, rows * dv, "fused out");
            if (use_lse) {
                read_out(bl, t1, "lse");
                same_bits_n(l1, t1, rows, "fused lse");
            }
            p.bias = a->B;
        }
        if (L == 0) {
            memcpy(so1, o1, rows * dv * sizeof(double));
            memcpy(so2, o2, rows * dv * sizeof(double));
            memcpy(sw2, w2, rows * T * sizeof(double));
            memcpy(sl1, l1, rows * sizeof(double));
            memcpy(sl2, l2, rows * sizeof(double));
            continue;
        }
        att_pair(a, &R, o2, so2, w2, sw2, L2, use_lse ? sl2 : NULL, "two-pass vs scalar");
        att_pair(a, &R, o1, so1, NULL, NULL, L1, use_lse ? sl1 : NULL, "fused vs scalar");
    }
    free(o1), free(o2), free(w2), free(l1), free(l2), free(t1);
    free(so1), free(so2), free(sw2), free(sl1), free(sl2);
    aref_free(&R);
    att_free(a);
}

/* ---- attnx_merge_attention over chunks of the keys */
static void op_merge_chunks(reader *r, header *h)
{
    xheader x;
    read_xheader(r, &x);
    h->flags &= ~(unsigned)(F_INVALID | F_OVERLAP);   /* the raw merge op has those */
    x.bias_mode &= 0x7f;
    att A, *a = &A;
    att_setup(r, h, &x, a, 1);
    cur.op = a->f32 ? "merge_chunks_f32" : "merge_chunks";
    size_t T = a->T, dv = a->dv, rows = a->rows, es = a->es;
    if (T == 0 || rows == 0) {
        att_free(a);
        return;
    }
    att_seen(a);
    att_bias_nan(r, a, &x);
    att_deny_unseen(a);
    aref R;
    memset(&R, 0, sizeof R);
    att_reference(a, &R);
    /* P chunks [cut[c], cut[c + 1]), each at least one key */
    size_t cut[6], P = 1 + x.aux % 4;
    if (P > T) P = T;
    cut[0] = 0;
    size_t np = 1;
    for (size_t c = 1; c < P; c++) {
        size_t v = 1 + data8(r) % (T - 1);
        size_t j = np;
        while (j > 1 && cut[j - 1] > v) j--;
        if (cut[j - 1] == v) continue;
        memmove(cut + j + 1, cut + j, (np - j) * sizeof(size_t));
        cut[j] = v;
        np++;
    }
    P = np;
    cut[P] = T;
    buf *bo = out_new_e("out", rows * dv, next_mis(), es), *bl = out_new_e("lse", rows, next_mis(), es);
    buf *boc[5], *blc[5], *bkc[5] = {NULL, NULL, NULL, NULL, NULL};
    for (size_t c = 0; c < P; c++) {
        boc[c] = out_new_e("chunk out", rows * dv, next_mis(), es);
        blc[c] = out_new_e("chunk lse", rows, next_mis(), es);
        if (a->KL) {
            /* each item's key length within the chunk, in the same layout */
            size_t Tc = cut[c + 1] - cut[c];
            bkc[c] = buf_new("chunk key_lengths", sizeof(long long), a->ll.extent, 0, 1, 0);
            const long long *src = a->KL + a->ll.min_off;
            for (size_t e = 0; e < a->ll.extent; e++) {
                long long v = src[e] - (long long)cut[c];
                ((long long *)bkc[c]->p)[e] = v < 0 ? 0 : v > (long long)Tc ? (long long)Tc : v;
            }
            buf_seal(bkc[c]);
        }
    }
    buf *bouts = in_new_e("outs", P * rows * dv, next_mis(), es), *blses = in_new_e("lses", P * rows, next_mis(), es);
    buf *bmo = out_new_e("merged out", rows * dv, next_mis(), es), *bml = out_new_e("merged lse", rows, next_mis(), es);
    buf *bp = buf_new("params", 1, a->psize, 0, 8, 0);
    double *o = dalloc(rows * dv), *l = dalloc(rows), *mo = dalloc(rows * dv), *ml = dalloc(rows);
    double *cl = dalloc(rows);
    attnx_attention_params p = att_params(a);
    for (size_t L = 0; L < g_nlevels; L++) {
        set_level(g_levels[L]);
        p.out = bo->p;
        p.lse = bl->p;
        call_begin("attnx_attention (whole)");
        call_end(run_attention(a, bp, &p), ATTNX_OK);
        read_out(bo, o, "out");
        read_out(bl, l, "lse");
        att_check(a, &R, o, NULL, l, "whole");
        for (size_t c = 0; c < P; c++) {
            size_t c0 = cut[c];
            attnx_attention_params pc = p;
            pc.keys = a->K + c0 * a->d * es;
            pc.values = a->V + c0 * a->dv * es;
            pc.T = cut[c + 1] - c0;
            pc.mask = a->M ? a->M + c0 : NULL;
            pc.bias = a->B ? a->B + (ptrdiff_t)c0 * a->bcs * (ptrdiff_t)es : NULL;
            pc.key_lengths = a->KL ? (const long long *)bkc[c]->p - a->ll.min_off : NULL;
            pc.key_offset = a->koff + (ptrdiff_t)c0;
            pc.out = boc[c]->p;
            pc.lse = blc[c]->p;
            call_begin("attnx_attention (chunk)");
            call_end(run_attention(a, bp, &pc), ATTNX_OK);
            read_out(boc[c], mo, "chunk out");   /* every element written */
            read_out(blc[c], cl, "chunk lse");
            memcpy((char *)bouts->p + c * rows * dv * es, boc[c]->p, rows * dv * es);
            memcpy((char *)blses->p + c * rows * es, blc[c]->p, rows * es);
            buf_seal(bouts);   /* inputs of the merge: the next chunk's call leaves them be */
            buf_seal(blses);
        }
        /* a partial with lse -inf weighs nothing: its out is not read */
        free(bouts->deny);
        bouts->deny = NULL;
        for (size_t c = 0; c < P; c++)
            for (size_t row = 0; row < rows; row++)
                if (elv(blses->p, (ptrdiff_t)(c * rows + row), a->f32) == -INFINITY)
                    buf_deny(bouts, (c * rows + row) * dv, dv);
        call_begin("attnx_merge_attention (chunks)");
        int rc = a->f32 ? attnx_merge_attention_f32(P, rows, dv, (const float *)bouts->p, (const float *)blses->p,
                                                    (float *)bmo->p, (float *)bml->p)
                        : attnx_merge_attention(P, rows, dv, dp(bouts), dp(blses), dp(bmo), dp(bml));
        call_end(rc, ATTNX_OK);
        read_out(bmo, mo, "merged out");
        read_out(bml, ml, "merged lse");
        char name[160];
        for (size_t row = 0; row < rows; row++) {
            const rref *rr = &R.r[row];
            snprintf(name, sizeof name, "merged (%zu chunks) row %zu (sees %zu of %zu keys)", P, row,
                     a->nseen[row], T);
            if (a->nseen[row] == 0) {
                all_equal(mo + row * dv, dv, 0.0, name);
                lse_is(ml[row], -INFINITY, name, row);
                continue;
            }
            if (!rr->tame) continue;
            if (rr->cls == ROW_NAN) {
                all_equal(mo + row * dv, dv, NAN, name);
                lse_is(ml[row], NAN, name, row);
                continue;
            }
            if (!rr->numeric) continue;
            double rel = rr->rel_c + 2.0 * rr->tol_lse + 4.0 * (double)(P + 4) * a->eps;
            close_to(mo + row * dv, R.c + row * dv, R.mag + row * dv, dv, rel, rr->abs_c, name);
            double tl = rr->tol_lse + (double)(P + 8) * a->eps * (1.0 + fabs(rr->lse));
            if (!(fabs(ml[row] - rr->lse) <= tl))
                fail("%s: lse %.17g, reference %.17g, whole %.17g: |diff| %.3g > %.3g", name, ml[row], rr->lse,
                     l[row], fabs(ml[row] - rr->lse), tl);
        }
    }
    free(o), free(l), free(mo), free(ml), free(cl);
    aref_free(&R);
    att_free(a);
}

/* ---- attnx_merge_attention on partials from the data: the rules, a
 * long double reference, the status codes */
static void op_merge_raw(reader *r, header *h)
{
    int f32 = (int)h->f32;
    size_t es = f32 ? 4 : 8;
    size_t P = 1 + h->d % 8, rows = h->Lq, dv = h->dv;
    while (rows > 1 && P * rows * (dv + 1) > 60000) rows /= 2;
    double eps = f32 ? FLT_EPSILON : EPS, tiny = f32 ? 1e-37 : 1e-300;
    cur.op = f32 ? "merge_attention_f32" : "merge_attention";
    cur.T = P;
    cur.Lq = rows;
    buf *bO = in_new_e("outs", P * rows * dv, next_mis(), es), *bL = in_new_e("lses", P * rows, next_mis(), es);
    fill_values_e(r, bO, f32);
    fill_values_e(r, bL, f32);
    if (h->flags & F_MASK) {   /* partials that attended nothing */
        for (size_t i = 0; i < P * rows; i++)
            if (data8(r) & 1) elset(bL->p, (ptrdiff_t)i, -INFINITY, f32);
        buf_seal(bL);
    }
    if (pick_invalid(h)) {
        buf *bo = out_new_e("out", rows * dv, next_mis(), es), *bl = out_new_e("lse", rows, next_mis(), es);
        const void *O = bO->p, *Ls = bL->p;
        void *o = bo->p, *l = bl->p;
        size_t Pa = P, ra = rows;
        int expect;
        switch (h->inval % 6) {
        case 0: O = NULL; expect = ATTNX_ERR_NULL; break;
        case 1: Ls = NULL; expect = ATTNX_ERR_NULL; break;
        case 2: o = NULL; expect = ATTNX_ERR_NULL; break;
        case 3: l = NULL; expect = ATTNX_ERR_NULL; break;
        case 4: Pa = 0; expect = ATTNX_ERR_EMPTY; break;
        default: ra = huge_count_e(h, dv ? dv : 1, es); expect = ATTNX_ERR_OVERFLOW; break;
        }
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_merge_attention (invalid)");
            int rc = f32 ? attnx_merge_attention_f32(Pa, ra, dv, (const float *)O, (const float *)Ls, (float *)o,
                                                     (float *)l)
                         : attnx_merge_attention(Pa, ra, dv, (const double *)O, (const double *)Ls, (double *)o,
                                                 (double *)l);
            call_end(rc, expect);
        }
        return;
    }
    if (pick_overlap(h)) {
        /* out on outs or lses, lse on outs, lses or out */
        unsigned sel = h->inval % 5, k = h->inval / 5;
        void *o = NULL, *l = NULL;
        size_t ob = rows * dv * es, lb = rows * es;
        if (sel == 0 && ob && P * rows * dv >= rows * dv) o = (char *)bO->p + (k % (P * rows * dv - rows * dv + 1)) * es;
        else if (sel == 1 && ob && P * rows >= rows * dv) o = (char *)bL->p + (k % (P * rows - rows * dv + 1)) * es;
        else if (sel == 2 && lb && P * rows * dv >= rows) l = (char *)bO->p + (k % (P * rows * dv - rows + 1)) * es;
        else if (sel == 3 && lb) l = (char *)bL->p + (k % (P * rows - rows + 1)) * es;
        else if (sel == 4 && ob && lb) {
            size_t off = k % (rows * dv);
            buf *sh = out_new_e("out+lse", off + rows > rows * dv ? off + rows : rows * dv, next_mis(), es);
            o = sh->p;
            l = (char *)sh->p + off * es;
        } else {
            return;
        }
        if (!o) o = out_new_e("out", rows * dv, next_mis(), es)->p;
        if (!l) l = out_new_e("lse", rows, next_mis(), es)->p;
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_merge_attention (overlap)");
            int rc = f32 ? attnx_merge_attention_f32(P, rows, dv, (const float *)bO->p, (const float *)bL->p,
                                                     (float *)o, (float *)l)
                         : attnx_merge_attention(P, rows, dv, dp(bO), dp(bL), (double *)o, (double *)l);
            call_end(rc, ATTNX_ERR_OVERLAP);
        }
        return;
    }
    for (size_t i = 0; i < P * rows; i++)
        if (elv(bL->p, (ptrdiff_t)i, f32) == -INFINITY) buf_deny(bO, i * dv, dv);
    buf *bo = out_new_e("out", rows * dv, next_mis(), es), *bl = out_new_e("lse", rows, next_mis(), es);
    double *o = dalloc(rows * dv), *l = dalloc(rows), *so = dalloc(rows * dv), *sl = dalloc(rows);
    char name[128];
    for (size_t L = 0; L < g_nlevels; L++) {
        set_level(g_levels[L]);
        call_begin("attnx_merge_attention");
        int rc = f32 ? attnx_merge_attention_f32(P, rows, dv, (const float *)bO->p, (const float *)bL->p,
                                                 (float *)bo->p, (float *)bl->p)
                     : attnx_merge_attention(P, rows, dv, dp(bO), dp(bL), dp(bo), dp(bl));
        call_end(rc, ATTNX_OK);
        read_out(bo, o, "out");
        read_out(bl, l, "lse");
        if (L > 0) {   /* max-first in double, in a fixed order: the same bits at every level */
            for (size_t i = 0; i < rows * dv; i++)
                if (bits_of(o[i]) != bits_of(so[i])) fail("merged out[%zu] = %.17g, scalar level %.17g", i, o[i], so[i]);
            for (size_t i = 0; i < rows; i++)
                if (bits_of(l[i]) != bits_of(sl[i])) fail("merged lse[%zu] = %.17g, scalar level %.17g", i, l[i], sl[i]);
        } else {
            memcpy(so, o, rows * dv * sizeof(double));
            memcpy(sl, l, rows * sizeof(double));
        }
        for (size_t row = 0; row < rows; row++) {
            snprintf(name, sizeof name, "merge row %zu of %zu partials", row, P);
            int nan = 0, pinf = 0;
            long double M = -INFINITY;
            for (size_t q = 0; q < P; q++) {
                double x = elv(bL->p, (ptrdiff_t)(q * rows + row), f32);
                nan |= isnan(x) != 0;
                pinf |= x == INFINITY;
                if (x > M) M = x;
            }
            if (nan) {
                all_equal(o + row * dv, dv, NAN, name);
                lse_is(l[row], NAN, name, row);
                continue;
            }
            if (pinf) continue;   /* the contract says nothing of +inf */
            if (M == -INFINITY) {
                all_equal(o + row * dv, dv, 0.0, name);
                lse_is(l[row], -INFINITY, name, row);
                continue;
            }
            long double S = 0;
            double maxdiff = 0;
            for (size_t q = 0; q < P; q++) {
                double x = elv(bL->p, (ptrdiff_t)(q * rows + row), f32);
                if (x == -INFINITY) continue;
                S += expl((long double)x - M);
                if ((double)(M - x) < 800.0 && (double)(M - x) > maxdiff) maxdiff = (double)(M - x);
            }
            long double Lr = M + logl(S);
            double tl = 4.0 * eps * fabs((double)Lr) + 4.0 * EPS * fabs((double)M) + (double)(P + 8) * EPS;
            if (!(fabs(l[row] - (double)Lr) <= tl))
                fail("%s: lse %.17g, reference %.17Lg: |diff| %.3g > %.3g", name, l[row], Lr, fabs(l[row] - (double)Lr), tl);
            double rel = 2.0 * EPS * (maxdiff + 4.0) + (double)(P + 4) * EPS + 2.0 * eps;
            for (size_t j = 0; j < dv; j++) {
                long double ref = 0, mag = 0, far = 0;
                int tm = 1;
                for (size_t q = 0; q < P; q++) {
                    double x = elv(bL->p, (ptrdiff_t)(q * rows + row), f32);
                    if (x == -INFINITY) continue;
                    double v = elv(bO->p, (ptrdiff_t)((q * rows + row) * dv + j), f32);
                    long double c = expl((long double)x - M) / S;
                    tm &= isfinite(v) && fabs(v) < TAME;
                    ref += c * v;
                    mag += c * fabsl((long double)v);
                    if (M - x > 700) far += c * fabsl((long double)v);   /* exp near or past underflow */
                }
                if (!tm) continue;
                double got = o[row * dv + j], want = (double)ref;
                double tol = rel * (double)mag + 2.0 * (double)far + tiny * (double)(P + 1);
                if (!(fabs(got - want) <= tol))
                    fail("%s: out[%zu] = %.17g, reference %.17g: |diff| %.3g > %.3g", name, j, got, want,
                         fabs(got - want), tol);
            }
        }
    }
    free(o), free(l), free(so), free(sl);
}

/* ---- attnx_attention_backward / _f32 */

/* The gradients in long double from the reference's scores (the FlashAttention
 * formulas of api_backward.h are the calculus of attnx_api.def's rules), with
 * D from the forward out the call is given. Per element: the reference, a
 * magnitude (sum of |terms|), a relative tolerance, and whether it is
 * comparable (every row it sums over tame and well conditioned). */
typedef struct {
    double *ref, *mag, *rel;
    unsigned char *ok;
} gref;

static void gref_new(gref *g, size_t n)
{
    g->ref = dalloc(n);
    g->mag = dalloc(n);
    g->rel = dalloc(n);
    g->ok = (unsigned char *)malloc(n + 1);
    if (!g->ok) abort();
    memset(g->ok, 1, n + 1);
}

static void gref_free(gref *g)
{
    free(g->ref);
    free(g->mag);
    free(g->rel);
    free(g->ok);
}

/* Whether every row of item b has a finite or -inf lse and finite out and
 * grad_out, and the scale is finite: else a key the item's rows do not see
 * may still get NaN (the weights of unseen keys are NaN in a NaN row;
 * 0 * NaN for the others). */
static int bwd_item_clean(const att *a, size_t b, const void *O, const void *Ls, const char *G, const layout *lg)
{
    if (!isfinite(a->f32 ? (double)(float)a->scale : a->scale)) return 0;   /* 0 * scale */
    for (size_t i = 0; i < a->Lq; i++) {
        size_t row = b * a->Lq + i;
        double l = elv(Ls, (ptrdiff_t)row, a->f32);
        if (isnan(l) || l == INFINITY) return 0;
        ptrdiff_t gi = item_off(a->h, lg, b) + (ptrdiff_t)(i * a->dv);
        for (size_t j = 0; j < a->dv; j++)
            if (!isfinite(elv(G, gi + (ptrdiff_t)j, a->f32)) || !isfinite(elv(O, (ptrdiff_t)(row * a->dv + j), a->f32)))
                return 0;
    }
    return 1;
}

static void bwd_reference(const att *a, const aref *R, const void *O, const void *Ls, const char *G, const layout *lg,
                          gref *gq, gref *gk, gref *gv)
{
    size_t T = a->T, d = a->d, dv = a->dv, Lq = a->Lq;
    int f = a->f32;
    double eps = a->eps, big = f ? 1e30 : 1e300;
    long double *rq = (long double *)calloc(a->rows * d + 1, sizeof(long double));
    long double *rk = (long double *)calloc(a->count * T * d + 1, sizeof(long double));
    long double *rv = (long double *)calloc(a->count * T * dv + 1, sizeof(long double));
    if (!rq || !rk || !rv) abort();
    for (size_t b = 0; b < a->count; b++) {
        if (!bwd_item_clean(a, b, O, Ls, G, lg)) {
            memset(gk->ok + b * T * d, 0, T * d);
            memset(gv->ok + b * T * dv, 0, T * dv);
        }
        for (size_t i = 0; i < Lq; i++) {
            size_t row = b * Lq + i;
            const rref *rr = &R->r[row];
            if (!a->nseen[row]) {   /* 0, unless 0 * a non-finite scale */
                if (!isfinite(f ? (double)(float)a->scale : a->scale)) memset(gq->ok + row * d, 0, d);
                continue;
            }
            ptrdiff_t gi = item_off(a->h, lg, b) + (ptrdiff_t)(i * dv), qi = q_at(a, b, i);
            int ok = rr->tame && rr->numeric && rr->cls == ROW_NORMAL;
            long double D = 0, Dmag = 0;
            for (size_t j = 0; j < dv; j++) {
                double g = elv(G, gi + (ptrdiff_t)j, f), o = elv(O, (ptrdiff_t)(row * dv + j), f);
                ok &= tame_lim(g, a->tl) && tame_lim(o, a->tl);
                D += (long double)g * o;
                Dmag += fabsl((long double)g * o);
            }
            double rel_p = ok ? rr->tol_w + rr->tol_lse : 1.0;
            double err_g = a->cap > 0 ? 2.0 * rr->E / a->cap + 4.0 * eps : 0.0;
            double rel_ds = rel_p + (double)(dv + 4) * eps + err_g;
            for (size_t c = 0; c < d; c++) {
                gq->ok[row * d + c] = (unsigned char)ok;
                gq->rel[row * d + c] = rel_ds + (double)(T + 4) * eps;
            }
            for (size_t t = 0; t < T; t++) {
                if (!a->seen[row * T + t]) continue;
                ptrdiff_t ki = k_at(a, b, t), vi = v_at(a, b, t);
                size_t kr = (b * T + t) * d, vr = (b * T + t) * dv;
                long double p = ok ? expl(R->s[row * T + t] - (long double)rr->lse) : 0;
                long double dp = 0, dpmag = 0;
                for (size_t j = 0; j < dv; j++) {
                    long double g = elv(G, gi + (ptrdiff_t)j, f), v = elv(a->V, vi + (ptrdiff_t)j, f);
                    dp += g * v;
                    dpmag += fabsl(g * v);
                }
                long double ds = p * (dp - D) * R->g[row * T + t], Am = p * (dpmag + Dmag);
                long double sc = a->scale;
                for (size_t c = 0; c < d; c++) {
                    long double k = elv(a->K, ki + (ptrdiff_t)c, f), q = elv(a->Q, qi + (ptrdiff_t)c, f);
                    rq[row * d + c] += sc * ds * k;
                    gq->mag[row * d + c] += (double)(fabsl(sc) * Am * fabsl(k));
                    rk[kr + c] += sc * ds * q;
                    gk->mag[kr + c] += (double)(fabsl(sc) * Am * fabsl(q));
                    gk->ok[kr + c] &= (unsigned char)ok;
                    if (rel_ds + (double)(Lq + 4) * eps > gk->rel[kr + c]) gk->rel[kr + c] = rel_ds + (double)(Lq + 4) * eps;
                }
                for (size_t c = 0; c < dv; c++) {
                    long double g = elv(G, gi + (ptrdiff_t)c, f);
                    rv[vr + c] += p * g;
                    gv->mag[vr + c] += (double)(p * fabsl(g));
                    gv->ok[vr + c] &= (unsigned char)ok;
                    if (rel_p + (double)(Lq + 4) * eps > gv->rel[vr + c]) gv->rel[vr + c] = rel_p + (double)(Lq + 4) * eps;
                }
            }
        }
    }
    for (size_t e = 0; e < a->rows * d; e++) {
        gq->ref[e] = (double)rq[e];
        gq->ok[e] &= gq->mag[e] < big;
    }
    for (size_t e = 0; e < a->count * T * d; e++) {
        gk->ref[e] = (double)rk[e];
        gk->ok[e] &= gk->mag[e] < big;
    }
    for (size_t e = 0; e < a->count * T * dv; e++) {
        gv->ref[e] = (double)rv[e];
        gv->ok[e] &= gv->mag[e] < big;
    }
    free(rq);
    free(rk);
    free(rv);
}

/* got against want (a reference, or another level at twice the tolerance) */
static void grad_close(const double *got, const double *want, const gref *g, size_t n, double factor, double abs_tol,
                       const char *what)
{
    for (size_t e = 0; e < n; e++) {
        if (!g->ok[e]) continue;
        /* no terms: 0 within abs_tol, whatever rel (inf under a subnormal softcap) */
        double tol = (g->mag[e] == 0 ? 0.0 : factor * (g->rel[e] * g->mag[e])) + abs_tol;
        if (!(fabs(got[e] - want[e]) <= tol))
            fail("%s[%zu] = %.17g, expected %.17g: |diff| %.3g > tolerance %.3g (rel %.3g, magnitude %.3g)", what, e,
                 got[e], want[e], fabs(got[e] - want[e]), tol, g->rel[e], g->mag[e]);
    }
}

static void op_backward(reader *r, header *h)
{
    xheader x;
    read_xheader(r, &x);
    x.bias_mode &= 0x7f;   /* no clean-copy run here */
    att A, *a = &A;
    att_setup(r, h, &x, a, 0);
    cur.op = a->f32 ? "attention_backward_f32" : "attention_backward";
    size_t T = a->T, d = a->d, dv = a->dv, Lq = a->Lq, rows = a->rows, count = a->count, es = a->es;
    int f32 = a->f32;
    layout lg, lo, ll;
    make_layout(&lg, h, Lq * dv, x.aux & 7, 1, h->gap);
    make_layout(&lo, h, Lq * dv, 0, 0, 0);
    make_layout(&ll, h, Lq, 0, 0, 0);
    size_t pad = overlap_pad(a, h, es);
    buf *bG;
    const char *G = (const char *)batch_operand_e(r, h, &bG, "grad_out", &lg, count, f32, pad);
    buf *bO = in_new_e("out", lo.extent + pad, next_mis(), es), *bLs = in_new_e("lse", ll.extent + pad, next_mis(), es);
    buf_deny(bO, lo.extent, pad);
    buf_deny(bLs, ll.extent, pad);
    int valid = !pick_invalid(h) && !pick_overlap(h);
    if (valid) {
        att_seen(a);
        att_bias_nan(r, a, &x);
        att_deny_unseen(a);   /* the forward's rule: keys no row sees are never read */
    }
    attnx_attention_params p = att_params(a);
    buf *bp = buf_new("params", 1, valid ? a->psize : sizeof p, 0, 8, 0);
    if (T > 0 && rows > 0) {
        /* out and lse: the forward's, at the scalar level */
        buf *fo = out_new_e("forward out", rows * dv, next_mis(), es), *fl = out_new_e("forward lse", rows, next_mis(), es);
        set_level("scalar");
        p.out = fo->p;
        p.lse = fl->p;
        call_begin("attnx_attention (the forward)");
        if (valid) {
            call_end(run_attention(a, bp, &p), ATTNX_OK);
        } else {
            params_store(bp, &p, sizeof p, 0);
            call_end(f32 ? attnx_attention_f32(bp->p) : attnx_attention(bp->p), ATTNX_OK);
        }
        memcpy(bO->p, fo->p, rows * dv * es);
        memcpy(bLs->p, fl->p, rows * es);
        buf_seal(bO);
        buf_seal(bLs);
    }
    p.out = bO->p;
    p.lse = bLs->p;
    p.weights = NULL;
    const ptrdiff_t *gs = lg.strides, *os = lo.strides, *ls = ll.strides;
    void *gQ, *gK, *gV;

    if (pick_invalid(h)) {
        buf *b1 = out_new_e("grad_query", rows * d, next_mis(), es), *b2 = out_new_e("grad_keys", count * T * d, next_mis(), es);
        buf *b3 = out_new_e("grad_values", count * T * dv, next_mis(), es);
        gQ = b1->p, gK = b2->p, gV = b3->p;
        size_t psize = sizeof p;
        unsigned char tail = 0;
        int nullp = 0, expect;
        unsigned sel = h->inval % 27, k = h->inval / 27;
        if (sel < 20) {
            if (sel == 16 && a->KL) sel = 2;   /* T = 0 would spoil the key lengths too */
            expect = att_spoil(a, h, &p, sel, k, &psize, &tail, &nullp);
            if (sel == 17 && !a->count) expect = -1;
        } else {
            expect = ATTNX_ERR_NULL;
            switch (sel) {
            case 20: p.lse = NULL; break;
            case 21: G = NULL; break;
            case 22: gQ = NULL; break;
            case 23: gK = NULL; break;
            case 24: gV = NULL; break;
            case 25: p.weights = out_new_e("weights", rows * T, next_mis(), es)->p; expect = ATTNX_ERR_ARG; break;
            default:
                if (!h->nbatch) {
                    expect = -1;
                } else if (k % 3 == 0) {
                    gs = NULL;
                } else if (k % 3 == 1) {
                    os = NULL;
                } else {
                    ls = NULL;
                }
                break;
            }
        }
        if (expect < 0) {
            att_free(a);
            return;
        }
        buf *bpi = buf_new("params", 1, psize > sizeof p ? psize : sizeof p, 0, 8, 0);
        params_store(bpi, &p, psize, tail);
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_attention_backward (invalid)");
            const attnx_attention_params *pp = nullp ? NULL : (const attnx_attention_params *)bpi->p;
            int rc = f32 ? attnx_attention_backward_f32(pp, G, gs, os, ls, gQ, gK, gV)
                         : attnx_attention_backward(pp, G, gs, os, ls, gQ, gK, gV);
            call_end(rc, expect);
        }
        att_free(a);
        return;
    }

    if (pick_overlap(h)) {
        /* a gradient over an input (item 0), or two gradients sharing memory */
        if (!rows || !T) {
            att_free(a);
            return;
        }
        unsigned sel = h->inval % 13, k = h->inval / 13;
        size_t nb[3] = {rows * d, count * T * d, count * T * dv};
        void *g3[3] = {NULL, NULL, NULL};
        if (sel < 10) {
            unsigned which = k % 3;
            buf *tgt = NULL;
            const void *tb = NULL;
            const layout *tl = NULL;
            switch (sel) {
            case 0: tgt = a->bQ, tb = a->Q, tl = &a->lq; break;
            case 1: tgt = a->bK, tb = a->K, tl = &a->lk; break;
            case 2: tgt = a->bV, tb = a->V, tl = a->alias ? &a->lk : &a->lv; break;
            case 3: tgt = bO, tb = bO->p, tl = &lo; break;
            case 4: tgt = bLs, tb = bLs->p, tl = &ll; break;
            case 5: tgt = bG, tb = G, tl = &lg; break;
            case 6: tgt = a->bM, tb = a->M, tl = &a->lm; break;
            case 7: tgt = a->bB, tb = a->B, tl = &a->lb; break;
            case 8: tgt = a->bS, tb = a->S, tl = &a->ls; break;
            default: tgt = a->bL, tb = a->KL, tl = &a->ll; break;
            }
            if (!tgt || !tl->msize || !nb[which]) {
                att_free(a);
                return;
            }
            g3[which] = place_over(tgt, first_el(tgt, tb, tl, h), nb[which] * es, es);
            if (!g3[which]) {
                att_free(a);
                return;
            }
        } else {
            unsigned i1 = sel == 12 ? 1 : 0, i2 = sel == 10 ? 1 : 2;
            if (!nb[i1] || !nb[i2]) {
                att_free(a);
                return;
            }
            size_t off = k % nb[i1];
            buf *sh = out_new_e("shared gradients", off + nb[i2] > nb[i1] ? off + nb[i2] : nb[i1], next_mis(), es);
            g3[i1] = sh->p;
            g3[i2] = (char *)sh->p + off * es;
        }
        static const char *gn[3] = {"grad_query", "grad_keys", "grad_values"};
        for (int i = 0; i < 3; i++)
            if (!g3[i]) g3[i] = out_new_e(gn[i], nb[i], next_mis(), es)->p;
        params_store(bp, &p, sizeof p, 0);
        for (size_t L = 0; L < g_nlevels; L++) {
            set_level(g_levels[L]);
            call_begin("attnx_attention_backward (overlapping output)");
            int rc = f32 ? attnx_attention_backward_f32(bp->p, G, gs, os, ls, g3[0], g3[1], g3[2])
                         : attnx_attention_backward(bp->p, G, gs, os, ls, g3[0], g3[1], g3[2]);
            call_end(rc, ATTNX_ERR_OVERLAP);
        }
        att_free(a);
        return;
    }

    aref R;
    memset(&R, 0, sizeof R);
    att_reference(a, &R);
    gref rq, rk, rv;
    gref_new(&rq, rows * d);
    gref_new(&rk, count * T * d);
    gref_new(&rv, count * T * dv);
    bwd_reference(a, &R, bO->p, bLs->p, G, &lg, &rq, &rk, &rv);
    buf *b1 = out_new_e("grad_query", rows * d, next_mis(), es), *b2 = out_new_e("grad_keys", count * T * d, next_mis(), es);
    buf *b3 = out_new_e("grad_values", count * T * dv, next_mis(), es);
    double *q1 = dalloc(rows * d), *k1 = dalloc(count * T * d), *v1 = dalloc(count * T * dv);
    double *sq = dalloc(rows * d), *sk = dalloc(count * T * d), *sv = dalloc(count * T * dv);
    double abs_tol = a->tiny * (double)(T + Lq + d + dv + 1);
    int expect = T == 0 ? ATTNX_ERR_EMPTY : ATTNX_OK;
    for (size_t L = 0; L < g_nlevels; L++) {
        set_level(g_levels[L]);
        call_begin("attnx_attention_backward");
        params_store(bp, &p, a->psize, 0);
        int rc = f32 ? attnx_attention_backward_f32(bp->p, G, gs, os, ls, b1->p, b2->p, b3->p)
                     : attnx_attention_backward(bp->p, G, gs, os, ls, b1->p, b2->p, b3->p);
        call_end(rc, expect);
        if (rc != ATTNX_OK) continue;
        read_out(b1, q1, "grad_query");
        read_out(b2, k1, "grad_keys");
        read_out(b3, v1, "grad_values");
        /* on any input: a row that sees nothing has no gradient; a key no
         * row of its item sees has none (unless a NaN row of the item makes
         * unseen keys NaN, as it makes their weights) */
        for (size_t row = 0; row < rows && isfinite(f32 ? (double)(float)a->scale : a->scale); row++)
            if (!a->nseen[row]) all_equal(q1 + row * d, d, 0.0, "grad_query (a row that sees no key)");
        for (size_t b = 0; b < count; b++)
            for (size_t t = 0; t < T && bwd_item_clean(a, b, bO->p, bLs->p, G, &lg); t++) {
                int any = 0;
                for (size_t i = 0; i < Lq && !any; i++) any = a->seen[(b * Lq + i) * T + t];
                if (any) continue;
                all_equal(k1 + (b * T + t) * d, d, 0.0, "grad_keys (a key no row sees)");
                all_equal(v1 + (b * T + t) * dv, dv, 0.0, "grad_values (a key no row sees)");
            }
        grad_close(q1, rq.ref, &rq, rows * d, 1.0, abs_tol, "grad_query vs reference");
        grad_close(k1, rk.ref, &rk, count * T * d, 1.0, abs_tol, "grad_keys vs reference");
        grad_close(v1, rv.ref, &rv, count * T * dv, 1.0, abs_tol, "grad_values vs reference");
        if (L == 0) {
            memcpy(sq, q1, rows * d * sizeof(double));
            memcpy(sk, k1, count * T * d * sizeof(double));
            memcpy(sv, v1, count * T * dv * sizeof(double));
            continue;
        }
        grad_close(q1, sq, &rq, rows * d, 2.0, 2.0 * abs_tol, "grad_query vs scalar");
        grad_close(k1, sk, &rk, count * T * d, 2.0, 2.0 * abs_tol, "grad_keys vs scalar");
        grad_close(v1, sv, &rv, count * T * dv, 2.0, 2.0 * abs_tol, "grad_values vs scalar");
    }
    free(q1), free(k1), free(v1), free(sq), free(sk), free(sv);
    gref_free(&rq);
    gref_free(&rk);
    gref_free(&rv);
    aref_free(&R);
    att_free(a);
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
    case 10: op_attention(&r, &h); break;
    case 11: op_merge_chunks(&r, &h); break;
    case 12: op_merge_raw(&r, &h); break;
    case OP_ADDITIVE: op_attend_batch(&r, &h, 1); break;
    default: op_backward(&r, &h); break;
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
