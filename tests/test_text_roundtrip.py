"""Printing and parsing the textual IR: the canonical text, print -> parse -> print fixed point, bit-exact constants."""
from __future__ import annotations

import os
import math
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qirc.qir.diagnostics import ParseError
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.ops import DIALECTS, OPS, bool_, dense, dialect, float_, floats, int_, ints, str_, type_
from qirc.qir.parser import parse_module, parse_type
from qirc.qir.printer import print_order, print_module, print_op, value_names
from qirc.qir.types import (ScalarType, TensorType, UniformQuantType, f32, i8, i32, i64, scalar_from_numpy,
                            tensor)

from strategies import default_op_names, modules, quant_types, tensor_types

# QIRC_FUZZ_EXAMPLES=5000 pytest tests/test_text_roundtrip.py runs a much longer search.
SETTINGS = settings(max_examples=int(os.environ.get("QIRC_FUZZ_EXAMPLES", 150)), deadline=timedelta(seconds=5),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def roundtrip(module: Module) -> tuple[str, Module]:
    text = print_module(module)
    parsed = parse_module(text)
    assert print_module(parsed) == text
    return text, parsed


def assert_same_constants(a: Module, b: Module) -> None:
    """Every attribute of every op comes back equal; arrays bit for bit in the same dtype and shape.  `b` was
    parsed from `a`'s text, so its ops come in `a`'s print order."""
    for op_a, op_b in zip(print_order(a), b.ops(), strict=True):
        assert op_a.name == op_b.name and op_a.loc == op_b.loc
        assert [str(r.type) for r in op_a.results] == [str(r.type) for r in op_b.results]
        assert sorted(op_a.attrs) == sorted(op_b.attrs)
        for key, va in op_a.attrs.items():
            vb = op_b.attrs[key]
            if isinstance(va, np.ndarray):
                assert vb.dtype == va.dtype and vb.shape == va.shape
                assert vb.tobytes() == np.ascontiguousarray(va).tobytes()
            elif isinstance(va, float) and math.isnan(va):
                assert math.isnan(vb)
            elif isinstance(va, (list, tuple)):
                assert len(va) == len(vb)
                assert all((x == y) or (x != x and y != y) for x, y in zip(va, vb))
            else:
                assert va == vb or str(va) == str(vb)


def example_module() -> Module:
    m = Module("resnet8")
    x = input_op(m, "input", tensor((1, 3, 32, 32), UniformQuantType.per_tensor(i8, 0.0078125, 0)))
    w = const_op(m, np.arange(-81, 81, dtype=np.int8).reshape(6, 3, 3, 3), tensor((6, 3, 3, 3), i8),
                 loc="/conv1/weight", name="w0")
    c = m.create("int.conv", [x, w], [tensor((1, 6, 32, 32), i32)],
                 {"strides": [1, 1], "pads": [1, 1, 1, 1], "kernel_shape": [3, 3], "dilations": [1, 1], "group": 1},
                 loc="/conv1/Conv").result
    out_t = tensor((1, 6, 32, 32), UniformQuantType.per_tensor(i8, 0.0039, 0))
    r = m.create("int.requant_shift", [c], [out_t],
                 {"mul": np.array([3, 5, 7, 9, 11, 13], dtype=np.int64).reshape(6, 1, 1),
                  "add": np.zeros((6, 1, 1), dtype=np.int64), "div": 65536, "n_levels": 256, "signed": True},
                 loc="/relu").result
    output_op(m, "output", r)
    return m


EXPECTED_EXAMPLE = """\
qir.module @resnet8 {
  %input = qir.input "input" : tensor<1x3x32x32x!quant.uniform<i8:f32, 0.0078125:0>>  loc("input")
  %w0 = qir.const dense<"0x%s"> : tensor<6x3x3x3xi8>  loc("/conv1/weight")
  %%0 = int.conv %%input, %%w0 {dilations = [1, 1], group = 1, kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [1, 1]} : tensor<1x6x32x32xi32>  loc("/conv1/Conv")
  %%1 = int.requant_shift %%0 {add = dense<0> : tensor<6x1x1xi64>, div = 65536, mul = dense<[3, 5, 7, 9, 11, 13]> : tensor<6x1x1xi64>, n_levels = 256, signed = true} : tensor<1x6x32x32x!quant.uniform<i8:f32, 0.0039:0>>  loc("/relu")
  qir.output "output" %%1  loc("output")
}
""".replace("%%", "%")


def test_example_prints_exactly():
    weights = np.arange(-81, 81, dtype=np.int8).tobytes().hex().upper()
    assert print_module(example_module()) == EXPECTED_EXAMPLE.replace("%s", weights)


def test_example_roundtrips_and_keeps_names_and_locations():
    m = example_module()
    text, parsed = roundtrip(m)
    assert_same_constants(m, parsed)
    assert parsed.name == "resnet8"
    assert parsed.input_names() == ["input"] and parsed.output_names() == ["output"]
    assert [r.name for op in parsed.ops() for r in op.results] == ["input", "w0", None, None]
    conv = parsed.walk("int.conv")[0]
    assert conv.loc == "/conv1/Conv" and conv.operands[1].owner.attrs["value"].dtype == np.int8


def test_elided_dump_is_readable_but_not_parseable():
    text = print_module(example_module(), elide_constants=True)
    assert 'qir.const dense_resource<__elided__> : tensor<6x3x3x3xi8>' in text
    assert "mul = dense<[3, 5, 7, 9, 11, 13]>" in text  # 6 elements: not elided
    with pytest.raises(ParseError) as info:
        parse_module(text)
    assert "constant elided; cannot parse an --elide-constants dump" in str(info.value)
    assert info.value.line == 3


@pytest.mark.parametrize("text", [
    "tensor<1x3x32x32xf32>",
    "tensor<f32>",
    "tensor<0x5xi1>",
    "tensor<1x16x32x32x!quant.uniform<i8:f32, 0.0078125:0>>",
    "tensor<1x16x!quant.uniform<u8:f32, 0.0039:-128>>",
    "tensor<16x3x!quant.uniform<i8<-127:127>:f32:0, {0.012:0, 0.009:0, 1e-05:3, 5e-324:-1, 1.7976931348623157e+308:0}>>",
    "tensor<4x!quant.uniform<i16<-100:100>:f64, 2.5:7>>",
    "tensor<!quant.uniform<i32:f32:0, {}>>",
])
def test_parse_type_reads_what_str_prints(text):
    t = parse_type(text)
    assert isinstance(t, TensorType)
    assert str(t) == text


def test_parse_type_values():
    t = parse_type("tensor<16x3x3x3x!quant.uniform<i8<-127:127>:f32:0, {0.012:0, 0.009:-2}>>")
    q = t.quant
    assert t.shape == (16, 3, 3, 3) and q.axis == 0 and q.scales == (0.012, 0.009) and q.zero_points == (0, -2)
    assert (q.storage_min, q.storage_max, q.narrow) == (-127, 127, True)
    assert parse_type("tensor<f32>").shape == ()


@given(tensor_types())
@SETTINGS
def test_random_types_roundtrip(t):
    assert parse_type(str(t)) == t


@given(quant_types())
@SETTINGS
def test_random_quant_types_roundtrip(q):
    t = TensorType((2,), q)
    assert parse_type(str(t)) == t


@pytest.mark.parametrize("dtype,element", [
    ("float32", "f32"), ("float16", "f16"), ("float64", "f64"), ("int8", "i8"), ("int16", "i16"), ("int32", "i32"),
    ("int64", "i64"), ("uint8", "u8"), ("uint16", "u16"), ("uint32", "u32"), ("uint64", "u64"), ("bool", "i1"),
])
def test_dense_dtype_roundtrips(dtype, element):
    m = Module("m")
    x = input_op(m, "x", tensor((40,), i32))
    rng = np.random.default_rng(0)
    for shape in [(), (3,), (2, 20)]:
        size = int(np.prod(shape))
        raw = rng.integers(0, 256, size * np.dtype(dtype).itemsize, dtype=np.uint8).tobytes()
        value = np.frombuffer(raw, dtype=dtype).reshape(shape) if dtype != "bool" else \
            (np.frombuffer(raw, dtype=np.uint8) % 2).astype(bool).reshape(shape)
        m.create("int.requant_shift", [x], [tensor((40,), i8)],
                 {"mul": value, "add": value, "div": 1}, loc=f"rq{shape}")
        const_op(m, value, tensor(shape, ScalarType(element)))
    text, parsed = roundtrip(m)
    assert f"xi{element[1:]}>" in text or f"x{element}>" in text
    assert_same_constants(m, parsed)


def test_special_floats_are_bit_exact():
    m = Module("m")
    payload_nan = np.array([0x7FC00001, 0xFFC00000, 0x7F800001], dtype=np.uint32).view(np.float32)
    values = np.concatenate([np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45], dtype=np.float32), payload_nan])
    const_op(m, values, tensor(values.shape, f32), name="special")
    half = np.array([-0.0, np.nan, 65504], dtype=np.float16)
    const_op(m, half, tensor((3,), ScalarType("f16")))
    _, parsed = roundtrip(m)
    got = parsed.ops()[0].attrs["value"]
    assert got.dtype == np.float32 and got.view(np.uint32).tolist() == values.view(np.uint32).tolist()
    assert parsed.ops()[1].attrs["value"].view(np.uint16).tolist() == half.view(np.uint16).tolist()


