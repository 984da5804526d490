"""The stock DeeployTest harness: requants that its debug pass leaves alone.

DeeployTest's untiled harness (generateNetwork.py) inserts `EmulateCMSISRequantPass` on every platform but CMSIS.
It rewrites every RequantShift's add as `np.round(add / (mul + 1e-3)) * mul` (float64), which is the identity only
when add is a multiple k * mul of mul AND |k| * 1e-3 / (mul + 1e-3) < 1/2, i.e. |k| below about 500 * mul.  The
lowering makes add a multiple of mul whenever the output zero point is 0; the rule here scales (mul, add, div) by
2^j where a small mul puts k beyond that bound, so that the graph computes the same with and without the pass.
Requants that no exact form protects are listed in qirc.json by `debug_pass_report`: an add that is not a multiple of
mul (an output zero point that is not 0), and a multiple beyond the bound where 2^j * mul times the worst-case |x|
could overflow int32 (a ReLU output too, zero point 0, when a large constant term of its sum puts k far out; the pass
then moves its add by a few mul, a fraction of an output step).  docs/targets.md says how to run DeeployTest without
the pass.

On deeploy-cortexm the same expression is the platform's own reading of a Conv's or MatMul's requant (CMSIS's merge
passes hand the kernel round(add / (mul + 1e-3))): emission writes those adds with `merge_exact_add`, so that it reads
back the add the lowering states, and such requants are never listed.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
from .... import _onnx as onnx  # onnx's protobufs without its 1 s import (see qirc/_onnx.py)
from ...._onnx import numpy_helper

from ....qir.ir import Module, Operation
from ..targets import DeeployTarget
from .clips import value_range
from .common import INT32_MAX, const_value, fits_int32, is_8bit
from .rule import rule

DEBUG_PASS = "EmulateCMSISRequantPass"


def deeploy_rounded_add(mul, add) -> np.ndarray:
    """What Deeploy makes of a RequantShift's add where it rounds it to a multiple of mul, in float64:
    np.round(add / (mul + 1e-3)) * mul.  DeeployTest's EmulateCMSISRequantPass writes it back as the add; CMSIS's
    Conv/MatMul requant merges (ConvRequantMergePass, MatMulRequantMergePass) hand the kernel the quotient as the int32
    it adds to the accumulator before multiplying by mul: the same integers."""
    mul = np.asarray(mul)
    return np.round(np.asarray(add) / (mul + 1e-3)) * mul


def debug_pass_keeps(mul, add) -> bool:
    return bool(np.array_equal(deeploy_rounded_add(mul, add), np.asarray(add)))


def merge_exact_add(mul, add) -> np.ndarray:
    """The add to write for a requant add = k * mul that Deeploy reads through `deeploy_rounded_add`, so that it reads
    exactly k * mul back: k * mul where that already reads back (|k| below about 500 * mul), else
    k * mul + round(k / 1000).

    add / (mul + 1e-3) = k - k * 1e-3 / (mul + 1e-3), k moved toward 0 by more than a half for |k| beyond about
    500 * mul; the term round(k / 1000) cancels that to within 0.5 / (mul + 1e-3) < 1/2 (mul >= 1).  An add that is
    not a multiple of mul, or whose corrected value would leave int32, is returned as it is."""
    given = np.asarray(add)
    mul, add = np.broadcast_arrays(np.asarray(mul, np.int64), given.astype(np.int64))
    k = add // np.maximum(mul, 1)
    encoded = add + np.round(k * 1e-3).astype(np.int64)
    needed = (mul >= 1) & (add == k * mul) & (np.round(add / (mul + 1e-3)) != k)
    ok = needed & (np.abs(encoded) <= INT32_MAX) & (np.round(encoded / (mul + 1e-3)) == k)
    if not np.any(ok):
        return given  # (in its own shape: a scalar add stays one)
    return np.where(ok, encoded, add)


def _max_abs(lo: int, hi: int) -> int:
    return max(abs(int(lo)), abs(int(hi)))


def _input_bound(rqs: Operation) -> Optional[int]:
    """A bound on |x| for the requant's input x, or None when it is not known here."""
    x = rqs.operands[0]
    if is_8bit(x):
        return _max_abs(*value_range(x))
    producer = x.owner
    if producer.name in ("int.conv", "int.gemm", "int.matmul"):
        w = const_value(producer.operands[1])
        a = producer.operands[0]
        if w is None or not is_8bit(a):
            return None
        w = np.abs(w.astype(np.int64))
        if producer.name == "int.conv":
            row = w.reshape(w.shape[0], -1).sum(axis=1)
        elif producer.name == "int.gemm" and int(producer.attr("transB")):
            row = w.sum(axis=1)
        else:
            row = w.reshape(-1, w.shape[-1]).sum(axis=0)
        bound = int(row.max()) * _max_abs(*value_range(a))
        if len(producer.operands) > 2:
            bias = const_value(producer.operands[2])
            if bias is None:
                return None
            bound += int(np.abs(bias.astype(np.int64)).max())
        return bound
    if producer.name == "int.add" and all(is_8bit(v) for v in producer.operands):
        return sum(_max_abs(*value_range(v)) for v in producer.operands)
    return None


