"""Reader for qirc's own Deeploy ONNX output (`qirc ... -o DIR` writes DIR/network.onnx) into integer IR.

The Deeploy form is integer-only: Conv, Gemm, MatMul, Add, Mul, RequantShift (any domain), MaxPool, Pad (Pad-2
attributes), Reshape, Flatten, Transpose, Concat, Gather and Slice (constant index and bounds), and the integer
transformer kernels iSoftmax, iLayerNorm, iGELU, with every tensor
typed in `value_info` (see qirc/backends/deeploy/emit.py).  Reading it back lets `qirc sim DIR/network.onnx` and the test-vector generator run
exactly the emitted graph with the interpreter.  Types are plain integers (i8/u8 storage, i32 accumulators): the file
carries no scales.  A RequantShift with signed=0 yields u8 values (0..255).

It is read as the platform it was written for runs it (the `qirc.target` entry of its metadata_props): on a CMSIS
target (deeploy-cortexm), Deeploy merges each Conv/MatMul -> RequantShift into one kernel that adds
round(add / (mul + 1e-3)) to the accumulator before multiplying by mul, so such a requant's add is read as
round(add / (mul + 1e-3)) * mul (`rules.harness.deeploy_rounded_add`); qirc writes adds that this reads back exactly.

Anything outside that form is a one-line `FrontendError` naming the file and node.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Union

import numpy as np
from .. import _onnx as onnx  # onnx's protobufs without its 1 s import (see qirc/_onnx.py)
from .._onnx import TensorProto, numpy_helper

from ..qir.diagnostics import FrontendError
from ..qir.ir import Module, Value, const_op, input_op, output_op
from ..qir.types import ScalarType, TensorType

_ELEM = {TensorProto.INT8: "i8", TensorProto.UINT8: "u8", TensorProto.INT16: "i16", TensorProto.UINT16: "u16",
         TensorProto.INT32: "i32", TensorProto.UINT32: "u32", TensorProto.INT64: "i64"}

DEEPLOY_OPS = ("Conv", "Gemm", "MatMul", "Add", "Mul", "RequantShift", "MaxPool", "Pad", "Reshape", "Flatten",
               "Transpose", "Concat", "Gather", "Slice", "iSoftmax", "iLayerNorm", "iGELU")


def is_deeploy_onnx(model: Union[str, os.PathLike, onnx.ModelProto]) -> bool:
    """True if the model looks like Deeploy's integer form: it has a RequantShift node and only Deeploy ops."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    return "RequantShift" in ops and ops <= set(DEEPLOY_OPS)


