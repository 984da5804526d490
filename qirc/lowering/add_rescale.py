"""`add-rescale`: Add/Sub of operands at different scales, exactly, in a common int32 scale; Concat by requants."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..qir.diagnostics import LoweringError
from ..qir.ir import Module, Operation, Value
from ..qir.passes import ModulePass, register_pass
from ..qir.types import TensorType, UniformQuantType
from .common import acc_type, dcast_source, emit_requant, fail, int_const, real_const, replace_with_int
from .numerics import INT32_LIMIT, choose_requant, form_bounds, rational_multipliers, requant_form, unsaturated_span
from .ranges import RangeAnalysis

#: without a quantizer after the sum (no output step to measure against): the rescaled sum stays below 2^SUM_BITS
#: so that whatever requant follows keeps >= 12 bits of multiplier precision
SUM_BITS = 19
#: without a quantizer after the sum: worst tolerated error of the approximate scale ratio, in steps of a notional
#: 256-step output
MAX_ERROR_STEPS = 0.25
#: with quantizers after the sum: the approximation error of the scale ratio plus that of the requant after the sum,
#: over the sums that do not saturate, stays BELOW one output step (DESIGN.md section 3) when any candidate allows it;
#: otherwise the cheapest candidate is taken (refused only under strict precision)
MAX_TOTAL_ERROR_STEPS = 1.0
#: the largest multiplier of an exact (rational) common scale; larger exact terms are still found as approximations
MAX_EXACT_MULTIPLIER = 4096
#: ops between the sum and its quantizer that keep "the output saturates" meaningful: monotone or shape-only, and
#: range-preserving for the requant that requant-fusion puts after them
_TRANSPARENT = ("onnx.Relu", "onnx.Clip", "onnx.MaxPool", "onnx.Flatten", "onnx.Reshape", "onnx.Transpose",
                "onnx.Squeeze", "onnx.Unsqueeze", "onnx.Gather", "onnx.Slice")


@register_pass
class AddRescale(ModulePass):
    """Lower Add/Sub of two quantized operands by integer rescaling into one common int32 scale.

    Before: `%y = onnx.Add(dcast %a : (s_a, z_a), dcast %b : (s_b, z_b))`.
    After:  `%a' = int.mul(%a, m_a)`, `%b' = int.mul(%b, m_b)` (skipped when a multiplier is 1),
    `%s = int.add(%a', %b') : !quant.uniform<i32:f32, s_c:z_a*m_a + z_b*m_b>`, `%y = quant.dcast %s`, where
    s_c = s_a / m_a = s_b / m_b: exactly when the scale ratio is a small rational (equal scales, 2x, 255/128, ...),
    otherwise s_c = s_small / m_small with (m_large, m_small) a continued-fraction convergent or a power-of-two
    approximation of the ratio.  When the sum reaches quantizers (through Relu/Clip/MaxPool/shape ops), the
    multipliers minimise, over the candidates, the ratio's approximation error plus the error of the requant after
    the sum (whose shift shrinks as the sum widens), both measured in output steps over the sums that do not
    saturate; range analysis bounds operands * multipliers, the sum and the requant's x * mul + add + div/2 within
    int32.  Without a quantizer after it, the sum stays below 2^19 (power-of-two multipliers).  The zero points live
    in the sum's type and requant-fusion folds them into its `add`; raw operands at different scales are never summed.
    An operand may also be such a dcast times a positive scalar constant (onnx.Mul: its scale is s * c), through an
    onnx.Relu (its stored integers max(q, z) by int.clip): LeakyRelu's (1 - alpha) * Relu(x) + alpha * x, or
    `relu(a) * 0.5 + b` with no quantizer in between.
    Concat of operands of different quant types followed by quantizers of one type T: each operand is requantized to
    T, then int.concat; the quantizer disappears.
    Precondition: per-tensor operand types.  When no candidate keeps the approximation error plus the requant's
    below 1 output step, the cheapest one is used; option strict (bool, default 0) refuses that instead
    (LoweringError naming the node).
    """

    name = "add-rescale"
    strict: bool = False

    def run(self, module: Module) -> None:
        rescale_adds(module, strict=self.strict)


def rescale_adds(module: Module, ranges: Optional[RangeAnalysis] = None, strict: bool = False,
                 records: Optional[List[Dict]] = None) -> int:
    """Rescale every Add/Sub (and Concat) of `module`; returns how many were lowered.  `records`, when given, gets
    one `rescale_record` per Add/Sub whose common scale was judged against the quantizers after it."""
    ranges = ranges or RangeAnalysis()
    count = 0
    for op in module.ops():
        if op.module is not module:
            continue
        if op.name in ("onnx.Add", "onnx.Sub"):
            count += _add(module, op, ranges, strict, records)
        elif op.name == "onnx.Concat":
            count += _concat(module, op, ranges, strict)
    if count:
        module.erase_dead()
    return count


def choose_common_scale(op: Operation, s_a: float, r_a: int, s_b: float, r_b: int,
                        out_span_steps: Optional[Tuple[float, float]] = None) -> Tuple[int, int]:
    """Integer multipliers (m_a, m_b) with s_a / m_a ~= s_b / m_b.

    r_a, r_b bound |a - z_a| and |b - z_b|.  Exact when the ratio is a rational with small terms, else powers of two
    for the smaller-scale operand, keeping the sum below 2^SUM_BITS.  out_span_steps: the operands' worst
    contributions in output steps, to bound the approximation error.  This is the choice for a sum that reaches no
    quantizer (so no output step to measure in); `choose_rescale` is the one for sums that do."""
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


def _same_scale(s_a: float, r_a: int, s_b: float, r_b: int) -> bool:
    """Scales that differ by float rounding only: reading one operand at the other's scale moves no reachable value
    by more than 1/16 of a step, and the plain int32 sum cannot overflow."""
    return abs(s_a / s_b - 1.0) * max(r_a, r_b, 1) < 1 / 16 and r_a + r_b < INT32_LIMIT


def rescale_record(op: Operation, plan: "RescalePlan", ratio: float) -> Dict:
    """What qirc.json records (accuracy.add_rescales) for an Add/Sub rescaled by `plan`:

        node                 the Add/Sub's location
        scale_ratio          s_large / s_small of its operands
        multipliers          [m_a, m_b], the integer factors of the operands into the common scale
        exact                the common scale is exact (a rational ratio)
        ratio_error_steps    worst error of the approximate ratio, in output steps, over the sums that do not
                             saturate the quantizers after it
        requant_error_steps  the bound on the requant after the sum used to choose the multipliers
        bound_steps          their sum: at one output step or more the Add is warned about (`--strict` refuses it)
        output               the quantizer after the sum the steps are counted in (scale, zero_point, min, max:
                             the finest scale when there are several)

    (`precision.requant_precision(..., add_records=...)` adds what the chosen multipliers do on the samples.)
    """
    return {"node": op.loc, "op": op.name.split(".", 1)[1], "scale_ratio": ratio,
            "multipliers": [plan.m_a, plan.m_b], "exact": plan.exact, "ratio_error_steps": plan.add_error_steps,
            "requant_error_steps": plan.requant_error_steps, "bound_steps": plan.error_steps}


@dataclass(frozen=True)
class _Term:
    """An Add/Sub operand as c * [Relu](dcast q): the quantized value q, the operand's scale s_q * c and zero point,
    the stored values it can hold, and whether it is q's ReLU (max(q, zero point) in the stored domain)."""

    source: Value
    scale: float
    zero_point: int
    lo: int
    hi: int
    relu: bool


