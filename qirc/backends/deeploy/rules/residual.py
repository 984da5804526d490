"""Residual adds: an Add of two computed tensors in the target's form (targets.RESIDUAL_ADD_FORMS); on Siracusa the
stacked depthwise form (`_stacked_add`) or the RequantizedAdd form (`_requantized_add`)."""
from __future__ import annotations

import math
from fractions import Fraction
from typing import List, Optional, Tuple

import numpy as np

from ....qir.ir import Module, Operation, Value, const_op
from ....qir.types import ScalarType, TensorType, i32
from ..targets import DeeployTarget
from .clips import split_requant_clip
from .common import INT32_MAX, const_value, fail, is_8bit, sole_user, storage
from .rule import rule


def _affine_source(v: Value) -> Optional[Tuple[Value, int, int]]:
    """Read `v` as c * x + d with x an 8-bit tensor and c, d scalar integer constants: (x, c, d), or None."""
    c, d = 1, 0
    while not is_8bit(v):
        op = v.owner
        if op.name not in ("int.mul", "int.add") or len(op.operands) != 2:
            return None
        # the scalar constant (the other operand may be a constant tensor too: a positional embedding)
        k_index = next((i for i, o in enumerate(op.operands)
                        if const_value(o) is not None and const_value(o).size == 1), None)
        if k_index is None:
            return None
        k = const_value(op.operands[k_index])
        if k.size != 1:
            return None
        k = int(k.reshape(()))
        if op.name == "int.mul":
            c, d = c * k, d * k
        else:
            d = d + c * k
        v = op.operands[1 - k_index]
    return v, c, d


def _dyadic(ratio: Fraction, max_shift: int = 20) -> Tuple[int, int]:
    """(m, k) with m / 2^k = ratio exactly for the smallest k <= max_shift, else the rounding at max_shift."""
    for k in range(max_shift + 1):
        m = ratio * (1 << k)
        if m.denominator == 1:
            return int(m), k
    return int(round(ratio * (1 << max_shift))), max_shift


#: the largest constant left out of a RequantizedAdd written with adds that are multiples of their muls, in output
#: steps; a larger one puts the exact constant into the output requant's add instead (which DeeployTest's debug pass
#: then changes: qirc.json lists it)
CONSTANT_TOLERANCE_STEPS = Fraction(1, 32)


