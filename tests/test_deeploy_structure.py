"""The structural rules of the Deeploy contract (DESIGN.md section 4), as one checker walking an emitted ONNX model,
and tests that the checker itself catches each broken rule.  test_deeploy_backend.py and test_deeploy_corpus.py run
it on everything qirc emits."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from qirc.backends.deeploy.targets import get_target

SHAPE_OPS = ("Reshape", "Flatten")


def deeploy_structure_problems(model: onnx.ModelProto, target) -> list:
    """Every broken rule of the Deeploy contract in `model`, as strings (empty when it is legal for `target`)."""
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
            if target.gemm_scalar_mul and [u.op_type for u in users] != ["RequantShift"]:
                problems.append(f"{node.name}: MatMul is not followed by its RequantShift (CMSIS fuses them)")
        if node.op_type == "Pad":
            if "pads" not in attrs or "mode" not in attrs or len(node.input) != 1:
                problems.append(f"{node.name}: Pad is not the Pad-2 attribute form")
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
