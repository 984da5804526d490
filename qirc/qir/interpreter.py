"""The reference interpreter: executes a module with numpy, one kernel per op.

    outputs = run(module, {"input": x})                 # {output name: array}, in output order
    values  = run_values(module, [x])                   # {Value: array} for every value (translation validation)
    inputs  = random_inputs(module, seed=0)

Runtime convention (docs/architecture.md): a float tensor is a float32 array; an integer or quantized
(`!quant.uniform`) tensor holds its stored integers as an int64 array.

What each dialect computes:
- `onnx.*` in float32 the way onnxruntime's CPU provider computes (Conv/Gemm as im2col + float32 matmul like MLAS,
  Sigmoid with MLAS's rational approximation); only the summation order may differ.
- `quant.*` with the rounding of DESIGN.md section 3 (`rounding` = "round_add" or "add_round", ties to even, float32).
- `int.*` exactly in int64.  After every int op each result is checked against its declared type's storage range (an
  i32 accumulator, a quant type's storage_min..storage_max); `int.requant_shift` also checks that its intermediate
  x*mul + add + div/2 fits int32, as Deeploy computes it in int32.  A violation raises `OverflowError_` located at
  the op.  `check_overflow=False` turns these checks off.

Kernels are registered per op name with `@kernel("int.conv")` into `KERNELS` and have the signature
`fn(op, args: list[np.ndarray]) -> list[np.ndarray]`; they read attributes with `op.attr(name)`.  Every op declared in
`qirc/qir/dialects` has a kernel.  Kernels accept any batch size N; the runner checks that every result has its
declared shape.

Integer conv/gemm/matmul run as a float32 (float64) BLAS matmul when a bound proves every product and partial sum
is an integer of magnitude at most 2^24 (2^53), so the float result is exact whatever the summation order (for a
conv: max|x| from x's checked type, or its values, times the largest row sum of |w|; for gemm/matmul max|a| * max|b|
* K); otherwise as an exact int64 matmul.

`run()` (not `run_values()`, which keeps every value) fuses two patterns whose intermediates have no other reader,
block by block over the batch with the same values and checks as the kernels apart: an int.conv read only by an
int.requant_shift (the conv's sums requantized while in cache, `_conv_requant`), and a requant of an int.add /
int.sub of (single-use) requants, a residual connection (`_sum_requant`; a table of its 65,536 results where both
operands are held in one byte and the parameters are per tensor).  `_FUSE = False` turns that off.
"""
from __future__ import annotations

import contextvars
import math
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
from numpy.lib.stride_tricks import as_strided

try:  # np.clip's ufunc without np.clip's Python-level argument handling (microseconds a call, thousands of calls)
    from numpy._core.umath import clip as _clip
except ImportError:  # numpy < 2
    try:
        from numpy.core.umath import clip as _clip
    except ImportError:
        _clip = np.clip

from .diagnostics import InterpretError, OverflowError_, QircError, op_error
from .ir import Module, Operation, Value
from .ops import OPS, load_dialects
from .types import ScalarType, TensorType, UniformQuantType

Kernel = Callable[[Operation, List[np.ndarray]], List[np.ndarray]]

KERNELS: Dict[str, Kernel] = {}

# Whether the running interpreter checks int overflow; a context variable because kernels have a fixed signature.
_CHECK_OVERFLOW: contextvars.ContextVar[bool] = contextvars.ContextVar("qirc_check_overflow", default=True)
# Facts the kernels of one run derive from values that do not change within it (a conv's weight row sums), keyed by
# (id(op), what); None outside a run.
_RUN_MEMO: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("qirc_run_memo", default=None)

_F32 = np.float32
_I64 = np.int64
_EXACT_F32_LIMIT = 1 << 24
_EXACT_F64_LIMIT = 1 << 53
_REQUANT_BLOCK = 1 << 16  # int64 elements per block of int.requant_shift: 512 KB, cache-sized
_FUSED_BLOCK = 1 << 17  # int32 elements per piece of a conv's sums requantized in the conv (_RequantStore): 512 KB
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


def kernel(name: str) -> Callable[[Kernel], Kernel]:
    """Register `fn` as the kernel of op `name` (one kernel per op)."""

    def register(fn: Kernel) -> Kernel:
        if name in KERNELS:
            raise ValueError(f"kernel for {name} registered twice")
        KERNELS[name] = fn
        return fn

    return register


# =====================================================================================================================
# Running a module
# =====================================================================================================================
InputsArg = Union[Mapping[str, np.ndarray], Sequence[np.ndarray]]


def run(module: Module, inputs: InputsArg, *, check_overflow: bool = True) -> Dict[str, np.ndarray]:
    """Execute `module`; return {qir.output name: array} in output order."""
    values = _execute(module, inputs, check_overflow, keep_all=False)
    return {op.attrs["name"]: _widen(values[op.operands[0]]) for op in module.outputs}


def run_values(module: Module, inputs: InputsArg, *, check_overflow: bool = True) -> Dict[Value, np.ndarray]:
    """Execute `module`; return the runtime array of every value (keyed by the Value object)."""
    return {v: _widen(a) for v, a in _execute(module, inputs, check_overflow, keep_all=True).items()}


def _execute(module: Module, inputs: InputsArg, check_overflow: bool, keep_all: bool) -> Dict[Value, np.ndarray]:
    """Run every op in order.  Unless `keep_all`, a value is dropped once its last reader has run (the operands of
    qir.output stay): on a large batch the intermediate values would otherwise take gigabytes, and every new one
    would be fresh memory that the kernel pays page faults for.

    Unless `keep_all`, two patterns whose intermediate values have no other reader run fused, block by block along
    the batch axis while the intermediates are in cache, with the same values and the same checks as their kernels
    (`run_values`, which keeps every value, runs them apart): an int.conv read only by an int.requant_shift
    (`_conv_requant`, computed where the conv runs), and an int.requant_shift of an int.add / int.sub whose
    operands may themselves be single-use int.requant_shifts (`_sum_requant`, a residual connection's requant-add-
    requant, computed where the final requant runs)."""
    load_dialects()
    bound = _bind_inputs(module, inputs, narrow=check_overflow and not keep_all)
    values: Dict[Value, np.ndarray] = {}
    order = module.ops()
    fusions: Dict[int, Operation] = {}  # position of an int.conv -> the int.requant_shift fused into it
    groups: Dict[int, tuple] = {}  # position of a final requant -> (its int.add / int.sub, {operand: requant})
    member_at: Dict[int, int] = {}  # position of a group member -> position of its group's final requant
    if not keep_all and _FUSE:
        index = {id(op): i for i, op in enumerate(order)}
        for i, op in enumerate(order):
            reader = _single_reader(op)
            if op.name == "int.conv" and reader is not None and reader.name == "int.requant_shift" and len(
                    reader.operands) == 1:
                fusions[i] = reader
        conv_fused = {id(r) for r in fusions.values()}
        for i, op in enumerate(order):
            if op.name != "int.requant_shift" or len(op.operands) != 1 or id(op) in conv_fused:
                continue
            add = op.operands[0].owner
            if add.name not in ("int.add", "int.sub") or len(add.operands) != 2 or _single_reader(add) is not op:
                continue
            leaves = {}
            for v in add.operands:
                leaf = v.owner
                if (leaf.name == "int.requant_shift" and len(leaf.operands) == 1 and _single_reader(leaf) is add
                        and len(v.uses) == 1 and id(leaf) not in conv_fused and index[id(leaf)] not in groups):
                    leaves[v] = leaf
            groups[i] = (add, leaves)
            for member in (add, *leaves.values()):
                member_at[index[id(member)]] = i
    last_reader: Dict[Value, int] = {}
    if not keep_all:
        for i, op in enumerate(order):
            if op.name != "qir.output":
                for v in op.operands:  # a group member reads its operands where its group runs
                    last_reader[v] = max(last_reader.get(v, -1), member_at.get(i, i))
        for op in order:
            if op.name == "qir.output":
                last_reader.pop(op.operands[0], None)
    dying: Dict[int, List[Value]] = {}
    for v, i in last_reader.items():
        dying.setdefault(i, []).append(v)
    done = set()  # ids of ops computed ahead, fused into the op that feeds them
    # With the overflow checks on, every integer value lies inside its type's range, so a kernel may hand back a
    # narrower integer array than int64 (a requantized tensor as int8: an eighth of the memory traffic of the ops
    # that follow) wherever that dtype holds the type's range; kernels not known to compute right on such arrays
    # get them widened to int64 first, and run() / run_values() return int64 as documented.
    narrow = check_overflow
    token = _CHECK_OVERFLOW.set(check_overflow)
    memo_token = _RUN_MEMO.set({})
    try:
        for position, op in enumerate(order):
            if id(op) in done or position in member_at:
                pass
            elif position in fusions and KERNELS.get("int.conv") is _int_conv and KERNELS.get(
                    "int.requant_shift") is _int_requant_shift:
                reader = fusions[position]
                args = _kernel_args(op, values, bound, narrow)
                try:
                    fused = _conv_requant(op, reader, args)
                except QircError:
                    raise
                except Exception:  # the two kernels on their own report the problem at the right op
                    fused = None
                if fused is None:
                    _run_op(op, args, values, narrow, check_overflow)
                else:
                    _store_results(reader, [fused], [], values, narrow, check_overflow)
                    done.add(id(reader))
            elif position in groups:
                add, leaves = groups[position]
                fused = None
                if all(KERNELS.get(name) is fn for name, fn in (("int.requant_shift", _int_requant_shift),
                                                                ("int.add", _int_add), ("int.sub", _int_sub))):
                    try:
                        fused = _sum_requant(op, add, leaves, values)
                    except Exception:  # errors included: the ops apart report them where they occur
                        fused = None
                if fused is None:
                    members = sorted(leaves.values(), key=lambda m: index[id(m)]) + [add, op]
                    for member in members:
                        _run_op(member, _kernel_args(member, values, bound, narrow), values, narrow, check_overflow)
                else:
                    _store_results(op, [fused], [], values, narrow, check_overflow)
            else:
                _run_op(op, _kernel_args(op, values, bound, narrow), values, narrow, check_overflow)
            for value in dying.get(position, ()):
                values.pop(value, None)
    finally:
        _RUN_MEMO.reset(memo_token)
        _CHECK_OVERFLOW.reset(token)
    return values


def _single_reader(op: Operation) -> Optional[Operation]:
    """The one op reading `op`'s single result once, or None."""
    if len(op.results) != 1 or len(op.results[0].uses) != 1:
        return None
    return op.results[0].uses[0][0]


def _kernel_args(op: Operation, values: Dict[Value, np.ndarray], bound: Dict[int, np.ndarray],
                 narrow: bool) -> List[np.ndarray]:
    args = [bound[id(op)]] if op.name == "qir.input" else [values[v] for v in op.operands]
    if narrow and op.name not in NARROW_INPUTS:
        args = [_widen(a) for a in args]
    return args


def _run_op(op: Operation, args: List[np.ndarray], values: Dict[Value, np.ndarray], narrow: bool,
            check_overflow: bool) -> None:
    fn = KERNELS.get(op.name)
    if fn is None:
        raise op_error(InterpretError, op, f"the interpreter has no kernel for {op.name}")
    try:
        results = fn(op, args)
    except QircError:
        raise
    except Exception as e:  # a kernel failing on bad attributes or shapes is a located user error
        raise op_error(InterpretError, op, f"{op.name} cannot be executed: {type(e).__name__}: {e}") from e
    _store_results(op, results, args, values, narrow, check_overflow)


def _store_results(op: Operation, results, args, values: Dict[Value, np.ndarray], narrow: bool,
                   check_overflow: bool) -> None:
    """Check a kernel's results against `op`'s declared result types (count, shape, storage range) and keep them in
    the runtime convention."""
    if len(results) != len(op.results):
        raise op_error(InterpretError, op,
                       f"{op.name} kernel produced {len(results)} results, the op declares {len(op.results)}")
    for value, array in zip(op.results, results):
        array = _as_runtime(array, value.type, narrow)
        if array.shape != value.type.shape:
            raise op_error(InterpretError, op,
                           f"result has shape {_fmt_shape(array.shape)} but its declared type is {value.type}")
        if check_overflow and op.dialect == "int" and not _within_type(op, value.type, args):
            _check_storage_range(op, value.type, array)
        values[value] = array


def _as_runtime(array, type: TensorType, narrow: bool = False) -> np.ndarray:
    """A kernel's result in the runtime convention: float32, or int64 (with `narrow`, any integer dtype that holds
    the type's whole range is kept as it is)."""
    array = np.asarray(array)
    if type.is_float:
        return array.astype(_F32, copy=False)
    if narrow and array.dtype != _I64 and array.dtype.kind in "iu" and _holds(array.dtype, type.element):
        return array
    return array.astype(_I64, copy=False)


_LIMITS: Dict[np.dtype, tuple] = {}


def _int_limits(dtype) -> tuple:
    """(min, max) of an integer dtype, as Python ints (np.iinfo costs microseconds a call; the runner asks per op)."""
    limits = _LIMITS.get(dtype)
    if limits is None:
        info = np.iinfo(dtype)
        limits = _LIMITS[np.dtype(dtype)] = (int(info.min), int(info.max))
    return limits


def _holds(dtype: np.dtype, element) -> bool:
    lo, hi = _int_limits(dtype)
    return lo <= element.min and element.max <= hi


def _widen(array: np.ndarray) -> np.ndarray:
    """An integer array as int64 (the documented runtime dtype); other arrays as they are."""
    if array.dtype != _I64 and array.dtype.kind in "iu":
        return array.astype(_I64)
    return array


_NARROW_DTYPES = tuple(np.dtype(d) for d in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32))


def narrowest_int(lo: int, hi: int) -> np.dtype:
    """The smallest numpy integer dtype holding lo..hi."""
    for dtype in _NARROW_DTYPES:
        low, high = _int_limits(dtype)
        if low <= lo and hi <= high:
            return dtype
    return np.dtype(_I64)


