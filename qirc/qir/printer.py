"""The textual form of a module (MLIR-like); `qirc.qir.parser` reads it back.

    qir.module @resnet8 {
      %input = qir.input "input" : tensor<1x3x32x32x!quant.uniform<i8:f32, 0.0078125:0>>  loc("input")
      %w0 = qir.const dense<"0x1AF3..."> : tensor<16x3x3x3xi8>  loc("/conv1/weight")
      %0 = int.conv %input, %w0 {pads = [1, 1, 1, 1], strides = [1, 1]} : tensor<1x16x32x32xi32>  loc("/conv1/Conv")
      qir.output "output" %0  loc("output")
    }

The text is canonical: ops in `Module.ops()` order, attributes sorted by name, floats as repr(), dense arrays as
their raw little-endian bytes in hex (small integer arrays as a list, an array whose elements are all equal as the
splat `dense<v>`), so that print -> parse -> print gives the same text and constants come back bit for bit.
With `elide_constants` the text is for reading only: arrays and attribute lists of more than 8 elements and
per-channel scale lists of more than 8 channels are shortened, scales print with 6 significant digits, and no line
runs on for thousands of characters.  Value names are kept where they are valid, unique identifiers; every
other value is numbered in order.
"""
from __future__ import annotations

import json
import re
from typing import Dict, List, Mapping, Optional

import numpy as np

from .ir import Module, Operation, Value
from .ops import OPS, load_dialects
from .types import ScalarType, TensorType, UniformQuantType, scalar_from_numpy

__all__ = ["print_module", "print_op", "value_names", "format_attr", "format_dense", "format_string", "format_type",
           "SMALL_DENSE_LIMIT", "ELIDE_LIMIT", "ELIDED_CHANNELS"]

# Integer arrays up to this many elements print as a readable list.
SMALL_DENSE_LIMIT = 16
# --elide-constants hides arrays (splats aside) and shortens attribute lists of more than this many elements ...
ELIDE_LIMIT = 8
# ... shows per-channel quant types of more than this many channels as a summary ...
ELIDED_CHANNELS = 8
# ... and keeps this many leading elements of a shortened list; a line longer than this gets a shortened loc
ELIDED_HEAD = 4
MAX_ELIDED_LINE = 300

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.$]*")
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_.$-]*")

# Ops with a short form: the `name` attribute written first as a string, or the `value` written as a bare literal.
NAME_SUGAR_OPS = frozenset({"qir.input", "qir.output"})
VALUE_SUGAR_OPS = frozenset({"qir.const"})


def print_module(module: Module, elide_constants: bool = False) -> str:
    """The module as text; with `elide_constants`, arrays of more than 8 elements print as
    `dense_resource<__elided__>`, long per-channel scale lists as a summary (readable, but no longer parseable)."""
    load_dialects()
    names = value_names(module)
    lines = [f"qir.module @{_symbol(module.name)} {{"]
    for op in print_order(module):
        lines.append("  " + print_op(op, names, elide_constants))
    lines.append("}")
    return "\n".join(lines) + "\n"


def print_order(module: Module) -> List[Operation]:
    """The order ops print in: the module's topological order with each used constant moved to just before its
    first user, so that a dump reads top to bottom after passes have created ops long after the weights they read.
    Parsing keeps text order, so print -> parse -> print stays a fixed point."""
    order: List[Operation] = []
    placed = set()
    for op in module.ops():
        if op.name == "qir.const" and any(r.uses for r in op.results):
            continue
        for v in op.operands:
            const = v.owner
            if const.name == "qir.const" and id(const) not in placed:
                placed.add(id(const))
                order.append(const)
        order.append(op)
    return order


def value_names(module: Module) -> Dict[Value, str]:
    """The SSA name (with '%') of every value: its own name if that is a valid identifier not taken by an earlier
    value, else the next number."""
    names: Dict[Value, str] = {}
    taken = set()
    counter = 0
    for op in print_order(module):
        for result in op.results:
            name = result.name
            if name is not None and name not in taken and _IDENTIFIER.fullmatch(name):
                taken.add(name)
                names[result] = "%" + name
            else:
                names[result] = f"%{counter}"
                counter += 1
    return names


