"""The float transformer ops (onnx.LayerNormalization, Gelu, Gather, Slice) against onnxruntime with graph
optimisations disabled, on single-op models: the same op as an ONNX node (run by onnxruntime) and as a qir Module
built with the Module API.  Data movement bit for bit, arithmetic within a few float32 ulps of the output range."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

from qirc.qir.diagnostics import VerifyError
from qirc.qir.interpreter import run
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.types import f32, tensor
from qirc.qir.verifier import verify


def ort_single(op_type, x, consts, attrs, opset, extra_inputs=()):
    """Run one node on input `x` with constant inputs `consts` (name -> array, in input order)."""
    names = ["x"] + list(consts) + list(extra_inputs)
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    node = helper.make_node(op_type, names, ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def qir_single(op_name, x, consts, attrs, out_shape):
    m = Module("single")
    values = [input_op(m, "x", tensor(x.shape, f32))]
    values += [const_op(m, v, tensor(v.shape, f32)) for v in consts]
    y = m.create(op_name, values, [tensor(out_shape, f32)], attrs, loc="/op").result
    output_op(m, "y", y)
    verify(m)
    return run(m, {"x": x})["y"]


def rand(*shape, seed=0, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(np.float32)


def close(got, ref, ulps=8):
    assert got.dtype == np.float32 and got.shape == ref.shape
    scale = float(np.max(np.abs(ref)))
    np.testing.assert_allclose(got, ref, rtol=0, atol=ulps * np.finfo(np.float32).eps * scale)


@pytest.mark.parametrize("shape,axis,epsilon,bias", [
    ((2, 16, 64), -1, 1e-5, True),       # tokens x features, as in an encoder block
    ((1, 17, 64), 2, 1e-6, False),       # class token added, no bias
    ((3, 4, 5, 6), -2, 1e-3, True),      # normalise over the last two axes
])
def test_layer_normalization(shape, axis, epsilon, bias):
    norm = shape[axis:]
    x = rand(*shape, seed=1, scale=3, shift=0.5)
    consts = {"scale": rand(*norm, seed=2), **({"bias": rand(*norm, seed=3)} if bias else {})}
    ref = ort_single("LayerNormalization", x, consts, dict(axis=axis, epsilon=epsilon), 17)
    got = qir_single("onnx.LayerNormalization", x, list(consts.values()), dict(axis=axis, epsilon=epsilon),
                     ref.shape)
    close(got, ref)


def test_layer_normalization_of_a_constant_row_is_the_bias():
    # variance 0: only epsilon is left under the square root, (x - mean) is exactly 0
    x = np.full((1, 3, 8), 2.5, np.float32)
    scale, bias = rand(8, seed=4), rand(8, seed=5)
    ref = ort_single("LayerNormalization", x, {"s": scale, "b": bias}, dict(epsilon=1e-5), 17)
    got = qir_single("onnx.LayerNormalization", x, [scale, bias], dict(epsilon=1e-5), ref.shape)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got[0, 0], bias)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    x = np.concatenate([np.linspace(-8, 8, 1601), rand(499, seed=6, scale=3)]).astype(np.float32).reshape(1, -1)
    ref = ort_single("Gelu", x, {}, dict(approximate=approximate), 20)
    got = qir_single("onnx.Gelu", x, [], dict(approximate=approximate), ref.shape)
    close(got, ref, ulps=4)
    # the defining values: GELU(0) = 0, GELU(x) -> x for large x, -> 0 for very negative x
    assert got[0, 800] == 0 and abs(got[0, 0]) < 1e-6 and abs(got[0, 1600] - 8) < 1e-6


@pytest.mark.parametrize("index,axis", [(np.array(0, np.int64), 1), (np.array([0, 2], np.int64), 1),
                                        (np.array(-1, np.int64), 2)])
def test_gather(index, axis):
    x = rand(2, 5, 6, seed=7)
    ref = ort_single("Gather", x, {"i": index}, dict(axis=axis), 13)
    attrs = dict(axis=axis, indices=[int(i) for i in index.reshape(-1)], scalar=index.ndim == 0)
    got = qir_single("onnx.Gather", x, [], attrs, ref.shape)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("starts,ends,axes,steps", [([0], [1], [1], [1]), ([1, 2], [5, 6], [1, 2], [1, 2])])
def test_slice(starts, ends, axes, steps):
    x = rand(2, 5, 6, seed=8)
    consts = {n: np.array(v, np.int64) for n, v in zip(("s", "e", "a", "t"), (starts, ends, axes, steps))}
    ref = ort_single("Slice", x, consts, {}, 13)
    got = qir_single("onnx.Slice", x, [], dict(starts=starts, ends=ends, axes=axes, steps=steps), ref.shape)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("op_name,attrs,message", [
    ("onnx.Gather", dict(axis=1, indices=[7], scalar=True), "index 7 is out of range for axis 1 of size 5"),
    ("onnx.Slice", dict(starts=[3], ends=[2], axes=[1], steps=[1]), "0 <= start <= end <= 5"),
])
def test_bad_attributes_are_verify_errors(op_name, attrs, message):
    m = Module("bad")
    x = input_op(m, "x", tensor((2, 5, 6), f32))
    y = m.create(op_name, [x], [tensor((2, 6), f32)], attrs, loc="/bad").result
    output_op(m, "y", y)
    with pytest.raises(VerifyError, match=message):
        verify(m)
