#!/usr/bin/env python3
"""Writes the embedded Fashion-MNIST subset: the first N images and labels of the
real train and test files, in the same idx format, gzipped.

Source: Debian package dataset-fashion-mnist (scripts/install-fashion-mnist.sh),
files under /usr/share/datasets/fashion-mnist. Fashion-MNIST is MIT-licensed
(Zalando Research). Usage: python3 scripts/make-fashion-subset.py
"""
import gzip
import struct
from pathlib import Path

SRC = Path("/usr/share/datasets/fashion-mnist")
DST = Path(__file__).resolve().parent.parent / "crates/layerlens-train/assets/fashion-mnist"
COUNTS = {"train": 2000, "t10k": 500}


def subset(kind: str, n: int) -> None:
    with gzip.open(SRC / f"{kind}-images-idx3-ubyte.gz", "rb") as f:
        magic, total, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051 and total >= n
        pixels = f.read(n * rows * cols)
    with gzip.open(SRC / f"{kind}-labels-idx1-ubyte.gz", "rb") as f:
        magic, total = struct.unpack(">II", f.read(8))
        assert magic == 2049 and total >= n
        labels = f.read(n)
    # mtime=0 keeps the output byte-identical between runs.
    with gzip.GzipFile(DST / f"{kind}-images-idx3-ubyte.gz", "wb", mtime=0) as f:
        f.write(struct.pack(">IIII", 2051, n, rows, cols) + pixels)
    with gzip.GzipFile(DST / f"{kind}-labels-idx1-ubyte.gz", "wb", mtime=0) as f:
        f.write(struct.pack(">II", 2049, n) + labels)


DST.mkdir(parents=True, exist_ok=True)
for kind, n in COUNTS.items():
    subset(kind, n)
print(f"wrote {DST}")
