#!/bin/sh
# Recreates the training environment on a fresh Debian 12 machine: Debian's CPU torch
# and scientific stack, espeak-ng and sox for speech, fonts for printed digits, and a
# virtual environment at the repository root (.venv) that sees the system packages.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends \
    python3 python3-venv python3-pip python3-torch python3-sklearn python3-scipy \
    python3-numpy python3-pil espeak-ng sox \
    fonts-dejavu-core fonts-liberation fonts-freefont-ttf

python3 -m venv --system-site-packages "$root/.venv"
"$root/.venv/bin/pip" install -r "$root/models/train/requirements.txt"
"$root/.venv/bin/python" -c "import torch, sklearn, onnxruntime, tokenizers, onnx; print('ok')"
