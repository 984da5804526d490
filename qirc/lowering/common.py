"""Helpers shared by the lowering passes: matching dcast/const producers, building int ops, emitting requants."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..qir.diagnostics import LoweringError, op_error
from ..qir.ir import Module, Operation, Value, const_op
from ..qir.types import ScalarType, TensorType, UniformQuantType, i32
from .numerics import choose_requant, form_bounds, requant_form
from .ranges import RangeAnalysis

#: relative tolerance under which two float scales (or a real and an integer) count as equal
SCALE_RTOL = 1e-6


def dcast_source(value: Value) -> Optional[Value]:
    """The quantized value `q` if `value` is `quant.dcast q`, else None."""
    op = value.owner
    if op.name == "quant.dcast" and op.operands[0].type.is_quant:
        return op.operands[0]
    return None


def const_array(value: Value) -> Optional[np.ndarray]:
    """The values of a `qir.const` result, or None."""
    if value.owner.name == "qir.const":
        return np.asarray(value.owner.attrs["value"])
    return None


def real_const(value: Value) -> Optional[np.ndarray]:
    """The real (float64) values of a float constant or of `dcast(quantized constant)`, or None."""
    array = const_array(value)
    if array is not None and value.type.is_float:
        return array.astype(np.float64)
    source = dcast_source(value)
    if source is not None:
        q = const_array(source)
        if q is not None:
            qt = source.type.quant
            rank = source.type.rank
            return (q.astype(np.float64) - qt.zero_points_for(rank)) * qt.scales_for(rank)
    return None


def positive_scalar_factor(op: Operation) -> Optional[float]:
    """The positive factor an onnx.Mul / onnx.Div by one finite positive constant (a float constant or a dequantized
    quantized one, its real value as onnxruntime's float32 DequantizeLinear gives it) multiplies its other operand
    by, or None."""
    if op.name not in ("onnx.Mul", "onnx.Div"):
        return None
    c = real_const(op.operands[1])
    if c is None and op.name == "onnx.Mul":
        c = real_const(op.operands[0])
    if c is None or c.size != 1:
        return None
    c = float(np.float32(c.reshape(())))
    if not np.isfinite(c) or c <= 0:
        return None
    return 1.0 / c if op.name == "onnx.Div" else c


def close(a, b, rtol: float = SCALE_RTOL) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 1 and b.size:
        b_lo, b_hi = b.min(), b.max()
        if b_lo == b_hi:  # one value against one value (a per-tensor scale against equal channels): floats suffice
            x, y = float(a.reshape(-1)[0]), float(b_lo)
            return abs(x - y) <= rtol * max(abs(x), abs(y))
    return bool(np.all(np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b))))


def integer_or_none(x: float, rtol: float = SCALE_RTOL) -> Optional[int]:
    """round(x) if x is an integer up to rtol (absolute 1e-9 near 0), else None."""
    r = round(float(x))
    if abs(x - r) <= max(1e-9, rtol * abs(x)):
        return int(r)
    return None


def int_const(module: Module, array, loc: str, element: ScalarType = i32) -> Value:
    """A plain integer constant (int32 by default); raises if a value does not fit."""
    array = np.asarray(array)
    a64 = np.rint(array).astype(np.int64) if array.dtype.kind == "f" else array.astype(np.int64)
    if a64.size and (a64.min() < element.min or a64.max() > element.max):
        raise LoweringError(f"constant does not fit {element} (range {int(a64.min())}..{int(a64.max())})",
                            loc=loc or None)
    return const_op(module, a64.astype(element.np_dtype), TensorType(a64.shape, element), loc)


def acc_type(shape: Sequence[int], scales, zero_points=None, axis: Optional[int] = None,
             storage: ScalarType = i32) -> TensorType:
    """An int32 accumulator type: per tensor when `axis` is None (or all scales equal), else per axis."""
    scales = np.asarray(scales, dtype=np.float64).reshape(-1)
    if zero_points is None and scales.size and (axis is None or scales.min() == scales.max()):
        # the common case without arrays of zero points (the same type as below)
        return TensorType(shape, UniformQuantType.per_tensor(storage, float(scales[0]), 0))
    zps = np.zeros(scales.shape, np.int64) if zero_points is None else \
        np.broadcast_to(np.asarray(zero_points, dtype=np.int64).reshape(-1), scales.shape)
    if axis is None or (np.all(scales == scales[0]) and np.all(zps == zps[0])):
        return TensorType(shape, UniformQuantType.per_tensor(storage, float(scales[0]), int(zps[0])))
    return TensorType(shape, UniformQuantType.per_axis(storage, axis, scales, zps))


def replace_with_int(module: Module, op: Operation, name: str, operands: Sequence[Value], result_type: TensorType,
                     attrs: dict) -> Operation:
    """Replace float op `op` by `name(operands) -> result_type` followed by one quant.dcast back to op's type."""
    new = module.create(name, list(operands), [result_type], attrs, op.loc)
    dcast = module.create("quant.dcast", [new.result], [op.results[0].type], {}, op.loc)
    module.replace_op(op, [dcast.result])
    return new


def emit_requant(module: Module, ranges: RangeAnalysis, x: Value, out: TensorType, clip_lo: Optional[int] = None,
                 clip_hi: Optional[int] = None, loc: str = "", op_for_errors: Optional[Operation] = None,
                 strict: bool = False, gain: float = 1.0, offset: float = 0.0) -> Value:
    """`int.requant_shift` from the quantized integer value x to the quant type of `out` (shape taken from x).

    clip_lo/clip_hi: tighter output bounds (in stored integers) from a folded ReLU/Clip.  When the bounds are not a
    form Deeploy's RequantShift expresses ([-n/2, n/2-1] or [0, n-1]), the requant uses the enclosing form and an
    int.clip follows.  strict: refuse a requant whose approximation bound reaches one output step
    (`numerics.choose_requant`) instead of compiling it.  gain, offset: an affine map of the real value before
    the output quantizer, y = gain * x + offset (HardSigmoid's alpha and beta; per-tensor output only).
    """
    xt, ot = x.type.quant, out.quant
    rank = x.type.rank
    lo = ot.storage_min if clip_lo is None else max(int(clip_lo), ot.storage_min)
    hi = ot.storage_max if clip_hi is None else min(int(clip_hi), ot.storage_max)
    if lo > hi:
        lo = hi = min(max(lo, ot.storage_min), ot.storage_max)
    signed, n_levels, _ = requant_form(ot.storage_min, ot.storage_max)
    form_lo, form_hi = form_bounds(signed, n_levels)
    if xt.is_per_axis or ot.is_per_axis:
        multiplier, z_in, z_out = (gain * xt.scales_for(rank) / ot.scales_for(rank), xt.zero_points_for(rank),
                                   ot.zero_points_for(rank))
    else:  # the same float64 arithmetic on scalars
        multiplier, z_in, z_out = gain * xt.scale / ot.scale, xt.zero_point, ot.zero_point
    acc_lo, acc_hi = ranges.range_of(x)
    anchor = op_for_errors or x.owner
    params = choose_requant(multiplier, z_in, z_out, acc_lo, acc_hi,
                            form_lo, form_hi, op=_Located(loc, anchor), strict=strict, fold_offset=_foldable_offset(x),
                            offset_steps=offset / ot.scale if offset else 0.0)
    needs_clip = (lo, hi) != (form_lo, form_hi)
    requant_elem = ot.with_(storage_min=min(form_lo, ot.storage_min), storage_max=max(form_hi, ot.storage_max)) \
        if needs_clip else ot
    shape = x.type.shape
    requant = module.create("int.requant_shift", [x], [TensorType(shape, requant_elem)],
                            {"mul": params.mul, "add": params.add, "div": params.div, "signed": signed,
                             "n_levels": n_levels}, loc)
    result = requant.result
    if needs_clip:
        result = module.create("int.clip", [result], [TensorType(shape, ot)], {"min": lo, "max": hi}, loc).result
    return result


def _foldable_offset(x: Value) -> Optional[np.ndarray]:
    """The constant part of x that a backend folds into the requant's add (Deeploy: a Conv's bias, a constant
    int.add before the requant), broadcastable against x; None when there is none.  The requant is sized for both
    forms, with and without it (a 4-bit activation after signed normalisation has a bias far beyond the
    accumulator's own range: the zero-point correction)."""
    op = x.owner
    if op.name == "int.conv" and len(op.operands) > 2:
        b = const_array(op.operands[2])
        if b is not None:
            return b.astype(np.int64).reshape([1, -1] + [1] * (x.type.rank - 2))
    if op.name == "int.add":
        for v in op.operands:
            k = const_array(v)
            if k is not None and np.broadcast_shapes(np.shape(k), x.type.shape) == tuple(x.type.shape):
                return k.astype(np.int64)
    return None


class _Located:
    """Names an error after the node being lowered (its loc) and the op kind being emitted."""

    def __init__(self, loc: str, op: Operation):
        self.loc = loc or op.loc
        self.name = "int.requant_shift"


def spatial_defaults(op: Operation, n_spatial: int) -> Tuple[list, list, list]:
    """(pads, strides, dilations) with ONNX defaults filled in."""
    pads = list(op.attr("pads") or []) or [0] * (2 * n_spatial)
    strides = list(op.attr("strides") or []) or [1] * n_spatial
    dilations = list(op.attrs.get("dilations") or []) or [1] * n_spatial
    return [int(p) for p in pads], [int(s) for s in strides], [int(d) for d in dilations]


def fail(op: Operation, message: str) -> LoweringError:
    return op_error(LoweringError, op, message)


Rule = Callable[[Module, Operation], bool]


def apply_rules(module: Module, rules: Dict[str, Rule]) -> int:
    """One forward sweep applying `rules[op.name]` to each op; returns how many rewrote.  Rewrites go in order, so
    a sweep follows chains; ops a rule erased are skipped, and what the rewrites left dead is erased at the end."""
    count = 0
    for op in module.ops():
        if op.module is not module:
            continue
        rule = rules.get(op.name)
        if rule is not None and rule(module, op):
            count += 1
    if count:
        module.erase_dead()
    return count
