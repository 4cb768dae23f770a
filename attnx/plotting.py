"""Heatmaps of the worked example, drawn as in the attention tutorial (needs
matplotlib: pip install "attnx[plot]").

Every cell is annotated with its value and bordered; rows are the dimensions
of the vectors, columns the annotations. The annotations, the weighted
annotations and the context vector are the same kind of quantity (sums of
annotation entries), so they share one colour scale: a cell that looks alike
in two pictures holds about the same number. `overview` draws the whole story
in one figure beside the separate files.
"""
import os

import numpy as np

DPI = 160
CMAP = "viridis"


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "plotting needs matplotlib: pip install \"attnx[plot]\"") from e
    matplotlib.use("Agg")          # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def _fmt(v):
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-3 <= a < 1e4:
        return f"{v:.4g}"
    return f"{v:.2e}"


def draw(ax, matrix, title, norm, row_labels, col_labels, xlabel, ylabel="dimension",
         fontsize=11):
    """Draw `matrix` on `ax`: bordered cells, each annotated with its value,
    coloured by `norm` (a matplotlib Normalize shared between pictures)."""
    import matplotlib.pyplot as plt
    m = np.atleast_2d(np.asarray(matrix, dtype=float))
    cmap = plt.get_cmap(CMAP)
    mesh = ax.pcolormesh(m, cmap=cmap, norm=norm, edgecolors="white", linewidth=2.5)
    ax.set_xlim(0, m.shape[1])
    ax.set_ylim(m.shape[0], 0)               # row 0 at the top, as printed
    ax.set_aspect("equal")
    for (i, j), v in np.ndenumerate(m):
        r, g, b, _ = cmap(norm(v))
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.55
        ax.text(j + 0.5, i + 0.5, _fmt(v), ha="center", va="center", fontsize=fontsize,
                color="white" if dark else "black")
    ax.set_xticks(np.arange(m.shape[1]) + 0.5, col_labels)
    ax.set_yticks(np.arange(m.shape[0]) + 0.5, row_labels)
    ax.tick_params(length=0, labelsize=fontsize)
    ax.set_xlabel(xlabel, fontsize=fontsize + 1)
    ax.set_ylabel(ylabel, fontsize=fontsize + 1)
    ax.set_title(title, fontsize=fontsize + 3, pad=10)
    for side in ax.spines.values():
        side.set_visible(False)
    return mesh


def _colorbar(fig, ax, mesh, label):
    """A colour bar exactly as tall as the heatmap beside it."""
    from mpl_toolkits.axes_grid1 import make_axes_locatable
    cax = make_axes_locatable(ax).append_axes("right", size=0.22, pad=0.15)
    cb = fig.colorbar(mesh, cax=cax)
    cb.set_label(label, fontsize=10)
    return cb


def _norms(r):
    from matplotlib.colors import Normalize
    vals = np.concatenate([np.ravel(r["annotations"]), np.ravel(r["weighted"]),
                           np.ravel(r["context"])])
    q = np.ravel(r["query"])
    return (Normalize(vmin=min(0.0, q.min()), vmax=q.max()),
            Normalize(vmin=min(0.0, vals.min()), vmax=vals.max()))


def _panels(r):
    """(name, matrix, title, which norm, column labels, x label, colour-bar label)."""
    n, d = r["annotations"].shape
    cols = [f"h{i}" for i in range(1, n + 1)]
    wcols = [f"h{i}\n× {w:.3g}" for i, w in enumerate(r["weights"], 1)]
    return [
        ("decoder_state", r["query"][:, None], "decoder hidden state", 0, ["q"],
         "decoder state", "decoder state value"),
        ("annotations", r["annotations"].T, "annotations", 1, cols, "annotation",
         "value (shared scale)"),
        ("weighted_annotations", r["weighted"].T, "weighted annotations", 1, wcols,
         "annotation × its attention weight", "value (shared scale)"),
        ("context", r["context"][:, None], "context vector", 1, ["c"],
         "sum of the weighted annotations", "value (shared scale)"),
    ]


