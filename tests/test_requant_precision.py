"""The requantization precision policy (issue 11): a requant whose int32-safe form cannot stay within one output step
over the whole reachable range is compiled (the most precise int32-safe shift), warned about on stderr naming the
node, and recorded in qirc.json with its bound and its measured mismatch; only `qirc --strict` refuses it."""
import json

import numpy as np
import onnx
import pytest

from onnx_builders import GraphBuilder
from qirc.cli import main
from qirc.lowering.precision import requant_precision
from qirc.lowering import lower_module
from qirc.frontends.onnx import import_onnx
from qirc.qir import interpreter

TARGETS = ("deeploy-generic", "deeploy-siracusa", "deeploy-cortexm")


def wide_conv(cin: int, seed: int = 0) -> onnx.ModelProto:
    """onnxruntime's QDQ layout: u8 activations with zero point 128, per-channel int8 weights, a 1x1 conv over
    `cin` channels.  The accumulator's reachable range grows with cin; past ~2^25 the multiplier cannot keep 7 bits
    and the bound over the whole range passes one output step."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("wide_conv")
    x = b.input("x", [1, cin, 2, 2])
    xq = b.qdq(x, 1 / 64, 128, dtype=np.uint8, prefix="/input")
    w = rng.integers(-127, 128, (4, cin, 1, 1)).astype(np.int8)
    w_scales = (rng.uniform(0.5, 1.0, 4) * 0.01).astype(np.float32)
    wd = b.dequantize_linear(w, w_scales, np.zeros(4, np.int8), axis=0, prefix="/conv/weight")
    y = b.node("Conv", [xq, wd], name="/conv/Conv")
    # the output scale keeps random inputs mostly unsaturated (about 50 steps from the zero point), so that the
    # measured mismatch sees the approximation
    b.output(b.qdq(y, 1.0, 128, dtype=np.uint8, prefix="/conv/output"), "y")
    return b.build(opset=13)


@pytest.fixture(scope="module")
def imprecise(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "wide.onnx"
    onnx.save(wide_conv(7000), path)
    return path


@pytest.mark.parametrize("target", TARGETS)
def test_imprecise_requant_compiles_with_a_warning_and_a_record(imprecise, target, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(imprecise), "--target", target, "-o", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1  # one line per affected node
    line = err[0]
    assert line.startswith(f"qirc: warning: {imprecise}: node '/conv/Conv' (requant '/conv/output/QuantizeLinear')")
    assert "output steps over the reachable range" in line and "--strict refuses it" in line
    report = json.loads((out / "qirc.json").read_text())
    (rec,) = report["accuracy"]["requants"]
    assert rec["node"] == "/conv/output/QuantizeLinear" and rec["layer"] == "/conv/Conv"
    assert rec["bound_steps"] >= 1.0 and f"up to {rec['bound_steps']:.3g} output steps" in line
    assert rec["values"] == 8 * 4 * 2 * 2  # 8 samples of a [1, 4, 2, 2] output
    # the measurement never exceeds what the bound allows (the bound plus the rounding of a tie)
    assert rec["mismatch_max_steps"] <= np.ceil(rec["bound_steps"]) + 1
    assert 0.0 <= rec["mismatch_fraction"] <= 1.0
    # and the end-to-end figures agree with it
    (output,) = report["accuracy"]["outputs"]
    assert output["max_error_steps"] <= rec["mismatch_max_steps"] + 1


def test_strict_refuses_naming_the_node_and_writes_nothing(imprecise, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(imprecise), "--target", "deeploy-generic", "-o", str(out), "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"{imprecise}: node '/conv/output/QuantizeLinear' (int.requant_shift)")
    assert "output steps" in err[0] and "refused under --strict" in err[0]
    assert not out.exists()


def test_precise_requant_is_recorded_without_a_warning(tmp_path, capsys):
    path = tmp_path / "narrow.onnx"
    onnx.save(wide_conv(64), path)
    out = tmp_path / "out"
    assert main([str(path), "--target", "deeploy-generic", "-o", str(out), "--strict"]) == 0
    assert "warning" not in capsys.readouterr().err
    (rec,) = json.loads((out / "qirc.json").read_text())["accuracy"]["requants"]
    assert rec["bound_steps"] < 1.0 and rec["mismatch_max_steps"] <= 1


def test_measured_mismatch_is_against_the_exact_requantizer():
    """requant_precision on the lowered module: the kernel's outputs recomputed from the recorded inputs, against
    clip(rint((x - z_in) * M) + z_out); corrupting `add` by whole steps shows up in the measurement but not in the
    bound (which judges mul / 2^k only)."""
    module = import_onnx(wide_conv(7000))
    lower_module(module)
    samples = [interpreter.random_inputs(module, seed) for seed in range(3)]
    (clean,) = requant_precision(module, samples)
    rq = module.walk("int.requant_shift")[0]
    rq.attrs["add"] = np.asarray(rq.attrs["add"]) + 5 * int(rq.attrs["div"])
    (shifted,) = requant_precision(module, samples)
    assert shifted["bound_steps"] == clean["bound_steps"]
    assert shifted["mismatch_max_steps"] >= 4 and shifted["mismatch_fraction"] > clean["mismatch_fraction"]
    # the inputs were read on a copy: the module keeps no probe outputs
    assert [op.attrs["name"] for op in module.outputs] == ["y"]


def conv_plus_residual(cin: int, s_res: float, s_out: float) -> onnx.ModelProto:
    """A Conv's int32 accumulator (no quantizer of its own: wide, about 2^24 over 256 input channels) added to an
    int8 residual at scale `s_res`, then quantized: with an irrational scale ratio no int32 common scale keeps the
    sum within one output step of the exact one."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("conv_plus_residual")
    x = b.qdq(b.input("x", [1, cin, 4, 4]), 1 / 32, 0, prefix="/in")
    w = b.dequantize_linear(rng.integers(-127, 128, (4, cin, 3, 3)).astype(np.int8), np.float32(0.003),
                            prefix="/conv/w")
    y = b.node("Conv", [x, w], name="/conv/Conv", pads=[1, 1, 1, 1])
    r = b.qdq(b.input("r", [1, 4, 4, 4]), s_res, 0, prefix="/res")
    b.output(b.qdq(b.node("Add", [y, r], name="/block/Add"), s_out, 0, prefix="/out"), "y")
    return b.build(opset=13)


