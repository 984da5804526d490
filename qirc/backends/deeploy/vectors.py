"""Test vectors and the accuracy report of a Deeploy build.

* `float_samples`: the float input samples a run uses: the user's `--inputs FILE.npz` (arrays matched to the graph
  inputs by name, else by order; a leading sample axis is allowed), else seeded random values over each input
  quantizer's range (the interpreter's `random_inputs`).
* `quantize_samples`: float samples -> the integer inputs of the device graph, quantized with the scale and zero point
  recorded in the integer module's input types and with the rounding of the model's own input quantizer
  (`quant.qcast` rounding attribute), computed by the interpreter itself so that it is bit-identical to the model.
* `device_outputs`: the emitted graph, re-imported from ONNX, run by the integer interpreter: what Deeploy must
  reproduce exactly.
* `accuracy_report`: the integer graph against the quant-level model (the interpreter running the imported model) on
  the same float samples: per output, the max and mean error in output steps and the argmax agreement.
* `io_description`: the qirc.json entries for the graph inputs and outputs.

npz files hold the stored integers in their storage dtype (int8, uint8, int32), keyed by the ONNX graph's input and
output names, in graph order (DeeployTest matches them by order).
"""
from __future__ import annotations

import zipfile
from typing import Dict, List, Optional, Sequence

import numpy as np

from ...qir import interpreter
from ...qir.batch import run_samples
from ...qir.diagnostics import UsageError
from ...qir.ir import Module, input_op, output_op
from ...qir.types import TensorType, f32

Samples = List[Dict[str, np.ndarray]]  # one {input name: array} per sample


def float_samples(quant_module: Module, inputs_npz: Optional[str] = None, seed: int = 0, count: int = 8) -> Samples:
    """Float input samples for `quant_module` (the imported, quant-level model); see the module docstring."""
    inputs = quant_module.inputs
    names = [op.attrs["name"] for op in inputs]
    if inputs_npz is None:
        return [interpreter.random_inputs(quant_module, seed + k) for k in range(count)]
    if not zipfile.is_zipfile(inputs_npz):
        # np.load would try it as a pickle (and advise allow_pickle) or hand back a bare .npy array
        raise UsageError(f"{inputs_npz}: cannot read the input samples: not an .npz file (not a zip archive; "
                         f"numpy.savez writes one)")
    try:
        with np.load(inputs_npz, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError) as e:
        raise UsageError(f"{inputs_npz}: cannot read the input samples: {e}") from None
    if all(n in arrays for n in names):
        given = [arrays[n] for n in names]
    elif len(arrays) == len(names):
        given = list(arrays.values())
    else:
        raise UsageError(f"{inputs_npz}: holds arrays {sorted(arrays)}; the model's inputs are {names} (give one "
                         "array per input, named like it or in input order)")
    per_input = []
    for op, name, array in zip(inputs, names, given):
        shape = op.results[0].type.shape
        size = int(np.prod(shape)) if shape else 1
        if array.size == 0 or array.size % size or tuple(array.shape[-(len(shape) - 1):] if len(shape) > 1
                                                       else ()) != tuple(shape[1:]):
            raise UsageError(f"{inputs_npz}: array for input '{name}' has shape {list(array.shape)}, expected "
                             f"{list(shape)} or [N, {', '.join(map(str, shape[1:]))}]")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise UsageError(f"{inputs_npz}: array for input '{name}' is not real numbers ({array.dtype})")
        with np.errstate(over="ignore"):
            samples = array.astype(np.float32)
        if not np.all(np.isfinite(samples)):
            # a NaN or infinite sample has no quantized value: the test vectors would be meaningless
            raise UsageError(f"{inputs_npz}: array for input '{name}' holds "
                             f"{int(np.size(samples) - np.count_nonzero(np.isfinite(samples)))} NaN or infinite "
                             f"value(s) (as float32)")
        per_input.append(samples.reshape((-1,) + tuple(shape)))
    n = min(len(a) for a in per_input)
    if any(len(a) != n for a in per_input):
        raise UsageError(f"{inputs_npz}: the inputs hold different numbers of samples "
                         f"({', '.join(str(len(a)) for a in per_input)})")
    return [{name: a[k] for name, a in zip(names, per_input)} for k in range(n)]


def _input_rounding(quant_module: Module, name: str) -> str:
    """The rounding of the model's quantizer reading float input `name` (QuantizeLinear's order by default)."""
    for op in quant_module.inputs:
        if op.attrs["name"] == name:
            for user in op.results[0].users:
                if user.name == "quant.qcast":
                    return user.attr("rounding")
    return "round_add"


def quantize_samples(quant_module: Module, int_module: Module, samples: Samples) -> Samples:
    """Float samples -> stored integers of `int_module`'s (quantized) inputs, exactly as the model quantizes them."""
    quantizer = Module("quantize_inputs")
    for op in int_module.inputs:
        name, t = op.attrs["name"], op.results[0].type
        if not t.is_quant:
            raise UsageError(f"graph input '{name}' of the integer graph has no quantized type ({t}): cannot "
                             "quantize float samples for it")
        x = input_op(quantizer, name, TensorType(t.shape, f32))
        q = quantizer.create("quant.qcast", [x], [t], {"rounding": _input_rounding(quant_module, name)}, name)
        output_op(quantizer, name, q.result)
    return run_samples(quantizer, samples)