def _size(m):
    rows, cols = m.shape
    return 1.6 + 1.25 * cols + 1.0, 1.6 + 0.9 * rows + 0.6


def heatmaps(r, directory):
    """The tutorial's four pictures, one file each: decoder state,
    annotations, weighted annotations and context vector (annotations as
    columns, as drawn there). Returns the paths."""
    plt = _require_matplotlib()
    os.makedirs(directory, exist_ok=True)
    norms = _norms(r)
    d = r["query"].shape[0]
    rows = [str(i) for i in range(d)]
    paths = []
    for name, m, title, k, cols, xlabel, cbl in _panels(r):
        fig, ax = plt.subplots(figsize=_size(m))
        mesh = draw(ax, m, title, norms[k], rows, cols, xlabel)
        _colorbar(fig, ax, mesh, cbl)
        fig.tight_layout()
        path = os.path.join(directory, f"{name}.png")
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        paths.append(path)
    return paths


def overview(r, directory):
    """The whole worked example in one figure: decoder state, annotations,
    scores and weights, weighted annotations, context."""
    plt = _require_matplotlib()
    from matplotlib.colors import Normalize
    os.makedirs(directory, exist_ok=True)
    norms = _norms(r)
    d, n = r["query"].shape[0], r["annotations"].shape[0]
    rows = [str(i) for i in range(d)]
    fig = plt.figure(figsize=(17, 7.2))
    grid = fig.add_gridspec(2, 5, width_ratios=[1, n, n, 1, 0.25],
                            height_ratios=[d, 1.6], hspace=0.55, wspace=0.35)
    panels = _panels(r)
    for col, (name, m, title, k, cols, xlabel, _) in zip((0, 1, 2, 3), panels):
        ax = fig.add_subplot(grid[0, col])
        mesh = draw(ax, m, title, norms[k], rows, cols, xlabel,
                    ylabel="dimension" if col in (0, 1) else "", fontsize=10)
        if col == 0:
            _colorbar(fig, ax, mesh, "")
    cax = fig.add_subplot(grid[0, 4])
    fig.colorbar(mesh, cax=cax).set_label("annotations, weighted, context (one scale)",
                                          fontsize=10)
    # the step between: scores and the softmax weights over the annotations
    axs = fig.add_subplot(grid[1, 1])
    draw(axs, r["scores"][None, :], "scores = annotations @ q", Normalize(
        r["scores"].min(), r["scores"].max()), ["score"], [f"h{i}" for i in range(1, n + 1)],
        "annotation", ylabel="", fontsize=10)
    axw = fig.add_subplot(grid[1, 2])
    draw(axw, r["weights"][None, :], "weights = softmax(scores)", Normalize(0, 1),
         ["weight"], [f"h{i}" for i in range(1, n + 1)], "annotation", ylabel="", fontsize=10)
    fig.suptitle("attention on the worked example: score, softmax, weight, sum",
                 fontsize=16)
    path = os.path.join(directory, "overview.png")
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def decoder_heatmap(weights, directory):
    """Attention over decoding steps (rows) and source positions (columns)."""
    plt = _require_matplotlib()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "decoder_alignment.png")
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(weights, cmap=CMAP, vmin=0, vmax=1)
    n_steps, n_src = weights.shape
    # cell borders: a grid on the minor ticks between cells
    ax.set_xticks(np.arange(-0.5, n_src, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_steps, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    ax.set_xticks(range(0, n_src, 2))
    ax.set_yticks(range(0, n_steps, 2))
    ax.set_xlabel("source position (annotation)", fontsize=12)
    ax.set_ylabel("decoder step", fontsize=12)
    ax.set_title("toy decoder: attention weights over steps", fontsize=14, pad=10)
    _colorbar(fig, ax, im, "attention weight")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
