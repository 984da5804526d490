"""The compile driver: import -> lower -> legalise -> emit -> test vectors -> write DIR, all or nothing.

    from qirc.driver import compile_model
    summary = compile_model("model.onnx", "deeploy-siracusa", "build/model")

is what `qirc MODEL --target T -o DIR` runs.  Together with cli.py it is the only module that imports frontends,
lowering and backends together.  Steps:

  1. import the model with the ONNX frontend (quant level);
  2. run `lower-to-int` with the target's lowering options, then the user's extra pipeline (`-p`, integer IR), then
     `deeploy-legalize{target=T}`, all through one PassManager (verification between passes, IR dumps);
  3. emit the Deeploy ONNX graph and read it back with `qirc.frontends.deeploy` (the vectors are computed on exactly
     the graph that is written);
  4. quantize the float samples (`--inputs FILE.npz`, else seeded random ones) and run the device graph on all of
     them in ONE batched interpreter call: the first sample's outputs are outputs.npz, every sample is compared with
     the quant-level model (also one batched call) for qirc.json's accuracy summary; per-layer figures
     (`accuracy.layers`, several more interpreter runs) only with `layers=True` (`qirc --layers`, `qirc report`);
     and, always, per requant of the lowered module its error bound and its mismatch against the exact requantizer
     on the samples (`qirc.lowering.precision`; `accuracy.requants`, one more batched run), with a warning for each
     whose bound reaches one output step, and the common-scale choice of every rescaled Add (`accuracy.add_rescales`,
     recorded by lower-to-int) with a warning for each whose bound reaches one output step (`strict` refuses both
     in step 2 instead);
  5. write network.onnx, inputs.npz, outputs.npz and qirc.json into a temporary folder next to DIR and rename it into
     place: a failed run leaves no DIR and an existing DIR untouched until the new one is complete.  DIR must be new,
     empty or a previous qirc output (checked before step 1; qirc.outputs): qirc never removes a file it did not
     write.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, TextIO

from . import _onnx as onnx  # onnx's protobufs without its 1 s import (see qirc/_onnx.py)
from . import outputs
from .backends.deeploy import vectors
from .backends.deeploy.emit import emit_onnx
from .backends.deeploy.legalize import DeeployLegalize
from .backends.deeploy.rules.harness import debug_pass_report
from .backends.deeploy.targets import DeeployTarget, get_target
from .frontends.deeploy import import_deeploy_onnx, is_deeploy_onnx
from .frontends import load_model
from .frontends.onnx import import_onnx
from .lowering.precision import add_rescale_warnings, precision_warnings, requant_precision
from .qir.diagnostics import QircError, UsageError
from .qir.ir import Module
from .qir.passes import ModulePass, PassManager, parse_pipeline
from .qir.printer import print_module

FILES = ("network.onnx", "inputs.npz", "outputs.npz", "qirc.json")


@dataclass
class CompileSummary:
    """What a run wrote: the folder, the target, the pass specs, the I/O description and the accuracy report."""

    out_dir: str
    target: str
    files: List[str]
    passes: List[str]
    inputs: List[Dict]
    outputs: List[Dict]
    accuracy: Dict
    nodes: int
    op_counts: Dict[str, int] = field(default_factory=dict)
    module: Optional[Module] = field(default=None, repr=False)  # the legalised integer IR that was emitted
    warnings: List[str] = field(default_factory=list)  # one line each, without a prefix (the CLI prints them)

    def text(self) -> str:
        """A few lines for the terminal."""
        lines = [f"wrote {self.out_dir} ({self.target}: {self.nodes} nodes, "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.op_counts.items())) + ")"]
        described = {o["name"]: o for o in self.outputs}
        for rec in self.accuracy.get("outputs", []):
            if rec.get("max_error_steps") is None:
                continue
            agree = rec.get("argmax_agreement")
            lines.append(f"  output '{rec['name']}': max error {rec['max_error_steps']:.3g} "
                         f"{_step_unit(described.get(rec['name']))}, mean "
                         f"{rec['mean_error_steps']:.3g}" + ("" if agree is None else f", argmax agreement "
                                                             f"{100 * agree:.1f}%")
                         + f" over {self.accuracy['samples']} sample(s)")
        for rec in self.accuracy.get("approximations", []):
            wrapped = f", {rec['wrapped']} output(s) wrapped" if rec.get("wrapped") else ""
            lines.append(f"  {rec['kernel']} '{rec['node']}' vs the float op: mean error {rec['mean_error_steps']:.3g}, "
                         f"max {rec['max_error_steps']:.3g} output step(s){wrapped}")
        return "\n".join(lines) + "\n"


def _step_unit(output: Optional[Dict]) -> str:
    """What one step of an output is: an 8-bit output's quantization step, or for an int32 output (a last layer
    without an output quantizer) the accumulator's far finer one, named with its scale so that a count in the
    hundreds is not read as hundreds of output levels."""
    if output and output.get("dtype") == "int32" and isinstance(output.get("scale"), float):
        return f"int32 accumulator step(s) of {output['scale']:.3g}"
    return "step(s)"


def lowering_pipeline(target: DeeployTarget, strict: bool = False) -> str:
    """The pipeline text that lowers a quant-level module for `target` (strict: refuse imprecise requants)."""
    return f"lower-to-int{{signed-normalize={1 if target.signed_normalize else 0}{',strict=1' if strict else ''}}}"


def build_passes(target: DeeployTarget, extra_pipeline: Optional[str] = None,
                 strict: bool = False) -> List[ModulePass]:
    """lower-to-int (always the first pass), the extra pipeline, deeploy-legalize."""
    passes = parse_pipeline(lowering_pipeline(target, strict))
    if extra_pipeline:
        passes += parse_pipeline(extra_pipeline)
    passes.append(DeeployLegalize(target=target.name))
    return passes


def _render(module: Module, fmt: str) -> str:
    if fmt == "dot":
        from .qir.dot import print_dot
        return print_dot(module)
    return print_module(module)


def _run_passes(module: Module, passes: List[ModulePass], print_ir_after_all: bool, dump_ir_dir: Optional[str],
                out: Optional[TextIO], dump_format: str = "qir") -> Module:
    """Run `passes` over `module`; returns a copy of the module after the first pass (the lowered integer IR, whose
    requants are still in the form requant-fusion chose)."""
    if dump_ir_dir is None:
        PassManager(passes[:1], print_ir_after_all=print_ir_after_all, out=out).run(module)
        lowered = module.clone()
        PassManager(passes[1:], print_ir_after_all=print_ir_after_all, out=out).run(module)
        return lowered
    ext = "dot" if dump_format == "dot" else "qir"
    # the dumps go to a folder next to DIR that replaces it at the end, also when a pass fails (that is when they
    # are wanted): DIR never mixes this run's files with an earlier run's
    dump_ir_dir = os.path.abspath(dump_ir_dir)
    try:
        staging = outputs.staging_dir(dump_ir_dir)
    except OSError as e:
        raise QircError(f"--dump-ir: cannot write ({e.strerror or e})", file=dump_ir_dir) from None

    def dump(file_name: str) -> None:
        try:
            with open(os.path.join(staging, file_name), "w") as f:
                f.write(_render(module, dump_format))
        except OSError as e:
            raise QircError(f"--dump-ir: cannot write ({e.strerror or e})", file=dump_ir_dir) from None

    lowered = module
    try:
        dump(f"00-imported.{ext}")
        for i, p in enumerate(passes, 1):
            PassManager([p], print_ir_after_all=print_ir_after_all, out=out).run(module)
            dump(f"{i:02d}-{p.name}.{ext}")
            if i == 1:
                lowered = module.clone()
    finally:
        try:
            outputs.install_dir(staging, dump_ir_dir, "dump", "--dump-ir")
        except OSError as e:
            raise QircError(f"--dump-ir: cannot write ({e.strerror or e})", file=dump_ir_dir) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # made by this run: everything in it is ours
    return lowered


def _errors_name_the_model_file(compile_fn):
    """Let an error located at an op (a pass, emission, the test vectors) also name the model file, as the
    frontend's errors do; usage errors are about the command line and stay as they are."""
    @functools.wraps(compile_fn)
    def wrapper(model_path, *args, **kwargs):
        try:
            return compile_fn(model_path, *args, **kwargs)
        except QircError as e:
            if isinstance(model_path, (str, os.PathLike)) and not isinstance(e, UsageError):
                e.with_file(os.fspath(model_path))
            raise
    return wrapper


