/*
 * C unit tests of the attnx core, no Python involved. Every kernel test runs
 * once per SIMD level this CPU supports and compares against the portable
 * kernels (and, for the worked example, against known answers). Closes with
 * "N passed, N failed"; the exit status is nonzero on any failure.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnx.h"
#include "attnx_internal.h"   /* the level's kernel table: attend_rows called directly */
#define HARNESS_SEED 0x9E3779B97F4A7C15ull
#include "tests/harness.h"

static double *rand_array(size_t n, double amp)
{
    double *a = malloc((n ? n : 1) * sizeof(double));
    for (size_t i = 0; i < n; i++) a[i] = amp * urand();
    return a;
}

/* |a - b| <= tol * max(|a|, |b|) + atol, with NaN == NaN and inf == inf. */
static int close_to(double a, double b, double tol, double atol)
{
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    if (isinf(a) || isinf(b)) return a == b;
    double m = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
    return fabs(a - b) <= tol * m + atol;
}
static int close_rel(double a, double b, double tol) { return close_to(a, b, tol, 0.0); }
/* Contexts of unit-scale values can cancel to near zero: compare them with
 * an absolute floor of tol (atol = tol); weights and scores relatively. */
static int all_close_at(const double *a, const double *b, size_t n, double tol, double atol,
                        size_t *where)
{
    for (size_t i = 0; i < n; i++)
        if (!close_to(a[i], b[i], tol, atol)) {
            *where = i;
            return 0;
        }
    return 1;
}
#define all_close(a, b, n, tol, where) all_close_at(a, b, n, tol, 0.0, where)
#define ctx_close(a, b, n, tol, where) all_close_at(a, b, n, tol, tol, where)

static const size_t SIZES[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 129};
#define NSIZES (sizeof SIZES / sizeof SIZES[0])

/* ---------------------------------------------------------------- tests */

static void test_status_codes(void)
{
    double a[8] = {0}, b[8] = {0}, c[8] = {0};
    unsigned char m[4] = {1, 1, 1, 1};
    CHECK(attnx_dot_scores(NULL, a, 1, 1, 1.0, b) == ATTNX_ERR_NULL, "dot NULL q");
    CHECK(attnx_dot_scores(a, NULL, 1, 1, 1.0, b) == ATTNX_ERR_NULL, "dot NULL K");
    CHECK(attnx_dot_scores(a, b, 1, 1, 1.0, NULL) == ATTNX_ERR_NULL, "dot NULL out");
    CHECK(attnx_softmax(NULL, 1, a) == ATTNX_ERR_NULL, "softmax NULL x");
    CHECK(attnx_softmax(a, 1, NULL) == ATTNX_ERR_NULL, "softmax NULL y");
    CHECK(attnx_context(NULL, a, 1, 1, b) == ATTNX_ERR_NULL, "context NULL");
    CHECK(attnx_attend(NULL, a, a, 1, 1, 1, 1.0, NULL, b, NULL) == ATTNX_ERR_NULL, "attend NULL q");
    CHECK(attnx_attend(a, a, a, 1, 1, 1, 1.0, NULL, NULL, NULL) == ATTNX_ERR_NULL, "attend NULL ctx");
    CHECK(attnx_attend(a, a, a, 0, 1, 1, 1.0, NULL, b, NULL) == ATTNX_ERR_EMPTY, "attend T=0");
    CHECK(attnx_attend(a, a, a, SIZE_MAX / 4, 4, 1, 1.0, NULL, b, NULL) == ATTNX_ERR_OVERFLOW, "T*d overflow");
    CHECK(attnx_attend(a, a, a, 2, 1, SIZE_MAX / 2, 1.0, NULL, b, NULL) == ATTNX_ERR_OVERFLOW, "T*dv overflow");
    CHECK(attnx_dot_scores(a, b, SIZE_MAX / 3, 3, 1.0, c) == ATTNX_ERR_OVERFLOW, "dot overflow");
    CHECK(attnx_context(a, b, 3, SIZE_MAX / 3, c) == ATTNX_ERR_OVERFLOW, "context overflow");
    CHECK(attnx_softmax(a, SIZE_MAX / 2, b) == ATTNX_ERR_OVERFLOW, "softmax overflow");
    /* overlap: ctx inside K, weights inside V, partial softmax overlap */
    CHECK(attnx_attend(a, b, c, 4, 2, 1, 1.0, NULL, b + 1, NULL) == ATTNX_ERR_OVERLAP, "ctx in K");
    CHECK(attnx_attend(a, a, a, 2, 2, 2, 1.0, NULL, c, a + 1) == ATTNX_ERR_OVERLAP, "w in V");
    CHECK(attnx_attend(a, b, b, 2, 1, 1, 1.0, m, c, c) == ATTNX_ERR_OVERLAP, "w == ctx");
    CHECK(attnx_softmax(a, 4, a + 1) == ATTNX_ERR_OVERLAP, "softmax partial overlap");
    CHECK(attnx_softmax(a, 4, a) == ATTNX_OK, "softmax in place");
    CHECK(attnx_softmax(a, 0, b) == ATTNX_OK, "softmax n=0");
    CHECK(attnx_dot_scores(a, b, 0, 3, 1.0, c) == ATTNX_OK, "dot T=0");
    CHECK(attnx_context(a, b, 0, 3, c) == ATTNX_OK && c[0] == 0 && c[2] == 0, "context T=0 zeros");
    size_t shape[1] = {2};
    ptrdiff_t st[1] = {0};
    CHECK(attnx_attend_batch(a, a, a, ATTNX_MAX_BATCH_DIMS + 1, shape, st, st, st, 1, 1, 1, 1, 1.0,
                             NULL, NULL, 0, 0, c, NULL, 1) == ATTNX_ERR_ARG, "too many batch dims");
    CHECK(attnx_attend_batch(a, a, a, 1, shape, NULL, st, st, 1, 1, 1, 1, 1.0, NULL, NULL, 0, 0, c,
                             NULL, 1) == ATTNX_ERR_NULL, "NULL strides");
    CHECK(attnx_attend_batch(a, a, a, 0, NULL, NULL, NULL, NULL, 1, 1, 1, 1, 1.0, NULL, NULL, 0, 0,
                             c, NULL, -1) == ATTNX_ERR_ARG, "negative threads");
    CHECK(attnx_attend_batch(a, a, a, 0, NULL, NULL, NULL, NULL, 1, 0, 1, 1, 1.0, NULL, NULL, 0, 0,
                             c, NULL, 1) == ATTNX_ERR_EMPTY, "batch T=0");
    CHECK(attnx_set_simd_level("bogus") == ATTNX_ERR_ARG, "unknown level");
    CHECK(attnx_set_simd_level(NULL) == ATTNX_ERR_NULL, "NULL level");
    for (int s = -1; s < 10; s++) CHECK(attnx_strerror(s) != NULL, "strerror %d", s);
    CHECK(strcmp(attnx_strerror(ATTNX_OK), "success") == 0, "strerror OK");
}

