"""Hypothesis strategies for random IR: types and whole modules built with the Module API.

    from strategies import modules, tensor_types, quant_types

    @given(modules())
    def test_something(module): ...

`modules()` builds modules that are well-formed as TEXT and as a graph: every op is a declared op with a legal
number of operands and results, SSA order, attributes of the declared kinds (required ones always present), names
and locations with awkward characters, constants of every dtype (NaN with payloads, -0.0, +-inf included) whose
arrays match their result type exactly.  Result types are random, so the modules do NOT follow each op's shape and
element rules: use them for structure-level properties (printing, parsing, cloning, graph edits), not for the
verifier or interpreter.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from hypothesis import strategies as st

from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.ops import AttrDef, OPS, load_dialects
from qirc.qir.types import ScalarType, TensorType, UniformQuantType, _SCALARS

load_dialects()

SCALAR_NAMES = tuple(sorted(_SCALARS))
QUANT_STORAGE = ("i8", "u8", "i16", "u16", "i32", "i1")
STRUCTURE_OPS = ("qir.input", "qir.output", "qir.const")
BUILTIN_DIALECTS = ("qir", "quant", "onnx", "int")


def scalar_types() -> st.SearchStrategy[ScalarType]:
    return st.sampled_from(SCALAR_NAMES).map(ScalarType)


@st.composite
def quant_types(draw, axis: Optional[int] = None, axis_size: Optional[int] = None) -> UniformQuantType:
    """A `!quant.uniform`: per tensor, or per axis `axis` with `axis_size` entries when both are given; sometimes a
    narrow storage range; scales any positive finite float64 (subnormals and huge values included)."""
    storage = ScalarType(draw(st.sampled_from(QUANT_STORAGE)))
    lo, hi = storage.min, storage.max
    storage_min = storage_max = None
    if draw(st.booleans()):
        storage_min = draw(st.integers(lo, hi))
        storage_max = draw(st.integers(storage_min, hi))
    n = 1 if axis is None else axis_size
    scales = draw(st.lists(st.floats(min_value=0.0, exclude_min=True, allow_infinity=False, allow_nan=False),
                           min_size=n, max_size=n))
    zero_points = draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
    expressed = ScalarType(draw(st.sampled_from(("f32", "f16", "f64"))))
    return UniformQuantType(storage, tuple(scales), tuple(zero_points), axis, storage_min, storage_max, expressed)


@st.composite
def tensor_types(draw, max_rank: int = 4, max_dim: int = 4, quant: Optional[bool] = None) -> TensorType:
    """A ranked tensor type (rank 0 included) with a scalar or quant element; per-axis quant types have one scale
    per index of their axis.  `quant=True/False` forces the element kind."""
    shape = tuple(draw(st.lists(st.integers(0, max_dim), max_size=max_rank)))
    use_quant = draw(st.booleans()) if quant is None else quant
    if not use_quant:
        return TensorType(shape, draw(scalar_types()))
    if shape and draw(st.booleans()):
        axis = draw(st.integers(0, len(shape) - 1))
        return TensorType(shape, draw(quant_types(axis=axis, axis_size=shape[axis])))
    return TensorType(shape, draw(quant_types()))


_SPECIAL_FLOATS = (float("nan"), -0.0, 0.0, float("inf"), float("-inf"), 1.5, -2.0, 1e-45, 3.4e38)


@st.composite
def arrays(draw, dtype, shape) -> np.ndarray:
    """An array of exactly `dtype` and `shape`: random bit patterns (any NaN payload, -0.0, inf) or special
    values; bool arrays hold only 0/1 bytes."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64))
    if dtype.kind == "b":
        return np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=bool).reshape(shape)
    if dtype.kind == "f" and draw(st.booleans()):
        values = draw(st.lists(st.sampled_from(_SPECIAL_FLOATS), min_size=size, max_size=size))
        with np.errstate(over="ignore"):
            return np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
    raw = draw(st.binary(min_size=size * dtype.itemsize, max_size=size * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


@st.composite
def dense_arrays(draw) -> np.ndarray:
    dtype = ScalarType(draw(st.sampled_from(SCALAR_NAMES))).np_dtype
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    return draw(arrays(dtype, shape))


_float_values = st.floats(allow_nan=True, allow_infinity=True)
_awkward_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | \
    st.sampled_from(['"', "\\", "a\nb", "tab\there", "}", "loc(\"x\")", "%0", "/conv1/Conv", ""])


def attr_values(attr_def: AttrDef) -> st.SearchStrategy:
    """Values of one declared attribute (its choices, if it has any)."""
    if attr_def.choices is not None:
        return st.sampled_from(attr_def.choices)
    kind = attr_def.kind
    if kind == "int":
        return st.integers(-(1 << 63), (1 << 63) - 1)
    if kind == "float":
        return _float_values
    if kind == "bool":
        return st.booleans()
    if kind == "str":
        return _awkward_text
    if kind == "ints":
        return st.lists(st.integers(-(1 << 40), 1 << 40), max_size=6)
    if kind == "floats":
        return st.lists(_float_values, max_size=6)
    if kind == "dense":
        return dense_arrays()
    if kind == "type":
        return st.one_of(tensor_types(), scalar_types(), quant_types())
    raise ValueError(f"no strategy for attribute kind {kind!r}")


# Names: valid identifiers (some repeated, to exercise de-duplication), invalid ones, and none.
value_names = st.one_of(st.none(), st.sampled_from(["x", "w0", "conv_out", "a.b", "v$1", "_"]),
                        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True),
                        st.sampled_from(["1abc", "a b", "", "%x", "名前", "0"]))
module_names = st.one_of(st.sampled_from(["resnet8", "m", "model-v2.onnx"]), _awkward_text)


def default_op_names() -> Sequence[str]:
    """Every declared op of the built-in dialects but the structural qir.* ops (which modules() adds itself)."""
    return tuple(sorted(name for name, d in OPS.items()
                        if d.dialect in BUILTIN_DIALECTS and name not in STRUCTURE_OPS))


@st.composite
def modules(draw, max_ops: int = 8, op_names: Optional[Sequence[str]] = None) -> Module:
    """A random well-formed module (see the module docstring): 1-3 inputs, up to `max_ops` constants and ops drawn
    from `op_names` (default: all built-in ops), 1-2 outputs."""
    op_names = tuple(op_names) if op_names is not None else default_op_names()
    module = Module(draw(module_names))
    values = []
    for _ in range(draw(st.integers(1, 3))):
        values.append(input_op(module, draw(_awkward_text), draw(tensor_types()), loc=draw(_awkward_text)))
    for _ in range(draw(st.integers(0, max_ops))):
        if draw(st.integers(0, 3)) == 0:
            t = draw(tensor_types())
            values.append(const_op(module, draw(arrays(t.storage.np_dtype, t.shape)), t,
                                   loc=draw(_awkward_text), name=draw(value_names)))
            continue
        opdef = OPS[draw(st.sampled_from(op_names))]
        operands = []
        for operand in opdef.operands:
            if operand.variadic:
                count = draw(st.integers(0, 3))
            elif operand.optional:
                count = draw(st.integers(0, 1))
            else:
                count = 1
            operands += [draw(st.sampled_from(values)) for _ in range(count)]
            if count == 0 and (operand.optional or operand.variadic):
                break  # optional operands may only be left out at the end
        n_results = draw(st.integers(1, 3)) if opdef.variadic_results else len(opdef.results)
        attrs = {}
        for name, attr_def in sorted(opdef.attrs.items()):
            if attr_def.required or draw(st.booleans()):
                attrs[name] = draw(attr_values(attr_def))
        op = module.create(opdef.name, operands, [draw(tensor_types()) for _ in range(n_results)], attrs,
                           draw(_awkward_text), [draw(value_names) for _ in range(n_results)])
        values += op.results
    for _ in range(draw(st.integers(1, 2))):
        output_op(module, draw(_awkward_text), draw(st.sampled_from(values)), loc=draw(_awkward_text))
    return module
