"""Beyond the paper, as options of the same block (issue 13): ZCA-whitened
patches, the triangle and k-nearest encoders, grid pooling before caching,
flip augmentation. Each is checked against its defining formula."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hgmcli import network
from hgmcli.cli import app
from hgmcli.patches import fit_zca

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------- whitening


@pytest.mark.parametrize("center", [False, True])
def test_zca_makes_the_patch_covariance_the_identity_up_to_eps(center):
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((27, 27)) + 3 * np.eye(27)  # correlated pixels, well-conditioned
    x = (rng.standard_normal((40_000, 27)) @ mix + 5.0).astype(np.float32)
    eps = 1e-3
    a, b, stats = fit_zca(x, eps, center=center)
    y = x.astype(np.float64) @ a.T + b
    cov = np.cov(y, rowvar=False, bias=True)
    assert np.abs(y.mean(axis=0)).max() < 1e-4
    lam = np.linalg.eigvalsh(cov)
    if center:  # the per-patch mean is removed: one direction (the constant patch) has no variance left
        assert lam[0] < 1e-6
        lam = lam[1:]
    # each eigenvalue is lambda / (lambda + eps * mean(lambda)): within eps * mean / lambda_min of 1
    tol = stats["eps_absolute"] / min(stats["eigenvalues_bottom"][int(center):] or [1.0])
    assert np.all(np.abs(lam - 1) <= 1.5 * tol + 1e-6), (lam.min(), lam.max(), tol)


def test_the_whitened_block_is_whiten_then_conv_in_both_paths():
    torch.manual_seed(0)
    c, s, d, k = 3, 5, 75, 16
    a = torch.randn(d, c, s, s) / 5
    b = torch.randn(d)
    cents = torch.nn.functional.normalize(torch.randn(k, d), dim=1).view(k, d, 1, 1)
    x = torch.randn(4, c, 12, 12)
    for activation, eps in (("relu", 0.0), ("triangle", 0.0), ("triangle", 30.0), ("knn", 0.0), ("onehot", 0.0)):
        for pool, size in (("max", 2), ("grid", 2), ("avg", 3)):
            block = network.Block(network.ClusterConv(cents, bias=-0.1, activation=activation, q=3, norm_eps=eps),
                                  pool, size, whiten=network.Whiten(a, b, stride=1, padding=2))
            # the definition: whiten each patch, (soft) cosine with every centroid, encode, pool
            y = torch.nn.functional.conv2d(x, a, b, padding=2)                       # (B, d, H, W)
            norm = torch.sqrt((y * y).sum(dim=1, keepdim=True) + eps) if eps else y.norm(dim=1, keepdim=True)
            cos = torch.einsum("bdhw,kd->bkhw", y, cents.view(k, d)) / norm
            want = block.pool(block.cluster.encoder(cos))
            assert network.fused_applies(block)
            torch.testing.assert_close(network.fused_frozen(block, x), want, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(block.pool(block.cluster(block.whiten(x))), want, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- encoders


def _reference(name: str, x: np.ndarray, cents: np.ndarray, b: float, q: float) -> np.ndarray:
    """Each encoder from its formula, patch by patch: x (n, d) patches, cents (k, d) unit centroids."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = xn @ cents.T
    dist = np.linalg.norm(xn[:, None, :] - cents[None, :, :], axis=2)  # Euclidean, computed directly
    if name == "relu":
        return np.maximum(cos + b, 0)
    if name == "onehot":
        return np.eye(len(cents))[cos.argmax(axis=1)]
    if name == "triangle":  # Coates et al.: max(0, mean_j z_j - z_k)
        return np.maximum(dist.mean(axis=1, keepdims=True) - dist, 0)
    if name == "knn":  # Thiry et al.: 1 for the q nearest
        count = int(round(q * len(cents))) if q < 1 else int(q)
        nearest = np.argsort(dist, axis=1)[:, :count]
        out = np.zeros_like(dist)
        np.put_along_axis(out, nearest, 1.0, axis=1)
        return out
    raise AssertionError(name)


