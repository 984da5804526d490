"""Deeploy backend on hand-built integer IR: targets, legalisation rewrites, ONNX emission, the reader of qirc's own
Deeploy ONNX, and target refusals."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qirc.backends.deeploy.emit import emit_onnx
from qirc.backends.deeploy.legalize import legalize
from qirc.backends.deeploy.targets import TARGETS, get_target
from qirc.frontends.deeploy import import_deeploy_onnx, is_deeploy_onnx
from qirc.qir import interpreter
from qirc.qir.diagnostics import BackendError, FrontendError, UsageError
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.passes import parse_pipeline
from qirc.qir.types import TensorType, UniformQuantType, f32, i8, i32, u8
from qirc.qir.verifier import verify

from test_deeploy_structure import assert_deeploy_structure, assert_written_graph_exact

TARGET_NAMES = ["deeploy-generic", "deeploy-siracusa", "deeploy-cortexm"]


def q8(scale, zp=0, signed=True):
    return UniformQuantType.per_tensor(i8 if signed else u8, scale, zp)


def conv_attrs(k=3, pads=(1, 1, 1, 1), group=1):
    return {"kernel_shape": [k, k], "pads": list(pads), "strides": [1, 1], "dilations": [1, 1], "group": group}


def rqs_attrs(mul, add=0, div=1 << 16, signed=True, n_levels=256):
    return {"mul": np.asarray(mul, np.int64).reshape(np.shape(mul) or (1,)),
            "add": np.asarray(add, np.int64).reshape(np.shape(add) or (1,)), "div": div, "signed": signed,
            "n_levels": n_levels}


def conv_rqs(m, x, w, b, mul, loc, out_type, group=1):
    c_out = w.shape[0]
    shape = (x.type.shape[0], c_out) + tuple(x.type.shape[2:])
    wv = const_op(m, w.astype(np.int8), TensorType(w.shape, i8), loc + "/w")
    operands = [x, wv]
    if b is not None:
        operands.append(const_op(m, b.astype(np.int32), TensorType(b.shape, i32), loc + "/b"))
    c = m.create("int.conv", operands, [TensorType(shape, i32)], conv_attrs(w.shape[-1], group=group), loc).result
    return m.create("int.requant_shift", [c], [TensorType(shape, out_type)], rqs_attrs(mul), loc + "/rqs").result


def small_cnn(seed=0, residual_scales=(5, 4), pool="reduce_sum", unsigned_branch=False):
    """input -> conv(+bias) -> rqs -> depthwise conv -> rqs -> residual add (int.mul by constants) -> rqs ->
    maxpool -> global sum pool -> rqs -> flatten -> gemm(+bias) -> rqs -> output (`unsigned_branch`: the depthwise
    conv's requant onto uint8)."""
    rng = np.random.default_rng(seed)
    m = Module("small_cnn")
    x = input_op(m, "input:0", TensorType((1, 3, 8, 8), q8(0.02)))
    mul1 = rng.integers(100, 200, (1, 8, 1, 1))
    r1 = conv_rqs(m, x, rng.integers(-127, 128, (8, 3, 3, 3)), rng.integers(-500, 500, (8,)), mul1, "/conv1/Conv",
                  q8(0.05))
    r2 = conv_rqs(m, r1, rng.integers(-127, 128, (8, 1, 3, 3)), None, [300], "/dw/Conv",
                  q8(0.04, signed=not unsigned_branch), group=8)
    if unsigned_branch:
        r2.owner.attrs["signed"] = False
    shape = (1, 8, 8, 8)
    if residual_scales is not None:
        ca, cb = (const_op(m, np.array([c], np.int32), TensorType((1,), i32), f"/add/c{i}")
                  for i, c in enumerate(residual_scales))
        ta = m.create("int.mul", [r1, ca], [TensorType(shape, i32)], {}, "/add/mul_a").result
        tb = m.create("int.mul", [r2, cb], [TensorType(shape, i32)], {}, "/add/mul_b").result
        s = m.create("int.add", [ta, tb], [TensorType(shape, i32)], {}, "/add/Add").result
        r2 = m.create("int.requant_shift", [s], [TensorType(shape, q8(0.06))], rqs_attrs([13107]), "/add/rqs").result
    mp = m.create("int.maxpool", [r2], [TensorType((1, 8, 4, 4), r2.type.element)],
                  {"kernel_shape": [2, 2], "pads": [0, 0, 0, 0], "strides": [2, 2]}, "/pool/MaxPool").result
    if pool == "reduce_sum":
        sm = m.create("int.reduce_sum", [mp], [TensorType((1, 8, 1, 1), i32)], {"axes": [2, 3], "keepdims": 1},
                      "/gap/ReduceMean").result
    else:
        sm = m.create("int.sumpool", [mp], [TensorType((1, 8, 1, 1), i32)],
                      {"kernel_shape": [4, 4], "pads": [0, 0, 0, 0], "strides": [4, 4]}, "/gap/AveragePool").result
    r3 = m.create("int.requant_shift", [sm], [TensorType((1, 8, 1, 1), r2.type.element)],
                  rqs_attrs([1], 0, 16), "/gap/rqs").result
    fl = m.create("int.flatten", [r3], [TensorType((1, 8), r2.type.element)], {"axis": 1}, "/Flatten").result
    gw = const_op(m, rng.integers(-127, 128, (5, 8)).astype(np.int8), TensorType((5, 8), i8), "/fc/w")
    gb = const_op(m, rng.integers(-100, 100, (5,)).astype(np.int32), TensorType((5,), i32), "/fc/b")
    g = m.create("int.gemm", [fl, gw, gb], [TensorType((1, 5), i32)], {"transA": 0, "transB": 1}, "/fc/Gemm").result
    r4 = m.create("int.requant_shift", [g], [TensorType((1, 5), q8(0.1))],
                  rqs_attrs(np.full((1, 5), 40000), 0, 1 << 20), "/fc/rqs").result
    output_op(m, "output", r4)
    verify(m)
    return m


def run_samples(module, seeds=range(4)):
    return [interpreter.run(module, interpreter.random_inputs(module, s)) for s in seeds]


# ----- targets --------------------------------------------------------------------------------------------------
def test_targets_are_declared_with_their_lowering_options():
    assert set(TARGETS) == set(TARGET_NAMES)
    assert get_target("deeploy-siracusa").lowering_options == {"signed_normalize": False}
    assert get_target("deeploy-cortexm").lowering_options == {"signed_normalize": True}
    assert get_target("deeploy-generic").lowering_options == {"signed_normalize": False}
    assert get_target("deeploy-siracusa").platform == "Siracusa"
    assert not get_target("deeploy-cortexm").accepts("Concat")
    assert get_target("deeploy-generic").accepts("Concat")


def test_unknown_target_lists_the_targets():
    with pytest.raises(UsageError) as e:
        get_target("deeploy-x86")
    assert str(e.value) == ("unknown target 'deeploy-x86'; targets: deeploy-siracusa, deeploy-generic, "
                            "deeploy-cortexm")


def test_legalize_is_a_registered_pass():
    [p] = parse_pipeline("deeploy-legalize{target=deeploy-siracusa}")
    assert p.spec() == "deeploy-legalize{target=deeploy-siracusa}"
    m = small_cnn(residual_scales=None)
    p.run(m)
    assert not m.walk("int.reduce_sum")


# ----- legalisation rewrites ------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["deeploy-generic", "deeploy-siracusa"])
def test_legalized_graph_computes_the_same_integers(target):
    # equal residual scales: every rewrite is exact, Siracusa's included
    m = small_cnn(residual_scales=(1, 1))
    before = run_samples(m)
    legalize(m, target)
    verify(m)
    after = run_samples(m)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b["output"], a["output"])


