/*
 * C tests of the additive (Bahdanau / concat) attention functions: attnx_tanh
 * against long double tanhl (max error in ulp printed and bounded), its
 * special values, the fused scores at every SIMD level against the portable
 * kernels and against a long double reference, batching and broadcasting
 * against loops over the single form, threads, status codes and NaN
 * propagation; attnx_additive_attention against the composition of the
 * public scores, softmax and context calls (bit for bit), with masks,
 * causality, broadcasting and NaN/inf in rows it must not read. Runs every
 * level this CPU has, or the one ATTNX_SIMD pins.
 * Closes with "N passed, N failed"; the exit status is nonzero on failure.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnx.h"
#include "tests/harness.h"

/* The bound the tests assert; the kernels measure 0.61 ulp. */
#define TANH_MAX_ULP 1.0

static double *alloc_d(size_t n) { return malloc((n ? n : 1) * sizeof(double)); }
static double *rand_array(size_t n, double amp)
{
    double *a = alloc_d(n);
    for (size_t i = 0; i < n; i++) a[i] = amp * urand();
    return a;
}

static int same_bits(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

/* |y - ref| in units of the last place of ref's binade (2^-1074 below the
 * normal range). */
static double ulp_error(double y, long double ref)
{
    if (isnan(y) || isnan((double)ref)) return isnan(y) && isnan((double)ref) ? 0.0 : 1e9;
    if (ref == 0) return y == 0 ? 0.0 : 1e9;
    int e;
    frexpl(ref, &e);   /* |ref| = m 2^e, m in [0.5, 1) */
    long double ulp = e - 53 < -1074 ? ldexpl(1.0L, -1074) : ldexpl(1.0L, e - 53);
    return (double)(fabsl((long double)y - ref) / ulp);
}

static const size_t SIZES[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 129};
#define NSIZES (sizeof SIZES / sizeof SIZES[0])

/* ------------------------------------------------------------------- tanh */

/* The max error of attnx_tanh over n points, and where. */
static double tanh_max_ulp(const double *x, size_t n, double *y, double *where)
{
    double worst = 0.0;
    CHECK(attnx_tanh(x, n, y) == ATTNX_OK, "tanh status");
    for (size_t i = 0; i < n; i++) {
        double e = ulp_error(y[i], tanhl((long double)x[i]));
        if (e > worst) {
            worst = e;
            *where = x[i];
        }
    }
    return worst;
}

static void test_tanh_accuracy(void)
{
    /* no reference where long double is double, or computes like it
     * (valgrind runs x87 code in double precision) */
    volatile long double one = 1.0L, eps = LDBL_EPSILON;
    if (LDBL_MANT_DIG < 64 || one + eps == one) {
        printf("level %-7s tanh: accuracy test skipped (long double is not wider than "
               "double here)\n", g_level);
        return;
    }
    /* a quad long double (aarch64) is software: fewer points, still > 1e6 */
    const int quad = LDBL_MANT_DIG > 64;
    const size_t N = quad ? 1u << 19 : 1u << 20;
    double *x = alloc_d(N), *y = alloc_d(N), where = 0.0, w;
    double worst = 0.0;
    size_t points = 0;
    /* 1: evenly spread over [-20, 20], with different offsets */
    for (int pass = 0; pass < (quad ? 2 : 3); pass++) {
        for (size_t i = 0; i < N; i++) x[i] = -20.0 + 40.0 * ((double)i + 0.37 * pass) / (double)N;
        w = tanh_max_ulp(x, N, y, &where);
        worst = w > worst ? w : worst;
        points += N;
    }
    double even = worst;
    /* 2: random on [-2, 2] and on [-0.6, 0.6] (both branches, the switch) */
    for (size_t i = 0; i < N; i++) x[i] = (i & 1 ? 2.0 : 0.6) * urand();
    w = tanh_max_ulp(x, N, y, &where);
    worst = w > worst ? w : worst;
    points += N;
    /* 3: tiny (2^-1074 .. 2^-20), huge (20 .. DBL_MAX), random bit patterns
     * of every exponent, and a few ulps around the thresholds */
    size_t k = 0;
    for (int e = -1074; e <= -20 && k < N; e++)
        for (int j = 0; j < 16; j++) x[k++] = (j & 1 ? -1.0 : 1.0) * ldexp(1.0 + j / 16.0, e);
    for (int e = 4; e <= 1023; e++) {
        x[k++] = ldexp(1.0 + urand() * 0.5 + 0.5, e);
        x[k++] = -ldexp(1.0 + urand() * 0.5 + 0.5, e);
    }
    x[k++] = DBL_MAX;
    x[k++] = -DBL_MAX;
    x[k++] = DBL_MIN;
    x[k++] = 0x1p-1074;
    const double edges[] = {0.3, 19.0, 19.06, 19.0615, 19.1, 20.0, 0.5, 1.0, 0x1p-26, 0x1p-27};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        double u = edges[i];
        for (int j = 0; j < 64; j++) {
            x[k++] = u;
            x[k++] = -u;
            u = nextafter(u, 0.0);
        }
        u = edges[i];
        for (int j = 0; j < 64; j++) {
            u = nextafter(u, 100.0);
            x[k++] = u;
        }
    }
    while (k < 200000) {   /* any finite double */
        uint64_t b = next_u64();
        double d;
        memcpy(&d, &b, sizeof d);
        if (isfinite(d)) x[k++] = d;
    }
    w = tanh_max_ulp(x, k, y, &where);
    worst = w > worst ? w : worst;
    points += k;
    printf("level %-7s tanh: max error %.4f ulp over %zu points vs tanhl (%.4f on the even "
           "grid of [-20, 20]); worst at %.17g\n",
           g_level, worst, points, even, where);
    CHECK(worst <= TANH_MAX_ULP, "tanh max error %.4f ulp at %.17g", worst, where);
    free(x);
    free(y);
}

