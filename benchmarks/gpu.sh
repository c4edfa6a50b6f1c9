#!/usr/bin/env bash
# The GPU measurements (issues 8 and 16), as one script for a borrowed H100/H200 (PyTorch + CUDA,
# no FAISS, no network). Run from the repository root, without installing hgm:
#
#   mkdir -p .gpu-data && cp ../shared/data/cifar10-train-jpeg.tar.gz .gpu-data/    # here (16 MB)
#   bash benchmarks/gpu.sh                 # on the GPU machine (the device tool: carry .gpu-data)
#   QUICK=1 DEVICE=cpu bash benchmarks/gpu.sh   # tiny sizes, to try the script on a CPU first
#   PARTS="kmeans best" bash benchmarks/gpu.sh  # a subset (one device call is at most 10 min)
#   TOTAL_S=550 CONCURRENT=1 ...           # a deadline for all parts; the two pipelines at once
#
# Parts, each a separate process with its own time limit (LIMIT_<PART> seconds, cut to what is
# left of TOTAL_S); a part that fails or runs out of time is written down and the next one runs:
#   kmeans  `hgm cluster` on 5,000,000 CIFAR-10 3x3 patches with k = 4096 (seeding included: `init:
#           auto` picks k-means|| here, the same code as on the CPU; torch backend, points streamed from
#           host memory when they do not fit the device: no FAISS there), time and peak GPU memory;
#   cifar   `hgm pipeline --config configs/cifar.yaml` (Ours+FC, appendix C) end to end, per stage;
#   best    `hgm pipeline --config configs/cifar-best.yaml` end to end, per stage;
#   cnn     the vanilla-CNN baseline's 100,000 Adam iterations (`hgm baseline --arch cnn --head fc`).
# The data is the JPEG image-folder copy of the CIFAR-10 training set (train/<class>/*.jpg),
# split 40,000 / 10,000 by a seeded permutation (not data_batch_5: its accuracies are not the CPU
# tables'). Work files land in $WORK (default /tmp/hgm-gpu); with the device tool's $OUT set, the
# JSON results, times.txt, gpu.txt, log.txt (stderr, the pipelines' stage lines) and summary.txt
# are copied there after every part, so a run cut short keeps what it finished.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK=${WORK:-/tmp/hgm-gpu}
DEVICE=${DEVICE:-cuda}
TARBALL=${TARBALL:-.gpu-data/cifar10-train-jpeg.tar.gz}
if [ -n "${QUICK:-}" ]; then
  PATCHES=50000; K=64; ITERS=200; EVERY=100
  SETS=(--set layers.0.cluster.k=32 --set layers.0.cluster.patches=20000 --set layers.0.train.out_channels=16
        --set layers.1.cluster.k=32 --set layers.1.cluster.patches=20000 --set layers.1.train.out_channels=16
        --set layers.0.train.epochs=1 --set layers.1.train.epochs=1 --set data.limit=2000
        --set classifier.adam_steps=$ITERS --set classifier.eval_every=$EVERY)
  BEST_SETS=(--set layers.0.cluster.k=64 --set layers.0.cluster.patches=20000 --set data.limit=2000
             --set classifier.bottleneck=32 --set "classifier.hidden=[64]"
             --set classifier.adam_steps=$ITERS --set classifier.eval_every=$EVERY)
else
  PATCHES=5000000; K=4096; ITERS=100000; EVERY=10000; SETS=(); BEST_SETS=()
