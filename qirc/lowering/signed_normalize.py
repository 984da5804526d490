"""`signed-normalize`: move every unsigned 8-bit tensor to int8 (zero point - 128), compensating its consumers."""
from __future__ import annotations

from typing import Dict

import numpy as np

from ..qir.ir import Module, Operation, Value, pad_op
from ..qir.passes import ModulePass, register_pass
from ..qir.types import TensorType, i8, u8
from .common import fail, int_const
from .numerics import INT32_LIMIT
from .ranges import RangeAnalysis

_SHIFT = -128
_MOVE_OPS = ("int.maxpool", "int.reshape", "int.flatten", "int.transpose", "int.squeeze", "int.unsqueeze",
             "int.concat", "int.clip", "int.pad", "int.gather", "int.slice")


@register_pass
class SignedNormalize(ModulePass):
    """Store every u8 quantized tensor as i8 with zero point z - 128 (for targets whose kernels take only int8).

    Before: `%q = quant.qcast %x : !quant.uniform<u8:f32, s:z>` (or a u8 qir.input / requant_shift).
    After:  `%q = quant.qcast %x : !quant.uniform<i8:f32, s:z-128>`: every stored value is 128 lower and the type
    records it, so the real values are unchanged.  Run before the lowering (as lower-to-int does), the consumers are
    compensated by the ordinary zero-point handling (conv bias correction and zero-point padding, add rescaling,
    pool sums, requant add).  On already-lowered integer ops it compensates directly: int.conv/gemm/matmul get the
    bias correction b + 128 * sum(w[c]) and explicit -128 padding, int.pad values and int.clip bounds shift, a
    requant_shift reading a shifted tensor gets add += 128 * mul and one producing u8 becomes signed with
    add -= 128 * div; sums (int.add/sub/mul/reduce_sum/sumpool) record the shift in their type's zero point.
    Graph inputs and outputs record the new zero point in their types (the user feeds and reads shifted values).
    Constants are left as they are: unsigned weights would need a zero-point correction per window, which no
    integer conv expresses.  Precondition: a requant whose shifted intermediate would overflow int32 raises
    LoweringError.
    """

    name = "signed-normalize"

    def run(self, module: Module) -> None:
        signed_normalize(module)


def shifted_type(t: TensorType, delta: int) -> TensorType:
    """The type of a tensor whose stored values moved by `delta` (u8 storage becomes i8 for delta = -128)."""
    if delta == 0:
        return t
    if not t.is_quant:
        raise ValueError(f"{t} has no zero point to record a shift of {delta}")
    q = t.quant
    zps = tuple(z + delta for z in q.zero_points)
    if q.storage == u8 and delta == _SHIFT:
        element = q.with_(storage=i8, zero_points=zps, storage_min=q.storage_min + delta,
                          storage_max=q.storage_max + delta)
    else:
        element = q.with_(zero_points=zps)
    return t.with_element(element)


def _is_u8(t: TensorType) -> bool:
    return t.is_quant and t.quant.storage == u8


def signed_normalize(module: Module) -> int:
    delta: Dict[int, int] = {}
    ranges = RangeAnalysis()
    count = 0

    def d(v: Value) -> int:
        return delta.get(id(v), 0)

    for op in module.ops():
        name = op.name
        in_deltas = [d(v) for v in op.operands]
        if name in ("qir.input", "quant.qcast") and _is_u8(op.results[0].type):
            # a quantizer retyped to i8 with z - 128 computes exactly the old stored values minus 128
            value = op.results[0]
            value.type = shifted_type(value.type, _SHIFT)
            delta[id(value)] = _SHIFT  # dcasts read the new zero point from the type; int consumers compensate
            count += 1
        elif not any(in_deltas):
            if name == "int.requant_shift" and _is_u8(op.results[0].type):
                _requant_to_signed(op, ranges)
                delta[id(op.results[0])] = _SHIFT
                count += 1
            continue
        elif name in ("quant.dcast", "qir.output"):
            continue  # the operand's type carries the new zero point
        elif name in ("int.conv", "int.gemm", "int.matmul"):
            _linear(module, op, in_deltas)
            count += 1
        elif name == "int.requant_shift":
            mul = np.asarray(op.attrs["mul"], dtype=np.int64)
            op.attrs["add"] = np.asarray(op.attrs["add"], dtype=np.int64) - in_deltas[0] * mul
            if _is_u8(op.results[0].type):
                _requant_to_signed(op, ranges)
                delta[id(op.results[0])] = _SHIFT
            count += 1
        elif name in _MOVE_OPS:
            if len(set(in_deltas)) != 1:
                raise fail(op, "operands shifted by different amounts cannot be concatenated")
            shift = in_deltas[0]
            if name == "int.pad":
                op.attrs["value"] = int(op.attr("value") or 0) + shift
            if name == "int.clip":
                op.attrs["min"] = int(op.attr("min")) + shift
                op.attrs["max"] = int(op.attr("max")) + shift
            out = op.results[0]
            out.type = shifted_type(out.type, shift)
            delta[id(out)] = shift
            count += 1
        elif name in ("int.add", "int.sub", "int.mul", "int.reduce_sum", "int.sumpool"):
            shift = _sum_shift(op, in_deltas)
            out = op.results[0]
            if name == "int.sumpool" and any(int(p) for p in op.attr("pads")):
                raise fail(op, "a zero-padded sum pool of an unsigned tensor needs the padding made explicit "
                               "before signed-normalize")
            try:
                out.type = shifted_type(out.type, shift)
            except ValueError:
                raise fail(op, f"its result {out.type} has no zero point to record the signed shift") from None
            delta[id(out)] = shift
            count += 1
        else:
            raise fail(op, "cannot compensate the signed normalisation of its unsigned operand")
        for r in op.results:
            ranges.invalidate(r)
    return count