def test_small_integer_arrays_print_as_lists_and_large_as_hex():
    m = Module("m")
    const_op(m, np.arange(16, dtype=np.int32), tensor((16,), i32), name="small")
    const_op(m, np.arange(17, dtype=np.int32), tensor((17,), i32), name="large")
    const_op(m, np.array(-7, dtype=np.int64), tensor((), i64), name="scalar")
    const_op(m, np.array([1.0], dtype=np.float32), tensor((1,), f32), name="float")
    text, _ = roundtrip(m)
    assert "%small = qir.const dense<[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]> : tensor<16xi32>" in text
    assert '%large = qir.const dense<"0x0000000001000000' in text
    assert "%scalar = qir.const dense<-7> : tensor<i64>" in text  # one element: a splat
    assert '%float = qir.const dense<1.0> : tensor<1xf32>' in text


def test_quant_constant_uses_storage_dtype():
    m = Module("m")
    q = UniformQuantType.per_axis(i8, 0, [0.5, 0.25], storage_min=-127, storage_max=127)
    const_op(m, np.array([[-127, 5], [3, 127]], dtype=np.int8), tensor((2, 2), q))
    text, parsed = roundtrip(m)
    assert "qir.const dense<[-127, 5, 3, 127]> : tensor<2x2x!quant.uniform<i8<-127:127>:f32:0, {0.5:0, 0.25:0}>>" \
        in text
    assert parsed.ops()[0].attrs["value"].dtype == np.int8


