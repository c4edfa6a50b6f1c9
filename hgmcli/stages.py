"""One function per command: load inputs -> call the core -> write outputs.

The CLI and the pipeline are the only callers; nothing here parses options or
prints. Every stage is a *body* (what is particular to it: load, compute,
describe) handed to ``runner.run_stage``, which owns what every stage does the
same way: the reuse check, the output guard, the device, timing, metadata,
the atomic save and the "time / written" summary rows. The artifact records the
stage's config, the seed and the hashes of its inputs: what ``hgm pipeline``
compares to decide whether a stage can be skipped.

Network outputs computed by one stage are handed to the next through a
``features.FeatureCache`` that the pipeline passes in (``cache=``); a single
command runs one stage and passes none."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import artifacts, baselines, classify, data, features, generative, kmeans, metrics
from .config import to_dict
from .errors import DataError, HgmError
from .export import export
from .network import Block, ClusterConv, check_centroids_fit, load_centroids, network_for, network_from_payload, save_network
from .patches import fit_zca, sample_patches, source_of
from .plots import write_metrics_plot
from .preview import write_preview
from .progress import Progress, no_progress
from .resolve import resolve_classifier, resolve_cluster, resolve_train
from .runner import Produced, StageResult, run_stage
from .train import TRAIN_MODES

__all__ = ["StageResult", "baseline", "cluster", "evaluate", "export", "fit_svm", "generate", "train_layer"]


def _record(**sections) -> dict:
    return {name: to_dict(cfg) for name, cfg in sections.items()}


def _shape(shape) -> str:
    return "x".join(map(str, shape))


# --------------------------------------------------------------------------- generate


def generate(cfg, *, out: str | Path, seed: int = 0, preview: str | Path | None = None,
             progress: Progress = no_progress, reuse: bool = False) -> StageResult:
    """Sample a dataset from the hierarchical model (§3.1) or the digits (§3.2)."""

    def body(_dev, _ckpt) -> Produced:
        progress("generate", 0, 1)
        model, arrays, stats = generative.generate(cfg, seed)
        progress("generate", 1, 1)

        def save(path: Path, meta: dict) -> None:
            artifacts.save_npz(path, arrays, meta)
            if preview is not None:
                write_preview(preview, model, arrays)

        h = model.image_size(model.depth)
        summary = [
            ("family", f"{model.kind} (depth {model.depth}, s={model.patch_size}, m0={model.m0})"),
            ("classes per level", ", ".join(map(str, model.classes))),
            ("patches per class", str(model.k)),
            ("images", f"{len(arrays['y_train'])} train + {len(arrays['y_test'])} test, {h}x{h} greyscale"),
            ("labels", ", ".join(model.label_names)),
        ]
        meta = {"model": model.params(), "label_names": model.label_names}
        return Produced(save, stats, summary, meta, outputs={"preview": Path(preview)} if preview else {})

    return run_stage("generate", body, out=out, record=to_dict(cfg), seed=seed, device=None, reuse=reuse,
                     extra_outputs=(preview,) if preview else ())


# --------------------------------------------------------------------------- helpers shared by the stages


def _curves(curves, stage: str):
    """``curves(stage, metric, step, value)`` (the run folder's curves.csv) bound to one stage, or None."""
    return (lambda metric, step, value: curves(stage, metric, step, value)) if curves is not None else None


def _maybe_val(data_cfg, seed: int):
    """The validation split, or None when the config asks for none."""
    if data_cfg.val_size == 0:
        return None
    try:
        return data.load_dataset(data_cfg, "val", seed=seed)
    except DataError:
        return None


# --------------------------------------------------------------------------- cluster


def cluster(data_cfg, cfg, *, out: str | Path, model: str | Path | None = None, seed: int = 0,
            device: str = "auto", progress: Progress = no_progress, reuse: bool = False,
            cache=None) -> StageResult:
    """Sample patches of the network's output (or the raw images) and run cosine k-means."""

    def body(dev, ckpt) -> Produced:
        t0 = time.perf_counter()
        ds = data.load_dataset(data_cfg, "train", seed=seed)
        net, _ = network_for(model, data.normalization(data_cfg, ds) if model is None else None, ds)
        net.to(dev).eval()
        rcfg = resolve_cluster(cfg, ds, len(net.blocks), dev)
        c_in = net.output_shape()[0]
        copies = 4 if rcfg.whiten == "zca" else 2  # float32 patches, normalised rows (and a float64 copy to whiten)
        features.check_fits(rcfg.patches * c_in * rcfg.patch_size**2 * 4 * copies, f"{rcfg.patches:,} patches")
        outs = features.network_outputs(net, model, ds, dev, rcfg.batch_size, cache=cache, progress=progress) \
            if model is not None else None  # the network's outputs, kept for train-layer when they fit
        source, fn = source_of(net, ds.images, outs, dev)
        patches, pstats = sample_patches(
            source, rcfg.patches, rcfg.patch_size, rcfg.stride, fn, rng=np.random.default_rng(seed),
            batch_size=rcfg.batch_size, rows=kmeans.shard_for_rank(rcfg.patches), progress=progress,
        )
        t_patches = time.perf_counter() - t0
        arrays, whitening = {}, None
        if rcfg.whiten == "zca":  # cluster the whitened patches; the block whitens identically (network.Whiten)
            a, b, whitening = fit_zca(patches, rcfg.whiten_eps, center=rcfg.center)
            patches = patches @ a.T + b
            s = rcfg.patch_size
            arrays = {"whiten_weight": a.reshape(len(a), c_in, s, s), "whiten_bias": b}
        result = kmeans.spherical_kmeans(
            kmeans.normalize_rows(patches, center=rcfg.center and whitening is None), rcfg.k,
            iterations=rcfg.lloyd_iterations,
            init=rcfg.init, backend=rcfg.backend, device=dev, seed=seed,
            max_points_per_centroid=rcfg.max_points_per_centroid,
            seed_trials=None if rcfg.seed_trials == "auto" else rcfg.seed_trials, restarts=rcfg.restarts,
            progress=progress,
        )
        s = rcfg.patch_size
        shape = (rcfg.k, patches.shape[1], 1, 1) if whitening else (rcfg.k, c_in, s, s)  # whitened: a 1x1 conv
        centroids = result.centroids.reshape(shape).astype(np.float32)
        stats = {**result.stats, "patches": pstats, "objective": result.objective, "sizes": result.sizes,
                 "seconds_patches": round(t_patches, 3), "whitening": whitening}
        summary = [
            ("k", str(rcfg.k)),
            ("patches (N)", f"{rcfg.patches:,} of size {s}x{s}x{c_in}, stride {rcfg.stride}"),
            ("objective (mean 1-cos)", f"{result.objective[-1]:.4f}" if result.objective else "-"),
            ("cluster sizes", f"min {int(result.sizes.min())}, max {int(result.sizes.max())}"),
            ("backend / device", f"{result.stats.get('backend')} / {result.stats.get('device')}"),
        ]
        meta = {"resolved": to_dict(rcfg), "preprocess": net.preprocess.spec(), "n_blocks": len(net.blocks),
                "center": rcfg.center and whitening is None, "whiten": rcfg.whiten}
        arrays.update(centroids=centroids, sizes=result.sizes.astype(np.int64))
        return Produced(lambda p, m: artifacts.save_npz(p, arrays, m), stats, summary, meta,
                        time_detail=f"patches {t_patches:.1f} s")

    return run_stage("cluster", body, out=out, record=_record(data=data_cfg, cluster=cfg), seed=seed,
                     inputs={"data": data.data_path(data_cfg), "model": model}, device=device, reuse=reuse,
                     distributed=True)


# --------------------------------------------------------------------------- train-layer


def train_layer(data_cfg, cfg, *, centroids: str | Path, out: str | Path, model: str | Path | None = None,
                seed: int = 0, device: str = "auto", progress: Progress = no_progress, reuse: bool = False,
                cache=None, curves=None) -> StageResult:
    """Build Conv(centroids)-encoder-Pool, train its 1x1 conv (§4.1/§6), append the block."""

    def body(dev, ckpt) -> Produced:
        cents, whiten, cmeta = load_centroids(centroids)
        ds, ds_val = data.load_dataset(data_cfg, "train", seed=seed), _maybe_val(data_cfg, seed)
        if cfg.flip:
            ds = data.with_flips(ds)
        net, nmeta = network_for(model, cmeta.get("preprocess"), ds)
        check_centroids_fit(net, whiten.weight if whiten is not None else cents, centroids)
        rcfg = resolve_train(cfg, ds, whiten.size if whiten is not None else cents.shape[2])
        geometry = dict(stride=rcfg.stride, padding=rcfg.padding)
        if whiten is not None:  # the whitening conv has the block's geometry; the centroids are a 1x1 conv after it
            whiten.stride, whiten.padding = rcfg.stride, rcfg.padding
            geometry = dict(stride=1, padding=0)
        conv = ClusterConv(torch.from_numpy(cents), bias=rcfg.bias, normalize=rcfg.normalize_patches,
                           center=bool(cmeta.get("center", False)), activation=rcfg.activation, q=rcfg.knn_q,
                           norm_eps=rcfg.normalize_eps, **geometry)
        block = Block(conv, rcfg.pool, rcfg.pool_size, whiten=whiten, pool_stride=rcfg.pool_stride)
        net.to(dev).eval()
        block.to(dev).eval()
        fit = TRAIN_MODES[rcfg.mode].fit
        proj, tstats, splits, budget = None, {"mode": rcfg.mode}, [], 0
        if fit is not None:
            budget = features.memory_budget(rcfg.memory_budget)
            splits = features.block_features(net, block, model, ds, ds_val, rcfg, budget, dev, cache, progress)
            feats, vfeats = splits[0][1], splits[1][1]
            ex = features.Examples(feats, ds.labels, len(ds.label_names), vfeats,
                                   ds_val.labels if ds_val is not None else None)
            res = fit(ex, rcfg, seed=seed, device=dev, progress=progress, checkpoint=ckpt,
                      curves=_curves(curves, "train-layer"))
            proj, tstats = res.proj, {**res.stats, "features": feats.stats()}
        net = net.cpu()
        net.blocks.append(Block(conv.cpu(), rcfg.pool, rcfg.pool_size, proj, whiten=block.whiten.cpu(),
                                pool_stride=rcfg.pool_stride))
        out_shape = net.output_shape()
        info = {"mode": rcfg.mode, "k": int(cents.shape[0]), "n": net.blocks[-1].out_channels,
                "patch_size": whiten.size if whiten is not None else int(cents.shape[2]), "stride": rcfg.stride,
                "padding": rcfg.padding, "whiten": whiten is not None, "pool": rcfg.pool, "pool_size": rcfg.pool_size,
                "activation": rcfg.activation, "bias": rcfg.bias, "stats": artifacts.to_jsonable(tstats)}
        blocks_info = list((nmeta or {}).get("blocks", [])) + [info]

        def save(path: Path, meta: dict) -> None:
            save_network(path, net, meta, blocks_info)
            if proj is not None:  # leave net(x) for the next stages of this process
                features.keep_projected(cache, path, splits, proj, budget, dev)

        val_acc = [v for v in tstats.get("val_accuracy", []) or [] if v is not None]
        summary = [
            ("block", f"{len(net.blocks)}: {'whiten -> ' if whiten is not None else ''}conv {info['patch_size']}x"
                      f"{info['patch_size']} ({cents.shape[0]} centroids, stride {rcfg.stride}) -> {rcfg.activation}"
                      f"(b={rcfg.bias:g}) -> pool {rcfg.pool} {rcfg.pool_size} -> 1x1 ({rcfg.mode}, "
                      f"n={net.blocks[-1].out_channels})"),
            ("output shape", _shape(out_shape)),
            ("features", features.describe(tstats.get("features"))),
            ("val accuracy (head)", f"{val_acc[-1]:.4f}" if val_acc else "-"),
        ]
        meta = {"resolved": to_dict(rcfg), "output_shape": out_shape, "label_names": ds.label_names}
        return Produced(save, {**tstats, "output_shape": out_shape}, summary, meta)

    inputs = {"data": data.data_path(data_cfg), "centroids": centroids, "model": model}
    return run_stage("train-layer", body, out=out, record=_record(data=data_cfg, train=cfg), seed=seed,
                     inputs=inputs, device=device, reuse=reuse, distributed=True)


# --------------------------------------------------------------------------- fit-svm


def fit_svm(data_cfg, cfg, *, out: str | Path, model: str | Path | None = None, seed: int = 0,
            device: str = "auto", progress: Progress = no_progress, reuse: bool = False,
            cache=None, curves=None) -> StageResult:
    """Train the final classifier on the network's output (or on raw pixels without --model)."""

    def body(dev, ckpt) -> Produced:
        ds, ds_val = data.load_dataset(data_cfg, "train", seed=seed), _maybe_val(data_cfg, seed)
        net, _ = network_for(model, data.normalization(data_cfg, ds) if model is None else None, ds)
        net.to(dev).eval()
        budget = features.memory_budget("auto")
        if cfg.flip:  # after the normalisation: it is the training split's own
            ds = data.with_flips(ds)
        splits = [features.network_outputs(net, model, d, dev, cfg.batch_size_features, cache=cache,
                                           progress=progress, label=f"features ({d.split})") if d is not None else None
                  for d in (ds, ds_val)]
        feats, vfeats = splits
        rcfg = resolve_classifier(cfg, len(ds), int(np.prod(feats.shape)), dev, budget)
        ex = features.Examples(feats, ds.labels, len(ds.label_names), vfeats,
                               ds_val.labels if ds_val is not None else None)
        res = classify.HEADS[rcfg.head].fit(ex, rcfg, seed=seed, budget=budget, progress=progress, checkpoint=ckpt,
                                            curves=_curves(curves, "fit-svm"))
        train_acc = classify.accuracy(res.head, feats, ds.labels)
        payload = {
            "kind": rcfg.head,
            "dims": classify.head_spec(res.head),
            "state": res.head.state_dict(),
            "input_shape": list(feats.shape),
            "label_names": list(ds.label_names),
            "curve": [[int(s), float(a)] for s, a in res.curve],
        }
        stats = {**res.stats, "backend": rcfg.svm_backend if rcfg.head == "svm" else "adam",
                 "train_accuracy": train_acc, "curve": res.curve}
        summary = [
            ("classifier", f"{rcfg.head} on {_shape(feats.shape)} features"),
            ("train accuracy", f"{train_acc:.4f}"),
            ("val accuracy", f"{res.curve[-1][1]:.4f}" if res.curve else "-"),
        ]
        return Produced(lambda p, m: artifacts.save_pt(p, payload, m), stats, summary, {"resolved": to_dict(rcfg)})

    return run_stage("fit-svm", body, out=out, record=_record(data=data_cfg, classifier=cfg), seed=seed,
                     inputs={"data": data.data_path(data_cfg), "model": model}, device=device, reuse=reuse)


# --------------------------------------------------------------------------- evaluate


def _classifier_network(payload: dict, classifier, model, ds, data_cfg, seed: int):
    """The network a classifier runs on: --model, the one the classifier carries
    (baselines are trained end to end and carry theirs), or raw pixels."""
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
    return network_for(model, norm, ds)[0]


def evaluate(data_cfg, cfg, *, model: str | Path | None, classifier: str | Path, out: str | Path | None = None,
             plot: str | Path | None = None, seed: int = 0, device: str = "auto", progress: Progress = no_progress,
             cache=None) -> tuple[StageResult, dict]:
    """Accuracy, per-class accuracy, confusion; latent recovery on synthetic data."""
    result: dict = {}

    def body(dev, ckpt) -> Produced:
        head, payload, cmeta = classify.load_classifier(classifier)
        ds = data.load_dataset(data_cfg, cfg.split, seed=seed)
        net = _classifier_network(payload, classifier, model, ds, data_cfg, seed)
        if list(net.output_shape()) != list(payload["input_shape"]):
            raise HgmError(f"{classifier} was trained on features of shape {_shape(payload['input_shape'])} "
                           f"but {model or 'the raw images'} produce {_shape(net.output_shape())}")
        n_classes = len(payload["label_names"])
        if len(ds.labels) and int(ds.labels.max()) >= n_classes:
            raise DataError(f"the {cfg.split} split has label {int(ds.labels.max())} but {classifier} knows only "
                            f"{n_classes} classes")
        net.to(dev).eval()
        carried = model is None and "network" in payload  # a baseline's own network: no file to key a cache on
        feats = features.network_outputs(net, None if carried else model, ds, dev, 256, cache=cache,
                                         progress=progress, label="features")
        result.update(split=cfg.split, **metrics.classification_metrics(classify.predict(head, feats), ds.labels,
                                                                         payload["label_names"]))
        if ds.synthetic and any(hasattr(b, "cluster") for b in net.blocks):  # baselines have no clusters to score
            rec, sep = metrics.latent_recovery(net, ds.images[:2000], {k: v[:2000] for k, v in ds.latents.items()},
                                               ds.meta["model"], dev, seed=seed)
            result.update(latent_recovery=rec, separation=sep)
        result["curve"] = payload.get("curve", [])
        trained = cmeta.get("stats", {})  # how the classifier trained: its running train accuracy and curve
        result.update(train_accuracy=trained.get("train_accuracy"), history=trained.get("history", []))
        summary = [("split", f"{cfg.split} ({result['n']} images)"), ("accuracy", f"{result['accuracy']:.4f}")]
        for e in result.get("latent_recovery", []):
            ari = "-" if e["ari"] is None else f"{e['ari']:.4f}"
            ari_c = "-" if e["ari_class"] is None else f"{e['ari_class']:.4f}"
            summary.append((f"level {e['level']} recovery", f"ARI patches {ari}, ARI classes {ari_c}"))
        for s in result.get("separation", []):
            summary.append((f"block {s['block']} separation", f"max intra {s['max_intra']:.3g} "
                            f"{'<' if s['separated'] else '>='} min inter {s['min_inter']:.3g}"))

        if plot is not None:
            write_metrics_plot(plot, result)

        def save(path: Path, stats: dict) -> None:
            artifacts.save_json(path, artifacts.to_jsonable({**result, "seconds": stats["seconds"]}))

        return Produced(save, result, summary, outputs={"plot": Path(plot)} if plot else {})

    res = run_stage("evaluate", body, out=out, device=device, extra_outputs=(plot,) if plot else (),
                    inputs={"classifier": classifier, "model": model, "data": data.data_path(data_cfg)})
    return res, {**result, "seconds": res.stats["seconds"]}


# --------------------------------------------------------------------------- baseline


def baseline(data_cfg, cfg, bcfg, *, out: str | Path, seed: int = 0, device: str = "auto",
             progress: Progress = no_progress, reuse: bool = False, curves=None) -> StageResult:
    """The paper's comparison networks (Figure 3), trained end to end (cnn) or
    with frozen random convolutions (cnn-random); one classifier file that
    carries its network. ``cfg``: the classifier section (Adam settings);
    ``bcfg``: the baseline section (arch, head)."""

    def body(dev, ckpt) -> Produced:
        ds, ds_val = data.load_dataset(data_cfg, "train", seed=seed), _maybe_val(data_cfg, seed)
        net, clf, curve, bstats = baselines.train_baseline(
            ds, ds_val, data.normalization(data_cfg, ds), arch=bcfg.arch, head=bcfg.head, cfg=cfg, seed=seed,
            device=dev, memory_budget=features.memory_budget("auto"), progress=progress, checkpoint=ckpt,
            curves=_curves(curves, "baseline"),
        )
        payload = baselines.baseline_payload(net, clf, bcfg.head, curve, ds.label_names, arch=bcfg.arch)
        how = "conv frozen at random init" if bcfg.arch == "cnn-random" else "trained end to end"
        summary = [
            ("baseline", f"{bcfg.arch} + {bcfg.head} ({how})"),
            ("adam steps", str(cfg.adam_steps)),
            ("val accuracy", f"{curve[-1][1]:.4f}" if curve else "-"),
        ]
        return Produced(lambda p, m: artifacts.save_pt(p, payload, m), {**bstats, "curve": curve}, summary)

    return run_stage("baseline", body, out=out, record=_record(data=data_cfg, classifier=cfg, baseline=bcfg),
                     seed=seed, inputs={"data": data.data_path(data_cfg)}, device=device, reuse=reuse)
