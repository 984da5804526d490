"""The foreign-model matrix: quantized models made by other tools, compiled for every Deeploy target (issue 11).

A *model* is a float network defined here in torch (torchvision does not load with the CPU-only torch here, so the
few networks are written out), exported to float ONNX with torch's TorchScript exporter (`dynamo=False`: the dynamo
exporter needs onnxscript) and quantized by onnxruntime's `quantize_static` in one *variant*; or a Brevitas network
from `brevitas_models` (quantizers outside the zoo's recipe) in one export format.  A *cell* is a model x target:

    ok           compiled; the emitted network.onnx, read back and run by the integer simulator on 32 samples, is
                 within max(4 output steps, the deviation onnxruntime's own optimised run shows on the model) of
                 onnxruntime (graph optimisations off) on the source file, with the same argmax wherever the
                 reference's top-1 lead exceeds that bound
    error        refused with a one-line QircError (the line is the cell's text)
    inaccurate   compiled but missed the bound above (the figures are the cell's text)
    crash        anything else (a qirc bug whatever the model: the exception's type and message)

    python tests/foreign_matrix.py [--quick] [-k SUBSTRING] [--targets generic,siracusa]

prints the table and the pass rate; tests/test_foreign_matrix.py runs the cells under pytest.

Models are built into a cache folder by `ModelCache`; `build_model(spec, folder)` builds one.  torch, brevitas and
onnxruntime.quantization are imported lazily.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

TARGETS = ("deeploy-generic", "deeploy-siracusa", "deeploy-cortexm")
SAMPLES = 32
CALIBRATION_BATCHES = 8
SEED = 0
MIN_STEPS = 4.0
OPSET = 17


# ----- float networks (torch) --------------------------------------------------------------------------------------
def _make_divisible(v, divisor=8, min_value=None):
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _mlp(nn):
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _cnn(nn):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


def _resnet18(nn):
    """torchvision's ResNet-18 (7x7/2 stem, max pool, four stages of two basic blocks), 10 classes."""
    import torch

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + (x if self.down is None else self.down(x)))

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))

    return ResNet18()


