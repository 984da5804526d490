"""Fuzzing the compiler with random quantized networks (tests/fuzz_models.py): chains and residual blocks of
Conv / Add / MaxPool / GlobalAveragePool / ReduceMean and a Gemm or MatMul head, with random scales and zero points,
per-tensor or per-channel weights, written as QDQ, decomposed QCDQ or QONNX.

Each network either compiles and meets the accuracy contract, or fails with a clean QircError (one line, naming a
node) -- never another exception:

* import -> lower-to-int (with and without signed normalisation): integer-only; every int.requant_shift within 1
  output step of the fake-quant requantizer on its actual integer input, and differing only where the real value lies
  within the multiplier's approximation error of a rounding tie; the final output within FINAL_STEPS (4) output
  steps of the quant-level model (the imported module run by the interpreter on the same inputs) times the gain
  of the layers that may amplify a requant's 1-step freedom (`layer_gain`), and its argmax the same on every
  sample whose reference top-1 leads the runner-up by more than twice that bound.
* the quant-level model itself: the interpreter on the imported module equals onnxruntime on the model file.
* every Deeploy target through `qirc.driver.compile_model`: the written network.onnx passes onnx.checker and its
  output, run by the integer simulator, meets the same final-output bound and argmax check against the quant-level
  model, as does the accuracy qirc.json reports; for deeploy-generic (no signed normalisation, exact residual adds)
  it equals the lower-to-int module's output.

The default run is short (QIRC_FUZZ_EXAMPLES=25 examples per test).  A longer campaign:

    QIRC_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz.py -q

(see docs/testing.md; in the target test each example is compiled for all three targets).  Hypothesis
prints a failing network as a `NetSpec(...)` that `fuzz_models.build_model` turns back into the ONNX model.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest

from qirc.qir.batch import rebatch

onnx = pytest.importorskip("onnx")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from fuzz_models import networks, build_model  # noqa: E402

from qirc.frontends.onnx import import_onnx  # noqa: E402
from qirc.lowering import lower_module  # noqa: E402
from qirc.lowering.testing import requant_step_errors, requant_unexplained  # noqa: E402
from qirc.qir import interpreter  # noqa: E402
from qirc.qir.diagnostics import QircError  # noqa: E402

SAMPLES = 24
#: how far (in output steps) the final output may be from the quant-level model: each requant may be 1 step off
#: near a rounding tie and later layers carry that on (the corpus contract of tests/test_accuracy_corpus.py)
FINAL_STEPS = 4
TARGETS = ("deeploy-generic", "deeploy-siracusa", "deeploy-cortexm")


def fuzz_examples() -> int:
    """Examples per fuzz test: $QIRC_FUZZ_EXAMPLES, else 25."""
    return int(os.environ.get("QIRC_FUZZ_EXAMPLES") or 25)


def _settings(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=False, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture
def examples() -> int:
    return fuzz_examples()


# ----- the contract ------------------------------------------------------------------------------------------------
_NODE = re.compile(r"node '[^']+'")


def assert_clean_error(err: QircError, net) -> None:
    """A user-facing failure: one line that names the node it is about."""
    text = str(err)
    assert "\n" not in text, f"multi-line error for {net}: {text!r}"
    assert _NODE.search(text), f"error names no node for {net}: {text!r}"


def quant_reference(quant_module, n: int, seed: int):
    """(float samples, the stored integers the model's input quantizer makes of them, the quant-level module's float
    outputs on them): `n` seeded samples run as one batch.  The integer module is fed those very stored integers,
    so it sees exactly the reference's quantized input."""
    rng = np.random.default_rng(seed)
    batched = rebatch(quant_module, n)
    (inp,) = batched.inputs
    samples = np.concatenate([interpreter.random_inputs(quant_module, int(rng.integers(2 ** 31)))["input"]
                              for _ in range(n)])
    values = interpreter.run_values(batched, {"input": samples})
    qcast = inp.results[0].users[0]
    assert qcast.name == "quant.qcast"
    out = batched.outputs[0].operands[0]
    return samples, values[qcast.results[0]], np.asarray(values[out], np.float64)


