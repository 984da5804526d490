"""ONNX emission: legalised integer IR -> the ONNX graph Deeploy reads.

`emit_onnx(module, target)` writes one ONNX node per int op (see `rules/` for the forms), in the module's
topological order, in the pre-opset-11 forms Deeploy parses (DESIGN.md section 4):

    int.conv           Conv(x, w)            kernel_shape, pads, strides, dilations, group all spelled out; no bias
    int.gemm           Gemm(a, b, c)         alpha = beta = 1.0 (floats), transA, transB; int32 bias c
    int.matmul         MatMul(a, b)          8-bit operands; a constant one stored as its int8/uint8 storage
    int.add / int.mul  Add / Mul             constant operands as int32 initializers
    int.requant_shift  RequantShift(x, mul, add)  domain ai.deeploy; div, signed, n_levels_out as size-1 tensor
                                             attributes; mul/add int32 initializers
    int.maxpool        MaxPool               kernel_shape, pads (zero: padding is an explicit Pad), strides, ceil_mode
    int.pad            Pad (Pad-2)           mode, pads, value attributes
    int.reshape        Reshape(x, shape)     int64 shape initializer
    int.transpose      Transpose             perm
    int.concat         Concat                axis
    int.gather         Gather(x, index)      axis; one int64 index initializer (rank 0, or [1]) (Deeploy: one index)
    int.slice          Slice(x, starts, ends, axes, steps)   int64 initializers
    int.isoftmax       iSoftmax(x)           domain ai.deeploy; coeffA, coeffB, coeffC, log2, n_levels as size-1 tensor
                                             attributes; uint8 output
    int.ilayernorm     iLayerNorm(x, weight, bias)  domain ai.deeploy; D, n_levels as size-1 tensor attributes;
                                             int32 weight and bias
    int.igelu          iGELU(x)              domain ai.deeploy; b, one as INT attributes (the C kernel narrows them
                                             to int8 and int16); int32 output

On a target whose `depthwise_layout` is "channels-last" (deeploy-cortexm), a depthwise int.conv and the requant
after it are written NHWC between two Transposes (targets.DEPTHWISE_LAYOUTS):

    Transpose(x, perm [0,2,3,1]) -> Conv(domain ai.deeploy, channels_first = 0, weights [C,1,kh,kw])
        -> RequantShift(mul, add shaped [1,1,1,C]) -> Transpose(perm [0,3,1,2])

On a target whose kernels add before multiplying (`add_before_mul`, deeploy-cortexm), the add of a requant after a
Conv or MatMul is written as `rules.harness.merge_exact_add` makes it: Deeploy's CMSIS merge reads it back as exactly
the integer k of the add k * mul the module states.  The model's metadata_props name the target (`qirc.target`), which
tells qirc's reader (frontends/deeploy.py) to read those requants as the merge does.

Element types: INT8 / UINT8 for 8-bit storage (the stored integers), INT32 for accumulators; every intermediate tensor
has its shape in `value_info` (Deeploy does no shape inference).  Node and tensor names derive from the ops' source
locations, sanitised to C identifiers (Deeploy generates C from them) and made unique.
"""
from __future__ import annotations

import re
from typing import Dict, List

import numpy as np
from ... import _onnx as onnx  # onnx's protobufs without its 1 s import (see qirc/_onnx.py)
from ..._onnx import TensorProto, helper, numpy_helper

from ...qir.diagnostics import BackendError
from ...qir.ir import Module, Operation, Value
from ...qir.types import TensorType
from .legalize import EMITTABLE
from .rules.harness import merge_exact_add
from .targets import DeeployTarget, get_target

OPSET = 10
RQS_DOMAIN = "ai.deeploy"
TARGET_KEY = "qirc.target"  # metadata_props entry naming the --target the graph was written for
IR_VERSION = 7  # onnx 1.8; Deeploy's onnx-graphsurgeon reads it, and opset 10 needs >= 5

_ONNX_ELEM = {"i8": TensorProto.INT8, "u8": TensorProto.UINT8, "i16": TensorProto.INT16, "u16": TensorProto.UINT16,
              "i32": TensorProto.INT32, "u32": TensorProto.UINT32, "i64": TensorProto.INT64, "i1": TensorProto.BOOL}

NCHW_TO_NHWC, NHWC_TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]

