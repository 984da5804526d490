"""QONNX Trunc (Brevitas' TruncAvgPool2d) on platforms whose RequantShift writes 8 bits and whose Adds are 8-bit.

The ONNX frontend lowers a Trunc with rounding_mode ROUND (half to even) exactly: q on the input grid (often 10 bits
after a 2x2 sum pool), then t = floor((q + p - 1 + 2^(k-1)) / 2^k) with the parity p of floor(q / 2^k) computed by
two more RequantShifts, an int.mul and two int.adds.  Siracusa and cortex-m take none of the 10-bit grid, the int32
Adds or the parity, so there the Trunc is ONE round-half-up RequantShift from q, t = floor((q + 2^(k-1)) / 2^k):
it differs from half-to-even only where q / 2^k is exactly a tie, by one step, which is the one-step tie allowance of
the requantization contract (DESIGN.md section 3; docs/targets.md).  When q itself is an exact integer shift of the
pool's sum that never clips (mul = div, add a multiple of div, the sum's range inside the grid), it folds into that
one RequantShift too, so no 10-bit tensor is left.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ....qir.ir import Module, Operation, Value
from ..targets import DeeployTarget
from .common import const_value
from .rule import rule


def _requant(v: Value) -> Optional[Operation]:
    return v.owner if v.owner.name == "int.requant_shift" else None


def _parity_sum(t: Operation):
    """(q, s) when t's operand s = int.add(q, p) with p the parity of floor(q / 2^k) as the frontend writes it."""
    s = t.operands[0]
    if s.owner.name != "int.add":
        return None
    for q, p in (s.owner.operands, reversed(s.owner.operands)):
        p_rq = _requant(p)
        if p_rq is None or p_rq.operands[0].owner.name != "int.add":
            continue
        a, m = p_rq.operands[0].owner.operands
        if m.owner.name != "int.mul":
            a, m = m, a
        if m.owner.name != "int.mul" or _requant(a) is None or a.owner.operands[0] is not q:
            continue
        b, k = m.owner.operands
        kv = const_value(k)
        if kv is None or kv.size != 1 or int(kv.reshape(())) != -2 or _requant(b) is None or \
                b.owner.operands[0] is not q:
            continue
        return q, s
    return None


@rule("trunc-round-half-up", when="signed_normalize")
def trunc_round_half_up(module: Module, target: DeeployTarget) -> None:
    """A QONNX Trunc rounding half to even (the frontend's exact parity form) -> one round-half-up RequantShift from
    its input grid, folded into the requant onto that grid when it is an exact shift that never clips (see the
    module docstring: the difference is the one-step tie allowance)."""
    for t in module.walk("int.requant_shift"):
        if t.module is not module:
            continue
        found = _parity_sum(t)
        if found is None:
            continue
        q, _ = found
        div = int(t.attr("div"))
        add = np.asarray(t.attr("add"), np.int64) + 1  # t = floor((q + p - 1 + div/2) / div) without p and the -1
        mul = np.asarray(t.attr("mul"), np.int64)
        source = q
        grid = _requant(q)
        if grid is not None and _exact_unclipped_shift(grid):
            # q = x + c exactly: t = floor((x + c) * mul + add + div/2) / div)
            c = int(np.asarray(grid.attr("add")).reshape(-1)[0]) // int(grid.attr("div"))
            add = add + c * mul
            source = grid.operands[0]
        t.attrs["add"] = add
        module.set_operand(t, 0, source)
    module.erase_dead()


def _exact_unclipped_shift(rq: Operation) -> bool:
    """rq(x) = x + c for every reachable x: mul == div, add a multiple of div (one value), no clipping."""
    mul = np.asarray(rq.attr("mul"), np.int64).reshape(-1)
    add = np.asarray(rq.attr("add"), np.int64).reshape(-1)
    div = int(rq.attr("div"))
    if mul.size != 1 or add.size != 1 or int(mul[0]) != div or int(add[0]) % div:
        return False
    c = int(add[0]) // div
    n = int(rq.attr("n_levels"))
    lo, hi = (-(n // 2), n // 2 - 1) if rq.attr("signed") else (0, n - 1)
    x_lo, x_hi = _range(rq.operands[0])
    return x_lo is not None and lo <= x_lo + c and x_hi + c <= hi


def _range(v: Value):
    """Bounds of a sum pool's output from its input's storage range (the only producer this fold needs)."""
    op = v.owner
    if op.name not in ("int.sumpool", "int.reduce_sum"):
        return None, None
    x = op.operands[0]
    lo, hi = int(x.type.element.min), int(x.type.element.max)
    if op.name == "int.sumpool":
        count = int(np.prod(op.attr("kernel_shape")))
        if any(int(p) for p in (op.attr("pads") or [])):
            lo, hi = min(lo, 0), max(hi, 0)
    else:
        count = int(np.prod([x.type.shape[a] for a in op.attr("axes")]))
    return lo * count, hi * count
