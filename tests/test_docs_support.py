"""docs/support.md is generated from the importer's and the Deeploy targets' own tables; it must equal the
generator's output and name every op the importer reads and every target."""
from pathlib import Path

from qirc import supportdoc
from qirc.backends.deeploy.targets import TARGETS
from qirc.frontends.onnx.importer import FOLD_ONLY_OPS, OnnxImporter

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "support.md"


def test_docs_support_is_up_to_date():
    assert DOC.read_text(encoding="utf-8") == supportdoc.render_support(), \
        f"docs/support.md is stale: run `{supportdoc.REGENERATE_COMMAND}`"


def test_every_importer_op_and_every_target_is_on_the_page():
    text = supportdoc.render_support()
    ops = [n[len("_op_"):] for n in dir(OnnxImporter) if n.startswith("_op_")]
    assert {"Conv", "Gemm", "QuantizeLinear", "Softmax"} <= set(ops)
    for op in ops:
        assert f"| `{op}` |" in text
    for op in FOLD_ONLY_OPS:
        assert f"| `{op}` | - | constant subgraphs only" in text
    for name, target in TARGETS.items():
        assert f"`{name}`" in text and target.platform in text
        for quirk in target.quirks:
            assert quirk in text
    assert "| `Conv` | dequant-push |" in text and "| `AveragePool` | pool-lowering |" in text
    assert "| `INT8` | supported, stored as `i8` |" in text


def test_readme_points_to_the_page_and_refusals_do_too(tmp_path, capsys):
    from onnx_builders import GraphBuilder
    import onnx

    from qirc.cli import main

    assert "docs/support.md" in (REPO / "README.md").read_text()
    b = GraphBuilder("sin")
    b.output(b.node("Sin", [b.quant(b.input("x", [1, 4]), 0.5, prefix="/q")], name="/act/Sin"), "y")
    onnx.save(b.build(13), tmp_path / "sin.onnx")
    assert main([str(tmp_path / "sin.onnx"), "--target", "deeploy-generic", "-o", str(tmp_path / "out")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("unsupported ops: Sin (/act/Sin); see docs/support.md"), line


def test_main_writes_the_page(capsys):
    assert supportdoc.main([]) == 0
    assert capsys.readouterr().out == supportdoc.render_support()
