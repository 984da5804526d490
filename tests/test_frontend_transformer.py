"""Importing Brevitas transformer exports (issue 13): the LayerNorm and Erf-GELU chains fuse into
onnx.LayerNormalization / onnx.Gelu, QuantMultiheadAttention's shape arithmetic folds, and the quant-level IR
interpreted gives onnxruntime's output (graph optimisations disabled) on the exported file.

Hand-built graphs check each pattern (and what is not fused); a Brevitas encoder block (d 64, 4 heads, 16 tokens)
is exported in every form: Brevitas QDQ at opset 13 (LayerNorm spelled out) and 17 (LayerNormalization), QONNX
(opset 20: LayerNormalization, Gelu), and the decomposed QCDQ that qirc writes; with packed and separate
in-projections, batch-first and sequence-first.  The zoo transformers in every form are in the slow suite.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

from onnx_builders import ort_session  # noqa: E402
from qirc.frontends.onnx import import_onnx  # noqa: E402
from qirc.qir.diagnostics import FrontendError  # noqa: E402
from qirc.qir.interpreter import random_inputs, run  # noqa: E402
from qirc.qir.verifier import verify  # noqa: E402


def _model(nodes, inputs, outputs, inits, opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.float32)))


def _layernorm_chain(x, prefix, gamma=None, beta=None):
    """The opset-13 LayerNorm as torch exports it."""
    p = prefix
    nodes = [helper.make_node("ReduceMean", [x], [f"{p}/m"], axes=[-1], name=f"{p}/ReduceMean"),
             helper.make_node("Sub", [x, f"{p}/m"], [f"{p}/d"], name=f"{p}/Sub"),
             _const(f"{p}/two", 2.0),
             helper.make_node("Pow", [f"{p}/d", f"{p}/two"], [f"{p}/p"], name=f"{p}/Pow"),
             helper.make_node("ReduceMean", [f"{p}/p"], [f"{p}/v"], axes=[-1], name=f"{p}/ReduceMean_1"),
             _const(f"{p}/eps", 1e-5),
             helper.make_node("Add", [f"{p}/v", f"{p}/eps"], [f"{p}/ve"], name=f"{p}/Add"),
             helper.make_node("Sqrt", [f"{p}/ve"], [f"{p}/s"], name=f"{p}/Sqrt"),
             helper.make_node("Div", [f"{p}/d", f"{p}/s"], [f"{p}/n"], name=f"{p}/Div")]
    out = f"{p}/n"
    if gamma is not None:
        nodes.append(helper.make_node("Mul", [out, gamma], [f"{p}/g"], name=f"{p}/Mul"))
        out = f"{p}/g"
    if beta is not None:
        nodes.append(helper.make_node("Add", [out, beta], [f"{p}/b"], name=f"{p}/Add_1"))
        out = f"{p}/b"
    return nodes, out


def _gelu_chain(x, prefix):
    p = prefix
    return [_const(f"{p}/c", math.sqrt(2.0)),
            helper.make_node("Div", [x, f"{p}/c"], [f"{p}/d"], name=f"{p}/Div"),
            helper.make_node("Erf", [f"{p}/d"], [f"{p}/e"], name=f"{p}/Erf"),
            _const(f"{p}/one", 1.0),
            helper.make_node("Add", [f"{p}/e", f"{p}/one"], [f"{p}/a"], name=f"{p}/Add"),
            helper.make_node("Mul", [x, f"{p}/a"], [f"{p}/m"], name=f"{p}/Mul"),
            _const(f"{p}/half", 0.5),
            helper.make_node("Mul", [f"{p}/m", f"{p}/half"], [f"{p}/y"], name=f"{p}/Mul_1")], f"{p}/y"


def _compare(model, module, seeds=(0, 1), rtol=2e-6):
    session = ort_session(model)
    for seed in seeds:
        feeds = random_inputs(module, seed)
        ref = session.run(None, feeds)[0]
        got = next(iter(run(module, feeds).values()))
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=rtol * 8 * max(1.0, float(np.abs(ref).max())))


def assert_kernel_quantizers(module):
    """The scales the integer kernels need are there: softmax, GELU and LayerNorm read a dequantized tensor and
    only feed quantizers (through data movement such as batch_first's Transpose, which commutes with them)."""
    def readers(value):
        for user, _ in value.uses:
            if "shape_only" in user.opdef.traits:
                yield from readers(user.results[0])
            else:
                yield user.name

    def source(value):
        op = value.owner
        return source(op.operands[0]) if "shape_only" in op.opdef.traits else op.name

    for name in ("onnx.Softmax", "onnx.Gelu", "onnx.LayerNormalization"):
        for op in module.walk(name):
            assert source(op.operands[0]) == "quant.dcast", op.loc
            assert set(readers(op.results[0])) == {"quant.qcast"}, op.loc


def _reads_input(value, seen=None) -> bool:
    """Whether `value` depends on a graph input (an activation, not a constant)."""
    seen = set() if seen is None else seen
    op = value.owner
    if op.name == "qir.input":
        return True
    if id(op) in seen:
        return False
    seen.add(id(op))
    return any(_reads_input(v, seen) for v in op.operands)


def _float_ops(module):
    return Counter(op.name for op in module.ops() if op.dialect == "onnx")


@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, False)])
def test_layernorm_chain_fuses_to_one_op(affine):
    rng = np.random.default_rng(0)
    inits = {"gamma": rng.uniform(0.5, 1.5, 8).astype(np.float32), "beta": rng.uniform(-1, 1, 8).astype(np.float32)}
    nodes, out = _layernorm_chain("x", "/ln", "gamma" if affine[0] else None, "beta" if affine[1] else None)
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 8])],
                   [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 5, 8])], inits)
    module = import_onnx(model)
    verify(module)
    assert _float_ops(module) == Counter({"onnx.LayerNormalization": 1})
    (ln,) = module.walk("onnx.LayerNormalization")
    assert ln.loc == "/ln" and ln.attr("axis") == 2 and ln.attr("epsilon") == pytest.approx(1e-5)
    assert len(ln.operands) == 2 + affine[1]  # Scale is ones without an affine part
    _compare(model, module)


