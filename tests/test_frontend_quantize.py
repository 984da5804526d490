"""The ONNX frontend's quantization of constants (`patterns.quantize`): a quantizer of a constant becomes a qir.const
of the stored integers, which must be the integers onnxruntime computes -- float32 division, rounding half to even,
the zero point added after (QuantizeLinear) or before (decomposed QCDQ, QONNX) rounding, NaN to 0, saturation to the
storage range -- held in the storage dtype, for every storage type: int32 included, whose bounds float32 cannot hold
(2^31 - 1 rounds to 2^31), and 0-d constants, whose arithmetic gives numpy scalars."""
from __future__ import annotations

import numpy as np
import pytest

from qirc.frontends.onnx import import_onnx
from qirc.frontends.onnx.patterns import ADD_ROUND, ROUND_ADD, quantize, quantize_plan
from qirc.qir.types import ScalarType, UniformQuantType

F32 = np.float32


def reference(x, qtype: UniformQuantType, rounding: str) -> np.ndarray:
    """The definition, in the plainest numpy: float32 arithmetic, then NaN -> 0 and the clip in float64."""
    x = np.asarray(x, F32)
    rank = x.ndim
    scale = qtype.scales_for(rank).astype(F32)
    zp = qtype.zero_points_for(rank).astype(F32)
    with np.errstate(all="ignore"):
        q = np.rint(x / scale) + zp if rounding == ROUND_ADD else np.rint(x / scale + zp)
    q = np.nan_to_num(np.asarray(q, np.float64), nan=0.0)
    return np.clip(q, qtype.storage_min, qtype.storage_max).astype(np.int64)


TYPES = {
    "i8 narrow": UniformQuantType.per_tensor(ScalarType("i8"), 0.01, 0, -127, 127),
    "u8": UniformQuantType.per_tensor(ScalarType("u8"), 0.02, 128),
    "u8 <1:254>": UniformQuantType.per_tensor(ScalarType("u8"), 0.1, 3, 1, 254),
    "i16": UniformQuantType.per_tensor(ScalarType("i16"), 3e-3, -5),
    "u16": UniformQuantType.per_tensor(ScalarType("u16"), 1e-3, 7),
    "i32": UniformQuantType.per_tensor(ScalarType("i32"), 1e-4, 0),
    "i32 tiny scale": UniformQuantType.per_tensor(ScalarType("i32"), 1e-9, 3),
    "i8 per axis": UniformQuantType.per_axis(ScalarType("i8"), 0, [0.01, 0.02, 1e-7], [0, 1, -2]),
}
SPECIAL = [np.nan, np.inf, -np.inf, 0.5, -0.5, 1.5, -2.5, 3e38, -3e38]


# a per-axis type quantizes along axis 0 of size 3: a 0-d value has no such axis
CASES = [(name, shape) for name in TYPES for shape in [(), (3,), (3, 4), (3, 2, 2)]
         if not (TYPES[name].is_per_axis and shape == ())]


@pytest.mark.parametrize("rounding", [ADD_ROUND, ROUND_ADD])
@pytest.mark.parametrize("name,shape", CASES)
def test_quantize_computes_the_definition_in_the_storage_dtype(name, shape, rounding):
    qtype = TYPES[name]
    rng = np.random.default_rng(len(shape))
    cases = []
    for magnitude in (1e-3, 1.0, 1e3, 1e9, 1e30):
        x = (rng.standard_normal(shape) * magnitude).astype(F32)
        if x.size:
            x.reshape(-1)[rng.integers(0, x.size)] = rng.choice(SPECIAL)
        cases.append(x)
    cases += [np.full(shape, v, F32) for v in SPECIAL]
    for values in cases:
        with np.errstate(all="raise"):  # no warning escapes (an overflowing division saturates quietly)
            got = quantize(values, qtype, rounding)
            planned = quantize(values, qtype, rounding, quantize_plan(qtype, values.ndim))
        assert got.dtype == qtype.np_dtype and got.shape == values.shape
        np.testing.assert_array_equal(got.astype(np.int64), reference(values, qtype, rounding))
        np.testing.assert_array_equal(planned, got)


