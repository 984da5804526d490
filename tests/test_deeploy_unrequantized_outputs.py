"""A last Linear layer without an output quantizer (Brevitas QuantLinear with no output_quant, a QDQ Gemm/MatMul whose
result stays float): its int32 accumulator is the graph's output.  Siracusa and cortex-m have no bare integer Gemm
(PULPOpen maps an integer Gemm only fused with its RequantShift, CMSIS only RequantizedGemm), so such a Gemm is
written as MatMul int8 x int8 -> int32 and an Add of its bias (rule bare-gemm-as-matmul), a uint8 input first moved
to int8.  Checked with Deeploy: Siracusa tiled and untiled code generated, QEMU-ARM code generated, and both folders
Errors: 0 on Generic."""
import json

import numpy as np
import onnx
import pytest

from onnx_builders import GraphBuilder, ort_run
from real_models import example
from qirc.cli import main
from qirc.frontends.deeploy import import_deeploy_onnx
from qirc.qir import interpreter

X_SCALE, H_SCALE, W_SCALE = 1 / 32, 0.05, 0.01


def last_linear_model(last: str) -> onnx.ModelProto:
    """x -> int8 -> Gemm + bias -> ReLU -> uint8 -> `last` ("gemm": Gemm with an int32 bias; "matmul": a bias-free
    MatMul, as Brevitas exports QuantLinear(bias=False)) -> float output, no quantizer after it."""
    rng = np.random.default_rng(5)
    b = GraphBuilder("last_linear")
    x = b.qdq(b.input("x", [1, 16]), X_SCALE, 0, prefix="/in")
    w1 = b.dequantize_linear(rng.integers(-127, 128, (12, 16)).astype(np.int8), np.float32(W_SCALE), prefix="/fc1/w")
    b1 = b.dequantize_linear(rng.integers(-400, 400, (12,)).astype(np.int32), np.float32(X_SCALE * W_SCALE),
                             prefix="/fc1/b")
    h = b.node("Gemm", [x, w1, b1], name="/fc1/Gemm", transB=1)
    h = b.qdq(b.node("Relu", [h], name="/relu/Relu"), H_SCALE, 0, dtype=np.uint8, prefix="/relu/out")
    w2 = rng.integers(-127, 128, (4, 12)).astype(np.int8)
    if last == "gemm":
        b2 = b.dequantize_linear(rng.integers(-3000, 3000, (4,)).astype(np.int32), np.float32(H_SCALE * W_SCALE),
                                 prefix="/fc2/b")
        y = b.node("Gemm", [h, b.dequantize_linear(w2, np.float32(W_SCALE), prefix="/fc2/w"), b2],
                   name="/fc2/Gemm", transB=1)
    else:
        y = b.node("MatMul", [h, b.dequantize_linear(np.ascontiguousarray(w2.T), np.float32(W_SCALE),
                                                     prefix="/fc2/w")], name="/fc2/MatMul")
    b.output(y, "y")
    return b.build(opset=13)


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def _elem_types(model):
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)
             + list(model.graph.output)}
    return types


@pytest.mark.parametrize("last", ["gemm", "matmul"])
@pytest.mark.parametrize("target", ["deeploy-siracusa", "deeploy-cortexm"])
def test_unrequantized_last_linear_is_an_int8_matmul_and_a_bias_add(target, last, tmp_path):
    model = last_linear_model(last)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    out = tmp_path / "out"
    assert main([str(path), "--target", target, "-o", str(out)]) == 0
    emitted = onnx.load(str(out / "network.onnx"))
    producers, types = _producers(emitted), _elem_types(emitted)
    # the output is the int32 sum of a MatMul and its bias: no Gemm without a requant after it
    last_node = producers["y"]
    assert last_node.op_type == "Add" and types["y"] == onnx.TensorProto.INT32
    mm = next(producers[t] for t in last_node.input if t in producers)
    assert mm.op_type == "MatMul"
    assert types[mm.input[0]] == onnx.TensorProto.INT8  # the platforms' MatMul takes int8 x int8 only
    users = {t: [n.op_type for n in emitted.graph.node if t in n.input] for n in emitted.graph.node for t in n.output}
    for n in emitted.graph.node:
        if n.op_type == "Gemm":
            assert users[n.output[0]] == ["RequantShift"]  # every Gemm is fused with its requant
    report = json.loads((out / "qirc.json").read_text())
    (y_info,) = report["outputs"]
    assert y_info["dtype"] == "int32" and y_info["zero_point"] == 0
    # the device graph against onnxruntime (optimisations off) on the model file: int32 sums, so exact up to the
    # input's rounding
    device = import_deeploy_onnx(emitted)
    rng = np.random.default_rng(1)
    for _ in range(4):
        x = rng.uniform(-3, 3, (1, 16)).astype(np.float32)
        xq = np.clip(np.rint(x / X_SCALE), -128, 127).astype(np.int64)
        got = list(interpreter.run(device, [xq]).values())[0].astype(np.float64) * y_info["scale"]
        ref = ort_run(model, {"x": x})["y"]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_unrequantized_conv_output_is_refused_with_what_to_change(tmp_path, capsys):
    """A bare Conv (int32 output) has no kernel on Siracusa / cortex-m: one line naming the node, the target and
    what to change in the model, exit 1, nothing written."""
    b = GraphBuilder("last_conv")
    x = b.qdq(b.input("x", [1, 2, 4, 4]), X_SCALE, 0, prefix="/in")
    w = b.dequantize_linear(np.ones((3, 2, 1, 1), np.int8), np.float32(W_SCALE), prefix="/conv/w")
    b.output(b.node("Conv", [x, w], name="/head/Conv"), "y")
    path = tmp_path / "m.onnx"
    onnx.save(b.build(opset=13), path)
    assert main([str(path), "--target", "deeploy-siracusa", "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "/head/Conv" in err[0] and "deeploy-siracusa" in err[0] and "output quantizer" in err[0]
    assert not (tmp_path / "out").exists()


def test_int32_output_error_is_printed_in_accumulator_steps(tmp_path, capsys):
    """An int32 output's error is counted in steps of its accumulator scale, far finer than an 8-bit output's: the
    summary line says so, with the scale, while an 8-bit output keeps plain output steps."""
    path = tmp_path / "m.onnx"
    onnx.save(last_linear_model("gemm"), path)
    assert main([str(path), "--target", "deeploy-generic", "-o", str(tmp_path / "out")]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("output 'y'")]
    assert f"int32 accumulator step(s) of {H_SCALE * W_SCALE:.3g}, mean" in line
    assert main([str(example("resnet8")), "--target", "deeploy-generic", "-o", str(tmp_path / "r8")]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("output ")]
    assert " step(s), mean " in line and "accumulator" not in line
