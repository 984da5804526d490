"""Siracusa's tiled-flow forms (qirc/backends/deeploy/rules/tiling.py and harness.py) on small integer graphs: each
rewrite is run, the written ONNX is read back and executed on random inputs against the graph before legalisation
(bit-exact), and the node sequence is asserted."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from qirc.backends.deeploy.rules.harness import debug_pass_changes
from qirc.frontends.deeploy import import_deeploy_onnx
from qirc.qir import interpreter
from qirc.qir.ir import Module, const_op, input_op, output_op, pad_op
from qirc.qir.types import TensorType, UniformQuantType, i8, i32, u8
from qirc.qir.verifier import verify

from test_deeploy_structure import assert_deeploy_structure_with, assert_written_graph_exact

SIRACUSA = "deeploy-siracusa"


def q(scale, zp=0, signed=True):
    return UniformQuantType.per_tensor(i8 if signed else u8, scale, zp)


def requant(m, x, shape, out, mul, add=0, div=1 << 12, signed=True, n_levels=256, loc="/rqs"):
    attrs = {"mul": np.asarray(mul, np.int64).reshape(np.shape(mul) or (1,)),
             "add": np.asarray(add, np.int64).reshape(np.shape(add) or (1,)), "div": div, "signed": signed,
             "n_levels": n_levels}
    return m.create("int.requant_shift", [x], [TensorType(shape, out)], attrs, loc).result


def conv(m, x, w, pads, loc, group=1, bias=None):
    n, _, h, wd = x.type.shape
    kh, kw = w.shape[2:]
    shape = (n, w.shape[0], h + pads[0] + pads[2] - kh + 1, wd + pads[1] + pads[3] - kw + 1)
    operands = [x, const_op(m, w.astype(np.int8), TensorType(w.shape, i8), loc + "/w")]
    if bias is not None:
        operands.append(const_op(m, np.asarray(bias, np.int32), TensorType(np.shape(bias), i32), loc + "/b"))
    attrs = {"kernel_shape": [kh, kw], "pads": list(pads), "strides": [1, 1], "dilations": [1, 1], "group": group}
    return m.create("int.conv", operands, [TensorType(shape, i32)], attrs, loc).result


def written_exact(m, seeds=range(6)):
    """Legalise `m` for Siracusa and emit it; the written graph, read back, computes what `m` computed before, and
    passes the structure checker (with the debug-pass list qirc.json would carry).  Returns the ONNX model."""
    def check(model):
        assert_deeploy_structure_with(model, SIRACUSA, debug_pass_changes(model))
        assert not [n.name for n in model.graph.node if n.op_type == "RequantShift" and any(
            a.name == "div" and int(numpy_helper.to_array(a.t).reshape(-1)[0]) < 2 for a in n.attribute)]

    return assert_written_graph_exact(m, SIRACUSA, seeds, check)


def ops(model):
    return [n.op_type for n in model.graph.node]


def _zero_point_conv(zp, signed, via_requant):
    """x (or a requant of x) with zero point zp -> int.pad(zp) -> 3x3 Conv -> requant."""
    rng = np.random.default_rng(1)
    m = Module("zp")
    shape = (1, 3, 6, 6)
    x = input_op(m, "x", TensorType(shape, q(0.05, zp, signed)))
    if via_requant:
        x = input_op(m, "x0", TensorType(shape, q(0.1)))
        m.erase(m.inputs[0])
        x = requant(m, x, shape, q(0.05, zp, signed), [3], zp << 12, signed=signed, loc="/act")
    padded = pad_op(m, x, [1, 1, 1, 1], zp, "/conv/pad")
    c = conv(m, padded, rng.integers(-127, 128, (4, 3, 3, 3)), [0, 0, 0, 0], "/conv",
             bias=rng.integers(-2000, 2000, (4,)))
    output_op(m, "y", requant(m, c, (1, 4, 6, 6), q(0.2), rng.integers(20, 40, (1, 4, 1, 1))))
    verify(m)
    return m


@pytest.mark.parametrize("zp, signed", [(-128, True), (128, False), (0, False)])
def test_a_zero_point_pad_becomes_the_convs_own_padding_of_the_shifted_input(zp, signed):
    model = written_exact(_zero_point_conv(zp, signed, via_requant=False))
    pads = [list(a.ints) for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "pads"]
    assert "Pad" not in ops(model) and [1, 1, 1, 1] in pads
    if zp == 0:
        assert ops(model) == ["Conv", "RequantShift"]
    elif signed:  # x + 128 is uint8: a requant that only adds, fused behind an identity depthwise Conv
        assert ops(model) == ["Conv", "RequantShift", "Conv", "RequantShift"]
    else:  # x - 128 is int8: a standalone signed requant
        assert ops(model) == ["RequantShift", "Conv", "RequantShift"]


def test_a_zero_point_pad_after_a_requant_moves_into_its_add():
    model = written_exact(_zero_point_conv(-128, True, via_requant=True))
    # no requant that only shifts: the activation's own requant writes x + 128 as uint8 (fused, as it stands alone
    # here, behind an identity depthwise Conv)
    assert ops(model) == ["Conv", "RequantShift", "Conv", "RequantShift"]
    act = model.graph.node[1]
    assert {a.name: int(numpy_helper.to_array(a.t).reshape(-1)[0]) for a in act.attribute}["signed"] == 0


@pytest.mark.parametrize("zp, signed", [(3, True), (-77, True), (200, False)])
def test_a_zero_point_that_cannot_be_shifted_out_is_added_on_the_border(zp, signed):
    # x - zp fits no 8-bit type: x zero-padded plus a border of zp (made from ones), in one RequantizedAdd
    model = written_exact(_zero_point_conv(zp, signed, via_requant=False))
    assert "Pad" not in ops(model)
    assert ops(model) == ["RequantShift", "Conv", "RequantShift", "Conv", "RequantShift", "Add", "RequantShift",
                          "Conv", "RequantShift"]
    # the ones requant is left alone by DeeployTest's debug pass (a mul-0 ones requant had its add zeroed by it, the
    # ones became zeros and the border zp everywhere: 1788 of 2048 outputs wrong in a ResNet-18 cut on Generic)
    assert debug_pass_changes(model) == []
    m = _zero_point_conv(zp, signed, via_requant=False)
    samples = [interpreter.random_inputs(m, s) for s in range(4)]
    expected = [interpreter.run(m, inputs) for inputs in samples]
    with_pass = import_deeploy_onnx(_with_debug_pass(model))
    for inputs, want in zip(samples, expected):
        np.testing.assert_array_equal(interpreter.run(with_pass, list(inputs.values()))["y"], want["y"])


def _with_debug_pass(model):
    """`model` as DeeployTest's EmulateCMSISRequantPass leaves it on Generic or Siracusa: every RequantShift's
    add := round(add / (mul + 1e-3)) * mul (its own float64 expression), then run as written (no target named in
    the metadata: a cortex-m folder run there is no longer read as CMSIS would)."""
    import copy
    model = copy.deepcopy(model)
    del model.metadata_props[:]
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "RequantShift":
            mul = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            add = numpy_helper.to_array(inits[node.input[2]])
            new = (np.round(add / (mul + 1e-3)) * mul).astype(add.dtype)
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(new, node.input[2]))
    return model


@pytest.mark.parametrize("pads", [[5, 1, 5, 1], [2, 0, 1, 3], [0, 1, 0, 0]])
def test_unequal_conv_pads_become_a_one_hot_depthwise_conv_and_equal_pads(pads):
    rng = np.random.default_rng(2)
    m = Module("stem")
    x = input_op(m, "x", TensorType((1, 2, 9, 7), q(0.05)))
    c = conv(m, x, rng.integers(-127, 128, (3, 2, 4, 3)), pads, "/stem")
    output_op(m, "y", requant(m, c, c.type.shape, q(0.2), [25]))
    verify(m)
    model = written_exact(m)
    assert ops(model) == ["Conv", "RequantShift", "Conv", "RequantShift"]
    one_hot, stem = (n for n in model.graph.node if n.op_type == "Conv")
    q_pad = min(pads)
    assert [list(a.ints) for a in stem.attribute if a.name == "pads"] == [[q_pad] * 4]
    assert [a.i for a in one_hot.attribute if a.name == "group"] == [2]


def test_maxpool_padding_is_a_shift_a_zero_pad_and_the_shift_back():
    m = Module("pool")
    x = input_op(m, "x", TensorType((1, 2, 5, 5), q(0.05, 3)))
    pool = m.create("int.maxpool", [x], [TensorType((1, 2, 5, 5), x.type.element)],
                    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}, "/pool").result
    output_op(m, "y", pool)
    verify(m)
    model = written_exact(m)
    assert "Pad" not in ops(model) and ops(model).count("MaxPool") == 1
    assert all(list(a.ints) == [0, 0, 0, 0] for n in model.graph.node if n.op_type == "MaxPool"
               for a in n.attribute if a.name == "pads")


@pytest.mark.parametrize("rank", [4, 2])
def test_a_standalone_unsigned_requant_is_fused_behind_an_identity_depthwise_conv(rank):
    m = Module("relu")
    shape = (1, 6, 3, 3) if rank == 4 else (1, 6)
    x = input_op(m, "x", TensorType(shape, q(0.1)))
    r = requant(m, x, shape, q(0.05, 0, signed=False), [3], 0, div=2, signed=False, n_levels=256)
    output_op(m, "y", r)
    verify(m)
    model = written_exact(m)
    # a [N, C] graph output cannot end in a Reshape: an identity Gemm instead
    assert ops(model) == (["Conv", "RequantShift"] if rank == 4 else ["Gemm", "RequantShift"])


def test_a_standalone_unsigned_requant_inside_a_2d_graph_is_reshaped_around_the_conv():
    m = Module("relu2d")
    x = input_op(m, "x", TensorType((1, 6), q(0.1)))
    r = requant(m, x, (1, 6), q(0.05, 0, signed=False), [3], 0, div=2, signed=False, loc="/relu")
    w = const_op(m, np.arange(-12, 12).reshape(4, 6).astype(np.int8), TensorType((4, 6), i8), "/fc/w")
    b = const_op(m, np.zeros(4, np.int32), TensorType((4,), i32), "/fc/b")
    g = m.create("int.gemm", [r, w, b], [TensorType((1, 4), i32)], {"transA": 0, "transB": 1}, "/fc").result
    output_op(m, "y", requant(m, g, (1, 4), q(0.2), [7], 0, div=1 << 6))
    verify(m)
    model = written_exact(m)
    assert ops(model) == ["Reshape", "Conv", "RequantShift", "Reshape", "Gemm", "RequantShift"]


def test_an_unsigned_requant_of_a_product_is_an_int8_requant_then_the_fused_shift_back():
    # HardSwish / a squeeze-excitation gate: int8 x int8 -> int32 (int.mul, which no kernel fuses with its requant)
    # -> uint8; the per-tensor RequantShift writes int8 only, so it goes through int8 (add - 128 div) and back
    # (unsigned-product-requants), the way back fused behind an identity Conv (unsigned-requants-fused)
    m = Module("gate")
    shape = (1, 6, 3, 3)
    x = input_op(m, "x", TensorType(shape, q(0.1)))
    g = input_op(m, "g", TensorType(shape, q(1 / 127)))
    p = m.create("int.mul", [x, g], [TensorType(shape, i32)], {}, "/mul").result
    output_op(m, "y", requant(m, p, shape, q(0.02, 20, signed=False), [41], 20 << 12, signed=False, loc="/hs"))
    verify(m)
    model = written_exact(m)
    assert ops(model) == ["Mul", "RequantShift", "Conv", "RequantShift"]
    signs = [int(numpy_helper.to_array(a.t).reshape(-1)[0]) for n in model.graph.node for a in n.attribute
             if a.name == "signed"]
    assert signs == [1, 0]


def test_no_requant_keeps_div_1():
    m = Module("unit")
    x = input_op(m, "x", TensorType((1, 4), q(0.1)))
    output_op(m, "y", requant(m, x, (1, 4), q(0.1), [1], 3, div=1))
    verify(m)
    model = written_exact(m)
    divs = [int(numpy_helper.to_array(a.t).reshape(-1)[0]) for n in model.graph.node for a in n.attribute
            if a.name == "div"]
    assert divs == [2]


def test_a_multiple_add_far_beyond_the_debug_pass_bound_is_rescaled():
    # add = 5000 * mul with mul = 3: DeeployTest's debug pass would make it 4995 * 3; 2^j (mul, add, div) it keeps
    rng = np.random.default_rng(3)
    m = Module("big_add")
    x = input_op(m, "x", TensorType((1, 2, 4, 4), q(0.05)))
    c = conv(m, x, rng.integers(-10, 10, (2, 2, 1, 1)), [0, 0, 0, 0], "/c")
    output_op(m, "y", requant(m, c, (1, 2, 4, 4), q(0.2), [3], 3 * 5000, div=1 << 14))
    verify(m)
    model = written_exact(m)
    assert debug_pass_changes(model) == []
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    rqs = model.graph.node[-1]
    mul, add = inits[rqs.input[1]].reshape(-1), inits[rqs.input[2]].reshape(-1)
    assert mul[0] > 3 and add[0] == 5000 * mul[0]


def _relu_behind_a_large_sum():
    """u8 x -> 1x1 Conv of 72 channels (weights +-127: worst-case |sum| 72 * 127 * 255 = 2.3M) -> a ReLU's requant
    (uint8, zero point 0) with add 409600 = k * mul, mul 1, div 2^12 -> an int8 copy."""
    rng = np.random.default_rng(5)
    m = Module("relu_far")
    x = input_op(m, "x", TensorType((1, 72, 4, 4), q(0.05, signed=False)))
    c = conv(m, x, rng.choice([-127, 127], (4, 72, 1, 1)), [0, 0, 0, 0], "/c")
    y = requant(m, c, (1, 4, 4, 4), q(0.1, signed=False), [1], 409600, div=1 << 12, signed=False, loc="/relu")
    output_op(m, "y", requant(m, y, (1, 4, 4, 4), q(0.1), [2], 0, div=2, loc="/out"))
    verify(m)
    return m


def _pass_moves_outputs(model, samples):
    """The outputs of `model` with DeeployTest's debug pass applied minus those without, over `samples`."""
    device, with_pass = import_deeploy_onnx(model), import_deeploy_onnx(_with_debug_pass(model))
    return np.concatenate([(interpreter.run(with_pass, list(inputs.values()))["y"].astype(int)
                            - interpreter.run(device, list(inputs.values()))["y"]).ravel() for inputs in samples])


