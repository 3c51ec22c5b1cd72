#!/usr/bin/env bash
# Every GPU number the project reports, in one call of at most 8 minutes on one GPU.
#
# Stages run in order of value, each under its own `timeout` (its budget below, in seconds: SIGTERM
# at the budget, SIGKILL 5 s later), each writing its JSON under OUT as soon as it is done, so a run
# cut off early still returns what ran; a failing stage is recorded and the next one runs. The
# budgets are for an H100/H200-class GPU, the wheel install and every process's start counted in.
# Required, in this order, 360 s together with setup: inside 6 minutes even if every one runs out,
# which leaves a 10-minute call room for the optional stages or a rerun of what failed.
#   stage        GPU s  writes
#   setup           20  setup.json: install .whl/ (below) into /tmp/site when Ray is not importable;
#                       Python, torch, CUDA, GPU and package versions
#   correct         90  correct.json: fused pixel-MLP kernel vs the matmul path (ASAP-Net, hybrid; the
#                       presets' sizes; fp32/bf16; blended or not: max abs error, did the kernel run);
#                       the hybrid's rows and planes layouts with gradients (error, ms each);
#                       compiled bf16 + channels_last hybrid steps (finite losses, graphs, graph breaks);
#                       one eager bf16 step of each other full preset
#   import          15  import.json: the official-format fixtures of tests/data/official imported and
#                       run here (fp32, fp32 without TF32, bf16): max abs error against the official
#                       code's stored CPU output and this machine's CPU output (bench/gpu_import.py;
#                       needs neither Ray nor boto3)
#   compare-256     25  `bench compare hybrid-deblur deblurgan-gopro` at 256x256, fp32 and bf16
#   compare-720     25    the same at 720x1280
#   models-720      25  `bench models` ms/image, fp32, bf16, bf16 + channels_last, batch 1 and 4:
#                       DeblurGAN and the hybrid at 720x1280
#   train           60  `bench train`: the four full presets uncompiled, 10 steps, in every precision
#                       `train.precision` accepts (the schema's Precision, `--precision all`; MFU)
#   profile         20  profile.json + profile.txt: torch.profiler tables of one training step of
#                       hybrid-deblur and of deblurgan-gopro (bench/gpu_profile.py)
#   ray             65  ray.json: a Ray Train run of 60 steps from shards (its timing.json: data-wait share)
#   evaluate        15  evaluate.json: `evaluate --local` of that run on the val split it used (PSNR,
#                       SSIM; FID missing: no Inception weights there), model images/s on one GPU
# Optional, in order of value, each run only if GPU_CHECK_BUDGET_S (the total) still leaves room:
#   models-1024     40  `bench models` as above: ASAP-Net and pix2pixHD local at 1024x2048;
#   models-512      15    pix2pixHD global at 512x1024
#   models-compile  60  the same, compiled: one row per model (each compile costs tens of seconds)
#   predict         35  `bench predict` on one GPU worker: images/s at 720x1280, decode / model / encode
#   sweep           60  a 2-trial hybrid sweep with one GPU per trial (Tune over Train on one GPU)
# The ray, predict and sweep stages join one local Ray that bench/gpu_ray.py starts in the
# background after setup (its log: ray-head.log), not one each.
# summary.txt: one line per stage (status, seconds, budget) with its key numbers under it, written
# by bench/gpu_summary.py after every stage. (`asaptrain smoke` is no stage: its GPU parts are the
# ray and sweep stages, and tests/test_e2e.py runs it whole.)
#
# The GPU machine has Python 3.12, torch 2.11, triton 3.6, torchvision, torchmetrics, pyarrow,
# numpy, pillow, rich, click, matplotlib, pyyaml, onnx, onnxruntime and no package index. What it
# lacks travels as wheels in .whl/: Ray (slimmed, with its dashboard) and its small dependencies,
# tensorboardX, tomli-w (config files) and cityscapesscripts (label ids; used without its own
# dependencies). Build them here with bench/gpu-wheels.sh. Left out on purpose: boto3 (the check
# uses a local store), torch-fidelity (FID needs Inception weights, which cannot travel), optuna
# (the sweep falls back to random search). VGG19 weights cannot travel either: every training row
# is without the perceptual loss.
#
# Usage, from the repository root:
#   bench/gpu.sh [OUT]                     # OUT defaults to gpu-bench
#   GPU_CHECK_PACK=FILE.tar.gz bench/gpu.sh OUT   # also re-pack OUT into FILE after every stage
#   GPU_CHECK_DRY=1 bench/gpu.sh OUT       # CPU rehearsal of every stage (tests/test_gpu_check.py):
#                                          # tiny sizes, 1-2 steps, smoke presets (the ray stage's
#                                          # run is DeblurGAN: the sweep's reference), the second number
#                                          # of each budget only as a hang guard, and bench/gpu_image
#                                          # hides what the GPU machine lacks (Ray too, for import)
# On the GPU machine, after bench/gpu-wheels.sh here, with .whl carried (results come back packed):
#   GPU_CHECK_PACK=$OUT/gpu-check.tar.gz bench/gpu.sh /tmp/gpu-check; cp /tmp/gpu-check/summary.txt $OUT/
# GPU_CHECK_BUDGET_S (default 480; dry 1800) is the total the optional stages must fit into;
# GPU_CHECK_STAGES="correct train" runs only the stages named (to rerun what was fixed).
set -uo pipefail  # no -e: a failing stage must not end the ones after it

