"""The paper's comparison networks (Figure 3): the TF-tutorial CNN trained end to
end, and the same CNN with random frozen convolutions (only the head trained)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hgmcli import artifacts, baselines, data, generative, stages
from hgmcli.config import ClassifierConfig, DataConfig, EvaluateConfig, GenerateConfig
from hgmcli.classify import build_head, load_classifier
from hgmcli.errors import HgmError, TrainingError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """200 train (150 + 50 val) / 100 test 16x16 greyscale images, 3 classes."""
    path = tmp_path_factory.mktemp("baselines") / "synth.npz"
    cfg = GenerateConfig(depth=2, patch_size=2, m0=4, classes=[3], patches_per_class=3, n_train=200, n_test=100)
    model, arrays, _ = generative.generate(cfg, seed=0)
    meta = artifacts.make_meta("dataset", "generate", {}, model=model.params(), label_names=model.label_names)
    artifacts.save_npz(path, arrays, meta)
    return path


@pytest.fixture(scope="module")
def plain(synth) -> Path:
    """The same images without the generative model in the metadata (so ``evaluate``
    does not try latent recovery, as on CIFAR-10)."""
    path = synth.with_name("plain.npz")
    arrays, meta = artifacts.load_npz(synth)
    artifacts.save_npz(path, arrays, {k: v for k, v in meta.items() if k != "model"})
    return path


@pytest.fixture(scope="module")
def splits(synth):
    dcfg = DataConfig(root=str(synth), val_size=50)
    ds = data.load_dataset(dcfg, "train")
    ds_val = data.load_dataset(dcfg, "val")
    return dcfg, ds, ds_val, data.normalization(dcfg, ds)


def _cfg(**kw) -> ClassifierConfig:
    base = dict(adam_steps=10, eval_every=5, batch_size=32, lr=1e-3, batch_size_features=64)
    return ClassifierConfig(**{**base, **kw})


def _train(splits, arch: str, head: str, seed: int = 0, **kw):
    _, ds, ds_val, norm = splits
    return baselines.train_baseline(
        ds, ds_val, norm, arch=arch, head=head, cfg=_cfg(**kw), seed=seed, device=CPU, memory_budget=1 << 26
    )


@pytest.fixture(scope="module")
def trained(splits) -> dict:
    """Each baseline trained once (10 steps, a curve point every 5), shared by the tests below."""
    return {(a, h): _train(splits, a, h, adam_steps=10, eval_every=5) for a in baselines.ARCHS for h in baselines.HEADS}


def _initial(splits, head: str, seed: int = 0):
    """The network and head train_baseline starts from (same generator, same order)."""
    _, ds, _, norm = splits
    gen = torch.Generator().manual_seed(seed)
    net = baselines.build_cnn(list(ds.images.shape[1:]), norm, gen=gen)
    clf = build_head(head, int(np.prod(net.output_shape())), len(ds.label_names), [384, 192], gen=gen)
    return net, clf


def _loss(net, clf, ds) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(clf(net(torch.from_numpy(ds.images))), torch.from_numpy(ds.labels)))


def test_cnn_shapes_follow_the_tf_tutorial(splits):
    _, ds, _, norm = splits
    net = baselines.build_cnn([3, 32, 32], {"scale": 1 / 255, "mean": [0.0] * 3, "std": [1.0] * 3}, gen=torch.Generator())
    assert net.output_shape() == [64, 8, 8]  # 32 -> 16 -> 8 with pool(3, 2, pad 1)
    assert [tuple(b.conv.weight.shape) for b in net.blocks] == [(64, 3, 5, 5), (64, 64, 5, 5)]
    head = build_head("fc", 4096, 10, [384, 192], gen=torch.Generator())
    assert [m.out_features for m in head if isinstance(m, torch.nn.Linear)] == [384, 192, 10]
    # Seeded: the same generator seed gives the same weights, and the global RNG is not consumed.
    state = torch.random.get_rng_state()
    a, _ = _initial(splits, "fc", seed=3)
    b, _ = _initial(splits, "fc", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("arch", ["cnn", "cnn-random"])
@pytest.mark.parametrize("head", ["fc", "linear"])
def test_each_baseline_trains_and_records_a_curve(splits, trained, arch, head):
    _, ds, _, _ = splits
    net, clf, curve, stats = trained[arch, head]
    assert [s for s, _ in curve] == [5, 10]  # one point per eval_every
    assert all(0.0 <= a <= 1.0 for _, a in curve)
    assert stats["iterations"] == 10 and len(stats["history"]) == 2
    assert np.isfinite(stats["final_loss"])
    assert ("features" in stats) == (arch == "cnn-random")
    assert all(p.device.type == "cpu" for p in [*net.parameters(), *clf.parameters()])
    assert clf(net(torch.from_numpy(ds.images[:4]))).shape == (4, len(ds.label_names))


def test_cnn_loss_goes_down_on_a_fixed_batch(splits):
    _, ds, _, norm = splits
    fixed = dataclasses.replace(ds, images=ds.images[:32], labels=ds.labels[:32])  # every step sees this batch
    net0, clf0 = _initial(splits, "fc")
    net, clf, _, _ = baselines.train_baseline(
        fixed, None, norm, arch="cnn", head="fc", cfg=_cfg(adam_steps=20), seed=0, device=CPU, memory_budget=0
    )
    assert _loss(net, clf, fixed) < 0.5 * _loss(net0, clf0, fixed)


def test_random_convs_stay_frozen_and_cnn_convs_learn(splits, trained):
    net0, _ = _initial(splits, "fc")
    rnd, cnn = trained["cnn-random", "fc"][0], trained["cnn", "fc"][0]
    for b0, br, bc in zip(net0.blocks, rnd.blocks, cnn.blocks):
        assert torch.equal(b0.conv.weight, br.conv.weight) and torch.equal(b0.conv.bias, br.conv.bias)
        assert not torch.equal(b0.conv.weight, bc.conv.weight)


def test_curve_point_at_the_last_step_when_not_a_multiple(splits):
    _, _, curve, _ = _train(splits, "cnn-random", "linear", adam_steps=12, eval_every=5)
    assert [s for s, _ in curve] == [5, 10, 12]


def test_no_validation_split_gives_no_curve(splits):
    _, ds, _, norm = splits
    _, _, curve, stats = baselines.train_baseline(
        ds, None, norm, arch="cnn", head="linear", cfg=_cfg(adam_steps=3), seed=0, device=CPU, memory_budget=0
    )
    assert curve == [] and stats["iterations"] == 3


def test_cnn_random_recomputes_features_over_the_budget(splits, trained):
    _, ds, ds_val, norm = splits
    cached = trained["cnn-random", "fc"]
    streamed = baselines.train_baseline(ds, ds_val, norm, arch="cnn-random", head="fc", cfg=_cfg(), seed=0, device=CPU,
                                        memory_budget=0)
    assert cached[3]["features"]["cached"] and not streamed[3]["features"]["cached"]
    # float16 cache vs float32 recompute: the same run up to rounding
    assert abs(cached[3]["final_loss"] - streamed[3]["final_loss"]) < 1e-2


def _save(tmp_path, splits, trained, arch: str):
    _, ds, _, _ = splits
    net, clf, curve, stats = trained[arch, "fc"]
    path = tmp_path / f"{arch}.pt"
    meta = artifacts.make_meta("classifier", "baseline", {}, seed=0, stats=artifacts.to_jsonable(stats))
    artifacts.save_pt(path, baselines.baseline_payload(net, clf, "fc", curve, ds.label_names, arch=arch), meta)
    return path, net, clf, curve


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")  # torch.jit.save / load deprecation notices
@pytest.mark.parametrize("arch", ["cnn", "cnn-random"])
def test_payload_round_trips_through_evaluate_and_export(splits, trained, plain, tmp_path, arch):
    _, ds, _, _ = splits
    path, net, clf, curve = _save(tmp_path, splits, trained, arch)

    head, loaded, _ = load_classifier(path)
    assert loaded["kind"] == "fc" and loaded["dims"] == [1024, 384, 192, len(ds.label_names)] and loaded["arch"] == arch

    dcfg = DataConfig(root=str(plain), val_size=50)
    test = data.load_dataset(dcfg, "test")
    x = torch.from_numpy(test.images)
    with torch.no_grad():
        logits = clf(net(x))
    pred = logits.argmax(dim=1).numpy()
    _, result = stages.evaluate(dcfg, EvaluateConfig(split="test"), model=None, classifier=path, device="cpu")
    assert result["accuracy"] == pytest.approx(float((pred == test.labels).mean()))
    confusion = np.zeros((len(ds.label_names),) * 2, dtype=np.int64)
    np.add.at(confusion, (test.labels, pred), 1)
    assert result["confusion"] == confusion.tolist()
    assert result["curve"] == [[s, a] for s, a in curve]

    out = tmp_path / "exported.pt"
    stages.export(model=None, classifier=path, out=out)
    scripted = torch.jit.load(str(out))
    with torch.no_grad():
        assert torch.allclose(scripted(x), logits, atol=1e-5)


def test_evaluate_on_synthetic_data(splits, trained, synth, tmp_path):
    path, *_ = _save(tmp_path, splits, trained, "cnn-random")
    _, metrics = stages.evaluate(DataConfig(root=str(synth), val_size=50), EvaluateConfig(split="test"), model=None,
                                 classifier=path, device="cpu")
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert "latent_recovery" not in metrics  # learned convs: no clusters to score


def test_bad_arch_and_head_are_refused(splits):
    with pytest.raises(HgmError) as e:
        _train(splits, "resnet", "fc")
    assert str(e.value) == "unknown baseline architecture 'resnet': expected cnn or cnn-random"
    with pytest.raises(HgmError) as e:
        _train(splits, "cnn", "svm")
    assert str(e.value) == "unknown baseline head 'svm': expected fc or linear"


def test_nan_loss_names_the_step(splits):
    _, ds, ds_val, norm = splits
    images = ds.images.copy()
    images[:] = np.nan  # every batch is NaN: the first step's loss already is
    bad = dataclasses.replace(ds, images=images)
    with pytest.raises(TrainingError) as e:
        baselines.train_baseline(bad, ds_val, norm, arch="cnn", head="linear", cfg=_cfg(adam_steps=3), seed=0,
                                 device=CPU, memory_budget=0)
    assert str(e.value) == "baseline cnn+linear: the loss became nan at step 1; lower the learning rate (lr)"
