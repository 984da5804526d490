"""Write quant-level IR back as ONNX that onnxruntime runs: standard QDQ or DeepQuant's decomposed QCDQ.

    model = write_onnx(module, form="qdq")      # QuantizeLinear / DequantizeLinear
    model = write_onnx(module, form="qcdq")     # Div -> Add -> Round -> Clip  and  Sub -> Mul
    save(module, "out.onnx", form="qdq")

The module must be at the quant level: `qir.*` structure, `quant.qcast` / `quant.dcast`, `onnx.*` float ops.
The written graph computes exactly what the IR means (DESIGN.md section 3), op for op, in opset 13:

form "qdq"
    qcast      QuantizeLinear(x, s, z) [-> Clip(lo, hi) for a narrow or sub-8-bit range], as Brevitas writes it;
               the integers travel as int8/uint8 tensors.  QuantizeLinear rounds before adding the zero point, so
               an "add_round" qcast with a non-zero zero point (whose ties differ), or a storage type that
               QuantizeLinear cannot produce, is written in the decomposed form below instead.
    dcast      DequantizeLinear(q, s, z) (per axis: attribute `axis`)
    quantized constants   integer initializers (int8/uint8/int32 biases) [-> Clip for a narrow range]
form "qcdq"
    qcast      Div(x, s) -> Add(z) -> Round -> Clip(lo, hi) ("add_round"; the integers travel as float tensors);
               a "round_add" qcast with a non-zero zero point is Div -> Round -> Add -> Clip
    dcast      Sub(q, z) -> Mul(., s)
    quantized constants   float initializers holding the real values followed by the quantizer, as DeepQuant writes
               weights (checked to give back exactly the stored integers; else the integers themselves, as floats)

`int.conv` / `int.gemm` / `int.matmul` on stored integers (what the importer makes of DeepQuant's dequant-moved form)
are written as Conv / Gemm / MatMul on integer-valued float tensors, as that form has them; onnxruntime computes them
exactly because the writer first checks, from the constant weights and the input's storage range, that no partial
sum can reach 2^24.  Other `int.*` ops belong to the integer level and are refused.

`onnx.*` ops map to their ONNX ops; attributes that the IR holds but opset 13 takes as inputs (Reshape's shape,
Pad's pads and value, Clip's min and max, ReduceSum/Squeeze/Unsqueeze axes) go back to constant inputs.  Every
tensor gets its shape in value_info; the result passes `onnx.checker` with full shape inference.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...qir.diagnostics import BackendError, op_error
from ...qir.ir import Module, Operation, Value
from ...qir.types import TensorType, UniformQuantType
from . import transformer_ops

FORMS = ("qdq", "qcdq")
OPSET = 13
IR_VERSION = 8  # what opset 13 needs; old enough for every onnxruntime that runs opset 13

F32 = np.float32

#: IR attributes that opset 13 takes as (constant) inputs, in input order after the data input: (attr, dtype).
ATTRS_AS_INPUTS: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "Reshape": (("shape", "int64"),),
    "Pad": (("pads", "int64"), ("value", "float32")),
    "Clip": (("min", "float32"), ("max", "float32")),
    "ReduceSum": (("axes", "int64"),),
    "Squeeze": (("axes", "int64"),),
    "Unsqueeze": (("axes", "int64"),),
}

#: Integer linear ops (the importer makes them from DeepQuant's dequant-moved form) and the ONNX op that computes
#: them on integer-valued float tensors.
INT_LINEAR_OPS = {"int.conv": "Conv", "int.gemm": "Gemm", "int.matmul": "MatMul"}

#: Storage types that QuantizeLinear-13 can produce and DequantizeLinear-13 can read.
_QLINEAR_STORAGE = ("i8", "u8")
_DQLINEAR_STORAGE = ("i8", "u8", "i32")

_ONNX_ELEM = {
    "f16": TensorProto.FLOAT16, "f32": TensorProto.FLOAT, "f64": TensorProto.DOUBLE, "i1": TensorProto.BOOL,
    "i8": TensorProto.INT8, "i16": TensorProto.INT16, "i32": TensorProto.INT32, "i64": TensorProto.INT64,
    "u8": TensorProto.UINT8, "u16": TensorProto.UINT16, "u32": TensorProto.UINT32, "u64": TensorProto.UINT64,
}

# How a quantized value's stored integers travel in the written graph.
INT_CARRIER = "int"      # an integer tensor of the storage type (QuantizeLinear output, integer initializer)
FLOAT_CARRIER = "float"  # a float32 tensor holding the integers (the decomposed form)


def write_onnx(module: Module, form: str = "qdq") -> onnx.ModelProto:
    """Write a quant-level module as an ONNX model in `form` ("qdq" or "qcdq"); see the module docstring."""
    if form not in FORMS:
        raise BackendError(f"unknown ONNX form '{form}' (choose one of: {', '.join(FORMS)})")
    return _Writer(module, form).write()


def save(module: Module, path: Union[str, os.PathLike], form: str = "qdq") -> Path:
    """Write the module with `write_onnx` and save it to `path`; returns the path."""
    model = write_onnx(module, form)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


class _Writer:
    def __init__(self, module: Module, form: str):
        self.module = module
        self.form = form
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.value_info: Dict[str, onnx.ValueInfoProto] = {}
        self.graph_inputs: List[onnx.ValueInfoProto] = []
        self.graph_outputs: List[onnx.ValueInfoProto] = []
        self.tensor_of: Dict[int, str] = {}    # id(Value) -> tensor name
        self.carrier_of: Dict[int, str] = {}   # id(Value) -> INT_CARRIER / FLOAT_CARRIER (integer values)
        self.used_names: set = set()
        self.node_names: set = set()
        self.const_names: Dict[tuple, str] = {}
        self.output_name_of: Dict[int, str] = {}  # id(Value) -> the graph output name it is written under

    # ----- names ---------------------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        return _unique(hint or "t", self.used_names)

    def node_name(self, op: Operation, suffix: str = "") -> str:
        return _unique((op.loc or op.name) + suffix, self.node_names)

    def result_name(self, value: Value, op: Operation) -> str:
        """The tensor name for `value`: its graph output name if it is one, else its SSA name or the op's loc."""
        out = self.output_name_of.get(id(value))
        if out is not None:
            return out  # reserved up front
        hint = value.name or (f"{op.loc}_out{value.index}" if op.loc else f"v{value.index}")
        return self.fresh(hint)

    # ----- emission helpers ----------------------------------------------------------------------------------------
    def const(self, array, dtype, hint: str) -> str:
        """An initializer holding `array` as `dtype` (shared between identical constants)."""
        array = np.array(np.asarray(array), dtype=dtype, order="C")  # keeps rank 0 (ascontiguousarray would not)
        key = (array.dtype.str, array.shape, array.tobytes())
        name = self.const_names.get(key)
        if name is None:
            name = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(array, name))
            self.const_names[key] = name
        return name

    def node(self, op_type: str, inputs: Sequence[str], op: Operation, suffix: str, out_hint: Optional[str] = None,
             out_name: Optional[str] = None, shape=None, elem: Optional[int] = None, **attrs) -> str:
        """Append one node with one output; record the output's value_info when `shape` is given."""
        out = out_name or self.fresh(out_hint or f"{op.loc or op.name}{suffix}_output")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.node_name(op, suffix), **attrs))
        if shape is not None:
            self.record(out, elem, shape)
        return out

    def record(self, name: str, elem: int, shape) -> None:
        self.value_info[name] = helper.make_tensor_value_info(name, elem, list(shape))

    # ----- types ---------------------------------------------------------------------------------------------------
    @staticmethod
    def elem_of(t: TensorType, carrier: Optional[str] = None) -> int:
        if t.is_float:
            return _ONNX_ELEM[t.element.name]
        return TensorProto.FLOAT if carrier == FLOAT_CARRIER else _ONNX_ELEM[t.storage.name]

    def quant_params(self, q: UniformQuantType, rank: int, op: Operation):
        """(scale, zero point) arrays: scalars per tensor, shaped for broadcasting (decomposed) per axis."""
        if q.is_per_axis and not (0 <= q.axis < rank):
            raise op_error(BackendError, op, f"quantization axis {q.axis} is out of range for a rank-{rank} tensor")
        return q.scales_for(rank).astype(F32), q.zero_points_for(rank)

    # ----- driver --------------------------------------------------------------------------------------------------
    def write(self) -> onnx.ModelProto:
        ops = self.module.ops()
        for op in ops:
            if op.name == "qir.input":
                self.used_names.add(op.attrs["name"])
        output_names = set()
        for op in ops:
            if op.name == "qir.output":
                name = op.attrs["name"]
                v = op.operands[0]
                passes_input_through = v.owner.name == "qir.input" and v.owner.attrs["name"] == name
                if name in output_names or (name in self.used_names and not passes_input_through):
                    raise op_error(BackendError, op, f"graph output name '{name}' is used twice")
                output_names.add(name)
                self.used_names.add(name)
                # the producing op writes its tensor under the output name; inputs, constants and a value that is
                # output twice need an Identity instead
                if id(v) not in self.output_name_of and v.owner.name not in ("qir.input", "qir.const"):
                    self.output_name_of[id(v)] = name
        for op in ops:
            self.emit(op)
        graph = helper.make_graph(self.nodes, _graph_name(self.module.name), self.graph_inputs, self.graph_outputs,
                                  self.initializers)
        io_names = {vi.name for vi in self.graph_inputs} | {vi.name for vi in self.graph_outputs}
        graph.value_info.extend(vi for name, vi in self.value_info.items() if name not in io_names)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qirc")
        model.ir_version = IR_VERSION
        try:
            onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise BackendError(f"the written {self.form} ONNX model fails onnx.checker: {_first_line(e)}") from None
        return model

    def emit(self, op: Operation) -> None:
        if op.name == "qir.input":
            self.emit_input(op)
        elif op.name == "qir.output":
            self.emit_output(op)
        elif op.name == "qir.const":
            self.emit_const(op)
        elif op.name == "quant.qcast":
            self.emit_qcast(op)
        elif op.name == "quant.dcast":
            self.emit_dcast(op)
        elif op.dialect == "onnx":
            self.emit_onnx(op)
        elif op.name in INT_LINEAR_OPS:
            self.emit_int_linear(op)
        else:
            raise op_error(BackendError, op, f"the ONNX writer takes quant-level IR (qir, quant and onnx ops, and "
                                             f"integer conv/gemm/matmul), not '{op.name}'; integer-level modules are "
                                             f"written by the Deeploy backend")

    # ----- structure -----------------------------------------------------------------------------------------------
    def emit_input(self, op: Operation) -> None:
        v = op.result
        name = op.attrs["name"]
        self.tensor_of[id(v)] = name
        if v.type.is_quant:
            self.carrier_of[id(v)] = INT_CARRIER
        self.graph_inputs.append(helper.make_tensor_value_info(name, self.elem_of(v.type, INT_CARRIER),
                                                               list(v.type.shape)))

    def emit_output(self, op: Operation) -> None:
        v = op.operands[0]
        name = op.attrs["name"]
        src = self.tensor_of[id(v)]
        carrier = self.carrier_of.get(id(v))
        if src != name:
            self.node("Identity", [src], op, "/Identity", out_name=name)
        self.graph_outputs.append(helper.make_tensor_value_info(name, self.elem_of(v.type, carrier),
                                                                list(v.type.shape)))

    def emit_const(self, op: Operation) -> None:
        v = op.result
        t = v.type
        value = np.asarray(op.attrs["value"])
        if value.shape != t.shape:
            if value.size == t.size:
                value = value.reshape(t.shape)
            else:
                raise op_error(BackendError, op, f"constant holds {value.size} values, its type {t} needs {t.size}")
        hint = v.name or (op.loc or "const")
        if not t.is_quant:
            self.tensor_of[id(v)] = self.const(value, t.element.np_dtype, hint)
            if not t.is_float:
                self.carrier_of[id(v)] = INT_CARRIER
            return
        q = t.quant
        if self.form == "qdq" and q.storage.name in _DQLINEAR_STORAGE:
            name = self.const(value, q.storage.np_dtype, hint + ("_int" if q.narrow else ""))
            if q.narrow:
                name = self.clip_int(op, name, q, t.shape, self.result_name(v, op))
            self.tensor_of[id(v)] = name
            self.carrier_of[id(v)] = INT_CARRIER
            return
        self.carrier_of[id(v)] = FLOAT_CARRIER
        stored = value.astype(np.int64)
        if self.form == "qcdq":
            scale, zp = self.quant_params(q, t.rank, op)
            real = (stored - zp).astype(F32) * scale
            if np.array_equal(_decomposed_quantize(real, scale, zp, q, "add_round"), stored):
                # DeepQuant's form: float weights, quantized in the graph (the importer folds it back)
                src = self.const(real, F32, hint + "_real")
                self.tensor_of[id(v)] = self.decomposed_qcast(op, src, q, t.shape, "add_round",
                                                              self.result_name(v, op))
                return
        # integers too large to survive the float round trip, or a storage type DequantizeLinear cannot read
        self.tensor_of[id(v)] = self.const(stored, F32, hint)

    # ----- quant ---------------------------------------------------------------------------------------------------
    def emit_qcast(self, op: Operation) -> None:
        v = op.result
        x = self.tensor_of[id(op.operands[0])]
        q = v.type.quant
        rounding = op.attr("rounding") or "round_add"
        zero_points = any(z != 0 for z in q.zero_points)
        out = self.result_name(v, op)
        use_qlinear = (self.form == "qdq" and q.storage.name in _QLINEAR_STORAGE
                       and (rounding == "round_add" or not zero_points))
        if use_qlinear:
            self.carrier_of[id(v)] = INT_CARRIER
            self.tensor_of[id(v)] = self.quantize_linear(op, x, q, v.type.shape, out)
        else:
            self.carrier_of[id(v)] = FLOAT_CARRIER
            self.tensor_of[id(v)] = self.decomposed_qcast(op, x, q, v.type.shape, rounding, out)

    def emit_dcast(self, op: Operation) -> None:
        qv = op.operands[0]
        v = op.result
        q = qv.type.quant
        src = self.tensor_of[id(qv)]
        carrier = self.carrier_of.get(id(qv), INT_CARRIER)
        shape = v.type.shape
        out = self.result_name(v, op)
        self.tensor_of[id(v)] = out
        if carrier == INT_CARRIER and self.form == "qdq" and q.storage.name in _DQLINEAR_STORAGE and not (
                q.storage.name == "i32" and any(z != 0 for z in q.zero_points)):
            scale, zp = self._qlinear_params(op, q, len(shape))
            attrs = {"axis": q.axis} if q.is_per_axis else {}
            self.node("DequantizeLinear", [src, scale, zp], op, "", out_name=out, shape=shape,
                      elem=TensorProto.FLOAT, **attrs)
            return
        if carrier == INT_CARRIER:
            src = self.node("Cast", [src], op, "/Cast", shape=shape, elem=TensorProto.FLOAT, to=TensorProto.FLOAT)
        scale, zp = self.quant_params(q, len(shape), op)
        zp_name = self.const(zp.astype(F32), F32, f"{op.loc or 'dcast'}/zero_point")
        scale_name = self.const(scale, F32, f"{op.loc or 'dcast'}/scale")
        centred = self.node("Sub", [src, zp_name], op, "/Sub", shape=shape, elem=TensorProto.FLOAT)
        self.node("Mul", [centred, scale_name], op, "/Mul", out_name=out, shape=shape, elem=TensorProto.FLOAT)

    def _qlinear_params(self, op: Operation, q: UniformQuantType, rank: int) -> Tuple[str, str]:
        """Scale and zero-point initializers for QuantizeLinear/DequantizeLinear: scalars, or 1-D along `axis`."""
        hint = op.loc or op.name
        scales = np.asarray(q.scales, dtype=F32)
        zps = np.asarray(q.zero_points, dtype=np.int64)
        if not q.is_per_axis:
            scales, zps = scales.reshape(()), zps.reshape(())
        elif not (0 <= q.axis < rank):
            raise op_error(BackendError, op, f"quantization axis {q.axis} is out of range for a rank-{rank} tensor")
        return (self.const(scales, F32, f"{hint}/scale"),
                self.const(zps, q.storage.np_dtype, f"{hint}/zero_point"))

    def quantize_linear(self, op: Operation, x: str, q: UniformQuantType, shape, out: str) -> str:
        scale, zp = self._qlinear_params(op, q, len(shape))
        attrs = {"axis": q.axis} if q.is_per_axis else {}
        elem = _ONNX_ELEM[q.storage.name]
        if not q.narrow:
            return self.node("QuantizeLinear", [x, scale, zp], op, "", out_name=out, shape=shape, elem=elem, **attrs)
        full = self.node("QuantizeLinear", [x, scale, zp], op, "", shape=shape, elem=elem, **attrs)
        return self.clip_int(op, full, q, shape, out)

    def clip_int(self, op: Operation, src: str, q: UniformQuantType, shape, out: str) -> str:
        """Clip stored integers to a narrow range (Brevitas' Q -> Clip -> DQ), in the storage type."""
        dtype = q.storage.np_dtype
        lo = self.const(np.array(q.storage_min, dtype=dtype), dtype, f"{op.loc or 'clip'}/min")
        hi = self.const(np.array(q.storage_max, dtype=dtype), dtype, f"{op.loc or 'clip'}/max")
        return self.node("Clip", [src, lo, hi], op, "/Clip", out_name=out, shape=shape,
                         elem=_ONNX_ELEM[q.storage.name])

    def decomposed_qcast(self, op: Operation, x: str, q: UniformQuantType, shape, rounding: str, out: str) -> str:
        """Div(x, s) -> Add(z) -> Round -> Clip ("add_round") or Div -> Round -> Add(z) -> Clip ("round_add")."""
        scale, zp = self.quant_params(q, len(shape), op)
        hint = op.loc or "qcast"
        f = TensorProto.FLOAT
        scale_name = self.const(scale, F32, f"{hint}/scale")
        zp_name = self.const(zp.astype(F32), F32, f"{hint}/zero_point")
        lo = self.const(np.array(q.storage_min, dtype=F32), F32, f"{hint}/min")
        hi = self.const(np.array(q.storage_max, dtype=F32), F32, f"{hint}/max")
        scaled = self.node("Div", [x, scale_name], op, "/Div", shape=shape, elem=f)
        if rounding == "add_round":
            shifted = self.node("Add", [scaled, zp_name], op, "/Add", shape=shape, elem=f)
            rounded = self.node("Round", [shifted], op, "/Round", shape=shape, elem=f)
        elif any(z != 0 for z in q.zero_points):
            rounded_only = self.node("Round", [scaled], op, "/Round", shape=shape, elem=f)
            rounded = self.node("Add", [rounded_only, zp_name], op, "/Add", shape=shape, elem=f)
        else:
            # with a zero zero point both orders compute the same; keep the Add so readers see a quantizer
            shifted = self.node("Add", [scaled, zp_name], op, "/Add", shape=shape, elem=f)
            rounded = self.node("Round", [shifted], op, "/Round", shape=shape, elem=f)
        return self.node("Clip", [rounded, lo, hi], op, "/Clip", out_name=out, shape=shape, elem=f)

    # ----- integer linear ops (DeepQuant's dequant-moved form) ----------------------------------------------------
    def float_view(self, v: Value, op: Operation) -> str:
        """A float tensor holding `v`'s values: the value itself, its float carrier, a float copy of an integer
        constant, or a Cast of an integer tensor."""
        if v.type.is_float or self.carrier_of.get(id(v)) == FLOAT_CARRIER:
            return self.tensor_of[id(v)]
        if v.owner.name == "qir.const":
            values = np.asarray(v.owner.attrs["value"]).reshape(v.type.shape).astype(np.int64)
            return self.const(values.astype(F32), F32, f"{v.name or v.owner.loc or 'const'}_float")
        return self.node("Cast", [self.tensor_of[id(v)]], op, "/Cast", shape=v.type.shape, elem=TensorProto.FLOAT,
                         to=TensorProto.FLOAT)

    def emit_int_linear(self, op: Operation) -> None:
        """int.conv / int.gemm / int.matmul as the float op on integer-valued tensors, which onnxruntime computes
        exactly while every partial sum stays below 2^24 (checked here from the constants and the input ranges)."""
        bound = _accumulator_bound(op)
        if bound >= 2 ** 24:
            raise op_error(BackendError, op, f"{op.name} may accumulate up to {bound:.3g}, beyond 2^24 where float32 "
                                             f"stops being exact; the ONNX writer writes integer linear ops as float "
                                             f"ops on integer values")
        op_type = INT_LINEAR_OPS[op.name]
        inputs = [self.float_view(v, op) for v in op.operands]
        attrs = {name: _attr_value(op.opdef.attrs.get(name), value, op, name) for name, value in op.attrs.items()
                 if not (isinstance(value, (list, tuple)) and len(value) == 0)}
        v = op.result
        out = self.result_name(v, op)
        self.tensor_of[id(v)] = out
        self.carrier_of[id(v)] = FLOAT_CARRIER
        self.record(out, TensorProto.FLOAT, v.type.shape)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.node_name(op), **attrs))

    # ----- onnx.* ops ----------------------------------------------------------------------------------------------
    def emit_onnx(self, op: Operation) -> None:
        op_type = op.name.split(".", 1)[1]
        if op_type in transformer_ops.OPS:  # spelled out in opset 13 (transformer_ops)
            transformer_ops.emit(self, op, op_type)
            return
        opdef = op.opdef
        inputs = [self.tensor_of[id(v)] for v in op.operands]
        moved = dict(ATTRS_AS_INPUTS.get(op_type, ()))
        for attr_name, dtype in ATTRS_AS_INPUTS.get(op_type, ()):
            value = op.attr(attr_name)
            if op_type == "Clip" and value is not None and np.isinf(value):
                value = None  # an absent bound: Clip-13 takes an empty input name
            if op_type == "Pad" and attr_name == "value" and op.attr("mode") not in (None, "constant"):
                value = None
            if value is None:
                inputs.append("")
                continue
            arr = np.asarray(value, dtype=dtype)
            inputs.append(self.const(arr, dtype, f"{op.loc or op_type}/{attr_name}"))
        while inputs and inputs[-1] == "":
            inputs.pop()
        attrs = {}
        for name, value in op.attrs.items():
            if name in moved:
                continue
            if isinstance(value, (list, tuple)) and len(value) == 0:
                continue  # an unset list attribute (dilations [] = ONNX's default)
            attrs[name] = _attr_value(opdef.attrs.get(name), value, op, name)
        outs = [self.result_name(r, op) for r in op.results]
        for r, name in zip(op.results, outs):
            self.tensor_of[id(r)] = name
            if r.type.is_quant:
                # an op that moves stored integers keeps its operand's carrier
                self.carrier_of[id(r)] = next((self.carrier_of[id(v)] for v in op.operands if v.type.is_quant),
                                              INT_CARRIER)
            self.record(name, self.elem_of(r.type, self.carrier_of.get(id(r))), r.type.shape)
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.node_name(op), **attrs))