def device_outputs(device_module: Module, int_inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The re-imported device graph run on integer inputs given by name of `int_module` inputs, in input order."""
    return interpreter.run(device_module, list(int_inputs.values()))


def _dequantize(values: np.ndarray, t: TensorType) -> Optional[np.ndarray]:
    if t.is_float:
        return np.asarray(values, np.float64)
    if not t.is_quant:
        return None
    q = t.quant
    return (np.asarray(values, np.float64) - q.zero_points_for(t.rank)) * q.scales_for(t.rank)


def accuracy_report(quant_module: Module, int_module: Module, device_module: Module, samples: Samples,
                    int_samples: Samples, output_names: Optional[Sequence[str]] = None,
                    device_outputs: Optional[List[Dict[str, np.ndarray]]] = None) -> Dict:
    """The integer graph (`device_module`, read back from the emitted ONNX, with scales from `int_module`) against
    the quant-level model on the same float samples: per output max / mean error in output steps, argmax agreement
    (per batch row, over its flattened values).  Outputs are named `output_names` (the emitted graph's).  Each module
    runs once on all samples (batched where it allows); a list passed as `device_outputs` receives the device graph's
    outputs per sample ({output name: array}), the test vectors, so that they need no run of their own.
    """
    ref_types = {op.attrs["name"]: op.operands[0].type for op in quant_module.outputs}
    int_types = [(op.attrs["name"], op.operands[0].type) for op in int_module.outputs]
    stats = {name: {"err": [], "agree": 0, "argmax": 0} for name, _ in int_types}
    refs = run_samples(quant_module, samples)
    gots = run_samples(device_module, [list(qs.values()) for qs in int_samples])
    if device_outputs is not None:
        device_outputs[:] = gots
    for ref, got in zip(refs, gots):
        got = list(got.values())
        for (name, t), g in zip(int_types, got):
            if name not in ref:
                continue
            real_ref = _dequantize(ref[name], ref_types[name])
            real_got = _dequantize(g, t)
            if real_ref is None or real_got is None:
                continue
            step = t.quant.scales_for(t.rank) if t.is_quant else 1.0
            err = np.abs(real_got - real_ref) / step
            stats[name]["err"].append(err.reshape(-1))
            if real_ref.size >= 2:
                rows_ref = real_ref.reshape(real_ref.shape[0], -1)
                rows_got = real_got.reshape(real_got.shape[0], -1)
                stats[name]["agree"] += int(np.sum(rows_ref.argmax(axis=1) == rows_got.argmax(axis=1)))
                stats[name]["argmax"] += rows_ref.shape[0]
    outputs = []
    emitted = list(output_names) if output_names is not None else [name for name, _ in int_types]
    for (name, t), shown in zip(int_types, emitted):
        st = stats[name]
        rec = {"name": shown}
        if st["err"]:
            err = np.concatenate(st["err"])
            rec["max_error_steps"] = float(err.max())
            rec["mean_error_steps"] = float(err.mean())
        else:
            rec["max_error_steps"] = rec["mean_error_steps"] = None
        rec["argmax_agreement"] = (st["agree"] / st["argmax"]) if st["argmax"] else None
        outputs.append(rec)
    return {"samples": len(samples),
            "reference": "qirc interpreter on the imported quant-level model (onnxruntime semantics)",
            "outputs": outputs}


def _tensor_entry(name: str, t: TensorType, emitted_name: str) -> Dict:
    entry = {"name": emitted_name, "shape": list(t.shape), "dtype": t.storage.np_dtype.name}
    if emitted_name != name:
        entry["source_name"] = name
    if t.is_quant:
        q = t.quant
        if q.is_per_axis:
            entry["scale"] = list(q.scales)
            entry["zero_point"] = list(q.zero_points)
            entry["axis"] = q.axis
        else:
            entry["scale"] = q.scale
            entry["zero_point"] = q.zero_point
    else:
        entry["scale"] = None
        entry["zero_point"] = 0
    return entry


def io_description(int_module: Module, input_names: Sequence[str], output_names: Sequence[str]) -> Dict:
    """qirc.json "inputs" and "outputs": name (as in network.onnx), shape, dtype, scale, zero_point (axis)."""
    ins = [_tensor_entry(op.attrs["name"], op.results[0].type, n) for op, n in zip(int_module.inputs, input_names)]
    outs = [_tensor_entry(op.attrs["name"], op.operands[0].type, n)
            for op, n in zip(int_module.outputs, output_names)]
    return {"inputs": ins, "outputs": outs}


def save_npz(path: str, names: Sequence[str], arrays: Sequence[np.ndarray], types: Sequence[TensorType]) -> None:
    """Write arrays in their storage dtype, keyed by `names` in order."""
    payload = {n: np.asarray(a).astype(t.storage.np_dtype) for n, a, t in zip(names, arrays, types)}
    with open(path, "wb") as f:
        np.savez(f, **payload)
