"""Data movement between a linear op and its requant: the requant moves up so that the platform fuses the pair."""
from __future__ import annotations

from typing import List

import numpy as np

from ....qir.ir import Module, Operation, const_op
from ....qir.types import i32
from ..targets import DeeployTarget
from .common import const_value
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


def _to_2d(element, rank: int):
    """A tensor element type of a [..., N] value, for its [rows, N] form (a per-axis axis on N becomes 1)."""
    if getattr(element, "is_per_axis", False):
        if element.axis % rank != rank - 1:
            return None
        return element.with_(axis=1)
    return element


@rule("token-matmuls-2d")
def token_matmuls_2d(module: Module, target: DeeployTarget) -> None:
    """int.matmul(x [..., M, K], W [K, N] constant) [-> int.add(bias [N])] [-> int.requant_shift] on token
    tensors -> Reshape x to [rows, K] -> the 2-D MatMul, bias add and requant -> Reshape back to [..., M, N].

    Brevitas' dense layers on tokens ([1, L, E] or [L, 1, E]) are MatMuls of a rank-3 activation by 2-D weights.
    Deeploy's RequantShift reads per-channel parameters along dim 1 and merges a constant Add before it along dim 1
    only, so the per-feature bias and requant of a token tensor must see it 2-D [tokens, features]; and a batched
    operand times a 2-D one would read the weights out of bounds after the first batch.  The same integers are
    computed."""
    for op in module.walk("int.matmul"):
        a, w = op.operands
        if a.type.rank <= 2 or w.type.rank != 2 or const_value(w) is None:
            continue
        rank = a.type.rank
        rows, k, n = int(np.prod(a.type.shape[:-1], dtype=np.int64)), a.type.shape[-1], w.type.shape[-1]
        tail: List[Operation] = []
        value = op.result
        user = value.uses[0][0] if len(value.uses) == 1 else None
        if user is not None and user.name == "int.add":
            other = user.operands[1] if user.operands[0] is value else user.operands[0]
            c = const_value(other)
            if c is not None and c.size == n and c.shape[-1:] == (n,):
                tail.append(user)
                value = user.result
                user = value.uses[0][0] if len(value.uses) == 1 else None
        if user is not None and user.name == "int.requant_shift" and \
                all(np.asarray(user.attrs[p]).size in (1, n) for p in ("mul", "add")):
            tail.append(user)
        per_feature = any(t.name == "int.add" or any(np.asarray(t.attrs[p]).size > 1 for p in ("mul", "add"))
                          for t in tail)
        if not per_feature and int(np.prod(a.type.shape[:-2], dtype=np.int64)) == 1:
            continue  # one batch, nothing per feature: the rank-3 form is already what Deeploy computes
        elements = [_to_2d(x.type.element, rank) for x in [op.result] + [t.result for t in tail]]
        if any(e is None for e in elements):
            continue
        loc = op.loc
        flat = module.create("int.reshape", [a], [a.type.with_shape((rows, k))], {"shape": [rows, k]},
                             loc + "/tokens_2d").result
        out = module.create("int.matmul", [flat, w], [op.result.type.with_shape((rows, n)).with_element(elements[0])],
                            {}, loc).result
        for t, element in zip(tail, elements[1:]):
            t_type = t.result.type.with_shape((rows, n)).with_element(element)
            if t.name == "int.add":
                c_value = t.operands[0] if const_value(t.operands[0]) is not None else t.operands[1]
                bias = const_value(c_value).reshape(n)
                c_new = const_op(module, bias, c_value.type.with_shape((n,)), c_value.owner.loc)
                out = module.create("int.add", [out, c_new], [t_type], {}, t.loc).result
            else:
                attrs = dict(t.attrs)
                for p in ("mul", "add"):
                    arr = np.asarray(attrs[p])
                    attrs[p] = arr.reshape(n) if arr.size == n and n != 1 else arr.reshape(1)
                out = module.create("int.requant_shift", [out], [t_type], attrs, t.loc).result
        last = tail[-1] if tail else op
        back = module.create("int.reshape", [out], [last.result.type], {"shape": list(last.result.type.shape)},
                             loc + "/tokens_back").result
        module.replace_op(last, [back])
    module.erase_dead()


@rule("class-token-without-concat", targets=frozenset({"deeploy-cortexm"}))
def class_token_without_concat(module: Module, target: DeeployTarget) -> None:
    """int.concat of constant tokens and one computed tensor (a class token in front of the frames), read by the
    int.mul of the add after it -> int.mul(int.pad(x), m) + int.add(m * the constants in their slots), the Pad on
    x reshaped to NCHW [outer, 1, tokens, inner]: the platforms without Concat (CMSIS).

    The padding puts stored zeros where the constants go and the constant tensor holds zeros where x goes, so the
    sum is the concatenation's stored integers exactly, times the multiplier the add-rescale put after it."""
    for op in module.walk("int.concat"):
        values = [const_value(v) for v in op.operands]
        computed = [i for i, c in enumerate(values) if c is None]
        user = op.result.uses[0][0] if len(op.result.uses) == 1 else None
        if len(computed) != 1 or user is None or user.name != "int.mul":
            continue
        factor = const_value(user.operands[1] if user.operands[0] is op.result else user.operands[0])
        if factor is None or factor.size != 1:
            continue
        rank = op.result.type.rank
        axis = int(op.attr("axis")) % rank
        x = op.operands[computed[0]]
        sizes = [v.type.shape[axis] for v in op.operands]
        before, after = sum(sizes[:computed[0]]), sum(sizes[computed[0] + 1:])
        # Deeploy pads the spatial axes of NCHW: x as [outer, 1, tokens, inner], padded along H, then back
        shape = x.type.shape
        outer, inner = int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis + 1:], dtype=np.int64))
        nchw = module.create("int.reshape", [x], [x.type.with_shape((outer, 1, shape[axis], inner))],
                             {"shape": [outer, 1, shape[axis], inner]}, op.loc + "/nchw").result
        padded_shape = (outer, 1, shape[axis] + before + after, inner)
        padded = module.create("int.pad", [nchw], [x.type.with_shape(padded_shape)],
                               {"pads": [0, 0, before, 0, 0, 0, after, 0], "value": 0}, op.loc + "/pad").result
        padded = module.create("int.reshape", [padded], [op.result.type], {"shape": list(op.result.type.shape)},
                               op.loc + "/tokens_back").result
        slots = np.zeros(op.result.type.shape, np.int64)
        start = 0
        for i, (v, size) in enumerate(zip(values, sizes)):
            if v is not None:
                index = [slice(None)] * rank
                index[axis] = slice(start, start + size)
                slots[tuple(index)] = np.asarray(v, np.int64).reshape(op.operands[i].type.shape)
            start += size
        m = int(np.asarray(factor).reshape(-1)[0])
        scaled = slots * m
        if np.abs(scaled).max(initial=0) >= 1 << 31:
            continue
        mul = module.create("int.mul", [padded, user.operands[1] if user.operands[0] is op.result else
                                        user.operands[0]], [user.result.type], {}, user.loc).result
        tokens = const_op(module, scaled.astype(np.int32), user.result.type.with_element(i32), op.loc + "/tokens")
        add = module.create("int.add", [mul, tokens], [user.result.type], {}, op.loc, [user.result.name]).result
        module.replace_op(user, [add])
    module.erase_dead()
