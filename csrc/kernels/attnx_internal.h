/*
 * attnx_internal.h -- what the kernel files share: the function table every
 * SIMD level fills, the exp constants, and small scalar helpers.
 * Never installed; nothing here is part of the public contract.
 *
 * Every helper is `static inline`: each kernel file is compiled with its own
 * ISA flags, and a shared out-of-line (or extern inline) copy could be merged
 * by the linker into the one compiled for the widest ISA.
 */
#ifndef ATTNX_INTERNAL_H
#define ATTNX_INTERNAL_H

#include <math.h>     /* INFINITY, NAN: macros, no libm call */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attnx.h"

/* Which SIMD kernel files have something to compile on this target.
 * -DATTNX_NO_SIMD builds the portable kernels alone (any C99 compiler). */
#if defined(ATTNX_NO_SIMD)
#elif defined(__x86_64__) || defined(_M_X64) || defined(_M_AMD64)
#define ATTNX_HAVE_X86 1
#elif defined(__aarch64__) || defined(_M_ARM64)
#define ATTNX_HAVE_NEON 1
#endif

/* Running state of an online softmax over a chunk of keys: the max score seen
 * (m), the sum of exp(score - m) (l), and, beside it, an accumulator
 * acc[dv] = sum_t exp(score_t - m) * V[t]. m == -inf means "nothing yet". */
typedef struct attnx_online {
    double m;
    double l;
} attnx_online;

/* log(x) for finite x >= DBL_MIN, about 1 ulp, without libm (whose log
 * would tie wheels to a newer glibc): api_log_softmax.c. Out of line, so
 * the kernels' logsumexp is the same at every level. */
double attnx_log_f64(double x);

/* log(1 + r) for r >= 0, about 1 ulp, accurate for small r (1 + r is never
 * rounded): api_log_softmax.c, for the kernels' log-softmax. */
double attnx_log1p_f64(double r);

/* The natural-log logsumexp m + log(l) of an online state: -inf when
 * nothing was seen (m = -inf), NaN when poisoned (l NaN). */
static inline double attnx_state_lse(double m, double l)
{
    if (l != l) return NAN;
    if (m == -INFINITY) return -INFINITY;
    return m + attnx_log_f64(l);
}

/* What shapes the scores of a fused call beyond scale * dot(q, k) (the
 * version-4 fields of attnx_attention_params, resolved by the entry point
 * for one batch item). Row r of the call (0-based), key t of its K:
 *   s = scale * dot(q_r, k_t)
 *   s = softcap * tanh(s / softcap)          softcap > 0
 *   s += bias[r * bias_row + t * bias_col]   bias != NULL (kernel's type)
 *   s -= slope * |pos + r - t|               slope != 0
 * and the key is seen only where lo + r <= t < hi + r (the window, causal
 * and lower-right rules folded into two offsets; ATTNX_NO_LO / ATTNX_NO_HI
 * when unbounded), besides the mask and t < T. A kernel given NULL mods
 * sees every key of [0, T) unshaped. */
typedef struct attnx_mods {
    const void *bias;
    ptrdiff_t bias_row, bias_col;
    double slope, softcap;
    ptrdiff_t pos, lo, hi;
} attnx_mods;
#define ATTNX_NO_LO (-(PTRDIFF_MAX / 4))
#define ATTNX_NO_HI (PTRDIFF_MAX / 4)

/* Whether mods change any score (else only the window matters). */
static inline int attnx_mods_shape(const attnx_mods *md)
{
    return md && (md->bias || md->slope != 0 || md->softcap > 0);
}

