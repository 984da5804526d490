"""`scale-fold`: a float Div or Mul by a positive scalar constant right after a dequantizer becomes part of the
quantized value's scale (the attention's 1 / sqrt(head_dim) before `q_scaled_quant`)."""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..qir.ir import Module, Operation, Value
from ..qir.passes import ModulePass, register_pass
from .common import apply_rules, dcast_source, real_const


@register_pass
class ScaleFold(ModulePass):
    """Fold a Div/Mul by a positive scalar constant into the scale of the dequantized integer value it reads.

    Before: `%a = int.matmul ... : i32 @ s ; %f = quant.dcast %a ; %g = onnx.Div %f, 8.0` (or `onnx.Mul %f, 0.125`).
    After:  `%a = int.matmul ... : i32 @ s / 8 ; %g = quant.dcast %a`: the stored integers are unchanged and their type
    says what they mean now, so the requant that follows (the query quantizer of an attention) absorbs the factor
    exactly, with no float op and no extra rounding.
    Precondition: the constant is one positive finite number; the dcast reads a per-tensor or per-axis quantized
    value produced by an int.* op, and that value and the dcast have a single user.  The values retyped are it and,
    up through single-use shape-only int ops, those before it, up to the op that computes them or to a shape-only op
    whose input has other readers (then that op's result carries the new scale and its input the old: it moves the
    same integers).  Otherwise the op is left alone.
    """

    name = "scale-fold"

    def run(self, module: Module) -> None:
        fold_scales(module)


def fold_scales(module: Module) -> int:
    return apply_rules(module, _RULES)


def _factor(op: Operation) -> Optional[float]:
    """The positive factor the op multiplies its dequantized operand by, or None."""
    c = real_const(op.operands[1])
    if c is None and op.name == "onnx.Mul":
        c = real_const(op.operands[0])
    if c is None or c.size != 1:
        return None
    c = float(c.reshape(()))
    if not np.isfinite(c) or c <= 0:
        return None
    return 1.0 / c if op.name == "onnx.Div" else c


def _chain(value: Value) -> Optional[List[Value]]:
    """The values to retype: `value` and, through single-use shape-only int ops, back to the op computing it, or to
    the first shape-only op whose input has other readers (the packed in-projection's Slice of q out of q|k|v): that
    op then moves the integers onto the new scale, its input keeps the old one."""
    chain = []
    while True:
        op = value.owner
        if op.dialect != "int" or len(value.uses) != 1:
            return None
        chain.append(value)
        if "shape_only" not in op.opdef.traits or len(op.operands) != 1 or len(op.operands[0].uses) != 1:
            return chain
        value = op.operands[0]


def _fold(module: Module, op: Operation) -> bool:
    factor = _factor(op)
    if factor is None:
        return False
    data = op.operands[0] if op.name == "onnx.Div" or real_const(op.operands[1]) is not None else op.operands[1]
    source = dcast_source(data)
    if source is None or len(data.uses) != 1 or data.type.shape != op.results[0].type.shape:
        return False
    chain = _chain(source)
    if chain is None:
        return False
    if not all(v.type.is_quant for v in chain):
        return False
    for v in chain:
        q = v.type.quant
        v.type = v.type.with_element(q.with_(scales=tuple(float(s) * factor for s in q.scales)))
    module.replace_op(op, [data])
    return True


_RULES = {"onnx.Div": _fold, "onnx.Mul": _fold}
