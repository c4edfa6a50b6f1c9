"""The hierarchical generative model (§3.1), patch orthonormality (§4) and the
synthetic digits (§3.2, Figure 2).

Model (as this implementation reads §3.1)
-----------------------------------------
Levels ``0..d``. Level ``i < d`` is a *semantic image* ``X(i)`` of size
``m_i = m0 * s**i`` over a finite class set ``C_i``; level ``d`` is the
observed greyscale image (``C_d = R``), ``m0 * s**d`` pixels wide.

* Every class ``c in C_i`` owns a set ``S_c`` of ``k`` distinct ``s x s``
  patches; the sets are disjoint across the classes of a level. For
  ``i < d-1`` the patches are over ``C_{i+1}`` (integer class ids); for
  ``i = d-1`` they are real greyscale patches.
* Discrete sets: ``k * |C_i|`` distinct patches drawn uniformly without
  replacement from ``C_{i+1}^{s x s}``, then dealt out ``k`` per class.
* Real sets (default): i.i.d. uniform ``[0, 1]`` pixel values (a greyscale
  image in the usual range; the paper leaves the choice open). With
  ``orthonormal=True`` (§4, "patch orthonormality", ``<P1,P2> = 1[P1=P2]``
  over all ``k * |C_{d-1}|`` final patches) the patches are the first rows of
  a Haar-random orthogonal matrix (QR of a Gaussian, signs fixed by
  ``diag(R)``); these have negative entries and norm 1, so the image is *not*
  in ``[0, 1]``. This needs ``s**2 >= k * |C_{d-1}|``.
* Sampling one example: ``y ~ U(labels)``; ``X(0) ~ D_y``; then every pixel
  of class ``c`` at level ``i`` is replaced by a patch drawn uniformly from
  ``S_c``, independently per pixel, level by level; optional
  ``N(0, noise**2)`` on the observed pixels.

The top distribution ``D_y`` (§3.1 only asks that ``G0`` be linearly
separable in the one-hot tensor representation, class ``c -> e_c``).
Construction: a fixed random weight tensor ``W in R^{L x |C0| x m0 x m0}``
(i.i.d. N(0,1), centred over the classes at each position, stored with the
model) scores a semantic image ``X`` for
every label, ``s_l(X) = <W_l, onehot(X)>``. ``D_y`` is the uniform
distribution over the semantic images with
``s_y(X) - max_{l != y} s_l(X) >= margin``, sampled by rejection from the
uniform distribution over ``C0^{m0 x m0}`` (vectorised, in batches). The
margin is ``margin`` (config, default 1.0) times the mean standard deviation of the
pairwise score differences ``s_a - s_b`` under uniform ``X``; with the default and
configs/synthetic.yaml's model (two labels, |C0| = 2, m0 = 4) 33 % of the uniform
draws are accepted (``stats["top_acceptance"]`` = 0.326, measured). With two
labels, ``(W_1 - W_0) / margin`` is a separator with ``y <W, X> >= 1``
(``y = -1`` for label id 0, ``+1`` for id 1); with more labels ``G0`` is
multiclass linearly separable with margin ``margin``.

Recorded latents: ``latent_<i>`` is ``X(i)`` (``i = 0..d-1``) and
``patch_<i>`` (``i = 1..d``) holds, for every pixel of level ``i-1``, the
*global* id ``c * k + j`` of the patch that replaced it (``j``: which of the
``k`` members of ``S_c``), so exact recovery of the patch mapping (Lemma 7)
can be scored.

Synthetic digits (§3.2, Figure 2)
---------------------------------
The paper's glyphs were lost from the extracted text; this is a faithful
reconstruction with the paper's counts: three levels, ``X(0)`` a 3x3 grid
(4^9 level-1 variants per digit, 4^90 final variants), s = 3, k = 4,
``|C0| = 9``, ``|C1| = 6``, final images 27x27, label = parity
(0 even, 1 odd), ``D_even`` / ``D_odd`` uniform over the five even / odd
digit drawings.

C0 (level-0 semantic classes, box-drawing strokes through the cell centre)::

    0 blank   1 ─   2 │   3 ┌   4 ┐   5 └   6 ┘   7 ├   8 ┤

The ten glyphs (3x3 over C0)::

    0: ┌─┐   1:  │    2: ──┐   3: ──┐   4: │ │
       │ │       │       ┌─┘      ──┤      └─┤
       └─┘       │       └──      ──┘        │

    5: ┌──   6: ┌──   7: ──┐   8: ┌─┐   9: ┌─┐
       └─┐      ├─┐       │      ├─┤      └─┤
       ──┘      └─┘       │      └─┘      ──┘

C1 (level-1 classes)::

    0 blank (background)   1 H horizontal stroke   2 V vertical stroke
    3 J joint (stroke centre of a corner / tee)   4 A dot speck   5 B scratch speck

Each C0 class expands to one of 4 3x3 patches over C1: its stroke template
(``.`` blank, ``H``/``V``/``J`` as above), clean or with one speck in a
corner (the corners are free in every template)::

    ─  ...   │  .V.   ┌  ...   ┐  ...   └  .V.   ┘  .V.   ├  .V.   ┤  .V.
       HHH      .V.      .JH      HJ.      .JH      HJ.      .JH      HJ.
       ...      .V.      .V.      .V.      ...      ...      .V.      .V.

    manifestations: clean | a speck top-left | bottom-right | top-right
    (the speck is A, a dot, for blank, ─, ┌ and ┐, and B, a scratch, for the
    others: the two speck classes then have different label frequencies F_c,
    which §3.1 assumes of every pair of classes)

so strokes of neighbouring cells meet at the cell borders (an ``H`` row runs
edge to edge, ``V`` columns likewise, ``J`` joins them). Each C1 class
expands to one of 4 3x3 greyscale patches in [0, 1]: blank = a dim floor
(0.05) with up to two slightly brighter pixels; H = a bright middle row, plain,
thickened above or below by a 0.5 row, or notched; V = the transpose; J = a
plus, with 0.4 corners or 0.5 diagonal ends; A = a centre dot (0.5) or a
two-pixel dot; B = a faint (0.3) two-pixel diagonal (four orientations). All
24 patches point in different directions and none is black, because the
clustering is cosine (§5.1): patches that differ only in brightness would be
one point to it. Strokes
are therefore continuous, one to three pixels thick, and every digit reads
like a seven-segment/box-drawing numeral (see ``hgm generate --family digits
--preview``). The digits model ignores the depth / patch_size / m0 /
classes / k / labels / orthonormal options; it records its own values
(depth 2, s 3, m0 3, classes [9, 6], k 4, labels 2). ``noise`` applies.

Measured (2-core CPU shared with other jobs): 10,000 examples of the default
depth-3 model (32x32 images) sample in 0.2-0.35 s; on the default config a
LinearSVC on raw pixels reaches 0.55 / 0.51 test accuracy (seeds 0 / 1;
0.53 with 20,000 training images) while one on one-hot X(0) is perfect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .config import GenerateConfig
from .errors import ArtifactError, ConfigError

MAX_IMAGE_SIZE = 4096  # refuse observed images wider than this (pixels)
_TOP_BATCH_ELEMS = 1 << 22  # int64 elements per rejection-sampling batch (32 MiB)
_TOP_MAX_DRAWS_PER_EXAMPLE = 200  # give up when D_y accepts fewer than 1 in ~this many


# --------------------------------------------------------------------------- the model


@dataclass
class HierarchicalModel:
    """A sampled generative model: patch sets per level and the top distribution."""

    kind: str  # "hierarchical" | "digits"
    depth: int  # d: refinement steps; level d is the observed image
    patch_size: int  # s
    m0: int  # X(0) is m0 x m0
    classes: list[int]  # |C_0| .. |C_{d-1}|
    k: int  # |S_c|
    labels: int  # L
    orthonormal: bool  # final patches orthonormal (§4)
    noise: float  # std of the Gaussian pixel noise on the observed image
    patch_sets: list[np.ndarray]  # level i: (|C_i|, k, s, s); int64 (i < d-1) or float32 (i = d-1)
    top: dict[str, np.ndarray]  # D_y's parameters (see the module docstring)
    label_names: list[str] = field(default_factory=list)

    def image_size(self, level: int) -> int:
        """Width of ``X(level)``: ``m0 * s**level``."""
        return self.m0 * self.patch_size**level

    def params(self) -> dict:
        """Shape-defining scalars, JSON-able (stored in the dataset's metadata)."""
        return {
            "kind": self.kind,
            "depth": self.depth,
            "patch_size": self.patch_size,
            "m0": self.m0,
            "classes": list(self.classes),
            "k": self.k,
            "labels": self.labels,
            "orthonormal": self.orthonormal,
            "noise": self.noise,
            "label_names": list(self.label_names),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for the ``.npz``: ``model_patches_<i>``, ``model_top_<name>``."""
        out = {f"model_patches_{i}": p for i, p in enumerate(self.patch_sets)}
        out.update({f"model_top_{name}": np.asarray(a) for name, a in self.top.items()})
        return out

    @classmethod
    def from_arrays(cls, params: dict, arrays: dict[str, np.ndarray]) -> HierarchicalModel:
        """Rebuild a model from ``params()`` and ``arrays()`` (extra arrays are ignored)."""
        try:
            kind = str(params["kind"])
            depth = int(params["depth"])
            s = int(params.get("patch_size", params.get("s")))
            m0, k, labels = int(params["m0"]), int(params["k"]), int(params["labels"])
            classes = [int(c) for c in params["classes"]]
            orthonormal = bool(params.get("orthonormal", False))
            noise = float(params.get("noise", 0.0))
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"generative model parameters are incomplete or malformed ({e})") from None
        patch_sets = []
        for i in range(depth):
            name = f"model_patches_{i}"
            if name not in arrays:
                raise ArtifactError(f"generative model array {name} is missing")
            p = np.asarray(arrays[name])
            want = (classes[i] if i < len(classes) else -1, k, s, s)
            if p.shape != want:
                raise ArtifactError(f"generative model array {name} has shape {p.shape}, expected {want}")
            patch_sets.append(p.astype(np.float32) if i == depth - 1 else p.astype(np.int64))
        top = {name[len("model_top_") :]: np.asarray(a) for name, a in arrays.items() if name.startswith("model_top_")}
        needed = ("glyphs", "glyph_labels") if kind == "digits" else ("label_weights", "margin")
        for name in needed:
            if name not in top:
                raise ArtifactError(f"generative model array model_top_{name} is missing")
        names = params.get("label_names") or _default_label_names(kind, labels)
        return cls(kind, depth, s, m0, classes, k, labels, orthonormal, noise, patch_sets, top, list(names))


def _default_label_names(kind: str, labels: int) -> list[str]:
    if kind == "digits":
        return ["even", "odd"]
    if labels == 2:
        return ["-1", "+1"]  # the paper's y in {-1, +1}: id 0 <-> -1, id 1 <-> +1
    return [str(i) for i in range(labels)]


# --------------------------------------------------------------------------- validation


def _resolve_classes(cfg: GenerateConfig) -> list[int]:
    classes = list(cfg.classes)
    if len(classes) == 1:
        classes = classes * cfg.depth
    if len(classes) != cfg.depth:
        raise ConfigError(
            f"--classes needs 1 value or {cfg.depth} (one per level 0..{cfg.depth - 1}), got {len(cfg.classes)}"
        )
    for c in classes:
        if c < 1:
            raise ConfigError(f"--classes values must be >= 1, got {c}")
    return classes


def _check_common(cfg: GenerateConfig) -> None:
    if cfg.n_train < 1:
        raise ConfigError(f"--n-train must be >= 1, got {cfg.n_train}")
    if cfg.n_test < 0:
        raise ConfigError(f"--n-test must be >= 0, got {cfg.n_test}")
    if not (cfg.noise >= 0 and math.isfinite(cfg.noise)):
        raise ConfigError(f"--noise must be a finite number >= 0, got {cfg.noise}")
    if not (cfg.margin >= 0 and math.isfinite(cfg.margin)):
        raise ConfigError(f"--margin must be a finite number >= 0, got {cfg.margin}")


def _pow_at_least(base: int, exp: int, target: int) -> bool:
    """``base**exp >= target`` without building a huge integer (exp may be ~10^7)."""
    value = 1
    for _ in range(exp):
        if value >= target:
            return True
        value *= base
        if base == 1:
            break
    return value >= target


def validate(cfg: GenerateConfig) -> list[int]:
    """Refuse impossible parameters (``ConfigError``); return ``|C_0|..|C_{d-1}|``."""
    _check_common(cfg)
    if cfg.family == "digits":
        return list(DIGIT_CLASSES)
    if cfg.family != "hierarchical":
        raise ConfigError(f"--family must be hierarchical or digits, got {cfg.family!r}")
    for opt, value in (("--depth", cfg.depth), ("--patch-size", cfg.patch_size), ("--m0", cfg.m0), ("--patches-per-class", cfg.patches_per_class)):
        if value < 1:
            raise ConfigError(f"{opt} must be >= 1, got {value}")
    if cfg.labels < 2:
        raise ConfigError(f"--labels must be >= 2, got {cfg.labels}")
    classes = _resolve_classes(cfg)
    size = cfg.m0 * cfg.patch_size**cfg.depth
    if size > MAX_IMAGE_SIZE:
        raise ConfigError(
            f"images would be {size}x{size} pixels (--m0 {cfg.m0} x --patch-size {cfg.patch_size}"
            f"^--depth {cfg.depth}); at most {MAX_IMAGE_SIZE}x{MAX_IMAGE_SIZE}: lower --depth, --patch-size or --m0"
        )
    from .features import check_fits

    # images (float32) and the latents of every level (int16, at most as many pixels each), before sampling
    check_fits((cfg.n_train + cfg.n_test) * size * size * (4 + 2 * 2 * cfg.depth), f"{cfg.n_train + cfg.n_test:,} images")
    s2 = cfg.patch_size**2
    if cfg.orthonormal and s2 < cfg.patches_per_class * classes[-1]:
        raise ConfigError(
            f"--orthonormal needs patch_size² ≥ k·|C_{cfg.depth - 1}| ({s2} < {cfg.patches_per_class}·{classes[-1]}): "
            "raise --patch-size or lower --patches-per-class/--classes"
        )
    for i in range(cfg.depth - 1):
        need = cfg.patches_per_class * classes[i]
        if not _pow_at_least(classes[i + 1], s2, need):
            space = classes[i + 1] ** s2  # small: it is below need
            raise ConfigError(
                f"--patches-per-class/--classes: level {i} needs k·|C_{i}| = {cfg.patches_per_class}·{classes[i]} = {need} distinct patches "
                f"but only |C_{i + 1}|^(s²) = {classes[i + 1]}^{s2} = {space} exist: "
                "lower --patches-per-class or --classes, or raise --patch-size"
            )
    if not _pow_at_least(classes[0], cfg.m0**2, cfg.labels):
        raise ConfigError(
            f"--labels {cfg.labels}: only |C_0|^(m0²) = {classes[0] ** (cfg.m0**2)} semantic images exist: "
            "raise --m0 or --classes"
        )
    return classes


# --------------------------------------------------------------------------- building


def _distinct_discrete_patches(n_classes: int, s: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct patches drawn uniformly without replacement from
    ``{0..n_classes-1}^{s x s}``, in random order: (count, s, s) int64."""
    s2 = s * s
    space = n_classes**s2  # Python int: exact however large
    if space <= 2**62:
        codes = rng.choice(space, size=count, replace=False)  # (count,) int64
        digits = np.empty((count, s2), dtype=np.int64)
        for p in range(s2):  # base-|C| digits of each code
            digits[:, p] = codes % n_classes
            codes = codes // n_classes
        return digits.reshape(count, s, s)
    # Space too large to index: draw with replacement and redraw the (astronomically
    # rare) repeats; conditioned on distinctness this is uniform without replacement.
    patches = rng.integers(0, n_classes, size=(count, s2), dtype=np.int64)
    while True:
        _, first = np.unique(patches, axis=0, return_index=True)
        dup = np.setdiff1d(np.arange(count), first)
        if dup.size == 0:
            return patches.reshape(count, s, s)
        patches[dup] = rng.integers(0, n_classes, size=(dup.size, s2), dtype=np.int64)


def _real_patches(n_classes: int, k: int, s: int, orthonormal: bool, rng: np.random.Generator) -> np.ndarray:
    """Final-level patch sets: (n_classes, k, s, s) float32."""
    count = n_classes * k
    if orthonormal:
        q, r = np.linalg.qr(rng.standard_normal((s * s, s * s)))
        q = q * np.sign(np.diag(r))  # Haar-distributed orthogonal matrix
        rows = q.T[:count]  # (count, s*s): orthonormal rows
        return rows.reshape(n_classes, k, s, s).astype(np.float32)
    return rng.random((n_classes, k, s, s), dtype=np.float64).astype(np.float32)


def _top_margin(weights: np.ndarray, fraction: float) -> float:
    """``fraction`` x the mean std of ``s_a - s_b`` (a != b) under uniform X(0)."""
    w = weights.astype(np.float64).reshape(weights.shape[0], weights.shape[1], -1)  # (L, C0, P)
    stds = []
    for a in range(w.shape[0]):
        for b in range(a + 1, w.shape[0]):
            stds.append(math.sqrt(float((w[a] - w[b]).var(axis=0).sum())))  # sum over positions
    return fraction * float(np.mean(stds))


def build_model(cfg: GenerateConfig, rng: np.random.Generator) -> HierarchicalModel:
    """Draw a model (patch sets, top distribution) from ``cfg``; ``ConfigError`` if impossible."""
    classes = validate(cfg)
    if cfg.family == "digits":
        return _digits_model(cfg.noise)
    d, s, k = cfg.depth, cfg.patch_size, cfg.patches_per_class
    patch_sets: list[np.ndarray] = []
    for i in range(d - 1):
        flat = _distinct_discrete_patches(classes[i + 1], s, k * classes[i], rng)  # (k|C_i|, s, s)
        patch_sets.append(flat.reshape(classes[i], k, s, s))
    patch_sets.append(_real_patches(classes[-1], k, s, cfg.orthonormal, rng))
    weights = rng.standard_normal((cfg.labels, classes[0], cfg.m0, cfg.m0))
    # Centre over the classes at each position: a label's score then has mean 0 under uniform
    # X(0), so no label is favoured a priori (without this, small C0/m0 left one label empty).
    weights = (weights - weights.mean(axis=1, keepdims=True)).astype(np.float32)
    top = {"label_weights": weights, "margin": np.array(_top_margin(weights, cfg.margin), dtype=np.float32)}
    return HierarchicalModel(
        "hierarchical", d, s, cfg.m0, classes, k, cfg.labels, bool(cfg.orthonormal), float(cfg.noise),
        patch_sets, top, _default_label_names("hierarchical", cfg.labels),
    )  # fmt: skip


# --------------------------------------------------------------------------- sampling


def one_hot_top(latent0: np.ndarray, n_classes: int) -> np.ndarray:
    """§3.1's tensor representation: (n, m0, m0) class ids -> (n, |C0|, m0, m0) float32."""
    latent0 = np.asarray(latent0)
    eye = np.eye(n_classes, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(eye[latent0], -1, 1))


def _top_scores(weights: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """``<W_l, onehot(X)>`` for every label: (B, m0, m0) -> (B, L) float64."""
    L, _, m0, _ = weights.shape
    w = weights.astype(np.float64).reshape(L, -1, m0 * m0)  # (L, C0, P)
    flat = x0.reshape(x0.shape[0], -1)  # (B, P)
    return w[:, flat, np.arange(m0 * m0)].sum(axis=-1).T  # (L, B, P) -> (B, L)


def _sample_top_hierarchical(
    model: HierarchicalModel, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """X(0) ~ D_y for every y by rejection from uniform C0^{m0 x m0}."""
    weights, margin = model.top["label_weights"], float(model.top["margin"])
    L, c0, m0 = model.labels, model.classes[0], model.m0
    n = len(y)
    need = np.bincount(y, minlength=L)
    pools: list[list[np.ndarray]] = [[] for _ in range(L)]
    have = np.zeros(L, dtype=np.int64)
    drawn = accepted = 0
    hits = np.zeros(L, dtype=np.int64)  # accepted draws per label, over all batches
    max_draws = max(_TOP_MAX_DRAWS_PER_EXAMPLE * n, 100_000)
    max_batch = max(1, _TOP_BATCH_ELEMS // (m0 * m0))
    while (have < need).any():
        if drawn >= max_draws:
            short = int(np.argmax(need - have > 0))
            raise ConfigError(
                f"--labels {L}: the top distribution D_y accepts almost no semantic images of label "
                f"{short} ({have[short]} of {need[short]} after {drawn} draws): raise --m0 or --classes, "
                "or lower --labels"
            )
        # Size the batch from the acceptance seen so far (first guess: 1/(2L) per label).
        rate = np.maximum(hits / drawn, 1e-3) if drawn else np.full(L, 0.5 / L)
        want = int(np.ceil(1.2 * ((need - have).clip(0) / rate).max())) + 64
        x0 = rng.integers(0, c0, size=(min(want, max_batch, max_draws - drawn), m0, m0), dtype=np.int64)
        drawn += len(x0)
        scores = _top_scores(weights, x0)  # (B, L)
        best = scores.argmax(axis=1)
        top2 = np.partition(scores, L - 2, axis=1)[:, L - 2 :]  # (B, 2): runner-up, best
        ok = (top2[:, 1] - top2[:, 0]) >= margin
        accepted += int(ok.sum())
        for lab in range(L):
            mine = x0[ok & (best == lab)]
            hits[lab] += len(mine)
            if have[lab] < need[lab]:
                got = mine[: need[lab] - have[lab]]
                pools[lab].append(got)
                have[lab] += len(got)
    x0_out = np.empty((n, m0, m0), dtype=np.int64)
    for lab in range(L):
        if need[lab]:
            x0_out[y == lab] = np.concatenate(pools[lab])[: need[lab]]
    stats = {"top_draws": drawn, "top_accepted": accepted}
    return x0_out, stats


def _sample_top_digits(model: HierarchicalModel, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    glyphs, glyph_labels = model.top["glyphs"], model.top["glyph_labels"]
    x0 = np.empty((len(y), model.m0, model.m0), dtype=np.int64)
    for lab in range(model.labels):
        members = np.flatnonzero(glyph_labels == lab)
        idx = y == lab
        x0[idx] = glyphs[members[rng.integers(0, len(members), size=int(idx.sum()))]]
    return x0, {}


def sample_with_stats(model: HierarchicalModel, n: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict]:
    """``sample`` plus the rejection sampler's counts (``top_draws``: uniform X(0)
    drawn, ``top_accepted``: those that met the margin for some label)."""
    y = rng.integers(0, model.labels, size=n, dtype=np.int64)
    if model.kind == "digits":
        x, stats = _sample_top_digits(model, y, rng)
    else:
        x, stats = _sample_top_hierarchical(model, y, rng)
    out: dict[str, np.ndarray] = {}
    s, k = model.patch_size, model.k
    for i in range(model.depth):
        out[f"latent_{i}"] = x
        m = x.shape[1]
        pid = x * k + rng.integers(0, k, size=x.shape, dtype=np.int64)  # (n, m, m) global patch ids
        out[f"patch_{i + 1}"] = pid
        flat = model.patch_sets[i].reshape(-1, s, s)  # (|C_i| k, s, s)
        x = flat[pid].transpose(0, 1, 3, 2, 4).reshape(n, m * s, m * s)  # (n, m, s, m, s) -> stitched
    x = x.astype(np.float32)
    if model.noise > 0:
        x += (model.noise * rng.standard_normal(x.shape)).astype(np.float32)
    out["x"] = x[:, None]  # (n, 1, H, W)
    out["y"] = y
    return out, stats


def sample(model: HierarchicalModel, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` examples: ``x`` (n,1,H,W) float32, ``y`` (n,) int64, ``latent_<i>``
    (n, m_i, m_i) int64 for i in 0..d-1, ``patch_<i>`` (n, m_{i-1}, m_{i-1}) int64 for i in 1..d."""
    return sample_with_stats(model, n, rng)[0]


def generate(cfg: GenerateConfig, seed: int) -> tuple[HierarchicalModel, dict[str, np.ndarray], dict]:
    """Build a model and sample the train and test splits from one ``Generator(seed)``.

    Returns the model, the ``.npz`` arrays (``x_train``, ``y_train``, ``x_test``,
    ``y_test``, ``latent_{train,test}_<i>``, ``patch_{train,test}_<i>`` and the
    model's arrays) and a JSON-able stats dict."""
    rng = np.random.default_rng(seed)
    model = build_model(cfg, rng)
    arrays: dict[str, np.ndarray] = {}
    stats: dict = {"image_size": model.image_size(model.depth), "levels": model.depth + 1}
    draws = accepted = 0
    for split, n in (("train", cfg.n_train), ("test", cfg.n_test)):
        data, st = sample_with_stats(model, n, rng)
        draws += st.get("top_draws", 0)
        accepted += st.get("top_accepted", 0)
        for key, a in data.items():
            if key in ("x", "y"):
                arrays[f"{key}_{split}"] = a
            else:  # stored compactly: ids fit int16 for any model this generator accepts
                kind, level = key.rsplit("_", 1)
                arrays[f"{kind}_{split}_{level}"] = a.astype(np.int16 if a.max(initial=0) < 2**15 else np.int32)
        stats[f"label_counts_{split}"] = np.bincount(data["y"], minlength=model.labels).tolist()
    if model.kind == "hierarchical":
        stats["top_margin"] = float(model.top["margin"])
        stats["top_acceptance"] = round(accepted / draws, 4) if draws else None  # P(margin met) under uniform X(0)
    stats["patches_per_level"] = [int(c) * model.k for c in model.classes]
    arrays.update(model.arrays())
    return model, arrays, stats


# --------------------------------------------------------------------------- synthetic digits (§3.2)

DIGIT_C0_NAMES = ["blank", "─", "│", "┌", "┐", "└", "┘", "├", "┤"]
DIGIT_C1_NAMES = ["blank", "H stroke", "V stroke", "joint", "dot speck", "scratch speck"]
DIGIT_CLASSES = (9, 6)

_B, _H, _V, _J, _A, _S = range(6)  # C1 ids
_TEMPLATES = {  # C0 class -> 3x3 over C1 (the stroke through the cell centre)
    "blank": [[_B, _B, _B], [_B, _B, _B], [_B, _B, _B]],
    "─": [[_B, _B, _B], [_H, _H, _H], [_B, _B, _B]],
    "│": [[_B, _V, _B], [_B, _V, _B], [_B, _V, _B]],
    "┌": [[_B, _B, _B], [_B, _J, _H], [_B, _V, _B]],
    "┐": [[_B, _B, _B], [_H, _J, _B], [_B, _V, _B]],
    "└": [[_B, _V, _B], [_B, _J, _H], [_B, _B, _B]],
    "┘": [[_B, _V, _B], [_H, _J, _B], [_B, _B, _B]],
    "├": [[_B, _V, _B], [_B, _J, _H], [_B, _V, _B]],
    "┤": [[_B, _V, _B], [_H, _J, _B], [_B, _V, _B]],
}
_SPECK_CORNERS = [None, (0, 0), (2, 2), (0, 2)]  # the 4 manifestations: clean, or a speck in a free corner
# Which speck a C0 class sheds: dots (A) for blank and the top-side strokes, scratches (B)
# for the others. Tying the speck kind to the parent class gives A and B different
# label-frequency patterns F_c (§3.1's "linearly independent in pairs"); were both
# shed by every class alike, F_A = F_B and no training could tell them apart.
_DOT_SHEDDERS = {"blank", "─", "┌", "┐"}

DIGIT_GLYPHS = {  # digit -> 3 rows of C0 box-drawing characters (" " = blank)
    0: ["┌─┐", "│ │", "└─┘"],
    1: [" │ ", " │ ", " │ "],
    2: ["──┐", "┌─┘", "└──"],
    3: ["──┐", "──┤", "──┘"],
    4: ["│ │", "└─┤", "  │"],
    5: ["┌──", "└─┐", "──┘"],
    6: ["┌──", "├─┐", "└─┘"],
    7: ["──┐", "  │", "  │"],
    8: ["┌─┐", "├─┤", "└─┘"],
    9: ["┌─┐", "└─┤", "──┘"],
}


def _digit_final_patches() -> np.ndarray:
    """C1 -> 4 greyscale 3x3 patches each: (6, 4, 3, 3) float32."""
    z = np.zeros((3, 3))

    def at(*cells: tuple[tuple[int, int], float]) -> np.ndarray:
        p = z.copy()
        for (r, c), v in cells:
            p[r, c] = v
        return p

    row = np.zeros((3, 3))
    row[1] = 1.0
    plus = row.copy()
    plus[:, 1] = 1.0
    # Every patch has its own direction: the clustering is cosine (§5.1), so two
    # patches that differ only in brightness (or an all-black patch) would be
    # one and the same point to it. Variations are therefore in shape.
    h = [
        row,
        row + at(((0, 0), 0.5), ((0, 1), 0.5), ((0, 2), 0.5)),  # thickened above
        row + at(((2, 0), 0.5), ((2, 1), 0.5), ((2, 2), 0.5)),  # thickened below
        row + at(((0, 1), 0.5), ((2, 1), 0.5)),  # with a notch
    ]
    floor = np.full((3, 3), 0.05)  # background: a dim floor, never exactly black
    sets = [
        [floor, floor + at(((0, 0), 0.1)), floor + at(((2, 2), 0.1)), floor + at(((0, 2), 0.1), ((2, 0), 0.1))],
        h,  # H
        [p.T for p in h],  # V
        [plus, plus + at(((0, 0), 0.4), ((0, 2), 0.4), ((2, 0), 0.4), ((2, 2), 0.4)),
         plus + at(((0, 0), 0.5), ((2, 2), 0.5)), plus + at(((0, 2), 0.5), ((2, 0), 0.5))],  # J
        [at(((1, 1), 0.5)), at(((1, 1), 0.5), ((1, 2), 0.4)), at(((1, 1), 0.5), ((2, 1), 0.4)),
         at(((1, 1), 0.5), ((1, 0), 0.4))],  # A: a dot, or a two-pixel dot
        [at(((0, 0), 0.3), ((1, 1), 0.3)), at(((1, 1), 0.3), ((2, 2), 0.3)),
         at(((0, 2), 0.3), ((1, 1), 0.3)), at(((1, 1), 0.3), ((2, 0), 0.3))],  # B: a faint diagonal scratch
    ]  # fmt: skip
    return np.array(sets, dtype=np.float32)


def _digit_c1_patches() -> np.ndarray:
    """C0 -> 4 manifestations over C1 each: (9, 4, 3, 3) int64."""
    out = np.empty((9, 4, 3, 3), dtype=np.int64)
    for c, name in enumerate(DIGIT_C0_NAMES):
        base = np.array(_TEMPLATES[name], dtype=np.int64)
        speck = _A if name in _DOT_SHEDDERS else _S
        for j, corner in enumerate(_SPECK_CORNERS):
            p = base.copy()
            if corner is not None:
                p[corner] = speck
            out[c, j] = p
    return out


def _digit_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """(10, 3, 3) int64 C0 ids and (10,) parity labels, in digit order 0..9."""
    index = {ch: i for i, ch in enumerate(DIGIT_C0_NAMES)}
    index[" "] = 0
    glyphs = np.array([[[index[ch] for ch in row] for row in DIGIT_GLYPHS[dg]] for dg in range(10)], dtype=np.int64)
    return glyphs, np.arange(10, dtype=np.int64) % 2


def _digits_model(noise: float) -> HierarchicalModel:
    glyphs, parity = _digit_glyphs()
    return HierarchicalModel(
        "digits", 2, 3, 3, list(DIGIT_CLASSES), 4, 2, False, float(noise),
        [_digit_c1_patches(), _digit_final_patches()],
        {"glyphs": glyphs, "glyph_labels": parity}, ["even", "odd"],
    )  # fmt: skip


__all__ = [
    "DIGIT_C0_NAMES",
    "DIGIT_C1_NAMES",
    "DIGIT_GLYPHS",
    "HierarchicalModel",
    "build_model",
    "generate",
    "one_hot_top",
    "sample",
    "sample_with_stats",
    "validate",
]
