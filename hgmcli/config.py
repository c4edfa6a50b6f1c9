"""Typed configuration: one dataclass per stage, loaded from YAML, then
``--set a.b=value`` overrides, then explicit command-line options.

Every field has a comment with its meaning and units, and a type that says
what values it takes: ``Count`` (an integer >= 1), ``Rate`` (a finite number
> 0), ``Seed`` (0 <= seed < 2**32), choices read from the registry of the core
module that implements them (``Choices``), and so on. Values are checked when
the config is loaded; a bad one is a ``ConfigError`` naming the full key
(``layers.1.cluster.k``).

One spelling for defaults that follow the data: ``"auto"``. It is resolved in
one place, ``hgmcli/resolve.py`` (the theory's geometry on a synthetic
``.npz``, §6's on images, what the machine has), and the resolved value is
what gets recorded in the artifact. ``null`` (None) means "off / not set"
(``limit: null``: all images; ``adam_steps: null``: count epochs instead);
it is never a spelling of "auto", and neither is 0.

Renamed keys (``RENAMED``) keep working for one release, with a deprecation
warning naming the new key."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import os
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError

Auto = Literal["auto"]
Device = Literal["auto", "cpu", "cuda"]


class HgmDeprecationWarning(UserWarning):
    """An old spelling that still works this release (shown once by the CLI)."""


@dataclass(frozen=True)
class Range:
    """Allowed numeric range of a field, checked at load time (bounds inclusive
    unless ``open_low``); NaN and infinities are always refused."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def check(self, value: float, key: str) -> None:
        bad = not math.isfinite(value)
        if self.low is not None:
            bad |= value <= self.low if self.open_low else value < self.low
        if self.high is not None:
            bad |= value > self.high
        if bad:
            raise ConfigError(f"config key '{key}': must be {self.describe()}, got {value!r}")

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"between {self.low} and {self.high}"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low}"
        return "a finite number"


@dataclass(frozen=True)
class Choices:
    """The allowed strings are the keys of a registry in a core module
    (``hgmcli.<module>.<name>``), plus ``extra`` (e.g. "auto"). Looked up when
    a config is validated, so adding a registry entry is all it takes, and
    this module imports no torch."""

    module: str
    name: str
    extra: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        registry = getattr(importlib.import_module(f"hgmcli.{self.module}"), self.name)
        return (*self.extra, *registry)


@dataclass(frozen=True)
class SizeText:
    """A memory size such as "4G" or "512M" (see ``parse_size``)."""


Count = Annotated[int, Range(1)]  # an integer >= 1
NonNegInt = Annotated[int, Range(0)]
Rate = Annotated[float, Range(0, open_low=True)]  # a finite number > 0
NonNeg = Annotated[float, Range(0)]  # a finite number >= 0
Finite = Annotated[float, Range()]
Seed = Annotated[int, Range(0, 2**32 - 1)]


# --------------------------------------------------------------------------- stage configs


@dataclass
class GenerateConfig:
    """§3.1 hierarchical model / §3.2 synthetic digits."""

    RENAMED: ClassVar[dict[str, str]] = {"model": "family", "k": "patches_per_class"}

    family: Literal["hierarchical", "digits"] = "hierarchical"
    depth: Count = 3  # d: number of refinement steps; images are m0*s^d pixels wide
    patch_size: Count = 2  # s: each pixel of level i becomes an s x s patch at level i+1
    m0: Count = 4  # top semantic image is m0 x m0
    # The defaults are configs/synthetic.yaml's model: a linear classifier on its raw pixels
    # stays near chance (0.52-0.68 measured) while Algorithm 1 recovers every level exactly.
    classes: list[Count] = field(default_factory=lambda: [2])  # |C_0|..|C_{d-1}|, or one value for all
    patches_per_class: Count = 5  # k of §3.1: patches per semantic class (|S_c| = k)
    labels: Annotated[int, Range(2)] = 2  # number of label classes L (the paper: 2, y in {-1,+1})
    margin: NonNeg = 1.0  # D_y keeps X(0) whose score margin is >= this many std of the score
    # differences (G0 linearly separable with that margin); larger: stronger label signal per class
    orthonormal: bool = False  # §4: final-level patches orthonormal (needs s^2 >= k*|C_{d-1}|)
    noise: NonNeg = 0.0  # std of Gaussian pixel noise added to the observed image
    n_train: Count = 40000  # training examples (TLGD's gradient is an empirical mean: it needs many)
    n_test: Count = 2000  # test examples


