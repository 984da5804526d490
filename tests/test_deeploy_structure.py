"""The structural rules of the Deeploy contract (DESIGN.md section 4), as one checker walking an emitted ONNX model,
and tests that the checker itself catches each broken rule.  test_deeploy_backend.py and test_deeploy_corpus.py run
it on everything qirc emits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from qirc.backends.deeploy.targets import get_target

SHAPE_OPS = ("Reshape", "Flatten")


def debug_pass_add(mul, add) -> np.ndarray:
    """DeeployTest's EmulateCMSISRequantPass (generateNetwork.py inserts it on every platform but CMSIS), restated
    from Deeploy's DebugPasses.py: add := np.round(add / (mul + 1e-3)) * mul."""
    mul = np.asarray(mul, np.int64)
    return np.round(np.asarray(add, np.int64) / (mul + 1e-3)) * mul


def deeploy_structure_problems(model: onnx.ModelProto, target, debug_pass_changes=None) -> list:
    """Every broken rule of the Deeploy contract in `model`, as strings (empty when it is legal for `target`).

    debug_pass_changes: the requant names qirc.json lists as changed by DeeployTest's debug pass; when given, every
    other RequantShift must be one the pass leaves alone, and each listed one one that it changes (on CMSIS too,
    whose harness does not insert the pass but which a cortex-m folder meets when run on Generic; there a Conv's or
    MatMul's requant is read through the pass's expression by CMSIS's merge too, so it is never listed)."""
    target = get_target(target)
    problems = []
    g = model.graph
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        problems.append(f"onnx.checker: {str(e).splitlines()[0]}")
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", None) != 10:
        problems.append(f"default-domain opset is {opsets.get('')}, not 10")
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    defined = set(inits) | {i.name for i in g.input}
    typed = {vi.name: vi for vi in list(g.value_info) + list(g.output) + list(g.input)}
    outputs = {o.name for o in g.output}
    producer = {}
    for node in g.node:
        for name in node.input:
            if name and name not in defined:
                problems.append(f"{node.name}: input {name} used before it is defined (not topologically sorted)")
        for name in node.output:
            defined.add(name)
            producer[name] = node
            vi = typed.get(name)
            if vi is None:
                problems.append(f"{node.name}: output {name} has no value_info")
            else:
                dims = vi.type.tensor_type.shape.dim
                if not vi.type.tensor_type.HasField("shape") or any(not d.HasField("dim_value") for d in dims):
                    problems.append(f"{node.name}: output {name} has no static shape")
        if not target.accepts(node.op_type):
            problems.append(f"{node.name}: op {node.op_type} is not in {target.name}'s list")
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "RequantShift":
            if node.domain in ("", "ai.onnx") or node.domain not in opsets:
                problems.append(f"{node.name}: RequantShift domain '{node.domain}' is default or not imported")
            for key in ("div", "signed", "n_levels_out"):
                a = attrs.get(key)
                if a is None or a.type != onnx.AttributeProto.TENSOR or numpy_helper.to_array(a.t).size != 1:
                    problems.append(f"{node.name}: attribute {key} is not a size-1 tensor")
            if "div" in attrs and attrs["div"].type == onnx.AttributeProto.TENSOR:
                div = int(numpy_helper.to_array(attrs["div"].t).reshape(-1)[0])
                if div < 1 or div & (div - 1):
                    problems.append(f"{node.name}: div {div} is not a power of two")
                if div < target.requant_div_min:
                    problems.append(f"{node.name}: div {div} on a platform whose kernels need div >= "
                                    f"{target.requant_div_min}")
            signed_attr = attrs.get("signed")
            if target.unsigned_requant_fused and signed_attr is not None and signed_attr.type == onnx.AttributeProto.TENSOR \
                    and not int(numpy_helper.to_array(signed_attr.t).reshape(-1)[0]):
                before = producer.get(node.input[0])
                users_of_before = [n for n in g.node if before is not None and before.output[0] in n.input]
                fused = before is not None and before.op_type in ("Conv", "Gemm", "MatMul", "Add") and \
                    users_of_before == [node]
                add_operand = [n.op_type for n in g.node if node.output[0] in n.input] == ["Add"]
                if not (fused or add_operand):
                    problems.append(f"{node.name}: unsigned RequantShift not fused with the kernel before it")
            before = producer.get(node.input[0])
            merged = target.add_before_mul and before is not None and before.op_type in ("Conv", "MatMul")
            if debug_pass_changes is not None and len(node.input) == 3 and \
                    all(n in inits for n in node.input[1:]):
                mul, add = inits[node.input[1]], inits[node.input[2]]
                # CMSIS merges a Conv/MatMul requant and reads its add as the debug pass does: kept either way
                kept = merged or np.array_equal(debug_pass_add(mul, add), add)
                if kept and node.name in debug_pass_changes:
                    problems.append(f"{node.name}: listed as changed by the debug pass, which keeps it")
                if not kept and node.name not in debug_pass_changes:
                    problems.append(f"{node.name}: the debug pass changes its add, and qirc.json does not say so")
            if len(node.input) != 3 or any(n not in inits for n in node.input[1:]):
                problems.append(f"{node.name}: mul/add are not initializers")
            else:
                mul, add = inits[node.input[1]], inits[node.input[2]]
                x = typed.get(node.input[0])
                rank = len(x.type.tensor_type.shape.dim) if x is not None else None
                for nm, arr in (("mul", mul), ("add", add)):
                    t = [tp for tp in g.initializer if tp.name == node.input[1 if nm == "mul" else 2]][0]
                    if t.data_type != onnx.TensorProto.INT32:
                        problems.append(f"{node.name}: {nm} is not int32")
                    shape = list(arr.shape)
                    conv = producer.get(node.input[0])
                    channels_last = conv is not None and _channels_first(conv) == 0
                    ok = shape == [1] or (shape == [] and nm == "mul" and target.gemm_scalar_mul) or (rank == 4 and len(shape) in (3, 4) and shape[-2:] == [1, 1] and
                                          (len(shape) == 3 or shape[0] == 1)) or (rank == 2 and len(shape) == 1)
                    ok = ok or (channels_last and shape == [1, 1, 1, arr.size])
                    if not ok:
                        problems.append(f"{node.name}: {nm} shape {shape} is not [1], [C,1,1], [1,C,1,1] or [C]")
        if node.op_type == "Conv":
            if not target.pad_node and "pads" in attrs and len(set(attrs["pads"].ints)) > 1:
                problems.append(f"{node.name}: Conv pads {list(attrs['pads'].ints)} are not equal on all four sides")
            for key in ("kernel_shape", "pads", "strides", "dilations", "group"):
                if key not in attrs:
                    problems.append(f"{node.name}: Conv lacks attribute {key}")
            if len(node.input) != 2:
                problems.append(f"{node.name}: Conv has a bias input")
            if target.square_conv_pads and "pads" in attrs:
                pads = list(attrs["pads"].ints)
                group = attrs["group"].i if "group" in attrs else 1
                if len(set(pads)) != 1 or (group > 1 and any(pads)):
                    problems.append(f"{node.name}: Conv pads {pads} are not square (or a depthwise Conv pads)")
            group = attrs["group"].i if "group" in attrs else 1
            if not target.depthwise_conv and group > 1:
                problems.append(f"{node.name}: depthwise Conv on a platform that rejects it")
            if _channels_first(node) == 0:
                problems.extend(_channels_last_problems(g, node, target, producer))
            elif group > 1 and target.depthwise_layout == "channels-last":
                problems.append(f"{node.name}: depthwise Conv left for Deeploy to transpose (CMSIS rejects it)")
        if node.op_type == "MaxPool":
            for key in ("kernel_shape", "pads", "strides", "ceil_mode"):
                if key not in attrs:
                    problems.append(f"{node.name}: MaxPool lacks attribute {key}")
            if "pads" in attrs and any(attrs["pads"].ints):
                problems.append(f"{node.name}: MaxPool pads {list(attrs['pads'].ints)} (Deeploy's kernels pad nothing)")
        if node.op_type == "Gemm":
            for key, kind in (("alpha", onnx.AttributeProto.FLOAT), ("beta", onnx.AttributeProto.FLOAT),
                              ("transA", onnx.AttributeProto.INT), ("transB", onnx.AttributeProto.INT)):
                if key not in attrs or attrs[key].type != kind:
                    problems.append(f"{node.name}: Gemm attribute {key} missing or not {kind}")
        if node.op_type == "MatMul":
            for name in node.input:
                t = [tp for tp in g.initializer if tp.name == name]
                if t and t[0].data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
                    problems.append(f"{node.name}: MatMul constant {name} is not 8-bit")
            users = [n for n in g.node if node.output[0] in n.input]
            # (an int32 product that feeds more int32 arithmetic first, the softmax's half-step correction
            # 2 (P x V) + J x V, has no requant of its own to fuse)
            if target.gemm_scalar_mul and [u.op_type for u in users] not in (["RequantShift"], ["Reshape"], ["Mul"]):
                problems.append(f"{node.name}: MatMul is not followed by its RequantShift (CMSIS fuses them)")
        if node.op_type == "Pad" and not target.pad_node:
            problems.append(f"{node.name}: Pad on a platform whose tiled flow has none")
        if node.op_type == "Pad":
            if "pads" not in attrs or "mode" not in attrs or len(node.input) != 1:
                problems.append(f"{node.name}: Pad is not the Pad-2 attribute form")
            elif target.pad_equal_top_bottom:
                pads = list(attrs["pads"].ints)
                channels = typed[node.input[0]].type.tensor_type.shape.dim[1].dim_value \
                    if node.input[0] in typed else 0
                if len(pads) == 8 and pads[2] != pads[6] and channels > 1:
                    problems.append(f"{node.name}: Pad of {channels} channels with unequal top and bottom {pads} "
                                    "(Generic's NCHW Pad kernel is right only for equal ones)")
    for name in outputs:
        node = producer.get(name)
        if node is not None and node.op_type in SHAPE_OPS:
            problems.append(f"graph output {name} is produced by {node.op_type}")
    names = [n.name for n in g.node]
    if len(set(names)) != len(names) or any(not n for n in names):
        problems.append("node names are not unique and non-empty")
    return problems


