"""Rank-3 channel tensors (Conv1d, 1-D pooling, per-channel requants of [N, C, L]) as rank-4 [N, C, 1, L].

Deeploy's Conv, pools, ReduceMean forms and per-channel RequantShift read NCHW (or 2-D) tensors only.  A rank-3
tensor [N, C, L] holds the same integers in the same order as [N, C, 1, L], so the rule `rank3-to-rank4`
(`lift_rank3(module)`) gives every rank-3 value of a "channel region" that extra unit axis:

- the region grows from the ops that need NCHW (int.conv, int.maxpool, int.sumpool, int.reduce_sum of a rank-3
  tensor, an int.requant_shift whose mul/add vary along axis 1 of a rank-3 tensor) through the ops that read and
  write tensors of one layout (requant_shift, clip, add, sub, mul, pad, concat, and those above), in both directions;
- in the region a 1-D window becomes a [1, k] window (kernel_shape, pads, strides, dilations), a rank-3 constant
  (conv weights, per-channel requant parameters, an added constant) gets the unit axis, a constant of lower rank is
  first broadcast to rank 3, a reduction over L is one over (1, L), a per-axis quant axis >= 2 moves by one;
- at the region's border an int.reshape reading or writing a region value simply takes the rank-4 shape (same data
  order), and an int.flatten at axis 1 or 2 reads it unchanged; any other reader outside the region, a graph output, or a rank-3 value entering it from outside gets an
  explicit int.reshape.
Semantics are unchanged: every integer stays where it was in memory order.  Token tensors [N, T, D] that only meet
MatMul / Gemm / Reshape / Transpose stay rank 3.
"""
from __future__ import annotations

from typing import Dict, List, Set

import numpy as np

from ....qir.ir import Module, Operation, Value, const_op
from ....qir.types import TensorType
from ..targets import DeeployTarget
from .rule import rule

#: ops whose rank-3 operands and results must be NCHW-like
_SEEDS = ("int.conv", "int.maxpool", "int.sumpool", "int.reduce_sum")
#: ops that keep one layout across their (non-constant) operands and results
_LAYOUT_OPS = ("int.requant_shift", "int.clip", "int.add", "int.sub", "int.mul", "int.pad", "int.concat",
               "int.conv", "int.maxpool", "int.sumpool")
_WINDOWED = ("int.conv", "int.maxpool", "int.sumpool")


def _is_const(v: Value) -> bool:
    return v.owner.name == "qir.const"


def _lift_shape(shape) -> tuple:
    shape = tuple(shape)
    return shape[:2] + (1,) + shape[2:]


def _lift_type(t: TensorType) -> TensorType:
    element = t.element
    if t.is_quant and element.is_per_axis and element.axis % 3 >= 2:
        element = element.with_(axis=element.axis % 3 + 1)
    return TensorType(_lift_shape(t.shape), element)


def _needs_nchw(op: Operation) -> bool:
    if op.name in _SEEDS:
        return op.operands[0].type.rank == 3
    if op.name == "int.requant_shift" and op.operands[0].type.rank == 3:
        for key in ("mul", "add"):
            a = np.asarray(op.attr(key))
            if a.ndim == 3 and a.shape[1] > 1:
                return True
    return False


def _region(module: Module) -> Set[int]:
    """ids of the rank-3 values to lift."""
    lifted: Set[int] = set()
    frontier: List[Operation] = [op for op in module.ops() if _needs_nchw(op)]
    seen_ops: Set[int] = set()
    while frontier:
        op = frontier.pop()
        if id(op) in seen_ops:
            continue
        seen_ops.add(id(op))
        keep_result = not (op.name == "int.reduce_sum" and not int(op.attr("keepdims")))
        values = [v for v in op.operands if not _is_const(v) and v.type.rank == 3]
        if op.name in ("int.conv",):
            values = [op.operands[0]]
        if keep_result:
            values += [r for r in op.results if r.type.rank == 3]
        for v in values:
            if id(v) in lifted or v.owner.name not in _LAYOUT_OPS + ("int.reshape", "int.reduce_sum"):
                continue  # a graph input, a transpose, a matmul...: an explicit reshape up joins it to the region
            lifted.add(id(v))
            neighbours = [v.owner] + list(v.users)
            frontier += [n for n in neighbours if n.name in _LAYOUT_OPS or n.name == "int.reduce_sum"]
    return lifted


@rule("rank3-to-rank4")
def rank3_to_rank4(module: Module, target: DeeployTarget) -> None:
    """Rank-3 channel tensors [N, C, L] (Conv1d, 1-D pools, their requants, a mean over L) -> [N, C, 1, L], with
    1 x k windows and int.reshape at the region's border (graph inputs and outputs, token tensors of MatMuls keep
    their rank)."""
    lift_rank3(module)


