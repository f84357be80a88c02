"""Writes the hand-made malformed ONNX models of fuzz/regressions/onnx_import/.

Each file reaches one place in crates/layerlens-onnx where attacker-controlled
data used to be indexed or computed with unchecked arithmetic (a panic), and
must now be refused with an error that names the offending node and its op.
File names are OPTYPE-what.onnx (or initializer-/input-what.onnx), and the
offending node is always named 'culprit' (checked by
crates/layerlens-onnx/tests/malformed.rs). The protobuf is encoded by hand
(field numbers of crates/layerlens-onnx/src/proto.rs), so no onnx package is
needed: python3 gen_malformed_onnx.py
"""
import os
import struct

FLOAT, INT64 = 1, 7


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


def vfloat(field, f):
    return key(field, 5) + struct.pack("<f", f)


def tensor(name, dims, dtype=FLOAT, floats=None, ints=None, external=None):
    t = b"".join(vint(1, d) for d in dims) + vint(2, dtype) + vbytes(8, name)
    if floats is not None:
        t += vbytes(9, struct.pack("<%df" % len(floats), *floats))
    if ints is not None:
        t += vbytes(9, struct.pack("<%dq" % len(ints), *ints))
    if external is not None:
        for k, v in external.items():
            t += vbytes(13, vbytes(1, k) + vbytes(2, v))
        t += vint(14, 1)
    return t


def attr(name, i=None, f=None, s=None, ints=None, t=None, floats=None):
    a = vbytes(1, name)
    if i is not None:
        a += vint(3, i) + vint(20, 2)
    if f is not None:
        a += vfloat(2, f) + vint(20, 1)
    if s is not None:
        a += vbytes(4, s) + vint(20, 3)
    if t is not None:
        a += vbytes(5, t) + vint(20, 4)
    if floats is not None:
        a += b"".join(vfloat(7, v) for v in floats) + vint(20, 6)
    if ints is not None:
        a += b"".join(vint(8, v) for v in ints) + vint(20, 7)
    return a


def node(op, inputs, outputs, name="culprit", attrs=()):
    n = b"".join(vbytes(1, i) for i in inputs) + b"".join(vbytes(2, o) for o in outputs)
    n += vbytes(3, name) + vbytes(4, op)
    n += b"".join(vbytes(5, a) for a in attrs)
    return n


def value_info(name, dims):
    shape = b"".join(vbytes(1, vint(1, d)) for d in dims)
    tensor_type = vint(1, FLOAT) + vbytes(2, shape)
    return vbytes(1, name) + vbytes(2, vbytes(1, tensor_type))


def model(nodes, inputs=(("x", [1, 3, 4, 4]),), outputs=("y",), inits=(), opset=13):
    g = b"".join(vbytes(1, n) for n in nodes) + vbytes(2, "malformed")
    g += b"".join(vbytes(5, t) for t in inits)
    g += b"".join(vbytes(11, value_info(n, d)) for n, d in inputs)
    g += b"".join(vbytes(12, value_info(o, [])) for o in outputs)
    return vint(1, 7) + vbytes(8, vbytes(1, "") + vint(2, opset)) + vbytes(7, g)


def const(name, dims, ints=None, floats=None):
    """A Constant node holding an int64 (ints) or float (floats) tensor."""
    dtype = INT64 if ints is not None else FLOAT
    return node("Constant", [], [name], name="const_" + name,
                attrs=[attr("value", t=tensor(name, dims, dtype, floats=floats, ints=ints))])


W = tensor("w", [2, 3, 1, 1], floats=[0.5] * 6)
I64_MAX = 2**63 - 1

