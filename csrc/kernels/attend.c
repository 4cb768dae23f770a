/*
 * kernels/attend.c -- fused attention: the online-softmax fold of one query
 * (attend_online) and the tiled kernel for a run of queries (attend_rows).
 *
 * attend_online folds keys [0, T) into a running state (m, l, acc[dv]):
 * m the largest score seen, l = sum_t exp(s_t - m), acc = sum_t exp(s_t - m)
 * V[t]. Keys come in blocks of VX_DOT_ROWS: their scores from dot_rows
 * (kernels/dot_scores.c: the same rounding as dot_scores), one max and at
 * most one rescale of (l, acc) per block (exp(m_old - m_new), computed in
 * double with the subtraction compensated), exps by vx_exp_diff, then the
 * block's value rows folded into acc in one pass over acc (two FMA chains).
 * The next block's scores are computed before this block's exps: the two
 * are independent, so the core overlaps the key loads with the exp latency.
 * Masked keys and keys whose weight underflows to 0 are never read (a row
 * of zeros stands in). A NaN score, or a +inf one (inf - inf), poisons the
 * state (l = NaN): the caller's finish turns it into a NaN context.
 *
 * Where the vocabulary asks for it (VX_ALIGN_ROWS), rows whose start is not
 * vector-aligned (NumPy's large buffers are 16-byte aligned) are read from
 * their aligned base, first and last chunk masked, against copies of q and
 * acc shifted to the same offset: no load straddles two cache lines. Each
 * row's lane sums are rotated back to the lanes of the unaligned reading
 * before they are added across: a result has the same bits wherever its
 * rows lie in memory (a Dask chunk that moved between workers included).
 *
 * attend_rows is flash attention for a run of queries (RQ at a time): key
 * blocks of KB = 2 VX_W packed transposed (d x KB, VX_W x VX_W register
 * transposes; with more than RQ queries and K's packing within
 * KT_WHOLE_BYTES, each block packed once for the whole call, again only
 * where a later chunk sees keys of it an earlier one did not; else once per
 * RQ queries: keys no row sees are never read), VX_TILE_ROWS x KB score
 * tiles and P.V tiles in registers accumulating into the ctx rows, (m, l)
 * per query on the stack; fewer than FEW_QUERIES queries fold one by one.
 *
 * Accuracy: scores as dot_scores; weights p = exp(s - m) within 1 ulp; l in
 * float64 at both dtypes (float32 exps widened exactly); acc takes the
 * fold's keys PART_KEYS at a time (summed apart first; rows up to ZERO_ROW
 * elements, wider ones key by key) and each register tile's P.V as one sum
 * (attend_rows), so it rounds about T / 256 times, not T; ctx = acc / l
 * correctly rounded (float64, finish_fma; float32: acc times 1/l in double,
 * then rounded to float). Within a few ulp of softmax-then-context,
 * float64.
 * Memory: reads each key and value row once (sizeof(element) * T * (d + dv)
 * bytes per query, per RQ queries for attend_rows), masked and p == 0 rows
 * not at all; the fold allocates nothing; attend_rows its scratch (S of
 * RQ x KS) and K's packing: the whole of K's when it packs once (at most
 * KT_WHOLE_BYTES, O(T d)), and then V's too (within the same bound, O(T
 * dv)), else O(KB d) on the stack up to d = KT_STACK; scratch 64-byte
 * aligned (attnx_malloc_al);
 * without memory it falls back to the fold.
 */
#include <float.h>   /* DBL_MAX */
#include <stdlib.h>
#if defined(_MSC_VER)
#include <intrin.h>   /* _BitScanForward */
#endif

/* Past this many bytes of K and V a call prefetches PF_KEYS keys ahead:
 * DRAM-sized sequences need more lines in flight than the hardware
 * prefetcher keeps, while for L2/L3-sized ones the prefetch instructions
 * only compete with the demand loads. A batched call walks through many
 * heads' K and V, each read once, so it prefetches from PF_BATCH_BYTES. */
#define PF_MIN_BYTES ((size_t)8 << 20)
#define PF_BATCH_BYTES ((size_t)64 << 10)
#define PF_KEYS (128 / sizeof(vx_float))
#define ZERO_ROW (2048 / sizeof(vx_float))   /* dv up to this: p == 0 rows read zero_row */
#define AL_MAX (2048 / sizeof(vx_float))     /* largest d, dv of the aligned variant */
#define OB VX_DOT_ROWS                      /* keys per online block */
#define OB_ALL (OB == 32 ? ~0u : (1u << OB) - 1u)
#define VB (VX_W * sizeof(vx_float))        /* bytes of a vector */
#define PART_KEYS 256                       /* keys the fold sums apart before acc */

#if defined(_MSC_VER)
__declspec(align(64)) static const vx_float zero_row[ZERO_ROW + VX_W];
#else
static const vx_float zero_row[ZERO_ROW + VX_W] __attribute__((aligned(64)));
#endif

/* Index of the lowest set bit of b != 0. */
VX_INLINE unsigned lowest_bit(unsigned b)
{
#if defined(_MSC_VER)
    unsigned long i;
    _BitScanForward(&i, b);
    return (unsigned)i;
#else
    return (unsigned)__builtin_ctz(b);
#endif
}

#if defined(ATTNX_F32)
/* The rescale factor in double (l is double); acc takes it rounded once. */
#define RESCALE(m_old, m_new) attnx_rescale_factor(m_old, m_new)
#define FINISH attnx_online_finish_f32
/* the sum of the lanes of p[0..nv), in double */
VX_INLINE double lane_sum(const vx_t *p, int nv)
{
    vx_wide_t w = vx_wide_zero();
    for (int g = 0; g < nv; g++) w = vx_wide_add(w, p[g]);
    return vx_wide_hsum(w);
}
#else
#define RESCALE(m_old, m_new) ((m_old) == -INFINITY ? 0.0 : attnx_exp_diff_scalar(m_old, m_new))
VX_INLINE double lane_sum(const vx_t *p, int nv)
{
    vx_t s = p[0];
    for (int g = 1; g < nv; g++) s = vx_add(s, p[g]);
    return vx_hsum(s);
}

#if VX_HAS_FMA
/* attnx_online_finish, acc / l correctly rounded, without a division per
 * element: with r = RN(1/l) and q = RN(acc r), the residual e = acc - q l
 * is exact in an FMA and RN(q + e r) is acc / l correctly rounded
 * (Markstein's theorem). A vector where acc is 0, below 2^-968 (e could
 * be subnormal), inf or NaN divides instead. A vdivpd per 8 elements was
 * 3% of the tiled kernel's time (causal: 5%) on Intel, whose divider
 * takes 16 cycles a vector. */
static void finish_fma(double m, double l, double *acc, size_t dv)
{
    if (l != l || m == -INFINITY) {
        attnx_online_finish(m, l, acc, dv);
        return;
    }
    const double r = 1.0 / l;
    const vx_t rv = vx_set1(r), lv = vx_set1(l), tiny = vx_set1(0x1p-968), big = vx_set1(DBL_MAX);
    size_t j = 0;
    for (; j + VX_W <= dv; j += VX_W) {
        const vx_t c = vx_load(acc + j), a = vx_abs(c);
        if (vx_any(vx_or_b(vx_or_b(vx_lt(a, tiny), vx_lt(big, a)), vx_unord(c, c)))) {
            vx_store(acc + j, vx_div(c, lv));
            continue;
        }
        const vx_t q = vx_mul(c, rv);
        vx_store(acc + j, vx_fma(vx_fnma(q, lv, c), rv, q));
    }
    for (; j < dv; j++) acc[j] /= l;
}
#define FINISH finish_fma
#else
#define FINISH attnx_online_finish
#endif
#endif

