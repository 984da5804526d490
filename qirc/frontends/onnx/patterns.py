"""Recognising quantizers: the abstract values the importer tracks per ONNX tensor, and the quantization arithmetic.

The importer walks the graph once and gives each ONNX tensor an abstract value instead of translating node by node:

    Const      a compile-time constant (initializer, Constant node, folded Cast/Shape/... chain)
    FloatVal   an IR float value (the result of an `onnx.*` op, a `quant.dcast`, a graph input)
    Scaled     a decomposed quantizer in progress: Div(x, s) [-> Add(z)] [-> Round]
    Quantized  a quantizer's result: stored integers of a `!quant.uniform` type (a `quant.qcast` of a float value, or
               the integers of a quantized constant), created when the pattern completes (Clip after Round,
               QuantizeLinear, QONNX Quant) and materialised only when something uses it
    Accum      the integer accumulator of a Conv/Gemm that consumes stored weight integers (DeepQuant's
               `dequant_moved` form); its quant type's scale is fixed once the following dequantizer is known
    IntView    `a * (q - b)` of a Quantized or Accum `q`: what a decomposed dequantizer Sub(z) -> Mul(s) computes on
               the integer-valued float tensor; with (a, b) equal to the type's (scale, zero point) it is a
               `quant.dcast`

A partial pattern that something else consumes is materialised as the float ops it stands for, so every graph
imports; only the completed patterns become quant ops.  The quantization arithmetic here is float32 as onnxruntime
computes it, so that a quantized constant holds exactly the integers onnxruntime would compute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple, Union

import numpy as np

from ...qir.ir import Value
from ...qir.types import ScalarType, UniformQuantType

F32 = np.float32
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1

ROUND_ADD = "round_add"  # QuantizeLinear: clip(rint(x / s) + z)
ADD_ROUND = "add_round"  # decomposed Div -> Add -> Round -> Clip, Brevitas, QONNX Quant: clip(rint(x / s + z))


class QuantParamError(ValueError):
    """Bad quantization parameters; the importer adds the file and node."""


# ----- abstract values ---------------------------------------------------------------------------------------------
class Const:
    """A compile-time constant `array`; `bounds`: integer bounds a Clip put on an integer constant (Brevitas QCDQ
    narrow-range weights: int8 -> Clip -> DQ).

    `reload`: where the array can be read again (a large float initializer: from its TensorProto), so that a
    quantizer that has computed the stored integers can `release` the float weights instead of holding them, beside
    protobuf's copy, until the import ends; a later use reads them again."""

    __slots__ = ("_array", "bounds", "reload")

    def __init__(self, array: np.ndarray, bounds: Optional[Tuple[int, int]] = None,
                 reload: Optional[Callable[[], np.ndarray]] = None):
        self._array = array
        self.bounds = bounds
        self.reload = reload

    @property
    def array(self) -> np.ndarray:
        array = self._array
        if array is None:
            array = self._array = self.reload()
        return array

    def release(self) -> None:
        if self.reload is not None:
            self._array = None


@dataclass(eq=False, slots=True)  # (slots: a large graph holds tens of thousands)
class FloatVal:
    value: Value


@dataclass(eq=False, slots=True)  # (slots: a large graph holds tens of thousands)
class Scaled:
    """Div(x, scale) [-> Add(zero_point)] [-> Round] of the tensor `x_name`; `nodes` are the ONNX nodes so far."""

    x_name: str
    scale: np.ndarray  # float32, broadcastable against x
    zero_point: Optional[np.ndarray]  # float32, or None before the Add
    rounded: bool
    nodes: Tuple = ()


