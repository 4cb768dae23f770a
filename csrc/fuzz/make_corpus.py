#!/usr/bin/env python3
"""Write the seed corpus of fuzz_attnx.c into csrc/fuzz/corpus/.

Each seed is one meaningful case in the harness's input format (documented
at the top of fuzz_attnx.c): the tutorial's worked example, the rows of
docs/failure-model.md, the SIMD kernels' size thresholds, invalid and
overlapping arguments. Seeds are named seed-*; inputs the fuzzer found
(minimised reproducers of reported bugs) are named bug-* and kept as they
are. Re-running rewrites the seed-* files only.

    python3 csrc/fuzz/make_corpus.py
"""
import math
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

OPS = {"attend": 0, "softmax": 2, "dot_scores": 3, "context": 4, "exp": 5,
       "attend_batch": 6, "softmax_rows": 7, "dot_scores_batch": 8, "context_batch": 9,
       # first bytes >= 0x80 (no older input has one): the struct entry point
       # and friends, each followed by the 12 bytes of xheader(); bit 2: float32
       "attention": 0x80, "merge_chunks": 0x81, "merge_raw": 0x82, "backward": 0x83,
       # bits 3 and 4 set as well: additive attention (the attend_batch header)
       "additive_attention": 0xf8}
F32 = 4
MASK, CAUSAL, WEIGHTS, INPLACE, OVERLAP, INVALID, WIDE, ALIAS = (1 << i for i in range(8))
SCALE_ONE, SCALE_RSQRT, SCALE_VALUE = 0, 1, 2
MASK_DATA, MASK_NONE_ATTEND, MASK_ALL_ATTEND, MASK_WINDOW = 0, 1, 2, 3


def header(op, flags=0, T=0, d=0, dv=0, Lq=0, nbatch=0, shape=(1, 1, 1), zero_dim=None,
           bc_q=0, bc_k=0, gap=0, bc_v=0, bc_m=0, mrs_mode=0, neg=0, scale=SCALE_ONE,
           unit_exp=0, mask_mode=0, mask_a=0, mask_b=0, mis_a=0, mis_b=0, inval=0, threads=0, f32=False):
    """The 21 header bytes; unit_exp: ordinary values are multiples of 2**unit_exp."""
    b7 = nbatch | ((4 | (zero_dim << 3)) if zero_dim is not None else 0)
    b8 = sum(((s - 1) & 3) << (2 * i) for i, s in enumerate(shape))
    if flags & WIDE and dv >= 128:   # wide: bytes 128..255 stand for 173..300
        assert dv >= 173, "with WIDE, dv is 0..127 or 173..300"
        dv -= 45
    return bytes([OPS[op] | (F32 if f32 else 0), flags, T & 0xff, T >> 8, d, dv, Lq, b7, b8,
                  bc_q | bc_k << 3 | gap << 6, bc_v | bc_m << 3 | mrs_mode << 6, neg, scale,
                  unit_exp + 6, mask_mode, mask_a, mask_b, mis_a, mis_b, inval, threads])


# ops 10-13 (first byte >= 0x80): the options of attnx_attention_params
A_BIAS, A_ALIBI, A_KLEN, A_WINDOW, A_LOWER_RIGHT, A_SOFTCAP, A_LSE = (1 << i for i in range(7))
A_ALL = A_BIAS | A_ALIBI | A_KLEN | A_WINDOW | A_LOWER_RIGHT | A_SOFTCAP | A_LSE
BIAS_DENSE, BIAS_ROW_SHARED, BIAS_PADDED, BIAS_NEGATIVE = range(4)
KLEN_DATA, KLEN_FULL, KLEN_HALF, KLEN_FIRST_ZERO = range(4)
OFF_AS_IS, OFF_DECODER, OFF_FAR, OFF_TIMES16 = range(4)
SIZE_V4, SIZE_V3, SIZE_LARGER = 0, 1, 2


