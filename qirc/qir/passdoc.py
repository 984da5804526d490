"""Generate docs/passes.md, the pass reference, from the pass registry.

    python -m qirc.qir.passdoc > docs/passes.md

Every registered pass of qirc itself (its name, summary, whole docstring = the rewrite and its precondition, the
options with their types and defaults, the class that implements it) and every named pipeline.  Passes that come
from installed plugins (the `qirc.passes` entry-point group) are left out unless `--include-plugins` is given, so
that the checked-in file does not depend on what happens to be installed; `qirc-opt --list-passes` shows them.

tests/test_docs_passes.py checks that docs/passes.md equals this output, so the reference cannot drift from the code.
"""
from __future__ import annotations

import argparse
import inspect
import re
import sys
from typing import Any, List, Optional, Sequence, Type

from .passes import ModulePass, all_passes, all_pipelines

#: the package whose passes count as built in (a pass class defined in a module below it)
BUILTIN_PACKAGE = "qirc"
REGENERATE_COMMAND = "python -m qirc.qir.passdoc > docs/passes.md"

# A docstring line such as "Before: ..." or "Precondition (checked): ..." starts a paragraph of its own, so that
# the rewrite, its precondition and its options stay on separate lines in the rendered Markdown.
_LABEL = re.compile(r"^(?:[A-Z][A-Za-z]*(?:[ -][A-Za-z]+){0,3})(?: \([^)]*\))?:(?:\s|$)")


def is_builtin(cls: Type[ModulePass]) -> bool:
    """True for passes defined in qirc's own modules (not a plugin's)."""
    module = cls.__module__ or ""
    return module == BUILTIN_PACKAGE or module.startswith(BUILTIN_PACKAGE + ".")


def documented_passes(include_plugins: bool = False) -> List[Type[ModulePass]]:
    """The passes docs/passes.md describes, sorted by name."""
    return [cls for cls in all_passes() if include_plugins or is_builtin(cls)]


def format_default(typ: type, default: Any) -> str:
    """An option default as it is written in a pipeline (`1`/`0` for bools, `""` for the empty string)."""
    if typ is bool:
        return "1" if default else "0"
    if typ is str and default == "":
        return '""'
    return str(default)


def docstring_markdown(cls: Type[ModulePass]) -> str:
    """The docstring after its summary line, as Markdown paragraphs (labelled lines start their own paragraph)."""
    doc = inspect.getdoc(cls) or ""
    body = doc.split("\n", 1)[1] if "\n" in doc else ""
    paragraphs: List[List[str]] = []
    current: List[str] = []
    for line in body.splitlines():
        stripped = line.strip()
        if not stripped or (_LABEL.match(stripped) and current):
            if current:
                paragraphs.append(current)
            current = [stripped] if stripped else []
            continue
        current.append(stripped)
    if current:
        paragraphs.append(current)
    return "\n\n".join("\n".join(p) for p in paragraphs)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _options_cell(cls: Type[ModulePass]) -> str:
    opts = cls.options()
    if not opts:
        return "none"
    return ", ".join(f"`{key}`" for key in opts)


def render_pass(cls: Type[ModulePass]) -> str:
    lines = [f"### `{cls.name}`", "", cls.summary(), ""]
    body = docstring_markdown(cls)
    if body:
        lines += [body, ""]
    opts = cls.options()
    if opts:
        lines += ["| option | type | default |", "|---|---|---|"]
        for key, (typ, default) in opts.items():
            lines.append(f"| `{key}` | {typ.__name__} | `{_cell(format_default(typ, default))}` |")
        example_key, (example_typ, example_default) = next(iter(opts.items()))
        lines += ["", f"Set in a pipeline as `{cls.name}{{{example_key}=VALUE}}`."
                      + (" A bool option takes `0`, `1`, `true` or `false`." if example_typ is bool else ""), ""]
    else:
        lines += ["Options: none.", ""]
    lines += [f"Implemented by `{cls.__module__}.{cls.__qualname__}`.", ""]
    return "\n".join(lines)


def render_pass_reference(include_plugins: bool = False) -> str:
    """The whole of docs/passes.md."""
    passes = documented_passes(include_plugins)
    pipelines = all_pipelines()
    parts = [_INTRO.format(command=REGENERATE_COMMAND)]
    parts.append("## Passes at a glance\n")
    rows = ["| pass | what it does | options |", "|---|---|---|"]
    rows += [f"| [`{cls.name}`](#{_anchor(cls.name)}) | {_cell(cls.summary())} | {_options_cell(cls)} |"
             for cls in passes]
    parts.append("\n".join(rows) + "\n")
    parts.append("## Named pipelines\n")
    if pipelines:
        rows = ["A named pipeline expands in place into its passes (the pass manager verifies between them).\n",
                "| pipeline | what it does | expands to |", "|---|---|---|"]
        rows += [f"| `{name}` | {_cell(summary)} | `{_cell(text)}` |" for name, (text, summary) in pipelines.items()]
        parts.append("\n".join(rows) + "\n")
    else:
        parts.append("None are registered (`qirc.qir.passes.register_pipeline(name, text, summary)` adds one); "
                     "whole lowerings are passes of their own, such as `lower-to-int` below.\n")
    parts.append("## Pass reference\n")
    parts += [render_pass(cls) for cls in passes]
    return "\n".join(parts).rstrip("\n") + "\n"


def _anchor(name: str) -> str:
    """GitHub's heading anchor for "### `name`": lower case, punctuation other than '-' and '_' dropped."""
    return re.sub(r"[^a-z0-9_ -]", "", name.lower()).replace(" ", "-")


_INTRO = """\
# Passes

<!-- Generated by `{command}` from the pass registry; tests/test_docs_passes.py keeps it in sync. Do not edit. -->

Every pass qirc registers, with the rewrite it performs and the precondition it needs (the pass's docstring), its
options and the class that implements it.  Run passes over textual IR with `qirc-opt`:

```sh
qirc-opt --list-passes                       # names, summaries and options (plugins included)
qirc-opt --describe-pass requant-fusion      # one pass's whole description
qirc-opt model.qir -p 'fold-constants,dequant-push,dce' --print-ir-after-all -o lowered.qir
qirc-opt model.qir -p 'lower-to-int{{signed-normalize=1}}' --validate-each
```

A pipeline is a comma-separated list of pass names; options go in braces after the name, `name{{key=value,...}}`
(bools as `0`/`1`/`true`/`false`, strings optionally quoted).  The pass manager verifies the module before the first
pass and after every pass (after a pass, the ops it created or changed: `qirc/qir/verifier.py`), and `--validate-each`
interprets the module before and after each pass on the same random inputs (translation validation).  From Python:

```python
from qirc.qir.passes import PassManager, parse_pipeline

PassManager(parse_pipeline("lower-to-int{{signed-normalize=1}}")).run(module)
```

Passes are registered with `@register_pass` (see `qirc/qir/passes.py` and docs/writing-a-lowering.md, which also
shows how a separate package adds passes through the `qirc.passes` entry-point group).  This page lists qirc's own
passes only; those of installed plugins appear in `qirc-opt --list-passes`.
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qirc.qir.passdoc",
                                     description="Print docs/passes.md, the pass reference, to stdout.")
    parser.add_argument("--include-plugins", action="store_true",
                        help="also document passes registered by installed plugins (entry-point group qirc.passes)")
    args = parser.parse_args(argv)
    sys.stdout.write(render_pass_reference(include_plugins=args.include_plugins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
