"""qirc.lowering.numerics (requant multiplier/shift selection) and qirc.lowering.ranges (interval analysis)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qirc.lowering.numerics import (INT32_LIMIT, choose_requant, form_bounds, quantize_scalar, rational_multipliers,
                                    requant_error_bound, requant_form, unsaturated_span)
from qirc.lowering.ranges import RangeAnalysis
from qirc.lowering.testing import QuantBuilder
from qirc.lowering.dequant_push import push_dequants
from qirc.qir import interpreter
from qirc.qir.diagnostics import LoweringError


def kernel(x, mul, add, div, lo, hi):
    return np.clip(np.floor_divide(x * mul + add + div // 2, div), lo, hi)


def test_power_of_two_multiplier_is_exact():
    p = choose_requant(0.25, 0, 0, -1000, 1000, -128, 127)
    x = np.arange(-1000, 1001, dtype=np.int64)
    y = kernel(x, p.mul, p.add, p.div, -128, 127)
    assert p.error_steps == 0.0
    # ties go up in the kernel, to even in rint: the only differences are exact ties
    ref = np.clip(np.rint(x * 0.25), -128, 127)
    assert np.all(np.abs(y - ref) <= 1)
    assert np.all((y == ref) | (np.abs(x * 0.25 - np.floor(x * 0.25) - 0.5) < 1e-12))


def test_largest_shift_that_keeps_int32():
    lo, hi = -300_000, 300_000
    p = choose_requant(0.0123, 3, -5, lo, hi, -128, 127)
    worst = max(abs(lo * int(p.mul[0]) + int(p.add[0])), abs(hi * int(p.mul[0]) + int(p.add[0]))) + p.div // 2
    assert worst < INT32_LIMIT and max(abs(lo), abs(hi)) * int(p.mul[0]) < INT32_LIMIT
    # one more bit would overflow
    mul_next = int(np.rint(0.0123 * 2 ** (p.shift + 1)))
    assert max(abs(lo), abs(hi)) * mul_next >= INT32_LIMIT or \
        max(abs(lo * mul_next + (-5 << (p.shift + 1)) - 3 * mul_next),
            abs(hi * mul_next + (-5 << (p.shift + 1)) - 3 * mul_next)) + 2 ** p.shift >= INT32_LIMIT
    assert int(p.add[0]) == -5 * p.div - 3 * int(p.mul[0])  # no rounding term in add


@settings(max_examples=60, deadline=None)
@given(m=st.floats(1e-5, 50.0), z_in=st.integers(-128, 127), z_out=st.integers(-20, 20),
       r=st.integers(1, 1 << 20))
def test_within_one_step_of_float64_reference(m, z_in, z_out, r):
    lo, hi = -r, r
    try:
        p = choose_requant(m, z_in, z_out, lo, hi, -128, 127, strict=True)
    except LoweringError:
        return  # honest refusal: precision and range cannot both be met
    x = np.unique(np.linspace(lo, hi, 4001).astype(np.int64))
    y = kernel(x, p.mul, p.add, p.div, -128, 127)
    ref = np.clip(np.rint((x - z_in) * m) + z_out, -128, 127)
    assert np.max(np.abs(y - ref)) <= 1
    assert np.max(np.abs(x * p.mul + p.add)) + p.div // 2 < INT32_LIMIT


def test_per_channel_parameters_keep_their_shape():
    m = np.array([0.01, 0.02, 0.04]).reshape(1, 3, 1, 1)
    p = choose_requant(m, 0, 0, -5000, 5000, -128, 127)
    assert p.mul.shape == (1, 3, 1, 1) and p.add.shape == (1, 3, 1, 1)
    assert p.mul[0, 1, 0, 0] == 2 * p.mul[0, 0, 0, 0]


def test_per_tensor_parameters_are_shape_one():
    p = choose_requant(0.5, 0, 0, np.array([-10, -20]).reshape(1, 2), np.array([10, 20]).reshape(1, 2), -128, 127)
    assert p.mul.shape == (1,)


def test_imprecise_requant_is_compiled_with_its_bound_and_refused_only_when_strict():
    class Op:
        loc, name = "/layer9/Conv", "int.requant_shift"
    lo, hi = -(1 << 30), 1 << 30
    p = choose_requant(1e-4, 0, 0, lo, hi, -128, 127, op=Op())
    # still int32-safe: the largest shift whose products fit
    assert max(abs(lo), abs(hi)) * int(p.mul[0]) + p.div // 2 < INT32_LIMIT
    assert max(abs(lo), abs(hi)) * int(np.rint(1e-4 * 2 ** (p.shift + 1))) >= INT32_LIMIT
    # the bound is what it claims: the worst error over the unsaturated inputs (|x| <= 128.5 / M)
    assert p.error_steps >= 1.0
    x = np.arange(-1_285_000, 1_285_001, 997, dtype=np.int64)
    real = x * 1e-4
    approx = x * (int(p.mul[0]) / p.div)
    assert np.max(np.abs(approx - real)) <= p.error_steps + 1e-9
    assert np.max(np.abs(approx - real)) >= 0.9 * p.error_steps
    with pytest.raises(LoweringError) as err:
        choose_requant(1e-4, 0, 0, lo, hi, -128, 127, op=Op(), strict=True)
    assert "/layer9/Conv" in str(err.value) and "output steps" in str(err.value) and "--strict" in str(err.value)
    with pytest.raises(LoweringError, match="overflows int32 for every shift"):
        choose_requant(5e9, 0, 0, -10, 10, -128, 127, op=Op())


def test_unsaturated_span_counts_the_steps_on_the_wider_side_of_the_zero_point():
    assert unsaturated_span(128, 0, 255) == 129.0
    assert unsaturated_span(0, 0, 255) == 256.0
    assert unsaturated_span(0, -128, 127) == 129.0
    assert np.array_equal(unsaturated_span(np.array([0, 100]), -128, 127), [129.0, 229.0])


def test_uint8_zero_point_128_is_not_measured_over_384_steps():
    """A ResNet-18 per-tensor requant from onnxruntime's quantizer (u8 output, zero point 128): over the 129 steps
    that do not saturate the approximation error stays below one step; counted over 384 it did not."""
    m, lo, hi = 1.043e-5, -(1 << 24), 1 << 24
    p = choose_requant(m, 0, 128, lo, hi, 0, 255, strict=True)
    assert p.error_steps < 1.0
    # the old count (max(|lo|, |hi|) + |z_out| + 1 = 384 steps) would have put this requant above one step
    deviation = abs(int(p.mul[0]) / p.div - m)
    assert min(hi, 384 / m) * deviation >= 1.0
    assert requant_error_bound(m, p.mul, p.shift, 0, 128, lo, hi, 0, 255) == p.error_steps
    x = np.arange(lo, hi, 331, dtype=np.int64)
    y = kernel(x, p.mul, p.add, p.div, 0, 255)
    ref = np.clip(np.rint(x * m) + 128, 0, 255)
    assert np.max(np.abs(y - ref)) <= 1


def test_requant_forms():
    assert requant_form(-128, 127) == (True, 256, False)
    assert requant_form(0, 255) == (False, 256, False)
    assert requant_form(-127, 127) == (True, 256, True)
    assert requant_form(0, 127) == (False, 128, False)
    assert requant_form(-8, 7) == (True, 16, False)
    assert requant_form(3, 100) == (False, 128, True)
    assert form_bounds(False, 256) == (0, 255)


def test_quantize_scalar_rounding_orders_differ_on_ties():
    # x / s = 0.5 with z = 1: round_add -> rint(0.5) + 1 = 1, add_round -> rint(1.5) = 2
    assert quantize_scalar(0.5, 1.0, 1, "round_add", -128, 127) == 1
    assert quantize_scalar(0.5, 1.0, 1, "add_round", -128, 127) == 2
    assert quantize_scalar(float("-inf"), 1.0, 0, "round_add", -128, 127) == -128


def test_rational_multipliers():
    assert rational_multipliers(1.0, 100) == (1, 1)
    assert rational_multipliers(255 / 128, 1000) == (128, 255)
    assert rational_multipliers(np.pi, 1000) is None


# ----- ranges ---------------------------------------------------------------------------------------------------------
def _pushed_conv(zero_point=0, group=1, pads=(1, 1, 1, 1)):
    rng = np.random.default_rng(3)
    b = QuantBuilder()
    x = b.input("x", (2, 4, 6, 6), 0.05, zero_point)
    w = rng.integers(-127, 128, (8, 4 // group, 3, 3))
    y = b.conv(x, w, 0.01, bias=rng.integers(-3000, 3000, 8), pads=pads, group=group)
    b.output("y", y)
    push_dequants(b.module)
    conv = b.module.walk("int.conv")[0]
    return b.module, conv, w


@pytest.mark.parametrize("group", [1, 2, 4])
def test_conv_range_is_sound_and_reached(group):
    module, conv, w = _pushed_conv(group=group, pads=(0, 0, 0, 0))
    lo, hi = RangeAnalysis().range_of(conv.results[0])
    assert lo.shape == (1, 8, 1, 1)
    # the input that maximises channel 0 reaches the bound exactly
    x_value = conv.operands[0]
    c_in_per_group = 4 // group
    x = np.full(x_value.type.shape, -128, np.int64)
    g0 = slice(0, c_in_per_group)
    x[:, g0, :3, :3] = np.where(w[0] > 0, 127, -128)
    values = interpreter.run_values(module, {"x": _float_input(module, x)})
    acc = values[conv.results[0]]
    assert acc[0, 0, 0, 0] == hi[0, 0, 0, 0]
    assert np.all(acc >= lo) and np.all(acc <= hi)


def _float_input(module, stored):
    qcast = module.inputs[0].results[0].users[0]
    q = qcast.results[0].type.quant
    return ((stored - q.zero_point) * q.scale).astype(np.float32)


def test_ranges_of_zero_point_corrected_conv_cover_random_inputs():
    module, conv, _ = _pushed_conv(zero_point=7)
    lo, hi = RangeAnalysis().range_of(conv.results[0])
    for seed in range(5):
        acc = interpreter.run_values(module, interpreter.random_inputs(module, seed))[conv.results[0]]
        assert np.all(acc >= lo) and np.all(acc <= hi)


def test_requant_fits_int32_with_a_foldable_offset_folded_into_add():
    """Deeploy folds a conv's bias into the requant's add (add' = add + b * mul); the shift must keep that in int32
    too, not only x * mul + add over the biased range."""
    p = choose_requant(0.002, 0, 0, -40_000, 40_000, -128, 127)
    bias = np.array([-1_000_000, 900_000]).reshape(1, 2, 1, 1)
    assert np.any(np.abs(p.add + bias * p.mul) + p.div // 2 >= INT32_LIMIT)  # the unfolded choice breaks
    q = choose_requant(0.002, 0, 0, -40_000, 40_000, -128, 127, fold_offset=bias)
    assert np.all(np.abs(q.add + bias * q.mul) + q.div // 2 < INT32_LIMIT)
    assert np.all(np.maximum(np.abs(-40_000 - bias), np.abs(40_000 - bias)) * q.mul < INT32_LIMIT)
    assert q.shift < p.shift


def test_four_bit_activations_after_signed_normalisation_keep_the_folded_bias_in_int32():
    """Brevitas 4-bit QuantReLU on siracusa/cortexm: u4 stored as i8 with zero point -128 makes the zero-point term of
    the bias (-z_x * sum(w)) far larger than the accumulator's own range; the requant after the conv is sized so that
    folding that bias into add stays in int32 ("requant_shift add does not fit int32" before)."""
    from qirc.lowering import lower_module
    from qirc.qir.types import u8
    rng = np.random.default_rng(4)
    b = QuantBuilder()
    x = b.input("x", (1, 8, 6, 6), 0.05)
    for layer in range(2):
        # mostly positive weights: sum(w) * 128, the zero-point term, dwarfs the accumulator range
        y = b.conv(x, rng.integers(-20, 128, (8, 8, 3, 3)), 0.004, bias=rng.integers(-3000, 3000, 8),
                   pads=[1, 1, 1, 1])
        x = b.quant(b.op("onnx.Relu", [y]), 0.1, storage=u8, storage_min=0, storage_max=15)
    b.output("y", x)
    reference = b.module.clone()
    lower_module(b.module, signed=True)
    checked = 0
    for rq in b.module.walk("int.requant_shift"):
        conv = rq.operands[0].owner
        if conv.name != "int.conv" or len(conv.operands) < 3:
            continue
        bias = np.asarray(conv.operands[2].owner.attrs["value"], np.int64).reshape(1, -1, 1, 1)
        add = np.asarray(rq.attrs["add"], np.int64)
        assert np.all(np.abs(add + bias * rq.attrs["mul"]) + int(rq.attrs["div"]) // 2 < INT32_LIMIT)
        checked += 1
    assert checked == 2
    for seed in range(3):
        stored = interpreter.random_inputs(b.module, seed)["x"]
        ref = interpreter.run(reference, {"x": (stored * 0.05).astype(np.float32)})["y"]
        got = interpreter.run(b.module, {"x": stored})["y"]
        # the stored u4 value is the i8 one + 128 (signed normalisation moves the zero point from 0 to -128)
        assert np.max(np.abs((got.astype(np.int64) + 128) - np.rint(ref / 0.1))) <= 1