def _mobilenetv2(nn, width=0.35, classes=10):
    """torchvision's MobileNetV2 at width multiplier `width` (inverted residuals, ReLU6)."""
    import torch

    def cbr(cin, cout, k, stride, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6())

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = int(round(cin * expand))
            layers = [] if expand == 1 else [cbr(cin, hidden, 1, 1)]
            layers += [cbr(hidden, hidden, 3, stride, groups=hidden),
                       nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]
            cin = _make_divisible(32 * width)
            last = _make_divisible(1280 * max(1.0, width))
            layers = [cbr(3, cin, 3, 2)]
            for t, c, n, s in setting:
                cout = _make_divisible(c * width)
                for i in range(n):
                    layers.append(Inverted(cin, cout, s if i == 0 else 1, t))
                    cin = cout
            layers.append(cbr(cin, last, 1, 1))
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(last, classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    return MobileNetV2()


def _mobilenetv3_small(nn, classes=10):
    """torchvision's MobileNetV3-small: HardSwish / ReLU, squeeze-excitation (pool, 1x1 conv, ReLU, 1x1 conv,
    HardSigmoid, Mul), a HardSwish classifier."""
    import torch

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            sq = _make_divisible(c // 4)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(c, sq, 1)
            self.relu = nn.ReLU()
            self.fc2 = nn.Conv2d(sq, c, 1)
            self.gate = nn.Hardsigmoid()

        def forward(self, x):
            return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))

    def cba(cin, cout, k, stride, act, groups=1):
        return [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                act()]

    class Block(nn.Module):
        def __init__(self, cin, k, exp, cout, se, hs, stride):
            super().__init__()
            act = nn.Hardswish if hs else nn.ReLU
            layers = [] if exp == cin else cba(cin, exp, 1, 1, act)
            layers += cba(exp, exp, k, stride, act, groups=exp)
            if se:
                layers.append(SE(exp))
            layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNetV3Small(nn.Module):
        def __init__(self):
            super().__init__()
            setting = [(16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2),
                       (24, 3, 88, 24, False, False, 1), (24, 5, 96, 40, True, True, 2),
                       (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
                       (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1),
                       (48, 5, 288, 96, True, True, 2), (96, 5, 576, 96, True, True, 1),
                       (96, 5, 576, 96, True, True, 1)]
            layers = cba(3, 16, 3, 2, nn.Hardswish)
            for cin, k, exp, cout, se, hs, s in setting:
                layers.append(Block(cin, k, exp, cout, se, hs, s))
            layers += cba(96, 576, 1, 1, nn.Hardswish)
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Linear(1024, classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    return MobileNetV3Small()


def _conv1d_gap(nn):
    return nn.Sequential(
        nn.Conv1d(4, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Conv1d(16, 16, 3, stride=2, padding=1), nn.BatchNorm1d(16), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 6))


def _conv1d_flatten(nn):
    return nn.Sequential(
        nn.Conv1d(4, 8, 5), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 28, 6))


def _concat(nn):
    import torch

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.mix = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            y = self.mix(torch.cat([self.a(x), self.b(x)], dim=1))
            return self.fc(torch.flatten(self.pool(y), 1))

    return Concat()


@dataclass(frozen=True)
class Network:
    name: str
    build: Callable
    input_shape: Tuple[int, ...]
    small: bool  # cheap enough for every variant, the QOperator exports and the default test run


NETWORKS: Dict[str, Network] = {n.name: n for n in [
    Network("mlp", _mlp, (1, 32), True),
    Network("cnn", _cnn, (1, 3, 16, 16), True),
    Network("resnet18", _resnet18, (1, 3, 32, 32), False),
    Network("mobilenetv2-0.35", _mobilenetv2, (1, 3, 96, 96), False),
    Network("mobilenetv3-small", _mobilenetv3_small, (1, 3, 96, 96), False),
    Network("conv1d-gap", _conv1d_gap, (1, 4, 64), True),
    Network("conv1d-flatten", _conv1d_flatten, (1, 4, 64), True),
    Network("concat", _concat, (1, 3, 16, 16), True),
]}


# ----- onnxruntime quantize_static variants -------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One quantize_static configuration (activation / weight types are QuantType member names)."""

    name: str
    per_channel: bool
    activation: str = "QUInt8"
    weight: str = "QInt8"
    reduce_range: bool = False
    extra: Tuple[Tuple[str, object], ...] = ()
    qoperator: bool = False
    preprocess: bool = False
    dynamic_batch: bool = False
    small_only: bool = False  # only for the small networks

    def describe(self) -> str:
        parts = ["QOperator" if self.qoperator else "QDQ", "per-channel" if self.per_channel else "per-tensor",
                 f"act {self.activation}", f"weight {self.weight}"]
        if self.reduce_range:
            parts.append("reduce_range")
        parts += [f"{k}={v}" for k, v in self.extra]
        if self.preprocess:
            parts.append("quant_pre_process")
        if self.dynamic_batch:
            parts.append("dynamic batch")
        return ", ".join(parts)


VARIANTS: Dict[str, Variant] = {v.name: v for v in [
    Variant("pt-u8s8", per_channel=False),
    Variant("pc-u8s8", per_channel=True),
    Variant("pt-s8s8", per_channel=False, activation="QInt8"),
    Variant("pc-s8s8", per_channel=True, activation="QInt8"),
    Variant("pt-u8u8", per_channel=False, weight="QUInt8"),
    Variant("pc-u8u8", per_channel=True, weight="QUInt8"),  # QInt8 activations with QUInt8 weights: refused by ORT
    Variant("pc-reduce", per_channel=True, reduce_range=True),
    Variant("pc-w4", per_channel=True, weight="QInt4"),  # standard-domain INT4 weight initializers (opset 21)
    Variant("pt-actsym", per_channel=False, activation="QInt8", extra=(("ActivationSymmetric", True),)),
    Variant("pc-wasym", per_channel=True, extra=(("WeightSymmetric", False),)),
    Variant("pc-pre", per_channel=True, activation="QInt8", preprocess=True),
    Variant("pc-dynbatch", per_channel=True, activation="QInt8", dynamic_batch=True, small_only=True),
    Variant("qop-pt", per_channel=False, qoperator=True, small_only=True),
    Variant("qop-pc", per_channel=True, activation="QInt8", qoperator=True, small_only=True),
    Variant("qop-u8u8", per_channel=False, weight="QUInt8", qoperator=True, small_only=True),
]}

#: Brevitas networks (brevitas_models) in the matrix: the foreign ones and the library's own test models.
BREVITAS_MODELS = ("perchannel_pow2", "int4_relu4", "linear_nobias", "shifted_relu_pool", "low_bit",
                   "conv_perchannel", "asymmetric", "fixed_point")
BREVITAS_FORMATS = ("qdq", "qonnx")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the matrix: an onnxruntime-quantized network or a Brevitas export."""

    network: str
    variant: str  # a VARIANTS key, or "brevitas-qdq" / "brevitas-qonnx"

    @property
    def key(self) -> str:
        return f"{self.network}/{self.variant}"

    @property
    def brevitas(self) -> bool:
        return self.variant.startswith("brevitas-")

    @property
    def small(self) -> bool:
        return self.brevitas or NETWORKS[self.network].small


def all_specs() -> List[ModelSpec]:
    specs = [ModelSpec(n.name, v.name) for n in NETWORKS.values() for v in VARIANTS.values()
             if n.small or not v.small_only]
    specs += [ModelSpec(m, f"brevitas-{f}") for m in BREVITAS_MODELS for f in BREVITAS_FORMATS]
    return specs


def input_shape(spec: ModelSpec) -> Tuple[int, ...]:
    if spec.brevitas:
        import brevitas_models
        return tuple(brevitas_models.INPUT_SHAPE)
    return NETWORKS[spec.network].input_shape


def float_inputs(spec: ModelSpec, count: int, seed: int) -> np.ndarray:
    """`count` seeded float32 samples (count, *input shape without the batch axis): standard normal, as the calibration data, some scaled up
    to reach saturation."""
    rng = np.random.default_rng(seed)
    shape = input_shape(spec)[1:]
    scale = rng.choice([0.5, 1.0, 1.5], size=(count,) + (1,) * len(shape)).astype(np.float32)
    return (rng.standard_normal((count,) + shape).astype(np.float32) * scale).astype(np.float32)


def export_float(network: Network, path: Path, dynamic_batch: bool = False) -> Path:
    import torch

    torch.manual_seed(SEED)
    model = network.build(torch.nn)
    # give the batch norms non-trivial statistics so that folding them changes the weights
    model.train()
    g = torch.Generator().manual_seed(SEED + 7)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn((8,) + network.input_shape[1:], generator=g))
    model.eval()
    x = torch.randn(network.input_shape, generator=g)
    kwargs = {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}} if dynamic_batch else {}
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=OPSET, input_names=["x"],
                      output_names=["y"], **kwargs)
    return path


def quantize(spec: ModelSpec, float_path: Path, out_path: Path) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static)

    variant = VARIANTS[spec.variant]
    source = float_path
    if variant.preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process
        source = out_path.with_suffix(".pre.onnx")
        quant_pre_process(str(float_path), str(source))
    batches = float_inputs(spec, CALIBRATION_BATCHES, SEED + 1)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": b[None]} for b in batches])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(source), str(out_path), Reader(),
                    quant_format=QuantFormat.QOperator if variant.qoperator else QuantFormat.QDQ,
                    per_channel=variant.per_channel, reduce_range=variant.reduce_range,
                    activation_type=getattr(QuantType, variant.activation),
                    weight_type=getattr(QuantType, variant.weight), extra_options=dict(variant.extra))
    if source != float_path:
        os.unlink(source)
    return out_path


def build_model(spec: ModelSpec, folder: Path) -> Path:
    """Build `spec`'s quantized ONNX file in `folder`; returns its path."""
    import logging
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if spec.brevitas:
        import brevitas_models
        return brevitas_models.export(spec.network, spec.variant.split("-", 1)[1], folder)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static advises pre-processing on every call
    variant = VARIANTS[spec.variant]
    float_path = folder / f"{spec.network}{'-dyn' if variant.dynamic_batch else ''}.float.onnx"
    if not float_path.exists():
        export_float(NETWORKS[spec.network], float_path, variant.dynamic_batch)
    return quantize(spec, float_path, folder / f"{spec.network}.{spec.variant}.onnx")


# ----- the onnxruntime reference --------------------------------------------------------------------------------------
def _session(model, optimise: bool):
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    return ort.InferenceSession(str(model) if isinstance(model, (str, os.PathLike)) else model, opts,
                                providers=["CPUExecutionProvider"])


def ort_outputs(path: Path, inputs: np.ndarray, optimise: bool) -> np.ndarray:
    """The first output of onnxruntime on every sample, stacked on axis 0 (one run per batch-1 sample)."""
    import onnx
    model = onnx.load(str(path))
    if any(n.op_type in ("Quant", "Trunc") for n in model.graph.node):
        from brevitas_models import qonnx_as_standard_onnx
        model = qonnx_as_standard_onnx(model)
    sess = _session(model, optimise)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[None]})[0] for x in inputs])


