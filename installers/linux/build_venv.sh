#!/usr/bin/env bash
# The frozen app's build environment: CPU-only PyTorch, imagesearch itself, PyInstaller.
#
#   installers/linux/build_venv.sh [VENV]          (default build/venv)
#
# PyTorch comes from its CPU index (no CUDA libraries: about 4 GB less). Where that index
# cannot be reached, name the wheels to use instead, e.g. a CPU wheel on disk:
#   TORCH_SPEC="torch==2.13.0+cpu torchvision==0.28.0" installers/linux/build_venv.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${1:-$ROOT/build/venv}
PYTHON=${PYTHON:-python3}
PYINSTALLER_SPEC=${PYINSTALLER_SPEC:-pyinstaller==6.22.3}

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if [ -n "${TORCH_SPEC:-}" ]; then
    # shellcheck disable=SC2086  # a list of requirement specifiers
    "$VENV/bin/python" -m pip install --quiet $TORCH_SPEC
else
    "$VENV/bin/python" -m pip install --quiet --index-url https://download.pytorch.org/whl/cpu \
        torch torchvision
fi
# The app (not editable: the frozen build takes the installed package) and PyInstaller;
# the PyTorch already there satisfies its requirement, so no CUDA build comes in.
"$VENV/bin/python" -m pip install --quiet "$ROOT" "$PYINSTALLER_SPEC"
"$VENV/bin/python" "$ROOT/installers/torchvision_without_ops.py"
if "$VENV/bin/python" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "build venv: CUDA libraries were installed; the frozen app would carry them" >&2
    exit 1
fi
"$VENV/bin/python" -c 'import torch; print("build venv ready: torch", torch.__version__)'
