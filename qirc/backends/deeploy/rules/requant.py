"""Requant parameters: mul/add shaped per the contract and stated as the platform's kernels compute them."""
from __future__ import annotations

import numpy as np

from ....qir.ir import Module
from ..targets import DeeployTarget
from .common import fail, fits_int32
from .rule import rule


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
            # the device adds round(add / mul) before multiplying (Deeploy: np.round(add / (mul + 1e-3))): state that.
            # Only the requants its Conv/Gemm/MatMul merges fuse: a standalone RequantShift runs the reference
            # kernel with add as given (rounding add there costs up to half a step times the gain, for nothing)
            add = np.rint(add / (mul + 1e-3)).astype(np.int64) * mul
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