def dequantize(values, t) -> np.ndarray:
    q = t.quant
    return (np.asarray(values, np.float64) - q.zero_points_for(t.rank)) * q.scales_for(t.rank)


def layer_gain(module) -> float:
    """How much the integer graph may amplify a 1-step requant error on its way to the output: the product, over
    the linear layers (int.conv / int.gemm / int.matmul followed by int.requant_shift), of max(1, the largest L1
    norm of a row of weights times the requant multiplier), i.e. output steps per input step of each layer."""
    gain = 1.0
    for op in module.ops():
        if op.name not in ("int.conv", "int.gemm", "int.matmul") or op.operands[1].owner.name != "qir.const":
            continue
        value = op.results[0]
        # a zero-point or bias correction (int.add of a constant) may sit between the layer and its requant
        while len(value.users) == 1 and value.users[0].name == "int.add":
            value = value.users[0].results[0]
        requants = [u for u in value.users if u.name == "int.requant_shift"]
        if not requants:
            continue
        w = np.abs(np.asarray(op.operands[1].owner.attrs["value"], np.float64))
        rows = w.reshape(w.shape[0], -1) if op.name == "int.conv" or (op.name == "int.gemm" and op.attr("transB")) \
            else w.T
        multiplier = np.asarray(requants[0].attrs["mul"], np.float64).reshape(-1) / float(requants[0].attrs["div"])
        gain *= max(1.0, float(np.max(rows.sum(axis=1) * multiplier.max())))
    return gain


def assert_requant_parameters(module) -> None:
    """Every int.requant_shift has mul = round(M * div) with M = s_in / s_out and add = z_out * div - z_in * mul
    exactly (DESIGN.md section 3: round once; the kernel adds div/2 itself): the parameters themselves, where
    `requant_unexplained` checks the values they produce."""
    for op in module.walk("int.requant_shift"):
        x, y = op.operands[0].type, op.results[0].type
        if not (x.is_quant and y.is_quant):
            continue  # an exact integer shift (a QONNX Trunc) has no real multiplier
        rank = x.rank
        div = int(op.attr("div"))
        mul = np.asarray(op.attrs["mul"], np.int64)
        add = np.asarray(op.attrs["add"], np.int64)
        m = x.quant.scales_for(rank) / y.quant.scales_for(rank)
        z_in, z_out = x.quant.zero_points_for(rank), y.quant.zero_points_for(rank)
        m, z_in, z_out = (np.broadcast_to(a, np.broadcast_shapes(np.shape(m), np.shape(z_in), np.shape(z_out),
                                                                 mul.shape)) for a in (m, z_in, z_out))
        mul_b = np.broadcast_to(mul, m.shape)
        assert np.all(np.abs(mul_b - m * div) <= 0.5 + 1e-6 * m * div), \
            f"{op.loc}: mul {mul.reshape(-1)[:4]} is not round(M * div) for M {m.reshape(-1)[:4]}, div {div}"
        expected = z_out * div - z_in * mul_b
        assert np.array_equal(np.broadcast_to(add, m.shape), expected), \
            f"{op.loc}: add {add.reshape(-1)[:4]} is not z_out * div - z_in * mul = {expected.reshape(-1)[:4]}"


