"""Dialect `quant`: conversions between float tensors and quantized (`!quant.uniform`) tensors.

Runtime values of a quantized tensor are its stored integers.
"""
from ..ops import dialect, str_
from ..shapes import dcast_elements, qcast_elements, same_as_first

QUANT = dialect("quant", "conversions between float and quantized tensors")

QUANT.op("qcast", "Quantize: float -> !quant.uniform. `rounding` says in which order the zero point is added: "
         "'round_add' q = clip(round_half_even(x/s) + z) (QuantizeLinear), 'add_round' "
         "q = clip(round_half_even(x/s + z)) (decomposed Div->Add->Round->Clip, Brevitas, QONNX). Saturates to the "
         "storage range (narrow range included).",
         operands=["x"], attrs={"rounding": str_("round_add", choices=("round_add", "add_round"),
                                                 doc="where the zero point is added relative to rounding")},
         traits=("elementwise",), shape=same_as_first, element=qcast_elements)
QUANT.op("dcast", "Dequantize: !quant.uniform -> float, x = (q - z) * s (computed in float32 as onnxruntime's "
         "DequantizeLinear does).", operands=["q"], traits=("elementwise",),
         shape=same_as_first, element=dcast_elements)
