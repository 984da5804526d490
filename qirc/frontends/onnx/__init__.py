"""ONNX frontend: quantized ONNX (decomposed QCDQ as DeepQuant/Brevitas export it, standard QDQ, QONNX) -> qir.

    from qirc.frontends.onnx import import_onnx
    module = import_onnx("model.onnx")

`loader` reads and checks the file and graph, `patterns` recognises quantizers, `importer` translates ops.
"""
from .importer import import_onnx

__all__ = ["import_onnx"]
