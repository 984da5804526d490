"""Integer interval analysis: a sound bound on every value an integer tensor can hold.

`RangeAnalysis().range_of(value)` returns `(lo, hi)`, two int64 arrays broadcastable against the value's shape: rank 0
for one bound for the whole tensor, or the value's rank with the channel axis kept (`[1, C, 1, 1]` after a conv,
`[1, N]` after a gemm) where the bound differs per channel.

Rules:
- a tensor whose storage is at most 16 bits wide (activations, the outputs of requant_shift) is bounded by its
  storage range (the quant type's storage_min..storage_max): whatever the producer, the value fits its type;
- `qir.const`: the exact min and max of its values;
- int.conv / int.gemm / int.matmul with constant weights: per output channel, exactly as far as interval arithmetic
  allows: max = sum(w > 0) * x_max + sum(w < 0) * x_min (+ bias), using the per-input-channel range of x when known;
  a conv with implicit zero padding may also see 0;
- int.add / sub / mul: interval arithmetic; reduce_sum and sumpool: count times the range (0 counts when padded);
- maxpool, clip, pad and the shape-only ops keep (or widen) their operand's range;
- int.igelu: its exact minimum and maximum over the input's range.
The analysis memoises per Value and stops at narrow types, so chains between requants are short.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from ..qir.diagnostics import LoweringError, op_error
from ..qir.ir import Value
from ..qir.kernels_transformer import igelu

Interval = Tuple[np.ndarray, np.ndarray]

_NARROW_WIDTH = 16


class RangeAnalysis:
    """Memoised interval analysis over a module's integer values (see the module docstring)."""

    def __init__(self):
        self._memo: Dict[int, Tuple[Value, Interval]] = {}

    def range_of(self, value: Value) -> Interval:
        hit = self._memo.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        result = self._compute(value)
        lo, hi = (np.asarray(r, dtype=np.int64) for r in result)
        self._memo[id(value)] = (value, (lo, hi))
        return lo, hi

    def scalar_range(self, value: Value) -> Tuple[int, int]:
        lo, hi = self.range_of(value)
        return int(lo.min()), int(hi.max())

    def invalidate(self, value: Value) -> None:
        self._memo.pop(id(value), None)

    # ---------------------------------------------------------------------------------------------------------
    def _compute(self, value: Value) -> Interval:
        t = value.type
        if t.is_float:
            raise LoweringError(f"range analysis reached a float tensor {t}", loc=value.owner.loc or None,
                                op=value.owner.name)
        op = value.owner
        storage = t.storage
        element = t.element
        type_lo, type_hi = np.int64(element.min), np.int64(element.max)
        if op.name == "qir.const":
            v = np.asarray(op.attrs["value"]).astype(np.int64)
            return (v.min(), v.max()) if v.size else (np.int64(0), np.int64(0))
        if storage.width <= _NARROW_WIDTH or op.name == "qir.input":
            return type_lo, type_hi
        rule = _RULES.get(op.name)
        if rule is None:
            return type_lo, type_hi
        lo, hi = rule(self, op)
        # the declared type is a bound too (the interpreter checks every int result against it)
        return np.maximum(lo, type_lo), np.minimum(hi, type_hi)


# ----- helpers --------------------------------------------------------------------------------------------------------
def _per_channel(bound: np.ndarray, axis: int, size: int, reduce) -> np.ndarray:
    """A bound as a 1-D array over `axis` (reducing every other axis with `reduce`)."""
    bound = np.asarray(bound)
    if bound.ndim == 0:
        return np.full(size, bound, dtype=np.int64)
    other = tuple(i for i in range(bound.ndim) if i != axis)
    flat = reduce(bound, axis=other) if other else bound
    return np.broadcast_to(flat.reshape(-1), (size,)).astype(np.int64)


def _keep_axis(vec: np.ndarray, axis: int, rank: int) -> np.ndarray:
    shape = [1] * rank
    shape[axis] = vec.size
    return vec.reshape(shape)


def _scalar(interval: Interval) -> Interval:
    lo, hi = interval
    return np.asarray(lo).min(), np.asarray(hi).max()


def _const_array(value: Value, user) -> np.ndarray:
    if value.owner.name != "qir.const":
        raise op_error(LoweringError, user, "range analysis needs constant weights")
    return np.asarray(value.owner.attrs["value"]).astype(np.int64)


def _linear_bound(w: np.ndarray, x_lo: np.ndarray, x_hi: np.ndarray, sum_axes) -> Interval:
    """Bounds of sum(w * x) over sum_axes for x in [x_lo, x_hi] (broadcast against w)."""
    if np.ndim(x_lo) == 0 and np.ndim(x_hi) == 0:
        return _uniform_linear_bound(w, int(x_lo), int(x_hi), sum_axes)
    pos = np.maximum(w, 0)
    neg = np.minimum(w, 0)
    hi = (pos * x_hi + neg * x_lo).sum(axis=sum_axes)
    lo = (pos * x_lo + neg * x_hi).sum(axis=sum_axes)
    return lo, hi


