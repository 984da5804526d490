"""Legalisation: integer IR -> integer IR in the forms a Deeploy platform accepts.

The input is the output of the `lower-to-int` pipeline: only `qir.*` and `int.*` ops.  The output is still `int.*`, but
every op is one that `emit.py` writes as a single ONNX node the target maps, with the attribute forms Deeploy reads
(DESIGN.md section 4).  Each rewrite keeps the module's integer semantics exactly, except the Siracusa residual Add,
which is rewritten into the form its fused kernel computes (documented at `_requantized_add`); what a target cannot
take raises a `BackendError` naming the node, the op and the target.

Rewrites, in order (`legalize(module, target)`):
  1. only qir.* / int.* ops are accepted;
  2. squeeze / unsqueeze / flatten become int.reshape (every platform maps Reshape);
  3. int.sub by a constant becomes int.add of the negated constant;
  4. integer sum pools (int.reduce_sum over H, W; int.sumpool) take the target's `sum_pool` form: a depthwise
     int.conv with an all-ones kernel, or (global pools) reshape -> int.matmul with an all-ones column (ReduceMean/
     ReduceSum are unusable in Deeploy); a reshape left between that conv/matmul and its requant moves after it;
  4b. on a target without depthwise Convs and with dense_depthwise_cap_kib > 0, a depthwise int.conv becomes the
     dense int.conv with the block-diagonal kernel that computes the same integers, within the target's size cap
     (a channels-last depthwise Conv is an emission form: `emit.py` writes it, the IR keeps NCHW);
  5. Gemm: a constant B is transposed to transB=1, and a missing bias becomes an int32 zero bias;
  6. a Conv bias, and a constant int.add in front of a requant, fold into the requant's `add` (add' = add + b * mul);
  7. int.clip after a requant that it alone uses folds into the requant's (signed, n_levels) when the target can
     state its bounds there; any other clip (of a graph input, of a requant with several users) becomes
     RequantShifts that only clip, in the target's clip form (targets.CLIP_FORMS);
  8. residual adds take the target's form (targets.RESIDUAL_ADD_FORMS); on Siracusa a residual requant clipping to
     less than int8 (a ReLU after the Add) is split into the full-range requant and RequantShifts that only clip;
  9. requant mul/add are reshaped per the contract ([1,C,1,1] after a 4-D tensor, [C] after a 2-D one, [1] per tensor);
 10. a graph output produced by a reshape is fixed (the reshape moves before the last requant) or refused;
 11. every op is checked against the target (dilations, groups, pads, Concat, bare Conv, 8-bit operands, and on
     CMSIS the Q31 multiplier that its Conv/Gemm/MatMul merge makes of a requant: gains >= 1 overflow it).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Optional, Tuple

import numpy as np

from ...qir.diagnostics import BackendError
from ...qir.ir import Module, Operation, Value, const_op, pad_op
from ...qir.types import ScalarType, TensorType, i8, i32
from .targets import DeeployTarget, get_target
from .transformer_forms import check_transformer_forms, flatten_batched_matmuls

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

#: int ops the emitter can write (after legalisation)
EMITTABLE = frozenset({"int.conv", "int.gemm", "int.matmul", "int.add", "int.mul", "int.requant_shift", "int.maxpool",
                       "int.pad", "int.reshape", "int.transpose", "int.concat",
                       "int.isoftmax", "int.ilayernorm", "int.igelu"})


def _fail(op: Operation, target: DeeployTarget, message: str) -> BackendError:
    return BackendError(f"{message} (target {target.name})", loc=op.loc or None, op=op.name)


def _const_value(v: Value) -> Optional[np.ndarray]:
    """The value of a qir.const, or None when `v` is computed."""
    return np.asarray(v.owner.attrs["value"]) if v.owner.name == "qir.const" else None


def _int_const(module: Module, array, loc: str, elem: ScalarType = i32) -> Value:
    array = np.asarray(array)
    return const_op(module, array.astype(elem.np_dtype), TensorType(array.shape, elem), loc)


def _storage(v: Value) -> ScalarType:
    return v.type.storage


def _is_8bit(v: Value) -> bool:
    return _storage(v).width <= 8


def _sole_user(v: Value) -> Optional[Operation]:
    """The only op using `v` (once), or None."""
    return v.uses[0][0] if len(v.uses) == 1 else None


# ----- 2. shape ops -> reshape -----------------------------------------------------------------------------------
def _canonicalize_shape_ops(module: Module) -> None:
    for op in module.walk():
        if op.name in ("int.squeeze", "int.unsqueeze", "int.flatten"):
            out = op.result
            new = module.create("int.reshape", [op.operands[0]], [out.type], {"shape": list(out.type.shape)}, op.loc,
                                [out.name])
            module.replace_op(op, [new.result])


# ----- 3. sub by a constant --------------------------------------------------------------------------------------
def _sub_to_add(module: Module, target: DeeployTarget) -> None:
    for op in module.walk("int.sub"):
        c = _const_value(op.operands[1])
        if c is None:
            raise _fail(op, target, "int.sub of two computed tensors has no Deeploy form")
        neg = _int_const(module, -c.astype(np.int64), op.loc, i32)
        new = module.create("int.add", [op.operands[0], neg], [op.result.type], {}, op.loc, [op.result.name])
        module.replace_op(op, [new.result])


# ----- 4. sum pools -> depthwise all-ones conv, or all-ones matmul ------------------------------------------------
def _sum_pools(module: Module, target: DeeployTarget) -> None:
    """Rewrite every integer sum pool into the target's `sum_pool` form (targets.POOL_FORMS)."""
    pool_matmuls = []
    for op in module.walk():
        if op.name not in ("int.reduce_sum", "int.sumpool"):
            continue
        x = op.operands[0]
        if x.type.rank != 4:
            raise _fail(op, target, f"{op.name} of a rank-{x.type.rank} tensor has no Deeploy form (only NCHW "
                                    "spatial sums are supported)")
        if target.sum_pool is None:
            raise _fail(op, target, "integer average pooling has no working form on this platform")
        n, c, h, w = x.type.shape
        if op.name == "int.reduce_sum":
            axes = sorted(a % 4 for a in op.attr("axes"))
            if axes != [2, 3]:
                raise _fail(op, target, f"int.reduce_sum over axes {axes} has no Deeploy form (only the spatial "
                                        "axes 2, 3 of NCHW)")
            kernel, pads, strides = [h, w], [0, 0, 0, 0], [1, 1]
        else:
            kernel = list(op.attr("kernel_shape"))
            pads = list(op.attr("pads") or [0, 0, 0, 0])
            strides = list(op.attr("strides") or [1, 1])
        if target.sum_pool == "ones-matmul":
            if kernel != [h, w] or any(pads):
                raise _fail(op, target, f"windowed average pooling (window {kernel} over {h}x{w}, pads {pads}) has "
                                        "no form on this platform (only global pools: its depthwise Conv is "
                                        "rejected)")
            pool_matmuls.append(_global_sum_to_matmul(module, op))
        else:
            _sum_pool_to_conv(module, op, target, kernel, pads, strides)
    _sink_reshapes_below_requant(module)
    for mm in pool_matmuls:
        # the form is proven as MatMul fused with its requant (one fully-connected kernel); a bare MatMul is not
        user = _sole_user(mm.result)
        if user is None or user.name != "int.requant_shift":
            raise _fail(mm, target, "a global average pool must be followed by a per-tensor requant_shift (its only "
                                    "user, possibly behind reshapes) on this platform")


