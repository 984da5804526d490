"""Command-line tools: `qirc` (compile a model) and `qirc-opt` (run passes over textual IR).

Every tool runs through `run_cli`, which turns a user-facing error into ONE line on stderr and an exit code:
QircError -> 1 (UsageError -> 2), anything else -> "internal error: ..." and 1 (its traceback only with the
environment variable QIRC_DEBUG=1).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import tempfile
import traceback
from typing import Callable, List, NoReturn, Optional, Sequence

from .qir.diagnostics import QircError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


# ----- shared helpers --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def compiler_gc():
    """Python's cycle collector paused for a compile, for the duration of the block.

    A compile allocates many long-lived objects (ops, values, types) and little cyclic garbage: the default collector
    spends 10-15% of a compile, and more the larger the model, re-scanning them and the objects of the imported
    libraries, and even young-generation collections every 50,000 allocations found nothing to free in a 48,000-node
    compile while costing it 4% (60 ms; they walk every young object).  The garbage they would free, about 125,000
    objects of erased ops there, is a few percent of the peak memory and left to the collections after the block.
    The imported libraries' objects are frozen (left out of the collection that follows); both are undone afterwards,
    so a process that calls qirc in-process keeps its own settings."""
    enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()


def run_cli(fn: Callable[[List[str]], Optional[int]], argv: Optional[Sequence[str]] = None,
            prog: str = "qirc") -> int:
    """Run `fn(argv)` and return its exit code; errors become one line on stderr.

    QircError -> its one-line str() and exit 1 (UsageError: `prog: error: ...`, exit 2); an unexpected exception
    -> `prog: internal error: ...`, exit 1, with the traceback only when QIRC_DEBUG=1.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with compiler_gc():
            code = fn(args)
        _flush_stdout()
        return EXIT_OK if code is None else int(code)
    except UsageError as e:
        _print_error(f"{prog}: error: {e.user_message()}")
        return EXIT_USAGE
    except QircError as e:
        _print_error(e.user_message())  # a refusal ends with a pointer to docs/support.md
        return EXIT_ERROR
    except KeyboardInterrupt:
        _print_error(f"{prog}: interrupted")
        return 130
    except BrokenPipeError:
        # the reader went away (qirc-opt ... | head): not an error of ours; keep Python from complaining at exit
        _silence_stdout()
        return EXIT_OK
    except Exception as e:  # a bug in qirc: say so on one line, keep the traceback for QIRC_DEBUG
        if os.environ.get("QIRC_DEBUG") == "1":
            traceback.print_exc()
        _print_error(f"{prog}: internal error: {type(e).__name__}: {' '.join(str(e).split())}")
        return EXIT_ERROR