def _attr_value(attr_def, value, op: Operation, name: str):
    kind = attr_def.kind if attr_def is not None else None
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return int(bool(value))
        if kind == "ints":
            return [int(v) for v in value]
        if kind == "floats":
            return [float(v) for v in value]
        if kind == "str":
            return str(value)
        if kind == "dense":
            return numpy_helper.from_array(np.asarray(value), name)
        if kind == "type":
            raise TypeError("a type attribute has no ONNX form")
        return value
    except (TypeError, ValueError) as e:
        raise op_error(BackendError, op, f"attribute '{name}' cannot be written to ONNX: {e}") from None


def _range_of(v: Value) -> Tuple[Optional[np.ndarray], float, float]:
    """(the values if `v` is a constant else None, the smallest and largest value `v` can hold)."""
    if v.owner.name == "qir.const":
        a = np.asarray(v.owner.attrs["value"]).astype(np.float64).reshape(v.type.shape)
        return a, (float(a.min()) if a.size else 0.0), (float(a.max()) if a.size else 0.0)
    t = v.type
    if t.is_float:
        return None, float("-inf"), float("inf")
    return None, float(t.element.min), float(t.element.max)


def _partial_sum_bound(w: np.ndarray, x_lo: float, x_hi: float) -> float:
    """max |partial sum of w[i] * x[i]| over x[i] in [x_lo, x_hi], for each row of `w` (last axis summed), maxed.

    Any partial sum lies between the sums of the per-term minima and maxima over the terms it includes, so it is
    bounded by the sum of the positive per-term maxima (and likewise below)."""
    up = np.maximum(w * x_lo, w * x_hi)
    down = np.minimum(w * x_lo, w * x_hi)
    return float(max(np.clip(up, 0, None).sum(axis=-1).max(initial=0.0),
                     (-np.clip(down, None, 0)).sum(axis=-1).max(initial=0.0)))


