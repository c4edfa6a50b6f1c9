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
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional, Union, get_args, get_origin

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


@app.callback()
def _global(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[Optional[bool], typer.Option("--verbose/--quiet", "-v/-q",
                                                    help="More detail on stderr (log lines) / no progress bars.")] = None,
) -> None:
    state.verbosity = 1 if verbose is None else (2 if verbose else 0)  # every invocation starts afresh


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
# then its own explicit options on top. The options that set a config field
# are generated from the config dataclass (name, type, choices, default) and
# the one-line help below, so a field is spelled the same in every command;
# an option left out keeps the config's value.

GENERATE_HELP = {
    "family": "hierarchical (§3.1) or digits (§3.2).",
    "depth": "d: number of refinement levels.",
    "patch_size": "s: patch size.",
    "m0": "Top semantic image size m0.",
    "classes": "|C_0|..|C_{d-1}|, comma separated, or one value for all levels.",
    "patches_per_class": "k of §3.1: patches per semantic class.",
    "labels": "Number of label classes.",
    "margin": "D_y's score margin, in std of the label-score difference.",
    "orthonormal": "Orthonormal final-level patches (§4).",
    "noise": "Std of Gaussian pixel noise.",
    "n_train": "Training examples.",
    "n_test": "Test examples.",
}
DATA_HELP = {
    "root": "A .npz from `hgm generate`, a CIFAR-10 folder or an image folder.",
    "val_size": "Validation slice: a count, or a fraction < 1; 0 for none; auto: the last 10,000 CIFAR-10 "
                "training images, else 10%.",
    "normalize": "Input normalisation; auto: none on a synthetic .npz, standardize on images.",
    "limit": "Use only the first N training images; none: all.",
}
CLUSTER_HELP = {
    "k": "Clusters; auto: Theorem 2's value on synthetic data, 256 on images.",
    "patches": "N: patches to sample.",
    "patch_size": "s; auto: the model's s on synthetic data, 3 on images.",
    "stride": "Sampling stride; auto: s on synthetic data, 1 on images.",
    "center": "Mean-centre patches first (the conv centres too).",
    "whiten": "ZCA-whiten the patches before k-means (and in the block, as a conv of its own).",
    "whiten_eps": "ZCA regulariser added to the eigenvalues, in units of their mean.",
    "backend": "k-means implementation; auto: faiss when installed, else torch.",
    "init": "Seeding.",
    "lloyd_iterations": "Lloyd iterations after seeding.",
    "max_points_per_centroid": "Subsample to k*this points before k-means; none: use all.",
}
TRAIN_HELP = {
    "mode": "How the 1x1 conv is made.",
    "out_channels": "n: output channels of the 1x1 conv.",
    "bias": "b in ReLU(conv + b).",
    "knn_q": "knn encoder: how many nearest centroids are 1 (a count, or a fraction of k below 1).",
    "activation": "The encoder after the cluster conv; auto: onehot on synthetic data, relu on images.",
    "normalize_patches": "The conv computes cosine similarity (--raw-patches: the plain dot product).",
    "normalize_eps": "Divide by sqrt(|patch|^2 + this): weak patches stay short (0: exact cosines).",
    "pool": "Pooling after the encoder; auto: none on synthetic data, max on images.",
    "pool_size": "Pooling window (max, avg) or grid cells per side (grid: 2 = the quadrants).",
    "pool_stride": "Step between pooling windows (max, avg); auto: the window.",
    "stride": "Cluster-conv stride; auto: s on synthetic data, 1 on images.",
    "padding": "Cluster-conv zero padding; auto: 0 on synthetic data, s//2 on images.",
    "epochs": "Adam epochs (adam-ce, jl).",
    "adam_steps": "Adam steps instead of epochs; none: count epochs.",
    "batch_size": "Examples per Adam step.",
    "lr": "Adam learning rate.",
    "weight_decay": "Adam weight decay.",
    "eta": "gd-linear: GD learning rate.",
    "gd_steps": "gd-linear: T GD iterations.",
    "sigma": "gd-linear: init radius parameter.",
    "memory_budget": "Feature cache budget, e.g. 4G; auto: 40% of the free RAM.",
    "cache_dtype": "Storage of the cached features.",
    "flip": "Also train on the mirror images (2x the data).",
}
ADAM_HELP = {  # the classifier section's Adam settings: fit-svm's linear / fc heads and the baselines
    "adam_steps": "Adam steps (the paper: 100,000).",
    "eval_every": "Validation accuracy every N steps.",
    "batch_size": "Examples per Adam step.",
    "lr": "Adam learning rate.",
}
CLASSIFIER_HELP = {
    "head": "The final classifier.",
    "C": "SVM regularisation.",
    "svm_backend": "SVM solver; auto: liblinear when the features fit on the CPU.",
    **ADAM_HELP,
    "weight_decay": "Adam weight decay.",
    "flip": "Also train on the mirror images (2x the data).",
    "standardize": "Standardise each feature on the training split first (folded into the head).",
    "bottleneck": "bottleneck head: channels of its 1x1 conv.",
    "dropout": "bottleneck head: dropout before each linear layer.",
    "lr_schedule": "Adam learning rate over the steps (cosine: decays to 0).",
}
BASELINE_HELP = {"arch": "Figure 3's comparison network.", "head": "fc (384-192 ReLU) or linear."}
EVALUATE_HELP = {"split": "Which split to score."}  # evaluate.target is the pipeline's (config only)
SECTION_CLASSES = {"generate": GenerateConfig, "data": DataConfig, "cluster": ClusterConfig, "train": TrainConfig,
                   "classifier": ClassifierConfig, "baseline": BaselineConfig, "evaluate": EvaluateConfig}
