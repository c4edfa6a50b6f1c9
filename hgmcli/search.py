"""Random parameter search (appendix C): the paper calibrated N (patches),
k1, n1, k2, n2 and the bias b by random search on a validation split (40k
train / 10k validation of CIFAR-10). Each trial is a full pipeline run in its
own folder, scored on the validation split; the best trial's resolved config
is written out as YAML.

A search space maps config keys to ranges::

    layers.0.cluster.k: [64, 1024, log]     # log-uniform integer
    layers.0.train.bias: [-0.7, 0.9]        # uniform float
    "*.train.bias": [-0.7, 0.9]             # one value shared by every layer

A choice (the train mode, the encoder, the head, ...) is searched over a
list of its values, or over every value its registry holds::

    layers.0.train.activation=relu,onehot
    "layers.0.train.activation=*"         # every registered encoder

The default space is built from the config: for every layer, patches and k
(when set) log-uniform within 4x of the configured value, out_channels
within 2x (when the layer trains a 1x1 conv), and one bias shared by all
layers, uniform in [-0.7, 0.9] (appendix C's values lie in -0.63..0.84)."""

from __future__ import annotations

import copy
import dataclasses
import math
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import numpy as np
import yaml

from .artifacts import save_json, to_jsonable, write_file
from .config import PipelineConfig, apply_overrides, choices_of, field_types, from_dict, to_dict
from .errors import ConfigError
from .progress import Progress, no_progress

Space = dict[str, "tuple[float, float, bool] | tuple[str, ...]"]  # key -> (low, high, log), or the choices


