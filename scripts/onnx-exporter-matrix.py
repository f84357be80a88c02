"""The ONNX exporter matrix of issue 13 item 5: 27 torchvision architectures
(seeded random weights, non-trivial batch-norm statistics, eval mode) exported
with both PyTorch exporters, imported by layerlens and compared with ONNX
Runtime at every node output.

Run with the reference env, after a release build of the CLI:
    cargo build --release -p layerlens-cli
    ~/.cache/layerlens/refenv/bin/python scripts/onnx-exporter-matrix.py [ARCH ...]
Environment: WORK (scratch directory, default /tmp/layerlens-exporter-matrix),
LAYERLENS (the CLI, default target/release/layerlens), SIZE (input side, 224).

For each architecture and exporter ("torchscript": `dynamo=False`, opset 17,
dynamic N/H/W; "dynamo": torch 2.15's default exporter, static batch 1), it
- exports the model and runs ONNX Runtime on one seeded 1x3xSIZExSIZE input
  with every float node output made a graph output;
- runs `layerlens extract MODEL --input x.npy --layers <every tensor name>`
  (ONNX tensor names are aliases of layerlens nodes);
- compares each tensor within 1e-4 relative to the largest magnitude of the
  reference (plus 1e-5 absolute);
and prints one line per case: `ARCH EXPORTER: ok (N tensors, max rel err E)`,
`mismatch` with the first tensors that differ, or `refused: <layerlens's
one-line error>`. A summary table in Markdown ends the output.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.environ.get("WORK", "/tmp/layerlens-exporter-matrix")
LAYERLENS = os.environ.get("LAYERLENS", os.path.join(ROOT, "target/release/layerlens"))
SIZE = int(os.environ.get("SIZE", "224"))

ARCHS = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "alexnet",
    "densenet121", "googlenet", "inception_v3", "mobilenet_v2", "mobilenet_v3_small",
    "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_s", "regnet_y_400mf",
    "mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_0", "squeezenet1_1", "convnext_tiny",
    "vit_b_16", "swin_t", "swin_v2_t", "maxvit_t",
    "segmentation.fcn_resnet50", "segmentation.deeplabv3_mobilenet_v3_large",
    "segmentation.lraspp_mobilenet_v3_large",
]


def build(arch):
    torch.manual_seed(0)
    if arch.startswith("segmentation."):
        fn = getattr(torchvision.models.segmentation, arch.split(".", 1)[1])
        kwargs = {"weights": None, "weights_backbone": None, "aux_loss": False}
        model = fn(**kwargs)
    else:
        kwargs = {"weights": None}
        if arch in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=False, init_weights=True)
        model = getattr(torchvision.models, arch)(**kwargs)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    model.eval()

    class Plain(torch.nn.Module):
        """Segmentation models return a dict; export its `out` tensor."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x)
            return y["out"] if isinstance(y, dict) else y

    return Plain(model) if arch.startswith("segmentation.") else model


def export(model, x, path, exporter):
    """Returns a note on how it was exported when it differs from the default."""
    if exporter == "torchscript":
        try:
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}})
        except torch.onnx.errors.SymbolicValueError:
            # adaptive_avg_pool2d (VGG, AlexNet) cannot be exported with a
            # symbolic H x W by this exporter: only the batch stays dynamic.
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "N"}})
            return "static HxW"
    else:
        prog = torch.onnx.export(model, (x,), dynamo=True, input_names=["x"])
        prog.save(path)
    return None


def with_every_output(path, out_path):
    m = onnx.load(path)
    inferred = onnx.shape_inference.infer_shapes(m)
    floats = {vi.name for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
              if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    have = {o.name for o in m.graph.output}
    # Values known without the input's values (initializers, Constant nodes,
    # Shape, and what is computed from them only) are folded by layerlens: not nodes.
    known = {t.name for t in m.graph.initializer}
    names = []
    modules = set()
    for node in m.graph.node:
        for p in node.metadata_props:
            if p.key == "pkg.torch.onnx.name_scopes":
                scopes = [x.strip().strip("'\"") for x in p.value.strip("[]").split(",")]
                modules.update(x for x in scopes[1:-1] if x)
    for node in m.graph.node:
        inputs = [i for i in node.input if i]
        # `Shape` of an activation and what is computed from it alone are shape
        # arithmetic, folded at import like constants.
        if node.op_type in ("Constant", "Shape") or (inputs and all(i in known for i in inputs)):
            known.update(o for o in node.output if o)
            continue
        for o in node.output:
            # A tensor named like a PyTorch module (torchvision Swin's final
            # `permute` module vs the patch embedding's `permute` tensor) is that
            # module's output for layerlens, as a forward hook sees it: not compared.
            if o and o in floats and o not in modules:
                names.append(o)
                if o not in have:
                    m.graph.output.append(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None))
    onnx.save(m, out_path)
    return names


