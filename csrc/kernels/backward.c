/*
 * kernels/backward.c -- the gradient of attention for one batch item, tiled
 * (the FlashAttention-2 backward in one pass over the keys), over the same
 * pieces as the forward's tiled kernel (kernels/attend.c: pack_kt,
 * score_tile, mm_tile, shape_vec).
 *
 * For a block of KB keys [t0, t0 + KB) and every query row r that sees one
 * of them, MR rows at a time:
 *   S  = scale Q_r K^T (shaped: softcap, bias, ALiBi)  dP = dO_r V^T
 *   P  = exp(S - lse_r)  (0 for a key the row does not see)
 *   dS = P (dP - D_r)    (times sech^2 of the softcap's argument)
 *   dV_t += sum_r P_rt dO_r     dK_t += sum_r dS_rt Q_r     dQ_r += dS_rt K_t
 * dK and dV of the block accumulate in a local buffer, rows in order, and
 * are written once; dQ rows accumulate in the caller's buffer, key blocks
 * in order. Every sum runs in an order fixed by the shapes: the caller
 * splits work by batch item (and key range), never by thread. dK and dQ
 * are returned without the factor scale, which the caller applies.
 * lse_r holds the rounding of lse itself, eps |lse_r|: past |lse| of 64
 * that is more than the weights' other errors, so for such rows the caller
 * asks for the row's own state first (row_states: the largest score m_r
 * and l_r = sum exp(S - m_r), one more Q K^T pass over those rows alone)
 * and P = exp(S - m_r) / l_r. Every row goes through the same two numbers,
 * (shift, wt) = (lse, 1) or (m, 1 / l): P = exp(S - shift) wt.
 * Memory: O(KB (d + dv)) of scratch and aligned copies of Q and dO,
 * O(Lq (d + dv)); nothing of size Lq x T.
 */

#if VX_ROWS_KERNEL
/* The packed K, V, dK and dV blocks on the stack up to this many bytes
 * (d = dv = 64 at every level), else malloc: a kernel's frame stays within
 * a small thread stack (musl's 128 KiB, a threading.stack_size caller's). */
#define BK_STACK_BYTES ((size_t)40 << 10)
#define VX_LANES_ALL ((1u << VX_W) - 1u)
#define RG (8 * MR)           /* rows whose P and dS go into one dV and dK product */
MM_TILES(mm_tiles_kb, KB, 1)   /* C += dS B, dS rows KB apart */
MM_TILES(mm_tiles_t, 1, KB)    /* C += P^T B, P rows KB apart */

/* sech^2(y) = 1 - tanh^2(y) = 4e / (1 + e)^2 with e = exp(-2 |y|): 1 - t^2
 * cancels where tanh nears 1 (every bit lost by |y| of 19 in float64, 9 in
 * float32); this keeps a few ulp. 0 where e would leave the exp's normal
 * range (|y| past 353.5 / 43.25): such a term is below the rounding of every
 * normal gradient, and a subnormal e would cost Intel cores an assist. */
#if defined(ATTNX_F32)
#define SECH2_LO (-86.5f)
#else
#define SECH2_LO (-707.0)
#endif
VX_INLINE vx_t sech2_vec(vx_t y)
{
    const vx_t z = vx_mul(vx_set1(-2), vx_abs(y));
    const vx_bool_t ok = vx_ge(z, vx_set1(SECH2_LO));
    const vx_t e = vx_exp2sum(vx_select(ok, vx_zero(), z), vx_zero()), s = vx_add(vx_set1(1), e);
    return vx_select(ok, vx_zero(), vx_div(vx_mul(vx_set1(4), e), vx_mul(s, s)));
}

/* Row `row`'s scores of a block as the forward shapes them, from its
 * score_tile row S: scale, softcap (its derivative into gv), bias, ALiBi */
VX_INLINE void row_scores(const vx_float *S, vx_t sc, const attnx_mods *md, const attnx_mods *rest, int shaped,
                          size_t row, size_t t0, size_t kn, vx_t *sv, vx_t *gv)
{
    sv[0] = vx_mul(sc, vx_load(S));
    sv[1] = vx_mul(sc, vx_load(S + VX_W));
    if (md->softcap > 0) {
        const vx_t cv = vx_set1((vx_float)md->softcap);
        for (int h = 0; h < 2; h++) {
            vx_t y;
            sv[h] = softcap_vec(cv, sv[h], &y);
            gv[h] = sech2_vec(y);
        }
    }
    if (shaped) shape_vec(rest, row, t0, kn, sv, 2);
}

