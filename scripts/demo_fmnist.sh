#!/usr/bin/env bash
# The README's first command: Suave on real Fashion-MNIST with 1% of the labels (600 images), on the CPU.
# Sets up what is missing (Python environment, the dataset, its ImageFolder conversion), then trains through
# job_launcher.py exactly as a GPU user would (recipe: suave/scripts/fmnist_1perc.sh, 30 minutes of training),
# and prints the test accuracy next to every row of the benchmark's table at the same training time (10, 20 or 30
# minutes: strongest supervised, FixMatch, ..., with the gain over the strongest supervised row), where the
# checkpoint, log and stats are, and its plot (this run's curve beside the table's, when matplotlib is installed).
#   bash scripts/demo_fmnist.sh [-- recipe overrides, e.g. -- --time_budget_min 10]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
source scripts/setup_env.sh

PACKAGE_DIR=/usr/share/datasets/fashion-mnist
DATA=data/fashion-mnist
if [ ! -f "$DATA/.fashion_mnist_complete.json" ]; then
    source_flags=()
    if [ ! -d "$PACKAGE_DIR" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "[demo] installing Debian's dataset-fashion-mnist"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true
    fi
    if [ ! -d "$PACKAGE_DIR" ]; then
        echo "[demo] $PACKAGE_DIR not found (install it with: sudo apt-get install dataset-fashion-mnist);"
        echo "[demo] trying torchvision's download instead (needs internet)"
        source_flags=(--download)
    fi
    python -m src.data.fashion_mnist --out "$DATA" "${source_flags[@]}"
fi

overrides=()
if [ "${1:-}" = "--" ]; then shift; overrides=("$@"); fi
recipe=suave/scripts/fmnist_1perc.sh
budget=$(awk '$1 == "--time_budget_min" {print $2}' "$recipe")
for ((i = 0; i + 1 < ${#overrides[@]}; i++)); do
    if [ "${overrides[$i]}" = "--time_budget_min" ]; then budget="${overrides[$((i + 1))]}"; fi
done
base=experiments
# The benchmark's Suave run: same recipe, its seed, and the cosine schedule sized to the budget on this machine
# from a few timed steps (otherwise a slower machine stops the run before its learning rate has decayed).
echo "[demo] timing a few steps to size the schedule to ${budget} min of training on this machine"
schedule=$(python benchmarks/fmnist_benchmark.py --runs suave --schedule_only --budget_min "$budget" \
    --data_path "$DATA" --out "$base/calibration" --flags "${overrides[*]}")
before=$(ls -d "$base"/*-fmnist_suave_1perc 2>/dev/null | sort | tail -n 1 || true)
# shellcheck disable=SC2086  # $schedule is three flags and their values
python job_launcher.py --mode local --num_gpus 0 --method suave --script_file "$recipe" \
    --data_dir "$DATA" --name fmnist_suave_1perc --base_experiment_dir "$base" -- $schedule "${overrides[@]}"
exp=$(ls -d "$base"/*-fmnist_suave_1perc | sort | tail -n 1)
[ "$exp" != "$before" ] || { echo "[demo] no new experiment directory in $base" >&2; exit 1; }
python - "$exp" "$budget" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from fmnist_benchmark import Stage, comparison_lines, curve_of, demo_plot, read_jsonl
exp, budget = Path(sys.argv[1]), float(sys.argv[2])
result = json.loads((exp / "results.json").read_text())
curve = curve_of([Stage("", exp, 0, results=result, evals=read_jsonl(exp / "evals.jsonl"))], classify_from=0)
print(f"\nSuave, Fashion-MNIST, 1% labels: test top-1 {result['val_acc1']:.2f}% after "
      f"{result['train_minutes']:.1f} min of training ({result['iterations']} iterations)")
table = Path("benchmarks", "results", "fmnist_1perc", "results.csv")
print("\n".join(comparison_lines(table, "Suave", curve, budget, result["iterations"])))
for name in ("checkpoint.pth", "train.log", "stats.csv", "evals.csv"):
    if (exp / name).is_file():
        print(f"{name:16s}{exp / name}")
print(demo_plot(table, "Suave", curve, exp / "accuracy_vs_time.png"))
EOF
