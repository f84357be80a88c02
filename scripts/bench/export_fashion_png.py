#!/usr/bin/env python3
"""Writes the first N Fashion-MNIST test images as 28x28 grayscale PNG files,
one sub-folder per class, for `layerlens extract` over a directory.

Standard library only (gzip idx reader, zlib PNG writer), so the benchmark
needs no Python packages.

    python3 scripts/bench/export_fashion_png.py OUT_DIR N [IDX_DIR]

IDX_DIR defaults to /usr/share/datasets/fashion-mnist (Debian package
dataset-fashion-mnist, scripts/install-fashion-mnist.sh). N up to 10 000 comes
from the test set, beyond that the training set follows.
"""
import gzip
import os
import struct
import sys
import zlib

CLASSES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = magic & 0xFF
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return shape, data[4 + 4 * dims:]


def png_gray(w, h, pixels):
    def chunk(kind, body):
        c = struct.pack(">I", len(body)) + kind + body
        return c + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + pixels[y * w:(y + 1) * w] for y in range(h))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    src = sys.argv[3] if len(sys.argv) > 3 else "/usr/share/datasets/fashion-mnist"
    written = 0
    for split in ("t10k", "train"):
        (count, h, w), images = idx(os.path.join(src, f"{split}-images-idx3-ubyte.gz"))
        _, labels = idx(os.path.join(src, f"{split}-labels-idx1-ubyte.gz"))
        for i in range(count):
            if written == n:
                return
            d = os.path.join(out, CLASSES[labels[i]])
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"{split}-{i:05}.png"), "wb") as f:
                f.write(png_gray(w, h, images[i * h * w:(i + 1) * h * w]))
            written += 1


if __name__ == "__main__":
    main()
