"""`lower-to-int`: the whole lowering from the quant-level IR to an integer-only graph."""
from __future__ import annotations

from typing import Dict, List, Optional

from ..qir.ir import Module
from ..qir.passes import ModulePass, register_pass
from .add_rescale import rescale_adds
from .common import fail
from .dequant_push import push_dequants
from .fold_constants import fold_constants
from .pool_lowering import lower_pools
from .quantize_before_moves import quantize_before_moves
from .ranges import RangeAnalysis
from .requant_fusion import fuse_requants
from .scale_fold import fold_scales
from .signed_normalize import signed_normalize
from .strip_quant_boundaries import strip_boundaries
from .transformer_ops import check_transformer_inputs, lower_transformer_ops, refuse_unlowered

#: the passes lower-to-int runs, in order (pool-lowering, add-rescale, dequant-push, scale-fold and
#: integer-transformer repeat until nothing moves)
PIPELINE = ("fold-constants", "quantize-before-moves", "[signed-normalize]", "pool-lowering", "add-rescale",
            "dequant-push", "scale-fold", "integer-transformer", "requant-fusion", "strip-quant-boundaries", "dce",
            "check-integer-only")


@register_pass
class LowerToInt(ModulePass):
    """Lower a quant-level module to integer-only arithmetic (qir.* and int.* ops only).

    Runs fold-constants, quantize-before-moves, signed-normalize (when the option is on), then pool-lowering,
    add-rescale, dequant-push, scale-fold and integer-transformer until no dcast moves, then requant-fusion,
    strip-quant-boundaries and dead-code elimination (the same passes, once each in this order, lower the corpus
    models too).
    Before: `qir.input (f32) -> quant.qcast -> quant.dcast -> onnx.* -> quant.qcast -> ... -> quant.dcast -> qir.output`.
    After:  `qir.input (quantized) -> int.* / int.requant_shift -> qir.output (integer, type records the scale)`.
    Postcondition (checked): every op is qir.* or int.*; otherwise LoweringError names the first op left (its
    location and name) and how many others remain.
    Options: signed-normalize (bool, default 0): store u8 tensors as i8 with zero point z - 128; strict (bool,
    default 0): refuse a requant (or an Add's common scale) whose worst-case approximation error reaches one output
    step, instead of compiling the most precise int32-safe one (what `qirc --strict` sets).
    """

    name = "lower-to-int"
    signed_normalize: bool = False
    strict: bool = False

    def run(self, module: Module) -> None:
        # (not an option: what the run found, read by the compile driver for qirc.json's accuracy.add_rescales)
        self.add_rescales = []
        lower_to_int(module, signed=self.signed_normalize, strict=self.strict, add_rescales=self.add_rescales)


def lower_to_int(module: Module, signed: bool = False, strict: bool = False,
                 add_rescales: Optional[List[Dict]] = None) -> None:
    """See LowerToInt; `add_rescales`, when given, gets the record of each Add/Sub's common scale
    (`add_rescale.rescale_record`)."""
    fold_constants(module)
    check_transformer_inputs(module)
    quantize_before_moves(module)
    if signed:
        signed_normalize(module)
    for _ in range(16):
        moved = lower_pools(module) + rescale_adds(module, strict=strict, records=add_rescales) + push_dequants(module) + \
            fold_scales(module) + lower_transformer_ops(module)
        if not moved:
            break
    refuse_unlowered(module)
    fuse_requants(module, RangeAnalysis(), strict=strict)
    strip_boundaries(module)
    module.erase_dead()
    check_integer_only(module)


@register_pass
class CheckIntegerOnly(ModulePass):
    """Check that only qir.* and int.* ops remain (the integer IR contract).

    Before/after: the module is unchanged.  Raises LoweringError naming the first op that is not qir.* or int.*
    (its source location and op name) and how many such ops remain.
    """

    name = "check-integer-only"

    def run(self, module: Module) -> None:
        check_integer_only(module)


def check_integer_only(module: Module) -> None:
    left: List = [op for op in module.ops() if op.dialect not in ("qir", "int")]
    if left:
        # name the op that blocks the lowering (a float op), not the casts around it
        first = next((op for op in left if op.dialect != "quant"), left[0])
        others = f" ({len(left) - 1} more non-integer ops remain)" if len(left) > 1 else ""
        hint = _why(first)
        raise fail(first, f"op {first.name} could not be lowered to integer arithmetic{hint}{others}")
    for op in module.walk("qir.input") + module.walk("qir.output"):
        value = op.results[0] if op.name == "qir.input" else op.operands[0]
        if value.type.is_float:
            raise fail(op, f"graph {'input' if op.name == 'qir.input' else 'output'} '{op.attrs.get('name')}' "
                           f"is still a float tensor {value.type}")


#: float ops that lower on a quantized 8-bit activation but not on a layer's int32 accumulator
_LOWERED_ON_ACTIVATIONS = ("onnx.HardSigmoid", "onnx.HardSwish", "onnx.Mul")


def _why(op) -> str:
    if op.name.startswith("onnx."):
        floats = [i for i, v in enumerate(op.operands) if v.type.is_float and v.owner.name != "quant.dcast"
                  and v.owner.name != "qir.const"]
        if floats:
            return f": operand {floats[0]} is not a dequantized tensor (no quantizer before it)"
        for i, v in enumerate(op.operands if op.name in _LOWERED_ON_ACTIVATIONS else ()):
            source = v.owner.operands[0] if v.owner.name == "quant.dcast" else None
            if source is not None and source.type.is_quant and source.type.storage.width > 16 \
                    and source.owner.name in ("int.conv", "int.gemm", "int.matmul"):
                # Brevitas' QuantHardSwish / QuantSigmoid with no input quantizer: the float activation reads the
                # layer's raw accumulator, which no integer op can feed a nonlinearity from
                return (f": operand {i} is the int32 accumulator of '{source.owner.loc}' with no quantizer between "
                        f"that layer and this op, which is not supported: quantize the layer's output before it (in "
                        f"Brevitas an input quantizer on the activation, e.g. a QuantIdentity before it)")
        if op.name == "onnx.BatchNormalization":
            return (": a BatchNormalization that does not follow a Conv (the importer folds it into that Conv's "
                    "weights) is not supported")
        if op.name == "onnx.Pad" and (op.attr("mode") or "constant") == "constant" and op.operands[0].owner.name \
                == "quant.dcast" and not op.operands[0].owner.operands[0].type.quant.is_per_axis:
            q = op.operands[0].owner.operands[0].type.quant
            return (f": its padding value {float(op.attr('value') or 0.0):g} is not a stored integer of the input's "
                    f"quantization (scale {q.scale:.6g}, zero point {q.zero_point}), which is not supported")
        return ": no integer lowering for this op with these operand types (not supported)"
    if op.name == "quant.qcast":
        return ": the quantizer reads a float value that is not a dequantized integer tensor"
    if op.name == "quant.dcast":
        return ": a dequantized value is still read by a float op or graph output"
    return ""
