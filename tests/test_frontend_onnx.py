"""The ONNX frontend on small graphs: which IR ops each form imports to, and interpreter == onnxruntime."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from qirc.frontends import load_model
from qirc.frontends.onnx import import_onnx
from qirc.qir.types import ScalarType, UniformQuantType

from onnx_builders import GraphBuilder, ort_run, qonnx_as_decomposed

from real_models import deepquant  # noqa: E402


def interpret(module, feeds):
    from qirc.qir.interpreter import run
    return run(module, feeds)


def op_names(module):
    return [op.name for op in module.ops()]


def only(module, name):
    ops = module.walk(name)
    assert len(ops) == 1, f"expected one {name}, found {len(ops)}"
    return ops[0]


def random_feeds(model: onnx.ModelProto, seed: int, low=-1.1, high=1.1):
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.uniform(low, high, size=shape).astype(np.float32)
    return feeds


def assert_matches_ort(model: onnx.ModelProto, module=None, reference_model=None, samples=4, atol=1e-6,
                       feeds_list=None):
    """Interpreter on the imported IR equals onnxruntime (optimisations off) on the model, output by output."""
    from qirc.qir.verifier import verify

    module = module if module is not None else import_onnx(model)
    verify(module)
    reference_model = reference_model or model
    feeds_list = feeds_list or [random_feeds(model, seed) for seed in range(samples)]
    for feeds in feeds_list:
        expected = ort_run(reference_model, feeds)
        got = interpret(module, feeds)
        assert list(got) == [o.name for o in model.graph.output]
        for name, ref in expected.items():
            np.testing.assert_allclose(np.asarray(got[name], np.float64), np.asarray(ref, np.float64), rtol=0,
                                       atol=atol, err_msg=f"output {name}")
    return module


# ----- QDQ ----------------------------------------------------------------------------------------------------------
def qdq_conv_model(per_axis=True, opset=13):
    rng = np.random.default_rng(1)
    b = GraphBuilder("qdq_conv")
    x = b.input("x", [1, 3, 8, 8])
    xq = b.qdq(x, scale=1 / 64, zero_point=0, prefix="/in")
    w = rng.normal(0, 0.3, size=(4, 3, 3, 3)).astype(np.float32)
    w_scale = (np.abs(w).reshape(4, -1).max(axis=1) / 127).astype(np.float32)
    if per_axis:
        wq = b.qdq(b.const(w, "w"), scale=w_scale, zero_point=np.zeros(4, np.int8), axis=0, prefix="/w")
    else:
        wq = b.qdq(b.const(w, "w"), scale=w_scale.max(), zero_point=0, prefix="/w")
    bias = b.dequantize_linear(rng.integers(-500, 500, size=4).astype(np.int32),
                               (1 / 64) * w_scale if per_axis else np.float32(1 / 64 * w_scale.max()),
                               axis=0 if per_axis else None, prefix="/b")
    y = b.node("Conv", [xq, wq, bias], name="/conv/Conv", pads=[1, 1, 1, 1])
    y = b.node("Relu", [y], name="/relu/Relu")
    b.output(b.qdq(y, scale=1 / 32, zero_point=0, dtype=np.uint8, prefix="/out"), "y")
    return b.build(opset)


@pytest.mark.parametrize("opset", [13, 19, 21])
def test_qdq_per_axis_conv(opset):
    model = qdq_conv_model(per_axis=True, opset=opset)
    module = assert_matches_ort(model, atol=1e-6)
    assert op_names(module).count("quant.qcast") == 2  # the input and the output activation
    for op in module.walk("quant.qcast"):
        assert op.attrs["rounding"] == "round_add"
    conv = only(module, "onnx.Conv")
    w_def = conv.operands[1].owner.operands[0].owner
    assert w_def.name == "qir.const"
    w_type = w_def.results[0].type.element
    assert isinstance(w_type, UniformQuantType) and w_type.axis == 0 and len(w_type.scales) == 4
    assert w_def.attrs["value"].dtype == np.int8
    b_type = conv.operands[2].owner.operands[0].type.element
    assert b_type.storage == ScalarType("i32") and b_type.axis == 0
    out_q = module.outputs[0].operands[0].owner.operands[0].type.element
    assert out_q.storage == ScalarType("u8") and out_q.scale == pytest.approx(1 / 32)


def test_qdq_per_tensor_conv():
    model = qdq_conv_model(per_axis=False)
    module = assert_matches_ort(model)
    w_type = only(module, "onnx.Conv").operands[1].owner.operands[0].type.element
    assert not w_type.is_per_axis


def test_qdq_narrow_and_sub8bit_via_clip():
    b = GraphBuilder("narrow")
    x = b.input("x", [2, 16])
    y = b.qdq(x, scale=1 / 100, zero_point=0, clip=(-127, 127), prefix="/narrow")
    y = b.qdq(y, scale=1 / 8, zero_point=0, clip=(-8, 7), prefix="/int4")
    y = b.qdq(y, scale=1 / 16, zero_point=0, dtype=np.uint8, clip=(0, 15), prefix="/uint4")
    b.output(y, "y")
    model = b.build(13)
    module = assert_matches_ort(model, feeds_list=[random_feeds(model, s, -2, 2) for s in range(3)])
    types = [str(op.results[0].type.element) for op in module.walk("quant.qcast")]
    assert types == ["!quant.uniform<i8<-127:127>:f32, 0.009999999776482582:0>",
                     "!quant.uniform<i8<-8:7>:f32, 0.125:0>",
                     "!quant.uniform<u8<0:15>:f32, 0.0625:0>"]


@pytest.mark.parametrize("dtype, storage", [(np.int16, "i16"), (np.uint16, "u16")])
def test_qdq_16_bit_opset_21(dtype, storage):
    b = GraphBuilder("qdq16")
    x = b.input("x", [2, 32])
    zp = 100 if dtype == np.uint16 else -7
    y = b.qdq(x, 1 / 4096, zp, dtype=dtype, prefix="/q")
    b.output(b.node("Add", [y, y], name="/twice/Add"), "y")  # one quantizer, one dequantizer, used twice
    module = assert_matches_ort(b.build(21))
    qtype = only(module, "quant.qcast").results[0].type.element
    assert str(qtype) == f"!quant.uniform<{storage}:f32, 0.000244140625:{zp}>"
    assert len(module.walk("quant.dcast")) == 1


# ----- decomposed (DeepQuant) ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bounds, expected", [
    ((-128, 127), "i8"), ((0, 255), "u8"), ((-127, 127), "i8<-127:127>"),
    ((-2 ** 31, 2 ** 31 - 1), "i32"), ((0, 15), "u8<0:15>"), ((-8, 7), "i8<-8:7>")])
def test_decomposed_storage_from_clip_bounds(bounds, expected):
    b = GraphBuilder("bounds")
    x = b.input("x", [1, 64])
    b.output(b.quant(x, 1 / 16, 0.0, *bounds, prefix="/q"), "y")
    model = b.build(13)
    module = assert_matches_ort(model, feeds_list=[random_feeds(model, s, -20, 20) for s in range(2)])
    qcast = only(module, "quant.qcast")
    assert str(qcast.results[0].type.element) == f"!quant.uniform<{expected}:f32, 0.0625:0>"
    assert qcast.attrs["rounding"] == "add_round"
    assert qcast.loc == "/q/Clip"
    assert only(module, "quant.dcast").loc == "/q_dequant/Mul"


def test_asymmetric_zero_point_rounding_orders():
    """Zero point 101 (odd): the two rounding orders differ on exact ties, and each import keeps its file's order."""
    s = np.float32(1 / 64)
    b = GraphBuilder("asym")
    x = b.input("x", [1, 256])
    y_dec = b.quant(x, s, 101.0, 0, 255, prefix="/dec")
    y_qdq = b.qdq(x, s, zero_point=101, dtype=np.uint8, prefix="/qdq")
    b.output(y_dec, "dec")
    b.output(y_qdq, "qdq")
    model = b.build(13)
    ties = ((np.arange(256, dtype=np.float32) - 128) + np.float32(0.5)) * s  # every value an exact tie
    feeds = [{"x": ties.reshape(1, 256)}, random_feeds(model, 0, -2, 2)]
    module = assert_matches_ort(model, feeds_list=feeds, atol=0)
    roundings = {op.loc: op.attrs["rounding"] for op in module.walk("quant.qcast")}
    assert roundings == {"/dec/Clip": "add_round", "/qdq/QuantizeLinear": "round_add"}
    out = interpret(module, feeds[0])
    assert np.any(out["dec"] != out["qdq"])  # the orders really differ on ties, and both match onnxruntime