_ONNX_OP = {"int.conv": "Conv", "int.gemm": "Gemm", "int.matmul": "MatMul", "int.add": "Add", "int.mul": "Mul",
            "int.requant_shift": "RequantShift", "int.maxpool": "MaxPool", "int.pad": "Pad",
            "int.reshape": "Reshape", "int.transpose": "Transpose", "int.concat": "Concat", "int.gather": "Gather",
            "int.slice": "Slice", "int.isoftmax": "iSoftmax", "int.ilayernorm": "iLayerNorm", "int.igelu": "iGELU"}


def onnx_elem_type(t: TensorType) -> int:
    """The ONNX element type of a tensor's runtime (stored) values."""
    try:
        return _ONNX_ELEM[t.storage.name]
    except KeyError:
        raise BackendError(f"no ONNX element type for {t}") from None


_NON_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]+")


def sanitize(name: str) -> str:
    """A C identifier made from a location or tensor name ("/conv1/Conv" -> "conv1_Conv")."""
    if name.isascii() and name.isidentifier() and name[0] != "_" and name[-1] != "_":
        return name  # already one (most names: made from sanitised ones); what the lines below leave as it is
    s = _NON_IDENTIFIER.sub("_", name).strip("_")
    if not s:
        return ""
    return s if not s[0].isdigit() else "n" + s


class _Names:
    """Unique sanitised names for nodes and tensors (one namespace, as Deeploy's generated C has one)."""

    def __init__(self):
        self.used: Dict[str, int] = {}

    def fresh(self, base: str, fallback: str) -> str:
        base = sanitize(base) or fallback
        if base not in self.used:
            self.used[base] = 1
            return base
        while True:
            n = self.used[base]
            self.used[base] = n + 1
            cand = f"{base}_{n}"
            if cand not in self.used:
                self.used[cand] = 1
                return cand


# The protobufs are built in place, inside the model (`container.add()`, qirc._onnx's helper.fill_node and
# numpy_helper.fill), with the fields onnx.helper's make_node / make_attribute / make_tensor_value_info /
# numpy_helper.from_array set (the same messages, byte for byte), instead
# of building each message on its own and copying it into its parent: make_graph and make_model copy every node,
# initializer and value_info once more each, most of the emission time of a large model.
_A = onnx.AttributeProto


#: (elem_type, shape) -> a ValueInfoProto's serialized `type` field: a graph has few distinct tensor types, and
#: merging the bytes protobuf serialized once is cheaper than setting the nested fields again (each unset message
#: or empty list read on the way costs protobuf's Python runtime a temporary arena of its own)
_TYPE_BYTES: Dict[tuple, bytes] = {}


def _add_value_info(container, name: str, elem_type: int, shape) -> None:
    """container.add() made helper.make_tensor_value_info(name, elem_type, shape)."""
    key = (elem_type, tuple(shape))
    typed = _TYPE_BYTES.get(key)
    if typed is None:
        info = onnx.ValueInfoProto()
        tensor_type = info.type.tensor_type
        tensor_type.elem_type = elem_type
        dims = tensor_type.shape.dim
        dims.extend([])  # a rank-0 tensor has an empty shape, not none (as make_tensor_value_info)
        for d in shape:
            dims.add().dim_value = d
        typed = info.SerializeToString()
        if len(_TYPE_BYTES) < 4096:
            _TYPE_BYTES[key] = typed
    info = container.add()
    info.name = name
    info.MergeFromString(typed)


#: (name, value, rank0) -> the attribute: the few values of div, signed and n_levels repeat on every requant
_TENSOR_ATTRS: Dict[tuple, onnx.AttributeProto] = {}


def _tensor_attr(name: str, value: int, rank0: bool = False) -> onnx.AttributeProto:
    """A size-1 int64 TENSOR attribute: shape [1], or rank 0 where the platform computes with it as a scalar."""
    key = (name, value, rank0)
    attr = _TENSOR_ATTRS.get(key)
    if attr is None:
        array = np.array(value, np.int64) if rank0 else np.array([value], np.int64)
        attr = onnx.AttributeProto()
        attr.name = name
        numpy_helper.fill(attr.t, array, name)
        attr.type = _A.TENSOR
        if len(_TENSOR_ATTRS) < 4096:
            _TENSOR_ATTRS[key] = attr
    return attr


