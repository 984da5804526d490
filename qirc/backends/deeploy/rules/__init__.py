"""The legalisation rules, one module per family, and the order they run in.

A target's legalisation is `rules_for(target)`: the rules of `ORDER` that apply to it (each rule declares which
targets, `rule.Rule`), run in this order.  Adding a family of ops means a module here with its rules, and their place
in `ORDER`; `python -m qirc.backends.deeploy.rules docs/targets.md` rewrites the generated lists there.

Why this order: canonical forms first (batched MatMuls on a 2-D operand made 2-D among them, before the requant rules
see their reshapes), so that later rules see one spelling of each op; pools and convs before the
bias folding, which reads the conv -> requant pairs they leave; clips after the bias folding (a clip folds into the
requant that the bias went into); residual adds after the clips (on Siracusa they split a ReLU off the add's
requant); requant parameters once every requant exists; the checks last (the transformer kernels' before the
generic form check, so that their refusals say why).
"""
from __future__ import annotations

from typing import List, Tuple

from ..targets import TARGETS, DeeployTarget
from . import bias, canonical, checks, clips, convs, gemm, outputs, pools, requant, residual, transformer
from .rule import Rule, rule

ORDER: Tuple[Rule, ...] = (
    checks.integer_only,
    canonical.shape_ops_to_reshape,
    transformer.flatten_batched_matmuls,
    canonical.sub_to_add,
    transformer.requant_before_shape_ops,
    pools.sum_pools,
    convs.depthwise_to_dense,
    pools.explicit_pool_pads,
    convs.square_conv_pads,
    gemm.gemm_forms,
    bias.fold_biases,
    clips.fold_clips,
    residual.int32_residual_adds,
    residual.requantized_residual_adds,
    transformer.concat_as_pads,
    requant.shape_requant_params,
    gemm.gemm_requant_add_to_bias,
    outputs.trailing_reshapes,
    checks.erase_dead,
    transformer.siracusa_transformer_kernels,
    transformer.gelu_requant,
    transformer.activation_matmul_batches,
    checks.check_forms,
    checks.q31_requant_multipliers,
)

if len({r.name for r in ORDER}) != len(ORDER):
    raise TypeError("legalisation rule names must be unique")


def rules_for(target: DeeployTarget) -> List[Rule]:
    """The rules that legalise for `target`, in the order they run."""
    return [r for r in ORDER if r.applies_to(target)]


def describe_rules() -> str:
    """Markdown: each built-in target's rule list, then every rule with its declaration and what it rewrites."""
    lines = ["| rule | " + " | ".join(f"`{name}`" for name in TARGETS) + " |",
             "|---|" + "---|" * len(TARGETS)]
    for r in ORDER:
        marks = ["yes" if r.applies_to(t) else "" for t in TARGETS.values()]
        lines.append(f"| [`{r.name}`](#rule-{r.name}) | " + " | ".join(marks) + " |")
    lines.append("")
    for name, t in TARGETS.items():
        lines.append(f"`{name}`: " + ", ".join(f"`{r.name}`" for r in rules_for(t)) + ".")
        lines.append("")
    for r in ORDER:
        family = r.run.__module__.rsplit(".", 1)[1] + ".py"
        lines.append(f"<a id=\"rule-{r.name}\"></a>`{r.name}` ({r.condition}; `{family}`): {r.summary}")
        lines.append("")
    return "\n".join(lines)


BEGIN_MARK, END_MARK = "<!-- BEGIN generated rules -->\n", "<!-- END generated rules -->\n"


def update_doc(text: str) -> str:
    """`text` (docs/targets.md) with the part between the generated-rules markers replaced by `describe_rules()`."""
    head, rest = text.split(BEGIN_MARK, 1)
    _old, tail = rest.split(END_MARK, 1)
    return head + BEGIN_MARK + describe_rules() + END_MARK + tail


__all__ = ["ORDER", "Rule", "describe_rules", "rule", "rules_for", "update_doc"]
