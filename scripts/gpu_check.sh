#!/usr/bin/env bash
# Proves the CUDA path on one GPU, in a few minutes, on generated data (no download):
#   1. the throughput benchmark of the released 224-px recipes (recipe precision, then bf16);
#   2. the 224-px recipes (suave/scripts/train_1perc.sh, daino/scripts/train_1perc.sh) for STEPS iterations each,
#      in fp16 and bf16, through job_launcher.py --num_gpus 1 (a plain process) and under torchrun with one
#      process (an NCCL process group of one, DDP and SyncBatchNorm as on many GPUs);
#   3. resume on the GPU: Suave fp16 under torchrun stopped after 2 of 3 epochs and resumed by the same command,
#      against the same run uninterrupted; Daino fp16 stopped likewise and resumed by job_launcher.py --resume.
# Suave fp16 and Daino bf16 go through torchrun, Suave bf16 and Daino fp16 through the launcher.
# No pre-trained checkpoint is loaded (--swav_init_ckpt/--dino_init_ckpt are cleared): the networks start random.
#
#   bash scripts/gpu_check.sh [WORK_DIR]        # STEPS=200 WORKERS=12 by default
#   ONLY_RESUME=1 SKIP_THROUGHPUT=1 bash scripts/gpu_check.sh   # step 3 alone
# Prints one summary line per run; the logs stay in WORK_DIR (default /tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/gpu_check}
STEPS=${STEPS:-200}
WORKERS=${WORKERS:-12}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'bf16', torch.cuda.is_bf16_supported())"

DATA=$WORK/data
if [ ! -f "$DATA/subsets/labelled.txt" ]; then
  $PY - "$DATA" <<'EOF'
import sys
from concurrent.futures import ProcessPoolExecutor
from src.data.synthetic import make_synthetic_imagefolder

def part(seed):  # one folder tree per seed, merged by writing into the same root (class folders c0..c9)
    return make_synthetic_imagefolder(f"{sys.argv[1]}_{seed}", num_classes=10, train_per_class=40, val_per_class=4,
                                      size=256, seed=seed, subset_per_class=2)

if __name__ == "__main__":
    import os, shutil
    with ProcessPoolExecutor(8) as pool:
        parts = list(pool.map(part, range(8)))
    root = sys.argv[1]
    lines = []
    for seed, p in enumerate(parts):
        for split in ("train", "val"):
            for cls in p.classes:
                os.makedirs(f"{root}/{split}/{cls}", exist_ok=True)
                for name in os.listdir(p.root / split / cls):
                    os.replace(p.root / split / cls / name, f"{root}/{split}/{cls}/{name.replace('_', f'_{seed}x', 1)}")
        lines += [line.strip().replace("_", f"_{seed}x", 1) for line in open(p.subset_file) if line.strip()]
        shutil.rmtree(p.root)
    os.makedirs(f"{root}/subsets", exist_ok=True)
    with open(f"{root}/subsets/labelled.txt", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"generated {root}: 3200 train / 320 val images of 256 px, 10 classes, {len(lines)} labelled")
EOF
fi

summary() {  # name, output dir, exit code
  local last
  last=$(grep -E "\[[0-9]+/[0-9]+\]" "$2/train.log" 2>/dev/null | tail -n 1 | cut -c 1-400)
  echo "== $1: exit $3"
  echo "   last progress: ${last:-none}"
  [ -f "$2/results.json" ] && echo "   results: $(cat "$2/results.json" | tr -d '\n' | cut -c 1-400)"
  grep -iE "error|Traceback|nan|inf loss" "$2/stdout.log" 2>/dev/null | head -n 5 | sed 's/^/   ! /'
}

COMMON_SUAVE=(--subset_file "$DATA/subsets/labelled.txt" --swav_init_ckpt "" --wandb false
              --workers "$WORKERS" --time_budget_min 0 --log_freq 50 --checkpoint_freq 1)
COMMON_DAINO=(--subset_file "$DATA/subsets/labelled.txt" --dino_init_ckpt "" --out_dim 10 --wandb false
              --num_workers "$WORKERS" --time_budget_min 0 --log_freq 50 --saveckp_freq 1)
SUAVE_ITERS=$((STEPS / 2)); DAINO_ITERS=$((STEPS / 4))  # 3200 images: 100 Suave / 50 Daino iterations an epoch

if [ "${SKIP_THROUGHPUT:-0}" != 1 ]; then
  echo "== throughput benchmark (recipe precision, then bf16)"
  timeout 240 $PY benchmarks/throughput.py --preset imagenet --steps 20 --warmup 5
  timeout 240 $PY benchmarks/throughput.py --preset imagenet --steps 20 --warmup 5 --bf16
fi

run_launcher() {  # name, method, recipe, extra flags...
  local name=$1 method=$2 recipe=$3; shift 3
  local dir=$WORK/runs/$name
  rm -rf "$dir"; mkdir -p "$WORK/runs"
  timeout 300 $PY job_launcher.py --method "$method" --script_file "$recipe" --num_gpus 1 --data_dir "$DATA" \
    --base_experiment_dir "$WORK/runs" --experiment_dir "$name" -- "$@" > "$WORK/$name.stdout.log" 2>&1
  local code=$?
  cp "$WORK/$name.stdout.log" "$dir/stdout.log" 2>/dev/null
  summary "$name (job_launcher.py --num_gpus 1)" "$dir" $code
}

