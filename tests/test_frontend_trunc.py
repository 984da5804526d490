"""QONNX `Trunc` (Brevitas TruncAvgPool's requantizer) in the ONNX frontend.

The frontend spells Trunc as  quant.qcast (onto the input grid, i32)  ->  an exact integer shift (int.requant_shift,
plus a parity correction for ROUND, which is half to even)  ->  quant.dcast.  The interpreter on the imported IR must
equal onnxruntime on `qonnx_as_standard_onnx(model)` exactly, ties included, for every rounding mode, signedness,
range, shift and zero point; bad Trunc nodes are one-line FrontendErrors naming the node.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import brevitas_models as bm  # noqa: E402  (no torch needed for the QONNX rewrite and onnxruntime helpers)
from qirc.frontends.onnx import import_onnx  # noqa: E402
from qirc.frontends.onnx.patterns import shift_round  # noqa: E402
from qirc.qir.diagnostics import FrontendError  # noqa: E402
from qirc.qir.interpreter import run, run_values  # noqa: E402
from qirc.qir.parser import parse_module  # noqa: E402
from qirc.qir.printer import print_module  # noqa: E402
from qirc.qir.verifier import verify  # noqa: E402

QONNX = "qonnx.custom_op.general"
SHAPE = (2, 3, 8, 8)
S_Q = 0.05  # the input quantizer's scale


def trunc_model(rounding="ROUND", k=2, bits=8, signed=0, narrow=0, zero_point=0.0, pool=False, n_inputs=6,
                scale=None, out_scale=None, out_zero_point=None, x_const=None, in_bits=12.0):
    """input -> Quant(S_Q, int8) [-> AveragePool 2x2] -> Trunc -> output.

    Without the pool the Trunc's grid is the quantizer's (scale S_Q): every input integer in -128..127 is reachable,
    so every remainder mod 2^k (every tie) occurs.  With it the grid is S_Q / 4, the pool's sum."""
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (
        ("s_q", S_Q), ("z0", 0.0), ("b8", 8.0), ("z", zero_point), ("b_in", in_bits), ("b_out", float(bits)))]
    grid = S_Q / 4 if pool else S_Q
    scale = np.float32(grid) if scale is None else np.asarray(scale, np.float32)
    out_scale = np.float32(scale * 2.0 ** k) if out_scale is None else np.asarray(out_scale, np.float32)
    inits += [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
              numpy_helper.from_array(np.asarray(out_scale, np.float32), "s_out")]
    nodes = []
    if x_const is None:
        graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)]
        nodes.append(helper.make_node("Quant", ["x", "s_q", "z0", "b8"], ["q"], domain=QONNX, name="in_quant",
                                      signed=1, narrow=0, rounding_mode="ROUND"))
        src = "q"
    else:  # Trunc of a constant, added to the input so that the graph has one
        graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(np.shape(x_const)))]
        inits.append(numpy_helper.from_array(np.asarray(x_const, np.float32), "c"))
        src = "c"
    if pool:
        nodes.append(helper.make_node("AveragePool", [src], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"))
        src = "p"
    trunc_inputs = [src, "s", "z", "b_in", "s_out"]
    if n_inputs == 7:
        inits.append(numpy_helper.from_array(np.asarray(
            zero_point / 2.0 ** k if out_zero_point is None else out_zero_point, np.float32), "z_out"))
        trunc_inputs.append("z_out")
    trunc_inputs.append("b_out")
    if n_inputs == 5:
        trunc_inputs = trunc_inputs[:4] + ["b_out"]
    out = "y" if x_const is None else "c_trunc"
    nodes.append(helper.make_node("Trunc", trunc_inputs, [out], domain=QONNX, name="the_trunc",
                                  rounding_mode=rounding, signed=signed, narrow=narrow))
    out_shape = list(SHAPE[:2]) + [d // 2 for d in SHAPE[2:]] if pool else list(SHAPE)
    if x_const is not None:
        out_shape = list(np.shape(x_const))
        nodes.append(helper.make_node("Add", ["x", out], ["y"], name="use"))
    graph = helper.make_graph(nodes, "trunc", graph_inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX, 1)])
    model.ir_version = 8
    return model


def grid_inputs(seed=0, n=4):
    """Inputs on the quantizer's grid (so every integer and every tie is hit) plus off-grid and saturating ones."""
    rng = np.random.default_rng(seed)
    xs = []
    for i in range(n):
        q = rng.integers(-140, 141, SHAPE).astype(np.float32)
        x = q * np.float32(S_Q)
        if i % 2:
            x = x + rng.uniform(-0.5, 0.5, SHAPE).astype(np.float32) * np.float32(S_Q)
        xs.append(x.astype(np.float32))
    return xs


def assert_equals_onnxruntime(model, xs=None):
    module = import_onnx(model)
    verify(module)
    text = print_module(module)
    assert print_module(parse_module(text)) == text  # the integer shift's types and attributes round-trip
    std = bm.qonnx_as_standard_onnx(model)
    for x in xs or grid_inputs():
        expected = bm.run_ort(std, x)[0]
        got = run(module, {"x": x})["y"]
        np.testing.assert_array_equal(got, expected)
    return module


CASES = {
    "round_u8_k2": dict(rounding="ROUND", k=2, signed=0),
    "round_i8_k3": dict(rounding="ROUND", k=3, signed=1),
    "round_lowercase_as_brevitas": dict(rounding="round", k=1, signed=1),
    "round_narrow_4bit": dict(rounding="ROUND", k=2, bits=4, signed=1, narrow=1),
    "round_u4": dict(rounding="ROUND", k=1, bits=4, signed=0),
    "floor_i8": dict(rounding="FLOOR", k=2, signed=1),
    "ceil_i8": dict(rounding="CEIL", k=3, signed=1),
    "floor_u8_zero_point": dict(rounding="FLOOR", k=2, signed=0, zero_point=16.0),
    "round_zero_point": dict(rounding="ROUND", k=2, signed=1, zero_point=-8.0),
    "k0_clip_only": dict(rounding="ROUND", k=0, bits=6, signed=1),
    "k_negative_widens": dict(rounding="ROUND", k=-1, bits=10, signed=1),
    "round_after_pool": dict(rounding="ROUND", k=4, signed=1, pool=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_interpreter_equals_onnxruntime_on_trunc(case):
    assert_equals_onnxruntime(trunc_model(**CASES[case]))


def test_seven_input_trunc_equals_the_six_input_form():
    """qonnx's current Trunc also takes the output zero point (input 5), which must be zero point / 2^k; it imports
    as the same IR as Brevitas' six-input form (which `qonnx_as_standard_onnx` reads)."""
    six = assert_equals_onnxruntime(trunc_model(rounding="ROUND", k=2, signed=1, zero_point=8.0))
    seven = import_onnx(trunc_model(rounding="ROUND", k=2, signed=1, zero_point=8.0, n_inputs=7))
    assert print_module(seven) == print_module(six)


def test_round_is_half_to_even_on_every_tie():
    """The inputs hit every integer -128..127 on the grid: with k = 2, q = 4m + 2 is a tie, rounded to the even
    neighbour (ROUND is numpy's/torch's round), not up as a plain requant would."""
    model = trunc_model(rounding="ROUND", k=2, signed=1, bits=8)
    q = np.arange(-128, 128, dtype=np.float32)
    x = np.resize(q, int(np.prod(SHAPE))).reshape(SHAPE) * np.float32(S_Q)
    module = assert_equals_onnxruntime(model, [x.astype(np.float32)])
    y = run(module, {"x": x.astype(np.float32)})["y"]
    t = np.rint(y / np.float32(S_Q * 4)).astype(np.int64).reshape(-1)[:256]
    assert t[q.astype(int).tolist().index(2)] == 0 and t[q.astype(int).tolist().index(6)] == 2
    assert t[q.astype(int).tolist().index(-2)] == 0 and t[q.astype(int).tolist().index(-6)] == -2


def test_trunc_ir_is_qcast_integer_shift_dcast():
    module = import_onnx(trunc_model(rounding="ROUND", k=3, signed=1))
    trunc_ops = [op for op in module.ops() if op.loc.startswith("the_trunc")]
    names = [op.name for op in trunc_ops]
    assert names[0] == "quant.qcast" and names[-1] == "quant.dcast"
    grid = trunc_ops[0].results[0].type.quant
    assert grid.storage.name == "i32" and grid.scale == pytest.approx(S_Q) and trunc_ops[0].attr("rounding") == \
        "add_round"
    shift = trunc_ops[-1].operands[0]
    assert shift.owner.name == "int.requant_shift" and shift.owner.attr("div") == 8
    out = shift.type.quant
    assert (out.storage.name, out.storage_min, out.storage_max) == ("i8", -128, 127)
    assert out.scale == pytest.approx(S_Q * 8)
    assert {"int.requant_shift", "int.add", "int.mul"} <= set(names)
    floor = import_onnx(trunc_model(rounding="FLOOR", k=3, signed=1))
    floor_ops = [op.name for op in floor.ops() if op.loc.startswith("the_trunc") and op.dialect == "int"]
    assert floor_ops == ["int.requant_shift"]  # FLOOR (and CEIL) is a single requant


@pytest.mark.parametrize("kwargs,grid_range", [
    (dict(signed=0, k=2), (0, 4095)),  # 12 input bits shifted by 2 cover all of u8
    (dict(signed=1, k=4), (-2048, 2047)),
    (dict(signed=1, k=0, in_bits=4.0), (-2 ** 31, 2 ** 31 - 1)),  # 4 bits do not cover i8: clipping would change q
])
def test_grid_takes_the_input_bit_width_only_when_clipping_there_changes_nothing(kwargs, grid_range):
    model = trunc_model(rounding="ROUND", **kwargs)
    module = assert_equals_onnxruntime(model)
    grid = next(op for op in module.walk("quant.qcast") if op.loc == "the_trunc").results[0].type.quant
    assert (grid.storage.name, grid.storage_min, grid.storage_max) == ("i32",) + grid_range


def test_narrow_range_ends_with_a_clip():
    module = import_onnx(trunc_model(rounding="ROUND", k=2, bits=4, signed=1, narrow=1))
    out = module.outputs[0].operands[0].owner.operands[0]
    assert out.owner.name == "int.clip" and (out.owner.attr("min"), out.owner.attr("max")) == (-7, 7)


def test_trunc_of_a_constant_folds():
    c = (np.arange(-40, 40, dtype=np.float32).reshape(SHAPE[:1] + (40,)) * np.float32(S_Q))
    model = trunc_model(rounding="ROUND", k=2, signed=1, x_const=c)
    module = import_onnx(model)
    assert not module.walk("int.requant_shift")
    x = np.zeros((2, 40), np.float32)
    np.testing.assert_array_equal(run(module, {"x": x})["y"], bm.run_ort(bm.qonnx_as_standard_onnx(model), x)[0])


@pytest.mark.parametrize("rounding", ["ROUND", "FLOOR", "CEIL"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_shift_round_matches_exact_rational_rounding(rounding, k):
    q = np.arange(-3000, 3000, dtype=np.int64)
    got = shift_round(q, k, rounding, -100, 100)
    v = q / 2.0 ** k  # exact in float64
    want = {"ROUND": np.round, "FLOOR": np.floor, "CEIL": np.ceil}[rounding](v)
    np.testing.assert_array_equal(got, np.clip(want, -100, 100).astype(np.int64))


def test_integer_shift_is_exact_beyond_the_storage_range():
    """The parity trick saturates its helpers at the storage range: values far outside must still clip right."""
    model = trunc_model(rounding="ROUND", k=1, bits=4, signed=0)  # u4 output, q up to 127 -> 63 >> 15
    module = import_onnx(model)
    x = grid_inputs(seed=3, n=1)[0]
    values = run_values(module, {"x": x})
    shift = module.outputs[0].operands[0].owner.operands[0]
    grid = next(op for op in module.ops() if op.name == "quant.qcast" and op.loc == "the_trunc").results[0]
    np.testing.assert_array_equal(values[shift], shift_round(values[grid], 1, "ROUND", 0, 15))


@pytest.mark.parametrize("kwargs,message", [
    (dict(rounding="ROUND_TO_ZERO"), r"Trunc rounding_mode 'ROUND_TO_ZERO' is not supported \(ROUND, FLOOR, CEIL\)"),
    (dict(zero_point=3.0, k=2), r"zero point 3 is not a multiple of the truncation 2\^2"),
    (dict(zero_point=1.5), r"zero point 1.5 is not an integer"),
    (dict(scale=[S_Q, S_Q, S_Q], out_scale=[S_Q * 4, S_Q * 4, S_Q * 8]),
     r"output scale / scale is not one power of two for the whole tensor"),
    (dict(bits=0), r"bit width 0.0 is not an integer in 1..32"),
    (dict(n_inputs=7, zero_point=8.0, out_zero_point=1.0), r"output zero point 1.0 is not zero point / 2\^2"),
])
def test_bad_trunc_is_a_located_frontend_error(kwargs, message):
    params = dict(rounding="ROUND", k=2, signed=1)
    params.update(kwargs)
    if "scale" in params:
        params["scale"] = np.asarray(params["scale"], np.float32).reshape(1, 3, 1, 1)
        params["out_scale"] = np.asarray(params["out_scale"], np.float32).reshape(1, 3, 1, 1)
    with pytest.raises(FrontendError, match=message) as err:
        import_onnx(trunc_model(**params))
    text = str(err.value)
    assert "the_trunc" in text and "\n" not in text


def test_trunc_v1_with_five_inputs_is_listed_as_unsupported():
    """QONNX Trunc v1 (x, scale, zero point, input bits, output bits) rescales by the input scale; it is another
    op, reported with the other unsupported ops."""
    with pytest.raises(FrontendError, match=r"unsupported ops: qonnx.custom_op.general.Trunc \(the_trunc\)$"):
        import_onnx(trunc_model(rounding="ROUND", k=2, signed=1, n_inputs=5))


def test_per_channel_scales_with_one_shift_import():
    scale = np.array([S_Q, S_Q * 2, S_Q * 4], np.float32).reshape(1, 3, 1, 1)
    module = assert_equals_onnxruntime(trunc_model(rounding="ROUND", k=2, signed=1, scale=scale,
                                                   out_scale=scale * 4))
    out = module.outputs[0].operands[0].owner.operands[0].type.quant
    assert out.is_per_axis and out.axis == 1


@pytest.mark.brevitas
def test_brevitas_trunc_avg_pool_equals_torch_exactly(tmp_path):
    """The integers the imported Trunc computes are the ones Brevitas' TruncAvgPool2d computes, element for element
    (the float tie that TORCH_MAX_STEP_MISMATCH allows for elsewhere does not arise: the shift is integer)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("brevitas")
    model = bm.build("conv_perchannel")
    module = import_onnx(str(bm.export("conv_perchannel", "qonnx", tmp_path)))
    dcast = next(op for op in module.walk("quant.dcast") if "trunc" in op.loc.lower())
    shift = dcast.operands[0]
    xs = bm.random_inputs(8, seed=2)
    with torch.no_grad():
        got, want = [], []
        for x in xs:
            t = torch.from_numpy(x)
            pooled = model.pool(model.relu1(model.conv1(model.inp(t))))
            want.append(np.rint(pooled.value.numpy() / pooled.scale.numpy()).astype(np.int64))
            got.append(run_values(module, {module.input_names()[0]: x})[shift])
    assert float(pooled.scale) == pytest.approx(shift.type.quant.scale, rel=1e-6)
    np.testing.assert_array_equal(np.stack(got), np.stack(want))
