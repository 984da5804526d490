"""PENDING (int-kernels): float kernels of onnx.LayerNormalization and onnx.Gelu until helper transformer-zoo's
qirc/qir/kernels_float_transformer.py is in main; this file goes at the merge."""
from __future__ import annotations

import math

import numpy as np

from .interpreter import kernel

_F32 = np.float32
_ERF = np.frompyfunc(math.erf, 1, 1)


@kernel("onnx.LayerNormalization")
def _onnx_layer_norm(op, args):
    x = np.asarray(args[0], _F32)
    mean = x.mean(-1, keepdims=True, dtype=_F32)
    var = ((x - mean) ** 2).mean(-1, keepdims=True, dtype=_F32)
    y = (x - mean) / np.sqrt(var + _F32(op.attr("epsilon"))) * args[1]
    if len(args) > 2:
        y = y + args[2]
    return [y.astype(_F32)]


@kernel("onnx.Gelu")
def _onnx_gelu(op, args):
    x = np.asarray(args[0], _F32)
    erf = np.asarray(_ERF((x * _F32(1 / math.sqrt(2))).astype(np.float64)), np.float64).astype(_F32).reshape(x.shape)
    return [(_F32(0.5) * x * (erf + _F32(1))).astype(_F32)]
