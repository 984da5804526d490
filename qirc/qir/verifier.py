"""The IR verifier: `verify(module)` checks every rule a well-formed module keeps, and raises `VerifyError` at the
first op that breaks one (its location and op name lead the message).

Checked, in this order:
  structure  every operand's defining op belongs to the module and the graph edges agree with the operand lists
             (no dangling value); the graph has no cycle
  each op    the op is declared; operand count; attribute names, kinds and required attributes; result count;
             result types are tensors with well-formed quant parameters (positive finite scales, zero points inside
             the storage range, storage_min <= storage_max inside the storage type, a per-axis axis inside the rank
             with one scale per index); `qir.const` values of the result's shape, storage dtype and storage range;
             result shapes equal the op's shape rule; the op's element rule (float in/out for onnx.*, ...)
  module     qir.input names unique, qir.output names unique, at least one qir.output

The shape and element rules live with the op declarations (`qirc/qir/shapes.py`, attached in the dialect modules).
"""
from __future__ import annotations

import difflib
import math
from typing import List, Optional

import numpy as np

from .diagnostics import VerifyError
from .ir import Module, Operation
from .ops import OPS, OpDef, load_dialects
from .shapes import ShapeProblem, fmt
from .types import ScalarType, TensorType, UniformQuantType


def verify(module: Module) -> None:
    """Raise VerifyError (located at the offending op) if `module` breaks an IR rule; return None otherwise."""
    load_dialects()
    _verify_structure(module)
    for op in module.ops():
        verify_op(op)
    _verify_io(module)


def _error(op: Operation, message: str) -> VerifyError:
    loc = op.loc or None
    if loc is None and op.results and op.results[0].name:
        loc = f"%{op.results[0].name}"
    return VerifyError(message, loc=loc, op=op.name)


def _describe(op: Operation) -> str:
    return f"{op.name} ({op.loc})" if op.loc else op.name


# ----- structure -------------------------------------------------------------------------------------------------
def _verify_structure(module: Module) -> None:
    # the common case, a sound graph, needs no order: check every op as it comes, and only when one fails look
    # again in creation order, so that the error names the earliest broken op whatever the dict order
    if not all(_linked(module, op) for op in module._ops):
        for op in sorted(module.graph.nodes, key=lambda o: o.seq):
            _check_linked(module, op)
    cycle = module.find_cycle()
    if cycle:
        path = " -> ".join(_describe(o) for o in cycle + cycle[:1])
        raise _error(cycle[0], f"ops form a cycle: {path}")


def _linked(module: Module, op: Operation) -> bool:
    """Whether `op` belongs to `module` and each operand is linked (what _check_linked checks, without messages)."""
    if op.module is not module:
        return False
    ops, edges = module._ops, module._edges
    for i, v in enumerate(op.operands):
        owner = v.owner
        if owner is None or owner.module is not module or owner not in ops or edges.get((op, i)) is not v \
                or (op, i) not in v.uses:
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
    _verify_operands(op, opdef)
    _verify_attrs(op, opdef)
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
    if e.storage.is_float:
        return f"storage type {e.storage} must be an integer type"
    if not e.expressed.is_float:
        return f"expressed type {e.expressed} must be a float type"
    if e.storage_min > e.storage_max:
        return f"storage_min {e.storage_min} is greater than storage_max {e.storage_max}"
    if e.storage_min < e.storage.min or e.storage_max > e.storage.max:
        return (f"storage range {e.storage_min}..{e.storage_max} exceeds the range "
                f"{e.storage.min}..{e.storage.max} of {e.storage}")
    if not e.scales or len(e.scales) != len(e.zero_points):
        return f"{len(e.scales)} scale(s) but {len(e.zero_points)} zero point(s)"
    for s in e.scales:
        if not (math.isfinite(s) and s > 0):
            return f"scale {s!r} must be positive and finite"
    for z in e.zero_points:
        if not e.storage_min <= z <= e.storage_max:
            return f"zero point {z} is outside the storage range {e.storage_min}..{e.storage_max}"
    if e.is_per_axis:
        if not 0 <= e.axis < t.rank:
            return f"quantization axis {e.axis} is out of range for rank {t.rank}"
        if len(e.scales) != t.shape[e.axis]:
            return (f"{len(e.scales)} per-axis scale(s) for axis {e.axis} of size {t.shape[e.axis]} "
                    f"(one per index expected)")
    elif len(e.scales) != 1:
        return f"a per-tensor type has {len(e.scales)} scales"
    return None


def _verify_const(op: Operation) -> None:
    value, t = op.attrs["value"], op.results[0].type
    if tuple(value.shape) != t.shape:
        raise _error(op, f"value shape {fmt(value.shape)} does not match the result shape {fmt(t.shape)}")
    dtype = t.storage.np_dtype
    if value.dtype != dtype:
        raise _error(op, f"value dtype {value.dtype} does not match the storage type {t.storage} of {t} "
                         f"(expected {dtype})")
    if t.is_int and value.size and value.dtype != np.bool_:
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
