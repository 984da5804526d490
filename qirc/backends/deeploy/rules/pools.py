"""Pools: integer sum pools in the target's `sum_pool` form (targets.POOL_FORMS), MaxPool padding made explicit."""
from __future__ import annotations

import numpy as np

from ....qir.ir import Module, Operation, const_op, pad_op
from ....qir.types import ScalarType, TensorType
from ..targets import DeeployTarget
from .common import fail, sole_user
from .rule import rule


@rule("sum-pools")
def sum_pools(module: Module, target: DeeployTarget) -> None:
    """Rewrite every integer sum pool into the target's `sum_pool` form (targets.POOL_FORMS); a sum over other
    axes (a transformer's mean over tokens) is first written as a spatial sum of NCHW (`_as_spatial_sum`)."""
    for op in module.walk("int.reduce_sum"):
        if op.operands[0].type.rank != 4 or sorted(a % 4 for a in op.attr("axes")) != [2, 3]:
            _as_spatial_sum(module, op)
    pool_matmuls = []
    for op in module.walk():
        if op.name not in ("int.reduce_sum", "int.sumpool"):
            continue
        x = op.operands[0]
        if x.type.rank != 4:
            raise fail(op, target, f"{op.name} of a rank-{x.type.rank} tensor has no Deeploy form (only NCHW "
                                   "spatial sums are supported)")
        if target.sum_pool is None:
            raise fail(op, target, "integer average pooling has no working form on this platform")
        n, c, h, w = x.type.shape
        if op.name == "int.reduce_sum":
            axes = sorted(a % 4 for a in op.attr("axes"))
            if axes != [2, 3]:
                raise fail(op, target, f"int.reduce_sum over axes {axes} has no Deeploy form (only the spatial "
                                       "axes 2, 3 of NCHW)")
            kernel, pads, strides = [h, w], [0, 0, 0, 0], [1, 1]
        else:
            kernel = list(op.attr("kernel_shape"))
            pads = list(op.attr("pads") or [0, 0, 0, 0])
            strides = list(op.attr("strides") or [1, 1])
        if kernel == [1, 1] and not any(pads) and tuple(op.result.type.shape[2:]) == (h, w):
            # a sum over one element (a global pool over a 1x1 map) is the identity: no op, so no gain-1 requant
            # after a MatMul or Conv either (CMSIS's Q31 merge cannot take one)
            _identity_sum(module, op)
            continue
        if target.sum_pool == "ones-matmul" and kernel == [h, w] and not any(pads):
            pool_matmuls.append(_global_sum_to_matmul(module, op))
        else:
            # windowed pools on "ones-matmul" targets too: the all-ones depthwise Conv takes the target's
            # depthwise form (CMSIS: written channels-last, see targets.DeeployTarget.depthwise_layout)
            _sum_pool_to_conv(module, op, target, kernel, pads, strides)
    _sink_reshapes_below_requant(module)
    for mm in pool_matmuls:
        # the form is proven as MatMul fused with its requant (one fully-connected kernel); a bare MatMul is not
        user = sole_user(mm.result)
        if user is None or user.name != "int.requant_shift":
            raise fail(mm, target, "a global average pool must be followed by a per-tensor requant_shift (its only "
                                   "user, possibly behind reshapes) on this platform")


def _identity_sum(module: Module, op: Operation) -> None:
    """Replace a sum over a single element by its operand (reshaped when keepdims = 0 drops the unit axes)."""
    x, out = op.operands[0], op.result
    result = x
    if tuple(x.type.shape) != tuple(out.type.shape):
        result = module.create("int.reshape", [x], [TensorType(out.type.shape, x.type.element)],
                               {"shape": list(out.type.shape)}, op.loc + "/reshape").result
    module.replace_op(op, [result])


