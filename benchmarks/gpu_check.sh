#!/usr/bin/env bash
# gpu_check.sh: a short (3-4 minutes on an H100 host, capped at 290 s) check of echo-cam on one
# NVIDIA GPU.
#
#   bash benchmarks/gpu_check.sh                 # from anywhere, on a copy of the repository
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # results go to $OUT (default ./benchmarks/results)
#
# Runs gpu_check.py (its docstring lists the parts: device, model + CAM, the device stage and
# local mode, `echocam run samples`, processes sharing the GPU, training) and writes
# $OUT/gpu_check.json.  Exit status: 0 ok, 1 a part failed, 2 no GPU / no CUDA torch.
#
# Python: $PYTHON if set; else .venv/bin/python if it has the dependencies; else python3 if it
# has them (a preinstalled CUDA torch); else it makes the venv itself:
#     python3 -m venv --system-site-packages .venv && .venv/bin/pip install -e .
# (--system-site-packages keeps a preinstalled CUDA torch; on a machine without network, pip
# needs the dependencies already installed or a wheelhouse in PIP_FIND_LINKS.)
# The repository root goes on PYTHONPATH, so an installed copy of echocam is not required.
# Dry run without a GPU: .venv/bin/python benchmarks/gpu_check.py --device cpu --quick
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/benchmarks/results}"
LIMIT_S="${GPU_CHECK_TIMEOUT_S:-290}"
mkdir -p "$OUT"

die() { echo "gpu_check: $*" >&2; exit 2; }

command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this check needs an NVIDIA GPU"
nvidia-smi || die "nvidia-smi failed: no usable NVIDIA GPU or driver"

DEPS="import torch, torchvision, numpy, soundfile, soxr, librosa, PIL, boto3, celery, tqdm, pyarrow"
has_deps() { [ -x "$(command -v "$1" 2>/dev/null || echo "$1")" ] && "$1" -c "$DEPS" 2>/dev/null; }

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if has_deps "$ROOT/.venv/bin/python"; then
    PY="$ROOT/.venv/bin/python"
  elif has_deps python3; then
    PY="$(command -v python3)"
  else
    echo "gpu_check: setting up .venv (python3 -m venv --system-site-packages; pip install -e .)"
    python3 -m venv --system-site-packages "$ROOT/.venv"
    "$ROOT/.venv/bin/pip" install --quiet -e "$ROOT" || die "pip install -e . failed (offline?)"
    PY="$ROOT/.venv/bin/python"
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
echo "gpu_check: python $PY"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || die "torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device"

status=0
timeout --kill-after=10 "$LIMIT_S" "$PY" "$ROOT/benchmarks/gpu_check.py" --device cuda --out "$OUT" \
  || status=$?
if [ "$status" -eq 124 ]; then
  echo "gpu_check: stopped after ${LIMIT_S} s" >&2
fi
echo "gpu_check: exit $status; results in $OUT/gpu_check.json"
exit "$status"
