"""A transformer encoder block through the whole compiler to Deeploy: the iSoftmax / iLayerNorm / iGELU nodes and
their attribute types, the activation MatMuls, what Siracusa refuses, the Deeploy reader, and the per-kernel
accuracy figures in qirc.json.

(The folder `qirc` writes for this block was run in Deeploy's Generic platform: Errors: 0; see
docs/targets.md.  The tests here do not need Deeploy.)"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qirc.backends.deeploy.emit import emit_onnx
from qirc.backends.deeploy.legalize import legalize
from qirc.driver import compile_model
from qirc.frontends.deeploy import import_deeploy_onnx
from qirc.lowering import lower_module
from qirc.lowering.approximations import approximation_report
from qirc.lowering.testing import QuantBuilder
from qirc.qir import interpreter
from qirc.qir.diagnostics import BackendError, QircError
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.printer import print_module
from qirc.qir.types import TensorType, UniformQuantType, f32, i8, i32, u8

from test_deeploy_structure import deeploy_structure_problems

S, D, H = 4, 8, 2


def encoder_block(layernorm: bool = True, seed: int = 0) -> Module:
    """A pre-norm encoder block at quant level: LN -> Q/K/V (1/sqrt(d) before the query quantizer) -> heads ->
    softmax(QK^T) V -> out-proj -> residual -> LN -> MLP with GELU -> residual."""
    rng = np.random.default_rng(seed)
    b = QuantBuilder("block")

    def fc(v):
        v = np.asarray(v, np.float32)
        return const_op(b.module, v, TensorType(v.shape, f32))

    def lin(x, n_in, n_out):
        return b.op("onnx.MatMul", [x, b.qconst(rng.integers(-60, 61, (n_in, n_out)), b.qtype(0.02))])

    def norm(x, loc):
        if not layernorm:
            return x
        y = b.op("onnx.LayerNormalization", [x, fc(rng.normal(1, .1, D)), fc(rng.normal(0, .1, D))],
                 {"axis": -1, "epsilon": 1e-5}, loc=loc)
        return b.quant(y, scale=0.03)

    def heads(t, perm):
        return b.op("onnx.Transpose", [b.op("onnx.Reshape", [t], {"shape": [1, S, H, D // H]})], {"perm": perm})

    x = b.input("x", (1, S, D), scale=0.05)
    h = norm(x, "/norm1/LayerNormalization")
    q = b.quant(b.op("onnx.Div", [lin(h, D, D), fc(np.sqrt(D // H))], loc="/attn/Div"), scale=0.04)
    k, v = b.quant(lin(h, D, D), scale=0.04), b.quant(lin(h, D, D), scale=0.04)
    scores = b.quant(b.op("onnx.MatMul", [heads(q, [0, 2, 1, 3]), heads(k, [0, 2, 3, 1])]), scale=0.05)
    p = b.quant(b.op("onnx.Softmax", [scores], {"axis": -1}, loc="/attn/Softmax"), scale=1 / 256, storage=u8)
    o = b.quant(b.op("onnx.MatMul", [p, heads(v, [0, 2, 1, 3])]), scale=0.03)
    o = b.op("onnx.Reshape", [b.op("onnx.Transpose", [o], {"perm": [0, 2, 1, 3]})], {"shape": [1, S, D]})
    r = b.quant(b.op("onnx.Add", [x, b.quant(lin(o, D, D), scale=0.05)]), scale=0.06)
    f = b.quant(lin(norm(r, "/norm2/LayerNormalization"), D, 2 * D), scale=0.04)
    g = b.quant(b.op("onnx.Gelu", [f], {"approximate": "none"}, loc="/mlp/Gelu"), scale=0.02)
    y = b.quant(b.op("onnx.Add", [r, b.quant(lin(g, 2 * D, D), scale=0.05)]), scale=0.07)
    b.output("y", y)
    return b.module


def compiled(tmp_path, target, layernorm=True):
    path = tmp_path / "block.qir"
    path.write_text(print_module(encoder_block(layernorm)))
    out = tmp_path / target
    summary = compile_model(str(path), target, str(out), accuracy_samples=4)
    return summary, onnx.load(str(out / "network.onnx")), json.loads((out / "qirc.json").read_text()), out


def _attrs(node):
    return {a.name: a for a in node.attribute}


@pytest.mark.parametrize("target", ["deeploy-generic", "deeploy-cortexm"])
def test_block_emits_deeploy_integer_kernels_with_their_attribute_types(tmp_path, target):
    summary, model, report, out = compiled(tmp_path, target)
    assert deeploy_structure_problems(model, target) == []
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("iLayerNorm") == 2 and ops.count("iSoftmax") == 1 and ops.count("iGELU") == 1
    assert ops.count("MatMul") == 8  # 6 projections + Q K^T + P V
    nodes = {n.op_type: n for n in model.graph.node}
    sm = _attrs(nodes["iSoftmax"])
    assert set(sm) == {"coeffA", "coeffB", "coeffC", "log2", "n_levels"}
    for a in sm.values():  # Deeploy's iSoftmaxParser reads `.values`: size-1 tensors
        assert a.type == onnx.AttributeProto.TENSOR and numpy_helper.to_array(a.t).size == 1
    e = 0.05  # the scores' quantizer
    assert [int(numpy_helper.to_array(sm[k].t)[0]) for k in ("coeffB", "coeffC", "log2", "n_levels")] == \
        [round(1.353 / e), round(0.344 / (0.3585 * e * e)), round(np.log(2) / e), 256]
    ln = _attrs(nodes["iLayerNorm"])
    assert {k: ln[k].type for k in ln} == {"D": onnx.AttributeProto.TENSOR, "n_levels": onnx.AttributeProto.TENSOR}
    gelu = _attrs(nodes["iGELU"])
    assert {k: (gelu[k].type, gelu[k].i) for k in gelu} == {
        "b": (onnx.AttributeProto.INT, round(-1.769 * 2 ** .5 / .04)),
        "one": (onnx.AttributeProto.INT, round(2 / (.2888 * .04 ** 2)))}
    # the iGELU's RequantShift has add = 0 (Deeploy fuses them into RequantizediGELU)
    users = [n for n in model.graph.node if nodes["iGELU"].output[0] in n.input]
    assert [u.op_type for u in users] == ["RequantShift"]
    assert not numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == users[0].input[2])).any()
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    assert types[nodes["iSoftmax"].output[0]] == onnx.TensorProto.UINT8
    assert types[nodes["iLayerNorm"].output[0]] == onnx.TensorProto.INT8
    assert types[nodes["iGELU"].output[0]] == onnx.TensorProto.INT32
    # the test vectors are the emitted graph, read back and interpreted
    device = import_deeploy_onnx(model)
    inputs = np.load(out / "inputs.npz")
    outputs = np.load(out / "outputs.npz")
    got = interpreter.run(device, [inputs[k] for k in inputs.files])
    assert np.array_equal(list(got.values())[0], outputs[outputs.files[0]])
    assert np.array_equal(list(got.values())[0], list(interpreter.run(summary.module, [inputs[k] for k in
                                                                                      inputs.files]).values())[0])


def test_qirc_json_reports_each_approximation_against_its_float_op(tmp_path):
    summary, _, report, _ = compiled(tmp_path, "deeploy-generic")
    approx = report["accuracy"]["approximations"]
    assert [(a["kernel"], a["node"]) for a in approx] == [
        ("iLayerNorm", "/norm1/LayerNormalization"), ("iSoftmax", "/attn/Softmax"),
        ("iLayerNorm", "/norm2/LayerNormalization"), ("iGELU", "/mlp/Gelu")]
    for a in approx:
        assert a["samples"] == 4 and a["elements"] > 0
        assert 0 < a["mean_error_steps"] < 1.0 and a["max_error_steps"] < 3.0
        assert ("wrapped" in a) == (a["kernel"] == "iLayerNorm")
    assert "iSoftmax '/attn/Softmax' vs the float op: mean error" in summary.text()


def test_layernorm_wraps_are_counted():
    # gamma = 4 with an output step of 0.03: normalised values beyond +-1 leave int8 (the kernel wraps)
    b = QuantBuilder("ln")
    x = b.input("x", (1, 6, 8), scale=0.05)
    g = const_op(b.module, np.full(8, 4.0, np.float32), TensorType((8,), f32))
    z = const_op(b.module, np.zeros(8, np.float32), TensorType((8,), f32))
    b.output("y", b.quant(b.op("onnx.LayerNormalization", [x, g, z], {"axis": -1}, loc="/ln"), scale=0.03))
    quant, m = b.module, b.module.clone()
    lower_module(m)
    rng = np.random.default_rng(0)
    samples = [{"x": rng.integers(-100, 100, (1, 6, 8))} for _ in range(3)]
    (entry,) = approximation_report(quant, m, samples)
    (ln,) = m.walk("int.ilayernorm")
    from qirc.qir.kernels_transformer import ilayernorm_prewrap, log2_exact
    w, bias = (ln.operands[i].owner.attrs["value"] for i in (1, 2))
    pre = [ilayernorm_prewrap(s["x"], w, bias, log2_exact(ln.attr("D"))) for s in samples]
    expect = sum(int(np.count_nonzero((p < -128) | (p > 127))) for p in pre)
    assert entry["wrapped"] == expect > 0
    assert entry["max_error_steps"] > 100  # a wrapped output is far from the float op


def test_siracusa_refuses_layernorm_naming_the_node(tmp_path):
    with pytest.raises(QircError, match=r"/norm1/LayerNormalization.*Siracusa has no integer LayerNorm kernel"):
        compiled(tmp_path, "deeploy-siracusa")


def test_siracusa_takes_softmax_and_fused_gelu(tmp_path):
    _, model, _, _ = compiled(tmp_path, "deeploy-siracusa", layernorm=False)
    assert deeploy_structure_problems(model, "deeploy-siracusa") == []
    ops = [n.op_type for n in model.graph.node]
    assert "iSoftmax" in ops and ops[ops.index("iGELU") + 1] == "RequantShift"


# ----- legality of hand-made integer graphs ---------------------------------------------------------------------------
def _gelu_then_requant(add):
    m = Module("g")
    x = input_op(m, "x", TensorType((1, 8), UniformQuantType.per_tensor(i8, 0.05)))
    g = m.create("int.igelu", [x], [TensorType((1, 8), UniformQuantType.per_tensor(i32, 0.05 / 2770))],
                 {"b": -50, "one": 2770}, "/gelu")
    y = m.create("int.requant_shift", [g.result], [TensorType((1, 8), UniformQuantType.per_tensor(i8, 0.02, 0))],
                 {"mul": np.array([9]), "add": np.array([add]), "div": 1 << 12, "signed": True, "n_levels": 256},
                 "/gelu/rq")
    output_op(m, "y", y.result)
    return m


def test_gelu_requant_with_an_add_is_refused():
    legalize(_gelu_then_requant(0), "deeploy-generic")
    with pytest.raises(BackendError, match=r"/gelu.*add = 0.*RequantizediGELU"):
        legalize(_gelu_then_requant(4096), "deeploy-generic")


def test_activation_matmul_needs_equal_batch_dims():
    m = Module("mm")
    a = input_op(m, "a", TensorType((2, 4, 8), i8))
    b = input_op(m, "b", TensorType((1, 8, 4), i8))
    mm = m.create("int.matmul", [a, b], [TensorType((2, 4, 4), i32)], {}, "/mm")
    output_op(m, "y", mm.result)
    with pytest.raises(BackendError, match=r"/mm.*batch dimensions \[2\] and \[1\]"):
        legalize(m, "deeploy-generic")


def test_reader_reads_the_kernels_back():
    m = _gelu_then_requant(0)
    legalize(m, "deeploy-generic")
    model = emit_onnx(m, "deeploy-generic")
    back = import_deeploy_onnx(model)
    assert [op.name for op in back.ops() if op.dialect == "int"] == ["int.igelu", "int.requant_shift"]
    x = np.arange(-128, 128, 32).reshape(1, 8)
    assert np.array_equal(interpreter.run(back, {"x": x})["y"], interpreter.run(m, {"x": x})["y"])


def test_transposed_weights_under_a_batched_input_become_a_2d_matmul():
    # Brevitas' batch_first attention: x [S, B, E] (after its Transpose) times the transposed weight matrix
    b = QuantBuilder("proj")
    x = b.input("x", (4, 2, 8), scale=0.05)
    w = b.qconst(np.random.default_rng(1).integers(-100, 101, (8, 8)), b.qtype(0.02))
    y = b.op("onnx.MatMul", [x, b.op("onnx.Transpose", [w], {"perm": [1, 0]})], loc="/q_proj/MatMul")
    b.output("y", b.op("onnx.Transpose", [b.quant(y, scale=0.05)], {"perm": [1, 0, 2]}))  # back to batch first
    m = b.module
    lower_module(m)
    assert [op.name for op in m.ops() if op.dialect == "int"] == ["int.matmul", "int.requant_shift", "int.transpose"]
    assert m.walk("int.matmul")[0].operands[1].owner.name == "qir.const"  # the transpose was folded
    x_int = np.random.default_rng(2).integers(-128, 128, (4, 2, 8))
    before = interpreter.run(m, {"x": x_int})["y"]
    legalize(m, "deeploy-generic")
    (mm,) = m.walk("int.matmul")
    assert mm.operands[0].type.shape == (8, 8) and mm.results[0].type.shape == (8, 8)
    assert np.array_equal(interpreter.run(m, {"x": x_int})["y"], before)
    assert deeploy_structure_problems(emit_onnx(m, "deeploy-generic"), "deeploy-generic") == []


def test_qirc_report_lists_the_approximating_kernels(tmp_path):
    from qirc.report.page import _approximation_table, build_report
    path = tmp_path / "block.qir"
    path.write_text(print_module(encoder_block()))
    data = build_report(str(path), "deeploy-generic", samples=2)
    assert [a["kernel"] for a in data.approximations] == ["iLayerNorm", "iSoftmax", "iLayerNorm", "iGELU"]
    table = "\n".join(_approximation_table(data.approximations))
    assert "<h2>Approximating kernels</h2>" in table and "<code>/attn/Softmax</code>" in table


def test_token_linear_with_bias_runs_on_2d_tensors():
    # [1, S, d] x [d, e] + bias: the bias folds into a per-feature requant add, and Deeploy's RequantShift takes
    # per-feature parameters on the last axis of a 2-D tensor only, so the product, its bias and its requant are
    # computed on [S, e]
    rng = np.random.default_rng(5)
    b = QuantBuilder("tok")
    x = b.input("x", (1, 4, 8), scale=0.05)
    w = b.qconst(rng.integers(-127, 128, (8, 6)), b.qtype(0.01))
    acc = b.op("onnx.MatMul", [x, w])
    bias = b.qconst(rng.integers(-500, 500, 6), b.qtype(0.05 * 0.01, storage=i32))
    y = b.quant(b.op("onnx.Add", [acc, bias]), scale=0.04)
    b.output("y", b.op("onnx.Transpose", [y], {"perm": [0, 2, 1]}))
    m = b.module
    lower_module(m)
    x_int = rng.integers(-128, 128, (1, 4, 8))
    before = interpreter.run(m, {"x": x_int})["y"]
    legalize(m, "deeploy-generic")
    (rq,) = m.walk("int.requant_shift")
    assert rq.operands[0].type.shape == (4, 6) and np.asarray(rq.attr("add")).shape == (6,)
    assert np.array_equal(interpreter.run(m, {"x": x_int})["y"], before)
    assert deeploy_structure_problems(emit_onnx(m, "deeploy-generic"), "deeploy-generic") == []


def _legalized_equal(m, feeds, target="deeploy-generic"):
    before = interpreter.run(m, feeds)
    legalize(m, target)
    after = interpreter.run(m, feeds)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert deeploy_structure_problems(emit_onnx(m, target), target) == []
    return m


def test_patch_embedding_requant_moves_before_its_reshape_and_transpose():
    # ViT: Conv (with bias) -> Reshape [N, C, h*w] -> Transpose [N, h*w, C] -> token quantizer
    rng = np.random.default_rng(8)
    b = QuantBuilder("vit")
    x = b.input("x", (1, 3, 8, 8), scale=0.05)
    y = b.conv(x, rng.integers(-127, 128, (6, 3, 4, 4)), 0.01, bias=rng.integers(-300, 300, 6), strides=(4, 4))
    y = b.op("onnx.Transpose", [b.op("onnx.Reshape", [y], {"shape": [1, 6, 4]})], {"perm": [0, 2, 1]})
    y = b.quant(y, scale=0.05)
    w = b.qconst(rng.integers(-127, 128, (6, 6)), b.qtype(0.01))
    y = b.quant(b.op("onnx.MatMul", [y, w]), scale=0.05)
    b.output("y", b.op("onnx.Transpose", [y], {"perm": [0, 2, 1]}))
    m = b.module
    lower_module(m)
    m = _legalized_equal(m, {"x": rng.integers(-128, 128, (1, 3, 8, 8))})
    (conv,) = m.walk("int.conv")
    assert [u.name for u in conv.results[0].users] == ["int.requant_shift"]  # its bias folded into the requant
    assert "int.add" not in [op.name for op in m.ops()]


def test_class_token_concat_without_concat_on_cortexm():
    # KWT: Concat(class token, tokens) along the token axis; CMSIS has no Concat
    rng = np.random.default_rng(9)
    b = QuantBuilder("cls")
    x = b.input("x", (1, 5, 8), scale=0.05)
    qt = b.qtype(0.05)
    cls = b.qconst(rng.integers(-128, 128, (1, 1, 8)), qt)
    t = b.op("onnx.Concat", [cls, x], {"axis": 1}, loc="/Concat")
    w = b.qconst(rng.integers(-127, 128, (8, 8)), b.qtype(0.01))
    y = b.quant(b.op("onnx.MatMul", [t, w]), scale=0.05)
    b.output("y", b.op("onnx.Transpose", [y], {"perm": [0, 2, 1]}))
    m = b.module
    lower_module(m)
    assert "int.concat" in [op.name for op in m.ops()]
    m = _legalized_equal(m, {"x": rng.integers(-128, 128, (1, 5, 8))}, "deeploy-cortexm")
    names = [op.name for op in m.ops()]
    assert "int.concat" not in names and "int.pad" in names


def test_exact_kernel_ablation_measures_each_approximation(tmp_path):
    from qirc.report.ablation import ablation_lines
    path = tmp_path / "block.qir"
    path.write_text(print_module(encoder_block()))
    summary = compile_model(str(path), "deeploy-generic", str(tmp_path / "out"), accuracy_samples=4, layers=True)
    rows = json.loads((tmp_path / "out" / "qirc.json").read_text())["accuracy"]["exact_kernels"]
    assert [r["computed_exactly"] for r in rows] == [None, "iSoftmax", "iLayerNorm", "iGELU"]
    base = rows[0]["outputs"][0]
    assert base["mean_error_steps"] == pytest.approx(summary.accuracy["outputs"][0]["mean_error_steps"])
    for r in rows[1:]:  # each row changes only its kind of kernel
        assert r["outputs"][0]["mean_error_steps"] >= 0 and r["outputs"][0]["name"] == base["name"]
    assert len(ablation_lines(rows)) == 4
    # the exact stand-ins are what they say: all three exact give the fake-quant model up to requant rounding
    from qirc.report import ablation
    from qirc.qir.interpreter import KERNELS
    old = dict(KERNELS)
    try:
        KERNELS["int.isoftmax"] = ablation._exact_softmax
        KERNELS["int.igelu"] = ablation._exact_gelu
        KERNELS["int.ilayernorm"] = ablation._exact_layernorm({})
        m = summary.module
        x = np.random.default_rng(3).normal(0, 1, (1, S, D)).astype(np.float32)
        got = interpreter.run(m, {"x": np.clip(np.rint(x / 0.05), -128, 127).astype(np.int64)})["y"]
    finally:
        KERNELS.clear()
        KERNELS.update(old)
    want = interpreter.run(encoder_block(), {"x": x})["y"] / 0.07
    assert np.abs(got - want).mean() < 0.5
