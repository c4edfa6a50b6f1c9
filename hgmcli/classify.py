"""Final classifiers on the network's output (§5.1 "Classification Algorithm",
§6 final classifier).

* ``svm``: a linear SVM, squared hinge, one-vs-rest, with liblinear's
  objective 0.5*||w||^2 + C * sum_i max(0, 1 - t_i (w.x_i + b))^2, the bias
  regularised like a weight (intercept_scaling = 1). scikit-learn's
  ``LinearSVC`` where the features fit in memory; our torch solver
  (full-batch L-BFGS on the same objective, CPU or CUDA) otherwise.
* ``linear`` / ``fc``: a linear layer, or a three-layer fully connected ReLU
  network (hidden 384, 192 as in the TensorFlow CIFAR-10 tutorial), trained
  with Adam on cross-entropy for a number of iterations; accuracy on the
  validation split recorded every ``eval_every`` iterations (§6: every 10k).
* ``bottleneck`` (not in the paper; Thiry et al. 2021's head over pooled
  patch codes): BatchNorm over the channels, a 1x1 conv to ``bottleneck``
  channels shared by every grid cell, BatchNorm, ReLU, then the fc layers
  with dropout. The 1x1 conv makes a k-channel coarse grid (k in the
  thousands) affordable: k x 256 weights instead of k x cells x 384.

Every classifier ends as an ``nn.Sequential`` (Flatten, Linear[, ReLU, ...])
whose argmax is the prediction: a binary SVM's decision function d becomes
logits (0, d). Each kind is an entry of ``HEADS``; the config's
``classifier.head`` choices, ``hgm search`` and the CLI's help read them from
there, so a new head is one function here plus its test."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import adam
from .errors import HgmError
from .features import Examples, FrozenFeatures, check_fits
from .progress import Progress, no_progress

if TYPE_CHECKING:
    from .config import ClassifierConfig


def build_bottleneck(input_shape: list[int], n_classes: int, width: int, hidden: list[int], *,
                     dropout: float = 0.0, gen: torch.Generator | None = None) -> nn.Sequential:
    """The ``bottleneck`` head on (C, H, W) features: BatchNorm2d(C), 1x1 conv
    C -> width (no bias: the BatchNorm after it has one), BatchNorm2d(width),
    ReLU, Flatten, then [Dropout, Linear, ReLU] per hidden width and Dropout,
    Linear to the classes. Plain modules only, so the exported network stays
    a CNN; at inference BatchNorm is a fixed affine map and Dropout nothing."""
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    if len(input_shape) != 3:
        raise HgmError(f"the bottleneck head needs (channels, height, width) features, got {input_shape}")
    c, h, w = input_shape
    dims = [width * h * w, *hidden, n_classes]
    check_fits(4 * 4 * (c * width + sum(a * b for a, b in zip(dims, dims[1:]))), f"a bottleneck head {c}->{dims}")
    conv = torch.nn.utils.skip_init(nn.Conv2d, c, width, kernel_size=1, bias=False)
    adam.uniform_init(conv, c, gen)
    mods: list[nn.Module] = [nn.BatchNorm2d(c), conv, nn.BatchNorm2d(width), nn.ReLU(), nn.Flatten()]
    for i in range(len(dims) - 1):
        lin = torch.nn.utils.skip_init(nn.Linear, dims[i], dims[i + 1])
        adam.uniform_init(lin, dims[i], gen)
        mods += [nn.Dropout(dropout), lin] + ([nn.ReLU()] if i < len(dims) - 2 else [])
    return nn.Sequential(*mods)


def build_head(kind: str, in_dim: int, n_classes: int, hidden: list[int], *,
               gen: torch.Generator | None = None) -> nn.Sequential:
    """The classifier module: Flatten, then Linear layers with ReLUs between
    (``hidden`` widths only for heads that have hidden layers, e.g. fc).
    Weights and biases uniform in +-1/sqrt(fan_in) (PyTorch's default Linear
    init) drawn from ``gen`` (default: a generator seeded 0); the global RNG
    is never used."""
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    dims = [in_dim] + (list(hidden) if HEADS[kind].hidden else []) + [n_classes]
    weights = sum(a * b for a, b in zip(dims, dims[1:]))
    check_fits(4 * 4 * weights, f"a {kind} head with layers {dims}")  # weights, gradients, Adam's two moments
    mods: list[nn.Module] = [nn.Flatten()]
    for i in range(len(dims) - 1):
        lin = torch.nn.utils.skip_init(nn.Linear, dims[i], dims[i + 1])  # no draw from the global RNG
        adam.uniform_init(lin, dims[i], gen)
        mods.append(lin)
        if i < len(dims) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


@dataclass
class FitResult:
    head: nn.Sequential
    curve: list[tuple[int, float]]  # (iteration, validation accuracy)
    stats: dict


# --------------------------------------------------------------------------- SVM


def svm_targets(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """t in {-1,+1}: (N, 1) for two classes (positive = class 1), else (N, L) one-vs-rest."""
    y_t = torch.as_tensor(y, dtype=torch.long)
    if n_classes == 2:
        return (2.0 * (y_t == 1).float() - 1.0)[:, None]
    return 2.0 * F.one_hot(y_t, n_classes).float() - 1.0


def svm_objective(W: torch.Tensor, x: torch.Tensor, t: torch.Tensor, C: float) -> torch.Tensor:
    """liblinear's L2-regularised squared-hinge primal; W: (D+1, M) with the bias as the last row."""
    scores = x @ W[:-1] + W[-1]
    hinge = torch.clamp(1.0 - t * scores, min=0.0)
    return 0.5 * (W * W).sum() + C * (hinge * hinge).sum()


