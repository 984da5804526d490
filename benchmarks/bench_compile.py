"""Compile-time benchmarks: the stages of a compile per corpus model, its peak memory, and linear scaling.

    python benchmarks/bench_compile.py [--models ResNet8 ...] [--chain-ops 5000 50000] [--repeat 3]

A compile here is what `qirc MODEL --target deeploy-siracusa` runs before it computes test vectors: the ONNX import,
the pass pipeline (`lower-to-int` + `deeploy-legalize`, verified between passes, built by `qirc.driver.build_passes`)
and the Deeploy ONNX emission.  "simulate" is one interpreter run of the emitted integer IR on one seeded sample.

Peak memory is the resident-set high-water mark (VmHWM of /proc/self/status; `ru_maxrss` where there is no /proc)
of a fresh child process that imports qirc and compiles the model once: it includes the Python interpreter and the
imported libraries (numpy, onnx, networkx), which are also printed on their own (`imports MB`).

Scaling: synthetic ONNX models in the decomposed-QCDQ form (the corpus' form), written in memory by qirc's ONNX
backend from a quant-level chain of conv layers then gemm layers (int8 weights, int32 biases, ReLU on every other layer), sized
to a number of ONNX nodes and written to a file by one child process; each file is compiled in a fresh child process
whose peak RSS is that of a qirc process compiling it (interpreter, imports, loaded model, compile).  The per-node CPU time of the largest
chain over that of the smallest must stay within 1.5x (no pass is quadratic).  Run `run.py` for the targets.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from common import CORPUS_MODELS, Table, best_of, corpus_model, run_child, thread_env

TARGET = "deeploy-siracusa"


def compile_once(model, target: str = TARGET) -> dict:
    """Import, lower and emit `model` (a path or ModelProto); seconds per stage, op counts, and the integer IR."""
    from qirc.backends.deeploy.emit import emit_onnx
    from qirc.backends.deeploy.targets import get_target
    from qirc.driver import build_passes
    from qirc.frontends.onnx import import_onnx
    from qirc.qir.passes import PassManager

    try:
        from qirc.cli import compiler_gc
    except ImportError:  # a qirc from before the collector settings (to benchmark an older tree)
        from contextlib import nullcontext as compiler_gc

    deeploy_target = get_target(target)
    with compiler_gc():  # the garbage collector's settings of a `qirc` process
        t0, c0 = time.perf_counter(), time.process_time()
        module = import_onnx(str(model) if isinstance(model, Path) else model)
        t1, c1 = time.perf_counter(), time.process_time()
        imported_ops = len(module)
        PassManager(build_passes(deeploy_target)).run(module)
        t2, c2 = time.perf_counter(), time.process_time()
        emitted = emit_onnx(module, deeploy_target)
        t3, c3 = time.perf_counter(), time.process_time()
    return {"import": t1 - t0, "lower": t2 - t1, "emit": t3 - t2, "compile": t3 - t0, "import_cpu": c1 - c0,
            "lower_cpu": c2 - c1, "emit_cpu": c3 - c2, "compile_cpu": c3 - c0, "ops": imported_ops,
            "int_ops": len(module), "nodes": len(emitted.graph.node), "module": module}


def stage_times(path: Path, repeat: int = 3) -> dict:
    """compile_once of the least disturbed of `repeat` runs (after a warm-up run), plus one simulation."""
    from qirc.qir import interpreter

    best = best_of(lambda: compile_once(path), repeat, warmup=1).result
    module = best.pop("module")
    inputs = interpreter.random_inputs(module, seed=0)
    best["simulate"] = best_of(lambda: interpreter.run(module, inputs), repeat, warmup=1).wall
    return best


def _rss_mb() -> float:
    """This process's peak resident set size in MB: VmHWM from /proc/self/status where there is one, else
    ru_maxrss.  Both are the kernel's RSS high-water mark, but Linux carries ru_maxrss across execve from the forking
    parent (a child of a 100 MB benchmark process would start at 100 MB); VmHWM belongs to the new address space."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux (bytes on macOS)


def compile_memory_child(path: str) -> None:
    """Child-process entry: compile `path` once; print rss after imports and the peak, in MB, as JSON."""
    import qirc.backends.deeploy.emit  # noqa: F401  (the imports count into "after imports", not the compile)
    import qirc.driver  # noqa: F401
    import qirc.frontends.onnx  # noqa: F401
    after_imports = _rss_mb()
    result = compile_once(Path(path))
    print(json.dumps({"after_imports_mb": after_imports, "peak_mb": _rss_mb(), "compile": result["compile"]}))


def compile_memory(path: Path) -> dict:
    """{"after_imports_mb", "peak_mb", "compile"} of one compile of `path` in a fresh process."""
    return run_child(f"from bench_compile import compile_memory_child; compile_memory_child({str(path)!r})",
                     thread_env(1))


