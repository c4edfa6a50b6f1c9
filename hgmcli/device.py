"""Device selection, shared by every stage: ``auto`` means CUDA when torch
sees a GPU, else CPU. Asking for ``cuda`` without one is a user error."""

from __future__ import annotations

import torch

from .errors import HgmError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for ``name``; on CUDA also allows TF32 in convolutions and
    matmuls (features and 1x1 training tolerate it; k-means switches it off
    inside its own calls, where float32 distances matter)."""
    dev = _resolve(name)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def _resolve(name: str | torch.device) -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HgmError(f"--device {name}: no CUDA device is available (torch {torch.__version__})")
        return torch.device(name)
    raise HgmError(f"unknown device {name!r}; expected auto, cpu or cuda")