def test_int32_saturates_to_its_exact_bounds():
    qtype = TYPES["i32"]
    got = quantize(np.array([1e30, -1e30, np.inf, -np.inf], F32), qtype, ADD_ROUND)
    assert got.dtype == np.int32
    assert got.tolist() == [2 ** 31 - 1, -(2 ** 31), 2 ** 31 - 1, -(2 ** 31)]


def test_imported_quantized_constants_are_the_stored_integers_in_their_storage_dtype():
    """A decomposed-QCDQ model (float weights and their Div -> Add -> Round -> Clip -> Sub -> Mul quantizers, as
    DeepQuant writes) imports its weights and biases as qir.consts of exactly the integers they were written from,
    int8 weights and int32 biases."""
    from qirc.backends.onnx import write_onnx
    from qirc.lowering.testing import QuantBuilder

    rng = np.random.default_rng(0)
    weights = [rng.integers(-127, 128, (4, 4, 3, 3)) for _ in range(2)]
    biases = [rng.integers(-3000, 3000, 4) for _ in range(2)]
    b = QuantBuilder("chain")
    x = b.input("x", (1, 4, 5, 5), 1 / 64)
    for w, bias in zip(weights, biases):
        x = b.quant(b.conv(x, w, 0.01, bias=bias, pads=[1, 1, 1, 1]), 1 / 32)
    b.output("y", x)
    module = import_onnx(write_onnx(b.module, "qcdq"))
    consts = [op.attrs["value"] for op in module.walk("qir.const")]
    stored_weights = [v for v in consts if v.ndim == 4]
    stored_biases = [v for v in consts if v.ndim == 1]
    assert [v.dtype for v in stored_weights] == [np.dtype(np.int8)] * 2
    assert [v.dtype for v in stored_biases] == [np.dtype(np.int32)] * 2
    for got, want in zip(stored_weights, weights):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(stored_biases, biases):
        np.testing.assert_array_equal(got, want)


def test_a_quantized_weight_used_again_as_a_float_tensor_is_read_again_exactly():
    """A large float weight is released once its quantizer has computed the stored integers (it is held by protobuf
    anyway); a later float use of the same initializer reads it again: both constants are exact."""
    from qirc import _onnx as onnx
    from qirc._onnx import helper, numpy_helper

    n = 2048  # above RELEASE_ELEMENTS
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((1, n)) * 0.3).astype(F32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(0.01, F32), "s"),
             numpy_helper.from_array(np.array(0.0, F32), "z"), numpy_helper.from_array(np.array(-127.0, F32), "lo"),
             numpy_helper.from_array(np.array(127.0, F32), "hi")]
    nodes = [helper.make_node("Div", ["W", "s"], ["d"], name="q/Div"),
             helper.make_node("Add", ["d", "z"], ["a"], name="q/Add"),
             helper.make_node("Round", ["a"], ["r"], name="q/Round"),
             helper.make_node("Clip", ["r", "lo", "hi"], ["c"], name="q/Clip"),
             helper.make_node("Sub", ["c", "z"], ["u"], name="dq/Sub"),
             helper.make_node("Mul", ["u", "s"], ["wq"], name="dq/Mul"),
             helper.make_node("Add", ["x", "wq"], ["y1"], name="add_quantized"),
             helper.make_node("Add", ["y1", "W"], ["y"], name="add_float")]
    graph = helper.make_graph(nodes, "reuse", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    module = import_onnx(model)
    consts = {str(op.result.type.element): op.attrs["value"] for op in module.walk("qir.const")}
    stored = [v for t, v in consts.items() if t.startswith("!quant.uniform")]
    floats = [v for t, v in consts.items() if t == "f32"]
    assert len(stored) == 1 and len(floats) == 1
    assert stored[0].dtype == np.int8
    np.testing.assert_array_equal(stored[0], np.clip(np.rint(w / F32(0.01)), -127, 127).astype(np.int8))
    np.testing.assert_array_equal(floats[0], w)