class _Reader:
    def __init__(self, model: onnx.ModelProto, filename: str):
        self.model = model
        self.graph = model.graph
        self.file = filename
        self.module = Module(self.graph.name or "network")
        self.values: Dict[str, Value] = {}
        self.inits = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        # a graph written for a CMSIS target: Deeploy merges each Conv/MatMul -> RequantShift into one kernel that
        # adds round(add / (mul + 1e-3)) to the accumulator before multiplying by mul, so that is what it computes
        self.merged: set = set()  # the tensors such a merged Conv/MatMul writes
        if _written_for_cmsis(model):
            from ..backends.deeploy.rules.harness import MERGED_AFTER
            self.merged = {o for n in self.graph.node if n.op_type in MERGED_AFTER for o in n.output}
        self.types: Dict[str, TensorType] = {}
        for vi in list(self.graph.input) + list(self.graph.value_info) + list(self.graph.output):
            t = self._type_of(vi)
            if t is not None:
                self.types[vi.name] = t

    def error(self, message: str, node: Optional[onnx.NodeProto] = None) -> FrontendError:
        loc = (node.name or (node.output[0] if node.output else node.op_type)) if node is not None else None
        return FrontendError(message, file=self.file, loc=loc, op=node.op_type if node is not None else None)

    def _type_of(self, vi: onnx.ValueInfoProto) -> Optional[TensorType]:
        tt = vi.type.tensor_type
        if tt.elem_type not in _ELEM:
            return None
        if not tt.HasField("shape") or any(not d.HasField("dim_value") for d in tt.shape.dim):
            return None
        return TensorType(tuple(d.dim_value for d in tt.shape.dim), ScalarType(_ELEM[tt.elem_type]))

    def value(self, name: str, node: onnx.NodeProto) -> Value:
        if name in self.values:
            return self.values[name]
        if name in self.inits:
            array = self.inits[name]
            elem = ScalarType(_ELEM.get(onnx.helper.np_dtype_to_tensor_dtype(array.dtype), "i64"))
            v = const_op(self.module, array.astype(elem.np_dtype), TensorType(array.shape, elem), name)
            self.values[name] = v
            return v
        raise self.error(f"input '{name}' is neither a graph input, an initializer nor an earlier node's output", node)

    def const(self, name: str, node: onnx.NodeProto) -> np.ndarray:
        if name not in self.inits:
            raise self.error(f"input '{name}' must be an initializer", node)
        return self.inits[name]

    def result_type(self, node: onnx.NodeProto, storage: Optional[str] = None) -> TensorType:
        name = node.output[0]
        t = self.types.get(name)
        if t is None:
            raise self.error(f"tensor '{name}' has no integer type and static shape in value_info (Deeploy needs "
                             "every intermediate shape)", node)
        return TensorType(t.shape, ScalarType(storage)) if storage else t

    def read(self) -> Module:
        init_names = set(self.inits)
        for vi in self.graph.input:
            if vi.name in init_names:
                continue
            t = self.types.get(vi.name)
            if t is None:
                raise self.error(f"graph input '{vi.name}' has no integer type with a static shape")
            self.values[vi.name] = input_op(self.module, vi.name, t)
        for node in self.graph.node:
            self.node(node)
        for vi in self.graph.output:
            if vi.name not in self.values:
                raise self.error(f"graph output '{vi.name}' is not computed by any node")
            output_op(self.module, vi.name, self.values[vi.name])
        return self.module

    def attrs(self, node: onnx.NodeProto) -> dict:
        out = {}
        for a in node.attribute:
            v = onnx.helper.get_attribute_value(a)
            if isinstance(v, onnx.TensorProto):
                v = numpy_helper.to_array(v)
            elif isinstance(v, bytes):
                v = v.decode()
            out[a.name] = v
        return out

    def node(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if op not in DEEPLOY_OPS:
            raise self.error(f"op {op} is not part of qirc's Deeploy form", node)
        if len(node.output) != 1:
            raise self.error(f"{op} must have one output", node)
        a = self.attrs(node)
        loc = node.name or node.output[0]
        m = self.module
        ins = list(node.input)

        def operands(n):
            return [self.value(x, node) for x in ins[:n]]

        if op == "Conv":
            if len(ins) != 2:
                raise self.error("Conv must have no bias input", node)
            attrs = {k: list(a[k]) for k in ("kernel_shape", "pads", "strides", "dilations") if k in a}
            attrs["group"] = int(a.get("group", 1))
            if int(a.get("channels_first", 1)) == 0:
                self.values[node.output[0]] = self._channels_last_conv(node, attrs, operands(2), loc)
                return
            opname, args = "int.conv", operands(2)
        elif op == "Gemm":
            if float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
                raise self.error("integer Gemm needs alpha = beta = 1", node)
            attrs = {"transA": int(a.get("transA", 0)), "transB": int(a.get("transB", 0))}
            opname, args = "int.gemm", operands(len(ins))
        elif op in ("MatMul", "Add", "Mul"):
            opname, args, attrs = "int." + op.lower(), operands(2), {}
        elif op == "RequantShift":
            for k in ("div", "signed", "n_levels_out"):
                if k not in a:
                    raise self.error(f"RequantShift lacks attribute '{k}'", node)
            signed = bool(int(np.asarray(a["signed"]).reshape(-1)[0]))
            mul, add = self.const(ins[1], node).astype(np.int64), self.const(ins[2], node).astype(np.int64)
            if ins[0] in self.merged:
                from ..backends.deeploy.rules.harness import deeploy_rounded_add
                add = deeploy_rounded_add(mul, add).astype(np.int64)
            attrs = {"mul": mul, "add": add,
                     "div": int(np.asarray(a["div"]).reshape(-1)[0]), "signed": signed,
                     "n_levels": int(np.asarray(a["n_levels_out"]).reshape(-1)[0])}
            # Deeploy's RequantShift output is 8-bit storage; signed=0 yields 0..255
            rt = self.result_type(node).with_element(ScalarType("i8" if signed else "u8"))
            v = m.create("int.requant_shift", [self.value(ins[0], node)], [rt], attrs, loc).result
            self.values[node.output[0]] = v
            return
        elif op == "MaxPool":
            attrs = {k: list(a[k]) for k in ("kernel_shape", "pads", "strides", "dilations") if k in a}
            attrs["ceil_mode"] = int(a.get("ceil_mode", 0))
            opname, args = "int.maxpool", operands(1)
        elif op == "Pad":
            if a.get("mode", "constant") != "constant" or "pads" not in a:
                raise self.error("Pad must be the Pad-2 form with mode 'constant' and a pads attribute", node)
            value = float(a.get("value", 0.0))
            if value != round(value):
                raise self.error(f"Pad value {value} is not an integer", node)
            attrs, opname, args = {"pads": list(a["pads"]), "value": int(value)}, "int.pad", operands(1)
        elif op == "Reshape":
            attrs = {"shape": [int(d) for d in self.const(ins[1], node)]}
            opname, args = "int.reshape", operands(1)
        elif op == "Flatten":
            attrs, opname, args = {"axis": int(a.get("axis", 1))}, "int.flatten", operands(1)
        elif op == "Transpose":
            attrs, opname, args = {"perm": list(a["perm"])}, "int.transpose", operands(1)
        elif op == "iSoftmax":
            attrs = {k: self._int_attr(a, k, node) for k in ("coeffA", "coeffB", "coeffC", "log2", "n_levels")}
            opname, args = "int.isoftmax", operands(1)
        elif op == "iLayerNorm":
            attrs = {k: self._int_attr(a, k, node) for k in ("D", "n_levels")}
            opname, args = "int.ilayernorm", operands(3)
        elif op == "iGELU":
            attrs = {k: self._int_attr(a, k, node) for k in ("b", "one")}
            opname, args = "int.igelu", operands(1)
        elif op == "Gather":
            index = np.asarray(self.const(ins[1], node))
            attrs = {"axis": int(a.get("axis", 0)), "indices": [int(i) for i in index.reshape(-1)],
                     "scalar": index.ndim == 0}
            opname, args = "int.gather", operands(1)
        elif op == "Slice":
            starts, ends, axes, steps = (self.const(ins[i], node) for i in range(1, 5))
            attrs = {"starts": [int(v) for v in starts], "ends": [int(v) for v in ends],
                     "axes": [int(v) for v in axes], "steps": [int(v) for v in steps]}
            opname, args = "int.slice", operands(1)
        else:  # Concat
            attrs, opname, args = {"axis": int(a["axis"])}, "int.concat", operands(len(ins))
        rt = self.result_type(node)
        if opname in ("int.maxpool", "int.pad", "int.reshape", "int.flatten", "int.transpose", "int.concat",
                      "int.gather", "int.slice"):
            rt = rt.with_element(args[0].type.element)  # moves values: keeps the (u8/i8) storage of its input
        self.values[node.output[0]] = m.create(opname, args, [rt], attrs, loc).result

    def _int_attr(self, a: dict, key: str, node: onnx.NodeProto) -> int:
        """An integer attribute given as an INT or as a size-1 tensor (Deeploy reads both kinds)."""
        if key not in a:
            raise self.error(f"{node.op_type} lacks attribute '{key}'", node)
        value = np.asarray(a[key]).reshape(-1)
        if value.size != 1 or value[0] != np.rint(value[0]):
            raise self.error(f"{node.op_type} attribute '{key}' must be one integer", node)
        return int(value[0])

    def _channels_last_conv(self, node: onnx.NodeProto, attrs: dict, args, loc: str) -> Value:
        """A Conv with channels_first = 0 (Deeploy's attribute; qirc writes its depthwise Convs so for CMSIS): the
        input and output are NHWC, the weights OIHW.  Read as  transpose to NCHW -> int.conv -> transpose to NHWC."""
        x, w = args
        if x.type.rank != 4:
            raise self.error("a Conv with channels_first = 0 must take a 4-D NHWC input", node)
        m = self.module
        n, h, wd, c = x.type.shape
        x_nchw = m.create("int.transpose", [x], [TensorType((n, c, h, wd), x.type.element)], {"perm": [0, 3, 1, 2]},
                          loc + "/to_nchw").result
        rt = self.result_type(node)
        n, oh, ow, oc = rt.shape
        conv = m.create("int.conv", [x_nchw, w], [TensorType((n, oc, oh, ow), rt.element)], attrs, loc).result
        return m.create("int.transpose", [conv], [rt], {"perm": [0, 2, 3, 1]}, loc + "/to_nhwc").result


def _written_for_cmsis(model: onnx.ModelProto) -> bool:
    """Whether qirc wrote `model` for a target whose kernels add before multiplying (CMSIS-NN: deeploy-cortexm)."""
    from ..backends.deeploy.emit import TARGET_KEY
    from ..backends.deeploy.targets import TARGETS

    name = next((p.value for p in model.metadata_props if p.key == TARGET_KEY), None)
    return name in TARGETS and TARGETS[name].add_before_mul


def import_deeploy_onnx(path_or_model: Union[str, os.PathLike, onnx.ModelProto]) -> Module:
    """Read a Deeploy-form ONNX model (as qirc writes it) into an integer-IR Module."""
    if isinstance(path_or_model, onnx.ModelProto):
        model, filename = path_or_model, "<model>"
    else:
        filename = str(path_or_model)
        try:
            model = onnx.load(filename)
        except Exception as e:
            raise FrontendError(f"cannot read ONNX file: {e}", file=filename) from None
    return _Reader(model, filename).read()
