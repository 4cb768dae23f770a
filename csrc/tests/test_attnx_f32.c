/*
 * C tests of the float32 functions of attnx.h, no Python involved. Each
 * runs once per SIMD level this CPU supports (or the one ATTNX_SIMD pins)
 * and compares against the float64 functions on the same inputs converted
 * to double; semantics (NaN, inf, masks, zeros, status codes) are checked
 * exactly. Every level prints the largest errors it measured against
 * float64 (see csrc/attnx_internal_f32.h for what they mean). Closes with
 * "N passed, N failed"; the exit status is nonzero on any failure.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnx_internal_f32.h"   /* the float32 exp, measured directly */
#define HARNESS_SEED 0x9E3779B97F4A7C15ull
#include "tests/harness.h"

#define U24 0x1p-24   /* unit roundoff of float32 */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        printf("out of memory\n");
        exit(2);
    }
    return p;
}
static float *frand(size_t n, double amp)
{
    float *a = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) a[i] = (float)(amp * urand());
    return a;
}
static double *to_f64(const float *a, size_t n)
{
    double *r = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) r[i] = a[i];
    return r;
}
#define FALLOC(n) ((float *)xmalloc((n) * sizeof(float)))
#define DALLOC(n) ((double *)xmalloc((n) * sizeof(double)))

/* ------------------------------------------------------- error measures */

/* The largest errors against float64 seen at the current level. */
typedef struct errs {
    double exp_ulp, exp_sub_ulp, dot, softmax, log_softmax, context, attend_w, attend_ctx, fused_ctx, rows_ctx;
} errs;
static errs g_err;
static void upd(double *slot, double v)
{
    if (v > *slot) *slot = v;
}

/* |a - ref| / |ref| (|ref| floored at FLT_MIN: a subnormal result counts
 * its error in units of FLT_MIN); 0 for equal NaN/inf patterns, inf for a
 * pattern mismatch. */
static double rel_err(double a, double ref)
{
    if (isnan(a) || isnan(ref)) return isnan(a) && isnan(ref) ? 0.0 : INFINITY;
    if (isinf(a) || isinf(ref)) return a == ref ? 0.0 : INFINITY;
    double m = fabs(ref) < FLT_MIN ? FLT_MIN : fabs(ref);
    return fabs(a - ref) / m;
}

/* max_j |c_j - ref_j| / mag: a context's error relative to the size of the
 * terms it sums (mag = max_j sum_t w_t |V_tj|); when mag == 0 the two must
 * be equal. NaN/inf patterns must match. */
static double ctx_err(const float *c, const double *ref, size_t dv, double mag)
{
    double worst = 0.0;
    for (size_t j = 0; j < dv; j++) {
        double a = c[j], r = ref[j];
        if (isnan(a) || isnan(r) || isinf(a) || isinf(r)) {
            if (!((isnan(a) && isnan(r)) || a == r)) return INFINITY;
            continue;
        }
        double e = mag > 0 ? fabs(a - r) / mag : (a == r ? 0.0 : INFINITY);
        if (e > worst) worst = e;
    }
    return worst;
}

/* max_j sum_t |w_t| |V_tj|, skipping zero weights (their rows may be NaN). */
static double ctx_mag(const double *w, const double *V, size_t T, size_t dv)
{
    double mag = 0.0;
    for (size_t j = 0; j < dv; j++) {
        double s = 0.0;
        for (size_t t = 0; t < T; t++)
            if (w[t] != 0.0) s += fabs(w[t]) * fabs(V[t * dv + j]);
        if (s > mag) mag = s;
    }
    return mag;
}

/* log-softmax of x in double (libm here is the test's, not the library's). */
static void log_softmax_ref(const float *x, size_t n, double *y)
{
    double m = -INFINITY;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        nan |= isnan(x[i]);
        if (x[i] > m) m = x[i];
    }
    if (nan || m == -INFINITY) {
        for (size_t i = 0; i < n; i++) y[i] = NAN;
        return;
    }
    if (m == INFINITY) {            /* scipy: NaN at +inf, -inf elsewhere */
        for (size_t i = 0; i < n; i++) y[i] = x[i] == INFINITY ? NAN : -INFINITY;
        return;
    }
    /* log S, S = c + R: c entries at the max add exactly 1 each; with c == 1
     * log S = log1p(R), which log(1 + R) would round away for tiny R */
    double r = 0.0;
    size_t c = 0;
    for (size_t i = 0; i < n; i++) {
        if (x[i] == m)
            c++;
        else
            r += exp((double)x[i] - m);
    }
    double ls = c == 1 ? log1p(r) : log((double)c + r);
    for (size_t i = 0; i < n; i++) y[i] = ((double)x[i] - m) - ls;
}

static const size_t SIZES[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 129};
#define NSIZES (sizeof SIZES / sizeof SIZES[0])

/* ---------------------------------------------------------------- tests */

