"""`integer-transformer`: float Softmax, LayerNormalization and Gelu between quantizers become Deeploy's integer
kernels int.isoftmax, int.ilayernorm and int.igelu (DESIGN.md section 7); a MatMul of two activations becomes
int.matmul."""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from ..qir.ir import Module, Operation, Value, const_op
from ..qir.passes import ModulePass, register_pass
from ..qir.types import TensorType, UniformQuantType, i8, i32, u8
from .common import apply_rules, const_array, dcast_source, fail, int_const, real_const

#: the I-BERT constants (Kim et al. 2021): exp(p) ~ 0.3585 (p + 1.353)^2 + 0.344 on [-ln 2, 0];
#: erf(x) ~ sgn(x) (-0.2888 (min(|x|, 1.769) - 1.769)^2 + 1)
EXP_A, EXP_B, EXP_C = 0.3585, 1.353, 0.344
ERF_A, ERF_B = -0.2888, -1.769
#: iSoftmax's output grid: u / 255 (n_levels = 256)
SOFTMAX_LEVELS = 256
#: largest log2(D) of iLayerNorm (D stays an int32 attribute)
LAYERNORM_MAX_SHIFT = 30
_U32 = 1 << 32
_I32 = 1 << 31

_HINT_SOFTMAX = "softmax_input_quant=Int8ActPerTensorFloat"
_HINT_GELU_IN = "an input quantizer (for example QuantIdentity(act_quant=Int8ActPerTensorFloat) before the GELU)"
_HINT_GELU_OUT = "an output quantizer (for example QuantIdentity(act_quant=Int8ActPerTensorFloat) after the GELU)"
_HINT_LN_OUT = "an output quantizer (for example QuantIdentity(act_quant=Int8ActPerTensorFloat) after the LayerNorm)"


@register_pass
class IntegerTransformer(ModulePass):
    """Replace float Softmax, LayerNormalization, Gelu and activation MatMuls by Deeploy's integer kernels.

    Softmax.  Before: `%p = onnx.Softmax(dcast %x) {axis = -1} ; %a = quant.qcast %p : u8 @ s_a` with %x 8-bit per
    tensor at scale e (any zero point: the kernel subtracts the row maximum).  After: `%u = int.isoftmax %x
    {coeffA = 1, coeffB = round(1.353 / e), coeffC = round(0.344 / (0.3585 e^2)), log2 = round(ln 2 / e),
    n_levels = 256} : u8 @ 1/255`.  When only dequantizers read %a (P feeding the P x V MatMul), %a is replaced by %u
    itself: the kernel's 1/255 grid folds into the next requant instead of being requantized onto s_a first (a
    graph output keeps the model's scale through a requant).  The kernel's normalisation floors, so u is half a
    step low on average: each P x V MatMul then also adds J x V, J all ones at scale 1/2 / 255 (an int8 constant of
    P's shape), which puts the missing half step back exactly.
    LayerNormalization (last axis, constant Scale gamma and B beta).  Before: `onnx.LayerNormalization(dcast %x) ;
    quant.qcast : i8 @ s_o, z_o` (directly or through float shape ops).  After: `int.ilayernorm %x, weight, bias
    {D = 2^k} : i8 @ s_o, z_o` with
    weight = round(gamma 2^k / s_o), bias = round((beta / s_o + z_o) 2^k) + 2^(k-1) (the kernel floors after >> k)
    and k the largest shift <= 30 that keeps both in int32.  The kernel's +1 on the integer variance replaces the
    model's epsilon by one input step squared; its int8 output wraps instead of saturating.  An output quantizer
    whose range starts or ends at 0 (a ReLU folded into it, as onnxruntime folds LayerNorm -> Relu) would wrap every
    value of the other sign: the kernel then writes onto the symmetric int8 grid holding max |gamma| sqrt(C - 1) +
    |beta| (any LayerNorm output) and a `quant.dcast` there leaves the quantizer to requant-fusion, which clips.
    Gelu (approximate = none).  Before: `onnx.Gelu(dcast %x) ; quant.qcast : T_o` with %x 8-bit, zero point 0, scale
    s.  After: `int.igelu %x {b = round(-1.769 sqrt 2 / s), one = round(2 / (0.2888 s^2))} : i32 @ s / one` followed
    by `quant.dcast` (requant-fusion turns the qcast into the RequantShift, whose add is 0 because T_o must have zero
    point 0, as Deeploy's fused RequantizediGELU requires).
    MatMul of two dequantized activations (Q K^T, P V), both per tensor with zero point 0: `int.matmul` with an
    int32 accumulator at s_a * s_b, then `quant.dcast`.  An operand computed by shape-only int ops from a constant
    (weights transposed in the graph) is folded into a constant first, for dequant-push's weight MatMul.
    Preconditions, each a LoweringError naming the node otherwise: softmax over the last axis, no -inf attention
    mask; 8-bit per-tensor input quantizers (the Brevitas argument that adds a missing one is named); the output
    quantizer of a LayerNorm and a GELU; a GELU input scale for which b fits int8 and one fits int16 (s >= about
    0.0196); a softmax input scale for which y * 255 fits uint32 (e >= about 4.1e-4).
    """

    name = "integer-transformer"

    def run(self, module: Module) -> None:
        check_transformer_inputs(module)
        lower_transformer_ops(module)
        refuse_unlowered(module)


