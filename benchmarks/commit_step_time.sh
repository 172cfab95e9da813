#!/bin/bash
# Step time of one recipe at two commits, run interleaved on this machine (A, B, A, B, ...), to tell a code
# regression from a slower machine: the 30-minute Fashion-MNIST rows are budgeted in wall time, so a row made on a
# slower day makes fewer steps. Each run trains --epochs 1 --max_iters_per_epoch STEPS with the recipe's flags and
# the same seed; with identical arithmetic both commits end at the same accuracy.
#
#   bash benchmarks/commit_step_time.sh 13a40f2 HEAD                      # Suave's Fashion-MNIST recipe
#   RECIPE=daino/scripts/fmnist_1perc.sh STEPS=100 ROUNDS=3 bash benchmarks/commit_step_time.sh A B
#
# Prints per run: s a step (stats.jsonl, the epoch's train_step_s), training minutes and test top-1 (results.json).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: bash benchmarks/commit_step_time.sh COMMIT_A COMMIT_B" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
RECIPE=${RECIPE:-suave/scripts/fmnist_1perc.sh}
STEPS=${STEPS:-150}
ROUNDS=${ROUNDS:-2}
DATA=${DATA:-$REPO/data/fashion-mnist}
PY=$(command -v "${PYTHON:-python}") || { echo "no python: set PYTHON" >&2; exit 2; }
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # absolute: the runs start in the worktrees
OUT=${OUT:-$(mktemp -d /tmp/commit_step_time.XXXX)}; mkdir -p "$OUT"
[ -d "$DATA/train" ] || { echo "no converted Fashion-MNIST in $DATA: run python -m src.data.fashion_mnist first or set DATA" >&2; exit 2; }
declare -A TREE
remove_trees() { for tree in "${TREE[@]}"; do git -C "$REPO" worktree remove --force "$tree" 2> /dev/null || true; done; }
trap remove_trees EXIT  # the runs' logs and folders stay in $OUT
for commit in "$1" "$2"; do
  sha=$(git -C "$REPO" rev-parse --short "$commit")
  TREE[$commit]=$OUT/tree_$sha
  [ -d "${TREE[$commit]}" ] || git -C "$REPO" worktree add --detach -f "${TREE[$commit]}" "$sha" > /dev/null
done
printf "%-10s %-6s %-10s %-12s %-8s\n" commit round s/step train_min top1
for round in $(seq "$ROUNDS"); do
  for side in A B; do
    if [ $side = A ]; then commit=$1; else commit=$2; fi
    tree=${TREE[$commit]}; run=$OUT/${side}_$(basename "$tree")_$round  # A and B apart even for one commit
    read -r entry flags < <(cd "$tree" && "$PY" -c "import shlex,sys; w=shlex.split(open(sys.argv[1]).read().replace('\\\\\n',' ')); print(w[0], shlex.join(w[1:]))" "$RECIPE")
    (cd "$tree" && eval "$PY" "$entry" "$flags" --data_path "$DATA" --epochs 1 --max_iters_per_epoch "$STEPS" \
      --eval_every_min 1000 --log_freq 25 --output_dir "$run" > "$run.log" 2>&1) || { echo "$commit failed: $run.log" >&2; exit 1; }
    "$PY" - "$run" "$commit" "$round" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if line.strip()]
results = json.loads((run / "results.json").read_text())
print(f"{sys.argv[2]:<10} {sys.argv[3]:<6} {stats[-1]['train_step_s']:<10.3f} {results['train_minutes']:<12.2f} "
      f"{results['val_acc1']:<8.2f}")
EOF
  done
done
echo "runs: $OUT"
