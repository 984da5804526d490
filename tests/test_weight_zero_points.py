"""Weights with zero points (onnxruntime's QUInt8 weights, WeightSymmetric=False) compiled for every target: int8
weights when w - z_w fits int8, else the input read twice (Concat) with [w - z_w - d | d]; on a target without Concat
a one-line error that says what to change."""
import numpy as np
import onnx
import pytest

from onnx_builders import GraphBuilder, ort_run
from qirc.backends.deeploy.legalize import legalize
from qirc.cli import main
from qirc.driver import compile_model
from qirc.frontends.deeploy import import_deeploy_onnx
from qirc.qir import interpreter
from qirc.qir.ir import Module, input_op, output_op
from qirc.qir.types import TensorType, i8

TARGETS = ("deeploy-generic", "deeploy-siracusa", "deeploy-cortexm")


def u8_weight_model(zero_point: int) -> onnx.ModelProto:
    """x (u8, zero point 128) -> Conv 3x3 with u8 weights at `zero_point` -> ReLU -> u8 output: what onnxruntime's
    quantize_static writes with weight_type=QUInt8."""
    rng = np.random.default_rng(7)
    b = GraphBuilder("u8_weights")
    x = b.qdq(b.input("x", [1, 3, 6, 6]), 1 / 64, 128, dtype=np.uint8, prefix="/in")
    w = rng.integers(0, 256, (4, 3, 3, 3)).astype(np.uint8)
    wd = b.dequantize_linear(w, np.float32(0.004), np.uint8(zero_point), prefix="/conv/w")
    y = b.node("Conv", [x, wd], name="/conv/Conv", pads=[1, 1, 1, 1])
    y = b.qdq(b.node("Relu", [y], name="/conv/Relu"), 0.05, 0, dtype=np.uint8, prefix="/conv/out")
    b.output(y, "y")
    return b.build(opset=13)


@pytest.mark.parametrize("zero_point", [128, 90])
@pytest.mark.parametrize("target", ("deeploy-generic", "deeploy-siracusa"))
def test_u8_weights_compile_and_match_onnxruntime(zero_point, target, tmp_path):
    model = u8_weight_model(zero_point)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    summary = compile_model(str(path), target, str(tmp_path / "out"))
    emitted = onnx.load(str(tmp_path / "out" / "network.onnx"))
    ops = [n.op_type for n in emitted.graph.node]
    concats = [n for n in emitted.graph.node if n.op_type == "Concat"]
    if zero_point == 128:
        assert not concats  # w - 128 is an int8 weight
    else:
        (concat,) = concats
        assert len(set(concat.input)) == 2  # Deeploy's Concat needs distinct input names
        assert ops.index("Concat") < ops.index("Conv")
    # the device graph against onnxruntime (optimisations off) on the model file
    device = import_deeploy_onnx(emitted)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.uniform(-2, 2, (1, 3, 6, 6)).astype(np.float32)
        ref = ort_run(model, {"x": x})["y"]
        xq = np.clip(np.rint(x * 64) + 128, 0, 255).astype(np.int64)
        if summary.module.inputs[0].results[0].type.storage == i8:
            xq = xq - 128
        got = list(interpreter.run(device, [xq]).values())[0].astype(np.int64)
        out_zp = summary.outputs[0]["zero_point"]
        assert np.max(np.abs((got - out_zp) * 0.05 - ref)) <= 0.05 + 1e-6


def test_cortexm_without_concat_says_what_to_change(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(u8_weight_model(90), path)
    assert main([str(path), "--target", "deeploy-cortexm", "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "node '/conv/Conv/weight_zero_point'" in err[0] and "deeploy-cortexm" in err[0]
    assert "WeightSymmetric=True" in err[0] and "no Concat" in err[0]
    assert not (tmp_path / "out").exists()
    # zero point 128 needs no Concat: it compiles there too
    onnx.save(u8_weight_model(128), path)
    assert main([str(path), "--target", "deeploy-cortexm", "-o", str(tmp_path / "out")]) == 0


def test_repeated_concat_operand_is_read_through_a_copy():
    m = Module("concat")
    x = input_op(m, "x", TensorType((1, 2, 3, 3), i8))
    c = m.create("int.concat", [x, x], [TensorType((1, 4, 3, 3), i8)], {"axis": 1}, "/cat").result
    output_op(m, "y", c)
    before = m.clone()
    legalize(m, "deeploy-generic")
    assert [op.name for op in m.ops()] == ["qir.input", "int.reshape", "int.concat", "qir.output"]
    cat = m.walk("int.concat")[0]
    assert cat.operands[0] is not cat.operands[1]
    inputs = interpreter.random_inputs(before, 0)
    np.testing.assert_array_equal(interpreter.run(m, inputs)["y"], interpreter.run(before, inputs)["y"])
