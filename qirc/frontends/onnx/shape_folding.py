"""Shapes that ONNX shape inference leaves unknown because they come from shape arithmetic on constant shapes.

PyTorch's TorchScript exporter computes some shapes in the graph: Brevitas' QuantMultiheadAttention splits its
packed in-projection with Slices whose ends are Shape -> Gather -> Add -> Div -> Mul of the projection's output, and
`torch.flatten(x, 1, 2)` reshapes to Shape -> Slice -> Concat.  `onnx.shape_inference` (even with data propagation)
does not evaluate all of these, so every tensor downstream has an unknown shape.  The input shapes are static, so
these values are constants: `refine_shapes` evaluates every node whose inputs are all known integer constants (Shape
of a tensor with a static shape, Constants, integer initializers) with onnx's reference evaluator, feeds the values
back as initializers and runs shape inference again, until nothing changes.  Only `index.shapes` is filled in; the
importer folds the same nodes itself.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
from ... import _onnx as onnx  # onnx's protobufs without its 1 s import (see qirc/_onnx.py)
from ..._onnx import helper, numpy_helper

from .loader import DEFAULT_DOMAINS, GraphIndex, _infer_shapes, default_opset

#: shape-arithmetic ops evaluated here (all on small integer or boolean tensors)
_FOLDABLE = ("Gather", "Slice", "Concat", "Add", "Sub", "Mul", "Div", "Unsqueeze", "Squeeze", "Cast", "Identity",
             "Equal", "Where", "ConstantOfShape", "Expand", "Range", "Reshape", "Constant", "Min", "Max", "Neg",
             "Transpose")


def _unknown(index: GraphIndex) -> int:
    return sum(1 for n in index.nodes for o in n.output if o and index.shapes.get(o) is None)


def refine_shapes(index: GraphIndex, rounds: int = 4) -> None:
    """Fill in `index.shapes` that depend on constant shape arithmetic (see the module docstring)."""
    if index.all_static:
        return  # the model's types are complete (nothing to count on a large graph)
    missing = _unknown(index)
    for _ in range(rounds):
        if not missing:
            return
        values = _constant_values(index)
        if not values:
            return
        model = onnx.ModelProto()
        model.CopyFrom(index.model)
        graph = model.graph
        kept = [n for n in graph.node if not any(o in values for o in n.output)]
        del graph.node[:]
        graph.node.extend(kept)
        produced = {o for n in kept for o in n.output}
        graph.initializer.extend(numpy_helper.from_array(np.asarray(v), name) for name, v in values.items()
                                 if name not in produced)
        probe = GraphIndex(model, index.filename)
        probe.initializers = dict(index.initializers)
        try:
            _infer_shapes(probe)
        except Exception:  # shape inference may reject the rewritten graph; then the shapes stay unknown
            return
        for name, shape in probe.shapes.items():
            if shape is not None and index.shapes.get(name) is None:
                index.shapes[name] = shape
        now = _unknown(index)
        if now == missing:
            return
        missing = now


def _constant_values(index: GraphIndex) -> Dict[str, np.ndarray]:
    """Values of the integer shape-arithmetic tensors that can be computed from static shapes and constants."""
    known: Dict[str, np.ndarray] = {k: v for k, v in index.initializers.items()
                                    if not np.issubdtype(v.dtype, np.floating) and v.size <= 64}
    out: Dict[str, np.ndarray] = {}
    for node in index.nodes:
        if node.domain not in DEFAULT_DOMAINS or not node.output:
            continue
        if node.op_type == "Shape":
            shape = index.shapes.get(node.input[0])
            if shape is None:
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            value = np.array(shape, np.int64)[attrs.get("start", 0):attrs.get("end", None)]
        elif node.op_type in _FOLDABLE and all(not i or i in known for i in node.input):
            try:
                value = _evaluate(node, known, default_opset(index.model) or 13)
            except Exception:
                continue
            if value is None or np.issubdtype(value.dtype, np.floating) or value.size > 64:
                continue
        else:
            continue
        known[node.output[0]] = value
        out[node.output[0]] = value
    return out


def _evaluate(node: onnx.NodeProto, known: Dict[str, np.ndarray], opset: int):
    from onnx.reference import ReferenceEvaluator

    names = [i for i in node.input if i]
    inits = [numpy_helper.from_array(np.asarray(known[i]), i) for i in names]
    outputs = [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, None)]
    graph = helper.make_graph([node], "fold", [], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
