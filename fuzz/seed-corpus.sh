#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ (git-ignored) from the repository's small
# fixtures and from what `layerlens demo` writes: valid inputs the fuzzer
# mutates. The regression files are added too, so known crashers stay covered.
# Usage: fuzz/seed-corpus.sh   (then: cd fuzz && cargo +nightly fuzz run TARGET)
set -euo pipefail
cd "$(dirname "$0")/.."
C=fuzz/corpus
mkdir -p "$C"/{onnx_import,pth_state_dict,model_json,image,npy,safetensors_input,safetensors_weights,onnx_external_data,keras}
cp crates/layerlens-onnx/tests/fixtures/*.onnx crates/layerlens/tests/fixtures/resnet18.onnx "$C/onnx_import/"
cp crates/layerlens/tests/fixtures/pth/*.pth "$C/pth_state_dict/"
# The ONNX backend node tests (scripts/fetch-models.sh unpacks them): one small
# model per op and attribute combination.
nodes="${LAYERLENS_CACHE:-$HOME/.cache/layerlens}/assets/onnx-node-tests"
for d in "$nodes"/*/; do
    [ -f "$d/model.onnx" ] && cp "$d/model.onnx" "$C/onnx_import/node_$(basename "$d").onnx"
done
cp crates/layerlens-keras/tests/fixtures/*.keras crates/layerlens-keras/tests/fixtures/*.h5 "$C/keras/"
"${LAYERLENS_REF_PYTHON:-$HOME/.cache/layerlens/refenv/bin/python}" fuzz/gen_keras_seeds.py corpus
for t in onnx_import pth_state_dict npy onnx_external_data keras; do cp fuzz/regressions/$t/* "$C/$t/"; done
# Valid .npy files and external-data ONNX models (referencing the weights.bin
# that fuzz/entries.rs writes), written by hand.
python3 fuzz/gen_seeds.py corpus
# Small safetensors files as tensor inputs.
cp crates/layerlens-core/tests/fixtures/seeds/*.safetensors "$C/safetensors_input/"
# model.json files and PNGs from the demo (trains the seed CNN for ~4 s).
demo=$(mktemp -d)
cargo run -q --release -p layerlens-cli -- demo --out "$demo" >/dev/null
cp "$demo/seed-cnn/model.json" "$C/model_json/seed-cnn.json"
cp "$demo/features-model/model.json" "$C/model_json/features-model.json"
cp "$demo"/conv2d.png "$demo"/cam.png "$C/image/"
# The seed CNN's weights (what safetensors_weights loads into; also as an input).
cp "$demo/seed-cnn/model.safetensors" "$C/safetensors_weights/seed-cnn.safetensors"
cp "$demo/features-model/model.safetensors" "$C/safetensors_weights/features-model.safetensors"
cp "$demo/seed-cnn/model.safetensors" "$C/safetensors_input/seed-cnn-weights.safetensors"
rm -rf "$demo"
ls "$C"/* | head -50