def test_conv_bias_is_folded_into_the_requant_add():
    m = small_cnn(residual_scales=None)
    conv = m.walk("int.conv")[0]
    bias = np.asarray(conv.operands[2].owner.attrs["value"], np.int64)
    rqs = conv.result.users[0]
    mul = np.asarray(rqs.attrs["mul"], np.int64).reshape(-1)
    legalize(m, "deeploy-generic")
    conv = [c for c in m.walk("int.conv") if c.loc == "/conv1/Conv"][0]
    assert len(conv.operands) == 2
    rqs = conv.result.users[0]
    np.testing.assert_array_equal(np.asarray(rqs.attrs["add"]).reshape(-1), bias * mul)
    assert np.asarray(rqs.attrs["add"]).shape == (1, 8, 1, 1)


@pytest.mark.parametrize("pool", ["reduce_sum", "sumpool"])
def test_sum_pool_becomes_a_depthwise_all_ones_conv(pool):
    m = small_cnn(residual_scales=None, pool=pool)
    before = run_samples(m)
    legalize(m, "deeploy-siracusa")
    pool_conv = [c for c in m.walk("int.conv") if c.loc.startswith("/gap/")][0]
    w = np.asarray(pool_conv.operands[1].owner.attrs["value"])
    assert w.shape == (8, 1, 4, 4) and np.all(w == 1)
    assert pool_conv.attrs["group"] == 8
    assert pool_conv.result.users[0].name == "int.requant_shift"
    for b, a in zip(before, run_samples(m)):
        np.testing.assert_array_equal(b["output"], a["output"])


