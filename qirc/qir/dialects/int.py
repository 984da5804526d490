"""Dialect `int`: exact integer arithmetic on stored values.

Operands and results are integer tensors (plain `iN`/`uN` or `!quant.uniform`, whose runtime values are the stored
integers).  The interpreter computes every op exactly in int64 and raises a located error when a result does not fit
its declared storage type (in particular an int32 accumulator).  Zero points are NOT applied implicitly: the lowering
makes every correction explicit (bias terms, Pad with the zero point, requant_shift's add).
"""
from ..ops import bool_, dense, dialect, int_, ints
from ..shapes import (broadcast_operands, igelu_elements, ilayernorm_elements, ilayernorm_shape, isoftmax_elements, concat_shape, conv_shape, flatten_shape, gather_shape, gemm_shape,
                      int_clip_elements,
                      int_in_out, int_pad_elements, matmul_shape, pad_shape, pool_shape, reduce_shape,
                      requant_shift_elements, requant_shift_shape, reshape_shape, same_as_first, slice_shape, squeeze_shape,
                      transpose_shape, unsqueeze_shape)

INT = dialect("int", "exact integer arithmetic on stored values")

_conv_attrs = {
    "kernel_shape": ints(),
    "pads": ints(doc="begin pads then end pads per spatial axis; pads with zeros (use int.pad for a zero point)"),
    "strides": ints(),
    "dilations": ints(),
    "group": int_(1),
}

INT.op("conv", "y = conv(x, w) + b, exact (NCHW; b per output channel).", operands=["x", "w", "b?"],
       attrs=_conv_attrs, traits=("linear",),
       shape=conv_shape, element=int_in_out)
INT.op("gemm", "y = a' b' + c, exact (alpha = beta = 1).", operands=["a", "b", "c?"],
       attrs={"transA": int_(0), "transB": int_(0)}, traits=("linear",),
       shape=gemm_shape, element=int_in_out)
INT.op("matmul", "numpy-style matrix product, exact.", operands=["a", "b"], traits=("linear",),
       shape=matmul_shape, element=int_in_out)
INT.op("add", "Elementwise a + b with broadcasting.", operands=["a", "b"], traits=("elementwise", "commutative"),
       shape=broadcast_operands, element=int_in_out)
INT.op("sub", "Elementwise a - b with broadcasting.", operands=["a", "b"], traits=("elementwise",),
       shape=broadcast_operands, element=int_in_out)
INT.op("mul", "Elementwise a * b with broadcasting.", operands=["a", "b"], traits=("elementwise", "commutative"),
       shape=broadcast_operands, element=int_in_out)
INT.op("clip", "min(max(x, min), max).", operands=["x"], attrs={"min": int_(), "max": int_()},
       traits=("elementwise",),
       shape=same_as_first, element=int_clip_elements)
INT.op("requant_shift", "y = clip(floor((x * mul + add + div / 2) / div), lo, hi) with lo, hi = -n/2, n/2 - 1 if "
       "signed else 0, n - 1 (Deeploy's RequantShift; div = 2^k). mul and add broadcast against x (shaped per "
       "channel [C,1,1] / [C] or per tensor [1]).", operands=["x"],
       attrs={"mul": dense(doc="integer multiplier(s)"), "add": dense(doc="integer offset(s), rounding not included"),
              "div": int_(doc="a power of two"), "signed": bool_(True), "n_levels": int_(256)},
       traits=("elementwise",),
       shape=requant_shift_shape, element=requant_shift_elements)
INT.op("reduce_sum", "Sum over `axes`, exact.", operands=["x"], attrs={"axes": ints(), "keepdims": int_(1)},
       shape=reduce_shape, element=int_in_out)
INT.op("sumpool", "Sum over each pooling window (zeros in the padding), exact; an average pool is this followed by "
       "a requant that divides by the count.", operands=["x"],
       attrs={"kernel_shape": ints(), "pads": ints(), "strides": ints(), "ceil_mode": int_(0)},
       shape=pool_shape, element=int_in_out)
INT.op("maxpool", "Max pooling; padding never wins.", operands=["x"],
       attrs={"kernel_shape": ints(), "pads": ints(), "strides": ints(), "dilations": ints([]), "ceil_mode": int_(0)},
       shape=pool_shape, element=int_in_out)
INT.op("pad", "Constant padding with integer `value` (the zero point of a shifted tensor).", operands=["x"],
       attrs={"pads": ints(), "value": int_(0)}, traits=("shape_only",),
       shape=pad_shape, element=int_pad_elements)