def _uniform_linear_bound(w: np.ndarray, x_lo: int, x_hi: int, sum_axes) -> Interval:
    """_linear_bound for one range [x_lo, x_hi] of every x: x_hi * sum(w > 0) + x_lo * sum(w < 0) and the reverse,
    the same integers as summing the products (int64 cannot overflow below the bound checked; else the products)."""
    pos = np.maximum(w, 0)
    if w.size and int(np.abs(w).max()) * w.size * max(abs(x_lo), abs(x_hi)) >= 1 << 62:
        neg = np.minimum(w, 0)
        return (pos * x_lo + neg * x_hi).sum(axis=sum_axes), (pos * x_hi + neg * x_lo).sum(axis=sum_axes)
    pos_sum = pos.sum(axis=sum_axes)
    neg_sum = w.sum(axis=sum_axes) - pos_sum
    return pos_sum * x_lo + neg_sum * x_hi, pos_sum * x_hi + neg_sum * x_lo


# ----- rules ----------------------------------------------------------------------------------------------------------
def _conv(ra: RangeAnalysis, op) -> Interval:
    x, w_value = op.operands[0], op.operands[1]
    w = _const_array(w_value, op)
    c_out, c_per_group = w.shape[0], w.shape[1]
    group = int(op.attr("group") or 1)
    c_in = x.type.shape[1]
    x_lo, x_hi = ra.range_of(x)
    padded = any(int(p) != 0 for p in (op.attr("pads") or []))
    if x_lo.ndim == 0 and x_hi.ndim == 0 and c_in == c_per_group * group:
        # one range for every input channel (an activation's storage range): each window sees it
        a, b = int(x_lo), int(x_hi)
        if padded:
            a, b = min(a, 0), max(b, 0)
        lo, hi = _uniform_linear_bound(w, a, b, tuple(range(1, w.ndim)))
    else:
        lo_c = _per_channel(x_lo, 1, c_in, np.min)
        hi_c = _per_channel(x_hi, 1, c_in, np.max)
        if padded:
            lo_c, hi_c = np.minimum(lo_c, 0), np.maximum(hi_c, 0)
        out_per_group = c_out // group
        in_index = (np.arange(c_out) // out_per_group)[:, None] * c_per_group + np.arange(c_per_group)[None, :]
        extra = (1,) * (w.ndim - 2)
        lo_w = lo_c[in_index].reshape((c_out, c_per_group) + extra)
        hi_w = hi_c[in_index].reshape((c_out, c_per_group) + extra)
        lo, hi = _linear_bound(w, lo_w, hi_w, tuple(range(1, w.ndim)))
    if len(op.operands) > 2:
        b = _const_array(op.operands[2], op).reshape(-1)
        lo, hi = lo + b, hi + b
    rank = op.results[0].type.rank
    return _keep_axis(lo, 1, rank), _keep_axis(hi, 1, rank)


def _gemm(ra: RangeAnalysis, op) -> Interval:
    a, b_value = op.operands[0], op.operands[1]
    b = _const_array(b_value, op)
    if op.attr("transB"):
        b = b.T
    k = b.shape[0]
    a_lo, a_hi = ra.range_of(a)
    k_axis = 0 if op.attr("transA") else 1
    if np.ndim(a_lo) == 0 and np.ndim(a_hi) == 0:  # one range for the whole input
        lo, hi = _uniform_linear_bound(b, int(a_lo), int(a_hi), 0)
    else:
        lo_k = _per_channel(a_lo, k_axis, k, np.min) if np.ndim(a_lo) else np.full(k, a_lo, dtype=np.int64)
        hi_k = _per_channel(a_hi, k_axis, k, np.max) if np.ndim(a_hi) else np.full(k, a_hi, dtype=np.int64)
        lo, hi = _linear_bound(b, lo_k[:, None], hi_k[:, None], 0)
    if len(op.operands) > 2:
        c_value = op.operands[2]
        if c_value.owner.name == "qir.const":
            c = np.asarray(c_value.owner.attrs["value"]).astype(np.int64)
            c_lo, c_hi = (c, c) if c.ndim <= 1 else (c.min(axis=0), c.max(axis=0))
        else:
            c_lo, c_hi = _scalar(ra.range_of(c_value))
        lo, hi = lo + c_lo, hi + c_hi
    return lo.reshape(1, -1), hi.reshape(1, -1)


def _matmul(ra: RangeAnalysis, op) -> Interval:
    a, b_value = op.operands
    a_lo, a_hi = _scalar(ra.range_of(a))
    if b_value.owner.name == "qir.const" and np.ndim(b_value.owner.attrs["value"]) == 2:
        b = _const_array(b_value, op)
        lo, hi = _linear_bound(b, np.int64(a_lo), np.int64(a_hi), 0)
        rank = op.results[0].type.rank
        return _keep_axis(lo, rank - 1, rank), _keep_axis(hi, rank - 1, rank)
    b_lo, b_hi = _scalar(ra.range_of(b_value))
    k = a.type.shape[-1]
    products = [a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi]
    return k * min(products), k * max(products)


def _add(ra, op) -> Interval:
    (a_lo, a_hi), (b_lo, b_hi) = ra.range_of(op.operands[0]), ra.range_of(op.operands[1])
    return a_lo + b_lo, a_hi + b_hi


def _sub(ra, op) -> Interval:
    (a_lo, a_hi), (b_lo, b_hi) = ra.range_of(op.operands[0]), ra.range_of(op.operands[1])
    return a_lo - b_hi, a_hi - b_lo


def _mul(ra, op) -> Interval:
    (a_lo, a_hi), (b_lo, b_hi) = ra.range_of(op.operands[0]), ra.range_of(op.operands[1])
    products = np.stack(np.broadcast_arrays(a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi))
    return products.min(axis=0), products.max(axis=0)


def _reduce_sum(ra, op) -> Interval:
    x = op.operands[0]
    lo, hi = ra.range_of(x)
    rank = x.type.rank
    axes = [a % rank for a in (op.attr("axes") or range(rank))]
    keepdims = bool(op.attr("keepdims"))
    out = []
    for bound in (lo, hi):
        b = np.asarray(bound)
        if b.ndim == 0:
            count = int(np.prod([x.type.shape[a] for a in axes]))
            out.append(b * count)
            continue
        factor = int(np.prod([x.type.shape[a] for a in axes if b.shape[a] == 1]))
        summed = (b * factor).sum(axis=tuple(axes), keepdims=True)
        if not keepdims:
            summed = summed.reshape([d for i, d in enumerate(summed.shape) if i not in axes])
        out.append(summed)
    return out[0], out[1]


def _sumpool(ra, op) -> Interval:
    lo, hi = ra.range_of(op.operands[0])
    count = int(np.prod(op.attr("kernel_shape")))
    if any(int(p) != 0 for p in (op.attr("pads") or [])):
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    return lo * count, hi * count


def _same(ra, op) -> Interval:
    return ra.range_of(op.operands[0])


def _shape_changing(ra, op) -> Interval:
    return _scalar(ra.range_of(op.operands[0]))


def _transpose(ra, op) -> Interval:
    lo, hi = ra.range_of(op.operands[0])
    if np.ndim(lo) == 0:
        return lo, hi
    perm = list(op.attr("perm"))
    return np.transpose(lo, perm), np.transpose(hi, perm)


def _pad(ra, op) -> Interval:
    lo, hi = _scalar(ra.range_of(op.operands[0]))
    value = int(op.attr("value") or 0)
    return min(lo, value), max(hi, value)


def _clip(ra, op) -> Interval:
    lo, hi = ra.range_of(op.operands[0])
    c_lo, c_hi = int(op.attr("min")), int(op.attr("max"))
    return np.clip(lo, c_lo, c_hi), np.clip(hi, c_lo, c_hi)


def _requant(ra, op) -> Interval:
    signed, n = bool(op.attr("signed")), int(op.attr("n_levels"))
    return (-(n // 2), n // 2 - 1) if signed else (0, n - 1)


def _igelu(ra, op) -> Interval:
    # iGELU is a fixed function of an 8-bit input: evaluate it on the input's whole range
    lo, hi = ra.scalar_range(op.operands[0])
    y = igelu(np.arange(lo, hi + 1), int(op.attr("b")), int(op.attr("one")))
    return np.int64(y.min()), np.int64(y.max())


def _concat(ra, op) -> Interval:
    bounds = [_scalar(ra.range_of(v)) for v in op.operands]
    return min(b[0] for b in bounds), max(b[1] for b in bounds)


_RULES = {
    "int.conv": _conv,
    "int.gemm": _gemm,
    "int.matmul": _matmul,
    "int.add": _add,
    "int.sub": _sub,
    "int.mul": _mul,
    "int.reduce_sum": _reduce_sum,
    "int.sumpool": _sumpool,
    "int.maxpool": _same,
    "int.clip": _clip,
    "int.pad": _pad,
    "int.reshape": _shape_changing,
    "int.flatten": _shape_changing,
    "int.squeeze": _shape_changing,
    "int.unsqueeze": _shape_changing,
    "int.transpose": _transpose,
    "int.gather": _shape_changing,
    "int.slice": _shape_changing,
    "int.concat": _concat,
    "int.requant_shift": _requant,
    "int.igelu": _igelu,
}
