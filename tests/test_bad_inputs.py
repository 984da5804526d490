"""Hard to break: malformed and unsupported inputs through the real console scripts (`qirc`, `qirc-opt`).

The user-visible contract checked for every case of the table below:
  - exit code 1 (2 for a usage error);
  - stderr is exactly ONE line, without 'Traceback' or 'internal error', naming the file, the node (where a node is
    involved) and the problem;
  - nothing is written: the case's folder (model, any output directory that existed before, its parent) has the same
    listing and file contents afterwards, so no output directory, no half-written file and no temporary left behind.

Library-level messages are tested in test_frontend_errors.py, test_parser_errors.py and test_qirc_opt.py; this file
checks what the user sees at the terminal.  The cases in SUBPROCESS_CASES run the installed console scripts in
subprocesses (concurrently: each costs a Python start-up of about a second of CPU); the others call the same entry
points (`qirc.cli.main`, `qirc.cli.opt_main`) in this process, inside the case's folder, with stdout and stderr
captured: the same code path below the interpreter's start-up, at a few milliseconds a case.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import pytest

import bad_inputs as B

_SCRIPT = Path(sys.executable).with_name("qirc")
#: the installed `qirc` console script of this interpreter, else the same entry point through -m
QIRC = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "qirc"]
QIRC_OPT = [sys.executable, "-c", "import sys; from qirc.cli import opt_main; sys.exit(opt_main())"]
TOOLS = {"qirc": QIRC, "qirc-opt": QIRC_OPT}

COMPILE = ("qirc", "{model}", "--target", "deeploy-siracusa", "-o", "{out}")
EMIT = ("qirc", "{model}", "--emit", "qir", "-o", "{out}.qir")
OPT = ("qirc-opt", "{model}", "-p", "dce", "-o", "{out}.qir")
SIM = ("qirc", "sim", "{model}", "--inputs", "{inputs}", "-o", "{out}.npz")


@dataclass(frozen=True)
class Case:
    """One bad input: how to build it, the command line, the exit code and what the one error line must say.

    argv        tool name first; "{name}" is replaced by the builder's path of that name ("out" is the case
                folder's `out`, which does not exist unless `existing_out`)
    words       fragments the error line must contain (the problem, in the user's terms)
    names       the builder path the line must name (None for usage errors that involve no file)
    node        the ONNX node / op location the line must name as `node '<node>'`
    existing_out  create `out/` as a previous qirc output first: a failing run must leave it exactly as it was
    """

    id: str
    build: Callable[[Path], Dict[str, Path]]
    argv: Tuple[str, ...]
    code: int
    words: Tuple[str, ...]
    names: Optional[str] = "model"
    node: Optional[str] = None
    existing_out: bool = False


def _sim_arrays(**arrays):
    return B.sim_model_with({k: np.asarray(v) for k, v in arrays.items()})


CASES = [
    # ----- not an ONNX model -------------------------------------------------------------------------------------
    Case("truncated-onnx", B.truncated_onnx, COMPILE, 1, ("not a readable ONNX model",)),
    Case("random-bytes", B.random_bytes, COMPILE, 1, ("not a readable ONNX model",), existing_out=True),
    Case("empty-file", B.empty_file, COMPILE, 1, ("not an ONNX model",)),
    Case("text-named-onnx", B.text_file_named_onnx, EMIT, 1, ("ONNX model",)),
    Case("missing-model", B.missing_model, COMPILE, 1, ("no such file",)),
    Case("model-is-a-directory", B.model_is_a_directory, COMPILE, 1, ("is a directory",)),
    Case("unknown-extension", B.unknown_extension, COMPILE, 1, ("unknown model file type '.tflite'", ".onnx or .qir")),
    # ----- graph structure -----------------------------------------------------------------------------------------
    Case("empty-graph", B.empty_graph, COMPILE, 1, ("the graph has no nodes",)),
    Case("no-outputs", B.no_outputs, COMPILE, 1, ("the graph has no outputs",)),
    Case("cycle", B.cycle, COMPILE, 1, ("cycle", "/cyc/Relu"), node="/cyc/Add"),
    Case("dangling-tensor", B.dangling_tensor, COMPILE, 1, ("'ghost'", "not produced by any node"),
         node="/add/Add", existing_out=True),
    Case("dangling-graph-output", B.dangling_graph_output, COMPILE, 1, ("graph output 'phantom'",
                                                                        "not produced")),
    Case("duplicate-output-names", B.duplicate_output_names, COMPILE, 1, ("'y' is defined twice", "/a/Relu"),
         node="/b/Sigmoid"),
    Case("dynamic-shape", B.dynamic_shape, COMPILE, 1, ("graph input 'x'", "dynamic shape", "--input-shape x=")),
    Case("unknown-ops", B.unknown_ops, COMPILE, 1,
         ("unsupported ops:", "Erf (/gelu/Erf, /gelu/Erf_1)", "Softsign (/act/Softsign)",
          "Selu (/act/Selu)")),
    Case("corrupt-initializer", B.corrupt_initializer, COMPILE, 1, ("initializer", "cannot be read")),
    Case("conv-channel-mismatch", B.conv_channel_mismatch, COMPILE, 1, ("5 input channels", "has 3"),
         node="/conv/Conv"),
    Case("opset-too-old", B.opset_too_old, COMPILE, 1, ("opset 6 is too old",)),
    Case("control-flow-subgraph", B.subgraph_control_flow, COMPILE, 1, ("subgraphs", "not supported"),
         node="/branch/If"),
    Case("external-data-outside", B.external_data_outside, COMPILE, 1,
         ("external data of tensor 'w'", "outside the model's folder", "../secret.bin")),
    Case("constant-external-data-outside", B.constant_external_data_outside, COMPILE, 1,
         ("outside the model's folder", "../secret.bin")),
    Case("external-data-missing", B.external_data_missing, COMPILE, 1, ("'weights.bin'", "'w'", "does not exist")),
    # ----- quantization parameters -------------------------------------------------------------------------------
    Case("non-constant-scale", B.non_constant_scale, COMPILE, 1, ("must be a constant",), node="/q/QuantizeLinear"),
    Case("zero-scale", B.scale_builder(0.0, decomposed=True), COMPILE, 1, ("is not a finite positive number",),
         node="/q/Div"),
    Case("negative-scale", B.scale_builder(-0.5, decomposed=False), COMPILE, 1,
         ("is not a finite positive number",), node="/q/QuantizeLinear", existing_out=True),
    Case("nan-scale", B.scale_builder(float("nan"), decomposed=True), COMPILE, 1,
         ("is not a finite positive number",), node="/q/Div"),
    Case("inf-scale", B.scale_builder(float("inf"), decomposed=False), COMPILE, 1,
         ("is not a finite positive number",), node="/q/QuantizeLinear"),
    Case("zero-point-out-of-range", B.zero_point_builder(300.0), COMPILE, 1, ("outside the storage range",),
         node="/q/Add"),
    Case("non-integer-zero-point", B.zero_point_builder(0.5), COMPILE, 1, ("is not an integer",), node="/q/Add"),
    Case("per-axis-length-mismatch", B.per_axis_mismatch, COMPILE, 1, ("3 entries", "axis 1"),
         node="/q/QuantizeLinear"),
    # ----- valid models a target cannot take -----------------------------------------------------------------------
    Case("int16-on-siracusa", B.int16_activation, COMPILE, 1,
         ("deeploy-siracusa", "16-bit activations", "take 8-bit activations"), node="/q16/QuantizeLinear"),
    Case("int4-storage", B.int4_storage, COMPILE, 1, ("element type int4 is not supported",),
         node="/q4/QuantizeLinear"),
    Case("float-model", B.float_model, COMPILE, 1,
         ("could not be lowered to integer arithmetic", "no quantizer before it"), node="/fc/MatMul"),
    # ----- output paths --------------------------------------------------------------------------------------------
    Case("output-is-a-file", B.output_is_a_file, COMPILE, 2, ("exists and is not a directory",), names="out"),
    Case("output-under-a-file", B.output_under_a_file, COMPILE, 1,
         ("cannot write the output directory", "afile' is a file, not a directory"), names="out"),
    Case("output-deep-under-a-file", B.output_under_a_file,
         ("qirc", "{model}", "--target", "deeploy-generic", "-o", "{out}/deeper/still"), 1,
         ("cannot write the output directory", "afile' is a file, not a directory"), names="out"),
    Case("dump-ir-under-a-file", B.good_model_and_inputs, COMPILE + ("--dump-ir", "{afile}/ir"), 1,
         ("--dump-ir: cannot write", "is a file, not a directory"), names="afile"),
    Case("sim-output-is-a-directory", B.good_model_and_inputs,
         ("qirc", "sim", "{model}", "--inputs", "{inputs}", "-o", "{out}"), 1, ("cannot write", "directory"),
         names="out", existing_out=True),
    Case("sim-output-under-a-file", B.good_model_and_inputs,
         ("qirc", "sim", "{model}", "--inputs", "{inputs}", "-o", "{afile}/y.npz"), 1,
         ("cannot write",), names="afile"),
    Case("emit-output-under-a-file", B.output_under_a_file, ("qirc", "{model}", "--emit", "qir", "-o", "{out}"),
         1, ("cannot write",), names="out"),
    # ----- textual IR ----------------------------------------------------------------------------------------------
    Case("qir-truncated", B.qir_truncated, OPT, 1, ("model.qir:5:22: unexpected end of input",)),
    Case("qir-unknown-op", B.qir_unknown_op, OPT, 1, ("model.qir:5:8: unknown op 'onnx.Frobnicate'",)),
    Case("qir-undefined-value", B.qir_undefined_value, OPT, 1, ("model.qir:5:18: undefined value %7",)),
    Case("qir-bad-shape", B.qir_bad_shape, OPT, 1, ("shape 1x3", "1x4"), node="/relu/Relu"),
    Case("qir-zero-scale", B.qir_bad_scale, OPT, 1, ("scale 0.0 must be positive and finite",),
         node="/q/QuantizeLinear"),
    Case("qir-negative-scale", B.qir_negative_scale, OPT, 1, ("scale -0.125 must be positive and finite",),
         node="/q/QuantizeLinear"),
    Case("qir-zero-point-out-of-range", B.qir_zero_point_out_of_range, OPT, 1,
         ("zero point 300 is outside the storage range -128..127",), node="/q/QuantizeLinear"),
    Case("qirc-on-bad-qir", B.qir_bad_shape, COMPILE, 1, ("shape 1x3", "1x4"), node="/relu/Relu",
         existing_out=True),
    Case("qirc-on-unlowerable-qir", B.unlowerable_qir, COMPILE, 1,
         ("16-bit activations", "take 8-bit activations", "deeploy-siracusa"), node="/q16/QuantizeLinear"),
    Case("qirc-emit-truncated-qir", B.qir_truncated, EMIT, 1, ("unexpected end of input",)),
    # ----- simulator inputs --------------------------------------------------------------------------------------
    Case("sim-too-many-arrays", _sim_arrays(x=np.zeros((1, 8), np.float32), z=np.zeros(3, np.float32)), SIM, 1,
         ("2 array(s)", "1 input(s)"), names="inputs"),
    Case("sim-wrong-shape", _sim_arrays(x=np.zeros((2, 3), np.float32)), SIM, 1, ("'x'", "shape", "2x3", "1x8", "Nx8"),
         names="inputs"),
    Case("sim-string-array", _sim_arrays(x=np.full((1, 8), "a")), SIM, 1, ("input 'x'", "non-numeric", "<U1"),
         node="x"),
    Case("sim-complex-array", _sim_arrays(x=np.zeros((1, 8), np.complex64)), SIM, 1,
         ("input 'x'", "complex"), node="x"),
    Case("sim-object-array", _sim_arrays(x=np.array([None] * 8, dtype=object).reshape(1, 8)), SIM, 1,
         ("not a readable .npz", "Object arrays"), names="inputs"),
    Case("sim-bad-qir", B.qir_with_inputs(B.qir_bad_shape, x=np.zeros((1, 4), np.float32)), SIM, 1,
         ("shape 1x4", "tensor<1x3xf32>"), node="/relu/Relu"),
    Case("compile-complex-samples", _sim_arrays(x=np.zeros((1, 8), np.complex64)), COMPILE + ("--inputs", "{inputs}"),
         2, ("input 'x'", "not real numbers", "complex64"), names="inputs"),
    Case("compile-nan-samples", _sim_arrays(x=np.array([[0, 1, np.nan, 2, 3, np.inf, 1e300, 0]])),
         COMPILE + ("--inputs", "{inputs}"), 2, ("input 'x'", "3 NaN or infinite value(s)"), names="inputs"),
    Case("sim-not-an-npz", B.sim_not_an_npz, SIM, 1, ("not an .npz file", "numpy.savez"), names="inputs"),
    Case("sim-npy-not-npz", B.npy_instead_of_npz, SIM, 1, ("not an .npz file",), names="inputs"),
    Case("compile-npy-not-npz", B.npy_instead_of_npz, COMPILE + ("--inputs", "{inputs}"), 2,
         ("cannot read the input samples", "not an .npz file"), names="inputs"),
    Case("compile-text-not-npz", B.sim_not_an_npz, COMPILE + ("--inputs", "{inputs}"), 2,
         ("cannot read the input samples", "not an .npz file"), names="inputs", existing_out=True),
    Case("sim-missing-npz", B.good_model, SIM, 1, ("no such file",), names="inputs"),
    Case("compile-inputs-mismatch", _sim_arrays(x=np.zeros((1, 3), np.float32)), COMPILE + ("--inputs", "{inputs}"),
         2, ("input 'x'", "shape [1, 3]", "expected [1, 8]"), names="inputs"),
    # ----- usage errors ------------------------------------------------------------------------------------------
    Case("unknown-target", B.good_model, ("qirc", "{model}", "--target", "deeploy-nope", "-o", "{out}"), 2,
         ("unknown target 'deeploy-nope'", "deeploy-siracusa", "deeploy-generic", "deeploy-cortexm"), names=None),
    Case("missing-output", B.good_model, ("qirc", "{model}", "--target", "deeploy-siracusa"), 2,
         ("-o DIR",), names=None),
    Case("unknown-flag", B.good_model, COMPILE + ("--frobnicate",), 2, ("unrecognized arguments: --frobnicate",),
         names=None),
    Case("unknown-pass-qirc", B.good_model, COMPILE + ("-p", "dce,frobnicate"), 2, ("unknown pass 'frobnicate'",),
         names=None),
    Case("unknown-pass-option", B.good_qir, ("qirc-opt", "{model}", "-p", "dce{{frobnicate=1}}"), 2,
         ("'frobnicate'", "dce"), names=None),
    Case("unknown-pass-qirc-opt", B.good_qir, ("qirc-opt", "{model}", "-p", "dce,vrify"), 2,
         ("unknown pass 'vrify'",), names=None),
    Case("emit-and-target", B.good_model, COMPILE + ("--emit", "qir"), 2, ("--emit and --target",), names=None),
    Case("sim-without-inputs", B.good_model, ("qirc", "sim", "{model}", "-o", "{out}.npz"), 2, ("--inputs",),
         names=None),
]


# ----- running ----------------------------------------------------------------------------------------------------
@dataclass
class Run:
    case: Case
    argv: list
    paths: Dict[str, Path]
    before: Dict[str, str]
    after: Dict[str, str]
    returncode: int
    stdout: str
    stderr: str


def prepare(case: Case, folder: Path) -> Tuple[list, Dict[str, Path]]:
    """Build the case's files in `folder` and return the full command line and the paths it names."""
    folder.mkdir(parents=True)
    paths = {"out": folder / "out", "inputs": folder / "absent.npz", **case.build(folder)}
    if case.existing_out:
        # a previous qirc output (the only non-empty folder qirc writes into): a failing run leaves it as it was
        out = paths["out"]
        out.mkdir(parents=True)
        (out / "network.onnx").write_bytes(b"previous run's graph")
        (out / "qirc.json").write_text('{"target": "deeploy-siracusa", "passes": []}\n')
    argv = TOOLS[case.argv[0]] + [a.format(**{k: str(v) for k, v in paths.items()}) for a in case.argv[1:]]
    return argv, paths


#: cases run through the installed console scripts in a subprocess (one per kind of outcome); the rest in-process
SUBPROCESS_CASES = frozenset({"random-bytes", "unknown-ops", "output-is-a-file", "qir-truncated",
                              "unknown-pass-qirc-opt", "sim-wrong-shape", "unknown-flag"})


def execute(case: Case, folder: Path) -> Run:
    argv, paths = prepare(case, folder)
    before = B.tree_listing(folder)
    env = dict(os.environ)
    env.pop("QIRC_DEBUG", None)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=folder)
    return Run(case, argv, paths, before, B.tree_listing(folder), proc.returncode, proc.stdout, proc.stderr)


