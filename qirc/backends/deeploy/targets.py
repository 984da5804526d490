"""The Deeploy platforms qirc compiles for, as declarative descriptions.

A `DeeployTarget` says what one Deeploy platform (pulp-platform/Deeploy, devel) takes: the ONNX op types its front end
maps, the forms those ops must have, the lowering options its kernels need, and its quirks.  The legalisation rules
(`rules/`) declare by these fields which targets they apply to and read them to rewrite the integer IR into forms the
platform accepts, or to refuse, with a located `BackendError`, what it cannot take; emission (`emit.py`) checks the
result against `onnx_ops`.

The facts below come from reading Deeploy's parsers, bindings, topology passes and kernels and from the runs recorded
in DESIGN.md section 4; `docs/targets.md` explains each of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

from ...qir.diagnostics import UsageError

#: How a residual Add of operands at different scales is written.
#:   "mul-add"         Mul(a, ca) + Mul(b, cb) -> Add -> RequantShift: exact, one rounding (int32 sum).
#:   "requantized-add" RequantShift(a) + RequantShift(b) -> Add -> RequantShift, every RequantShift per tensor: the
#:                     pattern Siracusa's PULPAddRequantMergePass fuses into RequantizedAdd (pulp_nn_add), which clips
#:                     each requantized operand to 8 bits before the sum.  The graph states those clips, so it is
#:                     bit-exact with the kernel; it rounds each operand to a common scale first.
RESIDUAL_ADD_FORMS = ("mul-add", "requantized-add")

#: How an integer average (sum) pool is written.
#:   "depthwise-conv"  Conv with an all-ones kernel, group = channels, then RequantShift dividing by the count.
#:   "ones-matmul"     global pools only: Reshape [N,C,H,W] -> [N*C, H*W], MatMul with an int8 all-ones [H*W, 1],
#:                     then a per-tensor RequantShift dividing by the count (the platform fuses MatMul + RequantShift
#:                     into its fully-connected kernel), then Reshape back; windowed pools are refused.
#:   None              the platform has no working form: legalisation raises BackendError.
POOL_FORMS = ("depthwise-conv", "ones-matmul", None)


#: How an accepted depthwise Conv (group = C_in = C_out) is written.
#:   "channels-first"  a standard NCHW Conv with group = C, then its RequantShift.
#:   "channels-last"   Transpose NCHW -> NHWC, then a Conv in domain ai.deeploy with channels_first = 0 on the NHWC
#:                     tensor (weights still [C, 1, kh, kw], no pads), then its RequantShift (per-channel mul/add
#:                     shaped [1, 1, 1, C]), then Transpose NHWC -> NCHW.  Deeploy's NCHW-to-NHWC lowering leaves a
#:                     Conv that already says channels_first = 0 alone, so CMSIS's depthwise parser sees the
#:                     untransposed weights whose first dimension equals group (it rejects every depthwise Conv it
#:                     has transposed itself).
DEPTHWISE_LAYOUTS = ("channels-first", "channels-last")


#: How a clip to lo..hi that no requant before it can absorb is written (a ReLU on a graph input, on a requant with
#: other users, or after a fused kernel that ignores n_levels_out).
#:   "levels"   RequantShift(mul = div = 1, add = 0) with the (signed, n_levels_out) whose range is lo..hi: an
#:              unsigned range (signed = 0) is stored with an offset that Deeploy's Generic kernels compensate.
#:   "shifted"  signed ranges only (and the full uint8 0..255 where the platform keeps uint8 tensors): a
#:              symmetric lo..hi is one such RequantShift with signed = 1; otherwise RequantShift(add = -c,
#:              signed = 1, n_levels_out = hi - lo + 1) then RequantShift(add = +c, n_levels_out = 256) with
#:              c = lo + (hi - lo + 1) / 2: clip(x - c, -n/2, n/2 - 1) + c = clip(x, lo, hi).  CMSIS kernels read
#:              unsigned (signed = 0) outputs back with the offset of their own n_levels_out instead of the
#:              producer's; on Siracusa a narrow unsigned clip has no kernel that honours it (its uint8 requants
#:              are fused, and pulp-nn clips to 0..255).
CLIP_FORMS = ("levels", "shifted")


@dataclass(frozen=True)
class DeeployTarget:
    """One Deeploy platform: what its ONNX front end maps and the forms it needs.

    name               the `--target` name
    platform           Deeploy's platform name (the DeeployTest `-p` argument: Generic, Siracusa, QEMU-ARM)
    description        one line for `qirc --list-targets`
    onnx_ops           ONNX op types qirc may emit for it (RequantShift included)
    signed_normalize   the platform's kernels take int8 only: unsigned tensors are moved to int8 (zero point -128)
    conv_needs_requant a Conv must be followed by a RequantShift (its only user): no bare integer Conv kernel
    gemm_needs_requant no bare integer Gemm kernel (PULPOpen maps an integer Gemm only fused with its RequantShift,
                       CMSIS only RequantizedGemm): a Gemm that no requant follows (an int32 graph output, a
                       QuantLinear without output quantizer) is written as MatMul (int8 x int8 -> int32, its input
                       moved to int8 first when it is uint8) and an Add of its bias
    residual_add       one of RESIDUAL_ADD_FORMS
    sum_pool           one of POOL_FORMS
    add_before_mul     the kernels compute (x + add/mul) * mul (CMSIS-NN): every requant fused with a Conv, Gemm or
                       MatMul gets an add that is a multiple k * mul of its mul, so that the graph computes what the
                       device does (a standalone RequantShift runs the reference kernel: add as given); a Gemm's
                       requant add moves into its bias (the platform's Gemm merge would lose it); a Conv's or MatMul's
                       is written so that the merge's round(add / (mul + 1e-3)) reads back exactly k
                       (`rules.harness.merge_exact_add`), and qirc's reader of the folder reads it that way
    pad_equal_top_bottom
                       the platform's Pad kernel works on NCHW and steps between channels over twice the top padding:
                       right only when the bottom padding equals it (Generic: every output wrong after a Pad of top 0,
                       bottom 1); an int.pad that pads top and bottom unequally is written as the Pad of the larger
                       at both ends and a Slice of the rows (rule equal-top-bottom-pads).  Cortex-M's NHWC Pad takes
                       any pads (QEMU-ARM: Errors: 0 out of 200 for top 1, bottom 0, left 0, right 1)
    channel_slice      the platform maps a Slice along the channels of an NCHW tensor (a torch.split / chunk of
                       channels).  False on Siracusa: Deeploy found no mapping for it ("Did not find adequate mapping
                       ... SliceLayer"), so it is refused by name
    pad_node           the platform takes an explicit Pad node.  False on Siracusa: DeeployTest's tiled flow is how it
                       is deployed, and its Pad bindings have no tiling constraint, so every padding is a Conv's own
                       zero padding (rules/tiling.py: a zero point is shifted out of the Conv's input first, pads that
                       differ per side come from a depthwise Conv with a one-hot kernel) and every Conv pads equally
                       on all four sides (PULP's Conv parsers take nothing else)
    unsigned_requant_fused
                       a RequantShift with an unsigned (uint8) output must be fused with the kernel before it: on
                       Siracusa the per-tensor RequantShift binding outputs int8 only and the per-channel one does not
                       tile, so a standalone unsigned requant gets an identity depthwise 1x1 Conv in front
                       (RequantizedConv, pulp_nn_depthwise_*_u8_*), which clips to the full 0..255
    requant_div_min    the smallest div a RequantShift may have: 2 on Siracusa, whose RequantShift kernel adds
                       1 << (log2D - 1) (undefined for div = 1) and whose Gemm merge adds 2**(log2D - 1) (0.5 for
                       div = 1); (mul, add, 1) is written (2 mul, 2 add, 2), which computes the same integers
    depthwise_conv     a depthwise (grouped) Conv is accepted
    depthwise_layout   how an accepted depthwise Conv is written: one of DEPTHWISE_LAYOUTS
    dense_depthwise_cap_kib
                       when depthwise_conv is False: a depthwise Conv is rewritten into the dense Conv (group 1) with
                       the block-diagonal kernel that computes the same integers, if that kernel takes at most this
                       many KiB of int8 weights per layer; 0 refuses every depthwise Conv
    square_conv_pads   Conv takes only equal pads on every side, depthwise Conv none (others become an explicit Pad)
    gemm_scalar_mul    a Gemm's or MatMul's requant multiplier must be one rank-0 scalar (CMSIS fully-connected is
                       per tensor)
    clip_form          how a clip (a ReLU) that is not already a requant's range is written: one of CLIP_FORMS
    fused_requant_levels
                       the fused Conv/Gemm/MatMul/Add kernels clip to the RequantShift's n_levels_out; when False
                       (pulp-nn clips every fused output to the full int8 range) a clip never folds into a requant
                       that the platform fuses
    clip_requant_unit  mul = div of a RequantShift that only clips (add 0 or the clip's offset): 1, or 2 where
                       Deeploy deletes unity requants after Reshape/Transpose/Concat whatever their clip
                       (PULPOpen's SkipUnityRequantPass) and its RequantShift kernel adds 1 << (log2D - 1), undefined
                       for div = 1; floor((2x + 2a + 1) / 2) = x + a either way
    q31_requant_multiplier
                       a Conv's, Gemm's or MatMul's requant is merged into the kernel's int32 Q31 multiplier
                       mul * 2^s (Deeploy's CMSIS merge passes, s = 31 - log2(div) at most): the merged multiplier
                       must fit int32, which needs the requant's gain mul / div below 1
    concat             the platform maps Concat (it must then be in onnx_ops); without it a concat is written as
                       zero Pads summed with int.add (the rule concat-as-pads)
    quirks             free-form notes printed by `--list-targets` and documented in docs/targets.md
    """

    name: str
    platform: str
    description: str
    onnx_ops: frozenset
    signed_normalize: bool
    conv_needs_requant: bool
    residual_add: str
    sum_pool: object
    add_before_mul: bool = False
    gemm_needs_requant: bool = False
    gemm_scalar_mul: bool = False
    square_conv_pads: bool = False
    clip_form: str = "levels"
    fused_requant_levels: bool = True
    clip_requant_unit: int = 1
    q31_requant_multiplier: bool = False
    pad_node: bool = True
    pad_equal_top_bottom: bool = False
    channel_slice: bool = True
    unsigned_requant_fused: bool = False
    requant_div_min: int = 1
    depthwise_conv: bool = True
    depthwise_layout: str = "channels-first"
    dense_depthwise_cap_kib: int = 0
    concat: bool = True
    quirks: Tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.concat != ("Concat" in self.onnx_ops):
            raise ValueError(f"target {self.name}: concat={self.concat} disagrees with its onnx_ops")
        if self.residual_add not in RESIDUAL_ADD_FORMS:
            raise ValueError(f"target {self.name}: unknown residual add form {self.residual_add!r}")
        if self.sum_pool not in POOL_FORMS:
            raise ValueError(f"target {self.name}: unknown sum-pool form {self.sum_pool!r}")
        if self.clip_form not in CLIP_FORMS:
            raise ValueError(f"target {self.name}: unknown clip form {self.clip_form!r}")
        if self.depthwise_layout not in DEPTHWISE_LAYOUTS:
            raise ValueError(f"target {self.name}: unknown depthwise layout {self.depthwise_layout!r}")

    @property
    def lowering_options(self) -> Dict[str, object]:
        """Options of the `lower-to-int` passes this platform needs (pass option name -> value)."""
        return {"signed_normalize": self.signed_normalize}

    def accepts(self, onnx_op: str) -> bool:
        return onnx_op in self.onnx_ops


_COMMON = frozenset({"Conv", "Gemm", "MatMul", "Add", "Mul", "RequantShift", "MaxPool", "Pad", "Reshape",
                     "Transpose", "Gather", "Slice"})
#: Deeploy's integer transformer kernels (DESIGN.md section 7): Generic and CMSIS map iSoftmax, iLayerNorm and iGELU
#: with the Generic C kernels; Siracusa maps iSoftmax and iGELU only fused with its RequantShift (RequantizediGELU),
#: and has no integer LayerNorm
_TRANSFORMER = frozenset({"iSoftmax", "iLayerNorm", "iGELU"})

GENERIC = DeeployTarget(
    name="deeploy-generic",
    platform="Generic",
    description="Deeploy Generic platform (host C, reference kernels; builds and runs with gcc)",
    onnx_ops=_COMMON | _TRANSFORMER | {"Concat"},
    signed_normalize=False,
    conv_needs_requant=False,
    residual_add="mul-add",
    sum_pool="depthwise-conv",
    pad_equal_top_bottom=True,
    quirks=(
        "ReduceSum's generated C crashes and ReduceMean needs non-standard attributes: average pooling is a "
        "depthwise all-ones Conv followed by a RequantShift",
        "the DeeployTest runner rewrites add to round(add/mul)*mul; qirc keeps add a multiple of mul whenever the "
        "output zero point is 0",
    ),
)

SIRACUSA = DeeployTarget(
    name="deeploy-siracusa",
    platform="Siracusa",
    description="Deeploy PULPOpen/Siracusa (RISC-V cluster, PULP-NN kernels, int8/uint8, tiled flow)",
    onnx_ops=(_COMMON - {"Pad"}) | {"Concat", "iSoftmax", "iGELU"},
    signed_normalize=False,
    conv_needs_requant=True,
    gemm_needs_requant=True,
    residual_add="requantized-add",
    sum_pool="depthwise-conv",
    clip_form="shifted",
    fused_requant_levels=False,
    clip_requant_unit=2,
    pad_node=False,
    channel_slice=False,
    unsigned_requant_fused=True,
    requant_div_min=2,
    quirks=(
        "no bare integer Conv: every Conv is fused with the RequantShift after it (RequantizedConv)",
        "Add followed by RequantShift is always fused into RequantizedAdd (pulp_nn_add), which takes 8-bit "
        "operands only and clips each requantized operand to 8 bits: residual adds of two rank-4 tensors of one "
        "signedness at different scales are written as Concat of operand copies along H -> depthwise Conv (one "
        "int8 tap per copy) -> RequantShift (the int32 sum, fused into RequantizedConv), the others as "
        "RequantShift(a), RequantShift(b) -> Add -> RequantShift, all per tensor",
        "a unity RequantShift (mul == div, add == 0) after Reshape/Transpose/Concat is removed by Deeploy, even "
        "when it clips, and its RequantShift kernel's rounding term is undefined for div = 1: a requant that only "
        "clips (a ReLU) is written with mul = div = 2",
        "the fused kernels (RequantizedConv/Gemm/Add, pulp-nn) clip to the full 8-bit range of their output type "
        "whatever n_levels_out says: a narrower clip after them is a separate signed RequantShift pair (clip "
        "around an offset, then add it back)",
        "unsigned tensors stay uint8 (pulp-nn has u8 kernels; no signed normalisation), so that a ReLU output "
        "keeps zero point 0 and a Conv pads it with the kernel's own zeros, and requant adds stay multiples of mul",
        "deployed through DeeployTest's tiled flow, whose Pad has no tiling constraint: no Pad node; a zero point "
        "is shifted out of a padded Conv's input (its values must then fit 8 bits), pads that differ per side come "
        "from a depthwise Conv with a one-hot kernel, every Conv pads equally on all sides",
        "a standalone RequantShift with a uint8 output gets an identity depthwise 1x1 Conv in front (the per-tensor "
        "RequantShift binding outputs int8 only, the per-channel one does not tile)",
        "no div = 1: PULP's RequantShift kernel computes 1 << (log2D - 1) and its Gemm merge 2**(log2D - 1)",
    ),
)

CORTEXM = DeeployTarget(
    name="deeploy-cortexm",
    platform="QEMU-ARM",
    description="Deeploy CMSIS platform (Arm Cortex-M, CMSIS-NN kernels, int8 only, no Concat)",
    onnx_ops=_COMMON | _TRANSFORMER,
    signed_normalize=True,
    conv_needs_requant=True,
    gemm_needs_requant=True,
    residual_add="mul-add",
    sum_pool="ones-matmul",
    add_before_mul=True,
    gemm_scalar_mul=True,
    clip_form="shifted",
    q31_requant_multiplier=True,
    square_conv_pads=True,
    depthwise_layout="channels-last",
    concat=False,
    quirks=(
        "no bare integer Conv: every Conv is fused with the RequantShift after it (RequantizedConv)",
        "no Concat mapping",
        "its Conv/MatMul requant merges hand the kernel round(add/(mul + 1e-3)) as the integer it adds before "
        "multiplying (CMSIS adds before multiplying): qirc states the add as a multiple k * mul and writes it so that "
        "this reads back exactly k (k * mul + round(k/1000) where |k| is beyond about 500 * mul, which the merge "
        "would otherwise move toward 0), and reads such a requant of the folder as the merge does",
        "RequantizedGemm takes one per-tensor multiplier, read as a rank-0 tensor: a per-channel Gemm is written as "
        "a 1x1 Conv",
        "its Gemm-requant merge loses the requant's add when the Gemm has a bias: qirc moves add/mul into the bias",
        "unsigned RequantShift outputs are read back by CMSIS kernels with the offset of their own n_levels_out: a "
        "ReLU into int8 is a signed RequantShift pair (clip around an offset, then add it back)",
        "its Conv/Gemm/MatMul-requant merges put the whole scale into CMSIS-NN's int32 Q31 multiplier "
        "(mul * 2^(31 - log2 div)), which overflows when the requant's gain mul / div is 1 or more: such a requant "
        "is refused",
        "Deeploy's CMSIS depthwise parser compares group with the first dimension of the weight after its own NHWC "
        "transposition has made it 1, so it rejects every depthwise Conv that Deeploy transposes: qirc writes a "
        "depthwise Conv already channels-last (Transpose -> Conv with channels_first = 0 in domain ai.deeploy -> "
        "RequantShift -> Transpose), which Deeploy's lowering leaves alone and maps to arm_depthwise_conv",
        "a depthwise Conv with a channel multiplier (C_out = M * C_in, M > 1) has no form",
        "global average pooling is Reshape [N*C, H*W] -> MatMul with an all-ones int8 [H*W, 1] -> per-tensor "
        "RequantShift (fused into RequantizedGemm, CMSIS fully connected) -> Reshape, its requant with gain 1 "
        "written mul = div = 1 (the only gain-1 multiplier the Q31 merge takes); a pool over one element is no op; "
        "windowed average pooling is the all-ones depthwise Conv in the channels-last form",
        "kernels take int8 tensors only: unsigned tensors are signed-normalised (zero point -128)",
    ),
)

TARGETS: Dict[str, DeeployTarget] = {t.name: t for t in (SIRACUSA, GENERIC, CORTEXM)}


def get_target(name) -> DeeployTarget:
    """The target called `name` (a DeeployTarget passes through); UsageError listing the targets otherwise."""
    if isinstance(name, DeeployTarget):
        return name
    try:
        return TARGETS[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown target '{name}'; targets: {', '.join(TARGETS)}") from None


def describe_targets() -> str:
    """The `qirc --list-targets` text: one line per target (name, description)."""
    lines = []
    width = max(len(n) for n in TARGETS)
    for t in TARGETS.values():
        lines.append(f"{t.name:<{width}}  {t.description}")
    return "\n".join(lines) + "\n"
