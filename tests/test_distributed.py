"""torchrun on the CPU with the gloo backend and 2 processes: k-means over
sharded patches equals the 1-process result; DDP training of one layer's 1x1
conv matches the 1-process result within tolerance."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hgmcli import artifacts
from hgmcli.cli import app
from hgmcli.network import load_network

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "hgmcli", "-q", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist") / "d.npz"
    r = runner.invoke(app, ["generate", "--out", str(d), "--depth", "2", "--classes", "3", "--patches-per-class", "3",
                            "--n-train", "1200", "--n-test", "100"])
    assert r.exit_code == 0, r.output
    return d


@pytest.mark.slow
def test_two_process_kmeans_equals_one_process(data, tmp_path):
    common = ["--data", data, "--patches", 6000, "--k", 9, "--backend", "torch", "--device", "cpu", "--seed", 3]
    assert runner.invoke(app, ["cluster", *map(str, common), "--out", str(tmp_path / "one.npz")]).exit_code == 0
    torchrun("cluster", *common, "--out", tmp_path / "two.npz", cwd=tmp_path)
    one, _ = artifacts.load_npz(tmp_path / "one.npz", "centroids")
    two, meta = artifacts.load_npz(tmp_path / "two.npz", "centroids")
    np.testing.assert_allclose(two["centroids"], one["centroids"], atol=1e-6)
    np.testing.assert_array_equal(two["sizes"], one["sizes"])
    assert meta["stats"]["world_size"] == 2


@pytest.mark.slow
def test_two_process_ddp_training_matches_one_process(data, tmp_path):
    assert runner.invoke(app, ["cluster", "--data", str(data), "--out", str(tmp_path / "c.npz"),
                               "--patches", "6000"]).exit_code == 0
    common = ["--data", data, "--centroids", tmp_path / "c.npz", "--mode", "adam-ce", "--out-channels", 8, "--epochs", 2,
              "--batch-size", 64, "--activation", "onehot", "--device", "cpu", "--seed", 1]
    r = runner.invoke(app, ["train-layer", *map(str, common), "--out", str(tmp_path / "one.pt")])
    assert r.exit_code == 0, r.output
    torchrun("train-layer", *common, "--out", tmp_path / "two.pt", cwd=tmp_path)
    one, m1 = load_network(tmp_path / "one.pt")
    two, m2 = load_network(tmp_path / "two.pt")
    w1, w2 = one.blocks[0].proj_weight(), two.blocks[0].proj_weight()
    torch.testing.assert_close(w2, w1, atol=1e-4, rtol=1e-3)  # same global batches; float rounding only
    v1, v2 = m1["stats"]["val_accuracy"][-1], m2["stats"]["val_accuracy"][-1]
    assert abs(v1 - v2) <= 0.02
