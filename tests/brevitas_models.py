"""Small seeded Brevitas models for the frontend and backend tests, and helpers to export and run them.

Each model is a few layers on a 1x3x16x16 input with one float output (a model that returns a QuantTensor would
export its scale, zero point and bit width as extra constant outputs), built with a fixed torch seed, calibrated on
a few seeded random batches (so activation scales come from data, not from the quantizers' defaults) and left in
eval mode.  Between them they cover what the ONNX frontend must read from Brevitas exports:

    conv_pertensor   per-tensor int8 weights, int32 bias, unsigned ReLU, torch MaxPool2d on a quantized tensor, Linear
    conv_perchannel  per-output-channel weights, TruncAvgPool2d 3x3 (Brevitas' quantized average pool: AveragePool +
                     requantizer in QDQ, QONNX `Trunc`), AdaptiveAvgPool (GlobalAveragePool), output quantizer
    asymmetric       ShiftedUint8 activations (non-zero zero point) feeding a conv and a linear layer
    fixed_point      power-of-two scales (Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint)
    residual         residual add of two branches quantized at different scales, then requantized
    low_bit          sub-8-bit ranges: 6-bit input, 4-bit weights, 4-bit unsigned ReLU and output (int8 storage
                     clipped to the narrower range)

TruncAvgPool truncates the window sum by a power of two, so in the QDQ export one pooled value in 16 is an exact
rounding tie that float32 resolves by summation order: matching onnxruntime there needs its exact order.

Use `build(name)` for the torch model, `export(name, fmt, tmpdir)` for an ONNX file ("qdq": Brevitas' QCDQ export,
"qonnx": its QONNX export), `example_input()` and `random_inputs(count, seed)` for inputs.  torch and brevitas are
imported lazily, so importing this file never needs them.

onnxruntime cannot run QONNX `Quant` nodes; `qonnx_as_standard_onnx(model)` rewrites each into the standard ops that
compute it (Div, Add, Round, Clip, Sub, Mul; the QONNX spec's ROUND mode), so a QONNX export can be checked against
onnxruntime on the file itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

INPUT_SHAPE = (1, 3, 16, 16)
SEED = 0
CALIBRATION_BATCHES = 4


def _nn():
    import torch
    import brevitas.nn as qnn
    from brevitas import quant
    return torch, qnn, quant


def _conv_pertensor():
    torch, qnn, quant = _nn()

    class ConvPerTensor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(3, 8, 3, padding=1, bias=True, weight_quant=quant.Int8WeightPerTensorFloat,
                                        bias_quant=quant.Int32Bias)
            self.relu = qnn.QuantReLU(act_quant=quant.Uint8ActPerTensorFloat, return_quant_tensor=True)
            self.pool = torch.nn.MaxPool2d(2)
            self.fc = qnn.QuantLinear(8 * 8 * 8, 10, bias=True, weight_quant=quant.Int8WeightPerTensorFloat,
                                      bias_quant=quant.Int32Bias)

        def forward(self, x):
            x = self.pool(self.relu(self.conv(self.inp(x))))
            return self.fc(torch.flatten(x, 1))

    return ConvPerTensor()


def _conv_perchannel():
    torch, qnn, quant = _nn()

    class ConvPerChannel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=True)
            self.conv1 = qnn.QuantConv2d(3, 8, 3, padding=1, bias=True, weight_quant=quant.Int8WeightPerTensorFloat,
                                         weight_scaling_per_output_channel=True, bias_quant=quant.Int32Bias)
            self.relu1 = qnn.QuantReLU(return_quant_tensor=True)
            self.pool = qnn.TruncAvgPool2d(kernel_size=3, stride=2, return_quant_tensor=True)
            self.conv2 = qnn.QuantConv2d(8, 8, 3, padding=1, bias=True, weight_quant=quant.Int8WeightPerTensorFloat,
                                         weight_scaling_per_output_channel=True, bias_quant=quant.Int32Bias)
            self.relu2 = qnn.QuantReLU(return_quant_tensor=False)
            self.gap = torch.nn.AdaptiveAvgPool2d(1)
            self.gap_quant = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(8, 4, bias=True, weight_quant=quant.Int8WeightPerTensorFloat,
                                      weight_scaling_per_output_channel=True, bias_quant=quant.Int32Bias)
            self.out = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=False)

        def forward(self, x):
            x = self.pool(self.relu1(self.conv1(self.inp(x))))
            x = self.gap(self.relu2(self.conv2(x)))
            return self.out(self.fc(torch.flatten(self.gap_quant(x), 1)))

    return ConvPerChannel()


def _asymmetric():
    torch, qnn, quant = _nn()

    class Asymmetric(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=quant.ShiftedUint8ActPerTensorFloat, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(3, 6, 3, stride=2, padding=1, bias=True,
                                        weight_quant=quant.Int8WeightPerTensorFloat, bias_quant=quant.Int32Bias)
            self.act = qnn.QuantIdentity(act_quant=quant.ShiftedUint8ActPerTensorFloat, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(6 * 8 * 8, 5, bias=True, weight_quant=quant.Int8WeightPerTensorFloat,
                                      bias_quant=quant.Int32Bias)
            self.out = qnn.QuantIdentity(act_quant=quant.ShiftedUint8ActPerTensorFloat,
                                         return_quant_tensor=False)

        def forward(self, x):
            x = self.act(self.conv(self.inp(x)))
            return self.out(self.fc(torch.flatten(x, 1)))

    return Asymmetric()


def _fixed_point():
    torch, qnn, quant = _nn()

    class FixedPoint(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFixedPoint, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(3, 8, 3, padding=1, bias=False,
                                        weight_quant=quant.Int8WeightPerTensorFixedPoint)
            self.relu = qnn.QuantReLU(act_quant=quant.Uint8ActPerTensorFixedPoint, return_quant_tensor=True)
            self.pool = torch.nn.MaxPool2d(2)
            self.conv2 = qnn.QuantConv2d(8, 4, 3, padding=0, bias=False,
                                         weight_quant=quant.Int8WeightPerTensorFixedPoint)
            self.out = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFixedPoint, return_quant_tensor=False)

        def forward(self, x):
            x = self.pool(self.relu(self.conv(self.inp(x))))
            return self.out(self.conv2(x))

    return FixedPoint()


def _residual():
    torch, qnn, quant = _nn()

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=True)
            self.stem = qnn.QuantConv2d(3, 8, 3, padding=1, bias=True, weight_quant=quant.Int8WeightPerTensorFloat,
                                        bias_quant=quant.Int32Bias)
            self.stem_relu = qnn.QuantReLU(return_quant_tensor=True)
            self.branch = qnn.QuantConv2d(8, 8, 3, padding=1, bias=True, weight_quant=quant.Int8WeightPerTensorFloat,
                                          weight_scaling_per_output_channel=True, bias_quant=quant.Int32Bias)
            # the two operands of the add are quantized separately, at different scales
            self.branch_quant = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=False)
            self.skip_quant = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=False)
            self.add_relu = qnn.QuantReLU(return_quant_tensor=True)
            self.head = qnn.QuantConv2d(8, 4, 1, bias=True, weight_quant=quant.Int8WeightPerTensorFloat,
                                        bias_quant=quant.Int32Bias)

        def forward(self, x):
            x = self.stem_relu(self.stem(self.inp(x)))
            y = self.branch_quant(self.branch(x))
            s = self.skip_quant(x)
            return self.head(self.add_relu(y + s))

    return Residual()


def _low_bit():
    torch, qnn, quant = _nn()

    class LowBit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, bit_width=6, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(3, 6, 3, padding=1, bias=True, weight_quant=quant.Int8WeightPerTensorFloat,
                                        weight_bit_width=4, bias_quant=quant.Int32Bias)
            self.relu = qnn.QuantReLU(act_quant=quant.Uint8ActPerTensorFloat, bit_width=4, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(6 * 16 * 16, 3, bias=False, weight_quant=quant.Int8WeightPerTensorFloat,
                                      weight_bit_width=4)
            self.out = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, bit_width=4, return_quant_tensor=False)

        def forward(self, x):
            x = self.relu(self.conv(self.inp(x)))
            return self.out(self.fc(torch.flatten(x, 1)))

    return LowBit()



# ----- networks outside the zoo's recipe (the foreign-model matrix, tests/foreign_models.py) -----------------------
def _perchannel_pow2():
    """Per-channel power-of-two weight scales, power-of-two activations, a per-channel Linear."""
    torch, qnn, quant = _nn()

    class PerChannelPow2(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFixedPoint, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(3, 8, 3, padding=1, bias=False,
                                        weight_quant=quant.Int8WeightPerTensorFixedPoint,
                                        weight_scaling_per_output_channel=True)
            self.relu = qnn.QuantReLU(act_quant=quant.Uint8ActPerTensorFixedPoint, return_quant_tensor=True)
            self.pool = torch.nn.MaxPool2d(2)
            self.fc = qnn.QuantLinear(8 * 8 * 8, 10, bias=False, weight_quant=quant.Int8WeightPerTensorFixedPoint,
                                      weight_scaling_per_output_channel=True)
            self.out = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFixedPoint, return_quant_tensor=False)

        def forward(self, x):
            x = self.pool(self.relu(self.conv(self.inp(x))))
            return self.out(self.fc(torch.flatten(x, 1)))

    return PerChannelPow2()


def _int4_relu4():
    """Per-channel float int4 weights with an int32 bias, then a 4-bit QuantReLU (the requant sized for the
    accumulator with the bias included), a second int4 conv and a per-channel Linear head."""
    torch, qnn, quant = _nn()

    class Int4Relu4(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=True)
            self.conv1 = qnn.QuantConv2d(3, 8, 3, padding=1, bias=True, weight_quant=quant.Int8WeightPerChannelFloat,
                                         weight_bit_width=4, bias_quant=quant.Int32Bias)
            self.relu1 = qnn.QuantReLU(act_quant=quant.Uint8ActPerTensorFloat, bit_width=4, return_quant_tensor=True)
            self.conv2 = qnn.QuantConv2d(8, 8, 3, stride=2, padding=1, bias=True,
                                         weight_quant=quant.Int8WeightPerChannelFloat, weight_bit_width=4,
                                         bias_quant=quant.Int32Bias)
            self.relu2 = qnn.QuantReLU(act_quant=quant.Uint8ActPerTensorFloat, bit_width=4, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(8 * 8 * 8, 10, bias=True, weight_quant=quant.Int8WeightPerChannelFloat,
                                      bias_quant=quant.Int32Bias)
            self.out = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=False)

        def forward(self, x):
            x = self.relu2(self.conv2(self.relu1(self.conv1(self.inp(x)))))
            return self.out(self.fc(torch.flatten(x, 1)))

    return Int4Relu4()


def _linear_nobias():
    """An MLP of bias-free QuantLinear layers (exported as Transpose + MatMul)."""
    torch, qnn, quant = _nn()

    class LinearNoBias(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=True)
            self.fc1 = qnn.QuantLinear(3 * 16 * 16, 32, bias=False, weight_quant=quant.Int8WeightPerTensorFloat)
            self.relu = qnn.QuantReLU(act_quant=quant.Uint8ActPerTensorFloat, return_quant_tensor=True)
            self.fc2 = qnn.QuantLinear(32, 10, bias=False, weight_quant=quant.Int8WeightPerChannelFloat)
            self.out = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=False)

        def forward(self, x):
            x = self.inp(x)
            x = self.relu(self.fc1(torch.flatten(x, 1)))
            return self.out(self.fc2(x))

    return LinearNoBias()


def _shifted_relu_pool():
    """A TruncAvgPool2d 2x2 after an unsigned ReLU (Brevitas cannot export a TruncAvgPool of a tensor with a zero
    point), ShiftedUint8 activations in front of the network and after a per-channel conv, then a global pool."""
    torch, qnn, quant = _nn()

    class ShiftedPool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=quant.ShiftedUint8ActPerTensorFloat, return_quant_tensor=True)
            self.conv1 = qnn.QuantConv2d(3, 8, 3, padding=1, bias=True, weight_quant=quant.Int8WeightPerChannelFloat,
                                         bias_quant=quant.Int32Bias)
            self.relu1 = qnn.QuantReLU(return_quant_tensor=True)
            self.pool = qnn.TruncAvgPool2d(kernel_size=2, stride=2, return_quant_tensor=True)
            self.conv2 = qnn.QuantConv2d(8, 8, 3, padding=1, bias=True, weight_quant=quant.Int8WeightPerChannelFloat,
                                         bias_quant=quant.Int32Bias)
            self.act = qnn.QuantIdentity(act_quant=quant.ShiftedUint8ActPerTensorFloat, return_quant_tensor=True)
            self.gap = torch.nn.AdaptiveAvgPool2d(1)
            self.gap_quant = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(8, 5, bias=True, weight_quant=quant.Int8WeightPerTensorFloat,
                                      bias_quant=quant.Int32Bias)
            self.out = qnn.QuantIdentity(act_quant=quant.Int8ActPerTensorFloat, return_quant_tensor=False)

        def forward(self, x):
            x = self.pool(self.relu1(self.conv1(self.inp(x))))
            x = self.gap_quant(self.gap(self.act(self.conv2(x))))
            return self.out(self.fc(torch.flatten(x, 1)))

    return ShiftedPool()


BUILDERS: Dict[str, Callable] = {
    "conv_pertensor": _conv_pertensor,
    "conv_perchannel": _conv_perchannel,
    "asymmetric": _asymmetric,
    "fixed_point": _fixed_point,
    "residual": _residual,
    "low_bit": _low_bit,
}
MODELS: List[str] = list(BUILDERS)
#: Networks with quantizers outside the zoo's recipe, for the foreign-model matrix only (tests/foreign_models.py);
#: `build` and `export` take their names too.
FOREIGN_BUILDERS: Dict[str, Callable] = {
    "perchannel_pow2": _perchannel_pow2,
    "int4_relu4": _int4_relu4,
    "linear_nobias": _linear_nobias,
    "shifted_relu_pool": _shifted_relu_pool,
}
FORMATS = ("qdq", "qonnx")


def example_input():
    """The seeded float input used to trace exports (a torch tensor)."""
    import torch
    g = torch.Generator().manual_seed(SEED + 1000)
    return torch.randn(INPUT_SHAPE, generator=g)


def random_inputs(count: int = 20, seed: int = SEED) -> List[np.ndarray]:
    """`count` seeded float32 inputs of the models' input shape (normal, with some larger values to hit saturation)."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(INPUT_SHAPE) * rng.choice([0.5, 1.0, 2.0])).astype(np.float32)
            for _ in range(count)]


