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
