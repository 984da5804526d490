"""cortex-m: what Deeploy's CMSIS requant merge makes of the Conv requants qirc writes, emulated in numpy.

Deeploy's CortexM merge passes (ConvRequantMergePass, MatMulRequantMergePass) replace a requant's add by
np.round(add / (mul + 1e-3)) and hand it to CMSIS-NN as the kernel's int32 bias, with the Q31 multiplier
mul * 2^(31 - log2 div).  For add = k * mul that gives k back only for |k| below about 500 * mul; beyond it, k moved
toward 0, which moved outputs near a rounding tie (QEMU-ARM: 4 to 5 of 8192 outputs of a Conv like the one here off
by one, at exactly the elements this emulation predicts).  qirc now writes such an add as k * mul + round(k / 1000),
which the merge reads back as exactly k (QEMU-ARM: Errors: 0 out of 8192), and reads a cortex-m graph's Conv/MatMul
requants the way the merge does, so that outputs.npz is what the device computes whatever the add (docs/targets.md,
deeploy-cortexm)."""
import json

import numpy as np
import onnx
from onnx import numpy_helper

from qirc.backends.deeploy.emit import emit_onnx
from qirc.backends.deeploy.legalize import legalize
from qirc.backends.deeploy.rules.harness import debug_pass_report, merge_exact_add
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


def compiled(bias_range, target=TARGET):
    """(the legalised module, its emitted ONNX model)."""
    m = conv_net(bias_range)
    t = get_target(target)
    lower_module(m, signed=t.signed_normalize)
    legalize(m, t)
    return m, emit_onnx(m, t)