def run_case(arch, exporter):
    d = os.path.join(WORK, f"{arch}-{exporter}")
    os.makedirs(d, exist_ok=True)
    model = build(arch)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32))
    path = os.path.join(d, "model.onnx")
    t0 = time.time()
    try:
        note = export(model, x, path, exporter)
    except Exception as e:  # noqa: BLE001 - the exporter's failure is the result
        return f"export failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", None
    return compare(path, x.numpy(), d, t0, note)


def compare(path, x, d, t0=None, note=None):
    """Every float tensor of the ONNX file `path` on input `x` (a NumPy array),
    layerlens (the CLI, `--layers` with the tensor names) vs ONNX Runtime;
    scratch files in `d`. Returns (result line, largest relative error)."""
    t0 = t0 or time.time()
    all_path = os.path.join(d, "all.onnx")
    names = with_every_output(path, all_path)
    sess = ort.InferenceSession(all_path, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    refs = {o.name: v for o, v in zip(sess.get_outputs(), outs)}
    np.save(os.path.join(d, "x.npy"), x)
    wanted = [n for n in names if n in refs]
    got_path = os.path.join(d, "got.safetensors")
    layers_file = os.path.join(d, "layers.txt")
    with open(layers_file, "w") as f:
        f.write(",".join(wanted))
    r = subprocess.run([LAYERLENS, "extract", path, "--input", os.path.join(d, "x.npy"),
                        "--layers", ",".join(wanted), "--out", got_path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return "refused: " + r.stderr.strip().splitlines()[-1][:300], None
    from safetensors.numpy import load_file
    got = load_file(got_path)
    worst, bad = 0.0, []
    for n in wanted:
        key = n if n in got else None
        if key is None:
            bad.append(f"{n}: missing")
            continue
        a, b = got[key], refs[n]
        if a.shape != b.shape:
            bad.append(f"{n}: shape {a.shape} vs {b.shape}")
            continue
        scale = float(np.abs(b).max()) if b.size else 0.0
        err = float(np.abs(a - b).max()) if b.size else 0.0
        # The reported worst relative error leaves out tensors that are all
        # (nearly) zero, where any rounding is a huge ratio; the check below
        # still holds them to the absolute floor.
        if scale > 1e-6:
            worst = max(worst, err / scale)
        if err > 1e-5 + 1e-4 * scale:
            bad.append(f"{n}: max err {err:.3g} (scale {scale:.3g})")
    secs = time.time() - t0
    if bad:
        return f"mismatch at {len(bad)} of {len(wanted)} tensors: " + "; ".join(bad[:3]), worst
    how = f", {note}" if note else ""
    return f"ok ({len(wanted)} tensors, max rel err {worst:.2g}, {secs:.0f} s{how})", worst


def main():
    archs = sys.argv[1:] or ARCHS
    os.makedirs(WORK, exist_ok=True)
    rows = []
    for arch in archs:
        for exporter in ("torchscript", "dynamo"):
            try:
                result, _ = run_case(arch, exporter)
            except Exception as e:  # noqa: BLE001 - one case's failure must not stop the matrix
                result = f"script error: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            print(f"{arch} {exporter}: {result}", flush=True)
            rows.append((arch, exporter, result))
    print()
    print("| architecture | exporter | result |")
    print("|---|---|---|")
    for arch, exporter, result in rows:
        print(f"| {arch} | {exporter} | {result.replace('|', '/')} |")
    ok = sum(r.startswith("ok") for _, _, r in rows)
    print(f"\n{ok} of {len(rows)} cases match ONNX Runtime at every node.")
    json.dump(rows, open(os.path.join(WORK, "results.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