static void test_status_codes(void)
{
    float a[8] = {0}, b[8] = {0}, c[8] = {0};
    unsigned char m[4] = {1, 1, 1, 1};
    const size_t big = SIZE_MAX / sizeof(float) + 1;   /* no longer fits as floats */
    CHECK(attnx_dot_scores_f32(NULL, a, 1, 1, 1.0f, b) == ATTNX_ERR_NULL, "dot NULL q");
    CHECK(attnx_dot_scores_f32(a, NULL, 1, 1, 1.0f, b) == ATTNX_ERR_NULL, "dot NULL K");
    CHECK(attnx_dot_scores_f32(a, b, 1, 1, 1.0f, NULL) == ATTNX_ERR_NULL, "dot NULL out");
    CHECK(attnx_softmax_f32(NULL, 1, a) == ATTNX_ERR_NULL, "softmax NULL x");
    CHECK(attnx_softmax_f32(a, 1, NULL) == ATTNX_ERR_NULL, "softmax NULL y");
    CHECK(attnx_context_f32(NULL, a, 1, 1, b) == ATTNX_ERR_NULL, "context NULL w");
    CHECK(attnx_context_f32(a, NULL, 1, 1, b) == ATTNX_ERR_NULL, "context NULL V");
    CHECK(attnx_context_f32(a, b, 1, 1, NULL) == ATTNX_ERR_NULL, "context NULL ctx");
    CHECK(attnx_attend_f32(NULL, a, a, 1, 1, 1, 1.0f, NULL, b, NULL) == ATTNX_ERR_NULL, "attend NULL q");
    CHECK(attnx_attend_f32(a, NULL, a, 1, 1, 1, 1.0f, NULL, b, NULL) == ATTNX_ERR_NULL, "attend NULL K");
    CHECK(attnx_attend_f32(a, a, NULL, 1, 1, 1, 1.0f, NULL, b, NULL) == ATTNX_ERR_NULL, "attend NULL V");
    CHECK(attnx_attend_f32(a, a, a, 1, 1, 1, 1.0f, NULL, NULL, NULL) == ATTNX_ERR_NULL, "attend NULL ctx");
    CHECK(attnx_attend_f32(a, a, a, 0, 1, 1, 1.0f, NULL, b, NULL) == ATTNX_ERR_EMPTY, "attend T=0");
    CHECK(attnx_log_softmax_rows_f32(NULL, 1, 1, a, 1) == ATTNX_ERR_NULL, "log_softmax NULL");
    CHECK(attnx_softmax_rows_f32(a, 1, 1, NULL, 1) == ATTNX_ERR_NULL, "softmax_rows NULL");
    /* overflow, counted in floats */
    CHECK(attnx_attend_f32(a, a, a, SIZE_MAX / 16, 8, 1, 1.0f, NULL, b, NULL) == ATTNX_ERR_OVERFLOW, "T*d overflow");
    CHECK(attnx_attend_f32(a, a, a, 2, 1, SIZE_MAX / 2, 1.0f, NULL, b, NULL) == ATTNX_ERR_OVERFLOW, "T*dv overflow");
    CHECK(attnx_attend_f32(a, a, a, big, 0, 0, 1.0f, NULL, b, NULL) == ATTNX_ERR_OVERFLOW, "T floats overflow");
    CHECK(attnx_dot_scores_f32(a, b, SIZE_MAX / 12, 4, 1.0f, c) == ATTNX_ERR_OVERFLOW, "dot overflow");
    CHECK(attnx_context_f32(a, b, 3, SIZE_MAX / 12 + 1, c) == ATTNX_ERR_OVERFLOW, "context overflow");
    CHECK(attnx_softmax_f32(a, big, b) == ATTNX_ERR_OVERFLOW, "softmax overflow");
    CHECK(attnx_softmax_rows_f32(a, 2, big / 2 + 1, b, 1) == ATTNX_ERR_OVERFLOW, "softmax_rows overflow");
    CHECK(attnx_log_softmax_rows_f32(a, big / 2 + 1, 2, b, 1) == ATTNX_ERR_OVERFLOW, "log_softmax_rows overflow");
    /* overlap: ctx inside K, weights inside V, partial softmax overlap */
    CHECK(attnx_attend_f32(a, b, c, 4, 2, 1, 1.0f, NULL, b + 1, NULL) == ATTNX_ERR_OVERLAP, "ctx in K");
    CHECK(attnx_attend_f32(a, a, a, 2, 2, 2, 1.0f, NULL, c, a + 1) == ATTNX_ERR_OVERLAP, "w in V");
    CHECK(attnx_attend_f32(a, b, b, 2, 1, 1, 1.0f, m, c, c) == ATTNX_ERR_OVERLAP, "w == ctx");
    CHECK(attnx_attend_f32(a, b, b, 2, 1, 1, 1.0f, (const unsigned char *)c, c, NULL) == ATTNX_ERR_OVERLAP, "ctx on mask");
    CHECK(attnx_dot_scores_f32(a, b, 2, 2, 1.0f, b + 3) == ATTNX_ERR_OVERLAP, "scores in K");
    CHECK(attnx_context_f32(a, b, 2, 2, a + 1) == ATTNX_ERR_OVERLAP, "ctx on w");
    CHECK(attnx_softmax_f32(a, 4, a + 1) == ATTNX_ERR_OVERLAP, "softmax partial overlap");
    CHECK(attnx_softmax_rows_f32(a, 2, 2, a + 1, 1) == ATTNX_ERR_OVERLAP, "softmax_rows partial overlap");
    CHECK(attnx_log_softmax_rows_f32(a, 2, 2, a + 3, 1) == ATTNX_ERR_OVERLAP, "log_softmax partial overlap");
    CHECK(attnx_softmax_f32(a, 4, a) == ATTNX_OK, "softmax in place");
    CHECK(attnx_log_softmax_rows_f32(a, 2, 2, a, 1) == ATTNX_OK, "log_softmax in place");
    CHECK(attnx_softmax_f32(a, 0, b) == ATTNX_OK, "softmax n=0");
    CHECK(attnx_softmax_rows_f32(a, 3, 0, b, 1) == ATTNX_OK, "softmax_rows n=0");
    CHECK(attnx_log_softmax_rows_f32(a, 0, 3, b, 1) == ATTNX_OK, "log_softmax rows=0");
    CHECK(attnx_dot_scores_f32(a, b, 0, 3, 1.0f, c) == ATTNX_OK, "dot T=0");
    c[0] = c[2] = 5.0f;
    CHECK(attnx_context_f32(a, b, 0, 3, c) == ATTNX_OK && c[0] == 0 && c[2] == 0, "context T=0 zeros");
    size_t shape[1] = {2};
    ptrdiff_t st[1] = {0};
    CHECK(attnx_attend_batch_f32(a, a, a, ATTNX_MAX_BATCH_DIMS + 1, shape, st, st, st, 1, 1, 1, 1, 1.0f,
                                 NULL, NULL, 0, 0, c, NULL, 1) == ATTNX_ERR_ARG, "too many batch dims");
    CHECK(attnx_attend_batch_f32(a, a, a, 1, shape, NULL, st, st, 1, 1, 1, 1, 1.0f, NULL, NULL, 0, 0, c,
                                 NULL, 1) == ATTNX_ERR_NULL, "NULL strides");
    CHECK(attnx_attend_batch_f32(a, a, a, 1, shape, st, st, st, 1, 1, 1, 1, 1.0f, m, NULL, 0, 0, c,
                                 NULL, 1) == ATTNX_ERR_NULL, "NULL mask strides");
    CHECK(attnx_attend_batch_f32(a, a, a, 1, NULL, st, st, st, 1, 1, 1, 1, 1.0f, NULL, NULL, 0, 0, c,
                                 NULL, 1) == ATTNX_ERR_NULL, "NULL shape");
    CHECK(attnx_attend_batch_f32(a, a, a, 0, NULL, NULL, NULL, NULL, 1, 1, 1, 1, 1.0f, NULL, NULL, 0, 0,
                                 c, NULL, -1) == ATTNX_ERR_ARG, "negative threads");
    CHECK(attnx_attend_batch_f32(a, a, a, 0, NULL, NULL, NULL, NULL, 1, 0, 1, 1, 1.0f, NULL, NULL, 0, 0,
                                 c, NULL, 1) == ATTNX_ERR_EMPTY, "batch T=0");
    CHECK(attnx_attend_batch_f32(a, b, b, 1, shape, st, st, st, 1, 2, 1, 1, 1.0f, NULL, NULL, 0, 0,
                                 b + 1, NULL, 1) == ATTNX_ERR_OVERLAP, "batch ctx in K");
    CHECK(attnx_dot_scores_batch_f32(a, a, 1, shape, st, st, 1, 1, 1, 1.0f, c, -1) == ATTNX_ERR_ARG,
          "dot batch threads");
    CHECK(attnx_dot_scores_batch_f32(a, b, 1, shape, st, st, 1, 2, 1, 1.0f, b, 1) == ATTNX_ERR_OVERLAP,
          "dot batch overlap");
    CHECK(attnx_context_batch_f32(a, b, 1, shape, NULL, st, 1, 1, 1, c, 1) == ATTNX_ERR_NULL,
          "context batch NULL strides");
    CHECK(attnx_context_batch_f32(a, b, 1, shape, st, st, 1, 2, 2, a, 1) == ATTNX_ERR_OVERLAP,
          "context batch overlap");
    shape[0] = 0;
    CHECK(attnx_attend_batch_f32(a, a, a, 1, shape, st, st, st, 1, 1, 1, 1, 1.0f, NULL, NULL, 0, 0, c,
                                 NULL, 1) == ATTNX_OK, "empty batch");
}

