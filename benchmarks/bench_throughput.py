"""Integer interpreter vs onnxruntime: throughput on a batch of inputs of the lowered ResNet-8.

    python benchmarks/bench_throughput.py [--batch 256] [--threads 1] [--repeat 3] [--model PATH]

Throughput is compared by CPU time (one thread: the work done; steadier than wall time on a shared machine).
The integer side is qirc's interpreter running the compiled integer IR (`lower-to-int` + `deeploy-legalize`, the
graph that `qirc` emits) rebatched to N by `qirc.qir.batch.rebatch`, in ONE call on the whole batch.
The float side is onnxruntime running the model file itself (the float fake-quant model), graph optimisations
DISABLED (DESIGN.md's reference), one session, sequential execution, fed the same N samples in a loop of batch-1
runs (the file's input shape is fixed at batch 1).  Both use the same thread count: `--threads` sets
`intra_op_num_threads` and OMP/OpenBLAS/MKL thread variables alike, and the measurement runs in a child process
started with those variables so that numpy's BLAS reads them.  onnxruntime also runs the whole batch at once on a
copy of the model whose batch axis is made symbolic; the faster of its two modes is the reference of the ratio.
Repeats alternate the runners; each reports its least disturbed repeat.  The integer samples are the float samples
quantized by the model's input quantizer (untimed).  Exactness: the batched outputs must equal per-sample
interpreter runs of the batch-1 graph.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from common import example_model, run_child, thread_env

DEFAULT_MODEL = example_model("ResNet8")


def measure(model_path: str, batch: int, threads: int, repeat: int, seed: int = 0) -> dict:
    """Run in a process whose BLAS thread variables equal `threads`; returns seconds and checks as a dict."""
    import numpy as np
    import onnxruntime as ort

    from bench_compile import compile_once
    from qirc.backends.deeploy.vectors import quantize_samples
    from qirc.frontends.onnx import import_onnx
    from qirc.qir.batch import rebatch
    from qirc.qir import interpreter

    quant = import_onnx(model_path)
    module = compile_once(model_path)["module"]
    batched = rebatch(module, batch)
    (in_name,) = quant.input_names()
    (int_in_name,) = module.input_names()
    floats = interpreter.random_inputs(rebatch(quant, batch), seed)[in_name]
    (ints,) = quantize_samples(rebatch(quant, batch), batched, [{int_in_name: floats}])
    int_x = ints[int_in_name]

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # the corpus lists initializers as inputs; ORT warns once per tensor
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    ort_in = session.get_inputs()[0].name
    batched_session = _batched_session(model_path, options)

    runners = {
        "int": lambda: next(iter(interpreter.run(batched, {int_in_name: int_x}).values())),
        "ort_loop": lambda: np.concatenate([session.run(None, {ort_in: floats[i:i + 1]})[0] for i in range(batch)]),
    }
    if batched_session is not None:
        runners["ort_batched"] = lambda: batched_session.run(None, {ort_in: floats})[0]
    outputs, wall, cpu = {}, {}, {}
    for name, fn in runners.items():  # warm-up: allocator arenas, first-call paths
        fn()
    for _ in range(max(1, repeat)):
        for name, fn in runners.items():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            outputs[name] = fn()
            w, c = time.perf_counter() - wall0, time.process_time() - cpu0
            wall[name], cpu[name] = min(wall.get(name, w), w), min(cpu.get(name, c), c)

    per_sample = np.concatenate([next(iter(interpreter.run(module, {int_in_name: int_x[i:i + 1]}).values()))
                                 for i in range(batch)])
    # the faster onnxruntime mode is the reference: the stricter comparison.  CPU time, not wall: with a fixed
    # thread count it is the work done, and it does not wander with the other jobs of a shared machine
    reference = min((k for k in cpu if k.startswith("ort")), key=cpu.get)
    int_y, ort_y = outputs["int"], outputs["ort_loop"]
    return {"batch": batch, "threads": threads, "wall_s": wall, "cpu_s": cpu, "reference": reference,
            "ratio": cpu[reference] / cpu["int"], "bit_exact": bool(np.array_equal(int_y, per_sample)),
            "ort_batched_equals_loop": (None if "ort_batched" not in outputs
                                        else bool(np.array_equal(outputs["ort_batched"], ort_y))),
            "argmax_agreement": float(np.mean(np.argmax(int_y.reshape(batch, -1), 1)
                                              == np.argmax(ort_y.reshape(batch, -1), 1)))}


def _batched_session(model_path, options):
    """A session on the model with a symbolic batch axis on its graph input and outputs (intermediate shapes
    dropped), or None when onnxruntime rejects that (a model whose graph hard-codes batch 1)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    for value in [model.graph.input[0], *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims:
            return None
        dims[0].dim_param = "N"
    del model.graph.value_info[:]
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # any load failure only means there is no batched comparison
        return None


def measure_in_child(model_path=DEFAULT_MODEL, batch: int = 256, threads: int = 1, repeat: int = 3) -> dict:
    return run_child(f"import json; from bench_throughput import measure; "
                     f"print(json.dumps(measure({str(model_path)!r}, {int(batch)}, {int(threads)}, {int(repeat)})))",
                     thread_env(threads), timeout=3600)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    r = measure_in_child(args.model, args.batch, args.threads, args.repeat)
    print(json.dumps(r, indent=2))
    return 0 if r["bit_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