def lower_transformer_ops(module: Module) -> int:
    """One sweep of the three rewrites; returns how many ops were rewritten."""
    return apply_rules(module, _RULES)


# ----- checks before anything moves -----------------------------------------------------------------------------------
def check_transformer_inputs(module: Module) -> None:
    """Refuse what the integer kernels cannot compute at all, before other passes fail on it less clearly."""
    for op in module.ops():
        if op.name == "onnx.Softmax":
            axis, rank, last = _axis(op)
            if not last:
                raise fail(op, f"softmax over axis {axis} of a rank-{rank} tensor: Deeploy's iSoftmax normalises "
                               f"the last axis only (transpose the scores so that the keys are last)")
            _refuse_mask(op)
        elif op.name == "onnx.LayerNormalization":
            axis, rank, last = _axis(op)
            if not last:
                raise fail(op, f"LayerNorm over the axes from {axis} of a rank-{rank} tensor: Deeploy's iLayerNorm "
                               f"normalises the last axis only")
        elif op.name == "onnx.Gelu" and op.attr("approximate") != "none":
            raise fail(op, f"GELU with approximate = '{op.attr('approximate')}': Deeploy's iGELU approximates the "
                           f"erf form (approximate = 'none')")


def _axis(op: Operation):
    """(the op's axis attribute, its input's rank, whether that axis is the last one)."""
    axis, rank = int(op.attr("axis")), op.operands[0].type.rank
    return axis, rank, (axis + rank if axis < 0 else axis) == rank - 1


def _refuse_mask(softmax: Operation) -> None:
    """An additive -inf mask on the scores (through quantizers and shape ops) cannot pass an int8 quantizer."""
    seen, todo = set(), [softmax.operands[0]]
    while todo:
        v = todo.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        op = v.owner
        if op.name in ("onnx.Add", "onnx.Sub", "onnx.Where", "onnx.Mul"):
            for w in op.operands:
                c = const_array(w) if w.type.is_float else None
                if c is not None and np.any(np.isneginf(c) if op.name != "onnx.Sub" else np.isposinf(c)):
                    raise fail(softmax, f"attention mask: the softmax input goes through {op.name} ({op.loc}) with "
                                        f"a -inf constant, which no integer quantizer can hold (Deeploy's iSoftmax "
                                        f"has no mask; drop the mask or use a large finite negative value)")
                todo.append(w)
        elif op.name in ("quant.qcast", "quant.dcast", "onnx.Reshape", "onnx.Transpose", "onnx.Unsqueeze",
                         "onnx.Squeeze", "onnx.Flatten"):
            todo.extend(op.operands)


# ----- Softmax --------------------------------------------------------------------------------------------------------
def softmax_coefficients(e: float) -> dict:
    """The I-BERT coefficients of iSoftmax for an int8 input of scale e (DESIGN.md section 7)."""
    return {"coeffA": 1, "coeffB": int(round(EXP_B / e)), "coeffC": int(round(EXP_C / (EXP_A * e * e))),
            "log2": int(round(math.log(2) / e)), "n_levels": SOFTMAX_LEVELS}


def _eight_bit_source(op: Operation, value: Value) -> Optional[Value]:
    source = dcast_source(value)
    if source is None or source.type.quant.is_per_axis or source.type.storage.width != 8:
        return None
    return source