def _channels_first(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "channels_first"), 1)


def _channels_last_problems(g, conv: onnx.NodeProto, target, producer: dict) -> list:
    """The channels-last depthwise form (targets.DEPTHWISE_LAYOUTS): Transpose [0,2,3,1] -> Conv(ai.deeploy,
    channels_first=0, group > 1, no pads) -> its only user RequantShift -> its only user Transpose [0,3,1,2]."""
    problems = []
    attrs = {a.name: a for a in conv.attribute}

    def users(name):
        return [n for n in g.node if name in n.input]

    if target.depthwise_layout != "channels-last":
        problems.append(f"{conv.name}: channels_first = 0 Conv on a channels-first target")
    if conv.domain != "ai.deeploy":
        problems.append(f"{conv.name}: channels_first = 0 Conv is not in domain ai.deeploy")
    if "group" not in attrs or attrs["group"].i <= 1 or any(attrs["pads"].ints if "pads" in attrs else []):
        problems.append(f"{conv.name}: channels-last Conv is not an unpadded depthwise Conv")
    before = producer.get(conv.input[0])
    if before is None or before.op_type != "Transpose" or list(before.attribute[0].ints) != [0, 2, 3, 1]:
        problems.append(f"{conv.name}: channels-last Conv input is not Transpose [0, 2, 3, 1]")
    rqs = users(conv.output[0])
    if [n.op_type for n in rqs] != ["RequantShift"]:
        problems.append(f"{conv.name}: channels-last Conv is not followed by its RequantShift only")
        return problems
    back = users(rqs[0].output[0])
    if [n.op_type for n in back] != ["Transpose"] or list(back[0].attribute[0].ints) != [0, 3, 1, 2]:
        problems.append(f"{conv.name}: channels-last RequantShift is not followed by Transpose [0, 3, 1, 2] only")
    return problems


