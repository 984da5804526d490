"""dequant-push: dcast moves below Conv/Gemm/MatMul, MaxPool, Relu/Clip, shape ops, Pad and Concat."""
import numpy as np
import pytest

from qirc.lowering.dequant_push import DequantPush
from qirc.lowering.testing import QuantBuilder
from qirc.qir.diagnostics import LoweringError
from qirc.qir.passes import get_pass, translation_validate
from qirc.qir.types import u8
from qirc.qir.verifier import verify

rng = np.random.default_rng(11)


def run(b, samples=3):
    before = b.module.clone()
    DequantPush().run(b.module)
    verify(b.module)
    report = translation_validate(before, b.module, samples=samples)
    return b.module, report


def names(module):
    return [op.name for op in module.ops() if op.name not in ("qir.const",)]


def real_diff(report):
    return max(r["max_abs_diff"] for r in report)


def test_registered():
    assert get_pass("dequant-push") is DequantPush


def test_conv_per_tensor_with_bias():
    b = QuantBuilder()
    x = b.input("x", (1, 3, 6, 6), 1 / 128)
    y = b.conv(x, rng.integers(-127, 128, (4, 3, 3, 3)), 0.01, bias=rng.integers(-2000, 2000, 4), pads=[1, 1, 1, 1])
    b.output("y", y)
    m, report = run(b)
    assert names(m) == ["qir.input", "quant.qcast", "int.conv", "quant.dcast", "qir.output"]
    conv = m.walk("int.conv")[0]
    assert conv.results[0].type.quant.scale == pytest.approx(0.01 / 128)
    assert conv.results[0].type.quant.storage.name == "i32"
    assert conv.operands[2].type.storage.name == "i32"
    assert real_diff(report) < 1e-4


def test_conv_per_channel_gives_per_axis_accumulator():
    b = QuantBuilder()
    x = b.input("x", (1, 2, 5, 5), 1 / 64)
    scales = np.array([0.01, 0.02, 0.03])
    y = b.conv(x, rng.integers(-127, 128, (3, 2, 3, 3)), scales, bias=rng.integers(-99, 99, 3))
    b.output("y", y)
    m, report = run(b)
    acc = m.walk("int.conv")[0].results[0].type.quant
    assert acc.axis == 1 and acc.scales == pytest.approx(tuple(scales / 64))
    assert real_diff(report) < 1e-4


def test_input_zero_point_folds_into_bias_and_pads_with_zero_point():
    b = QuantBuilder()
    x = b.input("x", (1, 2, 5, 5), 0.02, zero_point=37, storage=u8)
    w = rng.integers(-127, 128, (3, 2, 3, 3))
    bias = rng.integers(-500, 500, 3)
    y = b.conv(x, w, 0.01, bias=bias, pads=[1, 1, 1, 1])
    b.output("y", y)
    m, report = run(b)
    pad = m.walk("int.pad")[0]
    assert pad.attrs["value"] == 37 and pad.attrs["pads"] == [0, 0, 1, 1, 0, 0, 1, 1]
    conv = m.walk("int.conv")[0]
    assert conv.attrs["pads"] == [0, 0, 0, 0]
    b_new = conv.operands[2].owner.attrs["value"]
    assert np.array_equal(b_new, bias - 37 * w.reshape(3, -1).sum(axis=1))
    assert real_diff(report) < 1e-4


def test_gemm_and_matmul_with_zero_point():
    b = QuantBuilder()
    x = b.input("x", (2, 8), 0.05, zero_point=-3)
    y = b.gemm(x, rng.integers(-127, 128, (4, 8)), np.array([0.01, 0.02, 0.01, 0.03]), bias=rng.integers(-50, 50, 4))
    w2 = b.qconst(rng.integers(-127, 128, (8, 5)), b.qtype(0.02))
    z = b.op("onnx.MatMul", [x, w2])
    b.output("y", y)
    b.output("z", z)
    m, report = run(b)
    assert [o.name for o in m.walk("int.")] == ["int.gemm", "int.matmul", "int.add"]
    assert m.walk("int.gemm")[0].results[0].type.quant.axis == 1
    assert real_diff(report) < 1e-4