def _fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _check_storage_range(op: Operation, type: TensorType, array: np.ndarray) -> None:
    element = type.element
    if array.size == 0 or type.is_float:
        return
    lo, hi = element.min, element.max
    if lo <= np.iinfo(_I64).min and hi >= np.iinfo(_I64).max:
        return
    amin, amax = int(array.min()), int(array.max())
    if lo <= amin and amax <= hi:
        return
    if amax > hi:
        reach, limit = amax, hi
    else:
        reach, limit = amin, lo
    count = int(np.count_nonzero((array < lo) | (array > hi)))
    raise op_error(OverflowError_, op, f"{_range_name(element)} overflow: values reach {reach} (limit {limit}); "
                                       f"{count} of {array.size} values out of range {lo}..{hi}")


# Kernels that compute right on integer operands of any numpy integer dtype (they widen wherever arithmetic could
# overflow the operand's dtype); with the overflow checks on, the runner passes them narrow arrays as they are.  Any
# other kernel (a new one included) gets int64 operands.
NARROW_INPUTS = frozenset(("qir.input", "qir.output", "int.conv", "int.requant_shift", "int.pad", "int.add", "int.sub",
                           "int.mul", "int.clip", "int.gemm", "int.matmul", "int.reduce_sum", "int.sumpool",
                           "int.reshape", "int.flatten", "int.transpose", "int.squeeze", "int.unsqueeze", "int.concat"))

# ops whose results are some of their operands' values (plus an int.pad's fill value)
_VALUE_PRESERVING = frozenset(("int.reshape", "int.flatten", "int.transpose", "int.squeeze", "int.unsqueeze",
                               "int.maxpool", "int.concat", "int.pad"))


def _type_range(type: TensorType):
    element = type.element
    return int(element.min), int(element.max)


def _within_type(op: Operation, type: TensorType, args: List[np.ndarray]) -> bool:
    """True when `op`'s result provably lies inside its type's storage range, so the runner can skip the scan of
    the whole result (two passes over it): from the op's own clip bounds, or from its operands' declared ranges (which
    the runner has checked, since it only asks with check_overflow on) and, for int.conv, its weights.  Constants'
    values are not taken from their types (a module built without the verifier may hold any value there)."""
    if type.is_float:
        return True
    lo, hi = _type_range(type)
    name = op.name
    if name == "int.requant_shift":
        r_lo, r_hi = requant_bounds(bool(op.attr("signed")), int(op.attr("n_levels")))
        return lo <= r_lo and r_hi <= hi
    if name == "int.clip":
        return lo <= int(_required(op, "min")) and int(_required(op, "max")) <= hi
    if any(v.owner.name == "qir.const" or v.type.is_float for v in op.operands[:1]):
        return False
    if name in _VALUE_PRESERVING:
        if any(v.owner.name == "qir.const" or v.type.is_float for v in op.operands):
            return False
        ranges = [_type_range(v.type) for v in op.operands]
        if name == "int.pad":
            value = int(op.attr("value"))
            ranges.append((value, value))
        return all(lo <= a and b <= hi for a, b in ranges)
    if name in ("int.add", "int.sub") and len(op.operands) == 2:
        r_lo, r_hi = _sum_range(op)
        return r_lo is not None and lo <= r_lo and r_hi <= hi
    if name == "int.conv" and len(args) >= 2 and args[1].ndim >= 2:
        x_lo, x_hi = _type_range(op.operands[0].type)
        w = args[1]
        bound = max(abs(x_lo), abs(x_hi)) * _weights_row_abs_sum(op, w)
        if len(args) > 2 and args[2].size:
            bound += _abs_max(args[2])
        return lo <= -bound and bound <= hi
    return False


def _sum_range(op: Operation):
    """The range of an int.add / int.sub result from its operands' declared ranges (checked by the runner), or
    (None, None) when an operand is a constant (not checked) or a float."""
    if any(v.owner.name == "qir.const" or v.type.is_float for v in op.operands):
        return None, None
    (a_lo, a_hi), (b_lo, b_hi) = (_type_range(v.type) for v in op.operands[:2])
    return (a_lo + b_lo, a_hi + b_hi) if op.name == "int.add" else (a_lo - b_hi, a_hi - b_lo)


def _range_name(element) -> str:
    if isinstance(element, UniformQuantType):
        return f"{element} storage"
    if isinstance(element, ScalarType):
        return f"{'int' if element.signed else 'uint'}{element.width} accumulator"
    return str(element)


def _bind_inputs(module: Module, inputs: InputsArg, narrow: bool = False) -> Dict[int, np.ndarray]:
    """Match the given arrays to the module's qir.input ops and check them; {id(input op): array}, integer inputs
    as int64 or, with `narrow`, in the narrowest dtype holding their type's range (a copy either way)."""
    input_ops = module.inputs
    names = [op.attrs["name"] for op in input_ops]
    listing = ", ".join(f"'{n}'" for n in names) or "none"
    if isinstance(inputs, Mapping):
        for key in inputs:
            if key not in names:
                raise InterpretError(f"unknown input '{key}': the module's inputs are {listing}")
        missing = [n for n in names if n not in inputs]
        if missing:
            op = input_ops[names.index(missing[0])]
            raise op_error(InterpretError, op, f"missing input '{missing[0]}' (the module's inputs are {listing})")
        given = [inputs[n] for n in names]
    else:
        given = list(inputs)
        if len(given) != len(names):
            raise InterpretError(f"expected {len(names)} inputs ({listing}), got {len(given)}")
    return {id(op): _check_input(op, a, narrow) for op, a in zip(input_ops, given)}


