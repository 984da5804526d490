"""Transformers: Deeploy's integer kernels iSoftmax, iLayerNorm, iGELU, and the MatMuls of attention.

What each platform takes (DESIGN.md section 7, Deeploy devel bf64cfa):
- Generic and CMSIS map iSoftmax, iLayerNorm and iGELU with the Generic C kernels; an iGELU followed by a RequantShift
  is fused into RequantizediGELU, whose merge replaces the requant's `add` by round(add / mul) (only add = 0 survives
  it unchanged), reads one per-tensor mul and add, shifts with rounding by log2(div) and clips to the full 8 bits.
- Siracusa (PULPOpen) maps iSoftmax with its own kernel, which ignores coeffA and n_levels (it computes
  (p + coeffB)^2 + coeffC in uint32 and outputs y * 255 / sum), iGELU only fused with the RequantShift after it, and
  no integer LayerNorm.
- MatMul: Deeploy advances both operands' pointers every batch, so both need the same batch dimensions, and a 2-D
  operand under a batched one would be read out of bounds.
"""
from __future__ import annotations

import numpy as np

from ....qir.ir import Module, Operation
from ....qir.types import TensorType
from ..targets import DeeployTarget
from .common import fail
from .rule import rule

SIRACUSA = frozenset({"deeploy-siracusa"})


@rule("flatten-batched-matmuls")
def flatten_batched_matmuls(module: Module, target: DeeployTarget) -> None:
    """int.matmul(a [..., M, K], b [K, N]) with batch dimensions on a only -> reshape a to [B*M, K], a 2-D
    int.matmul, reshape the [B*M, N] product back (Deeploy would read the 2-D b out of bounds after one batch)."""
    for op in module.walk("int.matmul"):
        a, b = op.operands
        sa, sb = a.type.shape, b.type.shape
        if len(sb) != 2 or len(sa) <= 2 or int(np.prod(sa[:-2], dtype=np.int64)) == 1:
            continue
        rows = int(np.prod(sa[:-1], dtype=np.int64))
        flat = module.create("int.reshape", [a], [TensorType((rows, sa[-1]), a.type.element)],
                             {"shape": [rows, sa[-1]]}, op.loc + "/flatten")
        out = op.results[0]
        element = out.type.element
        if out.type.is_quant and element.is_per_axis:
            element = element.with_(axis=1)  # the per-column axis of the 2-D product
        mm = module.create("int.matmul", [flat.result, b], [TensorType((rows, sb[-1]), element)], {}, op.loc)
        back = module.create("int.reshape", [mm.result], [out.type], {"shape": list(out.type.shape)},
                             op.loc + "/unflatten")
        module.replace_op(op, [back.result])


@rule("activation-matmul-batches")
def activation_matmul_batches(module: Module, target: DeeployTarget) -> None:
    """A MatMul of two computed tensors (Q K^T, P V) needs the same batch dimensions on both operands: refused
    otherwise."""
    for op in module.walk("int.matmul"):
        a, b = (v.type.shape for v in op.operands)
        if all(v.owner.name != "qir.const" for v in op.operands) and tuple(a[:-2]) != tuple(b[:-2]):
            raise fail(op, target, f"MatMul of two activations with batch dimensions {list(a[:-2])} and "
                                   f"{list(b[:-2])}: Deeploy's MatMul needs the same batch dimensions on both")


def _sole_user(op: Operation):
    users = op.results[0].users
    return users[0] if len(users) == 1 else None


@rule("gelu-requant")
def gelu_requant(module: Module, target: DeeployTarget) -> None:
    """The RequantShift after an iGELU (Deeploy fuses the pair into RequantizediGELU) must be per tensor with add = 0,
    div >= 2 and n_levels = 256; on Siracusa every iGELU needs one (its only user)."""
    for op in module.walk("int.igelu"):
        rqs = _sole_user(op)
        if rqs is None or rqs.name != "int.requant_shift":
            if target.name in SIRACUSA:
                raise fail(op, target, "iGELU must be followed by a RequantShift (its only user): the platform runs "
                                       "it only fused (RequantizediGELU)")
            continue
        mul, add = np.asarray(rqs.attr("mul")), np.asarray(rqs.attr("add"))
        if mul.size != 1 or add.size != 1 or np.any(add != 0):
            raise fail(op, target, f"the RequantShift after iGELU must be per tensor with add = 0 (Deeploy fuses them "
                                   f"into RequantizediGELU, which replaces add by round(add / mul)); got mul "
                                   f"{mul.reshape(-1).tolist()[:4]}, add {add.reshape(-1).tolist()[:4]}")
        if int(rqs.attr("div")) < 2 or int(rqs.attr("n_levels")) != 256:
            raise fail(op, target, "the RequantShift after iGELU needs div >= 2 and n_levels = 256 (the fused "
                                   "RequantizediGELU shifts by log2(div) with rounding and clips to 8 bits)")


@rule("siracusa-transformer-kernels", targets=SIRACUSA)
def siracusa_transformer_kernels(module: Module, target: DeeployTarget) -> None:
    """Siracusa has no integer LayerNorm (an iLayerNorm is refused), and its iSoftmax kernel ignores coeffA and
    n_levels and takes an int32 coeffC (coeffA = 1, n_levels = 256, 0 <= coeffC < 2^31 or refused)."""
    for op in module.ops():
        if op.name == "int.ilayernorm":
            raise fail(op, target, "Siracusa has no integer LayerNorm kernel (Deeploy's PULPOpen platform maps no "
                                   "iLayerNorm): compile this model for deeploy-generic or deeploy-cortexm")
        if op.name == "int.isoftmax" and (int(op.attr("coeffA")) != 1 or int(op.attr("n_levels")) != 256
                                          or not 0 <= int(op.attr("coeffC")) < 1 << 31):
            raise fail(op, target, "Siracusa's iSoftmax kernel ignores coeffA and n_levels and takes an int32 "
                                   "coeffC: it needs coeffA = 1, n_levels = 256, 0 <= coeffC < 2^31")