def _argmax_checked(reference: np.ndarray, got: np.ndarray, step: float, bound_steps: float) -> None:
    """Argmax agreement wherever it is decided: on every sample whose reference top-1 leads the runner-up by more
    than 2 * bound_steps output steps, the integer graph must pick the same class."""
    ref = reference.reshape(reference.shape[0], -1)
    out = got.reshape(got.shape[0], -1)
    if ref.shape[1] < 2:
        return
    top2 = np.sort(ref, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 2 * bound_steps * step + 1e-9
    agree = np.argmax(ref, 1) == np.argmax(out, 1)
    assert np.all(agree[decided]), (f"argmax differs on {int(np.sum(decided & ~agree))} of {int(decided.sum())} "
                                    f"decided samples")


def check_lowering(net, signed: bool) -> None:
    model = build_model(net)
    quant_module = import_onnx(model)
    module = quant_module.clone()
    try:
        # strict precision: the within-one-step contract below is what --strict guarantees (without it a requant
        # whose bound passes one step compiles with a warning; tests/test_requant_precision.py covers that)
        lower_module(module, signed=signed, strict=True)
    except QircError as e:
        assert_clean_error(e, net)
        return
    assert {op.dialect for op in module.ops()} <= {"qir", "int"}, "not integer-only"
    assert_requant_parameters(module)
    samples, stored_input, real_reference = quant_reference(quant_module, SAMPLES, net.seed)
    in_q = module.inputs[0].results[0].type.quant
    ref_q = quant_module.inputs[0].results[0].users[0].results[0].type.quant
    # signed normalisation may move u8 storage to i8 (zero point - 128): the same real values on the same grid
    assert in_q.scale == ref_q.scale
    stored_input = stored_input + (in_q.zero_point - ref_q.zero_point)
    batched = rebatch(module, SAMPLES)
    values = interpreter.run_values(batched, {"input": stored_input})
    worst = requant_step_errors(batched, values)
    assert max(worst.values(), default=0) <= 1, f"requant more than 1 step off: {worst}"
    unexplained = {loc: k for loc, k in requant_unexplained(batched, values).items() if k}
    assert not unexplained, f"requant differences away from rounding ties: {unexplained}"
    out = batched.outputs[0].operands[0]
    got = dequantize(values[out], out.type)
    step = float(np.max(out.type.quant.scales_for(out.type.rank)))
    final_steps = float(np.max(np.abs(got - real_reference))) / step
    bound = FINAL_STEPS * layer_gain(module)
    assert final_steps <= bound + 1e-3, \
        f"final output {final_steps:.3g} steps from the quant-level model (bound {bound:.3g})"
    _argmax_checked(real_reference, got, step, bound)


# ----- tests -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed-normalize"])
def test_random_networks_lower_to_int_within_contract(examples, signed):
    @_settings(examples)
    @given(networks())
    def run(net):
        check_lowering(net, signed)

    run()


def _output_step(quant_module):
    """The step of the model's (first) output when it is a dequantized per-tensor quantized value, else None."""
    producer = quant_module.outputs[0].operands[0].owner
    if producer.name != "quant.dcast" or producer.operands[0].type.quant.is_per_axis:
        return None
    return producer.operands[0].type.quant.scale


def test_random_networks_import_matches_onnxruntime(examples):
    """The quant-level reference itself: the interpreter on the imported module reproduces onnxruntime (graph
    optimisations disabled, DESIGN.md section 3) on the model file: bit for bit, but for a rare exact rounding tie
    that float summation order flips (numpy's and MLAS's matmuls add in different orders), never by more than one
    output step (the frontend's contract)."""
    ort = pytest.importorskip("onnxruntime")  # noqa: F841
    from onnx_builders import ort_session, qonnx_as_decomposed

    @_settings(examples)
    @given(networks())
    def run(net):
        model = build_model(net)
        quant_module = import_onnx(model)
        samples, _, reference = quant_reference(quant_module, 6, net.seed)
        # onnxruntime has no QONNX Quant: it runs the same model with each Quant spelled out as decomposed ops
        session = ort_session(qonnx_as_decomposed(model))
        expected = np.concatenate([session.run(None, {"input": samples[i:i + 1]})[0] for i in range(len(samples))])
        got = reference.astype(np.float32)
        step = _output_step(quant_module)
        if step is None:
            np.testing.assert_array_equal(got, expected)
            return
        diff = np.abs(got.astype(np.float64) - expected) / step
        assert diff.max() <= 1 + 1e-6, f"{diff.max():.3f} output steps from onnxruntime for {net}"
        flips = int(np.count_nonzero(diff > 1e-6))
        assert flips <= max(1, diff.size // 1000), f"{flips} of {diff.size} outputs differ from onnxruntime for {net}"

    run()


def test_random_networks_compile_for_every_target(examples, tmp_path_factory):
    from qirc.driver import compile_model
    from qirc.frontends.deeploy import import_deeploy_onnx

    root = tmp_path_factory.mktemp("fuzz")
    counter = iter(range(10 ** 9))

    @_settings(examples)
    @given(networks(max_blocks=3))
    def run(net):
        model = build_model(net)
        path = root / f"net{next(counter)}.onnx"
        onnx.save(model, str(path))
        quant_module = import_onnx(model)
        lowered = quant_module.clone()
        try:
            lower_module(lowered, strict=True)
        except QircError:
            lowered = None
        samples, _, real_reference = quant_reference(quant_module, 8, net.seed)
        for target in TARGETS:
            out_dir = root / f"{path.stem}-{target}"
            try:
                summary = compile_model(str(path), target, str(out_dir), accuracy_samples=2, strict=True)
            except QircError as e:
                assert_clean_error(e, net)
                continue
            emitted = onnx.load(str(out_dir / "network.onnx"))
            onnx.checker.check_model(emitted)
            device = import_deeploy_onnx(emitted)
            int_module = summary.module
            int_in = int_module.inputs[0].results[0].type
            stored = _quantize_like(quant_module, samples, int_in)
            got_rows = []
            for row in stored:
                outs = interpreter.run(device, [row[None]])
                got_rows.append(np.asarray(list(outs.values())[0]))
            got_stored = np.concatenate(got_rows)
            out_type = int_module.outputs[0].operands[0].type
            got = dequantize(got_stored.reshape((len(stored),) + tuple(out_type.shape[1:])), out_type)
            step = float(np.max(out_type.quant.scales_for(out_type.rank)))
            bound = FINAL_STEPS * layer_gain(int_module)
            final_steps = float(np.max(np.abs(got - real_reference))) / step
            assert final_steps <= bound + 1e-3, \
                f"{target}: final output {final_steps:.3g} steps from the quant-level model (bound {bound:.3g})"
            _argmax_checked(real_reference, got, step, bound)
            # qirc.json reports the accuracy of the same comparison (on its own samples)
            reported = json.loads((out_dir / "qirc.json").read_text())["accuracy"]["outputs"][0]
            assert reported["max_error_steps"] is not None and reported["max_error_steps"] <= bound + 1e-3
            if target == "deeploy-generic" and lowered is not None:
                lo_in = lowered.inputs[0].results[0].type
                lo_out = lowered.outputs[0].operands[0].type
                lo = np.concatenate([interpreter.run(lowered, {"input": r[None]})[lowered.outputs[0].attrs["name"]]
                                     for r in _quantize_like(quant_module, samples, lo_in)])
                np.testing.assert_array_equal(got, dequantize(lo, lo_out),
                                              err_msg="deeploy-generic differs from the lower-to-int module")
            shutil.rmtree(out_dir)

    run()


def _quantize_like(quant_module, samples: np.ndarray, int_type) -> np.ndarray:
    """The stored integers of `samples` (float, batch axis first) for an integer input of type `int_type`, quantized
    by the quant-level module's own input quantizer (its rounding), then moved to int_type's zero point."""
    batched = rebatch(quant_module, len(samples))
    qcast = batched.inputs[0].results[0].users[0]
    values = interpreter.run_values(batched, {"input": samples})
    stored = np.asarray(values[qcast.results[0]], np.int64)
    shift = int_type.quant.zero_point - qcast.results[0].type.quant.zero_point
    return stored + shift