def execute_in_process(case: Case, folder: Path) -> Run:
    """The case through `qirc.cli.main` / `opt_main` in this process, with the case folder as working directory."""
    import contextlib
    import io

    from qirc.cli import main, opt_main

    argv, paths = prepare(case, folder)
    args = argv[len(TOOLS[case.argv[0]]):]
    before = B.tree_listing(folder)
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    debug = os.environ.pop("QIRC_DEBUG", None)
    try:
        os.chdir(folder)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = (opt_main if case.argv[0] == "qirc-opt" else main)(args)
    finally:
        os.chdir(cwd)
        if debug is not None:
            os.environ["QIRC_DEBUG"] = debug
    return Run(case, argv, paths, before, B.tree_listing(folder), code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def runs(request, tmp_path_factory) -> Dict[str, "Future[Run]"]:
    """Every selected case: the subprocess ones concurrently (their cost is process start-up; two workers per core
    hide it), the others in this process one after the other while those run."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "originalname", None) == "test_bad_input" and hasattr(item, "callspec")}
    root = tmp_path_factory.mktemp("bad_inputs")
    cases = [c for c in CASES if c.id in selected]
    futures: Dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=max(2, 2 * (os.cpu_count() or 1))) as pool:
        for c in cases:
            if c.id in SUBPROCESS_CASES:
                futures[c.id] = pool.submit(execute, c, root / c.id)
        for c in cases:
            if c.id not in SUBPROCESS_CASES:
                future: Future = Future()
                try:
                    future.set_result(execute_in_process(c, root / c.id))
                except BaseException as e:  # a case whose builder fails must fail only its own test
                    future.set_exception(e)
                futures[c.id] = future
        return futures


def assert_one_error_line(run: Run) -> str:
    """The shared contract: exit code, one line on stderr, no traceback, nothing written. Returns the line."""
    detail = f"argv: {run.argv}\nstderr:\n{run.stderr}"
    assert run.returncode == run.case.code, detail
    assert "Traceback" not in run.stderr, detail
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and run.stderr.endswith("\n"), detail
    line = lines[0]
    assert "internal error" not in line, detail
    assert run.stdout == "", f"stdout: {run.stdout!r}\n{detail}"
    assert run.after == run.before, f"files changed: {set(run.after.items()) ^ set(run.before.items())}"
    return line


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, runs):
    run = runs[case.id].result()
    line = assert_one_error_line(run)
    if case.names is not None:
        assert str(run.paths[case.names]) in line, line
    if case.node is not None:
        assert f"node '{case.node}'" in line, line
    for word in case.words:
        assert word in line, line
    if case.code == 2:
        prog = "qirc-opt" if case.argv[0] == "qirc-opt" else "qirc"
        assert line.startswith(f"{prog}") and ": error: " in line, line


def test_case_table_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30
    assert SUBPROCESS_CASES <= set(ids)  # every kind of outcome also through the real console scripts


# ----- an output directory that cannot be written ----------------------------------------------------------------
def _lock(folder: Path) -> Optional[str]:
    """Make `folder` unwritable; return how, or None when this machine cannot (root without chattr support)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return "chmod"
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode == 0:
        return "chattr"
    return None


def _unlock(folder: Path, how: str) -> None:
    if how == "chmod":
        folder.chmod(0o755)
    else:
        subprocess.run([shutil.which("chattr"), "-i", str(folder)], check=True, capture_output=True)


@pytest.mark.parametrize("argv, words", [
    (COMPILE, ("cannot write", "Permission denied|Operation not permitted")),
    (("qirc", "{model}", "--emit", "qir", "-o", "{out}"), ("cannot write",)),
], ids=["compile", "emit"])
def test_output_in_unwritable_folder(tmp_path, argv, words):
    """Root ignores permission bits, so as root the folder is made immutable with chattr +i; where that is not
    possible the test is skipped (test_bad_input[output-under-a-file] covers the same failure path)."""
    case = Case("unwritable", B.output_in_read_only_folder, argv, 1, (), names="out")
    argv_full, paths = prepare(case, tmp_path / "case")
    before = B.tree_listing(tmp_path / "case")
    how = _lock(paths["locked"])
    if how is None:
        pytest.skip("running as root and chattr +i is not available here: root ignores permission bits")
    try:
        proc = subprocess.run(argv_full, capture_output=True, text=True, timeout=300)
    finally:
        _unlock(paths["locked"], how)
    run = Run(case, argv_full, paths, before, B.tree_listing(tmp_path / "case"), proc.returncode, proc.stdout,
              proc.stderr)
    line = assert_one_error_line(run)
    assert str(paths["out"]) in line or str(paths["locked"]) in line, line
    for word in words:
        assert any(alt in line for alt in word.split("|")), line