/* Row r's keys [*t0, *t1) within [0, T) under md (all of them for NULL). */
static inline void attnx_mods_range(const attnx_mods *md, size_t r, size_t T, size_t *t0, size_t *t1)
{
    ptrdiff_t a = 0, b = (ptrdiff_t)T;
    if (md) {
        if (md->lo + (ptrdiff_t)r > a) a = md->lo + (ptrdiff_t)r;
        if (md->hi + (ptrdiff_t)r < b) b = md->hi + (ptrdiff_t)r;
    }
    if (b < a) b = a;
    if (a > (ptrdiff_t)T) a = b = (ptrdiff_t)T;
    *t0 = (size_t)a;
    *t1 = (size_t)b;
}

/* The mods of row r alone, its keys starting at t0 (a one-row call on
 * K + t0 d): the bias and ALiBi position moved, no window (the caller has
 * cut the keys to the row's range). elsize: the element size. */
static inline attnx_mods attnx_mods_row(const attnx_mods *md, size_t r, size_t t0, size_t elsize)
{
    attnx_mods o = *md;
    if (o.bias)
        o.bias = (const char *)o.bias + ((ptrdiff_t)r * o.bias_row + (ptrdiff_t)t0 * o.bias_col) * (ptrdiff_t)elsize;
    o.pos = md->pos + (ptrdiff_t)r - (ptrdiff_t)t0;
    o.lo = ATTNX_NO_LO;
    o.hi = ATTNX_NO_HI;
    return o;
}

/* The kernels of one SIMD level. Sizes are validated by the caller (api.c):
 * kernels never see NULL pointers or overflowing sizes. */
typedef struct attnx_kernels {
    const char *name;

    /* y[i] = exp(x[i]); y may be x. */
    void (*exp)(const double *x, size_t n, double *y);

    /* s[t] = scale * dot(q, K[t]). */
    void (*dot_scores)(const double *q, const double *K, size_t T, size_t d,
                       double scale, double *s);

    /* y = softmax(x), y may be x. Returns 1 when the row max is -inf (the
     * row is all -inf; y is then NaN), else 0. n >= 1. */
    int (*softmax)(const double *x, size_t n, double *y);

    /* y = log(softmax(x)), y may be x; scipy's rules for NaN and inf.
     * n >= 1. */
    void (*log_softmax)(const double *x, size_t n, double *y);

    /* ctx[j] = sum_{t: w[t] != 0} w[t] * V[t, j]. */
    void (*context)(const double *w, const double *V, size_t T, size_t dv,
                    double *ctx);

    /* Fold keys [0, T) into an online-softmax state (st, acc[dv]); keys with
     * mask[t] == 0 are skipped unread (mask may be NULL). */
    void (*attend_online)(const double *q, const double *K, const double *V,
                          size_t T, size_t d, size_t dv, double scale,
                          const unsigned char *mask, const attnx_mods *mods,
                          attnx_online *st, double *acc);

    /* s[0..n) (keys t0.. of row `row`) shaped by mods (softcap, bias,
     * ALiBi; not the window), in place, exactly as the fused kernels do. */
    void (*shape_scores)(const attnx_mods *mods, size_t row, size_t t0, size_t n, double *s);

    /* Fused attention for nq consecutive queries Q[0..nq) (row stride d)
     * against the same K and V: row r sees the keys mods lets through
     * (attnx_mods; NULL: all), shaped by it. mask row r is mask + r *
     * mask_row_stride (mask may be NULL). ctx rows are contiguous; lse[r]
     * (lse may be NULL) gets m + log(l) of row r, -inf when nothing is seen,
     * NaN for a NaN row. Returns 1 when some ctx entry came out inf or
     * NaN (checked while the rows are in cache: the caller then finds and
     * redoes those rows), else 0. NULL in a table means the generic loop
     * over attend_online in api.c. */
    int (*attend_rows)(const double *Q, size_t nq, const double *K, const double *V,
                        size_t T, size_t d, size_t dv, double scale,
                        const unsigned char *mask, ptrdiff_t mask_row_stride,
                        const attnx_mods *mods, double *ctx, double *lse);

    /* Gradients of one batch item (queries [0, Lq), rows contiguous)
     * against keys [k0, k1): dK, dV rows k0..k1 overwritten, dQ added to;
     * dK and dQ lack the factor scale. D[r] = dO_r . O_r. dS (NULL: not
     * wanted; rows ldS apart) gets the bias's gradient at the keys each row
     * sees. The weights are exp(S - shift[r]) wt[r]; rows whose wt is 0
     * on entry first get the state of their scores over all of [0, T)
     * (shift their largest score, wt 1 / their sum of exps: k0 == k1 does
     * only that). mods as attend_rows (never NULL here). Returns -1 when
     * out of memory. NULL: api_backward.h's row-by-row passes. */
    int (*attend_backward)(const double *Q, const double *K, const double *V, const double *dO,
                           double *shift, double *wt, const double *D, size_t Lq, size_t T, size_t d,
                           size_t dv, double scale, const unsigned char *mask,
                           ptrdiff_t mask_row_stride, const attnx_mods *mods, size_t k0,
                           size_t k1, double *dQ, double *dK, double *dV, double *dS,
                           size_t ldS);
} attnx_kernels;