static void test_tanh_specials(void)
{
    const double in[] = {0.0, -0.0, INFINITY, -INFINITY, 20.0, -20.0, 19.5, 1e300, -1e300,
                         0x1p-1074, -0x1p-1074, 1e-300, -1e-300, 0x1p-30};
    double out[sizeof in / sizeof in[0]];
    const size_t n = sizeof in / sizeof in[0];
    CHECK(attnx_tanh(in, n, out) == ATTNX_OK, "status");
    CHECK(same_bits(out[0], 0.0), "tanh(+0) = %a", out[0]);
    CHECK(same_bits(out[1], -0.0), "tanh(-0) = %a (sign kept)", out[1]);
    CHECK(out[2] == 1.0 && out[3] == -1.0, "tanh(+-inf) = %a %a", out[2], out[3]);
    CHECK(out[4] == 1.0 && out[5] == -1.0, "tanh(+-20) = %a %a", out[4], out[5]);
    CHECK(out[6] == 1.0 && out[7] == 1.0 && out[8] == -1.0, "saturation %a %a %a", out[6], out[7], out[8]);
    for (size_t i = 9; i < n; i++) CHECK(same_bits(out[i], in[i]), "tanh(%a) = %a (x below 2^-27)", in[i], out[i]);
    /* the last double below 1 comes before the saturation threshold */
    double t19 = 0;
    attnx_tanh((const double[]){19.0}, 1, &t19);
    CHECK(t19 == 1.0 - 0x1p-53, "tanh(19) = %a", t19);
    /* NaN, whatever its sign or payload */
    double nans[3] = {NAN, -NAN, 0}, r[3];
    uint64_t payload = 0x7FF0000000000123ull;   /* signalling */
    memcpy(&nans[2], &payload, sizeof payload);
    CHECK(attnx_tanh(nans, 3, r) == ATTNX_OK, "status");
    CHECK(isnan(r[0]) && isnan(r[1]) && isnan(r[2]), "tanh(NaN) = %g %g %g", r[0], r[1], r[2]);
    /* exactly odd, and in place */
    const size_t m = 1003;
    double *x = rand_array(m, 8.0), *nx = alloc_d(m), *y = alloc_d(m), *ny = alloc_d(m);
    for (size_t i = 0; i < m; i++) nx[i] = -x[i];
    attnx_tanh(x, m, y);
    attnx_tanh(nx, m, ny);
    int odd = 1;
    for (size_t i = 0; i < m; i++) odd &= same_bits(ny[i], -y[i]);
    CHECK(odd, "tanh(-x) == -tanh(x) bitwise");
    /* every length through the vector tails gives the same bits */
    for (size_t len = 0; len <= 19; len++) {
        double buf[19];
        memcpy(buf, x, len * sizeof(double));
        CHECK(attnx_tanh(buf, len, buf) == ATTNX_OK, "in place");
        CHECK(len == 0 || memcmp(buf, y, len * sizeof(double)) == 0, "in place / tail, n = %zu", len);
    }
    free(x);
    free(nx);
    free(y);
    free(ny);
}

/* ----------------------------------------------------------------- scores */

/* Long double reference of one score, and the condition sum |v tanh|. */
static long double ref_score(const double *a, const double *k, const double *v, size_t h,
                             long double *cond)
{
    long double s = 0, c = 0;
    for (size_t j = 0; j < h; j++) {
        long double p = (long double)v[j] * tanhl((long double)a[j] + (long double)k[j]);
        s += p;
        c += fabsl(p);
    }
    *cond = c;
    return s;
}

static int scores_with(const char *level, const double *a, const double *Kp, const double *v,
                       size_t T, size_t h, double *s)
{
    const char *cur = g_level;
    int rc = attnx_set_simd_level(level);
    if (rc == ATTNX_OK) rc = attnx_additive_scores(a, Kp, v, T, h, s);
    attnx_set_simd_level(cur);
    return rc;
}