def test_quantized_constant_folds_to_stored_integers():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, size=(8, 4)).astype(np.float32)
    scale = np.float32(0.0173)
    b = GraphBuilder("wq")
    x = b.input("x", [2, 8])
    xq = b.quant(x, 1 / 128, 0.0, prefix="/x")
    wq = b.quant(b.const(w, "w"), scale, 0.0, -127, 127, prefix="/w")
    b.output(b.quant(b.node("MatMul", [xq, wq], name="/mm/MatMul"), 1 / 16, 0.0, prefix="/y"), "y")
    model = b.build(13)
    module = assert_matches_ort(model)
    const = [op for op in module.walk("qir.const") if op.results[0].type.is_quant]
    assert len(const) == 1 and const[0].loc == "/w/Clip"
    stored = const[0].attrs["value"]
    expected = np.clip(np.rint(w / scale + np.float32(0)), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(stored, expected)
    assert str(const[0].results[0].type.element) == f"!quant.uniform<i8<-127:127>:f32, {float(scale)!r}:0>"
    assert "quant.qcast" not in [op.name for op in module.ops() if op.loc.startswith("/w/")]


def test_per_channel_decomposed_weight_quantizer():
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.5, size=(6, 2, 3, 3)).astype(np.float32)
    scales = (np.abs(w).reshape(6, -1).max(axis=1) / 127).astype(np.float32).reshape(6, 1, 1, 1)
    b = GraphBuilder("pc")
    x = b.input("x", [1, 2, 6, 6])
    xq = b.quant(x, 1 / 128, 0.0, prefix="/x")
    wq = b.quant(b.const(w, "w"), scales, 0.0, -127, 127, prefix="/w")
    y = b.node("Conv", [xq, wq], name="/conv/Conv", strides=[2, 2])
    b.output(b.quant(y, 1 / 32, 0.0, prefix="/y"), "y")
    module = assert_matches_ort(b.build(13), atol=1e-6)
    w_type = only(module, "onnx.Conv").operands[1].owner.operands[0].type.element
    assert w_type.axis == 0 and np.allclose(w_type.scales, scales.reshape(-1))
    assert only(module, "onnx.Conv").attrs == {"kernel_shape": [3, 3], "pads": [0, 0, 0, 0], "strides": [2, 2],
                                               "dilations": [1, 1], "group": 1}