extern const attnx_kernels attnx_kernels_scalar;
#if defined(ATTNX_HAVE_X86)
extern const attnx_kernels attnx_kernels_avx2;
extern const attnx_kernels attnx_kernels_avx512;
#endif
#if defined(ATTNX_HAVE_NEON)
extern const attnx_kernels attnx_kernels_neon;
#endif

/* One SIMD level: every kernel table it fills (dispatch.c holds one record
 * per level and picks one per process, so all families always run at the
 * same level). A new family of kernels adds a field here and one entry per
 * row in dispatch.c. */
struct attnx_kernels_f32;
struct attnx_additive_kernels;
typedef struct attnx_level {
    const char *name;
    const attnx_kernels *f64;
    const struct attnx_kernels_f32 *f32;
    const struct attnx_additive_kernels *additive;
} attnx_level;

/* The level in use (dispatch.c). Never NULL once returned. */
const attnx_level *attnx_level_get(void);

/* Its float64 table. */
const attnx_kernels *attnx_kernels_get(void);

/* -------------------------------------------------------------------------
 * exp(x): the algorithm every level implements.
 *
 *   clamp x to [-746, 710]           (beyond: 0 or inf come out of the scaling;
 *                                     NaN passes through the clamp)
 *   n  = round(x / ln2)              (add-and-subtract 1.5 * 2^52)
 *   rh = x - n*ln2_hi                exact: ln2_hi has 32 significant bits, so
 *                                     n*ln2_hi is exact and the subtraction
 *                                     cancels exactly (Sterbenz)
 *   rl = lo - n*ln2_lo               tiny; r = rh + rl, |r| <= 0.3466
 *   u  = r^2 * (1/2! + r/3! + ... + r^11/13!)   Taylor to degree 13:
 *                                     truncation < 4.2e-18 relative
 *   e^r = (1 + rh) + (rl + u)        1 + rh split exactly into sh + sl
 *                                     (Fast2Sum), so the only large rounding
 *                                     is the final add: ~0.5 ulp + ~0.15 ulp
 *   e^x = e^r * 2^(n/2) * 2^(n - n/2)    two exact-power scalings, so the
 *                                     result overflows or goes subnormal with
 *                                     a single rounding
 *
 * `lo` carries the rounding error of a preceding subtraction (softmax passes
 * s - max as an exact two-sum hi + lo), so exp(hi + lo) costs one add more.
 * Measured max error over 4e6 points in [-745, 709.78]: 0.67 ulp where the
 * result is normal, 0.75 ulp at the subnormal boundary (double rounding);
 * tests/test_exp.py prints it for every level and asserts <= 1 ulp.
 * ------------------------------------------------------------------------- */
