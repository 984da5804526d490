"""Accuracy of the integer graphs on real models: the shipped DeepQuant exporter output (tests/data/deepquant) and
the committed zoo examples (see tests/real_models.py).

For every model file (DeepQuant's split.onnx and dequant_moved.onnx, the examples' model.onnx): import, lower-to-int, check integer-only; run seeded
random inputs (uniform in [-1.1, 1.1]) through onnxruntime on the model file (graph optimisations DISABLED: the
reference of DESIGN.md section 3) and through the interpreter on the integer graph; require argmax agreement >= 99%,
final outputs within 4 output steps, and every requant_shift within 1 output step of the fake-quant requantizer on
its actual integer input.  The adversarial test feeds inputs that drive the first layer's accumulators to their
extremes and checks that nothing overflows and that every accumulator stays inside the range analysis' bounds.
`pytest -s` prints a per-model table.
"""
import numpy as np
import pytest

from real_models import deepquant_params, example_params

SAMPLES = 200
# onnxruntime with optimisations off takes ~0.13 s per sample on MobileNetV2
FEWER_SAMPLES = {"MobileNetV2-VWW": 48, "mobilenetv2-vww": 48, "ResNet8": 64}
CASES = deepquant_params() + example_params(slow=("mobilenetv2-vww", "resnet8"))
ROWS = []

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _lowered(case):
    from qirc.frontends.onnx import import_onnx
    from qirc.lowering import lower_module

    module = import_onnx(str(case))
    quantizer = module.inputs[0].results[0].users[0]
    input_quant = (quantizer.results[0].type.quant, quantizer.attr("rounding"))
    lower_module(module)
    return module, input_quant


def _quantize_input(x, quant):
    """The input quantizer in float32, as onnxruntime computes the model's own Div/Add/Round/Clip."""
    qt, rounding = quant
    s, z = np.float32(qt.scale), np.float32(qt.zero_point)
    q = np.rint(x / s + z) if rounding == "add_round" else np.rint(x / s) + z
    return np.clip(q, qt.storage_min, qt.storage_max).astype(np.int64)


def _reference(case, inputs):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(case), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[None]})[0] for x in inputs])


@pytest.mark.parametrize("case", CASES)
def test_corpus_model_accuracy(case):
    from qirc.lowering.testing import requant_step_errors, requant_unexplained
    from qirc.qir.batch import rebatch
    from qirc.qir import interpreter

    module, input_quant = _lowered(case)
    assert all(op.dialect in ("qir", "int") for op in module.ops()), "not integer-only"
    n = FEWER_SAMPLES.get(case.parent.name, SAMPLES)
    shape = module.inputs[0].results[0].type.shape
    rng = np.random.default_rng(1234)
    x = rng.uniform(-1.1, 1.1, size=(n,) + tuple(shape[1:])).astype(np.float32)
    reference = _reference(case, x)

    batched = rebatch(module, n)
    values = interpreter.run_values(batched, {module.input_names()[0]: _quantize_input(x, input_quant)})
    out_value = batched.outputs[0].operands[0]
    out_type = out_value.type.quant
    got = (values[out_value].astype(np.float64) - out_type.zero_point) * out_type.scale
    steps = np.abs(got - reference.astype(np.float64).reshape(got.shape)) / out_type.scale
    agree = float(np.mean(np.argmax(got.reshape(n, -1), 1) == np.argmax(reference.reshape(n, -1), 1)))
    requant_errors = requant_step_errors(batched, values)
    worst_requant = max(requant_errors.values())
    unexplained = {loc: k for loc, k in requant_unexplained(batched, values).items() if k}
    row = (f"{case.parent.name}/{case.name}", n, agree, float(steps.max()), float(np.mean(steps > 0.5)),
           len(requant_errors), worst_requant)
    ROWS.append(row)
    print(f"\n{row[0]:40s} samples {n:4d}  argmax {agree:7.2%}  max |diff| {row[3]:.2f} steps "
          f"({row[4]:.2%} of outputs differ)  requants {row[5]}  worst requant {worst_requant:.0f} step")
    assert agree >= 0.99
    assert steps.max() <= 4 + 1e-3
    assert worst_requant <= 1
    assert not unexplained, f"requant differences not at rounding ties: {unexplained}"


# the adversarial patterns tile the first kernel over the image, which reaches the analysed extremes exactly when
# the first layer's windows align with the tiling (true for the DeepQuant files, not for DS-CNN S' padded 10x4 stem)
@pytest.mark.parametrize("case", deepquant_params())
def test_corpus_adversarial_ranges_never_overflow(case):
    from qirc.lowering.ranges import RangeAnalysis
    from qirc.qir.batch import rebatch
    from qirc.qir import interpreter

    module, _ = _lowered(case)
    x_value = module.inputs[0].results[0]
    qt = x_value.type.quant
    first = next(op for op in module.ops() if op.name in ("int.conv", "int.gemm") and op.operands[0] is x_value)
    w = np.asarray(first.operands[1].owner.attrs["value"]).astype(np.int64)
    shape = x_value.type.shape
    patterns = [np.full(shape[1:], qt.storage_max), np.full(shape[1:], qt.storage_min)]
    for c in range(w.shape[0]):
        for sign in (1, -1):
            if first.name == "int.gemm":
                row = w[c] if first.attr("transB") else w[:, c]
                pattern = np.where(sign * row > 0, qt.storage_max, qt.storage_min)
            else:
                # the kernel's sign pattern tiled over the image: every window aligned with the kernel sees it
                kh, kw = w.shape[2:]
                reps = (1, -(-shape[2] // kh), -(-shape[3] // kw))
                tile = np.tile(np.where(sign * w[c] > 0, qt.storage_max, qt.storage_min), reps)
                pattern = tile[:, :shape[2], :shape[3]]
                if pattern.shape[0] != shape[1]:  # depthwise first layer
                    pattern = np.broadcast_to(pattern[:1], shape[1:])
            patterns.append(pattern)
    stack = np.stack(patterns).astype(np.int64)
    batched = rebatch(module, len(stack))
    values = interpreter.run_values(batched, {module.input_names()[0]: stack}, check_overflow=True)
    ranges = RangeAnalysis()
    checked = 0
    for op_b, op in zip(batched.ops(), module.ops()):
        if op.name in ("int.conv", "int.gemm", "int.matmul", "int.add", "int.reduce_sum", "int.sumpool"):
            lo, hi = ranges.range_of(op.results[0])
            acc = values[op_b.results[0]]
            assert np.all(acc >= lo) and np.all(acc <= hi), f"{op.loc}: accumulator outside its analysed range"
            checked += 1
    first_b = batched.ops()[module.ops().index(first)]
    lo, hi = ranges.range_of(first.results[0])
    acc = values[first_b.results[0]]
    # the inputs really are adversarial (they reach the analysed extremes) and the analysis is tight there
    assert acc.max() == hi.max() and acc.min() == lo.min()
    assert checked >= 2


def test_print_table():
    if not ROWS:
        pytest.skip("no corpus rows")
    print("\n\nmodel                                     samples  argmax   max steps  differ  requants  worst")
    for case, n, agree, max_steps, differ, count, worst in ROWS:
        print(f"{case:40s} {n:8d} {agree:7.2%} {max_steps:10.2f} {differ:7.2%} {count:9d} {worst:6.0f}")
