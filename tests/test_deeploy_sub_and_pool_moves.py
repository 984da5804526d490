"""sub-to-add of two computed tensors and requant-before-maxpools: the difference of two tensors written as Deeploy's
residual Add (one operand's Mul constant negated), and the requant that onnxruntime leaves after a MaxPool moved in
front of it (Deeploy's MaxPool takes 8-bit input).  Each graph is legalised, emitted, read back and run against the
lowered module on seeded inputs (exact), and its node sequence asserted."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qirc.backends.deeploy.legalize import legalize
from qirc.lowering import lower_module
from qirc.lowering.testing import QuantBuilder
from qirc.qir.diagnostics import BackendError
from test_deeploy_structure import assert_written_graph_exact


def difference_net(pool: bool):
    """a (int8, 0.05) and relu(b) (uint8, 0.02): relu(b) - a [-> MaxPool 2x2] -> quantizer (0.04)."""
    b = QuantBuilder()
    x = b.input("a", (1, 4, 8, 8), 0.05)
    y = b.input("b", (1, 4, 8, 8), 0.02)
    d = b.op("onnx.Sub", [b.op("onnx.Relu", [y]), x])
    if pool:
        d = b.op("onnx.MaxPool", [d], {"kernel_shape": [2, 2], "strides": [2, 2]})
    b.output("y", b.quant(d, 0.04))
    lower_module(b.module)
    return b.module


def ops(model: onnx.ModelProto):
    return [n.op_type for n in model.graph.node]


def mul_constants(model: onnx.ModelProto):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return sorted(int(inits[n.input[1]].reshape(-1)[0]) for n in model.graph.node if n.op_type == "Mul")


@pytest.mark.parametrize("target", ["deeploy-generic", "deeploy-cortexm"])
def test_a_difference_is_an_add_with_one_multiplier_negated(target):
    m = difference_net(pool=False)
    assert [op.name for op in m.walk("int.sub")], "the lowering writes the difference as int.sub"
    model = assert_written_graph_exact(m, target, seeds=range(4))
    assert "Sub" not in ops(model) and ops(model).count("Add") == 1
    constants = mul_constants(model)  # 0.02 / 0.05: b's multiplier 2, a's 5, a's negated
    assert constants[0] < 0 < constants[-1]


@pytest.mark.parametrize("target", ["deeploy-generic", "deeploy-cortexm"])
def test_the_requant_after_a_maxpool_moves_in_front_of_it(target):
    m = difference_net(pool=True)
    model = assert_written_graph_exact(m, target, seeds=range(4))
    sequence = ops(model)
    assert sequence.index("RequantShift", sequence.index("Add")) < sequence.index("MaxPool")


def test_siracusa_refuses_a_difference_in_one_line():
    m = difference_net(pool=False)
    with pytest.raises(BackendError) as err:
        legalize(m, "deeploy-siracusa")
    assert "int.sub of two computed tensors has no form on this platform (its RequantizedAdd adds its two operands " \
        "with positive scales only)" in str(err.value) and "\n" not in str(err.value)