@dataclass
class Reference:
    path: Path
    inputs: np.ndarray
    expected: np.ndarray  # optimisations off
    optimised: np.ndarray  # optimisations on: its deviation widens the bound


class ModelCache:
    """Builds each model once into `root` and keeps its onnxruntime reference; errors while building are kept too
    (a model the tools cannot make is reported, not retried)."""

    def __init__(self, root: Path, samples: int = SAMPLES):
        self.root = Path(root)
        self.samples = samples
        self._refs: Dict[str, object] = {}

    def get(self, spec: ModelSpec) -> Reference:
        if spec.key not in self._refs:
            try:
                path = build_model(spec, self.root / spec.network)
                inputs = float_inputs(spec, self.samples, SEED + 2)
                self._refs[spec.key] = Reference(path, inputs, ort_outputs(path, inputs, False),
                                                 ort_outputs(path, inputs, True))
            except Exception as e:  # noqa: BLE001 - a model the tools could not build is a matrix cell too
                first = str(e).splitlines()[0] if str(e) else ""
                self._refs[spec.key] = RuntimeError(f"building the model failed: {type(e).__name__}: {first}")
        ref = self._refs[spec.key]
        if isinstance(ref, Exception):
            raise ref
        return ref


# ----- one cell -----------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    spec: ModelSpec
    target: str
    status: str  # ok / error / inaccurate / crash / build
    text: str = ""
    max_steps: Optional[float] = None
    bound: Optional[float] = None
    argmax: Optional[float] = None  # agreement where the lead exceeds the bound (None: nowhere)
    seconds: float = 0.0
    traceback: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def line(self) -> str:
        figures = ""
        if self.max_steps is not None:
            figures = f"{self.max_steps:6.2f}/{self.bound:<5.2f} " + (
                "   -  " if self.argmax is None else f"{self.argmax:6.1%}")
        return (f"{self.spec.network:18s} {self.spec.variant:15s} {self.target[8:]:9s} {self.status:10s} "
                f"{figures:20s} {self.seconds:5.1f}s  {self.text}")


