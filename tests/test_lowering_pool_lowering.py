"""pool-lowering: average pools become exact integer sums; the requant divides by any element count."""
import pytest

from qirc.lowering.dequant_push import push_dequants
from qirc.lowering.pool_lowering import PoolLowering
from qirc.lowering.requant_fusion import fuse_requants
from qirc.lowering.testing import QuantBuilder, requant_step_errors
from qirc.qir import interpreter
from qirc.qir.diagnostics import LoweringError
from qirc.qir.passes import translation_validate
from qirc.qir.types import u8
from qirc.qir.verifier import verify


def lower(b):
    before = b.module.clone()
    PoolLowering().run(b.module)
    verify(b.module)
    mid = b.module.clone()
    push_dequants(b.module)
    fuse_requants(b.module)
    verify(b.module)
    return before, mid, b.module


def test_global_average_pool_count_9_is_exact_sum_then_requant():
    b = QuantBuilder()
    x = b.input("x", (2, 5, 3, 3), 0.1, 3)
    g = b.op("onnx.GlobalAveragePool", [x])
    b.output("y", b.quant(g, 0.05, 1))
    before, mid, m = lower(b)
    s = mid.walk("int.reduce_sum")[0]
    assert s.attrs == {"axes": [2, 3], "keepdims": 1}
    q = s.results[0].type.quant
    assert q.scale == pytest.approx(0.1 / 9) and q.zero_point == 27
    # the sum itself is exact: dcast(sum) equals the float mean up to float32 rounding
    assert translation_validate(before, mid)[0]["max_abs_diff"] < 1e-5
    assert [o.name for o in m.walk("int.")] == ["int.reduce_sum", "int.requant_shift"]
    for seed in range(3):
        errors = requant_step_errors(m, interpreter.run_values(m, interpreter.random_inputs(m, seed)))
        assert max(errors.values()) <= 1


def test_reduce_mean_without_keepdims():
    b = QuantBuilder()
    x = b.input("x", (1, 4, 5, 7), 0.02, storage=u8)
    r = b.op("onnx.ReduceMean", [x], {"axes": [2, 3], "keepdims": 0})
    b.output("y", b.quant(r, 0.02, storage=u8))
    before, mid, m = lower(b)
    assert mid.walk("int.reduce_sum")[0].results[0].type.shape == (1, 4)
    assert translation_validate(before, m)[0]["max_abs_diff"] <= 0.02 * (1 + 1e-5)


def test_average_pool_pads_with_zero_point():
    b = QuantBuilder()
    x = b.input("x", (1, 2, 6, 6), 0.1, -5)
    p = b.op("onnx.AveragePool", [x], {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1],
                                        "count_include_pad": 1})
    b.output("y", b.quant(p, 0.1, -5))
    before, mid, m = lower(b)
    pad = mid.walk("int.pad")[0]
    assert pad.attrs["value"] == -5
    assert mid.walk("int.sumpool")[0].attrs["pads"] == [0, 0, 0, 0]
    assert translation_validate(before, mid)[0]["max_abs_diff"] < 1e-5
    assert translation_validate(before, m)[0]["max_abs_diff"] <= 0.1 * (1 + 1e-5)


def test_average_pool_with_varying_count_is_refused():
    b = QuantBuilder()
    x = b.input("x", (1, 2, 6, 6), 0.1)
    b.op("onnx.AveragePool", [x], {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1],
                                    "count_include_pad": 0}, loc="/pool/AveragePool")
    with pytest.raises(LoweringError, match=r"'/pool/AveragePool'.*count_include_pad=0"):
        PoolLowering().run(b.module)
