"""requant-fusion: dcast -> [Relu/Clip] -> qcast chains become one int.requant_shift (plus int.clip if needed)."""
import numpy as np

from qirc.lowering.dequant_push import push_dequants
from qirc.lowering.requant_fusion import RequantFusion
from qirc.lowering.testing import QuantBuilder, requant_step_errors, requant_unexplained
from qirc.qir import interpreter
from qirc.qir.passes import translation_validate
from qirc.qir.types import TensorType, f32, i8, u8
from qirc.qir.verifier import verify

rng = np.random.default_rng(5)


def lower(b, samples=4):
    before = b.module.clone()
    push_dequants(b.module)
    RequantFusion().run(b.module)
    verify(b.module)
    report = translation_validate(before, b.module, samples=samples)
    return b.module, report


def int_ops(m):
    return [op.name for op in m.ops() if op.name.startswith("int.")]


def check_requants(m, seeds=range(3)):
    for seed in seeds:
        values = interpreter.run_values(m, interpreter.random_inputs(m, seed))
        errors = requant_step_errors(m, values)
        assert errors and max(errors.values()) <= 1, errors
        # and only where the real value is within the multiplier's approximation error of a rounding tie
        assert not any(requant_unexplained(m, values).values())


def conv_net(b, out_scale=1 / 16, **kw):
    x = b.input("x", (1, 3, 8, 8), 1 / 128)
    w = rng.integers(-127, 128, (6, 3, 3, 3))
    return b.conv(x, w, kw.pop("w_scale", 0.004), bias=rng.integers(-3000, 3000, 6), pads=[1, 1, 1, 1])


def test_conv_requant_per_tensor():
    b = QuantBuilder()
    y = b.quant(conv_net(b), 1 / 16)
    b.output("y", y)
    m, report = lower(b)
    assert int_ops(m) == ["int.conv", "int.requant_shift"]
    rq = m.walk("int.requant_shift")[0]
    assert rq.attrs["mul"].shape == (1,) and rq.attrs["signed"] is True and rq.attrs["n_levels"] == 256
    div = rq.attrs["div"]
    assert div & (div - 1) == 0
    assert rq.attrs["add"][0] == 0  # z_out = z_in = 0 and no rounding term: the kernel adds div/2
    assert report[0]["max_abs_diff"] <= 1 / 16 + 1e-9
    check_requants(m)


def test_per_channel_mul_is_shaped_1c11():
    b = QuantBuilder()
    x = b.input("x", (1, 3, 8, 8), 1 / 128)
    y = b.conv(x, rng.integers(-127, 128, (4, 3, 3, 3)), np.array([0.001, 0.002, 0.004, 0.003]))
    b.output("y", b.quant(y, 1 / 32, zero_point=3))
    m, report = lower(b)
    rq = m.walk("int.requant_shift")[0]
    assert rq.attrs["mul"].shape == (1, 4, 1, 1) and rq.attrs["add"].shape == (1, 4, 1, 1)
    mul = rq.attrs["mul"].reshape(-1)
    assert abs(mul[1] - 2 * mul[0]) <= 1 and abs(mul[2] - 4 * mul[0]) <= 2
    assert np.array_equal(rq.attrs["add"].reshape(-1), np.full(4, 3 * rq.attrs["div"]))
    check_requants(m)


def test_relu_folds_into_unsigned_output():
    b = QuantBuilder()
    y = b.op("onnx.Relu", [conv_net(b)])
    b.output("y", b.quant(y, 1 / 64, storage=u8))
    m, report = lower(b)
    assert int_ops(m) == ["int.conv", "int.requant_shift"]
    assert m.walk("int.requant_shift")[0].attrs["signed"] is False
    assert report[0]["max_abs_diff"] <= 1 / 64 + 1e-9


