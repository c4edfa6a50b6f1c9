"""Long training loops resume inside a stage: a head SIGKILLed half-way and
rerun ends with the same weights, bit for bit, as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from hgmcli import artifacts

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def hgm(*args) -> list[str]:
    return [sys.executable, "-m", "hgmcli", *map(str, args)]


def test_a_killed_head_resumes_to_the_same_weights(tmp_path):
    data = tmp_path / "d.npz"
    subprocess.run(hgm("generate", "--out", data, "--depth", 2, "--n-train", 300, "--n-test", 50), check=True,
                   env=ENV, capture_output=True)
    fit = ["fit-svm", "--data", data, "--val-size", 100, "--head", "fc", "--adam-steps", 800, "--eval-every", 25,
           "--batch-size", 32, "-v"]
    subprocess.run(hgm(*fit, "--out", tmp_path / "whole.pt"), check=True, env=ENV, capture_output=True)

    out = tmp_path / "killed.pt"
    ckpt = tmp_path / ".killed.pt.ckpt"
    proc = subprocess.Popen(hgm(*fit, "--out", out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not out.exists(), "the run was not killed mid-training"
    saved, _ = artifacts.load_pt(ckpt)
    assert 0 < saved["state"]["step"] < 800

    r = subprocess.run(hgm(*fit, "--out", out), env=ENV, capture_output=True, text=True, check=True)
    assert "(resumed)" in r.stderr
    assert not ckpt.exists()  # the finished stage removes its checkpoint
    whole, _ = artifacts.load_pt(tmp_path / "whole.pt")
    resumed, _ = artifacts.load_pt(out)
    assert whole["state"].keys() == resumed["state"].keys()
    for key in whole["state"]:
        assert torch.equal(whole["state"][key], resumed["state"][key]), key
    assert whole["curve"] == resumed["curve"]
