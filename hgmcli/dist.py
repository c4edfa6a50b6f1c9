"""Running past one device with torch.distributed (``torchrun``):

    torchrun --nproc-per-node N -m hgmcli cluster ...       # k-means over sharded patches
    torchrun --nproc-per-node N -m hgmcli train-layer ...   # DDP on the 1x1 conv + head only

Every rank runs the same command; ``init_from_env`` joins the process group
that torchrun describes in the environment (NCCL on CUDA, gloo on the CPU).
Only rank 0 writes files and prints. The k-means result equals the
single-process one for the same seed (see ``kmeans.py``); training splits every
global batch across the ranks, so DDP's averaged gradient is the
single-process gradient up to float rounding."""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if active() else 0


def world() -> int:
    return tdist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str = "auto") -> str:
    """Join torchrun's process group if the environment describes one.

    Returns the device this rank should use: ``cuda:<LOCAL_RANK>`` when the
    group runs on GPUs, else ``device`` unchanged."""
    if active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (on the device the default group uses)."""
    if active():
        tdist.all_reduce(t)
    return t


_CPU_GROUP = None


def _cpu_group():
    """A gloo group for collectives on CPU tensors (NCCL only moves CUDA tensors)."""
    global _CPU_GROUP
    if tdist.get_backend() == "gloo":
        return None  # the default group
    if _CPU_GROUP is None:
        _CPU_GROUP = tdist.new_group(backend="gloo")
    return _CPU_GROUP


def agree(flag: bool) -> bool:
    """True only if ``flag`` is true on every rank (decisions that must match, e.g. caching)."""
    if not active():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN, group=_cpu_group())
    return bool(t.item())


def share_rows(cache: torch.Tensor) -> None:
    """Every rank filled its ``shard`` of the CPU tensor ``cache``; give every rank all rows.

    Sent as raw bytes: the collectives need not support float16 / uint8."""
    if not active():
        return
    n, group = len(cache), _cpu_group()
    for r in range(world()):
        block = cache[shard(n, r)]  # contiguous rows: a view
        if block.numel() == 0:
            continue
        raw = block.reshape(-1).view(torch.uint8)
        tdist.broadcast(raw, src=r, group=group)  # in place: rank r sends, the others receive


def shard(n: int, r: int | None = None) -> slice:
    """Rank r's contiguous share of n rows (the first n % world ranks get one more)."""
    w, r = world(), rank() if r is None else r
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))