def test_layernorm_chain_with_an_intermediate_read_elsewhere_is_not_fused():
    # the variance is also a graph output: fusing would lose it, and Pow / Sqrt on activations are not imported
    nodes, out = _layernorm_chain("x", "/ln")
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 8])],
                   [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 5, 8]),
                    helper.make_tensor_value_info("/ln/v", TensorProto.FLOAT, [1, 5, 1])], {})
    with pytest.raises(FrontendError, match=r"unsupported ops: Pow \(/ln/Pow\), Sqrt \(/ln/Sqrt\)"):
        import_onnx(model)


def test_gelu_chain_fuses_to_one_op():
    nodes, out = _gelu_chain("x", "/gelu")
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 300])],
                   [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, 300])], {})
    module = import_onnx(model)
    assert _float_ops(module) == Counter({"onnx.Gelu": 1})
    (gelu,) = module.walk("onnx.Gelu")
    assert gelu.loc == "/gelu" and gelu.attr("approximate") == "none"
    _compare(model, module, seeds=(0, 1, 2))


def test_gelu_tanh_chain_as_torch_exports_it_fuses_to_one_op():
    # torch.onnx.export(nn.GELU(approximate="tanh")) at opset 13, constants first as torch writes them
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Mul", ["x", "sq"], ["cube"]),
             _const("c", 0.044715), helper.make_node("Mul", ["c", "cube"], ["cc"]),
             helper.make_node("Add", ["x", "cc"], ["inner"]), _const("k", math.sqrt(2 / math.pi)),
             helper.make_node("Mul", ["k", "inner"], ["arg"]), helper.make_node("Tanh", ["arg"], ["t"], name="/g/Tanh"),
             _const("one", 1.0), helper.make_node("Add", ["one", "t"], ["t1"]),
             helper.make_node("Mul", ["x", "t1"], ["xt"]), _const("half", 0.5),
             helper.make_node("Mul", ["half", "xt"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 300])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 300])], {})
    module = import_onnx(model)
    assert _float_ops(module) == Counter({"onnx.Gelu": 1})
    assert module.walk("onnx.Gelu")[0].attr("approximate") == "tanh"
    _compare(model, module, seeds=(0, 1, 2))