def test_constant_not_in_its_storage_dtype_prints_generically():
    m = Module("m")
    # int64 values in an i8 tensor: the short form would change the dtype, so the attribute is spelled out
    const_op(m, np.array([1, -1], dtype=np.int64), tensor((2,), i8), name="c")
    text, parsed = roundtrip(m)
    assert "%c = qir.const {value = dense<[1, -1]> : tensor<2xi64>} : tensor<2xi8>" in text
    assert parsed.ops()[0].attrs["value"].dtype == np.int64


def test_value_names_invalid_or_duplicate_become_numbers():
    m = Module("m")
    a = input_op(m, "in put", tensor((2,), f32))             # input_op sanitises: %in_put
    b = m.create("onnx.Relu", [a], [tensor((2,), f32)], result_names=["x"]).result
    c = m.create("onnx.Relu", [b], [tensor((2,), f32)], result_names=["x"]).result   # duplicate
    d = m.create("onnx.Relu", [c], [tensor((2,), f32)], result_names=["1x"]).result  # not an identifier
    e = m.create("onnx.Relu", [d], [tensor((2,), f32)], result_names=["0"]).result   # a number is not a name
    output_op(m, "y", e)
    names = value_names(m)
    assert [names[v] for v in (a, b, c, d, e)] == ["%in_put", "%x", "%0", "%1", "%2"]
    text, parsed = roundtrip(m)
    assert "%0 = onnx.Relu %x : tensor<2xf32>" in text
    assert [r.name for op in parsed.ops() for r in op.results] == ["in_put", "x", None, None, None]


