#!/usr/bin/env bash
# The eight keras.applications architectures against Keras at every layer
# (issue 16; not part of scripts/test.sh: ~1 GB of generated models and ~10 min).
# Generates VGG16, ResNet50, MobileNetV2, EfficientNetB0, DenseNet121, Xception,
# InceptionV3 and ConvNeXtTiny with seeded weights into
# ${LAYERLENS_CACHE:-~/.cache/layerlens}/keras-applications (reference env of
# scripts/setup-reference-env.sh), then runs the ignored Rust test that imports
# each .keras file and compares every layer with Keras' float64 result, and
# the CLI test that extracts VGG16's block3_conv3 from a PNG, and the zoo's
# VGG16 with that VGG16's weights (the path of zoo:vgg16=imagenet).
#   scripts/keras-applications.sh [NAME ...]     (default: all eight)
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${LAYERLENS_CACHE:-$HOME/.cache/layerlens}"
py="${LAYERLENS_REF_PYTHON:-$cache/refenv/bin/python}"
[ -x "$py" ] || scripts/setup-reference-env.sh
scripts/fetch-models.sh >/dev/null  # chelsea.png
out="$cache/keras-applications"
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(vgg16 resnet50 mobilenetv2 efficientnetb0 densenet121 xception inceptionv3 convnexttiny)
(cd crates/layerlens-keras/tests/fixtures && "$py" gen_applications.py "$out" "${names[@]}")
LAYERLENS_KERAS_APPS="$out" LAYERLENS_KERAS_APPS_ONLY="$(IFS=,; echo "${names[*]}")" \
    cargo test --release -p layerlens-keras --test keras_applications -- --ignored --nocapture
# The acceptance command of issue 16 through the CLI (VGG16, block3_conv3, a PNG).
if [[ " ${names[*]} " == *" vgg16 "* ]]; then
    LAYERLENS_KERAS_APPS="$out" cargo test --release -p layerlens-cli --test keras -- --ignored --nocapture
    # Keras' VGG16 weights into the zoo's VGG16 (what zoo:vgg16=imagenet does).
    LAYERLENS_KERAS_APPS="$out" cargo test --release -p layerlens --test keras_weights -- --ignored --nocapture
fi