def test_opset_17_layernormalization_and_opset_20_gelu():
    rng = np.random.default_rng(1)
    inits = {"gamma": rng.uniform(0.5, 1.5, 16).astype(np.float32), "beta": rng.uniform(-1, 1, 16).astype(np.float32)}
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], epsilon=1e-6, name="/ln"),
             helper.make_node("Gelu", ["n"], ["y"], name="/gelu")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4, 16])], inits, opset=20)
    module = import_onnx(model)
    assert _float_ops(module) == Counter({"onnx.LayerNormalization": 1, "onnx.Gelu": 1})
    _compare(model, module)


def test_packed_projection_split_by_shape_arithmetic():
    """QuantMultiheadAttention's chunk(3): Slices whose ends are Shape -> Gather -> Add -> Div -> Mul of the packed
    projection; shape inference leaves them unknown, the importer folds them and keeps three onnx.Slice."""
    i64 = lambda v: np.asarray(v, np.int64)  # noqa: E731
    inits = {"last": i64([-1]), "zero": i64([0]), "idx": i64(2), "add": i64(2), "div": i64(3), "one": i64([1]),
             "two": i64([2]), "three": i64([3])}
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "idx"], ["e3"], axis=0),
             helper.make_node("Add", ["e3", "add"], ["e3a"]),
             helper.make_node("Div", ["e3a", "div"], ["e"]),
             helper.make_node("Mul", ["e", "one"], ["end0"]),
             helper.make_node("Mul", ["e", "two"], ["end1"]),
             helper.make_node("Mul", ["e", "three"], ["end2"]),
             helper.make_node("Slice", ["x", "zero", "end0", "last"], ["q"], name="/attn/Slice"),
             helper.make_node("Slice", ["x", "end0", "end1", "last"], ["k"], name="/attn/Slice_1"),
             helper.make_node("Slice", ["x", "end1", "end2", "last"], ["v"], name="/attn/Slice_2"),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("MatMul", ["s", "v"], ["y"]),
             helper.make_node("Gather", ["y", "zero"], ["cls"], axis=1, name="/Gather")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 12])],
                   [helper.make_tensor_value_info("cls", TensorProto.FLOAT, [1, 1, 4])], inits)
    module = import_onnx(model)
    verify(module)
    slices = module.walk("onnx.Slice")
    assert [(s.attr("starts"), s.attr("ends"), s.attr("axes")) for s in slices] == \
        [([0], [4], [2]), ([4], [8], [2]), ([8], [12], [2])]
    (gather,) = module.walk("onnx.Gather")
    assert gather.attr("indices") == [0] and not gather.attr("scalar") and gather.results[0].type.shape == (1, 1, 4)
    _compare(model, module)


def test_gather_with_computed_indices_is_refused():
    nodes = [helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=0),
             helper.make_node("Gather", ["x", "i"], ["y"], axis=1, name="/Gather")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], {})
    with pytest.raises(FrontendError, match=r"unsupported ops: .*Gather \(/Gather\)"):
        import_onnx(model)


# ----- Brevitas encoder blocks ----------------------------------------------------------------------------------
brevitas_needed = pytest.mark.brevitas
SEQ, DIM, HEADS, MLP = 16, 64, 4, 128
BLOCK_CONFIGS = {"packed-batch_first": dict(packed_in_proj=True, batch_first=True),
                 "separate-seq_first": dict(packed_in_proj=False, batch_first=False)}
FORMS = ("qdq13", "qdq17", "qonnx", "qcdq")


