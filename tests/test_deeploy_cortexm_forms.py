"""cortex-m (CMSIS) forms for layers the issue-11 models have: global pools whose requant has gain 1 (a pool over a
1x1 map, as at the end of ResNet-18 at 32x32; a sum kept at its own scale), windowed average pooling."""
import numpy as np
import pytest

from qirc.backends.deeploy.legalize import legalize
from qirc.backends.deeploy.targets import get_target
from qirc.lowering import lower_module
from qirc.lowering.testing import QuantBuilder
from qirc.qir import interpreter
from qirc.qir.verifier import verify

TARGETS = ("deeploy-generic", "deeploy-siracusa", "deeploy-cortexm")


def pool_net(map_size: int, pool_scale: float, pool="global"):
    rng = np.random.default_rng(6)
    b = QuantBuilder()
    x = b.input("x", (1, 4, map_size + 3, map_size + 3), 0.05)
    y = b.quant(b.conv(x, rng.integers(-127, 128, (8, 4, 4, 4)), 0.003, bias=rng.integers(-900, 900, 8)), 0.08)
    if pool == "global":
        y = b.quant(b.op("onnx.GlobalAveragePool", [y]), pool_scale)
    else:
        y = b.quant(b.op("onnx.AveragePool", [y], {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0]}),
                    pool_scale)
    y = b.quant(b.op("onnx.Flatten", [y], {"axis": 1}), pool_scale)
    n = int(np.prod(y.type.shape[1:]))
    y = b.gemm(y, rng.integers(-127, 128, (5, n)), 0.01, bias=rng.integers(-300, 300, 5))
    b.output("y", b.quant(y, 0.2))
    return b.module


def legalised(module, target):
    t = get_target(target)
    lower_module(module, signed=t.signed_normalize)
    before = module.clone()
    legalize(module, t)
    verify(module)
    for seed in range(3):
        inputs = interpreter.random_inputs(before, seed)
        expected = interpreter.run(before, inputs)["y"].astype(np.int64)
        got = interpreter.run(module, inputs)["y"].astype(np.int64)
        # CMSIS rounds add to a multiple of mul (stated in the graph): within a step there; exact elsewhere
        assert np.max(np.abs(got - expected)) <= (1 if target == "deeploy-cortexm" else 0)
    return module


@pytest.mark.parametrize("target", TARGETS)
def test_global_pool_over_one_element_is_no_op(target):
    module = legalised(pool_net(1, 0.08), target)
    assert not module.walk("int.matmul")
    assert [op.operands[0].owner.name for op in module.walk("int.conv")] == ["qir.input"]  # no all-ones pool conv


def test_gain_one_pool_requant_after_matmul_is_mul_div_one_on_cortexm():
    """A 2x2 global sum kept at scale s / 4: the requant after the pool's MatMul has gain exactly 1, which the CMSIS
    merge takes only as mul = div = 1 (Q31 multiplier 2^30, shift 1); 2^k / 2^k overflowed it."""
    module = legalised(pool_net(2, 0.02), "deeploy-cortexm")
    (mm,) = module.walk("int.matmul")
    rq = next(op for op in module.walk("int.requant_shift") if op.operands[0] is mm.result)
    assert int(np.asarray(rq.attrs["mul"])) == 1 and int(rq.attrs["div"]) == 1


@pytest.mark.parametrize("target", TARGETS)
def test_windowed_average_pool_is_an_all_ones_depthwise_conv(target):
    module = legalised(pool_net(4, 0.08, pool="window"), target)
    pool = [op for op in module.walk("int.conv") if int(op.attrs["group"]) > 1]
    assert len(pool) == 1 and pool[0].attrs["kernel_shape"] == [2, 2]
    assert np.all(np.asarray(pool[0].operands[1].owner.attrs["value"]) == 1)


def per_channel_linear_net():
    rng = np.random.default_rng(8)
    b = QuantBuilder()
    x = b.input("x", (1, 12), 0.05)
    y = b.gemm(x, rng.integers(-127, 128, (6, 12)), rng.uniform(0.002, 0.02, 6), bias=rng.integers(-300, 300, 6))
    y = b.quant(b.op("onnx.Relu", [y]), 0.05)
    y = b.gemm(y, rng.integers(-127, 128, (4, 6)), rng.uniform(0.002, 0.02, 4), bias=rng.integers(-300, 300, 4))
    b.output("y", b.quant(y, 0.1))
    return b.module


def test_per_channel_gemm_requant_is_a_1x1_conv_on_cortexm():
    """RequantizedGemm takes one multiplier: a per-channel Linear (every onnxruntime per-channel model) is the same
    product as a 1x1 Conv, whose requant is per channel; at the graph's end a clip-only RequantShift follows the
    reshape back (Deeploy leaves an output written by a Reshape zero)."""
    module = legalised(per_channel_linear_net(), "deeploy-cortexm")
    assert not module.walk("int.gemm")
    names = [op.name for op in module.ops() if op.name != "qir.const"]
    # (the ReLU between the layers is cortex-m's signed RequantShift pair, as for any ReLU into int8 there)
    assert names[:4] == ["qir.input", "int.reshape", "int.conv", "int.requant_shift"]
    assert names[-6:] == ["int.reshape", "int.conv", "int.requant_shift", "int.reshape", "int.requant_shift",
                          "qir.output"]
    assert all(conv.attrs["kernel_shape"] == [1, 1] for conv in module.walk("int.conv"))
    first = module.walk("int.requant_shift")[0]
    assert np.asarray(first.attrs["mul"]).shape == (1, 6, 1, 1)
    last = module.walk("int.requant_shift")[-1]
    assert int(np.asarray(last.attrs["mul"]).reshape(-1)[0]) == 1 and int(last.attrs["div"]) == 1