CASES = {
    # Vec::insert past the end (issue 17: index 10242 > len 2).
    "Unsqueeze-axis-out-of-range": model([node("Unsqueeze", ["x"], ["y"], attrs=[attr("axes", ints=[10242])])], opset=11),
    "Unsqueeze-negative-axis-out-of-range": model([node("Unsqueeze", ["x"], ["y"], attrs=[attr("axes", ints=[-10242])])], opset=11),
    "Unsqueeze-folded-duplicate-axes": model([const("c", [2], ints=[3, 4]), const("a", [2], ints=[2, 2]),
                                              node("Unsqueeze", ["c", "a"], ["u"]),
                                              node("Reshape", ["x", "u"], ["y"], name="reshape")]),
    # Vec::remove past the end, and of an axis that is not 1.
    "Squeeze-axis-out-of-range": model([node("Squeeze", ["x"], ["y"], attrs=[attr("axes", ints=[7])])], opset=11),
    "Squeeze-non-unit-axis": model([node("Squeeze", ["x"], ["y"], attrs=[attr("axes", ints=[1])])], opset=11),
    "Squeeze-folded-scalar": model([const("c", [], ints=[1]), const("a", [1], ints=[0]),
                                    node("Squeeze", ["c", "a"], ["s"]),
                                    node("Reshape", ["x", "s"], ["y"], name="reshape")]),
    # [0] of an empty constant: Pad's constant_value, Clip's min.
    "Pad-empty-constant-value": model([node("Pad", ["x", "p", "v"], ["y"])],
                                      inits=[tensor("p", [8], INT64, ints=[0] * 8), tensor("v", [0], floats=[])], opset=11),
    "Clip-empty-min": model([node("Clip", ["x", "lo"], ["y"])], inits=[tensor("lo", [0], floats=[])], opset=11),
    # v[0] of an empty attribute list.
    "ConvTranspose-empty-strides": model([node("ConvTranspose", ["x", "wt"], ["y"], attrs=[attr("strides", ints=[])])],
                                         inits=[tensor("wt", [3, 2, 1, 1], floats=[0.5] * 6)]),
    # i64 arithmetic of folded shape constants: overflow, % 0 of an empty operand
    # (i64::MIN is the folder's batch-size marker, so MIN / -1 cannot occur).
    "Add-folded-overflow": model([const("a", [1], ints=[I64_MAX]), const("b", [1], ints=[1]),
                                  node("Add", ["a", "b"], ["s"]), node("Reshape", ["x", "s"], ["y"], name="reshape")]),
    "Sub-folded-overflow": model([const("a", [1], ints=[-I64_MAX]), const("b", [1], ints=[2]),
                                  node("Sub", ["a", "b"], ["s"]), node("Reshape", ["x", "s"], ["y"], name="reshape")]),
    "Mul-folded-empty-operand": model([const("a", [0], ints=[]), const("b", [1], ints=[2]),
                                       node("Mul", ["a", "b"], ["s"]), node("Reshape", ["x", "s"], ["y"], name="reshape")]),
    # inputs[1] of a one-input fold.
    "Gather-folded-one-input": model([const("a", [2], ints=[1, 2]), node("Gather", ["a"], ["s"]),
                                      node("Reshape", ["x", "s"], ["y"], name="reshape")]),
    # usize underflow of ceil_mode's remainder (window larger than the input).
    "MaxPool-ceil-window-larger-than-input": model([node("MaxPool", ["x"], ["y"], attrs=[attr("kernel_shape", ints=[9, 9]),
                                                                                            attr("ceil_mode", i=1)])]),
    # `% h` with h = 0 (a flat input), and negative sizes cast to usize.
    "Resize-flat-input": model([node("Resize", ["x", "", "", "sz"], ["y"], attrs=[attr("coordinate_transformation_mode", s="asymmetric")])],
                               inputs=(("x", [1, 12]),), inits=[tensor("sz", [4], INT64, ints=[1, 1, 4, 4])]),
    "Resize-negative-sizes": model([node("Resize", ["x", "", "", "sz"], ["y"])],
                                   inits=[tensor("sz", [4], INT64, ints=[1, 3, -1, -1])]),
    "Resize-infinite-scale": model([node("Resize", ["x", "", "sc"], ["y"])],
                                   inits=[tensor("sc", [4], floats=[1.0, 1.0, float("inf"), 2.0])]),
    # Geometry products that overflow usize.
    "Conv-dilation-overflows": model([node("Conv", ["x", "w"], ["y"], attrs=[attr("kernel_shape", ints=[1, 1]),
                                                                           attr("dilations", ints=[I64_MAX, I64_MAX])])],
                                     inits=[tensor("w", [2, 3, 4, 4], floats=[0.5] * 96)]),
    "Pad-pads-overflow": model([node("Pad", ["x", "p"], ["y"])],
                               inits=[tensor("p", [8], INT64, ints=[0, 0, 2**62, 2**62, 0, 0, 2**62, 2**62])], opset=11),
    "Reshape-target-overflows": model([node("Reshape", ["x", "t"], ["y"])],
                                      inits=[tensor("t", [4], INT64, ints=[1, 2**40, 2**40, 2**40])]),
    # Dims whose product overflows; external data outside the model's directory.
    "initializer-dims-overflow": model([node("Conv", ["x", "w"], ["y"])],
                                       inits=[tensor("w", [2**32, 2**32, 2**32, 1])]),
    "initializer-external-data-escapes": model([node("Conv", ["x", "w"], ["y"])],
                                               inits=[tensor("w", [2, 3, 1, 1], external={"location": "../../../etc/passwd"})]),
    "initializer-external-data-absolute": model([node("Conv", ["x", "w"], ["y"])],
                                                inits=[tensor("w", [2, 3, 1, 1], external={"location": "/etc/passwd"})]),
    "input-shape-too-large": model([node("Relu", ["x"], ["y"])], inputs=(("x", [1, 2**40, 2**40, 2**40]),)),
}

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onnx_import")
os.makedirs(here, exist_ok=True)
for name, data in CASES.items():
    with open(os.path.join(here, name + ".onnx"), "wb") as f:
        f.write(data)
print(len(CASES), "files in", here)
