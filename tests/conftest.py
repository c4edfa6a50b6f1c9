"""Shared test fixtures and the skip rules for slow / CIFAR / GPU tests.

Slow tests run only with HGM_SLOW=1 (``make test-all``); CIFAR tests need the
batches at $HGM_CIFAR or ../shared/data next to the repository; GPU tests
need CUDA. Each skip prints its reason (pytest -ra)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cifar_root() -> Path | None:
    for candidate in (os.environ.get("HGM_CIFAR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "cifar-10-batches-py" / "data_batch_1").exists():
            return Path(candidate)
    return None


def pytest_collection_modifyitems(config, items):
    slow_ok = os.environ.get("HGM_SLOW") == "1"
    have_cifar = cifar_root() is not None
    try:
        import torch

        have_gpu = torch.cuda.is_available()
    except ImportError:
        have_gpu = False
    for item in items:
        if "slow" in item.keywords and not slow_ok:
            item.add_marker(pytest.mark.skip(reason="slow test: run with HGM_SLOW=1 (make test-all)"))
        if "cifar" in item.keywords and not have_cifar:
            item.add_marker(
                pytest.mark.skip(reason="CIFAR-10 batches not found: set HGM_CIFAR to a folder holding cifar-10-batches-py")
            )
        if "gpu" in item.keywords and not have_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture
def cifar() -> Path:
    root = cifar_root()
    if root is None:
        pytest.skip("CIFAR-10 batches not found: set HGM_CIFAR")
    return root
