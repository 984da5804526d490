"""`dequant-push`: move quant.dcast forward through the float ops that commute with it."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..qir.ir import Module, Operation, Value, const_op, pad_op
from ..qir.passes import ModulePass, register_pass
from ..qir.types import TensorType, UniformQuantType, i8
from .common import (acc_type, apply_rules, close, const_array, dcast_source, emit_requant, fail, int_const,
                     integer_or_none,
                     real_const, replace_with_int, spatial_defaults)
from .ranges import RangeAnalysis

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

    Before: `%y = onnx.Conv(dcast %x, dcast %w, dcast %b)` with %w a quantized constant (per tensor or per output
    channel) and %b an int32 constant at scale s_x*s_w (or any float constant).  Weights with zero points z_w
    (onnxruntime's QUInt8 weights) become int8 weights w - z_w when those fit int8 (zero point 128); otherwise the
    layer reads its input twice along the reduction axis (`int.concat`) with int8 weights [w - z_w - d | d], d per
    output channel: the zero-point correction d * sum(x) over each window folded into the same conv / gemm / matmul
    (a grouped Conv has no such form: LoweringError naming the node).
    After:  `%acc = int.conv(%x, %w, %b') : !quant.uniform<i32:f32, s_x*s_w[c]>` (per axis 1 when the weights are per
    channel), `%y = quant.dcast %acc`.  A non-zero input zero point z_x folds into the bias
    (b' = b - z_x * sum(w[c])) and the padding becomes an explicit `int.pad` with value z_x.  Gemm and MatMul
    likewise (MatMul's zero-point term is an `int.add` of a constant).  MaxPool -> int.maxpool; Relu/Clip whose
    bounds are exact stored integers -> int.clip (unless only quantizers read them: requant-fusion folds those);
    Flatten/Reshape/Transpose/Squeeze/Unsqueeze/Gather/Slice -> int.*; constant Pad whose value is a stored integer
    -> int.pad; Concat of operands of one quant type -> int.concat.  A quantizer reading a shape op of a float graph
    input moves before it (quantizing commutes with moving elements).
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
def _weights(module: Module, op: Operation, w_value: Value, channel_axis: int):
    """(weight value, stored int weights, split, per-output-channel scales or scalar) of dcast(quantized constant),
    or None.  Weights with zero points come back without them (`_zero_point_free`); `split` is None when that was
    exact in int8, else the per-output-channel offsets d of the doubled form (see `_zero_point_free`)."""
    source = dcast_source(w_value)
    if source is None:
        return None
    w = const_array(source)
    if w is None:
        return None
    wq = source.type.quant
    if wq.is_per_axis and wq.axis % w.ndim != channel_axis:
        raise fail(op, f"weights are quantized per axis {wq.axis}, but the output channel axis is {channel_axis}")
    scales = np.asarray(wq.scales, dtype=np.float64)
    int8 = w.dtype == np.int8  # stored as int8: every value is in range without looking
    w = w.astype(np.int64)
    if not any(z != 0 for z in wq.zero_points) and (int8 or not w.size or (w.min() >= -128 and w.max() <= 127)):
        return source, w, None, scales
    return _zero_point_free(module, op, source, w, channel_axis) + (scales,)


def _zero_point_free(module: Module, op: Operation, source: Value, w: np.ndarray, channel_axis: int):
    """Weights with zero points (onnxruntime's QUInt8 weights, WeightSymmetric=False) made exact without them.

    e = w - z_w (per output channel) is what the accumulator multiplies.  When every e fits int8 (a uint8 weight
    with zero point 128 is an int8 weight) it becomes an int8 constant with zero point 0: (value, e, None).
    Otherwise e needs 9 bits; with a per-output-channel offset d, e = (e - d) + d where e - d fits int8, and the
    layer computes sum(x * (e - d)) + d * sum(x) over the same window: ONE linear op whose input is x twice along the
    reduction axis (int.concat) and whose weights are [e - d | d] (the ones-kernel correction folded in).  Returns
    (None, [e - d | d] stacked along a new leading axis 0, d) for the caller to lay out."""
    wq = source.type.quant
    rank = w.ndim
    shape = [1] * rank
    shape[channel_axis] = w.shape[channel_axis]
    z = np.asarray(wq.zero_points, dtype=np.int64).reshape(shape if wq.is_per_axis else ())
    e = w - z
    others = tuple(a for a in range(rank) if a != channel_axis)
    if e.min() >= -128 and e.max() <= 127:
        qt = wq.with_(storage=i8, zero_points=tuple(0 for _ in wq.zero_points))
        value = const_op(module, e.astype(np.int8), TensorType(w.shape, qt), source.owner.loc)
        return value, e, None
    e_lo, e_hi = e.min(axis=others, keepdims=True), e.max(axis=others, keepdims=True)
    # e - d in [-128, 127] and d itself an int8 weight: d in [e_hi - 127, e_lo + 128] and [-128, 127]
    d_lo, d_hi = np.maximum(e_hi - 127, -128), np.minimum(e_lo + 128, 127)
    if np.any(d_lo > d_hi):
        raise fail(op, f"weights with zero point(s) {_fmt_zps(wq)}: a weight minus its zero point reaches "
                       f"{int(e.max())}, which no pair of int8 weights sums to; quantize the weights symmetrically "
                       "(onnxruntime: WeightSymmetric=True or QInt8 weights)")
    d = np.clip(0, d_lo, d_hi)
    return None, np.stack([e - d, np.broadcast_to(d, e.shape)]), d


def _fmt_zps(wq) -> str:
    zps = sorted(set(int(z) for z in wq.zero_points))
    return str(zps[0]) if len(zps) == 1 else f"{zps[0]}..{zps[-1]}"


def _doubled_input(module: Module, x: Value, axis: int, loc: str) -> Value:
    """x twice along `axis` (the reduction axis of the layer that reads it): the doubled form of `_zero_point_free`."""
    shape = list(x.type.shape)
    shape[axis] *= 2
    return module.create("int.concat", [x, x], [TensorType(shape, x.type.element)], {"axis": axis},
                         loc + "/weight_zero_point").result


def _split_weight(module: Module, source_type: TensorType, stacked: np.ndarray, axis: int, loc: str):
    """The int8 constant of the doubled form: the two halves of `stacked` concatenated along `axis`."""
    w2 = np.concatenate([stacked[0], stacked[1]], axis=axis)
    wq = source_type.quant
    qt = wq.with_(storage=i8, zero_points=tuple(0 for _ in wq.zero_points))
    value = const_op(module, w2.astype(np.int8), TensorType(w2.shape, qt), loc + "/weight_zero_point")
    return value, w2


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
        if not bq.is_per_axis and bq.zero_point == 0 and close(bq.scale, acc_scales):
            return q
    real = real_const(b_value)
    if real is None:
        raise fail(op, "the bias is not a constant; it cannot be folded into the integer accumulator")
    return np.rint(beta * real / acc_scales).astype(np.int64)


def _conv(module: Module, op: Operation) -> bool:
    x = _input(op, op.operands[0])
    if x is None:
        return False
    weights = _weights(module, op, op.operands[1], 0)
    if weights is None:
        return False
    w_value, w, split, w_scales = weights
    group = int(op.attr("group") or 1)
    if split is not None and group != 1:
        raise fail(op, f"a grouped Conv (group {group}) with weights whose values minus zero point do not fit int8 "
                       "cannot be lowered exactly for any Deeploy target (qirc's weight-zero-point correction reads the "
                       "input twice, which only an ungrouped Conv allows); quantize "
                       "the weights symmetrically (onnxruntime: WeightSymmetric=True or QInt8 weights)")
    if split is not None:
        w_value, w = _split_weight(module, dcast_source(op.operands[1]).type, w, 1, op.loc)
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
    if split is not None:
        # doubled before the padding: the Conv reads the pad directly (Siracusa folds a pad into its Conv only then)
        x_in = _doubled_input(module, x_in, 1, loc)
    if z != 0:
        bias = bias - z * w.reshape(c_out, -1).sum(axis=1)
        if any(pads):
            x_in = pad_op(module, x_in, pads, z, loc)
            pads = [0] * (2 * n_spatial)
    attrs = {"kernel_shape": [int(k) for k in w.shape[2:]], "pads": pads, "strides": strides,
             "dilations": dilations, "group": group}
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
    weights = _weights(module, op, op.operands[1], 0 if trans_b else 1)
    if weights is None:
        return False
    alpha, beta = float(op.attr("alpha")), float(op.attr("beta"))
    if alpha <= 0:
        raise fail(op, f"Gemm alpha must be positive to keep the accumulator's scale positive, got {alpha}")
    w_value, w, split, w_scales = weights
    if split is not None:
        w_value, w = _split_weight(module, dcast_source(op.operands[1]).type, w, 1 if trans_b else 0, op.loc)
        a = _doubled_input(module, a, 0 if trans_a else 1, op.loc)
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
    weights = _weights(module, op, op.operands[1], 1)
    if weights is None:
        return False
    w_value, w, split, w_scales = weights
    if split is not None:
        w_value, w = _split_weight(module, b_source.type, w, 0, op.loc)
        a = _doubled_input(module, a, a.type.rank - 1, op.loc)
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


# ----- products of two activations (squeeze-excitation, HardSwish) -----------------------------------------------------
def _zero_point_free_operand(module: Module, x: Value, loc: str) -> Value:
    """x as int8 with zero point 0: itself when it already is; the exact shift x - z when every value fits int8 (a u8
    tensor with zero point 128); else a requant onto the int8 grid that holds its range (one rounding, at most half
    a step of that grid)."""
    q = x.type.quant
    if q.zero_point == 0 and q.storage_min >= -128 and q.storage_max <= 127:
        return x
    lo, hi = q.storage_min - q.zero_point, q.storage_max - q.zero_point
    scale = q.scale if (lo >= -128 and hi <= 127) else q.scale * max(-lo / 128.0, hi / 127.0)
    target = TensorType(x.type.shape, UniformQuantType.per_tensor(i8, float(scale), 0))
    return emit_requant(module, RangeAnalysis(), x, target, loc=loc + "/zero_point_free")


def _mul(module: Module, op: Operation) -> bool:
    """onnx.Mul of two dequantized per-tensor activations -> int.mul of their int8 values with zero point 0 (int8 x
    int8 -> int32, Deeploy's integer Mul), at scale s_a * s_b.  Mul(d, HardSigmoid(d)) with HardSwish's alpha 1/6
    and beta 1/2 (Brevitas' QuantHardSwish spells HardSwish so) -> onnx.HardSwish(d), which the HardSwish rule
    lowers."""
    if _hard_swish_spelled_out(module, op):
        return True
    a, b = dcast_source(op.operands[0]), dcast_source(op.operands[1])
    if a is None or b is None or a.type.quant.is_per_axis or b.type.quant.is_per_axis:
        return False
    if _accumulator(a) or _accumulator(b):
        return False
    if const_array(a) is not None or const_array(b) is not None:
        return False
    a8 = _zero_point_free_operand(module, a, op.loc)
    b8 = _zero_point_free_operand(module, b, op.loc)
    scale = a8.type.quant.scale * b8.type.quant.scale
    rtype = acc_type(op.results[0].type.shape, [scale])
    replace_with_int(module, op, "int.mul", [a8, b8], rtype, {})
    return True


def _accumulator(x: Value) -> bool:
    """True for an int32 value (a layer's accumulator with no quantizer after it): its int8 operand form would be a
    requant onto a grid covering the whole int32 range, which rounds every value the layer computes to zero."""
    return x.type.storage.width > 16


def _hard_swish_spelled_out(module: Module, op: Operation) -> bool:
    for d, g in ((op.operands[0], op.operands[1]), (op.operands[1], op.operands[0])):
        gate = g.owner
        if gate.name != "onnx.HardSigmoid" or gate.operands[0] is not d or len(g.uses) != 1:
            continue
        source = dcast_source(d)
        if source is None or _accumulator(source) or d.type.shape != op.results[0].type.shape:
            continue
        # float32's 1/6 and 1/2, as torch and Brevitas export them (ONNX HardSwish's fixed constants)
        if np.float32(gate.attr("alpha")) != np.float32(1.0 / 6.0) or np.float32(gate.attr("beta")) != 0.5:
            continue
        hs = module.create("onnx.HardSwish", [d], [op.results[0].type], {}, op.loc)
        module.replace_op(op, [hs.result])
        module.erase_dead()
        return True
    return False


#: HardSwish's gate x / 6 + 1/2 clipped to [0, 1] is quantized on this grid (int8, 127 steps over [0, 1]) before the
#: product: one extra rounding of at most 1/254 of x
_GATE_SCALE = 1.0 / 127.0


def _hard_swish(module: Module, op: Operation) -> bool:
    """onnx.HardSwish(dcast x) -> onnx.Mul(dcast x, dcast(qcast(HardSigmoid(dcast x)))) with the gate on an int8
    grid of 1/127: requant-fusion makes the gate one clipped affine requant, the Mul rule the product."""
    x = dcast_source(op.operands[0])
    if x is None or x.type.quant.is_per_axis or _accumulator(x):
        return False
    d = op.operands[0]
    gate = module.create("onnx.HardSigmoid", [d], [d.type], {"alpha": 1.0 / 6.0, "beta": 0.5}, op.loc + "/gate")
    gate_t = TensorType(d.type.shape, UniformQuantType.per_tensor(i8, _GATE_SCALE, 0))
    q = module.create("quant.qcast", [gate.result], [gate_t], {"rounding": "round_add"}, op.loc + "/gate")
    g = module.create("quant.dcast", [q.result], [d.type], {}, op.loc + "/gate")
    mul = module.create("onnx.Mul", [d, g.result], [op.results[0].type], {}, op.loc)
    module.replace_op(op, [mul.result])
    return True


# ----- a quantizer behind a shape op on a float graph input ------------------------------------------------------------
def _quantize_before_shape_op(module: Module, op: Operation) -> bool:
    """quant.qcast(Flatten/Reshape/... (x)) with x a float graph input (onnxruntime's quantizer leaves the input's
    Flatten of an MLP unquantized) -> the shape op of dequantized qcast(x): quantizing commutes with moving elements,
    per tensor, so the graph input is quantized where it enters and the shape op becomes integer."""
    shape_op = op.operands[0].owner
    if shape_op.name not in _SHAPE_OPS or shape_op.operands[0].owner.name != "qir.input":
        return False
    qt = op.results[0].type.quant
    if qt.is_per_axis or len(shape_op.results[0].users) != 1:
        return False
    x = shape_op.operands[0]
    q = module.create("quant.qcast", [x], [TensorType(x.type.shape, qt)], dict(op.attrs), op.loc)
    d = module.create("quant.dcast", [q.result], [x.type], {}, op.loc)
    moved = module.create(shape_op.name, [d.result] + list(shape_op.operands[1:]), [shape_op.results[0].type],
                          dict(shape_op.attrs), shape_op.loc)
    requant = module.create("quant.qcast", [moved.result], [op.results[0].type], dict(op.attrs), op.loc)
    module.replace_op(op, [requant.result])
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
    "onnx.Mul": _mul,
    "onnx.HardSwish": _hard_swish,
    "quant.qcast": _quantize_before_shape_op,
    **{name: _shape_op for name in _SHAPE_OPS},
}
