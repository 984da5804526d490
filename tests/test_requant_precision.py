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
