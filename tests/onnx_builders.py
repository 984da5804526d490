"""Helpers that build small quantized ONNX graphs with onnx.helper, and run them with onnxruntime.

    b = GraphBuilder("qdq_conv")
    x = b.input("x", [1, 3, 8, 8])
    xq = b.qdq(x, scale=1 / 64, zero_point=0)                  # QuantizeLinear -> DequantizeLinear
    w = b.qdq(b.const(weights), scale=w_scales, axis=0)        # per-axis weight quantizer on a float constant
    y = b.node("Conv", [xq, w], pads=[1, 1, 1, 1])
    b.output(b.quant(y, 1 / 32, 0, -128, 127), "y")            # decomposed Div -> Add -> Round -> Clip -> Sub -> Mul
    model = b.build(opset=13)

Three quantizer spellings: `quant` (DeepQuant's decomposed form, bounds through Constant -> Cast chains), `qdq`
(QuantizeLinear [-> Clip] -> DequantizeLinear) and `qonnx` (QONNX `Quant`).  `qonnx_as_decomposed` rewrites QONNX
Quant nodes into the equivalent decomposed ops so that onnxruntime can give the reference.  Other test modules import
this file.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QONNX_DOMAIN = "qonnx.custom_op.general"


class GraphBuilder:
    """Accumulates nodes, initializers, inputs and outputs; every tensor and node gets a readable unique name."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.inputs: List[onnx.ValueInfoProto] = []
        self.outputs: List[onnx.ValueInfoProto] = []
        self._ids = itertools.count()

    def fresh(self, stem: str) -> str:
        return f"{stem}_{next(self._ids)}"

    # ----- basic pieces --------------------------------------------------------------------------------------------
    def input(self, name: str, shape: Sequence, elem=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, tensor: str, name: Optional[str] = None, elem=TensorProto.FLOAT) -> str:
        if name is not None and name != tensor:
            tensor = self.node("Identity", [tensor], name=f"/out/{name}", outputs=[name])
        self.outputs.append(helper.make_tensor_value_info(tensor, elem, None))
        return tensor

    def const(self, value, name: Optional[str] = None, dtype=None) -> str:
        """An initializer."""
        array = np.asarray(value, dtype=dtype if dtype is not None else None)
        if dtype is None and array.dtype == np.float64:
            array = array.astype(np.float32)
        name = name or self.fresh("c")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def constant_node(self, value, dtype=None, name: Optional[str] = None) -> str:
        """A Constant node (as torch exporters write scalars)."""
        array = np.asarray(value, dtype=dtype)
        if dtype is None and array.dtype == np.float64:
            array = array.astype(np.float32)
        out = self.fresh("k")
        self.nodes.append(helper.make_node("Constant", [], [out], name=name or f"/{out}/Constant",
                                           value=numpy_helper.from_array(array, out)))
        return out

    def node(self, op_type: str, inputs: Sequence[str], name: Optional[str] = None, outputs=None, domain: str = "",
             n_outputs: int = 1, **attrs) -> str:
        name = name or f"/{self.fresh(op_type.lower())}/{op_type}"
        outputs = outputs or [f"{name}_output_{i}" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name, domain=domain, **attrs))
        return outputs[0]

    # ----- quantizers ------------------------------------------------------------------------------------------------
    def quant(self, x: str, scale, zero_point=0.0, lo: float = -128, hi: float = 127, prefix: Optional[str] = None,
              dequant: bool = True) -> str:
        """DeepQuant's decomposed quantizer Div -> Add -> Round -> Clip (bounds via Constant -> Cast), then (if
        `dequant`) the dequantizer Sub -> Mul.  Returns the dequantized tensor (or the Clip output)."""
        p = prefix or f"/{self.fresh('quant')}"
        s = self._param(scale)
        z = self._param(zero_point)
        y = self.node("Div", [x, s], name=f"{p}/Div")
        y = self.node("Add", [y, z], name=f"{p}/Add")
        y = self.node("Round", [y], name=f"{p}/Round")
        lo_c = self.node("Cast", [self.constant_node(np.int64(lo))], name=f"{p}/Cast", to=TensorProto.FLOAT)
        hi_c = self.node("Cast", [self.constant_node(np.int64(hi))], name=f"{p}/Cast_1", to=TensorProto.FLOAT)
        q = self.node("Clip", [y, lo_c, hi_c], name=f"{p}/Clip")
        if not dequant:
            return q
        return self.dequant(q, scale, zero_point, prefix=f"{p}_dequant")

    def dequant(self, q: str, scale, zero_point=0.0, prefix: Optional[str] = None) -> str:
        p = prefix or f"/{self.fresh('dequant')}"
        y = self.node("Sub", [q, self._param(zero_point)], name=f"{p}/Sub")
        return self.node("Mul", [y, self._param(scale)], name=f"{p}/Mul")

    def _param(self, value) -> str:
        array = np.asarray(value, dtype=np.float32)
        return self.constant_node(array) if array.ndim == 0 else self.const(array)

    def qdq(self, x: str, scale, zero_point=0, dtype=np.int8, axis: Optional[int] = None,
            clip: Optional[tuple] = None, prefix: Optional[str] = None) -> str:
        """QuantizeLinear [-> Clip(lo, hi) in the integer type, as Brevitas writes narrow ranges]
        -> DequantizeLinear."""
        p = prefix or f"/{self.fresh('qdq')}"
        s = self.const(np.asarray(scale, np.float32))
        z = self.const(np.asarray(zero_point, dtype))
        attrs = {} if axis is None else {"axis": axis}
        q = self.node("QuantizeLinear", [x, s, z], name=f"{p}/QuantizeLinear", **attrs)
        if clip is not None:
            q = self.node("Clip", [q, self.const(np.asarray(clip[0], dtype)), self.const(np.asarray(clip[1], dtype))],
                          name=f"{p}/Clip")
        return self.node("DequantizeLinear", [q, s, z], name=f"{p}/DequantizeLinear", **attrs)

    def dequantize_linear(self, stored: np.ndarray, scale, zero_point=None, axis: Optional[int] = None,
                          prefix: Optional[str] = None) -> str:
        """DequantizeLinear of an integer initializer (QDQ weights and int32 biases)."""
        p = prefix or f"/{self.fresh('dq')}"
        inputs = [self.const(stored), self.const(np.asarray(scale, np.float32))]
        if zero_point is not None:
            inputs.append(self.const(np.asarray(zero_point, stored.dtype)))
        attrs = {} if axis is None else {"axis": axis}
        return self.node("DequantizeLinear", inputs, name=f"{p}/DequantizeLinear", **attrs)

    def qonnx(self, x: str, scale, zero_point=0.0, bits: int = 8, signed: bool = True, narrow: bool = False,
              rounding_mode: str = "ROUND", domain: str = QONNX_DOMAIN, prefix: Optional[str] = None) -> str:
        """QONNX Quant(x, scale, zeropt, bitwidth) as Brevitas export_qonnx writes it."""
        p = prefix or f"/{self.fresh('qonnx')}"
        return self.node("Quant", [x, self.const(np.asarray(scale, np.float32)),
                                   self.const(np.asarray(zero_point, np.float32)),
                                   self.const(np.asarray(bits, np.float32))],
                         name=f"{p}/Quant", domain=domain, signed=int(signed), narrow=int(narrow),
                         rounding_mode=rounding_mode)

    # ----- the model -------------------------------------------------------------------------------------------------
    def build(self, opset: int = 13, ir_version: Optional[int] = None, check: bool = True) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        imports = [helper.make_opsetid("", opset)]
        if any(n.domain == QONNX_DOMAIN for n in self.nodes):
            imports.append(helper.make_opsetid(QONNX_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=imports, producer_name="qirc-tests")
        model.ir_version = ir_version or min(model.ir_version, 9)
        if not any(n.domain for n in self.nodes):
            # give the outputs their inferred types so that onnx.checker accepts the model
            inferred = onnx.shape_inference.infer_shapes(model)
            known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
            for out in model.graph.output:
                if out.name in known and known[out.name].type.tensor_type.HasField("shape"):
                    out.CopyFrom(known[out.name])
            if check:
                onnx.checker.check_model(model)
        return model


# ----- references ----------------------------------------------------------------------------------------------------
def qonnx_as_decomposed(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` in which each QONNX Quant (ROUND) is Div -> Add -> Round -> Clip -> Sub -> Mul."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    new_nodes = []
    for node in model.graph.node:
        if node.op_type != "Quant":
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits = int(inits[node.input[3]].reshape(-1)[0])
        signed, narrow = attrs.get("signed", 1), attrs.get("narrow", 0)
        lo, hi = (-(2 ** (bits - 1)) + narrow, 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1 - narrow)
        x, s, z = node.input[0], node.input[1], node.input[2]
        p = node.name
        bounds = []
        for i, v in enumerate((lo, hi)):
            bname = f"{p}/bound{i}"
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(v, np.float32), bname))
            bounds.append(bname)
        new_nodes += [helper.make_node("Div", [x, s], [f"{p}/d"], name=f"{p}/Div"),
                      helper.make_node("Add", [f"{p}/d", z], [f"{p}/a"], name=f"{p}/Add"),
                      helper.make_node("Round", [f"{p}/a"], [f"{p}/r"], name=f"{p}/Round"),
                      helper.make_node("Clip", [f"{p}/r"] + bounds, [f"{p}/q"], name=f"{p}/Clip"),
                      helper.make_node("Sub", [f"{p}/q", z], [f"{p}/s"], name=f"{p}/Sub"),
                      helper.make_node("Mul", [f"{p}/s", s], [node.output[0]], name=f"{p}/Mul")]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    kept = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def ort_session(model: onnx.ModelProto, extra_outputs: Sequence[str] = ()):
    """An onnxruntime session with graph optimisations DISABLED (the numeric reference), optionally returning
    intermediate tensors too."""
    import onnxruntime as ort
    if extra_outputs:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        present = {o.name for o in model.graph.output}
        typed = {v.name: v.type.tensor_type.elem_type
                 for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
        for name in extra_outputs:
            if name not in present:
                elem = typed.get(name) or TensorProto.FLOAT
                model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ort_run(model: onnx.ModelProto, feeds: Dict[str, np.ndarray], extra_outputs: Sequence[str] = ()
            ) -> Dict[str, np.ndarray]:
    session = ort_session(model, extra_outputs)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))