_BUILT: Dict[str, object] = {}


def build(name: str):
    """The named model: seeded weights, calibrated activation scales, eval mode (cached per process)."""
    if name in _BUILT:
        return _BUILT[name]
    builders = {**BUILDERS, **FOREIGN_BUILDERS}
    if name not in builders:
        raise KeyError(f"unknown test model '{name}' (known: {', '.join(builders)})")
    import torch
    from brevitas.graph.calibrate import calibration_mode

    torch.manual_seed(SEED)
    model = builders[name]()
    model.eval()
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad(), calibration_mode(model):
        for _ in range(CALIBRATION_BATCHES):
            model(torch.randn(INPUT_SHAPE, generator=g) * 1.5)
    model.eval()
    _BUILT[name] = model
    return model


def torch_output(name: str, x: np.ndarray) -> np.ndarray:
    """The Brevitas model's own float output on `x`."""
    import torch
    model = build(name)
    with torch.no_grad():
        y = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    if hasattr(y, "value"):  # a QuantTensor
        y = y.value
    return y.detach().numpy().astype(np.float32)


def export(name: str, fmt: str, tmpdir) -> Path:
    """Export the named model in `fmt` ("qdq" or "qonnx") with qirc's Brevitas frontend; returns the file's path."""
    from qirc.frontends.brevitas import export_onnx
    path = Path(tmpdir) / f"{name}.{fmt}.onnx"
    return Path(export_onnx(build(name), example_input(), path, format=fmt))


