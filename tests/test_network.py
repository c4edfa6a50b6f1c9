"""The learned network: blocks, fused frozen path, save/load, export."""

import pytest
import torch

from hgmcli import network
from hgmcli.network import Block, ClusterConv, ConvBlock, Network, Preprocess


def unit_kernels(k, c, s=3, seed=0):
    w = torch.randn(k, c, s, s, generator=torch.Generator().manual_seed(seed))
    return w / w.flatten(1).norm(dim=1)[:, None, None, None]


def test_cluster_conv_computes_cosine_similarity():
    w = unit_kernels(5, 3)
    x = torch.randn(1, 3, 3, 3)
    for center in (False, True):
        z = ClusterConv(w, center=center).similarity(x)[0, :, 0, 0]
        p = x.flatten() - (x.mean() if center else 0)
        torch.testing.assert_close(z, w.flatten(1) @ p / p.norm())


def test_onehot_activation_is_the_hard_assignment():
    w = unit_kernels(6, 2, 2)
    x = torch.randn(4, 2, 8, 8)
    cc = ClusterConv(w, stride=2, activation="onehot")
    out = cc(x)
    assert out.shape == (4, 6, 4, 4) and torch.equal(out.sum(1), torch.ones(4, 4, 4))
    assert torch.equal(out.argmax(1), cc.similarity(x).argmax(1))


@pytest.mark.parametrize(
    "c, k, h, stride, padding, pool, center, normalize",
    [(3, 64, 32, 1, 1, "max", False, True), (8, 32, 16, 2, 0, "none", False, True),
     (3, 16, 31, 1, 1, "max", True, True), (5, 16, 12, 1, 0, "max", False, False)],
)
def test_fused_frozen_equals_the_reference_modules(c, k, h, stride, padding, pool, center, normalize):
    block = Block(ClusterConv(unit_kernels(k, c), stride=stride, padding=padding, bias=-0.1, center=center,
                              normalize=normalize), pool, 2)
    x = torch.randn(7, c, h, h)
    assert network.fused_applies(block)
    torch.testing.assert_close(network.fused_frozen(block, x), block.pool(block.cluster(x)), atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    net = Network(Preprocess(1 / 255, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]), [
        Block(ClusterConv(unit_kernels(16, 3), padding=1, bias=-0.2), "max", 2, torch.randn(8, 16)),
        Block(ClusterConv(unit_kernels(12, 8), activation="onehot"), "none", 2),
        ConvBlock(torch.randn(4, 12, 5, 5), torch.randn(4)),
    ], [3, 32, 32])
    p = tmp_path / "net.pt"
    network.save_network(p, net, {"hgm": "artifact", "format_version": 1, "kind": "network"}, [])
    net2, _ = network.load_network(p)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(net2(x), net(x), atol=0, rtol=0)
        scripted = torch.jit.script(net.to_sequential())
        torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=1e-5)


def test_output_shape_is_computed_where_the_network_lives():
    # The first CUDA run failed here: the probe input was made on the CPU for a network on the
    # GPU. The meta device stands in for a GPU on a CPU-only machine (mixing it with the CPU
    # raises the same device-mismatch error).
    net = Network(Preprocess(1 / 255.0, [0.5] * 3, [0.25] * 3), [], [3, 8, 8]).to("meta")
    assert net.output_shape() == [3, 8, 8]
