"""Datasets behind one ``--data`` option: a ``.npz``, CIFAR-10's python batches,
Fashion-MNIST / MNIST IDX files, or an image-folder tree; split into
train / val / test as the paper does.

``--data`` must be a regular file or a folder, and may be

* a ``.npz`` written by ``hgm generate`` (or any ``.npz`` with ``x_train``,
  ``y_train``, ``x_test``, ``y_test``), read with ``allow_pickle=False``. Images
  are channels-first, (N, C, H, W) or (N, H, W); an array that looks
  channels-last, (N, H, W, C), is refused rather than reinterpreted. Pixels are
  uint8, integers in 0..255 (read as uint8) or finite floats of magnitude at
  most 1e6. Every member's ``.npy`` header is checked against the member's size
  before anything is allocated;
* a folder holding ``cifar-10-batches-py/`` or that folder itself. The
  pickles are read by :class:`_CifarUnpickler`, which resolves only numpy's
  array reconstruction, ``numpy.ndarray`` and ``numpy.dtype``: a crafted
  pickle is refused before anything in it runs;
* Fashion-MNIST or MNIST in torchvision's layout: a root holding
  ``FashionMNIST/raw/`` or ``MNIST/raw/`` (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-*`` for the test split; each file may
  be gzipped), the ``FashionMNIST`` / ``MNIST`` folder, or the folder holding
  the IDX files (Fashion-MNIST when its or its parent's name contains
  "fashion", MNIST otherwise; only the label names differ). A root holding
  several datasets is read in this order: CIFAR-10, Fashion-MNIST, MNIST
  (``$HGM_DATA`` has always meant CIFAR-10 there); name the dataset's folder to
  pick another;
* an image-folder tree ``root/<class>/<image>`` (torchvision's ImageFolder
  layout), or ``root/train/<class>/...`` with an optional ``root/test/``.
  Symbolic links are followed only inside ``root``; a folder reached twice (a
  link loop, or one class's folder linked under another) or one file under
  two classes is an error, and only regular files of at most
  ``MAX_IMAGE_BYTES`` are read.

Splits (§6: "the last 10,000 training images as validation"): ``val`` is the
last ``val_size`` rows of the training set (CIFAR-10, Fashion-MNIST, MNIST:
10,000 by default), ``train`` the rows before it, ``test`` the test set. Image
folders are ordered by class, so their training rows are first permuted with
``seed``. A training split needs at least two classes.

Images stay in the source's dtype: uint8 for CIFAR-10, IDX files and image
folders (50,000 x 3 x 32 x 32 = 150 MB), float32 for synthetic data.
Normalisation is a recipe (:func:`normalization`) applied per batch by the
consumer, never a float copy of the whole set.

Measured on the 2-core dev box (no GPU, other jobs running): the five
CIFAR-10 training batches load in 0.2-0.9 s; the 50,000-JPEG tree
(``cifar10-train-jpeg.tar.gz``) decodes in 9-12 s with
``torchvision.io.decode_image``, one image at a time (PIL: 18 s; a thread pool
made both slower on 2 cores), plus about 5 s to import torchvision;
Fashion-MNIST's gzipped 60,000 training images decompress in 0.3-1 s. All are
cached per process, so a pipeline reads them once.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import re
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import DEFLATE_MAX_RATIO, check_memory, load_npz
from .config import DataConfig
from .errors import DataError
from .progress import Progress, no_progress

SPLITS = ("train", "val", "test")

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"  # of the official archive (torchvision checks it)

# Fashion-MNIST / MNIST in torchvision's layout: <root>/<folder>/raw/<stem>[.gz]
IDX_FOLDERS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}  # source -> folder, in detection order
IDX_FILES = {  # part -> (images, labels)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_LABEL_NAMES = {  # torchvision's class names
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "mnist": [str(i) for i in range(10)],
}

# Validation rows when val_size is None: the paper's (and the usual) last 10,000
# training images for the benchmarks, else this fraction.
PAPER_VAL_SIZE = {"cifar10": 10_000, "fashion-mnist": 10_000, "mnist": 10_000}
AUTO_VAL_FRACTION = 0.1

MAX_IMAGE_BYTES = 64 << 20  # one image file; a 4096x4096 RGB PNG stored raw is 48 MiB
MAX_PICKLE_BYTES = 256 << 20  # one CIFAR-10 batch is 31 MB


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
    elif source in IDX_FOLDERS:
        part = _idx_part(path, part_name, source)
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
        if split == "train":
            _check_two_classes(part.labels[rows], part.label_names, path)
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
    mode = path.stat().st_mode if path.exists() else stat.S_IFDIR  # missing: a folder to download into
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(
            f"{path}: not a regular file or a folder but {_kind(mode)}; --data takes a .npz, "
            "a CIFAR-10 or Fashion-MNIST/MNIST folder, or an image folder"
        )
    if stat.S_ISREG(mode):
        if path.suffix != ".npz":
            raise DataError(
                f"{path}: not a dataset (expected a .npz, a CIFAR-10 or Fashion-MNIST/MNIST folder or an "
                "image folder; extract archives first)"
            )
        return "npz", path
    if (path / CIFAR_FOLDER).is_dir():
        folder = path / CIFAR_FOLDER
    elif path.name == CIFAR_FOLDER or (path / CIFAR_TRAIN_FILES[0]).exists():
        folder = path
    elif idx := _detect_idx(path):
        return idx
    elif download:
        folder = path / CIFAR_FOLDER
    else:
        return "imagefolder", path
    if download:
        needed = (CIFAR_TEST_FILE,) if split == "test" else CIFAR_TRAIN_FILES
        if any(not (folder / name).exists() for name in needed):
            _download_cifar(folder.parent)
    return "cifar10", folder


def _detect_idx(path: Path) -> tuple[str, Path] | None:
    """(source, raw folder) when ``path`` is a root holding FashionMNIST/ or MNIST/
    (in that order), one of those folders, or a folder holding IDX files."""
    for source, name in IDX_FOLDERS.items():
        if (path / name).is_dir():
            return source, path / name / "raw"
    for source, name in IDX_FOLDERS.items():
        if path.name == name:
            return source, path / "raw"
    if any((path / stem).exists() or (path / f"{stem}.gz").exists() for stems in IDX_FILES.values() for stem in stems):
        fashion = "fashion" in path.name.lower() or "fashion" in path.parent.name.lower()
        return ("fashion-mnist" if fashion else "mnist"), path
    return None


def _val_count(val_size: float | str, n: int, source: str) -> int:
    """Rows in the validation slice: "auto", >= 1 a count, (0, 1) a fraction, 0 none."""
    if val_size == "auto":
        count = PAPER_VAL_SIZE.get(source) or round(AUTO_VAL_FRACTION * n)
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


def _check_two_classes(labels: np.ndarray, names: list[str], path: Path) -> None:
    """Every stage that loads the training split trains a classifier on it (or feeds one)."""
    if len(labels) and labels.min() == labels.max():
        raise DataError(
            f"{path}: the training split holds only class {names[int(labels[0])]!r} ({len(labels)} images); "
            "a classifier needs at least two classes"
        )


# --------------------------------------------------------------------------- bounded reading
#
# Every data file is opened by _open_regular: a FIFO, a device or a socket is refused
# before it is opened for reading (a FIFO would block, /dev/zero never ends), and sizes
# are checked against what the file can hold and what memory can take before anything
# is allocated.

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _open_regular(path: Path, max_bytes: int | None = None) -> io.BufferedReader:
    """``path`` opened for binary reading, if it is a regular file of at most ``max_bytes``."""

    def check(st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file but {_kind(st.st_mode)}")
        if max_bytes is not None and st.st_size > max_bytes:
            raise DataError(f"{path}: {st.st_size} bytes, more than the {max_bytes} this reader accepts")

    try:
        check(os.stat(path))  # before opening: opening a device can do things of its own
        # O_NONBLOCK: should the file have become a FIFO since, open() must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    f = os.fdopen(fd, "rb")
    try:
        check(os.fstat(fd))  # what was opened is what was checked
    except DataError:
        f.close()
        raise
    return f


def _listdir(d: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(d) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{d}: cannot read: {e.strerror or e}") from None


def _read_file(path: Path, max_bytes: int) -> bytes:
    """The whole of a regular file of at most ``max_bytes``."""
    with _open_regular(path, max_bytes) as f:
        try:
            raw = f.read(max_bytes + 1)  # + 1: a file that grew since the size check is still caught
        except OSError as e:
            raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) > max_bytes:
        raise DataError(f"{path}: more than the {max_bytes} bytes this reader accepts")
    return raw



# --------------------------------------------------------------------------- .npz

_NPZ_LATENT = re.compile(r"^(latent|patch)_(train|test)_(\d+)$")


def _npz_part(path: Path, part: str) -> _Part:
    """``x_<part>``/``y_<part>`` (+ latents) of an hgm or foreign ``.npz``."""
    key = ("npz", str(path), _mtime(path), part)
    if key not in _CACHE:
        _CACHE[key] = _read_npz_part(path, part)
    return _CACHE[key]


def _read_npz_part(path: Path, part: str) -> _Part:
    with _open_regular(path) as f:  # a regular file (not a FIFO or device), checked before anything reads it
        arrays, meta = load_npz(path, "dataset", require_meta=False, f=f, error=DataError)
    xk, yk = f"x_{part}", f"y_{part}"
    for k in (xk, yk):
        if k not in arrays:
            raise DataError(f"{path}: no array '{k}' (a dataset .npz holds x_train, y_train, x_test, y_test)")
    x = _npz_images(arrays[xk], f"{path}: '{xk}'")
    y = arrays[yk]
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


MAX_ABS_PIXEL = 1e6  # float pixels beyond this are not images ([0, 1], [0, 255], standardised, 16-bit...)


def _npz_images(x: np.ndarray, what: str) -> np.ndarray:
    """An .npz image array as (N, C, H, W): uint8, or float32 for floats. Integer
    pixels must be 0..255 (they become uint8, read like CIFAR-10's); floats finite
    and at most MAX_ABS_PIXEL in magnitude. Layouts are never guessed: (N, H, W, C)
    is refused, not transposed."""
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W), a view
    if x.ndim != 4:
        raise DataError(f"{what} has shape {x.shape}; expected (N, C, H, W) or (N, H, W)")
    n, c, h, w = x.shape
    if w in (1, 3, 4) and c > 4 and h > 4:  # e.g. (N, 32, 32, 3): H x W images stored channels-last
        raise DataError(
            f"{what} has shape {x.shape}, which looks channels-last (N, H, W, C); hgm expects "
            f"channels-first (N, C, H, W): save x.transpose(0, 3, 1, 2)"
        )
    if n == 0:
        raise DataError(f"{what} holds no images")
    if 0 in (c, h, w):
        raise DataError(f"{what} has shape {x.shape}: images without pixels")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{what} has {x.dtype} pixels in {lo}..{hi}; integer images must lie in 0..255 (uint8)")
        return x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{what} has dtype {x.dtype}; expected uint8 or floating-point pixels")
    for _, batch in iter_batches(x, 4096):  # bounded temporaries, not a full copy
        peak = float(np.abs(batch).max())  # NaN if any pixel is NaN
        if not np.isfinite(peak):
            raise DataError(f"{what} contains NaN or infinite values")
        if peak > MAX_ABS_PIXEL:
            raise DataError(f"{what} has pixels of magnitude {peak:.3g}; images are expected within +-{MAX_ABS_PIXEL:.0e}")
    return x.astype(np.float32, copy=False)


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
        with _open_regular(path, MAX_PICKLE_BYTES) as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise DataError(
            f"{path}: refused to unpickle {e.target} (CIFAR-10 pickles contain only numpy arrays)"
        ) from None
    except DataError:
        raise
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


# --------------------------------------------------------------------------- Fashion-MNIST / MNIST (IDX)


def _idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem``, else ``folder/stem.gz`` (torchvision keeps both after a download)."""
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.exists():
            return p
    return None


def _idx_part(folder: Path, part: str, source: str) -> _Part:
    """The training or test images (N, 1, 28, 28) uint8 and labels of an IDX folder."""
    stems = IDX_FILES[part]
    files = [_idx_file(folder, stem) for stem in stems]
    for stem, f in zip(stems, files):
        if f is None:
            if part == "test":
                raise DataError(
                    f"{folder / stem}[.gz]: missing, so there is no test split; "
                    "evaluate on --split val (the last 10,000 training images)"
                )
            raise DataError(f"{folder / stem}[.gz]: missing ({IDX_FOLDERS[source]} needs {' and '.join(stems)} in {folder})")
    key = ("idx", str(folder), tuple((str(f), _mtime(f)) for f in files))
    if key not in _CACHE:
        images, labels = _read_idx(files[0], 3), _read_idx(files[1], 1)
        if len(labels) != len(images):
            raise DataError(f"{files[1]}: {len(labels)} labels, but {files[0].name} holds {len(images)} images")
        names = IDX_LABEL_NAMES[source]
        _check_labels(labels, len(names), str(files[1]))
        _CACHE[key] = _Part(images[:, None], labels.astype(np.int64), names)  # (N, 1, H, W), a view
    return _CACHE[key]


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (3: images, 1: labels),
    gzipped or not. The header (magic 0x0000080<ndim>, then the dimensions as
    big-endian int32) must describe exactly the bytes that follow."""
    with _open_regular(path) as raw:
        size = os.fstat(raw.fileno()).st_size
        gz = path.suffix == ".gz"
        try:
            f = gzip.GzipFile(fileobj=raw) if gz else raw
            head = f.read(4)
            magic = 0x800 + ndim
            if len(head) < 4 or struct.unpack(">I", head)[0] != magic:
                what = "images" if ndim == 3 else "labels"
                raise DataError(
                    f"{path}: not an IDX file of {what} (magic {head.hex() or 'missing'}, expected {magic:08x})"
                )
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            if 0 in dims:
                raise DataError(f"{path}: IDX dimensions {dims} describe no data")
            count = math.prod(dims)
            # Before allocating: the header's count must fit the file (exactly, uncompressed).
            if gz and count > DEFLATE_MAX_RATIO * size:
                raise DataError(f"{path}: the IDX header claims {dims} = {count} bytes, more than a {size}-byte gzip file can hold")
            if not gz and count != size - 4 - 4 * ndim:
                raise DataError(
                    f"{path}: the IDX header claims {dims} = {count} bytes, but {size - 4 - 4 * ndim} follow "
                    "(truncated, or not this kind of IDX file)"
                )
            check_memory(count, path, "its IDX data", DataError)
            out = np.empty(count, dtype=np.uint8)
            view, got = memoryview(out), 0
            while got < count and (n := f.readinto(view[got:])):
                got += n
            extra = len(f.read(1))
        except (OSError, EOFError, zlib.error) as e:  # gzip: bad header, truncated stream, bad CRC
            raise DataError(f"{path}: not a readable IDX file ({type(e).__name__}: {e})") from None
    if got != count or extra:
        raise DataError(
            f"{path}: the IDX header claims {dims} = {count} bytes, but "
            f"{'only ' + str(got) if got < count else 'more'} follow (truncated or corrupt)"
        )
    return out.reshape(dims)


# --------------------------------------------------------------------------- image folders


def _imagefolder_part(root: Path, part: str, progress: Progress) -> _Part:
    """All images of ``root/[train|test/]<class>/*`` as (N, 3, H, W) uint8, ordered by class."""
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
    classes, samples = _find_images(tree, root)
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
                check_memory(n * img.nbytes, tree, f"{n} images of {img.shape[2]}x{img.shape[1]}", DataError)
                images = np.empty((n, *img.shape), dtype=np.uint8)
            elif img.shape != images.shape[1:]:
                raise DataError(
                    f"{file}: image is {img.shape[2]}x{img.shape[1]}, but {samples[0][0]} is "
                    f"{images.shape[3]}x{images.shape[2]}; all images must have the same size"
                )
            images[i] = img
            if i % 1000 == 999 or i == n - 1:
                progress("decoding images", i + 1, n)
    _CACHE[key] = _Part(images, labels, classes)
    return _CACHE[key]


def _find_images(tree: Path, root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(file, class id)]) of ``tree/<class>/**/<image>``: what
    torchvision's ImageFolder finds (sorted class folders, files with an image
    extension, sub-folders included, the same order), but bounded. Symbolic
    links are followed only to targets inside ``root``; a folder reached twice
    (a loop, or one class linked under another) and one file under two classes
    are errors; every image must be a regular file of at most MAX_IMAGE_BYTES."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    seen_dirs: dict[tuple[int, int], Path] = {}
    seen_files: dict[tuple[int, int], tuple[Path, int]] = {}

    def follow(p: Path) -> os.stat_result:
        """stat of what ``p`` names, refusing a link that leaves ``root``."""
        if p.is_symlink() and not Path(os.path.realpath(p)).is_relative_to(root):
            raise DataError(
                f"{p}: a symbolic link to {os.path.realpath(p)}, outside {root}; "
                "image folders follow links only inside the data folder"
            )
        try:
            return p.stat()
        except OSError as e:  # a dangling link, a loop of links (ELOOP)...
            raise DataError(f"{p}: cannot read: {e.strerror or e}") from None

    def enter(d: Path, st: os.stat_result) -> None:
        first = seen_dirs.setdefault((st.st_dev, st.st_ino), d)
        if first != d:
            raise DataError(
                f"{d}: the same folder as {first} (a symbolic link loop, or a folder linked under "
                "two names); an image folder must be a plain tree"
            )

    def walk(top: Path, label: int) -> list[tuple[str, list[tuple[Path, int]]]]:
        """[(folder, its images)] for top and its sub-folders, like os.walk(followlinks=True);
        a stack, not recursion, so that no depth of nesting overflows."""
        found, stack = [], [top]
        while stack:
            d = stack.pop()
            enter(d, follow(d))
            files = []
            for entry in _listdir(d):
                p = Path(entry.path)
                is_image = entry.name.lower().endswith(IMG_EXTENSIONS)
                if not (is_image or entry.is_dir()):  # is_dir() follows links; errors and loops give False
                    continue
                st = follow(p)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(p)
                elif not stat.S_ISREG(st.st_mode):
                    raise DataError(f"{p}: not a regular file but {_kind(st.st_mode)}; image folders hold only image files")
                elif st.st_size > MAX_IMAGE_BYTES:
                    raise DataError(f"{p}: {st.st_size} bytes, more than the {MAX_IMAGE_BYTES} accepted for one image")
                else:
                    first, first_label = seen_files.setdefault((st.st_dev, st.st_ino), (p, label))
                    if first_label != label:
                        raise DataError(f"{p}: the same file as {first}, under two classes")
                    files.append((p, label))
            found.append((str(d), files))
        return found

    enter(tree, follow(tree))  # root/train may be a link too
    classes = [e.name for e in _listdir(tree) if e.is_dir()]
    if not classes:
        raise DataError(
            f"{tree}: not a dataset: no class folders (--data takes a .npz, a folder holding {CIFAR_FOLDER}/ "
            "or FashionMNIST/, or an image folder root/<class>/<image>)"
        )
    samples, empty = [], []
    for label, name in enumerate(classes):
        found = [f for _, fs in sorted(walk(tree / name, label)) for f in fs]  # sorted(os.walk(...)) order
        samples += found
        if not found:
            empty.append(name)
    if empty:
        raise DataError(f"{tree}: no images in class folder(s) {', '.join(empty)} (image extensions: {', '.join(IMG_EXTENSIONS)})")
    return classes, samples


