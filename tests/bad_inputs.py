"""Builders of malformed and unsupported inputs for the command-line tools (tests/test_bad_inputs.py).

Each builder writes its files into an empty folder and returns the paths the command line refers to, keyed by the
placeholder names the case table uses ("model", "inputs", ...).  The models are deliberately tiny: the suite runs
every case through the real console scripts, so the cost is in process start-up, not in the model.

    paths = BUILDERS["cycle"](folder)        # {"model": folder / "model.onnx"}
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnx_builders import GraphBuilder

Paths = Dict[str, Path]

#: A small valid quant-level module: a per-tensor int8 quantizer around a Relu.
GOOD_QIR = """\
qir.module @m {
  %x = qir.input "x" : tensor<1x4xf32>  loc("x")
  %0 = quant.qcast %x {rounding = "round_add"} : tensor<1x4x!quant.uniform<i8:f32, 0.125:0>>  loc("/q/QuantizeLinear")
  %1 = quant.dcast %0 : tensor<1x4xf32>  loc("/q/DequantizeLinear")
  %2 = onnx.Relu %1 : tensor<1x4xf32>  loc("/relu/Relu")
  qir.output "y" %2  loc("y")
}
"""


# a well-formed model that no Deeploy target can take: its output is requantized to 16 bits
UNLOWERABLE_QIR = """\
qir.module @m {
  %x = qir.input "x" : tensor<1x4xf32>  loc("x")
  %0 = quant.qcast %x {rounding = "round_add"} : tensor<1x4x!quant.uniform<i8:f32, 0.125:0>>  loc("/q/QuantizeLinear")
  %1 = quant.dcast %0 : tensor<1x4xf32>  loc("/q/DequantizeLinear")
  %2 = onnx.Relu %1 : tensor<1x4xf32>  loc("/relu/Relu")
  %3 = quant.qcast %2 {rounding = "round_add"} : tensor<1x4x!quant.uniform<i16:f32, 0.001:0>>  loc("/q16/QuantizeLinear")
  %4 = quant.dcast %3 : tensor<1x4xf32>  loc("/q16/DequantizeLinear")
  qir.output "y" %4  loc("y")
}
"""


# ----- helpers -------------------------------------------------------------------------------------------------------
def _save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Paths:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return {"model": path}


def _raw_graph(nodes, inputs, outputs, opset: int = 13) -> onnx.ModelProto:
    """A model from hand-written nodes, without checks (the point is that it is broken)."""
    graph = helper.make_graph(nodes, "bad", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _vi(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def small_qdq_model(opset: int = 13) -> onnx.ModelProto:
    """x -> QDQ int8 -> Relu -> y: valid, compiles for every target."""
    b = GraphBuilder("small")
    x = b.input("x", [1, 8])
    y = b.node("Relu", [b.qdq(x, 1 / 16, 0, prefix="/q")], name="/relu/Relu")
    b.output(b.qdq(y, 1 / 16, 0, prefix="/out"), "y")
    return b.build(opset)


def _scaled_model(scale, zero_point=0.0, decomposed: bool = True) -> onnx.ModelProto:
    b = GraphBuilder("scale")
    x = b.input("x", [1, 8])
    if decomposed:
        b.output(b.quant(x, scale, zero_point, prefix="/q"), "y")
    else:
        b.output(b.qdq(x, scale, zero_point, prefix="/q"), "y")
    return b.build(13, check=False)


# ----- files that are not ONNX models --------------------------------------------------------------------------------
def truncated_onnx(folder: Path) -> Paths:
    data = small_qdq_model().SerializeToString()
    path = folder / "model.onnx"
    path.write_bytes(data[: len(data) // 2])
    return {"model": path}


def random_bytes(folder: Path) -> Paths:
    path = folder / "model.onnx"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {"model": path}


def empty_file(folder: Path) -> Paths:
    path = folder / "model.onnx"
    path.write_bytes(b"")
    return {"model": path}


def text_file_named_onnx(folder: Path) -> Paths:
    path = folder / "model.onnx"
    path.write_text(GOOD_QIR)
    return {"model": path}


def missing_model(folder: Path) -> Paths:
    return {"model": folder / "absent.onnx"}


def unknown_extension(folder: Path) -> Paths:
    path = folder / "model.tflite"
    path.write_bytes(small_qdq_model().SerializeToString())
    return {"model": path}


def model_is_a_directory(folder: Path) -> Paths:
    path = folder / "model.onnx"
    path.mkdir()
    return {"model": path}


# ----- graph structure -----------------------------------------------------------------------------------------------
def empty_graph(folder: Path) -> Paths:
    return _save(_raw_graph([], [_vi("x", [1, 8])], [_vi("x", [1, 8])]), folder)


def no_outputs(folder: Path) -> Paths:
    model = small_qdq_model()
    del model.graph.output[:]
    return _save(model, folder)


def cycle(folder: Path) -> Paths:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="/cyc/Add"),
             helper.make_node("Relu", ["a"], ["b"], name="/cyc/Relu")]
    return _save(_raw_graph(nodes, [_vi("x", [4])], [_vi("b", [4])]), folder)


def dangling_tensor(folder: Path) -> Paths:
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="/add/Add")]
    return _save(_raw_graph(nodes, [_vi("x", [4])], [_vi("y", [4])]), folder)


def dangling_graph_output(folder: Path) -> Paths:
    model = small_qdq_model()
    model.graph.output.append(_vi("phantom", [1, 8]))
    return _save(model, folder)


def duplicate_output_names(folder: Path) -> Paths:
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="/a/Relu"),
             helper.make_node("Sigmoid", ["x"], ["y"], name="/b/Sigmoid")]
    return _save(_raw_graph(nodes, [_vi("x", [4])], [_vi("y", [4])]), folder)


def dynamic_shape(folder: Path) -> Paths:
    b = GraphBuilder("dyn")
    x = b.input("x", ["N", "C"])  # a lone dynamic batch dim would be bound to 1 (with a note)
    y = b.node("Relu", [b.qdq(x, 1 / 16, 0, prefix="/q")], name="/relu/Relu")
    b.output(b.qdq(y, 1 / 16, 0, prefix="/out"), "y")
    return _save(b.build(13), folder)


def unknown_ops(folder: Path) -> Paths:
    """Three unsupported op types (one of them twice) behind a valid input quantizer."""
    b = GraphBuilder("unknown")
    x = b.qdq(b.input("x", [1, 4, 8]), 1 / 16, 0, prefix="/q")
    e = b.node("Erf", [x], name="/gelu/Erf")
    s = b.node("Softsign", [e], name="/act/Softsign")
    t = b.node("Erf", [s], name="/gelu/Erf_1")
    b.output(b.node("Selu", [t], name="/act/Selu"), "y")
    return _save(b.build(14, check=False), folder)


def corrupt_initializer(folder: Path) -> Paths:
    """An initializer whose raw bytes are not a whole number of float32 elements."""
    model = small_qdq_model()
    scale = model.graph.initializer[0]
    scale.raw_data = scale.raw_data[:2]
    return _save(model, folder)


def conv_channel_mismatch(folder: Path) -> Paths:
    """A Conv whose weight takes 5 input channels, fed 3."""
    b = GraphBuilder("channels")
    x = b.qdq(b.input("x", [1, 3, 8, 8]), 1 / 64, 0, prefix="/in")
    w = b.qdq(b.const(np.zeros((4, 5, 3, 3), np.float32)), 0.01, 0, prefix="/w")
    b.output(b.qdq(b.node("Conv", [x, w], name="/conv/Conv"), 1 / 32, 0, prefix="/out"), "y")
    return _save(b.build(13, check=False), folder)


def opset_too_old(folder: Path) -> Paths:
    model = small_qdq_model()
    model.opset_import[0].version = 6
    return _save(model, folder)


def subgraph_control_flow(folder: Path) -> Paths:
    body = helper.make_graph([helper.make_node("Identity", ["x"], ["t"], name="/then/Identity")], "then", [],
                             [_vi("t", [4])])
    cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
    nodes = [helper.make_node("If", ["c"], ["y"], name="/branch/If", then_branch=body, else_branch=body)]
    graph = helper.make_graph(nodes, "ctrl", [_vi("x", [4])], [_vi("y", [4])], [cond])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), folder)


def external_data_outside(folder: Path) -> Paths:
    """An initializer whose external data file is `../secret.bin`: outside the model's folder."""
    model_dir = folder / "model"
    model_dir.mkdir()
    (folder / "secret.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes())
    b = GraphBuilder("ext")
    x = b.qdq(b.input("x", [8]), 1 / 16, 0, prefix="/q")
    b.output(b.node("Add", [x, b.const(np.zeros(8, np.float32), "w")], name="/add/Add"), "y")
    model = b.build(13)
    w = next(t for t in model.graph.initializer if t.name == "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../secret.bin")
    return _save(model, model_dir)


def constant_external_data_outside(folder: Path) -> Paths:
    """A Constant node whose value tensor keeps its data in `../secret.bin`: a tensor outside the initializers that
    the external-data check must still find."""
    model_dir = folder / "model"
    model_dir.mkdir()
    (folder / "secret.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes())
    b = GraphBuilder("ext_const")
    x = b.qdq(b.input("x", [8]), 1 / 16, 0, prefix="/q")
    k = b.constant_node(np.zeros(8, np.float32), name="/k/Constant")
    b.output(b.node("Add", [x, k], name="/add/Add"), "y")
    model = b.build(13)
    value = next(n for n in model.graph.node if n.op_type == "Constant").attribute[0].t
    value.ClearField("raw_data")
    value.data_location = TensorProto.EXTERNAL
    value.external_data.add(key="location", value="../secret.bin")
    return _save(model, model_dir)


def external_data_missing(folder: Path) -> Paths:
    b = GraphBuilder("ext")
    x = b.qdq(b.input("x", [8]), 1 / 16, 0, prefix="/q")
    b.output(b.node("Add", [x, b.const(np.zeros(8, np.float32), "w")], name="/add/Add"), "y")
    model = b.build(13)
    w = next(t for t in model.graph.initializer if t.name == "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="weights.bin")
    return _save(model, folder)


# ----- quantization parameters ---------------------------------------------------------------------------------------
def non_constant_scale(folder: Path) -> Paths:
    b = GraphBuilder("dyn_scale")
    x = b.input("x", [1, 8])
    s = b.input("s", [])
    q = b.node("QuantizeLinear", [x, s, b.const(np.int8(0))], name="/q/QuantizeLinear")
    b.output(b.node("DequantizeLinear", [q, s, b.const(np.int8(0))], name="/q/DequantizeLinear"), "y")
    return _save(b.build(13), folder)


def scale_builder(scale: float, decomposed: bool) -> Callable[[Path], Paths]:
    def build(folder: Path) -> Paths:
        return _save(_scaled_model(scale, decomposed=decomposed), folder)
    return build


def zero_point_builder(zero_point: float) -> Callable[[Path], Paths]:
    def build(folder: Path) -> Paths:
        return _save(_scaled_model(0.1, zero_point, decomposed=True), folder)
    return build


def per_axis_mismatch(folder: Path) -> Paths:
    b = GraphBuilder("axis")
    x = b.input("x", [1, 4, 3, 3])
    b.output(b.qdq(x, np.full(3, 0.1, np.float32), np.zeros(3, np.int8), axis=1, prefix="/q"), "y")
    return _save(b.build(13, check=False), folder)


def int16_activation(folder: Path) -> Paths:
    """A QDQ pair in int16 (opset 21) around a Relu: valid ONNX, not something an int8-only platform runs."""
    b = GraphBuilder("int16")
    x = b.input("x", [1, 8])
    y = b.node("Relu", [b.qdq(x, 1 / 256, 0, dtype=np.int16, prefix="/q16")], name="/relu/Relu")
    b.output(b.qdq(y, 1 / 256, 0, dtype=np.int16, prefix="/out16"), "y")
    return _save(b.build(21), folder)


def int4_storage(folder: Path) -> Paths:
    """A QDQ pair with INT4 storage (opset 21).  (A 4-bit range in int8 storage, as QONNX Quant bits=4 gives, is
    not a bad input: every target runs it as int8 with a 16-level RequantShift.)"""
    b = GraphBuilder("int4")
    x = b.input("x", [1, 8])
    scale = b.const(np.float32(0.25))
    b.initializers.append(helper.make_tensor("zero_point_4", TensorProto.INT4, [], [0]))
    q = b.node("QuantizeLinear", [x, scale, "zero_point_4"], name="/q4/QuantizeLinear")
    y = b.node("DequantizeLinear", [q, scale, "zero_point_4"], name="/q4/DequantizeLinear")
    b.output(b.node("Relu", [y], name="/relu/Relu"), "y")
    return _save(b.build(21, check=False), folder)


def float_model(folder: Path) -> Paths:
    """No quantizer at all: nothing says which integers the target should compute with."""
    b = GraphBuilder("float")
    x = b.input("x", [1, 8])
    w = b.const(np.eye(8, dtype=np.float32))
    b.output(b.node("Relu", [b.node("MatMul", [x, w], name="/fc/MatMul")], name="/relu/Relu"), "y")
    return _save(b.build(13), folder)


# ----- textual IR ----------------------------------------------------------------------------------------------------
def _qir(folder: Path, text: str, name: str = "model.qir") -> Paths:
    path = folder / name
    path.write_text(text)
    return {"model": path}


def qir_truncated(folder: Path) -> Paths:
    return _qir(folder, GOOD_QIR[: GOOD_QIR.index("%2 = onnx.Relu") + len("%2 = onnx.Relu %1 :")])


def qir_unknown_op(folder: Path) -> Paths:
    return _qir(folder, GOOD_QIR.replace("onnx.Relu %1", "onnx.Frobnicate %1"))


def qir_undefined_value(folder: Path) -> Paths:
    return _qir(folder, GOOD_QIR.replace("onnx.Relu %1", "onnx.Relu %7"))


def qir_bad_shape(folder: Path) -> Paths:
    return _qir(folder, GOOD_QIR.replace("%2 = onnx.Relu %1 : tensor<1x4xf32>", "%2 = onnx.Relu %1 : tensor<1x3xf32>"))


def qir_bad_scale(folder: Path, scale: str = "0.0") -> Paths:
    return _qir(folder, GOOD_QIR.replace("0.125:0", f"{scale}:0"))


def qir_negative_scale(folder: Path) -> Paths:
    return qir_bad_scale(folder, "-0.125")


def qir_zero_point_out_of_range(folder: Path) -> Paths:
    return _qir(folder, GOOD_QIR.replace("0.125:0", "0.125:300"))


# ----- simulator inputs ----------------------------------------------------------------------------------------------
def sim_model_with(arrays: Dict[str, np.ndarray]) -> Callable[[Path], Paths]:
    """The small QDQ model and an .npz holding `arrays` (which do not match its one input 'x' of shape 1x8)."""
    def build(folder: Path) -> Paths:
        paths = _save(small_qdq_model(), folder)
        npz = folder / "inputs.npz"
        np.savez(npz, **arrays)
        paths["inputs"] = npz
        return paths
    return build


def qir_with_inputs(text_builder: Callable[[Path], Paths], **arrays) -> Callable[[Path], Paths]:
    """A textual module (from `text_builder`) and an .npz holding `arrays`."""
    def build(folder: Path) -> Paths:
        paths = text_builder(folder)
        paths["inputs"] = folder / "inputs.npz"
        np.savez(paths["inputs"], **arrays)
        return paths
    return build


def sim_not_an_npz(folder: Path) -> Paths:
    paths = _save(small_qdq_model(), folder)
    paths["inputs"] = folder / "inputs.npz"
    paths["inputs"].write_bytes(b"this is not a zip archive\n")
    return paths


def npy_instead_of_npz(folder: Path) -> Paths:
    """A bare .npy array where an .npz archive of named arrays is expected."""
    paths = _save(small_qdq_model(), folder)
    paths["inputs"] = folder / "inputs.npy"
    np.save(paths["inputs"], np.zeros((1, 8), np.float32))
    return paths


# ----- valid models (for output-path and usage errors) ---------------------------------------------------------------
def good_model(folder: Path) -> Paths:
    return _save(small_qdq_model(), folder)


def good_qir(folder: Path) -> Paths:
    return _qir(folder, GOOD_QIR)


def unlowerable_qir(folder: Path) -> Paths:
    return _qir(folder, UNLOWERABLE_QIR)


def output_is_a_file(folder: Path) -> Paths:
    paths = good_model(folder)
    paths["out"] = folder / "occupied"
    paths["out"].write_text("a file where the output directory should go\n")
    return paths


def output_under_a_file(folder: Path) -> Paths:
    paths = good_model(folder)
    (folder / "afile").write_text("a file, not a folder\n")
    paths["out"] = folder / "afile" / "sub"
    return paths


def output_in_read_only_folder(folder: Path) -> Paths:
    """The output directory's parent is made unwritable by the test (chattr +i as root, chmod otherwise)."""
    paths = good_model(folder)
    locked = folder / "locked"
    locked.mkdir()
    (locked / "keep.txt").write_text("untouched\n")
    paths["locked"] = locked
    paths["out"] = locked / "out"
    return paths


def good_model_and_inputs(folder: Path) -> Paths:
    paths = good_model(folder)
    paths["inputs"] = folder / "inputs.npz"
    np.savez(paths["inputs"], x=np.zeros((1, 8), np.float32))
    (folder / "afile").write_text("a file, not a folder\n")
    paths["afile"] = folder / "afile"
    return paths


def tree_listing(root: Path) -> Dict[str, str]:
    """Every path under `root` (relative) -> 'dir' or the sha256 of the file: equal listings = untouched tree."""
    import hashlib
    listing = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            listing[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            full = os.path.join(dirpath, f)
            with open(full, "rb") as fh:
                listing[os.path.relpath(full, root)] = hashlib.sha256(fh.read()).hexdigest()
    return listing
