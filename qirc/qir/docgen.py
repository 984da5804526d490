"""Generate docs/ir.md, the IR reference, from the code: the grammar file, the type syntax and every op declaration.

    python -m qirc.qir.docgen > docs/ir.md

tests/test_docs_ir.py checks that docs/ir.md equals this output, so the reference cannot drift from the code.
"""
from __future__ import annotations

import sys
from typing import List

import numpy as np

from .ir import Module, const_op, input_op, output_op
from .ops import DIALECTS, REQUIRED, AttrDef, OpDef, load_dialects
from .parser import grammar_text
from .printer import ELIDE_LIMIT, ELIDED_CHANNELS, MAX_ELIDED_LINE, SMALL_DENSE_LIMIT, print_module
from .types import UniformQuantType, f32, i8, i32, tensor

# The dialects documented here, in the order a model is lowered through them.
BUILTIN_DIALECTS = ("qir", "quant", "onnx", "int")


def render_ir_reference() -> str:
    load_dialects()
    parts: List[str] = [_INTRO.format(example=print_module(_example_module()).rstrip(),
                                      elided=_elided_line(), limit=SMALL_DENSE_LIMIT, elide_limit=ELIDE_LIMIT,
                                      channels=ELIDED_CHANNELS, max_line=MAX_ELIDED_LINE)]
    parts.append(_TYPES)
    parts.append(_ATTRIBUTES.format(limit=SMALL_DENSE_LIMIT))
    parts.append("## Grammar\n\nThe lark grammar (`qirc/qir/qir.lark`, LALR(1)); `qirc/qir/parser.py` builds the module "
                 "while it parses and checks each op against its declaration.\n\n```lark\n"
                 + grammar_text().rstrip() + "\n```\n")
    parts.append("## Dialects and ops\n\nGenerated from the declarations in `qirc/qir/dialects/`. An operand "
                 "written `name?` is optional (only at the end), `name*` is variadic. Attributes without a default "
                 "are required.\n")
    for name in BUILTIN_DIALECTS:
        dialect = DIALECTS[name]
        parts.append(f"### Dialect `{name}`: {dialect.summary}\n")
        module_doc = sys.modules[f"{__package__}.dialects.{name}"].__doc__ or ""
        body = module_doc.strip().split("\n", 1)
        if len(body) > 1 and body[1].strip():
            parts.append(body[1].strip() + "\n")
        for op_name in sorted(dialect.ops, key=str.lower):
            parts.append(_render_op(dialect.ops[op_name]))
    return "\n".join(parts)


def _render_op(d: OpDef) -> str:
    operands = ", ".join(o.name + ("?" if o.optional else "*" if o.variadic else "") for o in d.operands)
    results = ", ".join(d.results) if d.results else "none"
    lines = [f"#### `{d.name}`\n", d.summary + "\n"]
    if d.description:
        lines.append(d.description.strip() + "\n")
    lines.append(f"- operands: {operands or 'none'}")
    lines.append(f"- results: {results}")
    if d.traits:
        lines.append(f"- traits: {', '.join(sorted(d.traits))}")
    if d.attrs:
        lines.append("\n| attribute | kind | default | meaning |\n|---|---|---|---|")
        for attr_name in sorted(d.attrs):
            a = d.attrs[attr_name]
            lines.append(f"| `{attr_name}` | {a.kind} | {_default_text(a)} | {_doc_text(a)} |")
    return "\n".join(lines) + "\n"


def _default_text(a: AttrDef) -> str:
    if a.default is REQUIRED:
        return "required"
    if a.default is None:
        return "none"
    return "`" + repr(a.default).replace("|", "\\|") + "`"


def _doc_text(a: AttrDef) -> str:
    text = a.doc
    if a.choices:
        text = (text + "; " if text else "") + "one of " + ", ".join(f"`{c!r}`" for c in a.choices)
    return text.replace("|", "\\|")