def _u8_weights(b, shape, zero_point, axis=None, low=0, high=256):
    w = rng.integers(low, high, shape)
    if axis is None:
        qt = b.qtype(0.02, zero_point=zero_point, storage=u8)
    else:
        n = shape[axis]
        qt = b.qtype(rng.uniform(0.01, 0.03, n), zero_point=np.broadcast_to(zero_point, (n,)), storage=u8, axis=axis)
    return w, b.qconst(w, qt)


def _conv_attrs(k, pads, group=1):
    return {"kernel_shape": [k, k], "pads": pads, "strides": [1, 1], "dilations": [1, 1], "group": group}


def test_uint8_weights_with_zero_point_128_are_int8_weights():
    """onnxruntime's QUInt8 weights (WeightSymmetric=False) centred on 128: w - 128 is an int8 weight, exactly."""
    b = QuantBuilder()
    x = b.input("x", (1, 3, 6, 6), 0.05, zero_point=5)
    _, w = _u8_weights(b, (4, 3, 3, 3), 128)
    b.output("y", b.op("onnx.Conv", [x, w], _conv_attrs(3, [1, 1, 1, 1])))
    m, report = run(b)
    assert names(m) == ["qir.input", "quant.qcast", "int.pad", "int.conv", "quant.dcast", "qir.output"]
    w_new = m.walk("int.conv")[0].operands[1]
    assert str(w_new.type.storage) == "i8" and w_new.type.quant.zero_point == 0
    assert real_diff(report) < 1e-4


@pytest.mark.parametrize("per_channel", [False, True])
def test_weight_zero_point_correction_is_the_input_twice(per_channel):
    """Weights minus zero point needing 9 bits: one conv over [x, x] with weights [e - d | d] (the correction
    d * sum(x) over each window folded in); Gemm and MatMul the same along K."""
    b = QuantBuilder()
    x = b.input("x", (2, 3, 5, 5), 0.05, zero_point=-7)
    _, w = _u8_weights(b, (4, 3, 3, 3), np.array([37, 200, 3, 128]) if per_channel else 37, 0 if per_channel else None)
    b.output("y", b.op("onnx.Conv", [x, w], _conv_attrs(3, [1, 1, 1, 1])))
    a = b.input("a", (2, 6), 0.1, zero_point=3)
    _, wg = _u8_weights(b, (4, 6), 11, 0 if per_channel else None)
    b.output("g", b.op("onnx.Gemm", [a, wg], {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}))
    _, wm = _u8_weights(b, (6, 5), 240, 1 if per_channel else None)
    b.output("mm", b.op("onnx.MatMul", [a, wm]))
    m, report = run(b)
    assert [o.name for o in m.walk("int.")] == ["int.pad", "int.concat", "int.conv", "int.concat", "int.gemm",
                                                "int.concat", "int.matmul", "int.add"]
    conv = m.walk("int.conv")[0]
    assert conv.operands[0].type.shape == (2, 6, 7, 7) and conv.operands[1].type.shape == (4, 6, 3, 3)
    assert str(conv.operands[1].type.storage) == "i8"
    assert m.walk("int.gemm")[0].operands[1].type.shape == (4, 12)
    assert m.walk("int.matmul")[0].operands[1].type.shape == (12, 5)
    assert real_diff(report) < 1e-3


def test_grouped_conv_with_nine_bit_weights_is_an_error_naming_the_node():
    b = QuantBuilder()
    x = b.input("x", (1, 4, 6, 6), 0.05)
    _, w = _u8_weights(b, (4, 1, 3, 3), 40)
    b.op("onnx.Conv", [x, w], _conv_attrs(3, [0, 0, 0, 0], group=4), loc="/dw/Conv")
    with pytest.raises(LoweringError, match=r"node '/dw/Conv' \(onnx.Conv\).*grouped Conv \(group 4\).*"
                                            r"WeightSymmetric=True"):
        DequantPush().run(b.module)


