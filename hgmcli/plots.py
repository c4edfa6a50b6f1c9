"""PNG figures for `hgm evaluate --plot` and the pipeline: the classifier's
accuracy curve (iterations vs validation accuracy, as the paper plots every
10k iterations) and the confusion matrix. Headless (Agg), written atomically."""

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
    if curve:
        steps, accs = zip(*curve)
        ax1.plot(steps, accs, marker="o")
        ax1.set_xlabel("iteration")
        ax1.set_ylabel("validation accuracy")
        ax1.grid(alpha=0.3)
    else:
        ax1.text(0.5, 0.5, "no accuracy curve\n(SVM: one solve)", ha="center", va="center")
        ax1.set_axis_off()
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

    def save(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=110)

    try:
        return write_file(path, save)
    finally:
        plt.close(fig)
