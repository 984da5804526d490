"""Declarative op definitions.

Every op of every dialect is declared exactly once, in `qirc/qir/dialects/<dialect>.py`, with `Dialect.op(...)`.
The printer, parser, verifier, interpreter and docs all read these declarations (`OPS`, `get_op_def`).

    INT = Dialect("int", "exact integer arithmetic")
    INT.op("conv", operands=["x", "w", "b?"], attrs={"pads": ints(), ...}, summary="...", shape=conv_shape)

An operand name ending in `?` is optional (it may be absent, only at the end), one ending in `*` is variadic
(zero or more, only last).  Attribute kinds:

    int  float  bool  str  ints  floats  dense (numpy array with an IR element type)  type (an IR type)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

ATTR_KINDS = ("int", "float", "bool", "str", "ints", "floats", "dense", "type")


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()


@dataclass(frozen=True)
class AttrDef:
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    choices: Optional[Tuple[Any, ...]] = None

    def __post_init__(self):
        if self.kind not in ATTR_KINDS:
            raise ValueError(f"unknown attribute kind {self.kind!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, value) -> Optional[str]:
        """Return a problem description if `value` is not of this kind, else None."""
        k = self.kind
        if not _KIND_CHECKS[k](value):
            return f"expected {k}, got {type(value).__name__}"
        if self.choices is not None and value not in self.choices:
            return f"expected one of {', '.join(map(repr, self.choices))}, got {value!r}"
        return None


def _is_int(v) -> bool:
    return type(v) is int or (isinstance(v, (int, np.integer)) and not isinstance(v, bool))


def _is_float(v) -> bool:
    return type(v) is float or (isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, bool))


def _is_ints(v) -> bool:
    return isinstance(v, (list, tuple)) and all(type(x) is int or _is_int(x) for x in v)


def _is_floats(v) -> bool:
    return isinstance(v, (list, tuple)) and all(_is_float(x) for x in v)


#: attribute kind -> whether a value is of that kind (the verifier asks this of every attribute of every op)
_KIND_CHECKS: Dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "float": _is_float,
    "bool": lambda v: isinstance(v, (bool, np.bool_)),
    "str": lambda v: isinstance(v, str),
    "ints": _is_ints,
    "floats": _is_floats,
    "dense": lambda v: isinstance(v, np.ndarray),
    "type": lambda v: v.__class__.__name__ in ("TensorType", "ScalarType", "UniformQuantType"),
}


def int_(default=REQUIRED, doc="", choices=None):
    return AttrDef("int", default, doc, choices)


def float_(default=REQUIRED, doc=""):
    return AttrDef("float", default, doc)


def bool_(default=REQUIRED, doc=""):
    return AttrDef("bool", default, doc)


def str_(default=REQUIRED, doc="", choices=None):
    return AttrDef("str", default, doc, tuple(choices) if choices else None)


def ints(default=REQUIRED, doc=""):
    return AttrDef("ints", default, doc)


def floats(default=REQUIRED, doc=""):
    return AttrDef("floats", default, doc)


def dense(default=REQUIRED, doc=""):
    return AttrDef("dense", default, doc)


def type_(default=REQUIRED, doc=""):
    return AttrDef("type", default, doc)


@dataclass(frozen=True)
class OperandDef:
    name: str
    optional: bool = False
    variadic: bool = False

    @staticmethod
    def parse(spec: str) -> "OperandDef":
        if spec.endswith("?"):
            return OperandDef(spec[:-1], optional=True)
        if spec.endswith("*"):
            return OperandDef(spec[:-1], variadic=True)
        return OperandDef(spec)


@dataclass
class OpDef:
    """The declaration of one op.

    name:      full name, `dialect.mnemonic` (`int.conv`, `onnx.Conv`)
    operands:  OperandDefs in order
    results:   result names; `("y*",)` means any number of results
    attrs:     attribute name -> AttrDef
    shape:     optional `shape(op) -> list[tuple]` giving the result shapes from operand types and attributes;
               the verifier compares them with the declared result types
    element:   optional `element(op) -> list[problem str]`: element-type rules (float in/out, int in/out, ...)
    traits:    free-form flags read by passes: "elementwise", "commutative", "shape_only" (moves data only),
               "linear" (conv, gemm, matmul), "pure"
    """

    name: str
    summary: str
    operands: Tuple[OperandDef, ...] = ()
    results: Tuple[str, ...] = ("y",)
    attrs: Dict[str, AttrDef] = field(default_factory=dict)
    shape: Optional[Callable] = None
    element: Optional[Callable] = None
    traits: frozenset = frozenset()
    description: str = ""

    @property
    def dialect(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def mnemonic(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def variadic_results(self) -> bool:
        return len(self.results) == 1 and self.results[0].endswith("*")

    def operand_count_ok(self, n: int) -> bool:
        required = sum(1 for o in self.operands if not o.optional and not o.variadic)
        if any(o.variadic for o in self.operands):
            return n >= required
        return required <= n <= len(self.operands)

    def operand_index(self, name: str) -> int:
        for i, o in enumerate(self.operands):
            if o.name == name:
                return i
        raise KeyError(f"{self.name} has no operand '{name}'")

    def attr_default(self, name: str):
        a = self.attrs[name]
        return None if a.required else a.default


@dataclass
class Dialect:
    name: str
    summary: str
    ops: Dict[str, OpDef] = field(default_factory=dict)

    def op(self, mnemonic: str, summary: str, operands=(), results=("y",), attrs=None, shape=None, element=None,
           traits=(), description: str = "") -> OpDef:
        full = f"{self.name}.{mnemonic}"
        if full in OPS:
            raise ValueError(f"op {full} declared twice")
        d = OpDef(full, summary, tuple(OperandDef.parse(o) for o in operands), tuple(results), dict(attrs or {}),
                  shape, element, frozenset(traits), description)
        self.ops[full] = d
        OPS[full] = d
        return d


OPS: Dict[str, OpDef] = {}
DIALECTS: Dict[str, Dialect] = {}


def dialect(name: str, summary: str) -> Dialect:
    if name in DIALECTS:
        return DIALECTS[name]
    d = Dialect(name, summary)
    DIALECTS[name] = d
    return d


def get_op_def(name: str) -> OpDef:
    load_dialects()
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op '{name}'") from None


_loaded = False


def load_dialects() -> None:
    """Import the built-in dialect modules (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from .dialects import qir, onnx, quant, int as int_dialect  # noqa: F401
