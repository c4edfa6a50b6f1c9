#!/bin/bash
# The README's ablation table (issue 13): one lever at a time against benchmarks/ablation-base.yaml.
#   DATA=../shared/data OUT=runs/ablation bash benchmarks/ablation.sh
# Each row is one `hgm pipeline` run (a few minutes on 2 cores); accuracies land in $OUT/results.txt.
set -u
DATA=${DATA:?set DATA to the folder holding cifar-10-batches-py}
OUT=${OUT:-runs/ablation}
HGM=${HGM:-hgm}
BASE=$(dirname "$0")/ablation-base.yaml
mkdir -p "$OUT"
row() { name=$1; shift
  $HGM pipeline --config "$BASE" --data "$DATA" --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed"; return; }
  echo "$name $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['accuracy'])" "$OUT/$name/metrics.json") $*" >> "$OUT/results.txt"
}
row base
row no-whiten          --set layers.0.cluster.whiten=none
row relu-b0            --set layers.0.train.activation=relu --set layers.0.train.bias=0.0
row paper-block        --set layers.0.cluster.whiten=none --set layers.0.train.activation=relu --set layers.0.train.bias=-0.2
row knn-q0.25          --set layers.0.train.activation=knn --set layers.0.train.knn_q=0.25
row k1600              --set layers.0.cluster.k=1600
row s3                 --set layers.0.cluster.patch_size=3
row grid3              --set layers.0.train.pool_size=3
row sampled-dictionary --set layers.0.cluster.init=random --set layers.0.cluster.lloyd_iterations=0
row flip               --set classifier.flip=true
row eps0               --set layers.0.train.normalize_eps=0
cat "$OUT/results.txt"
