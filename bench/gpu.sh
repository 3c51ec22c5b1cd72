#!/usr/bin/env bash
# Every GPU measurement the project reports, in one command, written as JSON under OUT:
#   models.json     inference ms/image per model and size (fp32, bf16, channels_last, compile)
#   summary.json    parameters and GFLOPs per preset
#   train.json      training images/s and model FLOP utilization per full preset
#   train-hybrid-nearest.json  the hybrid without tile_blend (the cost of the seam-free mixing)
#   pipeline-*.json images/s Ray Data delivers at 256x256 and 512x1024 crops, blur cost on the GPU
#   predict.json    `asaptrain predict` images/s on one GPU worker at 720x1280, decode/model/encode ms
#   runs/           two short real training runs (timing.json: data-wait share of the step)
#   sweep.txt       a 4-trial hybrid sweep on the one GPU, and a DeblurGAN smoke run for the same steps
#   smoke.txt       `asaptrain smoke` end to end, with its wall time
# Usage: bench/gpu.sh [OUT]        (run from the repository root; uses `python3 -m asaptrain`)
set -euo pipefail
OUT=${1:-gpu-bench}
mkdir -p "$OUT"
STORE=$(cd "$OUT" && pwd)/store
A="python3 -m asaptrain"
STEPS=${SWEEP_STEPS:-300}

$A models summary --json > "$OUT/summary.json"
$A bench models --json "$OUT/models.json" | tee "$OUT/models.txt"
$A bench train --json "$OUT/train.json" | tee "$OUT/train.txt"
# What the hybrid's seam-free blending costs: the same preset with each pixel on its own tile's MLP.
$A bench train --preset hybrid-deblur --set model.tile_blend=false --json "$OUT/train-hybrid-nearest.json" \
  | tee "$OUT/train-hybrid-nearest.txt"

$A data synth --kind photos --count 512 --val-count 32 --size 720x1280 --out "$STORE/datasets/synth-photos"
$A data synth --kind scenes --count 512 --val-count 32 --size 512x1024 --out "$STORE/datasets/synth-scenes"
$A bench pipeline "$STORE/datasets/synth-photos" --crops 256x256 --batch 16 --json "$OUT/pipeline-256.json"
$A bench pipeline "$STORE/datasets/synth-scenes" --crops 512x1024 --batch 4 --json "$OUT/pipeline-512x1024.json"

$A bench predict --gpus 1 --images 64 --batch 4 --json "$OUT/predict.json" | tee "$OUT/predict.txt"

# Real runs through Ray Train: the data-wait share of the step is in each run's timing.json.
$A train --preset deblurgan-gopro --store "$STORE" --name bench-deblurgan --steps 200 --no-progress \
  --set data.dataset=datasets/synth-photos --set loss.perceptual=none --set train.batch_size=16 \
  --set eval.images=16 --set eval.every=200 --set train.checkpoint_every=200
$A train --preset asapnet-cityscapes --store "$STORE" --name bench-asapnet --steps 100 --no-progress \
  --set data.dataset=datasets/synth-scenes --set loss.perceptual=none --set data.instance_edges=true \
  --set data.load_height=256 --set data.load_width=512 \
  --set eval.images=16 --set eval.every=100 --set train.checkpoint_every=100
mkdir -p "$OUT/runs" && cp -r "$STORE/runs/bench-deblurgan" "$STORE/runs/bench-asapnet" "$OUT/runs/" 2>/dev/null || true

# The sweep on one GPU (trials in turn), and DeblurGAN's smoke preset for the same steps.
{ time $A tune --preset hybrid-smoke --store "$STORE" --trials 4 --steps "$STEPS" --gpus-per-trial 1 \
    --name gpu-sweep --no-progress --set data.crop_height=128 --set data.crop_width=128 ; } 2>&1 | tee "$OUT/sweep.txt"
$A train --preset deblurgan-smoke --store "$STORE" --name gpu-deblurgan-smoke --steps "$STEPS" --gpus-per-worker 1 \
  --no-progress --set data.crop_height=128 --set data.crop_width=128 2>&1 | tee -a "$OUT/sweep.txt"

{ time $A smoke --store "$OUT/smoke-store" --no-progress ; } 2>&1 | tail -60 | tee "$OUT/smoke.txt"
cp -r "$STORE/sweeps" "$OUT/" 2>/dev/null || true
