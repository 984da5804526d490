"""`add-rescale`: Add/Sub of operands at different scales, exactly, in a common int32 scale; Concat by requants."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..qir.ir import Module, Operation, Value
from ..qir.passes import ModulePass, register_pass
from ..qir.types import TensorType
from .common import acc_type, dcast_source, emit_requant, fail, int_const, replace_with_int
from .numerics import rational_multipliers
from .ranges import RangeAnalysis

#: the rescaled sum stays below 2^SUM_BITS so that the requant after it keeps >= 12 bits of multiplier precision
SUM_BITS = 19
#: worst tolerated error of the approximate scale ratio, in output steps
MAX_ERROR_STEPS = 0.25


@register_pass
class AddRescale(ModulePass):
    """Lower Add/Sub of two quantized operands by integer rescaling into one common int32 scale.

    Before: `%y = onnx.Add(dcast %a : (s_a, z_a), dcast %b : (s_b, z_b))`.
    After:  `%a' = int.mul(%a, m_a)`, `%b' = int.mul(%b, m_b)` (skipped when a multiplier is 1),
    `%s = int.add(%a', %b') : !quant.uniform<i32:f32, s_c:z_a*m_a + z_b*m_b>`, `%y = quant.dcast %s`, where
    s_c = s_a / m_a = s_b / m_b: exactly when the scale ratio is a small rational (equal scales, 2x, 255/128, ...),
    otherwise with the largest power-of-two multipliers that keep |sum| < 2^19 (the requant that requant-fusion puts
    after the sum then keeps 12 bits of precision).  The zero points live in the sum's type and requant-fusion folds
    them into its `add`; raw operands at different scales are never summed.
    Concat of operands of different quant types followed by quantizers of one type T: each operand is requantized to
    T, then int.concat; the quantizer disappears.
    Precondition: per-tensor operand types; an approximate ratio must stay within 1/4 output step (else
    LoweringError naming the node).
    """

    name = "add-rescale"

    def run(self, module: Module) -> None:
        rescale_adds(module)


def rescale_adds(module: Module, ranges: Optional[RangeAnalysis] = None) -> int:
    ranges = ranges or RangeAnalysis()
    count = 0
    for op in module.ops():
        if op.module is not module:
            continue
        if op.name in ("onnx.Add", "onnx.Sub"):
            count += _add(module, op, ranges)
        elif op.name == "onnx.Concat":
            count += _concat(module, op, ranges)
    if count:
        module.erase_dead()
    return count


def choose_common_scale(op: Operation, s_a: float, r_a: int, s_b: float, r_b: int,
                        out_span_steps: Optional[Tuple[float, float]] = None) -> Tuple[int, int]:
    """Integer multipliers (m_a, m_b) with s_a / m_a ~= s_b / m_b.

    r_a, r_b bound |a - z_a| and |b - z_b|.  Exact when the ratio is a rational with small terms, else powers of two
    for the smaller-scale operand.  out_span_steps: the operands' worst contributions in output steps, to bound the
    approximation error."""
    r_a, r_b = max(int(r_a), 1), max(int(r_b), 1)
    if s_a >= s_b:
        m_large, m_small = _multipliers(op, s_a / s_b, r_a, r_b, out_span_steps and out_span_steps[0])
        return m_large, m_small
    m_large, m_small = _multipliers(op, s_b / s_a, r_b, r_a, out_span_steps and out_span_steps[1])
    return m_small, m_large


def _multipliers(op, ratio: float, r_large: int, r_small: int, large_steps: Optional[float]) -> Tuple[int, int]:
    """(m_large, m_small) for operands with scale ratio s_large / s_small = ratio >= 1."""
    budget = 1 << SUM_BITS
    max_m = max(1, budget // (r_large + r_small))
    exact = rational_multipliers(ratio, min(max_m * 1, 4096))
    if exact is not None:
        m_small, m_large = exact
        if r_large * m_large + r_small * m_small <= budget:
            return m_large, m_small
    best = None
    for j in range(0, 31):
        m_small = 1 << j
        m_large = int(round(m_small * ratio))
        if r_large * m_large + r_small * m_small > budget:
            break
        best = (m_large, m_small)
    if best is None:
        raise fail(op, f"operand ranges too wide to rescale into one int32 scale (ratio {ratio:.6g})")
    m_large, m_small = best
    rel = abs(m_large / m_small - ratio) / ratio
    steps = (large_steps if large_steps is not None else 256.0) * rel
    if steps > MAX_ERROR_STEPS:
        raise fail(op, f"the scale ratio {ratio:.9g} of the operands cannot be approximated within "
                       f"{MAX_ERROR_STEPS} output step in int32 (best {m_large}/{m_small}, error {steps:.3g} steps)")
    return m_large, m_small


def _out_steps(op: Operation, s: float, r: int) -> Optional[float]:
    """The largest contribution of an operand to the quantized output, in output steps (when a quantizer follows)."""
    steps = []
    for user in op.results[0].users:
        if user.name == "quant.qcast":
            ot = user.results[0].type.quant
            steps.append(r * s / min(ot.scales) if ot.is_per_axis else r * s / ot.scale)
    if not steps:
        return None
    # beyond the output's own range the result saturates, so a larger contribution adds no error there
    return min(max(steps), 512.0)


def _add(module: Module, op: Operation, ranges: RangeAnalysis) -> int:
    a, b = dcast_source(op.operands[0]), dcast_source(op.operands[1])
    if a is None or b is None or a.type.quant.is_per_axis or b.type.quant.is_per_axis:
        return 0
    aq, bq = a.type.quant, b.type.quant
    a_lo, a_hi = ranges.scalar_range(a)
    b_lo, b_hi = ranges.scalar_range(b)
    r_a = max(abs(a_lo - aq.zero_point), abs(a_hi - aq.zero_point))
    r_b = max(abs(b_lo - bq.zero_point), abs(b_hi - bq.zero_point))
    steps = (_out_steps(op, aq.scale, r_a), _out_steps(op, bq.scale, r_b))
    m_a, m_b = choose_common_scale(op, aq.scale, r_a, bq.scale, r_b, steps)
    s_common = bq.scale / m_b if aq.scale >= bq.scale else aq.scale / m_a
    a_scaled = _scaled(module, a, m_a, s_common, op.loc)
    b_scaled = _scaled(module, b, m_b, s_common, op.loc)
    sign = 1 if op.name == "onnx.Add" else -1
    zero = aq.zero_point * m_a + sign * bq.zero_point * m_b
    rtype = acc_type(op.results[0].type.shape, [s_common], [zero])
    replace_with_int(module, op, "int.add" if sign == 1 else "int.sub", [a_scaled, b_scaled], rtype, {})
    return 1


def _scaled(module: Module, x: Value, m: int, s_common: float, loc: str) -> Value:
    """x * m as an int32 value at scale s_common (its zero point scaled by m)."""
    xq = x.type.quant
    if m == 1:
        return x  # the sum's type carries s_common; a multiply by one would change nothing
    factor = int_const(module, np.array([m]), loc)
    rtype = acc_type(x.type.shape, [s_common], [xq.zero_point * m])
    return module.create("int.mul", [x, factor], [rtype], {}, loc).result


def _concat(module: Module, op: Operation, ranges: RangeAnalysis) -> int:
    sources = [dcast_source(v) for v in op.operands]
    if not sources or any(s is None for s in sources):
        return 0
    users = op.results[0].users
    if not users or any(u.name != "quant.qcast" for u in users):
        return 0
    out_element = users[0].results[0].type.element
    if any(u.results[0].type.element != out_element for u in users):
        return 0
    parts = []
    for s in sources:
        if s.type.element == out_element:
            parts.append(s)
        else:
            parts.append(emit_requant(module, ranges, s, TensorType(s.type.shape, out_element), loc=op.loc,
                                      op_for_errors=op))
    concat = module.create("int.concat", parts, [TensorType(op.results[0].type.shape, out_element)],
                           {"axis": int(op.attr("axis"))}, op.loc)
    for user in users:
        module.replace_op(user, [concat.result])
    return 1