def _emulate_pulp_rqadd(model: onnx.ModelProto, add_node: onnx.NodeProto, values: dict) -> np.ndarray:
    """What Siracusa computes for RQS(a), RQS(b) -> Add -> RQS after PULPAddRequantMergePass: pulp_nn_add_i8_i8_i8,
    out = clips8(((clips8((a*m1 + a1 + d1/2) >> s1) + clips8((b*m2 + ...) >> s2)) * mo + ao + do/2) >> so), each
    operand clipped to the 8-bit range of its input's signedness (clip8 0..255 for a uint8 one)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    by_out = {n.output[0]: n for n in model.graph.node}
    consumer = [n for n in model.graph.node if add_node.output[0] in n.input][0]

    def params(n):
        a = {x.name: int(numpy_helper.to_array(x.t).reshape(-1)[0]) for x in n.attribute}
        mul, add = int(inits[n.input[1]].item()), int(inits[n.input[2]].item())
        return mul, add + a["div"] // 2, int(np.log2(a["div"]))

    def clips8(v):
        return np.clip(v, -128, 127)

    rq = []
    for name in add_node.input:
        n = by_out[name]
        mul, add, shift = params(n)
        signed = {x.name: int(numpy_helper.to_array(x.t).reshape(-1)[0]) for x in n.attribute}["signed"]
        rq.append(np.clip((values[n.input[0]] * mul + add) >> shift, *((-128, 127) if signed else (0, 255))))
    mul, add, shift = params(consumer)
    return clips8(((rq[0] + rq[1]) * mul + add) >> shift)


def test_siracusa_residual_add_is_the_form_its_fused_kernel_computes():
    # operands of different signedness (a Concat takes one element type): the RequantizedAdd form; the same
    # signedness takes the exact stacked form (tests/test_siracusa_residual.py)
    m = small_cnn(residual_scales=(5, 4), unsigned_branch=True)
    exact = run_samples(m, range(6))
    legalize(m, "deeploy-siracusa")
    model = emit_onnx(m, "deeploy-siracusa")
    [add] = [n for n in model.graph.node if n.op_type == "Add"]
    producers = {n.output[0]: n for n in model.graph.node}
    assert [producers[i].op_type for i in add.input] == ["RequantShift", "RequantShift"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumer = [n for n in model.graph.node if add.output[0] in n.input][0]
    for n in [producers[i] for i in add.input] + [consumer]:
        assert consumer.op_type == "RequantShift"
        assert inits[n.input[1]].size == 1 and inits[n.input[2]].size == 1  # per tensor: the merge needs it
    # the emitted graph computes exactly what pulp_nn_add computes
    device = import_deeploy_onnx(model)
    for seed in range(6):
        inputs = interpreter.random_inputs(device, seed)
        vals = _values_by_tensor(device, model, inputs)
        np.testing.assert_array_equal(_emulate_pulp_rqadd(model, add, vals), vals[consumer.output[0]])
    # ... and stays within one output step of the exact one-rounding form at the output
    for b, a in zip(exact, run_samples(m, range(6))):
        assert np.abs(b["output"] - a["output"]).max() <= 1


def _values_by_tensor(device: Module, model: onnx.ModelProto, inputs) -> dict:
    """Runtime arrays of the re-imported graph keyed by ONNX tensor name (node outputs and graph inputs)."""
    vals = interpreter.run_values(device, inputs)
    out_of_node = {n.name: n.output[0] for n in model.graph.node}
    by_tensor = {}
    for op in device.ops():
        if op.name == "qir.input":
            by_tensor[op.attrs["name"]] = vals[op.result]
        elif op.dialect == "int":
            by_tensor[out_of_node[op.loc]] = vals[op.result]
    return by_tensor


def test_generic_and_cmsis_keep_the_exact_mul_add_form():
    for target in ("deeploy-generic",):
        m = small_cnn(residual_scales=(5, 4))
        before = run_samples(m)
        legalize(m, target)
        model = emit_onnx(m, target)
        [add] = [n for n in model.graph.node if n.op_type == "Add"]
        producers = {n.output[0]: n.op_type for n in model.graph.node}
        assert [producers[i] for i in add.input] == ["Mul", "Mul"]
        for b, a in zip(before, run_samples(m)):
            np.testing.assert_array_equal(b["output"], a["output"])


def test_clip_after_requant_folds_into_its_levels():
    m = Module("clip")
    x = input_op(m, "x", TensorType((1, 64), q8(0.05)))
    r = m.create("int.requant_shift", [x], [TensorType((1, 64), q8(0.1))], rqs_attrs([3], 0, 4), "/rqs").result
    c = m.create("int.clip", [r], [TensorType((1, 64), q8(0.1))], {"min": 0, "max": 127}, "/relu").result
    output_op(m, "y", c)
    before = run_samples(m)
    legalize(m, "deeploy-generic")
    [rqs] = m.walk("int.requant_shift")
    assert (rqs.attrs["signed"], rqs.attrs["n_levels"]) == (False, 128)
    assert not m.walk("int.clip")
    for b, a in zip(before, run_samples(m)):
        np.testing.assert_array_equal(b["y"], a["y"])


def test_trailing_reshape_moves_before_the_last_requant():
    m = Module("tail")
    x = input_op(m, "x", TensorType((1, 2, 4, 4), q8(0.1)))
    p = m.create("int.maxpool", [x], [TensorType((1, 2, 2, 2), q8(0.1))],
                 {"kernel_shape": [2, 2], "pads": [0, 0, 0, 0], "strides": [2, 2]}, "/pool").result
    r = m.create("int.requant_shift", [p], [TensorType((1, 2, 2, 2), q8(0.2))], rqs_attrs([1], 0, 2), "/rqs").result
    f = m.create("int.flatten", [r], [TensorType((1, 8), q8(0.2))], {"axis": 1}, "/flatten").result
    output_op(m, "y", f)
    before = run_samples(m)
    legalize(m, "deeploy-generic")
    model = emit_onnx(m, "deeploy-generic")
    assert [n.op_type for n in model.graph.node] == ["MaxPool", "Reshape", "RequantShift"]
    assert_deeploy_structure(model, "deeploy-generic")
    for b, a in zip(before, run_samples(m)):
        np.testing.assert_array_equal(b["y"], a["y"])


def _fused_conv_then_flatten(signed=True):
    m = Module("tail")
    x = input_op(m, "x", TensorType((1, 2, 1, 1), q8(0.1)))
    r = conv_rqs(m, x, np.ones((3, 2, 3, 3)), None, [5], "/head/Conv", q8(0.3, signed=signed))  # pads 1: 1x1
    f = m.create("int.flatten", [r], [TensorType((1, 3), q8(0.3, signed=signed))], {"axis": 1},
                 "/head/Flatten").result
    output_op(m, "y", f)
    return m


@pytest.mark.parametrize("target, add", [("deeploy-generic", 0), ("deeploy-cortexm", 0), ("deeploy-siracusa", -1)])
def test_trailing_reshape_after_a_fused_conv_gets_a_requant_that_copies(target, add):
    """A reshape after a fused Conv cannot move before it (a Conv1d's output reshaped back to rank 3 is the case
    that matters): a RequantShift that only copies follows it, so that the graph does not end in a Reshape (Deeploy
    leaves such an output buffer zero); on Siracusa with add -1 and mul = div = 2, which Deeploy's
    SkipUnityRequantPass does not remove (a Conv1d net: Siracusa tiled code generated, QEMU-ARM code generated,
    Generic Errors: 0)."""
    m = _fused_conv_then_flatten()
    before = run_samples(m)
    legalize(m, target)
    model = emit_onnx(m, target)
    assert [n.op_type for n in model.graph.node][-2:] == ["Reshape", "RequantShift"]
    last = model.graph.node[-1]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert int(inits[last.input[2]].reshape(-1)[0]) == add and last.output[0] == "y"
    for b, a in zip(before, run_samples(m)):
        np.testing.assert_array_equal(b["y"], a["y"])


def test_trailing_reshape_of_a_fused_uint8_output_is_refused_on_siracusa():
    with pytest.raises(BackendError) as e:
        legalize(_fused_conv_then_flatten(signed=False), "deeploy-siracusa")
    assert str(e.value).startswith("node '/head/Flatten' (int.reshape): the graph ends in a reshape")
    assert "end the model with an int8 quantizer" in str(e.value) and "(target deeploy-siracusa)" in str(e.value)


# ----- refusals ---------------------------------------------------------------------------------------------------
def _global_pool_head(pool="reduce_sum", keepdims=1, n=1, pool_mul=(1,), pool_add=0, zp=-128):
    """x [N,8,4,4] (zero point `zp`, as signed normalisation leaves a ReLU output) -> global sum pool -> rqs (the
    count division: mul/add/div, add folding the zero point) -> flatten -> gemm -> rqs -> output."""
    rng = np.random.default_rng(3)
    m = Module("gap")
    x = input_op(m, "x", TensorType((n, 8, 4, 4), q8(0.05, zp)))
    sum_shape = (n, 8, 1, 1) if keepdims else (n, 8)
    if pool == "reduce_sum":
        sm = m.create("int.reduce_sum", [x], [TensorType(sum_shape, i32)], {"axes": [2, 3], "keepdims": keepdims},
                      "/gap/ReduceMean").result
    else:
        sm = m.create("int.sumpool", [x], [TensorType(sum_shape, i32)],
                      {"kernel_shape": [4, 4], "pads": [0, 0, 0, 0], "strides": [4, 4]}, "/gap/AveragePool").result
    r = m.create("int.requant_shift", [sm], [TensorType(sum_shape, q8(0.05))],
                 rqs_attrs(np.asarray(pool_mul).reshape((1, -1) + (1, 1) * keepdims if len(pool_mul) > 1 else (1,)),
                           pool_add, 16 * 4096), "/gap/rqs").result
    fl = m.create("int.flatten", [r], [TensorType((n, 8), q8(0.05))], {"axis": 1}, "/Flatten").result if keepdims \
        else r
    gw = const_op(m, rng.integers(-127, 128, (5, 8)).astype(np.int8), TensorType((5, 8), i8), "/fc/w")
    g = m.create("int.gemm", [fl, gw], [TensorType((n, 5), i32)], {"transA": 0, "transB": 1}, "/fc/Gemm").result
    out = m.create("int.requant_shift", [g], [TensorType((n, 5), q8(0.1))], rqs_attrs([3000], 0, 1 << 16),
                   "/fc/rqs").result
    output_op(m, "y", out)
    verify(m)
    return m


@pytest.mark.parametrize("pool, keepdims, n", [("reduce_sum", 1, 1), ("reduce_sum", 0, 1), ("sumpool", 1, 1),
                                               ("reduce_sum", 1, 2)])
def test_cortexm_global_pool_is_an_all_ones_matmul_fused_with_its_requant(pool, keepdims, n):
    # add = 128 * 16 * mul folds the zero point -128 of the 16 summed values: a multiple of mul, so exact on CMSIS
    m = _global_pool_head(pool, keepdims, n, pool_mul=(4096,), pool_add=128 * 16 * 4096)
    before = run_samples(m)
    legalize(m, "deeploy-cortexm")
    verify(m)
    model = emit_onnx(m, "deeploy-cortexm")
    assert [nd.op_type for nd in model.graph.node] == ["Reshape", "MatMul", "RequantShift", "Reshape", "Gemm",
                                                       "RequantShift"]
    assert_deeploy_structure(model, "deeploy-cortexm")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    rows, matmul, rqs, back = model.graph.node[:4]
    assert list(inits[rows.input[1]]) == [n * 8, 16]
    ones = inits[matmul.input[1]]
    assert ones.dtype == np.int8 and ones.shape == (16, 1) and np.all(ones == 1)
    # CMSIS's MatMul-requant merge reads one rank-0 multiplier and the add as the fully-connected bias
    assert inits[rqs.input[1]].shape == () and int(inits[rqs.input[1]]) == 4096
    assert inits[rqs.input[2]].tolist() == [128 * 16 * 4096]
    assert list(inits[back.input[1]]) == [n, 8]
    for b, a in zip(before, run_samples(m)):
        np.testing.assert_array_equal(b["y"], a["y"])
    # the written graph computes the same integers
    device = import_deeploy_onnx(model)
    for seed in range(4):
        inputs = interpreter.random_inputs(m, seed)
        np.testing.assert_array_equal(list(interpreter.run(device, list(inputs.values())).values())[0],
                                      interpreter.run(m, inputs)["y"])


def test_cortexm_pool_requant_add_becomes_a_multiple_of_its_mul():
    # CMSIS adds round(add / mul) before multiplying: the graph states that (add 1000 -> 0 with mul 4096)
    m = _global_pool_head(pool_mul=(4096,), pool_add=128 * 16 * 4096 + 1000)
    legalize(m, "deeploy-cortexm")
    rqs = m.walk("int.matmul")[0].result.uses[0][0]
    assert int(rqs.attrs["mul"]) == 4096 and rqs.attrs["add"].tolist() == [128 * 16 * 4096]


def test_generic_and_siracusa_keep_the_depthwise_pool_form():
    for target in ("deeploy-generic", "deeploy-siracusa"):
        m = _global_pool_head(pool_mul=(4096,), pool_add=128 * 16 * 4096)
        legalize(m, target)
        assert not m.walk("int.matmul")
        [conv] = m.walk("int.conv")
        assert conv.attrs["group"] == 8 and conv.result.uses[0][0].name == "int.requant_shift"


def test_cortexm_windowed_average_pooling_is_an_all_ones_depthwise_conv():
    """Refused before (issue 11); now the all-ones depthwise Conv, which cortex-m writes channels-last (Deeploy's
    QEMU-ARM code generation accepts it)."""
    m = Module("avg")
    x = input_op(m, "x", TensorType((1, 2, 4, 4), q8(0.1)))
    s = m.create("int.sumpool", [x], [TensorType((1, 2, 2, 2), i32)],
                 {"kernel_shape": [2, 2], "pads": [0, 0, 0, 0], "strides": [2, 2]}, "/avg/AveragePool").result
    r = m.create("int.requant_shift", [s], [TensorType((1, 2, 2, 2), q8(0.1))], rqs_attrs([1], 0, 4),
                 "/avg/rqs").result
    output_op(m, "y", r)
    before = m.clone()
    legalize(m, "deeploy-cortexm")
    assert [op.name for op in m.ops() if op.name != "qir.const"] == ["qir.input", "int.conv", "int.requant_shift",
                                                                      "qir.output"]
    conv = m.walk("int.conv")[0]
    assert conv.attrs["group"] == 2 and conv.attrs["kernel_shape"] == [2, 2] and conv.attrs["strides"] == [2, 2]
    inputs = interpreter.random_inputs(before, 0)
    np.testing.assert_array_equal(interpreter.run(m, inputs)["y"], interpreter.run(before, inputs)["y"])


def test_cortexm_refuses_a_global_pool_with_a_per_channel_requant():
    m = _global_pool_head(pool_mul=tuple(range(4000, 4008)), pool_add=0)
    with pytest.raises(BackendError) as e:
        legalize(m, "deeploy-cortexm")
    assert str(e.value) == ("node '/gap/ReduceMean' (int.matmul): a global average pool must be followed by a "
                            "per-tensor requant_shift (its only user, possibly behind reshapes) on this platform "
                            "(target deeploy-cortexm)")


def _concat_module():
    m = Module("cat")
    a = input_op(m, "a", TensorType((1, 2, 2, 2), q8(0.1)))
    b = input_op(m, "b", TensorType((1, 2, 2, 2), q8(0.1)))
    c = m.create("int.concat", [a, b], [TensorType((1, 4, 2, 2), q8(0.1))], {"axis": 1}, "/cat/Concat").result
    r = m.create("int.requant_shift", [c], [TensorType((1, 4, 2, 2), q8(0.2))], rqs_attrs([1], 0, 2), "/rqs").result
    output_op(m, "y", r)
    return m


def test_cortexm_writes_concat_as_pads_and_generic_emits_it():
    # CMSIS has no Concat: each operand is padded with zeros to the full length and the two are added
    feeds = {"a": np.arange(8).reshape(1, 2, 2, 2) - 4, "b": 3 - np.arange(8).reshape(1, 2, 2, 2)}
    want = interpreter.run(_concat_module(), feeds)["y"]
    m = legalize(_concat_module(), "deeploy-cortexm")
    assert np.array_equal(interpreter.run(m, feeds)["y"], want)
    model = emit_onnx(m, "deeploy-cortexm")
    assert sorted({n.op_type for n in model.graph.node}) == ["Add", "Pad", "RequantShift", "Reshape"]
    m = legalize(_concat_module(), "deeploy-generic")
    model = emit_onnx(m, "deeploy-generic")
    assert [n.op_type for n in model.graph.node] == ["Concat", "RequantShift"]


def test_bare_conv_is_refused_where_the_platform_has_no_integer_conv():
    def bare():
        m = Module("bare")
        x = input_op(m, "x", TensorType((1, 2, 4, 4), q8(0.1)))
        w = const_op(m, np.ones((2, 2, 1, 1), np.int8), TensorType((2, 2, 1, 1), i8), "/w")
        b = const_op(m, np.array([1, 2], np.int32), TensorType((2,), i32), "/b")
        c = m.create("int.conv", [x, w, b], [TensorType((1, 2, 4, 4), i32)], conv_attrs(1, (0, 0, 0, 0)),
                     "/conv/Conv").result
        output_op(m, "acc", c)
        return m

    with pytest.raises(BackendError) as e:
        legalize(bare(), "deeploy-siracusa")
    assert str(e.value).startswith("node '/conv/Conv' (int.conv): int.conv is not followed by a requant_shift")
    # Generic has an integer Conv: the bias becomes an explicit int32 Add, same integers
    m = bare()
    before = run_samples(m)
    legalize(m, "deeploy-generic")
    model = emit_onnx(m, "deeploy-generic")
    assert [n.op_type for n in model.graph.node] == ["Conv", "Add"]
    for b, a in zip(before, run_samples(m)):
        np.testing.assert_array_equal(b["acc"], a["acc"])


def test_non_integer_ops_are_refused():
    m = Module("f")
    x = input_op(m, "x", TensorType((1, 4), q8(0.1)))
    d = m.create("quant.dcast", [x], [TensorType((1, 4), f32)], {}, "/dq").result
    output_op(m, "y", d)
    with pytest.raises(BackendError) as e:
        legalize(m, "deeploy-generic")
    assert str(e.value) == ("node '/dq' (quant.dcast): quant.dcast is not integer arithmetic: lower the model first "
                            "(lower-to-int) (target deeploy-generic)")


# ----- emission and the reader -----------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["deeploy-generic", "deeploy-siracusa"])
def test_emitted_graph_follows_the_contract_and_reads_back_exactly(target):
    m = small_cnn(residual_scales=(5, 4))
    legalize(m, target)
    model = emit_onnx(m, target)
    assert_deeploy_structure(model, target)
    assert is_deeploy_onnx(model)
    names = [n.name for n in model.graph.node]
    assert names[:3] == ["conv1_Conv", "conv1_Conv_rqs", "dw_Conv"]
    assert [i.name for i in model.graph.input] == ["input_0"]
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    assert types["conv1_Conv_out"] == onnx.TensorProto.INT32
    assert types["conv1_Conv_rqs_out"] == onnx.TensorProto.INT8
    rqs = [n for n in model.graph.node if n.op_type == "RequantShift"][0]
    assert rqs.domain == "ai.deeploy"
    assert {o.domain for o in model.opset_import} == {"", "ai.deeploy"}
    device = import_deeploy_onnx(model)
    verify(device)
    for seed in range(3):
        inputs = interpreter.random_inputs(m, seed)
        np.testing.assert_array_equal(interpreter.run(m, inputs)["output"],
                                      interpreter.run(device, list(inputs.values()))["output"])


def test_requant_add_is_a_multiple_of_mul_when_the_output_zero_point_is_0():
    for target in ("deeploy-generic", "deeploy-siracusa"):
        m = small_cnn(residual_scales=(5, 4))
        legalize(m, target)
        for rqs in m.walk("int.requant_shift"):
            t = rqs.result.type
            if t.is_quant and t.quant.zero_points == (0,) or not t.is_quant:
                mul, add = np.asarray(rqs.attrs["mul"]), np.asarray(rqs.attrs["add"])
                assert np.all(add % mul == 0), rqs.loc


def test_reader_reports_foreign_ops_with_the_node():
    m = legalize(small_cnn(residual_scales=None), "deeploy-generic")
    model = emit_onnx(m, "deeploy-generic")
    model.graph.node[3].op_type = "Softmax"
    with pytest.raises(FrontendError) as e:
        import_deeploy_onnx(model)
    assert str(e.value) == f"<model>: node '{model.graph.node[3].name}' (Softmax): op Softmax is not part of qirc's " \
                           "Deeploy form"


def test_reader_needs_value_info():
    m = legalize(small_cnn(residual_scales=None), "deeploy-generic")
    model = emit_onnx(m, "deeploy-generic")
    del model.graph.value_info[0]
    with pytest.raises(FrontendError) as e:
        import_deeploy_onnx(model)
    assert "has no integer type and static shape in value_info" in str(e.value)


# ----- platform quirks found by running Deeploy -------------------------------------------------------------------
def test_padded_maxpool_becomes_a_pad_with_the_storage_minimum():
    m = Module("pool")
    x = input_op(m, "x", TensorType((1, 2, 5, 5), q8(0.1)))
    p = m.create("int.maxpool", [x], [TensorType((1, 2, 3, 3), q8(0.1))],
                 {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}, "/pool/MaxPool").result
    r = m.create("int.requant_shift", [p], [TensorType((1, 2, 3, 3), q8(0.2))], rqs_attrs([1], 0, 2), "/rqs").result
    output_op(m, "y", r)
    before = run_samples(m)
    legalize(m, "deeploy-generic")
    model = emit_onnx(m, "deeploy-generic")
    pad, pool = model.graph.node[0], model.graph.node[1]
    assert (pad.op_type, pool.op_type) == ("Pad", "MaxPool")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pad.attribute}
    assert attrs["value"] == -128.0 and list(attrs["pads"]) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert_deeploy_structure(model, "deeploy-generic")
    for b, a in zip(before, run_samples(m)):
        np.testing.assert_array_equal(b["y"], a["y"])


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_padded_maxpool_after_a_relu_pads_with_the_relus_minimum(target):
    # requant -> ReLU clip 0..127 -> padded MaxPool: fold-clips makes the clip an unsigned requant (Deeploy: uint8),
    # so the Pad's value must be 0, not the int8 minimum -128 (ResNet-18 with ActivationSymmetric crashed so)
    m = Module("relu_pool")
    x = input_op(m, "x", TensorType((1, 2, 5, 5), q8(0.1)))
    r = m.create("int.requant_shift", [x], [TensorType((1, 2, 5, 5), q8(0.1))], rqs_attrs([3], 0, 2), "/rq").result
    c = m.create("int.clip", [r], [TensorType((1, 2, 5, 5), q8(0.1))], {"min": 0, "max": 127}, "/relu").result
    p = m.create("int.maxpool", [c], [TensorType((1, 2, 3, 3), q8(0.1))],
                 {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}, "/pool/MaxPool").result
    output_op(m, "y", m.create("int.requant_shift", [p], [TensorType((1, 2, 3, 3), q8(0.2))], rqs_attrs([1], 0, 2),
                               "/rqs").result)
    verify(m)
    samples = [interpreter.random_inputs(m, s) for s in range(4)]
    before = [interpreter.run(m, inputs) for inputs in samples]
    legalize(m, target)
    model = emit_onnx(m, target)
    pads = [onnx.helper.get_attribute_value(a) for n in model.graph.node if n.op_type == "Pad" for a in n.attribute
            if a.name == "value"]
    assert pads == ([] if target == "deeploy-siracusa" else [0.0])  # (Siracusa: the MaxPool's zero padding)
    device = import_deeploy_onnx(model)
    for inputs, expected in zip(samples, before):
        got = interpreter.run(device, list(inputs.values()))
        np.testing.assert_array_equal(expected["y"], got["y"])


def _gemm_module(add):
    m = Module("fc")
    x = input_op(m, "x", TensorType((1, 16), q8(0.1)))
    w = const_op(m, np.arange(-40, 40).reshape(5, 16).astype(np.int8), TensorType((5, 16), i8), "/fc/w")
    g = m.create("int.gemm", [x, w], [TensorType((1, 5), i32)], {"transA": 0, "transB": 1}, "/fc/Gemm").result
    r = m.create("int.requant_shift", [g], [TensorType((1, 5), q8(0.5, 3))],
                 rqs_attrs([1000], np.asarray(add).reshape(1, -1), 1 << 16), "/fc/rqs").result
    output_op(m, "y", r)
    return m


def test_cortexm_gemm_requant_has_a_scalar_multiplier_and_its_add_in_the_bias():
    m = _gemm_module([3 * 65536 + 7, 123456, -5, 999, 0])
    legalize(m, "deeploy-cortexm")
    [rqs] = m.walk("int.requant_shift")
    assert rqs.attrs["mul"].shape == () and int(rqs.attrs["mul"]) == 1000
    # CMSIS adds round(add / mul) before multiplying, and its Gemm merge loses a requant add when the Gemm has a
    # bias: round(add / mul) moves into the bias and add becomes 0
    np.testing.assert_array_equal(rqs.attrs["add"], [0, 0, 0, 0, 0])
    [gemm] = m.walk("int.gemm")
    np.testing.assert_array_equal(gemm.operands[2].owner.attrs["value"], [197, 123, 0, 1, 0])
    # it computes exactly what the original computes with add rounded to a multiple of mul
    rounded = run_samples(_gemm_module([197000, 123000, 0, 1000, 0]))
    for r, a in zip(rounded, run_samples(m)):
        np.testing.assert_array_equal(r["y"], a["y"])
    model = emit_onnx(m, "deeploy-cortexm")
    node = [n for n in model.graph.node if n.op_type == "RequantShift"][0]
    assert all(list(a.t.dims) == [] for a in node.attribute)  # rank-0 div keeps CMSIS's merged multiplier scalar
    assert_deeploy_structure(model, "deeploy-cortexm")
    # the exact form stays on the other platforms
    m = legalize(_gemm_module([3 * 65536 + 7, 123456, -5, 999, 0]), "deeploy-generic")
    np.testing.assert_array_equal(m.walk("int.requant_shift")[0].attrs["add"], [196615, 123456, -5, 999, 0])


def test_cortexm_takes_a_per_channel_matmul_requant_as_a_1x1_conv():
    # CMSIS fuses MatMul + RequantShift into its per-tensor fully-connected kernel, like a Gemm: refused before issue
    # 11; now per-channel-matmul-as-gemm and per-channel-gemm-as-conv write it as a 1x1 Conv with its own requant
    m = Module("mm")
    x = input_op(m, "x", TensorType((1, 16), q8(0.1)))
    w = const_op(m, np.ones((16, 5), np.int8), TensorType((16, 5), i8), "/mm/w")
    y = m.create("int.matmul", [x, w], [TensorType((1, 5), i32)], {}, "/mm/MatMul").result
    r = m.create("int.requant_shift", [y], [TensorType((1, 5), q8(0.5))],
                 rqs_attrs(np.arange(1000, 1005).reshape(1, 5), 0, 1 << 16), "/mm/rqs").result
    output_op(m, "y", r)
    before = m.clone()
    legalize(m, "deeploy-cortexm")
    assert not m.walk("int.matmul") and not m.walk("int.gemm")
    assert m.walk("int.conv")[0].attrs["kernel_shape"] == [1, 1]
    inputs = interpreter.random_inputs(before, 0)
    got = interpreter.run(m, inputs)["y"].astype(np.int64)
    assert np.max(np.abs(got - interpreter.run(before, inputs)["y"])) <= 1  # CMSIS's add rounding


def _depthwise_module(c_in, multiplier, k, seed=0):
    """x [1, c_in, 6, 6] -> depthwise conv (group c_in, c_in * multiplier outputs, k x k, pads 1, bias) -> rqs."""
    rng = np.random.default_rng(seed)
    m = Module("dw")
    x = input_op(m, "x", TensorType((1, c_in, 6, 6), q8(0.1)))
    c_out = c_in * multiplier
    w = rng.integers(-127, 128, (c_out, 1, k, k))
    w[0] = 0  # an all-zero depthwise filter stays all zero in its dense row
    attrs = {**conv_attrs(k, group=c_in), "pads": [1, 1, 1, 1]}
    shape = (1, c_out, 6 + 3 - k, 6 + 3 - k)
    wv = const_op(m, w.astype(np.int8), TensorType(w.shape, i8), "/dw/w")
    b = const_op(m, rng.integers(-300, 300, (c_out,)).astype(np.int32), TensorType((c_out,), i32), "/dw/b")
    c = m.create("int.conv", [x, wv, b], [TensorType(shape, i32)], attrs, "/dw/Conv").result
    r = m.create("int.requant_shift", [c], [TensorType(shape, q8(0.3))],
                 rqs_attrs(rng.integers(100, 200, (1, c_out, 1, 1)) * 4), "/dw/rqs").result
    output_op(m, "y", r)
    verify(m)
    return m, w


def test_cortexm_writes_a_depthwise_conv_channels_last_between_transposes():
    # the form Deeploy's CMSIS platform maps to arm_depthwise_conv: its NCHW-to-NHWC lowering leaves a Conv that
    # already says channels_first = 0 alone, so the depthwise parser sees weights [C, 1, kh, kw] with group == C
    m, w_dw = _depthwise_module(4, 1, 3)
    before = run_samples(m)
    legalize(m, "deeploy-cortexm")
    verify(m)
    [conv] = m.walk("int.conv")
    assert conv.attrs["group"] == 4 and not any(conv.attrs["pads"])
    model = emit_onnx(m, "deeploy-cortexm")
    assert_deeploy_structure(model, "deeploy-cortexm")
    nodes = list(model.graph.node)
    assert [n.op_type for n in nodes] == ["Pad", "Transpose", "Conv", "RequantShift", "Transpose"]
    pad, to_nhwc, dw, rqs, to_nchw = nodes
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in dw.attribute}
    assert dw.domain == "ai.deeploy" and attrs["channels_first"] == 0 and attrs["group"] == 4
    assert attrs["pads"] == [0, 0, 0, 0] and list(pad.attribute[1].ints) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert list(to_nhwc.attribute[0].ints) == [0, 2, 3, 1] and list(to_nchw.attribute[0].ints) == [0, 3, 1, 2]
    assert dw.input[0] == to_nhwc.output[0] and rqs.input[0] == dw.output[0] and to_nchw.input[0] == rqs.output[0]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(inits[dw.input[1]], w_dw.astype(np.int8))
    assert inits[rqs.input[1]].shape == inits[rqs.input[2]].shape == (1, 1, 1, 4)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(model.graph.value_info) + list(model.graph.output)}
    assert shapes[to_nhwc.output[0]] == [1, 8, 8, 4] and shapes[dw.output[0]] == [1, 6, 6, 4]
    assert shapes[rqs.output[0]] == [1, 6, 6, 4] and shapes[to_nchw.output[0]] == [1, 4, 6, 6]
    # the legalised IR and the written graph (read back through its channels-last Conv) compute the same integers
    device = import_deeploy_onnx(model)
    for seed, (b, a) in enumerate(zip(before, run_samples(m))):
        np.testing.assert_array_equal(b["y"], a["y"])
        inputs = interpreter.random_inputs(m, seed)
        np.testing.assert_array_equal(list(interpreter.run(device, list(inputs.values())).values())[0], b["y"])


def test_cortexm_refuses_a_depthwise_conv_with_a_channel_multiplier():
    m, _ = _depthwise_module(3, 2, 3)
    with pytest.raises(BackendError) as e:
        legalize(m, "deeploy-cortexm")
    assert str(e.value) == ("node '/dw/Conv' (int.conv): grouped int.conv (group 3, 3 -> 6 channels) is neither dense "
                            "nor depthwise (target deeploy-cortexm)")


# a platform without any depthwise Conv: the dense block-diagonal form (verified on Deeploy's CMSIS platform too)
DENSE_DEPTHWISE = dataclasses.replace(get_target("deeploy-cortexm"), name="deeploy-cortexm-dense",
                                      depthwise_conv=False, dense_depthwise_cap_kib=64)


@pytest.mark.parametrize("c_in, multiplier", [(4, 1), (3, 2)])
def test_depthwise_conv_becomes_an_exact_block_diagonal_dense_conv(c_in, multiplier):
    m, w_dw = _depthwise_module(c_in, multiplier, 3)
    before = run_samples(m)
    legalize(m, DENSE_DEPTHWISE)
    verify(m)
    [conv] = m.walk("int.conv")
    assert conv.attrs["group"] == 1
    w = np.asarray(conv.operands[1].owner.attrs["value"])
    c_out = c_in * multiplier
    assert w.shape == (c_out, c_in, 3, 3) and w.dtype == np.int8
    for o in range(c_out):
        for i in range(c_in):
            np.testing.assert_array_equal(w[o, i], w_dw[o, 0] if i == o // multiplier else 0)
    model = emit_onnx(m, DENSE_DEPTHWISE)
    assert [n.op_type for n in model.graph.node] == ["Conv", "RequantShift"]
    assert_deeploy_structure(model, DENSE_DEPTHWISE)
    device = import_deeploy_onnx(model)
    for seed, (b, a) in enumerate(zip(before, run_samples(m))):
        np.testing.assert_array_equal(b["y"], a["y"])
        inputs = interpreter.random_inputs(m, seed)
        np.testing.assert_array_equal(list(interpreter.run(device, list(inputs.values())).values())[0], b["y"])


def test_other_targets_keep_depthwise_convs_channels_first():
    for target in ("deeploy-generic", "deeploy-siracusa"):
        m, _ = _depthwise_module(4, 1, 3)
        legalize(m, target)
        assert m.walk("int.conv")[0].attrs["group"] == 4
        model = emit_onnx(m, target)
        assert [n.op_type for n in model.graph.node if n.op_type != "Pad"] == ["Conv", "RequantShift"]
        assert not any(a.name == "channels_first" for n in model.graph.node for a in n.attribute)


def test_dense_depthwise_cap_is_per_layer_and_inclusive():
    # 64 channels, 4x4 kernel: exactly 64 KiB of dense int8 weights, accepted; 65 channels: 66.02 KiB, refused
    m, _ = _depthwise_module(64, 1, 4)
    legalize(m, DENSE_DEPTHWISE)
    assert m.walk("int.conv")[0].operands[1].type.shape == (64, 64, 4, 4)
    m, _ = _depthwise_module(65, 1, 4)
    with pytest.raises(BackendError) as e:
        legalize(m, DENSE_DEPTHWISE)
    assert str(e.value) == ("node '/dw/Conv' (int.conv): depthwise conv would need 67 KiB of dense weights on "
                            "deeploy-cortexm-dense (cap 64 KiB); the platform takes no depthwise Conv")
    # cap 0: every depthwise Conv is refused
    m, _ = _depthwise_module(4, 1, 3)
    with pytest.raises(BackendError) as e:
        legalize(m, dataclasses.replace(DENSE_DEPTHWISE, dense_depthwise_cap_kib=0))
    assert str(e.value) == ("node '/dw/Conv' (int.conv): depthwise int.conv has no working form on this platform "
                            "(target deeploy-cortexm-dense)")


def test_cortexm_pads_dense_conv_squarely():
    m = Module("dense")
    x = input_op(m, "x", TensorType((1, 4, 6, 6), q8(0.1)))
    w = const_op(m, np.ones((2, 4, 3, 3), np.int8), TensorType((2, 4, 3, 3), i8), "/c/w")
    c = m.create("int.conv", [x, w], [TensorType((1, 2, 5, 5), i32)], conv_attrs(3, (1, 0, 0, 1)), "/c/Conv").result
    r = m.create("int.requant_shift", [c], [TensorType((1, 2, 5, 5), q8(0.3))], rqs_attrs([5]), "/c/rqs").result
    output_op(m, "y", r)
    before = run_samples(m)
    legalize(m, "deeploy-cortexm")
    model = emit_onnx(m, "deeploy-cortexm")
    assert [n.op_type for n in model.graph.node] == ["Pad", "Conv", "RequantShift"]
    assert_deeploy_structure(model, "deeploy-cortexm")
    for b, a in zip(before, run_samples(m)):
        np.testing.assert_array_equal(b["y"], a["y"])


def test_conv_padding_a_shifted_tensor_with_zeros_is_refused():
    m = Module("zp")
    x = input_op(m, "x", TensorType((1, 2, 4, 4), q8(0.1, -128)))
    conv_rqs(m, x, np.ones((2, 2, 3, 3)), None, [5], "/c/Conv", q8(0.3))
    output_op(m, "y", m.walk("int.requant_shift")[0].result)
    with pytest.raises(BackendError) as e:
        legalize(m, "deeploy-generic")
    assert str(e.value) == ("node '/c/Conv' (int.conv): int.conv pads with zeros a tensor whose zero point is [-128] "
                            "(the padding needs an explicit int.pad with the zero point) (target deeploy-generic)")


def _padded_sum_pool_of_a_shifted_tensor():
    """x (int8, zero point -128) -> 3x3 sum pool padded by 1 -> requant: the padding must add stored zeros."""
    m = Module("avg")
    x = input_op(m, "x", TensorType((1, 2, 4, 4), q8(0.1, -128)))
    s = m.create("int.sumpool", [x], [TensorType((1, 2, 4, 4), i32)],
                 {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}, "/avg/AveragePool").result
    r = m.create("int.requant_shift", [s], [TensorType((1, 2, 4, 4), q8(0.1, -128))], rqs_attrs([7282], 0, 1 << 16),
                 "/avg/rqs").result
    output_op(m, "y", r)
    return m


def test_padded_sum_pool_of_a_shifted_tensor_pads_zeros_explicitly():
    m = _padded_sum_pool_of_a_shifted_tensor()
    before = run_samples(m)
    legalize(m, "deeploy-generic")
    model = emit_onnx(m, "deeploy-generic")
    assert [n.op_type for n in model.graph.node] == ["Pad", "Conv", "RequantShift"]
    assert_deeploy_structure(model, "deeploy-generic")
    for b, a in zip(before, run_samples(m)):
        np.testing.assert_array_equal(b["y"], a["y"])


def test_padded_sum_pool_on_siracusa_pads_zeros_in_the_conv():
    # Siracusa's tiled flow has no Pad: the sum pool's stored zeros are the depthwise Conv's own padding
    m = _padded_sum_pool_of_a_shifted_tensor()
    model = _assert_written_file_exact(m, "deeploy-siracusa")
    assert [n.op_type for n in model.graph.node] == ["Conv", "RequantShift"]
    assert [list(a.ints) for a in model.graph.node[0].attribute if a.name == "pads"] == [[1, 1, 1, 1]]


# ----- clips that do not follow a single-use requant, and CMSIS requant gains --------------------------------------
def _assert_written_file_exact(m, target, seeds=range(4)):
    """Legalise and emit `m` for `target`; the written graph, read back, computes exactly what `m` computed before."""
    return assert_written_graph_exact(m, target, seeds)


def _requants(model):
    """(name, mul, add, div, signed, n_levels) of every RequantShift node, in graph order."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    rows = []
    for n in model.graph.node:
        if n.op_type == "RequantShift":
            a = {x.name: int(numpy_helper.to_array(x.t).reshape(-1)[0]) for x in n.attribute}
            rows.append((n.name, inits[n.input[1]].reshape(-1).tolist(), inits[n.input[2]].reshape(-1).tolist(),
                         a["div"], a["signed"], a["n_levels_out"]))
    return rows


