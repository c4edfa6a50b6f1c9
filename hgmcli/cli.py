"""The ``hgm`` command line: parse options, call one function of ``stages``,
print. Nothing else lives here.

Conventions (SPEC.md): results go to stdout (a table, or JSON with --json),
progress and errors to stderr; a domain error (``HgmError``) becomes one line
``Error: <message>`` and exit code 1; usage errors are Typer's own (exit 2)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__, stages
from .artifacts import to_jsonable
from .config import GenerateConfig, PipelineConfig, load_config, with_options
from .errors import HgmError

app = typer.Typer(
    name="hgm",
    help="Layerwise clustering + 1x1-conv training of CNNs on hierarchical generative models "
    "(Malach & Shalev-Shwartz). Each stage reads and writes files; `hgm pipeline` runs them all.",
    no_args_is_help=True,
    add_completion=False,
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
    verbose: Annotated[
        Optional[bool],
        typer.Option("--verbose/--quiet", "-v/-q", help="More detail on stderr / no progress bars."),
    ] = None,
) -> None:
    state.verbosity = 1 if verbose is None else (2 if verbose else 0)


def command(name: str, **kwargs: Any) -> Callable:
    """Register a command whose ``HgmError``s become ``Error: ...`` + exit 1."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except HgmError as e:
                err_console.print(f"Error: {e}", markup=False, highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                err_console.print("Interrupted.", markup=False)
                raise typer.Exit(130) from None

        return app.command(name, **kwargs)(wrapper)

    return decorate


def _secondary_rank() -> bool:
    """A torchrun rank other than 0: it computes but neither draws nor prints."""
    import os

    return int(os.environ.get("RANK", "0")) != 0


@contextmanager
def progress_bar() -> Iterator[stages.Progress]:
    """A rich progress bar on stderr, one row per task name; quiet: none."""
    if state.verbosity == 0 or _secondary_rank() or not err_console.is_terminal and state.verbosity < 2:
        # Not a terminal (CI logs, pipes): no bar, but verbose still logs lines.
        yield _log_progress if state.verbosity >= 2 else stages.no_progress
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


def _log_progress(task: str, done: int, total: int | None, **fields: Any) -> None:
    info = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
    err_console.print(f"[{task}] {done}/{total if total is not None else '?'} {info}", markup=False, highlight=False)


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


# --------------------------------------------------------------------------- shared options
#
# Every command reads the same YAML format as `hgm pipeline` (--config), with
# --set overrides in pipeline keys (data.val_size=0, layers.0.cluster.k=512),
# then its own explicit options on top.

ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="Pipeline-style YAML; this command reads its sections.")
]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a config key: --set data.val_size=0 (repeatable).")
]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed [default: config's seed, 0].")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda [default: auto].")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.")]
DataOpt = Annotated[
    Optional[str],
    typer.Option("--data", "-d", help="A .npz from `hgm generate`, a CIFAR-10 folder or an image folder [default: $HGM_DATA]."),
]
ValSizeOpt = Annotated[
    Optional[float], typer.Option("--val-size", help="Validation slice: a count, or a fraction < 1 [default: auto].")
]
NormalizeOpt = Annotated[Optional[str], typer.Option("--normalize", help="none, scale or standardize.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Use only the first N training images.")]
LayerOpt = Annotated[int, typer.Option("--layer", help="Which `layers` entry of --config to read.")]


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
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npz.")] = Path("data.npz"),
    model: Annotated[Optional[str], typer.Option(help="hierarchical (§3.1) or digits (§3.2).")] = None,
    depth: Annotated[Optional[int], typer.Option(help="d: number of refinement levels.")] = None,
    patch_size: Annotated[Optional[int], typer.Option("--patch-size", help="s: patch size.")] = None,
    m0: Annotated[Optional[int], typer.Option("--m0", help="Top semantic image size m0.")] = None,
    classes: Annotated[
        Optional[str], typer.Option(help="|C_0|..|C_{d-1}|, comma separated, or one value for all levels.")
    ] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Patches per semantic class.")] = None,
    labels: Annotated[Optional[int], typer.Option(help="Number of label classes.")] = None,
    margin: Annotated[Optional[float], typer.Option(help="D_y's score margin, in std of the label-score difference.")] = None,
    orthonormal: Annotated[
        Optional[bool], typer.Option("--orthonormal/--no-orthonormal", help="Orthonormal final-level patches (§4).")
    ] = None,
    noise: Annotated[Optional[float], typer.Option(help="Std of Gaussian pixel noise.")] = None,
    n_train: Annotated[Optional[int], typer.Option("--n-train", help="Training examples.")] = None,
    n_test: Annotated[Optional[int], typer.Option("--n-test", help="Test examples.")] = None,
    preview: Annotated[Optional[Path], typer.Option(help="Also write a PNG of samples at every level.")] = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sample images from the hierarchical generative model (§3.1) or the synthetic digits (§3.2).

    Examples:

      hgm generate --out data.npz --preview data.png

      hgm generate --model digits --n-train 2000 --out digits.npz

      hgm generate --depth 2 --patch-size 4 --classes 2 --k 4 --orthonormal --out ortho.npz
    """
    class_list = None
    if classes is not None:
        try:
            class_list = [int(c) for c in classes.split(",") if c.strip()]
        except ValueError:
            raise HgmError(f"--classes expects integers separated by commas, got {classes!r}") from None
    pcfg = _pipeline_config(config, set_)
    options = dict(
        model=model, depth=depth, patch_size=patch_size, m0=m0, classes=class_list, k=k, labels=labels,
        margin=margin, orthonormal=orthonormal, noise=noise, n_train=n_train, n_test=n_test,
    )
    cfg = with_options(pcfg.generate or GenerateConfig(), options, "generate")
    with progress_bar() as report:
        result = stages.generate(cfg, out=out, seed=pcfg.seed if seed is None else seed, preview=preview, progress=report)
    _finish(result, json_out)


# --------------------------------------------------------------------------- cluster


@command("cluster")
def cluster_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output centroids .npz.")] = Path("centroids.npz"),
    data: DataOpt = None,
    model: Annotated[
        Optional[Path], typer.Option("--model", "-m", help="Network .pt whose output is clustered [default: raw images].")
    ] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Clusters [default: Theorem 2's on synthetic data, 256 on images].")] = None,
    patches: Annotated[Optional[int], typer.Option("--patches", "-n", help="N: patches to sample.")] = None,
    patch_size: Annotated[Optional[int], typer.Option("--patch-size", help="s [default: the model's s, or 3].")] = None,
    stride: Annotated[Optional[int], typer.Option(help="Sampling stride [default: s on synthetic data, 1 on images].")] = None,
    center: Annotated[Optional[bool], typer.Option("--center/--no-center", help="Mean-centre patches first.")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto, faiss or torch.")] = None,
    init: Annotated[Optional[str], typer.Option(help="kmeans++ or random.")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Lloyd iterations.")] = None,
    max_points_per_centroid: Annotated[
        Optional[int], typer.Option("--max-points-per-centroid", help="Subsample to k*this points (off by default).")
    ] = None,
    val_size: ValSizeOpt = None,
    normalize: NormalizeOpt = None,
    limit: LimitOpt = None,
    layer: LayerOpt = 0,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
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
        k=k, patches=patches, patch_size=patch_size, stride=stride, center=center, backend=backend, init=init,
        iterations=iterations, max_points_per_centroid=max_points_per_centroid,
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
    centroids: Annotated[Path, typer.Option("--centroids", help="Centroids .npz from `hgm cluster`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output network .pt.")] = Path("network.pt"),
    data: DataOpt = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Network .pt to extend [default: start one].")] = None,
    mode: Annotated[Optional[str], typer.Option(help="adam-ce (§6), gd-linear (§4.1), jl (random projection) or none.")] = None,
    n: Annotated[
        Optional[int],
        typer.Option("--n", "--out-channels", help="Output channels of the 1x1 conv (--out-channels under torchrun, whose parser takes --n for its own options)."),
    ] = None,
    bias: Annotated[Optional[float], typer.Option(help="b in ReLU(conv + b).")] = None,
    activation: Annotated[Optional[str], typer.Option(help="auto, relu or onehot (hard assignment).")] = None,
    normalize_patches: Annotated[
        Optional[bool], typer.Option("--normalize-patches/--raw-patches", help="Conv computes cosine similarity.")
    ] = None,
    pool: Annotated[Optional[str], typer.Option(help="auto, max, avg or none.")] = None,
    pool_size: Annotated[Optional[int], typer.Option("--pool-size")] = None,
    stride: Annotated[Optional[int], typer.Option(help="Cluster-conv stride [default: s on synthetic, 1 on images].")] = None,
    padding: Annotated[Optional[int], typer.Option(help="Cluster-conv zero padding [default: 0 synthetic, s//2 images].")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Adam epochs.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Adam steps (instead of epochs).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay")] = None,
    eta: Annotated[Optional[float], typer.Option(help="gd-linear: GD learning rate.")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="gd-linear: T iterations.")] = None,
    sigma: Annotated[Optional[float], typer.Option(help="gd-linear: init radius parameter.")] = None,
    memory_budget: Annotated[
        Optional[str], typer.Option("--memory-budget", help="Feature cache budget, e.g. 4G [default: 40% of free RAM].")
    ] = None,
    cache_dtype: Annotated[Optional[str], typer.Option("--cache-dtype", help="float16 or uint8.")] = None,
    val_size: ValSizeOpt = None,
    normalize: NormalizeOpt = None,
    limit: LimitOpt = None,
    layer: LayerOpt = 0,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Build Conv(centroids)-ReLU(b)-Pool, train its 1x1 conv, drop the head, append the block to the network.

    Examples:

      hgm train-layer --data data.npz --centroids c1.npz --mode gd-linear --out net1.pt

      hgm train-layer --data ~/cifar --centroids c1.npz --n 64 --bias -0.1 --epochs 5 --out net1.pt

      hgm train-layer --data ~/cifar --centroids c2.npz --model net1.pt --n 96 --out net2.pt
    """
    pcfg = _pipeline_config(config, set_)
    dcfg = _data_config(pcfg, data, val_size, normalize, limit)
    options = dict(
        mode=mode, n=n, bias=bias, activation=activation, normalize_patches=normalize_patches, pool=pool,
        pool_size=pool_size, stride=stride, padding=padding, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, eta=eta, iterations=iterations, sigma=sigma, memory_budget=memory_budget,
        cache_dtype=cache_dtype,
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
    out: Annotated[Path, typer.Option("--out", "-o", help="Output classifier .pt.")] = Path("classifier.pt"),
    data: DataOpt = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Network .pt [default: raw pixels].")] = None,
    classifier: Annotated[Optional[str], typer.Option("--classifier", help="svm (§5.1), linear or fc (§6).")] = None,
    C: Annotated[Optional[float], typer.Option("--C", help="SVM regularisation.")] = None,
    svm_backend: Annotated[Optional[str], typer.Option("--svm-backend", help="auto, sklearn or torch.")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Adam iterations (linear / fc).")] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="Validation accuracy every N iterations.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay")] = None,
    val_size: ValSizeOpt = None,
    normalize: NormalizeOpt = None,
    limit: LimitOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train the final classifier on the network's output: linear SVM (§5.1), or the linear / FC heads of §6.

    Examples:

      hgm fit-svm --data data.npz --model net.pt --out svm.pt

      hgm fit-svm --data ~/cifar --model net2.pt --classifier fc --iterations 100000 --eval-every 10000 --out fc.pt

      hgm fit-svm --data data.npz --out raw-svm.pt      # a linear SVM on raw pixels, for comparison
    """
    pcfg = _pipeline_config(config, set_)
    dcfg = _data_config(pcfg, data, val_size, normalize, limit)
    options = dict(
        classifier=classifier, C=C, svm_backend=svm_backend, iterations=iterations, eval_every=eval_every,
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
    classifier: Annotated[Path, typer.Option("--classifier", help="Classifier .pt from `hgm fit-svm`.")],
    data: DataOpt = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Network .pt [default: raw pixels].")] = None,
    split: Annotated[Optional[str], typer.Option(help="train, val or test [default: test].")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the metrics as JSON here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write the accuracy curve and confusion matrix as PNG.")] = None,
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
    from .config import EvaluateConfig

    pcfg = _pipeline_config(config, set_)
    dcfg = _data_config(pcfg, data, val_size, normalize, limit)
    cfg = with_options(pcfg.evaluate or EvaluateConfig(), dict(split=split), "evaluate")
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
    classifier: Annotated[Path, typer.Option("--classifier", help="Classifier .pt trained on that network.")],
    model: Annotated[
        Optional[Path], typer.Option("--model", "-m", help="Network .pt [default: the one a baseline carries].")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output TorchScript file.")] = Path("model.pt"),
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
    arch: Annotated[str, typer.Option("--arch", help="cnn (trained end to end) or cnn-random (frozen random convs).")] = "cnn",
    head: Annotated[str, typer.Option("--head", help="fc (384-192 ReLU) or linear.")] = "fc",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output classifier .pt (carries its network).")] = Path("baseline.pt"),
    data: DataOpt = None,
    iterations: Annotated[Optional[int], typer.Option(help="Adam iterations (the paper: 100,000).")] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="Validation accuracy every N iterations.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.")] = None,
    val_size: ValSizeOpt = None,
    normalize: NormalizeOpt = None,
    limit: LimitOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train one of the paper's comparison networks (Figure 3): the TensorFlow-tutorial CNN, or it with random frozen convs.

    Examples:

      hgm baseline --data ~/cifar --arch cnn --head fc --iterations 100000 --eval-every 10000 --out cnn-fc.pt

      hgm baseline --data ~/cifar --arch cnn-random --head linear --out cnn-random-linear.pt

      hgm evaluate --data ~/cifar --classifier cnn-fc.pt --split val
    """
    pcfg = _pipeline_config(config, set_)
    dcfg = _data_config(pcfg, data, val_size, normalize, limit)
    options = dict(iterations=iterations, eval_every=eval_every, batch_size=batch_size, lr=lr)
    cfg = with_options(pcfg.classifier, options, "classifier")
    with progress_bar() as report:
        result = stages.baseline(
            dcfg, cfg, arch=arch, head=head, out=out, seed=pcfg.seed if seed is None else seed,
            device=device or pcfg.device, progress=report,
        )
    _finish(result, json_out)


# --------------------------------------------------------------------------- pipeline


@command("pipeline")
def pipeline_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML (see configs/).")],
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder [default: runs/<config name>].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun every stage, even up-to-date ones.")] = False,
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

      hgm pipeline --config configs/synthetic.yaml --set layers.0.train.n=32 --json
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
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML to search around.")],
    trials: Annotated[int, typer.Option("--trials", "-t", help="Number of random trials.")] = 10,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the trials [default: runs/search-<config>].")] = None,
    space: Annotated[
        Optional[list[str]],
        typer.Option("--space", help="key=low:high[:log], repeatable; '*.train.bias' means every layer [default: around the config]."),
    ] = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    seed: SeedOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun trials whose folders are up to date.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Random parameter search (appendix C) on the validation split: one pipeline run per trial, best config as YAML.

    Examples:

      hgm search --config configs/smoke.yaml --trials 2 --out runs/search-smoke

      hgm search --config configs/cifar-cpu.yaml --data ~/cifar --trials 20 --space layers.0.cluster.k=128:1024:log
    """
    from .search import parse_space, run_search

    pcfg = _pipeline_config(config, set_)
    if data is not None:
        pcfg.data = with_options(pcfg.data, dict(root=data), "data")
    folder = out or Path("runs") / f"search-{config.stem}"
    echo = (lambda line: err_console.print(line, markup=False, highlight=False)) if state.verbosity >= 1 else None
    with progress_bar() as report:
        ranked = run_search(
            pcfg, folder, trials, space=parse_space(space) if space else None,
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
    app()
