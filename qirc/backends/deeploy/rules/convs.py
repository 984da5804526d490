"""Convs: depthwise Convs as dense ones where the platform takes none, Conv pads the platform cannot take as a Pad,
and Pads the platform cannot take as a Pad and a Slice."""
from __future__ import annotations

import numpy as np

from ....qir.diagnostics import BackendError
from ....qir.ir import Module, const_op, pad_op
from ..targets import DeeployTarget
from .common import const_value, storage
from .rule import rule


@rule("depthwise-to-dense", when=("not depthwise_conv", "dense_depthwise_cap_kib"))
def depthwise_to_dense(module: Module, target: DeeployTarget) -> None:
    """Rewrite every depthwise int.conv (group == C_in, C_out a multiple of it) into the dense int.conv (group 1)
    whose kernel is block-diagonal: w_dense[o, i] = w_dw[o, 0] if i == o // multiplier else 0.

    Each output channel o still sums x[o // multiplier] * w_dw[o] over the window and adds exact zeros for every
    other input channel, so the integers are the same; the cost is C_in times the weights and MACs, which is why a
    layer whose dense kernel exceeds the target's cap is refused rather than expanded.  Only for targets that take
    no depthwise Conv at all (verified on Deeploy's CMSIS platform with depthwise Convs disabled; deeploy-cortexm
    itself writes them channels-last)."""
    cap_bytes = target.dense_depthwise_cap_kib * 1024
    for op in module.walk("int.conv"):
        group = int(op.attr("group"))
        x, w = op.operands[0], op.operands[1]
        c_in, c_out = x.type.shape[1], op.result.type.shape[1]
        if group == 1 or group != c_in or c_out % c_in or w.type.shape[1] != 1:
            continue  # dense, or grouped in a way check-forms refuses with its own message (checks.py)
        w_dw = const_value(w)
        if w_dw is None:
            continue  # check-forms refuses computed weights
        multiplier = c_out // c_in
        dense_shape = (c_out, c_in) + tuple(w.type.shape[2:])
        dense_bytes = int(np.prod(dense_shape)) * max(1, storage(w).width // 8)
        if dense_bytes > cap_bytes:
            raise BackendError(f"depthwise conv would need {-(-dense_bytes // 1024)} KiB of dense weights on "
                               f"{target.name} (cap {target.dense_depthwise_cap_kib} KiB); the platform takes no "
                               "depthwise Conv", loc=op.loc or None, op=op.name)
        w_dense = np.zeros(dense_shape, w_dw.dtype)
        out_channels = np.arange(c_out)
        w_dense[out_channels, out_channels // multiplier] = w_dw[:, 0]
        module.set_operand(op, 1, const_op(module, w_dense, w.type.with_shape(dense_shape), w.owner.loc))
        op.attrs["group"] = 1
    module.erase_dead()


@rule("square-conv-pads", when="square_conv_pads")
def square_conv_pads(module: Module, target: DeeployTarget) -> None:
    """Conv pads that differ per side, and any pads of a depthwise Conv -> an explicit zero Pad: CMSIS's
    RequantizedConv parsers take square padding only, its depthwise one none (int.conv pads with zeros, so the
    Pad's value is 0)."""
    for op in module.walk("int.conv"):
        pads = list(op.attr("pads") or [])
        depthwise = int(op.attr("group")) > 1
        if not any(pads) or (len(set(pads)) == 1 and not depthwise):
            continue
        module.set_operand(op, 0, pad_op(module, op.operands[0], pads, 0, op.loc + "/pad"))
        op.attrs["pads"] = [0] * len(pads)


@rule("equal-top-bottom-pads", when="pad_equal_top_bottom")
def equal_top_bottom_pads(module: Module, target: DeeployTarget) -> None:
    """int.pad of an NCHW tensor of several channels whose top and bottom padding differ -> the int.pad with the
    larger of the two at both ends, then int.slice along H dropping the surplus rows on the other side: the same
    integers.  The platform's NCHW Pad kernel steps from one channel's last row to the next channel's first over twice
    the top padding, which is right only when the bottom padding equals it (Generic: every output wrong after an
    F.pad (1, 2, 0, 1), or a Conv's zero-point border padded as TF's "same" pads a stride-2 Conv, [0, 0, 1, 1]).  (A
    Concat of constant rows instead ran wrong on Generic when the padded tensor is unsigned: Deeploy offsets unsigned
    activations by -128 in memory, and the Pad's value with them, but not an unsigned constant.)"""
    for op in module.walk("int.pad"):
        x, y = op.operands[0], op.results[0]
        pads = [int(p) for p in op.attr("pads")]
        if x.type.rank != 4 or x.type.shape[1] <= 1 or pads[2] == pads[6] or any(pads[i] for i in (0, 1, 4, 5)):
            continue  # (pads of N or C are refused by check-forms)
        top, bottom = pads[2], pads[6]
        both = max(top, bottom)
        padded = pad_op(module, x, [both, pads[3], both, pads[7]], int(op.attr("value")), op.loc)
        height = padded.type.shape[2]
        start, end = (0, height - (both - bottom)) if top == both else (both - top, height)
        sliced = module.create("int.slice", [padded], [y.type], {"starts": [start], "ends": [end], "axes": [2],
                                                                 "steps": [1]}, op.loc + "/rows")
        module.replace_all_uses(y, sliced.result)
        module.erase(op)
