"""Gemm: the operand forms Deeploy's integer Gemm is proven with, and CMSIS's requant add moved into the bias."""
from __future__ import annotations

import numpy as np

from ....qir.ir import Module, Operation, const_op
from ....qir.types import ScalarType, TensorType, i32
from ..targets import DeeployTarget
from .common import const_value, fail, fits_int32, int_const, move_zero_points, sole_user
from .rule import rule


@rule("gemm-forms")
def gemm_forms(module: Module, target: DeeployTarget) -> None:
    """int.gemm takes a constant B transposed (transB = 1) and an int32 bias (zeros when it has none): the form
    Deeploy's integer Gemm is proven with."""
    for op in module.walk("int.gemm"):
        b = op.operands[1]
        if int(op.attr("transB")) == 0:
            bv = const_value(b)
            if bv is None:
                raise fail(op, target, "int.gemm with a computed B and transB=0 has no verified Deeploy form "
                                       "(Deeploy's integer Gemm is proven with transB=1)")
            bt = const_op(module, np.ascontiguousarray(bv.T), TensorType(bv.T.shape, b.type.element), b.owner.loc)
            module.set_operand(op, 1, bt)
            op.attrs["transB"] = 1
        if len(op.operands) < 3:
            n_out = op.result.type.shape[-1]
            zero = int_const(module, np.zeros((n_out,), np.int64), op.loc + "/bias", i32)
            module.set_operands(op, list(op.operands) + [zero])
    module.erase_dead()


@rule("bare-gemm-as-matmul", when="gemm_needs_requant")
def bare_gemm_as_matmul(module: Module, target: DeeployTarget) -> None:
    """int.gemm(A, B, c) that no requant follows (an int32 graph output: a last Linear layer without an output
    quantizer) -> int.matmul(A, B^T) (int8 x int8 -> int32) -> int.add(c) on a platform with no bare integer Gemm;
    a uint8 A (of such a Gemm, or of a bare int.matmul with a constant B) is first moved to int8 by a RequantShift
    that subtracts 128 (mul = div = 1 before requant-div-min), with 128 * sum(B) added to c.

    PULPOpen maps an integer Gemm only fused with its RequantShift and CMSIS only RequantizedGemm ("Did not find
    adequate mapping ... GEMMLayer" on Siracusa, "No mapping found for node ... Gemm" on QEMU-ARM), while both map
    MatMul int8 x int8 -> int32 (only int8) and Add int32 + int32 -> int32 (Siracusa tiled and untiled code
    generated, QEMU-ARM code generated).  Exact: the same sums, and sum((a - 128) b) + 128 sum(b) = sum(a b)."""
    for op in module.walk():
        if op.name not in ("int.gemm", "int.matmul"):
            continue
        user = sole_user(op.result)
        if user is not None and user.name == "int.requant_shift":
            continue  # fused with its requant
        a, b = op.operands[0], op.operands[1]
        bv = const_value(b)
        if op.name == "int.matmul" and (bv is None or bv.ndim != 2 or a.type.storage.signed):
            continue
        if bv is None or (op.name == "int.gemm" and int(op.attr("transA"))) or a.type.rank != 2 \
                or not b.type.storage.signed:
            raise fail(op, target, "int.gemm without a requant after it (an int32 result) has a Deeploy form here "
                                   "only with constant int8 weights and an untransposed 2-D input: give the layer "
                                   "an output quantizer")
        transposed = op.name == "int.gemm" and int(op.attr("transB"))
        if transposed:
            bv = bv.T
        bias = np.zeros((bv.shape[1],), np.int64)
        if len(op.operands) > 2:
            c = const_value(op.operands[2])
            if c is None:
                raise fail(op, target, "int.gemm with a computed bias has no Deeploy form")
            bias = bias + np.broadcast_to(c.astype(np.int64).reshape(-1), bias.shape)
        if not a.type.storage.signed:
            a = _to_int8(module, a, op.loc + "/int8")
            bias = bias + 128 * bv.astype(np.int64).sum(axis=0)
        if not fits_int32(bias):
            raise fail(op, target, "the bias of the product, with its input moved to int8, does not fit int32")
        m, n = op.result.type.shape
        b_elem = b.type.element
        if b.type.is_quant and b_elem.is_per_axis and transposed:
            b_elem = b_elem.with_(axis=1 - b_elem.axis % 2)  # the output channel axis moves from 0 to 1
        bt = b if not transposed else const_op(module, np.ascontiguousarray(bv), TensorType(bv.shape, b_elem),
                                                b.owner.loc)
        out = op.result
        if not np.any(bias):
            mm = module.create("int.matmul", [a, bt], [out.type], {}, op.loc, [out.name])
            module.replace_op(op, [mm.result])
            continue
        mm = module.create("int.matmul", [a, bt], [TensorType((m, n), i32)], {}, op.loc)
        # the bias in full (Deeploy's integer Add does not broadcast a [1, N] operand over rows)
        c_full = int_const(module, np.broadcast_to(bias, (m, n)), op.loc + "/bias", i32)
        add = module.create("int.add", [mm.result, c_full], [out.type], {}, op.loc + "/bias_add", [out.name])
        module.replace_op(op, [add.result])
    module.erase_dead()


