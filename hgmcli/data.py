"""Datasets behind one ``--data`` option: a ``.npz``, CIFAR-10's python batches,
or an image-folder tree; split into train / val / test as the paper does.

``--data`` may be

* a ``.npz`` written by ``hgm generate`` (or any ``.npz`` with ``x_train``,
  ``y_train``, ``x_test``, ``y_test``), read with ``allow_pickle=False``;
* a folder holding ``cifar-10-batches-py/`` or that folder itself. The
  pickles are read by :class:`_CifarUnpickler`, which resolves only numpy's
  array reconstruction, ``numpy.ndarray`` and ``numpy.dtype``: a crafted
  pickle is refused before anything in it runs;
* an image-folder tree ``root/<class>/<image>`` (torchvision's ImageFolder
  layout), or ``root/train/<class>/...`` with an optional ``root/test/``.

Splits (§6: "the last 10,000 training images as validation"): ``val`` is the
last ``val_size`` rows of the training set, ``train`` the rows before it,
``test`` the test set. Image folders are ordered by class, so their training
rows are first permuted with ``seed``.

Images stay in the source's dtype: uint8 for CIFAR-10 and image folders
(50,000 x 3 x 32 x 32 = 150 MB), float32 for synthetic data. Normalisation is
a recipe (:func:`normalization`) applied per batch by the consumer, never a
float copy of the whole set.

Measured on the 2-core dev box (no GPU, other jobs running): the five
CIFAR-10 training batches load in 0.2-0.9 s; the 50,000-JPEG tree
(``cifar10-train-jpeg.tar.gz``) decodes in 9-12 s with
``torchvision.io.decode_image``, one image at a time (PIL: 18 s; a thread pool
made both slower on 2 cores), plus about 5 s to import torchvision. Both are
cached per process, so a pipeline reads them once.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Iterator
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import load_npz
from .config import DataConfig
from .errors import DataError
from .progress import Progress, no_progress

SPLITS = ("train", "val", "test")

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
CIFAR_VAL_SIZE = 10_000  # the paper's validation slice: the last 10,000 training images
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"  # of the official archive (torchvision checks it)

AUTO_VAL_FRACTION = 0.1  # val slice when val_size is None and the data is not CIFAR-10


@dataclass
class Dataset:
    """One split of a dataset, in memory.

    ``images`` rows may share memory with the per-process cache (slices are
    views): treat them as read-only and normalise per batch."""

    images: np.ndarray  # (N, C, H, W); uint8 (CIFAR-10, image folders) or float32 (.npz floats)
    labels: np.ndarray  # (N,) int64 class ids in [0, len(label_names))
    label_names: list[str]
    source: str  # "npz" | "cifar10" | "imagefolder"
    split: str  # "train" | "val" | "test"
    path: Path  # the resolved data path (.npz file, cifar-10-batches-py folder, image-folder root)
    latents: dict[str, np.ndarray] = field(default_factory=dict)  # "latent_<i>" / "patch_<i>", rows as images
    meta: dict = field(default_factory=dict)  # the .npz's metadata (generative model params) or {}
    model_arrays: dict[str, np.ndarray] = field(default_factory=dict)  # "model_*" arrays of the .npz

    @property
    def synthetic(self) -> bool:
        """True when the data carries the generative model that produced it."""
        return "model" in self.meta

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class _Part:
    """The whole training set or the whole test set of a source, before splitting."""

    images: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    latents: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    model_arrays: dict[str, np.ndarray] = field(default_factory=dict)


# Parsed arrays per process, keyed on (what, resolved path, mtimes): the
# pipeline's stages all read the same data; CIFAR-10 and image folders are
# parsed once. Cleared by clear_cache() (tests).
_CACHE: dict[tuple, object] = {}


def clear_cache() -> None:
    _CACHE.clear()


# --------------------------------------------------------------------------- public API


def resolve_root(root: str | os.PathLike | None, *, must_exist: bool = True) -> Path:
    """``--data`` (or ``$HGM_DATA`` when None) as an absolute path.

    ``must_exist=False`` is for ``download=True``: the folder is created."""
    if root is None or str(root) == "":
        root = os.environ.get("HGM_DATA") or None
    if root is None:
        raise DataError("no data given: pass --data or set HGM_DATA")
    p = Path(root).expanduser().resolve()
    if must_exist and not p.exists():
        raise DataError(f"data not found: {p}")
    return p


def data_path(cfg: DataConfig) -> Path:
    """The file or folder that holds the data — what stages hash as their input
    (``Dataset.path`` of every split)."""
    path = resolve_root(cfg.root, must_exist=not cfg.download)
    return _detect(path, False, "train")[1] if path.exists() else path


def load_dataset(
    cfg: DataConfig, split: str = "train", *, seed: int = 0, progress: Progress | None = None
) -> Dataset:
    """Load one split of ``cfg.root``.

    ``seed`` orders image folders before the validation slice is cut;
    ``progress`` reports decoding of image folders (the only slow source)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    path = resolve_root(cfg.root, must_exist=not cfg.download)
    source, path = _detect(path, cfg.download, split)
    part_name = "test" if split == "test" else "train"
    if source == "npz":
        part = _npz_part(path, part_name)
    elif source == "cifar10":
        part = _cifar_part(path, part_name)
    else:
        part = _imagefolder_part(path, part_name, progress or no_progress)

    rows: slice | np.ndarray = slice(None)
    if split != "test":
        n = len(part.labels)
        n_train = n - _val_count(cfg.val_size, n, source)
        if split == "val":
            if n_train == n:
                raise DataError(f"{path}: no validation split (val_size is {cfg.val_size}); set data.val_size")
            rows = slice(n_train, n)
        else:
            if cfg.limit is not None and cfg.limit < 1:
                raise DataError(f"data.limit must be at least 1, got {cfg.limit}")
            rows = slice(0, n_train if cfg.limit is None else min(n_train, cfg.limit))
        if source == "imagefolder":
            # Ordered by class: permute first, or val would be the last classes. (Fancy
            # indexing copies these rows; npz/CIFAR slices stay views of the cache.)
            rows = np.random.default_rng(seed).permutation(n)[rows]
    return Dataset(
        images=part.images[rows],
        labels=part.labels[rows],
        label_names=part.label_names,
        source=source,
        split=split,
        path=path,
        latents={k: v[rows] for k, v in part.latents.items()},
        meta=part.meta,
        model_arrays=part.model_arrays,
    )


