"""Uniform patch sampling from images or from a network's output (§5.1 step 1,
§6 step 1), in bounded memory.

The N sample positions (image, row, column) are drawn first, uniformly over
every valid position of every image on a grid of the given stride (with
replacement); then the images that own a sample are pushed through the
feature function batch by batch and only the sampled s x s windows are kept.
Peak memory is one batch of features plus the N x (C*s*s) result — never the
features of the whole dataset."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .errors import DataError
from .progress import Progress, no_progress

FeatureFn = Callable[[np.ndarray], torch.Tensor]  # (B, C, H, W) images -> (B, C', H', W') float tensor


def grid(size_in: int, patch: int, stride: int) -> int:
    """Number of patch positions along one axis."""
    return (size_in - patch) // stride + 1 if size_in >= patch else 0


def sample_positions(
    n_images: int, height: int, width: int, patch: int, stride: int, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N positions uniform over (image, grid row, grid column), sorted by image.

    Returns int64 arrays (image index, top row, left column)."""
    gh, gw = grid(height, patch, stride), grid(width, patch, stride)
    if gh == 0 or gw == 0:
        raise DataError(f"patch size {patch} is larger than the {height}x{width} feature map")
    flat = rng.integers(0, n_images * gh * gw, size=n, dtype=np.int64)
    flat.sort()
    img, rest = np.divmod(flat, gh * gw)
    gy, gx = np.divmod(rest, gw)
    return img, gy * stride, gx * stride


def gather_windows(feats: torch.Tensor, b: torch.Tensor, y: torch.Tensor, x: torch.Tensor, patch: int) -> torch.Tensor:
    """feats (B, C, H, W); b/y/x (n,) -> (n, C*patch*patch), channel-major like a conv kernel."""
    d = torch.arange(patch, device=feats.device)
    c = torch.arange(feats.shape[1], device=feats.device)
    rows = (y[:, None] + d[None, :])[:, None, :, None]  # (n, 1, s, 1)
    cols = (x[:, None] + d[None, :])[:, None, None, :]  # (n, 1, 1, s)
    win = feats[b[:, None, None, None], c[None, :, None, None], rows, cols]  # (n, C, s, s)
    return win.reshape(len(b), -1)


def sample_patches(
    images: np.ndarray,
    n: int,
    patch: int,
    stride: int,
    features: FeatureFn,
    *,
    rng: np.random.Generator,
    batch_size: int = 256,
    rows: slice | None = None,
    progress: Progress = no_progress,
) -> tuple[np.ndarray, dict]:
    """Sample ``n`` patches of ``features(images)``.

    images: (N_img, C, H, W) array (uint8 or float), or a tensor of features
    computed earlier; features maps a batch of them to a (B, C', H', W')
    tensor (the network so far, or preprocessing only). ``rows``: keep only
    this slice of the n sampled positions (a torchrun rank's share: every rank
    draws the same positions). Returns (patches (len(rows), C'*patch*patch)
    float32, stats)."""
    if n < 1:
        raise DataError(f"number of patches must be >= 1, got {n}")
    if len(images) == 0:
        raise DataError("no images to sample patches from")
    with torch.no_grad():
        probe = features(images[:1])
    _, c, h, w = probe.shape
    img, ys, xs = sample_positions(len(images), h, w, patch, stride, n, rng)
    if rows is not None:
        img, ys, xs = img[rows], ys[rows], xs[rows]
    n_all, n = n, len(img)
    out = np.empty((n, c * patch * patch), dtype=np.float32)
    needed = np.unique(img)
    # Batches over the images that own at least one sample; positions are sorted by image.
    starts = np.searchsorted(img, needed)
    ends = np.append(starts[1:], n)
    n_batches = (len(needed) + batch_size - 1) // batch_size
    for bi in range(n_batches):
        sel = needed[bi * batch_size : (bi + 1) * batch_size]
        lo, hi = starts[bi * batch_size], ends[min((bi + 1) * batch_size, len(needed)) - 1]
        with torch.no_grad():
            feats = features(images[sel])  # (B, C', H', W')
        local = np.searchsorted(sel, img[lo:hi])  # row of each sample's image in this batch
        dev = feats.device
        win = gather_windows(
            feats,
            torch.as_tensor(local, device=dev),
            torch.as_tensor(ys[lo:hi], device=dev),
            torch.as_tensor(xs[lo:hi], device=dev),
            patch,
        )
        out[lo:hi] = win.float().cpu().numpy()
        progress("patches", bi + 1, n_batches)
    stats = {
        "n_patches": n_all,
        "patch_size": patch,
        "stride": stride,
        "feature_shape": [int(c), int(h), int(w)],
        "images_used": int(len(needed)),
        "positions_per_image": int(grid(h, patch, stride) * grid(w, patch, stride)),
    }
    if not np.isfinite(out).all():
        raise DataError("sampled patches contain NaN or inf values (check the input data / network)")
    return out, stats


def source_of(net, images: np.ndarray, outputs, device: torch.device) -> tuple:
    """(source, features) for ``sample_patches`` over net(x): the network's
    outputs when an earlier stage kept them (``outputs``: a cached
    ``features.FrozenFeatures``), else the images pushed through ``net`` batch by batch."""
    if outputs is not None and outputs.cache is not None:
        return outputs.cache, lambda batch: batch.to(device).float()
    return images, lambda batch: net(torch.from_numpy(np.ascontiguousarray(batch)).to(device))


def fit_zca(x: np.ndarray, eps: float, *, center: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """ZCA whitening of patches, as one affine map ``y = A x + b`` (Coates, Lee
    & Ng 2011, "the single largest factor" for k-means features).

    x: (N, d) float32 patches, one per row, N >= d. With ``center`` each patch's
    own mean is removed first (brightness); that projection is folded into A.
    Then A = U diag(1/sqrt(lambda + eps * mean(lambda))) U^T over the
    eigenpairs (lambda, U) of the patches' covariance, and b = -A mu. ``eps`` is
    the regulariser added to the eigenvalues, in units of their mean (so one
    value suits raw pixels and deep features alike): the whitened covariance is
    U diag(lambda / (lambda + eps')) U^T, the identity up to eps' / lambda on
    every direction whose variance is well above eps', and directions of
    variance below it (noise, and the one a per-patch centring removes) are
    damped instead of blown up. Returns (A (d, d) float32, b (d,) float32,
    stats)."""
    n, d = x.shape
    if not (eps > 0 and np.isfinite(eps)):
        raise DataError(f"whitening needs whiten_eps > 0, got {eps}")
    if n < d:
        raise DataError(f"whitening {d}-dimensional patches needs at least {d} sampled patches, got {n}")
    x64 = x.astype(np.float64)
    project = np.eye(d) - (np.full((d, d), 1.0 / d) if center else 0.0)  # removes each patch's mean
    x64 = x64 @ project  # project is symmetric
    mu = x64.mean(axis=0)
    cov = np.cov(x64, rowvar=False, bias=True)
    lam, u = np.linalg.eigh(cov)
    lam = np.clip(lam, 0.0, None)
    reg = eps * max(float(lam.mean()), 1e-12)
    a = (u / np.sqrt(lam + reg)) @ u.T @ project
    b = -(u / np.sqrt(lam + reg)) @ u.T @ mu
    stats = {"eps": eps, "eps_absolute": reg, "eigenvalues_top": lam[::-1][:5].tolist(),
             "eigenvalues_bottom": lam[:3].tolist(), "center": center}
    return a.astype(np.float32), b.astype(np.float32), stats