def test_multiple_results_syntax():
    name = "qirtest_multi.split"
    d = dialect("qirtest_multi", "test only")
    d.op("split", "test op with any number of results", operands=["x"], results=("y*",))
    try:
        m = Module("m")
        x = input_op(m, "x", tensor((4,), f32))
        op = m.create(name, [x], [tensor((2,), f32), tensor((2,), i8)], result_names=["lo", None])
        output_op(m, "a", op.results[0])
        output_op(m, "b", op.results[1])
        text, parsed = roundtrip(m)
        assert "%lo, %0 = qirtest_multi.split %x : tensor<2xf32>, tensor<2xi8>" in text
        assert len(parsed.walk(name)[0].results) == 2
    finally:
        OPS.pop(name, None)
        DIALECTS.pop("qirtest_multi", None)


def test_locations_and_names_are_escaped():
    m = Module('we"ird name')
    x = input_op(m, 'in"put\\', tensor((1,), f32), loc='line1\nline2 "q" \\ é')
    output_op(m, "out\t", x, loc="")
    text, parsed = roundtrip(m)
    assert text.splitlines()[0] == 'qir.module @"we\\"ird name" {'
    assert 'loc("line1\\nline2 \\"q\\" \\\\ \\u00e9")' in text
    assert len(text.splitlines()) == 4  # every op on one line
    assert parsed.name == 'we"ird name'
    assert parsed.inputs[0].loc == 'line1\nline2 "q" \\ é'
    assert parsed.input_names() == ['in"put\\'] and parsed.output_names() == ["out\t"]
    assert parsed.outputs[0].loc == "out\t"


def test_float_attributes_always_look_like_floats():
    m = Module("m")
    a = input_op(m, "a", tensor((2, 2), f32))
    m.create("onnx.Gemm", [a, a], [tensor((2, 2), f32)], {"alpha": 2, "beta": float("inf")}, loc="g1")
    m.create("onnx.Clip", [a], [tensor((2, 2), f32)], {"min": float("-inf"), "max": 6.0}, loc="c")
    m.create("onnx.Pad", [a], [tensor((2, 2), f32)], {"pads": [0, 0, 0, 0], "value": float("nan"), "mode": "edge"})
    text, parsed = roundtrip(m)
    assert "{alpha = 2.0, beta = inf}" in text
    assert "{max = 6.0, min = -inf}" in text
    assert '{mode = "edge", pads = [0, 0, 0, 0], value = nan}' in text
    assert parsed.walk("onnx.Gemm")[0].attrs["alpha"] == 2.0
    assert isinstance(parsed.walk("onnx.Gemm")[0].attrs["alpha"], float)


def test_print_op_for_a_single_op():
    m = example_module()
    conv = m.walk("int.conv")[0]
    line = print_op(conv, value_names(m))
    assert line.startswith("%0 = int.conv %input, %w0 {dilations = [1, 1]")
    assert print_op(conv).startswith("%? = int.conv %input, %w0 {")


def test_parse_accepts_comments_and_free_layout():
    text = """
    // a comment
    qir.module @m {   // trailing comment
      %x = qir.input "x"
           : tensor<2x!quant.uniform<i8:f32,   0.5:0>>
      %y = int.clip %x {max = 3,
                        min = -3} : tensor<2xi8>  loc( "c" )
      qir.output "y" %y
    }
    """
    m = parse_module(text)
    assert [op.name for op in m.ops()] == ["qir.input", "int.clip", "qir.output"]
    assert m.walk("int.clip")[0].attrs == {"max": 3, "min": -3}
    assert m.walk("int.clip")[0].loc == "c"
    assert m.inputs[0].results[0].type.quant.scale == 0.5


def test_parse_accepts_bytes():
    assert parse_module(b"qir.module @m {\n}\n").name == "m"


def test_parse_keeps_text_order_for_independent_ops():
    text = "\n".join(["qir.module @m {"] + [f'  %v{i} = qir.input "i{i}" : tensor<f32>' for i in range(30)] +
                     [f'  qir.output "o{i}" %v{29 - i}' for i in range(30)] + ["}", ""])
    m = parse_module(text)
    assert print_module(m) == text
    assert m.input_names() == [f"i{i}" for i in range(30)]