/* The keys of [t0, t0 + kn) that row `row` sees: its range [a, b) and its
 * mask row; none where shift is -inf (the row attends nothing) */
VX_INLINE unsigned row_keys(size_t a, size_t b, size_t t0, size_t kn, const unsigned char *mask,
                            ptrdiff_t mask_row_stride, size_t row, vx_float shift)
{
    unsigned lv = kn == KB ? KB_ALL : (1u << kn) - 1u;
    if (a >= t0 + kn || b <= t0 || shift == -INFINITY) return 0;
    if (a > t0) lv &= ~((1u << (a - t0)) - 1u);
    if (b < t0 + kn) lv &= (1u << (b - t0)) - 1u;
    if (lv && mask) lv &= vx_bytes_nz(mask + (ptrdiff_t)row * mask_row_stride + (ptrdiff_t)t0, kn);
    return lv;
}

/* A row's (shift, wt) from its state (m, l), row by row: out of line, so
 * that no vectorised loop compares the masked-off lanes of its loads,
 * whatever bits they hold (a subnormal among them raised DE: an assist on
 * Intel), as an if-converted loop over the rows did. */
static TILE_NOINLINE void state_pair(double m, double l, vx_float *shift, vx_float *wt)
{
    *shift = l != l ? (vx_float)NAN : (vx_float)m;
    *wt = l != l ? (vx_float)NAN : m == -INFINITY ? (vx_float)1 : (vx_float)(1.0 / l);
}

/* The rows whose wt is 0: shift = the largest score the row sees, wt =
 * 1 / sum exp(score - shift) over its keys (l in double), from the scores
 * as the pass below computes them, bit for bit. A row that sees nothing
 * gets shift -inf; a NaN or +inf score makes both NaN (as its lse was). */
static TILE_NOINLINE int row_states(const vx_float *Q, const vx_float *K, size_t Lq, size_t T, size_t d, vx_float scale,
                      const unsigned char *mask, ptrdiff_t mask_row_stride, const attnx_mods *md,
                      const attnx_mods *rest, int shaped, vx_float *shift, vx_float *wt, vx_float *Kt,
                      vx_float *Sbuf)
{
    size_t f0 = Lq, f1 = 0;
    for (size_t r = 0; r < Lq; r++)
        if (wt[r] == 0) {
            if (f0 == Lq) f0 = r;
            f1 = r + 1;
        }
    if (f0 == Lq) return 0;
    double *m = (double *)malloc(2 * (f1 - f0) * sizeof(double)), *l = m + (f1 - f0);
    if (!m) return -1;
    for (size_t r = f0; r < f1; r++) m[r - f0] = -INFINITY, l[r - f0] = 0;
    const vx_t sc = vx_set1(scale), ninf = vx_set1(-INFINITY);
    for (size_t t0 = 0; t0 < T; t0 += KB) {
        const size_t kn = T - t0 < KB ? T - t0 : KB;
        unsigned any = 0;
        for (size_t r = f0; r < f1; r++) {
            size_t a, b;
            attnx_mods_range(md, r, T, &a, &b);
            if (wt[r] == 0 && l[r - f0] == l[r - f0])
                any |= row_keys(a, b, t0, kn, mask, mask_row_stride, r, 0);
        }
        if (!any) continue;
        pack_kt(K + t0 * d, d, any, Kt);
        for (size_t g = f0; g < f1; g += MR) {
            const int mr = f1 - g < MR ? (int)(f1 - g) : MR;
            unsigned lv[MR], gl = 0;
            for (int r = 0; r < mr; r++) {
                size_t a, b, row = g + (size_t)r;
                attnx_mods_range(md, row, T, &a, &b);
                lv[r] = wt[row] == 0 && l[row - f0] == l[row - f0]
                            ? row_keys(a, b, t0, kn, mask, mask_row_stride, row, 0) : 0;
                gl |= lv[r];
            }
            if (!gl) continue;
            score_tiles(mr, Q + g * d, d, Kt, Sbuf, KB);
            for (int r = 0; r < mr; r++) {
                if (!lv[r]) continue;
                const size_t row = g + (size_t)r;
                double *mr_ = m + (row - f0), *lr = l + (row - f0);
                vx_t sv[2], gv[2];
                row_scores(Sbuf + KB * r, sc, md, rest, shaped, row, t0, kn, sv, gv);
                vx_bool_t nan = vx_false();
                vx_t mx = ninf;
                for (int h = 0; h < 2; h++) {
                    sv[h] = vx_select(vx_lanes(lv[r] >> (h * VX_W)), ninf, sv[h]);
                    nan = vx_or_b(nan, vx_unord(sv[h], sv[h]));
                    mx = vx_max(mx, sv[h]);
                }
                const vx_float bm = vx_hmax(mx);
                if (vx_any(nan) || bm == INFINITY) {
                    *lr = NAN;
                    continue;
                }
                if (bm == -INFINITY) continue;
                if (bm > *mr_) {
                    *lr *= RESCALE(*mr_, bm);
                    *mr_ = bm;
                }
                const vx_t mv = vx_set1((vx_float)*mr_);
                vx_t p[2] = {vx_exp_diff(sv[0], mv), vx_exp_diff(sv[1], mv)};
                *lr += lane_sum(p, 2);
            }
        }
    }
    for (size_t r = f0; r < f1; r++)
        if (wt[r] == 0) state_pair(m[r - f0], l[r - f0], shift + r, wt + r);
    free(m);
    return 0;
}

