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


def test_nonzero_weight_zero_point_is_an_error_naming_the_node():
    b = QuantBuilder()
    x = b.input("x", (1, 4), 0.05)
    w = b.qconst(rng.integers(-127, 128, (3, 4)), b.qtype(0.1, zero_point=2))
    b.op("onnx.Gemm", [x, w], {"transB": 1}, loc="/fc/Gemm")
    with pytest.raises(LoweringError, match=r"node '/fc/Gemm' \(onnx.Gemm\).*non-zero zero point"):
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
