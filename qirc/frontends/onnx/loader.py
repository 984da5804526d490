"""Reading an ONNX file safely and checking the graph before anything is translated.

`load_model_proto` turns a path or a ModelProto into a ModelProto with its external data loaded, refusing files that
are not ONNX, external data that points outside the model's folder, and opsets older than 7.  `GraphIndex` checks the
graph itself (duplicate tensor names, dangling inputs, cycles), orders its nodes topologically and types every value
with one `onnx.shape_inference` pass.  Every problem is a one-line `FrontendError` naming the file and, where there is
one, the node.
"""
from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from ... import _onnx as onnx  # onnx's protobufs without its 1 s import (see qirc/_onnx.py)
from ..._onnx import numpy_helper

from ...qir.diagnostics import FrontendError

MIN_OPSET = 7
#: 4-bit ONNX element types (numpy dtypes from ml_dtypes) -> (the 8-bit numpy storage, min, max)
LOW_BIT_TYPES = {"int4": (np.int8, -8, 7), "uint4": (np.uint8, 0, 15)}
DEFAULT_DOMAINS = ("", "ai.onnx")
#: Custom-domain ops whose output has the shape of their first input; shape inference sees them as Identity.
SHAPE_PRESERVING_CUSTOM_OPS = ("Quant", "BipolarQuant", "Trunc")


def node_label(node: onnx.NodeProto, index: int) -> str:
    """The name diagnostics use for a node: its name, else its first output, else its position."""
    if node.name:
        return node.name
    if len(node.output) and node.output[0]:
        return f"{node.op_type}:{node.output[0]}"
    return f"{node.op_type}#{index}"


def load_model_proto(path_or_model: Union[str, os.PathLike, onnx.ModelProto]) -> Tuple[onnx.ModelProto, str]:
    """Return (model with external data loaded, file name for diagnostics)."""
    if isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
        filename = (model.graph.name or "<model>") + ".onnx"
        for tensor in _all_tensors(model):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise FrontendError(f"tensor '{tensor.name}' has external data; pass the file path instead of a "
                                    f"ModelProto so its data can be found", file=filename)
    else:
        path = os.fspath(path_or_model)
        filename = path
        if os.path.isdir(path):
            raise FrontendError("is a directory, not an ONNX file", file=filename)
        if not os.path.isfile(path):
            raise FrontendError("no such file", file=filename)
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as err:  # protobuf DecodeError, truncated file, wrong format
            raise FrontendError(f"not a readable ONNX model ({type(err).__name__}: {_first_line(err)})",
                                file=filename) from None
        _check_external_data(model, path, filename)
    _check_model_header(model, filename)
    return model, filename


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else "no detail"


def _all_tensors(model: onnx.ModelProto):
    """Initializers and Constant-node tensors of the main graph (subgraphs are refused later)."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def _check_external_data(model: onnx.ModelProto, path: str, filename: str) -> None:
    """Refuse external data outside the model's folder, then load it."""
    base = os.path.dirname(os.path.abspath(path))
    real_base = os.path.realpath(base)
    has_external = False
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        has_external = True
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location:
            raise FrontendError(f"tensor '{tensor.name}' has external data without a location", file=filename)
        target = os.path.realpath(os.path.join(real_base, location))
        if os.path.isabs(location) or os.path.commonpath([real_base, target]) != real_base:
            raise FrontendError(f"external data of tensor '{tensor.name}' points outside the model's folder "
                                f"('{location}')", file=filename)
        if not os.path.isfile(target):
            raise FrontendError(f"external data file '{location}' of tensor '{tensor.name}' does not exist",
                                file=filename)
    if has_external:
        try:
            from onnx.external_data_helper import load_external_data_for_model
            load_external_data_for_model(model, base)
        except Exception as err:
            raise FrontendError(f"cannot load external data ({type(err).__name__}: {_first_line(err)})",
                                file=filename) from None


def _check_model_header(model: onnx.ModelProto, filename: str) -> None:
    if not model.HasField("graph") or model.ir_version <= 0:
        raise FrontendError("not an ONNX model (no graph or no IR version; truncated or another format?)",
                            file=filename)
    if len(model.graph.node) == 0:
        raise FrontendError("the graph has no nodes", file=filename)
    if len(model.graph.output) == 0:
        raise FrontendError("the graph has no outputs", file=filename)
    opset = default_opset(model)
    if opset is None:
        raise FrontendError("the model imports no default-domain ONNX opset", file=filename)
    if opset < MIN_OPSET:
        raise FrontendError(f"opset {opset} is too old (qirc reads opset {MIN_OPSET} and later)", file=filename)