@dataclass
class DataConfig:
    """Where images come from and how they are split and normalised."""

    root: str | None = None  # .npz, CIFAR-10 folder or image folder; null: $HGM_DATA
    val_size: Annotated[float, Range(0)] | Auto = "auto"  # validation slice: a count (>= 1) or a
    # fraction (< 1), 0 for none; auto: the last 10,000 training images on CIFAR-10 (the paper), else 10%
    normalize: Literal["auto", "none", "scale", "standardize"] = "auto"  # standardize: per-channel
    # mean/std of the training split (uint8 data first scaled to [0,1]); scale: [0,1] only;
    # auto: none on a synthetic .npz (the theory's raw patches), standardize on images
    limit: Count | None = None  # use only the first N training images (smoke runs); null: all
    download: bool = False  # fetch CIFAR-10 into root with torchvision's downloader if missing


@dataclass
class ClusterConfig:
    """§5.1 step (1) / §6 steps (1)-(2): cosine k-means on sampled patches."""

    RENAMED: ClassVar[dict[str, str]] = {"iterations": "lloyd_iterations"}

    k: Count | Auto = "auto"  # clusters; auto: Theorem 2's value on synthetic data, 256 on images
    patches: Count = 100_000  # N: patches sampled uniformly (with replacement over positions)
    patch_size: Count | Auto = "auto"  # s; auto: the model's s (synthetic), 3 (images)
    stride: Count | Auto = "auto"  # sampling grid; auto: s (non-overlapping, theory), 1 (images)
    center: bool = False  # subtract each patch's mean before L2-normalising
    whiten: Literal["none", "zca"] = "none"  # zca: whiten the patches (fitted on this sample) before
    # k-means and, identically, in the block (a conv of its own): Coates et al. 2011's largest factor
    whiten_eps: Rate = 0.1  # ZCA regulariser added to the covariance's eigenvalues, in units of their mean
    backend: Annotated[str, Choices("kmeans", "BACKENDS")] = "auto"  # auto: faiss if importable, else torch
    init: Annotated[str, Choices("kmeans", "INITS")] = "auto"  # seeding: kmeans++ (appendix B), kmeans||
    # (Bahmani et al.'s scalable k-means++), random; auto: greedy kmeans++ where N*k <= 2^23 (every
    # synthetic config: exact recovery), else kmeans||. The paper-faithful CIFAR configs pin kmeans++
    seed_trials: Count | Auto = "auto"  # candidates per k-means++ step; 1: appendix B's plain D^2
    # sampling; auto: 2 + ln k, the greedy variant (measured: fewer bad local optima, see kmeans.py)
    restarts: Count = 1  # independent k-means runs; the lowest objective is kept
    lloyd_iterations: NonNegInt = 25  # Lloyd iterations after seeding
    max_points_per_centroid: Count | None = None  # subsample to k*this points (FAISS-style); null: use all
    batch_size: Count = 256  # images per batch when computing the network's features


