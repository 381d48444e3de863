#!/usr/bin/env bash
# Every GPU measurement of the project in one short run (a lent H100/H200 with torch 2.11, timm, OpenCV).
# Usage on the device machine, from the repository root:  bash benchmarks/gpu_run.sh $OUT
# Writes gpu_env.txt, pretrain.jsonl, finetune.jsonl, data.jsonl and e2e.txt into the folder given.
# AUTOTUNE=1 bash benchmarks/gpu_run.sh $OUT  instead times the max-autotune compilation alone.
set -u
out=${1:-benchmarks/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, timm, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__)"
  nproc; } > "$out/gpu_env.txt" 2>&1
cat "$out/gpu_env.txt"

step() { echo "== $*"; timeout "${BUDGET:-150}" python3 "$@" 2>&1 | grep -v Warning; }

# Optional (AUTOTUNE=1, run on its own: compilation with autotuning takes minutes): Triton matmul templates.
if [ "${AUTOTUNE:-0}" = 1 ]; then
  BUDGET=420 step -m benchmarks.pretrain --amp bf16 --compile on --compile_mode max-autotune-no-cudagraphs \
      --batch_size 256 --steps 25 --warmup 4 --profile 3 | tee -a "$out/pretrain_autotune.jsonl"
  exit 0
fi

# 1. Pre-training step, ViT-B/16 at 224: reference-like, eager bf16, compiled bf16 at batch 64 and 256.
BUDGET=80  step -m benchmarks.pretrain --variant reference --batch_size 64 256 --steps 12 --warmup 3 | tee -a "$out/pretrain.jsonl"
BUDGET=70  step -m benchmarks.pretrain --amp bf16 --compile off --batch_size 64 256 --steps 12 --warmup 3 --check_loss | tee -a "$out/pretrain.jsonl"
BUDGET=260 step -m benchmarks.pretrain --amp bf16 --compile on --batch_size 64 256 512 --steps 25 --warmup 4 --check_loss \
    --profile 3 | tee -a "$out/pretrain.jsonl"      # --profile: ms per step by kernel category, achieved TFLOP/s

# 2. Stage 2: evaluation and fine-tuning throughput.
if [ -f benchmarks/finetune.py ]; then
  BUDGET=120 step -m benchmarks.finetune --device cuda --mode eval_gpu train eval_e2e --compile on --batch_size 256 \
      --num_workers 16 --steps 15 | tee -a "$out/finetune.jsonl"
fi

# 3. Input pipeline of one worker on this machine's CPU (256-px crops).
BUDGET=25 step -m benchmarks.pretrain --data_only --num_images 256 --image_format jpg | tee -a "$out/data.jsonl"
BUDGET=25 step -m benchmarks.pretrain --data_only --num_images 256 --image_format png | tee -a "$out/data.jsonl"
# 4. The entry points themselves on CUDA (compile + bf16 by default): a short pre-training and fine-tuning of the
#    micro model on synthetic faces, the demo's recipe at a smaller size (stage 2 needs scikit-learn).
data="$out/e2e_data"
BUDGET=30 step -m synthetic.faces --out "$data" --num 600 --size 64 --frames 1 --artefacts strong --no_progress
BUDGET=120 step main_pretrain.py --data_path "$data/pretrain.csv" --output_dir "$out/e2e_pretrain" \
    --model mae_vit_micro_patch8 --input_size 64 --batch_size 32 --epochs 4 --lr 1e-3 --warmup_epochs 1 \
    --num_workers 4 --device cuda --quiet --no_auto_resume | tail -3 | tee "$out/e2e.txt"
if python3 -c "import sklearn" 2>/dev/null; then
  BUDGET=120 step main_finetune.py --finetune "$out/e2e_pretrain/checkpoint-last.pth" \
      --train_manifest "$data/train.csv" --test_manifests "$data/test.csv" --output_dir "$out/e2e_finetune" \
      --input_size 64 --batch_size 32 --epochs 3 --lr 1e-3 --full_finetune --smoothing 0 --layer_decay 1 \
      --num_workers 4 --device cuda --quiet --no_auto_resume | tail -4 | tee -a "$out/e2e.txt"
fi
rm -rf "$data" "$out"/e2e_pretrain/*.pth "$out"/e2e_finetune/*.pth

grep -h '^{' "$out"/*.jsonl | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print({k: r.get(k) for k in ('variant', 'mode', 'batch', 'amp', 'compile', 'img_s', 'img_s_per_worker', 'ms_step', 'peak_gib', 'gflop_img', 'peak_share')})
"
