"""Legalisation as rules: each target's legalisation is the ordered list of rules that declare they apply to it, the
documentation lists are generated from those declarations, and a declaration mistake fails at import."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qirc.backends.deeploy import rules
from qirc.backends.deeploy.rules import ORDER, rule, rules_for, update_doc
from qirc.backends.deeploy.targets import TARGETS, get_target

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
