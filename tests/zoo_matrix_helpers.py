"""Helpers of tests/test_zoo_matrix.py: the accuracy figures of one compiled zoo file against onnxruntime.

    reference = ZooReference.of(model_path, fmt, samples=64, seed=0)     # float inputs + onnxruntime outputs
    row = evaluate_build(reference, target, out_dir)                       # compile, run, measure
    row.max_steps, row.argmax_agreement, row.worst_requant, row.unexplained_requants

The reference is onnxruntime (graph optimisations DISABLED, DESIGN.md section 3) on the exported file itself; for a
QONNX file, on `brevitas_models.qonnx_as_standard_onnx` of it (onnxruntime has no `Quant` kernel).  The device side
is the emitted DIR/network.onnx read back with `qirc.frontends.deeploy.import_deeploy_onnx` and run by the interpreter
on the inputs quantized exactly as the model quantizes them (`vectors.quantize_samples`).  The requant figures come
from the integer IR that `lower-to-int` (with the target's options) makes of the file, run on the same samples.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

#: Final output bound, in output steps, and argmax agreement required (the lowering issue's accuracy figures).
MAX_OUTPUT_STEPS = 4.0
MIN_ARGMAX_AGREEMENT = 0.99
MAX_REQUANT_STEPS = 1.0


def input_range(quant_module) -> tuple:
    """The real range s*(lo - z) .. s*(hi - z) of the quantizer that reads the model's (single) float input."""
    value = quant_module.inputs[0].results[0]
    quantizers = [op for op in value.users if op.name == "quant.qcast"]
    if not quantizers:
        raise AssertionError(f"input '{quant_module.input_names()[0]}' is not read by a quantizer")
    qt = quantizers[0].results[0].type.quant
    if qt.is_per_axis:
        raise AssertionError("per-axis input quantizer: the zoo quantizes its input per tensor")
    return qt.scale * (qt.storage_min - qt.zero_point), qt.scale * (qt.storage_max - qt.zero_point)


def onnxruntime_outputs(model, inputs: np.ndarray) -> np.ndarray:
    """onnxruntime, graph optimisations disabled, on `model` (a path or ModelProto), one sample per run (the zoo
    files have batch 1); returns the first output of every sample stacked on axis 0."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # the machine is shared; one thread also keeps float sums reproducible
    source = str(model) if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[None]})[0] for x in inputs])


@dataclass
class ZooReference:
    """One exported zoo file, the float samples drawn for it and onnxruntime's outputs on them."""

    model_path: Path
    fmt: str
    quant_module: object  # the quant-level module qirc imports from the file
    inputs: np.ndarray  # (samples, *input shape without the batch axis), float32
    expected: np.ndarray  # onnxruntime's output per sample, stacked on axis 0
    seconds: float  # time onnxruntime took
    # requant figures per lowering pipeline: targets that lower alike (siracusa and cortex-m) share them
    requant_figures: Dict[str, tuple] = field(default_factory=dict)

    @classmethod
    def of(cls, model_path: Path, fmt: str, samples: int, seed: int = 0) -> "ZooReference":
        import onnx

        from brevitas_models import qonnx_as_standard_onnx
        from qirc.frontends import load_model

        quant_module = load_model(model_path)
        low, high = input_range(quant_module)
        shape = quant_module.inputs[0].results[0].type.shape
        rng = np.random.default_rng(seed)
        inputs = rng.uniform(low, high, size=(samples,) + tuple(shape[1:])).astype(np.float32)
        start = time.perf_counter()
        reference_model = qonnx_as_standard_onnx(onnx.load(str(model_path))) if fmt == "qonnx" else model_path
        expected = onnxruntime_outputs(reference_model, inputs)
        return cls(model_path, fmt, quant_module, inputs, expected, time.perf_counter() - start)


@dataclass
class MatrixRow:
    """The figures of one network x format x target case."""

    network: str
    fmt: str
    target: str
    samples: int
    max_steps: float  # emitted graph vs onnxruntime, final output, in output steps
    argmax_agreement: float
    requants: int  # int.requant_shift ops of the lowered integer IR checked
    worst_requant: float  # worst requant vs the fake-quant requantizer on its integer input, in output steps
    unexplained_requants: Dict[str, int]  # differences away from rounding ties, per requant (non-zero only)
    seconds: float  # compile + run

    def line(self) -> str:
        return (f"{self.network:18s} {self.fmt:6s} {self.target:17s} {self.samples:7d} {self.max_steps:9.2f} "
                f"{self.argmax_agreement:7.2%} {self.requants:8d} {self.worst_requant:6.0f} {self.seconds:7.1f}")


TABLE_HEADER = (f"{'network':18s} {'format':6s} {'target':17s} {'samples':>7s} {'max steps':>9s} "
                f"{'argmax':>7s} {'requants':>8s} {'worst':>6s} {'seconds':>7s}")


