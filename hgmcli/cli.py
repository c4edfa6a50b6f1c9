"""The ``hgm`` command line: parse options, call one function of ``stages``,
print. Nothing else lives here.

Conventions (SPEC.md): results go to stdout (a table, or JSON with --json),
progress, warnings and errors to stderr; a domain error (``HgmError``)
becomes one line ``Error: <message>`` and exit code 1; usage errors are
Typer's own (exit 2). Every option's help ends with its default, read from
the config dataclass the option overrides, and, for a choice, the choices,
read from the registry that implements them."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__, stages
from .artifacts import to_jsonable
from .config import (
    BaselineConfig,
    ClassifierConfig,
    ClusterConfig,
    DataConfig,
    EvaluateConfig,
    GenerateConfig,
    HgmDeprecationWarning,
    PipelineConfig,
    TrainConfig,
    choices_of,
    field_types,
    load_config,
    with_options,
)
from .errors import ConfigError, HgmError
from .progress import no_progress

app = typer.Typer(
    name="hgm",
    help="Layerwise clustering + 1x1-conv training of CNNs on hierarchical generative models "
    "(Malach & Shalev-Shwartz). Each stage reads and writes files; `hgm pipeline` runs them all.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

out_console = Console()
err_console = Console(stderr=True)


class _State:
    verbosity = 1  # 0 quiet (no progress), 1 normal, 2 verbose


state = _State()


def _version_callback(value: bool) -> None:
    if value:
        out_console.print(f"hgm {__version__}")
        raise typer.Exit()


VerboseOpt = Annotated[
    Optional[bool],
    typer.Option("--verbose/--quiet", "-v/-q", help="More detail on stderr (log lines) / no progress bars."),
]


@app.callback()
def _global(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: VerboseOpt = None,
) -> None:
    if verbose is not None:
        state.verbosity = 2 if verbose else 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (deprecated spellings) as one ``Warning: ...`` line on stderr, no source line."""
    err_console.print(f"Warning: {message}", markup=False, highlight=False, soft_wrap=True)


