"""Build the example models committed under examples/ from the zoo, or check that a rebuild still means the same.

    python -m qirc.zoo.make_examples                 # writes examples/<folder>/model.onnx for every example
    python -m qirc.zoo.make_examples --check         # exit 1 if a rebuild differs from a committed file in meaning
    python -m qirc.zoo.make_examples --out DIR       # write (or check) DIR/<folder>/model.onnx instead
    python -m qirc.zoo.make_examples --only resnet8  # just these examples

Each example is a zoo network built with its defaults (seed 0, per-tensor int8 weights, 8-bit activations),
calibrated on the zoo's seeded synthetic inputs (which fixes the scales, not the accuracy: the weights are random)
and exported as decomposed QCDQ.  Files are small (about 2 MB at most) so that they can live in the repository.

A rebuild is compared by meaning, not by bytes: float arithmetic in torch may differ in the last bit between CPUs
and builds, so the check asks for the same graph (nodes, attributes, tensor names, dtypes and shapes), integer
tensors equal and float tensors (weights, scales) within a relative 1e-6 of the committed ones.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional

#: (zoo network, folder under examples/)
EXAMPLES = (("resnet8", "resnet8"), ("mobilenetv2-vww", "mobilenetv2-vww"), ("dscnn-s", "dscnn-s"),
            ("autoencoder-small", "autoencoder-small"))
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
#: relative tolerance for float tensors when a rebuild is compared with a committed file
RTOL = 1e-6


def _selected(only: Optional[Iterable[str]]):
    if only is None:
        return EXAMPLES
    only = set(only)
    unknown = only - {name for name, _ in EXAMPLES} - {folder for _, folder in EXAMPLES}
    if unknown:
        from qirc.qir.diagnostics import UsageError
        raise UsageError(f"no example named {', '.join(sorted(unknown))}; examples: "
                         f"{', '.join(folder for _, folder in EXAMPLES)}")
    return tuple((name, folder) for name, folder in EXAMPLES if name in only or folder in only)


def make_examples(out_dir: Path = EXAMPLES_DIR, progress: bool = False, only: Optional[Iterable[str]] = None) \
        -> list[Path]:
    """Build every example (or those named in `only`) into `out_dir/<folder>/model.onnx`; returns the paths."""
    import os

    from qirc.zoo import MODEL_FILE, zoo_build

    written = []
    for name, folder in _selected(only):
        dest = Path(out_dir) / folder
        dest.mkdir(parents=True, exist_ok=True)
        # the example folders hold a README too, which `zoo build -o` rightly refuses to write next to: build in a
        # fresh folder beside it and move the model over the committed one (this tool owns those files)
        with tempfile.TemporaryDirectory(prefix=".qirc-example-", dir=dest) as tmp:
            built = zoo_build(name, Path(tmp) / "build", format="qcdq", progress=progress)
            os.replace(built, dest / MODEL_FILE)
        written.append(dest / MODEL_FILE)
    return written


def _attribute_value(attr):
    import onnx

    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return ("tensor", onnx.numpy_helper.to_array(value))
    return value


def _same_array(a, b, what: str) -> Optional[str]:
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{what}: {a.dtype}{list(a.shape)} in the committed file, {b.dtype}{list(b.shape)} rebuilt"
    if np.issubdtype(a.dtype, np.floating):
        if not np.allclose(b, a, rtol=RTOL, atol=0.0):
            worst = float(np.max(np.abs(b.astype(np.float64) - a) / np.maximum(np.abs(a.astype(np.float64)), 1e-300)))
            return f"{what}: values differ by up to a relative {worst:.3g} (allowed {RTOL:g})"
    elif not np.array_equal(a, b):
        return f"{what}: integer values differ"
    return None


def compare_models(committed: Path, rebuilt: Path) -> Optional[str]:
    """None when `rebuilt` means what `committed` means (same graph; float tensors within relative `RTOL`),
    else the first difference, as a phrase."""
    import onnx
    from onnx import numpy_helper

    a, b = onnx.load(str(committed)), onnx.load(str(rebuilt))
    ga, gb = a.graph, b.graph
    for kind in ("input", "output"):
        va, vb = [v.SerializeToString() for v in getattr(ga, kind)], [v.SerializeToString() for v in getattr(gb, kind)]
        if va != vb:
            return f"the graph {kind}s differ"
    if [o.SerializeToString() for o in a.opset_import] != [o.SerializeToString() for o in b.opset_import]:
        return "the opset imports differ"
    if len(ga.node) != len(gb.node):
        return f"{len(ga.node)} nodes in the committed file, {len(gb.node)} rebuilt"
    for na, nb in zip(ga.node, gb.node):
        if (na.op_type, na.domain, na.name, list(na.input), list(na.output)) != \
                (nb.op_type, nb.domain, nb.name, list(nb.input), list(nb.output)):
            return f"node {na.name!r} ({na.op_type}) differs from the rebuilt node {nb.name!r} ({nb.op_type})"
        attrs_a = {x.name: _attribute_value(x) for x in na.attribute}
        attrs_b = {x.name: _attribute_value(x) for x in nb.attribute}
        if sorted(attrs_a) != sorted(attrs_b):
            return f"node {na.name!r}: attributes {sorted(attrs_a)} committed, {sorted(attrs_b)} rebuilt"
        for key, value in attrs_a.items():
            other = attrs_b[key]
            if isinstance(value, tuple) and value and value[0] == "tensor":
                problem = _same_array(value[1], other[1], f"node {na.name!r} attribute {key}") \
                    if isinstance(other, tuple) else f"node {na.name!r} attribute {key} differs"
            else:
                problem = None if value == other else f"node {na.name!r} attribute {key}: {value!r} != {other!r}"
            if problem:
                return problem
    inits_a = {t.name: t for t in ga.initializer}
    inits_b = {t.name: t for t in gb.initializer}
    if list(inits_a) != list(inits_b):
        return "the initializers' names differ"
    for name, tensor in inits_a.items():
        problem = _same_array(numpy_helper.to_array(tensor), numpy_helper.to_array(inits_b[name]),
                              f"initializer {name!r}")
        if problem:
            return problem
    return None


def check_examples(examples_dir: Path = EXAMPLES_DIR, progress: bool = False,
                   only: Optional[Iterable[str]] = None) -> list[str]:
    """One line per example file under `examples_dir` that is missing or whose rebuild differs in meaning (see
    `compare_models`); empty when all match."""
    from qirc.zoo import MODEL_FILE

    problems = []
    with tempfile.TemporaryDirectory(prefix="qirc-examples-") as tmp:
        for fresh in make_examples(Path(tmp), progress=progress, only=only):
            committed = Path(examples_dir) / fresh.parent.name / MODEL_FILE
            if not committed.exists():
                problems.append(f"{committed}: missing")
                continue
            difference = compare_models(committed, fresh)
            if difference:
                problems.append(f"{committed}: a rebuild from the zoo differs: {difference}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qirc.zoo.make_examples", description=__doc__.splitlines()[0])
    parser.add_argument("--out", metavar="DIR", type=Path, default=EXAMPLES_DIR,
                        help="examples folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="rebuild in a temporary folder and compare by meaning; exit 1 on a difference")
    parser.add_argument("--only", metavar="NAME", nargs="+", help="just these examples (zoo name or folder)")
    args = parser.parse_args(argv)
    from qirc.qir.diagnostics import QircError, UsageError

    progress = sys.stderr.isatty()
    try:
        if args.check:
            problems = check_examples(args.out, progress=progress, only=args.only)
            for line in problems:
                print(line, file=sys.stderr)
            return 1 if problems else 0
        for path in make_examples(args.out, progress=progress, only=args.only):
            print(path)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except QircError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