# ----- properties --------------------------------------------------------------------------------------------------
@given(modules())
@SETTINGS
def test_random_modules_fixed_point_and_bit_exact(module):
    _, parsed = roundtrip(module)
    assert_same_constants(module, parsed)


@given(modules(max_ops=5))
@SETTINGS
def test_random_modules_elided_dump(module):
    full = print_module(module)
    elided = print_module(module, elide_constants=True)
    assert len(elided.splitlines()) == len(full.splitlines())  # one op per line in both
    if "dense_resource<__elided__>" in elided:
        with pytest.raises(ParseError, match="constant elided"):
            parse_module(elided)


@pytest.fixture(scope="module")
def all_kinds_op():
    """A temporary op with one attribute of every kind (the built-in dialects have no `floats` or `type`
    attribute); removed again so that no other test sees it."""
    d = dialect("qirtest", "test only")
    d.op("all_kinds", "one attribute of each kind", operands=["x*"], attrs={
        "i": int_(0), "f": float_(0.0), "b": bool_(False), "s": str_(""), "is": ints([]), "fs": floats([]),
        "d": dense(None), "t": type_(None), "choice": str_("a", choices=("a", "b\"c"))})
    yield "qirtest.all_kinds"
    OPS.pop("qirtest.all_kinds", None)
    DIALECTS.pop("qirtest", None)


@given(data=st.data())
@SETTINGS
def test_random_modules_with_every_attribute_kind(all_kinds_op, data):
    module = data.draw(modules(op_names=(all_kinds_op, "int.conv", "quant.qcast")))
    _, parsed = roundtrip(module)
    assert_same_constants(module, parsed)


def test_default_op_names_cover_every_builtin_op():
    names = set(default_op_names())
    assert {"int.conv", "int.requant_shift", "onnx.Conv", "quant.qcast", "quant.dcast"} <= names
    assert not names & {"qir.input", "qir.output", "qir.const"}


from real_models import deepquant_params, example_params  # noqa: E402


@pytest.mark.parametrize("path", deepquant_params() + example_params())
def test_corpus_models_roundtrip(path):
    """Every real model (shipped DeepQuant output, zoo examples), as imported, prints to text that parses back to
    itself bit for bit."""
    onnx_frontend = pytest.importorskip("qirc.frontends.onnx")
    module = onnx_frontend.import_onnx(str(path))
    text, parsed = roundtrip(module)
    assert_same_constants(module, parsed)
    assert len(parsed) == len(module) and text.count("\n") == len(module) + 2, path


# ----- readability: splats, elided per-channel scales, line length --------------------------------------------------
@pytest.mark.parametrize("array, literal", [
    (np.zeros((64,), np.int32), "dense<0>"),
    (np.full((2, 3), -128, np.int8), "dense<-128>"),
    (np.full((4,), 0.0078125, np.float32), "dense<0.0078125>"),
    (np.full((3,), -0.0, np.float32), "dense<-0.0>"),
    (np.full((2,), np.inf, np.float32), "dense<inf>"),
    (np.full((5,), 1 / 3, np.float64), f"dense<{1 / 3!r}>"),
    (np.full((2,), 0.1, np.float16), "dense<0.0999755859375>"),
], ids=["i32-zero", "i8", "f32", "f32-negative-zero", "f32-inf", "f64", "f16"])
def test_splat_constants_print_as_one_value_and_parse_back_bit_for_bit(array, literal):
    m = Module("m")
    element = scalar_from_numpy(array.dtype)
    const_op(m, array, tensor(array.shape, element), name="c")
    text, parsed = roundtrip(m)
    assert f"%c = qir.const {literal} : {tensor(array.shape, element)}" in text
    got = parsed.ops()[0].attrs["value"]
    assert got.dtype == array.dtype and got.shape == array.shape and got.tobytes() == array.tobytes()


def test_arrays_that_are_not_splats_keep_their_bytes():
    m = Module("m")
    const_op(m, np.array([0.0, -0.0], np.float32), tensor((2,), f32), name="zeros")  # equal, not the same bits
    const_op(m, np.full((2,), np.nan, np.float32), tensor((2,), f32), name="nan")
    const_op(m, np.array([1, 1, 2], np.int8), tensor((3,), i8), name="ints")
    text, parsed = roundtrip(m)
    assert '%zeros = qir.const dense<"0x0000000000000080">' in text
    assert '%nan = qir.const dense<"0x' in text
    assert "%ints = qir.const dense<[1, 1, 2]>" in text
    assert_same_constants(m, parsed)


