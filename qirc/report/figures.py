"""Per-layer accuracy figures: every requantized tensor of the integer graph against the fake-quant model.

    figures = layer_figures(quant_module, int_module, samples)     # one dict per int.requant_shift, graph order

`quant_module` is the imported quant-level model (float `onnx.*` ops between `quant.qcast`/`quant.dcast`), the
reference; `int_module` the lowered (and possibly legalised) integer graph; `samples` float inputs of the quant module
(one `{input name: array}` or a list of them).  Both modules run in the interpreter on the same inputs (the integer
graph's inputs are the stored integers the model's own input quantizers produce).

Matching.  Lowering keeps a requantizer's source location: `requant-fusion` gives the `int.requant_shift` (and the
`int.clip` of a folded ReLU/Clip that follows it) the location of the `quant.qcast` it replaces, i.e. the ONNX node
of the model's quantizer.  A requant is matched to the first unmatched qcast with the same location whose result has
the same shape (or, for a per-tensor type, the same number of elements: dequant-push may move a reshape across the
requant) and the same scales (per axis); its "int value" is the value that took the qcast's place (the
requant's result, or the result of the int.clip with the same location that follows it).  Requants without such a
qcast (inserted by a later pass, for example the operand requants of a residual add that a target needs) are listed
with `reference_loc` None and no error figures: their error shows in the matched requant downstream.

Two errors per matched tensor, in output steps (the reference's scale), signed error = int - reference:
- end to end (`max_error_steps`, ...): the integer graph run on its own, so errors of earlier layers propagate;
- local (`local_max_error_steps`, ...): the integer graph run with every matched tensor *before* this one replaced by
  the reference's values, so the figure is the error this requantizer itself adds given the same integer input
  (the DESIGN's per-RequantShift contract: at most 1 step).  The worst layer is the one with the largest local error.

Keys of each dict (all JSON-serialisable):
  index, loc, op, reference_loc, match ("location" or None), note, shape, dtype, scale, zero_point, axis,
  int_zero_point (the integer graph's zero point where signed normalisation moved it), elements (values compared,
  over all samples), max_error_steps, mean_error_steps (mean |error|), exact_fraction, error_histogram
  ({"steps": [...], "counts": [...]}), the same four with a `local_` prefix, saturation_rate (share of the integer
  values at the output's clip bounds; saturation_low_rate the share at the lower one; relu_floor: the lower bound
  is the real 0 of a folded ReLU; clipped_rate: the saturation that loses information, i.e. without a ReLU floor),
  reference_saturation_rate (the fake-quant tensor at its storage bounds),
  clip_bounds [lo, hi], acc_min / acc_max (the requant's input seen over the samples), acc_peak
  (max |x*mul + add + div/2|, what Deeploy's int32 kernel computes), acc_limit (2^31 - 1), acc_used_fraction
  (acc_peak / 2^31), acc_bound_peak / acc_bound_used_fraction (the same from qirc.lowering.ranges' interval bound on
  the input, None where the analysis cannot bound it), overflow (acc_peak exceeds the limit on some sample).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..qir import interpreter
from ..qir.batch import rebatch
from ..qir.diagnostics import InterpretError, UsageError
from ..qir.ir import Module, Operation, Value, input_op, output_op
from ..qir.types import TensorType

__all__ = ["layer_figures", "match_requants", "LayerMatch", "ACC_LIMIT"]

ACC_LIMIT = (1 << 31) - 1
_SCALE_RTOL = 1e-6
_HIST_RESOLUTION = 16  # errors are binned to 1/16 step (exact for the integer errors of equal scales)
_FORCED_PREFIX = "__qirc_reference_"
_LOCAL_PREFIX = "__qirc_local_"

Samples = Union[Mapping[str, np.ndarray], Sequence[Mapping[str, np.ndarray]]]


@dataclass
class LayerMatch:
    """One int.requant_shift, the value it produces (after its int.clip, if any) and its quant.qcast (or None)."""

    requant: Operation
    value: Value
    reference: Optional[Operation]
    note: str = ""


def match_requants(quant_module: Module, int_module: Module) -> List[LayerMatch]:
    """Pair each int.requant_shift of `int_module` (graph order) with the quant.qcast it came from (see the module
    docstring); unmatched requants get `reference` None and a note saying why."""
    by_loc: Dict[str, List[Operation]] = {}
    for qcast in quant_module.walk("quant.qcast"):
        by_loc.setdefault(qcast.loc, []).append(qcast)
    used: set = set()
    matches: List[LayerMatch] = []
    for requant in int_module.walk("int.requant_shift"):
        value = requant.results[0]
        users = value.users
        if len(users) == 1 and users[0].name == "int.clip" and users[0].loc == requant.loc:
            value = users[0].results[0]
        same_loc = [q for q in by_loc.get(requant.loc, []) if id(q) not in used] if requant.loc else []
        reference = next((q for q in same_loc if _same_grid(q.results[0].type, value.type)), None)
        if reference is not None:
            used.add(id(reference))
            matches.append(LayerMatch(requant, value, reference))
        elif same_loc:
            matches.append(LayerMatch(requant, value, None, f"the quant.qcast at this location has another type "
                                                            f"({same_loc[0].results[0].type})"))
        else:
            matches.append(LayerMatch(requant, value, None, "no quant.qcast at this location (inserted by a pass)"))
    return matches


def _same_grid(ref: TensorType, got: TensorType) -> bool:
    """Same shape and same real step (scales, axis); zero points may differ (signed normalisation moves them)."""
    if not ref.is_quant:
        return False
    if ref.shape != got.shape:
        # a reshape moved across the requant (dequant-push): same values, same per-tensor grid
        if ref.size != got.size or ref.quant.is_per_axis or (got.is_quant and got.quant.is_per_axis):
            return False
    if not got.is_quant:
        return got.is_int  # a plain integer tensor is read in the reference's grid
    a, b = ref.quant, got.quant
    if a.axis != b.axis or len(a.scales) != len(b.scales):
        return False
    sa, sb = np.asarray(a.scales), np.asarray(b.scales)
    return bool(np.all(np.abs(sa - sb) <= _SCALE_RTOL * np.maximum(np.abs(sa), np.abs(sb))))


def _grid(t: TensorType, fallback: TensorType):
    """(scales, zero points) broadcastable against a tensor of type t; a plain integer type borrows `fallback`'s."""
    q = (t if t.is_quant else fallback).quant
    return q.scales_for(t.rank), q.zero_points_for(t.rank)