def _relu_on_input():
    """input (i8, zp 0) -> ReLU -> conv 1x1 -> rqs -> flatten -> gemm -> rqs: the fuzz suite's minimal refusal."""
    rng = np.random.default_rng(3)
    m = Module("relu_on_input")
    x = input_op(m, "x", TensorType((1, 3, 4, 4), q8(0.02)))
    r = m.create("int.clip", [x], [TensorType((1, 3, 4, 4), q8(0.02))], {"min": 0, "max": 127}, "/relu").result
    wv = const_op(m, rng.integers(-127, 128, (4, 3, 1, 1)).astype(np.int8), TensorType((4, 3, 1, 1), i8), "/conv/w")
    c = m.create("int.conv", [r, wv], [TensorType((1, 4, 4, 4), i32)], conv_attrs(1, pads=(0, 0, 0, 0)),
                 "/conv").result
    c = m.create("int.requant_shift", [c], [TensorType((1, 4, 4, 4), q8(0.05))], rqs_attrs([700], 0, 1 << 14),
                 "/conv/rqs").result
    f = m.create("int.flatten", [c], [TensorType((1, 64), q8(0.05))], {"axis": 1}, "/flatten").result
    gw = const_op(m, rng.integers(-127, 128, (5, 64)).astype(np.int8), TensorType((5, 64), i8), "/fc/w")
    g = m.create("int.gemm", [f, gw], [TensorType((1, 5), i32)], {"transA": 0, "transB": 1}, "/fc").result
    y = m.create("int.requant_shift", [g], [TensorType((1, 5), q8(0.1))], rqs_attrs([300], 0, 1 << 14),
                 "/fc/rqs").result
    output_op(m, "y", y)
    verify(m)
    return m


