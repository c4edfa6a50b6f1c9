"""``run_stage``: what every stage does the same way, in one place: the reuse
check, the output guard, the device, timing, metadata, the atomic save and
the "time / written" summary rows. ``stages.py`` holds only what is
particular to each stage (its body)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import artifacts
from .config import upgrade_record


@dataclass
class StageResult:
    stage: str
    outputs: dict[str, Path]
    stats: dict[str, Any]
    summary: list[tuple[str, str]] = field(default_factory=list)  # (label, value) rows for humans
    skipped: bool = False


@dataclass
class Produced:
    """What a stage body hands back to ``run_stage``."""

    save: Callable[[Path, dict], Any]  # writes the file at the path, given its metadata (an artifact)
    # or the final stats (a stage without an artifact kind: evaluate's metrics)
    stats: dict
    summary: list[tuple[str, str]]  # rows before "time" and "written"
    meta: dict = field(default_factory=dict)  # extra metadata fields (resolved config, ...)
    time_detail: str = ""  # e.g. "patches 1.2 s", shown after the total time
    outputs: dict[str, Path] = field(default_factory=dict)  # further files written (a preview, a plot)


@dataclass(frozen=True)
class StageSpec:
    kind: str | None  # the artifact kind (None: no hgm artifact, e.g. a metrics JSON)
    output: str  # the key its file is reported under (--json "outputs"), fresh or reused


STAGES = {
    "generate": StageSpec("dataset", "data"),
    "cluster": StageSpec("centroids", "centroids"),
    "train-layer": StageSpec("network", "network"),
    "fit-svm": StageSpec("classifier", "classifier"),
    "baseline": StageSpec("classifier", "classifier"),
    "evaluate": StageSpec(None, "metrics"),
    "export": StageSpec(None, "model"),
}


def _comparable(stage: str, record: Any) -> Any:
    """A recorded stage config in today's spelling (see ``config.upgrade_record``);
    generate records its section flat. The data's path is left out: the inputs'
    sha256 stand for the data, so ``../data`` and ``/abs/data`` (or a moved copy
    of the same bytes) are the same input."""
    if stage == "generate" and isinstance(record, dict):
        return upgrade_record({"generate": record}).get("generate", record)
    out = upgrade_record(record)
    if isinstance(out, dict) and isinstance(out.get("data"), dict):
        out = {**out, "data": {k: v for k, v in out["data"].items() if k != "root"}}
    return out


def is_up_to_date(out: str | Path, stage: str, config: dict, seed: int | None, inputs: dict) -> bool:
    """True when ``out`` exists, is a readable artifact of ``stage`` and was made
    from the same config, seed and input contents."""
    p = Path(out)
    if not p.exists():
        return False
    try:
        meta = artifacts.load_meta(p)
    except Exception:  # unreadable/foreign/old: just redo the stage
        return False
    want_inputs = {role: artifacts.file_hash(q) for role, q in inputs.items() if q is not None}
    got_inputs = {role: v.get("sha256") for role, v in meta.get("inputs", {}).items()}
    return (
        meta.get("stage") == stage
        and _comparable(stage, meta.get("config")) == _comparable(stage, config)
        and meta.get("seed") == seed
        and got_inputs == want_inputs
    )


def reuse_existing(out: str | Path, stage: str, config: dict, seed: int | None, inputs: dict) -> StageResult | None:
    """The finished artifact at ``out`` as a skipped StageResult, if it is up to date."""
    if not is_up_to_date(out, stage, config, seed, inputs):
        return None
    stats = dict(artifacts.load_meta(out).get("stats", {}))
    return StageResult(stage, {STAGES[stage].output: Path(out)}, stats, [("cached", f"{out} is up to date")], skipped=True)


def _device_stats(dev) -> dict:
    """Device facts for a stage's stats: the device, and peak GPU memory on CUDA."""
    import torch

    out = {"device": str(dev)}
    if dev.type == "cuda":
        out["gpu_name"] = torch.cuda.get_device_name(dev)
        out["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    return out


class StageCheckpoint:
    """The state of a stage's training loop, saved beside its output
    (``.NAME.ckpt``) and keyed by what makes two runs of the stage the same
    (config, seed, input hashes): a rerun of the same stage resumes from it,
    any other run ignores it; removed once the stage's artifact is written."""

    def __init__(self, out: Path, key: dict):
        self.path = out.with_name(f".{out.name}.ckpt")
        self.key = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            saved, _meta = artifacts.load_pt(self.path)
        except Exception:  # a checkpoint is a cache: an unreadable one is simply not used
            return None
        return saved.get("state") if saved.get("key") == self.key else None

    def save(self, state: dict) -> None:
        artifacts.save_pt(self.path, {"key": self.key, "state": state},
                          artifacts.make_meta("checkpoint", "checkpoint", {}))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def run_stage(
    stage: str,
    body: Callable[[Any, StageCheckpoint | None], Produced],
    *,
    out: str | Path | None,
    record: dict | None = None,
    seed: int | None = None,
    inputs: dict[str, str | Path | None] | None = None,
    device: str | None = "auto",
    reuse: bool = False,
    distributed: bool = False,
    extra_outputs: tuple = (),
) -> StageResult:
    """Run one stage: reuse ``out`` when it is up to date; else guard every
    output path against the inputs, pick the device (joining the torchrun
    group when ``distributed``), run ``body(device, checkpoint)``, add timing
    and device stats, build the metadata and save atomically (rank 0 only).
    ``checkpoint`` is where the body's training loop keeps its state (None
    for a stage without an artifact, and under torchrun)."""
    from . import dist
    from .device import resolve_device

    spec = STAGES[stage]
    inputs = inputs or {}
    for p in (out, *extra_outputs):  # never an input, a device or a FIFO; before any long computation
        if p is not None:
            artifacts.guard_output(p, inputs=inputs.values())
    if reuse and out is not None and (hit := reuse_existing(out, stage, record, seed, inputs)):
        return hit
    dev = None
    if device is not None:
        dev = resolve_device(dist.init_from_env(device) if distributed else device)
    ckpt = None
    if spec.kind is not None and out is not None and not dist.active():
        ckpt = StageCheckpoint(Path(out), {"stage": stage, "config": record, "seed": seed,
                                           "inputs": {r: artifacts.file_hash(q) if Path(q).exists() else "missing"  # the body says why
                                                      for r, q in inputs.items() if q}})
    t0 = time.perf_counter()
    produced = body(dev, ckpt)
    stats = {**(_device_stats(dev) if dev is not None else {}), **produced.stats,
             "seconds": round(time.perf_counter() - t0, 3)}
    meta = None
    if spec.kind is not None:
        meta = artifacts.make_meta(spec.kind, stage, record, seed=seed, inputs=inputs,
                                   stats=artifacts.to_jsonable(stats), **produced.meta)
    outputs = dict(produced.outputs)
    if out is not None:
        if dist.is_main():
            produced.save(Path(out), meta if meta is not None else stats)
        if ckpt is not None:
            ckpt.clear()
        outputs = {spec.output: Path(out), **outputs}
    detail = f" ({produced.time_detail})" if produced.time_detail else ""
    summary = [*produced.summary, ("time", f"{stats['seconds']:.1f} s{detail}")]
    if outputs:
        summary.append(("written", ", ".join(str(p) for p in outputs.values())))
    return StageResult(stage, outputs, stats, summary)
