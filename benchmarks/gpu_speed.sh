#!/usr/bin/env bash
# Issue 21's GPU measurements on one GPU machine with 16 cores, in three parts (PARTS="1 2 3", about 6, 7 and 1
# minutes on one H200; run them in separate calls where one call is limited to 10 minutes):
#   1. the step with each speed lever added in turn (benchmarks/throughput.py --levers), Suave in its recipe's
#      fp16 and Daino in its recipe's fp32, torch.compile last; then both in bf16 (no compile) with the
#      --gpu_aug stage's time per batch;
#   2. data time as a share of the step, end to end on ImageNet-like JPEGs (benchmarks/data_share.py): the
#      reference pipeline against --fast_aug --gpu_aug, on 8 and 16 cores;
#   3. images/s per core of each pipeline on quiet cores, and a DataLoader with 15 workers (data_pipeline.py).
# The JPEGs are written on cores 8-15 while step 1 runs on cores 0-7. Each part has its own time limit, and
# each table row is printed as it is measured, so a part cut short keeps what it measured.
#
#   bash benchmarks/gpu_speed.sh [LOG_DIR]      # logs in LOG_DIR (default $OUT, else /tmp/gpu_speed)
#   PARTS=2 bash benchmarks/gpu_speed.sh        # part 2 alone
# Needs the project's requirements (job_launcher.py imports submitit). Results: benchmarks/README.md, (b) and (c).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${1:-${OUT:-/tmp/gpu_speed}}
export PYTHONUNBUFFERED=1
mkdir -p "$LOG"
pin() {  # CORES command...: run pinned to those cores where taskset exists
  local cores=$1; shift
  if command -v taskset > /dev/null; then taskset -c "$cores" "$@"; else "$@"; fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "$(nproc) cores; $($PY -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')"

PARTS=" ${PARTS:-1 2 3} "

GEN=
if [[ $PARTS == *" 2 "* ]]; then  # the JPEGs of part 2, written while part 1 runs
  pin 8-15 $PY benchmarks/data_share.py --make_data_only > "$LOG/data_gen.log" 2>&1 &
  GEN=$!
fi

if [[ $PARTS == *" 1 "* ]]; then
  echo "== 1. the step's levers, recipe precision (compiling ResNet-50 took over a minute on an H200)"
  pin 0-7 timeout 300 $PY benchmarks/throughput.py --preset imagenet --methods suave --levers --steps 15 --warmup 5 \
    2>&1 | tee "$LOG/levers_suave.log"
  pin 0-7 timeout 200 $PY benchmarks/throughput.py --preset imagenet --methods daino --levers --steps 15 --warmup 5 \
    2>&1 | tee "$LOG/levers_daino.log"
  echo "== 1b. bf16, and the --gpu_aug stage"
  pin 0-7 timeout 100 $PY benchmarks/throughput.py --preset imagenet --levers 6 --bf16 --device_aug --steps 15 \
    --warmup 5 2>&1 | tee "$LOG/levers_bf16.log"
fi

if [[ $PARTS == *" 2 "* ]]; then
  wait $GEN; tail -n 2 "$LOG/data_gen.log"
  echo "== 2. data time as a share of the step, end to end (each run about a minute: start-up, cuDNN autotuning)"
  timeout 540 $PY benchmarks/data_share.py --timeout 150 2>&1 | tee "$LOG/data_share.log"
  (cd /tmp/data_share/runs 2>/dev/null && tar czf "$LOG/data_share_runs.tgz" ./*.stdout.log ./*/train.log)
fi

if [[ $PARTS == *" 3 "* ]]; then
  echo "== 3. pipelines per core and a DataLoader with 15 workers"
  timeout 90 $PY benchmarks/data_pipeline.py --images 16 --reps 2 --methods suave daino --workers 15 --batches 15 \
    2>&1 | tee "$LOG/data_pipeline.log"
fi
nvidia-smi --query-gpu=memory.used --format=csv,noheader