def _stack(samples: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    return {name: np.concatenate([s[name] for s in samples]) for name in samples[0]}


def _requant_figures(int_module, int_samples: List[Dict[str, np.ndarray]]):
    """requant_step_errors / requant_unexplained of `int_module` on the integer samples: one batched run where the
    module can be rebatched, else one run per sample (the figures are maxima / counts, merged over the runs)."""
    from qirc.lowering.testing import requant_step_errors, requant_unexplained
    from qirc.qir.batch import rebatch
    from qirc.qir import interpreter
    from qirc.qir.diagnostics import InterpretError

    try:
        batched = rebatch(int_module, len(int_samples))
        values = interpreter.run_values(batched, _stack(int_samples))
        return requant_step_errors(batched, values), requant_unexplained(batched, values)
    except InterpretError:
        errors: Dict[str, float] = {}
        unexplained: Dict[str, int] = {}
        for sample in int_samples:
            values = interpreter.run_values(int_module, sample)
            for loc, e in requant_step_errors(int_module, values).items():
                errors[loc] = max(e, errors.get(loc, 0.0))
            for loc, k in requant_unexplained(int_module, values).items():
                unexplained[loc] = unexplained.get(loc, 0) + k
        return errors, unexplained


def lowered_requant_figures(reference: ZooReference, target: str, float_samples) -> tuple:
    """(requant_step_errors, requant_unexplained) of the module `lower-to-int` makes of the reference's file with
    `target`'s options (what the driver legalises next), on the float samples quantized for it; cached per pipeline.

    These are the requants to hold to the fake-quant requantizer: after legalisation a requant's `add` also carries
    the folded bias of the layer before, which its operand type does not describe, so the legalised IR has no
    fake-quant twin to compare with."""
    from qirc.backends.deeploy.targets import get_target
    from qirc.backends.deeploy.vectors import quantize_samples
    from qirc.driver import lowering_pipeline
    from qirc.qir.passes import PassManager, parse_pipeline

    pipeline = lowering_pipeline(get_target(target))
    if pipeline not in reference.requant_figures:
        lowered = reference.quant_module.clone()
        PassManager(parse_pipeline(pipeline)).run(lowered)
        reference.requant_figures[pipeline] = _requant_figures(
            lowered, quantize_samples(reference.quant_module, lowered, float_samples))
    return reference.requant_figures[pipeline]


def evaluate_build(reference: ZooReference, network: str, target: str, out_dir: Path) -> MatrixRow:
    """Compile the reference's file for `target` into `out_dir` and measure the emitted graph against onnxruntime."""
    from qirc.backends.deeploy.vectors import quantize_samples
    from qirc.driver import compile_model
    from qirc.frontends.deeploy import import_deeploy_onnx
    from qirc.qir.batch import run_samples

    start = time.perf_counter()
    summary = compile_model(reference.model_path, target, out_dir, accuracy_samples=1)
    int_module = summary.module
    input_name = reference.quant_module.input_names()[0]
    float_samples = [{input_name: x[None]} for x in reference.inputs]
    int_samples = quantize_samples(reference.quant_module, int_module, float_samples)

    device = import_deeploy_onnx(str(Path(out_dir) / "network.onnx"))
    device_outputs = run_samples(device, [list(s.values()) for s in int_samples])
    out_type = int_module.outputs[0].operands[0].type
    qt = out_type.quant
    scale, zero_point = qt.scales_for(out_type.rank), qt.zero_points_for(out_type.rank)
    got = np.concatenate([(np.asarray(next(iter(o.values())), np.float64) - zero_point) * scale
                          for o in device_outputs])
    expected = reference.expected.astype(np.float64).reshape(got.shape)
    steps = np.abs(got - expected) / scale
    n = len(reference.inputs)
    agreement = float(np.mean(got.reshape(n, -1).argmax(1) == expected.reshape(n, -1).argmax(1)))

    errors, unexplained = lowered_requant_figures(reference, target, float_samples)
    return MatrixRow(network, reference.fmt, target, n, float(steps.max()), agreement, len(errors),
                     max(errors.values(), default=0.0), {loc: k for loc, k in unexplained.items() if k},
                     time.perf_counter() - start)


def failures(row: MatrixRow, argmax_applies: bool) -> Optional[str]:
    """Why `row` misses the accuracy figures (one line), or None when it meets them."""
    problems = []
    if not row.max_steps <= MAX_OUTPUT_STEPS + 1e-3:
        problems.append(f"final output {row.max_steps:.2f} steps from onnxruntime (bound {MAX_OUTPUT_STEPS:g})")
    if argmax_applies and not row.argmax_agreement >= MIN_ARGMAX_AGREEMENT:
        problems.append(f"argmax agreement {row.argmax_agreement:.2%} (< {MIN_ARGMAX_AGREEMENT:.0%})")
    if not row.requants:
        problems.append("no int.requant_shift in the lowered integer IR")
    if not row.worst_requant <= MAX_REQUANT_STEPS:
        problems.append(f"a requant is {row.worst_requant:.0f} steps from the fake-quant requantizer")
    if row.unexplained_requants:
        problems.append(f"requant differences not at rounding ties: {row.unexplained_requants}")
    return "; ".join(problems) or None
