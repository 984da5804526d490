"""The interpreter's fast integer paths stay exact: the float32 / float64 / int64 route choice of int.conv and
int.gemm at the bounds, the blocked im2col and requant over a batch, the int.pad fast path, and run() dropping
dead intermediates without changing any output."""
from __future__ import annotations


import numpy as np
import pytest

import qirc.qir.interpreter as interp
from qirc.qir.diagnostics import OverflowError_
from qirc.qir.interpreter import conv_nd, exact_dtype, exact_int_matmul, int_conv_nd, run, run_values
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.types import i8, i32, i64, tensor


def test_exact_dtype_bounds():
    # every integer of magnitude <= 2^24 (2^53) is a float32 (float64): a sum bounded by it is exact
    assert exact_dtype(1 << 24) is np.float32
    assert exact_dtype((1 << 24) + 1) is np.float64
    assert exact_dtype(1 << 53) is np.float64
    assert exact_dtype((1 << 53) + 1) is np.int64


def _int64_conv(x, w, pads, strides, dilations, group):
    """The int64 reference: the float kernels' im2col run on int64 with numpy's exact integer matmul."""
    return conv_nd(x.astype(np.int64), w.astype(np.int64), pads, strides, dilations, group, np.matmul)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("shape, w_shape, pads, strides, dilations, group", [
    ((5, 6, 9, 7), (4, 6, 3, 3), [1, 1, 1, 1], [1, 1], [1, 1], 1),
    ((3, 6, 9, 8), (6, 2, 3, 2), [0, 1, 2, 0], [2, 1], [1, 2], 3),
    ((4, 4, 7, 7), (8, 1, 3, 3), [1, 1, 1, 1], [2, 2], [1, 1], 4),   # depthwise, channel multiplier 2
    ((2, 3, 10), (5, 3, 4), [2, 1], [3], [1], 1),                    # 1-d
])
def test_int_conv_nd_matches_int64_reference(dtype, shape, w_shape, pads, strides, dilations, group, monkeypatch):
    monkeypatch.setattr(interp, "_IM2COL_BLOCK", 97)  # forces several batch blocks, and blocks of one image
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, shape)
    w = rng.integers(-127, 128, w_shape)
    y = int_conv_nd(x, w, pads, strides, dilations, group, dtype)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y.astype(np.int64), _int64_conv(x, w, pads, strides, dilations, group))


def _conv_module(x_type, w, pads):
    m = Module("conv")
    x = input_op(m, "x", x_type)
    wv = const_op(m, w, tensor(w.shape, i64))
    n, _, h, wd = x_type.shape
    out = tensor((n, w.shape[0], h + pads[0] + pads[2] - w.shape[2] + 1, wd + pads[1] + pads[3] - w.shape[3] + 1),
                 i64)
    op = m.create("int.conv", [x, wv], [out], {"kernel_shape": list(w.shape[2:]), "pads": pads, "strides": [1, 1],
                                               "dilations": [1, 1], "group": 1}, loc="/conv")
    output_op(m, "y", op.result)
    return m


def test_int_conv_above_the_float32_bound_is_exact():
    # max|x| * max|w| * K = 4095 * 4095 * 18 > 2^24: float32 would round these odd sums; the kernel must not use it
    rng = np.random.default_rng(2)
    x = rng.integers(-4095, 4096, (2, 2, 5, 5))
    x[0, 0, 0, 0] = 4095
    w = rng.integers(-4095, 4096, (3, 2, 3, 3))
    w[0, 0, 0, 0] = 4095
    m = _conv_module(tensor(x.shape, i64), w, [1, 1, 1, 1])
    expected = _int64_conv(x, w, [1, 1, 1, 1], [1, 1], [1, 1], 1)
    assert np.abs(expected).max() > (1 << 24) and np.any(expected % 2)
    np.testing.assert_array_equal(run(m, {"x": x})["y"], expected)