@pytest.mark.parametrize("target, expected", [
    # Generic: one RequantShift that only clips, unsigned 0..127
    ("deeploy-generic", [("relu", [1], [0], 1, 0, 128)]),
    # int8-only targets: clip to -64..63 around 64, then add 64 back (mul = div = 2 on Siracusa)
    ("deeploy-siracusa", [("relu", [2], [-128], 2, 1, 128), ("relu_offset", [2], [128], 2, 1, 256)]),
    ("deeploy-cortexm", [("relu", [1], [-64], 1, 1, 128), ("relu_offset", [1], [64], 1, 1, 256)]),
])
def test_relu_on_a_graph_input_becomes_requants_that_only_clip(target, expected):
    model = _assert_written_file_exact(_relu_on_input(), target)
    rows = _requants(model)
    assert rows[:len(expected)] == expected
    producers = {n.output[0]: n for n in model.graph.node}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert producers[conv.input[0]].name == expected[-1][0]


def _preact_block(relu_after_add=None):
    """conv -> rqs r1 -> ReLU -> conv -> rqs r2 ; r1 + r2 (equal scales) -> rqs [-> ReLU] -> output.  Without
    `relu_after_add`, r1 has two users: the ReLU and the residual Add; with it, the ReLU follows the Add, as an
    int.clip ("clip") or as the residual requant's own 0..127 range ("levels")."""
    rng = np.random.default_rng(5)
    m = Module("preact")
    x = input_op(m, "x", TensorType((1, 3, 4, 4), q8(0.02)))
    r1 = conv_rqs(m, x, rng.integers(-127, 128, (4, 3, 3, 3)), rng.integers(-300, 300, (4,)), [900], "/conv1",
                  q8(0.05))
    a = r1
    if not relu_after_add:
        a = m.create("int.clip", [r1], [r1.type], {"min": 0, "max": 127}, "/relu1").result
    r2 = conv_rqs(m, a, rng.integers(-127, 128, (4, 4, 3, 3)), None, [800], "/conv2", q8(0.05))
    shape = (1, 4, 4, 4)
    s = m.create("int.add", [r1, r2], [TensorType(shape, i32)], {}, "/add").result
    if relu_after_add == "levels":  # the ReLU already in the requant, as lower-to-int writes it
        y = m.create("int.requant_shift", [s], [TensorType(shape, q8(0.1))],
                     rqs_attrs([1 << 15], signed=False, n_levels=128), "/add/rqs").result
    else:
        y = m.create("int.requant_shift", [s], [TensorType(shape, q8(0.1))], rqs_attrs([1 << 15]),
                     "/add/rqs").result
    if relu_after_add == "clip":
        y = m.create("int.clip", [y], [y.type], {"min": 0, "max": 127}, "/relu2").result
    output_op(m, "y", y)
    verify(m)
    return m


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_relu_on_a_requant_that_also_feeds_a_residual_add_keeps_the_requant_whole(target):
    model = _assert_written_file_exact(_preact_block(), target)
    rows = {r[0]: r for r in _requants(model)}
    assert rows["conv1_rqs"][4:] == (1, 256)  # the fused requant keeps its full range
    consumers = [n for n in model.graph.node if "conv1_rqs_out" in n.input]
    assert "relu1" in [n.name for n in consumers] and "Conv" not in [n.op_type for n in consumers]
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert [n.name for n in model.graph.node if conv1.output[0] in n.input] == ["conv1_rqs"]


