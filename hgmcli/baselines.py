"""The paper's comparison networks (§6, Figure 3): a vanilla CNN trained end to
end, and the same CNN with random, frozen convolutions.

The CNN is the TensorFlow CIFAR-10 tutorial network the paper compares with
("CNN+(FC+ReLU)3" / "CNN+Linear"):

    Preprocess -> [Conv5x5(64, "same") -> ReLU -> MaxPool(3, stride 2, pad 1)] x 2
               -> head: FC-ReLU 384 -> FC-ReLU 192 -> FC L    ("fc")
                        or one FC layer C*H*W -> L             ("linear")

Departures from the tutorial, all following §6's "no tricks" (no data
augmentation, dropout, batch norm, learning-rate schedule or weight
averaging): no local response normalisation, no random 24x24 crops (the
network sees the whole 32x32 image, so the head's input is 64x8x8 = 4096
on CIFAR-10), Adam on cross-entropy with a constant learning rate instead of
SGD with decay. Initialisation is PyTorch's default for Conv2d / Linear
(weights and biases uniform in +-1/sqrt(fan_in)), drawn from an explicit
``torch.Generator(seed)`` so a seed rebuilds the same initial network; the
global RNG is left untouched.

* ``arch="cnn"``: convolutions and head trained together, Adam on
  cross-entropy, ``cfg.adam_steps`` steps of ``cfg.batch_size`` images.
* ``arch="cnn-random"`` ("CNN(Random)"): the same initial convolutions,
  frozen; only the head is trained. The frozen features are computed once
  through ``FrozenFeatures`` (cached as float16 within the memory budget,
  otherwise recomputed every epoch), so an epoch costs only the head.

Images stay on the host (uint8 CIFAR-10, float32 synthetic); each step
gathers its batch, pins it on CUDA and copies it asynchronously. Training is
``adam.train``, the loop every hgm model trains with.

Measured on the development machine (2 shared CPU cores, load average 1.5-2.9
from other jobs, torch 2.14 CPU, 2 threads, batch 128, 40,000 uint8 CIFAR-10
training images): "cnn"+fc 0.46 s per step over 300 steps, i.e. about 145 s
(2.4 min) per epoch of 313 steps; "cnn-random"+fc 0.06 s per head step
(about 20 s per epoch) after a one-off ~2.5 min to cache the 64x8x8 float16
features (330 MB). The paper's 100k steps of "cnn" are a GPU job."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import adam
from .classify import build_head, head_spec
from .errors import HgmError, TrainingError
from .features import FrozenFeatures
from .network import ConvBlock, Network, Preprocess, network_payload
from .progress import Progress, no_progress

if TYPE_CHECKING:
    from .config import ClassifierConfig

ARCHS = {  # Figure 3's comparison networks
    "cnn": "the TF-tutorial CNN, trained end to end",
    "cnn-random": "the same CNN with its random initial convolutions frozen; only the head is trained",
}
HEADS = ("fc", "linear")
CHANNELS = 64  # conv1 and conv2 output channels (TF tutorial)
KERNEL = 5  # conv kernel size (TF tutorial: 5x5)


# --------------------------------------------------------------------------- building


def build_cnn(
    input_shape: list[int], norm: dict, *, gen: torch.Generator, channels: int = CHANNELS, kernel: int = KERNEL
) -> Network:
    """Preprocess + two ConvBlocks (conv kernel x kernel "same" -> ReLU -> MaxPool(3, 2, pad 1)).

    input_shape: (C, H, W); norm: ``data.normalization``'s dict. Weights drawn from ``gen``."""
    c_in = int(input_shape[0])
    blocks = []
    for c in (c_in, channels):
        fan_in = c * kernel * kernel
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(channels, c, kernel, kernel, generator=gen) * 2 - 1) * bound  # (out, in, k, k)
        b = (torch.rand(channels, generator=gen) * 2 - 1) * bound
        blocks.append(ConvBlock(w, b, pool_size=3, pool_stride=2))
    return Network(Preprocess(norm["scale"], norm["mean"], norm["std"]), blocks, input_shape)


def check_choice(arch: str, head: str) -> None:
    if arch not in ARCHS:
        raise HgmError(f"unknown baseline architecture {arch!r}: expected {' or '.join(ARCHS)}")
    if head not in HEADS:
        raise HgmError(f"unknown baseline head {head!r}: expected fc or linear")


# --------------------------------------------------------------------------- batches


Batches = Callable[[np.ndarray, int], Iterator[tuple[np.ndarray, torch.Tensor]]]


