"""onnx.* kernels against onnxruntime (graph optimisations disabled) on single-op models.

Each case builds the same op twice: as an ONNX model with onnx.helper (run by onnxruntime) and as a qir Module built
with the Module API (constant ONNX inputs such as Reshape's shape become attributes, as the frontend does), then
compares the float32 results: selection and data-movement ops bit for bit, arithmetic within 1e-5 relative.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

from qirc.qir.diagnostics import InterpretError
from qirc.qir.interpreter import KERNELS, random_inputs, run
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.ops import OPS, load_dialects
from qirc.qir.types import f32, tensor

OPSET = 17


@dataclass
class X:
    """A runtime input (graph input / qir.input)."""
    value: np.ndarray


@dataclass
class W:
    """A constant operand (initializer / qir.const)."""
    value: np.ndarray


@dataclass
class A:
    """A constant ONNX input that the IR carries as an attribute (initializer on the ONNX side only)."""
    value: np.ndarray


ABSENT = None  # an omitted optional ONNX input


def ort_run(op_type, operands, attrs):
    inputs, inits, names, feeds = [], [], [], {}
    for i, o in enumerate(operands):
        if o is ABSENT:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if isinstance(o, X):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, o.value.shape))
            feeds[name] = o.value
        else:
            inits.append(numpy_helper.from_array(o.value, name))
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node(op_type, names, ["out"], **attrs)
    graph = helper.make_graph([node], "single_op", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                                                           None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def qir_run(op_type, operands, qir_attrs, out_shape):
    m = Module("single_op")
    values, feeds = [], {}
    for i, o in enumerate(operands):
        if isinstance(o, X):
            values.append(input_op(m, f"in{i}", tensor(o.value.shape, f32)))
            feeds[f"in{i}"] = o.value
        elif isinstance(o, W):
            values.append(const_op(m, o.value, tensor(o.value.shape, f32)))
    y = m.create(f"onnx.{op_type}", values, [tensor(out_shape, f32)], qir_attrs, loc=f"/{op_type}").result
    output_op(m, "out", y)
    return run(m, feeds)["out"]


def check(op_type, operands, onnx_attrs=None, qir_attrs=None, exact=False, rtol=1e-5):
    onnx_attrs = dict(onnx_attrs or {})
    qir_attrs = dict(onnx_attrs if qir_attrs is None else qir_attrs)
    ref = ort_run(op_type, operands, onnx_attrs)
    got = qir_run(op_type, operands, qir_attrs, ref.shape)
    assert got.dtype == np.float32
    assert got.shape == ref.shape
    if exact:
        np.testing.assert_array_equal(got, ref)
    else:
        scale = float(np.max(np.abs(ref))) if ref.size else 1.0
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * max(scale, 1e-30))


def rand(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ----- Conv ------------------------------------------------------------------------------------------------------
CONV_CASES = [
    # x shape, w shape, attrs, bias
    ((1, 3, 9, 9), (8, 3, 3, 3), dict(pads=[1, 1, 1, 1]), True),
    ((2, 4, 8, 7), (6, 4, 3, 2), dict(strides=[2, 1], pads=[0, 1, 2, 0]), False),
    ((1, 4, 10, 10), (4, 2, 3, 3), dict(group=2, dilations=[2, 2], pads=[2, 2, 2, 2]), True),
    ((1, 8, 7, 7), (8, 1, 3, 3), dict(group=8, pads=[1, 1, 1, 1], strides=[2, 2]), True),  # depthwise
    ((1, 4, 6, 6), (8, 1, 3, 3), dict(group=4, pads=[1, 0, 1, 0]), False),  # depthwise, multiplier 2
    ((1, 1, 49, 10), (16, 1, 10, 4), dict(strides=[2, 2], pads=[5, 1, 4, 2]), True),  # DS-CNN-like stem
    ((2, 3, 11), (5, 3, 4), dict(strides=[3], pads=[1, 2]), True),  # 1-D
]


@pytest.mark.parametrize("xs,ws,attrs,bias", CONV_CASES)
def test_conv(xs, ws, attrs, bias):
    kernel_shape = list(ws[2:])
    n = len(kernel_shape)
    full = dict(kernel_shape=kernel_shape, pads=[0] * 2 * n, strides=[1] * n, dilations=[1] * n, group=1)
    full.update(attrs)
    operands = [X(rand(*xs, seed=1)), W(rand(*ws, seed=2))] + ([W(rand(ws[0], seed=3))] if bias else [])
    check("Conv", operands, full)


def test_conv_without_optional_attributes_uses_onnx_defaults():
    # pads/strides/dilations omitted: ONNX defaults (zeros, ones) and kernel_shape from the weights
    check("Conv", [X(rand(1, 2, 5, 5)), W(rand(3, 2, 3, 3, seed=4))], {}, qir_attrs={})


# ----- Gemm / MatMul ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ta,tb,alpha,beta,c_shape", [
    (0, 0, 1.0, 1.0, None), (0, 1, 1.0, 1.0, (7,)), (1, 0, 0.5, 2.0, (5, 7)), (1, 1, 1.5, 0.25, (1, 7)),
])
def test_gemm(ta, tb, alpha, beta, c_shape):
    a = rand(*((33, 5) if ta else (5, 33)), seed=5)
    b = rand(*((7, 33) if tb else (33, 7)), seed=6)
    ops = [X(a), W(b)] + ([W(rand(*c_shape, seed=7))] if c_shape else [])
    check("Gemm", ops, dict(transA=ta, transB=tb, alpha=alpha, beta=beta))


@pytest.mark.parametrize("a_shape,b_shape", [((4, 6), (6, 3)), ((2, 4, 6), (6, 5)), ((3, 1, 4, 6), (2, 6, 2)),
                                             ((6,), (6, 3))])
def test_matmul(a_shape, b_shape):
    check("MatMul", [X(rand(*a_shape, seed=8)), W(rand(*b_shape, seed=9))])


# ----- elementwise -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("a_shape,b_shape,b_const", [((2, 3, 4), (2, 3, 4), False), ((2, 3, 4), (4,), True),
                                                     ((1, 3, 1, 1), (2, 1, 5, 1), False), ((3, 4), (), True)])
def test_binary(op_type, a_shape, b_shape, b_const):
    b = rand(*b_shape, seed=11) if b_shape else np.array(0.37, dtype=np.float32)
    check(op_type, [X(rand(*a_shape, seed=10)), W(b) if b_const else X(b)], exact=op_type in ("Add", "Sub", "Mul"))


def test_relu():
    check("Relu", [X(rand(2, 3, 4, 5))], exact=True)


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.75), (0.0, 6.0), (None, 1.0), (-1.0, None)])
def test_clip(lo, hi):
    operands = [X(rand(3, 50, scale=3))]
    attrs = {}
    operands.append(A(np.array(lo, np.float32)) if lo is not None else ABSENT)
    operands.append(A(np.array(hi, np.float32)) if hi is not None else ABSENT)
    if lo is not None:
        attrs["min"] = lo
    if hi is not None:
        attrs["max"] = hi
    check("Clip", operands, {}, qir_attrs=attrs, exact=True)


def test_round_half_to_even():
    x = np.concatenate([np.arange(-5.5, 6.0, 0.5), rand(40, scale=10)]).astype(np.float32)
    check("Round", [X(x)], exact=True)
    m_ties = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], np.float32)
    assert qir_run("Round", [X(m_ties)], {}, m_ties.shape).tolist() == [-2, -2, -0, 0, 2, 2]


def test_sigmoid_matches_mlas_approximation():
    # onnxruntime's Sigmoid is MLAS's rational approximation, not 1/(1+exp(-x)): they differ by up to 2 ulp of 0.5
    # on most inputs; the kernel must agree elementwise (a stray double-rounding ulp at most)
    x = np.concatenate([np.linspace(-25, 25, 20001), rand(1000, scale=5)]).astype(np.float32)
    ref = ort_run("Sigmoid", [X(x)], {})
    got = qir_run("Sigmoid", [X(x)], {}, ref.shape)
    diff = np.abs(got - ref)
    assert diff.max() <= 2.0 ** -23
    assert np.count_nonzero(diff) <= 2


# ----- pooling ---------------------------------------------------------------------------------------------------
POOL_CASES = [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    dict(kernel_shape=[2, 3], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1),
    dict(kernel_shape=[3, 2], strides=[3, 1], pads=[2, 0, 2, 1], ceil_mode=1),  # a ceil window dropped by ORT
    dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
]


@pytest.mark.parametrize("attrs", POOL_CASES)
def test_maxpool(attrs):
    full = dict(pads=[0, 0, 0, 0], strides=[1, 1], ceil_mode=0)
    full.update(attrs)
    check("MaxPool", [X(rand(2, 3, 9, 8, seed=12))], full, exact=True)


def test_maxpool_dilations_and_negative_inputs():
    # all-negative input: a zero-padded maximum would be wrong
    x = -np.abs(rand(1, 2, 9, 9, seed=13)) - 1
    check("MaxPool", [X(x)], dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2], strides=[1, 1]),
          exact=True)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("attrs", POOL_CASES)
def test_averagepool(attrs, count_include_pad):
    full = dict(pads=[0, 0, 0, 0], strides=[1, 1], ceil_mode=0, count_include_pad=count_include_pad)
    full.update(attrs)
    check("AveragePool", [X(rand(2, 3, 9, 8, seed=14))], full)


@pytest.mark.parametrize("op_type", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (1, 4, 9)])
def test_global_pool(op_type, shape):
    check(op_type, [X(rand(*shape, seed=15))], exact=op_type == "GlobalMaxPool")


# ----- reductions ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axes,keepdims", [([2, 3], 1), ([1], 0), ([-1], 1), ([0, 2], 0)])
def test_reduce_mean(axes, keepdims):
    check("ReduceMean", [X(rand(2, 3, 5, 7, seed=16))], dict(axes=axes, keepdims=keepdims))


@pytest.mark.parametrize("axes,keepdims", [([2, 3], 1), ([1], 0), ([-2], 1)])
def test_reduce_sum(axes, keepdims):
    check("ReduceSum", [X(rand(2, 3, 5, 7, seed=17)), A(np.array(axes, np.int64))], dict(keepdims=keepdims),
          qir_attrs=dict(axes=axes, keepdims=keepdims))


# ----- data movement ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_flatten(axis):
    check("Flatten", [X(rand(2, 3, 4, 5))], dict(axis=axis), exact=True)


@pytest.mark.parametrize("shape", [[6, 20], [2, 3, 20], [1, 120]])
def test_reshape(shape):
    check("Reshape", [X(rand(2, 3, 4, 5)), A(np.array(shape, np.int64))], {}, qir_attrs=dict(shape=shape), exact=True)


@pytest.mark.parametrize("axes", [[1], [1, 3], [-1]])
def test_squeeze(axes):
    check("Squeeze", [X(rand(2, 1, 3, 1)), A(np.array(axes, np.int64))], {}, qir_attrs=dict(axes=axes), exact=True)


@pytest.mark.parametrize("axes", [[0], [1, 3], [-1]])
def test_unsqueeze(axes):
    check("Unsqueeze", [X(rand(2, 3)), A(np.array(axes, np.int64))], {}, qir_attrs=dict(axes=axes), exact=True)


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [3, 2, 1, 0], [1, 0, 2, 3]])
def test_transpose(perm):
    check("Transpose", [X(rand(2, 3, 4, 5))], dict(perm=perm), exact=True)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    a, b = rand(2, 3, 4, seed=18), rand(2, 3, 4, seed=19)
    check("Concat", [X(a), X(b), W(rand(2, 3, 4, seed=20))], dict(axis=axis), exact=True)


@pytest.mark.parametrize("mode,pads,value", [
    ("constant", [0, 0, 1, 2, 0, 0, 3, 0], 0.0), ("constant", [0, 1, 1, 1, 0, 0, 1, 1], -1.5),
    ("edge", [0, 0, 2, 1, 0, 0, 1, 3], 0.0), ("reflect", [0, 0, 2, 1, 0, 0, 1, 3], 0.0),
    ("constant", [0, 0, -1, 1, 0, 0, 2, -2], 0.5),
])
def test_pad(mode, pads, value):
    operands = [X(rand(2, 3, 5, 6, seed=21)), A(np.array(pads, np.int64)), A(np.array(value, np.float32))]
    check("Pad", operands, dict(mode=mode), qir_attrs=dict(mode=mode, pads=pads, value=value), exact=True)


# ----- normalisation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("epsilon", [1e-5, 1e-3])
def test_batch_normalization(epsilon):
    c = 6
    rng = np.random.default_rng(22)
    params = [rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32),
              rng.standard_normal(c).astype(np.float32), rng.uniform(0.1, 2.0, c).astype(np.float32)]
    check("BatchNormalization", [X(rand(2, c, 5, 5, seed=23))] + [W(p) for p in params], dict(epsilon=epsilon))


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_softmax(axis):
    check("Softmax", [X(rand(3, 10, 4, scale=4, seed=24))], dict(axis=axis))


# ----- coverage and errors ---------------------------------------------------------------------------------------
def test_every_declared_op_has_a_kernel():
    load_dialects()
    assert OPS, "no ops declared"
    assert sorted(set(OPS) - set(KERNELS)) == []


def test_kernel_failure_is_a_located_interpret_error():
    m = Module("bad")
    x = input_op(m, "x", tensor((2, 6), f32))
    y = m.create("onnx.Reshape", [x], [tensor((5, 3), f32)], {"shape": [5, 3]}, loc="/bad/Reshape").result
    output_op(m, "y", y)
    with pytest.raises(InterpretError) as e:
        run(m, {"x": np.zeros((2, 6), np.float32)})
    assert "/bad/Reshape" in str(e.value) and "onnx.Reshape" in str(e.value)


# ----- real exporter output --------------------------------------------------------------------------------------
from real_models import deepquant_params, example_params  # noqa: E402


@pytest.mark.parametrize("path", deepquant_params() + example_params(slow=("mobilenetv2-vww",)))
def test_corpus_model_matches_onnxruntime(path):
    """The imported quant-level module interpreted on seeded inputs (which saturate the input quantizer) and on the
    corpus reference input gives onnxruntime's output on the file itself; only Conv/Gemm summation order may differ,
    which can move a value lying on a rounding tie by one output step."""
    frontend = pytest.importorskip("qirc.frontends.onnx")
    module = frontend.import_onnx(str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = [random_inputs(module, seed=0)]
    if (path.parent / "reference.npz").exists():
        feeds.append({module.input_names()[0]: np.load(path.parent / "reference.npz")["input"]})
    out_value = module.outputs[0].operands[0]
    step = out_value.owner.operands[0].type.element.scale if out_value.owner.name == "quant.dcast" else None
    for inputs in feeds:
        ref = session.run(None, {session.get_inputs()[0].name: next(iter(inputs.values()))})[0]
        got = next(iter(run(module, inputs).values()))
        assert got.shape == ref.shape and got.dtype == np.float32
        if step is None:
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(ref))))
        else:
            steps = np.rint(np.abs(got - ref) / np.float32(step))
            assert steps.max() <= 1 and np.count_nonzero(steps) <= max(1, ref.size // 100)
