"""The ONNX writer's opset-13 spelling of the float transformer ops (`onnx.LayerNormalization`, `onnx.Gelu`,
`onnx.Gather`, `onnx.Slice`), as PyTorch's exporter spells them at opset 13 and qirc's importer reads them back:

    LayerNormalization   ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div -> Mul(Scale) [-> Add(B)]
    Gelu ('none')        Div(sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)
    Gelu ('tanh')        x * 0.5 * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    Gather               Gather(x, constant indices)
    Slice                Slice(x, starts, ends, axes, steps) with constant inputs

onnxruntime computes the LayerNorm and GELU chains within float32 rounding of the fused ops (the mean of squared
deviations instead of E[x^2] - mean^2; MLAS' erf), not bit for bit.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

F32 = np.float32

OPS = ("LayerNormalization", "Gelu", "Gather", "Slice")


def emit(writer, op, op_type: str) -> None:
    """Write `op` (an onnx.* op named in OPS) with the writer's helpers; records the result's tensor name."""
    x = writer.tensor_of[id(op.operands[0])]
    result = op.results[0]
    shape = list(result.type.shape)
    out = writer.result_name(result, op)
    floats = TensorProto.FLOAT
    loc = op.loc or op_type

    def const(value, dtype, name):
        return writer.const(np.asarray(value, dtype), dtype, f"{loc}/{name}")

    if op_type == "Gather":
        indices = [int(i) for i in op.attr("indices")]
        index = np.asarray(indices[0] if op.attr("scalar") else indices, np.int64)
        writer.node("Gather", [x, const(index, "int64", "indices")], op, "", out_name=out, shape=shape, elem=floats,
                    axis=int(op.attr("axis")))
    elif op_type == "Slice":
        params = [const(op.attr(n), "int64", n) for n in ("starts", "ends", "axes", "steps")]
        writer.node("Slice", [x] + params, op, "", out_name=out, shape=shape, elem=floats)
    elif op_type == "LayerNormalization":
        rank = len(shape)
        axis = int(op.attr("axis"))
        axis = axis + rank if axis < 0 else axis
        axes = list(range(axis, rank))
        stat = [1 if i in axes else d for i, d in enumerate(shape)]
        mean = writer.node("ReduceMean", [x], op, "/ReduceMean", shape=stat, elem=floats, axes=axes, keepdims=1)
        dev = writer.node("Sub", [x, mean], op, "/Sub", shape=shape, elem=floats)
        sq = writer.node("Pow", [dev, const(2.0, "float32", "two")], op, "/Pow", shape=shape, elem=floats)
        var = writer.node("ReduceMean", [sq], op, "/ReduceMean_1", shape=stat, elem=floats, axes=axes, keepdims=1)
        var_eps = writer.node("Add", [var, const(op.attr("epsilon"), "float32", "epsilon")], op, "/Add",
                              shape=stat, elem=floats)
        std = writer.node("Sqrt", [var_eps], op, "/Sqrt", shape=stat, elem=floats)
        has_bias = len(op.operands) > 2
        normed = writer.node("Div", [dev, std], op, "/Div", shape=shape, elem=floats)
        scale = writer.tensor_of[id(op.operands[1])]
        scaled = writer.node("Mul", [normed, scale], op, "/Mul", out_name=None if has_bias else out, shape=shape,
                             elem=floats)
        if has_bias:
            writer.node("Add", [scaled, writer.tensor_of[id(op.operands[2])]], op, "/Add_1", out_name=out,
                        shape=shape, elem=floats)
    elif op_type == "Gelu" and op.attr("approximate") == "tanh":
        cube = writer.node("Mul", [x, x], op, "/Mul_sq", shape=shape, elem=floats)
        cube = writer.node("Mul", [x, cube], op, "/Mul_cube", shape=shape, elem=floats)
        inner = writer.node("Mul", [cube, const(0.044715, "float32", "c")], op, "/Mul_c", shape=shape, elem=floats)
        inner = writer.node("Add", [x, inner], op, "/Add_x", shape=shape, elem=floats)
        inner = writer.node("Mul", [inner, const(math.sqrt(2 / math.pi), "float32", "k")], op, "/Mul_k",
                            shape=shape, elem=floats)
        t = writer.node("Tanh", [inner], op, "/Tanh", shape=shape, elem=floats)
        t = writer.node("Add", [t, const(1.0, "float32", "one")], op, "/Add", shape=shape, elem=floats)
        y = writer.node("Mul", [x, t], op, "/Mul", shape=shape, elem=floats)
        writer.node("Mul", [y, const(0.5, "float32", "half")], op, "/Mul_1", out_name=out, shape=shape, elem=floats)
    else:  # Gelu, approximate = "none"
        d = writer.node("Div", [x, const(math.sqrt(2.0), "float32", "sqrt2")], op, "/Div", shape=shape, elem=floats)
        e = writer.node("Erf", [d], op, "/Erf", shape=shape, elem=floats)
        a = writer.node("Add", [e, const(1.0, "float32", "one")], op, "/Add", shape=shape, elem=floats)
        m = writer.node("Mul", [x, a], op, "/Mul", shape=shape, elem=floats)
        writer.node("Mul", [m, const(0.5, "float32", "half")], op, "/Mul_1", out_name=out, shape=shape, elem=floats)
    writer.tensor_of[id(result)] = out
