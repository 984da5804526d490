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
    return BackendError(f"{message} (target {target.name})", loc=op.loc or None, op=op.name)


def const_value(v: Value) -> Optional[np.ndarray]:
    """The value of a qir.const, or None when `v` is computed."""
    return np.asarray(v.owner.attrs["value"]) if v.owner.name == "qir.const" else None


def int_const(module: Module, array, loc: str, elem: ScalarType = i32) -> Value:
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
