"""Canonical forms every platform maps: shape ops as Reshape, subtraction of a constant as Add."""
from __future__ import annotations

import numpy as np

from ....qir.ir import Module
from ....qir.types import i32
from ..targets import DeeployTarget
from .common import const_value, fail, int_const
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
    """int.sub(x, c) of a constant c -> int.add(x, -c); the difference of two computed tensors is refused."""
    for op in module.walk("int.sub"):
        c = const_value(op.operands[1])
        if c is None:
            raise fail(op, target, "int.sub of two computed tensors has no Deeploy form")
        neg = int_const(module, -c.astype(np.int64), op.loc, i32)
        new = module.create("int.add", [op.operands[0], neg], [op.result.type], {}, op.loc, [op.result.name])
        module.replace_op(op, [new.result])


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
