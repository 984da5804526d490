"""Rank-3 channel tensors (Conv1d, 1-D pooling, per-channel requants of [N, C, L]) reach Deeploy as rank-4
[N, C, 1, L] on every target (`qirc/backends/deeploy/rules/rank.py`); token tensors that only meet MatMul stay rank 3."""
import json

import numpy as np
import onnx
import pytest

from onnx_builders import GraphBuilder
from qirc.backends.deeploy.legalize import legalize
from qirc.backends.deeploy.rules.rank import lift_rank3
from qirc.backends.deeploy.targets import get_target
from qirc.driver import compile_model
from qirc.lowering import lower_module
from qirc.lowering.testing import QuantBuilder
from qirc.qir import interpreter
from qirc.qir.types import u8
from qirc.qir.verifier import verify

TARGETS = ("deeploy-generic", "deeploy-siracusa", "deeploy-cortexm")


def conv1d_net(head: str = "pool"):
    rng = np.random.default_rng(2)
    b = QuantBuilder()
    x = b.input("x", (1, 4, 16), 0.05)
    y = b.conv(x, rng.integers(-127, 128, (8, 4, 3)), rng.uniform(0.002, 0.004, 8),
               bias=rng.integers(-2000, 2000, 8), pads=(1, 1), strides=(1,))
    y = b.quant(b.op("onnx.Relu", [y]), 0.05, storage=u8)
    y = b.quant(b.op("onnx.MaxPool", [y], {"kernel_shape": [2], "strides": [2], "pads": [0, 0]}), 0.05, storage=u8)
    y = b.conv(y, rng.integers(-127, 128, (8, 8, 3)), 0.003, bias=rng.integers(-2000, 2000, 8), pads=(1, 1),
               strides=(1,))
    y = b.quant(b.op("onnx.Relu", [y]), 0.05, storage=u8)
    if head == "pool":
        y = b.quant(b.op("onnx.ReduceMean", [y], {"axes": [2], "keepdims": 0}), 0.03, storage=u8)
        y = b.gemm(y, rng.integers(-127, 128, (5, 8)), 0.01, bias=rng.integers(-500, 500, 5))
    else:
        y = b.quant(b.op("onnx.Flatten", [y], {"axis": 1}), 0.05, storage=u8)
        y = b.gemm(y, rng.integers(-127, 128, (5, 64)), 0.01, bias=rng.integers(-500, 500, 5))
    b.output("y", b.quant(y, 0.1))
    return b.module


@pytest.mark.parametrize("head", ["pool", "flatten"])
@pytest.mark.parametrize("target", TARGETS)
def test_conv1d_network_is_legalised_at_rank_4_exactly(head, target):
    t = get_target(target)
    module = conv1d_net(head)
    lower_module(module, signed=t.signed_normalize)
    before = module.clone()
    legalize(module, t)
    verify(module)
    for op in module.walk("int.conv") + module.walk("int.maxpool") + module.walk("int.matmul"):
        if op.name != "int.matmul":
            assert op.operands[0].type.rank == 4 and op.results[0].type.rank == 4, op
    for rq in module.walk("int.requant_shift"):
        assert rq.operands[0].type.rank in (2, 4)
    # the graph's interface keeps its rank-3 input
    assert module.inputs[0].results[0].type.shape == (1, 4, 16)
    for seed in range(3):
        inputs = interpreter.random_inputs(before, seed)
        expected = interpreter.run(before, inputs)["y"]
        got = interpreter.run(module, inputs)["y"]
        if target == "deeploy-cortexm":
            # CMSIS's requant merge rounds add to a multiple of mul (stated in the graph): up to one step
            assert np.max(np.abs(got.astype(np.int64) - expected)) <= 1
        else:
            np.testing.assert_array_equal(got, expected)