# ----- QONNX ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("domain", ["qonnx.custom_op.general", "finn.custom_op.general"])
def test_qonnx_quant(domain):
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.4, size=(5, 12)).astype(np.float32)
    b = GraphBuilder("qonnx")
    x = b.input("x", [3, 12])
    xq = b.qonnx(x, 1 / 16, 0.0, bits=4, signed=True, narrow=False, domain=domain, prefix="/x")
    w_scale = (np.abs(w).max(axis=1, keepdims=True) / 7).astype(np.float32)
    wq = b.qonnx(b.const(w, "w"), w_scale, 0.0, bits=4, signed=True, narrow=True, domain=domain, prefix="/w")
    y = b.node("Gemm", [xq, wq], name="/fc/Gemm", transB=1)
    y = b.qonnx(y, 1 / 8, 3.0, bits=8, signed=False, domain=domain, prefix="/y")
    b.output(y, "y")
    model = b.build(13)
    if domain not in [o.domain for o in model.opset_import]:
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    module = assert_matches_ort(model, reference_model=qonnx_as_decomposed(model), atol=1e-6)
    types = [str(op.results[0].type.element) for op in module.walk("quant.qcast")]
    assert types == ["!quant.uniform<i8<-8:7>:f32, 0.0625:0>", "!quant.uniform<u8:f32, 0.125:3>"]
    assert all(op.attrs["rounding"] == "add_round" for op in module.walk("quant.qcast"))
    w_type = only(module, "onnx.Gemm").operands[1].owner.operands[0].type.element
    assert (w_type.storage_min, w_type.storage_max, w_type.axis) == (-7, 7, 0)
    assert only(module, "onnx.Gemm").attrs == {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}


