"""docs/ir.md is generated from the code (grammar file, op declarations); it must match the generator exactly."""
from pathlib import Path

from qirc.qir.docgen import render_ir_reference
from qirc.qir.ops import DIALECTS, load_dialects
from qirc.qir.parser import grammar_text, parse_module
from qirc.qir.printer import print_module

DOC = Path(__file__).resolve().parents[1] / "docs" / "ir.md"


def test_docs_ir_is_up_to_date():
    generated = render_ir_reference()
    assert DOC.read_text(encoding="utf-8") == generated, \
        "docs/ir.md is stale: run `python -m qirc.qir.docgen > docs/ir.md`"


def test_reference_holds_grammar_and_every_builtin_op():
    load_dialects()
    text = render_ir_reference()
    assert grammar_text().strip() in text
    for name in ("qir", "quant", "onnx", "int"):
        for op in DIALECTS[name].ops:
            assert f"#### `{op}`" in text
    assert "| `rounding` | str | `'round_add'` |" in text


def test_worked_example_in_the_reference_parses_to_itself():
    text = render_ir_reference()
    example = text.split("```mlir\n", 1)[1].split("```", 1)[0]
    assert example.startswith("qir.module @example {")
    assert print_module(parse_module(example)) == example
