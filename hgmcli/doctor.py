"""``hgm doctor``: what this environment has, and what hgm's ``auto`` choices
pick on it (compare ``python -m torch.utils.collect_env``).

* ``report()`` -> a dict of plain types (JSON-ready): versions of python, torch,
  CUDA, FAISS, numpy, scikit-learn and the rest; whether FAISS has GPU support;
  the devices and threads; the k-means, SVM and device backends that ``auto``
  resolves to; where ``$HGM_DATA`` points and what it holds.
* ``rows(report)`` -> ``(section, key, value)`` strings, for a table.
* ``missing(report, pieces)`` -> one reason per requested piece that is absent
  (``--require faiss,cuda,faiss-gpu``); the CLI exits 1 with them.

Nothing here fails on a broken install: a package that will not import is
reported with its error, which is the point of a doctor."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

from .artifacts import dist_version
from .errors import ConfigError

# Distributions whose versions the report lists (None: not installed).
PACKAGES = (
    "torch", "torchvision", "numpy", "scikit-learn", "faiss-cpu", "faiss-gpu",
    "typer", "rich", "pyyaml", "matplotlib", "tensorboard", "onnx", "onnxscript", "onnxruntime",
)

# Environment variables that change what hgm does or sees.
ENV_VARS = (
    "HGM_DATA", "HGM_CIFAR", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
)

# --require pieces -> what each means (the error for an unknown one lists them).
PIECES = {
    "cuda": "torch sees a CUDA device",
    "data": "$HGM_DATA points at an existing dataset",
    "faiss": "FAISS imports (faiss-cpu or faiss-gpu)",
    "faiss-gpu": "FAISS is built with GPU support and sees a GPU",
    "onnx": "onnx and onnxscript are installed (hgm export --format onnx)",
    "onnxruntime": "onnxruntime is installed (checks ONNX exports)",
    "tensorboard": "tensorboard is installed (event files in run folders)",
}

GiB = 1 << 30


def report() -> dict:
    """The environment, as nested dicts of str / int / float / bool / None."""
    import torch

    from . import __version__
    from .presets import bundled

    faiss = _faiss_info()
    rep = {
        "hgm": {
            "version": __version__,
            "distribution": dist_version("hgmcli"),
            "location": str(Path(__file__).resolve().parent),
            "bundled_configs": len(bundled()),
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "platform": platform.platform(),
        },
        "packages": {name: dist_version(name) for name in PACKAGES},
        "torch": {
            "version": torch.__version__,
            "cuda_build": torch.version.cuda,  # None: a CPU-only build
            "cuda_available": torch.cuda.is_available(),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "nvidia_driver": _nvidia_driver(),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
        },
        "faiss": faiss,
        "devices": _devices(torch),
        "auto": _auto(),
        "data": _data(os.environ.get("HGM_DATA") or None),
        "environment": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "warnings": [],
    }
    if len(faiss["distributions"]) > 1:
        rep["warnings"].append(
            f"{' and '.join(faiss['distributions'])} are installed together: they ship the same `faiss` module, "
            "so one hides the other; pip uninstall all but one"
        )
    if faiss["gpu_build"] and not rep["torch"]["cuda_available"]:
        rep["warnings"].append("FAISS is built for the GPU but torch sees no CUDA device: k-means runs on the CPU")
    if rep["torch"]["cuda_available"] and faiss["version"] is not None and not faiss["gpu_build"]:
        rep["warnings"].append(
            "a CUDA device but a CPU-only FAISS: `auto` k-means uses the torch backend on the GPU; "
            "for FAISS on the GPU: pip uninstall faiss-cpu && pip install 'hgmcli[gpu]'"
        )
    return rep


def parse_pieces(text: str | Iterable[str]) -> list[str]:
    """``"faiss,cuda"`` (or a list of such strings, for a repeated option) ->
    ``["faiss", "cuda"]``; an unknown piece is a ``ConfigError`` listing the known ones."""
    parts = [text] if isinstance(text, str) else list(text)
    pieces: list[str] = []
    for part in parts:
        for piece in part.split(","):
            piece = piece.strip().lower()
            if not piece:
                continue
            if piece not in PIECES:
                raise ConfigError(f"--require {piece!r}: unknown piece; expected some of {', '.join(PIECES)}")
            if piece not in pieces:
                pieces.append(piece)
    return pieces


def missing(rep: dict, pieces: Iterable[str]) -> list[str]:
    """One ``"piece: why, and how to get it"`` line per requested piece that is absent."""
    out = []
    for piece in parse_pieces(list(pieces)):
        why = _why_missing(rep, piece)
        if why is not None:
            out.append(f"{piece}: {why}")
    return out


def rows(rep: dict) -> list[tuple[str, str, str]]:
    """``report()`` flattened to (section, key, value) strings, in reading order."""
    pk, th, fa, au, da = rep["packages"], rep["torch"], rep["faiss"], rep["auto"], rep["data"]
    cuda = (
        f"{th['cuda_build']} (build); "
        + ("available" if th["cuda_available"] else "no device visible")
        if th["cuda_build"] else "none (CPU-only torch build)"
    )
    if th["cuda_available"] and th["cudnn"]:
        cuda += f"; cuDNN {th['cudnn']}"
    if th["nvidia_driver"]:
        cuda += f"; driver {th['nvidia_driver']}"
    if fa["version"] is None:
        faiss = "not installed" + (f" ({fa['error']})" if fa["error"] else "")
    else:
        faiss = f"{fa['version']} ({', '.join(fa['distributions']) or 'unknown distribution'})"
    dist = rep["hgm"]["distribution"]
    out = [
        ("hgm", "version", rep["hgm"]["version"] + (f" (hgmcli {dist})" if dist else " (not installed: run from a source tree)")),
        ("hgm", "location", rep["hgm"]["location"]),
        ("hgm", "bundled configs", str(rep["hgm"]["bundled_configs"])),
        ("python", "version", f"{rep['python']['version']} ({rep['python']['implementation']}) {rep['python']['executable']}"),
        ("python", "platform", rep["python"]["platform"]),
        ("versions", "torch", th["version"]),
        ("versions", "CUDA", cuda),
        ("versions", "FAISS", faiss),
        ("versions", "numpy", _v(pk["numpy"])),
        ("versions", "scikit-learn", _v(pk["scikit-learn"])),
    ]
    for name in ("torchvision", "typer", "rich", "pyyaml", "matplotlib", "tensorboard", "onnx", "onnxscript", "onnxruntime"):
        out.append(("versions", name, _v(pk[name])))
    gpu = "no FAISS" if fa["version"] is None else (
        f"yes, {fa['gpus']} GPU(s) visible" if fa["gpu_build"] else "no (CPU-only build)"
    )
    out.append(("FAISS", "GPU support", gpu))
    if fa["threads"] is not None:
        out.append(("FAISS", "OpenMP threads", str(fa["threads"])))
    for dev in rep["devices"]:
        out.append(("devices", dev["name"], dev["description"]))
    out.append(("threads", "torch", f"{th['threads']} intra-op, {th['interop_threads']} inter-op"))
    out.append(("auto picks", "device", au["device"]))
    out.append(("auto picks", "k-means backend", f"{au['kmeans']} ({au['kmeans_why']})"))
    out.append(("auto picks", "SVM solver", au["svm_why"]))
    out.append(("data", "$HGM_DATA", da["path"] or "not set (pass --data)"))
    if da["path"]:
        out.append(("data", "holds", da["holds"]))
    for k, v in rep["environment"].items():
        if k != "HGM_DATA":
            out.append(("environment", k, v))
    for w in rep["warnings"]:
        out.append(("warning", "", w))
    return out


# --------------------------------------------------------------------------- pieces


def _why_missing(rep: dict, piece: str) -> str | None:
    fa, th, pk = rep["faiss"], rep["torch"], rep["packages"]
    if piece == "faiss":
        if fa["version"] is None:
            err = f" ({fa['error']})" if fa["error"] else ""
            return f"FAISS is not installed{err}: pip install 'hgmcli[faiss]' (CPU) or 'hgmcli[gpu]' (CUDA)"
    elif piece == "faiss-gpu":
        if fa["version"] is None:
            err = f" ({fa['error']})" if fa["error"] else ""
            return f"FAISS is not installed{err}: pip install 'hgmcli[gpu]' (or make setup GPU=1)"
        if not fa["gpu_build"]:
            return (f"the installed FAISS {fa['version']} ({', '.join(fa['distributions']) or '?'}) has no GPU support: "
                    "pip uninstall faiss-cpu && pip install 'hgmcli[gpu]' (or make setup GPU=1)")
        if fa["gpus"] == 0:
            return f"FAISS {fa['version']} is built for the GPU but sees no GPU (CUDA_VISIBLE_DEVICES, driver?)"
    elif piece == "cuda":
        if th["cuda_build"] is None:
            return f"torch {th['version']} is a CPU-only build: install a CUDA build of torch"
        if not th["cuda_available"]:
            return f"torch {th['version']} sees no CUDA device (CUDA_VISIBLE_DEVICES, driver?)"
    elif piece == "data":
        da = rep["data"]
        if da["path"] is None:
            return "$HGM_DATA is not set"
        if not da["exists"]:
            return f"$HGM_DATA points at {da['path']}, which does not exist"
    elif piece == "onnx":
        absent = [n for n in ("onnx", "onnxscript") if pk[n] is None]
        if absent:
            return f"{' and '.join(absent)} not installed: pip install 'hgmcli[onnx]'"
    elif pk[piece] is None:  # tensorboard, onnxruntime
        extra = "onnx" if piece == "onnxruntime" else piece
        return f"{piece} is not installed: pip install 'hgmcli[{extra}]'"
    return None


# --------------------------------------------------------------------------- sections



def _v(version: str | None) -> str:
    return version if version is not None else "not installed"


def _faiss_info() -> dict:
    dists = [d for d in ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11") if dist_version(d) is not None]
    info = {"version": None, "distributions": dists, "gpu_build": False, "gpus": 0,
            "threads": None, "error": None}
    try:
        import faiss
    except ImportError as e:
        info["error"] = None if not dists else f"import failed: {e}"
        return info
    except Exception as e:  # a broken binary wheel raises all sorts; report it, do not crash
        info["error"] = f"import failed: {type(e).__name__}: {e}"
        return info
    info["version"] = getattr(faiss, "__version__", "unknown")
    info["gpu_build"] = hasattr(faiss, "StandardGpuResources")
    if info["gpu_build"]:
        info["gpus"] = int(faiss.get_num_gpus())
    if hasattr(faiss, "omp_get_max_threads"):
        info["threads"] = int(faiss.omp_get_max_threads())
    return info


def _nvidia_driver() -> str | None:
    """The kernel driver's version, from /proc (Linux); None elsewhere or without one."""
    try:
        line = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    words = line.split()
    return next((w for w in words if w[:1].isdigit() and "." in w), line.strip())