FLAGS = {  # where a field's option is not simply --field-name
    ("data", "root"): ("--data", "-d"),
    ("train", "normalize_patches"): ("--normalize-patches/--raw-patches",),
}


def _default_text(section: type, name: str) -> str:
    if (section, name) == (DataConfig, "root"):
        return "$HGM_DATA"
    f = next(f for f in dataclasses.fields(section) if f.name == name)
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def opt(*flags: str, help: str, default: str | None = None, choices: tuple | None = None, **kw: Any) -> Any:
    """A ``typer.Option`` whose help ends with its choices and its default."""
    text = help + (f" One of: {', '.join(choices)}." if choices else "")
    if default is not None:
        text += " " + escape(f"[default: {default}]")
    return typer.Option(*flags, help=text, show_default=False, **kw)


def _cli_type(tp: Any) -> type:
    """What the command line parses for a field type: bool, int, float or str
    (lists, e.g. generate's classes, as comma-separated text)."""
    if get_origin(tp) is Annotated:
        return _cli_type(get_args(tp)[0])
    if get_origin(tp) in (Union, types.UnionType):
        kinds = [_cli_type(a) for a in get_args(tp) if a is not type(None)]
        return next((k for k in (bool, int, float) if k in kinds), str)
    return tp if tp in (bool, int, float) else str


def field_option(section: str, name: str, help: str, *, hidden_as: str | None = None) -> inspect.Parameter:
    """The command-line option for config field ``section.name``: its flag, type,
    choices (from the registry that implements them) and default (from the dataclass)."""
    cls = SECTION_CLASSES[section]
    tp = field_types(cls)[name]
    kind = _cli_type(tp)
    choices = choices_of(tp) if kind is str else None
    if hidden_as is not None:
        info = typer.Option(hidden_as, hidden=True, help=f"Deprecated: use --{name.replace('_', '-')}.")
        param = f"old__{section}__{hidden_as.lstrip('-').replace('-', '_')}"
    else:
        flag = f"--{name.replace('_', '-')}"
        flags = FLAGS.get((section, name), (f"{flag}/--no-{flag[2:]}",) if kind is bool else (flag,))
        info = opt(*flags, help=help, default=_default_text(cls, name), choices=choices)
        param = f"{section}__{name}"
    return inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[kind], info])


