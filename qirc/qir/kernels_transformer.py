"""Interpreter kernels of the integer transformer ops: `int.isoftmax`, `int.ilayernorm`, `int.igelu`.

Each kernel computes exactly what Deeploy's Generic C kernel computes (TargetLibraries/Generic/src: Softmax_s8.c
`Softmax_s8_s8`, Layernorm_s8.c `Layernorm_s8_s8`, GELU_s8.c `GELU_s8_s32`), statement by statement, with C's
semantics: integer `/` truncates toward zero, `>>` on a signed value is arithmetic, a cast to a narrower type wraps
(two's complement), signed int32 arithmetic wraps as the compiled code does.  Values are the logical integers of the
IR (an unsigned 8-bit tensor holds 0..255): Deeploy stores such a tensor as u - 128 and passes `input_offset` = 128,
so the kernels see the same numbers.  The iSoftmax kernel has no input offset; it is shift invariant except for its
`x_max` start value of -128, which no stored value undercuts either way.

The numpy functions `isoftmax`, `ilayernorm`, `igelu` are public so that lowering and accuracy reports can call the
very arithmetic the device runs.
"""
from __future__ import annotations

import numpy as np

from .diagnostics import InterpretError, op_error
from .interpreter import kernel

_I64 = np.int64
_SQRT_EXACT = 46340 * 46340  # below this, _plp_sqrt_q32's int32 mid * mid never overflows: it is floor(sqrt)


def wrap(a, bits: int):
    """Two's-complement wrap of int64 values to a signed `bits`-bit integer (a C cast to int8/int16/int32)."""
    a = np.asarray(a, dtype=_I64)
    half = 1 << (bits - 1)
    return ((a + half) & ((1 << bits) - 1)) - half


def trunc_div(a, b):
    """C integer division (truncates toward zero) of int64 arrays; b must not be zero."""
    a = np.asarray(a, dtype=_I64)
    b = np.asarray(b, dtype=_I64)
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q)