def _term(value: Value, ranges: RangeAnalysis) -> Optional[_Term]:
    """`value` as a _Term: dcast(q), or that times a positive scalar constant (onnx.Mul; LeakyRelu's two branches,
    `relu(a) * 0.5 + b` with no quantizer between), through an onnx.Relu; per-tensor q only; None otherwise."""
    factor, relu = 1.0, False
    op = value.owner
    if op.name == "onnx.Mul" and len(value.uses) == 1:
        for i in (0, 1):
            c = real_const(op.operands[1 - i])
            if c is not None and c.size == 1 and np.isfinite(c).all() and float(c.reshape(())) > 0:
                factor, value = float(c.reshape(())), op.operands[i]
                op = value.owner
                break
        else:
            return None
    if op.name == "onnx.Relu" and len(value.uses) == 1:
        relu, value = True, op.operands[0]
    q = dcast_source(value)
    if q is None or q.type.quant.is_per_axis:
        return None
    qt = q.type.quant
    lo, hi = ranges.scalar_range(q)
    if relu:
        lo, hi = max(lo, qt.zero_point), max(hi, qt.zero_point)
    return _Term(q, qt.scale * factor, qt.zero_point, lo, hi, relu)


def _term_value(module: Module, t: _Term, loc: str) -> Value:
    """The stored integers of the term: q, or its ReLU as int.clip(q, zero point, storage max)."""
    if not t.relu:
        return t.source
    qt = t.source.type.quant
    return module.create("int.clip", [t.source], [t.source.type], {"min": int(qt.zero_point),
                                                                   "max": int(qt.storage_max)}, loc).result


