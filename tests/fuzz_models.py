"""Random quantized networks for the fuzz suite (tests/test_fuzz.py): a hypothesis strategy that draws a network
description, and a builder that writes it as a quantized ONNX model.

    from fuzz_models import networks, build_model

    @given(networks())
    def test_something(net):
        model = build_model(net)          # onnx.ModelProto, passes onnx.checker

A `NetSpec` is plain frozen data, so hypothesis prints a failing (shrunk) example as Python that rebuilds it.  A
network is an input quantizer, a chain of blocks and a head:

    conv      [Relu ->] Conv (plain, strided, padded or depthwise) [+ bias] [-> Relu] -> quantizer
    residual  x -> [Relu ->] Conv (same shape) [-> Relu] -> quantizer -> Add(x, .) [-> Relu] -> quantizer
    maxpool   MaxPool 2x2 / stride 2 [-> quantizer, with the input's parameters or new ones]
    mean      GlobalAveragePool or ReduceMean over H, W (keepdims) -> quantizer
    head      Flatten or Reshape -> Gemm [+ bias] or MatMul -> quantizer  (always last; the output is [1, classes])

Every quantizer has its own random scale and zero point (odd and non-zero ones included; i8 or u8 storage), written
as QDQ (QuantizeLinear -> DequantizeLinear, rounding x/s then + z), as DeepQuant's decomposed QCDQ
(Div -> Add -> Round -> Clip -> Sub -> Mul, rounding x/s + z) or as QONNX `Quant` (rounding x/s + z), per model or
mixed per quantizer.  onnxruntime runs a QONNX model through `onnx_builders.qonnx_as_decomposed`.  Weights are int8
narrow range with zero point 0, per tensor or per output channel (rarely asymmetric uint8 ones, which qirc refuses
with a LoweringError naming the Conv).  Scales follow a rough estimate of each tensor's real range times a random
factor (1/8x..4x, sometimes snapped to a power of two so that exact scale ratios occur),
so the networks neither saturate everywhere nor use a handful of levels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
from hypothesis import strategies as st

from onnx_builders import GraphBuilder

FORMATS = ("qdq", "qcdq", "qonnx", "mixed")
QUANTIZER_FORMS = ("qdq", "qcdq", "qonnx")


@dataclass(frozen=True)
class QuantSpec:
    """One activation quantizer: storage i8/u8, its scale as a factor of the estimated range, a zero point."""

    storage: str  # "i8" | "u8"
    scale_factor: float  # scale = estimated real range / levels * scale_factor (1/8 .. 4)
    zero_point: int
    power_of_two: bool  # snap the scale to a power of two
    form: str  # one of QUANTIZER_FORMS (resolved per quantizer when the model format is "mixed")


@dataclass(frozen=True)
class ConvSpec:
    out_channels: int  # ignored for depthwise (= input channels)
    kernel: int
    stride: int
    padded: bool
    depthwise: bool
    per_channel: bool
    bias: bool
    relu: bool
    out: QuantSpec
    pre_relu: bool = False  # a Relu on the input before the Conv (pre-activation blocks)
    weight_zero_point: int = 0  # non-zero: asymmetric uint8 weights (QDQ), which qirc refuses with a LoweringError


@dataclass(frozen=True)
class ResidualSpec:
    conv: ConvSpec  # same shape in and out: kernel odd, padded, stride 1, out_channels = channels
    add_relu: bool
    out: QuantSpec


@dataclass(frozen=True)
class MaxPoolSpec:
    out: Optional[QuantSpec]  # None: a quantizer with the input's parameters (as QDQ tools write it)


@dataclass(frozen=True)
class MeanSpec:
    op: str  # "GlobalAveragePool" | "ReduceMean"
    out: QuantSpec


@dataclass(frozen=True)
class HeadSpec:
    classes: int
    per_channel: bool
    bias: bool  # Gemm only
    out: QuantSpec
    op: str = "Gemm"  # "Gemm" (transB=1) | "MatMul" (weights [features, classes], per channel along axis 1)
    flatten: str = "Flatten"  # "Flatten" | "Reshape" (to [1, -1])


Block = Union[ConvSpec, ResidualSpec, MaxPoolSpec, MeanSpec]


@dataclass(frozen=True)
class NetSpec:
    channels: int
    height: int
    width: int
    input: QuantSpec
    blocks: Tuple[Block, ...]
    head: HeadSpec
    format: str
    seed: int  # weights and biases


# ----- strategies --------------------------------------------------------------------------------------------------
@st.composite
def quant_specs(draw, form: str, after_relu: bool = False) -> QuantSpec:
    storage = draw(st.sampled_from(("u8", "i8") if after_relu else ("i8", "u8")))
    lo, hi = (0, 255) if storage == "u8" else (-128, 127)
    if after_relu and draw(st.integers(0, 4)):
        # a ReLU's quantizer usually starts at the bottom of its storage range (Deeploy's RequantShift clip can
        # express only that); one draw in five takes the zero point below, which a target may refuse
        zero_point = lo
    else:
        # the usual zero points (0, the middle of u8), ones near them and any other, odd ones included
        middle = 128 if storage == "u8" else 0
        zero_point = draw(st.one_of(st.sampled_from((0, middle)), st.integers(middle - 30, middle + 30),
                                    st.integers(lo, hi)))
        zero_point = int(min(max(zero_point, lo), hi))
    factor = draw(st.floats(-3.0, 2.0, allow_nan=False).map(lambda e: float(2.0 ** e)))
    if form == "mixed":
        form = draw(st.sampled_from(QUANTIZER_FORMS))
    return QuantSpec(storage, factor, zero_point, draw(st.booleans()), form)


@st.composite
def networks(draw, max_blocks: int = 4) -> NetSpec:
    """A random quantized network (see the module docstring)."""
    fmt = draw(st.sampled_from(FORMATS))
    channels = draw(st.integers(1, 4))
    height = draw(st.integers(2, 7))
    width = draw(st.integers(2, 7))
    input_q = draw(quant_specs(fmt))
    blocks = []
    c, h, w = channels, height, width
    for _ in range(draw(st.integers(0, max_blocks))):
        kinds = ["conv", "residual"]
        if h >= 2 and w >= 2:
            kinds.append("maxpool")
        if h * w > 1:
            kinds.append("mean")
        kind = draw(st.sampled_from(kinds))
        if kind == "conv":
            kernel = draw(st.sampled_from([k for k in (1, 2, 3) if k <= min(h, w) + 2]))
            padded = draw(st.booleans()) if kernel > 1 else False
            pad = kernel // 2 if padded else 0
            if h + 2 * pad < kernel or w + 2 * pad < kernel:
                padded, pad = True, kernel // 2
                if h + 2 * pad < kernel or w + 2 * pad < kernel:
                    kernel, padded, pad = 1, False, 0
            stride = draw(st.sampled_from((1, 2)))
            depthwise = draw(st.booleans()) and c > 1
            relu = draw(st.booleans())
            out_channels = c if depthwise else draw(st.integers(1, 5) | st.integers(6, 24))
            spec = ConvSpec(out_channels, kernel, stride, padded, depthwise, draw(st.booleans()),
                            draw(st.booleans()), relu, draw(quant_specs(fmt, relu)), draw(st.booleans()),
                            draw(st.sampled_from((0,) * 9 + (1,))) * draw(st.integers(1, 254)))
            c = spec.out_channels
            h = (h + 2 * pad - kernel) // stride + 1
            w = (w + 2 * pad - kernel) // stride + 1
        elif kind == "residual":
            kernel = draw(st.sampled_from((1, 3)))
            relu = draw(st.booleans())
            conv = ConvSpec(c, kernel, 1, kernel > 1, False, draw(st.booleans()), draw(st.booleans()), relu,
                            draw(quant_specs(fmt, relu)), draw(st.booleans()))
            add_relu = draw(st.booleans())
            spec = ResidualSpec(conv, add_relu, draw(quant_specs(fmt, add_relu)))
        elif kind == "maxpool":
            spec = MaxPoolSpec(draw(st.none() | quant_specs(fmt)))
            h, w = h // 2, w // 2
        else:
            spec = MeanSpec(draw(st.sampled_from(("GlobalAveragePool", "ReduceMean"))), draw(quant_specs(fmt)))
            h = w = 1
        blocks.append(spec)
    head = HeadSpec(draw(st.integers(2, 6)), draw(st.booleans()), draw(st.booleans()), draw(quant_specs(fmt)),
                    draw(st.sampled_from(("Gemm", "MatMul"))), draw(st.sampled_from(("Flatten", "Reshape"))))
    return NetSpec(channels, height, width, input_q, tuple(blocks), head, fmt, draw(st.integers(0, 2 ** 16)))


# ----- the ONNX model ----------------------------------------------------------------------------------------------
@dataclass
class _Tensor:
    """A dequantized tensor in the graph under construction: its name, shape, quantizer scale and real range."""

    name: str
    shape: Tuple[int, ...]
    scale: float
    zero_point: int
    storage: str
    real_range: float  # rough half-width of the real values


def _scale(q: QuantSpec, real_range: float, nonnegative: bool) -> float:
    """The quantizer's scale: the estimated range over the levels it has on the side the values use, times the
    drawn factor (a power of two when asked)."""
    levels = 255.0 if nonnegative or q.storage == "u8" else 127.0
    s = max(real_range, 1e-3) / levels * q.scale_factor
    if q.power_of_two:
        s = 2.0 ** round(math.log2(s))
    return float(np.float32(s))


class _NetBuilder:
    def __init__(self, net: NetSpec):
        self.net = net
        self.g = GraphBuilder("fuzz")
        self.rng = np.random.default_rng(net.seed)

    def quantize(self, x: str, shape, q: QuantSpec, real_range: float, nonnegative: bool = False,
                 stem: str = "q") -> _Tensor:
        s = _scale(q, real_range, nonnegative)
        lo, hi = (0, 255) if q.storage == "u8" else (-128, 127)
        y = self.quantizer(x, s, q.zero_point, q.storage, q.form, f"/{self.g.fresh(stem)}")
        # what the quantizer can represent bounds the real range the next layer sees
        representable = max(abs((lo - q.zero_point) * s), abs((hi - q.zero_point) * s))
        return _Tensor(y, tuple(shape), s, q.zero_point, q.storage, min(real_range, representable))

    def quantizer(self, x: str, scale: float, zero_point: int, storage: str, form: str, prefix: str) -> str:
        """An activation quantizer followed by its dequantizer, in the given form; returns the dequantized tensor."""
        if form == "qdq":
            return self.g.qdq(x, scale, zero_point, np.uint8 if storage == "u8" else np.int8, prefix=prefix)
        if form == "qonnx":
            return self.g.qonnx(x, scale, float(zero_point), bits=8, signed=storage == "i8", prefix=prefix)
        lo, hi = (0, 255) if storage == "u8" else (-128, 127)
        return self.g.quant(x, scale, float(zero_point), lo, hi, prefix=prefix)

    def weights(self, shape, per_channel: bool, form: str, transpose: bool = False) -> Tuple[str, np.ndarray]:
        """int8 narrow-range weights (zero point 0, output channels on axis 0 of `shape`): (dequantized tensor name,
        real scales per output channel).  `transpose`: 2-D weights stored transposed (MatMul's [in, out])."""
        stored = self.rng.integers(-127, 128, size=shape).astype(np.int8)
        n = shape[0]
        if per_channel:
            scales = (self.rng.uniform(0.25, 1.0, n) / 127.0).astype(np.float32)
        else:
            scales = np.full(n, np.float32(self.rng.uniform(0.25, 1.0) / 127.0), np.float32)
        per_axis_shape = (-1,) + (1,) * (len(shape) - 1)
        axis = 0
        if transpose:
            stored, per_axis_shape, axis = np.ascontiguousarray(stored.T), (1, -1), 1
        if form == "qdq":
            if per_channel:
                name = self.g.dequantize_linear(stored, scales, np.zeros(n, np.int8), axis=axis)
            else:
                name = self.g.dequantize_linear(stored, scales[0], np.int8(0))
        else:
            real = stored.astype(np.float32) * scales.reshape(per_axis_shape)
            # store the float weights; the decomposed quantizer recovers the integers exactly
            param = scales.reshape(per_axis_shape) if per_channel else scales[0]
            if form == "qonnx":
                name = self.g.qonnx(self.g.const(real.astype(np.float32)), param, 0.0, bits=8, signed=True,
                                    narrow=True)
            else:
                name = self.g.quant(self.g.const(real.astype(np.float32)), param, 0.0, -127, 127)
        return name, scales.astype(np.float64)

    def bias(self, x: _Tensor, w_scales: np.ndarray, form: str) -> str:
        n = len(w_scales)
        acc_scale = x.scale * w_scales
        # a real bias of up to a third of the input's range, in accumulator steps
        real = self.rng.uniform(-1.0, 1.0, n) * x.real_range / 3
        stored = np.clip(np.rint(real / acc_scale), -2 ** 24, 2 ** 24).astype(np.int32)
        if form == "qdq":
            if np.all(w_scales == w_scales[0]):
                return self.g.dequantize_linear(stored, np.float32(acc_scale[0]))
            return self.g.dequantize_linear(stored, acc_scale.astype(np.float32), np.zeros(n, np.int32), axis=0)
        return self.g.const((stored * acc_scale).astype(np.float32))

    def conv(self, x: _Tensor, spec: ConvSpec, stem: str = "conv") -> _Tensor:
        c = x.shape[1]
        out_c = c if spec.depthwise else spec.out_channels
        group = c if spec.depthwise else 1
        form = spec.out.form
        if spec.weight_zero_point:
            w_scales = np.full(out_c, 0.5 / 127.0)
            w = self.g.dequantize_linear(self.rng.integers(0, 256, (out_c, c // group, spec.kernel, spec.kernel))
                                         .astype(np.uint8), np.float32(w_scales[0]), np.uint8(spec.weight_zero_point))
        else:
            w, w_scales = self.weights((out_c, c // group, spec.kernel, spec.kernel), spec.per_channel, form)
        name = f"/{self.g.fresh(stem)}/Conv"
        source = self.g.node("Relu", [x.name], name=f"{name[:-5]}/pre_Relu") if spec.pre_relu else x.name
        inputs = [source, w]
        if spec.bias:
            inputs.append(self.bias(x, w_scales, form))
        pad = spec.kernel // 2 if spec.padded else 0
        y = self.g.node("Conv", inputs, name=name, kernel_shape=[spec.kernel, spec.kernel], pads=[pad] * 4,
                        strides=[spec.stride] * 2, group=group)
        h = (x.shape[2] + 2 * pad - spec.kernel) // spec.stride + 1
        wd = (x.shape[3] + 2 * pad - spec.kernel) // spec.stride + 1
        fan_in = (c // group) * spec.kernel * spec.kernel
        real = x.real_range * 0.6 * math.sqrt(fan_in)
        if spec.relu:
            y = self.g.node("Relu", [y], name=f"{name[:-5]}/Relu")
        return self.quantize(y, (1, out_c, h, wd), spec.out, real, spec.relu, stem=f"{stem}_out")

    def residual(self, x: _Tensor, spec: ResidualSpec) -> _Tensor:
        branch = self.conv(x, spec.conv, stem="res_conv")
        name = f"/{self.g.fresh('res')}/Add"
        y = self.g.node("Add", [x.name, branch.name], name=name)
        if spec.add_relu:
            y = self.g.node("Relu", [y], name=f"{name[:-4]}/Relu")
        return self.quantize(y, x.shape, spec.out, x.real_range + branch.real_range, spec.add_relu, stem="res_out")

    def maxpool(self, x: _Tensor, spec: MaxPoolSpec) -> _Tensor:
        y = self.g.node("MaxPool", [x.name], kernel_shape=[2, 2], strides=[2, 2])
        shape = (1, x.shape[1], x.shape[2] // 2, x.shape[3] // 2)
        if spec.out is None:
            # the input's own quantizer parameters again, as QDQ tools write a MaxPool
            form = self.net.format if self.net.format in QUANTIZER_FORMS else "qdq"
            y = self.quantizer(y, x.scale, x.zero_point, x.storage, form, f"/{self.g.fresh('pool_q')}")
            return _Tensor(y, shape, x.scale, x.zero_point, x.storage, x.real_range)
        return self.quantize(y, shape, spec.out, x.real_range, stem="pool_out")

    def mean(self, x: _Tensor, spec: MeanSpec) -> _Tensor:
        if spec.op == "GlobalAveragePool":
            y = self.g.node("GlobalAveragePool", [x.name])
        else:
            y = self.g.node("ReduceMean", [x.name], axes=[2, 3], keepdims=1)
        return self.quantize(y, (1, x.shape[1], 1, 1), spec.out, x.real_range * 0.7, stem="mean_out")

    def head(self, x: _Tensor, spec: HeadSpec) -> str:
        features = int(np.prod(x.shape[1:]))
        if spec.flatten == "Flatten":
            flat = self.g.node("Flatten", [x.name], axis=1)
        else:
            flat = self.g.node("Reshape", [x.name, self.g.const(np.array([1, -1], np.int64))])
        flat_t = _Tensor(flat, (1, features), x.scale, x.zero_point, x.storage, x.real_range)
        matmul = spec.op == "MatMul"
        w, w_scales = self.weights((spec.classes, features), spec.per_channel, spec.out.form, transpose=matmul)
        if matmul:
            y = self.g.node("MatMul", [flat, w], name="/head/MatMul")
        else:
            inputs = [flat, w]
            if spec.bias:
                inputs.append(self.bias(flat_t, w_scales, spec.out.form))
            y = self.g.node("Gemm", inputs, name="/head/Gemm", transB=1)
        real = x.real_range * 0.6 * math.sqrt(features)
        return self.quantize(y, (1, spec.classes), spec.out, real, stem="head_out").name

    def build(self):
        net = self.net
        x = self.g.input("input", [1, net.channels, net.height, net.width])
        t = self.quantize(x, (1, net.channels, net.height, net.width), net.input, 1.0, stem="input_q")
        for block in net.blocks:
            if isinstance(block, ConvSpec):
                t = self.conv(t, block)
            elif isinstance(block, ResidualSpec):
                t = self.residual(t, block)
            elif isinstance(block, MaxPoolSpec):
                t = self.maxpool(t, block)
            else:
                t = self.mean(t, block)
        self.g.output(self.head(t, net.head), "output")
        return self.g.build(opset=13)


def build_model(net: NetSpec):
    """The quantized ONNX model (opset 13, checked by onnx.checker) that `net` describes."""
    return _NetBuilder(net).build()
