"""Print the foreign-model matrix (tests/foreign_models.py): model x variant x target -> status, figures, error line.

    python tests/foreign_matrix.py                    # everything (slow: the large networks take minutes)
    python tests/foreign_matrix.py --quick            # the small networks and the Brevitas models only
    python tests/foreign_matrix.py -k resnet18 -k pc-u8s8 --targets generic
    python tests/foreign_matrix.py --errors           # also group the failing cells by cause
    python tests/foreign_matrix.py --known known.txt  # the failing cells as KNOWN_FAILURES entries

Exits 0 whatever the pass rate (it is a report, the tests assert).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import foreign_models as fm  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the small networks and the Brevitas models")
    parser.add_argument("-k", action="append", default=[], help="keep models whose key contains this (all must)")
    parser.add_argument("--targets", default=",".join(t[len("deeploy-"):] for t in fm.TARGETS))
    parser.add_argument("--samples", type=int, default=fm.SAMPLES)
    parser.add_argument("--errors", action="store_true", help="group the failing cells by cause at the end")
    parser.add_argument("--known", metavar="FILE", help="write the failing cells as tests/foreign_known_failures.py's "
                        "KNOWN_FAILURES entries (cell id: cause) to FILE")
    parser.add_argument("--workdir", help="build models here (kept) instead of a temporary folder")
    args = parser.parse_args(argv)

    targets = [t if t.startswith("deeploy-") else f"deeploy-{t}" for t in args.targets.split(",") if t]
    specs = [s for s in fm.all_specs() if (s.small or not args.quick) and all(k in s.key for k in args.k)]
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="qirc-foreign-"))
    cache = fm.ModelCache(root / "models", samples=args.samples)
    cells = []
    print(fm.TABLE_HEADER, flush=True)
    start = time.perf_counter()
    for spec in specs:
        for target in targets:
            cell = fm.evaluate(cache, spec, target, root / "out" / spec.network / spec.variant / target)
            cells.append(cell)
            print(cell.line(), flush=True)
    print(f"\n{fm.summarize(cells)} in {time.perf_counter() - start:.0f} s")
    if args.errors:
        groups = {}
        for c in cells:
            if not c.ok:
                groups.setdefault(fm.cause_of(c), []).append(c)
        for cause, group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            print(f"\n[{cause}] x{len(group)}: {group[0].text}")
            for c in group:
                print(f"    {c.spec.key}@{c.target[len('deeploy-'):]}" + (
                    "" if fm.cause_of(c) in [k for k, _, _ in fm.CAUSES] else f": {c.text}"))
    if args.known:
        with open(args.known, "w") as f:
            for c in sorted((c for c in cells if not c.ok), key=fm.cell_id):
                f.write(f"    {fm.cell_id(c)!r}: {fm.cause_of(c)!r},\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