# ----- float ops ------------------------------------------------------------------------------------------------------
def conv_bn_model(quantized_weights: bool):
    rng = np.random.default_rng(6)
    b = GraphBuilder("bn")
    x = b.input("x", [1, 3, 6, 6])
    w = b.const(rng.normal(0, 0.5, size=(4, 3, 3, 3)).astype(np.float32), "w")
    if quantized_weights:
        w = b.quant(w, 0.01, 0.0, prefix="/w")
    y = b.node("Conv", [x, w, b.const(rng.normal(size=4).astype(np.float32))], name="/conv/Conv",
               pads=[1, 1, 1, 1])
    bn = [b.const(v.astype(np.float32)) for v in (rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4),
                                                   rng.uniform(0.5, 2, 4))]
    y = b.node("BatchNormalization", [y] + bn, name="/bn/BatchNormalization", epsilon=1e-3)
    b.output(y, "y")
    return b.build(13)


def test_batchnorm_folds_into_float_conv():
    module = assert_matches_ort(conv_bn_model(False), atol=2e-5)
    assert "onnx.BatchNormalization" not in op_names(module)
    assert op_names(module).count("onnx.Conv") == 1


def test_batchnorm_kept_after_quantized_conv():
    module = assert_matches_ort(conv_bn_model(True), atol=1e-5)
    bn = only(module, "onnx.BatchNormalization")
    assert bn.attrs == {"epsilon": pytest.approx(1e-3)} and bn.operands[0].owner.name == "onnx.Conv"


def test_identity_and_dropout_disappear():
    b = GraphBuilder("ident")
    x = b.input("x", [2, 8])
    y = b.node("Identity", [x], name="/id/Identity")
    y = b.node("Dropout", [y], name="/drop/Dropout")
    y = b.node("Relu", [y], name="/relu/Relu")
    b.output(y, "y")
    module = assert_matches_ort(b.build(13))
    assert op_names(module) == ["qir.input", "onnx.Relu", "qir.output"]


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_mean_axes_attribute_or_input(opset):
    b = GraphBuilder("rm")
    x = b.input("x", [1, 4, 5, 5])
    xq = b.quant(x, 1 / 64, 0.0, prefix="/x")
    if opset < 18:
        y = b.node("ReduceMean", [xq], name="/gap/ReduceMean", axes=[-2, -1], keepdims=1)
    else:
        y = b.node("ReduceMean", [xq, b.const(np.array([2, -1], np.int64))], name="/gap/ReduceMean", keepdims=1)
    b.output(b.node("Flatten", [y], name="/flat/Flatten"), "y")
    module = assert_matches_ort(b.build(opset))
    assert only(module, "onnx.ReduceMean").attrs == {"axes": [2, 3], "keepdims": 1}
    assert only(module, "onnx.Flatten").attrs == {"axis": 1}


