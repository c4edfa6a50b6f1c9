"""PNG figures for `hgm evaluate --plot` and the pipeline: the classifier's
accuracy curve (iterations vs train / validation accuracy, as the paper plots
every 10k iterations; an SVM, solved once, as bars of train / validation /
evaluated-split accuracy) with the confusion matrix, and the centroids a
layer learned (the first picture a researcher of this family looks at).
Headless (Agg), written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifacts import write_file


def write_metrics_plot(path: str | Path, metrics: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = metrics.get("label_names", [])
    conf = np.asarray(metrics.get("confusion", []), dtype=float)
    curve = metrics.get("curve") or []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    history = metrics.get("history") or []
    if len(curve) > 1 or history:
        steps, accs = zip(*curve) if curve else ((), ())
        ax1.plot(steps, accs, marker="o", label="validation")
        train = [(h["step"], h["train_accuracy"]) for h in history if "train_accuracy" in h]
        if train:
            ax1.plot(*zip(*train), marker=".", alpha=0.6, label="train (running)")
        ax1.set_xlabel("Adam step")
        ax1.set_ylabel("accuracy")
        ax1.legend(fontsize=8)
        ax1.grid(alpha=0.3)
    else:  # one solve (an SVM): train / validation / the evaluated split side by side
        bars = [("train", metrics.get("train_accuracy")), ("val", curve[0][1] if curve else None),
                (metrics.get("split", "eval"), metrics.get("accuracy"))]
        bars = [(n, v) for n, v in bars if v is not None]
        ax1.bar([n for n, _ in bars], [v for _, v in bars], color=["#999", "#58a", "#258"][: len(bars)])
        for i, (_, v) in enumerate(bars):
            ax1.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=9)
        ax1.set_ylim(0, 1.05)
        ax1.set_ylabel("accuracy")
    ax1.set_title(f"{metrics.get('split', '')} accuracy {metrics.get('accuracy', float('nan')):.4f}")
    if conf.size:
        rows = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
        im = ax2.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        ax2.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax2.set_yticks(range(len(names)), names, fontsize=8)
        ax2.set_xlabel("predicted")
        ax2.set_ylabel("true")
        if len(names) <= 12:
            for i in range(len(names)):
                for j in range(len(names)):
                    ax2.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                             color="white" if rows[i, j] > 0.5 else "black")
        fig.colorbar(im, ax=ax2, fraction=0.046)
        ax2.set_title("confusion (row-normalised)")
    fig.tight_layout()

    return _save_png(fig, path)


def centroid_images(centroids: np.ndarray, whiten_weight: np.ndarray | None = None,
                    whiten_bias: np.ndarray | None = None) -> np.ndarray:
    """The centroids as image patches (k, s, s, C) in [0, 1] for display.

    Whitened centroids live in the whitened space; they are mapped back to
    pixels with the pseudo-inverse of the whitening (x = A^+ (c - b)), then each
    patch is stretched to the full grey range (its own contrast, as Coates et
    al. and the paper show them)."""
    k = len(centroids)
    if whiten_weight is not None:
        d, c, s, _ = whiten_weight.shape
        a = whiten_weight.reshape(d, -1).astype(np.float64)
        flat = (np.linalg.pinv(a) @ (centroids.reshape(k, d).T - (whiten_bias.reshape(d, 1) if whiten_bias is not None else 0)))
        patches = flat.T.reshape(k, c, s, s)
    else:
        patches = centroids.astype(np.float64)
    lo = patches.min(axis=(1, 2, 3), keepdims=True)
    hi = patches.max(axis=(1, 2, 3), keepdims=True)
    return ((patches - lo) / np.maximum(hi - lo, 1e-12)).transpose(0, 2, 3, 1)


def write_centroids_plot(path: str | Path, arrays: dict, title: str, *, first_layer: bool, most: int = 256) -> Path:
    """Layer-1 centroids drawn as colour (or grey) patches, sorted by cluster
    size (largest first, at most ``most``); deeper layers, whose centroids are
    not pictures, as their cluster sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = np.asarray(arrays.get("sizes", np.ones(len(arrays["centroids"]))))
    order = np.argsort(-sizes, kind="stable")
    pictures = arrays["centroids"].shape[1] in (1, 3) or "whiten_weight" in arrays  # pixels, or whitened pixels
    if first_layer and pictures:
        imgs = centroid_images(arrays["centroids"], arrays.get("whiten_weight"), arrays.get("whiten_bias"))[order[:most]]
        cols = int(np.ceil(np.sqrt(len(imgs))))
        rows = int(np.ceil(len(imgs) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(max(cols * 0.45 + 0.5, 4.5), rows * 0.45 + 0.8), squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, img in zip(axes.flat, imgs):
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", interpolation="nearest")
        fig.suptitle(f"{title}: {len(imgs)} of {len(order)} centroids\n(largest clusters first)", fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.bar(np.arange(len(sizes)), sizes[order], width=1.0, color="#58a")
        ax.set_xlabel("cluster (sorted by size)")
        ax.set_ylabel("patches")
        ax.set_title(f"{title}: sizes of {len(sizes)} clusters", fontsize=9)

    return _save_png(fig, path)


def _save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically as a PNG, and free it."""
    import matplotlib.pyplot as plt

    try:
        return write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
