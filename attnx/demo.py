"""The worked example, step by step: ``python -m attnx demo``.

A decoder hidden state is scored against four encoder annotations (the
numbers of a well-known attention tutorial), the scores are turned into
weights, and the weighted annotations are summed into the context vector.
The naive softmax overflows here; attnx does not.
"""
import numpy as np

from . import _core, kernels
from ._core import KVCache
from ._version import __version__

#: The decoder hidden state (the query).
DECODER_STATE = np.array([5.0, 1.0, 20.0])
#: The encoder annotations, one per row (the tutorial stores them as columns).
ANNOTATIONS = np.array([
    [3.0, 12.0, 45.0],
    [59.0, 2.0, 5.0],
    [1.0, 43.0, 5.0],
    [4.0, 3.0, 45.3],
])


def _fmt(a, spec=".9g"):
    """[a, b, c] with each number formatted by `spec`."""
    return "[" + ", ".join(format(float(v), spec) for v in np.ravel(a)) + "]"


def compute():
    """Every intermediate of the worked example, as a dict of arrays."""
    q, keys = DECODER_STATE, ANNOTATIONS
    scores = _core.dot_score(q, keys)
    with np.errstate(over="ignore", invalid="ignore"):
        naive_exp = np.exp(scores)
        naive = naive_exp / naive_exp.sum()
    weights = _core.softmax(scores)
    weighted = weights[:, None] * keys
    ctx = _core.context(weights, keys)
    return {
        "query": q, "annotations": keys, "scores": scores, "naive_exp": naive_exp,
        "naive_weights": naive, "shifted": scores - scores.max(), "weights": weights,
        "weighted": weighted, "context": ctx, "attend": _core.attend(q, keys),
    }


def story(r):
    """The demo's text, one line per list item."""
    lines = [
        f"attnx {__version__} -- attention on the tutorial's worked example "
        f"(kernels: {kernels.simd_level()})",
        "",
        "1. A decoder hidden state (the query) and four encoder annotations (the keys):",
        f"     decoder state q = {_fmt(r['query'], 'g')}",
    ]
    for i, h in enumerate(r["annotations"], 1):
        lines.append(f"     annotation h{i}   = {_fmt(h, 'g')}")
    lines += [
        "",
        "2. Score each annotation by its dot product with the decoder state:",
        f"     scores = annotations @ q = {_fmt(r['scores'], 'g')}",
        "",
        "3. The naive softmax, exp(scores) / exp(scores).sum(), fails:",
        f"     exp(scores) = {_fmt(r['naive_exp'], '.4g')}",
        "     exp(927) and exp(929) exceed the largest float64 (about 1.8e308 = exp(709.78)),",
        "     so they overflow to inf, and inf / inf is NaN:",
        f"     naive weights = {_fmt(r['naive_weights'])}",
        "",
        "4. The stable softmax subtracts the largest score first, so no exp exceeds 1:",
        f"     scores - max = {_fmt(r['shifted'], 'g')}",
        f"     weights = exp(scores - max) / sum = {_fmt(r['weights'], '.8e')}",
        f"     (they sum to {r['weights'].sum():.15g}; exp(-781) is below the smallest float64,",
        "      4.9e-324, so 0.0 is the correctly rounded third weight)",
        "",
        "5. Weight each annotation by its attention weight:",
    ]
    for i, h in enumerate(r["weighted"], 1):
        lines.append(f"     {r['weights'][i - 1]:<15.8e} * h{i} = {_fmt(h)}")
    lines += [
        "",
        "6. The context vector is the sum of the weighted annotations:",
        f"     context = {_fmt(r['context'], '.8f')}",
        "",
        "All of it in one call, one fused pass over the annotations:",
        "     attnx.attend(q, annotations)",
        f"     -> {_fmt(r['attend'], '.8f')}",
    ]
    return lines


STEPS = 20
SHADES = " .:-=+*#%@"


def positions(n, d=16):
    """Sinusoidal position codes (n, d): nearby positions look alike, far
    ones do not, so a dot product finds a position."""
    pos = np.arange(n)[:, None]
    freq = 1.0 / (10000.0 ** (np.arange(0, d, 2) / d))
    enc = np.empty((n, d))
    enc[:, 0::2], enc[:, 1::2] = np.sin(pos * freq), np.cos(pos * freq)
    return enc


def toy_decoder(steps=STEPS):
    """A decoder that reverses its input: at step t its state looks for source
    position steps-1-t. The encoder's annotations sit in a KVCache; each step
    is one cache.attend call. Returns the (steps, steps) attention weights."""
    H = positions(steps)
    cache = KVCache(H.shape[1], capacity=steps)
    cache.extend(H)
    rng = np.random.default_rng(2015)
    weights = np.empty((steps, steps))
    ctx = np.empty(H.shape[1])
    for t in range(steps):
        q = 3.0 * H[steps - 1 - t] + 0.3 * rng.standard_normal(H.shape[1])
        cache.attend(q, out=ctx)                      # the decoding step itself
        _, weights[t] = cache.attend(q, return_weights=True)
    return weights


def story_decoder(weights):
    steps = weights.shape[0]
    lines = [
        f"Part 2: a {steps}-step toy decoder",
        "",
        f"The encoder annotates {steps} source positions; at each step the decoder looks",
        "for the mirrored position (it reverses the sequence). attnx.KVCache holds the",
        "annotations, and each step is one cache.attend(q, out=ctx) call.",
        "Attention weights, one row per decoder step (darker = more weight):",
        "",
        f"{'source position':>20} " + "".join(str(i % 10) for i in range(steps)),
    ]
    for t, row in enumerate(weights):
        cells = "".join(SHADES[min(int(w * len(SHADES)), len(SHADES) - 1)] for w in row)
        lines.append(f"     step {t:2d}        |{cells}|  -> {int(row.argmax()):2d} ({row.max():.2f})")
    hits = sum(int(row.argmax()) == steps - 1 - t for t, row in enumerate(weights))
    lines += ["", f"The decoder found the mirrored position at {hits} of {steps} steps."]
    return lines


def run(plot_dir=None, out=print):
    r = compute()
    for line in story(r):
        out(line)
    w = toy_decoder()
    out("")
    for line in story_decoder(w):
        out(line)
    if plot_dir is not None:
        from .plotting import decoder_heatmap, heatmaps, overview
        paths = heatmaps(r, plot_dir) + [overview(r, plot_dir), decoder_heatmap(w, plot_dir)]
        out("")
        out(f"Wrote the tutorial's heatmaps to {plot_dir}:")
        for p in paths:
            out(f"     {p}")
    return r


def train(steps=300, out=print):
    """``python -m attnx demo --train``: examples/train_alignment.py (shipped
    inside the package as attnx/examples/), which learns the alignment the toy
    decoder above has by hand: reversal, by SGD on attnx's gradients."""
    import importlib.util
    import os

    import attnx
    for d in attnx.__path__:
        for path in (os.path.join(d, "examples", "train_alignment.py"),
                     os.path.join(d, os.pardir, "examples", "train_alignment.py")):
            if os.path.isfile(path):
                spec = importlib.util.spec_from_file_location("attnx_train_alignment", path)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                return mod.train(steps=steps, out=out)
    raise FileNotFoundError("examples/train_alignment.py is not in this attnx installation")