/* The worked example of DESIGN.md: q = [5, 1, 20], keys = the tutorial's
 * annotations as rows. */
static void test_worked_example(void)
{
    const double q[3] = {5, 1, 20};
    const double K[12] = {3, 12, 45, 59, 2, 5, 1, 43, 5, 4, 3, 45.3};
    const double want_s[4] = {927, 397, 148, 929};
    const double want_w[4] = {1.19202922e-01, 7.94715151e-232, 0.0, 8.80797078e-01};
    const double want_c[3] = {3.88079708, 4.0728263, 45.26423912};
    double s[4], w[4], c[3], c2[3];
    CHECK(attnx_dot_scores(q, K, 4, 3, 1.0, s) == ATTNX_OK, "status");
    for (int i = 0; i < 4; i++) CHECK(s[i] == want_s[i], "score %d = %.17g", i, s[i]);
    CHECK(attnx_attend(q, K, K, 4, 3, 3, 1.0, NULL, c, w) == ATTNX_OK, "status");
    CHECK(attnx_attend(q, K, K, 4, 3, 3, 1.0, NULL, c2, NULL) == ATTNX_OK, "status");
    for (int i = 0; i < 4; i++) CHECK(close_rel(w[i], want_w[i], 5e-9), "weight %d = %.17g", i, w[i]);
    CHECK(w[2] == 0.0, "exp(-781) underflows to exactly 0");
    /* 1 / (1 + e^2): the exact first weight, to double precision */
    CHECK(close_rel(w[0], 0.11920292202211755, 4 * DBL_EPSILON), "w0 = %.17g", w[0]);
    for (int j = 0; j < 3; j++) {
        CHECK(close_rel(c[j], want_c[j], 5e-8), "context %d = %.17g", j, c[j]);
        CHECK(close_rel(c2[j], c[j], 4 * DBL_EPSILON), "fused %d = %.17g vs %.17g", j, c2[j], c[j]);
    }
}

