"""Reading an ONNX file safely and checking the graph before anything is translated.

`load_model_proto` turns a path or a ModelProto into a ModelProto with its external data loaded, refusing files that
are not ONNX, external data that points outside the model's folder, and opsets older than 7.  `GraphIndex` checks the
graph itself (duplicate tensor names, dangling inputs, cycles), orders its nodes topologically and types every value
(from the model's value_info when it types every value, else with one `onnx.shape_inference` pass).  Every problem is a one-line `FrontendError` naming the file and, where there is
one, the node.
"""
from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

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


#: the standard control-flow ops, whose attributes can hold a graph: the subgraph check reads the attribute lists of
#: these and of custom-domain ops only (an empty list read costs protobuf an arena: see `_onnx.node_tensors`)
GRAPH_ATTRIBUTE_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def _all_tensors(model: onnx.ModelProto):
    """Initializers and Constant-node tensors of the main graph (subgraphs are refused later)."""
    yield from model.graph.initializer
    yield from onnx.node_tensors(model)


def _check_external_data(model: onnx.ModelProto, path: str, filename: str) -> None:
    """Refuse external data outside the model's folder, then load it."""
    base = os.path.dirname(os.path.abspath(path))
    real_base = os.path.realpath(base)
    has_external = False
    external = onnx.TensorProto.EXTERNAL
    for tensor in _all_tensors(model):
        if tensor.data_location != external:
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
    labels: Dict[int, str] = field(default_factory=dict)  # id(node) -> diagnostic name (filled in on first use)
    initializers: Dict[str, np.ndarray] = field(default_factory=dict)
    real_inputs: List[onnx.ValueInfoProto] = field(default_factory=list)
    #: the nodes in file order (`consumers` lists each tensor's readers in that order)
    file_nodes: List[onnx.NodeProto] = field(default_factory=list)
    output_names: List[str] = field(default_factory=list)
    shapes: Dict[str, Optional[Tuple[int, ...]]] = field(default_factory=dict)
    #: initializers stored as INT4 / UINT4 (held as int8 / uint8 arrays): name -> their integer range
    low_bit: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    _consumers: Optional[Dict[str, List[onnx.NodeProto]]] = None
    #: every node output has a static type (set by `_infer_shapes` when the model's own types say so)
    all_static: bool = False
    #: the (domain, op type) pairs of the nodes (None: not known): checks that concern a few op types skip graphs
    #: without them
    op_kinds: Optional[Set[Tuple[str, str]]] = None
    _positions: Optional[Dict[int, int]] = None

    @property
    def positions(self) -> Dict[int, int]:
        """id(node) -> its index in the file; built on first use (only a node without a name or output needs it)."""
        if self._positions is None:
            self._positions = {id(node): i for i, node in enumerate(self.file_nodes)}
        return self._positions

    @property
    def consumers(self) -> Dict[str, List[onnx.NodeProto]]:
        """tensor name -> the nodes that read it, in file order (a node once per input it reads it at); built on
        first use: most imports never ask (a large graph's dictionary of lists is time and memory)."""
        if self._consumers is None:
            consumers: Dict[str, List[onnx.NodeProto]] = {}
            for node in self.file_nodes:
                for name in node.input:
                    if name:
                        users = consumers.get(name)
                        if users is None:
                            consumers[name] = [node]
                        else:
                            users.append(node)
            self._consumers = consumers
        return self._consumers

    def label(self, node: onnx.NodeProto) -> str:
        key = id(node)
        label = self.labels.get(key)
        if label is None:
            name = node.name
            label = self.labels[key] = name if name else node_label(node, self.positions[key])
        return label

    def error(self, message: str, node: Optional[onnx.NodeProto] = None) -> FrontendError:
        return FrontendError(message, file=self.filename, loc=self.label(node) if node is not None else None,
                             op=node.op_type if node is not None else None)

    def shape(self, name: str, node: onnx.NodeProto) -> Tuple[int, ...]:
        """The static shape of tensor `name` (produced or consumed by `node`), or a FrontendError."""
        shape = self.shapes.get(name)
        if shape is None:
            raise self.error(f"the shape of '{name}' is unknown or dynamic after shape inference", node)
        return shape


