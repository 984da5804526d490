"""Biases: a Conv bias and a constant Add in front of a requant fold into the requant's `add`."""
from __future__ import annotations

import numpy as np

from ....qir.ir import Module, Operation
from ....qir.types import i32
from ..targets import DeeployTarget
from .common import const_value, fail, int_const, move_zero_points, sole_user, storage
from .rule import rule


def _fold_offset_into_requant(rqs: Operation, offset: np.ndarray) -> bool:
    """add' = add + offset * mul for an offset that broadcasts against the requant's input; False otherwise."""
    x_shape = tuple(rqs.operands[0].type.shape)
    mul = np.asarray(rqs.attrs["mul"], np.int64)
    add = np.asarray(rqs.attrs["add"], np.int64)
    try:
        new_add = add + np.asarray(offset, np.int64) * mul
        if new_add.ndim > len(x_shape) or np.broadcast_shapes(new_add.shape, x_shape) != x_shape:
            return False
    except ValueError:
        return False
    rqs.attrs["add"] = new_add
    return True


@rule("fold-biases")
def fold_biases(module: Module, target: DeeployTarget) -> None:
    """A Conv bias b, and a constant int.add(x, b) in front of a requant, fold into the requant's add
    (add' = add + b * mul); a Conv without a requant after it keeps its bias as an int32 int.add.

    The requant's input then holds the accumulator without b while standing for the biased one, so its type's zero
    points move by -b (`move_zero_points`): every value's type still says what its integers mean."""
    for conv in module.walk("int.conv"):
        if len(conv.operands) < 3:
            continue
        b = const_value(conv.operands[2])
        if b is None:
            raise fail(conv, target, "int.conv with a computed bias has no Deeploy form")
        rank = conv.result.type.rank
        per_channel = b.astype(np.int64).reshape([1, -1] + [1] * (rank - 2))
        rqs = sole_user(conv.result)
        if rqs is not None and rqs.name == "int.requant_shift" and _fold_offset_into_requant(rqs, per_channel):
            module.set_operands(conv, conv.operands[:2])
            # the conv now computes acc - b: the requant's input type says so (its zero points move by -b)
            move_zero_points(conv.result, -per_channel)
            continue
        if target.conv_needs_requant:
            raise fail(conv, target, "int.conv is not followed by a requant_shift: the platform has no bare integer "
                                     "Conv (an int32 result); give the layer an output quantizer (Brevitas "
                                     "output_quant=Int8ActPerTensorFloat, or a QuantizeLinear after it) or compile "
                                     "for deeploy-generic")
        # a bare integer Conv (Generic): the bias becomes an explicit Add of an int32 constant
        bias = int_const(module, per_channel, conv.loc + "/bias", i32)
        acc = conv.result
        module.set_operands(conv, conv.operands[:2])
        add = module.create("int.add", [acc, bias], [acc.type], {}, conv.loc + "/bias_add")
        module.replace_all_uses(acc, add.result, except_ops=[add])
        move_zero_points(acc, -per_channel)  # the add's result keeps the biased type; the conv's values are acc - b
    for add in module.walk("int.add"):
        k_index = next((i for i, v in enumerate(add.operands) if const_value(v) is not None), None)
        if k_index is None:
            continue
        rqs = sole_user(add.result)
        if rqs is None or rqs.name != "int.requant_shift":
            continue
        k = const_value(add.operands[k_index])
        x = add.operands[1 - k_index]
        if np.broadcast_shapes(np.shape(k), x.type.shape) != tuple(x.type.shape):
            continue
        if _fold_offset_into_requant(rqs, k):
            module.set_operand(rqs, 0, x)
            if all(user in (rqs, add) for user, _ in x.uses):  # the add is dead now, erased below
                # the requant now requantizes x + k: x's integers stand for the add's result, at zero points moved
                # by -k (with other users, x keeps the type they read)
                move_zero_points(x, -np.asarray(k, np.int64), add.result.type)
    module.erase_dead()


def _constant_operand(v):
    """The integers of `v` when it is a constant, or an int.mul of two constants (a bias times its rescale, which
    Deeploy folds before merging the Add); None otherwise."""
    k = const_value(v)
    if k is not None:
        return np.asarray(k)
    if v.owner.name == "int.mul":
        a, b = (const_value(o) for o in v.owner.operands)
        if a is not None and b is not None:
            product = np.multiply(np.asarray(a, np.int64), np.asarray(b, np.int64))
            if np.all(product == product.astype(v.type.storage.np_dtype)):
                return product
    return None


@rule("full-shape-feature-adds")
def full_shape_feature_adds(module: Module, target: DeeployTarget) -> None:
    """int.add(x, k) of a constant k that varies along an axis other than 1 of a rank >= 3 tensor (the per-feature
    bias of a token tensor [N, T, D] that fold-biases could not take into its requant, whose parameters would then
    vary along D) -> the same add of k spread to the full shape of x.

    Deeploy's MergeConstAddAndRequantPass folds an Add of a constant smaller than its output into the RequantShift
    after it and reads the sum along dim 1 (found on Generic: "Could not broadcast ... from (32,) to [1, 8]"; were
    T = D, it would add the features' constants to the tokens); it leaves an Add of a full-shape constant as an
    elementwise Add.  The same integers are computed."""
    for add in module.walk("int.add"):
        full = tuple(add.result.type.shape)
        if len(full) < 3:
            continue
        for i, v in enumerate(add.operands):
            k = _constant_operand(v)
            if k is None or np.shape(k) == full:
                continue
            shape = (1,) * (len(full) - k.ndim) + k.shape
            if all(d == 1 for a, d in enumerate(shape) if a != 1):
                continue  # per tensor, or per channel along axis 1: what the merge reads
            spread = np.ascontiguousarray(np.broadcast_to(k.reshape(shape), full))
            module.set_operand(add, i, int_const(module, spread, v.owner.loc or add.loc, storage(v)))
    module.erase_dead()
