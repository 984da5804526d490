"""qirc._onnx: onnx's protobufs and helpers without `import onnx` (whose ml_dtypes import costs about a second).

A compile must not import onnx's Python package, a later `import onnx` must still work fully and share the protobuf
classes, and every helper must build the very same messages as onnx's own.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper as real_helper, numpy_helper as real_numpy_helper

from qirc import _onnx
from qirc._onnx import helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "resnet8" / "model.onnx"


def test_a_compile_imports_neither_onnx_nor_ml_dtypes_and_onnx_still_works_afterwards(tmp_path):
    code = f"""
import json, sys
from qirc.cli import main
code = main([{str(EXAMPLE)!r}, "--target", "deeploy-siracusa", "-o", {str(tmp_path / "out")!r}])
before = {{m: m in sys.modules for m in ("onnx", "onnx.helper", "ml_dtypes", "torch")}}
import onnx
from onnx import helper
from qirc import _onnx
model = onnx.load({str(tmp_path / "out" / "network.onnx")!r})
onnx.checker.check_model(model)
inferred = onnx.shape_inference.infer_shapes(model)
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
onnx.checker.check_model(helper.make_model(graph))
print(json.dumps({{"exit": code, "before": before, "same_class": onnx.ModelProto is _onnx.ModelProto,
                  "loaded_is_model": isinstance(model, _onnx.ModelProto),
                  "pb2_attr": onnx.onnx_ml_pb2 is sys.modules["onnx.onnx_ml_pb2"],
                  "cpp_attr": onnx.onnx_cpp2py_export is sys.modules["onnx.onnx_cpp2py_export"],
                  "nodes": len(inferred.graph.node)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["exit"] == 0
    assert result["before"] == {"onnx": False, "onnx.helper": False, "ml_dtypes": False, "torch": False}
    assert result["same_class"] and result["loaded_is_model"] and result["pb2_attr"] and result["cpp_attr"]
    assert result["nodes"] > 10


ARRAYS = [np.arange(-3, 3, dtype=np.int8).reshape(2, 3), np.array([0, 255], np.uint8), np.array([1.5, -2], np.float32),
          np.array([[7]], np.int32), np.array(2 ** 40, np.int64), np.array([True, False]), np.array([1e300], np.float64),
          np.array([-300, 3], np.int16), np.array([65535], np.uint16), np.array([0.5], np.float16),
          np.array([4_000_000_000], np.uint32), np.array([2 ** 63], np.uint64), np.zeros((0, 3), np.float32),
          np.arange(6, dtype=np.int64).reshape(2, 3).T]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_tensors_convert_as_onnx_converts_them(array):
    mine, theirs = numpy_helper.from_array(array, "t"), real_numpy_helper.from_array(array, "t")
    assert mine.SerializeToString() == theirs.SerializeToString()
    back = numpy_helper.to_array(theirs)
    assert back.dtype == array.dtype and np.array_equal(back, array)


@pytest.mark.parametrize("data_type,field,values,dims", [
    (TensorProto.INT8, "int32_data", [-5, 7, 0], [3]), (TensorProto.UINT8, "int32_data", [255, 1], [2, 1]),
    (TensorProto.INT32, "int32_data", [-(2 ** 31)], [1]), (TensorProto.INT64, "int64_data", [2 ** 50, -1], [2]),
    (TensorProto.FLOAT, "float_data", [0.25, -1.0], [2]), (TensorProto.DOUBLE, "double_data", [1e-300], []),
    (TensorProto.FLOAT16, "int32_data", [15360], [1]), (TensorProto.INT16, "int32_data", [65535], [1]),
    (TensorProto.BOOL, "int32_data", [1, 0, 1], [3]), (TensorProto.UINT64, "uint64_data", [2 ** 64 - 1], [1]),
    (TensorProto.BFLOAT16, "int32_data", [16256], [1]),  # handed to onnx itself
])
def test_typed_field_tensors_read_as_onnx_reads_them(data_type, field, values, dims):
    tensor = TensorProto(name="t", data_type=data_type, dims=dims)
    getattr(tensor, field).extend(values)
    mine, theirs = numpy_helper.to_array(tensor), real_numpy_helper.to_array(tensor)
    assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
    assert mine.tobytes() == theirs.tobytes()


ATTRS = [3, np.int64(-2), True, 0.5, np.float32(1.25), "same_upper", b"raw", [1, 2, 3], (np.int64(4),), [0.5, 1],
         [1, 0.5], ["a", "b"], np.array([1, 2]), real_numpy_helper.from_array(np.ones(2, np.int32), "w")]


@pytest.mark.parametrize("value", ATTRS, ids=lambda v: type(v).__name__)
def test_attributes_nodes_and_their_values_are_onnx_s(value):
    mine, theirs = helper.make_attribute("a", value), real_helper.make_attribute("a", value)
    assert mine.SerializeToString() == theirs.SerializeToString()
    got, want = helper.get_attribute_value(theirs), real_helper.get_attribute_value(theirs)
    assert type(got) is type(want) and got == want
    node = dict(name="n", domain="ai.deeploy", z=value, b=None, a=1)
    assert (helper.make_node("Op", ["x", ""], ["y"], **node).SerializeToString()
            == real_helper.make_node("Op", ["x", ""], ["y"], **node).SerializeToString())
    # again, with other names: from the template the first node left (the names go into its slots)
    node["name"] = "m"
    assert (helper.make_node("Op", ["u", "v"], ["w"], **node).SerializeToString()
            == real_helper.make_node("Op", ["u", "v"], ["w"], **node).SerializeToString())


def test_graphs_models_and_value_infos_are_onnx_s(tmp_path):
    def build(h, nh):
        vis = [h.make_tensor_value_info(f"v{i}", TensorProto.INT8, shape)
               for i, shape in enumerate([[1, 3, 8, 8], [], None, ["N", None, 4]])]
        nodes = [h.make_node("Relu", ["v0"], ["v1"], name="r")]
        graph = h.make_graph(nodes, "g", vis[:1], vis[1:2], [nh.from_array(np.ones(3, np.int8), "w")],
                             value_info=vis[2:])
        return h.make_model(graph, producer_name="qirc",
                            opset_imports=[h.make_opsetid("", 13), h.make_opsetid("ai.deeploy", 1)])
    mine, theirs = build(helper, numpy_helper), build(real_helper, real_numpy_helper)
    assert mine.SerializeToString() == theirs.SerializeToString()
    path = tmp_path / "m.onnx"
    _onnx.save(mine, str(path))
    assert path.read_bytes() == theirs.SerializeToString()
    assert _onnx.load(str(path)) == onnx.load(str(path))
    assert (_onnx.shape_inference.infer_shapes(mine, data_prop=True).SerializeToString()
            == onnx.shape_inference.infer_shapes(theirs, data_prop=True).SerializeToString())


def test_checker_errors_are_onnx_s_classes():
    assert _onnx.checker.ValidationError is onnx.checker.ValidationError
    assert _onnx.shape_inference.InferenceError is onnx.shape_inference.InferenceError
    bad = real_helper.make_model(real_helper.make_graph([real_helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                                                        [real_helper.make_tensor_value_info("x", 1, [1])],
                                                        [real_helper.make_tensor_value_info("y", 1, [1])]))
    with pytest.raises(onnx.checker.ValidationError, match="NoSuchOp"):
        _onnx.checker.check_model(bad)


def test_a_truncated_file_is_a_decode_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(EXAMPLE.read_bytes()[:1000])
    with pytest.raises(Exception) as mine:
        _onnx.load(str(path))
    with pytest.raises(Exception) as theirs:
        onnx.load(str(path))
    assert type(mine.value) is type(theirs.value)
