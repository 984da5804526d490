"""Legalisation: integer IR -> integer IR in the forms a Deeploy platform accepts.

The input is the output of the `lower-to-int` pipeline: only `qir.*` and `int.*` ops.  The output is still `int.*`, but
every op is one that `emit.py` writes as a single ONNX node the target maps, with the attribute forms Deeploy reads
(DESIGN.md section 4).  Each rewrite keeps the module's integer semantics exactly, except the Siracusa residual Add,
which is rewritten into the form its fused kernel computes (rules/residual.py); what a target cannot take raises a
`BackendError` naming the node, the op and the target.

The rewrites are rules, one module per family under `rules/`; a target's legalisation is the ordered list
`rules.rules_for(target)` (`rules.ORDER` says the order and why; docs/targets.md lists each target's rules).
"""
from __future__ import annotations

from ...qir.ir import Module
from .rules import rules_for
from .rules.checks import EMITTABLE
from .targets import TARGETS, get_target

__all__ = ["EMITTABLE", "DeeployLegalize", "legalize"]


def legalize(module: Module, target) -> Module:
    """Rewrite `module` (integer IR) in place into the target's forms; returns it.  BackendError if impossible."""
    target = get_target(target)
    for r in rules_for(target):
        r.run(module, target)
    return module


_PASS_DOC = """Rewrite integer IR into the forms a Deeploy platform accepts (rules in qirc/backends/deeploy/rules/).

Before: int.* ops as `lower-to-int` writes them.  After: int.* ops each of which emits as one ONNX node the
target maps (bias folded into requants, pools as all-ones convs or matmuls, residual adds in the target's
form, requant parameters shaped per the contract).
Precondition: only qir.* and int.* ops.

The target's legalisation is its list of rules, run in order (docs/targets.md describes each rule):
"""


def _register() -> None:
    """Register `deeploy-legalize{target=...}` with the pass registry."""
    from ...qir.passes import ModulePass, register_pass

    class DeeployLegalize(ModulePass):
        name = "deeploy-legalize"
        target: str = ""  # required: one of targets.TARGETS
        required_options = {"target": "one of qirc --list-targets, e.g. deeploy-generic"}

        def run(self, module: Module) -> None:
            legalize(module, self.target)

    # the rule lists come from the rules' declarations, so --describe-pass and docs/passes.md cannot drift from them
    DeeployLegalize.__doc__ = _PASS_DOC + "".join(
        f"Rules on {name}: {', '.join(r.name for r in rules_for(t))}.\n" for name, t in TARGETS.items())
    return register_pass(DeeployLegalize)


DeeployLegalize = _register()