def test_a_zero_point_0_requant_the_pass_changes_is_listed_when_int32_forbids_the_rescale():
    # The ReLU's add needs mul >= 2^10 to be kept by the pass (|k| < ~500 * mul), and 2^10 * 2.3M overflows int32.
    # So it stays, the pass makes it round(409600 / 1.001) = 409191 (-0.1 output step), and qirc.json must list it
    # although its add is a multiple of mul (ResNet-18's layers.3/relu: 2 channels).
    m = _relu_behind_a_large_sum()
    samples = [interpreter.random_inputs(m, s) for s in range(4)]
    model = written_exact(m)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    relu = next(n for n in model.graph.node if n.op_type == "RequantShift" and n.name.startswith("relu"))
    assert inits[relu.input[2]].reshape(-1).tolist() == [409600] and inits[relu.input[1]].max() == 1  # not scaled
    assert debug_pass_changes(model) == [relu.name]  # the /out requant (mul 2, add 0) is kept
    # the pass really changes results: the outputs whose real value lies within 0.1 step above a rounding tie drop by 1
    diffs = _pass_moves_outputs(model, samples)
    assert set(diffs.tolist()) == {0, -1} and 0 < np.mean(diffs != 0) < 0.3


def test_a_cortexm_folder_runs_on_generic_with_the_debug_pass_as_on_the_device():
    # CMSIS's harness does not insert the pass, but Generic's does when the folder is run there.  The ReLU's add
    # 409600 = k * mul (mul 1) is beyond the merge's tolerance: qirc writes 409600 + round(409600 / 1000) = 410010,
    # which CMSIS's merge and the debug pass (the same expression) both read back as exactly 409600
    from qirc.backends.deeploy.emit import emit_onnx
    from qirc.backends.deeploy.legalize import legalize
    from qirc.backends.deeploy.rules.harness import debug_pass_report
    from qirc.backends.deeploy.targets import get_target

    m = _relu_behind_a_large_sum()
    samples = [interpreter.random_inputs(m, s) for s in range(4)]
    legalize(m, "deeploy-cortexm")
    verify(m)
    model = emit_onnx(m, "deeploy-cortexm")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    relu = next(n for n in model.graph.node if n.op_type == "RequantShift" and n.name.startswith("relu"))
    assert inits[relu.input[2]].reshape(-1).tolist() == [410010] and inits[relu.input[1]].max() == 1
    assert np.round(410010 / (1 + 1e-3)) == 409600
    report = debug_pass_report(model, get_target("deeploy-cortexm"))
    assert report["changed_requants"] == []
    assert "does not insert this debug pass on the CMSIS platform" in report["note"]
    assert_deeploy_structure_with(model, "deeploy-cortexm", report["changed_requants"])
    assert not np.any(_pass_moves_outputs(model, samples))
    # and qirc reads the folder as the lowered graph computes, k = 409600
    for inputs in samples:
        np.testing.assert_array_equal(interpreter.run(import_deeploy_onnx(model), list(inputs.values()))["y"],
                                      interpreter.run(m, list(inputs.values()))["y"])


