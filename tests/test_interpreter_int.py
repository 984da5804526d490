"""int.* kernels against straightforward references (Python ints, direct loops, float64 on small ints), overflow
reporting, input binding, and the runner's contracts (run_values, list inputs, batch N in the kernels)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from qirc.qir.diagnostics import InterpretError, OverflowError_, QircError
from qirc.qir.interpreter import KERNELS, exact_int_matmul, random_inputs, run, run_values
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.types import UniformQuantType, i8, i32, i64, tensor, u8


def single(op_name, operands, out_type, attrs=None, loc=None):
    """A module `op_name(inputs/consts...)`; operands are ("in", array, type) or ("const", array, type)."""
    m = Module("single")
    values, feeds = [], {}
    for i, (kind, array, type) in enumerate(operands):
        if kind == "in":
            values.append(input_op(m, f"in{i}", type))
            feeds[f"in{i}"] = array
        else:
            values.append(const_op(m, array, type))
    op = m.create(op_name, values, [out_type], attrs or {}, loc=loc or f"/{op_name}")
    output_op(m, "out", op.result)
    return m, feeds, op


def run_single(op_name, operands, out_type, attrs=None, **kw):
    m, feeds, _ = single(op_name, operands, out_type, attrs)
    return run(m, feeds, **kw)["out"]


def ints(rng, lo, hi, shape):
    return rng.integers(lo, hi, shape, endpoint=True, dtype=np.int64)


# ----- references ------------------------------------------------------------------------------------------------
def conv_reference(x, w, b, pads, strides, dilations, group):
    """Direct 2-D convolution with Python loops over output positions, float64 (exact for these small ints)."""
    N, C, H, W = x.shape
    M, Cg, KH, KW = w.shape
    xp = np.zeros((N, C, H + pads[0] + pads[2], W + pads[1] + pads[3]), np.float64)
    xp[:, :, pads[0]:pads[0] + H, pads[1]:pads[1] + W] = x
    OH = (xp.shape[2] - dilations[0] * (KH - 1) - 1) // strides[0] + 1
    OW = (xp.shape[3] - dilations[1] * (KW - 1) - 1) // strides[1] + 1
    y = np.zeros((N, M, OH, OW), np.float64)
    Mg = M // group
    for n, m, oh, ow in itertools.product(range(N), range(M), range(OH), range(OW)):
        g = m // Mg
        h0, w0 = oh * strides[0], ow * strides[1]
        patch = xp[n, g * Cg:(g + 1) * Cg, h0:h0 + dilations[0] * (KH - 1) + 1:dilations[0],
                   w0:w0 + dilations[1] * (KW - 1) + 1:dilations[1]]
        y[n, m, oh, ow] = np.sum(patch * w[m]) + (b[m] if b is not None else 0)
    return y.astype(np.int64)


def requant_reference(x, mul, add, div, signed, n_levels):
    """Deeploy's RequantShift with Python ints (floor division floors towards -inf)."""
    lo, hi = (-(n_levels // 2), n_levels // 2 - 1) if signed else (0, n_levels - 1)
    mul_b = np.broadcast_to(mul, x.shape)
    add_b = np.broadcast_to(add, x.shape)
    out = np.empty(x.shape, np.int64)
    for idx in np.ndindex(*x.shape):
        t = int(x[idx]) * int(mul_b[idx]) + int(add_b[idx]) + div // 2
        out[idx] = min(max(t // div, lo), hi)
    return out


# ----- conv / gemm / matmul --------------------------------------------------------------------------------------
CONV_CASES = [
    ((1, 3, 8, 8), (4, 3, 3, 3), [1, 1, 1, 1], [1, 1], [1, 1], 1, True),
    ((2, 4, 7, 9), (6, 2, 3, 2), [0, 1, 2, 0], [2, 1], [1, 2], 2, False),
    ((1, 6, 9, 9), (6, 1, 3, 3), [1, 1, 1, 1], [2, 2], [1, 1], 6, True),  # depthwise
    ((1, 3, 6, 6), (6, 1, 3, 3), [2, 2, 2, 2], [1, 1], [2, 2], 3, True),  # depthwise, multiplier 2, dilated
    ((1, 1, 10, 6), (5, 1, 4, 3), [2, 1, 1, 1], [2, 2], [1, 1], 1, False),  # one input channel
]


@pytest.mark.parametrize("xs,ws,pads,strides,dilations,group,bias", CONV_CASES)
def test_conv_matches_direct_reference(xs, ws, pads, strides, dilations, group, bias):
    rng = np.random.default_rng(0)
    x, w = ints(rng, -128, 127, xs), ints(rng, -127, 127, ws)
    b = ints(rng, -5000, 5000, (ws[0],)) if bias else None
    ref = conv_reference(x, w, b, pads, strides, dilations, group)
    operands = [("in", x, tensor(xs, i8)), ("const", w.astype(np.int8), tensor(ws, i8))]
    if bias:
        operands.append(("const", b.astype(np.int32), tensor(b.shape, i32)))
    got = run_single("int.conv", operands, tensor(ref.shape, i32),
                     dict(kernel_shape=list(ws[2:]), pads=pads, strides=strides, dilations=dilations, group=group))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref)


def test_conv_is_exact_beyond_float64_precision():
    # products near 2^60 and sums that float64 would round: the kernel must switch to exact int64 arithmetic
    rng = np.random.default_rng(1)
    x = ints(rng, -(1 << 29), 1 << 29, (1, 2, 4, 4)) | 1
    w = ints(rng, -(1 << 29), 1 << 29, (3, 2, 2, 2)) | 1
    m, feeds, op = single("int.conv", [("in", x, tensor(x.shape, i64)), ("const", w, tensor(w.shape, i64))],
                          tensor((1, 3, 3, 3), i64), dict(kernel_shape=[2, 2], pads=[0] * 4, strides=[1, 1],
                                                          dilations=[1, 1]))
    got = run(m, feeds)["out"]
    for o, i, j in itertools.product(range(3), range(3), range(3)):
        exact = sum(int(x[0, c, i + a, j + b_]) * int(w[o, c, a, b_])
                    for c, a, b_ in itertools.product(range(2), range(2), range(2)))
        assert int(got[0, o, i, j]) == exact
    # the float64 route would be wrong here: odd products above 2^53 are not representable
    as_float = conv_reference(x.astype(np.float64), w.astype(np.float64), None, [0] * 4, [1, 1], [1, 1], 1)
    assert np.any(as_float != got)


def test_exact_int_matmul_both_paths():
    rng = np.random.default_rng(2)
    small_a, small_b = ints(rng, -128, 127, (5, 300)), ints(rng, -128, 127, (300, 4))
    ref = np.array([[sum(int(small_a[i, k]) * int(small_b[k, j]) for k in range(300)) for j in range(4)]
                    for i in range(5)])
    np.testing.assert_array_equal(exact_int_matmul(small_a, small_b), ref)
    big_a, big_b = small_a * (1 << 22) + 1, small_b * (1 << 22) + 3
    ref_big = [[sum(int(big_a[i, k]) * int(big_b[k, j]) for k in range(300)) for j in range(4)] for i in range(5)]
    assert exact_int_matmul(big_a, big_b).tolist() == ref_big
    # float64 would have lost the low bits here
    assert np.matmul(big_a.astype(np.float64), big_b.astype(np.float64)).astype(np.int64).tolist() != ref_big


@pytest.mark.parametrize("ta,tb,with_c", [(0, 0, False), (0, 1, True), (1, 0, True), (1, 1, False)])
def test_gemm(ta, tb, with_c):
    rng = np.random.default_rng(3)
    a = ints(rng, -128, 127, (20, 4) if ta else (4, 20))
    b = ints(rng, -127, 127, (6, 20) if tb else (20, 6))
    c = ints(rng, -1000, 1000, (6,))
    ref = (a.T if ta else a).astype(object).dot((b.T if tb else b).astype(object)) + (c if with_c else 0)
    operands = [("in", a, tensor(a.shape, i8)), ("const", b, tensor(b.shape, i8))]
    if with_c:
        operands.append(("const", c, tensor(c.shape, i32)))
    got = run_single("int.gemm", operands, tensor((4, 6), i32), dict(transA=ta, transB=tb))
    assert got.tolist() == ref.tolist()


def test_matmul_batched():
    rng = np.random.default_rng(4)
    a, b = ints(rng, -128, 127, (2, 3, 5)), ints(rng, -128, 127, (5, 4))
    got = run_single("int.matmul", [("in", a, tensor(a.shape, i8)), ("const", b, tensor(b.shape, i8))],
                     tensor((2, 3, 4), i32))
    np.testing.assert_array_equal(got, np.einsum("nik,kj->nij", a, b))


def test_conv_kernel_handles_any_batch():
    rng = np.random.default_rng(5)
    x, w = ints(rng, -128, 127, (1, 3, 6, 6)), ints(rng, -127, 127, (4, 3, 3, 3))
    _, _, op = single("int.conv", [("in", x, tensor(x.shape, i8)), ("const", w, tensor(w.shape, i8))],
                      tensor((1, 4, 6, 6), i32), dict(kernel_shape=[3, 3], pads=[1] * 4, strides=[1, 1],
                                                      dilations=[1, 1]))
    batch = ints(rng, -128, 127, (5, 3, 6, 6))
    (y,) = KERNELS["int.conv"](op, [batch, w])
    for n in range(5):
        np.testing.assert_array_equal(y[n:n + 1], conv_reference(batch[n:n + 1], w, None, [1] * 4, [1, 1], [1, 1],
                                                                   1))


# ----- requant_shift -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signed,n_levels,per_channel", [(True, 256, True), (False, 256, True), (True, 16, False),
                                                         (False, 128, False)])
def test_requant_shift_matches_python_ints(signed, n_levels, per_channel):
    rng = np.random.default_rng(6)
    x = ints(rng, -60000, 60000, (2, 4, 3, 3))
    div = 1 << 14
    if per_channel:
        mul = ints(rng, 1, 300, (4, 1, 1))
        add = ints(rng, -(1 << 20), 1 << 20, (4, 1, 1))
    else:
        mul, add = np.array([123]), np.array([-777])
    out_type = tensor(x.shape, UniformQuantType.per_tensor(i8 if signed else u8, 0.1, 0))
    if n_levels != 256:
        out_type = tensor(x.shape, i8)
    got = run_single("int.requant_shift", [("in", x, tensor(x.shape, i32))], out_type,
                     dict(mul=mul.astype(np.int32), add=add.astype(np.int32), div=div, signed=signed,
                          n_levels=n_levels))
    ref = requant_reference(x, mul, add, div, signed, n_levels)
    np.testing.assert_array_equal(got, ref)
    lo, hi = (-(n_levels // 2), n_levels // 2 - 1) if signed else (0, n_levels - 1)
    assert got.min() == lo and got.max() == hi  # both clip bounds reached on this data


def test_requant_shift_floors_negative_values():
    # t = x*mul + add + div/2; floor(-1.5) = -2, floor(-0.25) = -1 (truncation would give -1 and 0)
    x = np.array([-7, -5, -3, -1, 0, 1, 3], np.int64)
    got = run_single("int.requant_shift", [("in", x, tensor(x.shape, i32))], tensor(x.shape, i8),
                     dict(mul=np.array([1], np.int32), add=np.array([0], np.int32), div=4))
    # (x + 2) / 4 floored
    assert got.tolist() == [-2, -1, -1, 0, 0, 0, 1]


def test_requant_shift_intermediate_int32_overflow_is_located():
    x = np.array([[40000, -3]], np.int64)
    m, feeds, _ = single("int.requant_shift", [("in", x, tensor(x.shape, i32))], tensor(x.shape, i8),
                         dict(mul=np.array([60000], np.int32), add=np.array([0], np.int32), div=1 << 20),
                         loc="/layer3/Requant")
    with pytest.raises(OverflowError_) as e:
        run(m, feeds)
    text = str(e.value)
    assert "/layer3/Requant" in text and "2400524288" in text and "2147483647" in text
    assert "\n" not in text
    out = run(m, feeds, check_overflow=False)["out"]
    assert out.tolist() == [[127, 0]]  # (-180000 + 2^19) // 2^20 = 0


# ----- accumulator overflow --------------------------------------------------------------------------------------
def test_conv_accumulator_overflow_names_the_op():
    x = np.full((1, 1, 3, 3), 50000, np.int64)
    w = np.full((1, 1, 3, 3), 7000, np.int32)
    m, feeds, _ = single("int.conv", [("in", x, tensor(x.shape, i32)), ("const", w, tensor(w.shape, i32))],
                         tensor((1, 1, 1, 1), i32), dict(kernel_shape=[3, 3], pads=[0] * 4, strides=[1, 1],
                                                         dilations=[1, 1]), loc="/conv1/Conv")
    with pytest.raises(OverflowError_) as e:
        run(m, feeds)
    assert str(e.value) == ("node '/conv1/Conv' (int.conv): int32 accumulator overflow: values reach 3150000000 "
                            "(limit 2147483647); 1 of 1 values out of range -2147483648..2147483647")
    assert run(m, feeds, check_overflow=False)["out"].item() == 3150000000


def test_quant_storage_overflow_is_reported():
    a = np.array([100, -100], np.int64)
    qt = UniformQuantType.per_tensor(i8, 0.5, 0, storage_min=-127)
    m, feeds, _ = single("int.add", [("in", a, tensor((2,), qt)), ("const", a, tensor((2,), qt))],
                         tensor((2,), qt), loc="/add")
    with pytest.raises(OverflowError_) as e:
        run(m, feeds)
    assert "/add" in str(e.value) and "values reach 200 (limit 127)" in str(e.value)


# ----- elementwise, pooling, data movement -------------------------------------------------------------------------
def test_add_sub_mul_clip_broadcast():
    rng = np.random.default_rng(7)
    a, b = ints(rng, -100, 100, (2, 3, 4)), ints(rng, -100, 100, (3, 1))
    t = tensor
    for name, ref in [("int.add", a + b), ("int.sub", a - b), ("int.mul", a * b)]:
        got = run_single(name, [("in", a, t(a.shape, i8)), ("in", b, t(b.shape, i8))], t(a.shape, i32))
        np.testing.assert_array_equal(got, ref)
    got = run_single("int.clip", [("in", a, t(a.shape, i8))], t(a.shape, i8), dict(min=-5, max=17))
    np.testing.assert_array_equal(got, np.minimum(np.maximum(a, -5), 17))


def window_reference(x, k, s, pads, fill, reduce, ceil_mode=0):
    """Pooling by explicit windows on the padded array (onnxruntime's ceil rule: windows start before the end pad)."""
    N, C, H, W = x.shape
    xp = np.full((N, C, H + pads[0] + pads[2] + k[0], W + pads[1] + pads[3] + k[1]), fill, np.int64)
    xp[:, :, pads[0]:pads[0] + H, pads[1]:pads[1] + W] = x
    sizes = []
    for d, (L, pb, pe) in enumerate([(H, pads[0], pads[2]), (W, pads[1], pads[3])]):
        span = L + pb + pe - k[d]
        o = (-(-span // s[d]) if ceil_mode else span // s[d]) + 1
        if ceil_mode and (o - 1) * s[d] >= L + pb:
            o -= 1
        sizes.append(o)
    y = np.zeros((N, C, *sizes), np.int64)
    for i, j in itertools.product(range(sizes[0]), range(sizes[1])):
        y[:, :, i, j] = reduce(xp[:, :, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]], axis=(2, 3))
    return y


@pytest.mark.parametrize("k,s,pads,ceil_mode", [((2, 2), (2, 2), [0, 0, 0, 0], 0), ((3, 3), (2, 2), [1, 1, 1, 1], 0),
                                                ((3, 2), (2, 3), [1, 0, 0, 1], 1)])
def test_maxpool_and_sumpool(k, s, pads, ceil_mode):
    rng = np.random.default_rng(8)
    x = ints(rng, -128, -1, (2, 3, 7, 8))  # all negative: a zero in the padding must never win the max
    attrs = dict(kernel_shape=list(k), strides=list(s), pads=pads, ceil_mode=ceil_mode)
    max_ref = window_reference(x, k, s, pads, np.iinfo(np.int64).min, np.max, ceil_mode)
    sum_ref = window_reference(x, k, s, pads, 0, np.sum, ceil_mode)
    got_max = run_single("int.maxpool", [("in", x, tensor(x.shape, i8))], tensor(max_ref.shape, i8), attrs)
    got_sum = run_single("int.sumpool", [("in", x, tensor(x.shape, i8))], tensor(sum_ref.shape, i32), attrs)
    np.testing.assert_array_equal(got_max, max_ref)
    np.testing.assert_array_equal(got_sum, sum_ref)
    assert got_max.max() < 0


def test_pad_with_zero_point_value():
    x = np.arange(6, dtype=np.int64).reshape(1, 1, 2, 3)
    got = run_single("int.pad", [("in", x, tensor(x.shape, i8))], tensor((1, 1, 4, 4), i8),
                     dict(pads=[0, 0, 1, 0, 0, 0, 1, 1], value=-128))
    ref = np.full((1, 1, 4, 4), -128)
    ref[0, 0, 1:3, 0:3] = x[0, 0]
    np.testing.assert_array_equal(got, ref)


def test_reduce_sum_and_shape_ops():
    rng = np.random.default_rng(9)
    x = ints(rng, -128, 127, (2, 3, 4, 5))
    t = tensor
    cases = [
        ("int.reduce_sum", dict(axes=[2, 3], keepdims=1), x.sum(axis=(2, 3), keepdims=True), i32),
        ("int.reduce_sum", dict(axes=[-1], keepdims=0), x.sum(axis=-1), i32),
        ("int.reshape", dict(shape=[6, 20]), x.reshape(6, 20), i8),
        ("int.flatten", dict(axis=2), x.reshape(6, 20), i8),
        ("int.transpose", dict(perm=[0, 2, 3, 1]), x.transpose(0, 2, 3, 1), i8),
        ("int.unsqueeze", dict(axes=[0, -1]), x[None, ..., None], i8),
    ]
    for name, attrs, ref, elem in cases:
        got = run_single(name, [("in", x, t(x.shape, i8))], t(ref.shape, elem), attrs)
        np.testing.assert_array_equal(got, ref, err_msg=name)
    y = x[:, :1]
    got = run_single("int.squeeze", [("in", y, t(y.shape, i8))], t((2, 4, 5), i8), dict(axes=[1]))
    np.testing.assert_array_equal(got, y[:, 0])
    got = run_single("int.concat", [("in", x, t(x.shape, i8)), ("const", x[:, :2], t((2, 2, 4, 5), i8))],
                     t((2, 5, 4, 5), i8), dict(axis=1))
    np.testing.assert_array_equal(got, np.concatenate([x, x[:, :2]], axis=1))


# ----- the runner ---------------------------------------------------------------------------------------------------
def two_input_module():
    m = Module("two")
    a = input_op(m, "a", tensor((2, 3), i8))
    b = input_op(m, "b", tensor((2, 3), i8))
    s = m.create("int.add", [a, b], [tensor((2, 3), i32)], loc="/add").result
    p = m.create("int.mul", [s, b], [tensor((2, 3), i32)], loc="/mul").result
    output_op(m, "sum", s)
    output_op(m, "prod", p)
    return m


def test_run_values_and_output_order():
    m = two_input_module()
    a = np.arange(6).reshape(2, 3) - 3
    b = np.ones((2, 3), np.int8) * 2
    out = run(m, [a, b])
    assert list(out) == ["sum", "prod"]
    np.testing.assert_array_equal(out["prod"], (a + 2) * 2)
    values = run_values(m, {"a": a, "b": b})
    add = m.walk("int.add")[0]
    assert values[add.result].tolist() == (a + 2).tolist()
    assert all(values[v].dtype == np.int64 for v in values)
    assert len(values) == 4  # a, b, sum, product


@pytest.mark.parametrize("inputs,needle", [
    ({"a": np.zeros((2, 3))}, "missing input 'b'"),
    ({"a": np.zeros((2, 3)), "b": np.zeros((2, 3)), "c": np.zeros(1)}, "unknown input 'c'"),
    ([np.zeros((2, 3))], "expected 2 inputs"),
    ({"a": np.zeros((3, 2)), "b": np.zeros((2, 3))}, "input 'a' has shape 3x2"),
    ({"a": np.full((2, 3), 300), "b": np.zeros((2, 3))}, "input 'a' has values 300..300 outside"),
    ({"a": np.full((2, 3), 0.5), "b": np.zeros((2, 3))}, "non-integer"),
])
def test_bad_inputs_are_qirc_errors_naming_the_input(inputs, needle):
    with pytest.raises(QircError) as e:
        run(two_input_module(), inputs)
    assert needle in str(e.value)


def test_random_inputs_span_the_integer_storage_range():
    m = two_input_module()
    inputs = random_inputs(m, seed=3)
    assert set(inputs) == {"a", "b"} and inputs["a"].dtype == np.int64
    big = Module("big")
    v = input_op(big, "x", tensor((5000,), i8))
    output_op(big, "y", v)
    x = random_inputs(big, seed=0)["x"]
    assert x.min() == -128 and x.max() == 127


def test_bad_operands_are_located():
    x = np.zeros((1, 2, 4, 4), np.int64)
    w = np.zeros((2, 3, 3, 3), np.int64)  # 3 input channels for a 2-channel input
    m, feeds, _ = single("int.conv", [("in", x, tensor(x.shape, i8)), ("const", w, tensor(w.shape, i8))],
                         tensor((1, 2, 2, 2), i32), dict(kernel_shape=[3, 3]), loc="/bad/Conv")
    with pytest.raises(InterpretError) as e:
        run(m, feeds)
    assert "/bad/Conv" in str(e.value) and "channels" in str(e.value)


def test_op_without_kernel_is_located():
    m = Module("unknown")
    x = input_op(m, "x", tensor((2,), i8))
    y = m.create("int.frobnicate", [x], [tensor((2,), i8)], loc="/odd").result
    output_op(m, "y", y)
    with pytest.raises(InterpretError) as e:
        run(m, {"x": np.zeros(2, np.int64)})
    assert str(e.value) == "node '/odd' (int.frobnicate): the interpreter has no kernel for int.frobnicate"