def test_lift_rewrites_the_window_and_the_requant_parameters():
    module = conv1d_net("flatten")
    lower_module(module)
    before = module.clone()
    assert lift_rank3(module) > 0
    verify(module)
    assert [op.name for op in module.ops() if op.name not in ("qir.const",)] == [
        "qir.input", "int.reshape", "int.conv", "int.requant_shift", "int.maxpool", "int.conv", "int.requant_shift",
        "int.flatten", "int.gemm", "int.requant_shift", "qir.output"]
    conv = module.walk("int.conv")[0]
    assert conv.attrs["kernel_shape"] == [1, 3] and conv.attrs["pads"] == [0, 1, 0, 1]
    assert conv.operands[1].type.shape == (8, 4, 1, 3)
    assert module.walk("int.maxpool")[0].attrs["kernel_shape"] == [1, 2]
    assert np.asarray(module.walk("int.requant_shift")[0].attrs["mul"]).shape == (1, 8, 1, 1)
    # the flatten reads the rank-4 tensor directly: same data order, same [1, 64]
    assert module.walk("int.flatten")[0].operands[0].type.shape == (1, 8, 1, 8)
    inputs = interpreter.random_inputs(before, 0)
    np.testing.assert_array_equal(interpreter.run(module, inputs)["y"], interpreter.run(before, inputs)["y"])


def test_token_tensors_that_only_meet_matmul_stay_rank_3():
    rng = np.random.default_rng(1)
    b = QuantBuilder()
    x = b.input("x", (1, 6, 8), 0.05)
    w = b.qconst(rng.integers(-127, 128, (8, 4)), b.qtype(0.01))
    b.output("y", b.quant(b.op("onnx.MatMul", [x, w]), 0.1))
    lower_module(b.module)
    assert lift_rank3(b.module) == 0
    assert b.module.walk("int.matmul")[0].operands[0].type.shape == (1, 6, 8)


def qdq_conv1d_model():
    """onnxruntime's QDQ layout for a Conv1d -> ReLU -> global pool -> Linear net (u8 activations, zero point 128)."""
    rng = np.random.default_rng(3)
    b = GraphBuilder("conv1d")
    x = b.qdq(b.input("x", [1, 4, 16]), 1 / 32, 128, dtype=np.uint8, prefix="/in")
    w = b.dequantize_linear(rng.integers(-127, 128, (8, 4, 3)).astype(np.int8),
                            rng.uniform(0.002, 0.004, 8).astype(np.float32), np.zeros(8, np.int8), axis=0,
                            prefix="/c1/w")
    bias = b.dequantize_linear(rng.integers(-900, 900, 8).astype(np.int32),
                               (np.float32(1 / 32) * rng.uniform(0.002, 0.004, 8)).astype(np.float32),
                               axis=0, prefix="/c1/b")
    y = b.node("Conv", [x, w, bias], name="/c1/Conv", pads=[1, 1])
    y = b.qdq(b.node("Relu", [y], name="/c1/Relu"), 0.02, 0, dtype=np.uint8, prefix="/c1/out")
    y = b.qdq(b.node("ReduceMean", [y], name="/pool/ReduceMean", axes=[2], keepdims=0), 0.01, 0, dtype=np.uint8,
              prefix="/pool/out")
    fc = b.dequantize_linear(rng.integers(-127, 128, (8, 5)).astype(np.int8), np.float32(0.01), np.int8(0),
                             prefix="/fc/w")
    y = b.qdq(b.node("MatMul", [y, fc], name="/fc/MatMul"), 0.05, 128, dtype=np.uint8, prefix="/fc/out")
    b.output(y, "y")
    return b.build(opset=13)


@pytest.mark.parametrize("target", TARGETS)
def test_qdq_conv1d_compiles_for_every_target(target, tmp_path):
    path = tmp_path / "conv1d.onnx"
    onnx.save(qdq_conv1d_model(), path)
    summary = compile_model(str(path), target, str(tmp_path / "out"))
    emitted = onnx.load(str(tmp_path / "out" / "network.onnx"))
    kernels = [list(a.ints) for n in emitted.graph.node if n.op_type == "Conv" for a in n.attribute
               if a.name == "kernel_shape"]
    assert [1, 3] in kernels  # (siracusa adds one-hot padding Convs in front: its Conv takes equal pads only)
    report = json.loads((tmp_path / "out" / "qirc.json").read_text())
    assert report["inputs"][0]["shape"] == [1, 4, 16]
    assert summary.accuracy["outputs"][0]["max_error_steps"] <= 1.0 + 1e-6