def test_a_residual_add_of_a_constant_tensor_is_the_requantized_add_form():
    # tokens * c1 + positional embedding (an int8 constant tensor) * c2, as the transformer zoo's /Add: the scalar
    # of each operand is its constant of size 1, not the embedding
    rng = np.random.default_rng(4)
    m = Module("pos")
    x = input_op(m, "x", TensorType((1, 5, 8), q(0.05)))
    pos = const_op(m, rng.integers(-128, 128, (1, 5, 8)).astype(np.int8), TensorType((1, 5, 8), q(0.04)), "/pos")
    scaled = []
    for v, c in ((x, 4), (pos, 4)):  # equal scales: the form is exact (docs/targets.md)
        k = const_op(m, np.array([c], np.int32), TensorType((1,), i32), "/add/k")
        scaled.append(m.create("int.mul", [v, k], [TensorType((1, 5, 8), i32)], {}, "/add").result)
    s = m.create("int.add", scaled, [TensorType((1, 5, 8), i32)], {}, "/add").result
    output_op(m, "y", requant(m, s, (1, 5, 8), q(0.1), [3], 0, div=1 << 6))
    verify(m)
    model = written_exact(m)
    assert ops(model) == ["RequantShift", "RequantShift", "Add", "RequantShift"]


def _dw_tile_feasible(model):
    """PULPOpen's DWConvTileConstraint: every padded depthwise Conv needs output H and W of at least 1 + its pad."""
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output)}
    for n in model.graph.node:
        attrs = {a.name: list(a.ints) if a.ints else a.i for a in n.attribute}
        if n.op_type == "Conv" and attrs.get("group", 1) > 1:
            _, _, h, w = shapes[n.output[0]]
            assert min(h, w) >= 1 + max(attrs["pads"]), (n.name, h, w, attrs["pads"])


