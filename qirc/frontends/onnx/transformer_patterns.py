"""Importing the float parts of a Brevitas transformer block (DESIGN.md section 7).

Brevitas 0.13.4 leaves LayerNorm, GELU and softmax in float between quantizers.  Its exports spell them in three ways,
all imported as the canonical ops `onnx.LayerNormalization`, `onnx.Gelu` and `onnx.Softmax`:

    opset 13 (QCDQ)     x -> ReduceMean -> Sub(x, .) -> Pow(., 2) -> ReduceMean -> Add(eps) -> Sqrt -> Div(Sub, .)
                        [-> Mul(gamma)] [-> Add(beta)]                         ->  onnx.LayerNormalization
                        x -> Div(sqrt 2) -> Erf -> Add(1) -> Mul(x, .) -> Mul(0.5)  ->  onnx.Gelu
                        GELU's tanh form (x*x*x*0.044715 + x, *sqrt(2/pi), Tanh, +1, *x, *0.5)  ->  onnx.Gelu tanh
    opset >= 17 / 20    LayerNormalization, Gelu                                 ->  the same ops

The chains are found once, before the walk (`find_fusions`): every node of a chain is then skipped and the canonical
op is created at the chain's last node.  A chain is fused only when nothing outside it reads an intermediate result.

QuantMultiheadAttention adds data movement with constant parameters that is imported as such: the Slices that split
the packed in-projection into q, k and v (their bounds come from Shape/Gather/Add/Div/Mul arithmetic that the
importer folds), the class token's Expand to the batch size (an identity at the exported batch size) and a token
Gather (`x[:, 0]`).  Pow, Sqrt, Erf and Tanh are read only inside these chains or on constants.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
from ... import _onnx as onnx  # onnx's protobufs without its 1 s import (see qirc/_onnx.py)
from ..._onnx import helper, numpy_helper

from .patterns import Const, FloatVal

F32 = np.float32


@dataclass
class Fusion:
    """A float chain imported as one canonical op, created when the walk reaches `nodes[-1]`."""

    op_name: str                         # "onnx.LayerNormalization" or "onnx.Gelu"
    nodes: List[onnx.NodeProto]
    x: str                               # the chain's data input
    params: List[str] = field(default_factory=list)   # further operands (LayerNorm's Scale and B)
    attrs: Dict[str, object] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return self.nodes[-1].output[0]


class _Graph:
    """What the chain matcher reads: producers, consumers and the values of constant tensors."""

    def __init__(self, index):
        self.index = index
        self.producer: Dict[str, onnx.NodeProto] = {}
        for node in index.nodes:
            for o in node.output:
                if o:
                    self.producer[o] = node
        self._const: Dict[str, Optional[np.ndarray]] = {}
        self.outputs = set(index.output_names)

    def consumers(self, name: str) -> List[onnx.NodeProto]:
        return self.index.consumers.get(name, [])

    def only_consumer(self, name: str, op_type: str) -> Optional[onnx.NodeProto]:
        users = self.consumers(name)
        if len(users) == 1 and users[0].op_type == op_type and users[0].domain in ("", "ai.onnx") and \
                name not in self.outputs:
            return users[0]
        return None

    def const(self, name: str) -> Optional[np.ndarray]:
        """The value of `name` when it is an initializer, a Constant, or an Identity / Cast of one."""
        if name in self._const:
            return self._const[name]
        value = None
        if name in self.index.initializers:
            value = self.index.initializers[name]
        elif name in self.producer:
            node = self.producer[name]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant" and "value" in attrs:
                value = numpy_helper.to_array(attrs["value"])
            elif node.op_type == "Constant" and "value_float" in attrs:
                value = np.array(attrs["value_float"], F32)
            elif node.op_type in ("Identity", "Cast") and node.input:
                value = self.const(node.input[0])
        self._const[name] = value
        return value

    def scalar(self, name: str) -> Optional[float]:
        value = self.const(name)
        if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.floating):
            return None
        return float(value.reshape(-1)[0])

    def constant_derived(self, name: str, seen=None) -> bool:
        """Whether `name` depends on no graph input (initializers, Constants and ops on them, quantizers included)."""
        if self.const(name) is not None:
            return True
        node = self.producer.get(name)
        if node is None:
            return False
        seen = set() if seen is None else seen
        if id(node) in seen:
            return True
        seen.add(id(node))
        return all(not i or self.constant_derived(i, seen) for i in node.input)

    def reduce_axes(self, node: onnx.NodeProto, opset: int) -> Optional[List[int]]:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("keepdims", 1) != 1:
            return None
        if opset >= 18:
            if len(node.input) < 2 or not node.input[1]:
                return None
            axes = self.const(node.input[1])
            return None if axes is None else [int(a) for a in axes.reshape(-1)]
        return [int(a) for a in attrs["axes"]] if "axes" in attrs else None


def _other(node: onnx.NodeProto, name: str) -> Optional[str]:
    """The input of a binary node that is not `name` (None when `name` is not exactly one of its two inputs)."""
    ins = list(node.input[:2])
    if len(ins) != 2 or ins.count(name) != 1:
        return None
    return ins[1] if ins[0] == name else ins[0]


def _match_layernorm(g: _Graph, r1: onnx.NodeProto, opset: int) -> Optional[Fusion]:
    x = r1.input[0]
    rank = len(g.index.shapes.get(x) or ())
    axes = g.reduce_axes(r1, opset)
    if not rank or not axes:
        return None
    axes = sorted(a + rank if a < 0 else a for a in axes)
    if axes != list(range(rank - len(axes), rank)):
        return None  # LayerNorm normalises trailing axes only
    sub = g.only_consumer(r1.output[0], "Sub")
    if sub is None or list(sub.input[:2]) != [x, r1.output[0]] or sub.output[0] in g.outputs:
        return None
    users = g.consumers(sub.output[0])
    pow_ = next((n for n in users if n.op_type == "Pow"), None)
    div = next((n for n in users if n.op_type == "Div"), None)
    if len(users) != 2 or pow_ is None or div is None or pow_.input[0] != sub.output[0] or \
            div.input[0] != sub.output[0] or g.scalar(pow_.input[1]) != 2.0:
        return None
    r2 = g.only_consumer(pow_.output[0], "ReduceMean")
    if r2 is None or g.reduce_axes(r2, opset) is None or \
            sorted(a + rank if a < 0 else a for a in g.reduce_axes(r2, opset)) != axes:
        return None
    add_eps = g.only_consumer(r2.output[0], "Add")
    eps_name = _other(add_eps, r2.output[0]) if add_eps is not None else None
    eps = g.scalar(eps_name) if eps_name else None
    if eps is None:
        return None
    sqrt = g.only_consumer(add_eps.output[0], "Sqrt")
    if sqrt is None or g.only_consumer(sqrt.output[0], "Div") is not div or div.input[1] != sqrt.output[0]:
        return None
    nodes = [r1, sub, pow_, r2, add_eps, sqrt, div]
    params: List[str] = []
    mul = g.only_consumer(div.output[0], "Mul")
    gamma = _other(mul, div.output[0]) if mul is not None else None
    if gamma is not None and g.constant_derived(gamma):
        nodes.append(mul)
        params.append(gamma)
        add = g.only_consumer(mul.output[0], "Add")
        beta = _other(add, mul.output[0]) if add is not None else None
        if beta is not None and g.constant_derived(beta):
            nodes.append(add)
            params.append(beta)
    return Fusion("onnx.LayerNormalization", nodes, x, params, {"axis": rank - len(axes), "epsilon": eps})


def _match_gelu(g: _Graph, erf: onnx.NodeProto) -> Optional[Fusion]:
    """Div(x, sqrt 2) | Mul(x, 1/sqrt 2) -> Erf -> Add(1) -> Mul(x, .) -> Mul(0.5), Mul operands in either order."""
    head = g.producer.get(erf.input[0])
    if head is None or head.op_type not in ("Div", "Mul") or len(g.consumers(head.output[0])) != 1 or \
            head.output[0] in g.outputs:
        return None
    x, c = head.input[0], g.scalar(head.input[1])
    if c is None and head.op_type == "Mul":
        x, c = head.input[1], g.scalar(head.input[0])
    factor = None if c is None else (1 / c if head.op_type == "Div" else c)
    if factor is None or not math.isclose(factor, 1 / math.sqrt(2), rel_tol=1e-6):
        return None
    tail = _gelu_tail(g, erf, x)
    if tail is None:
        return None
    return Fusion("onnx.Gelu", [head, erf] + tail, x, [], {"approximate": "none"})


def _gelu_tail(g: _Graph, inner: onnx.NodeProto, x: str) -> Optional[List[onnx.NodeProto]]:
    """The end both GELU forms share after their Erf or Tanh: -> Add(1) -> Mul(x, .) -> Mul(0.5), operands in either
    order; the three nodes, or None."""
    add = g.only_consumer(inner.output[0], "Add")
    one = _other(add, inner.output[0]) if add is not None else None
    if one is None or g.scalar(one) != 1.0:
        return None
    mul = g.only_consumer(add.output[0], "Mul")
    if mul is None or _other(mul, add.output[0]) != x:
        return None
    half = g.only_consumer(mul.output[0], "Mul")
    if half is None or _mul_by(g, half, 0.5) != mul.output[0]:
        return None
    return [add, mul, half]


def _mul_by(g: _Graph, node: Optional[onnx.NodeProto], constant: float) -> Optional[str]:
    """The other input of `node` when it is a Mul by a scalar constant close to `constant`, else None."""
    if node is None or node.op_type != "Mul" or len(node.input) != 2:
        return None
    for i in (0, 1):
        c = g.scalar(node.input[i])
        if c is not None and math.isclose(c, constant, rel_tol=1e-6):
            return node.input[1 - i]
    return None


def _match_gelu_tanh(g: _Graph, tanh: onnx.NodeProto) -> Optional[Fusion]:
    """GELU's tanh form as torch exports it: x*x -> *x -> *0.044715 -> x + . -> *sqrt(2/pi) -> Tanh -> +1 -> x * .
    -> *0.5 (operands of Mul and Add in either order)."""
    m4 = g.producer.get(tanh.input[0])
    a = _mul_by(g, m4, math.sqrt(2 / math.pi))
    add = g.producer.get(a) if a is not None else None
    if add is None or add.op_type != "Add" or len(g.consumers(m4.output[0])) != 1:
        return None
    for x, cubed in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        m3 = g.producer.get(cubed)
        m2_out = _mul_by(g, m3, 0.044715)
        m2 = g.producer.get(m2_out) if m2_out is not None else None
        m1_out = _other(m2, x) if m2 is not None and m2.op_type == "Mul" else None
        m1 = g.producer.get(m1_out) if m1_out is not None else None
        if m1 is not None and m1.op_type == "Mul" and list(m1.input[:2]) == [x, x]:
            break
    else:
        return None
    inner = [m1, m2, m3, add, m4]
    if any(len(g.consumers(n.output[0])) != 1 or n.output[0] in g.outputs for n in inner):
        return None
    tail = _gelu_tail(g, tanh, x)
    if tail is None:
        return None
    return Fusion("onnx.Gelu", inner + [tanh] + tail, x, [], {"approximate": "tanh"})


#: the op types a chain is recognised from
_CHAIN_HEADS = ("ReduceMean", "Erf", "Tanh")


def find_fusions(index, opset: int) -> Dict[int, Fusion]:
    """{id(node): its Fusion} for every node of every LayerNorm and GELU chain in the graph."""
    kinds = getattr(index, "op_kinds", None)
    if kinds is not None and not any(op_type in _CHAIN_HEADS for _, op_type in kinds):
        return {}  # (most models: no scan, no index of producers)
    heads = [node for node in index.nodes if node.op_type in _CHAIN_HEADS]
    if not heads:
        return {}
    g = _Graph(index)
    found: Dict[int, Fusion] = {}
    for node in heads:
        if id(node) in found or node.domain not in ("", "ai.onnx"):
            continue
        fusion = None
        if node.op_type == "ReduceMean":
            fusion = _match_layernorm(g, node, opset)
        elif node.op_type == "Erf":
            fusion = _match_gelu(g, node)
        elif node.op_type == "Tanh":
            fusion = _match_gelu_tanh(g, node)
        if fusion is not None and not any(id(n) in found for n in fusion.nodes):
            for n in fusion.nodes:
                found[id(n)] = fusion
    return found


#: ops imported on non-constant data only when these inputs (their parameters) are constant
CONSTANT_PARAMETERS = {"Gather": (1,), "Slice": (1, 2, 3, 4), "Expand": (1,), "Split": (1,)}


def parameters_constant(node: onnx.NodeProto, constant) -> bool:
    """Whether the parameter inputs of `node` (CONSTANT_PARAMETERS) are all in the set of constant tensors."""
    return all(not node.input[i] or node.input[i] in constant
               for i in CONSTANT_PARAMETERS.get(node.op_type, ()) if i < len(node.input))


class TransformerImport:
    """Mixin of `OnnxImporter`: the transformer chains and the ops Brevitas' attention exports add."""

    _fusions: Optional[Dict[int, Fusion]] = None

    @property
    def fusions(self) -> Dict[int, Fusion]:
        if self._fusions is None:
            self._fusions = find_fusions(self.g, self.opset or 13)
        return self._fusions

    def fused_handler(self, node: onnx.NodeProto):
        """The handler of a node inside a fused chain (None for other nodes): nothing, or the fused op at its end."""
        fusion = self.fusions.get(id(node))
        if fusion is None:
            return None
        if node is not fusion.nodes[-1]:
            return lambda n: None
        return lambda n: self._emit_fusion(fusion)

    def _emit_fusion(self, fusion: Fusion) -> None:
        last = fusion.nodes[-1]
        labels = [self.g.label(n) for n in fusion.nodes]
        prefix = os.path.commonprefix(labels)
        loc = prefix.rsplit("/", 1)[0] if "/" in prefix and prefix.rsplit("/", 1)[0] else labels[-1]
        operands = [self.float_value(fusion.x)] + [self.float_value(p) for p in fusion.params]
        if fusion.op_name == "onnx.LayerNormalization" and not fusion.params:  # no affine part: Scale = 1
            norm = self.shape(fusion.x)[int(fusion.attrs["axis"]):]
            operands.append(self.float_const(np.ones(norm, F32)))
        value = self.module.create(fusion.op_name, operands, [self.out_type(last)], dict(fusion.attrs), loc).result
        self.env[last.output[0]] = FloatVal(value)

    # ----- opset-17 LayerNormalization, opset-20 Gelu -----------------------------------------------------------
    def _op_LayerNormalization(self, node):
        a = self.attrs(node)
        if any(o and self.g.consumers.get(o) for o in node.output[1:]) or \
                any(o in self.g.output_names for o in node.output[1:] if o):
            raise self.error("the Mean / InvStdDev outputs of LayerNormalization are used; only Y is supported")
        rank = len(self.shape(node.input[0]))
        axis = _norm(int(a.get("axis", -1)), rank)
        inputs = [n for n in node.input[:3] if n]
        self.emit_float_op(node, "onnx.LayerNormalization", inputs,
                           {"axis": axis, "epsilon": float(a.get("epsilon", 1e-5))})

    def _op_Gelu(self, node):
        approximate = self.attrs(node).get("approximate", b"none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
        if approximate not in ("none", "tanh"):
            raise self.error(f"Gelu approximate '{approximate}' is not supported")
        self.emit_float_op(node, "onnx.Gelu", node.input[:1], {"approximate": approximate})

    # ----- data movement with constant parameters -----------------------------------------------------------------
    def _op_Gather(self, node):
        def emit():
            indices = self.const_input(node, 1, "Gather indices")
            if not np.issubdtype(np.asarray(indices).dtype, np.integer) or np.asarray(indices).ndim > 1:
                raise self.error("Gather needs constant integer indices of rank 0 or 1")
            shape = self.shape(node.input[0])
            axis = _norm(int(self.attrs(node).get("axis", 0)), len(shape))
            flat = [int(i) for i in np.asarray(indices).reshape(-1)]
            self.emit_float_op(node, "onnx.Gather", node.input[:1],
                               {"axis": axis, "indices": [i + shape[axis] if i < 0 else i for i in flat],
                                "scalar": np.asarray(indices).ndim == 0})
        self.fold_or(node, emit)

    def _op_Slice(self, node):
        def emit():
            shape = self.shape(node.input[0])
            if self.opset is not None and self.opset < 10:
                a = self.attrs(node)
                starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
            else:
                starts = self.const_input(node, 1, "Slice starts")
                ends = self.const_input(node, 2, "Slice ends")
                axes = self.const_input(node, 3, "Slice axes", required=False)
                steps = self.const_input(node, 4, "Slice steps", required=False)
            starts = [int(v) for v in np.asarray(starts).reshape(-1)]
            ends = [int(v) for v in np.asarray(ends).reshape(-1)]
            axes = list(range(len(starts))) if axes is None else \
                [_norm(int(v), len(shape)) for v in np.asarray(axes).reshape(-1)]
            steps = [1] * len(starts) if steps is None else [int(v) for v in np.asarray(steps).reshape(-1)]
            resolved = {"starts": [], "ends": [], "axes": [], "steps": []}
            for s, e, ax, st in zip(starts, ends, axes, steps):
                if st < 1:
                    raise self.error(f"Slice with step {st} on axis {ax} is not supported (only positive steps)")
                start, stop, _ = slice(s, max(min(e, 2 ** 62), -2 ** 62), st).indices(shape[ax])
                for key, v in zip(resolved, (start, max(start, stop), ax, st)):
                    resolved[key].append(v)
            self.emit_float_op(node, "onnx.Slice", node.input[:1], resolved)
        self.fold_or(node, emit)

    def _op_Split(self, node):
        """One onnx.Slice per output along the axis (torch.split / torch.chunk; the sizes from the `split` input,
        the opset-11 attribute, or equal parts)."""
        shape = self.shape(node.input[0])
        a = self.attrs(node)
        axis = _norm(int(a.get("axis", 0)), len(shape))
        sizes = a.get("split")
        if len(node.input) > 1 and node.input[1]:
            sizes = self.const_input(node, 1, "Split sizes")
        outputs = list(node.output)
        if sizes is None:
            parts = len(outputs)
            step = -(-shape[axis] // parts)  # opset 18's num_outputs: the last part may be smaller
            sizes = [min(step, shape[axis] - i * step) for i in range(parts)]
        sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
        if len(sizes) != len(outputs) or sum(sizes) != shape[axis] or min(sizes) < 0:
            raise self.error(f"Split sizes {sizes} do not split axis {axis} of size {shape[axis]} into "
                             f"{len(outputs)} outputs")
        source = self.state(node.input[0])
        start = 0
        for i, (name, size) in enumerate(zip(outputs, sizes)):
            if name:
                if isinstance(source, Const):
                    self.env[name] = Const(np.take(source.array, np.arange(start, start + size), axis=axis))
                else:
                    attrs = {"starts": [start], "ends": [start + size], "axes": [axis], "steps": [1]}
                    value = self.module.create("onnx.Slice", [self.float_value(node.input[0])],
                                               [self.out_type(node, i)], attrs, f"{self.g.label(node)}/{i}").result
                    self.env[name] = FloatVal(value)
            start += size

    def _fold_math_only(self, node):
        arrays = []
        for name in node.input:
            s = self.state(name)
            if name and not isinstance(s, Const):
                raise self.error(f"{node.op_type} of a non-constant tensor is supported only inside a LayerNorm or "
                                 f"GELU chain")
            arrays.append(s.array if name else None)
        self.env[node.output[0]] = Const(fold_math(node.op_type, arrays))

    _op_Pow = _op_Sqrt = _op_Erf = _op_Tanh = _fold_math_only

    def _op_Expand(self, node):
        def emit():
            if tuple(self.g.shape(node.output[0], node)) != tuple(self.shape(node.input[0])):
                raise self.error(f"Expand of a non-constant tensor from {self.shape(node.input[0])} to "
                                 f"{self.g.shape(node.output[0], node)} is not supported")
            # an Expand to the shape it already has (the class token to batch size 1) moves nothing
            self.env[node.output[0]] = self.env[node.input[0]]
        self.fold_or(node, emit)


def _norm(axis: int, rank: int) -> int:
    return int(axis) + rank if int(axis) < 0 else int(axis)


def fold_math(op_type: str, arrays) -> np.ndarray:
    """Constant folding of the float math that only appears inside the fused chains (Pow, Sqrt, Erf, Tanh)."""
    x = np.asarray(arrays[0])
    if op_type == "Pow":
        return np.power(x, arrays[1]).astype(x.dtype)
    if op_type == "Sqrt":
        return np.sqrt(x).astype(x.dtype)
    if op_type == "Erf":
        return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)
    if op_type == "Tanh":
        return np.tanh(x).astype(x.dtype)
    raise ValueError(op_type)


__all__ = ["CONSTANT_PARAMETERS", "Fusion", "find_fusions", "parameters_constant", "TransformerImport",
           "fold_math"]