@pytest.mark.parametrize("relu", ["clip", "levels"])
def test_siracusa_relu_after_a_residual_add_is_the_full_range_add_then_a_clip(relu):
    model = _assert_written_file_exact(_preact_block(relu_after_add=relu), "deeploy-siracusa")
    rows = _requants(model)
    add = next(n for n in model.graph.node if n.op_type == "Add")
    after_add = [n for n in model.graph.node if add.output[0] in n.input]
    assert [n.op_type for n in after_add] == ["RequantShift"]
    by_name = {r[0]: r for r in rows}
    assert by_name[after_add[0].name][4:] == (1, 256)  # RequantizedAdd clips to the full int8 range
    clip = "relu2" if relu == "clip" else "add_rqs_clip"
    assert rows[-2:] == [(clip, [2], [-128], 2, 1, 128), (clip + "_offset", [2], [128], 2, 1, 256)]
    # Generic folds the ReLU into the residual requant; CortexM clips after it (its Add is not fused)
    generic = _requants(_assert_written_file_exact(_preact_block(relu_after_add=relu), "deeploy-generic"))
    assert generic[-1][0] == "add_rqs" and generic[-1][4:] == (0, 128)
    cortexm = _requants(_assert_written_file_exact(_preact_block(relu_after_add=relu), "deeploy-cortexm"))
    assert [r[1:] for r in cortexm[-2:]] == [([1], [-64], 1, 1, 128), ([1], [64], 1, 1, 256)]