/* acc[0..n) *= c, or zero it when c == 0 (inf * 0 would be NaN). Whole
 * vectors with plain loads and stores (a masked store is several times
 * slower on Zen), the tail masked. */
static void rescale_acc(vx_float *acc, size_t n, vx_float c)
{
    const vx_t cv = vx_set1(c);
    size_t j = 0;
    for (; j + VX_W <= n; j += VX_W) vx_store(acc + j, c == 0 ? vx_zero() : vx_mul(vx_load(acc + j), cv));
    if (j < n) {
        const vx_mask_t k = vx_tail(n - j);
        vx_store_part(acc + j, k, c == 0 ? vx_zero() : vx_mul(vx_load_part(acc + j, k), cv));
    }
}

/* -------------------------------------------------- shaping the scores */

/* lane i holds i: key offsets within a vector */
#if defined(_MSC_VER)
__declspec(align(64)) static const vx_float lane_iota[16]
#else
static const vx_float lane_iota[16] __attribute__((aligned(64)))
#endif
    = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

/* softcap * tanh(x / softcap), and *y = x / softcap: the backward's
 * derivative is sech^2(y) (sech2_vec in kernels/backward.c). */
VX_INLINE vx_t softcap_vec(vx_t cap, vx_t x, vx_t *y)
{
    *y = vx_div(x, cap);
    return vx_mul(cap, vx_tanh(*y));
}

/* The scores s[g] of keys t0 + g VX_W + lane (g < nv) of row `row`, shaped
 * by md (attnx_mods: softcap, bias, ALiBi, in that order). Only the first n
 * keys' bias is read. One function for every kernel, so the fused, tiled
 * and two-pass paths shape a score the same way, bit for bit. */
VX_INLINE void shape_vec(const attnx_mods *md, size_t row, size_t t0, size_t n, vx_t *s, int nv)
{
    const vx_float *b = md->bias ? (const vx_float *)md->bias + (ptrdiff_t)row * md->bias_row : NULL;
    const vx_t cap = vx_set1((vx_float)md->softcap), slope = vx_set1((vx_float)md->slope);
    for (int g = 0; g < nv; g++) {
        const size_t k = (size_t)g * VX_W, tg = t0 + k;
        vx_t x = s[g], y;
        if (md->softcap > 0) x = softcap_vec(cap, x, &y);
        if (b && k < n) {
            if (!md->bias_col)
                x = vx_add(x, vx_set1(b[0]));
            else
                x = vx_add(x, n - k >= VX_W ? vx_load(b + tg) : vx_load_part(b + tg, vx_tail(n - k)));
        }
        if (md->slope != 0) {
            /* |pos + row - t|, exact in vx_float up to 2^24 (float) keys */
            const vx_float rel = (vx_float)((double)(md->pos + (ptrdiff_t)row) - (double)tg);
            x = vx_fnma(slope, vx_abs(vx_sub(vx_set1(rel), vx_load(lane_iota))), x);
        }
        s[g] = x;
    }
}

/* s[0..n) = the scores of keys t0.. of row `row`, shaped in place. */
static void K_shape_scores(const attnx_mods *md, size_t row, size_t t0, size_t n, vx_float *s)
{
    size_t i = 0;
    for (; i + VX_W <= n; i += VX_W) {
        vx_t x = vx_load(s + i);
        shape_vec(md, row, t0 + i, n - i, &x, 1);
        vx_store(s + i, x);
    }
    if (i < n) {
        const vx_mask_t k = vx_tail(n - i);
        vx_t x = vx_load_part(s + i, k);
        shape_vec(md, row, t0 + i, n - i, &x, 1);
        vx_store_part(s + i, k, x);
    }
}

/* ------------------------------------------------------ one query (fold) */

/* Attended keys of [t0, t0 + nb), nb <= OB. */
VX_INLINE unsigned block_live(const unsigned char *mask, size_t t0, size_t nb)
{
    if (!mask) return nb == OB ? OB_ALL : (1u << nb) - 1u;
    return vx_bytes_nz(mask + t0, nb);
}

VX_INLINE const vx_float *vbase(const vx_float *p)
{
    return (const vx_float *)(uintptr_t)((uintptr_t)p & ~(uintptr_t)(VB - 1));
}

#if VX_ALIGN_ROWS
/* dot_rows over aligned row bases against q shifted by km (see the top). */
VX_INLINE void dot_rows_al(const vx_float *qs, const vx_float *const *k, size_t d, unsigned km, vx_t *out)
{
    vx_t a[OB];
    const vx_mask_t mf = vx_head(km);
    vx_t qv = vx_load_a(qs);
    for (int i = 0; i < OB; i++) a[i] = vx_mul(qv, vx_load_part(k[i], mf));
    size_t j = VX_W;
    for (; j < d; j += VX_W) {
        qv = vx_load_a(qs + j);
        for (int i = 0; i < OB; i++) a[i] = vx_fma(qv, vx_load_a(k[i] + j), a[i]);
    }
    if (km) {
        const vx_mask_t ml = vx_tail(km);
        qv = vx_load_a(qs + j);
        for (int i = 0; i < OB; i++) a[i] = vx_fma(qv, vx_load_part(k[i] + j, ml), a[i]);
        /* lane l + km summed what lane l of dot_rows sums, in the same
         * order: back to lane l, so that the transposed sums, and the
         * score, have the bits of the unaligned path (a result must not
         * depend on where its rows lie in memory) */
        const vx_rot_t rot = vx_rot(km);
        for (int i = 0; i < OB; i++) a[i] = vx_rotate(a[i], rot);
    }
    for (int g = 0; g < DOT_NV; g++) out[g] = vx_transpose_sum(a + g * VX_W);
}
#endif

/* Scores of keys [t0, t0 + OB): -inf where not live. Rows that are not
 * live are not read: their lanes dot q with itself and are overwritten. */
VX_INLINE void block_scores(const vx_float *q, const vx_float *K, size_t t0, size_t nb, size_t d, vx_t sc,
                            const attnx_mods *md, unsigned live, int al, unsigned km, vx_t *s)
{
    const vx_float *k[OB];
    vx_t v[DOT_NV];
    for (size_t i = 0; i < OB; i++) {
        const vx_float *r = K + (t0 + i) * d;
        k[i] = (live >> i) & 1 ? (al ? vbase(r) : r) : q;
    }
#if VX_ALIGN_ROWS
    if (al)
        dot_rows_al(q, k, d, km, v);
    else
#endif
        dot_rows(q, k, d, v);
    (void)al, (void)km;
    for (int g = 0; g < DOT_NV; g++) v[g] = vx_mul(sc, v[g]);
    if (md) shape_vec(md, 0, t0, nb, v, DOT_NV);
    for (int g = 0; g < DOT_NV; g++) s[g] = vx_select(vx_lanes(live >> (g * VX_W)), vx_set1(-INFINITY), v[g]);
}

