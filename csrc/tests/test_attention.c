/*
 * C tests of attnx_attention (the struct entry point: logsumexp, position
 * offsets, the size field) and attnx_merge_attention, float64 and float32:
 * against attnx_attend and a long double reference, merging chunks into the
 * whole, split-K bits at any thread count, and the status codes. Runs every
 * level this CPU has, or the one ATTNX_SIMD pins. Closes with
 * "N passed, N failed"; the exit status is nonzero on failure.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnx.h"
#define HARNESS_SEED 0x9E3779B97F4A7C15ull
#include "tests/harness.h"

static double *rand_array(size_t n)
{
    double *a = malloc((n ? n : 1) * sizeof(double));
    for (size_t i = 0; i < n; i++) a[i] = urand();
    return a;
}

static attnx_attention_params params(const double *q, const double *K, const double *V, size_t Lq,
                                     size_t T, size_t d, size_t dv, double *out, double *lse)
{
    attnx_attention_params p;
    memset(&p, 0, sizeof p);
    p.size = sizeof p;
    p.query = q;
    p.keys = K;
    p.values = V;
    p.Lq = Lq;
    p.T = T;
    p.d = d;
    p.dv = dv;
    p.scale = 0.5;
    p.out = out;
    p.lse = lse;
    return p;
}

/* logsumexp of 0.5 q.K[t] over the keys a row sees, in long double */
static long double ref_lse(const double *q, const double *K, size_t T, size_t d, size_t lim)
{
    long double m = -INFINITY, s = 0;
    for (size_t t = 0; t < lim; t++) {
        long double x = 0;
        for (size_t j = 0; j < d; j++) x += (long double)q[j] * K[t * d + j];
        x *= 0.5L;
        if (x > m) {
            s = s * expl(m - x) + 1;
            m = x;
        } else {
            s += expl(x - m);
        }
    }
    (void)T;
    return lim ? m + logl(s) : -INFINITY;
}

/* Rows with offsets against attnx_attend over the keys each row sees. */
static void test_offsets_and_lse(void)
{
    const size_t Lq = 6, T = 20, d = 5, dv = 3;
    double *Q = rand_array(Lq * d), *K = rand_array(T * d), *V = rand_array(T * dv);
    double out[6 * 3], lse[6], want[3];
    const ptrdiff_t offs[][2] = {{0, 0}, {0, 4}, {10, 0}, {-2, 1}, {14, 0}};
    for (size_t k = 0; k < sizeof offs / sizeof offs[0]; k++) {
        attnx_attention_params p = params(Q, K, V, Lq, T, d, dv, out, lse);
        p.causal = 1;
        p.query_offset = offs[k][0];
        p.key_offset = offs[k][1];
        CHECK(attnx_attention(&p) == ATTNX_OK, "status");
        for (size_t i = 0; i < Lq; i++) {
            ptrdiff_t lim = (ptrdiff_t)i + 1 + offs[k][0] - offs[k][1];
            size_t n = lim <= 0 ? 0 : (size_t)lim < T ? (size_t)lim : T;
            if (n == 0) {
                CHECK(out[i * dv] == 0 && out[i * dv + dv - 1] == 0 && isinf(lse[i]) && lse[i] < 0,
                      "row %zu sees no key: zeros and -inf", i);
                continue;
            }
            attnx_attend(Q + i * d, K, V, n, d, dv, 0.5, NULL, want, NULL);
            for (size_t j = 0; j < dv; j++)
                CHECK(fabs(out[i * dv + j] - want[j]) <= 1e-14 * (1 + fabs(want[j])),
                      "offsets (%td, %td) row %zu: %.17g vs %.17g", offs[k][0], offs[k][1], i,
                      out[i * dv + j], want[j]);
            long double r = ref_lse(Q + i * d, K, T, d, n);
            CHECK(fabsl(lse[i] - r) <= 4e-16L * (1 + fabsl(r)), "lse row %zu: %.17g vs %.17Lg", i,
                  lse[i], r);
        }
    }
    free(Q);
    free(K);
    free(V);
}

