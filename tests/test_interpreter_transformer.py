"""int.isoftmax, int.ilayernorm, int.igelu: Deeploy's Generic C kernels (Softmax_s8_s8, Layernorm_s8_s8,
GELU_s8_s32) computed exactly.

Three kinds of check: cases derived by hand from the C code at its edges (ties, the int8 wrap of iLayerNorm, C's
truncating division, saturated rows, the z clamp at 31, the uint32 wrap of the normalisation), property tests of the
vectorised kernels against a line-by-line transcription of the C in Python ints, and the verifier's rules and text
round trip of the three ops.  (The kernels were also checked bit for bit against Deeploy's own vectors, Kernels/
Integer/Softmax Regular and Large and the CCT/Int/ICCT model's activations; those files are not in this repository.)
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qirc.qir.diagnostics import InterpretError, VerifyError
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.kernels_transformer import _softmax_values, igelu, ilayernorm, ilayernorm_prewrap, isoftmax
from qirc.qir.interpreter import run
from qirc.qir.parser import parse_module
from qirc.qir.printer import print_module
from qirc.qir.types import UniformQuantType, i8, i32, tensor, u8
from qirc.qir.verifier import verify

# I-BERT coefficients for an int8 softmax input of scale e (DESIGN.md section 7)
E = 0.03
IBERT = dict(coeffA=1, coeffB=round(1.353 / E), coeffC=round(0.344 / (0.3585 * E * E)), log2=round(np.log(2) / E))


# ----- a line-by-line transcription of the C kernels in Python ints ------------------------------------------------
def _cast(v, bits, signed=True):
    v &= (1 << bits) - 1
    return v - (1 << bits) if signed and v >= 1 << (bits - 1) else v


def _cdiv(a, b):
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


def softmax_c(row, coeffA, coeffB, coeffC, log2, n_levels):
    x_max = -128
    for v in row:
        if v > x_max:
            x_max = v
    y, y_sum = [], 0
    for v in row:
        x_tilde = _cast(v - x_max, 16)
        z = _cast(-_cdiv(x_tilde, log2), 8)
        z = min(max(z, 0), 31)
        p = _cast(x_tilde + _cast(z * log2, 32), 16)
        t = _cast(p + coeffB, 32)
        t = _cast(coeffA * _cast(t * t, 32), 32)
        yj = _cast((_cast(t + coeffC, 64) & (2 ** 64 - 1)) >> z, 32, signed=False)
        y.append(yj)
        y_sum = _cast(y_sum + yj, 32, signed=False)
    if y_sum == 0:
        raise ZeroDivisionError
    return [_cast(_cast(yj * (n_levels - 1), 32, False) // y_sum - n_levels // 2, 8) + n_levels // 2 for yj in y]


def layernorm_c(row, weight, bias, log2D):
    n = len(row)
    mean = 0
    for v in row:
        mean = _cast(mean + v, 32)
    mean = _cdiv(mean, n)
    s = 0
    for v in row:
        temp = _cast(v - mean, 16)
        s = _cast(s + temp * temp, 32)
    s = _cast(_cdiv(s, n) + 1, 32)
    std = 0
    if s > 0:  # _plp_sqrt_q32: a binary search
        start, end = 0, 46342
        while start <= end:
            mid = (start + end) >> 1
            sq = _cast(mid * mid, 32)
            if sq == s:
                std = mid
                break
            if sq < s:
                start, std = mid + 1, mid
            else:
                end = mid - 1
    return [_cast((_cdiv((v - mean) * w, std) + b) >> log2D, 8) for v, w, b in zip(row, weight, bias)]


def gelu_c(x, b, one):
    b, one = _cast(b, 8), _cast(one, 16)
    sign = (x > 0) - (x < 0)
    x_abs = sign * x
    q = -b if x_abs > -b else x_abs
    d = q + b
    L = _cast(sign * _cast(-(d * d) + one, 32), 32)
    return _cast(x * (_cast(one + L, 32) >> 1), 32)


# ----- iSoftmax by hand ----------------------------------------------------------------------------------------------
def test_softmax_ties_give_floor_of_255_over_length():
    # equal inputs: every y_j is the same, out = floor(255 * y / (L * y)) = floor(255 / L); the row sums to 252
    out = isoftmax(np.full((1, 4), 17), **IBERT)
    assert out.tolist() == [[63, 63, 63, 63]]


def test_softmax_row_of_minimum_values_starts_from_x_max_clamp():
    # x_max starts at -128 and is never exceeded: xT = 0 everywhere, same as any tie
    assert isoftmax(np.full((2, 5), -128), **IBERT).tolist() == [[51] * 5] * 2


def test_softmax_saturated_row_is_one_hot():
    # log2 = 22, coeffB = 43, coeffC = 967 (I-BERT at e = ln2/22).  The maximum: p = 0, y = 43^2 + 967 = 2816.
    # The others: xT = -255, z = -(-255 / 22) = 11 (truncated), p = -255 + 242 = -13, y = (30^2 + 967) >> 11 = 0.
    out = isoftmax(np.array([[127, -128, -128, -128]]), coeffA=1, coeffB=43, coeffC=967, log2=22)
    assert out.tolist() == [[255, 0, 0, 0]]


def test_softmax_z_clamps_at_31_and_normalisation_wraps_in_uint32():
    # log2 = 2, xT = -255: -(xT / 2) = 127, clamped to 31; p = -255 + 62 = -193;
    # y = (193^2 + 2^31 - 1) >> 31 = 1 (unclamped, the shift would drop it to 0).  The maximum: y = 2^31 - 1.
    row = np.array([[127, -128]])
    coeffs = dict(coeffA=1, coeffB=0, coeffC=2 ** 31 - 1, log2=2)
    assert _softmax_values(row, **coeffs).tolist() == [[2 ** 31 - 1, 1]]
    # sum = 2^31; (2^31 - 1) * 255 wraps in uint32 to 2^31 - 255, which divides to 0: the kernel outputs 0, not 255
    assert isoftmax(row, **coeffs).tolist() == [[0, 0]]


def test_softmax_truncating_division_in_z():
    # xT = -3 with log2 = 2: C gives -3 / 2 = -1, z = 1, p = -1; a floor division would give z = 2, p = 1.
    coeffs = dict(coeffA=1, coeffB=10, coeffC=0, log2=2)
    y = _softmax_values(np.array([[3, 0]]), **coeffs)
    assert y.tolist() == [[100, (9 * 9) >> 1]]


def test_softmax_kernel_through_the_interpreter_and_division_by_zero_is_located():
    m = Module("m")
    x = input_op(m, "x", tensor((2, 3), i8))
    op = m.create("int.isoftmax", [x], [tensor((2, 3), u8)], dict(IBERT), loc="/attn/Softmax")
    output_op(m, "y", op.result)
    verify(m)
    xs = np.array([[1, 2, 3], [-128, 127, 0]])
    assert np.array_equal(run(m, {"x": xs})["y"], isoftmax(xs, **IBERT))
    # coeffA = 0, coeffC = 2^32 on a constant row: z = 0 and every y = 2^32 wraps to 0 in uint32
    op.attrs.update(coeffA=0, coeffC=2 ** 32)
    with pytest.raises(InterpretError, match=r"/attn/Softmax.*divides by zero"):
        run(m, {"x": np.full((2, 3), 7)})


# ----- iLayerNorm by hand --------------------------------------------------------------------------------------------
def test_layernorm_output_wraps_in_int8():
    # [-1, 1]: mean 0, var = 2 / 2 + 1 = 2, std 1; out = x * 200 = -200, 200, which wrap to 56, -56
    w, b = np.array([200, 200]), np.array([0, 0])
    assert ilayernorm_prewrap(np.array([[-1, 1]]), w, b, 0).tolist() == [[-200, 200]]
    assert ilayernorm(np.array([[-1, 1]]), w, b, 0).tolist() == [[56, -56]]


def test_layernorm_mean_truncates_toward_zero():
    # [-3, 0]: mean = -3 / 2 = -1 (floor would be -2); temp = -2, 1; var = 5 / 2 + 1 = 3; std = 1
    assert ilayernorm(np.array([[-3, 0]]), np.array([1, 1]), np.array([0, 0]), 0).tolist() == [[-2, 1]]


def test_layernorm_division_truncates_and_shift_floors():
    # [-4, 0, 0, 4]: mean 0, var = 32 / 4 + 1 = 9, std 3; x * 1 / 3 = -1, 0, 0, 1 (truncated)
    x, w, b = np.array([[-4, 0, 0, 4]]), np.ones(4, np.int64), np.zeros(4, np.int64)
    assert ilayernorm(x, w, b, 0).tolist() == [[-1, 0, 0, 1]]
    # >> 1 is arithmetic: -1 >> 1 = -1, 1 >> 1 = 0
    assert ilayernorm(x, w, b, 1).tolist() == [[-1, 0, 0, 0]]


def test_layernorm_constant_row_gives_bias_and_unsigned_input_is_read_as_is():
    # var = 0 / L + 1 = 1, std 1: out = bias >> k; the first row holds the unsigned value 200 (Deeploy adds 128 back
    # to its stored u - 128)
    x = np.array([[200, 200, 200], [0, 0, 0]])
    out = ilayernorm(x, np.array([5, 6, 7]), np.array([64, -64, 255]), 2)
    assert out.tolist() == [[16, -16, 63]] * 2


def test_layernorm_through_the_interpreter():
    m = Module("m")
    x = input_op(m, "x", tensor((1, 3, 4), UniformQuantType.per_tensor(u8, 0.1, 0)))
    w = const_op(m, np.array([100, 200, 300, 400], np.int32), tensor((4,), i32))
    b = const_op(m, np.array([0, 8, -8, 1000], np.int32), tensor((4,), i32))
    op = m.create("int.ilayernorm", [x, w, b], [tensor((1, 3, 4), i8)], {"D": 16, "n_levels": 256}, loc="/ln")
    output_op(m, "y", op.result)
    verify(m)
    xs = np.array([[[0, 255, 3, 9], [10, 10, 11, 11], [200, 100, 50, 25]]])
    expect = [layernorm_c(r, [100, 200, 300, 400], [0, 8, -8, 1000], 4) for r in xs[0]]
    assert run(m, {"x": xs})["y"].tolist() == [expect]


# ----- iGELU by hand -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, y", [
    (0, 0),
    (100, 100 * 1743),     # beyond -b: q = 40, d = 0, L = one, y = x * one
    (-100, 0),             # L = -one: (one - one) >> 1 = 0
    (10, 10 * 1293),       # d = -30, L = 1743 - 900 = 843, (1743 + 843) >> 1 = 1293
    (-10, -10 * 450),      # L = -843, (1743 - 843) >> 1 = 450
    (-1, -760),            # d = -39, L = -(1743 - 1521) = -222, 1521 >> 1 = 760
])
def test_gelu_by_hand(x, y):
    assert igelu(np.array([x]), -40, 1743).tolist() == [y]


def test_gelu_shift_of_a_negative_sum_is_arithmetic():
    # one = 100, x = 11: d = -29, L = 100 - 841 = -741, one + L = -641, >> 1 = -321 (floor), y = -3531
    assert igelu(np.array([11]), -40, 100).tolist() == [-3531]


# ----- the vectorised kernels against the C transcription ------------------------------------------------------------
rows = st.integers(1, 4).flatmap(lambda r: st.integers(1, 12).flatmap(
    lambda c: st.lists(st.lists(st.integers(-128, 127), min_size=c, max_size=c), min_size=r, max_size=r)))


@settings(max_examples=150, deadline=None)
@given(rows, st.floats(4.2e-4, 0.35), st.integers(2, 256))
def test_softmax_matches_c_with_ibert_coefficients(x, e, n_levels):
    coeffs = dict(coeffA=1, coeffB=round(1.353 / e), coeffC=round(0.344 / (0.3585 * e * e)),
                  log2=max(2, round(np.log(2) / e)))
    got = isoftmax(np.array(x), n_levels=n_levels, **coeffs)
    assert got.tolist() == [softmax_c(r, n_levels=n_levels, **coeffs) for r in x]


@settings(max_examples=150, deadline=None)
@given(rows, st.integers(-4, 4), st.integers(-2 ** 31, 2 ** 31 - 1), st.integers(0, 2 ** 45),
       st.integers(2, 2 ** 31 - 1))
def test_softmax_matches_c_with_any_coefficients(x, coeffA, coeffB, coeffC, log2):
    coeffs = dict(coeffA=coeffA, coeffB=coeffB, coeffC=coeffC, log2=log2, n_levels=256)
    try:
        expect = [softmax_c(r, **coeffs) for r in x]
    except ZeroDivisionError:
        with pytest.raises(ZeroDivisionError):
            isoftmax(np.array(x), **coeffs)
        return
    assert isoftmax(np.array(x), **coeffs).tolist() == expect


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3).flatmap(lambda r: st.integers(1, 16).flatmap(lambda c: st.tuples(
    st.lists(st.lists(st.integers(-128, 255), min_size=c, max_size=c), min_size=r, max_size=r),
    st.lists(st.integers(-2 ** 31, 2 ** 31 - 1), min_size=c, max_size=c),
    st.lists(st.integers(-2 ** 31, 2 ** 31 - 1), min_size=c, max_size=c)))), st.integers(0, 30))
def test_layernorm_matches_c(data, log2D):
    x, w, b = data
    x = [[min(v, 127) if i % 2 else v for v in r] for i, r in enumerate(x)]  # int8 rows and unsigned rows
    got = ilayernorm(np.array(x), np.array(w), np.array(b), log2D)
    assert got.tolist() == [layernorm_c(r, w, b, log2D) for r in x]


@settings(max_examples=100, deadline=None)
@given(st.integers(-128, 127), st.integers(-2 ** 15, 2 ** 15 - 1))
def test_gelu_matches_c_for_every_input(b, one):
    x = np.arange(-128, 256)  # int8 and unsigned inputs
    assert igelu(x, b, one).tolist() == [gelu_c(int(v), b, one) for v in x]


# ----- verifier and text form ----------------------------------------------------------------------------------------
TEXT = """qir.module @m {
  %x = qir.input "x" : tensor<2x8x!quant.uniform<i8:f32, 0.03:0>>
  %w = qir.const dense<[1, 2, 3, 4, 5, 6, 7, 8]> : tensor<8xi32>
  %b = qir.const dense<[0, 0, 0, 0, 0, 0, 0, 0]> : tensor<8xi32>
  %0 = int.isoftmax %x {coeffA = 1, coeffB = 45, coeffC = 1066, log2 = 23, n_levels = 256} : tensor<2x8x!quant.uniform<u8:f32, 0.00392156862745098:0>>
  %1 = int.ilayernorm %x, %w, %b {D = 1024, n_levels = 256} : tensor<2x8xi8>
  %2 = int.igelu %x {b = -83, one = 7694} : tensor<2x8xi32>
  qir.output "p" %0
  qir.output "n" %1
  qir.output "g" %2
}
"""


def test_text_form_round_trips_and_runs():
    m = parse_module(TEXT)
    verify(m)
    assert print_module(parse_module(print_module(m))) == print_module(m)
    x = np.arange(-8, 8).reshape(2, 8) * 9
    out = run(m, {"x": x})
    assert np.array_equal(out["p"], isoftmax(x, 1, 45, 1066, 23))
    assert np.array_equal(out["n"], ilayernorm(x, np.arange(1, 9), np.zeros(8), 10))
    assert np.array_equal(out["g"], igelu(x, -83, 7694))


@pytest.mark.parametrize("old, new, message", [
    ("log2 = 23", "log2 = 1", "log2 1 must be at least 2"),
    ("n_levels = 256} : tensor<2x8x!quant", "n_levels = 257} : tensor<2x8x!quant", "n_levels 257 must be in 2..256"),
    ("coeffB = 45", "coeffB = 2147483648", "coeffB 2147483648 does not fit the kernel's int32"),
    ("D = 1024", "D = 1000", "D 1000 must be a positive power of two"),
    ("b = -83", "b = -129", "b -129 does not fit the kernel's int8"),
    ("one = 7694", "one = 40000", "one 40000 does not fit the kernel's int16"),
    ("%2 = int.igelu %x {b = -83, one = 7694} : tensor<2x8xi32>",
     "%2 = int.igelu %x {b = -83, one = 7694} : tensor<2x8xi16>",
     "result must be a signed 32-bit tensor"),
    ("%1 = int.ilayernorm %x, %w, %b {D = 1024, n_levels = 256} : tensor<2x8xi8>",
     "%1 = int.ilayernorm %x, %w, %b {D = 1024, n_levels = 256} : tensor<2x8xu8>", "result must be a signed 8-bit"),
    ("%w = qir.const dense<[1, 2, 3, 4, 5, 6, 7, 8]> : tensor<8xi32>",
     "%w = qir.const dense<[1, 2, 3, 4]> : tensor<4xi32>",
     "weight 4 must have shape 8"),
])
def test_verifier_rules(old, new, message):
    text = TEXT.replace(old, new)
    assert text != TEXT
    with pytest.raises(VerifyError, match=message):
        verify(parse_module(text))


def test_verifier_wants_an_8_bit_input():
    text = TEXT.replace("tensor<2x8x!quant.uniform<i8:f32, 0.03:0>>", "tensor<2x8xi16>")
    with pytest.raises(VerifyError, match="operand 0 must be an 8-bit integer tensor"):
        verify(parse_module(text))
