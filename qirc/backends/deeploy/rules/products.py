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


@rule("unsigned-product-requants", when="unsigned_requant_fused")
def unsigned_product_requants(module: Module, target: DeeployTarget) -> None:
    """An unsigned RequantShift of an int32 tensor that no kernel fuses (a product int8 x int8 -> int32 of a
    squeeze-excitation or HardSwish) -> the same requant onto int8 with its output moved down by 128, then a
    RequantShift that adds the 128 back (mul = div = the clip unit) onto uint8, whose 8-bit input
    unsigned-requants-fused then fuses.

    Exact: clip(v, 0, 255) - 128 = clip(v - 128, -128, 127) for every integer v; the platform's standalone
    RequantShift writes int8 only (found with Deeploy's Siracusa code generation on MobileNetV3-small)."""
    for rqs in list(module.walk("int.requant_shift")):
        x = rqs.operands[0]
        if bool(rqs.attr("signed")) or int(rqs.attr("n_levels")) != 256 or x.owner.name != "int.mul":
            continue
        if x.type.is_quant and x.type.element.storage.width <= 8:
            continue
        out = rqs.result
        div = int(rqs.attr("div"))
        shifted_type = out.type.element
        if out.type.is_quant:
            shifted_type = shifted_type.with_(storage=ScalarType("i8"), storage_min=-128, storage_max=127,
                                              zero_points=tuple(z - 128 for z in shifted_type.zero_points))
        else:
            shifted_type = ScalarType("i8")
        low = module.create("int.requant_shift", [x], [TensorType(out.type.shape, shifted_type)],
                            {**rqs.attrs, "add": np.asarray(rqs.attrs["add"], np.int64) - 128 * div, "signed": True},
                            rqs.loc + "/int8").result
        unit = int(max(target.clip_requant_unit, target.requant_div_min))
        back = module.create("int.requant_shift", [low], [out.type],
                             {"mul": np.array([unit], np.int64), "add": np.array([128 * unit], np.int64), "div": unit,
                              "signed": False, "n_levels": 256}, rqs.loc, [out.name]).result
        module.replace_op(rqs, [back])