def _as_spatial_sum(module: Module, op: Operation) -> None:
    """int.reduce_sum over any axes of any rank (the mean over tokens of [L, N, E] or [N, L, E]) as the spatial sum
    the pool forms take:  Transpose (kept axes first, reduced last; skipped when already so) -> Reshape
    [1, K, R, 1] -> int.reduce_sum(axes 2, 3) -> Reshape to the result's shape, with K the product of the kept axes
    and R of the reduced ones.  The same integers are summed, so the result is unchanged."""
    x = op.operands[0]
    rank = x.type.rank
    axes = sorted(a % rank for a in op.attr("axes")) if op.attr("axes") else list(range(rank))
    kept = [a for a in range(rank) if a not in axes]
    k = int(np.prod([x.type.shape[a] for a in kept], dtype=np.int64))
    r = int(np.prod([x.type.shape[a] for a in axes], dtype=np.int64))
    loc = op.loc
    perm = kept + axes
    if perm != list(range(rank)):
        x = module.create("int.transpose", [x], [x.type.with_shape(tuple(x.type.shape[p] for p in perm))],
                          {"perm": perm}, loc + "/tokens_last").result
    x = module.create("int.reshape", [x], [x.type.with_shape((1, k, r, 1))], {"shape": [1, k, r, 1]},
                      loc + "/nchw").result
    out = op.result
    summed = module.create("int.reduce_sum", [x], [out.type.with_shape((1, k, 1, 1))], {"axes": [2, 3], "keepdims": 1},
                           loc, [out.name]).result
    back = module.create("int.reshape", [summed], [out.type], {"shape": list(out.type.shape)},
                         loc + "/reshape").result
    module.replace_op(op, [back])


def _global_sum_to_matmul(module: Module, op: Operation) -> Operation:
    """A global sum over H, W of [N,C,H,W] as  Reshape [N*C, H*W] -> MatMul(ones [H*W, 1]) -> Reshape.

    The sum of each row is exact in int32 (|x| <= 255, H*W < 2^23).  The trailing reshape sits between the MatMul and
    the requant that divides by the count until `_sink_reshapes_below_requant` moves it below, so that the platform
    fuses MatMul + RequantShift (CMSIS: RequantizedGemm, one fully-connected call over N*C rows of H*W)."""
    x = op.operands[0]
    n, c, h, w = x.type.shape
    rows = x.type.with_shape((n * c, h * w))
    flat = module.create("int.reshape", [x], [rows], {"shape": [n * c, h * w]}, op.loc + "/rows").result
    ones = const_op(module, np.ones((h * w, 1), np.int8), TensorType((h * w, 1), ScalarType("i8")), op.loc)
    out = op.result
    matmul = module.create("int.matmul", [flat, ones], [TensorType((n * c, 1), out.type.element)], {}, op.loc,
                           [out.name])
    back = module.create("int.reshape", [matmul.result], [out.type], {"shape": list(out.type.shape)},
                         op.loc + "/reshape").result
    module.replace_op(op, [back])
    return matmul


