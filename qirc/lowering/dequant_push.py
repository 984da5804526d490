"""`dequant-push`: move quant.dcast forward through the float ops that commute with it."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..qir.ir import Module, Operation, Value, pad_op
from ..qir.passes import ModulePass, register_pass
from ..qir.types import TensorType
from .common import (acc_type, apply_rules, close, const_array, dcast_source, fail, int_const, integer_or_none,
                     real_const, replace_with_int, spatial_defaults)

_SHAPE_OPS = {"onnx.Flatten": "int.flatten", "onnx.Reshape": "int.reshape", "onnx.Transpose": "int.transpose",
              "onnx.Squeeze": "int.squeeze", "onnx.Unsqueeze": "int.unsqueeze", "onnx.Gather": "int.gather",
              "onnx.Slice": "int.slice"}
_SHAPE_ATTRS = {"onnx.Flatten": ("axis",), "onnx.Reshape": ("shape",), "onnx.Transpose": ("perm",),
                "onnx.Squeeze": ("axes",), "onnx.Unsqueeze": ("axes",),
                "onnx.Gather": ("axis", "indices", "scalar"), "onnx.Slice": ("starts", "ends", "axes", "steps")}
#: shape ops that select part of an axis: a per-axis quantization along it would need its scales selected too
_SELECTING = ("onnx.Gather", "onnx.Slice")


@register_pass
class DequantPush(ModulePass):
    """Move quant.dcast forward through Conv/Gemm/MatMul, MaxPool, Relu/Clip, shape-only ops, Pad and Concat.

    Before: `%y = onnx.Conv(dcast %x, dcast %w, dcast %b)` with %w a quantized constant (zero point 0, per tensor or
    per output channel) and %b an int32 constant at scale s_x*s_w (or any float constant).
    After:  `%acc = int.conv(%x, %w, %b') : !quant.uniform<i32:f32, s_x*s_w[c]>` (per axis 1 when the weights are per
    channel), `%y = quant.dcast %acc`.  A non-zero input zero point z_x folds into the bias
    (b' = b - z_x * sum(w[c])) and the padding becomes an explicit `int.pad` with value z_x.  Gemm and MatMul
    likewise (MatMul's zero-point term is an `int.add` of a constant).  MaxPool -> int.maxpool; Relu/Clip whose
    bounds are exact stored integers -> int.clip (unless only quantizers read them: requant-fusion folds those);
    Flatten/Reshape/Transpose/Squeeze/Unsqueeze/Gather/Slice -> int.*; constant Pad whose value is a stored integer -> int.pad;
    Concat of operands of one quant type -> int.concat.
    Precondition: the float operand comes from quant.dcast of a per-tensor quantized value (per axis for shape ops
    whose channel axis survives).  Ops that do not match are left alone.
    """

    name = "dequant-push"

    def run(self, module: Module) -> None:
        push_dequants(module)


def push_dequants(module: Module) -> int:
    """One forward sweep; returns how many ops were rewritten."""
    return apply_rules(module, _RULES)


# ----- linear ops -------------------------------------------------------------------------------------------------
def _weights(op: Operation, w_value: Value, channel_axis: int):
    """(stored int weights, per-output-channel scales or scalar) of dcast(quantized constant), or None."""
    source = dcast_source(w_value)
    if source is None:
        return None
    w = const_array(source)
    if w is None:
        return None
    wq = source.type.quant
    if any(z != 0 for z in wq.zero_points):
        raise fail(op, f"weights have a non-zero zero point ({wq}); only symmetric weights can be lowered")
    if wq.is_per_axis and wq.axis % w.ndim != channel_axis:
        raise fail(op, f"weights are quantized per axis {wq.axis}, but the output channel axis is {channel_axis}")
    scales = np.asarray(wq.scales, dtype=np.float64)
    return source, w.astype(np.int64), scales


def _input(op: Operation, x_value: Value) -> Optional[Value]:
    source = dcast_source(x_value)
    if source is None or source.type.quant.is_per_axis:
        return None
    return source


def _bias(op: Operation, b_value: Optional[Value], acc_scales: np.ndarray, n: int, beta: float = 1.0) -> np.ndarray:
    """The bias in accumulator units, int64 of shape [n] (or the constant's own 2-D shape for Gemm's C)."""
    if b_value is None:
        return np.zeros(n, np.int64)
    source = dcast_source(b_value)
    if source is not None and const_array(source) is not None and beta == 1.0:
        bq = source.type.quant
        q = const_array(source).astype(np.int64)
        if not bq.is_per_axis and bq.zero_point == 0 and close(np.full(acc_scales.shape, bq.scale), acc_scales):
            return q
    real = real_const(b_value)
    if real is None:
        raise fail(op, "the bias is not a constant; it cannot be folded into the integer accumulator")
    return np.rint(beta * real / acc_scales).astype(np.int64)


def _conv(module: Module, op: Operation) -> bool:
    x = _input(op, op.operands[0])
    if x is None:
        return False
    weights = _weights(op, op.operands[1], 0)
    if weights is None:
        return False
    w_value, w, w_scales = weights
    xq = x.type.quant
    c_out = w.shape[0]
    acc_scales = np.broadcast_to(xq.scale * w_scales, (c_out,)).astype(np.float64)
    b_value = op.operands[2] if len(op.operands) > 2 else None
    bias = _bias(op, b_value, acc_scales, c_out).reshape(-1)
    n_spatial = w.ndim - 2
    pads, strides, dilations = spatial_defaults(op, n_spatial)
    z = xq.zero_point
    x_in = x
    loc = op.loc
    if z != 0:
        bias = bias - z * w.reshape(c_out, -1).sum(axis=1)
        if any(pads):
            x_in = pad_op(module, x, pads, z, loc)
            pads = [0] * (2 * n_spatial)
    attrs = {"kernel_shape": [int(k) for k in w.shape[2:]], "pads": pads, "strides": strides,
             "dilations": dilations, "group": int(op.attr("group") or 1)}
    operands = [x_in, w_value]
    if b_value is not None or np.any(bias):
        operands.append(int_const(module, bias, loc))
    rtype = acc_type(op.results[0].type.shape, acc_scales, axis=1)
    replace_with_int(module, op, "int.conv", operands, rtype, attrs)
    return True


def _gemm(module: Module, op: Operation) -> bool:
    trans_a, trans_b = int(op.attr("transA") or 0), int(op.attr("transB") or 0)
    a = _input(op, op.operands[0])
    if a is None:
        return False
    weights = _weights(op, op.operands[1], 0 if trans_b else 1)
    if weights is None:
        return False
    alpha, beta = float(op.attr("alpha")), float(op.attr("beta"))
    if alpha <= 0:
        raise fail(op, f"Gemm alpha must be positive to keep the accumulator's scale positive, got {alpha}")
    w_value, w, w_scales = weights
    wk = w.T if trans_b else w  # K x N
    n = wk.shape[1]
    aq = a.type.quant
    acc_scales = np.broadcast_to(alpha * aq.scale * w_scales, (n,)).astype(np.float64)
    c_value = op.operands[2] if len(op.operands) > 2 else None
    bias = _bias(op, c_value, acc_scales, n, beta)
    if aq.zero_point != 0:
        bias = bias - aq.zero_point * wk.sum(axis=0)
    operands = [a, w_value]
    if c_value is not None or np.any(bias):
        operands.append(int_const(module, bias, op.loc))
    rtype = acc_type(op.results[0].type.shape, acc_scales, axis=1)
    replace_with_int(module, op, "int.gemm", operands, rtype, {"transA": trans_a, "transB": trans_b})
    return True


def _matmul(module: Module, op: Operation) -> bool:
    a = _input(op, op.operands[0])
    if a is None:
        return False
    b_source = dcast_source(op.operands[1])
    if b_source is None or const_array(b_source) is None or b_source.type.rank != 2:
        return False
    weights = _weights(op, op.operands[1], 1)
    if weights is None:
        return False
    w_value, w, w_scales = weights
    n = w.shape[1]
    aq = a.type.quant
    acc_scales = np.broadcast_to(aq.scale * w_scales, (n,)).astype(np.float64)
    out_shape = op.results[0].type.shape
    rank = len(out_shape)
    rtype = acc_type(out_shape, acc_scales, axis=rank - 1)
    if aq.zero_point == 0:
        replace_with_int(module, op, "int.matmul", [a, w_value], rtype, {})
        return True
    mm = module.create("int.matmul", [a, w_value], [rtype], {}, op.loc)
    correction = int_const(module, -aq.zero_point * w.sum(axis=0), op.loc)
    replace_with_int(module, op, "int.add", [mm.result, correction], rtype, {})
    return True


# ----- elementwise and data movement ---------------------------------------------------------------------------------
def _maxpool(module: Module, op: Operation) -> bool:
    x = dcast_source(op.operands[0])
    if x is None:
        return False
    n_spatial = x.type.rank - 2
    pads, strides, dilations = spatial_defaults(op, n_spatial)
    attrs = {"kernel_shape": list(op.attr("kernel_shape")), "pads": pads, "strides": strides,
             "dilations": dilations, "ceil_mode": int(op.attr("ceil_mode") or 0)}
    replace_with_int(module, op, "int.maxpool", [x], TensorType(op.results[0].type.shape, x.type.element), attrs)
    return True


def _only_quantizers_read(value: Value) -> bool:
    users = value.users
    return bool(users) and all(u.name == "quant.qcast" or (u.name in ("onnx.Relu", "onnx.Clip") and
                                                           _only_quantizers_read(u.results[0])) for u in users)


def _clip(module: Module, op: Operation) -> bool:
    x = dcast_source(op.operands[0])
    if x is None or x.type.quant.is_per_axis or _only_quantizers_read(op.results[0]):
        return False
    q = x.type.quant
    if op.name == "onnx.Relu":
        lo_real, hi_real = 0.0, float("inf")
    else:
        lo_real, hi_real = float(op.attr("min")), float(op.attr("max"))
    lo = q.storage_min if np.isinf(lo_real) else integer_or_none(lo_real / q.scale + q.zero_point)
    hi = q.storage_max if np.isinf(hi_real) else integer_or_none(hi_real / q.scale + q.zero_point)
    if lo is None or hi is None:
        return False  # a bound between two grid points: exact only when a quantizer follows (requant-fusion)
    lo, hi = max(lo, q.storage_min), min(hi, q.storage_max)
    replace_with_int(module, op, "int.clip", [x], x.type, {"min": int(lo), "max": int(max(lo, hi))})
    return True


def _shape_op(module: Module, op: Operation) -> bool:
    x = dcast_source(op.operands[0])
    if x is None:
        return False
    out_shape = op.results[0].type.shape
    element = x.type.element
    if element.is_per_axis:
        if op.name in _SELECTING:
            return False
        axis = _moved_axis(op, x.type.shape, out_shape, element.axis % x.type.rank)
        if axis is None:
            return False
        element = element.with_(axis=axis)
    attrs = {k: list(op.attr(k)) if isinstance(op.attr(k), (list, tuple)) else op.attr(k)
             for k in _SHAPE_ATTRS[op.name]}
    replace_with_int(module, op, _SHAPE_OPS[op.name], [x], TensorType(out_shape, element), attrs)
    return True


def _moved_axis(op: Operation, in_shape, out_shape, axis: int) -> Optional[int]:
    """Where a per-axis quantization axis lands after a shape op, or None when it is split or merged."""
    if op.name == "onnx.Transpose":
        return list(op.attr("perm")).index(axis)
    before = int(np.prod(in_shape[:axis]))
    size = in_shape[axis]
    for j in range(len(out_shape)):
        if int(np.prod(out_shape[:j])) == before and out_shape[j] == size:
            return j
    return None


def _pad(module: Module, op: Operation) -> bool:
    x = dcast_source(op.operands[0])
    if x is None or x.type.quant.is_per_axis or (op.attr("mode") or "constant") != "constant":
        return False
    q = x.type.quant
    value = integer_or_none(float(op.attr("value") or 0.0) / q.scale + q.zero_point)
    if value is None or not q.storage_min <= value <= q.storage_max:
        return False
    attrs = {"pads": [int(p) for p in op.attr("pads")], "value": value}
    replace_with_int(module, op, "int.pad", [x], TensorType(op.results[0].type.shape, q), attrs)
    return True


def _concat(module: Module, op: Operation) -> bool:
    sources = [dcast_source(v) for v in op.operands]
    if not sources or any(s is None for s in sources):
        return False
    element = sources[0].type.element
    if any(s.type.element != element for s in sources) or element.is_per_axis:
        return False
    replace_with_int(module, op, "int.concat", sources, TensorType(op.results[0].type.shape, element),
                     {"axis": int(op.attr("axis"))})
    return True


_RULES = {
    "onnx.Conv": _conv,
    "onnx.Gemm": _gemm,
    "onnx.MatMul": _matmul,
    "onnx.MaxPool": _maxpool,
    "onnx.Relu": _clip,
    "onnx.Clip": _clip,
    "onnx.Pad": _pad,
    "onnx.Concat": _concat,
    **{name: _shape_op for name in _SHAPE_OPS},
}
