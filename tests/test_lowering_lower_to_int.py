"""strip-quant-boundaries, check-integer-only and the lower-to-int pipeline pass."""
import numpy as np
import pytest

from qirc.lowering import lower_module
from qirc.lowering.strip_quant_boundaries import StripQuantBoundaries
from qirc.lowering.testing import QuantBuilder
from qirc.qir import interpreter
from qirc.qir.diagnostics import LoweringError
from qirc.qir.ir import input_op
from qirc.qir.passes import PassManager, get_pass, parse_pipeline
from qirc.qir.types import TensorType, f32
from qirc.qir.verifier import verify

rng = np.random.default_rng(4)


def mlp(final_quant=True):
    b = QuantBuilder()
    x = b.input("in", (2, 16), 1 / 64, 3)
    h = b.quant(b.op("onnx.Relu", [b.gemm(x, rng.integers(-127, 128, (8, 16)), 0.01, rng.integers(-99, 99, 8))]),
                1 / 32)
    y = b.gemm(h, rng.integers(-127, 128, (4, 8)), 0.02, rng.integers(-99, 99, 4))
    b.output("out", b.quant(y, 1 / 16) if final_quant else y)
    return b.module


def test_boundaries_become_integer_and_carry_scales():
    m = mlp()
    lower_module(m)
    verify(m)
    assert all(op.dialect in ("qir", "int") for op in m.ops())
    in_type = m.inputs[0].results[0].type
    assert str(in_type) == "tensor<2x16x!quant.uniform<i8:f32, 0.015625:3>>"
    out_type = m.outputs[0].operands[0].type
    assert out_type.quant.scale == 1 / 16 and out_type.storage.name == "i8"


def test_unquantized_final_gemm_keeps_int32_accumulator_output():
    m = mlp(final_quant=False)
    before = m.clone()
    lower_module(m)
    out = m.outputs[0].operands[0]
    assert out.owner.name == "int.gemm"
    assert out.type.quant.storage.name == "i32" and out.type.quant.scale == pytest.approx(0.02 / 32)
    x = interpreter.random_inputs(before, 0)["in"]
    q = np.clip(np.rint(x.astype(np.float64) * 64) + 3, -128, 127).astype(np.int64)
    ref = interpreter.run(before, {"in": x})["out"]
    got = interpreter.run(m, {"in": q})["out"] * (0.02 / 32)
    assert np.max(np.abs(got - ref)) <= 2 * 0.02 / 32 * 8  # float32 accumulation noise only


def test_strip_refuses_an_input_with_two_quantizer_types():
    b = QuantBuilder()
    x = input_op(b.module, "x", TensorType((1, 4), f32))
    b.output("a", b.dcast(b.qcast(x, b.qtype(0.1))))
    b.output("b", b.dcast(b.qcast(x, b.qtype(0.2))))
    with pytest.raises(LoweringError, match="different types"):
        StripQuantBoundaries().run(b.module)


def test_leftover_float_op_is_named():
    b = QuantBuilder()
    x = b.input("x", (1, 4), 0.1)
    s = b.op("onnx.Sigmoid", [x], loc="/head/Sigmoid")
    b.output("y", b.quant(s, 1 / 256))
    with pytest.raises(LoweringError) as err:
        lower_module(b.module)
    assert str(err.value).startswith("node '/head/Sigmoid' (onnx.Sigmoid): op onnx.Sigmoid could not be lowered")


def test_registered_pipeline_runs_under_the_pass_manager():
    assert get_pass("lower-to-int").summary().startswith("Lower a quant-level module")
    m = mlp()
    PassManager(parse_pipeline("lower-to-int,check-integer-only")).run(m)
    assert all(op.dialect in ("qir", "int") for op in m.ops())