def _to_int8(module: Module, x, loc: str):
    """x (uint8) - 128 as int8: a RequantShift with mul = div = 1 and add = -128 (the zero points move by -128)."""
    element = x.type.element
    if x.type.is_quant:
        # the full int8 range, which the RequantShift's clip (n_levels = 256) states: a narrower uint8 range (a
        # 4-bit ReLU's 0..15) would leave the clip wider than the result's storage
        element = element.with_(storage=ScalarType("i8"), storage_min=-128, storage_max=127,
                                zero_points=tuple(int(z) - 128 for z in element.zero_points))
    else:
        element = ScalarType("i8")
    return module.create("int.requant_shift", [x], [TensorType(x.type.shape, element)],
                         {"mul": np.array([1], np.int64), "add": np.array([-128], np.int64), "div": 1,
                          "signed": True, "n_levels": 256}, loc).result


@rule("gemm-requant-add-to-bias", when=("add_before_mul", "gemm_scalar_mul"))
def gemm_requant_add_to_bias(module: Module, target: DeeployTarget) -> None:
    """Gemm(a, b, c) -> RequantShift(mul, add)  becomes  Gemm(a, b, c + add/mul) -> RequantShift(mul, 0).

    Runs after requant-params, which has made each Gemm requant's mul one scalar and its add a multiple of it.  The
    Gemm's result type moves its zero points by add/mul, so that it still says what its integers mean."""
    for rqs in module.walk("int.requant_shift"):
        if rqs.operands[0].owner.name == "int.gemm":
            _fold_requant_add_into_gemm_bias(module, rqs, target)


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
    bias = const_value(gemm.operands[2])
    if bias is None:
        raise fail(gemm, target, "int.gemm with a computed bias has no Deeploy form")
    n_out = gemm.result.type.shape[-1]
    new_bias = np.broadcast_to(bias.astype(np.int64), (n_out,)) + np.broadcast_to(add // mul, (n_out,))
    if not fits_int32(new_bias):
        raise fail(rqs, target, "the requant's add folded into the Gemm bias does not fit int32")
    module.set_operand(gemm, 2, int_const(module, new_bias, gemm.loc + "/bias", i32))
    rqs.attrs["add"] = np.zeros_like(add)
    # the Gemm now computes acc + add/mul: its type's zero points move with it (the real values stay)
    move_zero_points(gemm.result, np.broadcast_to(add // mul, (n_out,)))


@rule("per-channel-gemm-as-conv", when="gemm_scalar_mul")
def per_channel_gemm_as_conv(module: Module, target: DeeployTarget) -> None:
    """int.gemm whose requant has one multiplier per output channel, on a platform whose Gemm kernel takes one
    multiplier -> the same product as a 1x1 Conv: Reshape [N, K, 1, 1] -> Conv (weights [M, K, 1, 1], bias) ->
    RequantShift (per channel, [1, M, 1, 1]) -> Reshape [N, M].  Exact: the Conv sums the same K products.

    When that reshape would end the graph (Deeploy leaves such an output buffer zero) a RequantShift that only clips
    to the requant's own range (mul = div = 1, add = 0: the identity there) follows it; it runs Deeploy's standalone
    RequantShift kernel."""
    for gemm in module.walk("int.gemm"):
        rqs = sole_user(gemm.result)
        if rqs is None or rqs.name != "int.requant_shift" or int(gemm.attr("transA")) or not int(gemm.attr("transB")):
            continue
        mul = np.asarray(rqs.attr("mul"), np.int64)
        if np.unique(mul).size <= 1:
            continue
        w = const_value(gemm.operands[1])
        if w is None or gemm.operands[0].type.rank != 2:
            continue
        x = gemm.operands[0]
        n, k = x.type.shape
        m = w.shape[0]
        x4 = module.create("int.reshape", [x], [x.type.with_shape((n, k, 1, 1))], {"shape": [n, k, 1, 1]},
                           gemm.loc + "/as_conv").result
        w4 = const_op(module, np.ascontiguousarray(w.reshape(m, k, 1, 1)),
                      TensorType((m, k, 1, 1), gemm.operands[1].type.element), gemm.operands[1].owner.loc)
        conv = module.create("int.conv", [x4, w4] + list(gemm.operands[2:3]),
                             [gemm.result.type.with_shape((n, m, 1, 1))],
                             {"kernel_shape": [1, 1], "pads": [0, 0, 0, 0], "strides": [1, 1], "dilations": [1, 1],
                              "group": 1}, gemm.loc, [gemm.result.name])
        attrs = dict(rqs.attrs)
        for key in ("mul", "add"):
            a = np.asarray(attrs[key], np.int64)
            attrs[key] = a.reshape(1, -1, 1, 1) if a.size > 1 else a.reshape(-1)
        out = rqs.result
        rq4 = module.create("int.requant_shift", [conv.result], [out.type.with_shape((n, m, 1, 1))], attrs, rqs.loc)
        last = rq4.result
        clip = sole_user(out)
        if clip is not None and clip.name == "int.clip":
            # a ReLU's clip stays next to its requant (fold-clips folds it there)
            last = module.create("int.clip", [last], [clip.result.type.with_shape((n, m, 1, 1))], dict(clip.attrs),
                                 clip.loc).result
            rqs, out = clip, clip.result
        back = module.create("int.reshape", [last], [out.type], {"shape": [n, m]}, rqs.loc + "/reshape")
        result = back.result
        if any(u.name == "qir.output" for u in out.users):
            out_type = out.type
            if out_type.is_quant and out_type.element.narrow:
                lo, hi = (-(int(attrs["n_levels"]) // 2), int(attrs["n_levels"]) // 2 - 1) if attrs["signed"] \
                    else (0, int(attrs["n_levels"]) - 1)
                out_type = TensorType(out_type.shape, out_type.element.with_(storage_min=lo, storage_max=hi))
            result = module.create("int.requant_shift", [result], [out_type],
                                   {"mul": np.array([1], np.int64), "add": np.array([0], np.int64), "div": 1,
                                    "signed": bool(attrs["signed"]), "n_levels": int(attrs["n_levels"])},
                                   rqs.loc + "/output", [out.name]).result
        module.replace_op(rqs, [result])
        module.erase_dead()


@rule("per-channel-matmul-as-gemm", when="gemm_scalar_mul")
def per_channel_matmul_as_gemm(module: Module, target: DeeployTarget) -> None:
    """int.matmul(A, B) with a constant 2-D B whose requant varies along the last axis (per-channel weights; token
    tensors [N, T, D] included) -> Reshape [rows, D] -> int.gemm(A', B^T, transB = 1, zero bias) -> RequantShift
    (parameters [E]) -> Reshape back, on a platform whose MatMul kernel takes one multiplier:
    per-channel-gemm-as-conv continues from there to a 1x1 Conv.  Exact: the same sums."""
    for mm in module.walk("int.matmul"):
        rqs = sole_user(mm.result)
        b = const_value(mm.operands[1])
        if b is None or b.ndim != 2:
            continue
        bias = np.zeros((b.shape[1],), np.int64)
        if rqs is not None and rqs.name == "int.add":
            # a constant added per feature (an input zero point's correction): the Gemm's bias
            add = rqs
            c = next((const_value(v) for v in add.operands if const_value(v) is not None), None)
            if c is None or c.size not in (1, b.shape[1]):
                continue
            bias = bias + np.broadcast_to(c.astype(np.int64).reshape(-1), bias.shape)
            rqs = sole_user(add.result)
        if rqs is None or rqs.name != "int.requant_shift":
            continue
        params = [np.asarray(rqs.attr(k), np.int64) for k in ("mul", "add")]
        if all(p.size == 1 for p in params):
            continue
        a = mm.operands[0]
        k, e = b.shape
        lead = tuple(a.type.shape[:-1])
        rows = int(np.prod(lead))
        a2 = a if a.type.rank == 2 else module.create(
            "int.reshape", [a], [a.type.with_shape((rows, k))], {"shape": [rows, k]}, mm.loc + "/rows").result
        b_elem = mm.operands[1].type.element
        if mm.operands[1].type.is_quant and b_elem.is_per_axis:
            b_elem = b_elem.with_(axis=1 - b_elem.axis % 2)  # the output channel axis moves from 1 to 0
        bt = const_op(module, np.ascontiguousarray(b.T), TensorType((e, k), b_elem), mm.operands[1].owner.loc)
        zero = int_const(module, bias, mm.loc + "/bias", i32)
        acc = rqs.operands[0]  # the matmul, or the add of its constant: what the requant reads
        gemm = module.create("int.gemm", [a2, bt, zero], [_channels_last(acc.type, (rows, e))],
                             {"transA": 0, "transB": 1}, mm.loc, [acc.name])
        attrs = dict(rqs.attrs)
        for key, p in zip(("mul", "add"), params):
            attrs[key] = p.reshape(-1) if p.size == 1 else p.reshape(1, -1)
        out = rqs.result
        rq2 = module.create("int.requant_shift", [gemm.result], [_channels_last(out.type, (rows, e))], attrs, rqs.loc,
                            [] if out.type.rank != 2 else [out.name]).result
        result = rq2 if out.type.rank == 2 else module.create(
            "int.reshape", [rq2], [out.type], {"shape": list(out.type.shape)}, rqs.loc + "/reshape", [out.name]).result
        module.replace_op(rqs, [result])
        module.erase_dead()


def _channels_last(t: TensorType, shape) -> TensorType:
    """`t` reshaped to `shape`, a per-axis quantization along its last axis kept on the last axis."""
    element = t.element
    if t.is_quant and element.is_per_axis:
        element = element.with_(axis=len(shape) - 1)
    return TensorType(tuple(shape), element)