OUT=${1:-gpu-bench}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
ROOT=$(pwd)
DRY=${GPU_CHECK_DRY:-0}
TOTAL=${GPU_CHECK_BUDGET_S:-$([ "$DRY" = 1 ] && echo 1800 || echo 480)}
T0=$(date +%s)
STORE=$OUT/store
export PYTHONUNBUFFERED=1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
if [ "$DRY" = 1 ]; then
  export PYTHONPATH=$ROOT/bench/gpu_image:$PYTHONPATH CUDA_VISIBLE_DEVICES=""
fi
A="python3 -m asaptrain"
: > "$OUT/stages.jsonl"

# After every stage: summary.txt rewritten (a run cut off later still has it) and OUT re-packed.
checkpoint() {
  python3 "$ROOT/bench/gpu_summary.py" "$OUT" "$TOTAL" > "$OUT/summary.txt.tmp" 2>> "$OUT/summary.log" \
    && mv "$OUT/summary.txt.tmp" "$OUT/summary.txt"
  if [ -n "${GPU_CHECK_PACK:-}" ]; then
    tar -czf "$GPU_CHECK_PACK.tmp" -C "$OUT" --exclude=store --exclude=summary.txt.tmp . \
      && mv "$GPU_CHECK_PACK.tmp" "$GPU_CHECK_PACK"
  fi
}

# stage NAME GPU_S/CPU_S required|optional COMMAND...: run COMMAND (a bash string) under timeout
# (the first budget on the GPU; the second, in the CPU rehearsal, only guards against hangs on a
# loaded machine), its output in OUT/NAME.log; an optional stage is skipped when it would overrun
# TOTAL. The budgets are the design: tests/test_gpu_check.py adds up the required ones.
stage() {
  local name=$1 budget=${2%/*} kind=$3
  [ "$DRY" = 1 ] && budget=${2#*/}
  shift 3
  local start rc status
  start=$(date +%s)
  if [ -n "${GPU_CHECK_STAGES:-}" ] && [[ " $GPU_CHECK_STAGES " != *" $name "* ]]; then
    return 0
  elif [ "$kind" = optional ] && [ $((start - T0 + budget)) -gt "$TOTAL" ]; then
    status=skipped rc=null
  else
    echo "== $name (budget ${budget} s, $((start - T0)) s elapsed)"
    timeout --kill-after=5 "$budget" bash -c "$*" > "$OUT/$name.log" 2>&1
    rc=$?
    case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
    [ $status = ok ] || tail -n 5 "$OUT/$name.log" | sed "s/^/   $name: /"
  fi
  printf '{"stage": "%s", "status": "%s", "rc": %s, "seconds": %d, "budget_s": %d, "json": %s}\n' \
    "$name" "$status" "$rc" $(($(date +%s) - start)) "$budget" \
    "$([ -s "$OUT/$name.json" ] && echo true || echo false)" >> "$OUT/stages.jsonl"
  checkpoint
}

