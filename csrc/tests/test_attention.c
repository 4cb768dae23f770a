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

/* out[0] of one query (1, 2) over the keys (1,2), (3,4), (5,6) as values, scale 0.5 */
static double attnx_attend_ref_first(const double *q, const double *K)
{
    double s[3], m = -INFINITY, l = 0, o = 0;
    for (int t = 0; t < 3; t++) {
        s[t] = 0.5 * (q[0] * K[2 * t] + q[1] * K[2 * t + 1]);
        if (s[t] > m) m = s[t];
    }
    for (int t = 0; t < 3; t++) {
        l += exp(s[t] - m);
        o += exp(s[t] - m) * K[2 * t];
    }
    return o / l;
}

static void test_status_codes(void)
{
    double q[2] = {1, 2}, K[6] = {1, 2, 3, 4, 5, 6}, out[2], lse[1];
    attnx_attention_params p = params(q, K, K, 1, 3, 2, 2, out, lse);
    CHECK(attnx_attention(NULL) == ATTNX_ERR_NULL, "NULL params");
    p.size = offsetof(attnx_attention_params, num_threads);
    CHECK(attnx_attention(&p) == ATTNX_ERR_ARG, "size too small");
    p.size = ATTNX_ATTENTION_PARAMS_V1_SIZE;   /* a version-3 caller: no window, no bias */
    p.window_left = 0;                          /* (beyond its size: not read) */
    p.window = 1;
    CHECK(attnx_attention(&p) == ATTNX_OK && fabs(out[0] - attnx_attend_ref_first(q, K)) < 1e-15, "version-3 size");
    p.window = 0;
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
    big.future[2] = 1.0;   /* a field this library cannot honour */
    CHECK(attnx_attention(&big.p) == ATTNX_ERR_ARG, "a larger size with a field set");
    {
        attnx_attention_params v = params(q, K, K, 1, 3, 2, 2, out, lse);
        long long kl = 4;
        double bias[3] = {0, 0, 0};
        v.window = 2;
        CHECK(attnx_attention(&v) == ATTNX_ERR_ARG, "window not 0 or 1");
        v.window = 0;
        v.softcap = -1;
        CHECK(attnx_attention(&v) == ATTNX_ERR_ARG, "softcap < 0");
        v.softcap = NAN;
        CHECK(attnx_attention(&v) == ATTNX_ERR_ARG, "softcap NaN");
        v.softcap = 0;
        v.key_lengths = &kl;
        CHECK(attnx_attention(&v) == ATTNX_ERR_ARG, "key length above T");
        kl = -1;
        CHECK(attnx_attention(&v) == ATTNX_ERR_ARG, "key length below 0");
        v.key_lengths = NULL;
        v.bias = bias;
        v.bias_col_stride = 2;
        CHECK(attnx_attention(&v) == ATTNX_ERR_ARG, "bias_col_stride 2");
        v.bias_col_stride = 1;
        v.lower_right = 2;
        CHECK(attnx_attention(&v) == ATTNX_ERR_ARG, "lower_right 2");
        v.lower_right = 0;
        v.bias = out;
        CHECK(attnx_attention(&v) == ATTNX_ERR_OVERLAP, "out on bias");
        v.bias = bias;
        CHECK(attnx_attention(&v) == ATTNX_OK, "valid");
    }

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

/* ---- issue 13: what shapes the scores, against a long double reference */

typedef struct {
    size_t B, Lq, T, d, dv;
    int causal, lower_right, window, bias_mode, alibi, klen, mask;
    ptrdiff_t wl, wr, qoff, koff;
    double softcap;
} feat_case;

/* The reference of batch item b, row i: out (dv) and lse, every rule of
 * attnx_api.def spelled out naively. */
static long double feat_ref(const feat_case *c, const double *Q, const double *K, const double *V,
                            const double *bias, const double *slopes, const long long *kl,
                            const unsigned char *mask, size_t b, size_t i, long double *out)
{
    const size_t T = c->T, d = c->d, dv = c->dv;
    const size_t Tb = c->klen ? (size_t)kl[b] : T;
    const ptrdiff_t pos = (ptrdiff_t)i + c->qoff - c->koff + (c->lower_right ? (ptrdiff_t)Tb - (ptrdiff_t)c->Lq : 0);
    static long double s[9000];
    static int seen[9000];
    long double m = -INFINITY;
    for (size_t t = 0; t < T; t++) {
        seen[t] = t < Tb && (!c->mask || mask[(b * c->Lq + i) * T + t]) && (!c->causal || (ptrdiff_t)t <= pos) &&
                  (!c->window || c->wl < 0 || (ptrdiff_t)t >= pos - c->wl) &&
                  (!c->window || c->wr < 0 || (ptrdiff_t)t <= pos + c->wr);
        if (!seen[t]) continue;
        long double x = 0;
        for (size_t j = 0; j < d; j++) x += (long double)Q[(b * c->Lq + i) * d + j] * K[(b * T + t) * d + j];
        x *= 0.5L;
        if (c->softcap > 0) x = c->softcap * tanhl(x / c->softcap);
        if (c->bias_mode == 1) x += bias[(b * c->Lq + i) * T + t];   /* full */
        if (c->bias_mode == 2) x += bias[t];                         /* (1, 1, T): rows broadcast */
        if (c->bias_mode == 3) x += bias[b * c->Lq + i];              /* (B, Lq, 1): keys broadcast */
        if (c->alibi) x -= slopes[b] * fabsl((long double)(pos - (ptrdiff_t)t));
        s[t] = x;
        if (x > m) m = x;
    }
    long double l = 0;
    for (size_t j = 0; j < dv; j++) out[j] = 0;
    if (m == -INFINITY) return -INFINITY;
    for (size_t t = 0; t < T; t++) {
        if (!seen[t]) continue;
        long double p = expl(s[t] - m);
        l += p;
        for (size_t j = 0; j < dv; j++) out[j] += p * V[(b * T + t) * dv + j];
    }
    for (size_t j = 0; j < dv; j++) out[j] /= l;
    return m + logl(l);
}

/* One case through the fused path, the two-pass path (weights wanted) and
 * float32, every row against feat_ref. */
static void feat_run(const feat_case *c)
{
    const size_t B = c->B, Lq = c->Lq, T = c->T, d = c->d, dv = c->dv;
    double *Q = rand_array(B * Lq * d), *K = rand_array(B * T * d), *V = rand_array(B * T * dv);
    double *bias = rand_array(B * Lq * T), slopes[4];
    long long kl[4];
    unsigned char *mask = malloc(B * Lq * T);
    double *out = malloc(B * Lq * dv * sizeof(double)), *lse = malloc(B * Lq * sizeof(double));
    double *w = malloc(B * Lq * T * sizeof(double));
    float *Qf = malloc(B * Lq * d * sizeof(float)), *Kf = malloc(B * T * d * sizeof(float));
    float *Vf = malloc(B * T * dv * sizeof(float)), *biasf = malloc(B * Lq * T * sizeof(float));
    float *outf = malloc(B * Lq * dv * sizeof(float)), *lsef = malloc(B * Lq * sizeof(float)), slopesf[4];
    for (size_t i = 0; i < B * Lq * T; i++) {
        bias[i] *= 2;
        mask[i] = urand() > -0.6;
    }
    for (size_t b = 0; b < B; b++) {
        slopes[b] = 0.05 * (double)(b + 1);
        kl[b] = (long long)(T - (T / 3) * b % T);
    }
    /* float32 operands: the float64 ones rounded, and the reference on those */
    for (size_t i = 0; i < B * Lq * d; i++) Q[i] = Qf[i] = (float)Q[i];
    for (size_t i = 0; i < B * T * d; i++) K[i] = Kf[i] = (float)K[i];
    for (size_t i = 0; i < B * T * dv; i++) V[i] = Vf[i] = (float)V[i];
    for (size_t i = 0; i < B * Lq * T; i++) bias[i] = biasf[i] = (float)bias[i];
    for (size_t b = 0; b < B; b++) slopes[b] = slopesf[b] = (float)slopes[b];
    const size_t bshape[1] = {B};
    const ptrdiff_t qs[1] = {(ptrdiff_t)(Lq * d)}, ks[1] = {(ptrdiff_t)(T * d)}, vs[1] = {(ptrdiff_t)(T * dv)};
    const ptrdiff_t bs_full[1] = {(ptrdiff_t)(Lq * T)}, bs_zero[1] = {0}, bs_rows[1] = {(ptrdiff_t)Lq};
    const ptrdiff_t ms[1] = {(ptrdiff_t)(Lq * T)}, one[1] = {1};
    attnx_attention_params p = params(Q, K, V, Lq, T, d, dv, out, lse);
    p.nbatch = 1;
    p.batch_shape = bshape;
    p.query_strides = qs;
    p.key_strides = ks;
    p.value_strides = vs;
    p.causal = c->causal;
    p.lower_right = c->lower_right;
    p.window = c->window;
    p.window_left = c->wl;
    p.window_right = c->wr;
    p.query_offset = c->qoff;
    p.key_offset = c->koff;
    p.softcap = c->softcap;
    if (c->mask) {
        p.mask = mask;
        p.mask_strides = ms;
        p.mask_row_stride = (ptrdiff_t)T;
    }
    if (c->bias_mode) {
        p.bias = bias;
        p.bias_strides = c->bias_mode == 1 ? bs_full : c->bias_mode == 2 ? bs_zero : bs_rows;
        p.bias_row_stride = c->bias_mode == 1 ? (ptrdiff_t)T : c->bias_mode == 2 ? 0 : 1;
        p.bias_col_stride = c->bias_mode == 3 ? 0 : 1;
    }
    if (c->alibi) {
        p.alibi_slopes = slopes;
        p.alibi_strides = one;
    }
    if (c->klen) {
        p.key_lengths = kl;
        p.key_lengths_strides = one;
    }
    long double ref[64];
    for (int pass = 0; pass < 3; pass++) {   /* fused, with weights (two-pass), float32 */
        const int f32 = pass == 2;
        attnx_attention_params pp = p;
        pp.weights = pass == 1 ? w : NULL;
        if (f32) {
            pp.query = Qf, pp.keys = Kf, pp.values = Vf, pp.out = outf, pp.lse = lsef;
            if (c->bias_mode) pp.bias = biasf;
            if (c->alibi) pp.alibi_slopes = slopesf;
        }
        int rc = f32 ? attnx_attention_f32(&pp) : attnx_attention(&pp);
        CHECK(rc == ATTNX_OK, "features case status %d", rc);
        if (rc != ATTNX_OK) break;
        const long double tol = f32 ? 2e-5L : 1e-13L;
        int bad = 0;
        for (size_t b = 0; b < B && !bad; b++)
            for (size_t i = 0; i < Lq && !bad; i++) {
                long double rl = feat_ref(c, Q, K, V, bias, slopes, kl, mask, b, i, ref);
                size_t row = b * Lq + i;
                long double gl = f32 ? (long double)lsef[row] : (long double)lse[row];
                if (rl == -INFINITY) bad |= !(isinf((double)gl) && gl < 0);
                else bad |= !(fabsl(gl - rl) <= tol * (1 + fabsl(rl)));
                for (size_t j = 0; j < dv; j++) {
                    long double g = f32 ? (long double)outf[row * dv + j] : (long double)out[row * dv + j];
                    bad |= !(fabsl(g - ref[j]) <= tol * (1 + fabsl(ref[j])));
                }
                if (bad)
                    CHECK(0, "features (B%zu Lq%zu T%zu causal %d lr %d win %d(%td,%td) bias %d alibi %d klen %d "
                             "mask %d cap %g off %td/%td) pass %d: row (%zu, %zu) lse %.17Lg vs %.17Lg out0 %.17Lg "
                             "vs %.17Lg",
                          B, Lq, T, c->causal, c->lower_right, c->window, c->wl, c->wr, c->bias_mode, c->alibi,
                          c->klen, c->mask, c->softcap, c->qoff, c->koff, pass, b, i, gl, rl,
                          f32 ? (long double)outf[row * dv] : (long double)out[row * dv], ref[0]);
            }
        if (!bad) CHECK(1, "features");
    }
    free(Q), free(K), free(V), free(bias), free(mask), free(out), free(lse), free(w);
    free(Qf), free(Kf), free(Vf), free(biasf), free(outf), free(lsef);
}

/* 120 cases over the single-row, few-row, tiled, long and split-K shapes and every
 * combination of the options (bits of a hash of the case number). */
static void test_features(void)
{
    const size_t shapes[][3] = {{1, 37, 5}, {3, 50, 8}, {70, 90, 16}, {130, 200, 64}, {2, 600, 4}, {3, 9000, 8}};
    for (size_t k = 0; k < 6 * 20; k++) {
        const size_t *sh = shapes[k % 6];
        feat_case c;
        memset(&c, 0, sizeof c);
        c.B = 1 + k % 3;
        c.Lq = sh[0], c.T = sh[1], c.d = sh[2], c.dv = 3 + k % 7;
        unsigned f = (unsigned)(k * 2654435761u >> 7);
        c.causal = f & 1;
        c.lower_right = (f >> 1) & 1;
        c.window = (f >> 2) & 1;
        c.wl = (f >> 3) & 1 ? -1 : (ptrdiff_t)((f >> 4) % 40);
        c.wr = (f >> 9) & 1 ? -1 : (ptrdiff_t)((f >> 10) % 9);
        c.bias_mode = (int)((f >> 13) % 4);
        c.alibi = (f >> 15) & 1;
        c.klen = (f >> 16) & 1;
        c.mask = (f >> 17) & 1;
        c.softcap = (f >> 18) & 1 ? 0.0 : 0.7 + (double)((f >> 19) % 5);
        c.qoff = (f >> 22) & 1 ? (ptrdiff_t)((f >> 23) % 11) - 5 : 0;
        c.koff = (f >> 27) & 1 ? 3 : 0;
        feat_run(&c);
    }
}

HARNESS_MAIN("attention/merge", (test_status_codes),
             (test_features, test_offsets_and_lse, test_merge_chunks, test_split_bits))
