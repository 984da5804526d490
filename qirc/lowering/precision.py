"""How precise the requants of a lowered module are: the bound of each, and what it does on sample inputs.

`requant_precision(module, int_samples)` returns one record per `int.requant_shift` between quantized types (the
compile driver writes them to qirc.json under `accuracy.requants`, in graph order):

    node                the requant's location (the quantizer it lowers)
    layer               the location of the op that produces its input (the Conv / Gemm / Add / pool it follows)
    shift               k (div = 2^k), the largest shift free of int32 overflow over the reachable range
    bound_steps         worst-case error of approximating M = s_in / s_out by mul / 2^k, in output steps, over the
                        reachable inputs that do not saturate (`numerics.requant_error_bound`)
    mismatch_max_steps  on the samples: the largest |kernel - exact requantizer| over the requant's actual inputs,
    mismatch_fraction   and the fraction of its outputs that differ; the exact requantizer is
                        clip(rint((x - z_in) * M) + z_out) computed in float64 (ties to even, as the fake-quant model;
                        the kernel rounds ties up, so a requant with bound 0 may still differ at exact ties)
    values              how many outputs were compared

`precision_warnings(records)` gives the one-line warning for each requant whose bound reaches one output step
(`numerics.MAX_ERROR_STEPS`): those are compiled anyway (the most precise int32-safe form) unless strict precision
refuses them.  Requants from or to a plain integer (the exact shift of a QONNX Trunc) have no exact twin and are
not recorded, nor are those whose mul / div is not the types' M = s_in / s_out (an activation folded into the
requant, such as HardSigmoid's alpha * x + beta: the types do not state it).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import numpy as np

from ..qir.batch import run_samples
from ..qir.ir import Module, output_op
from .numerics import MAX_ERROR_STEPS, requant_error_bound
from .ranges import RangeAnalysis


def _recorded(module: Module):
    return [op for op in module.walk("int.requant_shift")
            if op.operands[0].type.is_quant and op.results[0].type.is_quant]


def requant_precision(module: Module, int_samples: Sequence[Mapping[str, np.ndarray]]) -> List[Dict]:
    """The records described in the module docstring; `int_samples`: the module's integer inputs, one dict (input
    name -> stored integers) per sample.  `module` is left unchanged (the inputs are read on a copy)."""
    requants = _recorded(module)
    if not requants:
        return []
    ranges = RangeAnalysis()
    probe = module.clone()
    probe_requants = _recorded(probe)
    names = []
    for i, op in enumerate(probe_requants):
        names.append(f"__qirc_requant_input_{i}")
        output_op(probe, names[-1], op.operands[0])
    runs = run_samples(probe, list(int_samples)) if int_samples else []
    records = []
    for op, name in zip(requants, names):
        x_value, y_value = op.operands[0], op.results[0]
        xt, yt = x_value.type.quant, y_value.type.quant
        rank = x_value.type.rank
        multiplier = xt.scales_for(rank) / yt.scales_for(rank)
        z_in, z_out = xt.zero_points_for(rank), yt.zero_points_for(rank)
        signed, n = bool(op.attr("signed")), int(op.attr("n_levels"))
        lo, hi = (-(n // 2), n // 2 - 1) if signed else (0, n - 1)
        mul = np.asarray(op.attr("mul"), dtype=np.int64)
        add = np.asarray(op.attr("add"), dtype=np.int64)
        div = int(op.attr("div"))
        shift = div.bit_length() - 1
        if np.any(np.abs(mul / div - multiplier) > 0.01 * multiplier + 1.0 / div):
            continue  # an affine activation folded in (see the module docstring)
        acc_lo, acc_hi = ranges.range_of(x_value)
        bound = requant_error_bound(multiplier, mul, shift, z_in, z_out, acc_lo, acc_hi,
                                    lo, hi)
        worst, differ, count = 0, 0, 0
        for run in runs:
            x = np.asarray(run[name], dtype=np.int64)
            got = np.clip(np.floor_divide(x * mul + add + div // 2,
                                          div), lo, hi)
            exact = np.clip(np.rint((x - z_in) * multiplier) + z_out, lo, hi)
            diff = np.abs(got - exact)
            if diff.size:
                worst = max(worst, int(diff.max()))
                differ += int(np.count_nonzero(diff))
                count += int(diff.size)
        records.append({"node": op.loc, "layer": x_value.owner.loc, "shift": shift, "bound_steps": bound,
                        "mismatch_max_steps": worst if count else None,
                        "mismatch_fraction": differ / count if count else None, "values": count})
    return records


def precision_warnings(records: Sequence[Dict], samples: int) -> List[str]:
    """One line per requant whose worst-case bound reaches one output step (see the module docstring)."""
    lines = []
    for rec in records:
        if rec["bound_steps"] < MAX_ERROR_STEPS:
            continue
        measured = "" if rec["mismatch_fraction"] is None else (
            f"; on {samples} sample(s) {100 * rec['mismatch_fraction']:.2f}% of its outputs differ from the exact "
            f"requantizer, by at most {rec['mismatch_max_steps']} step(s)")
        lines.append(f"node '{rec['layer']}' (requant '{rec['node']}'): the most precise int32-safe requant "
                     f"(shift {rec['shift']}) may be off by up to {rec['bound_steps']:.3g} output steps over the "
                     f"reachable range{measured}; --strict refuses it")
    return lines
