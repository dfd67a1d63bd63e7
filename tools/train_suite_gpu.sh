#!/usr/bin/env bash
# The embedded suite's training run on one CUDA GPU (about 9 minutes), then its evaluation.
# Usage: tools/train_suite_gpu.sh OUT_DIR   (writes run/, suite/, metrics.jsonl, eval.json, grid.png)
set -o pipefail
out=${1:?usage: $0 OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m studio.shapes.train --out /tmp/run --export /tmp/suite --data 200000 --workers 16 --save-every 1 \
  --vae-minutes 1.0 --vae-batch 256 --eval-minutes 0.6 --eval-batch 512 \
  --unet-minutes 5.5 --unet-batch 512 --unet-lr 4e-4 2>&1 | grep -v -e '^\[transformers\]' -e 'it/s\]'
cp /tmp/run/metrics.jsonl "$out/"
(cd /tmp && tar czf - suite) | split -b 15M - "$out/suite.tgz.part"
python3 -m studio.shapes.evaluate --model /tmp/suite --prompts 400 --fd 1000 --batch 500 --grid "$out/grid.png" 2>&1 \
  | grep -v -e '^\[transformers\]' -e 'it/s\]' | tee "$out/eval.json"
