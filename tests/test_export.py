"""`hgm export --format torchscript|exported|onnx`: every format predicts what
`hgm evaluate` predicts, with the preprocessing inside the graph and the
metadata beside it; runnable without hgm."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from hgmcli.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module", params=["smoke", "levers"])
def trained(request, tmp_path_factory):
    """A synthetic run (one-hot blocks, SVM) and an image run with every lever (whitening, knn, soft normalisation, grid pool, bottleneck head)."""
    d = tmp_path_factory.mktemp(f"export-{request.param}")
    if request.param == "smoke":
        assert run("pipeline", "--config", "smoke", "--out", d / "run", "--set", "generate.n_train=1500").exit_code == 0
        return d, ["--data", d / "run" / "data.npz", "--val-size", 500], d / "run" / "layer2" / "network.pt", \
            d / "run" / "classifier.pt", np.load(d / "run" / "data.npz")["x_test"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(240, 3, 12, 12), dtype=np.uint8)
    y = (x[:, 0, :6].mean(axis=(1, 2)) > x[:, 0, 6:].mean(axis=(1, 2))).astype(np.int64)
    np.savez(d / "img.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    common = ["--data", d / "img.npz", "--val-size", 40]
    assert run("cluster", *common, "--whiten", "zca", "--patch-size", 3, "--k", 16, "--patches", 3000,
               "--out", d / "c.npz").exit_code == 0
    assert run("train-layer", *common, "--centroids", d / "c.npz", "--activation", "knn", "--knn-q", 4,
               "--pool", "grid", "--pool-size", 2, "--normalize-eps", 0.5, "--out-channels", 6, "--epochs", 1, "--out", d / "n.pt").exit_code == 0
    assert run("fit-svm", *common, "--model", d / "n.pt", "--head", "bottleneck", "--bottleneck", 5, "--dropout", 0.2,
               "--lr-schedule", "cosine", "--adam-steps", 30, "--eval-every", 10, "--out", d / "fc.pt").exit_code == 0
    return d, common, d / "n.pt", d / "fc.pt", np.load(d / "img.npz")["x_test"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("fmt", ["torchscript", "exported", "onnx"])
def test_every_format_predicts_what_evaluate_predicts(trained, fmt, tmp_path):
    d, common, net, clf, x_test = trained
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'hgmcli[onnx]')")
        pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install 'hgmcli[onnx]')")
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the ONNX file cannot be checked")
    r = run("evaluate", *common, "--model", net, "--classifier", clf, "--json")
    assert r.exit_code == 0, r.output
    want = json.loads(r.stdout)["confusion"]
    out = tmp_path / f"model.{fmt}"
    r = run("export", "--model", net, "--classifier", clf, "--format", fmt, "--out", out)
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert info["format"] == fmt and len(info["output"]["label_names"]) == len(want)
    np.save(tmp_path / "x.npy", x_test.astype(np.float32))
    load = {
        "torchscript": "import torch; m = torch.jit.load(P)\npred = m(torch.from_numpy(x)).argmax(1).numpy()",
        "exported": "import torch; m = torch.export.load(P).module()\npred = m(torch.from_numpy(x)).argmax(1).numpy()",
        "onnx": "import onnxruntime as ort; s = ort.InferenceSession(P)\npred = s.run(None, {'images': x})[0].argmax(1)",
    }[fmt]
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.modules['hgmcli'] = None  # the exported model needs no hgm
        P = {str(out)!r}; x = np.load({str(tmp_path / 'x.npy')!r})
        """) + load + f"\nnp.save({str(tmp_path / 'pred.npy')!r}, pred)\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env, capture_output=True)
    pred = np.load(tmp_path / "pred.npy")
    y_test = np.load(common[1])["y_test"]
    confusion = np.zeros_like(np.asarray(want))
    np.add.at(confusion, (y_test, pred), 1)
    assert confusion.tolist() == want


def test_an_unknown_format_is_a_usage_line(trained, tmp_path):
    d, common, net, clf, _ = trained
    r = run("export", "--model", net, "--classifier", clf, "--format", "tflite", "--out", tmp_path / "m")
    assert r.exit_code == 1 and r.stderr.strip() == "Error: unknown export format 'tflite'; expected one of torchscript, exported, onnx"
    assert not (tmp_path / "m").exists()