@_errors_name_the_model_file
def compile_model(model_path, target, out_dir, inputs_npz: Optional[str] = None,
                  extra_pipeline: Optional[str] = None, print_ir_after_all: bool = False,
                  dump_ir_dir: Optional[str] = None, seed: int = 0, accuracy_samples: int = 8,
                  out: Optional[TextIO] = None, dump_format: str = "qir", layers: bool = False,
                  strict: bool = False, input_shapes: Optional[Dict[str, tuple]] = None,
                  subgraph_outputs: Optional[List[str]] = None, note=None) -> CompileSummary:
    """Compile `model_path` (a quantized ONNX file or ModelProto) for `target` into `out_dir`; see the module doc.

    inputs_npz        float input samples (one array per graph input, optionally with a leading sample axis);
                      the first sample makes inputs.npz/outputs.npz, all of them the accuracy report
    extra_pipeline    passes run on the integer IR after lower-to-int and before legalisation
    print_ir_after_all  dump the IR after every pass to `out` (stderr by default)
    dump_ir_dir       also write the IR after import and after every pass as NN-pass.qir files there
    dump_format       "qir" (text) or "dot" (Graphviz) for those files
    strict            refuse a requant (or an Add's common int32 scale) whose worst-case approximation error reaches
                      one output step (LoweringError) instead of compiling it with a warning (summary.warnings) and
                      its record in qirc.json (accuracy.requants, accuracy.add_rescales)
    seed, accuracy_samples  the random samples used when no inputs_npz is given
    layers            also compute the per-layer figures of `qirc.report.figures` into accuracy.layers, and for
                      a transformer the network's error with each kind of approximating kernel computed exactly
                      (`qirc.report.ablation`) into accuracy.exact_kernels
    input_shapes      {input name: shape} for dynamic inputs (`--input-shape`; a lone dynamic batch dim is bound
                      to 1 without it, with a note through `note(text)`)
    subgraph_outputs  compile the subgraph computing these tensors (`--outputs`)
    Raises a QircError subclass for bad input (UsageError, FrontendError, LoweringError, BackendError, ...).
    """
    target = get_target(target)
    out_dir = os.path.abspath(os.fspath(out_dir))
    # refuse before any work a folder qirc may not write into (qirc.outputs: only new, empty or previous outputs)
    outputs.check_output_dir(out_dir, "compile")
    if dump_ir_dir is not None:
        outputs.check_output_dir(dump_ir_dir, "dump", "--dump-ir")
        dump_abs = os.path.abspath(dump_ir_dir)
        if dump_abs == out_dir or os.path.commonpath([dump_abs, out_dir]) in (dump_abs, out_dir):
            # each is replaced as a whole: one inside the other would be a file the other did not write
            raise UsageError(f"--dump-ir '{dump_ir_dir}' and -o '{out_dir}' must not be one inside the other")
    if accuracy_samples < 1:
        raise UsageError(f"accuracy_samples must be at least 1, got {accuracy_samples}")
    if inputs_npz is not None and not os.path.isfile(inputs_npz):
        raise UsageError(f"--inputs: no such file '{inputs_npz}'")

    onnx_options = {"input_shapes": input_shapes, "outputs": subgraph_outputs, "note": note}
    quant_module = (load_model(model_path, **onnx_options) if isinstance(model_path, (str, os.PathLike))
                    else import_onnx(model_path, **onnx_options))
    check_activation_bits(quant_module, target)
    module = quant_module.clone()
    passes = build_passes(target, extra_pipeline, strict)
    lowered = _run_passes(module, passes, print_ir_after_all, dump_ir_dir, out if out is not None else sys.stderr,
                          dump_format)

    model = emit_onnx(module, target)
    device = import_deeploy_onnx(model)
    input_names = [vi.name for vi in model.graph.input]
    output_names = [vi.name for vi in model.graph.output]

    samples = vectors.float_samples(quant_module, inputs_npz, seed, accuracy_samples)
    int_samples = vectors.quantize_samples(quant_module, module, samples)
    device_runs: List[Dict] = []  # the device graph's outputs per sample, from the accuracy report's one batched run
    accuracy = vectors.accuracy_report(quant_module, module, device, samples, int_samples, output_names,
                                       device_outputs=device_runs)
    first_outputs = device_runs[0]
    accuracy["inputs"] = os.path.basename(inputs_npz) if inputs_npz else f"random (seed {seed})"
    if layers:
        from .report.figures import layer_figures  # per requantized tensor (qirc report's numbers; no matplotlib)
        accuracy["layers"] = layer_figures(quant_module, module, samples)
        from .report.ablation import exact_kernel_ablation
        ablation = exact_kernel_ablation(quant_module, module, samples, int_samples)
        if ablation:  # the network with each kind of approximating kernel computed exactly
            accuracy["exact_kernels"] = ablation
    from .lowering.approximations import approximation_report
    approximations = approximation_report(quant_module, module, int_samples)
    if approximations:  # iSoftmax / iLayerNorm / iGELU against the float ops they replace
        accuracy["approximations"] = approximations
    # (the Adds' records, from lower-to-int, are measured in the same run as the requants)
    add_records = [dict(r) for r in getattr(passes[0], "add_rescales", None) or []]
    accuracy["requants"] = requant_precision(lowered, int_samples, add_records=add_records)
    accuracy["add_rescales"] = add_records
    warnings = [f"{os.fspath(model_path)}: {line}" if isinstance(model_path, (str, os.PathLike)) else line
                for line in precision_warnings(accuracy["requants"], len(int_samples))
                + add_rescale_warnings(accuracy["add_rescales"], len(int_samples))]
    io = vectors.io_description(module, input_names, output_names)
    pass_specs = [p.spec() for p in passes]
    report = {"target": target.name, "platform": target.platform, **io, "passes": pass_specs,
              "accuracy": accuracy}
    report["deeploytest_debug_pass"] = debug_pass_report(model, target)

    in_types = [op.results[0].type for op in module.inputs]
    out_types = [op.operands[0].type for op in module.outputs]
    try:
        tmp = outputs.staging_dir(out_dir)
    except OSError as e:
        outputs.check_output_dir(out_dir, "compile")
        raise QircError(f"cannot write the output directory ({e.strerror or e})", file=out_dir) from None
    try:
        onnx.save(model, os.path.join(tmp, "network.onnx"))
        vectors.save_npz(os.path.join(tmp, "inputs.npz"), input_names, list(int_samples[0].values()), in_types)
        vectors.save_npz(os.path.join(tmp, "outputs.npz"), output_names, list(first_outputs.values()), out_types)
        with open(os.path.join(tmp, "qirc.json"), "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        outputs.install_dir(tmp, out_dir, "compile")
    except OSError as e:
        raise QircError(f"cannot write the output directory ({e.strerror or e})", file=out_dir) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # made by this run (gone once installed)
    counts: Dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return CompileSummary(out_dir, target.name, list(FILES), pass_specs, io["inputs"], io["outputs"], accuracy,
                          len(model.graph.node), counts, module, warnings)


def check_activation_bits(quant_module: Module, target: DeeployTarget) -> None:
    """Refuse, before lowering, a model whose activations (or weights) are quantized wider than 8 bits, naming the
    first such tensor: every Deeploy target runs int8/uint8 activations (RequantShift outputs 8 bits) and int8
    weights."""
    from .qir.diagnostics import LoweringError, op_error
    for op in quant_module.ops():
        if op.name not in ("quant.qcast", "qir.const") or not op.results[0].type.is_quant:
            continue
        qt = op.results[0].type.quant
        # i32 grids (QONNX Trunc's integer step, accumulators) and i32 constants (biases) are not 8-bit data
        if qt.storage.name in ("i32", "u32") or qt.storage_max - qt.storage_min < 256:
            continue
        if op.name == "qir.const" and not _is_weight(op):
            continue  # a bias or another constant operand: lowered as int32
        bits = int(qt.storage_max - qt.storage_min).bit_length()
        what = "activations" if op.name == "quant.qcast" else "weights"
        where = "this quantizer's output" if op.name == "quant.qcast" else "this constant"
        raise op_error(LoweringError, op, f"{bits}-bit {what}: {where} is {qt.storage.name} "
                       f"({qt.storage_min}..{qt.storage_max}), but the Deeploy targets take 8-bit {what} "
                       f"(target {target.name}); quantize {what} to 8 bits (int8 or uint8)")


def _is_weight(const) -> bool:
    """Whether a quantized constant is dequantized into the weight operand of a Conv, Gemm or MatMul."""
    for dcast in const.results[0].users:
        if dcast.name == "quant.dcast":
            for user, index in dcast.results[0].uses:
                if user.name in ("onnx.Conv", "onnx.Gemm", "onnx.MatMul") and index == 1:
                    return True
    return False


def load_any(path: str, input_shapes: Optional[Dict[str, tuple]] = None, note=None) -> Module:
    """A model file as IR: qirc's own Deeploy output (integer IR), any quantized ONNX qirc imports, or .qir text.

    input_shapes, note: as for `compile_model` (`--input-shape`; a quantized ONNX model only: qirc's own output and
    .qir files have static shapes, and a shape given for them is a UsageError)."""
    if str(path).endswith(".onnx") and os.path.isfile(path) and is_deeploy_onnx(path):
        if input_shapes:
            raise UsageError("--input-shape applies to a quantized source model, not to qirc's own network.onnx "
                             "(its input shapes are static)")
        return import_deeploy_onnx(path)
    return load_model(path, input_shapes=input_shapes, note=note)


@dataclass
class SimSummary:
    """What `qirc sim` wrote: the file, the number of samples, the outputs (stacked over samples) and notes."""

    path: str
    samples: int
    outputs: Dict
    notes: List[str] = field(default_factory=list)

    def text(self) -> str:
        """One line for the terminal."""
        shown = ", ".join(f"'{k}' {'x'.join(map(str, a.shape))} {a.dtype}" for k, a in self.outputs.items())
        return f"wrote {self.path}: {self.samples} sample(s); {shown}\n"


def _read_npz(path: str) -> Dict:
    import numpy as np

    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        # np.load would try it as a pickle (and advise allow_pickle) or hand back a bare .npy array
        raise QircError("not an .npz file (not a zip archive; numpy.savez writes one)", file=path)
    try:
        with np.load(path) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except FileNotFoundError:
        raise QircError("no such file", file=path) from None
    except IsADirectoryError:
        raise QircError("is a directory, not an .npz file", file=path) from None
    except Exception as e:  # np.load raises many types for a bad file; all mean "not an npz"
        raise QircError(f"not a readable .npz file ({type(e).__name__}: {e})", file=path) from None


def simulate_file(model_path: str, inputs_npz: str, outputs_npz: str,
                  input_shapes: Optional[Dict[str, tuple]] = None, note=None) -> SimSummary:
    """`qirc sim`: run the interpreter on `model_path` (any form `load_any` reads) for every sample of `inputs_npz`
    and write the outputs to `outputs_npz` (atomically), keyed by output name, stacked over the samples, each in
    the dtype outputs.npz uses for it (the storage type of a quantized output: int8, uint8, ...; float32 else).

    `inputs_npz` holds one array per model input, named like it (a one-input model also takes a single array of
    any name, as numpy.savez(f, x) writes it), each with a leading sample axis: [N, ...] where the model declares
    [1, ...].  Integer arrays given to a float input are used as real numbers, and a note says so.  input_shapes,
    note: the model's dynamic input dims (`--input-shape`, as `compile_model` takes them; a lone dynamic batch dim
    is bound to 1 without it, with a note through `note(text)`).
    """
    import numpy as np

    from .qir.batch import run_samples
    outputs.check_output_file(outputs_npz, "sim")
    module = load_any(model_path, input_shapes=input_shapes, note=note)
    names = module.input_names()
    arrays = _read_npz(inputs_npz)
    if set(arrays) == set(names):
        given = [arrays[n] for n in names]
    elif len(arrays) == 1 and len(names) == 1:
        given = list(arrays.values())
    else:
        raise QircError(f"has {len(arrays)} array(s) ({', '.join(arrays) or 'none'}) but the model has "
                        f"{len(names)} input(s) ({', '.join(names)}); name each array like its input (a one-input "
                        f"model also takes one unnamed array)", file=inputs_npz)
    notes = []
    counts = []
    for op, name, array in zip(module.inputs, names, given):
        t = op.results[0].type
        if array.ndim != t.rank or tuple(array.shape[1:]) != tuple(t.shape[1:]) or array.shape[0] < 1:
            want = "x".join(map(str, t.shape))
            per_sample = "x".join(["N"] + [str(d) for d in t.shape[1:]])
            raise QircError(f"array for input '{name}' has shape {'x'.join(map(str, array.shape)) or 'scalar'}; "
                            f"the model takes {want}, so give {per_sample} (a leading sample axis)",
                            file=inputs_npz)
        counts.append(array.shape[0])
        if t.is_float and np.issubdtype(array.dtype, np.integer):
            notes.append(f"input '{name}' of {os.path.basename(str(model_path))} is float but the arrays are "
                         f"{array.dtype}: they are used as real numbers, not as quantized values (integer test "
                         f"vectors such as inputs.npz go with the compiled network.onnx)")
    if len(set(counts)) > 1:
        raise QircError(f"the arrays hold different numbers of samples ({', '.join(map(str, counts))})",
                        file=inputs_npz)
    n = counts[0] if counts else 1
    samples = [[a[i:i + 1] for a in given] for i in range(n)]
    try:
        results = run_samples(module, samples)
    except QircError as e:
        raise e.with_file(str(model_path))
    out_types = [op.operands[0].type for op in module.outputs]
    stacked = {k: np.concatenate([r[k] for r in results]).astype(t.storage.np_dtype)
               for k, t in zip(module.output_names(), out_types)}
    parent = os.path.dirname(os.path.abspath(outputs_npz)) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".qirc-", suffix=".npz", dir=parent)
    except OSError as e:
        raise QircError(f"cannot write ({e.strerror or e})", file=outputs_npz) from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **stacked)
        outputs.mark_sim_output(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, outputs_npz)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise QircError(f"cannot write ({e.strerror or e})", file=outputs_npz) from None
        raise
    return SimSummary(outputs_npz, n, stacked, notes)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def simulate(model_path, inputs_npz: Optional[str] = None, seed: int = 0) -> Dict:
    """Run a Deeploy-form network.onnx (as qirc writes it) on inputs.npz (or seeded random integers)."""
    from .qir import interpreter
    import numpy as np
    device = import_deeploy_onnx(model_path)
    if inputs_npz is None:
        inputs = interpreter.random_inputs(device, seed)
    else:
        with np.load(inputs_npz) as data:
            inputs = [np.asarray(data[k]) for k in data.files]
    return interpreter.run(device, inputs)
