"""Builders of quant-level IR (the form the ONNX frontend produces), for tests and benchmarks of the lowering.

    b = QuantBuilder("net")
    x = b.input("x", (1, 3, 8, 8), scale=1 / 128)                       # qir.input -> qcast -> dcast
    y = b.conv(x, rng.integers(-127, 128, (4, 3, 3, 3)), w_scale=0.01, bias=..., pads=[1, 1, 1, 1])
    y = b.quant(y, scale=1 / 255, storage=u8)                            # qcast -> dcast
    b.output("y", y)                                                     # qir.output
    module = b.module

Every builder returns the float value (the dcast result after a quantizer), like the frontend's graphs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..qir.ir import Module, Operation, Value, const_op, input_op, output_op
from ..qir.types import ScalarType, TensorType, UniformQuantType, f32, i8, i32


class QuantBuilder:
    """Builds quant-level modules op by op; result shapes come from the op declarations' shape rules."""

    def __init__(self, name: str = "test"):
        self.module = Module(name)
        self._n = 0

    def _loc(self, kind: str) -> str:
        self._n += 1
        return f"/{kind}_{self._n}"

    def op(self, name: str, operands: Sequence[Value], attrs: Optional[dict] = None, loc: str = "",
           element=f32) -> Value:
        """Create `name(operands)` with its result shape inferred from the declaration."""
        op = Operation(name, list(operands), [TensorType((), element)], attrs or {}, loc or self._loc(name))
        shape = op.opdef.shape(op)[0]
        op.results[0].type = TensorType(shape, element)
        return self.module.add(op).results[0]

    # ----- quantizers -------------------------------------------------------------------------------------------
    def qtype(self, scale, zero_point=0, storage: ScalarType = i8, axis=None, storage_min=None,
              storage_max=None) -> UniformQuantType:
        if axis is None:
            return UniformQuantType.per_tensor(storage, float(scale), int(zero_point), storage_min, storage_max)
        scales = np.asarray(scale, dtype=np.float64).reshape(-1)
        zero_points = np.broadcast_to(np.asarray(zero_point, dtype=np.int64).reshape(-1), scales.shape)
        return UniformQuantType.per_axis(storage, axis, scales, zero_points, storage_min, storage_max)

    def qcast(self, x: Value, qt: UniformQuantType, rounding: str = "round_add") -> Value:
        op = self.module.create("quant.qcast", [x], [TensorType(x.type.shape, qt)], {"rounding": rounding},
                                self._loc("quant"))
        return op.results[0]

    def dcast(self, q: Value) -> Value:
        return self.module.create("quant.dcast", [q], [TensorType(q.type.shape, f32)], {}, q.owner.loc).results[0]

    def quant(self, x: Value, scale, zero_point=0, storage: ScalarType = i8, rounding: str = "round_add",
              storage_min=None, storage_max=None) -> Value:
        """qcast then dcast (a fake-quant requantizer)."""
        return self.dcast(self.qcast(x, self.qtype(scale, zero_point, storage, None, storage_min, storage_max),
                                     rounding))

    def input(self, name: str, shape, scale, zero_point=0, storage: ScalarType = i8,
              rounding: str = "round_add") -> Value:
        x = input_op(self.module, name, TensorType(shape, f32))
        return self.quant(x, scale, zero_point, storage, rounding)

    def output(self, name: str, x: Value) -> None:
        output_op(self.module, name, x)

    def qconst(self, stored: np.ndarray, qt: UniformQuantType) -> Value:
        """dcast of a quantized constant (weights, biases)."""
        stored = np.asarray(stored)
        c = const_op(self.module, stored.astype(qt.storage.np_dtype), TensorType(stored.shape, qt),
                     self._loc("const"))
        return self.dcast(c)

    # ----- layers -----------------------------------------------------------------------------------------------
    def conv(self, x: Value, w: np.ndarray, w_scale, bias: Optional[np.ndarray] = None, pads=(0, 0, 0, 0),
             strides=(1, 1), group: int = 1) -> Value:
        """onnx.Conv with int8 weights (per channel when w_scale is an array) and an int32 bias at s_x*s_w."""
        w = np.asarray(w)
        per_axis = np.ndim(w_scale) > 0
        wq = self.qtype(w_scale, storage=i8, axis=0 if per_axis else None)
        operands = [x, self.qconst(w, wq)]
        if bias is not None:
            s_x = _input_scale(x)
            bq = self.qtype(np.broadcast_to(s_x * np.asarray(w_scale, dtype=np.float64), (w.shape[0],)),
                            storage=i32, axis=0) if per_axis else self.qtype(s_x * float(w_scale), storage=i32)
            operands.append(self.qconst(np.asarray(bias), bq))
        attrs = {"kernel_shape": list(w.shape[2:]), "pads": list(pads), "strides": list(strides),
                 "dilations": [1] * (w.ndim - 2), "group": group}
        return self.op("onnx.Conv", operands, attrs)

    def gemm(self, x: Value, w: np.ndarray, w_scale, bias: Optional[np.ndarray] = None, trans_b: int = 1) -> Value:
        w = np.asarray(w)
        per_axis = np.ndim(w_scale) > 0
        wq = self.qtype(w_scale, storage=i8, axis=(0 if trans_b else 1) if per_axis else None)
        operands = [x, self.qconst(w, wq)]
        if bias is not None:
            n = w.shape[0] if trans_b else w.shape[1]
            s = _input_scale(x) * np.broadcast_to(np.asarray(w_scale, dtype=np.float64), (n,))
            bq = self.qtype(s, storage=i32, axis=0) if per_axis else self.qtype(float(s[0]), storage=i32)
            operands.append(self.qconst(np.asarray(bias), bq))
        return self.op("onnx.Gemm", operands, {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": trans_b})


def _input_scale(x: Value) -> float:
    """The scale of the quantized value a float value was dequantized from."""
    if x.owner.name != "quant.dcast":
        raise ValueError("layer input must be a dequantized value")
    return x.owner.operands[0].type.quant.scale


def requant_step_errors(module: Module, values) -> dict:
    """For every int.requant_shift: the largest difference, in output steps, from the fake-quant requantizer
    `clip(rint((x - z_in) * s_in / s_out) + z_out)` computed in float64 on the requant's actual integer input.

    values: {Value: array} from `qirc.qir.interpreter.run_values` on `module`.  Requants whose input or output is a
    plain integer (no scale, e.g. the exact integer shift of a QONNX Trunc) have no fake-quant twin and are skipped.
    Returns {op loc: max |diff|}."""
    errors = {}
    for op in module.walk("int.requant_shift"):
        x_value, y_value = op.operands[0], op.results[0]
        if x_value not in values or not (x_value.type.is_quant and y_value.type.is_quant):
            continue
        x = np.asarray(values[x_value], dtype=np.float64)
        y = np.asarray(values[y_value], dtype=np.int64)
        xt, yt = x_value.type.quant, y_value.type.quant
        rank = x_value.type.rank
        signed, n = bool(op.attr("signed")), int(op.attr("n_levels"))
        lo, hi = (-(n // 2), n // 2 - 1) if signed else (0, n - 1)
        real = (x - xt.zero_points_for(rank)) * (xt.scales_for(rank) / yt.scales_for(rank))
        ref = np.clip(np.rint(real) + yt.zero_points_for(rank), lo, hi)
        diff = float(np.max(np.abs(ref - y))) if y.size else 0.0
        errors[op.loc] = max(diff, errors.get(op.loc, 0.0))
    return errors


def requant_unexplained(module: Module, values) -> dict:
    """For every int.requant_shift: how many outputs differ from the fake-quant requantizer although the real value
    `(x - z_in) * M` is farther from a rounding tie than the error of approximating M by mul / 2^k
    (DESIGN.md section 3 allows differences only there).  Requants from or to a plain integer are skipped, as in
    `requant_step_errors`.  Returns {op loc: count}; all zeros when faithful.

    The allowance is `|x - z_in| * |M - mul / div|`, with M = s_in / s_out from the types: it depends on the
    multiplier only, never on the op's `add`, so a wrong `add` (which shifts every output by add_error / div steps)
    is reported instead of widening its own tolerance."""
    counts = {}
    for op in module.walk("int.requant_shift"):
        x_value, y_value = op.operands[0], op.results[0]
        if not (x_value.type.is_quant and y_value.type.is_quant):
            continue
        x = np.asarray(values[x_value], dtype=np.float64)
        y = np.asarray(values[y_value], dtype=np.int64)
        xt, yt = x_value.type.quant, y_value.type.quant
        rank = x_value.type.rank
        signed, n = bool(op.attr("signed")), int(op.attr("n_levels"))
        lo, hi = (-(n // 2), n // 2 - 1) if signed else (0, n - 1)
        z_in, z_out = xt.zero_points_for(rank), yt.zero_points_for(rank)
        multiplier = xt.scales_for(rank) / yt.scales_for(rank)
        real = (x - z_in) * multiplier
        ref = np.clip(np.rint(real) + z_out, lo, hi)
        mul = np.asarray(op.attrs["mul"], dtype=np.float64)
        div = float(op.attrs["div"])
        # how far mul / div may move the real value: the only legitimate source of a difference besides a tie
        allowance = np.abs(x - z_in) * np.abs(multiplier - mul / div)
        tie_distance = np.abs(real - np.floor(real) - 0.5)
        explained = tie_distance <= allowance + 1e-9
        bad = (ref != y) & ~explained
        counts[op.loc] = counts.get(op.loc, 0) + int(np.count_nonzero(bad))
    return counts
