"""Figure 3 of the paper, reproduced side by side: the vanilla CNN, the CNN
with random frozen convolutions, Clustering+JL and ours, each with the FC and
the linear head, trained on the same split (CIFAR-10 data_batch_1-4) and
scored on the same validation split (data_batch_5).

    python benchmarks/figure3.py --budget cpu   [--data DIR] [--out runs/figure3-cpu]
    python benchmarks/figure3.py --budget paper [--data DIR] [--device cuda]

Budgets:

* ``paper``: appendix C's parameters (configs/cifar.yaml, cifar-linear.yaml,
  cifar-jl.yaml, cifar-jl-linear.yaml) and 100,000 Adam iterations for every
  classifier and for the CNNs. Meant for a GPU.
* ``cpu``: about an hour on a 2-core CPU. Scaled down exactly so:
  ours and Clustering+JL share one layer recipe (N = 100,000 patches,
  k1 = 128, n1 = 48, k2 = 256, n2 = 64, b = -0.2, 2 Adam epochs per 1x1 layer;
  JL replaces the trained 1x1 convs by random projections of the same width),
  every head (FC 384-192 or linear) gets 3,000 Adam iterations of batch 128
  (about 10 epochs), the CNN is trained end to end for 2,000 iterations and
  the random CNN's head for 3,000. The FC and linear variants of a method
  share its layers (the pipeline reuses them), as in the paper each variant
  has its own head.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from hgmcli import stages
from hgmcli.config import BaselineConfig, ClassifierConfig, DataConfig, EvaluateConfig, PipelineConfig, load_config
from hgmcli.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
PAPER = {  # Figure 3: (FC, Linear)
    "CNN": (0.759, 0.735),
    "CNN(Random)": (0.645, 0.616),
    "Clustering+JL": (0.586, 0.588),
    "Ours": (0.734, 0.689),
}

CPU_LAYERS = [
    "layers.0.cluster.k=128", "layers.0.cluster.patches=100000", "layers.0.train.out_channels=48",
    "layers.1.cluster.k=256", "layers.1.cluster.patches=100000", "layers.1.train.out_channels=64",
    "layers.0.train.bias=-0.2", "layers.1.train.bias=-0.2", "layers.0.train.epochs=2", "layers.1.train.epochs=2",
]


def method_runs(budget: str) -> dict[str, dict[str, tuple[str, list[str]]]]:
    """method -> head -> (config file, overrides)."""
    if budget == "paper":
        return {
            "Ours": {"FC": ("cifar.yaml", []), "Linear": ("cifar-linear.yaml", [])},
            "Clustering+JL": {"FC": ("cifar-jl.yaml", []), "Linear": ("cifar-jl-linear.yaml", [])},
        }
    heads = {"FC": ["classifier.head=fc"], "Linear": ["classifier.head=linear"]}
    common = CPU_LAYERS + ["classifier.adam_steps=3000", "classifier.eval_every=500"]
    return {
        "Ours": {h: ("cifar.yaml", common + o) for h, o in heads.items()},
        "Clustering+JL": {
            h: ("cifar.yaml", common + ["layers.0.train.mode=jl", "layers.1.train.mode=jl"] + o) for h, o in heads.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", choices=["cpu", "paper"], default="cpu")
    ap.add_argument("--data", default=os.environ.get("HGM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out or REPO / "runs" / f"figure3-{args.budget}")
    results: dict[str, dict[str, tuple[float, float]]] = {}

    for method, heads in method_runs(args.budget).items():
        for head, (config, overrides) in heads.items():
            sets = overrides + [f"data.root={args.data}", f"device={args.device}", f"seed={args.seed}", "evaluate.split=val"]
            cfg = load_config(PipelineConfig, REPO / "configs" / config, sets)
            t0 = time.perf_counter()
            metrics, records = run_pipeline(cfg, out / method.replace("+", "-").lower())
            seconds = sum(r.seconds for r in records)  # cached stages count with their original time
            results.setdefault(method, {})[head] = (metrics["accuracy"], seconds)
            print(f"{method} + {head}: val accuracy {metrics['accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    cnn_iters = 100_000 if args.budget == "paper" else 2_000
    head_iters = 100_000 if args.budget == "paper" else 3_000
    data_cfg = DataConfig(root=args.data)
    for method, arch in (("CNN", "cnn"), ("CNN(Random)", "cnn-random")):
        for head, kind in (("FC", "fc"), ("Linear", "linear")):
            iters = cnn_iters if arch == "cnn" else head_iters
            cfg = ClassifierConfig(head=kind, adam_steps=iters, eval_every=max(1, iters // 10))
            path = out / f"{arch}-{kind}.pt"
            t0 = time.perf_counter()
            stages.baseline(data_cfg, cfg, BaselineConfig(arch=arch, head=kind), out=path, seed=args.seed, device=args.device,
                            reuse=True)
            _, m = stages.evaluate(data_cfg, EvaluateConfig(split="val"), model=None, classifier=path,
                                   seed=args.seed, device=args.device)
            from hgmcli.artifacts import load_meta

            seconds = float(load_meta(path)["stats"].get("seconds", time.perf_counter() - t0))
            results.setdefault(method, {})[head] = (m["accuracy"], seconds)
            print(f"{method} + {head}: val accuracy {m['accuracy']:.4f} ({seconds:.0f} s)", flush=True)

    print(f"\nFigure 3, budget {args.budget}: validation accuracy on data_batch_5 (train: data_batch_1-4)")
    print(f"{'method':16} {'FC':>8} {'Linear':>8}   {'paper FC':>8} {'paper Lin':>9}   {'time FC':>8} {'time Lin':>8}")
    for method in ("CNN", "CNN(Random)", "Clustering+JL", "Ours"):
        fc, lin = results[method]["FC"], results[method]["Linear"]
        pfc, plin = PAPER[method]
        print(f"{method:16} {fc[0]:8.4f} {lin[0]:8.4f}   {pfc:8.3f} {plin:9.3f}   {fc[1]:7.0f}s {lin[1]:7.0f}s")
    (out / "figure3.json").write_text(json.dumps({m: {h: {"accuracy": a, "seconds": t} for h, (a, t) in v.items()}
                                                  for m, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
