"""quantize-before-moves: a quantizer behind Transpose/Reshape/... of a float op also quantizes the float op's result
directly (Brevitas' batch_first attention transposes the LayerNorm output before its quantizer)."""
import numpy as np

from qirc.lowering.dequant_push import push_dequants
from qirc.lowering.quantize_before_moves import QuantizeBeforeMoves
from qirc.lowering.requant_fusion import fuse_requants
from qirc.lowering.ranges import RangeAnalysis
from qirc.lowering.testing import QuantBuilder
from qirc.qir import interpreter
from qirc.qir.verifier import verify


def _names(m):
    return [op.name for op in m.ops() if op.dialect != "qir"]


def _float_op_transpose_reshape():
    b = QuantBuilder()
    x = b.input("x", (1, 6, 8), 0.05)
    y = b.op("onnx.Sigmoid", [x])  # any float op whose output only reaches a quantizer through moves
    t = b.op("onnx.Transpose", [y], {"perm": [1, 0, 2]})
    r = b.op("onnx.Reshape", [t], {"shape": [6, 8]})
    b.output("y", b.quant(r, 1 / 200, 3, rounding="add_round"))
    return b


def test_quantizer_is_repeated_before_the_moves_and_the_result_is_unchanged():
    b = _float_op_transpose_reshape()
    before = b.module.clone()
    QuantizeBeforeMoves().run(b.module)
    verify(b.module)
    assert _names(b.module) == ["quant.qcast", "quant.dcast", "onnx.Sigmoid", "quant.qcast", "quant.dcast",
                                "onnx.Transpose", "onnx.Reshape", "quant.qcast", "quant.dcast"]
    sigmoid = b.module.walk("onnx.Sigmoid")[0]
    assert [u.name for u in sigmoid.results[0].users] == ["quant.qcast"]
    early = sigmoid.results[0].users[0]
    assert early.attrs["rounding"] == "add_round" and early.results[0].type.quant.zero_point == 3
    for seed in range(3):
        inputs = interpreter.random_inputs(before, seed)
        np.testing.assert_array_equal(interpreter.run(b.module, inputs)["y"], interpreter.run(before, inputs)["y"])
    # the moves now read stored integers, and the second quantizer re-quantizes values already on its grid
    push_dequants(b.module)
    fuse_requants(b.module, RangeAnalysis())
    b.module.erase_dead()
    assert _names(b.module) == ["quant.qcast", "quant.dcast", "onnx.Sigmoid", "quant.qcast", "int.transpose",
                                "int.reshape", "quant.dcast"]


def test_moves_with_other_readers_or_of_dequantized_values_are_left_alone():
    b = QuantBuilder()
    x = b.input("x", (1, 6, 8), 0.05)
    y = b.op("onnx.Sigmoid", [x])
    t = b.op("onnx.Transpose", [y], {"perm": [1, 0, 2]})
    b.output("y", b.quant(t, 1 / 200))
    b.output("t", t)  # the transposed float value is read elsewhere too
    moved = b.op("onnx.Transpose", [x], {"perm": [1, 0, 2]})  # moves a dequantized value: nothing to gain
    b.output("z", b.quant(moved, 0.05))
    names = _names(b.module)
    QuantizeBeforeMoves().run(b.module)
    assert _names(b.module) == names
