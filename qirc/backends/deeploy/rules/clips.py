"""Clips: Deeploy has no integer Clip, so every int.clip becomes RequantShift levels (targets.CLIP_FORMS)."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ....qir.ir import Module, Operation, Value
from ....qir.types import TensorType, i8, u8
from ..targets import DeeployTarget
from .common import FUSING, fail
from .rule import rule


def requant_range(signed: bool, n_levels: int) -> Tuple[int, int]:
    """The output range of a RequantShift with (signed, n_levels)."""
    return (-(n_levels // 2), n_levels // 2 - 1) if signed else (0, n_levels - 1)


def _clip_levels(lo: int, hi: int) -> Optional[Tuple[bool, int]]:
    """The RequantShift (signed, n_levels) whose output range is exactly lo..hi, or None."""
    for signed in (True, False):
        n_levels = (hi + 1) * 2 if signed else hi + 1
        if n_levels >= 2 and requant_range(signed, n_levels) == (lo, hi):
            return signed, n_levels
    return None


def keeps_uint8(target: DeeployTarget) -> bool:
    """The platform's kernels take uint8 tensors (no signed normalisation): an unsigned 0..255 range is a form."""
    return not target.signed_normalize


def _full_range(signed: bool, n_levels: int, target: DeeployTarget) -> bool:
    """(signed, n_levels) is the full 8-bit range of a type the platform's fused kernels write (they clip to it)."""
    return n_levels == 256 and (signed or keeps_uint8(target))


def full_type(t: TensorType, signed: bool) -> TensorType:
    """`t` with the full 8-bit storage of the given signedness (same zero point, so the same real values)."""
    if signed:
        return shifted_type(t, 0)
    element = t.element.with_(storage=u8, storage_min=0, storage_max=255) if t.is_quant else u8
    return TensorType(t.shape, element)


def shifted_type(t: TensorType, shift: int) -> TensorType:
    """`t` with int8 storage and its values lowered by `shift` (the zero point follows, so that the real values stay)."""
    element = t.element
    if t.is_quant:
        element = element.with_(storage=i8, storage_min=-128, storage_max=127,
                                zero_points=tuple(z - shift for z in element.zero_points))
    else:
        element = i8
    return TensorType(t.shape, element)


def _unit_requant(module: Module, x: Value, offset: int, signed: bool, n_levels: int, result_type: TensorType,
                  loc: str, target: DeeployTarget, names=()) -> Value:
    """RequantShift(mul = div = u, add = offset * u) of `x`: x + offset clipped to (signed, n_levels).

    floor((x * u + offset * u + u / 2) / u) = x + offset for u = 1 (Deeploy's kernels shift by log2(div) = 0 and add
    no rounding term) and u = 2; u is the target's clip_requant_unit."""
    unit = target.clip_requant_unit
    return module.create("int.requant_shift", [x], [result_type],
                         {"mul": np.array([unit], np.int64), "add": np.array([offset * unit], np.int64), "div": unit,
                          "signed": signed, "n_levels": n_levels}, loc, list(names)).result


def value_range(v: Value) -> Tuple[int, int]:
    """Bounds on the integers `v` holds: its element type's range, narrowed by the clip of a requant producing it."""
    lo, hi = int(v.type.element.min), int(v.type.element.max)
    if v.owner.name == "int.requant_shift":
        r_lo, r_hi = requant_range(bool(v.owner.attr("signed")), int(v.owner.attr("n_levels")))
        lo, hi = max(lo, r_lo), min(hi, r_hi)
    return lo, hi


