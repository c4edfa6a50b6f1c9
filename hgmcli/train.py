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

The frozen part (network so far + cluster conv + ReLU + pool) runs under
``no_grad``; its outputs are cached (float16, or uint8 when their range is
known) when they fit the memory budget, otherwise recomputed batch by batch
every epoch, so peak memory is bounded whatever the dataset size."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import dist
from .config import TrainConfig, parse_size
from .errors import TrainingError
from .network import uniform_sphere_rows
from .progress import Progress, no_progress


def available_memory() -> int:
    """Bytes of RAM available now (Linux MemAvailable; a conservative guess elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def memory_budget(text: str | None) -> int:
    """Cache budget in bytes: the configured size, or 40% of available RAM."""
    size = parse_size(text)
    return size if size is not None else int(0.4 * available_memory())


# --------------------------------------------------------------------------- frozen features


class FrozenFeatures:
    """The frozen part's outputs for one split, cached or recomputed.

    fn: (B, C, H, W) image batch on ``device`` -> (B, k, h, w) float features.
    ``value_max``: a known upper bound of the (non-negative) features, which
    allows the uint8 cache; None means unknown (float16 only)."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        images: np.ndarray,
        *,
        device: torch.device,
        batch_size: int,
        budget: int,
        cache_dtype: str = "float16",
        value_max: float | None = None,
        progress: Progress = no_progress,
        label: str = "features",
    ):
        self.fn, self.images, self.device, self.batch_size = fn, images, device, batch_size
        with torch.no_grad():
            probe = fn(_rows(images, np.arange(1)).to(device))
        self.shape = tuple(probe.shape[1:])  # (k, h, w)
        per_item = int(np.prod(self.shape))
        use_uint8 = cache_dtype == "uint8" and value_max is not None and value_max > 0
        self.cache_dtype = torch.uint8 if use_uint8 else torch.float16
        self.scale = (value_max / 255.0) if use_uint8 else 1.0
        self.cache_bytes = per_item * len(images) * (1 if use_uint8 else 2)
        self.cached = dist.agree(self.cache_bytes <= budget)  # ranks must take the same branch
        self.cache: torch.Tensor | None = None
        if self.cached:
            self.cache = torch.empty((len(images), *self.shape), dtype=self.cache_dtype, device=self._cache_device())
            part = dist.shard(len(images))  # under torchrun each rank computes its share, then all swap
            rows = np.arange(part.start, part.stop)
            n_batches = math.ceil(len(rows) / batch_size)
            for i, (start, feats) in enumerate(self._compute(rows)):
                self.cache[part.start + start : part.start + start + len(feats)] = self._encode(feats).to(self.cache.device)
                progress(label, i + 1, n_batches)
            if self.device.type == "cuda" and self.cache.device.type == "cpu":
                self.cache = self.cache.pin_memory()  # batches then copy asynchronously
            dist.share_rows(self.cache)

    @classmethod
    def from_tensor(cls, cache: torch.Tensor, device: torch.device) -> FrozenFeatures:
        """Features computed earlier (float16, on the CPU), served like a fresh cache."""
        self = cls.__new__(cls)
        self.fn, self.images, self.device, self.batch_size = None, cache, device, 256
        self.shape = tuple(cache.shape[1:])
        self.cache_dtype, self.scale = torch.float16, 1.0
        self.cache_bytes, self.cached, self.cache = cache.numel() * 2, True, cache
        return self

    def __len__(self) -> int:
        return len(self.images)

    def _cache_device(self) -> torch.device:
        """On a GPU, keep the cache on the GPU when it fits in half of its free memory
        (no host-to-device copy per batch); otherwise in pinned host memory."""
        if self.device.type != "cuda":
            return torch.device("cpu")
        if not dist.active() and self.cache_bytes <= 0.5 * torch.cuda.mem_get_info(self.device)[0]:
            return self.device
        return torch.device("cpu")

    def _encode(self, f: torch.Tensor) -> torch.Tensor:
        if self.cache_dtype == torch.uint8:
            return torch.round(f / self.scale).clamp_(0, 255).to(torch.uint8)
        return f.to(torch.float16)

    def _decode(self, f: torch.Tensor) -> torch.Tensor:
        f = f.to(self.device, non_blocking=True).float()
        return f * self.scale if self.cache_dtype == torch.uint8 else f

    def _compute(self, order: np.ndarray) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = _rows(self.images, idx)
            with torch.no_grad():  # only around fn: a yield inside no_grad would switch off the caller's autograd
                feats = self.fn(batch.to(self.device, non_blocking=True)).float()
            yield start, feats

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(indices, float32 features on device) for ``order`` in chunks of ``batch_size``."""
        if self.cache is not None:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                yield idx, self._decode(self.cache[torch.from_numpy(idx).to(self.cache.device)])
        else:
            saved = self.batch_size
            self.batch_size = batch_size
            try:
                for start, feats in self._compute(order):
                    yield order[start : start + batch_size], feats
            finally:
                self.batch_size = saved

    def stats(self) -> dict:
        return {
            "shape": list(self.shape),
            "cached": self.cached,
            "cache_dtype": str(self.cache_dtype).removeprefix("torch."),
            "cache_bytes": self.cache_bytes,
        }


def _rows(images: np.ndarray | torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """images[idx] as a tensor: a numpy image array, or features kept as a (float16) tensor."""
    if isinstance(images, torch.Tensor):
        return images[torch.from_numpy(np.asarray(idx))]
    return torch.from_numpy(np.ascontiguousarray(images[idx]))


# --------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    proj: torch.Tensor | None  # (n, k) weight of the 1x1 conv, or None (mode "none")
    stats: dict


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> int:
    return int((logits.argmax(dim=1) == y).sum())


def _check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"loss became {loss.item()} at epoch {epoch}, step {step}; lower --lr")


# --------------------------------------------------------------------------- adam-ce and jl


def train_adam(
    feats: FrozenFeatures,
    y: np.ndarray,
    val: FrozenFeatures | None,
    y_val: np.ndarray | None,
    n_classes: int,
    cfg: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    progress: Progress = no_progress,
) -> TrainResult:
    """§6: Conv1x1 (k -> n) + affine head, Adam on cross-entropy; returns the 1x1 weight.

    With ``cfg.mode == "jl"`` the 1x1 conv is a fixed Gaussian projection and
    only the head is trained."""
    k, h, w = feats.shape
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    proj = nn.Conv2d(k, cfg.n, kernel_size=1, bias=False)
    if cfg.mode == "jl":
        with torch.no_grad():
            proj.weight.copy_(torch.randn(cfg.n, k, 1, 1, generator=gen) / math.sqrt(cfg.n))
        proj.weight.requires_grad_(False)
    else:
        bound = 1.0 / math.sqrt(k)  # PyTorch's default Conv init range, drawn from our generator
        with torch.no_grad():
            proj.weight.copy_((torch.rand(cfg.n, k, 1, 1, generator=gen) * 2 - 1) * bound)
    head = nn.Linear(cfg.n * h * w, n_classes)
    with torch.no_grad():
        hb = 1.0 / math.sqrt(cfg.n * h * w)
        head.weight.copy_((torch.rand(head.weight.shape, generator=gen) * 2 - 1) * hb)
        head.bias.copy_((torch.rand(head.bias.shape, generator=gen) * 2 - 1) * hb)
    proj.to(device)
    head.to(device)
    net = nn.Sequential(proj, nn.Flatten(), head)
    if dist.active():  # DDP wraps only the layer being trained (and its temporary head)
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in (*proj.parameters(), *head.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    y_t = torch.as_tensor(y, dtype=torch.long)
    world, rank = dist.world(), dist.rank()

    n = len(feats)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    history: list[dict] = []
    step = 0
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)  # the same on every rank
        loss_sum, correct, seen = 0.0, 0, 0
        for start in range(0, n, cfg.batch_size):
            if step >= total_steps:
                break
            batch = order[start : start + cfg.batch_size]
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
            _check_finite(loss, epoch, step + 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(batch) / world
            correct += _accuracy(logits.detach(), target) * world  # this rank's share, scaled (exact when world = 1)
            seen += len(batch)
            progress(f"epoch {epoch}/{epochs}", seen, n, loss=loss_sum / seen, acc=correct / seen)
        record = {"epoch": epoch, "steps": step, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}
        if val is not None and y_val is not None and len(val) > 0:
            record["val_accuracy"] = evaluate_head(val, y_val, proj, head, device, cfg.batch_size)
        history.append(record)
    stats = {
        "mode": cfg.mode,
        "epochs": epochs,
        "steps": step,
        "seconds": round(time.perf_counter() - t0, 3),
        "history": history,
        "loss": [r["loss"] for r in history],
        "val_accuracy": [r.get("val_accuracy") for r in history],
    }
    return TrainResult(proj.weight.detach().cpu().reshape(cfg.n, k).clone(), stats)


def evaluate_head(
    feats: FrozenFeatures, y: np.ndarray, proj: nn.Module, head: nn.Module, device: torch.device, batch_size: int
) -> float:
    correct = 0
    y_t = torch.as_tensor(y, dtype=torch.long)
    with torch.no_grad():
        for idx, x in feats.batches(np.arange(len(feats)), batch_size * 4):
            correct += _accuracy(head(proj(x).flatten(1)), y_t[torch.from_numpy(idx)].to(device))
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


def train_tlgd(
    feats: FrozenFeatures,
    y: np.ndarray,
    val: FrozenFeatures | None,
    y_val: np.ndarray | None,
    cfg: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    progress: Progress = no_progress,
) -> TrainResult:
    """TLGD(S, T, eta, n, sigma) of §4.1 on the sample (the population loss
    replaced by its empirical mean). Returns K_T transposed as the (n, k)
    weight of the 1x1 conv.

    The loss is linear in K, so its gradient is the same at every iterate
    (Lemma 3): we compute it with one pass over the data and take T steps,
    which is exactly T iterations of full-batch GD."""
    k, h, w = feats.shape
    ys = signed_labels(y)
    gen = torch.Generator().manual_seed(seed)
    n = cfg.n
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
    for t in range(cfg.iterations):
        losses.append(float((K * grad).sum()))  # L(K) = <K, grad L> for a linear loss
        K = K - cfg.eta * grad
        if not torch.isfinite(K).all():
            raise TrainingError(f"TLGD diverged at iteration {t + 1}; lower --eta")
    losses.append(float((K * grad).sum()))
    stats = {
        "mode": "gd-linear",
        "iterations": cfg.iterations,
        "eta": cfg.eta,
        "sigma": cfg.sigma,
        "seconds": round(time.perf_counter() - t0, 3),
        "loss": losses[:: max(1, len(losses) // 50)] + ([losses[-1]] if len(losses) % 50 else []),
    }
    if val is not None and y_val is not None and len(val) > 0:
        correct = 0
        yv = signed_labels(y_val)
        with torch.no_grad():
            for idx, x in val.batches(np.arange(len(val)), 512):
                y_hat = torch.einsum("bchw,cj,jhw->b", x, K, W)
                correct += int((torch.sign(y_hat).cpu() == yv[torch.from_numpy(idx)]).sum())
        stats["val_accuracy"] = [correct / len(val)]
    return TrainResult(K.t().contiguous().cpu(), stats)