def _example_module() -> Module:
    """A conv -> requant layer, as the lowering produces it."""
    m = Module("example")
    x = input_op(m, "input", tensor((1, 2, 4, 4), UniformQuantType.per_tensor(i8, 0.0078125, 0)))
    weights = np.array([[[[1, -2, 3]]], [[[-4, 5, -6]]]], dtype=np.int8).repeat(2, axis=1)
    w_type = tensor((2, 2, 1, 3), UniformQuantType.per_axis(i8, 0, [0.015625, 0.0078125],
                                                             storage_min=-127, storage_max=127))
    w = const_op(m, weights, w_type, loc="/conv/weight", name="w")
    acc = m.create("int.conv", [x, w], [tensor((1, 2, 4, 4), i32)],
                   {"kernel_shape": [1, 3], "pads": [0, 1, 0, 1], "strides": [1, 1], "dilations": [1, 1],
                    "group": 1}, loc="/conv/Conv").result
    y = m.create("int.requant_shift", [acc], [tensor((1, 2, 4, 4), UniformQuantType.per_tensor(i8, 0.0625, 0))],
                 {"mul": np.array([4, 2], dtype=np.int32).reshape(2, 1, 1),
                  "add": np.array([0, 512], dtype=np.int32).reshape(2, 1, 1),
                  "div": 1024, "signed": True, "n_levels": 256}, loc="/relu/Relu").result
    scale = const_op(m, np.array([0.5, -0.0], dtype=np.float32), tensor((2,), f32), loc="/scale", name="scale")
    output_op(m, "output", y)
    output_op(m, "scale", scale)
    return m


def _elided_line() -> str:
    m = Module("m")
    weights = (np.arange(16 * 3 * 3 * 3) % 7 - 3).astype(np.int8).reshape(16, 3, 3, 3)
    const_op(m, weights, tensor((16, 3, 3, 3), i8), loc="/conv1/weight", name="w0")
    return print_module(m, elide_constants=True).splitlines()[1].strip()


_INTRO = """\
# The qir textual IR

<!-- Generated by `python -m qirc.qir.docgen > docs/ir.md`; tests/test_docs_ir.py keeps it in sync. Do not edit. -->

A module prints as MLIR-like text (`qirc.qir.printer.print_module`) and reads back with
`qirc.qir.parser.parse_module`. The text is canonical: printing the parsed text gives the same text again
(print -> parse -> print is a fixed point), and every constant comes back bit for bit in its dtype.

```python
from qirc.qir.printer import print_module
from qirc.qir.parser import parse_module, parse_type

text = print_module(module)          # elide_constants=True: for reading (large arrays hidden), not parseable
module = parse_module(text, filename="model.qir")   # raises ParseError "model.qir:12:7: ..." on bad input
t = parse_type("tensor<1x16x!quant.uniform<i8:f32, 0.0039:0>>")
```

## A worked example

A convolution over an int8 input with per-channel int8 weights (narrow range), then the requantization that
Deeploy's `RequantShift` computes:

```mlir
{example}
```

Reading it line by line:

- `qir.module @example {{ ... }}` holds one op per line, in a topological order (the order of `Module.ops()`).
- `%input = qir.input "input" : T` is a graph input named `"input"` of type `T`. The `%name` is the SSA value
  the op defines; later ops use it. A value must be defined above every use, so the text cannot hold a cycle.
- `%w = qir.const dense<...> : T` is a constant. Its array has the element type of `T`'s storage (`i8` here, as
  the weights are `!quant.uniform<i8<-127:127>...>` with one scale per output channel, axis 0) and `T`'s shape.
  An array whose elements are all equal prints as the splat `dense<v>` (`dense<0> : tensor<16xi32>`,
  `dense<0.5> : tensor<f32>`), other small integer arrays as a flat list, the rest as their raw little-endian
  bytes in hex: `dense<"0x0000003F00000080">` is the float32 array `[0.5, -0.0]`.
- `%0 = int.conv %input, %w {{...}} : tensor<1x2x4x4xi32>` is an op: results, `=`, the op name
  (`dialect.op`), operands, attributes in braces (sorted by name), `:` and the result types. A value without a
  valid unique name prints as a number (`%0`, `%1`, ...).
- `loc("/conv/Conv")` is the location: the name of the source node the op came from, used by every diagnostic.
- Attributes inside braces name their kind by their spelling: `1` int, `1.0` float (always with `.`, `e`, `inf`
  or `nan`), `true` bool, `"s"` string, `[1, 2]` list, `dense<...> : tensor<...>` array (the annotation gives
  the array's dtype and shape), `tensor<...>` type.
- `qir.output "output" %1` marks `%1` as the graph output named `"output"`.

With `elide_constants=True` (the CLI's `--elide-constants`) arrays of more than {elide_limit} elements that are not
splats print as

    {elided}

attribute lists of more than {elide_limit} numbers as their first few and their length, per-channel quant types of
more than {channels} channels as a summary (`!quant.uniform<i8:f32:0, {{64 channels: scales 0.00121..0.0098, zero
point 0}}>`), scales with 6 significant digits, and a line that would still exceed {max_line} characters shortens
its `loc` to the node name's tail. That reads well on real models but cannot be parsed back: the parser stops with
"constant elided; cannot parse an --elide-constants dump".

Every malformed input raises `qirc.qir.diagnostics.ParseError`, whose one-line message names the file, line and
column: `model.qir:3:20: undefined value %z (a value must be defined above its use)`. The parser checks each op
against its declaration (operand and result counts, attribute names and kinds, choices); it does not check
shapes or element types, which is the verifier's job (`qirc.qir.verifier.verify`).
"""

