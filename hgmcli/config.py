"""Typed configuration: one dataclass per stage, loaded from YAML, then
``--set a.b=value`` overrides, then explicit command-line options.

Every field has a comment with its meaning and units. ``None`` on a field
documented as "auto" means: follow the data (the theory's geometry on a
synthetic ``.npz``, §6's on images) — resolved by the stage, and the resolved
value is what gets recorded in the artifact.

Unknown keys and wrong types are ``ConfigError``s that name the full key
(``layers.1.cluster.k``)."""

from __future__ import annotations

import copy
import dataclasses
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]


# --------------------------------------------------------------------------- stage configs


@dataclass
class GenerateConfig:
    """§3.1 hierarchical model / §3.2 synthetic digits."""

    model: Literal["hierarchical", "digits"] = "hierarchical"
    depth: int = 3  # d: number of refinement steps; images are m0*s^d pixels wide
    patch_size: int = 2  # s: each pixel of level i becomes an s x s patch at level i+1
    m0: int = 4  # top semantic image is m0 x m0
    # The defaults are configs/synthetic.yaml's model: a linear classifier on its raw pixels
    # stays near chance (0.53-0.68 measured) while Algorithm 1 recovers every level exactly.
    classes: list[int] = field(default_factory=lambda: [2])  # |C_0|..|C_{d-1}|, or one value for all
    k: int = 5  # patches per semantic class (|S_c| = k)
    labels: int = 2  # number of label classes L (the paper: 2, y in {-1,+1})
    margin: float = 1.0  # D_y keeps X(0) whose score margin is >= this many std of the score
    # differences (G0 linearly separable with that margin); larger: stronger label signal per class
    orthonormal: bool = False  # §4: final-level patches orthonormal (needs s^2 >= k*|C_{d-1}|)
    noise: float = 0.0  # std of Gaussian pixel noise added to the observed image
    n_train: int = 40000  # training examples (TLGD's gradient is an empirical mean: it needs many)
    n_test: int = 2000  # test examples


@dataclass
class DataConfig:
    """Where images come from and how they are split and normalised."""

    root: str | None = None  # .npz, CIFAR-10 folder or image folder; None: $HGM_DATA
    val_size: float | None = None  # validation slice: count (>=1) or fraction (<1); None: auto
    # (CIFAR-10: last 10,000 training images as in the paper; otherwise 10%)
    normalize: Literal["auto", "none", "scale", "standardize"] = "auto"  # standardize: per-channel
    # mean/std of the training split (uint8 data first scaled to [0,1]); scale: [0,1] only;
    # auto: none on a synthetic .npz (the theory's raw patches), standardize on images
    limit: int | None = None  # use only the first N training images (smoke runs)
    download: bool = False  # fetch CIFAR-10 into root with torchvision's downloader if missing


@dataclass
class ClusterConfig:
    """§5.1 step (1) / §6 steps (1)-(2): cosine k-means on sampled patches."""

    k: int | None = None  # clusters; auto: Theorem 2's value on synthetic data, 256 on images
    patches: int = 100_000  # N: patches sampled uniformly (with replacement over positions)
    patch_size: int | None = None  # s; auto: the model's s (synthetic), 3 (images)
    stride: int | None = None  # sampling grid; auto: s (non-overlapping, theory), 1 (images)
    center: bool = False  # subtract each patch's mean before L2-normalising
    backend: Literal["auto", "faiss", "torch"] = "auto"  # auto: faiss if importable, else torch
    init: Literal["auto", "kmeans++", "kmeans||", "random"] = "kmeans++"  # seeding (appendix B: k-means++);
    # kmeans||: Bahmani et al.'s scalable k-means++; auto: greedy k-means++ where N*k is small, else kmeans||
    seed_trials: int | None = None  # candidates per k-means++ step; 1: appendix B's plain D^2
    # sampling; None: 2 + ln k, the greedy variant (measured: fewer bad local optima, see kmeans.py)
    restarts: int = 1  # independent k-means runs; the lowest objective is kept
    iterations: int = 25  # Lloyd iterations after seeding
    max_points_per_centroid: int | None = None  # subsample to k*this points (FAISS-style); None: use all
    batch_size: int = 256  # images per batch when computing the network's features