def _image_batches(images: np.ndarray, device: torch.device) -> Batches:
    """(indices, image batch on device) in ``order``; pinned + async copy on CUDA."""

    def batches(order: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = torch.from_numpy(images[idx])  # fancy indexing copies: (B, C, H, W), uint8 or float32
            if device.type == "cuda":
                x = x.pin_memory().to(device, non_blocking=True)
            yield idx, x

    return batches


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def _accuracy(model: nn.Module, batches: Batches, labels: np.ndarray, device: torch.device, batch_size: int) -> float:
    """Fraction of ``labels`` that argmax(model(x)) gets right; one device sync."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad():
        for idx, x in batches(np.arange(len(labels)), batch_size):
            correct += adam.correct_count(model(x), _to_device(labels[idx], device))
    model.train(was_training)
    return float(correct.item()) / max(len(labels), 1)


# --------------------------------------------------------------------------- training


def train_baseline(
    ds_train,
    ds_val,
    norm: dict,
    *,
    arch: str,
    head: str,
    cfg: ClassifierConfig,
    seed: int,
    device: torch.device,
    memory_budget: int,
    progress: Progress = no_progress,
    checkpoint=None,
    curves=None,
) -> tuple[Network, nn.Sequential, list[tuple[int, float]], dict]:
    """Train one of Figure 3's baselines; returns (network, head, curve, stats), both modules on the CPU.

    ds_train / ds_val: ``data.Dataset`` (ds_val may be None: no curve). norm:
    ``data.normalization``'s dict, baked into the network's Preprocess.
    ``cfg``: adam_steps, batch_size, lr, weight_decay, eval_every, hidden (the
    FC widths; default 384, 192 as in the TF tutorial), batch_size_features
    (evaluation / feature batches); ``cfg.head`` is ignored (``head``
    decides). The curve holds (step, validation accuracy) every
    ``cfg.eval_every`` steps, plus the last step if it is not a multiple.
    ``memory_budget``: bytes for the cnn-random feature cache (train + val)."""
    check_choice(arch, head)
    if len(ds_train) == 0:
        raise TrainingError("the training split is empty")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    input_shape = list(ds_train.images.shape[1:])
    n_classes = len(ds_train.label_names)
    net = build_cnn(input_shape, norm, gen=gen)
    feat_shape = net.output_shape()  # (64, H/4, W/4)
    clf = build_head(head, int(np.prod(feat_shape)), n_classes, cfg.hidden, gen=gen)
    net.to(device)
    clf.to(device)
    have_val = ds_val is not None and len(ds_val) > 0
    stats: dict = {"arch": arch, "head": head, "feature_shape": feat_shape, "head_dims": head_spec(clf)}

    if arch == "cnn":
        model: nn.Module = nn.Sequential(net, clf)
        train_batches = _image_batches(ds_train.images, device)
        val_batches = _image_batches(ds_val.images, device) if have_val else None
    else:
        net.eval().requires_grad_(False)
        model = clf
        n_val = len(ds_val) if have_val else 0
        share = len(ds_train) / (len(ds_train) + n_val)
        common = dict(device=device, batch_size=cfg.batch_size_features)
        feats = FrozenFeatures(
            net, ds_train.images, budget=int(memory_budget * share), progress=progress, label="features (train)",
            **common,
        )
        train_batches = feats.batches
        val_batches = None
        if have_val:
            vfeats = FrozenFeatures(
                net, ds_val.images, budget=int(memory_budget * (1 - share)), progress=progress,
                label="features (val)", **common,
            )
            val_batches = vfeats.batches
        stats["features"] = feats.stats()
    stats["trained_parameters"] = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    model.train()

    def batch_loss(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        _, x = next(train_batches(idx, len(idx)))
        y = _to_device(ds_train.labels[idx], device)
        logits = model(x)
        return F.cross_entropy(logits, y), adam.correct_count(logits, y)

    evaluate = None
    if have_val:
        evaluate = lambda: _accuracy(model, val_batches, ds_val.labels, device, cfg.batch_size_features)  # noqa: E731
    run = adam.train(
        model, batch_loss, len(ds_train), steps=cfg.adam_steps, batch_size=cfg.batch_size, lr=cfg.lr,
        weight_decay=cfg.weight_decay, seed=seed, eval_every=cfg.eval_every, evaluate=evaluate,
        label=f"baseline {arch}+{head}", progress=progress, checkpoint=checkpoint, curves=curves,
    )
    stats.update(
        iterations=run.steps,
        epochs=round(run.steps * cfg.batch_size / len(ds_train), 3),
        final_loss=run.final_loss,
        history=run.history,
        train_seconds=run.seconds,
        steps_per_second=round(run.steps / max(run.seconds, 1e-9), 2),
        seconds=round(time.perf_counter() - t0, 3),
    )
    net.requires_grad_(True)  # a module handed back behaves like any other; the payload holds tensors only
    return net.cpu().eval(), clf.cpu().eval(), run.curve, stats


# --------------------------------------------------------------------------- artifact


def baseline_payload(
    net: Network, head: nn.Sequential, kind: str, curve: list[tuple[int, float]], label_names: list[str],
    *, arch: str | None = None,
) -> dict:
    """The classifier-artifact payload (as ``stages.fit_svm`` writes it) that
    carries its own network, for ``artifacts.save_pt``: ``stages.load_classifier``,
    ``evaluate`` and ``export`` then need no --model. ``net`` and ``head`` on the
    CPU, as ``train_baseline`` returns them; ``arch`` is recorded when given."""
    if kind not in HEADS:
        raise HgmError(f"unknown baseline head {kind!r}: expected fc or linear")
    payload = {
        "kind": kind,
        "dims": head_spec(head),
        "state": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "input_shape": list(net.output_shape()),
        "label_names": list(label_names),
        "curve": [[int(s), float(a)] for s, a in curve],
        "network": network_payload(net),
    }
    if arch is not None:
        payload["arch"] = arch
    return payload


__all__ = ["ARCHS", "HEADS", "baseline_payload", "build_cnn", "train_baseline"]