def assert_deeploy_structure(model, target):
    problems = deeploy_structure_problems(model, target)
    assert not problems, "\n".join(problems)


# ----- the checker catches each rule ------------------------------------------------------------------------------
def _tiny(rqs_attrs=None, conv_bias=False, trailing=None, opset=10, order_ok=True, domain="ai.deeploy"):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.INT8, [1, 2, 4, 4])
    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.int8), "w"),
             numpy_helper.from_array(np.array([3], np.int32), "mul"),
             numpy_helper.from_array(np.array([0], np.int32), "add")]
    conv_inputs = ["x", "w"]
    if conv_bias:
        inits.append(numpy_helper.from_array(np.zeros(2, np.int32), "b"))
        conv_inputs.append("b")
    conv = helper.make_node("Conv", conv_inputs, ["c"], "conv", kernel_shape=[1, 1], pads=[0, 0, 0, 0],
                            strides=[1, 1], dilations=[1, 1], group=1)
    rqs = helper.make_node("RequantShift", ["c", "mul", "add"], ["y"], "rqs", domain=domain)
    attrs = rqs_attrs or {"div": np.array([4], np.int64), "signed": np.array([1], np.int64),
                          "n_levels_out": np.array([256], np.int64)}
    for k, v in attrs.items():
        rqs.attribute.append(helper.make_attribute(k, numpy_helper.from_array(v, k) if isinstance(v, np.ndarray)
                                                   else v))
    nodes = [conv, rqs] if order_ok else [rqs, conv]
    vis = [helper.make_tensor_value_info("c", onnx.TensorProto.INT32, [1, 2, 4, 4])]
    out = "y"
    if trailing:
        inits.append(numpy_helper.from_array(np.array([1, 32], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["y", "shape"], ["z"], "reshape"))
        vis.append(helper.make_tensor_value_info("y", onnx.TensorProto.INT8, [1, 2, 4, 4]))
        out = "z"
    outs = [helper.make_tensor_value_info(out, onnx.TensorProto.INT8, [1, 32] if trailing else [1, 2, 4, 4])]
    g = helper.make_graph(nodes, "g", [x], outs, initializer=inits, value_info=vis)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("ai.deeploy", 1)])
    m.ir_version = 7
    return m


