"""What each approximating kernel costs the whole network: the integer graph run with one kind of kernel (iSoftmax,
iLayerNorm or iGELU) replaced by the float op it approximates, rounded once onto the kernel's own output grid.

    rows = exact_kernel_ablation(quant_module, int_module, samples, int_samples)

Each row gives the network's output error against the fake-quant model (mean and max in output steps, argmax
agreement, as the driver's accuracy report computes them) with that kind computed exactly; the first row is the
integer graph as emitted.  The difference between a row and the first is the cost of that approximation.  The exact
stand-ins: softmax rounded to u / 255; LayerNorm with the model's epsilon, gamma / s_o and beta / s_o + z_o as the
recipe encoded them (weight / 2^k, (bias - 2^(k-1)) / 2^k), rounded and saturated to int8 (no wrap); erf GELU
rounded onto the kernel's int32 grid s / one.  Nothing here changes the graph that is emitted.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Sequence

import numpy as np

from ..backends.deeploy.vectors import accuracy_report
from ..lowering.approximations import APPROXIMATING
from ..qir.interpreter import KERNELS
from ..qir.ir import Module
from ..qir.kernels_transformer import log2_exact

_ERF = np.vectorize(math.erf, otypes=[np.float64])
_KIND = {"int.isoftmax": "iSoftmax", "int.ilayernorm": "iLayerNorm", "int.igelu": "iGELU"}


def _epsilons(quant_module: Module) -> Dict[str, float]:
    return {op.loc: float(op.attr("epsilon")) for op in quant_module.walk("onnx.LayerNormalization")}


def _exact_softmax(op, args):
    x = np.asarray(args[0], np.float64) * op.operands[0].type.quant.scale
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return [np.clip(np.rint(255.0 * e / e.sum(axis=-1, keepdims=True)), 0, 255).astype(np.int64)]


def _exact_gelu(op, args):
    s = op.operands[0].type.quant.scale
    x = np.asarray(args[0], np.float64) * s
    y = 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)))
    return [np.rint(y / op.results[0].type.quant.scale).astype(np.int64)]


def _exact_layernorm(epsilons):
    def kernel(op, args):
        x = np.asarray(args[0], np.float64)
        weight, bias = (np.asarray(a, np.float64) for a in args[1:3])
        k = log2_exact(int(op.attr("D")))
        s_in = op.operands[0].type.quant.scale
        eps = epsilons.get(op.loc, 1e-5) / (s_in * s_in)  # in input steps squared
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        n = (x - mean) / np.sqrt(var + eps)
        y = n * weight / (1 << k) + (bias - (1 << k) // 2) / (1 << k)
        return [np.clip(np.rint(y), -128, 127).astype(np.int64)]
    return kernel


@contextlib.contextmanager
def _replaced(name: str, kernel):
    old = KERNELS[name]
    KERNELS[name] = kernel
    try:
        yield
    finally:
        KERNELS[name] = old


def exact_kernel_ablation(quant_module: Module, int_module: Module, samples, int_samples) -> List[Dict]:
    """[{"computed_exactly": None | "iSoftmax" | ..., "outputs": [{name, max/mean_error_steps, argmax_agreement}]}]:
    the integer graph as is, then once per kind of approximating kernel it contains, with that kind exact."""
    kinds = [name for name in APPROXIMATING if int_module.walk(name)]
    if not kinds:
        return []
    exact = {"int.isoftmax": _exact_softmax, "int.igelu": _exact_gelu,
             "int.ilayernorm": _exact_layernorm(_epsilons(quant_module))}
    rows = [{"computed_exactly": None,
             "outputs": accuracy_report(quant_module, int_module, int_module, samples, int_samples)["outputs"]}]
    for name in kinds:
        with _replaced(name, exact[name]):
            outputs = accuracy_report(quant_module, int_module, int_module, samples, int_samples)["outputs"]
        rows.append({"computed_exactly": _KIND[name], "outputs": outputs})
    return rows


def ablation_lines(rows: Sequence[Dict]) -> List[str]:
    """One line per row, for the terminal."""
    lines = []
    for row in rows:
        what = f"with {row['computed_exactly']} exact" if row["computed_exactly"] else "as emitted"
        for out in row["outputs"]:
            if out.get("mean_error_steps") is None:
                continue
            agree = out.get("argmax_agreement")
            lines.append(f"  {what}: output '{out['name']}' mean error {out['mean_error_steps']:.3g}, max "
                         f"{out['max_error_steps']:.3g} step(s)"
                         + ("" if agree is None else f", argmax agreement {100 * agree:.1f}%"))
    return lines