def _sum_shift(op: Operation, in_deltas) -> int:
    if op.name in ("int.add", "int.sub"):
        return in_deltas[0] + (in_deltas[1] if op.name == "int.add" else -in_deltas[1])
    if op.name == "int.mul":
        if in_deltas[1]:
            raise fail(op, "a multiplier constant cannot be unsigned-shifted")
        factor = op.operands[1]
        if factor.owner.name != "qir.const" or np.asarray(factor.owner.attrs["value"]).size != 1:
            raise fail(op, "a shifted operand times a non-scalar cannot record its shift in one zero point")
        return in_deltas[0] * int(np.asarray(factor.owner.attrs["value"]).reshape(-1)[0])
    x = op.operands[0].type
    if op.name == "int.reduce_sum":
        axes = [a % x.rank for a in (op.attr("axes") or range(x.rank))]
        return in_deltas[0] * int(np.prod([x.shape[a] for a in axes]))
    return in_deltas[0] * int(np.prod(op.attr("kernel_shape")))


def _linear(module: Module, op: Operation, in_deltas) -> None:
    """Keep an int conv/gemm/matmul accumulator unchanged when its data operand moved by delta."""
    if any(in_deltas[1:]):
        raise fail(op, "unsigned weights cannot be signed-normalised (only activations)")
    shift = in_deltas[0]
    w = np.asarray(op.operands[1].owner.attrs["value"]).astype(np.int64) \
        if op.operands[1].owner.name == "qir.const" else None
    if w is None:
        raise fail(op, "the weights are not constant; the signed shift cannot be compensated")
    if op.name == "int.conv":
        c_out = w.shape[0]
        correction = -shift * w.reshape(c_out, -1).sum(axis=1)
        pads = [int(p) for p in op.attr("pads")]
        if any(pads):
            module.set_operand(op, 0, pad_op(module, op.operands[0], pads, shift, op.loc))
            op.attrs["pads"] = [0] * len(pads)
    else:
        wk = w.T if (op.name == "int.gemm" and op.attr("transB")) else w
        correction = -shift * wk.sum(axis=0)
    if op.name == "int.matmul":
        acc = op.results[0]
        fix = module.create("int.add", [acc, int_const(module, correction, op.loc)], [acc.type], {}, op.loc)
        module.replace_all_uses(acc, fix.result, except_ops=[fix])
        return
    if len(op.operands) > 2:
        b_value = op.operands[2]
        if b_value.owner.name != "qir.const":
            raise fail(op, "the bias is not constant; the signed shift cannot be folded into it")
        bias = np.asarray(b_value.owner.attrs["value"]).astype(np.int64) + correction
        module.set_operand(op, 2, int_const(module, bias, op.loc))
    else:
        module.set_operands(op, list(op.operands) + [int_const(module, correction, op.loc)])


def _requant_to_signed(op: Operation, ranges: RangeAnalysis) -> None:
    """A requant producing u8 0..n-1 produces i8 -n/2..n/2-1 instead: add -= (n/2) * div."""
    n = int(op.attr("n_levels"))
    if bool(op.attr("signed")):
        raise fail(op, "a signed requant_shift declares an unsigned result")
    if n != 256:
        raise fail(op, f"signed normalisation of a {n}-level unsigned requant is not supported (only 256 levels)")
    div = int(op.attr("div"))
    mul = np.asarray(op.attrs["mul"], dtype=np.int64)
    add = np.asarray(op.attrs["add"], dtype=np.int64) + _SHIFT * div
    lo, hi = ranges.range_of(op.operands[0])
    worst = np.maximum(np.abs(lo * mul + add), np.abs(hi * mul + add)) + div // 2
    if np.any(worst >= INT32_LIMIT) or np.any(np.abs(add) + div // 2 >= INT32_LIMIT):
        raise fail(op, "moving this requant's output to int8 overflows its int32 intermediate; run "
                       "signed-normalize before requant-fusion (lower-to-int{signed-normalize=1} does)")
    op.attrs["add"] = add
    op.attrs["signed"] = True
    out = op.results[0]
    out.type = shifted_type(out.type, _SHIFT)
