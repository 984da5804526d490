"""`qirc sim FILE --inputs IN.npz -o OUT.npz` on every form qirc reads: a quantized ONNX model, a .qir file, and
qirc's own Deeploy output.  npz arrays are matched to the graph's inputs by name (a one-input model also takes one
array of any name), each with a leading sample axis; every sample is run, the outputs are written in the dtype
outputs.npz uses, and one summary line is printed."""
import numpy as np
import pytest

from qirc.frontends.onnx import import_onnx
from qirc.qir import interpreter
from qirc.qir.printer import print_module

from real_models import deepquant

RESNET8 = deepquant("ResNet8")


class Run:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _cli(argv, capsys) -> Run:
    """`qirc ARGV` in this process (the console script is the same `main`; subprocesses cost seconds each)."""
    from qirc.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def _sim(model, inputs, out, capsys):
    run = _cli(["sim", model, "--inputs", inputs, "-o", out], capsys)
    assert run.returncode == 0, run.stderr
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def test_sim_on_onnx_and_qir_matches_the_interpreter_by_name_and_by_order(tmp_path, capsys):
    module = import_onnx(str(RESNET8))
    x = np.random.default_rng(7).uniform(-1.1, 1.1, size=(1, 3, 32, 32)).astype(np.float32)
    expected = interpreter.run(module, {"onnx::Div_0": x})["630"]

    np.savez(tmp_path / "by_name.npz", **{"onnx::Div_0": x})
    np.savez(tmp_path / "by_order.npz", whatever=x)
    (tmp_path / "model.qir").write_text(print_module(module))

    for model in (RESNET8, tmp_path / "model.qir"):
        for inputs in ("by_name.npz", "by_order.npz"):
            got = _sim(model, tmp_path / inputs, tmp_path / "out.npz", capsys)
            assert list(got) == ["630"]  # keyed by the graph's output name
            np.testing.assert_array_equal(got["630"], expected)


def test_sim_on_the_deeploy_output_reproduces_outputs_npz(tmp_path, capsys):
    out = tmp_path / "build"
    run = _cli([RESNET8, "--target", "deeploy-generic", "-o", out], capsys)
    assert run.returncode == 0, run.stderr
    got = _sim(out / "network.onnx", out / "inputs.npz", tmp_path / "sim.npz", capsys)
    with np.load(out / "outputs.npz") as want:
        assert len(got) == len(want.files)
        for (_, g), k in zip(got.items(), want.files):
            np.testing.assert_array_equal(g, want[k])


# ----- qirc sim behaves like compiling: N samples, outputs.npz dtypes, a summary, plain errors ----------------------
def _sim_cli(model, inputs, out, capsys):
    return _cli(["sim", model, "--inputs", inputs, "-o", out], capsys)


def test_sim_runs_every_sample_and_prints_one_summary_line(tmp_path, capsys):
    module = import_onnx(str(RESNET8))
    x = np.random.default_rng(3).uniform(-1.1, 1.1, size=(3, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x)  # one unnamed array for the one-input model
    run = _sim_cli(RESNET8, tmp_path / "in.npz", tmp_path / "out.npz", capsys)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout == f"wrote {tmp_path / 'out.npz'}: 3 sample(s); '630' 3x10 float32\n"
    with np.load(tmp_path / "out.npz") as data:
        got = data["630"]
    for i in range(3):
        want = interpreter.run(module, {"onnx::Div_0": x[i:i + 1]})["630"]
        np.testing.assert_array_equal(got[i:i + 1], want)


def test_sim_writes_outputs_in_the_dtype_outputs_npz_uses(tmp_path, capsys):
    out = tmp_path / "build"
    compiled = _cli([RESNET8, "--target", "deeploy-siracusa", "-o", out], capsys)
    assert compiled.returncode == 0, compiled.stderr
    with np.load(out / "inputs.npz") as f:
        (name,) = f.files
        x = f[name]
    np.savez(tmp_path / "two.npz", **{name: np.concatenate([x, np.zeros_like(x)])})
    run = _sim_cli(out / "network.onnx", tmp_path / "two.npz", tmp_path / "sim.npz", capsys)
    assert run.returncode == 0, run.stderr
    with np.load(out / "outputs.npz") as want, np.load(tmp_path / "sim.npz") as got:
        assert got.files == want.files
        for key in want.files:
            assert got[key].dtype == want[key].dtype == np.int8  # siracusa's outputs are signed 8-bit
            assert got[key].shape == (2,) + want[key].shape[1:]
            np.testing.assert_array_equal(got[key][:1], want[key])
    assert "2 sample(s)" in run.stdout and "int8" in run.stdout


def test_sim_says_so_when_integer_inputs_go_to_a_float_model(tmp_path, capsys):
    x = np.random.default_rng(0).integers(-128, 128, (1, 3, 32, 32)).astype(np.int8)
    np.savez(tmp_path / "ints.npz", x)
    run = _sim_cli(RESNET8, tmp_path / "ints.npz", tmp_path / "out.npz", capsys)
    assert run.returncode == 0, run.stderr
    (note,) = run.stderr.splitlines()
    assert note.startswith("qirc sim: note: input 'onnx::Div_0'") and "is float but the arrays are int8" in note
    assert "network.onnx" in note


@pytest.mark.parametrize("arrays, words", [
    ({"x": np.zeros((3, 32, 32), np.float32)}, ("input 'onnx::Div_0'", "shape 3x32x32", "1x3x32x32",
                                                "Nx3x32x32", "leading sample axis")),
    ({"a": np.zeros((1, 3, 32, 32), np.float32), "b": np.zeros((1, 3, 32, 32), np.float32)},
     ("2 array(s) (a, b)", "1 input(s) (onnx::Div_0)", "name each array like its input")),
    ({}, ("0 array(s) (none)",)),
], ids=["no-batch-axis", "two-arrays-one-input", "empty"])
def test_sim_inputs_that_do_not_fit_are_one_line_errors(tmp_path, arrays, words, capsys):
    np.savez(tmp_path / "in.npz", **arrays)
    run = _sim_cli(RESNET8, tmp_path / "in.npz", tmp_path / "out.npz", capsys)
    assert run.returncode == 1
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"{tmp_path / 'in.npz'}: ") and "Traceback" not in run.stderr
    for word in words:
        assert word in line, line
    assert not (tmp_path / "out.npz").exists()


def test_sim_matches_a_two_input_model_by_name_only(tmp_path, capsys):
    from onnx_builders import GraphBuilder
    import onnx

    g = GraphBuilder("two")
    a = g.quant(g.input("a", [1, 4]), 0.5, prefix="/qa")
    b = g.quant(g.input("b", [1, 4]), 0.5, prefix="/qb")
    g.output(g.node("Add", [a, b]), "y")
    onnx.save(g.build(13), tmp_path / "two.onnx")
    a_val, b_val = np.ones((2, 4), np.float32), np.full((2, 4), 2.0, np.float32)
    np.savez(tmp_path / "named.npz", b=b_val, a=a_val)
    run = _sim_cli(tmp_path / "two.onnx", tmp_path / "named.npz", tmp_path / "out.npz", capsys)
    assert run.returncode == 0, run.stderr
    with np.load(tmp_path / "out.npz") as data:
        np.testing.assert_allclose(data["y"], np.full((2, 4), 3.0))
    np.savez(tmp_path / "unnamed.npz", a_val, b_val)
    run = _sim_cli(tmp_path / "two.onnx", tmp_path / "unnamed.npz", tmp_path / "out2.npz", capsys)
    assert run.returncode == 1 and "name each array like its input" in run.stderr
