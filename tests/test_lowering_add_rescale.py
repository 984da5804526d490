"""add-rescale: Add/Sub at different scales rescaled exactly into a common int32 scale; Concat by requants."""
import numpy as np
import pytest

from qirc.lowering import lower_module
from qirc.lowering.add_rescale import AddRescale, choose_common_scale
from qirc.lowering.dequant_push import push_dequants
from qirc.lowering.requant_fusion import fuse_requants
from qirc.lowering.testing import QuantBuilder, requant_step_errors
from qirc.qir import interpreter
from qirc.qir.passes import translation_validate
from qirc.qir.types import i8, u8
from qirc.qir.verifier import verify


def add_net(s_a, z_a, s_b, z_b, s_out, z_out=0, op="onnx.Add", storage_b=i8):
    b = QuantBuilder()
    a = b.input("a", (2, 3, 4, 4), s_a, z_a)
    c = b.input("b", (2, 3, 4, 4), s_b, z_b, storage=storage_b)
    y = b.op(op, [a, c])
    b.output("y", b.quant(y, s_out, z_out))
    return b


def run_add_rescale(b):
    before = b.module.clone()
    AddRescale().run(b.module)
    verify(b.module)
    return before, b.module


def full(b, samples=4):
    before = b.module.clone()
    push_dequants(b.module)
    AddRescale().run(b.module)
    fuse_requants(b.module)
    verify(b.module)
    return translation_validate(before, b.module, samples=samples), b.module


def test_equal_scales_add_without_multiplies():
    b = add_net(1 / 128, 0, 1 / 128, 0, 1 / 64)
    before, m = run_add_rescale(b)
    assert [o.name for o in m.walk("int.")] == ["int.add"]
    assert m.walk("int.add")[0].results[0].type.quant.scale == 1 / 128
    assert translation_validate(before, m)[0]["max_abs_diff"] == 0.0


@pytest.mark.parametrize("s_b, expect", [(1 / 256, (2, 1)), (1 / 255, (255, 128))])
def test_rational_ratio_is_exact(s_b, expect):
    b = add_net(1 / 128, 3, s_b, -7, 1 / 64, storage_b=i8)
    before, m = run_add_rescale(b)
    muls = [int(op.operands[1].owner.attrs["value"][0]) for op in m.walk("int.mul")]
    assert tuple(sorted(muls, reverse=True)) == tuple(x for x in expect if x != 1)
    add = m.walk("int.add")[0].results[0].type.quant
    assert add.zero_point == 3 * expect[0] - 7 * expect[1]
    assert translation_validate(before, m)[0]["max_abs_diff"] < 1e-6


def test_irrational_ratio_within_a_quarter_step_and_requant_within_one():
    b = add_net(0.0123, 5, 0.0071, -2, 0.02, z_out=4)
    report, m = full(b)
    assert report[0]["max_abs_diff"] <= 0.02 * (1 + 1e-5)
    for seed in range(3):
        errors = requant_step_errors(m, interpreter.run_values(m, interpreter.random_inputs(m, seed)))
        assert max(errors.values()) <= 1


def test_sub_and_unsigned_operand():
    b = add_net(0.05, 0, 0.02, 128, 0.1, op="onnx.Sub", storage_b=u8)
    report, m = full(b)
    assert "int.sub" in [o.name for o in m.ops()]
    assert report[0]["max_abs_diff"] <= 0.1 * (1 + 1e-5)


def test_common_scale_choice_bounded_by_ranges():
    m_a, m_b = choose_common_scale(None, 0.0123, 255, 0.0071, 255)
    assert (255 * m_a + 255 * m_b) < (1 << 20)
    assert abs((0.0123 / m_a) / (0.0071 / m_b) - 1) < 2e-3


def test_concat_of_different_types_requantizes_each_operand():
    b = QuantBuilder()
    a = b.input("a", (1, 2, 3), 0.1)
    c = b.input("c", (1, 4, 3), 0.05, 10)
    cat = b.op("onnx.Concat", [a, c], {"axis": 1})
    b.output("y", b.quant(cat, 0.1))
    report, m = full(b)
    assert [o.name for o in m.walk("int.")] == ["int.requant_shift", "int.concat"]
    assert report[0]["max_abs_diff"] <= 0.1 * (1 + 1e-5)


def test_full_pipeline_residual_block():
    rng = np.random.default_rng(2)
    b = QuantBuilder()
    x = b.input("x", (1, 4, 6, 6), 1 / 128)
    y = b.quant(b.conv(x, rng.integers(-127, 128, (4, 4, 3, 3)), 0.003, pads=[1, 1, 1, 1]), 1 / 32)
    s = b.op("onnx.Add", [y, b.quant(x, 1 / 100)])
    b.output("y", b.quant(b.op("onnx.Relu", [s]), 1 / 40, storage=u8))
    before = b.module.clone()
    lower_module(b.module)
    verify(b.module)
    report = translation_validate(before, b.module, samples=4)
    # one step of the conv's requant is 1.25 steps of the output's: two chained requants may differ by 2
    assert report[0]["max_step_diff"] <= 2.0 + 1e-4
    m = b.module
    for seed in range(3):
        errors = requant_step_errors(m, interpreter.run_values(m, interpreter.random_inputs(m, seed)))
        assert len(errors) == 3 and max(errors.values()) <= 1