/* One VX_W-column chunk of acc += sum_i p_i V_i over the OB rows v[i]:
 * two FMA chains (half the latency on acc) where whole, one chain on a
 * row's masked tail. al: acc is the aligned copy, V rows aligned bases.
 * (online_run hands it a part sum of PART_KEYS keys, not the whole.) */
VX_INLINE void axpy_chunk(vx_float *acc, const vx_t *pb, const vx_float *const *v, size_t j, vx_mask_t k,
                          int masked, int al)
{
#define LD(i) (masked ? vx_load_part(v[i] + j, k) : al ? vx_load_a(v[i] + j) : vx_load(v[i] + j))
    if (masked && !al) {
        vx_t a = vx_load_part(acc + j, k);
        for (int i = 0; i < OB; i++) a = vx_fma(pb[i], LD(i), a);
        vx_store_part(acc + j, k, a);
        return;
    }
    vx_t a = al ? vx_load_a(acc + j) : vx_load(acc + j);
    vx_t b = vx_mul(pb[OB / 2], LD(OB / 2));
    for (int i = 0; i < OB / 2; i++) {
        a = vx_fma(pb[i], LD(i), a);
        if (OB / 2 + 1 + i < OB) b = vx_fma(pb[OB / 2 + 1 + i], LD(OB / 2 + 1 + i), b);
    }
#undef LD
    if (al)
        vx_store_a(acc + j, vx_add(a, b));
    else
        vx_store(acc + j, vx_add(a, b));
}

/* acc += sum_i p_i V_i for the OB rows v[i]; al: vm = the rows' offset */
VX_INLINE void axpy_block(vx_float *acc, const vx_float *p, const vx_float *const *v, size_t dv, int al,
                          unsigned vm)
{
    vx_t pb[OB];
    for (int i = 0; i < OB; i++) pb[i] = vx_set1(p[i]);
#if VX_ALIGN_ROWS
    if (al) {
        axpy_chunk(acc, pb, v, 0, vx_head(vm), 1, 1);
        for (size_t j = VX_W; j < dv; j += VX_W) axpy_chunk(acc, pb, v, j, vx_tail(VX_W), 0, 1);
        if (vm) axpy_chunk(acc, pb, v, dv, vx_tail(vm), 1, 1);
        return;
    }
#endif
    (void)al, (void)vm;
    size_t j = 0;
    for (; j + VX_W <= dv; j += VX_W) axpy_chunk(acc, pb, v, j, vx_tail(VX_W), 0, 0);
    if (j < dv) axpy_chunk(acc, pb, v, j, vx_tail(dv - j), 1, 0);
}

/* acc += p V for one row */
VX_INLINE void axpy1(vx_float *acc, vx_float p, const vx_float *v, size_t dv, int al, unsigned vm)
{
    const vx_t pv = vx_set1(p);
    size_t j = 0;
#if VX_ALIGN_ROWS
    if (al) {
        vx_store_a(acc, vx_fma(pv, vx_load_part(v, vx_head(vm)), vx_load_a(acc)));
        for (j = VX_W; j < dv; j += VX_W) vx_store_a(acc + j, vx_fma(pv, vx_load_a(v + j), vx_load_a(acc + j)));
        if (vm) vx_store_a(acc + j, vx_fma(pv, vx_load_part(v + j, vx_tail(vm)), vx_load_a(acc + j)));
        return;
    }
#endif
    (void)al, (void)vm;
    for (; j + VX_W <= dv; j += VX_W) vx_store(acc + j, vx_fma(pv, vx_load(v + j), vx_load(acc + j)));
    if (j < dv) {
        const vx_mask_t k = vx_tail(dv - j);
        vx_store_part(acc + j, k, vx_fma(pv, vx_load_part(v + j, k), vx_load_part(acc + j, k)));
    }
}

/* Max, rescale and exps of one block of scores s: p[0..OB) = the weights
 * exp(s - m); returns the bits of p != 0, or -1 when the state is
 * poisoned (NaN score, or +inf: inf - inf). */
VX_INLINE int block_softmax(const vx_t *s, double *m, double *l, vx_float *acc, vx_float *part, size_t nacc,
                            vx_float *p)
{
    vx_bool_t nan = vx_false();
    vx_t mm = s[0];
    for (int g = 0; g < DOT_NV; g++) nan = vx_or_b(nan, vx_unord(s[g], s[g]));
    if (vx_any(nan)) {
        *l = NAN;                       /* finalisation sees it */
        return -1;
    }
    for (int g = 1; g < DOT_NV; g++) mm = vx_max(mm, s[g]);
    const vx_float bm = vx_hmax(mm);
    if (bm == -INFINITY) return 0;
    if (bm > *m) {
        double c = RESCALE(*m, bm);
        *l *= c;
        rescale_acc(acc, nacc, (vx_float)c);
        if (part) rescale_acc(part, nacc, (vx_float)c);
        *m = bm;
    }
    const vx_t mv = vx_set1((vx_float)*m);
    vx_t pv[DOT_NV];
    unsigned nz = 0;
    for (int g = 0; g < DOT_NV; g++) {
        pv[g] = vx_exp_diff(s[g], mv);
        vx_store(p + g * VX_W, pv[g]);
        nz |= vx_nz_bits(pv[g]) << (g * VX_W);
    }
    *l += lane_sum(pv, DOT_NV);
    if (*l != *l) return -1;
    return (int)nz;
}

/* acc += part, part = 0 (whole vectors: nacc is a multiple of VX_W or
 * the buffers have room for one more, see online_fold) */
static void add_part(vx_float *acc, vx_float *part, size_t n)
{
    size_t j = 0;
    for (; j + VX_W <= n; j += VX_W) {
        vx_store(acc + j, vx_add(vx_load(acc + j), vx_load(part + j)));
        vx_store(part + j, vx_zero());
    }
    for (; j < n; j++) {
        acc[j] += part[j];
        part[j] = 0;
    }
}

/* The fold over keys [0, T): q and acc are the caller's (al == 0) or the
 * shifted aligned copies (al == 1, nacc = dv + VX_W). */
