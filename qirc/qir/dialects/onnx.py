"""Dialect `onnx`: float ops as imported from ONNX.

Names and attributes follow the ONNX operator spec.  Inputs that ONNX passes as constant tensors (Reshape's shape,
Pad's pads and value, Clip's min and max, reduction axes) are attributes here; the frontend moves them.
Every op computes in float32 as onnxruntime does.
"""
from ..ops import bool_, dialect, float_, int_, ints, str_
from ..shapes import (batchnorm_shape, broadcast_operands, concat_shape, conv_shape, flatten_shape, float_in_out,
                      gather_shape, gemm_shape, global_pool_shape, layernorm_shape, matmul_shape, pad_shape,
                      pool_shape, reduce_shape, reshape_shape, same_as_first, slice_shape, softmax_shape,
                      squeeze_shape, transpose_shape, unsqueeze_shape)

ONNX = dialect("onnx", "float ops as imported from ONNX")

_conv_attrs = {
    "kernel_shape": ints(doc="spatial kernel size"),
    "pads": ints(doc="begin pads then end pads per spatial axis"),
    "strides": ints(doc="per spatial axis"),
    "dilations": ints(doc="per spatial axis"),
    "group": int_(1),
}
_pool_attrs = {
    "kernel_shape": ints(),
    "pads": ints(doc="begin pads then end pads per spatial axis"),
    "strides": ints(),
    "ceil_mode": int_(0),
}

ONNX.op("Conv", "N-d convolution (NCHW), optional bias.", operands=["X", "W", "B?"], attrs=_conv_attrs,
        traits=("linear",),
        shape=conv_shape, element=float_in_out)
ONNX.op("Gemm", "Y = alpha * A' B' + beta * C.", operands=["A", "B", "C?"],
        attrs={"alpha": float_(1.0), "beta": float_(1.0), "transA": int_(0), "transB": int_(0)}, traits=("linear",),
        shape=gemm_shape, element=float_in_out)
ONNX.op("MatMul", "numpy-style matrix product.", operands=["A", "B"], traits=("linear",),
        shape=matmul_shape, element=float_in_out)
for _name in ("Add", "Sub", "Mul", "Div"):
    ONNX.op(_name, f"Elementwise {_name.lower()} with numpy broadcasting.", operands=["A", "B"],
            traits=("elementwise",) + (("commutative",) if _name in ("Add", "Mul") else ()),
            shape=broadcast_operands, element=float_in_out)
ONNX.op("Relu", "max(x, 0).", operands=["X"], traits=("elementwise",),
        shape=same_as_first, element=float_in_out)
ONNX.op("Clip", "min(max(x, min), max).", operands=["X"],
        attrs={"min": float_(float("-inf")), "max": float_(float("inf"))}, traits=("elementwise",),
        shape=same_as_first, element=float_in_out)
ONNX.op("Round", "Round half to even.", operands=["X"], traits=("elementwise",),
        shape=same_as_first, element=float_in_out)
ONNX.op("Sigmoid", "1 / (1 + exp(-x)).", operands=["X"], traits=("elementwise",),
        shape=same_as_first, element=float_in_out)
ONNX.op("HardSigmoid", "max(0, min(1, alpha * x + beta)).", operands=["X"],
        attrs={"alpha": float_(0.2), "beta": float_(0.5)}, traits=("elementwise",),
        shape=same_as_first, element=float_in_out)
ONNX.op("HardSwish", "x * max(0, min(1, x / 6 + 1 / 2)).", operands=["X"], traits=("elementwise",),
        shape=same_as_first, element=float_in_out)
ONNX.op("MaxPool", "Max pooling; padding never wins.", operands=["X"], attrs={**_pool_attrs, "dilations": ints([])},
        shape=pool_shape, element=float_in_out)
ONNX.op("AveragePool", "Average pooling.", operands=["X"], attrs={**_pool_attrs, "count_include_pad": int_(0)},
        shape=pool_shape, element=float_in_out)
ONNX.op("GlobalAveragePool", "Mean over all spatial axes, kept as size 1.", operands=["X"],
        shape=global_pool_shape, element=float_in_out)
