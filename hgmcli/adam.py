"""The one Adam loop of hgm: the 1x1 conv with its temporary head (§6 steps
5-6), the linear / FC classifiers (§6), and the baselines of Figure 3 all
train through ``train``.

What it owns, so that no caller does it differently:

* the order of examples: a fresh permutation per pass over the data from a
  local ``np.random.Generator(seed)`` (the global RNGs are never touched; model
  initialisation is the caller's, from its own ``torch.Generator``);
* losses stay on the device and are read back every ``SYNC_EVERY`` steps and
  at every evaluation (one sync per chunk, not per step); a non-finite loss
  is reported with the step where it first appeared;
* the evaluation curve: ``evaluate()`` every ``eval_every`` steps and after
  the last step, with the mean loss and training accuracy since the previous
  evaluation;
* progress reporting.

The caller supplies ``batch_loss(indices) -> (loss, correct)``: the loss to
back-propagate for the examples ``indices`` (a slice of the permutation) and
the number it classified correctly (a tensor on the device), which keeps
device placement, feature decoding and DDP sharding with the caller."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import TrainingError
from .progress import Progress, no_progress

SYNC_EVERY = 25  # steps between reading the losses back from the device


@dataclass
class AdamResult:
    steps: int
    history: list[dict] = field(default_factory=list)  # per evaluation: step, epoch, loss, train_accuracy[, val_accuracy]
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation accuracy)
    final_loss: float | None = None  # exponential moving average of the batch losses (0.98)
    seconds: float = 0.0


def train(
    params: Iterable[torch.nn.Parameter],
    batch_loss: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    n: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    eval_every: int,
    evaluate: Callable[[], float] | None = None,
    label: str = "adam",
    progress: Progress = no_progress,
) -> AdamResult:
    """``steps`` Adam steps of ``batch_size`` examples out of ``n`` on ``params``.

    Passes over the data are consecutive slices of ``rng.permutation(n)``; a
    pass's last batch may be smaller. ``evaluate`` (if given) returns a
    validation accuracy, recorded in ``curve`` and ``history``."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    steps_per_pass = -(-n // batch_size)
    result = AdamResult(0)
    pending: list[torch.Tensor] = []
    sums = {"loss": 0.0, "weight": 0, "correct": None, "seen": 0}
    t0 = time.perf_counter()

    def flush() -> None:
        """Read the pending losses back (one sync); raise at the first non-finite one."""
        if not pending:
            return
        values = torch.stack(pending).cpu()
        first = result.steps - len(pending) + 1
        bad = (~torch.isfinite(values[:, 0])).nonzero()
        if len(bad):
            i = int(bad[0])
            raise TrainingError(f"{label}: the loss became {values[i, 0].item()} at step {first + i}; lower the learning rate (lr)")
        pending.clear()
        for v, w in values.tolist():
            result.final_loss = v if result.final_loss is None else 0.98 * result.final_loss + 0.02 * v
            sums["loss"] += v * w
            sums["weight"] += int(w)

    while result.steps < steps:
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss, correct = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.steps += 1
            pending.append(torch.stack([loss.detach().float(), torch.tensor(float(len(idx)), device=loss.device)]))
            sums["correct"] = correct.detach() if sums["correct"] is None else sums["correct"] + correct.detach()
            sums["seen"] += len(idx)
            record = result.steps % eval_every == 0 or result.steps == steps
            if record or result.steps % SYNC_EVERY == 0:
                flush()
                fields = {"loss": result.final_loss}
                if record:
                    entry = {
                        "step": result.steps,
                        "epoch": -(-result.steps // steps_per_pass),
                        "loss": sums["loss"] / max(sums["weight"], 1),
                        "train_accuracy": float(sums["correct"]) / max(sums["seen"], 1),
                    }
                    if evaluate is not None:
                        entry["val_accuracy"] = evaluate()
                        result.curve.append((result.steps, entry["val_accuracy"]))
                        fields["val_acc"] = entry["val_accuracy"]
                    result.history.append(entry)
                    sums.update(loss=0.0, weight=0, correct=None, seen=0)
                progress(label, result.steps, steps, **fields)
            if result.steps >= steps:
                break
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def correct_count(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How many argmax predictions are right, as a tensor on the device (no sync)."""
    return (logits.detach().argmax(dim=1) == target).sum()