def xheader(opts=0, bias_rows=BIAS_DENSE, bias_col0=False, bc_bias=0, bias_nan_seen=False,
            bias_nan_unseen=False, bias_pick=0, bc_slope=0, bc_klen=0, klen_mode=KLEN_DATA, wl=-1, wr=-1,
            qoff=0, koff=0, off_mode=OFF_AS_IS, cap_mode=1, size_mode=SIZE_V4, aux=0):
    """The 12 bytes after the header of ops 10-13 (fuzz_attnx.c: read_xheader).
    cap_mode: 0 softcap from the data, 1..7: 1, 5, 30, 0.5, 1e-3, 1e4, 2.
    wl, wr: window sides (< 0 unbounded); qoff, koff: offsets, -128..127.
    aux: merge_chunks: chunks - 1 (mod 4); backward: grad_out broadcast bits."""
    b1 = bias_rows | (4 if bias_col0 else 0) | bc_bias << 3 | (64 if bias_nan_seen else 0) \
        | (128 if bias_nan_unseen else 0)
    return bytes([opts, b1, bias_pick, bc_slope | bc_klen << 3 | klen_mode << 6, wl & 0xff, wr & 0xff,
                  qoff & 0xff, koff & 0xff, off_mode, cap_mode, size_mode, aux])


def val(x, unit=1.0):
    """One value: a single byte where it is a small multiple of the unit."""
    if math.isnan(x):
        return bytes([0xd0 | (math.copysign(1, x) < 0)])
    if math.isinf(x):
        return bytes([0xd8 | (x < 0)])
    if x == 0:
        return bytes([0xc8 | (math.copysign(1, x) < 0)])
    k = x / unit
    if k == int(k) and -64 <= k <= 63:
        return bytes([int(k) + 64])
    return bytes([0xc0]) + struct.pack("<d", x)


def vals(xs, unit=1.0):
    return b"".join(val(float(x), unit) for x in xs)


def flat(rows):
    return [x for r in rows for x in r]


def mask_bytes(bits):
    """MASK_DATA mode: one byte per key, odd = attends."""
    return bytes(1 if b else 0 for b in bits)


SEEDS = {}


def seed(name, data):
    assert name not in SEEDS, name
    SEEDS[name] = data


# ---- the worked example (DESIGN.md): q against four annotations, V = K
Q = [5, 1, 20]
KEYS = [[3, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]]
seed("attend-worked-example-weights",
     header("attend", WEIGHTS | ALIAS, T=4, d=3, dv=3) + vals(Q) + vals(flat(KEYS)))
seed("attend-worked-example-fused",
     header("attend", ALIAS, T=4, d=3, dv=3) + vals(Q) + vals(flat(KEYS)))
seed("softmax-worked-example-scores", header("softmax", T=4) + vals([927, 397, 148, 929]))
seed("dot-scores-worked-example", header("dot_scores", T=4, d=3) + vals(Q) + vals(flat(KEYS)))

# ---- failure-model rows: values
nan, inf = float("nan"), float("inf")
seed("attend-nan-in-query", header("attend", WEIGHTS, T=5, d=4, dv=2)
     + vals([1, nan, 2, 3]) + vals(range(20)) + vals(range(10)))
seed("attend-mask-nan-in-masked-rows", header("attend", WEIGHTS | MASK, T=6, d=2, dv=2)
     + vals([1, 2]) + vals([1, 1, 2, 2, nan, nan, inf, -inf, 3, 3, 4, 4])
     + vals([1, 2, 3, 4, nan, nan, inf, inf, 9, 10, 11, 12]) + mask_bytes([1, 1, 0, 0, 1, 1]))
seed("attend-all-masked", header("attend", WEIGHTS | MASK, T=9, d=3, dv=2, mask_mode=MASK_NONE_ATTEND)
     + vals([nan] * 3 + [inf] * 27 + [nan] * 18))
seed("attend-plus-inf-score", header("attend", WEIGHTS, T=2, d=1, dv=1)
     + vals([1e308]) + vals([10, 1]) + vals([1, 2]))
