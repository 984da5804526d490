"""The IR verifier: `verify(module)` checks every rule a well-formed module keeps, and raises `VerifyError` at the
first op that breaks one (its location and op name lead the message).

Checked, in this order:
  structure  every operand's defining op belongs to the module and the operand's value lists the use (no dangling
             value, no operand set behind the Module's back); the graph has no cycle
  each op    the op is declared; operand count; attribute names, kinds and required attributes; result count;
             result types are tensors with well-formed quant parameters (positive finite scales, zero points inside
             the storage range, storage_min <= storage_max inside the storage type, a per-axis axis inside the rank
             with one scale per index); `qir.const` values of the result's shape, storage dtype and storage range;
             result shapes equal the op's shape rule; the op's element rule (float in/out for onnx.*, ...)
  module     qir.input names unique, qir.output names unique, at least one qir.output

The shape and element rules live with the op declarations (`qirc/qir/shapes.py`, attached in the dialect modules).

Incremental verification (`verify(module, incremental=True)`, what the pass manager runs between passes): every rule
of one op reads only that op: its name, operands (the Values and their types), result types and attributes.  After
an op passes, the verifier keeps a snapshot of exactly those objects (`snapshot(op)`, in `Operation.verified`); an
incremental run checks again only the ops whose snapshot no longer holds, identity for identity: ops created or
re-added since, ops whose operands were set (through the Module or directly), whose attributes were set, added or
removed, whose result type was replaced, and the users of a value whose type was replaced.  The module-wide rules
(links of those ops, cycles, input/output names) run every time.  Like `Module.clone`, it treats attribute values
(numpy arrays, lists) and types as immutable: an attribute changed in place, without assigning it, is not seen
until a full verification (`verify(module)`).  The first changed op in topological order is the first that fails,
so an incremental run reports the same error a full one would.
"""
from __future__ import annotations

import difflib
import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from .diagnostics import VerifyError
from .ir import Module, Operation
from .ops import _KIND_CHECKS, OPS, OpDef, load_dialects
from .shapes import ShapeProblem, fmt
from .types import ScalarType, TensorType, UniformQuantType


def verify(module: Module, incremental: bool = False) -> None:
    """Raise VerifyError (located at the offending op) if `module` breaks an IR rule; return None otherwise.

    incremental: check only the ops changed since they last passed (see the module docstring); a full verification
    (the default) checks every op.  Both record what passed, for the next incremental run."""
    load_dialects()
    if incremental:
        changed = {op: None for op in module._ops if not _unchanged(op)}
        _verify_structure(module, changed)
        if changed:
            for op in module.ops():
                if op in changed:
                    verify_op(op)
                    op.verified = snapshot(op)
    else:
        _verify_structure(module)
        for op in module.ops():
            verify_op(op)
            op.verified = snapshot(op)
    _verify_io(module)


def snapshot(op: Operation) -> tuple:
    """Everything the rules of one op read, as the objects themselves: its name, operand Values, their types, result
    types, attribute names and values (with the counts, so that the flat tuple is unambiguous)."""
    operands, attrs = op.operands, op.attrs
    return (op.name, len(operands), len(op.results), len(attrs), *operands, *[v.type for v in operands],
            *[r.type for r in op.results], *attrs, *attrs.values())


def _unchanged(op: Operation) -> bool:
    """Whether `op.verified` still holds: snapshot(op) would have the very same objects (identity: a replaced object
    counts as changed).  Compared in place, without building the new snapshot (most ops have not changed)."""
    old = op.verified
    if old is None:
        return False
    operands, results, attrs = op.operands, op.results, op.attrs
    n_operands, n_attrs = len(operands), len(attrs)
    if old[0] is not op.name or old[1] != n_operands or old[2] != len(results) or old[3] != n_attrs:
        return False
    i = 4
    for v in operands:
        if old[i] is not v or old[i + n_operands] is not v.type:
            return False
        i += 1
    i += n_operands
    for r in results:
        if old[i] is not r.type:
            return False
        i += 1
    for key, value in attrs.items():
        if old[i] is not key or old[i + n_attrs] is not value:
            return False
        i += 1
    return True