def default_opset(model: onnx.ModelProto) -> Optional[int]:
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    return None


@dataclass
class GraphIndex:
    """The checked graph: nodes in topological order, constants, real inputs, shapes and consumers by tensor name."""

    model: onnx.ModelProto
    filename: str
    nodes: List[onnx.NodeProto] = field(default_factory=list)  # topological order
    labels: Dict[int, str] = field(default_factory=dict)  # id(node) -> diagnostic name
    initializers: Dict[str, np.ndarray] = field(default_factory=dict)
    real_inputs: List[onnx.ValueInfoProto] = field(default_factory=list)
    consumers: Dict[str, List[onnx.NodeProto]] = field(default_factory=dict)
    output_names: List[str] = field(default_factory=list)
    shapes: Dict[str, Optional[Tuple[int, ...]]] = field(default_factory=dict)
    elem_types: Dict[str, int] = field(default_factory=dict)
    #: initializers stored as INT4 / UINT4 (held as int8 / uint8 arrays): name -> their integer range
    low_bit: Dict[str, Tuple[int, int]] = field(default_factory=dict)

    def label(self, node: onnx.NodeProto) -> str:
        return self.labels[id(node)]

    def error(self, message: str, node: Optional[onnx.NodeProto] = None) -> FrontendError:
        return FrontendError(message, file=self.filename, loc=self.label(node) if node is not None else None,
                             op=node.op_type if node is not None else None)

    def shape(self, name: str, node: onnx.NodeProto) -> Tuple[int, ...]:
        """The static shape of tensor `name` (produced or consumed by `node`), or a FrontendError."""
        shape = self.shapes.get(name)
        if shape is None:
            raise self.error(f"the shape of '{name}' is unknown or dynamic after shape inference", node)
        return shape


def index_graph(model: onnx.ModelProto, filename: str) -> GraphIndex:
    """Check the graph's structure, sort it and infer its shapes."""
    graph = model.graph
    index = GraphIndex(model, filename)
    # one list of node wrappers, used everywhere: protobuf may hand out a new wrapper per iteration
    all_nodes = list(graph.node)
    for i, node in enumerate(all_nodes):
        index.labels[id(node)] = node_label(node, i)
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise index.error("control flow with subgraphs is not supported", node)

    producers: Dict[str, onnx.NodeProto] = {}
    defined: Dict[str, str] = {}
    for init in graph.initializer:
        if init.name in defined:
            raise FrontendError(f"duplicate initializer name '{init.name}'", file=filename)
        defined[init.name] = "initializer"
        try:
            array = numpy_helper.to_array(init)
        except Exception as err:
            raise FrontendError(f"initializer '{init.name}' cannot be read ({_first_line(err)})",
                                file=filename) from None
        if array.dtype.name in LOW_BIT_TYPES:
            # a 4-bit integer fits int8 / uint8 exactly; the range is kept for the quantizer that reads it
            storage, lo, hi = LOW_BIT_TYPES[array.dtype.name]
            array = array.astype(storage)
            index.low_bit[init.name] = (lo, hi)
        index.initializers[init.name] = array
    input_names = set()
    for inp in graph.input:
        if inp.name in input_names:
            raise FrontendError(f"duplicate graph input name '{inp.name}'", file=filename)
        input_names.add(inp.name)
        if inp.name in index.initializers:
            continue  # an input with an initializer is a constant (old exporters list weights as inputs)
        defined[inp.name] = "graph input"
        index.real_inputs.append(inp)
    for node in all_nodes:
        for out in node.output:
            if not out:
                continue
            if out in defined or out in producers:
                first = (index.label(producers[out]) if out in producers else defined[out])
                raise index.error(f"tensor name '{out}' is defined twice (also by {first})", node)
            producers[out] = node

    for node in all_nodes:
        for name in node.input:
            if not name:
                continue
            if name not in producers and name not in defined:
                raise index.error(f"input '{name}' is not produced by any node, initializer or graph input", node)
            index.consumers.setdefault(name, []).append(node)
    for out in graph.output:
        if out.name not in producers and out.name not in defined:
            raise FrontendError(f"graph output '{out.name}' is not produced by any node or input", file=filename)
        index.output_names.append(out.name)

    index.nodes = _topological_order(all_nodes, producers, index)
    _infer_shapes(index)
    return index


