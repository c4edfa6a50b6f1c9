#!/usr/bin/env bash
# The GPU measurements of issue 8, as one script for a borrowed H100/H200 (PyTorch + CUDA,
# no FAISS, no network). Run from the repository root, without installing hgm:
#
#   mkdir -p .gpu-data && cp ../shared/data/cifar10-train-jpeg.tar.gz .gpu-data/    # here (16 MB)
#   bash benchmarks/gpu.sh                 # on the GPU machine (the device tool: carry .gpu-data)
#   QUICK=1 DEVICE=cpu bash benchmarks/gpu.sh   # tiny sizes, to try the script on a CPU first
#   PARTS="kmeans cifar" bash benchmarks/gpu.sh  # a subset (one device call is at most 10 min)
#
# It measures, in one go and on one GPU:
#   1. `hgm cluster` on 5,000,000 CIFAR-10 3x3 patches with k = 4096 (seeding included: `init: auto`
#      picks k-means|| here, the same code as on the CPU; torch backend, points streamed from host
#      memory when they do not fit the device: no FAISS there), time and peak GPU memory;
#   2. `hgm pipeline --config configs/cifar.yaml` (Ours+FC, appendix C) end to end, per stage;
#   3. the vanilla-CNN baseline's 100,000 Adam iterations (`hgm baseline --arch cnn --head fc`).
# The data is the JPEG image-folder copy of the CIFAR-10 training set (train/<class>/*.jpg),
# split 40,000 / 10,000 by a seeded permutation. Outputs land in $OUT (default /tmp/hgm-gpu)
# and, when the device tool's $OUT is set, the JSON summaries are copied there.
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK=${WORK:-/tmp/hgm-gpu}
DEVICE=${DEVICE:-cuda}
TARBALL=${TARBALL:-.gpu-data/cifar10-train-jpeg.tar.gz}
if [ -n "${QUICK:-}" ]; then
  PATCHES=50000; K=64; ITERS=200; EVERY=100
  SETS=(--set layers.0.cluster.k=32 --set layers.0.cluster.patches=20000 --set layers.0.train.out_channels=16
        --set layers.1.cluster.k=32 --set layers.1.cluster.patches=20000 --set layers.1.train.out_channels=16
        --set layers.0.train.epochs=1 --set layers.1.train.epochs=1 --set data.limit=2000
        --set classifier.iterations=$ITERS --set classifier.eval_every=$EVERY)
else
  PATCHES=5000000; K=4096; ITERS=100000; EVERY=10000; SETS=()
fi
mkdir -p "$WORK/data"
[ -d "$WORK/data/train" ] || tar -xzf "$TARBALL" -C "$WORK/data"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) | tee "$WORK/gpu.txt"
hgm() { python3 -m hgmcli -q "$@"; }
t() { local s=$(date +%s%N); "$@"; local e=$(date +%s%N); echo "$(( (e - s) / 1000000 )) ms: $*" >> "$WORK/times.txt"; }
: > "$WORK/times.txt"
PARTS=${PARTS:-kmeans cifar cnn}
has() { [[ " $PARTS " == *" $1 "* ]]; }
has kmeans && t hgm cluster --data "$WORK/data" --set data.val_size=10000 --k $K --patches $PATCHES --backend torch \
    --device $DEVICE --out "$WORK/kmeans.npz" --json > "$WORK/kmeans.json"
has cifar && t hgm pipeline --config configs/cifar.yaml --data "$WORK/data" --set data.val_size=10000 "${SETS[@]}" \
    --device $DEVICE --out "$WORK/cifar" --json > "$WORK/cifar.json"
has cnn && t hgm baseline --data "$WORK/data" --set data.val_size=10000 ${QUICK:+--limit 2000} --arch cnn --head fc \
    --adam-steps $ITERS --eval-every $EVERY --device $DEVICE --out "$WORK/cnn-fc.pt" --json > "$WORK/cnn.json"
python3 - "$WORK" <<'PY'
import json, os, sys
w = sys.argv[1]
have = lambda name: os.path.getsize(f"{w}/{name}.json") > 0 if os.path.exists(f"{w}/{name}.json") else False
if have("kmeans"):
  km = json.load(open(f"{w}/kmeans.json"))["stats"]
  print(f"k-means: N={km['n']:,} d={km['d']} k={km['k']} backend={km['backend']} device={km['device']} "
      f"seed {km['seconds_seed']:.1f} s + Lloyd {km['seconds_lloyd']:.1f} s ({km['iterations']} it), "
      f"peak GPU memory {km.get('gpu_peak_bytes', 0) / 2**30:.2f} GiB, objective {km['objective'][-1]:.4f}")
if have("cifar"):
  m = json.load(open(f"{w}/cifar.json"))
  print(f"cifar.yaml: val accuracy {m['accuracy']:.4f}")
  for s in m["stages"]:
    print(f"  {s['name']:16} {s['seconds']:8.1f} s  {s['figures']}")
  print(f"  total {sum(s['seconds'] for s in m['stages']):.1f} s")
if have("cnn"):
  b = json.load(open(f"{w}/cnn.json"))["stats"]
  print(f"CNN+FC baseline: {b['iterations']} Adam iterations in {b['seconds']:.1f} s, val accuracy {b['curve'][-1][1]:.4f}")
PY
cat "$WORK/times.txt"
if [ -n "${OUT:-}" ]; then cp "$WORK"/*.json "$WORK"/times.txt "$WORK"/gpu.txt "$OUT"/ 2>/dev/null || true; fi