def _field_value(section: str, name: str, value: Any) -> Any:
    """A command-line value as the config reads it (comma lists become lists)."""
    tp = field_types(SECTION_CLASSES[section])[name]
    if value is not None and (get_origin(tp) is list or list in map(get_origin, get_args(tp))):
        try:
            return [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            raise HgmError(f"--{name.replace('_', '-')} expects integers separated by commas, got {value!r}") from None
    return value


COMMON = {
    "config": (Optional[Path], opt("--config", "-c", help="Pipeline-style YAML, a path or a bundled config's name "
                                   "(hgm pipeline --list-configs): this command reads its sections.",
                                   default="none: the built-in defaults")),
    "set": (Optional[list[str]], opt("--set", help="Override a config key: --set data.val_size=0 (repeatable).",
                                     default="none")),
    "seed": (Optional[int], opt("--seed", help="Random seed.", default="the config's seed, 0")),
    "device": (Optional[str], opt("--device", help="Where to compute.", default="the config's device, auto",
                                  choices=choices_of(field_types(PipelineConfig)["device"]))),
    "json": (bool, opt("--json", help="Print results as JSON on stdout.", default="no")),
    "verbose": (Optional[bool], opt("--verbose/--quiet", "-v/-q", help="More detail on stderr / no progress bars.",
                                    default="progress bars on a terminal")),
}


@dataclass
class Given:
    """What the shared options said: --config, --set, --seed, --device, --json,
    and the config fields given on the command line, per section."""

    config: Path | None = None
    set: list[str] = dataclasses.field(default_factory=list)
    seed: int | None = None
    device: str | None = None
    json: bool = False
    sections: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def pipeline(self) -> PipelineConfig:
        """defaults <- --config <- --set <- --seed/--device; then --data and the data options."""
        from .presets import resolve_config

        pcfg = load_config(PipelineConfig, resolve_config(self.config) if self.config else None, self.set)
        pcfg = with_options(pcfg, {"seed": self.seed, "device": self.device})
        if "data" in self.sections:
            pcfg.data = with_options(pcfg.data, self.sections["data"], "data")
        return pcfg

    def section(self, name: str, cfg: Any) -> Any:
        """``cfg`` with this section's command-line values applied (validated)."""
        return with_options(cfg, self.sections.get(name, {}), name)


def command(name: str, *, sections: dict[str, dict[str, str]] | None = None,
            common: tuple[str, ...] = ("config", "set", "seed", "device", "json"),
            renamed: dict[str, tuple[str, str]] | None = None) -> Callable:
    """Register ``fn(given, **its own options)`` as command ``name``.

    ``sections``: {config section: {field: help}} whose fields become options;
    ``common``: which shared options it takes (-v/-q always, so they also work
    after the command's name); ``renamed``: old flags still read, with a
    deprecation warning ({"--iterations": ("cluster", "lloyd_iterations")}).
    An ``HgmError`` becomes ``Error: ...`` and exit 1."""
    sections, renamed = sections or {}, renamed or {}

    def decorate(fn: Callable) -> Callable:
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]  # after `given`
        generated = [field_option(sec, f, h) for sec, fields in sections.items() for f, h in fields.items()]
        old = [field_option(sec, f, "", hidden_as=flag) for flag, (sec, f) in renamed.items()]
        shared = [inspect.Parameter(c, inspect.Parameter.KEYWORD_ONLY, default=False if c == "json" else None,
                                    annotation=Annotated[COMMON[c]]) for c in (*common, "verbose")]

        @functools.wraps(fn)
        def wrapper(**kw: Any) -> Any:
            verbose = kw.pop("verbose")
            if verbose is not None:
                state.verbosity = 2 if verbose else 0
            with warnings.catch_warnings():
                warnings.simplefilter("default", HgmDeprecationWarning)
                warnings.showwarning = _show_warning
                try:
                    given = Given(**{c: kw.pop(c) for c in common if c != "set"}, set=kw.pop("set", None) or [])
                    for p in generated:
                        sec, field = p.name.split("__")
                        given.sections.setdefault(sec, {})[field] = _field_value(sec, field, kw.pop(p.name))
                    for p, (flag, (sec, field)) in zip(old, renamed.items()):
                        value = kw.pop(p.name)
                        if value is not None:
                            _respelled(given.sections[sec], field, flag, value)
                    return fn(given, **kw)
                except HgmError as e:
                    err_console.print(f"Error: {e}", markup=False, highlight=False, soft_wrap=True)
                    raise typer.Exit(1) from None
                except KeyboardInterrupt:
                    err_console.print("Interrupted.", markup=False)
                    raise typer.Exit(130) from None

        wrapper.__signature__ = inspect.Signature([*own, *generated, *shared, *old])
        wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
        return app.command(name)(wrapper)

    return decorate