def print_op(op: Operation, names: Optional[Mapping[Value, str]] = None, elide_constants: bool = False) -> str:
    """One op on one line (without indentation).  `names` maps values to their SSA names (see `value_names`);
    a value missing from it prints as `%name` or `%?` (handy for diagnostics about a single op)."""
    names = names if names is not None else {}
    opdef = OPS.get(op.name)
    attrs = dict(op.attrs)
    parts: List[str] = []
    if op.results:
        parts.append(", ".join(_value_name(r, names) for r in op.results) + " =")
    parts.append(op.name)
    if op.name in NAME_SUGAR_OPS and isinstance(attrs.get("name"), str):
        parts.append(format_string(attrs.pop("name")))
    if op.name in VALUE_SUGAR_OPS and _const_sugar_ok(op):
        value = attrs.pop("value")
        parts.append(_dense_literal(value, elide_constants))
    if op.operands:
        parts.append(", ".join(_value_name(v, names) for v in op.operands))
    if attrs:
        kinds = {}
        if opdef is not None:
            kinds = {k: a.kind for k, a in opdef.attrs.items()}
        items = (f"{k} = {format_attr(attrs[k], kinds.get(k), elide_constants)}" for k in sorted(attrs))
        parts.append("{" + ", ".join(items) + "}")
    if op.results:
        parts.append(": " + ", ".join(format_type(r.type, elide_constants) for r in op.results))
    text = " ".join(parts)
    if op.loc:
        loc = op.loc
        excess = 2 + len(text) + 7 + len(format_string(loc)) - MAX_ELIDED_LINE  # indent, text, "  loc()"
        if elide_constants and excess > 0 and len(loc) > 24:
            # the last resort for a reading copy: the node name's tail (its op and layer) is what tells it apart
            loc = "..." + loc[-max(len(loc) - excess - 3, 21):]
        text += f"  loc({format_string(loc)})"
    return text


def _value_name(value: Value, names: Mapping[Value, str]) -> str:
    name = names.get(value)
    if name is not None:
        return name
    return "%" + (value.name if value.name and _IDENTIFIER.fullmatch(value.name) else "?")


def _const_sugar_ok(op: Operation) -> bool:
    """`qir.const dense<...> : T` is exact only when the array is precisely what T says (storage dtype, shape)."""
    value = op.attrs.get("value")
    if set(op.attrs) != {"value"} or len(op.results) != 1 or op.operands or not isinstance(value, np.ndarray):
        return False
    t = op.results[0].type
    if not isinstance(t, TensorType):
        return False
    try:
        dtype = t.storage.np_dtype
    except Exception:
        return False
    return value.dtype == dtype and value.dtype.isnative and tuple(value.shape) == t.shape


def _symbol(name: str) -> str:
    return name if _SYMBOL.fullmatch(name) else format_string(name)


def format_string(s: str) -> str:
    """A JSON-style quoted string (ASCII only, so every character is visible and the line stays one line)."""
    return json.dumps(s, ensure_ascii=True)


def format_float(x) -> str:
    """repr() of the float64, always recognisable as a float (has '.', 'e', 'inf' or 'nan')."""
    r = repr(float(x))
    return r if ("." in r or "e" in r or "n" in r) else r + ".0"


def format_attr(value, kind: Optional[str] = None, elide_constants: bool = False) -> str:
    """One attribute value.  `kind` is the declared kind (ops.AttrDef); without it, or when the value does not
    have that kind, the kind is taken from the Python value."""
    if kind is None or not _has_kind(value, kind):
        kind = _kind_of(value)
    if kind == "int":
        return str(int(value))
    if kind == "float":
        return format_float(value)
    if kind == "bool":
        return "true" if value else "false"
    if kind == "str":
        return format_string(value)
    if kind in ("ints", "floats"):
        fmt = (lambda x: str(int(x))) if kind == "ints" else format_float
        if elide_constants and len(value) > ELIDE_LIMIT:
            return "[" + ", ".join(fmt(x) for x in value[:ELIDED_HEAD]) + f", ... {len(value)} in all]"
        return "[" + ", ".join(fmt(x) for x in value) + "]"
    if kind == "dense":
        return format_dense(value, elide_constants)
    if kind == "type":
        return format_type(value, elide_constants)
    raise ValueError(f"cannot print attribute value {value!r} of type {type(value).__name__}")