def _devices(torch) -> list[dict]:
    from .features import available_memory, meminfo

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    total = meminfo("MemTotal")
    mem = f"{available_memory() / GiB:.1f} GiB available" + (f" of {total / GiB:.1f} GiB" if total else "")
    devs = [{
        "name": "cpu",
        "description": f"{platform.machine()}, {cores} cores usable (of {os.cpu_count()}); {mem}",
        "cores": cores,
        "memory_bytes": total,
    }]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devs.append({
                "name": f"cuda:{i}",
                "description": f"{p.name}, {p.total_memory / GiB:.1f} GiB, compute capability {p.major}.{p.minor}",
                "cores": None,
                "memory_bytes": int(p.total_memory),
            })
    return devs





def _auto() -> dict:
    """What ``--device auto``, k-means ``backend: auto`` and ``svm_backend: auto``
    resolve to here — by calling the functions the stages call."""
    from .classify import SKLEARN_MAX_ENTRIES, svm_backend
    from .device import resolve_device
    from .features import CACHE_SHARE, memory_budget
    from .kmeans import available_backends, faiss_has_gpu, pick_backend

    dev = resolve_device("auto")
    kmeans = pick_backend("auto", dev)
    if kmeans == "faiss":
        why = f"FAISS on the {'GPU' if dev.type == 'cuda' and faiss_has_gpu() else 'CPU'}"
    elif "faiss" not in available_backends():
        why = f"FAISS is not installed; torch k-means on {dev.type}"
    elif dev.type == "cuda":
        why = "the device is CUDA and FAISS is a CPU-only build; torch k-means on the GPU"
    else:
        why = f"torch k-means on {dev.type}"
    # classify.svm_backend: LinearSVC for small (n, dim) float64 features that fit the
    # stage's memory budget on the CPU; the torch L-BFGS solver otherwise.
    # One tiny feature set shows which side of that rule this device is on.
    budget = memory_budget("auto")
    svm = svm_backend("auto", 1, 1, dev, budget)
    if svm == "sklearn":
        svm_why = (f"sklearn (LinearSVC) up to {SKLEARN_MAX_ENTRIES:,} feature values (examples x features) that "
                   f"fit in {budget / GiB:.1f} GiB as float64 ({CACHE_SHARE:.0%} of available RAM), else torch (L-BFGS)")
    else:
        svm_why = f"torch (L-BFGS on {dev.type}): the features are on the GPU"
    return {"device": str(dev), "kmeans": kmeans, "kmeans_why": why, "svm": svm, "svm_why": svm_why,
            "svm_budget_bytes": budget}


