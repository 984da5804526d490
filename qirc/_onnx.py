"""ONNX protobufs and the few onnx helpers a compile needs, without running `import onnx`.

    from qirc import _onnx as onnx                 # onnx.ModelProto, onnx.TensorProto, onnx.load, onnx.save, ...
    from qirc._onnx import helper, numpy_helper    # make_node, make_attribute, ..., to_array, from_array

Why: `import onnx` imports `onnx.helper`, whose dtype table imports `ml_dtypes`, a C extension that takes 0.6-1 s to
initialise on the development machine: more than the rest of a ResNet-8 compile together.  A compile needs none of
those exotic dtypes; it parses and writes protobufs, converts tensors of the standard numpy dtypes, and calls onnx's
C++ checker and shape inference.  This module loads exactly those parts: the generated protobuf module
`onnx.onnx_ml_pb2` and the C++ extension `onnx.onnx_cpp2py_export`, imported as submodules of a bare placeholder for
the `onnx` package that is taken out of `sys.modules` again right afterwards.  A later `import onnx` (brevitas, a
test, the user's own code) runs onnx's real `__init__`, which finds both submodules already imported and shares them:
`onnx.ModelProto is qirc._onnx.ModelProto`, and models pass freely between the two.  (A one-shot import hook sets
the two submodules as attributes of the real package, which Python does only for submodules it imports itself.)
When onnx is already imported, its own modules are used and nothing of the above happens.

The functions below behave as onnx's namesakes (onnx 1.x) for the standard dtypes (float16/32/64, [u]int8..64, bool);
anything else (bfloat16, float8, 4-bit, strings, complex, external data) is handed to the real onnx, imported on
first need.  Not thread-safe while the placeholder is installed (a few milliseconds, once per process).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import numbers
import os
import sys
import types
from typing import Any, Optional, Sequence

import numpy as np

_pb = None  # onnx.onnx_ml_pb2
_cpp = None  # onnx.onnx_cpp2py_export


def _load() -> None:
    """Import onnx's protobuf classes and C++ extension (see the module docstring)."""
    global _pb, _cpp
    if _pb is not None:
        return
    real = sys.modules.get("onnx")
    if real is not None and not getattr(real, "_qirc_placeholder", False):
        import onnx.onnx_cpp2py_export as cpp
        import onnx.onnx_ml_pb2 as pb
    else:
        spec = importlib.util.find_spec("onnx")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("qirc needs the onnx package (pip install onnx)")
        placeholder = types.ModuleType("onnx")
        placeholder.__path__ = list(spec.submodule_search_locations)
        placeholder.__spec__ = spec
        placeholder.__file__ = spec.origin
        placeholder._qirc_placeholder = True
        sys.modules["onnx"] = placeholder
        try:
            import onnx.onnx_cpp2py_export as cpp
            import onnx.onnx_cpp2py_export.checker  # noqa: F401
            import onnx.onnx_cpp2py_export.shape_inference  # noqa: F401
            import onnx.onnx_ml_pb2 as pb
        finally:
            if sys.modules.get("onnx") is placeholder:
                del sys.modules["onnx"]
        sys.meta_path.insert(0, _RealOnnxHook({"onnx_ml_pb2": pb, "onnx_cpp2py_export": cpp}))
    _cpp, _pb = cpp, pb


class _RealOnnxHook(importlib.abc.MetaPathFinder):
    """On the first real `import onnx`: set the submodules imported under the placeholder as attributes of the real
    package once its `__init__` has run (Python sets a parent's attribute only for submodules it loads itself)."""

    def __init__(self, submodules):
        self.submodules = submodules

    def find_spec(self, name, path=None, target=None):
        if name != "onnx":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("onnx")
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _AfterExec(spec.loader, self.submodules)
        return spec


class _AfterExec(importlib.abc.Loader):
    def __init__(self, loader, submodules):
        self.loader = loader
        self.submodules = submodules

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        for attr, sub in self.submodules.items():
            setattr(module, attr, sub)
        self.loader.exec_module(module)
        for attr, sub in self.submodules.items():
            setattr(module, attr, sub)

    def __getattr__(self, name):  # get_filename, get_data, ... for tools that inspect the loader
        return getattr(self.loader, name)


def _real_onnx():
    """The real onnx package, for what this module does not cover."""
    _load()
    import onnx
    return onnx