def default_space(cfg: PipelineConfig) -> Space:
    from .train import TRAIN_MODES

    space: Space = {}
    for i, layer in enumerate(cfg.layers):
        n = layer.cluster.patches
        space[f"layers.{i}.cluster.patches"] = (max(1, n // 4), n * 4, True)
        if layer.cluster.k != "auto":
            space[f"layers.{i}.cluster.k"] = (max(2, layer.cluster.k // 4), layer.cluster.k * 4, True)
        if TRAIN_MODES[layer.train.mode].fit is not None:
            c = layer.train.out_channels
            space[f"layers.{i}.train.out_channels"] = (max(2, c // 2), c * 2, True)
    space["*.train.bias"] = (-0.7, 0.9, False)
    return space


def field_type(key: str) -> Any:
    """The type of a pipeline config key (``layers.0.train.bias``, ``*.train.bias``), or None."""
    tp: Any = PipelineConfig
    for part in key.split("."):
        if part.isdigit() or part == "*":
            tp = get_args(tp)[0] if get_origin(tp) is list else None
            if part == "*":
                tp = field_types(PipelineConfig)["layers"]
                tp = get_args(tp)[0]
            continue
        if tp is None or not dataclasses.is_dataclass(tp):
            return None
        hints = field_types(tp)
        if part not in hints:
            return None
        tp = hints[part]
        if get_origin(tp) in (Union, types.UnionType):  # e.g. GenerateConfig | None
            inner = [a for a in get_args(tp) if dataclasses.is_dataclass(a)]
            tp = inner[0] if inner else tp
    return tp


def _is_int(tp: Any, kinds: tuple = (int,)) -> bool:
    """Does the field take an integer (or a number of ``kinds``), possibly beside "auto"?"""
    if get_origin(tp) is Annotated:
        return _is_int(get_args(tp)[0], kinds)
    if get_origin(tp) in (Union, types.UnionType):
        return any(_is_int(a, kinds) for a in get_args(tp))
    return tp in kinds


def parse_space(items: list[str], cfg: PipelineConfig | None = None) -> Space:
    """``key=low:high``, ``key=low:high:log``, ``key=a,b,c`` or ``key=*`` items (the CLI's --space)."""
    space: Space = {}
    for item in items:
        key, sep, rng = item.partition("=")
        key = key.strip()
        tp = field_type(key)
        choices = choices_of(tp) if sep and not _is_int(tp, (int, float)) else None
        if choices is not None:
            picked = tuple(c for c in choices if c != "auto") if rng.strip() == "*" else tuple(
                v.strip() for v in rng.split(","))
            bad = [v for v in picked if v not in choices]
            if bad or not picked:
                raise ConfigError(f"--space {item!r}: {key} takes {', '.join(choices)}")
            space[key] = picked
            continue
        parts = rng.split(":")
        if not sep or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise ConfigError(f"--space expects key=low:high, key=low:high:log or key=a,b,c, got {item!r}")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"--space {item!r}: low and high must be numbers") from None
        if not low <= high or (len(parts) == 3 and low <= 0):
            raise ConfigError(f"--space {item!r}: need low <= high (and low > 0 for log)")
        space[key] = (low, high, len(parts) == 3)
    return space


def sample_trial(cfg: PipelineConfig, space: Space, rng: np.random.Generator) -> dict[str, Any]:
    """One point of the space as {config key: value} (``*.`` keys expanded to every layer)."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec[0], str):  # a choice
            v: Any = spec[int(rng.integers(len(spec)))]
        else:
            low, high, log = spec
            v = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
            v = int(round(v)) if _is_int(field_type(key)) else round(float(v), 4)
        keys = [key.replace("*", f"layers.{i}", 1) for i in range(len(cfg.layers))] if key.startswith("*.") else [key]
        for k in keys:
            values[k] = v
    return values


def apply_trial(cfg: PipelineConfig, values: dict[str, Any]) -> PipelineConfig:
    overrides = [f"{k}={v}" for k, v in values.items()]
    raw = apply_overrides(to_dict(cfg), overrides, to_dict(cfg))
    return from_dict(PipelineConfig, raw)


@dataclasses.dataclass
class Trial:
    index: int
    values: dict[str, Any]
    accuracy: float | None
    seconds: float
    run: str
    error: str | None = None


def run_search(
    cfg: PipelineConfig,
    out: str | Path,
    trials: int,
    *,
    space: Space | None = None,
    seed: int = 0,
    force: bool = False,
    progress: Progress = no_progress,
    echo: Callable[[str], None] | None = None,
) -> list[Trial]:
    """Run ``trials`` pipeline runs with sampled parameters, scored on the
    validation split. Returns the trials sorted by validation accuracy (best
    first) and writes OUT/trials.json and OUT/best.yaml."""
    from .errors import HgmError
    from .pipeline import run_pipeline

    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    cfg = copy.deepcopy(cfg)
    cfg.evaluate.split = "val"  # appendix C: tuned on the validation split, never the test set
    space = space or default_space(cfg)
    out = Path(out)
    rng = np.random.default_rng(seed)
    results: list[Trial] = []
    for t in range(trials):
        values = sample_trial(cfg, space, rng)
        trial_cfg = apply_trial(cfg, values)
        run = out / f"trial-{t:03d}"
        if echo:
            echo(f"trial {t + 1}/{trials}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        try:
            metrics, records = run_pipeline(trial_cfg, run, force=force, progress=progress)
            seconds = sum(r.seconds for r in records)
            results.append(Trial(t, values, float(metrics["accuracy"]), round(seconds, 2), str(run)))
        except HgmError as e:  # a sampled point can be infeasible (e.g. k > patches): record it, go on
            results.append(Trial(t, values, None, 0.0, str(run), error=str(e)))
        if echo and results[-1].accuracy is not None:
            echo(f"trial {t + 1}/{trials}: val accuracy {results[-1].accuracy:.4f}")
    ranked = sorted(results, key=lambda r: (r.accuracy is None, -(r.accuracy or 0.0), r.index))
    save_json(out / "trials.json", to_jsonable([dataclasses.asdict(r) for r in ranked]))
    best = next((r for r in ranked if r.accuracy is not None), None)
    if best is not None:
        text = (
            f"# Best of {trials} random-search trials (hgm search), validation accuracy {best.accuracy:.4f}\n"
            f"# trial {best.index}: " + ", ".join(f"{k}={v}" for k, v in best.values.items()) + "\n"
            + yaml.safe_dump(to_dict(apply_trial(cfg, best.values)), sort_keys=False)
        )
        write_file(out / "best.yaml", lambda tmp: tmp.write_text(text))
    return ranked