/* Compare the current level against the portable kernels. */
static void test_against_scalar(void)
{
    for (size_t a = 0; a < NSIZES; a++) {
        for (size_t b = 0; b < NSIZES; b += 3) {
            size_t T = SIZES[a], d = SIZES[b], dv = SIZES[(a + b) % NSIZES];
            double *q = rand_array(d, 1.0), *K = rand_array(T * d, 1.0), *V = rand_array(T * dv, 1.0);
            double *s = malloc(T * sizeof(double)), *s0 = malloc(T * sizeof(double));
            double *w = malloc(T * sizeof(double)), *w0 = malloc(T * sizeof(double));
            double *c = malloc(dv * sizeof(double)), *c0 = malloc(dv * sizeof(double));
            double *cf = malloc(dv * sizeof(double));
            unsigned char *mask = malloc(T);
            for (size_t t = 0; t < T; t++) mask[t] = (t * 7 + a) % 3 != 0;
            double scale = 1.0 / sqrt((double)d);
            size_t where = 0;
            const char *lv = attnx_simd_level();

            attnx_set_simd_level("scalar");
            attnx_dot_scores(q, K, T, d, scale, s0);
            attnx_attend(q, K, V, T, d, dv, scale, mask, c0, w0);
            attnx_set_simd_level(lv);

            attnx_dot_scores(q, K, T, d, scale, s);
            CHECK(all_close(s, s0, T, 1e-13, &where), "dot T=%zu d=%zu at %zu: %g vs %g", T, d, where, s[where], s0[where]);
            attnx_attend(q, K, V, T, d, dv, scale, mask, c, w);
            CHECK(all_close(w, w0, T, 1e-13, &where), "weights T=%zu d=%zu at %zu", T, d, where);
            CHECK(ctx_close(c, c0, dv, 1e-12, &where), "ctx T=%zu d=%zu dv=%zu at %zu", T, d, dv, where);
            attnx_attend(q, K, V, T, d, dv, scale, mask, cf, NULL);
            CHECK(ctx_close(cf, c0, dv, 1e-12, &where), "fused T=%zu d=%zu dv=%zu at %zu: %g vs %g", T, d, dv, where, cf[where], c0[where]);
            for (size_t t = 0; t < T; t++)
                if (!mask[t]) CHECK(w[t] == 0.0, "masked weight %zu", t);

            /* softmax over a spread of 1000 vs scalar */
            double *x = rand_array(T, 500.0);
            attnx_set_simd_level("scalar");
            attnx_softmax(x, T, w0);
            attnx_set_simd_level(lv);
            attnx_softmax(x, T, w);
            CHECK(all_close(w, w0, T, 1e-15, &where), "softmax T=%zu at %zu: %.17g vs %.17g", T, where, w[where], w0[where]);
            attnx_context(w, V, T, dv, c);
            attnx_set_simd_level("scalar");
            attnx_context(w, V, T, dv, c0);
            attnx_set_simd_level(lv);
            CHECK(ctx_close(c, c0, dv, 1e-13, &where), "context T=%zu dv=%zu", T, dv);
            free(x);
            free(q); free(K); free(V); free(s); free(s0); free(w); free(w0);
            free(c); free(c0); free(cf); free(mask);
        }
    }
}

/* y = attnx_exp(x); its largest error in ulp against long double expl
 * (an overflow where expl's result rounds to inf: exact; any other inf: 99) */
static double exp_max_ulp(const double *x, size_t n, double *y)
{
    attnx_exp(x, n, y);
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        long double ref = expl((long double)x[i]);
        double r = (double)ref;
        double ulp = r >= DBL_MIN ? nextafter(r, INFINITY) - r : 0x1p-1074;
        double err = isinf(r) ? (isinf(y[i]) ? 0.0 : 99.0) : (double)fabsl((long double)y[i] - ref) / ulp;
        if (err > worst) worst = err;
    }
    return worst;
}

static void test_exp(void)
{
    /* against long double expl over the whole range; the Python suite
     * measures ulp on 10^6 points against np.longdouble */
    enum { N = 20001 };
    double *x = malloc(N * sizeof(double)), *y = malloc(N * sizeof(double));
    for (int i = 0; i < N; i++) x[i] = -745.0 + (709.78 + 745.0) * i / (N - 1) + 1e-3 * urand();
    double worst = exp_max_ulp(x, N, y);
    CHECK(worst <= 1.0, "exp max error %.3f ulp", worst);
    double sp[] = {0.0, -0.0, INFINITY, -INFINITY, NAN, 709.79, -745.2, 1e-300, -1e-300, 1.0};
    double out[10];
    attnx_exp(sp, 10, out);
    CHECK(out[0] == 1.0 && out[1] == 1.0, "exp(0) = 1");
    CHECK(out[2] == INFINITY && out[3] == 0.0 && isnan(out[4]), "exp specials");
    CHECK(out[5] == INFINITY && out[6] == 0.0, "exp over/underflow");
    CHECK(out[7] == 1.0 && out[8] == 1.0, "exp tiny");
    CHECK(out[9] == 2.718281828459045 || out[9] == 2.7182818284590455, "exp(1) = %.17g (1 ulp)", out[9]);
    free(x);
    free(y);
}

static void test_softmax_specials(void)
{
    double y[5];
    double allneg[3] = {-INFINITY, -INFINITY, -INFINITY};
    attnx_softmax(allneg, 3, y);
    CHECK(isnan(y[0]) && isnan(y[2]), "all -inf is NaN (as scipy)");
    double withnan[3] = {1, NAN, 2};
    attnx_softmax(withnan, 3, y);
    CHECK(isnan(y[0]) && isnan(y[1]) && isnan(y[2]), "NaN poisons the row");
    double withinf[3] = {1, INFINITY, 2};
    attnx_softmax(withinf, 3, y);
    CHECK(isnan(y[1]), "+inf gives NaN (inf - inf)");
    double big[4] = {1e308, -1e308, 1e308, 0};
    attnx_softmax(big, 4, y);
    CHECK(y[0] == 0.5 && y[1] == 0.0 && y[2] == 0.5 && y[3] == 0.0, "+-1e308 never overflow: %g %g %g %g", y[0], y[1], y[2], y[3]);
    double someinf[3] = {-INFINITY, 0, -INFINITY};
    attnx_softmax(someinf, 3, y);
    CHECK(y[0] == 0.0 && y[1] == 1.0 && y[2] == 0.0, "-inf weight 0");
    double one[1] = {42};
    attnx_softmax(one, 1, y);
    CHECK(y[0] == 1.0, "single element");
}

