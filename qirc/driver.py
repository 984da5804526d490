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
  4. quantize the float samples (`--inputs FILE.npz`, else seeded random ones), run the device graph for
     inputs.npz / outputs.npz (first sample) and compare every sample with the quant-level model for qirc.json;
  5. write network.onnx, inputs.npz, outputs.npz and qirc.json into a temporary folder next to DIR and rename it into
     place: a failed run leaves no DIR and an existing DIR untouched until the new one is complete.
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

import onnx

from .backends.deeploy import vectors
from .backends.deeploy.emit import emit_onnx
from .backends.deeploy.legalize import DeeployLegalize
from .backends.deeploy.targets import DeeployTarget, get_target
from .frontends.deeploy import import_deeploy_onnx, is_deeploy_onnx
from .frontends import load_model
from .frontends.onnx import import_onnx
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

    def text(self) -> str:
        """A few lines for the terminal."""
        lines = [f"wrote {self.out_dir} ({self.target}: {self.nodes} nodes, "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.op_counts.items())) + ")"]
        for rec in self.accuracy.get("outputs", []):
            if rec.get("max_error_steps") is None:
                continue
            agree = rec.get("argmax_agreement")
            lines.append(f"  output '{rec['name']}': max error {rec['max_error_steps']:.3g} step(s), mean "
                         f"{rec['mean_error_steps']:.3g}" + ("" if agree is None else f", argmax agreement "
                                                             f"{100 * agree:.1f}%")
                         + f" over {self.accuracy['samples']} sample(s)")
        for rec in self.accuracy.get("approximations", []):
            wrapped = f", {rec['wrapped']} output(s) wrapped" if rec.get("wrapped") else ""
            lines.append(f"  {rec['kernel']} '{rec['node']}' vs the float op: mean error {rec['mean_error_steps']:.3g}, "
                         f"max {rec['max_error_steps']:.3g} output step(s){wrapped}")
        return "\n".join(lines) + "\n"


def lowering_pipeline(target: DeeployTarget) -> str:
    """The pipeline text that lowers a quant-level module for `target`."""
    return f"lower-to-int{{signed-normalize={1 if target.signed_normalize else 0}}}"