/* The worked example of DESIGN.md in float32 against float64. */
static void test_worked_example(void)
{
    const float q[3] = {5, 1, 20};
    const float K[12] = {3, 12, 45, 59, 2, 5, 1, 43, 5, 4, 3, 45.3f};
    double qd[3], Kd[12], s64[4], w64[4], c64[3];
    float s[4], w[4], c[3], c2[3];
    for (int i = 0; i < 3; i++) qd[i] = q[i];
    for (int i = 0; i < 12; i++) Kd[i] = K[i];
    attnx_dot_scores(qd, Kd, 4, 3, 1.0, s64);
    attnx_attend(qd, Kd, Kd, 4, 3, 3, 1.0, NULL, c64, w64);
    CHECK(attnx_dot_scores_f32(q, K, 4, 3, 1.0f, s) == ATTNX_OK, "status");
    for (int i = 0; i < 3; i++) CHECK(s[i] == (float)s64[i], "score %d = %.9g", i, s[i]);
    CHECK(fabs(s[3] - s64[3]) <= 1e-4, "score 3 = %.9g vs %.9g", s[3], s64[3]);
    CHECK(attnx_attend_f32(q, K, K, 4, 3, 3, 1.0f, NULL, c, w) == ATTNX_OK, "status");
    CHECK(attnx_attend_f32(q, K, K, 4, 3, 3, 1.0f, NULL, c2, NULL) == ATTNX_OK, "status");
    /* the scores 929 (float: 928.99998...) carry an absolute error of ~3e-5,
     * so the weights may differ by that factor */
    CHECK(rel_err(w[0], w64[0]) < 1e-4 && rel_err(w[3], w64[3]) < 1e-4, "weights %.9g %.9g", w[0], w[3]);
    CHECK(w[1] == 0.0f && w[2] == 0.0f, "exp(-530), exp(-781) underflow in float: %g %g", w[1], w[2]);
    for (int j = 0; j < 3; j++) {
        CHECK(rel_err(c[j], c64[j]) < 1e-4, "context %d = %.9g vs %.9g", j, c[j], c64[j]);
        CHECK(rel_err(c2[j], c[j]) < 4 * FLT_EPSILON, "fused %d = %.9g vs %.9g", j, c2[j], c[j]);
    }
}

/* exp at many points over the whole float range, against the double exp
 * rounded: within 1 ulp (in float ulps; subnormals in units of 2^-149). */
static void test_exp(void)
{
    enum { N = 400000 };
    void (*fexp)(const float *, size_t, float *) = attnx_kernels_f32_get()->exp;
    float *x = FALLOC(N), *y = FALLOC(N);
    for (int i = 0; i < N; i++) {
        double u = urand();
        if (i % 4 == 0) x[i] = (float)(88.0 + 0.73 * (u + 1) / 2);          /* near overflow */
        else if (i % 4 == 1) x[i] = (float)(-104.0 + 18 * (u + 1) / 2);     /* subnormal results */
        else if (i % 4 == 2) x[i] = (float)(1e-3 * u);                      /* near 0 */
        else x[i] = (float)(-103.9 + (88.7 + 103.9) * (u + 1) / 2);
    }
    fexp(x, N, y);
    double worst = 0.0, worst_sub = 0.0;
    for (int i = 0; i < N; i++) {
        double ref = exp((double)x[i]);
        if (ref > FLT_MAX) {   /* inf (FLT_MAX just above it: the rounding boundary) */
            if (!isinf(y[i]) && !(y[i] == FLT_MAX && ref < FLT_MAX * (1 + 0x1p-24))) worst = 99;
            continue;
        }
        int e;
        frexp(ref, &e);
        double ulp = ref < FLT_MIN ? 0x1p-149 : ldexp(1.0, e - 24);
        double err = fabs((double)y[i] - ref) / ulp;
        if (ref < FLT_MIN) {
            if (err > worst_sub) worst_sub = err;
        } else if (err > worst) {
            worst = err;
        }
    }
    upd(&g_err.exp_ulp, worst);
    upd(&g_err.exp_sub_ulp, worst_sub);
    CHECK(worst <= 1.0 && worst_sub <= 1.0, "exp max error %.3f ulp, %.3f subnormal", worst, worst_sub);
    fexp(x, N, x);
    CHECK(memcmp(x, y, N * sizeof(float)) == 0, "exp in place");
    float sp[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 88.73f, -103.98f, 1e-30f, -1e-30f, 1.0f,
                  -87.33654f, -FLT_MAX, FLT_MAX};
    float out[13];
    fexp(sp, 13, out);
    CHECK(out[0] == 1.0f && out[1] == 1.0f, "exp(0) = 1");
    CHECK(out[2] == INFINITY && out[3] == 0.0f && isnan(out[4]), "exp specials");
    CHECK(out[5] == INFINITY && out[6] == 0.0f, "exp over/underflow: %g %g", out[5], out[6]);
    CHECK(out[7] == 1.0f && out[8] == 1.0f, "exp tiny");
    CHECK(out[9] == 2.71828175f || out[9] == 2.71828198f, "exp(1) = %.9g", out[9]);
    CHECK(out[10] > 0.0f && out[10] <= 1.2e-38f, "exp near FLT_MIN: %g", out[10]);
    CHECK(out[11] == 0.0f && out[12] == INFINITY, "exp(+-FLT_MAX)");
    free(x);
    free(y);
}

/* One case against float64: dot_scores, attend two-pass and fused (masked),
 * softmax and log-softmax of a spread of `spread`, context. Records the
 * errors; asserts bounds derived from the accumulation design. */
static void compare_case(size_t T, size_t d, size_t dv, int masked, double spread)
{
    float *q = frand(d, 1.0), *K = frand(T * d, 1.0), *V = frand(T * dv, 1.0);
    double *qd = to_f64(q, d), *Kd = to_f64(K, T * d), *Vd = to_f64(V, T * dv);
    float *s = FALLOC(T), *w = FALLOC(T), *c = FALLOC(dv), *cf = FALLOC(dv), *x = frand(T, spread / 2);
    double *s64 = DALLOC(T), *w64 = DALLOC(T), *c64 = DALLOC(dv), *y64 = DALLOC(T);
    unsigned char *mask = xmalloc(T);
    for (size_t t = 0; t < T; t++) mask[t] = masked ? (t * 7 + d) % 3 != 0 : 1;
    const unsigned char *mk = masked ? mask : NULL;
    const float scale = (float)(1.0 / sqrt((double)(d ? d : 1)));

    /* dot products: error relative to scale * sum_j |q_j K_tj| */
    attnx_dot_scores_f32(q, K, T, d, scale, s);
    attnx_dot_scores(qd, Kd, T, d, scale, s64);
    double worst = 0.0, smax = 0.0;
    for (size_t t = 0; t < T; t++) {
        double n = 0.0;
        for (size_t j = 0; j < d; j++) n += fabs(qd[j] * Kd[t * d + j]);
        n *= scale;
        if (n > smax) smax = n;
        double e = n > 0 ? fabs(s[t] - s64[t]) / n : (s[t] == s64[t] ? 0.0 : INFINITY);
        if (e > worst) worst = e;
    }
    upd(&g_err.dot, worst);
    CHECK(worst <= (d + 2) * U24, "dot T=%zu d=%zu: %.3g", T, d, worst);

    /* attend: a score error e scales a weight by up to e^(2e) */
    const double tol_s = (d + 2) * U24 * smax;
    const double tol_w = 2.5 * tol_s + 16 * U24;
    CHECK(attnx_attend_f32(q, K, V, T, d, dv, scale, mk, c, w) == ATTNX_OK, "status");
    CHECK(attnx_attend_f32(q, K, V, T, d, dv, scale, mk, cf, NULL) == ATTNX_OK, "status");
    attnx_attend(qd, Kd, Vd, T, d, dv, scale, mk, c64, w64);
    worst = 0.0;
    for (size_t t = 0; t < T; t++) {
        double e = rel_err(w[t], w64[t]);
        if (e > worst) worst = e;
        if (mk && !mk[t]) CHECK(w[t] == 0.0f, "masked weight %zu", t);
    }
    upd(&g_err.attend_w, worst);
    CHECK(worst <= tol_w, "attend weights T=%zu d=%zu: %.3g > %.3g", T, d, worst, tol_w);
    const double mag = ctx_mag(w64, Vd, T, dv), tol_c = tol_w + (T + 4) * U24;
    double ec = ctx_err(c, c64, dv, mag), ef = ctx_err(cf, c64, dv, mag);
    upd(&g_err.attend_ctx, ec);
    upd(&g_err.fused_ctx, ef);
    CHECK(ec <= tol_c, "attend ctx T=%zu d=%zu dv=%zu: %.3g > %.3g", T, d, dv, ec, tol_c);
    CHECK(ef <= tol_c, "fused ctx T=%zu d=%zu dv=%zu: %.3g > %.3g", T, d, dv, ef, tol_c);

    /* softmax of a spread: each weight within a few ulp */
    double *xd = to_f64(x, T);
    attnx_softmax_f32(x, T, w);
    attnx_softmax(xd, T, w64);
    worst = 0.0;
    for (size_t t = 0; t < T; t++) upd(&worst, rel_err(w[t], w64[t]));
    upd(&g_err.softmax, worst);
    CHECK(worst <= 4 * U24, "softmax n=%zu spread %g: %.3g", T, spread, worst);

    /* log-softmax of the same: within an ulp or two */
    float *ls = FALLOC(T);
    CHECK(attnx_log_softmax_rows_f32(x, 1, T, ls, 1) == ATTNX_OK, "status");
    log_softmax_ref(x, T, y64);
    worst = 0.0;
    for (size_t t = 0; t < T; t++) upd(&worst, rel_err(ls[t], y64[t]));
    upd(&g_err.log_softmax, worst);
    CHECK(worst <= 3 * U24, "log_softmax n=%zu spread %g: %.3g", T, spread, worst);

    /* context of those weights: error relative to sum_t w_t |V_tj|, per column */
    double *wd = to_f64(w, T);
    attnx_context_f32(w, V, T, dv, c);
    attnx_context(wd, Vd, T, dv, c64);
    worst = 0.0;
    for (size_t j = 0; j < dv; j++) {
        double n = 0.0;
        for (size_t t = 0; t < T; t++) n += fabs(wd[t] * Vd[t * dv + j]);
        upd(&worst, n > 0 ? fabs(c[j] - c64[j]) / n : (c[j] == c64[j] ? 0.0 : INFINITY));
    }
    upd(&g_err.context, worst);
    CHECK(worst <= (T + 2) * U24, "context T=%zu dv=%zu: %.3g", T, dv, worst);

    free(q); free(K); free(V); free(qd); free(Kd); free(Vd); free(s); free(w); free(c); free(cf);
    free(x); free(s64); free(w64); free(c64); free(y64); free(mask); free(xd); free(ls); free(wd);
}