_TYPES = """\
## Types

| syntax | meaning |
|---|---|
| `f16` `f32` `f64` | floats |
| `i1` `i8` `i16` `i32` `i64`, `u8` `u16` `u32` `u64` | signed / unsigned integers (`i1` is bool) |
| `tensor<1x3x32x32xf32>`, `tensor<f32>` | ranked tensor (rank 0 allowed); dimensions then element type, joined by `x` |
| `!quant.uniform<i8:f32, 0.0078125:0>` | per-tensor quantized: storage `i8`, expressed `f32`, `scale:zero_point`; real = (stored - zero_point) * scale |
| `!quant.uniform<u8:f32, 0.0039:-128>` | zero points may be negative |
| `!quant.uniform<i8<-127:127>:f32, 0.5:0>` | narrow storage range `<min:max>` (here the symmetric int8 range) |
| `!quant.uniform<i8:f32:0, {0.012:0, 0.009:0}>` | per-axis: `:axis` after the expressed type, one `scale:zero_point` per index along the axis |

A quantized tensor holds its stored integers at run time (`tensor<4x!quant.uniform<i8...>>` is an int8 array).
Scales print with Python's `repr()` (the shortest text that reads back as the same float64) and always look like
floats (`1.0`, `1e-05`).
"""

_ATTRIBUTES = """\
## Attributes

| kind | spelling | Python value |
|---|---|---|
| int | `3`, `-1` | `int` |
| float | `2.0`, `1e-05`, `inf`, `-inf`, `nan` (repr of the float64) | `float` |
| bool | `true`, `false` | `bool` |
| str | `"round_add"` (JSON escapes: `\\"`, `\\\\`, `\\n`, `\\u00e9`) | `str` |
| ints | `[1, 1, 1, 1]` | `list[int]` |
| floats | `[0.5, 1.0]` | `list[float]` |
| dense | `dense<"0x0100FFFF"> : tensor<2xi16>`, `dense<[1, -1]> : tensor<2xi16>` | `numpy.ndarray` of that dtype and shape |
| type | `tensor<2xf32>`, `f32`, `!quant.uniform<...>` | a type object |

Only attributes present on the op are printed; a missing attribute takes its declared default. The element type
in a dense attribute's annotation fixes the numpy dtype (`f32` float32, `i8` int8, `i64` int64, `u8` uint8,
`i1` bool, ...). The hex form is the array's raw little-endian bytes (NaN payloads and `-0.0` included); an
array whose elements are all the same (bit for bit, NaN aside) prints as the splat `dense<v>`, and other integer
arrays of at most {limit} elements as a flat list. Strings and locations use JSON escaping with
ASCII output, so every op stays on one line.
"""


def main() -> int:
    sys.stdout.write(render_ir_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