def fit_svm_torch(
    x: torch.Tensor, y: np.ndarray, n_classes: int, C: float, *, max_iter: int = 500, tol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Full-batch L-BFGS on ``svm_objective``; returns (coef (M, D), intercept (M,), stats).

    x: (N, D) float32 on the device to use."""
    t = svm_targets(y, n_classes).to(x.device)
    W = torch.zeros(x.shape[1] + 1, t.shape[1], device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([W], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = svm_objective(W, x, t, C)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = float(svm_objective(W, x, t, C))
    W = W.detach()
    return W[:-1].t().contiguous(), W[-1].clone(), {"objective": final, "solver": "torch-lbfgs"}


def fit_svm_sklearn(x: np.ndarray, y: np.ndarray, C: float, *, max_iter: int = 5000, seed: int = 0):
    from sklearn.svm import LinearSVC

    clf = LinearSVC(C=C, loss="squared_hinge", dual="auto", max_iter=max_iter, random_state=seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning is reported via n_iter_ in stats
        clf.fit(x, y)
    return (
        torch.as_tensor(clf.coef_, dtype=torch.float32),
        torch.as_tensor(clf.intercept_, dtype=torch.float32),
        {"solver": "sklearn-liblinear", "n_iter": int(np.max(clf.n_iter_))},
    )


def svm_head(coef: torch.Tensor, intercept: torch.Tensor, n_classes: int) -> nn.Sequential:
    """A Linear layer whose argmax is the SVM's prediction."""
    head = build_head("svm", coef.shape[1], n_classes, [])
    lin = head[1]
    with torch.no_grad():
        if n_classes == 2:  # decision d -> logits (0, d)
            lin.weight.zero_()
            lin.bias.zero_()
            lin.weight[1] = coef[0]
            lin.bias[1] = intercept[0]
        else:
            lin.weight.copy_(coef)
            lin.bias.copy_(intercept)
    return head


def dense_features(feats: FrozenFeatures) -> torch.Tensor:
    """All features as one float32 (N, D) tensor on the features' device."""
    out = torch.empty(len(feats), int(np.prod(feats.shape)), device=feats.device)
    for idx, x in feats.batches(np.arange(len(feats)), 1024):
        out[torch.from_numpy(idx).to(feats.device)] = x.flatten(1)
    return out


def feature_moments(feats: FrozenFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale) of every feature over the split, for standardisation:
    scale = sqrt(var + 0.01 * mean(var)), the regulariser keeping near-constant
    features (a triangle code is often 0) from being blown up. Streamed, float64."""
    total = sq = None
    for _, x in feats.batches(np.arange(len(feats)), 1024):
        x = x.flatten(1).double()
        total = x.sum(0) if total is None else total + x.sum(0)
        sq = (x * x).sum(0) if sq is None else sq + (x * x).sum(0)
    mean = total / len(feats)
    var = (sq / len(feats) - mean * mean).clamp_min(0)
    return mean.float(), torch.sqrt(var + 0.01 * var.mean()).float()


def fold_standardization(linear: nn.Linear, mean: torch.Tensor, scale: torch.Tensor) -> None:
    """``linear((x - mean) / scale)`` as one linear layer of x: W / scale, b - W (mean / scale)."""
    with torch.no_grad():
        w = linear.weight / scale.to(linear.weight.device)
        linear.bias -= w @ mean.to(w.device)
        linear.weight.copy_(w)


class _Standardized(nn.Module):
    """(x - mean) / scale on flattened features, while a head trains (then folded away)."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


SKLEARN_MAX_ENTRIES = 1 << 22  # n x dim up to which liblinear is the auto SVM solver. Above it, liblinear (one
# thread, one class after another) is the slow one: on 10,000 x 1,600 standardised CIFAR-10 features it had not
# finished after 26 minutes (2-core box, loaded); our L-BFGS solver uses every core.


def svm_backend(setting: str, n: int, dim: int, device: torch.device, budget: int) -> str:
    """``auto``: scikit-learn's liblinear for small problems on the CPU (the
    synthetic models: the reference solver), when the features also fit
    ``budget`` as float64 (liblinear works in float64); else our torch L-BFGS
    solver (large feature sets, CUDA)."""
    if setting != "auto":
        return setting
    small = n * dim <= SKLEARN_MAX_ENTRIES and n * dim * 8 <= budget
    return "sklearn" if (small and device.type == "cpu") else "torch"


def fit_svm(ex: Examples, cfg: ClassifierConfig, *, seed: int, budget: int, progress: Progress = no_progress,
            checkpoint=None, curves=None) -> FitResult:
    t0 = time.perf_counter()
    feats, y, n_classes = ex.train, ex.y, ex.n_classes
    dim = int(np.prod(feats.shape))
    backend = svm_backend(cfg.svm_backend, len(feats), dim, feats.device, budget)
    x = dense_features(feats)
    if cfg.standardize:
        mean, scale = feature_moments(feats)
        x.sub_(mean.to(x.device)).div_(scale.to(x.device))
    if backend == "sklearn":
        coef, intercept, st = fit_svm_sklearn(x.cpu().numpy(), y, cfg.C, seed=seed)
    else:
        coef, intercept, st = fit_svm_torch(x, y, n_classes, cfg.C)
    head = svm_head(coef.cpu(), intercept.cpu(), n_classes)
    if cfg.standardize:
        fold_standardization(head[1], mean, scale)
    curve = []
    if ex.has_val:
        curve = [(0, accuracy(head, ex.val, ex.y_val))]
    stats = {**st, "backend": backend, "features": dim, "seconds": round(time.perf_counter() - t0, 3)}
    return FitResult(head, curve, stats)


# --------------------------------------------------------------------------- linear / fc with Adam


def fit_adam(ex: Examples, cfg: ClassifierConfig, *, seed: int, budget: int = 0,
             progress: Progress = no_progress, checkpoint=None, curves=None) -> FitResult:
    """§6: the linear or three-layer FC classifier, Adam on cross-entropy for cfg.adam_steps steps."""
    feats = ex.train
    dim = int(np.prod(feats.shape))
    gen = torch.Generator().manual_seed(seed)
    if cfg.head == "bottleneck":  # standardises with its own first BatchNorm
        head = build_bottleneck(list(feats.shape), ex.n_classes, cfg.bottleneck, cfg.hidden, dropout=cfg.dropout, gen=gen)
    else:
        head = build_head(cfg.head, dim, ex.n_classes, cfg.hidden, gen=gen)
    head = head.to(feats.device).train()
    if cfg.standardize and cfg.head != "bottleneck":  # trained on standardised features; folded in afterwards
        head.insert(1, _Standardized(*feature_moments(feats)).to(feats.device))
    y_t = torch.as_tensor(ex.y, dtype=torch.long)

    def batch_loss(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        _, x = next(feats.batches(idx, len(idx)))
        target = y_t[torch.from_numpy(idx)].to(feats.device)
        logits = head(x)
        return F.cross_entropy(logits, target), adam.correct_count(logits, target)

    evaluate = (lambda: accuracy(head, ex.val, ex.y_val)) if ex.has_val else None
    run = adam.train(
        head, batch_loss, len(feats), steps=cfg.adam_steps, batch_size=cfg.batch_size, lr=cfg.lr,
        weight_decay=cfg.weight_decay, seed=seed, eval_every=cfg.eval_every, evaluate=evaluate,
        label=f"{cfg.head} classifier", progress=progress, checkpoint=checkpoint, curves=curves,
        schedule=cfg.lr_schedule,
    )
    stats = {"iterations": run.steps, "final_loss": run.final_loss, "train_seconds": run.seconds, "features": dim,
             "history": run.history}
    if cfg.standardize and cfg.head != "bottleneck":
        std = head[1]
        del head[1]
        fold_standardization(head[1], std.mean, std.scale)
    return FitResult(head.cpu().eval(), run.curve, stats)


# --------------------------------------------------------------------------- shared


def predict(head: nn.Module, feats: FrozenFeatures, batch_size: int = 1024) -> np.ndarray:
    head = head.to(feats.device).eval()
    out = np.empty(len(feats), dtype=np.int64)
    with torch.no_grad():
        for idx, x in feats.batches(np.arange(len(feats)), batch_size):
            out[idx] = head(x).argmax(dim=1).cpu().numpy()
    return out


def accuracy(head: nn.Module, feats: FrozenFeatures, y: np.ndarray) -> float:
    was_training = head.training
    acc = float((predict(head, feats) == np.asarray(y)).mean())
    head.train(was_training)
    return acc


def head_spec(head: nn.Sequential) -> list[int]:
    """Layer widths [D, h1, ..., L] of a head built by ``build_head``; of a
    bottleneck head [D, bottleneck, h1, ..., L] (D: the flattened input)."""
    convs = [m for m in head if isinstance(m, nn.Conv2d)]
    lins = [m for m in head if isinstance(m, nn.Linear)]
    if convs:
        cells = lins[0].in_features // convs[0].out_channels
        return [convs[0].in_channels * cells, convs[0].out_channels] + [m.out_features for m in lins]
    return [lins[0].in_features] + [m.out_features for m in lins]


def head_from_state(kind: str, dims: list[int], state: dict, input_shape: list[int] | None = None) -> nn.Sequential:
    if kind not in HEADS:
        raise HgmError(f"unknown classifier kind {kind!r}; expected one of {', '.join(HEADS)}")
    if kind == "bottleneck":
        if not input_shape or len(input_shape) != 3 or int(np.prod(input_shape)) != dims[0] or len(dims) < 3:
            raise HgmError(f"a bottleneck classifier of layer sizes {dims} does not fit features {input_shape}")
        head = build_bottleneck(input_shape, dims[-1], dims[1], dims[2:-1])
    else:
        head = build_head(kind, dims[0], dims[-1], dims[1:-1])
    try:
        head.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise HgmError(f"classifier weights do not match its layer sizes {dims}: {str(e).splitlines()[0]}") from None
    return head


def load_classifier(path) -> tuple[nn.Sequential, dict, dict]:
    """(head nn.Sequential, payload dict, meta), every field checked."""
    from . import artifacts
    from .errors import ArtifactError

    payload, meta = artifacts.load_pt(path, "classifier")
    try:
        head = head_from_state(payload["kind"], payload["dims"], payload["state"], payload.get("input_shape"))
        names, shape = payload["label_names"], payload["input_shape"]
    except (KeyError, TypeError) as e:
        raise ArtifactError(f"{path} is not a valid classifier file (missing {e})") from None
    if not isinstance(names, list) or len(names) != payload["dims"][-1] or len(set(map(str, names))) != len(names):
        n_out = payload["dims"][-1]
        raise ArtifactError(f"{path}: the classifier has {n_out} outputs but {len(names)} label names "
                            f"({len(set(map(str, names)))} distinct)")
    if not (isinstance(shape, list) and shape and all(isinstance(v, int) and v > 0 for v in shape)):
        raise ArtifactError(f"{path}: invalid input shape {shape!r}")
    return head, payload, meta


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Head:
    """A final classifier. ``fit(examples, cfg, *, seed, budget, progress, checkpoint, curves) -> FitResult``; ``hidden``: whether ``cfg.hidden`` layers
    are built (the saved layer widths rebuild it either way)."""

    fit: Callable[..., FitResult]
    hidden: bool
    help: str  # one line, shown by `hgm fit-svm --help`


HEADS: dict[str, Head] = {
    "svm": Head(fit_svm, False, "§5.1: linear SVM, squared hinge, one-vs-rest (liblinear's objective)"),
    "linear": Head(fit_adam, False, "§6: one linear layer, Adam on cross-entropy"),
    "fc": Head(fit_adam, True, "§6: FC-ReLU hidden layers (384, 192) then linear, Adam on cross-entropy"),
    "bottleneck": Head(fit_adam, True, "Thiry et al.: BN, shared 1x1 conv to `bottleneck` channels, BN, ReLU, "
                                       "then the fc layers with dropout"),
}