def test_clip_to_an_odd_number_of_levels_that_both_bind_is_refused_on_int8_only_targets():
    def relu6_like():
        m = Module("relu6")
        x = input_op(m, "x", TensorType((1, 8), q8(0.05)))
        c = m.create("int.clip", [x], [x.type], {"min": 0, "max": 120}, "/relu6").result
        output_op(m, "y", c)
        return m

    with pytest.raises(BackendError) as e:
        legalize(relu6_like(), "deeploy-cortexm")
    assert str(e.value) == ("node '/relu6' (int.clip): int.clip to 0..120 has no form on this platform (a "
                            "RequantShift clips to an even number of levels within 8 bits; Deeploy has no integer "
                            "Clip) (target deeploy-cortexm)")
    model = _assert_written_file_exact(relu6_like(), "deeploy-generic")
    assert _requants(model) == [("relu6", [1], [0], 1, 0, 121)]


def _conv_with_gain(mul, div):
    rng = np.random.default_rng(7)
    m = Module("gain")
    x = input_op(m, "x", TensorType((1, 3, 4, 4), q8(0.5)))
    wv = const_op(m, rng.integers(-3, 4, (2, 3, 1, 1)).astype(np.int8), TensorType((2, 3, 1, 1), i8), "/conv/w")
    c = m.create("int.conv", [x, wv], [TensorType((1, 2, 4, 4), i32)], conv_attrs(1, pads=(0, 0, 0, 0)),
                 "/conv").result
    y = m.create("int.requant_shift", [c], [TensorType((1, 2, 4, 4), q8(0.01))], rqs_attrs([mul], 0, div),
                 "/conv/rqs").result
    output_op(m, "y", y)
    return m