VX_INLINE void online_run(const vx_float *q, const vx_float *K, const vx_float *V, size_t T, size_t d,
                          size_t dv, vx_float scale, const unsigned char *mask, const attnx_mods *md,
                          double *m, double *l, vx_float *acc, vx_float *part, size_t nacc, int al, unsigned km,
                          unsigned vm, int pf)
{
    /* with part (nacc zeros): the blocks of PART_KEYS keys sum there first,
     * then into acc, so acc takes T / PART_KEYS roundings, not T / OB */
    vx_float *tgt = part ? part : acc;
    const vx_t sc = vx_set1(scale), ninf = vx_set1(-INFINITY);
    vx_float p[OB];
    const vx_float *v[OB];
    vx_t s[DOT_NV], sn[DOT_NV];
    for (int g = 0; g < DOT_NV; g++) s[g] = sn[g] = ninf;
    unsigned live = block_live(mask, 0, T < OB ? T : OB), live_next = 0;
    if (live) block_scores(q, K, 0, T, d, sc, md, live, al, km, s);
    for (size_t t0 = 0; t0 < T; t0 += OB) {
        if (t0 + OB < T) {
            size_t t1 = t0 + OB, nn = T - t1 < OB ? T - t1 : OB;
            live_next = block_live(mask, t1, nn);
            for (int g = 0; g < DOT_NV; g++) sn[g] = ninf;
            if (live_next) block_scores(q, K, t1, T - t1, d, sc, md, live_next, al, km, sn);
        }
        if (pf && t0 + OB + PF_KEYS <= T) {
            const char *pk = (const char *)(K + (t0 + PF_KEYS) * d), *pv = (const char *)(V + (t0 + PF_KEYS) * dv);
            for (size_t b = 0; b < OB * d * sizeof(vx_float); b += 64) vx_prefetch(pk + b);
            for (size_t b = 0; b < OB * dv * sizeof(vx_float); b += 64) vx_prefetch(pv + b);
        }
        if (live) {
            int nz = block_softmax(s, m, l, acc, part, nacc, p);
            if (nz < 0) break;
            if ((unsigned)nz == OB_ALL || (nz && dv <= ZERO_ROW)) {
                /* p == 0 (masked, -inf, underflow): the value row is not
                 * read; a row of zeros stands in (0 * 0 adds nothing) */
                for (size_t i = 0; i < OB; i++) {
                    const vx_float *r = V + (t0 + i) * dv;
                    v[i] = ((unsigned)nz >> i) & 1 ? (al ? vbase(r) : r) : zero_row;
                }
                axpy_block(tgt, p, v, dv, al, vm);
            } else {
                for (unsigned b = (unsigned)nz; b; b &= b - 1) {
                    unsigned i = lowest_bit(b);
                    const vx_float *r = V + (t0 + i) * dv;
                    axpy1(tgt, p[i], al ? vbase(r) : r, dv, al, vm);
                }
            }
        }
        if (part && ((t0 + OB) % PART_KEYS == 0 || t0 + OB >= T)) add_part(acc, part, nacc);
        for (int g = 0; g < DOT_NV; g++) s[g] = sn[g];
        live = live_next;
    }
    /* a break (poisoned state) may leave part unadded: the result is NaN */
}

#if VX_ALIGN_ROWS
/* When d and dv are multiples of VX_W, every key row starts at the same
 * offset km (in elements) within a vector-aligned block, and every value
 * row at vm: the fold reads rows from their aligned bases against copies
 * of q and acc shifted by km and vm. */
static void online_aligned(const vx_float *q, const vx_float *K, const vx_float *V, size_t T, size_t d,
                           size_t dv, vx_float scale, const unsigned char *mask, const attnx_mods *md,
                           double *m, double *l, vx_float *acc, int has_part, int pf)
{
    vx_float qbuf[AL_MAX + 2 * VX_W], abuf[AL_MAX + 2 * VX_W], pbuf[AL_MAX + 2 * VX_W];
    vx_float *qs = (vx_float *)(uintptr_t)(((uintptr_t)qbuf + VB - 1) & ~(uintptr_t)(VB - 1));
    vx_float *as = (vx_float *)(uintptr_t)(((uintptr_t)abuf + VB - 1) & ~(uintptr_t)(VB - 1));
    vx_float *ps = (vx_float *)(uintptr_t)(((uintptr_t)pbuf + VB - 1) & ~(uintptr_t)(VB - 1));
    const unsigned km = (unsigned)((uintptr_t)K / sizeof(vx_float)) % VX_W;
    const unsigned vm = (unsigned)((uintptr_t)V / sizeof(vx_float)) % VX_W;
    for (size_t j = 0; j < d + VX_W; j++) qs[j] = j >= km && j < km + d ? q[j - km] : 0;
    for (size_t j = 0; j < dv + VX_W; j++) as[j] = j >= vm && j < vm + dv ? acc[j - vm] : 0;
    for (size_t j = 0; has_part && j < dv + VX_W; j++) ps[j] = 0;
    online_run(qs, K, V, T, d, dv, scale, mask, md, m, l, as, has_part ? ps : NULL, dv + VX_W, 1, km, vm, pf);
    for (size_t j = 0; j < dv; j++) acc[j] = as[vm + j];
}
#endif

/* Fold keys [0, T) into the state (st, acc); pf: prefetch K and V ahead. */
static void online_fold(const vx_float *q, const vx_float *K, const vx_float *V, size_t T, size_t d,
                        size_t dv, vx_float scale, const unsigned char *mask, const attnx_mods *md,
                        attnx_online *st, vx_float *acc, int pf)
{
    if (st->l != st->l || T == 0) return;   /* poisoned: the result is NaN anyway */
    double m = st->m, l = st->l;
    if (!attnx_mods_shape(md)) md = NULL;
    /* a part sum (see online_run) where it saves roundings: more keys than
     * PART_KEYS, rows that fit the stack buffers */
    const int has_part = T > PART_KEYS && dv <= ZERO_ROW;
#if VX_ALIGN_ROWS
    const uintptr_t kv = (uintptr_t)K | (uintptr_t)V;
    if ((kv & (VB - 1)) && (kv & (sizeof(vx_float) - 1)) == 0 && d % VX_W == 0 && dv % VX_W == 0 && d &&
        dv && d <= AL_MAX && dv <= AL_MAX)
        online_aligned(q, K, V, T, d, dv, scale, mask, md, &m, &l, acc, has_part, pf);
    else
#endif
    {
        vx_float pbuf[ZERO_ROW];
        for (size_t j = 0; has_part && j < dv; j++) pbuf[j] = 0;
        online_run(q, K, V, T, d, dv, scale, mask, md, &m, &l, acc, has_part ? pbuf : NULL, dv, 0, 0, 0, pf);
    }
    st->m = m;
    st->l = l;
}

/* The fold of one query over keys [0, T): md's bias and ALiBi position
 * are those of this query (row 0); its window is not applied (the caller
 * cuts the keys to the row's range). */
static void K_attend_online(const vx_float *q, const vx_float *K, const vx_float *V, size_t T, size_t d,
                            size_t dv, vx_float scale, const unsigned char *mask, const attnx_mods *md,
                            attnx_online *st, vx_float *acc)
{
    online_fold(q, K, V, T, d, dv, scale, mask, md, st, acc, T * (d + dv) * sizeof(vx_float) > PF_MIN_BYTES);
}

#if VX_ROWS_KERNEL
/* ------------------------------------------------ many queries (flash) */

#define RQ 64                 /* queries per sub-chunk: its ctx rows stay in L1/L2 */
#define KB (2 * VX_W)         /* keys per block: two vectors of scores per query */
#define KB_ALL (KB == 32 ? ~0u : (1u << KB) - 1u)
#define MR VX_TILE_ROWS       /* queries per register tile */
#define KT_STACK (16384 / (KB * sizeof(vx_float)))   /* d up to this packs K on the stack */
#define KT_WHOLE_BYTES ((size_t)4 << 20)  /* K packed once per call up to this size */
#define FEW_QUERIES 4         /* below this, packing K costs more than it saves */

/* Kt[j][k] = Kb[k][j] for the keys k in `any` (zero columns for the
 * others, which stay unread); rows j up to d rounded up to VX_W written. */
