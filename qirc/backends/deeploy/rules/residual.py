"""Residual adds: an Add of two computed tensors in the target's form (targets.RESIDUAL_ADD_FORMS)."""
from __future__ import annotations

from fractions import Fraction
from typing import Optional, Tuple

import numpy as np

from ....qir.ir import Module, Operation, Value
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


def _dyadic(ratio: Fraction, max_shift: int = 22) -> Tuple[int, int]:
    """(m, k) with m / 2^k = ratio exactly for the smallest k <= max_shift, else the rounding at max_shift."""
    for k in range(max_shift + 1):
        m = ratio * (1 << k)
        if m.denominator == 1:
            return int(m), k
    return int(round(ratio * (1 << max_shift))), max_shift


def _requantized_add(module: Module, add: Operation, rqs: Operation, target: DeeployTarget) -> None:
    """Rewrite `rqs(add(t1, t2))` into the form Siracusa's RequantizedAdd computes exactly.

    Deeploy's PULPAddRequantMergePass fuses  RequantShift(a), RequantShift(b) -> Add -> RequantShift  (all per tensor)
    into pulp_nn_add, which computes  out = clip8(((clip8(rq1(a)) + clip8(rq2(b))) * mul + add) >> shift), clipping
    each requantized operand to the 8-bit range of its input type.  Any other Add -> RequantShift is fused the same way
    with the Add's inputs taken as 8-bit operands, so the exact int32 form Mul, Mul -> Add fails type checking there.

    With each operand read as t_i = c_i * x_i + d_i (x_i 8-bit), the sum is measured in units of c_max = max c_i:
    r_i = round(x_i * c_i / c_max) (exact, identity, for the operand with c_max; |r_i| <= |x_i| so no clipping), and
    the output requant gets mul' = mul * c_max and add' = add + (d_1 + d_2) * mul, which reproduces the original
    requant up to the rounding of the smaller-scale operand (<= half a step of the larger operand's scale).  When
    the original add is a multiple of mul (output zero point 0), add' is kept a multiple of mul' (DeeployTest's debug
    pass rounds add to a multiple of mul), rounding the constant term to whole units of the sum.
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
    operands = []
    for (x, c, _d), t in zip(sources, add.operands):
        m, k = _dyadic(Fraction(c, c_max))
        st = storage(x)
        r_type = TensorType(x.type.shape, ScalarType("i8" if st.signed else "u8"))
        r = module.create("int.requant_shift", [x], [r_type],
                          {"mul": np.array([m], np.int64), "add": np.array([0], np.int64), "div": 1 << k,
                           "signed": bool(st.signed), "n_levels": 256}, (add.loc or "add") + f"/rq{len(operands)}")
        operands.append(r.result)
    new_mul = mul * c_max
    multiple = bool(np.all(radd % np.where(mul == 0, 1, mul) == 0))
    if multiple:
        q = (radd // np.where(mul == 0, 1, mul)) + d_total
        q_units = np.floor_divide(2 * q + c_max, 2 * c_max)  # round half up to whole units of c_max
        new_add = q_units * new_mul
    else:
        new_add = radd + d_total * mul
    # r1 + r2 lies in -256..510; shrink mul'/div together until the kernel's int32 arithmetic cannot overflow
    while div > 1 and (np.abs(new_mul).max() * 510 + np.abs(new_add).max() + div // 2 > INT32_MAX):
        if multiple:
            new_mul = np.floor_divide(new_mul + 1, 2)
            new_add = q_units * new_mul
        else:
            new_mul = np.floor_divide(new_mul + 1, 2)
            new_add = np.floor_divide(new_add + 1, 2)
        div //= 2
    if np.abs(new_mul).max() * 510 + np.abs(new_add).max() + div // 2 > INT32_MAX:
        raise fail(add, target, "the RequantizedAdd output requant cannot fit int32")
    sum_type = TensorType(add.result.type.shape, i32)
    new_sum = module.create("int.add", operands, [sum_type], {}, add.loc)
    rqs.attrs.update(mul=new_mul, add=new_add, div=div)
    module.set_operand(rqs, 0, new_sum.result)
    module.erase_dead()


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
    """requant(int.add(t1, t2)) of two computed tensors becomes RequantShift(x1), RequantShift(x2) -> Add ->
    RequantShift, all per tensor: the form Siracusa's RequantizedAdd (pulp_nn_add) computes (`_requantized_add`);
    a requant clipping to less than int8 after it is split into the int8 requant and RequantShifts that only clip."""
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