/* Split keys into chunks, attend each with its key_offset, merge: the whole. */
static void test_merge_chunks(void)
{
    const size_t Lq = 5, T = 37, d = 4, dv = 6;
    const size_t cuts[] = {0, 9, 10, 30, 37};
    const size_t P = sizeof cuts / sizeof cuts[0] - 1;
    double *Q = rand_array(Lq * d), *K = rand_array(T * d), *V = rand_array(T * dv);
    double whole[5 * 6], whole_lse[5], outs[4 * 5 * 6], lses[4 * 5], got[5 * 6], got_lse[5];
    float Qf[5 * 4], Kf[37 * 4], Vf[37 * 6], outsf[4 * 5 * 6], lsesf[4 * 5], gotf[5 * 6], gotf_lse[5];
    for (size_t i = 0; i < Lq * d; i++) Qf[i] = (float)Q[i];
    for (size_t i = 0; i < T * d; i++) Kf[i] = (float)K[i];
    for (size_t i = 0; i < T * dv; i++) Vf[i] = (float)V[i];
    attnx_attention_params p = params(Q, K, V, Lq, T, d, dv, whole, whole_lse);
    p.causal = 1;
    p.query_offset = 3;
    CHECK(attnx_attention(&p) == ATTNX_OK, "whole");
    for (size_t c = 0; c < P; c++) {
        attnx_attention_params pc = params(Q, K + cuts[c] * d, V + cuts[c] * dv, Lq,
                                           cuts[c + 1] - cuts[c], d, dv, outs + c * Lq * dv,
                                           lses + c * Lq);
        pc.causal = 1;
        pc.query_offset = 3;
        pc.key_offset = (ptrdiff_t)cuts[c];
        CHECK(attnx_attention(&pc) == ATTNX_OK, "chunk %zu", c);
        pc.query = Qf;
        pc.keys = Kf + cuts[c] * d;
        pc.values = Vf + cuts[c] * dv;
        pc.out = outsf + c * Lq * dv;
        pc.lse = lsesf + c * Lq;
        CHECK(attnx_attention_f32(&pc) == ATTNX_OK, "chunk %zu (f32)", c);
    }
    CHECK(attnx_merge_attention(P, Lq, dv, outs, lses, got, got_lse) == ATTNX_OK, "merge");
    CHECK(attnx_merge_attention_f32(P, Lq, dv, outsf, lsesf, gotf, gotf_lse) == ATTNX_OK, "merge f32");
    for (size_t i = 0; i < Lq * dv; i++) {
        CHECK(fabs(got[i] - whole[i]) <= 1e-14 * (1 + fabs(whole[i])), "merged %zu: %.17g vs %.17g", i,
              got[i], whole[i]);
        CHECK(fabs(gotf[i] - whole[i]) <= 1e-5 * (1 + fabs(whole[i])), "merged f32 %zu: %.9g vs %.9g", i,
              (double)gotf[i], whole[i]);
    }
    for (size_t i = 0; i < Lq; i++)
        CHECK(fabs(got_lse[i] - whole_lse[i]) <= 1e-14 * (1 + fabs(whole_lse[i])), "lse %zu", i);
    free(Q);
    free(K);
    free(V);
}

/* Few rows over many keys: split-K, the same bits at every thread count. */
static void test_split_bits(void)
{
    const size_t T = 20000, d = 8, dv = 4;
    double *q = rand_array(2 * d), *K = rand_array(T * d), *V = rand_array(T * dv);
    double ref[2 * 4], out[2 * 4], lse_ref[2], lse[2];
    const int nts[] = {1, 2, 3, 8};
    for (size_t k = 0; k < 4; k++) {
        attnx_attention_params p = params(q, K, V, 2, T, d, dv, k ? out : ref, k ? lse : lse_ref);
        p.num_threads = nts[k];
        CHECK(attnx_attention(&p) == ATTNX_OK, "split, %d threads", nts[k]);
        if (k) {
            CHECK(memcmp(out, ref, sizeof out) == 0, "split ctx bits, %d threads", nts[k]);
            CHECK(memcmp(lse, lse_ref, sizeof lse) == 0, "split lse bits, %d threads", nts[k]);
        }
    }
    double single[4];
    attnx_attend(q, K, V, T, d, dv, 0.5, NULL, single, NULL);
    for (size_t j = 0; j < dv; j++)
        CHECK(fabs(single[j] - ref[j]) <= 1e-13 * (1 + fabs(single[j])), "split vs unsplit %zu", j);
    free(q);
    free(K);
    free(V);
}

