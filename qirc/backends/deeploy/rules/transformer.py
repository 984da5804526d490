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

from ....qir.ir import Module, Operation, const_op, pad_op
from ....qir.types import TensorType, i32
from ..targets import DeeployTarget
from .common import fail
from .rule import rule

SIRACUSA = frozenset({"deeploy-siracusa"})


@rule("flatten-batched-matmuls")
def flatten_batched_matmuls(module: Module, target: DeeployTarget) -> None:
    """int.matmul(a [..., M, K], b [K, N]) with a of rank > 2 -> reshape a to [B*M, K], a 2-D int.matmul (and its bias
    Add and RequantShift), reshape the [B*M, N] result back: Deeploy would read the 2-D b out of bounds after one
    batch, and its RequantShift takes per-feature parameters only on the last axis of a 2-D tensor."""
    for op in module.walk("int.matmul"):
        if op.module is not module:
            continue
        a, b = op.operands
        sa, sb = a.type.shape, b.type.shape
        if len(sb) != 2 or len(sa) <= 2:
            continue
        rows = int(np.prod(sa[:-1], dtype=np.int64))
        flat = module.create("int.reshape", [a], [TensorType((rows, sa[-1]), a.type.element)],
                             {"shape": [rows, sa[-1]]}, op.loc + "/flatten")
        out = op.results[0]
        mm = module.create("int.matmul", [flat.result, b], [TensorType((rows, sb[-1]), _flat_element(out.type))], {},
                           op.loc)
        flat_value, value = mm.result, out  # the 2-D result so far and the value of the original graph it stands for
        # the bias Add (a constant over the features) and the requant after the product stay on the 2-D form, so that
        # the bias folds into the requant and per-feature parameters sit on the last axis of a 2-D tensor
        while len(value.uses) == 1 and value.users[0].results:  # (qir.output has no result)
            user = value.users[0]
            t = user.results[0].type
            flat_type = TensorType((rows, sb[-1]), _flat_element(t))
            if user.name == "int.add" and _feature_const(user, value):
                c = np.asarray(next(v for v in user.operands if v is not value).owner.attrs["value"]).reshape(-1)
                c_type = next(v for v in user.operands if v is not value).type
                c_flat = const_op(module, c, TensorType(c.shape, c_type.element), user.loc)
                flat_value = module.create("int.add", [flat_value, c_flat], [flat_type], {}, user.loc).result
            elif user.name == "int.requant_shift" and all(_feature_param(user.attr(k), t.rank) for k in ("mul", "add")):
                attrs = dict(user.attrs)
                for k in ("mul", "add"):
                    attrs[k] = np.asarray(attrs[k]).reshape(-1)
                flat_value = module.create("int.requant_shift", [flat_value], [flat_type], attrs, user.loc).result
            else:
                break
            value = user.results[0]
        back = module.create("int.reshape", [flat_value], [value.type], {"shape": list(value.type.shape)},
                             op.loc + "/unflatten")
        module.replace_all_uses(value, back.result, except_ops=[back])
        module.erase_dead()


def _feature_param(p, rank: int) -> bool:
    """A requant parameter that is per tensor or varies over the last axis only."""
    p = np.asarray(p)
    return p.size == 1 or (p.ndim <= rank and all(d == 1 for d in p.shape[:-1]))


def _flat_element(t: TensorType):
    """The element type of t on the 2-D [rows, features] form (a per-feature axis becomes axis 1)."""
    if t.is_quant and t.element.is_per_axis:
        return t.element.with_(axis=1)
    return t.element


def _feature_const(add: Operation, x) -> bool:
    """True when `add` adds to x a constant that varies over the last axis only (a bias)."""
    others = [v for v in add.operands if v is not x]
    if len(others) != 1 or others[0].owner.name != "qir.const":
        return False
    shape = others[0].type.shape
    return all(d == 1 for d in shape[:-1]) and add.results[0].type.shape == x.type.shape


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


@rule("requant-before-shape-ops")
def requant_before_shape_ops(module: Module, target: DeeployTarget) -> None:
    """A per-tensor int.requant_shift after Reshape / Transpose ops (ViT's patch embedding: Conv -> bias Add ->
    Reshape -> Transpose -> requant) moves before them: it is elementwise with one mul and add, so it commutes with
    moving the values, and it then meets the Conv and its bias (which fold into it) on the int32 tensor instead of
    leaving an unfused int32 Conv + Add for the platform."""
    for rqs in module.walk("int.requant_shift"):
        if np.asarray(rqs.attr("mul")).size != 1 or np.asarray(rqs.attr("add")).size != 1:
            continue
        chain = []
        v = rqs.operands[0]
        while v.owner.name in ("int.reshape", "int.transpose") and len(v.uses) == 1:
            chain.append(v.owner)
            v = v.owner.operands[0]
        if not chain or v.owner.name in ("qir.input", "qir.const"):
            continue
        element = rqs.results[0].type.element
        moved = module.create("int.requant_shift", [v], [TensorType(v.type.shape, element)], dict(rqs.attrs),
                              rqs.loc).result
        for shape_op in reversed(chain):
            t = shape_op.results[0].type
            moved = module.create(shape_op.name, [moved], [TensorType(t.shape, element)], dict(shape_op.attrs),
                                  shape_op.loc).result
        module.replace_op(rqs, [moved])
    module.erase_dead()


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
