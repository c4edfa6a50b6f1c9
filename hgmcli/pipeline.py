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
    RUN/previous/              the last finished result a config change set aside
    RUN/.lock                  the pid of the pipeline that holds the folder

A stage is skipped when its output exists and records the same stage config,
seed and input hashes (see ``stages.reuse_existing``); every write is atomic,
so a run killed at any point (even SIGKILL) resumes where it stopped, and the
temporary files such a kill leaves are removed by the next run.
``evaluate`` always reruns: it is one pass over the evaluation split and its
output is the run's summary.

The run folder is a transaction of sorts:

* One pipeline at a time: an exclusive ``flock`` on ``RUN/.lock``; a second
  pipeline on the same folder fails at once, naming the holder's pid. (The
  kernel drops the lock when its holder dies, so a killed run never leaves a
  stale one.)
* ``metrics.json`` always describes the artifacts beside it: a run whose
  config differs from ``config.yaml`` first sets the finished result aside
  (``config.yaml``, ``metrics.json``, ``metrics.png``, ``classifier.pt`` as
  hard links in ``previous/``), then removes what the new config invalidates
  from the folder, before any stage runs. The layer artifacts stay: each
  records its own config and input hashes, and the cache redoes stale ones.
* ``config.yaml`` is written only once the folder is locked and the config
  has validated (a ``PipelineConfig`` exists only validated), so a refused
  run leaves the folder as it was."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from . import artifacts, stages
from .config import SECTIONS, PipelineConfig, to_dict, upgrade_record
from .errors import ArtifactError, HgmError
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


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


class Curves:
    """RUN/curves.csv: ``stage,step,metric,value``, one line per recorded loss or
    accuracy of any stage, appended (and flushed) as training goes, so
    ``tail -f`` follows a run; the same scalars as TensorBoard events in
    RUN/tensorboard/ when tensorboard is installed. Like the run log, a record:
    it never stops a run."""

    def __init__(self, path: Path, warn: Callable[[str], None] = _stderr):
        self.path, self.warn, self.broken = path, warn, False
        fresh = not path.exists() or path.stat().st_size == 0
        self._append("stage,step,metric,value\n" if fresh else "")
        self.board = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (an extra)

            self.board = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # ImportError without tensorboard, or a broken install: the CSV is enough
            pass

    def _append(self, text: str) -> None:
        if self.broken or not text:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            self.broken = True
            self.warn(f"warning: cannot append to {self.path} ({e.strerror or e}); going on without curves")

    def __call__(self, stage: str, metric: str, step: int, value: float | None) -> None:
        if value is None:
            return
        self._append(f"{stage},{int(step)},{metric},{float(value):.6g}\n")
        if self.board is not None:
            self.board.add_scalar(f"{stage}/{metric}", float(value), int(step))

    def from_stats(self, stage: str, stats: dict) -> None:
        """The curves a finished stage keeps in its stats: k-means' objective per
        Lloyd iteration, TLGD's loss; an Adam loop's history was written live."""
        objective = stats.get("objective")
        for i, v in enumerate(objective if isinstance(objective, list) else []):  # the SVM's is one number
            self(stage, "objective", i, v)
        if stats.get("mode") == "gd-linear":
            for i, v in enumerate(stats.get("loss") or []):
                self(stage, "tlgd_loss", i, v)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