# ----- running exported files with onnxruntime --------------------------------------------------------------------
def ort_session(model_or_path):
    """An onnxruntime CPU session with graph optimisations disabled (the numeric reference, see DESIGN.md)."""
    import onnx
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3  # exporters list initializers as inputs; onnxruntime warns about each one
    if isinstance(model_or_path, onnx.ModelProto):
        model_or_path = model_or_path.SerializeToString()
    else:
        model_or_path = str(model_or_path)
    return ort.InferenceSession(model_or_path, opts, providers=["CPUExecutionProvider"])


def run_ort(model_or_path, x: np.ndarray) -> List[np.ndarray]:
    """Run a one-input model with onnxruntime (optimisations disabled); QONNX files are made standard first."""
    import onnx
    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path))
    if any(n.op_type in ("Quant", "Trunc") for n in model.graph.node):
        model = qonnx_as_standard_onnx(model)
    sess = ort_session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})


def qonnx_as_standard_onnx(model):
    """A copy of a QONNX model whose `Quant` and `Trunc` nodes are rewritten into standard ONNX ops.

    Quant(x, s, z, b){signed, narrow, rounding_mode=ROUND}:  q = clip(round(x / s + z), lo, hi); y = (q - z) * s
    Trunc(x, s, z, b_in, s_out, b_out):  y = (rnd(clip(round(x / s + z) / 2^k, lo, hi)) - z / 2^k) * s_out
                                         with 2^k = s_out / s
    with lo, hi from the bit width (and `signed`, `narrow`), as QONNX's reference implementation computes them.  Bit
    widths and scales must be initializers (they are in Brevitas exports).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = []
    counter = [0]

    def const(value, hint):
        counter[0] += 1
        name = f"__qonnx_std/{hint}_{counter[0]}"
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def tmp(hint):
        counter[0] += 1
        return f"__qonnx_std/{hint}_{counter[0]}"

    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Quant":
            x, s, z, b = node.input
            bits = float(np.asarray(inits[b]).reshape(-1)[0])
            signed, narrow = int(attrs.get("signed", 1)), int(attrs.get("narrow", 0))
            mode = attrs.get("rounding_mode", b"ROUND")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            if signed:
                lo, hi = -(2 ** (bits - 1)) + narrow, 2 ** (bits - 1) - 1
            else:
                lo, hi = 0, 2 ** bits - 1 - narrow
            t1, t2, t3, t4, t5 = (tmp(h) for h in ("div", "add", "round", "clip", "sub"))
            round_op = {"ROUND": "Round", "FLOOR": "Floor", "CEIL": "Ceil"}[mode.upper()]
            nodes += [helper.make_node("Div", [x, s], [t1]),
                      helper.make_node("Add", [t1, z], [t2]),
                      helper.make_node(round_op, [t2], [t3]),
                      helper.make_node("Clip", [t3, const(lo, "lo"), const(hi, "hi")], [t4]),
                      helper.make_node("Sub", [t4, z], [t5]),
                      helper.make_node("Mul", [t5, s], [node.output[0]])]
        elif node.op_type == "Trunc":
            # QONNX Trunc (version 2, as Brevitas exports it: x, scale, zero point, input bit width, output scale,
            # output bit width): q = round(x / s + z); t = clip(q / 2^k, lo, hi) rounded by rounding_mode;
            # y = (t - z / 2^k) * s_out, with 2^k = s_out / s (a power of two) and lo, hi from the output bit width
            x, s, z, _b_in, s_out, b_out = list(node.input)[:6]
            k = float(np.round(np.log2(float(np.asarray(inits[s_out]).reshape(-1)[0])
                                       / float(np.asarray(inits[s]).reshape(-1)[0]))))
            bits = float(np.asarray(inits[b_out]).reshape(-1)[0])
            signed, narrow = int(attrs.get("signed", 1)), int(attrs.get("narrow", 0))
            lo, hi = ((-(2 ** (bits - 1)) + narrow, 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1 - narrow))
            mode = attrs.get("rounding_mode", b"FLOOR")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            round_op = {"ROUND": "Round", "FLOOR": "Floor", "CEIL": "Ceil"}[mode.upper()]
            t = [tmp(h) for h in ("div", "add", "round", "shift", "clip", "trunc", "zshift", "sub")]
            nodes += [helper.make_node("Div", [x, s], [t[0]]),
                      helper.make_node("Add", [t[0], z], [t[1]]),
                      helper.make_node("Round", [t[1]], [t[2]]),
                      helper.make_node("Div", [t[2], const(2.0 ** k, "shift")], [t[3]]),
                      helper.make_node("Clip", [t[3], const(lo, "lo"), const(hi, "hi")], [t[4]]),
                      helper.make_node(round_op, [t[4]], [t[5]]),
                      helper.make_node("Div", [z, const(2.0 ** k, "shift")], [t[6]]),
                      helper.make_node("Sub", [t[5], t[6]], [t[7]]),
                      helper.make_node("Mul", [t[7], s_out], [node.output[0]])]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    # keep the file's own default-domain opset (Brevitas' QONNX export is opset 20: ReduceMean takes its axes as an
    # input, Reshape has allowzero); drop only the QONNX domain
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", max(default + [13]))])
    return model


# ----- comparing a module's outputs with a reference ---------------------------------------------------------------
#: Share of elements allowed to differ by one quantization step (a float-summation-order tie flip), see DESIGN.md.
MAX_STEP_MISMATCH = 1e-3
#: Float slack, in output steps (or, for outputs that no quantizer follows, relative to the output's magnitude).
FLOAT_SLACK = 1e-5


def output_steps(module) -> List[object]:
    """Per module output: None for a quantized output (compared as integers), the float step (scale array
    broadcastable against it) for the output of a `quant.dcast`, else False (a plain float output)."""
    steps = []
    for op in module.outputs:
        v = op.operands[0]
        if v.type.is_quant or not v.type.is_float:
            steps.append(None)
        elif v.owner.name == "quant.dcast":
            q = v.owner.operands[0].type.quant
            steps.append(q.scales_for(v.type.rank))
        else:
            steps.append(False)
    return steps


def assert_outputs_match(module, expected: List[np.ndarray], got: List[np.ndarray], what: str) -> None:
    """`got` equals `expected` output by output: quantized values identical in >= 99.9% of elements and never more
    than one step apart; dequantized floats likewise, measured in steps of the output scale, with a float slack of
    1e-5 step; plain float outputs within 1e-5 of their largest magnitude."""
    steps = output_steps(module)
    assert len(expected) == len(got) == len(steps), f"{what}: {len(expected)} vs {len(got)} outputs"
    for op, e, g, step in zip(module.outputs, expected, got, steps):
        name = op.attrs["name"]
        e = np.asarray(e, dtype=np.float64)
        g = np.asarray(g, dtype=np.float64)
        assert e.shape == g.shape, f"{what}: output '{name}' shape {g.shape}, expected {e.shape}"
        if step is False:
            tol = FLOAT_SLACK * max(1.0, float(np.abs(e).max()))
            err = float(np.abs(e - g).max())
            assert err <= tol, f"{what}: output '{name}' differs by {err:.3g} (> {tol:.3g})"
            continue
        diff = np.abs(e - g) if step is None else np.abs(e - g) / np.asarray(step, dtype=np.float64)
        slack = 0.0 if step is None else FLOAT_SLACK
        worst = float(diff.max())
        off = int(np.count_nonzero(diff > slack))
        assert worst <= 1 + slack, f"{what}: output '{name}' is {worst:.3f} steps off somewhere"
        assert off <= MAX_STEP_MISMATCH * diff.size, \
            f"{what}: output '{name}' differs in {off} of {diff.size} elements (one step each)"