@dataclass(eq=False, slots=True)  # (slots: a large graph holds tens of thousands)
class Quantized:
    """Stored integers of type `qtype` quantizing `source` (a Const or FloatVal) with `rounding`, or a constant."""

    qtype: UniformQuantType
    shape: Tuple[int, ...]
    loc: str
    rounding: str = ADD_ROUND
    source: Union[Const, FloatVal, None] = None
    #: the integers of a quantized constant, in the storage dtype (`qtype.np_dtype`: int8 weights take a byte per
    #: element, not eight; arithmetic that needs more widens a copy)
    stored: Optional[np.ndarray] = None
    value: Optional[Value] = None  # memo: the IR value once materialised
    dcast: Optional[tuple] = None  # memo: (a, b, value) of its quant.dcast
    #: `stored` is this state's own array (computed for it, in the storage dtype): its qir.const may hold it
    private: bool = True


@dataclass(eq=False, slots=True)  # (slots: a large graph holds tens of thousands)
class Accum:
    """An int.conv / int.gemm result; the file's float tensor equals `x_scale * stored`."""

    value: Value
    x_scale: float
    shape: Tuple[int, ...]
    dcast: Optional[tuple] = None  # memo: (a, b, value) of its quant.dcast


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


#: the (a, b) of a view that is the stored integers themselves; shared, hence read-only
ONE = _frozen(np.ones((), F32))
ZERO = _frozen(np.zeros((), F32))


@dataclass(eq=False, slots=True)  # (slots: a large graph holds tens of thousands)
class IntView:
    """The float tensor a * (q - b), q the stored integers of `src`."""

    src: Union[Quantized, Accum]
    a: np.ndarray = field(default_factory=lambda: ONE)
    b: np.ndarray = field(default_factory=lambda: ZERO)
    loc: str = ""  # the node that completed the dequantizer (its quant.dcast's location)

    @property
    def is_raw(self) -> bool:
        """True when the tensor is the stored integers themselves."""
        a, b = self.a, self.b
        if a is ONE and b is ZERO:
            return True
        return bool(_all(a == 1) and _all(b == 0))


def _all(x) -> bool:
    """np.all of a comparison's result, without np.all's dispatch for numpy scalars and arrays."""
    return x.all() if isinstance(x, (np.ndarray, np.generic)) else np.all(x)


# ----- storage ranges ------------------------------------------------------------------------------------------------
def storage_for_range(lo: float, hi: float) -> Tuple[ScalarType, int, int]:
    """The storage type for clip bounds (lo, hi), and the integer bounds.

    float32 cannot hold 2^31 - 1: Clip(-2^31, float32(2^31 - 1) = 2^31) is the int32 range.
    """
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo != np.floor(lo) or hi != np.floor(hi) or lo > hi:
        raise QuantParamError(f"clip bounds ({lo}, {hi}) are not an integer range")
    lo_i, hi_i = int(lo), int(hi)
    if lo_i >= INT32_MIN and hi_i == 2 ** 31:
        hi_i = INT32_MAX
    if lo_i >= 0:
        for name, top in (("u8", 255), ("u16", 65535)):
            if hi_i <= top:
                return ScalarType(name), lo_i, hi_i
        if hi_i <= INT32_MAX:
            return ScalarType("i32"), lo_i, hi_i
    else:
        for name, bits in (("i8", 8), ("i16", 16), ("i32", 32)):
            if -(2 ** (bits - 1)) <= lo_i and hi_i <= 2 ** (bits - 1) - 1:
                return ScalarType(name), lo_i, hi_i
    raise QuantParamError(f"clip bounds ({lo}, {hi}) do not fit a 32-bit integer type")


def storage_for_dtype(dtype) -> ScalarType:
    """Storage type of a QuantizeLinear / DequantizeLinear integer tensor."""
    names = {np.dtype(np.int8): "i8", np.dtype(np.uint8): "u8", np.dtype(np.int16): "i16",
             np.dtype(np.uint16): "u16", np.dtype(np.int32): "i32"}
    try:
        return ScalarType(names[np.dtype(dtype)])
    except KeyError:
        pass
    name = np.dtype(dtype).name
    if name.startswith("float8") or name.startswith("float4"):
        raise QuantParamError(f"quantized element type {name} is not supported: qirc compiles integer "
                              f"quantization for integer-only targets; quantize to int8/uint8 instead")
    if name in ("int4", "uint4", "int2", "uint2"):
        raise QuantParamError(f"element type {name} is not supported here: the Deeploy targets keep tensors in 8-bit "
                              f"storage; quantize to int8/uint8 (a narrower range in 8-bit storage compiles)")
    raise QuantParamError(f"quantized element type {name} is not supported (int8, uint8, int16, uint16, int32)")