def test_relu_on_signed_output_with_zero_point_adds_clip():
    b = QuantBuilder()
    y = b.op("onnx.Relu", [conv_net(b)])
    b.output("y", b.quant(y, 1 / 16, zero_point=-20))
    m, report = lower(b)
    assert int_ops(m) == ["int.conv", "int.requant_shift", "int.clip"]
    clip = m.walk("int.clip")[0]
    assert (clip.attrs["min"], clip.attrs["max"]) == (-20, 127)
    assert report[0]["max_abs_diff"] <= 1 / 16 + 1e-9


def test_clip_bounds_fold_through_the_quantizer_rounding():
    b = QuantBuilder()
    y = b.op("onnx.Clip", [conv_net(b)], {"min": -0.3, "max": 6.0})
    b.output("y", b.quant(y, 0.25, storage=i8))
    m, report = lower(b)
    clip = m.walk("int.clip")[0]
    assert (clip.attrs["min"], clip.attrs["max"]) == (-1, 24)  # rint(-1.2) = -1, rint(24) = 24
    assert report[0]["max_abs_diff"] <= 0.25 + 1e-9


def test_narrow_range_output_gets_clip_and_wider_requant_type():
    b = QuantBuilder()
    y = b.quant(conv_net(b), 1 / 16, storage_min=-127, storage_max=127)
    b.output("y", y)
    m, _ = lower(b)
    rq, clip = m.walk("int.requant_shift")[0], m.walk("int.clip")[0]
    assert rq.results[0].type.quant.storage_min == -128
    assert (clip.attrs["min"], clip.attrs["max"]) == (-127, 127)


def test_identity_requantizer_disappears_and_rescale_is_exact():
    b = QuantBuilder()
    x = b.input("x", (1, 16), 1 / 128)
    same = b.quant(x, 1 / 128)
    half = b.quant(same, 1 / 64)
    b.output("y", half)
    m, report = lower(b)
    assert int_ops(m) == ["int.requant_shift"]
    rq = m.walk("int.requant_shift")[0]
    assert rq.attrs["mul"][0] * 2 == rq.attrs["div"]
    check_requants(m)


def test_gemm_per_channel_requant_is_shaped_1c():
    b = QuantBuilder()
    x = b.input("x", (3, 10), 0.1)
    y = b.gemm(x, rng.integers(-127, 128, (4, 10)), np.array([0.01, 0.02, 0.03, 0.04]), bias=rng.integers(-9, 9, 4))
    b.output("y", b.quant(y, 0.05))
    m, _ = lower(b)
    assert m.walk("int.requant_shift")[0].attrs["mul"].shape == (1, 4)
    check_requants(m)


def test_overflow_free_on_adversarial_inputs():
    b = QuantBuilder()
    x = b.input("x", (1, 3, 8, 8), 1 / 128)
    w = rng.integers(-127, 128, (2, 3, 3, 3))
    y = b.conv(x, w, 0.004, bias=None)
    b.output("y", b.quant(y, 1 / 4096))
    m, _ = lower(b)
    for sign in (1, -1):
        stored = np.zeros((1, 3, 8, 8), np.int64)
        stored[0, :, :3, :3] = np.where(sign * w[0] > 0, 127, -128)
        out = interpreter.run(m, {"x": (stored / 128).astype(np.float32)}, check_overflow=True)
        assert out["y"][0, 0, 0, 0] == np.float32((127 if sign == 1 else -128) / 4096)  # saturates, never wraps


from hypothesis import given, settings, strategies as st


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), z_x=st.integers(-20, 20), z_y=st.integers(-30, 30),
       s_y=st.floats(1e-3, 0.5), per_channel=st.booleans(), act=st.sampled_from(["none", "relu", "clip"]),
       unsigned=st.booleans(), rounding=st.sampled_from(["round_add", "add_round"]))