def test_checker_accepts_the_verified_form():
    assert deeploy_structure_problems(_tiny(), "deeploy-generic") == []


@pytest.mark.parametrize("kwargs, expected", [
    ({"conv_bias": True}, "Conv has a bias input"),
    ({"trailing": True}, "produced by Reshape"),
    ({"opset": 11}, "not 10"),
    ({"order_ok": False}, "not topologically sorted"),
    ({"rqs_attrs": {"div": 4, "signed": 1, "n_levels_out": 256}}, "attribute div is not a size-1 tensor"),
    ({"rqs_attrs": {"div": np.array([6], np.int64), "signed": np.array([1], np.int64),
                    "n_levels_out": np.array([256], np.int64)}}, "div 6 is not a power of two"),
])
def test_checker_catches_each_broken_rule(kwargs, expected):
    problems = deeploy_structure_problems(_tiny(**kwargs), "deeploy-generic")
    assert any(expected in p for p in problems), problems


def test_checker_catches_a_bare_or_int32_matmul_on_cortexm():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.INT8, [4, 16])
    ones = numpy_helper.from_array(np.ones((16, 1), np.int32), "ones")
    node = helper.make_node("MatMul", ["x", "ones"], ["y"], "pool")
    g = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [4, 1])],
                          initializer=[ones])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 10), helper.make_opsetid("ai.deeploy", 1)])
    m.ir_version = 7
    problems = deeploy_structure_problems(m, "deeploy-cortexm")
    assert "pool: MatMul constant ones is not 8-bit" in problems
    assert "pool: MatMul is not followed by its RequantShift (CMSIS fuses them)" in problems
    assert deeploy_structure_problems(m, "deeploy-generic") == ["pool: MatMul constant ones is not 8-bit"]


