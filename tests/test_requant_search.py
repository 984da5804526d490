"""choose_requant's per-tensor search (Python integers over the range's extremes) gives exactly what its array search
gives: the same shift, mul, add and error bound, and the same refusals."""
from __future__ import annotations

import numpy as np
import pytest

from qirc.qir.diagnostics import LoweringError
from qirc.lowering.numerics import choose_requant


def outcome(multiplier, zero_in, zero_out, lo, hi, out, **kw):
    try:
        p = choose_requant(multiplier, zero_in, zero_out, lo, hi, *out, **kw)
    except LoweringError as e:
        return str(e)
    return p.shift, p.mul.reshape(-1).tolist(), p.add.reshape(-1).tolist(), p.error_steps


def both(m, zero_in, zero_out, lo, hi, out, **kw):
    """(per-tensor search, array search): a multiplier of two equal channels takes the array search."""
    scalar = outcome(m, zero_in, zero_out, lo, hi, out, **kw)
    arrays = outcome(np.array([m, m]), zero_in, zero_out, lo, hi, out, **kw)
    if isinstance(arrays, tuple):  # two equal channels: one of them stands for the per-tensor parameters
        arrays = (arrays[0], arrays[1][:1], arrays[2][:1], arrays[3])
    return scalar, arrays


@pytest.mark.parametrize("seed", range(4))
def test_per_tensor_search_equals_the_array_search(seed):
    rng = np.random.default_rng(seed)
    for _ in range(300):
        c = int(rng.integers(1, 9))
        # ranges broadcastable against the two channels: per tensor, or a [1, c] range reduced to them by the search
        shape = [(), (2,), (c, 2)][int(rng.integers(0, 3))]
        if rng.random() < 0.3:  # a rounding tie: m * 2^k ends in .5
            m = (2 * int(rng.integers(1, 4000)) + 1) / 2.0 ** int(rng.integers(1, 30))
        else:
            m = float(np.exp(rng.uniform(-25, 6)))
        zero_in = int(rng.integers(-200, 200)) if rng.random() < 0.5 else 0
        zero_out = int(rng.integers(-100, 200)) if rng.random() < 0.5 else 0
        mag = 2.0 ** rng.uniform(0, 31)
        lo = -np.abs(rng.normal(0, mag, size=shape)).astype(np.int64)
        hi = np.abs(rng.normal(0, mag, size=shape)).astype(np.int64)
        kw = {"strict": bool(rng.random() < 0.3)}
        if rng.random() < 0.4:
            kw["fold_offset"] = rng.normal(0, 2.0 ** rng.uniform(0, 30), size=shape).astype(np.int64)
        if rng.random() < 0.3:
            kw["offset_steps"] = float(rng.normal(0, 50))
        out = [(-128, 127), (0, 255), (-8, 7)][int(rng.integers(0, 3))]
        scalar, arrays = both(m, zero_in, zero_out, lo, hi, out, **kw)
        if isinstance(arrays, str):  # the array search names the channel; the per-tensor one may not
            assert isinstance(scalar, str)
            continue
        assert scalar == arrays, (m, zero_in, zero_out, lo, hi, out, kw)


def test_per_tensor_search_of_a_typical_conv_requant():
    lo = np.array([-9000, -4000, -12000, -100]).reshape(1, 4, 1, 1)
    hi = np.array([8000, 11000, 3000, 20000]).reshape(1, 4, 1, 1)
    p = choose_requant(0.0123, 0, 0, lo, hi, -128, 127, fold_offset=np.array([5, -7, 300, 0]).reshape(1, 4, 1, 1))
    # k = 24 would give mul = 206360 and 20000 * 206360 > 2^31; k = 23: round(0.0123 * 2^23) = 103180
    assert (p.shift, p.mul.tolist(), p.add.tolist(), p.mul.dtype, p.mul.shape) == \
        (23, [103180], [0], np.dtype(np.int64), (1,))
    # the error counts only inputs that do not saturate: |x * 0.0123| within 128 + 1 output steps
    assert p.error_steps == pytest.approx(129 / 0.0123 * abs(103180 / 2 ** 23 - 0.0123))


@pytest.mark.parametrize("seed", range(3))
def test_range_of_a_layer_with_one_input_range_equals_the_per_channel_sum(seed):
    """Range analysis of a conv/gemm whose input has one range sums the weights once per sign; the per-channel
    form sums every product.  The same integers (including where int64 products would be near overflow)."""
    from qirc.lowering.ranges import _linear_bound, _uniform_linear_bound

    rng = np.random.default_rng(seed)
    for _ in range(200):
        shape = [(4, 3, 3, 3), (64, 32), (1, 5), (8, 1, 3, 3)][int(rng.integers(0, 4))]
        big = rng.random() < 0.2
        w = rng.integers(-2 ** 40 if big else -128, 2 ** 40 if big else 128, size=shape).astype(np.int64)
        a = -int(rng.integers(0, 2 ** 31))
        b = int(rng.integers(0, 2 ** 31))
        axes = tuple(range(1, w.ndim))
        full_lo = np.full(shape[:2] + (1,) * (w.ndim - 2), a, np.int64)
        full_hi = np.full(full_lo.shape, b, np.int64)
        with np.errstate(over="ignore"):
            lo, hi = _uniform_linear_bound(w, a, b, axes)
            ref_lo, ref_hi = _linear_bound(w, full_lo, full_hi, axes)
        assert lo.dtype == ref_lo.dtype == np.int64 and lo.shape == ref_lo.shape
        assert np.array_equal(lo, ref_lo) and np.array_equal(hi, ref_hi)