def test_int_conv_above_the_float64_bound_is_exact():
    rng = np.random.default_rng(3)
    x = rng.integers(-(1 << 30), 1 << 30, (1, 2, 4, 4))
    w = rng.integers(-(1 << 30), 1 << 30, (2, 2, 3, 3))
    m = _conv_module(tensor(x.shape, i64), w, [0, 0, 0, 0])
    expected = [[sum(int(a) * int(b) for a, b in zip(x[0, :, i:i + 3, j:j + 3].ravel(), w[o].ravel()))
                 for i in range(2) for j in range(2)] for o in range(2)]
    assert run(m, {"x": x})["y"].reshape(2, 4).tolist() == expected


def test_exact_int_matmul_float32_route_and_boundary():
    rng = np.random.default_rng(4)
    a = rng.integers(-128, 128, (6, 40))
    b = rng.integers(-128, 128, (40, 3))
    np.testing.assert_array_equal(exact_int_matmul(a, b), a @ b)
    big_a = np.full((1, 3), 4097)  # 4097^2 * 3 > 2^24 and odd: wrong if it stayed on float32
    big_b = np.full((3, 1), 4097)
    assert exact_int_matmul(big_a, big_b).tolist() == [[3 * 4097 * 4097]]


def _requant_module(shape, mul, add, div, signed=True, n_levels=256):
    m = Module("rq")
    x = input_op(m, "x", tensor(shape, i32))
    op = m.create("int.requant_shift", [x], [tensor(shape, i8 if signed else i32)],
                  {"mul": np.asarray(mul), "add": np.asarray(add), "div": div, "signed": signed,
                   "n_levels": n_levels}, loc="/rq")
    output_op(m, "y", op.result)
    return m


