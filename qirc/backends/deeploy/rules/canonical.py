"""Canonical forms every platform maps: shape ops as Reshape, subtraction as Add."""
from __future__ import annotations

import numpy as np

from ....qir.ir import Module
from ....qir.types import i32
from ..targets import DeeployTarget
from .common import INT32_MAX, INT32_MIN, const_value, fail, int_const
from .rule import rule


@rule("shape-ops-to-reshape")
def shape_ops_to_reshape(module: Module, target: DeeployTarget) -> None:
    """int.squeeze / int.unsqueeze / int.flatten -> int.reshape to the same shape (every platform maps Reshape)."""
    for op in module.walk():
        if op.name in ("int.squeeze", "int.unsqueeze", "int.flatten"):
            out = op.result
            new = module.create("int.reshape", [op.operands[0]], [out.type], {"shape": list(out.type.shape)}, op.loc,
                                [out.name])
            module.replace_op(op, [new.result])


@rule("sub-to-add")
def sub_to_add(module: Module, target: DeeployTarget) -> None:
    """int.sub(x, c) of a constant c -> int.add(x, -c); int.sub(x, y) of two computed tensors -> int.add(x, -y),
    with -y the int.mul that computes y by a constant m (add-rescale's factor into the common scale) by -m instead,
    or else int.mul(y, -1): Deeploy has no Sub, and its Mul and Add are the residual add's (Mul(a, ca), Mul(b, cb)
    -> Add -> RequantShift, with any signs; a platform whose residual add is PULP's RequantizedAdd, positive scales
    only, refuses the difference)."""
    for op in module.walk("int.sub"):
        c = const_value(op.operands[1])
        if c is not None:
            neg = int_const(module, -c.astype(np.int64), op.loc, i32)
            new = module.create("int.add", [op.operands[0], neg], [op.result.type], {}, op.loc, [op.result.name])
            module.replace_op(op, [new.result])
            continue
        if target.residual_add != "mul-add":
            raise fail(op, target, "int.sub of two computed tensors has no form on this platform (its RequantizedAdd "
                                   "adds its two operands with positive scales only)")
        y = op.operands[1]
        scaled = y.owner.name == "int.mul" and len(y.uses) == 1 and const_value(y.owner.operands[1]) is not None
        source, factor = (y.owner.operands[0], const_value(y.owner.operands[1])) if scaled else (y, np.array([1]))
        yq = y.type.quant
        negated_type = y.type.with_element(yq.with_(storage=i32, storage_min=INT32_MIN, storage_max=INT32_MAX,
                                                    zero_points=tuple(-int(z) for z in yq.zero_points)))
        negated = module.create("int.mul", [source, int_const(module, -factor.astype(np.int64), op.loc, i32)],
                                [negated_type], {}, op.loc + "/neg").result
        new = module.create("int.add", [op.operands[0], negated], [op.result.type], {}, op.loc, [op.result.name])
        module.replace_op(op, [new.result])
    module.erase_dead()


@rule("distinct-concat-operands")
def distinct_concat_operands(module: Module, target: DeeployTarget) -> None:
    """int.concat reading one tensor more than once -> every read of it through its own int.reshape to the same
    shape (Deeploy's Concat code declares one pointer per input name: a repeated name does not compile, found on
    Generic with the doubled input of weights with zero points).  The first read gets its reshape too: Deeploy's
    RQSSplitPass gives each user of a RequantShift that feeds a Concat its own copy of the RequantShift, and a Gemm or
    Conv with two RequantShift users is then no longer merged into a RequantizedGemm / RequantizedConv, which
    Siracusa needs ("no adequate mapping ... Gemm"); with only Reshapes reading it, the requant stays single."""
    for op in module.walk("int.concat"):
        operands = list(op.operands)
        repeated = {id(v) for v in operands if sum(w is v for w in operands) > 1}
        for i, v in enumerate(operands):
            if id(v) in repeated:
                copy = module.create("int.reshape", [v], [v.type], {"shape": list(v.type.shape)},
                                     f"{op.loc}/copy{i}")
                module.set_operand(op, i, copy.result)
