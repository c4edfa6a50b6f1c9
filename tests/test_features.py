"""Network outputs handed from one stage to the next (features.FeatureCache)
are the network's outputs: every entry a pipeline leaves equals a fresh
forward pass of the saved network, on every split it uses."""

from pathlib import Path

import numpy as np
import pytest
import torch

from hgmcli import stages
from hgmcli.config import ClassifierConfig, ClusterConfig, DataConfig, EvaluateConfig, GenerateConfig, TrainConfig
from hgmcli.features import FeatureCache, FrozenFeatures, check_fits
from hgmcli.network import load_network
from hgmcli.errors import DataError


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, DataConfig, dict, FeatureCache]:
    """generate -> cluster -> train-layer (adam-ce, relu: the projected outputs are kept) -> cluster ->
    train-layer -> fit-svm -> evaluate, all in one process with one cache, as `hgm pipeline` runs them."""
    d = tmp_path_factory.mktemp("cache")
    gen = GenerateConfig(depth=2, patch_size=2, m0=4, classes=[3], patches_per_class=3, n_train=400, n_test=100)
    stages.generate(gen, out=d / "data.npz", seed=0)
    data = DataConfig(root=str(d / "data.npz"), val_size=100)
    cache = FeatureCache()
    seen = {}
    common = dict(seed=0, device="cpu", cache=cache)
    model = None
    for i in (1, 2):
        stages.cluster(data, ClusterConfig(patches=4000), out=d / f"c{i}.npz", model=model, **common)
        train = TrainConfig(mode="adam-ce", activation="relu", bias=-0.2, out_channels=6, epochs=1, batch_size=32)
        stages.train_layer(data, train, centroids=d / f"c{i}.npz", out=d / f"n{i}.pt", model=model, **common)
        model = d / f"n{i}.pt"
        seen[i] = {k: v.clone() for k, v in cache._entries.items()}
    stages.fit_svm(data, ClassifierConfig(head="svm"), out=d / "svm.pt", model=model, **common)
    stages.evaluate(data, EvaluateConfig(split="test"), model=model, classifier=d / "svm.pt", **common)
    seen["final"] = dict(cache._entries)
    return d, data, seen, cache


def test_every_kept_output_equals_a_fresh_forward_pass(run):
    from hgmcli import data as datamod

    d, data, seen, _ = run
    splits = set()
    for entries in seen.values():
        assert entries, "the stages left nothing to check"
        for (digest, _path, split, n), kept in entries.items():
            model = next(p for p in d.glob("n*.pt") if FeatureCache.key(p, datamod.load_dataset(data, split))[0] == digest)
            net, _ = load_network(model)
            ds = datamod.load_dataset(data, split)
            with torch.no_grad():
                fresh = net(torch.from_numpy(ds.images))
            assert kept.shape == fresh.shape and len(ds) == n
            # float16 storage: 3 significant digits of outputs of order 1
            torch.testing.assert_close(kept.float(), fresh, atol=2e-2, rtol=1e-2)
            splits.add(split)
    assert splits == {"train", "val", "test"}


def test_the_cache_keeps_one_network(run):
    _, _, seen, _ = run
    for entries in seen.values():
        assert len({k[0] for k in entries}) == 1


def test_a_request_too_big_for_memory_is_refused_up_front():
    with pytest.raises(DataError, match=r"^a test would need about .* of memory; .* is available$"):
        check_fits(1e18, "a test")


def test_uint8_cache_is_exact_to_a_step_of_its_range():
    x = torch.rand(20, 3, 4, 4)
    f = FrozenFeatures(lambda t: t, x.numpy(), device=torch.device("cpu"), batch_size=7, budget=1 << 20,
                       cache_dtype="uint8", value_max=1.0)
    got = torch.cat([b for _, b in f.batches(np.arange(20), 6)])
    assert f.cached and f.cache_dtype == torch.uint8
    assert (got - x).abs().max() <= 0.5 / 255 + 1e-6