def normalization(cfg: DataConfig, train: Dataset) -> dict:
    """The recipe ``x -> (x * scale - mean[c]) / std[c]``, as plain JSON types.

    "none": identity; "scale": uint8 to [0, 1]; "standardize": scale, then
    per-channel mean/std of the *train* split, accumulated in float64 over
    batches (never a float copy of the set). A constant channel gets std 1."""
    mode = cfg.normalize
    if mode == "auto":  # a constant shift could make distinct synthetic patches collinear under cosine
        mode = "none" if train.synthetic else "standardize"
    channels = train.images.shape[1]
    scale = 1.0 / 255.0 if (mode != "none" and train.images.dtype == np.uint8) else 1.0
    mean, std = [0.0] * channels, [1.0] * channels
    if mode == "standardize":
        if len(train) == 0:
            raise DataError(f"{train.path}: cannot standardize on an empty {train.split} split")
        # Shift by the first batch's mean so the sum of squares does not cancel.
        shift = None
        total = np.zeros(channels)
        total_sq = np.zeros(channels)
        count = 0
        for _, batch in iter_batches(train.images, 1024):
            x = batch.astype(np.float64) * scale  # (B, C, H, W), 1024 CIFAR images: 25 MB
            if shift is None:
                shift = x.mean(axis=(0, 2, 3))
            x -= shift[None, :, None, None]
            total += x.sum(axis=(0, 2, 3))
            total_sq += np.square(x).sum(axis=(0, 2, 3))
            count += x.shape[0] * x.shape[2] * x.shape[3]
        mu = total / count
        var = np.maximum(total_sq / count - mu**2, 0.0)
        mean = (mu + shift).tolist()
        std = [float(s) if s > 1e-12 else 1.0 for s in np.sqrt(var)]
    elif mode not in ("none", "scale"):
        raise DataError(f"unknown data.normalize {mode!r}: expected none, scale or standardize")
    return {"mode": mode, "scale": float(scale), "mean": [float(m) for m in mean], "std": std}


def iter_batches(images: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, images[start:start + batch_size])``; the batches are views."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        yield start, images[start : start + batch_size]