class RunLog:
    """Appends timestamped lines to RUN/run.log (and forwards them to ``echo``).

    The log is a record, not a result: when it cannot be written (disk full,
    a read-only file) the run goes on, with one warning on ``warn``."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None = None, warn: Callable[[str], None] = _stderr):
        self.path, self.echo, self.warn = path, echo, warn
        self.broken = False

    def __call__(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if not self.broken:
            try:
                with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as f:
                    f.write(f"{stamp} {line}\n")
            except OSError as e:
                self.broken = True
                self.warn(f"warning: cannot append to {self.path} ({e.strerror or e}); going on without a run log")
        if self.echo:
            self.echo(line)


@contextlib.contextmanager
def locked(run: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder ``run`` (created if missing).

    ``flock`` on ``RUN/.lock``, which holds the holder's pid for the error
    message. The file is never deleted: unlinking it would let a third
    process lock a fresh file while the second still holds the old one."""
    try:
        run.mkdir(parents=True, exist_ok=True)
        fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise ArtifactError(f"cannot write {run}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = (os.pread(fd, 64, 0).decode(errors="replace").split() or ["?"])[0]
            raise HgmError(
                f"{run} is in use by another hgm pipeline (pid {holder}); wait for it or choose another --out"
            ) from None
        with contextlib.suppress(OSError):  # the pid is for messages only: a full disk must not stop the run
            pid = f"{os.getpid()}\n".encode()
            os.pwrite(fd, pid, 0)  # overwrite, then cut: a reader never sees an empty file
            os.ftruncate(fd, len(pid))
        yield
    finally:
        os.close(fd)  # releases the lock


RESULTS = ("metrics.json", "metrics.png", "classifier.pt")  # the run's answer; metrics.json first: the claim goes first
_RESULTS_ONLY = {"evaluate", "plots", "baseline"}  # sections classifier.pt does not depend on (baseline: `hgm baseline` only)


def set_aside_stale_results(run: Path, config: dict) -> None:
    """Before a run whose ``config`` differs from RUN/config.yaml: keep the
    finished result in RUN/previous/ and take what the new config invalidates
    out of the folder, so that no metrics.json ever sits beside artifacts it
    did not come from (even if the new run fails half-way)."""
    old_path = run / "config.yaml"
    if not old_path.exists():
        return
    try:
        old = yaml.safe_load(old_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        old = None
    if old == config:
        return
    old = _settings(old) if isinstance(old, dict) else {}  # unreadable: every section counts as changed
    new = _settings(config)
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    try:
        if (run / "metrics.json").exists():  # a finished result: keep it, whole (hard links cost nothing)
            prev = run / "previous"
            shutil.rmtree(prev, ignore_errors=True)
            prev.mkdir()
            for name in ("config.yaml", *RESULTS):
                if (run / name).exists():
                    _link_or_copy(run / name, prev / name)
        for name in RESULTS:
            if name != "classifier.pt" or not changed <= _RESULTS_ONLY:
                (run / name).unlink(missing_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot set the previous result in {run} aside: {e.strerror or e}") from None


def _settings(config: dict) -> dict:
    """A run's config as settings: sections in today's spelling with defaults filled
    (``config.upgrade_record``) and the data folder as a resolved path, so that a
    config written by an older hgm, or naming the same folder another way, is not a
    change."""
    out = dict(config)
    for key, value in config.items():
        if key in SECTIONS and isinstance(value, dict):
            out[key] = upgrade_record({key: value}).get(key, value)
        elif key == "layers" and isinstance(value, list):
            out[key] = [upgrade_record(v) for v in value]
    data = out.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str):
        out["data"] = {**data, "root": os.path.realpath(data["root"])}
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


def remove_leftovers(run: Path, log: Callable[[str], None]) -> None:
    """Temporary files of a killed earlier run (safe: we hold the folder's lock)."""
    for f in artifacts.leftover_temporaries(run):
        with contextlib.suppress(OSError):
            f.unlink()
            log(f"removed leftover {f.relative_to(run)}")


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


def picture_centroids(cents: Path, title: str, *, first_layer: bool) -> None:
    """layer<i>/centroids.png beside the centroids (skipped when it is newer than them)."""
    from .plots import write_centroids_plot

    png = cents.with_suffix(".png")
    if png.exists() and png.stat().st_mtime >= cents.stat().st_mtime:
        return
    arrays, _ = artifacts.load_npz(cents, "centroids")
    write_centroids_plot(png, arrays, title, first_layer=first_layer)


def time_to_target(stats: dict, before: float, target: float) -> dict:
    """When the classifier's validation curve first reached ``target``, in
    seconds from the run's start: the stages before it (``before``, their
    recorded times when reused), the head's feature pass, then the training
    time at the first evaluation at or above the target (adam heads: every
    eval_every steps; an SVM: once, when it is done). None if never."""
    seconds = None
    history = stats.get("history") or []
    setup = float(stats.get("seconds", 0.0)) - float(stats.get("train_seconds", stats.get("seconds", 0.0)))
    hit = next((h for h in history if (h.get("val_accuracy") or 0.0) >= target), None)
    if hit is not None and "seconds" in hit:
        seconds = before + max(setup, 0.0) + float(hit["seconds"])
    elif not history and any(acc >= target for _, acc in stats.get("curve") or []):
        seconds = before + float(stats.get("seconds", 0.0))
    return {"target": target, "seconds": None if seconds is None else round(seconds, 1)}


def run_pipeline(
    cfg: PipelineConfig,
    run_dir: str | Path,
    *,
    force: bool = False,
    progress: Progress = no_progress,
    echo: Callable[[str], None] | None = None,
) -> tuple[dict, list[StageRecord]]:
    """Run (or resume) Algorithm 1 into ``run_dir``; return (final metrics, per-stage records).

    Holds the run folder's lock throughout (see the module docstring)."""
    from . import data

    if cfg.generate is None:
        data.data_path(cfg.data)  # fail now, not after the run folder is made: no data / not found
    run = Path(run_dir)
    with locked(run):
        return _run_locked(cfg, run, force=force, progress=progress, echo=echo)


def _run_locked(
    cfg: PipelineConfig, run: Path, *, force: bool, progress: Progress, echo: Callable[[str], None] | None
) -> tuple[dict, list[StageRecord]]:
    log = RunLog(run / "run.log", echo, warn=echo or _stderr)
    config = to_dict(cfg)
    set_aside_stale_results(run, config)
    artifacts.write_file(run / "config.yaml", lambda tmp: tmp.write_text(yaml.safe_dump(config, sort_keys=False)))
    log(f"run {run} (pid {os.getpid()}, force={force})")
    remove_leftovers(run, log)
    reuse = not force
    records: list[StageRecord] = []
    common = dict(seed=cfg.seed, progress=progress)
    cache = FeatureCache()  # network outputs handed from one stage to the next
    curves = Curves(run / "curves.csv")

    def record(name: str, result: stages.StageResult, seconds: float) -> None:
        backend, device, figs = _figures(result)
        if result.skipped:
            seconds = float(result.stats.get("seconds", 0.0))
        else:
            curves.from_stats(name, result.stats)
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
        timed("generate", lambda: stages.generate(cfg.generate, out=data_path, seed=cfg.seed, reuse=reuse,
                                                  preview=run / "data.png" if cfg.plots else None, progress=progress))
        data_cfg = dataclasses.replace(cfg.data, root=str(data_path))

    model: Path | None = None
    for i, layer in enumerate(cfg.layers, start=1):
        cents = run / f"layer{i}" / "centroids.npz"
        net = run / f"layer{i}" / "network.pt"
        prev = model
        timed(f"cluster {i}", lambda: stages.cluster(
            data_cfg, layer.cluster, out=cents, model=prev, device=cfg.device, reuse=reuse, cache=cache, **common))
        if cfg.plots:
            picture_centroids(cents, f"layer {i}", first_layer=i == 1)
        timed(f"train-layer {i}", lambda: stages.train_layer(
            data_cfg, layer.train, centroids=cents, out=net, model=prev, device=cfg.device, reuse=reuse, cache=cache,
            curves=lambda stage, m, step, v, i=i: curves(f"train-layer {i}", m, step, v), **common))
        model = net

    classifier = run / "classifier.pt"
    before_head = sum(r.seconds for r in records)
    head = timed("fit-svm", lambda: stages.fit_svm(
        data_cfg, cfg.classifier, out=classifier, model=model, device=cfg.device, reuse=reuse, cache=cache,
        curves=curves, **common))
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
    if cfg.evaluate.target is not None:
        metrics["time_to_target"] = time_to_target(head.stats, before_head, cfg.evaluate.target)
    curves.close()
    artifacts.save_json(run / "metrics.json", artifacts.to_jsonable(metrics))
    log(f"final {metrics['split']} accuracy {metrics['accuracy']:.4f}")
    return metrics, records