seed("attend-huge-scores", header("attend", WEIGHTS, T=4, d=1, dv=2)
     + vals([1.0]) + vals([1e308, -1e308, 1.7e308, 5e307]) + vals(range(8)))
seed("attend-all-scores-minus-inf", header("attend", WEIGHTS, T=3, d=1, dv=2)
     + vals([-1e308]) + vals([1e308, 1e300 * 1e8, 1e308]) + vals(range(6)))
seed("attend-subnormals", header("attend", WEIGHTS, T=4, d=3, dv=2)
     + vals([1e-310] * 3) + vals([1e-10] * 12) + vals(range(8)))
seed("attend-d0", header("attend", WEIGHTS, T=7, d=0, dv=3) + vals(range(21)))
seed("attend-dv0", header("attend", WEIGHTS, T=7, d=3, dv=0) + vals(range(24)))
seed("attend-spread-1000", header("attend", WEIGHTS, T=16, d=1, dv=1, scale=SCALE_VALUE)
     + vals([1.0]) + vals([1.0]) + vals([-500 + 1000 * i / 15 for i in range(16)]) + vals(range(16)))
seed("attend-mask-window-nonzero-bytes", header("attend", WEIGHTS | MASK, T=40, d=8, dv=8,
                                                 mask_mode=MASK_ALL_ATTEND | 4, unit_exp=-3))
seed("attend-long-misaligned", header("attend", 0, T=300, d=16, dv=8, mis_a=0xff, mis_b=3,
                                      scale=SCALE_RSQRT, unit_exp=-4))
seed("attend-wide-d-dv", header("attend", WEIGHTS | WIDE, T=40, d=136, dv=264, unit_exp=-5))
seed("attend-empty", header("attend", WEIGHTS, T=0, d=3, dv=2))
# a value row of final weight exactly 0, read early by the fused pass (inf * 0)
ZW_K = [0, -1e300, -1e300, -1e300, 400, -1e300, -1e300, -1e300, 800]
seed("attend-zero-weight-inf-value", header("attend", WEIGHTS, T=9, d=1, dv=1)
     + vals([1]) + vals(ZW_K) + vals([inf] + [1] * 8))
seed("attend-batch-zero-weight-nan-value-tiled", header("attend_batch", 0, T=9, d=1, dv=1, Lq=6)
     + vals([1] * 6) + vals(ZW_K) + vals([nan] + [1] * 8))
# finite values whose unnormalised sum overflows: the context is 1e308
seed("attend-overflow-finite-context", header("attend", WEIGHTS, T=2, d=1, dv=1)
     + vals([0]) + vals([0, 0]) + vals([1e308, 1e308]))
seed("attend-batch-overflow-finite-context-tiled", header("attend_batch", CAUSAL, T=8, d=1, dv=2, Lq=8)
     + vals([0] * 8) + vals([0] * 8) + vals([1e308, -1e308] * 8))

# ---- invalid arguments and overlapping outputs
for i, what in enumerate(["q", "K", "V", "ctx"]):
    seed(f"attend-null-{what}", header("attend", INVALID | WEIGHTS, T=3, d=2, dv=2, inval=i))
seed("attend-invalid-empty", header("attend", INVALID, T=3, d=2, dv=2, inval=4))
seed("attend-invalid-overflow", header("attend", INVALID, T=3, d=2, dv=2, inval=5))
seed("attend-invalid-overflow-d0-dv0-weights", header("attend", INVALID | WEIGHTS, T=3, d=0, dv=0, inval=5))
seed("attend-overlap-ctx-weights", header("attend", OVERLAP | WEIGHTS, T=6, d=2, dv=4, inval=0 | 1 << 2))
seed("attend-overlap-ctx-in-K", header("attend", OVERLAP, T=6, d=3, dv=2, inval=1 | 3 << 2))
seed("attend-overlap-weights-in-V", header("attend", OVERLAP | WEIGHTS, T=4, d=2, dv=3, inval=2))
seed("softmax-partial-overlap", header("softmax", OVERLAP, T=10, inval=3))
seed("softmax-invalid-overflow", header("softmax", INVALID, T=4, inval=2))
seed("dot-scores-overlap-in-K", header("dot_scores", OVERLAP, T=3, d=4, inval=0))
seed("context-overlap-in-w", header("context", OVERLAP, T=8, dv=3, inval=2))
seed("exp-partial-overlap", header("exp", OVERLAP, T=9, inval=4))

