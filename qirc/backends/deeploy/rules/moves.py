"""Data movement between a linear op and its requant: the requant moves up so that the platform fuses the pair."""
from __future__ import annotations

from typing import List

import numpy as np

from ....qir.ir import Module, Operation
from ..targets import DeeployTarget
from .rule import rule

_LINEAR = ("int.conv", "int.gemm", "int.matmul")
_MOVES = ("int.reshape", "int.transpose")


@rule("requant-before-transposes")
def requant_before_transposes(module: Module, target: DeeployTarget) -> None:
    """conv/gemm/matmul -> reshape/transpose chain (with a Transpose) -> per-tensor requant_shift becomes
    conv/gemm/matmul -> requant_shift -> the same chain, on 8-bit values.

    A vision transformer's patch embedding is Conv -> Flatten -> Transpose -> token quantizer; the platforms with
    fused kernels (CMSIS, PULP) have no bare integer Conv, and every platform then moves 8-bit instead of 32-bit
    tensors.  A per-tensor requant (one mul, one add) is elementwise, so it commutes with moving values; the chain
    must be single-use.  Chains of reshapes alone are left to the pool and Gemm rules that already sink them."""
    for rq in module.walk("int.requant_shift"):
        if np.asarray(rq.attrs["mul"]).size != 1 or np.asarray(rq.attrs["add"]).size != 1:
            continue
        chain: List[Operation] = []
        value = rq.operands[0]
        while value.owner.name in _MOVES and len(value.uses) == 1:
            chain.append(value.owner)
            value = value.owner.operands[0]
        if not any(op.name == "int.transpose" for op in chain) or value.owner.name not in _LINEAR or \
                len(value.uses) != 1:
            continue
        element = rq.result.type.element
        moved = module.create("int.requant_shift", [value], [value.type.with_element(element)], dict(rq.attrs),
                              rq.loc).result
        for op in reversed(chain):  # the chain again, from the linear op towards the old requant
            moved = module.create(op.name, [moved], [op.result.type.with_element(element)], dict(op.attrs),
                                  op.loc).result
        module.replace_op(rq, [moved])
    module.erase_dead()