static void test_attend_specials(void)
{
    double q[2] = {1, 2}, K[6] = {1, 0, 0, 1, 1, 1}, V[6] = {1, 2, 3, 4, 5, 6};
    double c[2], w[3];
    unsigned char none[3] = {0, 0, 0}, some[3] = {0, 1, 0};
    attnx_attend(q, K, V, 3, 2, 2, 1.0, none, c, w);
    CHECK(c[0] == 0 && c[1] == 0 && w[0] == 0 && w[1] == 0 && w[2] == 0, "all masked: zeros");
    attnx_attend(q, K, V, 3, 2, 2, 1.0, none, c, NULL);
    CHECK(c[0] == 0 && c[1] == 0, "all masked fused: zeros");
    attnx_attend(q, K, V, 3, 2, 2, 1.0, some, c, w);
    CHECK(c[0] == 3 && c[1] == 4 && w[1] == 1.0, "one key left");
    /* a masked key's rows are never read: NaN there changes nothing */
    double Kn[6] = {NAN, NAN, 0, 1, NAN, NAN}, Vn[6] = {NAN, NAN, 3, 4, INFINITY, NAN};
    attnx_attend(q, Kn, Vn, 3, 2, 2, 1.0, some, c, NULL);
    CHECK(c[0] == 3 && c[1] == 4, "masked NaN rows unread (fused)");
    attnx_attend(q, Kn, Vn, 3, 2, 2, 1.0, some, c, w);
    CHECK(c[0] == 3 && c[1] == 4, "masked NaN rows unread (two-pass)");
    double qn[2] = {NAN, 1};
    attnx_attend(qn, K, V, 3, 2, 2, 1.0, NULL, c, NULL);
    CHECK(isnan(c[0]) && isnan(c[1]), "NaN query propagates (fused)");
    attnx_attend(qn, K, V, 3, 2, 2, 1.0, NULL, c, w);
    CHECK(isnan(c[0]) && isnan(w[0]), "NaN query propagates (two-pass)");
    /* huge scores: the online rescale must not overflow */
    double qb[1] = {1e308}, Kb[3] = {1, -1, 0.5}, Vb[3] = {1, 2, 3};
    attnx_attend(qb, Kb, Vb, 3, 1, 1, 1.0, NULL, c, NULL);
    CHECK(c[0] == 1.0, "1e308 scores fused: %g", c[0]);
    attnx_attend(qb, Kb, Vb, 3, 1, 1, 1.0, NULL, c, w);
    CHECK(c[0] == 1.0 && w[0] == 1.0, "1e308 scores two-pass");
}

/* Batched entry points against loops of single-query calls, with a
 * broadcast operand (zero stride), a mask shared across queries, causal. */
