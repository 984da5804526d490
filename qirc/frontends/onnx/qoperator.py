"""QOperator ONNX -> QDQ ONNX, before import: every QLinear op becomes dequantize -> float op -> quantize.

onnxruntime's QOperator format (and the int8 models of the ONNX model zoo) compute on the stored integers with ops
that carry their own scales and zero points:

    QLinearConv(x, xs, xz, w, ws, wz, ys, yz, B)   ->  DQ(x, xs, xz), DQ(w, ws, wz), DQ(B, xs*ws, 0) -> Conv
                                                       -> Q(ys, yz)
    QLinearMatMul(a, as, az, b, bs, bz, ys, yz)    ->  DQ(a), DQ(b) -> MatMul -> Q
    com.microsoft QGemm(A, as, az, B, bs, bz, C, ys, yz){alpha, transA, transB}
                                                   ->  DQ(A), DQ(B), DQ(C, alpha*as*bs, 0) -> Gemm -> Q (no Q
                                                       without ys: a float output)
    com.microsoft QLinearAdd / QLinearMul          ->  DQ, DQ -> Add / Mul -> Q
    com.microsoft QLinearGlobalAveragePool / QLinearAveragePool / QLinearSigmoid / QLinearLeakyRelu /
                  QLinearSoftmax                   ->  DQ -> the float op -> Q   (channels_last=1 is refused)
    com.microsoft QLinearConcat(ys, yz, (x, xs, xz)...)  ->  DQ each -> Concat -> Q
    com.microsoft QuantizeLinear / DequantizeLinear ->  the standard ops
    MaxPool, Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Identity, Slice, Split on a quantized tensor
                                                   ->  DQ -> the op -> Q with the input's scale and zero point

so the QDQ importer reads the result like any onnxruntime QDQ export: each QLinear op's arithmetic is what the
quantized pattern means (the integer accumulation, a float rescale, round half to even, saturate), which the
lowering then computes in integers.  Dynamic quantization (DynamicQuantizeLinear, ConvInteger, MatMulInteger, ...)
computes activation scales at run time, which integer-only targets cannot: `check_dynamic_quantization` refuses it
with one line.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from ... import _onnx as onnx  # onnx's protobufs without its 1 s import (see qirc/_onnx.py)
from ..._onnx import helper, numpy_helper

from ...qir.diagnostics import FrontendError
from .loader import DEFAULT_DOMAINS, node_label

MS = "com.microsoft"

#: op -> (float op, [(data, scale, zero point) input positions], (y scale, y zero point) positions or None,
#:        attributes dropped)
_SIMPLE = {
    ("", "QLinearMatMul"): ("MatMul", [(0, 1, 2), (3, 4, 5)], (6, 7), ()),
    (MS, "QLinearAdd"): ("Add", [(0, 1, 2), (3, 4, 5)], (6, 7), ()),
    (MS, "QLinearMul"): ("Mul", [(0, 1, 2), (3, 4, 5)], (6, 7), ()),
    (MS, "QLinearGlobalAveragePool"): ("GlobalAveragePool", [(0, 1, 2)], (3, 4), ("channels_last",)),
    (MS, "QLinearAveragePool"): ("AveragePool", [(0, 1, 2)], (3, 4), ("channels_last",)),
    (MS, "QLinearSigmoid"): ("Sigmoid", [(0, 1, 2)], (3, 4), ()),
    (MS, "QLinearLeakyRelu"): ("LeakyRelu", [(0, 1, 2)], (3, 4), ()),
    (MS, "QLinearSoftmax"): ("Softmax", [(0, 1, 2)], (3, 4), ("opset",)),
}
_SPECIAL = {("", "QLinearConv"), (MS, "QGemm"), (MS, "QLinearConcat"), (MS, "QuantizeLinear"),
            (MS, "DequantizeLinear")}
#: ops that move or select stored integers without changing their scale (onnxruntime's QOperator format runs them on
#: the quantized tensor)
PASSTHROUGH = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Split")
#: ops whose scales are computed at run time (onnxruntime's quantize_dynamic)
DYNAMIC_OPS = ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QAttention", "DynamicQuantizeConv")


def _key(node: onnx.NodeProto) -> Tuple[str, str]:
    return ("" if node.domain in DEFAULT_DOMAINS else node.domain, node.op_type)


def op_kinds(model: onnx.ModelProto) -> Set[Tuple[str, str]]:
    """The (domain, op type) pairs of the graph's nodes: one scan that the checks below share."""
    return {(node.domain, node.op_type) for node in model.graph.node}


def is_qoperator(model: onnx.ModelProto, kinds: Optional[Set[Tuple[str, str]]] = None) -> bool:
    """Whether the graph has a QOperator op this module rewrites (`kinds`: op_kinds(model) where known)."""
    if kinds is None:
        kinds = op_kinds(model)
    return any(("" if domain in DEFAULT_DOMAINS else domain, op_type) in _SIMPLE or
               ("" if domain in DEFAULT_DOMAINS else domain, op_type) in _SPECIAL for domain, op_type in kinds)


