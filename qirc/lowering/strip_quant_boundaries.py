"""`strip-quant-boundaries`: graph inputs take stored integers, graph outputs give them."""
from __future__ import annotations

from ..qir.ir import Module
from ..qir.passes import ModulePass, register_pass
from .common import dcast_source, fail


@register_pass
class StripQuantBoundaries(ModulePass):
    """Strip the input quantizers and the output dequantizers: the graph's interface becomes integer.

    Before: `%x = qir.input "in" : tensor<..xf32> ; %q = quant.qcast %x : T` and `qir.output "out" (quant.dcast %y)`.
    After:  `%x = qir.input "in" : T` (the user feeds stored integers; scale and zero point live in T) and
    `qir.output "out" %y` (its type records the scale; an unrequantized final Gemm leaves its int32 accumulator at
    scale s_x*s_w).
    Precondition: every user of a float input is a quant.qcast to one common type (else LoweringError: the input
    cannot become one integer tensor).  Outputs that are not dequantized are left alone.
    """

    name = "strip-quant-boundaries"

    def run(self, module: Module) -> None:
        strip_boundaries(module)


def strip_boundaries(module: Module) -> int:
    count = 0
    for inp in module.inputs:
        value = inp.results[0]
        if not value.type.is_float or not value.uses:
            continue
        users = value.users
        if any(u.name != "quant.qcast" for u in users):
            continue  # a float input used in float: the final integer-only check names the op that reads it
        types = {u.results[0].type for u in users}
        if len(types) != 1:
            raise fail(inp, "the input feeds quantizers of different types "
                            f"({', '.join(sorted(str(t) for t in types))}); it cannot become one integer tensor")
        value.type = types.pop()  # the input now holds stored integers of the quantizer's type
        for qcast in users:
            module.replace_op(qcast, [value])
        count += 1
    for out in module.outputs:
        source = dcast_source(out.operands[0])
        if source is not None:
            module.set_operand(out, 0, source)
            count += 1
    if count:
        module.erase_dead()
    return count
