"""Per-stage speed against each stage's bound, and cost growth with the data
(issue 16, parts 4 and 5), airbench style.

For a pipeline config on CIFAR-10 it runs the stages one by one as single
commands (each under /usr/bin/time -v for its peak RSS), then prints per
stage: the measured seconds; the work the stage must do (FLOPs of its
convolutions / matrix products, bytes it must stream); the time that work
takes at this machine's measured fp32 GEMM rate and memory bandwidth
(whichever bounds it); and the ratio measured / bound. With ``--sizes`` it
repeats the chain at several training-set sizes (the growth table).

    python benchmarks/stages.py --data ../shared/data                      # cifar-cpu.yaml, 40k images
    python benchmarks/stages.py --data ../shared/data --sizes 10000 20000 40000   # both tables, one run

A size is a number of training images: the first ``size`` images train and
the 10,000 after them validate (``data.limit = size + 10000``), so 40,000 is
the standard protocol (data_batch_5 validates).

The FLOP counts are the model's, not a profiler's: a frozen conv over N
images is 2 N H' W' (C s^2) k; an Adam epoch of the 1x1 conv is
3 x 2 N h w k n (forward, two backward products) plus its head; a Lloyd
iteration 2 N d k; greedy k-means++ (2 + ln k) x 2 N d k. Each stage is a
single command, so it also recomputes the network so far (its frozen convs
and 1x1 convs) over the images it needs: cluster i over the training images,
train-layer i and fit-svm over training and validation images. Bytes: what a
stage must read at least once per pass (cached features, patches)."""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hgmcli.config import PipelineConfig, load_config  # noqa: E402
from hgmcli.presets import resolve_config  # noqa: E402


def machine_rates() -> tuple[float, float]:
    """(fp32 GEMM FLOP/s, memory bandwidth bytes/s) of this machine with torch's threads: best of 5."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048**3 / (time.perf_counter() - t))
    x = torch.empty(1 << 27)  # 512 MB
    y = torch.empty_like(x)
    bw = 0.0
    for _ in range(5):
        t = time.perf_counter()
        y.copy_(x)
        bw = max(bw, 2 * x.numel() * 4 / (time.perf_counter() - t))
    return best, bw


def work(cfg: PipelineConfig, n_train: int, n_val: int, hw: int = 32, channels: int = 3) -> dict[str, tuple[float, float]]:
    """{stage: (FLOPs, bytes)} of the pipeline's model of work (see the module docstring)."""
    out: dict[str, tuple[float, float]] = {}
    c, h = channels, hw
    n_img = n_train + n_val
    net = 0.0  # FLOPs of the network so far over one image: every single command recomputes it
    for i, layer in enumerate(cfg.layers, start=1):
        cl, tr = layer.cluster, layer.train
        s = 3 if cl.patch_size == "auto" else cl.patch_size
        k = 256 if cl.k == "auto" else cl.k
        d = c * s * s
        trials = 2 + math.log(k) if cl.seed_trials == "auto" else cl.seed_trials
        km = 2.0 * cl.patches * d * k * (cl.lloyd_iterations + trials)
        owners = n_train * (1 - math.exp(-cl.patches / n_train))  # images holding a sampled patch
        out[f"cluster {i}"] = (km + net * owners, cl.patches * d * 4.0 * (cl.lloyd_iterations + 1))
        pad = s // 2 if tr.padding == "auto" else tr.padding  # images: "same"
        hc = h + 2 * pad - s + 1  # the cluster conv's map
        conv = 2.0 * hc * hc * d * k  # the frozen cluster conv, one image
        hp = tr.pool_size if tr.pool == "grid" else hc // tr.pool_size if tr.pool in ("auto", "max", "avg") else hc
        n = k if tr.mode == "none" else tr.out_channels  # mode none: no 1x1 conv
        feat_bytes = n_train * k * hp * hp * (1 if tr.cache_dtype == "uint8" else 2)
        steps = 0 if tr.mode == "none" else tr.epochs if tr.adam_steps is None else tr.adam_steps * tr.batch_size / n_train
        adam = 3 * 2.0 * n_train * hp * hp * k * n * steps + 3 * 2.0 * n_train * n * hp * hp * 10 * steps
        out[f"train-layer {i}"] = ((net + conv) * n_img + adam, feat_bytes * (steps + 1))
        net += conv + (0.0 if tr.mode == "none" else 2.0 * hp * hp * k * n)  # cluster conv, 1x1 conv on the pooled map
        c, h = n, hp
    dims = [c * h * h] + (cfg.classifier.hidden if cfg.classifier.head == "fc" else []) + [10]
    per_ex = sum(a * b for a, b in zip(dims, dims[1:])) * 2.0
    head = 3 * per_ex * cfg.classifier.adam_steps * cfg.classifier.batch_size if cfg.classifier.head != "svm" else 0.0
    out["fit-svm"] = (head + (net + per_ex) * n_img, n_train * dims[0] * 4.0)
    return out


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of a command."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) / 2**20
    return time.perf_counter() - t, rss