def check_dynamic_quantization(model: onnx.ModelProto, filename: str,
                               kinds: Optional[Set[Tuple[str, str]]] = None) -> None:
    """Refuse dynamically quantized models (the first such node) with one line saying why and what to do
    (`kinds`: op_kinds(model) where known)."""
    if kinds is not None and not any(op_type in DYNAMIC_OPS for _, op_type in kinds):
        return
    for i, node in enumerate(model.graph.node):
        if node.op_type in DYNAMIC_OPS:
            raise FrontendError(
                f"{node.op_type} is dynamic quantization: its activation scales are computed at run time from the "
                f"data, which an integer-only target cannot do; quantize the model statically instead (for example "
                f"onnxruntime.quantization.quantize_static with calibration data)",
                file=filename, loc=node_label(node, i), op=node.op_type)


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, filename: str):
        self.model = model
        self.filename = filename
        graph = model.graph
        self.names = {t.name for t in graph.initializer} | {i.name for i in graph.input} | \
            {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
        self.consts: Dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and n.domain in DEFAULT_DOMAINS and len(n.output):
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        self.new_inits: List[onnx.TensorProto] = []
        self.nodes: List[onnx.NodeProto] = []
        self.params: Dict[str, Tuple[str, str]] = {}  # quantized tensor -> (scale, zero point) names
        self.dq_memo: Dict[Tuple[str, str, str, Optional[int]], str] = {}
        self.label = ""
        self.node: Optional[onnx.NodeProto] = None

    # ----- helpers ---------------------------------------------------------------------------------------------------
    def error(self, message: str) -> FrontendError:
        return FrontendError(message, file=self.filename, loc=self.label, op=self.node.op_type)

    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self.names:
            k += 1
            name = f"{hint}_{k}"
        self.names.add(name)
        return name

    def const(self, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise self.error(f"{what} ('{name}') must be a constant")
        return self.consts[name]

    def add_const(self, array: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.new_inits.append(numpy_helper.from_array(np.asarray(array), name))
        self.consts[name] = np.asarray(array)
        return name

    def emit(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str, exact: bool = False,
             **attrs) -> None:
        name = name if exact else self.fresh(name)
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name, **attrs))

    def dequantize(self, x: str, scale: str, zp: str, axis: Optional[int] = None) -> str:
        key = (x, scale, zp, axis)
        if key not in self.dq_memo:
            out = self.fresh(f"{x}_DequantizeLinear")
            attrs = {} if axis is None else {"axis": axis}
            self.emit("DequantizeLinear", [x, scale, zp] if zp else [x, scale], [out], f"{x}_DequantizeLinear",
                      **attrs)
            self.dq_memo[key] = out
        return self.dq_memo[key]

    def quantize(self, y_float: str, y: str, scale: str, zp: str) -> None:
        self.emit("QuantizeLinear", [y_float, scale, zp] if zp else [y_float, scale], [y], f"{self.label}/quantize")
        self.params[y] = (scale, zp)

    def inp(self, i: int) -> str:
        return self.node.input[i] if i < len(self.node.input) else ""

    def attrs(self, drop: Sequence[str] = ()) -> Dict[str, object]:
        return {a.name: helper.get_attribute_value(a) for a in self.node.attribute if a.name not in drop}

    def float_out(self) -> str:
        return self.fresh(f"{self.node.output[0]}_float")

    def weight_axis(self, scale: str, axis: int) -> Optional[int]:
        return axis if np.asarray(self.const(scale, "the weight scale")).size > 1 else None

    # ----- the rewrite -------------------------------------------------------------------------------------------------
    def run(self) -> onnx.ModelProto:
        for i, node in enumerate(self.model.graph.node):
            self.node, self.label = node, node_label(node, i)
            key = _key(node)
            if key in _SIMPLE:
                self.simple(*_SIMPLE[key])
            elif key == ("", "QLinearConv"):
                self.conv()
            elif key == (MS, "QGemm"):
                self.gemm()
            elif key == (MS, "QLinearConcat"):
                self.concat()
            elif key in ((MS, "QuantizeLinear"), (MS, "DequantizeLinear")):
                new = onnx.NodeProto()
                new.CopyFrom(node)
                new.domain = ""
                self.nodes.append(new)
                if node.op_type == "QuantizeLinear":
                    self.params[node.output[0]] = (self.inp(1), self.inp(2))
            elif node.domain in DEFAULT_DOMAINS and node.op_type == "QuantizeLinear":
                self.nodes.append(node)
                self.params[node.output[0]] = (self.inp(1), self.inp(2))
            elif node.domain in DEFAULT_DOMAINS and node.op_type in PASSTHROUGH and len(node.input) and \
                    node.input[0] in self.params:
                self.passthrough()
            else:
                self.nodes.append(node)
        graph = self.model.graph
        del graph.node[:]
        graph.node.extend(self.nodes)
        graph.initializer.extend(self.new_inits)
        # the rewritten graph is typed afresh by shape inference (old value_info describes integer tensors)
        del graph.value_info[:]
        if not any(op.domain in ("", "ai.onnx") for op in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid("", 13))
        return self.model

    def simple(self, float_op: str, triples, out, drop) -> None:
        a = self.attrs()
        if a.get("channels_last", 0):
            raise self.error("channels_last=1 (NHWC) is not supported; export the model in NCHW")
        axes = [None] * len(triples)
        if float_op == "MatMul":
            # b may be quantized per column (its last axis)
            rank = len(self.consts[self.inp(3)].shape) if self.inp(3) in self.consts else 2
            axes[1] = self.weight_axis(self.inp(4), rank - 1)
        xs = [self.dequantize(self.inp(d), self.inp(s), self.inp(z), axis)
              for (d, s, z), axis in zip(triples, axes)]
        self.finish(float_op, xs, out, {k: v for k, v in a.items() if k not in drop})

    def finish(self, float_op: str, inputs: List[str], out, attrs) -> None:
        y = self.node.output[0]
        # the float op keeps the QLinear node's name (it replaces it), so diagnostics name the user's node
        if out is None or not self.inp(out[0]):
            self.emit(float_op, inputs, [y], self.label, exact=True, **attrs)
            return
        y_float = self.float_out()
        self.emit(float_op, inputs, [y_float], self.label, exact=True, **attrs)
        self.quantize(y_float, y, self.inp(out[0]), self.inp(out[1]))

    def bias(self, b: str, scale: np.ndarray, hint: str) -> str:
        """DQ of an int32 bias at `scale` (zero point 0)."""
        scale = np.asarray(scale, np.float32).reshape(-1)
        s_name = self.add_const(scale if scale.size > 1 else scale.reshape(()), f"{hint}_bias_scale")
        return self.dequantize(b, s_name, "", 0 if scale.size > 1 else None)

    def conv(self) -> None:
        x, xs, xz, w, ws, wz, ys, yz = (self.inp(i) for i in range(8))
        inputs = [self.dequantize(x, xs, xz), self.dequantize(w, ws, wz, self.weight_axis(ws, 0))]
        if self.inp(8):
            scale = np.asarray(self.const(xs, "the input scale"), np.float32) * \
                np.asarray(self.const(ws, "the weight scale"), np.float32)
            inputs.append(self.bias(self.inp(8), scale, self.label))
        self.finish("Conv", inputs, (6, 7), self.attrs())

    def gemm(self) -> None:
        a = self.attrs()
        alpha = float(a.get("alpha", 1.0))
        trans_b = int(a.get("transB", 0))
        a_in, a_s, a_z, b_in, b_s, b_z = (self.inp(i) for i in range(6))
        inputs = [self.dequantize(a_in, a_s, a_z), self.dequantize(b_in, b_s, b_z, self.weight_axis(b_s, 0 if trans_b
                                                                                                  else 1))]
        if self.inp(6):
            # C is int32 at scale alpha * a_scale * b_scale; Gemm(alpha) adds beta * C = C
            scale = alpha * np.asarray(self.const(a_s, "the input scale"), np.float32) * \
                np.asarray(self.const(b_s, "the weight scale"), np.float32)
            inputs.append(self.bias(self.inp(6), scale, self.label))
        attrs = {"alpha": alpha, "beta": 1.0, "transA": int(a.get("transA", 0)), "transB": trans_b}
        self.finish("Gemm", inputs, (7, 8) if self.inp(7) else None, attrs)

    def concat(self) -> None:
        inputs = []
        for i in range(2, len(self.node.input), 3):
            inputs.append(self.dequantize(self.inp(i), self.inp(i + 1), self.inp(i + 2)))
        self.finish("Concat", inputs, (0, 1), self.attrs())

    def passthrough(self) -> None:
        node = self.node
        scale, zp = self.params[node.input[0]]
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.input[0] = self.dequantize(node.input[0], scale, zp)
        outputs = []
        for j, y in enumerate(node.output):  # (every output of a Split)
            if y:
                new.output[j] = self.fresh(f"{y}_float")
                outputs.append((new.output[j], y))
        self.nodes.append(new)
        for y_float, y in outputs:
            self.quantize(y_float, y, scale, zp)


def qoperator_to_qdq(model: onnx.ModelProto, filename: str) -> onnx.ModelProto:
    """A copy of `model` with its QOperator ops spelled as QDQ (see the module doc); other nodes are kept."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return _Rewriter(copy, filename).run()
