"""Residual adds on deeploy-siracusa (rules/residual.py): an Add of two 8-bit tensors at different scales, as
lower-to-int writes it (int.mul by the integer rescale constants, int.add, one int.requant_shift), legalised and
interpreted before and after, against the exact float requantizer of the real sum."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from qirc.backends.deeploy.emit import emit_onnx
from qirc.backends.deeploy.legalize import legalize
from qirc.frontends.deeploy import import_deeploy_onnx
from qirc.qir import interpreter
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.types import TensorType, UniformQuantType, i8, i32, u8
from qirc.qir.verifier import verify

SHAPE = (1, 8, 6, 6)
UNIT = 0.05 / 200  # the common scale of the int32 sum: c_i = s_i / UNIT


def residual(a_signed: bool, b_signed: bool, scales=(0.05, 0.0313), zero_points=(0, 0), out_scale=0.07,
             unit=UNIT):
    """a, b (8-bit, scales s_a > s_b) -> int.mul(a, c_a), int.mul(b, c_b) -> int.add -> int.requant_shift onto
    uint8 with zero point 0 (a ReLU after the Add); the zero points go into the requant's add, a multiple of its
    mul (as lower-to-int writes it for an output zero point 0).  Returns the module and the float reference."""
    m = Module("residual")
    types = [UniformQuantType.per_tensor(i8 if s else u8, sc, z)
             for s, sc, z in zip((a_signed, b_signed), scales, zero_points)]
    xs = [input_op(m, name, TensorType(SHAPE, t)) for name, t in zip("ab", types)]
    cs = [round(s / unit) for s in scales]
    terms = []
    for x, c, name in zip(xs, cs, "ab"):
        k = const_op(m, np.array([c], np.int32), TensorType((1,), i32), f"/add/c_{name}")
        terms.append(m.create("int.mul", [x, k], [TensorType(SHAPE, i32)], {}, f"/add/mul_{name}").result)
    s = m.create("int.add", terms, [TensorType(SHAPE, i32)], {}, "/add/Add").result
    shift = 20
    mul = round(unit / out_scale * (1 << shift))
    d = -sum(c * z for c, z in zip(cs, zero_points))
    out_type = UniformQuantType.per_tensor(u8, out_scale, 0)
    r = m.create("int.requant_shift", [s], [TensorType(SHAPE, out_type)],
                 {"mul": np.array([mul], np.int64), "add": np.array([d * mul], np.int64), "div": 1 << shift,
                  "signed": False, "n_levels": 256}, "/add/rqs").result
    output_op(m, "y", r)
    verify(m)

    def exact(a, b):  # the real sum requantized once, rounding half to even as QuantizeLinear does
        real = (a.astype(np.float64) - zero_points[0]) * scales[0] + (b.astype(np.float64) - zero_points[1]) * scales[1]
        return np.clip(np.rint(real / out_scale), 0, 255)

    return m, exact


def _samples(module, count=6):
    return [interpreter.random_inputs(module, seed) for seed in range(count)]


def _emitted(module):
    model = emit_onnx(module, "deeploy-siracusa")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return model, [n.op_type for n in model.graph.node], inits


def test_operands_at_different_scales_are_summed_by_a_stacked_depthwise_conv():
    m, exact = residual(False, False, zero_points=(0, 116))
    samples = _samples(m)
    before = [interpreter.run(m, s)["y"] for s in samples]
    legalize(m, "deeploy-siracusa")
    verify(m)
    model, ops, inits = _emitted(m)
    # x_a and x_b joined along H, one depthwise Conv with w_a at the top of its (H + 1) x 1 kernel and w_b at the
    # bottom, fused by Deeploy with its RequantShift into one RequantizedConv
    assert ops == ["Concat", "Conv", "RequantShift"]
    conv = model.graph.node[1]
    w = inits[conv.input[1]]
    h = SHAPE[2]
    assert w.shape == (SHAPE[1], 1, h + 1, 1)
    assert 64 <= w[0, 0, 0, 0] <= 127 and np.count_nonzero(w) == 2 * SHAPE[1]
    assert abs(w[0, 0, h, 0] / w[0, 0, 0, 0] - 125 / 200) < 1 / 127 ** 2  # c_b / c_a
    device = import_deeploy_onnx(model)
    for s, b in zip(samples, before):
        after = interpreter.run(m, s)["y"]
        np.testing.assert_array_equal(interpreter.run(device, s)["y"], after)  # what is emitted is what qirc runs
        # within one step of the exact requantizer of the real sum, and equal to the exact int32 form but for
        # values within a few thousandths of a step of a rounding tie
        assert np.abs(after.astype(int) - exact(s["a"], s["b"])).max() <= 1
        assert np.mean(after != b) < 0.02
    # every requant's add is a multiple of its mul: DeeployTest's debug pass leaves the graph as it is
    [rq] = [n for n in model.graph.node if n.op_type == "RequantShift"]
    mul, add = int(inits[rq.input[1]].item()), int(inits[rq.input[2]].item())
    assert add % mul == 0


def test_operands_of_different_signedness_keep_the_requantized_add_with_an_exact_constant():
    # a Concat takes one element type: int8 + uint8 stays RequantizedAdd (pulp_nn_add), the smaller-scale operand
    # rounded to the larger one's step; the constant of the zero points is not rounded to whole steps any more but
    # carried by an offset of that operand (a multiple of its requant's mul), so no output is shifted on average
    m, exact = residual(True, False, zero_points=(0, 116))
    samples = _samples(m)
    before = [interpreter.run(m, s)["y"] for s in samples]
    legalize(m, "deeploy-siracusa")
    model, ops, inits = _emitted(m)
    assert ops == ["RequantShift", "RequantShift", "Add", "RequantShift"]
    for n in model.graph.node:
        if n.op_type == "RequantShift":
            mul, add = int(inits[n.input[1]].item()), int(inits[n.input[2]].item())
            assert add % mul == 0
    [rq_b] = [n for n in model.graph.node if n.op_type == "RequantShift" and n.input[0] == "b"]
    assert int(inits[rq_b.input[2]].item()) != 0  # the offset
    diffs = []
    for s, b in zip(samples, before):
        after = interpreter.run(m, s)["y"]
        assert np.abs(after.astype(int) - exact(s["a"], s["b"])).max() <= 1
        diffs.append(after.astype(int) - b.astype(int))
    diffs = np.concatenate([d.ravel() for d in diffs])
    assert np.abs(diffs).max() <= 1
    assert abs(diffs.mean()) < 0.05  # no systematic shift (rounding the constant shifted every output by ~0.4)


def test_rescale_constants_above_127_are_split_over_operand_copies_and_stay_exact():
    # c_a = 453, c_b = 101 (onnxruntime's ResNet-18 residual adds have such constants): no int8 pair has that ratio,
    # but 453 = 114 + 113 + 113 + 113 on four copies of a and 101 on one of b sum to exactly c_a a + c_b b
    m, exact = residual(True, True, scales=(453 * 0.0001, 101 * 0.0001), zero_points=(3, -5), unit=0.0001)
    samples = _samples(m)
    before = [interpreter.run(m, s)["y"] for s in samples]
    legalize(m, "deeploy-siracusa")
    verify(m)
    model, ops, inits = _emitted(m)
    # every copy read through its own Reshape (Deeploy's Concat declares one pointer per input name), joined by a
    # chain of two-input Concats (PULP's Concat binding takes two), one depthwise Conv with a tap every H rows
    assert ops == ["Reshape"] * 4 + ["Concat"] * 4 + ["Conv", "RequantShift"]
    conv = [n for n in model.graph.node if n.op_type == "Conv"][0]
    w = inits[conv.input[1]]
    h = SHAPE[2]
    assert w.shape == (SHAPE[1], 1, 4 * h + 1, 1)
    assert list(w[0, 0, ::h, 0]) == [114, 113, 113, 113, 101] and np.count_nonzero(w) == 5 * SHAPE[1]
    device = import_deeploy_onnx(model)
    for s, b in zip(samples, before):
        after = interpreter.run(m, s)["y"]
        np.testing.assert_array_equal(after, b)  # bit for bit the exact int32 form
        np.testing.assert_array_equal(interpreter.run(device, s)["y"], after)
        assert np.abs(after.astype(int) - exact(s["a"], s["b"])).max() <= 1


@pytest.mark.parametrize("signed", [True, False])
def test_equal_scales_stay_one_exact_requantized_add(signed):
    m, _ = residual(signed, signed, scales=(0.04, 0.04))
    samples = _samples(m, 3)
    before = [interpreter.run(m, s)["y"] for s in samples]
    legalize(m, "deeploy-siracusa")
    _model, ops, _ = _emitted(m)
    assert ops == ["RequantShift", "RequantShift", "Add", "RequantShift"]
    for s, b in zip(samples, before):
        np.testing.assert_array_equal(interpreter.run(m, s)["y"], b)


def test_a_tiny_scale_ratio_keeps_a_nonzero_weight():
    # c_b / c_a = 1 / 500: no one-copy pair of int8 weights has that ratio (w_b would round to 0); the exact split
    # is 125 on each of four copies of a and 1 on b
    m, exact = residual(False, False, scales=(0.05, 0.0001), unit=0.0001)
    samples = _samples(m, 3)
    legalize(m, "deeploy-siracusa")
    model, ops, inits = _emitted(m)
    assert ops[-2:] == ["Conv", "RequantShift"]
    w = inits[[n for n in model.graph.node if n.op_type == "Conv"][0].input[1]]
    assert list(w[0, 0, ::SHAPE[2], 0]) == [125, 125, 125, 125, 1]
    for s in samples:
        assert np.abs(interpreter.run(m, s)["y"].astype(int) - exact(s["a"], s["b"])).max() <= 1
