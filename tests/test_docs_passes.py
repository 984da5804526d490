"""docs/passes.md is generated from the pass registry; it must equal the generator's output, and the generator must
describe every built-in pass (docstring, options, defaults) and leave plugins out."""
import inspect
from pathlib import Path

from qirc.qir import passdoc
from qirc.qir.passes import _PASSES, ModulePass, all_passes

DOC = Path(__file__).resolve().parents[1] / "docs" / "passes.md"


def test_docs_passes_is_up_to_date():
    generated = passdoc.render_pass_reference()
    assert DOC.read_text(encoding="utf-8") == generated, \
        f"docs/passes.md is stale: run `{passdoc.REGENERATE_COMMAND}`"


def test_every_builtin_pass_is_documented_with_its_whole_docstring():
    text = passdoc.render_pass_reference()
    builtin = [cls for cls in all_passes() if cls.__module__.startswith("qirc.")]
    assert {"dce", "verify", "lower-to-int", "requant-fusion", "dequant-push"} <= {c.name for c in builtin}
    for cls in builtin:
        assert f"### `{cls.name}`" in text
        assert f"| [`{cls.name}`](#{cls.name}) | " in text
        # every word of the docstring appears, in order, in the pass's section
        section = text.split(f"### `{cls.name}`\n", 1)[1].split("\n### ", 1)[0]
        assert section.split()[:len(inspect.getdoc(cls).split())] == inspect.getdoc(cls).split()


def test_options_are_listed_with_type_and_default():
    text = passdoc.render_pass_reference()
    section = text.split("### `lower-to-int`\n", 1)[1].split("\n### ", 1)[0]
    assert "| `signed-normalize` | bool | `0` |" in section
    assert "`lower-to-int{signed-normalize=VALUE}`" in section
    assert "Options: none." in text.split("### `dce`\n", 1)[1].split("\n### ", 1)[0]


def test_labelled_docstring_lines_become_paragraphs():
    class Example(ModulePass):
        """Do a thing.

        Before: `a`
        continued.
        After: `b`.
        Precondition (checked): none.
        """
        name = "passdoc-example"

    assert passdoc.docstring_markdown(Example) == \
        "Before: `a`\ncontinued.\n\nAfter: `b`.\n\nPrecondition (checked): none."


def test_plugin_passes_are_left_out_unless_asked_for(monkeypatch):
    class PluginPass(ModulePass):
        """A pass from some other package.

        Precondition: none.
        """
        name = "passdoc-plugin-example"
        level: int = 3

    PluginPass.__module__ = "someone_elses_passes"
    monkeypatch.setitem(_PASSES, PluginPass.name, PluginPass)
    assert "passdoc-plugin-example" not in passdoc.render_pass_reference()
    text = passdoc.render_pass_reference(include_plugins=True)
    assert "### `passdoc-plugin-example`" in text
    assert "| `level` | int | `3` |" in text
    assert "Implemented by `someone_elses_passes." in text


def test_named_pipelines_are_listed(monkeypatch):
    from qirc.qir import passes
    monkeypatch.setitem(passes._PIPELINES, "passdoc-pipeline", ("fold-constants,dce", "Fold, then clean up."))
    text = passdoc.render_pass_reference()
    assert "| `passdoc-pipeline` | Fold, then clean up. | `fold-constants,dce` |" in text


def test_main_writes_the_reference(capsys):
    assert passdoc.main([]) == 0
    assert capsys.readouterr().out == passdoc.render_pass_reference()
