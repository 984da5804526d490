"""Legalisation as rules: each target's legalisation is the ordered list of rules that declare they apply to it, the
documentation lists are generated from those declarations, and a declaration mistake fails at import."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from qirc.backends.deeploy import legalize, rules
from qirc.backends.deeploy.rules import ORDER, rule, rules_for, update_doc
from qirc.backends.deeploy.targets import TARGETS, get_target
from qirc.frontends.onnx import import_onnx
from qirc.lowering import lower_module
from qirc.lowering.testing import QuantBuilder, requant_step_errors
from qirc.qir import interpreter
from qirc.qir.verifier import verify

from fuzz_models import ConvSpec, HeadSpec, MaxPoolSpec, MeanSpec, NetSpec, QuantSpec, build_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "targets.md"


def names(target):
    return [r.name for r in rules_for(get_target(target))]


def test_docs_targets_lists_the_rules_as_declared():
    text = DOC.read_text(encoding="utf-8")
    assert update_doc(text) == text, "docs/targets.md is stale: run `python -m qirc.backends.deeploy.rules " \
                                     "docs/targets.md`"


def test_each_target_runs_its_platforms_rules_in_order():
    for t in TARGETS.values():
        got = rules_for(t)
        assert got == [r for r in ORDER if r in got]  # ORDER's order
        assert got[0].name == "integer-only" and "check-forms" in [r.name for r in got]
    # what differs between the platforms is said by the targets' fields
    assert "requantized-residual-adds" in names("deeploy-siracusa")
    assert "int32-residual-adds" not in names("deeploy-siracusa")
    assert "int32-residual-adds" in names("deeploy-generic")
    cortexm_only = {"square-conv-pads", "gemm-requant-add-to-bias", "q31-requant-multipliers"}
    assert cortexm_only <= set(names("deeploy-cortexm"))
    assert not cortexm_only & set(names("deeploy-generic") + names("deeploy-siracusa"))
    # no built-in platform lacks depthwise Convs, so no built-in target expands them
    assert all("depthwise-to-dense" not in names(t) for t in TARGETS)


def test_a_derived_target_gets_the_rules_its_fields_call_for():
    dense = dataclasses.replace(get_target("deeploy-cortexm"), name="cortexm-dense", depthwise_conv=False,
                                dense_depthwise_cap_kib=64)
    cortexm = names("deeploy-cortexm")
    at = cortexm.index("sum-pools") + 1  # the dense form is made before the pads and bias rules read the convs
    assert names(dense) == cortexm[:at] + ["depthwise-to-dense"] + cortexm[at:]
    no_cap = dataclasses.replace(dense, dense_depthwise_cap_kib=0)
    assert "depthwise-to-dense" not in names(no_cap)


def test_rules_limited_by_name_apply_to_those_targets_only():
    @rule("example-siracusa-only", targets={"deeploy-siracusa"}, when="conv_needs_requant")
    def example(module, target):
        """Do nothing."""

    assert example.condition == "on deeploy-siracusa when conv_needs_requant"
    assert [n for n, t in TARGETS.items() if example.applies_to(t)] == ["deeploy-siracusa"]


def test_a_rule_must_say_what_it_rewrites_and_name_real_fields():
    with pytest.raises(TypeError, match="no docstring"):
        rule("undocumented")(lambda module, target: None)
    with pytest.raises(TypeError, match="DeeployTarget has no field 'square_pads'"):
        rule("typo", when="square_pads")(lambda module, target: None)


def test_every_rule_lives_in_its_family_module_and_is_documented():
    assert len({r.name for r in ORDER}) == len(ORDER)
    for r in ORDER:
        assert r.run.__module__.startswith(rules.__name__ + ".")
        assert r.summary and f"`{r.name}`" in rules.describe_rules()


# ----- legalised types describe the values -------------------------------------------------------------------------
def _biased_net(per_channel_bias_seed=0):
    """x -> Conv (+ per-channel bias, per-channel weights) -> quant -> Flatten -> quant -> Gemm (+ bias) -> quant."""
    rng = np.random.default_rng(per_channel_bias_seed)
    b = QuantBuilder("biased")
    x = b.input("x", (1, 3, 4, 4), 1 / 64, 3)
    y = b.conv(x, rng.integers(-127, 128, (4, 3, 3, 3)), np.array([0.01, 0.02, 0.015, 0.01]),
               bias=rng.integers(-3000, 3000, (4,)), pads=[1, 1, 1, 1])
    y = b.quant(y, 0.05, -5)
    y = b.quant(b.op("onnx.Flatten", [y], {"axis": 1}), 0.05, -5)
    y = b.gemm(y, rng.integers(-127, 128, (5, 64)), 0.01, bias=rng.integers(-2000, 2000, (5,)))
    b.output("y", b.quant(y, 0.2, 7))
    return b.module


def _requant_type_errors(module, seeds=range(3)):
    """{requant loc: largest distance, in output steps, from what its input's and output's types say it computes}."""
    worst = {}
    for seed in seeds:
        values = interpreter.run_values(module, interpreter.random_inputs(module, seed))
        for loc, err in requant_step_errors(module, values).items():
            worst[loc] = max(err, worst.get(loc, 0.0))
    return worst


@pytest.mark.parametrize("target", list(TARGETS))
def test_a_bias_folded_into_a_requant_moves_the_zero_points_of_its_input(target):
    m = _biased_net()
    lower_module(m, signed=get_target(target).signed_normalize)
    [conv] = m.walk("int.conv")
    bias = np.asarray(conv.operands[2].owner.attrs["value"], np.int64).reshape(-1)
    weights = np.asarray(conv.operands[1].owner.attrs["value"], np.int64)
    legalize(m, target)
    verify(m)
    # the conv no longer adds its bias (the requant's add does): its values are acc - bias, and its type says so
    # (on Siracusa other depthwise Convs write its zero-point padding: the conv is the one with these weights)
    [conv] = [c for c in m.walk("int.conv") if c.operands[1].type.shape == weights.shape]
    assert len(conv.operands) == 2
    assert conv.result.type.quant.zero_points == tuple(-bias)
    # each requant computes, within the 1 step of its multiplier's rounding, what its input and output types say
    errors = _requant_type_errors(m)
    assert len(errors) == 2 and max(errors.values()) <= 1, errors
    [gemm] = m.walk("int.gemm")
    if get_target(target).add_before_mul:  # the requant's add moved into the Gemm's bias, the zero points with it
        [(rqs, _)] = gemm.result.uses
        assert not np.any(rqs.attrs["add"]) and any(gemm.result.type.quant.zero_points)
    else:
        assert not any(gemm.result.type.quant.zero_points)


@pytest.mark.parametrize("target", ["deeploy-generic", "deeploy-cortexm"])
def test_the_check_fails_on_types_left_stale(target, monkeypatch):
    """Without the retyping (the legalised IR before it), the same check reports the folded biases."""
    from qirc.backends.deeploy.rules import bias, gemm
    monkeypatch.setattr(bias, "move_zero_points", lambda *args: None)
    monkeypatch.setattr(gemm, "move_zero_points", lambda *args: None)
    m = _biased_net()
    lower_module(m, signed=get_target(target).signed_normalize)
    legalize(m, target)
    errors = _requant_type_errors(m)
    stale = 2 if get_target(target).add_before_mul else 1  # the conv's requant, and on CMSIS the Gemm's too
    assert sum(err > 1 for err in errors.values()) == stale, errors
    m = import_onnx(build_model(FOLDED_ADD_NETS[0]))  # (defined below) a MatMul head's bias, an int.add before
    lower_module(m, signed=get_target(target).signed_normalize)
    legalize(m, target)
    assert max(_requant_type_errors(m).values()) > 1


def _q(storage, scale_factor, zero_point, power_of_two=False, form="qcdq"):
    return QuantSpec(storage=storage, scale_factor=scale_factor, zero_point=zero_point, power_of_two=power_of_two,
                     form=form)


#: fuzz networks (tests/fuzz_models.py) whose biases reach the requants through a constant int.add: a MatMul head on
#: an input with a zero point, and a biased depthwise Conv after a pool feeding a per-channel MatMul head
FOLDED_ADD_NETS = [
    NetSpec(channels=4, height=2, width=7, input=_q("i8", 1.0185431754354248, -17), blocks=(),
            head=HeadSpec(classes=5, per_channel=False, bias=True, out=_q("u8", 0.19565012677519003, 100),
                          op="MatMul", flatten="Flatten"), format="qcdq", seed=2779),
    NetSpec(channels=4, height=5, width=6, input=_q("i8", 1.0, -16, True, "qonnx"), blocks=(
        MaxPoolSpec(out=_q("u8", 1.0, 0, True, "qonnx")),
        ConvSpec(out_channels=4, kernel=1, stride=1, padded=False, depthwise=True, per_channel=True, bias=False,
                 relu=False, out=_q("u8", 2.453919691015598, 0, False, "qonnx"), pre_relu=False, weight_zero_point=0),
        MeanSpec(op="GlobalAveragePool", out=_q("i8", 0.3470234481369095, 27, True, "qonnx")),
        ConvSpec(out_channels=4, kernel=2, stride=2, padded=True, depthwise=True, per_channel=False, bias=True,
                 relu=False, out=_q("u8", 0.4245664452959241, 128, False, "qonnx"), pre_relu=True,
                 weight_zero_point=0)),
        head=HeadSpec(classes=6, per_channel=True, bias=True, out=_q("i8", 0.12923118254406082, -23, False, "qonnx"),
                      op="MatMul", flatten="Reshape"), format="qonnx", seed=34346),
]


# (signed normalisation lowers the second network's head bias into its requant directly: no int.add to fold there)
@pytest.mark.parametrize("net, target", [(0, "deeploy-generic"), (0, "deeploy-siracusa"), (0, "deeploy-cortexm"),
                                         (1, "deeploy-generic")])
def test_a_constant_add_folded_into_a_requant_retypes_its_input(net, target):
    m = import_onnx(build_model(FOLDED_ADD_NETS[net]))
    lower_module(m, signed=get_target(target).signed_normalize)
    assert any(op.name == "int.add" for op in m.walk())  # the bias is an int.add before legalisation
    legalize(m, target)
    verify(m)
    assert not any(op.name == "int.add" for op in m.walk())  # ... folded into the requant after it
    errors = _requant_type_errors(m)
    assert errors and max(errors.values()) <= 1, errors