# --------------------------------------------------------------------------- shared helpers


def _detect(path: Path, download: bool, split: str) -> tuple[str, Path]:
    """(source, resolved data path) for ``--data``; downloads CIFAR-10 if asked."""
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(
                f"{path}: not a dataset (expected a .npz, a CIFAR-10 folder or an image folder; "
                "extract archives first)"
            )
        return "npz", path
    if (path / CIFAR_FOLDER).is_dir():
        folder = path / CIFAR_FOLDER
    elif path.name == CIFAR_FOLDER or (path / CIFAR_TRAIN_FILES[0]).exists():
        folder = path
    elif download:
        folder = path / CIFAR_FOLDER
    else:
        return "imagefolder", path
    if download:
        needed = (CIFAR_TEST_FILE,) if split == "test" else CIFAR_TRAIN_FILES
        if any(not (folder / name).exists() for name in needed):
            _download_cifar(folder.parent)
    return "cifar10", folder


def _val_count(val_size: float | str, n: int, source: str) -> int:
    """Rows in the validation slice: "auto", >= 1 a count, (0, 1) a fraction, 0 none."""
    if val_size == "auto":
        count = CIFAR_VAL_SIZE if source == "cifar10" else round(AUTO_VAL_FRACTION * n)
    elif val_size < 0:
        raise DataError(f"data.val_size must not be negative, got {val_size}")
    elif 0 < val_size < 1:
        count = max(1, round(val_size * n))  # a requested fraction never gives an empty slice
    elif float(val_size).is_integer():
        count = int(val_size)
    else:
        raise DataError(f"data.val_size {val_size}: expected a count (>= 1), a fraction in (0, 1) or 0")
    if count >= n:
        raise DataError(f"data.val_size {val_size} gives {count} validation images, but there are only {n} training images")
    return count


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return -1


# --------------------------------------------------------------------------- .npz

_NPZ_LATENT = re.compile(r"^(latent|patch)_(train|test)_(\d+)$")


def _npz_part(path: Path, part: str) -> _Part:
    """``x_<part>``/``y_<part>`` (+ latents) of an hgm or foreign ``.npz``."""
    key = ("npz", str(path), _mtime(path), part)
    if key not in _CACHE:
        _CACHE[key] = _read_npz_part(path, part)
    return _CACHE[key]


def _read_npz_part(path: Path, part: str) -> _Part:
    arrays, meta = load_npz(path, "dataset", require_meta=False)  # ArtifactError if unreadable
    xk, yk = f"x_{part}", f"y_{part}"
    for k in (xk, yk):
        if k not in arrays:
            raise DataError(f"{path}: no array '{k}' (a dataset .npz holds x_train, y_train, x_test, y_test)")
    x, y = arrays[xk], arrays[yk]
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W), a view
    if x.ndim != 4:
        raise DataError(f"{path}: '{xk}' has shape {x.shape}; expected (N, C, H, W) or (N, H, W)")
    if len(x) == 0:
        raise DataError(f"{path}: '{xk}' holds no images")
    if x.dtype != np.uint8:
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise DataError(f"{path}: '{xk}' has dtype {x.dtype}; expected numbers")
        x = x.astype(np.float32, copy=False)
        for _, batch in iter_batches(x, 4096):  # bounded temporary, not a full bool copy
            if not np.isfinite(batch).all():
                raise DataError(f"{path}: '{xk}' contains NaN or infinite values")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: '{yk}' must be a vector of integer labels; got {y.dtype} with shape {y.shape}")
    if len(y) != len(x):
        raise DataError(f"{path}: '{yk}' has {len(y)} labels but '{xk}' has {len(x)} images")

    # hgm generate records them in the model's params; a foreign .npz gets "0", "1", ...
    model = meta.get("model")
    names = meta.get("label_names") or (model.get("label_names") if isinstance(model, dict) else None)
    if not names:
        top = max(int(arrays[k].max()) for k in ("y_train", "y_test") if k in arrays and arrays[k].size)
        names = [str(i) for i in range(top + 1)]
    _check_labels(y, len(names), f"{path}: '{yk}'")

    latents = {}
    for name, a in arrays.items():
        m = _NPZ_LATENT.match(name)
        if m and m.group(2) == part:
            if len(a) != len(x):
                raise DataError(f"{path}: '{name}' has {len(a)} rows but '{xk}' has {len(x)} images")
            latents[f"{m.group(1)}_{m.group(3)}"] = a
    model_arrays = {k: v for k, v in arrays.items() if k.startswith("model_")}
    return _Part(x, y.astype(np.int64, copy=False), [str(n) for n in names], latents, meta, model_arrays)