class _Emitter:
    def __init__(self, module: Module, target: DeeployTarget):
        self.module = module
        self.target = target
        self.names = _Names()
        self.tensor_of: Dict[int, str] = {}  # id(Value) -> tensor name
        self.model = onnx.ModelProto()
        self.graph = self.model.graph  # nodes, initializers and value_info are added to it in place
        self.nodes = self.graph.node
        self.initializers = self.graph.initializer
        self.initializer_named: Dict[str, onnx.TensorProto] = {}
        self.value_info = self.graph.value_info
        self.channels_last: set = set()  # id(Value) of depthwise conv results written NHWC

    def fail(self, op: Operation, message: str) -> BackendError:
        return BackendError(f"{message} (target {self.target.name})", loc=op.loc or None, op=op.name)

    def initializer(self, array: np.ndarray, name_hint: str, dtype) -> str:
        name = self.names.fresh(name_hint, "const")
        tensor = self.initializers.add()
        numpy_helper.fill(tensor, np.array(array, dtype=dtype, order="C"), name)
        self.initializer_named[name] = tensor
        return name

    def const_input(self, v: Value, hint: str, dtype=None) -> str:
        """The initializer holding constant `v` (written once per Value, in its storage dtype unless given)."""
        key = id(v)
        if key not in self.tensor_of:
            value = np.asarray(v.owner.attrs["value"])
            self.tensor_of[key] = self.initializer(value, hint, dtype or v.type.storage.np_dtype)
        return self.tensor_of[key]

    def operand(self, op: Operation, i: int, node_name: str, role: str, const_dtype=None) -> str:
        v = op.operands[i]
        if v.owner.name == "qir.const":
            return self.const_input(v, f"{node_name}_{role}", const_dtype)
        return self.tensor_of[id(v)]

    def emit(self) -> onnx.ModelProto:
        module = self.module
        outputs_by_value: Dict[int, str] = {}
        for out in module.outputs:
            v = out.operands[0]
            if v.owner.name in ("qir.input", "qir.const") or id(v) in outputs_by_value:
                raise self.fail(out, "a graph output must be computed by its own op (it is an input, a constant or "
                                     "another output)")
            outputs_by_value[id(v)] = out.attrs["name"]
        graph = self.graph
        for inp in module.inputs:
            name = self.names.fresh(inp.attrs["name"], "input")
            self.tensor_of[id(inp.result)] = name
            _add_value_info(graph.input, name, onnx_elem_type(inp.result.type), inp.result.type.shape)
        output_names = {}
        for out in module.outputs:
            output_names[id(out.operands[0])] = self.names.fresh(out.attrs["name"], "output")
        for op in module.ops():
            if op.dialect == "qir":
                continue
            if op.name not in EMITTABLE:
                raise self.fail(op, f"{op.name} cannot be emitted (legalise the module for the target first)")
            op_type = _ONNX_OP[op.name]
            if not self.target.accepts(op_type):
                raise self.fail(op, f"the platform does not map {op_type}")
            node_name = self.names.fresh(op.loc or op.name.replace(".", "_"), op.name.replace(".", "_"))
            r = op.result
            # each method below adds its node(s) to the graph, in order
            if self.is_channels_last_conv(op):
                self.channels_last.add(id(r))
                self.channels_last_conv(op, node_name)
                continue
            if id(r) in output_names:
                out_name = output_names[id(r)]
            else:
                out_name = self.names.fresh(f"{node_name}_out", "t")
                _add_value_info(self.value_info, out_name, onnx_elem_type(r.type), r.type.shape)
            self.tensor_of[id(r)] = out_name
            if op.name == "int.requant_shift" and id(op.operands[0]) in self.channels_last:
                self.channels_last_requant(op, node_name, out_name)
                continue
            self.node(op, op_type, node_name, out_name)
        # the fields helper.make_graph / make_model / make_opsetid set
        graph.name = sanitize(module.name) or "network"
        for o in module.outputs:
            v = o.operands[0]
            _add_value_info(graph.output, output_names[id(v)], onnx_elem_type(v.type), v.type.shape)
        model = self.model
        model.ir_version = IR_VERSION
        for domain, version in (("", OPSET), (RQS_DOMAIN, 1)):
            opset = model.opset_import.add()
            opset.domain = domain
            opset.version = version
        model.producer_name = "qirc"
        # the platform the graph is written for: how it reads some nodes differs (frontends/deeploy.py)
        entry = model.metadata_props.add()
        entry.key, entry.value = TARGET_KEY, self.target.name
        return model

    def is_channels_last_conv(self, op: Operation) -> bool:
        return (op.name == "int.conv" and self.target.depthwise_layout == "channels-last"
                and int(op.attr("group")) > 1)

    def nhwc_tensor(self, hint: str, v: Value) -> str:
        """A fresh tensor name typed like `v` with its NCHW shape permuted to NHWC."""
        name = self.names.fresh(hint, "t")
        shape = [v.type.shape[i] for i in NCHW_TO_NHWC]
        _add_value_info(self.value_info, name, onnx_elem_type(v.type), shape)
        return name

    def channels_last_conv(self, op: Operation, name: str) -> None:
        """Transpose NCHW -> NHWC, then the depthwise Conv on the NHWC tensor, saying so with channels_first = 0
        (Deeploy's layout lowering then leaves it and its weights alone).  The attribute is not ONNX's, so the
        Conv is in Deeploy's domain, where onnx.checker validates no schema; Deeploy matches it by op type."""
        x = op.operands[0]
        x_nhwc = self.nhwc_tensor(f"{name}_in_nhwc", x)
        self._add_node("Transpose", [self.operand(op, 0, name, "input")], [x_nhwc],
                       self.names.fresh(f"{name}_to_nhwc", "transpose"), perm=NCHW_TO_NHWC)
        out = self.nhwc_tensor(f"{name}_out", op.result)
        self.tensor_of[id(op.result)] = out
        conv = self.node(op, "Conv", name, out)
        conv.input[0] = x_nhwc
        conv.domain = RQS_DOMAIN
        helper.add_attribute(conv, "channels_first", 0)

    def channels_last_requant(self, op: Operation, name: str, out: str) -> None:
        """The requant of a channels-last depthwise Conv, on its NHWC accumulators (per-channel mul/add shaped
        [1, 1, 1, C]), then Transpose NHWC -> NCHW into the requant's own tensor `out`."""
        y_nhwc = self.nhwc_tensor(f"{name}_out_nhwc", op.result)
        node = self.node(op, "RequantShift", name, y_nhwc)
        for i in (1, 2):
            t = self.initializer_named[node.input[i]]
            array = numpy_helper.to_array(t)
            if array.size > 1:
                t.CopyFrom(numpy_helper.from_array(array.reshape(1, 1, 1, -1), t.name))
        self._add_node("Transpose", [y_nhwc], [out], self.names.fresh(f"{name}_to_nchw", "transpose"),
                       perm=NHWC_TO_NCHW)

    def node(self, op: Operation, op_type: str, name: str, out: str) -> onnx.NodeProto:
        """Add the node of `op` (writing `out`) to the graph; returns it."""
        a = op.attr
        add_node = self._add_node
        if op.name == "int.conv":
            w = op.operands[1].type.shape
            n_spatial = len(w) - 2
            return add_node(
                "Conv", [self.operand(op, 0, name, "input"), self.operand(op, 1, name, "weight")], [out], name,
                kernel_shape=list(w[2:]), pads=list(a("pads") or [0] * (2 * n_spatial)),
                strides=list(a("strides") or [1] * n_spatial), dilations=list(a("dilations") or [1] * n_spatial),
                group=int(a("group")))
        if op.name == "int.gemm":
            ins = [self.operand(op, 0, name, "A"), self.operand(op, 1, name, "B"),
                   self.operand(op, 2, name, "C", np.int32)]
            return add_node("Gemm", ins, [out], name, alpha=1.0, beta=1.0, transA=int(a("transA")),
                                    transB=int(a("transB")))
        if op.name == "int.matmul":
            # 8-bit operands (legalize checks it): a constant keeps its int8 storage (the global pool's ones)
            ins = [self.operand(op, i, name, f"in{i}") for i in range(2)]
            return add_node(op_type, ins, [out], name)
        if op.name in ("int.add", "int.mul"):
            ins = [self.operand(op, i, name, f"in{i}", np.int32) for i in range(2)]
            return add_node(op_type, ins, [out], name)
        if op.name == "int.requant_shift":
            add = np.asarray(a("add"))
            if self.target.add_before_mul and op.operands[0].owner.name in ("int.conv", "int.matmul"):
                # CMSIS's Conv/MatMul requant merge reads add as round(add / (mul + 1e-3)) * mul: written so that
                # it reads back the lowering's k * mul even where |k| is beyond about 500 * mul
                add = merge_exact_add(a("mul"), add)
            mul = self.initializer(np.asarray(a("mul")), f"{name}_mul", np.int32)
            add = self.initializer(add, f"{name}_add", np.int32)
            # CMSIS's Gemm/MatMul-requant merge derives the multiplier's shape from div's: rank 0 keeps it the
            # scalar that its fully-connected kernel binding asserts
            rank0 = self.target.gemm_scalar_mul
            tensors = [_tensor_attr("div", int(a("div")), rank0), _tensor_attr("signed", int(bool(a("signed"))), rank0),
                       _tensor_attr("n_levels_out", int(a("n_levels")), rank0)]
            return add_node("RequantShift", [self.operand(op, 0, name, "input"), mul, add], [out], name,
                            domain=RQS_DOMAIN, attributes=tensors)
        if op.name == "int.maxpool":
            k = list(a("kernel_shape"))
            return add_node("MaxPool", [self.operand(op, 0, name, "input")], [out], name, kernel_shape=k,
                                    pads=list(a("pads") or [0] * (2 * len(k))),
                                    strides=list(a("strides") or [1] * len(k)), ceil_mode=0)
        if op.name == "int.pad":
            return add_node("Pad", [self.operand(op, 0, name, "input")], [out], name, mode="constant",
                                    pads=list(a("pads")), value=float(a("value")))
        if op.name == "int.reshape":
            shape = self.initializer(np.asarray(list(op.result.type.shape), np.int64), f"{name}_shape", np.int64)
            return add_node("Reshape", [self.operand(op, 0, name, "input"), shape], [out], name)
        if op.name == "int.transpose":
            return add_node("Transpose", [self.operand(op, 0, name, "input")], [out], name,
                                    perm=list(a("perm")))
        if op.name == "int.concat":
            ins = [self.operand(op, i, name, f"in{i}") for i in range(len(op.operands))]
            return add_node("Concat", ins, [out], name, axis=int(a("axis")))
        if op.name == "int.gather":
            indices = [int(i) for i in a("indices")]
            if len(indices) != 1:
                raise self.fail(op, f"Gather of {len(indices)} indices has no Deeploy form (one constant index)")
            index = np.asarray(indices[0] if a("scalar") else indices, np.int64)
            return add_node("Gather", [self.operand(op, 0, name, "input"),
                                               self.initializer(index, f"{name}_index", np.int64)], [out], name,
                                    axis=int(a("axis")))
        if op.name == "int.slice":
            params = [self.initializer(np.asarray(list(a(k)), np.int64), f"{name}_{k}", np.int64)
                      for k in ("starts", "ends", "axes", "steps")]
            return add_node("Slice", [self.operand(op, 0, name, "input")] + params, [out], name)
        # Deeploy's integer transformer kernels (DESIGN.md section 7): not ONNX ops, so in Deeploy's domain (ignored
        # by Deeploy, keeps onnx.checker from looking for a schema); attribute types as its parsers read them
        if op.name == "int.isoftmax":
            tensors = [_tensor_attr(k, int(a(k))) for k in ("coeffA", "coeffB", "coeffC", "log2", "n_levels")]
            return add_node("iSoftmax", [self.operand(op, 0, name, "input")], [out], name, domain=RQS_DOMAIN,
                            attributes=tensors)
        if op.name == "int.ilayernorm":
            ins = [self.operand(op, 0, name, "input"), self.operand(op, 1, name, "weight", np.int32),
                   self.operand(op, 2, name, "bias", np.int32)]
            return add_node("iLayerNorm", ins, [out], name, domain=RQS_DOMAIN,
                            attributes=[_tensor_attr("D", int(a("D"))), _tensor_attr("n_levels", int(a("n_levels")))])
        if op.name == "int.igelu":
            return add_node("iGELU", [self.operand(op, 0, name, "input")], [out], name, domain=RQS_DOMAIN,
                                    b=int(a("b")), one=int(a("one")))
        raise self.fail(op, f"{op.name} cannot be emitted")

    def _add_node(self, op_type: str, inputs: List[str], outputs: List[str], name: str, attributes=(),
                  **attrs) -> onnx.NodeProto:
        return helper.fill_node(self.nodes.add(), op_type, inputs, outputs, name, attributes=attributes, **attrs)


def emit_onnx(module: Module, target) -> onnx.ModelProto:
    """The ONNX model of a legalised integer module for `target` (a name or DeeployTarget); checker clean."""
    target = get_target(target)
    model = _Emitter(module, target).emit()
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise BackendError(f"emitted ONNX fails onnx.checker: {first}") from None
    return model
