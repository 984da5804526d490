"""Shape and element-type rules of the built-in ops.

A shape rule `rule(op) -> list[tuple]` computes the result shapes of `op` from its operand types and attributes,
and raises `ShapeProblem` when the operands and attributes do not fit together (channels that disagree, a kernel
larger than its padded input, a reshape that changes the element count, ...).  An element rule
`rule(op) -> list[str]` returns the element-type problems of `op` (an empty list when there are none).  The dialect
modules attach them to the op declarations (`shape=`, `element=`); the verifier runs them and turns every problem
into a `VerifyError` located at the op.

The rules assume the verifier has already checked operand counts and attribute kinds, so they may read
`op.attr(...)` and `op.operands[i].type` freely.  Sizes follow onnxruntime (not only the ONNX spec) where the two
differ: a ceil-mode pooling window that would start in the end padding is dropped, as onnxruntime does.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

Shape = Tuple[int, ...]


class ShapeProblem(Exception):
    """Operands and attributes of an op that do not fit together; the message names the problem."""


def fmt(shape: Sequence[int]) -> str:
    """A shape as the IR spells it: `1x3x32x32` (`scalar` for rank 0)."""
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def _shape(op, i: int) -> Shape:
    return tuple(op.operands[i].type.shape)


def _norm_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ShapeProblem(f"{what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _prod(dims) -> int:
    return int(math.prod(dims))


# ----- elementwise and broadcasting ------------------------------------------------------------------------------
def broadcast(*shapes: Sequence[int]) -> Shape:
    """numpy (multidirectional) broadcasting of shapes; raises ShapeProblem when they do not broadcast."""
    if len(shapes) == 2:  # the common case (verifier, shape rules), without the sets below; a conflict falls through
        out = _broadcast2(shapes[0], shapes[1])
        if out is not None:
            return out
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(rank):
        dims = {s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeProblem("shapes " + ", ".join(fmt(s) for s in shapes) + " do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _broadcast2(a: Sequence[int], b: Sequence[int]):
    """broadcast(a, b), or None where the dims conflict (broadcast then words the problem)."""
    if len(a) < len(b):
        a, b = b, a
    out = list(a)
    offset = len(a) - len(b)
    for i, d in enumerate(b):
        e = out[offset + i]
        if d != e and d != 1:
            if e != 1:
                return None
            out[offset + i] = d
    return tuple(out)


def same_as_first(op) -> List[Shape]:
    """Elementwise unary ops and casts keep their operand's shape."""
    return [_shape(op, 0)]


def broadcast_operands(op) -> List[Shape]:
    return [broadcast(*(v.type.shape for v in op.operands))]


# ----- linear ops ------------------------------------------------------------------------------------------------
def _spatial_ints(op, name: str, n: int, default: int) -> List[int]:
    vals = list(op.attr(name) or [])
    if not vals:
        return [default] * n
    if len(vals) != n:
        raise ShapeProblem(f"{name} has {len(vals)} entries, expected {n} (one per spatial axis)")
    return [int(v) for v in vals]


def _pads(op, n: int) -> List[int]:
    pads = list(op.attr("pads") or [])
    if not pads:
        return [0] * (2 * n)
    if len(pads) != 2 * n:
        raise ShapeProblem(f"pads has {len(pads)} entries, expected {2 * n} (begin and end per spatial axis)")
    if any(p < 0 for p in pads):
        raise ShapeProblem(f"pads {pads} must not be negative")
    return [int(p) for p in pads]


