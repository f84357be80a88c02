"""PyTorch and ONNX Runtime side of the inference/training benchmark
(crates/layerlens/benches/harness.rs; run both through scripts/bench.sh).

    python scripts/bench/reference.py prepare DIR   # weights + ONNX export into DIR
    python scripts/bench/reference.py run DIR       # time every case, print JSON lines

`prepare` writes DIR/resnet18.safetensors (torchvision names, seeded init with
non-trivial batch-norm statistics) and DIR/resnet18.onnx (opset 17), so that
layerlens, PyTorch and ONNX Runtime run the same weights; and DIR/resnet50.onnx,
DIR/mobilenet_v2.onnx (same seeding, opset 17, dynamic batch), which layerlens
runs through its ONNX importer. `run` prints one JSON
object per case and framework: {"case", "framework", "median_ms", "min_ms",
"peak_rss_mb"}; peak RSS is the process's high-water mark while the case ran
(reset through /proc/self/clear_refs before each case). Threads: $THREADS
(default: all cores) for PyTorch intra-op and ONNX Runtime intra-op, 1 inter-op.
"""
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

THREADS = int(os.environ.get("THREADS", os.cpu_count()))
REPS = int(os.environ.get("REPS", "20"))
torch.set_num_threads(THREADS)
torch.set_num_interop_threads(1)
TAPS = ["layer1", "layer2", "layer3", "layer4"]
# Batch-16 cases, run by layerlens through its ONNX importer.
BIG = {"resnet50": torchvision.models.resnet50, "mobilenet_v2": torchvision.models.mobilenet_v2}
BIG_CASE = {"resnet50": "resnet50_onnx_b16", "mobilenet_v2": "mobilenetv2_onnx_b16"}


def resnet18():
    return seeded(torchvision.models.resnet18)


def seeded(ctor):
    """A torchvision model with seeded weights and non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    m = ctor(weights=None)
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
    return m.eval()


def seed_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1600, 10),
    )


def prepare(out):
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    m = resnet18()
    sd = {k: v.contiguous() for k, v in m.state_dict().items() if "num_batches" not in k}
    save_file(sd, os.path.join(out, "resnet18.safetensors"))
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(
        m, (x,), os.path.join(out, "resnet18.onnx"), opset_version=17,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False,
    )
    for name, ctor in BIG.items():
        torch.onnx.export(
            seeded(ctor), (x,), os.path.join(out, f"{name}.onnx"), opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False,
        )
    print(f"wrote {out}/resnet18.safetensors, resnet18.onnx, "
          f"{', '.join(n + '.onnx' for n in BIG)} (torch {torch.__version__})")


def peak_reset():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(case, framework, fn, reps=REPS, warmup=3):
    for _ in range(warmup):
        fn()
    peak_reset()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    print(json.dumps({
        "case": case, "framework": framework, "median_ms": round(times[len(times) // 2], 3),
        "min_ms": round(times[0], 3), "peak_rss_mb": round(peak_mb(), 1),
    }), flush=True)


def torch_cases():
    m = resnet18()
    x1, x8 = torch.randn(1, 3, 224, 224), torch.randn(8, 3, 224, 224)
    with torch.inference_mode():
        timed("resnet18_full_b1", "pytorch", lambda: m(x1))
        timed("resnet18_full_b8", "pytorch", lambda: m(x8), reps=max(5, REPS // 2))
        # What a PyTorch user does to get layer2: a forward hook; the whole net still runs.
        got = {}
        h = m.layer2.register_forward_hook(lambda mod, i, o: got.__setitem__("layer2", o))
        timed("resnet18_layer2_b1", "pytorch", lambda: m(x1))
        h.remove()
        hs = [getattr(m, t).register_forward_hook(lambda mod, i, o, t=t: got.__setitem__(t, o))
              for t in TAPS]
        timed("resnet18_taps4_b1", "pytorch", lambda: m(x1))
        for h in hs:
            h.remove()
        x16 = torch.randn(16, 3, 224, 224)
        for name, ctor in BIG.items():
            big = seeded(ctor)
            timed(BIG_CASE[name], "pytorch", lambda: big(x16), reps=max(5, REPS // 4))
    # Training: one step (forward, cross-entropy, backward, Adam), as layerlens' harness.
    def train_step(model, x, y, opt):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        loss.item()
    s = seed_cnn()
    xs, ys = torch.rand(64, 1, 28, 28), torch.arange(64) % 10
    with torch.inference_mode():
        timed("seed_cnn_forward_b64", "pytorch", lambda: s(xs))
    opt = torch.optim.Adam(s.parameters(), lr=1e-3)
    timed("seed_cnn_train_b64", "pytorch", lambda: train_step(s, xs, ys, opt))
    r = resnet18().train()
    opt = torch.optim.Adam(r.parameters(), lr=1e-3)
    y8 = torch.arange(8) % 1000
    timed("resnet18_train_b8", "pytorch", lambda: train_step(r, x8, y8, opt), reps=max(5, REPS // 4))


def ort_cases(d):
    import onnx
    import onnxruntime as ort
    from onnx import utils as onnx_utils

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    path = os.path.join(d, "resnet18.onnx")
    model = onnx.load(path)
    # The block outputs: the last Relu of each stage.
    tap_names = {}
    for node in model.graph.node:
        for t in TAPS:
            if node.name.startswith(f"/{t}/") and node.op_type == "Relu":
                tap_names[t] = node.output[0]
    full = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x1 = torch.randn(1, 3, 224, 224).numpy()
    x8 = torch.randn(8, 3, 224, 224).numpy()
    timed("resnet18_full_b1", "onnxruntime", lambda: full.run(None, {"input": x1}))
    timed("resnet18_full_b8", "onnxruntime", lambda: full.run(None, {"input": x8}), reps=max(5, REPS // 2))
    # ONNX Runtime computes only what the requested outputs need: cut the graph at layer2.
    cut = os.path.join(d, "resnet18_layer2.onnx")
    onnx_utils.extract_model(path, cut, ["input"], [tap_names["layer2"]])
    l2 = ort.InferenceSession(cut, so, providers=["CPUExecutionProvider"])
    timed("resnet18_layer2_b1", "onnxruntime", lambda: l2.run(None, {"input": x1}))
    taps = os.path.join(d, "resnet18_taps4.onnx")
    onnx_utils.extract_model(path, taps, ["input"], [tap_names[t] for t in TAPS])
    t4 = ort.InferenceSession(taps, so, providers=["CPUExecutionProvider"])
    timed("resnet18_taps4_b1", "onnxruntime", lambda: t4.run(None, {"input": x1}))
    x16 = torch.randn(16, 3, 224, 224).numpy()
    for name in BIG:
        p = os.path.join(d, f"{name}.onnx")
        if os.path.exists(p):
            big = ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
            timed(BIG_CASE[name], "onnxruntime", lambda: big.run(None, {"input": x16}),
                  reps=max(5, REPS // 4))
    print(json.dumps({"versions": {"torch": torch.__version__, "onnxruntime": ort.__version__,
                                   "threads": THREADS}}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("prepare", "run"):
        sys.exit(__doc__)
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2])
    else:
        torch_cases()
        ort_cases(sys.argv[2])
