"""ONNX -> quant-level qir: `import_onnx(path_or_model, name=None) -> Module`.

One walk over the topologically sorted graph gives every ONNX tensor an abstract value (see `patterns`); IR ops are
created when a value is needed as a float or quantized tensor, so quantizer patterns are recognised whole:

    Div(x, s) -> Add(z) -> Round -> Clip(lo, hi)   ->  quant.qcast {rounding = "add_round"}
    Sub(q, z) -> Mul(s)                             ->  quant.dcast
    QuantizeLinear [-> Clip] -> DequantizeLinear    ->  quant.qcast {rounding = "round_add"} -> quant.dcast
    QONNX Quant(x, s, z, bits)                      ->  quant.qcast {rounding = "add_round"} -> quant.dcast
    QONNX Trunc(x, s, z, b_in, s_out, b_out)        ->  quant.qcast (i32 grid at s) -> exact integer shift by
                                                        s_out / s = 2^k (int.requant_shift, int.mul, int.add) ->
                                                        quant.dcast  (Brevitas TruncAvgPool; see `_qonnx_Trunc`)
    any quantizer of a constant                     ->  qir.const of the quantized type (stored integers) -> dcast

Other ops become `onnx.*` ops whose constant inputs are attributes with every ONNX default spelled out.  DeepQuant's
`dequant_moved` Conv/Gemm, whose weight and bias inputs are the stored integers (Clip outputs) while the activation
input is still dequantized, becomes `int.conv`/`int.gemm` on the activation's stored integers; see `_linear_int`.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from ... import _onnx as onnx  # onnx's protobufs without its 1 s import (see qirc/_onnx.py)
from ..._onnx import helper, numpy_helper

from ...qir.diagnostics import FrontendError
from ...qir.ir import Module, Value, const_op, input_op, output_op
from ...qir.types import ScalarType, TensorType, UniformQuantType, f32, i32
from . import patterns as P
from .loader import (DEFAULT_DOMAINS, GraphIndex, bind_input_shapes, cut_outputs, default_opset,
                     dynamic_input_error, has_dynamic_input, index_graph, load_model_proto)
from .qoperator import check_dynamic_quantization, is_qoperator, op_kinds, qoperator_to_qdq
from .patterns import (ADD_ROUND, ROUND_ADD, Accum, Const, FloatVal, IntView, QuantParamError, Quantized, Scaled)
from .shape_folding import refine_shapes
from .transformer_patterns import CONSTANT_PARAMETERS, TransformerImport, parameters_constant

F32 = np.float32
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas")
#: quantizer inputs that must be constants: op type -> (input index, what it is)
_PARAM_INPUTS = {"QuantizeLinear": ((1, "the scale"), (2, "the zero point")),
                 "DequantizeLinear": ((1, "the scale"), (2, "the zero point")),
                 "Quant": ((1, "the scale"), (2, "the zero point"), (3, "the bit width")),
                 "BipolarQuant": ((1, "the scale"),),
                 "Trunc": ((1, "the scale"), (2, "the zero point"), (4, "the output scale"))}
_CONSTANTS_RULE = ("but it must be a constant: scales and zero points must be constants (initializers or Constant "
                   "nodes), since qirc compiles the quantization the model fixes")
#: QONNX ops whose versions differ in their inputs: the input counts of the versions qirc reads (Trunc v2 as
#: Brevitas exports it, and with the output zero point of qonnx's newer reference; v1's five inputs rescale by the
#: input scale and are not read)
QONNX_INPUT_COUNTS = {"Trunc": (6, 7)}
#: float initializers of more elements than this are released once quantized (`Const.release`)
RELEASE_ELEMENTS = 1024
#: Ops that exist only to compute constants (shape arithmetic): supported when all their inputs are constant.
FOLD_ONLY_OPS = ("ConstantOfShape", "Range", "Equal", "Where", "Pow", "Sqrt", "Erf", "Tanh")
#: Ops imported as other ops, which the named lowering pass takes: op -> (pass, how)
DECOMPOSED_OPS = {"LeakyRelu": ("add-rescale", "imported as (1 - alpha) * Relu(x) + alpha * x, for 0 < alpha < 1")}

State = Union[Const, FloatVal, Scaled, Quantized, Accum, IntView]


def import_onnx(path_or_model, name: Optional[str] = None,
                input_shapes: Optional[Dict[str, Tuple[int, ...]]] = None, outputs: Optional[Sequence[str]] = None,
                note: Optional[Callable[[str], None]] = None) -> Module:
    """Import a quantized ONNX model (file path or ModelProto) as a quant-level qir Module.

    input_shapes  {input name: shape} for inputs with dynamic dims (`--input-shape`); an input whose only dynamic
                  dim is the leading one gets batch 1 without it, with a note through `note(text)`
    outputs       compile only the subgraph computing these tensors (`--outputs`)
    """
    model, filename = load_model_proto(path_or_model)
    if isinstance(path_or_model, onnx.ModelProto) and (input_shapes or outputs or has_dynamic_input(model)):
        model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's proto stays as it was
    if outputs:
        cut_outputs(model, filename, outputs)
    bind_input_shapes(model, filename, input_shapes, note)
    kinds = op_kinds(model)
    check_dynamic_quantization(model, filename, kinds)
    if is_qoperator(model, kinds):
        model = qoperator_to_qdq(model, filename)
        kinds = op_kinds(model)
    index = index_graph(model, filename, kinds)
    refine_shapes(index)  # shapes behind constant shape arithmetic (shape_folding)
    if name is None:
        if isinstance(path_or_model, onnx.ModelProto):
            name = model.graph.name or "model"
        else:
            name = os.path.splitext(os.path.basename(os.fspath(path_or_model)))[0]
    return OnnxImporter(index, _module_name(name)).run()


def _module_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", name) or "model"
    return name if not name[0].isdigit() else "m" + name


class OnnxImporter(TransformerImport):
    """Translates one checked graph (`GraphIndex`) into a Module."""

    def __init__(self, index: GraphIndex, name: str):
        self.g = index
        self.opset = default_opset(index.model)
        self.module = Module(name)
        self.env: Dict[str, State] = {}
        self.float_memo: Dict[int, Value] = {}  # id(state) -> its float IR value
        self.node: Optional[onnx.NodeProto] = None  # the node being translated, for diagnostics
        # Quantization parameters are a few shared initializers (a model's quantizers reuse one zero point, a few
        # scales and clip bounds): their checks, the quant types built from them and the dequantizers' arithmetic
        # are memoised by the identity of the arrays and types.  key -> (the objects whose id()s the key holds,
        # kept alive so that an id is never reused while its entry exists; the value).
        self._memo: Dict[tuple, tuple] = {}
        self._float_types: Dict[Tuple[int, ...], TensorType] = {}  # shape -> tensor<shape x f32>

    # ----- driver ------------------------------------------------------------------------------------------------
    def run(self) -> Module:
        self._check_supported()
        self._check_quant_params_are_not_inputs()
        for vi in self.g.real_inputs:
            elem = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
            if elem != onnx.TensorProto.FLOAT:
                raise FrontendError(f"graph input '{vi.name}' has element type "
                                    f"{onnx.TensorProto.DataType.Name(elem)}; qirc imports float32 inputs",
                                    file=self.g.filename)
            shape = self.g.shapes.get(vi.name)
            if shape is None:
                raise dynamic_input_error(vi, self.g.filename)
            self.env[vi.name] = FloatVal(input_op(self.module, vi.name, TensorType(shape, f32)))
        fusions = self.fusions  # (found on the index's initializers: before the weights leave it)
        # The large float initializers (weights) move into the state table, which holds them only until their
        # quantizer has computed the stored integers (see Const.release): the index keeps no reference to them.
        initializers = self.g.initializers
        large = {name for name, array in initializers.items()
                 if array.dtype.kind == "f" and array.size > RELEASE_ELEMENTS}
        protos = {t.name: t for t in self.g.model.graph.initializer if t.name in large} if large else {}
        for name, array in initializers.items():
            proto = protos.get(name)
            reload = None if proto is None else functools.partial(numpy_helper.to_array, proto)
            self.env[name] = Const(array, self.g.low_bit.get(name), reload)
        for name in protos:
            del initializers[name]
        del initializers, protos
        handlers: Dict[Tuple[str, str], Callable] = {}
        for node in self.g.nodes:
            self.node = node
            handler = self.fused_handler(node) if fusions else None
            if handler is None:
                key = (node.domain, node.op_type)
                handler = handlers.get(key)
                if handler is None:
                    handler = handlers[key] = self._handler(node)
            try:
                handler(node)
            except QuantParamError as err:
                raise self.error(str(err)) from None
            except (FrontendError, KeyboardInterrupt):
                raise
            except Exception as err:  # an input this importer did not foresee: still one located line
                raise self.error(f"cannot import this node ({type(err).__name__}: {err})") from err
        self.node = None
        for name in self.g.output_names:
            output_op(self.module, name, self._output_value(name))
        self.module.erase_dead()
        return self.module

    def _handler(self, node: onnx.NodeProto) -> Callable:
        fused = self.fused_handler(node)  # a node of a LayerNorm / GELU chain (transformer_patterns)
        if fused is not None:
            return fused
        if node.domain in QONNX_DOMAINS:
            return getattr(self, f"_qonnx_{node.op_type}")
        return getattr(self, f"_op_{node.op_type}")

    def _check_supported(self) -> None:
        """ONE error listing every unsupported op type with its nodes (fold-only ops count when not constant)."""
        if self._all_kinds_supported():
            return
        constant = set(self.g.initializers)
        constant.add("")  # an omitted optional input: a node whose other inputs are constant folds
        unsupported: Dict[str, List[str]] = {}
        fusions = self.fusions
        handled: Dict[str, bool] = {}  # op type -> whether this importer has its `_op_` handler
        for node in self.g.nodes:
            if fusions and id(node) in fusions:
                continue
            domain, op_type = node.domain, node.op_type
            if domain in QONNX_DOMAINS:
                ok = hasattr(self, f"_qonnx_{op_type}") and \
                    len(node.input) in QONNX_INPUT_COUNTS.get(op_type, (len(node.input),))
            elif domain in DEFAULT_DOMAINS:
                ok = handled.get(op_type)
                if ok is None:
                    ok = handled[op_type] = hasattr(self, "_op_" + op_type)
                all_const = constant.issuperset(node.input)
                if (ok and all_const) or op_type == "Constant" or op_type == "Shape":
                    constant.update(node.output)
                if not all_const and op_type in FOLD_ONLY_OPS:
                    ok = False
                if op_type in CONSTANT_PARAMETERS and not parameters_constant(node, constant):
                    ok = False
            else:
                ok = False
            if not ok:
                label = node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
                unsupported.setdefault(label, []).append(self.g.label(node))
        if unsupported:
            raise FrontendError("unsupported ops: " + _listing(unsupported), file=self.g.filename)

    def _all_kinds_supported(self) -> bool:
        """Whether every node is supported whatever its inputs, as its op type says: every op type has a handler, and
        none is supported only on constants, or only with some input counts (then no node needs looking at)."""
        kinds = self.g.op_kinds
        if kinds is None:
            return False
        for domain, op_type in kinds:
            if domain in QONNX_DOMAINS:
                if not hasattr(self, f"_qonnx_{op_type}") or op_type in QONNX_INPUT_COUNTS:
                    return False
            elif domain in DEFAULT_DOMAINS:
                if not hasattr(self, "_op_" + op_type) or op_type in FOLD_ONLY_OPS or \
                        op_type in CONSTANT_PARAMETERS:
                    return False
            else:
                return False
        return True

    def _check_quant_params_are_not_inputs(self) -> None:
        """A quantizer's scale or zero point fed by a graph input (of any element type): say that, before the input
        check would complain about the input's element type."""
        kinds = self.g.op_kinds
        if kinds is not None and not any(op_type in _PARAM_INPUTS and (domain in DEFAULT_DOMAINS or
                                                                        domain in QONNX_DOMAINS)
                                          for domain, op_type in kinds):
            return
        real = {vi.name for vi in self.g.real_inputs}
        for node in self.g.nodes:
            params = _PARAM_INPUTS.get(node.op_type if node.domain in DEFAULT_DOMAINS or node.domain in QONNX_DOMAINS
                                       else "", ())
            for i, what in params:
                if i < len(node.input) and node.input[i] in real:
                    raise self.g.error(f"{what} ('{node.input[i]}') is a graph input, {_CONSTANTS_RULE}", node)

    # ----- diagnostics -------------------------------------------------------------------------------------------
    def error(self, message: str, node: Optional[onnx.NodeProto] = None) -> FrontendError:
        return self.g.error(message, node if node is not None else self.node)

    @property
    def loc(self) -> str:
        return self.g.label(self.node) if self.node is not None else ""

    def quant_tensor_type(self, shape: Tuple[int, ...], qtype: UniformQuantType) -> TensorType:
        """TensorType(shape, qtype), memoised (quant types are a few shared objects)."""
        key = ("tensor type", shape, id(qtype))
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = (qtype, TensorType(shape, qtype))
        return hit[1]

    def float_type(self, shape: Tuple[int, ...]) -> TensorType:
        t = self._float_types.get(shape)
        if t is None:
            t = self._float_types[shape] = TensorType(shape, f32)
        return t

    # ----- reading inputs and attributes ---------------------------------------------------------------------------
    def state(self, name: str) -> Optional[State]:
        return self.env.get(name) if name else None

    def inp(self, node: onnx.NodeProto, i: int) -> Optional[str]:
        return node.input[i] if i < len(node.input) and node.input[i] else None

    def const_input(self, node: onnx.NodeProto, i: int, what: str, required: bool = True) -> Optional[np.ndarray]:
        name = self.inp(node, i)
        if name is None:
            if required:
                raise self.error(f"{what} (input {i}) is missing")
            return None
        s = self.env[name]
        if isinstance(s, Const):
            return s.array
        if isinstance(s, Scaled) and isinstance(self.env[s.x_name], Const):
            return self._scaled_const(s)
        if isinstance(s, IntView) and isinstance(s.src, Quantized) and s.src.stored is not None:
            # DequantizeLinear of a quantized initializer (onnxruntime quantizes a Pad's constant_value and an
            # unfolded BatchNormalization's scale as weights): its float32 value, as DequantizeLinear computes it
            return ((np.asarray(s.src.stored, F32) - s.b) * s.a).astype(F32)
        if any(vi.name == name for vi in self.g.real_inputs):
            raise self.error(f"{what} ('{name}') is a graph input, {_CONSTANTS_RULE}")
        raise self.error(f"{what} ('{name}') must be a constant")

    @staticmethod
    def attrs(node: onnx.NodeProto) -> Dict[str, object]:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def shape(self, name: str) -> Tuple[int, ...]:
        s = self.env.get(name)
        if isinstance(s, Const):
            return tuple(s.array.shape)
        return self.g.shape(name, self.node)

    def out_type(self, node: onnx.NodeProto, i: int = 0) -> TensorType:
        return self.float_type(self.g.shape(node.output[i], node))

    # ----- materialisation ----------------------------------------------------------------------------------------
    def float_value(self, name: str) -> Value:
        """The IR float value of tensor `name` (creating qir.const / dcast / float ops as needed)."""
        s = self.env[name]
        memo = self.float_memo.get(id(s))
        if memo is not None:
            return memo
        value = self._materialise_float(name, s)
        self.float_memo[id(s)] = value
        return value

    def _materialise_float(self, name: str, s: State) -> Value:
        if isinstance(s, IntView):  # (the usual case first: an op's input after a dequantizer)
            return self._dequantize(name, s)
        if isinstance(s, FloatVal):
            return s.value
        if isinstance(s, Const):
            return self.float_const(s.array, name)
        if isinstance(s, Scaled):
            if isinstance(self.env[s.x_name], Const):
                return self.float_const(self._scaled_const(s), name)
            div_node = s.nodes[0]
            y = self.create_float("onnx.Div", [self.float_value(s.x_name), self.float_const(s.scale)],
                                  self.shape(div_node.output[0]), div_node)
            if s.zero_point is not None:
                add_node = s.nodes[1]
                y = self.create_float("onnx.Add", [y, self.float_const(s.zero_point)],
                                      self.shape(add_node.output[0]), add_node)
            if s.rounded:
                round_node = s.nodes[-1]
                y = self.create_float("onnx.Round", [y], self.shape(round_node.output[0]), round_node)
            return y
        if isinstance(s, Quantized):
            s = IntView(s)
        if isinstance(s, IntView):
            return self._dequantize(name, s)
        raise self.error(f"'{name}' cannot be used as a float tensor")  # pragma: no cover (Accum is never in env)

    def _dequantize(self, name: str, view: IntView) -> Value:
        """The float value of a*(q - b): a quant.dcast when (a, b) are q's scale and zero point (one per source)."""
        src = view.src
        if src.dcast is not None and P.same_params(view.a, src.dcast[0], src.shape) and \
                P.same_params(view.b, src.dcast[1], src.shape):
            return src.dcast[2]
        value = self._new_dequantize(name, view)
        if value.owner.name == "quant.dcast":
            src.dcast = (view.a, view.b, value)
        return value

    def _new_dequantize(self, name: str, view: IntView) -> Value:
        src = view.src
        if isinstance(src, Accum):
            if np.any(view.b != 0):
                raise self.error(f"the integer accumulator '{name}' is dequantized with a non-zero offset")
            scale = np.asarray(view.a, np.float64) * src.x_scale
            qtype = P.make_quant_type(i32, P.INT32_MIN, P.INT32_MAX, scale, np.zeros((), np.int64), src.shape)
            new_type = TensorType(src.shape, qtype)
            if src.value.uses and src.value.type != new_type:
                raise self.error(f"the integer accumulator of '{src.value.owner.loc}' is dequantized with two "
                                 f"different scales")
            src.value.type = new_type
            return self.module.create("quant.dcast", [src.value], [TensorType(src.shape, f32)], {},
                                      view.loc or self.loc).result
        scale, zp = self.type_params(src.qtype, len(src.shape))
        a, b = view.a, view.b
        key = ("same", id(a), id(b), id(scale), id(zp), src.shape)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = ((a, b, scale, zp), P.same_params(a, scale, src.shape) and
                                     P.same_params(b, zp, src.shape))
        if hit[1]:
            return self.module.create("quant.dcast", [self.quant_value(src)], [self.float_type(src.shape)], {},
                                      view.loc or src.loc).result
        if view.is_raw and src.stored is not None:
            return self.float_const(src.stored.astype(F32), name)
        if view.is_raw:
            raise self.error(f"the stored integers '{name}' of quantizer '{src.loc}' are used as a float tensor "
                             f"without a dequantizer")
        raise self.error(f"dequantizer scale {_fmt_param(view.a)} / zero point {_fmt_param(view.b)} do not match "
                         f"quantizer '{src.loc}' ({src.qtype})")

    def quant_value(self, q: Quantized) -> Value:
        """The IR value of a quantizer's result (quant.qcast, or qir.const of a quantized constant)."""
        if q.value is None:
            t = self.quant_tensor_type(q.shape, q.qtype)
            if q.stored is not None:
                # the IR constant takes the integers the quantizer computed; a constant's own array (the file's
                # integers under a DequantizeLinear) it copies
                stored = q.stored if q.private else np.array(q.stored, dtype=q.qtype.np_dtype)
                q.value = const_op(self.module, stored, t, loc=q.loc)
            else:
                x = self.float_value(q.source)
                q.value = self.module.create("quant.qcast", [x], [t], {"rounding": q.rounding}, q.loc).result
        return q.value

    def float_const(self, array: np.ndarray, name: Optional[str] = None) -> Value:
        array = np.asarray(array)
        if array.dtype != F32:
            array = array.astype(F32)
        return const_op(self.module, array, TensorType(array.shape, f32), loc=self.loc or (name or ""))

    def create(self, op_name: str, operands: Sequence[Value], result_type: TensorType, attrs=None,
               node: Optional[onnx.NodeProto] = None) -> Value:
        loc = self.g.label(node) if node is not None else self.loc
        return self.module.create(op_name, list(operands), [result_type], attrs or {}, loc).result

    def create_float(self, op_name, operands, shape, node=None, attrs=None) -> Value:
        return self.create(op_name, operands, self.float_type(shape), attrs, node)

    def _scaled_const(self, s: Scaled) -> np.ndarray:
        x = np.asarray(self.env[s.x_name].array, F32)
        y = x / s.scale
        if s.zero_point is not None:
            y = y + s.zero_point
        if s.rounded:
            y = np.rint(y)
        return y.astype(F32)

    def _output_value(self, name: str) -> Value:
        s = self.env[name]
        if isinstance(s, Quantized):
            return self.quant_value(s)
        if isinstance(s, IntView) and s.is_raw and isinstance(s.src, Quantized):
            return self.quant_value(s.src)
        return self.float_value(name)

    def emit_float_op(self, node: onnx.NodeProto, op_name: str, inputs: Sequence[str], attrs=None) -> None:
        operands = [self.float_value(n) for n in inputs]
        self.env[node.output[0]] = FloatVal(self.create(op_name, operands, self.out_type(node), attrs, node))

    def fold_or(self, node: onnx.NodeProto, emit: Callable[[], None]) -> None:
        """Fold the node when every input is constant, else run `emit`."""
        arrays = []
        for name in node.input:
            s = self.state(name)
            if name and not isinstance(s, Const):
                return emit()
            arrays.append(s.array if name else None)
        self.env[node.output[0]] = Const(self._fold(node, arrays))

    # ----- constant folding ----------------------------------------------------------------------------------------
    def _fold(self, node: onnx.NodeProto, arrays: List[Optional[np.ndarray]]) -> np.ndarray:
        op, a = node.op_type, self.attrs(node)
        x = arrays[0] if arrays else None
        if op in ("Add", "Sub", "Mul", "Div"):
            y = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}.get(op)
            if y is not None:
                return y(x, arrays[1]).astype(x.dtype)
            if np.issubdtype(x.dtype, np.integer):
                return np.trunc(x / arrays[1]).astype(x.dtype)
            return (x / arrays[1]).astype(x.dtype)
        if op == "Round":
            return np.rint(x)
        if op == "Relu":
            return np.maximum(x, 0).astype(x.dtype)
        if op == "LeakyRelu":
            return np.where(x >= 0, x, x * np.float32(a.get("alpha", 0.01))).astype(x.dtype)
        if op in ("HardSigmoid", "HardSwish"):
            alpha, beta = (float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))) if op == "HardSigmoid" \
                else (1.0 / 6.0, 0.5)
            h = np.minimum(np.maximum(x * np.float32(alpha) + np.float32(beta), 0), 1).astype(x.dtype)
            return h if op == "HardSigmoid" else (x * h).astype(x.dtype)
        if op == "Clip":
            lo, hi = self._clip_bounds(node)
            return np.clip(x, lo, hi).astype(x.dtype)
        if op == "Cast":
            return x.astype(helper.tensor_dtype_to_np_dtype(a["to"]))
        if op == "Reshape":
            return x.reshape(self.g.shape(node.output[0], node))
        if op == "Flatten":
            axis = _norm(a.get("axis", 1), x.ndim)
            return x.reshape(int(np.prod(x.shape[:axis])), -1)
        if op in ("Squeeze", "Unsqueeze"):
            return x.reshape(self.g.shape(node.output[0], node))
        if op == "Transpose":
            return np.transpose(x, a.get("perm"))
        if op == "Concat":
            return np.concatenate([v for v in arrays if v is not None], axis=a["axis"])
        if op == "Gather":
            return np.take(x, arrays[1].astype(np.int64), axis=a.get("axis", 0))
        if op == "Slice":
            return self._fold_slice(node, arrays)
        if op == "Identity":
            return x
        if op in ("Expand", "ConstantOfShape", "Range", "Equal", "Where"):
            return self._fold_misc(op, a, arrays)
        raise self.error(f"cannot fold constant {op}")

    def _fold_slice(self, node, arrays) -> np.ndarray:
        x = arrays[0]
        a = self.attrs(node)
        if self.opset < 10:
            starts, ends, axes = a["starts"], a["ends"], a.get("axes")
            steps = None
        else:
            starts, ends = arrays[1], arrays[2]
            axes = arrays[3] if len(arrays) > 3 and arrays[3] is not None else None
            steps = arrays[4] if len(arrays) > 4 and arrays[4] is not None else None
        axes = list(range(len(starts))) if axes is None else [_norm(int(v), x.ndim) for v in axes]
        steps = [1] * len(starts) if steps is None else [int(v) for v in steps]
        index = [slice(None)] * x.ndim
        for ax, s, e, st in zip(axes, starts, ends, steps):
            index[ax] = slice(int(s), int(max(min(e, 2 ** 62), -2 ** 62)), st)
        return x[tuple(index)]

    def _fold_misc(self, op, a, arrays) -> np.ndarray:
        x = arrays[0]
        if op == "Expand":
            return x * np.ones(tuple(int(d) for d in arrays[1]), dtype=x.dtype)
        if op == "ConstantOfShape":
            value = numpy_helper.to_array(a["value"]).reshape(-1)[0] if "value" in a else np.float32(0)
            return np.full(tuple(int(d) for d in x), value)
        if op == "Range":
            return np.arange(x, arrays[1], arrays[2]).astype(x.dtype)
        if op == "Equal":
            return np.equal(x, arrays[1])
        return np.where(x, arrays[1], arrays[2])

    # ----- structural and constant ops -----------------------------------------------------------------------------
    def _op_Constant(self, node):
        a = self.attrs(node)
        if "value" in a:
            array = numpy_helper.to_array(a["value"])
        elif "value_float" in a:
            array = np.array(a["value_float"], F32)
        elif "value_floats" in a:
            array = np.array(a["value_floats"], F32)
        elif "value_int" in a:
            array = np.array(a["value_int"], np.int64)
        elif "value_ints" in a:
            array = np.array(a["value_ints"], np.int64)
        else:
            raise self.error(f"Constant with attribute(s) {sorted(a)} is not supported")
        self.env[node.output[0]] = Const(array)

    def _op_Identity(self, node):
        self.env[node.output[0]] = self.env[node.input[0]]

    def _op_Dropout(self, node):
        if len(node.output) > 1 and node.output[1] and self.g.consumers.get(node.output[1]):
            raise self.error("the mask output of Dropout is used; only inference Dropout (identity) is supported")
        self.env[node.output[0]] = self.env[node.input[0]]

    def _op_Cast(self, node):
        to = self.attrs(node)["to"]
        s = self.env[node.input[0]]
        if isinstance(s, Const):
            self.env[node.output[0]] = Const(s.array.astype(helper.tensor_dtype_to_np_dtype(to)))
        elif to == onnx.TensorProto.FLOAT and isinstance(s, (FloatVal, Scaled)):
            self.env[node.output[0]] = s
        elif isinstance(s, (Quantized, IntView)) and to != onnx.TensorProto.FLOAT and \
                (isinstance(s, Quantized) or s.is_raw):
            self.env[node.output[0]] = s  # the stored integers, now in an integer ONNX type
        else:
            raise self.error(f"Cast of a non-constant tensor to {onnx.TensorProto.DataType.Name(to)} is not "
                             f"supported")

    def _op_Shape(self, node):
        shape = np.array(self.shape(node.input[0]), np.int64)
        a = self.attrs(node)
        start, end = a.get("start", 0), a.get("end", None)
        self.env[node.output[0]] = Const(shape[start:end])

    def _fold_only(self, node):
        def refuse():
            raise self.error(f"{node.op_type} of a non-constant tensor is not supported")
        self.fold_or(node, refuse)

    _op_ConstantOfShape = _op_Range = _op_Equal = _op_Where = _fold_only

    # ----- decomposed quantizer steps ------------------------------------------------------------------------------
    def _op_Div(self, node):
        env, x_name, d_name = self.env, node.input[0], node.input[1]
        x, d = env.get(x_name) if x_name else None, env.get(d_name) if d_name else None
        # (dtype.kind "f": np.issubdtype(dtype, np.floating) without its cost)
        if isinstance(d, Const) and d.array.dtype.kind == "f" and \
                not (isinstance(x, Const) and x.array.dtype.kind != "f"):
            env[node.output[0]] = Scaled(x_name, np.asarray(d.array, F32), None, False, (node,))
            return
        self.fold_or(node, lambda: self.emit_float_op(node, "onnx.Div", node.input[:2]))

    def _op_Add(self, node):
        env, a_name, b_name = self.env, node.input[0], node.input[1]
        a, b = env.get(a_name) if a_name else None, env.get(b_name) if b_name else None
        for s, other in ((a, b), (b, a)):
            if isinstance(s, Scaled) and s.zero_point is None and not s.rounded and isinstance(other, Const):
                zp = np.asarray(other.array, F32)
                self.env[node.output[0]] = Scaled(s.x_name, s.scale, zp, False, s.nodes + (node,))
                return
        self.fold_or(node, lambda: self.emit_float_op(node, "onnx.Add", node.input[:2]))

    def _op_Round(self, node):
        name = node.input[0]
        s = self.env.get(name) if name else None
        if isinstance(s, Scaled) and not s.rounded:
            self.env[node.output[0]] = Scaled(s.x_name, s.scale, s.zero_point, True, s.nodes + (node,))
            return
        self.fold_or(node, lambda: self.emit_float_op(node, "onnx.Round", node.input[:1]))

    def _clip_bounds(self, node) -> Tuple[float, float]:
        if self.opset < 11:
            a = self.attrs(node)
            return float(a.get("min", -np.inf)), float(a.get("max", np.inf))
        # memoised by the tensor names (a tensor's state never changes; a model's clips share a few bounds)
        inputs = node.input
        key = ("clip bounds", inputs[1] if len(inputs) > 1 else "", inputs[2] if len(inputs) > 2 else "")
        hit = self._memo.get(key)
        if hit is None:
            lo = self.const_input(node, 1, "Clip min", required=False)
            hi = self.const_input(node, 2, "Clip max", required=False)
            hit = self._memo[key] = ((), (-np.inf if lo is None else float(np.asarray(lo).reshape(-1)[0]),
                                          np.inf if hi is None else float(np.asarray(hi).reshape(-1)[0])))
        return hit[1]

    def _op_Clip(self, node):
        s = self.state(node.input[0])
        lo, hi = self._clip_bounds(node)
        if isinstance(s, Const):
            bounds = None
            if s.array.dtype.kind in "iu":  # np.issubdtype(dtype, np.integer)
                old = s.bounds or (-np.inf, np.inf)
                bounds = (max(old[0], lo), min(old[1], hi))
            self.env[node.output[0]] = Const(self._fold(node, [s.array]), bounds)
            return
        if isinstance(s, Scaled) and s.rounded:
            self.env[node.output[0]] = self._decomposed_quantizer(node, s, lo, hi)
        elif isinstance(s, Quantized) or (isinstance(s, IntView) and s.is_raw and isinstance(s.src, Quantized)):
            q = s if isinstance(s, Quantized) else s.src
            self.env[node.output[0]] = self._narrow(q, lo, hi)
        else:
            self.emit_float_op(node, "onnx.Clip", node.input[:1], {"min": lo, "max": hi})

    def _decomposed_quantizer(self, clip_node, s: Scaled, lo: float, hi: float) -> Quantized:
        shape = self.shape(s.x_name)
        # the quant type is a function of the bounds, the parameter arrays and the shape: memoised whole
        key = ("decomposed", lo, hi, id(s.scale), id(s.zero_point), shape)
        hit = self._memo.get(key)
        if hit is not None:
            return self._quantizer(s.x_name, hit[1], ADD_ROUND, shape, self.g.label(clip_node))
        storage, lo_i, hi_i = P.storage_for_range(lo, hi)
        div_node = s.nodes[0]
        add_node = s.nodes[1] if s.zero_point is not None else div_node
        try:
            scale = P.check_scale(s.scale)
        except QuantParamError as err:
            raise self.error(str(err), div_node) from None
        try:
            zp = P.check_zero_point(np.zeros((), F32) if s.zero_point is None else s.zero_point, lo_i, hi_i)
        except QuantParamError as err:
            raise self.error(str(err), add_node) from None
        try:
            qtype = P.make_quant_type(storage, lo_i, hi_i, scale, zp, shape)
        except QuantParamError as err:
            raise self.error(str(err), div_node) from None
        self._memo[key] = ((s.scale, s.zero_point), qtype)
        return self._quantizer(s.x_name, qtype, ADD_ROUND, shape, self.g.label(clip_node))

    def _quantizer(self, x_name: str, qtype: UniformQuantType, rounding: str, shape, loc: str) -> Quantized:
        x = self.env[x_name]
        if isinstance(x, Const):
            rank = x.array.ndim
            key = ("quantize plan", id(qtype), rank)
            hit = self._memo.get(key)
            if hit is None:
                hit = self._memo[key] = (qtype, P.quantize_plan(qtype, rank))
            stored = P.quantize(x.array, qtype, rounding, hit[1])
            x.release()  # (the float weights are read again if anything else uses them)
            return Quantized(qtype, shape, loc, rounding, stored=stored)
        return Quantized(qtype, shape, loc, rounding, source=x_name)

    def type_params(self, qtype: UniformQuantType, rank: int) -> Tuple[np.ndarray, np.ndarray]:
        """P.type_params, memoised per quant type (the types are memoised too: a few shared objects)."""
        key = ("type_params", id(qtype), rank)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = (qtype, P.type_params(qtype, rank))
        return hit[1]

    def _narrow(self, q: Quantized, lo: float, hi: float) -> Quantized:
        qtype = P.narrowed(q.qtype, lo, hi)
        stored = None if q.stored is None else np.clip(q.stored, qtype.storage_min, qtype.storage_max)
        return Quantized(qtype, q.shape, self.loc, q.rounding, q.source, stored)

    # ----- decomposed dequantizer steps ----------------------------------------------------------------------------
    def _view(self, s: State) -> Optional[IntView]:
        if isinstance(s, Quantized):
            return IntView(s, P.ONE, P.ZERO)
        if isinstance(s, IntView):
            return s
        return None

    def _op_Sub(self, node):
        env, x_name, c_name = self.env, node.input[0], node.input[1]
        view = self._view(env.get(x_name) if x_name else None)
        c = env.get(c_name) if c_name else None
        if view is not None and isinstance(c, Const):
            a, b, array = view.a, view.b, c.array
            key = ("sub", id(a), id(b), id(array))  # (a decomposed dequantizer's Sub: a few shared arrays)
            hit = self._memo.get(key)
            if hit is None:
                c = np.asarray(array, F32)
                new_b = b + c / a if a is P.ONE or (a == 1).all() or not c.any() else None
                hit = self._memo[key] = ((a, b, array), new_b)
            if hit[1] is not None:
                self.env[node.output[0]] = IntView(view.src, a, hit[1], self.loc)
                return
        self.fold_or(node, lambda: self.emit_float_op(node, "onnx.Sub", node.input[:2]))

    def _op_Mul(self, node):
        env, a_name, b_name = self.env, node.input[0], node.input[1]
        a, b = env.get(a_name) if a_name else None, env.get(b_name) if b_name else None
        for s, other in ((a, b), (b, a)):
            view = self._view(s)
            if view is not None and isinstance(other, Const):
                factor, array = view.a, other.array
                key = ("mul", id(factor), id(array))  # (a decomposed dequantizer's Mul: a few shared arrays)
                hit = self._memo.get(key)
                if hit is None:
                    hit = self._memo[key] = ((factor, array), factor * np.asarray(array, F32))
                self.env[node.output[0]] = IntView(view.src, hit[1], view.b, self.loc)
                return
        self.fold_or(node, lambda: self.emit_float_op(node, "onnx.Mul", node.input[:2]))

    # ----- QDQ ------------------------------------------------------------------------------------------------------
    def _qdq_axis(self, node, shape) -> int:
        axis = self.attrs(node).get("axis", 1)
        if not -len(shape) <= axis < max(len(shape), 1):
            raise self.error(f"axis {axis} is out of range for a tensor of rank {len(shape)}")
        return axis + len(shape) if axis < 0 else axis

    def _qdq_params(self, node, shape):
        a = self.attrs(node)
        if a.get("block_size", 0):
            raise self.error("blocked quantization (block_size) is not supported")
        scale = P.check_scale(self.const_input(node, 1, "the scale"))
        zp = self.const_input(node, 2, "the zero point", required=False)
        if scale.ndim > 1:
            raise self.error(f"the scale has rank {scale.ndim}; QuantizeLinear/DequantizeLinear take a scalar or "
                             f"1-D scale")
        axis = self._qdq_axis(node, shape) if scale.size > 1 or scale.ndim == 1 and scale.size > 1 else None
        return scale, zp, axis

    def _op_QuantizeLinear(self, node):
        shape = self.shape(node.input[0])
        scale, zp, axis = self._qdq_params(node, shape)
        to = self.attrs(node).get("output_dtype", 0)
        low_bit = self.g.low_bit.get(self.inp(node, 2) or "")
        if low_bit is None and zp is None and to in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            low_bit = (-8, 7) if to == onnx.TensorProto.INT4 else (0, 15)
        if low_bit is not None and not isinstance(self.env[node.input[0]], Const):
            kind = "int4" if low_bit[0] < 0 else "uint4"
            raise self.error(f"element type {kind} is not supported for activations: the Deeploy targets keep "
                             f"activations in 8-bit tensors; quantize them to int8/uint8 (a 4-bit range in 8-bit "
                             f"storage, as QONNX Quant or Brevitas bit_width=4 exports it, compiles)")
        if zp is not None:
            storage = P.storage_for_dtype(zp.dtype)
        else:
            storage = P.storage_for_dtype(helper.tensor_dtype_to_np_dtype(to or onnx.TensorProto.UINT8)
                                          if low_bit is None else np.int8 if low_bit[0] < 0 else np.uint8)
            zp = np.zeros((), storage.np_dtype)
        lo, hi = (storage.min, storage.max) if low_bit is None else low_bit
        zp = P.check_zero_point(zp, lo, hi)
        qtype = P.make_quant_type(storage, lo, hi, scale, zp, shape, axis)
        self.env[node.output[0]] = self._quantizer(node.input[0], qtype, ROUND_ADD, shape, self.loc)

    def _op_DequantizeLinear(self, node):
        s = self.env[node.input[0]]
        shape = self.shape(node.input[0])
        scale, zp, axis = self._qdq_params(node, shape)
        if isinstance(s, Const):
            if s.array.dtype.kind not in "iu":  # np.issubdtype(dtype, np.integer)
                raise self.error(f"DequantizeLinear of a {s.array.dtype} constant")
            storage = P.storage_for_dtype(s.array.dtype)
            lo, hi = storage.min, storage.max
            if s.bounds is not None:
                lo, hi = max(lo, int(np.ceil(s.bounds[0]))), min(hi, int(np.floor(s.bounds[1])))
            zp = P.check_zero_point(np.zeros((), np.int64) if zp is None else zp, lo, hi)
            qtype = P.make_quant_type(storage, lo, hi, scale, zp, shape, axis)
            s = Quantized(qtype, shape, self.loc, ROUND_ADD, stored=s.array, private=False)  # (in its dtype)
        view = self._view(s)
        if view is None or not view.is_raw or not isinstance(view.src, Quantized):
            raise self.error(f"DequantizeLinear input '{node.input[0]}' is not the output of a quantizer")
        q = view.src
        zp_arr = np.zeros((), np.int64) if zp is None else zp
        P.check_zero_point(zp_arr, q.qtype.storage_min, q.qtype.storage_max)
        rank = len(shape)
        bshape = [1] * rank
        if axis is not None:
            bshape[axis] = -1
        a = scale.reshape(bshape) if axis is not None else scale.reshape(())
        b = zp_arr.astype(F32).reshape(bshape) if (axis is not None and zp_arr.size > 1) else \
            zp_arr.astype(F32).reshape(())
        self.env[node.output[0]] = IntView(q, a, b, self.loc)

    # ----- QONNX ----------------------------------------------------------------------------------------------------
    def _qonnx_Quant(self, node):
        a = self.attrs(node)
        mode = a.get("rounding_mode", b"ROUND")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode.upper() not in ("ROUND", "HALF_EVEN"):
            raise self.error(f"QONNX Quant rounding_mode '{mode}' is not supported (only ROUND)")
        shape = self.shape(node.input[0])
        scale = P.check_scale(self.const_input(node, 1, "the scale"))
        zp = self.const_input(node, 2, "the zero point")
        bits = self.const_input(node, 3, "the bit width")
        if np.asarray(bits).size != 1:
            raise self.error("a per-channel bit width is not supported")
        lo, hi = P.qonnx_range(float(np.asarray(bits).reshape(-1)[0]), bool(a.get("signed", 1)),
                               bool(a.get("narrow", 0)))
        storage, lo, hi = P.storage_for_range(lo, hi)
        zp_i = P.check_zero_point(zp, lo, hi)
        qtype = P.make_quant_type(storage, lo, hi, scale, zp_i, shape)
        q = self._quantizer(node.input[0], qtype, ADD_ROUND, shape, self.loc)
        self.env[node.output[0]] = IntView(q, scale, np.asarray(zp, F32), self.loc)

    def _qonnx_Trunc(self, node):
        """QONNX Trunc, the requantizer of Brevitas' TruncAvgPool (inputs x, scale, zero point, input bit width,
        output scale[, output zero point], output bit width; qonnx's reference `trunc`):

            q = round(x / s + z)                        onto the input grid, unclipped
            t = clip(rnd(q / 2^k), lo, hi)              2^k = 2^round(log2(s_out / s)), lo, hi from the output bits
            y = (t - z / 2^k) * s_out

        becomes  quant.qcast (add_round, i32)  ->  the exact integer shift (`_shift_round`)  ->  quant.dcast, so the
        shift is integer arithmetic in the IR and its lowering is exact, ties included.  The reference does not clip
        q to the input bit width; the grid type takes that range only when clipping there provably changes no
        output (`_grid_range`), which gives range analysis the bound it needs, and is i32 otherwise.
        """
        a = self.attrs(node)
        mode = a.get("rounding_mode", b"FLOOR")
        mode = (mode.decode() if isinstance(mode, bytes) else mode).upper()
        if mode not in P.TRUNC_ROUNDINGS:
            raise self.error(f"QONNX Trunc rounding_mode '{mode}' is not supported "
                             f"({', '.join(P.TRUNC_ROUNDINGS)})")
        shape = self.shape(node.input[0])
        scale = P.check_scale(self.const_input(node, 1, "the scale"))
        zp = P.check_zero_point(self.const_input(node, 2, "the zero point"), P.INT32_MIN, P.INT32_MAX)
        in_bits = self._bit_width(node, 3, "the input bit width")
        out_scale = P.check_scale(self.const_input(node, 4, "the output scale"))
        bits = self._bit_width(node, len(node.input) - 1, "the output bit width")
        k = P.trunc_shift(scale, out_scale)
        if k > 0 and np.any(zp % (1 << k)):
            raise self.error(f"zero point {int(zp[zp % (1 << k) != 0].reshape(-1)[0])} is not a multiple of the "
                             f"truncation 2^{k}: the output would have no integer zero point")
        out_zp = zp >> k if k > 0 else zp << -k
        if len(node.input) == 7:
            given = self.const_input(node, 5, "the output zero point")
            if not P.same_params(given, out_zp.astype(F32), shape):
                raise self.error(f"output zero point {_fmt_param(given)} is not zero point / 2^{k} = "
                                 f"{_fmt_param(out_zp)}, which QONNX Trunc computes with")
        lo, hi = P.qonnx_range(bits, bool(a.get("signed", 1)), bool(a.get("narrow", 0)))
        storage, lo, hi = P.storage_for_range(lo, hi)
        P.check_zero_point(out_zp, lo, hi)
        grid_lo, grid_hi = self._grid_range(in_bits, bool(a.get("signed", 1)), k, mode, lo, hi)
        grid = P.make_quant_type(i32, grid_lo, grid_hi, scale, zp, shape)
        out_type = P.make_quant_type(storage, lo, hi, out_scale, out_zp, shape)
        q = self._quantizer(node.input[0], grid, ADD_ROUND, shape, self.loc)
        if q.stored is not None:
            t = Quantized(out_type, shape, self.loc, ADD_ROUND,
                          stored=P.shift_round(q.stored, k, mode, lo, hi).astype(out_type.np_dtype))
        else:
            t = Quantized(out_type, shape, self.loc, ADD_ROUND)
            t.value = self._shift_round(self.quant_value(q), k, mode, TensorType(shape, out_type))
        self.env[node.output[0]] = IntView(t, out_scale, out_zp.astype(F32), self.loc)

    @staticmethod
    def _grid_range(in_bits: float, signed: bool, k: int, mode: str, lo: int, hi: int) -> Tuple[int, int]:
        """The stored range of a Trunc's input grid: the input bit width's range [L, H] when the shift maps it
        over the whole output range (rnd(L / 2^k) <= lo and rnd(H / 2^k) >= hi: then, rnd and clip being monotone,
        clipping q to [L, H] first changes no output), else the int32 range."""
        grid_lo, grid_hi = P.qonnx_range(in_bits, signed, False)
        grid_lo, grid_hi = max(grid_lo, P.INT32_MIN), min(grid_hi, P.INT32_MAX)
        ends = P.shift_round(np.array([grid_lo, grid_hi]), k, mode, P.INT32_MIN, P.INT32_MAX)
        if ends[0] <= lo and ends[1] >= hi:
            return grid_lo, grid_hi
        return P.INT32_MIN, P.INT32_MAX

    def _bit_width(self, node, i: int, what: str) -> float:
        bits = np.asarray(self.const_input(node, i, what))
        if bits.size != 1:
            raise self.error(f"a per-channel {what} is not supported")
        value = float(bits.reshape(-1)[0])
        P.qonnx_range(value, True, False)  # checks it is an integer in 1..32
        return value

    def _shift_round(self, q: Value, k: int, mode: str, out: TensorType) -> Value:
        """int ops computing clip(rnd(q / 2^k), lo, hi) exactly, lo, hi the storage range of `out`.

        FLOOR and CEIL are one int.requant_shift each (it computes floor((q * mul + add + div/2) / div)): add = -2^(k-1)
        and 2^(k-1) - 1.  ROUND (half to even) rounds up exactly when q's remainder exceeds half, or equals half and
        floor(q / 2^k) is odd, i.e. t = floor((q + 2^(k-1) - 1 + p) / 2^k) with the parity p = a - 2b of
        a = floor(q / 2^k), b = floor(q / 2^(k+1)).  a and b are requants clipped to the full storage range [L, H] and
        [floor(L/2), floor(H/2)]: both are exact while a lies in [L, H], and both saturate together outside it, where
        p is 0 or 1 and t saturates to the same bound as the exact result.  A narrower output range than the storage's
        (narrow or sub-8-bit) is an int.clip at the end.
        """
        shape = out.shape
        ot = out.quant
        storage = ot.storage
        signed, n_levels = P.requant_form(storage)
        full = ot.with_(storage_min=int(storage.min), storage_max=int(storage.max))

        def requant(x, mul, add, div, result_type, signed_=signed, n=n_levels, suffix=""):
            attrs = {"mul": np.array([mul], np.int64), "add": np.array([add], np.int64), "div": int(div),
                     "signed": bool(signed_), "n_levels": int(n)}
            return self.module.create("int.requant_shift", [x], [result_type], attrs,
                                      self.loc + suffix).result

        if k <= 0:
            t = requant(q, 1 << -k, 0, 1, TensorType(shape, full))
        elif mode == "FLOOR":
            t = requant(q, 1, -(1 << (k - 1)), 1 << k, TensorType(shape, full))
        elif mode == "CEIL":
            t = requant(q, 1, (1 << (k - 1)) - 1, 1 << k, TensorType(shape, full))
        else:
            plain = TensorType(shape, storage)
            a = requant(q, 1, -(1 << (k - 1)), 1 << k, plain, suffix="/floor")
            b = requant(q, 1, -(1 << k), 1 << (k + 1), plain, n=n_levels // 2, suffix="/floor_half")
            minus_two = const_op(self.module, np.array([-2], np.int32), TensorType((1,), i32), loc=self.loc)
            m = self.create("int.mul", [b, minus_two], TensorType(shape, i32))
            d = self.create("int.add", [a, m], TensorType(shape, i32))
            p = requant(d, 1, 0, 1, TensorType(shape, ScalarType("u8")), signed_=False, n=256, suffix="/parity")
            s = self.create("int.add", [q, p], TensorType(shape, i32))
            t = requant(s, 1, -1, 1 << k, TensorType(shape, full))
        if (ot.storage_min, ot.storage_max) != (int(storage.min), int(storage.max)):
            t = self.create("int.clip", [t], out, {"min": ot.storage_min, "max": ot.storage_max})
        return t

    # ----- float ops -------------------------------------------------------------------------------------------------
    def _unary(op_name):
        def handler(self, node):
            self.fold_or(node, lambda: self.emit_float_op(node, op_name, node.input[:1]))
        return handler

    _op_Relu = _unary("onnx.Relu")
    _op_Sigmoid = _unary("onnx.Sigmoid")
    _op_HardSwish = _unary("onnx.HardSwish")

    def _op_LeakyRelu(self, node):
        """LeakyRelu(x) = (1 - alpha) * Relu(x) + alpha * x for 0 < alpha < 1 (DECOMPOSED_OPS): a ReLU, two products
        by positive constants and an Add, which add-rescale lowers as one sum of the dequantized x's ReLU and x at a
        common int32 scale (the constants go into the operands' scales), requantized once by the quantizer after."""
        alpha = float(self.attrs(node).get("alpha", 0.01))

        def emit():
            if not 0.0 < alpha < 1.0:
                raise self.error(f"LeakyRelu with alpha {alpha:g}: only 0 < alpha < 1 is lowered (as "
                                 "(1 - alpha) * Relu(x) + alpha * x)", node)
            x = self.float_value(node.input[0])
            shape = self.shape(node.output[0])
            relu = self.create_float("onnx.Relu", [x], shape, node)
            kept = self.create_float("onnx.Mul", [relu, self.float_const(np.float32(1.0 - alpha))], shape, node)
            leak = self.create_float("onnx.Mul", [x, self.float_const(np.float32(alpha))], shape, node)
            self.env[node.output[0]] = FloatVal(self.create_float("onnx.Add", [kept, leak], shape, node))
        self.fold_or(node, emit)

    def _op_HardSigmoid(self, node):
        a = self.attrs(node)
        attrs = {"alpha": float(a.get("alpha", 0.2)), "beta": float(a.get("beta", 0.5))}
        self.fold_or(node, lambda: self.emit_float_op(node, "onnx.HardSigmoid", node.input[:1], attrs))
    _op_GlobalAveragePool = _unary("onnx.GlobalAveragePool")
    _op_GlobalMaxPool = _unary("onnx.GlobalMaxPool")

    def _op_MatMul(self, node):
        self.fold_or(node, lambda: self.emit_float_op(node, "onnx.MatMul", node.input[:2]))

    def _conv_attrs(self, node, x_shape, w_shape, out_shape) -> Dict[str, object]:
        a = self.attrs(node)
        n = len(x_shape) - 2
        kernel = list(a.get("kernel_shape", w_shape[2:]))
        strides = list(a.get("strides", [1] * n))
        dilations = list(a.get("dilations", [1] * n))
        pads = self._explicit_pads(a, x_shape, out_shape, kernel, strides, dilations)
        return {"kernel_shape": kernel, "pads": pads, "strides": strides, "dilations": dilations,
                "group": int(a.get("group", 1))}

    def _explicit_pads(self, a, x_shape, out_shape, kernel, strides, dilations) -> List[int]:
        n = len(kernel)
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", ""):
            return [int(p) for p in a.get("pads", [0] * (2 * n))]
        if auto == "VALID":
            return [0] * (2 * n)
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            raise self.error(f"auto_pad '{auto}' is not supported")
        begins, ends = [], []
        for i in range(n):
            total = max(0, (out_shape[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - x_shape[2 + i])
            small, big = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else big)
            ends.append(big if auto == "SAME_UPPER" else small)
        return begins + ends

    def _op_Conv(self, node):
        x_shape, w_shape = self.shape(node.input[0]), self.shape(node.input[1])
        attrs = self._conv_attrs(node, x_shape, w_shape, self.g.shape(node.output[0], node))
        if self._linear_int(node, "int.conv", attrs):
            return
        self.emit_float_op(node, "onnx.Conv", [n for n in node.input if n], attrs)

    def _op_Gemm(self, node):
        a = self.attrs(node)
        attrs = {"alpha": float(a.get("alpha", 1.0)), "beta": float(a.get("beta", 1.0)),
                 "transA": int(a.get("transA", 0)), "transB": int(a.get("transB", 0))}
        if attrs["alpha"] == 1.0 and attrs["beta"] == 1.0 and attrs["transA"] == 0 and \
                self._linear_int(node, "int.gemm", {"transA": 0, "transB": attrs["transB"]}):
            return
        self.emit_float_op(node, "onnx.Gemm", [n for n in node.input if n], attrs)

    def _linear_int(self, node, op_name: str, attrs) -> bool:
        """DeepQuant `dequant_moved`: Conv/Gemm(x_float, W_int, B_int) where W and B are stored integers.

        The file computes y = conv(s_x * q_x, q_w) + q_b = s_x * (conv(q_x, q_w) + q_b / s_x) (x's zero point is 0),
        so y is the integer `int.conv(q_x, q_w, round(q_b / s_x))` at scale s_x; the Sub -> Mul that follows in the
        file multiplies that scale by its constant (see `_dequantize`).  q_b / s_x is an integer whenever 1 / s_x is
        (s_x = 2^-k); otherwise rounding it moves y by at most s_x / 2, far below one output step.
        """
        w = self._view(self.state(node.input[1]))
        if w is None or not w.is_raw or not isinstance(w.src, Quantized) or w.src.stored is None:
            return False
        b_name = self.inp(node, 2)
        b = self._view(self.state(b_name)) if b_name else None
        if b_name and (b is None or not b.is_raw or not isinstance(b.src, Quantized) or b.src.stored is None):
            return False
        x = self.float_value(node.input[0])
        if x.owner.name != "quant.dcast":
            return False
        q_x = x.owner.operands[0]
        qt = q_x.type.quant
        if qt.is_per_axis or qt.zero_point != 0:
            raise self.error(f"{node.op_type} on stored integer weights needs a per-tensor input quantizer with zero "
                             f"point 0, got {qt}")
        operands = [q_x, self.quant_value(w.src)]
        if b is not None:
            bias = np.rint(b.src.stored.astype(np.float64) / float(np.float32(qt.scale)))
            if np.any(np.abs(bias) > P.INT32_MAX):
                raise self.error(f"bias / input scale does not fit int32 (max |value| {np.abs(bias).max():.3g})")
            operands.append(const_op(self.module, bias.astype(np.int32), TensorType(bias.shape, i32), loc=self.loc))
        shape = self.g.shape(node.output[0], node)
        placeholder = TensorType(shape, UniformQuantType.per_tensor(i32, qt.scale, 0))
        acc = self.create(op_name, operands, placeholder, attrs, node)
        self.env[node.output[0]] = IntView(Accum(acc, qt.scale, shape))
        return True

    def _pool_attrs(self, node, with_dilations: bool) -> Dict[str, object]:
        a = self.attrs(node)
        x_shape = self.shape(node.input[0])
        kernel = list(a["kernel_shape"])
        n = len(kernel)
        strides = list(a.get("strides", [1] * n))
        dilations = list(a.get("dilations", [1] * n))
        attrs = {"kernel_shape": kernel,
                 "pads": self._explicit_pads(a, x_shape, self.g.shape(node.output[0], node), kernel, strides,
                                             dilations),
                 "strides": strides, "ceil_mode": int(a.get("ceil_mode", 0))}
        if with_dilations:
            attrs["dilations"] = dilations
        elif any(d != 1 for d in dilations):
            raise self.error("AveragePool with dilations is not supported")
        return attrs

    def _op_MaxPool(self, node):
        a = self.attrs(node)
        if len(node.output) > 1 and node.output[1] and self.g.consumers.get(node.output[1]):
            raise self.error("the Indices output of MaxPool is not supported")
        if a.get("storage_order", 0):
            raise self.error("MaxPool storage_order=1 is not supported")
        self.emit_float_op(node, "onnx.MaxPool", node.input[:1], self._pool_attrs(node, True))

    def _op_AveragePool(self, node):
        attrs = self._pool_attrs(node, False)
        attrs["count_include_pad"] = int(self.attrs(node).get("count_include_pad", 0))
        self.emit_float_op(node, "onnx.AveragePool", node.input[:1], attrs)

    def _reduce(self, node, op_name: str, axes_input_from: int):
        a = self.attrs(node)
        rank = len(self.shape(node.input[0]))
        if self.opset >= axes_input_from:
            axes = self.const_input(node, 1, "axes", required=False)
            axes = None if axes is None else [int(v) for v in np.asarray(axes).reshape(-1)]
        else:
            axes = a.get("axes")
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                self.env[node.output[0]] = self.env[node.input[0]]
                return
            axes = list(range(rank))
        axes = sorted(_norm(ax, rank) for ax in axes)
        self.emit_float_op(node, op_name, node.input[:1], {"axes": axes, "keepdims": int(a.get("keepdims", 1))})

    def _op_ReduceMean(self, node):
        self._reduce(node, "onnx.ReduceMean", 18)

    def _op_ReduceSum(self, node):
        self._reduce(node, "onnx.ReduceSum", 13)

    def _op_Flatten(self, node):
        rank = len(self.shape(node.input[0]))
        axis = _norm(self.attrs(node).get("axis", 1), rank)
        self.fold_or(node, lambda: self.emit_float_op(node, "onnx.Flatten", node.input[:1], {"axis": axis}))

    def _op_Reshape(self, node):
        shape = list(self.g.shape(node.output[0], node))
        self.fold_or(node, lambda: self.emit_float_op(node, "onnx.Reshape", node.input[:1], {"shape": shape}))

    def _squeeze_axes(self, node, rank: int) -> List[int]:
        if self.opset >= 13:
            axes = self.const_input(node, 1, "axes", required=False)
            axes = None if axes is None else [int(v) for v in np.asarray(axes).reshape(-1)]
        else:
            axes = self.attrs(node).get("axes")
        if axes is None:
            if node.op_type == "Unsqueeze":
                raise self.error("Unsqueeze without axes")
            axes = [i for i, d in enumerate(self.shape(node.input[0])) if d == 1]
        return sorted(_norm(ax, rank) for ax in axes)

    def _op_Squeeze(self, node):
        self.fold_or(node, lambda: self.emit_float_op(
            node, "onnx.Squeeze", node.input[:1],
            {"axes": self._squeeze_axes(node, len(self.shape(node.input[0])))}))

    def _op_Unsqueeze(self, node):
        self.fold_or(node, lambda: self.emit_float_op(
            node, "onnx.Unsqueeze", node.input[:1],
            {"axes": self._squeeze_axes(node, len(self.g.shape(node.output[0], node)))}))

    def _op_Transpose(self, node):
        rank = len(self.shape(node.input[0]))
        perm = [int(p) for p in self.attrs(node).get("perm", list(range(rank))[::-1])]
        self.fold_or(node, lambda: self.emit_float_op(node, "onnx.Transpose", node.input[:1], {"perm": perm}))

    def _op_Concat(self, node):
        rank = len(self.g.shape(node.output[0], node))
        axis = _norm(self.attrs(node)["axis"], rank)
        self.fold_or(node, lambda: self.emit_float_op(node, "onnx.Concat", [n for n in node.input if n],
                                                      {"axis": axis}))

    def _op_Pad(self, node):
        a = self.attrs(node)
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("constant", "edge", "reflect"):
            raise self.error(f"Pad mode '{mode}' is not supported")
        rank = len(self.shape(node.input[0]))
        if self.opset < 11:
            pads, value = list(a["pads"]), float(a.get("value", 0.0))
        else:
            pads = [int(p) for p in np.asarray(self.const_input(node, 1, "pads")).reshape(-1)]
            v = self.const_input(node, 2, "constant_value", required=False)
            value = 0.0 if v is None or np.asarray(v).size == 0 else float(np.asarray(v).reshape(-1)[0])
            axes = self.const_input(node, 3, "axes", required=False)
            if axes is not None:
                axes = [_norm(int(ax), rank) for ax in np.asarray(axes).reshape(-1)]
                full = [0] * (2 * rank)
                for k, ax in enumerate(axes):
                    full[ax], full[rank + ax] = pads[k], pads[len(axes) + k]
                pads = full
        if len(pads) != 2 * rank:
            raise self.error(f"Pad has {len(pads)} pads for a tensor of rank {rank}")
        self.emit_float_op(node, "onnx.Pad", node.input[:1], {"pads": pads, "mode": mode, "value": value})

    def _op_Softmax(self, node):
        rank = len(self.shape(node.input[0]))
        axis = _norm(self.attrs(node).get("axis", -1 if self.opset >= 13 else 1), rank)
        if self.opset < 13 and axis != rank - 1:
            raise self.error(f"Softmax-{self.opset} over axes {axis}..{rank - 1} (coerced to 2-D) is not supported")
        self.emit_float_op(node, "onnx.Softmax", node.input[:1], {"axis": axis})

    def _op_BatchNormalization(self, node):
        a = self.attrs(node)
        if a.get("training_mode", 0) or any(o and self.g.consumers.get(o) for o in node.output[1:]):
            raise self.error("training-mode BatchNormalization is not supported")
        eps = float(a.get("epsilon", 1e-5))
        params = [np.asarray(self.const_input(node, i, what), np.float64)
                  for i, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance"))]
        if self._fold_batchnorm(node, eps, *params):
            return
        operands = [self.float_value(node.input[0])] + [self.float_const(p.astype(F32)) for p in params]
        self.env[node.output[0]] = FloatVal(self.create("onnx.BatchNormalization", operands, self.out_type(node),
                                                        {"epsilon": eps}, node))

    def _fold_batchnorm(self, node, eps, gamma, beta, mean, var) -> bool:
        """Fold into the producing onnx.Conv when its weights (and bias) are float constants used only there."""
        s = self.state(node.input[0])
        if not isinstance(s, FloatVal) or s.value.owner.name != "onnx.Conv":
            return False
        conv = s.value.owner
        if len(self.g.consumers.get(node.input[0], [])) != 1 or node.input[0] in self.g.output_names:
            return False
        w_op = conv.operands[1].owner
        b_op = conv.operands[2].owner if len(conv.operands) > 2 else None
        if w_op.name != "qir.const" or not w_op.results[0].type.is_float or len(conv.operands[1].uses) != 1:
            return False
        if b_op is not None and (b_op.name != "qir.const" or not b_op.results[0].type.is_float):
            return False
        w = np.asarray(w_op.attrs["value"], np.float64)
        bias = np.zeros(w.shape[0]) if b_op is None else np.asarray(b_op.attrs["value"], np.float64)
        factor = gamma / np.sqrt(var + eps)
        new_w = (w * factor.reshape((-1,) + (1,) * (w.ndim - 1))).astype(F32)
        new_b = ((bias - mean) * factor + beta).astype(F32)
        self.module.set_operand(conv, 1, self.float_const(new_w))
        if b_op is None:
            self.module.set_operands(conv, list(conv.operands) + [self.float_const(new_b)])
        else:
            self.module.set_operand(conv, 2, self.float_const(new_b))
        self.env[node.output[0]] = s
        return True


def _norm(axis: int, rank: int) -> int:
    return int(axis) + rank if int(axis) < 0 else int(axis)


def _fmt_param(a: np.ndarray) -> str:
    a = np.asarray(a).reshape(-1)
    if a.size == 1:
        return repr(float(a[0]))
    return "[" + ", ".join(repr(float(v)) for v in a[:4]) + (", ...]" if a.size > 4 else "]")


#: an unsupported-ops error names at most this many nodes (a model of 500 LSTMs must not print 500 names)
MAX_LISTED_NODES = 5


def _listing(unsupported: Dict[str, List[str]]) -> str:
    """`LSTM (12 nodes: /l0, /l1, /l2, ...), Sin (/s)`: every op type with its node count, and node names up to
    MAX_LISTED_NODES in all."""
    budget = MAX_LISTED_NODES
    parts = []
    for op, names in unsupported.items():
        shown = names[:budget]
        budget -= len(shown)
        if len(shown) == len(names):
            parts.append(f"{op} ({', '.join(shown)})")
        elif shown:
            parts.append(f"{op} ({len(names)} nodes: {', '.join(shown)}, ...)")
        else:
            parts.append(f"{op} ({len(names)} node{'s' if len(names) > 1 else ''})")
    total = sum(len(names) for names in unsupported.values())
    return ", ".join(parts) + (f"; {total} nodes in all" if total > MAX_LISTED_NODES else "")
