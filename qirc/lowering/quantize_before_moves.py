"""`quantize-before-moves`: a quantizer behind data movement also quantizes the value before the movement."""
from __future__ import annotations

from typing import List

from ..qir.ir import Module, Operation
from ..qir.passes import ModulePass, register_pass
from ..qir.types import TensorType

#: float ops that only move values (no arithmetic, one data operand): quantizing commutes with them
_MOVES = ("onnx.Transpose", "onnx.Reshape", "onnx.Flatten", "onnx.Squeeze", "onnx.Unsqueeze", "onnx.Gather",
          "onnx.Slice")


@register_pass
class QuantizeBeforeMoves(ModulePass):
    """Quantize a float result before the data movement that leads to its quantizer.

    Before: `%y = onnx.LayerNormalization(...) ; %t = onnx.Transpose(%y) ; %q = quant.qcast %t : T`
    (Brevitas' `batch_first` attention transposes the LayerNorm output before `in_proj_input_quant`).
    After:  `%y0 = quant.qcast %y : T ; %t = onnx.Transpose(quant.dcast %y0) ; %q = quant.qcast %t : T`: the float op
    is read by a quantizer directly, so the lowering of LayerNorm, GELU or softmax finds its output scale; the
    Transpose then moves stored integers (dequant-push) and the second quantizer re-quantizes values already on
    T's grid, an exact identity that requant-fusion removes.  Exact because a per-tensor quantizer is elementwise
    and the ops between only move values (Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Gather, Slice).
    Precondition: every op of the chain has that quantizer (or the next op of the chain) as its only user and the
    quantizer is per tensor; the chain does not start at a dequantized value (there is nothing to quantize).
    """

    name = "quantize-before-moves"

    def run(self, module: Module) -> None:
        quantize_before_moves(module)


def quantize_before_moves(module: Module) -> int:
    count = 0
    for q in module.walk("quant.qcast"):
        qtype = q.results[0].type
        if qtype.quant.is_per_axis:
            continue
        chain: List[Operation] = []
        value = q.operands[0]
        while value.owner.name in _MOVES and len(value.uses) == 1:
            chain.append(value.owner)
            value = value.owner.operands[0]
        if not chain or value.owner.name in ("quant.dcast", "qir.const", "qir.input"):
            continue
        first = chain[-1]  # the move that reads the float op's result
        early_type = TensorType(value.type.shape, qtype.element)
        early = module.create("quant.qcast", [value], [early_type], dict(q.attrs), q.loc + "/before_moves").result
        back = module.create("quant.dcast", [early], [value.type], {}, q.loc + "/before_moves").result
        module.set_operand(first, 0, back)
        count += 1
    return count