def _window_sizes(x: Shape, kernel, pads, strides, dilations, ceil_mode: bool) -> List[int]:
    n = len(kernel)
    out = []
    for i in range(n):
        size, k, s, d = x[2 + i], kernel[i], strides[i], dilations[i]
        if k < 1 or s < 1 or d < 1:
            raise ShapeProblem(f"kernel, strides and dilations must be positive (axis {i}: kernel {k}, "
                               f"stride {s}, dilation {d})")
        span = size + pads[i] + pads[n + i] - d * (k - 1) - 1
        if span < 0:
            padded = size + pads[i] + pads[n + i]
            raise ShapeProblem(f"kernel {k} (dilation {d}) is larger than the padded input {padded} on spatial axis {i}")
        if ceil_mode:
            o = -(-span // s) + 1
            # onnxruntime drops a last window that would start inside the end padding
            if (o - 1) * s >= size + pads[i]:
                o -= 1
        else:
            o = span // s + 1
        out.append(o)
    return out


def conv_shape(op) -> List[Shape]:
    """Conv (NC + spatial): out = floor((in + pad_begin + pad_end - dilation * (k - 1) - 1) / stride) + 1."""
    x, w = _shape(op, 0), _shape(op, 1)
    if len(x) < 3:
        raise ShapeProblem(f"input {fmt(x)} must have rank >= 3 (N, C, spatial...)")
    if len(w) != len(x):
        raise ShapeProblem(f"weight {fmt(w)} must have the input's rank {len(x)}")
    n = len(x) - 2
    kernel = _spatial_ints(op, "kernel_shape", n, 0) if op.attr("kernel_shape") else list(w[2:])
    if tuple(kernel) != tuple(w[2:]):
        raise ShapeProblem(f"kernel_shape {list(kernel)} does not match the weight's spatial dims {fmt(w[2:])}")
    group = int(op.attr("group"))
    c, m = x[1], w[0]
    if group < 1 or c % group or m % group:
        raise ShapeProblem(f"group {group} must divide the input channels {c} and the output channels {m}")
    if w[1] * group != c:
        raise ShapeProblem(f"weight {fmt(w)} takes {w[1] * group} input channels (group {group}), "
                           f"input {fmt(x)} has {c}")
    if len(op.operands) > 2:
        b = _shape(op, 2)
        if b != (m,):
            raise ShapeProblem(f"bias {fmt(b)} must have shape {m} (one per output channel)")
    spatial = _window_sizes(x, kernel, _pads(op, n), _spatial_ints(op, "strides", n, 1),
                            _spatial_ints(op, "dilations", n, 1), False)
    return [(x[0], m, *spatial)]


def gemm_shape(op) -> List[Shape]:
    """Gemm: A' (M x K) times B' (K x N), C broadcast to M x N."""
    a, b = _shape(op, 0), _shape(op, 1)
    if len(a) != 2 or len(b) != 2:
        raise ShapeProblem(f"operands {fmt(a)} and {fmt(b)} must both have rank 2")
    if op.attr("transA"):
        a = a[::-1]
    if op.attr("transB"):
        b = b[::-1]
    if a[1] != b[0]:
        raise ShapeProblem(f"inner dimensions differ: A' is {fmt(a)}, B' is {fmt(b)}")
    out = (a[0], b[1])
    if len(op.operands) > 2:
        c = _shape(op, 2)
        if len(c) > 2 or broadcast(out, c) != out:
            raise ShapeProblem(f"C {fmt(c)} does not broadcast to the result {fmt(out)}")
    return [out]


def matmul_shape(op) -> List[Shape]:
    """numpy matmul: 1-D operands are promoted and the added axis removed; batch axes broadcast."""
    a, b = _shape(op, 0), _shape(op, 1)
    if not a or not b:
        raise ShapeProblem("matmul operands must have rank >= 1")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ShapeProblem(f"inner dimensions differ: {fmt(a)} and {fmt(b)}")
    out = broadcast(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return [out]


# ----- pooling and reductions ------------------------------------------------------------------------------------
def pool_shape(op) -> List[Shape]:
    """MaxPool, AveragePool, int.sumpool: window sizes with pads, strides, dilations and ceil_mode."""
    x = _shape(op, 0)
    if len(x) < 3:
        raise ShapeProblem(f"input {fmt(x)} must have rank >= 3 (N, C, spatial...)")
    n = len(x) - 2
    kernel = list(op.attr("kernel_shape"))
    if len(kernel) != n:
        raise ShapeProblem(f"kernel_shape has {len(kernel)} entries, expected {n} (one per spatial axis)")
    pads = _pads(op, n)
    for i in range(n):
        if pads[i] >= kernel[i] or pads[n + i] >= kernel[i]:
            raise ShapeProblem(f"pads {pads} must be smaller than the kernel {kernel} on each axis")
    dilations = _spatial_ints(op, "dilations", n, 1) if "dilations" in op.opdef.attrs else [1] * n
    spatial = _window_sizes(x, kernel, pads, _spatial_ints(op, "strides", n, 1), dilations,
                            bool(op.attr("ceil_mode")))
    return [(x[0], x[1], *spatial)]


def global_pool_shape(op) -> List[Shape]:
    x = _shape(op, 0)
    if len(x) < 3:
        raise ShapeProblem(f"input {fmt(x)} must have rank >= 3 (N, C, spatial...)")
    return [(x[0], x[1]) + (1,) * (len(x) - 2)]


def reduce_shape(op) -> List[Shape]:
    """Reductions over `axes` (empty: all axes), keeping size-1 axes when keepdims."""
    x = _shape(op, 0)
    axes = [_norm_axis(a, len(x), "reduction axis") for a in op.attr("axes")] or list(range(len(x)))
    if len(set(axes)) != len(axes):
        raise ShapeProblem(f"reduction axes {list(op.attr('axes'))} repeat an axis")
    if op.attr("keepdims"):
        return [tuple(1 if i in axes else d for i, d in enumerate(x))]
    return [tuple(d for i, d in enumerate(x) if i not in axes)]


# ----- data movement ---------------------------------------------------------------------------------------------
def reshape_shape(op) -> List[Shape]:
    x, shape = _shape(op, 0), tuple(int(d) for d in op.attr("shape"))
    if any(d < 1 for d in shape):
        raise ShapeProblem(f"shape {list(shape)} must be resolved (every entry positive; no 0 or -1)")
    if _prod(shape) != _prod(x):
        raise ShapeProblem(f"reshape from {fmt(x)} ({_prod(x)} elements) to {fmt(shape)} "
                           f"({_prod(shape)} elements) changes the element count")
    return [shape]


def flatten_shape(op) -> List[Shape]:
    x, axis = _shape(op, 0), int(op.attr("axis"))
    if not -len(x) <= axis <= len(x):
        raise ShapeProblem(f"axis {axis} is out of range for rank {len(x)}")
    if axis < 0:
        axis += len(x)
    return [(_prod(x[:axis]), _prod(x[axis:]))]


def transpose_shape(op) -> List[Shape]:
    x = _shape(op, 0)
    perm = [int(p) for p in op.attr("perm")] or list(range(len(x)))[::-1]
    if sorted(perm) != list(range(len(x))):
        raise ShapeProblem(f"perm {perm} is not a permutation of the {len(x)} axes of {fmt(x)}")
    return [tuple(x[p] for p in perm)]


def squeeze_shape(op) -> List[Shape]:
    x = _shape(op, 0)
    axes = [_norm_axis(a, len(x), "squeeze axis") for a in op.attr("axes")]
    if not axes:
        axes = [i for i, d in enumerate(x) if d == 1]
    for a in axes:
        if x[a] != 1:
            raise ShapeProblem(f"cannot squeeze axis {a} of {fmt(x)}: its size is {x[a]}, not 1")
    return [tuple(d for i, d in enumerate(x) if i not in axes)]


def unsqueeze_shape(op) -> List[Shape]:
    x = _shape(op, 0)
    rank = len(x) + len(op.attr("axes"))
    axes = sorted(_norm_axis(a, rank, "unsqueeze axis") for a in op.attr("axes"))
    if len(set(axes)) != len(axes):
        raise ShapeProblem(f"unsqueeze axes {list(op.attr('axes'))} repeat an axis")
    rest = iter(x)
    return [tuple(1 if i in axes else next(rest) for i in range(rank))]


def concat_shape(op) -> List[Shape]:
    if not op.operands:
        raise ShapeProblem("concat needs at least one operand")
    shapes = [v.type.shape for v in op.operands]
    rank = len(shapes[0])
    axis = _norm_axis(int(op.attr("axis")), rank)
    for s in shapes[1:]:
        if len(s) != rank or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != axis):
            raise ShapeProblem(f"operand shapes {', '.join(fmt(s) for s in shapes)} differ outside axis {axis}")
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return [tuple(out)]


def pad_shape(op) -> List[Shape]:
    """Pad: `pads` holds the begin pads of every axis, then the end pads (negative pads crop, as in ONNX)."""
    x, pads = _shape(op, 0), [int(p) for p in op.attr("pads")]
    r = len(x)
    if len(pads) != 2 * r:
        raise ShapeProblem(f"pads has {len(pads)} entries, expected {2 * r} (begin and end for each of {r} axes)")
    out = tuple(x[i] + pads[i] + pads[r + i] for i in range(r))
    if any(d < 0 for d in out):
        raise ShapeProblem(f"pads {pads} crop {fmt(x)} below size 0")
    return [out]


def batchnorm_shape(op) -> List[Shape]:
    x = _shape(op, 0)
    if len(x) < 2:
        raise ShapeProblem(f"input {fmt(x)} must have rank >= 2 (N, C, ...)")
    for i, name in enumerate(("scale", "B", "mean", "var"), start=1):
        if _shape(op, i) != (x[1],):
            raise ShapeProblem(f"{name} {fmt(_shape(op, i))} must have shape {x[1]} (one per channel)")
    return [x]


def softmax_shape(op) -> List[Shape]:
    x = _shape(op, 0)
    _norm_axis(int(op.attr("axis")), max(len(x), 1))
    return [x]


def layernorm_shape(op) -> List[Shape]:
    """LayerNormalization: normalises over the axes from `axis` to the last; Scale (and B) broadcast against those
    axes (ONNX: their shape is X.shape[axis:] or broadcastable to it)."""
    x = _shape(op, 0)
    axis = _norm_axis(int(op.attr("axis")), max(len(x), 1))
    norm = x[axis:]
    for i, name in enumerate(("Scale", "B")[:len(op.operands) - 1], start=1):
        s = _shape(op, i)
        if len(s) > len(norm) or broadcast(norm, s) != tuple(norm):
            raise ShapeProblem(f"{name} {fmt(s)} does not broadcast against the normalised axes {fmt(norm)}")
    return [x]


def gather_shape(op) -> List[Shape]:
    """Gather at constant `indices` along `axis`: that axis becomes len(indices), or disappears when `scalar`."""
    x = _shape(op, 0)
    axis = _norm_axis(int(op.attr("axis")), len(x))
    indices = [int(i) for i in op.attr("indices")]
    if op.attr("scalar") and len(indices) != 1:
        raise ShapeProblem(f"a scalar gather needs exactly one index, got {len(indices)}")
    for i in indices:
        if not -x[axis] <= i < x[axis]:
            raise ShapeProblem(f"index {i} is out of range for axis {axis} of size {x[axis]}")
    middle = () if op.attr("scalar") else (len(indices),)
    return [x[:axis] + middle + x[axis + 1:]]


def slice_shape(op) -> List[Shape]:
    """Slice with resolved `starts`, `ends` (clamped to 0..size), `steps` (positive) per entry of `axes`."""
    x = _shape(op, 0)
    starts, ends, axes, steps = (list(op.attr(n)) for n in ("starts", "ends", "axes", "steps"))
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeProblem(f"starts, ends, axes and steps have different lengths "
                           f"({len(starts)}, {len(ends)}, {len(axes)}, {len(steps)})")
    out = list(x)
    seen = set()
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _norm_axis(int(a), len(x), "slice axis")
        if a in seen:
            raise ShapeProblem(f"slice axis {a} appears twice")
        seen.add(a)
        if st < 1:
            raise ShapeProblem(f"step {st} on axis {a} must be positive")
        if not 0 <= s <= e <= x[a]:
            raise ShapeProblem(f"start {s} and end {e} on axis {a} must satisfy 0 <= start <= end <= {x[a]}")
        out[a] = len(range(s, e, st))
    return [tuple(out)]


def requant_shift_shape(op) -> List[Shape]:
    """Shape-preserving; `mul` and `add` must broadcast against x without growing it."""
    x = _shape(op, 0)
    for name in ("mul", "add"):
        a = np.asarray(op.attr(name))
        if a.size == 0:
            raise ShapeProblem(f"{name} is empty")
        try:
            grows = a.ndim > len(x) or broadcast(x, a.shape) != x
        except ShapeProblem:
            grows = True
        if grows:
            raise ShapeProblem(f"{name} of shape {fmt(a.shape)} does not broadcast against the input {fmt(x)}")
    return [x]


def const_shape(op) -> List[Shape]:
    return [tuple(np.shape(op.attr("value")))]


# ----- element rules ---------------------------------------------------------------------------------------------
def _kind(t) -> str:
    if t.is_quant:
        return "a quantized"
    return "a float" if t.is_float else "an integer"


def float_in_out(op) -> List[str]:
    """onnx.*: every operand and result is a float tensor."""
    problems = [f"operand {i} must be a float tensor, got {_kind(v.type)} {v.type}"
                for i, v in enumerate(op.operands) if not v.type.is_float]
    problems += [f"result {i} must be a float tensor, got {_kind(r.type)} {r.type}"
                 for i, r in enumerate(op.results) if not r.type.is_float]
    return problems


def int_in_out(op) -> List[str]:
    """int.*: every operand and result is an integer or quantized tensor (runtime values are stored integers)."""
    problems = [f"operand {i} must be an integer or quantized tensor, got a float {v.type}"
                for i, v in enumerate(op.operands) if v.type.is_float]
    problems += [f"result {i} must be an integer or quantized tensor, got a float {r.type}"
                 for i, r in enumerate(op.results) if r.type.is_float]
    return problems


def qcast_elements(op) -> List[str]:
    problems = []
    if not op.operands[0].type.is_float:
        problems.append(f"operand must be a float tensor, got {_kind(op.operands[0].type)} {op.operands[0].type}")
    if not op.results[0].type.is_quant:
        problems.append(f"result must be a quantized tensor, got {_kind(op.results[0].type)} {op.results[0].type}")
    return problems


def dcast_elements(op) -> List[str]:
    problems = []
    if not op.operands[0].type.is_quant:
        problems.append(f"operand must be a quantized tensor, got {_kind(op.operands[0].type)} "
                        f"{op.operands[0].type}")
    if not op.results[0].type.is_float:
        problems.append(f"result must be a float tensor, got {_kind(op.results[0].type)} {op.results[0].type}")
    return problems


def _storage_range(t) -> Tuple[int, int]:
    e = t.element
    return int(e.min), int(e.max)


def requant_shift_range(signed: bool, n_levels: int) -> Tuple[int, int]:
    """The clip bounds of Deeploy's RequantShift: -n/2 .. n/2 - 1 when signed, else 0 .. n - 1."""
    return (-(n_levels // 2), n_levels // 2 - 1) if signed else (0, n_levels - 1)


def requant_shift_elements(op) -> List[str]:
    """Integer in/out; div a power of two; mul/add integer; the clip range fits the result's storage."""
    problems = int_in_out(op)
    div, n_levels, signed = int(op.attr("div")), int(op.attr("n_levels")), bool(op.attr("signed"))
    if div < 1 or div & (div - 1):
        problems.append(f"div {div} must be a positive power of two")
    if n_levels < 2:
        problems.append(f"n_levels {n_levels} must be at least 2")
    for name in ("mul", "add"):
        a = np.asarray(op.attr(name))
        if a.dtype.kind not in "iu":
            problems.append(f"{name} must hold integers, got dtype {a.dtype}")
    result = op.results[0].type
    if not result.is_float and n_levels >= 2:
        lo, hi = requant_shift_range(signed, n_levels)
        smin, smax = _storage_range(result)
        if lo < smin or hi > smax:
            problems.append(f"output range {lo}..{hi} (signed={int(signed)}, n_levels={n_levels}) does not fit the "
                            f"result storage {smin}..{smax} of {result}")
    return problems


def int_clip_elements(op) -> List[str]:
    problems = int_in_out(op)
    lo, hi = int(op.attr("min")), int(op.attr("max"))
    if lo > hi:
        problems.append(f"min {lo} is greater than max {hi}")
    result = op.results[0].type
    if not problems:
        smin, smax = _storage_range(result)
        if lo < smin or hi > smax:
            problems.append(f"clip range {lo}..{hi} does not fit the result storage {smin}..{smax} of {result}")
    return problems


def int_pad_elements(op) -> List[str]:
    problems = int_in_out(op)
    result = op.results[0].type
    if not problems:
        smin, smax = _storage_range(result)
        value = int(op.attr("value"))
        if not smin <= value <= smax:
            problems.append(f"pad value {value} is outside the result storage {smin}..{smax} of {result}")
    return problems


# ----- integer transformer kernels (Deeploy's iSoftmax, iLayerNorm, iGELU; DESIGN.md section 7) ---------------------
def _is_8bit(t) -> bool:
    return not t.is_float and t.storage.width == 8


def _int_attr_fits(op, name: str, bits: int, problems: List[str], signed: bool = True) -> None:
    v = int(op.attr(name))
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= v <= hi:
        problems.append(f"{name} {v} does not fit the kernel's {'' if signed else 'u'}int{bits} parameter "
                        f"({lo}..{hi})")


def _eight_bit_input(op, problems: List[str]) -> None:
    t = op.operands[0].type
    if not t.is_float and not _is_8bit(t):
        problems.append(f"operand 0 must be an 8-bit integer tensor (the kernel reads int8), got {t}")


def isoftmax_elements(op) -> List[str]:
    """8-bit input; unsigned 8-bit result; log2 >= 2 (so that -(xTilde / log2) fits int8); coefficients fit the
    C parameters (int32 coeffA, coeffB, log2; int64 coeffC); 2 <= n_levels <= 256."""
    problems = int_in_out(op)
    _eight_bit_input(op, problems)
    r = op.results[0].type
    if not r.is_float and not (_is_8bit(r) and not r.storage.signed):
        problems.append(f"result must be an unsigned 8-bit tensor (iSoftmax outputs 0..n_levels-1), got {r}")
    for name in ("coeffA", "coeffB", "log2"):
        _int_attr_fits(op, name, 32, problems)
    _int_attr_fits(op, "coeffC", 64, problems)
    if int(op.attr("log2")) < 2:
        problems.append(f"log2 {int(op.attr('log2'))} must be at least 2 (the kernel's int8 shift count "
                        f"-(xTilde / log2) wraps for smaller values)")
    n = int(op.attr("n_levels"))
    if not 2 <= n <= 256:
        problems.append(f"n_levels {n} must be in 2..256")
    return problems


def ilayernorm_shape(op) -> List[Shape]:
    """x [..., C]; weight and bias [C]."""
    x = _shape(op, 0)
    if not x:
        raise ShapeProblem("input must have rank >= 1 (normalised over the last axis)")
    for i, name in ((1, "weight"), (2, "bias")):
        if _shape(op, i) != (x[-1],):
            raise ShapeProblem(f"{name} {fmt(_shape(op, i))} must have shape {x[-1]} (one per element of the "
                               f"last axis)")
    return [x]


def ilayernorm_elements(op) -> List[str]:
    """8-bit input; weight and bias at most 32-bit (int32 in C); D a power of two below 2^63; signed 8-bit result."""
    problems = int_in_out(op)
    _eight_bit_input(op, problems)
    for i, name in ((1, "weight"), (2, "bias")):
        t = op.operands[i].type
        if not t.is_float and t.storage.width > 32:
            problems.append(f"{name} must be at most 32-bit (the kernel's int32 {name}), got {t}")
    d = int(op.attr("D"))
    if d < 1 or d & (d - 1) or d >= 1 << 63:
        problems.append(f"D {d} must be a positive power of two (the kernel shifts by log2(D))")
    n = int(op.attr("n_levels"))
    if not 2 <= n <= 256:
        problems.append(f"n_levels {n} must be in 2..256")
    r = op.results[0].type
    if not r.is_float and not (_is_8bit(r) and r.storage.signed):
        problems.append(f"result must be a signed 8-bit tensor (iLayerNorm's int8 output wraps), got {r}")
    return problems


def igelu_elements(op) -> List[str]:
    """8-bit input; b fits int8 and one fits int16 (the C signature narrows them); 32-bit signed result."""
    problems = int_in_out(op)
    _eight_bit_input(op, problems)
    _int_attr_fits(op, "b", 8, problems)
    _int_attr_fits(op, "one", 16, problems)
    r = op.results[0].type
    if not r.is_float and not (r.storage.width == 32 and r.storage.signed):
        problems.append(f"result must be a signed 32-bit tensor (iGELU outputs int32), got {r}")
    return problems
