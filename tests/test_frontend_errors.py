"""Bad ONNX inputs: each is ONE FrontendError line naming the file, the node (where there is one) and the problem."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qirc.frontends.onnx import import_onnx
from qirc.qir.diagnostics import FrontendError

from onnx_builders import GraphBuilder


def import_error(model_or_bytes, tmp_path, name="bad.onnx") -> str:
    path = tmp_path / name
    if isinstance(model_or_bytes, (bytes, bytearray)):
        path.write_bytes(model_or_bytes)
    else:
        path.write_bytes(model_or_bytes.SerializeToString())
    with pytest.raises(FrontendError) as info:
        import_onnx(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path) + ": "), message
    return message


def small_quantized(opset=13):
    b = GraphBuilder("small")
    x = b.input("x", [1, 8])
    b.output(b.quant(x, 1 / 16, 0.0, prefix="/q"), "y")
    return b


# ----- files ----------------------------------------------------------------------------------------------------------
def test_truncated_file(tmp_path):
    data = small_quantized().build(13).SerializeToString()
    message = import_error(data[: len(data) // 2], tmp_path)
    assert "ONNX model" in message


def test_not_an_onnx_file(tmp_path):
    message = import_error(b"qir.module @m {\n}\n this is text, not protobuf", tmp_path)
    assert "ONNX model" in message


def test_missing_file(tmp_path):
    with pytest.raises(FrontendError, match="no such file"):
        import_onnx(tmp_path / "absent.onnx")


def test_opset_too_old(tmp_path):
    model = small_quantized().build(13)
    model.opset_import[0].version = 6
    message = import_error(model, tmp_path)
    assert "opset 6 is too old" in message


def test_external_data_outside_the_model_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes())
    b = GraphBuilder("ext")
    x = b.input("x", [8])
    b.output(b.node("Add", [x, b.const(np.zeros(8, np.float32), "w")], name="/add/Add"), "y")
    model = b.build(13)
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../secret.bin")
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(FrontendError) as info:
        import_onnx(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "outside the model's folder" in message and "'w'" in message


def test_external_data_inside_the_folder_loads(tmp_path):
    b = GraphBuilder("ext_ok")
    x = b.input("x", [8])
    b.output(b.node("Add", [x, b.const(np.arange(8, dtype=np.float32), "w")], name="/add/Add"), "y")
    model = b.build(13)
    w = model.graph.initializer[0]
    (tmp_path / "w.bin").write_bytes(w.raw_data)
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.bin")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    module = import_onnx(path)
    consts = [op.attrs["value"] for op in module.walk("qir.const")]
    assert any(np.array_equal(c, np.arange(8, dtype=np.float32)) for c in consts)


# ----- graph structure ------------------------------------------------------------------------------------------------
def test_cycle(tmp_path):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="/cyc/Add"),
             helper.make_node("Relu", ["a"], ["b"], name="/cyc/Relu")]
    graph = helper.make_graph(nodes, "cyc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])])
    message = import_error(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path)
    assert "cycle" in message and "/cyc/Add" in message


def test_duplicate_tensor_name(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="/a/Relu"),
             helper.make_node("Sigmoid", ["x"], ["y"], name="/b/Sigmoid")]
    graph = helper.make_graph(nodes, "dup", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    message = import_error(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path)
    assert "node '/b/Sigmoid'" in message and "'y' is defined twice" in message and "/a/Relu" in message


def test_dangling_input(tmp_path):
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="/add/Add")]
    graph = helper.make_graph(nodes, "dangling", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    message = import_error(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path)
    assert "node '/add/Add'" in message and "'ghost'" in message


def test_dynamic_shape(tmp_path):
    b = GraphBuilder("dyn")
    x = b.input("x", ["N", "C"])  # a lone dynamic batch dim is bound to 1 (test_frontend_foreign_inputs.py)
    b.output(b.node("Relu", [x], name="/relu/Relu"), "y")
    message = import_error(b.build(13), tmp_path)
    assert "'x'" in message and "dynamic shape ?x?" in message and "--input-shape x=1xN" in message


def test_unsupported_ops_are_listed_together(tmp_path):
    b = GraphBuilder("unsupported")
    x = b.input("x", [1, 4, 8])
    emb = b.input("ids", [1, 4], elem=TensorProto.INT64)
    w = b.const(np.zeros((1, 32, 8), np.float32))
    r = b.const(np.zeros((1, 32, 8), np.float32))
    h = b.node("LSTM", [x, w, r], name="/rnn/LSTM", hidden_size=8)
    table = b.const(np.zeros((10, 8), np.float32))
    g1 = b.node("Gather", [table, emb], name="/emb/Gather")
    g2 = b.node("Gather", [table, emb], name="/emb/Gather_1")
    b.output(h, "h")
    b.output(b.node("Add", [g1, g2], name="/add/Add"), "e")
    message = import_error(b.build(13, check=False), tmp_path)
    assert message.endswith("unsupported ops: LSTM (/rnn/LSTM), Gather (/emb/Gather, /emb/Gather_1)"), message


@pytest.mark.parametrize("op_type", ["BipolarQuant", "Trunc"])
def test_unsupported_qonnx_ops(tmp_path, op_type):
    b = GraphBuilder("qonnx_unsupported")
    x = b.input("x", [1, 8])
    inputs = [x, b.const(np.float32(1.0))] + ([b.const(np.float32(0)), b.const(np.float32(8)),
                                                b.const(np.float32(4))] if op_type == "Trunc" else [])
    b.output(b.node(op_type, inputs, name=f"/q/{op_type}", domain="qonnx.custom_op.general"), "y")
    model = b.build(13)
    model.opset_import.append(helper.make_opsetid("qonnx.custom_op.general", 1))
    message = import_error(model, tmp_path)
    assert f"unsupported ops: qonnx.custom_op.general.{op_type} (/q/{op_type})" in message


def test_qonnx_unsupported_rounding_mode(tmp_path):
    b = GraphBuilder("floor")
    x = b.input("x", [1, 8])
    b.output(b.qonnx(x, 0.1, 0.0, bits=8, rounding_mode="FLOOR", prefix="/q"), "y")
    message = import_error(b.build(13), tmp_path)
    assert "node '/q/Quant'" in message and "FLOOR" in message


# ----- quantization parameters ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.0, -0.5, float("nan"), float("inf")])
def test_bad_decomposed_scale(tmp_path, scale):
    b = GraphBuilder("scale")
    x = b.input("x", [1, 8])
    b.output(b.quant(x, scale, 0.0, prefix="/q"), "y")
    message = import_error(b.build(13), tmp_path)
    assert "node '/q/Div'" in message and "is not a finite positive number" in message


@pytest.mark.parametrize("scale", [0.0, -0.5, float("nan"), float("inf")])
def test_bad_quantize_linear_scale(tmp_path, scale):
    b = GraphBuilder("scale")
    x = b.input("x", [1, 8])
    b.output(b.qdq(x, scale, 0, prefix="/q"), "y")
    message = import_error(b.build(13), tmp_path)
    assert "node '/q/QuantizeLinear'" in message and "is not a finite positive number" in message


def test_non_constant_scale(tmp_path):
    b = GraphBuilder("dyn_scale")
    x = b.input("x", [1, 8])
    s = b.input("s", [])
    q = b.node("QuantizeLinear", [x, s, b.const(np.int8(0))], name="/q/QuantizeLinear")
    b.output(b.node("DequantizeLinear", [q, s, b.const(np.int8(0))], name="/q/DequantizeLinear"), "y")
    message = import_error(b.build(13), tmp_path)
    assert "node '/q/QuantizeLinear'" in message and "must be a constant" in message


@pytest.mark.parametrize("zero_point, problem", [(300.0, "outside the storage range"), (0.5, "is not an integer")])
def test_bad_decomposed_zero_point(tmp_path, zero_point, problem):
    b = GraphBuilder("zp")
    x = b.input("x", [1, 8])
    b.output(b.quant(x, 0.1, zero_point, -128, 127, prefix="/q"), "y")
    message = import_error(b.build(13), tmp_path)
    assert "node '/q/Add'" in message and problem in message


def test_zero_point_outside_clipped_range(tmp_path):
    b = GraphBuilder("zp_clip")
    x = b.input("x", [1, 8])
    b.output(b.qdq(x, 0.1, 100, clip=(-8, 7), prefix="/q"), "y")
    message = import_error(b.build(13), tmp_path)
    assert "node '/q/Clip'" in message and "zero point 100" in message


def test_per_axis_scale_length_mismatch(tmp_path):
    b = GraphBuilder("axis")
    x = b.input("x", [1, 4, 3, 3])
    b.output(b.qdq(x, np.full(3, 0.1, np.float32), np.zeros(3, np.int8), axis=1, prefix="/q"), "y")
    message = import_error(b.build(13, check=False), tmp_path)
    assert "node '/q/QuantizeLinear'" in message and "3 entries" in message and "axis 1" in message


def test_decomposed_per_channel_scale_mismatch(tmp_path):
    b = GraphBuilder("axis_dec")
    x = b.input("x", [1, 4, 3, 3])
    b.output(b.quant(x, np.full((1, 3, 1, 1), 0.1, np.float32), 0.0, prefix="/q"), "y")
    message = import_error(b.build(13, check=False), tmp_path)
    assert "node '/q/Div'" in message and "3 entries" in message


def test_blocked_quantization(tmp_path):
    b = GraphBuilder("blocked")
    x = b.input("x", [4, 8])
    s = b.const(np.full((4, 2), 0.1, np.float32))
    z = b.const(np.zeros((4, 2), np.int8))
    q = b.node("QuantizeLinear", [x, s, z], name="/q/QuantizeLinear", axis=1, block_size=4)
    b.output(b.node("DequantizeLinear", [q, s, z], name="/q/DequantizeLinear", axis=1, block_size=4), "y")
    message = import_error(b.build(21, check=False), tmp_path)
    assert "node '/q/QuantizeLinear'" in message and "block_size" in message


def test_integer_graph_input(tmp_path):
    b = GraphBuilder("int_in")
    x = b.input("x", [1, 8], elem=TensorProto.INT8)
    b.output(b.node("DequantizeLinear", [x, b.const(np.float32(0.1))], name="/dq/DequantizeLinear"), "y")
    message = import_error(b.build(13), tmp_path)
    assert "graph input 'x'" in message and "INT8" in message
