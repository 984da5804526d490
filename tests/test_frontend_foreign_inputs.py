"""What other tools write that the ONNX frontend must take or refuse clearly (issue 11):

- standard-domain INT4 weights (DequantizeLinear of an int4 initializer, opset 21) are int8 weights with range -8..7;
- int4 activations, float8 quantization and 16-bit activations are refused in one line saying why;
- dynamic input shapes: `--input-shape NAME=DIMS`, a lone dynamic batch dim bound to 1 with a note, and an error that
  names the option otherwise;
- `--outputs NAME[,NAME]` compiles the subgraph that computes those tensors.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import GraphBuilder, ort_run
from qirc.driver import compile_model
from qirc.frontends.onnx import import_onnx
from qirc.qir import interpreter
from qirc.qir.diagnostics import FrontendError, LoweringError, UsageError

RNG = np.random.default_rng(3)
QIRC = [sys.executable, "-m", "qirc"]


def _int4_conv_model() -> onnx.ModelProto:
    """x -> QDQ(int8) -> Conv(W = DequantizeLinear(int4 initializer, per-channel scale)) -> Relu -> QDQ(uint8)."""
    b = GraphBuilder("int4_weights")
    x = b.qdq(b.input("x", [1, 3, 6, 6]), 0.05, 0, prefix="/in")
    w = RNG.integers(-8, 8, (4, 3, 3, 3))
    b.initializers.append(helper.make_tensor("w4", TensorProto.INT4, list(w.shape), w.reshape(-1).tolist()))
    scales = b.const(np.array([0.05, 0.08, 0.03, 0.06], np.float32), "w_scale")
    b.initializers.append(helper.make_tensor("w4_zp", TensorProto.INT4, [4], [0, 0, 0, 0]))
    wf = b.node("DequantizeLinear", ["w4", scales, "w4_zp"], name="/conv/w/DequantizeLinear", axis=0)
    y = b.node("Conv", [x, wf], name="/conv/Conv", pads=[1, 1, 1, 1])
    y = b.node("Relu", [y], name="/relu/Relu")
    b.output(b.qdq(y, 0.1, 0, dtype=np.uint8, prefix="/out"), "y")
    return b.build(21)


def test_int4_weights_are_int8_weights_with_a_4bit_range():
    model = _int4_conv_model()
    module = import_onnx(model)
    weights = [op for op in module.ops() if op.name == "qir.const" and op.results[0].type.is_quant]
    qt = weights[0].results[0].type.quant
    assert (qt.storage.name, qt.storage_min, qt.storage_max) == ("i8", -8, 7)
    stored = np.asarray(weights[0].attrs["value"])
    assert stored.dtype == np.int8 and stored.min() >= -8 and stored.max() <= 7
    for _ in range(4):
        x = RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)
        expected = ort_run(model, {"x": x})["y"]
        got = interpreter.run(module, {"x": x})["y"]
        assert np.abs(got - expected).max() <= 0.1 * 1.001  # one output step at most (a float summation tie)


def test_int4_weights_compile(tmp_path):
    path = tmp_path / "int4.onnx"
    onnx.save(_int4_conv_model(), str(path))
    summary = compile_model(path, "deeploy-generic", tmp_path / "out", accuracy_samples=4)
    assert summary.accuracy["outputs"][0]["max_error_steps"] <= 1


def _activation_qdq(dtype_name: str) -> onnx.ModelProto:
    b = GraphBuilder("act_" + dtype_name)
    x = b.input("x", [1, 8])
    scale = b.const(np.float32(0.25))
    elem = {"int4": TensorProto.INT4, "fp8": TensorProto.FLOAT8E4M3FN}[dtype_name]
    b.initializers.append(helper.make_tensor("zp", elem, [], [0]))
    q = b.node("QuantizeLinear", [x, scale, "zp"], name="/q/QuantizeLinear")
    b.output(b.node("DequantizeLinear", [q, scale, "zp"], name="/q/DequantizeLinear"), "y")
    return b.build(21, check=False)


@pytest.mark.parametrize("kind,words", [
    ("int4", ("element type int4 is not supported for activations", "8-bit tensors", "int8/uint8")),
    ("fp8", ("float8_e4m3fn is not supported", "integer quantization", "int8/uint8")),
])
def test_unsupported_activation_element_types_say_why(kind, words):
    with pytest.raises(FrontendError) as err:
        import_onnx(_activation_qdq(kind))
    msg = str(err.value)
    assert "\n" not in msg and "node '/q/QuantizeLinear'" in msg
    for w in words:
        assert w in msg


def test_16bit_activations_are_refused_naming_the_first_16bit_tensor(tmp_path):
    b = GraphBuilder("int16")
    x = b.qdq(b.input("x", [1, 8]), 1 / 64, 0, prefix="/in")
    y = b.node("Relu", [b.qdq(x, 1 / 256, 0, dtype=np.int16, prefix="/first16")], name="/relu/Relu")
    b.output(b.qdq(y, 1 / 256, 0, dtype=np.int16, prefix="/second16"), "y")
    path = tmp_path / "m.onnx"
    onnx.save(b.build(21), str(path))
    with pytest.raises(LoweringError) as err:
        compile_model(path, "deeploy-generic", tmp_path / "out")
    msg = str(err.value)
    assert "node '/first16/QuantizeLinear'" in msg and "16-bit activations" in msg
    assert "the Deeploy targets take 8-bit activations (target deeploy-generic)" in msg
    assert not (tmp_path / "out").exists()


# ----- dynamic shapes --------------------------------------------------------------------------------------------------
def _dynamic_model(dims) -> onnx.ModelProto:
    """QDQ -> Conv -> QDQ -> Flatten -> Gemm head written as a torch export with a dynamic batch writes it (the
    Reshape's target taken from the input's Shape)."""
    b = GraphBuilder("dyn")
    x = b.qdq(b.input("x", dims), 0.05, 0, prefix="/in")
    w = b.dequantize_linear(RNG.integers(-127, 128, (2, 3, 3, 3)).astype(np.int8), 0.01, prefix="/w")
    y = b.qdq(b.node("Conv", [x, w], name="/conv/Conv", pads=[1, 1, 1, 1]), 0.1, 0, prefix="/c")
    f = b.node("Flatten", [y], name="/flatten/Flatten", axis=1)
    g = b.dequantize_linear(RNG.integers(-127, 128, (5, 2 * 4 * 4)).astype(np.int8), 0.01, prefix="/g")
    z = b.node("Gemm", [f, g], name="/fc/Gemm", transB=1)
    b.output(b.qdq(z, 0.2, 0, prefix="/out"), "y")
    return b.build(13)


def test_a_lone_dynamic_batch_dim_is_bound_to_1_with_a_note():
    notes = []
    model = _dynamic_model(["batch", 3, 4, 4])
    module = import_onnx(model, note=notes.append)
    assert module.inputs[0].results[0].type.shape == (1, 3, 4, 4)
    assert len(notes) == 1 and "input 'x' has a dynamic batch dimension; compiled with batch 1 as 1x3x4x4" in notes[0]
    assert "--input-shape x=" in notes[0]
    # the caller's model is left as it was
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(interpreter.run(module, {"x": x})["y"], ort_run(model, {"x": x})["y"], atol=0.2001)


def test_input_shape_binds_every_dynamic_dim():
    model = _dynamic_model(["n", 3, "h", "w"])
    with pytest.raises(FrontendError) as err:
        import_onnx(model)
    msg = str(err.value)
    assert "graph input 'x' has a dynamic shape ?x3x?x?" in msg and "--input-shape x=1x3xNxN" in msg
    module = import_onnx(model, input_shapes={"x": (2, 3, 4, 4)})
    assert module.inputs[0].results[0].type.shape == (2, 3, 4, 4)
    with pytest.raises(FrontendError, match="dim 1 of input 'x' is fixed to 3 in the model"):
        import_onnx(model, input_shapes={"x": (1, 4, 4, 4)})
    with pytest.raises(UsageError, match="the model has no input 'z'"):
        import_onnx(model, input_shapes={"z": (1, 3, 4, 4)})


def test_cli_input_shape_and_the_batch_note(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(_dynamic_model(["batch", 3, 4, 4]), str(path))
    run = subprocess.run(QIRC + [str(path), "--target", "deeploy-generic", "-o", str(tmp_path / "a")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith("qirc: note: input 'x' has a dynamic batch dimension; compiled with batch 1")
    run = subprocess.run(QIRC + [str(path), "--emit", "qir", "--input-shape", "x=1x3x4x4"], capture_output=True,
                         text=True)
    assert run.returncode == 0 and run.stderr == "" and "tensor<1x3x4x4xf32>" in run.stdout
    run = subprocess.run(QIRC + [str(path), "--emit", "qir", "--input-shape", "x=1x3x4"], capture_output=True,
                         text=True)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "input 'x' has rank 4" in run.stderr
    run = subprocess.run(QIRC + [str(path), "--emit", "qir", "--input-shape", "x:1x3"], capture_output=True,
                         text=True)
    assert run.returncode == 2 and "expected NAME=DIMS" in run.stderr


def test_sim_takes_input_shape_with_the_main_commands_parsing_and_errors(tmp_path, capsys):
    """`qirc sim --input-shape` binds a source model's dynamic dims like `qirc MODEL --input-shape`: the same
    parsing, the same one-line errors and exit codes."""
    from qirc.cli import main
    path = tmp_path / "dyn.onnx"
    model = _dynamic_model(["n", 3, "h", "w"])
    onnx.save(model, str(path))
    x = RNG.standard_normal((3, 3, 4, 4)).astype(np.float32)  # 3 samples of 3x4x4
    np.savez(tmp_path / "in.npz", x=x)
    out = tmp_path / "out.npz"
    # without it: the import's error, which names the option
    assert main(["sim", str(path), "--inputs", str(tmp_path / "in.npz"), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dynamic shape ?x3x?x?" in err[0] and "--input-shape x=1x3xNxN" in err[0]
    assert not out.exists()
    assert main(["sim", str(path), "--inputs", str(tmp_path / "in.npz"), "-o", str(out),
                 "--input-shape", "x=1x3x4x4"]) == 0
    with np.load(out) as got:
        assert got["y"].shape == (3, 5)
        reference = np.concatenate([ort_run(model, {"x": x[i:i + 1]})["y"]
                                    for i in range(3)])
        np.testing.assert_allclose(got["y"], reference, atol=0.2001)  # within one output step
    capsys.readouterr()
    # malformed, twice, or a wrong rank: the main command's messages and codes
    for args, code, text in ((["--input-shape", "x:1x3"], 2, "expected NAME=DIMS"),
                             (["--input-shape", "x=1x3x4x4", "--input-shape", "x=1x3x4x4"], 2, "given twice"),
                             (["--input-shape", "x=1x3x4"], 1, "input 'x' has rank 4")):
        assert main(["sim", str(path), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o2.npz")]
                    + args) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0]
        assert main([str(path), "--emit", "qir"] + args) == code  # the same from the main command
        err_main = capsys.readouterr().err.strip().splitlines()
        assert len(err_main) == 1 and text in err_main[0]
    assert not (tmp_path / "o2.npz").exists()


def test_sim_binds_a_lone_dynamic_batch_with_a_note_and_refuses_a_shape_for_its_own_output(tmp_path, capsys):
    from qirc.cli import main
    path = tmp_path / "dyn.onnx"
    onnx.save(_dynamic_model(["batch", 3, 4, 4]), str(path))
    np.savez(tmp_path / "in.npz", x=RNG.standard_normal((2, 3, 4, 4)).astype(np.float32))
    assert main(["sim", str(path), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "a.npz")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("qirc sim: note: input 'x' has a dynamic batch dimension; compiled with batch 1")
    compile_model(str(path), "deeploy-generic", str(tmp_path / "build"), input_shapes={"x": (1, 3, 4, 4)})
    net = tmp_path / "build" / "network.onnx"
    assert main(["sim", str(net), "--inputs", str(tmp_path / "build" / "inputs.npz"), "-o", str(tmp_path / "b.npz"),
                 "--input-shape", "x=1x3x4x4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--input-shape applies to a quantized source model" in err[0]
    assert not (tmp_path / "b.npz").exists()


def test_report_takes_input_shape(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from qirc.cli import main
    path = tmp_path / "dyn.onnx"
    onnx.save(_dynamic_model(["n", 3, "h", "w"]), str(path))
    page = tmp_path / "report.html"
    assert main(["report", str(path), "--target", "deeploy-generic", "-o", str(page), "--samples", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--input-shape x=1x3xNxN" in err[0] and not page.exists()
    assert main(["report", str(path), "--target", "deeploy-generic", "-o", str(page), "--samples", "2",
                 "--input-shape", "x=1x3x4x4"]) == 0
    assert "tensor" in capsys.readouterr().out and page.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(path), "--target", "deeploy-generic", "-o", str(tmp_path / "r2.html"),
                 "--input-shape", "x:1x3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected NAME=DIMS" in err[0] and not (tmp_path / "r2.html").exists()


# ----- --outputs ---------------------------------------------------------------------------------------------------------
def _model_with_float_softmax() -> onnx.ModelProto:
    b = GraphBuilder("softmax_head")
    x = b.qdq(b.input("x", [1, 16]), 0.05, 0, prefix="/in")
    w = b.dequantize_linear(RNG.integers(-127, 128, (16, 10)).astype(np.int8), 0.01, prefix="/w")
    logits = b.qdq(b.node("MatMul", [x, w], name="/fc/MatMul"), 0.1, 0, prefix="/logits")
    b.output(b.node("Softmax", [logits], name="/softmax/Softmax", axis=-1), "probs")
    return b.build(13)


def test_outputs_cuts_the_float_softmax_off(tmp_path):
    model = _model_with_float_softmax()
    cut = "/logits/DequantizeLinear_output_0"
    module = import_onnx(model, outputs=[cut])
    assert module.output_names() == [cut]
    assert "onnx.Softmax" not in {op.name for op in module.ops()}
    x = RNG.standard_normal((1, 16)).astype(np.float32)
    expected = ort_run(model, {"x": x}, extra_outputs=[cut])[cut]
    np.testing.assert_allclose(interpreter.run(module, {"x": x})[cut], expected, atol=0.1001)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    summary = compile_model(path, "deeploy-generic", tmp_path / "out", subgraph_outputs=[cut])
    assert [o["name"] for o in summary.outputs] == [cut] or len(summary.outputs) == 1
    with pytest.raises(UsageError, match="'nope' is not a tensor of the graph"):
        import_onnx(model, outputs=["nope"])


def test_outputs_drops_nodes_the_cut_does_not_need():
    """A second head that qirc cannot import (an unsupported op) is dropped with the cut."""
    model = _model_with_float_softmax()
    model.graph.node.append(helper.make_node("Erf", ["/logits/DequantizeLinear_output_0"], ["erf"], name="/erf"))
    model.graph.output.append(helper.make_empty_tensor_value_info("erf"))
    with pytest.raises(FrontendError, match=r"unsupported ops: Erf \(/erf\)"):
        import_onnx(model)
    module = import_onnx(model, outputs=["probs"])
    assert module.output_names() == ["probs"]


def test_16bit_weights_are_refused_but_a_16bit_bias_is_not(tmp_path):
    def model(weight_dtype, bias_dtype):
        b = GraphBuilder("w16")
        x = b.qdq(b.input("x", [1, 8]), 1 / 64, 0, prefix="/in")
        w = b.dequantize_linear(RNG.integers(-100, 100, (4, 8)).astype(weight_dtype), 0.01, prefix="/fc/w")
        bias = b.dequantize_linear(RNG.integers(-100, 100, 4).astype(bias_dtype), 0.01 / 64, prefix="/fc/b")
        y = b.node("Gemm", [x, w, bias], name="/fc/Gemm", transB=1)
        b.output(b.qdq(y, 0.05, 0, prefix="/out"), "y")
        path = tmp_path / f"{np.dtype(weight_dtype).name}_{np.dtype(bias_dtype).name}.onnx"
        onnx.save(b.build(21), str(path))
        return path

    with pytest.raises(LoweringError) as err:
        compile_model(model(np.int16, np.int32), "deeploy-siracusa", tmp_path / "out")
    msg = str(err.value)
    assert "node '/fc/w/DequantizeLinear'" in msg and "16-bit weights" in msg and "take 8-bit weights" in msg
    compile_model(model(np.int8, np.int16), "deeploy-siracusa", tmp_path / "out")


def test_cli_outputs(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model_with_float_softmax(), str(path))
    cut = "/logits/DequantizeLinear_output_0"
    run = subprocess.run(QIRC + [str(path), "--target", "deeploy-generic", "-o", str(tmp_path / "out"), "--outputs",
                                 cut], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    model = onnx.load(str(tmp_path / "out" / "network.onnx"))
    assert "Softmax" not in {n.op_type for n in model.graph.node} and len(model.graph.output) == 1
    run = subprocess.run(QIRC + [str(path), "--emit", "qir", "--outputs", f"{cut},nope"], capture_output=True,
                         text=True)
    assert run.returncode == 2 and run.stderr == "qirc: error: --outputs: 'nope' is not a tensor of the graph\n"
