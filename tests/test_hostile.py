"""Hostile inputs through the command line (issue 14): every case ends in one
``Error:`` line, exit 1, no traceback, and leaves every file as it was — no
input destroyed, no special file replaced, no partial or temporary file."""

import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hgmcli.cli import app

REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tiny good chain of artifacts, plus hostile look-alikes, made once."""
    d = tmp_path_factory.mktemp("chain")
    for args in (
        ["generate", "--out", d / "d.npz", "--n-train", 200, "--n-test", 20, "--depth", 2],
        ["cluster", "--data", d / "d.npz", "--patches", 500, "--out", d / "c.npz"],
        ["train-layer", "--data", d / "d.npz", "--centroids", d / "c.npz", "--mode", "gd-linear", "--out", d / "n.pt"],
        ["fit-svm", "--data", d / "d.npz", "--model", d / "n.pt", "--out", d / "cls.pt"],
        ["export", "--model", d / "n.pt", "--classifier", d / "cls.pt", "--out", d / "e.pt"],
    ):
        r = invoke(*args)
        assert r.exit_code == 0, r.output
    rng = np.random.default_rng(0)
    (d / "r.npz").write_bytes(rng.bytes(3000))
    (d / "r.pt").write_bytes(rng.bytes(3000))
    header = io.BytesIO()  # 2 KB whose header claims 10^12 images
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 1, 8, 8)})
    with zipfile.ZipFile(d / "bomb.npz", "w") as z:
        z.writestr("x_train.npy", header.getvalue() + bytes(2000))
    os.link(d / "d.npz", d / "hard.npz")
    (d / "soft.npz").symlink_to("d.npz")
    return d


@pytest.fixture
def here(chain, tmp_path, monkeypatch):
    """A private copy of the chain as the working directory (links kept as links)."""
    shutil.copytree(chain, tmp_path, dirs_exist_ok=True, symlinks=True)
    os.unlink(tmp_path / "hard.npz")
    os.link(tmp_path / "d.npz", tmp_path / "hard.npz")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(folder):
    """Every entry's kind and bytes: what 'nothing replaced, nothing half-written' compares."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = os.lstat(p)
        content = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[str(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode), content)
    return out


def assert_one_error(r, *expected):
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.output and r.stdout == ""
    for text in expected:
        assert text in r.stderr, r.stderr


SAME_FILE = [
    pytest.param("cluster --data d.npz --patches 500 --out d.npz", "d.npz", id="cluster-out-is-data"),
    pytest.param("cluster --data d.npz --patches 500 --out ./d.npz", "d.npz", id="relative-spelling"),
    pytest.param("cluster --data d.npz --patches 500 --out hard.npz", "hard.npz", id="hard-link"),
    pytest.param("cluster --data d.npz --patches 500 --out soft.npz", "soft.npz", id="symlink"),
    pytest.param("train-layer --data d.npz --centroids c.npz --mode gd-linear --out c.npz", "c.npz", id="train-layer"),
    pytest.param("fit-svm --data d.npz --model n.pt --out n.pt", "n.pt", id="fit-svm"),
    pytest.param("evaluate --data d.npz --model n.pt --classifier cls.pt --out cls.pt", "cls.pt", id="evaluate"),
    pytest.param("export --model n.pt --classifier cls.pt --out n.pt", "n.pt", id="export-model"),
    pytest.param("export --model n.pt --classifier cls.pt --out cls.pt", "cls.pt", id="export-classifier"),
]


@pytest.mark.parametrize("command, out", SAME_FILE)
def test_out_is_an_input(here, command, out):
    before = snapshot(here)
    r = invoke(*command.split())
    assert_one_error(r, f"Error: cannot write {out}: it is the same file as the input ")
    assert snapshot(here) == before


def _special(here, kind):
    p = here / kind
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "sock":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod needs root (and only root could replace a device)")
        os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers, in tmp_path
    elif kind == "dir":
        p.mkdir()
    elif kind == "fifo-link":
        os.mkfifo(here / "fifo2")
        p.symlink_to("fifo2")
    elif kind == "loop":
        p.symlink_to("loop")
    return p.name


@pytest.mark.parametrize(
    "kind, message",
    [
        ("fifo", "it is a FIFO, not a regular file"),
        ("sock", "it is a socket, not a regular file"),
        ("device", "it is a character device, not a regular file"),
        ("fifo-link", "it is a FIFO, not a regular file"),
        ("dir", "it is a directory"),
        ("loop", "Too many levels of symbolic links"),
    ],
)
def test_out_is_not_a_regular_file(here, kind, message):
    out = _special(here, kind)
    before = snapshot(here)
    r = invoke("generate", "--out", out, "--n-train", 20, "--n-test", 10, "--depth", 2)
    assert_one_error(r, f"Error: cannot write {out}: {message}")
    assert snapshot(here) == before


def test_symlink_out_is_written_through(here):
    (here / "runs").mkdir()
    (here / "latest.npz").symlink_to("runs/c.npz")
    r = invoke("cluster", "--data", "d.npz", "--patches", 500, "--out", "latest.npz")
    assert r.exit_code == 0, r.output
    assert (here / "latest.npz").is_symlink() and (here / "runs" / "c.npz").is_file()
    assert not list(here.rglob("*.tmp"))


@pytest.mark.parametrize(
    "command, expected",
    [
        pytest.param("cluster --data d.npz --model e.pt --out o.npz",
                     "Error: e.pt is a TorchScript export, not an hgm network", id="export-as-model"),
        pytest.param("evaluate --data d.npz --classifier e.pt",
                     "Error: e.pt is a TorchScript export, not an hgm classifier", id="export-as-classifier"),
        pytest.param("cluster --data d.npz --model r.pt --out o.npz",
                     "Error: r.pt is not a readable hgm .pt file (not a zip file: truncated, or another format)",
                     id="random-bytes-pt"),
        pytest.param("train-layer --data d.npz --centroids r.npz --out o.pt",
                     "r.npz: not a readable .npz (not a zip archive of .npy arrays: File is not a zip file)",
                     id="random-bytes-centroids"),
        pytest.param("cluster --data r.npz --out o.npz",
                     "r.npz: not a readable .npz (not a zip archive of .npy arrays: File is not a zip file)",
                     id="random-bytes-data"),
        pytest.param("fit-svm --data d.npz --model d.npz --out o.pt",
                     "Error: d.npz is not an hgm .pt file (a zip file, but not one torch.save wrote)",
                     id="npz-as-model"),
        pytest.param("train-layer --data d.npz --centroids n.pt --out o.pt",
                     "data.pkl' is not a .npy array", id="pt-as-centroids"),
        pytest.param("cluster --data bomb.npz --out o.npz",
                     "'x_train' claims shape (1000000000000, 1, 8, 8) of float32 (256000000000000 bytes), but holds",
                     id="header-bomb"),
    ],
)
def test_foreign_files_as_inputs(here, command, expected):
    import warnings

    before = snapshot(here)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = invoke(*command.split())
    assert_one_error(r, expected)
    assert not [w for w in caught if "torch.load" in str(w.message)]  # torch's TorchScript warning is gone
    assert snapshot(here) == before


def test_a_non_utf8_stdout_does_not_crash_after_the_write(tmp_path):
    env = {**os.environ, "PYTHONIOENCODING": "ascii",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "hgmcli", "generate", "--out", "dé.npz", "--n-train", "20", "--n-test", "10",
               "--depth", "2"]
    r = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "d\\xe9.npz" in r.stdout and (tmp_path / "dé.npz").is_file()
