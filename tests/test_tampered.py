"""Tampered but well-formed artifacts, and sizes too large for memory (issue 14,
groups 7-9): one `Error:` line, exit 1, nothing written, nothing allocated."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hgmcli import artifacts
from hgmcli.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error(r, starts: str) -> None:
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith(starts) and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.output


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("tampered")
    assert run("generate", "--out", d / "d.npz", "--depth", 2, "--classes", 3, "--patches-per-class", 3,
               "--n-train", 300, "--n-test", 50).exit_code == 0
    common = ["--data", d / "d.npz", "--val-size", 50]
    assert run("cluster", *common, "--patches", 3000, "--out", d / "c.npz").exit_code == 0
    assert run("train-layer", *common, "--centroids", d / "c.npz", "--mode", "gd-linear", "--out", d / "n.pt").exit_code == 0
    assert run("fit-svm", *common, "--model", d / "n.pt", "--out", d / "svm.pt").exit_code == 0
    return d, common


def tamper_network(src, dst, change) -> None:
    payload, meta = artifacts.load_pt(src, "network")
    change(payload)
    artifacts.save_pt(dst, payload, meta)


@pytest.mark.parametrize("change, message", [
    (lambda p: p["blocks"][0].update(centroids=torch.zeros(9, 4)), "block 1: centroids must be a finite 4-D tensor"),
    (lambda p: p["blocks"][0].update(stride=0), "block 1: stride must be an integer >= 1, got 0"),
    (lambda p: p.update(blocks="blocks"), "blocks must be a list"),
    (lambda p: p.update(blocks=["x"]), "block 1: not a block (str)"),
    (lambda p: p["blocks"][0]["centroids"].fill_(float("nan")), "block 1: centroids must be a finite 4-D tensor"),
    (lambda p: p["blocks"][0].update(kind="transformer"), "block 1: not a block (kind 'transformer')"),
    (lambda p: p["blocks"][0].update(activation="gelu"), "block 1: unknown encoder 'gelu'"),
    (lambda p: p.update(input_shape=[1, 0, 16]), "input_shape must be [C, H, W], got [1, 0, 16]"),
    (lambda p: p["blocks"][0].update(norm_eps=-1.0), "block 1: norm_eps must be a finite number >= 0, got -1.0"),
    (lambda p: p["blocks"][0].update(norm_eps=float("nan")), "block 1: norm_eps must be a finite number >= 0, got nan"),
    (lambda p: p["blocks"][0].update(norm_eps="5"), "block 1: norm_eps must be a finite number >= 0, got '5'"),
])
def test_a_tampered_network_is_one_line(made, tmp_path, change, message):
    d, common = made
    tamper_network(d / "n.pt", tmp_path / "bad.pt", change)
    r = run("cluster", *common, "--model", tmp_path / "bad.pt", "--out", tmp_path / "o.npz")
    one_error(r, f"Error: {tmp_path / 'bad.pt'} is not a valid network file ({message}")
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("input_shape"), "is not a valid classifier file (missing 'input_shape')"),
    (lambda p: p.pop("label_names"), "is not a valid classifier file (missing 'label_names')"),
    (lambda p: p.update(label_names=["a", "a"]), ": the classifier has 2 outputs but 2 label names (1 distinct)"),
    (lambda p: p.update(label_names=["a"]), ": the classifier has 2 outputs but 1 label names (1 distinct)"),
    (lambda p: p.update(kind="transformer"), "unknown classifier kind 'transformer'"),
])
def test_a_tampered_classifier_is_one_line_in_evaluate_and_export(made, tmp_path, change, message):
    d, common = made
    payload, meta = artifacts.load_pt(d / "svm.pt", "classifier")
    change(payload)
    artifacts.save_pt(tmp_path / "bad.pt", payload, meta)
    for args in (["evaluate", *common, "--model", d / "n.pt"], ["export", "--model", d / "n.pt", "--out", tmp_path / "m.pt"]):
        r = run(*args, "--classifier", tmp_path / "bad.pt")
        assert r.exit_code == 1 and "Traceback" not in r.output and r.stderr.count("\n") == 1, r.output
        assert message in r.stderr
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("arrays, message", [
    ({"centroids": np.zeros((0, 1, 2, 2), np.float32)}, "does not hold valid centroids of shape (k, C, s, s)"),
    ({"centroids": np.full((4, 1, 2, 2), np.nan, np.float32)}, "does not hold valid centroids of shape (k, C, s, s)"),
    ({"centroids": np.ones((4, 1, 40, 40), np.float32)}, "40x40 kernels do not fit the network's 16x16 output"),
])
def test_bad_centroids_are_one_line(made, tmp_path, arrays, message):
    d, common = made
    _, meta = artifacts.load_npz(d / "c.npz", "centroids")
    artifacts.save_npz(tmp_path / "bad.npz", arrays, meta)
    r = run("train-layer", *common, "--centroids", tmp_path / "bad.npz", "--out", tmp_path / "o.pt")
    one_error(r, "Error: ")
    assert message in r.stderr and not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("command, what", [
    (["cluster", "--patches", 10**12], "1,000,000,000,000 patches would need about"),
    (["train-layer", "--centroids", "c.npz", "--mode", "adam-ce", "--out-channels", 10**11],
     "a 1x1 conv of 100000000000 channels and its head would need about"),
    (["fit-svm", "--head", "fc", "--set", "classifier.hidden=[100000000000]"], "a fc head with layers"),
])
def test_sizes_that_cannot_fit_are_refused_up_front(made, tmp_path, command, what):
    d, common = made
    args = [a if a != "c.npz" else d / "c.npz" for a in command]
    r = run(*args, *common, "--out", tmp_path / "o")
    one_error(r, "Error: ")
    assert what in r.stderr and "of memory;" in r.stderr and not (tmp_path / "o").exists()


def test_generating_more_images_than_memory_is_refused_up_front(tmp_path):
    r = run("generate", "--out", tmp_path / "d.npz", "--n-train", 10**12)
    one_error(r, "Error: 1,000,000,002,000 images would need about ")
    assert not (tmp_path / "d.npz").exists()


@pytest.mark.parametrize("command, message", [
    (["train-layer", "--normalize-eps", "-1"], "train.normalize_eps"),
    (["fit-svm", "--head", "bottleneck", "--bottleneck", "0"], "classifier.bottleneck"),
    (["fit-svm", "--head", "bottleneck", "--dropout", "1.5"], "classifier.dropout"),
    (["fit-svm", "--lr-schedule", "warm"], "classifier.lr_schedule"),
    (["fit-svm", "--head", "bottleneck", "--standardize"], "the bottleneck head standardises with its first BatchNorm"),
])
def test_bad_lever_settings_are_one_line(made, tmp_path, command, message):
    d, common = made
    extra = ["--centroids", d / "c.npz"] if command[0] == "train-layer" else ["--model", d / "n.pt"]
    out = tmp_path / "o.pt"
    r = run(command[0], *common, *extra, *command[1:], "--out", out)
    one_error(r, "Error: ")
    assert message in r.stderr, r.stderr
    assert not out.exists()
