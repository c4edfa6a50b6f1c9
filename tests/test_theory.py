"""The paper's claims about two-layer GD (§4), as tests.

Theorem 1: after TLGD on a two-level model with orthonormal patches, patches
of the same semantic class embed close together and patches of different
classes far apart. Corollary 1: a GD step does not change K x1 - K x2 for two
patches of one class (population loss). Lemma 3: the gradient of the linear
loss does not depend on K."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from hgmcli import features, generative, train
from hgmcli.config import GenerateConfig, TrainConfig

S, M0, C0, K = 4, 4, 4, 4  # 16 orthonormal 4x4 patches, 4 classes of 4


def two_level(n, seed=0):
    cfg = GenerateConfig(depth=1, patch_size=S, m0=M0, classes=[C0], patches_per_class=K, orthonormal=True, n_train=n, n_test=1)
    model, arrays, _ = generative.generate(cfg, seed)
    return model, arrays


def im2col(x):
    """(N, 1, m0*s, m0*s) -> (N, s*s, m0, m0): the non-overlapping patches as channels (§4.1)."""
    cols = F.unfold(torch.from_numpy(x), S, stride=S)  # (N, s*s, m0*m0)
    return cols.reshape(len(x), S * S, M0, M0)


class Tensors(features.FrozenFeatures):
    """FrozenFeatures over an in-memory tensor (the features *are* the patches)."""

    def __init__(self, t):
        self.cache, self.shape, self.device = None, tuple(t.shape[1:]), torch.device("cpu")
        self.t = t

    def __len__(self):
        return len(self.t)

    def batches(self, order, batch_size):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield idx, self.t[torch.from_numpy(idx)]


def patch_vectors(model):
    return model.patch_sets[-1].reshape(C0 * K, S * S)  # rows: patches, class = row // K


def test_gradient_matches_autograd():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 6, 3, 3, generator=gen)
    y = torch.tensor([1.0, -1, 1, -1, 1])
    W = torch.randn(4, 3, 3, generator=gen)
    Kt = torch.randn(6, 4, generator=gen, requires_grad=True)
    train.tlgd_loss(x, y, Kt, W).backward()
    torch.testing.assert_close(train.tlgd_gradient(x, y, W) / len(x), Kt.grad)


def test_gradient_does_not_depend_on_K():  # Lemma 3
    gen = torch.Generator().manual_seed(1)
    x, W = torch.rand(5, 6, 3, 3, generator=gen), torch.randn(4, 3, 3, generator=gen)
    y = torch.tensor([1.0, -1, 1, -1, 1])
    grads = []
    for _ in range(2):
        Kt = torch.randn(6, 4, generator=gen, requires_grad=True)
        train.tlgd_loss(x, y, Kt, W).backward()
        grads.append(Kt.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_corollary_1_gd_step_keeps_same_class_differences():
    """Population loss: the loss is linear in X, so its gradient over a sample
    of X(0) equals the gradient on E[X | X(0)] (each patch replaced by the mean
    of its class's patch set)."""
    model, arrays = two_level(300)
    z = torch.from_numpy(arrays["latent_train_0"]).long()  # (N, m0, m0)
    means = torch.from_numpy(patch_vectors(model).reshape(C0, K, -1).mean(1))  # (C0, s*s)
    x_bar = means[z].permute(0, 3, 1, 2)  # (N, s*s, m0, m0)
    y = train.signed_labels(arrays["y_train"])
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(8, M0, M0, generator=gen)
    K0 = train.uniform_sphere_rows(S * S, 8, 0.5, gen)
    K1 = K0 - 0.7 * train.tlgd_gradient(x_bar, y, W) / len(y)
    P = torch.from_numpy(patch_vectors(model))
    for c in range(C0):
        x1, x2 = P[c * K], P[c * K + 1]
        torch.testing.assert_close(K1.t() @ x1 - K1.t() @ x2, K0.t() @ x1 - K0.t() @ x2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_theorem_1_tlgd_separates_semantic_classes(seed):
    model, arrays = two_level(8000, seed)
    feats = Tensors(im2col(arrays["x_train"]))
    cfg = TrainConfig(mode="gd-linear", out_channels=32, eta=1.0, gd_steps=100, sigma=1.0)
    res = train.train_tlgd(features.Examples(feats, arrays["y_train"], 2), cfg, seed=seed, device=torch.device("cpu"))
    emb = (res.proj @ torch.from_numpy(patch_vectors(model)).t()).t().numpy()  # (16 patches, n): K^T x
    cls = np.repeat(np.arange(C0), K)
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    same = cls[:, None] == cls[None]
    assert d[same].max() < d[~same].min()  # Theorem 1, parts 1 and 2
    labels = KMeans(C0, n_init=10, random_state=0).fit_predict(emb)
    assert adjusted_rand_score(cls, labels) == 1.0  # a trivial clustering recovers X(0)'s classes


def test_hgm_cluster_gives_every_distinct_orthonormal_patch_its_own_cluster(tmp_path):
    """§5.1 / Lemma 7 base case: k-means++ with k = |S| on the observed patches of an
    orthonormal model is an orthonormal patch mapping (one cluster per distinct patch)."""
    from hgmcli import artifacts, stages
    from hgmcli.config import ClusterConfig, DataConfig

    cfg = GenerateConfig(depth=2, patch_size=4, m0=3, classes=[3, 3], patches_per_class=4, orthonormal=True, n_train=600, n_test=50)
    stages.generate(cfg, out=tmp_path / "d.npz", seed=0)
    res = stages.cluster(DataConfig(root=str(tmp_path / "d.npz")), ClusterConfig(patches=20000),
                         out=tmp_path / "c.npz", seed=0, device="cpu")
    assert res.stats["k"] == 4 * 3  # Theorem 2's k·|C_{d-1}|, filled in from the data
    arrays, _ = artifacts.load_npz(tmp_path / "d.npz")
    cents = np.load(tmp_path / "c.npz")["centroids"].reshape(12, -1)
    patches = im2col_any(arrays["x_train"][:200], 4).reshape(-1, 16)
    truth = arrays["patch_train_2"][:200].reshape(-1)
    assign = (patches @ cents.T).argmax(1)
    assert adjusted_rand_score(truth, assign) == 1.0


def im2col_any(x, s):
    n, _, h, w = x.shape
    return x.reshape(n, h // s, s, w // s, s).transpose(0, 1, 3, 2, 4).reshape(n, -1, s * s)


def test_jl_variant_trains_no_1x1_parameter():
    """§6 Clustering+JL: the 1x1 conv is a random Gaussian projection; only the temporary head learns."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((64, 6, 3, 3), dtype=np.float32))
    y = np.arange(64) % 2
    cfg = TrainConfig(mode="jl", out_channels=4, epochs=2, batch_size=16)
    a = train.train_adam(features.Examples(Tensors(x), y, 2), cfg, seed=3, device=torch.device("cpu"))
    b = train.train_adam(features.Examples(Tensors(x), y, 2), TrainConfig(mode="jl", out_channels=4, epochs=0, batch_size=16),
                         seed=3, device=torch.device("cpu"))
    torch.testing.assert_close(a.proj, b.proj, atol=0, rtol=0)  # after training == at initialisation
    adam = train.train_adam(features.Examples(Tensors(x), y, 2), TrainConfig(mode="adam-ce", out_channels=4, epochs=2, batch_size=16),
                            seed=3, device=torch.device("cpu"))
    assert not torch.equal(adam.proj, b.proj)


def test_device_selection():
    from hgmcli.device import resolve_device
    from hgmcli.errors import HgmError

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(HgmError, match="--device cuda: no CUDA device is available"):
            resolve_device("cuda")
    with pytest.raises(HgmError, match="unknown device 'tpu'"):
        resolve_device("tpu")