def test_residual_add_and_pools():
    b = GraphBuilder("res")
    x = b.input("x", [1, 4, 8, 8])
    a = b.quant(x, 1 / 64, 0.0, prefix="/a")
    m = b.node("MaxPool", [a], name="/mp/MaxPool", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    m = b.quant(m, 1 / 64, 0.0, prefix="/m")
    s = b.node("Add", [a, m], name="/add/Add")
    s = b.quant(s, 1 / 32, 0.0, prefix="/s")
    p = b.node("AveragePool", [s], name="/ap/AveragePool", kernel_shape=[2, 2], strides=[2, 2])
    p2 = b.node("AveragePool", [s], name="/ap2/AveragePool", kernel_shape=[3, 3], auto_pad="SAME_UPPER",
                count_include_pad=1)
    b.output(b.quant(p, 1 / 32, 0.0, prefix="/p"), "y")
    b.output(p2, "z")
    module = assert_matches_ort(b.build(13), atol=1e-6)
    add = only(module, "onnx.Add")
    assert {v.owner.name for v in add.operands} == {"quant.dcast"}
    assert only(module, "onnx.MaxPool").attrs == {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1],
                                                  "dilations": [1, 1], "ceil_mode": 0}
    pools = {op.loc: op.attrs for op in module.walk("onnx.AveragePool")}
    assert pools["/ap/AveragePool"] == {"kernel_shape": [2, 2], "pads": [0, 0, 0, 0], "strides": [2, 2],
                                        "ceil_mode": 0, "count_include_pad": 0}
    assert pools["/ap2/AveragePool"]["pads"] == [1, 1, 1, 1]
    assert pools["/ap2/AveragePool"]["count_include_pad"] == 1


def test_constant_inputs_become_attributes():
    b = GraphBuilder("attrs")
    x = b.input("x", [2, 3, 4])
    y = b.node("Pad", [x, b.const(np.array([0, 1, 0, 0, 1, 2], np.int64)), b.const(np.float32(0.5))],
               name="/pad/Pad")
    y = b.node("Clip", [y, b.const(np.float32(-0.25)), b.const(np.float32(0.75))], name="/clip/Clip")
    y = b.node("Reshape", [y, b.const(np.array([0, -1], np.int64))], name="/reshape/Reshape")
    y = b.node("Unsqueeze", [y, b.const(np.array([1], np.int64))], name="/unsq/Unsqueeze")
    y = b.node("Transpose", [y], name="/tr/Transpose")
    b.output(y, "y")
    module = assert_matches_ort(b.build(13))
    assert only(module, "onnx.Pad").attrs == {"pads": [0, 1, 0, 0, 1, 2], "mode": "constant", "value": 0.5}
    assert only(module, "onnx.Clip").attrs == {"min": -0.25, "max": 0.75}
    assert only(module, "onnx.Reshape").attrs == {"shape": [2, 30]}
    assert only(module, "onnx.Unsqueeze").attrs == {"axes": [1]}
    assert only(module, "onnx.Transpose").attrs == {"perm": [2, 1, 0]}


def test_constant_cast_chains_fold_and_initializer_inputs_are_constants():
    b = GraphBuilder("fold")
    x = b.input("x", [1, 8])
    w = b.const(np.linspace(-1, 1, 8).astype(np.float32), "w")
    b.inputs.append(onnx.helper.make_tensor_value_info("w", TensorProto.FLOAT, [8]))  # old exporter habit
    k = b.node("Cast", [b.constant_node(np.int64(3))], name="/cast/Cast", to=TensorProto.FLOAT)
    y = b.node("Mul", [b.node("Add", [x, w], name="/add/Add"), k], name="/mul/Mul")
    b.output(y, "y")
    model = b.build(13, check=False)
    module = assert_matches_ort(model)
    assert module.input_names() == ["x"]
    consts = [op.attrs["value"] for op in module.walk("qir.const")]
    assert any(np.array_equal(c, np.float32(3.0)) for c in consts)
    assert "Cast" not in str(op_names(module))