static void test_against_f64(void)
{
    /* around the vector widths, masked and not */
    for (size_t a = 0; a < NSIZES; a++)
        for (size_t b = 0; b < NSIZES; b += 2) {
            size_t T = SIZES[a], d = SIZES[b], dv = SIZES[(a + b) % NSIZES];
            compare_case(T, d, dv, (a + b) % 2, 100.0);
        }
    /* d and T up to a few thousand: the errors the header comment states */
    static const size_t big[][3] = {{4096, 64, 64}, {1024, 1024, 64}, {3000, 256, 256},
                                    {256, 4096, 16}, {2048, 2048, 128}, {99, 16, 600}};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        compare_case(big[i][0], big[i][1], big[i][2], (int)(i % 2), i % 2 ? 100.0 : 1000.0);
}

static void test_softmax_specials(void)
{
    float y[5], *z;
    double ly[5];
    float allneg[3] = {-INFINITY, -INFINITY, -INFINITY};
    attnx_softmax_f32(allneg, 3, y);
    CHECK(isnan(y[0]) && isnan(y[2]), "all -inf is NaN (as scipy)");
    attnx_log_softmax_rows_f32(allneg, 1, 3, y, 1);
    CHECK(isnan(y[0]) && isnan(y[1]) && isnan(y[2]), "log: all -inf is NaN");
    float withnan[3] = {1, NAN, 2};
    attnx_softmax_f32(withnan, 3, y);
    CHECK(isnan(y[0]) && isnan(y[1]) && isnan(y[2]), "NaN poisons the row");
    attnx_log_softmax_rows_f32(withnan, 1, 3, y, 1);
    CHECK(isnan(y[0]) && isnan(y[1]) && isnan(y[2]), "log: NaN poisons the row");
    float withinf[3] = {1, INFINITY, 2};
    attnx_softmax_f32(withinf, 3, y);
    CHECK(isnan(y[0]) && isnan(y[1]) && isnan(y[2]), "+inf gives NaN");
    attnx_log_softmax_rows_f32(withinf, 1, 3, y, 1);
    CHECK(y[0] == -INFINITY && isnan(y[1]) && y[2] == -INFINITY,
          "log: +inf gives NaN there, -inf elsewhere (as scipy and float64)");
    float big[4] = {FLT_MAX, -FLT_MAX, FLT_MAX, 0};
    attnx_softmax_f32(big, 4, y);
    CHECK(y[0] == 0.5f && y[1] == 0.0f && y[2] == 0.5f && y[3] == 0.0f, "+-FLT_MAX never overflow: %g %g %g %g",
          y[0], y[1], y[2], y[3]);
    attnx_log_softmax_rows_f32(big, 1, 4, y, 1);
    CHECK(y[0] == (float)-log(2.0) && y[2] == y[0] && y[1] == -INFINITY && y[3] == -FLT_MAX,
          "log of +-FLT_MAX: %g %g %g %g", y[0], y[1], y[2], y[3]);
    float someinf[3] = {-INFINITY, 0, -INFINITY};
    attnx_softmax_f32(someinf, 3, y);
    CHECK(y[0] == 0.0f && y[1] == 1.0f && y[2] == 0.0f, "-inf weight 0");
    attnx_log_softmax_rows_f32(someinf, 1, 3, y, 1);
    CHECK(y[0] == -INFINITY && y[1] == 0.0f && y[2] == -INFINITY, "log: -inf entries give -inf");
    float one[1] = {42};
    attnx_softmax_f32(one, 1, y);
    CHECK(y[0] == 1.0f, "single element");
    attnx_log_softmax_rows_f32(one, 1, 1, y, 1);
    CHECK(y[0] == 0.0f, "log single element");
    /* where softmax underflows, log-softmax stays exact */
    float far[3] = {0.0f, -1000.0f, -60.5f};
    attnx_softmax_f32(far, 3, y);
    CHECK(y[1] == 0.0f, "softmax underflows");
    attnx_log_softmax_rows_f32(far, 1, 3, y, 1);
    log_softmax_ref(far, 3, ly);
    CHECK(y[1] == (float)ly[1] && y[2] == (float)ly[2] && y[0] == (float)ly[0],
          "log-softmax where softmax underflows: %.9g %.9g %.9g", y[0], y[1], y[2]);
    /* a dominant element: log(1 + tiny) keeps its relative accuracy */
    float dom[2] = {0.0f, -20.0f};
    attnx_log_softmax_rows_f32(dom, 1, 2, y, 1);
    log_softmax_ref(dom, 2, ly);
    CHECK(rel_err(y[0], ly[0]) <= 3 * U24 && rel_err(y[1], ly[1]) <= 3 * U24, "log(1 + e^-20): %.9g vs %.9g",
          y[0], ly[0]);
    /* dominant by far more: 1 + e^-gap is 1 in double, log1p keeps it */
    for (int gap = 25; gap <= 85; gap += 6) {
        float far2[3] = {-(float)gap, 0.0f, -(float)gap - 0.5f};
        attnx_log_softmax_rows_f32(far2, 1, 3, y, 1);
        log_softmax_ref(far2, 3, ly);
        CHECK(ly[1] < 0.0 && rel_err(y[1], ly[1]) <= 3 * U24 && rel_err(y[0], ly[0]) <= 3 * U24,
              "log-softmax of a dominant score, gap %d: %.9g vs %.9g", gap, y[1], ly[1]);
    }
    /* subnormal weights: not flushed */
    float sub[2] = {0.0f, -95.0f};
    attnx_softmax_f32(sub, 2, y);
    CHECK(y[1] > 0.0f && y[1] < FLT_MIN && fabs(y[1] - exp(-95.0) / (1 + exp(-95.0))) <= 0x1p-148,
          "subnormal weight %g", y[1]);
    /* in place, around the vector widths, equals out of place */
    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = SIZES[i] * 3;
        float *x = frand(n, 40.0), *o = FALLOC(n), *lo = FALLOC(n);
        z = FALLOC(n);
        memcpy(z, x, n * sizeof(float));
        attnx_softmax_f32(x, n, o);
        attnx_softmax_f32(z, n, z);
        CHECK(memcmp(o, z, n * sizeof(float)) == 0, "softmax in place n=%zu", n);
        memcpy(z, x, n * sizeof(float));
        attnx_log_softmax_rows_f32(x, 3, n / 3, lo, 1);
        attnx_log_softmax_rows_f32(z, 3, n / 3, z, 2);
        CHECK(memcmp(lo, z, n * sizeof(float)) == 0, "log_softmax in place n=%zu", n);
        free(x); free(o); free(lo); free(z);
    }
}