@pytest.fixture(scope="module")
def blocks():
    """config name -> (calibrated Brevitas module, example input), built once."""
    pytest.importorskip("brevitas")
    import torch
    from brevitas.graph.calibrate import calibration_mode
    from qirc.zoo.networks import QuantEncoderBlock, QuantOptions, signed_act

    class Block(torch.nn.Module):
        def __init__(self, batch_first, packed_in_proj):
            super().__init__()
            self.input_quant = signed_act(QuantOptions(), return_quant_tensor=False)
            self.block = QuantEncoderBlock(QuantOptions(), DIM, HEADS, MLP, batch_first, packed_in_proj)

        def forward(self, x):
            return self.block(self.input_quant(x))

    built = {}
    for name, cfg in BLOCK_CONFIGS.items():
        torch.manual_seed(0)
        model = Block(**cfg).eval()
        with torch.no_grad():
            for ln in (model.block.ln1, model.block.ln2):
                ln.weight.uniform_(0.5, 1.5)
                ln.bias.uniform_(-0.1, 0.1)
        shape = (1, SEQ, DIM) if cfg["batch_first"] else (SEQ, 1, DIM)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad(), calibration_mode(model):
            for _ in range(4):
                model(torch.randn(shape, generator=g))
        built[name] = (model, torch.zeros(shape))
    return built


def _export_form(model, example, form, tmp_path):
    from qirc.backends.onnx import write_onnx
    from qirc.frontends.brevitas import export_onnx

    if form == "qcdq":
        qdq = onnx.load(str(export_onnx(model, example, tmp_path / "block.qdq.onnx", format="qdq")))
        return write_onnx(import_onnx(qdq), form="qcdq")
    fmt, opset = {"qdq13": ("qdq", 13), "qdq17": ("qdq", 17), "qonnx": ("qonnx", None)}[form]
    return onnx.load(str(export_onnx(model, example, tmp_path / f"block.{form}.onnx", format=fmt, opset=opset)))


def _reference(model_proto):
    from brevitas_models import qonnx_as_standard_onnx
    is_qonnx = any(n.op_type == "Quant" for n in model_proto.graph.node)
    return ort_session(qonnx_as_standard_onnx(model_proto) if is_qonnx else model_proto)


def _check_against_onnxruntime(model_proto, module, samples=4):
    """Interpreted output within float rounding of onnxruntime's: the output is quantized, so a float difference
    can only move a value lying on a rounding tie, by one output step."""
    session = _reference(model_proto)
    out = module.outputs[0].operands[0]
    step = float(out.owner.operands[0].type.element.scale)
    for seed in range(samples):
        feeds = random_inputs(module, seed)
        ref = session.run(None, feeds)[0]
        got = next(iter(run(module, feeds).values()))
        steps = np.rint(np.abs(got - ref) / step)
        assert steps.max() <= 1 and np.count_nonzero(steps) <= max(1, ref.size // 200), (seed, steps.max())


@brevitas_needed
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("config", list(BLOCK_CONFIGS))
def test_encoder_block_imports_in_every_form(blocks, tmp_path, config, form):
    model, example = blocks[config]
    model_proto = _export_form(model, example, form, tmp_path)
    ops = Counter(n.op_type for n in model_proto.graph.node)
    if form in ("qdq13", "qcdq"):
        assert ops["Pow"] == 2 and ops["Erf"] == 1 and "LayerNormalization" not in ops
    else:
        assert ops["LayerNormalization"] == 2 and "Pow" not in ops
    module = import_onnx(model_proto)
    verify(module)
    fl = _float_ops(module)
    # the canonical float ops and nothing of the chains or of the shape arithmetic
    assert fl["onnx.LayerNormalization"] == 2 and fl["onnx.Gelu"] == 1 and fl["onnx.Softmax"] == 1
    two_activations = [m for m in module.walk("onnx.MatMul") if all(_reads_input(v) for v in m.operands)]
    assert len(two_activations) == 2  # Q K^T and P V (the dense layers are MatMuls with a constant operand)
    assert fl["onnx.Slice"] == (3 if config.startswith("packed") else 0)
    assert_kernel_quantizers(module)
    _check_against_onnxruntime(model_proto, module)


@brevitas_needed
def test_class_token_expanded_to_the_batch_and_flatten_of_token_axes(tmp_path):
    """`cls.expand(x.shape[0], -1, -1)` and `torch.flatten(x, 1, 2)` export shape arithmetic (Shape, Gather,
    ConstantOfShape, Equal, Where, Expand; Shape, Slice, Concat) that ONNX shape inference leaves unresolved: the
    importer evaluates it on the static input shape, the Expand to batch 1 moves nothing, and the result is
    onnxruntime's."""
    pytest.importorskip("brevitas")
    import torch
    from brevitas.graph.calibrate import calibration_mode
    from qirc.frontends.brevitas import export_onnx
    from qirc.zoo.networks import QuantOptions, signed_act

    class ClassToken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = signed_act(QuantOptions(), return_quant_tensor=False)
            self.cls = torch.nn.Parameter(torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(0)))
            self.out = signed_act(QuantOptions(), return_quant_tensor=False)

        def forward(self, x):
            x = torch.flatten(self.q(x), 1, 2)                       # [N, 1, 5, 8] -> [N, 5, 8]
            cls = self.q(self.cls).expand(x.shape[0], -1, -1)
            y = torch.cat([cls, x], dim=1)
            return self.out(y[:, 0] + y.mean(dim=1))

    model = ClassToken().eval()
    with torch.no_grad(), calibration_mode(model):
        model(torch.randn(4, 1, 5, 8, generator=torch.Generator().manual_seed(1)))
    proto = onnx.load(str(export_onnx(model, torch.zeros(1, 1, 5, 8), tmp_path / "cls.onnx", format="qdq")))
    assert {"Expand", "Where", "ConstantOfShape", "Shape"} <= {n.op_type for n in proto.graph.node}
    module = import_onnx(proto)
    verify(module)
    assert "onnx.Expand" not in _float_ops(module) and _float_ops(module)["onnx.Gather"] == 1
    session = ort_session(proto)
    for seed in range(3):
        feeds = random_inputs(module, seed)
        np.testing.assert_array_equal(next(iter(run(module, feeds).values())), session.run(None, feeds)[0])