def _print_error(line: str) -> None:
    try:
        sys.stderr.write(line.rstrip("\n") + "\n")
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        pass


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2 through run_cli) instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def read_text_file(path: str) -> str:
    """The text of `path` ('-' = stdin) as UTF-8; QircError naming the file when it cannot be read."""
    if path == "-":
        data = sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        name = path
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise QircError("no such file", file=path) from None
        except IsADirectoryError:
            raise QircError("is a directory, not a file", file=path) from None
        except OSError as e:
            raise QircError(f"cannot read: {e.strerror or e}", file=path) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise QircError(f"not UTF-8 text (byte 0x{data[e.start]:02x})", file=name, line=line,
                        column=column) from None


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` to `path` all or nothing: a temporary file in the same directory, then os.replace."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".qirc-", suffix=".tmp", dir=directory)
    except OSError as e:
        raise QircError(f"cannot write: {e.strerror or e}", file=path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        try:
            mode = os.stat(path).st_mode & 0o777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise QircError(f"cannot write: {e.strerror or e}", file=path) from None


# ----- qirc-opt --------------------------------------------------------------------------------------------------
def _opt_parser() -> argparse.ArgumentParser:
    p = _ArgumentParser(
        prog="qirc-opt",
        description="Parse textual qir, verify it, run a pass pipeline and print the result.",
        epilog="Example: qirc-opt model.qir -p 'dequant-push,dce' -o lowered.qir")
    p.add_argument("file", metavar="FILE", nargs="?", help="input .qir file ('-' for stdin)")
    p.add_argument("-p", "--pipeline", "--passes", dest="pipeline", default="",
                   help="comma-separated passes, options in braces: 'a,b{k=v,k2=1},c'")
    p.add_argument("-o", "--output", metavar="OUT.qir", help="write the result here (atomically) instead of stdout")
    p.add_argument("--list-passes", action="store_true", help="list the registered passes and their options")
    p.add_argument("--describe-pass", metavar="NAME", help="print a pass's description (rewrite, precondition)")
    p.add_argument("--print-ir-before-all", action="store_true", help="dump the IR to stderr before every pass")
    p.add_argument("--print-ir-after-all", action="store_true", help="dump the IR to stderr after every pass")
    p.add_argument("--time-passes", action="store_true", help="print seconds per pass to stderr")
    p.add_argument("--validate-each", action="store_true",
                   help="interpret the module before and after each pass on random inputs; print the differences")
    p.add_argument("--validate-seed", metavar="N", type=int, default=0, help="first seed of --validate-each's inputs")
    p.add_argument("--validate-samples", metavar="N", type=int, default=3,
                   help="input samples per pass for --validate-each")
    p.add_argument("--elide-constants", action="store_true", help="print large constants as placeholders")
    p.add_argument("--no-verify", action="store_true", help="do not run the verifier before and between passes")
    return p


def _options_text(cls) -> str:
    opts = cls.options()
    if not opts:
        return ""
    shown = ", ".join(f"{key}: {typ.__name__} = {(1 if default else 0) if typ is bool else default}"
                      for key, (typ, default) in opts.items())
    return f"  {{{shown}}}"


def list_passes_text() -> str:
    """One line per pass: name, summary and its options `{name: type = default, ...}`; then named pipelines."""
    from .qir.passes import all_passes, all_pipelines
    passes = all_passes()
    pipelines = all_pipelines()
    width = max([len(c.name) for c in passes] + [len(n) for n in pipelines] + [4])
    lines = ["Passes:"]
    lines += [f"  {cls.name:<{width}}  {cls.summary()}{_options_text(cls)}" for cls in passes]
    if pipelines:
        lines.append("Pipelines:")
        lines += [f"  {name:<{width}}  {summary} ({text})" for name, (text, summary) in pipelines.items()]
    return "\n".join(lines) + "\n"


def describe_pass_text(name: str) -> str:
    """A pass's whole docstring (the rewrite and its precondition) and its options."""
    import inspect

    from .qir.passes import get_pass
    cls = get_pass(name)
    lines = [f"{cls.name}: {inspect.getdoc(cls) or ''}"]
    opts = cls.options()
    if opts:
        lines += ["", "Options:"]
        lines += [f"  {key}: {typ.__name__} = {(1 if d else 0) if typ is bool else d}"
                  for key, (typ, d) in opts.items()]
    return "\n".join(lines) + "\n"


def _opt(argv: List[str]) -> int:
    args = _opt_parser().parse_args(argv)
    from .qir.passes import PassCrashed, PassManager, parse_pipeline

    if args.list_passes:
        sys.stdout.write(list_passes_text())
        return EXIT_OK
    if args.describe_pass:
        sys.stdout.write(describe_pass_text(args.describe_pass))
        return EXIT_OK
    if args.file is None:
        raise UsageError("no input file (give FILE.qir, or '-' for stdin)")
    # a bad pipeline is a usage error: report it before reading anything
    passes = parse_pipeline(args.pipeline)

    from .qir.parser import parse_module
    from .qir.printer import print_module

    name = "<stdin>" if args.file == "-" else args.file
    text = read_text_file(args.file)
    try:
        module = parse_module(text, filename=name)
        manager = PassManager(passes, verify_each=not args.no_verify,
                              print_ir_before_all=args.print_ir_before_all,
                              print_ir_after_all=args.print_ir_after_all, time_passes=args.time_passes,
                              validate_each=args.validate_each, validate_seed=args.validate_seed,
                              validate_samples=args.validate_samples, out=sys.stderr,
                              elide_constants=args.elide_constants)
        manager.run(module)
    except QircError as e:
        raise e.with_file(name)
    except PassCrashed as e:
        raise PassCrashed(f"{name}: {e}") from e.__cause__
    result = print_module(module, elide_constants=args.elide_constants)
    if args.output and args.output != "-":
        write_text_atomic(args.output, result)
    else:
        sys.stdout.write(result)
    return EXIT_OK


def opt_main(argv: Optional[Sequence[str]] = None) -> int:
    """`qirc-opt FILE.qir -p PIPELINE [-o OUT] ...`; returns the exit code (the console script exits with it)."""
    return run_cli(_opt, argv, prog="qirc-opt")


# ----- qirc ------------------------------------------------------------------------------------------------------
_SUBCOMMANDS = ("sim", "zoo", "report")


def _main_parser() -> argparse.ArgumentParser:
    p = _ArgumentParser(
        prog="qirc",
        description="Compile a quantized model (ONNX: decomposed QCDQ, QDQ, QONNX, QOperator; or .qir) to an integer-only "
                    "Deeploy graph with bit-exact test vectors.",
        epilog="Other commands: 'qirc sim FILE --inputs IN.npz -o OUT.npz' runs the integer/fake-quant simulator; "
               "'qirc zoo list|build' builds the MLPerf Tiny networks; 'qirc report MODEL --target T -o report.html' "
               "shows per-layer errors. Example: qirc model.onnx --target deeploy-siracusa -o build/model")
    p.add_argument("model", metavar="MODEL", nargs="?", help="the model: .onnx or .qir")
    p.add_argument("--target", "-t", metavar="TARGET", help="compile for this target (see --list-targets)")
    p.add_argument("-o", "--output", metavar="OUT", help="output directory DIR with --target (new, empty or an "
                                                         "earlier qirc output, which is replaced), or file with "
                                                         "--emit (default stdout)")
    p.add_argument("--emit", choices=("qir", "dot"), help="print the imported model as textual IR or Graphviz dot "
                                                           "instead of compiling")
    p.add_argument("--elide-constants", action="store_true", help="with --emit qir: print large constants as "
                                                                   "placeholders")
    p.add_argument("--inputs", metavar="SAMPLES.npz",
                   help="an .npz of float input samples (first axis = sample) for the test vectors")
    _add_input_shape_argument(p)
    p.add_argument("--outputs", metavar="NAME[,NAME]",
                   help="compile only the subgraph computing these tensors (cut off a float Softmax or a head)")
    p.add_argument("-p", "--pipeline", "--passes", dest="pipeline", default=None,
                   help="extra passes to run after lowering, before legalisation: 'a,b{k=v}'")
    p.add_argument("--print-ir-after-all", action="store_true", help="dump the IR to stderr after every pass")
    p.add_argument("--dump-ir", metavar="IRDIR", help="write the IR after import and after every pass into IRDIR "
                                                       "(one NN-pass.qir file each; a new, empty or earlier --dump-ir "
                                                       "directory)")
    p.add_argument("--format", choices=("qir", "dot"), default="qir", help="file format for --dump-ir")
    p.add_argument("--seed", metavar="N", type=int, default=0,
                   help="seed of the random test inputs (without --inputs)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a requant, or an Add's common int32 scale, whose int32-safe form may be off by one "
                        "output step or more (by default it is compiled, warned about on stderr and recorded in "
                        "qirc.json)")
    p.add_argument("--layers", action="store_true", help="also write per-layer error figures into qirc.json "
                                                          "(accuracy.layers, as qirc report computes them; slower)")
    p.add_argument("--list-targets", action="store_true", help="list the compilation targets")
    return p


def _main(argv: List[str]) -> Optional[int]:
    if argv and argv[0] in _SUBCOMMANDS:
        return {"sim": _sim, "zoo": _zoo, "report": _report}[argv[0]](argv[1:])
    args = _main_parser().parse_args(argv)
    if args.list_targets:
        from .backends.deeploy.targets import describe_targets
        sys.stdout.write(describe_targets())
        return None
    if not args.model:
        raise UsageError("no model given (qirc MODEL --target T -o DIR, or qirc MODEL --emit qir)")
    if args.emit and args.target:
        raise UsageError("--emit and --target exclude each other")
    onnx_options = _onnx_options(args)
    if args.emit:
        from .frontends import load_model
        if args.output:
            from .outputs import check_output_file
            check_output_file(args.output, "emit")  # `--emit qir -o model.onnx` must not eat the model
        module = load_model(args.model, **onnx_options)
        text = _render(module, args.emit, args.elide_constants)
        if args.output:
            write_text_atomic(args.output, text)
        else:
            sys.stdout.write(text)
        return None
    if not args.target:
        raise UsageError("nothing to do: give --target T -o DIR to compile, or --emit qir to print the IR")
    if not args.output:
        raise UsageError("--target needs an output directory: -o DIR")
    from .driver import compile_model
    summary = compile_model(args.model, args.target, args.output, inputs_npz=args.inputs,
                            extra_pipeline=args.pipeline, print_ir_after_all=args.print_ir_after_all,
                            dump_ir_dir=args.dump_ir, dump_format=args.format, seed=args.seed,
                            layers=args.layers, strict=args.strict, input_shapes=onnx_options["input_shapes"],
                            subgraph_outputs=onnx_options["outputs"], note=onnx_options["note"])
    for line in summary.warnings:
        _print_error(f"qirc: warning: {line}")
    sys.stdout.write(summary.text())
    return None


def _add_input_shape_argument(p: argparse.ArgumentParser) -> None:
    """`--input-shape NAME=DIMS`, the same for qirc, qirc sim and qirc report (parsed by `_input_shapes`)."""
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                   help="static shape of a graph input with dynamic dims, e.g. x=1x3x32x32 (repeatable); a lone "
                        "dynamic batch dim is bound to 1 without it")


def _input_shapes(args) -> Optional[dict]:
    """The --input-shape options as {input name: shape}, or None when none is given (UsageError when malformed or
    given twice)."""
    from .frontends.onnx.loader import parse_input_shape
    shapes = {}
    for text in args.input_shape:
        name, shape = parse_input_shape(text)
        if name in shapes:
            raise UsageError(f"--input-shape: input '{name}' is given twice")
        shapes[name] = shape
    return shapes or None


def _onnx_options(args) -> dict:
    """--input-shape / --outputs as import options, and notes (a bound batch dim) printed to stderr."""
    shapes = _input_shapes(args)
    outputs = None
    if args.outputs is not None:
        outputs = [n.strip() for n in args.outputs.split(",") if n.strip()]
        if not outputs:
            raise UsageError("--outputs: give at least one tensor name")
    return {"input_shapes": shapes, "outputs": outputs, "note": _print_note}


def _print_note(text: str) -> None:
    _print_error(f"qirc: note: {text}")


def _render(module, fmt: str, elide_constants: bool) -> str:
    if fmt == "dot":
        from .qir.dot import print_dot
        return print_dot(module)
    from .qir.printer import print_module
    return print_module(module, elide_constants=elide_constants)


def _sim(argv: List[str]) -> Optional[int]:
    p = _ArgumentParser(prog="qirc sim", description="Run the simulator (the IR interpreter) on a model: any ONNX "
                        "form qirc imports, qirc's own Deeploy output, or a .qir file, for every sample of IN.npz. "
                        "IN.npz holds one array per model input, named like it (a one-input model also takes one "
                        "unnamed array), each with a leading sample axis (N samples: N x the input's shape without "
                        "its batch axis). OUT.npz gets each output stacked over the samples, in the dtype "
                        "outputs.npz uses (the storage type of a quantized output).",
                        epilog="Example: qirc sim build/m/network.onnx --inputs build/m/inputs.npz -o out.npz")
    p.add_argument("file", metavar="MODEL", help="model: .onnx (quantized ONNX or qirc's network.onnx) or .qir")
    p.add_argument("--inputs", metavar="IN.npz", required=True, help="npz of input samples")
    p.add_argument("-o", "--output", metavar="OUT.npz", required=True,
                   help="npz of outputs to write (a new file or an earlier qirc sim output)")
    _add_input_shape_argument(p)
    args = p.parse_args(argv)
    from .driver import simulate_file
    summary = simulate_file(args.file, args.inputs, args.output, input_shapes=_input_shapes(args),
                            note=lambda text: _print_error(f"qirc sim: note: {text}"))
    for note in summary.notes:
        _print_error(f"qirc sim: note: {note}")
    sys.stdout.write(summary.text())
    return None


def _zoo(argv: List[str]) -> Optional[int]:
    p = _ArgumentParser(prog="qirc zoo", description="The MLPerf Tiny networks as Brevitas models "
                        "(needs the brevitas extra: pip install -e .[brevitas]).")
    sub = p.add_subparsers(dest="cmd")
    sub.required = True
    sub.add_parser("list", help="name, task, input shape, parameters, MACs")
    b = sub.add_parser("build", help="build, calibrate and export a network; with --target, compile it")
    b.add_argument("name", metavar="NAME", help="a network of 'qirc zoo list'")
    b.add_argument("-o", "--output", metavar="DIR", required=True,
                   help="output directory (new, empty or an earlier zoo build); gets DIR/model.onnx")
    b.add_argument("--format", choices=("qcdq", "qdq", "qonnx"), default="qcdq")
    b.add_argument("--calibrate", metavar="F.npz", help="float calibration samples (default: seeded synthetic "
                                                        "inputs)")
    b.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    b.add_argument("--act-bits", metavar="BITS", type=int, default=8, help="activation bit width")
    b.add_argument("--opset", metavar="N", type=int, help="ONNX opset of the qdq / qonnx export (default 13 for qdq; "
                                                         "from 17 on a LayerNorm is exported as LayerNormalization)")
    b.add_argument("--target", metavar="TARGET",
                   help="also compile the exported model for this target (into DIR/TARGET)")
    args = p.parse_args(argv)
    from . import zoo
    if args.cmd == "list":
        sys.stdout.write(zoo.format_zoo_table(zoo.zoo_list()) + "\n")
        return None
    path = zoo.zoo_build(args.name, args.output, format=args.format, calibrate=args.calibrate,
                         per_channel=args.per_channel, act_bits=args.act_bits, opset=args.opset)
    print(f"wrote {path}")
    if args.target:
        from .driver import compile_model
        out = os.path.join(args.output, args.target)
        sys.stdout.write(compile_model(str(path), args.target, out).text())
    return None


def _report(argv: List[str]) -> Optional[int]:
    p = _ArgumentParser(prog="qirc report", description="Compare the integer graph qirc builds for a target with "
                        "the fake-quant model, layer by layer, and write one self-contained HTML page: per "
                        "requantized tensor its error in output steps, a histogram of it, saturation and "
                        "accumulator use (needs matplotlib: pip install -e .[report]).",
                        epilog="Example: qirc report model.onnx --target deeploy-siracusa -o report.html")
    p.add_argument("model", metavar="MODEL", help="the quantized model (.onnx or .qir)")
    p.add_argument("--target", "-t", metavar="TARGET", required=True,
                   help="lower for this target (see qirc --list-targets)")
    p.add_argument("--inputs", metavar="F.npz", help="float input samples (first axis = sample); default: seeded "
                                                     "random inputs")
    p.add_argument("--samples", metavar="N", type=int, default=4,
                   help="number of random samples without --inputs (default 4)")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="seed of the random samples")
    p.add_argument("-o", "--output", metavar="REPORT.html", required=True,
                   help="the HTML file to write (a new file or an earlier qirc report page)")
    _add_input_shape_argument(p)
    args = p.parse_args(argv)
    input_shapes = _input_shapes(args)
    from .outputs import check_output_file
    from .report.page import build_report, render_html, require_matplotlib
    check_output_file(args.output, "report")  # never overwrite a file qirc did not write
    require_matplotlib()  # fail before the work, not after it
    data = build_report(args.model, args.target, inputs_npz=args.inputs, samples=args.samples, seed=args.seed,
                        input_shapes=input_shapes, note=lambda text: _print_error(f"qirc report: note: {text}"))
    write_text_atomic(args.output, render_html(data))
    print(f"wrote {args.output} ({len(data.layers)} requantized tensors, {data.samples} sample(s))")
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`qirc MODEL --target T -o DIR`, `qirc MODEL --emit qir`, `qirc sim`, `qirc zoo`; returns the exit code."""
    return run_cli(_main, argv, prog="qirc")


if __name__ == "__main__":
    sys.exit(main())