static void test_scores_vs_scalar(void)
{
    const double amps[] = {0.25, 2.0, 30.0};
    int ok_scalar = 1, ok_ref = 1;
    double worst_ref = 0.0;
    for (size_t ai = 0; ai < 3; ai++)
        for (size_t ti = 0; ti < NSIZES; ti++)
            for (size_t hi = 0; hi < NSIZES; hi++) {
                size_t T = SIZES[ti], h = SIZES[hi];
                double amp = amps[ai];
                double *a = rand_array(h, amp), *Kp = rand_array(T * h, amp), *v = rand_array(h, 1.0);
                double *s = alloc_d(T + 1), *sr = alloc_d(T + 1);
                s[T] = sr[T] = 12345.0;
                CHECK(attnx_additive_scores(a, Kp, v, T, h, s) == ATTNX_OK, "status");
                CHECK(scores_with("scalar", a, Kp, v, T, h, sr) == ATTNX_OK, "scalar status");
                CHECK(s[T] == 12345.0 && sr[T] == 12345.0, "wrote past T = %zu", T);
                for (size_t t = 0; t < T; t++) {
                    long double cond;
                    long double ref = ref_score(a, Kp + t * h, v, h, &cond);
                    /* each tanh within 0.61 ulp at both, plus the sums'
                     * different orders */
                    double tol = (double)(h + 4) * 2.0 * DBL_EPSILON * (double)cond;
                    double e = fabs(s[t] - sr[t]);
                    if (ok_scalar && !(e <= tol)) {
                        ok_scalar = 0;
                        CHECK(0, "T=%zu h=%zu amp=%g t=%zu: %.17g vs scalar %.17g", T, h, amp, t, s[t], sr[t]);
                    }
                    double er = (double)fabsl((long double)s[t] - ref);
                    double rel = cond > 0 ? er / (double)cond / DBL_EPSILON : 0;
                    if (rel > worst_ref) worst_ref = rel;
                    if (ok_ref && !(er <= tol / 2)) {
                        ok_ref = 0;
                        CHECK(0, "T=%zu h=%zu t=%zu: %.17g vs long double %.17Lg", T, h, t, s[t], ref);
                    }
                }
                free(a);
                free(Kp);
                free(v);
                free(s);
                free(sr);
            }
    CHECK(ok_scalar, "every size vs scalar");
    CHECK(ok_ref, "every size vs long double");
    printf("level %-7s scores: max |s - ref| = %.3f eps * sum|v tanh| over %zu x %zu sizes\n",
           g_level, worst_ref, NSIZES, NSIZES);
}

/* A score depends on its own row only: any T, any offset, same bits. */
static void test_scores_row_independent(void)
{
    const size_t T = 23, h = 37;
    double *a = rand_array(h, 1.5), *Kp = rand_array(T * h, 1.5), *v = rand_array(h, 1.0);
    double s[23], p[23];
    attnx_additive_scores(a, Kp, v, T, h, s);
    int same = 1;
    for (size_t t0 = 0; t0 < T; t0++)
        for (size_t n = 1; t0 + n <= T; n += 3) {
            attnx_additive_scores(a, Kp + t0 * h, v, n, h, p);
            same &= memcmp(p, s + t0, n * sizeof(double)) == 0;
        }
    CHECK(same, "scores independent of T and of the row's block");
    /* one key, one column: v tanh(a + k) */
    double one;
    const double a1 = 0.25, k1 = 0.5, v1 = -3.0;
    double th;
    attnx_tanh((const double[]){0.75}, 1, &th);
    CHECK(attnx_additive_scores(&a1, &k1, &v1, 1, 1, &one) == ATTNX_OK && one == -3.0 * th,
          "1x1 score %.17g", one);
    free(a);
    free(Kp);
    free(v);
}

static void test_scores_edges(void)
{
    double a[4] = {1, 2, 3, 4}, Kp[8] = {0}, v[4] = {1, 1, 1, 1}, s[4] = {7, 7, 7, 7};
    CHECK(attnx_additive_scores(a, Kp, v, 0, 4, s) == ATTNX_OK && s[0] == 7, "T = 0 writes nothing");
    CHECK(attnx_additive_scores(a, Kp, v, 3, 0, s) == ATTNX_OK && s[0] == 0 && s[1] == 0 && s[2] == 0 &&
              s[3] == 7,
          "h = 0 gives zeros");
    /* NaN: in a -> every score; in Kp row t -> score t; in v -> every score */
    const size_t T = 13, h = 11;
    double *A = rand_array(h, 2.0), *K = rand_array(T * h, 2.0), *V = rand_array(h, 1.0), *S = alloc_d(T);
    K[5 * h + 10] = NAN;
    CHECK(attnx_additive_scores(A, K, V, T, h, S) == ATTNX_OK, "status");
    int only5 = 1;
    for (size_t t = 0; t < T; t++) only5 &= (t == 5) == (isnan(S[t]) != 0);
    CHECK(only5, "NaN in Kp row 5 poisons score 5 only");
    K[5 * h + 10] = INFINITY;   /* tanh(+inf) = 1: finite */
    attnx_additive_scores(A, K, V, T, h, S);
    CHECK(isfinite(S[5]), "inf in Kp gives a finite score %g", S[5]);
    A[3] = NAN;
    attnx_additive_scores(A, K, V, T, h, S);
    int all = 1;
    for (size_t t = 0; t < T; t++) all &= isnan(S[t]) != 0;
    CHECK(all, "NaN in a poisons every score");
    A[3] = 0.5;
    V[h - 1] = NAN;
    attnx_additive_scores(A, K, V, T, h, S);
    all = 1;
    for (size_t t = 0; t < T; t++) all &= isnan(S[t]) != 0;
    CHECK(all, "NaN in v poisons every score");
    free(A);
    free(K);
    free(V);
    free(S);
}

