"""Generate docs/support.md, what qirc supports, from the tables the code itself runs on.

    python -m qirc.supportdoc > docs/support.md

The ONNX ops come from the importer's handlers (`OnnxImporter._op_*`, `_qonnx_*`) and its tables (FOLD_ONLY_OPS,
QONNX_DOMAINS, QONNX_INPUT_COUNTS); the integer lowering of each op from the rule tables of the lowering passes; the
quantized element types from the importer's own check (`patterns.storage_for_dtype`, asked about every integer and
float type ONNX has); the per-target limits from the Deeploy target descriptions that legalisation reads
(`qirc.backends.deeploy.targets.TARGETS`).  tests/test_docs_support.py checks that docs/support.md equals this
output, so the page cannot drift from the code.
"""
from __future__ import annotations

import sys
from typing import Dict, List, Optional, Sequence

import onnx

REGENERATE_COMMAND = "python -m qirc.supportdoc > docs/support.md"

#: the integer lowering of the ops add-rescale handles (its rules are code, not a table)
_ADD_RESCALE_OPS = ("onnx.Add", "onnx.Sub", "onnx.Concat")


def _importer_ops():
    from .frontends.onnx import importer

    cls = importer.OnnxImporter
    onnx_ops = sorted(n[len("_op_"):] for n in dir(cls) if n.startswith("_op_"))
    qonnx_ops = sorted(n[len("_qonnx_"):] for n in dir(cls) if n.startswith("_qonnx_"))
    return importer, onnx_ops, qonnx_ops


def _lowering_rules() -> Dict[str, List[str]]:
    """onnx op name -> the passes of lower-to-int that turn it into integer arithmetic."""
    from .lowering import add_rescale, dequant_push, pool_lowering

    by_op: Dict[str, List[str]] = {}
    tables = (("pool-lowering", pool_lowering._RULES), ("add-rescale", _ADD_RESCALE_OPS),
              ("add-rescale (passes through)", add_rescale._TRANSPARENT), ("dequant-push", dequant_push._RULES))
    for pass_name, table in tables:
        for op in table:
            by_op.setdefault(op[len("onnx."):], []).append(pass_name)
    from .frontends.onnx.importer import DECOMPOSED_OPS
    for op, (pass_name, _) in DECOMPOSED_OPS.items():
        by_op.setdefault(op, []).append(pass_name)
    return by_op


#: the element types the page asks the importer about (a fixed list, so that the page does not change with the
#: onnx release installed)
ELEMENT_TYPES = ("INT4", "UINT4", "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "INT64", "FLOAT8E4M3FN",
                 "FLOAT8E5M2")


def _element_types() -> List[Sequence[str]]:
    """(ONNX element type, what the importer says) for every type of ELEMENT_TYPES."""
    from .frontends.onnx import patterns

    rows = []
    for name in ELEMENT_TYPES:
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(getattr(onnx.TensorProto, name))
            storage = patterns.storage_for_dtype(dtype)
        except Exception as err:  # the importer's own refusal, whatever its type
            rows.append((name, "not supported: " + _first_line(str(err))))
            continue
        rows.append((name, f"supported, stored as `{storage}`"))
    return rows


def _first_line(text: str) -> str:
    return " ".join(text.split())


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _target_rows(targets) -> List[Sequence[str]]:
    def cells(fn):
        return [fn(t) for t in targets]

    pools = {"depthwise-conv": "all-ones depthwise Conv + RequantShift",
             "ones-matmul": "global pools only (all-ones MatMul + RequantShift); windowed ones refused",
             None: "refused"}
    residual = {"mul-add": "Mul, Mul -> Add -> RequantShift (exact)",
                "requantized-add": "Concat(a, b copies) -> depthwise Conv -> RequantShift (int32 sum; different "
                                   "scales, one signedness), else RequantShift(a), RequantShift(b) -> Add -> "
                                   "RequantShift (8-bit operands)"}

    def depthwise(t):
        if t.depthwise_conv:
            return f"yes ({t.depthwise_layout})"
        if t.dense_depthwise_cap_kib:
            return f"as a dense block-diagonal Conv up to {t.dense_depthwise_cap_kib} KiB of weights per layer"
        return "refused"

    return [
        ("Deeploy platform", cells(lambda t: t.platform)),
        ("ONNX ops emitted", cells(lambda t: ", ".join(sorted(t.onnx_ops)))),
        ("integer tensors", cells(lambda t: "int8 only (unsigned ones moved to int8, zero point -128)"
                                  if t.signed_normalize else "int8 and uint8")),
        ("accumulators", cells(lambda t: "int32")),
        ("bare integer Conv (without a RequantShift after it)", cells(lambda t: _yes(not t.conv_needs_requant))),
        ("Gemm without a RequantShift after it (int32 output)",
         cells(lambda t: "as MatMul (int8 x int8) + Add of the bias" if t.gemm_needs_requant else "yes")),
        ("residual Add of two tensors", cells(lambda t: residual[t.residual_add])),
        ("average pooling", cells(lambda t: pools[t.sum_pool])),
        ("depthwise Conv", cells(depthwise)),
        ("Conv pads", cells(lambda t: "equal on every side (else an explicit Pad)" if t.square_conv_pads
                            else "any")),
        ("Gemm/MatMul requant multiplier", cells(lambda t: "one scalar (per tensor)" if t.gemm_scalar_mul
                                                 else "per tensor or per channel")),
        ("requant gain mul/div of Conv/Gemm/MatMul", cells(lambda t: "below 1 (Q31 multiplier)"
                                                           if t.q31_requant_multiplier else "any")),
        ("a ReLU/clip the requant before it cannot absorb", cells(lambda t: {
            "levels": "RequantShift with the clip's levels",
            "shifted": "signed RequantShift pair around an offset"}[t.clip_form])),
    ]