# ---------------------------------------------------------------- sizes: the GPU's, or tiny ones on a CPU
if [ "$DRY" = 1 ]; then
  # The smallest sizes every model takes; each stage's command line as on the GPU otherwise.
  LABEL_BIG=32x64 LABEL_MID=32x64 PHOTO_BIG=32x32 PHOTO_SMALL=32x32
  VARIANTS=bf16-cl COMPILE_VARIANT=bf16-cl  # inductor on a CPU takes minutes: rehearsed in correct
  COMPARE_DTYPES=bf16 REPEATS="--repeats 1 --warmup 0" BATCH=1
  TRAIN_PRESETS="--preset asapnet-smoke --batch 1"  # the quickest step; every preset takes one in correct
  TRAIN_STEPS=1 TRAIN_WARMUP="--warmup 0" RAY_STEPS=2
  SYNTH="--count 8 --val-count 2 --size 64x64"
  RAY_GPU="--set scaling.use_gpu=false --set scaling.resources_per_worker={CPU=1}"
  # The ray stage's run is DeblurGAN on the sweep's recipe (hybrid-smoke's curriculum, the same
  # steps and evaluation), so the sweep stage reuses it as its speed reference instead of training
  # one more Ray Train run (the reference's own training is tested in tests/test_tune.py).
  RAY_PRESET=deblurgan-smoke SWEEP_SETS="--set eval.images=2 --set eval.every=2"
  RAY_SETS="--set train.batch_size=4 --set eval.images=2 --set curriculum.kind=linear --set curriculum.start=0.2 \
    --set curriculum.end=0.8" SWEEP_TRIALS=1 SWEEP_STEPS=2 DRYFLAG=--dry
  PREDICT="--preset hybrid-smoke --images 2 --size 64x64 --batch 2"
  NO_RAY="env GPU_IMAGE_ALSO_ABSENT=ray"  # the import stage must not need Ray (nor boto3: always hidden)
else
  LABEL_BIG=1024x2048 LABEL_MID=512x1024 PHOTO_BIG=720x1280 PHOTO_SMALL=256x256
  VARIANTS=fp32,bf16,bf16-cl COMPILE_VARIANT=bf16-cl-compile
  COMPARE_DTYPES="fp32 bf16" REPEATS="--repeats 10 --warmup 3" BATCH=4
  TRAIN_PRESETS="" TRAIN_STEPS=10 TRAIN_WARMUP="" RAY_PRESET=hybrid-deblur RAY_STEPS=60
  SYNTH="--count 128 --val-count 16 --size 512x512" RAY_GPU="--gpus-per-worker 1"
  RAY_SETS="--set eval.images=16" SWEEP_TRIALS=2 SWEEP_STEPS=100 SWEEP_SETS="" DRYFLAG=
  PREDICT="--preset hybrid-deblur --preset deblurgan-gopro --gpus 1 --images 16 --batch 4"
  NO_RAY=""
fi
# evaluate.json: eval-val.json's summary, with the model's images/s (1000 / ms_per_image, the
# forward pass alone) beside the end-to-end rate (decode, model and metrics).
export EVAL_SUMMARY='import json, sys
r = json.load(open(sys.argv[1]))
keep = ("model", "images", "resolution", "dtype", "device", "mode", "psnr", "ssim", "fid", "fid_reason",
        "ms_per_image", "metric_ms_per_image", "seconds")
e = {k: r.get(k) for k in keep}
e["images_per_s"] = 1000 / r["ms_per_image"] if r.get("ms_per_image") else None
e["end_to_end_images_per_s"] = r.get("images_per_s")
json.dump(e, open(sys.argv[2], "w"), indent=1)'