def test_random_conv_requants_are_faithful(seed, z_x, z_y, s_y, per_channel, act, unsigned, rounding):
    r = np.random.default_rng(seed)
    b = QuantBuilder()
    x = b.input("x", (2, 3, 5, 5), float(r.uniform(0.005, 0.1)), z_x)
    w_scale = r.uniform(1e-4, 0.05, 4) if per_channel else float(r.uniform(1e-4, 0.05))
    y = b.conv(x, r.integers(-127, 128, (4, 3, 3, 3)), w_scale, bias=r.integers(-5000, 5000, 4), pads=[1, 0, 1, 0])
    if act == "relu":
        y = b.op("onnx.Relu", [y])
    elif act == "clip":
        y = b.op("onnx.Clip", [y], {"min": -float(r.uniform(0, 1)), "max": float(r.uniform(0.5, 4))})
    storage = u8 if unsigned else i8
    b.output("y", b.quant(y, s_y, z_y + 128 if unsigned else z_y, storage=storage, rounding=rounding))
    m, report = lower(b, samples=2)
    assert all(op.dialect in ("qir", "int", "quant") for op in m.ops())
    assert [op.name for op in m.ops() if op.dialect == "quant"] == ["quant.qcast", "quant.dcast"]
    # a conv output within 1 step; the float conv may itself differ from the exact sum by float32 rounding
    assert report[0]["max_abs_diff"] <= s_y * (1 + 1e-4)
    check_requants(m, seeds=range(2))


def _scaled_activation(b, op_name, const_first=False, c=None):
    """x (u8 ReLU output, scale 1/50) -> Mul/Div by a dequantized uint8 constant (onnxruntime's QDQ form of
    `x * 0.5`: 255 at scale 1/510) -> the product's quantizer."""
    x = b.input("x", (1, 4, 6, 6), 1 / 50, storage=u8)
    c = b.qconst(np.array(255), b.qtype(1 / 510, storage=u8)) if c is None else c
    y = b.op(op_name, [c, x] if const_first else [x, c])
    return y


def test_mul_by_a_positive_constant_is_the_requant_gain():
    # `x * 0.5` and `0.5 * x` between quantizers (onnxruntime's QDQ Mul): one requant with gain 0.5, no float op
    for const_first in (False, True):
        b = QuantBuilder()
        y = _scaled_activation(b, "onnx.Mul", const_first)
        b.output("y", b.quant(y, 1 / 120, storage=u8))
        m, report = lower(b, samples=8)
        assert int_ops(m) == ["int.requant_shift"]
        assert [op.name for op in m.ops() if op.name.startswith("onnx.")] == []
        rq = m.walk("int.requant_shift")[0]
        # M = 0.5 * (1/50) / (1/120) = 1.2
        assert abs(rq.attrs["mul"][0] / rq.attrs["div"] - 1.2) < 1e-3
        assert report[0]["max_abs_diff"] <= 1 / 120 + 1e-9


def test_div_by_a_float_constant_with_a_relu_after_it():
    b = QuantBuilder()
    x = b.input("x", (1, 4, 6, 6), 1 / 50, zero_point=-10)
    c = b.module.create("qir.const", [], [TensorType((), f32)], {"value": np.array(3.0, np.float32)}, "/c").results[0]
    y = b.op("onnx.Relu", [b.op("onnx.Div", [x, c])])
    b.output("y", b.quant(y, 1 / 150, storage=u8))
    m, report = lower(b, samples=8)
    assert int_ops(m) == ["int.requant_shift"]
    assert report[0]["max_abs_diff"] <= 1 / 150 + 1e-9


def test_mul_by_a_negative_or_tensor_constant_is_left_alone():
    for value in (np.array(-0.5, np.float32), np.full((1, 4, 1, 1), 0.5, np.float32)):
        b = QuantBuilder()
        c = b.module.create("qir.const", [], [TensorType(value.shape, f32)], {"value": value}, "/c").results[0]
        y = _scaled_activation(b, "onnx.Mul", c=c)
        b.output("y", b.quant(y, 1 / 120))
        before = b.module.clone()
        RequantFusion().run(b.module)
        assert len(b.module.walk("onnx.Mul")) == 1, value
        assert len(b.module.walk("quant.qcast")) == len(before.walk("quant.qcast"))
