"""Brevitas frontend: a Brevitas (torch) model -> quant IR, through Brevitas' own ONNX exporters.

    from qirc.frontends.brevitas import import_module, export_onnx
    module = import_module(model, torch.randn(1, 3, 32, 32), format="qdq")
    path = export_onnx(model, example, "model.onnx", format="qonnx")

The model is exported in memory (a temporary file) with Brevitas' exporter for the chosen format and the result is
read by the ONNX frontend, so a Brevitas model and its exported file always give the same IR.  Formats:

    "qdq"    brevitas.export.export_onnx_qcdq: QuantizeLinear / Clip / DequantizeLinear, integer weights and biases
    "qonnx"  brevitas.export.export_qonnx: QONNX `Quant` nodes (float weights quantized in the graph)

torch and brevitas are imported inside the functions, never at module import, so that compiling an ONNX file does
not import torch; without them the functions raise a FrontendError naming the extra to install.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from ...qir.diagnostics import FrontendError

FORMATS = ("qdq", "qonnx")
#: Opset of the QDQ export: 13 is the first with per-axis QuantizeLinear/DequantizeLinear.
QDQ_OPSET = 13

_INSTALL_HINT = "install the Brevitas extra with `pip install -e .[brevitas]`"


def _require_brevitas():
    """Import torch and the Brevitas exporters, or explain what to install."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise FrontendError(f"the Brevitas frontend needs torch, which is not installed ({e}); {_INSTALL_HINT}") \
            from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import brevitas.export as brevitas_export
    except ImportError as e:
        raise FrontendError(f"the Brevitas frontend needs brevitas, which is not installed ({e}); {_INSTALL_HINT}") \
            from None
    try:
        import onnxoptimizer  # noqa: F401  (Brevitas' exporters refuse to run without it)
    except ImportError:
        raise FrontendError(f"Brevitas' ONNX exporters need onnxoptimizer, which is not installed; {_INSTALL_HINT}") \
            from None
    return torch, brevitas_export


def _as_torch_input(torch, example_input: Any, model_name: str):
    if isinstance(example_input, torch.Tensor):
        return example_input.detach().to(torch.float32)
    if isinstance(example_input, tuple) and example_input and all(isinstance(d, int) for d in example_input):
        return torch.zeros(example_input, dtype=torch.float32)
    try:
        import numpy as np
        return torch.from_numpy(np.ascontiguousarray(example_input, dtype=np.float32))
    except (TypeError, ValueError) as e:
        raise FrontendError(f"{model_name}: example_input must be a torch tensor, a numpy array or a shape tuple, "
                            f"got {type(example_input).__name__} ({e})") from None


def export_onnx(module, example_input, path: Union[str, os.PathLike], format: str = "qdq",
                opset: Optional[int] = None) -> Path:
    """Export a Brevitas model to `path` with Brevitas' exporter for `format` ("qdq" or "qonnx"); returns the path.

    `example_input` (a torch tensor, numpy array or shape tuple) traces the model.  The model's training flag is
    restored afterwards (Brevitas exports in eval mode).  `opset` is the ONNX opset (default: 13 for QDQ, whose
    LayerNorm is then spelled out in ReduceMean/Sub/Pow/...; 17 and later write LayerNormalization; the QONNX
    exporter's own default otherwise).
    """
    if format not in FORMATS:
        raise FrontendError(f"unknown Brevitas export format '{format}' (choose one of: {', '.join(FORMATS)})")
    torch, brevitas_export = _require_brevitas()
    if not isinstance(module, torch.nn.Module):
        raise FrontendError(f"expected a Brevitas model (a torch.nn.Module), got {type(module).__name__}")
    model_name = type(module).__name__
    args = _as_torch_input(torch, example_input, model_name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            # torch's TorchScript exporter and Brevitas warn about deprecations on every export
            warnings.simplefilter("ignore")
            # dynamo=False: the TorchScript exporter keeps integer weights as constants (the dynamo one
            # cannot export quantized biases at all); weights are initializers only, not also graph inputs
            # (Brevitas' default), so that the file has exactly the model's inputs, named "input" and "output"
            # rather than after torch's tracing ("onnx::QuantizeLinear_0")
            names = dict(keep_initializers_as_inputs=False, input_names=["input"], output_names=["output"])
            if format == "qdq":
                brevitas_export.export_onnx_qcdq(module, args, export_path=str(path), dynamo=False,
                                                 opset_version=opset or QDQ_OPSET, **names)
            else:
                extra = {} if opset is None else {"opset_version": opset}
                brevitas_export.export_qonnx(module, args, export_path=str(path), dynamo=False, **names, **extra)
    except FrontendError:
        raise
    except Exception as e:  # Brevitas and torch raise anything from their exporters
        msg = " ".join(str(e).split()) or type(e).__name__
        raise FrontendError(f"Brevitas {format} export of {model_name} failed: {type(e).__name__}: {msg[:300]}") \
            from e
    if not path.exists():
        raise FrontendError(f"Brevitas {format} export of {model_name} wrote no file")
    return path


def import_module(module, example_input, format: str = "qdq"):
    """Export a Brevitas model with Brevitas' own exporter (`format` "qdq" or "qonnx") and import it as a quant-level
    `qirc.qir.ir.Module` named after the model's class."""
    import onnx
    from ..onnx import import_onnx

    with tempfile.TemporaryDirectory(prefix="qirc-brevitas-") as tmp:
        path = export_onnx(module, example_input, Path(tmp) / "model.onnx", format=format)
        model = onnx.load(str(path))
    model.graph.name = type(module).__name__
    return import_onnx(model)


__all__ = ["import_module", "export_onnx", "FORMATS"]
