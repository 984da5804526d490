"""Checks: what no rule could rewrite is refused with a BackendError naming the node, the op and the target."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ....qir.ir import Module, Operation
from ..targets import DeeployTarget
from .common import INT32_MAX, const_value, fail, is_8bit, sole_user
from .rule import rule

#: int ops the emitter can write (after legalisation)
EMITTABLE = frozenset({"int.conv", "int.gemm", "int.matmul", "int.add", "int.mul", "int.requant_shift", "int.maxpool",
                       "int.pad", "int.reshape", "int.transpose", "int.concat", "int.gather", "int.slice",
                       "int.isoftmax", "int.ilayernorm", "int.igelu"})


@rule("integer-only")
def integer_only(module: Module, target: DeeployTarget) -> None:
    """Only qir.* and int.* ops are accepted: anything else is refused before any rewrite."""
    for op in module.walk():
        if op.dialect not in ("qir", "int"):
            raise fail(op, target, f"{op.name} is not integer arithmetic: lower the model first (lower-to-int)")


@rule("erase-dead")
def erase_dead(module: Module, target: DeeployTarget) -> None:
    """Ops whose results nothing uses any more (constants replaced by the rewrites) are erased, so that the checks
    and the emitter see only what the graph computes."""
    module.erase_dead()


def _cmsis_merged_multiplier(producer: str, mul: np.ndarray, div: int) -> Tuple[np.ndarray, int]:
    """(multiplier, shift) that Deeploy's CMSIS merge of `producer` + RequantShift(mul, div) hands to CMSIS-NN.

    Deeploy/Targets/CortexM/TopologyOptimizationPasses/Passes.py: total = 31 - log2(div); the Conv merge shifts mul
    left by min(total, floor(32 - log2(max mul))), the Gemm/MatMul merge by min(total, floor(log2(2^31 - max mul))),
    and passes the rest of `total` as CMSIS-NN's (left) shift.  CMSIS-NN reads the multiplier as int32 Q31, so the
    result must fit int32: with gain g = mul / div it is g * 2^31 whenever the min takes `total`, and above 2^31
    otherwise, so any gain >= 1 overflows (except mul = div = 1 on a Gemm, which becomes 2^30 with shift 1)."""
    total = 31 - (div.bit_length() - 1)
    max_mul = int(mul.max())
    if max_mul <= 0:
        shift = total
    elif producer == "int.conv":
        shift = min(total, int(np.floor(32 - np.log2(max_mul))))
    else:
        shift = min(total, int(np.floor(np.log2(float((1 << 31) - max_mul))))) if max_mul < (1 << 31) else 0
    return mul.astype(object) * (1 << shift), total - shift


@rule("q31-requant-multipliers", when="q31_requant_multiplier")
def q31_requant_multipliers(module: Module, target: DeeployTarget) -> None:
    """A Conv's, Gemm's or MatMul's requant whose gain mul/div the platform's merge would turn into a Q31
    multiplier overflowing int32 (a gain >= 1) is refused."""
    for rqs in module.walk("int.requant_shift"):
        _check_q31_multiplier(rqs, target)


def _check_q31_multiplier(rqs: Operation, target: DeeployTarget) -> None:
    """Refuse a Conv/Gemm/MatMul requant whose merged CMSIS-NN multiplier overflows int32 (a gain >= 1)."""
    producer = rqs.operands[0].owner.name
    if producer not in ("int.conv", "int.gemm", "int.matmul"):
        return  # a standalone RequantShift runs Deeploy's int32 reference kernel
    mul = np.asarray(rqs.attr("mul"), np.int64)
    div = int(rqs.attr("div"))
    merged, _shift = _cmsis_merged_multiplier(producer, mul, div)
    largest = max(abs(int(m)) for m in np.ravel(merged))
    if largest > INT32_MAX:
        top = int(np.abs(mul).max())
        kind = {"int.conv": "Conv", "int.gemm": "Gemm", "int.matmul": "MatMul"}[producer]
        raise fail(rqs, target, f"requant gain mul/div = {top}/{div} = {top / div:.6g} after a {kind}: Deeploy's "
                                f"CMSIS merge turns it into the Q31 multiplier {largest}, which overflows int32 "
                                "(the fused kernel takes gains below 1 only)")


@rule("check-forms")
def check_forms(module: Module, target: DeeployTarget) -> None:
    """Every op is one the emitter writes, in a form the target takes (Conv dilations, groups, pads, bias and
    requant; Pad axes; MaxPool attributes; 8-bit operands; Concat); anything else is refused."""
    for op in module.walk():
        if op.dialect == "qir":
            continue
        if op.name not in EMITTABLE:
            raise fail(op, target, f"{op.name} has no Deeploy form")
        if op.name == "int.conv":
            x, w = op.operands[0], op.operands[1]
            if const_value(w) is None:
                raise fail(op, target, "int.conv with computed weights has no Deeploy form")
            if not (is_8bit(x) and is_8bit(w)):
                raise fail(op, target, "Deeploy's Conv takes 8-bit input and weights")
            if any(int(d) != 1 for d in (op.attr("dilations") or [])):
                raise fail(op, target, f"dilations {list(op.attr('dilations'))}: Deeploy's Conv takes dilation 1")
            group = int(op.attr("group"))
            c_in, c_out = x.type.shape[1], op.result.type.shape[1]
            if group != 1 and not (group == c_in == c_out):
                raise fail(op, target, f"grouped int.conv (group {group}, {c_in} -> {c_out} channels) is neither "
                                       "dense nor depthwise")
            if group != 1 and not target.depthwise_conv:
                raise fail(op, target, "depthwise int.conv has no working form on this platform")
            if group != 1 and target.depthwise_layout == "channels-last":
                # emitted as Transpose -> Conv(channels_first=0) -> RequantShift -> Transpose: the requant must be
                # the conv's only user (it is written channels-last with it) and the padding explicit
                user = sole_user(op.result)
                if user is None or user.name != "int.requant_shift":
                    raise fail(op, target, "a channels-last depthwise int.conv must be followed by a requant_shift "
                                           "(its only user)")
                if any(op.attr("pads") or []) or x.type.rank != 4:
                    raise fail(op, target, "a channels-last depthwise int.conv takes a 2-D NCHW input without pads")
            if len(op.operands) > 2:
                raise fail(op, target, "int.conv keeps a bias input")
            # (without a Pad node, zero-padding made every padding the Conv's own and shifted zero points out: what
            # is left pads with stored zeros on purpose, e.g. a sum pool's)
            if target.pad_node and any(op.attr("pads") or []) and x.type.is_quant and any(x.type.quant.zero_points):
                raise fail(op, target, f"int.conv pads with zeros a tensor whose zero point is "
                                       f"{list(x.type.quant.zero_points)} (the padding needs an explicit int.pad "
                                       "with the zero point)")
            if not target.pad_node and len(set(op.attr("pads") or [0])) > 1:
                raise fail(op, target, f"int.conv pads {list(op.attr('pads'))} differ per side (the platform's Conv "
                                       "takes equal pads only)")
            if target.conv_needs_requant:
                user = sole_user(op.result)
                if user is None or user.name != "int.requant_shift":
                    raise fail(op, target, "int.conv must be followed by a requant_shift (its only user): the "
                                           "platform has no bare integer Conv (an int32 result); give the layer an "
                                           "output quantizer (Brevitas output_quant=Int8ActPerTensorFloat, or a "
                                           "QuantizeLinear after it) or compile for deeploy-generic")
        elif op.name == "int.concat" and not target.accepts("Concat"):
            # concat-as-pads rewrites every concat of computed tensors on such a platform
            raise fail(op, target, "the platform has no Concat")
        elif op.name == "int.pad":
            if not target.pad_node:
                raise fail(op, target, "int.pad has no form on this platform (its tiled flow has no Pad)")
            pads = list(op.attr("pads"))
            rank = op.operands[0].type.rank
            if rank != 4 or any(pads[i] for i in (0, 1, rank, rank + 1)):
                raise fail(op, target, f"int.pad {pads} pads more than the spatial axes of an NCHW tensor")
        elif op.name == "int.slice" and not target.channel_slice:
            rank = op.operands[0].type.rank
            if rank == 4 and 1 in [int(a) % rank for a in op.attr("axes")]:
                raise fail(op, target, "a Slice of the channels of an NCHW tensor (a torch.split or chunk of channels) "
                                       "has no mapping on this platform (Deeploy: \"Did not find adequate mapping ... "
                                       "SliceLayer\")")
        elif op.name == "int.maxpool":
            if any(int(d) != 1 for d in (op.attr("dilations") or [])) or int(op.attr("ceil_mode")):
                raise fail(op, target, "Deeploy's MaxPool takes dilation 1 and ceil_mode 0")
            if not is_8bit(op.operands[0]):
                raise fail(op, target, "Deeploy's MaxPool takes 8-bit input")
        elif op.name in ("int.gemm", "int.matmul"):
            if not all(is_8bit(v) for v in op.operands[:2]):
                raise fail(op, target, f"Deeploy's {op.name[4:].capitalize()} takes 8-bit operands")