def index_graph(model: onnx.ModelProto, filename: str, kinds: Optional[Set[Tuple[str, str]]] = None) -> GraphIndex:
    """Check the graph's structure, sort it and infer its shapes.  `kinds`: the (domain, op type) pairs of the
    graph's nodes where the caller has them."""
    graph = model.graph
    index = GraphIndex(model, filename)
    index.op_kinds = {(node.domain, node.op_type) for node in graph.node} if kinds is None else set(kinds)
    # one list of node wrappers, used everywhere: protobuf may hand out a new wrapper per iteration
    all_nodes = list(graph.node)
    index.file_nodes = all_nodes  # (labels need it from here on)
    subgraph_types = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    for node in all_nodes:
        if node.op_type not in GRAPH_ATTRIBUTE_OPS and node.domain in DEFAULT_DOMAINS:
            continue
        if any(attr.type in subgraph_types for attr in node.attribute):
            raise index.error("control flow with subgraphs is not supported", node)

    producers: Dict[str, onnx.NodeProto] = {}
    defined: Dict[str, str] = {}
    low_bit_types: Dict[np.dtype, Optional[tuple]] = {}  # dtype -> its LOW_BIT_TYPES entry (dtype.name is slow)
    for init in graph.initializer:
        if init.name in defined:
            raise FrontendError(f"duplicate initializer name '{init.name}'", file=filename)
        defined[init.name] = "initializer"
        try:
            array = numpy_helper.to_array(init)
        except Exception as err:
            raise FrontendError(f"initializer '{init.name}' cannot be read ({_first_line(err)})",
                                file=filename) from None
        dtype = array.dtype
        low_bit = low_bit_types.get(dtype, False)
        if low_bit is False:
            low_bit = low_bit_types[dtype] = LOW_BIT_TYPES.get(dtype.name)
        if low_bit is not None:
            # a 4-bit integer fits int8 / uint8 exactly; the range is kept for the quantizer that reads it
            storage, lo, hi = low_bit
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
    # One pass in file order: every output defined once (an error at the first duplicate), and the inputs that no
    # earlier node produces and that are not defined otherwise (an omitted optional input is "").
    later = []
    for node in all_nodes:
        for name in node.input:
            if name and name not in producers and name not in defined:
                later.append((node, name))
        for out in node.output:
            if out:
                if out in defined or out in producers:
                    first = (index.label(producers[out]) if out in producers else defined[out])
                    raise index.error(f"tensor name '{out}' is defined twice (also by {first})", node)
                producers[out] = node
    # each of those is produced by a later node (or by its own: the file's order is not topological) or by none (an
    # error at the first); without them Kahn's algorithm below, stable in file order, returns the file's order
    in_order = True
    for node, name in later:
        if name not in producers:
            raise index.error(f"input '{name}' is not produced by any node, initializer or graph input", node)
        in_order = False
    del later
    for out in graph.output:
        if out.name not in producers and out.name not in defined:
            raise FrontendError(f"graph output '{out.name}' is not produced by any node or input", file=filename)
        index.output_names.append(out.name)

    index.nodes = all_nodes if in_order else _topological_order(all_nodes, producers, index)
    _infer_shapes(index, producers)
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


#: initializers of at most this many elements keep their data in the model shape inference sees (shape inference reads
#: the values of shape-like operands: Reshape's shape, Slice's starts, Resize's scales, ...; all far smaller)
SHAPE_DATA_ELEMENTS = 1024


def _infer_shapes(index: GraphIndex, produced: Optional[Dict[str, object]] = None) -> None:
    """Type every value: from the model's own value_info when it already gives every value a static tensor type,
    else with one onnx.shape_inference pass (custom quantizers seen as Identity) on a light copy of the model.

    onnx's shape inference (non-strict, as run here) keeps a declared type over an inferred one -- on a conflict it
    drops its own -- so on a fully typed model it can only return the declared types: skipping it returns the same
    types without serializing, inferring and re-reading the whole model (the largest step of a large import).
    `produced`: the names of the node outputs (a set or dict), where the caller has them."""
    model = index.model
    graph = model.graph
    shapes = dict(index.shapes)
    static = set()
    complete = True
    types: dict = {}
    for vis in (graph.input, graph.value_info, graph.output):
        for vi in vis:
            if not _record(index, vi, types, static) and vi.name not in index.initializers:
                complete = False
    if complete:
        if produced is None:
            produced = {o for node in graph.node for o in node.output if o}
        complete = static.issuperset(produced)
    index.all_static = complete
    if not complete:
        index.shapes = shapes
        g = _inferred_graph(index)
        # (the light copy's extra inputs, its large initializers, come last: they are typed from the arrays below)
        for vi in list(g.input)[:len(graph.input)]:
            _record(index, vi, types)
        for vis in (g.value_info, g.output):
            for vi in vis:
                _record(index, vi, types)
    for name, array in index.initializers.items():
        index.shapes[name] = array.shape  # (a tuple of Python ints)


