"""Dialect `int`: exact integer arithmetic on stored values.

Operands and results are integer tensors (plain `iN`/`uN` or `!quant.uniform`, whose runtime values are the stored
integers).  The interpreter computes every op exactly in int64 and raises a located error when a result does not fit
its declared storage type (in particular an int32 accumulator).  Zero points are NOT applied implicitly: the lowering
makes every correction explicit (bias terms, Pad with the zero point, requant_shift's add).
"""
from ..ops import bool_, dense, dialect, int_, ints

INT = dialect("int", "exact integer arithmetic on stored values")

_conv_attrs = {
    "kernel_shape": ints(),
    "pads": ints(doc="begin pads then end pads per spatial axis; pads with zeros (use int.pad for a zero point)"),
    "strides": ints(),
    "dilations": ints(),
    "group": int_(1),
}

INT.op("conv", "y = conv(x, w) + b, exact (NCHW; b per output channel).", operands=["x", "w", "b?"],
       attrs=_conv_attrs, traits=("linear",))
INT.op("gemm", "y = a' b' + c, exact (alpha = beta = 1).", operands=["a", "b", "c?"],
       attrs={"transA": int_(0), "transB": int_(0)}, traits=("linear",))
INT.op("matmul", "numpy-style matrix product, exact.", operands=["a", "b"], traits=("linear",))
INT.op("add", "Elementwise a + b with broadcasting.", operands=["a", "b"], traits=("elementwise", "commutative"))
INT.op("sub", "Elementwise a - b with broadcasting.", operands=["a", "b"], traits=("elementwise",))
INT.op("mul", "Elementwise a * b with broadcasting.", operands=["a", "b"], traits=("elementwise", "commutative"))
INT.op("clip", "min(max(x, min), max).", operands=["x"], attrs={"min": int_(), "max": int_()},
       traits=("elementwise",))
INT.op("requant_shift", "y = clip(floor((x * mul + add + div / 2) / div), lo, hi) with lo, hi = -n/2, n/2 - 1 if "
       "signed else 0, n - 1 (Deeploy's RequantShift; div = 2^k). mul and add broadcast against x (shaped per "
       "channel [C,1,1] / [C] or per tensor [1]).", operands=["x"],
       attrs={"mul": dense(doc="integer multiplier(s)"), "add": dense(doc="integer offset(s), rounding not included"),
              "div": int_(doc="a power of two"), "signed": bool_(True), "n_levels": int_(256)},
       traits=("elementwise",))
INT.op("reduce_sum", "Sum over `axes`, exact.", operands=["x"], attrs={"axes": ints(), "keepdims": int_(1)})
INT.op("sumpool", "Sum over each pooling window (zeros in the padding), exact; an average pool is this followed by "
       "a requant that divides by the count.", operands=["x"],
       attrs={"kernel_shape": ints(), "pads": ints(), "strides": ints(), "ceil_mode": int_(0)})
INT.op("maxpool", "Max pooling; padding never wins.", operands=["x"],
       attrs={"kernel_shape": ints(), "pads": ints(), "strides": ints(), "dilations": ints([]), "ceil_mode": int_(0)})
INT.op("pad", "Constant padding with integer `value` (the zero point of a shifted tensor).", operands=["x"],
       attrs={"pads": ints(), "value": int_(0)}, traits=("shape_only",))
INT.op("reshape", "Reshape to `shape`.", operands=["x"], attrs={"shape": ints()}, traits=("shape_only",))
INT.op("flatten", "Reshape to 2-D at `axis`.", operands=["x"], attrs={"axis": int_(1)}, traits=("shape_only",))
INT.op("transpose", "Permute axes by `perm`.", operands=["x"], attrs={"perm": ints()}, traits=("shape_only",))
INT.op("squeeze", "Remove size-1 `axes`.", operands=["x"], attrs={"axes": ints()}, traits=("shape_only",))
INT.op("unsqueeze", "Insert size-1 `axes`.", operands=["x"], attrs={"axes": ints()}, traits=("shape_only",))
INT.op("concat", "Concatenate along `axis`.", operands=["inputs*"], attrs={"axis": int_()}, traits=("shape_only",))