def render_support() -> str:
    from .backends.deeploy.targets import TARGETS

    importer, onnx_ops, qonnx_ops = _importer_ops()
    rules = _lowering_rules()
    fold_only = set(importer.FOLD_ONLY_OPS)
    targets = list(TARGETS.values())
    out: List[str] = []
    w = out.append
    w("# What qirc supports\n")
    w(f"<!-- Generated by `{REGENERATE_COMMAND}` from the importer's and the Deeploy targets' own tables; "
      "tests/test_docs_support.py keeps it in sync. Do not edit. -->\n")
    w("When qirc refuses a model it says so in one line naming the file, the node and the problem, and a refusal "
      "(something qirc or the target does not support, as opposed to a malformed file) ends with `; see "
      "docs/support.md`. This page lists the limits those refusals come from.\n")

    w("## Input formats\n")
    w("| form | what qirc reads |")
    w("|---|---|")
    w("| decomposed QCDQ (Brevitas, DeepQuant) | quantizer `Div(x, s) -> Add(z) -> Round -> Clip(lo, hi)` (Clip "
      "bounds may come through `Constant -> Cast`), dequantizer `Sub(z) -> Mul(s)` |")
    w("| DeepQuant `dequant_moved` | Conv/Gemm on stored integers followed by one dequantizer |")
    w("| QDQ | `QuantizeLinear [-> Clip] -> DequantizeLinear` |")
    w(f"| QONNX | `Quant`, `Trunc` in the domains {', '.join(f'`{d}`' for d in importer.QONNX_DOMAINS)} |")
    w("| qirc text | a `.qir` file (`qirc MODEL.onnx --emit qir -o MODEL.qir` writes one; docs/ir.md) |")
    w("")
    w("Graph inputs are float32 tensors with static shapes. Scales and zero points are constants (initializers or "
      "Constant nodes, or Constant/Cast chains the importer folds), never graph inputs: qirc compiles the "
      "quantization the model fixes. An initializer that is also listed as a graph input is a constant.\n")

    w("## Quantized element types\n")
    w("What the importer's check (`qirc.frontends.onnx.patterns.storage_for_dtype`) answers for each ONNX integer "
      "and float8 element type of a quantized tensor (QDQ zero point, stored constant):\n")
    w("| ONNX element type | |")
    w("|---|---|")
    for name, verdict in _element_types():
        w(f"| `{name}` | {verdict} |")
    w("")
    w("Decomposed QCDQ and QONNX quantizers give their range as Clip bounds or a bit width; the stored integers "
      "take the narrowest of `i8`, `u8`, `i16`, `u16`, `i32` that holds it. The Deeploy targets take 8-bit "
      "activations and weights and int32 accumulators (see the table below); wider activations are refused when "
      "legalising.\n")

    w("## ONNX ops\n")
    w("Every op the importer has a handler for; any other op is refused with the list of unsupported ops (at most "
      "five node names and a count). *Lowered by* names the passes of `lower-to-int` that turn the op into integer "
      "arithmetic (docs/passes.md); an op without one is folded or absorbed at import (quantizer parts, shape "
      "arithmetic, BatchNormalization into the Conv before it, Dropout and Identity removed) or, if it is still a "
      "float op after lowering, refused by `lower-to-int` naming the node.\n")
    w("| op | lowered by | note |")
    w("|---|---|---|")
    for op in onnx_ops:
        note = "constant subgraphs only (shape arithmetic)" if op in fold_only else \
            importer.DECOMPOSED_OPS[op][1] if op in importer.DECOMPOSED_OPS else ""
        w(f"| `{op}` | {', '.join(rules.get(op, [])) or '-'} | {note} |")
    w("")
    w("QONNX ops:\n")
    w("| op | inputs read | note |")
    w("|---|---|---|")
    for op in qonnx_ops:
        counts = importer.QONNX_INPUT_COUNTS.get(op)
        doc = (getattr(importer.OnnxImporter, f"_qonnx_{op}").__doc__ or "").strip().splitlines()
        note = doc[0].split(" (")[0] if doc else ""
        w(f"| `{op}` | {' or '.join(map(str, counts)) if counts else 'all'} | {note} |")
    w("")

    w("## Deeploy targets\n")
    w("What legalisation (`deeploy-legalize{target=T}`) reads from each target's description "
      "(`qirc/backends/deeploy/targets.py`; docs/targets.md explains why). A model whose integer graph needs a form "
      "a target lacks is refused naming the node.\n")
    w("| | " + " | ".join(f"`{t.name}`" for t in targets) + " |")
    w("|---" * (len(targets) + 1) + "|")
    for label, values in _target_rows(targets):
        w(f"| {label} | " + " | ".join(values) + " |")
    w("")
    for t in targets:
        w(f"Quirks of `{t.name}` ({t.description}):\n")
        for quirk in t.quirks:
            w(f"- {quirk}")
        w("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    sys.stdout.write(render_support())
    return 0


if __name__ == "__main__":
    sys.exit(main())