def _inferred_graph(index: GraphIndex) -> onnx.GraphProto:
    """onnx.shape_inference on a copy of the model whose large initializers are graph inputs carrying only their
    type and shape (shape inference reads the data of small shape-like constants only), and whose custom
    quantizers are Identity nodes; the inferred graph."""
    model = index.model
    graph = model.graph
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    lg = light.graph
    lg.name = graph.name
    # in topological order: onnx's shape inference types nodes in list order (a file out of order left values untyped)
    lg.node.extend(index.nodes or graph.node)
    lg.input.extend(graph.input)
    lg.output.extend(graph.output)
    lg.value_info.extend(graph.value_info)
    lg.sparse_initializer.extend(graph.sparse_initializer)
    declared = {vi.name for vi in graph.input}
    for init in graph.initializer:
        array = index.initializers.get(init.name)
        if array is None or array.size <= SHAPE_DATA_ELEMENTS or init.name in declared:
            lg.initializer.append(init)
        elif init.name not in declared:
            vi = lg.input.add()
            vi.name = init.name
            tt = vi.type.tensor_type
            tt.elem_type = init.data_type
            tt.shape.SetInParent()
            for d in init.dims:
                tt.shape.dim.add().dim_value = int(d)
    for node in lg.node:
        if node.domain not in DEFAULT_DOMAINS and node.op_type in SHAPE_PRESERVING_CUSTOM_OPS and len(node.input):
            first = node.input[0]
            del node.input[:]
            node.input.append(first)
            node.op_type, node.domain = "Identity", ""
            del node.attribute[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception as err:
        raise FrontendError(f"shape inference failed ({type(err).__name__}: {_first_line(err)})",
                            file=index.filename) from None
    return inferred.graph


def _record(index: GraphIndex, vi: onnx.ValueInfoProto, types: Optional[dict] = None,
            static: Optional[set] = None) -> bool:
    """Record the type of `vi`; whether it is a static tensor type (element type and every dim known), and then
    add its name to `static` where given.

    `types`: a memo of what each serialized TypeProto reads as.  A graph has few distinct types (every activation
    of a layer shape shares one): serializing a type is several times cheaper than walking its dims in protobuf,
    and equal bytes read the same."""
    t = vi.type
    if types is None:
        read = _read_type(t)
    else:
        key = t.SerializeToString()
        read = types.get(key)
        if read is None:
            read = types[key] = _read_type(t)
    has_shape, elem_type, shape = read
    if elem_type is None:
        return False  # not a tensor type
    name = vi.name
    if not has_shape:
        index.shapes.setdefault(name, None)
        return False
    index.shapes[name] = shape
    if shape is not None and elem_type != 0:
        if static is not None:
            static.add(name)
        return True
    return False


def _read_type(t: onnx.TypeProto) -> Tuple[bool, Optional[int], Optional[Tuple[int, ...]]]:
    """(has a shape, element type (None: not a tensor type), the static shape or None)."""
    if not t.HasField("tensor_type"):
        return False, None, None
    tt = t.tensor_type
    if not tt.HasField("shape"):
        return False, tt.elem_type, None
    dims = [d.dim_value for d in tt.shape.dim]
    if dims and min(dims) <= 0:
        for d in tt.shape.dim:  # a dim_param or an unset dim reads 0 (a stated dim of 0 stays)
            value = d.dim_value
            if value < 0 or (value == 0 and not d.HasField("dim_value")):
                return True, tt.elem_type, None
    return True, tt.elem_type, tuple(dims)


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