# ---- softmax, exp, dot_scores, context
seed("softmax-specials", header("softmax", T=6) + vals([0, -inf, 3, -inf, 1e-320, -1e308]))
seed("softmax-all-minus-inf", header("softmax", T=3) + vals([-inf] * 3))
seed("softmax-plus-inf", header("softmax", T=3) + vals([1, inf, 2]))
seed("softmax-long-in-place", header("softmax", INPLACE, T=300, unit_exp=2))
seed("softmax-rows", header("softmax_rows", T=33, Lq=5, unit_exp=-2, threads=1))
seed("exp-edges", header("exp", T=16) + vals([0, -0.0, 1, -1, 709.78, 709.79, -745.13, -745.14, -708.4,
                                              -1e308, 1e308, inf, -inf, nan, 5e-324, 0.5]))
seed("exp-long", header("exp", T=257, unit_exp=3))
seed("dot-scores-nan-and-d0", header("dot_scores", T=3, d=0, scale=SCALE_VALUE) + vals([3.5]))
seed("dot-scores-long", header("dot_scores", T=37, d=67, unit_exp=-3))
seed("context-zero-weights-skip-inf-rows", header("context", T=4, dv=3)
     + vals([0.5, 0.0, -0.0, 0.5]) + vals([1, 2, 3, inf, nan, inf, nan, -inf, 1, 4, 5, 6]))
seed("context-empty", header("context", T=0, dv=5))

# ---- batches
seed("attend-batch-causal-broadcast", header("attend_batch", CAUSAL | WEIGHTS, T=7, d=4, dv=3, Lq=5, nbatch=2,
                                             shape=(2, 3, 1), bc_k=1, bc_v=1, unit_exp=-2))
seed("attend-batch-causal-fused-tiles", header("attend_batch", CAUSAL, T=40, d=16, dv=8, Lq=70, unit_exp=-3))
# 8 batch items (the rows stay one work item each) of more than 64 query
# rows (K packed once for the call), every row seeing keys 3..7 only: the
# rest of their key block must stay unread
seed("attend-batch-tiled-window-unseen-keys", header("attend_batch", MASK, T=20, d=4, dv=2, Lq=70, nbatch=3,
                                                    shape=(2, 2, 2), mask_mode=MASK_WINDOW, mask_a=3,
                                                    mask_b=5, unit_exp=-3))
seed("attend-batch-mask-shared-row", header("attend_batch", MASK | WEIGHTS, T=20, d=5, dv=4, Lq=6, nbatch=1,
                                            shape=(2, 1, 1), mrs_mode=1, mask_mode=MASK_WINDOW, mask_a=3,
                                            mask_b=9, unit_exp=-2))
seed("attend-batch-mask-padded-rows", header("attend_batch", MASK, T=17, d=8, dv=8, Lq=9, mrs_mode=2,
                                             mask_b=5, mask_mode=MASK_DATA, unit_exp=-3))
seed("attend-batch-negative-strides-gap", header("attend_batch", MASK, T=9, d=3, dv=2, Lq=4, nbatch=3,
                                                 shape=(2, 2, 3), gap=3, neg=0b101, bc_m=0b010,
                                                 mask_mode=MASK_WINDOW | 8, mask_a=1, mask_b=6))
