"""Python binding overhead and Ray Data throughput, measured side by side with
the CLI in one run (scripts/bench/python.sh runs it inside a loopback-only
network namespace). Prints a markdown table; medians of REPEATS runs.

1. The same work through the CLI and through Python: ResNet-18 (zoo, seeded
   random weights, saved once), 128 inputs of 3x224x224 from a .npy, layer4
   with the spatial mean, batch 32, 2 threads; whole process (start, load,
   compute, write an .npz) and, for Python, the extract call alone.
2. A Ray Data pipeline over 256 PNG files (Fashion-MNIST, resized to 224 by the
   preprocessing): read_binary_files -> map_batches(Extractor) -> write_parquet,
   with 1 and 2 actors of one CPU each; images/s of the whole pipeline.
"""

from __future__ import annotations

import gzip
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

import layerlens
import layerlens.ray

ROOT = Path(__file__).resolve().parents[2]
CLI = os.environ.get("LAYERLENS_BIN", str(ROOT / "target/release/layerlens"))
REPEATS = int(os.environ.get("REPEATS", "5"))
PY = sys.executable


def median_time(fn, repeats=REPEATS):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def png(path, gray):
    h, w = gray.shape
    raw = b"".join(b"\x00" + gray[r].tobytes() for r in range(h))
    chunk = lambda k, d: struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main():
    work = Path(tempfile.mkdtemp(prefix="layerlens-pybench-"))
    model_dir = work / "resnet18"
    layerlens.Model.load("zoo:resnet18").save(model_dir)
    x = np.random.default_rng(0).random((128, 3, 224, 224), dtype=np.float32)
    np.save(work / "x.npy", x)
    env = dict(os.environ, RAYON_NUM_THREADS="2", LAYERLENS_NUM_THREADS="2")

    cli = lambda: subprocess.run([CLI, "extract", model_dir, "--input", work / "x.npy", "--layers", "layer4",
                                  "--apply", "mean", "--batch", "32", "--out", work / "cli.npz"],
                                 check=True, env=env, capture_output=True)
    script = (f"import numpy as np, layerlens; m = layerlens.Model.load({str(model_dir)!r}, threads=2); "
              f"x = np.load({str(work / 'x.npy')!r}); "
              f"a = m.extract(x, 'layer4', apply='mean', batch_size=32); "
              f"np.savez({str(work / 'py.npz')!r}, **a)")
    py = lambda: subprocess.run([PY, "-c", script], check=True, env=env, capture_output=True)
    model = layerlens.Model.load(str(model_dir), threads=2)
    call = lambda: model.extract(x, "layer4", apply="mean", batch_size=32)
    call()  # warm: plan cached, pages touched
    # Interleaved, so that the machine's drift hits both alike.
    t_cli, t_py, t_call = [], [], []
    for _ in range(REPEATS):
        t_cli.append(median_time(cli, 1))
        t_py.append(median_time(py, 1))
        t_call.append(median_time(call, 1))
    c, p, k = map(statistics.median, (t_cli, t_py, t_call))
    assert np.allclose(np.load(work / "cli.npz")["layer4"], np.load(work / "py.npz")["layer4"], atol=1e-5)
    print("| ResNet-18, 128 x 3x224x224, layer4 + mean, batch 32, 2 threads | median s | vs CLI |")
    print("|---|---:|---:|")
    print(f"| CLI `layerlens extract` (whole process) | {c:.3f} | 1.00 |")
    print(f"| Python script: import, load, extract, np.savez (whole process) | {p:.3f} | {p / c:.3f} |")
    print(f"| Python `model.extract(...)` call alone (model loaded) | {k:.3f} | {k / c:.3f} |")
    imports = median_time(lambda: subprocess.run([PY, "-c", "import numpy, layerlens"], check=True, env=env))
    print(f"| of which Python start-up and imports (`python -c 'import numpy, layerlens'`) | {imports:.3f} | {imports / c:.3f} |")
    print()

    # The GIL is released: two Python threads, each on its own 1-thread model,
    # against the same two calls one after the other.
    import threading

    singles = [layerlens.Model.load(str(model_dir), threads=1) for _ in range(2)]
    half = x[:32]
    one = lambda m: m.extract(half, "layer4", apply="mean")
    for m in singles:
        one(m)
    serial = median_time(lambda: [one(m) for m in singles])

    def parallel():
        ts = [threading.Thread(target=one, args=(m,)) for m in singles]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    both = median_time(parallel)
    print("| two `extract` calls (32 images each, models of 1 thread) | median s | vs one after the other |")
    print("|---|---:|---:|")
    print(f"| one after the other, one Python thread | {serial:.3f} | 1.00 |")
    print(f"| at once, two Python threads | {both:.3f} | {both / serial:.2f} |")
    print()

    # Ray Data throughput.
    import ray

    images = work / "png"
    images.mkdir()
    with gzip.open(ROOT / "crates/layerlens-train/assets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
        f.read(16)
        raw = np.frombuffer(f.read(256 * 784), np.uint8).reshape(256, 28, 28)
    for i, img in enumerate(raw):
        png(images / f"{i:05}.png", img)
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print("| Ray Data, 256 PNGs -> ResNet-18 layer4 + mean -> Parquet | median s | images/s |")
    print("|---|---:|---:|")
    for actors in (1, 2):
        def pipeline():
            out = work / f"ray-{actors}-{time.monotonic_ns()}"
            ds = ray.data.read_binary_files(str(images), include_paths=True)
            ds.map_batches(layerlens.ray.Extractor, batch_size=32, concurrency=actors, num_cpus=1,
                           fn_constructor_kwargs=dict(model=str(model_dir), layers=["layer4"], apply="mean",
                                                      preprocess="imagenet")).write_parquet(str(out))
        pipeline()  # warm: workers started, imports cached
        t = median_time(pipeline, max(3, REPEATS // 2))
        print(f"| {actors} actor(s) of 1 CPU | {t:.2f} | {256 / t:.0f} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