def _accumulator_bound(op: Operation) -> float:
    """An upper bound on |partial sum| of an integer conv / gemm / matmul: constant operands by their values, others
    by their storage range."""
    a, a_lo, a_hi = _range_of(op.operands[0])
    b, b_lo, b_hi = _range_of(op.operands[1])
    bias = 0.0
    if len(op.operands) > 2:
        _, c_lo, c_hi = _range_of(op.operands[2])
        bias = max(abs(c_lo), abs(c_hi))
    if op.name == "int.conv":
        w = b if b is not None else np.full(op.operands[1].type.shape, max(abs(b_lo), abs(b_hi)))
        return _partial_sum_bound(w.reshape(w.shape[0], -1), a_lo, a_hi) + bias
    if op.name == "int.gemm":
        trans_a, trans_b = op.attr("transA") or 0, op.attr("transB") or 0
        if b is not None:
            return _partial_sum_bound(b if trans_b else b.T, a_lo, a_hi) + bias      # rows: outputs, last axis: K
        if a is not None:
            return _partial_sum_bound(a.T if trans_a else a, b_lo, b_hi) + bias
    elif b is not None:  # int.matmul with a constant right operand [.., K, N]
        return _partial_sum_bound(np.swapaxes(b, -1, -2).reshape(-1, b.shape[-2]), a_lo, a_hi)
    k = op.operands[0].type.shape[-1] if op.name == "int.matmul" else \
        op.operands[0].type.shape[0 if (op.attr("transA") or 0) else 1]
    return float(k) * max(abs(a_lo), abs(a_hi)) * max(abs(b_lo), abs(b_hi)) + bias


def _decomposed_quantize(real: np.ndarray, scale: np.ndarray, zp: np.ndarray, q: UniformQuantType,
                         rounding: str) -> np.ndarray:
    """What onnxruntime computes for the decomposed quantizer on `real` (float32 throughout), as int64."""
    scaled = (real.astype(F32) / scale.astype(F32)).astype(F32)
    z = zp.astype(F32)
    if rounding == "add_round":
        r = np.rint((scaled + z).astype(F32))
    else:
        r = (np.rint(scaled) + z).astype(F32)
    return np.clip(r, q.storage_min, q.storage_max).astype(np.int64)


def _graph_name(name: str) -> str:
    return re.sub(r"\s+", "_", name or "qirc") or "qirc"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unique(base: str, taken: set) -> str:
    """`base`, or `base_1`, `base_2`, ... : the first not in `taken`, which it joins."""
    name, n = base, 1
    while name in taken:
        name = f"{base}_{n}"
        n += 1
    taken.add(name)
    return name