def test_cortexm_refuses_a_conv_requant_gain_of_one_or_more():
    with pytest.raises(BackendError) as e:
        legalize(_conv_with_gain(2048, 2048), "deeploy-cortexm")
    assert str(e.value) == ("node '/conv/rqs' (int.requant_shift): requant gain mul/div = 2048/2048 = 1 after a "
                            "Conv: Deeploy's CMSIS merge turns it into the Q31 multiplier 2147483648, which "
                            "overflows int32 (the fused kernel takes gains below 1 only) (target deeploy-cortexm)")
    with pytest.raises(BackendError, match=r"gain mul/div = 51200/2048 = 25 after a Conv.* 3355443200"):
        legalize(_conv_with_gain(51200, 2048), "deeploy-cortexm")
    # just below 1: the merged multiplier is mul * 2^(31 - 11) = 2147483648 - 2^20, within int32
    legalize(_conv_with_gain(2047, 2048), "deeploy-cortexm")
    # the other platforms requantize in int32 arithmetic and take the gain
    _assert_written_file_exact(_conv_with_gain(51200, 2048), "deeploy-generic")
    _assert_written_file_exact(_conv_with_gain(51200, 2048), "deeploy-siracusa")


def test_cortexm_takes_the_unit_gain_gemm_requant_its_merge_can_hold():
    # a Gemm/MatMul requant with mul = div = 1 merges into multiplier 2^30 with shift 1 (a global pool over a 1x1
    # map); mul = div = 2 would give 2^31, which does not fit, so smallest-exact-shift writes it 1/1 (exact); a gain
    # above 1 (3/2) fits no way
    m = _gemm_module([0, 0, 0, 0, 0])
    rqs = m.walk("int.requant_shift")[0]
    rqs.attrs.update(mul=np.array([1], np.int64), div=1)
    legalize(m, "deeploy-cortexm")
    m = _gemm_module([0, 0, 0, 0, 0])
    rqs = m.walk("int.requant_shift")[0]
    rqs.attrs.update(mul=np.array([2], np.int64), div=2)
    legalize(m, "deeploy-cortexm")
    assert int(np.asarray(rqs.attrs["mul"])) == 1 and int(rqs.attrs["div"]) == 1
    m = _gemm_module([0, 0, 0, 0, 0])
    m.walk("int.requant_shift")[0].attrs.update(mul=np.array([3], np.int64), div=2)
    with pytest.raises(BackendError, match=r"requant gain mul/div = 3/2 = 1.5 after a Gemm.* overflows int32"):
        legalize(m, "deeploy-cortexm")


@pytest.mark.parametrize("target, storage, zp, lo, expected", [
    # ReLU of an i8 tensor with zero point -51: 179 levels -51..127, widened to 180 above the storage maximum
    ("deeploy-siracusa", "i8", -51, -51, [("relu", [2], [-78], 2, 1, 180), ("relu_offset", [2], [78], 2, 1, 256)]),
    ("deeploy-cortexm", "i8", -51, -51, [("relu", [1], [-39], 1, 1, 180), ("relu_offset", [1], [39], 1, 1, 256)]),
    ("deeploy-generic", "i8", -51, -51, [("relu", [1], [-39], 1, 1, 180), ("relu_offset", [1], [39], 1, 1, 256)]),
    # ReLU of a u8 tensor with zero point 48 on Generic: 48..255 around 152, back to unsigned 0..255
    ("deeploy-generic", "u8", 48, 48, [("relu", [1], [-152], 1, 1, 208), ("relu_offset", [1], [152], 1, 0, 256)]),
])
def test_relu_of_a_zero_point_shifted_tensor_is_a_clip_around_an_offset(target, storage, zp, lo, expected):
    m = Module("relu_zp")
    t = TensorType((1, 64), q8(0.05, zp, signed=storage == "i8"))
    x = input_op(m, "x", t)
    c = m.create("int.clip", [x], [t], {"min": lo, "max": int(t.element.max)}, "/relu").result
    output_op(m, "y", c)
    model = _assert_written_file_exact(m, target, seeds=range(8))
    assert _requants(model) == expected