/* Batched with broadcasting (and a negative stride) vs the single form. */
static void test_batch(void)
{
    const size_t Lq = 3, T = 37, h = 19;
    const size_t shape[2] = {2, 3};
    /* A: 3 distinct items along dim 1 (stored backwards), broadcast on dim 0 */
    double *A = rand_array(3 * Lq * h, 1.5);
    const ptrdiff_t a_str[2] = {0, -(ptrdiff_t)(Lq * h)};
    const double *A0 = A + 2 * Lq * h;
    /* Kp: 2 distinct items along dim 0, broadcast on dim 1 */
    double *K = rand_array(2 * T * h, 1.5);
    const ptrdiff_t k_str[2] = {(ptrdiff_t)(T * h), 0};
    double *v = rand_array(h, 1.0);
    const size_t total = 6 * Lq * T;
    double *want = alloc_d(total), *got = alloc_d(total);
    for (size_t b0 = 0; b0 < 2; b0++)
        for (size_t b1 = 0; b1 < 3; b1++)
            for (size_t i = 0; i < Lq; i++) {
                const double *ai = A0 - (ptrdiff_t)(b1 * Lq * h) + i * h;
                const double *kb = K + b0 * T * h;
                attnx_additive_scores(ai, kb, v, T, h, want + ((b0 * 3 + b1) * Lq + i) * T);
            }
    const int threads[] = {1, 2, 0};
    for (int ti = 0; ti < 3; ti++) {
        memset(got, 0, total * sizeof(double));
        CHECK(attnx_additive_scores_batch(A0, K, v, 2, shape, a_str, k_str, Lq, T, h, got, threads[ti]) ==
                  ATTNX_OK,
              "batch status");
        CHECK(memcmp(got, want, total * sizeof(double)) == 0, "batch vs loop, num_threads=%d", threads[ti]);
    }
    /* nbatch = 0 (strides may be NULL) */
    double *g0 = alloc_d(Lq * T);
    CHECK(attnx_additive_scores_batch(A, K, v, 0, NULL, NULL, NULL, Lq, T, h, g0, 1) == ATTNX_OK, "nbatch 0");
    int same = 1;
    for (size_t i = 0; i < Lq; i++) {
        double row[37];
        attnx_additive_scores(A + i * h, K, v, T, h, row);
        same &= memcmp(row, g0 + i * T, T * sizeof(double)) == 0;
    }
    CHECK(same, "nbatch 0 vs loop");
    /* a single long query: the keys split across threads, same bits */
    const size_t T2 = 5000, h2 = 64;
    double *a2 = rand_array(h2, 1.0), *K2 = rand_array(T2 * h2, 1.0), *v2 = rand_array(h2, 1.0);
    double *s1 = alloc_d(T2), *s2 = alloc_d(T2), *s3 = alloc_d(T2);
    attnx_additive_scores(a2, K2, v2, T2, h2, s1);
    CHECK(attnx_additive_scores_batch(a2, K2, v2, 0, NULL, NULL, NULL, 1, T2, h2, s2, 2) == ATTNX_OK, "split");
    CHECK(attnx_additive_scores_batch(a2, K2, v2, 0, NULL, NULL, NULL, 1, T2, h2, s3, 0) == ATTNX_OK, "split");
    CHECK(memcmp(s1, s2, T2 * sizeof(double)) == 0 && memcmp(s1, s3, T2 * sizeof(double)) == 0,
          "long query split across threads == single");
    /* empty batch / Lq = 0 / T = 0: nothing written */
    const size_t shape0[1] = {0};
    const ptrdiff_t z[1] = {0};
    got[0] = 42.0;
    CHECK(attnx_additive_scores_batch(A, K, v, 1, shape0, z, z, Lq, T, h, got, 0) == ATTNX_OK && got[0] == 42.0,
          "empty batch");
    CHECK(attnx_additive_scores_batch(A, K, v, 0, NULL, NULL, NULL, 0, T, h, got, 0) == ATTNX_OK && got[0] == 42.0,
          "Lq = 0");
    CHECK(attnx_additive_scores_batch(A, K, v, 0, NULL, NULL, NULL, Lq, 0, h, got, 0) == ATTNX_OK && got[0] == 42.0,
          "T = 0");
    free(A);
    free(K);
    free(v);
    free(want);
    free(got);
    free(g0);
    free(a2);
    free(K2);
    free(v2);
    free(s1);
    free(s2);
    free(s3);
}