seed("attend-batch-wide-d", header("attend_batch", WIDE, T=20, d=136, dv=20, Lq=8, unit_exp=-5))
seed("attend-batch-wide-dv", header("attend_batch", WIDE | CAUSAL, T=24, d=8, dv=280, Lq=5, unit_exp=-3))
seed("attend-batch-zero-dim", header("attend_batch", 0, T=5, d=2, dv=2, Lq=3, nbatch=2, zero_dim=1))
seed("attend-batch-all-masked-rows", header("attend_batch", MASK | WEIGHTS, T=12, d=4, dv=4, Lq=9,
                                            mask_mode=MASK_WINDOW | 8, mask_a=0, mask_b=0))
seed("attend-batch-overlap-ctx-weights", header("attend_batch", OVERLAP | WEIGHTS, T=6, d=3, dv=5, Lq=3,
                                                inval=2 << 1))
seed("attend-batch-overlap-ctx-in-Q", header("attend_batch", OVERLAP, T=6, d=8, dv=4, Lq=3, inval=1))
for i, what in enumerate(["Q", "K", "V", "ctx", "threads", "nbatch", "shape", "strides", "overflow", "empty"]):
    seed(f"attend-batch-invalid-{what}", header("attend_batch", INVALID | MASK, T=4, d=2, dv=2, Lq=2,
                                                nbatch=1, shape=(2, 1, 1), inval=i))
seed("dot-scores-batch-broadcast", header("dot_scores_batch", 0, T=11, d=9, Lq=4, nbatch=2, shape=(3, 2, 1),
                                          bc_q=0b10, bc_k=0b01, unit_exp=-2, scale=SCALE_RSQRT))
seed("context-batch-zero-weights", header("context_batch", 0, T=6, dv=5, Lq=3, nbatch=1, shape=(2, 1, 1))
     + vals([0.25, 0, 0.75, 0, 0, 0] * 6) + vals([inf] * 60))
seed("context-batch-invalid-nbatch", header("context_batch", INVALID, T=3, dv=2, Lq=2, inval=5))
seed("dot-scores-batch-overlap-out-in-Q", header("dot_scores_batch", OVERLAP, T=3, d=8, Lq=2, inval=0))
seed("context-batch-overlap-out-in-V", header("context_batch", OVERLAP, T=4, dv=2, Lq=2, nbatch=1,
                                              shape=(2, 1, 1), inval=1))
seed("dot-scores-batch-overflow", header("dot_scores_batch", INVALID, T=3, d=2, Lq=2, inval=8))

# ---- additive attention: the attend_batch layout, d the width h; values
# A (Lq x h), Kp (T x h), V (T x dv), then v (h), then the mask
seed("additive-attention-causal-broadcast",
     header("additive_attention", CAUSAL | WEIGHTS, T=7, d=4, dv=3, Lq=5, nbatch=2, shape=(2, 3, 1),
            bc_k=1, bc_v=1, unit_exp=-2))
seed("additive-attention-mask-nan-in-masked-rows",
     header("additive_attention", WEIGHTS | MASK, T=6, d=2, dv=2, Lq=1)
     + vals([0.5, -1]) + vals([1, 1, 2, 2, nan, nan, inf, -inf, 3, 3, 4, 4])
     + vals([1, 2, 3, 4, nan, nan, inf, inf, 9, 10, 11, 12]) + vals([1, -2]) + mask_bytes([1, 1, 0, 0, 1, 1]))
seed("additive-attention-all-scores-minus-inf",
     header("additive_attention", WEIGHTS, T=5, d=1, dv=2, Lq=2)
     + vals([0, 1]) + vals([5, 6, 7, 8, 9]) + vals(range(10)) + vals([-inf]))
seed("additive-attention-all-masked-rows",
     header("additive_attention", MASK | WEIGHTS, T=12, d=4, dv=4, Lq=9, mask_mode=MASK_WINDOW | 8,
            mask_a=0, mask_b=0))
seed("additive-attention-shared-mask-fused",
     header("additive_attention", MASK, T=20, d=5, dv=4, Lq=6, nbatch=1, shape=(2, 1, 1), mrs_mode=1,
            mask_mode=MASK_WINDOW, mask_a=3, mask_b=9, unit_exp=-2))