def command(name: str, **kwargs: Any) -> Callable:
    """Register a command whose ``HgmError``s become ``Error: ...`` + exit 1, and
    which also takes -v/-q after its name (``hgm cluster -v ...``)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, verbose: bool | None = None, **kw: Any) -> Any:
            if verbose is not None:
                state.verbosity = 2 if verbose else 0
            with warnings.catch_warnings():
                warnings.simplefilter("default", HgmDeprecationWarning)
                warnings.showwarning = _show_warning
                try:
                    return fn(*args, **kw)
                except HgmError as e:
                    err_console.print(f"Error: {e}", markup=False, highlight=False, soft_wrap=True)
                    raise typer.Exit(1) from None
                except KeyboardInterrupt:
                    err_console.print("Interrupted.", markup=False)
                    raise typer.Exit(130) from None

        sig = inspect.signature(fn, eval_str=True)
        extra = inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=VerboseOpt)
        wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), extra])
        wrapper.__annotations__ = {**fn.__annotations__, "verbose": VerboseOpt}
        return app.command(name, **kwargs)(wrapper)

    return decorate


def _secondary_rank() -> bool:
    """A torchrun rank other than 0: it computes but neither draws nor prints."""
    import os

    return int(os.environ.get("RANK", "0")) != 0


@contextmanager
def progress_bar() -> Iterator[Callable]:
    """A rich progress bar on stderr when it is a terminal; log lines when it is
    not and -v is given; nothing with -q."""
    if state.verbosity == 0 or _secondary_rank():
        yield no_progress
        return
    if not err_console.is_terminal:  # CI logs, pipes: no bar (it would print blank lines)
        yield _LogProgress() if state.verbosity >= 2 else no_progress
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def report(task: str, done: int, total: int | None, **fields: Any) -> None:
            info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total, info=info)
            bar.update(tasks[task], completed=done, total=total, info=info)

        yield report


class _LogProgress:
    """Progress as log lines on stderr: a task's first and last call, and at
    most one line per ``EVERY`` seconds in between (a log, not a flood)."""

    EVERY = 5.0

    def __init__(self):
        self.last: dict[str, float] = {}

    def __call__(self, task: str, done: int, total: int | None, **fields: Any) -> None:
        now = time.monotonic()
        if task in self.last and done != total and now - self.last[task] < self.EVERY:
            return
        self.last[task] = now
        info = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        line = f"[{task}] {done}/{total if total is not None else '?'} {info}".rstrip()
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def print_summary(result: stages.StageResult, title: str | None = None) -> None:
    table = Table(title=title or f"hgm {result.stage}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in result.summary:
        table.add_row(label, value)
    out_console.print(table)


def print_json(obj: Any) -> None:
    # Stage stats may hold numpy arrays (cluster sizes): the same conversion the artifacts use.
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2) + "\n")


# --------------------------------------------------------------------------- options
#
# Every command reads the same YAML format as `hgm pipeline` (--config), with
# --set overrides in pipeline keys (data.val_size=0, layers.0.cluster.k=512),
# then its own explicit options on top. An option left out keeps the config's
# value, so options default to None here and their help shows the config's
# default.


def _default_text(section: type, name: str) -> str:
    f = next(f for f in dataclasses.fields(section) if f.name == name)
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def opt(section: type | None, name: str | None, *flags: str, help: str, default: str | None = None,
        **kw: Any) -> Any:
    """A ``typer.Option`` for config field ``section.name``: its help ends with
    the field's choices (from the registry that implements them) and its
    default (from the dataclass), or ``default`` when given."""
    text = help
    if section is not None and name is not None:
        choices = choices_of(field_types(section)[name])
        if choices:
            text += f" One of: {', '.join(choices)}."
        default = default if default is not None else _default_text(section, name)
    if default is not None:
        text += " " + escape(f"[default: {default}]")
    return typer.Option(*flags, help=text, show_default=False, **kw)


def old(flag: str, new: str) -> Any:
    """A hidden option: the spelling ``flag`` that ``new`` replaced, read with a deprecation warning."""
    return typer.Option(flag, hidden=True, help=f"Deprecated: use {new}.")


def _renamed(value: Any, old_flag: str, new_value: Any, new_flag: str) -> Any:
    """The value of an option that was renamed: the new spelling's, or the old one's with a warning."""
    if value is None:
        return new_value
    if new_value is not None:
        raise ConfigError(f"{old_flag} and {new_flag} are the same option: keep {new_flag}")
    warnings.warn(f"{old_flag} is deprecated; use {new_flag}", HgmDeprecationWarning, stacklevel=2)
    return value


ConfigOpt = Annotated[
    Optional[Path], opt(None, None, "--config", "-c", help="Pipeline-style YAML; this command reads its sections.",
                        default="none: the built-in defaults")
]
SetOpt = Annotated[
    Optional[list[str]], opt(None, None, "--set", help="Override a config key: --set data.val_size=0 (repeatable).",
                             default="none")
]
SeedOpt = Annotated[Optional[int], opt(PipelineConfig, "seed", "--seed", help="Random seed (the config's seed).")]
DeviceOpt = Annotated[Optional[str], opt(PipelineConfig, "device", "--device", help="Where to compute.")]
JsonOpt = Annotated[bool, opt(None, None, "--json", help="Print results as JSON on stdout.", default="no")]
DataOpt = Annotated[
    Optional[str],
    opt(None, None, "--data", "-d", help="A .npz from `hgm generate`, a CIFAR-10 folder or an image folder.",
        default="$HGM_DATA"),
]
ValSizeOpt = Annotated[
    Optional[float], opt(DataConfig, "val_size", "--val-size",
                         help="Validation slice: a count, or a fraction < 1; 0 for none; auto: the last 10,000 "
                              "CIFAR-10 training images, else 10%.")
]
NormalizeOpt = Annotated[Optional[str], opt(DataConfig, "normalize", "--normalize", help="Input normalisation.")]
LimitOpt = Annotated[Optional[int], opt(DataConfig, "limit", "--limit", help="Use only the first N training images.")]
LayerOpt = Annotated[int, opt(None, None, "--layer", help="Which `layers` entry of --config to read.", default="0")]


def _pipeline_config(config: Path | None, set_: list[str] | None) -> PipelineConfig:
    return load_config(PipelineConfig, config, set_ or [])


def _data_config(pcfg: PipelineConfig, data: str | None, val_size: float | None, normalize: str | None, limit: int | None):
    return with_options(pcfg.data, dict(root=data, val_size=val_size, normalize=normalize, limit=limit), "data")


def _layer(pcfg: PipelineConfig, layer: int):
    if not 0 <= layer < len(pcfg.layers):
        raise HgmError(f"--layer {layer}: the config has {len(pcfg.layers)} layers")
    return pcfg.layers[layer]


def _finish(result: stages.StageResult, json_out: bool) -> None:
    if _secondary_rank():
        return
    if json_out:
        print_json(
            {"stage": result.stage, "outputs": {k: str(v) for k, v in result.outputs.items()}, "stats": result.stats}
        )
    else:
        print_summary(result)


# --------------------------------------------------------------------------- generate


@command("generate")
def generate_cmd(
    out: Annotated[Path, opt(None, None, "--out", "-o", help="Output .npz.", default="data.npz")] = Path("data.npz"),
    family: Annotated[Optional[str], opt(GenerateConfig, "family", "--family",
                                         help="hierarchical (§3.1) or digits (§3.2).")] = None,
    depth: Annotated[Optional[int], opt(GenerateConfig, "depth", "--depth", help="d: number of refinement levels.")] = None,
    patch_size: Annotated[Optional[int], opt(GenerateConfig, "patch_size", "--patch-size", help="s: patch size.")] = None,
    m0: Annotated[Optional[int], opt(GenerateConfig, "m0", "--m0", help="Top semantic image size m0.")] = None,
    classes: Annotated[Optional[str], opt(GenerateConfig, "classes", "--classes",
                                          help="|C_0|..|C_{d-1}|, comma separated, or one value for all levels.")] = None,
    patches_per_class: Annotated[Optional[int], opt(GenerateConfig, "patches_per_class", "--patches-per-class",
                                                    help="k of §3.1: patches per semantic class.")] = None,
    labels: Annotated[Optional[int], opt(GenerateConfig, "labels", "--labels", help="Number of label classes.")] = None,
    margin: Annotated[Optional[float], opt(GenerateConfig, "margin", "--margin",
                                           help="D_y's score margin, in std of the label-score difference.")] = None,
    orthonormal: Annotated[Optional[bool], opt(GenerateConfig, "orthonormal", "--orthonormal/--no-orthonormal",
                                               help="Orthonormal final-level patches (§4).")] = None,
    noise: Annotated[Optional[float], opt(GenerateConfig, "noise", "--noise", help="Std of Gaussian pixel noise.")] = None,
    n_train: Annotated[Optional[int], opt(GenerateConfig, "n_train", "--n-train", help="Training examples.")] = None,
    n_test: Annotated[Optional[int], opt(GenerateConfig, "n_test", "--n-test", help="Test examples.")] = None,
    preview: Annotated[Optional[Path], opt(None, None, "--preview", help="Also write a PNG of samples at every level.",
                                           default="none")] = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
    model_: Annotated[Optional[str], old("--model", "--family")] = None,
    k_: Annotated[Optional[int], old("--k", "--patches-per-class")] = None,
) -> None:
    """Sample images from the hierarchical generative model (§3.1) or the synthetic digits (§3.2).

    Examples:

      hgm generate --out data.npz --preview data.png

      hgm generate --family digits --n-train 2000 --out digits.npz

      hgm generate --depth 2 --patch-size 4 --classes 2 --patches-per-class 4 --orthonormal --out ortho.npz
    """
    class_list = None
    if classes is not None:
        try:
            class_list = [int(c) for c in classes.split(",") if c.strip()]
        except ValueError:
            raise HgmError(f"--classes expects integers separated by commas, got {classes!r}") from None
    pcfg = _pipeline_config(config, set_)
    options = dict(
        family=_renamed(model_, "--model", family, "--family"), depth=depth, patch_size=patch_size, m0=m0,
        classes=class_list, patches_per_class=_renamed(k_, "--k", patches_per_class, "--patches-per-class"),
        labels=labels, margin=margin, orthonormal=orthonormal, noise=noise, n_train=n_train, n_test=n_test,
    )
    cfg = with_options(pcfg.generate or GenerateConfig(), options, "generate")
    with progress_bar() as report:
        result = stages.generate(cfg, out=out, seed=pcfg.seed if seed is None else seed, preview=preview, progress=report)
    _finish(result, json_out)


# --------------------------------------------------------------------------- cluster


@command("cluster")
def cluster_cmd(
    out: Annotated[Path, opt(None, None, "--out", "-o", help="Output centroids .npz.", default="centroids.npz")] = Path(
        "centroids.npz"),
    data: DataOpt = None,
    model: Annotated[Optional[Path], opt(None, None, "--model", "-m", help="Network .pt whose output is clustered.",
                                         default="the raw images")] = None,
    k: Annotated[Optional[int], opt(ClusterConfig, "k", "--k",
                                    help="Clusters; auto: Theorem 2's value on synthetic data, 256 on images.")] = None,
    patches: Annotated[Optional[int], opt(ClusterConfig, "patches", "--patches", help="N: patches to sample.")] = None,
    patch_size: Annotated[Optional[int], opt(ClusterConfig, "patch_size", "--patch-size",
                                             help="s; auto: the model's s on synthetic data, 3 on images.")] = None,
    stride: Annotated[Optional[int], opt(ClusterConfig, "stride", "--stride",
                                         help="Sampling stride; auto: s on synthetic data, 1 on images.")] = None,
    center: Annotated[Optional[bool], opt(ClusterConfig, "center", "--center/--no-center",
                                          help="Mean-centre patches first (the conv centres too).")] = None,
    backend: Annotated[Optional[str], opt(ClusterConfig, "backend", "--backend",
                                          help="k-means implementation; auto: faiss when installed, else torch.")] = None,
    init: Annotated[Optional[str], opt(ClusterConfig, "init", "--init", help="Seeding.")] = None,
    lloyd_iterations: Annotated[Optional[int], opt(ClusterConfig, "lloyd_iterations", "--lloyd-iterations",
                                                   help="Lloyd iterations after seeding.")] = None,
    max_points_per_centroid: Annotated[Optional[int], opt(
        ClusterConfig, "max_points_per_centroid", "--max-points-per-centroid",
        help="Subsample to k*this points before k-means; none: use all.")] = None,
    val_size: ValSizeOpt = None,
    normalize: NormalizeOpt = None,
    limit: LimitOpt = None,
    layer: LayerOpt = 0,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
    n_: Annotated[Optional[int], old("-n", "--patches")] = None,
    iterations_: Annotated[Optional[int], old("--iterations", "--lloyd-iterations")] = None,
) -> None:
    """Sample patches (of the network's output, or the raw images) and run cosine k-means with k-means++ seeding.

    Examples:

      hgm cluster --data data.npz --out c1.npz

      hgm cluster --data data.npz --model net1.pt --out c2.npz

      hgm cluster --data ~/cifar --k 1377 --patches 47509 --out c1.npz
    """
    pcfg = _pipeline_config(config, set_)
    dcfg = _data_config(pcfg, data, val_size, normalize, limit)
    options = dict(
        k=k, patches=_renamed(n_, "-n", patches, "--patches"), patch_size=patch_size, stride=stride, center=center,
        backend=backend, init=init, max_points_per_centroid=max_points_per_centroid,
        lloyd_iterations=_renamed(iterations_, "--iterations", lloyd_iterations, "--lloyd-iterations"),
    )
    cfg = with_options(_layer(pcfg, layer).cluster, options, "cluster")
    with progress_bar() as report:
        result = stages.cluster(
            dcfg, cfg, out=out, model=model, seed=pcfg.seed if seed is None else seed,
            device=device or pcfg.device, progress=report,
        )
    _finish(result, json_out)


# --------------------------------------------------------------------------- train-layer


@command("train-layer")
def train_layer_cmd(
    centroids: Annotated[Path, opt(None, None, "--centroids", help="Centroids .npz from `hgm cluster`.",
                                   default="required")],
    out: Annotated[Path, opt(None, None, "--out", "-o", help="Output network .pt.", default="network.pt")] = Path(
        "network.pt"),
    data: DataOpt = None,
    model: Annotated[Optional[Path], opt(None, None, "--model", "-m", help="Network .pt to extend.",
                                         default="start a new one")] = None,
    mode: Annotated[Optional[str], opt(TrainConfig, "mode", "--mode", help="How the 1x1 conv is made.")] = None,
    out_channels: Annotated[Optional[int], opt(TrainConfig, "out_channels", "--out-channels",
                                               help="n: output channels of the 1x1 conv.")] = None,
    bias: Annotated[Optional[float], opt(TrainConfig, "bias", "--bias", help="b in ReLU(conv + b).")] = None,
    activation: Annotated[Optional[str], opt(TrainConfig, "activation", "--activation",
                                             help="The encoder after the cluster conv; auto: onehot on synthetic "
                                                  "data, relu on images.")] = None,
    normalize_patches: Annotated[Optional[bool], opt(TrainConfig, "normalize_patches",
                                                     "--normalize-patches/--raw-patches",
                                                     help="The conv computes cosine similarity.")] = None,
    pool: Annotated[Optional[str], opt(TrainConfig, "pool", "--pool",
                                       help="Pooling after the encoder; auto: none on synthetic data, max on images.")] = None,
    pool_size: Annotated[Optional[int], opt(TrainConfig, "pool_size", "--pool-size", help="Pooling window and stride.")] = None,
    stride: Annotated[Optional[int], opt(TrainConfig, "stride", "--stride",
                                         help="Cluster-conv stride; auto: s on synthetic data, 1 on images.")] = None,
    padding: Annotated[Optional[int], opt(TrainConfig, "padding", "--padding",
                                          help="Cluster-conv zero padding; auto: 0 on synthetic data, s//2 on images.")] = None,
    epochs: Annotated[Optional[int], opt(TrainConfig, "epochs", "--epochs", help="Adam epochs (adam-ce, jl).")] = None,
    adam_steps: Annotated[Optional[int], opt(TrainConfig, "adam_steps", "--adam-steps",
                                             help="Adam steps instead of epochs; none: count epochs.")] = None,
    batch_size: Annotated[Optional[int], opt(TrainConfig, "batch_size", "--batch-size", help="Examples per Adam step.")] = None,
    lr: Annotated[Optional[float], opt(TrainConfig, "lr", "--lr", help="Adam learning rate.")] = None,
    weight_decay: Annotated[Optional[float], opt(TrainConfig, "weight_decay", "--weight-decay", help="Adam weight decay.")] = None,
    eta: Annotated[Optional[float], opt(TrainConfig, "eta", "--eta", help="gd-linear: GD learning rate.")] = None,
    gd_steps: Annotated[Optional[int], opt(TrainConfig, "gd_steps", "--gd-steps", help="gd-linear: T GD iterations.")] = None,
    sigma: Annotated[Optional[float], opt(TrainConfig, "sigma", "--sigma", help="gd-linear: init radius parameter.")] = None,
    memory_budget: Annotated[Optional[str], opt(TrainConfig, "memory_budget", "--memory-budget",
                                                help="Feature cache budget, e.g. 4G; auto: 40% of the free RAM.")] = None,
    cache_dtype: Annotated[Optional[str], opt(TrainConfig, "cache_dtype", "--cache-dtype",
                                              help="Storage of the cached features.")] = None,
    val_size: ValSizeOpt = None,
    normalize: NormalizeOpt = None,
    limit: LimitOpt = None,
    layer: LayerOpt = 0,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
    n_: Annotated[Optional[int], old("--n", "--out-channels")] = None,
    iterations_: Annotated[Optional[int], old("--iterations", "--gd-steps")] = None,
    steps_: Annotated[Optional[int], old("--steps", "--adam-steps")] = None,
) -> None:
    """Build Conv(centroids)-encoder-Pool, train its 1x1 conv, drop the head, append the block to the network.

    Examples:

      hgm train-layer --data data.npz --centroids c1.npz --mode gd-linear --out net1.pt

      hgm train-layer --data ~/cifar --centroids c1.npz --out-channels 64 --bias -0.1 --epochs 5 --out net1.pt

      hgm train-layer --data ~/cifar --centroids c2.npz --model net1.pt --out-channels 96 --out net2.pt
    """
    pcfg = _pipeline_config(config, set_)
    dcfg = _data_config(pcfg, data, val_size, normalize, limit)
    options = dict(
        mode=mode, out_channels=_renamed(n_, "--n", out_channels, "--out-channels"), bias=bias, activation=activation,
        normalize_patches=normalize_patches, pool=pool, pool_size=pool_size, stride=stride, padding=padding,
        epochs=epochs, adam_steps=_renamed(steps_, "--steps", adam_steps, "--adam-steps"), batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, eta=eta, gd_steps=_renamed(iterations_, "--iterations", gd_steps, "--gd-steps"),
        sigma=sigma, memory_budget=memory_budget, cache_dtype=cache_dtype,
    )
    cfg = with_options(_layer(pcfg, layer).train, options, "train")
    with progress_bar() as report:
        result = stages.train_layer(
            dcfg, cfg, centroids=centroids, out=out, model=model, seed=pcfg.seed if seed is None else seed,
            device=device or pcfg.device, progress=report,
        )
    _finish(result, json_out)


# --------------------------------------------------------------------------- fit-svm


@command("fit-svm")
def fit_svm_cmd(
    out: Annotated[Path, opt(None, None, "--out", "-o", help="Output classifier .pt.", default="classifier.pt")] = Path(
        "classifier.pt"),
    data: DataOpt = None,
    model: Annotated[Optional[Path], opt(None, None, "--model", "-m", help="Network .pt.", default="raw pixels")] = None,
    head: Annotated[Optional[str], opt(ClassifierConfig, "head", "--head", help="The final classifier.")] = None,
    C: Annotated[Optional[float], opt(ClassifierConfig, "C", "--C", help="SVM regularisation.")] = None,
    svm_backend: Annotated[Optional[str], opt(ClassifierConfig, "svm_backend", "--svm-backend",
                                              help="SVM solver; auto: liblinear when the features fit on the CPU.")] = None,
    adam_steps: Annotated[Optional[int], opt(ClassifierConfig, "adam_steps", "--adam-steps",
                                             help="Adam steps (linear / fc).")] = None,
    eval_every: Annotated[Optional[int], opt(ClassifierConfig, "eval_every", "--eval-every",
                                             help="Validation accuracy every N steps.")] = None,
    batch_size: Annotated[Optional[int], opt(ClassifierConfig, "batch_size", "--batch-size",
                                             help="Examples per Adam step.")] = None,
    lr: Annotated[Optional[float], opt(ClassifierConfig, "lr", "--lr", help="Adam learning rate.")] = None,
    weight_decay: Annotated[Optional[float], opt(ClassifierConfig, "weight_decay", "--weight-decay",
                                                 help="Adam weight decay.")] = None,
    val_size: ValSizeOpt = None,
    normalize: NormalizeOpt = None,
    limit: LimitOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
    classifier_: Annotated[Optional[str], old("--classifier", "--head")] = None,
    iterations_: Annotated[Optional[int], old("--iterations", "--adam-steps")] = None,
) -> None:
    """Train the final classifier on the network's output: linear SVM (§5.1), or the linear / FC heads of §6.

    Examples:

      hgm fit-svm --data data.npz --model net.pt --out svm.pt

      hgm fit-svm --data ~/cifar --model net2.pt --head fc --adam-steps 100000 --eval-every 10000 --out fc.pt

      hgm fit-svm --data data.npz --out raw-svm.pt      # a linear SVM on raw pixels, for comparison
    """
    pcfg = _pipeline_config(config, set_)
    dcfg = _data_config(pcfg, data, val_size, normalize, limit)
    options = dict(
        head=_renamed(classifier_, "--classifier", head, "--head"), C=C, svm_backend=svm_backend,
        adam_steps=_renamed(iterations_, "--iterations", adam_steps, "--adam-steps"), eval_every=eval_every,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay,
    )
    cfg = with_options(pcfg.classifier, options, "classifier")
    with progress_bar() as report:
        result = stages.fit_svm(
            dcfg, cfg, out=out, model=model, seed=pcfg.seed if seed is None else seed,
            device=device or pcfg.device, progress=report,
        )
    _finish(result, json_out)


# --------------------------------------------------------------------------- evaluate


@command("evaluate")
def evaluate_cmd(
    classifier: Annotated[Path, opt(None, None, "--classifier", help="Classifier .pt from `hgm fit-svm` or `hgm baseline`.",
                                    default="required")],
    data: DataOpt = None,
    model: Annotated[Optional[Path], opt(None, None, "--model", "-m", help="Network .pt.",
                                         default="the one the classifier carries, else raw pixels")] = None,
    split: Annotated[Optional[str], opt(EvaluateConfig, "split", "--split", help="Which split to score.")] = None,
    out: Annotated[Optional[Path], opt(None, None, "--out", "-o", help="Also write the metrics as JSON here.",
                                       default="none")] = None,
    plot: Annotated[Optional[Path], opt(None, None, "--plot", help="Write the accuracy curve and confusion matrix as PNG.",
                                        default="none")] = None,
    val_size: ValSizeOpt = None,
    normalize: NormalizeOpt = None,
    limit: LimitOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Accuracy, per-class accuracy and confusion matrix; on synthetic data also latent recovery per level.

    Examples:

      hgm evaluate --data data.npz --model net.pt --classifier svm.pt --json

      hgm evaluate --data ~/cifar --model net2.pt --classifier fc.pt --split val --out metrics.json --plot metrics.png
    """
    pcfg = _pipeline_config(config, set_)
    dcfg = _data_config(pcfg, data, val_size, normalize, limit)
    cfg = with_options(pcfg.evaluate, dict(split=split), "evaluate")
    with progress_bar() as report:
        result, metrics = stages.evaluate(
            dcfg, cfg, model=model, classifier=classifier, out=out, plot=plot,
            seed=pcfg.seed if seed is None else seed, device=device or pcfg.device, progress=report,
        )
    if json_out:
        print_json(metrics)
    else:
        print_summary(result)
        _print_per_class(metrics)


def _print_per_class(metrics: dict) -> None:
    names = metrics["label_names"]
    if len(names) > 20:
        return
    table = Table(title="confusion (rows: true, columns: predicted)", title_justify="left")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for name in names:
        table.add_column(name[:6], justify="right")
    for i, name in enumerate(names):
        acc = metrics["per_class_accuracy"][name]
        table.add_row(name, "-" if acc is None else f"{acc:.3f}", *map(str, metrics["confusion"][i]))
    out_console.print(table)


# --------------------------------------------------------------------------- export


@command("export")
def export_cmd(
    classifier: Annotated[Path, opt(None, None, "--classifier", help="Classifier .pt trained on that network.",
                                    default="required")],
    model: Annotated[Optional[Path], opt(None, None, "--model", "-m", help="Network .pt.",
                                         default="the one a baseline carries")] = None,
    out: Annotated[Path, opt(None, None, "--out", "-o", help="Output TorchScript file.", default="model.pt")] = Path(
        "model.pt"),
    json_out: JsonOpt = False,
) -> None:
    """Export network + classifier as one plain TorchScript nn.Sequential (load with torch.jit.load, no hgm needed).

    Examples:

      hgm export --model net.pt --classifier svm.pt --out model.pt

      python -c "import torch; m = torch.jit.load('model.pt'); print(m(torch.zeros(1, 3, 32, 32)).argmax(1))"
    """
    result = stages.export(model=model, classifier=classifier, out=out)
    _finish(result, json_out)


# --------------------------------------------------------------------------- baseline


@command("baseline")
def baseline_cmd(
    arch: Annotated[Optional[str], opt(BaselineConfig, "arch", "--arch", help="Figure 3's comparison network.")] = None,
    head: Annotated[Optional[str], opt(BaselineConfig, "head", "--head", help="fc (384-192 ReLU) or linear.")] = None,
    out: Annotated[Path, opt(None, None, "--out", "-o", help="Output classifier .pt (carries its network).",
                             default="baseline.pt")] = Path("baseline.pt"),
    data: DataOpt = None,
    adam_steps: Annotated[Optional[int], opt(ClassifierConfig, "adam_steps", "--adam-steps",
                                             help="Adam steps (the paper: 100,000).")] = None,
    eval_every: Annotated[Optional[int], opt(ClassifierConfig, "eval_every", "--eval-every",
                                             help="Validation accuracy every N steps.")] = None,
    batch_size: Annotated[Optional[int], opt(ClassifierConfig, "batch_size", "--batch-size",
                                             help="Examples per Adam step.")] = None,
    lr: Annotated[Optional[float], opt(ClassifierConfig, "lr", "--lr", help="Adam learning rate.")] = None,
    val_size: ValSizeOpt = None,
    normalize: NormalizeOpt = None,
    limit: LimitOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
    iterations_: Annotated[Optional[int], old("--iterations", "--adam-steps")] = None,
) -> None:
    """Train one of the paper's comparison networks (Figure 3): the TensorFlow-tutorial CNN, or it with random frozen convs.

    Reads the `baseline` (arch, head) and `classifier` (Adam settings) sections of --config.

    Examples:

      hgm baseline --data ~/cifar --arch cnn --head fc --adam-steps 100000 --eval-every 10000 --out cnn-fc.pt

      hgm baseline --data ~/cifar --arch cnn-random --head linear --out cnn-random-linear.pt

      hgm evaluate --data ~/cifar --classifier cnn-fc.pt --split val
    """
    pcfg = _pipeline_config(config, set_)
    dcfg = _data_config(pcfg, data, val_size, normalize, limit)
    options = dict(adam_steps=_renamed(iterations_, "--iterations", adam_steps, "--adam-steps"), eval_every=eval_every,
                   batch_size=batch_size, lr=lr)
    cfg = with_options(pcfg.classifier, options, "classifier")
    bcfg = with_options(pcfg.baseline, dict(arch=arch, head=head), "baseline")
    with progress_bar() as report:
        result = stages.baseline(dcfg, cfg, bcfg, out=out, seed=pcfg.seed if seed is None else seed,
                                 device=device or pcfg.device, progress=report)
    _finish(result, json_out)


# --------------------------------------------------------------------------- pipeline


@command("pipeline")
def pipeline_cmd(
    config: Annotated[Path, opt(None, None, "--config", "-c", help="Pipeline YAML (see configs/).", default="required")],
    set_: SetOpt = None,
    out: Annotated[Optional[Path], opt(None, None, "--out", "-o", help="Run folder.",
                                       default="runs/<config name>")] = None,
    force: Annotated[bool, opt(None, None, "--force", help="Rerun every stage, even up-to-date ones.", default="no")] = False,
    data: DataOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Algorithm 1 end to end: (generate) -> (cluster -> train-layer) per layer -> fit-svm -> evaluate.

    Finished stages whose config and inputs are unchanged are reused, so a killed run resumes.

    Examples:

      hgm pipeline --config configs/smoke.yaml

      hgm pipeline --config configs/cifar-cpu.yaml --data ~/cifar --out runs/cifar-cpu

      hgm pipeline --config configs/synthetic.yaml --set layers.0.train.out_channels=32 --json
    """
    from .pipeline import run_pipeline

    pcfg = _pipeline_config(config, set_)
    overrides = {k: v for k, v in dict(seed=seed, device=device).items() if v is not None}
    if overrides:
        pcfg = with_options(pcfg, overrides)
    if data is not None:
        pcfg.data = with_options(pcfg.data, dict(root=data), "data")
    run_dir = out or Path("runs") / config.stem
    echo = (lambda line: err_console.print(line, markup=False, highlight=False)) if state.verbosity >= 1 else None
    with progress_bar() as report:
        metrics, records = run_pipeline(pcfg, run_dir, force=force, progress=report, echo=echo)
    if json_out:
        print_json(metrics)
        return
    table = Table(title=f"hgm pipeline {run_dir}", title_justify="left")
    for col in ("stage", "time (s)", "backend", "device", "key figures"):
        table.add_column(col, justify="right" if col == "time (s)" else "left")
    for r in records:
        table.add_row(r.name + (" (cached)" if r.skipped else ""), f"{r.seconds:.1f}", r.backend, r.device, r.figures)
    out_console.print(table)
    line = f"{metrics['split']} accuracy: {metrics['accuracy']:.4f}"
    for e in metrics.get("latent_recovery", []):
        if e.get("ari") is not None:
            line += f"  |  level {e['level']} ARI {e['ari']:.4f}"
    out_console.print(line)


# --------------------------------------------------------------------------- search


@command("search")
def search_cmd(
    config: Annotated[Path, opt(None, None, "--config", "-c", help="Pipeline YAML to search around.", default="required")],
    trials: Annotated[int, opt(None, None, "--trials", "-t", help="Number of random trials.", default="10")] = 10,
    out: Annotated[Optional[Path], opt(None, None, "--out", "-o", help="Folder for the trials.",
                                       default="runs/search-<config name>")] = None,
    space: Annotated[Optional[list[str]], opt(
        None, None, "--space",
        help="key=low:high[:log] for numbers, key=a,b,c (or key=*: every choice) for choices; repeatable; "
             "'*.train.bias' means every layer.", default="around the config")] = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    seed: SeedOpt = None,
    force: Annotated[bool, opt(None, None, "--force", help="Rerun trials whose folders are up to date.", default="no")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Random parameter search (appendix C) on the validation split: one pipeline run per trial, best config as YAML.

    Examples:

      hgm search --config configs/smoke.yaml --trials 2 --out runs/search-smoke

      hgm search --config configs/cifar-cpu.yaml --data ~/cifar --trials 20 --space layers.0.cluster.k=128:1024:log

      hgm search --config configs/cifar-cpu.yaml --data ~/cifar --trials 6 --space "layers.0.train.activation=*"
    """
    from .search import parse_space, run_search

    pcfg = _pipeline_config(config, set_)
    if data is not None:
        pcfg.data = with_options(pcfg.data, dict(root=data), "data")
    folder = out or Path("runs") / f"search-{config.stem}"
    echo = (lambda line: err_console.print(line, markup=False, highlight=False)) if state.verbosity >= 1 else None
    with progress_bar() as report:
        ranked = run_search(
            pcfg, folder, trials, space=parse_space(space, pcfg) if space else None,
            seed=pcfg.seed if seed is None else seed, force=force, progress=report, echo=echo,
        )
    if json_out:
        print_json([{"trial": r.index, "val_accuracy": r.accuracy, "seconds": r.seconds, "values": r.values,
                     "run": r.run, "error": r.error} for r in ranked])
        return
    keys = list(ranked[0].values) if ranked else []
    table = Table(title=f"hgm search {folder} (sorted by validation accuracy)", title_justify="left")
    for col in ["trial", "val acc", "time (s)", *keys]:
        table.add_column(col.replace("layers.", "L").replace(".cluster", "").replace(".train", ""), justify="right")
    for r in ranked:
        acc = "failed" if r.accuracy is None else f"{r.accuracy:.4f}"
        table.add_row(str(r.index), acc, f"{r.seconds:.1f}", *[str(r.values.get(k)) for k in keys])
    out_console.print(table)
    if (folder / "best.yaml").exists():
        out_console.print(f"best config: {folder / 'best.yaml'}")


def main() -> None:
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 terminal prints "?" for "§", never crashes after the work
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    app()
