"""The frozen part's outputs, and the memory they may take.

* ``FrozenFeatures``: f(x) over one split (f = network so far + cluster conv +
  encoder + pool, or a baseline's frozen convs), cached as float16 or uint8
  when it fits a byte budget, else recomputed batch by batch: peak memory is
  bounded whatever the dataset size.
* ``FeatureCache``: network outputs kept between the stages of one process
  (``hgm pipeline``): cluster i+1, train-layer i+1, fit-svm and evaluate all
  push the same images through the same network. One network's outputs at a
  time, within ``OUTPUT_SHARE`` of the memory.
* The memory policy: the shares below, and ``check_fits`` for refusing a
  request that cannot fit before anything is allocated."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import artifacts, dist
from .config import parse_size
from .errors import DataError
from .progress import Progress, no_progress

# Shares of the RAM available when a stage starts (Linux MemAvailable):
CACHE_SHARE = 0.4  # a stage's cache of frozen features (train + val) when the config says
# memory_budget: auto. Under half, because the network outputs kept between stages (OUTPUT_SHARE)
# and the training itself (batches, Adam state, the next stage's patches) live beside it.
OUTPUT_SHARE = 0.25  # network outputs kept between the stages of one pipeline (FeatureCache):
# float16 net(x) of train + val; worth keeping only while it leaves the next stage its CACHE_SHARE.
GPU_CACHE_SHARE = 0.5  # of the *GPU's* free memory: above it the cache stays in pinned host memory,
# leaving the GPU room for the forward passes, k-means and cuBLAS workspaces.


def meminfo(field: str) -> int | None:
    """A /proc/meminfo field in bytes (Linux), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory() -> int:
    """Bytes of RAM available now (Linux MemAvailable; a conservative guess elsewhere)."""
    if (avail := meminfo("MemAvailable")) is not None:
        return avail
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def memory_budget(text: str) -> int:
    """Cache budget in bytes: a configured size ("4G"), or ``auto``: CACHE_SHARE of the available RAM."""
    return int(CACHE_SHARE * available_memory()) if text == "auto" else parse_size(text)


def check_fits(nbytes: float, what: str) -> None:
    """Refuse, before allocating, a request of ``nbytes`` that cannot fit in the
    available RAM (a ``DataError`` with the estimate), instead of a MemoryError
    half-way."""
    free = available_memory()
    if nbytes > free:
        raise DataError(f"{what} would need about {_gib(nbytes)} of memory; {_gib(free)} is available")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n < 2**50 else f"{n:.3g} bytes"


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
        self.fn, self.images, self.device, self.batch_size = None, cache, device, 256  # fn: never recomputed
        self.shape = tuple(cache.shape[1:])
        self.cache_dtype, self.scale = torch.float16, 1.0
        self.cache_bytes, self.cached, self.cache = cache.numel() * 2, True, cache
        return self

    def __len__(self) -> int:
        return len(self.images)

    def _cache_device(self) -> torch.device:
        """On a GPU, keep the cache on the GPU when it fits in GPU_CACHE_SHARE of its free memory
        (no host-to-device copy per batch); otherwise in pinned host memory."""
        if self.device.type != "cuda":
            return torch.device("cpu")
        if not dist.active() and self.cache_bytes <= GPU_CACHE_SHARE * torch.cuda.mem_get_info(self.device)[0]:
            return self.device
        return torch.device("cpu")

    def _encode(self, f: torch.Tensor) -> torch.Tensor:
        """The cache's form of a fresh batch of features; consumes ``f`` (in place: each
        elementwise pass over a batch is memory-bound, and the out-of-place version took
        2.7x as long, 80 against 30 ms for 256 x 384 x 16 x 16 on the 2-core box)."""
        if self.cache_dtype == torch.uint8:
            return f.div_(self.scale).round_().clamp_(0, 255).to(torch.uint8)
        return f.to(torch.float16)

    def _decode(self, f: torch.Tensor) -> torch.Tensor:
        f = f.to(self.device, non_blocking=True).float()  # a new tensor: scaled in place
        return f.mul_(self.scale) if self.cache_dtype == torch.uint8 else f

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


@dataclass
class Examples:
    """What a trainer (``train.TRAIN_MODES``, ``classify.HEADS``) learns from:
    the training split's features and labels, and the validation split's
    (None: no validation curve)."""

    train: FrozenFeatures
    y: np.ndarray  # (N,) int64 class ids
    n_classes: int
    val: FrozenFeatures | None = None
    y_val: np.ndarray | None = None

    @property
    def has_val(self) -> bool:
        return self.val is not None and self.y_val is not None and len(self.val) > 0


# --------------------------------------------------------------------------- outputs kept between stages