def test_checker_requires_the_channels_last_depthwise_form_on_cortexm():
    # the channels-first depthwise Conv that CMSIS rejects, then the same Conv written channels-last
    x = helper.make_tensor_value_info("x", onnx.TensorProto.INT8, [1, 2, 4, 4])
    inits = [numpy_helper.from_array(np.ones((2, 1, 3, 3), np.int8), "w"),
             numpy_helper.from_array(np.array([3, 4], np.int32).reshape(1, 2, 1, 1), "mul"),
             numpy_helper.from_array(np.zeros((1, 2, 1, 1), np.int32), "add")]
    rqs_attrs = [helper.make_attribute(k, numpy_helper.from_array(np.array([v], np.int64), k))
                 for k, v in (("div", 4), ("signed", 1), ("n_levels_out", 256))]
    conv = helper.make_node("Conv", ["x", "w"], ["c"], "dw", kernel_shape=[3, 3], pads=[0, 0, 0, 0], strides=[1, 1],
                            dilations=[1, 1], group=2)
    rqs = helper.make_node("RequantShift", ["c", "mul", "add"], ["y"], "rqs", domain="ai.deeploy")
    rqs.attribute.extend(rqs_attrs)

    def model(nodes, vis, out_shape):
        g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", onnx.TensorProto.INT8, out_shape)],
                              initializer=inits, value_info=vis)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 10), helper.make_opsetid("ai.deeploy", 1)])
        m.ir_version = 7
        return m

    nchw = model([conv, rqs], [helper.make_tensor_value_info("c", onnx.TensorProto.INT32, [1, 2, 2, 2])], [1, 2, 2, 2])
    assert deeploy_structure_problems(nchw, "deeploy-generic") == []
    assert deeploy_structure_problems(nchw, "deeploy-cortexm") == [
        "dw: depthwise Conv left for Deeploy to transpose (CMSIS rejects it)"]
    to_nhwc = helper.make_node("Transpose", ["x"], ["xt"], "to_nhwc", perm=[0, 2, 3, 1])
    conv.input[0] = "xt"
    conv.domain = "ai.deeploy"
    conv.attribute.append(helper.make_attribute("channels_first", 0))
    rqs.output[0] = "yt"
    back = helper.make_node("Transpose", ["yt"], ["y"], "to_nchw", perm=[0, 3, 1, 2])
    vis = [helper.make_tensor_value_info("xt", onnx.TensorProto.INT8, [1, 4, 4, 2]),
           helper.make_tensor_value_info("c", onnx.TensorProto.INT32, [1, 2, 2, 2]),
           helper.make_tensor_value_info("yt", onnx.TensorProto.INT8, [1, 2, 2, 2])]
    for t in inits[1:]:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(1, 1, 1, 2), t.name))
    nhwc = model([to_nhwc, conv, rqs, back], vis, [1, 2, 2, 2])
    assert deeploy_structure_problems(nhwc, "deeploy-cortexm") == []
    assert deeploy_structure_problems(nhwc, "deeploy-generic") == [
        "dw: channels_first = 0 Conv on a channels-first target"]
    nhwc.graph.node[1].domain = ""
    assert "dw: channels_first = 0 Conv is not in domain ai.deeploy" in deeploy_structure_problems(nhwc,
                                                                                                 "deeploy-cortexm")


# ----- Siracusa as it is deployed: DeeployTest's tiled flow -------------------------------------------------------
def test_checker_requires_the_tiled_siracusa_forms():
    def model(pads=(0, 0, 0, 0), div=4, signed=1, producer="Conv"):
        m = _tiny(rqs_attrs={"div": np.array([div], np.int64), "signed": np.array([signed], np.int64),
                             "n_levels_out": np.array([256], np.int64)})
        conv = m.graph.node[0]
        for a in conv.attribute:
            if a.name == "pads":
                a.ints[:] = list(pads)
        if producer == "Pad":  # the requant reads a Pad of the input instead of the Conv (a standalone requant)
            conv.op_type, conv.input[:] = "Pad", ["x"]
            del conv.attribute[:]
            conv.attribute.extend([helper.make_attribute("mode", "constant"),
                                   helper.make_attribute("pads", [0] * 8), helper.make_attribute("value", 0.0)])
            m.graph.value_info[0].type.tensor_type.elem_type = onnx.TensorProto.INT8
        return m

    assert deeploy_structure_problems(model(), "deeploy-siracusa") == []
    assert deeploy_structure_problems(model(pads=(1, 0, 1, 0)), "deeploy-siracusa") == [
        "conv: Conv pads [1, 0, 1, 0] are not equal on all four sides"]
    assert deeploy_structure_problems(model(pads=(1, 0, 1, 0)), "deeploy-generic") == []
    assert deeploy_structure_problems(model(div=1), "deeploy-siracusa") == [
        "rqs: div 1 on a platform whose kernels need div >= 2"]
    assert deeploy_structure_problems(model(signed=0), "deeploy-siracusa") == []  # fused with its Conv
    problems = deeploy_structure_problems(model(signed=0, producer="Pad"), "deeploy-siracusa")
    assert "conv: op Pad is not in deeploy-siracusa's list" in problems
    assert "conv: Pad on a platform whose tiled flow has none" in problems
    assert "rqs: unsigned RequantShift not fused with the kernel before it" in problems
    assert deeploy_structure_problems(model(signed=0, producer="Pad"), "deeploy-generic") == []


