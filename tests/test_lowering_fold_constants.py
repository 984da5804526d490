"""fold-constants: ops on constants become constants; quantized weights stay behind their dcast."""
import numpy as np

from qirc.lowering import lower_module
from qirc.lowering.fold_constants import FoldConstants
from qirc.lowering.testing import QuantBuilder
from qirc.qir.ir import const_op
from qirc.qir.passes import translation_validate
from qirc.qir.types import TensorType, f32
from qirc.qir.verifier import verify


def test_float_weights_quantized_and_transposed_at_compile_time():
    rng = np.random.default_rng(0)
    b = QuantBuilder()
    x = b.input("x", (2, 6), 0.05)
    w_float = const_op(b.module, rng.normal(0, 0.3, (6, 4)).astype(np.float32), TensorType((6, 4), f32), "/w")
    wt = b.op("onnx.Transpose", [w_float], {"perm": [1, 0]})
    w = b.quant(wt, 0.01)  # QDQ-style weights: QuantizeLinear on a float initializer
    y = b.op("onnx.Gemm", [x, w], {"transB": 1})
    b.output("y", b.quant(y, 0.05))
    before = b.module.clone()
    FoldConstants().run(b.module)
    verify(b.module)
    names = [op.name for op in b.module.ops()]
    assert "onnx.Transpose" not in names and names.count("quant.qcast") == 2
    w_const = b.module.walk("onnx.Gemm")[0].operands[1].owner.operands[0].owner
    assert w_const.name == "qir.const" and w_const.attrs["value"].dtype == np.int8
    assert w_const.results[0].type.shape == (4, 6)
    assert translation_validate(before, b.module)[0]["max_abs_diff"] == 0.0
    lower_module(b.module)
    assert {op.dialect for op in b.module.ops()} == {"qir", "int"}


def test_quantized_weight_dcast_is_kept():
    b = QuantBuilder()
    x = b.input("x", (1, 3), 0.1)
    w = b.qconst(np.array([[1, -2, 3]]), b.qtype(0.5))
    b.output("y", b.op("onnx.Gemm", [x, w], {"transB": 1}))
    FoldConstants().run(b.module)
    assert len(b.module.walk("quant.dcast")) == 2


def test_transposed_quantized_weights_of_a_bias_free_linear_are_folded():
    """Brevitas' QuantLinear(bias=False) exports MatMul(x, Transpose(DequantizeLinear(W))): the transpose moves into
    the stored integers (the per-channel axis follows), so dequant-push finds dcast(const) and MatMul lowers
    ("op onnx.MatMul could not be lowered" before)."""
    rng = np.random.default_rng(1)
    b = QuantBuilder()
    x = b.input("x", (1, 16), 0.05)
    w = b.qconst(rng.integers(-127, 128, (12, 16)), b.qtype(rng.uniform(0.005, 0.02, 12), axis=0))
    wt = b.op("onnx.Transpose", [w], {"perm": [1, 0]})
    b.output("y", b.quant(b.op("onnx.MatMul", [x, wt]), 0.1))
    before = b.module.clone()
    FoldConstants().run(b.module)
    verify(b.module)
    assert [op.name for op in b.module.ops()] == ["qir.input", "quant.qcast", "quant.dcast", "qir.const", "quant.dcast",
                                                  "onnx.MatMul", "quant.qcast", "quant.dcast", "qir.output"]
    w_t = b.module.walk("onnx.MatMul")[0].operands[1].owner.operands[0]
    assert w_t.type.shape == (16, 12) and w_t.type.quant.axis == 1
    assert translation_validate(before, b.module)[0]["max_abs_diff"] == 0.0
    lower_module(b.module)
    assert [op.name for op in b.module.ops() if op.name != "qir.const"] == ["qir.input", "int.matmul",
                                                                            "int.requant_shift", "qir.output"]


def test_reshape_that_splits_the_channel_axis_of_quantized_weights_stays():
    b = QuantBuilder()
    w = b.qconst(np.arange(24).reshape(6, 4) - 12, b.qtype(np.linspace(0.01, 0.02, 6), axis=0))
    r = b.op("onnx.Reshape", [w], {"shape": [3, 8]})
    b.output("y", r)
    FoldConstants().run(b.module)
    assert b.module.walk("onnx.Reshape")