static void pack_kt(const vx_float *Kb, size_t d, unsigned any, vx_float *Kt)
{
    for (size_t j0 = 0; j0 < d; j0 += VX_W) {
        const vx_mask_t m = vx_tail(d - j0 >= VX_W ? VX_W : d - j0);
        for (size_t h = 0; h < KB; h += VX_W) {
            vx_t r[VX_W];
            for (size_t i = 0; i < VX_W; i++)
                r[i] = (any >> (h + i)) & 1 ? vx_load_part(Kb + (h + i) * d + j0, m) : vx_zero();
            vx_transpose_store(r, Kt + KB * j0 + h, KB);
        }
    }
}

/* V's rows t0 + k of a block in column panels of KB: panel c at
 * Vp + c * pstride, row k at Vp + c * pstride + k * KB, columns past dv and
 * rows of keys not in `any` zero (those stay unread). Packed with K, once
 * per call: the P.V tiles then read aligned vectors from one contiguous
 * stream per panel, not two lines of every value row of the caller's
 * (NumPy's buffers are 16 bytes off a line): 5-6% of the batched time on
 * Intel (family 6 model 167). */
static void pack_v(const vx_float *Vb, size_t dv, unsigned any, vx_float *Vp, size_t pstride)
{
    for (size_t c = 0; c < dv; c += KB) {
        vx_float *pc = Vp + (c / KB) * pstride;
        const size_t rem = dv - c;
        const vx_mask_t m0 = vx_tail(rem >= VX_W ? VX_W : rem), m1 = vx_tail(rem > VX_W ? (rem >= KB ? VX_W : rem - VX_W) : 0);
        for (size_t k = 0; k < KB; k++) {
            const int live = (any >> k) & 1;
            vx_store(pc + k * KB, live ? vx_load_part(Vb + k * dv + c, m0) : vx_zero());
            vx_store(pc + k * KB + VX_W, live ? vx_load_part(Vb + k * dv + c + VX_W, m1) : vx_zero());
        }
    }
}

/* s[r * lds + k] = dot(Q_r, key k), k < KB, for r < mr, keys packed as
 * Kt[j][k]. */