def build_passes(target: DeeployTarget, extra_pipeline: Optional[str] = None) -> List[ModulePass]:
    passes = parse_pipeline(lowering_pipeline(target))
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
                out: Optional[TextIO], dump_format: str = "qir") -> None:
    if dump_ir_dir is None:
        PassManager(passes, print_ir_after_all=print_ir_after_all, out=out).run(module)
        return
    ext = "dot" if dump_format == "dot" else "qir"

    def dump(file_name: str) -> None:
        try:
            os.makedirs(dump_ir_dir, exist_ok=True)
            with open(os.path.join(dump_ir_dir, file_name), "w") as f:
                f.write(_render(module, dump_format))
        except OSError as e:
            raise QircError(f"--dump-ir: cannot write ({e.strerror or e})", file=dump_ir_dir) from None

    dump(f"00-imported.{ext}")
    for i, p in enumerate(passes, 1):
        PassManager([p], print_ir_after_all=print_ir_after_all, out=out).run(module)
        dump(f"{i:02d}-{p.name}.{ext}")


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
                  out: Optional[TextIO] = None, dump_format: str = "qir") -> CompileSummary:
    """Compile `model_path` (a quantized ONNX file or ModelProto) for `target` into `out_dir`; see the module doc.

    inputs_npz        float input samples (one array per graph input, optionally with a leading sample axis);
                      the first sample makes inputs.npz/outputs.npz, all of them the accuracy report
    extra_pipeline    passes run on the integer IR after lower-to-int and before legalisation
    print_ir_after_all  dump the IR after every pass to `out` (stderr by default)
    dump_ir_dir       also write the IR after import and after every pass as NN-pass.qir files there
    dump_format       "qir" (text) or "dot" (Graphviz) for those files
    seed, accuracy_samples  the random samples used when no inputs_npz is given
    Raises a QircError subclass for bad input (UsageError, FrontendError, LoweringError, BackendError, ...).
    """
    target = get_target(target)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"output path '{out_dir}' exists and is not a directory")
    _check_output_parent(out_dir)
    if accuracy_samples < 1:
        raise UsageError(f"accuracy_samples must be at least 1, got {accuracy_samples}")
    if inputs_npz is not None and not os.path.isfile(inputs_npz):
        raise UsageError(f"--inputs: no such file '{inputs_npz}'")

    quant_module = load_model(model_path) if isinstance(model_path, (str, os.PathLike)) else import_onnx(model_path)
    module = quant_module.clone()
    passes = build_passes(target, extra_pipeline)
    _run_passes(module, passes, print_ir_after_all, dump_ir_dir, out if out is not None else sys.stderr, dump_format)

    model = emit_onnx(module, target)
    device = import_deeploy_onnx(model)
    input_names = [vi.name for vi in model.graph.input]
    output_names = [vi.name for vi in model.graph.output]

    samples = vectors.float_samples(quant_module, inputs_npz, seed, accuracy_samples)
    int_samples = vectors.quantize_samples(quant_module, module, samples)
    first_outputs = vectors.device_outputs(device, int_samples[0])
    accuracy = vectors.accuracy_report(quant_module, module, device, samples, int_samples, output_names)
    accuracy["inputs"] = os.path.basename(inputs_npz) if inputs_npz else f"random (seed {seed})"
    from .report.figures import layer_figures  # per requantized tensor (qirc report's numbers; no matplotlib)
    accuracy["layers"] = layer_figures(quant_module, module, samples)
    from .lowering.approximations import approximation_report
    approximations = approximation_report(quant_module, module, int_samples)
    if approximations:  # iSoftmax / iLayerNorm / iGELU against the float ops they replace
        accuracy["approximations"] = approximations
    io = vectors.io_description(module, input_names, output_names)
    pass_specs = [p.spec() for p in passes]
    report = {"target": target.name, "platform": target.platform, **io, "passes": pass_specs,
              "accuracy": accuracy}

    in_types = [op.results[0].type for op in module.inputs]
    out_types = [op.operands[0].type for op in module.outputs]
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    except OSError as e:
        _check_output_parent(out_dir)
        raise QircError(f"cannot write the output directory ({e.strerror or e})", file=out_dir) from None
    try:
        onnx.save(model, os.path.join(tmp, "network.onnx"))
        vectors.save_npz(os.path.join(tmp, "inputs.npz"), input_names, list(int_samples[0].values()), in_types)
        vectors.save_npz(os.path.join(tmp, "outputs.npz"), output_names, list(first_outputs.values()), out_types)
        with open(os.path.join(tmp, "qirc.json"), "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o755)
        _replace_dir(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise QircError(f"cannot write the output directory ({e.strerror or e})", file=out_dir) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts: Dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return CompileSummary(out_dir, target.name, list(FILES), pass_specs, io["inputs"], io["outputs"], accuracy,
                          len(model.graph.node), counts, module)


def _check_output_parent(out_dir: str) -> None:
    """Refuse, before any work, an output directory that cannot be created because an ancestor is a file."""
    ancestor = os.path.dirname(out_dir)
    while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise QircError(f"cannot write the output directory ('{ancestor}' is a file, not a directory)",
                        file=out_dir)


def _replace_dir(new: str, dest: str) -> None:
    """Move the finished folder `new` to `dest`; an existing `dest` is swapped out and removed only afterwards."""
    if not os.path.exists(dest):
        os.rename(new, dest)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=os.path.dirname(dest))
    os.rmdir(old)
    os.rename(dest, old)
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_any(path: str) -> Module:
    """A model file as IR: qirc's own Deeploy output (integer IR), any quantized ONNX qirc imports, or .qir text."""
    if str(path).endswith(".onnx") and os.path.isfile(path) and is_deeploy_onnx(path):
        return import_deeploy_onnx(path)
    return load_model(path)


def simulate_file(model_path: str, inputs_npz: str, outputs_npz: str) -> Dict:
    """`qirc sim`: run the interpreter on `model_path` with the arrays of `inputs_npz` (matched to the graph inputs by
    name, else by order) and write the outputs, keyed by output name, to `outputs_npz` (atomically)."""
    import numpy as np

    from .qir import interpreter
    from .qir.diagnostics import QircError
    module = load_any(model_path)
    names = module.input_names()
    if os.path.isfile(inputs_npz) and not zipfile.is_zipfile(inputs_npz):
        # np.load would try it as a pickle (and advise allow_pickle) or hand back a bare .npy array
        raise QircError("not an .npz file (not a zip archive; numpy.savez writes one)", file=inputs_npz)
    try:
        with np.load(inputs_npz) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except FileNotFoundError:
        raise QircError("no such file", file=inputs_npz) from None
    except Exception as e:  # np.load raises many types for a bad file; all mean "not an npz"
        raise QircError(f"not a readable .npz file ({type(e).__name__}: {e})", file=inputs_npz) from None
    if set(arrays) == set(names):
        inputs = arrays
    elif len(arrays) == len(names):
        inputs = dict(zip(names, arrays.values()))
    else:
        raise QircError(f"has {len(arrays)} array(s) ({', '.join(arrays)}) but the model has {len(names)} input(s) "
                        f"({', '.join(names)})", file=inputs_npz)
    try:
        outputs = interpreter.run(module, inputs)
    except QircError as e:
        raise e.with_file(str(model_path))
    parent = os.path.dirname(os.path.abspath(outputs_npz)) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".qirc-", suffix=".npz", dir=parent)
    except OSError as e:
        raise QircError(f"cannot write ({e.strerror or e})", file=outputs_npz) from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **outputs)
        os.replace(tmp, outputs_npz)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise QircError(f"cannot write ({e.strerror or e})", file=outputs_npz) from None
        raise
    return outputs


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
