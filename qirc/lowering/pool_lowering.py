"""`pool-lowering`: average pooling as an exact integer sum; the requant after it divides by the count."""
from __future__ import annotations

import numpy as np

from ..qir.ir import Module, Operation, pad_op
from ..qir.passes import ModulePass, register_pass
from ..qir.types import TensorType, UniformQuantType, i32
from .common import apply_rules, dcast_source, fail, replace_with_int, spatial_defaults


@register_pass
class PoolLowering(ModulePass):
    """Lower GlobalAveragePool, ReduceMean, ReduceSum and AveragePool to int.reduce_sum / int.sumpool.

    Before: `%y = onnx.GlobalAveragePool(dcast %x : (s, z))` (or ReduceMean over `axes`, AveragePool).
    After:  `%s = int.reduce_sum %x {axes, keepdims} : !quant.uniform<i32:f32, s/count:z*count>`,
    `%y = quant.dcast %s`: the sum's type carries the division by the element count, so the requant that
    requant-fusion puts after it computes M = s_in / (count * s_out), exact for any count (not only powers of two).
    AveragePool becomes int.sumpool (kernel count); padding of a tensor with a non-zero zero point is an explicit
    int.pad with the zero point.  ReduceSum keeps the scale (count 1).
    Precondition: the input comes from quant.dcast (per tensor, or per axis along a kept axis); AveragePool either
    has no padding or counts the padding (count_include_pad=1), and ceil_mode adds no partial window, since a
    count that varies over the output is not one requant.
    """

    name = "pool-lowering"

    def run(self, module: Module) -> None:
        lower_pools(module)


def lower_pools(module: Module) -> int:
    """One forward sweep; returns how many ops were rewritten."""
    return apply_rules(module, _RULES)


def _sum_type(shape, q: UniformQuantType, count: int, divides: bool, axis=None) -> TensorType:
    scales = np.asarray(q.scales, dtype=np.float64) / (count if divides else 1)
    zps = np.asarray(q.zero_points, dtype=np.int64) * count
    if q.is_per_axis:
        return TensorType(shape, UniformQuantType.per_axis(i32, axis, scales, zps))
    return TensorType(shape, UniformQuantType.per_tensor(i32, float(scales[0]), int(zps[0])))


def _reduce(module: Module, op: Operation) -> bool:
    x = dcast_source(op.operands[0])
    if x is None:
        return False
    rank = x.type.rank
    if op.name == "onnx.GlobalAveragePool":
        axes, keepdims = list(range(2, rank)), 1
    else:
        axes = [int(a) % rank for a in (op.attr("axes") or range(rank))]
        keepdims = int(op.attr("keepdims"))
    q = x.type.quant
    axis = None
    if q.is_per_axis:
        qa = q.axis % rank
        if qa in axes:
            return False
        axis = qa if keepdims else qa - sum(1 for a in axes if a < qa)
    count = int(np.prod([x.type.shape[a] for a in axes]))
    divides = op.name != "onnx.ReduceSum"
    rtype = _sum_type(op.results[0].type.shape, q, count, divides, axis)
    replace_with_int(module, op, "int.reduce_sum", [x], rtype, {"axes": axes, "keepdims": keepdims})
    return True


def _average_pool(module: Module, op: Operation) -> bool:
    x = dcast_source(op.operands[0])
    if x is None:
        return False
    q = x.type.quant
    n_spatial = x.type.rank - 2
    kernel = [int(k) for k in op.attr("kernel_shape")]
    pads, strides, _ = spatial_defaults(op, n_spatial)
    ceil_mode = int(op.attr("ceil_mode") or 0)
    if ceil_mode:
        floor_shape = _pool_out(x.type.shape, kernel, pads, strides, 0)
        if tuple(floor_shape) != tuple(op.results[0].type.shape):
            raise fail(op, "AveragePool with ceil_mode=1 has partial windows whose element count differs; "
                           "one integer requant cannot divide by a varying count")
    if any(pads) and not int(op.attr("count_include_pad") or 0):
        raise fail(op, "AveragePool with padding and count_include_pad=0 divides border windows by a smaller "
                       "count; one integer requant cannot express a varying count")
    source = x
    if any(pads) and any(z != 0 for z in q.zero_points):
        if q.is_per_axis:
            raise fail(op, "AveragePool padding of a per-axis tensor with non-zero zero points")
        source = pad_op(module, x, pads, q.zero_point, op.loc)
        pads = [0] * (2 * n_spatial)
    count = int(np.prod(kernel))
    axis = q.axis % x.type.rank if q.is_per_axis else None
    if axis is not None and axis != 1:
        return False
    rtype = _sum_type(op.results[0].type.shape, q, count, True, axis)
    replace_with_int(module, op, "int.sumpool", [source], rtype,
                     {"kernel_shape": kernel, "pads": pads, "strides": strides, "ceil_mode": ceil_mode})
    return True


def _pool_out(shape, kernel, pads, strides, ceil_mode):
    n = len(kernel)
    out = list(shape[:2])
    for i in range(n):
        size = shape[2 + i] + pads[i] + pads[n + i] - kernel[i]
        out.append((-(-size // strides[i]) if ceil_mode else size // strides[i]) + 1)
    return out


_RULES = {
    "onnx.GlobalAveragePool": _reduce,
    "onnx.ReduceMean": _reduce,
    "onnx.ReduceSum": _reduce,
    "onnx.AveragePool": _average_pool,
}
