"""The requant checks of qirc.lowering.testing: a wrong `add` must not excuse itself in `requant_unexplained`."""
import numpy as np
import pytest

from qirc.lowering import lower_module
from qirc.lowering.testing import QuantBuilder, requant_step_errors, requant_unexplained
from qirc.qir import interpreter
from qirc.qir.types import u8


def lowered_conv_net():
    rng = np.random.default_rng(5)
    b = QuantBuilder()
    x = b.input("x", (1, 3, 8, 8), 1 / 128)
    y = b.conv(x, rng.integers(-127, 128, (6, 3, 3, 3)), 0.004, bias=rng.integers(-3000, 3000, 6), pads=[1, 1, 1, 1])
    y = b.quant(b.op("onnx.Relu", [y]), 1 / 16, storage=u8)
    y = b.conv(y, rng.integers(-127, 128, (4, 6, 1, 1)), 0.003)
    b.output("y", b.quant(y, 1 / 8, 3))
    lower_module(b.module)
    return b.module


def run(module, seeds=range(4)):
    inputs = [interpreter.random_inputs(module, seed) for seed in seeds]
    return [interpreter.run_values(module, x) for x in inputs], inputs


def test_correct_graph_has_nothing_unexplained():
    module = lowered_conv_net()
    requants = module.walk("int.requant_shift")
    assert len(requants) == 2
    all_values, _ = run(module)
    for values in all_values:
        counts = requant_unexplained(module, values)
        assert set(counts) == {op.loc for op in requants}
        assert not any(counts.values()), counts


@pytest.mark.parametrize("shift_steps", [0.25, -0.25, 3.0])
def test_corrupted_add_is_reported(shift_steps):
    module = lowered_conv_net()
    first, second = module.walk("int.requant_shift")
    div = int(first.attrs["div"])
    # moves every output of the first requant by `shift_steps` output steps before rounding: a quarter step makes
    # outputs differ by at most 1 (requant_step_errors alone would pass it), three steps shift nearly all of them;
    # a tolerance taken from the op's own add (|(x * mul + add) / div - real|) would grow with the error and excuse
    # both
    first.attrs["add"] = np.asarray(first.attrs["add"]) + int(shift_steps * div)
    all_values, _ = run(module)
    reported = sum(requant_unexplained(module, values)[first.loc] for values in all_values)
    assert reported > 0
    if abs(shift_steps) < 1:
        assert max(max(requant_step_errors(module, values).values()) for values in all_values) <= 1
    else:
        # nothing near a tie explains a shift of whole steps: every unsaturated output is off
        outputs = sum(values[first.results[0]].size for values in all_values)
        assert reported > outputs // 4
    # the corruption is attributed to the requant that has it: the next one sees its (shifted) input faithfully
    assert all(requant_unexplained(module, values)[second.loc] == 0 for values in all_values)