static void test_attend_specials(void)
{
    float q[2] = {1, 2}, K[6] = {1, 0, 0, 1, 1, 1}, V[6] = {1, 2, 3, 4, 5, 6};
    float c[2], w[3];
    unsigned char none[3] = {0, 0, 0}, some[3] = {0, 1, 0};
    attnx_attend_f32(q, K, V, 3, 2, 2, 1.0f, none, c, w);
    CHECK(c[0] == 0 && c[1] == 0 && w[0] == 0 && w[1] == 0 && w[2] == 0, "all masked: zeros");
    attnx_attend_f32(q, K, V, 3, 2, 2, 1.0f, none, c, NULL);
    CHECK(c[0] == 0 && c[1] == 0, "all masked fused: zeros");
    attnx_attend_f32(q, K, V, 3, 2, 2, 1.0f, some, c, w);
    CHECK(c[0] == 3 && c[1] == 4 && w[1] == 1.0f && w[0] == 0 && w[2] == 0, "one key left");
    /* a masked key's rows are never read: NaN there changes nothing */
    float Kn[6] = {NAN, NAN, 0, 1, NAN, NAN}, Vn[6] = {NAN, NAN, 3, 4, INFINITY, NAN};
    attnx_attend_f32(q, Kn, Vn, 3, 2, 2, 1.0f, some, c, NULL);
    CHECK(c[0] == 3 && c[1] == 4, "masked NaN rows unread (fused)");
    attnx_attend_f32(q, Kn, Vn, 3, 2, 2, 1.0f, some, c, w);
    CHECK(c[0] == 3 && c[1] == 4, "masked NaN rows unread (two-pass)");
    /* all -inf scores (not masked): zeros, as all masked */
    float qi[1] = {-INFINITY}, Ki[3] = {1, 2, 3}, Vi[3] = {NAN, NAN, NAN};
    attnx_attend_f32(qi, Ki, Vi, 3, 1, 1, 1.0f, NULL, c, w);
    CHECK(c[0] == 0 && w[0] == 0 && w[2] == 0, "all -inf scores: zeros");
    attnx_attend_f32(qi, Ki, Vi, 3, 1, 1, 1.0f, NULL, c, NULL);
    CHECK(c[0] == 0, "all -inf scores fused: zeros, value rows unread");
    float qn[2] = {NAN, 1};
    attnx_attend_f32(qn, K, V, 3, 2, 2, 1.0f, NULL, c, NULL);
    CHECK(isnan(c[0]) && isnan(c[1]), "NaN query propagates (fused)");
    attnx_attend_f32(qn, K, V, 3, 2, 2, 1.0f, NULL, c, w);
    CHECK(isnan(c[0]) && isnan(w[0]) && isnan(w[2]), "NaN query propagates (two-pass)");
    /* a +inf score: NaN */
    float qp[1] = {INFINITY}, Kp[3] = {1, 0.5f, -1}, Vp[3] = {1, 2, 3};
    attnx_attend_f32(qp, Kp, Vp, 3, 1, 1, 1.0f, NULL, c, NULL);
    CHECK(isnan(c[0]), "+inf score: NaN (fused)");
    attnx_attend_f32(qp, Kp, Vp, 3, 1, 1, 1.0f, NULL, c, w);
    CHECK(isnan(c[0]) && isnan(w[0]), "+inf score: NaN (two-pass)");
    /* scores near +-FLT_MAX: the online rescale must not overflow */
    float qb[1] = {3e38f}, Kb[3] = {1, -1, 0.5f}, Vb[3] = {1, 2, 3};
    attnx_attend_f32(qb, Kb, Vb, 3, 1, 1, 1.0f, NULL, c, NULL);
    CHECK(c[0] == 1.0f, "3e38 scores fused: %g", c[0]);
    attnx_attend_f32(qb, Kb, Vb, 3, 1, 1, 1.0f, NULL, c, w);
    CHECK(c[0] == 1.0f && w[0] == 1.0f && w[1] == 0.0f, "3e38 scores two-pass");
    float Kr[3] = {0.5f, -1, 1};   /* the max grows from 1.5e38 to 3e38 */
    attnx_attend_f32(qb, Kr, Vb, 3, 1, 1, 1.0f, NULL, c, NULL);
    CHECK(c[0] == 3.0f, "rescale by exp(-1.5e38) fused: %g", c[0]);
    /* a weight that underflows to 0 skips its value row (NaN there): fused,
     * two-pass, and the batched rows (5 queries: the register tiles) */
    {
        float qu[5] = {1, 1, 1, 1, 1}, Ku[3] = {0, -200, 0.5f}, Vu[3] = {1, NAN, 3}, cu[5], wu[3];
        double want = (exp(-0.5) + 3.0) / (exp(-0.5) + 1.0);
        attnx_attend_f32(qu, Ku, Vu, 3, 1, 1, 1.0f, NULL, cu, NULL);
        CHECK(fabs(cu[0] - want) < 1e-6, "underflowed weight, row unread (fused): %g", cu[0]);
        attnx_attend_f32(qu, Ku, Vu, 3, 1, 1, 1.0f, NULL, cu, wu);
        CHECK(fabs(cu[0] - want) < 1e-6 && wu[1] == 0.0f, "underflowed weight, row unread (two-pass): %g", cu[0]);
        attnx_attend_batch_f32(qu, Ku, Vu, 0, NULL, NULL, NULL, NULL, 5, 3, 1, 1, 1.0f, NULL, NULL, 0, 0, cu,
                               NULL, 1);
        int ok = 1;
        for (int i = 0; i < 5; i++) ok &= fabs(cu[i] - want) < 1e-6;
        CHECK(ok, "underflowed weight, row unread (batched rows): %g", cu[4]);
    }
    /* zero weights skip their value rows in context */
    float wz[3] = {0, 1, 0}, Vz[6] = {NAN, INFINITY, 7, 8, INFINITY, NAN};
    attnx_context_f32(wz, Vz, 3, 2, c);
    CHECK(c[0] == 7 && c[1] == 8, "zero weights: rows unread");
    /* d = 0: uniform weights; dv = 0: nothing written */
    float cc[3] = {-1, -1, -1};
    attnx_attend_f32(q, K, V, 3, 0, 2, 1.0f, NULL, cc, w);
    CHECK(fabs(cc[0] - 3.0) < 1e-6 && fabs(w[0] - 1.0 / 3) < 1e-7, "d = 0: uniform (%g)", cc[0]);
    attnx_attend_f32(q, K, V, 3, 2, 0, 1.0f, NULL, cc, NULL);
    CHECK(cc[0] == 3.0f || fabs(cc[0] - 3.0) < 1e-6, "dv = 0 writes nothing");
}