static void test_batch(void)
{
    const size_t B0 = 2, B1 = 3, Lq = 5, T = 37, d = 9, dv = 6;
    size_t shape[2] = {B0, B1};
    double *Q = rand_array(B0 * B1 * Lq * d, 1.0);
    double *K = rand_array(B0 * T * d, 1.0);           /* broadcast over B1 */
    double *V = rand_array(B1 * T * dv, 1.0);          /* broadcast over B0 */
    unsigned char *mask = malloc(B1 * T);               /* per B1, shared by rows */
    for (size_t i = 0; i < B1 * T; i++) mask[i] = (i % 5) != 1;
    ptrdiff_t qs[2] = {(ptrdiff_t)(B1 * Lq * d), (ptrdiff_t)(Lq * d)};
    ptrdiff_t ks[2] = {(ptrdiff_t)(T * d), 0};
    ptrdiff_t vs[2] = {0, (ptrdiff_t)(T * dv)};
    ptrdiff_t ms[2] = {0, (ptrdiff_t)T};
    size_t rows = B0 * B1 * Lq;
    double *ctx = malloc(rows * dv * sizeof(double)), *W = malloc(rows * T * sizeof(double));
    double *ctxf = malloc(rows * dv * sizeof(double)), *S = malloc(rows * T * sizeof(double));
    double *c1 = malloc(dv * sizeof(double)), *w1 = malloc(T * sizeof(double));
    double *cc = malloc(rows * dv * sizeof(double));
    double scale = 0.3;
    for (int causal = 0; causal < 2; causal++) {
        for (int threads = 1; threads <= 2; threads++) {
            CHECK(attnx_attend_batch(Q, K, V, 2, shape, qs, ks, vs, Lq, T, d, dv, scale, mask, ms, 0,
                                     causal, ctx, W, threads) == ATTNX_OK, "status");
            CHECK(attnx_attend_batch(Q, K, V, 2, shape, qs, ks, vs, Lq, T, d, dv, scale, mask, ms, 0,
                                     causal, ctxf, NULL, threads) == ATTNX_OK, "status");
            int ok = 1;
            for (size_t b0 = 0; b0 < B0; b0++)
                for (size_t b1 = 0; b1 < B1; b1++)
                    for (size_t i = 0; i < Lq; i++) {
                        size_t row = (b0 * B1 + b1) * Lq + i;
                        size_t lim = causal ? (i + 1 < T ? i + 1 : T) : T;
                        const double *q = Q + row * d;
                        attnx_attend(q, K + b0 * T * d, V + b1 * T * dv, lim, d, dv, scale,
                                     mask + b1 * T, c1, w1);
                        size_t where;
                        int ok1 = ctx_close(ctx + row * dv, c1, dv, 1e-12, &where);
                        int ok2 = ctx_close(ctxf + row * dv, c1, dv, 1e-12, &where);
                        int ok3 = all_close(W + row * T, w1, lim, 1e-13, &where);
                        ok &= ok1 && ok2 && ok3;
                        for (size_t t = lim; t < T; t++) ok &= W[row * T + t] == 0.0;
                    }
            CHECK(ok, "batch attend causal=%d threads=%d", causal, threads);
        }
    }
    /* dot_scores and context batches against the same loops */
    CHECK(attnx_dot_scores_batch(Q, K, 2, shape, qs, ks, Lq, T, d, scale, S, 2) == ATTNX_OK, "status");
    CHECK(attnx_softmax_rows(S, rows, T, S, 2) == ATTNX_OK, "status");
    CHECK(attnx_context_batch(S, V, 2, shape, (ptrdiff_t[]){(ptrdiff_t)(B1 * Lq * T), (ptrdiff_t)(Lq * T)},
                              vs, Lq, T, dv, cc, 2) == ATTNX_OK, "status");
    int ok = 1;
    for (size_t b0 = 0; b0 < B0; b0++)
        for (size_t b1 = 0; b1 < B1; b1++)
            for (size_t i = 0; i < Lq; i++) {
                size_t row = (b0 * B1 + b1) * Lq + i, where;
                attnx_attend(Q + row * d, K + b0 * T * d, V + b1 * T * dv, T, d, dv, scale, NULL, c1, w1);
                ok &= all_close(S + row * T, w1, T, 1e-13, &where);
                ok &= ctx_close(cc + row * dv, c1, dv, 1e-12, &where);
            }
    CHECK(ok, "dot_scores_batch + softmax_rows + context_batch == attend");
    free(Q); free(K); free(V); free(mask); free(ctx); free(W); free(ctxf); free(S);
    free(c1); free(w1); free(cc);
}

/* One long query split across threads equals the serial fused pass. */
static void test_split(void)
{
    const size_t T = 50000, d = 8, dv = 5;
    double *q = rand_array(d, 3.0), *K = rand_array(T * d, 3.0), *V = rand_array(T * dv, 1.0);
    unsigned char *mask = malloc(T);
    for (size_t t = 0; t < T; t++) mask[t] = t < T / 2 ? 0 : 1;   /* first chunk all masked */
    double c1[5], c2[5];
    size_t where;
    attnx_attend(q, K, V, T, d, dv, 1.0, NULL, c1, NULL);
    attnx_attend_batch(q, K, V, 0, NULL, NULL, NULL, NULL, 1, T, d, dv, 1.0, NULL, NULL, 0, 0, c2, NULL, 4);
    CHECK(ctx_close(c1, c2, dv, 1e-12, &where), "split == serial at %zu", where);
    attnx_attend(q, K, V, T, d, dv, 1.0, mask, c1, NULL);
    attnx_attend_batch(q, K, V, 0, NULL, NULL, NULL, NULL, 1, T, d, dv, 1.0, mask, NULL, 0, 0, c2, NULL, 4);
    CHECK(ctx_close(c1, c2, dv, 1e-12, &where), "split with an empty chunk == serial");
    free(q); free(K); free(V); free(mask);
}

/* Does query i (of Lq) attend key t? mask rows have stride ms (0: shared). */
static int attends(const unsigned char *mask, ptrdiff_t ms, int causal, size_t i, size_t t)
{
    if (causal && t > i) return 0;
    return !mask || mask[(ptrdiff_t)i * ms + (ptrdiff_t)t];
}

/* Fused single-query attention with K and V at several offsets within a
 * cache line (the SIMD levels read misaligned rows from an aligned base
 * when d and dv are multiples of the vector width), masked rows full of
 * NaN/inf, against the scalar kernels. */
