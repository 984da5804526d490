"""Benchmark of the lowering (qirc.lowering.lower-to-int).

    python benchmarks/bench_lowering.py

Measures, in-process and best of several runs:
- import + lower-to-int of the corpus' ResNet8 and MobileNetV2 split.onnx (budgets 0.15 s and 1 s);
- lower-to-int of a synthetic chain of 2,000 and of 20,000 quantized layers (input quantizer, then per layer a
  Gemm with int8 weights and an int32 bias, a ReLU and an output quantizer): the time per op must stay flat
  (20k/2k per-op ratio <= 1.5), i.e. no pass is quadratic.
Prints a table; exits 1 when a budget is missed.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from qirc.lowering import lower_module
from qirc.lowering.testing import QuantBuilder
from qirc.qir.types import u8

from common import best_of, corpus_model, print_rows

BUDGETS = {"ResNet8": 0.15, "MobileNetV2-VWW": 1.0}
MAX_RATIO = 1.5


def chain(layers: int, width: int = 4, seed: int = 0):
    """input -> layers x (Gemm int8 + int32 bias -> Relu -> quantizer u8/i8) -> output."""
    rng = np.random.default_rng(seed)
    b = QuantBuilder(f"chain{layers}")
    x = b.input("x", (1, width), 1 / 64)
    weights = rng.integers(-127, 128, (layers, width, width))
    biases = rng.integers(-200, 200, (layers, width))
    for i in range(layers):
        y = b.gemm(x, weights[i], 0.01, bias=biases[i])
        x = b.quant(b.op("onnx.Relu", [y]), 1 / 64, storage=u8) if i % 2 else b.quant(y, 1 / 32)
    b.output("y", x)
    return b.module


def main() -> int:
    rows, ok = [], True
    try:
        from qirc.frontends.onnx import import_onnx
    except ImportError:  # the frontend is optional for the synthetic part
        import_onnx = None
    for name, budget in BUDGETS.items():
        path = corpus_model(name)
        if import_onnx is None or not path.exists():
            rows.append((f"{name} import+lower", "-", "skipped", f"< {budget} s", "skip"))
            continue
        seconds = best_of(lambda: lower_module(import_onnx(str(path))), 5).wall
        passed = seconds < budget
        ok &= passed
        rows.append((f"{name} import+lower", "-", f"{seconds * 1000:.1f} ms", f"< {budget * 1000:.0f} ms",
                     "ok" if passed else "SLOW"))
    per_op = {}
    for layers in (2_000, 20_000):
        modules = [chain(layers) for _ in range(2)]
        n_ops = len(modules[0])
        times = []
        for m in modules:
            start = time.perf_counter()
            lower_module(m)
            times.append(time.perf_counter() - start)
        seconds = min(times)
        per_op[layers] = seconds / n_ops
        rows.append((f"chain of {layers} layers", str(n_ops), f"{seconds:.2f} s",
                     f"{per_op[layers] * 1e6:.1f} us/op", ""))
    ratio = per_op[20_000] / per_op[2_000]
    passed = ratio <= MAX_RATIO
    ok &= passed
    rows.append(("per-op time 20k / 2k", "-", f"{ratio:.2f}", f"<= {MAX_RATIO}", "ok" if passed else "QUADRATIC"))
    print_rows(("case", "ops", "time", "budget", ""), rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
