"""Heatmaps of the worked example (needs matplotlib: pip install "attnx[plot]")."""
import os

import numpy as np


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - exercised without the extra
        raise ImportError(
            "plotting needs matplotlib: pip install \"attnx[plot]\"") from e
    matplotlib.use("Agg")          # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def heatmap(matrix, title, path, row_labels=None, col_labels=None, fmt="{:.3g}"):
    """Draw `matrix` as a heatmap with every cell annotated; save it as PNG."""
    plt = _require_matplotlib()
    m = np.atleast_2d(np.asarray(matrix, dtype=float))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * m.shape[1], 1.0 + 0.75 * m.shape[0]))
    im = ax.imshow(m, cmap="viridis", aspect="auto")
    lo, hi = np.nanmin(m), np.nanmax(m)
    mid = (lo + hi) / 2
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=9,
                color="black" if v > mid else "white")
    ax.set_xticks(range(m.shape[1]), col_labels or [""] * m.shape[1])
    ax.set_yticks(range(m.shape[0]), row_labels or [""] * m.shape[0])
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmaps(r, directory):
    """The tutorial's four pictures: decoder state, annotations, weighted
    annotations and context vector (annotations as columns, as drawn there)."""
    os.makedirs(directory, exist_ok=True)
    dims = [f"dim {i}" for i in range(r["query"].shape[0])]
    cols = [f"h{i}" for i in range(1, r["annotations"].shape[0] + 1)]
    wcols = [f"h{i}\nw={w:.2g}" for i, w in enumerate(r["weights"], 1)]
    return [
        heatmap(r["query"][:, None], "decoder hidden state",
                os.path.join(directory, "decoder_state.png"), dims, ["q"]),
        heatmap(r["annotations"].T, "annotations",
                os.path.join(directory, "annotations.png"), dims, cols),
        heatmap(r["weighted"].T, "weighted annotations",
                os.path.join(directory, "weighted_annotations.png"), dims, wcols),
        heatmap(r["context"][:, None], "context vector",
                os.path.join(directory, "context.png"), dims, ["context"]),
    ]


def decoder_heatmap(weights, directory):
    """Attention over decoding steps (rows) and source positions (columns)."""
    plt = _require_matplotlib()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "decoder_alignment.png")
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(weights, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(0, weights.shape[1], 2))
    ax.set_yticks(range(0, weights.shape[0], 2))
    ax.set_xlabel("source position (annotation)")
    ax.set_ylabel("decoder step")
    ax.set_title("toy decoder: attention weights over steps")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
