"""The worked example, step by step: ``python -m attnx demo``.

A decoder hidden state is scored against four encoder annotations (the
numbers of a well-known attention tutorial), the scores are turned into
weights, and the weighted annotations are summed into the context vector.
The naive softmax overflows here; attnx does not.
"""
import numpy as np

from . import _core, kernels
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


def run(plot_dir=None, out=print):
    r = compute()
    for line in story(r):
        out(line)
    if plot_dir is not None:
        from .plotting import heatmaps
        paths = heatmaps(r, plot_dir)
        out("")
        out(f"Wrote the tutorial's heatmaps to {plot_dir}:")
        for p in paths:
            out(f"     {p}")
    return r
