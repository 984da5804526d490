"""The interpreter's int.conv routes at the float32 exactness bound, and int.conv fused with the int.requant_shift
that reads it: the float32 BLAS route is taken only where max|x| * (largest row sum of |w|) <= 2^24, it equals the
exact integer result on inputs that reach that bound, and the fused pair gives exactly what the two kernels give
apart (run_values runs them apart), errors included."""
from __future__ import annotations

import numpy as np
import pytest

import qirc.qir.interpreter as interp
from qirc.qir.diagnostics import OverflowError_
from qirc.qir.interpreter import run, run_values
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.types import i8, i32, i64, tensor, u8


def _reference_conv(x, w, bias=None, pads=(0, 0, 0, 0), strides=(1, 1)):
    """Exact NCHW convolution in Python integers (object arrays): the reference no float can round."""
    x = np.pad(x.astype(object), [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    n, _, h, wd = x.shape
    m, _, kh, kw = w.shape
    ho, wo = (h - kh) // strides[0] + 1, (wd - kw) // strides[1] + 1
    y = np.zeros((n, m, ho, wo), dtype=object)
    wo_ = w.astype(object)
    for i in range(ho):
        for j in range(wo):
            patch = x[:, :, i * strides[0]:i * strides[0] + kh, j * strides[1]:j * strides[1] + kw]
            y[:, :, i, j] = np.tensordot(patch, wo_, axes=([1, 2, 3], [1, 2, 3]))
    if bias is not None:
        y = y + bias.astype(object).reshape(1, -1, 1, 1)
    return y


def _conv_module(x_shape, w, bias=None, pads=(0, 0, 0, 0), strides=(1, 1), requant=None, acc_out=False):
    """x (i8) -> int.conv (i32) [-> int.requant_shift(**requant)] -> y; with acc_out the conv's result is also an
    output (two readers: not fused)."""
    m = Module("conv")
    x = input_op(m, "x", tensor(x_shape, i8))
    operands = [x, const_op(m, w.astype(np.int8), tensor(w.shape, i8))]
    if bias is not None:
        operands.append(const_op(m, bias.astype(np.int32), tensor(bias.shape, i32)))
    n, _, h, wd = x_shape
    ho = (h + pads[0] + pads[2] - w.shape[2]) // strides[0] + 1
    wo = (wd + pads[1] + pads[3] - w.shape[3]) // strides[1] + 1
    acc_t = tensor((n, w.shape[0], ho, wo), i32)
    conv = m.create("int.conv", operands, [acc_t], {"kernel_shape": list(w.shape[2:]), "pads": list(pads),
                                                    "strides": list(strides), "dilations": [1, 1], "group": 1},
                    loc="/conv")
    if requant is None:
        output_op(m, "y", conv.result)
        return m
    signed = requant.get("signed", True)
    rq = m.create("int.requant_shift", [conv.result], [tensor(acc_t.shape, i8 if signed else i32)],
                  {"mul": np.asarray(requant["mul"]), "add": np.asarray(requant["add"]), "div": requant["div"],
                   "signed": signed, "n_levels": 256}, loc="/rq")
    output_op(m, "y", rq.result)
    if acc_out:
        output_op(m, "acc", conv.result)
    return m


def _requant_reference(acc, mul, add, div, signed=True):
    t = acc * np.asarray(mul).astype(object) + np.asarray(add).astype(object) + div // 2
    assert np.abs(t).max() <= (1 << 31) - 1
    lo, hi = (-128, 127) if signed else (0, 255)
    return np.clip(t // div, lo, hi).astype(np.int64)


def _route_spy(monkeypatch):
    """Record the compute dtype of every int_conv_nd call."""
    seen = []
    real = interp.int_conv_nd

    def spy(x, w, pads, strides, dilations, group, dtype, **kw):
        seen.append(np.dtype(dtype))
        return real(x, w, pads, strides, dilations, group, dtype, **kw)

    monkeypatch.setattr(interp, "int_conv_nd", spy)
    return seen


def _store_spy(monkeypatch):
    """Count the fused conv+requant pairs run() completes."""
    done = []

    class Spy(interp._RequantStore):
        def result(self):
            done.append(1)
            return super().result()

    monkeypatch.setattr(interp, "_RequantStore", Spy)
    return done


def _weights_with_row_abs_sum(total, k):
    """One output channel of k int8 weights summing to `total`: 127s, then the remainder."""
    w = np.full(k, 127, dtype=np.int64)
    w[-1] = total - 127 * (k - 1)
    assert 0 <= w[-1] <= 127
    return w


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("extra, route", [(0, np.float32), (1, np.float64)])
def test_float32_route_exactly_up_to_the_2_24_bound(extra, route, fused, monkeypatch):
    # x is i8 (|x| <= 128) and one output channel's |w| sums to 2^17 (+1): the bound 128 * 2^17 = 2^24 is the last
    # one float32 holds every partial sum of; one more and the conv must compute in float64
    rng = np.random.default_rng(0)
    k = 1033  # 1032 weights of 127 and one of 8 (or 9): 2^17 (+1)
    w = np.stack([_weights_with_row_abs_sum((1 << 17) + extra, k), rng.integers(-127, 128, k)])
    at_bound = np.full(k, -128)  # every product -128 * w: the sum is -128 * 2^17 (- 128)
    odd = at_bound.copy()
    odd[-1] = -127  # with w = 9 just over the bound: an odd sum beyond 2^24, which float32 would round
    xs = np.stack([np.full(k, 127), at_bound, odd, rng.integers(-128, 128, k)]).reshape(4, k, 1, 1)
    w = w.reshape(2, k, 1, 1)
    requant = {"mul": [1], "add": [0], "div": 1 << 18} if fused else None
    m = _conv_module(xs.shape, w, requant=requant)
    seen = _route_spy(monkeypatch)
    got = run(m, {"x": xs})["y"]
    assert seen == [np.dtype(route)]
    acc = _reference_conv(xs, w)
    assert acc[1, 0, 0, 0] == -(128 << 17) - 128 * extra  # the inputs reach the bound
    if extra:
        assert abs(acc[2, 0, 0, 0]) > (1 << 24) and acc[2, 0, 0, 0] % 2 == 1
    expected = acc.astype(np.int64) if not fused else _requant_reference(acc, [1], [0], 1 << 18)
    np.testing.assert_array_equal(got, expected)
    # the int64 route (no float at all) agrees
    monkeypatch.setattr(interp, "exact_dtype", lambda bound: np.int64)
    np.testing.assert_array_equal(run(m, {"x": xs})["y"], got)
    assert seen[-1] == np.dtype(np.int64)


@pytest.mark.parametrize("pads, strides, kernel", [((1, 1, 1, 1), (1, 1), 3), ((1, 0, 2, 1), (2, 2), 3),
                                                   ((0, 0, 0, 0), (2, 2), 1), ((1, 1, 0, 0), (2, 1), 1)])
@pytest.mark.parametrize("mul_kind, div, signed", [("channel", 1 << 10, True), ("tensor", 1000, False),
                                                   ("channel", 3, True)])
def test_fused_conv_requant_equals_the_two_kernels(pads, strides, kernel, mul_kind, div, signed, monkeypatch):
    monkeypatch.setattr(interp, "_FUSED_BLOCK", 150)  # several staged pieces, some spanning two conv blocks
    monkeypatch.setattr(interp, "_IM2COL_BLOCK", 400)
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (7, 5, 9, 8))
    w = rng.integers(-127, 128, (6, 5, kernel, kernel))
    bias = rng.integers(-3000, 3000, 6)
    mul = rng.integers(1, 40, (1, 6, 1, 1)) if mul_kind == "channel" else np.array([17])
    add = rng.integers(-500, 500, (1, 6, 1, 1)) if mul_kind == "channel" else np.array([-33])
    requant = {"mul": mul, "add": add, "div": div, "signed": signed}
    m = _conv_module(x.shape, w, bias, pads, strides, requant)
    stores = _store_spy(monkeypatch)
    fused = run(m, {"x": x})["y"]
    assert stores == [1]
    apart = run_values(m, {"x": x})[m.outputs[0].operands[0]]
    expected = _requant_reference(_reference_conv(x, w, bias, pads, strides), mul, add, div, signed)
    np.testing.assert_array_equal(fused, expected)
    np.testing.assert_array_equal(apart, expected)
    # the conv result read twice: no fusion, same values
    both = run(_conv_module(x.shape, w, bias, pads, strides, requant, acc_out=True), {"x": x})
    np.testing.assert_array_equal(both["y"], expected)
    np.testing.assert_array_equal(both["acc"], _reference_conv(x, w, bias, pads, strides).astype(np.int64))




def test_fused_conv_requant_takes_int64_and_reports_the_requant_overflow(monkeypatch):
    # sums down to -128 * 127 * 36 in the last image: with mul = 2^14 t leaves int32 there, and the fused pair must
    # raise the requant's own overflow error, located at /rq, like the two kernels apart
    monkeypatch.setattr(interp, "_FUSED_BLOCK", 64)  # pieces of 3 images
    x = np.random.default_rng(2).integers(-3, 4, (6, 4, 5, 5))
    x[5] = -128
    w = np.full((2, 4, 3, 3), 127)
    m = _conv_module(x.shape, w, requant={"mul": [1 << 14], "add": [0], "div": 1 << 20})
    with pytest.raises(OverflowError_, match=r"/rq.*int32 overflow in requant_shift.*reaches -9587654656"):
        run(m, {"x": x})
    with pytest.raises(OverflowError_, match=r"/rq.*int32 overflow in requant_shift.*reaches -9587654656"):
        run_values(m, {"x": x})
    # without the checks both compute in int64 and agree
    acc = _reference_conv(x, w)
    got = run(m, {"x": x}, check_overflow=False)["y"]
    np.testing.assert_array_equal(got, run_values(m, {"x": x}, check_overflow=False)[m.outputs[0].operands[0]])
    np.testing.assert_array_equal(got, np.clip((acc * (1 << 14) + (1 << 19)) // (1 << 20), -128, 127)
                                  .astype(np.int64))
    # mul = 2^12 with an add that brings t back inside int32: the bound cannot prove it, the last piece's extremes
    # cannot either, so that piece computes in int64 with the scan, which passes; the first piece is int32
    requant = {"mul": [1 << 12], "add": [300_000_000], "div": 1 << 20}
    m = _conv_module(x.shape, w, requant=requant)
    expected = _requant_reference(acc, [1 << 12], [300_000_000], 1 << 20)
    np.testing.assert_array_equal(run(m, {"x": x})["y"], expected)
    np.testing.assert_array_equal(run_values(m, {"x": x})[m.outputs[0].operands[0]], expected)


def test_fused_conv_requant_with_a_bias_too_large_to_fold():
    # bias * mul = -2^62 cannot be folded into the offset: the fused store adds the bias to the sums first.  The
    # i32 conv result cannot hold sums + bias: with the checks the conv reports that (not fused); without them the
    # pair is fused and computes (acc - 2^40) * 2^22 + 2^62 + 2^21 in int64 exactly, as apart
    m = Module("bias")
    x = input_op(m, "x", tensor((2, 1, 3, 3), i8))
    w = const_op(m, np.ones((1, 1, 1, 1), dtype=np.int8), tensor((1, 1, 1, 1), i8))
    b = const_op(m, np.array([-(1 << 40)]), tensor((1,), i64))
    conv = m.create("int.conv", [x, w, b], [tensor((2, 1, 3, 3), i32)],
                    {"kernel_shape": [1, 1], "pads": [0] * 4, "strides": [1, 1], "dilations": [1, 1], "group": 1},
                    loc="/conv")
    rq = m.create("int.requant_shift", [conv.result], [tensor((2, 1, 3, 3), i8)],
                  {"mul": np.array([1 << 22]), "add": np.array([1 << 62]), "div": 1 << 22, "signed": True,
                   "n_levels": 256}, loc="/rq")
    output_op(m, "y", rq.result)
    xs = np.arange(18).reshape(2, 1, 3, 3) - 9
    with pytest.raises(OverflowError_, match="/conv"):
        run(m, {"x": xs})
    store = interp._RequantStore(rq, (2, 1, 3, 3), np.int64, np.array([-(1 << 40)]), np.iinfo(np.int64).max)
    assert store.bias is not None  # kept apart from the offset
    got = run(m, {"x": xs}, check_overflow=False)["y"]
    assert got.tolist() == xs.tolist()
    np.testing.assert_array_equal(got, run_values(m, {"x": xs}, check_overflow=False)[rq.result])


def test_run_of_a_real_network_equals_run_values():
    """The example ResNet-8 shape of layers (stem, residual blocks with strided 3x3 and 1x1 shortcuts), fused in
    run() and apart in run_values(), on a small random integer graph: every output equal."""
    rng = np.random.default_rng(3)
    m = Module("chain")
    x = input_op(m, "x", tensor((3, 4, 10, 10), i8))
    v = x
    for i, (cout, k, s) in enumerate([(6, 3, 1), (8, 3, 2), (8, 1, 2)]):
        cin = v.type.shape[1]
        h = v.type.shape[2]
        pad = k // 2
        w = const_op(m, rng.integers(-127, 128, (cout, cin, k, k)).astype(np.int8), tensor((cout, cin, k, k), i8))
        b = const_op(m, rng.integers(-999, 999, cout).astype(np.int32), tensor((cout,), i32))
        ho = (h + 2 * pad - k) // s + 1
        conv = m.create("int.conv", [v, w, b], [tensor((3, cout, ho, ho), i32)],
                        {"kernel_shape": [k, k], "pads": [pad] * 4, "strides": [s, s], "dilations": [1, 1],
                         "group": 1}, loc=f"/conv{i}")
        v = m.create("int.requant_shift", [conv.result], [tensor((3, cout, ho, ho), i8)],
                     {"mul": rng.integers(1, 300, (1, cout, 1, 1)), "add": rng.integers(-99, 99, (1, cout, 1, 1)),
                      "div": 1 << 14, "signed": True, "n_levels": 256}, loc=f"/rq{i}").result
    output_op(m, "y", v)
    xs = rng.integers(-128, 128, (3, 4, 10, 10))
    np.testing.assert_array_equal(run(m, {"x": xs})["y"], run_values(m, {"x": xs})[v])


def _requant_op(m, v, mul, add, div, signed, loc, out=None):
    return m.create("int.requant_shift", [v], [out or tensor(v.type.shape, i8 if signed else i32)],
                    {"mul": np.asarray(mul), "add": np.asarray(add), "div": div, "signed": signed, "n_levels": 256},
                    loc=loc).result


@pytest.mark.parametrize("kind", ["int.add", "int.sub"])
@pytest.mark.parametrize("leaves", [2, 1, 0])
def test_fused_requant_of_a_sum_equals_the_ops_apart(kind, leaves, monkeypatch):
    # requant(a' + b') with a' = requant(a), b' = requant(b) (leaves = 2), only a' (1) or neither (0) single-use
    # requants: run() computes the chain in blocks of images, run_values() op by op; per-channel and per-tensor
    # parameters, a divisor that is not a power of two
    monkeypatch.setattr(interp, "_FUSED_BLOCK", 100)  # pieces of 2 images
    rng = np.random.default_rng(4)
    shape = (7, 3, 4, 4)
    m = Module("sum")
    a = input_op(m, "a", tensor(shape, i8))
    b = input_op(m, "b", tensor(shape, i32))
    ra = _requant_op(m, a, [2570702], [0], 1 << 22, True, "/ra") if leaves >= 1 else a
    rb = _requant_op(m, b, rng.integers(1, 9, (1, 3, 1, 1)), rng.integers(-50, 50, (1, 3, 1, 1)), 3, True,
                     "/rb") if leaves == 2 else _requant_op(m, b, [1], [0], 1, True, "/rb")
    if leaves < 2:
        output_op(m, "rb", rb)  # a second reader: rb is computed apart and read by the fused chain
    s = m.create(kind, [ra, rb], [tensor(shape, i32)], loc="/s").result
    y = _requant_op(m, s, rng.integers(1000, 5000, (1, 3, 1, 1)), [7], 1 << 10, False, "/y")
    output_op(m, "y", y)
    xa = rng.integers(-128, 128, shape)
    xb = rng.integers(-1000, 1000, shape)
    chains = []
    real = interp._sum_requant
    monkeypatch.setattr(interp, "_sum_requant", lambda *a: chains.append(real(*a)) or chains[-1])
    fused = run(m, {"a": xa, "b": xb})
    assert len(chains) == 1 and chains[0] is not None  # the chain did run fused
    apart = run_values(m, {"a": xa, "b": xb})
    np.testing.assert_array_equal(fused["y"], apart[y])
    monkeypatch.setattr(interp, "_FUSE", False)
    np.testing.assert_array_equal(run(m, {"a": xa, "b": xb})["y"], fused["y"])


@pytest.mark.parametrize("kind", ["int.add", "int.sub"])
@pytest.mark.parametrize("leaves", [2, 1, 0])
@pytest.mark.parametrize("leaf_mul, table", [(2570702, True), (1 << 25, False)])
def test_requant_of_a_sum_of_byte_operands_runs_as_a_table(kind, leaves, leaf_mul, table, monkeypatch):
    # operands held in one byte (int8 and uint8 results of earlier requants) with per-tensor parameters: run() looks
    # every result up in a table of the 65,536 byte pairs.  With leaf_mul = 2^25 some table entries (|a| >= 64)
    # would leave int32, so the chain runs in blocks, where the actual values (|a| <= 60) do not
    monkeypatch.setattr(interp, "_FUSED_BLOCK", 100)  # pieces of 2 images
    monkeypatch.setattr(interp, "_SUM_TABLE_MIN", 0)  # a table for any size
    rng = np.random.default_rng(7)
    shape = (7, 3, 4, 4)
    m = Module("bytes")
    a = _requant_op(m, input_op(m, "a", tensor(shape, i8)), [1], [0], 1, True, "/pa")  # kept as int8
    b = _requant_op(m, input_op(m, "b", tensor(shape, i8)), [1], [0], 1, False, "/pb",
                    out=tensor(shape, u8))  # 0..255 as uint8
    output_op(m, "a8", a)  # second readers: computed apart, so that the chain reads them as they are kept
    output_op(m, "b8", b)
    ra = _requant_op(m, a, [leaf_mul], [-3], 1 << 22, True, "/ra") if leaves >= 1 else a
    rb = _requant_op(m, b, [3], [5], 7, True, "/rb") if leaves == 2 else b
    s = m.create(kind, [ra, rb], [tensor(shape, i32)], loc="/s").result
    y = _requant_op(m, s, [4045190], [11], 1 << 22, False, "/y", out=tensor(shape, u8))
    output_op(m, "y", y)
    xa = rng.integers(-60, 61, shape)
    xb = rng.integers(-128, 128, shape)
    tables = []
    real = interp._sum_table
    monkeypatch.setattr(interp, "_sum_table", lambda *a: tables.append(real(*a)) or tables[-1])
    fused = run(m, {"a": xa, "b": xb})
    assert len(tables) == 1 and (tables[0] is not None) == (table or leaves == 0)
    apart = run_values(m, {"a": xa, "b": xb})
    np.testing.assert_array_equal(fused["y"], apart[y])
    assert 0 < np.mean(fused["y"] > 0) < 1 and np.mean(fused["y"] < 255) > 0.5  # not all clipped
    monkeypatch.setattr(interp, "_FUSE", False)
    np.testing.assert_array_equal(run(m, {"a": xa, "b": xb})["y"], fused["y"])


def test_fused_requant_of_a_sum_reports_a_leaf_overflow_at_the_leaf():
    # the second leaf's x*mul leaves int32 for one value: the error names that requant, as the ops apart do
    shape = (3, 2, 2, 2)
    m = Module("sum")
    a = input_op(m, "a", tensor(shape, i8))
    b = input_op(m, "b", tensor(shape, i32))
    s = m.create("int.add", [_requant_op(m, a, [3], [0], 4, True, "/ra"),
                             _requant_op(m, b, [1 << 12], [0], 1 << 12, True, "/rb")],
                 [tensor(shape, i32)], loc="/s").result
    output_op(m, "y", _requant_op(m, s, [1], [0], 1, True, "/y"))
    xb = np.zeros(shape, dtype=np.int64)
    xb[2, 1, 1, 1] = 1 << 20
    for runner in (run, run_values):
        with pytest.raises(OverflowError_, match=r"/rb.*int32 overflow in requant_shift.*reaches 4294969344"):
            runner(m, {"a": np.zeros(shape, dtype=np.int64), "b": xb})


def test_a_value_read_by_a_fused_chain_and_by_a_later_op_lives_until_the_chain_runs():
    # x feeds the chain's first requant and another requant placed between it and the chain's end: x must stay
    # alive until the chain (run where its last requant is) has read it
    shape = (4, 2, 3, 3)
    m = Module("live")
    x = input_op(m, "x", tensor(shape, i8))
    z = input_op(m, "z", tensor(shape, i8))
    ra = _requant_op(m, x, [3], [1], 2, True, "/ra")
    rz = _requant_op(m, z, [5], [0], 4, True, "/rz")
    other = _requant_op(m, x, [7], [0], 8, True, "/other")
    s = m.create("int.add", [ra, rz], [tensor(shape, i32)], loc="/s").result
    y = _requant_op(m, s, [9], [0], 16, True, "/y")
    output_op(m, "y", y)
    output_op(m, "other", other)
    order = [op.attrs.get("name") or op.loc for op in m.ops()]
    assert order.index("/other") < order.index("/s")
    rng = np.random.default_rng(5)
    xs, zs = rng.integers(-128, 128, shape), rng.integers(-128, 128, shape)
    got, apart = run(m, {"x": xs, "z": zs}), run_values(m, {"x": xs, "z": zs})
    np.testing.assert_array_equal(got["y"], apart[y])
    np.testing.assert_array_equal(got["other"], apart[other])


@pytest.mark.parametrize("x_shape, w_shape, group, pads, strides", [
    ((9, 6, 7, 7), (6, 1, 3, 3), 6, [1, 1, 1, 1], [1, 1]),      # depthwise, flat layout, staged pieces
    ((9, 6, 9, 8), (6, 1, 3, 3), 6, [1, 0, 1, 1], [2, 2]),      # strided depthwise
    ((5, 4, 6, 6), (8, 1, 3, 3), 4, [1, 1, 1, 1], [1, 1]),      # channel multiplier 2: windowed taps
    ((5, 6, 5, 5), (6, 1, 5, 5), 6, [0, 0, 0, 0], [1, 1]),      # a kernel over the whole map: one einsum
    ((6, 4, 11), (5, 4, 3), 1, [1, 1], [2]),                    # 1-d
])
def test_fused_conv_requant_other_conv_routes(x_shape, w_shape, group, pads, strides, monkeypatch):
    monkeypatch.setattr(interp, "_FUSED_BLOCK", 90)
    monkeypatch.setattr(interp, "_IM2COL_BLOCK", 300)
    rng = np.random.default_rng(6)
    n = len(x_shape) - 2
    m = Module("conv")
    x = input_op(m, "x", tensor(x_shape, i8))
    w = const_op(m, rng.integers(-127, 128, w_shape).astype(np.int8), tensor(w_shape, i8))
    b = const_op(m, rng.integers(-999, 999, w_shape[0]).astype(np.int32), tensor((w_shape[0],), i32))
    out = tuple((x_shape[2 + i] + pads[i] + pads[i + n] - w_shape[2 + i]) // strides[i] + 1 for i in range(n))
    conv = m.create("int.conv", [x, w, b], [tensor((x_shape[0], w_shape[0]) + out, i32)],
                    {"kernel_shape": list(w_shape[2:]), "pads": pads, "strides": strides, "dilations": [1] * n,
                     "group": group}, loc="/conv")
    param = (1, w_shape[0]) + (1,) * n
    y = _requant_op(m, conv.result, rng.integers(1, 99, param), rng.integers(-99, 99, param), 1 << 9, True, "/rq")
    output_op(m, "y", y)
    xs = rng.integers(-128, 128, x_shape)
    stores = _store_spy(monkeypatch)
    fused = run(m, {"x": xs})["y"]
    assert stores == [1]  # the pair did run fused
    np.testing.assert_array_equal(fused, run_values(m, {"x": xs})[y])
    monkeypatch.setattr(interp, "_FUSE", False)
    np.testing.assert_array_equal(run(m, {"x": xs})["y"], fused)
