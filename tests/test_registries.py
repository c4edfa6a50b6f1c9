"""Adding a training mode, an encoder or a head is one registry entry: the
config accepts it, `hgm search` can sample it, and the stages run it."""

import numpy as np
import pytest
import torch

from hgmcli import classify, network, stages, train
from hgmcli.config import ClassifierConfig, ClusterConfig, DataConfig, GenerateConfig, PipelineConfig, TrainConfig, load_config
from hgmcli.search import parse_space


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("registries")
    cfg = GenerateConfig(depth=2, patch_size=2, m0=4, classes=[3], patches_per_class=3, n_train=200, n_test=50)
    stages.generate(cfg, out=d / "data.npz", seed=0)
    data = DataConfig(root=str(d / "data.npz"), val_size=50)
    stages.cluster(data, ClusterConfig(patches=2000), out=d / "c.npz", seed=0, device="cpu")
    return d, data


def test_registries_are_the_configs_choices():
    for key, registry in (("layers.0.train.mode", train.TRAIN_MODES), ("layers.0.train.activation", network.ENCODERS),
                          ("classifier.head", classify.HEADS)):
        for name in registry:
            load_config(PipelineConfig, None, [f"{key}={name}"])
        assert parse_space([f"{key}=*"])[key] == tuple(registry)


def test_a_new_training_mode_is_one_entry(monkeypatch, tiny):
    d, data = tiny

    def zeros(ex, cfg, *, seed, device, **_):  # a 1x1 conv that maps everything to 0 (no loop to checkpoint)
        return train.TrainResult(torch.zeros(cfg.out_channels, ex.train.shape[0]), {"mode": cfg.mode})

    monkeypatch.setitem(train.TRAIN_MODES, "zeros", train.TrainMode(zeros, "all-zero 1x1 conv"))
    cfg = load_config(PipelineConfig, None, ["layers.0.train.mode=zeros", "layers.0.train.out_channels=5"])
    stages.train_layer(data, cfg.layers[0].train, centroids=d / "c.npz", out=d / "zeros.pt", seed=0, device="cpu")
    net, _ = network.load_network(d / "zeros.pt")
    assert net.output_shape()[0] == 5 and torch.count_nonzero(net.blocks[0].proj.weight) == 0


def test_a_new_encoder_is_one_entry(monkeypatch, tiny):
    d, data = tiny

    class Square(torch.nn.Module):
        help = "z squared"
        monotone = False

        def __init__(self, bias: float = 0.0, q: float = 0.0):  # every encoder is built from the block's b and q
            super().__init__()
            self.bias = float(bias)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return z * z

        @staticmethod
        def value_max(bias: float, normalize: bool):
            return 1.0 if normalize else None

    monkeypatch.setitem(network.ENCODERS, "square", Square)
    cfg = TrainConfig(mode="none", activation="square")
    stages.train_layer(data, cfg, centroids=d / "c.npz", out=d / "square.pt", seed=0, device="cpu")
    net, _ = network.load_network(d / "square.pt")
    x = torch.randn(2, 1, 16, 16)
    cc = net.blocks[0].cluster
    torch.testing.assert_close(net.blocks[0](net.preprocess(x)), cc.similarity(net.preprocess(x)) ** 2)
    scripted = torch.jit.script(torch.nn.Sequential(*net.to_sequential()))  # still a plain, exportable CNN
    torch.testing.assert_close(scripted(x), net(x))


def test_a_new_head_is_one_entry(monkeypatch, tiny):
    _, data = tiny

    def class_means(ex, cfg, *, seed, budget, **_):  # nearest class mean as a linear layer
        x = classify.dense_features(ex.train)
        means = torch.stack([x[torch.from_numpy(ex.y == c)].mean(0) for c in range(ex.n_classes)])
        head = classify.build_head("means", x.shape[1], ex.n_classes, [])
        with torch.no_grad():
            head[1].weight.copy_(means)
            head[1].bias.copy_(-0.5 * (means * means).sum(1))
        return classify.FitResult(head, [], {})

    monkeypatch.setitem(classify.HEADS, "means", classify.Head(class_means, False, "nearest class mean"))
    cfg = ClassifierConfig(head="means")
    res = stages.fit_svm(data, cfg, out=data.root.replace("data.npz", "means.pt"), seed=0, device="cpu")
    assert 0.0 <= res.stats["train_accuracy"] <= 1.0
    head, payload, _ = classify.load_classifier(data.root.replace("data.npz", "means.pt"))
    assert payload["kind"] == "means" and np.isfinite(head[1].weight.detach().numpy()).all()