TABLE_HEADER = (f"{'model':18s} {'variant':15s} {'target':9s} {'status':10s} {'steps/bound argmax':20s} "
                f"{'time':>6s}  error")


def evaluate(cache: ModelCache, spec: ModelSpec, target: str, out_dir: Path, **compile_options) -> Cell:
    """Compile `spec` for `target` into `out_dir` and judge the emitted graph against onnxruntime."""
    from qirc.backends.deeploy.vectors import quantize_samples
    from qirc.driver import compile_model
    from qirc.frontends.deeploy import import_deeploy_onnx
    from qirc.qir.batch import run_samples
    from qirc.qir.diagnostics import QircError

    try:
        ref = cache.get(spec)
    except RuntimeError as e:
        return Cell(spec, target, "build", str(e))
    start = time.perf_counter()
    try:
        summary = compile_model(ref.path, target, out_dir, accuracy_samples=1, **compile_options)
    except QircError as e:
        return Cell(spec, target, "error", str(e), seconds=time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 - reported as a crash cell
        return Cell(spec, target, "crash", f"{type(e).__name__}: {e}".splitlines()[0],
                    seconds=time.perf_counter() - start, traceback=traceback.format_exc())
    try:
        from qirc.frontends import load_model
        int_module = summary.module
        quant_module = load_model(ref.path) if not compile_options else _quant_module(ref.path, compile_options)
        input_name = quant_module.input_names()[0]
        float_samples = [{input_name: x[None]} for x in ref.inputs]
        int_samples = quantize_samples(quant_module, int_module, float_samples)
        device = import_deeploy_onnx(str(Path(out_dir) / "network.onnx"))
        outs = run_samples(device, [list(s.values()) for s in int_samples])
        out_type = int_module.outputs[0].operands[0].type
        qt = out_type.quant
        scale = np.asarray(qt.scales_for(out_type.rank), np.float64)
        zero_point = np.asarray(qt.zero_points_for(out_type.rank), np.float64)
        got = np.concatenate([(np.asarray(next(iter(o.values())), np.float64) - zero_point) * scale for o in outs])
    except Exception as e:  # noqa: BLE001
        return Cell(spec, target, "crash", f"checking the output: {type(e).__name__}: {e}".splitlines()[0],
                    seconds=time.perf_counter() - start, traceback=traceback.format_exc())
    n = len(ref.inputs)
    expected = ref.expected.astype(np.float64).reshape(got.shape)
    optimised = ref.optimised.astype(np.float64).reshape(got.shape)
    steps = float((np.abs(got - expected) / scale).max())
    bound = max(MIN_STEPS, float((np.abs(optimised - expected) / scale).max()))
    argmax = None
    flat_e, flat_g = expected.reshape(n, -1), got.reshape(n, -1)
    if flat_e.shape[1] > 1:
        top2 = np.sort(flat_e, axis=1)[:, -2:]
        lead = (top2[:, 1] - top2[:, 0]) / float(np.max(scale))
        decisive = lead > bound
        if decisive.any():
            argmax = float(np.mean(flat_e[decisive].argmax(1) == flat_g[decisive].argmax(1)))
    problems = []
    if steps > bound + 1e-3:
        problems.append(f"final output {steps:.2f} steps from onnxruntime (bound {bound:.2f})")
    if argmax is not None and argmax < 1.0:
        problems.append(f"argmax agreement {argmax:.1%} where the reference's lead exceeds the bound")
    return Cell(spec, target, "inaccurate" if problems else "ok", "; ".join(problems), steps, bound, argmax,
                time.perf_counter() - start)


def _quant_module(path, compile_options):
    """The quant-level module the driver compiles with `compile_options` (input shapes, output cut)."""
    from qirc.frontends.onnx import import_onnx
    return import_onnx(str(path), **{k: v for k, v in compile_options.items()
                                     if k in ("input_shapes",)})


def summarize(cells: List[Cell]) -> str:
    ok = sum(c.ok for c in cells)
    by_status: Dict[str, int] = {}
    for c in cells:
        by_status[c.status] = by_status.get(c.status, 0) + 1
    return (f"{ok}/{len(cells)} cells ok ({100.0 * ok / max(1, len(cells)):.1f}%): "
            + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())))


