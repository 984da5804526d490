"""Real models for the tests, all shipped in the repository (no test needs anything outside it).

- `tests/data/deepquant/<Folder>/`: a few files of real DeepQuant exporter output (ResNet8, DSCNN-XS, Autoencoder),
  quirks included: weights that are also graph inputs, Clip bounds through `Constant -> Cast`.  See
  `tests/data/README.md` for where they come from.
- `examples/<name>/model.onnx`: zoo networks in decomposed QCDQ (`python -m qirc.zoo.make_examples` rebuilds them).

A corpus of DeepQuant exports found at `../shared/corpus/deepquant` next to the checkout (or at `$QIRC_CORPUS`) is an
optional extra: its files that are not shipped are added to the parametrized corpus tests, marked `slow`.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEEPQUANT = REPO / "tests" / "data" / "deepquant"
EXAMPLES = REPO / "examples"
EXTRA_CORPUS = Path(os.environ.get("QIRC_CORPUS") or REPO.parent / "shared" / "corpus") / "deepquant"


def deepquant(folder: str, file: str = "split.onnx") -> Path:
    """The shipped DeepQuant file `tests/data/deepquant/<folder>/<file>` (it must exist: these are committed)."""
    path = DEEPQUANT / folder / file
    assert path.exists(), f"{path} is missing from the checkout"
    return path


def example(name: str) -> Path:
    """The committed zoo example `examples/<name>/model.onnx`."""
    path = EXAMPLES / name / "model.onnx"
    assert path.exists(), f"{path} is missing from the checkout"
    return path


def extra_corpus_files() -> list[Path]:
    """Files of the optional external corpus that are not shipped in tests/data (empty when there is none)."""
    if not EXTRA_CORPUS.is_dir():
        return []
    return [p for p in sorted(EXTRA_CORPUS.glob("*/*.onnx"))
            if not (DEEPQUANT / p.parent.name / p.name).exists()]


def deepquant_params(extra: bool = True) -> list:
    """pytest params over the DeepQuant files: the shipped ones, then the optional corpus' others (marked slow);
    ids are `<Folder>/<file>`; each file's `reference.npz`, if any, sits next to it."""
    shipped = sorted(DEEPQUANT.glob("*/*.onnx"))
    params = [pytest.param(p, id=f"{p.parent.name}/{p.name}") for p in shipped]
    if extra:
        params += [pytest.param(p, id=f"corpus:{p.parent.name}/{p.name}", marks=pytest.mark.slow)
                   for p in extra_corpus_files()]
    return params


def example_params(names=None, slow=()) -> list:
    """pytest params over the committed zoo examples (all of them, or `names`); those named in `slow` are marked
    slow (the default run leaves them out)."""
    names = names or sorted(p.parent.name for p in EXAMPLES.glob("*/model.onnx"))
    return [pytest.param(example(n), id=f"examples/{n}", marks=[pytest.mark.slow] if n in slow else [])
            for n in names]
