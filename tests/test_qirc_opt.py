"""`qirc-opt` end to end: the console entry point run as a subprocess on files in tmp_path (exit codes, one-line
errors naming the file and position or op), plus in-process checks of the same entry point for the cheaper cases."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qirc.cli import opt_main, run_cli
from qirc.qir.diagnostics import QircError, UsageError
from qirc.qir.parser import parse_module
from qirc.qir import passes as passes_mod
from qirc.qir.passes import ModulePass, register_pass

OPT = [sys.executable, "-c", "import sys; from qirc.cli import opt_main; sys.exit(opt_main())"]

GOOD = """\
qir.module @m {
  %x = qir.input "x" : tensor<1x4xf32>  loc("x")
  %0 = onnx.Relu %x : tensor<1x4xf32>  loc("/relu")
  %1 = onnx.Relu %x : tensor<1x4xf32>  loc("/unused")
  qir.output "y" %0  loc("y")
}
"""

# parses, but the Relu claims 3 elements for a 4-element input
BAD_SHAPE = GOOD.replace('%0 = onnx.Relu %x : tensor<1x4xf32>  loc("/relu")',
                         '%0 = onnx.Relu %x : tensor<1x3xf32>  loc("/relu")')


def run_opt(*args, stdin=None, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(OPT + list(args), capture_output=True, text=True, input=stdin, env=full_env, timeout=120)


def one_error_line(proc, code, *fragments):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# ----- subprocess ------------------------------------------------------------------------------------------------
def test_good_pipeline_prints_the_result(tmp_path):
    src = tmp_path / "model.qir"
    src.write_text(GOOD)
    proc = run_opt(str(src), "-p", "dce,verify")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "/unused" not in proc.stdout and 'loc("/relu")' in proc.stdout
    module = parse_module(proc.stdout)
    assert [o.name for o in module.ops()] == ["qir.input", "onnx.Relu", "qir.output"]


def test_output_file_is_written_and_stdin_is_read(tmp_path):
    out = tmp_path / "out.qir"
    proc = run_opt("-", "-p", "dce", "-o", str(out), stdin=GOOD)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "/unused" not in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.qir"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_list_passes(tmp_path):
    proc = run_opt("--list-passes")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    dce = [line for line in lines if line.split()[:1] == ["dce"]]
    assert len(dce) == 1 and "Erase ops whose results are unused" in dce[0]
    assert any(line.split()[:1] == ["verify"] for line in lines)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.qir"
    one_error_line(run_opt(str(missing), "-p", "dce"), 1, str(missing), "no such file")


def test_not_utf8(tmp_path):
    src = tmp_path / "binary.qir"
    src.write_bytes(b"qir.module @m {\n  \xff\xfe\n}\n")
    one_error_line(run_opt(str(src)), 1, f"{src}:2:3", "not UTF-8 text (byte 0xff)")


def test_parse_error_names_line_and_column(tmp_path):
    src = tmp_path / "broken.qir"
    src.write_text(GOOD.replace('%0 = onnx.Relu %x : tensor<1x4xf32>', '%0 = onnx.Relu %x : '))
    line = one_error_line(run_opt(str(src), "-p", "dce"), 1, f"{src}:")
    position = line[len(str(src)) + 1:].split(":")[:2]
    assert all(p.isdigit() for p in position), line


def test_verifier_failure_names_the_op(tmp_path):
    src = tmp_path / "bad.qir"
    src.write_text(BAD_SHAPE)
    one_error_line(run_opt(str(src), "-p", "dce"), 1, str(src), "node '/relu' (onnx.Relu)",
                   "result 0 has shape 1x3", "gives 1x4")


def test_pass_failure_names_the_pass_and_op(tmp_path):
    src = tmp_path / "bad.qir"
    src.write_text(BAD_SHAPE)
    one_error_line(run_opt(str(src), "--no-verify", "-p", "dce,verify"), 1, str(src), "node '/relu' (onnx.Relu)",
                   "in pass 'verify'", "result 0 has shape 1x3")


def test_unknown_pass_is_a_usage_error(tmp_path):
    src = tmp_path / "model.qir"
    src.write_text(GOOD)
    one_error_line(run_opt(str(src), "-p", "dce,vrify"), 2, "unknown pass 'vrify'", "did you mean 'verify'")


def test_bad_flag_is_a_usage_error():
    one_error_line(run_opt("--frobnicate"), 2, "unrecognized arguments: --frobnicate")


def test_internal_error_is_one_line_unless_debugging(tmp_path):
    # a bug in a pass, simulated by a plugin pass that raises a bare exception
    plugin = tmp_path / "qirc_crash_plugin.py"
    plugin.write_text("from qirc.qir.passes import ModulePass, register_pass\n"
                      "@register_pass\n"
                      "class Crash(ModulePass):\n"
                      "    '''Crash on purpose.'''\n"
                      "    name = 'test-crash-plugin'\n"
                      "    def run(self, module):\n"
                      "        raise ZeroDivisionError('boom')\n")
    src = tmp_path / "model.qir"
    src.write_text(GOOD)
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import qirc_crash_plugin; "
            "from qirc.cli import opt_main; sys.exit(opt_main())")
    cmd = [sys.executable, "-c", code, str(tmp_path), str(src), "-p", "test-crash-plugin"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "QIRC_DEBUG": "0"})
    one_error_line(proc, 1, "qirc-opt: internal error: PassCrashed", "pass 'test-crash-plugin' crashed",
                   "ZeroDivisionError: boom", str(src))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "QIRC_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr


# ----- in process ------------------------------------------------------------------------------------------------
class OptionsForListing(ModulePass):
    """Test pass whose options --list-passes shows.

    Before and after: unchanged.  Precondition: none.
    """

    name = "test-opt-listing"
    signed: bool = False
    bits: int = 8

    def run(self, module):
        pass


@pytest.fixture
def listing_pass():
    register_pass(OptionsForListing)
    yield OptionsForListing
    passes_mod._PASSES.pop(OptionsForListing.name, None)


def test_list_passes_shows_options_and_describe_pass_the_docstring(capsys, listing_pass):
    assert opt_main(["--list-passes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    mine = [line for line in lines if line.split()[:1] == ["test-opt-listing"]]
    assert len(mine) == 1, lines
    assert mine[0].endswith("Test pass whose options --list-passes shows.  {signed: bool = 0, bits: int = 8}")
    assert opt_main(["--describe-pass", "test-opt-listing"]) == 0
    text = capsys.readouterr().out
    assert "Before and after: unchanged.  Precondition: none." in text and "  bits: int = 8" in text


def test_print_ir_time_and_validate_flags(tmp_path, capsys):
    pytest.importorskip("qirc.qir.interpreter")
    src = tmp_path / "model.qir"
    src.write_text(GOOD)
    code = opt_main([str(src), "-p", "dce", "--print-ir-before-all", "--print-ir-after-all", "--time-passes",
                     "--validate-each", "--validate-samples", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "// -----// IR Dump Before dce //----- //" in captured.err
    assert "// -----// IR Dump After dce //----- //" in captured.err
    assert "Pass execution timing report" in captured.err
    assert "// validate dce: output 'y': max |diff| 0 over 2 sample(s)" in captured.err
    assert "/unused" not in captured.out


def test_output_to_unwritable_place_is_one_line(tmp_path, capsys):
    src = tmp_path / "model.qir"
    src.write_text(GOOD)
    target = tmp_path / "no_dir" / "out.qir"
    assert opt_main([str(src), "-o", str(target)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(target) in err[0] and "cannot write" in err[0]


def test_no_input_file_is_a_usage_error(capsys):
    assert opt_main([]) == 2
    assert "no input file" in capsys.readouterr().err


def test_run_cli_maps_errors_to_exit_codes(capsys):
    def fails(exc):
        def fn(argv):
            raise exc
        return fn

    assert run_cli(lambda argv: None, []) == 0
    assert run_cli(lambda argv: 3, []) == 3
    assert run_cli(fails(UsageError("bad flag")), [], prog="tool") == 2
    assert capsys.readouterr().err == "tool: error: bad flag\n"
    assert run_cli(fails(QircError("no such file", file="m.qir")), []) == 1
    assert capsys.readouterr().err == "m.qir: no such file\n"
    assert run_cli(fails(RuntimeError("two\nlines")), [], prog="tool") == 1
    assert capsys.readouterr().err == "tool: internal error: RuntimeError: two lines\n"