# ----- known causes of failing cells ---------------------------------------------------------------------------------
#: (cause, owner, a substring of qirc's error line) for the refusals the matrix shows today, in the order they are
#: matched; `cause_of(cell)` names a failing cell's cause.
CAUSES: List[Tuple[str, str, str]] = [
    # (before hard-ops, whose "Hard" also matches a HardSwish node's name)
    ("siracusa-unsigned-product", "backend", "an unsigned requant_shift of a computed int32 tensor"),
    ("hard-ops", "lowering", "Hard"),  # HardSigmoid / HardSwish (MobileNetV3), import or lowering
    ("unsupported-ops", "frontend", "unsupported ops: "),
    ("dynamic-shape", "frontend", "has a dynamic shape"),
    ("weight-zero-point", "lowering", "only symmetric weights can be lowered"),
    ("grouped-weight-zero-point", "lowering", "with weights whose values minus zero point do not fit int8"),
    ("grouped-conv-weight-zero-point", "lowering", "a grouped Conv (group"),
    ("rank-3", "lowering", "of a rank-3 tensor has no Deeploy form"),
    ("requant-policy", "lowering", "requantization cannot be both exact and in range"),
    ("bias-free-linear", "lowering", "op onnx.MatMul could not be lowered"),
    ("relu4-requant-add", "lowering", "requant_shift add does not fit int32"),
    ("trunc-avgpool-qonnx", "backend", "with a non-positive operand scale"),
    ("cortexm-per-channel-gemm", "backend", "a Gemm requant needs one multiplier for all channels"),
    ("cortexm-per-channel-matmul", "backend", "a MatMul requant needs one multiplier for all channels"),
    ("cortexm-windowed-pool", "backend", "windowed average pooling"),
    ("cortexm-concat", "backend", "the platform has no Concat"),
    ("siracusa-untiled-pad", "backend", "has no tiled form on this platform"),
    ("pad-overflow", "backend", "accumulator overflow"),
    # compiled, but the final output misses the step bound (the status of such a cell, which cause_of returns; the
    # text is what `evaluate` reports for it): int4_relu4 on cortex-m (CMSIS rounds add to a multiple of mul, a 4-bit
    # step amplifies a flip)
    ("inaccurate", "backend", "final output "),
]


def cell_id(cell: "Cell") -> str:
    """"network/variant@target", the key of tests/foreign_known_failures.py."""
    return f"{cell.spec.key}@{cell.target[len('deeploy-'):]}"


def cause_of(cell: "Cell") -> str:
    """The CAUSES entry whose substring the failing cell's text contains, else its status ("ok" when it passed;
    "inaccurate" when it compiled but missed the accuracy figures)."""
    if cell.ok:
        return "ok"
    if cell.status == "error":
        for cause, _owner, text in CAUSES:
            if text in cell.text:
                return cause
    return cell.status
