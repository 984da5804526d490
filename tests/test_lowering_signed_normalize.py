"""signed-normalize: u8 tensors become i8 with zero point z - 128, compensated in every consumer."""
import numpy as np

from qirc.lowering import lower_module
from qirc.lowering.signed_normalize import SignedNormalize
from qirc.lowering.testing import QuantBuilder
from qirc.qir.passes import parse_pipeline, translation_validate
from qirc.qir.types import u8
from qirc.qir.verifier import verify

rng = np.random.default_rng(8)


def net():
    """u8 input (zp 10) -> padded conv -> u8 relu -> maxpool -> add with u8 -> GAP -> gemm."""
    b = QuantBuilder()
    x = b.input("x", (1, 3, 6, 6), 0.02, 10, storage=u8)
    y = b.conv(x, rng.integers(-127, 128, (4, 3, 3, 3)), 0.004, bias=rng.integers(-999, 999, 4), pads=[1, 1, 1, 1])
    y = b.quant(b.op("onnx.Relu", [y]), 0.03, storage=u8)
    p = b.op("onnx.MaxPool", [y], {"kernel_shape": [2, 2], "strides": [2, 2]})
    z = b.conv(y, rng.integers(-127, 128, (4, 4, 3, 3)), 0.01, strides=[2, 2], pads=[1, 1, 1, 1])
    z = b.quant(z, 0.05, 7)
    s = b.quant(b.op("onnx.Add", [p, z]), 0.04, 20, storage=u8)
    g = b.quant(b.op("onnx.GlobalAveragePool", [s]), 0.04, storage=u8)
    f = b.quant(b.op("onnx.Flatten", [g], {"axis": 1}), 0.04, storage=u8)
    b.output("y", b.quant(b.gemm(f, rng.integers(-127, 128, (3, 4)), 0.01, bias=rng.integers(-99, 99, 3)), 0.1))
    return b.module


def no_u8(m):
    return all("u8" not in str(r.type) for op in m.ops() for r in op.results)


def test_quant_level_then_lowering_matches():
    m = net()
    before = m.clone()
    lower_module(m, signed=True)
    verify(m)
    assert no_u8(m)
    assert m.inputs[0].results[0].type.quant.zero_point == 10 - 128
    assert all(op.attrs["signed"] for op in m.walk("int.requant_shift"))
    report = translation_validate(before, m, samples=4)
    assert report[0]["max_step_diff"] <= 2.0 + 1e-4


def test_on_integer_graph_is_exact():
    m = net()
    lower_module(m)
    lowered = m.clone()
    SignedNormalize().run(m)
    verify(m)
    assert no_u8(m)
    # the padded conv reads a shifted tensor: its zero-point padding moves with it
    # the second conv pads the (zero point 0) relu output with zeros: now an explicit pad with -128 and its
    # bias corrected by 128 * sum(w)
    assert sorted(p.attrs["value"] for p in m.walk("int.pad")) == [-128, 10 - 128]
    conv2_before, conv2 = lowered.walk("int.conv")[1], m.walk("int.conv")[1]
    w = conv2.operands[1].owner.attrs["value"].astype(np.int64)
    assert len(conv2_before.operands) == 2  # it had no bias: signed-normalize adds one
    bias_shift = conv2.operands[2].owner.attrs["value"].astype(np.int64)
    assert np.array_equal(bias_shift, 128 * w.reshape(4, -1).sum(axis=1))
    report = translation_validate(lowered, m, samples=4)
    assert report[0]["max_abs_diff"] == 0.0


def test_pipeline_option():
    (p,) = parse_pipeline("lower-to-int{signed-normalize=1}")
    m = net()
    p.run(m)
    assert no_u8(m)
