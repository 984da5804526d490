"""Helpers shared by the legalisation rules: errors, constants, operand queries."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ....qir.diagnostics import BackendError
from ....qir.ir import Module, Operation, Value, const_op
from ....qir.types import ScalarType, TensorType, i32
from ..targets import DeeployTarget

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

#: ops that the platforms fuse with the requant_shift after them into one kernel
FUSING = ("int.conv", "int.gemm", "int.matmul", "int.add")


def fail(op: Operation, target: DeeployTarget, message: str) -> BackendError:
    """The error refusing `op` on `target` (raise it): one line naming the node, the op and the target."""
    return BackendError(f"{message} (target {target.name})", loc=op.loc or None, op=op.name)


def const_value(v: Value) -> Optional[np.ndarray]:
    """The value of a qir.const, or None when `v` is computed."""
    return np.asarray(v.owner.attrs["value"]) if v.owner.name == "qir.const" else None


def int_const(module: Module, array, loc: str, elem: ScalarType = i32) -> Value:
    """A qir.const of `array` stored as `elem` (int32 by default)."""
    array = np.asarray(array)
    return const_op(module, array.astype(elem.np_dtype), TensorType(array.shape, elem), loc)


def storage(v: Value) -> ScalarType:
    return v.type.storage


def is_8bit(v: Value) -> bool:
    return storage(v).width <= 8


def sole_user(v: Value) -> Optional[Operation]:
    """The only op using `v` (once), or None."""
    return v.uses[0][0] if len(v.uses) == 1 else None


def fits_int32(a: np.ndarray) -> bool:
    return a.size == 0 or (int(a.min()) >= INT32_MIN and int(a.max()) <= INT32_MAX)


def move_zero_points(v: Value, offset, base: Optional[TensorType] = None) -> bool:
    """Retype `v` after a rewrite has moved by `offset` the integers that stand for its real values (a bias taken out
    of the op producing `v` and folded into the requant after it, or moved into it): the zero points move by
    `offset`, so that real = (q - zero_point) * scale holds again.  `base` is the type `v` stood for before (default
    its own); `offset` broadcasts against `v`.  A plain integer type states no zero point and stays.  Returns False,
    leaving the type, when no quant type can say it: `offset` varies along two axes, or along another axis than the
    type's scales, or moves a zero point out of the storage range."""
    t = base or v.type
    if not t.is_quant:
        return True
    q = t.quant
    offset = np.asarray(offset, np.int64)
    lead = (1,) * (t.rank - offset.ndim)
    offset = offset.reshape(lead + offset.shape)
    varying = [axis for axis, d in enumerate(offset.shape) if d != 1]
    if len(varying) > 1 or (varying and q.is_per_axis and q.axis != varying[0]):
        return False
    axis = varying[0] if varying else q.axis
    if axis is None:
        moved = q.with_(zero_points=(q.zero_point + int(offset.reshape(-1)[0]),))
    else:
        n = t.shape[axis]
        scales = np.broadcast_to(np.asarray(q.scales, np.float64), (n,))
        zero_points = np.broadcast_to(np.asarray(q.zero_points, np.int64), (n,)) + np.broadcast_to(offset.reshape(-1),
                                                                                                    (n,))
        moved = q.with_(scales=tuple(scales), zero_points=tuple(int(z) for z in zero_points), axis=axis)
    if not all(moved.storage_min <= z <= moved.storage_max for z in moved.zero_points):
        return False
    v.type = t.with_element(moved)
    return True
