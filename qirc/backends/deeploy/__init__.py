"""Deeploy backend: targets, legalisation of integer IR, ONNX emission, test vectors.

    from qirc.backends.deeploy import get_target, legalize, emit_onnx
    legalize(module, "deeploy-siracusa")          # int IR -> the target's forms (BackendError if impossible)
    model = emit_onnx(module, "deeploy-siracusa")  # onnx.ModelProto in the Deeploy contract

Importing this package registers the `deeploy-legalize{target=...}` pass.  `qirc.driver.compile_model` runs the whole
flow; docs/targets.md describes the targets and the forms emitted.
"""
from .emit import emit_onnx
from .legalize import DeeployLegalize, legalize
from .targets import TARGETS, DeeployTarget, describe_targets, get_target

__all__ = ["TARGETS", "DeeployTarget", "DeeployLegalize", "describe_targets", "emit_onnx", "get_target", "legalize"]