def test_onnx_writer_spells_the_transformer_ops_at_opset_13():
    """write_onnx (the zoo's qcdq form) writes LayerNormalization, Gelu (both forms), Gather and Slice as opset-13
    chains and nodes; onnxruntime on the written file computes the module (within float rounding), and the file
    imports back to the same canonical ops."""
    from qirc.backends.onnx import write_onnx
    from qirc.qir.ir import Module, const_op, input_op, output_op
    from qirc.qir.types import f32, tensor

    rng = np.random.default_rng(3)
    m = Module("ops")
    x = input_op(m, "x", tensor((1, 6, 8), f32))
    gamma = const_op(m, rng.uniform(0.5, 1.5, 8).astype(np.float32), tensor((8,), f32))
    ln = m.create("onnx.LayerNormalization", [x, gamma], [tensor((1, 6, 8), f32)], {"axis": 2, "epsilon": 1e-5},
                  "/ln").result
    g1 = m.create("onnx.Gelu", [ln], [tensor((1, 6, 8), f32)], {"approximate": "tanh"}, "/gelu_tanh").result
    g2 = m.create("onnx.Gelu", [g1], [tensor((1, 6, 8), f32)], {"approximate": "none"}, "/gelu").result
    s = m.create("onnx.Slice", [g2], [tensor((1, 6, 4), f32)],
                 {"starts": [4], "ends": [8], "axes": [2], "steps": [1]}, "/slice").result
    y = m.create("onnx.Gather", [s], [tensor((1, 4), f32)], {"axis": 1, "indices": [0], "scalar": True},
                 "/gather").result
    output_op(m, "y", y)
    proto = write_onnx(m, form="qcdq")
    assert proto.opset_import[0].version == 13
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["Pow"] == 1 and ops["Erf"] == 1 and ops["Tanh"] == 1 and ops["Gather"] == 1 and ops["Slice"] == 1
    _compare(proto, m, seeds=(0, 1, 2))
    back = import_onnx(proto)
    assert _float_ops(back) == Counter({"onnx.LayerNormalization": 1, "onnx.Gelu": 2, "onnx.Slice": 1,
                                       "onnx.Gather": 1})
    assert [g.attr("approximate") for g in back.walk("onnx.Gelu")] == ["tanh", "none"]