static void test_status_codes(void)
{
    double a[16] = {0}, b[16] = {0}, c[16] = {0};
    size_t shape[1] = {2};
    ptrdiff_t st[1] = {0};
    CHECK(attnx_tanh(NULL, 1, a) == ATTNX_ERR_NULL, "tanh NULL x");
    CHECK(attnx_tanh(a, 1, NULL) == ATTNX_ERR_NULL, "tanh NULL y");
    CHECK(attnx_tanh(a, SIZE_MAX / 2, b) == ATTNX_ERR_OVERFLOW, "tanh overflow");
    CHECK(attnx_tanh(a, 4, a + 1) == ATTNX_ERR_OVERLAP, "tanh partial overlap");
    CHECK(attnx_tanh(a + 1, 4, a) == ATTNX_ERR_OVERLAP, "tanh partial overlap (before)");
    CHECK(attnx_tanh(a, 4, a) == ATTNX_OK, "tanh in place");
    CHECK(attnx_tanh(a, 0, b) == ATTNX_OK, "tanh n = 0");

    CHECK(attnx_additive_scores(NULL, a, a, 1, 1, c) == ATTNX_ERR_NULL, "NULL a");
    CHECK(attnx_additive_scores(a, NULL, a, 1, 1, c) == ATTNX_ERR_NULL, "NULL Kp");
    CHECK(attnx_additive_scores(a, a, NULL, 1, 1, c) == ATTNX_ERR_NULL, "NULL v");
    CHECK(attnx_additive_scores(a, a, a, 1, 1, NULL) == ATTNX_ERR_NULL, "NULL scores");
    CHECK(attnx_additive_scores(a, b, a, SIZE_MAX / 3, 3, c) == ATTNX_ERR_OVERFLOW, "T*h overflow");
    CHECK(attnx_additive_scores(a, b, a, SIZE_MAX / 2, 0, c) == ATTNX_ERR_OVERFLOW, "T overflow (h = 0)");
    CHECK(attnx_additive_scores(a, b, a, 4, 2, b + 3) == ATTNX_ERR_OVERLAP, "scores in Kp");
    CHECK(attnx_additive_scores(a, b, c, 2, 4, a + 3) == ATTNX_ERR_OVERLAP, "scores in a");
    CHECK(attnx_additive_scores(a, b, c, 2, 4, c + 2) == ATTNX_ERR_OVERLAP, "scores in v");
    CHECK(attnx_additive_scores(a, b, c, 0, 4, a) == ATTNX_OK, "T = 0, no output, no overlap");
    CHECK(attnx_additive_scores(a, b, c, 2, 4, c + 4) == ATTNX_OK, "scores next to v");

    CHECK(attnx_additive_scores_batch(NULL, a, a, 0, NULL, NULL, NULL, 1, 1, 1, c, 1) == ATTNX_ERR_NULL, "batch NULL A");
    CHECK(attnx_additive_scores_batch(a, NULL, a, 0, NULL, NULL, NULL, 1, 1, 1, c, 1) == ATTNX_ERR_NULL, "batch NULL Kp");
    CHECK(attnx_additive_scores_batch(a, a, NULL, 0, NULL, NULL, NULL, 1, 1, 1, c, 1) == ATTNX_ERR_NULL, "batch NULL v");
    CHECK(attnx_additive_scores_batch(a, a, a, 0, NULL, NULL, NULL, 1, 1, 1, NULL, 1) == ATTNX_ERR_NULL, "batch NULL out");
    CHECK(attnx_additive_scores_batch(a, a, a, ATTNX_MAX_BATCH_DIMS + 1, shape, st, st, 1, 1, 1, c, 1) ==
              ATTNX_ERR_ARG,
          "too many batch dims");
    CHECK(attnx_additive_scores_batch(a, a, a, 0, NULL, NULL, NULL, 1, 1, 1, c, -1) == ATTNX_ERR_ARG,
          "negative threads");
    CHECK(attnx_additive_scores_batch(a, a, a, 1, shape, NULL, st, 1, 1, 1, c, 1) == ATTNX_ERR_NULL, "NULL a_strides");
    CHECK(attnx_additive_scores_batch(a, a, a, 1, shape, st, NULL, 1, 1, 1, c, 1) == ATTNX_ERR_NULL, "NULL kp_strides");
    CHECK(attnx_additive_scores_batch(a, a, a, 1, NULL, st, st, 1, 1, 1, c, 1) == ATTNX_ERR_NULL, "NULL shape");
    size_t big[2] = {SIZE_MAX / 4, 8};
    ptrdiff_t st2[2] = {0, 0};
    CHECK(attnx_additive_scores_batch(a, b, a, 2, big, st2, st2, 1, 1, 1, c, 1) == ATTNX_ERR_OVERFLOW,
          "batch shape overflow");
    CHECK(attnx_additive_scores_batch(a, b, a, 0, NULL, NULL, NULL, SIZE_MAX / 8, 16, 1, c, 1) ==
              ATTNX_ERR_OVERFLOW,
          "Lq*T overflow");
    CHECK(attnx_additive_scores_batch(a, b, a, 0, NULL, NULL, NULL, 1, SIZE_MAX / 4, 4, c, 1) ==
              ATTNX_ERR_OVERFLOW,
          "T*h overflow");
    /* Kp items at b and b + 4 (stride 4 over 2 items of 2x2): scores at b + 6 overlaps the second */
    ptrdiff_t kst[1] = {4};
    CHECK(attnx_additive_scores_batch(a, b, c, 1, shape, st, kst, 1, 2, 2, b + 6, 1) == ATTNX_ERR_OVERLAP,
          "scores in a batched Kp");
    CHECK(attnx_additive_scores_batch(a, b, c, 1, shape, st, kst, 1, 2, 2, b + 8, 1) == ATTNX_OK,
          "scores after a batched Kp");
    CHECK(attnx_additive_scores_batch(a, b, c, 1, shape, st, kst, 1, 2, 2, c + 1, 1) == ATTNX_ERR_OVERLAP,
          "scores in v");
}