def _softmax(module: Module, op: Operation) -> bool:
    x = _eight_bit_source(op, op.operands[0])
    if x is None:
        return False
    e = float(x.type.quant.scale)
    c = softmax_coefficients(e)
    length = x.type.shape[-1]
    y_max = c["coeffA"] * c["coeffB"] ** 2 + c["coeffC"]  # the largest y_j (p = 0 at the row maximum)
    if c["log2"] < 2:
        raise fail(op, f"softmax input scale {e:.6g} is too coarse for iSoftmax: log2 = round(ln 2 / e) = {c['log2']} "
                       f"must be at least 2 (needs e <= {math.log(2) / 1.5:.4g})")
    if c["coeffB"] + 1 >= 46341 or y_max * (SOFTMAX_LEVELS - 1) >= _U32 or y_max * length >= _U32:
        raise fail(op, f"softmax input scale {e:.6g} is too fine for iSoftmax: its uint32 arithmetic overflows "
                       f"(y_max = {y_max}; y_max * 255 and y_max * {length} must stay below 2^32, which needs "
                       f"e >= {math.sqrt((EXP_B ** 2 + EXP_C / EXP_A) * max(255, length) / _U32):.3g})")
    out = TensorType(x.type.shape, UniformQuantType.per_tensor(u8, 1.0 / (SOFTMAX_LEVELS - 1), 0))
    new = module.create("int.isoftmax", [x], [out], c, op.loc)
    users = op.results[0].users
    qcasts = [u for u in users if u.name == "quant.qcast"]
    folded = False
    if len(users) == 1 and qcasts and qcasts[0].results[0].users and \
            all(u.name == "quant.dcast" and all(w.name != "qir.output" for w in u.results[0].users)
                for u in qcasts[0].results[0].users):
        # only dequantizers read the softmax output's quantizer: give them the kernel's own 1/255 grid, so that the
        # next requant (after P x V) folds it in instead of a lossy requant onto the model's scale first
        module.replace_op(qcasts[0], [new.result])
        folded = True
        for dcast in list(new.result.users):
            for mm in list(dcast.results[0].users):
                if mm.name == "onnx.MatMul" and mm.operands[0] is dcast.results[0] and \
                        mm.operands[1] is not dcast.results[0]:
                    _half_step_correction(module, mm)
    if not folded:
        dcast = module.create("quant.dcast", [new.result], [op.results[0].type], {}, op.loc)
        module.replace_op(op, [dcast.result])
    return True


def _half_step_correction(module: Module, mm: Operation) -> None:
    """P x V reads the iSoftmax output u, whose normalisation floors 255 * y / sum: on average u = 255 p - 1/2.
    Add the missing half step exactly: P x V + J x V with J all ones at scale (1/2) / 255 (an int8 constant of P's
    shape; J x V sums V over the keys for every query), so that the product uses (u + 1/2) / 255.  add-rescale then
    sums the two int32 products on a common scale (2 (P x V) + J x V) before the requant."""
    p, v = mm.operands
    shape = p.type.shape
    ones = const_op(module, np.ones(shape, np.int8),
                    TensorType(shape, UniformQuantType.per_tensor(i8, 0.5 / (SOFTMAX_LEVELS - 1), 0)),
                    mm.loc + "/half_step")
    j = module.create("quant.dcast", [ones], [TensorType(shape, p.type.element)], {}, mm.loc).result
    corr = module.create("onnx.MatMul", [j, v], [mm.results[0].type], {}, mm.loc + "/half_step").result
    add = module.create("onnx.Add", [mm.results[0], corr], [mm.results[0].type], {}, mm.loc + "/half_step")
    module.replace_all_uses(mm.results[0], add.results[0], except_ops=[add])


