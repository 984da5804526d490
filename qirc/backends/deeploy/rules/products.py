"""Products of two computed tensors (squeeze-excitation, HardSwish): operands of one shape."""
from __future__ import annotations

import numpy as np

from ....qir.ir import Module, Operation, Value, const_op
from ....qir.types import ScalarType, TensorType
from ..targets import DeeployTarget
from .common import const_value, fail
from .rule import rule


@rule("broadcast-mul-operands")
def broadcast_mul_operands(module: Module, target: DeeployTarget) -> None:
    """int.mul of two computed tensors of different shapes (a squeeze-excitation gate [N, C, 1, 1] times [N, C, H, W])
    -> the smaller one first spread to the larger shape: Reshape [rows, 1] -> MatMul with an all-ones int8 [1, cols]
    -> RequantShift that only re-types (mul = div = the target's clip unit, add 0: the identity) -> Reshape.

    Deeploy's integer Mul loops over the smaller operand's elements (found on Generic: the rest of the output is left
    unwritten); the spread is exact (each value times one, in int32, back to its 8-bit type)."""
    for op in module.walk("int.mul"):
        a, b = op.operands
        if const_value(a) is not None or const_value(b) is not None or a.type.shape == b.type.shape:
            continue
        big, small = (a, b) if int(np.prod(a.type.shape)) >= int(np.prod(b.type.shape)) else (b, a)
        spread = _spread(module, op, small, tuple(big.type.shape), target)
        module.set_operand(op, op.operands.index(small), spread)


def _spread(module: Module, op: Operation, small: Value, shape: tuple, target: DeeployTarget) -> Value:
    s_shape = tuple(small.type.shape)
    rank = len(shape)
    s_shape = (1,) * (rank - len(s_shape)) + s_shape
    # the spread axes must be trailing: small = big's leading axes followed by ones
    p = next((i for i in range(rank) if all(d == 1 for d in s_shape[i:])), rank)
    if s_shape[:p] != shape[:p] or p == rank:
        raise fail(op, target, f"int.mul of shapes {list(small.type.shape)} and {list(shape)}: only a tensor whose "
                               "trailing axes are 1 is spread over the other")
    rows, cols = int(np.prod(shape[:p])), int(np.prod(shape[p:]))
    element = small.type.element
    loc = op.loc + "/spread"
    flat = module.create("int.reshape", [small], [TensorType((rows, 1), element)], {"shape": [rows, 1]}, loc).result
    ones = const_op(module, np.ones((1, cols), np.int8), TensorType((1, cols), ScalarType("i8")), loc)
    acc_element = element.with_(storage=ScalarType("i32")) if small.type.is_quant else ScalarType("i32")
    mm = module.create("int.matmul", [flat, ones], [TensorType((rows, cols), acc_element)], {}, loc).result
    unit = int(target.clip_requant_unit)
    signed = int(element.min) < 0
    rq = module.create("int.requant_shift", [mm], [TensorType((rows, cols), element)],
                       {"mul": np.array([unit], np.int64), "add": np.array([0], np.int64), "div": unit,
                        "signed": signed, "n_levels": 256}, loc).result
    return module.create("int.reshape", [rq], [TensorType(shape, element)], {"shape": list(shape)}, loc).result