def conv1d_feature_model():
    """A Conv1d whose rank-3 output [1, 8, 16] (int8) is the graph output: no head."""
    rng = np.random.default_rng(5)
    b = GraphBuilder("conv1d_features")
    x = b.qdq(b.input("x", [1, 4, 16]), 1 / 32, 0, prefix="/in")
    w = b.dequantize_linear(rng.integers(-127, 128, (8, 4, 3)).astype(np.int8), np.float32(0.01), prefix="/c1/w")
    b.output(b.qdq(b.node("Conv", [x, w], name="/c1/Conv", pads=[1, 1]), 0.05, 0, prefix="/c1/out"), "y")
    return b.build(opset=13)


@pytest.mark.parametrize("target", TARGETS)
def test_a_conv1d_output_of_rank_3_compiles_for_every_target(target, tmp_path, capsys):
    """The Conv runs at rank 4 and its output is reshaped back to [N, C, L]; a graph may not end in that Reshape
    (Deeploy leaves the buffer zero), so a RequantShift that only copies follows it (before: refused on every
    target, "the graph ends in a reshape")."""
    from qirc.cli import main
    path = tmp_path / "conv1d.onnx"
    onnx.save(conv1d_feature_model(), path)
    assert main([str(path), "--target", target, "-o", str(tmp_path / "out")]) == 0
    emitted = onnx.load(str(tmp_path / "out" / "network.onnx"))
    assert [n.op_type for n in emitted.graph.node][-2:] == ["Reshape", "RequantShift"]
    assert [d.dim_value for d in emitted.graph.output[0].type.tensor_type.shape.dim] == [1, 8, 16]
    report = json.loads((tmp_path / "out" / "qirc.json").read_text())
    assert report["outputs"][0]["shape"] == [1, 8, 16]
    assert report["accuracy"]["outputs"][0]["max_error_steps"] <= 1.0 + 1e-3  # a rounding tie at most


def token_net():
    rng = np.random.default_rng(1)
    b = QuantBuilder()
    x = b.input("x", (1, 6, 8), 0.05)
    w = b.qconst(rng.integers(-127, 128, (8, 4)), b.qtype(rng.uniform(0.005, 0.02, 4), axis=1))
    y = b.quant(b.op("onnx.MatMul", [x, w]), 0.1)
    w2 = b.qconst(rng.integers(-127, 128, (4, 3)), b.qtype(0.01))
    b.output("y", b.quant(b.op("onnx.MatMul", [y, w2]), 0.1))
    return b.module


@pytest.mark.parametrize("target", TARGETS)
def test_per_channel_token_matmul_is_2d(target):
    """[N, T, D] x per-channel [D, E]: the requant varies along the last axis of a rank-3 tensor, which no Deeploy
    form takes; as Reshape [N*T, D] -> 2-D MatMul -> RequantShift [E] -> Reshape it does (token-matmuls-2d), and
    cortex-m goes on to a Gemm and a 1x1 Conv (per-channel-matmul-as-gemm, per-channel-gemm-as-conv)."""
    t = get_target(target)
    module = token_net()
    lower_module(module, signed=t.signed_normalize)
    before = module.clone()
    legalize(module, t)
    verify(module)
    for rq in module.walk("int.requant_shift"):
        mul = np.asarray(rq.attrs["mul"])
        assert mul.size == 1 or rq.operands[0].type.rank in (2, 4)
    if target == "deeploy-cortexm":  # its MatMul kernel takes one multiplier: a 1x1 Conv
        assert [c.attrs["kernel_shape"] for c in module.walk("int.conv")] == [[1, 1]]
    assert module.outputs[0].operands[0].type.shape == (1, 6, 3)
    for seed in range(3):
        inputs = interpreter.random_inputs(before, seed)
        expected = interpreter.run(before, inputs)["y"].astype(np.int64)
        got = interpreter.run(module, inputs)["y"].astype(np.int64)
        assert np.max(np.abs(got - expected)) <= (1 if target == "deeploy-cortexm" else 0)
