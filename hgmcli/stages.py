"""One function per command: load inputs -> call the core -> write outputs.

The CLI and the pipeline are the only callers; nothing here parses options or
prints. Each stage returns a ``StageResult`` (paths written, stats, a few
summary rows for the table the CLI prints). Each stage also records in its
artifact the resolved config, the seed and the hashes of its inputs, which is
what ``pipeline`` compares to decide whether a stage can be skipped."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import artifacts
from .config import GenerateConfig, to_dict
from .progress import Progress, no_progress


@dataclass
class StageResult:
    stage: str
    outputs: dict[str, Path]
    stats: dict[str, Any]
    summary: list[tuple[str, str]] = field(default_factory=list)  # (label, value) rows for humans
    skipped: bool = False


def cache_key(config: dict, seed: int | None, inputs: dict[str, str | Path | None]) -> dict:
    """What makes two runs of a stage interchangeable: config, seed, input hashes."""
    return {
        "config": config,
        "seed": seed,
        "inputs": {role: artifacts.file_hash(p) for role, p in inputs.items() if p is not None},
    }


def is_up_to_date(out: str | Path, stage: str, config: dict, seed: int | None, inputs: dict) -> bool:
    """True when ``out`` exists, is a readable artifact of ``stage`` and was made
    from the same config, seed and input contents."""
    p = Path(out)
    if not p.exists():
        return False
    try:
        meta = artifacts.load_meta(p)
    except Exception:  # unreadable/foreign/old: just redo the stage
        return False
    want = cache_key(config, seed, inputs)
    got_inputs = {role: v.get("sha256") for role, v in meta.get("inputs", {}).items()}
    return (
        meta.get("stage") == stage
        and meta.get("config") == want["config"]
        and meta.get("seed") == want["seed"]
        and got_inputs == want["inputs"]
    )


# The key under which each stage reports its artifact (--json "outputs"), fresh or reused.
OUTPUT_KEYS = {"generate": "data", "cluster": "centroids", "train-layer": "model", "fit-svm": "classifier",
               "baseline": "classifier"}


def reuse_existing(out: str | Path, stage: str, config: dict, seed: int | None, inputs: dict) -> StageResult | None:
    """The finished artifact at ``out`` as a skipped StageResult, if it is up to date."""
    if not is_up_to_date(out, stage, config, seed, inputs):
        return None
    meta = artifacts.load_meta(out)
    stats = dict(meta.get("stats", {}))
    return StageResult(stage, {OUTPUT_KEYS[stage]: Path(out)}, stats, [("cached", f"{out} is up to date")], skipped=True)


# --------------------------------------------------------------------------- generate


def generate(
    cfg: GenerateConfig,
    *,
    out: str | Path,
    seed: int = 0,
    preview: str | Path | None = None,
    progress: Progress = no_progress,
    reuse: bool = False,
) -> StageResult:
    """Sample a dataset from the hierarchical model (§3.1) or the digits (§3.2)."""
    from . import generative

    if reuse and (hit := reuse_existing(out, "generate", to_dict(cfg), seed, {})):
        return hit
    artifacts.ensure_writable(out)
    if preview is not None:
        artifacts.ensure_writable(preview)
    t0 = time.perf_counter()
    progress("generate", 0, 1)
    model, arrays, stats = generative.generate(cfg, seed)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    meta = artifacts.make_meta(
        "dataset",
        "generate",
        to_dict(cfg),
        seed=seed,
        stats=artifacts.to_jsonable(stats),
        model=model.params(),
        label_names=model.label_names,
    )
    artifacts.save_npz(out, arrays, meta)
    outputs = {OUTPUT_KEYS["generate"]: Path(out)}
    if preview is not None:
        from .preview import write_preview

        write_preview(preview, model, arrays)
        outputs["preview"] = Path(preview)
    progress("generate", 1, 1)
    h = model.image_size(model.depth)
    summary = [
        ("model", f"{model.kind} (depth {model.depth}, s={model.patch_size}, m0={model.m0})"),
        ("classes per level", ", ".join(map(str, model.classes))),
        ("patches per class (k)", str(model.k)),
        ("images", f"{len(arrays['y_train'])} train + {len(arrays['y_test'])} test, {h}x{h} greyscale"),
        ("labels", ", ".join(model.label_names)),
        ("written", ", ".join(str(p) for p in outputs.values())),
    ]
    return StageResult("generate", outputs, stats, summary)


# --------------------------------------------------------------------------- helpers shared by the stages


def _load_network_or_empty(model: str | Path | None, norm: dict | None, ds) -> tuple:
    """The network to extend/featurise with: a saved one, or just preprocessing."""
    from .errors import DataError
    from .network import empty_network, load_network

    if model is not None:
        net, meta = load_network(model)
        if list(ds.images.shape[1:]) != list(net.input_shape):
            raise DataError(
                f"{model} expects images of shape {tuple(net.input_shape)}, the data has {tuple(ds.images.shape[1:])}"
            )
        return net, meta
    assert norm is not None
    return empty_network(norm, list(ds.images.shape[1:])), None


def _level_below(ds, n_blocks: int) -> int:
    """On synthetic data: the level whose pixels generated the patches the next
    clustering sees (the observed image is level d; each block goes up one)."""
    from .errors import HgmError

    d = int(ds.meta["model"]["depth"])
    level = d - n_blocks - 1
    if level < 0:
        raise HgmError(f"the network already has {n_blocks} blocks and the generative model has depth {d}")
    return level


def resolve_cluster(cfg, ds, n_blocks: int):
    """Fill the "auto" fields of a ClusterConfig from the data (SPEC: defaults follow the data).

    On a synthetic model the patches the next clustering sees are the s x s
    manifestations of level-i pixels, i = d - 1 - (blocks so far); there are
    k*|C_i| distinct ones, and the clustering must give each its own cluster
    for the next map to be an orthonormal patch mapping (Lemma 7/8). So k
    defaults to k*|C_i| at every level. (Theorem 2 as extracted reads
    k_d = k|C_{d-1}| for the observed patches but |C_{i-1}| above; Lemma 8's
    proof needs phi_i(P) orthogonal for every two distinct patches P != P',
    which |C_{i-1}| clusters cannot give when k > 1.)"""
    import dataclasses

    out = dataclasses.replace(cfg)
    if ds.synthetic:
        m = ds.meta["model"]
        s = int(m["patch_size"])
        level = _level_below(ds, n_blocks)
        out.patch_size = out.patch_size or s
        out.stride = out.stride or out.patch_size
        out.k = out.k or int(m["k"]) * int(m["classes"][level])
    else:
        out.patch_size = out.patch_size or 3
        out.stride = out.stride or 1
        out.k = out.k or 256
    return out


# Outputs of the latest saved network, per split, kept between the stages of
# one process (the pipeline): cluster i+1, train-layer i+1, fit-svm and
# evaluate all push the same images through the same network. float16 on the
# CPU; only one network's outputs are kept; only what fits OUTPUT_CACHE_SHARE
# of the available memory.
_OUTPUTS: dict[tuple, "object"] = {}
OUTPUT_CACHE_SHARE = 0.25


def network_outputs(net, model, ds, dev, batch_size: int, progress: Progress, label: str):
    """FrozenFeatures of net(x) over ``ds``: reused when this process computed
    them already for the same network file and split, else computed (and kept
    when ``model`` is a file and they fit)."""
    from . import train

    key = (artifacts.file_hash(model), str(ds.path), ds.split, len(ds)) if model is not None else None
    if key is not None and key in _OUTPUTS:
        return train.FrozenFeatures.from_tensor(_OUTPUTS[key], dev)
    budget = int(OUTPUT_CACHE_SHARE * train.available_memory())
    feats = train.FrozenFeatures(net, ds.images, device=dev, batch_size=batch_size, budget=budget,
                                 progress=progress, label=label)
    if key is not None and feats.cache is not None:
        for old in [k for k in _OUTPUTS if k[0] != key[0]]:
            del _OUTPUTS[old]  # an earlier network's outputs: no later stage needs them
        _OUTPUTS[key] = feats.cache
    return feats


def _device_stats(dev) -> dict:
    """Device facts for a stage's stats: the device, and peak GPU memory on CUDA."""
    import torch

    out = {"device": str(dev)}
    if dev.type == "cuda":
        out["gpu_name"] = torch.cuda.get_device_name(dev)
        out["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    return out


def _stage_config(**sections) -> dict:
    return {name: to_dict(cfg) for name, cfg in sections.items()}


# --------------------------------------------------------------------------- cluster


def cluster(
    data_cfg,
    cfg,
    *,
    out: str | Path,
    model: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: Progress = no_progress,
    reuse: bool = False,
) -> StageResult:
    """Sample patches of the network's output (or the raw images) and run cosine k-means."""
    import numpy as np
    import torch

    from . import data, dist, kmeans
    from .device import resolve_device
    from .patches import sample_patches

    record = _stage_config(data=data_cfg, cluster=cfg)
    if reuse and (hit := reuse_existing(out, "cluster", record, seed, {"data": data.data_path(data_cfg), "model": model})):
        return hit
    artifacts.ensure_writable(out)
    dev = resolve_device(dist.init_from_env(device))  # under torchrun: join the group, shard the patches
    t0 = time.perf_counter()
    ds = data.load_dataset(data_cfg, "train", seed=seed)
    norm = data.normalization(data_cfg, ds) if model is None else None
    net, _ = _load_network_or_empty(model, norm, ds)
    net.to(dev).eval()
    rcfg = resolve_cluster(cfg, ds, len(net.blocks))
    rng = np.random.default_rng(seed)

    source, features = ds.images, None
    if model is not None:  # the network's outputs, kept for train-layer when they fit
        outs = network_outputs(net, model, ds, dev, rcfg.batch_size, progress, "network outputs")
        if outs.cache is not None:
            source = outs.cache

            def features(batch: torch.Tensor) -> torch.Tensor:
                return batch.to(dev).float()

    if features is None:

        def features(batch: np.ndarray) -> torch.Tensor:
            return net(torch.from_numpy(np.ascontiguousarray(batch)).to(dev))

    patches, pstats = sample_patches(
        source, rcfg.patches, rcfg.patch_size, rcfg.stride, features,
        rng=rng, batch_size=rcfg.batch_size, rows=kmeans.shard_for_rank(rcfg.patches), progress=progress,
    )
    t_patches = time.perf_counter() - t0
    x = kmeans.normalize_rows(patches, center=rcfg.center)
    result = kmeans.spherical_kmeans(
        x, rcfg.k, iterations=rcfg.iterations, init=rcfg.init, backend=rcfg.backend, device=dev, seed=seed,
        max_points_per_centroid=rcfg.max_points_per_centroid, seed_trials=rcfg.seed_trials,
        restarts=rcfg.restarts, progress=progress,
    )
    c_in = pstats["feature_shape"][0]
    centroids = result.centroids.reshape(rcfg.k, c_in, rcfg.patch_size, rcfg.patch_size).astype(np.float32)
    stats = {
        **result.stats,
        **{k: v for k, v in _device_stats(dev).items() if k != "device"},
        "patches": pstats,
        "objective": result.objective,
        "sizes": result.sizes,
        "seconds_patches": round(t_patches, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    meta = artifacts.make_meta(
        "centroids",
        "cluster",
        record,
        seed=seed,
        inputs={"data": ds.path, "model": model},
        stats=artifacts.to_jsonable(stats),
        resolved=to_dict(rcfg),
        preprocess=net.preprocess.spec(),
        n_blocks=len(net.blocks),
        center=rcfg.center,
    )
    if dist.is_main():
        artifacts.save_npz(out, {"centroids": centroids, "sizes": result.sizes.astype(np.int64)}, meta)
    final_obj = result.objective[-1] if result.objective else float("nan")
    summary = [
        ("k", str(rcfg.k)),
        ("patches (N)", f"{rcfg.patches:,} of size {rcfg.patch_size}x{rcfg.patch_size}x{c_in}, stride {rcfg.stride}"),
        ("objective (mean 1-cos)", f"{final_obj:.4f}"),
        ("cluster sizes", f"min {int(result.sizes.min())}, max {int(result.sizes.max())}"),
        ("backend / device", f"{result.stats.get('backend')} / {result.stats.get('device')}"),
        ("time", f"{stats['seconds']:.1f} s (patches {t_patches:.1f} s)"),
        ("written", str(out)),
    ]
    return StageResult("cluster", {OUTPUT_KEYS["cluster"]: Path(out)}, stats, summary)


def load_centroids(path: str | Path):
    """(centroids (k, C, s, s) float32, meta) with clear errors for bad files."""
    import numpy as np

    from .errors import ArtifactError

    arrays, meta = artifacts.load_npz(path, "centroids")
    c = arrays.get("centroids")
    if c is None or c.ndim != 4 or c.shape[2] != c.shape[3] or not np.isfinite(c).all():
        raise ArtifactError(f"{path} does not hold valid centroids of shape (k, C, s, s)")
    return c.astype(np.float32), meta


# --------------------------------------------------------------------------- train-layer


def resolve_train(cfg, ds, patch_size: int):
    import dataclasses

    out = dataclasses.replace(cfg)
    if out.stride is None:
        out.stride = patch_size if ds.synthetic else 1
    if out.padding is None:
        out.padding = 0 if ds.synthetic else patch_size // 2
    if out.pool == "auto":
        out.pool = "none" if ds.synthetic else "max"
    if out.activation == "auto":
        out.activation = "onehot" if ds.synthetic else "relu"
    return out


def train_layer(
    data_cfg,
    cfg,
    *,
    centroids: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: Progress = no_progress,
    reuse: bool = False,
) -> StageResult:
    """Build Conv(centroids)-ReLU(b)-Pool, train its 1x1 conv (§4.1/§6), append the block."""
    import torch

    from . import data, dist, train
    from .device import resolve_device
    from .network import Block, ClusterConv, check_centroids_fit, save_network

    record = _stage_config(data=data_cfg, train=cfg)
    inputs = {"data": data.data_path(data_cfg), "centroids": centroids, "model": model}
    if reuse and (hit := reuse_existing(out, "train-layer", record, seed, inputs)):
        return hit
    artifacts.ensure_writable(out)
    dev = resolve_device(dist.init_from_env(device))  # under torchrun: DDP on the 1x1 conv
    t0 = time.perf_counter()
    cents, cmeta = load_centroids(centroids)
    ds = data.load_dataset(data_cfg, "train", seed=seed)
    ds_val = _maybe_val(data_cfg, seed)
    net, nmeta = _load_network_or_empty(model, cmeta.get("preprocess"), ds)
    check_centroids_fit(net, cents, centroids)
    rcfg = resolve_train(cfg, ds, cents.shape[2])
    cluster_conv = ClusterConv(
        torch.from_numpy(cents), stride=rcfg.stride, padding=rcfg.padding, bias=rcfg.bias, normalize=rcfg.normalize_patches,
        center=bool(cmeta.get("center", False)), activation=rcfg.activation,
    )
    block = Block(cluster_conv, rcfg.pool, rcfg.pool_size)
    net.to(dev).eval()
    block.to(dev).eval()

    def frozen(x: torch.Tensor) -> torch.Tensor:
        return block.frozen(net(x))

    n_classes = len(ds.label_names)
    tstats: dict = {"mode": rcfg.mode}
    proj = None
    if rcfg.mode != "none":
        budget = train.memory_budget(rcfg.memory_budget)
        value_max = 1.0 if rcfg.activation == "onehot" else (max(1.0 + rcfg.bias, 1e-6) if rcfg.normalize_patches else None)
        n_val = len(ds_val) if ds_val is not None else 0
        share = len(ds) / (len(ds) + n_val)
        common = dict(device=dev, batch_size=rcfg.batch_size_features, cache_dtype=rcfg.cache_dtype, value_max=value_max)

        def frozen_features(split_ds, part: float, label: str):
            if model is not None:  # start from the network's outputs when an earlier stage kept them
                outs = network_outputs(net, model, split_ds, dev, rcfg.batch_size_features, progress, f"network outputs ({label})")
                if outs.cache is not None:
                    return train.FrozenFeatures(lambda t: block.frozen(t.float()), outs.cache, budget=int(budget * part),
                                                progress=progress, label=f"features ({label})", **common)
            return train.FrozenFeatures(frozen, split_ds.images, budget=int(budget * part), progress=progress,
                                        label=f"features ({label})", **common)

        feats = frozen_features(ds, share, "train")
        vfeats = frozen_features(ds_val, 1 - share, "val") if ds_val is not None else None
        if feats.cached and (vfeats is None or vfeats.cached):
            _OUTPUTS.clear()  # the input network's outputs are in the caches now: free them before training
        y_val = ds_val.labels if ds_val is not None else None
        if rcfg.mode == "gd-linear":
            res = train.train_tlgd(feats, ds.labels, vfeats, y_val, rcfg, seed=seed, device=dev, progress=progress)
        else:
            res = train.train_adam(feats, ds.labels, vfeats, y_val, n_classes, rcfg, seed=seed, device=dev, progress=progress)
        proj = res.proj
        tstats = {**res.stats, "features": feats.stats()}
    new_block = Block(cluster_conv.cpu(), rcfg.pool, rcfg.pool_size, proj)
    net = net.cpu()
    net.blocks.append(new_block)
    out_shape = net.output_shape()
    stats = {**tstats, **_device_stats(dev), "output_shape": out_shape, "seconds": round(time.perf_counter() - t0, 3)}
    info = {
        "mode": rcfg.mode, "k": int(cents.shape[0]), "n": new_block.out_channels, "patch_size": int(cents.shape[2]),
        "stride": rcfg.stride, "padding": rcfg.padding, "pool": rcfg.pool, "activation": rcfg.activation, "bias": rcfg.bias,
        "stats": artifacts.to_jsonable(tstats),
    }
    blocks_info = list((nmeta or {}).get("blocks", [])) + [info]
    meta = artifacts.make_meta(
        "network", "train-layer", record, seed=seed,
        inputs={"data": ds.path, "centroids": centroids, "model": model},
        stats=artifacts.to_jsonable(stats), resolved=to_dict(rcfg), output_shape=out_shape,
        label_names=ds.label_names,
    )
    if dist.is_main():
        save_network(out, net, meta, blocks_info)
    if rcfg.mode != "none":
        _keep_outputs(out, [(ds, feats), (ds_val, vfeats)], proj, budget, dev)
        del feats, vfeats
    val_acc = [v for v in tstats.get("val_accuracy", []) or [] if v is not None]
    summary = [
        ("block", f"{len(net.blocks)}: conv {cents.shape[2]}x{cents.shape[2]} ({cents.shape[0]} centroids, stride {rcfg.stride}) "
                  f"-> {rcfg.activation}(b={rcfg.bias:g}) -> pool {rcfg.pool} -> 1x1 ({rcfg.mode}, n={new_block.out_channels})"),
        ("output shape", "x".join(map(str, out_shape))),
        ("features", _features_summary(tstats.get("features"))),
        ("val accuracy (head)", f"{val_acc[-1]:.4f}" if val_acc else "-"),
        ("time", f"{stats['seconds']:.1f} s"),
        ("written", str(out)),
    ]
    return StageResult("train-layer", {OUTPUT_KEYS["train-layer"]: Path(out)}, stats, summary)


def _keep_outputs(out, splits, proj, budget: int, dev) -> None:
    """Leave net(x) of the network just written in the process cache, for the
    stages that follow (next cluster, fit-svm, evaluate): the 1x1 conv applied
    to the frozen features still in memory — a cheap pass instead of the
    whole network again. Only when every split is cached, everything fits the
    stage's memory budget, and this process wrote the file (rank 0)."""
    import numpy as np
    import torch

    splits = [(d, f) for d, f in splits if d is not None]
    if not Path(out).exists() or any(f.cache is None for _, f in splits):
        return
    n = proj.shape[0]
    outputs_bytes = sum(len(f) * n * int(np.prod(f.shape[1:])) * 2 for _, f in splits)
    if sum(f.cache_bytes for _, f in splits) + outputs_bytes > budget:
        return
    key_hash = artifacts.file_hash(out)
    for old in [k for k in _OUTPUTS if k[0] != key_hash]:
        del _OUTPUTS[old]
    w = proj.to(dev).reshape(n, -1)
    for ds_split, feats in splits:
        outs = torch.empty((len(feats), n, *feats.shape[1:]), dtype=torch.float16)
        for idx, x in feats.batches(np.arange(len(feats)), 512):
            outs[torch.from_numpy(idx)] = torch.einsum("nk,bkhw->bnhw", w, x).to(torch.float16).cpu()
        _OUTPUTS[(key_hash, str(ds_split.path), ds_split.split, len(ds_split))] = outs


def _features_summary(f: dict | None) -> str:
    if not f:
        return "-"
    where = f"cached as {f['cache_dtype']}" if f["cached"] else "recomputed every epoch (over the memory budget)"
    return f"{'x'.join(map(str, f['shape']))} per image, {f['cache_bytes'] / 2**30:.2f} GiB, {where}"


def _maybe_val(data_cfg, seed: int):
    """The validation split, or None when the config asks for none."""
    from . import data
    from .errors import DataError

    if data_cfg.val_size == 0:
        return None
    try:
        return data.load_dataset(data_cfg, "val", seed=seed)
    except DataError:
        return None


# --------------------------------------------------------------------------- fit-svm


def fit_svm(
    data_cfg,
    cfg,
    *,
    out: str | Path,
    model: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: Progress = no_progress,
    reuse: bool = False,
) -> StageResult:
    """Train the final classifier on the network's output (or on raw pixels without --model)."""
    from . import classify, data, train
    from .device import resolve_device

    record = _stage_config(data=data_cfg, classifier=cfg)
    if reuse and (hit := reuse_existing(out, "fit-svm", record, seed, {"data": data.data_path(data_cfg), "model": model})):
        return hit
    artifacts.ensure_writable(out)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    ds = data.load_dataset(data_cfg, "train", seed=seed)
    ds_val = _maybe_val(data_cfg, seed)
    net, _ = _load_network_or_empty(model, data.normalization(data_cfg, ds) if model is None else None, ds)
    net.to(dev).eval()
    budget = train.memory_budget(None)
    feats = network_outputs(net, model, ds, dev, cfg.batch_size_features, progress, "features (train)")
    vfeats = network_outputs(net, model, ds_val, dev, cfg.batch_size_features, progress, "features (val)") if ds_val is not None else None
    n_classes = len(ds.label_names)
    y_val = ds_val.labels if ds_val is not None else None
    if cfg.classifier == "svm":
        res = classify.fit_svm(feats, ds.labels, n_classes, cfg, seed=seed, budget=budget, val=vfeats, y_val=y_val)
    else:
        res = classify.fit_adam(feats, ds.labels, n_classes, cfg, seed=seed, val=vfeats, y_val=y_val, progress=progress)
    train_acc = classify.accuracy(res.head, feats, ds.labels)
    in_shape = list(feats.shape)
    stats = {**res.stats, **_device_stats(dev), "train_accuracy": train_acc, "curve": res.curve,
             "seconds": round(time.perf_counter() - t0, 3)}
    payload = {
        "kind": cfg.classifier,
        "dims": classify.head_spec(res.head),
        "state": res.head.state_dict(),
        "input_shape": in_shape,
        "label_names": list(ds.label_names),
        "curve": [[int(s), float(a)] for s, a in res.curve],
    }
    meta = artifacts.make_meta(
        "classifier", "fit-svm", record, seed=seed,
        inputs={"data": ds.path, "model": model}, stats=artifacts.to_jsonable(stats),
    )
    artifacts.save_pt(out, payload, meta)
    summary = [
        ("classifier", f"{cfg.classifier} on {'x'.join(map(str, in_shape))} features"),
        ("train accuracy", f"{train_acc:.4f}"),
        ("val accuracy", f"{res.curve[-1][1]:.4f}" if res.curve else "-"),
        ("time", f"{stats['seconds']:.1f} s"),
        ("written", str(out)),
    ]
    return StageResult("fit-svm", {OUTPUT_KEYS["fit-svm"]: Path(out)}, stats, summary)


def load_classifier(path: str | Path):
    """(head nn.Sequential, payload dict, meta)."""
    from . import classify
    from .errors import ArtifactError

    payload, meta = artifacts.load_pt(path, "classifier")
    try:
        head = classify.head_from_state(payload["kind"], payload["dims"], payload["state"])
    except KeyError as e:
        raise ArtifactError(f"{path} is not a valid classifier file (missing {e})") from None
    return head, payload, meta


def _classifier_network(payload: dict, classifier, model, ds, data_cfg, seed: int):
    """The network a classifier runs on: --model, the one the classifier carries
    (baselines are trained end to end and carry theirs), or raw pixels."""
    from . import data
    from .errors import DataError
    from .network import network_from_payload

    if model is None and "network" in payload:
        net = network_from_payload(payload["network"], classifier)
        if list(ds.images.shape[1:]) != list(net.input_shape):
            raise DataError(
                f"{classifier} expects images of shape {tuple(net.input_shape)}, the data has {tuple(ds.images.shape[1:])}"
            )
        return net
    norm = None
    if model is None:
        norm = data.normalization(data_cfg, data.load_dataset(data_cfg, "train", seed=seed))
    return _load_network_or_empty(model, norm, ds)[0]


# --------------------------------------------------------------------------- evaluate


def evaluate(
    data_cfg,
    cfg,
    *,
    model: str | Path | None,
    classifier: str | Path,
    out: str | Path | None = None,
    plot: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: Progress = no_progress,
) -> tuple[StageResult, dict]:
    """Accuracy, per-class accuracy, confusion; latent recovery on synthetic data."""
    from . import classify, data, metrics
    from .device import resolve_device
    from .errors import DataError, HgmError

    for p in (out, plot):
        if p is not None:
            artifacts.ensure_writable(p)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    head, payload, _ = load_classifier(classifier)
    ds = data.load_dataset(data_cfg, cfg.split, seed=seed)
    net = _classifier_network(payload, classifier, model, ds, data_cfg, seed)
    if list(net.output_shape()) != list(payload["input_shape"]):
        raise HgmError(
            f"{classifier} was trained on features of shape {'x'.join(map(str, payload['input_shape']))} "
            f"but {model or 'the raw images'} produce {'x'.join(map(str, net.output_shape()))}"
        )
    n_classes = len(payload["label_names"])
    if len(ds.labels) and int(ds.labels.max()) >= n_classes:
        raise DataError(
            f"the {cfg.split} split has label {int(ds.labels.max())} but {classifier} knows only {n_classes} classes"
        )
    net.to(dev).eval()
    feats = network_outputs(net, model if "network" not in payload or model is not None else None, ds, dev, 256, progress, "features")
    pred = classify.predict(head, feats)
    result = {"split": cfg.split, **metrics.classification_metrics(pred, ds.labels, payload["label_names"])}
    if ds.synthetic and any(hasattr(b, "cluster") for b in net.blocks):  # baselines have no clusters to score
        rec, sep = metrics.latent_recovery(net, ds.images[:2000], {k: v[:2000] for k, v in ds.latents.items()},
                                           ds.meta["model"], dev, seed=seed)
        result["latent_recovery"] = rec
        result["separation"] = sep
    result["curve"] = payload.get("curve", [])
    result["seconds"] = round(time.perf_counter() - t0, 3)
    if out is not None:
        artifacts.save_json(out, artifacts.to_jsonable(result))
    if plot is not None:
        from .plots import write_metrics_plot

        write_metrics_plot(plot, result)
    summary = [("split", f"{cfg.split} ({result['n']} images)"), ("accuracy", f"{result['accuracy']:.4f}")]
    for e in result.get("latent_recovery", []):
        ari = "-" if e["ari"] is None else f"{e['ari']:.4f}"
        ari_c = "-" if e["ari_class"] is None else f"{e['ari_class']:.4f}"
        summary.append((f"level {e['level']} recovery", f"ARI patches {ari}, ARI classes {ari_c}"))
    for s in result.get("separation", []):
        summary.append((f"block {s['block']} separation",
                        f"max intra {s['max_intra']:.3g} {'<' if s['separated'] else '>='} min inter {s['min_inter']:.3g}"))
    outputs = {k: Path(v) for k, v in (("metrics", out), ("plot", plot)) if v is not None}
    return StageResult("evaluate", outputs, result, summary), result


# --------------------------------------------------------------------------- export


def export(*, model: str | Path | None, classifier: str | Path, out: str | Path) -> StageResult:
    """The network + classifier as one TorchScript nn.Sequential, runnable without hgm."""
    import json
    import warnings

    import torch

    from .errors import HgmError
    from .network import load_network, network_from_payload

    artifacts.ensure_writable(out)
    head, payload, cmeta = load_classifier(classifier)
    if model is not None:
        net, nmeta = load_network(model)
    elif "network" in payload:
        net, nmeta = network_from_payload(payload["network"], classifier), cmeta
    else:
        raise HgmError("--model is required: export needs the network the classifier was trained on")
    if list(net.output_shape()) != list(payload["input_shape"]):
        raise HgmError(
            f"{classifier} expects features of shape {payload['input_shape']} but {model} produces {net.output_shape()}"
        )
    seq = torch.nn.Sequential(*net.to_sequential(), *head).eval()
    pre = net.preprocess.spec()
    info = {
        "hgm_version": artifacts.versions()["hgm"],
        "input": {
            "shape": ["B", *net.input_shape],
            "dtype": "uint8 or float32 pixel values as stored in the dataset (CIFAR-10: 0..255)",
            "preprocessing": f"done inside the model: (x * {pre['scale']:.6g} - mean) / std per channel",
            "mean": pre["mean"],
            "std": pre["std"],
        },
        "output": {"logits": len(payload["label_names"]), "label_names": payload["label_names"], "predict": "argmax"},
        "blocks": nmeta.get("blocks", []),
        "classifier": payload["kind"],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices: TorchScript is still what loads without hgm
        scripted = torch.jit.script(seq)
        artifacts.write_file(
            out, lambda tmp: torch.jit.save(scripted, str(tmp), _extra_files={"hgm.json": json.dumps(info)})
        )
    summary = [
        ("layers", " -> ".join(type(m).__name__ for m in seq)),
        ("input", f"{'x'.join(map(str, net.input_shape))} ({info['input']['preprocessing']})"),
        ("written", str(out)),
    ]
    return StageResult("export", {"model": Path(out)}, {"info": info}, summary)


# --------------------------------------------------------------------------- baseline


def baseline(
    data_cfg,
    cfg,
    *,
    arch: str,
    head: str,
    out: str | Path,
    seed: int = 0,
    device: str = "auto",
    progress: Progress = no_progress,
    reuse: bool = False,
) -> StageResult:
    """The paper's comparison networks (Figure 3), trained end to end (cnn) or
    with frozen random convolutions (cnn-random); one classifier file that
    carries its network."""
    from . import baselines, data, train
    from .device import resolve_device

    baselines.check_choice(arch, head)
    record = {**_stage_config(data=data_cfg, classifier=cfg), "baseline": {"arch": arch, "head": head}}
    if reuse and (hit := reuse_existing(out, "baseline", record, seed, {"data": data.data_path(data_cfg)})):
        return hit
    artifacts.ensure_writable(out)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    ds = data.load_dataset(data_cfg, "train", seed=seed)
    ds_val = _maybe_val(data_cfg, seed)
    norm = data.normalization(data_cfg, ds)
    net, clf, curve, bstats = baselines.train_baseline(
        ds, ds_val, norm, arch=arch, head=head, cfg=cfg, seed=seed, device=dev,
        memory_budget=train.memory_budget(None), progress=progress,
    )
    stats = {**bstats, **_device_stats(dev), "curve": curve, "seconds": round(time.perf_counter() - t0, 3)}
    payload = baselines.baseline_payload(net, clf, head, curve, ds.label_names, arch=arch)
    meta = artifacts.make_meta(
        "classifier", "baseline", record, seed=seed, inputs={"data": ds.path}, stats=artifacts.to_jsonable(stats),
    )
    artifacts.save_pt(out, payload, meta)
    summary = [
        ("baseline", f"{arch} + {head} ({'conv frozen at random init' if arch == 'cnn-random' else 'trained end to end'})"),
        ("iterations", str(cfg.iterations)),
        ("val accuracy", f"{curve[-1][1]:.4f}" if curve else "-"),
        ("time", f"{stats['seconds']:.1f} s"),
        ("written", str(out)),
    ]
    return StageResult("baseline", {OUTPUT_KEYS["baseline"]: Path(out)}, stats, summary)
