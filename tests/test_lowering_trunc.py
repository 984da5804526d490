"""lower-to-int and the Deeploy backend on QONNX `Trunc` (Brevitas TruncAvgPool).

The frontend already spells Trunc's shift as exact integer ops; the lowering must keep it exact: the requant onto
the Trunc's input grid after an average pool is the identity on the pool's integer sum (its scale differs from the
grid's only by float rounding) and disappears, so the integer graph computes the very integers of the quant-level
graph.  The Brevitas `conv_perchannel` model exported as QONNX compiles for deeploy-generic within the accuracy
contract (every requant within one step of its fake-quant twin on the same integer input, argmax agreement).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import brevitas_models as bm  # noqa: E402
from test_frontend_trunc import CASES, S_Q, grid_inputs, trunc_model  # noqa: E402

from qirc.frontends.onnx import import_onnx  # noqa: E402
from qirc.frontends.onnx.patterns import shift_round  # noqa: E402
from qirc.lowering import lower_module  # noqa: E402
from qirc.lowering.testing import requant_step_errors, requant_unexplained  # noqa: E402
from qirc.qir.batch import rebatch  # noqa: E402
from qirc.qir.interpreter import run, run_values  # noqa: E402

def stored_input(module, x):
    """The integers the lowered module's input takes for float x (its input quantizer, QONNX rounding)."""
    q = module.inputs[0].results[0].type.quant
    return np.clip(np.rint(x / np.float32(q.scale) + q.zero_point), q.storage_min, q.storage_max).astype(np.int64)


def dequantized_output(module, values):
    out = module.outputs[0].operands[0]
    q = out.type.quant
    return ((values - q.zero_points_for(out.type.rank)).astype(np.float32) *
            q.scales_for(out.type.rank).astype(np.float32))


@pytest.mark.parametrize("signed", [False, True], ids=["as_is", "signed_normalized"])
@pytest.mark.parametrize("case", list(CASES))
def test_lowered_trunc_is_bit_exact(case, signed):
    model = trunc_model(**CASES[case])
    quant_level = import_onnx(model)
    lowered = quant_level.clone()
    lower_module(lowered, signed=signed)
    assert {op.dialect for op in lowered.ops()} == {"qir", "int"}
    for x in grid_inputs(seed=5):
        want = run(quant_level, {"x": x})["y"]
        got = dequantized_output(lowered, run(lowered, {"x": stored_input(lowered, x)})["y"])
        np.testing.assert_array_equal(got, want)


def test_grid_requant_after_a_pool_disappears():
    """AveragePool's sum is at S_Q / 4 computed in float64, the Trunc grid at the file's float32 S_Q / 4: the
    requant between them is the identity on every reachable integer, so no int32 -> int32 requant remains."""
    lowered = import_onnx(trunc_model(rounding="ROUND", k=4, signed=1, pool=True))
    lower_module(lowered)
    sumpool = lowered.walk("int.sumpool")
    assert len(sumpool) == 1
    readers = {op.name for op in sumpool[0].results[0].users}
    assert readers == {"int.requant_shift", "int.add"}  # the shift's floor/parity requants and the rounding add
    shifts = [op for op in sumpool[0].results[0].users if op.name == "int.requant_shift"]
    assert sorted(int(op.attr("div")) for op in shifts) == [16, 32]
    assert all(np.asarray(op.attrs["mul"]).tolist() == [1] for op in shifts)


def test_grid_requant_that_changes_integers_is_kept():
    """A grid 1% off the pool's sum scale is a real rescale (M = 1.01 moves integers above 50): it stays."""
    grid = np.float32(S_Q / 4 * 1.01)
    model = trunc_model(rounding="ROUND", k=4, signed=1, pool=True, scale=grid, out_scale=grid * 16)
    quant_level = import_onnx(model)
    lowered = quant_level.clone()
    lower_module(lowered)
    rescale = [op for op in lowered.walk("int.sumpool")[0].results[0].users if op.name == "int.requant_shift"
               and int(op.attr("div")) not in (16, 32)]
    assert len(rescale) == 1 and rescale[0].results[0].type.quant.scale == pytest.approx(float(grid))
    for x in grid_inputs(seed=6, n=2):
        want = run(quant_level, {"x": x})["y"]
        got = dequantized_output(lowered, run(lowered, {"x": stored_input(lowered, x)})["y"])
        assert np.max(np.abs(got - want)) <= np.float32(grid * 16) * 1.0001  # one step at most (a re-rounding)


# ----- the Brevitas model ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def perchannel_qonnx(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("brevitas")
    return bm.export("conv_perchannel", "qonnx", tmp_path_factory.mktemp("trunc_lowering"))


def _trunc_result(module):
    """The integer result of the Trunc (the value its dcast reads at quant level, the last op at its location after
    lowering)."""
    ops = [op for op in module.ops() if op.loc == "/pool/trunc_quant/export_handler/Trunc"]
    return [op for op in ops if op.name == "int.requant_shift"][-1].results[0]