# ----- LayerNorm ------------------------------------------------------------------------------------------------------
def layernorm_parameters(gamma: np.ndarray, beta: np.ndarray, s_out: float, z_out: int, op=None):
    """(weight int64[C], bias int64[C], k) of iLayerNorm for output scale s_out, zero point z_out."""
    gamma = np.asarray(gamma, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    for k in range(LAYERNORM_MAX_SHIFT, -1, -1):
        weight = np.rint(gamma * (1 << k) / s_out)
        bias = np.rint((beta / s_out + z_out) * (1 << k)) + (1 << k) // 2
        if np.all(np.abs(weight) < _I32) and np.all(bias < _I32) and np.all(bias >= -_I32):
            return weight.astype(np.int64), bias.astype(np.int64), k
    raise fail(op, f"LayerNorm parameters do not fit int32 for any shift (gamma up to {np.abs(gamma).max():.3g}, "
                   f"beta up to {np.abs(beta).max():.3g}, output scale {s_out:.3g})")


_FLOAT_SHAPE_OPS = ("onnx.Transpose", "onnx.Reshape", "onnx.Squeeze", "onnx.Unsqueeze", "onnx.Flatten")


def _output_qcasts(op: Operation) -> Optional[List[Operation]]:
    """The op's output quantizers, reached directly or through float shape ops (Brevitas' batch_first Transpose
    between a LayerNorm and the attention's input quantizer): every path ends in a per-tensor quant.qcast, all of
    one quant type (an export may repeat the quantizer once per reader), or None."""
    found: List[Operation] = []
    frontier = [op.results[0]]
    while frontier:
        users = frontier.pop().users
        if not users:
            return None
        for u in users:
            if u.name == "quant.qcast" and not u.results[0].type.quant.is_per_axis:
                found.append(u)
            elif u.name in _FLOAT_SHAPE_OPS:
                frontier.append(u.results[0])
            else:
                return None
    if len({u.results[0].type.element for u in found}) != 1:
        return None
    return found


def _output_qcast(op: Operation) -> Optional[Operation]:
    qcasts = _output_qcasts(op)
    return qcasts[0] if qcasts else None


def _layernorm(module: Module, op: Operation) -> bool:
    x = _eight_bit_source(op, op.operands[0])
    qcast = _output_qcast(op)
    if x is None or qcast is None:
        return False
    c = x.type.shape[-1]
    gamma = real_const(op.operands[1])
    beta = real_const(op.operands[2]) if len(op.operands) > 2 else np.zeros(c)
    if gamma is None or beta is None:
        raise fail(op, "LayerNorm scale and bias must be constants")
    gamma = np.broadcast_to(gamma.reshape(-1) if gamma.size == c else gamma, (c,))
    beta = np.broadcast_to(beta.reshape(-1) if beta.size == c else beta, (c,))
    out = qcast.results[0].type
    oq = out.quant
    if not (oq.storage.signed and oq.storage.width == 8):
        raise fail(op, f"LayerNorm output quantizer {oq} is not signed 8-bit: Deeploy's iLayerNorm outputs int8")
    grid = oq.with_(storage_min=-128, storage_max=127)
    one_sided = oq.zero_point <= oq.storage_min or oq.zero_point >= oq.storage_max
    if one_sided:
        # a quantizer whose range starts (or ends) at 0: a ReLU folded into it (onnxruntime drops LayerNorm -> Relu's
        # Relu so).  The kernel's output wraps instead of saturating, so on that grid every value of the other sign
        # would wrap: it writes onto a symmetric int8 grid holding every value a LayerNorm row can take (a
        # normalised value is at most sqrt(C - 1) in magnitude), and a RequantShift (requant-fusion) clips onto the
        # quantizer's grid
        reach = float(np.max(np.abs(gamma) * math.sqrt(max(c - 1, 1)) + np.abs(beta)))
        grid = UniformQuantType.per_tensor(i8, max(reach, float(oq.scale)) / 127.0, 0)
    weight, bias, k = layernorm_parameters(gamma, beta, float(grid.scale), int(grid.zero_point), op)
    w = int_const(module, weight, op.loc)
    b = int_const(module, bias, op.loc)
    # the kernel's int8 output wraps: its type holds the full int8 range even if the quantizer is narrow
    new = module.create("int.ilayernorm", [x, w, b], [TensorType(x.type.shape, grid)],
                        {"D": 1 << k, "n_levels": 256}, op.loc)
    qcasts = _output_qcasts(op)
    if not one_sided and all(q.operands[0] is op.results[0] for q in qcasts):
        for q in qcasts:
            module.replace_op(q, [new.result])
    else:  # shape ops before the quantizers: they and the quantizers (now identities) lower after it
        dcast = module.create("quant.dcast", [new.result], [op.results[0].type], {}, op.loc)
        module.replace_op(op, [dcast.result])
    return True


# ----- GELU -----------------------------------------------------------------------------------------------------------
def gelu_coefficients(s: float) -> dict:
    """iGELU's b and one for an int8 input of scale s (I-BERT erf on x / sqrt 2)."""
    return {"b": int(round(ERF_B * math.sqrt(2) / s)), "one": int(round(2.0 / (-ERF_A * s * s)))}


def _gelu(module: Module, op: Operation) -> bool:
    x = _eight_bit_source(op, op.operands[0])
    qcast = _output_qcast(op)
    if x is None or qcast is None:
        return False
    xq = x.type.quant
    if xq.zero_point != 0:
        raise fail(op, f"GELU input quantizer {xq} has zero point {xq.zero_point}: iGELU needs a symmetric input "
                       f"(zero point 0)")
    s = float(xq.scale)
    c = gelu_coefficients(s)
    if not -128 <= c["b"] <= -1 or not 1 <= c["one"] <= 32767:
        s_min = max(-ERF_B * math.sqrt(2) / 128.5, math.sqrt(2.0 / (-ERF_A * 32767.5)))
        raise fail(op, f"GELU input scale {s:.6g} is out of iGELU's range: b = {c['b']} must fit int8 and one = "
                       f"{c['one']} int16, which needs s >= {s_min:.4g} (a coarser GELU input quantizer)")
    oq = qcast.results[0].type.quant
    if oq.zero_point != 0 or oq.storage.width != 8 or (oq.storage_min, oq.storage_max) not in ((-128, 127), (0, 255)):
        raise fail(op, f"GELU output quantizer {oq} must be full-range 8-bit with zero point 0: Deeploy fuses iGELU "
                       f"with the RequantShift after it (RequantizediGELU), which needs add = 0 and clips to 8 bits")
    out = TensorType(x.type.shape, UniformQuantType.per_tensor(i32, s / c["one"], 0))
    new = module.create("int.igelu", [x], [out], c, op.loc)
    dcast = module.create("quant.dcast", [new.result], [op.results[0].type], {}, op.loc)
    module.replace_op(op, [dcast.result])
    return True


# ----- MatMul of two activations --------------------------------------------------------------------------------------
def _fold_const_chain(module: Module, value: Value) -> Optional[Value]:
    """If `value` is computed by shape-only int ops from one constant (a weight transposed in the graph, pushed by
    dequant-push after fold-constants ran), a constant holding it; else None."""
    op = value.owner
    if op.dialect != "int" or "shape_only" not in op.opdef.traits or len(op.operands) != 1:
        return None
    source = op.operands[0]
    if const_array(source) is None:
        source = _fold_const_chain(module, source)
        if source is None:
            return None
    from ..qir.interpreter import KERNELS
    array = KERNELS[op.name](op, [const_array(source).astype(np.int64)])[0]
    return const_op(module, np.asarray(array).astype(value.type.storage.np_dtype).reshape(value.type.shape),
                    value.type, op.loc)


def _matmul_activations(module: Module, op: Operation) -> bool:
    a, b = dcast_source(op.operands[0]), dcast_source(op.operands[1])
    if a is None or b is None or const_array(b) is not None:
        return False  # constant weights are dequant-push's
    for i, source in ((0, a), (1, b)):
        folded = _fold_const_chain(module, source)
        if folded is not None:  # weights after all: make them a constant for dequant-push's MatMul rule
            dcast = module.create("quant.dcast", [folded], [op.operands[i].type], {}, op.loc)
            module.set_operand(op, i, dcast.result)
            return True
    aq, bq = a.type.quant, b.type.quant
    if aq.is_per_axis or bq.is_per_axis:
        return False
    if aq.zero_point != 0 or bq.zero_point != 0:
        raise fail(op, f"MatMul of two activations with zero points {aq.zero_point} and {bq.zero_point}: the "
                       f"integer product needs symmetric quantizers (zero point 0) on both operands")
    rtype = TensorType(op.results[0].type.shape, UniformQuantType.per_tensor(i32, float(aq.scale) * float(bq.scale)))
    new = module.create("int.matmul", [a, b], [rtype], {}, op.loc)
    dcast = module.create("quant.dcast", [new.result], [op.results[0].type], {}, op.loc)
    module.replace_op(op, [dcast.result])
    return True


_RULES = {"onnx.Softmax": _softmax, "onnx.LayerNormalization": _layernorm, "onnx.Gelu": _gelu,
          "onnx.MatMul": _matmul_activations}


# ----- what is left ---------------------------------------------------------------------------------------------------
def refuse_unlowered(module: Module) -> None:
    """After the lowering sweeps: name a Softmax / LayerNorm / GELU that could not be lowered and why."""
    kernels = {"onnx.Softmax": "softmax", "onnx.LayerNormalization": "LayerNorm", "onnx.Gelu": "GELU"}
    for op in module.ops():
        if op.name not in kernels:
            continue  # (an unlowered MatMul is a float op like any other: check-integer-only names it)
        source = dcast_source(op.operands[0])
        what = kernels[op.name]
        if source is None or source.owner.name not in ("quant.qcast",) and source.type.storage.width != 8:
            hint = _HINT_SOFTMAX if op.name == "onnx.Softmax" else (
                _HINT_GELU_IN if op.name == "onnx.Gelu" else "an input quantizer")
            raise fail(op, f"the {what} input has no 8-bit quantizer, so the integer kernel has no scale for it: "
                           f"add {hint}")
        if source.type.quant.is_per_axis or source.type.storage.width != 8:
            raise fail(op, f"the {what} input quantizer {source.type.element} is not 8-bit per tensor: the integer "
                           f"kernel reads int8")
        if op.name != "onnx.Softmax" and _output_qcast(op) is None:
            hint = _HINT_GELU_OUT if op.name == "onnx.Gelu" else _HINT_LN_OUT
            raise fail(op, f"the {what} output has no quantizer (its only user must be one): add {hint}")
