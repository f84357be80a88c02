"""Seeds and regression files for the fuzz targets npy and onnx_external_data.

    python3 fuzz/gen_seeds.py corpus        # valid files -> fuzz/corpus/<target>/ (git-ignored)
    python3 fuzz/gen_seeds.py regressions   # malformed files -> fuzz/regressions/<target>/ (committed)

No numpy and no onnx package needed: .npy headers and the ONNX protobuf are
written by hand (field numbers of crates/layerlens-onnx/src/proto.rs). The
ONNX models reference `weights.bin`, the 4096-byte data file (1024 float32
values i / 1024) that fuzz/entries.rs writes beside them; every regression
must be refused with a one-line error (crates/layerlens/tests/fuzz_regressions.rs).
"""
import os
import struct
import sys

FLOAT, INT64 = 1, 7
DATA_LEN = 4096  # entries::EXTERNAL_DATA_LEN


def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def key(field, wire):
    return varint(field << 3 | wire)


def vint(field, n):
    return key(field, 0) + varint(n)


def vbytes(field, b):
    if isinstance(b, str):
        b = b.encode()
    return key(field, 2) + varint(len(b)) + b


def ext_tensor(name, dims, location="weights.bin", offset=None, length=None, extra=()):
    """A float TensorProto whose data lives in an external file (no location if None)."""
    t = b"".join(vint(1, d) for d in dims) + vint(2, FLOAT) + vbytes(8, name)
    entries = [("location", location)] if location is not None else []
    if offset is not None:
        entries.append(("offset", str(offset)))
    if length is not None:
        entries.append(("length", str(length)))
    entries.extend(extra)
    for k, v in entries:
        t += vbytes(13, vbytes(1, k) + vbytes(2, v))
    return t + vint(14, 1)


def attr_ints(name, ints):
    return vbytes(1, name) + b"".join(vint(8, v) for v in ints) + vint(20, 7)


def node(op, inputs, outputs, name, attrs=()):
    n = b"".join(vbytes(1, i) for i in inputs) + b"".join(vbytes(2, o) for o in outputs)
    n += vbytes(3, name) + vbytes(4, op)
    return n + b"".join(vbytes(5, a) for a in attrs)


def value_info(name, dims):
    shape = b"".join(vbytes(1, vint(1, d)) for d in dims)
    return vbytes(1, name) + vbytes(2, vbytes(1, vint(1, FLOAT) + vbytes(2, shape)))


def model(nodes, inits, x_dims=(1, 3, 8, 8), output="y", opset=13):
    g = b"".join(vbytes(1, n) for n in nodes) + vbytes(2, "external")
    g += b"".join(vbytes(5, t) for t in inits)
    g += vbytes(11, value_info("x", x_dims)) + vbytes(12, value_info(output, []))
    return vint(1, 7) + vbytes(8, vbytes(1, "") + vint(2, opset)) + vbytes(7, g)


def conv(w, b=None, out="y"):
    inputs = ["x", "w"] + (["b"] if b is not None else [])
    return node("Conv", inputs, [out], "conv", [attr_ints("pads", [1, 1, 1, 1])])


