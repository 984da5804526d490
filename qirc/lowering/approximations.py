"""How far each approximating integer kernel (int.isoftmax, int.ilayernorm, int.igelu) is from the float op it
replaces, measured on sample inputs: the numbers qirc.json reports under `accuracy.approximations`.

For every such op of the integer module, the kernel's own integer input is dequantized and the float op (softmax,
LayerNorm with the model's gamma, beta and epsilon, erf GELU) is computed on it in float64; the kernel's output,
dequantized, is compared with it in output steps.  The output step is the scale of the grid the result is read on:
1/255 for iSoftmax, the output quantizer's scale for iLayerNorm, and for iGELU (whose int32 output is on the fine
grid s / one) the scale of the RequantShift that reads it.  So the numbers isolate each kernel's approximation
(I-BERT's polynomials, the integer variance and its square root, the flooring normalisation), not the errors
upstream of it.  iLayerNorm also reports how many outputs wrapped around int8 (its C kernel does not saturate).
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence

import numpy as np

from ..qir.interpreter import run_values
from ..qir.ir import Module, Operation
from ..qir.kernels_transformer import ilayernorm_prewrap, log2_exact
from .common import real_const

APPROXIMATING = ("int.isoftmax", "int.ilayernorm", "int.igelu")
_ERF = np.vectorize(math.erf, otypes=[np.float64])


def _real(values: np.ndarray, t) -> np.ndarray:
    q = t.quant
    return (values.astype(np.float64) - q.zero_point) * q.scale


def _float_op(op: Operation, x: np.ndarray, quant_module: Module) -> np.ndarray:
    if op.name == "int.isoftmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if op.name == "int.igelu":
        return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)))
    source = next((o for o in quant_module.walk("onnx.LayerNormalization") if o.loc == op.loc), None)
    c = x.shape[-1]
    gamma = real_const(source.operands[1]).reshape(-1) if source is not None else None
    beta = real_const(source.operands[2]).reshape(-1) if source is not None and len(source.operands) > 2 else None
    eps = float(source.attr("epsilon")) if source is not None else 1e-5
    gamma = np.ones(c) if gamma is None else np.broadcast_to(gamma, (c,))
    beta = np.zeros(c) if beta is None else np.broadcast_to(beta, (c,))
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _output_step(op: Operation) -> float:
    if op.name == "int.igelu":
        users = op.results[0].users
        if len(users) == 1 and users[0].name == "int.requant_shift" and users[0].results[0].type.is_quant:
            return float(users[0].results[0].type.quant.scale)
    return float(op.results[0].type.quant.scale)


def approximation_report(quant_module: Module, int_module: Module,
                         int_samples: Sequence[Mapping[str, np.ndarray]]) -> List[Dict]:
    """One entry per approximating op, in graph order: {"op", "node", "kernel", "samples", "elements",
    "mean_error_steps", "max_error_steps"} and for iLayerNorm "wrapped" (outputs whose value left -128..127).
    `int_samples` are inputs of `int_module` (stored integers, by input name)."""
    ops = [op for op in int_module.ops() if op.name in APPROXIMATING and op.results[0].type.is_quant
           and op.operands[0].type.is_quant]
    if not ops:
        return []
    sums = {id(op): [0.0, 0.0, 0, 0] for op in ops}  # sum |err|, max |err|, count, wrapped
    for sample in int_samples:
        values = run_values(int_module, dict(sample))
        for op in ops:
            x_int, y_int = values[op.operands[0]], values[op.results[0]]
            x = _real(x_int, op.operands[0].type)
            y = _real(y_int, op.results[0].type)
            err = np.abs(y - _float_op(op, x, quant_module)) / _output_step(op)
            acc = sums[id(op)]
            acc[0] += float(err.sum())
            acc[1] = max(acc[1], float(err.max()) if err.size else 0.0)
            acc[2] += int(err.size)
            if op.name == "int.ilayernorm":
                pre = ilayernorm_prewrap(x_int, values[op.operands[1]], values[op.operands[2]],
                                         log2_exact(int(op.attr("D"))))
                acc[3] += int(np.count_nonzero((pre < -128) | (pre > 127)))
    report = []
    for op in ops:
        total, worst, count, wrapped = sums[id(op)]
        entry = {"op": op.name, "node": op.loc, "kernel": {"int.isoftmax": "iSoftmax", "int.ilayernorm": "iLayerNorm",
                                                            "int.igelu": "iGELU"}[op.name],
                 "samples": len(int_samples), "elements": count,
                 "mean_error_steps": round(total / max(count, 1), 4), "max_error_steps": round(worst, 4)}
        if op.name == "int.ilayernorm":
            entry["wrapped"] = wrapped
        report.append(entry)
    return report
