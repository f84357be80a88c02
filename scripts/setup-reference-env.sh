#!/usr/bin/env bash
# Creates the Python environment that generates the reference fixtures
# (PyTorch, Keras/TensorFlow, ONNX Runtime, pytorch-grad-cam), every package
# pinned by version and SHA-256 (scripts/requirements-reference.txt), pip included.
# The tests do not need it: the fixtures it produces are committed.
#   scripts/setup-reference-env.sh        # -> ${LAYERLENS_REF_ENV:-$HOME/.cache/layerlens/refenv}
#   PYTHON=python3.11 scripts/setup-reference-env.sh
# The hashes are those of the CPython 3.11 / Linux x86_64 wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${LAYERLENS_REF_ENV:-$HOME/.cache/layerlens/refenv}
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys, platform; sys.exit(not (sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64" and sys.platform == "linux"))'; then
    echo "error: $PYTHON is $("$PYTHON" -c 'import sys, platform; print(sys.version.split()[0], sys.platform, platform.machine())');" \
        "scripts/requirements-reference.txt pins CPython 3.11 wheels for Linux x86_64 (set PYTHON=python3.11)" >&2
    exit 1
fi
"$PYTHON" -m venv "$ENV"
"$ENV/bin/python" -m pip install -q --require-hashes -r /dev/stdin <<'PIN'
pip==26.3 --hash=sha256:f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13
PIN
"$ENV/bin/python" -m pip install -q --require-hashes -r scripts/requirements-reference.txt
echo "reference env ready: $ENV/bin/python"
