"""Regenerate the committed example models from the zoo, byte for byte.

    python -m qirc.zoo.make_examples            # writes examples/resnet8/model.onnx
    python -m qirc.zoo.make_examples --check    # exit 1 if a committed file differs from what the zoo builds now
    python -m qirc.zoo.make_examples --out DIR  # write DIR/resnet8/model.onnx instead

Each example is a zoo network built with its defaults (seed 0, per-tensor int8 weights, 8-bit activations),
calibrated on the zoo's seeded synthetic inputs (which fixes the scales, not the accuracy: the weights are random)
and exported as decomposed QCDQ.  Files are small (< 1 MB) so that they can live in the repository.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

#: (zoo network, folder under examples/)
EXAMPLES = (("resnet8", "resnet8"),)
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


def make_examples(out_dir: Path = EXAMPLES_DIR, progress: bool = True) -> list[Path]:
    """Build every example into `out_dir/<folder>/model.onnx`; returns the paths written."""
    from qirc.zoo import zoo_build

    return [zoo_build(name, Path(out_dir) / folder, format="qcdq", progress=progress) for name, folder in EXAMPLES]


def check_examples(examples_dir: Path = EXAMPLES_DIR, progress: bool = True) -> list[str]:
    """The example files under `examples_dir` that are missing or differ from a fresh build (empty: all match)."""
    from qirc.zoo import MODEL_FILE

    stale = []
    with tempfile.TemporaryDirectory(prefix="qirc-examples-") as tmp:
        for fresh in make_examples(Path(tmp), progress=progress):
            committed = Path(examples_dir) / fresh.parent.name / MODEL_FILE
            if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
                stale.append(str(committed))
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qirc.zoo.make_examples", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR, help="examples folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    from qirc.qir.diagnostics import QircError

    try:
        if args.check:
            stale = check_examples(args.out)
            for path in stale:
                print(f"{path}: differs from the zoo build; run python -m qirc.zoo.make_examples", file=sys.stderr)
            return 1 if stale else 0
        for path in make_examples(args.out):
            print(path)
    except QircError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
