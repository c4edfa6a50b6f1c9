"""Where every ``auto`` in a config becomes a value: one ``resolve_*`` per
config section, called by the stages before they compute anything; the
resolved section is what the artifact records under ``resolved``.

The rule (SPEC: "defaults follow the data"):

* on a synthetic ``.npz`` (which carries its generative model) the theory's
  geometry: non-overlapping s x s patches, no pooling, the one-hot map φ,
  k as Theorem 2 sets it per level;
* on image datasets §6's: 3 x 3 patches at stride 1 with "same" padding,
  2 x 2 max-pooling, ReLU(cos + b), k = 256;
* on the machine: what it has (FAISS or torch k-means, liblinear or the
  torch SVM, the memory budget).

The data section's ``auto`` (normalisation, validation size) is resolved by
``data.load_dataset``, which is where the source's kind is known."""

from __future__ import annotations

import dataclasses

import torch

from .config import ClassifierConfig, ClusterConfig, TrainConfig
from .errors import ConfigError, HgmError


def level_below(ds, n_blocks: int) -> int:
    """On synthetic data: the level whose pixels generated the patches the next
    clustering sees (the observed image is level d; each block goes up one)."""
    d = int(ds.meta["model"]["depth"])
    level = d - n_blocks - 1
    if level < 0:
        raise HgmError(f"the network already has {n_blocks} blocks and the generative model has depth {d}")
    return level


def resolve_cluster(cfg: ClusterConfig, ds, n_blocks: int, device: torch.device) -> ClusterConfig:
    """k, patch_size, stride and the k-means backend.

    On a synthetic model the patches the next clustering sees are the s x s
    manifestations of level-i pixels, i = d - 1 - (blocks so far); there are
    k*|C_i| distinct ones, and the clustering must give each its own cluster
    for the next map to be an orthonormal patch mapping (Lemma 7/8). So k
    defaults to k*|C_i| at every level. (Theorem 2 as extracted reads
    k_d = k|C_{d-1}| for the observed patches but |C_{i-1}| above; Lemma 8's
    proof needs phi_i(P) orthogonal for every two distinct patches P != P',
    which |C_{i-1}| clusters cannot give when k > 1.)"""
    from . import kmeans

    out = dataclasses.replace(cfg)
    if ds.synthetic:
        m = ds.meta["model"]
        if out.patch_size == "auto":
            out.patch_size = int(m["patch_size"])
        if out.stride == "auto":
            out.stride = out.patch_size
        if out.k == "auto":
            out.k = int(m["k"]) * int(m["classes"][level_below(ds, n_blocks)])
    else:
        if out.patch_size == "auto":
            out.patch_size = 3
        if out.stride == "auto":
            out.stride = 1
        if out.k == "auto":
            out.k = 256
    out.backend = kmeans.pick_backend(out.backend, device)
    return out


def resolve_train(cfg: TrainConfig, ds, patch_size: int) -> TrainConfig:
    """Cluster-conv stride and padding, pooling (and its stride) and the encoder."""
    out = dataclasses.replace(cfg)
    if out.stride == "auto":
        out.stride = patch_size if ds.synthetic else 1
    if out.padding == "auto":
        out.padding = 0 if ds.synthetic else patch_size // 2
    if out.pool == "auto":
        out.pool = "none" if ds.synthetic else "max"
    if out.pool_stride == "auto":
        out.pool_stride = out.pool_size
    if out.activation == "auto":
        out.activation = "onehot" if ds.synthetic else "relu"
    return out


def resolve_classifier(cfg: ClassifierConfig, n: int, dim: int, device: torch.device, budget: int) -> ClassifierConfig:
    """The SVM solver: liblinear when the (n, dim) features fit the budget on the CPU, else torch."""
    from .classify import svm_backend

    out = dataclasses.replace(cfg)
    if out.head == "bottleneck" and out.standardize:
        raise ConfigError("classifier.standardize is for the svm, linear and fc heads; the bottleneck head "
                          "standardises with its first BatchNorm")
    out.svm_backend = svm_backend(out.svm_backend, n, dim, device, budget)
    return out