def _error(op: Operation, message: str) -> VerifyError:
    loc = op.loc or None
    if loc is None and op.results and op.results[0].name:
        loc = f"%{op.results[0].name}"
    return VerifyError(message, loc=loc, op=op.name)


def _describe(op: Operation) -> str:
    return f"{op.name} ({op.loc})" if op.loc else op.name


# ----- structure -------------------------------------------------------------------------------------------------
def _verify_structure(module: Module, ops=None) -> None:
    """Links of `ops` (default: every op; an incremental run passes the changed ones: an op's links change only
    with its operands), then cycles in the whole graph."""
    # the common case, a sound graph, needs no order: check every op as it comes, and only when one fails look
    # again in creation order, so that the error names the earliest broken op whatever the dict order
    if ops is None:
        ops = module._ops
    if not all(_linked(module, op) for op in ops):
        for op in sorted(ops, key=lambda o: o.seq):
            _check_linked(module, op)
    cycle = module.find_cycle()
    if cycle:
        path = " -> ".join(_describe(o) for o in cycle + cycle[:1])
        raise _error(cycle[0], f"ops form a cycle: {path}")


def _linked(module: Module, op: Operation) -> bool:
    """Whether `op` belongs to `module` and each operand is linked (what _check_linked checks, without messages)."""
    if op.module is not module:
        return False
    ops = module._ops
    for i, v in enumerate(op.operands):
        owner = v.owner
        if owner is None or owner.module is not module or owner not in ops or (op, i) not in v.uses:
            return False
    return True


def _check_linked(module: Module, op: Operation) -> None:
    graph = module.graph
    if op.module is not module:
        raise _error(op, "op is in the module's graph but does not belong to the module")
    for i, v in enumerate(op.operands):
        owner = v.owner
        if owner is None or owner.module is not module or owner not in graph:
            where = _describe(owner) if owner is not None else "no op"
            raise _error(op, f"operand {i} (%{v.name or '?'}) is dangling: it is defined by {where}, "
                             "which is not in the module")
        edge = graph.get_edge_data(owner, op, key=i)
        if edge is None or edge.get("value") is not v or (op, i) not in v.uses:
            raise _error(op, f"operand {i} (%{v.name or '?'}) is not linked in the module graph "
                             "(operands must be set through Module.set_operand)")


def _verify_io(module: Module) -> None:
    for kind, ops in (("input", module.inputs), ("output", module.outputs)):
        seen = {}
        for op in ops:
            name = op.attrs.get("name")
            if name in seen:
                raise _error(op, f"duplicate graph {kind} name {name!r} (also used by {_describe(seen[name])})")
            seen[name] = op
    if not module.outputs:
        raise VerifyError(f"module @{module.name} has no qir.output")