@pytest.mark.parametrize("zp", [0, 3])
def test_a_padded_conv1d_pads_with_spare_zero_rows_that_it_strides_over(zp):
    """A Conv1d lifted to [N, C, 1, L] with its padding along L: the one-hot depthwise Conv that pads makes P spare
    zero rows under the one row (Deeploy's tiler wants its output H >= 1 + P: the collapsed form, H = 1, generated
    untiled code only) and the Conv strides over them (stride P + 1 along H).  zp 3: the border form, both of its
    one-hot pads with spare rows.  Verified with Deeploy: Siracusa tiled and untiled code generated, Generic Errors: 0
    on the foreign matrix's Conv1d network."""
    rng = np.random.default_rng(4)
    m = Module("conv1d")
    x = input_op(m, "x", TensorType((1, 3, 1, 10), q(0.05, zp)))
    padded = pad_op(m, x, [0, 2, 0, 2], zp, "/c/pad") if zp else x
    c = conv(m, padded, rng.integers(-127, 128, (4, 3, 1, 5)), [0, 0, 0, 0] if zp else [0, 2, 0, 2], "/c")
    output_op(m, "y", requant(m, c, c.type.shape, q(0.2), [25]))
    verify(m)
    model = written_exact(m)
    assert "Pad" not in ops(model)
    _dw_tile_feasible(model)
    main = [n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("c")
            and [a.i for a in n.attribute if a.name == "group"] == [1]][-1]
    attrs = {a.name: list(a.ints) for a in main.attribute if a.ints}
    assert attrs["kernel_shape"] == [1, 5] and attrs["pads"] == [0, 0, 0, 0] and attrs["strides"] == [3, 1]


def test_a_padded_maxpool1d_strides_over_the_spare_zero_rows_too():
    """MaxPool1d(3, stride 2, pad 1) lifted to [N, C, 1, L]: shift to uint8, the one-hot pad with a spare zero row,
    the pool with stride 2 along H, the shift back (Siracusa tiled code generated, Generic Errors: 0; before, the
    tiler refused the one-hot pad's one-row output)."""
    m = Module("pool1d")
    x = input_op(m, "x", TensorType((1, 2, 1, 9), q(0.05, 3)))
    pool = m.create("int.maxpool", [x], [TensorType((1, 2, 1, 5), x.type.element)],
                    {"kernel_shape": [1, 3], "pads": [0, 1, 0, 1], "strides": [1, 2]}, "/pool").result
    output_op(m, "y", requant(m, pool, (1, 2, 1, 5), q(0.05, 3), [2], 0, div=2))
    verify(m)
    model = written_exact(m)
    _dw_tile_feasible(model)
    (node,) = [n for n in model.graph.node if n.op_type == "MaxPool"]
    attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
    assert attrs["kernel_shape"] == [1, 3] and attrs["pads"] == [0, 0, 0, 0] and attrs["strides"] == [2, 2]