@dataclass
class TrainConfig:
    """§5.1 steps (2)-(4) / §6 steps (3)-(6): the cluster-conv block and its 1x1 conv."""

    RENAMED: ClassVar[dict[str, str]] = {"n": "out_channels", "iterations": "gd_steps", "steps": "adam_steps"}

    mode: Annotated[str, Choices("train", "TRAIN_MODES")] = "adam-ce"  # how the 1x1 conv is made:
    # adam-ce (§6), gd-linear (§4.1 TLGD), jl (random projection), none (cluster-only block)
    out_channels: Count = 64  # n: output channels of the 1x1 conv
    bias: Finite = 0.0  # b in ReLU(conv(x) + b)
    activation: Annotated[str, Choices("network", "ENCODERS", ("auto",))] = "auto"  # the encoder after
    # the cluster conv: relu = ReLU(cos + b), onehot = hard assignment phi (§5.1); auto: onehot on
    # synthetic data (the theory), relu on images (§6)
    knn_q: Rate = 0.1  # knn encoder: the q nearest centroids are 1 (a count >= 1, or a fraction of k below 1)
    normalize_patches: bool = True  # conv computes cosine similarity (divides by the patch norm)
    normalize_eps: NonNeg = 0.0  # divide by sqrt(|patch|^2 + this) instead: weak (flat) patches stay short
    # rather than becoming unit vectors of noise (Coates et al.'s +10); in the units of the (whitened) patches
    pool: Literal["auto", "max", "avg", "grid", "none"] = "auto"  # auto: none (synthetic), max (images);
    # grid: average over a pool_size x pool_size grid of equal cells (2: the quadrants), before caching
    pool_size: Count = 2  # pooling window (max, avg) or grid cells per side (grid)
    pool_stride: Count | Auto = "auto"  # step between pooling windows (max, avg); auto: pool_size
    stride: Count | Auto = "auto"  # cluster-conv stride; auto: s (synthetic), 1 (images)
    padding: NonNegInt | Auto = "auto"  # zero padding of the cluster conv; auto: 0 (synthetic), s // 2 ("same", images)
    epochs: Count = 5  # passes over the training split (adam-ce, jl)
    adam_steps: Count | None = None  # if set, train this many minibatch steps instead of epochs
    batch_size: Count = 128  # examples per Adam step
    lr: Rate = 1e-3  # Adam learning rate (adam-ce, and the head of jl)
    weight_decay: NonNeg = 0.0  # the paper uses no tricks
    eta: Rate = 1.0  # gd-linear: GD learning rate eta (§4.1)
    gd_steps: NonNegInt = 100  # gd-linear: T full-batch GD iterations
    sigma: Rate = 1.0  # gd-linear init: rows of K_0 on the sphere of radius sigma/(2 sqrt(n))
    memory_budget: Annotated[str, SizeText()] | Auto = "auto"  # cache of frozen features, e.g. "4G";
    # auto: features.CACHE_SHARE of the available RAM
    cache_dtype: Literal["float16", "uint8"] = "float16"  # uint8: 2x smaller than float16, exact to 1/255 of range
    batch_size_features: Count = 256  # images per batch through the frozen part
    flip: bool = False  # train the 1x1 conv on the training images and their mirror images (2x the data)


@dataclass
class ClassifierConfig:
    """§5.1 SVM(S) or §6's linear / three-layer FC head trained with Adam."""

    RENAMED: ClassVar[dict[str, str]] = {"classifier": "head", "iterations": "adam_steps"}

    head: Annotated[str, Choices("classify", "HEADS")] = "svm"  # svm (§5.1), linear or fc (§6)
    C: Rate = 1.0  # SVM regularisation (scikit-learn's convention)
    svm_backend: Literal["auto", "sklearn", "torch"] = "auto"  # auto: sklearn if the features fit on the CPU
    adam_steps: Count = 10_000  # Adam steps for linear / fc (the paper: 100,000)
    eval_every: Count = 1_000  # record validation accuracy every this many steps (the paper: 10,000)
    batch_size: Count = 128  # examples per Adam step
    lr: Rate = 1e-3  # Adam learning rate
    weight_decay: NonNeg = 0.0
    hidden: list[Count] = field(default_factory=lambda: [384, 192])  # fc / bottleneck hidden widths
    bottleneck: Count = 256  # bottleneck head: channels of its 1x1 conv
    dropout: Annotated[float, Range(0, 1)] = 0.0  # bottleneck head: dropout before each linear layer
    lr_schedule: Literal["constant", "cosine"] = "constant"  # Adam heads; cosine: decay to 0 over adam_steps
    batch_size_features: Count = 256  # images per batch through the network
    flip: bool = False  # train on the training images and their mirror images (2x the data)
    standardize: bool = False  # train on features scaled to zero mean and unit variance (training split's),
    # folded into the first linear layer afterwards (the exported head is unchanged in form); Coates et al. do


