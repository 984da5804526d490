"""`Rule`: one legalisation rewrite (or check) and the targets it applies to.

A rule is a function `(module, target) -> None` that rewrites the integer IR in place (or raises a `BackendError`),
declared with `@rule(name, when=..., targets=...)`.  Which targets it applies to is stated in the declaration, not
tested inside the function, so that a target's legalisation is the list of rules that apply to it
(`rules.rules_for`), and the documentation can print that list.

Most rules depend on what a platform *does* (a field of `DeeployTarget`, e.g. `square_conv_pads`), so `when` names
those fields; a rule for particular platforms whatever their fields names them in `targets`.  A target derived from
another one with `dataclasses.replace` (the tests' variants) gets the rules its fields call for.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, FrozenSet, Optional, Tuple

from ....qir.ir import Module
from ..targets import DeeployTarget

RuleFn = Callable[[Module, DeeployTarget], None]


def _holds(target: DeeployTarget, condition: str) -> bool:
    """One `when` condition: "field" (true), "not field" (false) or "field == value" (its str() equals value)."""
    if condition.startswith("not "):
        return not getattr(target, condition[4:])
    if " == " in condition:
        field, value = condition.split(" == ", 1)
        return str(getattr(target, field)) == value
    return bool(getattr(target, condition))


@dataclass(frozen=True)
class Rule:
    """A named legalisation rewrite.

    name     kebab-case, unique (shown in docs/targets.md and `qirc-opt --describe-pass deeploy-legalize`)
    run      the rewrite: run(module, target); its docstring's first paragraph says what it rewrites into what
    when     target fields that must all hold (see `_holds`); empty: no condition
    targets  target names it is limited to; None: any target whose fields satisfy `when`
    """

    name: str
    run: RuleFn
    when: Tuple[str, ...] = ()
    targets: Optional[FrozenSet[str]] = None

    def applies_to(self, target: DeeployTarget) -> bool:
        if self.targets is not None and target.name not in self.targets:
            return False
        return all(_holds(target, c) for c in self.when)

    @property
    def summary(self) -> str:
        """The first paragraph of the rule's docstring, on one line."""
        return " ".join(inspect.getdoc(self.run).split("\n\n", 1)[0].split())

    @property
    def condition(self) -> str:
        """The declaration as text: 'every target', 'when square_conv_pads', 'on deeploy-siracusa when ...'."""
        parts = []
        if self.targets is not None:
            parts.append("on " + ", ".join(sorted(self.targets)))
        if self.when:
            parts.append("when " + " and ".join(self.when))
        return " ".join(parts) or "every target"

    def __call__(self, module: Module, target: DeeployTarget) -> None:
        self.run(module, target)


def rule(name: str, when: Tuple[str, ...] = (), targets=None) -> Callable[[RuleFn], Rule]:
    """Decorator: declare `fn(module, target)` as the legalisation rule `name` (a docstring is required)."""
    if isinstance(when, str):
        when = (when,)

    for condition in when:  # a typo in a field name must fail at import, not make the rule silently never apply
        field = condition[4:] if condition.startswith("not ") else condition.split(" == ", 1)[0]
        if field not in DeeployTarget.__dataclass_fields__:
            raise TypeError(f"legalisation rule {name}: DeeployTarget has no field {field!r}")

    def wrap(fn: RuleFn) -> Rule:
        if not inspect.getdoc(fn):
            raise TypeError(f"legalisation rule {name} has no docstring")
        return Rule(name, fn, tuple(when), frozenset(targets) if targets is not None else None)

    return wrap
