"""examples/train_alignment.py: one attention layer learns to reverse a
sequence by NumPy SGD on attnx.attend_backward's gradients (short runs)."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.simd_independent
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_example():
    path = os.path.join(ROOT, "examples", "train_alignment.py")
    spec = importlib.util.spec_from_file_location("train_alignment", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_example_learns_the_reversal_alignment():
    lines = []
    losses, w = load_example().train(steps=250, out=lines.append)
    assert losses[-1] < 0.05 * losses[0]
    n = w.shape[0]
    np.testing.assert_array_equal(w.argmax(axis=1), np.arange(n)[::-1])
    assert np.all(w[np.arange(n), np.arange(n)[::-1]] > 0.5)
    assert lines[0].startswith("step     0  loss") and "learned alignment" in "\n".join(lines)


def test_backward_matches_finite_differences():
    """The hand-written projection gradients around attnx's: central
    differences of the loss for a few entries of every parameter."""
    ex = load_example()
    rng = np.random.default_rng(1)
    p = ex.init(rng, 5, 6, 8)
    x = rng.integers(0, 6, size=(3, 5))
    scale = 0.4
    g = ex.backward(p, x, scale, ex.forward(p, x, scale)[1])
    h = 1e-6
    for name, val in p.items():
        for idx in [(0, 0), tuple(s - 1 for s in val.shape)]:
            old = val[idx]
            val[idx] = old + h
            up = ex.forward(p, x, scale)[0]
            val[idx] = old - h
            down = ex.forward(p, x, scale)[0]
            val[idx] = old
            assert g[name][idx] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9), name


def test_demo_train_runs_the_shipped_example():
    # from /: the installed attnx and its shipped example (-P is 3.11+)
    res = subprocess.run([sys.executable, "-m", "attnx", "demo", "--train", "--steps",
                          "250"], capture_output=True, text=True, check=True, cwd="/")
    lines = res.stdout.splitlines()
    first = float(lines[0].split()[-1])
    last = float([ln for ln in lines if ln.startswith("step")][-1].split()[-1])
    assert last < 0.05 * first
    assert "out 7 @@" in res.stdout.replace("%%", "@@").replace("##", "@@")
