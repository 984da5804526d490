"""Tiled-flow forms: what DeeployTest's tiled flow (testMVP.py: L1/L2 tiling) takes on Siracusa.

Siracusa is deployed through Deeploy's tiler, which needs a tiling constraint for every node it maps.  PULPOpen maps
Pad to the Generic bindings, which have none ("'_Pad2DTemplate' object has no attribute 'tileConstraint'"), so on a
target with `pad_node = False` no int.pad survives: a padded tensor is always a Conv's own zero padding, which
pulp-nn's im2col writes as stored zeros (`pulp_zero_mem`).  PULP's Conv parsers take equal pads on all four sides
only, its per-tensor RequantShift binding has an int8 output only, and its per-channel RequantShift does not tile;
the rules here rewrite the integer IR into forms that avoid all three, exactly.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from ....qir.ir import Module, Operation, Value, const_op
from ....qir.types import ScalarType, TensorType, i32
from ..targets import DeeployTarget
from .clips import full_type, keeps_uint8, requant_range, shifted_type, value_range
from .common import FUSING, const_value, fail, int_const, is_8bit, sole_user, storage
from .harness import debug_pass_keeps
from .rule import rule

_I8 = ScalarType("i8")


def _unit_requant(module: Module, x: Value, offset: int, signed: bool, result_type: TensorType, loc: str,
                  target: DeeployTarget) -> Value:
    """RequantShift(mul = div = u, add = offset * u) of `x` with the full 8-bit clip: x + offset exactly
    (floor((u*x + u*offset + u/2) / u) = x + offset), u = 2 where the platform takes no div = 1."""
    u = max(target.clip_requant_unit, target.requant_div_min)
    return module.create("int.requant_shift", [x], [result_type],
                         {"mul": np.array([u], np.int64), "add": np.array([offset * u], np.int64), "div": u,
                          "signed": signed, "n_levels": 256}, loc).result


def spare_axes(shape: Sequence[int], pads: Sequence[int]) -> List[int]:
    """The axes (2 = H, 3 = W) along which `one_hot_pad(..., spare=True)` of a (N, C, H, W) tensor by pads [top,
    left, bottom, right] leaves spare zero rows (columns): those where the padded size is 1 (a singleton axis, as
    rank3-to-rank4 makes of a Conv1d's [N, C, L]) while the padding along the other axis is not 0."""
    t, l, b, r = (int(p) for p in pads)
    p = max(t, l, b, r)
    return [axis for axis, size in ((2, shape[2] + t + b), (3, shape[3] + l + r)) if size == 1 and p >= 1]


def one_hot_pad(module: Module, x: Value, pads: Sequence[int], loc: str, target: DeeployTarget,
                scale: int = 1, offset: int = 0, result_type: TensorType = None, spare: bool = False) -> Value:
    """`x` (N, C, H, W, 8-bit) zero-padded by [top, left, bottom, right] as a depthwise Conv with equal pads and a
    one-hot kernel, then an identity requant (fused into one RequantizedConv, pulp_nn_depthwise).

    With P = max(pads) on every side and a kernel of (2P - top - bottom + 1) x (2P - left - right + 1) whose only 1 sits
    at (P - top, P - left), output[i, j] = x_P[i + P - top, j + P - left] = x[i - top, j - left], or 0 outside x:
    exactly the padded tensor, of size (H + top + bottom) x (W + left + right).  The requant may instead compute
    scale * that + offset (into `result_type`, whose shape is then the padded one), still exactly.

    spare: along an axis whose padded size is 1 (`spare_axes`: a Conv1d's singleton axis, the padding being along
    the other) the kernel is P + 1 long with its 1 at P, so that the output is the padded tensor followed by P spare
    rows of zeros (P + 1 in all): Deeploy's tiler wants every output dim of a padded depthwise Conv to be at least
    1 + P (PULPOpen's DWConvTileConstraint), which a collapsed singleton axis never is.  The reader of the result
    must then skip the spare rows (a Conv with kernel 1 along that axis and stride P + 1 there)."""
    t, l, b, r = (int(p) for p in pads)
    n, c, h, w = x.type.shape
    p = max(t, l, b, r)
    kh, kw = 2 * p - t - b + 1, 2 * p - l - r + 1
    row, col = p - t, p - l
    out_h, out_w = h + t + b, w + l + r
    for axis in (spare_axes(x.type.shape, pads) if spare else []):
        if axis == 2:
            kh, row, out_h = p + 1, p, p + 1
        else:
            kw, col, out_w = p + 1, p, p + 1
    kernel = np.zeros((c, 1, kh, kw), np.int8)
    kernel[:, 0, row, col] = 1
    weights = const_op(module, kernel, TensorType(kernel.shape, _I8), loc)
    shape = (n, c, out_h, out_w)
    if result_type is not None:
        result_type = result_type.with_shape(shape)
    acc = module.create("int.conv", [x, weights], [TensorType(shape, i32)],
                        {"kernel_shape": [kh, kw], "pads": [p] * 4, "strides": [1, 1], "dilations": [1, 1],
                         "group": c}, loc).result
    if scale == 1:
        return _unit_requant(module, acc, offset, storage(x).signed, result_type or x.type.with_shape(shape),
                             loc + "/copy", target)
    u = max(target.clip_requant_unit, target.requant_div_min)
    return module.create("int.requant_shift", [acc], [result_type],
                         {"mul": np.array([scale * u], np.int64), "add": np.array([offset * u], np.int64), "div": u,
                          "signed": result_type.storage.signed, "n_levels": 256}, loc + "/copy").result


def _spatial(pad: Operation) -> List[int]:
    """The [top, left, bottom, right] of a rank-4 int.pad (ONNX pads: N, C, H, W begins, then ends)."""
    pads = [int(p) for p in pad.attr("pads")]
    return [pads[2], pads[3], pads[6], pads[7]]


def _shifted_signedness(x: Value, v: int, target: DeeployTarget):
    """True/False when x - v fits int8/uint8 (uint8 only where the platform keeps it), None when it fits neither."""
    lo, hi = value_range(x)
    if -128 <= lo - v and hi - v <= 127:
        return True
    if 0 <= lo - v and hi - v <= 255 and keeps_uint8(target):
        return False
    return None


def _shift_out(module: Module, x: Value, v: int, where: Operation, target: DeeployTarget, why: str) -> Value:
    """`x - v` as an 8-bit tensor (int8 when its values fit, else uint8), so that a padding value v becomes 0.

    A requant producing `x` for this use alone takes the shift in its add (add - v * div, exact: its clip moves with
    it); otherwise a RequantShift that only adds -v.  BackendError naming the remedy when x - v fits no 8-bit type."""
    signed = _shifted_signedness(x, v, target)
    if signed is None:
        lo, hi = value_range(x)
        lo, hi = lo - v, hi - v
        raise fail(where, target, f"{why} pads a tensor with zero point {v} whose values ({lo + v}..{hi + v}) do "
                                  f"not fit 8 bits once {v} is subtracted, and Deeploy's tiled flow has no Pad: "
                                  "quantize this activation with zero point 0 (a symmetric int8 or an unsigned "
                                  "quantizer) before it")
    new_type = full_type(shifted_type(x.type, v), signed) if x.type.is_quant else \
        TensorType(x.type.shape, _I8 if signed else ScalarType("u8"))
    rq = x.owner
    if rq.name == "int.requant_shift" and len(x.uses) == 1:
        r_lo, r_hi = requant_range(bool(rq.attr("signed")), int(rq.attr("n_levels")))
        if (r_lo - v, r_hi - v) == requant_range(signed, 256):
            rq.attrs["add"] = np.asarray(rq.attrs["add"], np.int64) - v * int(rq.attr("div"))
            rq.attrs["signed"], rq.attrs["n_levels"] = signed, 256
            x.type = new_type
            return x
    return _unit_requant(module, x, -v, signed, new_type, where.loc + "/zero_point", target)


def _add_conv_bias(module: Module, conv: Operation, delta: np.ndarray) -> None:
    """conv's bias += delta (one int per output channel); a conv without a bias gets one."""
    old = const_value(conv.operands[2]) if len(conv.operands) > 2 else None
    if len(conv.operands) > 2 and old is None:
        return  # a computed bias: check-forms refuses it
    bias = delta if old is None else np.asarray(old, np.int64).reshape(-1) + delta
    module.set_operands(conv, list(conv.operands[:2]) + [int_const(module, bias, conv.loc + "/bias")])


def _pad_into_convs(module: Module, pad: Operation, convs: List[Operation], target: DeeployTarget) -> None:
    """int.pad(x, v) -> Conv(pads 0)  becomes  Conv(x - v, its own pads), bias + v * sum(w[c]).

    Conv(pad(x, v)) = Conv(pad(x - v, 0)) + v * sum(w[c]) at every output (every tap of the window reads v + (x - v)
    or v + 0), and the Conv's own padding writes the zeros."""
    x, v = pad.operands[0], int(pad.attr("value"))
    spatial = _spatial(pad)
    if v:
        if _shifted_signedness(x, v, target) is None:
            return  # x - v fits no 8-bit type: border-padding writes the padding instead
        x = _shift_out(module, x, v, convs[0], target, "int.conv")
    for conv in convs:
        if v:
            w = const_value(conv.operands[1])
            if w is None:
                raise fail(conv, target, "int.conv with computed weights has no Deeploy form")
            _add_conv_bias(module, conv, v * w.astype(np.int64).reshape(w.shape[0], -1).sum(axis=1))
        own = [int(p) for p in conv.attr("pads") or [0, 0, 0, 0]]
        conv.attrs["pads"] = [a + b for a, b in zip(own, spatial)]
        module.set_operand(conv, 0, x)
    module.erase(pad)


def _pad_into_maxpools(module: Module, pad: Operation, pools: List[Operation], target: DeeployTarget) -> None:
    """int.pad(x, storage min) -> MaxPool  becomes  shift to uint8 (x - min) -> one-hot-kernel zero padding ->
    MaxPool -> shift back (+ min): max commutes with adding a constant, and the padding (the storage minimum, which
    never wins) is 0 after the shift.  A MaxPool1d's pad keeps spare zero rows that the pool strides over, as
    equal-conv-pads does for a Conv1d."""
    x, v = pad.operands[0], int(pad.attr("value"))
    shifted = _shift_out(module, x, v, pools[0], target, "int.maxpool") if v else x
    axes = spare_axes(x.type.shape, _spatial(pad))
    spare = all(_skips_spare_rows(pool, axes) for pool in pools)
    padded = one_hot_pad(module, shifted, _spatial(pad), pad.loc, target, spare=spare)
    for pool in pools:
        module.set_operand(pool, 0, padded)
        pool.attrs["pads"] = [0] * len(pool.attr("pads") or [0, 0, 0, 0])
        if spare:
            _stride_over_spare_rows(pool, axes, padded.type.shape)
        out = pool.result
        if v:
            out_type = out.type
            out.type = padded.type.with_shape(out_type.shape)
            back = module.create("int.requant_shift", [out], [out_type],
                                 {"mul": np.array([2], np.int64), "add": np.array([2 * v], np.int64), "div": 2,
                                  "signed": out_type.storage.signed, "n_levels": 256}, pool.loc + "/zero_point")
            module.replace_all_uses(out, back.result, except_ops=[back])
    module.erase(pad)


@rule("zero-padding", when="not pad_node")
def zero_padding(module: Module, target: DeeployTarget) -> None:
    """Every int.pad becomes a Conv's own zero padding (the platform's tiled flow has no Pad): int.pad(x, v) -> Conv
    becomes Conv(x - v) with the pads and v * sum(w) in its bias; int.pad -> MaxPool becomes a shift to uint8, a
    one-hot depthwise Conv that zero-pads, the MaxPool and the shift back.

    x - v is a requant's add when x comes from a requant used only there, else a RequantShift that adds -v; it must
    fit 8 bits (a ReLU output or a zero point of -128/128 do), otherwise the error names the remedy: an activation
    quantizer with zero point 0 before the Conv."""
    for pad in list(module.walk("int.pad")):
        users = [u for u, _ in pad.result.uses]
        if pad.result.type.rank != 4:
            raise fail(pad, target, "int.pad of a tensor that is not NCHW has no tiled form on this platform")
        if users and all(u.name == "int.conv" and u.operands[0] is pad.result for u in users):
            _pad_into_convs(module, pad, users, target)
        elif users and all(u.name == "int.maxpool" for u in users):
            _pad_into_maxpools(module, pad, users, target)
        else:
            raise fail(pad, target, "int.pad has no tiled form on this platform (Deeploy's Pad has no tiling "
                                    "constraint; only a Conv's or MaxPool's padding can be rewritten)")
    module.erase_dead()


def _ones_params(lo: int, hi: int) -> dict:
    """RequantShift parameters that map every x in [lo, hi] to 1, with add a multiple of mul that DeeployTest's debug
    pass leaves alone (a mul of 0, the obvious form, has its add zeroed by the pass: round(add / 1e-3) * 0).

    With D a power of two at least 2 (hi - lo + 1) and D - lo <= a <= 3D/2 - hi - 1, D <= x + a and x + a + D/2 < 2D,
    so floor((x + a [+ D/2]) / D) = 1 with or without the rounding term; (mul, add, div) = (m, m a, m D) for the
    smallest power of two m whose k = a the pass keeps (|a| below about 500 m)."""
    d = 1 << max(1, (2 * (hi - lo + 1) - 1).bit_length())
    a = (d - lo + (3 * d // 2 - hi - 1)) // 2
    m = 1
    while not debug_pass_keeps(m, m * a):
        m *= 2
    return {"mul": np.array([m], np.int64), "add": np.array([m * a], np.int64), "div": m * d}


@rule("border-padding", when="not pad_node")
def border_padding(module: Module, target: DeeployTarget) -> None:
    """An int.pad(x, v) that zero-padding left (x - v fits no 8-bit type) becomes the sum, in one RequantizedAdd, of
    x zero-padded and a border tensor that holds v on the border and 0 inside, both made by one-hot depthwise Convs:
    ones = RequantShift(x) = 1 (`_ones_params`); border = v - v * one_hot_pad(ones); padded = one_hot_pad(x) + border.

    Exact: inside, x + 0; on the border, 0 + v; every term is 8-bit, so pulp_nn_add's clips change nothing.  Its
    cost is three depthwise Convs and an Add per padded tensor; a zero point that can be shifted out is cheaper
    (zero-padding).  The ones requant reads x with a nonzero mul and a wide div (not mul 0: DeeployTest's debug
    pass zeroes the add of a mul-0 requant, which made the ones zeros and the border v everywhere)."""
    for pad in list(module.walk("int.pad")):
        x, v = pad.operands[0], int(pad.attr("value"))
        spatial = _spatial(pad)
        out = pad.result
        loc = pad.loc or "pad"
        users = [u for u, _ in out.uses]
        axes = spare_axes(x.type.shape, spatial)
        spare = bool(users) and all(u.name == "int.conv" and u.operands[0] is out and _skips_spare_rows(u, axes)
                                    for u in users)
        ones = module.create("int.requant_shift", [x], [TensorType(x.type.shape, _I8)],
                             dict(_ones_params(*value_range(x)), signed=True, n_levels=256), loc + "/ones").result
        border_type = TensorType(out.type.shape, _I8 if v <= 127 else ScalarType("u8"))
        border = one_hot_pad(module, ones, spatial, loc + "/border", target, scale=-v, offset=v,
                             result_type=border_type, spare=spare)
        inside = one_hot_pad(module, x, spatial, loc + "/inside", target, spare=spare)
        shape = inside.type.shape
        total = module.create("int.add", [inside, border], [TensorType(shape, i32)], {}, loc + "/add").result
        padded = _unit_requant(module, total, 0, storage(out).signed, out.type.with_shape(shape), loc, target)
        module.replace_all_uses(out, padded)
        module.erase(pad)
        if spare:
            for conv in users:
                _stride_over_spare_rows(conv, axes, shape)
    module.erase_dead()


@rule("equal-conv-pads", when="not pad_node")
def equal_conv_pads(module: Module, target: DeeployTarget) -> None:
    """A Conv whose pads differ per side keeps the smallest pad q on all four sides; the rest comes from a one-hot
    depthwise Conv in front (`one_hot_pad`): PULP's Conv parsers take only equal pads, and the tiled flow no Pad.

    Exact: both pad with stored zeros, which is what the Conv's own padding is (a zero point has been shifted out by
    zero-padding).  A Conv1d (lifted to [N, C, 1, L], its padding along L only) gets P spare zero rows under its one
    row and strides over them (`one_hot_pad`'s `spare`): the tiler takes a padded depthwise Conv only when each of
    its output dims is at least 1 + P."""
    for conv in list(module.walk("int.conv")):
        pads = [int(p) for p in conv.attr("pads") or []]
        if len(set(pads)) <= 1:
            continue
        x = conv.operands[0]
        if x.type.rank != 4 or len(pads) != 4:
            raise fail(conv, target, f"int.conv with pads {pads} on a tensor that is not NCHW has no form on this "
                                     "platform (its Conv parsers take equal pads only)")
        q = min(pads)
        rest = [p - q for p in pads]
        axes = spare_axes(x.type.shape, rest)
        spare = _skips_spare_rows(conv, axes)
        padded = one_hot_pad(module, x, rest, conv.loc + "/pad", target, spare=spare)
        module.set_operand(conv, 0, padded)
        conv.attrs["pads"] = [q] * 4
        if spare:
            _stride_over_spare_rows(conv, axes, padded.type.shape)


def _skips_spare_rows(conv: Operation, axes: Sequence[int]) -> bool:
    """Whether `conv` (a Conv or MaxPool) can read a padded input with spare rows along `axes` by striding over
    them: kernel 1 and no own padding along each (the Conv1d lifted to [N, C, 1, L]); False when there are none."""
    if not axes:
        return False
    kernel = [int(k) for k in conv.attr("kernel_shape")]
    pads = [int(p) for p in conv.attr("pads") or [0, 0, 0, 0]]
    return all(kernel[axis - 2] == 1 and pads[axis - 2] == 0 and pads[axis] == 0 for axis in axes)


def _stride_over_spare_rows(conv: Operation, axes: Sequence[int], padded_shape: Sequence[int]) -> None:
    """Give `conv` a stride of the padded size along each of `axes`, where its input, padded by
    `one_hot_pad(..., spare=True)`, holds one row followed by spare rows of zeros: it reads row 0 only, as before
    (its output has one row there either way)."""
    strides = [int(v) for v in conv.attr("strides") or [1, 1]]
    for axis in axes:
        strides[axis - 2] = int(padded_shape[axis])
    conv.attrs["strides"] = strides


def _feeds_requantized_add(rqs: Operation) -> bool:
    """`rqs` is a per-tensor operand of an Add whose requant the platform fuses with both into RequantizedAdd."""
    add = sole_user(rqs.result)
    if add is None or add.name != "int.add":
        return False
    out = sole_user(add.result)
    per_tensor = all(np.asarray(rqs.attrs[k]).size == 1 for k in ("mul", "add"))
    return out is not None and out.name == "int.requant_shift" and per_tensor


@rule("unsigned-requants-fused", when="unsigned_requant_fused")
def unsigned_requants_fused(module: Module, target: DeeployTarget) -> None:
    """A RequantShift with an unsigned output that the platform would run on its own gets an identity depthwise 1x1
    Conv (weights 1) in front, so that it is fused into RequantizedConv (pulp_nn_depthwise with a uint8 output):
    Siracusa's per-tensor RequantShift binding outputs int8 only and its per-channel one does not tile.  A tensor
    that is not NCHW is reshaped to [N, C, 1, 1] (or [N, C, L, 1]) around it.

    Exact: the Conv copies its 8-bit input into the int32 accumulator; pulp-nn clips to 0..255, which is the
    requant's own range (a narrower unsigned clip was split off by fold-clips)."""
    for rqs in list(module.walk("int.requant_shift")):
        if bool(rqs.attr("signed")) or int(rqs.attr("n_levels")) > 256:
            continue  # (wider than 8 bits: requant-params refuses it, naming its n_levels)
        x = rqs.operands[0]
        if x.owner.name in FUSING and sole_user(x) is rqs or _feeds_requantized_add(rqs):
            continue
        if not is_8bit(x):
            raise fail(rqs, target, "an unsigned requant_shift of a computed int32 tensor has no form on this "
                                    "platform (it must be fused with the op before it)")
        shape = tuple(x.type.shape)
        if len(shape) < 2 or len(shape) > 4:
            raise fail(rqs, target, f"an unsigned requant_shift of a rank-{len(shape)} tensor has no form on this "
                                    "platform")
        c = shape[1]
        out = rqs.result
        if len(shape) == 2 and any(u.name == "qir.output" for u, _ in out.uses):
            _identity_gemm(module, rqs, target)  # (a graph may not end in a Reshape)
            continue
        shape4 = shape + (1,) * (4 - len(shape))
        x4 = x if len(shape) == 4 else module.create("int.reshape", [x], [x.type.with_shape(shape4)],
                                                     {"shape": list(shape4)}, rqs.loc + "/nchw").result
        ones = const_op(module, np.ones((c, 1, 1, 1), np.int8), TensorType((c, 1, 1, 1), _I8), rqs.loc)
        acc = module.create("int.conv", [x4, ones], [TensorType(shape4, i32)],
                            {"kernel_shape": [1, 1], "pads": [0, 0, 0, 0], "strides": [1, 1], "dilations": [1, 1],
                             "group": c}, rqs.loc + "/copy").result
        params = {}
        for name in ("mul", "add"):
            a = np.asarray(rqs.attrs[name], np.int64)
            params[name] = a.reshape(-1) if a.size == 1 else a.reshape(1, c, 1, 1)
        fused = module.create("int.requant_shift", [acc], [out.type.with_shape(shape4)], {**rqs.attrs, **params},
                              rqs.loc).result
        if len(shape) != 4:
            fused = module.create("int.reshape", [fused], [out.type], {"shape": list(shape)}, rqs.loc + "/back").result
        module.replace_all_uses(out, fused)
        module.erase(rqs)
    module.erase_dead()


def _identity_gemm(module: Module, rqs: Operation, target: DeeployTarget) -> None:
    """The unsigned requant of a [N, C] graph output behind an identity Gemm (RequantizedGemm, pulp_nn_linear with a
    uint8 output): the Gemm copies its 8-bit input, at the cost of a C x C int8 identity (refused beyond 256)."""
    x = rqs.operands[0]
    n, c = x.type.shape
    if c > 256:
        raise fail(rqs, target, f"an unsigned requant_shift of a {c}-wide graph output has no form on this platform "
                                "(it must be fused; an identity Gemm is refused beyond 256 channels)")
    eye = const_op(module, np.eye(c, dtype=np.int8), TensorType((c, c), _I8), rqs.loc)
    zero = int_const(module, np.zeros((c,), np.int64), rqs.loc + "/bias")
    acc = module.create("int.gemm", [x, eye, zero], [TensorType((n, c), i32)], {"transA": 0, "transB": 1},
                        rqs.loc + "/copy").result
    module.set_operand(rqs, 0, acc)


@rule("requant-div-min", when="requant_div_min == 2")
def requant_div_min(module: Module, target: DeeployTarget) -> None:
    """A RequantShift with div = 1 becomes (2 mul, 2 add, div 2): floor((2 (x mul + add) + 1) / 2) = x mul + add, the
    same integers.  PULP's RequantShift kernel adds 1 << (log2D - 1), undefined for log2D = 0, and its Gemm merge
    adds 2**(log2D - 1) = 0.5 to the bias (pulp-nn's own kernels add no rounding term: Deeploy's merges put div/2
    into add)."""
    for rqs in module.walk("int.requant_shift"):
        div = int(rqs.attr("div"))
        if div >= target.requant_div_min or div < 1:
            continue
        factor = target.requant_div_min // div
        rqs.attrs["mul"] = np.asarray(rqs.attrs["mul"], np.int64) * factor
        rqs.attrs["add"] = np.asarray(rqs.attrs["add"], np.int64) * factor
        rqs.attrs["div"] = div * factor