# ----- iSoftmax ------------------------------------------------------------------------------------------------------
def isoftmax(x: np.ndarray, coeffA: int, coeffB: int, coeffC: int, log2: int, n_levels: int = 256) -> np.ndarray:
    """Softmax_s8_s8 over the last axis of int8 values `x`; returns the unsigned outputs (0..n_levels - 1 as the
    consumer reads them: the kernel stores (int8)(q - n_levels / 2) and the output type adds n_levels / 2 back).

    Raises ZeroDivisionError when a row's uint32 sum of y wraps to 0 (the C kernel would divide by zero)."""
    x = np.asarray(x, dtype=_I64)
    if x.shape[-1] == 0:
        return x.copy()
    x_max = np.maximum(x.max(axis=-1, keepdims=True), -128)
    x_tilde = wrap(x - x_max, 16)                                   # int16 xTilde
    z = wrap(-trunc_div(x_tilde, log2), 8)                          # (int8)(-(xTilde / log2))
    z = np.clip(z, 0, 31)                                           # CLAMP(z, 0, 31)
    p = wrap(x_tilde + z * log2, 16)                                # (int16)(xTilde + z * log2)
    t = wrap(p + coeffB, 32)                                        # int32 arithmetic
    t = wrap(coeffA * wrap(t * t, 32), 32)                          # coeffA * ((p + coeffB) * (p + coeffB))
    v = (t + np.int64(coeffC)).astype(np.uint64)                    # int64 + coeffC, then (uint64)
    y = (v >> z.astype(np.uint64)) & np.uint64(0xFFFFFFFF)          # (uint32)(... >> z)
    y_sum = y.sum(axis=-1, keepdims=True, dtype=np.uint64) & np.uint64(0xFFFFFFFF)
    if np.any(y_sum == 0):
        raise ZeroDivisionError("a row's uint32 sum of exponentials is 0 (the C kernel divides by zero)")
    num = (y * np.uint64((n_levels - 1) & 0xFFFFFFFF)) & np.uint64(0xFFFFFFFF)   # uint32 y * (n_levels - 1)
    q = (num // y_sum).astype(_I64)
    half = n_levels // 2
    return wrap(q - half, 8) + half                                 # (int8)(q - n_levels / 2), read back unsigned


def _softmax_values(x, coeffA, coeffB, coeffC, log2):
    """The per-element y_j of Softmax_s8_s8 before normalisation (uint32), for accuracy analysis."""
    x = np.asarray(x, dtype=_I64)
    x_max = np.maximum(x.max(axis=-1, keepdims=True), -128)
    x_tilde = wrap(x - x_max, 16)
    z = np.clip(wrap(-trunc_div(x_tilde, log2), 8), 0, 31)
    p = wrap(x_tilde + z * log2, 16)
    t = wrap(p + coeffB, 32)
    t = wrap(coeffA * wrap(t * t, 32), 32)
    v = (t + np.int64(coeffC)).astype(np.uint64)
    return ((v >> z.astype(np.uint64)) & np.uint64(0xFFFFFFFF)).astype(_I64)


# ----- iLayerNorm ----------------------------------------------------------------------------------------------------
def plp_sqrt_q32(number: int) -> int:
    """_plp_sqrt_q32(number, fracBits = 0) exactly: a binary search with int32 mid * mid (wrapping)."""
    number = int(number)
    if number <= 0:
        return 0
    start, end, root = 0, 46342, 0
    while start <= end:
        mid = (start + end) >> 1
        sq = int(wrap(mid * mid, 32))
        if sq == number:
            return mid
        if sq < number:
            start, root = mid + 1, mid
        else:
            end = mid - 1
    return root


def _isqrt(var: np.ndarray) -> np.ndarray:
    """Elementwise plp_sqrt_q32 of int64 values (vectorised floor(sqrt) where the C search cannot overflow)."""
    var = np.asarray(var, dtype=_I64)
    fast = (var > 0) & (var < _SQRT_EXACT)
    root = np.floor(np.sqrt(np.where(fast, var, 0).astype(np.float64))).astype(_I64)
    # float sqrt of an integer below 2^31 is within one of the floor; fix it up exactly
    root = np.where(root * root > var, root - 1, root)
    root = np.where((root + 1) * (root + 1) <= var, root + 1, root)
    root = np.where(fast, root, 0)
    slow = (var >= _SQRT_EXACT)
    if np.any(slow):
        for idx in zip(*np.nonzero(slow)):
            root[idx] = plp_sqrt_q32(int(var[idx]))
    return root


def ilayernorm_prewrap(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, log2D: int) -> np.ndarray:
    """Layernorm_s8_s8 over the last axis up to (and including) the `>> log2D`, before the (int8) cast."""
    x = np.asarray(x, dtype=_I64)
    weight = np.asarray(weight, dtype=_I64)
    bias = np.asarray(bias, dtype=_I64)
    n = x.shape[-1]
    mean = trunc_div(wrap(x.sum(axis=-1, keepdims=True), 32), n)   # int32 sum / lastDimLength
    temp = wrap(x - mean, 16)                                        # (int16)(x + offset - mean)
    var = wrap((temp * temp).sum(axis=-1, keepdims=True), 32)        # int32 sum += temp * temp
    var = wrap(trunc_div(var, n) + 1, 32)
    std = _isqrt(var)
    if np.any(std == 0):
        raise ZeroDivisionError("the integer standard deviation of a row is 0 (its int32 variance wrapped)")
    t = trunc_div((x - mean) * weight, std) + bias                   # int64: ((x - mean) * w) / std + b
    return t >> log2D                                                # arithmetic shift


def ilayernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, log2D: int) -> np.ndarray:
    """Layernorm_s8_s8: the int8 outputs (the last cast wraps, it does not saturate)."""
    return wrap(ilayernorm_prewrap(x, weight, bias, log2D), 8)


# ----- iGELU ---------------------------------------------------------------------------------------------------------
def igelu(x: np.ndarray, b: int, one: int) -> np.ndarray:
    """GELU_s8_s32 of int8 values `x` with the int8 `b` and int16 `one` (as the C signature narrows them)."""
    x = np.asarray(x, dtype=_I64)
    b = int(wrap(b, 8))
    one = int(wrap(one, 16))
    sign = (x > 0).astype(_I64) - (x < 0).astype(_I64)
    x_abs = wrap(sign * x, 32)
    q = np.where(x_abs > -b, -b, x_abs)
    d = q + b
    L = wrap(sign * wrap(one - d * d, 32), 32)
    return wrap(x * (wrap(one + L, 32) >> 1), 32)


def log2_exact(d: int) -> int:
    """log2 of a positive power of two."""
    return int(d).bit_length() - 1


# ----- interpreter kernels -------------------------------------------------------------------------------------------
@kernel("int.isoftmax")
def _int_isoftmax(op, args):
    try:
        return [isoftmax(args[0], int(op.attr("coeffA")), int(op.attr("coeffB")), int(op.attr("coeffC")),
                         int(op.attr("log2")), int(op.attr("n_levels")))]
    except ZeroDivisionError as e:
        raise op_error(InterpretError, op, f"iSoftmax cannot be computed: {e}") from None


@kernel("int.ilayernorm")
def _int_ilayernorm(op, args):
    try:
        return [ilayernorm(args[0], args[1], args[2], log2_exact(int(op.attr("D"))))]
    except ZeroDivisionError as e:
        raise op_error(InterpretError, op, f"iLayerNorm cannot be computed: {e}") from None


@kernel("int.igelu")
def _int_igelu(op, args):
    return [igelu(args[0], int(op.attr("b")), int(op.attr("one")))]

