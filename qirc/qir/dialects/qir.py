"""Dialect `qir`: the module's structure: graph inputs, outputs and constants."""
from ..ops import dense, dialect, str_
from ..shapes import const_shape

QIR = dialect("qir", "module structure: graph inputs, outputs and constants")

QIR.op("input", "A graph input; `name` is the input's name in the source model.",
       operands=[], attrs={"name": str_(doc="graph input name")})
QIR.op("output", "A graph output; `name` is the output's name in the source model.",
       operands=["x"], results=(), attrs={"name": str_(doc="graph output name")})
QIR.op("const", "A constant tensor. `value` holds the runtime values: floats for float types, the stored integers "
       "for quantized types.", operands=[], attrs={"value": dense(doc="the tensor's values")},
       shape=const_shape)