def _shifted_clip_levels(lo: int, hi: int, x_range: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """(c, n) with clip(x, lo, hi) = clip(x - c, -n/2, n/2 - 1) + c for every x in `x_range`, n even and at most
    256; or None.  An odd count of levels grows by one on a side that `x_range` never reaches (a ReLU's upper bound
    is usually the storage maximum), which changes nothing there."""
    n = hi - lo + 1
    if n % 2:
        if x_range[1] <= hi:
            hi += 1
        elif x_range[0] >= lo:
            lo -= 1
        else:
            return None
        n += 1
    if n < 2 or n > 256:
        return None
    return lo + n // 2, n


def _clip_requants(module: Module, clip: Operation, x: Value, lo: int, hi: int, target: DeeployTarget) -> Value:
    """The clip of `x` to lo..hi as RequantShifts that only clip, in the target's clip_form (targets.CLIP_FORMS);
    the result takes the clip's type and name.  BackendError when the range has no such form.

    One RequantShift when its (signed, n_levels) range is lo..hi (only signed ranges on "shifted" targets);
    otherwise two: clip(x - c, -n/2, n/2 - 1), then + c with the full 8-bit clip of the result's signedness."""
    out = clip.result
    levels = _clip_levels(lo, hi)
    if levels is not None and (target.clip_form == "levels" or levels[0] or _full_range(*levels, target)):
        return _unit_requant(module, x, 0, *levels, out.type, clip.loc, target, [out.name])
    int8_only = not keeps_uint8(target)
    shifted = _shifted_clip_levels(lo, hi, value_range(x))
    fits_8bit = -128 <= lo and hi <= 127 or (not int8_only and 0 <= lo and hi <= 255)
    if shifted is None or not fits_8bit:
        raise fail(clip, target, f"int.clip to {lo}..{hi} has no form on this platform (a RequantShift clips to "
                                 "an even number of levels within 8 bits; Deeploy has no integer Clip)")
    c, n = shifted
    centred = _unit_requant(module, x, -c, True, n, shifted_type(out.type, c), clip.loc, target)
    signed = hi <= 127
    result_type = out.type
    if out.type.is_quant and out.type.element.narrow:
        # the second RequantShift states the full 8-bit clip (its kernel's); the values stay within lo..hi, but the
        # result's declared storage range must hold what the op can write (a 4-bit ReLU: i8<-128:-113>)
        full_lo, full_hi = _requant_range(signed, 256)
        result_type = TensorType(out.type.shape, out.type.element.with_(storage_min=full_lo, storage_max=full_hi))
    return _unit_requant(module, centred, c, signed, 256, result_type, clip.loc + "/offset", target, [out.name])


def _fuses_requant(rqs: Operation) -> bool:
    """The platform fuses `rqs` with the op before it into one kernel."""
    return rqs.operands[0].owner.name in FUSING


@rule("fold-clips")
def fold_clips(module: Module, target: DeeployTarget) -> None:
    """Every int.clip becomes RequantShift levels (Deeploy has no integer Clip).

    A clip after a requant that it alone uses folds into the requant's (signed, n_levels) when the target can
    state that range there (clip_form "levels", or a symmetric signed range) and its fused kernels honour it.
    Anywhere else (a clip of a graph input, of a requant that also feeds a residual Add, or a range the requant
    cannot state) it becomes RequantShifts that only clip (`_clip_requants`) placed after the requant, whose own
    form stays: duplicating the requant with the clip folded in would give the Conv or Add before it a second user,
    and the platforms fuse those with their requant only when it is the only one.  Both are exact:
    clip(clip(v, a), b) is the clip to the intersection of a and b.  On "shifted" targets a requant whose own range
    the platform cannot take (unsigned, or narrower than int8 in a kernel that clips to int8) is first split the same
    way (`split_requant_clip`); on a platform that keeps uint8 tensors (Siracusa) an unsigned requant to the full
    0..255 is a form, and one that must be fused (`unsigned_requant_fused`) counts as fused."""
    if target.clip_form == "shifted":
        for rqs in module.walk("int.requant_shift"):
            signed, n_levels = bool(rqs.attr("signed")), int(rqs.attr("n_levels"))
            lo, hi = requant_range(signed, n_levels)
            if lo < -128 or hi > (255 if keeps_uint8(target) else 127):
                continue  # not an 8-bit range: its own form, or refused with its n_levels by the later checks
            fused = _fuses_requant(rqs) or (not signed and target.unsigned_requant_fused)
            ignored = not target.fused_requant_levels and fused and not _full_range(signed, n_levels, target)
            if (not signed and not keeps_uint8(target)) or ignored:
                split_requant_clip(module, rqs, target)
    for clip in module.walk("int.clip"):
        x = clip.operands[0]
        rqs = x.owner
        lo, hi = int(clip.attr("min")), int(clip.attr("max"))
        if rqs.name == "int.requant_shift":
            cur_lo, cur_hi = requant_range(bool(rqs.attr("signed")), int(rqs.attr("n_levels")))
            lo, hi = max(lo, cur_lo), min(hi, cur_hi)
            if (lo, hi) == (cur_lo, cur_hi):  # the requant already clips at least as much
                module.replace_op(clip, [x])
                continue
            levels = _clip_levels(lo, hi)
            # beyond 8 bits the fold is kept so that the requant's check names its n_levels
            full = levels is not None and _full_range(*levels, target)
            foldable = levels is not None and len(x.uses) == 1 and (levels[1] > 256 or full or (
                (target.clip_form == "levels" or levels[0]) and
                (target.fused_requant_levels or not _fuses_requant(rqs))))
            if foldable:
                rqs.attrs["signed"], rqs.attrs["n_levels"] = levels
                rqs.results[0].type = clip.result.type
                module.replace_op(clip, [rqs.result])
                continue
        module.replace_op(clip, [_clip_requants(module, clip, x, lo, hi, target)])


def split_requant_clip(module: Module, rqs: Operation, target: DeeployTarget) -> Operation:
    """A requant clipping to less than int8 (a ReLU folded into it) as the full int8 requant followed by
    RequantShifts that only clip (`_clip_requants`), for when the platform cannot take that clip in the requant
    itself: its fused kernel clips to the full 8-bit range of its output type whatever n_levels_out says (Siracusa's
    RequantizedConv/Gemm/Add), or the range is unsigned on an int8-only platform (targets.CLIP_FORMS "shifted").
    Exact: clip(clip(v, full), r) = clip(v, r) for a range r inside the full one, which is int8, or uint8 0..255
    for a range above 127 on a platform that keeps uint8 tensors.  Returns the full-range requant."""
    lo, hi = requant_range(bool(rqs.attr("signed")), int(rqs.attr("n_levels")))
    unsigned = keeps_uint8(target) and lo >= 0 and hi > 127
    if lo < -128 or hi > (255 if unsigned else 127):
        raise fail(rqs, target, f"a requant to {lo}..{hi} has no form on this platform (its kernels clip to "
                                f"{'uint8 0..255' if keeps_uint8(target) else 'int8 -128..127'})")
    out = rqs.result
    full = module.create("int.requant_shift", [rqs.operands[0]], [full_type(out.type, not unsigned)],
                         {**rqs.attrs, "signed": not unsigned, "n_levels": 256}, rqs.loc)
    # the clip op stands for the requant's own clip: the RequantShifts after the full one take its place and name
    clip = module.create("int.clip", [full.result], [out.type], {"min": lo, "max": hi}, rqs.loc + "/clip",
                         [out.name])
    module.replace_op(rqs, [clip.result])
    module.replace_op(clip, [_clip_requants(module, clip, full.result, lo, hi, target)])
    return full
