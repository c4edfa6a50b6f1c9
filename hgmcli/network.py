"""The learned network: a preprocessing step, then a list of blocks

    Conv(s x s, kernels = k-means centroids, frozen) -> ReLU(. + b) -> Pool -> Conv1x1 (k -> n)

(§5.1 steps 2-4, §6 steps 3-6). Every module here is plain ``torch.nn`` and
TorchScript-scriptable, so the whole thing exports as a vanilla CNN.

Choices where the paper is not explicit (documented, configurable):

* ``normalize_patches`` (default on): the clustering is w.r.t. cosine, so the
  conv divides each response by the L2 norm of the input patch and computes
  the cosine similarity of the patch to each centroid. ReLU(cos + b) with
  b < 0 then keeps only the centroids the patch is close to — the "roughly
  one-hot" map of §6 step 3. (Appendix C's biases, -0.14 to -0.63 for "Ours",
  fit this scale.) ``center`` subtracts each patch's mean first, matching the
  clustering when it was run with ``center``.
* ``activation="onehot"`` is the theory's hard assignment φ (§5.1): each
  patch maps to the one-hot vector of its nearest centroid.
* The 1x1 conv has no bias: TLGD's K (§4.1) is a plain linear map.

The encoders (what follows the cluster conv: ReLU(z + b), one-hot φ, ...)
are the entries of ``ENCODERS``: small TorchScript-able modules, so a new
encoder is one class here plus its test; the config's ``train.activation``
choices, ``hgm search`` and the CLI's help read them from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import artifacts
from .errors import ArtifactError, HgmError


class Preprocess(nn.Module):
    """(x * scale - mean) / std per channel; x may be uint8."""

    def __init__(self, scale: float, mean: list[float], std: list[float]):
        super().__init__()
        self.scale = float(scale)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.scale - self.mean) / self.std

    def spec(self) -> dict:
        return {"scale": self.scale, "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}


# --------------------------------------------------------------------------- encoders


# Every encoder maps the similarities z (B, k, H, W) -- cosines when the conv
# normalises patches -- to features of the same shape; it is built from the
# block's b and q (each encoder uses what it needs), and says whether it is
# elementwise non-decreasing (``monotone``: max-pooling may then go first,
# which the fused path uses) and what bounds its outputs (``value_max``: the
# uint8 cache needs one).


class ReluBias(nn.Module):
    """ReLU(z + b) (§6 step 3): with cosines z and b < 0 only the centroids a
    patch is close to stay on, the "roughly one-hot" map of the paper."""

    help = "ReLU(z + b), z the cosine (or raw) similarity to each centroid (§6)"
    monotone = True  # elementwise non-decreasing: max-pooling first gives the same result

    def __init__(self, bias: float = 0.0, q: float = 0.0):
        super().__init__()
        self.bias = float(bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(z + self.bias)

    @staticmethod
    def value_max(bias: float, normalize: bool) -> float | None:
        """Upper bound of the output (for the uint8 cache): cos <= 1, raw dot products have none."""
        return max(1.0 + bias, 1e-6) if normalize else None


class OneHot(nn.Module):
    """φ of §5.1: the one-hot vector of the most similar centroid (b is unused)."""

    help = "hard assignment phi: one-hot of the nearest centroid (§5.1, the theory)"
    monotone = False

    def __init__(self, bias: float = 0.0, q: float = 0.0):
        super().__init__()
        self.bias = float(bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        idx = z.argmax(dim=1)
        return F.one_hot(idx, z.shape[1]).permute(0, 3, 1, 2).to(z.dtype)

    @staticmethod
    def value_max(bias: float, normalize: bool) -> float | None:
        return 1.0


class Triangle(nn.Module):
    """Coates, Lee & Ng (2011)'s "triangle" encoder: f_k = max(0, mean_j d_j - d_k)
    with d the Euclidean distances of the patch to the centroids. On unit
    vectors (the conv normalises patches; centroids are unit) d = sqrt(2 - 2 cos),
    so it needs ``normalize_patches``. About half the features are 0: those of
    the centroids farther than average."""

    help = "triangle (Coates et al. 2011): max(0, mean distance - distance to each centroid)"
    monotone = False

    def __init__(self, bias: float = 0.0, q: float = 0.0):
        super().__init__()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        d = torch.sqrt(torch.clamp(2.0 - 2.0 * z, min=0.0))
        return F.relu(d.mean(dim=1, keepdim=True) - d)

    @staticmethod
    def value_max(bias: float, normalize: bool) -> float | None:
        return 2.0  # distances between unit vectors lie in [0, 2]


class KNearest(nn.Module):
    """Thiry, Arbel, Belilovsky & Oyallon (2021)'s encoding: 1 for the q
    centroids nearest to the patch, 0 for the others. ``q`` is a count (>= 1)
    or a fraction of k (< 1). Ranking by similarity is ranking by distance for
    unit centroids, normalised patches or not. Ties at the q-th value all count."""

    help = "k-nearest (Thiry et al. 2021): 1 for the q most similar centroids, else 0"
    monotone = False

    def __init__(self, bias: float = 0.0, q: float = 0.1):
        super().__init__()
        self.q = float(q)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        k = z.shape[1]
        q = max(1, min(k, int(round(self.q * k)) if self.q < 1 else int(self.q)))
        kth = torch.topk(z, q, dim=1).values[:, q - 1 : q]  # (B, 1, H, W): the q-th largest similarity
        return (z >= kth).to(z.dtype)

    @staticmethod
    def value_max(bias: float, normalize: bool) -> float | None:
        return 1.0


ENCODERS: dict[str, type[nn.Module]] = {"relu": ReluBias, "onehot": OneHot, "triangle": Triangle, "knn": KNearest}


# --------------------------------------------------------------------------- whitening


class Whiten(nn.Module):
    """ZCA whitening of every s x s patch as a conv: y = A x_patch + b at each
    position (``patches.fit_zca``), d = C*s*s output channels. A block with it
    clusters (and encodes) the whitened patches with a 1x1 cluster conv, so
    the exported network stays a plain CNN: conv (whitening), 1x1 conv
    (centroids), encoder, pool, 1x1 conv.

    weight: (d, C, s, s) = A reshaped; bias: (d,) = b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1, padding: int = 0):
        super().__init__()
        self.register_buffer("weight", weight.detach().float().contiguous())
        self.register_buffer("bias", bias.detach().float().contiguous())
        self.stride, self.padding = int(stride), int(padding)
        self.size = int(weight.shape[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


# --------------------------------------------------------------------------- the cluster conv


class ClusterConv(nn.Module):
    """Conv with frozen centroid kernels, optional patch normalisation, then
    an encoder from ``ENCODERS`` (ReLU(z + bias), the one-hot of the
    best-matching centroid, ...).

    centroids: (k, C, s, s) float32. Output: (B, k, H', W')."""

    def __init__(
        self,
        centroids: torch.Tensor,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: float = 0.0,
        normalize: bool = True,
        center: bool = False,
        activation: str = "relu",
        q: float = 0.1,
        norm_eps: float = 0.0,
    ):
        super().__init__()
        if activation not in ENCODERS:
            raise HgmError(f"unknown encoder {activation!r}; expected one of {', '.join(ENCODERS)}")
        if activation == "triangle" and not normalize:
            raise HgmError("the triangle encoder needs distances between unit vectors: keep normalize_patches on")
        self.register_buffer("weight", centroids.detach().float().contiguous())
        self.register_buffer("weight_sum", self.weight.sum(dim=(1, 2, 3)).view(1, -1, 1, 1))
        self.k = int(centroids.shape[0])
        self.in_channels = int(centroids.shape[1])
        self.size = int(centroids.shape[2])
        self.stride = int(stride)
        self.padding = int(padding)  # zeros around the input ("same" for s // 2 at stride 1)
        self.bias = float(bias)
        self.normalize = bool(normalize)
        self.center = bool(center)
        self.activation = activation
        self.q = float(q)  # the knn encoder's q (a count, or a fraction of k below 1)
        # Soft normalisation: divide by sqrt(|patch|^2 + norm_eps). 0: exact cosines. Above 0, a patch much
        # weaker than sqrt(norm_eps) (a flat patch, after whitening mostly noise) stays short instead of being
        # blown up to a unit vector: Coates et al.'s "+10" in their contrast normalisation.
        self.norm_eps = float(norm_eps)
        self.encoder = ENCODERS[activation](bias=self.bias, q=self.q)

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """Raw responses <patch, centroid>, or cosines when ``normalize``."""
        z = F.conv2d(x, self.weight, stride=self.stride, padding=self.padding)
        if not (self.normalize or self.center):
            return z
        dim = float(self.in_channels * self.size * self.size)
        ones = torch.ones(1, 1, self.size, self.size, dtype=x.dtype, device=x.device)
        # Patch sums via a box filter over the channel-summed input: cheap next to the main conv.
        sum1 = F.conv2d(x.sum(dim=1, keepdim=True), ones, stride=self.stride, padding=self.padding)
        mean = sum1 / dim
        if self.center:
            z = z - mean * self.weight_sum
        if self.normalize:
            sum2 = F.conv2d((x * x).sum(dim=1, keepdim=True), ones, stride=self.stride, padding=self.padding)
            if self.center:
                sum2 = sum2 - dim * mean * mean
            z = z / torch.sqrt(sum2.clamp_min(0.0) + max(self.norm_eps, 1e-12))
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.similarity(x))

    def value_max(self) -> float | None:
        """Known upper bound of the outputs (allows the uint8 cache), or None."""
        return ENCODERS[self.activation].value_max(self.bias, self.normalize)


FUSED_CHUNK_FLOATS = 1 << 20  # conv outputs per chunk (4 MB): stays in cache until pooled


FUSED_MAX_PATCH_DIM = 1024  # above this (e.g. 155x3x3) conv2d's own GEMM wins (benchmarks/features.py)


def fused_applies(block: "Block") -> bool:
    c = block.cluster
    return block.pool_kind in POOLS and c.in_channels * c.size * c.size <= FUSED_MAX_PATCH_DIM


def fused_frozen(block: "Block", x: torch.Tensor) -> torch.Tensor:
    """(Whitening ->) ClusterConv -> encoder -> pool, computed in cache-sized
    chunks of images as unfold -> (centre, normalise rows) -> one GEMM ->
    encoder -> pool on the channels-last result; for a monotone elementwise
    encoder (ReLU(. + b)) and max-pooling, pool first: max-pool commutes with
    it, and the encoder then touches 1/p^2 of the values.

    Why: on a 2-core CPU the conv output of the first layer (k channels at full
    resolution) is far larger than the cache, and the separate division,
    encoder and pooling passes over it cost more than the convolution itself.
    Measured in benchmarks/features.py (before/after table in the README).
    Returns (B, k, H', W')."""
    x = block.whiten(x)
    c = block.cluster
    b, ch, h, w = x.shape
    s, st, pad = c.size, c.stride, c.padding
    ho, wo = (h + 2 * pad - s) // st + 1, (w + 2 * pad - s) // st + 1
    weight = c.weight.reshape(c.k, -1).t()  # (C*s*s, k)
    pool_first = bool(getattr(c.encoder, "monotone", False)) and block.pool_kind in ("max", "none")
    p = block.pool_size if block.pool_kind == "max" else 1
    outs = []
    chunk = max(1, FUSED_CHUNK_FLOATS // max(1, ho * wo * c.k))
    for start in range(0, b, chunk):
        xc = x[start : start + chunk]
        n = len(xc)
        cols = F.unfold(xc, s, padding=pad, stride=st).transpose(1, 2)  # (n, L, C*s*s)
        if c.center:
            cols = cols - cols.mean(dim=2, keepdim=True)
        if c.normalize:
            cols = cols * torch.rsqrt((cols * cols).sum(dim=2, keepdim=True) + max(c.norm_eps, 1e-12))
        y = (cols.reshape(-1, cols.shape[2]) @ weight).view(n, ho, wo, c.k)  # channels-last
        if pool_first and p > 1 and block.pool_stride == p:
            hp, wp = ho // p, wo // p  # max over the p x p window via strided views (amax is slow on CPU)
            y = y[:, : hp * p, : wp * p].reshape(n, hp, p, wp, p, c.k)
            m = y[:, :, 0, :, 0]
            for dy in range(p):
                for dx in range(p):
                    if dy or dx:
                        m = torch.maximum(m, y[:, :, dy, :, dx])
            outs.append(c.encoder(m.permute(0, 3, 1, 2)).contiguous())
        else:  # encode at full resolution, then pool (avg / grid / max on a channels-last view)
            outs.append(block.pool(c.encoder(y.permute(0, 3, 1, 2))).contiguous())
    return torch.cat(outs)


POOLS = ("max", "avg", "grid", "none")


def make_pool(kind: str, size: int, stride: int | None = None) -> nn.Module:
    """max / avg: size x size windows at ``stride`` (default: size); grid: average
    over a size x size grid of equal cells (size 2: the four quadrants, Coates et
    al.'s pooling), whatever the map's size; none."""
    stride = size if stride is None else stride
    if kind == "max":
        return nn.MaxPool2d(size, stride)
    if kind == "avg":
        return nn.AvgPool2d(size, stride)
    if kind == "grid":
        return nn.AdaptiveAvgPool2d(size)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown pool {kind!r}")


class Block(nn.Module):
    """[Whiten ->] ClusterConv -> pool -> optional 1x1 conv (the embedding K)."""

    def __init__(self, cluster: ClusterConv, pool: str = "none", pool_size: int = 2, proj: torch.Tensor | None = None,
                 *, whiten: Whiten | None = None, pool_stride: int | None = None):
        super().__init__()
        self.whiten = whiten if whiten is not None else nn.Identity()
        self.cluster = cluster
        self.pool_kind = pool
        self.pool_size = int(pool_size)
        self.pool_stride = int(pool_size if pool_stride is None else pool_stride)
        self.pool = make_pool(pool, self.pool_size, self.pool_stride)
        if proj is None:
            self.proj = nn.Identity()
            self.out_channels = cluster.k
        else:
            conv = torch.nn.utils.skip_init(nn.Conv2d, cluster.k, proj.shape[0], kernel_size=1, bias=False)
            with torch.no_grad():
                conv.weight.copy_(proj.reshape(proj.shape[0], cluster.k, 1, 1))
            self.proj = conv
            self.out_channels = int(proj.shape[0])

    def frozen(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the 1x1 conv (what train-layer caches).

        The eager path is ``fused_frozen`` where it applies; the plain
        whiten -> conv -> encoder -> pool modules are what TorchScript export
        uses and what the tests compare it against."""
        if not torch.jit.is_scripting() and fused_applies(self):
            return fused_frozen(self, x)
        return self.pool(self.cluster(self.whiten(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.frozen(x))

    def proj_weight(self) -> torch.Tensor | None:
        return self.proj.weight.detach().reshape(self.proj.weight.shape[0], -1) if isinstance(self.proj, nn.Conv2d) else None


class ConvBlock(nn.Module):
    """A learned Conv(k x k, "same" padding) -> ReLU -> MaxPool(pool_size, pool_stride):
    the blocks of the baselines (the TensorFlow CIFAR-10 tutorial CNN of §6)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, pool_size: int = 3, pool_stride: int = 2):
        super().__init__()
        out_c, in_c, k, _ = weight.shape
        self.conv = torch.nn.utils.skip_init(nn.Conv2d, in_c, out_c, k, padding=k // 2)  # weights copied below
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias)
        self.pool_size, self.pool_stride = int(pool_size), int(pool_stride)
        self.pool = nn.MaxPool2d(pool_size, pool_stride, padding=pool_size // 2)
        self.out_channels = int(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.conv(x)))


class Network(nn.Module):
    """Preprocess followed by the trained blocks (possibly none)."""

    def __init__(self, preprocess: Preprocess, blocks: list[Block], input_shape: list[int]):
        super().__init__()
        self.preprocess = preprocess
        self.blocks = nn.ModuleList(blocks)
        self.input_shape = [int(v) for v in input_shape]  # (C, H, W) the network expects

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        for block in self.blocks:
            x = block(x)
        return x

    def output_shape(self) -> list[int]:
        """(C, H, W) of the network's output."""
        with torch.no_grad():
            device = self.preprocess.mean.device  # where the network lives (a CUDA net needs a CUDA input)
            return list(self(torch.zeros(1, *self.input_shape, device=device)).shape[1:])

    def to_sequential(self) -> nn.Sequential:
        """The plain CNN: Preprocess, then for each block [Whiten,] ClusterConv, pool, 1x1 conv."""
        mods: list[nn.Module] = [self.preprocess]
        for b in self.blocks:
            if isinstance(b, Block):
                mods += ([b.whiten] if isinstance(b.whiten, Whiten) else []) + [b.cluster, b.pool, b.proj]
            else:
                mods += [b.conv, nn.ReLU(), b.pool]
        return nn.Sequential(*mods)


# --------------------------------------------------------------------------- save / load


def block_spec(b: nn.Module, extra: dict | None = None) -> dict:
    if isinstance(b, ConvBlock):
        return {
            "kind": "conv",
            "weight": b.conv.weight.detach().cpu().clone(),
            "bias": b.conv.bias.detach().cpu().clone(),
            "pool_size": b.pool_size,
            "pool_stride": b.pool_stride,
        }
    c = b.cluster
    spec: dict[str, Any] = {
        "kind": "cluster",
        "centroids": c.weight.cpu().clone(),
        "proj": None if b.proj_weight() is None else b.proj_weight().cpu().clone(),
        "stride": c.stride,
        "padding": c.padding,
        "bias": c.bias,
        "normalize": c.normalize,
        "center": c.center,
        "activation": c.activation,
        "q": c.q,
        "norm_eps": c.norm_eps,
        "pool": b.pool_kind,
        "pool_size": b.pool_size,
        "pool_stride": b.pool_stride,
        "whiten": None,
    }
    if isinstance(b.whiten, Whiten):
        w = b.whiten
        spec["whiten"] = {"weight": w.weight.cpu().clone(), "bias": w.bias.cpu().clone(), "stride": w.stride,
                          "padding": w.padding}
    spec.update(extra or {})
    return spec


def block_from_spec(spec: dict) -> nn.Module:
    if spec.get("kind", "cluster") == "conv":
        return ConvBlock(spec["weight"], spec["bias"], spec["pool_size"], spec["pool_stride"])
    cluster = ClusterConv(
        spec["centroids"],
        stride=spec["stride"],
        padding=spec.get("padding", 0),
        bias=spec["bias"],
        normalize=spec["normalize"],
        center=spec["center"],
        activation=spec["activation"],
        q=spec.get("q", 0.1),
        norm_eps=spec.get("norm_eps", 0.0),  # files before it: exact cosines
    )
    w = spec.get("whiten")
    whiten = Whiten(w["weight"], w["bias"], w["stride"], w["padding"]) if w is not None else None
    return Block(cluster, spec["pool"], spec["pool_size"], spec["proj"], whiten=whiten,
                 pool_stride=spec.get("pool_stride"))


def network_payload(net: Network) -> dict:
    """Tensors + plain values that rebuild ``net`` (``weights_only``-loadable)."""
    return {
        "preprocess": net.preprocess.spec(),
        "input_shape": list(net.input_shape),
        "blocks": [block_spec(b) for b in net.blocks],
    }


def _tensor(spec: dict, key: str, ndim: int, where: str, *, optional: bool = False) -> torch.Tensor | None:
    t = spec.get(key)
    if t is None and optional:
        return None
    if not isinstance(t, torch.Tensor) or t.ndim != ndim or t.numel() == 0 or not torch.isfinite(t).all():
        raise ValueError(f"{where}: {key} must be a finite {ndim}-D tensor")
    return t


def check_block_spec(spec: Any, where: str) -> None:
    """Refuse a block spec (as a network file holds it) that would not rebuild a
    working block: every field's type, range and shape, before any module is built."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: not a block ({type(spec).__name__})")
    if spec.get("kind", "cluster") not in ("cluster", "conv"):
        raise ValueError(f"{where}: not a block (kind {spec.get('kind')!r})")
    if spec.get("kind") == "conv":
        w = _tensor(spec, "weight", 4, where)
        if _tensor(spec, "bias", 1, where).shape != (w.shape[0],):
            raise ValueError(f"{where}: conv bias does not match its weight")
        ints = {"pool_size": 1, "pool_stride": 1}
    else:
        c = _tensor(spec, "centroids", 4, where)
        proj = _tensor(spec, "proj", 2, where, optional=True)
        if proj is not None and proj.shape[1] != c.shape[0]:
            raise ValueError(f"{where}: the 1x1 conv reads {proj.shape[1]} channels, the cluster conv makes {c.shape[0]}")
        if spec.get("activation") not in ENCODERS or spec.get("pool") not in POOLS:
            raise ValueError(f"{where}: unknown encoder {spec.get('activation')!r} or pool {spec.get('pool')!r}")
        ints = {"stride": 1, "padding": 0, "pool_size": 1}
        eps = spec.get("norm_eps", 0.0)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not (0 <= eps < float("inf")):
            raise ValueError(f"{where}: norm_eps must be a finite number >= 0, got {eps!r}")
        w = spec.get("whiten")
        if w is not None and (not isinstance(w, dict) or _tensor(w, "weight", 4, where).shape[0] != c.shape[1]):
            raise ValueError(f"{where}: the whitening does not match the centroids")
    for key, low in ints.items():
        if not isinstance(spec.get(key), int) or isinstance(spec.get(key), bool) or spec[key] < low:
            raise ValueError(f"{where}: {key} must be an integer >= {low}, got {spec.get(key)!r}")


def network_from_payload(payload: dict, path: str | Path = "network") -> Network:
    """Rebuild a network from its file's payload, every field checked (a
    tampered or foreign file is one ``ArtifactError``, never a traceback)."""
    try:
        pre = payload["preprocess"]
        blocks = payload["blocks"]
        if not isinstance(blocks, list):
            raise ValueError("blocks must be a list")
        for i, spec in enumerate(blocks):
            check_block_spec(spec, f"block {i + 1}")
        shape = payload["input_shape"]
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
            raise ValueError(f"input_shape must be [C, H, W], got {shape!r}")
        net = Network(Preprocess(pre["scale"], pre["mean"], pre["std"]), [block_from_spec(s) for s in blocks], shape)
        net.output_shape()  # the blocks must chain: each reads what the one before makes
        return net
    except (KeyError, TypeError, ValueError, RuntimeError, HgmError) as e:
        raise ArtifactError(f"{path} is not a valid network file ({e})") from None


def save_network(path: str | Path, net: Network, meta: dict, block_info: list[dict]) -> Path:
    """``block_info``: per block JSON-able facts (mode, n, stats) kept in meta."""
    meta = dict(meta)
    meta["blocks"] = block_info
    return artifacts.save_pt(path, network_payload(net), meta)


def load_network(path: str | Path) -> tuple[Network, dict]:
    payload, meta = artifacts.load_pt(path, "network")
    return network_from_payload(payload, path), meta


def empty_network(norm: dict, input_shape: list[int]) -> Network:
    return Network(Preprocess(norm["scale"], norm["mean"], norm["std"]), [], input_shape)


def network_for(model: str | Path | None, norm: dict | None, ds) -> tuple[Network, dict | None]:
    """(network, its metadata) to extend or featurise ``ds`` with: the saved
    one at ``model`` (checked against the images' shape), or, without a
    model, just the preprocessing ``norm`` (``data.normalization``)."""
    from .errors import DataError

    if model is not None:
        net, meta = load_network(model)
        if list(ds.images.shape[1:]) != list(net.input_shape):
            raise DataError(
                f"{model} expects images of shape {tuple(net.input_shape)}, the data has {tuple(ds.images.shape[1:])}"
            )
        return net, meta
    assert norm is not None
    return empty_network(norm, list(ds.images.shape[1:])), None


def load_centroids(path: str | Path) -> tuple[np.ndarray, Whiten | None, dict]:
    """(centroids (k, C, s, s) float32, the whitening conv or None, meta), every
    array checked. Whitened centroids live in the whitened space: (k, d, 1, 1)
    after a Whiten conv of d = C*s*s channels."""
    arrays, meta = artifacts.load_npz(path, "centroids")
    c = arrays.get("centroids")
    if c is None or c.ndim != 4 or c.shape[0] < 1 or c.shape[2] != c.shape[3] or not np.isfinite(c).all():
        raise ArtifactError(f"{path} does not hold valid centroids of shape (k, C, s, s)")
    whiten = None
    if "whiten_weight" in arrays:
        w, b = arrays["whiten_weight"], arrays.get("whiten_bias")
        if (w.ndim != 4 or b is None or b.shape != (w.shape[0],) or w.shape[2] != w.shape[3]
                or c.shape[1:] != (w.shape[0], 1, 1) or not (np.isfinite(w).all() and np.isfinite(b).all())):
            raise ArtifactError(f"{path}: the whitening arrays do not match centroids of shape {c.shape}")
        whiten = Whiten(torch.from_numpy(w.astype(np.float32)), torch.from_numpy(b.astype(np.float32)))
    return c.astype(np.float32), whiten, meta


def check_centroids_fit(net: Network, centroids: np.ndarray | torch.Tensor, path: str | Path) -> None:
    """The first conv of a new block (``centroids``, or the whitening conv's
    weight) must read the channels ``net`` outputs, and fit its map."""
    c_out, h, w = net.output_shape()
    if centroids.shape[2] > min(h, w):
        raise HgmError(f"{path}: {centroids.shape[2]}x{centroids.shape[2]} kernels do not fit the network's "
                       f"{h}x{w} output")
    if centroids.ndim != 4 or centroids.shape[1] != c_out:
        raise HgmError(
            f"{path}: centroids have {centroids.shape[1] if centroids.ndim == 4 else '?'} channels "
            f"but the network outputs {c_out}; cluster the output of this network (--model)"
        )


def uniform_sphere_rows(rows: int, dim: int, radius: float, gen: torch.Generator) -> torch.Tensor:
    """``rows`` vectors uniform on the sphere of ``radius`` in R^dim."""
    v = torch.randn(rows, dim, generator=gen)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius


__all__ = [
    "Block",
    "ClusterConv",
    "ConvBlock",
    "Network",
    "Preprocess",
    "block_from_spec",
    "empty_network",
    "load_network",
    "save_network",
    "uniform_sphere_rows",
]

