"""`requant-fusion`: each dcast -> [Relu/Clip] -> qcast chain becomes one int.requant_shift."""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from ..qir.ir import Module, Operation, Value
from ..qir.passes import ModulePass, register_pass
from .common import dcast_source, emit_requant, fail, positive_scalar_factor, real_const
from .numerics import quantize_scalar
from .ranges import RangeAnalysis


@register_pass
class RequantFusion(ModulePass):
    """Fuse dequantize -> [Relu/Clip] -> quantize into one int.requant_shift.

    Before: `%f = quant.dcast %x ; [%f = onnx.Relu %f | onnx.Clip %f] ; %y = quant.qcast %f : T_out` with %x any
    quantized integer value (an int32 accumulator at scale s_x*s_w[c], a sum from pool-lowering or add-rescale, an
    activation).
    After: `%y = int.requant_shift %x {mul, add, div = 2^k, signed, n_levels} : T_out` with
    M[c] = s_in[c] / s_out, mul = round(M * 2^k), add = z_out * 2^k - z_in * mul (no rounding term: the kernel adds
    div/2), k the largest shift that range analysis proves free of int32 overflow (qirc.lowering.numerics).  ReLU and
    Clip fold into the bounds (a quantizer is monotone, so clip commutes with it); signed/n_levels encode T_out's
    storage range, and bounds that are not of Deeploy's forms [-n/2, n/2-1] / [0, n-1] add an int.clip (which a
    target may reject).  A HardSigmoid right after the dcast is the affine requant clipped to the quantized 0 and 1:
    M = alpha * s_in / s_out and add += round(beta / s_out * 2^k); so is a Mul or Div by one positive constant there
    (`x * 0.5`, `x / 3` between quantizers, which scale-fold leaves when x is not an int op's result yet): M = c *
    s_in / s_out (1 / c for Div).  A dcast -> qcast between identical types is the identity and disappears, and so does one
    whose scales differ only by float rounding when no reachable integer can change and only int.* ops read it (the
    requant onto a QONNX Trunc's input grid after an average pool).
    k is the most precise int32-safe shift even when its worst-case error over the reachable range reaches one output
    step (the driver records and warns); option strict (bool, default 0) refuses such a requant instead.
    Precondition: the dcast reads a quantized value; per-axis output types take no Relu/Clip.
    """

    name = "requant-fusion"
    strict: bool = False

    def run(self, module: Module) -> None:
        fuse_requants(module, strict=self.strict)


def _chain(qcast: Operation) -> Optional[Tuple[Value, List[Operation]]]:
    """(quantized source, [HardSigmoid or Mul/Div by a positive scalar? Relu/Clip ops from source to qcast]) when the
    qcast reads such a chain (the HardSigmoid, Mul or Div only right after the dcast)."""
    clips: List[Operation] = []
    value = qcast.operands[0]
    while value.owner.name in ("onnx.Relu", "onnx.Clip"):
        clips.append(value.owner)
        value = value.owner.operands[0]
    if value.owner.name == "onnx.HardSigmoid" and len(value.users) == 1:
        clips.append(value.owner)
        value = value.owner.operands[0]
    elif len(value.users) == 1 and positive_scalar_factor(value.owner) is not None:
        # x * c or x / c (c > 0 constant) that scale-fold could not fold into the type of an int op's result (x is
        # a quantized activation, not yet requantized): the factor becomes the requant's gain
        mul = value.owner
        data = mul.operands[0] if mul.name == "onnx.Div" or real_const(mul.operands[1]) is not None \
            else mul.operands[1]
        if data.type.shape != mul.results[0].type.shape:
            return None
        clips.append(mul)
        value = data
    source = dcast_source(value)
    if source is None:
        return None
    clips.reverse()
    return source, clips


def fuse_requants(module: Module, ranges: Optional[RangeAnalysis] = None, strict: bool = False) -> int:
    ranges = ranges or RangeAnalysis()
    count = 0
    for op in module.ops():
        if op.name != "quant.qcast" or op.module is not module:
            continue
        found = _chain(op)
        if found is None:
            continue
        source, clips = found
        out_type = op.results[0].type
        ot = out_type.quant
        lo_real, hi_real = -np.inf, np.inf
        gain, offset = 1.0, 0.0
        for clip in clips:
            if clip.name == "onnx.HardSigmoid":
                # clip(alpha * x + beta, 0, 1): an affine requant clipped to the quantized 0 and 1
                gain, offset = float(np.float32(clip.attr("alpha"))), float(np.float32(clip.attr("beta")))
                lo_real, hi_real = max(lo_real, 0.0), min(hi_real, 1.0)
            elif clip.name in ("onnx.Mul", "onnx.Div"):
                gain = positive_scalar_factor(clip)
            elif clip.name == "onnx.Relu":
                lo_real = max(lo_real, 0.0)
            else:
                lo_real = max(lo_real, float(clip.attr("min")))
                hi_real = min(hi_real, float(clip.attr("max")))
        clip_lo = clip_hi = None
        if clips:
            if ot.is_per_axis:
                raise fail(op, "a ReLU/Clip before a per-axis quantizer cannot be folded into one requant")
            rounding = op.attr("rounding")
            clip_lo = quantize_scalar(lo_real, ot.scale, ot.zero_point, rounding, ot.storage_min, ot.storage_max)
            clip_hi = quantize_scalar(hi_real, ot.scale, ot.zero_point, rounding, ot.storage_min, ot.storage_max)
        if gain != 1.0 or offset != 0.0:
            result = emit_requant(module, ranges, source, out_type, clip_lo, clip_hi, op.loc, op, strict=strict,
                                  gain=gain, offset=offset)
        elif source.type.element == ot and not clips:
            result = source
        elif not clips and _integer_identity(source, op, ranges):
            result = source
        else:
            result = emit_requant(module, ranges, source, out_type, clip_lo, clip_hi, op.loc, op, strict=strict)
        module.replace_op(op, [result])
        count += 1
    if count:
        module.erase_dead()
    return count


def _integer_identity(source: Value, qcast: Operation, ranges: RangeAnalysis) -> bool:
    """True when the requant from `source` to the qcast's type leaves every reachable stored integer unchanged and
    only int.* ops read the result, so they may read `source` itself.

    This is the requant onto the input grid of a QONNX Trunc after an average pool: the pool's sum is at scale
    s_in / count in float64 while the grid is the file's float32 rounding of that, so M = 1 + O(1e-8) and
    round(x * M) = x for every integer |x| < 2^22 (the check below is exact: |x| * |M - 1| < 1/2 with both zero
    points 0).  Only int.* users qualify because they read stored integers, not the scale the type records.
    """
    st, ot = source.type.quant, qcast.results[0].type.quant
    users = qcast.results[0].users
    if not users or any(u.dialect != "int" for u in users):
        return False
    if st.is_per_axis or ot.is_per_axis or st.zero_point != 0 or ot.zero_point != 0:
        return False
    lo, hi = ranges.scalar_range(source)
    if lo < ot.storage_min or hi > ot.storage_max:
        return False
    deviation = abs(float(st.scale) / float(ot.scale) - 1.0)
    return max(abs(lo), abs(hi)) * deviation < 0.25