@dataclass
class BaselineConfig:
    """The paper's comparison networks (§6, Figure 3); trained with the classifier section's
    Adam settings (adam_steps, batch_size, lr, eval_every, hidden)."""

    arch: Annotated[str, Choices("baselines", "ARCHS")] = "cnn"  # cnn: trained end to end; cnn-random: frozen random convs
    head: Literal["fc", "linear"] = "fc"  # fc: 384-192 ReLU (TF tutorial); linear: one layer


@dataclass
class EvaluateConfig:
    split: Literal["train", "val", "test"] = "test"
    target: Annotated[float, Range(0, 1)] | None = None  # record in metrics.json when the validation accuracy
    # (the classifier's curve) first reached this, in wall-clock seconds from the run's start; null: don't


@dataclass
class LayerConfig:
    """One iteration of Algorithm 1: cluster, then build/train the block."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class PipelineConfig:
    """Algorithm 1 end to end (see configs/*.yaml)."""

    seed: Seed = 0  # one seed for every stage
    device: Device = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig | None = None  # if set, the data is sampled from this model
    layers: list[LayerConfig] = field(default_factory=lambda: [LayerConfig()])
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)  # `hgm baseline` only
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    plots: bool = True  # write accuracy / confusion PNGs into the run folder


# --------------------------------------------------------------------------- validation

T = TypeVar("T")

ECHO_LIMIT = 200  # characters of a bad value echoed in an error message (a YAML bomb stays one line)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > ECHO_LIMIT:
        text = text[:ECHO_LIMIT] + f"... ({len(text):,} characters)"
    return f"{text} ({type(value).__name__})"


def choices_of(tp: Any) -> tuple[str, ...] | None:
    """The allowed strings of a field type (a Literal, Choices, or a union with "auto"), else None."""
    if get_origin(tp) is Annotated:
        base, *extras = get_args(tp)
        for extra in extras:
            if isinstance(extra, Choices):
                return extra.names()
        return choices_of(base)
    if get_origin(tp) is Literal:
        return tuple(map(str, get_args(tp)))
    if get_origin(tp) in (Union, types.UnionType):
        found = [c for arg in get_args(tp) if (c := choices_of(arg)) is not None]
        return tuple(x for c in found for x in c) if found else None
    return None


def _choice(value: Any, choices: tuple, key: str) -> Any:
    if value in choices:
        return value
    raise ConfigError(f"config key '{key}': expected one of {', '.join(map(str, choices))}; got {_describe(value)}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# type -> (what the error says is expected, accepts(value), convert(value))
_SCALARS: dict[type, tuple[str, Callable[[Any], bool], Callable[[Any], Any]]] = {
    bool: ("true or false", lambda v: isinstance(v, bool), bool),
    int: ("an integer", lambda v: _is_number(v) and float(v).is_integer(), int),  # 3.0 is 3
    float: ("a number", _is_number, float),
    str: ("a string", lambda v: isinstance(v, str), str),
}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *extras = get_args(tp)
        for extra in extras:
            if isinstance(extra, Choices):
                return _choice(value, extra.names(), key)
        value = _coerce(value, base, key)
        for extra in extras:
            if isinstance(extra, Range):
                extra.check(value, key)
            elif isinstance(extra, SizeText):
                parse_size(value, key)
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            if Auto in args:  # the old spelling of "auto" (before 0.2): still read, with a warning
                warnings.warn(f"config key '{key}': null for auto is deprecated; write auto", HgmDeprecationWarning,
                              stacklevel=2)
                return "auto"
            raise ConfigError(f"config key '{key}': must not be null")
        errors = []
        for arg in sorted((a for a in args if a is not type(None)), key=lambda a: a is Auto):  # "auto" last
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        if Auto in args and isinstance(value, str):  # a string that is not "auto"
            raise ConfigError(str(errors[0]).replace(": expected ", ": expected auto or ", 1))
        raise errors[0]
    if value is None:
        raise ConfigError(f"config key '{key}': must not be null")
    if origin is Literal:
        return _choice(value, get_args(tp), key)
    if tp in _SCALARS:
        what, accepts, convert = _SCALARS[tp]
        if accepts(value):
            return convert(value)
        raise ConfigError(f"config key '{key}': expected {what}, got {_describe(value)}")
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            value = [value]  # "classes: 4" means [4]
        return [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug, not a user error


def field_types(cls: type) -> dict[str, Any]:
    """Each field's full type, Annotated extras (ranges, choices) included."""
    return get_type_hints(cls, include_extras=True)


def _renamed(cls: type, data: dict, prefix: str) -> dict:
    """``data`` with the deprecated keys of ``cls`` moved to their new names (one warning each)."""
    renamed = getattr(cls, "RENAMED", {})
    if not any(old in data for old in renamed):
        return data
    data = dict(data)
    for old, new in renamed.items():
        if old not in data:
            continue
        full_old, full_new = (f"{prefix}.{old}", f"{prefix}.{new}") if prefix else (old, new)
        if new in data:
            raise ConfigError(f"config keys '{full_old}' and '{full_new}' are the same setting: keep '{full_new}'")
        warnings.warn(f"config key '{full_old}' is deprecated; use '{full_new}'", HgmDeprecationWarning, stacklevel=2)
        data[new] = data.pop(old)
    return data


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, refusing unknown keys, wrong types and values out of range."""
    where = f"config section '{prefix}'" if prefix else "config"
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(data)}")
    data = _renamed(cls, data, prefix)
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown config key '{str(full)[:ECHO_LIMIT]}' (known: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name in data:
            full = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """Plain nested dict (what is written into artifacts and run folders)."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else copy.deepcopy(cfg)


# The sections a stage records in its artifact (``stages.run_stage``), by name.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "cluster": ClusterConfig,
    "train": TrainConfig,
    "classifier": ClassifierConfig,
    "baseline": BaselineConfig,
    "generate": GenerateConfig,
}


def upgrade_record(record: Any) -> Any:
    """A stage config as an older hgm recorded it, in today's spelling: renamed
    keys moved, null-for-auto read as "auto", fields added since filled with
    their defaults. Two records that describe the same settings then compare
    equal, so artifacts written before a rename are still reused. A record
    that no longer validates comes back unchanged (it simply won't match)."""
    if not isinstance(record, dict) or not set(record) <= set(SECTIONS):
        return record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HgmDeprecationWarning)
            return {name: to_dict(from_dict(SECTIONS[name], value, name)) for name, value in record.items()}
    except ConfigError:
        return record


# --------------------------------------------------------------------------- YAML + overrides

MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred lines; anything bigger is not one


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors/aliases: a config never needs them, and
    a few hundred bytes of nested aliases ("billion laughs") expand to gigabytes."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.events.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"{self.name}: YAML aliases (*name) are not allowed in a config (line {mark.line + 1})")
        return super().compose_node(parent, index)


def safe_yaml(text: str, name: str = "<config>") -> Any:
    """``yaml.safe_load`` without aliases (see ``_NoAliasLoader``)."""
    loader = _NoAliasLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a regular file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {p} is {p.stat().st_size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
    try:
        data = safe_yaml(p.read_text(), str(p))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping at the top level")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"layers.0.cluster.k=512"`` -> (["layers", "0", "cluster", "k"], 512).

    The value is parsed as a YAML scalar/flow value: ``3``, ``0.5``, ``true``,
    ``null``, ``[4, 8]``, ``hello``."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = safe_yaml(raw, "--set") if raw.strip() else ""
    except (yaml.YAMLError, ValueError):  # ValueError: an integer beyond Python's 4,300-digit limit
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str], defaults: dict | None = None) -> dict:
    """Apply ``--set`` overrides to a raw config dict (a deep copy is returned).

    Intermediate mappings are created; list elements are addressed by index.
    ``defaults`` (the dataclass defaults as a dict) supplies lists that the
    YAML did not mention, so ``layers.0.cluster.k=...`` works on defaults."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        default_node: Any = defaults
        for i, part in enumerate(path):
            last = i == len(path) - 1
            key_so_far = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"config key '{key_so_far}': no such list element (there are {len(node)})")
                idx = int(part)
                if last:
                    node[idx] = value
                else:
                    if node[idx] is None:
                        node[idx] = {}
                    node = node[idx]
                    default_node = default_node[idx] if isinstance(default_node, list) and idx < len(default_node) else None
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key_so_far}': parent is not a section")
            if last:
                node[part] = value
                break
            child_default = default_node.get(part) if isinstance(default_node, dict) else None
            if node.get(part) is None:
                node[part] = copy.deepcopy(child_default) if isinstance(child_default, list) else {}
            node = node[part]
            default_node = child_default
    return data


def _dataclass_of(tp: Any) -> Any:
    """The dataclass inside a field type (``X``, ``X | None``, ``list[X]``), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if get_origin(tp) in (Union, types.UnionType, list):
        return next((d for a in get_args(tp) if (d := _dataclass_of(a)) is not None), None)
    return None


def _respell(data: Any, cls: type, prefix: str = "") -> Any:
    """A raw config tree with every renamed key moved to today's name (one
    warning each), so that an old spelling in the YAML and a new one in
    ``--set`` (or the reverse) meet as one key."""
    if isinstance(data, list):
        return [_respell(v, cls, f"{prefix}.{i}") for i, v in enumerate(data)]
    if not isinstance(data, dict):
        return data
    data = _renamed(cls, data, prefix)
    hints = field_types(cls)
    return {key: _respell(value, sub, f"{prefix}.{key}" if prefix else key)
            if key in hints and (sub := _dataclass_of(hints[key])) is not None else value
            for key, value in data.items()}


def _respell_override(text: str, cls: type) -> str:
    """``--set`` text with a renamed key in today's spelling (``classifier.iterations=5`` ->
    ``classifier.adam_steps=5``, with a warning)."""
    path, sep, value = text.partition("=")
    parts, tp = path.strip().split("."), cls
    for i, part in enumerate(parts):
        if tp is None:
            break
        if part.isdigit():
            continue
        renamed = getattr(tp, "RENAMED", {})
        if part in renamed and dataclasses.is_dataclass(tp):
            warnings.warn(f"config key '{'.'.join(parts[: i + 1])}' is deprecated; use "
                          f"'{'.'.join([*parts[:i], renamed[part]])}'", HgmDeprecationWarning, stacklevel=3)
            parts[i] = renamed[part]
        tp = _dataclass_of(field_types(tp).get(parts[i])) if dataclasses.is_dataclass(tp) else None
    return ".".join(parts) + sep + value if sep else text


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
) -> T:
    """defaults <- YAML file <- ``--set`` overrides, validated into ``cls``."""
    raw: dict = _respell(read_yaml(path), cls) if path is not None else {}
    raw = apply_overrides(raw, [_respell_override(o, cls) for o in overrides or []], to_dict(cls()))
    return from_dict(cls, raw)


def with_options(cfg: T, options: dict[str, Any], prefix: str = "") -> T:
    """``cfg`` with the explicitly given command-line options (non-None) applied, re-validated."""
    raw = to_dict(cfg)
    raw.update({k: v for k, v in options.items() if v is not None})
    return from_dict(type(cfg), raw, prefix)


def parse_size(text: str | None, key: str = "memory size") -> int | None:
    """'4G' / '512M' / '1.5GiB' / '1000000' -> bytes (> 0)."""
    if text is None:
        return None
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        value = float(s[:-1]) * mult[s[-1]] if s and s[-1] in mult else float(s)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 1):
        where = f"config key '{key}'" if key != "memory size" else f"memory size {text!r}"
        raise ConfigError(f"{where}: expected e.g. 4G, 512M or a number of bytes, got {_describe(text)}") from None
    return int(value)