def _add(module: Module, op: Operation, ranges: RangeAnalysis, strict: bool = False,
         records: Optional[List[Dict]] = None) -> int:
    ta, tb = _term(op.operands[0], ranges), _term(op.operands[1], ranges)
    if ta is None or tb is None:
        return 0
    sign = 1 if op.name == "onnx.Add" else -1
    outputs = _quantizers_after(op)
    if outputs is not None:
        plan = choose_rescale(op, Operand(ta.scale, ta.zero_point, ta.lo, ta.hi),
                              Operand(tb.scale, tb.zero_point, tb.lo, tb.hi), sign, outputs, strict=strict)
        m_a, m_b, s_common = plan.m_a, plan.m_b, plan.s_common
        if records is not None:
            rec = rescale_record(op, plan, max(ta.scale, tb.scale) / min(ta.scale, tb.scale))
            finest = min(outputs, key=lambda t: min(t.scales))
            rec["output"] = {"scale": float(min(finest.scales)), "zero_point": int(finest.zero_points[0]),
                             "min": int(finest.storage_min), "max": int(finest.storage_max)}
            records.append(rec)
    else:
        r_a = max(abs(ta.lo - ta.zero_point), abs(ta.hi - ta.zero_point))
        r_b = max(abs(tb.lo - tb.zero_point), abs(tb.hi - tb.zero_point))
        steps = (_out_steps(op, ta.scale, r_a), _out_steps(op, tb.scale, r_b))
        if _same_scale(ta.scale, r_a, tb.scale, r_b):
            # scales equal up to float rounding (a bias at the file's float32 s_x*s_w on a float64 accumulator
            # scale): the sum of the stored integers is exact, whatever the range, as long as it fits int32
            m_a, m_b, s_common = 1, 1, ta.scale
        else:
            m_a, m_b = choose_common_scale(op, ta.scale, r_a, tb.scale, r_b, steps)
            s_common = tb.scale / m_b if ta.scale >= tb.scale else ta.scale / m_a
    a_scaled = _scaled(module, _term_value(module, ta, op.loc), m_a, s_common, op.loc)
    b_scaled = _scaled(module, _term_value(module, tb, op.loc), m_b, s_common, op.loc)
    zero = ta.zero_point * m_a + sign * tb.zero_point * m_b
    rtype = acc_type(op.results[0].type.shape, [s_common], [zero])
    replace_with_int(module, op, "int.add" if sign == 1 else "int.sub", [a_scaled, b_scaled], rtype, {})
    return 1


# ----- multipliers judged against the quantizers after the sum -------------------------------------------------------
@dataclass(frozen=True)
class Operand:
    """A quantized operand of an Add/Sub: its scale, zero point and the stored values it can hold (lo..hi)."""

    scale: float
    zero_point: int
    lo: int
    hi: int


@dataclass(frozen=True)
class RescalePlan:
    """The integer multipliers of an Add/Sub, its common scale, and the errors they cost in output steps."""

    m_a: int
    m_b: int
    s_common: float
    exact: bool
    add_error_steps: float       # the scale ratio's approximation, over the sums that do not saturate
    requant_error_steps: float   # bound on the requant after the sum (mul / 2^k against M), likewise

    @property
    def error_steps(self) -> float:
        return self.add_error_steps + self.requant_error_steps


