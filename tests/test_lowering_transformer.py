"""integer-transformer and scale-fold: the quant-level Softmax / LayerNorm / Gelu / activation MatMul / Div by
sqrt(d) patterns become Deeploy's integer kernels with the I-BERT recipes, and bad inputs are refused by name.

Each test builds a 2-5 node graph, lowers it, checks the op sequence, and runs before and after: the integer graph
must compute exactly the kernel recipe (hand-computed from the public kernel functions) and stay close to the float
model (the kernels approximate exp, erf and the variance, so the comparison is by tolerance)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qirc.lowering import lower_module
from qirc.lowering.testing import QuantBuilder
from qirc.lowering.transformer_ops import gelu_coefficients, layernorm_parameters, softmax_coefficients
from qirc.qir.diagnostics import LoweringError
from qirc.qir.interpreter import run
from qirc.qir.ir import const_op
from qirc.qir.kernels_transformer import igelu, ilayernorm, isoftmax
from qirc.qir.types import TensorType, f32, i32, u8


def ops(module):
    return [op.name for op in module.ops() if op.name not in ("qir.input", "qir.output", "qir.const")]


def quantize(x, scale, lo=-128, hi=127):
    return np.clip(np.rint(np.asarray(x, np.float64) / scale), lo, hi).astype(np.int64)


def requant(acc, m, lo=-128, hi=127):
    """The fake-quant requantizer (what a faithful RequantShift computes up to ties)."""
    return np.clip(np.rint(acc * m), lo, hi).astype(np.int64)


def fconst(b, array):
    array = np.asarray(array, np.float32)
    return const_op(b.module, array, TensorType(array.shape, f32))


# ----- softmax ------------------------------------------------------------------------------------------------------
def attention_tail(e=0.05, s_v=0.1, s_o=0.02, s_a=1 / 256, shape=(1, 2, 4, 6)):
    """scores (quantized at e) -> Softmax -> qcast u8 @ s_a -> MatMul with V -> qcast i8 @ s_o."""
    b = QuantBuilder("attn")
    s = b.input("s", shape, scale=e)
    v = b.input("v", shape[:-2] + (shape[-1], 3), scale=s_v)
    p = b.quant(b.op("onnx.Softmax", [s], {"axis": -1}, loc="/attn/Softmax"), scale=s_a, storage=u8)
    b.output("o", b.quant(b.op("onnx.MatMul", [p, v], loc="/attn/MatMul_1"), scale=s_o))
    return b.module


def test_softmax_output_grid_folds_into_the_p_x_v_requant_with_the_half_step_correction():
    m = attention_tail()
    lower_module(m)
    assert sorted(ops(m)) == ["int.add", "int.isoftmax", "int.matmul", "int.matmul", "int.mul", "int.requant_shift"]
    (sm,) = m.walk("int.isoftmax")
    assert dict(sm.attrs) == {"coeffA": 1, "coeffB": 27, "coeffC": 384, "log2": 14, "n_levels": 256}
    assert sm.results[0].type.quant.scale == pytest.approx(1 / 255)
    (j,) = [op for op in m.walk("int.matmul") if op.operands[0].owner.name == "qir.const"]
    assert np.all(j.operands[0].owner.attrs["value"] == 1) and j.operands[0].type.shape == (1, 2, 4, 6)
    # the model's u8 @ 1/256 quantizer is gone: P x V reads the kernel's u / 255, plus the half step the kernel's
    # flooring normalisation loses: (u + 1/2) / 255, exactly, through 2 (P x V) + J x V on one int32 scale
    rng = np.random.default_rng(0)
    s = rng.integers(-128, 128, (1, 2, 4, 6))
    v = rng.integers(-128, 128, (1, 2, 6, 3))
    got = run(m, {"s": s, "v": v})["o"]
    u = isoftmax(s, **softmax_coefficients(0.05))
    expect = requant((u + 0.5) @ v, (1 / 255) * 0.1 / 0.02)
    assert np.abs(got - expect).max() <= 1  # a RequantShift is within one step of the ideal requantizer
    assert np.mean(got == expect) > 0.95


def test_softmax_is_close_to_the_float_softmax():
    m, ref = attention_tail(shape=(1, 4, 8, 16)), attention_tail(shape=(1, 4, 8, 16))
    lower_module(m)
    rng = np.random.default_rng(1)
    s = rng.normal(0, 2, (1, 4, 8, 16)).astype(np.float32)
    v = rng.normal(0, 3, (1, 4, 16, 3)).astype(np.float32)
    want = run(ref, {"s": s, "v": v})["o"] / 0.02
    got = run(m, {"s": quantize(s, 0.05), "v": quantize(v, 0.1)})["o"]
    # I-BERT's exp is coarse at e = 0.05; the flooring normalisation's half step is corrected
    assert np.abs(got - want).mean() < 1.0


def test_softmax_kept_quantizer_when_its_output_is_read_in_float_elsewhere():
    b = QuantBuilder("sm")
    s = b.input("s", (2, 8), scale=0.05)
    p = b.op("onnx.Softmax", [s], {"axis": 1})
    b.output("p", b.quant(p, scale=1 / 128, storage=u8))
    m = b.module
    lower_module(m)
    # the qcast's dequantized value is a graph output: it keeps the model's scale through a requant
    assert ops(m) == ["int.isoftmax", "int.requant_shift"]
    assert m.outputs[0].operands[0].type.quant.scale == 1 / 128


# ----- scale fold ---------------------------------------------------------------------------------------------------
def test_div_by_sqrt_head_dim_folds_into_the_query_requant():
    b = QuantBuilder("q")
    x = b.input("x", (4, 16), scale=0.05)
    w = np.random.default_rng(2).integers(-127, 128, (16, 16))
    acc = b.op("onnx.MatMul", [x, b.qconst(w, b.qtype(0.01))])
    q = b.op("onnx.Div", [acc, fconst(b, 4.0)])
    b.output("q", b.quant(q, scale=0.02))
    m, ref = b.module, b.module.clone()
    lower_module(m)
    assert ops(m) == ["int.matmul", "int.requant_shift"]
    x_f = np.random.default_rng(3).normal(0, 2, (4, 16)).astype(np.float32)
    want = run(ref, {"x": x_f})["q"] / 0.02
    got = run(m, {"x": quantize(x_f, 0.05)})["q"]
    assert np.abs(got - want).max() <= 1  # exact up to the requant's one step: no float op, no extra rounding


def test_mul_by_a_negative_constant_is_not_folded():
    b = QuantBuilder("q")
    x = b.input("x", (4, 16), scale=0.05)
    w = np.ones((16, 16), np.int64)
    acc = b.op("onnx.MatMul", [x, b.qconst(w, b.qtype(0.01))])
    b.output("q", b.quant(b.op("onnx.Mul", [acc, fconst(b, -0.5)], loc="/neg"), scale=0.02))
    with pytest.raises(LoweringError, match="/neg.*onnx.Mul could not be lowered"):
        lower_module(b.module)


# ----- LayerNorm ----------------------------------------------------------------------------------------------------
def layernorm_model(gamma, beta, s_in=0.05, s_out=0.03, shape=(1, 6, 16)):
    b = QuantBuilder("ln")
    x = b.input("x", shape, scale=s_in)
    y = b.op("onnx.LayerNormalization", [x, fconst(b, gamma), fconst(b, beta)], {"axis": -1, "epsilon": 1e-5},
             loc="/block/norm1/LayerNormalization")
    b.output("y", b.quant(y, scale=s_out))
    return b.module


def test_layernorm_recipe_and_closeness_to_float():
    rng = np.random.default_rng(4)
    gamma, beta = rng.normal(1, 0.1, 16), rng.normal(0, 0.2, 16)
    m, ref = layernorm_model(gamma, beta), layernorm_model(gamma, beta)
    lower_module(m)
    assert ops(m) == ["int.ilayernorm"]
    (ln,) = m.walk("int.ilayernorm")
    weight, bias, k = layernorm_parameters(gamma.astype(np.float32), beta.astype(np.float32), 0.03, 0)
    assert ln.attr("D") == 1 << k and k >= 20
    assert np.array_equal(ln.operands[1].owner.attrs["value"], weight)
    assert np.array_equal(ln.operands[2].owner.attrs["value"], bias)
    x_f = rng.normal(0, 1.5, (1, 6, 16)).astype(np.float32)
    x = quantize(x_f, 0.05)
    got = run(m, {"x": x})["y"]
    assert np.array_equal(got, ilayernorm(x, weight, bias, k))
    want = run(ref, {"x": x_f})["y"] / 0.03
    assert np.abs(got - want).mean() < 1.5  # integer std = floor(sqrt(var + 1)): ~1/30 relative at 30 steps


def test_layernorm_bias_carries_the_output_zero_point_and_rounds_once():
    # gamma = 0: every output is round(beta / s + z) exactly
    m = layernorm_model(np.zeros(4), np.array([0.1, -0.1, 0.045, 0.0]), s_out=0.03, shape=(1, 3, 4))
    for q in m.walk("quant.qcast"):
        if q.results[0].type.quant.scale == 0.03:
            q.results[0].type = q.results[0].type.with_element(q.results[0].type.quant.with_(zero_points=(5,)))
    lower_module(m)
    out = run(m, {"x": np.arange(12).reshape(1, 3, 4) - 6})["y"]
    assert out.tolist() == [[[8, 2, 7, 5]] * 3]  # round(3.33) + 5, round(-3.33) + 5, round(1.5) + 5, 0 + 5


def test_layernorm_into_a_relu_folded_quantizer_does_not_wrap():
    # onnxruntime folds LayerNorm -> Relu's Relu into the quantizer (zero point -128: its range starts at 0).  On that
    # grid every negative output of the wrapping kernel wrapped to a large positive one (242 output steps off, argmax
    # agreement 0% on a real export); now the kernel writes onto a symmetric grid holding any LayerNorm output and a
    # RequantShift clips onto the quantizer's grid
    rng = np.random.default_rng(6)
    gamma, beta = rng.normal(1, 0.1, 16), rng.normal(0, 0.2, 16)
    m, ref = layernorm_model(gamma, beta), layernorm_model(gamma, beta)
    for module in (m, ref):
        for q in module.walk("quant.qcast"):
            if q.results[0].type.quant.scale == 0.03:
                q.results[0].type = q.results[0].type.with_element(q.results[0].type.quant.with_(zero_points=(-128,)))
    lower_module(m)
    assert ops(m) == ["int.ilayernorm", "int.requant_shift"]
    (ln,) = m.walk("int.ilayernorm")
    assert ln.results[0].type.quant.zero_point == 0
    x_f = rng.normal(0, 1.5, (1, 6, 16)).astype(np.float32)
    x_f[0, 0] = 0.0
    x_f[0, 0, 3] = 6.0  # one outlier: its row normalises to the extreme sqrt(15) and -1 / sqrt(15)
    x = quantize(x_f, 0.05)
    got = run(m, {"x": x})["y"]
    real = run(ref, {"x": x_f})["y"]
    want = np.clip(np.rint(real / 0.03) - 128, -128, 127)
    assert np.abs(got - want).max() <= 3 and np.abs(got - want).mean() < 1
    assert np.all(got[real < -0.1] == -128)  # every clearly negative output clips to 0, none wraps


# ----- GELU ---------------------------------------------------------------------------------------------------------
def gelu_model(s_in=0.05, s_out=0.02, out_quant=True, in_quant=True):
    b = QuantBuilder("gelu")
    x = b.input("x", (2, 32), scale=0.05)
    if not in_quant:
        w = np.eye(32, dtype=np.int64)
        x = b.op("onnx.MatMul", [x, b.qconst(w, b.qtype(0.5))])
    elif s_in != 0.05:
        x = b.quant(x, scale=s_in)
    y = b.op("onnx.Gelu", [x], {"approximate": "none"}, loc="/mlp/act/Gelu")
    b.output("y", b.quant(y, scale=s_out) if out_quant else y)
    return b.module


def test_gelu_recipe_requant_without_add_and_closeness_to_float():
    m, ref = gelu_model(), gelu_model()
    lower_module(m)
    assert ops(m) == ["int.igelu", "int.requant_shift"]
    (g,) = m.walk("int.igelu")
    c = gelu_coefficients(0.05)
    assert dict(g.attrs) == c == {"b": -50, "one": 2770}
    assert g.results[0].type.quant.scale == pytest.approx(0.05 / 2770)
    (rq,) = m.walk("int.requant_shift")
    assert np.all(rq.attr("add") == 0)  # Deeploy's fused RequantizediGELU needs add = 0
    x = np.arange(-64, 0).reshape(2, 32) * 4 % 256 - 128
    got = run(m, {"x": x})["y"]
    assert np.abs(got - requant(igelu(x, -50, 2770), 0.05 / 2770 / 0.02)).max() <= 1
    want = run(ref, {"x": (x * 0.05).astype(np.float32)})["y"] / 0.02
    assert np.abs(got - want).max() <= 2.5  # I-BERT's erf is within ~0.02 absolute


# ----- refusals -----------------------------------------------------------------------------------------------------
def test_softmax_without_input_quantizer_names_the_brevitas_argument():
    b = QuantBuilder("attn")
    q = b.input("q", (1, 4, 8), scale=0.05)
    k = b.input("k", (1, 8, 4), scale=0.05)
    scores = b.op("onnx.MatMul", [q, k])
    p = b.quant(b.op("onnx.Softmax", [scores], {"axis": -1}, loc="/mha/Softmax"), scale=1 / 255, storage=u8)
    b.output("p", p)
    with pytest.raises(LoweringError, match=r"/mha/Softmax.*softmax_input_quant=Int8ActPerTensorFloat"):
        lower_module(b.module)


def test_softmax_over_a_non_last_axis_is_refused():
    b = QuantBuilder("sm")
    s = b.input("s", (2, 8), scale=0.05)
    b.output("p", b.quant(b.op("onnx.Softmax", [s], {"axis": 0}, loc="/sm0"), scale=1 / 255, storage=u8))
    with pytest.raises(LoweringError, match=r"/sm0.*softmax over axis 0 .*last axis"):
        lower_module(b.module)


def test_attention_mask_with_minus_infinity_is_refused():
    b = QuantBuilder("sm")
    s = b.input("s", (4, 4), scale=0.05)
    mask = np.triu(np.full((4, 4), -np.inf, np.float32), 1)
    masked = b.quant(b.op("onnx.Add", [s, fconst(b, mask)], loc="/mask/Add"), scale=0.05)
    b.output("p", b.quant(b.op("onnx.Softmax", [masked], {"axis": -1}, loc="/attn/sm"), scale=1 / 255, storage=u8))
    with pytest.raises(LoweringError, match=r"/attn/sm.*attention mask.*/mask/Add.*-inf"):
        lower_module(b.module)


def test_gelu_input_scale_below_the_kernel_range_is_refused():
    with pytest.raises(LoweringError, match=r"/mlp/act/Gelu.*scale 0.01 .*b = -250 must fit int8 .*s >= 0.01947"):
        lower_module(gelu_model(s_in=0.01))


def test_gelu_without_output_quantizer_is_refused():
    with pytest.raises(LoweringError, match=r"/mlp/act/Gelu.*GELU output has no quantizer"):
        lower_module(gelu_model(out_quant=False))


def test_gelu_without_input_quantizer_is_refused():
    with pytest.raises(LoweringError, match=r"/mlp/act/Gelu.*GELU input has no 8-bit quantizer.*input quantizer"):
        lower_module(gelu_model(in_quant=False))


def test_layernorm_without_output_quantizer_is_refused():
    b = QuantBuilder("ln")
    x = b.input("x", (2, 8), scale=0.05)
    y = b.op("onnx.LayerNormalization", [x, fconst(b, np.ones(8)), fconst(b, np.zeros(8))], {"axis": -1},
             loc="/norm")
    b.output("y", y)
    with pytest.raises(LoweringError, match=r"/norm.*LayerNorm output has no quantizer"):
        lower_module(b.module)


def test_softmax_input_scale_too_fine_is_refused():
    with pytest.raises(LoweringError, match=r"/attn/Softmax.*too fine for iSoftmax.*2\^32"):
        lower_module(attention_tail(e=2e-4))


def test_coefficients_follow_the_ibert_formulas():
    e = 0.0123
    c = softmax_coefficients(e)
    assert (c["coeffB"], c["coeffC"], c["log2"]) == (round(1.353 / e), round(0.344 / (0.3585 * e * e)),
                                                     round(math.log(2) / e))
    g = gelu_coefficients(0.03)
    assert (g["b"], g["one"]) == (round(-1.769 * math.sqrt(2) / 0.03), round(2 / (0.2888 * 0.03 ** 2)))


def test_layernorm_read_through_several_identical_quantizers_and_a_narrow_one():
    # an export repeats the LayerNorm's output quantizer per reader (q, k and v projections); narrow range (-127..127)
    b = QuantBuilder("ln")
    x = b.input("x", (2, 8), scale=0.05)
    y = b.op("onnx.LayerNormalization", [x, fconst(b, np.full(8, 5.0)), fconst(b, np.zeros(8))], {"axis": -1},
             loc="/norm")
    outs = [b.dcast(b.qcast(y, b.qtype(0.03, storage_min=-127, storage_max=127))) for _ in range(3)]
    for i, o in enumerate(outs):
        b.output(f"y{i}", b.quant(o, scale=0.03))
    m = b.module
    lower_module(m)
    assert [op.name for op in m.ops() if op.dialect == "int"] == ["int.ilayernorm"]
    (ln,) = m.walk("int.ilayernorm")
    assert ln.results[0].type.quant.storage_min == -128  # wrapped outputs stay representable
    out = run(m, {"x": np.array([[-100, 100, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]])})
    assert np.array_equal(out["y0"], out["y2"])


def test_bias_add_on_an_accumulator_at_float32_rounded_scale_is_exact():
    # the packed in-projection: MatMul + bias whose sum reaches no quantizer directly (Slices follow); the bias scale
    # is the file's float32 rounding of s_x * s_w, the accumulator's the float64 product
    b = QuantBuilder("proj")
    x = b.input("x", (4, 64), scale=0.05)
    w = np.full((64, 8), 127)
    acc = b.op("onnx.MatMul", [x, b.qconst(w, b.qtype(0.01))])
    s_bias = float(np.float32(0.05 * 0.01))
    bias = b.qconst(np.arange(8) * 1000, b.qtype(s_bias, storage=i32))
    b.output("y", b.op("onnx.Add", [bias, acc], loc="/in_proj/Add"))
    m = b.module
    lower_module(m)
    assert [op.name for op in m.ops() if op.dialect == "int"] == ["int.matmul", "int.add"]
    x_int = np.full((4, 64), -128)
    assert np.array_equal(run(m, {"x": x_int})["y"], x_int @ w + np.arange(8) * 1000)


def test_layernorm_output_quantizer_after_a_transpose():
    # Brevitas batch_first attention: LayerNorm -> Transpose -> the in-projection's input quantizer
    b = QuantBuilder("ln")
    x = b.input("x", (1, 3, 8), scale=0.05)
    y = b.op("onnx.LayerNormalization", [x, fconst(b, np.ones(8)), fconst(b, np.zeros(8))], {"axis": -1}, loc="/ln1")
    y = b.op("onnx.Transpose", [y], {"perm": [1, 0, 2]})
    b.output("y", b.quant(y, scale=0.03))
    m, ref = b.module, b.module.clone()
    lower_module(m)
    assert [op.name for op in m.ops() if op.dialect == "int"] == ["int.ilayernorm", "int.transpose"]
    x_int = np.random.default_rng(0).integers(-128, 128, (1, 3, 8))
    got = run(m, {"x": x_int})["y"]
    assert np.array_equal(got, ilayernorm(x_int, *layernorm_parameters(np.ones(8), np.zeros(8), 0.03, 0)
                                          ).transpose(1, 0, 2))


def test_scale_fold_through_a_slice_of_a_shared_accumulator():
    # the packed in-projection: q, k, v are Slices of one accumulator; only q is divided by sqrt(head_dim)
    b = QuantBuilder("qkv")
    x = b.input("x", (4, 8), scale=0.05)
    w = np.random.default_rng(3).integers(-100, 101, (8, 16))
    acc = b.op("onnx.MatMul", [x, b.qconst(w, b.qtype(0.01))])
    q = b.op("onnx.Reshape", [acc], {"shape": [4, 2, 8]})  # a shape op with a shared input: the fold's boundary
    k = b.op("onnx.Reshape", [acc], {"shape": [4, 16, 1]})
    b.output("q", b.quant(b.op("onnx.Div", [q, fconst(b, 2.0)], loc="/attn/Div"), scale=0.02))
    b.output("k", b.quant(k, scale=0.04))
    m, ref = b.module, b.module.clone()
    lower_module(m)
    assert not [op for op in m.ops() if op.dialect == "onnx"]
    x_f = np.random.default_rng(4).normal(0, 2, (4, 8)).astype(np.float32)
    want, got = run(ref, {"x": x_f}), run(m, {"x": quantize(x_f, 0.05)})
    assert np.abs(got["q"] - want["q"] / 0.02).max() <= 1 and np.abs(got["k"] - want["k"] / 0.04).max() <= 1