@pytest.mark.parametrize("div", [1, 2, 1 << 12, 3, 1000])
def test_requant_blocks_and_divisors_match_the_formula(div, monkeypatch):
    monkeypatch.setattr(interp, "_REQUANT_BLOCK", 50)  # several blocks along the batch
    rng = np.random.default_rng(5)
    x = rng.integers(-(1 << 16), 1 << 16, (7, 3, 4, 5))
    mul = rng.integers(1, 200, (1, 3, 1, 1))
    add = rng.integers(-5000, 5000, (1, 3, 1, 1))
    y = run(_requant_module(x.shape, mul, add, div), {"x": x})["y"]
    t = [(int(v) * int(mu) + int(ad) + div // 2) // div
         for v, mu, ad in zip(x.ravel(), np.broadcast_to(mul, x.shape).ravel(), np.broadcast_to(add, x.shape).ravel())]
    assert y.ravel().tolist() == [min(127, max(-128, v)) for v in t]


def test_requant_overflow_in_a_late_block_is_reported(monkeypatch):
    monkeypatch.setattr(interp, "_REQUANT_BLOCK", 8)
    x = np.zeros((6, 2, 2, 2), dtype=np.int64)
    x[5, 1, 1, 1] = 1 << 20
    m = _requant_module(x.shape, [1 << 12], [0], 1 << 10)
    with pytest.raises(OverflowError_, match=r"/rq.*int32 overflow in requant_shift.*reaches 4294967808"):
        run(m, {"x": x})
    assert run(m, {"x": x}, check_overflow=False)["y"][5, 1, 1, 1] == 127


def test_int_pad_fast_path_equals_np_pad():
    m = Module("pad")
    x = input_op(m, "x", tensor((2, 3, 4, 5), i8))
    op = m.create("int.pad", [x], [tensor((2, 3, 7, 6), i8)], {"pads": [0, 0, 1, 0, 0, 0, 2, 1], "value": -128},
                  loc="/pad")
    output_op(m, "y", op.result)
    xv = np.random.default_rng(6).integers(-128, 128, (2, 3, 4, 5))
    np.testing.assert_array_equal(run(m, {"x": xv})["y"],
                                  np.pad(xv, [(0, 0), (0, 0), (1, 2), (0, 1)], constant_values=-128))


def test_run_drops_intermediates_but_not_outputs():
    # y1 = x + x is read by a later op AND is a graph output; y2 = requant(y1 + x)
    m = Module("chain")
    x = input_op(m, "x", tensor((2, 3), i32))
    s = m.create("int.add", [x, x], [tensor((2, 3), i32)], loc="/add1").result
    t = m.create("int.add", [s, x], [tensor((2, 3), i32)], loc="/add2").result
    r = m.create("int.requant_shift", [t], [tensor((2, 3), i8)],
                 {"mul": np.array([1]), "add": np.array([0]), "div": 1, "signed": True, "n_levels": 256},
                 loc="/rq").result
    output_op(m, "sum", s)
    output_op(m, "out", r)
    xv = np.arange(6).reshape(2, 3) - 3
    out = run(m, {"x": xv})
    assert out["sum"].tolist() == (2 * xv).tolist() and out["out"].tolist() == (3 * xv).tolist()
    values = run_values(m, {"x": xv})
    assert values[t].tolist() == (3 * xv).tolist()  # run_values keeps every value


@pytest.mark.parametrize("shape, param_shape", [((), ()), ((5,), (5,)), ((4, 3), (4, 1)), ((1, 6), (6,))])
def test_requant_unblocked_shapes_match_the_formula(shape, param_shape, monkeypatch):
    monkeypatch.setattr(interp, "_REQUANT_BLOCK", 2)
    rng = np.random.default_rng(7)
    x = rng.integers(-5000, 5000, shape)
    mul = rng.integers(1, 300, param_shape)
    add = rng.integers(-900, 900, param_shape)
    y = run(_requant_module(shape, mul, add, 256), {"x": x})["y"]
    expected = np.clip(np.floor_divide(x * mul + add + 128, 256), -128, 127)
    assert y.shape == shape and y.tolist() == expected.reshape(shape).tolist()


@pytest.mark.parametrize("name", ["Autoencoder", "DSCNN-XS", "ResNet8"])
def test_corpus_integer_graph_batched_equals_per_sample(name):
    """The compiled integer graph (gemm; depthwise/strided conv, sum pooling; residual adds) rebatched to N gives
    exactly the per-sample outputs: every int kernel is batch-agnostic."""
    from real_models import deepquant

    path = deepquant(name)
    from qirc.backends.deeploy.targets import get_target
    from qirc.driver import build_passes
    from qirc.frontends.onnx import import_onnx
    from qirc.qir.batch import rebatch
    from qirc.qir.passes import PassManager

    module = import_onnx(str(path))
    PassManager(build_passes(get_target("deeploy-siracusa"))).run(module)
    (in_name,) = module.input_names()
    element = module.inputs[0].results[0].type.element
    n = 5
    x = np.random.default_rng(8).integers(element.storage_min, element.storage_max, (n,) +
                                          tuple(module.inputs[0].results[0].type.shape[1:]), endpoint=True)
    batched = run(rebatch(module, n), {in_name: x})
    singles = [run(module, {in_name: x[i:i + 1]}) for i in range(n)]
    for key, y in batched.items():
        np.testing.assert_array_equal(y, np.concatenate([s[key] for s in singles]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("shape, w_shape, pads, strides, dilations, group", [
    ((5, 6, 9, 7), (4, 6, 3, 3), [1, 1, 1, 1], [1, 1], [1, 1], 1),
    ((3, 6, 9, 8), (6, 2, 3, 2), [0, 1, 2, 0], [2, 1], [1, 2], 3),
    ((4, 4, 7, 7), (8, 1, 3, 3), [1, 1, 1, 1], [2, 2], [1, 1], 4),   # depthwise, channel multiplier 2
    ((6, 8, 5, 4), (6, 4, 1, 1), [1, 0, 0, 2], [1, 1], [1, 1], 2),   # pointwise: the input is the patch matrix
    ((3, 8, 5, 4), (6, 8, 1, 1), [0, 0, 0, 0], [2, 1], [1, 1], 1),   # 1x1 with a stride: the input sampled
    ((3, 8, 6, 5), (6, 4, 1, 1), [1, 0, 2, 3], [2, 3], [1, 1], 2),   # sampled with pads (some samples in them)
    ((2, 4, 3, 3), (4, 1, 1, 1), [2, 2, 2, 2], [3, 3], [1, 1], 4),   # depthwise 1x1 whose samples are all padding
])
def test_int_conv_nd_int_result_with_bias_matches_int64_reference(dtype, shape, w_shape, pads, strides, dilations,
                                                                 group, monkeypatch):
    monkeypatch.setattr(interp, "_IM2COL_BLOCK", 97)
    rng = np.random.default_rng(6)
    x = rng.integers(-128, 128, shape)
    w = rng.integers(-127, 128, w_shape)
    bias = rng.integers(-(1 << 40), 1 << 40, w_shape[0])  # far beyond float32/float64 exactness: added in int64
    y = int_conv_nd(x, w, pads, strides, dilations, group, dtype, bias=bias, int_result=True)
    assert y.dtype == np.int64
    expected = _int64_conv(x, w, pads, strides, dilations, group) + bias.reshape(-1, 1, 1)
    np.testing.assert_array_equal(y, expected)


def test_int_conv_route_from_the_weights_row_sums_stays_exact_at_the_float32_edge():
    # every product 127 * 127 is odd; 1041 of them sum to 16,790,289 > 2^24, which float32 cannot hold: the bound
    # (max|x| times a row sum of |w|) must send this conv to float64, and the int8 version just below the edge to
    # float32, both exact
    for k, want_odd in ((1041, True), (1039, True)):
        x = np.full((2, k, 1, 1), 127)
        w = np.full((2, k, 1, 1), 127)
        w[1] = -127
        m = _conv_module(tensor(x.shape, i8), w, [0, 0, 0, 0])
        expected = np.einsum("nc,mc->nm", x[:, :, 0, 0], w[:, :, 0, 0]).reshape(2, 2, 1, 1)
        assert bool(expected[0, 0, 0, 0] % 2) == want_odd
        np.testing.assert_array_equal(run(m, {"x": x})["y"], expected)


def test_unchecked_values_outside_their_type_do_not_select_a_float_route():
    # with check_overflow=False an int.add declared i8 can hold large values; the conv reading it must bound its sums
    # by the actual values, not by the i8 type (whose bound would pick float32 and round these odd sums)
    m = Module("unchecked")
    x = input_op(m, "x", tensor((1, 300, 1, 1), i32))
    s = m.create("int.add", [x, x], [tensor((1, 300, 1, 1), i8)], loc="/add").result
    w = np.ones((1, 300, 1, 1), dtype=np.int64)
    wv = const_op(m, w.astype(np.int8), tensor(w.shape, i8))
    op = m.create("int.conv", [s, wv], [tensor((1, 1, 1, 1), i32)],
                  {"kernel_shape": [1, 1], "pads": [0, 0, 0, 0], "strides": [1, 1], "dilations": [1, 1], "group": 1},
                  loc="/conv")
    output_op(m, "y", op.result)
    xs = np.full((1, 300, 1, 1), (1 << 20) + 1)
    xs[0, 0] = (1 << 20) + 3
    got = run(m, {"x": xs}, check_overflow=False)["y"]
    assert int(got.ravel()[0]) == 2 * int(xs.sum())


def _conv_requant_module(x_shape, w, mul, add, div, signed=True):
    """x (i8) -> int.conv (int32 sums, kept narrow by the runner) -> int.requant_shift -> y."""
    m = Module("conv_rq")
    x = input_op(m, "x", tensor(x_shape, i8))
    wv = const_op(m, w.astype(np.int8), tensor(w.shape, i8))
    n, _, h, wd = x_shape
    acc_t = tensor((n, w.shape[0], h - w.shape[2] + 1, wd - w.shape[3] + 1), i32)
    conv = m.create("int.conv", [x, wv], [acc_t], {"kernel_shape": list(w.shape[2:]), "pads": [0, 0, 0, 0],
                                                   "strides": [1, 1], "dilations": [1, 1], "group": 1}, loc="/conv")
    out_t = tensor(acc_t.shape, i8 if signed else i32)
    rq = m.create("int.requant_shift", [conv.result], [out_t],
                  {"mul": np.asarray(mul), "add": np.asarray(add), "div": div, "signed": signed, "n_levels": 256},
                  loc="/rq")
    output_op(m, "y", rq.result)
    output_op(m, "acc", conv.result)
    return m


@pytest.mark.parametrize("mul_scale, div, signed", [(1, 1 << 10, True), (1 << 10, 1 << 20, True), (3, 1000, False),
                                                    (1 << 12, 7, True)])
def test_requant_of_narrow_conv_sums_matches_python_ints(mul_scale, div, signed, monkeypatch):
    # the runner keeps the conv's sums as int32; the requant then takes its int32 route when max|x| * max|mul| +
    # max|offset| fits int32 and its int64 route with the overflow scan otherwise: both must give the exact formula
    monkeypatch.setattr(interp, "_REQUANT_BLOCK", 40)
    rng = np.random.default_rng(9)
    x = rng.integers(-128, 128, (5, 8, 6, 6))
    w = rng.integers(-127, 128, (3, 8, 3, 3))
    mul = rng.integers(1, 50, (1, 3, 1, 1)) * mul_scale
    add = rng.integers(-(1 << 12), 1 << 12, (1, 3, 1, 1))
    m = _conv_requant_module(x.shape, w, mul, add, div, signed)
    try:
        out = run(m, {"x": x})
    except OverflowError_:
        out = None
    acc = _int64_conv(x, w, [0, 0, 0, 0], [1, 1], [1, 1], 1)
    t = acc * mul + add + div // 2
    if np.abs(t).max() > (1 << 31) - 1:
        assert out is None  # the int64 route reports what Deeploy's int32 kernel would overflow
        return
    lo, hi = (-128, 127) if signed else (0, 255)
    expected = np.clip(np.floor_divide(t, div), lo, hi)
    assert out["y"].dtype == np.int64 and out["acc"].dtype == np.int64  # run() returns int64 as documented
    np.testing.assert_array_equal(out["acc"], acc)
    np.testing.assert_array_equal(out["y"], expected)


@pytest.mark.parametrize("extra", [0, 1])
def test_requant_after_conv_takes_the_int32_route_from_the_conv_bound(extra):
    # a requant of conv sums knows max|sums| <= 128 * (largest row sum of |w|) + max|bias| without reading them:
    # with mul at the largest value whose reach fits int32 it computes in int32 unscanned, exactly, at the extremes;
    # one more and it scans the sums (int32 again when they stay below the bound, else int64 with the check)
    w = np.full((1, 1, 1, 1), -128)
    div = 1 << 20
    mul = ((1 << 31) - 1 - div // 2) // (128 * 128) + extra
    m = _conv_requant_module((1, 1, 1, 2), w, [mul], [0], div)
    rq = next(op for op in m.ops() if op.name == "int.requant_shift")
    assert interp._known_abs_bound(rq, np.zeros(2, np.int32)) == 128 * 128
    for xs in ([-128, 127], [-127, 100]):
        x = np.array(xs).reshape(1, 1, 1, 2)
        t = x.astype(object) * -128 * mul + div // 2
        if np.abs(t).max() > (1 << 31) - 1:
            with pytest.raises(OverflowError_):
                run(m, {"x": x})
            continue
        got = run(m, {"x": x})["y"]
        np.testing.assert_array_equal(got, np.clip(t // div, -128, 127).astype(np.int64))


def test_requant_int32_route_edge_and_overflow():
    # reach = max|x| * max|mul| + max|offset| right at and just past int32's limit
    x = np.zeros((1, 1, 2, 1), dtype=np.int64)
    w = np.ones((1, 1, 1, 1), dtype=np.int64)
    for xs, mul, expect_overflow in (([127, -128], (1 << 24) - 1, False), ([127, -128], 1 << 24, False),
                                     ([127, -128], 1 << 25, True)):
        x[0, 0, :, 0] = xs
        m = _conv_requant_module(x.shape, w, [mul], [0], 1 << 24)
        t = np.array(xs) * mul + (1 << 23)
        if expect_overflow:
            with pytest.raises(OverflowError_, match="int32 overflow in requant_shift"):
                run(m, {"x": x})
            continue
        assert run(m, {"x": x})["y"].ravel().tolist() == np.clip(t >> 24, -128, 127).tolist()


@pytest.mark.parametrize("div", [1, 2, 3, 32, 1000])
@pytest.mark.parametrize("x_dtype", [np.int16, np.int32, np.int64])
def test_requant_routes_agree_with_the_formula_on_unclipped_values(div, x_dtype, monkeypatch):
    # values that mostly stay inside the clip bounds, so that any off-by-one of either route shows
    monkeypatch.setattr(interp, "_REQUANT_BLOCK", 64)
    rng = np.random.default_rng(div)
    reach = min(100 * div // 3, 30000)  # x * mul / div mostly inside -128..127
    x = rng.integers(-reach, reach + 1, (6, 4, 5, 5)).astype(x_dtype)
    mul = rng.integers(1, 4, (1, 4, 1, 1))
    add = rng.integers(-div * 5, div * 5 + 1, (1, 4, 1, 1))
    op = _requant_module(x.shape, mul, add, div).walk("int.requant_shift")[0]
    (y,) = interp.KERNELS["int.requant_shift"](op, [x])
    t = x.astype(np.int64) * mul + add + div // 2
    expected = np.clip(np.floor_divide(t, div), -128, 127)
    assert np.mean((expected > -128) & (expected < 127)) > 0.3
    np.testing.assert_array_equal(y.astype(np.int64), expected)


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("shape, w_shape, pads, strides, dilations, group", [
    ((2, 5, 9, 8), (3, 5, 3, 2), [2, 0, 1, 3], [1, 1], [2, 1], 1),   # asymmetric pads, dilation
    ((3, 4, 4, 4), (2, 4, 4, 4), [0, 0, 0, 0], [1, 1], [1, 1], 1),   # the kernel covers the whole input
    ((1, 1, 7, 5), (6, 1, 2, 3), [1, 1, 1, 1], [1, 1], [1, 1], 1),   # one input channel (not depthwise: group 1)
    # depthwise: the flat route (cols + one batched product) with flat=True, the windowed taps without
    ((2, 3, 33, 31), (3, 1, 3, 3), [1, 2, 1, 0], [1, 1], [1, 2], 3),  # depthwise on a large map
    ((2, 5, 4, 4), (5, 1, 3, 3), [0, 0, 0, 0], [1, 1], [1, 1], 5),   # depthwise on a small map
    ((3, 6, 3, 3), (6, 1, 3, 3), [1, 1, 1, 1], [1, 1], [1, 1], 6),   # 3x3 map: most of the flat grid is padding
    ((2, 4, 9, 10), (4, 1, 3, 3), [1, 0, 2, 1], [2, 1], [2, 1], 4),  # strided, dilated, uneven pads
    ((2, 3, 11, 10), (4, 3, 3, 3), [1, 1, 1, 1], [2, 2], [1, 1], 1),  # strided: phases of the padded input
    ((2, 3, 12, 13), (4, 3, 3, 2), [0, 2, 1, 0], [2, 3], [1, 2], 1),  # uneven strides with a dilation
    ((3, 5, 13, 11), (5, 1, 3, 3), [1, 0, 0, 1], [2, 2], [1, 1], 5),  # strided depthwise
    ((2, 3, 9, 9), (4, 3, 3, 3), [1, 1, 1, 1], [3, 3], [2, 2], 1),   # stride 3, dilation 2
    ((2, 2, 5, 6), (3, 2, 3, 3), [3, 0, 2, 4], [2, 3], [1, 1], 1),   # pads wider than the strides: empty phase rows
    ((3, 3, 4, 4), (2, 3, 2, 2), [3, 3, 3, 2], [1, 1], [1, 1], 1),   # pads wider than the kernel: no shared padding
    ((3, 2, 6, 5), (3, 2, 3, 3), [1, 0, 2, 2], [1, 1], [1, 1], 1),   # uneven pads shared between rows and images
    # enough input rows (C * kh >= 32) for the patch matrix per kernel column (one product per column, summed)
    ((2, 11, 9, 8), (4, 11, 3, 3), [1, 1, 1, 1], [1, 1], [1, 1], 1),
    ((2, 12, 11, 10), (5, 12, 3, 3), [1, 0, 2, 1], [2, 2], [1, 1], 1),  # phase columns 0, 1, 0 (+1)
    ((2, 16, 12, 13), (3, 16, 3, 2), [0, 2, 1, 0], [2, 3], [1, 2], 1),  # a dilated column beyond the stride
    ((2, 11, 13, 13), (4, 11, 3, 3), [1, 1, 1, 1], [3, 3], [2, 2], 1),  # stride 3, dilation 2
    ((3, 8, 12, 14), (2, 8, 4, 5), [2, 1, 1, 3], [1, 1], [1, 1], 1),  # a 4x5 kernel, uneven pads
    # a 7x7 stem with stride 2: phase column 0 holds kernel columns 0, 2, 4, 6 and phase column 1 only 1, 3, 5
    # (a doubled 3-channel input, as a Siracusa weight-zero-point stem: C * kh = 42)
    ((2, 6, 17, 16), (5, 6, 7, 7), [3, 3, 3, 3], [2, 2], [1, 1], 1),
])
def test_flat_and_windowed_convs_agree_with_the_reference(flat, dtype, shape, w_shape, pads, strides, dilations,
                                                          group, monkeypatch):
    monkeypatch.setattr(interp, "_FLAT_CONV", flat)
    monkeypatch.setattr(interp, "_IM2COL_BLOCK", 150)  # several blocks of images
    rng = np.random.default_rng(10)
    x = rng.integers(-128, 128, shape).astype(np.int8)
    w = rng.integers(-127, 128, w_shape)
    bias = rng.integers(-5000, 5000, w_shape[0])
    expected = _int64_conv(x, w, pads, strides, dilations, group)
    plain = int_conv_nd(x, w, pads, strides, dilations, group, dtype)
    assert plain.dtype == dtype
    np.testing.assert_array_equal(plain.astype(np.int64), expected)
    narrow = int_conv_nd(x, w, pads, strides, dilations, group, dtype, bias=bias, int_result=np.int32)
    assert narrow.dtype == np.int32
    np.testing.assert_array_equal(narrow, expected + bias.reshape(-1, 1, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, w_shape, pads, strides", [
    ((3, 3, 10, 9), (4, 3, 3, 3), [1, 1, 1, 1], [1, 1]),
    ((3, 2, 11, 10), (5, 2, 3, 2), [1, 0, 2, 1], [2, 2]),
])
def test_flat_conv_products_in_column_chunks_are_exact(dtype, shape, w_shape, pads, strides, monkeypatch):
    # few input rows (C * kh < 32): the product of the patch matrix runs in column chunks (here 7 columns, so that
    # chunks end inside rows, images and blocks); every chunk's sums are exact and land in their columns
    monkeypatch.setattr(interp, "_SMALL_GEMM", w_shape[0] * int(np.prod(w_shape[1:])) * 7)
    monkeypatch.setattr(interp, "_SMALL_GEMM_MIN_WIDTH", 1)
    monkeypatch.setattr(interp, "_IM2COL_BLOCK", 600)
    rng = np.random.default_rng(12)
    x = rng.integers(-128, 128, shape).astype(np.int8)
    w = rng.integers(-127, 128, w_shape)
    expected = _int64_conv(x, w, pads, strides, [1, 1], 1)
    y = int_conv_nd(x, w, pads, strides, [1, 1], 1, dtype)
    np.testing.assert_array_equal(y.astype(np.int64), expected)


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("pads, strides, dilations, sparse", [
    ([1, 0, 1, 0], [1, 1], [1, 1], False),  # padded: the flat or windowed route over the used taps
    ([0, 0, 0, 0], [1, 1], [1, 1], True),   # unpadded, 3 of 9 taps: the taps as views of x (_depthwise_sparse)
    ([0, 0, 0, 0], [2, 1], [1, 2], True),
])
def test_depthwise_taps_zero_in_every_channel_are_left_out_exactly(flat, dtype, pads, strides, dilations, sparse,
                                                                    monkeypatch):
    # a tall kernel over stacked copies with 3 nonzero taps of 9 (Siracusa's stacked residual add), one of them zero
    # in one channel only, so that it stays; and all-zero weights (one tap kept, zeros out)
    monkeypatch.setattr(interp, "_FLAT_CONV", flat)
    monkeypatch.setattr(interp, "_IM2COL_BLOCK", 400)  # several blocks of images
    sparse_runs = []
    real = interp._depthwise_sparse
    monkeypatch.setattr(interp, "_depthwise_sparse", lambda *a: sparse_runs.append(1) or real(*a))
    rng = np.random.default_rng(13)
    x = rng.integers(-128, 128, (5, 4, 20, 6)).astype(np.int8)
    w = np.zeros((4, 1, 9, 1), dtype=np.int64)
    w[:, 0, [0, 4, 8], 0] = rng.integers(1, 128, (4, 3))
    w[1, 0, 4, 0] = 0
    assert interp._used_taps(w.reshape(4, 1, 9)) == [0, 4, 8]
    for weights in (w, np.zeros_like(w)):
        expected = _int64_conv(x, weights, pads, strides, dilations, 4)
        y = int_conv_nd(x, weights, pads, strides, dilations, 4, dtype)
        np.testing.assert_array_equal(y.astype(np.int64), expected)
        assert weights is not w or not np.all(expected == 0)
    assert len(sparse_runs) == (2 if sparse else 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_depthwise_kernel_over_the_whole_input_is_exact(dtype):
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (7, 5, 4, 3)).astype(np.int8)
    w = rng.integers(-127, 128, (5, 1, 4, 3))
    bias = rng.integers(-(1 << 20), 1 << 20, 5)
    y = int_conv_nd(x, w, [0, 0, 0, 0], [1, 1], [1, 1], 5, dtype, bias=bias, int_result=True)
    expected = _int64_conv(x, w, [0, 0, 0, 0], [1, 1], [1, 1], 5) + bias.reshape(-1, 1, 1)
    assert y.shape == (7, 5, 1, 1) and y.dtype == np.int64
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("kind", ["int.add", "int.sub"])
def test_narrow_sums_are_exact_at_the_edges_of_their_types(kind):
    # i8 + i8 into an i32 result: computed in int32 (the runner keeps it narrow); the extremes must be exact
    m = Module("sum")
    a = input_op(m, "a", tensor((4,), i8))
    b = input_op(m, "b", tensor((4,), i8))
    ra = m.create("int.requant_shift", [a], [tensor((4,), i8)], {"mul": np.array([1]), "add": np.array([0]), "div": 1,
                                                                 "signed": True, "n_levels": 256}, loc="/ra")
    rb = m.create("int.requant_shift", [b], [tensor((4,), i8)], {"mul": np.array([1]), "add": np.array([0]), "div": 1,
                                                                 "signed": True, "n_levels": 256}, loc="/rb")
    s = m.create(kind, [ra.result, rb.result], [tensor((4,), i32)], loc="/s")
    output_op(m, "y", s.result)
    xa, xb = np.array([-128, 127, -128, 5]), np.array([-128, 127, 127, -7])
    got = run(m, {"a": xa, "b": xb})["y"]
    assert got.dtype == np.int64
    assert got.tolist() == (xa + xb if kind == "int.add" else xa - xb).tolist()


def test_requant_with_per_sample_parameters_on_large_maps():
    # parameters with a batch extent of their own: one unblocked pass, parameters not reduced to one image
    rng = np.random.default_rng(12)
    x = rng.integers(-5000, 5000, (3, 4, 32, 32))
    mul = rng.integers(1, 300, (3, 4, 1, 1))
    add = rng.integers(-900, 900, (3, 1, 1, 1))
    y = run(_requant_module(x.shape, mul, add, 256), {"x": x})["y"]
    np.testing.assert_array_equal(y, np.clip(np.floor_divide(x * mul + add + 128, 256), -128, 127))
