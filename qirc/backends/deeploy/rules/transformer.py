"""Transformers: Deeploy's integer kernels iSoftmax, iLayerNorm, iGELU, and the MatMuls of attention.

What each platform takes (DESIGN.md section 7, Deeploy devel bf64cfa):
- Generic and CMSIS map iSoftmax, iLayerNorm and iGELU with the Generic C kernels; an iGELU followed by a RequantShift
  is fused into RequantizediGELU, whose merge replaces the requant's `add` by round(add / mul) (only add = 0 survives
  it unchanged), reads one per-tensor mul and add, shifts with rounding by log2(div) and clips to the full 8 bits.
- Siracusa (PULPOpen) maps iSoftmax with its own kernel, which ignores coeffA and n_levels (it computes
  (p + coeffB)^2 + coeffC in uint32 and outputs y * 255 / sum), iGELU only fused with the RequantShift after it, and
  no integer LayerNorm.
- MatMul: Deeploy advances both operands' pointers every batch, so both need the same batch dimensions (a 2-D
  weight under a batched operand is handled by `moves.token_matmuls_2d`).
- Concat: CMSIS has none; the class token's is written as Pads and an Add.
"""
from __future__ import annotations

import numpy as np

from ....qir.ir import Module, Operation, const_op, pad_op
from ....qir.types import TensorType, i32
from ..targets import DeeployTarget
from .common import fail
from .rule import rule

SIRACUSA = frozenset({"deeploy-siracusa"})


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


@rule("concat-as-pads", when="not concat")
def concat_as_pads(module: Module, target: DeeployTarget) -> None:
    """int.concat (the class token joined to the tokens) on a platform without Concat -> each computed operand
    Reshaped to NCHW [1, before, length, after] and Padded with zeros to the full length at its offset, the constant
    operands written into one full-size constant, all summed with int.add (every element has exactly one non-zero
    term), an identity RequantShift back to 8 bits and a Reshape: the same integers.  The constant has the sum's full
    shape, so Deeploy's constant-Add-into-requant merge (which takes per-channel constants only) leaves it alone."""
    for op in module.walk("int.concat"):
        out = op.results[0]
        rank = out.type.rank
        axis = int(op.attr("axis")) % rank
        before = int(np.prod(out.type.shape[:axis], dtype=np.int64))
        after = int(np.prod(out.type.shape[axis + 1:], dtype=np.int64))
        total = out.type.shape[axis]
        full = (1, before, total, after)
        element = out.type.element
        acc_element = element.with_(storage=i32) if out.type.is_quant else i32
        consts = np.zeros(full, np.int64)
        has_const = False
        terms = []
        offset = 0
        for v in op.operands:
            length = v.type.shape[axis]
            if v.owner.name == "qir.const":
                consts[:, :, offset:offset + length, :] = np.asarray(v.owner.attrs["value"]).reshape(
                    1, before, length, after)
                has_const = True
            else:
                x = module.create("int.reshape", [v], [TensorType((1, before, length, after), v.type.element)],
                                  {"shape": [1, before, length, after]}, op.loc).result
                if length != total:
                    x = pad_op(module, x, [offset, 0, total - offset - length, 0], 0, op.loc)
                terms.append(x)
            offset += length
        if not terms:
            continue  # a concat of constants is folded before this
        if has_const:
            terms.append(const_op(module, consts.astype(np.int32), TensorType(full, i32), op.loc))
        y = terms[0]
        for term in terms[1:]:
            y = module.create("int.add", [y, term], [TensorType(full, acc_element)], {}, op.loc).result
        if len(terms) > 1:  # back to the 8-bit storage: every sum is one operand's value, so this only narrows
            storage = out.type.storage
            y = module.create("int.requant_shift", [y], [TensorType(full, element)],
                              {"mul": np.array([1]), "add": np.array([0]), "div": 1, "signed": storage.signed,
                               "n_levels": 1 << storage.width}, op.loc).result
        back = module.create("int.reshape", [y], [out.type], {"shape": list(out.type.shape)}, op.loc)
        module.replace_op(op, [back.result])