@rule("debug-pass-invariant-adds", when="not add_before_mul")
def debug_pass_invariant_adds(module: Module, target: DeeployTarget) -> None:
    """A requant whose add is a multiple k * mul of mul that DeeployTest's debug pass would still change (|k| beyond
    about 500 * mul) becomes (mul * 2^j, add * 2^j, div * 2^j) for the smallest j that it leaves alone, when the
    kernel's int32 arithmetic allows it: floor((2^j (x mul + add) + 2^j div / 2) / (2^j div)) is the same integer."""
    for rqs in module.walk("int.requant_shift"):
        mul = np.asarray(rqs.attrs["mul"], np.int64)
        add = np.asarray(rqs.attrs["add"], np.int64)
        if debug_pass_keeps(mul, add) or np.any(mul == 0) or np.any(add % mul):
            continue
        bound = _input_bound(rqs)
        if bound is None:
            continue
        div = int(rqs.attr("div"))
        for j in range(1, 24):
            m, a, d = mul << j, add << j, div << j
            if int(np.abs(m).max()) * bound + int(np.abs(a).max()) + d // 2 > INT32_MAX or d > INT32_MAX:
                break
            if fits_int32(m) and fits_int32(a) and debug_pass_keeps(m, a):
                rqs.attrs["mul"], rqs.attrs["add"], rqs.attrs["div"] = m, a, d
                break


MERGED_AFTER = ("Conv", "MatMul")  # the ops whose RequantShift CMSIS's merges read through deeploy_rounded_add


def _requants_not_kept(model: onnx.ModelProto, standalone_only: bool = False) -> List[str]:
    """Names of the RequantShift nodes of `model` whose add the expression round(add / (mul + 1e-3)) * mul changes
    (`debug_pass_keeps`); with standalone_only, only those not after a Conv or MatMul (which CMSIS merges)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n.op_type for n in model.graph.node for o in n.output} if standalone_only else {}
    names = []
    for node in model.graph.node:
        if node.op_type == "RequantShift" and node.input[1] in inits and node.input[2] in inits \
                and producer.get(node.input[0]) not in MERGED_AFTER:
            if not debug_pass_keeps(inits[node.input[1]].astype(np.int64), inits[node.input[2]].astype(np.int64)):
                names.append(node.name)
    return names


def debug_pass_changes(model: onnx.ModelProto) -> List[str]:
    """Names of the RequantShift nodes of `model` whose add DeeployTest's debug pass would change."""
    return _requants_not_kept(model)


_CHANGED_WHY = (
    "an add that is not a multiple of mul (an output zero point that is not 0), or a multiple k * mul with |k| beyond "
    "about 500 * mul that int32 left no room to rescale (a ReLU output too, when its sum has a large constant term; "
    "the add moves by a fraction of an output step)")


def debug_pass_report(model: onnx.ModelProto, target: DeeployTarget) -> dict:
    """qirc.json's account of DeeployTest's debug pass for `model`.  CMSIS's harness does not insert it, but running
    a cortex-m folder on Generic (the host check of docs/targets.md) does: it reads the Conv/MatMul requants exactly as
    CMSIS's merge does (the same expression, which outputs.npz follows), so only the other requants it changes are
    listed there."""
    if target.add_before_mul:
        changed = _requants_not_kept(model, standalone_only=True)
        where = ("DeeployTest's untiled harness (generateNetwork.py) does not insert this debug pass on the CMSIS "
                 "platform this folder is for, but does on the others (e.g. when this folder is run on Generic), where "
                 "it reads the add of every Conv/MatMul requant as CMSIS's requant merge does (round(add / (mul + "
                 "1e-3)) * mul, what outputs.npz holds)")
        note = f"{where}; it changes none of the other requants" if not changed else (
            f"{where}, and changes the add of these other requants: an add that is not a multiple of mul (an output "
            "zero point that is not 0), or a multiple k * mul with |k| beyond about 500 * mul (the add moves by a "
            "fraction of an output step). That run may differ from outputs.npz where a value lies that near a "
            "rounding tie: see docs/targets.md for running without the pass")
        return {"pass": DEBUG_PASS, "changed_requants": changed, "note": note}
    changed = debug_pass_changes(model)
    note = ("DeeployTest's untiled harness (generateNetwork.py) inserts this debug pass; it changes none of the "
            "requants") if not changed else (
        "DeeployTest's untiled harness (generateNetwork.py) inserts this debug pass, which changes the add of these "
        f"requants: {_CHANGED_WHY}. Its run may differ from outputs.npz where a value lies that near a rounding tie: "
        "run the tiled flow (testMVP.py), or see docs/targets.md for running without the pass")
    return {"pass": DEBUG_PASS, "changed_requants": changed, "note": note}