def chain(config: Path, data: str, limit: int | None, folder: Path, sets: list[str]) -> dict[str, tuple[float, float]]:
    """Run the config's stages as single commands into ``folder``; {stage: (seconds, peak RSS GiB)}."""
    hgm = [sys.executable, "-m", "hgmcli"]
    common = ["--config", str(config), "--data", data, *(f"--set={s}" for s in sets)]
    if limit is not None:  # the first `limit` images train, the next 10,000 validate
        common += [f"--set=data.limit={limit + 10_000}", "--set=data.val_size=10000"]
    cfg = load_config(PipelineConfig, config, sets)
    out, model = {}, []
    for i in range(1, len(cfg.layers) + 1):
        c, n = folder / f"c{i}.npz", folder / f"n{i}.pt"
        out[f"cluster {i}"] = timed([*hgm, "cluster", *common, "--layer", str(i - 1), *model, "--out", str(c)])
        out[f"train-layer {i}"] = timed([*hgm, "train-layer", *common, "--layer", str(i - 1), *model,
                                         "--centroids", str(c), "--out", str(n)])
        model = ["--model", str(n)]
    out["fit-svm"] = timed([*hgm, "fit-svm", *common, *model, "--out", str(folder / "head.pt")])
    r = subprocess.run([*hgm, "evaluate", *common, *model, "--classifier", str(folder / "head.pt"), "--split", "val",
                        "--json"], capture_output=True, text=True, check=True)
    out["val accuracy"] = (json.loads(r.stdout)["accuracy"], 0.0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar-cpu")
    p.add_argument("--data", required=True)
    p.add_argument("--sizes", type=int, nargs="*", help="training-set sizes for the growth table (data.limit)")
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--keep", type=Path, help="write the artifacts under this folder (one subfolder per size) "
                                             "instead of a temporary one")
    args = p.parse_args()
    config = resolve_config(args.config)
    cfg = load_config(PipelineConfig, config, args.sets)
    gemm, bw = machine_rates()
    print(f"machine: fp32 GEMM {gemm / 1e9:.1f} GFLOP/s, copy bandwidth {bw / 1e9:.1f} GB/s, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    sizes = args.sizes or [None]
    results = {}
    for size in sizes:
        if args.keep is not None:
            folder = args.keep / f"size-{size or 'all'}"
            folder.mkdir(parents=True, exist_ok=True)
            results[size] = chain(config, args.data, size, folder, args.sets)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                results[size] = chain(config, args.data, size, Path(tmp), args.sets)
        print(f"size {size or 'all'}: val accuracy {results[size]['val accuracy'][0]:.4f}", flush=True)
    n_val = 10_000
    largest = max(sizes, key=lambda v: v or 40_000)
    # the stage table, at the largest size
    n_train = largest or 40_000
    model = work(cfg, n_train, n_val)
    print(f"\n| stage | measured | work | bound at {gemm / 1e9:.0f} GF/s, {bw / 1e9:.0f} GB/s | ratio | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for stage, (flops, nbytes) in model.items():
        secs, rss = results[largest][stage]
        bound = max(flops / gemm, nbytes / bw)
        print(f"| {stage} | {secs:.0f} s | {flops / 1e12:.2f} TFLOP, {nbytes / 1e9:.1f} GB | {bound:.0f} s | "
              f"{secs / max(bound, 1e-9):.1f}x | {rss:.2f} GiB |")
    if len(sizes) > 1:
        stages = [s for s in results[sizes[0]] if s != "val accuracy"]
        print("\n| stage | " + " | ".join(f"{s:,} images" for s in sizes) + " |")
        print("| --- |" + " --- |" * len(sizes))
        for stage in stages:
            cells = [f"{results[s][stage][0]:.0f} s, {results[s][stage][1]:.2f} GiB" for s in sizes]
            print(f"| {stage} | " + " | ".join(cells) + " |")
        print("| val accuracy | " + " | ".join(f"{results[s]['val accuracy'][0]:.4f}" for s in sizes) + " |")


if __name__ == "__main__":
    main()
