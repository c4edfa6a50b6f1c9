"""Algorithm 1 (§5.1) end to end, by calling the same stage functions as the
single commands:

    [generate] -> for each layer: cluster -> train-layer -> fit-svm -> evaluate

Run folder layout::

    RUN/config.yaml            the resolved config
    RUN/data.npz               (synthetic runs) the sampled dataset
    RUN/layer<i>/centroids.npz
    RUN/layer<i>/network.pt    the network after i blocks
    RUN/classifier.pt
    RUN/metrics.json, RUN/metrics.png, RUN/run.log

A stage is skipped when its output exists and records the same stage config,
seed and input hashes (see ``stages.reuse_existing``); every write is atomic,
so a run killed at any point (even SIGKILL) resumes where it stopped.
``evaluate`` always reruns: it is one pass over the evaluation split and its
output is the run's summary."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from . import stages
from .config import PipelineConfig, to_dict
from .features import FeatureCache
from .progress import Progress, no_progress


@dataclasses.dataclass
class StageRecord:
    name: str
    seconds: float
    skipped: bool
    backend: str
    device: str
    figures: str


class RunLog:
    """Appends timestamped lines to RUN/run.log (and forwards them to ``echo``)."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None = None):
        self.path, self.echo = path, echo

    def __call__(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a") as f:
            f.write(f"{stamp} {line}\n")
        if self.echo:
            self.echo(line)


def _figures(result: stages.StageResult) -> tuple[str, str, str]:
    s = result.stats
    backend = str(s.get("backend", "-"))
    device = str(s.get("device", "-"))
    if result.stage == "cluster":
        obj = s.get("objective") or [float("nan")]
        figs = f"k={s.get('k')} N={s.get('n')} objective={obj[-1]:.4f}"
    elif result.stage == "train-layer":
        va = [v for v in (s.get("val_accuracy") or []) if v is not None]
        figs = f"mode={s.get('mode')} out={s.get('output_shape')}" + (f" val_acc={va[-1]:.4f}" if va else "")
    elif result.stage == "fit-svm":
        curve = s.get("curve") or []
        figs = f"train_acc={s.get('train_accuracy', float('nan')):.4f}" + (f" val_acc={curve[-1][1]:.4f}" if curve else "")
    elif result.stage == "evaluate":
        figs = f"{s.get('split')} accuracy={s.get('accuracy', float('nan')):.4f}"
    else:
        figs = ""
    return backend, device, figs


def run_pipeline(
    cfg: PipelineConfig,
    run_dir: str | Path,
    *,
    force: bool = False,
    progress: Progress = no_progress,
    echo: Callable[[str], None] | None = None,
) -> tuple[dict, list[StageRecord]]:
    """Run (or resume) Algorithm 1 into ``run_dir``; return (final metrics, per-stage records)."""
    from .artifacts import ensure_writable, save_json, to_jsonable, write_file

    from . import data

    if cfg.generate is None:
        data.data_path(cfg.data)  # fail now, not after the run folder is made: no data / not found
    run = Path(run_dir)
    ensure_writable(run / "config.yaml")
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    write_file(run / "config.yaml", lambda tmp: tmp.write_text(text))
    log = RunLog(run / "run.log", echo)
    log(f"run {run} (pid {os.getpid()}, force={force})")
    reuse = not force
    records: list[StageRecord] = []
    common = dict(seed=cfg.seed, progress=progress)
    cache = FeatureCache()  # network outputs handed from one stage to the next

    def record(name: str, result: stages.StageResult, seconds: float) -> None:
        backend, device, figs = _figures(result)
        if result.skipped:
            seconds = float(result.stats.get("seconds", 0.0))
        records.append(StageRecord(name, seconds, result.skipped, backend, device, figs))
        log(f"{name}: {'reused' if result.skipped else 'done'} in {seconds:.1f} s  {figs}")

    def timed(name: str, fn: Callable[[], stages.StageResult]) -> stages.StageResult:
        log(f"{name}: start")
        t0 = time.perf_counter()
        result = fn()
        record(name, result, time.perf_counter() - t0)
        return result

    data_cfg = cfg.data
    if cfg.generate is not None:
        data_path = run / "data.npz"
        timed("generate", lambda: stages.generate(cfg.generate, out=data_path, seed=cfg.seed, reuse=reuse, progress=progress))
        data_cfg = dataclasses.replace(cfg.data, root=str(data_path))

    model: Path | None = None
    for i, layer in enumerate(cfg.layers, start=1):
        cents = run / f"layer{i}" / "centroids.npz"
        net = run / f"layer{i}" / "network.pt"
        prev = model
        timed(f"cluster {i}", lambda: stages.cluster(
            data_cfg, layer.cluster, out=cents, model=prev, device=cfg.device, reuse=reuse, cache=cache, **common))
        timed(f"train-layer {i}", lambda: stages.train_layer(
            data_cfg, layer.train, centroids=cents, out=net, model=prev, device=cfg.device, reuse=reuse, cache=cache,
            **common))
        model = net

    classifier = run / "classifier.pt"
    timed("fit-svm", lambda: stages.fit_svm(
        data_cfg, cfg.classifier, out=classifier, model=model, device=cfg.device, reuse=reuse, cache=cache, **common))
    result_box: dict = {}

    def evaluate() -> stages.StageResult:
        res, metrics = stages.evaluate(
            data_cfg, cfg.evaluate, model=model, classifier=classifier,
            plot=run / "metrics.png" if cfg.plots else None, device=cfg.device, cache=cache, **common,
        )
        result_box["metrics"] = metrics
        return res

    timed("evaluate", evaluate)
    metrics = dict(result_box["metrics"])
    metrics["stages"] = [dataclasses.asdict(r) for r in records]
    save_json(run / "metrics.json", to_jsonable(metrics))
    log(f"final {metrics['split']} accuracy {metrics['accuracy']:.4f}")
    return metrics, records
