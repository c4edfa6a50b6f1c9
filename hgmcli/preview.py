"""``hgm generate --preview FILE.png``: one figure showing what the generative
model produces.

Top: a grid of samples, one row per label (``n_per_label`` columns). Bottom:
one example at every level of its generation (Figure 2 left of the paper):
the semantic images ``X(0) .. X(d-1)`` as colour-coded class maps
(categorical colormap, nearest-neighbour upscaled to the final size) and the
observed greyscale image ``X(d)``. Rendered headless (matplotlib's Agg
backend, imported lazily) and written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .artifacts import atomic_path


def _split(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(x, y, [latent_0, ...]) from ``sample()``'s keys or ``generate()``'s train keys."""
    if "x" in data:
        x, y, fmt = data["x"], data["y"], "latent_{}"
    else:
        x, y, fmt = data["x_train"], data["y_train"], "latent_train_{}"
    latents = []
    while fmt.format(len(latents)) in data:
        latents.append(data[fmt.format(len(latents))])
    return np.asarray(x), np.asarray(y), latents


def _class_colors(n: int) -> np.ndarray:
    """(n, 3) RGB: tab10 / tab20 for few classes, an evenly spaced hsv wheel beyond."""
    from matplotlib import colormaps

    if n <= 10:
        return np.asarray(colormaps["tab10"].colors)[:n]
    if n <= 20:
        return np.asarray(colormaps["tab20"].colors)[:n]
    return colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))[:, :3]


def _class_names(model, level: int) -> list[str] | None:
    """Legend entries for the class map of ``level`` (None: too many to list)."""
    if model.kind == "digits":
        from .generative import DIGIT_C0_NAMES, DIGIT_C1_NAMES

        return [DIGIT_C0_NAMES, DIGIT_C1_NAMES][level]
    return [str(i) for i in range(model.classes[level])] if level == 0 and model.classes[0] <= 12 else None


def write_preview(path: str | os.PathLike, model, data: dict[str, np.ndarray], n_per_label: int = 8) -> None:
    """Render the preview PNG of ``data`` (``sample()`` or ``generate()`` arrays) to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    del plt  # only Figure is used: no global pyplot state, safe in threads
    x, y, latents = _split(data)
    size = model.image_size(model.depth)
    n_levels = model.depth + 1
    cols = max(n_per_label, n_levels)
    labels = list(model.label_names) or [str(i) for i in range(model.labels)]
    rows = len(labels) + 1
    fig = Figure(figsize=(1.3 * cols, 1.45 * rows + 0.9), dpi=100)
    grid = fig.add_gridspec(rows, cols, hspace=0.5, wspace=0.08)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)

    def show_grey(ax, img) -> None:
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")

    for r, name in enumerate(labels):
        idx = np.flatnonzero(y == r)[:n_per_label]
        for c in range(cols):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(idx):
                show_grey(ax, x[idx[c], 0])
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(f"y = {name}", fontsize=9)
    # One example through the levels of its generation.
    legends: list[tuple[str, list]] = []
    for level in range(n_levels):
        ax = fig.add_subplot(grid[rows - 1, level])
        ax.set_xticks([])
        ax.set_yticks([])
        if len(y) == 0:
            ax.axis("off")
        elif level < model.depth and level < len(latents):
            lat = latents[level][0]
            rep = size // lat.shape[0]
            colors = _class_colors(model.classes[level])
            ax.imshow(colors[np.kron(lat, np.ones((rep, rep), dtype=lat.dtype))], interpolation="nearest")
            ax.set_title(f"X({level}) {lat.shape[0]}×{lat.shape[0]}\n|C{level}| = {model.classes[level]}", fontsize=7)
            names = _class_names(model, level)
            if names is not None:
                title = f"C{level} classes" if model.kind == "digits" else "class ids (every level)"
                legends.append((title, [Patch(color=colors[i], label=n) for i, n in enumerate(names)]))
        else:
            show_grey(ax, x[0, 0])
            ax.set_title(f"X({model.depth}) {size}×{size}\ny = {labels[int(y[0])]}", fontsize=7)
    if legends and cols > n_levels:
        ax = fig.add_subplot(grid[rows - 1, n_levels:])
        ax.axis("off")
        for j, (name, handles) in enumerate(legends[:2]):
            leg = ax.legend(
                handles=handles, title=name, loc="upper left" if j == 0 else "upper right",
                ncol=3, fontsize=7, title_fontsize=7, handlelength=1.0, columnspacing=0.8,
            )  # fmt: skip
            ax.add_artist(leg)
    title = (
        f"{model.kind} model: depth {model.depth}, s={model.patch_size}, m0={model.m0}, "
        f"classes {model.classes}, k={model.k}" + (", orthonormal patches" if model.orthonormal else "")
    )
    fig.suptitle(title + "\nrows: samples per label; bottom: one example at every level", fontsize=9)
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


__all__ = ["write_preview"]
