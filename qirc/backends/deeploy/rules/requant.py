"""Requant parameters: mul/add shaped per the contract and stated as the platform's kernels compute them."""
from __future__ import annotations

import numpy as np

from ....qir.ir import Module, Operation
from ..targets import DeeployTarget
from .clips import requant_range
from .common import fail, fits_int32, move_zero_points, sole_user
from .rule import rule

_MERGED = ("int.conv", "int.gemm", "int.matmul")  # what the add_before_mul platforms merge with their requant


def _unit_shift(rqs: Operation):
    """c when `rqs` computes x + c (then clips): mul == div, one value each, add a multiple of div; else None."""
    mul, add = (np.asarray(rqs.attr(k), np.int64).reshape(-1) for k in ("mul", "add"))
    div = int(rqs.attr("div"))
    if mul.size != 1 or add.size != 1 or int(mul[0]) != div or int(add[0]) % div:
        return None
    return int(add[0]) // div


@rule("offset-after-merged-requant", when="add_before_mul")
def offset_after_merged_requant(module: Module, target: DeeployTarget) -> None:
    """A Conv's, Gemm's or MatMul's requant whose add is not a multiple of mul (an output zero point) and whose only
    user is a RequantShift that adds a constant and clips (the clip pair of a narrow ReLU) -> the same requant with
    an offset k moved out of its add (add - k div, a multiple of mul) and into the clipping RequantShift's (+ k).

    The platform's merge rounds add to a multiple of mul (requant-params states it), which moves the fused requant's
    output by up to half a step of its gain and flips its rounding now and then: harmless in an int8 tensor, but a
    4-bit ReLU's step is 16 int8 steps, and later layers amplify the flips beyond 4 output steps.  With k moved,
    nothing is rounded.  Exact: both requants clip, and k is chosen so that the values the second one lets through
    lie inside the first one's range before and after the move (clip(clip(y, R) + c, W) = clip(y + c, W) then)."""
    for rqs in module.walk("int.requant_shift"):
        if rqs.operands[0].owner.name not in _MERGED:
            continue
        mul = np.asarray(rqs.attr("mul"), np.int64)
        add = np.asarray(rqs.attr("add"), np.int64)
        div = int(rqs.attr("div"))
        if np.any(mul <= 0) or not np.any(add % mul):
            continue
        nxt = sole_user(rqs.result)
        c = None if nxt is None or nxt.name != "int.requant_shift" else _unit_shift(nxt)
        if c is None:
            continue
        lo, hi = requant_range(bool(rqs.attr("signed")), int(rqs.attr("n_levels")))
        lo2, hi2 = requant_range(bool(nxt.attr("signed")), int(nxt.attr("n_levels")))
        w_lo, w_hi = lo2 - c, hi2 - c  # the first requant's outputs that the second one does not clip
        if not (lo <= w_lo and w_hi <= hi):
            continue
        zero_points = rqs.result.type.quant.zero_points if rqs.result.type.is_quant else (0,)
        candidates = sorted(range(w_hi - hi, w_lo - lo + 1), key=lambda k: (abs(k - zero_points[0]), k))
        for k in candidates:
            moved = add - k * div
            if np.any(moved % mul) or not fits_int32(moved):
                continue
            if not move_zero_points(rqs.result, -k):
                continue
            rqs.attrs["add"] = moved
            nxt.attrs["add"] = np.asarray(nxt.attr("add"), np.int64) + k * int(nxt.attr("div"))
            break