def npy(descr, shape, data, fortran=False, version=1):
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (
        descr, "True" if fortran else "False",
        "".join("%d, " % d for d in shape) if len(shape) != 1 else "%d," % shape[0])
    lenfmt = "<H" if version == 1 else "<I"
    pre = 6 + 2 + struct.calcsize(lenfmt)
    header += " " * ((64 - (pre + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(lenfmt, len(header)) + header.encode() + data


def raw_npy(header, data):
    """A version 1.0 file with `header` (bytes) as it is, padded."""
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def f32s(n, scale=0.01):
    return struct.pack("<%df" % n, *[(i % 97) * scale for i in range(n)])


def corpus():
    w3 = ext_tensor("w", [4, 3, 3, 3], offset=0, length=4 * 108)
    b3 = ext_tensor("b", [4], offset=512, length=16)
    return {
        "onnx_external_data": {
            "conv-weight-and-bias.onnx": model([conv("w", "b")], [w3, b3]),
            # No length: the rest of the file from the offset.
            "conv-no-length.onnx": model([conv("w")], [ext_tensor("w", [4, 3, 3, 3], offset=DATA_LEN - 432)]),
            "conv-relu-pool.onnx": model(
                [conv("w", "b", out="c"), node("Relu", ["c"], ["r"], "relu"),
                 node("MaxPool", ["r"], ["y"], "pool", [attr_ints("kernel_shape", [2, 2]), attr_ints("strides", [2, 2])])],
                [w3, b3]),
            "gemm.onnx": model(
                [node("Flatten", ["x"], ["f"], "flatten"), node("Gemm", ["f", "g", "gb"], ["y"], "gemm")],
                [ext_tensor("g", [192, 4], offset=1024, length=192 * 16), ext_tensor("gb", [4], offset=0, length=16)],
                x_dims=(1, 3, 8, 8)),
        },
        "npy": {
            "f4-nchw.npy": npy("<f4", (2, 1, 28, 28), f32s(2 * 784)),
            "f8-fortran.npy": npy("<f8", (3, 4), struct.pack("<12d", *range(12)), fortran=True),
            "u1.npy": npy("|u1", (1, 3, 4, 4), bytes(range(48))),
            "f2-v2.npy": npy("<f2", (2, 2), struct.pack("<4H", 0x3C00, 0xC000, 0x7C00, 1), version=2),
            "i8-be.npy": npy(">i8", (3,), struct.pack(">3q", -1, 0, 7)),
            "scalar.npy": npy("<f4", (), struct.pack("<f", 1.5)),
        },
    }


def regressions():
    w = lambda **kw: model([conv("w")], [ext_tensor("w", [2, 3, 1, 1], **kw)])
    good = npy("<f4", (2, 3), f32s(6))
    return {
        "onnx_external_data": {
            "offset-past-the-end.onnx": w(offset=DATA_LEN + 8, length=24),
            "length-past-the-end.onnx": w(offset=DATA_LEN - 8, length=24),
            "offset-plus-length-overflows.onnx": w(offset=2**64 - 8, length=24),
            "length-disagrees-with-dims.onnx": w(offset=0, length=20),
            "offset-not-a-number.onnx": w(offset="12abc", length=24),
            "offset-negative.onnx": w(offset=-24, length=24),
            "location-missing-file.onnx": w(location="missing.bin", offset=0, length=24),
            "location-current-dir.onnx": w(location=".", offset=0, length=24),
            "location-parent.onnx": w(location="../onnx-external/weights.bin", offset=0, length=24),
            "location-absolute.onnx": w(location="/proc/self/environ", offset=0, length=24),
            "location-empty.onnx": w(location="", offset=0, length=24),
            "no-location.onnx": w(location=None, offset=0, length=24),
            "dims-overflow.onnx": model([conv("w")], [ext_tensor("w", [2**32, 2**32, 2**32, 1], offset=0)]),
        },
        "npy": {
            "no-magic.npy": b"NUMPY" + good[6:],
            "version-9.npy": good[:6] + b"\x09\x00" + good[8:],
            "header-past-the-end.npy": good[:8] + b"\xff\xff" + good[10:],
            "data-short.npy": good[:-1],
            "data-long.npy": good + b"\x00\x00\x00\x00",
            "shape-overflows.npy": npy("<f4", (2**32, 2**32, 2**32), b"\x00" * 4),
            "shape-huge.npy": npy("<f4", (2**40,), b"\x00" * 4),
            "shape-empty.npy": npy("<f4", (0, 3), b""),
            "dtype-object.npy": npy("|O", (1,), b"\x00" * 8),
            "dtype-complex.npy": npy("<c8", (1,), b"\x00" * 8),
            "dtype-structured.npy": raw_npy(b"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", b"\x00" * 4),
            "header-not-a-dict.npy": raw_npy(b"('descr', '<f4', 'fortran_order', False, 'shape', (1,))", b"\x00" * 4),
            "header-extra-key.npy": raw_npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", b"\x00" * 4),
            "header-code.npy": raw_npy(b"{'descr': __import__('os').system('true'), 'fortran_order': False, 'shape': (1,)}", b"\x00" * 4),
            "header-non-ascii.npy": raw_npy(b"{'d\xe9scr': '<f4', 'fortran_order': False, 'shape': (1,), }", b"\x00" * 4),
            "rank-17.npy": npy("<f4", (1,) * 17, b"\x00" * 4),
        },
    }


def write(tree, root):
    n = 0
    for target, files in tree.items():
        d = os.path.join(root, target)
        os.makedirs(d, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            n += 1
    print(n, "files under", root)


here = os.path.dirname(os.path.abspath(__file__))
what = sys.argv[1] if len(sys.argv) > 1 else ""
if what == "corpus":
    write(corpus(), os.path.join(here, "corpus"))
elif what == "regressions":
    write(regressions(), os.path.join(here, "regressions"))
else:
    sys.exit("usage: gen_seeds.py corpus|regressions")