run_torchrun() {  # name, entry, recipe, extra flags...
  local name=$1 entry=$2 recipe=$3; shift 3
  local dir=$WORK/runs/$name
  mkdir -p "$dir"
  local flags
  flags=$($PY -c "import sys; from launch.script_file import read_script_file, flatten; \
print(' '.join(flatten(read_script_file(sys.argv[1]).flags)))" "$recipe")
  # shellcheck disable=SC2086
  timeout 300 $PY -m torch.distributed.run --standalone --nproc_per_node 1 "$entry" $flags \
    --data_path "$DATA" --output_dir "$dir" "$@" > "$dir/stdout.log" 2>&1
  summary "$name (torchrun --nproc_per_node 1, NCCL)" "$dir" $?
  grep -m 1 -E "process group|backend|world" "$dir/train.log" | sed 's/^/   /'
}

if [ "${ONLY_RESUME:-0}" != 1 ]; then
run_torchrun suave_fp16 main_suave.py suave/scripts/train_1perc.sh "${COMMON_SUAVE[@]}" --epochs 2 --warmup_epochs 1 \
  --max_iters_per_epoch "$SUAVE_ITERS" --use_fp16 true
run_launcher suave_bf16 suave suave/scripts/train_1perc.sh "${COMMON_SUAVE[@]}" --epochs 2 --warmup_epochs 1 \
  --max_iters_per_epoch "$SUAVE_ITERS" --use_fp16 false --use_bf16 true
run_launcher daino_fp16 daino daino/scripts/train_1perc.sh "${COMMON_DAINO[@]}" --epochs 4 --warmup_epochs 1 --warmup_teacher_temp_epochs 2 \
  --max_iters_per_epoch "$DAINO_ITERS" --use_fp16 true
run_torchrun daino_bf16 main_daino.py daino/scripts/train_1perc.sh "${COMMON_DAINO[@]}" --epochs 4 --warmup_epochs 1 --warmup_teacher_temp_epochs 2 \
  --max_iters_per_epoch "$DAINO_ITERS" --use_fp16 false --use_bf16 true
fi

if [ "${SKIP_RESUME:-0}" != 1 ]; then
# Resume on the GPU, as after a preemption: the same command run twice, the first time leaving after 2 of its 3
# epochs (--stop_after_epochs 2; checkpoint with GradScaler, queue, optimiser and RNG states), against the same
# 3 epochs uninterrupted. cuDNN is not bitwise deterministic, so the last epoch's numbers agree closely, not exactly.
epoch_row() {  # output dir, epoch: that epoch's row of stats.csv
  $PY -c "import sys, pandas as pd; s = pd.read_csv(sys.argv[1] + '/stats.csv'); \
r = s[s.epoch == int(sys.argv[2])].iloc[-1]; \
keys = [k for k in ('iteration', 'train_loss', 'train_lab_loss', 'train_unlab_loss', 'train_lr', 'val_acc1', 'val_loss') if k in s]; \
print(' '.join(f'{k}={r[k]:.5g}' for k in keys))" "$1" "$2" \
    2>&1 | cut -c 1-400
}
RESUME_SUAVE=("${COMMON_SUAVE[@]}" --epochs 3 --warmup_epochs 1 --max_iters_per_epoch "$SUAVE_ITERS" --use_fp16 true)
echo "== resume: Suave fp16 under torchrun, stopped after 2 of 3 epochs, then the same command again"
rm -rf "$WORK/runs/suave_resume" "$WORK/runs/suave_straight"
run_torchrun suave_resume main_suave.py suave/scripts/train_1perc.sh "${RESUME_SUAVE[@]}" --stop_after_epochs 2
cp "$WORK/runs/suave_resume/stdout.log" "$WORK/runs/suave_resume/stdout_first.log"
run_torchrun suave_resume main_suave.py suave/scripts/train_1perc.sh "${RESUME_SUAVE[@]}" --stop_after_epochs 2
grep -E "resumed from" "$WORK/runs/suave_resume/train.log" | tail -n 1 | sed 's/^/   /'
run_torchrun suave_straight main_suave.py suave/scripts/train_1perc.sh "${RESUME_SUAVE[@]}"
echo "   last epoch, resumed:       $(epoch_row "$WORK/runs/suave_resume" 2)"
echo "   last epoch, uninterrupted: $(epoch_row "$WORK/runs/suave_straight" 2)"

echo "== resume: Daino fp16 through job_launcher.py, stopped after 2 of 3 epochs, then job_launcher.py --resume"
rm -rf "$WORK/runs/daino_resume"
run_launcher daino_resume daino daino/scripts/train_1perc.sh "${COMMON_DAINO[@]}" --epochs 3 --warmup_epochs 1 \
  --warmup_teacher_temp_epochs 2 --max_iters_per_epoch "$DAINO_ITERS" --use_fp16 true --stop_after_epochs 2
timeout 300 $PY job_launcher.py --resume "$WORK/runs/daino_resume" > "$WORK/runs/daino_resume/stdout.log" 2>&1
summary "daino_resume (job_launcher.py --resume)" "$WORK/runs/daino_resume" $?
grep -E "resumed from" "$WORK/runs/daino_resume/train.log" | tail -n 1 | sed 's/^/   /'
echo "   last epoch: $(epoch_row "$WORK/runs/daino_resume" 2)"
fi
nvidia-smi --query-gpu=memory.used --format=csv,noheader
if [ -n "${OUT:-}" ]; then  # the device tool's result folder: keep the logs
  for d in "$WORK"/runs/*/; do cp "$d/train.log" "$OUT/$(basename "$d")_train.log" 2>/dev/null; done
fi