def __getattr__(name: str):
    """Protobuf classes and constants: ModelProto, TensorProto, IR_VERSION, ..."""
    if name.startswith("__"):
        raise AttributeError(name)
    _load()
    try:
        return getattr(_pb, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


MAXIMUM_PROTOBUF = 2_147_483_648


# ----- files -------------------------------------------------------------------------------------------------------
def load(path, load_external_data: bool = True):
    """onnx.load of a binary .onnx file (a path or a readable binary file object)."""
    _load()
    if hasattr(path, "read"):
        data, filepath = path.read(), getattr(path, "name", None)
    else:
        with open(path, "rb") as f:
            data = f.read()
        filepath = path
    model = _pb.ModelProto()
    decoded = model.ParseFromString(data)
    if decoded is not None and decoded != len(data):
        from google.protobuf.message import DecodeError
        raise DecodeError(f"Protobuf decoding consumed too few bytes: {decoded} out of {len(data)}")
    if load_external_data and filepath is not None and _uses_external_data(model):
        from onnx.external_data_helper import load_external_data_for_model
        _real_onnx()
        load_external_data_for_model(model, os.path.dirname(os.path.abspath(os.fspath(filepath))))
    return model


def load_from_string(data: bytes):
    _load()
    model = _pb.ModelProto()
    model.ParseFromString(data)
    return model


def save(model, path) -> None:
    """onnx.save of a model without external data."""
    if _uses_external_data(model):
        _real_onnx().save(model, path)
        return
    data = model.SerializeToString()
    if hasattr(path, "write"):
        path.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


#: the standard ops whose attributes can hold a tensor (their `value`)
TENSOR_ATTRIBUTE_OPS = frozenset({"Constant", "ConstantOfShape"})


def node_tensors(model):
    """The tensors held by node attributes of the main graph: only Constant / ConstantOfShape and custom-domain nodes
    have their attribute lists read.  Reading a node's attribute list makes protobuf's Python runtime allocate and
    free a small arena when the list is empty, and after every 10,000 such frees it returns all of the process's free
    heap to the kernel (`malloc_trim`), whose pages the compile then faults in again: once per node, a cost that grew
    with the model's size."""
    _load()
    tensor = _pb.AttributeProto.TENSOR
    for node in model.graph.node:
        if node.op_type not in TENSOR_ATTRIBUTE_OPS and node.domain in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.type == tensor:
                yield attr.t


def _uses_external_data(model) -> bool:
    _load()
    external = _pb.TensorProto.EXTERNAL
    return any(t.data_location == external for t in model.graph.initializer) or \
        any(t.data_location == external for t in node_tensors(model))


# ----- dtypes --------------------------------------------------------------------------------------------------------
# TensorProto.DataType -> (numpy dtype, typed storage field, storage dtype of that field)
_DTYPES = {
    1: (np.dtype(np.float32), "float_data", np.float32),
    2: (np.dtype(np.uint8), "int32_data", np.int32),
    3: (np.dtype(np.int8), "int32_data", np.int32),
    4: (np.dtype(np.uint16), "int32_data", np.int32),
    5: (np.dtype(np.int16), "int32_data", np.int32),
    6: (np.dtype(np.int32), "int32_data", np.int32),
    7: (np.dtype(np.int64), "int64_data", np.int64),
    9: (np.dtype(np.bool_), "int32_data", np.int32),
    10: (np.dtype(np.float16), "int32_data", np.int32),
    11: (np.dtype(np.float64), "double_data", np.float64),
    12: (np.dtype(np.uint32), "uint64_data", np.uint64),
    13: (np.dtype(np.uint64), "uint64_data", np.uint64),
}
_FROM_NUMPY = {dtype: code for code, (dtype, _, _) in _DTYPES.items()}

#: serialized NodeProto templates of helper.fill_node, and TensorProto dims + data_type of numpy_helper.fill
_NODE_TEMPLATES: dict = {}
_TENSOR_HEADERS: dict = {}
_PLAIN = (int, float, str, bytes, bool)


def _node_key(op_type, domain, overload, n_inputs, n_outputs, kwargs, attributes) -> Optional[tuple]:
    """fill_node's template key, or None when an attribute value is not a plain scalar or list of them."""
    items = []
    for k in sorted(kwargs):
        v = kwargs[k]
        if v is None:
            continue
        if type(v) in (list, tuple) and all(type(x) in _PLAIN for x in v):
            items.append((k, type(v).__name__, tuple(repr(x) for x in v)))
        elif type(v) in _PLAIN:
            items.append((k, repr(v)))
        else:
            return None
    return (op_type, domain, overload, n_inputs, n_outputs, tuple(items),
            tuple(a.SerializeToString() for a in attributes))


class helper:  # noqa: N801  (a namespace standing in for onnx.helper)
    """The onnx.helper functions a compile uses."""

    @staticmethod
    def tensor_dtype_to_np_dtype(tensor_dtype: int) -> np.dtype:
        entry = _DTYPES.get(int(tensor_dtype))
        if entry is None:
            return _real_onnx().helper.tensor_dtype_to_np_dtype(tensor_dtype)
        return entry[0]

    @staticmethod
    def np_dtype_to_tensor_dtype(np_dtype) -> int:
        code = _FROM_NUMPY.get(np.dtype(np_dtype))
        if code is None:
            return _real_onnx().helper.np_dtype_to_tensor_dtype(np_dtype)
        return code

    @staticmethod
    def make_node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: Optional[str] = None,
                  doc_string: Optional[str] = None, domain: Optional[str] = None, overload: Optional[str] = None,
                  **kwargs: Any):
        _load()
        return helper.fill_node(_pb.NodeProto(), op_type, inputs, outputs, name, doc_string, domain, overload,
                                **kwargs)

    @staticmethod
    def fill_node(node, op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: Optional[str] = None,
                  doc_string: Optional[str] = None, domain: Optional[str] = None, overload: Optional[str] = None,
                  attributes: Sequence[Any] = (), **kwargs: Any):
        """An empty NodeProto `node` (say `graph.node.add()`) becomes make_node(...), in place: emission builds a
        large graph's nodes inside it instead of copying each one in.  `attributes`: AttributeProtos appended after
        those of kwargs.

        Everything but the names is merged from a serialized template, one per distinct (op_type, domain, numbers
        of inputs and outputs, attributes), and the names are then set in its placeholder slots: reading an empty
        repeated field of a new message (`node.input`, `node.attribute`) costs protobuf's Python runtime (upb) a
        temporary arena, and it calls malloc_trim(0), returning every free heap page to the kernel, after every
        10,000 it frees (about twice per 48,000-node compile, whose emission read 18,600 of them)."""
        key = _node_key(op_type, domain, overload, len(inputs), len(outputs), kwargs, attributes)
        template = _NODE_TEMPLATES.get(key) if key is not None else None
        if template is None:
            proto = _pb.NodeProto()
            proto.op_type = op_type
            proto.input.extend([""] * len(inputs))
            proto.output.extend([""] * len(outputs))
            if domain is not None:
                proto.domain = domain
            if overload is not None:
                proto.overload = overload
            for k in sorted(kwargs):  # make_node's order
                value = kwargs[k]
                if value is not None:
                    helper.add_attribute(proto, k, value)
            proto.attribute.extend(attributes)
            template = proto.SerializeToString()
            if key is not None and len(_NODE_TEMPLATES) < 4096:
                _NODE_TEMPLATES[key] = template
        node.MergeFromString(template)
        for field, names in ((node.input, inputs), (node.output, outputs)):
            for i, x in enumerate(names):
                field[i] = x
        if name:
            node.name = name
        if doc_string:
            node.doc_string = doc_string
        return node

    @staticmethod
    def add_attribute(node, key: str, value: Any) -> None:
        """node.attribute.append(make_attribute(key, value)), built in place for the common kinds (an integer, a
        real, a string, a non-empty list of Python ints); any other value through make_attribute."""
        A = _pb.AttributeProto
        if isinstance(value, numbers.Integral):
            attr = node.attribute.add()
            attr.i, attr.type = int(value), A.INT
        elif isinstance(value, numbers.Real):
            attr = node.attribute.add()
            attr.f, attr.type = float(value), A.FLOAT
        elif isinstance(value, str):
            attr = node.attribute.add()
            attr.s, attr.type = value.encode("utf-8"), A.STRING
        elif type(value) is list and value and all(type(v) is int for v in value):
            attr = node.attribute.add()
            attr.ints.extend(value)
            attr.type = A.INTS
        else:
            node.attribute.append(helper.make_attribute(key, value))
            return
        attr.name = key

    @staticmethod
    def make_attribute(key: str, value: Any, doc_string: Optional[str] = None, attr_type: Optional[int] = None):
        _load()
        A = _pb.AttributeProto
        attr = A()
        attr.name = key
        if doc_string:
            attr.doc_string = doc_string
        if isinstance(value, numbers.Integral):
            attr.i, attr.type = int(value), A.INT
        elif isinstance(value, numbers.Real):
            attr.f, attr.type = float(value), A.FLOAT
        elif isinstance(value, (str, bytes)):
            attr.s, attr.type = value.encode("utf-8") if isinstance(value, str) else value, A.STRING
        elif isinstance(value, _pb.TensorProto):
            attr.t.CopyFrom(value)
            attr.type = A.TENSOR
        elif isinstance(value, _pb.GraphProto):
            attr.g.CopyFrom(value)
            attr.type = A.GRAPH
        elif isinstance(value, (str, bytes, _pb.TensorProto, _pb.GraphProto)) or not hasattr(value, "__iter__"):
            return _real_onnx().helper.make_attribute(key, value, doc_string, attr_type)
        else:
            value = list(value)
            if value and attr_type is None and all(isinstance(v, numbers.Integral) for v in value):
                attr.ints.extend(value)
                attr.type = A.INTS
            elif value and attr_type is None and all(isinstance(v, numbers.Real) for v in value):
                attr.floats.extend(value)
                attr.type = A.FLOATS
            elif value and attr_type is None and all(isinstance(v, (str, bytes)) for v in value):
                attr.strings.extend(v.encode("utf-8") if isinstance(v, str) else v for v in value)
                attr.type = A.STRINGS
            else:  # empty, typed explicitly, or of protos: onnx's own code (and its errors)
                return _real_onnx().helper.make_attribute(key, value, doc_string, attr_type)
        if attr_type is not None and attr.type != attr_type:
            return _real_onnx().helper.make_attribute(key, value, doc_string, attr_type)
        return attr

    @staticmethod
    def get_attribute_value(attr) -> Any:
        _load()
        A = _pb.AttributeProto
        if attr.ref_attr_name:
            raise ValueError(f"Cannot get value of reference attribute: {attr}")
        kind = attr.type
        if kind == A.FLOAT:
            return attr.f
        if kind == A.INT:
            return attr.i
        if kind == A.STRING:
            return attr.s
        if kind == A.TENSOR:
            return attr.t
        if kind == A.SPARSE_TENSOR:
            return attr.sparse_tensor
        if kind == A.GRAPH:
            return attr.g
        if kind == A.TYPE_PROTO:
            return attr.tp
        if kind == A.FLOATS:
            return list(attr.floats)
        if kind == A.INTS:
            return list(attr.ints)
        if kind == A.STRINGS:
            return list(attr.strings)
        if kind == A.TENSORS:
            return list(attr.tensors)
        if kind == A.SPARSE_TENSORS:
            return list(attr.sparse_tensors)
        if kind == A.GRAPHS:
            return list(attr.graphs)
        if kind == A.TYPE_PROTOS:
            return list(attr.type_protos)
        if kind == A.UNDEFINED:
            return None
        raise ValueError(f"Unsupported ONNX attribute: {attr}")

    @staticmethod
    def make_tensor_value_info(name: str, elem_type: int, shape, doc_string: str = ""):
        _load()
        info = _pb.ValueInfoProto()
        info.name = name
        if doc_string:
            info.doc_string = doc_string
        # the same steps as onnx's make_tensor_type_proto, so that the message is the same field by field
        type_proto = _pb.TypeProto()
        tensor_type = type_proto.tensor_type
        tensor_type.elem_type = elem_type
        tensor_shape = tensor_type.shape
        if shape is not None:
            tensor_shape.dim.extend([])
            for d in shape:
                dim = tensor_shape.dim.add()
                if d is None:
                    pass
                elif isinstance(d, int):
                    dim.dim_value = d
                elif isinstance(d, str):
                    dim.dim_param = d
                else:
                    raise ValueError(f"Invalid item in shape: {d}. Needs to be of int or str.")
        info.type.CopyFrom(type_proto)
        return info

    @staticmethod
    def make_graph(nodes, name: str, inputs, outputs, initializer=None, doc_string: Optional[str] = None,
                   value_info=None):
        _load()
        graph = _pb.GraphProto()
        graph.node.extend(nodes)
        graph.name = name
        graph.input.extend(inputs)
        graph.output.extend(outputs)
        graph.initializer.extend(initializer or [])
        graph.value_info.extend(value_info or [])
        if doc_string:
            graph.doc_string = doc_string
        return graph

    @staticmethod
    def make_opsetid(domain: str, version: int):
        _load()
        opset = _pb.OperatorSetIdProto()
        opset.domain = domain
        opset.version = version
        return opset

    @staticmethod
    def make_model(graph, **kwargs: Any):
        _load()
        model = _pb.ModelProto()
        model.ir_version = _pb.IR_VERSION
        model.graph.CopyFrom(graph)
        opset_imports = kwargs.pop("opset_imports", None)
        if opset_imports is None:
            return _real_onnx().helper.make_model(graph, **kwargs)
        model.opset_import.extend(opset_imports)
        functions = kwargs.pop("functions", None)
        if functions is not None:
            model.functions.extend(functions)
        for k, v in kwargs.items():
            setattr(model, k, v)
        return model


