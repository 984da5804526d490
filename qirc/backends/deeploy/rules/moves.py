"""Data movement between a linear op and its requant: the requant moves up so that the platform fuses the pair."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ....qir.ir import Module, Operation, Value, const_op
from ..targets import DeeployTarget
from .common import const_value
from .rule import rule

_LINEAR = ("int.conv", "int.gemm", "int.matmul")
_MOVES = ("int.reshape", "int.transpose")


def _single_use_chain(rq: Operation, ops) -> Tuple[List[Operation], Value]:
    """The single-use chain of `ops` ops that the requant reads (nearest first), and the value at its start."""
    chain: List[Operation] = []
    value = rq.operands[0]
    while value.owner.name in ops and len(value.uses) == 1:
        chain.append(value.owner)
        value = value.owner.operands[0]
    return chain, value


def _requant_first(module: Module, rq: Operation, chain: List[Operation], value: Value) -> None:
    """value -> chain -> rq becomes value -> rq -> the chain again, on the requant's element type."""
    element = rq.result.type.element
    moved = module.create("int.requant_shift", [value], [value.type.with_element(element)], dict(rq.attrs),
                          rq.loc).result
    for op in reversed(chain):  # from the start of the chain towards the old requant
        moved = module.create(op.name, [moved], [op.result.type.with_element(element)], dict(op.attrs),
                              op.loc).result
    module.replace_op(rq, [moved])


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
        chain, value = _single_use_chain(rq, _MOVES)
        if any(op.name == "int.transpose" for op in chain) and value.owner.name in _LINEAR and len(value.uses) == 1:
            _requant_first(module, rq, chain, value)
    module.erase_dead()


@rule("requant-before-maxpools")
def requant_before_maxpools(module: Module, target: DeeployTarget) -> None:
    """int32 value -> reshape/transpose/maxpool chain (with a MaxPool) -> per-tensor requant_shift with mul > 0
    becomes int32 value -> requant_shift -> the same chain, on 8-bit values (a pool of 8-bit values is left alone).

    onnxruntime quantizes neither a Sub nor the MaxPool after it, so the requant of `relu(a(x)) - b(x)` comes after
    the pool; Deeploy's MaxPool takes 8-bit input only.  A per-tensor requant with a positive multiplier is a
    non-decreasing map of each value, so it commutes with taking a maximum (a padded border included: it never
    wins either way) and with moving values; the chain must be single-use."""
    for rq in module.walk("int.requant_shift"):
        mul = np.asarray(rq.attrs["mul"])
        if mul.size != 1 or np.asarray(rq.attrs["add"]).size != 1 or int(mul.reshape(())) <= 0:
            continue
        chain, value = _single_use_chain(rq, _MOVES + ("int.maxpool",))
        if any(op.name == "int.maxpool" for op in chain) and len(value.uses) == 1 and value.type.storage.width > 8:
            _requant_first(module, rq, chain, value)
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