/* Batched entry points against loops of single-query calls (the two-pass
 * pieces bit for bit; the fused rows within float rounding), and against
 * float64: broadcast operands (zero strides), a mask per B1 shared across
 * queries, causal, one and two threads. */
static void test_batch(void)
{
    const size_t B0 = 2, B1 = 3, Lq = 5, T = 37, d = 9, dv = 6;
    size_t shape[2] = {B0, B1};
    float *Q = frand(B0 * B1 * Lq * d, 1.0), *K = frand(B0 * T * d, 1.0), *V = frand(B1 * T * dv, 1.0);
    double *Qd = to_f64(Q, B0 * B1 * Lq * d), *Kd = to_f64(K, B0 * T * d), *Vd = to_f64(V, B1 * T * dv);
    unsigned char *mask = xmalloc(B1 * T);
    for (size_t i = 0; i < B1 * T; i++) mask[i] = (i % 5) != 1;
    ptrdiff_t qs[2] = {(ptrdiff_t)(B1 * Lq * d), (ptrdiff_t)(Lq * d)};
    ptrdiff_t ks[2] = {(ptrdiff_t)(T * d), 0};
    ptrdiff_t vs[2] = {0, (ptrdiff_t)(T * dv)};
    ptrdiff_t ms[2] = {0, (ptrdiff_t)T};
    size_t rows = B0 * B1 * Lq;
    float *ctx = FALLOC(rows * dv), *W = FALLOC(rows * T), *ctxf = FALLOC(rows * dv), *S = FALLOC(rows * T);
    float *c1 = FALLOC(dv), *w1 = FALLOC(T), *cc = FALLOC(rows * dv);
    double *c64 = DALLOC(rows * dv), *w64 = DALLOC(rows * T);
    const float scale = 0.3f;
    for (int causal = 0; causal < 2; causal++) {
        attnx_attend_batch(Qd, Kd, Vd, 2, shape, qs, ks, vs, Lq, T, d, dv, scale, mask, ms, 0, causal, c64,
                           w64, 1);
        for (int threads = 1; threads <= 2; threads++) {
            CHECK(attnx_attend_batch_f32(Q, K, V, 2, shape, qs, ks, vs, Lq, T, d, dv, scale, mask, ms, 0,
                                         causal, ctx, W, threads) == ATTNX_OK, "status");
            CHECK(attnx_attend_batch_f32(Q, K, V, 2, shape, qs, ks, vs, Lq, T, d, dv, scale, mask, ms, 0,
                                         causal, ctxf, NULL, threads) == ATTNX_OK, "status");
            int same = 1;
            double e_loop = 0.0, e64 = 0.0;
            for (size_t b0 = 0; b0 < B0; b0++)
                for (size_t b1 = 0; b1 < B1; b1++)
                    for (size_t i = 0; i < Lq; i++) {
                        size_t row = (b0 * B1 + b1) * Lq + i;
                        size_t lim = causal ? (i + 1 < T ? i + 1 : T) : T;
                        attnx_attend_f32(Q + row * d, K + b0 * T * d, V + b1 * T * dv, lim, d, dv, scale,
                                         mask + b1 * T, c1, w1);
                        same &= memcmp(ctx + row * dv, c1, dv * sizeof(float)) == 0;
                        same &= memcmp(W + row * T, w1, lim * sizeof(float)) == 0;
                        for (size_t t = lim; t < T; t++) same &= W[row * T + t] == 0.0f;
                        double mag = ctx_mag(w64 + row * T, Vd + b1 * T * dv, T, dv);
                        upd(&e_loop, ctx_err(ctxf + row * dv, c64 + row * dv, dv, mag));
                        upd(&e64, ctx_err(ctx + row * dv, c64 + row * dv, dv, mag));
                        for (size_t t = 0; t < T; t++) upd(&e64, rel_err(W[row * T + t], w64[row * T + t]) / 10);
                    }
            CHECK(same, "batch two-pass == single calls, causal=%d threads=%d", causal, threads);
            CHECK(e_loop < 2e-6 && e64 < 2e-6, "batch vs float64 causal=%d threads=%d: fused %.3g, two-pass %.3g",
                  causal, threads, e_loop, e64);
            upd(&g_err.rows_ctx, e_loop);
        }
    }
    /* dot_scores and context batches, softmax rows: the same kernels */
    CHECK(attnx_dot_scores_batch_f32(Q, K, 2, shape, qs, ks, Lq, T, d, scale, S, 2) == ATTNX_OK, "status");
    int ok = 1;
    for (size_t row = 0; row < rows; row++) {
        size_t b0 = row / (B1 * Lq);
        attnx_dot_scores_f32(Q + row * d, K + b0 * T * d, T, d, scale, w1);
        ok &= memcmp(S + row * T, w1, T * sizeof(float)) == 0;
    }
    CHECK(ok, "dot_scores_batch == dot_scores");
    CHECK(attnx_softmax_rows_f32(S, rows, T, S, 2) == ATTNX_OK, "status");
    CHECK(attnx_context_batch_f32(S, V, 2, shape,
                                  (ptrdiff_t[]){(ptrdiff_t)(B1 * Lq * T), (ptrdiff_t)(Lq * T)}, vs, Lq, T,
                                  dv, cc, 2) == ATTNX_OK, "status");
    ok = 1;
    for (size_t b0 = 0; b0 < B0; b0++)
        for (size_t b1 = 0; b1 < B1; b1++)
            for (size_t i = 0; i < Lq; i++) {
                size_t row = (b0 * B1 + b1) * Lq + i;
                attnx_attend_f32(Q + row * d, K + b0 * T * d, V + b1 * T * dv, T, d, dv, scale, NULL, c1, w1);
                ok &= memcmp(S + row * T, w1, T * sizeof(float)) == 0;
                ok &= memcmp(cc + row * dv, c1, dv * sizeof(float)) == 0;
            }
    CHECK(ok, "dot_scores_batch + softmax_rows + context_batch == attend (bit for bit)");
    /* log-softmax rows against the double reference, threads 1 and 2 */
    for (int threads = 1; threads <= 2; threads++) {
        float *x = frand(rows * T, 60.0), *y = FALLOC(rows * T);
        double *ref = DALLOC(T), worst = 0.0;
        attnx_log_softmax_rows_f32(x, rows, T, y, threads);
        for (size_t r = 0; r < rows; r++) {
            log_softmax_ref(x + r * T, T, ref);
            for (size_t t = 0; t < T; t++) upd(&worst, rel_err(y[r * T + t], ref[t]));
        }
        CHECK(worst <= 3 * U24, "log_softmax_rows threads=%d: %.3g", threads, worst);
        free(x); free(y); free(ref);
    }
    free(Q); free(K); free(V); free(Qd); free(Kd); free(Vd); free(mask); free(ctx); free(W);
    free(ctxf); free(S); free(c1); free(w1); free(cc); free(c64); free(w64);
}