static void test_alignment(void)
{
    static const size_t Ts[] = {1, 7, 8, 9, 16, 17, 33, 100};
    static const size_t ds[][2] = {{8, 8}, {16, 64}, {64, 64}, {72, 8}, {24, 40}, {4, 12}, {12, 4}};
    const char *lv = attnx_simd_level();
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++)
        for (size_t di = 0; di < sizeof ds / sizeof ds[0]; di++)
            for (size_t off = 0; off < 8; off += 3) {
                size_t T = Ts[ti], d = ds[di][0], dv = ds[di][1];
                size_t ok = off, ov = (off * 5 + 1) % 8;
                double *kb = rand_array(T * d + 16, 1.0), *vb = rand_array(T * dv + 16, 1.0);
                double *q = rand_array(d, 2.0), *K = kb + ok, *V = vb + ov;
                unsigned char *mask = malloc(T);
                for (size_t t = 0; t < T; t++) {
                    mask[t] = (t * 3 + off) % 5 != 0 || T == 1;
                    if (!mask[t]) {
                        for (size_t j = 0; j < d; j++) K[t * d + j] = NAN;
                        for (size_t j = 0; j < dv; j++) V[t * dv + j] = INFINITY;
                    }
                }
                double c[72], c0[72];   /* dv <= 72 */
                size_t where = 0;
                attnx_set_simd_level("scalar");
                attnx_attend(q, K, V, T, d, dv, 0.5, mask, c0, NULL);
                attnx_set_simd_level(lv);
                attnx_attend(q, K, V, T, d, dv, 0.5, mask, c, NULL);
                CHECK(ctx_close(c, c0, dv, 1e-12, &where), "aligned path T=%zu d=%zu dv=%zu off K %zu V %zu at %zu: %g vs %g",
                      T, d, dv, ok, ov, where, c[where], c0[where]);
                free(kb); free(vb); free(q); free(mask);
            }
}

/* Fused batched attention (attend_rows) against the scalar kernels' loop of
 * single-query calls: causal, shared and per-row masks, fully masked rows,
 * d and dv beyond one register tile, and NaN/inf in the rows no query
 * attends (which must never be read). */
static void test_rows_vs_loop(void)
{
    static const size_t cases[][4] = {/* Lq, T, d, dv */
        {5, 37, 9, 6}, {67, 45, 3, 5}, {70, 100, 130, 67}, {9, 300, 64, 64}, {33, 17, 64, 129},
        {130, 129, 16, 16}, {4, 1, 1, 1}, {8, 8, 8, 8}, {17, 33, 17, 33}, {65, 65, 2, 1},
        {6, 20, 260, 3},    /* d > 256: K packed on the heap */
        {3, 3000, 8, 8}, {2, 40, 5, 3}};   /* under 4 queries: one by one (prefetching) */
    const char *lv = attnx_simd_level();
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        size_t Lq = cases[ci][0], T = cases[ci][1], d = cases[ci][2], dv = cases[ci][3];
        double *Q = rand_array(Lq * d, 1.0), *K = rand_array(T * d, 1.0), *V = rand_array(T * dv, 1.0);
        double *Kp = malloc(T * d * sizeof(double)), *Vp = malloc(T * dv * sizeof(double));
        double *ctx = malloc(Lq * dv * sizeof(double)), *ref = malloc(Lq * dv * sizeof(double));
        unsigned char *mask = malloc(Lq * T);
        double scale = 4.0 / sqrt((double)d);
        for (int mode = 0; mode < 4; mode++) {
            for (int causal = 0; causal < 2; causal++) {
                ptrdiff_t ms = mode == 1 ? 0 : (ptrdiff_t)T;
                for (size_t i = 0; i < Lq; i++)
                    for (size_t t = 0; t < T; t++) {
                        unsigned char v = 1;
                        if (mode == 1) v = (t * 7) % 5 != 2 && !(t >= 16 && t < 32);
                        if (mode == 2) v = urand() > -0.4;
                        if (mode == 3) v = i % 3 != 1 && (t + i) % 4 != 0;
                        mask[i * T + t] = v;
                    }
                const unsigned char *mk = mode == 0 ? NULL : mask;
                memcpy(Kp, K, T * d * sizeof(double));
                memcpy(Vp, V, T * dv * sizeof(double));
                for (size_t t = 0; t < T; t++) {
                    int used = 0;
                    for (size_t i = 0; i < Lq && !used; i++) used = attends(mk, ms, causal, i, t);
                    if (!used) {
                        for (size_t j = 0; j < d; j++) Kp[t * d + j] = NAN;
                        for (size_t j = 0; j < dv; j++) Vp[t * dv + j] = j % 2 ? INFINITY : NAN;
                    }
                }
                attnx_set_simd_level("scalar");
                for (size_t i = 0; i < Lq; i++) {
                    size_t lim = causal && i + 1 < T ? i + 1 : T;
                    attnx_attend(Q + i * d, Kp, Vp, lim, d, dv, scale, mk ? mk + (ptrdiff_t)i * ms : NULL,
                                 ref + i * dv, NULL);
                }
                attnx_set_simd_level(lv);
                for (int threads = 1; threads <= 2; threads++) {
                    for (size_t j = 0; j < Lq * dv; j++) ctx[j] = -1.0;
                    int rc = attnx_attend_batch(Q, Kp, Vp, 0, NULL, NULL, NULL, NULL, Lq, T, d, dv, scale,
                                                mk, NULL, ms, causal, ctx, NULL, threads);
                    size_t where = 0;
                    int ok = rc == ATTNX_OK && ctx_close(ctx, ref, Lq * dv, 1e-12, &where);
                    CHECK(ok, "rows Lq=%zu T=%zu d=%zu dv=%zu mode=%d causal=%d threads=%d at %zu: %.17g vs %.17g",
                          Lq, T, d, dv, mode, causal, threads, where, ctx[where], ref[where]);
                }
            }
        }
        free(Q); free(K); free(V); free(Kp); free(Vp); free(ctx); free(ref); free(mask);
    }
}