ONNX.op("GlobalMaxPool", "Max over all spatial axes, kept as size 1.", operands=["X"],
        shape=global_pool_shape, element=float_in_out)
ONNX.op("ReduceMean", "Mean over `axes`.", operands=["X"], attrs={"axes": ints(), "keepdims": int_(1)},
        shape=reduce_shape, element=float_in_out)
ONNX.op("ReduceSum", "Sum over `axes`.", operands=["X"], attrs={"axes": ints(), "keepdims": int_(1)},
        shape=reduce_shape, element=float_in_out)
ONNX.op("Flatten", "Reshape to 2-D at `axis`.", operands=["X"], attrs={"axis": int_(1)}, traits=("shape_only",),
        shape=flatten_shape, element=float_in_out)
ONNX.op("Reshape", "Reshape to `shape` (already resolved: no 0 or -1).", operands=["X"], attrs={"shape": ints()},
        traits=("shape_only",),
        shape=reshape_shape, element=float_in_out)
ONNX.op("Squeeze", "Remove size-1 `axes`.", operands=["X"], attrs={"axes": ints()}, traits=("shape_only",),
        shape=squeeze_shape, element=float_in_out)
ONNX.op("Unsqueeze", "Insert size-1 `axes`.", operands=["X"], attrs={"axes": ints()}, traits=("shape_only",),
        shape=unsqueeze_shape, element=float_in_out)
ONNX.op("Transpose", "Permute axes by `perm`.", operands=["X"], attrs={"perm": ints()}, traits=("shape_only",),
        shape=transpose_shape, element=float_in_out)
ONNX.op("Concat", "Concatenate along `axis`.", operands=["inputs*"], attrs={"axis": int_()}, traits=("shape_only",),
        shape=concat_shape, element=float_in_out)
ONNX.op("Pad", "Pad with `mode` ('constant' uses `value`).", operands=["X"],
        attrs={"pads": ints(), "mode": str_("constant", choices=("constant", "edge", "reflect")),
               "value": float_(0.0)}, traits=("shape_only",),
        shape=pad_shape, element=float_in_out)
ONNX.op("BatchNormalization", "Inference-mode batch normalisation over axis 1.",
        operands=["X", "scale", "B", "mean", "var"], attrs={"epsilon": float_(1e-5)},
        shape=batchnorm_shape, element=float_in_out)
ONNX.op("Softmax", "Softmax along `axis`.", operands=["X"], attrs={"axis": int_(-1)},
        shape=softmax_shape, element=float_in_out)
ONNX.op("LayerNormalization", "Normalise over the axes from `axis` on: (x - mean) / sqrt(var + epsilon) * Scale + B "
        "(the opset-17 op; the importer also fuses the ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add chain of "
        "older exports into it).", operands=["X", "Scale", "B?"],
        attrs={"axis": int_(-1), "epsilon": float_(1e-5)},
        shape=layernorm_shape, element=float_in_out)
ONNX.op("Gelu", "x * Phi(x): 0.5 x (1 + erf(x / sqrt 2)) with approximate = 'none', or the tanh form (the opset-20 "
        "op; the importer fuses the Div/Erf/Add/Mul/Mul chain into it).", operands=["X"],
        attrs={"approximate": str_("none", choices=("none", "tanh"))}, traits=("elementwise",),
        shape=same_as_first, element=float_in_out)
ONNX.op("Gather", "Take the constant `indices` along `axis` (ONNX Gather with a constant index tensor of rank 0 "
        "(`scalar`, the axis is removed) or rank 1).", operands=["X"],
        attrs={"axis": int_(0), "indices": ints(doc="negative counts from the end"),
               "scalar": bool_(False, doc="the index is a scalar: the axis is removed")},
        traits=("shape_only",),
        shape=gather_shape, element=float_in_out)
ONNX.op("Slice", "x[start:end:step] along each of `axes` (resolved: 0 <= start <= end <= size, step > 0).",
        operands=["X"], attrs={"starts": ints(), "ends": ints(), "axes": ints(), "steps": ints()},
        traits=("shape_only",),
        shape=slice_shape, element=float_in_out)