def conv_requant(model: onnx.ModelProto):
    inits = {t.name: numpy_helper.to_array(t).astype(np.int64) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    [node] = [n for n in model.graph.node if n.op_type == "RequantShift" and producer[n.input[0]].op_type == "Conv"]
    return node, inits[node.input[1]], inits[node.input[2]]


def with_add(model: onnx.ModelProto, add, platform=True) -> onnx.ModelProto:
    """A copy of `model` whose Conv requant adds `add`; platform=False also drops the metadata naming the target, so
    that qirc reads the RequantShift as written (a plain graph: what the merged kernel computes, with that add)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node, _, _ = conv_requant(model)
    init = next(t for t in out.graph.initializer if t.name == node.input[2])
    init.CopyFrom(numpy_helper.from_array(np.asarray(add).astype(numpy_helper.to_array(init).dtype), init.name))
    if not platform:
        del out.metadata_props[:]
    return out


def device(model: onnx.ModelProto) -> onnx.ModelProto:
    """What the device computes for `model`: the Conv requant with the add the merge hands the kernel, times mul."""
    _, mul, add = conv_requant(model)
    return with_add(model, np.round(add / (mul + 1e-3)).astype(np.int64) * mul, platform=False)


def differing_outputs(a: onnx.ModelProto, b: onnx.ModelProto, seeds) -> int:
    ma, mb = import_deeploy_onnx(a), import_deeploy_onnx(b)
    total = 0
    for seed in seeds:
        inputs = interpreter.random_inputs(ma, seed)
        total += int(np.sum(interpreter.run(ma, inputs)["y"] != interpreter.run(mb, inputs)["y"]))
    return total


def lowered_requant_add(module):
    [rqs] = [op for op in module.walk("int.requant_shift") if op.operands[0].owner.name == "int.conv"]
    return np.asarray(rqs.attrs["mul"], np.int64), np.asarray(rqs.attrs["add"], np.int64)


def test_a_k_beyond_the_merge_bound_is_written_so_that_the_merge_reads_it_back_exactly():
    module, model = compiled((150_000, 160_000))
    mul, lowered = lowered_requant_add(module)
    k = lowered // mul
    assert not np.any(lowered % mul) and np.abs(k).min() > 500 * int(mul.max())
    # as the lowering states it, the merge would move every k one toward 0 ...
    np.testing.assert_array_equal(np.round(lowered / (mul + 1e-3)), k - np.sign(k))
    # ... so the file carries k * mul + round(k / 1000), which it reads back as exactly k
    _, _, add = conv_requant(model)
    np.testing.assert_array_equal(add, lowered + np.round(k / 1000).astype(np.int64))
    np.testing.assert_array_equal(np.round(add / (mul + 1e-3)), k)
    # the device, qirc's reading of the folder and the lowered module compute the same integers
    assert differing_outputs(model, device(model), range(2)) == 0
    inputs = interpreter.random_inputs(module, 0)
    np.testing.assert_array_equal(interpreter.run(import_deeploy_onnx(model), inputs)["y"],
                                  interpreter.run(module, inputs)["y"])
    # DeeployTest's debug pass (a Generic run of the folder) computes the merge's expression: nothing to list
    report = debug_pass_report(model, get_target(TARGET))
    assert report["changed_requants"] == [] and "as CMSIS's requant merge does" in report["note"]
    json.dumps(report)


def test_the_add_the_lowering_states_would_move_outputs_on_the_device():
    """Why the encoding is needed: written as k * mul, the same requant computes other outputs on the device."""
    module, model = compiled((150_000, 160_000))
    _, lowered = lowered_requant_add(module)
    as_lowered = with_add(model, lowered)
    assert 0 < differing_outputs(device(as_lowered), device(model), range(2)) < 40
    # and qirc reads that file as the device runs it, so its outputs.npz would still be the device's
    assert differing_outputs(as_lowered, device(as_lowered), range(2)) == 0


def test_a_k_within_the_merge_bound_is_written_as_the_lowering_states_it():
    module, model = compiled((1_000, 5_000))
    mul, lowered = lowered_requant_add(module)
    _, _, add = conv_requant(model)
    np.testing.assert_array_equal(add, lowered)
    np.testing.assert_array_equal(np.round(add / (mul + 1e-3)), add // mul)
    assert differing_outputs(model, device(model), range(2)) == 0
    report = debug_pass_report(model, get_target(TARGET))
    assert report["changed_requants"] == [] and "it changes none of the other requants" in report["note"]


def test_other_targets_read_and_write_the_add_as_it_is():
    """Generic runs RequantShift as written (its debug pass aside): no metadata reading, no encoding."""
    module, model = compiled((150_000, 160_000), "deeploy-generic")
    mul, lowered = lowered_requant_add(module)
    _, _, add = conv_requant(model)
    np.testing.assert_array_equal(add, lowered)
    assert [(p.key, p.value) for p in model.metadata_props] == [("qirc.target", "deeploy-generic")]
    inputs = interpreter.random_inputs(module, 0)
    np.testing.assert_array_equal(interpreter.run(import_deeploy_onnx(model), inputs)["y"],
                                  interpreter.run(module, inputs)["y"])


def test_merge_exact_add_leaves_what_it_cannot_or_need_not_correct():
    mul = np.array([1, 3, 262, 262, 262])
    add = np.array([2_000_000 * 1, 7, 1_000 * 262, 600 * 262 * 262, -600 * 262 * 262])
    out = merge_exact_add(mul, add)
    # k * mul read back exactly wherever add is a multiple; 7 is not a multiple of 3: as it is
    assert out[1] == 7
    k = add // mul
    exact = add % mul == 0
    np.testing.assert_array_equal(np.round(out / (mul + 1e-3))[exact], k[exact])
    np.testing.assert_array_equal(out[2], add[2])  # within the bound: unchanged
    assert merge_exact_add(np.array(5), np.array(0)).shape == ()  # a scalar add stays one
    # a correction that would leave int32 is not made (k = 2147483000 would need 2147483 more)
    assert merge_exact_add(np.array([1]), np.array([2_147_483_000]))[0] == 2_147_483_000
