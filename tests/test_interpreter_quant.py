"""quant.qcast / quant.dcast: the two rounding orders of DESIGN.md section 3, ties, narrow range, per-axis, checked
against onnxruntime's QuantizeLinear / DequantizeLinear and a decomposed Div->Add->Round->Clip graph; random_inputs."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

from qirc.qir.interpreter import random_inputs, run
from qirc.qir.ir import Module, input_op, output_op
from qirc.qir.types import UniformQuantType, f32, i8, tensor, u8


def qcast_module(shape, qtype, rounding):
    m = Module("qcast")
    x = input_op(m, "x", tensor(shape, f32))
    q = m.create("quant.qcast", [x], [tensor(shape, qtype)], {"rounding": rounding}, loc="/q").result
    output_op(m, "q", q)
    return m


def qcast(x, qtype, rounding):
    return run(qcast_module(x.shape, qtype, rounding), {"x": x})["q"]


def dcast(q, qtype):
    m = Module("dcast")
    qi = input_op(m, "q", tensor(q.shape, qtype))
    y = m.create("quant.dcast", [qi], [tensor(q.shape, f32)], loc="/dq").result
    output_op(m, "y", y)
    return run(m, {"q": q})["y"]


def ort_session(nodes, inputs, inits, out_type=TensorProto.FLOAT):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("out", out_type, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ort_quantize_linear(x, scale, zero_point, axis=1):
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
             numpy_helper.from_array(np.asarray(zero_point), "z")]
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["out"], axis=axis)
    out_type = TensorProto.INT8 if np.asarray(zero_point).dtype == np.int8 else TensorProto.UINT8
    s = ort_session([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)], inits, out_type)
    return s.run(None, {"x": x})[0]


def ort_dequantize_linear(q, scale, zero_point, axis=1):
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
             numpy_helper.from_array(np.asarray(zero_point, q.dtype), "z")]
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["out"], axis=axis)
    elem = TensorProto.INT8 if q.dtype == np.int8 else TensorProto.UINT8
    s = ort_session([node], [helper.make_tensor_value_info("q", elem, q.shape)], inits)
    return s.run(None, {"q": q})[0]


def ort_decomposed(x, scale, zero_point, lo, hi):
    """Div -> Add -> Round -> Clip in float32, as the decomposed QCDQ exporters write a quantizer."""
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n)
             for n, v in [("s", scale), ("z", zero_point), ("lo", lo), ("hi", hi)]]
    nodes = [helper.make_node("Div", ["x", "s"], ["d"]), helper.make_node("Add", ["d", "z"], ["a"]),
             helper.make_node("Round", ["a"], ["r"]), helper.make_node("Clip", ["r", "lo", "hi"], ["out"])]
    s = ort_session(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)], inits)
    return s.run(None, {"x": x})[0]


# ----- ties: where the two orders differ -----------------------------------------------------------------------------
SCALE = 0.25  # a power of two: x / s is exact, so the ties below are exact ties in float32
TIES = np.array([(k + 0.5) * SCALE for k in range(-20, 20)], np.float32)  # x / s = k + 0.5


@pytest.mark.parametrize("zero_point", [-3, 1, 7, 101])
def test_odd_zero_point_ties_differ_by_exactly_one_step(zero_point):
    qt = UniformQuantType.per_tensor(i8, SCALE, zero_point)
    round_add = qcast(TIES, qt, "round_add")
    add_round = qcast(TIES, qt, "add_round")
    k = np.arange(-20, 20)
    # round_add: rint(k + 0.5) + z; add_round: rint(k + 0.5 + z) with k + z + 0.5 a tie of the other parity
    assert round_add.tolist() == (np.where(k % 2 == 0, k, k + 1) + zero_point).tolist()
    assert add_round.tolist() == np.where((k + zero_point) % 2 == 0, k + zero_point, k + zero_point + 1).tolist()
    assert np.all(np.abs(round_add - add_round) == 1)


@pytest.mark.parametrize("zero_point", [-4, 0, 2, 100])
def test_even_zero_point_ties_agree(zero_point):
    qt = UniformQuantType.per_tensor(i8, SCALE, zero_point)
    np.testing.assert_array_equal(qcast(TIES, qt, "round_add"), qcast(TIES, qt, "add_round"))


def test_orders_agree_off_ties():
    x = np.random.default_rng(0).uniform(-30, 30, 2000).astype(np.float32)
    x = x[np.abs(x / np.float32(0.1) % 1 - 0.5) > 1e-3]
    qt = UniformQuantType.per_tensor(i8, 0.1, 17)
    np.testing.assert_array_equal(qcast(x, qt, "round_add"), qcast(x, qt, "add_round"))


# ----- against onnxruntime -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage,scale,zero_point", [(u8, 0.0235, 101), (i8, 0.0078125, 0), (i8, 0.05, -7),
                                                      (u8, 0.25, 1)])
def test_round_add_matches_quantize_linear(storage, scale, zero_point):
    rng = np.random.default_rng(1)
    qt = UniformQuantType.per_tensor(storage, scale, zero_point)
    lo, hi = scale * (qt.storage_min - zero_point), scale * (qt.storage_max - zero_point)
    x = np.concatenate([rng.uniform(1.2 * lo, 1.2 * hi, 4000), (np.arange(-300, 300) + 0.5) * scale])
    x = x.astype(np.float32).reshape(4, -1)
    ref = ort_quantize_linear(x, np.float32(scale), storage.np_dtype.type(zero_point))
    got = qcast(x, qt, "round_add")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref.astype(np.int64))


@pytest.mark.parametrize("storage,scale,zero_point", [(u8, 0.0235, 101), (i8, 0.05, -7), (u8, 0.25, 1)])
def test_add_round_matches_decomposed_graph(storage, scale, zero_point):
    rng = np.random.default_rng(2)
    qt = UniformQuantType.per_tensor(storage, scale, zero_point)
    lo, hi = scale * (qt.storage_min - zero_point), scale * (qt.storage_max - zero_point)
    x = np.concatenate([rng.uniform(1.2 * lo, 1.2 * hi, 4000), (np.arange(-300, 300) + 0.5) * scale])
    x = x.astype(np.float32)
    ref = ort_decomposed(x, scale, zero_point, qt.storage_min, qt.storage_max)
    np.testing.assert_array_equal(qcast(x, qt, "add_round"), ref.astype(np.int64))
    if zero_point % 2:
        # and the QuantizeLinear order is really different on this data (the ties)
        assert np.any(qcast(x, qt, "round_add") != ref.astype(np.int64))


@pytest.mark.parametrize("axis", [0, 1])
def test_per_axis_qcast_matches_quantize_linear(axis):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 3)).astype(np.float32) * 3
    n = x.shape[axis]
    scales = rng.uniform(0.01, 0.05, n).astype(np.float32)
    zps = rng.integers(-20, 20, n).astype(np.int8)
    qt = UniformQuantType.per_axis(i8, axis, scales.astype(np.float64), zps)
    ref = ort_quantize_linear(x, scales, zps, axis=axis)
    np.testing.assert_array_equal(qcast(x, qt, "round_add"), ref.astype(np.int64))


def test_narrow_range_saturates_at_storage_min():
    qt = UniformQuantType.per_tensor(i8, 0.1, 0, storage_min=-127, storage_max=127)
    got = qcast(np.array([-100.0, -12.75, -12.65, 0.04, 12.7, 100.0], np.float32), qt, "round_add")
    assert got.tolist() == [-127, -127, -126, 0, 127, 127]


def test_narrow_range_per_axis():
    qt = UniformQuantType.per_axis(i8, 0, [0.5, 0.25], storage_min=-127, storage_max=127)
    x = np.array([[-1000.0, 3.3], [-31.9, 1000.0]], np.float32)
    assert qcast(x, qt, "add_round").tolist() == [[-127, 7], [-127, 127]]


# ----- dcast ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage,scale,zero_point", [(u8, 0.0235, 101), (i8, 0.013, -5), (i8, 0.0078125, 0)])
def test_dcast_matches_dequantize_linear(storage, scale, zero_point):
    q = np.arange(storage.min, storage.max + 1).astype(storage.np_dtype).reshape(2, -1)
    qt = UniformQuantType.per_tensor(storage, scale, zero_point)
    ref = ort_dequantize_linear(q, np.float32(scale), zero_point)
    got = dcast(q.astype(np.int64), qt)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


def test_per_axis_dcast_matches_dequantize_linear():
    rng = np.random.default_rng(4)
    q = rng.integers(-128, 128, (3, 5, 2)).astype(np.int8)
    scales = rng.uniform(0.001, 0.1, 5).astype(np.float32)
    zps = rng.integers(-10, 10, 5).astype(np.int8)
    qt = UniformQuantType.per_axis(i8, 1, scales.astype(np.float64), zps)
    ref = ort_dequantize_linear(q, scales, zps, axis=1)
    np.testing.assert_array_equal(dcast(q.astype(np.int64), qt), ref)


def test_qcast_dcast_roundtrip_error_is_half_a_step():
    qt = UniformQuantType.per_tensor(i8, 0.05, 3)
    x = np.random.default_rng(5).uniform(-6, 6, 1000).astype(np.float32)
    back = dcast(qcast(x, qt, "round_add"), qt)
    assert np.max(np.abs(back - x)) <= 0.05 / 2 + 1e-6


# ----- random_inputs -------------------------------------------------------------------------------------------------
def test_random_inputs_cover_the_quantizer_range_and_saturate():
    qt = UniformQuantType.per_tensor(u8, 0.02, 100)
    m = qcast_module((1, 3, 32, 32), qt, "add_round")
    inputs = random_inputs(m, seed=7)
    x = inputs["x"]
    assert x.dtype == np.float32 and x.shape == (1, 3, 32, 32)
    lo, hi = 0.02 * (0 - 100), 0.02 * (255 - 100)
    width = hi - lo
    assert x.min() >= lo - 0.05 * width - 1e-6 and x.max() <= hi + 0.05 * width + 1e-6
    q = run(m, inputs)["q"]
    assert np.any(q == 0) and np.any(q == 255)  # both ends saturate
    np.testing.assert_array_equal(random_inputs(m, seed=7)["x"], x)  # seeded
    assert not np.array_equal(random_inputs(m, seed=8)["x"], x)


def test_random_inputs_for_plain_float_and_integer_inputs():
    m = Module("mixed")
    a = input_op(m, "a", tensor((4000,), f32))
    b = input_op(m, "b", tensor((4000,), UniformQuantType.per_tensor(i8, 0.1, 0, storage_min=-127)))
    output_op(m, "a_out", a)
    output_op(m, "b_out", b)
    inputs = random_inputs(m, seed=0)
    assert list(inputs) == ["a", "b"]
    assert inputs["a"].dtype == np.float32 and abs(inputs["a"].std() - 1) < 0.1 and inputs["a"].min() < -2.5
    assert inputs["b"].dtype == np.int64
    assert inputs["b"].min() == -127 and inputs["b"].max() == 127


# ----- a QDQ layer end to end ----------------------------------------------------------------------------------------
def test_qdq_conv_layer_matches_onnxruntime():
    """x -> Q -> DQ -> Conv(DQ(w_int8), bias) -> Relu -> Q -> DQ, as a QDQ model and as qir, on the same input."""
    rng = np.random.default_rng(9)
    s_x, z_x, s_w, s_y, z_y = 1 / 64, 3, 0.004, 0.03, -5
    w = rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8)
    bias = rng.standard_normal(8).astype(np.float32)
    # half the inputs are exact ties x / s_x = k + 0.5, where the rounding order matters (z_x is odd)
    x = rng.uniform(-2.5, 2.5, (2, 3, 10, 10))
    ties = (rng.integers(-160, 160, x.shape) + 0.5) * s_x
    x = np.where(rng.random(x.shape) < 0.5, ties, x).astype(np.float32)

    def init(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["out"])]
    inits = [init("sx", np.float32(s_x)), init("zx", np.int8(z_x)), init("w", w), init("sw", np.float32(s_w)),
             init("zw", np.int8(0)), init("b", bias), init("sy", np.float32(s_y)), init("zy", np.int8(z_y))]
    session = ort_session(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)], inits)
    ref = session.run(None, {"x": x})[0]

    from qirc.qir.ir import const_op
    m = Module("qdq_conv")
    tx = UniformQuantType.per_tensor(i8, s_x, z_x)
    ty = UniformQuantType.per_tensor(i8, s_y, z_y)
    tw = UniformQuantType.per_tensor(i8, s_w, 0)
    xi = input_op(m, "x", tensor(x.shape, f32))
    xq = m.create("quant.qcast", [xi], [tensor(x.shape, tx)], {"rounding": "round_add"}).result
    xd = m.create("quant.dcast", [xq], [tensor(x.shape, f32)]).result
    wd = m.create("quant.dcast", [const_op(m, w, tensor(w.shape, tw))], [tensor(w.shape, f32)]).result
    b = const_op(m, bias, tensor(bias.shape, f32))
    c = m.create("onnx.Conv", [xd, wd, b], [tensor((2, 8, 10, 10), f32)],
                 dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1])).result
    r = m.create("onnx.Relu", [c], [tensor((2, 8, 10, 10), f32)]).result
    yq = m.create("quant.qcast", [r], [tensor(r.type.shape, ty)], {"rounding": "round_add"}).result
    y = m.create("quant.dcast", [yq], [tensor(r.type.shape, f32)]).result
    output_op(m, "out", y)
    got = run(m, {"x": x})["out"]
    steps = np.rint(np.abs(got - ref) / np.float32(s_y))
    # only the Conv's float summation order may differ: a value within float noise of a rounding tie moves one step
    assert steps.max() <= 1
    assert np.count_nonzero(steps) <= 2