/* Extreme scores through every path (fused single query, two-pass, batched
 * rows): +-inf and NaN scores, value sums that overflow, exp underflow of
 * whole blocks. Each compared with the scalar kernels: same NaN/inf pattern. */
/* The tiled kernel itself (the API recomputes non-finite rows one by one,
 * which would hide this): keys that only some rows of a register tile weigh
 * go through the tile with 0 weights for the other rows, which must never
 * meet an inf or NaN value row (0 * inf = NaN). Trap keys score 2000 below
 * the rest for the rows that do not weigh them (their weight underflows to
 * exactly 0); some trap keys have a non-finite value row. A row's context is
 * non-finite exactly when it sees and weighs such a key. */
static void test_rows_kernel_zero_weights_meet_nonfinite_values(void)
{
    const attnx_kernels *kt = attnx_kernels_get();
    if (!kt->attend_rows) return;            /* no tiled kernel at this level */
    static const size_t cases[][4] = {{70, 40, 3, 5}, {130, 300, 2, 9}, {65, 600, 4, 1}, {200, 20, 3, 3}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const size_t Lq = cases[ci][0], T = cases[ci][1], d = cases[ci][2], dv = cases[ci][3];
        double *Q = rand_array(Lq * d, 0.5), *K = rand_array(T * d, 0.5), *V = rand_array(T * dv, 0.5);
        double *ctx = malloc(Lq * dv * sizeof(double)), *lse = malloc(Lq * sizeof(double));
        unsigned char *mask = malloc(Lq * T), *bad = malloc(T);
        int *weighs = malloc(Lq * sizeof(int));
        for (size_t t = 0; t < T; t++) {
            const int trap = t > 0 && urand() < -0.4;
            bad[t] = trap && urand() < 0.4;
            K[t * d + 1 % d] = trap ? 1000.0 : 0.0;
            if (bad[t]) V[t * dv + t % dv] = t % 2 ? INFINITY : NAN;
        }
        for (size_t r = 0; r < Lq; r++) {
            weighs[r] = urand() < -0.5;
            Q[r * d + 1 % d] = weighs[r] ? 0.0 : -2.0;
            for (size_t t = 0; t < T; t++) mask[r * T + t] = t == 0 || urand() > -0.6;
        }
        kt->attend_rows(Q, Lq, K, V, T, d, dv, 1.0, mask, (ptrdiff_t)T, NULL, ctx, lse);
        for (size_t r = 0; r < Lq; r++) {
            int want = 0, got = 0;
            for (size_t t = 0; t < T; t++) want |= weighs[r] && mask[r * T + t] && bad[t];
            for (size_t j = 0; j < dv; j++) got |= !isfinite(ctx[r * dv + j]);
            CHECK(got == want, "tiled kernel Lq=%zu T=%zu d=%zu dv=%zu row %zu: context %s, expected %s", Lq, T,
                  d, dv, r, got ? "non-finite" : "finite", want ? "non-finite" : "finite");
        }
        free(Q); free(K); free(V); free(ctx); free(lse); free(mask); free(bad); free(weighs);
    }
}

