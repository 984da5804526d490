"""Brevitas 4-bit QuantReLU activations on every target: after signed normalisation a u4 tensor is stored as
i8<-128:-113> (zero point -128), the conv bias carries a zero-point term far beyond the accumulator's range, and the
ReLU's clip becomes RequantShifts around an offset.  Before: "requant_shift add does not fit int32" on siracusa and
cortexm (the requant was sized before the bias was folded into add), then a verifier error on the offset requant."""
import numpy as np
import pytest

from qirc.backends.deeploy.legalize import legalize
from qirc.backends.deeploy.targets import get_target
from qirc.lowering import lower_module
from qirc.lowering.testing import QuantBuilder
from qirc.qir import interpreter
from qirc.qir.types import u8
from qirc.qir.verifier import verify

TARGETS = ("deeploy-generic", "deeploy-siracusa", "deeploy-cortexm")


def four_bit_net():
    rng = np.random.default_rng(4)
    b = QuantBuilder()
    x = b.input("x", (1, 8, 6, 6), 0.05)
    for _ in range(2):
        y = b.conv(x, rng.integers(-20, 128, (8, 8, 3, 3)), 0.004, bias=rng.integers(-3000, 3000, 8),
                   pads=[1, 1, 1, 1])
        x = b.quant(b.op("onnx.Relu", [y]), 0.1, storage=u8, storage_min=0, storage_max=15)
    y = b.gemm(b.quant(b.op("onnx.Flatten", [x], {"axis": 1}), 0.1, storage=u8, storage_min=0, storage_max=15),
               rng.integers(-127, 128, (4, 288)), 0.01, bias=rng.integers(-500, 500, 4))
    b.output("y", b.quant(y, 0.5))
    return b.module


@pytest.mark.parametrize("target", TARGETS)
def test_four_bit_relu_network_legalises_for_every_target(target):
    t = get_target(target)
    module = four_bit_net()
    lower_module(module, signed=t.signed_normalize)
    before = module.clone()
    legalize(module, t)
    verify(module)
    for rq in module.walk("int.requant_shift"):
        mul, add = np.asarray(rq.attrs["mul"], np.int64), np.asarray(rq.attrs["add"], np.int64)
        assert np.all(np.abs(add) < 2 ** 31) and np.all(np.abs(mul) < 2 ** 31)
    for seed in range(3):
        inputs = interpreter.random_inputs(before, seed)
        expected = interpreter.run(before, inputs)["y"].astype(np.int64)
        got = interpreter.run(module, inputs)["y"].astype(np.int64)
        # CMSIS rounds add to a multiple of mul (stated in the graph): within a step there; exact elsewhere
        assert np.max(np.abs(got - expected)) <= (1 if target == "deeploy-cortexm" else 0)
