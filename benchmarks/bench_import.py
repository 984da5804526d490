"""Time the ONNX import of the corpus models in-process and compare with the targets.

    python benchmarks/bench_import.py [--repeat N] [--profile MODEL]

Targets: ResNet8 split.onnx < 0.15 s, MobileNetV2-VWW split.onnx < 0.8 s (best of N runs, after one warm-up run so
that module imports are not counted).  Exits 1 when a target is missed.  `--profile ResNet8` prints the top of a
cProfile of one import instead.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

from common import best_of, corpus_model, print_rows

TARGETS = {("ResNet8", "split.onnx"): 0.15, ("MobileNetV2-VWW", "split.onnx"): 0.8}
EXTRA = [("ResNet8", "dequant_moved.onnx"), ("MobileNetV2-VWW", "dequant_moved.onnx"), ("DSCNN-S", "split.onnx"),
         ("Autoencoder", "split.onnx")]


def best_time(path: Path, repeat: int) -> tuple:
    from qirc.frontends.onnx import import_onnx
    # the warm-up run imports numpy/onnx/networkx code paths
    timing = best_of(lambda: import_onnx(path), repeat, warmup=1)
    return timing.wall, len(timing.result)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", metavar="MODEL", help="profile one import of MODEL/split.onnx")
    args = parser.parse_args(argv)
    if args.profile:
        from qirc.frontends.onnx import import_onnx
        path = corpus_model(args.profile)
        import_onnx(path)
        profiler = cProfile.Profile()
        profiler.runcall(import_onnx, path)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        return 0
    rows, failed = [], False
    for key in list(TARGETS) + EXTRA:
        path = corpus_model(*key)
        if not path.exists():
            continue
        seconds, n_ops = best_time(path, args.repeat)
        target = TARGETS.get(key)
        status = "" if target is None else ("ok" if seconds < target else "SLOW")
        failed |= status == "SLOW"
        rows.append((f"{key[0]}/{key[1]}", n_ops, seconds, target, status))
    print_rows(["model", "ops", "import s", "target s", "status"], rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
