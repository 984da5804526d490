"""Token data movement of a transformer at the integer level: the packed in-projection's Slices, the class token's
Gather (x[:, 0]) and its Concat lower to int.slice / int.gather / int.concat on stored integers (dequant-push), and
are emitted for Deeploy as Slice / Gather (constant parameters) / Concat; the emitted graph, read back and run,
gives the quant-level model's output exactly (pure data movement and one requant)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qirc.frontends.onnx import import_onnx
from qirc.qir.interpreter import random_inputs, run
from qirc.qir.passes import PassManager, parse_pipeline

driver = pytest.importorskip("qirc.driver")


def _qdq(nodes, inits, x, scale, zp, name):
    """QuantizeLinear -> DequantizeLinear of `x` (int8, zero point zp); returns the dequantized tensor name."""
    inits[f"{name}_s"] = np.float32(scale)
    inits[f"{name}_z"] = np.int8(zp)
    nodes += [helper.make_node("QuantizeLinear", [x, f"{name}_s", f"{name}_z"], [f"{name}_q"], name=f"/{name}/Q"),
              helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"],
                               name=f"/{name}/DQ")]
    return f"{name}_dq"


def _token_model(class_token: bool):
    """x [1, 6, 12] -> quantize -> Slice of features 4:8 (k out of q|k|v) [-> Concat(class token, tokens)] ->
    Gather token 0 -> requantize -> y."""
    nodes, inits = [], {}
    x = _qdq(nodes, inits, "x", 0.05, 0, "in")
    inits.update(starts=np.array([4], np.int64), ends=np.array([8], np.int64), axes=np.array([2], np.int64))
    nodes.append(helper.make_node("Slice", [x, "starts", "ends", "axes"], ["k"], name="/attn/Slice_1"))
    tokens = "k"
    if class_token:
        inits["cls_q"] = np.array([[[12, -7, 100, -128]]], np.int8)
        nodes.append(helper.make_node("DequantizeLinear", ["cls_q", "in_s", "in_z"], ["cls"], name="/cls/DQ"))
        nodes.append(helper.make_node("Concat", ["cls", "k"], ["cat"], axis=1, name="/Concat"))
        tokens = "cat"
    inits["zero"] = np.array(0, np.int64)
    nodes.append(helper.make_node("Gather", [tokens, "zero"], ["first"], axis=1, name="/Gather"))
    # 0.05 / 0.07 = 5 / 7: no stored input lands on a rounding tie of the requant (RequantShift rounds ties up,
    # QuantizeLinear to even)
    y = _qdq(nodes, inits, "first", 0.07, 3, "out")
    nodes.append(helper.make_node("Identity", [y], ["y"], name="/out"))
    graph = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_slice_and_gather_lower_to_integer_data_movement():
    module = import_onnx(_token_model(class_token=True))
    feeds = [random_inputs(module, seed) for seed in range(3)]
    expected = [run(module, f)["y"] for f in feeds]
    PassManager(parse_pipeline("lower-to-int")).run(module)
    ops = Counter(op.name for op in module.ops())
    assert ops["int.slice"] == 1 and ops["int.gather"] == 1 and ops["int.concat"] == 1
    assert ops["int.requant_shift"] == 1 and not any(name.startswith(("onnx.", "quant.")) for name in ops)
    (gather,) = module.walk("int.gather")
    assert gather.attr("indices") == [0] and gather.attr("scalar") and gather.results[0].type.shape == (1, 4)
    out_type = module.outputs[0].operands[0].type.quant
    for f, want in zip(feeds, expected):
        x = f["x"]
        q = np.clip(np.rint(x / np.float32(0.05)), -128, 127).astype(np.int64)
        got = run(module, {"x": q})["y"]
        np.testing.assert_array_equal(got, np.rint(want / np.float32(0.07)).astype(np.int64) + 3)
        assert out_type.zero_point == 3


@pytest.mark.parametrize("target,class_token", [("deeploy-generic", True), ("deeploy-generic", False),
                                                ("deeploy-cortexm", False), ("deeploy-siracusa", False),
                                                ("deeploy-siracusa", True)])
def test_token_ops_are_emitted_for_deeploy(tmp_path, target, class_token):
    path = tmp_path / "tokens.onnx"
    onnx.save(_token_model(class_token), str(path))
    summary = driver.compile_model(str(path), target, tmp_path / "out")
    (report,) = summary.accuracy["outputs"]
    assert report["max_error_steps"] < 1e-3  # exact up to the float arithmetic of the comparison
    emitted = onnx.load(str(tmp_path / "out" / "network.onnx"))
    ops = Counter(n.op_type for n in emitted.graph.node)
    assert ops["Slice"] == 1 and ops["Gather"] == 1 and ops["Concat"] == int(class_token)
    inits = {t.name: numpy_helper.to_array(t) for t in emitted.graph.initializer}
    (gather,) = [n for n in emitted.graph.node if n.op_type == "Gather"]
    assert inits[gather.input[1]].tolist() == 0 and inits[gather.input[1]].dtype == np.int64  # one constant index
    (slice_,) = [n for n in emitted.graph.node if n.op_type == "Slice"]
    assert [inits[i].tolist() for i in slice_.input[1:]] == [[4], [8], [2], [1]]


def _token_mean_model(shape, axis):
    """x -> quantize -> ReduceMean over the token axis (keepdims 0) -> requantize -> dense 8 -> 4 (the head)."""
    nodes, inits = [], {}
    x = _qdq(nodes, inits, "x", 0.05, 0, "in")
    nodes.append(helper.make_node("ReduceMean", [x], ["mean"], axes=[axis], keepdims=0, name="/ReduceMean"))
    pooled = _qdq(nodes, inits, "mean", 0.03, 0, "pool")
    rng = np.random.default_rng(0)
    inits.update(w_q=rng.integers(-127, 128, (4, 8)).astype(np.int8), w_s=np.float32(0.01), w_z=np.int8(0),
                 b_q=rng.integers(-500, 500, 4).astype(np.int32), b_s=np.float32(0.03 * 0.01), b_z=np.int32(0))
    nodes += [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="/head/w"),
              helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], name="/head/b"),
              helper.make_node("Gemm", [pooled, "w", "b"], ["logits"], transB=1, name="/head/Gemm")]
    y = _qdq(nodes, inits, "logits", 0.02, 0, "out")
    nodes.append(helper.make_node("Identity", [y], ["y"], name="/out"))
    out_shape = [1, 4]
    graph = helper.make_graph(nodes, "mean", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("target", ["deeploy-generic", "deeploy-cortexm", "deeploy-siracusa"])
@pytest.mark.parametrize("shape,axis", [((16, 1, 8), 0), ((1, 16, 8), 1)])
def test_mean_over_tokens_is_emitted_as_a_spatial_sum(tmp_path, target, shape, axis):
    """A transformer's mean over tokens ([L, N, E] over L, or [N, L, E] over L) is a sum over a non-spatial axis of
    a rank-3 tensor: legalisation writes it as the NCHW spatial sum each platform has a form for."""
    path = tmp_path / "mean.onnx"
    onnx.save(_token_mean_model(shape, axis), str(path))
    summary = driver.compile_model(str(path), target, tmp_path / "out")
    (report,) = summary.accuracy["outputs"]
    assert report["max_error_steps"] <= 1 + 1e-4
    emitted = onnx.load(str(tmp_path / "out" / "network.onnx"))
    ops = [n.op_type for n in emitted.graph.node]
    assert ops[:2] == ["Transpose", "Reshape"]  # tokens moved last, then [1, features, tokens, 1]
    assert {"Conv", "MatMul"} & set(ops)  # the platform's sum-pool form: depthwise ones Conv or ones MatMul


def _patch_embedding_model():
    """A vision transformer's patch embedding: Conv 4x4 stride 4 -> Reshape (flatten) -> Transpose -> token
    quantizer, then a dense layer on the tokens (MatMul with constant weights) and its quantizer."""
    nodes, inits = [], {}
    x = _qdq(nodes, inits, "x", 0.02, 0, "in")
    rng = np.random.default_rng(1)
    inits.update(cw_q=rng.integers(-127, 128, (6, 3, 4, 4)).astype(np.int8), cw_s=np.float32(0.01),
                 cw_z=np.int8(0), cb_q=rng.integers(-300, 300, 6).astype(np.int32), cb_s=np.float32(0.02 * 0.01),
                 cb_z=np.int32(0), flat=np.array([1, 6, 4], np.int64),
                 mw_q=rng.integers(-127, 128, (6, 5)).astype(np.int8), mw_s=np.float32(0.02), mw_z=np.int8(0))
    nodes += [helper.make_node("DequantizeLinear", ["cw_q", "cw_s", "cw_z"], ["cw"], name="/embed/w"),
              helper.make_node("DequantizeLinear", ["cb_q", "cb_s", "cb_z"], ["cb"], name="/embed/b"),
              helper.make_node("Conv", [x, "cw", "cb"], ["patches"], kernel_shape=[4, 4], strides=[4, 4],
                               name="/embed/Conv"),
              helper.make_node("Reshape", ["patches", "flat"], ["flat_patches"], name="/Reshape"),
              helper.make_node("Transpose", ["flat_patches"], ["tokens"], perm=[0, 2, 1], name="/Transpose")]
    t = _qdq(nodes, inits, "tokens", 0.05, 0, "token_quant")
    nodes += [helper.make_node("DequantizeLinear", ["mw_q", "mw_s", "mw_z"], ["mw"], name="/fc/w"),
              helper.make_node("MatMul", [t, "mw"], ["h"], name="/fc/MatMul")]
    y = _qdq(nodes, inits, "h", 0.3, 0, "out")
    nodes.append(helper.make_node("Identity", [y], ["y"], name="/out"))
    graph = helper.make_graph(nodes, "patches", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("target", ["deeploy-generic", "deeploy-cortexm", "deeploy-siracusa"])
def test_patch_embedding_requant_moves_before_the_transpose(tmp_path, target):
    path = tmp_path / "patches.onnx"
    onnx.save(_patch_embedding_model(), str(path))
    summary = driver.compile_model(str(path), target, tmp_path / "out")
    (report,) = summary.accuracy["outputs"]
    assert report["max_error_steps"] <= 1 + 1e-4
    ops = [n.op_type for n in onnx.load(str(tmp_path / "out" / "network.onnx")).graph.node]
    # the Conv is fused with its requant on every platform; the tokens move as 8-bit values
    assert ops.index("RequantShift") == ops.index("Conv") + 1 and ops.index("Transpose") > ops.index("RequantShift")


def _token_dense_model(tokens_first: bool, per_channel: bool):
    """A dense layer on tokens as Brevitas exports it: MatMul(x [1, L, K] or [L, 1, K], W^T) -> Add(bias) ->
    quantizer, then the class token (Gather token 0)."""
    nodes, inits = [], {}
    shape = [5, 1, 8] if tokens_first else [1, 5, 8]
    x = _qdq(nodes, inits, "x", 0.04, 0, "in")
    rng = np.random.default_rng(2)
    w_scale = np.linspace(0.005, 0.02, 6).astype(np.float32) if per_channel else np.float32(0.01)
    inits.update(w_q=rng.integers(-127, 128, (8, 6)).astype(np.int8), w_s=w_scale,
                 w_z=np.zeros(6, np.int8) if per_channel else np.int8(0),
                 b_q=rng.integers(-2000, 2000, 6).astype(np.int32), b_s=(np.float32(0.04) * w_scale),
                 b_z=np.zeros(6, np.int32) if per_channel else np.int32(0))
    axis = {"axis": 1} if per_channel else {}
    nodes += [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="/fc/w", **axis),
              helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], name="/fc/b",
                               **({"axis": 0} if per_channel else {})),
              helper.make_node("MatMul", [x, "w"], ["mm"], name="/fc/MatMul"),
              helper.make_node("Add", ["b", "mm"], ["h"], name="/fc/Add")]
    h = _qdq(nodes, inits, "h", 0.05, 0, "out")
    inits["zero"] = np.array(0, np.int64)
    nodes.append(helper.make_node("Gather", [h, "zero"], ["y"], axis=0 if tokens_first else 1, name="/Gather"))
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("target", ["deeploy-generic", "deeploy-cortexm", "deeploy-siracusa"])
# (per-channel weights: add-rescale does not yet lower the bias Add of a per-axis accumulator, on any rank)
@pytest.mark.parametrize("tokens_first,per_channel", [(False, False), (True, False)])
def test_dense_layer_on_tokens_is_a_2d_matmul(tmp_path, target, tokens_first, per_channel):
    path = tmp_path / "dense.onnx"
    onnx.save(_token_dense_model(tokens_first, per_channel), str(path))
    summary = driver.compile_model(str(path), target, tmp_path / "out")
    (report,) = summary.accuracy["outputs"]
    assert report["max_error_steps"] <= 1 + 1e-4
    emitted = onnx.load(str(tmp_path / "out" / "network.onnx"))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in emitted.graph.value_info}
    linear = [n for n in emitted.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert len(linear) == 1 and shapes[linear[0].output[0]] == [5, 6]  # tokens x features


def _class_token_position_model():
    """KWT's embedding: Concat(class token, tokens) + positional embedding (constants quantized on their own grids)
    -> requantize -> class token out (Gather)."""
    nodes, inits = [], {}
    x = _qdq(nodes, inits, "x", 0.05, 0, "in")
    rng = np.random.default_rng(4)
    inits.update(cls_q=rng.integers(-128, 128, (1, 1, 8)).astype(np.int8),
                 pos_q=rng.integers(-128, 128, (1, 7, 8)).astype(np.int8), pos_s=np.float32(0.011),
                 pos_z=np.int8(0), zero=np.array(0, np.int64))
    nodes += [helper.make_node("DequantizeLinear", ["cls_q", "in_s", "in_z"], ["cls"], name="/cls/DQ"),
              helper.make_node("Concat", ["cls", x], ["cat"], axis=1, name="/Concat"),
              helper.make_node("DequantizeLinear", ["pos_q", "pos_s", "pos_z"], ["pos"], name="/pos/DQ"),
              helper.make_node("Add", ["cat", "pos"], ["emb"], name="/Add")]
    e = _qdq(nodes, inits, "emb", 0.07, 0, "embed_quant")
    nodes.append(helper.make_node("Gather", [e, "zero"], ["y"], axis=1, name="/Gather"))
    graph = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("target", ["deeploy-generic", "deeploy-cortexm"])
def test_class_token_and_positions(tmp_path, target):
    """On cortex-m, which has no Concat, the class token is a zero Pad of the tokens plus a constant (rule
    concat-as-pads): exact."""
    path = tmp_path / "cls.onnx"
    onnx.save(_class_token_position_model(), str(path))
    summary = driver.compile_model(str(path), target, tmp_path / "out")
    (report,) = summary.accuracy["outputs"]
    assert report["max_error_steps"] <= 1 + 1e-4
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "out" / "network.onnx")).graph.node)
    if target == "deeploy-cortexm":
        assert ops["Concat"] == 0 and ops["Pad"] == 1
    else:
        assert ops["Concat"] == 1


def test_siracusa_refuses_a_transformer_for_its_layernorm_first(tmp_path):
    """Positional embedding then LayerNorm: Siracusa's refusal names the missing integer LayerNorm kernel (not the
    positional Add, which another rule would refuse later)."""
    nodes, inits = [], {}
    x = _qdq(nodes, inits, "x", 0.05, 0, "in")
    rng = np.random.default_rng(5)
    inits.update(pos_q=rng.integers(-128, 128, (1, 6, 8)).astype(np.int8), pos_s=np.float32(0.011),
                 pos_z=np.int8(0), gamma=rng.uniform(0.5, 1.5, 8).astype(np.float32),
                 beta=rng.uniform(-0.1, 0.1, 8).astype(np.float32))
    nodes += [helper.make_node("DequantizeLinear", ["pos_q", "pos_s", "pos_z"], ["pos"], name="/pos/DQ"),
              helper.make_node("Add", [x, "pos"], ["emb"], name="/Add")]
    e = _qdq(nodes, inits, "emb", 0.07, 0, "embed_quant")
    nodes.append(helper.make_node("LayerNormalization", [e, "gamma", "beta"], ["ln"], axis=-1, name="/ln"))
    y = _qdq(nodes, inits, "ln", 0.03, 0, "ln_quant")
    nodes.append(helper.make_node("Identity", [y], ["y"], name="/out"))
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "ln.onnx"
    onnx.save(model, str(path))
    from qirc.qir.diagnostics import BackendError
    with pytest.raises(BackendError, match=r"node '/ln' \(int.ilayernorm\): .*Siracusa has no integer LayerNorm"):
        driver.compile_model(str(path), "deeploy-siracusa", tmp_path / "out")
    assert not (tmp_path / "out").exists()