def _has_kind(value, kind: str) -> bool:
    """Whether `value` is a valid value of attribute kind `kind` (as ops.AttrDef.check, without its message)."""
    if kind == "int":
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if kind == "ints":
        return isinstance(value, (list, tuple)) and all(
            isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) for x in value)
    if kind == "dense":
        return isinstance(value, np.ndarray)
    if kind == "bool":
        return isinstance(value, (bool, np.bool_))
    if kind == "str":
        return isinstance(value, str)
    if kind == "float":
        return isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))
    if kind == "floats":
        return isinstance(value, (list, tuple)) and all(
            isinstance(x, (float, int, np.floating, np.integer)) and not isinstance(x, (bool, np.bool_))
            for x in value)
    if kind == "type":
        return isinstance(value, (TensorType, ScalarType, UniformQuantType))
    return False


def _kind_of(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, np.ndarray):
        return "dense"
    if isinstance(value, (TensorType, ScalarType, UniformQuantType)):
        return "type"
    if isinstance(value, (list, tuple)):
        if all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) for x in value):
            return "ints"
        if all(isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))
               for x in value):
            return "floats"
    raise ValueError(f"cannot print attribute value {value!r} of type {type(value).__name__}")


def format_type(t, elide_constants: bool = False) -> str:
    """A type as text.  With `elide_constants` (for reading, not parseable) scales print with 6 significant digits
    and a per-channel quant type of more than `ELIDED_CHANNELS` channels as its channel count and the range of its
    scales and zero points: `!quant.uniform<i8:f32:0, {64 channels: scales 0.00121..0.0098, zero point 0}>`."""
    element = t.element if isinstance(t, TensorType) else t
    if not (elide_constants and isinstance(element, UniformQuantType)):
        return str(t)
    storage = str(element.storage)
    if element.narrow:
        storage += f"<{element.storage_min}:{element.storage_max}>"
    if not element.is_per_axis:
        text = f"!quant.uniform<{storage}:{element.expressed}, {element.scales[0]:.6g}:{element.zero_points[0]}>"
    elif len(element.scales) <= ELIDED_CHANNELS:
        pairs = ", ".join(f"{s:.6g}:{z}" for s, z in zip(element.scales, element.zero_points))
        text = f"!quant.uniform<{storage}:{element.expressed}:{element.axis}, {{{pairs}}}>"
    else:
        scales = np.asarray(element.scales, dtype=np.float64)
        zps = sorted(set(int(z) for z in element.zero_points))
        zp_text = f"zero point {zps[0]}" if len(zps) == 1 else f"zero points {zps[0]}..{zps[-1]}"
        text = (f"!quant.uniform<{storage}:{element.expressed}:{element.axis}, {{{len(scales)} channels: scales "
                f"{scales.min():.6g}..{scales.max():.6g}, {zp_text}}}>")
    if isinstance(t, TensorType):
        return f"tensor<{''.join(f'{d}x' for d in t.shape)}{text}>"
    return text


def format_dense(array: np.ndarray, elide_constants: bool = False) -> str:
    """`dense<...> : tensor<shape x elem>` where the element type names the array's dtype."""
    array = np.asarray(array)
    element = scalar_from_numpy(array.dtype.newbyteorder("=") if not array.dtype.isnative else array.dtype)
    return f"{_dense_literal(array, elide_constants)} : {TensorType(array.shape, element)}"


def _splat_text(array: np.ndarray) -> Optional[str]:
    """`v` when every element of `array` has the same bits and `v` reads back as exactly those bits, else None."""
    kind = array.dtype.kind
    if array.size == 0 or kind not in "iuf":
        return None
    flat = array.reshape(-1)
    first = flat[:1]
    if array.size > 1 and not np.array_equal(flat.view(np.uint8).reshape(array.size, -1),
                                             np.broadcast_to(first.view(np.uint8), (array.size, array.itemsize))):
        return None
    if kind in "iu":
        return str(int(first[0]))
    if np.isnan(first[0]):
        return None  # a NaN's payload would not survive its text
    text = format_float(first[0])
    return text if np.array(float(text), dtype=array.dtype).tobytes() == first.tobytes() else None


def _dense_literal(array: np.ndarray, elide_constants: bool) -> str:
    splat = _splat_text(array)
    if splat is not None:
        return f"dense<{splat}>"
    if elide_constants and array.size > ELIDE_LIMIT:
        return "dense_resource<__elided__>"
    kind = array.dtype.kind
    if kind in "iu" and array.size <= SMALL_DENSE_LIMIT:
        return "dense<[" + ", ".join(str(int(x)) for x in array.reshape(-1).tolist()) + "]>"
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return f'dense<"0x{little.tobytes().hex().upper()}">'
