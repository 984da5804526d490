"""add-rescale: Add/Sub at different scales rescaled exactly into a common int32 scale; Concat by requants."""
import numpy as np
import pytest

from qirc.lowering import lower_module
from qirc.lowering.add_rescale import AddRescale, Operand, choose_common_scale, choose_rescale
from qirc.lowering.dequant_push import push_dequants
from qirc.lowering.requant_fusion import fuse_requants
from qirc.lowering.testing import QuantBuilder, requant_step_errors, requant_unexplained
from qirc.qir import interpreter
from qirc.qir.diagnostics import LoweringError
from qirc.qir.passes import translation_validate
from qirc.qir.types import UniformQuantType, i8, i32, u8
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


def test_irrational_ratio_measured_over_unsaturated_sums_only():
    """u8 operands at 0.0028437853 and 1/512 into a u8 output at 1/1024: the old whole-range error measure (0.331
    steps for 745/512, capped sum 2^19) refused this Add; every pair of stored inputs now meets the contract."""
    s_a, s_b, s_out = 0.0028437853, 1 / 512, 1 / 1024
    b = QuantBuilder()
    a = b.input("a", (256, 256), s_a, storage=u8)
    c = b.input("b", (256, 256), s_b, storage=u8)
    b.output("y", b.quant(b.op("onnx.Add", [a, c]), s_out, storage=u8))
    before = b.module.clone()
    lower_module(b.module)
    verify(b.module)
    m = b.module
    (add,) = m.walk("int.add")
    (requant,) = m.walk("int.requant_shift")
    assert requant.operands[0] is add.results[0]
    # every pair of stored inputs (a, b) once
    qa, qb = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    values = interpreter.run_values(m, {"a": qa.astype(np.uint8), "b": qb.astype(np.uint8)})
    got = np.asarray(values[m.outputs[0].operands[0]], np.int64)
    real = qa * (s_a / s_out) + qb * (s_b / s_out)
    fake_quant = np.clip(np.rint(real), 0, 255)
    assert np.max(np.abs(got - fake_quant)) <= 1
    # differences only next to a rounding tie (the ratio's and the requant's approximation errors are ~0.01 step)
    differ = got != fake_quant
    assert np.all(np.abs(real[differ] - np.floor(real[differ]) - 0.5) < 0.05)
    assert requant_step_errors(m, values)[requant.loc] <= 1
    assert requant_unexplained(m, values)[requant.loc] == 0
    # the quant-level module on float inputs that quantize to those stored integers agrees within one step
    out = interpreter.run(before, {"a": (qa * s_a).astype(np.float32), "b": (qb * s_b).astype(np.float32)})
    reference = np.asarray(list(out.values())[0], np.float64) / s_out
    assert np.max(np.abs(got - reference)) <= 1 + 1e-3
    assert np.count_nonzero(np.abs(got - reference) > 1e-3) < 0.01 * got.size


def test_rescale_plan_minimises_ratio_and_requant_error():
    ot = UniformQuantType.per_tensor(u8, 1 / 1024, 0)
    plan = choose_rescale(None, Operand(0.0028437853, 0, 0, 255), Operand(1 / 512, 0, 0, 255), 1, [ot])
    assert not plan.exact and plan.m_b == 125 and plan.m_a == 182  # a convergent of the ratio 1.45601807
    assert plan.s_common == pytest.approx((1 / 512) / 125, rel=1e-12)
    assert plan.error_steps < 0.05
    # exact ratios stay exact
    exact = choose_rescale(None, Operand(1 / 128, 3, -128, 127), Operand(1 / 255, -7, -128, 127), 1,
                           [UniformQuantType.per_tensor(i8, 1 / 64, 0)])
    assert exact.exact and (exact.m_a, exact.m_b) == (255, 128) and exact.add_error_steps < 1e-6


def test_operands_too_wide_for_int32_name_the_node():
    b = QuantBuilder()
    a = b.input("a", (1, 4), 0.013, storage=i32)
    c = b.input("b", (1, 4), 0.01, storage=i32)
    b.output("y", b.quant(b.op("onnx.Add", [a, c], loc="/block/Add"), 0.02))
    with pytest.raises(LoweringError, match=r"/block/Add.*too wide to rescale into one int32 scale"):
        lower_module(b.module)


def leaky_net(alpha, s_x=0.05, z_x=3, s_out=0.04, z_out=-20):
    """x -> LeakyRelu as the ONNX importer writes it: Add(Mul(Relu(x), 1 - alpha), Mul(x, alpha)) -> quantizer."""
    from qirc.qir.ir import const_op
    from qirc.qir.types import TensorType, f32

    b = QuantBuilder()
    x = b.input("x", (2, 4, 5, 5), s_x, z_x)

    def c(v):
        return const_op(b.module, np.array(v, np.float32), TensorType((), f32), "c")
    kept = b.op("onnx.Mul", [b.op("onnx.Relu", [x]), c(1 - alpha)])
    leak = b.op("onnx.Mul", [x, c(alpha)])
    b.output("y", b.quant(b.op("onnx.Add", [kept, leak]), s_out, z_out))
    return b


@pytest.mark.parametrize("alpha, multipliers", [(0.1, (9, 1)), (0.25, (3, 1)), (0.01, (99, 1))])
def test_leaky_relu_is_one_sum_of_the_relu_and_the_input(alpha, multipliers):
    b = leaky_net(alpha)
    report, m = full(b)
    # int.clip(x) (the ReLU in the stored domain, at the zero point) times 9, plus x: one int32 sum, one requant
    assert [o.name for o in m.walk("int.")] == ["int.clip", "int.mul", "int.add", "int.requant_shift"]
    [clip] = m.walk("int.clip")
    assert (clip.attrs["min"], clip.attrs["max"]) == (3, 127)
    [mul] = m.walk("int.mul")
    assert int(np.asarray(mul.operands[1].owner.attrs["value"]).reshape(-1)[0]) == multipliers[0]
    assert report[0]["max_abs_diff"] <= 0.04 * (1 + 1e-5)  # within one output step of the float graph
    for seed in range(3):  # and the requant within one step of its exact requantizer
        values = interpreter.run_values(m, interpreter.random_inputs(m, seed))
        assert max(requant_step_errors(m, values).values()) <= 1


def test_a_mul_of_a_dequantized_value_by_a_negative_constant_is_not_a_term():
    b = leaky_net(0.1)
    neg = [op for op in b.module.ops() if op.name == "qir.const" and op.attrs["value"].size == 1][1]
    neg.attrs["value"] = np.array(-0.1, np.float32)
    before, m = run_add_rescale(b)
    assert not m.walk("int.add") and m.walk("onnx.Add")
