"""The legalisation rules, one module per family, and the order they run in.

A target's legalisation is `rules_for(target)`: the rules of `ORDER` that apply to it (each rule declares which
targets, `rule.Rule`), run in this order.  Adding a family of ops means a module here with its rules, and their place
in `ORDER`; `python -m qirc.backends.deeploy.rules docs/targets.md` rewrites the generated lists there.

Why this order: canonical forms first, so that later rules see one spelling of each op (and rank-3 channel tensors
as rank 4, so that pools, convs and requant parameters need only the NCHW forms); pools and convs before the
bias folding, which reads the conv -> requant pairs they leave; clips after the bias folding (a clip folds into the
requant that the bias went into); residual adds after the clips (on Siracusa they split a ReLU off the add's
requant); the tiled-flow forms (tiling.py) around them: padding before the bias folding (a shifted-out zero point
goes into the Conv's bias), the fused unsigned requants and the div once every requant exists; requant parameters
once every requant exists, then their adds made safe from DeeployTest's debug pass (harness.py); the checks last
(the transformer kernels' before the generic form check, so that their refusals say why; Siracusa's refusal of
an integer LayerNorm first of all, before another rule refuses a transformer's constant positional add).
"""
from __future__ import annotations

from typing import List, Tuple

from ..targets import TARGETS, DeeployTarget
from . import (bias, canonical, checks, clips, convs, gemm, harness, moves, outputs, pools, products, rank, requant,
               residual, tiling, transformer, trunc)
from .rule import Rule, rule

ORDER: Tuple[Rule, ...] = (
    checks.integer_only,
    transformer.siracusa_transformer_kernels,
    canonical.shape_ops_to_reshape,
    rank.rank3_to_rank4,
    canonical.distinct_concat_operands,
    canonical.sub_to_add,
    products.broadcast_mul_operands,
    trunc.trunc_round_half_up,
    moves.requant_before_transposes,
    moves.requant_before_maxpools,
    moves.token_matmuls_2d,
    gemm.per_channel_matmul_as_gemm,
    pools.sum_pools,
    convs.depthwise_to_dense,
    pools.explicit_pool_pads,
    convs.square_conv_pads,
    tiling.zero_padding,
    tiling.equal_conv_pads,
    convs.equal_top_bottom_pads,
    gemm.gemm_forms,
    gemm.per_channel_gemm_as_conv,
    bias.fold_biases,
    bias.full_shape_feature_adds,
    gemm.bare_gemm_as_matmul,
    clips.fold_clips,
    transformer.drop_softmax_half_step,
    residual.int32_residual_adds,
    residual.requantized_residual_adds,
    transformer.concat_as_pads,
    transformer.matmul_add_apart,
    tiling.border_padding,
    products.unsigned_product_requants,
    tiling.unsigned_requants_fused,
    tiling.requant_div_min,
    requant.offset_after_merged_requant,
    requant.shape_requant_params,
    requant.smallest_exact_shift,
    gemm.gemm_requant_add_to_bias,
    harness.debug_pass_invariant_adds,
    outputs.trailing_reshapes,
    checks.erase_dead,
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
