"""Errors a first-time user can act on, as the tools print them (one line; a refusal points to docs/support.md),
and the small things of the command line: help texts, `qirc zoo list`, the progress bar."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import GraphBuilder

from qirc.cli import main, opt_main

TARGET = "deeploy-generic"


def _run(tool, argv, capsys):
    code = tool([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(err: str) -> str:
    (line,) = err.splitlines()
    assert "Traceback" not in err and "internal error" not in line
    return line


# ----- unsupported ops: at most five node names and a count -----------------------------------------------------
def test_unsupported_op_error_lists_at_most_five_nodes_and_a_count(tmp_path, capsys):
    b = GraphBuilder("many")
    y = b.quant(b.input("x", [1, 4]), 0.5, prefix="/in")
    for i in range(12):
        y = b.node("Sin", [y], name=f"/act{i}/Sin")
    y = b.node("Erf", [y], name="/gelu/Erf")
    b.output(y, "y")
    onnx.save(b.build(13), tmp_path / "many.onnx")
    code, out, err = _run(main, [tmp_path / "many.onnx", "--target", TARGET, "-o", tmp_path / "out"], capsys)
    assert code == 1 and out == ""
    line = _one_line(err)
    assert line == (f"{tmp_path / 'many.onnx'}: unsupported ops: Sin (12 nodes: /act0/Sin, /act1/Sin, /act2/Sin, "
                    "/act3/Sin, /act4/Sin, ...), Erf (1 node); 13 nodes in all; see docs/support.md")
    assert not (tmp_path / "out").exists()


# ----- a QONNX Trunc is not a "residual int.add" -------------------------------------------------------------------
@pytest.mark.parametrize("rounding", ["ROUND", "FLOOR"])
def test_trunc_on_siracusa_compiles_instead_of_being_called_a_residual_add(tmp_path, capsys, rounding):
    """It used to be refused as a 'residual int.add'; a Trunc now has a Siracusa form for every rounding mode
    (ROUND as one round-half-up RequantShift, see docs/targets.md)."""
    from test_frontend_trunc import trunc_model

    onnx.save(trunc_model(signed=1, rounding=rounding), tmp_path / "trunc.onnx")
    code, _, err = _run(main, [tmp_path / "trunc.onnx", "--target", "deeploy-siracusa", "-o", tmp_path / "out"],
                        capsys)
    assert code == 0 and "residual" not in err
    assert (tmp_path / "out" / "network.onnx").exists()


# ----- scales and zero points given as graph inputs ---------------------------------------------------------------
def _qdq_with_input(which: str) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    inits = []
    if which == "scale":
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
        inits.append(numpy_helper.from_array(np.array(0, np.int8), "z"))
    else:
        inputs.append(helper.make_tensor_value_info("z", TensorProto.INT8, []))
        inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "s"))
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="/q/QuantizeLinear"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="/q/DequantizeLinear")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("which, what", [("scale", "the scale ('s')"), ("zero point", "the zero point ('z')")])
def test_scale_or_zero_point_given_as_a_graph_input_must_be_constants(tmp_path, capsys, which, what):
    # the int8 zero point input would otherwise be refused for its element type, which misleads
    onnx.save(_qdq_with_input(which), tmp_path / "m.onnx")
    code, _, err = _run(main, [tmp_path / "m.onnx", "--target", TARGET, "-o", tmp_path / "out"], capsys)
    assert code == 1
    line = _one_line(err)
    assert f"node '/q/QuantizeLinear' (QuantizeLinear): {what} is a graph input, but it must be a constant" in line
    assert "scales and zero points must be constants (initializers or Constant nodes)" in line


# ----- qirc-opt -p deeploy-legalize without its target ------------------------------------------------------------
def test_deeploy_legalize_without_target_names_the_missing_option(tmp_path, capsys):
    qir = tmp_path / "m.qir"
    qir.write_text('qir.module @m {\n  %x = qir.input "x" : tensor<1x4xi8>  loc("x")\n'
                   '  qir.output "y" %x  loc("y")\n}\n')
    code, out, err = _run(opt_main, [qir, "-p", "deeploy-legalize"], capsys)
    assert code == 2 and out == ""
    line = _one_line(err)
    assert line == ("qirc-opt: error: pass 'deeploy-legalize' needs the option 'target' (one of qirc --list-targets, "
                    "e.g. deeploy-generic): -p 'deeploy-legalize{target=...}'")
    assert _run(opt_main, [qir, "-p", "deeploy-legalize{target=deeploy-generic}"], capsys)[0] == 0


# ----- accumulator ranges as [lo, hi] with their channel ----------------------------------------------------------
def test_accumulator_ranges_print_as_lo_hi_with_the_channel():
    from qirc.lowering.numerics import choose_requant
    from qirc.qir.diagnostics import LoweringError

    class Op:
        loc, name = "/conv/Conv", "int.requant_shift"

    m = np.array([1e-3, 1e-4, 3e-3]).reshape(1, 3, 1, 1)
    lo = np.array([-10, -(1 << 30), -3]).reshape(1, 3, 1, 1)
    with pytest.raises(LoweringError) as err:
        choose_requant(m, 0, 0, lo, -lo, -128, 127, op=Op(), strict=True)
    assert "the multiplier 0.0001 is approximated" in str(err.value)
    assert "(accumulator range [-1073741824, 1073741824], channel 1 of 3); refused under --strict" in str(err.value)
    m = np.array([1e-3, 5e4, 3e-3]).reshape(1, 3, 1, 1)
    lo = np.array([-10, -(1 << 20), -3]).reshape(1, 3, 1, 1)
    with pytest.raises(LoweringError) as err:
        choose_requant(m, 0, 0, lo, -lo, -128, 127, op=Op())
    assert str(err.value) == ("node '/conv/Conv' (int.requant_shift): requantization overflows int32 for every "
                              "shift: multiplier 50000 with accumulator range [-1048576, 1048576], channel 1 of 3")
    with pytest.raises(LoweringError) as err:  # per tensor: no channel
        choose_requant(5e4, 0, 0, -(1 << 20), 1 << 20, -128, 127, op=Op())
    assert str(err.value).endswith("multiplier 50000 with accumulator range [-1048576, 1048576]")


# ----- small things ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"], ["sim", "--help"], ["report", "--help"], ["zoo", "build", "--help"]])
def test_help_shows_no_internal_metavar_names(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    text = capsys.readouterr().out
    assert "DIR2" not in text and "OUTPUT" not in text and "INPUTS" not in text
    assert "ACT_BITS" not in text and "SAMPLES " not in text and "{model" not in text


def test_qirc_opt_help_shows_no_internal_metavar_names(capsys):
    with pytest.raises(SystemExit):
        opt_main(["--help"])
    text = capsys.readouterr().out
    assert "VALIDATE_SEED" not in text and "VALIDATE_SAMPLES" not in text and "OUTPUT" not in text


def test_zoo_list_ends_with_a_newline(capsys, monkeypatch):
    import qirc.zoo

    # the table's layout is what is tested here; building the eight networks to count them is test_zoo.py's job
    rows = [{"name": "resnet8", "task": "image classification", "input_shape": [1, 3, 32, 32], "params": 77706,
             "macs": 12501632, "reference": True, "source": "MLPerf Tiny reference"}]
    monkeypatch.setattr(qirc.zoo, "zoo_list", lambda: rows)
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and not out.endswith("\n\n") and out.splitlines()[0].split()[:2] == ["name", "task"]
    assert "77,706" in out.splitlines()[1]


@pytest.mark.brevitas
def test_progress_bar_draws_only_on_a_terminal(monkeypatch):
    pytest.importorskip("brevitas")
    import sys

    from qirc.zoo import build_model
    from qirc.zoo.calibrate import calibrate, synthetic_samples

    class Stream(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    model = build_model("autoencoder-small")
    samples = synthetic_samples((1, 128), 8)
    for tty in (False, True):
        stream = Stream(tty)
        monkeypatch.setattr(sys, "stderr", stream)
        calibrate(model, samples, label="calibrating")
        assert ("\rcalibrating [" in stream.getvalue()) == tty
