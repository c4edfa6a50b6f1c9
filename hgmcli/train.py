"""Training the 1x1 conv of a block: the two-layer net of §4.1 / §6.

* ``adam-ce`` (§6 steps 5-6): a randomly initialised Conv1x1 (k -> n) and an
  affine layer to the classes, trained with Adam on cross-entropy; the head
  is dropped afterwards.
* ``gd-linear`` (§4.1, TLGD): N_{K,W}(X) = <W, K^T X> with W_0 ~ N(0,1) fixed,
  the rows of K_0 (one n-vector per input channel) uniform on the sphere of
  radius sigma / (2 sqrt(n)), full-batch gradient descent on the loss
  l_y(y_hat) = -y y_hat, learning rate eta, T iterations, y in {-1, +1}.
  (The extraction garbles "each n-dimensional column of K_0 ... radius σ/2√n";
  we read the n-dimensional vectors as the embeddings of the input channels,
  so two orthonormal inputs start at most σ/√n apart — what the proof of
  Theorem 1 part 1 uses.)
* ``jl`` (§6 "Clustering+JL"): the 1x1 conv is a random Gaussian projection
  (entries N(0, 1/n)), never trained; only the temporary head is fitted, to
  report a validation accuracy comparable with adam-ce.

Each mode is an entry of ``TRAIN_MODES``; the config's ``train.mode``
choices, ``hgm search`` and the CLI's help read them from there, so a new
mode is one function here plus its test. A mode's ``fit`` gets the frozen
features (``features.FrozenFeatures``: network so far + cluster conv +
encoder + pool, cached or recomputed) and returns the (n, k) 1x1 weight."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import adam, dist
from .errors import TrainingError
from .features import Examples, FrozenFeatures, check_fits
from .network import uniform_sphere_rows
from .progress import Progress, no_progress

if TYPE_CHECKING:
    from .config import TrainConfig


# --------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    proj: torch.Tensor | None  # (n, k) weight of the 1x1 conv, or None (mode "none")
    stats: dict


# --------------------------------------------------------------------------- adam-ce and jl


def train_adam(ex: Examples, cfg: TrainConfig, *, seed: int, device: torch.device,
               progress: Progress = no_progress, checkpoint=None, curves=None) -> TrainResult:
    """§6: Conv1x1 (k -> n) + affine head, Adam on cross-entropy; returns the 1x1 weight.

    With ``cfg.mode == "jl"`` the 1x1 conv is a fixed Gaussian projection and
    only the head is trained. Validation accuracy after every epoch."""
    feats = ex.train
    k, h, w = feats.shape
    n = cfg.out_channels
    check_fits(4 * 4 * n * (k + h * w * ex.n_classes), f"a 1x1 conv of {n} channels and its head")  # + grads, Adam
    gen = torch.Generator().manual_seed(seed)
    proj = torch.nn.utils.skip_init(nn.Conv2d, k, n, kernel_size=1, bias=False)  # init below, from gen
    with torch.no_grad():
        if cfg.mode == "jl":
            proj.weight.copy_(torch.randn(n, k, 1, 1, generator=gen) / math.sqrt(n))
        else:  # PyTorch's default Conv init range, drawn from our generator
            proj.weight.copy_((torch.rand(n, k, 1, 1, generator=gen) * 2 - 1) / math.sqrt(k))
    proj.weight.requires_grad_(cfg.mode != "jl")
    head = torch.nn.utils.skip_init(nn.Linear, n * h * w, ex.n_classes)
    adam.uniform_init(head, n * h * w, gen)
    proj.to(device)
    head.to(device)
    net = plain = nn.Sequential(proj, nn.Flatten(), head)
    if dist.active():  # DDP wraps only the layer being trained (and its temporary head)
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    y_t = torch.as_tensor(ex.y, dtype=torch.long)
    world, rank = dist.world(), dist.rank()

    def batch_loss(batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # Under torchrun each rank takes every world-th example of the global batch; scaling
        # its summed loss by world/|batch| makes DDP's averaged gradient the global mean.
        local = batch[rank::world]
        if len(local):
            idx, x = next(feats.batches(local, len(local)))
        else:  # a last batch smaller than the world: this rank contributes nothing
            idx, x = local, torch.zeros((0, *feats.shape), device=device)
        target = y_t[torch.from_numpy(idx)].to(device)
        logits = net(x)
        loss = F.cross_entropy(logits, target, reduction="sum") * (world / len(batch))
        return loss, adam.correct_count(logits, target) * world  # this rank's share, scaled (exact when world = 1)

    steps_per_epoch = math.ceil(len(feats) / cfg.batch_size)
    total = cfg.adam_steps if cfg.adam_steps is not None else cfg.epochs * steps_per_epoch
    evaluate = None
    if ex.has_val:
        evaluate = lambda: evaluate_head(ex.val, ex.y_val, proj, head, device, cfg.batch_size)  # noqa: E731
    run = adam.train(
        plain, batch_loss, len(feats), steps=total, batch_size=cfg.batch_size, lr=cfg.lr,
        weight_decay=cfg.weight_decay, seed=seed, eval_every=steps_per_epoch, evaluate=evaluate,
        label=f"1x1 conv ({cfg.mode})", progress=progress, checkpoint=checkpoint, curves=curves,
    )
    stats = {
        "mode": cfg.mode,
        "epochs": math.ceil(run.steps / steps_per_epoch),
        "steps": run.steps,
        "seconds": run.seconds,
        "history": run.history,
        "loss": [r["loss"] for r in run.history],
        "val_accuracy": [r.get("val_accuracy") for r in run.history],
    }
    return TrainResult(proj.weight.detach().cpu().reshape(n, k).clone(), stats)


def evaluate_head(
    feats: FrozenFeatures, y: np.ndarray, proj: nn.Module, head: nn.Module, device: torch.device, batch_size: int
) -> float:
    correct = 0
    y_t = torch.as_tensor(y, dtype=torch.long)
    with torch.no_grad():
        for idx, x in feats.batches(np.arange(len(feats)), batch_size * 4):
            correct += int(adam.correct_count(head(proj(x).flatten(1)), y_t[torch.from_numpy(idx)].to(device)))
    return correct / len(feats)


# --------------------------------------------------------------------------- gd-linear (TLGD)


def signed_labels(y: np.ndarray) -> torch.Tensor:
    """Class ids {0, 1} -> y in {-1, +1} (the paper's binary labels)."""
    classes = np.unique(y)
    if len(classes) > 2 or not set(classes.tolist()) <= {0, 1}:
        raise TrainingError(f"gd-linear (TLGD) needs binary labels 0/1, got classes {classes.tolist()[:10]}")
    return torch.as_tensor(2.0 * y - 1.0, dtype=torch.float32)


def tlgd_loss(x: torch.Tensor, y: torch.Tensor, K: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of l_y(N_{K,W}(X)) = -y <W, K^T X>.

    x: (B, k, h, w) features; K: (k, n); W: (n, h, w); y: (B,) in {-1, +1}."""
    y_hat = torch.einsum("bchw,cj,jhw->b", x, K, W)
    return -(y * y_hat).mean()


def tlgd_gradient(x: torch.Tensor, y: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """d/dK of ``tlgd_loss`` summed over the batch (divide by N for the mean):
    -sum_b y_b X_b W^T, shape (k, n). It does not depend on K (Lemma 3)."""
    return -torch.einsum("b,bchw,jhw->cj", y, x, W)


def train_tlgd(ex: Examples, cfg: TrainConfig, *, seed: int, device: torch.device,
               progress: Progress = no_progress, checkpoint=None, curves=None) -> TrainResult:
    """TLGD(S, T, eta, n, sigma) of §4.1 on the sample (the population loss
    replaced by its empirical mean). Returns K_T transposed as the (n, k)
    weight of the 1x1 conv.

    The loss is linear in K, so its gradient is the same at every iterate
    (Lemma 3): we compute it with one pass over the data and take T steps,
    which is exactly T iterations of full-batch GD."""
    feats = ex.train
    k, h, w = feats.shape
    ys = signed_labels(ex.y)
    gen = torch.Generator().manual_seed(seed)
    n = cfg.out_channels
    W = torch.randn(n, h, w, generator=gen).to(device)  # W_0 ~ N(0, 1), fixed
    K = uniform_sphere_rows(k, n, cfg.sigma / (2 * math.sqrt(n)), gen).to(device)
    t0 = time.perf_counter()
    grad = torch.zeros(k, n, device=device)
    part = dist.shard(len(feats))  # under torchrun: each rank sums its share, then all-reduce
    rows = np.arange(part.start, part.stop)
    seen = 0
    for idx, x in feats.batches(rows, max(cfg.batch_size, 256)):
        grad += tlgd_gradient(x, ys[torch.from_numpy(idx)].to(device), W)
        seen += len(idx)
        progress("TLGD gradient", seen, len(rows))
    dist.all_reduce_(grad)
    grad /= len(feats)
    losses = []
    for t in range(cfg.gd_steps):
        losses.append(float((K * grad).sum()))  # L(K) = <K, grad L> for a linear loss
        K = K - cfg.eta * grad
        if not torch.isfinite(K).all():
            raise TrainingError(f"TLGD diverged at iteration {t + 1}; lower --eta")
    losses.append(float((K * grad).sum()))
    stats = {
        "mode": "gd-linear",
        "iterations": cfg.gd_steps,
        "eta": cfg.eta,
        "sigma": cfg.sigma,
        "seconds": round(time.perf_counter() - t0, 3),
        "loss": losses[:: max(1, len(losses) // 50)] + ([losses[-1]] if len(losses) % 50 else []),
    }
    if ex.has_val:
        correct = 0
        yv = signed_labels(ex.y_val)
        with torch.no_grad():
            for idx, x in ex.val.batches(np.arange(len(ex.val)), 512):
                y_hat = torch.einsum("bchw,cj,jhw->b", x, K, W)
                correct += int((torch.sign(y_hat).cpu() == yv[torch.from_numpy(idx)]).sum())
        stats["val_accuracy"] = [correct / len(ex.val)]
    return TrainResult(K.t().contiguous().cpu(), stats)


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class TrainMode:
    """How a block's 1x1 conv is made. ``fit(examples, cfg, *, seed, device,
    progress, checkpoint, curves) -> TrainResult`` (a long loop saves its state
    to ``checkpoint``, see ``adam.train``); None: the block keeps the encoder's
    k channels (no 1x1 conv)."""

    fit: Callable[..., TrainResult] | None
    help: str  # one line, shown by `hgm train-layer --help`


TRAIN_MODES: dict[str, TrainMode] = {
    "adam-ce": TrainMode(train_adam, "§6: 1x1 conv + temporary linear head, Adam on cross-entropy"),
    "gd-linear": TrainMode(train_tlgd, "§4.1 TLGD: GD on the linear loss -y<W, K^T X>, binary labels"),
    "jl": TrainMode(train_adam, "Clustering+JL (§6): a random Gaussian 1x1 projection, never trained"),
    "none": TrainMode(None, "no 1x1 conv: the block outputs the k encoder channels (Algorithm 1's last layer)"),
}