@pytest.mark.parametrize("text, message", [
    ("%c = qir.const dense<1.5> : tensor<4xi8>", "a splat of i8 needs an integer"),
    ("%c = qir.const dense<300> : tensor<2xi8>", "300 does not fit i8"),
])
def test_bad_splats_are_parse_errors(text, message):
    with pytest.raises(ParseError, match=message):
        parse_module("qir.module @m {\n  " + text + "\n}\n")


def _per_channel_module(channels: int) -> Module:
    m = Module("m")
    scales = [0.001 * (k + 1) / 3 for k in range(channels)]
    q = UniformQuantType.per_axis(i8, 0, scales, storage_min=-127, storage_max=127)
    const_op(m, (np.arange(channels * 4) % 5 - 2).astype(np.int8).reshape(channels, 4), tensor((channels, 4), q),
             name="w")
    return m


def test_elided_dump_summarises_per_channel_scales_of_more_than_eight_channels():
    many = print_module(_per_channel_module(64), elide_constants=True)
    assert ("%w = qir.const dense_resource<__elided__> : tensor<64x4x!quant.uniform<i8<-127:127>:f32:0, "
            "{64 channels: scales 0.000333333..0.0213333, zero point 0}>>") in many
    few = print_module(_per_channel_module(8), elide_constants=True)
    assert "{0.000333333:0, 0.000666667:0, 0.001:0, " in few and "channels" not in few
    full = print_module(_per_channel_module(64))
    # the parseable text keeps them all
    assert full.split("f32:0, {", 1)[1].count(":0") == 64 and "channels" not in full


def test_elided_lists_and_long_locations_keep_lines_short():
    from qirc.qir.printer import MAX_ELIDED_LINE

    m = Module("m")
    x = input_op(m, "x", tensor((1, 64), i8))
    y = m.create("int.reshape", [x], [tensor((1, 64), i8)], {"shape": list(range(1, 41))},
                 loc="/a/very/long/exporter/path/" * 12 + "Reshape").results[0]
    output_op(m, "y", y)
    text = print_module(m, elide_constants=True)
    line = next(line for line in text.splitlines() if "int.reshape" in line)
    assert "shape = [1, 2, 3, 4, ... 40 in all]" in line
    assert len(line) <= MAX_ELIDED_LINE and 'loc("...' in line and line.endswith('/Reshape")')
    assert "/a/very/long/exporter/path/" * 12 in print_module(m)  # only the reading copy shortens it


def _assert_short_lines_when_elided(module):
    import qirc.lowering  # noqa: F401  (registers the passes)
    from qirc.qir.passes import PassManager, parse_pipeline

    for stage in ("imported", "lowered"):
        if stage == "lowered":
            PassManager(parse_pipeline("lower-to-int{signed-normalize=1}")).run(module)
        text = print_module(module, elide_constants=True)
        longest = max(text.splitlines(), key=len)
        assert len(longest) <= 300, f"{stage}: {longest}"


@pytest.mark.parametrize("path", example_params(slow=("mobilenetv2-vww",)))
def test_elided_real_models_have_no_line_over_300_characters(path):
    """The zoo examples, imported and lowered (per-tensor weights), read at most 300 characters a line."""
    from qirc.frontends.onnx import import_onnx

    _assert_short_lines_when_elided(import_onnx(str(path)))


@pytest.mark.brevitas
@pytest.mark.slow
def test_elided_per_channel_model_has_no_line_over_300_characters(tmp_path):
    """DS-CNN S with per-channel weights: 64-channel scale lists on every conv and accumulator."""
    pytest.importorskip("brevitas")
    from qirc.frontends.onnx import import_onnx
    from qirc.zoo import zoo_build

    path = zoo_build("dscnn-s", tmp_path, per_channel=True, progress=False)
    module = import_onnx(str(path))
    assert "{64 channels: scales " in print_module(module, elide_constants=True)
    _assert_short_lines_when_elided(module)