seed("additive-attention-negative-strides-gap",
     header("additive_attention", MASK | CAUSAL, T=9, d=3, dv=2, Lq=4, nbatch=3, shape=(2, 2, 3), gap=3,
            neg=0b101, bc_m=0b010, mask_mode=MASK_WINDOW | 8, mask_a=1, mask_b=6))
seed("additive-attention-wide", header("additive_attention", WIDE, T=20, d=136, dv=180, Lq=3, unit_exp=-5))
seed("additive-attention-overlap-ctx-weights",
     header("additive_attention", OVERLAP | WEIGHTS, T=6, d=3, dv=5, Lq=3, inval=2 << 1))
seed("additive-attention-overlap-ctx-in-A", header("additive_attention", OVERLAP, T=6, d=8, dv=4, Lq=3, inval=1))
for i, what in enumerate(["A", "Kp", "V", "ctx", "threads", "nbatch", "shape", "strides", "overflow", "empty"]):
    seed(f"additive-attention-invalid-{what}", header("additive_attention", INVALID | MASK, T=4, d=2, dv=2,
                                                      Lq=2, nbatch=1, shape=(2, 1, 1), inval=i))

# ---- attnx_attention: every option (values past the input: tame, from the generator)
def attn(name, flags=0, x=None, data=b"", **kw):
    kw.setdefault("unit_exp", -3)
    seed(name, header("attention", flags, **kw) + (x or xheader()) + data)


attn("attention-every-option", MASK | CAUSAL, xheader(A_ALL, bc_bias=0b01, qoff=3, wl=4, wr=1),
     T=12, d=4, dv=3, Lq=5, nbatch=2, shape=(2, 2, 1), mask_mode=MASK_WINDOW | 8, mask_a=1, mask_b=9)
attn("attention-f32-every-option", MASK | CAUSAL, xheader(A_ALL, bc_bias=0b01, qoff=3, wl=4, wr=1),
     T=12, d=4, dv=3, Lq=5, nbatch=2, shape=(2, 2, 1), mask_mode=MASK_WINDOW | 8, mask_a=1, mask_b=9, f32=True)
attn("attention-gqa-alibi-bias-broadcast", 0, xheader(A_BIAS | A_ALIBI | A_LSE, bias_rows=BIAS_ROW_SHARED,
                                                      bc_bias=0b10, bc_slope=0b10),
     T=20, d=8, dv=8, Lq=6, nbatch=2, shape=(2, 3, 1), bc_k=0b10, bc_v=0b10, scale=SCALE_RSQRT)
attn("attention-decoder-window", CAUSAL, xheader(A_WINDOW | A_LSE, wl=5, wr=0, off_mode=OFF_DECODER),
     T=40, d=6, dv=5, Lq=7)
attn("attention-lower-right-key-lengths", CAUSAL, xheader(A_LOWER_RIGHT | A_KLEN | A_LSE, klen_mode=KLEN_FIRST_ZERO,
                                                           bc_klen=0),
     T=16, d=3, dv=4, Lq=5, nbatch=1, shape=(3, 1, 1))
attn("attention-softcap-bias-padded-rows", 0, xheader(A_SOFTCAP | A_BIAS | A_LSE, bias_rows=BIAS_PADDED,
                                                      bias_pick=2, cap_mode=3),
     T=33, d=16, dv=4, Lq=9, scale=SCALE_RSQRT, unit_exp=-1)
attn("attention-bias-negative-rows-col-broadcast", MASK, xheader(A_BIAS | A_LSE, bias_rows=BIAS_NEGATIVE,
                                                                 bias_col0=True),
     T=10, d=2, dv=2, Lq=4, mask_mode=MASK_DATA)
attn("attention-bias-nan-seen", CAUSAL, xheader(A_BIAS | A_LSE, bias_nan_seen=True, bias_pick=7), T=9, d=3, dv=2, Lq=4)
attn("attention-bias-nan-unseen", CAUSAL, xheader(A_BIAS | A_WINDOW | A_LSE, bias_nan_unseen=True, wl=2, wr=-1),
     T=24, d=3, dv=2, Lq=12)