/* One long query split across threads equals the serial fused pass. */
static void test_split(void)
{
    const size_t T = 50000, d = 8, dv = 5;
    float *q = frand(d, 3.0), *K = frand(T * d, 3.0), *V = frand(T * dv, 1.0);
    unsigned char *mask = xmalloc(T);
    for (size_t t = 0; t < T; t++) mask[t] = t < T / 2 ? 0 : 1;   /* first chunk all masked */
    float c1[5], c2[5];
    double r1[5], r2[5];
    for (int m = 0; m < 2; m++) {
        const unsigned char *mk = m ? mask : NULL;
        attnx_attend_f32(q, K, V, T, d, dv, 1.0f, mk, c1, NULL);
        attnx_attend_batch_f32(q, K, V, 0, NULL, NULL, NULL, NULL, 1, T, d, dv, 1.0f, mk, NULL, 0, 0, c2, NULL, 4);
        for (size_t j = 0; j < dv; j++) {
            r1[j] = c1[j];
            r2[j] = c2[j];
        }
        CHECK(ctx_err(c1, r2, dv, 1.0) < 1e-5, "split == serial (mask %d): %.3g", m, ctx_err(c1, r2, dv, 1.0));
        CHECK(ctx_err(c2, r1, dv, 1.0) < 1e-5, "serial == split (mask %d)", m);
    }
    free(q); free(K); free(V); free(mask);
}

/* Does query i attend key t? mask rows have stride ms (0: shared). */
static int attends(const unsigned char *mask, ptrdiff_t ms, int causal, size_t i, size_t t)
{
    if (causal && t > i) return 0;
    return !mask || mask[(ptrdiff_t)i * ms + (ptrdiff_t)t];
}

/* Fused batched attention (attend_rows) against float64 single-query calls:
 * causal, shared and per-row masks, fully masked rows, d and dv beyond one
 * register tile, and NaN/inf in the rows no query attends (never read). */
static void test_rows_vs_f64(void)
{
    static const size_t cases[][4] = {/* Lq, T, d, dv */
        {5, 37, 9, 6}, {67, 45, 3, 5}, {70, 100, 130, 67}, {9, 300, 64, 64}, {33, 17, 64, 129},
        {130, 129, 16, 16}, {4, 1, 1, 1}, {8, 8, 8, 8}, {17, 33, 17, 33}, {65, 65, 2, 1},
        {6, 20, 260, 3}, {3, 3000, 8, 8}, {2, 40, 5, 3}, {40, 70, 32, 32}, {16, 64, 31, 15}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        size_t Lq = cases[ci][0], T = cases[ci][1], d = cases[ci][2], dv = cases[ci][3];
        float *Q = frand(Lq * d, 1.0), *K = frand(T * d, 1.0), *V = frand(T * dv, 1.0);
        float *Kp = FALLOC(T * d), *Vp = FALLOC(T * dv), *ctx = FALLOC(Lq * dv);
        double *Qd = to_f64(Q, Lq * d), *Kd = DALLOC(T * d), *Vd = DALLOC(T * dv);
        double *ref = DALLOC(Lq * dv), *wr = DALLOC(T);
        double *mags = DALLOC(Lq);
        unsigned char *mask = xmalloc(Lq * T);
        const float scale = (float)(4.0 / sqrt((double)d));
        for (int mode = 0; mode < 4; mode++) {
            for (int causal = 0; causal < 2; causal++) {
                ptrdiff_t ms = mode == 1 ? 0 : (ptrdiff_t)T;
                for (size_t i = 0; i < Lq; i++)
                    for (size_t t = 0; t < T; t++) {
                        unsigned char v = 1;
                        if (mode == 1) v = (t * 7) % 5 != 2 && !(t >= 16 && t < 48);
                        if (mode == 2) v = urand() > -0.4;
                        if (mode == 3) v = i % 3 != 1 && (t + i) % 4 != 0;
                        mask[i * T + t] = v;
                    }
                const unsigned char *mk = mode == 0 ? NULL : mask;
                memcpy(Kp, K, T * d * sizeof(float));
                memcpy(Vp, V, T * dv * sizeof(float));
                for (size_t t = 0; t < T; t++) {
                    int used = 0;
                    for (size_t i = 0; i < Lq && !used; i++) used = attends(mk, ms, causal, i, t);
                    if (!used) {
                        for (size_t j = 0; j < d; j++) Kp[t * d + j] = NAN;
                        for (size_t j = 0; j < dv; j++) Vp[t * dv + j] = j % 2 ? INFINITY : NAN;
                    }
                }
                for (size_t j = 0; j < T * d; j++) Kd[j] = Kp[j];
                for (size_t j = 0; j < T * dv; j++) Vd[j] = Vp[j];
                for (size_t i = 0; i < Lq; i++) {
                    size_t lim = causal && i + 1 < T ? i + 1 : T;
                    attnx_attend(Qd + i * d, Kd, Vd, lim, d, dv, scale, mk ? mk + (ptrdiff_t)i * ms : NULL,
                                 ref + i * dv, wr);
                    mags[i] = ctx_mag(wr, Vd, lim, dv);
                }
                for (int threads = 1; threads <= 2; threads++) {
                    for (size_t j = 0; j < Lq * dv; j++) ctx[j] = -1.0f;
                    int rc = attnx_attend_batch_f32(Q, Kp, Vp, 0, NULL, NULL, NULL, NULL, Lq, T, d, dv, scale,
                                                    mk, NULL, ms, causal, ctx, NULL, threads);
                    double worst = 0.0;
                    for (size_t i = 0; i < Lq; i++) upd(&worst, ctx_err(ctx + i * dv, ref + i * dv, dv, mags[i]));
                    upd(&g_err.rows_ctx, worst);
                    CHECK(rc == ATTNX_OK && worst < 2e-5, "rows Lq=%zu T=%zu d=%zu dv=%zu mode=%d causal=%d threads=%d: %.3g",
                          Lq, T, d, dv, mode, causal, threads, worst);
                }
            }
        }
        free(Q); free(K); free(V); free(Kp); free(Vp); free(ctx); free(Qd); free(Kd); free(Vd);
        free(ref); free(wr); free(mags); free(mask);
    }
}

/* Fused single-query attention with K and V at every float offset within a
 * cache line, masked rows full of NaN/inf, against float64. */
static void test_alignment(void)
{
    static const size_t Ts[] = {1, 7, 16, 17, 33, 100};
    static const size_t ds[][2] = {{16, 16}, {32, 64}, {64, 64}, {48, 16}, {8, 24}, {4, 12}, {12, 4}};
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++)
        for (size_t di = 0; di < sizeof ds / sizeof ds[0]; di++)
            for (size_t off = 0; off < 16; off += 5) {
                size_t T = Ts[ti], d = ds[di][0], dv = ds[di][1];
                size_t ok = off, ov = (off * 7 + 3) % 16;
                float *kb = frand(T * d + 32, 1.0), *vb = frand(T * dv + 32, 1.0);
                float *q = frand(d, 2.0), *K = kb + ok, *V = vb + ov;
                unsigned char *mask = xmalloc(T);
                for (size_t t = 0; t < T; t++) {
                    mask[t] = (t * 3 + off) % 5 != 0 || T == 1;
                    if (!mask[t]) {
                        for (size_t j = 0; j < d; j++) K[t * d + j] = NAN;
                        for (size_t j = 0; j < dv; j++) V[t * dv + j] = INFINITY;
                    }
                }
                double *qd = to_f64(q, d), *Kd = to_f64(K, T * d), *Vd = to_f64(V, T * dv);
                double c64[64], w64[100];
                float c[64];
                attnx_attend(qd, Kd, Vd, T, d, dv, 0.5, mask, c64, w64);
                attnx_attend_f32(q, K, V, T, d, dv, 0.5f, mask, c, NULL);
                double e = ctx_err(c, c64, dv, ctx_mag(w64, Vd, T, dv));
                CHECK(e < 2e-6, "alignment T=%zu d=%zu dv=%zu off K %zu V %zu: %.3g", T, d, dv, ok, ov, e);
                free(kb); free(vb); free(q); free(mask); free(qd); free(Kd); free(Vd);
            }
}

