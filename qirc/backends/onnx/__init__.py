"""ONNX backend: write quant-level IR as standard QDQ or DeepQuant's decomposed QCDQ ONNX (see `writer`)."""
from .writer import FORMS, OPSET, save, write_onnx

__all__ = ["write_onnx", "save", "FORMS", "OPSET"]