/* ------------------------------------------------------ attention */

/* The composition attnx_additive_attention replaces, from public calls at
 * the same level: scores of every key (masked rows too), -inf where a key
 * is not seen, softmax over the row, zeros when nothing is seen, then the
 * context (zero weights skip their value rows). NaN rows are left out of
 * the comparisons that use it. */
static void composed_row(const double *a, const double *Kp, const double *v, const double *V,
                         const unsigned char *m, size_t lim, size_t T, size_t h, size_t dv,
                         double *ctx, double *w)
{
    attnx_additive_scores(a, Kp, v, T, h, w);
    int any = 0;
    for (size_t t = 0; t < T; t++) {
        if (t >= lim || (m && !m[t])) w[t] = -INFINITY;
        else any = 1;
    }
    attnx_softmax(w, T, w);
    if (!any)
        for (size_t t = 0; t < T; t++) w[t] = 0.0;
    attnx_context(w, V, T, dv, ctx);
}

/* Batch (2, 3): A broadcast on dim 0 and stored backwards on dim 1, Kp
 * and V distinct on dim 0 and broadcast on dim 1, the mask per item and
 * row (or one row shared: row stride 0). Keys 5 and 11 are masked for
 * every query and hold NaN in Kp and inf/NaN in V; query 1 of item (1, 2)
 * attends nothing. */