def qonnx_range(bitwidth: float, signed: bool, narrow: bool) -> Tuple[int, int]:
    """Integer range of a QONNX Quant with this bit width."""
    if not np.isfinite(bitwidth) or bitwidth != np.floor(bitwidth) or not 1 <= bitwidth <= 32:
        raise QuantParamError(f"bit width {bitwidth} is not an integer in 1..32")
    bits = int(bitwidth)
    if signed:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if narrow:
            lo += 1
    else:
        lo, hi = 0, 2 ** bits - 1
        if narrow:
            hi -= 1
    return lo, hi


# ----- scales and zero points --------------------------------------------------------------------------------------
def check_scale(scale: np.ndarray) -> np.ndarray:
    scale = np.asarray(scale)
    if scale.size == 0:
        raise QuantParamError("the scale is empty")
    if not np.issubdtype(scale.dtype, np.floating):
        raise QuantParamError(f"the scale has element type {scale.dtype}, expected a float type")
    scale = scale.astype(F32)
    bad = scale[~np.isfinite(scale) | (scale <= 0)]
    if bad.size:
        raise QuantParamError(f"scale {bad.reshape(-1)[0]} is not a finite positive number")
    return scale


def check_zero_point(zero_point: np.ndarray, lo: int, hi: int) -> np.ndarray:
    zp = np.asarray(zero_point)
    if np.issubdtype(zp.dtype, np.floating):
        if not np.all(np.isfinite(zp)) or np.any(zp != np.round(zp)):
            bad = zp[~np.isfinite(zp) | (zp != np.round(zp))].reshape(-1)[0]
            raise QuantParamError(f"zero point {bad} is not an integer")
    zp_i = zp.astype(np.int64)
    out = zp_i[(zp_i < lo) | (zp_i > hi)]
    if out.size:
        raise QuantParamError(f"zero point {out.reshape(-1)[0]} lies outside the storage range [{lo}, {hi}]")
    return zp_i


def broadcast_axis(param: np.ndarray, shape: Tuple[int, ...], what: str) -> Optional[int]:
    """The axis along which a broadcast parameter varies (None if it is a single value).

    The parameter broadcasts numpy-style against a tensor of `shape`: at most one of its dimensions may exceed 1 and
    that dimension must equal the tensor's size on that axis.
    """
    param = np.asarray(param)
    if param.size == 1:
        return None
    if param.ndim > len(shape):
        raise QuantParamError(f"{what} of shape {list(param.shape)} has a higher rank than the tensor {list(shape)}")
    offset = len(shape) - param.ndim
    axes = [offset + i for i, d in enumerate(param.shape) if d != 1]
    if len(axes) != 1:
        raise QuantParamError(f"{what} of shape {list(param.shape)} varies along more than one axis")
    axis = axes[0]
    if param.shape[axis - offset] != shape[axis]:
        raise QuantParamError(f"per-axis {what} has {param.shape[axis - offset]} entries but axis {axis} of the "
                              f"tensor {list(shape)} has size {shape[axis]}")
    return axis