def _check_input(op: Operation, array, narrow: bool = False) -> np.ndarray:
    name = op.attrs["name"]
    type = op.results[0].type
    try:
        array = np.asarray(array)
    except Exception as e:
        raise op_error(InterpretError, op, f"input '{name}' is not an array: {e}") from e
    if array.shape != type.shape:
        raise op_error(InterpretError, op, f"input '{name}' has shape {_fmt_shape(array.shape)}, "
                                           f"the module declares {type}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise op_error(InterpretError, op, f"input '{name}' has non-numeric dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise op_error(InterpretError, op, f"input '{name}' has complex dtype {array.dtype}")
    if type.is_float:
        return array.astype(_F32, copy=False)
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise op_error(InterpretError, op, f"input '{name}' of integer type {type} holds non-integer values")
    lo, hi = type.element.min, type.element.max
    # the range check on the given array (integers, or floats just checked to hold integers), then one copy: the
    # run reads a narrow input at a fraction of int64's memory traffic
    if array.size and (array.min() < lo or array.max() > hi):
        raise op_error(InterpretError, op, f"input '{name}' has values {int(array.min())}..{int(array.max())} "
                                           f"outside the storage range {lo}..{hi} of {type}")
    return array.astype(narrowest_int(lo, hi) if narrow else _I64)


# =====================================================================================================================
# Seeded inputs
# =====================================================================================================================
def random_inputs(module: Module, seed: int = 0) -> Dict[str, np.ndarray]:
    """Seeded random inputs, {name: array}, in input order.

    A float input that feeds a quant.qcast is drawn uniformly over its quantizer's real range s*(lo-z)..s*(hi-z)
    widened by 10% (so that saturation is exercised); other float inputs are standard normal; integer and quantized
    inputs are uniform over their storage range.
    """
    rng = np.random.default_rng(seed)
    out: Dict[str, np.ndarray] = {}
    for op in module.inputs:
        value = op.results[0]
        type = value.type
        if type.is_float:
            bounds = _qcast_real_range(value)
            if bounds is None:
                array = rng.standard_normal(type.shape)
            else:
                low, high = bounds
                margin = 0.05 * (high - low)
                array = rng.uniform(low - margin, high + margin, size=type.shape)
            out[op.attrs["name"]] = array.astype(_F32)
        else:
            element = type.element
            lo, hi = max(element.min, np.iinfo(_I64).min), min(element.max, np.iinfo(_I64).max)
            out[op.attrs["name"]] = rng.integers(lo, hi, size=type.shape, endpoint=True, dtype=_I64)
    return out


def _qcast_real_range(value: Value):
    """The union of the real ranges of the quant.qcast ops that read `value` (broadcastable arrays), or None."""
    low = high = None
    rank = value.type.rank
    for user in value.users:
        if user.name != "quant.qcast":
            continue
        qt = user.results[0].type.element
        if not isinstance(qt, UniformQuantType):
            continue
        s = qt.scales_for(rank)
        z = qt.zero_points_for(rank).astype(np.float64)
        lo, hi = s * (qt.storage_min - z), s * (qt.storage_max - z)
        low = lo if low is None else np.minimum(low, lo)
        high = hi if high is None else np.maximum(high, hi)
    return None if low is None else (low, high)


# =====================================================================================================================
# Shared helpers: attributes, windows, convolution, matmul
# =====================================================================================================================
def _ints_attr(op: Operation, name: str, default: Sequence[int]) -> List[int]:
    """An `ints` attribute, or `default` when it is absent or empty (ONNX's defaults for pads/strides/dilations)."""
    value = op.attr(name)
    if value is None or len(value) == 0:
        return list(default)
    return [int(v) for v in value]


def _required(op: Operation, name: str):
    value = op.attr(name)
    if value is None:
        raise op_error(InterpretError, op, f"{op.name} needs attribute '{name}'")
    return value


def _axis(axis: int, rank: int, op: Operation) -> int:
    a = int(axis)
    if not -rank <= a < max(rank, 1):
        raise op_error(InterpretError, op, f"axis {a} is out of range for rank {rank}")
    return a % rank if rank else 0


def _axes(op: Operation, rank: int, name: str = "axes") -> List[int]:
    return sorted({_axis(a, rank, op) for a in (op.attr(name) or [])})


def _window_view(xp: np.ndarray, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
                 out: Sequence[int]) -> np.ndarray:
    """Read-only view [N, C, *out, *kernel] of the sliding windows of a padded [N, C, *spatial] array."""
    n = len(kernel)
    st = xp.strides
    shape = xp.shape[:2] + tuple(out) + tuple(kernel)
    strides_ = st[:2] + tuple(st[2 + i] * strides[i] for i in range(n)) + tuple(st[2 + i] * dilations[i]
                                                                               for i in range(n))
    return as_strided(xp, shape, strides_, writeable=False)


def _spatial_pad(pads: Sequence[int], n: int, extra: Sequence[int] = ()) -> List[tuple]:
    extra = list(extra) or [0] * n
    return [(0, 0), (0, 0)] + [(pads[i], pads[i + n] + extra[i]) for i in range(n)]


def _conv_geometry(op: Operation, x: np.ndarray, kernel_spatial: Sequence[int]):
    n = x.ndim - 2
    if n < 1:
        raise op_error(InterpretError, op, f"{op.name} needs an input of rank >= 3, got rank {x.ndim}")
    pads = _ints_attr(op, "pads", [0] * (2 * n))
    strides = _ints_attr(op, "strides", [1] * n)
    dilations = _ints_attr(op, "dilations", [1] * n)
    if len(pads) != 2 * n or len(strides) != n or len(dilations) != n or len(kernel_spatial) != n:
        raise op_error(InterpretError, op, f"{op.name} attributes do not match {n} spatial axes "
                                           f"(pads {pads}, strides {strides}, dilations {dilations})")
    if min(pads) < 0 or min(strides) < 1 or min(dilations) < 1:
        raise op_error(InterpretError, op, f"{op.name} needs pads >= 0 and strides, dilations >= 1")
    return pads, strides, dilations


def conv_nd(x: np.ndarray, w: np.ndarray, pads: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
            group: int, matmul: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """N-d grouped convolution (NCHW, zero padding) without bias, in x's dtype.

    Depthwise convolutions (one input channel per group) are a loop over kernel taps of whole-tensor
    multiply-adds; all others are im2col followed by `matmul(cols [g, N*P, Cg*K], weights [g, Cg*K, Mg])`.
    """
    N, C = x.shape[:2]
    M, Cg = w.shape[:2]
    kernel = w.shape[2:]
    n = len(kernel)
    if C != Cg * group or M % group:
        raise ValueError(f"input has {C} channels, weights {w.shape} with group {group} need {Cg * group} input "
                         f"channels and a channel count divisible by the group")
    xp = np.pad(x, _spatial_pad(pads, n)) if any(pads) else x
    out = [(xp.shape[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1 for i in range(n)]
    if min(out) < 1:
        raise ValueError(f"kernel {list(kernel)} with dilations {list(dilations)} does not fit the padded input "
                         f"{list(xp.shape[2:])}")
    windows = _window_view(xp, kernel, strides, dilations, out)  # [N, C, *out, *kernel]
    Mg = M // group
    if Cg == 1:
        # depthwise (with channel multiplier Mg): y[:, g*Mg + m] = sum_k x[:, g, k] * w[g*Mg + m, 0, k]
        y = np.zeros((N, M) + tuple(out), dtype=np.result_type(x, w))
        wd = w.reshape((M,) + (1,) * n + (-1,))
        for k, tap in enumerate(np.ndindex(*kernel)):
            xs = windows[(Ellipsis,) + tap]
            if Mg > 1:
                xs = np.repeat(xs, Mg, axis=1)
            y += xs * wd[..., k]
        return y
    P = int(np.prod(out))
    K = Cg * int(np.prod(kernel))
    win = windows.reshape((N, group, Cg) + tuple(out) + tuple(kernel))
    # [N, g, Cg, *out, *k] -> [g, N, *out, Cg, *k]: rows are output positions, columns the patch
    perm = [1, 0] + list(range(3, 3 + n)) + [2] + list(range(3 + n, 3 + 2 * n))
    cols = np.ascontiguousarray(win.transpose(perm)).reshape(group, N * P, K)
    wm = w.reshape(group, Mg, K).transpose(0, 2, 1)
    y = matmul(cols, wm)  # [g, N*P, Mg]
    y = y.reshape((group, N) + tuple(out) + (Mg,))
    y = np.moveaxis(y, -1, 1)  # [g, Mg, N, *out]
    y = np.moveaxis(y, 2, 0)  # [N, g, Mg, *out]
    return np.ascontiguousarray(y).reshape((N, M) + tuple(out))


def _abs_max(a: np.ndarray) -> int:
    if a.size == 0:
        return 0
    return max(abs(int(a.max())), abs(int(a.min())))


def exact_dtype(bound: int):
    """The cheapest dtype in which integer products and sums bounded by `bound` in magnitude are exact.

    A float holds every integer below 2^(mantissa bits + 1) exactly, so when the bound on every product and partial
    sum is below 2^24 (float32) or 2^53 (float64) BLAS computes the exact integer whatever its summation order;
    above that only int64 is exact.
    """
    if bound <= _EXACT_F32_LIMIT:
        return _F32
    if bound <= _EXACT_F64_LIMIT:
        return np.float64
    return _I64


def _row_abs_sum(w: np.ndarray) -> int:
    """The largest sum of |w| over one output channel (axis 0) of a weight array."""
    if w.size == 0:
        return 0
    rows = w.reshape(w.shape[0], -1)
    # int32 holds the row sums of 8-bit weights (K * 2^8 < 2^31 for any K below 2^23) at half int64's traffic
    wide = np.int32 if rows.dtype.kind in "iu" and rows.dtype.itemsize == 1 and rows.shape[1] < (1 << 23) else _I64
    return int(np.abs(rows.astype(wide)).sum(axis=1, dtype=wide).max())


def _weights_row_abs_sum(op: Operation, w: np.ndarray) -> int:
    """_row_abs_sum of the weights `w` of `op`, once per run: the conv kernel, the runner's range check and the
    requant reading the conv's result all ask for it (its weights do not change within a run)."""
    memo = _RUN_MEMO.get()
    if memo is None:
        return _row_abs_sum(w)
    key = (id(op), "row_abs_sum")
    if key not in memo:
        memo[key] = _row_abs_sum(w)
    return memo[key]


def _partial_sum_bound(x_type: TensorType, x: np.ndarray, rows: np.ndarray, weights: Optional[int] = None) -> int:
    """A bound on |every partial sum| of the products x * w where each output sums one row of `rows` [M, K] (a
    constant weight matrix) against values of x: max|x| times the largest row sum of |w| (any partial sum is a subset
    of a row's terms).  max|x| comes from x's declared storage range, which costs nothing; only when that bound is
    too loose for float32 are the actual values of x scanned for a tighter one."""
    if weights is None:
        weights = _row_abs_sum(rows)
    # x's type bounds its values only where the runner checks them (check_overflow) or they were clipped
    element = x_type.element
    static = (max(abs(int(element.min)), abs(int(element.max)))
              if _CHECK_OVERFLOW.get() and not x_type.is_float else None)
    if static is not None and static * weights <= _EXACT_F32_LIMIT:
        return static * weights
    return _abs_max(x) * weights


def exact_int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.matmul of int64 arrays, exactly.

    Uses float32 / float64 BLAS when max|a| * max|b| * K < 2^24 / 2^53 (every product and partial sum is then an
    exactly representable integer whatever the summation order), else numpy's int64 matmul.
    """
    a = np.asarray(a, dtype=_I64)
    b = np.asarray(b, dtype=_I64)
    k = a.shape[-1] if a.ndim else 1
    dtype = exact_dtype(_abs_max(a) * _abs_max(b) * max(k, 1))
    if dtype is _I64:
        return np.matmul(a, b)
    return np.matmul(a.astype(dtype), b.astype(dtype)).astype(_I64)


# Elements of one im2col block of the integer convolution: a few MB, so that the patch matrix stays in cache
# between its gather and the matmul that reads it, and a batch of 256 images never builds one 300 MB matrix.
_IM2COL_BLOCK = 1 << 19
_FLAT_CONV = True  # 2-d convolutions through the flat layout (tests switch it off to compare the routes)
_SMALL_GEMM = 100 ** 3  # OpenBLAS's bound on M * N * K for its unpacked small-matrix sgemm kernels
_SMALL_GEMM_MIN_WIDTH = 1024  # narrower chunks cost more in calls than packing would (tests lower both)
# results from which a requant of a sum of byte operands is worth its table (_sum_table, about 0.15 ms: a few
# passes over its 65,536 entries; a lookup saves about 1 ns a result)
_SUM_TABLE_MIN = 8 * 65536
_FUSE = True  # run() fuses conv+requant and requant-add-requant (tests switch it off to compare)


def int_conv_nd(x: np.ndarray, w: np.ndarray, pads: Sequence[int], strides: Sequence[int],
                dilations: Sequence[int], group: int, dtype, bias: Optional[np.ndarray] = None,
                int_result=False, store=None) -> np.ndarray:
    """Exact grouped N-d convolution (NCHW, zero padding) of integer arrays, computed in `dtype`.

    `dtype` must be exact for the operands (see `exact_dtype`); the result is in `dtype`, or int64 with
    `int_result=True`, or the integer dtype `int_result` (which must hold every result: the caller's bound), each block
    converted while it is in cache instead of in one more pass over the whole output.  `bias` (one
    integer per output channel) is added in int64 and needs `int_result`.  Unlike `conv_nd` (which mirrors MLAS's
    layout for the float kernels), the patch matrix of a block of images is built image-major, cols[b, g, Cg*k, P],
    whose gather reads the padded input along its rows, and the weights multiply from the left, so every image's
    product lands in NCHW order with no transpose; the batch is processed in blocks of about `_IM2COL_BLOCK` elements.

    Every route hands its exact sums to `store` block by block (images n0..n1 as a [b, M, *out] array in `dtype`,
    possibly a strided view); the default store (`_ConvStore`) writes them into the result as described above, and
    the interpreter passes a store that requantizes each block while it is in cache (`_RequantStore`), in which case
    `bias` and `int_result` are the store's business and the store's result is returned.
    """
    N, C = x.shape[:2]
    M, Cg = w.shape[:2]
    kernel = tuple(w.shape[2:])
    n = len(kernel)
    if C != Cg * group or M % group:
        raise ValueError(f"input has {C} channels, weights {w.shape} with group {group} need {Cg * group} input "
                         f"channels and a channel count divisible by the group")
    padded = tuple(x.shape[2 + i] + pads[i] + pads[i + n] for i in range(n))
    out = tuple((padded[i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1 for i in range(n))
    if min(out) < 1:
        raise ValueError(f"kernel {list(kernel)} with dilations {list(dilations)} does not fit the padded input "
                         f"{list(padded)}")
    if store is None:
        if bias is not None and int_result is False:
            raise ValueError("int_conv_nd adds a bias only with an integer result (int_result)")
        result = None if int_result is False else np.dtype(_I64) if int_result is True else np.dtype(int_result)
        store = _ConvStore((N, M) + out, dtype, result, bias)
    if _FLAT_CONV and group == 1 and n == 2 and any(k > 1 for k in kernel) and _flat_fits(padded, kernel, strides,
                                                                                          out):
        _conv_flat(x, w.astype(dtype), pads, kernel, strides, dilations, out, dtype, store)
        return store.result()
    Mg = M // group
    wf = w.astype(dtype)
    whole = Cg == 1 and Mg == 1 and all(o == 1 for o in out) and tuple(kernel) == padded and not any(pads)
    # measured on MobileNetV2's depthwise layers (3x3 to 48x48 maps, strides 1 and 2): the flat route's long
    # contiguous copies and one batched product beat the windowed taps (whose innermost loops run along a few
    # outputs) by 1.2-2.6x, even where most of its grid is wasted (a 3x3 map padded to 5x5)
    if Cg == 1 and Mg == 1 and not whole and not any(pads) and 2 * len(_used_taps(wf.reshape(M, 1, -1))) <= math.prod(
            kernel):
        # at most half the taps used (Siracusa's stacked residual add: 4 of 49) and no padding: each used tap is a
        # strided view of x itself, multiplied in and added up per block of images; no layout of the (mostly
        # unread) input, no grid positions thrown away (1.4x faster than the flat route on those convs)
        _depthwise_sparse(x, wf, kernel, strides, dilations, out, dtype, store)
        return store.result()
    if _FLAT_CONV and Cg == 1 and Mg == 1 and n == 2 and not whole:
        _depthwise_flat(x, wf, pads, kernel, strides, dilations, out, dtype, store)
        return store.result()
    if whole:
        # a depthwise kernel covering the whole input (a global average pool made a conv): one dot product per
        # (image, channel), exact in `dtype` like every route here
        store(0, N, np.einsum("nck,ck->nc", x.reshape(N, C, -1).astype(dtype), wf.reshape(C, -1)).reshape((N, M) + out))
        return store.result()
    pointwise = all(k == 1 for k in kernel)
    if pointwise and any(s > 1 for s in strides):
        # a 1x1 kernel reads one input position per output: the input sampled at the strides (and converted, in one
        # pass) is the whole patch matrix, where the windowed gather below would copy it position by position
        xp = np.zeros((N, C) + out, dtype=dtype) if any(pads) else np.empty((N, C) + out, dtype=dtype)
        into, take = [slice(None), slice(None)], [slice(None), slice(None)]
        for i in range(n):
            first = -(-pads[i] // strides[i])  # the first output whose position lies inside the input
            last = min(out[i] - 1, (x.shape[2 + i] - 1 + pads[i]) // strides[i])
            into.append(slice(first, last + 1))
            start = first * strides[i] - pads[i]
            take.append(slice(start, start + (last - first) * strides[i] + 1, strides[i]))
        if all(s.stop > s.start for s in into[2:]):
            xp[tuple(into)] = x[tuple(take)]
        strides = [1] * n
    elif any(pads):
        xp = np.zeros((N, C) + padded, dtype=dtype)  # pad and convert in one pass
        xp[(slice(None), slice(None)) + tuple(slice(pads[i], pads[i] + x.shape[2 + i]) for i in range(n))] = x
    else:
        xp = x.astype(dtype)
    if Cg == 1:
        # depthwise (channel multiplier Mg): a multiply-add per kernel tap, over blocks of images small enough that
        # the accumulator stays in cache across the taps; each block goes to the store at once
        wd = wf.reshape((M,) + (1,) * n + (-1,))
        per_image = M * math.prod(out)
        images = max(1, (_IM2COL_BLOCK // 8) // max(1, per_image))
        taps = list(np.ndindex(*kernel))
        used = _used_taps(wd)  # taps with a nonzero weight
        for start in range(0, N, images):
            stop = min(N, start + images)
            windows = _window_view(xp[start:stop], kernel, strides, dilations, out)
            acc = np.empty((stop - start, M) + out, dtype=dtype)
            scratch = np.empty_like(acc)
            for i, k in enumerate(used):
                xs = windows[(Ellipsis,) + taps[k]]
                if Mg > 1:
                    xs = np.repeat(xs, Mg, axis=1)
                if i == 0:
                    np.multiply(xs, wd[..., 0], out=acc)
                else:
                    np.multiply(xs, wd[..., k], out=scratch)
                    acc += scratch
            store(start, stop, acc)
        return store.result()
    P = int(np.prod(out))
    K = Cg * int(np.prod(kernel))
    wm = wf.reshape(group, Mg, K)
    # blocks sized by the larger of the patch matrix and the product (a 1x1 conv's few input channels would
    # otherwise make one block of the whole batch, whose product no longer fits any cache)
    block = max(1, _IM2COL_BLOCK // max(1, group * max(K, Mg) * P))
    # [b, g, Cg, *out, *k] -> [b, g, Cg, *k, *out]
    perm = [0, 1, 2] + list(range(3 + n, 3 + 2 * n)) + list(range(3, 3 + n))
    for start in range(0, N, block):
        stop = min(N, start + block)
        b = stop - start
        if pointwise:  # a 1x1 kernel (on the strided samples): the input is its own patch matrix
            cols = xp[start:stop].reshape(b, group, K, P)
        else:
            windows = _window_view(xp[start:stop], kernel, strides, dilations, out)
            cols = np.ascontiguousarray(windows.reshape((b, group, Cg) + out + kernel).transpose(perm))
            cols = cols.reshape(b, group, K, P)
        target = store.direct(start, stop)
        if target is not None:
            np.matmul(wm, cols, out=target.reshape(b, group, Mg, P))
        else:
            store(start, stop, np.matmul(wm, cols).reshape((b, M) + out))
    return store.result()


class _ConvStore:
    """int_conv_nd's default store: each block of exact sums (in the compute dtype) goes into the result y, as it is
    when `result` is None, else cast (exact: they are integers within the caller's bound) to the integer dtype
    `result` with the bias added, while the block is in cache."""

    def __init__(self, shape, dtype, result, bias):
        self.y = np.empty(shape, dtype=dtype if result is None else result)
        self.cast = result is not None
        self.bias = None if bias is None else _bias_as(bias, self.y.dtype).reshape((1, -1) + (1,) * (len(shape) - 2))

    def direct(self, n0, n1):
        """The slice of y a route may compute into itself (no cast, no bias), or None."""
        return self.y[n0:n1] if not self.cast and self.bias is None else None

    def __call__(self, n0, n1, block):
        target = self.y[n0:n1]
        if self.cast:
            np.copyto(target, block, casting="unsafe")  # exact integers: the cast is exact
        else:
            target[...] = block
        if self.bias is not None:
            target += self.bias  # exact in y's dtype: the caller's bound covers the sums with the bias

    def result(self):
        return self.y


def _bias_as(bias: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`bias` in the integer result dtype when every value fits it (an in-place add of an int64 bias into an int32
    result goes through numpy's casting buffers, 3x slower), else in int64 (numpy then checks nothing: the caller's
    bound covers the sums with the bias)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu" and dtype.itemsize < 8 and bias.size:
        info = np.iinfo(dtype)
        if info.min <= int(bias.min()) and int(bias.max()) <= info.max:
            return bias.astype(dtype, copy=False)
    return bias.astype(_I64, copy=False)


class _FlatLayout:
    """A block of images of `x` [N, C, H, W] zero-padded by `pads`, in `dtype`, laid out for the flat convolutions
    below, one block of at most `images` images at a time (the buffer stays in cache; its padding is zeroed once and
    never written, so each block only copies its images in).

    Channel-major and flattened, X[c, (n, h, w)] with rows of Wq elements and images of Hq rows, the tap (i, j) of
    the output at flat position p = n*Hq*Wq + h*Wq + w reads X[c, p + i*dh*Wq + j*dw] (stride 1).  Neighbouring rows
    and images share their zero padding (a row's right padding is the next row's left padding: Wq = W + max(left,
    right), likewise Hq), which shrinks the grid of outputs computed and thrown away (a 32x32 map padded by one:
    33x33 instead of 34x34; 8x8: 9x9 instead of 10x10).  With strides (sh, sw) the padded image is first split into
    its sh x sw phases (rows a::sh, columns b::sw, each Hq x Wq, padding not shared): tap (i, j) reads phase
    (i*dh % sh, j*dw % sw) at offset (i*dh // sh) * Wq + (j*dw // sw), again one contiguous slice for every output.
    `taps` holds the (phase, offset) of every tap in (i, j) order; the valid outputs of image n are the first
    Ho x Wo of its Hq x Wq grid, and those of a block of b images lie in its first `width(b)` grid positions."""

    def __init__(self, shape, pads, kernel, strides, dilations, out, dtype, images: int):
        N, C, H, W = shape
        sh, sw = strides
        Ho, Wo = out
        Hq, Wq = _flat_grid(shape, pads, strides, out, both=True)
        if sh == sw == 1:
            self.places = [(0, pads[0], pads[1], slice(0, H), slice(0, W))]
        else:
            # each phase (a, b) straight from x: padded row i*sh + a is x's row i*sh + a - pad_top, likewise columns
            self.places = []
            for a in range(sh):
                i0 = max(0, -(-(pads[0] - a) // sh))  # the first phase row that holds a row of x
                r0 = i0 * sh + a - pads[0]
                for b in range(sw):
                    j0 = max(0, -(-(pads[1] - b) // sw))
                    c0 = j0 * sw + b - pads[1]
                    if r0 < H and c0 < W:
                        self.places.append((a * sw + b, i0, j0, slice(r0, H, sh), slice(c0, W, sw)))
        self.taps = [(((i * dilations[0]) % sh) * sw + (j * dilations[1]) % sw,
                      ((i * dilations[0]) // sh) * Wq + (j * dilations[1]) // sw)
                     for i in range(kernel[0]) for j in range(kernel[1])]
        self.Hq, self.Wq, self.S = Hq, Wq, Hq * Wq
        self.out = (Ho, Wo)
        self.C = C
        tail = max(off for _, off in self.taps)
        length = max(images * self.S, self.width(images) + tail)
        self.X = np.zeros((C, sh * sw, length), dtype=dtype)

    def width(self, b: int) -> int:
        """Grid positions computed for a block of b images: up to the last valid output of its last image."""
        Ho, Wo = self.out
        return (b - 1) * self.S + (Ho - 1) * self.Wq + Wo

    def fill(self, x: np.ndarray, n0: int, n1: int) -> np.ndarray:
        """Copy (and convert) images n0..n1 of x into the buffer; returns it, X [C, phases, length]."""
        b = n1 - n0
        for phase, i0, j0, rows, cols in self.places:
            block = x[n0:n1, :, rows, cols].transpose(1, 0, 2, 3)
            grid = self.X[:, phase, :b * self.S].reshape(self.C, b, self.Hq, self.Wq)
            grid[:, :, i0:i0 + block.shape[2], j0:j0 + block.shape[3]] = block
        return self.X


def _flat_grid(shape, pads, strides, out, both: bool = False):
    """The grid of one image in `_FlatLayout`: Hq * Wq (or (Hq, Wq) with `both`)."""
    H, W = shape[2:]
    sh, sw = strides
    Hp, Wp = H + pads[0] + pads[2], W + pads[1] + pads[3]
    if sh == sw == 1:
        Hq, Wq = H + max(pads[0], pads[2]), W + max(pads[1], pads[3])
        if out[0] > Hq or out[1] > Wq:  # padding wider than the kernel's reach: outputs would spill into the next image
            Hq, Wq = Hp, Wp
    else:
        Hq, Wq = -(-Hp // sh), -(-Wp // sw)
    return (Hq, Wq) if both else Hq * Wq


def _flat_fits(padded, kernel, strides, out) -> bool:
    """Whether the flat layout's grid wastes at most half its positions (valid outputs / grid >= 1/2)."""
    grid = (-(-padded[0] // strides[0])) * (-(-padded[1] // strides[1]))
    return 2 * out[0] * out[1] >= grid


class _ColumnRows:
    """The patch rows of a flat-layout conv per kernel column: the taps (i, j) and (i, j') of one kernel row read
    the same phase row shifted by a few columns, so kh copies rows[b][c, i, :] of X (one set per phase column b for
    a stride) serve every kernel column j, whose patch rows are rows[b][:, :, shift_j:shift_j + width].  A 3x3
    kernel copies its input 3 times (6 with a stride of 2) instead of 9.

    Rather than one product per kernel column over those shifted views (BLAS would pack the same rows once per
    column), the weights of the columns that share a phase column b are stacked, W_b [len(columns) * M, C * kh], and
    one product P_b = W_b @ rows[b] gives every column's outputs at every unshifted position; column j's
    contribution to the output at p is then P_b[its rows, p + shift_j], and `sum_into` adds those shifted slices.
    Fewer, taller products (a 16-channel 3x3 conv: one 48-row product instead of three 16-row ones) measured
    1.15-1.25x faster on ResNet8's layers."""

    def __init__(self, wf, strides, dilations, length, dtype):
        M, C, self.kh, kw = wf.shape
        (self.sh, self.sw), self.dh = strides, dilations[0]
        dw = dilations[1]
        self.M = M
        shift = [((j * dw) % self.sw, (j * dw) // self.sw) for j in range(kw)]  # (phase column, column shift) of j
        self.extra = max(c for _, c in shift)
        self.rows, self.stacks = {}, []
        row = _aligned(length + self.extra)
        groups = [[j for j in range(kw) if shift[j][0] == b] for b in sorted({b for b, _ in shift})]
        for columns in groups:
            b = shift[columns[0]][0]
            if b not in self.rows:
                self.rows[b] = np.empty((C, self.kh, row), dtype=dtype)
            weights = np.concatenate([wf[:, :, :, j].reshape(M, C * self.kh) for j in columns])
            self.stacks.append((b, np.ascontiguousarray(weights), [shift[j][1] for j in columns]))
        rows = max(len(shifts) for _, _, shifts in self.stacks) * M
        self.product = np.empty((rows, row), dtype=dtype)

    def fill(self, X: np.ndarray, width: int, Wq: int) -> None:
        for b, X2 in self.rows.items():
            for i in range(self.kh):
                phase, off = ((i * self.dh) % self.sh) * self.sw + b, ((i * self.dh) // self.sh) * Wq
                X2[:, i, :width + self.extra] = X[:, phase, off:off + width + self.extra]

    def sum_into(self, grid: np.ndarray, width: int) -> None:
        """grid[:, :width] = the conv's sums over the filled rows (exact in their dtype: every partial sum is a
        subset of one output's terms, within the caller's bound)."""
        M, span = self.M, width + self.extra
        target = grid[:, :width]
        first = True
        for b, weights, shifts in self.stacks:
            if len(shifts) == 1:  # one column: its rows read in place at its shift, the product lands aligned
                c = shifts[0]
                rows = self.rows[b][:, :, c:c + width].reshape(-1, width)  # a view: the row stride is uniform
                if first:
                    np.matmul(weights, rows, out=target)
                else:
                    part = self.product[:M, :width]
                    np.matmul(weights, rows, out=part)
                    target += part
            else:
                product = self.product[:len(shifts) * M, :span]  # phase columns may hold fewer kernel columns
                np.matmul(weights, self.rows[b][:, :, :span].reshape(-1, span), out=product)
                parts = [product[k * M:(k + 1) * M, c:c + width] for k, c in enumerate(shifts)]
                if first:
                    np.add(parts[0], parts[1], out=target)
                    parts = parts[2:]
                for part in parts:
                    target += part
            first = False


def _aligned(length: int) -> int:
    """A row length for buffers whose rows BLAS and numpy stream through: a multiple of 16 elements, so that every
    row starts 64-byte aligned (rows at odd offsets measured up to 10% slower in the products and adds)."""
    return -(-length // 16) * 16


def _small_gemm_width(M: int, K: int) -> int:
    """Columns per product of an [M, K] weight matrix with a patch matrix of many columns: OpenBLAS multiplies
    without packing its operands when M * K * columns <= 100^3 (its "small matrix" kernels), which measured
    1.3-1.5x faster per multiply-add for a conv's few rows (K of 9-27 for 3 input channels); a product is split
    into such chunks where they still span at least 1,024 columns, else left whole."""
    width = _SMALL_GEMM // max(1, M * K)
    return width if width >= _SMALL_GEMM_MIN_WIDTH else 1 << 62


def _conv_flat(x: np.ndarray, wf: np.ndarray, pads, kernel, strides, dilations, out, dtype, store) -> None:
    """A 2-d convolution of `x` [N, C, H, W] zero-padded by `pads` by `wf` [M, C, kh, kw] (in `dtype`), in the flat
    layout of `_FlatLayout`: every patch-matrix row is one contiguous slice of X (a long, fast copy, where the
    classic im2col gathers short rows), and one matmul gives every output of the grid, of which the first Ho x Wo of
    each image are the valid ones (the others, reading across a row or image edge, are never used).  Blocks of whole
    images keep the layout, the patch matrix and the grid in cache; each block's valid outputs go to `store` as a
    [b, M, Ho, Wo] view of the grid.

    Where a kernel row has several taps and there are enough rows (c, i) for an efficient product, the patch rows
    are copied per kernel row only (`_ColumnRows`): one product of the stacked per-column weights, whose kw
    shifted slices are added in `dtype`, exactly (each is a partial sum of the same terms, bounded like the whole).
    Otherwise a product with few weight rows runs in column chunks small enough for OpenBLAS's unpacked kernels
    (`_small_gemm_width`)."""
    N, C = x.shape[:2]
    M = wf.shape[0]
    Ho, Wo = out
    kh, kw = kernel
    T = kh * kw
    K = C * T
    S = _flat_grid(x.shape, pads, strides, out)
    images = max(1, min(N, _IM2COL_BLOCK // max(1, max(K, M) * S)))  # buffers for no more images than there are
    layout = _FlatLayout(x.shape, pads, kernel, strides, dilations, out, dtype, images)
    Hq, Wq = layout.Hq, layout.Wq
    row = _aligned(images * S)
    grid = np.empty((M, row), dtype=dtype)
    by_column = kw > 1 and C * kh >= 32
    if by_column:
        rows = _ColumnRows(wf, strides, dilations, images * S, dtype)
    else:
        wm = wf.reshape(M, K)  # rows ordered (c, tap), as the patch matrix below
        cols = np.empty((C, T, row), dtype=dtype)
        chunk = _small_gemm_width(M, K)
    for n0 in range(0, N, images):
        n1 = min(N, n0 + images)
        X = layout.fill(x, n0, n1)
        width = layout.width(n1 - n0)
        if by_column:
            rows.fill(X, width, Wq)
            rows.sum_into(grid, width)
        else:
            for t, (phase, off) in enumerate(layout.taps):
                cols[:, t, :width] = X[:, phase, off:off + width]
            patches = cols.reshape(K, -1)
            for a in range(0, width, chunk):
                b = min(width, a + chunk)
                np.matmul(wm, patches[:, a:b], out=grid[:, a:b])
        store(n0, n1, grid[:, :(n1 - n0) * S].reshape(M, n1 - n0, Hq, Wq)[:, :, :Ho, :Wo].transpose(1, 0, 2, 3))


def _depthwise_flat(x: np.ndarray, wf: np.ndarray, pads, kernel, strides, dilations, out, dtype, store) -> None:
    """A 2-d depthwise convolution (one weight plane per channel) in the flat layout of `_FlatLayout`: for a block
    of whole images, each channel's patch rows are contiguous slices of X copied into cols[c, tap, :], and one
    batched product w[c, 1, taps] @ cols[c, taps, :] gives every channel's grid (numpy's per-tap multiply-adds
    would pass over the block twice per tap; rows per kernel column as in `_conv_flat` measured slower here: the
    batched products over strided views are not BLAS calls).  The first Ho x Wo of each image's grid are the valid
    outputs; they go to `store` while in cache.  Exact in `dtype` for any summation order (the caller's bound)."""
    N, C = x.shape[:2]
    Ho, Wo = out
    T = math.prod(kernel)
    weights = wf.reshape(C, 1, T)
    used = _used_taps(weights)
    weights = np.ascontiguousarray(weights[:, :, used])
    T = len(used)
    S = _flat_grid(x.shape, pads, strides, out)
    images = max(1, min(N, (_IM2COL_BLOCK // 2) // max(1, C * S * T)))  # cols of about 1 MB (float32)
    layout = _FlatLayout(x.shape, pads, kernel, strides, dilations, out, dtype, images)
    Hq, Wq = layout.Hq, layout.Wq
    taps = [layout.taps[k] for k in used]
    cols = np.empty((C, T, images * S), dtype=dtype)
    grid = np.empty((C, 1, images * S), dtype=dtype)
    for n0 in range(0, N, images):
        n1 = min(N, n0 + images)
        X = layout.fill(x, n0, n1)
        width = layout.width(n1 - n0)
        for k, (phase, off) in enumerate(taps):
            cols[:, k, :width] = X[:, phase, off:off + width]
        np.matmul(weights, cols[:, :, :width], out=grid[:, :, :width])
        store(n0, n1, grid[:, 0, :(n1 - n0) * S].reshape(C, n1 - n0, Hq, Wq)[:, :, :Ho, :Wo].transpose(1, 0, 2, 3))


def _depthwise_sparse(x: np.ndarray, wf: np.ndarray, kernel, strides, dilations, out, dtype, store) -> None:
    """A depthwise convolution (one weight plane per channel, no padding) over its used taps only (`_used_taps`):
    per block of images, acc = sum over used taps of w[:, tap] * (the tap's strided view of x), computed in `dtype`
    (x converted as it is read; exact for any order within the caller's bound); each block goes to `store`."""
    N, C = x.shape[:2]
    n = len(kernel)
    wd = wf.reshape((C,) + (1,) * n + (-1,))
    taps = list(np.ndindex(*kernel))
    used = _used_taps(wf.reshape(C, 1, -1))
    images = max(1, (_IM2COL_BLOCK // 8) // max(1, C * math.prod(out)))
    acc = np.empty((min(images, N), C) + tuple(out), dtype=dtype)
    scratch = np.empty_like(acc) if len(used) > 1 else None
    for start in range(0, N, images):
        stop = min(N, start + images)
        windows = _window_view(x[start:stop], kernel, strides, dilations, out)
        block = acc[:stop - start]
        for i, k in enumerate(used):
            target = block if i == 0 else scratch[:stop - start]
            np.multiply(windows[(Ellipsis,) + taps[k]], wd[..., k], out=target, dtype=dtype, casting="unsafe")
            if i:
                block += target
        store(start, stop, block)


def _used_taps(weights: np.ndarray) -> List[int]:
    """The kernel taps (last axis of `weights`) that are nonzero in some channel, at least one: a tap whose weight
    is zero everywhere adds exact zeros, so it is left out (the stacked form of a Siracusa residual add is a
    depthwise conv whose tall kernel over stacked operand copies has 4 nonzero taps of 49)."""
    used = np.flatnonzero(np.any(weights.reshape(-1, weights.shape[-1]) != 0, axis=0)).tolist()
    return used or [0]


def _f32_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(a.astype(_F32, copy=False), b.astype(_F32, copy=False))


def pool_output_size(in_size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1,
                     ceil_mode: int = 0) -> int:
    """Pooling output length along one axis, as onnxruntime computes it at run time.

    In ceil mode the last window must start inside the input or its begin padding (onnxruntime drops a window that
    would start in the end padding; ONNX shape inference may not, so the two can disagree by one).
    """
    span = in_size + pad_begin + pad_end - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= in_size + pad_begin:
            out -= 1
    else:
        out = span // stride + 1
    return out


def _pool_geometry(op: Operation, x: np.ndarray):
    n = x.ndim - 2
    if n < 1:
        raise op_error(InterpretError, op, f"{op.name} needs an input of rank >= 3, got rank {x.ndim}")
    kernel = [int(k) for k in _required(op, "kernel_shape")]
    pads = _ints_attr(op, "pads", [0] * (2 * n))
    strides = _ints_attr(op, "strides", [1] * n)
    dilations = _ints_attr(op, "dilations", [1] * n) if "dilations" in op.opdef.attrs else [1] * n
    ceil_mode = int(op.attr("ceil_mode") or 0)
    if len(kernel) != n or len(pads) != 2 * n or len(strides) != n or len(dilations) != n:
        raise op_error(InterpretError, op, f"{op.name} attributes do not match {n} spatial axes (kernel_shape "
                                           f"{kernel}, pads {pads}, strides {strides})")
    out = [pool_output_size(x.shape[2 + i], kernel[i], strides[i], pads[i], pads[i + n], dilations[i], ceil_mode)
           for i in range(n)]
    if min(out) < 1:
        raise op_error(InterpretError, op, f"{op.name} kernel {kernel} does not fit the input {list(x.shape[2:])}")
    # the ceil-mode overhang beyond the end padding; its positions never count
    extra = [max(0, (out[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
                 - (x.shape[2 + i] + pads[i] + pads[i + n])) for i in range(n)]
    return kernel, pads, strides, dilations, out, extra


def _pool_max(op: Operation, x: np.ndarray, fill) -> np.ndarray:
    kernel, pads, strides, dilations, out, extra = _pool_geometry(op, x)
    n = len(kernel)
    xp = np.pad(x, _spatial_pad(pads, n, extra), constant_values=fill)
    windows = _window_view(xp, kernel, strides, dilations, out)
    return windows.max(axis=tuple(range(-n, 0)))


def _pool_sum(op: Operation, x: np.ndarray):
    """Window sums with zero padding, plus the geometry (for the divisor of an average)."""
    geometry = _pool_geometry(op, x)
    kernel, pads, strides, dilations, out, extra = geometry
    n = len(kernel)
    xp = np.pad(x, _spatial_pad(pads, n, extra))
    windows = _window_view(xp, kernel, strides, dilations, out)
    return windows.sum(axis=tuple(range(-n, 0)), dtype=x.dtype), geometry


def _pad_nd(x: np.ndarray, pads: Sequence[int], mode: str, value) -> np.ndarray:
    """ONNX Pad: pads = begins then ends for every axis; negative pads crop."""
    r = x.ndim
    if len(pads) != 2 * r:
        raise ValueError(f"pads {list(pads)} must have 2 x rank = {2 * r} entries")
    crop = tuple(slice(max(0, -pads[i]), x.shape[i] - max(0, -pads[i + r])) for i in range(r))
    x = x[crop]
    widths = [(max(0, pads[i]), max(0, pads[i + r])) for i in range(r)]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=value)
    if mode == "reflect":
        for i, (b, e) in enumerate(widths):
            if (b or e) and max(b, e) >= x.shape[i]:
                raise ValueError(f"reflect padding {max(b, e)} needs axis {i} longer than {x.shape[i]}")
    return np.pad(x, widths, mode=mode)


def _reshape_target(x: np.ndarray, shape: Sequence[int]) -> List[int]:
    """Resolve ONNX reshape codes: 0 copies the input dimension, -1 is inferred."""
    return [x.shape[i] if int(d) == 0 and i < x.ndim else int(d) for i, d in enumerate(shape)]


def _flatten(x: np.ndarray, axis: int, op: Operation) -> np.ndarray:
    a = int(axis)
    if not -x.ndim <= a <= x.ndim:
        raise op_error(InterpretError, op, f"axis {a} is out of range for rank {x.ndim}")
    if a < 0:
        a += x.ndim
    lead = int(np.prod(x.shape[:a], dtype=np.int64))
    return x.reshape(lead, int(np.prod(x.shape[a:], dtype=np.int64)))


def _squeeze(x: np.ndarray, op: Operation) -> np.ndarray:
    axes = op.attr("axes")
    if not axes:
        return np.squeeze(x)
    axes = tuple(_axis(a, x.ndim, op) for a in axes)
    for a in axes:
        if x.shape[a] != 1:
            raise op_error(InterpretError, op, f"cannot squeeze axis {a} of size {x.shape[a]}")
    return np.squeeze(x, axis=axes)


def _unsqueeze(x: np.ndarray, op: Operation) -> np.ndarray:
    axes = [int(a) for a in _required(op, "axes")]
    r = x.ndim + len(axes)
    return np.expand_dims(x, tuple(_axis(a, r, op) for a in axes))


def _transpose(x: np.ndarray, op: Operation) -> np.ndarray:
    perm = op.attr("perm")
    return np.transpose(x, [int(p) for p in perm] if perm else None)


def _concat(args: List[np.ndarray], op: Operation) -> np.ndarray:
    if not args:
        raise op_error(InterpretError, op, f"{op.name} needs at least one operand")
    return np.concatenate(args, axis=_axis(_required(op, "axis"), args[0].ndim, op))


def _reduce_axes(op: Operation, x: np.ndarray):
    axes = _axes(op, x.ndim)
    return tuple(axes) if axes else None  # empty axes reduce over everything (ONNX noop_with_empty_axes = 0)


# =====================================================================================================================
# qir
# =====================================================================================================================
@kernel("qir.input")
def _qir_input(op, args):
    return [args[0]]


@kernel("qir.output")
def _qir_output(op, args):
    return []


@kernel("qir.const")
def _qir_const(op, args):
    value = np.asarray(_required(op, "value"))
    type = op.results[0].type
    if value.shape != type.shape and value.size == type.size:
        value = value.reshape(type.shape)
    # a read-only runtime copy/view: nobody downstream may write into the module's constant
    value = _as_runtime(value, type).view()
    value.flags.writeable = False
    return [value]


# =====================================================================================================================
# quant
# =====================================================================================================================
def _quant_params(op: Operation, element, rank: int):
    if not isinstance(element, UniformQuantType):
        raise op_error(InterpretError, op, f"{op.name} needs a !quant.uniform type, got {element}")
    if element.is_per_axis and not -rank <= element.axis < rank:
        raise op_error(InterpretError, op, f"quantization axis {element.axis} is out of range for rank {rank}")
    scale = element.scales_for(rank).astype(_F32)
    zero_point = element.zero_points_for(rank)
    return element, scale, zero_point


@kernel("quant.qcast")
def _quant_qcast(op, args):
    x = args[0].astype(_F32, copy=False)
    qt, scale, zero_point = _quant_params(op, op.results[0].type.element, x.ndim)
    rounding = op.attr("rounding")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scaled = x / scale  # float32 division, as QuantizeLinear and the decomposed Div compute it
        if rounding == "round_add":
            q = np.rint(scaled) + zero_point.astype(_F32)
        elif rounding == "add_round":
            q = np.rint(scaled + zero_point.astype(_F32))
        else:
            raise op_error(InterpretError, op, f"unknown rounding '{rounding}'")
        q = np.nan_to_num(q, nan=0.0)
        q = np.clip(q, qt.storage_min, qt.storage_max)
    return [q.astype(_I64)]


@kernel("quant.dcast")
def _quant_dcast(op, args):
    q = args[0]
    _, scale, zero_point = _quant_params(op, op.operands[0].type.element, q.ndim)
    return [(q - zero_point).astype(_F32) * scale]


# =====================================================================================================================
# onnx (float32)
# =====================================================================================================================
@kernel("onnx.Conv")
def _onnx_conv(op, args):
    x, w = args[0], args[1]
    pads, strides, dilations = _conv_geometry(op, x, w.shape[2:])
    y = conv_nd(x, w, pads, strides, dilations, int(op.attr("group")), _f32_matmul)
    if len(args) > 2:
        y = y + args[2].reshape((-1,) + (1,) * (x.ndim - 2))
    return [y]


@kernel("onnx.Gemm")
def _onnx_gemm(op, args):
    a, b = args[0], args[1]
    if op.attr("transA"):
        a = a.T
    if op.attr("transB"):
        b = b.T
    y = np.matmul(a, b)
    alpha, beta = _F32(op.attr("alpha")), _F32(op.attr("beta"))
    if alpha != 1:
        y = alpha * y
    if len(args) > 2:
        y = y + (beta * args[2] if beta != 1 else args[2])
    return [y]


@kernel("onnx.MatMul")
def _onnx_matmul(op, args):
    return [np.matmul(args[0], args[1])]


def _binary(fn):
    def k(op, args):
        with np.errstate(all="ignore"):
            return [fn(args[0], args[1])]

    return k


kernel("onnx.Add")(_binary(np.add))
kernel("onnx.Sub")(_binary(np.subtract))
kernel("onnx.Mul")(_binary(np.multiply))
kernel("onnx.Div")(_binary(np.divide))


@kernel("onnx.Relu")
def _onnx_relu(op, args):
    return [np.maximum(args[0], _F32(0))]


@kernel("onnx.Clip")
def _onnx_clip(op, args):
    return [np.minimum(np.maximum(args[0], _F32(op.attr("min"))), _F32(op.attr("max")))]


def _hard_sigmoid(x: np.ndarray, alpha, beta) -> np.ndarray:
    """onnxruntime's float32 HardSigmoid: (alpha * x + beta) clamped to [0, 1]."""
    return np.minimum(np.maximum(x * _F32(alpha) + _F32(beta), _F32(0)), _F32(1))


@kernel("onnx.HardSigmoid")
def _onnx_hard_sigmoid(op, args):
    return [_hard_sigmoid(args[0], op.attr("alpha"), op.attr("beta"))]


@kernel("onnx.HardSwish")
def _onnx_hard_swish(op, args):
    return [args[0] * _hard_sigmoid(args[0], 1.0 / 6.0, 0.5)]


@kernel("onnx.Round")
def _onnx_round(op, args):
    return [np.rint(args[0])]


# MLAS's logistic: Eigen's rational approximation on the input clamped to [-18, 18], output clamped to [0, 1];
# the x86 kernels evaluate both Horner chains with fused multiply-adds
_LOGISTIC_ALPHA = [_F32(c) for c in (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
                                     8.51377133304701e-03, 2.48287947061529e-01)]
_LOGISTIC_BETA = [_F32(c) for c in (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06,
                                    1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01)]


def _fma32(a: np.ndarray, b, c) -> np.ndarray:
    """float32 a*b + c with one rounding (the float64 product of two float32 values is exact)."""
    return (a.astype(np.float64) * np.float64(b) + np.float64(c)).astype(_F32)


@kernel("onnx.Sigmoid")
def _onnx_sigmoid(op, args):
    x = np.clip(args[0], _F32(-18), _F32(18))
    x2 = x * x
    p = _fma32(x2, _LOGISTIC_ALPHA[0], _LOGISTIC_ALPHA[1])
    for c in _LOGISTIC_ALPHA[2:]:
        p = _fma32(p, x2, c)
    p = p * x
    q = _fma32(x2, _LOGISTIC_BETA[0], _LOGISTIC_BETA[1])
    for c in _LOGISTIC_BETA[2:]:
        q = _fma32(q, x2, c)
    return [np.clip(p / q + _F32(0.5), _F32(0), _F32(1))]


@kernel("onnx.MaxPool")
def _onnx_maxpool(op, args):
    return [_pool_max(op, args[0], -np.inf)]


# ----- average pooling and means, bit-exact with onnxruntime's CPU provider ---------------------------------------
# Float addition is not associative, so matching onnxruntime bit for bit means adding in its order.  A quantizer
# after an average often has a scale that puts one-ulp differences on rounding ties (in Brevitas' TruncAvgPool the
# next scale is exactly 16/9 of the input scale), so "close" is not enough.
#
# onnxruntime 1.32 computes float AveragePool (opset 7..18; qir's op has no dilations) with MLAS's MlasPool, which
# picks one of three kernels per call:
# - global: kernel == input spatial shape, all strides 1, no padding.  Four float lanes accumulate the flattened
#   window (lane j takes elements j, j+4, ...), fold as (l0 + l2) + (l1 + l3), then add the < 4 leftover elements
#   one by one.  GlobalAveragePool always takes this kernel.
# - vector: >= 2 spatial axes, last stride <= 2, every kernel extent <= 32, and the padded last axis fits MLAS's
#   2045-float reduction buffer.  It sums each column over the window's rows (planes, then rows) in order, then
#   those column sums across the window's width in order.
# - generic: anything else; one running sum over the window's taps in row-major order.
# Padding adds nothing.  The sum is divided (a float32 division, not a reciprocal multiplication) by the window's
# input-only size (count_include_pad = 0) or by the full kernel size (count_include_pad = 1).
# ceil_mode = 1 together with count_include_pad = 1 bypasses MLAS (onnxruntime PR #29629): a reference loop sums in
# row-major order and divides by the window clamped to input + end padding, so the ceil-mode overhang never counts.
# Adding an exact 0.0 for a padded tap never changes a float32 sum (except the sign of a zero sum), so every order
# below runs on a zero-padded array, vectorised over batch, channels and output positions (a loop over taps only).
_MLAS_POOL_REDUCTION_BUFFER = 2048 - 3  # MLAS_POOL_REDUCTION_BUFFER_STACK minus its vector over-read padding
_MLAS_POOL_MAX_VECTOR_KERNEL = 32


def _strided_taps(xp: np.ndarray, first: Sequence[int], strides: Sequence[int], out: Sequence[int]) -> np.ndarray:
    """The view xp[..., first[i] :: strides[i] (out[i] elements), ...] over the trailing len(first) axes."""
    index = tuple(slice(k, k + (out[i] - 1) * strides[i] + 1, strides[i]) for i, k in enumerate(first))
    return xp[(Ellipsis,) + index]


def _sequential_sum(terms: Iterable[np.ndarray]) -> np.ndarray:
    """terms[0] + terms[1] + ... added left to right in float32."""
    total = None
    for term in terms:
        total = term if total is None else total + term
    return total


def _mlas_global_sum(x: np.ndarray) -> np.ndarray:
    """Per [N, C] plane, the sum of all spatial elements in MlasPoolGlobalKernel's order; shape [N, C]."""
    flat = x.reshape(x.shape[:2] + (-1,))
    size = flat.shape[-1]
    whole = size // 4 * 4
    if whole:
        # np.add.accumulate adds strictly left to right: lane j's running sum of elements j, j+4, ...
        lanes = np.add.accumulate(flat[..., :whole].reshape(x.shape[:2] + (whole // 4, 4)), axis=2,
                                  dtype=_F32)[:, :, -1]
        total = (lanes[..., 0] + lanes[..., 2]) + (lanes[..., 1] + lanes[..., 3])
    else:
        total = np.zeros(x.shape[:2], dtype=_F32)
    return _sequential_sum([total] + [flat[..., i] for i in range(whole, size)])


def _mlas_average_pool(x: np.ndarray, kernel: Sequence[int], pads: Sequence[int], strides: Sequence[int],
                       out: Sequence[int], extra: Sequence[int], count_include_pad: bool,
                       ceil_mode: bool) -> np.ndarray:
    """onnxruntime's float AveragePool (no dilations): see the comment above for the three orders and divisors."""
    n = len(kernel)
    spatial = x.shape[2:]
    reference = ceil_mode and count_include_pad
    if not reference and list(kernel) == list(spatial) and all(s == 1 for s in strides) and not any(pads):
        return (_mlas_global_sum(x) / _F32(int(np.prod(spatial)))).reshape(x.shape[:2] + (1,) * n)
    vector = (not reference and n >= 2 and strides[-1] <= 2 and max(kernel) <= _MLAS_POOL_MAX_VECTOR_KERNEL
              and _MLAS_POOL_REDUCTION_BUFFER - pads[n - 1] - pads[2 * n - 1] >= spatial[-1])
    xp = np.pad(x, _spatial_pad(pads, n, extra))
    if vector:
        # column sums over the window's leading axes at every padded column, then across the last axis
        lead = n - 1
        columns = _sequential_sum(
            _strided_taps(xp, tap + (0,), tuple(strides[:lead]) + (1,), tuple(out[:lead]) + (xp.shape[-1],))
            for tap in np.ndindex(*kernel[:lead]))
        sums = _sequential_sum(_strided_taps(columns, (k,), strides[lead:], out[lead:]) for k in range(kernel[-1]))
    else:
        sums = _sequential_sum(_strided_taps(xp, tap, strides, out) for tap in np.ndindex(*kernel))
    # the divisor, a product of per-axis window extents
    divisor = np.ones((1,) * n, dtype=_I64)
    for i in range(n):
        start = np.arange(out[i], dtype=_I64) * strides[i] - pads[i]
        if reference:
            extent = np.minimum(start + kernel[i], spatial[i] + pads[i + n]) - start
        elif count_include_pad:
            extent = np.full(out[i], kernel[i], dtype=_I64)
        else:
            extent = np.minimum(start + kernel[i], spatial[i]) - np.maximum(start, 0)
        divisor = divisor * extent.reshape((1,) * i + (-1,) + (1,) * (n - 1 - i))
    return sums / divisor.astype(_F32)


def _eigen_row_sums(rows: np.ndarray) -> np.ndarray:
    """Sum of each row of a C-contiguous float32 [R, K] array the way Eigen's vectorised sum() does with 4-float SSE
    packets (onnxruntime's ReduceSum/ReduceMean over trailing axes), assuming the array starts 16-byte aligned.

    Eigen starts at the row's first 16-byte aligned element (so the order depends on where the row starts), runs
    two packet accumulators over pairs of packets, adds them and one last odd packet, folds the packet as
    (p0 + p2) + (p1 + p3), then adds the unaligned head and the < 4 element tail one by one.  Rows shorter than a
    packet after the head are summed left to right."""
    count, size = rows.shape
    sums = np.empty(count, dtype=_F32)
    phase = (np.arange(count, dtype=_I64) * size) % 4
    for offset in np.unique(phase):
        selected = phase == offset
        block = rows[selected]
        head = min(int(-offset % 4), size)
        packets = (size - head) // 4
        if packets == 0:
            sums[selected] = _sequential_sum(block[:, i] for i in range(size))
            continue
        body = block[:, head:head + 4 * packets].reshape(-1, packets, 4)
        acc = body[:, 0]
        if packets > 1:
            pairs = packets // 2 * 2
            acc = (np.add.accumulate(body[:, 0:pairs:2], axis=1, dtype=_F32)[:, -1]
                   + np.add.accumulate(body[:, 1:pairs:2], axis=1, dtype=_F32)[:, -1])
            if packets > pairs:
                acc = acc + body[:, pairs]
        total = (acc[:, 0] + acc[:, 2]) + (acc[:, 1] + acc[:, 3])
        sums[selected] = _sequential_sum([total] + [block[:, i] for i in range(head)]
                                         + [block[:, i] for i in range(head + 4 * packets, size)])
    return sums


def _mlas_ones_gemv(blocks: np.ndarray) -> np.ndarray:
    """ones[1, R] @ block[R, K] for each block of a float32 [B, R, K] array, in the order MLAS's SGEMM adds the rows
    (found against onnxruntime 1.32): partial sums of 4 rows, then of 2, then 1 left over, each started afresh and
    added to the running result in turn (a multiply by 1.0 is exact, so fused multiply-adds change nothing)."""
    count = blocks.shape[1]
    parts, i = [], 0
    for width in (4,) * (count // 4) + ((2,) if count % 4 >= 2 else ()) + ((1,) if count % 2 else ()):
        parts.append(_sequential_sum(blocks[:, j] for j in range(i, i + width)))
        i += width
    return _sequential_sum(parts)


def _ort_mean(x: np.ndarray, axes: Sequence[int], keepdims: bool) -> np.ndarray:
    """onnxruntime's float ReduceMean.  onnxruntime drops size-1 axes and merges neighbouring axes of one kind
    (kept K / reduced R) before choosing a fast path: KR sums each row with Eigen (_eigen_row_sums), RK adds the
    reduced rows one after another, KRK multiplies a ones vector into each [R, K] block with MLAS's SGEMM
    (_mlas_ones_gemv), RKR adds the Eigen sums of the inner runs outer run by outer run; each then divides by the
    reduced count.  Other patterns (more alternations of kept and reduced axes) fall back to numpy's float32 mean,
    whose order can differ from onnxruntime's by an ulp."""
    reduced = set(axes)
    out_shape = tuple(1 if a in reduced else d for a, d in enumerate(x.shape) if keepdims or a not in reduced)
    kinds = []
    for a, d in enumerate(x.shape):
        if d == 1:
            continue
        kind = "R" if a in reduced else "K"
        if not kinds or kinds[-1][0] != kind:
            kinds.append([kind, 1])
        kinds[-1][1] *= d
    pattern = "".join(k for k, _ in kinds)
    x = np.ascontiguousarray(x, dtype=_F32)
    count = int(np.prod([d for a, d in enumerate(x.shape) if a in reduced], dtype=_I64))
    if x.size == 0 or pattern not in ("", "K", "R", "KR", "RK", "KRK", "RKR"):
        with np.errstate(all="ignore"):
            return np.mean(x, axis=tuple(axes), keepdims=keepdims, dtype=_F32)
    if pattern == "RK":
        rows = x.reshape(count, -1)
        sums = _sequential_sum(rows[i] for i in range(count))
    elif pattern == "KRK":
        sums = _mlas_ones_gemv(x.reshape(kinds[0][1], count, -1))
    elif pattern == "RKR":
        # per kept middle index, 0 + the Eigen sum of each inner run, outer runs in order
        outer, inner = kinds[0][1], kinds[2][1]
        runs = _eigen_row_sums(x.reshape(-1, inner)).reshape(outer, -1)
        sums = _sequential_sum([np.zeros(runs.shape[1], dtype=_F32)] + [runs[i] for i in range(outer)])
    else:  # KR, or nothing left to keep or to reduce
        sums = _eigen_row_sums(x.reshape(-1, count))
    return (sums / _F32(count)).reshape(out_shape)


@kernel("onnx.AveragePool")
def _onnx_averagepool(op, args):
    x = args[0].astype(_F32, copy=False)
    kernel, pads, strides, _, out, extra = _pool_geometry(op, x)
    return [_mlas_average_pool(x, kernel, pads, strides, out, extra, bool(op.attr("count_include_pad")),
                               bool(op.attr("ceil_mode") or 0))]


@kernel("onnx.GlobalAveragePool")
def _onnx_global_average_pool(op, args):
    x = args[0].astype(_F32, copy=False)
    if x.ndim < 3:
        raise op_error(InterpretError, op, f"{op.name} needs an input of rank >= 3, got rank {x.ndim}")
    size = int(np.prod(x.shape[2:], dtype=_I64))
    return [(_mlas_global_sum(x) / _F32(size)).reshape(x.shape[:2] + (1,) * (x.ndim - 2))]


@kernel("onnx.GlobalMaxPool")
def _onnx_global_max_pool(op, args):
    x = args[0]
    return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]


@kernel("onnx.ReduceMean")
def _onnx_reduce_mean(op, args):
    x = args[0]
    axes = _reduce_axes(op, x)
    return [_ort_mean(x, range(x.ndim) if axes is None else axes, bool(op.attr("keepdims")))]


@kernel("onnx.ReduceSum")
def _onnx_reduce_sum(op, args):
    x = args[0]
    return [np.sum(x, axis=_reduce_axes(op, x), keepdims=bool(op.attr("keepdims")), dtype=_F32)]


@kernel("onnx.Flatten")
def _onnx_flatten(op, args):
    return [_flatten(args[0], op.attr("axis"), op)]


@kernel("onnx.Reshape")
def _onnx_reshape(op, args):
    return [args[0].reshape(_reshape_target(args[0], _required(op, "shape")))]


@kernel("onnx.Squeeze")
def _onnx_squeeze(op, args):
    return [_squeeze(args[0], op)]


@kernel("onnx.Unsqueeze")
def _onnx_unsqueeze(op, args):
    return [_unsqueeze(args[0], op)]


@kernel("onnx.Transpose")
def _onnx_transpose(op, args):
    return [_transpose(args[0], op)]


@kernel("onnx.Concat")
def _onnx_concat(op, args):
    return [_concat(args, op)]


@kernel("onnx.Pad")
def _onnx_pad(op, args):
    return [_pad_nd(args[0], [int(p) for p in _required(op, "pads")], op.attr("mode"), _F32(op.attr("value")))]


@kernel("onnx.BatchNormalization")
def _onnx_batch_norm(op, args):
    x, scale, bias, mean, var = args
    # onnxruntime folds the statistics into one scale and shift, then computes x * scale' + shift'
    shape = (-1,) + (1,) * (x.ndim - 2)
    inv_std = _F32(1) / np.sqrt(var + _F32(op.attr("epsilon")))
    new_scale = scale * inv_std
    new_bias = bias - mean * new_scale
    return [x * new_scale.reshape(shape) + new_bias.reshape(shape)]


@kernel("onnx.Softmax")
def _onnx_softmax(op, args):
    x = args[0]
    axis = _axis(op.attr("axis"), x.ndim, op)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


# =====================================================================================================================
# int (exact int64)
# =====================================================================================================================
def _conv_plan(op: Operation, args: List[np.ndarray]):
    """The arguments of int_conv_nd for an int.conv, and the bound on |its results| the choice rests on:
    (x, w, pads, strides, dilations, group, dtype, bias, result dtype, bound)."""
    x, w = args[0], args[1]
    pads, strides, dilations = _conv_geometry(op, x, w.shape[2:])
    group = int(op.attr("group"))
    # every partial sum is bounded by max|x| * max|w| * (weights per output); up to 2^24 / 2^53 float32 / float64
    # BLAS is exact, and converting x and w (not the 9x larger im2col matrix) keeps the whole conv on that route
    x_type = op.operands[0].type if op.operands[0].owner.name != "qir.const" else TensorType(x.shape, ScalarType("i64"))
    sums = _partial_sum_bound(x_type, x, w.reshape(w.shape[0], -1), _weights_row_abs_sum(op, w))
    dtype = exact_dtype(sums)
    bias = args[2] if len(args) > 2 else None
    bound = sums + (_abs_max(bias) if bias is not None else 0)
    # an int32 result (half the memory traffic of int64) where the sums provably fit it, so that no value wraps
    result = np.dtype(np.int32) if _CHECK_OVERFLOW.get() and bound <= _I32_MAX else np.dtype(_I64)
    return x, w, pads, strides, dilations, group, dtype, bias, result, bound


@kernel("int.conv")
def _int_conv(op, args):
    x, w, pads, strides, dilations, group, dtype, bias, result, _ = _conv_plan(op, args)
    return [int_conv_nd(x, w, pads, strides, dilations, group, dtype, bias=bias, int_result=result)]


def _conv_requant(conv: Operation, requant: Operation, args: List[np.ndarray]) -> Optional[np.ndarray]:
    """The result of `requant` (an int.requant_shift whose operand is the result of the int.conv `conv`, its only
    reader) computed from the conv's operands `args` with the requant done block by block inside the conv
    (`_RequantStore`), or None where the pair must run as two kernels: with the overflow checks on, when the conv's
    result is not provably inside its type (the runner must scan it), or when the requant's parameters would reshape
    the result or give it a batch extent of their own."""
    x, w, pads, strides, dilations, group, dtype, bias, result, bound = _conv_plan(conv, args)
    if _CHECK_OVERFLOW.get() and not _within_type(conv, conv.results[0].type, args):
        return None
    spec = _RequantSpec(requant)
    shape = tuple(conv.results[0].type.shape)
    if len(shape) < 3 or np.broadcast_shapes(shape, spec.mul.shape, spec.offset.shape) != shape or any(
            p.ndim == len(shape) and p.shape[0] != 1 for p in (spec.mul, spec.offset)):
        return None
    if not _CHECK_OVERFLOW.get():
        bound = np.iinfo(_I64).max  # unchecked values: nothing is proven, as in the two kernels
    store = _RequantStore(requant, shape, result, bias, bound)
    return int_conv_nd(x, w, pads, strides, dilations, group, dtype, store=store)


def _params_fit(spec: "_RequantSpec", shape: tuple) -> bool:
    """Whether a requant's parameters broadcast to `shape` without growing it and without a batch extent."""
    return np.broadcast_shapes(shape, spec.mul.shape, spec.offset.shape) == shape and not any(
        p.ndim == len(shape) and p.shape[0] != 1 for p in (spec.mul, spec.offset))


def _sum_requant(root: Operation, add: Operation, leaves: Dict[Value, Operation],
                 values: Dict[Value, np.ndarray]) -> Optional[np.ndarray]:
    """The result of the int.requant_shift `root` of the int.add / int.sub `add`, whose operands in `leaves` are the
    results of single-use int.requant_shifts (run here from their own operands), computed in cache-sized blocks of
    images: each leaf requantized into an int32 (int64) scratch, the sum, the final requant into the result.  The
    kernels' values and checks: every requant picks int32 where its input's dtype or bound (for the final one, the
    operands' checked ranges) or else the block's extremes prove x*mul + offset fits int32, else int64 with the
    scan; a scan that finds an overflow makes this return None (the caller then runs the ops apart, which report it
    at the op that overflows).  None too where blocking does not apply (shapes that broadcast, parameters with a
    batch extent) or, with the checks on, where the sum is not provably inside its type."""
    check = _CHECK_OVERFLOW.get()
    shape = tuple(root.results[0].type.shape)
    if not shape or tuple(add.results[0].type.shape) != shape:
        return None
    if check and not _within_type(add, add.results[0].type, []):
        return None
    root_spec = _RequantSpec(root)
    if not _params_fit(root_spec, shape):
        return None
    sources, seen = [], []
    for v in add.operands:
        leaf = leaves.get(v)
        if leaf is None:
            a = values[v]
            if a.shape != shape:
                return None
            sources.append((None, a, False))
            seen.append(a[:0])
            continue
        spec = _RequantSpec(leaf)
        x = values[leaf.operands[0]]
        if x.shape != shape or not _params_fit(spec, shape):
            return None
        if check and not _within_type(leaf, leaf.results[0].type, []):
            return None
        small = x.dtype.kind in "iu" and x.dtype.itemsize <= 4
        sources.append((spec, x, small and x.size and spec.fits_int32(_known_abs_bound(leaf, x))))
        seen.append(np.empty(0, dtype=spec.out_dtype()))  # the dtype the add would have been given
    sign = 1 if add.name == "int.add" else -1
    sum_dtype = _sum_dtype(add, seen, sign)
    root_static = False
    if check and sum_dtype.itemsize <= 4:
        lo, hi = _sum_range(add)
        root_static = root_spec.fits_int32(max(-lo, hi))
    y = np.empty(shape, dtype=root_spec.out_dtype())
    per_image = max(1, math.prod(shape[1:]))
    step = max(1, _FUSED_BLOCK // per_image)
    table = _sum_table(sources, root_spec, sign, check) if y.size >= _SUM_TABLE_MIN else None
    if table is not None:
        # each result is the table's entry at the operands' two bytes: three passes instead of a dozen
        index = np.empty(min(step, shape[0]) * per_image, dtype=np.uint16)
        (_, a, _), (_, b, _) = sources
        for n0 in range(0, shape[0], step):
            block = slice(n0, n0 + step)
            out = y[block].reshape(-1)
            k = index[:out.size]
            np.left_shift(a[block].view(np.uint8).reshape(-1), 8, out=k, dtype=np.uint16)
            np.bitwise_or(k, b[block].view(np.uint8).reshape(-1), out=k)
            np.take(table, k, out=out, mode="clip")  # every index is in range: "clip" only spares numpy a buffer
        return y
    combine = np.add if sign > 0 else np.subtract
    for n0 in range(0, shape[0], step):
        block = slice(n0, n0 + step)
        parts = []
        for spec, x, static in sources:
            xb = x[block]
            if spec is None:
                parts.append(xb)
                continue
            work = _I64
            if static or (xb.dtype.kind in "iu" and xb.dtype.itemsize <= 4 and xb.size
                          and spec.fits_int32(max(-int(xb.min()), int(xb.max())))):
                work = np.int32
            t = np.empty(xb.shape, dtype=work)
            extremes = spec.apply(xb, t, None, check and work == _I64)
            if extremes is not None and (extremes[0] < _I32_MIN or extremes[1] > _I32_MAX):
                return None
            parts.append(t)  # the leaf's result, lo..hi, in the work dtype
        total = combine(parts[0], parts[1], dtype=sum_dtype)
        work = _I64
        if total.dtype.itemsize <= 4 and (root_static or (total.size and root_spec.fits_int32(
                max(-int(total.min()), int(total.max()))))):
            work = np.int32
        t = total if total.dtype == work else np.empty(total.shape, dtype=work)
        extremes = root_spec.apply(total, t, y[block], check and work == _I64)
        if extremes is not None and (extremes[0] < _I32_MIN or extremes[1] > _I32_MAX):
            return None
    return y


def _sum_table(sources, root_spec: "_RequantSpec", sign: int, check: bool) -> Optional[np.ndarray]:
    """`_sum_requant`'s whole chain as a table of its 65,536 results, where both operands are held in one byte each
    (int8 / uint8, e.g. requantized activations) and every requant has one multiplier and one offset: entry
    (byte of a) * 256 + (byte of b) is root(leaf_a(a) + sign * leaf_b(b)), computed by the kernels' formula in
    int64 (a source without a leaf requant adds its value).  None where that does not apply, or where with the
    checks on some entry's x*mul + offset leaves int32 (the blocks then find out whether actual values do)."""
    if len(sources) != 2 or any(p.size != 1 for p in (root_spec.mul, root_spec.offset)):
        return None
    maps = []
    for spec, x, _ in sources:
        if x.dtype.kind not in "iu" or x.dtype.itemsize != 1:
            return None
        values = np.arange(256, dtype=np.uint8).view(x.dtype).astype(_I64)  # the value of each byte
        if spec is not None:
            if spec.mul.size != 1 or spec.offset.size != 1:
                return None
            values = _requant_values(spec, values, check)
            if values is None:
                return None
        maps.append(values)
    sums = (maps[0][:, None] + sign * maps[1][None, :]).reshape(-1)
    low, high = int(sums.min()), int(sums.max())
    # the final requant of each possible sum (a few hundred), then looked up per pair; its x*mul + offset is
    # linear in the sum, so its extremes, the ones checked, are those of sums that occur
    results = _requant_values(root_spec, np.arange(low, high + 1, dtype=_I64), check)
    return None if results is None else np.take(results.astype(root_spec.out_dtype()), sums - low)


def _requant_values(spec: "_RequantSpec", x: np.ndarray, check: bool) -> Optional[np.ndarray]:
    """The requant of the int64 values x, as `_RequantSpec.apply` computes it with one multiplier and offset (its
    arithmetic shift is this floor division); None when `check` and some x*mul + offset leaves int32."""
    t = x * spec.mul.astype(_I64).reshape(()) + spec.offset.astype(_I64).reshape(())
    if check and (int(t.min()) < _I32_MIN or int(t.max()) > _I32_MAX):
        return None
    return np.clip(np.floor_divide(t, spec.div), spec.lo, spec.hi)


@kernel("int.gemm")
def _int_gemm(op, args):
    a, b = args[0], args[1]
    if op.attr("transA"):
        a = a.T
    if op.attr("transB"):
        b = b.T
    y = exact_int_matmul(a, b)
    if len(args) > 2:
        y = y + args[2]
    return [y]


@kernel("int.matmul")
def _int_matmul(op, args):
    return [exact_int_matmul(args[0], args[1])]


def _sum_dtype(op: Operation, args: List[np.ndarray], sign: int) -> np.dtype:
    """The dtype in which a + sign*b is exact and that the runner keeps for the result: int32 when the operands'
    declared ranges (which the runner has checked) bound the result inside int32 and int32 holds the result's type;
    int64 otherwise (and always without the overflow checks, when values may lie outside their types)."""
    if not _CHECK_OVERFLOW.get() or any(a.dtype.kind not in "iu" or a.dtype.itemsize > 4 for a in args):
        return np.dtype(_I64)
    (a_lo, a_hi), (b_lo, b_hi) = (_type_range(v.type) for v in op.operands[:2])
    lo, hi = (a_lo + b_lo, a_hi + b_hi) if sign > 0 else (a_lo - b_hi, a_hi - b_lo)
    result = op.results[0].type
    if _I32_MIN <= lo and hi <= _I32_MAX and not result.is_float and _holds(np.dtype(np.int32), result.element):
        return np.dtype(np.int32)
    return np.dtype(_I64)


@kernel("int.add")
def _int_add(op, args):
    return [np.add(args[0], args[1], dtype=_sum_dtype(op, args, 1))]


@kernel("int.sub")
def _int_sub(op, args):
    return [np.subtract(args[0], args[1], dtype=_sum_dtype(op, args, -1))]


@kernel("int.mul")
def _int_mul(op, args):
    return [np.multiply(args[0], args[1], dtype=_I64)]


@kernel("int.clip")
def _int_clip(op, args):
    x = args[0]
    lo, hi = int(_required(op, "min")), int(_required(op, "max"))
    if x.dtype != _I64 and not (np.iinfo(x.dtype).min <= lo and hi <= np.iinfo(x.dtype).max):
        x = x.astype(_I64)
    return [np.clip(x, lo, hi)]


def requant_bounds(signed: bool, n_levels: int):
    """Deeploy RequantShift's output range: -n/2..n/2-1 if signed, else 0..n-1."""
    return (-(n_levels // 2), n_levels // 2 - 1) if signed else (0, n_levels - 1)


def _known_abs_bound(op: Operation, x: np.ndarray) -> int:
    """A bound on max|x| for the first operand x of `op`, known without reading x: its dtype's, and, when the
    overflow checks are on and x is the result of an `int.conv` with constant weights and bias, max|conv input| (its
    checked type's range) times the largest row sum of |w| plus max|bias|, i.e. the bound `_int_conv` computed."""
    bound = max(-_int_limits(x.dtype)[0], _int_limits(x.dtype)[1])
    conv = op.operands[0].owner
    if not _CHECK_OVERFLOW.get() or conv.name != "int.conv" or len(conv.operands) < 2:
        return bound
    return min(bound, _conv_static_bound(conv))


def _conv_static_bound(conv: Operation) -> int:
    """max|conv input| (its checked type's range) times the largest row sum of |w| plus max|bias| for an int.conv
    with constant weights and bias (a bound on |every result| when the overflow checks are on), else int64's max."""
    consts = [v.owner for v in conv.operands[1:]]
    x_type = conv.operands[0].type
    if x_type.is_float or conv.operands[0].owner.name == "qir.const" or any(c.name != "qir.const" for c in consts):
        return np.iinfo(_I64).max
    element = x_type.element
    static = max(abs(int(element.min)), abs(int(element.max)))
    w = consts[0].attrs["value"]
    bias = _abs_max(np.asarray(consts[1].attrs["value"])) if len(consts) > 1 else 0
    return static * _weights_row_abs_sum(conv, w) + bias


class _RequantSpec:
    """An int.requant_shift's parameters, read and checked once: y = clip(floor((x*mul + add + div//2) / div), lo, hi)
    with lo..hi from `signed` and `n_levels` (Deeploy's RequantShift).  `bias` (fused conv, see `_RequantStore`)
    folds a per-channel bias b of x in: (x + b)*mul + offset = x*mul + (b*mul + offset)."""

    def __init__(self, op: Operation, bias: Optional[np.ndarray] = None):
        self.op = op
        self.mul = np.asarray(_required(op, "mul")).astype(_I64)
        add = np.asarray(_required(op, "add")).astype(_I64)
        self.div = int(_required(op, "div"))
        if self.div < 1:
            raise op_error(InterpretError, op, f"requant_shift needs div >= 1, got {self.div}")
        self.lo, self.hi = requant_bounds(bool(op.attr("signed")), int(op.attr("n_levels")))
        self.offset = add + self.div // 2
        self.scale = _abs_max(self.mul)
        self.plain_extra = _abs_max(self.offset)  # max|offset| before a bias is folded in
        if bias is not None:
            self.offset = self.offset + bias * self.mul
        self.extra = self.plain_extra if bias is None else _abs_max(self.offset)
        # an arithmetic shift is floor division by 2^k
        self.shift = self.div.bit_length() - 1 if self.div & (self.div - 1) == 0 else None
        self._params: Dict[tuple, tuple] = {}

    def fits_int32(self, bound: int) -> bool:
        """Whether |x| <= bound proves that x*mul, and t = x*mul + offset, fit int32: then int32 arithmetic (twice
        the SIMD width of int64) is exact and nothing needs the overflow scan."""
        return bound * self.scale + self.extra <= _I32_MAX

    def params(self, dtype: np.dtype, shape: tuple) -> tuple:
        """mul and offset in `dtype`: numpy scalars when they are one value, else materialized (numpy's integer
        loops take an operand broadcast along the inner axes, a per-channel parameter, at a third of the speed of a
        contiguous one, but one broadcast along the outermost axis only at full speed): for one image of `shape`
        when an image is large enough for numpy's inner loops, else for the whole block, kept for the op's largest
        block (a smaller block of the same trailing shape takes their head)."""
        if shape and math.prod(shape[1:]) >= 2048 and all(
                p.ndim < len(shape) or p.shape[0] == 1 for p in (self.mul, self.offset)):
            key = (np.dtype(dtype), tuple(shape[1:]))
            cached = self._params.get(key)
            if cached is None:
                cached = self._params[key] = (0,) + tuple(
                    p.astype(dtype).reshape(())[()] if p.size == 1 else
                    np.ascontiguousarray(np.broadcast_to(p.astype(dtype), (1,) + tuple(shape[1:])))
                    for p in (self.mul, self.offset))
            return cached[1:]
        if not shape or math.prod(shape) > 2 * max(_REQUANT_BLOCK, _FUSED_BLOCK):  # unblocked large x
            key = (np.dtype(dtype), None)
            if key not in self._params:
                self._params[key] = (0, self.mul.astype(dtype), self.offset.astype(dtype))
            return self._params[key][1:]
        key = (np.dtype(dtype), tuple(shape[1:]))
        cached = self._params.get(key)
        if cached is None or cached[0] < shape[0]:
            made = []
            for p in (self.mul, self.offset):
                if p.size == 1:
                    made.append(p.astype(dtype).reshape(())[()])
                else:
                    made.append(np.ascontiguousarray(np.broadcast_to(p.astype(dtype), shape)))
            cached = self._params[key] = (shape[0], made[0], made[1])
        _, mul, offset = cached
        if shape[0] != cached[0]:
            mul = mul if mul.ndim == 0 else mul[:shape[0]]
            offset = offset if offset.ndim == 0 else offset[:shape[0]]
        return mul, offset

    def apply(self, x: np.ndarray, t: np.ndarray, out: Optional[np.ndarray], verify: bool):
        """out = requant(x) through the scratch t (out's shape, the work dtype; t may be x itself, which is then
        overwritten; with out None the result stays in t); returns t's (min, max) before the division when
        `verify`, else None.  x broadcasts to out along its batch axis only when the parameters have no batch
        extent of their own (the callers' blocks)."""
        mul, offset = self.params(t.dtype, t.shape)
        if t is not x:
            if x.dtype == t.dtype:
                np.multiply(x, mul, out=t)
            else:  # widen into the scratch first: a mixed-dtype multiply goes through numpy's slow casting buffers
                np.copyto(t, x)
                t *= mul
        else:
            t *= mul
        t += offset
        extremes = (int(t.min()), int(t.max())) if verify and t.size else None
        if self.shift is not None:
            np.right_shift(t, self.shift, out=t)
        else:
            np.floor_divide(t, self.div, out=t)
        # clip in place and narrow in a second pass: one clip into the narrow dtype goes through casting buffers
        _clip(t, self.lo, self.hi, out=t)
        if out is not None:
            np.copyto(out, t, casting="unsafe")  # lo..hi fits the out dtype: exact
        return extremes

    def overflow(self, tmin: int, tmax: int) -> None:
        """Raise the located int32-overflow error if the scanned t left int32."""
        if tmin < _I32_MIN or tmax > _I32_MAX:
            reach, limit = (tmax, _I32_MAX) if tmax > _I32_MAX else (tmin, _I32_MIN)
            raise op_error(OverflowError_, self.op, f"int32 overflow in requant_shift: x*mul + add + div/2 reaches "
                                                    f"{reach} (limit {limit})")

    def out_dtype(self) -> np.dtype:
        # the result is clipped to lo..hi: held in the narrowest dtype for that where the runner keeps narrow arrays
        return narrowest_int(self.lo, self.hi) if _CHECK_OVERFLOW.get() else np.dtype(_I64)


@kernel("int.requant_shift")
def _int_requant_shift(op, args):
    x = args[0]
    spec = _RequantSpec(op)
    shape = np.broadcast_shapes(x.shape, spec.mul.shape, spec.offset.shape)
    check = _CHECK_OVERFLOW.get()
    y = np.empty(shape, dtype=spec.out_dtype())
    # x's extremes bound t = x*mul + offset, and every intermediate, by max|x| * max|mul| + max|offset|: when that
    # fits int32 nothing can overflow (no scan of t for the check) and int32 arithmetic is exact; otherwise int64
    # with the check
    work = np.dtype(_I64)
    if x.size and x.dtype.kind in "iu" and x.dtype.itemsize <= 4:
        # max|x| from what is known without a scan (x's dtype; the weights of the conv that computed x), else from
        # x's extremes: either way a bound on |x|, and int32 only where it proves nothing overflows
        if spec.fits_int32(_known_abs_bound(op, x)) or spec.fits_int32(max(abs(int(x.min())), abs(int(x.max())))):
            work = np.dtype(np.int32)
    verify = check and work == _I64
    tmin, tmax = _I32_MIN, _I32_MAX
    # Blocks along the batch axis keep the passes below in cache (a batch of 256 feature maps is 32 MB of int64);
    # when x does not span the batch axis, or a parameter has a batch extent of its own, one block does it all.
    blocked = y.ndim > 0 and x.shape[:1] == shape[:1] and all(
        p.ndim < y.ndim or p.shape[0] == 1 for p in (spec.mul, spec.offset))
    if blocked:
        step = max(1, _REQUANT_BLOCK // max(1, y.size // max(1, shape[0])))
        blocks = [slice(start, start + step) for start in range(0, shape[0], step)]
        scratch = np.empty((min(step, shape[0]),) + tuple(shape[1:]), dtype=work)
    else:
        blocks = [Ellipsis]
        scratch = np.empty(shape, dtype=work)
    for block in blocks:
        out = y[block]
        extremes = spec.apply(x[block], scratch[:out.shape[0]] if blocked else scratch, out, verify)
        if extremes is not None:
            tmin, tmax = min(tmin, extremes[0]), max(tmax, extremes[1])
    spec.overflow(tmin, tmax)
    return [y]


class _RequantStore:
    """int_conv_nd's store for an int.conv whose only reader is an int.requant_shift (`_execute` fuses the pair):
    the blocks of exact sums are cast to the conv's integer result dtype into a cache-sized staging buffer (a few
    small blocks of a depthwise conv are gathered first, so that the requant's dozen numpy calls run on enough
    elements) and requantized there, the conv's per-channel bias folded into the requant's offset; the conv's
    int32 result never exists as a whole.  Same values, same checks as the two kernels: each piece computes in
    int32 where the conv's bound, or else the piece's extremes, prove that x*mul + offset fits int32, otherwise in
    int64 with the scan that raises the requant's overflow error."""

    def __init__(self, requant: Operation, shape, acc_dtype, bias, acc_bound: int):
        self.acc_dtype = np.dtype(acc_dtype)  # the dtype the conv kernel would have produced
        self.bias = None
        spec = _RequantSpec(requant)
        if bias is not None:
            b = bias.astype(_I64).reshape((1, -1) + (1,) * (len(shape) - 2))
            if _abs_max(b) * spec.scale + spec.plain_extra < (1 << 62):  # the folded offset stays inside int64
                spec = _RequantSpec(requant, b)
            else:
                self.bias = _bias_as(bias, self.acc_dtype).reshape(b.shape)
        self.spec = spec
        self.y = np.empty(shape, dtype=spec.out_dtype())
        # acc_bound covers the sums with the bias: without it, the sums alone are within it too
        self.static = self.acc_dtype.itemsize <= 4 and spec.fits_int32(acc_bound)
        self.verify = _CHECK_OVERFLOW.get()
        self.tmin, self.tmax = _I32_MIN, _I32_MAX
        per_image = max(1, math.prod(shape[1:]))
        self.capacity = max(1, _FUSED_BLOCK // per_image)  # images per piece
        self.staged = np.empty((min(self.capacity, shape[0]),) + tuple(shape[1:]), dtype=self.acc_dtype)
        self.start = self.count = 0

    def direct(self, n0, n1):
        return None

    def __call__(self, n0, n1, block):
        b = n1 - n0
        if self.count and (self.count + b > self.capacity or n0 != self.start + self.count):
            self._flush()
        for i in range(0, b, self.capacity):
            piece = block[i:i + self.capacity]
            if not self.count:
                self.start = n0 + i
            # exact integers within the conv's bound: the cast is exact
            np.copyto(self.staged[self.count:self.count + piece.shape[0]], piece, casting="unsafe")
            self.count += piece.shape[0]
            if self.count >= self.capacity:
                self._flush()

    def _flush(self):
        acc = self.staged[:self.count]
        out = self.y[self.start:self.start + self.count]
        self.count = 0
        if self.bias is not None:
            acc += self.bias
        work = _I64
        if self.acc_dtype.itemsize <= 4 and acc.size and (
                self.static or self.spec.fits_int32(max(-int(acc.min()), int(acc.max())))):
            work = np.int32
        t = acc if acc.dtype == work else np.empty(acc.shape, dtype=work)
        extremes = self.spec.apply(acc, t, out, self.verify and work == _I64)
        if extremes is not None:
            self.tmin, self.tmax = min(self.tmin, extremes[0]), max(self.tmax, extremes[1])

    def result(self):
        if self.count:
            self._flush()
        self.spec.overflow(self.tmin, self.tmax)
        return self.y


@kernel("int.reduce_sum")
def _int_reduce_sum(op, args):
    x = args[0]
    return [np.sum(x, axis=_reduce_axes(op, x), keepdims=bool(op.attr("keepdims")), dtype=_I64)]


@kernel("int.sumpool")
def _int_sumpool(op, args):
    sums, _ = _pool_sum(op, args[0].astype(_I64, copy=False))
    return [sums]


@kernel("int.maxpool")
def _int_maxpool(op, args):
    return [_pool_max(op, args[0].astype(_I64, copy=False), np.iinfo(_I64).min)]


@kernel("int.pad")
def _int_pad(op, args):
    x = args[0]
    pads = [int(p) for p in _required(op, "pads")]
    value = int(op.attr("value"))
    if len(pads) == 2 * x.ndim and min(pads, default=0) >= 0:
        # np.pad's general machinery costs several passes; a fill and one slice copy are enough here
        r = x.ndim
        dtype = x.dtype if x.dtype.kind in "iu" and np.iinfo(x.dtype).min <= value <= np.iinfo(x.dtype).max else _I64
        y = np.full(tuple(x.shape[i] + pads[i] + pads[i + r] for i in range(r)), value, dtype=dtype)
        y[tuple(slice(pads[i], pads[i] + x.shape[i]) for i in range(r))] = x
        return [y]
    return [_pad_nd(_widen(x), pads, "constant", value)]


@kernel("int.reshape")
def _int_reshape(op, args):
    return [args[0].reshape(_reshape_target(args[0], _required(op, "shape")))]


@kernel("int.flatten")
def _int_flatten(op, args):
    return [_flatten(args[0], op.attr("axis"), op)]


@kernel("int.transpose")
def _int_transpose(op, args):
    return [_transpose(args[0], op)]


@kernel("int.squeeze")
def _int_squeeze(op, args):
    return [_squeeze(args[0], op)]


@kernel("int.unsqueeze")
def _int_unsqueeze(op, args):
    return [_unsqueeze(args[0], op)]


@kernel("int.concat")
def _int_concat(op, args):
    return [_concat(args, op)]


def missing_kernels() -> List[str]:
    """Declared ops without a kernel (empty when the interpreter covers every dialect)."""
    load_dialects()
    return sorted(name for name in OPS if name not in KERNELS)


# Kernels kept in their own modules register themselves here (they import `kernel` from this module).
from . import kernels_float_transformer  # noqa: E402,F401
from . import kernels_transformer  # noqa: E402,F401  (Deeploy's iSoftmax, iLayerNorm, iGELU)