def _respelled(values: dict, field: str, old_flag: str, value: Any) -> None:
    """An old flag's value under its new name, with a deprecation warning."""
    new_flag = f"--{field.replace('_', '-')}"
    if values.get(field) is not None:
        raise ConfigError(f"{old_flag} and {new_flag} are the same option: keep {new_flag}")
    warnings.warn(f"{old_flag} is deprecated; use {new_flag}", HgmDeprecationWarning, stacklevel=2)
    values[field] = value


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (deprecated spellings) as one ``Warning: ...`` line on stderr, no source line."""
    err_console.print(f"Warning: {message}", markup=False, highlight=False, soft_wrap=True)


LayerOpt = Annotated[int, opt("--layer", help="Which `layers` entry of --config to read.", default="0")]


def _layer(pcfg: PipelineConfig, layer: int):
    if not 0 <= layer < len(pcfg.layers):
        raise HgmError(f"--layer {layer}: the config has {len(pcfg.layers)} layers")
    return pcfg.layers[layer]


def _run(given: Given, stage: Callable[[Callable], stages.StageResult]) -> None:
    """Run ``stage(progress)`` under a progress bar, then print its result."""
    with progress_bar() as report:
        result = stage(report)
    _finish(result, given.json)


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


@command("generate", sections={"generate": GENERATE_HELP}, common=("config", "set", "seed", "json"),
         renamed={"--model": ("generate", "family"), "--k": ("generate", "patches_per_class")})
def generate_cmd(
    given: Given,
    out: Annotated[Path, opt("--out", "-o", help="Output .npz.", default="data.npz")] = Path("data.npz"),
    preview: Annotated[Optional[Path], opt("--preview", help="Also write a PNG of samples at every level.",
                                           default="none")] = None,
) -> None:
    """Sample images from the hierarchical generative model (§3.1) or the synthetic digits (§3.2).

    Examples:

      hgm generate --out data.npz --preview data.png

      hgm generate --family digits --n-train 2000 --out digits.npz

      hgm generate --depth 2 --patch-size 4 --classes 2 --patches-per-class 4 --orthonormal --out ortho.npz
    """
    pcfg = given.pipeline()
    cfg = given.section("generate", pcfg.generate or GenerateConfig())
    _run(given, lambda report: stages.generate(cfg, out=out, seed=pcfg.seed, preview=preview, progress=report))


# --------------------------------------------------------------------------- cluster


@command("cluster", sections={"data": DATA_HELP, "cluster": CLUSTER_HELP},
         renamed={"-n": ("cluster", "patches"), "--iterations": ("cluster", "lloyd_iterations")})
def cluster_cmd(
    given: Given,
    out: Annotated[Path, opt("--out", "-o", help="Output centroids .npz.", default="centroids.npz")] = Path("centroids.npz"),
    model: Annotated[Optional[Path], opt("--model", "-m", help="Network .pt whose output is clustered.",
                                         default="the raw images")] = None,
    layer: LayerOpt = 0,
) -> None:
    """Sample patches (of the network's output, or the raw images) and run cosine k-means with k-means++ seeding.

    Examples:

      hgm cluster --data data.npz --out c1.npz

      hgm cluster --data data.npz --model net1.pt --out c2.npz

      hgm cluster --data ~/cifar --k 1377 --patches 47509 --out c1.npz
    """
    pcfg = given.pipeline()
    cfg = given.section("cluster", _layer(pcfg, layer).cluster)
    _run(given, lambda report: stages.cluster(pcfg.data, cfg, out=out, model=model, seed=pcfg.seed,
                                              device=pcfg.device, progress=report))


# --------------------------------------------------------------------------- train-layer


@command("train-layer", sections={"data": DATA_HELP, "train": TRAIN_HELP},
         renamed={"--n": ("train", "out_channels"), "--iterations": ("train", "gd_steps"),
                  "--steps": ("train", "adam_steps")})
def train_layer_cmd(
    given: Given,
    centroids: Annotated[Path, opt("--centroids", help="Centroids .npz from `hgm cluster`.", default="required")],
    out: Annotated[Path, opt("--out", "-o", help="Output network .pt.", default="network.pt")] = Path("network.pt"),
    model: Annotated[Optional[Path], opt("--model", "-m", help="Network .pt to extend.", default="start a new one")] = None,
    layer: LayerOpt = 0,
) -> None:
    """Build Conv(centroids)-encoder-Pool, train its 1x1 conv, drop the head, append the block to the network.

    Examples:

      hgm train-layer --data data.npz --centroids c1.npz --mode gd-linear --out net1.pt

      hgm train-layer --data ~/cifar --centroids c1.npz --out-channels 64 --bias -0.1 --epochs 5 --out net1.pt

      hgm train-layer --data ~/cifar --centroids c2.npz --model net1.pt --out-channels 96 --out net2.pt
    """
    pcfg = given.pipeline()
    cfg = given.section("train", _layer(pcfg, layer).train)
    _run(given, lambda report: stages.train_layer(pcfg.data, cfg, centroids=centroids, out=out, model=model,
                                                  seed=pcfg.seed, device=pcfg.device, progress=report))


# --------------------------------------------------------------------------- fit-svm


@command("fit-svm", sections={"data": DATA_HELP, "classifier": CLASSIFIER_HELP},
         renamed={"--classifier": ("classifier", "head"), "--iterations": ("classifier", "adam_steps")})
def fit_svm_cmd(
    given: Given,
    out: Annotated[Path, opt("--out", "-o", help="Output classifier .pt.", default="classifier.pt")] = Path("classifier.pt"),
    model: Annotated[Optional[Path], opt("--model", "-m", help="Network .pt.", default="raw pixels")] = None,
) -> None:
    """Train the final classifier on the network's output: linear SVM (§5.1), or the linear / FC heads of §6.

    Examples:

      hgm fit-svm --data data.npz --model net.pt --out svm.pt

      hgm fit-svm --data ~/cifar --model net2.pt --head fc --adam-steps 100000 --eval-every 10000 --out fc.pt

      hgm fit-svm --data data.npz --out raw-svm.pt      # a linear SVM on raw pixels, for comparison
    """
    pcfg = given.pipeline()
    cfg = given.section("classifier", pcfg.classifier)
    _run(given, lambda report: stages.fit_svm(pcfg.data, cfg, out=out, model=model, seed=pcfg.seed,
                                              device=pcfg.device, progress=report))


# --------------------------------------------------------------------------- evaluate


@command("evaluate", sections={"data": DATA_HELP, "evaluate": EVALUATE_HELP})
def evaluate_cmd(
    given: Given,
    classifier: Annotated[Path, opt("--classifier", help="Classifier .pt from `hgm fit-svm` or `hgm baseline`.",
                                    default="required")],
    model: Annotated[Optional[Path], opt("--model", "-m", help="Network .pt.",
                                         default="the one the classifier carries, else raw pixels")] = None,
    out: Annotated[Optional[Path], opt("--out", "-o", help="Also write the metrics as JSON here.", default="none")] = None,
    plot: Annotated[Optional[Path], opt("--plot", help="Write the accuracy curve and confusion matrix as PNG.",
                                        default="none")] = None,
) -> None:
    """Accuracy, per-class accuracy and confusion matrix; on synthetic data also latent recovery per level.

    Examples:

      hgm evaluate --data data.npz --model net.pt --classifier svm.pt --json

      hgm evaluate --data ~/cifar --model net2.pt --classifier fc.pt --split val --out metrics.json --plot metrics.png
    """
    pcfg = given.pipeline()
    cfg = given.section("evaluate", pcfg.evaluate)
    with progress_bar() as report:
        result, metrics = stages.evaluate(pcfg.data, cfg, model=model, classifier=classifier, out=out, plot=plot,
                                          seed=pcfg.seed, device=pcfg.device, progress=report)
    if given.json:
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


@command("export", common=("json",))
def export_cmd(
    given: Given,
    classifier: Annotated[Path, opt("--classifier", help="Classifier .pt trained on that network.", default="required")],
    model: Annotated[Optional[Path], opt("--model", "-m", help="Network .pt.", default="the one a baseline carries")] = None,
    out: Annotated[Path, opt("--out", "-o", help="Output file (its metadata goes to <out>.json beside it).",
                             default="model.pt")] = Path("model.pt"),
    format: Annotated[str, opt("--format", "-f", help="torchscript: torch.jit.load; exported: torch.export.load; "
                               "onnx: onnxruntime (pip install 'hgmcli[onnx]').", default="torchscript",
                               choices=("torchscript", "exported", "onnx"))] = "torchscript",
) -> None:
    """Export network + classifier as one plain nn.Sequential, preprocessing inside, runnable without hgm.

    Examples:

      hgm export --model net.pt --classifier svm.pt --out model.pt

      hgm export --model net.pt --classifier svm.pt --format exported --out model.pt2

      hgm export --model net.pt --classifier svm.pt --format onnx --out model.onnx

      python -c "import torch; m = torch.jit.load('model.pt'); print(m(torch.zeros(1, 3, 32, 32)).argmax(1))"
    """
    _finish(stages.export(model=model, classifier=classifier, out=out, format=format), given.json)


# --------------------------------------------------------------------------- baseline


@command("baseline", sections={"data": DATA_HELP, "baseline": BASELINE_HELP, "classifier": ADAM_HELP},
         renamed={"--iterations": ("classifier", "adam_steps")})
def baseline_cmd(
    given: Given,
    out: Annotated[Path, opt("--out", "-o", help="Output classifier .pt (carries its network).",
                             default="baseline.pt")] = Path("baseline.pt"),
) -> None:
    """Train one of the paper's comparison networks (Figure 3): the TensorFlow-tutorial CNN, or it with random frozen convs.

    Reads the `baseline` (arch, head) and `classifier` (Adam settings) sections of --config.

    Examples:

      hgm baseline --data ~/cifar --arch cnn --head fc --adam-steps 100000 --eval-every 10000 --out cnn-fc.pt

      hgm baseline --data ~/cifar --arch cnn-random --head linear --out cnn-random-linear.pt

      hgm evaluate --data ~/cifar --classifier cnn-fc.pt --split val
    """
    pcfg = given.pipeline()
    cfg, bcfg = given.section("classifier", pcfg.classifier), given.section("baseline", pcfg.baseline)
    _run(given, lambda report: stages.baseline(pcfg.data, cfg, bcfg, out=out, seed=pcfg.seed, device=pcfg.device,
                                               progress=report))


# --------------------------------------------------------------------------- pipeline


def _echo() -> Callable[[str], None] | None:
    return (lambda line: err_console.print(line, markup=False, highlight=False)) if state.verbosity >= 1 else None


def _list_configs(value: bool) -> None:
    if value:
        from .presets import list_configs

        table = Table(title="bundled configs: hgm pipeline --config NAME", title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("purpose")
        for name, purpose in list_configs():
            table.add_row(name, purpose)
        out_console.print(table)
        raise typer.Exit()


@command("pipeline", sections={"data": {"root": DATA_HELP["root"]}}, common=("set", "seed", "device", "json"))
def pipeline_cmd(
    given: Given,
    config: Annotated[Path, opt("--config", "-c", help="Pipeline YAML: a path, or a bundled config's name "
                                "(see --list-configs).", default="required")],
    out: Annotated[Optional[Path], opt("--out", "-o", help="Run folder.", default="runs/<config name>")] = None,
    force: Annotated[bool, opt("--force", help="Rerun every stage, even up-to-date ones.", default="no")] = False,
    list_configs: Annotated[bool, opt("--list-configs", callback=_list_configs, is_eager=True,
                                      help="List the bundled configs with their purpose, and exit.", default="no")] = False,
) -> None:
    """Algorithm 1 end to end: (generate) -> (cluster -> train-layer) per layer -> fit-svm -> evaluate.

    Finished stages whose config and inputs are unchanged are reused, so a killed run resumes.
    --config takes a path or the name of a bundled config (hgm pipeline --list-configs).

    Examples:

      hgm pipeline --config smoke

      hgm pipeline --config configs/cifar-cpu.yaml --data ~/cifar --out runs/cifar-cpu

      hgm pipeline --config configs/synthetic.yaml --set layers.0.train.out_channels=32 --json
    """
    from .pipeline import run_pipeline

    given.config = config
    run_dir = out or Path("runs") / config.stem
    with progress_bar() as report:
        metrics, records = run_pipeline(given.pipeline(), run_dir, force=force, progress=report, echo=_echo())
    if given.json:
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


@command("search", sections={"data": {"root": DATA_HELP["root"]}}, common=("set", "seed", "json"))
def search_cmd(
    given: Given,
    config: Annotated[Path, opt("--config", "-c", help="Pipeline YAML to search around.", default="required")],
    trials: Annotated[int, opt("--trials", "-t", help="Number of random trials.", default="10")] = 10,
    out: Annotated[Optional[Path], opt("--out", "-o", help="Folder for the trials.",
                                       default="runs/search-<config name>")] = None,
    space: Annotated[Optional[list[str]], opt(
        "--space", help="key=low:high[:log] for numbers, key=a,b,c (or key=*: every choice) for choices; repeatable; "
                        "'*.train.bias' means every layer.", default="around the config")] = None,
    force: Annotated[bool, opt("--force", help="Rerun trials whose folders are up to date.", default="no")] = False,
) -> None:
    """Random parameter search (appendix C) on the validation split: one pipeline run per trial, best config as YAML.

    Examples:

      hgm search --config configs/smoke.yaml --trials 2 --out runs/search-smoke

      hgm search --config configs/cifar-cpu.yaml --data ~/cifar --trials 20 --space layers.0.cluster.k=128:1024:log

      hgm search --config configs/cifar-cpu.yaml --data ~/cifar --trials 6 --space "layers.0.train.activation=*"
    """
    from .search import parse_space, run_search

    given.config = config
    pcfg = given.pipeline()
    folder = out or Path("runs") / f"search-{config.stem}"
    with progress_bar() as report:
        ranked = run_search(pcfg, folder, trials, space=parse_space(space, pcfg) if space else None, seed=pcfg.seed,
                            force=force, progress=report, echo=_echo())
    if given.json:
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


# --------------------------------------------------------------------------- doctor


@command("doctor", common=("json",))
def doctor_cmd(
    given: Given,
    require: Annotated[Optional[list[str]], opt(
        "--require", "-r", help="Exit 1 unless these are present (comma separated, repeatable): "
        "cuda, data, faiss, faiss-gpu, onnx, onnxruntime, tensorboard.", default="none")] = None,
) -> None:
    """What this environment has and what `auto` picks on it: python, torch, CUDA, FAISS, numpy and
    scikit-learn versions, FAISS GPU support, devices, threads, the device / k-means / SVM backends,
    and $HGM_DATA. Paste it into bug reports.

    With --require, exits 1 naming each missing piece and how to get it.

    Examples:

      hgm doctor

      hgm doctor --require faiss-gpu,cuda

      hgm doctor --json > env.json
    """
    from . import doctor

    pieces = doctor.parse_pieces(require or [])  # an unknown piece fails before the slow report
    rep = doctor.report()
    problems = doctor.missing(rep, pieces)
    if given.json:
        print_json({**rep, "required": pieces, "missing": problems})
    else:
        section = None
        for sec, key, value in doctor.rows(rep):
            if sec != section:
                out_console.print(sec, style="bold", markup=False, highlight=False)
                section = sec
            line = f"  {key:<18} {value}" if key else f"  {value}"
            out_console.print(line, markup=False, highlight=False, soft_wrap=True)
        if pieces and not problems:
            out_console.print(f"required: {', '.join(pieces)}: all present", markup=False, highlight=False)
    if problems:
        raise HgmError("missing " + "; ".join(problems))


def main() -> None:
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 terminal gets "\xa7" for "§": never a crash after the work
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    app()