@pytest.mark.parametrize("name, q", [("relu", 0.1), ("onehot", 0.1), ("triangle", 0.1), ("knn", 5), ("knn", 0.25)])
def test_each_encoder_equals_its_formula(name, q):
    rng = np.random.default_rng(1)
    k, d = 20, 12
    cents = rng.standard_normal((k, d))
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    x = rng.standard_normal((300, d))
    conv = network.ClusterConv(torch.tensor(cents, dtype=torch.float32).view(k, d, 1, 1), bias=-0.2,
                               activation=name, q=q)
    got = conv(torch.tensor(x.T.reshape(1, d, 300, 1), dtype=torch.float32))[0, :, :, 0].T.numpy()
    np.testing.assert_allclose(got, _reference(name, x, cents, -0.2, q), atol=2e-5)


def test_the_triangle_encoder_refuses_raw_patches():
    with pytest.raises(network.HgmError, match="triangle encoder needs distances between unit vectors"):
        network.ClusterConv(torch.ones(2, 3, 1, 1), activation="triangle", normalize=False)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def whitened_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("levers")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(300, 3, 12, 12), dtype=np.uint8)
    y = (x[:, 0, :6].mean(axis=(1, 2)) > x[:, 0, 6:].mean(axis=(1, 2))).astype(np.int64)  # top vs bottom
    np.savez(d / "img.npz", x_train=x[:250], y_train=y[:250], x_test=x[250:], y_test=y[250:])
    common = ["--data", d / "img.npz", "--val-size", 50]
    assert run("cluster", *common, "--whiten", "zca", "--patch-size", 4, "--k", 24, "--patches", 4000,
               "--out", d / "c.npz").exit_code == 0
    r = run("train-layer", *common, "--centroids", d / "c.npz", "--activation", "triangle", "--pool", "grid",
            "--pool-size", 2, "--out-channels", 8, "--epochs", 2, "--flip", "--out", d / "n.pt")
    assert r.exit_code == 0, r.output
    assert run("fit-svm", *common, "--model", d / "n.pt", "--flip", "--out", d / "svm.pt").exit_code == 0
    return d, common


def test_an_exported_whitened_model_predicts_what_evaluate_predicts(whitened_run):
    d, common = whitened_run
    r = run("evaluate", *common, "--model", d / "n.pt", "--classifier", d / "svm.pt", "--json")
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)
    assert run("export", "--model", d / "n.pt", "--classifier", d / "svm.pt", "--out", d / "m.pt").exit_code == 0
    exported = torch.jit.load(str(d / "m.pt"))
    assert any(m.original_name == "Whiten" for m in exported.children())  # whitening is a conv inside the graph
    test = np.load(d / "img.npz")
    with torch.no_grad():
        pred = exported(torch.from_numpy(test["x_test"])).argmax(1).numpy()
    confusion = np.zeros((2, 2), dtype=int)
    np.add.at(confusion, (test["y_test"], pred), 1)
    assert confusion.tolist() == metrics["confusion"]