def _to_grid(stored: np.ndarray, src: TensorType, dst: TensorType) -> np.ndarray:
    """Stored integers of type src re-expressed as stored integers of type dst (same real value, rounded, clipped)."""
    s_src, z_src = _grid(src, src)
    s_dst, z_dst = _grid(dst, src)
    real_steps = (stored.astype(np.float64) - z_src) * (s_src / s_dst)
    out = np.rint(real_steps).astype(np.int64) + z_dst
    lo, hi = dst.element.min, dst.element.max
    return np.clip(out, lo, hi)


def _error_steps(got: np.ndarray, got_t: TensorType, ref: np.ndarray, ref_t: TensorType) -> np.ndarray:
    """Signed error (int - reference) in steps of the reference's scale."""
    s_ref, z_ref = _grid(ref_t, ref_t)
    s_got, z_got = _grid(got_t, ref_t)
    return (got.astype(np.float64) - z_got) * (s_got / s_ref) - (ref.astype(np.float64) - z_ref)


def _as_sample_list(samples: Samples) -> List[Mapping[str, np.ndarray]]:
    if isinstance(samples, Mapping):
        return [samples]
    out = list(samples)
    if not out:
        raise UsageError("layer_figures needs at least one input sample")
    return out


def _int_inputs(quant_module: Module, int_module: Module, sample: Mapping[str, np.ndarray],
                ref_values: Dict[Value, np.ndarray]) -> Dict[str, np.ndarray]:
    """The integer graph's inputs for one float sample: what the model's input quantizer stored, in the int type."""
    quant_inputs = {op.attrs["name"]: op for op in quant_module.inputs}
    out: Dict[str, np.ndarray] = {}
    for op in int_module.inputs:
        name, t = op.attrs["name"], op.results[0].type
        source = quant_inputs.get(name)
        if source is None:
            raise UsageError(f"the integer graph's input '{name}' is not an input of the quant-level model")
        qcasts = [u for u in source.results[0].users if u.name == "quant.qcast"]
        if t.is_float or not qcasts:
            out[name] = np.asarray(sample[name])
        else:
            q = qcasts[0].results[0]
            out[name] = _to_grid(ref_values[q], q.type, t)
    return out


