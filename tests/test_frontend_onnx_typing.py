"""How the ONNX loader types values and orders nodes, and that its shortcuts change nothing imported:
a model whose value_info already types every value skips onnx's shape inference, any other model is inferred on a
light copy without its large initializers' data (with its nodes sorted), and a file already in topological order
keeps it."""
from __future__ import annotations

import numpy as np
import pytest

import qirc._onnx as qonnx
import qirc.frontends.onnx.loader as loader
from qirc.frontends.onnx import import_onnx
from qirc.qir.printer import print_module

from onnx_builders import GraphBuilder


def _model():
    """QDQ conv with a 16x8x3x3 weight (more elements than SHAPE_DATA_ELEMENTS) -> Reshape by a small constant."""
    rng = np.random.default_rng(3)
    b = GraphBuilder("typing")
    x = b.input("x", [1, 8, 6, 6])
    xq = b.qdq(x, scale=1 / 64, zero_point=0, prefix="/in")
    w = rng.normal(0, 0.3, size=(16, 8, 3, 3)).astype(np.float32)
    wq = b.qdq(b.const(w, "w"), scale=np.float32(np.abs(w).max() / 127), zero_point=0, prefix="/w")
    y = b.node("Conv", [xq, wq], name="/conv/Conv", pads=[1, 1, 1, 1])
    y = b.qdq(y, scale=1 / 16, zero_point=0, prefix="/act")
    y = b.node("Reshape", [y, b.const(np.array([1, -1], np.int64), "shape")], name="/flat/Reshape")
    b.output(y, "y")
    return b.build(13)


@pytest.fixture
def inferred_models(monkeypatch):
    """The models onnx's shape inference is run on during the test."""
    seen = []
    real = qonnx.shape_inference.infer_shapes

    def spy(model, *args, **kwargs):
        seen.append(qonnx.ModelProto.FromString(model.SerializeToString()))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(qonnx.shape_inference, "infer_shapes", staticmethod(spy))
    return seen


def test_shape_inference_runs_on_a_copy_without_large_initializer_data(inferred_models):
    model = _model()
    assert len(model.graph.value_info) == 0
    text = print_module(import_onnx(model))
    (light,) = inferred_models
    kept = {t.name for t in light.graph.initializer}
    assert "w" not in kept and "shape" in kept  # the Reshape's shape keeps its data: inference reads it
    (w_input,) = [vi for vi in light.graph.input if vi.name == "w"]
    assert [d.dim_value for d in w_input.type.tensor_type.shape.dim] == [16, 8, 3, 3]
    assert "1x576" in text  # the Reshape's output shape came out of that inference
    assert {t.name for t in model.graph.initializer} >= {"w", "shape"}  # the caller's model is untouched


def test_a_fully_typed_model_skips_shape_inference_and_imports_the_same(inferred_models):
    model = _model()
    typed = qonnx.shape_inference.infer_shapes(model)  # (recorded by the spy too: cleared below)
    assert len(typed.graph.value_info) > 0
    for out in typed.graph.output:
        assert out.type.tensor_type.HasField("shape")
    expected = print_module(import_onnx(model))
    inferred_models.clear()
    assert print_module(import_onnx(typed)) == expected
    assert inferred_models == []
    # one value without a static shape: inferred again, and still the same module
    partial = qonnx.ModelProto.FromString(typed.SerializeToString())
    partial.graph.value_info[0].type.tensor_type.shape.dim[0].dim_param = "N"
    assert print_module(import_onnx(partial)) == expected
    assert len(inferred_models) == 1


@pytest.mark.parametrize("typed", [False, True])
def test_nodes_out_of_file_order_import_as_in_order(typed):
    # typed: shape inference is skipped and only the sort matters; untyped: it runs on the sorted light copy
    model = _model()
    if typed:
        model = qonnx.shape_inference.infer_shapes(model)
    expected = print_module(import_onnx(model))
    shuffled = qonnx.ModelProto.FromString(model.SerializeToString())
    nodes = list(shuffled.graph.node)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(reversed(nodes))
    reordered = list(shuffled.graph.node)
    # the file order is not topological: the index sorts it
    sorted_nodes = loader.index_graph(shuffled, "shuffled.onnx").nodes
    assert [n.output[0] for n in sorted_nodes] != [n.output[0] for n in reordered]
    assert print_module(import_onnx(shuffled)) == expected