def test_flip_doubles_what_is_trained_on(whitened_run):
    from hgmcli import artifacts

    d, _ = whitened_run
    stats = artifacts.load_meta(d / "n.pt")["stats"]
    assert stats["history"][-1]["step"] == 2 * -(-400 // 128)  # 2 epochs over 2 x 200 training images


@pytest.mark.parametrize("extra, message", [
    (["--whiten-eps", "0"], "Error: config key 'cluster.whiten_eps': must be > 0, got 0.0"),
    (["--patches", 20], "Error: whitening 48-dimensional patches needs at least 48 sampled patches, got 20"),
])
def test_bad_whitening_is_one_line(whitened_run, tmp_path, extra, message):
    d, common = whitened_run
    r = run("cluster", *common, "--whiten", "zca", "--patch-size", 4, "--k", 8, *extra, "--out", tmp_path / "c.npz")
    assert r.exit_code == 1 and r.stderr.strip() == message
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("head", ["svm", "fc"])
def test_standardised_heads_fold_into_a_plain_head(whitened_run, head, tmp_path):
    """classifier.standardize trains on (x - mean) / scale and folds it into the first layer: the saved head
    is the usual Flatten + Linear..., and predicts on raw features what the standardised one predicted."""
    from hgmcli import classify
    from hgmcli.classify import feature_moments, fold_standardization
    from hgmcli.features import FrozenFeatures

    x = torch.randn(50, 4, 2, 2) * torch.tensor([1.0, 10.0, 0.1, 3.0]).view(1, 4, 1, 1) + 5
    f = FrozenFeatures(lambda t: t, x.numpy(), device=torch.device("cpu"), batch_size=16, budget=1 << 24)
    mean, scale = feature_moments(f)
    lin = torch.nn.Linear(16, 3)
    z = (x.flatten(1) - mean) / scale
    want = lin(z)
    fold_standardization(lin, mean, scale)
    torch.testing.assert_close(lin(x.flatten(1)), want, atol=1e-4, rtol=1e-4)
    d, common = whitened_run
    extra = ["--adam-steps", 20, "--eval-every", 10] if head == "fc" else []
    r = run("fit-svm", *common, "--model", d / "n.pt", "--head", head, "--standardize", *extra,
            "--out", tmp_path / "h.pt")
    assert r.exit_code == 0, r.output
    h, payload, _ = classify.load_classifier(tmp_path / "h.pt")
    assert [type(m).__name__ for m in h][:2] == ["Flatten", "Linear"]


# --------------------------------------------------------------------------- soft normalisation, bottleneck head


def test_soft_normalisation_keeps_weak_patches_short_and_strong_ones_unit():
    cents = torch.nn.functional.normalize(torch.randn(8, 12, generator=torch.Generator().manual_seed(0)), dim=1)
    conv = network.ClusterConv(cents.view(8, 12, 1, 1), activation="relu", norm_eps=1.0)
    direction = cents[0].view(1, 12, 1, 1)
    weak, strong = conv.similarity(0.01 * direction), conv.similarity(100.0 * direction)
    assert weak[0, 0].item() < 0.02  # |x| = 0.01: cos shrunk by |x| / sqrt(|x|^2 + 1)
    assert abs(strong[0, 0].item() - 1.0) < 1e-4  # |x| >> 1: the exact cosine
    rebuilt = network.block_from_spec(network.block_spec(network.Block(conv, "none")))
    assert rebuilt.cluster.norm_eps == 1.0


def test_the_cosine_schedule_halves_the_second_step():
    """Adam's first steps on a linear loss move each weight by exactly the learning rate; with the
    cosine schedule over 2 steps the second one is lr * (1 + cos(pi/2)) / 2 = lr / 2."""
    from hgmcli import adam

    moved = {}
    for schedule in ("constant", "cosine"):
        w = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(w.weight)
        adam.train(w, lambda idx: (w.weight.sum(), torch.tensor(0)), 4, steps=2, batch_size=4, lr=0.1,
                   weight_decay=0.0, seed=0, eval_every=10, schedule=schedule)
        moved[schedule] = -w.weight.item()
    assert moved["constant"] == pytest.approx(0.2, rel=1e-4)
    assert moved["cosine"] == pytest.approx(0.15, rel=1e-4)


def test_the_bottleneck_head_is_a_shared_1x1_conv_and_survives_save_and_load():
    from hgmcli import classify

    head = classify.build_bottleneck([6, 3, 3], 4, 5, [7], dropout=0.5)
    x = torch.randn(10, 6, 3, 3)
    head.train()
    for _ in range(3):  # move the BatchNorm statistics off their defaults
        head(x)
    head.eval()
    dims = classify.head_spec(head)
    assert dims == [54, 5, 7, 4]
    again = classify.head_from_state("bottleneck", dims, head.state_dict(), [6, 3, 3])
    torch.testing.assert_close(again.eval()(x), head(x))
    # the 1x1 conv: every grid cell through the same (5, 6) matrix
    conv = head[1]
    torch.testing.assert_close(conv(x)[:, :, 2, 1], x[:, :, 2, 1] @ conv.weight.view(5, 6).t())
    with pytest.raises(Exception, match="does not fit"):
        classify.head_from_state("bottleneck", dims, head.state_dict(), [6, 9])


def test_a_bottleneck_head_trains_through_fit_svm(whitened_run, tmp_path):
    d, common = whitened_run[0], whitened_run[1]
    r = CliRunner().invoke(app, ["fit-svm", *map(str, common), "--model", str(d / "n.pt"), "--head", "bottleneck",
                                 "--bottleneck", "4", "--dropout", "0.1", "--lr-schedule", "cosine", "--adam-steps", "40",
                                 "--eval-every", "20", "--out", str(tmp_path / "b.pt"), "--json"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["fit-svm", *map(str, common), "--model", str(d / "n.pt"), "--head", "bottleneck",
                                 "--standardize", "--out", str(tmp_path / "c.pt")])
    assert r.exit_code == 1 and "BatchNorm" in r.output