static void test_extremes_vs_scalar(void)
{
    const size_t Lq = 9, T = 41, d = 5, dv = 11;
    const char *lv = attnx_simd_level();
    double *Q = rand_array(Lq * d, 1.0), *K = rand_array(T * d, 1.0), *V = rand_array(T * dv, 1.0);
    double *ctx = malloc(Lq * dv * sizeof(double)), *ref = malloc(Lq * dv * sizeof(double));
    double *w = malloc(T * sizeof(double)), *w0 = malloc(T * sizeof(double));
    for (int kind = 0; kind < 6; kind++) {
        double *Kx = malloc(T * d * sizeof(double)), *Vx = malloc(T * dv * sizeof(double));
        memcpy(Kx, K, T * d * sizeof(double));
        memcpy(Vx, V, T * dv * sizeof(double));
        double scale = 1.0;
        if (kind == 0) Kx[20 * d] = 1e300 * 1e10;                   /* +-inf scores */
        if (kind == 1) Kx[3 * d + 1] = NAN;                         /* a NaN score */
        if (kind == 2) for (size_t j = 0; j < T * dv; j++) Vx[j] = 1e308; /* acc overflows in any order */
        if (kind == 3) scale = 1e5;                                 /* spread >> 745 */
        if (kind == 4) scale = 1e306;                               /* scores near +-1e306, some inf */
        if (kind == 5) for (size_t t = 0; t < T; t += 2) Kx[t * d] = -1e300 * 1e10; /* -inf/+inf mix */
        attnx_set_simd_level("scalar");
        for (size_t i = 0; i < Lq; i++) attnx_attend(Q + i * d, Kx, Vx, T, d, dv, scale, NULL, ref + i * dv, NULL);
        double c1[11], c2[11];
        attnx_attend(Q, Kx, Vx, T, d, dv, scale, NULL, c2, w0);
        attnx_set_simd_level(lv);
        size_t where = 0;
        attnx_attend(Q, Kx, Vx, T, d, dv, scale, NULL, c1, w);
        CHECK(ctx_close(c1, c2, dv, 1e-12, &where) && all_close(w, w0, T, 1e-13, &where),
              "two-pass extremes kind=%d at %zu", kind, where);
        for (size_t i = 0; i < Lq; i++) {
            attnx_attend(Q + i * d, Kx, Vx, T, d, dv, scale, NULL, c1, NULL);
            CHECK(ctx_close(c1, ref + i * dv, dv, 1e-12, &where), "fused extremes kind=%d row %zu at %zu: %g vs %g",
                  kind, i, where, c1[where], ref[i * dv + where]);
        }
        attnx_attend_batch(Q, Kx, Vx, 0, NULL, NULL, NULL, NULL, Lq, T, d, dv, scale, NULL, NULL, 0, 0, ctx, NULL, 1);
        CHECK(ctx_close(ctx, ref, Lq * dv, 1e-12, &where), "rows extremes kind=%d at %zu: %g vs %g", kind, where,
              ctx[where], ref[where]);
        free(Kx);
        free(Vx);
    }
    free(Q); free(K); free(V); free(ctx); free(ref); free(w); free(w0);
}

/* Softmax within 4 ulp of the long double result over a spread of 1000,
 * around the vector width and long; in place equals out of place. */
static void test_softmax_ulp(void)
{
    static const size_t ns[] = {1, 7, 8, 9, 17, 31, 33, 1000, 200003};
    /* the oracle needs a long double wider than double (x87 extended);
     * valgrind, for one, computes long double in double precision */
    volatile long double one = 1.0L, tiny = 0x1p-60L;
    if (one + tiny == one) {
        printf("softmax ulp test skipped: long double is no wider than double here\n");
        return;
    }
    for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++) {
        size_t n = ns[c];
        double *x = rand_array(n, 500.0), *y = malloc(n * sizeof(double));
        attnx_softmax(x, n, y);
        long double m = -INFINITY, sum = 0.0L;
        for (size_t i = 0; i < n; i++) if (x[i] > m) m = x[i];
        for (size_t i = 0; i < n; i++) sum += expl((long double)x[i] - m);
        double worst = 0.0;
        for (size_t i = 0; i < n; i++) {
            double r = (double)(expl((long double)x[i] - m) / sum);
            double ulp = r >= DBL_MIN ? nextafter(r, INFINITY) - r : 0x1p-1074;
            double err = (double)fabsl((long double)y[i] - expl((long double)x[i] - m) / sum) / ulp;
            if (err > worst) worst = err;
        }
        CHECK(worst <= 4.0, "softmax n=%zu max error %.3f ulp", n, worst);
        attnx_softmax(x, n, x);
        int same = 1;
        for (size_t i = 0; i < n; i++) same &= x[i] == y[i];
        CHECK(same, "softmax in place n=%zu", n);
        free(x);
        free(y);
    }
}

/* exp at many random points, near the overflow/underflow edges and into
 * the subnormal range, within 1 ulp; y may be x. */
static void test_exp_dense(void)
{
    enum { N = 200000 };
    double *x = malloc(N * sizeof(double)), *y = malloc(N * sizeof(double));
    for (int i = 0; i < N; i++) {
        double u = urand();
        if (i % 4 == 0) x[i] = 709.0 + 0.79 * (u + 1) / 2;          /* near overflow */
        else if (i % 4 == 1) x[i] = -745.1 + 40 * (u + 1) / 2;      /* subnormal results */
        else if (i % 4 == 2) x[i] = 1e-3 * u;                       /* near 0 */
        else x[i] = 745 * u;
    }
    double worst = exp_max_ulp(x, N, y);
    CHECK(worst <= 1.0, "exp dense max error %.3f ulp", worst);
    attnx_exp(x, N, x);
    CHECK(memcmp(x, y, N * sizeof(double)) == 0, "exp in place");
    free(x);
    free(y);
}

HARNESS_MAIN("float64", (test_status_codes),
             (test_worked_example, test_against_scalar, test_exp, test_softmax_specials, test_attend_specials,
              test_batch, test_split, test_rows_vs_loop, test_rows_kernel_zero_weights_meet_nonfinite_values,
              test_alignment, test_extremes_vs_scalar,
              test_softmax_ulp, test_exp_dense))