def test_imprecise_add_common_scale_compiles_with_a_warning_and_a_record(tmp_path, capsys):
    path = tmp_path / "add.onnx"
    onnx.save(conv_plus_residual(256, np.pi / 100, 1 / 512), path)
    out = tmp_path / "out"
    assert main([str(path), "--target", "deeploy-generic", "-o", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1  # one line per affected node (the requant after the sum is within its bound)
    line = err[0]
    assert line.startswith(f"qirc: warning: {path}: node '/block/Add' (Add): the operands' scale ratio 335.103")
    assert line.endswith("--strict refuses it")
    report = json.loads((out / "qirc.json").read_text())
    (rec,) = report["accuracy"]["add_rescales"]
    assert rec["node"] == "/block/Add" and not rec["exact"] and rec["scale_ratio"] == pytest.approx(np.pi / 100 / 9.375e-5,
                                                                                                   rel=1e-6)
    assert rec["bound_steps"] >= 1.0 and f"up to {rec['bound_steps']:.3g} output steps" in line
    assert rec["bound_steps"] == pytest.approx(rec["ratio_error_steps"] + rec["requant_error_steps"])
    assert rec["output"]["scale"] == pytest.approx(1 / 512)
    # measured on the samples: never beyond the ratio's bound
    assert rec["values"] > 0 and 0 < rec["mismatch_max_steps"] <= rec["ratio_error_steps"] + 1e-9
    assert all(r["bound_steps"] < 1.0 for r in report["accuracy"]["requants"])


def test_strict_refuses_an_imprecise_add_common_scale_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "add.onnx"
    onnx.save(conv_plus_residual(256, np.pi / 100, 1 / 512), path)
    out = tmp_path / "out"
    assert main([str(path), "--target", "deeploy-generic", "-o", str(out), "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"{path}: node '/block/Add' (onnx.Add)") and "refused under --strict" in err[0]
    assert not out.exists()


def test_exact_add_common_scale_is_recorded_without_a_warning(tmp_path, capsys):
    path = tmp_path / "add.onnx"
    onnx.save(conv_plus_residual(8, 0.003 / 32 * 4, 1 / 64), path)  # the residual at 4x the accumulator's scale
    out = tmp_path / "out"
    assert main([str(path), "--target", "deeploy-generic", "-o", str(out), "--strict"]) == 0
    assert "warning" not in capsys.readouterr().err
    (rec,) = json.loads((out / "qirc.json").read_text())["accuracy"]["add_rescales"]
    assert rec["exact"] and rec["multipliers"] == [1, 4] and rec["ratio_error_steps"] < 1e-6
    assert rec["mismatch_max_steps"] is None or rec["mismatch_max_steps"] < 1e-3