VX_INLINE void score_tile(const vx_float *Q, size_t d, const vx_float *Kt, int mr, vx_float *s, size_t lds)
{
    vx_t a[MR][2];
    for (int r = 0; r < mr; r++) a[r][0] = a[r][1] = vx_zero();
    for (size_t j = 0; j < d; j++) {
        vx_t k0 = vx_load(Kt + KB * j), k1 = vx_load(Kt + KB * j + VX_W);
        for (int r = 0; r < mr; r++) {
            vx_t b = vx_set1(Q[(size_t)r * d + j]);
            a[r][0] = vx_fma(b, k0, a[r][0]);
            a[r][1] = vx_fma(b, k1, a[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        vx_store(s + lds * (size_t)r, a[r][0]);
        vx_store(s + lds * (size_t)r + VX_W, a[r][1]);
    }
}

/* One 2 VX_W-column slice (columns c..) of C_r += sum_i A[r][k_i] B[k_i]
 * for r < mr: A[r][k] at A[r * ars + k * acs] (any strides: the forward's
 * weights, the backward's transposed ones), k_i = kidx[i] (or i when kidx
 * is NULL), B rows ldb apart, C rows ldc apart. */
VX_INLINE void mm_slice(const vx_float *A, ptrdiff_t ars, ptrdiff_t acs, const unsigned char *kidx, int nk,
                        const vx_float *B, size_t ldb, int mr, vx_float *C, size_t ldc, size_t c)
{
    vx_t a[MR][2];
    for (int r = 0; r < mr; r++) a[r][0] = a[r][1] = vx_zero();
    for (int i = 0; i < nk; i++) {
        const int kk = kidx ? kidx[i] : i;
        const vx_float *br = B + (size_t)kk * ldb + c;
        const vx_t v0 = vx_load(br), v1 = vx_load(br + VX_W);
        for (int r = 0; r < mr; r++) {
            vx_t b = vx_set1(A[r * ars + kk * acs]);
            a[r][0] = vx_fma(b, v0, a[r][0]);
            a[r][1] = vx_fma(b, v1, a[r][1]);
        }
    }
    /* the tile's sum, then one add to C: C takes one rounding per call,
     * not one per term (as axpy_chunk) */
    for (int r = 0; r < mr; r++) {
        vx_float *cr = C + (size_t)r * ldc + c;
        vx_store(cr, vx_add(vx_load(cr), a[r][0]));
        vx_store(cr + VX_W, vx_add(vx_load(cr + VX_W), a[r][1]));
    }
}

/* mm_slice for one vector of columns c.. (the first k0 lanes where masked):
 * the tail of a row width that is not a multiple of 2 VX_W. A two-vector
 * masked slice there made GCC keep its accumulators on the stack (stored
 * at every key: float32 dv = 80 took 1.5x the time of dv = 96). */
VX_INLINE void mm_slice1(const vx_float *A, ptrdiff_t ars, ptrdiff_t acs, const unsigned char *kidx, int nk,
                         const vx_float *B, size_t ldb, int mr, vx_float *C, size_t ldc, size_t c, vx_mask_t k0,
                         int masked)
{
    vx_t a[MR];
    for (int r = 0; r < mr; r++) a[r] = vx_zero();
    for (int i = 0; i < nk; i++) {
        const int kk = kidx ? kidx[i] : i;
        const vx_float *br = B + (size_t)kk * ldb + c;
        const vx_t v = masked ? vx_load_part(br, k0) : vx_load(br);
        for (int r = 0; r < mr; r++) a[r] = vx_fma(vx_set1(A[r * ars + kk * acs]), v, a[r]);
    }
    for (int r = 0; r < mr; r++) {
        vx_float *cr = C + (size_t)r * ldc + c;
        if (masked)
            vx_store_part(cr, k0, vx_add(vx_load_part(cr, k0), a[r]));
        else
            vx_store(cr, vx_add(vx_load(cr), a[r]));
    }
}

/* C_r[0..n) += sum_i A[r][k_i] B[k_i] for r < mr (see mm_slice), 2 VX_W
 * columns at a time in registers, then a vector at a time. The forward's
 * P.V (A = P, rows KB apart) and the backward's dV, dK and dQ products. */
VX_INLINE void mm_tile(const vx_float *A, ptrdiff_t ars, ptrdiff_t acs, const unsigned char *kidx, int nk,
                       const vx_float *B, size_t ldb, size_t n, int mr, vx_float *C, size_t ldc)
{
    const vx_mask_t all = vx_tail(VX_W);
    size_t c = 0;
    if (!kidx) {
        for (; c + KB <= n; c += KB) mm_slice(A, ars, acs, NULL, nk, B, ldb, mr, C, ldc, c);
    } else {
        for (; c + KB <= n; c += KB) mm_slice(A, ars, acs, kidx, nk, B, ldb, mr, C, ldc, c);
    }
    if (c + VX_W <= n) {
        mm_slice1(A, ars, acs, kidx, nk, B, ldb, mr, C, ldc, c, all, 0);
        c += VX_W;
    }
    if (c < n) mm_slice1(A, ars, acs, kidx, nk, B, ldb, mr, C, ldc, c, vx_tail(n - c), 1);
}

/* mr is a constant in each case, so the tiles stay in registers */
#define TILE_CASE(n, CALL) \
    case n: CALL((n) < MR ? (n) : MR); break;
#define TILE_SWITCH(mr, CALL)                                                            \
    switch (mr) {                                                                        \
    TILE_CASE(1, CALL) TILE_CASE(2, CALL) TILE_CASE(3, CALL) TILE_CASE(4, CALL)          \
    TILE_CASE(5, CALL) TILE_CASE(6, CALL) TILE_CASE(7, CALL)                             \
    default: CALL(MR); break;                                                            \
    }

/* The product tiles of mr rows (mm_tiles_*) are functions, one copy per
 * level and layout of A, which the forward and the backward call: inlined
 * at each call site (8 row counts x 3 slices each) they made one level
 * file take minutes to compile, ten under the sanitizers, for no speed.
 * The score tiles stay inlined (out of line: the float64 forward -4%). */
#if defined(__GNUC__) || defined(__clang__)
#define TILE_NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define TILE_NOINLINE __declspec(noinline)
#else
#define TILE_NOINLINE
#endif

/* score_tile for any mr <= MR */
VX_INLINE void score_tiles(int mr, const vx_float *Q, size_t d, const vx_float *Kt, vx_float *s, size_t lds)
{
#define SCORE_CALL(n) score_tile(Q, d, Kt, n, s, lds)
    TILE_SWITCH(mr, SCORE_CALL)
#undef SCORE_CALL
}

/* mm_tile for any mr <= MR, one function per layout of A, whose strides
 * are constants there (as inlined they were): A row-major with rows ARS
 * apart (the forward's P, rows KS apart; the backward's dS, KB), or
 * transposed, columns KB apart (the backward's P^T and dS^T) */
#define MM_TILE_CASE(m, ARS, ACS)                                                        \
    case m:                                                                              \
        mm_tile(A, ARS, ACS, kidx, nk, B, ldb, n, (m) < MR ? (m) : MR, C, ldc);          \
        break;
#define MM_TILES(name, ARS, ACS)                                                         \
    static TILE_NOINLINE void name(int mr, const vx_float *A, const unsigned char *kidx, int nk,   \
                                   const vx_float *B, size_t ldb, size_t n, vx_float *C, size_t ldc) \
    {                                                                                    \
        switch (mr) {                                                                    \
        MM_TILE_CASE(1, ARS, ACS) MM_TILE_CASE(2, ARS, ACS) MM_TILE_CASE(3, ARS, ACS)    \
        MM_TILE_CASE(4, ARS, ACS) MM_TILE_CASE(5, ARS, ACS) MM_TILE_CASE(6, ARS, ACS)    \
        MM_TILE_CASE(7, ARS, ACS)                                                        \
        default: mm_tile(A, ARS, ACS, kidx, nk, B, ldb, n, MR, C, ldc); break;            \
        }                                                                                \
    }

/* Whether x[0..n) holds no inf or NaN (x - x is NaN for those, else 0). */
static int all_finite(const vx_float *x, size_t n)
{
    vx_t acc = vx_zero();
    size_t i = 0;
    for (; i + VX_W <= n; i += VX_W) {
        const vx_t v = vx_load(x + i);
        acc = vx_add(acc, vx_sub(v, v));
    }
    if (i < n) {
        const vx_t v = vx_load_part(x + i, vx_tail(n - i));
        acc = vx_add(acc, vx_sub(v, v));
    }
    return !vx_any(vx_unord(acc, acc));
}

/* Scratch of rows_chunk: the scores, then weights, of RQ rows against a
 * superblock of KS keys, and per (row, key block) the keys each row sees
 * and the weights that are not 0. */
#define KS 256                /* keys per superblock: one max, rescale and sum per row */
#define NSUB (KS / KB)
MM_TILES(mm_tiles_ks, KS, 1)   /* C += P V, P rows KS apart */
/* C (rows dv apart) += P V over nk keys: V's rows dv apart, or its panels
 * (Vps, pack_v) */
static void pv_tiles(int mr, const vx_float *Pg, const unsigned char *kidx, int nk, const vx_float *Vs, size_t dv,
                     const vx_float *Vps, size_t vstride, vx_float *Cg)
{
    if (!Vps) {
        mm_tiles_ks(mr, Pg, kidx, nk, Vs, dv, dv, Cg, dv);
        return;
    }
    for (size_t c = 0; c < dv; c += KB)
        mm_tiles_ks(mr, Pg, kidx, nk, Vps + (c / KB) * vstride, KB, dv - c < KB ? dv - c : KB, Cg + c, dv);
}
typedef struct {
    vx_float S[RQ * KS];
    unsigned live[RQ * NSUB], nz[RQ * NSUB];
    unsigned char kidx[KS];
} rows_scratch;

/* Rows [qa, qa + nr) of the call (nr <= RQ): row r sees the keys of
 * [rlo, rhi) that md's window gives it (all of [0, T) without md); the key
 * loop runs over the union only, so tiles outside every row's window are
 * skipped. Keys come in superblocks of KS: their scores as register tiles
 * over K packed KB keys at a time, then per row one max, at most one
 * rescale, the exps and their sum, then P.V as register tiles over the
 * whole superblock (the ctx accumulators loaded and stored once per KS
 * keys). Keys that some but not all rows of a tile weigh are added row by
 * row; a key no row weighs is never read. */
static void rows_chunk(const vx_float *Q, size_t nr, size_t qa, const vx_float *K, const vx_float *V, size_t T,
                       size_t d, size_t dv, vx_float scale, const unsigned char *mask, ptrdiff_t mask_row_stride,
                       const attnx_mods *md, vx_float *ctx, vx_float *lse, vx_float *Kt, unsigned *packed,
                       vx_float *Vp, size_t vstride, rows_scratch *w)
{
    double m[RQ], l[RQ];
    size_t rlo[RQ], rhi[RQ];
    const vx_t sc = vx_set1(scale), ninf = vx_set1(-INFINITY);
    const attnx_mods *shp = attnx_mods_shape(md) ? md : NULL;
    size_t tbeg = T, tend = 0;
    for (size_t r = 0; r < nr; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0;
        attnx_mods_range(md, qa + r, T, &rlo[r], &rhi[r]);
        if (rlo[r] < rhi[r]) {
            if (rlo[r] < tbeg) tbeg = rlo[r];
            if (rhi[r] > tend) tend = rhi[r];
        }
    }
    for (size_t j = 0; j < nr * dv; j++) ctx[j] = 0;
    const size_t dpad = (d + VX_W - 1) / VX_W * VX_W;
    /* no mask and every row seeing [tbeg, tend): a block's live keys are
     * the same for every row, found once per block (the general loop below
     * kept its `any` in memory: a store-forwarding chain per row) */
    int same = !mask;
    for (size_t r = 0; same && r < nr; r++) same = rlo[r] == tbeg && rhi[r] == tend;
    if (packed) tbeg -= tbeg % KB;   /* blocks on the shared packing's grid */
    for (size_t T0 = tbeg; T0 < tend; T0 += KS) {
        const size_t ks = tend - T0 < KS ? tend - T0 : KS, nsub = (ks + KB - 1) / KB;
        /* 1. which keys each row sees; the scores of the tiles that see any */
        int anyrow = 0;
        for (size_t b = 0; b < nsub; b++) {
            const size_t t0 = T0 + b * KB, kn = ks - b * KB < KB ? ks - b * KB : KB;
            const unsigned base = kn == KB ? KB_ALL : (1u << kn) - 1u;
            /* row r's keys of the block (with `same`, row 0's for every
             * row); `acc`, not `any`, in the loop: kept in a register */
            unsigned acc = 0, lv0 = 0;
            for (size_t r = 0; r < nr; r++) {
                unsigned lv = lv0;
                if (!same || r == 0) {
                    lv = 0;
                    if (rlo[r] < t0 + kn && rhi[r] > t0) {   /* shifts < KB */
                        lv = base;
                        if (rlo[r] > t0) lv &= ~((1u << (rlo[r] - t0)) - 1u);
                        if (rhi[r] < t0 + kn) lv &= (1u << (rhi[r] - t0)) - 1u;
                    }
                    if (lv && mask) lv &= vx_bytes_nz(mask + (ptrdiff_t)r * mask_row_stride + (ptrdiff_t)t0, kn);
                    lv0 = lv;
                }
                if (l[r] != l[r]) lv = 0;  /* poisoned rows are done */
                w->live[r * NSUB + b] = lv;
                acc |= lv;
            }
            const unsigned any = acc;
            if (!any) continue;
            anyrow = 1;
            vx_float *Ktb = Kt;
            if (packed) {
                Ktb = Kt + t0 * dpad;
                if (any & ~packed[t0 / KB]) {
                    /* the keys this chunk's rows see, with those earlier
                     * chunks saw (a key no row sees is never read: it may
                     * lie in memory the caller does not own) */
                    packed[t0 / KB] |= any;
                    pack_kt(K + t0 * d, d, packed[t0 / KB], Ktb);
                    if (Vp) pack_v(V + t0 * dv, dv, packed[t0 / KB], Vp + t0 * KB, vstride);
                }
            } else {
                pack_kt(K + t0 * d, d, any, Kt);
            }
            for (size_t g = 0; g < nr; g += MR) {
                const int mr = nr - g < MR ? (int)(nr - g) : MR;
                unsigned gl = 0;
                for (int r = 0; r < mr; r++) gl |= w->live[(g + (size_t)r) * NSUB + b];
                if (!gl) continue;
                const vx_float *Qg = Q + g * d;
                vx_float *Sg = w->S + g * KS + b * KB;
                score_tiles(mr, Qg, d, Ktb, Sg, KS);
            }
        }
        if (!anyrow) continue;
        /* 2. per row: shape and mask, max, rescale, exps and their sum */
        for (size_t r = 0; r < nr; r++) {
            vx_float *Sr = w->S + r * KS;
            unsigned *lvr = w->live + r * NSUB, *nzr = w->nz + r * NSUB;
            vx_t vmax = ninf;
            vx_bool_t nan = vx_false();
            unsigned rowany = 0;
            for (size_t b = 0; b < nsub; b++) {
                const unsigned lv = lvr[b];
                rowany |= lv;
                nzr[b] = 0;
                if (!lv) continue;
                const size_t kn = ks - b * KB < KB ? ks - b * KB : KB;
                vx_t sv[2] = {vx_mul(sc, vx_load(Sr + b * KB)), vx_mul(sc, vx_load(Sr + b * KB + VX_W))};
                if (shp) shape_vec(shp, qa + r, T0 + b * KB, kn, sv, 2);
                if (lv == KB_ALL) {
                    /* every key live: no select; one test for a NaN in
                     * either vector (the max may drop one) */
                    nan = vx_or_b(nan, vx_unord(sv[0], sv[1]));
                    vmax = vx_max(vmax, vx_max(sv[0], sv[1]));
                    vx_store(Sr + b * KB, sv[0]);
                    vx_store(Sr + b * KB + VX_W, sv[1]);
                    continue;
                }
                for (int h = 0; h < 2; h++) {
                    vx_t x = vx_select(vx_lanes(lv >> (h * VX_W)), ninf, sv[h]);
                    nan = vx_or_b(nan, vx_unord(x, x));
                    vmax = vx_max(vmax, x);
                    vx_store(Sr + b * KB + h * VX_W, x);
                }
            }
            if (!rowany) continue;
            if (vx_any(nan)) {
                l[r] = NAN;             /* finish makes the row NaN */
                continue;
            }
            const vx_float bm = vx_hmax(vmax);
            if (bm == -INFINITY) continue;
            if (bm > m[r]) {
                double c = RESCALE(m[r], bm);
                l[r] *= c;
                rescale_acc(ctx + r * dv, dv, (vx_float)c);
                m[r] = bm;
            }
            const vx_t mv = vx_set1((vx_float)m[r]);
            vx_t ps[2];
            double lsum = 0;
#if defined(ATTNX_F32)
            vx_wide_t wsum = vx_wide_zero();
#else
            vx_t vsum = vx_zero();
#endif
            for (size_t b = 0; b < nsub; b++) {
                if (!lvr[b]) continue;
                unsigned nz = 0;
                for (int h = 0; h < 2; h++) {
                    vx_t p = vx_exp_below(vx_load(Sr + b * KB + h * VX_W), mv);   /* S <= m */
                    vx_store(Sr + b * KB + h * VX_W, p);
                    nz |= vx_nz_bits(p) << (h * VX_W);
                    ps[h] = p;
                }
#if defined(ATTNX_F32)
                wsum = vx_wide_add(vx_wide_add(wsum, ps[0]), ps[1]);
#else
                vsum = vx_add(vsum, vx_add(ps[0], ps[1]));
#endif
                nzr[b] = nz;
            }
#if defined(ATTNX_F32)
            lsum = vx_wide_hsum(wsum);
#else
            lsum = vx_hsum(vsum);
#endif
            l[r] += lsum;
            if (l[r] != l[r]) {          /* +inf score: poisoned, nothing more */
                for (size_t b = 0; b < nsub; b++) nzr[b] = 0;
            }
        }
        /* 3. ctx += P V over the superblock, MR rows at a time. A key that
         * only some rows of a group weigh goes through the register tile
         * too, with 0 for the other rows' weights, where its block's value
         * rows are finite (0 * V adds exact zeros); otherwise row by row,
         * so that a 0 weight never meets an inf or NaN value. */
        const vx_float *Vs = V + T0 * dv;
        /* per block: the keys whose value rows were checked, and of those
         * the ones not finite (only rows some row weighs are read) */
        unsigned vchk[NSUB], vbad[NSUB];
        for (size_t b = 0; b < nsub; b++) vchk[b] = vbad[b] = 0;
        for (size_t g = 0; g < nr; g += MR) {
            const int mr = nr - g < MR ? (int)(nr - g) : MR;
            int nk = 0, some = 0;
            size_t b0 = 0;                    /* leading blocks every row weighs whole */
            unsigned part[NSUB], tile[NSUB];  /* keys row by row / through the tile */
            vx_float *Pg = w->S + g * KS;
            for (size_t b = 0; b < nsub; b++) {
                unsigned all = ~0u, one = 0;
                for (int r = 0; r < mr; r++) {
                    all &= w->nz[(g + (size_t)r) * NSUB + b];
                    one |= w->nz[(g + (size_t)r) * NSUB + b];
                }
                const size_t kn = ks - b * KB < KB ? ks - b * KB : KB;
                if (one != all) {
                    for (unsigned bb = one & ~vchk[b]; bb; bb &= bb - 1) {
                        const unsigned i = lowest_bit(bb);
                        if (!all_finite(Vs + (b * KB + i) * dv, dv)) vbad[b] |= 1u << i;
                    }
                    vchk[b] |= one;
                    if (!(one & vbad[b])) {
                        /* the rows' weights of keys they do not weigh: 0 */
                        for (int r = 0; r < mr; r++) {
                            const unsigned nzr = w->nz[(g + (size_t)r) * NSUB + b];
                            if (nzr == one) continue;
                            vx_float *pr = Pg + (size_t)r * KS + b * KB;
                            for (int h = 0; h < 2; h++)
                                vx_store(pr + h * VX_W, vx_select(vx_lanes(nzr >> (h * VX_W)), vx_zero(),
                                                                   vx_load(pr + h * VX_W)));
                        }
                        all = one;
                    }
                }
                if (b0 == b && all == (kn == KB ? KB_ALL : (1u << kn) - 1u)) b0++;
                tile[b] = all;
                part[b] = one & ~all;
                some |= part[b] != 0;
            }
            vx_float *Cg = ctx + g * dv;
            /* the leading whole blocks as one dense tile (causal and
             * window edges leave only the last ones partial), the rest
             * through an index list */
            const size_t lead = b0 * KB < ks ? b0 * KB : ks;
            if (lead) pv_tiles(mr, Pg, NULL, (int)lead, Vs, dv, Vp ? Vp + T0 * KB : NULL, vstride, Cg);
            for (size_t b = b0; b < nsub; b++)
                for (unsigned bb = tile[b]; bb; bb &= bb - 1)
                    w->kidx[nk++] = (unsigned char)(b * KB + lowest_bit(bb));
            if (nk) pv_tiles(mr, Pg, w->kidx, nk, Vs, dv, Vp ? Vp + T0 * KB : NULL, vstride, Cg);
            if (!some) continue;
            /* keys only some rows of the tile weigh, value rows not all
             * finite: row by row, p != 0 only */
            for (size_t b = 0; b < nsub; b++)
                for (unsigned bb = part[b]; bb; bb &= bb - 1) {
                    const unsigned i = lowest_bit(bb);
                    const size_t k = b * KB + i;
                    for (int r = 0; r < mr; r++)
                        if ((w->nz[(g + (size_t)r) * NSUB + b] >> i) & 1)
                            axpy1(Cg + (size_t)r * dv, Pg[(size_t)r * KS + k], Vs + k * dv, dv, 0, 0);
                }
        }
    }
    for (size_t r = 0; r < nr; r++) {
        FINISH(m[r], l[r], ctx + r * dv, dv);
        if (lse) lse[r] = (vx_float)attnx_state_lse(m[r], l[r]);
    }
}

/* Queries [0, nq) against keys [0, T), each seeing what md lets through
 * (see attnx_kernels): few queries fold one by one; more go through
 * rows_chunk, RQ at a time, with K packed transposed (on the stack up to
 * d == KT_STACK). */
static int K_attend_rows(const vx_float *Q, size_t nq, const vx_float *K, const vx_float *V, size_t T, size_t d,
                         size_t dv, vx_float scale, const unsigned char *mask, ptrdiff_t mask_row_stride,
                         const attnx_mods *md, vx_float *ctx, vx_float *lse)
{
    ATTNX_AL64 vx_float kt_stack[(KT_STACK + VX_W) * KB];
    vx_float *Kt = kt_stack;
    unsigned *packed = NULL;            /* per key block: the keys packed so far */
    vx_float *Vp = NULL;
    size_t vstride = 0;
    rows_scratch *w = NULL;
    if (nq >= FEW_QUERIES) {
        w = (rows_scratch *)attnx_malloc_al(sizeof *w);
        const size_t dpad = (d + VX_W - 1) / VX_W * VX_W, nblk = (T + KB - 1) / KB;
        if (w && nq > RQ && nblk * KB * dpad * sizeof(vx_float) <= KT_WHOLE_BYTES) {
            /* K packed once, block by block as first needed, for every chunk */
            Kt = (vx_float *)attnx_malloc_al(nblk * KB * dpad * sizeof(vx_float));
            packed = (unsigned *)calloc(nblk, sizeof *packed);
            if (!Kt || !packed) {
                attnx_free_al(Kt);
                free(packed);
                Kt = kt_stack;
                packed = NULL;
            }
            vstride = nblk * KB * KB;
            const size_t vbytes = (dv + KB - 1) / KB * vstride * sizeof(vx_float);
            if (packed && vbytes <= KT_WHOLE_BYTES) Vp = (vx_float *)attnx_malloc_al(vbytes);   /* else V in place */
        }
        if (w && !packed && d > KT_STACK) Kt = (vx_float *)attnx_malloc_al((d + VX_W) * KB * sizeof(vx_float));
    }
    if (nq < FEW_QUERIES || !w || !Kt) {
        attnx_free_al(w);
        /* one fused pass per query (also the fallback without memory) */
        for (size_t r = 0; r < nq; r++) {
            size_t t0, t1;
            attnx_mods_range(md, r, T, &t0, &t1);
            attnx_mods rm;
            if (md) rm = attnx_mods_row(md, r, t0, sizeof(vx_float));
            attnx_online st = {-INFINITY, 0.0};
            vx_float *c = ctx + r * dv;
            for (size_t j = 0; j < dv; j++) c[j] = 0;
            online_fold(Q + r * d, K + t0 * d, V + t0 * dv, t1 - t0, d, dv, scale,
                        mask ? mask + (ptrdiff_t)r * mask_row_stride + t0 : NULL, md ? &rm : NULL, &st, c,
                        (t1 - t0) * (d + dv) * sizeof(vx_float) > PF_BATCH_BYTES);
            FINISH(st.m, st.l, c, dv);
            if (lse) lse[r] = (vx_float)attnx_state_lse(st.m, st.l);
        }
        return !all_finite(ctx, nq * dv);
    }
    int bad = 0;
    for (size_t r0 = 0; r0 < nq; r0 += RQ) {
        size_t nr = nq - r0 < RQ ? nq - r0 : RQ;
        rows_chunk(Q + r0 * d, nr, r0, K, V, T, d, dv, scale,
                   mask ? mask + (ptrdiff_t)r0 * mask_row_stride : NULL, mask_row_stride, md, ctx + r0 * dv,
                   lse ? lse + r0 : NULL, Kt, packed, Vp, vstride, w);
        bad |= !all_finite(ctx + r0 * dv, nr * dv);   /* in cache */
    }
    attnx_free_al(Vp);
    if (Kt != kt_stack) attnx_free_al(Kt);
    free(packed);
    attnx_free_al(w);
    return bad;
}
#define K_ATTEND_ROWS K_attend_rows
#else
#define K_ATTEND_ROWS NULL   /* api.c folds the queries one by one */
#endif
