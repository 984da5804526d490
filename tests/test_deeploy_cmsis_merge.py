"""cortex-m: what Deeploy's CMSIS requant merge makes of the Conv requants qirc writes, emulated in numpy.

Deeploy's CortexM merge passes (ConvRequantMergePass, MatMulRequantMergePass) replace a requant's add by
np.round(add / (mul + 1e-3)) and hand it to CMSIS-NN as the kernel's int32 bias, with the Q31 multiplier
mul * 2^(31 - log2 div).  qirc writes add = k * mul; the merge gives k back only for |k| below about 500 * mul.
Beyond it the device adds k moved toward 0, which moves an output where its value lies that near a rounding tie:
a Conv like the one here ran on QEMU-ARM with 4 to 5 of 8192 outputs off by one, at exactly the elements this
emulation predicts (docs/targets.md, deeploy-cortexm).  qirc.json says so."""
import json

import numpy as np
import onnx
from onnx import numpy_helper

from qirc.backends.deeploy.emit import emit_onnx
from qirc.backends.deeploy.legalize import legalize
from qirc.backends.deeploy.rules.harness import debug_pass_report, merge_rounded
from qirc.backends.deeploy.targets import get_target
from qirc.frontends.deeploy import import_deeploy_onnx
from qirc.lowering import lower_module
from qirc.lowering.testing import QuantBuilder
from qirc.qir import interpreter

TARGET = "deeploy-cortexm"


def conv_net(bias_range):
    """One Conv (64 input channels, 3x3 over a 32x32 map: a worst-case |sum| of ~4.7M leaves mul = 262) whose biases
    (accumulator units) set k; +-150000 to 160000 puts |k| near 600 * mul, beyond the merge's bound."""
    rng = np.random.default_rng(3)
    b = QuantBuilder()
    x = b.input("x", (1, 64, 32, 32), 0.02)
    bias = rng.integers(*bias_range, 8) * rng.choice([-1, 1], 8)
    y = b.conv(x, rng.integers(-127, 128, (8, 64, 3, 3)), 0.004, bias=bias, pads=(1, 1, 1, 1))
    b.output("y", b.quant(y, 0.08))
    return b.module


def emitted(bias_range) -> onnx.ModelProto:
    m = conv_net(bias_range)
    t = get_target(TARGET)
    lower_module(m, signed=t.signed_normalize)
    legalize(m, t)
    return emit_onnx(m, t)


def conv_requant(model: onnx.ModelProto):
    inits = {t.name: numpy_helper.to_array(t).astype(np.int64) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    [node] = [n for n in model.graph.node if n.op_type == "RequantShift" and producer[n.input[0]].op_type == "Conv"]
    return node, inits[node.input[1]], inits[node.input[2]]


def as_merged(model: onnx.ModelProto) -> onnx.ModelProto:
    """The emitted graph with the Conv requant's add replaced by what the merged kernel adds: the merge's integer
    times mul (CMSIS-NN computes requant(acc + round(add / (mul + 1e-3))) with the multiplier mul / div, whose
    rounding is RequantShift's floor(... + div / 2) when the whole shift fits the Q31 multiplier, as here)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node, mul, add = conv_requant(model)
    init = next(t for t in out.graph.initializer if t.name == node.input[2])
    merged = np.round(add / (mul + 1e-3)).astype(np.int64) * mul
    init.CopyFrom(numpy_helper.from_array(merged.astype(numpy_helper.to_array(init).dtype), init.name))
    return out


def differing_outputs(model: onnx.ModelProto, seeds) -> int:
    plain, device = import_deeploy_onnx(model), import_deeploy_onnx(as_merged(model))
    total = 0
    for seed in seeds:
        inputs = interpreter.random_inputs(plain, seed)
        total += int(np.sum(interpreter.run(device, inputs)["y"] != interpreter.run(plain, inputs)["y"]))
    return total


def test_a_k_beyond_the_merge_bound_is_named_in_qirc_json_as_rounded_on_the_device():
    model = emitted((150_000, 160_000))
    node, mul, add = conv_requant(model)
    k = add // mul
    assert not np.any(add % mul) and np.abs(k).min() > 500 * int(mul.max())
    # the merge moves every k one toward 0, and that shows in a few outputs of each sample
    np.testing.assert_array_equal(np.round(add / (mul + 1e-3)), k - np.sign(k))
    assert 0 < differing_outputs(model, range(2)) < 40
    assert merge_rounded(model) == [node.name]
    report = debug_pass_report(model, get_target(TARGET))
    assert report["changed_requants"] == [node.name]
    assert f"On the device too: CMSIS's requant merge hands the kernel round(add / (mul + 1e-3)) for the Conv/MatMul " \
           f"requants {node.name}," in report["note"]
    json.dumps(report)


def test_a_k_within_the_merge_bound_is_what_the_device_adds():
    model = emitted((1_000, 5_000))
    node, mul, add = conv_requant(model)
    np.testing.assert_array_equal(np.round(add / (mul + 1e-3)), add // mul)
    assert differing_outputs(model, range(2)) == 0
    assert merge_rounded(model) == []
    report = debug_pass_report(model, get_target(TARGET))
    assert report["changed_requants"] == [] and "On the device too" not in report["note"]