/* Extreme scores through every path (fused single query, two-pass, batched
 * rows): +-inf and NaN scores, value sums that overflow float, exp
 * underflow of whole blocks, scores near FLT_MAX. Each level against the
 * scalar level's float32 kernels: the same NaN/inf pattern, close values. */
/* ctx_err relative to the larger of 1 and the reference's largest finite
 * magnitude (values near FLT_MAX compare relatively). */
static double ctx_err_big(const float *c, const double *ref, size_t dv)
{
    double mag = 1.0;
    for (size_t j = 0; j < dv; j++)
        if (isfinite(ref[j]) && fabs(ref[j]) > mag) mag = fabs(ref[j]);
    return ctx_err(c, ref, dv, mag);
}

static void test_extremes_vs_scalar(void)
{
    const size_t Lq = 9, T = 41, d = 5, dv = 11;
    const char *lv = attnx_simd_level();
    float *Q = frand(Lq * d, 1.0), *K = frand(T * d, 1.0), *V = frand(T * dv, 1.0);
    float *ctx = FALLOC(Lq * dv), *ref = FALLOC(Lq * dv), *w = FALLOC(T), *w0 = FALLOC(T);
    double *refd = DALLOC(Lq * dv), *w0d = DALLOC(T);
    for (int kind = 0; kind < 6; kind++) {
        float *Kx = FALLOC(T * d), *Vx = FALLOC(T * dv);
        memcpy(Kx, K, T * d * sizeof(float));
        memcpy(Vx, V, T * dv * sizeof(float));
        float scale = 1.0f;
        if (kind == 0) Kx[20 * d] = INFINITY;                                  /* +-inf scores */
        if (kind == 1) Kx[3 * d + 1] = NAN;                                    /* a NaN score */
        if (kind == 2) for (size_t j = 0; j < T * dv; j++) Vx[j] = 3e38f;      /* acc overflows */
        if (kind == 3) scale = 1e5f;                                           /* spread >> 104 */
        if (kind == 4) scale = 1e37f;                                          /* scores near FLT_MAX */
        if (kind == 5) for (size_t t = 0; t < T; t += 2) Kx[t * d] = -INFINITY; /* -inf/+inf mix */
        attnx_set_simd_level("scalar");
        for (size_t i = 0; i < Lq; i++)
            attnx_attend_f32(Q + i * d, Kx, Vx, T, d, dv, scale, NULL, ref + i * dv, NULL);
        float c1[11], c2[11];
        attnx_attend_f32(Q, Kx, Vx, T, d, dv, scale, NULL, c2, w0);
        attnx_set_simd_level(lv);
        for (size_t j = 0; j < Lq * dv; j++) refd[j] = ref[j];
        for (size_t t = 0; t < T; t++) w0d[t] = w0[t];
        double c2d[11];
        for (size_t j = 0; j < dv; j++) c2d[j] = c2[j];
        attnx_attend_f32(Q, Kx, Vx, T, d, dv, scale, NULL, c1, w);
        double ew = 0.0;
        for (size_t t = 0; t < T; t++) upd(&ew, rel_err(w[t], w0d[t]) * (w0d[t] > 1e-30 || w0d[t] != w0d[t]));
        CHECK(ctx_err_big(c1, c2d, dv) < 1e-4 && ew < 1e-4, "two-pass extremes kind=%d: %.3g %.3g", kind,
              ctx_err_big(c1, c2d, dv), ew);
        for (size_t i = 0; i < Lq; i++) {
            attnx_attend_f32(Q + i * d, Kx, Vx, T, d, dv, scale, NULL, c1, NULL);
            double e = ctx_err_big(c1, refd + i * dv, dv);
            CHECK(e < 1e-4, "fused extremes kind=%d row %zu: %.3g (%g vs %g)", kind, i, e, c1[0], refd[i * dv]);
        }
        attnx_attend_batch_f32(Q, Kx, Vx, 0, NULL, NULL, NULL, NULL, Lq, T, d, dv, scale, NULL, NULL, 0, 0, ctx,
                               NULL, 1);
        double e = 0.0;
        for (size_t i = 0; i < Lq; i++) upd(&e, ctx_err_big(ctx + i * dv, refd + i * dv, dv));
        CHECK(e < 1e-4, "rows extremes kind=%d: %.3g", kind, e);
        free(Kx);
        free(Vx);
    }
    free(Q); free(K); free(V); free(ctx); free(ref); free(w); free(w0); free(refd); free(w0d);
}

/* The figures stated in attnx_internal_f32.h, with a margin of 1.2 to 4:
 * the per-case assertions are the design's worst-case bounds, which at a
 * few thousand terms would let an accuracy regression through (a float32
 * softmax sum, say); these would not. */
static void check_error_budget(void)
{
    CHECK(g_err.exp_ulp <= 0.7 && g_err.exp_sub_ulp <= 0.85, "exp %.3f / %.3f ulp", g_err.exp_ulp, g_err.exp_sub_ulp);
    CHECK(g_err.dot <= 4e-7, "dot %.3g", g_err.dot);
    CHECK(g_err.softmax <= 2.4e-7 && g_err.log_softmax <= 1.2e-7, "softmax %.3g, log_softmax %.3g", g_err.softmax,
          g_err.log_softmax);
    CHECK(g_err.context <= 1.2e-6, "context %.3g", g_err.context);
    CHECK(g_err.attend_w <= 2.5e-6 && g_err.attend_ctx <= 6e-7 && g_err.fused_ctx <= 6e-7, "attend %.3g %.3g %.3g",
          g_err.attend_w, g_err.attend_ctx, g_err.fused_ctx);
    CHECK(g_err.rows_ctx <= 3e-6, "batched rows %.3g", g_err.rows_ctx);
}

static void print_errors(void)
{
    printf("level %-7s max errors vs float64 (random inputs in [-1, 1), T, d <= 4096):\n", g_level);
    printf("  exp %.3f ulp (subnormal results: %.3f); dot %.2e (x scale*sum|q k|); softmax %.2e rel (spread 100-1000); "
           "log_softmax %.2e rel\n", g_err.exp_ulp, g_err.exp_sub_ulp, g_err.dot, g_err.softmax, g_err.log_softmax);
    printf("  context %.2e (x sum w|V|); attend weights %.2e rel; attend ctx %.2e, fused %.2e, "
           "batched rows %.2e (x max_j sum w|V|)\n", g_err.context, g_err.attend_w, g_err.attend_ctx,
           g_err.fused_ctx, g_err.rows_ctx);
}

/* each level: float32 follows the float64 level, error records start anew */
static void start_level(void)
{
    CHECK(strcmp(attnx_kernels_f32_get()->name, g_level) == 0, "float32 level %s follows float64 %s",
          attnx_kernels_f32_get()->name, g_level);
    memset(&g_err, 0, sizeof g_err);
}

HARNESS_MAIN("float32", (test_status_codes),
             (start_level, test_worked_example, test_exp, test_against_f64, test_softmax_specials,
              test_attend_specials, test_batch, test_split, test_rows_vs_f64, test_alignment,
              test_extremes_vs_scalar, print_errors, check_error_budget))
