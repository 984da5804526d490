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
                    ok = shape == [1] or (shape == [] and nm == "mul" and target.gemm_scalar_mul) or (rank == 4 and len(shape) in (3, 4) and shape[-2:] == [1, 1] and
                                          (len(shape) == 3 or shape[0] == 1)) or (rank == 2 and len(shape) == 1)
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
            if not target.depthwise_conv and "group" in attrs and attrs["group"].i > 1:
                problems.append(f"{node.name}: depthwise Conv on a platform that rejects it")
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