def test_partial_quantizer_patterns_stay_float_ops():
    """Div by a constant that is not a quantizer (input normalisation), and a Round not followed by a Clip, import as
    the float ops they are; two inputs and two outputs keep their names and order."""
    b = GraphBuilder("partial")
    x = b.input("x", [1, 8])
    z = b.input("z", [1, 8])
    norm = b.node("Div", [x, b.constant_node(np.float32(255.0))], name="/norm/Div")
    rounded = b.node("Round", [b.node("Div", [z, b.constant_node(np.float32(0.25))], name="/r/Div")],
                     name="/r/Round")
    b.output(b.node("Add", [norm, rounded], name="/sum/Add"), "sum")
    b.output(norm, "norm")
    model = b.build(13)
    module = assert_matches_ort(model, feeds_list=[random_feeds(model, s, -300, 300) for s in range(2)])
    assert module.input_names() == ["x", "z"] and module.output_names() == ["sum", "norm"]
    assert sorted(op_names(module)) == sorted(["qir.input", "qir.input", "qir.const", "qir.const", "onnx.Div",
                                               "onnx.Div", "onnx.Round", "onnx.Add", "qir.output", "qir.output"])
    assert not module.walk("quant.")


def test_import_from_model_proto_with_name():
    b = GraphBuilder("proto graph")
    b.output(b.quant(b.input("x", [1, 4]), 0.5, 0.0, prefix="/q"), "y")
    model = b.build(13)
    assert import_onnx(model).name == "proto_graph"
    assert import_onnx(model, name="net").name == "net"


# ----- DeepQuant dequant_moved form -----------------------------------------------------------------------------------
def test_dequant_moved_conv_becomes_int_conv():
    path = deepquant("ResNet8", "dequant_moved.onnx")
    module = import_onnx(path)
    convs = module.walk("int.conv")
    assert len(convs) == 9 and len(module.walk("int.gemm")) == 1 and not module.walk("onnx.Conv")
    first = next(op for op in convs if op.loc == "/wrappedInnerForwardImpl/Conv")
    x_type, w_type = first.operands[0].type.element, first.operands[1].type.element
    acc_type = first.results[0].type.element
    assert first.operands[0].owner.name == "quant.qcast" and x_type.scale == 0.0078125
    assert first.operands[1].owner.name == "qir.const" and w_type.storage == ScalarType("i8")
    assert acc_type.storage == ScalarType("i32")
    # the file multiplies conv(x_float, q_w) + q_b by s_x * s_w, so the accumulator's scale is s_x * (s_x * s_w)
    unified = np.float32(1.183482e-05)
    assert acc_type.scale == pytest.approx(0.0078125 * float(unified), rel=1e-6)
    assert [u.name for u in first.results[0].users] == ["quant.dcast"]


# ----- plumbing -------------------------------------------------------------------------------------------------------
def test_load_model_dispatches_on_extension(tmp_path):
    b = GraphBuilder("tiny")
    b.output(b.quant(b.input("x", [1, 4]), 0.5, 0.0, prefix="/q"), "y")
    path = tmp_path / "tiny.onnx"
    onnx.save(b.build(13), path)
    module = load_model(path)
    assert module.name == "tiny" and module.input_names() == ["x"] and module.output_names() == ["y"]
    printer = pytest.importorskip("qirc.qir.printer")
    text = printer.print_module(module)
    qir_path = tmp_path / "tiny.qir"
    qir_path.write_text(text)
    assert printer.print_module(load_model(qir_path)) == text