def _forced_module(int_module: Module, matches: List[LayerMatch]) -> Module:
    """A copy of the integer graph in which every matched tensor is read from a new input (`__qirc_reference_k`,
    fed with the reference's values) while the tensor itself goes to a new output (`__qirc_local_k`)."""
    forced = int_module.clone()
    counterpart = {id(old): new for old, new in zip(int_module.ops(), forced.ops())}
    for k, m in enumerate(matches):
        if m.reference is None:
            continue
        value = counterpart[id(m.value.owner)].results[m.value.index]
        replacement = input_op(forced, f"{_FORCED_PREFIX}{k}", value.type)
        forced.replace_all_uses(value, replacement)
        output_op(forced, f"{_LOCAL_PREFIX}{k}", value)
    return forced


class _Stats:
    """Running error statistics of one tensor over the samples."""

    def __init__(self):
        self.count = 0
        self.abs_sum = 0.0
        self.max = 0.0
        self.exact = 0
        self.hist: Dict[float, int] = {}

    def add(self, err: np.ndarray) -> None:
        err = err.reshape(-1)
        if not err.size:
            return
        absolute = np.abs(err)
        self.count += err.size
        self.abs_sum += float(absolute.sum())
        self.max = max(self.max, float(absolute.max()))
        self.exact += int(np.count_nonzero(absolute < 1e-6))
        keys = np.rint(err * _HIST_RESOLUTION).astype(np.int64)
        low, high = int(keys.min()), int(keys.max())
        if high - low <= 1 << 16:  # the usual few steps: counting beats sorting
            counts = np.bincount(keys - low)
            present = np.flatnonzero(counts)
            pairs = zip((present + low).tolist(), counts[present].tolist())
        else:
            unique, counts = np.unique(keys, return_counts=True)
            pairs = zip(unique.tolist(), counts.tolist())
        for key, c in pairs:
            step = key / _HIST_RESOLUTION
            self.hist[step] = self.hist.get(step, 0) + int(c)

    def figures(self, prefix: str) -> Dict:
        if not self.count:
            return {f"{prefix}max_error_steps": None, f"{prefix}mean_error_steps": None,
                    f"{prefix}exact_fraction": None, f"{prefix}error_histogram": None}
        steps = sorted(self.hist)
        return {f"{prefix}max_error_steps": self.max, f"{prefix}mean_error_steps": self.abs_sum / self.count,
                f"{prefix}exact_fraction": self.exact / self.count,
                f"{prefix}error_histogram": {"steps": [float(s) for s in steps],
                                             "counts": [self.hist[s] for s in steps]}}


def _clip_bounds(m: LayerMatch):
    if m.value.owner.name == "int.clip":
        return int(m.value.owner.attr("min")), int(m.value.owner.attr("max"))
    return interpreter.requant_bounds(bool(m.requant.attr("signed")), int(m.requant.attr("n_levels")))