attn("attention-bias-nan-unseen-f32", MASK, xheader(A_BIAS | A_KLEN | A_LSE, bias_nan_unseen=True,
                                                    klen_mode=KLEN_HALF),
     T=24, d=3, dv=2, Lq=12, mask_mode=MASK_DATA, f32=True)
attn("attention-tiled-rows", CAUSAL, xheader(A_ALIBI | A_SOFTCAP | A_LSE, qoff=-3, koff=2, cap_mode=2),
     T=64, d=8, dv=8, Lq=40, unit_exp=-4)
# as attend-batch-tiled-window-unseen-keys: 70 rows see keys 3..7 and, with
# the key lengths, fewer; the rest of the key block stays unread
attn("attention-tiled-window-unseen-keys-f32", MASK, xheader(A_KLEN | A_LSE, klen_mode=KLEN_HALF),
     T=20, d=4, dv=2, Lq=70, nbatch=3, shape=(2, 2, 2), mask_mode=MASK_WINDOW, mask_a=3, mask_b=5,
     unit_exp=-3, f32=True)
attn("attention-far-offsets", CAUSAL, xheader(A_WINDOW | A_LSE, wl=3, wr=3, off_mode=OFF_FAR), T=8, d=2, dv=2, Lq=3)
attn("attention-version3-size", CAUSAL, xheader(A_ALL, size_mode=SIZE_V3, qoff=2), T=8, d=2, dv=3, Lq=3)
attn("attention-larger-struct-zero-tail", MASK, xheader(A_ALL, size_mode=SIZE_LARGER | 4), T=8, d=2, dv=3, Lq=3)
attn("attention-every-row-unseen", 0, xheader(A_WINDOW | A_LSE, wl=0, wr=0, qoff=100), T=8, d=2, dv=3, Lq=3)
attn("attention-v-is-k", ALIAS, xheader(A_SOFTCAP | A_LSE, cap_mode=5), T=9, d=4, dv=4, Lq=3)
for i, what in enumerate(["params", "size", "query", "keys", "values", "out", "threads", "nbatch", "shape",
                          "strides", "causal", "window", "softcap", "bias-col", "lower-right", "key-length",
                          "empty", "overflow-Lq", "overflow-offsets", "newer-struct"]):
    attn(f"attention-invalid-{what}", INVALID | MASK, xheader(A_ALL), T=4, d=2, dv=2, Lq=2, nbatch=1,
         shape=(2, 1, 1), inval=i + 20 * 1)   # i: the case; 20 k: its variant (k = 1)
for i, what in enumerate(["Q", "K", "V", "mask", "bias", "slopes", "key-lengths", "weights-in-K", "lse-in-bias",
                          "out-weights", "out-lse", "weights-lse"]):
    attn(f"attention-overlap-{what}", OVERLAP | MASK, xheader(A_ALL), T=6, d=3, dv=2, Lq=3, nbatch=1,
         shape=(2, 1, 1), inval=i)

# ---- merging: chunks of the keys attended apart and merged, and partials from the data
seed("merge-chunks-every-option", header("merge_chunks", MASK | CAUSAL, T=30, d=4, dv=3, Lq=6, nbatch=1,
                                         shape=(2, 1, 1), mask_mode=MASK_DATA, unit_exp=-3)
     + xheader(A_ALL & ~A_LOWER_RIGHT, wl=6, wr=2, qoff=10, aux=3) + bytes([40] * 64))
seed("merge-chunks-f32", header("merge_chunks", CAUSAL, T=30, d=4, dv=3, Lq=6, unit_exp=-3, f32=True)
     + xheader(A_ALIBI | A_SOFTCAP | A_LOWER_RIGHT, aux=2))
seed("merge-raw-specials", header("merge_raw", T=0, d=3, dv=2, Lq=5)   # P = 4 partials, 5 rows
     + vals(range(40)) + vals([0, 1, 2, -1e308,  nan, 0, 1, 2,  -inf, -inf, -inf, -inf,
                               700, 0, -800, 1e300,  3, 3, 3, 3]))