def _check_labels(y: np.ndarray, n_classes: int, what: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"{what}: labels must lie in 0..{n_classes - 1}; found {int(y.min())}..{int(y.max())}")


# --------------------------------------------------------------------------- CIFAR-10


def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _Refused(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.target = f"{module}.{name}"


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only the globals CIFAR-10's pickles name (checked with
    pickletools on the real files): numpy's array reconstruction, ndarray and
    dtype. Dicts, lists, strings and ints need no globals. Any other global
    (``os.system``, ``builtins.eval``, ``_codecs.encode``...) is refused before
    it is called, so a crafted file executes nothing."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,  # written by numpy 1.x / Python 2
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,  # written by numpy 2
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module: str, name: str):
        get = self._ALLOWED.get((module, name))
        if get is None:
            raise _Refused(module, name)
        return get()


def _text(v: object) -> object:
    """Python 2 strings come back as bytes under encoding="bytes": make them str."""
    return v.decode("latin1") if isinstance(v, bytes) else v


def _unpickle(path: Path) -> dict:
    """One CIFAR-10 pickle as a dict with str keys.

    encoding="bytes" reads Python 2 strings as bytes (then normalised by
    _text), so str-keyed and bytes-keyed files come out the same."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise DataError(
            f"{path}: refused to unpickle {e.target} (CIFAR-10 pickles contain only numpy arrays)"
        ) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    except Exception as e:  # arbitrary bytes make the pickle machine raise almost anything
        raise DataError(f"{path}: not a readable CIFAR-10 pickle (truncated or corrupt: {type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (expected a dict, got {type(obj).__name__})")
    return {_text(k): v for k, v in obj.items()}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data (n, 3072) uint8, labels (n,) int64) of one batch file."""
    if not path.exists():
        raise DataError(f"{path}: missing (CIFAR-10 needs {', '.join(CIFAR_TRAIN_FILES)} in {path.parent})")
    d = _unpickle(path)
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (n, 3072); got {what}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' is not a list of integers") from None
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but 'labels' has shape {labels.shape}")
    _check_labels(labels, 10, str(path))
    return data, labels


def _cifar_part(folder: Path, part: str) -> _Part:
    """The 50,000 training images (data_batch_1..5 in order) or test_batch."""
    if part == "test" and not (folder / CIFAR_TEST_FILE).exists():
        raise DataError(
            f"{folder / CIFAR_TEST_FILE}: missing, so there is no test split; "
            "evaluate on --split val (the last 10,000 training images)"
        )
    files = [CIFAR_TEST_FILE] if part == "test" else list(CIFAR_TRAIN_FILES)
    key = ("cifar10", str(folder), tuple((f, _mtime(folder / f)) for f in files + ["batches.meta"]))
    if key not in _CACHE:
        parts = [_read_cifar_batch(folder / f) for f in files]
        n = sum(len(d) for d, _ in parts)
        images = np.empty((n, 3072), dtype=np.uint8)  # filled in place: no second 150 MB copy
        start = 0
        for d, _ in parts:
            images[start : start + len(d)] = d
            start += len(d)
        # Rows are R(1024) G(1024) B(1024), each 32x32 row-major: (N, 3, 32, 32) is a reshape.
        images = images.reshape(n, 3, 32, 32)
        labels = np.concatenate([lab for _, lab in parts])
        names = [str(i) for i in range(10)]
        if (folder / "batches.meta").exists():
            meta_names = _unpickle(folder / "batches.meta").get("label_names")
            if isinstance(meta_names, list) and len(meta_names) == 10:
                names = [str(_text(x)) for x in meta_names]
        _CACHE[key] = _Part(images, labels, names)
    return _CACHE[key]


