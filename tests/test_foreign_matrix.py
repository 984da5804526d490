"""The foreign-model matrix (issue 11): models made by other tools compile for every Deeploy target and match
onnxruntime on the source file, or are refused with a one-line error.

Models are built at test time by the real tools (tests/foreign_models.py): float networks defined in torch, exported
to ONNX and quantized by onnxruntime's `quantize_static` in every variant (per-tensor / per-channel, QUInt8 / QInt8
activations and weights, reduce_range, symmetric options, quant_pre_process, a dynamic batch, QOperator), and
Brevitas networks with quantizers outside the zoo's recipe.  Each model is built once per session.

A cell passes when the emitted graph is within max(4 output steps, onnxruntime's own optimised deviation) of
onnxruntime (optimisations off) on 32 samples, with the same argmax wherever the reference's lead exceeds that bound.
Cells that qirc cannot compile yet are listed in tests/foreign_known_failures.py with their cause (a `CAUSES` entry
of foreign_models.py): such a cell must fail with that cause (xfail); once it passes the test fails until its entry
is removed.  Every refusal must be a one-line QircError naming the model file.

The default run keeps a representative subset (`FAST`); the rest, every variant of every model, is marked slow
(`-m slow`: about 2-4 minutes on two cores).  `python tests/foreign_matrix.py` prints the whole table.
"""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import foreign_models as fm  # noqa: E402
from foreign_known_failures import KNOWN_FAILURES  # noqa: E402

pytestmark = pytest.mark.brevitas

#: Models of the default run (every target); the rest of the matrix is marked slow.
FAST = {"mlp/pt-u8s8", "cnn/pc-s8s8", "conv1d-gap/pt-s8s8", "concat/pc-u8s8", "cnn/qop-pt", "mlp/pc-dynbatch",
        "linear_nobias/brevitas-qdq", "int4_relu4/brevitas-qonnx"}


def _case(spec, target):
    marks = [] if spec.key in FAST else [pytest.mark.slow]
    return pytest.param(spec, target, marks=marks, id=f"{spec.key}@{target[len('deeploy-'):]}")


SPECS = fm.all_specs()
CASES = [_case(spec, target) for spec in SPECS for target in fm.TARGETS]


@pytest.fixture(scope="session")
def foreign_cache(tmp_path_factory):
    return fm.ModelCache(tmp_path_factory.mktemp("foreign-models"))


def test_the_matrix_covers_the_issues_models_and_variants():
    networks = {s.network for s in SPECS if not s.brevitas}
    assert networks == {"mlp", "cnn", "resnet18", "mobilenetv2-0.35", "mobilenetv3-small", "conv1d-gap",
                        "conv1d-flatten", "concat"}
    variants = [fm.VARIANTS[s.variant] for s in SPECS if not s.brevitas]
    assert {v.per_channel for v in variants} == {True, False}
    assert {v.activation for v in variants} == {"QInt8", "QUInt8"}
    assert {v.weight for v in variants} == {"QInt8", "QUInt8", "QInt4"}
    assert any(v.reduce_range for v in variants) and any(v.preprocess for v in variants)
    assert any(v.qoperator for v in variants) and any(v.dynamic_batch for v in variants)
    assert {k for v in variants for k, _ in v.extra} == {"ActivationSymmetric", "WeightSymmetric"}
    assert FAST <= {s.key for s in SPECS}
    cells = {f"{s.key}@{t[len('deeploy-'):]}" for s in SPECS for t in fm.TARGETS}
    assert set(KNOWN_FAILURES) <= cells, sorted(set(KNOWN_FAILURES) - cells)
    assert set(KNOWN_FAILURES.values()) <= {cause for cause, _, _ in fm.CAUSES}


@pytest.mark.parametrize("spec,target", CASES)
def test_foreign_model_compiles_and_matches_onnxruntime(foreign_cache, tmp_path, spec, target):
    cell = fm.evaluate(foreign_cache, spec, target, tmp_path / "out")
    print("\n" + cell.line())
    assert cell.status != "build", cell.text  # the tools themselves must make every model of the matrix
    assert cell.status != "crash", f"not a QircError: {cell.text}\n{cell.traceback}"
    if cell.status == "error":
        # a refusal is one line naming the model file
        assert "\n" not in cell.text and str(foreign_cache.get(spec).path) in cell.text, cell.text
    known = KNOWN_FAILURES.get(fm.cell_id(cell))
    if known is not None:
        assert not cell.ok, f"{fm.cell_id(cell)} passes now: remove it from tests/foreign_known_failures.py"
        assert fm.cause_of(cell) == known, f"{fm.cell_id(cell)}: expected cause '{known}', got: {cell.text}"
        pytest.xfail(f"known failure ({known}): {cell.text}")
    assert cell.ok, f"{spec.key} for {target}: {cell.text}"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["network.onnx", "inputs.npz", "outputs.npz", "qirc.json"])


def test_the_judge_catches_a_wrong_output(foreign_cache, tmp_path):
    """A reference with one sample negated misses the step bound and the argmax check: the matrix compares what it
    claims to compare."""
    import dataclasses

    spec = fm.ModelSpec("mlp", "pt-u8s8")
    ref = foreign_cache.get(spec)
    expected = ref.expected.copy()
    expected[0] = -expected[0] - 1.0
    # the optimised run agrees with the (wrong) reference, so the bound stays at 4 steps
    wrong = dataclasses.replace(ref, expected=expected, optimised=expected.copy())
    key = spec.key
    foreign_cache._refs[key] = wrong
    try:
        cell = fm.evaluate(foreign_cache, spec, "deeploy-generic", tmp_path / "out")
    finally:
        foreign_cache._refs[key] = ref
    assert cell.status == "inaccurate" and cell.bound == 4 and cell.max_steps > cell.bound, cell.line()
    assert "final output" in cell.text and "argmax agreement" in cell.text