#define ATTNX_EXP_LO_CLAMP (-746.0)
#define ATTNX_EXP_HI_CLAMP 710.0
#define ATTNX_LOG2E 0x1.71547652b82fep0
#define ATTNX_LN2_HI 0x1.62e42feep-1
#define ATTNX_LN2_LO 0x1.a39ef35793c76p-33
#define ATTNX_SHIFTER 0x1.8p52
/* 1/k! rounded to double, k = 2..13 */
#define ATTNX_EXP_C2 0.5
#define ATTNX_EXP_C3 0x1.5555555555555p-3
#define ATTNX_EXP_C4 0x1.5555555555555p-5
#define ATTNX_EXP_C5 0x1.1111111111111p-7
#define ATTNX_EXP_C6 0x1.6c16c16c16c17p-10
#define ATTNX_EXP_C7 0x1.a01a01a01a01ap-13
#define ATTNX_EXP_C8 0x1.a01a01a01a01ap-16
#define ATTNX_EXP_C9 0x1.71de3a556c734p-19
#define ATTNX_EXP_C10 0x1.27e4fb7789f5cp-22
#define ATTNX_EXP_C11 0x1.ae64567f544e4p-26
#define ATTNX_EXP_C12 0x1.1eed8eff8d898p-29
#define ATTNX_EXP_C13 0x1.6124613a86d09p-33

