"""hgm doctor's core: the report is plain data, its `auto` rows are what the
stages would pick, and every missing piece is named with the way to get it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hgmcli import doctor
from hgmcli.device import resolve_device
from hgmcli.errors import ConfigError
from hgmcli.kmeans import pick_backend


@pytest.fixture(scope="module")
def rep() -> dict:
    return doctor.report()


def test_the_report_is_plain_json_ready_data_and_flattens_to_string_rows(rep):
    assert json.loads(json.dumps(rep)) == rep
    assert rep["torch"]["version"] == torch.__version__ and rep["python"]["version"] == sys.version.split()[0]
    assert rep["packages"]["numpy"] == np.__version__
    rows = doctor.rows(rep)
    assert all(len(r) == 3 and all(isinstance(s, str) for s in r) for r in rows)
    keys = {(section, key) for section, key, _ in rows}
    for want in [("versions", "torch"), ("versions", "CUDA"), ("versions", "FAISS"), ("versions", "numpy"),
                 ("versions", "scikit-learn"), ("FAISS", "GPU support"), ("devices", "cpu"), ("threads", "torch"),
                 ("auto picks", "device"), ("auto picks", "k-means backend"), ("auto picks", "SVM solver"),
                 ("data", "$HGM_DATA")]:
        assert want in keys


def test_auto_rows_are_what_the_stages_would_pick(rep):
    dev = resolve_device("auto")
    assert rep["auto"]["device"] == str(dev)
    assert rep["auto"]["kmeans"] == pick_backend("auto", dev)
    assert rep["auto"]["svm"] == ("sklearn" if dev.type == "cpu" else "torch")
    assert rep["torch"]["threads"] == torch.get_num_threads()
    assert [d["name"] for d in rep["devices"]] == ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def test_faiss_is_reported_as_the_kmeans_module_sees_it(rep):
    faiss = pytest.importorskip("faiss", reason="faiss is not installed (pip install 'hgmcli[faiss]')")
    assert rep["faiss"]["version"] == faiss.__version__
    assert rep["faiss"]["gpu_build"] == hasattr(faiss, "StandardGpuResources")
    assert rep["faiss"]["distributions"], "faiss imports, so some faiss wheel is installed"
    assert doctor.missing(rep, ["faiss"]) == []


def test_require_pieces_parse_and_unknown_ones_are_named():
    assert doctor.parse_pieces("faiss, cuda,,faiss") == ["faiss", "cuda"]
    assert doctor.parse_pieces(["faiss-gpu", "Data,faiss"]) == ["faiss-gpu", "data", "faiss"]
    with pytest.raises(ConfigError) as e:
        doctor.parse_pieces("faiss,gpu")
    assert str(e.value) == (
        "--require 'gpu': unknown piece; expected some of cuda, data, faiss, faiss-gpu, onnx, onnxruntime, tensorboard"
    )


def _without_faiss(rep: dict) -> dict:
    r = copy.deepcopy(rep)
    r["faiss"] = {"version": None, "distributions": [], "gpu_build": False, "gpus": 0, "threads": None, "error": None}
    return r


def test_each_missing_piece_says_why_and_how_to_get_it(rep):
    r = _without_faiss(rep)
    r["torch"].update(version="2.13.0+cpu", cuda_build=None, cuda_available=False)
    r["packages"].update(tensorboard=None, onnx="1.23.2", onnxscript=None, onnxruntime=None)
    r["data"] = {"path": None, "exists": False, "source": None, "holds": None}
    assert doctor.missing(r, ["faiss,faiss-gpu,cuda", "data,onnx,onnxruntime,tensorboard"]) == [
        "faiss: FAISS is not installed: pip install 'hgmcli[faiss]' (CPU) or 'hgmcli[gpu]' (CUDA)",
        "faiss-gpu: FAISS is not installed: pip install 'hgmcli[gpu]' (or make setup GPU=1)",
        "cuda: torch 2.13.0+cpu is a CPU-only build: install a CUDA build of torch",
        "data: $HGM_DATA is not set",
        "onnx: onnxscript not installed: pip install 'hgmcli[onnx]'",
        "onnxruntime: onnxruntime is not installed: pip install 'hgmcli[onnx]'",
        "tensorboard: tensorboard is not installed: pip install 'hgmcli[tensorboard]'",
    ]


def test_a_cpu_faiss_on_a_gpu_machine_is_told_to_swap_wheels(rep):
    r = copy.deepcopy(rep)
    r["faiss"].update(version="1.15.1", distributions=["faiss-cpu"], gpu_build=False, gpus=0)
    r["torch"].update(version="2.14.1+cu130", cuda_build="13.0", cuda_available=False)
    assert doctor.missing(r, ["faiss-gpu", "cuda"]) == [
        "faiss-gpu: the installed FAISS 1.15.1 (faiss-cpu) has no GPU support: "
        "pip uninstall faiss-cpu && pip install 'hgmcli[gpu]' (or make setup GPU=1)",
        "cuda: torch 2.14.1+cu130 sees no CUDA device (CUDA_VISIBLE_DEVICES, driver?)",
    ]
    r["faiss"].update(distributions=["faiss-gpu"], gpu_build=True, gpus=0)
    assert doctor.missing(r, ["faiss-gpu"]) == [
        "faiss-gpu: FAISS 1.15.1 is built for the GPU but sees no GPU (CUDA_VISIBLE_DEVICES, driver?)"
    ]
    r["faiss"]["gpus"] = 1
    r["torch"]["cuda_available"] = True
    assert doctor.missing(r, ["faiss", "faiss-gpu", "cuda"]) == []


def test_hgm_data_is_located_and_described(tmp_path, monkeypatch):
    monkeypatch.delenv("HGM_DATA", raising=False)
    assert doctor.report()["data"] == {"path": None, "exists": False, "source": None, "holds": None}
    (row,) = [v for s, k, v in doctor.rows(doctor.report()) if k == "$HGM_DATA"]
    assert row == "not set (pass --data)"

    monkeypatch.setenv("HGM_DATA", str(tmp_path / "nowhere"))
    rep = doctor.report()
    assert rep["data"]["exists"] is False
    assert doctor.missing(rep, ["data"]) == [f"data: $HGM_DATA points at {tmp_path / 'nowhere'}, which does not exist"]

    x = np.zeros((4, 1, 6, 6), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.zeros(4, np.int64), x_test=x, y_test=np.zeros(4, np.int64))
    monkeypatch.setenv("HGM_DATA", str(tmp_path / "d.npz"))
    rep = doctor.report()
    assert rep["data"]["source"] == "npz" and rep["data"]["holds"] == ".npz d.npz (x_train, y_train, x_test, y_test)"
    assert doctor.missing(rep, ["data"]) == []


def test_the_core_modules_import_neither_typer_nor_rich():
    code = (
        "import sys, hgmcli.doctor as d, hgmcli.presets as p; d.report(); p.list_configs(); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', 'click')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------- through the CLI


def _cli():
    from typer.testing import CliRunner

    from hgmcli.cli import app

    return lambda *args: CliRunner().invoke(app, list(args))


def test_hgm_doctor_prints_the_report_and_exits_1_naming_a_missing_piece(monkeypatch):
    run = _cli()
    monkeypatch.delenv("HGM_DATA", raising=False)
    r = run("doctor")
    assert r.exit_code == 0 and "auto picks" in r.stdout and "k-means backend" in r.stdout
    r = run("doctor", "--require", "data")
    assert r.exit_code == 1 and r.stderr.strip() == "Error: missing data: $HGM_DATA is not set"
    r = run("doctor", "--require", "faiss,gpu")
    assert r.exit_code == 1 and r.stderr.strip().startswith("Error: --require 'gpu': unknown piece")
    r = run("doctor", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["missing"] == []
