"""Types of the quant IR, spelled as MLIR's builtin and quant dialects spell them.

    f32  i8  u8  i16  i32  i64                                   scalar element types
    !quant.uniform<i8:f32, 0.0078125:0>                          per-tensor scale:zero_point
    !quant.uniform<i8<-127:127>:f32:0, {0.012:0, 0.009:0}>       per-axis (axis 0), narrow storage range
    tensor<1x3x32x32xf32>   tensor<f32>                          ranked tensors (rank 0 allowed)

Types are immutable and hashable; equality is structural.  Scales are kept as Python floats (float64); they
print with repr(), which round-trips every float exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np


@dataclass(frozen=True)
class ScalarType:
    """A float or integer element type: f16, f32, f64, i1, i8..i64, u8..u64."""

    name: str

    def __post_init__(self):
        if self.name not in _SCALARS:
            raise ValueError(f"unknown element type '{self.name}'")

    @property
    def is_float(self) -> bool:
        return self.name[0] == "f"

    @property
    def is_int(self) -> bool:
        return not self.is_float

    @property
    def signed(self) -> bool:
        return self.name[0] in "if"

    @property
    def width(self) -> int:
        return int(self.name[1:])

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(_SCALARS[self.name])

    @property
    def min(self) -> int:
        """Smallest value of an integer type."""
        if self.name == "i1":
            return 0
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        """Largest value of an integer type."""
        if self.name == "i1":
            return 1
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    def __str__(self) -> str:
        return self.name


_SCALARS = {
    "f16": "float16", "f32": "float32", "f64": "float64",
    "i1": "bool", "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64",
    "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64",
}

f32 = ScalarType("f32")
f64 = ScalarType("f64")
i1 = ScalarType("i1")
i8 = ScalarType("i8")
u8 = ScalarType("u8")
i16 = ScalarType("i16")
i32 = ScalarType("i32")
i64 = ScalarType("i64")


def scalar_from_numpy(dtype) -> ScalarType:
    dtype = np.dtype(dtype)
    for name, np_name in _SCALARS.items():
        if np.dtype(np_name) == dtype:
            return ScalarType(name)
    raise ValueError(f"no IR element type for numpy dtype {dtype}")


@dataclass(frozen=True)
class UniformQuantType:
    """`!quant.uniform`: real = (stored - zero_point) * scale.

    storage:      the integer type of the stored values (i8, u8, i32, ...)
    storage_min/max: the range actually used (narrow range: i8<-127:127>); defaults to the storage type's range
    expressed:    the float type the values stand for (f32)
    scales, zero_points: one entry per tensor (axis None) or per index along `axis`
    """

    storage: ScalarType
    scales: Tuple[float, ...]
    zero_points: Tuple[int, ...]
    axis: Optional[int] = None
    storage_min: Optional[int] = None
    storage_max: Optional[int] = None
    expressed: ScalarType = f32

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "zero_points", tuple(int(z) for z in self.zero_points))
        if self.storage_min is None:
            object.__setattr__(self, "storage_min", self.storage.min)
        if self.storage_max is None:
            object.__setattr__(self, "storage_max", self.storage.max)
        object.__setattr__(self, "storage_min", int(self.storage_min))
        object.__setattr__(self, "storage_max", int(self.storage_max))

    # Convenience constructors -------------------------------------------------------------------------------
    @staticmethod
    def per_tensor(storage: ScalarType, scale: float, zero_point: int = 0, storage_min=None, storage_max=None,
                   expressed: ScalarType = f32) -> "UniformQuantType":
        return UniformQuantType(storage, (scale,), (zero_point,), None, storage_min, storage_max, expressed)

    @staticmethod
    def per_axis(storage: ScalarType, axis: int, scales, zero_points=None, storage_min=None, storage_max=None,
                 expressed: ScalarType = f32) -> "UniformQuantType":
        scales = tuple(float(s) for s in np.asarray(scales, dtype=np.float64).reshape(-1))
        if zero_points is None:
            zero_points = (0,) * len(scales)
        zero_points = tuple(int(z) for z in np.asarray(zero_points).reshape(-1))
        return UniformQuantType(storage, scales, zero_points, axis, storage_min, storage_max, expressed)

    # Queries ------------------------------------------------------------------------------------------------
    @property
    def is_per_axis(self) -> bool:
        return self.axis is not None

    @property
    def scale(self) -> float:
        """The scale of a per-tensor type."""
        if self.is_per_axis:
            raise ValueError("per-axis quant type has no single scale")
        return self.scales[0]

    @property
    def zero_point(self) -> int:
        if self.is_per_axis:
            raise ValueError("per-axis quant type has no single zero point")
        return self.zero_points[0]

    @property
    def narrow(self) -> bool:
        return (self.storage_min, self.storage_max) != (self.storage.min, self.storage.max)

    @property
    def is_float(self) -> bool:
        return False

    @property
    def is_int(self) -> bool:
        return True

    @property
    def signed(self) -> bool:
        return self.storage.signed

    @property
    def np_dtype(self) -> np.dtype:
        return self.storage.np_dtype

    @property
    def min(self) -> int:
        return self.storage_min

    @property
    def max(self) -> int:
        return self.storage_max

    def scales_for(self, rank: int) -> np.ndarray:
        """Scales as a float64 array broadcastable against a tensor of the given rank."""
        return self._broadcast(np.asarray(self.scales, dtype=np.float64), rank)

    def zero_points_for(self, rank: int) -> np.ndarray:
        return self._broadcast(np.asarray(self.zero_points, dtype=np.int64), rank)

    def _broadcast(self, a: np.ndarray, rank: int) -> np.ndarray:
        if not self.is_per_axis:
            return a.reshape(())
        shape = [1] * rank
        shape[self.axis] = a.size
        return a.reshape(shape)

    def with_(self, **changes) -> "UniformQuantType":
        d = dict(storage=self.storage, scales=self.scales, zero_points=self.zero_points, axis=self.axis,
                 storage_min=self.storage_min, storage_max=self.storage_max, expressed=self.expressed)
        if "storage" in changes and "storage_min" not in changes:
            d["storage_min"] = d["storage_max"] = None
        d.update(changes)
        return UniformQuantType(**d)

    def __str__(self) -> str:
        storage = str(self.storage)
        if self.narrow:
            storage += f"<{self.storage_min}:{self.storage_max}>"
        if self.is_per_axis:
            params = ", ".join(f"{_fmt_scale(s)}:{z}" for s, z in zip(self.scales, self.zero_points))
            return f"!quant.uniform<{storage}:{self.expressed}:{self.axis}, {{{params}}}>"
        return f"!quant.uniform<{storage}:{self.expressed}, {_fmt_scale(self.scales[0])}:{self.zero_points[0]}>"


def _fmt_scale(s: float) -> str:
    # repr() is the shortest string that reads back as the same float64; make sure it always looks like a float
    r = repr(float(s))
    return r if ("." in r or "e" in r or "n" in r) else r + ".0"


ElementType = Union[ScalarType, UniformQuantType]


@dataclass(frozen=True)
class TensorType:
    """A ranked tensor; `element` is a ScalarType or a UniformQuantType."""

    shape: Tuple[int, ...]
    element: ElementType

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def is_quant(self) -> bool:
        return isinstance(self.element, UniformQuantType)

    @property
    def is_float(self) -> bool:
        return isinstance(self.element, ScalarType) and self.element.is_float

    @property
    def is_int(self) -> bool:
        """True for plain integer tensors and for quantized ones (whose runtime values are the stored integers)."""
        return not self.is_float

    @property
    def quant(self) -> UniformQuantType:
        if not self.is_quant:
            raise ValueError(f"{self} is not a quantized tensor type")
        return self.element

    @property
    def storage(self) -> ScalarType:
        """The type of the runtime values: the storage type of a quant type, else the element type."""
        return self.element.storage if self.is_quant else self.element

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.element)

    def with_element(self, element: ElementType) -> "TensorType":
        return TensorType(self.shape, element)

    def __str__(self) -> str:
        dims = "".join(f"{d}x" for d in self.shape)
        return f"tensor<{dims}{self.element}>"


def tensor(shape, element: ElementType) -> TensorType:
    return TensorType(tuple(shape), element)
