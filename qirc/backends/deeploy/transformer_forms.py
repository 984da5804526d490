"""Legalisation of the integer transformer ops (int.isoftmax, int.ilayernorm, int.igelu, activation int.matmul).

What each platform takes (DESIGN.md section 7, Deeploy devel bf64cfa):
- Generic and CMSIS (deeploy-generic, deeploy-cortexm) map iSoftmax, iLayerNorm and iGELU with the Generic C kernels;
  an iGELU followed by a RequantShift is fused into RequantizediGELU, whose merge replaces the requant's `add` by
  round(add / mul): only add = 0 survives it unchanged, and the fused kernel reads one (per-tensor) mul and add and
  clips to the full 8-bit range.
- Siracusa (PULPOpen) maps iSoftmax with its own kernel, which ignores coeffA and n_levels (it computes
  (p + coeffB)^2 + coeffC in uint32 and outputs y * 255 / sum), and iGELU only fused with the RequantShift after it;
  it has no integer LayerNorm.
- MatMul of two activations: Deeploy advances both operands' pointers every batch, so both need the same batch
  dimensions.
"""
from __future__ import annotations

import numpy as np

from ...qir.diagnostics import BackendError
from ...qir.ir import Module, Operation
from ...qir.types import TensorType
from .targets import DeeployTarget


def _fail(op: Operation, target: DeeployTarget, message: str) -> BackendError:
    return BackendError(f"{message} (target {target.name})", loc=op.loc or None, op=op.name)


def _sole_user(op: Operation):
    users = op.results[0].users
    return users[0] if len(users) == 1 and not any(u.name == "qir.output" for u in users) else None


def flatten_batched_matmuls(module: Module, target: DeeployTarget) -> None:
    """`int.matmul(a [..., M, K], b [K, N])` with batch dimensions on a only becomes
    `reshape(a) [B*M, K] -> int.matmul -> [B*M, N] -> reshape [..., M, N]`: Deeploy's MatMul advances the pointer of
    b every batch too, so a 2-D b under a batched a would be read out of bounds.  The same integers either way."""
    for op in module.walk("int.matmul"):
        a, b = op.operands
        sa, sb = a.type.shape, b.type.shape
        if len(sb) != 2 or len(sa) <= 2 or int(np.prod(sa[:-2], dtype=np.int64)) == 1:
            continue
        rows = int(np.prod(sa[:-1], dtype=np.int64))
        flat = module.create("int.reshape", [a], [TensorType((rows, sa[-1]), a.type.element)],
                             {"shape": [rows, sa[-1]]}, op.loc + "/flatten")
        out = op.results[0]
        element = out.type.element
        if out.type.is_quant and element.is_per_axis:
            element = element.with_(axis=1)  # the per-column axis of the 2-D product
        mm = module.create("int.matmul", [flat.result, b], [TensorType((rows, sb[-1]), element)], {}, op.loc)
        back = module.create("int.reshape", [mm.result], [out.type], {"shape": list(out.type.shape)},
                             op.loc + "/unflatten")
        module.replace_op(op, [back.result])


def check_transformer_forms(module: Module, target: DeeployTarget) -> None:
    """Refuse, naming the node, a transformer op the platform cannot run as the interpreter computes it."""
    siracusa = target.platform == "Siracusa"
    for op in module.ops():
        if op.name == "int.ilayernorm" and not target.accepts("iLayerNorm"):
            raise _fail(op, target, f"{target.platform} has no integer LayerNorm kernel (Deeploy's {target.platform} "
                                    f"platform maps no iLayerNorm): compile this model for deeploy-generic or "
                                    f"deeploy-cortexm")
        elif op.name == "int.isoftmax":
            if siracusa and (int(op.attr("coeffA")) != 1 or int(op.attr("n_levels")) != 256
                             or not 0 <= int(op.attr("coeffC")) < 1 << 31):
                raise _fail(op, target, "Siracusa's iSoftmax kernel ignores coeffA and n_levels and takes an int32 "
                                        "coeffC: it needs coeffA = 1, n_levels = 256, 0 <= coeffC < 2^31")
        elif op.name == "int.igelu":
            _check_gelu_requant(op, target, required=siracusa)
        elif op.name == "int.matmul":
            a, b = (v.type.shape for v in op.operands)
            if all(v.owner.name != "qir.const" for v in op.operands) and tuple(a[:-2]) != tuple(b[:-2]):
                raise _fail(op, target, f"MatMul of two activations with batch dimensions {list(a[:-2])} and "
                                        f"{list(b[:-2])}: Deeploy's MatMul needs the same batch dimensions on both")
            if int(np.prod(a[:-2], dtype=np.int64)) > 1 and int(np.prod(b[:-2], dtype=np.int64)) == 1 and len(b) == 2:
                raise _fail(op, target, f"MatMul of a batched {list(a)} operand with a 2-D {list(b)} one: Deeploy "
                                        f"reads the 2-D operand out of bounds after the first batch")


def _check_gelu_requant(op: Operation, target: DeeployTarget, required: bool) -> None:
    rqs = _sole_user(op)
    if rqs is None or rqs.name != "int.requant_shift":
        if required:
            raise _fail(op, target, "iGELU must be followed by a RequantShift (its only user): the platform runs it "
                                    "only fused (RequantizediGELU)")
        return
    mul, add = np.asarray(rqs.attr("mul")), np.asarray(rqs.attr("add"))
    if mul.size != 1 or add.size != 1 or np.any(add != 0):
        raise _fail(op, target, f"the RequantShift after iGELU must be per tensor with add = 0 (Deeploy fuses them "
                                f"into RequantizediGELU, which replaces add by round(add / mul)); got mul "
                                f"{mul.reshape(-1).tolist()[:4]}, add {add.reshape(-1).tolist()[:4]}")
    if int(rqs.attr("div")) < 2 or int(rqs.attr("n_levels")) != 256:
        raise _fail(op, target, "the RequantShift after iGELU needs div >= 2 and n_levels = 256 (the fused "
                                "RequantizediGELU shifts by log2(div) with rounding and clips to 8 bits)")