def _download_cifar(root: Path) -> None:
    """Fetch and extract the official archive into ``root`` (creates
    ``root/cifar-10-batches-py``). The files are then read like any copy, with
    the restricted unpickler, not torchvision's CIFAR10 class."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(CIFAR_URL, download_root=str(root), filename=CIFAR_ARCHIVE, md5=CIFAR_MD5)
    except Exception as e:  # URLError, OSError, RuntimeError (MD5), tarfile errors...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not download CIFAR-10 from {CIFAR_URL} into {root}: {first}") from None


# --------------------------------------------------------------------------- image folders


def _imagefolder_part(root: Path, part: str, progress: Progress) -> _Part:
    """All images of ``root/[train|test/]<class>/*`` as (N, 3, H, W) uint8, ordered by class."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if (root / "train").is_dir():
        tree = root / part
        if not tree.is_dir():
            raise DataError(f"{tree}: missing, so there is no {part} split; evaluate on --split val")
    elif part == "test":
        raise DataError(f"{root}: an image folder without train/ and test/ subfolders has no test split; use --split val")
    else:
        tree = root
    key = ("imagefolder", str(tree), _mtime(tree), tuple(_mtime(d) for d in sorted(tree.iterdir()) if d.is_dir()))
    if key in _CACHE:
        return _CACHE[key]
    try:
        classes, class_to_idx = find_classes(tree)
        samples = make_dataset(tree, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:  # torchvision: no class folders, or a class without images
        raise DataError(
            f"{tree}: not a dataset: {e} (--data takes a .npz, a folder holding {CIFAR_FOLDER}/, "
            "or an image folder root/<class>/<image>)"
        ) from None
    if not samples:
        raise DataError(f"{tree}: no images found")
    images = None
    labels = np.array([c for _, c in samples], dtype=np.int64)
    n = len(samples)
    decode = _image_decoder()
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image decoders (in favour of torchcodec) with a
        # warning per call; until they go, they are 2x faster than PIL here (see top).
        warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
        for i, (file, _) in enumerate(samples):
            img = _read_image(file, decode)  # (3, H, W) uint8
            if images is None:
                images = np.empty((n, *img.shape), dtype=np.uint8)
            elif img.shape != images.shape[1:]:
                raise DataError(
                    f"{file}: image is {img.shape[2]}x{img.shape[1]}, but {samples[0][0]} is "
                    f"{images.shape[3]}x{images.shape[2]}; all images must have the same size"
                )
            images[i] = img
            if i % 1000 == 999 or i == n - 1:
                progress("decoding images", i + 1, n)
    _CACHE[key] = _Part(images, labels, list(classes))
    return _CACHE[key]


def _image_decoder():
    """bytes -> (3, H, W) uint8 via torchvision.io.decode_image, or None when this
    torchvision no longer has it (then every image goes through PIL)."""
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return None
    return lambda raw: decode_image(torch.frombuffer(raw, dtype=torch.uint8), mode=ImageReadMode.RGB).numpy()


def _read_image(file: str, decode) -> np.ndarray:
    """One image as (3, H, W) uint8 RGB: torchvision.io for JPEG/PNG/WebP/GIF,
    torchvision's PIL loader (ImageFolder's default) for BMP, TIFF, PPM."""
    from torchvision.datasets.folder import pil_loader

    try:
        with open(file, "rb") as f:
            raw = bytearray(f.read())
    except OSError as e:
        raise DataError(f"{file}: cannot read: {e.strerror or e}") from None
    if decode is not None and raw:
        try:
            return decode(raw)
        except (RuntimeError, ValueError):
            pass  # a format torchvision.io does not decode, or a corrupt file: PIL decides
    try:
        return np.asarray(pil_loader(file)).transpose(2, 0, 1)  # PIL gives (H, W, 3)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise DataError(f"{file}: not a readable image ({type(e).__name__})") from None


__all__ = ["Dataset", "SPLITS", "clear_cache", "iter_batches", "load_dataset", "normalization", "resolve_root"]


def with_flips(ds: Dataset) -> Dataset:
    """``ds`` and its horizontal mirror images (labels repeated): flip
    augmentation for everything hgm trains, as a dataset twice the size. The
    split is named ``<split>+flips`` so cached features of the two never mix."""
    images = np.concatenate([ds.images, ds.images[..., ::-1]])
    return dataclasses.replace(ds, images=images, labels=np.concatenate([ds.labels, ds.labels]),
                               split=f"{ds.split}+flips", latents={})