def test_importing_onnx_does_not_import_torch():
    path = deepquant("ResNet8")
    code = ("import sys; from qirc.frontends.onnx import import_onnx; "
            f"import_onnx({str(path)!r}); assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ----- real Brevitas exports ------------------------------------------------------------------------------------------
@pytest.mark.brevitas
@pytest.mark.parametrize("form", ["qonnx", "qcdq"])
def test_brevitas_exports(tmp_path, form):
    """A 4-bit Brevitas model exported by export_qonnx / export_onnx_qcdq (TorchScript exporter) imports, keeps its
    narrow and sub-8-bit ranges, and matches onnxruntime (QONNX through its decomposed equivalent)."""
    torch = pytest.importorskip("torch")
    qnn = pytest.importorskip("brevitas.nn")
    from brevitas.export import export_onnx_qcdq, export_qonnx

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(bit_width=4, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(3, 4, 3, weight_bit_width=4, bias=False, padding=1)
            self.relu = qnn.QuantReLU(bit_width=4)

        def forward(self, x):
            return self.relu(self.conv(self.inp(x)))

    net = Net().eval()
    example = torch.randn(1, 3, 8, 8)
    path = tmp_path / f"{form}.onnx"
    export = export_qonnx if form == "qonnx" else export_onnx_qcdq
    export(net, example, export_path=str(path), dynamo=False)
    model = onnx.load(path)
    reference = qonnx_as_decomposed(model) if form == "qonnx" else model
    module = assert_matches_ort(model, reference_model=reference, atol=1e-6,
                                feeds_list=[random_feeds(model, s, -2, 2) for s in range(3)])
    acts = [op.results[0].type.element for op in module.walk("quant.qcast")]
    assert [(t.storage_min, t.storage_max) for t in acts] == [(-8, 7), (0, 15)]
    (weights,) = [op.results[0].type.element for op in module.walk("qir.const") if op.results[0].type.is_quant]
    assert (weights.storage_min, weights.storage_max) == (-7, 7)
    expected_rounding = "add_round" if form == "qonnx" else "round_add"
    assert {op.attrs["rounding"] for op in module.walk("quant.qcast")} == {expected_rounding}
    with torch.no_grad():
        brevitas_out = net(torch.from_numpy(random_feeds(model, 0, -2, 2)[module.input_names()[0]])).numpy()
    out = interpret(module, random_feeds(model, 0, -2, 2))[module.output_names()[0]]
    assert np.abs(out - brevitas_out).max() <= acts[-1].scale + 1e-6  # within one output step of Brevitas itself


@pytest.mark.parametrize("opset,channels,sizes,expected", [(13, 6, None, [2, 2, 2]), (13, 7, [1, 4, 2], [1, 4, 2]),
                                                       (18, 7, None, [3, 3, 1])])
def test_split_is_one_slice_per_output_and_matches_onnxruntime(opset, channels, sizes, expected):
    # torch.split / torch.chunk export ONNX Split: equal parts without sizes (opset 18: num_outputs, the last part
    # smaller), else the `split` input
    from qirc.qir import interpreter

    b = GraphBuilder("split")
    x = b.qdq(b.input("x", [1, channels, 3, 3]), 0.05, 0, prefix="/in")
    inputs = [x] + ([b.const(np.array(sizes, np.int64), "sizes")] if sizes else [])
    attrs = {"num_outputs": 3} if opset >= 18 else {}
    outs = [f"part{i}" for i in range(3)]
    b.node("Split", inputs, name="/split/Split", outputs=outs, axis=1, **attrs)
    for i, o in enumerate(outs):
        b.output(b.qdq(o, 0.05, 0, prefix=f"/out{i}"), f"y{i}")
    model = b.build(opset=opset, check=False)
    module = import_onnx(model)
    assert [s.attrs["ends"][0] - s.attrs["starts"][0] for s in module.walk("onnx.Slice")] == expected
    x_in = np.random.default_rng(0).standard_normal((1, channels, 3, 3)).astype(np.float32)
    got = interpreter.run(module, {"x": x_in})
    ref = ort_run(model, {"x": x_in})
    for i in range(3):
        np.testing.assert_array_equal(got[f"y{i}"], ref[f"y{i}"])
