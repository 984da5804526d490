"""docs/writing-a-lowering.md, followed word for word, so that the tutorial cannot rot.

The tutorial marks each fenced block with its fence info string:

    ```python file=PATH      write the block to PATH (relative to an empty folder), as the reader does
    ```sh run                run the block's lines there, in order, with bash (set -e)
    ```text expected         lines that must appear, in this order, in the output of the `sh run` block before it
                             (each inside one output line; runs of blanks count as one)
    ```sh illustration       shown, not run (it would change the qirc checkout)

Every block carries one of these marks, so nothing in the tutorial escapes the test.  The walk-through runs in
tmp_path with one substitution: `pip install -e ./PKG` installs PKG with `pip install --target SITE` instead and SITE
goes on PYTHONPATH, so that the test finds the package through its `qirc.passes` entry point exactly as an installed
plugin is found, without changing the environment the tests run in.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "writing-a-lowering.md"
MARKS = ("file", "run", "expected", "illustration")
_PIP_EDITABLE = re.compile(r"^pip install -e (\S+)$")


@dataclass
class Block:
    lang: str
    mark: str  # one of MARKS
    path: str  # for file=PATH blocks
    text: str
    line: int  # of the opening fence, 1-based


def tutorial_blocks(text: str) -> List[Block]:
    """The fenced blocks of the tutorial, in order; ValueError for an unmarked or unclosed block."""
    blocks: List[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^```(\S*)\s*(.*)$", lines[i])
        if not opening:
            i += 1
            continue
        lang, info = opening.group(1), opening.group(2).strip()
        start = i + 1
        i += 1
        while i < len(lines) and lines[i] != "```":
            i += 1
        if i == len(lines):
            raise ValueError(f"line {start}: unclosed code block")
        body = "\n".join(lines[start:i]) + "\n"
        i += 1
        if info.startswith("file="):
            blocks.append(Block(lang, "file", info[len("file="):], body, start))
        elif info in MARKS:
            blocks.append(Block(lang, info, "", body, start))
        else:
            raise ValueError(f"line {start}: code block without a mark ({' / '.join(MARKS)}): ```{lang} {info}")
    return blocks


@pytest.fixture(scope="module")
def blocks() -> List[Block]:
    return tutorial_blocks(TUTORIAL.read_text(encoding="utf-8"))


def test_every_block_is_marked_and_every_expected_block_follows_a_run(blocks):
    assert blocks, "no code blocks found"
    for previous, block in zip([None] + blocks, blocks):
        if block.mark == "expected":
            assert previous is not None and previous.mark == "run", \
                f"line {block.line}: an expected block must follow a `sh run` block"
    kinds = {(b.lang, b.mark) for b in blocks}
    assert ("sh", "run") in kinds and ("python", "file") in kinds and ("toml", "file") in kinds


def test_python_blocks_are_valid_python_and_the_pass_has_its_docstring(blocks):
    sources = {b.path: b.text for b in blocks if b.mark == "file" and b.lang == "python"}
    for path, source in sources.items():
        ast.parse(source, filename=path)
    plugin = ast.parse(sources["qirc-clip-passes/qirc_clip_passes/__init__.py"])
    (cls,) = [n for n in plugin.body if isinstance(n, ast.ClassDef)]
    doc = ast.get_docstring(cls)
    assert "Before:" in doc and "After:" in doc and "Precondition:" in doc
    assert [d.id for d in cls.decorator_list if isinstance(d, ast.Name)] == ["register_pass"]


def test_the_tutorial_runs_word_for_word(blocks, tmp_path):
    site = tmp_path / "_site"
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(site)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    work = tmp_path / "tutorial"
    work.mkdir()
    last_output = None
    for block in blocks:
        if block.mark == "file":
            target = work / block.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text, encoding="utf-8")
        elif block.mark == "run":
            last_output = _run_block(block, work, site, env)
        elif block.mark == "expected":
            _assert_lines_in_order(block, last_output)


def _run_block(block: Block, cwd: Path, site: Path, env: dict) -> str:
    commands = []
    for line in block.text.splitlines():
        pip = _PIP_EDITABLE.match(line.strip())
        if pip:
            line = (f'"{sys.executable}" -m pip install --quiet --no-deps --no-build-isolation --no-index '
                    f'--target "{site}" {pip.group(1)}')
        commands.append(line)
    script = "set -e -o pipefail\n" + "\n".join(commands) + "\n"
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, f"tutorial line {block.line}: commands failed:\n{block.text}\n{proc.stdout}"
    return proc.stdout


def _squeeze(line: str) -> str:
    return " ".join(line.split())


def _assert_lines_in_order(block: Block, output: str) -> None:
    """Each non-blank line of the expected block occurs, in order, inside a line of the output; runs of blanks
    count as one (column widths such as those of `--list-passes` depend on the other registered passes)."""
    lines = [_squeeze(line) for line in output.splitlines()]
    position = 0
    for wanted in block.text.splitlines():
        if not wanted.strip():
            continue
        for k in range(position, len(lines)):
            if _squeeze(wanted) in lines[k]:
                position = k + 1
                break
        else:
            raise AssertionError(f"tutorial line {block.line}: expected output line not found (in order):\n"
                                 f"{wanted}\n--- actual output ---\n{output}")


def test_unmarked_blocks_are_rejected():
    with pytest.raises(ValueError, match="without a mark"):
        tutorial_blocks("text\n```python\nprint(1)\n```\n")
    with pytest.raises(ValueError, match="unclosed"):
        tutorial_blocks("```sh run\nls\n")


def test_expected_lines_must_appear_in_order():
    expected = Block("text", "expected", "", "b  c\na\n", 1)
    _assert_lines_in_order(Block("text", "expected", "", "a\n", 1), "x  a\n")
    with pytest.raises(AssertionError, match="not found"):
        _assert_lines_in_order(expected, "a\nb c\n")
    _assert_lines_in_order(expected, "xx b    c yy\nz a\n")
