"""QOperator ONNX (QLinearConv, QLinearMatMul, com.microsoft QGemm / QLinearAdd / QLinearConcat /
QLinearGlobalAveragePool, ...) is read as QDQ: each QLinear op becomes dequantize -> float op -> quantize
(qirc/frontends/onnx/qoperator.py), and dynamic quantization is refused with one line.

The graphs are written by hand with the ops and input orders onnxruntime's QOperator quantizer produces; onnxruntime
(optimisations off) on the QOperator file is the reference for the rewrite, the imported module and the compiled
graph.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_builders import GraphBuilder, ort_run
from qirc.frontends.onnx import import_onnx
from qirc.frontends.onnx.qoperator import qoperator_to_qdq
from qirc.qir import interpreter
from qirc.qir.diagnostics import FrontendError

MS = "com.microsoft"
RNG = np.random.default_rng(0)


def _conv_gemm_model() -> onnx.ModelProto:
    """Q -> QLinearConv (per-channel int8 weights, int32 bias) -> MaxPool and Flatten on uint8 -> com.microsoft
    QGemm (bias, alpha) -> com.microsoft DequantizeLinear."""
    b = GraphBuilder("qop_conv_gemm")
    x = b.input("x", [1, 3, 8, 8])
    xs, xz = b.const(np.float32(0.04), "xs"), b.const(np.uint8(128), "xz")
    xq = b.node("QuantizeLinear", [x, xs, xz], name="/in/QuantizeLinear")
    w = b.const(RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "w")
    ws = b.const(np.array([0.004, 0.006, 0.003, 0.005], np.float32), "ws")
    wz = b.const(np.zeros(4, np.int8), "wz")
    bias = b.const(RNG.integers(-2000, 2000, 4).astype(np.int32), "bias")
    cs, cz = b.const(np.float32(0.05), "cs"), b.const(np.uint8(0), "cz")
    c = b.node("QLinearConv", [xq, xs, xz, w, ws, wz, cs, cz, bias], name="/conv/Conv_quant", pads=[1, 1, 1, 1])
    p = b.node("MaxPool", [c], name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    f = b.node("Flatten", [p], name="/flatten/Flatten", axis=1)
    gw = b.const(RNG.integers(-127, 128, (64, 5)).astype(np.int8), "gw")
    gws, gwz = b.const(np.float32(0.003), "gws"), b.const(np.int8(0), "gwz")
    gb = b.const(RNG.integers(-3000, 3000, 5).astype(np.int32), "gb")
    ys, yz = b.const(np.float32(0.08), "ys"), b.const(np.uint8(100), "yz")
    g = b.node("QGemm", [f, cs, cz, gw, gws, gwz, gb, ys, yz], name="/fc/Gemm_quant", domain=MS, alpha=1.0)
    y = b.node("DequantizeLinear", [g, ys, yz], name="/out/DequantizeLinear", domain=MS)
    b.output(y, "y")
    return b.build(13, check=False)


def _branches_model() -> onnx.ModelProto:
    """Two QLinearConv branches -> com.microsoft QLinearConcat -> QLinearGlobalAveragePool -> QLinearAdd with a
    third branch -> Flatten -> QLinearMatMul (per-column int8 weights) -> DequantizeLinear, in int8."""
    b = GraphBuilder("qop_branches")
    x = b.input("x", [1, 2, 6, 6])
    xs, xz = b.const(np.float32(0.03), "xs"), b.const(np.int8(-3), "xz")
    xq = b.node("QuantizeLinear", [x, xs, xz], name="/in/QuantizeLinear")
    outs = []
    for i, (k, scale) in enumerate(((1, 0.04), (3, 0.06))):
        w = b.const(RNG.integers(-127, 128, (3, 2, k, k)).astype(np.int8), f"w{i}")
        ws, wz = b.const(np.float32(0.01), f"ws{i}"), b.const(np.int8(0), f"wz{i}")
        cs, cz = b.const(np.float32(scale), f"cs{i}"), b.const(np.int8(i), f"cz{i}")
        outs.append((b.node("QLinearConv", [xq, xs, xz, w, ws, wz, cs, cz], name=f"/b{i}/Conv_quant",
                            pads=[k // 2] * 4), cs, cz))
    ks, kz = b.const(np.float32(0.05), "ks"), b.const(np.int8(2), "kz")
    inputs = [ks, kz]
    for t, s, z in outs:
        inputs += [t, s, z]
    cat = b.node("QLinearConcat", inputs, name="/cat/Concat_quant", domain=MS, axis=1)
    gs, gz = b.const(np.float32(0.02), "gs"), b.const(np.int8(-1), "gz")
    gap = b.node("QLinearGlobalAveragePool", [cat, ks, kz, gs, gz], name="/gap/GlobalAveragePool_quant",
                 domain=MS, channels_last=0)
    # the sum is requantized at twice the scale and the head's output step is about its gain: a one-step flip
    # at a rounding tie (the pool averages in a different order in onnxruntime) stays one step
    as_, az = b.const(np.float32(0.04), "as"), b.const(np.int8(0), "az")
    add = b.node("QLinearAdd", [gap, gs, gz, gap, gs, gz, as_, az], name="/add/Add_quant", domain=MS)
    f = b.node("Flatten", [add], name="/flatten/Flatten", axis=1)
    mw = b.const(RNG.integers(-127, 128, (6, 4)).astype(np.int8), "mw")
    mws = b.const(np.array([0.01, 0.02, 0.015, 0.012], np.float32), "mws")
    mwz = b.const(np.zeros(4, np.int8), "mwz")
    ys, yz = b.const(np.float32(0.3), "ys"), b.const(np.int8(0), "yz")
    m = b.node("QLinearMatMul", [f, as_, az, mw, mws, mwz, ys, yz], name="/fc/MatMul_quant")
    y = b.node("DequantizeLinear", [m, ys, yz], name="/out/DequantizeLinear")
    b.output(y, "y")
    model = b.build(13, check=False)
    model.opset_import.append(helper.make_opsetid(MS, 1))
    return model


MODELS = {"conv_gemm": (_conv_gemm_model, 0.08), "branches": (_branches_model, 0.3)}


def _samples(model, n=8):
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return [(RNG.standard_normal(shape) * 1.5).astype(np.float32) for _ in range(n)]


def _with_ms_opset(model):
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_the_rewrite_spells_every_qlinear_op_as_dequantize_float_op_quantize(name):
    build, step = MODELS[name]
    model = _with_ms_opset(build())
    rewritten = qoperator_to_qdq(model, "m.onnx")
    ops = [n.op_type for n in rewritten.graph.node]
    assert not [op for op in ops if op.startswith("QLinear") or op == "QGemm"]
    assert all(n.domain == "" for n in rewritten.graph.node)
    if name == "conv_gemm":
        assert ops == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "DequantizeLinear", "Conv",
                       "QuantizeLinear", "DequantizeLinear", "MaxPool", "QuantizeLinear", "DequantizeLinear",
                       "Flatten", "QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "DequantizeLinear",
                       "Gemm", "QuantizeLinear", "DequantizeLinear", "Identity"]
        # the float op keeps the QLinear node's name; the bias is dequantized at input scale x weight scale
        conv = next(n for n in rewritten.graph.node if n.op_type == "Conv")
        assert conv.name == "/conv/Conv_quant"
    for x in _samples(model):
        expected = ort_run(model, {"x": x})["y"]
        got = ort_run(rewritten, {"x": x})["y"]
        # both round the same real value; float32 summation order may flip a rounding tie by one step
        assert np.abs(got - expected).max() <= step * 1.001


@pytest.mark.parametrize("name", list(MODELS))
def test_imported_qoperator_model_matches_onnxruntime(name):
    build, step = MODELS[name]
    model = _with_ms_opset(build())
    module = import_onnx(model)
    names = {op.name for op in module.ops()}
    assert {"quant.qcast", "quant.dcast"} <= names
    mismatched = 0
    for x in _samples(model):
        expected = ort_run(model, {"x": x})["y"]
        got = interpreter.run(module, {"x": x})["y"]
        diff = np.abs(got - expected) / step
        assert diff.max() <= 1.001
        mismatched += int(np.count_nonzero(diff > 1e-3))
    assert mismatched <= 2


def test_qoperator_model_compiles_and_the_device_graph_matches_onnxruntime(tmp_path):
    from qirc.backends.deeploy.vectors import quantize_samples
    from qirc.driver import compile_model
    from qirc.frontends.deeploy import import_deeploy_onnx
    from qirc.qir.batch import run_samples

    model = _with_ms_opset(_conv_gemm_model())
    path = tmp_path / "qop.onnx"
    onnx.save(model, str(path))
    summary = compile_model(path, "deeploy-generic", tmp_path / "out", accuracy_samples=2)
    quant = import_onnx(str(path))
    samples = _samples(model)
    ints = quantize_samples(quant, summary.module, [{"x": x} for x in samples])
    device = import_deeploy_onnx(str(tmp_path / "out" / "network.onnx"))
    outs = run_samples(device, [list(s.values()) for s in ints])
    for x, o in zip(samples, outs):
        expected = ort_run(model, {"x": x})["y"]
        got = (np.asarray(next(iter(o.values())), np.float64) - 100) * 0.08
        assert np.abs(got - expected).max() / 0.08 <= 1.001


def test_channels_last_pooling_is_refused_naming_the_node():
    b = GraphBuilder("nhwc")
    x = b.input("x", [1, 4, 4, 2])
    s, z = b.const(np.float32(0.1), "s"), b.const(np.uint8(0), "z")
    q = b.node("QuantizeLinear", [x, s, z], name="/q/QuantizeLinear")
    g = b.node("QLinearGlobalAveragePool", [q, s, z, s, z], name="/gap_quant", domain=MS, channels_last=1)
    b.output(b.node("DequantizeLinear", [g, s, z], name="/dq"), "y")
    with pytest.raises(FrontendError) as err:
        import_onnx(_with_ms_opset(b.build(13, check=False)))
    msg = str(err.value)
    assert "\n" not in msg and "node '/gap_quant'" in msg and "channels_last=1" in msg


@pytest.mark.parametrize("op", ["DynamicQuantizeLinear", "MatMulInteger"])
def test_dynamic_quantization_is_refused_with_one_line(op):
    b = GraphBuilder("dynamic")
    x = b.input("x", [1, 8])
    if op == "DynamicQuantizeLinear":
        y = b.node("DynamicQuantizeLinear", [x], name="/dq/DynamicQuantizeLinear",
                   outputs=["xq", "xs", "xz"])
        y = b.node("DequantizeLinear", ["xq", "xs", "xz"], name="/dq/DequantizeLinear")
    else:
        xi = b.node("Cast", [x], name="/cast", to=TensorProto.UINT8)
        w = b.const(np.ones((8, 2), np.uint8), "w")
        y = b.node("MatMulInteger", [xi, w], name="/fc/MatMulInteger")
        y = b.node("Cast", [y], name="/cast_back", to=TensorProto.FLOAT)
    b.output(y, "y")
    with pytest.raises(FrontendError) as err:
        import_onnx(b.build(13, check=False))
    msg = str(err.value)
    assert "\n" not in msg and "dynamic quantization" in msg and "computed at run time" in msg
    assert ("node '/dq/DynamicQuantizeLinear'" if op == "DynamicQuantizeLinear" else "node '/fc/MatMulInteger'") \
        in msg
    assert "quantize_static" in msg
