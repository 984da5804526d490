"""Frontends: read a model into a qir Module.

`load_model(path)` picks the frontend from the file name: `.onnx` -> the ONNX importer, `.qir` -> the IR parser.
The Brevitas frontend (`qirc.frontends.brevitas`) takes a torch module instead of a file and is imported lazily.
"""
from __future__ import annotations

import os

from ..qir.diagnostics import FrontendError
from ..qir.ir import Module


def load_model(path, **onnx_options) -> Module:
    """Read a `.onnx` model or a `.qir` text module from `path`.

    onnx_options (ONNX only, see `import_onnx`): input_shapes, outputs, note."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".onnx":
        from .onnx import import_onnx
        return import_onnx(path, **onnx_options)
    given = [k for k, v in onnx_options.items() if v and k != "note"]
    if given and ext == ".qir":
        from ..qir.diagnostics import UsageError
        flags = {"input_shapes": "--input-shape", "outputs": "--outputs"}
        raise UsageError(f"{', '.join(flags.get(k, k) for k in given)} applies to ONNX models, not to .qir files")
    if ext == ".qir":
        from ..qir.parser import parse_module
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            raise FrontendError(f"cannot read the file ({err.strerror})", file=path) from None
        except UnicodeDecodeError:
            raise FrontendError("the file is not UTF-8 text", file=path) from None
        return parse_module(text, filename=path)
    raise FrontendError(f"unknown model file type '{ext or '(none)'}' (expected .onnx or .qir)", file=path)


__all__ = ["load_model"]