static void test_attention(void)
{
    enum { LQ = 4, T = 29, H = 13, DV = 7, ITEMS = 6 };
    const size_t shape[2] = {2, 3};
    double *A = rand_array(3 * LQ * H, 1.5), *Kp = rand_array(2 * T * H, 1.5);
    double *V = rand_array(2 * T * DV, 1.0), *v = rand_array(H, 1.0);
    const ptrdiff_t a_str[2] = {0, -(ptrdiff_t)(LQ * H)}, k_str[2] = {T * H, 0}, v_str[2] = {T * DV, 0};
    const double *A0 = A + 2 * LQ * H;
    unsigned char mask[ITEMS * LQ * T];
    const ptrdiff_t m_str[2] = {3 * LQ * T, LQ * T};
    for (size_t e = 0; e < sizeof mask; e++) {
        size_t t = e % T;
        mask[e] = t != 5 && t != 11 && (next_u64() & 3) != 0;
    }
    memset(mask + (5 * LQ + 1) * T, 0, T);
    for (size_t b = 0; b < 2; b++) {
        Kp[(b * T + 5) * H] = NAN;
        Kp[(b * T + 11) * H + 3] = NAN;
        V[(b * T + 5) * DV] = INFINITY;
        V[(b * T + 11) * DV + 2] = NAN;
    }
    double want_c[ITEMS * LQ * DV], want_w[ITEMS * LQ * T], got_c[ITEMS * LQ * DV], got_w[ITEMS * LQ * T];
    const int threads[] = {1, 2, 0};
    for (int shared = 0; shared < 2; shared++) {
        const ptrdiff_t mrs = shared ? 0 : T;
        /* no causality; causal top-left, lower-right (query_offset T - LQ),
         * and with the queries before the keys (their offsets 3 and 5) */
        static const ptrdiff_t qoffs[4] = {0, 0, T - LQ, 3}, koffs[4] = {0, 0, 0, 5};
        for (int mode = 0; mode < 4; mode++) {
            const int causal = mode > 0;
            for (size_t row = 0; row < ITEMS * LQ; row++) {
                size_t b = row / LQ, i = row % LQ, b0 = b / 3, b1 = b % 3;
                const unsigned char *m = mask + b * LQ * T + (ptrdiff_t)i * mrs;
                ptrdiff_t lim = causal ? (ptrdiff_t)i + 1 + qoffs[mode] - koffs[mode] : T;
                composed_row(A0 - (ptrdiff_t)(b1 * LQ * H) + i * H, Kp + b0 * T * H, v, V + b0 * T * DV, m,
                             lim < 0 ? 0 : (size_t)lim, T, H, DV, want_c + row * DV, want_w + row * T);
            }
            for (int ti = 0; ti < 3; ti++)
                for (int ww = 0; ww < 2; ww++) {
                    memset(got_c, 0xff, sizeof got_c);
                    memset(got_w, 0xff, sizeof got_w);
                    int rc = attnx_additive_attention(A0, Kp, v, V, 2, shape, a_str, k_str, v_str, LQ, T, H, DV,
                                                      mask, m_str, mrs, causal, qoffs[mode], koffs[mode], got_c,
                                                      ww ? got_w : NULL, threads[ti]);
                    CHECK(rc == ATTNX_OK, "status %d", rc);
                    CHECK(memcmp(got_c, want_c, sizeof got_c) == 0,
                          "context == composed calls, bit for bit (shared %d causal mode %d threads %d weights %d)",
                          shared, mode, threads[ti], ww);
                    if (ww)
                        CHECK(memcmp(got_w, want_w, sizeof got_w) == 0,
                              "weights == composed calls (shared %d causal mode %d threads %d)", shared, mode,
                              threads[ti]);
                }
            int zeros = 1;
            for (size_t k = 0; k < DV; k++) zeros &= got_c[(5 * LQ + 1) * DV + k] == 0.0;
            for (size_t t = 0; t < T; t++) zeros &= got_w[(5 * LQ + 1) * T + t] == 0.0;
            CHECK(shared || zeros, "a query that attends nothing: zero context and weights");
        }
    }
    /* a NaN score (key 5's row of Kp holds NaN): the rows that see it are
     * NaN, weights and context, the others not (queries at 3..6, causal) */
    unsigned char all[LQ * T];
    memset(all, 1, sizeof all);
    CHECK(attnx_additive_attention(A0, Kp, v, V, 0, NULL, NULL, NULL, NULL, LQ, T, H, DV, all, NULL, T, 1, 3, 0,
                                   got_c, got_w, 1) == ATTNX_OK, "NaN row status");
    int nan_ok = 1;
    for (size_t i = 0; i < LQ; i++) {
        for (size_t k = 0; k < DV; k++) nan_ok &= (isnan(got_c[i * DV + k]) != 0) == (i >= 2);
        for (size_t t = 0; t < T; t++) nan_ok &= (isnan(got_w[i * T + t]) != 0) == (i >= 2);
    }
    CHECK(nan_ok, "causal, queries at 3..6: the rows that see key 5 are NaN, the rows before it are not");
    /* a long single query: the keys split across threads, same bits */
    const size_t T2 = 5000, h2 = 32, dv2 = 5;
    double *a2 = rand_array(h2, 1.0), *K2 = rand_array(T2 * h2, 1.0), *V2 = rand_array(T2 * dv2, 1.0);
    double *w1 = alloc_d(T2), *w2 = alloc_d(T2), c1[5], c2[5], c3[5];
    CHECK(attnx_additive_attention(a2, K2, v, V2, 0, NULL, NULL, NULL, NULL, 1, T2, h2 < H ? h2 : H, dv2, NULL,
                                   NULL, 0, 0, 0, 0, c1, w1, 1) == ATTNX_OK, "long query");
    CHECK(attnx_additive_attention(a2, K2, v, V2, 0, NULL, NULL, NULL, NULL, 1, T2, h2 < H ? h2 : H, dv2, NULL,
                                   NULL, 0, 0, 0, 0, c2, w2, 4) == ATTNX_OK, "long query, 4 threads");
    CHECK(attnx_additive_attention(a2, K2, v, V2, 0, NULL, NULL, NULL, NULL, 1, T2, h2 < H ? h2 : H, dv2, NULL,
                                   NULL, 0, 0, 0, 0, c3, NULL, 0) == ATTNX_OK, "long query, fused");
    CHECK(memcmp(c1, c2, sizeof c1) == 0 && memcmp(w1, w2, T2 * sizeof(double)) == 0 &&
              memcmp(c1, c3, sizeof c1) == 0,
          "long query: the same bits at any thread count, with or without weights");
    /* masked: the keys let through are gathered into whole blocks, split
     * across threads; bits of the composed calls */
    unsigned char *m2 = malloc(T2);
    for (size_t t = 0; t < T2; t++) m2[t] = (next_u64() % 3) != 0;
    const size_t hh = h2 < H ? h2 : H;
    composed_row(a2, K2, v, V2, m2, T2, T2, hh, dv2, c1, w1);
    for (int nt = 1; nt <= 4; nt += 3) {
        CHECK(attnx_additive_attention(a2, K2, v, V2, 0, NULL, NULL, NULL, NULL, 1, T2, hh, dv2, m2, NULL, 0, 0, 0,
                                       0, c2, w2, nt) == ATTNX_OK, "long masked query");
        CHECK(memcmp(c1, c2, sizeof c1) == 0 && memcmp(w1, w2, T2 * sizeof(double)) == 0,
              "long masked query == composed calls, %d threads", nt);
    }
    free(m2);
    free(A);
    free(Kp);
    free(V);
    free(v);
    free(a2);
    free(K2);
    free(V2);
    free(w1);
    free(w2);
}