def lift_rank3(module: Module) -> int:
    """Rewrite the channel regions of rank-3 values to rank 4 (see the module docstring); returns how many values
    were lifted."""
    lifted_ids = _region(module)
    if not lifted_ids:
        return 0
    values: Dict[int, Value] = {}
    for op in module.ops():
        for v in list(op.operands) + list(op.results):
            if id(v) in lifted_ids:
                values[id(v)] = v
    region_ops = {id(v.owner): v.owner for v in values.values()}
    for v in values.values():
        for user in v.users:
            region_ops[id(user)] = user
    originals = {id(v): v.type for v in values.values()}
    for v in values.values():
        v.type = _lift_type(v.type)
    for op in list(region_ops.values()):
        if op.module is not module:
            continue
        _rewrite(module, op, lifted_ids, originals)
    module.erase_dead()
    return len(values)


def _rewrite(module: Module, op: Operation, lifted: Set[int], originals) -> None:
    in_region = any(id(r) in lifted for r in op.results) or (
        op.name == "int.reduce_sum" and id(op.operands[0]) in lifted)
    if op.name == "int.reshape":
        # a reshape at the border takes the rank-4 shape on whichever side is lifted (the same data order)
        if id(op.results[0]) in lifted:
            op.attrs["shape"] = list(op.results[0].type.shape)
        return
    if op.name == "int.flatten" and int(op.attr("axis")) % 3 <= 2:
        return  # [N, C, 1, L] flattens at axis 1 or 2 to what [N, C, L] does
    if not in_region:
        # a reader outside the region (or a graph output) sees the rank-3 shape again
        for i, v in enumerate(op.operands):
            if id(v) in lifted:
                back = module.create("int.reshape", [v], [TensorType(originals[id(v)].shape, v.type.element)],
                                     {"shape": list(originals[id(v)].shape)}, v.owner.loc + "/rank3")
                module.set_operand(op, i, back.result)
        return
    for i, v in enumerate(op.operands):
        if id(v) in lifted:
            continue
        if _is_const(v):
            if op.name in _WINDOWED and i == 0:
                pass
            elif op.name == "int.conv" and i == 1:
                w = np.asarray(v.owner.attrs["value"])
                module.set_operand(op, i, const_op(module, w.reshape(_lift_shape(w.shape)),
                                                   TensorType(_lift_shape(v.type.shape), v.type.element), v.owner.loc))
                continue
            elif op.name == "int.conv" and i == 2:
                continue  # the bias is per output channel, rank 1
            else:
                k = np.asarray(v.owner.attrs["value"])
                k3 = k.reshape((1,) * (3 - k.ndim) + k.shape) if k.ndim < 3 else k
                module.set_operand(op, i, const_op(module, k3.reshape(_lift_shape(k3.shape)),
                                                   TensorType(_lift_shape(k3.shape), v.type.element), v.owner.loc))
                continue
        if v.type.rank == 3:
            up = module.create("int.reshape", [v], [_lift_type(v.type)], {"shape": list(_lift_shape(v.type.shape))},
                               v.owner.loc + "/rank4")
            module.set_operand(op, i, up.result)
    if op.name in _WINDOWED:
        for key in ("kernel_shape", "strides", "dilations"):
            value = op.attrs.get(key)
            if value:
                op.attrs[key] = [1] + [int(x) for x in value]
        pads = op.attrs.get("pads")
        if pads:
            op.attrs["pads"] = [0, int(pads[0]), 0, int(pads[1])]
    elif op.name == "int.reduce_sum":
        axes = [int(a) % 3 for a in op.attr("axes")]
        new_axes = [a if a < 2 else a + 1 for a in axes]
        if not int(op.attr("keepdims")) or 2 in axes:
            new_axes = sorted(set(new_axes) | {2})
        op.attrs["axes"] = new_axes
    elif op.name == "int.pad":
        pads = [int(p) for p in op.attr("pads")]
        op.attrs["pads"] = pads[:2] + [0] + pads[2:5] + [0] + pads[5:]
    elif op.name == "int.concat":
        axis = int(op.attr("axis")) % 3
        op.attrs["axis"] = axis if axis < 2 else axis + 1
    elif op.name == "int.requant_shift":
        for key in ("mul", "add"):
            a = np.asarray(op.attr(key))
            if a.ndim == 3:
                op.attrs[key] = a.reshape(_lift_shape(a.shape))