def make_quant_type(storage: ScalarType, lo: int, hi: int, scale: np.ndarray, zero_point: np.ndarray,
                    shape: Tuple[int, ...], axis: Optional[int] = None) -> UniformQuantType:
    """A `!quant.uniform` type from broadcast (decomposed/QONNX) or axis-given (QuantizeLinear) parameters."""
    scale = np.asarray(scale)
    zero_point = np.asarray(zero_point)
    if axis is None:
        s_axis = broadcast_axis(scale, shape, "scale")
        z_axis = broadcast_axis(zero_point, shape, "zero point")
        if s_axis is not None and z_axis is not None and s_axis != z_axis:
            raise QuantParamError(f"scale varies along axis {s_axis} but the zero point along axis {z_axis}")
        axis = s_axis if s_axis is not None else z_axis
    else:
        for param, what in ((scale, "scale"), (zero_point, "zero point")):
            if param.size != 1 and param.size != shape[axis]:
                raise QuantParamError(f"per-axis {what} has {param.size} entries but axis {axis} of the tensor "
                                      f"{list(shape)} has size {shape[axis]}")
    if axis is None:
        return UniformQuantType.per_tensor(storage, float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0]),
                                           lo, hi)
    n = shape[axis]
    scales = np.broadcast_to(scale.reshape(-1), (n,)) if scale.size == 1 else scale.reshape(-1)
    zps = np.broadcast_to(zero_point.reshape(-1), (n,)) if zero_point.size == 1 else zero_point.reshape(-1)
    return UniformQuantType.per_axis(storage, axis, scales.astype(np.float64), zps, lo, hi)


def type_params(qtype: UniformQuantType, rank: int) -> Tuple[np.ndarray, np.ndarray]:
    """(scale float32, zero point float32) of a quant type, broadcastable against a tensor of `rank`."""
    return qtype.scales_for(rank).astype(F32), qtype.zero_points_for(rank).astype(F32)


@dataclass(frozen=True)
class QuantizePlan:
    """What `quantize` needs of a quant type for tensors of one rank, computed once."""

    scale: np.ndarray  # float32, broadcastable
    zero_point: np.ndarray  # float32, broadcastable
    work: np.dtype  # the float type the clip runs in: float32 where it holds the bounds exactly, else float64
    lo: np.generic  # the storage bounds in `work`
    hi: np.generic
    dtype: np.dtype  # the storage dtype


def quantize_plan(qtype: UniformQuantType, rank: int) -> QuantizePlan:
    scale, zp = type_params(qtype, rank)
    lo, hi = qtype.storage_min, qtype.storage_max
    # float32 rounds 2^31 - 1 to 2^31: the int32 bounds need float64
    work = np.dtype(F32) if -2 ** 24 <= lo and hi <= 2 ** 24 else np.dtype(np.float64)
    return QuantizePlan(scale, zp, work, work.type(lo), work.type(hi), np.dtype(qtype.np_dtype))


def quantize(x: np.ndarray, qtype: UniformQuantType, rounding: str, plan: Optional[QuantizePlan] = None) -> np.ndarray:
    """Stored integers of float `x` in the storage dtype (`qtype.np_dtype`), computed in float32 as onnxruntime does
    for that rounding order (NaN stores 0 or the range bound nearest to it, +-inf saturate).  `plan`:
    quantize_plan(qtype, x.ndim) where the caller has it."""
    x = np.asarray(x, dtype=F32)
    if plan is None:
        plan = quantize_plan(qtype, x.ndim)
    scale, zp = plan.scale, plan.zero_point
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = x / scale
        if isinstance(q, np.ndarray):  # of x's shape (the parameters broadcast against it): the rest in place
            if rounding == ROUND_ADD:
                np.add(np.rint(q, out=q), zp, out=q)
            else:
                np.rint(np.add(q, zp, out=q), out=q)
        else:  # a numpy scalar (a 0-d x)
            q = np.rint(q) + zp if rounding == ROUND_ADD else np.rint(q + zp)
        # np.array: an array also for a 0-d x (no copy of an array of that dtype)
        q = np.array(q, dtype=plan.work, copy=None)
        total = np.add.reduce(q, axis=None)  # NaN when an element is (or +inf meets -inf: then look closer)
    if total != total:
        nan = np.isnan(q)
        if nan.any():
            q[nan] = 0.0
    np.minimum(q, plan.hi, out=q)
    np.maximum(q, plan.lo, out=q)
    return q.astype(plan.dtype)