def _data(root: str | None) -> dict:
    if root is None:
        return {"path": None, "exists": False, "source": None, "holds": None}
    path = Path(root).expanduser().resolve()
    if not path.exists():
        return {"path": str(path), "exists": False, "source": None, "holds": "nothing: no such file or folder"}
    from . import data

    try:
        source, found = data._detect(path, False, "train")  # the detection --data itself uses
    except Exception as e:  # a bad dataset is something to report, not to crash on
        return {"path": str(path), "exists": True, "source": None, "holds": f"unreadable: {e}"}
    return {"path": str(path), "exists": True, "source": source, "holds": _describe(source, found)}


def _describe(source: str, path: Path) -> str:
    if source == "npz":
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                keys = sorted(n.removesuffix(".npy") for n in z.namelist())
        except (OSError, zipfile.BadZipFile) as e:
            return f".npz {path.name}, unreadable: {e}"
        main = [k for k in ("x_train", "y_train", "x_test", "y_test") if k in keys]
        more = f", {len(keys) - len(main)} more arrays" if len(keys) > len(main) else ""
        return f".npz {path.name} ({', '.join(main) or 'no x_train/y_train'}{more})"
    if source == "cifar10":
        from .data import CIFAR_TEST_FILE, CIFAR_TRAIN_FILES

        train = sum((path / name).exists() for name in CIFAR_TRAIN_FILES)
        test = "test_batch" if (path / CIFAR_TEST_FILE).exists() else "no test_batch"
        return f"CIFAR-10 at {path} ({train} of {len(CIFAR_TRAIN_FILES)} training batches, {test})"
    if source == "imagefolder":
        classes = [p for p in path.iterdir() if p.is_dir()]
        return f"an image folder with {len(classes)} class folders" if classes else "a folder with no dataset in it"
    return f"{source} at {path}"