def test_weight_of_255_above_zero_point_0_is_an_error_naming_the_node():
    b = QuantBuilder()
    x = b.input("x", (1, 4), 0.05)
    w = b.qconst(np.array([[255, 0, 3, 7]]), b.qtype(0.1, zero_point=0, storage=u8))
    b.op("onnx.Gemm", [x, w], {"transB": 1}, loc="/fc/Gemm")
    with pytest.raises(LoweringError, match=r"node '/fc/Gemm' \(onnx.Gemm\).*reaches 255"):
        DequantPush().run(b.module)
def test_maxpool_relu_shape_ops_pad_concat():
    b = QuantBuilder()
    x = b.input("x", (1, 2, 6, 6), 0.1, zero_point=5)
    p = b.op("onnx.MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0]})
    r = b.op("onnx.Relu", [p])
    c = b.op("onnx.Clip", [r], {"min": 0.0, "max": 3.0})
    t = b.op("onnx.Transpose", [c], {"perm": [0, 2, 3, 1]})
    f = b.op("onnx.Reshape", [t], {"shape": [1, 18]})
    pd = b.op("onnx.Pad", [f], {"pads": [0, 1, 0, 2], "mode": "constant", "value": 0.0})
    cat = b.op("onnx.Concat", [pd, pd], {"axis": 1})
    b.output("y", cat)
    m, report = run(b)
    assert names(m) == ["qir.input", "quant.qcast", "int.maxpool", "int.clip", "int.clip", "int.transpose",
                        "int.reshape", "int.pad", "int.concat", "quant.dcast", "qir.output"]
    clips = m.walk("int.clip")
    assert (clips[0].attrs["min"], clips[1].attrs["max"]) == (5, 35)
    assert m.walk("int.pad")[0].attrs["value"] == 5
    assert real_diff(report) == 0.0


def test_clip_between_grid_points_is_left_for_requant_fusion():
    b = QuantBuilder()
    x = b.input("x", (1, 8), 0.1)
    c = b.op("onnx.Clip", [x], {"min": -0.25, "max": 0.5})
    b.output("y", c)
    m, _ = run(b)
    assert "onnx.Clip" in names(m)


def test_per_axis_type_follows_flatten():
    b = QuantBuilder()
    x = b.input("x", (1, 3, 4, 4), 1 / 128)
    y = b.conv(x, rng.integers(-127, 128, (5, 3, 4, 4)), np.linspace(0.01, 0.05, 5))
    f = b.op("onnx.Flatten", [y], {"axis": 1})
    b.output("y", f)
    m, report = run(b)
    flat = m.walk("int.flatten")[0]
    assert flat.results[0].type.quant.axis == 1 and flat.results[0].type.shape == (1, 5)
    assert real_diff(report) < 1e-4


def test_quantizer_after_a_flatten_of_the_graph_input_moves_before_it():
    """onnxruntime's quantize_static leaves an MLP's input Flatten float (input -> Flatten -> QuantizeLinear): the
    quantizer moves onto the graph input and the Flatten becomes integer ("operand 0 is not a dequantized tensor"
    before)."""
    from qirc.qir.ir import input_op
    from qirc.qir.types import TensorType, f32
    b = QuantBuilder()
    x = input_op(b.module, "x", TensorType((1, 3, 4, 4), f32))
    flat = b.op("onnx.Flatten", [x], {"axis": 1})
    y = b.gemm(b.quant(flat, 0.05, 3), rng.integers(-127, 128, (5, 48)), 0.01, bias=rng.integers(-50, 50, 5))
    b.output("y", b.quant(y, 0.1))
    before = b.module.clone()
    DequantPush().run(b.module)  # moves the quantizer (new ops wait for the next sweep, as in lower-to-int's loop)
    DequantPush().run(b.module)
    m = b.module
    verify(m)
    report = translation_validate(before, m, samples=3)
    # (the qcast(dcast) pair between identical types left after the flatten is requant-fusion's to drop)
    assert names(m)[:6] == ["qir.input", "quant.qcast", "int.flatten", "quant.dcast", "quant.qcast", "int.gemm"]
    assert m.walk("quant.qcast")[0].operands[0].owner.name == "qir.input"
    assert real_diff(report) < 1e-4