def test_checker_holds_qirc_json_to_the_debug_pass():
    m = _tiny()  # mul 3, add 0: the pass keeps it
    assert deeploy_structure_problems(m, "deeploy-siracusa", debug_pass_changes=[]) == []
    assert deeploy_structure_problems(m, "deeploy-siracusa", debug_pass_changes=["rqs"]) == [
        "rqs: listed as changed by the debug pass, which keeps it"]
    for add, changed in ((7, True), (3 * 1600, True), (3 * 1400, False)):  # not a multiple; a multiple too far out
        m.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array([add], np.int32), "add"))
        assert bool(deeploy_structure_problems(m, "deeploy-generic", debug_pass_changes=[])) == changed, add
        # CMSIS merges a Conv's requant and reads its add through the pass's expression itself: never listed
        assert deeploy_structure_problems(m, "deeploy-cortexm", debug_pass_changes=[]) == []


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["resnet8", "dscnn-s", "autoencoder-small",
                                  "mobilenetv2-vww"])
def test_examples_compile_to_the_tiled_siracusa_forms(name, tmp_path):
    """Every committed example compiles for deeploy-siracusa into what Deeploy's tiled flow takes (checked there by
    generating its code; see docs/targets.md): no Pad, equal pads on every Conv, no div = 1, every unsigned requant
    fused, and each requant's add left alone by DeeployTest's debug pass unless qirc.json says otherwise."""
    from qirc.driver import compile_model

    model_file = EXAMPLES / name / "model.onnx"
    if not model_file.exists():
        pytest.skip(f"{model_file} is not in this checkout")
    compile_model(str(model_file), "deeploy-siracusa", str(tmp_path / "out"), accuracy_samples=1)
    model = onnx.load(str(tmp_path / "out" / "network.onnx"))
    report = json.loads((tmp_path / "out" / "qirc.json").read_text())
    changed = report["deeploytest_debug_pass"]["changed_requants"]
    assert_deeploy_structure_with(model, "deeploy-siracusa", changed)
    ops = [n.op_type for n in model.graph.node]
    assert "Pad" not in ops
    # uint8 activations keep zero point 0, so that no add but a handful escapes the debug pass
    assert len(changed) <= 1, changed
    if name == "dscnn-s":  # its 10x4 stem pads [5, 1, 5, 1]: a one-hot depthwise Conv makes the rows
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        one_hot = [n for n in convs if np.count_nonzero(inits[n.input[1]]) == inits[n.input[1]].shape[0]]
        assert len(one_hot) == 1
        pads = {a.name: list(a.ints) for a in one_hot[0].attribute if a.name in ("pads", "kernel_shape")}
        assert pads == {"kernel_shape": [1, 9], "pads": [4, 4, 4, 4]}


def assert_deeploy_structure_with(model, target, debug_pass_changes):
    problems = deeploy_structure_problems(model, target, debug_pass_changes=debug_pass_changes)
    assert not problems, "\n".join(problems)


def assert_written_graph_exact(m, target, seeds, check=None):
    """Legalise `m` for `target`, verify and emit it; `check(model)` the written graph (default: the structure
    checker); read back, it must compute exactly what `m` computed before on the seeded random inputs.  Returns the
    ONNX model."""
    from qirc.backends.deeploy.emit import emit_onnx
    from qirc.backends.deeploy.legalize import legalize
    from qirc.frontends.deeploy import import_deeploy_onnx
    from qirc.qir import interpreter
    from qirc.qir.verifier import verify

    samples = [interpreter.random_inputs(m, s) for s in seeds]
    before = [interpreter.run(m, inputs) for inputs in samples]
    legalize(m, target)
    verify(m)
    model = emit_onnx(m, target)
    (check or (lambda written: assert_deeploy_structure(written, target)))(model)
    device = import_deeploy_onnx(model)
    for inputs, expected in zip(samples, before):
        got = interpreter.run(device, list(inputs.values()))
        for name, value in expected.items():
            np.testing.assert_array_equal(value, got[name])
    return model
