"""Time the textual IR: print and parse modules of 5,000 and 50,000 ops.

    python benchmarks/bench_text.py [--sizes 5000 50000] [--profile]

The modules are a realistic mix for the integer level: chains of int8 weight constants, int.conv, int.requant_shift
with per-channel mul/add, and every fourth block a residual int.add + requant.  Parsing must stay linear: the table
ends with the ratio of the per-op parse time at the largest size to that at the smallest (target: within 1.5x), and
parsing 50,000 ops should take well under 10 s.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.parser import parse_module
from qirc.qir.printer import print_module
from qirc.qir.types import UniformQuantType, i8, i32, tensor


def conv_requant_module(n_ops: int, channels: int = 8, hw: int = 16, seed: int = 0) -> Module:
    """A module of about `n_ops` ops: conv/requant chains with small constants and periodic residual adds."""
    rng = np.random.default_rng(seed)
    m = Module(f"bench{n_ops}")
    act = tensor((1, channels, hw, hw), UniformQuantType.per_tensor(i8, 0.0078125, 0))
    acc = tensor((1, channels, hw, hw), i32)
    w_type = tensor((channels, channels, 3, 3), UniformQuantType.per_axis(
        i8, 0, rng.uniform(0.001, 0.01, channels), storage_min=-127, storage_max=127))
    x = input_op(m, "input", act)
    block = 0
    skip = x
    while len(m) < n_ops - 1:
        w = const_op(m, rng.integers(-127, 128, (channels, channels, 3, 3), dtype=np.int8), w_type,
                     loc=f"/block{block}/conv/weight")
        y = m.create("int.conv", [x, w], [acc], {
            "dilations": [1, 1], "group": 1, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]},
            loc=f"/block{block}/conv/Conv").result
        x = m.create("int.requant_shift", [y], [act], {
            "mul": rng.integers(1, 1 << 15, (channels, 1, 1)), "add": rng.integers(-1 << 20, 1 << 20, (channels, 1, 1)),
            "div": 1 << 22, "n_levels": 256, "signed": True}, loc=f"/block{block}/relu/Relu").result
        if block % 4 == 3:
            s = m.create("int.add", [x, skip], [acc], loc=f"/block{block}/add/Add").result
            x = m.create("int.requant_shift", [s], [act], {
                "mul": np.array([3], dtype=np.int64), "add": np.array([0], dtype=np.int64), "div": 4,
                "n_levels": 256, "signed": True}, loc=f"/block{block}/add/requant").result
            skip = x
        block += 1
    output_op(m, "output", x)
    return m


def measure(n_ops: int, repeats: int = 2):
    """(ops, characters, print wall s, parse wall s, parse CPU s), best of `repeats` parses."""
    module = conv_requant_module(n_ops)
    t0 = time.perf_counter()
    text = print_module(module)
    t_print = time.perf_counter() - t0
    t_parse = cpu_parse = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        parsed = parse_module(text)
        t_parse = min(t_parse, time.perf_counter() - t0)
        cpu_parse = min(cpu_parse, time.process_time() - c0)
    if print_module(parsed) != text:
        raise SystemExit("print -> parse -> print is not a fixed point")
    return len(module), len(text), t_print, t_parse, cpu_parse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--repeats", type=int, default=2, help="parse each module this many times, keep the best")
    ap.add_argument("--profile", action="store_true", help="profile parsing of the largest size")
    args = ap.parse_args(argv)
    parse_module("qir.module @warmup {\n}\n")  # builds the LALR tables once, outside the timings

    if args.profile:
        import cProfile
        import pstats
        text = print_module(conv_requant_module(max(args.sizes)))
        cProfile.runctx("parse_module(text)", globals(), {"text": text}, "/tmp/bench_text.prof")
        pstats.Stats("/tmp/bench_text.prof").sort_stats("tottime").print_stats(25)
        return 0

    # Wall time is what a user waits; CPU time is steadier on a shared machine.
    rows = []
    print(f"{'ops':>8} {'MB':>7} {'print s':>9} {'parse s':>9} {'parse us/op':>12} {'parse CPU s':>12}")
    for n in args.sizes:
        ops, chars, t_print, t_parse, cpu_parse = measure(n, args.repeats)
        rows.append((ops, t_parse / ops, cpu_parse / ops))
        print(f"{ops:>8} {chars / 1e6:>7.2f} {t_print:>9.3f} {t_parse:>9.3f} {1e6 * t_parse / ops:>12.1f} "
              f"{cpu_parse:>12.3f}")
    if len(rows) > 1:
        ratio = rows[-1][1] / rows[0][1]
        cpu_ratio = rows[-1][2] / rows[0][2]
        print(f"per-op parse time ratio {rows[-1][0]} vs {rows[0][0]} ops: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU "
              f"({'linear' if min(ratio, cpu_ratio) <= 1.5 else 'NOT linear: target is within 1.5x'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