seed("merge-raw-minus-inf-partials", header("merge_raw", MASK, d=2, dv=4, Lq=8, unit_exp=-2))
seed("merge-raw-f32", header("merge_raw", MASK, d=5, dv=7, Lq=9, unit_exp=-2, f32=True))
for i, what in enumerate(["outs", "lses", "out", "lse", "empty", "overflow"]):
    seed(f"merge-raw-invalid-{what}", header("merge_raw", INVALID, d=2, dv=2, Lq=3, inval=i))
for i, what in enumerate(["out-in-outs", "out-in-lses", "lse-in-outs", "lse-in-lses", "out-lse"]):
    seed(f"merge-raw-overlap-{what}", header("merge_raw", OVERLAP, d=3, dv=2, Lq=3, inval=i))

# ---- the backward
def bwd(name, flags=0, x=None, data=b"", **kw):
    kw.setdefault("unit_exp", -3)
    seed(name, header("backward", flags, **kw) + (x or xheader()) + data)


bwd("backward-plain", 0, xheader(), T=10, d=4, dv=3, Lq=4, nbatch=1, shape=(2, 1, 1))
bwd("backward-every-option", CAUSAL, xheader(A_ALL & ~A_LSE, bc_bias=0b01, wl=5, wr=1, aux=0b10),
    T=20, d=4, dv=3, Lq=6, nbatch=2, shape=(2, 2, 1), bc_k=0b10, bc_v=0b10)
bwd("backward-f32-softcap-alibi", CAUSAL, xheader(A_SOFTCAP | A_ALIBI, qoff=4, cap_mode=2),
    T=70, d=5, dv=6, Lq=18, f32=True)
bwd("backward-key-lengths-window", 0, xheader(A_KLEN | A_WINDOW | A_LOWER_RIGHT, klen_mode=KLEN_FIRST_ZERO,
                                               wl=3, wr=3),
    T=12, d=3, dv=3, Lq=4, nbatch=1, shape=(3, 1, 1))
for i, what in enumerate(["params", "size", "query", "keys", "values", "out", "threads", "nbatch", "shape",
                          "strides", "causal", "window", "softcap", "bias-col", "lower-right", "key-length",
                          "empty", "overflow-Lq", "overflow-offsets", "newer-struct", "lse", "grad-out",
                          "grad-query", "grad-keys", "grad-values", "weights", "grad-strides"]):
    bwd(f"backward-invalid-{what}", INVALID | MASK, xheader(A_ALL & ~A_LSE), T=4, d=2, dv=2, Lq=2, nbatch=1,
        shape=(2, 1, 1), inval=i + 27 * 1)
for i, what in enumerate(["Q", "K", "V", "out", "lse", "grad-out", "mask"]):
    for g, gname in enumerate(["grad-query", "grad-keys", "grad-values"]):
        bwd(f"backward-overlap-{gname}-in-{what}", OVERLAP | MASK, xheader(A_ALL & ~A_LSE), T=6, d=3, dv=2, Lq=3,
            nbatch=1, shape=(2, 1, 1), inval=i + 13 * g)
for i, what in enumerate(["grad-query-grad-keys", "grad-query-grad-values", "grad-keys-grad-values"]):
    bwd(f"backward-overlap-{what}", OVERLAP, xheader(), T=6, d=3, dv=2, Lq=3, inval=10 + i)


def main():
    os.makedirs(CORPUS, exist_ok=True)
    for f in os.listdir(CORPUS):
        if f.startswith("seed-"):
            os.remove(os.path.join(CORPUS, f))
    for name, data in SEEDS.items():
        with open(os.path.join(CORPUS, f"seed-{name}"), "wb") as f:
            f.write(data)
    total = sum(len(d) for d in SEEDS.values())
    print(f"{len(SEEDS)} seeds, {total} bytes, in {os.path.relpath(CORPUS)}")


if __name__ == "__main__":
    main()