# ----- one op ----------------------------------------------------------------------------------------------------
def verify_op(op: Operation) -> None:
    """Check one op against its declaration; raise VerifyError located at it."""
    opdef = OPS.get(op.name)
    if opdef is None:
        close = difflib.get_close_matches(op.name, list(OPS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise _error(op, f"unknown op '{op.name}'{hint}")
    plan = _PLANS.get(op.name)
    if plan is None or plan.opdef is not opdef:
        plan = _PLANS[op.name] = _Plan(opdef)
    # each check first asks the common question quickly; only when that fails does the full check run, which
    # finds the problem and words the error (the same checks in the same order as without the shortcuts)
    if not plan.operands_ok(op):
        _verify_operands(op, opdef)
    if not plan.attrs_ok(op):
        _verify_attrs(op, opdef)
    if not plan.results_ok(op):
        _verify_results(op, opdef)
    if op.name == "qir.const":
        _verify_const(op)
    _verify_shapes(op, opdef)
    if opdef.element is not None:
        try:
            problems = opdef.element(op)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, ArithmeticError) as e:
            raise _error(op, f"cannot check the element types: {e}") from None
        if problems:
            raise _error(op, "; ".join(problems))


class _Plan:
    """What the verifier needs of one op declaration, computed once: operand counts, attribute kinds, required
    attributes, result count."""

    __slots__ = ("opdef", "min_operands", "max_operands", "attr_checks", "required", "n_results")

    def __init__(self, opdef: OpDef):
        self.opdef = opdef
        required = sum(1 for o in opdef.operands if not o.optional and not o.variadic)
        variadic = any(o.variadic for o in opdef.operands)
        self.min_operands = required
        self.max_operands = math.inf if variadic else len(opdef.operands)
        # name -> (kind predicate, choices); the full check (AttrDef.check) words the problem
        self.attr_checks = {name: (_KIND_CHECKS[a.kind], a.choices) for name, a in opdef.attrs.items()}
        self.required = tuple(name for name, a in opdef.attrs.items() if a.required)
        self.n_results = None if opdef.variadic_results else len(opdef.results)

    def operands_ok(self, op: Operation) -> bool:
        if not self.min_operands <= len(op.operands) <= self.max_operands:
            return False
        for v in op.operands:
            if type(v.type) is not TensorType:
                return False
        return True

    def attrs_ok(self, op: Operation) -> bool:
        attrs, checks = op.attrs, self.attr_checks
        for name, value in attrs.items():
            check = checks.get(name)
            if check is None or not check[0](value) or (check[1] is not None and value not in check[1]):
                return False
        for name in self.required:
            if name not in attrs:
                return False
        return True

    def results_ok(self, op: Operation) -> bool:
        results = op.results
        if self.n_results is not None and len(results) != self.n_results:
            return False
        for r in results:
            t = r.type
            if type(t) is not TensorType or (t.shape and min(t.shape) < 0) or quant_type_problem(t) is not None:
                return False
        return True


_PLANS: Dict[str, _Plan] = {}


def _verify_operands(op: Operation, opdef: OpDef) -> None:
    if not opdef.operand_count_ok(len(op.operands)):
        spec = ", ".join(o.name + ("?" if o.optional else "*" if o.variadic else "") for o in opdef.operands)
        required = sum(1 for o in opdef.operands if not o.optional and not o.variadic)
        if any(o.variadic for o in opdef.operands):
            expected = f"at least {required}"
        elif required == len(opdef.operands):
            expected = str(required)
        else:
            expected = f"{required} to {len(opdef.operands)}"
        raise _error(op, f"expects {expected} operand(s) ({spec or 'none'}), got {len(op.operands)}")
    for i, v in enumerate(op.operands):
        if not isinstance(v.type, TensorType):
            raise _error(op, f"operand {i} has type {v.type}, expected a tensor type")


def _verify_attrs(op: Operation, opdef: OpDef) -> None:
    for name, value in op.attrs.items():
        attr = opdef.attrs.get(name)
        if attr is None:
            known = ", ".join(sorted(opdef.attrs)) or "none"
            raise _error(op, f"unknown attribute '{name}' (attributes of {op.name}: {known})")
        problem = attr.check(value)
        if problem:
            raise _error(op, f"attribute '{name}': {problem}")
    for name, attr in opdef.attrs.items():
        if attr.required and name not in op.attrs:
            raise _error(op, f"missing required attribute '{name}' ({attr.kind})")


def _verify_results(op: Operation, opdef: OpDef) -> None:
    if not opdef.variadic_results and len(op.results) != len(opdef.results):
        raise _error(op, f"expects {len(opdef.results)} result(s), got {len(op.results)}")
    for i, r in enumerate(op.results):
        if not isinstance(r.type, TensorType):
            raise _error(op, f"result {i} has type {r.type}, expected a tensor type")
        if any(d < 0 for d in r.type.shape):
            raise _error(op, f"result {i} type {r.type} has a negative dimension")
        problem = quant_type_problem(r.type)
        if problem:
            raise _error(op, f"result {i} type {r.type}: {problem}")


def quant_type_problem(t: TensorType) -> Optional[str]:
    """The first problem of a tensor type's quant parameters, or None (also None for non-quant types)."""
    e = t.element
    if isinstance(e, ScalarType):
        return None
    if not isinstance(e, UniformQuantType):
        return f"unknown element type {e!r}"
    storage = e.storage
    if storage.is_float:
        return f"storage type {storage} must be an integer type"
    if not e.expressed.is_float:
        return f"expressed type {e.expressed} must be a float type"
    lo, hi = e.storage_min, e.storage_max
    if lo > hi:
        return f"storage_min {lo} is greater than storage_max {hi}"
    storage_lo, storage_hi = _storage_bounds(storage)
    if lo < storage_lo or hi > storage_hi:
        return f"storage range {lo}..{hi} exceeds the range {storage_lo}..{storage_hi} of {storage}"
    scales, zero_points = e.scales, e.zero_points
    if not scales or len(scales) != len(zero_points):
        return f"{len(scales)} scale(s) but {len(zero_points)} zero point(s)"
    for s in scales:
        if not 0 < s < math.inf:  # also false for NaN
            return f"scale {s!r} must be positive and finite"
    if not lo <= min(zero_points) or not max(zero_points) <= hi:
        for z in zero_points:
            if not lo <= z <= hi:
                return f"zero point {z} is outside the storage range {lo}..{hi}"
    if e.is_per_axis:
        if not 0 <= e.axis < t.rank:
            return f"quantization axis {e.axis} is out of range for rank {t.rank}"
        if len(e.scales) != t.shape[e.axis]:
            return (f"{len(e.scales)} per-axis scale(s) for axis {e.axis} of size {t.shape[e.axis]} "
                    f"(one per index expected)")
    elif len(e.scales) != 1:
        return f"a per-tensor type has {len(e.scales)} scales"
    return None


_BOUNDS: Dict[str, Tuple[int, int]] = {}


def _storage_bounds(storage: ScalarType) -> Tuple[int, int]:
    """(min, max) of an integer storage type (asked for every quantized result type; keyed by name, whose hash
    is cached, unlike the dataclass's)."""
    bounds = _BOUNDS.get(storage.name)
    if bounds is None:
        bounds = _BOUNDS[storage.name] = (storage.min, storage.max)
    return bounds


_DTYPE_BOUNDS: Dict[np.dtype, Tuple[int, int]] = {}


def _dtype_bounds(dtype: np.dtype) -> Tuple[int, int]:
    """(min, max) of an integer numpy dtype."""
    bounds = _DTYPE_BOUNDS.get(dtype)
    if bounds is None:
        info = np.iinfo(dtype)
        bounds = _DTYPE_BOUNDS[dtype] = (int(info.min), int(info.max))
    return bounds


def _verify_const(op: Operation) -> None:
    value, t = op.attrs["value"], op.results[0].type
    if tuple(value.shape) != t.shape:
        raise _error(op, f"value shape {fmt(value.shape)} does not match the result shape {fmt(t.shape)}")
    dtype = t.storage.np_dtype
    if value.dtype != dtype:
        raise _error(op, f"value dtype {value.dtype} does not match the storage type {t.storage} of {t} "
                         f"(expected {dtype})")
    if t.is_int and value.size and value.dtype != np.bool_:
        element = t.element
        dtype_min, dtype_max = _dtype_bounds(dtype)
        if dtype_min >= element.min and dtype_max <= element.max:
            return  # the dtype cannot hold a value outside the storage range (an i8 const of i8 storage)
        lo, hi = int(value.min()), int(value.max())
        if lo < t.element.min or hi > t.element.max:
            raise _error(op, f"values {lo}..{hi} exceed the storage range {t.element.min}..{t.element.max} of {t}")


def _verify_shapes(op: Operation, opdef: OpDef) -> None:
    if opdef.shape is None:
        return
    try:
        expected: List[tuple] = opdef.shape(op)
    except ShapeProblem as e:
        raise _error(op, str(e)) from None
    except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as e:
        # a malformed attribute the kind check lets through (a negative axis list, say) must still be located
        raise _error(op, f"cannot compute the result shape: {e}") from None
    for i, (r, shape) in enumerate(zip(op.results, expected)):
        if tuple(r.type.shape) != tuple(shape):
            operands = ", ".join(fmt(v.type.shape) for v in op.operands) or "none"
            raise _error(op, f"result {i} has shape {fmt(r.type.shape)} but {op.name} of operand shapes "
                             f"({operands}) gives {fmt(shape)}")
