"""The whole driver on real models (shipped DeepQuant exporter output and committed zoo examples, see
tests/real_models.py): every model for every target, then the written folder checked against the
Deeploy contract; atomicity of the output folder."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import onnx
import pytest

from qirc.backends.deeploy.targets import TARGETS as TARGET_REGISTRY, get_target
from qirc.driver import compile_model, simulate
from qirc.frontends.deeploy import import_deeploy_onnx
from qirc.qir import interpreter
from qirc.qir.diagnostics import BackendError, UsageError

from test_deeploy_structure import assert_deeploy_structure, assert_deeploy_structure_with

from real_models import deepquant, example

#: DeepQuant's own files for three networks, zoo examples for the others (same architectures as the exporter's)
MODEL_FILES = {"ResNet8": lambda: deepquant("ResNet8"), "DSCNN-XS": lambda: deepquant("DSCNN-XS"),
               "Autoencoder": lambda: deepquant("Autoencoder"),
               "MobileNetV2-VWW": lambda: example("mobilenetv2-vww"), "DSCNN-S": lambda: example("dscnn-s")}
MODELS = list(MODEL_FILES)
TARGETS = ["deeploy-generic", "deeploy-siracusa", "deeploy-cortexm"]


def model_path(name):
    return str(MODEL_FILES[name]())


_built = {}


def build(name, target, tmp_path_factory):
    key = (name, target)
    if key not in _built:
        out = tmp_path_factory.mktemp("deeploy") / f"{name}-{target}"
        _built[key] = (out, compile_model(model_path(name), target, out, accuracy_samples=2))
    return _built[key]


CASES = [(m, t) for m in MODELS for t in TARGETS]


@pytest.mark.parametrize("name, target", CASES)
def test_corpus_model_compiles_to_the_contract(name, target, tmp_path_factory):
    out, summary = build(name, target, tmp_path_factory)
    assert sorted(os.listdir(out)) == ["inputs.npz", "network.onnx", "outputs.npz", "qirc.json"]
    model = onnx.load(str(out / "network.onnx"))
    assert_deeploy_structure(model, target)
    # qirc.json names every requant whose add DeeployTest's debug pass changes (none in these models)
    debug_pass = json.loads((out / "qirc.json").read_text()).get("deeploytest_debug_pass")
    if not get_target(target).add_before_mul:
        assert debug_pass["changed_requants"] == []
        assert_deeploy_structure_with(model, target, [])
    # re-importing network.onnx and simulating inputs.npz reproduces outputs.npz exactly
    with np.load(out / "inputs.npz") as f:
        ins = [f[k] for k in f.files]
        assert f.files == [i.name for i in model.graph.input]
    with np.load(out / "outputs.npz") as f:
        outs = [f[k] for k in f.files]
        assert f.files == [o.name for o in model.graph.output]
    got = interpreter.run(import_deeploy_onnx(out / "network.onnx"), ins)
    assert len(got) == len(outs)
    for g, o in zip(got.values(), outs):
        np.testing.assert_array_equal(g, o)
    # qirc.json as DESIGN.md section 5 says
    report = json.loads((out / "qirc.json").read_text())
    assert report["target"] == target
    assert [e["name"] for e in report["inputs"]] == [i.name for i in model.graph.input]
    assert [e["name"] for e in report["outputs"]] == [o.name for o in model.graph.output]
    for entry, array in zip(report["inputs"], ins):
        assert entry["shape"] == list(array.shape) and entry["dtype"] == array.dtype.name
        assert isinstance(entry["scale"], float) and isinstance(entry["zero_point"], int)
    assert report["passes"][-1] == f"deeploy-legalize{{target={target}}}"
    assert report["passes"][0].startswith("lower-to-int")
    for rec in report["accuracy"]["outputs"]:
        assert rec["max_error_steps"] is not None and rec["max_error_steps"] <= 4, rec
    # every RequantShift whose output zero point is 0 has add a multiple of mul (DeeployTest's debug pass)
    for rqs in summary.module.walk("int.requant_shift"):
        t = rqs.result.type
        if t.is_quant and set(t.quant.zero_points) == {0}:
            mul, add = np.asarray(rqs.attrs["mul"]), np.asarray(rqs.attrs["add"])
            assert np.all(add % mul == 0), rqs.loc


@pytest.mark.parametrize("target", ["deeploy-generic", "deeploy-siracusa", "deeploy-cortexm"])
def test_signed_normalisation_follows_the_target(target, tmp_path_factory):
    # only CMSIS-NN takes int8 alone; pulp-nn has uint8 kernels (Siracusa keeps ReLU outputs uint8, zero point 0)
    out, summary = build("ResNet8", target, tmp_path_factory)
    report = json.loads((out / "qirc.json").read_text())
    dtypes = {rqs.result.type.storage.name for rqs in summary.module.walk("int.requant_shift")}
    if target == "deeploy-cortexm":
        assert dtypes == {"i8"} and report["passes"][0] == "lower-to-int{signed-normalize=1}"
    else:
        assert "u8" in dtypes and report["passes"][0] == "lower-to-int"


def test_cortexm_global_pool_is_a_matmul_fused_with_its_requant(tmp_path_factory):
    # ResNet8's /ReduceMean: [1,64,8,8] -> Reshape [64,64] -> MatMul(ones [64,1]) -> RequantShift -> Reshape [1,64],
    # the form that Deeploy's CMSIS code generation fuses into one arm_fully_connected_s8 call over 64 rows
    out, summary = build("ResNet8", "deeploy-cortexm", tmp_path_factory)
    model = onnx.load(str(out / "network.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = list(model.graph.node)
    [i] = [k for k, n in enumerate(nodes) if n.op_type == "MatMul"]
    rows, matmul, rqs, back, gemm = nodes[i - 1:i + 4]
    assert [n.op_type for n in (rows, rqs, back, gemm)] == ["Reshape", "RequantShift", "Reshape", "Gemm"]
    assert matmul.name == "ReduceMean" and matmul.input[0] == rows.output[0] and rqs.input[0] == matmul.output[0]
    assert list(inits[rows.input[1]]) == [64, 64] and list(inits[back.input[1]]) == [1, 64]
    ones = inits[matmul.input[1]]
    assert ones.dtype == np.int8 and ones.shape == (64, 1) and np.all(ones == 1)
    assert inits[rqs.input[1]].shape == ()  # the rank-0 multiplier CMSIS's fully-connected binding asserts
    assert not any(n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute) for n in nodes)


@pytest.mark.parametrize("name, count", [("DSCNN-S", 4), ("DSCNN-XS", 4), ("MobileNetV2-VWW", 17)])
def test_cortexm_writes_depthwise_convs_channels_last(name, count, tmp_path_factory):
    # Deeploy's CMSIS platform rejects a depthwise Conv it transposes itself: each one is written already NHWC
    # (Transpose -> Conv channels_first=0 -> RequantShift -> Transpose; assert_deeploy_structure checks the form),
    # with the same 3x3 filters the Generic graph has (the exact re-simulation of outputs.npz, read back through
    # the channels-last Convs, is test_corpus_model_compiles_to_the_contract)
    out, _ = build(name, "deeploy-cortexm", tmp_path_factory)
    generic, _ = build(name, "deeploy-generic", tmp_path_factory)

    def depthwise_weights(path):
        model = onnx.load(str(path / "network.onnx"))
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        return model, [inits[n.input[1]] for n in model.graph.node if n.op_type == "Conv"
                       and any(a.name == "group" and a.i > 1 for a in n.attribute)
                       and inits[n.input[1]].shape[2:] == (3, 3)]

    model, cortexm = depthwise_weights(out)
    _, reference = depthwise_weights(generic)
    reference = [w for w in reference if not np.all(w == 1)]  # Generic's global pool (MobileNetV2's is 3x3)
    assert len(cortexm) == len(reference) == count
    for w, w_ref in zip(cortexm, reference):
        np.testing.assert_array_equal(w, w_ref)
    channels_last = [n for n in model.graph.node if n.op_type == "Conv"
                     and any(a.name == "channels_first" and a.i == 0 for a in n.attribute)]
    assert len(channels_last) == count and all(n.domain == "ai.deeploy" for n in channels_last)
    assert_deeploy_structure(model, "deeploy-cortexm")


# a CMSIS variant without depthwise Convs, writing them as block-diagonal dense Convs up to 64 KiB per layer
DENSE_DEPTHWISE = dataclasses.replace(get_target("deeploy-cortexm"), name="deeploy-cortexm-dense",
                                      depthwise_conv=False, dense_depthwise_cap_kib=64)


@pytest.fixture
def dense_depthwise_target(monkeypatch):
    monkeypatch.setitem(TARGET_REGISTRY, DENSE_DEPTHWISE.name, DENSE_DEPTHWISE)
    return DENSE_DEPTHWISE.name


def test_dense_depthwise_form_compiles_dscnn_exactly(dense_depthwise_target, tmp_path):
    out = tmp_path / "dscnn"
    compile_model(model_path("DSCNN-XS"), dense_depthwise_target, out, accuracy_samples=1)
    model = onnx.load(str(out / "network.onnx"))
    assert_deeploy_structure(model, DENSE_DEPTHWISE)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = [inits[n.input[1]] for n in model.graph.node if n.op_type == "Conv"]
    block_diagonal = [w for w in weights if w.shape[0] == w.shape[1] and w.shape[2:] == (3, 3)]
    assert len(weights) == 9 and len(block_diagonal) == 4
    for w in block_diagonal:
        assert not np.any(w[~np.eye(w.shape[0], dtype=bool)]) and np.any(w[np.eye(w.shape[0], dtype=bool)])
    with np.load(out / "inputs.npz") as f:
        ins = [f[k] for k in f.files]
    with np.load(out / "outputs.npz") as f:
        outs = [f[k] for k in f.files]
    got = interpreter.run(import_deeploy_onnx(out / "network.onnx"), ins)
    for g, o in zip(got.values(), outs):
        np.testing.assert_array_equal(g, o)


def test_refusal_over_the_dense_depthwise_cap_leaves_no_folder(dense_depthwise_target, tmp_path):
    out = tmp_path / "mbv2"
    with pytest.raises(BackendError) as e:
        compile_model(model_path("MobileNetV2-VWW"), dense_depthwise_target, out)
    assert str(e.value).endswith("node '/blocks/blocks.7/dw/conv/Conv' (int.conv): in pass 'deeploy-legalize': "
                                 "depthwise conv would need 154 KiB of dense weights on deeploy-cortexm-dense (cap "
                                 "64 KiB); the platform takes no depthwise Conv")
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_failed_run_leaves_a_previous_output_untouched(dense_depthwise_target, tmp_path):
    out = tmp_path / "out"
    compile_model(model_path("Autoencoder"), "deeploy-generic", out, accuracy_samples=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(BackendError):
        compile_model(model_path("MobileNetV2-VWW"), dense_depthwise_target, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_successful_run_replaces_a_previous_output_and_refuses_other_folders(tmp_path):
    out = tmp_path / "out"
    compile_model(model_path("Autoencoder"), "deeploy-generic", out, accuracy_samples=1)
    first = json.loads((out / "qirc.json").read_text())
    summary = compile_model(model_path("Autoencoder"), "deeploy-cortexm", out, accuracy_samples=1)
    assert sorted(os.listdir(out)) == ["inputs.npz", "network.onnx", "outputs.npz", "qirc.json"]
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert first["target"] == "deeploy-generic"
    assert json.loads((out / "qirc.json").read_text())["target"] == "deeploy-cortexm"
    assert summary.nodes == len(onnx.load(str(out / "network.onnx")).graph.node)

    (out / "stale.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds files qirc did not write"):
        compile_model(model_path("Autoencoder"), "deeploy-cortexm", out, accuracy_samples=1)
    assert (out / "stale.txt").read_text() == "mine" and len(os.listdir(out)) == 5


def test_inputs_npz_gives_the_samples(tmp_path):
    ref = np.load(deepquant("Autoencoder", "reference.npz"))
    samples = tmp_path / "samples.npz"
    batch = np.concatenate([ref["input"], ref["input"] * 0.5, -ref["input"]])
    np.savez(samples, batch)
    out = tmp_path / "out"
    summary = compile_model(model_path("Autoencoder"), "deeploy-generic", out, inputs_npz=str(samples))
    assert summary.accuracy["samples"] == 3
    assert summary.accuracy["inputs"] == "samples.npz"
    scale = summary.inputs[0]["scale"]
    zp = summary.inputs[0]["zero_point"]
    with np.load(out / "inputs.npz") as f:
        q = f[f.files[0]]
    expected = np.clip(np.rint(ref["input"].astype(np.float32) / np.float32(scale) + zp), -128, 127)
    np.testing.assert_array_equal(q, expected)
    np.testing.assert_array_equal(list(simulate(out / "network.onnx", out / "inputs.npz").values())[0],
                                  np.load(out / "outputs.npz")[np.load(out / "outputs.npz").files[0]])


def test_bad_inputs_npz_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 7), np.float32))
    with pytest.raises(UsageError) as e:
        compile_model(model_path("Autoencoder"), "deeploy-generic", tmp_path / "out", inputs_npz=str(bad))
    assert str(e.value).endswith("has shape [2, 7], expected [1, 128] or [N, 128]")
    assert not (tmp_path / "out").exists()


def test_unknown_target_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        compile_model(model_path("Autoencoder"), "deeploy-foo", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extra_pipeline_and_ir_dumps(tmp_path):
    import io
    dumps = tmp_path / "ir"
    log = io.StringIO()
    summary = compile_model(model_path("Autoencoder"), "deeploy-siracusa", tmp_path / "out", extra_pipeline="dce",
                            print_ir_after_all=True, dump_ir_dir=str(dumps), accuracy_samples=1, out=log)
    assert summary.passes == ["lower-to-int", "dce", "deeploy-legalize{target=deeploy-siracusa}"]
    assert sorted(os.listdir(dumps)) == ["00-imported.qir", "01-lower-to-int.qir", "02-dce.qir",
                                         "03-deeploy-legalize.qir"]
    assert "onnx." in (dumps / "00-imported.qir").read_text()
    assert "int.gemm" in (dumps / "03-deeploy-legalize.qir").read_text()
    assert "// -----// IR Dump After deeploy-legalize //----- //" in log.getvalue()
    report = json.loads((tmp_path / "out" / "qirc.json").read_text())
    assert report["passes"] == summary.passes