class numpy_helper:  # noqa: N801  (a namespace standing in for onnx.numpy_helper)
    """onnx.numpy_helper.to_array / from_array for the standard dtypes."""

    @staticmethod
    def to_array(tensor, base_dir: str = "") -> np.ndarray:
        _load()
        entry = _DTYPES.get(tensor.data_type)
        if entry is None or tensor.HasField("segment") or tensor.data_location == _pb.TensorProto.EXTERNAL:
            return _real_onnx().numpy_helper.to_array(tensor, base_dir)
        np_dtype, field, storage = entry
        dims = tuple(tensor.dims)
        if tensor.HasField("raw_data"):
            raw = tensor.raw_data
            if sys.byteorder == "big":
                raw = np.frombuffer(raw, dtype=np_dtype).byteswap().tobytes()
            return np.frombuffer(raw, dtype=np_dtype).reshape(dims)
        if tensor.data_type in (4, 5, 10):  # 16-bit types packed into int32_data
            return np.array(tensor.int32_data, dtype=np.int32).view(np.uint32).astype(np.uint16).reshape(
                dims).view(np_dtype)
        if tensor.data_type == 9:
            return np.array(tensor.int32_data, dtype=np.int32).view(np.uint32).astype(np.uint8).view(
                np_dtype).reshape(dims)
        return np.asarray(getattr(tensor, field), dtype=storage).astype(np_dtype).reshape(dims)

    @staticmethod
    def from_array(array: np.ndarray, name: Optional[str] = None):
        _load()
        tensor = _pb.TensorProto()
        numpy_helper.fill(tensor, array, name)
        return tensor

    @staticmethod
    def fill(tensor, array: np.ndarray, name: Optional[str] = None) -> None:
        """An empty TensorProto `tensor` becomes from_array(array, name), in place (emission fills the tensors
        already inside its model: no copy of each)."""
        code = _FROM_NUMPY.get(array.dtype)
        if code is None:
            tensor.CopyFrom(_real_onnx().numpy_helper.from_array(array, name))
            return
        key = (array.shape, code)
        header = _TENSOR_HEADERS.get(key)
        if header is None:  # dims and data_type, merged as bytes: no read of the empty `dims` (see fill_node)
            proto = _pb.TensorProto()
            proto.dims.extend(array.shape)
            proto.data_type = code
            header = proto.SerializeToString()
            if len(_TENSOR_HEADERS) < 4096:
                _TENSOR_HEADERS[key] = header
        tensor.MergeFromString(header)
        if name:
            tensor.name = name
        if sys.byteorder == "big":
            array = array.astype(array.dtype.newbyteorder("<"))
        tensor.raw_data = array.tobytes()


