"""The ONNX writer (quant IR -> QDQ / decomposed QCDQ ONNX): what it writes, that onnxruntime computes exactly what
the interpreter computes on the IR, and that importing what it wrote gives back the same IR."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ort = pytest.importorskip("onnxruntime")

import brevitas_models as bm  # noqa: E402  (tests/ helpers; imports torch only when a model is built)
from qirc.backends.onnx import save, write_onnx  # noqa: E402
from qirc.qir.diagnostics import BackendError, QircError  # noqa: E402
from qirc.qir.interpreter import random_inputs, run  # noqa: E402
from qirc.qir.ir import Module, const_op, input_op, output_op  # noqa: E402
from qirc.qir.types import UniformQuantType, f32, i8, i32, tensor, u8  # noqa: E402

from real_models import deepquant  # noqa: E402

RESNET8_SPLIT = deepquant("ResNet8")
FORMS = ("qdq", "qcdq")


def ort_outputs(model: onnx.ModelProto, inputs: dict):
    sess = bm.ort_session(model)
    return sess.run(None, {i.name: inputs[i.name] for i in sess.get_inputs()})


def op_types(model: onnx.ModelProto):
    return [n.op_type for n in model.graph.node]


def initializers(model: onnx.ModelProto):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# ----- hand-built modules (no importer needed) ---------------------------------------------------------------------
def tie_module(rounding: str, zero_point: int = 3) -> Module:
    """x -> qcast (u8, scale 1/8, odd zero point) -> {the integers, dcast}."""
    m = Module("ties")
    x = input_op(m, "x", tensor([1, 64], f32))
    qt = UniformQuantType.per_tensor(u8, 0.125, zero_point)
    q = m.create("quant.qcast", [x], [tensor([1, 64], qt)], {"rounding": rounding}, loc="/act/quant").result
    y = m.create("quant.dcast", [q], [tensor([1, 64], f32)], loc="/act/dequant").result
    output_op(m, "q", q)
    output_op(m, "y", y)
    return m


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("rounding", ["round_add", "add_round"])
def test_rounding_order_survives_exact_ties(form, rounding):
    # x / s = k + 0.5 exactly: with an odd zero point the two rounding orders differ by one step on every tie
    k = np.arange(-2, 62, dtype=np.float32)
    x = ((k + np.float32(0.5)) * np.float32(0.125)).reshape(1, 64).astype(np.float32)
    module = tie_module(rounding)
    q_ort, y_ort = ort_outputs(write_onnx(module, form), {"x": x})

    round_add = np.clip(np.rint(x / np.float32(0.125)) + 3, 0, 255)
    add_round = np.clip(np.rint(x / np.float32(0.125) + 3), 0, 255)
    assert np.count_nonzero(round_add != add_round) > 50  # the test means something
    expected = round_add if rounding == "round_add" else add_round
    np.testing.assert_array_equal(q_ort.astype(np.int64), expected.astype(np.int64))
    np.testing.assert_array_equal(y_ort, ((expected - 3) * np.float32(0.125)).astype(np.float32))
    ref = run(module, {"x": x})
    np.testing.assert_array_equal(q_ort.astype(np.int64), ref["q"])
    np.testing.assert_array_equal(y_ort, ref["y"])


def test_qdq_form_uses_quantize_linear_where_it_rounds_the_same():
    # QuantizeLinear rounds before adding z: fine for round_add, and for add_round when z == 0
    assert "QuantizeLinear" in op_types(write_onnx(tie_module("round_add"), "qdq"))
    assert "QuantizeLinear" in op_types(write_onnx(tie_module("add_round", zero_point=0), "qdq"))
    decomposed = op_types(write_onnx(tie_module("add_round"), "qdq"))
    assert "QuantizeLinear" not in decomposed
    assert decomposed[:4] == ["Div", "Add", "Round", "Clip"]
    assert op_types(write_onnx(tie_module("round_add"), "qcdq"))[:4] == ["Div", "Round", "Add", "Clip"]


def conv_module() -> Module:
    """Input quantizer, conv with narrow per-channel int8 weights and an int32 bias, ReLU-like Clip, asymmetric u8
    requantizer, Reshape and Pad: the shapes of a Brevitas QDQ export."""
    rng = np.random.default_rng(7)
    m = Module("conv")
    x = input_op(m, "input", tensor([1, 3, 8, 8], f32))
    q = m.create("quant.qcast", [x], [tensor([1, 3, 8, 8], UniformQuantType.per_tensor(i8, 0.03125, 0))],
                 {"rounding": "round_add"}, loc="/inp/QuantizeLinear").result
    xf = m.create("quant.dcast", [q], [tensor([1, 3, 8, 8], f32)], loc="/inp/DequantizeLinear").result
    wq = UniformQuantType.per_axis(i8, 0, rng.uniform(0.004, 0.02, 4).astype(np.float32), storage_min=-127,
                                   storage_max=127)
    w = const_op(m, rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), tensor([4, 3, 3, 3], wq),
                 loc="/conv/weight")
    wf = m.create("quant.dcast", [w], [tensor([4, 3, 3, 3], f32)], loc="/conv/weight_dq").result
    bq = UniformQuantType.per_axis(i32, 0, [np.float32(0.03125) * np.float32(s) for s in wq.scales])
    b = const_op(m, rng.integers(-3000, 3000, (4,)).astype(np.int32), tensor([4], bq), loc="/conv/bias")
    bf = m.create("quant.dcast", [b], [tensor([4], f32)], loc="/conv/bias_dq").result
    y = m.create("onnx.Conv", [xf, wf, bf], [tensor([1, 4, 8, 8], f32)],
                 {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1], "dilations": [1, 1], "group": 1},
                 loc="/conv/Conv").result
    y = m.create("onnx.Clip", [y], [tensor([1, 4, 8, 8], f32)], {"min": -0.25}, loc="/act/Clip").result
    aq = UniformQuantType.per_tensor(u8, 0.0078125, 37)
    a = m.create("quant.qcast", [y], [tensor([1, 4, 8, 8], aq)], {"rounding": "add_round"}, loc="/act/quant").result
    af = m.create("quant.dcast", [a], [tensor([1, 4, 8, 8], f32)], loc="/act/dequant").result
    r = m.create("onnx.Reshape", [af], [tensor([1, 256], f32)], {"shape": [1, 256]}, loc="/Reshape").result
    p = m.create("onnx.Pad", [r], [tensor([1, 259], f32)], {"pads": [0, 1, 0, 2], "mode": "constant", "value": 0.5},
                 loc="/Pad").result
    output_op(m, "output", p)
    return m


@pytest.mark.parametrize("form", FORMS)
def test_conv_module_runs_like_the_interpreter(form):
    module = conv_module()
    model = write_onnx(module, form)
    for seed in range(5):
        inputs = random_inputs(module, seed)
        bm.assert_outputs_match(module, list(run(module, inputs).values()), ort_outputs(model, inputs),
                                f"{form} seed {seed}")


def test_qdq_form_writes_integer_constants_like_brevitas():
    model = write_onnx(conv_module(), "qdq")
    inits = initializers(model)
    nodes = {n.name: n for n in model.graph.node}
    weight_clip = next(n for n in model.graph.node if n.op_type == "Clip" and n.input[0] in inits)
    assert inits[weight_clip.input[0]].dtype == np.int8 and inits[weight_clip.input[0]].shape == (4, 3, 3, 3)
    assert (int(inits[weight_clip.input[1]]), int(inits[weight_clip.input[2]])) == (-127, 127)
    dq_bias = nodes["/conv/bias_dq"]
    assert dq_bias.op_type == "DequantizeLinear" and inits[dq_bias.input[0]].dtype == np.int32
    assert [a.i for a in dq_bias.attribute if a.name == "axis"] == [0]
    assert inits[dq_bias.input[1]].shape == (4,)
    reshape = nodes["/Reshape"]
    assert inits[reshape.input[1]].tolist() == [1, 256] and inits[reshape.input[1]].dtype == np.int64
    pad = nodes["/Pad"]
    assert inits[pad.input[1]].tolist() == [0, 1, 0, 2] and float(inits[pad.input[2]]) == 0.5
    clip = nodes["/act/Clip"]
    assert float(inits[clip.input[1]]) == -0.25 and len(clip.input) == 2  # no max: +inf is ONNX's default


def test_qcdq_form_writes_float_weights_and_decomposed_quantizers():
    model = write_onnx(conv_module(), "qcdq")
    types = op_types(model)
    assert "QuantizeLinear" not in types and "DequantizeLinear" not in types
    inits = initializers(model)
    assert all(a.dtype in (np.float32, np.int64) for a in inits.values())
    weight = next(a for a in inits.values() if a.shape == (4, 3, 3, 3))
    module = conv_module()
    wconst = next(op for op in module.walk("qir.const") if op.loc == "/conv/weight")
    wq = wconst.result.type.quant
    np.testing.assert_array_equal(weight, wconst.attrs["value"].astype(np.float32)
                                  * wq.scales_for(4).astype(np.float32))


def test_reductions_and_axes_go_back_to_inputs():
    m = Module("shapes")
    x = input_op(m, "x", tensor([2, 3, 4], f32))
    s = m.create("onnx.ReduceSum", [x], [tensor([2, 1, 4], f32)], {"axes": [1], "keepdims": 1}, loc="/sum").result
    sq = m.create("onnx.Squeeze", [s], [tensor([2, 4], f32)], {"axes": [1]}, loc="/squeeze").result
    un = m.create("onnx.Unsqueeze", [sq], [tensor([2, 4, 1], f32)], {"axes": [2]}, loc="/unsqueeze").result
    mean = m.create("onnx.ReduceMean", [un], [tensor([2, 1], f32)], {"axes": [1], "keepdims": 0},
                    loc="/mean").result
    c = m.create("onnx.Clip", [mean], [tensor([2, 1], f32)], {"min": -1.0, "max": 0.75}, loc="/clip").result
    output_op(m, "y", c)
    model = write_onnx(m, "qdq")
    inits = initializers(model)
    by_type = {n.op_type: n for n in model.graph.node}
    for op_type, axes in (("ReduceSum", [1]), ("Squeeze", [1]), ("Unsqueeze", [2])):
        assert inits[by_type[op_type].input[1]].tolist() == axes
    assert [list(a.ints) for a in by_type["ReduceMean"].attribute if a.name == "axes"] == [[1]]  # opset 13: attr
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in inferred.graph.value_info}
    assert shapes[by_type["Unsqueeze"].output[0]] == [2, 4, 1]
    x_in = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_outputs(model, {"x": x_in})[0], run(m, {"x": x_in})["y"], rtol=1e-6, atol=1e-6)


def test_outputs_that_are_inputs_constants_or_repeated_get_identities():
    m = Module("io")
    x = input_op(m, "x", tensor([2], f32))
    c = const_op(m, np.array([1.5, -2.0], np.float32), tensor([2], f32), loc="/c")
    y = m.create("onnx.Add", [x, c], [tensor([2], f32)], loc="/add").result
    output_op(m, "same_as_x", x)
    output_op(m, "the_constant", c)
    output_op(m, "sum", y)
    output_op(m, "sum_again", y)
    model = write_onnx(m, "qcdq")
    assert [o.name for o in model.graph.output] == ["same_as_x", "the_constant", "sum", "sum_again"]
    got = ort_outputs(model, {"x": np.array([1.0, 2.0], np.float32)})
    np.testing.assert_array_equal(np.stack(got), [[1.0, 2.0], [1.5, -2.0], [2.5, 0.0], [2.5, 0.0]])


def test_an_input_can_be_an_output_of_the_same_name_but_names_are_unique():
    m = Module("passthrough")
    x = input_op(m, "x", tensor([2], f32))
    output_op(m, "x", x)
    model = write_onnx(m, "qdq")
    assert not model.graph.node and [o.name for o in model.graph.output] == ["x"]
    output_op(m, "x", x)
    with pytest.raises(BackendError, match="graph output name 'x' is used twice"):
        write_onnx(m, "qdq")


def test_integer_level_ops_are_refused_with_their_location():
    m = Module("int")
    a = input_op(m, "a", tensor([4], i32))
    s = m.create("int.add", [a, a], [tensor([4], i32)], loc="/layer3/Add").result
    output_op(m, "s", s)
    with pytest.raises(BackendError) as err:
        write_onnx(m, "qdq")
    assert "/layer3/Add" in str(err.value) and "int.add" in str(err.value) and "\n" not in str(err.value)


def int_gemm_module(weight: np.ndarray) -> Module:
    """u8 input -> int.gemm with constant int8 weights and an int32 bias -> dcast."""
    m = Module("int_gemm")
    n, k = weight.shape
    x = input_op(m, "x", tensor([1, k], f32))
    xq = m.create("quant.qcast", [x], [tensor([1, k], UniformQuantType.per_tensor(u8, 0.0625, 0))],
                  {"rounding": "add_round"}, loc="/x/quant").result
    w = const_op(m, weight.astype(np.int8), tensor([n, k], UniformQuantType.per_tensor(i8, 0.5, 0)), loc="/w")
    b = const_op(m, np.arange(n, dtype=np.int32) * 1000 - 3000, tensor([n], i32), loc="/b")
    acc = m.create("int.gemm", [xq, w, b], [tensor([1, n], UniformQuantType.per_tensor(i32, 0.03125, 0))],
                   {"transA": 0, "transB": 1}, loc="/fc/Gemm").result
    y = m.create("quant.dcast", [acc], [tensor([1, n], f32)], loc="/fc/dequant").result
    output_op(m, "y", y)
    return m


@pytest.mark.parametrize("form", FORMS)
def test_integer_linear_ops_run_exactly_as_float_ops_on_integers(form):
    weight = np.random.default_rng(3).integers(-128, 128, (6, 40))
    module = int_gemm_module(weight)
    model = write_onnx(module, form)
    assert "Gemm" in op_types(model)
    for seed in range(3):
        inputs = random_inputs(module, seed)
        np.testing.assert_array_equal(ort_outputs(model, inputs)[0], run(module, inputs)["y"])


def test_integer_linear_op_that_float32_cannot_sum_exactly_is_refused():
    # 600 * 127 * 255 > 2^24: a partial sum may no longer be an exact float32 integer
    module = int_gemm_module(np.full((2, 600), 127))
    with pytest.raises(BackendError, match=r"node '/fc/Gemm' \(int.gemm\): int.gemm may accumulate up to 1.94e\+07"):
        write_onnx(module, "qdq")


def test_unknown_form_is_a_user_error():
    with pytest.raises(QircError, match="unknown ONNX form 'qop'.*qdq, qcdq"):
        write_onnx(tie_module("round_add"), "qop")


def test_save_writes_a_loadable_checked_file(tmp_path):
    path = save(conv_module(), tmp_path / "sub" / "conv.onnx", form="qdq")
    assert path.exists()
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


# ----- round trips through the ONNX importer -----------------------------------------------------------------------
def _import_onnx():
    try:
        from qirc.frontends.onnx import import_onnx
    except ImportError as e:  # pragma: no cover - only while the importer is being written
        pytest.skip(f"qirc.frontends.onnx.import_onnx is not available yet ({e})")
    return import_onnx


def canonical_text(module: Module) -> str:
    """The printed IR without value names and locations (the writer picks its own tensor names), with the rounding
    order of zero-point-free quantizers normalised (both orders compute the same there, and QuantizeLinear reads
    back as round_add)."""
    from qirc.qir.printer import print_module
    m = module.clone()
    for op in m.ops():
        op.loc = ""
        for r in op.results:
            r.name = None
        if op.name == "quant.qcast" and all(z == 0 for z in op.result.type.quant.zero_points):
            op.attrs["rounding"] = "round_add"
    return print_module(m)


def check_round_trip(module: Module, form: str, tmp_path: Path, inputs_list):
    import_onnx = _import_onnx()
    path = save(module, tmp_path / form / f"{module.name}.onnx", form=form)
    for i, inputs in enumerate(inputs_list):
        bm.assert_outputs_match(module, list(run(module, inputs).values()),
                                ort_outputs(onnx.load(str(path)), inputs), f"{form} written file, input {i}")
    again = import_onnx(str(path))
    if form == "qcdq" and _has_round_add_with_zero_point(module):
        # written as Div -> Round -> Add -> Clip, which is no quantizer pattern the importer knows: it comes back as
        # float ops that compute the same numbers
        for i, inputs in enumerate(inputs_list):
            bm.assert_outputs_match(module, list(run(module, inputs).values()), list(run(again, inputs).values()),
                                    f"{form} re-imported, input {i}")
        return
    assert canonical_text(again) == canonical_text(module)


def _has_round_add_with_zero_point(module: Module) -> bool:
    return any(op.attr("rounding") == "round_add" and any(op.result.type.quant.zero_points)
               for op in module.walk("quant.qcast"))


@pytest.mark.parametrize("form", FORMS)
def test_resnet8_split_round_trip(form, tmp_path):
    import_onnx = _import_onnx()
    module = import_onnx(str(RESNET8_SPLIT))
    check_round_trip(module, form, tmp_path, [random_inputs(module, seed) for seed in range(3)])
    if form == "qcdq":
        # the file itself is in this form: the written graph has the corpus file's quantizer ops
        original = onnx.load(str(RESNET8_SPLIT))
        counts = {t: op_types(original).count(t) for t in ("Div", "Round", "Clip", "Conv", "Gemm")}
        written = write_onnx(module, "qcdq")
        assert {t: op_types(written).count(t) for t in counts} == counts


@pytest.mark.parametrize("form", FORMS)
def test_resnet8_dequant_moved_runs_like_the_interpreter(form):
    # integer convolutions on stored integers (the importer's reading of DeepQuant's dequant-moved form)
    module = _import_onnx()(str(deepquant("ResNet8", "dequant_moved.onnx")))
    assert module.walk("int.conv")
    model = write_onnx(module, form)
    for seed in range(2):
        inputs = random_inputs(module, seed)
        bm.assert_outputs_match(module, list(run(module, inputs).values()), ort_outputs(model, inputs),
                                f"dequant_moved {form}, seed {seed}")


@pytest.mark.brevitas
@pytest.mark.parametrize("name", bm.MODELS)
def test_brevitas_qdq_round_trip(name, tmp_path):
    pytest.importorskip("brevitas")
    import_onnx = _import_onnx()
    module = import_onnx(str(bm.export(name, "qdq", tmp_path)))
    inputs = [{module.input_names()[0]: x} for x in bm.random_inputs(5)]
    check_round_trip(module, "qdq", tmp_path, inputs)
    check_round_trip(module, "qcdq", tmp_path, inputs[:2])
