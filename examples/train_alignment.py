"""Learn to reverse a sequence with one attention layer, trained by plain
NumPy SGD on attnx's gradients.

The demo's toy decoder (``python -m attnx demo``) has hand-set weights that
look for the mirrored position. Here the same alignment is learned: output
position i must emit input token ``x[n-1-i]``, and the only way to get it is
to attend there.

The model (n positions, vocabulary V, width d):

    X = E[x] + P                       token + position embeddings of the input
    Q = R @ Wq                         one learned query per output position
    K = X @ Wk,  Vv = E[x] @ Wv        keys see positions and tokens; values tokens
    C = attend(Q, K, Vv, scale)        attnx.attend (return_lse for the backward)
    logits = C @ Wo,  loss = cross-entropy(logits, reversed x)

attnx.attend_backward gives dQ, dK, dV; the projections' gradients are
written out by hand below (each is one matmul). Run:

    python examples/train_alignment.py [--steps N]
    python -m attnx demo --train            (the same program)
"""
import argparse

import numpy as np

import attnx

SHADES = " .:-=+*#%@"


def init(rng, n, vocab, d):
    s = 1 / np.sqrt(d)
    return {
        "E": rng.standard_normal((vocab, d)) * s,     # token embeddings
        "P": rng.standard_normal((n, d)) * s,         # input position embeddings
        "R": rng.standard_normal((n, d)) * s,         # output position (query) embeddings
        "Wq": rng.standard_normal((d, d)) * s,
        "Wk": rng.standard_normal((d, d)) * s,
        "Wv": rng.standard_normal((d, d)) * s,
        "Wo": rng.standard_normal((d, vocab)) * s,
    }


def forward(p, x, scale):
    """Loss and everything the backward needs, for a batch x (B, n) of tokens."""
    X = p["E"][x] + p["P"]                       # (B, n, d)
    Q = p["R"] @ p["Wq"]                         # (n, d): shared by the batch (broadcast)
    K = X @ p["Wk"]
    V = p["E"][x] @ p["Wv"]
    C, lse = attnx.attend(Q, K, V, scale=scale, return_lse=True)      # (B, n, d)
    logits = C @ p["Wo"]                                               # (B, n, vocab)
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    target = x[:, ::-1]
    B, n = x.shape
    picked = probs[np.arange(B)[:, None], np.arange(n)[None, :], target]
    loss = -np.log(picked).mean()
    return loss, (X, Q, K, V, C, lse, probs, target)


def backward(p, x, scale, cache):
    X, Q, K, V, C, lse, probs, target = cache
    B, n = x.shape
    dlogits = probs.copy()
    dlogits[np.arange(B)[:, None], np.arange(n)[None, :], target] -= 1
    dlogits /= B * n                                  # d(mean cross-entropy)/d(logits)
    g = {"Wo": np.einsum("bnd,bnv->dv", C, dlogits)}
    dC = dlogits @ p["Wo"].T
    # attnx's flash backward; dQ comes back summed over the batch, since Q broadcast
    dQ, dK, dV = attnx.attend_backward(dC, Q, K, V, C, lse, scale=scale)
    g["Wq"] = p["R"].T @ dQ
    g["R"] = dQ @ p["Wq"].T
    g["Wk"] = np.einsum("bnd,bne->de", X, dK)
    g["Wv"] = np.einsum("bnd,bne->de", p["E"][x], dV)
    dX = dK @ p["Wk"].T
    dEx = dX + dV @ p["Wv"].T                         # both paths from the token embeddings
    g["P"] = dX.sum(axis=0)
    g["E"] = np.zeros_like(p["E"])
    np.add.at(g["E"], x, dEx)
    return g


def alignment(p, x, scale):
    """Attention weights (n, n) of one example: row i = output position i."""
    X = p["E"][x] + p["P"]
    _, w = attnx.attend(p["R"] @ p["Wq"], X @ p["Wk"], p["E"][x] @ p["Wv"], scale=scale,
                        return_weights=True)
    return w


def heatmap(w, out=print):
    n = w.shape[1]
    out("        input position")
    out("        " + "".join(f"{t:<2d}" for t in range(n)))
    for i, row in enumerate(w):
        cells = "".join(SHADES[min(int(v * len(SHADES)), len(SHADES) - 1)] * 2 for v in row)
        out(f"  out {i:<2d}{cells}")


def train(steps=300, n=8, vocab=10, d=32, batch=32, lr=0.5, seed=0, out=print):
    """Train; returns (losses, alignment of a fresh example)."""
    rng = np.random.default_rng(seed)
    p = init(rng, n, vocab, d)
    scale = 1 / np.sqrt(d)
    losses = []
    every = max(steps // 10, 1)
    for step in range(steps + 1):
        x = rng.integers(0, vocab, size=(batch, n))
        loss, cache = forward(p, x, scale)
        losses.append(loss)
        if step % every == 0 or step == steps:
            out(f"step {step:5d}  loss {loss:.4f}")
        if step == steps:
            break
        g = backward(p, x, scale, cache)
        for name in p:
            p[name] -= lr * g[name]                   # plain SGD
    x = rng.integers(0, vocab, size=(1, n))
    w = alignment(p, x, scale)[0]
    out("")
    out(f"learned alignment for the input {x[0].tolist()} (output {x[0, ::-1].tolist()}):")
    heatmap(w, out)
    return losses, w


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    train(steps=args.steps, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
