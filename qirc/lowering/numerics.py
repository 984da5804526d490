"""Integer requantization arithmetic: choosing `mul`, `add` and `div = 2^k` for `int.requant_shift`.

The kernel (Deeploy's RequantShift, DESIGN.md section 3) computes, in int32,

    y = clip(floor((x * mul + add + div / 2) / div), lo, hi)

and has to stand for the fake-quant requantizer `y = clip(round((x - z_in) * M) + z_out)` with the real multiplier
`M = s_in / s_out`.  With `mul = round(M * 2^k)` and `add = z_out * 2^k - z_in * mul` the two agree except where the
real value lies within the error of approximating M by mul / 2^k of a rounding tie.  The kernel adds `div / 2` itself,
so `add` carries no rounding term (rounding happens exactly once).

k is the LARGEST shift for which every reachable accumulator value keeps `|x * mul| < 2^31` and
`|x * mul + add| + div / 2 < 2^31` (the kernel computes in int32), with mul itself fitting int32: int32 overflow is
impossible by construction (the reachable range comes from `qirc.lowering.ranges`), and no larger shift is safe.
The price of a small shift is precision: `error_steps` bounds the error of approximating M by mul / 2^k, in output
steps, over the inputs that do not saturate (`requant_error_bound`).  A bound of one step or more is NOT a refusal:
the requant is still the most precise int32-safe one, the compile driver records the bound and the mismatch it
measures on the samples in qirc.json and warns (`qirc.lowering.precision`); only `strict=True` (`qirc --strict`)
refuses it with `LoweringError`, naming the node.  Overflow for every shift is always refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..qir.diagnostics import LoweringError, op_error

INT32_LIMIT = 1 << 31
#: largest shift tried: div = 2^30 still fits an int32 tensor attribute
MAX_SHIFT = 30
#: an error of mul / 2^k against M BELOW this many output steps (over the unsaturated range) keeps every output within
#: 1 step of the fake-quant requantizer (the contract of DESIGN.md 3); at or above it the requant is compiled with a
#: warning, or refused under strict precision
MAX_ERROR_STEPS = 1.0


@dataclass(frozen=True)
class RequantParams:
    """The integer attributes of one requant_shift and how faithful they are."""

    mul: np.ndarray          # int64, broadcastable against x
    add: np.ndarray          # int64, same shape as mul
    shift: int               # k; div = 2^k
    error_steps: float       # worst |x - z_in| * |mul / 2^k - M| over the reachable unsaturated inputs

    @property
    def div(self) -> int:
        return 1 << self.shift


def choose_requant(multiplier, zero_in, zero_out, acc_lo, acc_hi, out_lo: int, out_hi: int, *, op=None,
                   max_shift: int = MAX_SHIFT, strict: bool = False, fold_offset=None, offset_steps: float = 0.0,
                   max_error_steps: float = MAX_ERROR_STEPS) -> RequantParams:
    """mul/add/shift for `y = clip(round((x - zero_in) * multiplier) + zero_out, out_lo, out_hi)`.

    multiplier, zero_in, zero_out: broadcastable arrays (per channel or scalars); acc_lo/acc_hi bound every x the
    requant can see (broadcastable against the same shape).  `mul` and `add` get the broadcast shape of
    multiplier, zero_in and zero_out only (the range may be finer without making them per channel).  `op` locates
    errors.  The shift is the largest one free of int32 overflow; with `strict`, a requant whose error bound
    reaches `max_error_steps` is refused instead of returned (see the module docstring).
    fold_offset: a constant part of x (a conv's bias, a constant add before the requant; broadcastable like
    acc_lo) that a backend may fold into add (add' = add + offset * mul, x' = x - offset): the shift keeps that form
    in int32 too.  offset_steps: a real constant added before rounding, in output steps (an affine activation
    such as HardSigmoid's beta / s_out): add gets round(offset_steps * 2^k), and the bound half a unit of it.
    """
    m = np.asarray(multiplier, dtype=np.float64)
    z_in = np.asarray(zero_in, dtype=np.int64)
    z_out = np.asarray(zero_out, dtype=np.int64)
    if not ((m > 0) & (m < np.inf)).all():  # NaN fails both
        raise _error(op, f"requantization multiplier must be positive and finite, got {_fmt(m)}")
    if m.size == 1 and z_in.size == 1 and z_out.size == 1:
        params = _choose_per_tensor(float(m.reshape(-1)[0]), int(z_in.reshape(-1)[0]), int(z_out.reshape(-1)[0]),
                                    acc_lo, acc_hi, out_lo, out_hi, max_shift, strict, fold_offset, offset_steps,
                                    max_error_steps)
        if params is not None:
            return params
    param_shape = np.broadcast_shapes(m.shape, z_in.shape, z_out.shape)
    # the multiplier carries the parameters' shape (mul and add get it); the zero points broadcast against it
    m_b = m if m.shape == param_shape else np.broadcast_to(m, param_shape)
    lo = np.asarray(acc_lo, dtype=np.int64)
    hi = np.asarray(acc_hi, dtype=np.int64)
    x_abs = np.maximum(np.abs(lo), np.abs(hi))
    dist = np.maximum(np.abs(lo - z_in), np.abs(hi - z_in)).astype(np.float64)

    # no shift above k_top can fit int32 (the products below grow like M * 2^k): start the search there
    growth = float(np.maximum(x_abs * m_b, dist * m_b + np.abs(z_out) + 1.0).max())
    k_top = max_shift if growth <= 0 else min(max_shift, max(0, int(np.floor(31 - np.log2(growth))) + 2))
    # the shifts are tried from k_top down and the first that fits wins; the int32 conditions are evaluated for a
    # few shifts at once (`_int32_safe_shifts`), usually the first block holds the answer
    for block_top in range(k_top, -1, -_SHIFT_BLOCK):
        ks = range(block_top, max(block_top - _SHIFT_BLOCK, -1), -1)
        for k, mul, add, half in _int32_safe_shifts(ks, m_b, z_in, z_out, lo, hi, x_abs, offset_steps):
            if fold_offset is not None and not _folded_fits(fold_offset, lo, hi, mul, add, half):
                continue
            errors = requant_error_bounds(m_b, mul, k, z_in, z_out, lo, hi, out_lo, out_hi)
            error = float(errors.max()) if errors.size else 0.0
            if offset_steps:
                error += 0.5 / (1 << k)
            if strict and error >= max_error_steps:
                where, at = _worst(errors, lo, hi, m_b, mul)
                raise _error(op, f"requantization cannot be both exact and in range: with the largest shift that "
                                 f"keeps the int32 intermediate in range (k={k}, mul={at[3]}) the multiplier "
                                 f"{at[2]:.6g} is approximated with an error of up to {error:.3g} output steps "
                                 f"(accumulator range [{at[0]}, {at[1]}]{where}); refused under --strict (without it "
                                 f"the requant is compiled and its error recorded in qirc.json)")
            return RequantParams(_param_array(mul), _param_array(add), k, error)
    where, at = _worst(x_abs * m_b, lo, hi, m_b)
    raise _error(op, f"requantization overflows int32 for every shift: multiplier {at[2]:.6g} with accumulator "
                     f"range [{at[0]}, {at[1]}]{where}")


#: magnitudes below which the per-tensor search's Python integers and numpy's int64 agree (no product overflows)
_SMALL = 1 << 31
_EXACT = 1 << 62


def _choose_per_tensor(m: float, z_in: int, z_out: int, acc_lo, acc_hi, out_lo: int, out_hi: int, max_shift: int,
                       strict: bool, fold_offset, offset_steps: float, max_error_steps: float
                       ) -> Optional[RequantParams]:
    """choose_requant for one multiplier and one pair of zero points (the common case), in Python integers: every
    condition is then monotone in x (mul >= 0), so over a per-channel range only its extremes matter (the largest
    |x * mul + add| is at the smallest or largest x; the same for the folded offset and the error bound, whose
    float rounding is monotone too).  The same result as the array search, found without arrays; None where that
    equivalence is not certain (magnitudes near int64's, an error to word under strict): the caller then searches
    with arrays."""
    lo = np.asarray(acc_lo, dtype=np.int64)
    hi = np.asarray(acc_hi, dtype=np.int64)
    if not lo.size or not hi.size:
        return None
    x_min, x_max = int(min(lo.min(), hi.min())), int(max(lo.max(), hi.max()))
    folded = None
    if fold_offset is not None:
        b = np.asarray(fold_offset, dtype=np.int64)
        if not b.size:
            return None
        b_min, b_max = int(b.min()), int(b.max())
        if max(-b_min, b_max) >= _SMALL:
            return None
        folded = int(max(np.abs(lo - b).max(), np.abs(hi - b).max()))
    x_abs = max(-x_min, x_max)
    if x_abs >= _SMALL or max(abs(z_in), abs(z_out)) >= _SMALL:
        return None
    dist = max(abs(x_min - z_in), abs(x_max - z_in))
    growth = max(float(x_abs) * m, float(dist) * m + float(abs(z_out)) + 1.0)
    k_top = max_shift if growth <= 0 else min(max_shift, max(0, int(np.floor(31 - np.log2(growth))) + 2))
    if not m * float(1 << k_top) < _EXACT or not abs(offset_steps) * float(1 << k_top) < _EXACT:
        return None
    for k in range(k_top, -1, -1):
        power = 1 << k
        mul = round(m * float(power))  # ties to even, as np.rint
        if mul >= INT32_LIMIT or x_abs * mul >= INT32_LIMIT:
            continue
        add = z_out * power - z_in * mul
        if offset_steps:
            add += round(float(offset_steps) * power)
        half = power // 2
        if abs(add) + half >= INT32_LIMIT or \
                max(abs(x_min * mul + add), abs(x_max * mul + add)) + half >= INT32_LIMIT:
            continue
        if folded is not None and (max(abs(add + b_min * mul), abs(add + b_max * mul)) + half >= INT32_LIMIT or
                                   folded * mul >= INT32_LIMIT):
            continue
        span = max(float(out_hi) - float(z_out), float(z_out) - float(out_lo)) + 1.0
        deviation = abs(float(mul) / float(power) - m)
        error = min(float(dist), span / m) * deviation
        if offset_steps:
            error += 0.5 / power
        if strict and error >= max_error_steps:
            return None  # the array search words the refusal
        return RequantParams(np.array([mul], np.int64), np.array([add], np.int64), k, error)
    return None


#: shifts whose int32 conditions are evaluated together (k_top is at most 2 above the shift that fits)
_SHIFT_BLOCK = 4


def _int32_safe_shifts(ks: range, m, z_in, z_out, lo, hi, x_abs, offset_steps: float):
    """[(k, mul, add, half)] for the shifts k of `ks` (in that order) with mul = round(m * 2^k) < 2^31,
    add = z_out * 2^k - z_in * mul (+ round(offset_steps * 2^k)), |add| + 2^k / 2 < 2^31 and, for every x in
    [lo, hi], |x| * mul < 2^31 and |x * mul + add| + 2^k / 2 < 2^31: the int32 conditions of choose_requant, all
    shifts at once along a leading axis (elementwise the same int64 and float64 arithmetic as one shift at a time,
    so the same results).  mul and add have m's shape."""
    shifts = np.array(list(ks), dtype=np.int64)
    lead = (len(shifts),) + (1,) * max(m.ndim, lo.ndim, hi.ndim, z_in.ndim, z_out.ndim)
    powers = (np.int64(1) << shifts).reshape(lead)
    scales = powers.astype(np.float64)  # 2^k exactly
    mul = np.rint(m * scales).astype(np.int64)
    add = z_out * powers - z_in * mul
    if offset_steps:
        add = add + np.rint(float(offset_steps) * scales).astype(np.int64)
    half = powers // 2
    bad = (mul >= INT32_LIMIT) | (x_abs * mul >= INT32_LIMIT) | (np.abs(add) + half >= INT32_LIMIT) | \
        (np.maximum(np.abs(lo * mul + add), np.abs(hi * mul + add)) + half >= INT32_LIMIT)
    rejected = bad.any(axis=tuple(range(1, bad.ndim)))
    shape = m.shape
    return [(int(k), mul[i].reshape(shape), add[i].reshape(shape), (1 << int(k)) // 2)
            for i, k in enumerate(shifts) if not rejected[i]]


def _worst(badness, lo, hi, m, mul=None):
    """(", channel c of C", (lo, hi, multiplier, mul)) at the element where `badness` is largest: per-channel arrays
    name the channel the numbers come from; per-tensor ones give an empty location."""
    arrays = np.broadcast_arrays(*(np.asarray(a) for a in (badness, lo, hi, m, 0 if mul is None else mul)))
    bad = arrays[0]
    index = np.unravel_index(int(np.argmax(bad)), bad.shape) if bad.size else ()
    values = tuple(a[index] if a.size else a for a in arrays[1:])
    at = (int(values[0]), int(values[1]), float(values[2]), int(values[3]))
    axes = [axis for axis, d in enumerate(bad.shape) if d > 1]
    if not axes:
        return "", at
    channel = ", ".join(str(int(index[axis])) for axis in axes)
    count = int(np.prod([bad.shape[axis] for axis in axes]))
    return f", channel {channel} of {count}", at


def _folded_fits(offset, lo, hi, mul, add, half) -> bool:
    """add + offset * mul and (x - offset) * mul within int32 (the requant after a backend folded `offset`)."""
    b = np.asarray(offset, dtype=np.int64)
    folded_abs = np.maximum(np.abs(lo - b), np.abs(hi - b))
    return not (np.any(np.abs(add + b * mul) + half >= INT32_LIMIT) or np.any(folded_abs * mul >= INT32_LIMIT))


def unsaturated_span(zero_out, out_lo: int, out_hi: int) -> np.ndarray:
    """How far, in output steps, the exact value `(x - z_in) * M` can be from 0 while the output is not saturated:
    the output z_out + v stays inside [out_lo, out_hi] only for v within max(out_hi - z_out, z_out - out_lo), plus
    one step for the rounding (129 for uint8 with zero point 128, 256 for uint8 with zero point 0)."""
    z = np.asarray(zero_out, dtype=np.float64)
    return np.maximum(float(out_hi) - z, z - float(out_lo)) + 1.0


def requant_error_bound(multiplier, mul, shift: int, zero_in, zero_out, acc_lo, acc_hi, out_lo: int,
                        out_hi: int) -> float:
    """The largest of `requant_error_bounds` (0 for empty parameters)."""
    errors = requant_error_bounds(multiplier, mul, shift, zero_in, zero_out, acc_lo, acc_hi, out_lo, out_hi)
    return float(np.max(errors)) if errors.size else 0.0


def requant_error_bounds(multiplier, mul, shift: int, zero_in, zero_out, acc_lo, acc_hi, out_lo: int,
                         out_hi: int) -> np.ndarray:
    """Per element (channel), the worst `|x - z_in| * |mul / 2^shift - M|`, in output steps, over the reachable
    inputs x in [acc_lo, acc_hi] whose output does not saturate (outside that, both the exact and the integer requantizer clip).  All arguments
    broadcast against each other (per channel or per tensor)."""
    m = np.asarray(multiplier, dtype=np.float64)
    z_in = np.asarray(zero_in, dtype=np.int64)
    lo = np.asarray(acc_lo, dtype=np.int64)
    hi = np.asarray(acc_hi, dtype=np.int64)
    dist = np.maximum(np.abs(lo - z_in), np.abs(hi - z_in)).astype(np.float64)
    relevant = np.minimum(dist, unsaturated_span(zero_out, out_lo, out_hi) / m)
    deviation = np.abs(np.asarray(mul, dtype=np.float64) / float(1 << shift) - m)
    return relevant * deviation


def _param_array(a: np.ndarray) -> np.ndarray:
    """A per-tensor parameter as shape [1] (what Deeploy reads); per-channel ones keep their broadcast shape."""
    a = np.ascontiguousarray(a, dtype=np.int64)
    return a.reshape(1) if a.size == 1 else a


def requant_form(storage_min: int, storage_max: int) -> Tuple[bool, int, bool]:
    """(signed, n_levels, needs_clip) for an output storage range.

    Deeploy's RequantShift clips to -n/2..n/2-1 (signed) or 0..n-1 (unsigned), n a power of two.  A range of neither
    form (narrow range i8<-127:127>, a ReLU bound on a signed type) gets the smallest enclosing form and needs an
    extra int.clip."""
    lo, hi = int(storage_min), int(storage_max)
    if lo >= 0:
        n = 1
        while n - 1 < hi:
            n <<= 1
        return False, n, (lo, hi) != (0, n - 1)
    n = 2
    while -(n // 2) > lo or n // 2 - 1 < hi:
        n <<= 1
    return True, n, (lo, hi) != (-(n // 2), n // 2 - 1)


def form_bounds(signed: bool, n_levels: int) -> Tuple[int, int]:
    """The clip bounds of a requant_shift form."""
    return (-(n_levels // 2), n_levels // 2 - 1) if signed else (0, n_levels - 1)


def quantize_scalar(x: float, scale: float, zero_point: int, rounding: str, lo: int, hi: int) -> int:
    """The stored value a quant.qcast gives the real number x (float64; used to fold clip bounds)."""
    if np.isinf(x):
        return lo if x < 0 else hi
    if rounding == "add_round":
        q = np.rint(x / scale + zero_point)
    else:
        q = np.rint(x / scale) + zero_point
    return int(min(max(q, lo), hi))


def rational_multipliers(ratio: float, max_multiplier: int, *, rel_tol: float = 1e-9) -> Optional[Tuple[int, int]]:
    """The smallest integers (m_small, m_large) with m_large / m_small == ratio to rel_tol, m_large <= max_multiplier.

    Used to put two operands on one common scale exactly when their scale ratio is a small rational (1, 2, 255/128...).
    """
    for m_small in range(1, max_multiplier + 1):
        m_large = round(m_small * ratio)
        if m_large > max_multiplier:
            return None
        if m_large >= 1 and abs(m_large - m_small * ratio) <= rel_tol * m_small * ratio:
            return m_small, m_large
    return None


def _fmt(a) -> str:
    a = np.asarray(a)
    if a.size == 1:
        v = a.reshape(-1)[0]
        return f"{v:.6g}" if a.dtype.kind == "f" else str(int(v))
    if a.dtype.kind == "f":
        return f"[{float(a.min()):.6g}..{float(a.max()):.6g}]"
    return f"[{int(a.min())}..{int(a.max())}]"


def _error(op, message: str) -> LoweringError:
    return op_error(LoweringError, op, message) if op is not None else LoweringError(message)