# ----- synthetic chains ----------------------------------------------------------------------------------------
def quant_chain(layers: int, channels: int = 4, hw: int = 4, seed: int = 0):
    """Quant-level module: input -> layers/2 x (conv 3x3 + bias -> [Relu] -> quantizer) -> Flatten -> quantizer
    -> the other layers x (gemm + bias -> [Relu] -> quantizer) -> output, in the frontend's dcast/qcast form."""
    import numpy as np

    from qirc.lowering.testing import QuantBuilder
    from qirc.qir.types import u8

    rng = np.random.default_rng(seed)
    b = QuantBuilder(f"chain{layers}")
    x = b.input("x", (1, channels, hw, hw), 1 / 64)
    conv_layers = layers // 2
    for i in range(conv_layers):
        y = b.conv(x, rng.integers(-127, 128, (channels, channels, 3, 3)), 0.01,
                   bias=rng.integers(-200, 200, channels), pads=[1, 1, 1, 1])
        x = b.quant(b.op("onnx.Relu", [y]), 1 / 64, storage=u8) if i % 2 else b.quant(y, 1 / 32)
    x = b.quant(b.op("onnx.Flatten", [x], {"axis": 1}), 1 / 32)
    width = channels * hw * hw
    for i in range(layers - conv_layers):
        y = b.gemm(x, rng.integers(-127, 128, (width, width)), 0.01, bias=rng.integers(-200, 200, width))
        x = b.quant(b.op("onnx.Relu", [y]), 1 / 64, storage=u8) if i % 2 else b.quant(y, 1 / 32)
    b.output("y", x)
    return b.module


def chain_onnx(nodes: int):
    """A decomposed-QCDQ ONNX chain of about `nodes` ONNX nodes (ModelProto)."""
    from qirc.backends.onnx import write_onnx

    probe = len(write_onnx(quant_chain(20), "qcdq").graph.node)
    layers = max(2, round(20 * nodes / probe))
    return write_onnx(quant_chain(layers), "qcdq")


def chain_file(nodes: int, path: str) -> None:
    """Child-process entry: write a chain of about `nodes` ONNX nodes to `path`; print its node count as JSON."""
    from qirc._onnx import save
    model = chain_onnx(nodes)
    save(model, path)
    print(json.dumps({"nodes": len(model.graph.node)}))


def chain_child(path: str, repeat: int = 1) -> None:
    """Child-process entry: compile the chain file `path` `repeat` times (each from a collected heap) and print the
    run of median CPU time as JSON, with the process's peak RSS: what a qirc process needs for that compile (the
    Python interpreter, the imports, the loaded model and the compile; the generator ran in another process).

    The median, not the best: a 0.5 s compile finds a quiet moment on a shared machine far more often than a 6 s
    one, so best-of would bias the large/small ratio upwards."""
    import gc

    runs = []
    for _ in range(max(1, repeat)):
        result = compile_once(Path(path))
        result.pop("module")
        gc.collect()
        runs.append(result)
    median = sorted(runs, key=lambda r: r["compile_cpu"])[(len(runs) - 1) // 2]
    print(json.dumps({**median, "wall": median["compile"], "cpu": median["compile_cpu"], "peak_mb": _rss_mb()}))


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def write_chain(nodes: int, path: str) -> int:
    """Write a chain of about `nodes` ONNX nodes to `path` (in a child process); its exact node count."""
    return run_child(f"from bench_compile import chain_file; chain_file({int(nodes)}, {path!r})",
                     thread_env(1), timeout=3600)["nodes"]


def compile_chain(path: str, nodes: int, repeat: int = 1) -> dict:
    """chain_child's result for the chain file `path` (of `nodes` ONNX nodes), compiled in a fresh process."""
    result = run_child(f"from bench_compile import chain_child; chain_child({path!r}, {int(repeat)})",
                       thread_env(1), timeout=3600)
    return {**result, "nodes": nodes}


def chain_compile(nodes: int, repeat: int = 1) -> dict:
    """Write a chain of about `nodes` ONNX nodes to a file (in one child process), compile it in a fresh one."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qirc-chain-") as tmp:
        path = str(Path(tmp) / f"chain{int(nodes)}.onnx")
        return compile_chain(path, write_chain(nodes, path), repeat)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=CORPUS_MODELS)
    parser.add_argument("--chain-ops", type=int, nargs="*", default=[5000, 50000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    table = Table("compile stages (seconds, best of runs) and peak memory of a fresh compile process",
                  ["model", "ops", "import", "lower", "emit", "compile", "simulate", "peak MB", "imports MB"])
    for name in args.models:
        path = corpus_model(name)
        if not path.exists():
            continue
        times = stage_times(path, args.repeat)
        memory = compile_memory(path)
        table.add(name, times["ops"], times["import"], times["lower"], times["emit"], times["compile"],
                  times["simulate"], memory["peak_mb"], memory["after_imports_mb"])
    table.print()
    if args.chain_ops:
        chains = Table("synthetic chains, compiled in a fresh process each (median CPU of --repeat runs)",
                       ["ONNX nodes", "qir ops", "wall s", "CPU s", "CPU us/node", "peak MB"])
        for n in args.chain_ops:
            r = chain_compile(n, args.repeat)
            chains.add(r["nodes"], r["ops"], r["wall"], r["cpu"], 1e6 * r["cpu"] / r["nodes"], r["peak_mb"])
        chains.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
