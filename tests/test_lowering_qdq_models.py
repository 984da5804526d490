"""lower-to-int on small QDQ models (QuantizeLinear/DequantizeLinear, as onnxruntime's quantizer writes them):
asymmetric u8 activations, per-channel weights, residual adds at different scales, pooling; checked against
onnxruntime on the model file, with and without signed normalisation."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx_builders import GraphBuilder, ort_run  # noqa: E402  (tests/ helper shared by the frontend tests)

from qirc.lowering import lower_module  # noqa: E402
from qirc.qir import interpreter  # noqa: E402
from qirc.lowering.testing import requant_step_errors, requant_unexplained  # noqa: E402
from qirc.qir.batch import rebatch  # noqa: E402


def qdq_net(seed=0):
    rng = np.random.default_rng(seed)
    g = GraphBuilder("qdq")
    x = g.qdq(g.input("x", [1, 3, 8, 8]), 0.02, 128, np.uint8)
    w1 = g.dequantize_linear(rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8),
                             rng.uniform(0.002, 0.01, 8).astype(np.float32), np.zeros(8, np.int8), axis=0)
    s1 = 0.02 * 0.005
    b1 = g.dequantize_linear(rng.integers(-4000, 4000, 8).astype(np.int32), np.float32(s1))
    # the bias scale differs from s_x * s_w[c] here: the lowering rounds b / (s_x * s_w[c]) once
    y = g.node("Conv", [x, w1, b1], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    y = g.qdq(g.node("Relu", [y]), 0.03, 0, np.uint8)
    w2 = g.dequantize_linear(rng.integers(-127, 128, (8, 8, 1, 1)).astype(np.int8), np.float32(0.01))
    z = g.qdq(g.node("Conv", [y, w2], kernel_shape=[1, 1]), 0.05, -10, np.int8)
    s = g.qdq(g.node("Add", [y, z]), 0.07, 3, np.int8)
    p = g.qdq(g.node("AveragePool", [s], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                     count_include_pad=1), 0.04, 5, np.int8)
    m = g.qdq(g.node("MaxPool", [p], kernel_shape=[2, 2], strides=[2, 2]), 0.04, 5, np.int8)
    gap = g.qdq(g.node("GlobalAveragePool", [m]), 0.01, 0, np.int8)
    f = g.node("Flatten", [gap], axis=1)
    w3 = g.dequantize_linear(rng.integers(-127, 128, (5, 8)).astype(np.int8), np.float32(0.02))
    out = g.qdq(g.node("Gemm", [f, w3], transB=1), 0.1, 0, np.int8)
    g.output(out, "y")
    return g.build()


@pytest.mark.parametrize("signed", [False, True])
def test_qdq_model_matches_onnxruntime(signed):
    from qirc.frontends.onnx import import_onnx

    model = qdq_net()
    module = import_onnx(model)
    qcast = module.inputs[0].results[0].users[0]
    in_q = qcast.results[0].type.quant
    lower_module(module, signed=signed)
    assert {op.dialect for op in module.ops()} == {"qir", "int"}
    if signed:
        assert in_q.zero_point == 128 and module.inputs[0].results[0].type.quant.zero_point == 0
        assert all("u8" not in str(v.type) for op in module.ops() for v in op.results)
    n = 64
    x = np.random.default_rng(1).uniform(-3, 3, (n, 3, 8, 8)).astype(np.float32)
    ref = np.concatenate([ort_run(model, {"x": x[i:i + 1]})["y"] for i in range(n)])
    in_type = module.inputs[0].results[0].type.quant
    stored = np.clip(np.rint(x / np.float32(in_type.scale)) + in_type.zero_point, in_type.storage_min,
                     in_type.storage_max).astype(np.int64)
    batched = rebatch(module, n)
    values = interpreter.run_values(batched, {"x": stored})
    out = batched.outputs[0].operands[0]
    got = (values[out] - out.type.quant.zero_point) * out.type.quant.scale
    steps = np.abs(got - ref) / out.type.quant.scale
    # each requant is within 1 step of its fake-quant twin; downstream layers may amplify a step (the final
    # scale is chosen so that the Gemm's gain stays below 1: then 4 steps bound the accumulated difference)
    assert steps.max() <= 4 + 1e-3
    assert np.mean(np.argmax(got, 1) == np.argmax(ref, 1)) >= 0.95
    assert max(requant_step_errors(batched, values).values()) <= 1
    assert not any(requant_unexplained(batched, values).values())
