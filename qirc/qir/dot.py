"""A module as a Graphviz `dot` graph, for looking at a model (`qirc MODEL --emit dot`, `--dump-ir DIR --format dot`).

    digraph "resnet8" {
      rankdir=TB;
      n0 [label="input \\"input\\"\\n1x3x32x32 i8 s=0.0078 z=0", shape=invhouse, ...];
      n4 [label="int.conv\\n/conv1/Conv\\n#1 const 16x3x3x3 i8 s=0.0015 z=0", ...];
      n0 -> n4 [label="1x3x32x32 i8 s=0.0078 z=0"];
      ...
    }

One node per op, labelled with the op name (dialect prefix included) and its location (the source node name); an edge
per use of a value, labelled with the value's shape and type in a short form (`i8 s=0.0078 z=0`; per-channel scales
as their range and count, `i8 s=[0.0012..0.0098] (16ch) z=0`).  Constants (and dequantized constants, `quant.dcast` of a
`qir.const`) get no node of their own: they are folded into the label of every op that reads them (`#operand const
shape type`, with the value itself when it has a single element), which keeps MobileNetV2-sized graphs
readable.  Graph inputs and outputs have their own shapes (invhouse / house) and colours, so that the interface
stands out.  The text depends only on the module (ops in `Module.ops()`
order, node ids numbered in that order), so the same module always gives the same text.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from .ir import Module, Operation, Value
from .types import TensorType, UniformQuantType

__all__ = ["print_dot", "format_type_short", "format_quant_short"]

#: fill colour per dialect, so that float / quant / integer regions of a half-lowered graph are told apart at a glance
_DIALECT_COLOURS = {"onnx": "#dbe9f6", "quant": "#fde9c9", "int": "#dff0d8", "qir": "#eeeeee"}
_INPUT_STYLE = 'shape=invhouse, fillcolor="#c9e3c3"'
_OUTPUT_STYLE = 'shape=house, fillcolor="#f4cccc"'


def print_dot(module: Module) -> str:
    """The module as Graphviz dot text (see the module docstring); deterministic for a given module."""
    ops = module.ops()
    node_ids: Dict[int, str] = {}
    for op in ops:
        if not _is_constant(op):
            node_ids[id(op)] = f"n{len(node_ids)}"
    lines: List[str] = [
        f"digraph {_quote(module.name)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=8, color="#555555"];',
    ]
    edges: List[str] = []
    for op in ops:
        if _is_constant(op):
            continue
        nid = node_ids[id(op)]
        lines.append(f"  {nid} [label={_quote(_node_label(op))}, {_node_style(op)}];")
        for value in op.operands:
            if _is_constant(value.owner):
                continue
            source = node_ids[id(value.owner)]
            edges.append(f"  {source} -> {nid} [label={_quote(_edge_label(value))}];")
    lines.extend(edges)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _is_constant(op: Operation) -> bool:
    """A `qir.const`, or a `quant.dcast` of one (a dequantized weight or bias): folded into its readers' labels."""
    if op.name == "qir.const":
        return True
    return op.name == "quant.dcast" and op.operands[0].owner.name == "qir.const"


# ----- labels ------------------------------------------------------------------------------------------------------
def _node_label(op: Operation) -> str:
    if op.name in ("qir.input", "qir.output"):
        kind = "input" if op.name == "qir.input" else "output"
        name = op.attrs.get("name", "")
        value = op.results[0] if op.name == "qir.input" else op.operands[0]
        return f"{kind} \"{name}\"\n{format_type_short(value.type)}"
    lines = [op.name]
    if op.loc:
        lines.append(op.loc)
    for index, value in enumerate(op.operands):
        if _is_constant(value.owner):
            lines.append(f"#{index} {_const_summary(value)}")
    return "\n".join(lines)


def _node_style(op: Operation) -> str:
    if op.name == "qir.input":
        return _INPUT_STYLE
    if op.name == "qir.output":
        return _OUTPUT_STYLE
    return f'fillcolor="{_DIALECT_COLOURS.get(op.dialect, "#ffffff")}"'


def _edge_label(value: Value) -> str:
    label = format_type_short(value.type)
    if len(value.owner.results) > 1:
        label = f"#{value.index} {label}"
    return label


def _const_summary(value: Value) -> str:
    """`const 16x3x3x3 i8 s=0.0015 z=0`, `dcast(const 16 i32 s=1.2e-05 z=0)`, `const 3 : i64` (one element)."""
    if value.owner.name == "quant.dcast":
        return f"dcast({_const_summary(value.owner.operands[0])})"
    array = np.asarray(value.owner.attrs.get("value"))
    text = format_type_short(value.type)
    if array.size == 1:
        item = array.reshape(-1)[0]
        shown = f"{float(item):.4g}" if array.dtype.kind == "f" else str(int(item))
        return f"const {shown} : {text}"
    return f"const {text}"


def format_type_short(t: TensorType) -> str:
    """`1x16x32x32 i8 s=0.0078 z=0`: shape (omitted for rank 0), then the element type in short form."""
    element = t.element
    elem = format_quant_short(element) if isinstance(element, UniformQuantType) else str(element)
    shape = "x".join(str(d) for d in t.shape)
    return f"{shape} {elem}" if shape else elem


def format_quant_short(q: UniformQuantType) -> str:
    """`i8 s=0.0078 z=0`, `u8<0:127> s=0.0039 z=0`, `i8 s=[0.0012..0.0098] (16ch) z=0`: two significant digits,
    per-axis scales and zero points summarised by their range."""
    storage = str(q.storage)
    if q.narrow:
        storage += f"<{q.storage_min}:{q.storage_max}>"
    if not q.is_per_axis:
        return f"{storage} s={_num(q.scale)} z={q.zero_point}"
    scales = f"[{_num(min(q.scales))}..{_num(max(q.scales))}]" if len(set(q.scales)) > 1 else _num(q.scales[0])
    zps = q.zero_points
    zero = f"[{min(zps)}..{max(zps)}]" if len(set(zps)) > 1 else str(zps[0])
    return f"{storage} s={scales} ({len(q.scales)}ch) z={zero}"


def _num(x: float) -> str:
    return f"{x:.2g}"


def _quote(text: str) -> str:
    """A dot double-quoted string: backslashes and quotes escaped, newlines as dot's centred line break."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "")
    return '"' + escaped.replace("\n", "\\n") + '"'

