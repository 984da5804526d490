"""`qirc sim FILE --inputs IN.npz -o OUT.npz` on every form qirc reads: a quantized ONNX model, a .qir file, and
qirc's own Deeploy output; npz arrays are matched to the graph's inputs by name, else by order."""
import subprocess
import sys

import numpy as np

from qirc.frontends.onnx import import_onnx
from qirc.qir import interpreter
from qirc.qir.printer import print_module

from real_models import deepquant

RESNET8 = deepquant("ResNet8")
QIRC = [sys.executable, "-m", "qirc"]


def _sim(model, inputs, out):
    run = subprocess.run(QIRC + ["sim", str(model), "--inputs", str(inputs), "-o", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def test_sim_on_onnx_and_qir_matches_the_interpreter_by_name_and_by_order(tmp_path):
    module = import_onnx(str(RESNET8))
    x = np.random.default_rng(7).uniform(-1.1, 1.1, size=(1, 3, 32, 32)).astype(np.float32)
    expected = interpreter.run(module, {"onnx::Div_0": x})["630"]

    np.savez(tmp_path / "by_name.npz", **{"onnx::Div_0": x})
    np.savez(tmp_path / "by_order.npz", whatever=x)
    (tmp_path / "model.qir").write_text(print_module(module))

    for model in (RESNET8, tmp_path / "model.qir"):
        for inputs in ("by_name.npz", "by_order.npz"):
            got = _sim(model, tmp_path / inputs, tmp_path / "out.npz")
            assert list(got) == ["630"]  # keyed by the graph's output name
            np.testing.assert_array_equal(got["630"], expected)


def test_sim_on_the_deeploy_output_reproduces_outputs_npz(tmp_path):
    out = tmp_path / "build"
    run = subprocess.run(QIRC + [str(RESNET8), "--target", "deeploy-generic", "-o", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    got = _sim(out / "network.onnx", out / "inputs.npz", tmp_path / "sim.npz")
    with np.load(out / "outputs.npz") as want:
        assert len(got) == len(want.files)
        for (_, g), k in zip(got.items(), want.files):
            np.testing.assert_array_equal(g, want[k])