def _global_sum_to_matmul(module: Module, op: Operation) -> Operation:
    """A global sum over H, W of [N,C,H,W] as  Reshape [N*C, H*W] -> MatMul(ones [H*W, 1]) -> Reshape.

    The sum of each row is exact in int32 (|x| <= 255, H*W < 2^23).  The trailing reshape sits between the MatMul and
    the requant that divides by the count until `_sink_reshapes_below_requant` moves it below, so that the platform
    fuses MatMul + RequantShift (CMSIS: RequantizedGemm, one fully-connected call over N*C rows of H*W)."""
    x = op.operands[0]
    n, c, h, w = x.type.shape
    rows = x.type.with_shape((n * c, h * w))
    flat = module.create("int.reshape", [x], [rows], {"shape": [n * c, h * w]}, op.loc + "/rows").result
    ones = const_op(module, np.ones((h * w, 1), np.int8), TensorType((h * w, 1), ScalarType("i8")), op.loc)
    out = op.result
    matmul = module.create("int.matmul", [flat, ones], [TensorType((n * c, 1), out.type.element)], {}, op.loc,
                           [out.name])
    back = module.create("int.reshape", [matmul.result], [out.type], {"shape": list(out.type.shape)},
                         op.loc + "/reshape").result
    module.replace_op(op, [back])
    return matmul


