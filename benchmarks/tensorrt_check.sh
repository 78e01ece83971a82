#!/usr/bin/env bash
# TensorRT check on a machine with an NVIDIA GPU: a venv with torch (for the export), cuda-python (the TensorRT backend's
# device buffers) and the project with [export,tensorrt],
# then benchmarks/tensorrt_check.py (export checkpoints/default, build the engines, parity vs onnxruntime,
# latency per graph and per chunk), which prints one JSON object on stdout. Progress goes to stderr.
#
#   benchmarks/tensorrt_check.sh                          # everything, < 5 minutes after the downloads
#   benchmarks/tensorrt_check.sh --precisions fp16        # arguments go to tensorrt_check.py
#   MOT_TRT_SKIP_INSTALL=1 benchmarks/tensorrt_check.sh   # reuse the venv as it is
#
# Environment: MOT_TRT_VENV (default ~/.cache/mot-policy/venv-trt), PYTHON (the interpreter that makes the venv, default
# python3), TORCH_SPEC (default torch==2.13.0: PyPI's Linux x86_64 wheel is the CUDA 12 build), TORCH_INDEX_URL
# (another torch index, e.g. https://download.pytorch.org/whl/cu126), NVIDIA_SMI (default nvidia-smi).
# On a Jetson (JetPack 6) the venv sees the system site-packages (JetPack's tensorrt module) and the [tensorrt]
# extra is not installed; set TORCH_INDEX_URL to NVIDIA's Jetson wheel index (docs/deploy.md).
# Exit codes: 0 ok, 3 no GPU / no CUDA / no tensorrt (one line on stderr), anything else: a failed step.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SMI="${NVIDIA_SMI:-nvidia-smi}"

if ! command -v "$SMI" >/dev/null 2>&1; then
    echo "tensorrt_check: no NVIDIA GPU here ($SMI not found); run this on a machine with an NVIDIA GPU and driver" >&2
    exit 3
fi
if ! gpus="$("$SMI" -L 2>/dev/null)" || [ -z "$gpus" ]; then
    echo "tensorrt_check: no NVIDIA GPU here ($SMI -L lists no device); check the driver (nvidia-smi)" >&2
    exit 3
fi
echo "tensorrt_check: $gpus" >&2

VENV="${MOT_TRT_VENV:-$HOME/.cache/mot-policy/venv-trt}"
PYTHON="${PYTHON:-python3}"
JETSON=0
[ -f /etc/nv_tegra_release ] && JETSON=1

if [ -z "${MOT_TRT_SKIP_INSTALL:-}" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        echo "tensorrt_check: creating $VENV with $PYTHON" >&2
        if [ "$JETSON" = 1 ]; then
            "$PYTHON" -m venv --system-site-packages "$VENV"   # JetPack's tensorrt lives in the system site
        else
            "$PYTHON" -m venv "$VENV"
        fi
    fi
    pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    torch_spec="${TORCH_SPEC:-torch==2.13.0}"
    echo "tensorrt_check: installing $torch_spec${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}" >&2
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        "${pip[@]}" "$torch_spec" --index-url "$TORCH_INDEX_URL"
    else
        "${pip[@]}" "$torch_spec"
    fi
    echo "tensorrt_check: installing cuda-python (the TensorRT backend's device buffers)" >&2
    "${pip[@]}" cuda-python
    extras="export,tensorrt"
    [ "$JETSON" = 1 ] && extras="export"
    echo "tensorrt_check: installing the project with [$extras]" >&2
    "${pip[@]}" -e "$REPO[$extras]"
fi

exec "$VENV/bin/python" "$REPO/benchmarks/tensorrt_check.py" "$@"