def _topological_order(nodes, producers, index: GraphIndex) -> List[onnx.NodeProto]:
    """Kahn's algorithm, stable in file order; a cycle is an error naming a node on it."""
    position = {id(n): i for i, n in enumerate(nodes)}
    pending = {}
    for node in nodes:
        pending[id(node)] = len({id(producers[n]) for n in node.input if n in producers})
    ready = [position[id(n)] for n in nodes if pending[id(n)] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        seen = set()
        for out in node.output:
            for user in index.consumers.get(out, []) if out else []:
                if id(user) in seen:
                    continue
                seen.add(id(user))
                pending[id(user)] -= 1
                if pending[id(user)] == 0:
                    heapq.heappush(ready, position[id(user)])
    if len(order) != len(nodes):
        stuck = [n for n in nodes if pending[id(n)] > 0]
        names = ", ".join(index.label(n) for n in stuck[:4])
        raise index.error(f"the graph has a cycle (through {names})", stuck[0])
    return order


def _infer_shapes(index: GraphIndex) -> None:
    """One onnx.shape_inference pass over the whole model; custom quantizers are seen as Identity."""
    model = index.model
    custom = [n for n in model.graph.node if n.domain not in DEFAULT_DOMAINS]
    saved = []
    for node in custom:
        if node.op_type in SHAPE_PRESERVING_CUSTOM_OPS and len(node.input):
            saved.append((node, node.op_type, node.domain, list(node.input), list(node.attribute)))
            first = node.input[0]
            del node.input[:]
            node.input.append(first)
            node.op_type, node.domain = "Identity", ""
            del node.attribute[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as err:
        raise FrontendError(f"shape inference failed ({type(err).__name__}: {_first_line(err)})",
                            file=index.filename) from None
    finally:
        for node, op_type, domain, inputs, attrs in saved:
            node.op_type, node.domain = op_type, domain
            del node.input[:]
            node.input.extend(inputs)
            del node.attribute[:]
            node.attribute.extend(attrs)
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        _record(index, vi)
    for name, array in index.initializers.items():
        index.shapes[name] = tuple(int(d) for d in array.shape)


def _record(index: GraphIndex, vi: onnx.ValueInfoProto) -> None:
    t = vi.type
    if not t.HasField("tensor_type"):
        return
    tt = t.tensor_type
    index.elem_types[vi.name] = tt.elem_type
    if not tt.HasField("shape"):
        index.shapes.setdefault(vi.name, None)
        return
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_value") and d.dim_value == 0:
            dims.append(0)
        else:
            index.shapes[vi.name] = None
            return
    index.shapes[vi.name] = tuple(dims)


# ----- what the user chooses on the command line: input shapes, the outputs to compile ------------------------------
def _dims_text(dims) -> str:
    return "x".join(str(d) if d is not None else "?" for d in dims)


def _declared_dims(vi: onnx.ValueInfoProto) -> Optional[List[Optional[int]]]:
    """The declared dims of a graph input (None for an unknown or symbolic dim), or None without a shape."""
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]


def parse_input_shape(text: str) -> Tuple[str, Tuple[int, ...]]:
    """'NAME=1x3x32x32' -> ("NAME", (1, 3, 32, 32)); a UsageError for anything else."""
    from ...qir.diagnostics import UsageError
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape '{text}': expected NAME=DIMS with positive dims separated by 'x' "
                         f"(for example x=1x3x32x32)")
    return name, shape