def same_params(a: np.ndarray, b: np.ndarray, shape: Tuple[int, ...]) -> bool:
    """True when two broadcast parameter arrays hold the same float32 numbers for a tensor of `shape`."""
    a, b = np.asarray(a, F32), np.asarray(b, F32)
    rank = len(shape)
    if a.size == 1 and b.size == 1 and a.ndim <= rank and b.ndim <= rank:
        # single values broadcast to any shape of at least their rank (an empty tensor holds no value to differ)
        return 0 in shape or float(a.reshape(-1)[0]) == float(b.reshape(-1)[0])
    try:
        return bool(np.array_equal(np.broadcast_to(a, shape), np.broadcast_to(b, shape)))
    except ValueError:
        return False


def narrowed(qtype: UniformQuantType, lo: float, hi: float) -> UniformQuantType:
    """The type after clipping its stored integers to [lo, hi] (a Brevitas Clip between Quantize and Dequantize)."""
    if not (np.isfinite(lo) or lo == -np.inf) or not (np.isfinite(hi) or hi == np.inf):
        raise QuantParamError(f"clip bounds ({lo}, {hi}) are not numbers")
    new_lo = qtype.storage_min if lo == -np.inf else max(qtype.storage_min, int(np.ceil(lo)))
    new_hi = qtype.storage_max if hi == np.inf else min(qtype.storage_max, int(np.floor(hi)))
    if new_lo > new_hi:
        raise QuantParamError(f"clip bounds ({lo}, {hi}) leave no value of {qtype.storage} "
                              f"[{qtype.storage_min}, {qtype.storage_max}]")
    for z in qtype.zero_points:
        if not new_lo <= z <= new_hi:
            raise QuantParamError(f"zero point {z} lies outside the clipped range [{new_lo}, {new_hi}]")
    return qtype.with_(storage_min=new_lo, storage_max=new_hi)


# ----- QONNX Trunc ---------------------------------------------------------------------------------------------------
#: QONNX Trunc rounding modes (qonnx `resolve_rounding_mode`; ROUND is numpy's, half to even)
TRUNC_ROUNDINGS = ("ROUND", "FLOOR", "CEIL")


def trunc_shift(scale: np.ndarray, out_scale: np.ndarray) -> int:
    """The power-of-two exponent k of a QONNX Trunc, 2^k = 2^round(log2(out_scale / scale)) as qonnx computes it.

    The integer form needs one shift for the whole tensor: per-channel scales are fine when their ratio is one
    power of two.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ks = np.round(np.log2(np.asarray(out_scale, np.float64) / np.asarray(scale, np.float64)))
    ks = np.unique(np.asarray(ks).reshape(-1))
    if ks.size != 1 or not np.isfinite(ks[0]):
        raise QuantParamError(f"output scale / scale is not one power of two for the whole tensor "
                              f"(log2 ratios {', '.join(str(int(k)) for k in ks[:4])})")
    k = int(ks[0])
    if not -31 <= k <= 31:
        raise QuantParamError(f"the truncation shift 2^{k} is out of range")
    return k


def shift_round(q: np.ndarray, k: int, rounding: str, lo: int, hi: int) -> np.ndarray:
    """clip(rnd(q / 2^k), lo, hi) on int64 stored integers, exactly: what QONNX Trunc does after `round(x/s + z)`.

    Clipping before or after the rounding is the same thing since lo and hi are integers.
    """
    q = np.asarray(q, np.int64)
    if k <= 0:
        return np.clip(q << -k, lo, hi)
    floor = q >> k
    rest = q - (floor << k)
    half = 1 << (k - 1)
    if rounding == "FLOOR":
        t = floor
    elif rounding == "CEIL":
        t = floor + (rest != 0)
    else:  # half to even
        t = floor + ((rest > half) | ((rest == half) & (floor & 1 == 1)))
    return np.clip(t, lo, hi)


def requant_form(storage: ScalarType) -> Tuple[bool, int]:
    """(signed, n_levels) of int.requant_shift whose clip range is the whole storage range of `storage`."""
    return bool(storage.min < 0), int(storage.max) - int(storage.min) + 1