def _operand_offsets(x: Value, m: int, k: int, limit: int = 2048) -> range:
    """The integer offsets q (|q| <= limit) for which the operand requant  r = floor(((x + q) m + 2^(k-1)) / 2^k)
    of every value of x's type stays inside the 8-bit range the kernel clips it to (that of x's signedness, so
    nothing is clipped) and inside int32 (pulp_nn_add computes  x * m + (q * m + 2^(k-1))  in int32)."""
    st = storage(x)
    r_lo, r_hi = (-128, 127) if st.signed else (0, 255)
    half = (1 << k) >> 1
    lo = -((half - r_lo * (1 << k)) // m) - st.min  # (min + q) m + half >= r_lo 2^k
    hi = ((r_hi + 1) * (1 << k) - half - 1) // m - st.max  # (max + q) m + half < (r_hi + 1) 2^k
    room = INT32_MAX - max(abs(st.min), abs(st.max)) * m  # |q m + half| <= room
    lo, hi = max(lo, -limit, -((room - half) // m)), min(hi, limit, (room - half) // m)
    return range(lo, hi + 1)


def _requantized_add(module: Module, add: Operation, rqs: Operation, target: DeeployTarget) -> None:
    """Rewrite `rqs(add(t1, t2))` into the form Siracusa's RequantizedAdd computes exactly.

    Deeploy's PULPAddRequantMergePass fuses  RequantShift(a), RequantShift(b) -> Add -> RequantShift  (all per tensor)
    into pulp_nn_add, which computes  out = clip8(((clip8(rq1(a)) + clip8(rq2(b))) * mul + add) >> shift)  in int32,
    clipping each requantized operand to the 8-bit range of its input type.  Any other Add -> RequantShift is fused
    the same way with the Add's inputs taken as 8-bit operands, so the exact int32 form Mul, Mul -> Add fails type
    checking there.  The operands' 8-bit clip is what limits the precision: the sum cannot be counted on a grid finer
    than that of the larger-scale operand when that operand spans its whole 8-bit range.

    With each operand read as t_i = c_i * x_i + d_i (x_i 8-bit), the sum is measured in units of c_max = max c_i:
    r_i = round((x_i + q_i) * c_i / c_max) (exact, the identity, for the operand with c_max; |r_i| <= |x_i| for the
    other, so no clipping), and the output requant gets mul' = mul * c_max.  The constant part of the sum,
    C = (add / mul + d_1 + d_2) / c_max units, is where a systematic error would come from (the same shift of every
    output; rounding it to whole units cost ResNet-18 two output steps over its eight residual adds):

    - when the original add is a multiple of mul (output zero point 0), DeeployTest's debug pass
      (EmulateCMSISRequantPass, add := round(add / mul) * mul, on every RequantShift before the merge) leaves the
      graph alone only if every add stays a multiple of its mul.  C is then split into whole units K (the output
      add K * mul') and an integer offset q of the smaller-scale operand (its requant's add q * m, a multiple of its
      m), q chosen among those that keep r in its 8-bit range so that K + q * c / c_max is nearest to C: with a
      ratio c / c_max that is not a simple fraction the remainder is a small fraction of a unit.  When the best
      remainder still exceeds CONSTANT_TOLERANCE_STEPS of an output step (equal scales with a constant that is
      not a whole number of units), the output add holds C exactly (not a multiple; the debug pass changes it);
    - otherwise the output add holds C exactly: add' = add + (d_1 + d_2) * mul.

    What remains is the rounding of the smaller-scale operand (at most half a unit, varying from element to element).
    """
    sources = [_affine_source(v) for v in add.operands]
    if any(s is None for s in sources):
        raise fail(add, target, "int.add of two tensors whose operands are not 8-bit tensors scaled by constants "
                                "has no form the platform's RequantizedAdd accepts")
    cs = [s[1] for s in sources]
    if min(cs) <= 0:
        raise fail(add, target, "int.add of two tensors with a non-positive operand scale (as in the exact "
                                "round-half-to-even of a QONNX Trunc with rounding_mode ROUND; FLOOR and CEIL have "
                                "a form) has no RequantizedAdd form")
    c_max = max(cs)
    mul = np.asarray(rqs.attrs["mul"], np.int64)
    radd = np.asarray(rqs.attrs["add"], np.int64)
    div = int(rqs.attrs["div"])
    d_total = sum(s[2] for s in sources)
    new_mul = mul * c_max
    ratios = [_dyadic(Fraction(c, c_max)) for c in cs]
    offsets = [0, 0]
    multiple = bool(np.all(radd % np.where(mul == 0, 1, mul) == 0))
    units = None  # the output add in whole units of c_max, when it is kept a multiple of mul'
    if multiple and mul.size == 1 and int(mul.reshape(())) != 0:
        constant = (Fraction(int(radd.reshape(())), int(mul.reshape(()))) + d_total) / c_max
        best = (abs(constant - round(constant)), 0, 0, 0)  # (remainder, |q|, operand, q)
        for i, ((x, _c, _d), (m, k)) in enumerate(zip(sources, ratios)):
            if m == 1 << k:  # the identity operand: its offset would be whole units, which K already is
                continue
            for q in _operand_offsets(x, m, k):
                rest = constant - Fraction(q * m, 1 << k)
                best = min(best, (abs(rest - round(rest)), abs(q), i, q))
        remainder, _, i, q = best
        if remainder * abs(int(new_mul.reshape(()))) / div <= CONSTANT_TOLERANCE_STEPS:
            offsets[i] = q
            units = round(constant - Fraction(q * ratios[i][0], 1 << ratios[i][1]))
    elif multiple:  # per-channel parameters: each constant rounded to whole units of c_max
        q_ch = (radd // np.where(mul == 0, 1, mul)) + d_total
        units = np.floor_divide(2 * q_ch + c_max, 2 * c_max)
    operands = []
    for (x, _c, _d), (m, k), q in zip(sources, ratios, offsets):
        st = storage(x)
        r_type = TensorType(x.type.shape, ScalarType("i8" if st.signed else "u8"))
        r = module.create("int.requant_shift", [x], [r_type],
                          {"mul": np.array([m], np.int64), "add": np.array([q * m], np.int64), "div": 1 << k,
                           "signed": bool(st.signed), "n_levels": 256}, (add.loc or "add") + f"/rq{len(operands)}")
        operands.append(r.result)
    if units is not None:
        new_add = units * new_mul
    else:
        new_add = radd + d_total * mul
    # r1 + r2 lies in -256..510; shrink mul'/div together until the kernel's int32 arithmetic cannot overflow
    while div > 1 and (np.abs(new_mul).max() * 510 + np.abs(new_add).max() + div // 2 > INT32_MAX):
        new_mul = np.floor_divide(new_mul + 1, 2)
        new_add = units * new_mul if units is not None else np.floor_divide(new_add + 1, 2)
        div //= 2
    if np.abs(new_mul).max() * 510 + np.abs(new_add).max() + div // 2 > INT32_MAX:
        raise fail(add, target, "the RequantizedAdd output requant cannot fit int32")
    sum_type = TensorType(add.result.type.shape, i32)
    new_sum = module.create("int.add", operands, [sum_type], {}, add.loc)
    rqs.attrs.update(mul=new_mul, add=new_add, div=div)
    module.set_operand(rqs, 0, new_sum.result)
    module.erase_dead()


#: the widest int8 weight of the stacked form (the weight of the larger-scale operand is at most this)
_STACK_WEIGHT = 127


#: the most copies of the operands the stacked form joins (a coefficient above 127 is split over copies), and the
#: most bytes the joined tensor may take (it lives in L2 next to the operands: fewer copies for large tensors)
_STACK_COPIES = 10
_STACK_BYTES = 128 * 1024


def _stack_candidates(c_1: int, c_2: int, copies: int, count: int = 8) -> List[Tuple[int, int]]:
    """Coefficients (a_1, a_2) for the weighted sum a_1 x1 + a_2 x2: (c_1, c_2) themselves when they can be split
    into at most `copies` int8 weights, then the `count` pairs, the larger one in 64..127, whose ratio is closest to
    c_1 : c_2."""
    c_max, c_min = max(c_1, c_2), min(c_1, c_2)
    pairs = {}
    for big in range(_STACK_WEIGHT, 63, -1):
        for small in {round(Fraction(big * c_min, c_max)), int(Fraction(big * c_min, c_max))}:
            err = abs(Fraction(small, big) - Fraction(c_min, c_max))
            if (big, small) not in pairs and 1 <= small <= _STACK_WEIGHT:
                pairs[(big, small)] = err
    best = sorted(pairs, key=lambda p: (pairs[p], -p[0]))[:count]
    out = [(big, small) if c_1 >= c_2 else (small, big) for big, small in best]
    if len(_split(c_1)) + len(_split(c_2)) <= copies and (c_1, c_2) not in out:
        out.insert(0, (c_1, c_2))
    return out


def _split(a: int) -> List[int]:
    """`a` > 0 as the fewest int8 weights (at most 127 each, as equal as possible) that sum to it."""
    k = -(-a // _STACK_WEIGHT)
    return [a // k + (1 if i < a % k else 0) for i in range(k)]


def _requant(p: np.ndarray, mul: int, add: int, div: int, lo: int, hi: int) -> np.ndarray:
    """RequantShift on int64: clip(floor((p * mul + add + div / 2) / div), lo, hi)."""
    return np.clip(np.floor_divide(p * mul + add + div // 2, div), lo, hi)


def _stacked_add(module: Module, add: Operation, rqs: Operation, sources, target: DeeployTarget) -> bool:
    """Rewrite `rqs(add(t1, t2))` of two rank-4 8-bit operands of one signedness at different scales into the
    stacked form: copies of x1 and x2 joined along H (two-input int.concats, [N, C, k H, W]), a depthwise Conv with
    a ((k - 1) H + 1) x 1 kernel holding one int8 tap every H rows (out[h] = sum_j w_j copy_j[h], exact int32), and
    the requant, fused by Deeploy into one RequantizedConv (pulp_nn_depthwise).  When the rescale constants c_1, c_2
    split into at most _STACK_COPIES int8 taps (fewer when the joined tensor would exceed _STACK_BYTES) the sum is
    exactly c_1 x1 + c_2 x2 and the graph computes what the exact int32 form computes; otherwise one copy each with
    weights of ratio close to c_1 : c_2.  The candidate that differs from the exact requant on the fewest of the
    65536 operand pairs is kept.  RequantizedAdd, whose operands
    are clipped to 8 bits before they are summed, can do no better than rounding the smaller-scale operand to the
    larger one's step, and a single flip at a rounding tie is amplified by the layers after it.  Returns False
    (nothing changed) where the form does not apply."""
    (x1, c1, d1), (x2, c2, d2) = sources
    if min(c1, c2) <= 0 or c1 == c2 or x1 is x2 or x1.type.rank != 4 or x1.type.shape != x2.type.shape \
            or storage(x1).signed != storage(x2).signed or storage(x1).width != 8 or storage(x2).width != 8:
        return False
    mul = np.asarray(rqs.attrs["mul"], np.int64)
    radd = np.asarray(rqs.attrs["add"], np.int64)
    div = int(rqs.attrs["div"])
    if mul.size != 1 or radd.size != 1 or int(mul.reshape(())) <= 0:
        return False
    mul_i, radd_i = int(mul.reshape(())), int(radd.reshape(()))
    c_max = max(c1, c2)
    multiple = radd_i % mul_i == 0
    constant = (Fraction(radd_i, mul_i) + d1 + d2) / c_max  # in units of the larger-scale operand's step
    # Every candidate (int8 weights, the most precise int32-safe shift, the constant rounded either way) is compared
    # with the exact int32 form  clip(floor(((c1 x1 + c2 x2 + d) mul + radd + div/2) / div))  on all 65536 pairs of
    # operand values, and the one that differs on the fewest is kept: the sum it computes is within a few
    # thousandths of an output step of the exact one, so the two differ only next to a rounding tie.
    st1, st2 = storage(x1), storage(x2)
    g1, g2 = np.meshgrid(np.arange(st1.min, st1.max + 1, dtype=np.int64),
                         np.arange(st2.min, st2.max + 1, dtype=np.int64), indexing="ij")
    out_st = rqs.result.type.storage
    lo, hi = out_st.min, out_st.max
    if int(rqs.attr("n_levels")) != 256:
        return False
    exact = _requant(c1 * g1 + c2 * g2 + (d1 + d2), mul_i, radd_i, div, lo, hi)
    best = None
    copies = max(2, min(_STACK_COPIES, _STACK_BYTES // int(np.prod(x1.type.shape))))
    for w1, w2 in _stack_candidates(c1, c2, copies):
        w_max = max(w1, w2)
        p_max = int(np.abs(w1 * g1 + w2 * g2).max())
        # out = floor((S mul + radd + div/2) / div) with S = c1 x1 + c2 x2 + d ~ (c_max / w_max) P + d for
        # P = w1 x1 + w2 x2: the requant of P has the gain mul c_max / (w_max div)
        gain = Fraction(mul_i * c_max, w_max * div)
        for shift in range(30, 0, -1):
            new_div = 1 << shift
            new_mul = round(gain * new_div)
            if new_mul > 0 and new_mul * p_max + abs(constant) * new_mul * w_max + new_div <= INT32_MAX:
                break
        else:
            continue
        if multiple:  # the constant in whole weighted units: add' a multiple of mul' (DeeployTest's debug pass)
            k = constant * w_max
            adds = [math.floor(k) * new_mul, math.ceil(k) * new_mul]
        else:
            k = (radd_i + (d1 + d2) * mul_i) * Fraction(new_div, div)
            adds = [math.floor(k), math.ceil(k)]
        for new_add in adds:
            if new_mul * p_max + abs(new_add) + new_div // 2 > INT32_MAX:
                continue
            mismatches = int(np.count_nonzero(_requant(w1 * g1 + w2 * g2, new_mul, new_add, new_div, lo, hi) != exact))
            copies = len(_split(w1)) + len(_split(w2))
            if best is None or (mismatches, copies) < best[:2]:
                best = (mismatches, copies, w1, w2, new_mul, new_add, new_div)
    if best is None:
        return False
    _, _, w1, w2, new_mul, new_add, new_div = best
    n, c, h, w = x1.type.shape
    loc = add.loc or "add"
    # the operand copies, each weighted by one int8 tap: x1 once per part of w1, then x2 once per part of w2.
    # Deeploy's RQSSplitPass copies a RequantShift read by a Concat and anything else once per reader, and a Conv
    # whose requant is copied is no longer fused (no bare integer Conv on PULP); its Concat code declares one
    # pointer per input name: a tensor read more than once, or read elsewhere too, is read through Reshapes to its
    # own shape (free: PULP's Reshape aliases its input)
    parts, taps = [], []
    for i, (x, weight) in enumerate(((x1, w1), (x2, w2))):
        pieces = _split(weight)
        for j, piece in enumerate(pieces):
            v = x
            if len(pieces) > 1 or len(x.uses) > 1:
                v = module.create("int.reshape", [x], [x.type], {"shape": list(x.type.shape)},
                                  f"{loc}/read{i}_{j}").result
            parts.append(v)
            taps.append(piece)
    # PULP's Concat takes two inputs: a chain of two-input Concats along H
    stacked, rows = parts[0], h
    for j, v in enumerate(parts[1:]):
        rows += h
        stacked = module.create("int.concat", [stacked, v], [TensorType((n, c, rows, w), x1.type.storage)],
                                {"axis": 2}, f"{loc}/stack{j}" if len(parts) > 2 else f"{loc}/stack").result
    kh = (len(parts) - 1) * h + 1
    kernel = np.zeros((c, 1, kh, 1), np.int8)
    for j, weight in enumerate(taps):
        kernel[:, 0, j * h, 0] = weight
    weights = const_op(module, kernel, TensorType(kernel.shape, ScalarType("i8")), loc + "/weights")
    acc = module.create("int.conv", [stacked, weights], [TensorType((n, c, h, w), i32)],
                        {"kernel_shape": [kh, 1], "pads": [0, 0, 0, 0], "strides": [1, 1], "dilations": [1, 1],
                         "group": c}, loc).result
    rqs.attrs.update(mul=np.array([new_mul], np.int64), add=np.array([new_add], np.int64), div=new_div)
    module.set_operand(rqs, 0, acc)
    module.erase_dead()
    return True


def _tensor_adds(module: Module):
    """The int.adds of two computed tensors (an add of a constant is a bias, folded by fold-biases)."""
    return [add for add in module.walk("int.add") if all(const_value(v) is None for v in add.operands)]


@rule("int32-residual-adds", when="residual_add == mul-add")
def int32_residual_adds(module: Module, target: DeeployTarget) -> None:
    """An int.add of two computed tensors stays the exact int32 Add (of its operands scaled by constant Muls, as
    lower-to-int writes it); operands wider than int32 are refused."""
    for add in _tensor_adds(module):
        for v in add.operands:
            if v.type.storage.width > 32:
                raise fail(add, target, "int.add of operands wider than int32 has no Deeploy form")


@rule("requantized-residual-adds", when="residual_add == requantized-add")
def requantized_residual_adds(module: Module, target: DeeployTarget) -> None:
    """requant(int.add(t1, t2)) of two computed tensors at different scales, both 8-bit of one signedness and
    rank 4, becomes Concat(x1 copies, x2 copies) along H -> depthwise Conv with one int8 tap every H rows ->
    RequantShift, the int32 sum c1 x1 + c2 x2 (exact when the rescale constants split into 8 int8 taps) fused into
    one RequantizedConv (`_stacked_add`); any other
    becomes RequantShift(x1), RequantShift(x2) -> Add -> RequantShift, all per tensor: the form Siracusa's
    RequantizedAdd (pulp_nn_add) computes (`_requantized_add`); a requant clipping to less than int8 after it is
    split into the int8 requant and RequantShifts that only clip."""
    for add in _tensor_adds(module):
        rqs = sole_user(add.result)
        if rqs is None or rqs.name != "int.requant_shift":
            raise fail(add, target, "int.add of two tensors must be followed by a requant_shift (its only "
                                    "user) on this platform")
        if int(rqs.attr("n_levels")) != 256:  # RequantizedAdd clips its output to int8
            rqs = split_requant_clip(module, rqs, target)
        if all(is_8bit(v) and v.owner.name == "int.requant_shift" for v in add.operands) and \
                _already_requantized_add(add):
            continue
        sources = [_affine_source(v) for v in add.operands]
        if target.accepts("Concat") and None not in sources and _stacked_add(module, add, rqs, sources, target):
            continue
        _requantized_add(module, add, rqs, target)


def _already_requantized_add(add: Operation) -> bool:
    """Both operands are per-tensor requants of 8-bit tensors used only here, each clipping to the full 8-bit range
    of its input's signedness (what pulp_nn_add clips to): the form is already the fused one."""
    for v in add.operands:
        rq = v.owner
        x = rq.operands[0]
        if len(v.uses) != 1 or np.asarray(rq.attrs["mul"]).size != 1 or np.asarray(rq.attrs["add"]).size != 1:
            return False
        if not is_8bit(x) or bool(rq.attr("signed")) != storage(x).signed or int(rq.attr("n_levels")) != 256:
            return False
    return True
