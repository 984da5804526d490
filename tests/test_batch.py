"""qirc.qir.batch: many batch-1 samples in one interpreter call, with the same numbers as one call per sample."""
import numpy as np

from qirc.qir import interpreter
from qirc.qir.batch import rebatch, run_samples
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.types import UniformQuantType, f32, i8, tensor


def _conv_one_output_channel() -> Module:
    """x -> qcast -> dcast -> Conv with ONE output channel (its dequantized weight has leading dim 1) -> output."""
    m = Module("one_channel")
    q8 = UniformQuantType.per_tensor(i8, 0.05, 3)
    x = input_op(m, "x", tensor([1, 2, 4, 4], f32))
    q = m.create("quant.qcast", [x], [tensor([1, 2, 4, 4], q8)], {"rounding": "add_round"}, "q").result
    dq = m.create("quant.dcast", [q], [tensor([1, 2, 4, 4], f32)], loc="dq").result
    w = const_op(m, np.arange(18, dtype=np.int8).reshape(1, 2, 3, 3) - 9,
                 tensor([1, 2, 3, 3], UniformQuantType.per_tensor(i8, 0.02, 0)), "w")
    wd = m.create("quant.dcast", [w], [tensor([1, 2, 3, 3], f32)], loc="wd").result
    y = m.create("onnx.Conv", [dq, wd], [tensor([1, 1, 4, 4], f32)],
                 {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1], "dilations": [1, 1]}, "conv")
    output_op(m, "y", y.result)
    return m


def test_rebatch_keeps_constant_derived_values_and_batches_the_rest():
    batched = rebatch(_conv_one_output_channel(), 5)
    shapes = {op.loc: op.results[0].type.shape for op in batched.ops() if op.results}
    assert shapes["wd"] == (1, 2, 3, 3)          # the dequantized weight is not a batch
    assert shapes["dq"] == (5, 2, 4, 4) and shapes["conv"] == (5, 1, 4, 4)


def test_run_samples_equals_one_call_per_sample():
    m = _conv_one_output_channel()
    rng = np.random.default_rng(0)
    samples = [{"x": rng.normal(size=(1, 2, 4, 4)).astype(np.float32)} for _ in range(7)]
    batched = run_samples(m, samples)
    for s, got in zip(samples, batched):
        np.testing.assert_array_equal(got["y"], interpreter.run(m, s)["y"])


def test_run_samples_falls_back_when_the_batch_axis_is_folded_away():
    # Reshape [1, 6] -> [2, 3] folds the batch axis: the batched call fails its shape check, so run_samples
    # must run the samples one by one and still return every result
    m = Module("fold")
    x = input_op(m, "x", tensor([1, 6], f32))
    r = m.create("onnx.Reshape", [x], [tensor([2, 3], f32)], {"shape": [2, 3]}, "reshape")
    output_op(m, "y", r.result)
    samples = [{"x": np.arange(6, dtype=np.float32).reshape(1, 6) + k} for k in range(3)]
    out = run_samples(m, samples)
    assert [o["y"].shape for o in out] == [(2, 3)] * 3
    np.testing.assert_array_equal(out[2]["y"], np.arange(6, dtype=np.float32).reshape(2, 3) + 2)
