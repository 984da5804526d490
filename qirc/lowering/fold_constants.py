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
    through it.  A Transpose / Reshape / Flatten / Squeeze / Unsqueeze of such a dcast (Brevitas' bias-free
    QuantLinear: `MatMul(x, Transpose(dcast W))`) is folded into the stored integers: `%t = quant.dcast %W'` with
    %W' the moved constant (a per-axis axis follows it; a shape op that splits or merges that axis is left alone).
    Precondition: none; ops without a kernel or whose evaluation fails are left alone.
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
        if op.name in _SHAPE_OPS and _fold_dequantized_shape_op(module, op):
            count += 1
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


_SHAPE_OPS = ("onnx.Transpose", "onnx.Reshape", "onnx.Flatten", "onnx.Squeeze", "onnx.Unsqueeze")


def _fold_dequantized_shape_op(module: Module, op) -> bool:
    """shape_op(dcast(qconst)) -> dcast(qconst') with the stored integers moved; False when it does not apply."""
    from ..qir.ir import const_op as make_const
    from ..qir.types import TensorType

    x = op.operands[0]
    if x.owner.name != "quant.dcast" or x.owner.operands[0].owner.name != "qir.const":
        return False
    source = x.owner.operands[0]
    if not source.type.is_quant:
        return False
    stored = np.asarray(source.owner.attrs["value"])
    out_shape = tuple(op.results[0].type.shape)
    qt = source.type.quant
    if op.name == "onnx.Transpose":
        perm = [int(p) for p in (op.attr("perm") or reversed(range(stored.ndim)))]
        moved = np.transpose(stored, perm)
        if qt.is_per_axis:
            qt = qt.with_(axis=perm.index(qt.axis % stored.ndim))
    else:
        moved = stored.reshape(out_shape)
        if qt.is_per_axis:
            axis = qt.axis % stored.ndim
            size = stored.shape[axis]
            before = int(np.prod(stored.shape[:axis]))
            new_axis = next((j for j in range(len(out_shape)) if out_shape[j] == size
                             and int(np.prod(out_shape[:j])) == before), None)
            if new_axis is None:
                return False
            qt = qt.with_(axis=new_axis)
    if tuple(moved.shape) != out_shape:
        return False
    c = make_const(module, np.ascontiguousarray(moved), TensorType(out_shape, qt), source.owner.loc)
    d = module.create("quant.dcast", [c], [op.results[0].type], {}, x.owner.loc)
    module.replace_op(op, [d.result])
    return True
