"""Final classifiers (§5.1 SVM, §6 linear / FC), evaluate and export."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hgmcli import classify
from hgmcli.cli import app
from hgmcli.config import ClassifierConfig
from hgmcli.features import Examples, FrozenFeatures

runner = CliRunner()


class Dense(FrozenFeatures):
    """FrozenFeatures over an in-memory (N, D) array."""

    def __init__(self, x):
        self.t = torch.as_tensor(x, dtype=torch.float32)
        self.cache, self.shape, self.device = None, tuple(self.t.shape[1:]), torch.device("cpu")

    def __len__(self):
        return len(self.t)

    def batches(self, order, batch_size):
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            yield idx, self.t[torch.from_numpy(idx)]


def problem(n=400, d=20, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)) * 1.5
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


@pytest.mark.parametrize("classes", [2, 4])
def test_torch_svm_agrees_with_scikit_learn(classes):
    x, y = problem(classes=classes)
    coef_s, b_s, _ = classify.fit_svm_sklearn(x, y, C=0.5)
    coef_t, b_t, _ = classify.fit_svm_torch(torch.from_numpy(x), y, classes, C=0.5)
    dec_s = x @ coef_s.numpy().T + b_s.numpy()
    dec_t = x @ coef_t.numpy().T + b_t.numpy()
    np.testing.assert_allclose(dec_t, dec_s, atol=2e-2 * np.abs(dec_s).max())
    head_s = classify.svm_head(coef_s, b_s, classes)
    head_t = classify.svm_head(coef_t, b_t, classes)
    feats = Dense(x)
    assert (classify.predict(head_s, feats) == classify.predict(head_t, feats)).mean() == 1.0


def test_binary_svm_head_predicts_like_the_decision_function():
    x, y = problem(classes=2)
    coef, b, _ = classify.fit_svm_sklearn(x, y, C=1.0)
    pred = classify.predict(classify.svm_head(coef, b, 2), Dense(x))
    np.testing.assert_array_equal(pred, (x @ coef.numpy()[0] + b.numpy()[0] > 0).astype(int))


@pytest.mark.parametrize("kind", ["linear", "fc"])
def test_adam_heads_learn_and_record_one_point_per_eval_every(kind):
    x, y = problem()
    cfg = ClassifierConfig(head=kind, adam_steps=120, eval_every=40, batch_size=32, lr=3e-3, hidden=[16, 8])
    res = classify.fit_adam(Examples(Dense(x), y, 3, Dense(x[:100]), y[:100]), cfg, seed=0)
    assert [s for s, _ in res.curve] == [40, 80, 120]
    assert res.curve[-1][1] > 0.8
    assert classify.head_spec(res.head) == ([20, 16, 8, 3] if kind == "fc" else [20, 3])


def _synthetic_run(tmp_path):
    """generate -> cluster -> train-layer -> cluster -> train-layer(none) -> fit-svm on a depth-2 model."""
    data = tmp_path / "d.npz"

    def ok(*args):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r

    ok("generate", "--out", data, "--depth", 2, "--patch-size", 2, "--m0", 4, "--classes", "3", "--patches-per-class", 3,
       "--n-train", 5000, "--n-test", 500)
    ok("cluster", "--data", data, "--out", tmp_path / "c1.npz", "--patches", 20000)
    ok("train-layer", "--data", data, "--centroids", tmp_path / "c1.npz", "--mode", "gd-linear", "--out-channels", 16,
       "--out", tmp_path / "n1.pt")
    ok("cluster", "--data", data, "--model", tmp_path / "n1.pt", "--out", tmp_path / "c2.npz", "--patches", 20000)
    ok("train-layer", "--data", data, "--model", tmp_path / "n1.pt", "--centroids", tmp_path / "c2.npz",
       "--mode", "none", "--out", tmp_path / "n2.pt")
    ok("fit-svm", "--data", data, "--model", tmp_path / "n2.pt", "--out", tmp_path / "svm.pt")
    return data


def test_theorem_2_depth_2_chain_of_single_commands(tmp_path):
    """Theorem 2 on an orthonormal-free depth-2 model: accuracy 1.0 and exact recovery at every level."""
    data = _synthetic_run(tmp_path)
    r = runner.invoke(app, ["evaluate", "--data", str(data), "--model", str(tmp_path / "n2.pt"),
                            "--classifier", str(tmp_path / "svm.pt"), "--json", "--out", str(tmp_path / "m.json"),
                            "--plot", str(tmp_path / "m.png")])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["accuracy"] == 1.0 and m["split"] == "test" and m["n"] == 500
    assert [e["level"] for e in m["latent_recovery"]] == [1, 0]
    assert all(e["ari"] >= 0.99 for e in m["latent_recovery"])
    assert m["separation"][0]["separated"]
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] == 1.0
    assert (tmp_path / "m.png").stat().st_size > 0

    # The exported TorchScript model predicts like `hgm evaluate`, in a Python without hgm.
    r = runner.invoke(app, ["export", "--model", str(tmp_path / "n2.pt"), "--classifier", str(tmp_path / "svm.pt"),
                            "--out", str(tmp_path / "model.pt")])
    assert r.exit_code == 0, r.output
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hgmcli"] = None  # as if hgm were not installed: any import of it fails
        import json, numpy as np, torch
        extra = {{"hgm.json": ""}}
        m = torch.jit.load({str(tmp_path / 'model.pt')!r}, _extra_files=extra)
        z = np.load({str(data)!r}, allow_pickle=False)
        with torch.no_grad():
            pred = m(torch.from_numpy(z["x_test"])).argmax(1).numpy()
        print(json.dumps({{"acc": float((pred == z["y_test"]).mean()), "info": json.loads(extra["hgm.json"])}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["acc"] == m["accuracy"]
    assert res["info"]["output"]["label_names"] == ["-1", "+1"]


def test_evaluate_refuses_mismatched_features_and_labels(tmp_path):
    data = tmp_path / "d.npz"
    assert runner.invoke(app, ["generate", "--out", str(data), "--depth", 2, "--n-train", 200, "--n-test", 50]).exit_code == 0
    assert runner.invoke(app, ["fit-svm", "--data", str(data), "--out", str(tmp_path / "raw.pt")]).exit_code == 0
    assert runner.invoke(app, ["cluster", "--data", str(data), "--out", str(tmp_path / "c.npz"), "--patches", 2000]).exit_code == 0
    assert runner.invoke(app, ["train-layer", "--data", str(data), "--centroids", str(tmp_path / "c.npz"),
                               "--mode", "none", "--out", str(tmp_path / "n.pt")]).exit_code == 0
    r = runner.invoke(app, ["evaluate", "--data", str(data), "--model", str(tmp_path / "n.pt"),
                            "--classifier", str(tmp_path / "raw.pt")])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: {tmp_path / 'raw.pt'} was trained on features of shape 1x16x16 but")
    # labels outside the classifier's classes
    three = tmp_path / "three.npz"
    assert runner.invoke(app, ["generate", "--out", str(three), "--depth", 2, "--labels", 3, "--n-train", 200,
                               "--n-test", 90]).exit_code == 0
    r = runner.invoke(app, ["evaluate", "--data", str(three), "--classifier", str(tmp_path / "raw.pt")])
    assert r.exit_code == 1 and "knows only 2 classes" in r.stderr


def test_classifier_file_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    r = runner.invoke(app, ["evaluate", "--data", str(tmp_path), "--classifier", str(bad)])
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: {bad} is not a readable hgm .pt file")
