#!/usr/bin/env bash
# The README's test command: sets up the environment if needed, then runs the whole suite (CPU only).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k sinkhorn`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
source scripts/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
python -m pytest "$@"
