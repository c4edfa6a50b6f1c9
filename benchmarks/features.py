"""Speed of the frozen part of a block: cluster conv (cosine) + ReLU(. + b) +
2x2 max-pool, per layer shape, against this machine's fp32 GEMM rate.

Side by side in one run: the reference modules (conv2d -> divide by the patch
norm -> ReLU -> MaxPool2d, what TorchScript export runs) and the fused path
train-layer / cluster / fit-svm use (``network.fused_frozen``: unfold ->
normalise -> one GEMM -> max of the pooling window -> ReLU, in cache-sized
chunks). Rates count only the convolution's 2*B*H'*W'*k*C*s*s flops.

    python benchmarks/features.py [--batch 128] [--reps 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from hgmcli.network import Block, ClusterConv, fused_frozen

# (label, C_in, k, H): §6's layers at the sizes hgm's CIFAR configs use, and the paper's widths.
LAYERS = [
    ("layer 1, k=256", 3, 256, 32),
    ("layer 1, k=1377 (paper)", 3, 1377, 32),
    ("layer 2, 64->512", 64, 512, 16),
    ("layer 2, 155->3534 (paper)", 155, 3534, 16),
]


def timeit(fn, reps: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm = 2 * 2048**3 / timeit(lambda: a @ b, args.reps) / 1e9
    print(f"fp32 GEMM (2048^3): {gemm:.1f} GFLOP/s on {torch.get_num_threads()} threads\n")
    print(f"{'layer':28} {'reference':>18} {'hgm (fused)':>18} {'speed-up':>9}")
    for label, c, k, h in LAYERS:
        batch = max(8, args.batch * 256 // k) if k > 512 else args.batch
        w = torch.randn(k, c, 3, 3)
        w = w / w.flatten(1).norm(dim=1)[:, None, None, None]
        block = Block(ClusterConv(w, padding=1, bias=-0.1), "max", 2)
        x = torch.randn(batch, c, h, h)
        flops = 2 * batch * h * h * k * c * 9
        with torch.no_grad():
            t_ref = timeit(lambda: block.pool(block.cluster(x)), args.reps)
            t_fused = timeit(lambda: block.frozen(x), args.reps)  # fused where it applies
        r_ref, r_fused = flops / t_ref / 1e9, flops / t_fused / 1e9
        print(
            f"{label:28} {r_ref:7.1f} GF/s ({100 * r_ref / gemm:3.0f}%) {r_fused:7.1f} GF/s ({100 * r_fused / gemm:3.0f}%)"
            f" {t_ref / t_fused:8.2f}x"
        )


if __name__ == "__main__":
    main()