def _sum_pool_to_conv(module: Module, op: Operation, target: DeeployTarget, kernel, pads, strides) -> None:
    """A sum pool as a depthwise Conv with an all-ones kernel (group = channels)."""
    x = op.operands[0]
    n, c, h, w = x.type.shape
    conv_shape = (n, c, (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1,
                  (w + pads[1] + pads[3] - kernel[1]) // strides[1] + 1)
    out = op.result
    if op.name == "int.sumpool" and tuple(conv_shape) != tuple(out.type.shape):
        raise fail(op, target, "int.sumpool with ceil_mode rounding up has no Deeploy form")
    if any(pads):
        # int.sumpool's padding adds zeros: an explicit zero Pad says so (the Conv's own padding is refused for
        # zero-point-shifted tensors, and CMSIS-style parsers take unpadded depthwise Convs)
        padded = TensorType((n, c, h + pads[0] + pads[2], w + pads[1] + pads[3]), x.type.element)
        x = module.create("int.pad", [x], [padded], {"pads": [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]],
                                                      "value": 0}, op.loc + "/pad").result
        pads = [0, 0, 0, 0]
    ones = const_op(module, np.ones((c, 1, kernel[0], kernel[1]), np.int8),
                    TensorType((c, 1, kernel[0], kernel[1]), ScalarType("i8")), op.loc)
    acc_type = TensorType(conv_shape, out.type.element)
    conv = module.create("int.conv", [x, ones], [acc_type],
                         {"kernel_shape": kernel, "pads": pads, "strides": strides, "dilations": [1, 1],
                          "group": c}, op.loc, [out.name])
    result = conv.result
    if tuple(conv_shape) != tuple(out.type.shape):  # reduce_sum with keepdims = 0
        result = module.create("int.reshape", [result], [out.type], {"shape": list(out.type.shape)},
                               op.loc + "/reshape").result
    module.replace_op(op, [result])


def _per_channel_params(rqs: Operation, new_rank: int, channel_axis: int, channels: int):
    """mul, add of `rqs` re-shaped to broadcast along `channel_axis` of a rank-`new_rank` tensor, or None."""
    out = []
    for name in ("mul", "add"):
        a = np.asarray(rqs.attrs[name])
        if a.size == 1:
            out.append(a.reshape([1]))
            continue
        if a.size != channels:
            return None
        shape = [1] * new_rank
        shape[channel_axis] = channels
        out.append(a.reshape(shape))
    return out


def _sink_reshapes_below_requant(module: Module) -> None:
    """conv/matmul -> reshape -> requant  becomes  conv/matmul -> requant -> reshape (the platforms fuse a Conv or a
    MatMul with the requant after it).  Chains of reshapes after a MatMul (or its requant) collapse into one first,
    so that a flatten behind a global pool does not keep the requant away from the MatMul."""
    _collapse_matmul_reshapes(module)
    for rs in module.walk("int.reshape"):
        producer = rs.operands[0].owner
        rqs = sole_user(rs.result)
        if producer.name not in ("int.conv", "int.matmul") or rqs is None or rqs.name != "int.requant_shift":
            continue
        if len(rs.operands[0].uses) != 1:
            continue
        acc_t = rs.operands[0].type
        reshaped = rs.result.type.shape
        if producer.name == "int.conv":
            # only a reshape that drops the trailing 1x1 of a [N, C, 1, 1] tensor keeps the channel axis at 1
            if acc_t.shape[2:] != (1, 1) or tuple(reshaped[:2]) != tuple(acc_t.shape[:2]):
                continue
            params = _per_channel_params(rqs, 4, 1, acc_t.shape[1])
            if params is None:
                continue
        else:
            # the [N*C, 1] sums of a global pool: channels run along rows, so only a per-tensor requant moves
            params = [np.asarray(rqs.attrs[name]) for name in ("mul", "add")]
            if any(p.size != 1 for p in params):
                continue
            params = [p.reshape([1]) for p in params]
        new_rqs = module.create("int.requant_shift", [rs.operands[0]], [rqs.result.type.with_shape(acc_t.shape)],
                                {**rqs.attrs, "mul": params[0], "add": params[1]}, rqs.loc)
        new_rs = module.create("int.reshape", [new_rqs.result], [rqs.result.type], {"shape": list(reshaped)},
                               rs.loc, [rqs.result.name])
        module.replace_op(rqs, [new_rs.result])
        module.erase(rs)
    _collapse_matmul_reshapes(module)


def _collapse_matmul_reshapes(module: Module) -> None:
    """reshape(reshape(x)) -> reshape(x) where x is a MatMul's result or its requant's and the inner reshape has no
    other user (the global-pool MatMul form; other reshapes stay as the verified forms have them)."""
    for rs in module.walk("int.reshape"):
        inner = rs.operands[0].owner
        if inner.name != "int.reshape" or len(inner.result.uses) != 1:
            continue
        source = inner.operands[0].owner
        if source.name == "int.requant_shift":
            source = source.operands[0].owner
        if source.name == "int.matmul":
            module.set_operand(rs, 0, inner.operands[0])
            module.erase(inner)


@rule("explicit-pool-pads")
def explicit_pool_pads(module: Module, target: DeeployTarget) -> None:
    """MaxPool with pads -> Pad (value = the storage minimum, which never wins) + MaxPool without pads: Deeploy's
    MaxPool kernels take no padding."""
    for op in module.walk("int.maxpool"):
        pads = list(op.attr("pads") or [])
        if not any(pads):
            continue
        x = op.operands[0]
        module.set_operand(op, 0, pad_op(module, x, pads, x.type.element.min, op.loc + "/pad"))
        op.attrs["pads"] = [0] * len(pads)