def _image_decoder():
    """bytes -> (3, H, W) uint8 via torchvision.io.decode_image, or None when this
    torchvision no longer has it (then every image goes through PIL)."""
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return None
    return lambda raw: decode_image(torch.frombuffer(raw, dtype=torch.uint8), mode=ImageReadMode.RGB).numpy()


def _read_image(file: Path, decode) -> np.ndarray:
    """One image as (3, H, W) uint8 RGB: torchvision.io for JPEG/PNG/WebP/GIF,
    PIL (ImageFolder's default loader) for BMP, TIFF, PPM."""
    from PIL import Image

    raw = bytearray(_read_file(file, MAX_IMAGE_BYTES))
    if decode is not None and raw:
        try:
            return decode(raw)
        except (RuntimeError, ValueError):
            pass  # a format torchvision.io does not decode, or a corrupt file: PIL decides
    try:
        with Image.open(io.BytesIO(raw)) as img:
            return np.asarray(img.convert("RGB")).transpose(2, 0, 1)  # PIL gives (H, W, 3)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise DataError(f"{file}: not a readable image ({type(e).__name__})") from None


__all__ = ["Dataset", "SPLITS", "clear_cache", "data_path", "iter_batches", "load_dataset", "normalization",
           "resolve_root", "with_flips"]


def with_flips(ds: Dataset) -> Dataset:
    """``ds`` and its horizontal mirror images (labels repeated): flip
    augmentation for everything hgm trains, as a dataset twice the size. The
    split is named ``<split>+flips`` so cached features of the two never mix."""
    images = np.concatenate([ds.images, ds.images[..., ::-1]])
    return dataclasses.replace(ds, images=images, labels=np.concatenate([ds.labels, ds.labels]),
                               split=f"{ds.split}+flips", latents={})
