"""Time the interpreter's integer conv/gemm kernels against the float32 kernels on the same shapes.

    python benchmarks/bench_interpreter.py [--repeat 5] [--batch 1]

Shapes are the layers that dominate the MLPerf Tiny networks (ResNet-8, MobileNetV1-0.25 VWW, DS-CNN, the FC
autoencoder).  Columns: the int kernel on int8-range data (float64-BLAS route, exact), the same kernel forced onto the
exact int64 route (operands too large for the float64 bound), and the float32 `onnx.*` kernel; times are the best
of `--repeat` runs in milliseconds.  On a shared machine run it with OPENBLAS_NUM_THREADS=1: multi-threaded BLAS
under contention turns sub-millisecond matmuls into 10-20 ms outliers.
"""
from __future__ import annotations

import argparse

import numpy as np

from common import best_of
from qirc.qir.interpreter import KERNELS
from qirc.qir.ir import Module, const_op, input_op
from qirc.qir.types import f32, i8, i32, i64, tensor

CONV_LAYERS = [
    # name, x shape (N=1), w shape, pads, strides, group
    ("resnet8 stage1 3x3", (1, 16, 32, 32), (16, 16, 3, 3), [1] * 4, [1, 1], 1),
    ("resnet8 stage3 3x3", (1, 64, 8, 8), (64, 64, 3, 3), [1] * 4, [1, 1], 1),
    ("mbv1 stem 3x3/2", (1, 3, 96, 96), (8, 3, 3, 3), [1] * 4, [2, 2], 1),
    ("mbv1 depthwise 3x3", (1, 32, 24, 24), (32, 1, 3, 3), [1] * 4, [1, 1], 32),
    ("mbv1 pointwise 1x1", (1, 32, 24, 24), (64, 32, 1, 1), [0] * 4, [1, 1], 1),
    ("dscnn stem 10x4/2", (1, 1, 49, 10), (64, 1, 10, 4), [5, 1, 4, 2], [2, 2], 1),
    ("dscnn depthwise 3x3", (1, 64, 25, 5), (64, 1, 3, 3), [1] * 4, [1, 1], 64),
]
GEMM_LAYERS = [
    ("autoencoder 640->128", (1, 640), (128, 640)),
    ("autoencoder 128->640", (1, 128), (640, 128)),
    ("resnet8 head 64->10", (1, 64), (10, 64)),
]


def best_ms(fn, repeat):
    return best_of(fn, repeat).wall * 1e3


def conv_op(name, xs, ws, pads, strides, group, element, acc):
    m = Module("bench")
    x = input_op(m, "x", tensor(xs, element))
    w = const_op(m, np.zeros(ws, element.np_dtype), tensor(ws, element))
    out = (xs[0], ws[0]) + tuple((xs[2 + i] + pads[i] + pads[i + 2] - ws[2 + i]) // strides[i] + 1 for i in range(2))
    return m.create(name, [x, w], [tensor(out, acc)], dict(kernel_shape=list(ws[2:]), pads=pads, strides=strides,
                                                           dilations=[1, 1], group=group))


def gemm_op(name, a_shape, b_shape, element, acc):
    m = Module("bench")
    a = input_op(m, "a", tensor(a_shape, element))
    b = const_op(m, np.zeros(b_shape, element.np_dtype), tensor(b_shape, element))
    return m.create(name, [a, b], [tensor((a_shape[0], b_shape[0]), acc)], dict(transB=1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1, help="batch size N fed to the kernels")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for label, xs, ws, pads, strides, group in CONV_LAYERS:
        xs = (args.batch,) + xs[1:]
        xi = rng.integers(-128, 128, xs).astype(np.int64)
        wi = rng.integers(-127, 128, ws).astype(np.int64)
        big_x, big_w = xi << 24, wi << 24  # bound above 2^53: forces the exact int64 route
        int_op = conv_op("int.conv", xs, ws, pads, strides, group, i8, i32)
        big_op = conv_op("int.conv", xs, ws, pads, strides, group, i64, i64)
        float_op = conv_op("onnx.Conv", xs, ws, pads, strides, group, f32, f32)
        xf, wf = xi.astype(np.float32), wi.astype(np.float32)
        kint, kflt = KERNELS["int.conv"], KERNELS["onnx.Conv"]
        (y_int,) = kint(int_op, [xi, wi])
        (y_flt,) = kflt(float_op, [xf, wf])
        assert np.array_equal(y_int, y_flt.astype(np.int64)), label  # small ints: float32 is exact here too
        rows.append((label, "x".join(map(str, xs)), best_ms(lambda: kint(int_op, [xi, wi]), args.repeat),
                     best_ms(lambda: kint(big_op, [big_x, big_w]), args.repeat),
                     best_ms(lambda: kflt(float_op, [xf, wf]), args.repeat)))
    for label, a_shape, b_shape in GEMM_LAYERS:
        a_shape = (args.batch,) + a_shape[1:]
        ai = rng.integers(-128, 128, a_shape).astype(np.int64)
        bi = rng.integers(-127, 128, b_shape).astype(np.int64)
        int_op = gemm_op("int.gemm", a_shape, b_shape, i8, i32)
        big_op = gemm_op("int.gemm", a_shape, b_shape, i64, i64)
        float_op = gemm_op("onnx.Gemm", a_shape, b_shape, f32, f32)
        af, bf = ai.astype(np.float32), bi.astype(np.float32)
        kint, kflt = KERNELS["int.gemm"], KERNELS["onnx.Gemm"]
        rows.append((label, "x".join(map(str, a_shape)), best_ms(lambda: kint(int_op, [ai, bi]), args.repeat),
                     best_ms(lambda: kint(big_op, [ai << 24, bi << 24]), args.repeat),
                     best_ms(lambda: kflt(float_op, [af, bf]), args.repeat)))
    header = ("layer", "input", "int ms", "int64-route ms", "float32 ms", "int/float")
    print(f"{header[0]:<22} {header[1]:<14} {header[2]:>9} {header[3]:>15} {header[4]:>11} {header[5]:>10}")
    for label, shape, t_int, t_big, t_flt in rows:
        print(f"{label:<22} {shape:<14} {t_int:>9.3f} {t_big:>15.3f} {t_flt:>11.3f} {t_int / t_flt:>10.2f}")


if __name__ == "__main__":
    main()