def _lower_bound_is_zero(m: LayerMatch) -> bool:
    """The lower clip bound stands for the real value 0 (a folded ReLU): values there are not saturated."""
    t = m.value.type
    if not t.is_quant or t.quant.is_per_axis:
        return False
    return _clip_bounds(m)[0] == t.quant.zero_point


def _requant_params(requant: Operation):
    mul = np.asarray(requant.attr("mul")).astype(np.int64)
    add = np.asarray(requant.attr("add")).astype(np.int64)
    return mul, add, int(requant.attr("div"))


def _peak(lo, hi, mul, add, div) -> int:
    """max |x*mul + add + div/2| for x in [lo, hi] (affine per element, so the ends bound it)."""
    ends = [np.abs(np.asarray(x, np.int64) * mul + add + div // 2) for x in (lo, hi)]
    return int(max(int(np.max(e)) for e in ends))


def _static_peak(requant: Operation) -> Optional[int]:
    try:
        from ..lowering.ranges import RangeAnalysis  # the report sits above lowering; the IR layer does not import it
        lo, hi = RangeAnalysis().range_of(requant.operands[0])
        mul, add, div = _requant_params(requant)
        return _peak(lo, hi, mul, add, div)
    except Exception:  # an op the analysis has no rule for, or a shape it cannot broadcast: no static bound
        return None


def layer_figures(quant_module: Module, int_module: Module, inputs: Samples) -> List[Dict]:
    """One dict of figures per int.requant_shift of `int_module`, in graph order (keys: see the module docstring).

    `inputs` are float samples of `quant_module`'s inputs: one {name: array} or a list of them.  The samples run as
    one batch where both modules allow it (every figure aggregates over all elements of all samples, so batching
    changes no number), else one by one.
    """
    samples = _as_sample_list(inputs)
    n = len(samples)
    if n > 1:
        try:
            stacked = {k: np.concatenate([np.asarray(s[k]) for s in samples]) for k in samples[0]}
            layers = _layer_figures(rebatch(quant_module, n), rebatch(int_module, n), [stacked])
        except InterpretError:
            pass  # not batch-agnostic: run sample by sample
        else:
            for entry, m in zip(layers, match_requants(quant_module, int_module)):
                entry["shape"] = list(m.value.type.shape)
            return layers
    return _layer_figures(quant_module, int_module, samples)


def _layer_figures(quant_module: Module, int_module: Module, samples: List[Mapping[str, np.ndarray]]) -> List[Dict]:
    matches = match_requants(quant_module, int_module)
    forced = _forced_module(int_module, matches)
    n = len(matches)
    end_to_end = [_Stats() for _ in range(n)]
    local = [_Stats() for _ in range(n)]
    saturated = [0] * n
    at_low = [0] * n
    ref_saturated = [0] * n
    elements = [0] * n
    acc_lo = [None] * n
    acc_hi = [None] * n
    peaks = [0] * n
    for sample in samples:
        ref_values = interpreter.run_values(quant_module, sample)
        int_inputs = _int_inputs(quant_module, int_module, sample, ref_values)
        # overflow is a figure of the report (acc_peak against the limit), not a reason to stop
        int_values = interpreter.run_values(int_module, int_inputs, check_overflow=False)
        forced_inputs = dict(int_inputs)
        for k, m in enumerate(matches):
            if m.reference is not None:
                r = m.reference.results[0]
                forced_inputs[f"{_FORCED_PREFIX}{k}"] = \
                    _to_grid(ref_values[r], r.type, m.value.type).reshape(m.value.type.shape)
        local_outputs = interpreter.run(forced, forced_inputs, check_overflow=False)
        for k, m in enumerate(matches):
            got = int_values[m.value]
            lo, hi = _clip_bounds(m)
            low = int(np.count_nonzero(got <= lo))
            at_low[k] += low
            saturated[k] += low + int(np.count_nonzero(got >= hi))
            elements[k] += got.size
            x = int_values[m.requant.operands[0]]
            if x.size:
                acc_lo[k] = int(x.min()) if acc_lo[k] is None else min(acc_lo[k], int(x.min()))
                acc_hi[k] = int(x.max()) if acc_hi[k] is None else max(acc_hi[k], int(x.max()))
                mul, add, div = _requant_params(m.requant)
                peaks[k] = max(peaks[k], int(np.max(np.abs(x * mul + add + div // 2))))
            if m.reference is None:
                continue
            r = m.reference.results[0]
            ref = ref_values[r]
            got_local = local_outputs[f"{_LOCAL_PREFIX}{k}"]
            if got.shape != ref.shape:  # a per-tensor grid (see _same_grid): compare element by element
                got, got_local = got.reshape(ref.shape), got_local.reshape(ref.shape)
                got_type = m.value.type.with_shape(ref.shape)
            else:
                got_type = m.value.type
            end_to_end[k].add(_error_steps(got, got_type, ref, r.type))
            local[k].add(_error_steps(got_local, got_type, ref, r.type))
            rq = r.type.quant
            ref_saturated[k] += int(np.count_nonzero((ref <= rq.storage_min) | (ref >= rq.storage_max)))
    out = []
    for k, m in enumerate(matches):
        entry = _layer_dict(k, m, elements[k], end_to_end[k], local[k], saturated[k], ref_saturated[k],
                            acc_lo[k], acc_hi[k], peaks[k])
        entry["saturation_low_rate"] = at_low[k] / elements[k] if elements[k] else 0.0
        entry["relu_floor"] = _lower_bound_is_zero(m)
        entry["clipped_rate"] = entry["saturation_rate"] - (entry["saturation_low_rate"] if entry["relu_floor"]
                                                            else 0.0)
        out.append(entry)
    return out


def _layer_dict(k, m: LayerMatch, elements, e2e: _Stats, local: _Stats, saturated, ref_saturated, acc_lo, acc_hi,
                peak) -> Dict:
    t = m.value.type
    shown = m.reference.results[0].type if m.reference is not None else t
    entry: Dict = {"index": k, "loc": m.requant.loc, "op": m.requant.name,
                   "reference_loc": m.reference.loc if m.reference is not None else None,
                   "match": "location" if m.reference is not None else None, "note": m.note,
                   "shape": list(t.shape), "dtype": t.storage.np_dtype.name}
    if shown.is_quant:
        q = shown.quant
        entry["scale"] = list(q.scales) if q.is_per_axis else q.scale
        entry["zero_point"] = list(q.zero_points) if q.is_per_axis else q.zero_point
        entry["axis"] = q.axis
    else:
        entry["scale"], entry["zero_point"], entry["axis"] = None, 0, None
    int_zp = (list(t.quant.zero_points) if t.quant.is_per_axis else t.quant.zero_point) if t.is_quant else None
    entry["int_zero_point"] = int_zp if int_zp != entry["zero_point"] else None
    entry["elements"] = elements
    entry.update(e2e.figures(""))
    entry.update(local.figures("local_"))
    lo, hi = _clip_bounds(m)
    entry["saturation_rate"] = saturated / elements if elements else 0.0
    entry["reference_saturation_rate"] = (ref_saturated / elements if elements else 0.0) \
        if m.reference is not None else None
    entry["clip_bounds"] = [int(lo), int(hi)]
    entry["acc_min"], entry["acc_max"] = acc_lo, acc_hi
    entry["acc_peak"] = peak
    entry["acc_limit"] = ACC_LIMIT
    entry["acc_used_fraction"] = peak / (ACC_LIMIT + 1)
    bound = _static_peak(m.requant)
    entry["acc_bound_peak"] = bound
    entry["acc_bound_used_fraction"] = None if bound is None else bound / (ACC_LIMIT + 1)
    entry["overflow"] = peak > ACC_LIMIT
    return entry
