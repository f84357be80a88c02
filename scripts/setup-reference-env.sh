#!/usr/bin/env bash
# Creates the Python environment that generates the reference fixtures
# (PyTorch, Keras/TensorFlow, ONNX Runtime, pytorch-grad-cam), every package
# pinned by version and SHA-256 (scripts/requirements-reference.txt).
# The tests do not need it: the fixtures it produces are committed.
#   scripts/setup-reference-env.sh        # -> ${LAYERLENS_REF_ENV:-$HOME/.cache/layerlens/refenv}
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${LAYERLENS_REF_ENV:-$HOME/.cache/layerlens/refenv}
python3 -m venv "$ENV"
"$ENV/bin/python" -m pip install -q --upgrade pip
"$ENV/bin/python" -m pip install -q --require-hashes -r scripts/requirements-reference.txt
echo "reference env ready: $ENV/bin/python"