def choose_rescale(op: Optional[Operation], a: Operand, b: Operand, sign: int,
                   outputs: Sequence[UniformQuantType], strict: bool = False) -> RescalePlan:
    """Multipliers for `a + sign * b` whose result is quantized to each of `outputs` (after monotone ops).

    Candidates: the exact rational ratio (terms <= MAX_EXACT_MULTIPLIER), the continued-fraction convergents of the
    ratio and power-of-two multipliers of the smaller-scale operand.  A candidate is admissible when operands *
    multipliers and the sum fit int32 and the requant after the sum exists (`choose_requant` on the sum's range);
    its cost is the ratio's error plus a bound on that requant's error, over the sums that do not saturate.  The
    exact candidate is taken when admissible and no more costly than the best approximation; otherwise the cheapest
    candidate; with `strict`, only if its cost stays below MAX_TOTAL_ERROR_STEPS (else LoweringError naming `op`).
    """
    large, small = (a, b) if a.scale >= b.scale else (b, a)
    ratio = large.scale / small.scale
    best: Optional[RescalePlan] = None
    requant_failure: Optional[str] = None
    for m_large, m_small, exact in _candidates(ratio):
        m_a, m_b = (m_large, m_small) if a.scale >= b.scale else (m_small, m_large)
        s_common = small.scale / m_small
        try:
            plan = _evaluate(a, b, sign, m_a, m_b, s_common, exact, outputs)
        except LoweringError as e:
            requant_failure = requant_failure or f"{max(m_a, m_b)}/{min(m_a, m_b)}: {e.message}"
            continue
        if plan is not None and (best is None or plan.error_steps < best.error_steps - 1e-12):
            best = plan
    if best is None and requant_failure is not None:
        raise fail(op, f"no common int32 scale of the operands (scale ratio {ratio:.9g}) leaves a faithful requant "
                       f"after the sum (with {requant_failure})")
    if best is None:
        raise fail(op, f"operand ranges too wide to rescale into one int32 scale (scale ratio {ratio:.9g}, stored "
                       f"ranges {a.lo}..{a.hi} and {b.lo}..{b.hi})")
    if strict and best.error_steps >= MAX_TOTAL_ERROR_STEPS:
        raise fail(op, f"the scale ratio {ratio:.9g} of the operands cannot be approximated in int32 within "
                       f"{MAX_TOTAL_ERROR_STEPS:g} output step (best {max(best.m_a, best.m_b)}/"
                       f"{min(best.m_a, best.m_b)}: error {best.add_error_steps:.3g} steps of the ratio plus "
                       f"{best.requant_error_steps:.3g} of the requant after the sum); refused under --strict")
    return best


def _candidates(ratio: float) -> Iterator[Tuple[int, int, bool]]:
    """(m_large, m_small, exact) candidates for a ratio >= 1, the exact one first, without repeats."""
    seen = set()
    exact = rational_multipliers(ratio, MAX_EXACT_MULTIPLIER)
    if exact is not None:
        seen.add((exact[1], exact[0]))
        yield exact[1], exact[0], True
    approximations = list(_convergents(ratio, INT32_LIMIT))
    approximations += [(int(round((1 << j) * ratio)), 1 << j) for j in range(31)]
    for m_large, m_small in approximations:
        if m_large < 1 or m_large >= INT32_LIMIT or (m_large, m_small) in seen:
            continue
        seen.add((m_large, m_small))
        yield m_large, m_small, False


def _convergents(x: float, limit: int) -> Iterator[Tuple[int, int]]:
    """The continued-fraction convergents p/q of x > 0 with p, q < limit (the best rational approximations)."""
    p_prev, q_prev, p, q = 1, 0, int(np.floor(x)), 1
    rest = x - np.floor(x)
    while p < limit and q < limit:
        yield p, q
        if rest < 1e-12:
            return
        x = 1.0 / rest
        term = int(np.floor(x))
        rest = x - term
        p_prev, q_prev, p, q = p, q, term * p + p_prev, term * q + q_prev


def _evaluate(a: Operand, b: Operand, sign: int, m_a: int, m_b: int, s_common: float, exact: bool,
              outputs: Sequence[UniformQuantType]) -> Optional[RescalePlan]:
    """The plan for these multipliers; None when operands * multipliers or the sum can overflow int32; the
    LoweringError of `choose_requant` when the requant after the sum cannot be both in range and faithful."""
    for x, m in ((a, m_a), (b, m_b)):
        if max(abs(x.lo), abs(x.hi)) * m >= INT32_LIMIT:
            return None
    b_part = (b.lo * m_b, b.hi * m_b) if sign == 1 else (-b.hi * m_b, -b.lo * m_b)
    sum_lo, sum_hi = a.lo * m_a + b_part[0], a.hi * m_a + b_part[1]
    if sum_lo < -INT32_LIMIT or sum_hi >= INT32_LIMIT:
        return None
    zero = a.zero_point * m_a + sign * b.zero_point * m_b
    add_error = requant_error = 0.0
    for ot in outputs:
        s_out = np.asarray(ot.scales, dtype=np.float64).reshape(-1)
        z_out = np.asarray(ot.zero_points, dtype=np.int64).reshape(-1)
        add_error = max(add_error, _ratio_error(a, b, sign, m_a, m_b, s_common, s_out, z_out,
                                                int(ot.storage_min), int(ot.storage_max)))
        signed, n_levels, _ = requant_form(ot.storage_min, ot.storage_max)
        form_lo, form_hi = form_bounds(signed, n_levels)
        multiplier = s_common / s_out
        params = choose_requant(multiplier, zero, z_out, sum_lo, sum_hi, form_lo, form_hi)
        # requant-fusion sees this range or a narrower one (per channel, after a clip), so its shift is at least
        # params.shift: half a unit of mul at this shift bounds its error over the unsaturated inputs
        span = unsaturated_span(z_out, form_lo, form_hi)
        dist = float(max(abs(sum_lo - zero), abs(sum_hi - zero)))
        relevant = np.minimum(dist, span / multiplier)
        requant_error = max(requant_error, float(np.max(relevant)) / float(1 << (params.shift + 1)))
    return RescalePlan(int(m_a), int(m_b), float(s_common), exact, add_error, requant_error)


