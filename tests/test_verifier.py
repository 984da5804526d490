"""The verifier: one test per rule.  Each builds a small valid module, breaks one thing, and checks that the error
names the op's location and the problem."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qirc.qir import shapes
from qirc.qir.diagnostics import VerifyError
from qirc.qir.ir import Module, Operation, const_op, input_op, output_op
from qirc.qir.types import UniformQuantType, f32, i8, i32, tensor, u8
from qirc.qir.verifier import verify

Q8 = UniformQuantType.per_tensor(i8, 0.05, 0)
U8 = UniformQuantType.per_tensor(u8, 0.02, 128)


def conv_attrs(**over):
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1], "dilations": [1, 1]}
    attrs.update(over)
    return attrs


def float_conv_module(out_shape=(1, 4, 8, 8), **attr_over):
    """input -> qcast -> dcast -> onnx.Conv(const weights) -> onnx.Relu -> output."""
    m = Module("t")
    x = input_op(m, "x", tensor([1, 3, 8, 8], f32))
    xq = m.create("quant.qcast", [x], [tensor([1, 3, 8, 8], Q8)], loc="/q").result
    xd = m.create("quant.dcast", [xq], [tensor([1, 3, 8, 8], f32)], loc="/dq").result
    w = const_op(m, np.ones((4, 3, 3, 3), np.float32), tensor([4, 3, 3, 3], f32), loc="/w")
    y = m.create("onnx.Conv", [xd, w], [tensor(out_shape, f32)], conv_attrs(**attr_over), loc="/conv1/Conv").result
    r = m.create("onnx.Relu", [y], [tensor(out_shape, f32)], loc="/relu").result
    output_op(m, "y", r)
    return m


def unary_module(op_name, in_shape, out_shape, attrs=None, elem=f32, out_elem=None, loc="/node"):
    """input -> one op -> output (an `int.*` op gets an integer input)."""
    m = Module("t")
    x = input_op(m, "x", tensor(in_shape, elem))
    y = m.create(op_name, [x], [tensor(out_shape, out_elem or elem)], attrs or {}, loc=loc).result
    output_op(m, "y", y)
    return m


def binary_module(op_name, a_shape, b_shape, out_shape, elem=f32, attrs=None):
    m = Module("t")
    a = input_op(m, "a", tensor(a_shape, elem))
    b = input_op(m, "b", tensor(b_shape, elem))
    y = m.create(op_name, [a, b], [tensor(out_shape, elem)], attrs or {}, loc="/node").result
    output_op(m, "y", y)
    return m


def requant_module(out_elem, mul=None, add=None, div=256, signed=True, n_levels=256, in_shape=(1, 4, 2, 2)):
    m = Module("t")
    x = input_op(m, "x", tensor(in_shape, i32))
    attrs = {"mul": np.array([3], np.int32) if mul is None else mul,
             "add": np.array([0], np.int32) if add is None else add,
             "div": div, "signed": signed, "n_levels": n_levels}
    y = m.create("int.requant_shift", [x], [tensor(in_shape, out_elem)], attrs, loc="/rq").result
    output_op(m, "y", y)
    return m


def assert_error(module, *fragments, loc="/node"):
    with pytest.raises(VerifyError) as info:
        verify(module)
    text = str(info.value)
    assert "\n" not in text
    if loc is not None:
        assert f"node '{loc}'" in text, text
    for f in fragments:
        assert f in text, text
    return text


# ----- the valid baseline --------------------------------------------------------------------------------------
def test_valid_module_passes():
    verify(float_conv_module())


# ----- declarations ------------------------------------------------------------------------------------------
def test_unknown_op():
    m = float_conv_module()
    x = m.inputs[0].result
    m.create("onnx.Convv", [x], [tensor([1, 3, 8, 8], f32)], loc="/typo")
    assert_error(m, "unknown op 'onnx.Convv'", "onnx.Conv", loc="/typo")


def test_operand_count():
    m = unary_module("onnx.Relu", [2, 3], [2, 3])
    relu = m.walk("onnx.Relu")[0]
    m.set_operands(relu, [relu.operands[0], relu.operands[0]])
    assert_error(m, "expects 1 operand(s) (X), got 2")


def test_optional_operand_count_range():
    m = float_conv_module()
    conv = m.walk("onnx.Conv")[0]
    m.set_operands(conv, [conv.operands[0]])
    assert_error(m, "expects 2 to 3 operand(s) (X, W, B?), got 1", loc="/conv1/Conv")


def test_unknown_attribute():
    m = float_conv_module(paddings=[1, 1, 1, 1])
    assert_error(m, "unknown attribute 'paddings'", loc="/conv1/Conv")


def test_wrong_attribute_kind():
    m = float_conv_module(strides=1)
    assert_error(m, "attribute 'strides': expected ints, got int", loc="/conv1/Conv")


def test_attribute_choice():
    m = float_conv_module()
    m.walk("quant.qcast")[0].attrs["rounding"] = "stochastic"
    assert_error(m, "attribute 'rounding'", "'round_add'", "'stochastic'", loc="/q")


def test_missing_required_attribute():
    m = float_conv_module()
    del m.walk("onnx.Conv")[0].attrs["pads"]
    assert_error(m, "missing required attribute 'pads'", loc="/conv1/Conv")


def test_result_count():
    m = Module("t")
    x = input_op(m, "x", tensor([2], f32))
    m.add(Operation("onnx.Relu", [x], [tensor([2], f32), tensor([2], f32)], loc="/node"))
    output_op(m, "y", x)
    assert_error(m, "expects 1 result(s), got 2")


# ----- shape rules ---------------------------------------------------------------------------------------------
def test_conv_output_shape_mismatch():
    m = float_conv_module(out_shape=(1, 4, 7, 8))
    assert_error(m, "result 0 has shape 1x4x7x8", "gives 1x4x8x8", loc="/conv1/Conv")


@pytest.mark.parametrize("attrs,spatial", [
    (dict(pads=[0, 0, 0, 0]), (6, 6)),
    (dict(strides=[2, 2]), (4, 4)),
    (dict(strides=[2, 3], pads=[0, 1, 0, 1]), (3, 3)),
    (dict(dilations=[2, 2], pads=[2, 2, 2, 2]), (8, 8)),
    (dict(dilations=[3, 1], pads=[0, 0, 0, 0]), (2, 6)),
])
def test_conv_output_sizes(attrs, spatial):
    verify(float_conv_module(out_shape=(1, 4) + spatial, **attrs))
    with pytest.raises(VerifyError, match="gives 1x4x" + "x".join(map(str, spatial))):
        verify(float_conv_module(out_shape=(1, 4, spatial[0] + 1, spatial[1]), **attrs))


def test_conv_channel_mismatch():
    m = Module("t")
    x = input_op(m, "x", tensor([1, 3, 8, 8], f32))
    w = const_op(m, np.ones((4, 2, 3, 3), np.float32), tensor([4, 2, 3, 3], f32))
    y = m.create("onnx.Conv", [x, w], [tensor([1, 4, 8, 8], f32)], conv_attrs(), loc="/node").result
    output_op(m, "y", y)
    assert_error(m, "weight 4x2x3x3 takes 2 input channels (group 1), input 1x3x8x8 has 3")


def test_conv_depthwise_group_and_bias():
    m = Module("t")
    x = input_op(m, "x", tensor([1, 4, 8, 8], i8))
    w = const_op(m, np.ones((4, 1, 3, 3), np.int8), tensor([4, 1, 3, 3], i8))
    b = const_op(m, np.zeros((3,), np.int32), tensor([3], i32))
    y = m.create("int.conv", [x, w, b], [tensor([1, 4, 8, 8], i32)], conv_attrs(group=4), loc="/node").result
    output_op(m, "y", y)
    assert_error(m, "bias 3 must have shape 4")


def test_conv_kernel_larger_than_input():
    m = float_conv_module(out_shape=(1, 4, 1, 1), kernel_shape=[3, 3], pads=[0, 0, 0, 0], dilations=[5, 5])
    assert_error(m, "kernel 3 (dilation 5) is larger than the padded input 8", loc="/conv1/Conv")


@pytest.mark.parametrize("op_name", ["onnx.MaxPool", "onnx.AveragePool", "int.maxpool", "int.sumpool"])
def test_pool_ceil_mode_output_size(op_name):
    # 4 wide, kernel 2, stride 2, end pad 1: ceil gives 3 windows, but the last would start in the padding and
    # onnxruntime drops it -> 2 (checked against onnxruntime in test_pool_sizes_match_onnxruntime)
    elem = f32 if op_name.startswith("onnx") else i32
    attrs = {"kernel_shape": [2], "pads": [0, 1], "strides": [2], "ceil_mode": 1}
    verify(unary_module(op_name, [1, 1, 4], [1, 1, 2], attrs, elem=elem))
    assert_error(unary_module(op_name, [1, 1, 4], [1, 1, 3], attrs, elem=elem), "gives 1x1x2")
    # 5 wide, no pads: floor gives 2 windows, ceil 3 (the last starts at 4, inside the input, so it stays)
    attrs["pads"] = [0, 0]
    verify(unary_module(op_name, [1, 1, 5], [1, 1, 3], attrs, elem=elem))
    attrs["ceil_mode"] = 0
    verify(unary_module(op_name, [1, 1, 5], [1, 1, 2], attrs, elem=elem))


def test_pool_pad_not_smaller_than_kernel():
    attrs = {"kernel_shape": [2, 2], "pads": [2, 0, 0, 0], "strides": [1, 1]}
    assert_error(unary_module("onnx.MaxPool", [1, 1, 4, 4], [1, 1, 5, 3], attrs), "must be smaller than the kernel")


def test_pool_sizes_match_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper
    from qirc.qir.shapes import pool_shape

    cases = [(4, 2, 2, [0, 1], 1), (5, 2, 2, [0, 0], 1), (6, 3, 3, [1, 1], 1), (5, 2, 3, [1, 1], 1),
             (7, 3, 2, [1, 1], 0), (9, 3, 3, [0, 2], 1), (10, 4, 3, [1, 2], 1)]
    for n, k, s, pads, ceil in cases:
        node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k], strides=[s], pads=pads, ceil_mode=ceil)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, n])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": np.zeros((1, 1, n), np.float32)})[0].shape
        m = unary_module("onnx.MaxPool", [1, 1, n], [1, 1, 1],
                         {"kernel_shape": [k], "pads": pads, "strides": [s], "ceil_mode": ceil})
        assert tuple(pool_shape(m.walk("onnx.MaxPool")[0])[0]) == got, (n, k, s, pads, ceil)


def test_gemm_inner_dimension():
    verify(binary_module("onnx.Gemm", [2, 5], [3, 5], [2, 3], attrs={"transB": 1}))
    assert_error(binary_module("onnx.Gemm", [2, 5], [3, 5], [2, 3]), "inner dimensions differ: A' is 2x5, B' is 3x5")


def test_matmul_batch_broadcast():
    verify(binary_module("onnx.MatMul", [4, 1, 2, 3], [5, 3, 7], [4, 5, 2, 7]))
    verify(binary_module("onnx.MatMul", [3], [3, 7], [7]))
    assert_error(binary_module("onnx.MatMul", [2, 3], [4, 7], [2, 7]), "inner dimensions differ: 2x3 and 4x7")


def test_broadcasting():
    verify(binary_module("onnx.Add", [1, 4, 1, 1], [4, 3, 5], [1, 4, 3, 5]))
    assert_error(binary_module("onnx.Add", [1, 4, 2], [3, 2], [1, 4, 2]), "shapes 1x4x2, 3x2 do not broadcast")
    assert_error(binary_module("onnx.Mul", [1, 4, 2], [4, 1], [1, 4, 1]), "gives 1x4x2")


def test_reduction_axes_and_keepdims():
    verify(unary_module("onnx.ReduceMean", [1, 4, 3, 3], [1, 4, 1, 1], {"axes": [2, -1], "keepdims": 1}))
    verify(unary_module("onnx.ReduceSum", [1, 4, 3, 3], [1, 4], {"axes": [2, 3], "keepdims": 0}))
    assert_error(unary_module("onnx.ReduceMean", [1, 4, 3, 3], [1, 4, 1, 1], {"axes": [2, 3], "keepdims": 0}),
                 "gives 1x4")
    assert_error(unary_module("onnx.ReduceMean", [1, 4, 3, 3], [1, 4, 1, 1], {"axes": [4]}),
                 "reduction axis 4 is out of range for rank 4")


def test_reshape_size_equality():
    verify(unary_module("onnx.Reshape", [1, 4, 2, 2], [1, 16], {"shape": [1, 16]}))
    assert_error(unary_module("onnx.Reshape", [1, 4, 2, 2], [1, 15], {"shape": [1, 15]}),
                 "reshape from 1x4x2x2 (16 elements) to 1x15 (15 elements) changes the element count")
    assert_error(unary_module("onnx.Reshape", [1, 4, 2, 2], [1, 16], {"shape": [1, -1]}), "must be resolved")


def test_transpose_perm():
    verify(unary_module("onnx.Transpose", [1, 2, 3], [3, 1, 2], {"perm": [2, 0, 1]}))
    assert_error(unary_module("onnx.Transpose", [1, 2, 3], [3, 1, 2], {"perm": [2, 0, 0]}),
                 "perm [2, 0, 0] is not a permutation of the 3 axes of 1x2x3")


def test_concat_shapes():
    verify(binary_module("onnx.Concat", [1, 2, 4], [1, 3, 4], [1, 5, 4], attrs={"axis": 1}))
    assert_error(binary_module("onnx.Concat", [1, 2, 4], [1, 3, 5], [1, 5, 4], attrs={"axis": 1}),
                 "differ outside axis 1")
    assert_error(binary_module("onnx.Concat", [1, 2, 4], [1, 3, 4], [1, 5, 4], attrs={"axis": 3}),
                 "axis 3 is out of range for rank 3")


def test_pad_shape():
    verify(unary_module("onnx.Pad", [1, 2, 3, 3], [1, 2, 5, 6], {"pads": [0, 0, 1, 1, 0, 0, 1, 2]}))
    assert_error(unary_module("onnx.Pad", [1, 2, 3, 3], [1, 2, 5, 6], {"pads": [1, 1, 1, 2]}),
                 "pads has 4 entries, expected 8")
    assert_error(unary_module("int.pad", [1, 2, 3, 3], [1, 2, 5, 5], {"pads": [0, 0, 1, 1, 0, 0, 1, 2]}, elem=i8),
                 "gives 1x2x5x6")


def test_squeeze_unsqueeze():
    verify(unary_module("onnx.Squeeze", [1, 4, 1, 1], [1, 4], {"axes": [2, 3]}))
    assert_error(unary_module("onnx.Squeeze", [1, 4, 1, 1], [1, 1, 1], {"axes": [1]}),
                 "cannot squeeze axis 1 of 1x4x1x1: its size is 4")
    verify(unary_module("onnx.Unsqueeze", [4, 3], [1, 4, 1, 3], {"axes": [0, -2]}))
    assert_error(unary_module("onnx.Unsqueeze", [4, 3], [4, 3, 1], {"axes": [0]}), "gives 1x4x3")


def test_flatten():
    verify(unary_module("onnx.Flatten", [2, 3, 4, 5], [6, 20], {"axis": 2}))
    assert_error(unary_module("onnx.Flatten", [2, 3, 4, 5], [2, 60], {"axis": 2}), "gives 6x20")
    assert_error(unary_module("onnx.Flatten", [2, 3], [6, 1], {"axis": 3}), "axis 3 is out of range for rank 2")


def test_casts_preserve_shape():
    m = unary_module("quant.qcast", [2, 3], [3, 2], elem=f32, out_elem=Q8)
    assert_error(m, "result 0 has shape 3x2", "gives 2x3")


def test_requant_shift_shape_and_broadcast():
    verify(requant_module(Q8, mul=np.full((4, 1, 1), 3, np.int32), add=np.zeros((4, 1, 1), np.int32)))
    assert_error(requant_module(Q8, mul=np.full((3, 1, 1), 3, np.int32)),
                 "mul of shape 3x1x1 does not broadcast against the input 1x4x2x2", loc="/rq")
    assert_error(requant_module(Q8, add=np.zeros((1, 1, 4, 2, 2), np.int32)), "add of shape 1x1x4x2x2", loc="/rq")


# ----- element rules -------------------------------------------------------------------------------------------
def test_onnx_ops_take_floats():
    assert_error(unary_module("onnx.Relu", [2, 3], [2, 3], elem=i8),
                 "operand 0 must be a float tensor, got an integer tensor<2x3xi8>")


def test_qcast_float_to_quant():
    verify(unary_module("quant.qcast", [2], [2], out_elem=Q8))
    assert_error(unary_module("quant.qcast", [2], [2], elem=f32, out_elem=i8),
                 "result must be a quantized tensor, got an integer tensor<2xi8>")
    assert_error(unary_module("quant.qcast", [2], [2], elem=Q8, out_elem=Q8), "operand must be a float tensor")


def test_dcast_quant_to_float():
    verify(unary_module("quant.dcast", [2], [2], elem=Q8, out_elem=f32))
    assert_error(unary_module("quant.dcast", [2], [2], elem=i8, out_elem=f32),
                 "operand must be a quantized tensor, got an integer tensor<2xi8>")
    assert_error(unary_module("quant.dcast", [2], [2], elem=Q8, out_elem=Q8), "result must be a float tensor")


def test_int_ops_take_integers():
    verify(binary_module("int.add", [2, 3], [3], [2, 3], elem=i32))
    assert_error(binary_module("int.add", [2, 3], [3], [2, 3], elem=f32),
                 "operand 0 must be an integer or quantized tensor, got a float tensor<2x3xf32>")


def test_requant_shift_output_storage_matches_signed_and_levels():
    verify(requant_module(Q8))
    verify(requant_module(U8, signed=False))
    assert_error(requant_module(U8, signed=True), "output range -128..127 (signed=1, n_levels=256) does not fit "
                 "the result storage 0..255", loc="/rq")
    assert_error(requant_module(Q8, signed=False), "output range 0..255", loc="/rq")
    verify(requant_module(tensor([1], i8).element, signed=True, n_levels=16))


def test_requant_shift_div_power_of_two():
    assert_error(requant_module(Q8, div=96), "div 96 must be a positive power of two", loc="/rq")
    assert_error(requant_module(Q8, mul=np.array([1.5])), "mul must hold integers", loc="/rq")


def test_int_clip_bounds():
    verify(unary_module("int.clip", [4], [4], {"min": 0, "max": 100}, elem=i8))
    assert_error(unary_module("int.clip", [4], [4], {"min": 5, "max": 1}, elem=i8), "min 5 is greater than max 1")


def test_int_pad_value_in_storage():
    attrs = {"pads": [1, 1], "value": 200}
    assert_error(unary_module("int.pad", [4], [6], attrs, elem=i8), "pad value 200 is outside the result storage")
    verify(unary_module("int.pad", [4], [6], attrs, elem=U8))


# ----- quant types ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.0, -0.5, math.inf, math.nan])
def test_scale_positive_and_finite(scale):
    bad = UniformQuantType.per_tensor(i8, scale, 0)
    assert_error(unary_module("quant.qcast", [2], [2], out_elem=bad), "must be positive and finite")


def test_zero_point_inside_storage_range():
    bad = UniformQuantType.per_tensor(i8, 0.1, 128)
    assert_error(unary_module("quant.qcast", [2], [2], out_elem=bad), "zero point 128 is outside the storage "
                 "range -128..127")
    narrow = UniformQuantType.per_tensor(i8, 0.1, -128, storage_min=-127, storage_max=127)
    assert_error(unary_module("quant.qcast", [2], [2], out_elem=narrow), "zero point -128 is outside")


def test_storage_range_order_and_bounds():
    swapped = UniformQuantType.per_tensor(i8, 0.1, 0, storage_min=5, storage_max=-5)
    assert_error(unary_module("quant.qcast", [2], [2], out_elem=swapped),
                 "storage_min 5 is greater than storage_max -5")
    wide = UniformQuantType.per_tensor(i8, 0.1, 0, storage_min=-200, storage_max=127)
    assert_error(unary_module("quant.qcast", [2], [2], out_elem=wide),
                 "storage range -200..127 exceeds the range -128..127 of i8")


def test_per_axis_axis_and_scale_count():
    ok = UniformQuantType.per_axis(i8, 1, [0.1, 0.2, 0.3])
    verify(unary_module("quant.qcast", [2, 3], [2, 3], out_elem=ok))
    bad_axis = UniformQuantType.per_axis(i8, 2, [0.1, 0.2, 0.3])
    assert_error(unary_module("quant.qcast", [2, 3], [2, 3], out_elem=bad_axis),
                 "quantization axis 2 is out of range for rank 2")
    bad_count = UniformQuantType.per_axis(i8, 0, [0.1, 0.2, 0.3])
    assert_error(unary_module("quant.qcast", [2, 3], [2, 3], out_elem=bad_count),
                 "3 per-axis scale(s) for axis 0 of size 2")


# ----- constants -----------------------------------------------------------------------------------------------
def const_module(value, t):
    m = Module("t")
    c = const_op(m, value, t, loc="/node")
    output_op(m, "y", c)
    return m


def test_const_value_shape():
    verify(const_module(np.zeros((2, 3), np.int8), tensor([2, 3], Q8)))
    assert_error(const_module(np.zeros((3, 2), np.int8), tensor([2, 3], Q8)),
                 "value shape 3x2 does not match the result shape 2x3")


def test_const_dtype_matches_storage():
    assert_error(const_module(np.zeros((2,), np.int32), tensor([2], Q8)),
                 "value dtype int32 does not match the storage type i8")
    assert_error(const_module(np.zeros((2,), np.float64), tensor([2], f32)), "value dtype float64")


def test_const_values_inside_narrow_range():
    narrow = UniformQuantType.per_tensor(i8, 0.1, 0, storage_min=-127, storage_max=127)
    assert_error(const_module(np.array([-128, 3], np.int8), tensor([2], narrow)),
                 "values -128..3 exceed the storage range -127..127")


# ----- module structure ----------------------------------------------------------------------------------------
def test_dangling_value():
    other = Module("other")
    stray = input_op(other, "stray", tensor([2, 3], f32))
    m = unary_module("onnx.Relu", [2, 3], [2, 3])
    m.walk("onnx.Relu")[0].operands[0] = stray  # bypasses Module.set_operand, as a buggy pass might
    assert_error(m, "operand 0 (%stray) is dangling", "not in the module")


def test_unlinked_operand():
    m = binary_module("onnx.Add", [2], [2], [2])
    add = m.walk("onnx.Add")[0]
    add.operands[1] = add.operands[0]
    assert_error(m, "operand 1 (%a) is not linked in the module graph")


def test_cycle():
    m = Module("t")
    x = input_op(m, "x", tensor([2], f32))
    a = m.create("onnx.Relu", [x], [tensor([2], f32)], loc="/a")
    b = m.create("onnx.Relu", [a.result], [tensor([2], f32)], loc="/b")
    m.set_operand(a, 0, b.result)
    output_op(m, "y", b.result)
    text = assert_error(m, "ops form a cycle", loc=None)
    assert "onnx.Relu (/a)" in text and "onnx.Relu (/b)" in text


def test_duplicate_input_names():
    m = binary_module("onnx.Add", [2], [2], [2])
    m.inputs[1].attrs["name"] = "a"
    assert_error(m, "duplicate graph input name 'a'", loc="b")


def test_duplicate_output_names():
    m = binary_module("onnx.Add", [2], [2], [2])
    output_op(m, "y", m.inputs[0].result, loc="/second_y")
    assert_error(m, "duplicate graph output name 'y'", loc="/second_y")


def test_at_least_one_output():
    m = Module("empty")
    input_op(m, "x", tensor([2], f32))
    with pytest.raises(VerifyError, match="module @empty has no qir.output"):
        verify(m)


def test_error_without_location_names_the_value():
    m = unary_module("onnx.Relu", [2, 3], [2, 3], loc="")
    relu = m.walk("onnx.Relu")[0]
    relu.results[0].name = "r"
    relu.attrs["bogus"] = 1
    assert_error(m, "unknown attribute 'bogus'", loc="%r")


# ----- shape rules against numpy and onnxruntime -----------------------------------------------------------------
small_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple)


def _op(name, shapes_in, attrs=None):
    """An unattached op whose operands have the given shapes (the rules read only types and attributes)."""
    m = Module("t")
    vals = [input_op(m, f"x{i}", tensor(s, f32)) for i, s in enumerate(shapes_in)]
    return m.create(name, vals, [tensor([1], f32)], attrs or {}, loc="/n")


@settings(max_examples=60, deadline=None)
@given(small_shapes, small_shapes)
def test_broadcast_rule_matches_numpy(a, b):
    try:
        expected = np.broadcast_shapes(a, b)
    except ValueError:
        with pytest.raises(shapes.ShapeProblem):
            shapes.broadcast(a, b)
        return
    assert shapes.broadcast(a, b) == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=4), st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_matmul_rule_matches_numpy(a, b):
    try:
        expected = np.matmul(np.zeros(a), np.zeros(b)).shape
    except ValueError:
        with pytest.raises(shapes.ShapeProblem):
            shapes.matmul_shape(_op("onnx.MatMul", [a, b]))
        return
    assert shapes.matmul_shape(_op("onnx.MatMul", [a, b])) == [expected]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple), st.data())
def test_data_movement_rules_match_numpy(x, data):
    rank = len(x)
    arr = np.zeros(x)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), unique_by=lambda a: a % rank, max_size=rank))
    keep = data.draw(st.booleans())
    got = shapes.reduce_shape(_op("onnx.ReduceSum", [x], {"axes": axes, "keepdims": int(keep)}))[0]
    assert got == arr.sum(axis=tuple(axes) if axes else None, keepdims=keep).shape
    perm = data.draw(st.permutations(range(rank)))
    assert shapes.transpose_shape(_op("onnx.Transpose", [x], {"perm": list(perm)}))[0] == arr.transpose(perm).shape
    axis = data.draw(st.integers(0, rank))
    assert shapes.flatten_shape(_op("onnx.Flatten", [x], {"axis": axis}))[0] == arr.reshape(
        int(np.prod(x[:axis])), -1).shape
    cat_axis = data.draw(st.integers(-rank, rank - 1))
    other = list(x)
    other[cat_axis] = data.draw(st.integers(1, 3))
    got = shapes.concat_shape(_op("onnx.Concat", [x, tuple(other)], {"axis": cat_axis}))[0]
    assert got == np.concatenate([arr, np.zeros(other)], axis=cat_axis).shape


def test_conv_rule_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    checked = 0
    while checked < 12:
        size = [int(v) for v in rng.integers(3, 12, 2)]
        k = [int(v) for v in rng.integers(1, 4, 2)]
        s = [int(v) for v in rng.integers(1, 4, 2)]
        d = [int(v) for v in rng.integers(1, 3, 2)]
        p = [int(v) for v in rng.integers(0, 3, 4)]
        attrs = {"kernel_shape": k, "strides": s, "dilations": d, "pads": p}
        m = Module("t")
        x = input_op(m, "x", tensor([1, 2] + size, f32))
        w = const_op(m, np.zeros([3, 2] + k, np.float32), tensor([3, 2] + k, f32))
        op = m.create("onnx.Conv", [x, w], [tensor([1], f32)], attrs, loc="/c")
        try:
            ours = shapes.conv_shape(op)[0]
        except shapes.ShapeProblem:
            continue  # kernel larger than the padded input: onnxruntime rejects it as well
        node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2] + size)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [helper.make_tensor("w", TensorProto.FLOAT, [3, 2] + k, np.zeros(3 * 2 * k[0] * k[1]))])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": np.zeros([1, 2] + size, np.float32)})[0].shape
        assert tuple(ours) == got, attrs
        checked += 1
