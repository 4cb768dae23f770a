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
       "additive_attention": 230}
MASK, CAUSAL, WEIGHTS, INPLACE, OVERLAP, INVALID, WIDE, ALIAS = (1 << i for i in range(8))
SCALE_ONE, SCALE_RSQRT, SCALE_VALUE = 0, 1, 2
MASK_DATA, MASK_NONE_ATTEND, MASK_ALL_ATTEND, MASK_WINDOW = 0, 1, 2, 3


def header(op, flags=0, T=0, d=0, dv=0, Lq=0, nbatch=0, shape=(1, 1, 1), zero_dim=None,
           bc_q=0, bc_k=0, gap=0, bc_v=0, bc_m=0, mrs_mode=0, neg=0, scale=SCALE_ONE,
           unit_exp=0, mask_mode=0, mask_a=0, mask_b=0, mis_a=0, mis_b=0, inval=0, threads=0):
    """The 21 header bytes; unit_exp: ordinary values are multiples of 2**unit_exp."""
    b7 = nbatch | ((4 | (zero_dim << 3)) if zero_dim is not None else 0)
    b8 = sum(((s - 1) & 3) << (2 * i) for i, s in enumerate(shape))
    if flags & WIDE and dv >= 128:   # wide: bytes 128..255 stand for 173..300
        assert dv >= 173, "with WIDE, dv is 0..127 or 173..300"
        dv -= 45
    return bytes([OPS[op], flags, T & 0xff, T >> 8, d, dv, Lq, b7, b8,
                  bc_q | bc_k << 3 | gap << 6, bc_v | bc_m << 3 | mrs_mode << 6, neg, scale,
                  unit_exp + 6, mask_mode, mask_a, mask_b, mis_a, mis_b, inval, threads])


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