class checker:  # noqa: N801
    """onnx.checker.check_model and its error."""

    @staticmethod
    def check_model(model, full_check: bool = False, skip_opset_compatibility_check: bool = False,
                    check_custom_domain: bool = False) -> None:
        _load()
        if isinstance(model, (str, os.PathLike)):
            _cpp.checker.check_model_path(os.fspath(model), full_check, skip_opset_compatibility_check,
                                          check_custom_domain)
            return
        data = model if isinstance(model, bytes) else model.SerializeToString()
        if len(data) > MAXIMUM_PROTOBUF:
            raise ValueError("This protobuf of onnx model is too large (>2GiB). Call check_model with model path "
                             "instead.")
        _cpp.checker.check_model(data, full_check, skip_opset_compatibility_check, check_custom_domain)


class shape_inference:  # noqa: N801
    """onnx.shape_inference.infer_shapes on a ModelProto or its bytes."""

    @staticmethod
    def infer_shapes(model, check_type: bool = False, strict_mode: bool = False, data_prop: bool = False):
        _load()
        data = model if isinstance(model, bytes) else model.SerializeToString()
        return load_from_string(_cpp.shape_inference.infer_shapes(data, check_type, strict_mode, data_prop))


def _errors() -> None:
    _load()
    checker.ValidationError = _cpp.checker.ValidationError
    shape_inference.InferenceError = _cpp.shape_inference.InferenceError


class _ErrorClass:
    """`checker.ValidationError` / `shape_inference.InferenceError` resolve on first use (they live in the C++
    extension, which is loaded lazily)."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __get__(self, obj, cls):
        _errors()
        return getattr(cls, self.name)


checker.ValidationError = _ErrorClass(checker, "ValidationError")
shape_inference.InferenceError = _ErrorClass(shape_inference, "InferenceError")