static inline uint64_t attnx_f64_to_bits(double x)
{
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline double attnx_bits_to_f64(uint64_t u)
{
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* 2^k for -1022 <= k <= 1023 */
static inline double attnx_pow2i(int k)
{
    return attnx_bits_to_f64((uint64_t)(k + 1023) << 52);
}

/* below this, exp(x) 2^up rounds to 0: the clamp of the scaled exp */
#define ATTNX_EXP_LO_SCALED(up) (ATTNX_EXP_LO_CLAMP - (up) * 0.6931471805599453)

/* exp(hi + lo) 2^up, scalar reference of the algorithm above (up = 0;
 * up > 0 keeps a result below the normal range normal, for a product
 * that lands back in it: log_softmax's dominant score). lo must be finite
 * (callers zero it when hi is not). */
static inline double attnx_exp2sum_scaled_scalar(double hi, double lo, int up)
{
    double x = hi;
    if (x < ATTNX_EXP_LO_SCALED(up)) x = ATTNX_EXP_LO_SCALED(up);
    if (x > ATTNX_EXP_HI_CLAMP) x = ATTNX_EXP_HI_CLAMP;
    if (x != x) return x + lo;               /* NaN */
    double t = x * ATTNX_LOG2E + ATTNX_SHIFTER;
    double n = t - ATTNX_SHIFTER;
    double rh = x - n * ATTNX_LN2_HI;
    double rl = lo - n * ATTNX_LN2_LO;
    double r = rh + rl;
    double q = ATTNX_EXP_C13;
    q = q * r + ATTNX_EXP_C12;
    q = q * r + ATTNX_EXP_C11;
    q = q * r + ATTNX_EXP_C10;
    q = q * r + ATTNX_EXP_C9;
    q = q * r + ATTNX_EXP_C8;
    q = q * r + ATTNX_EXP_C7;
    q = q * r + ATTNX_EXP_C6;
    q = q * r + ATTNX_EXP_C5;
    q = q * r + ATTNX_EXP_C4;
    q = q * r + ATTNX_EXP_C3;
    q = q * r + ATTNX_EXP_C2;
    double u = (r * r) * q;
    double sh = 1.0 + rh;
    double sl = (1.0 - sh) + rh;         /* exact low part of 1 + rh */
    double er = sh + (sl + (rl + u));
    int k = (int)n + up;
    int k1 = k >> 1;           /* arithmetic shift: floor(k / 2) */
    return (er * attnx_pow2i(k1)) * attnx_pow2i(k - k1);
}

static inline double attnx_exp2sum_scalar(double hi, double lo)
{
    return attnx_exp2sum_scaled_scalar(hi, lo, 0);
}

/* Exact difference a - b = hi + lo (Knuth's two-sum, no branch). When hi is
 * not finite lo is meaningless; callers pass it through attnx_exp2sum_*,
 * which only reads lo when hi is in range -- see attnx_sub_lo_sane(). */
static inline double attnx_two_diff(double a, double b, double *lo)
{
    double hi = a - b;
    double z = hi - a;
    *lo = (a - (hi - z)) + (-b - z);
    return hi;
}

/* lo, or 0 where hi is -inf/below the range of exp(hi) 2^up or NaN (lo
 * is then NaN). */
static inline double attnx_sub_lo_sane(double hi, double lo, int up)
{
    return (hi >= ATTNX_EXP_LO_SCALED(up) && hi <= ATTNX_EXP_HI_CLAMP) ? lo : 0.0;
}

/* exp(a - b) with the rounding of the subtraction compensated. */
static inline double attnx_exp_diff_scaled_scalar(double a, double b, int up)
{
    double lo;
    double hi = attnx_two_diff(a, b, &lo);
    return attnx_exp2sum_scaled_scalar(hi, attnx_sub_lo_sane(hi, lo, up), up);
}

static inline double attnx_exp_diff_scalar(double a, double b)
{
    return attnx_exp_diff_scaled_scalar(a, b, 0);
}

/* ctx = acc / l for one query's online-softmax state (m, l), zeros when
 * nothing was attended (m == -inf), NaN when poisoned (l is NaN). The one
 * definition api.c and every level's rows kernel use, so the fused
 * single-query path and the batched path agree to the bit. */
static inline void attnx_online_finish(double m, double l, double *acc, size_t dv)
{
    if (l != l) {
        for (size_t j = 0; j < dv; j++) acc[j] = NAN;
    } else if (m == -INFINITY) {
        for (size_t j = 0; j < dv; j++) acc[j] = 0.0;
    } else {
        for (size_t j = 0; j < dv; j++) acc[j] /= l;
    }
}

/* Pointer-range overlap of [a, a + na) and [b, b + nb), in doubles/bytes. */
static inline int attnx_overlap(const void *a, size_t abytes, const void *b, size_t bbytes)
{
    uintptr_t a0 = (uintptr_t)a, b0 = (uintptr_t)b;
    if (abytes == 0 || bbytes == 0) return 0;
    return a0 < b0 + bbytes && b0 < a0 + abytes;
}

/* 64-byte aligned scratch: a vector load or store that straddles two
 * cache lines takes a second slot. The tiled kernels' packed key panels
 * and score blocks are read and written by every tile: on an Intel Xeon
 * (family 6 model 167) a score tile ran at 108 GFLOP/s with them aligned
 * and 90 with them 16 bytes off, which is all malloc promises.
 * attnx_malloc_al(n) is malloc(n) aligned (NULL where malloc fails or n is
 * too large); attnx_free_al frees it (NULL too). ATTNX_AL64 aligns an
 * array on the stack. */
static inline void *attnx_malloc_al(size_t bytes)
{
    const size_t extra = 64 + sizeof(void *);
    if (bytes > SIZE_MAX - extra) return NULL;
    unsigned char *raw = (unsigned char *)malloc(bytes + extra);
    if (!raw) return NULL;
    unsigned char *p = (unsigned char *)(((uintptr_t)raw + sizeof(void *) + 63) & ~(uintptr_t)63);
    memcpy(p - sizeof raw, &raw, sizeof raw);
    return p;
}

static inline void attnx_free_al(void *p)
{
    if (!p) return;
    void *raw;
    memcpy(&raw, (unsigned char *)p - sizeof raw, sizeof raw);
    free(raw);
}

#if defined(_MSC_VER)
#define ATTNX_AL64 __declspec(align(64))
#else
#define ATTNX_AL64 __attribute__((aligned(64)))
#endif

#endif /* ATTNX_INTERNAL_H */