@dataclass
class TrainConfig:
    """§5.1 steps (2)-(4) / §6 steps (3)-(6): the cluster-conv block and its 1x1 conv."""

    mode: Literal["adam-ce", "gd-linear", "jl", "none"] = "adam-ce"  # how the 1x1 conv is made:
    # adam-ce (§6), gd-linear (§4.1 TLGD), jl (random projection), none (cluster-only block)
    n: int = 64  # output channels of the 1x1 conv
    bias: float = 0.0  # b in ReLU(conv(x) + b)
    activation: Literal["auto", "relu", "onehot"] = "auto"  # onehot: hard assignment phi (§5.1);
    # auto: onehot for gd-linear and none on synthetic data, relu otherwise
    normalize_patches: bool = True  # conv computes cosine similarity (divides by the patch norm)
    pool: Literal["auto", "max", "avg", "none"] = "auto"  # auto: none (synthetic), max (images)
    pool_size: int = 2  # pooling window and stride
    stride: int | None = None  # cluster-conv stride; auto: s (synthetic), 1 (images)
    padding: int | None = None  # zero padding of the cluster conv; auto: 0 (synthetic), s // 2 ("same", images)
    epochs: int = 5  # passes over the training split (adam-ce)
    steps: int | None = None  # if set, train this many minibatch steps instead of epochs
    batch_size: int = 128  # examples per Adam step
    lr: float = 1e-3  # Adam learning rate (adam-ce, and the head of jl)
    weight_decay: float = 0.0  # the paper uses no tricks
    eta: float = 1.0  # gd-linear: GD learning rate eta (§4.1)
    iterations: int = 100  # gd-linear: T full-batch GD iterations
    sigma: float = 1.0  # gd-linear init: rows of K_0 on the sphere of radius sigma/(2 sqrt(n))
    memory_budget: str | None = None  # cache of frozen features, e.g. "4G"; None: 40% of free RAM
    cache_dtype: Literal["float16", "uint8"] = "float16"  # uint8: 4x smaller, exact to 1/255 of range
    batch_size_features: int = 256  # images per batch through the frozen part


@dataclass
class ClassifierConfig:
    """§5.1 SVM(S) or §6's linear / three-layer FC head trained with Adam."""

    classifier: Literal["svm", "linear", "fc"] = "svm"
    C: float = 1.0  # SVM regularisation (scikit-learn's convention)
    svm_backend: Literal["auto", "sklearn", "torch"] = "auto"  # auto: sklearn if features fit
    iterations: int = 10_000  # Adam steps for linear / fc (the paper: 100,000)
    eval_every: int = 1_000  # record validation accuracy every this many steps (the paper: 10,000)
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden: list[int] = field(default_factory=lambda: [384, 192])  # fc hidden widths
    batch_size_features: int = 256  # images per batch through the network


@dataclass
class EvaluateConfig:
    split: Literal["train", "val", "test"] = "test"


@dataclass
class LayerConfig:
    """One iteration of Algorithm 1: cluster, then build/train the block."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class PipelineConfig:
    """Algorithm 1 end to end (see configs/*.yaml)."""

    seed: int = 0  # one seed for every stage
    device: Device = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig | None = None  # if set, the data is sampled from this model
    layers: list[LayerConfig] = field(default_factory=lambda: [LayerConfig()])
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    plots: bool = True  # write accuracy / confusion PNGs into the run folder


# --------------------------------------------------------------------------- validation

T = TypeVar("T")

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"config key '{key}': must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if value is None:
        raise ConfigError(f"config key '{key}': must not be null")
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"config key '{key}': expected one of {', '.join(map(str, choices))}; got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}': expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}': expected a string, got {_describe(value)}")
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            value = [value]  # "classes: 4" means [4]
        return [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug, not a user error


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, refusing unknown keys and wrong types."""
    where = f"config section '{prefix}'" if prefix else "config"
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(data)}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name in data:
            full = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """Plain nested dict (what is written into artifacts and run folders)."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else copy.deepcopy(cfg)


# --------------------------------------------------------------------------- YAML + overrides


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
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
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
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


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
) -> T:
    """defaults <- YAML file <- ``--set`` overrides, validated into ``cls``."""
    raw: dict = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [], to_dict(cls()))
    return from_dict(cls, raw)


def with_options(cfg: T, options: dict[str, Any], prefix: str = "") -> T:
    """``cfg`` with the explicitly given command-line options (non-None) applied, re-validated."""
    raw = to_dict(cfg)
    raw.update({k: v for k, v in options.items() if v is not None})
    return from_dict(type(cfg), raw, prefix)


def parse_size(text: str | None) -> int | None:
    """'4G' / '512M' / '1.5GiB' / '1000000' -> bytes."""
    if text is None:
        return None
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if s and s[-1] in mult:
            return int(float(s[:-1]) * mult[s[-1]])
        return int(float(s))
    except ValueError:
        raise ConfigError(f"memory size {text!r}: expected e.g. 4G, 512M or a number of bytes") from None