fi
mkdir -p "$WORK/data"
[ -d "$WORK/data/train" ] || tar -xzf "$TARBALL" -C "$WORK/data"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) > "$WORK/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())" >> "$WORK/gpu.txt"
cat "$WORK/gpu.txt"
# (timeout runs programs, not shell functions: each part spells out python3 -m hgmcli)
: > "$WORK/times.txt"; : > "$WORK/log.txt"
# save: copy what exists to the device tool's $OUT after every part, so a run cut short keeps the parts it finished
save() { if [ -n "${OUT:-}" ]; then cp "$WORK"/*.json "$WORK"/times.txt "$WORK"/gpu.txt "$WORK"/log.txt "$OUT"/ 2>/dev/null || true; fi; }
# part NAME LIMIT_S CMD...: one measurement, its stdout in NAME.json, stderr in log.txt (each line tagged
# with the part: two may run at once); a failure or a time-out is written down and the next part runs.
# A part starts from nothing: no earlier NAME.json, no run folder a pipeline would resume from.
part() {
  local name=$1 limit=$2; shift 2
  rm -rf "$WORK/$name" "$WORK/$name".*
  has "$name" || return 0
  local left=$(( DEADLINE - $(date +%s) ))
  (( left < limit )) && limit=$left
  (( limit > 10 )) || { echo "$name: skipped, no time left" | tee -a "$WORK/times.txt"; return 0; }
  echo "== $name ($(date -u +%T))" | tee -a "$WORK/log.txt"
  local s=$(date +%s%N) rc=0
  timeout "$limit" "$@" > "$WORK/$name.json" 2> >(sed -u "s/^/[$name] /" >> "$WORK/log.txt") || rc=$?
  local e=$(date +%s%N)
  echo "$name: $(( (e - s) / 1000000 )) ms, exit $rc: $*" | tee -a "$WORK/times.txt"
  save
}
PARTS=${PARTS:-kmeans cifar best cnn}
DEADLINE=$(( $(date +%s) + ${TOTAL_S:-100000} ))  # TOTAL_S: seconds for all parts (a device call is at most 600)
has() { [[ " $PARTS " == *" $1 "* ]]; }
part kmeans "${LIMIT_KMEANS:-300}" python3 -m hgmcli -q cluster --data "$WORK/data" --set data.val_size=10000 --k $K --patches $PATCHES \
    --backend torch --device $DEVICE --out "$WORK/kmeans.npz" --json
cifar() {
  part cifar "${LIMIT_CIFAR:-400}" python3 -m hgmcli pipeline --config configs/cifar.yaml --data "$WORK/data" --set data.val_size=10000 \
      ${SETS[@]+"${SETS[@]}"} --device $DEVICE --out "$WORK/cifar" --json
}
best() {
  part best "${LIMIT_BEST:-300}" python3 -m hgmcli pipeline --config configs/cifar-best.yaml --data "$WORK/data" --set data.val_size=10000 \
      ${BEST_SETS[@]+"${BEST_SETS[@]}"} --device $DEVICE --out "$WORK/best" --json
}
# CONCURRENT=1: the two pipelines share the GPU at once (their accuracies are unchanged, their times are upper bounds)
if [ -n "${CONCURRENT:-}" ]; then cifar & best & wait; else cifar; best; fi
part cnn "${LIMIT_CNN:-300}" python3 -m hgmcli -q baseline --data "$WORK/data" --set data.val_size=10000 ${QUICK:+--limit 2000} --arch cnn \
    --head fc --adam-steps $ITERS --eval-every $EVERY --device $DEVICE --out "$WORK/cnn.pt" --json
python3 - "$WORK" <<'PY' | tee "$WORK/summary.txt"
import json, os, sys
w = sys.argv[1]
def load(name):
  try:
    return json.load(open(f"{w}/{name}.json"))
  except (OSError, ValueError):
    return None
km = load("kmeans")
if km:
  s = km["stats"]
  print(f"k-means: N={s['n']:,} d={s['d']} k={s['k']} backend={s['backend']} device={s['device']} init={s.get('init_used')} "
        f"seed {s['seconds_seed']:.1f} s + Lloyd {s['seconds_lloyd']:.1f} s ({s['iterations']} it), "
        f"peak GPU memory {s.get('gpu_peak_bytes', 0) / 2**30:.2f} GiB, objective {s['objective'][-1]:.4f}")
for name, config in (("cifar", "cifar.yaml"), ("best", "cifar-best.yaml")):
  m = load(name)
  if m:
    print(f"{config}: val accuracy {m['accuracy']:.4f}")
    for s in m["stages"]:
      print(f"  {s['name']:16} {s['seconds']:8.1f} s  {s['figures']}")
    print(f"  total {sum(s['seconds'] for s in m['stages']):.1f} s")
b = load("cnn")
if b:
  b = b["stats"]
  print(f"CNN+FC baseline: {b['iterations']} Adam iterations in {b['seconds']:.1f} s, val accuracy {b['curve'][-1][1]:.4f}")
PY
cat "$WORK/times.txt"
save; if [ -n "${OUT:-}" ]; then cp "$WORK/summary.txt" "$OUT"/ 2>/dev/null || true; fi
