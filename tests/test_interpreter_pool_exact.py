"""onnx.AveragePool, onnx.GlobalAveragePool and onnx.ReduceMean are BIT-identical to onnxruntime.

onnxruntime runs on its CPU provider with graph optimisations disabled, at opset 13 as the exporters write it.  Each
case builds the single-op model once on both sides and runs 20 random float32 inputs; `np.array_equal` must hold on
every output.  The shapes exercise each of onnxruntime's summation orders (MLAS's global, vector and generic pooling
kernels, the reference loop for ceil_mode with count_include_pad, Eigen's alignment-dependent row sums) and divisors
(count_include_pad 0/1, ceil-mode overhang).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

ort = pytest.importorskip("onnxruntime")

from qirc.qir.interpreter import run  # noqa: E402
from qirc.qir.ir import Module, input_op, output_op  # noqa: E402
from qirc.qir.types import f32, tensor  # noqa: E402

OPSET = 13
SEEDS = range(20)


class SingleOp:
    """One ONNX op as an onnxruntime session and as a qir Module with the same attributes."""

    def __init__(self, op_type: str, x_shape, attrs: dict):
        node = helper.make_node(op_type, ["x"], ["y"], **attrs)
        graph = helper.make_graph([node], "single_op",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.op_type, self.x_shape, self.attrs = op_type, tuple(x_shape), attrs
        self.module = None

    def reference(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": x})[0]

    def interpret(self, x: np.ndarray, out_shape) -> np.ndarray:
        if self.module is None:
            m = Module("single_op")
            xv = input_op(m, "x", tensor(self.x_shape, f32))
            y = m.create(f"onnx.{self.op_type}", [xv], [tensor(tuple(out_shape), f32)], dict(self.attrs),
                         loc=f"/{self.op_type}").result
            output_op(m, "y", y)
            self.module = m
        return run(self.module, {"x": x})["y"]


def assert_bit_identical(op_type: str, x_shape, attrs: dict, scale: float = 1.0):
    single = SingleOp(op_type, x_shape, attrs)
    for seed in SEEDS:
        x = (np.random.default_rng(seed).standard_normal(x_shape) * scale).astype(np.float32)
        ref = single.reference(x)
        got = single.interpret(x, ref.shape)
        assert got.dtype == np.float32 and got.shape == ref.shape
        differing = int(np.count_nonzero(got != ref))
        assert np.array_equal(got, ref), (f"seed {seed}: {differing} of {ref.size} elements differ, largest by "
                                          f"{float(np.max(np.abs(got.astype(np.float64) - ref)))}")


# ----- AveragePool --------------------------------------------------------------------------------------------------
# (input shape, attributes); every case runs with count_include_pad 0 and 1
AVERAGE_POOL_CASES = {
    # stride 3 > 2: MLAS's generic kernel (row-major taps); TruncAvgPool's 3x3 window in Brevitas exports
    "k3s3": ((1, 16, 6, 6), dict(kernel_shape=[3, 3], strides=[3, 3], pads=[0, 0, 0, 0])),
    # stride 2 with padding and a ceil-mode overhang: MLAS's vector kernel (columns first), or with
    # count_include_pad=1 the reference loop whose divisor leaves the overhang out
    "k2x3_pads_ceil": ((1, 8, 5, 7), dict(kernel_shape=[2, 3], strides=[2, 2], pads=[1, 1, 0, 1], ceil_mode=1)),
    "k2x3_pads_ceil_s1x3": ((1, 8, 5, 7), dict(kernel_shape=[2, 3], strides=[1, 3], pads=[0, 1, 1, 1],
                                               ceil_mode=1)),
    "k2x3_pads_floor": ((1, 8, 5, 7), dict(kernel_shape=[2, 3], strides=[1, 2], pads=[1, 0, 1, 2])),
    "k3s2_pad1": ((2, 3, 9, 8), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "k3s1_pad1": ((1, 4, 10, 12), dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),
    "k2s2": ((1, 8, 16, 16), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])),
    # kernel == input, stride 1, no padding: MLAS's global kernel
    "whole_7x7": ((1, 8, 7, 7), dict(kernel_shape=[7, 7], strides=[1, 1], pads=[0, 0, 0, 0])),
    # kernel == input with stride 2: not global, but the vector kernel
    "whole_5x6_s2": ((1, 8, 5, 6), dict(kernel_shape=[5, 6], strides=[2, 2], pads=[0, 0, 0, 0])),
    # kernel above 32: the generic kernel although the stride is 1
    "k33": ((1, 2, 34, 36), dict(kernel_shape=[33, 33], strides=[1, 1], pads=[0, 0, 0, 0])),
    "1d": ((2, 4, 13), dict(kernel_shape=[3], strides=[2], pads=[1, 1], ceil_mode=1)),
    "3d": ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 3, 2], strides=[1, 2, 2], pads=[1, 0, 1, 0, 1, 1])),
}


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("case", sorted(AVERAGE_POOL_CASES))
def test_average_pool_bit_identical(case, count_include_pad):
    x_shape, attrs = AVERAGE_POOL_CASES[case]
    full = dict(ceil_mode=0, count_include_pad=count_include_pad)
    full.update(attrs)
    assert_bit_identical("AveragePool", x_shape, full)


# ----- GlobalAveragePool --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape", [(1, 8, 32, 32), (2, 6, 7, 7), (1, 5, 5, 7), (1, 3, 1, 3), (2, 4, 9),
                                     (1, 2, 3, 4, 5)])
def test_global_average_pool_bit_identical(x_shape):
    assert_bit_identical("GlobalAveragePool", x_shape, {})


# ----- ReduceMean ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("x_shape", [(1, 8, 32, 32), (2, 6, 7, 7), (1, 5, 5, 7), (3, 3, 3, 3), (1, 6, 2, 2)])
def test_reduce_mean_spatial_bit_identical(x_shape, keepdims):
    # 7x7 and 5x7 rows start at every 16-byte phase, which moves Eigen's aligned packets row by row
    assert_bit_identical("ReduceMean", x_shape, dict(axes=[2, 3], keepdims=keepdims))


# onnxruntime's fast paths after dropping size-1 axes: KR (Eigen row sums), RK, KRK (MLAS SGEMM with a ones vector,
# rows added in partial sums of 4, 2, 1), RKR
@pytest.mark.parametrize("x_shape,axes", [((2, 3, 5, 7), [-1]), ((2, 3, 5, 7), [0, 1, 2, 3]),
                                          ((1, 3, 5, 7), [1, 2, 3]), ((2, 3, 5, 7), [0]), ((40, 6), [0]),
                                          ((2, 3, 5, 7), [1]), ((2, 43, 6), [1]), ((3, 7, 5, 2), [1, 2]),
                                          ((2, 3, 5, 7), [0, 3]), ((1, 6, 1, 1), [2, 3])])
def test_reduce_mean_other_axes_bit_identical(x_shape, axes):
    assert_bit_identical("ReduceMean", x_shape, dict(axes=axes, keepdims=1))


# ----- why bit-exactness matters ----------------------------------------------------------------------------------
def test_truncavgpool_requantization_matches_onnxruntime():
    """Brevitas' TruncAvgPool: int8 codes * s pooled 3x3, then quantized with scale s * 16/9 (the 4-bit truncation
    of the 9-term sum).  The average divided by that scale lands exactly on .5 for about 1 in 16 windows, so a
    one-ulp difference in the average (numpy's summation order instead of MLAS's) flips the rounded code; the
    interpreter must give onnxruntime's codes everywhere.  s is not a power of two, so the window sums round."""
    s = np.float32(0.0173)
    out_scale = np.float32(s * np.float32(16) / np.float32(9))
    single = SingleOp("AveragePool", (1, 16, 6, 6), dict(kernel_shape=[3, 3], strides=[3, 3]))
    ties = 0
    for seed in SEEDS:
        x = np.random.default_rng(seed).integers(-128, 128, size=(1, 16, 6, 6)).astype(np.float32) * s
        ref = single.reference(x)
        got = single.interpret(x, ref.shape)
        ref_scaled = ref / out_scale
        ties += int(np.count_nonzero(ref_scaled - np.floor(ref_scaled) == 0.5))
        np.testing.assert_array_equal(np.rint(got / out_scale), np.rint(ref_scaled))
    assert ties > 0  # the inputs did reach exact rounding ties
