"""qirc's benchmark suite: measures compile speed, memory, start-up and simulator throughput against the targets.

    python benchmarks/run.py                 # everything (about a minute on 2 idle cores)
    python benchmarks/run.py --quick         # a faster subset: fewer repeats, smaller chains and batch
    python benchmarks/run.py --no-targets    # print the tables, exit 0 whatever the numbers

Sections (`--sections`, default all):
  compile      per corpus model (../shared/corpus/deepquant/*/split.onnx): import, lower (lower-to-int +
               deeploy-legalize), emit and simulate (one sample) seconds, best of --repeat runs in this process;
               peak resident memory (VmHWM, else ru_maxrss) of one compile in a fresh child process.
               Targets: MobileNetV2-VWW compile < 1 s, peak memory < 250 MB.
  cli          `qirc --help` wall time in a subprocess (median of 5; target < 0.3 s) and a `qirc MODEL --target
               deeploy-siracusa` run in a subprocess after which 'torch' must not be in sys.modules.
  scaling      synthetic decomposed-QCDQ chains of conv/gemm layers of 5,000 and 50,000 ONNX nodes, compiled
               --repeat times each in a fresh process (median CPU time kept); target: per-node CPU time of the
               largest within 1.5x of the smallest.
  interpreter  the integer interpreter on the compiled ResNet-8 over a batch of 256 inputs in one call vs
               onnxruntime (optimisations disabled, one session) on the float split.onnx, as a loop of batch-1
               runs and as one batched run (the faster is the reference), same thread count (--threads);
               targets: throughput ratio >= 0.25 and batched outputs bit-exact with per-sample runs.
Exit code 1 when a target is missed (0 with --no-targets), 2 when the corpus is missing.  See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (CORPUS, CORPUS_MODELS, REPO, THREAD_VARIABLES, Check, Table, corpus_model,  # noqa: E402
                    run_child, thread_env)

SECTIONS = ("compile", "cli", "scaling", "interpreter")
TARGET_MODEL = "MobileNetV2-VWW"
COMPILE_LIMIT_S = 1.0
MEMORY_LIMIT_MB = 250.0
HELP_LIMIT_S = 0.3
SCALING_LIMIT = 1.5
THROUGHPUT_MIN_RATIO = 0.25


def qirc_command() -> List[str]:
    """The installed `qirc` console script next to this Python (not a version-manager shim in front of it, which
    adds its own start-up time), else `qirc` on PATH, else `python -m qirc`."""
    beside = Path(sys.executable).parent / "qirc"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("qirc")
    return [found] if found else [sys.executable, "-m", "qirc"]


# ----- sections ----------------------------------------------------------------------------------------------------
def compile_section(models: List[str], repeat: int, checks: List[Check]) -> Table:
    from bench_compile import compile_memory, stage_times

    table = Table("compile: seconds per stage (best of %d) and peak RSS of a compile in a fresh process" % repeat,
                  ["model", "ops", "import s", "lower s", "emit s", "compile s", "CPU s", "simulate s", "peak MB",
                   "imports MB", "target", "status"])
    for name in models:
        path = corpus_model(name)
        if not path.exists():
            table.add(name, "-", "-", "-", "-", "-", "-", "-", "-", "-", "", "missing")
            continue
        times = stage_times(path, repeat)
        memory = compile_memory(path)
        target, status = "", ""
        if name == TARGET_MODEL:
            speed = Check(f"{name} compile", times["compile"], COMPILE_LIMIT_S, " s")
            peak = Check(f"{name} compile peak memory", memory["peak_mb"], MEMORY_LIMIT_MB, " MB")
            checks += [speed, peak]
            target = f"{speed.target}, {peak.target}"
            status = "PASS" if speed.passed and peak.passed else "FAIL"
        table.add(name, times["ops"], times["import"], times["lower"], times["emit"], times["compile"],
                  times["compile_cpu"], times["simulate"], f"{memory['peak_mb']:.1f}",
                  f"{memory['after_imports_mb']:.1f}", target, status)
    return table


def cli_section(model: Path, checks: List[Check]) -> Table:
    command = qirc_command()
    env = thread_env(1)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        proc = subprocess.run(command + ["--help"], capture_output=True, env=env, cwd=str(REPO))
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} --help exited with {proc.returncode}")
    times.sort()
    help_check = Check("qirc --help wall time (median of 5)", times[2], HELP_LIMIT_S, " s")
    code = ("import json, os, sys, tempfile, time\n"
            "start = time.perf_counter()\n"
            "from qirc.cli import main\n"
            "with tempfile.TemporaryDirectory() as d:\n"
            f"    code = main([{str(model)!r}, '--target', 'deeploy-siracusa', '-o', os.path.join(d, 'out')])\n"
            "print(json.dumps({'exit': code, 'torch': 'torch' in sys.modules,\n"
            "                  'seconds': time.perf_counter() - start}))\n")
    result = run_child(code, env)
    if result["exit"] != 0:
        raise RuntimeError(f"qirc {model} exited with {result['exit']}")
    torch_check = Check.expect(f"'torch' in sys.modules after qirc {model.name}", result["torch"], False)
    checks += [help_check, torch_check]
    table = Table(f"cli: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(command))}",
                  ["measure", "value", "target", "status"])
    table.add("qirc --help, median of 5 (s)", help_check.value, help_check.target, help_check.status)
    shown = model.relative_to(REPO) if model.is_relative_to(REPO) else model
    table.add(f"'torch' in sys.modules after qirc {shown}", torch_check.measured, torch_check.target,
              torch_check.status)
    table.add(f"qirc {shown} end to end, with test vectors (s)", result["seconds"], "-", "")
    return table


def scaling_section(sizes: List[int], repeat: int, checks: List[Check]) -> Table:
    from bench_compile import chain_compile

    table = Table(f"scaling: synthetic conv/gemm chains, a fresh process each, median CPU of {repeat} compile(s)",
                  ["ONNX nodes", "qir ops", "import CPU s", "lower CPU s", "emit CPU s", "wall s", "CPU s",
                   "CPU us/node", "peak MB"])
    per_node = []
    for n in sizes:
        r = chain_compile(n, repeat)
        per_node.append((r["nodes"], r["cpu"] / r["nodes"], r["wall"] / r["nodes"]))
        table.add(r["nodes"], r["ops"], r["import_cpu"], r["lower_cpu"], r["emit_cpu"], r["wall"], r["cpu"],
                  f"{1e6 * r['cpu'] / r['nodes']:.1f}", f"{r['peak_mb']:.1f}")
    if len(per_node) > 1:
        (n0, cpu0, wall0), (n1, cpu1, wall1) = per_node[0], per_node[-1]
        check = Check(f"per-node compile CPU time, {n1} vs {n0} nodes", cpu1 / cpu0, SCALING_LIMIT, "x")
        checks.append(check)
        table.add(f"ratio {n1}/{n0}", "", "", "", "", f"{wall1 / wall0:.2f}x", f"{cpu1 / cpu0:.2f}x",
                  f"{check.target}", check.status)
    return table


def interpreter_section(batch: int, threads: int, repeat: int, checks: List[Check]) -> Table:
    from bench_throughput import measure_in_child

    r = measure_in_child(corpus_model("ResNet8"), batch, threads, repeat)
    ratio = Check(f"interpreter / onnxruntime throughput, ResNet8 batch {batch}", r["ratio"], THROUGHPUT_MIN_RATIO,
                  "x", at_least=True)
    exact = Check.expect("batched interpreter outputs equal per-sample runs", r["bit_exact"], True)
    checks += [ratio, exact]
    table = Table(f"interpreter: ResNet8 split.onnx, batch {batch}, {threads} thread(s) (best of {repeat})",
                  ["runner", "seconds", "CPU s", "samples/s", "note"])
    wall, cpu = r["wall_s"], r["cpu_s"]
    table.add("qirc interpreter, int IR, one batched call", wall["int"], cpu["int"], batch / wall["int"],
              f"bit-exact with per-sample runs: {'yes' if r['bit_exact'] else 'NO'}")
    notes = {"ort_loop": "onnxruntime, float split.onnx, loop of batch-1 runs",
             "ort_batched": "onnxruntime, float split.onnx, one batched run"}
    for name, label in notes.items():
        if name in wall:
            note = "reference" if name == r["reference"] else ""
            if name == "ort_batched":
                same = "equal" if r["ort_batched_equals_loop"] else "NOT equal"
                note = ", ".join(x for x in (note, f"outputs {same} to the loop's") if x)
            table.add(label, wall[name], cpu[name], batch / wall[name], note)
    table.add("throughput ratio interpreter / reference", f"{r['ratio']:.2f}x", "", "",
              f"target {ratio.target}: {ratio.status}; argmax agreement with ORT {100 * r['argmax_agreement']:.1f}%")
    return table


def summary(checks: List[Check]) -> Table:
    table = Table("targets", ["target", "measured", "limit", "status"])
    for c in checks:
        table.add(c.name, c.measured, c.target, c.status)
    return table


# ----- main --------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="2 repeats, chains of 1,000/5,000 nodes, a batch of 32 (targets still apply)")
    parser.add_argument("--no-targets", action="store_true", help="report the targets but always exit 0")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--models", nargs="+", choices=CORPUS_MODELS, metavar="MODEL",
                        help=f"corpus models (default: all of {', '.join(CORPUS_MODELS)})")
    parser.add_argument("--repeat", type=int,
                        help="timed runs per measurement (default 3, quick 2; chains: 3 unless given)")
    parser.add_argument("--chain-ops", type=int, nargs="+", metavar="N",
                        help="ONNX node counts of the synthetic chains (default 5000 50000, quick 1000 5000)")
    parser.add_argument("--batch", type=int, help="interpreter batch (default 256, quick 32)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP/onnxruntime threads (default 1)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if not CORPUS.exists():
        print(f"run.py: corpus not found at {CORPUS}", file=sys.stderr)
        return 2
    # before anything imports numpy: the in-process timings use the same thread count as the children
    for name in THREAD_VARIABLES:
        os.environ[name] = str(args.threads)
    repeat = args.repeat or (2 if args.quick else 3)
    models = args.models or CORPUS_MODELS
    sizes = args.chain_ops or ([1000, 5000] if args.quick else [5000, 50000])
    batch = args.batch or (32 if args.quick else 256)

    example = REPO / "examples" / "resnet8" / "model.onnx"
    runs = {"compile": lambda: compile_section(models, repeat, checks),
            "cli": lambda: cli_section(example if example.exists() else corpus_model(models[0]), checks),
            # small chains are cheap and their per-node time is the noisiest: at least 3 compiles each
            "scaling": lambda: scaling_section(sizes, args.repeat or 3, checks),
            "interpreter": lambda: interpreter_section(batch, args.threads, repeat, checks)}
    checks: List[Check] = []
    start = time.perf_counter()
    for section in SECTIONS:
        if section not in sections:
            continue
        try:
            runs[section]().print()
        except Exception as e:  # a broken section is a missed target, and the other sections still run
            print(f"{section}: FAILED to run: {type(e).__name__}: {e}\n", flush=True)
            checks.append(Check.expect(f"{section} section runs", False, True))
    summary(checks).print()
    failed = [c for c in checks if not c.passed]
    print(f"{len(checks) - len(failed)} of {len(checks)} targets met in {time.perf_counter() - start:.0f} s"
          + ("" if not failed else f"; missed: {', '.join(c.name for c in failed)}")
          + (" (--no-targets: exit 0)" if failed and args.no_targets else ""))
    return 1 if failed and not args.no_targets else 0


if __name__ == "__main__":
    sys.exit(main())
