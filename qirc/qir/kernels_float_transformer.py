"""Interpreter kernels of the float transformer ops: onnx.LayerNormalization, onnx.Gelu, onnx.Gather, onnx.Slice
(and int.gather, int.slice, which move stored integers the same way).

Each computes in float32 what onnxruntime's CPU provider computes, up to the last ulp of an ordered sum:

- LayerNormalization (onnxruntime `layer_norm_impl.cc`): per row, mean and mean of squares are summed in float32 in
  index order, std = sqrt(mean_sq - mean^2 + epsilon), y = (x - mean) / std * Scale + B.
- Gelu (onnxruntime `gelu.cc`): t = x * (1 / sqrt 2), erf(t) (MLAS' erf is accurate to about an ulp; here the exact
  erf rounded to float32), y = 0.5 * x * (erf(t) + 1); the tanh form as onnxruntime spells it.

Imported by `qirc.qir.interpreter`, whose `@kernel` registry they join.
"""
from __future__ import annotations

import math

import numpy as np

from .interpreter import kernel

_F32 = np.float32
_ERF = np.frompyfunc(math.erf, 1, 1)


def erf_f32(x: np.ndarray) -> np.ndarray:
    """erf of a float32 array, computed in float64 and rounded to float32."""
    x = np.asarray(x, dtype=_F32)
    return np.asarray(_ERF(x.astype(np.float64)), dtype=np.float64).astype(_F32).reshape(x.shape)


def layer_norm_f32(x: np.ndarray, scale: np.ndarray, bias, axis: int, epsilon: float) -> np.ndarray:
    """onnxruntime's float LayerNormalization over the axes from `axis` to the last."""
    x = np.asarray(x, dtype=_F32)
    axis = axis + x.ndim if axis < 0 else axis
    norm = x.shape[axis:]
    n = int(np.prod(norm, dtype=np.int64))
    rows = x.reshape(-1, n)
    mean = np.zeros(rows.shape[0], _F32)
    mean_sq = np.zeros(rows.shape[0], _F32)
    for h in range(n):  # the order onnxruntime sums in: one running float32 sum per row
        col = rows[:, h]
        mean = mean + col
        mean_sq = mean_sq + col * col
    mean = mean / _F32(n)
    std = np.sqrt(mean_sq / _F32(n) - mean * mean + _F32(epsilon))
    scale = np.broadcast_to(np.asarray(scale, _F32), norm).reshape(n)
    y = (rows - mean[:, None]) / std[:, None] * scale
    if bias is not None:
        y = y + np.broadcast_to(np.asarray(bias, _F32), norm).reshape(n)
    return y.astype(_F32).reshape(x.shape)


def gelu_f32(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """onnxruntime's float Gelu (opset 20)."""
    x = np.asarray(x, dtype=_F32)
    if approximate == "tanh":
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        inner = _F32(math.sqrt(2.0 / math.pi)) * (x + _F32(0.044715) * x * x * x)
        return (_F32(0.5) * x * (_F32(1) + np.tanh(inner))).astype(_F32)
    t = x * _F32(1.0 / math.sqrt(2.0))
    return (_F32(0.5) * x * (erf_f32(t) + _F32(1))).astype(_F32)


@kernel("onnx.LayerNormalization")
def _onnx_layer_norm(op, args):
    bias = args[2] if len(args) > 2 else None
    return [layer_norm_f32(args[0], args[1], bias, int(op.attr("axis")), float(op.attr("epsilon")))]


@kernel("onnx.Gelu")
def _onnx_gelu(op, args):
    return [gelu_f32(args[0], op.attr("approximate"))]


@kernel("int.gather")
@kernel("onnx.Gather")
def _onnx_gather(op, args):
    x = args[0]
    axis = int(op.attr("axis"))
    indices = np.asarray([int(i) for i in op.attr("indices")], np.int64)
    index = indices[0] if op.attr("scalar") else indices
    return [np.take(x, index, axis=axis)]


@kernel("int.slice")
@kernel("onnx.Slice")
def _onnx_slice(op, args):
    x = args[0]
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(op.attr("starts"), op.attr("ends"), op.attr("axes"), op.attr("steps")):
        index[int(a)] = slice(int(s), int(e), int(st))
    return [x[tuple(index)]]