# ---------------------------------------------------------------- setup: the wheels the image lacks
# Not a `stage`: the PYTHONPATH it sets must hold for every stage after it. Same budget rule.
SETUP_BUDGET=20/120  # GPU s / CPU-rehearsal hang guard, as for the stages
SETUP_S=${SETUP_BUDGET%/*}
[ "$DRY" = 1 ] && SETUP_S=${SETUP_BUDGET#*/}
start=$(date +%s)
if ! python3 -c "import ray, tensorboardX, tomli_w, cityscapesscripts" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  timeout --kill-after=5 $SETUP_S python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl > "$OUT/setup.log" 2>&1
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
left=$((SETUP_S - ($(date +%s) - start)))
timeout --kill-after=5 $((left > 5 ? left : 5)) python3 - > "$OUT/setup.json.tmp" 2>> "$OUT/setup.log" <<'PY'
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
for name in ("triton", "ray", "tensorboardX", "tomli_w", "torchvision", "torchmetrics", "pyarrow"):
    try:
        info[name] = getattr(__import__(name), "__version__", "present")
    except Exception as exc:  # recorded: the stages that need it will say more
        info[name] = f"missing: {type(exc).__name__}"
print(json.dumps(info))
PY
rc=$?
[ -s "$OUT/setup.json.tmp" ] && mv "$OUT/setup.json.tmp" "$OUT/setup.json" || rm -f "$OUT/setup.json.tmp"
case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
[ $status = ok ] && grep -q missing "$OUT/setup.json" && status=failed  # a package the stages need is absent
printf '{"stage": "setup", "status": "%s", "rc": %d, "seconds": %d, "budget_s": %d, "json": %s}\n' "$status" $rc \
  $(($(date +%s) - start)) $SETUP_S "$([ -s "$OUT/setup.json" ] && echo true || echo false)" >> "$OUT/stages.jsonl"
cat "$OUT/setup.json" 2>/dev/null
checkpoint

# ---------------------------------------------------------------- one Ray, started in the background
# The ray, predict and sweep stages join one local Ray (bench/gpu_ray.py; dashboard included) that
# starts here, beside the stages that need none, instead of each starting and stopping its own. If
# it is not up by the ray stage, each stage starts its own as before (see ray-head.log).
# Joining it takes its token (Ray's token auth, on by default for a local Ray): a fresh one in a
# private temp dir, never under OUT, unless the environment names one already.
RAY_HOLDER= TOKEN_DIR=
if [ -z "${RAY_ADDRESS:-}" ]; then
  if [ -z "${RAY_AUTH_TOKEN_PATH:-}${RAY_AUTH_TOKEN:-}" ] && [ "${RAY_AUTH_MODE:-token}" = token ]; then
    TOKEN_DIR=$(mktemp -d)
    (umask 077 && python3 -c "import secrets; print(secrets.token_hex(32), end='')" > "$TOKEN_DIR/auth_token")
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN_DIR/auth_token
  fi
  python3 "$ROOT/bench/gpu_ray.py" "$OUT/ray-address" > "$OUT/ray-head.log" 2>&1 &
  RAY_HOLDER=$!
fi
join_ray() {  # export RAY_ADDRESS once the background Ray is up (waits at most 120 s)
  [ -n "$RAY_HOLDER" ] || return 0
  for _ in $(seq 240); do
    [ -s "$OUT/ray-address" ] && { export RAY_ADDRESS=$(cat "$OUT/ray-address"); return 0; }
    kill -0 "$RAY_HOLDER" 2>/dev/null || break
    sleep 0.5
  done
  echo "   the background Ray did not come up: each stage starts its own"; end_ray
}
end_ray() {
  [ -n "$RAY_HOLDER" ] || return 0
  kill "$RAY_HOLDER" 2>/dev/null && for _ in $(seq 60); do kill -0 "$RAY_HOLDER" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$RAY_HOLDER" 2>/dev/null
  RAY_HOLDER=
  unset RAY_ADDRESS
}
end_all() {
  end_ray
  [ -z "$TOKEN_DIR" ] || rm -rf "$TOKEN_DIR"
}
trap end_all EXIT

# ---------------------------------------------------------------- 1. correctness
stage correct 90/300 required "python3 bench/gpu_correct.py '$OUT/correct.json' $DRYFLAG"
stage import 15/120 required "$NO_RAY python3 bench/gpu_import.py '$OUT/import.json' $DRYFLAG"

