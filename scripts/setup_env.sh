#!/usr/bin/env bash
# Creates (if needed) and activates the project's Python environment, then installs what the project needs.
# Source it: `source scripts/setup_env.sh`. Reuses an active virtualenv/conda env; otherwise uses
# $SUAVE_VENV (default: .venv in the repository root).
# torch/torchvision: installed only when missing, at $TORCH_SPEC (default: the release CI pins).
_suave_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
    _suave_venv="${SUAVE_VENV:-$_suave_root/.venv}"
    if [ ! -x "$_suave_venv/bin/python" ]; then
        echo "[setup] creating virtual environment in $_suave_venv"
        python3 -m venv "$_suave_venv" || { echo "[setup] could not create $_suave_venv (is python3-venv installed?)" >&2; return 1 2>/dev/null || exit 1; }
    fi
    # shellcheck disable=SC1091
    source "$_suave_venv/bin/activate"
fi
if ! python -c "import torch, torchvision" >/dev/null 2>&1; then
    echo "[setup] installing ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
    # shellcheck disable=SC2086
    python -m pip install -q ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1} || { echo "[setup] torch install failed" >&2; return 1 2>/dev/null || exit 1; }
fi
python -m pip install -q -r "$_suave_root/requirements.txt" -r "$_suave_root/requirements-test.txt" 2> >(grep -v "is ignored: it is neither" >&2) \
    || { echo "[setup] pip install -r requirements.txt failed" >&2; return 1 2>/dev/null || exit 1; }