static void test_status_codes(void)
{
    double q[2] = {1, 2}, K[6] = {1, 2, 3, 4, 5, 6}, out[2], lse[1];
    attnx_attention_params p = params(q, K, K, 1, 3, 2, 2, out, lse);
    CHECK(attnx_attention(NULL) == ATTNX_ERR_NULL, "NULL params");
    p.size = offsetof(attnx_attention_params, num_threads);
    CHECK(attnx_attention(&p) == ATTNX_ERR_ARG, "size too small");
    p.size = sizeof p;
    p.causal = 2;
    CHECK(attnx_attention(&p) == ATTNX_ERR_ARG, "causal 2");
    p.causal = 1;
    p.query_offset = PTRDIFF_MAX;
    p.key_offset = -1;
    CHECK(attnx_attention(&p) == ATTNX_ERR_OVERFLOW, "offset difference overflows");
    p.query_offset = p.key_offset = 0;
    p.lse = K;
    CHECK(attnx_attention(&p) == ATTNX_ERR_OVERLAP, "lse on the keys");
    p.lse = out + 1;
    CHECK(attnx_attention(&p) == ATTNX_ERR_OVERLAP, "lse on out");
    p.lse = lse;
    p.T = 0;
    CHECK(attnx_attention(&p) == ATTNX_ERR_EMPTY, "T == 0");
    p.T = 3;
    p.out = NULL;
    CHECK(attnx_attention(&p) == ATTNX_ERR_NULL, "NULL out");
    /* a bigger struct from a newer caller: its extra bytes are ignored */
    struct { attnx_attention_params p; double future[4]; } big;
    memset(&big, 0, sizeof big);
    big.p = params(q, K, K, 1, 3, 2, 2, out, lse);
    big.p.size = sizeof big;
    CHECK(attnx_attention(&big.p) == ATTNX_OK, "a larger size");

    double outs[4] = {1, 2, 3, 4}, lses[2] = {0, 0}, m[2], ml[1];
    CHECK(attnx_merge_attention(0, 1, 2, outs, lses, m, ml) == ATTNX_ERR_EMPTY, "P == 0");
    CHECK(attnx_merge_attention(2, 1, 2, NULL, lses, m, ml) == ATTNX_ERR_NULL, "NULL outs");
    CHECK(attnx_merge_attention(2, 1, 2, outs, lses, outs + 1, ml) == ATTNX_ERR_OVERLAP, "out on outs");
    CHECK(attnx_merge_attention(2, 1, 2, outs, lses, m, m + 1) == ATTNX_ERR_OVERLAP, "lse on out");
    CHECK(attnx_merge_attention(2, SIZE_MAX / 2, 4, outs, lses, m, ml) == ATTNX_ERR_OVERFLOW, "overflow");
    CHECK(attnx_merge_attention(2, 1, 2, outs, lses, m, ml) == ATTNX_OK && m[0] == 2 && m[1] == 3 &&
              fabs(ml[0] - log(2.0)) < 1e-15,
          "two equal partials: the mean, lse + log 2");
    lses[0] = -INFINITY;
    outs[0] = NAN;
    CHECK(attnx_merge_attention(2, 1, 2, outs, lses, m, ml) == ATTNX_OK && m[0] == 3 && m[1] == 4 &&
              ml[0] == 0,
          "a -inf partial is not read");
    lses[1] = NAN;
    CHECK(attnx_merge_attention(2, 1, 2, outs, lses, m, ml) == ATTNX_OK && isnan(m[0]) && isnan(ml[0]),
          "a NaN lse: a NaN row");
}

HARNESS_MAIN("attention/merge", (test_status_codes),
             (test_offsets_and_lse, test_merge_chunks, test_split_bits))
