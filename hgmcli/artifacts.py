"""The one place that writes and reads hgm artifacts.

Every artifact carries a metadata dict (stored as a JSON *string*, so loading
never unpickles anything):

    {"hgm": "artifact", "format_version": 1, "kind": "centroids",
     "stage": "cluster", "config": {...resolved stage config...}, "seed": 0,
     "versions": {"hgm": ..., "torch": ..., ...},
     "inputs": {"data": {"path": ..., "sha256": ...}, ...}, "stats": {...}}

* ``.npz`` (datasets, centroids): plain arrays + a 0-d unicode array ``meta``;
  read entry by entry with pickles refused and each header's claimed size
  checked before anything is allocated. Zip entries carry a fixed
  timestamp, so the same arrays and metadata give the same bytes.
* ``.pt`` (networks, classifiers): a dict of tensors and plain types with
  ``meta`` as a string; read with ``torch.load(weights_only=True)``.
* Writes are atomic: a temporary file in the destination folder, fsync, then
  ``os.replace``. A killed process never leaves a file that looks finished.
* Writes are guarded (``guard_output``, and again by the writers): never over
  an input, a device, FIFO, socket or directory; a symlink is written through.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import ArtifactError

FORMAT_VERSION = 1
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed: byte-identical files for identical content


# --------------------------------------------------------------------------- writing
#
# Symlinks: an ``--out`` that is a symlink is written *through*: the file it
# points to is replaced (atomically, in the target's folder) and the link stays
# a link, as with ``cp`` or ``sed --follow-symlinks``. Everything else that is
# not a regular file (device, FIFO, socket, directory) is refused: as root,
# ``--out /dev/null`` would otherwise replace /dev/null with a regular file.

_TMP_MARK = ".hgm-"  # in every temporary name this module makes: `.NAME.hgm-XXXXXXXX.tmp` / `.probe`
_SPECIAL = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
            stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}


def _target(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """The regular file a write to ``path`` replaces (symlinks followed), after
    refusing special files and any of ``inputs``; its folder is created."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:  # a new file, or a symlink to one
        st = None
    except OSError as e:  # ELOOP, ENOTDIR, EACCES...
        raise ArtifactError(f"cannot write {p}: {e.strerror or e}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"cannot write {p}: it is a directory")
        if not stat.S_ISREG(st.st_mode):
            kind = _SPECIAL.get(stat.S_IFMT(st.st_mode), "a special file")
            raise ArtifactError(f"cannot write {p}: it is {kind}, not a regular file")
        for inp in inputs:
            # Same (device, inode): catches ./x, hard links and symlinks alike.
            if inp is not None and os.path.exists(inp) and os.path.samefile(inp, p):
                raise ArtifactError(f"cannot write {p}: it is the same file as the input {inp}")
    target = Path(os.path.realpath(p))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot write {p}: {e.strerror or e}") from None
    return target


def guard_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Check that ``path`` may be written, *before* any long computation.

    Refuses (ArtifactError, one line): a directory, a device, FIFO or socket
    (also behind a symlink), the same file as any of ``inputs`` (``None``s are
    skipped; relative paths, hard links and symlinks are recognised), and a
    folder we cannot write. A symlink is written through (see above). So an
    unwritable ``--out`` fails in milliseconds instead of after an hour of
    k-means, and ``--out`` = ``--data`` never destroys the data. Returns
    ``Path(path)``. The writers repeat these checks when they write."""
    target = _target(path, inputs)
    try:  # a real probe: os.access says yes to root even on read-only mounts
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}{_TMP_MARK}", suffix=".probe", dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ArtifactError(f"cannot write {path}: {e.strerror or e}") from None
    return Path(path)


ensure_writable = guard_output  # the stages' older name


def leftover_temporaries(folder: str | os.PathLike) -> list[Path]:
    """This module's temporary files under ``folder`` (left by a killed process)."""
    return [f for pat in (f".*{_TMP_MARK}*.tmp", f".*{_TMP_MARK}*.probe") for f in Path(folder).rglob(pat)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``path``'s target; on success rename it over the target.

    The checks of ``guard_output`` run first (a special file, a directory or
    one of ``inputs`` is never replaced). On any exception the temporary file
    is removed and nothing is left behind."""
    target = _target(path, inputs)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{_TMP_MARK}", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_file(
    path: str | os.PathLike, write: Callable[[Path], None], inputs: Iterable[str | os.PathLike | None] = ()
) -> Path:
    """Atomically write ``path`` with ``write(tmp)``; never over one of ``inputs``."""
    try:
        with atomic_path(path, inputs) as tmp:
            write(tmp)
    except OSError as e:
        raise ArtifactError(f"cannot write {path}: {e.strerror or e}") from None
    return Path(path)


def _meta_inputs(meta: dict) -> list[str]:
    return [v["path"] for v in meta.get("inputs", {}).values() if isinstance(v, dict) and "path" in v]


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: dict) -> Path:
    """Write ``arrays`` and ``meta`` to an uncompressed ``.npz``, atomically (never over an input in ``meta``)."""
    for name, a in arrays.items():
        if name == "meta":
            raise ValueError("'meta' is reserved for the metadata")
        if np.asarray(a).dtype == object:
            raise ValueError(f"array {name!r} has dtype object; artifacts hold plain arrays only")

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            items = list(arrays.items()) + [("meta", np.array(json.dumps(meta, sort_keys=True)))]
            for name, a in items:
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
                with zf.open(info, "w", force_zip64=True) as f:
                    a = np.asarray(a)  # np.ascontiguousarray would turn the 0-d meta into shape (1,)
                    np.lib.format.write_array(f, a if a.flags.c_contiguous else a.copy(order="C"), allow_pickle=False)

    return write_file(path, write, _meta_inputs(meta))


def save_pt(path: str | os.PathLike, payload: Mapping[str, Any], meta: dict) -> Path:
    """Write a dict of tensors / plain values plus ``meta`` to a ``.pt``, atomically (never over its inputs)."""
    import torch

    if "meta" in payload:
        raise ValueError("'meta' is reserved for the metadata")
    obj = dict(payload)
    obj["meta"] = json.dumps(meta, sort_keys=True)
    return write_file(path, lambda tmp: torch.save(obj, tmp), _meta_inputs(meta))


def save_json(path: str | os.PathLike, obj: Any, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return write_file(path, lambda tmp: tmp.write_text(text), inputs)


# --------------------------------------------------------------------------- reading


def _check_exists(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"no such file: {p}")
    if p.is_dir():
        raise ArtifactError(f"{p} is a directory, not an artifact file")
    if not p.is_file():
        raise ArtifactError(f"{p} is not a regular file")
    return p


def _zip_names(p: Path, what: str) -> list[str]:
    """The entry names of the zip file ``p`` (.npz and .pt are both zips), or a one-line error."""
    try:
        with zipfile.ZipFile(p) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise ArtifactError(f"{p} is not {what} (not a zip file: truncated, or another format)") from None


def _check_meta(p: Path, meta_text: str, kind: str | tuple[str, ...] | None) -> dict:
    try:
        meta = json.loads(meta_text)
    except (json.JSONDecodeError, TypeError):
        raise ArtifactError(f"{p} is not an hgm artifact (unreadable metadata)") from None
    if not isinstance(meta, dict) or meta.get("hgm") != "artifact":
        raise ArtifactError(f"{p} is not an hgm artifact (no hgm metadata)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{p} has format version {version}; this hgm ({_hgm_version()}) reads version {FORMAT_VERSION}"
        )
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and meta.get("kind") not in kinds:
        raise ArtifactError(f"{p} is a {meta.get('kind')} file, expected {' or '.join(kinds)}")
    return meta


DEFLATE_MAX_RATIO = 1032  # zlib's deflate cannot expand a byte into more than ~1032


def check_npz(path: Path, f: IO[bytes], error: type[Exception] = ArtifactError) -> int:
    """Refuse an ``.npz`` (``f``, opened on ``path``) that is not a zip of plain
    ``.npy`` arrays, or whose headers claim more than the file can hold or memory
    can take, before ``np.load`` allocates anything: it allocates the header's
    shape first, then reads, so 2 KB claiming 10^12 images would ask for a
    terabyte. Every reader of .npz files goes through here; returns the arrays'
    total bytes. ``error``: the exception raised (the data reader's DataError)."""
    try:
        with zipfile.ZipFile(f) as zf:
            archive = os.fstat(f.fileno()).st_size
            total = sum(_check_npy_member(path, zf, info, archive, error) for info in zf.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, RuntimeError, zlib.error) as e:  # RuntimeError: encrypted
        raise error(f"{path}: not a readable .npz (not a zip archive of .npy arrays: {e})") from None
    check_memory(total, path, "its arrays", error)
    return total


def check_memory(nbytes: int, path: Path, what: str, error: type[Exception] = ArtifactError) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` (read from ``path``) when available memory cannot hold it."""
    from .features import available_memory  # lazy: features imports torch

    free = available_memory()
    if nbytes > free:
        raise error(f"{path}: {what} need {nbytes / 2**30:.1f} GiB, but only {free / 2**30:.1f} GiB of memory is available")


def _check_npy_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: int, error) -> int:
    """Bytes of one member's array, checked against its header and its size in the zip."""
    name = info.filename
    if not name.endswith(".npy"):
        raise error(f"{path}: member {name!r} is not a .npy array")
    name = name[:-4]
    # What the member can really expand to: stored as is, or deflated (at most ~1032x).
    ratio = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: DEFLATE_MAX_RATIO}.get(info.compress_type)
    if ratio is None:
        raise error(f"{path}: '{name}' is compressed with zip method {info.compress_type}; np.savez uses stored or deflated")
    if info.compress_size > archive or info.file_size > ratio * info.compress_size + 1024:
        raise error(f"{path}: '{name}' claims {info.file_size} bytes but holds {info.compress_size}: corrupt")
    with zf.open(info) as m:
        try:
            version = np.lib.format.read_magic(m)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(m)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(m)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as e:
            raise error(f"{path}: '{name}' is not a readable .npy array ({e})") from None
        header = m.tell()
    if dtype.hasobject:
        raise error(f"{path}: '{name}' holds object arrays, which hgm refuses to unpickle")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != info.file_size - header:
        raise error(
            f"{path}: '{name}' claims shape {shape} of {dtype} ({nbytes} bytes), "
            f"but holds {info.file_size - header} bytes: truncated or corrupt"
        )
    return nbytes


def load_npz(
    path: str | os.PathLike,
    kind: str | tuple[str, ...] | None = None,
    *,
    require_meta: bool = True,
    f: IO[bytes] | None = None,
    error: type[Exception] = ArtifactError,
) -> tuple[dict[str, np.ndarray], dict]:
    """Read an ``.npz`` with pickles refused; return (arrays, meta).

    ``require_meta=False`` accepts a foreign ``.npz`` (meta comes back ``{}``),
    e.g. a dataset with ``x_train``/``y_train``/... made by another tool.
    ``f``: ``path`` already opened by the caller (the data reader opens it
    itself, refusing FIFOs and devices), read once and left open; ``error``:
    the exception a bad archive raises (the data reader's DataError)."""
    p = _check_exists(path) if f is None else Path(path)
    arrays = {}
    try:
        with open(p, "rb") if f is None else contextlib.nullcontext(f) as fh:
            check_npz(p, fh, error)
            with zipfile.ZipFile(fh) as zf:
                for info in zf.infolist():
                    arrays[info.filename.removesuffix(".npy")] = np.lib.format.read_array(zf.open(info), allow_pickle=False)
    except MemoryError:
        raise error(f"{p}: its arrays need more memory than is available") from None
    except (ValueError, zipfile.BadZipFile, EOFError, OSError, KeyError, zlib.error) as e:
        raise error(f"{p}: not a readable .npz (truncated or corrupt: {e})") from None
    meta_arr = arrays.pop("meta", None)
    if meta_arr is None:
        if require_meta:
            raise ArtifactError(f"{p} is not an hgm artifact (no metadata)")
        return arrays, {}
    if meta_arr.size != 1 or meta_arr.dtype.kind != "U":
        raise ArtifactError(f"{p} is not an hgm artifact (malformed metadata)")
    return arrays, _check_meta(p, str(meta_arr.reshape(-1)[0]), kind)


def load_pt(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """Read a ``.pt`` with ``weights_only=True``; return (payload, meta).

    The zip listing is looked at first, so a TorchScript file (``hgm export``'s
    output) or a non-zip gets its own one-line error instead of torch's
    warning and its paragraph about ``weights_only``."""
    import pickle

    import torch

    p = _check_exists(path)
    # torch.save puts every entry under one top folder; TorchScript adds constants.pkl beside data.pkl.
    entries = {name.partition("/")[2] for name in _zip_names(p, "a readable hgm .pt file")}
    if "constants.pkl" in entries:
        kinds = (kind,) if isinstance(kind, str) else kind or ("artifact",)
        raise ArtifactError(f"{p} is a TorchScript export, not an hgm {' or '.join(kinds)}")
    if "data.pkl" not in entries:
        raise ArtifactError(f"{p} is not an hgm .pt file (a zip file, but not one torch.save wrote)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{p} is not a readable hgm .pt file (truncated, corrupt or unsafe: {first})") from None
    if not isinstance(obj, dict) or "meta" not in obj:
        raise ArtifactError(f"{p} is not an hgm artifact (no metadata)")
    meta = _check_meta(p, obj.pop("meta"), kind)
    return obj, meta


def load_meta(path: str | os.PathLike) -> dict:
    """Metadata of any artifact, without keeping its arrays (for caching)."""
    p = Path(path)
    if p.suffix == ".npz":
        return load_npz(p)[1]
    return load_pt(p)[1]


# --------------------------------------------------------------------------- metadata

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes; of a folder, of its files' names and bytes.

    Memoised per (path, size, mtime) so a pipeline hashes the dataset once."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key in _HASH_CACHE:
        return _HASH_CACHE[key]
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    digest = h.hexdigest()
    _HASH_CACHE[key] = digest
    return digest


def _hgm_version() -> str:
    from . import __version__

    return __version__


def dist_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    import torch

    v = {
        "hgm": _hgm_version(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }
    for dist in ("faiss-cpu", "faiss-gpu", "scikit-learn"):
        if (ver := dist_version(dist)) is not None:
            v[dist] = ver
    return v


def make_meta(
    kind: str,
    stage: str,
    config: dict,
    *,
    seed: int | None = None,
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
    stats: dict | None = None,
    **extra: Any,
) -> dict:
    """Build the metadata dict; ``inputs`` maps a role ("data", "model", ...) to a path."""
    ins = {}
    for role, path in (inputs or {}).items():
        if path is not None:
            ins[role] = {"path": str(path), "sha256": file_hash(path)}
    meta = {
        "hgm": "artifact",
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "stage": stage,
        "config": config,
        "seed": seed,
        "versions": versions(),
        "inputs": ins,
        "stats": stats or {},
    }
    meta.update(extra)
    return meta


def to_jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays and tuples to plain JSON types (for stats)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


__all__ = [
    "FORMAT_VERSION",
    "atomic_path",
    "ensure_writable",
    "file_hash",
    "guard_output",
    "leftover_temporaries",
    "load_meta",
    "load_npz",
    "load_pt",
    "make_meta",
    "save_json",
    "save_npz",
    "save_pt",
    "to_jsonable",
    "versions",
]