INT.op("reshape", "Reshape to `shape`.", operands=["x"], attrs={"shape": ints()}, traits=("shape_only",),
       shape=reshape_shape, element=int_in_out)
INT.op("flatten", "Reshape to 2-D at `axis`.", operands=["x"], attrs={"axis": int_(1)}, traits=("shape_only",),
       shape=flatten_shape, element=int_in_out)
INT.op("transpose", "Permute axes by `perm`.", operands=["x"], attrs={"perm": ints()}, traits=("shape_only",),
       shape=transpose_shape, element=int_in_out)
INT.op("squeeze", "Remove size-1 `axes`.", operands=["x"], attrs={"axes": ints()}, traits=("shape_only",),
       shape=squeeze_shape, element=int_in_out)
INT.op("unsqueeze", "Insert size-1 `axes`.", operands=["x"], attrs={"axes": ints()}, traits=("shape_only",),
       shape=unsqueeze_shape, element=int_in_out)
INT.op("concat", "Concatenate along `axis`.", operands=["inputs*"], attrs={"axis": int_()}, traits=("shape_only",),
       shape=concat_shape, element=int_in_out)
INT.op("gather", "Take the constant `indices` along `axis` (a scalar index removes the axis), as onnx.Gather; a "
       "class token x[:, 0].", operands=["x"],
       attrs={"axis": int_(0), "indices": ints(), "scalar": bool_(False)}, traits=("shape_only",),
       shape=gather_shape, element=int_in_out)
INT.op("slice", "x[start:end:step] along each of `axes` (resolved), as onnx.Slice; q, k, v out of a packed "
       "in-projection.", operands=["x"], attrs={"starts": ints(), "ends": ints(), "axes": ints(), "steps": ints()},
       traits=("shape_only",),
       shape=slice_shape, element=int_in_out)

# Deeploy's integer transformer kernels (DESIGN.md section 7).  Each computes exactly the Generic C kernel: the
# interpreter's kernels are in qirc/qir/kernels_transformer.py.  Attribute names are Deeploy's.
INT.op("isoftmax", "Deeploy iSoftmax (Softmax_s8_s8, I-BERT polynomial exp) over the last axis of an int8 tensor; "
       "unsigned output 0..n_levels-1 whose real value is u / (n_levels - 1).",
       operands=["x"],
       attrs={"coeffA": int_(doc="int32 multiplier of the square"), "coeffB": int_(doc="int32 offset inside the square"),
              "coeffC": int_(doc="int64 constant term"), "log2": int_(doc="ln 2 in input steps (>= 2)"),
              "n_levels": int_(256, doc="output levels (2..256)")},
       shape=same_as_first, element=isoftmax_elements,
       description="Per row: x_max = max(-128, max x); xT = (int16)(x - x_max); z = clamp((int8)(-(xT / log2)), 0, "
                   "31); p = (int16)(xT + z * log2); y = (uint32)((int64)(int32)(coeffA * (p + coeffB)^2) + coeffC) >> "
                   "z; out = (uint32)(y * (n_levels - 1)) / (uint32)sum(y).  Integer `/` truncates toward zero.")
INT.op("ilayernorm", "Deeploy iLayerNorm (Layernorm_s8_s8) over the last axis of an int8 tensor; int8 output that "
       "wraps (no saturation).", operands=["x", "weight", "bias"],
       attrs={"D": int_(doc="2^k: the output is shifted right by k"), "n_levels": int_(256, doc="output levels")},
       shape=ilayernorm_shape, element=ilayernorm_elements,
       description="Per row of length L: mean = (int32)sum(x) / L; var = sum((int16)(x - mean)^2) / L + 1; std = "
                   "floor(sqrt(var)); out = (int8)((((int64)x - mean) * weight / std + bias) >> k).")
INT.op("igelu", "Deeploy iGELU (GELU_s8_s32, I-BERT polynomial erf) of an int8 tensor; int32 output.",
       operands=["x"], attrs={"b": int_(doc="int8 clip point of the erf polynomial (negative)"),
                              "one": int_(doc="int16 value of 1 on the polynomial's scale")},
       traits=("elementwise",), shape=same_as_first, element=igelu_elements,
       description="sign = sgn(x); q = min(|x|, -b); d = q + b; L = sign * (one - d*d); y = x * ((one + L) >> 1), "
                   "in int32.")