def _ratio_error(a: Operand, b: Operand, sign: int, m_a: int, m_b: int, s_common: float, s_out: np.ndarray,
                 z_out: np.ndarray, out_lo: int, out_hi: int) -> float:
    """The largest error, in output steps, of reading A*m_a + B*m_b at s_common instead of A*s_a + B*s_b
    (A = a - z_a, B = sign * (b - z_b)) over the operand pairs whose sum does not saturate the output.

    A pair whose real sum lies beyond the output range by more than the worst error over the whole range (E)
    saturates in the integer graph too, and a MaxPool between sum and quantizer picks among values within E of
    the maximum; so the measured region is the real sum within 1 + 2E steps of the output range."""
    d_a = abs(a.scale - m_a * s_common) / s_out
    d_b = abs(b.scale - m_b * s_common) / s_out
    a_lo, a_hi = float(a.lo - a.zero_point), float(a.hi - a.zero_point)
    b_lo, b_hi = float(b.lo - b.zero_point), float(b.hi - b.zero_point)
    if sign == -1:
        b_lo, b_hi = -b_hi, -b_lo
    whole = max(abs(a_lo), abs(a_hi)) * d_a + max(abs(b_lo), abs(b_hi)) * d_b
    margin = 1.0 + 2.0 * whole
    lo = out_lo - z_out - margin  # bounds on alpha * A + beta * B, in output steps
    hi = out_hi - z_out + margin
    alpha, beta = a.scale / s_out, b.scale / s_out
    a_in = _largest_abs(np.maximum(a_lo, (lo - beta * b_hi) / alpha), np.minimum(a_hi, (hi - beta * b_lo) / alpha))
    b_in = _largest_abs(np.maximum(b_lo, (lo - alpha * a_hi) / beta), np.minimum(b_hi, (hi - alpha * a_lo) / beta))
    return float(np.max(a_in * d_a + b_in * d_b))


def _largest_abs(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """max |v| over the interval [lo, hi]; 0 where it is empty."""
    return np.where(lo > hi, 0.0, np.maximum(np.abs(lo), np.abs(hi)))


def _quantizers_after(op: Operation) -> Optional[List[UniformQuantType]]:
    """The quant types of the quantizers the sum reaches through `_TRANSPARENT` ops, or None when some path ends
    elsewhere (another Add, a pool, a graph output): then there is no output step to measure the error in."""
    found: List[UniformQuantType] = []
    frontier = [op.results[0]]
    while frontier:
        value = frontier.pop()
        if not value.users:
            return None
        for user in value.users:
            if user.name == "quant.qcast":
                found.append(user.results[0].type.quant)
            elif user.name in _TRANSPARENT and user.operands[0] is value:
                frontier.append(user.results[0])
            else:
                return None
    return found or None


def _scaled(module: Module, x: Value, m: int, s_common: float, loc: str) -> Value:
    """x * m as an int32 value at scale s_common (its zero point scaled by m)."""
    xq = x.type.quant
    if m == 1:
        return x  # the sum's type carries s_common; a multiply by one would change nothing
    factor = int_const(module, np.array([m]), loc)
    rtype = acc_type(x.type.shape, [s_common], [xq.zero_point * m])
    return module.create("int.mul", [x, factor], [rtype], {}, loc).result


def _concat(module: Module, op: Operation, ranges: RangeAnalysis, strict: bool = False) -> int:
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
                                      op_for_errors=op, strict=strict))
    concat = module.create("int.concat", parts, [TensorType(op.results[0].type.shape, out_element)],
                           {"axis": int(op.attr("axis"))}, op.loc)
    for user in users:
        module.replace_op(user, [concat.result])
    return 1
