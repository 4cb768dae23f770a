/*
 * kernels_fold.h -- the plumbing around an x86 kernel file's online-softmax
 * fold, written once for float64 and float32, AVX2 and AVX-512. Internal:
 * included at the end of kernels_{,f32_}{avx2,avx512}.c, each after
 * defining
 *
 *   KF_T                    the element type (double, float)
 *   KF_W                    lanes of one vector
 *   KF_SFX                  the suffix of the table entries (f64_avx512, ...)
 *   KF_ALIGNED              1: online_run has the aligned-load variant
 *   KF_FINISH(m, l, c, dv)  c = c / l; zeros when m == -inf, NaN when l is
 *
 * and after its own online_run (the fold of keys [0, T), SIMD), rows_chunk
 * (register-tiled batches of queries) and their constants (AL_MAX,
 * PF_MIN_BYTES, PF_BATCH_BYTES, RQ, KB, KT_STACK, FEW_QUERIES). It defines
 * online_fold and the two table entries attend_online_<SFX> and
 * attend_rows_<SFX>.
 */
#if !defined(KF_T) || !defined(KF_W) || !defined(KF_SFX) || !defined(KF_ALIGNED) || !defined(KF_FINISH)
#error "kernels_fold.h: define KF_T, KF_W, KF_SFX, KF_ALIGNED and KF_FINISH first"
#endif

#define KF_CAT_(a, b) a##b
#define KF_CAT(a, b) KF_CAT_(a, b)
#define KF_VB (KF_W * sizeof(KF_T))   /* bytes of one vector */

#if KF_ALIGNED
/* NumPy's (malloc's) large buffers are only 16-byte aligned, and a vector
 * load that straddles two cache lines costs two. When d and dv are
 * multiples of KF_W, every key row starts at the same offset km (in
 * elements) within a vector-aligned block, and every value row at vm: the
 * fold then reads rows from their aligned bases against copies of q and
 * acc shifted by km and vm (online_run's al == 1). */
static void online_aligned(const KF_T *q, const KF_T *K, const KF_T *V, size_t T, size_t d,
                           size_t dv, KF_T scale, const unsigned char *mask, double *m, double *l,
                           KF_T *acc, int pf)
{
    KF_T qbuf[AL_MAX + 2 * KF_W], abuf[AL_MAX + 2 * KF_W];
    KF_T *qs = (KF_T *)(uintptr_t)(((uintptr_t)qbuf + KF_VB - 1) & ~(uintptr_t)(KF_VB - 1));
    KF_T *as = (KF_T *)(uintptr_t)(((uintptr_t)abuf + KF_VB - 1) & ~(uintptr_t)(KF_VB - 1));
    const unsigned km = (unsigned)((uintptr_t)K / sizeof(KF_T)) % KF_W;
    const unsigned vm = (unsigned)((uintptr_t)V / sizeof(KF_T)) % KF_W;
    for (size_t j = 0; j < d + KF_W; j++) qs[j] = j >= km && j < km + d ? q[j - km] : (KF_T)0;
    for (size_t j = 0; j < dv + KF_W; j++) as[j] = j >= vm && j < vm + dv ? acc[j - vm] : (KF_T)0;
    online_run(qs, K, V, T, d, dv, scale, mask, m, l, as, dv + KF_W, 1, km, vm, pf);
    for (size_t j = 0; j < dv; j++) acc[j] = as[vm + j];
}
#endif

/* Fold keys [0, T) into the state (st, acc); pf: prefetch K and V ahead
 * (see PF_MIN_BYTES). */
static void online_fold(const KF_T *q, const KF_T *K, const KF_T *V, size_t T, size_t d,
                        size_t dv, KF_T scale, const unsigned char *mask, attnx_online *st,
                        KF_T *acc, int pf)
{
    if (st->l != st->l || T == 0) return;   /* poisoned: the result is NaN anyway */
    double m = st->m, l = st->l;
#if KF_ALIGNED
    const uintptr_t kv = (uintptr_t)K | (uintptr_t)V;
    if ((kv & (KF_VB - 1)) && (kv & (sizeof(KF_T) - 1)) == 0 && d % KF_W == 0 &&
        dv % KF_W == 0 && d && dv && d <= AL_MAX && dv <= AL_MAX)
        online_aligned(q, K, V, T, d, dv, scale, mask, &m, &l, acc, pf);
    else
#endif
        online_run(q, K, V, T, d, dv, scale, mask, &m, &l, acc, dv, 0, 0, 0, pf);
    st->m = m;
    st->l = l;
}

static void KF_CAT(attend_online_, KF_SFX)(const KF_T *q, const KF_T *K, const KF_T *V, size_t T,
                                           size_t d, size_t dv, KF_T scale,
                                           const unsigned char *mask, attnx_online *st, KF_T *acc)
{
    online_fold(q, K, V, T, d, dv, scale, mask, st, acc, T * (d + dv) * sizeof(KF_T) > PF_MIN_BYTES);
}

/* Queries [q0, q0 + nq) against keys [0, T) (causal: query i sees keys
 * <= i): few queries fold one by one; more go through rows_chunk, RQ at a
 * time, with K packed transposed (on the stack up to d == KT_STACK; d is
 * rounded up to a whole vector). */
static void KF_CAT(attend_rows_, KF_SFX)(const KF_T *Q, size_t nq, size_t q0, const KF_T *K,
                                         const KF_T *V, size_t T, size_t d, size_t dv,
                                         KF_T scale, const unsigned char *mask,
                                         ptrdiff_t mask_row_stride, int causal, KF_T *ctx)
{
    KF_T kt_stack[(KT_STACK + KF_W) * KB];
    KF_T *Kt = kt_stack;
    if (nq >= FEW_QUERIES && d > KT_STACK) Kt = (KF_T *)malloc((d + KF_W) * KB * sizeof(KF_T));
    if (nq < FEW_QUERIES || !Kt) {
        /* one fused pass per query (also the fallback without memory).
         * A batched call walks through the K and V of many heads, each read
         * once: they come from DRAM unless the whole batch fits in cache,
         * so prefetch from PF_BATCH_BYTES up (2x faster for a decoder step
         * over 64 heads of T = 512 at 32 MB; costs ~15% when it does fit). */
        const int pf = T * (d + dv) * sizeof(KF_T) > PF_BATCH_BYTES;
        for (size_t r = 0; r < nq; r++) {
            size_t lim = causal && q0 + r + 1 < T ? q0 + r + 1 : T;
            attnx_online st = {-INFINITY, 0.0};
            KF_T *c = ctx + r * dv;
            for (size_t j = 0; j < dv; j++) c[j] = (KF_T)0;
            online_fold(Q + r * d, K, V, lim, d, dv, scale,
                        mask ? mask + (ptrdiff_t)r * mask_row_stride : NULL, &st, c, pf);
            KF_FINISH(st.m, st.l, c, dv);
        }
        return;
    }
    for (size_t r0 = 0; r0 < nq; r0 += RQ) {
        size_t nr = nq - r0 < RQ ? nq - r0 : RQ;
        rows_chunk(Q + r0 * d, nr, q0 + r0, K, V, T, d, dv, scale,
                   mask ? mask + (ptrdiff_t)r0 * mask_row_stride : NULL, mask_row_stride, causal,
                   ctx + r0 * dv, Kt);
    }
    if (Kt != kt_stack) free(Kt);
}

#undef KF_CAT_
#undef KF_CAT
#undef KF_VB
