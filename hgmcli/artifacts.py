"""The one place that writes and reads hgm artifacts.

Every artifact carries a metadata dict (stored as a JSON *string*, so loading
never unpickles anything):

    {"hgm": "artifact", "format_version": 1, "kind": "centroids",
     "stage": "cluster", "config": {...resolved stage config...}, "seed": 0,
     "versions": {"hgm": ..., "torch": ..., ...},
     "inputs": {"data": {"path": ..., "sha256": ...}, ...}, "stats": {...}}

* ``.npz`` (datasets, centroids): plain arrays + a 0-d unicode array ``meta``;
  read with ``np.load(allow_pickle=False)``. Zip entries carry a fixed
  timestamp, so the same arrays and metadata give the same bytes.
* ``.pt`` (networks, classifiers): a dict of tensors and plain types with
  ``meta`` as a string; read with ``torch.load(weights_only=True)``.
* Writes are atomic: a temporary file in the destination folder, fsync, then
  ``os.replace``. A killed process never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError

FORMAT_VERSION = 1
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed: byte-identical files for identical content


# --------------------------------------------------------------------------- writing


def ensure_writable(path: str | os.PathLike) -> Path:
    """Create the parent folder of ``path`` and check we may write there.

    Called by stages *before* any long computation, so an unwritable ``--out``
    fails in milliseconds instead of after an hour of k-means."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise ArtifactError(f"cannot write {p}: it is a directory")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot write {p}: {e.strerror or e}") from None
    try:  # a real probe: os.access says yes to root even on read-only mounts
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=p.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ArtifactError(f"cannot write {p}: {e.strerror or e}") from None
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    On any exception the temporary file is removed and nothing is left behind."""
    p = ensure_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_file(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except OSError as e:
        raise ArtifactError(f"cannot write {path}: {e.strerror or e}") from None
    return Path(path)


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: dict) -> Path:
    """Write ``arrays`` and ``meta`` to an uncompressed ``.npz``, atomically."""
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

    return write_file(path, write)


def save_pt(path: str | os.PathLike, payload: Mapping[str, Any], meta: dict) -> Path:
    """Write a dict of tensors / plain values plus ``meta`` to a ``.pt``, atomically."""
    import torch

    if "meta" in payload:
        raise ValueError("'meta' is reserved for the metadata")
    obj = dict(payload)
    obj["meta"] = json.dumps(meta, sort_keys=True)
    return write_file(path, lambda tmp: torch.save(obj, tmp))


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return write_file(path, lambda tmp: tmp.write_text(text))


# --------------------------------------------------------------------------- reading


def _check_exists(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"no such file: {p}")
    if p.is_dir():
        raise ArtifactError(f"{p} is a directory, not an artifact file")
    return p


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


def load_npz(
    path: str | os.PathLike, kind: str | tuple[str, ...] | None = None, *, require_meta: bool = True
) -> tuple[dict[str, np.ndarray], dict]:
    """Read an ``.npz`` with ``allow_pickle=False``; return (arrays, meta).

    ``require_meta=False`` accepts a foreign ``.npz`` (meta comes back ``{}``),
    e.g. a dataset with ``x_train``/``y_train``/... made by another tool."""
    p = _check_exists(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ArtifactError(f"{p} holds object arrays, which hgm refuses to unpickle") from None
        raise ArtifactError(f"{p} is not a readable .npz (truncated or corrupt: {e})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
        raise ArtifactError(f"{p} is not a readable .npz (truncated or corrupt: {e})") from None
    meta_arr = arrays.pop("meta", None)
    if meta_arr is None:
        if require_meta:
            raise ArtifactError(f"{p} is not an hgm artifact (no metadata)")
        return arrays, {}
    if meta_arr.size != 1 or meta_arr.dtype.kind != "U":
        raise ArtifactError(f"{p} is not an hgm artifact (malformed metadata)")
    return arrays, _check_meta(p, str(meta_arr.reshape(-1)[0]), kind)


def load_pt(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """Read a ``.pt`` with ``weights_only=True``; return (payload, meta)."""
    import pickle

    import torch

    p = _check_exists(path)
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


def _dist_version(name: str) -> str | None:
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
        if (ver := _dist_version(dist)) is not None:
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
