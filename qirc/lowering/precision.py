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

`add_rescale_warnings(records)` does the same for the Adds whose operands were rescaled to a common int32 scale
(`accuracy.add_rescales`, recorded by lower-to-int: `add_rescale.rescale_record`) whose bound, the approximate scale
ratio plus the requant after the sum, reaches one output step; `--strict` refuses those.

`precision_warnings(records)` gives the one-line warning for each requant whose bound reaches one output step
(`numerics.MAX_ERROR_STEPS`): those are compiled anyway (the most precise int32-safe form) unless strict precision
refuses them.  Requants from or to a plain integer (the exact shift of a QONNX Trunc) have no exact twin and are
not recorded, nor are those whose mul / div is not the types' M = s_in / s_out (an activation folded into the
requant, such as HardSigmoid's alpha * x + beta: the types do not state it).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..qir.batch import run_samples
from ..qir.ir import Module, output_op
from .numerics import MAX_ERROR_STEPS, requant_error_bound
from .ranges import RangeAnalysis


def _recorded(module: Module):
    return [op for op in module.walk("int.requant_shift")
            if op.operands[0].type.is_quant and op.results[0].type.is_quant]


def requant_precision(module: Module, int_samples: Sequence[Mapping[str, np.ndarray]],
                      add_records: Optional[List[Dict]] = None) -> List[Dict]:
    """The records described in the module docstring; `int_samples`: the module's integer inputs, one dict (input
    name -> stored integers) per sample.  `module` is left unchanged (the inputs are read on a copy).

    `add_records` (lower-to-int's `add_rescale.rescale_record`s, as the driver copies them into qirc.json's
    accuracy.add_rescales), when given, get in place from the same run what the chosen multipliers do on the
    samples:

        mismatch_max_steps  the largest |sum read at the common scale - exact real sum of the operands|, in steps of
                            the quantizer after it, over the sums within that quantizer's range (beyond it the
                            output saturates whatever the error); None when the Add is not found in `module` (the
                            int.add / int.sub at the record's node, whose operands are the operands times their
                            multipliers)
        values              how many sums were compared"""
    requants = _recorded(module)
    if not requants and not add_records:
        return []
    ranges = RangeAnalysis()
    probe = module.clone()
    probe_requants = _recorded(probe)
    names = []
    for i, op in enumerate(probe_requants):
        names.append(f"__qirc_requant_input_{i}")
        output_op(probe, names[-1], op.operands[0])
    entries = _add_probes(probe, add_records or [])
    runs = run_samples(probe, list(int_samples)) if int_samples else []
    _add_measure(add_records or [], entries, runs)
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


def _add_probes(probe: Module, records: Sequence[Dict]) -> List:
    """Make the operands and the sum of each recorded Add outputs of `probe`; per record (op, terms, names), or None
    when the Add is not found (its record gets mismatch_max_steps None)."""
    entries = []
    for k, rec in enumerate(records):
        op = next((o for o in probe.walk() if o.name in ("int.add", "int.sub") and o.loc == rec["node"]
                   and all(v.type.is_quant for v in o.operands) and o.results[0].type.is_quant), None)
        terms = [] if op is None else [_operand_term(v) for v in op.operands]
        if op is None or any(t is None for t in terms):
            entries.append(None)
            continue
        names = []
        for x, _m in terms:
            names.append(f"__qirc_add_operand_{k}_{len(names)}")
            output_op(probe, names[-1], x)
        names.append(f"__qirc_add_sum_{k}")
        output_op(probe, names[-1], op.results[0])
        entries.append((op, terms, names))
    return entries


def _add_measure(records: Sequence[Dict], entries: Sequence, runs: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Fill each record's mismatch_max_steps and values from the probe's runs (see requant_precision)."""
    for rec, entry in zip(records, entries):
        if entry is None:
            rec["mismatch_max_steps"], rec["values"] = None, 0
            continue
        op, terms, names = entry
        out = rec["output"]
        worst, count = 0.0, 0
        sq = op.results[0].type.quant
        for run in runs:
            exact = 0.0
            for i, ((x, _m), name) in enumerate(zip(terms, names)):
                xq = x.type.quant
                real = (np.asarray(run[name], np.float64) - xq.zero_point) * xq.scale
                exact = exact + (real if i == 0 or op.name == "int.add" else -real)
            approx = (np.asarray(run[names[-1]], np.float64) - sq.zero_point) * sq.scale
            steps = exact / out["scale"] + out["zero_point"]
            inside = (steps >= out["min"]) & (steps <= out["max"])
            if np.any(inside):
                worst = max(worst, float(np.max(np.abs(approx - exact)[inside])) / out["scale"])
            count += int(np.count_nonzero(inside))
        rec["mismatch_max_steps"], rec["values"] = (worst if count else None), count


def _operand_term(v):
    """(x, m) with v = x * m for an int.mul of a quantized x by a constant m, (v, 1) for a quantized v."""
    op = v.owner
    if op.name == "int.mul":
        consts = [w for w in op.operands if w.owner.name == "qir.const"]
        others = [w for w in op.operands if w.owner.name != "qir.const"]
        if len(consts) == 1 and len(others) == 1 and others[0].type.is_quant:
            return others[0], int(np.asarray(consts[0].owner.attrs["value"]).reshape(-1)[0])
    return (v, 1) if v.type.is_quant else None


def _measured(rec: Dict, samples: int) -> str:
    if rec.get("mismatch_max_steps") is None:
        return ""
    return f"; on {samples} sample(s) at most {rec['mismatch_max_steps']:.3g} step(s)"


def add_rescale_warnings(records: Sequence[Dict], samples: int = 0) -> List[str]:
    """One line per Add/Sub whose common-scale bound (`add_rescale.rescale_record`: the approximate scale ratio plus
    the requant after the sum, in output steps) reaches one output step: compiled with the cheapest multipliers
    unless strict precision refuses it."""
    lines = []
    for rec in records:
        if rec["bound_steps"] < MAX_ERROR_STEPS:
            continue
        m_a, m_b = rec["multipliers"]
        lines.append(f"node '{rec['node']}' ({rec.get('op', 'Add')}): the operands' scale ratio {rec['scale_ratio']:.9g} has no int32 "
                     f"common scale within one output step; the best ({max(m_a, m_b)}/{min(m_a, m_b)}) may be off "
                     f"by up to {rec['bound_steps']:.3g} output steps ({rec['ratio_error_steps']:.3g} of the ratio, "
                     f"{rec['requant_error_steps']:.3g} of the requant after the sum){_measured(rec, samples)}; "
                     "--strict refuses it")
    return lines
