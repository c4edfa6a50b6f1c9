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
* progress reporting, the curves, and checkpoints a killed run resumes from.

The caller supplies ``batch_loss(indices) -> (loss, correct)``: the loss to
back-propagate for the examples ``indices`` (a slice of the permutation) and
the number it classified correctly (a tensor on the device), which keeps
device placement, feature decoding and DDP sharding with the caller."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .errors import TrainingError
from .progress import Progress, no_progress

SCHEDULES = ("constant", "cosine")
SYNC_EVERY = 25  # steps between reading the losses back from the device
CHECKPOINT_SECONDS = 120.0  # longest stretch of training a kill can lose (besides the time to the next evaluation)


@dataclass
class AdamResult:
    steps: int
    history: list[dict] = field(default_factory=list)  # per evaluation: step, epoch, loss, train_accuracy,
    # [val_accuracy,] seconds (since training began)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation accuracy)
    final_loss: float | None = None  # exponential moving average of the batch losses (0.98)
    seconds: float = 0.0


def train(
    model: torch.nn.Module,
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
    checkpoint: Checkpoint | None = None,
    curves: Curves | None = None,
    schedule: str = "constant",
) -> AdamResult:
    """``steps`` Adam steps of ``batch_size`` examples out of ``n`` on the
    trainable parameters of ``model``.

    Passes over the data are consecutive slices of ``rng.permutation(n)``; a
    pass's last batch may be smaller. ``evaluate`` (if given) returns a
    validation accuracy, recorded in ``curve`` and ``history``. With a
    ``checkpoint`` the loop saves its whole state (weights, Adam's moments,
    the step, the curve so far) at every evaluation and every
    ``CHECKPOINT_SECONDS``, and starts from a saved state when there is one: a
    killed run resumes where it stopped and ends with the weights an
    uninterrupted run gets (bit for bit on the CPU; the permutations are
    replayed from the seed). ``curves(metric, step, value)`` receives the loss
    and accuracies as they are recorded (the run folder's curves.csv).
    ``schedule``: ``constant`` lr, or ``cosine``, lr * (1 + cos(pi t / steps)) / 2
    before step t + 1 (a function of the step alone, so a resumed run follows it)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    result = AdamResult(0)
    pending: list[torch.Tensor] = []
    sums = {"loss": 0.0, "weight": 0, "correct": 0, "seen": 0}
    elapsed = 0.0  # training seconds of earlier, interrupted runs
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        result.steps, result.final_loss = int(state["step"]), state["final_loss"]
        result.history, result.curve = list(state["history"]), [tuple(c) for c in state["curve"]]
        sums, elapsed = dict(state["sums"]), float(state["seconds"])
        progress(f"{label} (resumed)", result.steps, steps)
    pending_right: list[torch.Tensor] = []  # correct counts, on the device until the next sync
    t0 = time.perf_counter() - elapsed
    saved_at = time.perf_counter()

    def flush() -> None:
        """Read the pending losses back (one sync); raise at the first non-finite one."""
        if not pending:
            return
        values = torch.stack(pending).cpu()
        first = result.steps - len(pending) + 1
        bad = (~torch.isfinite(values[:, 0])).nonzero()
        if len(bad):
            i = int(bad[0])
            raise TrainingError(f"{label}: the loss became {values[i, 0].item()} at step {first + i}; "
                                "lower the learning rate (lr)")
        pending.clear()
        for v, w in values.tolist():
            result.final_loss = v if result.final_loss is None else 0.98 * result.final_loss + 0.02 * v
            sums["loss"] += v * w
            sums["weight"] += int(w)
        sums["correct"] += int(torch.stack(pending_right).sum()) if pending_right else 0
        pending_right.clear()

    def save() -> None:
        checkpoint.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": result.steps,
                         "final_loss": result.final_loss, "history": result.history,
                         "curve": [list(c) for c in result.curve], "sums": dict(sums),
                         "seconds": time.perf_counter() - t0})

    step = 0  # counts the batches replayed from the seed, up to the resumed step
    while step < steps:
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            step += 1
            if step <= result.steps:  # done before the checkpoint: replay the permutation only
                continue
            idx = order[start : start + batch_size]
            if schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / steps))
            loss, right = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.steps = step
            pending.append(torch.stack([loss.detach().float(), torch.tensor(float(len(idx)), device=loss.device)]))
            pending_right.append(right.detach())
            sums["seen"] += len(idx)
            record = step % eval_every == 0 or step == steps
            if record or step % SYNC_EVERY == 0:
                flush()
                fields = {"loss": result.final_loss}
                if record:
                    entry = {
                        "step": step,
                        "epoch": -(-step * batch_size // n),
                        "loss": sums["loss"] / max(sums["weight"], 1),
                        "train_accuracy": sums["correct"] / max(sums["seen"], 1),
                    }
                    if evaluate is not None:
                        entry["val_accuracy"] = evaluate()
                        result.curve.append((step, entry["val_accuracy"]))
                        fields["val_acc"] = entry["val_accuracy"]
                    entry["seconds"] = round(time.perf_counter() - t0, 3)  # since training began: time to accuracy
                    result.history.append(entry)
                    if curves is not None:
                        for metric in ("loss", "train_accuracy", "val_accuracy"):
                            if metric in entry:
                                curves(metric, step, entry[metric])
                    sums.update(loss=0.0, weight=0, correct=0, seen=0)
                progress(label, step, steps, **fields)
                if checkpoint is not None and (record or time.perf_counter() - saved_at > CHECKPOINT_SECONDS):
                    save()
                    saved_at = time.perf_counter()
            if step >= steps:
                break
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


class Checkpoint(Protocol):
    """Where a loop keeps its state between runs (``runner.StageCheckpoint``)."""

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...


Curves = Callable[[str, int, float], None]  # (metric, step, value)


def uniform_init(module: torch.nn.Module, fan_in: int, gen: torch.Generator) -> None:
    """PyTorch's default Linear / Conv init range, +-1/sqrt(fan_in), weight then
    bias, drawn from ``gen``: what every caller of ``train`` initialises with, so
    that the global RNG is never used."""
    with torch.no_grad():
        bound = 1.0 / math.sqrt(fan_in)
        for p in (module.weight, module.bias):
            if p is not None:
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)


def correct_count(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How many argmax predictions are right, as a tensor on the device (no sync)."""
    return (logits.detach().argmax(dim=1) == target).sum()