@pytest.mark.brevitas
def test_brevitas_trunc_lowers_exactly_and_meets_the_contract(perchannel_qonnx):
    model = onnx.load(str(perchannel_qonnx))
    lowered = import_onnx(str(perchannel_qonnx))
    lower_module(lowered)
    assert {op.dialect for op in lowered.ops()} == {"qir", "int"}
    n = 48
    xs = np.concatenate(bm.random_inputs(n, seed=3))
    batched = rebatch(lowered, n)
    values = run_values(batched, {batched.input_names()[0]: stored_input(batched, xs)})
    # the Trunc on the same integer input: exactly QONNX's round-half-even shift of the pool's sum
    pool_sum = values[batched.walk("int.sumpool")[0].results[0]]
    trunc = _trunc_result(batched)
    grid = next(op for op in import_onnx(str(perchannel_qonnx)).walk("quant.qcast") if "Trunc" in op.loc)
    assert (grid.results[0].type.quant.storage_min, grid.results[0].type.quant.storage_max) == (0, 4095)
    np.testing.assert_array_equal(values[trunc], shift_round(pool_sum, 4, "ROUND", 0, 255))
    ties = np.count_nonzero(pool_sum % 16 == 8)
    assert ties > 0, "the inputs hit no exact tie of the truncation"
    # every other requant within one step of its fake-quant twin, and only near ties
    assert max(requant_step_errors(batched, values).values()) <= 1
    assert not any(requant_unexplained(batched, values).values())
    std = bm.qonnx_as_standard_onnx(model)
    ref = np.concatenate([bm.run_ort(std, xs[i:i + 1])[0] for i in range(n)])
    got = dequantized_output(batched, values[batched.outputs[0].operands[0]])
    assert np.mean(np.argmax(got, 1) == np.argmax(ref, 1)) >= 0.99


@pytest.mark.brevitas
def test_brevitas_trunc_compiles_for_deeploy_generic(perchannel_qonnx, tmp_path):
    """Generic takes the exact form (its Add sums int32 operands); Siracusa's RequantizedAdd cannot (see
    `test_siracusa_refuses_the_parity_add_by_name`)."""
    from qirc.driver import compile_model

    out = tmp_path / "build"
    summary = compile_model(str(perchannel_qonnx), "deeploy-generic", str(out), accuracy_samples=16)
    network = onnx.load(str(out / "network.onnx"))
    onnx.checker.check_model(network)
    assert summary.op_counts["RequantShift"] == 8  # 3 layer requants, gap, fc, and Trunc's floor, half, parity, shift
    assert summary.op_counts["Add"] == 2 and summary.op_counts["Mul"] == 1
    report = json.loads((out / "qirc.json").read_text())
    assert report["accuracy"]["outputs"][0]["argmax_agreement"] >= 0.99
    shifts = [n for n in network.graph.node if n.op_type == "RequantShift"]
    levels = [int(onnx.numpy_helper.to_array(a.t).reshape(-1)[0]) for n in shifts for a in n.attribute
              if a.name == "n_levels_out"]
    assert max(levels) <= 256  # no int32 grid requant left for Deeploy to reject


@pytest.mark.brevitas
@pytest.mark.parametrize("target", ["deeploy-siracusa", "deeploy-cortexm"])
def test_int8_targets_take_the_trunc_as_one_round_half_up_requant(perchannel_qonnx, target, tmp_path):
    """Siracusa's RequantizedAdd would round the parity correction and neither int8-only platform writes the 12-bit
    grid, so there the Trunc is one round-half-up RequantShift from the pool's sum (rule trunc-round-half-up): within
    the one-step tie allowance, which the accuracy report shows."""
    from qirc.driver import compile_model

    summary = compile_model(str(perchannel_qonnx), target, str(tmp_path / "build"), accuracy_samples=16)
    assert "Add" not in summary.op_counts and "Mul" not in summary.op_counts
    assert summary.accuracy["outputs"][0]["argmax_agreement"] >= 0.9


@pytest.mark.parametrize("target", ["deeploy-siracusa", "deeploy-cortexm"])
def test_trunc_after_a_pool_differs_only_at_exact_ties_on_int8_targets(target):
    """The legalised form against the exact one on every reachable sum: equal except where sum / 2^k is a tie
    (round half up there instead of half to even), by one step."""
    from qirc.backends.deeploy.legalize import legalize
    from qirc.backends.deeploy.targets import get_target

    t = get_target(target)
    lowered = import_onnx(trunc_model(rounding="ROUND", k=2, signed=1, pool=True))
    lower_module(lowered, signed=t.signed_normalize)
    exact = lowered.clone()
    legalize(lowered, t)
    assert not lowered.walk("int.add") and not lowered.walk("int.mul")
    ties = 0
    for x in grid_inputs(seed=7, n=4):
        stored = stored_input(exact, x)
        want = run_values(exact, {"x": stored})
        got = run(lowered, {"x": stored})["y"].astype(np.int64)
        pool_sum = want[exact.walk("int.sumpool")[0].results[0]]
        y = want[exact.outputs[0].operands[0]].astype(np.int64)
        tie = (pool_sum % 4) == 2
        assert np.all(got[~tie] == y[~tie])
        assert np.all(np.abs(got[tie] - y[tie]) <= 1)
        ties += int(np.count_nonzero(got != y))
    assert ties > 0  # the inputs reach ties where the two roundings differ