class FeatureCache:
    """net(x) per (network file, dataset, split), kept between the stages of one
    process. The pipeline makes one and hands it to every stage; a single
    command gets none (it runs one stage). Holds one network's outputs at a
    time (the latest: no later stage needs an earlier network's), float16 on
    the CPU."""

    def __init__(self):
        self._entries: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def key(model: str | Path, ds) -> tuple:
        return (artifacts.file_hash(model), str(ds.path), ds.split, len(ds))

    def get(self, key: tuple) -> torch.Tensor | None:
        return self._entries.get(key)

    def put(self, key: tuple, outputs: torch.Tensor) -> None:
        self.evict(keep=key[0])
        self._entries[key] = outputs

    def evict(self, keep: str | None = None) -> None:
        """Drop every entry except those of the network whose file hash is ``keep``."""
        for k in [k for k in self._entries if k[0] != keep]:
            del self._entries[k]

    def __len__(self) -> int:
        return len(self._entries)


def network_outputs(net, model: str | Path | None, ds, device: torch.device, batch_size: int, *,
                    cache: FeatureCache | None = None, progress: Progress = no_progress,
                    label: str = "network outputs") -> FrozenFeatures:
    """FrozenFeatures of net(x) over ``ds``: taken from ``cache`` when an earlier
    stage of this process left them there for the same network file and split,
    else computed (and put there when they fit OUTPUT_SHARE of the memory)."""
    key = FeatureCache.key(model, ds) if (cache is not None and model is not None) else None
    if key is not None and (kept := cache.get(key)) is not None:
        return FrozenFeatures.from_tensor(kept, device)
    budget = int(OUTPUT_SHARE * available_memory())
    feats = FrozenFeatures(net, ds.images, device=device, batch_size=batch_size, budget=budget,
                           progress=progress, label=label)
    if key is not None and feats.cache is not None:
        cache.put(key, feats.cache)
    return feats


def keep_projected(cache: FeatureCache | None, out: str | Path, splits: list, proj: torch.Tensor,
                   budget: int, device: torch.device) -> None:
    """Leave net(x) of the network just written at ``out`` in ``cache`` for the
    stages that follow (next cluster, fit-svm, evaluate): the 1x1 conv ``proj``
    (n, k) applied to the frozen features still in memory, a cheap pass
    instead of the whole network again. Only when every split of ``splits``
    ([(dataset, FrozenFeatures)], None datasets skipped) is cached, everything
    fits ``budget``, and this process wrote the file (rank 0)."""
    splits = [(d, f) for d, f in splits if d is not None]
    if cache is None or not Path(out).exists() or any(f.cache is None for _, f in splits):
        return
    n = proj.shape[0]
    outputs_bytes = sum(len(f) * n * int(np.prod(f.shape[1:])) * 2 for _, f in splits)
    if sum(f.cache_bytes for _, f in splits) + outputs_bytes > budget:
        return
    w = proj.to(device).reshape(n, -1)
    for ds_split, feats in splits:
        outs = torch.empty((len(feats), n, *feats.shape[1:]), dtype=torch.float16)
        for idx, x in feats.batches(np.arange(len(feats)), 512):
            outs[torch.from_numpy(idx)] = torch.einsum("nk,bkhw->bnhw", w, x).to(torch.float16).cpu()
        cache.put(FeatureCache.key(out, ds_split), outs)


def block_features(net, block, model, ds, ds_val, rcfg, budget: int, dev, cache, progress) -> list:
    """[(dataset, FrozenFeatures)] for train and val (None when there is no val
    split): block.frozen(net(x)), the memory budget shared by size. Starts from
    the network's outputs when an earlier stage of this process kept them."""
    n_val = len(ds_val) if ds_val is not None else 0
    common = dict(device=dev, batch_size=rcfg.batch_size_features, cache_dtype=rcfg.cache_dtype,
                  value_max=block.cluster.value_max())
    splits = []
    for split_ds, label in ((ds, "train"), (ds_val, "val")):
        if split_ds is None:
            splits.append((None, None))
            continue
        part = int(budget * len(split_ds) / (len(ds) + n_val))
        outs = None
        if model is not None:
            outs = network_outputs(net, model, split_ds, dev, rcfg.batch_size_features, cache=cache,
                                            progress=progress, label=f"network outputs ({label})")
        if outs is not None and outs.cache is not None:
            f = FrozenFeatures(lambda t: block.frozen(t.float()), outs.cache, budget=part,
                                        progress=progress, label=f"features ({label})", **common)
        else:
            f = FrozenFeatures(lambda x: block.frozen(net(x)), split_ds.images, budget=part,
                                        progress=progress, label=f"features ({label})", **common)
        splits.append((split_ds, f))
    if cache is not None and all(f is None or f.cached for _, f in splits):
        cache.evict()  # the input network's outputs are in these caches now: free them before training
    return splits


def describe(f: dict | None) -> str:
    """One line for a FrozenFeatures.stats() dict (the train-layer summary)."""
    if not f:
        return "-"
    where = f"cached as {f['cache_dtype']}" if f["cached"] else "recomputed every epoch (over the memory budget)"
    shape = "x".join(map(str, f["shape"]))
    return f"{shape} per image, {f['cache_bytes'] / 2**30:.2f} GiB, {where}"