@rule("requant-params")
def shape_requant_params(module: Module, target: DeeployTarget) -> None:
    """requant_shift mul/add are shaped per the contract ([1,C,1,1] after a 4-D tensor, [C] after a 2-D one, [1]
    per tensor; a Gemm's or MatMul's mul one scalar where the platform needs it), add is made a multiple of mul
    where the platform adds before multiplying (in the requants it fuses with a Conv, Gemm or MatMul); a div, n_levels or parameter the platform cannot take is refused."""
    for rqs in module.walk("int.requant_shift"):
        x = rqs.operands[0].type
        div = int(rqs.attr("div"))
        if div < 1 or div & (div - 1):
            raise fail(rqs, target, f"div {div} is not a power of two")
        n_levels = int(rqs.attr("n_levels"))
        if n_levels > 256:
            raise fail(rqs, target, f"n_levels {n_levels} exceeds Deeploy's 8-bit RequantShift output")
        params = []
        for name in ("mul", "add"):
            a = np.asarray(rqs.attr(name)).astype(np.int64)
            if not fits_int32(a):
                raise fail(rqs, target, f"requant_shift {name} does not fit int32")
            params.append(a)
        mul, add = params
        full = np.broadcast_shapes(mul.shape, add.shape)
        if mul.size == 1 and add.size == 1:
            shape = [1]
        else:
            nontrivial = [i - len(full) + x.rank for i, d in enumerate(full) if d != 1]
            if len(nontrivial) != 1:
                raise fail(rqs, target, f"requant_shift parameters of shape {list(full)} are not per tensor or per "
                                        "channel")
            axis, channels = nontrivial[0], max(full)
            if x.rank == 4 and axis == 1:
                shape = [1, channels, 1, 1]
            elif x.rank == 2 and axis == 1:
                shape = [channels]
            else:
                raise fail(rqs, target, f"per-channel requant_shift along axis {axis} of a rank-{x.rank} tensor has "
                                        "no Deeploy form (channels must be axis 1 of NCHW or the last axis of 2-D)")
        if target.add_before_mul and rqs.operands[0].owner.name in ("int.conv", "int.gemm", "int.matmul"):
            # the device adds an integer k before multiplying by mul: state the nearest multiple k * mul (emission
            # writes it so that Deeploy's merge, np.round(add / (mul + 1e-3)), reads back exactly k; a Gemm's moves
            # into its bias).  Only the requants its Conv/Gemm/MatMul merges fuse: a standalone RequantShift runs the
            # reference kernel with add as given (rounding add there costs up to half a step times the gain)
            add = np.rint(add / mul).astype(np.int64) * mul
        if target.gemm_scalar_mul and rqs.operands[0].owner.name in ("int.gemm", "int.matmul"):
            if np.unique(mul).size != 1:
                kind = "Gemm" if rqs.operands[0].owner.name == "int.gemm" else "MatMul"
                raise fail(rqs, target, f"a {kind} requant needs one multiplier for all channels on this platform "
                                        "(per-tensor weight scales)")
            rqs.attrs["mul"] = mul.reshape(-1)[:1].reshape(())
            rqs.attrs["add"] = add.reshape(-1) if add.size == 1 else \
                np.ascontiguousarray(np.broadcast_to(add, full)).reshape(shape)
            continue
        rqs.attrs["mul"] = np.ascontiguousarray(np.broadcast_to(mul, full)).reshape(shape)
        rqs.attrs["add"] = np.ascontiguousarray(np.broadcast_to(add, full)).reshape(shape)


@rule("smallest-exact-shift", when="q31_requant_multiplier")
def smallest_exact_shift(module: Module, target: DeeployTarget) -> None:
    """A Gemm's or MatMul's requant with gain mul/div >= 1 whose mul, add and div share a power of two -> the same
    requant with it divided out (a gain-1 global pool: mul = div = 2^23 -> mul = div = 1), which the CMSIS merge
    turns into a Q31 multiplier that fits int32 (2^30 with shift 1) where the larger one overflows.

    Exact for every x: floor((x*m*2^j + a*2^j + d*2^j/2) / (d*2^j)) = floor((x*m + a + d/2) / d), also for d = 1
    (the kernel adds no rounding term: x*m + a either way)."""
    for rqs in module.walk("int.requant_shift"):
        if rqs.operands[0].owner.name not in ("int.gemm", "int.matmul"):
            continue
        mul = np.asarray(rqs.attr("mul"), np.int64)
        add = np.asarray(rqs.attr("add"), np.int64)
        div = int(rqs.attr("div"))
        if not mul.size or int(mul.min()) < div:
            continue  # gains below 1 fit as they are
        while div > 1 and not np.any(mul % 2) and not np.any(add % 2):
            mul, add, div = mul // 2, add // 2, div // 2
        rqs.attrs.update({"mul": np.asarray(mul, np.int64), "add": np.asarray(add, np.int64), "div": div})