def real_inputs(model: onnx.ModelProto) -> List[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def has_dynamic_input(model: onnx.ModelProto) -> bool:
    """Whether a graph input lacks a shape or has a dynamic dim."""
    return any(d is None or None in d for d in (_declared_dims(vi) for vi in real_inputs(model)))


def bind_input_shapes(model: onnx.ModelProto, filename: str, shapes: Optional[Dict[str, Tuple[int, ...]]] = None,
                      note=None) -> bool:
    """Give graph inputs static shapes, in place: the user's (`--input-shape NAME=DIMS`) where given, else batch 1
    when the leading dim is the only dynamic one (with a note through `note(text)`).  Returns whether anything was
    bound.  A given shape must keep the input's rank and its static dims."""
    from ...qir.diagnostics import UsageError
    shapes = dict(shapes or {})
    inputs = {vi.name: vi for vi in real_inputs(model)}
    unknown = [n for n in shapes if n not in inputs]
    if unknown:
        raise UsageError(f"--input-shape: the model has no input '{unknown[0]}' (its inputs: "
                         f"{', '.join(inputs) or 'none'})")
    bound = False
    for name, vi in inputs.items():
        declared = _declared_dims(vi)
        if name in shapes:
            shape = shapes[name]
            if declared is not None and len(declared) != len(shape):
                raise FrontendError(f"--input-shape {name}={_dims_text(shape)}: input '{name}' has rank "
                                    f"{len(declared)} ({_dims_text(declared)})", file=filename)
            if declared is not None:
                for i, (d, s) in enumerate(zip(declared, shape)):
                    if d is not None and d != s:
                        raise FrontendError(f"--input-shape {name}={_dims_text(shape)}: dim {i} of input '{name}' "
                                            f"is fixed to {d} in the model ({_dims_text(declared)})", file=filename)
        elif declared is not None and declared and declared[0] is None and all(d is not None for d in declared[1:]):
            shape = (1,) + tuple(declared[1:])
            if note is not None:
                note(f"input '{name}' has a dynamic batch dimension; compiled with batch 1 as {_dims_text(shape)} "
                     f"(--input-shape {name}=DIMS chooses the shape)")
        else:
            continue
        if declared is not None and list(shape) == declared:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            tt.elem_type = onnx.TensorProto.FLOAT
        tt.ClearField("shape")
        for d in shape:
            tt.shape.dim.add().dim_value = int(d)
        bound = True
    if bound:
        # recorded shapes of other tensors may name the symbolic dims: shape inference types them afresh
        del model.graph.value_info[:]
        for out in model.graph.output:
            if out.type.HasField("tensor_type"):
                out.type.tensor_type.ClearField("shape")
    return bound


def dynamic_input_error(vi: onnx.ValueInfoProto, filename: str) -> FrontendError:
    """The error for a graph input without a static shape, naming the option that fixes it."""
    declared = _declared_dims(vi)
    if declared is None:
        return FrontendError(f"graph input '{vi.name}' has no shape; give it with --input-shape {vi.name}=DIMS "
                             f"(for example {vi.name}=1x3x32x32)", file=filename)
    example = "x".join(str(d) if d is not None else ("1" if i == 0 else "N") for i, d in enumerate(declared))
    return FrontendError(f"graph input '{vi.name}' has a dynamic shape {_dims_text(declared)}; give it with "
                         f"--input-shape {vi.name}={example} (N: the size you compile for)", file=filename)


def cut_outputs(model: onnx.ModelProto, filename: str, outputs: Sequence[str]) -> None:
    """Make `outputs` the graph's outputs, in place, and drop every node and graph input they do not need
    (`--outputs NAME[,NAME]`: compile the subgraph that computes them)."""
    from ...qir.diagnostics import UsageError
    graph = model.graph
    produced = {o: n for n in graph.node for o in n.output if o}
    inputs = {vi.name: vi for vi in real_inputs(model)}
    inits = {t.name for t in graph.initializer}
    if not outputs:
        raise UsageError("--outputs: give at least one tensor name")
    for name in outputs:
        if name not in produced and name not in inputs:
            what = "a constant (initializer)" if name in inits else "not a tensor of the graph"
            raise UsageError(f"--outputs: '{name}' is {what}")
    if len(set(outputs)) != len(outputs):
        raise UsageError("--outputs: a tensor is named twice")
    needed, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = produced.get(name)
        if node is not None:
            stack.extend(i for i in node.input if i)
    keep = [n for n in graph.node if any(o in needed for o in n.output)]
    if not [n for n in inputs if n in needed]:
        raise UsageError(f"--outputs: {', '.join(outputs)} do(es) not depend on any graph input")
    typed = {vi.name: vi for vi in list(graph.value_info) + list(graph.output) + list(graph.input)}
    new_outputs = []
    for name in outputs:
        vi = onnx.ValueInfoProto()
        if name in typed:
            vi.CopyFrom(typed[name])
        else:
            vi.name = name
        new_outputs.append(vi)
    del graph.node[:]
    graph.node.extend(keep)
    del graph.output[:]
    graph.output.extend(new_outputs)
    kept_inputs = [vi for vi in graph.input if vi.name in needed or vi.name in inits]
    del graph.input[:]
    graph.input.extend(kept_inputs)