static void test_attention_status(void)
{
    double a[64] = {0}, k[64] = {0}, vv[8] = {0}, V[64] = {0}, c[64], w[64];
    unsigned char m[64] = {0};
    size_t shape[1] = {2}, big[2] = {SIZE_MAX / 4, 8};
    ptrdiff_t st[1] = {0}, st2[2] = {0, 0};
#define AA(A_, K_, v_, V_, nb, sh, sa, sk, sv, Lq, T, h, dv, M, sm, mrs, ca, C, W, nt) \
    attnx_additive_attention(A_, K_, v_, V_, nb, sh, sa, sk, sv, Lq, T, h, dv, M, sm, mrs, ca, 0, 0, C, W, nt)
    CHECK(AA(NULL, k, vv, V, 0, NULL, NULL, NULL, NULL, 1, 2, 2, 2, NULL, NULL, 0, 0, c, w, 1) == ATTNX_ERR_NULL, "NULL A");
    CHECK(AA(a, NULL, vv, V, 0, NULL, NULL, NULL, NULL, 1, 2, 2, 2, NULL, NULL, 0, 0, c, w, 1) == ATTNX_ERR_NULL, "NULL Kp");
    CHECK(AA(a, k, NULL, V, 0, NULL, NULL, NULL, NULL, 1, 2, 2, 2, NULL, NULL, 0, 0, c, w, 1) == ATTNX_ERR_NULL, "NULL v");
    CHECK(AA(a, k, vv, NULL, 0, NULL, NULL, NULL, NULL, 1, 2, 2, 2, NULL, NULL, 0, 0, c, w, 1) == ATTNX_ERR_NULL, "NULL V");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 1, 2, 2, 2, NULL, NULL, 0, 0, NULL, w, 1) == ATTNX_ERR_NULL, "NULL ctx");
    CHECK(AA(a, k, vv, V, 1, shape, st, st, NULL, 1, 2, 2, 2, NULL, NULL, 0, 0, c, w, 1) == ATTNX_ERR_NULL, "NULL v_strides");
    CHECK(AA(a, k, vv, V, 1, shape, st, st, st, 1, 2, 2, 2, m, NULL, 0, 0, c, w, 1) == ATTNX_ERR_NULL, "NULL mask_strides");
    CHECK(AA(a, k, vv, V, 1, NULL, st, st, st, 1, 2, 2, 2, NULL, NULL, 0, 0, c, w, 1) == ATTNX_ERR_NULL, "NULL shape");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 1, 0, 2, 2, NULL, NULL, 0, 0, c, w, 1) == ATTNX_ERR_EMPTY, "T = 0");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 1, 2, 2, 2, NULL, NULL, 0, 0, c, w, -1) == ATTNX_ERR_ARG, "threads < 0");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 1, 2, 2, 2, NULL, NULL, 0, 2, c, w, 1) == ATTNX_ERR_ARG, "causal 2");
    CHECK(attnx_additive_attention(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 1, 2, 2, 2, NULL, NULL, 0, 1, PTRDIFF_MIN, 1,
                                   c, w, 1) == ATTNX_ERR_OVERFLOW, "query_offset - key_offset overflows");
    CHECK(AA(a, k, vv, V, ATTNX_MAX_BATCH_DIMS + 1, shape, st, st, st, 1, 2, 2, 2, NULL, NULL, 0, 0, c, w, 1) ==
              ATTNX_ERR_ARG, "too many batch dims");
    CHECK(AA(a, k, vv, V, 2, big, st2, st2, st2, 1, 2, 2, 2, NULL, NULL, 0, 0, c, w, 1) == ATTNX_ERR_OVERFLOW,
          "batch shape overflow");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 1, SIZE_MAX / 4, 4, 2, NULL, NULL, 0, 0, c, w, 1) ==
              ATTNX_ERR_OVERFLOW, "T*h overflow");
    /* overlaps: ctx or weights on an input, or on each other; nothing written */
    for (size_t i = 0; i < 64; i++) c[i] = w[i] = 42.0;
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 2, 3, 2, 2, NULL, NULL, 0, 0, a + 3, NULL, 1) == ATTNX_ERR_OVERLAP, "ctx in A");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 2, 3, 2, 2, NULL, NULL, 0, 0, k + 5, NULL, 1) == ATTNX_ERR_OVERLAP, "ctx in Kp");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 2, 3, 2, 2, NULL, NULL, 0, 0, V + 5, NULL, 1) == ATTNX_ERR_OVERLAP, "ctx in V");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 2, 3, 2, 2, NULL, NULL, 0, 0, vv + 1, NULL, 1) == ATTNX_ERR_OVERLAP, "ctx in v");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 2, 3, 2, 2, NULL, NULL, 0, 0, c, a + 2, 1) == ATTNX_ERR_OVERLAP, "weights in A");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 2, 3, 2, 2, NULL, NULL, 0, 0, c, c + 3, 1) == ATTNX_ERR_OVERLAP, "weights on ctx");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 2, 3, 2, 2, (unsigned char *)c, NULL, 3, 0, c, w, 1) ==
              ATTNX_ERR_OVERLAP, "ctx on the mask");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 2, 3, 2, 2, (unsigned char *)w + 8, NULL, -3, 0, c, w, 1) ==
              ATTNX_ERR_OVERLAP, "weights on a mask with a negative row stride");
    int untouched = 1;
    for (size_t i = 0; i < 64; i++) untouched &= c[i] == 42.0 && w[i] == 42.0;
    CHECK(untouched, "nothing written on an error");
    /* nothing to write: no rows, or dv = 0 without weights */
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 0, 3, 2, 2, NULL, NULL, 0, 0, c, w, 1) == ATTNX_OK && c[0] == 42.0, "Lq = 0");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 2, 3, 2, 0, NULL, NULL, 0, 0, c, NULL, 1) == ATTNX_OK && c[0] == 42.0, "dv = 0");
    CHECK(AA(a, k, vv, V, 0, NULL, NULL, NULL, NULL, 2, 3, 0, 0, NULL, NULL, 0, 1, c, w, 1) == ATTNX_OK && w[0] == 1.0 &&
              w[3] == 0.5 && w[4] == 0.5, "h = 0: zero scores, causal weights 1, 1/2 1/2");
#undef AA
}

HARNESS_MAIN("additive", (test_status_codes, test_attention_status),
             (test_tanh_specials, test_tanh_accuracy, test_scores_vs_scalar, test_scores_row_independent,
              test_scores_edges, test_batch, test_attention))