# ---------------------------------------------------------------- 2. the hybrid against DeblurGAN
for tag in 256 720; do
  size=$([ $tag = 256 ] && echo $PHOTO_SMALL || echo $PHOTO_BIG)
  stage compare-$tag 25/150 required "for d in $COMPARE_DTYPES; do $A bench compare hybrid-deblur deblurgan-gopro --size $size --dtype \$d $REPEATS --batch $(( BATCH < 2 ? 2 : BATCH )) --json '$OUT/compare-$tag-'\$d.json || exit; done; cp '$OUT/compare-$tag-bf16.json' '$OUT/compare-$tag.json'"
done
M="$A bench models $REPEATS --batch $BATCH"
stage models-720 25/120 required "$M --model deblurgan --model hybrid --sizes $PHOTO_BIG --variants $VARIANTS --json '$OUT/models-720.json'"

# ---------------------------------------------------------------- 3. training speed (one device, random data)
# Every precision train.precision accepts, as the schema lists them (`--precision all`).
stage train 60/240 required "$A bench train $TRAIN_PRESETS --steps $TRAIN_STEPS $TRAIN_WARMUP --precision all --json '$OUT/train.json'"

# One training step of the hybrid and of DeblurGAN under torch.profiler: where a step's time goes.
stage profile 20/120 required "python3 bench/gpu_profile.py '$OUT/profile.json' $DRYFLAG"

# ---------------------------------------------------------------- 4. one Ray Train run from shards, then its evaluation
join_ray
stage ray 65/480 required "$A data synth --kind photos $SYNTH --out '$STORE/datasets/synth-photos' \
  && $A train --preset $RAY_PRESET --store '$STORE' --name gpu-ray --steps $RAY_STEPS --workers 1 $RAY_GPU --no-progress \
     --set data.dataset=datasets/synth-photos --set loss.perceptual=none --set eval.fid=false $RAY_SETS \
     --set eval.every=$RAY_STEPS --set train.checkpoint_every=$RAY_STEPS --set train.log_every=$(( RAY_STEPS / 2 )) \
  && cp '$STORE/runs/gpu-ray/timing.json' '$OUT/ray.json'"
# In this process, no Ray: PSNR/SSIM of the whole val split; FID is asked for and reported missing
# (no Inception weights in that store), with the reason.
stage evaluate 15/120 required "$A evaluate --local --fid --run '$STORE/runs/gpu-ray' --dataset datasets/synth-photos \
  --store '$STORE' --split val && python3 -c \"\$EVAL_SUMMARY\" '$STORE/runs/gpu-ray/eval-val.json' '$OUT/evaluate.json'"

# ---------------------------------------------------------------- 5. only if time remains, in order of value
stage models-1024 40/150 optional "$M --model asapnet --model pix2pixhd --sizes $LABEL_BIG --variants $VARIANTS --json '$OUT/models-1024.json'"
stage models-512 15/120 optional "$M --model pix2pixhd --sizes $LABEL_MID --variants $VARIANTS --json '$OUT/models-512.json'"
# One compiled row per model (batch 1 twice: a second batch size would compile again).
stage models-compile 60/120 optional "$A bench models $REPEATS --batch 1 --variants $COMPILE_VARIANT --model asapnet --model pix2pixhd --sizes $LABEL_BIG --json '$OUT/models-compile-label.json' && $A bench models $REPEATS --batch 1 --variants $COMPILE_VARIANT --model deblurgan --model hybrid --sizes $PHOTO_BIG --json '$OUT/models-compile.json'"
stage predict 35/200 optional "$A bench predict $PREDICT --json '$OUT/predict.json'"
stage sweep 60/360 optional "$A tune --preset hybrid-smoke --store '$STORE' --trials $SWEEP_TRIALS --steps $SWEEP_STEPS --name gpu-sweep \
  --no-progress $SWEEP_SETS $([ "$DRY" = 1 ] && echo "--gpus-per-trial 0" || echo "--gpus-per-trial 1") \
  && cp '$STORE/sweeps/gpu-sweep/sweep.json' '$OUT/sweep.json'"

# ---------------------------------------------------------------- summary
end_ray
checkpoint
cat "$OUT/summary.txt" "$OUT/summary.log"