def _sum_pool_to_conv(module: Module, op: Operation, target: DeeployTarget, kernel, pads, strides) -> None:
    """A sum pool as a depthwise Conv with an all-ones kernel (group = channels)."""
    x = op.operands[0]
    n, c, h, w = x.type.shape
    conv_shape = (n, c, (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1,
                  (w + pads[1] + pads[3] - kernel[1]) // strides[1] + 1)
    out = op.result
    if op.name == "int.sumpool" and tuple(conv_shape) != tuple(out.type.shape):
        raise _fail(op, target, "int.sumpool with ceil_mode rounding up has no Deeploy form")
    if any(pads):
        # int.sumpool's padding adds zeros: an explicit zero Pad says so (the Conv's own padding is refused for
        # zero-point-shifted tensors, and CMSIS-style parsers take unpadded depthwise Convs)
        padded = TensorType((n, c, h + pads[0] + pads[2], w + pads[1] + pads[3]), x.type.element)
        x = module.create("int.pad", [x], [padded], {"pads": [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]],
                                                      "value": 0}, op.loc + "/pad").result
        pads = [0, 0, 0, 0]
    ones = const_op(module, np.ones((c, 1, kernel[0], kernel[1]), np.int8),
                    TensorType((c, 1, kernel[0], kernel[1]), ScalarType("i8")), op.loc)
    acc_type = TensorType(conv_shape, out.type.element)
    conv = module.create("int.conv", [x, ones], [acc_type],
                         {"kernel_shape": kernel, "pads": pads, "strides": strides, "dilations": [1, 1],
                          "group": c}, op.loc, [out.name])
    result = conv.result
    if tuple(conv_shape) != tuple(out.type.shape):  # reduce_sum with keepdims = 0
        result = module.create("int.reshape", [result], [out.type], {"shape": list(out.type.shape)},
                               op.loc + "/reshape").result
    module.replace_op(op, [result])


# ----- 4b. depthwise conv -> dense block-diagonal conv ---------------------------------------------------------
def _depthwise_to_dense(module: Module, target: DeeployTarget) -> None:
    """Rewrite every depthwise int.conv (group == C_in, C_out a multiple of it) into the dense int.conv (group 1)
    whose kernel is block-diagonal: w_dense[o, i] = w_dw[o, 0] if i == o // multiplier else 0.

    Each output channel o still sums x[o // multiplier] * w_dw[o] over the window and adds exact zeros for every
    other input channel, so the integers are the same; the cost is C_in times the weights and MACs, which is why a
    layer whose dense kernel exceeds the target's cap is refused rather than expanded.  Only for targets that take
    no depthwise Conv at all (verified on Deeploy's CMSIS platform with depthwise Convs disabled; deeploy-cortexm
    itself writes them channels-last)."""
    if target.depthwise_conv or target.dense_depthwise_cap_kib <= 0:
        return
    cap_bytes = target.dense_depthwise_cap_kib * 1024
    for op in module.walk("int.conv"):
        group = int(op.attr("group"))
        x, w = op.operands[0], op.operands[1]
        c_in, c_out = x.type.shape[1], op.result.type.shape[1]
        if group == 1 or group != c_in or c_out % c_in or w.type.shape[1] != 1:
            continue  # dense, or grouped in a way _check refuses with its own message
        w_dw = _const_value(w)
        if w_dw is None:
            continue  # _check refuses computed weights
        multiplier = c_out // c_in
        dense_shape = (c_out, c_in) + tuple(w.type.shape[2:])
        dense_bytes = int(np.prod(dense_shape)) * max(1, _storage(w).width // 8)
        if dense_bytes > cap_bytes:
            raise BackendError(f"depthwise conv would need {-(-dense_bytes // 1024)} KiB of dense weights on "
                               f"{target.name} (cap {target.dense_depthwise_cap_kib} KiB); the platform takes no "
                               "depthwise Conv", loc=op.loc or None, op=op.name)
        w_dense = np.zeros(dense_shape, w_dw.dtype)
        out_channels = np.arange(c_out)
        w_dense[out_channels, out_channels // multiplier] = w_dw[:, 0]
        module.set_operand(op, 1, const_op(module, w_dense, w.type.with_shape(dense_shape), w.owner.loc))
        op.attrs["group"] = 1
    module.erase_dead()


def _per_channel_params(rqs: Operation, new_rank: int, channel_axis: int, channels: int):
    """mul, add of `rqs` re-shaped to broadcast along `channel_axis` of a rank-`new_rank` tensor, or None."""
    out = []
    for name in ("mul", "add"):
        a = np.asarray(rqs.attrs[name])
        if a.size == 1:
            out.append(a.reshape([1]))
            continue
        if a.size != channels:
            return None
        shape = [1] * new_rank
        shape[channel_axis] = channels
        out.append(a.reshape(shape))
    return out


def _sink_reshapes_below_requant(module: Module) -> None:
    """conv/matmul -> reshape -> requant  becomes  conv/matmul -> requant -> reshape (the platforms fuse a Conv or a
    MatMul with the requant after it).  Chains of reshapes after a MatMul (or its requant) collapse into one first,
    so that a flatten behind a global pool does not keep the requant away from the MatMul."""
    _collapse_matmul_reshapes(module)
    for rs in module.walk("int.reshape"):
        producer = rs.operands[0].owner
        rqs = _sole_user(rs.result)
        if producer.name not in ("int.conv", "int.matmul") or rqs is None or rqs.name != "int.requant_shift":
            continue
        if len(rs.operands[0].uses) != 1:
            continue
        acc_t = rs.operands[0].type
        reshaped = rs.result.type.shape
        if producer.name == "int.conv":
            # only a reshape that drops the trailing 1x1 of a [N, C, 1, 1] tensor keeps the channel axis at 1
            if acc_t.shape[2:] != (1, 1) or tuple(reshaped[:2]) != tuple(acc_t.shape[:2]):
                continue
            params = _per_channel_params(rqs, 4, 1, acc_t.shape[1])
            if params is None:
                continue
        else:
            # the [N*C, 1] sums of a global pool: channels run along rows, so only a per-tensor requant moves
            params = [np.asarray(rqs.attrs[name]) for name in ("mul", "add")]
            if any(p.size != 1 for p in params):
                continue
            params = [p.reshape([1]) for p in params]
        new_rqs = module.create("int.requant_shift", [rs.operands[0]], [rqs.result.type.with_shape(acc_t.shape)],
                                {**rqs.attrs, "mul": params[0], "add": params[1]}, rqs.loc)
        new_rs = module.create("int.reshape", [new_rqs.result], [rqs.result.type], {"shape": list(reshaped)},
                               rs.loc, [rqs.result.name])
        module.replace_op(rqs, [new_rs.result])
        module.erase(rs)
    _collapse_matmul_reshapes(module)


def _collapse_matmul_reshapes(module: Module) -> None:
    """reshape(reshape(x)) -> reshape(x) where x is a MatMul's result or its requant's and the inner reshape has no
    other user (the global-pool MatMul form; other reshapes stay as the verified forms have them)."""
    for rs in module.walk("int.reshape"):
        inner = rs.operands[0].owner
        if inner.name != "int.reshape" or len(inner.result.uses) != 1:
            continue
        source = inner.operands[0].owner
        if source.name == "int.requant_shift":
            source = source.operands[0].owner
        if source.name == "int.matmul":
            module.set_operand(rs, 0, inner.operands[0])
            module.erase(inner)


def _explicit_pool_pads(module: Module, target: DeeployTarget) -> None:
    """MaxPool with pads -> Pad (value = the storage minimum, which never wins) + MaxPool without pads: Deeploy's
    MaxPool kernels take no padding."""
    for op in module.walk("int.maxpool"):
        pads = list(op.attr("pads") or [])
        if not any(pads):
            continue
        x = op.operands[0]
        module.set_operand(op, 0, pad_op(module, x, pads, x.type.element.min, op.loc + "/pad"))
        op.attrs["pads"] = [0] * len(pads)


def _square_conv_pads(module: Module, target: DeeployTarget) -> None:
    """Conv pads that differ per side, and any pads of a depthwise Conv -> an explicit zero Pad: CMSIS's
    RequantizedConv parsers take square padding only, its depthwise one none (int.conv pads with zeros, so the
    Pad's value is 0)."""
    if not target.square_conv_pads:
        return
    for op in module.walk("int.conv"):
        pads = list(op.attr("pads") or [])
        depthwise = int(op.attr("group")) > 1
        if not any(pads) or (len(set(pads)) == 1 and not depthwise):
            continue
        module.set_operand(op, 0, pad_op(module, op.operands[0], pads, 0, op.loc + "/pad"))
        op.attrs["pads"] = [0] * len(pads)


# ----- 5. gemm forms ---------------------------------------------------------------------------------------------
def _gemm_forms(module: Module, target: DeeployTarget) -> None:
    for op in module.walk("int.gemm"):
        b = op.operands[1]
        if int(op.attr("transB")) == 0:
            bv = _const_value(b)
            if bv is None:
                raise _fail(op, target, "int.gemm with a computed B and transB=0 has no verified Deeploy form "
                                        "(Deeploy's integer Gemm is proven with transB=1)")
            bt = const_op(module, np.ascontiguousarray(bv.T), TensorType(bv.T.shape, b.type.element), b.owner.loc)
            module.set_operand(op, 1, bt)
            op.attrs["transB"] = 1
        if len(op.operands) < 3:
            n_out = op.result.type.shape[-1]
            zero = _int_const(module, np.zeros((n_out,), np.int64), op.loc + "/bias", i32)
            module.set_operands(op, list(op.operands) + [zero])
    module.erase_dead()


# ----- 6. bias and constant adds into the requant ----------------------------------------------------------------
def _fits_int32(a: np.ndarray) -> bool:
    return a.size == 0 or (int(a.min()) >= INT32_MIN and int(a.max()) <= INT32_MAX)


def _fold_offset_into_requant(rqs: Operation, offset: np.ndarray) -> bool:
    """add' = add + offset * mul for an offset that broadcasts against the requant's input; False otherwise."""
    x_shape = tuple(rqs.operands[0].type.shape)
    mul = np.asarray(rqs.attrs["mul"], np.int64)
    add = np.asarray(rqs.attrs["add"], np.int64)
    try:
        new_add = add + np.asarray(offset, np.int64) * mul
        if new_add.ndim > len(x_shape) or np.broadcast_shapes(new_add.shape, x_shape) != x_shape:
            return False
    except ValueError:
        return False
    rqs.attrs["add"] = new_add
    return True


def _fold_biases(module: Module, target: DeeployTarget) -> None:
    for conv in module.walk("int.conv"):
        if len(conv.operands) < 3:
            continue
        b = _const_value(conv.operands[2])
        if b is None:
            raise _fail(conv, target, "int.conv with a computed bias has no Deeploy form")
        rank = conv.result.type.rank
        per_channel = b.astype(np.int64).reshape([1, -1] + [1] * (rank - 2))
        rqs = _sole_user(conv.result)
        if rqs is not None and rqs.name == "int.requant_shift" and _fold_offset_into_requant(rqs, per_channel):
            module.set_operands(conv, conv.operands[:2])
            continue
        if target.conv_needs_requant:
            raise _fail(conv, target, "int.conv is not followed by a requant_shift: the platform has no bare integer "
                                      "Conv")
        # a bare integer Conv (Generic): the bias becomes an explicit Add of an int32 constant
        bias = _int_const(module, per_channel, conv.loc + "/bias", i32)
        acc = conv.result
        module.set_operands(conv, conv.operands[:2])
        add = module.create("int.add", [acc, bias], [acc.type], {}, conv.loc + "/bias_add")
        module.replace_all_uses(acc, add.result, except_ops=[add])
    for add in module.walk("int.add"):
        k_index = next((i for i, v in enumerate(add.operands) if _const_value(v) is not None), None)
        if k_index is None:
            continue
        rqs = _sole_user(add.result)
        if rqs is None or rqs.name != "int.requant_shift":
            continue
        k = _const_value(add.operands[k_index])
        x = add.operands[1 - k_index]
        if np.broadcast_shapes(np.shape(k), x.type.shape) != tuple(x.type.shape):
            continue
        if _fold_offset_into_requant(rqs, k):
            module.set_operand(rqs, 0, x)
    module.erase_dead()


# ----- 7. clip after a requant -----------------------------------------------------------------------------------
def _requant_range(signed: bool, n_levels: int) -> Tuple[int, int]:
    return (-(n_levels // 2), n_levels // 2 - 1) if signed else (0, n_levels - 1)


def _clip_levels(lo: int, hi: int) -> Optional[Tuple[bool, int]]:
    """The RequantShift (signed, n_levels) whose output range is exactly lo..hi, or None."""
    for signed in (True, False):
        n_levels = (hi + 1) * 2 if signed else hi + 1
        if n_levels >= 2 and _requant_range(signed, n_levels) == (lo, hi):
            return signed, n_levels
    return None


def _shifted_type(t: TensorType, shift: int) -> TensorType:
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


def _value_range(v: Value) -> Tuple[int, int]:
    """Bounds on the integers `v` holds: its element type's range, narrowed by the clip of a requant producing it."""
    lo, hi = int(v.type.element.min), int(v.type.element.max)
    if v.owner.name == "int.requant_shift":
        r_lo, r_hi = _requant_range(bool(v.owner.attr("signed")), int(v.owner.attr("n_levels")))
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
    if levels is not None and (target.clip_form == "levels" or levels[0]):
        return _unit_requant(module, x, 0, *levels, out.type, clip.loc, target, [out.name])
    int8_only = target.clip_form == "shifted"
    shifted = _shifted_clip_levels(lo, hi, _value_range(x))
    fits_8bit = -128 <= lo and hi <= 127 or (not int8_only and 0 <= lo and hi <= 255)
    if shifted is None or not fits_8bit:
        raise _fail(clip, target, f"int.clip to {lo}..{hi} has no form on this platform (a RequantShift clips to "
                                  "an even number of levels within 8 bits; Deeploy has no integer Clip)")
    c, n = shifted
    centred = _unit_requant(module, x, -c, True, n, _shifted_type(out.type, c), clip.loc, target)
    signed = hi <= 127
    return _unit_requant(module, centred, c, signed, 256, out.type, clip.loc + "/offset", target, [out.name])


def _fuses_requant(rqs: Operation) -> bool:
    """The platform fuses `rqs` with the op before it into one kernel."""
    return rqs.operands[0].owner.name in _FUSING


def _fold_clips(module: Module, target: DeeployTarget) -> None:
    """Every int.clip becomes RequantShift levels (Deeploy has no integer Clip).

    A clip after a requant that it alone uses folds into the requant's (signed, n_levels) when the target can
    state that range there (clip_form "levels", or a symmetric signed range) and its fused kernels honour it.
    Anywhere else (a clip of a graph input, of a requant that also feeds a residual Add, or a range the requant
    cannot state) it becomes RequantShifts that only clip (`_clip_requants`) placed after the requant, whose own
    form stays: duplicating the requant with the clip folded in would give the Conv or Add before it a second user,
    and the platforms fuse those with their requant only when it is the only one.  Both are exact:
    clip(clip(v, a), b) is the clip to the intersection of a and b.  On "shifted" targets a requant whose own range
    the platform cannot take (unsigned, or narrower than int8 in a kernel that clips to int8) is first split the same
    way (`_split_requant_clip`)."""
    if target.clip_form == "shifted":
        for rqs in module.walk("int.requant_shift"):
            signed, n_levels = bool(rqs.attr("signed")), int(rqs.attr("n_levels"))
            lo, hi = _requant_range(signed, n_levels)
            if lo < -128 or hi > 127:
                continue  # not an int8 range: its own form, or refused with its n_levels by the later checks
            ignored = not target.fused_requant_levels and _fuses_requant(rqs) and (signed, n_levels) != (True, 256)
            if not signed or ignored:
                _split_requant_clip(module, rqs, target)
    for clip in module.walk("int.clip"):
        x = clip.operands[0]
        rqs = x.owner
        lo, hi = int(clip.attr("min")), int(clip.attr("max"))
        if rqs.name == "int.requant_shift":
            cur_lo, cur_hi = _requant_range(bool(rqs.attr("signed")), int(rqs.attr("n_levels")))
            lo, hi = max(lo, cur_lo), min(hi, cur_hi)
            if (lo, hi) == (cur_lo, cur_hi):  # the requant already clips at least as much
                module.replace_op(clip, [x])
                continue
            levels = _clip_levels(lo, hi)
            # beyond 8 bits the fold is kept so that the requant's check names its n_levels
            foldable = levels is not None and len(x.uses) == 1 and (levels[1] > 256 or (
                (target.clip_form == "levels" or levels[0]) and
                (target.fused_requant_levels or not _fuses_requant(rqs))))
            if foldable:
                rqs.attrs["signed"], rqs.attrs["n_levels"] = levels
                rqs.results[0].type = clip.result.type
                module.replace_op(clip, [rqs.result])
                continue
        module.replace_op(clip, [_clip_requants(module, clip, x, lo, hi, target)])


# ----- 8. residual adds ------------------------------------------------------------------------------------------
def _affine_source(v: Value) -> Optional[Tuple[Value, int, int]]:
    """Read `v` as c * x + d with x an 8-bit tensor and c, d scalar integer constants: (x, c, d), or None."""
    c, d = 1, 0
    while not _is_8bit(v):
        op = v.owner
        if op.name not in ("int.mul", "int.add") or len(op.operands) != 2:
            return None
        k_index = next((i for i, o in enumerate(op.operands) if _const_value(o) is not None), None)
        if k_index is None:
            return None
        k = _const_value(op.operands[k_index])
        if k.size != 1:
            return None
        k = int(k.reshape(()))
        if op.name == "int.mul":
            c, d = c * k, d * k
        else:
            d = d + c * k
        v = op.operands[1 - k_index]
    return v, c, d


def _dyadic(ratio: Fraction, max_shift: int = 22) -> Tuple[int, int]:
    """(m, k) with m / 2^k = ratio exactly for the smallest k <= max_shift, else the rounding at max_shift."""
    for k in range(max_shift + 1):
        m = ratio * (1 << k)
        if m.denominator == 1:
            return int(m), k
    return int(round(ratio * (1 << max_shift))), max_shift


def _requantized_add(module: Module, add: Operation, rqs: Operation, target: DeeployTarget) -> None:
    """Rewrite `rqs(add(t1, t2))` into the form Siracusa's RequantizedAdd computes exactly.

    Deeploy's PULPAddRequantMergePass fuses  RequantShift(a), RequantShift(b) -> Add -> RequantShift  (all per tensor)
    into pulp_nn_add, which computes  out = clip8(((clip8(rq1(a)) + clip8(rq2(b))) * mul + add) >> shift), clipping
    each requantized operand to the 8-bit range of its input type.  Any other Add -> RequantShift is fused the same way
    with the Add's inputs taken as 8-bit operands, so the exact int32 form Mul, Mul -> Add fails type checking there.

    With each operand read as t_i = c_i * x_i + d_i (x_i 8-bit), the sum is measured in units of c_max = max c_i:
    r_i = round(x_i * c_i / c_max) (exact, identity, for the operand with c_max; |r_i| <= |x_i| so no clipping), and
    the output requant gets mul' = mul * c_max and add' = add + (d_1 + d_2) * mul, which reproduces the original
    requant up to the rounding of the smaller-scale operand (<= half a step of the larger operand's scale).  When
    the original add is a multiple of mul (output zero point 0), add' is kept a multiple of mul' (DeeployTest's debug
    pass rounds add to a multiple of mul), rounding the constant term to whole units of the sum.
    """
    sources = [_affine_source(v) for v in add.operands]
    if any(s is None for s in sources):
        raise _fail(add, target, "residual int.add whose operands are not 8-bit tensors scaled by constants has no "
                                 "form the platform's RequantizedAdd accepts")
    cs = [s[1] for s in sources]
    if min(cs) <= 0:
        raise _fail(add, target, "residual int.add with a non-positive operand scale has no RequantizedAdd form")
    c_max = max(cs)
    mul = np.asarray(rqs.attrs["mul"], np.int64)
    radd = np.asarray(rqs.attrs["add"], np.int64)
    div = int(rqs.attrs["div"])
    d_total = sum(s[2] for s in sources)
    operands = []
    for (x, c, _d), t in zip(sources, add.operands):
        m, k = _dyadic(Fraction(c, c_max))
        st = _storage(x)
        r_type = TensorType(x.type.shape, ScalarType("i8" if st.signed else "u8"))
        r = module.create("int.requant_shift", [x], [r_type],
                          {"mul": np.array([m], np.int64), "add": np.array([0], np.int64), "div": 1 << k,
                           "signed": bool(st.signed), "n_levels": 256}, (add.loc or "add") + f"/rq{len(operands)}")
        operands.append(r.result)
    new_mul = mul * c_max
    multiple = bool(np.all(radd % np.where(mul == 0, 1, mul) == 0))
    if multiple:
        q = (radd // np.where(mul == 0, 1, mul)) + d_total
        q_units = np.floor_divide(2 * q + c_max, 2 * c_max)  # round half up to whole units of c_max
        new_add = q_units * new_mul
    else:
        new_add = radd + d_total * mul
    # r1 + r2 lies in -256..510; shrink mul'/div together until the kernel's int32 arithmetic cannot overflow
    while div > 1 and (np.abs(new_mul).max() * 510 + np.abs(new_add).max() + div // 2 > INT32_MAX):
        if multiple:
            new_mul = np.floor_divide(new_mul + 1, 2)
            new_add = q_units * new_mul
        else:
            new_mul = np.floor_divide(new_mul + 1, 2)
            new_add = np.floor_divide(new_add + 1, 2)
        div //= 2
    if np.abs(new_mul).max() * 510 + np.abs(new_add).max() + div // 2 > INT32_MAX:
        raise _fail(add, target, "the RequantizedAdd output requant cannot fit int32")
    sum_type = TensorType(add.result.type.shape, i32)
    new_sum = module.create("int.add", operands, [sum_type], {}, add.loc)
    rqs.attrs.update(mul=new_mul, add=new_add, div=div)
    module.set_operand(rqs, 0, new_sum.result)
    module.erase_dead()


def _residual_adds(module: Module, target: DeeployTarget) -> None:
    for add in module.walk("int.add"):
        if any(_const_value(v) is not None for v in add.operands):
            continue
        rqs = _sole_user(add.result)
        if target.residual_add == "requantized-add":
            if rqs is None or rqs.name != "int.requant_shift":
                raise _fail(add, target, "int.add of two tensors must be followed by a requant_shift (its only "
                                         "user) on this platform")
            if int(rqs.attr("n_levels")) != 256:  # RequantizedAdd clips its output to int8
                rqs = _split_requant_clip(module, rqs, target)
            if all(_is_8bit(v) and v.owner.name == "int.requant_shift" for v in add.operands) and \
                    _already_requantized_add(add):
                continue
            _requantized_add(module, add, rqs, target)
        else:
            for v in add.operands:
                if v.type.storage.width > 32:
                    raise _fail(add, target, "int.add of operands wider than int32 has no Deeploy form")


def _split_requant_clip(module: Module, rqs: Operation, target: DeeployTarget) -> Operation:
    """A requant clipping to less than int8 (a ReLU folded into it) as the full int8 requant followed by
    RequantShifts that only clip (`_clip_requants`), for when the platform cannot take that clip in the requant
    itself: its fused kernel clips to -128..127 whatever n_levels_out says (Siracusa's RequantizedConv/Gemm/Add), or
    the range is unsigned (targets.CLIP_FORMS "shifted").  Exact: clip(clip(v, int8), r) = clip(v, r) for a range r
    inside int8.  Returns the full-range requant."""
    lo, hi = _requant_range(bool(rqs.attr("signed")), int(rqs.attr("n_levels")))
    if lo < -128 or hi > 127:
        raise _fail(rqs, target, f"a requant to {lo}..{hi} has no form on this platform (its kernels clip to "
                                 "int8 -128..127)")
    out = rqs.result
    full = module.create("int.requant_shift", [rqs.operands[0]], [_shifted_type(out.type, 0)],
                         {**rqs.attrs, "signed": True, "n_levels": 256}, rqs.loc)
    # the clip op stands for the requant's own clip: the RequantShifts after the full one take its place and name
    clip = module.create("int.clip", [full.result], [out.type], {"min": lo, "max": hi}, rqs.loc + "/clip",
                         [out.name])
    module.replace_op(rqs, [clip.result])
    module.replace_op(clip, [_clip_requants(module, clip, full.result, lo, hi, target)])
    return full


def _already_requantized_add(add: Operation) -> bool:
    """Both operands are per-tensor requants of 8-bit tensors used only here, each clipping to the full 8-bit range
    of its input's signedness (what pulp_nn_add clips to): the form is already the fused one."""
    for v in add.operands:
        rq = v.owner
        x = rq.operands[0]
        if len(v.uses) != 1 or np.asarray(rq.attrs["mul"]).size != 1 or np.asarray(rq.attrs["add"]).size != 1:
            return False
        if not _is_8bit(x) or bool(rq.attr("signed")) != _storage(x).signed or int(rq.attr("n_levels")) != 256:
            return False
    return True


# ----- 9. requant parameter shapes -------------------------------------------------------------------------------
def _shape_requant_params(module: Module, target: DeeployTarget) -> None:
    for rqs in module.walk("int.requant_shift"):
        x = rqs.operands[0].type
        div = int(rqs.attr("div"))
        if div < 1 or div & (div - 1):
            raise _fail(rqs, target, f"div {div} is not a power of two")
        n_levels = int(rqs.attr("n_levels"))
        if n_levels > 256:
            raise _fail(rqs, target, f"n_levels {n_levels} exceeds Deeploy's 8-bit RequantShift output")
        params = []
        for name in ("mul", "add"):
            a = np.asarray(rqs.attr(name)).astype(np.int64)
            if not _fits_int32(a):
                raise _fail(rqs, target, f"requant_shift {name} does not fit int32")
            params.append(a)
        mul, add = params
        full = np.broadcast_shapes(mul.shape, add.shape)
        if mul.size == 1 and add.size == 1:
            shape = [1]
        else:
            nontrivial = [i - len(full) + x.rank for i, d in enumerate(full) if d != 1]
            if len(nontrivial) != 1:
                raise _fail(rqs, target, f"requant_shift parameters of shape {list(full)} are not per tensor or per "
                                         "channel")
            axis, channels = nontrivial[0], max(full)
            if x.rank == 4 and axis == 1:
                shape = [1, channels, 1, 1]
            elif x.rank == 2 and axis == 1:
                shape = [channels]
            else:
                raise _fail(rqs, target, f"per-channel requant_shift along axis {axis} of a rank-{x.rank} tensor has "
                                         "no Deeploy form (channels must be axis 1 of NCHW or the last axis of 2-D)")
        if target.add_before_mul:
            # the device adds round(add / mul) before multiplying (Deeploy: np.round(add / (mul + 1e-3))): state that
            add = np.rint(add / (mul + 1e-3)).astype(np.int64) * mul
        if target.gemm_scalar_mul and rqs.operands[0].owner.name in ("int.gemm", "int.matmul"):
            if np.unique(mul).size != 1:
                kind = "Gemm" if rqs.operands[0].owner.name == "int.gemm" else "MatMul"
                raise _fail(rqs, target, f"a {kind} requant needs one multiplier for all channels on this platform "
                                         "(per-tensor weight scales)")
            rqs.attrs["mul"] = mul.reshape(-1)[:1].reshape(())
            rqs.attrs["add"] = add.reshape(-1) if add.size == 1 else \
                np.ascontiguousarray(np.broadcast_to(add, full)).reshape(shape)
            if target.add_before_mul and rqs.operands[0].owner.name == "int.gemm":
                _fold_requant_add_into_gemm_bias(module, rqs, target)
            continue
        rqs.attrs["mul"] = np.ascontiguousarray(np.broadcast_to(mul, full)).reshape(shape)
        rqs.attrs["add"] = np.ascontiguousarray(np.broadcast_to(add, full)).reshape(shape)


def _fold_requant_add_into_gemm_bias(module: Module, rqs: Operation, target: DeeployTarget) -> None:
    """Gemm(a, b, c) -> RequantShift(mul, add)  becomes  Gemm(a, b, c + add/mul) -> RequantShift(mul, 0).

    CMSIS's Gemm-requant merge divides `add` by `mul` twice when the Gemm has a bias input (it first normalises
    `add` to round(add/mul), then adds round(that / (mul * 2^shift)) to the bias), so a nonzero `add` is lost on the
    device (found by building its code with CMSIS-NN).  `add` is already a multiple of `mul` here (add_before_mul),
    so moving add/mul into the int32 bias is exact and leaves the merge nothing to lose."""
    gemm = rqs.operands[0].owner
    mul = int(np.asarray(rqs.attrs["mul"]))
    add = np.asarray(rqs.attrs["add"], np.int64)
    if mul == 0 or not np.any(add):
        return
    bias = _const_value(gemm.operands[2])
    if bias is None:
        raise _fail(gemm, target, "int.gemm with a computed bias has no Deeploy form")
    n_out = gemm.result.type.shape[-1]
    new_bias = np.broadcast_to(bias.astype(np.int64), (n_out,)) + np.broadcast_to(add // mul, (n_out,))
    if not _fits_int32(new_bias):
        raise _fail(rqs, target, "the requant's add folded into the Gemm bias does not fit int32")
    module.set_operand(gemm, 2, _int_const(module, new_bias, gemm.loc + "/bias", i32))
    rqs.attrs["add"] = np.zeros_like(add)


# ----- 10. trailing reshapes -------------------------------------------------------------------------------------
_FUSING = ("int.conv", "int.gemm", "int.matmul", "int.add")


def _fix_trailing_reshapes(module: Module, target: DeeployTarget) -> None:
    for out in module.outputs:
        rs = out.operands[0].owner
        if rs.name != "int.reshape":
            continue
        rqs = rs.operands[0].owner
        movable = (rqs.name == "int.requant_shift" and len(rqs.result.uses) == 1 and len(rs.result.uses) == 1
                   and rqs.operands[0].owner.name not in _FUSING)
        if not movable:
            raise _fail(rs, target, "the graph ends in a reshape (Deeploy leaves such an output buffer zero) and "
                                    "the reshape cannot move before the last computing op")
        x = rqs.operands[0]
        new_shape = rs.result.type.shape
        params = [np.asarray(rqs.attrs[n]) for n in ("mul", "add")]
        if any(p.size != 1 for p in params):
            raise _fail(rs, target, "the graph ends in a reshape of a per-channel requant, which cannot move")
        new_rs = module.create("int.reshape", [x], [x.type.with_shape(new_shape)], {"shape": list(new_shape)},
                               rs.loc)
        new_rqs = module.create("int.requant_shift", [new_rs.result], [rs.result.type], dict(rqs.attrs), rqs.loc,
                                [rs.result.name])
        module.replace_op(rs, [new_rqs.result])
        module.erase(rqs)


# ----- 11. final checks ------------------------------------------------------------------------------------------
def _cmsis_merged_multiplier(producer: str, mul: np.ndarray, div: int) -> Tuple[np.ndarray, int]:
    """(multiplier, shift) that Deeploy's CMSIS merge of `producer` + RequantShift(mul, div) hands to CMSIS-NN.

    Deeploy/Targets/CortexM/TopologyOptimizationPasses/Passes.py: total = 31 - log2(div); the Conv merge shifts mul
    left by min(total, floor(32 - log2(max mul))), the Gemm/MatMul merge by min(total, floor(log2(2^31 - max mul))),
    and passes the rest of `total` as CMSIS-NN's (left) shift.  CMSIS-NN reads the multiplier as int32 Q31, so the
    result must fit int32: with gain g = mul / div it is g * 2^31 whenever the min takes `total`, and above 2^31
    otherwise, so any gain >= 1 overflows (except mul = div = 1 on a Gemm, which becomes 2^30 with shift 1)."""
    total = 31 - (div.bit_length() - 1)
    max_mul = int(mul.max())
    if max_mul <= 0:
        shift = total
    elif producer == "int.conv":
        shift = min(total, int(np.floor(32 - np.log2(max_mul))))
    else:
        shift = min(total, int(np.floor(np.log2(float((1 << 31) - max_mul))))) if max_mul < (1 << 31) else 0
    return mul.astype(object) * (1 << shift), total - shift


def _check_q31_multiplier(rqs: Operation, target: DeeployTarget) -> None:
    """Refuse a Conv/Gemm/MatMul requant whose merged CMSIS-NN multiplier overflows int32 (a gain >= 1)."""
    producer = rqs.operands[0].owner.name
    if producer not in ("int.conv", "int.gemm", "int.matmul"):
        return  # a standalone RequantShift runs Deeploy's int32 reference kernel
    mul = np.asarray(rqs.attr("mul"), np.int64)
    div = int(rqs.attr("div"))
    merged, _shift = _cmsis_merged_multiplier(producer, mul, div)
    largest = max(abs(int(m)) for m in np.ravel(merged))
    if largest > INT32_MAX:
        top = int(np.abs(mul).max())
        kind = {"int.conv": "Conv", "int.gemm": "Gemm", "int.matmul": "MatMul"}[producer]
        raise _fail(rqs, target, f"requant gain mul/div = {top}/{div} = {top / div:.6g} after a {kind}: Deeploy's "
                                 f"CMSIS merge turns it into the Q31 multiplier {largest}, which overflows int32 "
                                 "(the fused kernel takes gains below 1 only)")


def _check(module: Module, target: DeeployTarget) -> None:
    for op in module.walk():
        if op.dialect == "qir":
            continue
        if op.name not in EMITTABLE:
            raise _fail(op, target, f"{op.name} has no Deeploy form")
        if op.name == "int.conv":
            x, w = op.operands[0], op.operands[1]
            if _const_value(w) is None:
                raise _fail(op, target, "int.conv with computed weights has no Deeploy form")
            if not (_is_8bit(x) and _is_8bit(w)):
                raise _fail(op, target, "Deeploy's Conv takes 8-bit input and weights")
            if any(int(d) != 1 for d in (op.attr("dilations") or [])):
                raise _fail(op, target, f"dilations {list(op.attr('dilations'))}: Deeploy's Conv takes dilation 1")
            group = int(op.attr("group"))
            c_in, c_out = x.type.shape[1], op.result.type.shape[1]
            if group != 1 and not (group == c_in == c_out):
                raise _fail(op, target, f"grouped int.conv (group {group}, {c_in} -> {c_out} channels) is neither "
                                        "dense nor depthwise")
            if group != 1 and not target.depthwise_conv:
                raise _fail(op, target, "depthwise int.conv has no working form on this platform")
            if group != 1 and target.depthwise_layout == "channels-last":
                # emitted as Transpose -> Conv(channels_first=0) -> RequantShift -> Transpose: the requant must be
                # the conv's only user (it is written channels-last with it) and the padding explicit
                user = _sole_user(op.result)
                if user is None or user.name != "int.requant_shift":
                    raise _fail(op, target, "a channels-last depthwise int.conv must be followed by a requant_shift "
                                            "(its only user)")
                if any(op.attr("pads") or []) or x.type.rank != 4:
                    raise _fail(op, target, "a channels-last depthwise int.conv takes a 2-D NCHW input without pads")
            if len(op.operands) > 2:
                raise _fail(op, target, "int.conv keeps a bias input")
            if any(op.attr("pads") or []) and x.type.is_quant and any(x.type.quant.zero_points):
                raise _fail(op, target, f"int.conv pads with zeros a tensor whose zero point is "
                                        f"{list(x.type.quant.zero_points)} (the padding needs an explicit int.pad "
                                        "with the zero point)")
            if target.conv_needs_requant:
                user = _sole_user(op.result)
                if user is None or user.name != "int.requant_shift":
                    raise _fail(op, target, "int.conv must be followed by a requant_shift (its only user): the "
                                            "platform has no bare integer Conv")
        elif op.name == "int.concat" and not target.accepts("Concat"):
            raise _fail(op, target, "the platform has no Concat")
        elif op.name == "int.pad":
            pads = list(op.attr("pads"))
            rank = op.operands[0].type.rank
            if rank != 4 or any(pads[i] for i in (0, 1, rank, rank + 1)):
                raise _fail(op, target, f"int.pad {pads} pads more than the spatial axes of an NCHW tensor")
        elif op.name == "int.maxpool":
            if any(int(d) != 1 for d in (op.attr("dilations") or [])) or int(op.attr("ceil_mode")):
                raise _fail(op, target, "Deeploy's MaxPool takes dilation 1 and ceil_mode 0")
            if not _is_8bit(op.operands[0]):
                raise _fail(op, target, "Deeploy's MaxPool takes 8-bit input")
        elif op.name in ("int.gemm", "int.matmul"):
            if not all(_is_8bit(v) for v in op.operands[:2]):
                raise _fail(op, target, f"Deeploy's {op.name[4:].capitalize()} takes 8-bit operands")
        elif op.name == "int.requant_shift" and target.q31_requant_multiplier:
            _check_q31_multiplier(op, target)


def legalize(module: Module, target) -> Module:
    """Rewrite `module` (integer IR) in place into the target's forms; returns it.  BackendError if impossible."""
    target = get_target(target)
    for op in module.walk():
        if op.dialect not in ("qir", "int"):
            raise _fail(op, target, f"{op.name} is not integer arithmetic: lower the model first (lower-to-int)")
    _canonicalize_shape_ops(module)
    flatten_batched_matmuls(module, target)
    _sub_to_add(module, target)
    _sum_pools(module, target)
    _depthwise_to_dense(module, target)
    _explicit_pool_pads(module, target)
    _square_conv_pads(module, target)
    _gemm_forms(module, target)
    _fold_biases(module, target)
    _fold_clips(module, target)
    _residual_adds(module, target)
    _shape_requant_params(module, target)
    _fix_trailing_reshapes(module, target)
    module.erase_dead()
    check_transformer_forms(module, target)
    _check(module, target)
    return module


def _register() -> None:
    """Register `deeploy-legalize{target=...}` with the pass registry."""
    from ...qir.passes import ModulePass, register_pass

    @register_pass
    class DeeployLegalize(ModulePass):
        """Rewrite integer IR into the forms a Deeploy platform accepts (see qirc/backends/deeploy/legalize.py).

        Before: int.* ops as `lower-to-int` writes them.  After: int.* ops each of which emits as one ONNX node the
        target maps (bias folded into requants, pools as all-ones convs or matmuls, residual adds in the target's
        form, requant parameters shaped per the contract).
        Precondition: only qir.* and int.* ops.
        """

        name = "deeploy-legalize"
        target: str = ""  # required: one of targets.TARGETS

        def run(self, module: Module) -> None:
            legalize(module, self.target)

    return DeeployLegalize


DeeployLegalize = _register()