/* Gradients of queries [0, Lq) against keys [k0, k1) of K (rows d apart;
 * V rows dv apart): dK and dV rows k0..k1 are overwritten, dQ (rows d
 * apart) accumulated into; dSo (NULL: not wanted; rows ldS apart) gets dS
 * of the keys each row sees (the caller zeroes the rest). D_r = dO_r . O_r;
 * P = exp(S - shift_r) wt_r (see the top), the rows whose wt is 0 first
 * given their state (row_states, over all of [0, T)); mask rows
 * mask_row_stride apart (NULL: none); md the item's mods (never NULL).
 * Returns 0, or -1 when scratch could not be allocated. */
static int K_attend_backward(const vx_float *Q_in, const vx_float *K, const vx_float *V, const vx_float *dO_in,
                             vx_float *shift, vx_float *wt, const vx_float *D, size_t Lq, size_t T, size_t d, size_t dv,
                             vx_float scale, const unsigned char *mask, ptrdiff_t mask_row_stride,
                             const attnx_mods *md, size_t k0, size_t k1, vx_float *dQ, vx_float *dK, vx_float *dV,
                             vx_float *dSo, size_t ldS)
{
    ATTNX_AL64 vx_float stack[BK_STACK_BYTES / sizeof(vx_float)];
    vx_float *buf = stack;
    const size_t dp = d + VX_W, vp = dv + VX_W, nbuf = 2 * (dp + vp) * KB;
    unsigned *lives = (unsigned *)malloc((Lq ? Lq : 1) * sizeof(unsigned));
    if (lives && nbuf > sizeof stack / sizeof *stack) buf = (vx_float *)attnx_malloc_al(nbuf * sizeof(vx_float));
    if (!lives || !buf) {
        free(lives);
        return -1;
    }
    vx_float *Kt = buf, *Vt = Kt + dp * KB, *dKb = Vt + vp * KB, *dVb = dKb + dp * KB;
    /* Q, dO and the block's key rows in 64-byte aligned copies: every key
     * block's products read all of Q and dO, and NumPy's rows lie 16 bytes
     * off a cache line (a load across two lines takes two slots): 3% of
     * the backward's time on Intel (family 6 model 167), the same bits.
     * The caller's own where memory is short. */
    const size_t cap = SIZE_MAX / sizeof(vx_float) / 2;   /* no size below wraps */
    vx_float *acopy = k1 > k0 && Lq <= cap / (d + dv + 1) && KB * d <= cap
                          ? (vx_float *)attnx_malloc_al((Lq * (d + dv) + KB * d) * sizeof(vx_float))
                          : NULL;
    const vx_float *Q = Q_in, *dO = dO_in;
    vx_float *Kr = NULL;
    if (acopy) {
        memcpy(acopy, Q_in, Lq * d * sizeof(vx_float));
        memcpy(acopy + Lq * d, dO_in, Lq * dv * sizeof(vx_float));
        Q = acopy;
        dO = acopy + Lq * d;
        Kr = acopy + Lq * (d + dv);
    }
    ATTNX_AL64 vx_float Sbuf[RG * KB];
    ATTNX_AL64 vx_float dSbuf[RG * KB];
    const vx_t sc = vx_set1(scale), zero = vx_zero();
    const int capped = md->softcap > 0;
    attnx_mods rest = *md;                  /* after the softcap: bias, ALiBi */
    rest.softcap = 0;
    const int shaped = attnx_mods_shape(&rest);
    if (row_states(Q, K, Lq, T, d, scale, mask, mask_row_stride, md, &rest, shaped, shift, wt, Kt, Sbuf)) {
        if (buf != stack) attnx_free_al(buf);
        attnx_free_al(acopy);
        free(lives);
        return -1;
    }
    /* queries and dO finite (with the block's packed keys and values,
     * below): a pair that does not count (unseen, weight 0) adds an exact 0
     * to the products, so whole tiles may take it. Keys and values are
     * checked as packed: rows no query sees are never read. */
    const int qd_finite = all_finite(Q, Lq * d) && all_finite(dO, Lq * dv);
    size_t rfirst = 0;                      /* rows before it see no key from here on */
    for (size_t t0 = k0; t0 < k1; t0 += KB) {
        const size_t kn = k1 - t0 < KB ? k1 - t0 : KB;
        const unsigned base = kn == KB ? KB_ALL : (1u << kn) - 1u;
        for (size_t j = 0; j < kn * d; j++) dKb[j] = 0;
        for (size_t j = 0; j < kn * dv; j++) dVb[j] = 0;
        while (rfirst < Lq) {               /* row ranges only move right */
            size_t a, b;
            attnx_mods_range(md, rfirst, T, &a, &b);
            if (b > t0 || a >= b) break;
            rfirst++;
        }
        /* which rows see which keys of the block; the rows that see one
         * end at rend (row ranges start in order) */
        unsigned any = 0;
        size_t rend = rfirst;
        for (size_t row = rfirst; row < Lq; row++) {
            size_t a, b;
            attnx_mods_range(md, row, T, &a, &b);
            if (a >= t0 + kn && a < b) break;
            const unsigned lv = row_keys(a, b, t0, kn, mask, mask_row_stride, row, shift[row]);
            lives[row] = lv;
            any |= lv;
            rend = row + 1;
        }
        int finite = 0;
        if (any) {
            pack_kt(K + t0 * d, d, any, Kt);    /* keys no row sees stay unread */
            if (Kr)
                for (size_t i = 0; i < kn; i++)
                    if ((any >> i) & 1) memcpy(Kr + i * d, K + (t0 + i) * d, d * sizeof(vx_float));
            pack_kt(V + t0 * dv, dv, any, Vt);
            finite = qd_finite && all_finite(Kt, d * KB) && all_finite(Vt, dv * KB);
        }
        const vx_float *Kb = Kr ? Kr : K + t0 * d;   /* the block's key rows, for dQ */
        for (size_t G = rfirst; any && G < rend; G += RG) {
            const size_t gend = rend - G < RG ? rend : G + RG;
            for (size_t g = G; g < gend; g += MR) {
                const int mr = gend - g < MR ? (int)(gend - g) : MR;
                unsigned *live = lives + g;
                vx_float *S = Sbuf + (g - G) * KB, *dS = dSbuf + (g - G) * KB;
                unsigned gl = 0;
                for (int r = 0; r < mr; r++) gl |= live[r];
                if (!gl) {
                    /* zeros for the group's rows of the RG-row dV and dK products */
                    for (size_t j = 0; finite && j < (size_t)mr * KB; j++) S[j] = dS[j] = 0;
                    continue;
                }
                const vx_float *Qg = Q + g * d, *dOg = dO + g * dv;
                score_tiles(mr, Qg, d, Kt, S, KB);
                score_tiles(mr, dOg, dv, Vt, dS, KB);
                for (int r = 0; r < mr; r++) {
                    const size_t row = g + (size_t)r;
                    const unsigned lv = live[r];
                    if (!lv) {
                        for (int h = 0; h < 2; h++) {
                            vx_store(S + KB * r + h * VX_W, zero);
                            vx_store(dS + KB * r + h * VX_W, zero);
                        }
                        continue;
                    }
                    vx_t sv[2], gv[2] = {zero, zero};
                    row_scores(S + KB * r, sc, md, &rest, shaped, row, t0, kn, sv, gv);
                    const vx_t lv_ = vx_set1(shift[row]), wv = vx_set1(wt[row]), Dv = vx_set1(D[row]);
                    const int own = wt[row] != 1;   /* a row of its own state: times 1 / l */
                    unsigned weighs = 0;   /* the seen keys whose weight is not 0 */
                    for (int h = 0; h < 2; h++) {
                        const unsigned on = (lv >> (h * VX_W)) & VX_LANES_ALL;
                        vx_t p = vx_exp_diff(sv[h], lv_);
                        /* unseen lanes to 0 first: their exp (of a padding or
                         * masked score, against a large m) can be subnormal, an
                         * operand 1 / l must not take */
                        if (on != VX_LANES_ALL) p = vx_select(vx_lanes(on), zero, p);
                        if (own) {
                            p = vx_mul(p, wv);
                            /* and again after: a NaN wt made them NaN, and a
                             * weight beyond the block's keys ran the key loops
                             * below past them */
                            if (on != VX_LANES_ALL) p = vx_select(vx_lanes(on), zero, p);
                        }
                        const unsigned nzp = vx_nz_bits(p);
                        weighs |= nzp << (h * VX_W);
                        vx_t ds = vx_mul(p, vx_sub(vx_load(dS + KB * r + h * VX_W), Dv));
                        /* a key unseen or of weight 0 (-inf score, underflow):
                         * ds is 0, whatever dP and D (as the scalar level) */
                        if (nzp != VX_LANES_ALL) ds = vx_select(vx_lanes(nzp), zero, ds);
                        if (dSo && (size_t)h * VX_W < kn) {   /* the bias's gradient: before the softcap's */
                            vx_float *o = dSo + row * ldS + t0 + (size_t)h * VX_W;
                            const size_t nl = kn - (size_t)h * VX_W;
                            if (nl >= VX_W) vx_store(o, ds);
                            else vx_store_part(o, vx_tail(nl), ds);
                        }
                        if (capped) ds = vx_mul(ds, gv[h]);
                        vx_store(S + KB * r + h * VX_W, p);
                        vx_store(dS + KB * r + h * VX_W, ds);
                    }
                    live[r] = weighs;      /* the products below take these pairs only */
                }
                gl = 0;
                for (int r = 0; r < mr; r++) gl |= live[r];
                if (!gl) continue;   /* S and dS rows are 0 */
                vx_float *dQg = dQ + g * d;
                if (finite) {
                    /* whole tiles: every row of the group, the keys any row
                     * weighs (P and dS are 0 on the pairs that do not count) */
                    unsigned char gidx[KB];
                    int ng = 0;
                    for (unsigned b = gl; b; b &= b - 1) gidx[ng++] = (unsigned char)lowest_bit(b);
                    mm_tiles_kb(mr, dS, gl == base ? NULL : gidx, gl == base ? (int)kn : ng, Kb, d, d, dQg, d);
                    continue;            /* dV and dK: over the RG rows, below */
                }
                /* Some operand not finite: exactly the (row, key) pairs where
                 * the row sees the key with a weight that is not 0, since a 0
                 * weight times a non-finite key, value, query or dO row must not
                 * reach a gradient. Keys every live row of the group weighs (al)
                 * go through the tiles, the rest (part) through one-row tiles
                 * with index lists; a row that weighs no key of the block is
                 * never written nor read. */
                unsigned al = ~0u;
                int nlive = 0, nk_al = 0;
                unsigned char ridx[MR], aidx[KB];
                for (int r = 0; r < mr; r++)
                    if (live[r]) {
                        al &= live[r];
                        ridx[nlive++] = (unsigned char)r;
                    }
                const unsigned part = gl & ~al;
                const unsigned char *ki = NULL;   /* al is every key of the block */
                if (al == base) nk_al = (int)kn;
                else {
                    for (unsigned b = al; b; b &= b - 1) aidx[nk_al++] = (unsigned char)lowest_bit(b);
                    ki = aidx;
                }
                if (nk_al) {
                    /* dQ_r += dS_r K_al, over runs of live rows */
                    for (int r0 = 0; r0 < mr;) {
                        if (!live[r0]) {
                            r0++;
                            continue;
                        }
                        int r1 = r0 + 1;
                        while (r1 < mr && live[r1]) r1++;
                        mm_tiles_kb(r1 - r0, dS + KB * r0, ki, nk_al, Kb, d, d, dQg + (size_t)r0 * d,
                                    d);
                        r0 = r1;
                    }
                    /* dV_al += P^T dO_g, dK_al += dS^T Q_g: keys as rows (runs
                     * of al), live rows summed */
                    const unsigned char *ri = nlive == mr ? NULL : ridx;
                    for (unsigned b = al; b;) {
                        const size_t t = lowest_bit(b);
                        size_t te = t;
                        while (te < kn && ((b >> te) & 1)) te++;
                        b = te >= kn ? 0u : b & ~((1u << te) - 1u);   /* no key past kn */
                        for (size_t u = t; u < te; u += MR) {
                            const int mt = te - u < MR ? (int)(te - u) : MR;
                            mm_tiles_t(mt, S + u, ri, nlive, dOg, dv, dv, dVb + u * dv, dv);
                            mm_tiles_t(mt, dS + u, ri, nlive, Qg, d, d, dKb + u * d, d);
                        }
                    }
                }
                /* the rest (part): a row's part keys as an index list into a
                 * one-row tile (dQ), a key's rows as one (dV, dK) */
                for (int r = 0; part && r < mr; r++) {
                    const unsigned pr = live[r] & part;
                    if (!pr) continue;
                    unsigned char kr[KB];
                    int n = 0;
                    for (unsigned b = pr; b; b &= b - 1) kr[n++] = (unsigned char)lowest_bit(b);
                    mm_tiles_kb(1, dS + KB * r, kr, n, Kb, d, d, dQg + (size_t)r * d, d);
                }
                for (unsigned b = part; b; b &= b - 1) {
                    const unsigned k = lowest_bit(b);
                    unsigned char rk[MR];
                    int n = 0;
                    for (int r = 0; r < mr; r++)
                        if ((live[r] >> k) & 1) rk[n++] = (unsigned char)r;
                    mm_tiles_t(1, S + k, rk, n, dOg, dv, dv, dVb + (size_t)k * dv, dv);
                    mm_tiles_t(1, dS + k, rk, n, Qg, d, d, dKb + (size_t)k * d, d);
                }
            }
            if (finite) {
                /* dV += P^T dO, dK += dS^T Q over the RG rows at once: one load
                 * and store of the key rows' sums per RG rows, not per MR */
                const int nrg = (int)(gend - G);
                for (size_t u = 0; u < kn; u += MR) {
                    const int mt = kn - u < MR ? (int)(kn - u) : MR;
                    mm_tiles_t(mt, Sbuf + u, NULL, nrg, dO + G * dv, dv, dv, dVb + u * dv, dv);
                    mm_tiles_t(mt, dSbuf + u, NULL, nrg, Q + G * d, d, d, dKb + u * d, d);
                }
            }
        }
        for (size_t j = 0; j < kn * d; j++) dK[t0 * d + j] = dKb[j];
        for (size_t j = 0; j < kn * dv; j++) dV[t0 * dv + j] = dVb[j];
    }
    if (buf != stack) attnx_free_al(buf);
    attnx_free_al(acopy);
    free(lives);
    return 0;
}
#define K_ATTEND_BACKWARD K_attend_backward
#else
#define K_ATTEND_BACKWARD NULL   /* api_backward.h's row-by-row passes */
#endif
