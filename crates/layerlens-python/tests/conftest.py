"""Shared fixtures: the CLI binary, real Fashion-MNIST images as PNG files
(from the repository's embedded test set), and a saved seed-CNN model that the
CLI and the Python module both load, so their outputs can be compared."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

import layerlens

ROOT = Path(__file__).resolve().parents[3]
FASHION = ROOT / "crates/layerlens-train/assets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def cli_path() -> str:
    return os.environ.get("LAYERLENS_BIN", str(ROOT / "target/release/layerlens"))


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    """Runs the layerlens CLI; a failure shows its stderr."""
    p = subprocess.run([cli_path(), *map(str, args)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, f"layerlens {' '.join(map(str, args))}: {p.stderr}"
    return p


def fashion_images(n: int) -> np.ndarray:
    """The first ``n`` embedded Fashion-MNIST test images, uint8 (n, 28, 28)."""
    with gzip.open(FASHION) as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051 and n <= count
        return np.frombuffer(f.read(n * rows * cols), np.uint8).reshape(n, rows, cols)


def write_png(path: Path, gray: np.ndarray) -> None:
    """An 8-bit grayscale PNG (no dependency beyond zlib)."""
    h, w = gray.shape
    raw = b"".join(b"\x00" + gray[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(png)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """64 real Fashion-MNIST PNGs in two sub-folders."""
    d = tmp_path_factory.mktemp("images")
    for i, img in enumerate(fashion_images(64)):
        sub = d / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        write_png(sub / f"{i:05}.png", img)
    return d


@pytest.fixture(scope="session")
def image_paths(image_dir) -> list[Path]:
    return sorted(image_dir.rglob("*.png"))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The seed CNN saved once: the CLI and Python load the very same weights."""
    d = tmp_path_factory.mktemp("model") / "seed"
    layerlens.Model.load("zoo:seed_cnn").save(d)
    return d
