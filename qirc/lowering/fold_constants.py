"""`fold-constants`: evaluate ops whose operands are all constants."""
from __future__ import annotations

import numpy as np

from ..qir.diagnostics import QircError
from ..qir.ir import Module, const_op
from ..qir.passes import ModulePass, register_pass


@register_pass
class FoldConstants(ModulePass):
    """Replace ops whose operands are all qir.const by a qir.const of their result.

    Before: `%c = qir.const ; %t = onnx.Transpose %c` (or `quant.qcast %c`: float weights quantized at import).
    After:  `%t = qir.const` holding the interpreter's result (stored integers for quantized types).
    `quant.dcast` of a quantized constant is kept: the lowering reads the weights' stored integers and scales
    through it.  Precondition: none; ops without a kernel or whose evaluation fails are left alone.
    """

    name = "fold-constants"

    def run(self, module: Module) -> None:
        fold_constants(module)


def fold_constants(module: Module) -> int:
    from ..qir import interpreter

    count = 0
    for op in module.ops():
        if op.module is not module or op.dialect == "qir" or op.name == "quant.dcast" or not op.results:
            continue
        if not op.operands or any(v.owner.name != "qir.const" for v in op.operands):
            continue
        kernel = interpreter.KERNELS.get(op.name)
        if kernel is None:
            continue
        args = [_runtime(v) for v in op.operands]
        try:
            results = kernel(op, args)
        except (QircError, ValueError, TypeError, IndexError):
            continue
        new_values = []
        for r, array in zip(op.results, results):
            t = r.type
            array = np.asarray(array)
            if t.is_float:
                stored = array.astype(np.float32)
            else:
                if array.size and (array.min() < t.element.min or array.max() > t.element.max):
                    break
                stored = array.astype(t.storage.np_dtype)
            new_values.append(const_op(module, stored.reshape(t.shape), t, op.loc))
        else:
            module.replace_op(op, new_values)
            count += 1
    if count:
        module.erase_dead()
    return count


def _runtime(value):
    array = np.asarray(value.owner.attrs["value"])
    return array.astype(np.float32) if value.type.is_float else array.astype(np.int64)
