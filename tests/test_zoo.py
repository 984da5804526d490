"""The MLPerf Tiny zoo: architectures (parameter and MAC counts), determinism, calibration, BatchNorm folding,
export in every format, and compilation of the exported files."""
from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("brevitas")
import onnx  # noqa: E402
import torch  # noqa: E402

from qirc.qir.diagnostics import UsageError  # noqa: E402
from qirc.zoo import (FORMATS, MODEL_FILE, NETWORKS, ZooError, build_model, calibrated_model,  # noqa: E402
                      count_params_and_macs, fold_batchnorm, format_zoo_table, zoo_build, zoo_list)
from qirc.zoo.calibrate import (ProgressBar, activation_scales, calibrate, load_calibration_npz,  # noqa: E402
                                synthetic_samples)

pytestmark = pytest.mark.brevitas

from real_models import DEEPQUANT, EXTRA_CORPUS  # noqa: E402

# Counts of the four MLPerf Tiny v1.x reference networks, derived by hand from the Keras definitions of
# mlcommons/tiny (every Conv2D/DepthwiseConv2D/Dense has a bias; Keras counts 4 values per BatchNorm channel):
#
# ResNet-8: conv 3->16 (448) | stack 1: 2 x conv 16->16 (2 x 2320) | stack 2: conv 16->32 s2 (4640), 32->32 (9248),
#   shortcut 1x1 16->32 (544) | stack 3: conv 32->64 s2 (18496), 64->64 (36928), shortcut 1x1 32->64 (2112) |
#   dense 64->10 (650): 77,706 weights and biases; BatchNorm on the 7 non-shortcut convs (16*3+32*2+64*2 = 240
#   channels) adds 960: Keras 78,666.  MACs: 32*32*16*27 + 2*32*32*16*144 + 16*16*32*(144+288+16)
#   + 8*8*64*(288+576+32) + 640 = 12,501,632.
# DS-CNN S: conv 10x4 1->64 (2624) | 4 x (dw 3x3 (640) + pw 64->64 (4160)) | dense 64->12 (780): 22,604;
#   9 BatchNorms of 64: +2304 = 24,908.  MACs on the 25x5 map: 125*64*40 + 4*125*64*(9+64) + 768 = 2,656,768.
# MobileNetV1 0.25: 210,850 weights and biases, Keras 221,794; MACs 7,489,664 (stem 48*48*8*27, then 13
#   depthwise-separable blocks at 48/24/12/6/3 pixels, dense 256->2).
# FC autoencoder 640-128x4-8-128x4-640: 265,864; 9 BatchNorms (8 x 128 + 8 channels): +4128 = 269,992.
#   MACs: 2*640*128 + 6*128*128 + 2*128*8 = 264,192.
REFERENCE_COUNTS = {
    "resnet8": (77_706, 78_666, 12_501_632),
    "mobilenetv1-vww": (210_850, 221_794, 7_489_664),
    "dscnn-s": (22_604, 24_908, 2_656_768),
    "autoencoder-ad": (265_864, 269_992, 264_192),
}
# The DeepQuant-exporter variants: parameters equal the weights and biases of the corpus files (checked below).
VARIANT_COUNTS = {
    "mobilenetv2-vww": (382_496, 409_420, 8_536_342),
    "dscnn-xs": (2_588, 3_164, 71_872),
    "autoencoder-small": (29_120, 29_120, 28_672),
    "autoencoder-128": (115_584, 115_584, 114_688),
}
# The transformers (issue 13), by hand.  kwt-tiny: 50 tokens (49 frames + class token) of d = 64, MLP 128:
#   embed 10->64 (704) | per block: in_proj 64->192 (12480), out_proj (4160), fc1 64->128 (8320), fc2 (8256),
#   2 LayerNorms (256): 33472 | final LayerNorm (128), head 64->12 (780), class token (64), positions 50x64 (3200):
#   704 + 2*33472 + 128 + 780 + 64 + 3200 = 71,820.  MACs: 49*10*64 + 2*(50*64*192 + 2*50*50*64 + 50*64*64
#   + 2*50*64*128) + 64*12 = 3,948,928.
# vit-tiny: 64 patch tokens of 4x4x3: conv 3->64 4x4 (3136), 2 blocks with separate q/k/v (3 x 4160 + the rest as
#   above: 33472), final LayerNorm (128), head 64->10 (650), positions 64x64 (4096): 74,954.  MACs: 64*64*48
#   + 2*(64*64*192 + 2*64*64*64 + 64*64*64 + 2*64*64*128) + 64*10 = 5,440,128.
TRANSFORMER_COUNTS = {
    "kwt-tiny": (71_820, 71_820, 3_948_928),
    "vit-tiny": (74_954, 74_954, 5_440_128),
}
CORPUS_FOLDERS = {"resnet8": "ResNet8", "dscnn-s": "DSCNN-S", "mobilenetv2-vww": "MobileNetV2-VWW",
                  "dscnn-xs": "DSCNN-XS", "autoencoder-small": "Autoencoder", "autoencoder-128": "Autoencoder-MLPerf"}


@pytest.fixture(scope="module")
def listing():
    return {row["name"]: row for row in zoo_list()}


def test_zoo_list_has_every_network_with_shapes_and_tasks(listing):
    assert list(listing) == list(NETWORKS)
    assert [n for n, row in listing.items() if row["reference"]] == list(REFERENCE_COUNTS)
    assert listing["resnet8"]["input_shape"] == [1, 3, 32, 32]
    assert listing["mobilenetv1-vww"]["input_shape"] == [1, 3, 96, 96]
    assert listing["dscnn-s"]["input_shape"] == [1, 1, 49, 10]
    assert listing["autoencoder-ad"]["input_shape"] == [1, 640]
    assert listing["mobilenetv2-vww"]["input_shape"] == [1, 3, 96, 96]
    assert listing["dscnn-xs"]["input_shape"] == [1, 1, 25, 10]
    assert listing["autoencoder-small"]["input_shape"] == [1, 128]
    assert listing["resnet8"]["task"] == "image classification"
    assert "CIFAR-10" in listing["resnet8"]["description"]
    table = format_zoo_table(list(listing.values()))
    assert table.splitlines()[0].split()[:4] == ["name", "task", "input", "params"]
    assert "12,501,632" in table and "MLPerf Tiny reference" in table
    assert "kwt-tiny" in table and listing["kwt-tiny"]["source"] == "integer transformer (issue 13)"
    assert listing["kwt-tiny"]["input_shape"] == [1, 1, 49, 10] and listing["vit-tiny"]["input_shape"] == [1, 3, 32, 32]


@pytest.mark.parametrize("name", list(REFERENCE_COUNTS) + list(VARIANT_COUNTS) + list(TRANSFORMER_COUNTS))
def test_parameter_and_mac_counts(listing, name):
    params, keras_params, macs = {**REFERENCE_COUNTS, **VARIANT_COUNTS, **TRANSFORMER_COUNTS}[name]
    row = listing[name]
    assert (row["params"], row["keras_params"], row["macs"]) == (params, keras_params, macs)


def _deepquant_split_files():
    """(zoo name, DeepQuant split.onnx): the shipped ones, and the optional external corpus' others (slow)."""
    params = []
    for name, folder in CORPUS_FOLDERS.items():
        if (DEEPQUANT / folder / "split.onnx").exists():
            params.append(pytest.param(name, DEEPQUANT / folder / "split.onnx", id=name))
        elif (EXTRA_CORPUS / folder / "split.onnx").exists():
            params.append(pytest.param(name, EXTRA_CORPUS / folder / "split.onnx", id=f"corpus:{name}",
                                       marks=pytest.mark.slow))
    return params


@pytest.mark.parametrize("name, path", _deepquant_split_files())
def test_parameters_match_the_deepquant_corpus_model(listing, name, path):
    model = onnx.load(str(path), load_external_data=False)
    corpus_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer
                        if t.name.endswith(".weight") or t.name.endswith(".bias"))
    assert listing[name]["params"] == corpus_params


def test_mac_count_of_a_depthwise_and_strided_conv():
    from qirc.zoo.networks import QuantOptions, quant_conv, quant_linear, quant_relu

    model = torch.nn.Sequential(quant_relu(QuantOptions()),
                                quant_conv(QuantOptions(), 8, 8, 3, stride=2, padding=1, groups=8),
                                torch.nn.Flatten(), quant_relu(QuantOptions()),
                                quant_linear(QuantOptions(), 8 * 5 * 5, 3))
    counts = count_params_and_macs(model.eval(), (1, 8, 10, 10))
    # depthwise: 8 out channels * 5x5 outputs * (8/8 inputs) * 3x3; dense 200 -> 3
    assert counts["macs"] == 8 * 25 * 9 + 200 * 3
    assert counts["params"] == 8 * 9 + 8 + 200 * 3 + 3


def test_architecture_follows_the_reference_layer_layout():
    from torch import nn

    resnet = build_model("resnet8")
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 16, (3, 3), (1, 1)),
        (16, 16, (3, 3), (1, 1)), (16, 16, (3, 3), (1, 1)),
        (16, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (1, 1)), (16, 32, (1, 1), (2, 2)),
        (32, 64, (3, 3), (2, 2)), (64, 64, (3, 3), (1, 1)), (32, 64, (1, 1), (2, 2))]
    # BatchNorm after every conv but the 1x1 shortcuts, as in the Keras reference
    assert sum(isinstance(m, nn.BatchNorm2d) for m in resnet.modules()) == 7
    dscnn = build_model("dscnn-s")
    stem = dscnn.stem.conv
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((10, 4), (2, 2), 64)
    assert [m.groups for m in dscnn.modules() if isinstance(m, nn.Conv2d)] == [1] + [64, 1] * 4
    ae = build_model("autoencoder-ad")
    widths = [m.out_features for m in ae.modules() if isinstance(m, nn.Linear)]
    assert widths == [128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    # BatchNorm + ReLU after every dense layer but the output one (the 8-wide bottleneck included)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in ae.modules()) == 9
    y = build_model("mobilenetv1-vww")(torch.zeros(1, 3, 96, 96))
    assert tuple(y.shape) == (1, 2)


def test_two_builds_are_identical():
    a, b = build_model("dscnn-s"), build_model("dscnn-s")
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    c = build_model("dscnn-s", seed=1)
    assert not torch.equal(c.stem.conv.weight, a.stem.conv.weight)


def test_bad_name_format_and_bit_width_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match=r"unknown zoo network 'resnet9' \(known: resnet8, "):
        zoo_build("resnet9", tmp_path)
    with pytest.raises(UsageError, match=r"unknown zoo export format 'onnx' \(choose one of: qcdq, qdq, qonnx\)"):
        zoo_build("resnet8", tmp_path, format="onnx")
    with pytest.raises(UsageError, match="activation bit width must be an integer in 2..16, got 1"):
        build_model("resnet8", act_bits=1)
    with pytest.raises(UsageError, match=r"opset 17 is not available for format 'qcdq' \(the qdq and qonnx exports "
                                         r"take an opset from 13 to 20; qcdq is always written at opset 13\)"):
        zoo_build("kwt-tiny", tmp_path, format="qcdq", opset=17)
    with pytest.raises(UsageError, match="opset 12 is not available for format 'qdq'"):
        zoo_build("kwt-tiny", tmp_path, format="qdq", opset=12)
    assert not (tmp_path / MODEL_FILE).exists()


def test_calibration_moves_every_activation_scale_off_its_default():
    model = build_model("resnet8")
    before = activation_scales(model)
    # untrained Brevitas defaults: a range of 1.0 (1/128 signed, 1/255 unsigned)
    assert len(before) == 15
    assert set(np.round(list(before.values()), 9)) == {round(1 / 128, 9), round(1 / 255, 9)}
    calibrate(model, synthetic_samples(model.input_shape, 8), progress=False)
    after = activation_scales(model)
    assert after.keys() == before.keys()
    for name, scale in after.items():
        assert scale > 0 and abs(scale - before[name]) > 1e-6 * before[name], name
    # the input sees uniform [-1, 1): its int8 scale is that range over 128 steps (99.999th percentile)
    assert after["input_quant.act_quant"] == pytest.approx(1 / 128, rel=1e-3)


def test_calibration_depends_on_the_samples():
    a, b = build_model("dscnn-xs"), build_model("dscnn-xs")
    samples = synthetic_samples(a.input_shape, 8)
    calibrate(a, samples, progress=False)
    calibrate(b, 3 * samples, progress=False)
    scale_a, scale_b = activation_scales(a), activation_scales(b)
    assert scale_b["input_quant.act_quant"] == pytest.approx(3 * scale_a["input_quant.act_quant"], rel=1e-3)


def test_bias_correction_moves_biases_and_keeps_scales():
    plain, _ = _reference_model("dscnn-xs")
    corrected, _ = calibrated_model("dscnn-xs", progress=False, bias_correction=True)
    assert activation_scales(corrected) == activation_scales(plain)
    assert corrected.head.fc.output_quant.is_quant_enabled
    shift = (corrected.stem.conv.bias - plain.stem.conv.bias).abs().max().item()
    assert 0 < shift < 0.01
    torch.testing.assert_close(corrected.stem.conv.weight, plain.stem.conv.weight, rtol=0, atol=0)


def test_progress_bar_text():
    import io

    stream = io.StringIO()
    bar = ProgressBar(4, "calibrating resnet8", stream, width=8)
    for _ in range(4):
        bar.update()
    assert stream.getvalue().split("\r")[-1] == "calibrating resnet8 [########] 4/4\n"
    assert "\rcalibrating resnet8 [####....] 2/4" in stream.getvalue()


def test_fold_batchnorm_keeps_the_float_function():
    from brevitas.graph.calibrate import quantization_status_manager
    from torch import nn

    model = build_model("resnet8")
    x = torch.from_numpy(synthetic_samples(model.input_shape, 2, seed=3))
    with torch.no_grad(), quantization_status_manager(model, disable_act_quant=True, disable_weight_quant=True,
                                                      disable_bias_quant=True):
        before = model(x)
        assert fold_batchnorm(model) is model
        after = model(x)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    weights = model.stem.conv.weight.clone()
    fold_batchnorm(model)  # idempotent: nothing left to fold
    assert torch.equal(model.stem.conv.weight, weights)


def test_calibration_file(tmp_path):
    samples = synthetic_samples((1, 1, 25, 10), 5, seed=7)
    path = tmp_path / "mfcc.npz"
    np.savez(path, labels=np.arange(5), features=samples.astype(np.float64))
    loaded = load_calibration_npz(path, (1, 1, 25, 10))
    assert loaded.dtype == np.float32 and loaded.shape == (5, 1, 25, 10)
    np.testing.assert_array_equal(loaded, samples)
    single = tmp_path / "one.npz"
    np.savez(single, x=samples[0])
    assert load_calibration_npz(single, (1, 1, 25, 10)).shape == (1, 1, 25, 10)
    out = zoo_build("dscnn-xs", tmp_path / "out", format="qdq", calibrate=path, progress=False)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["qirc.zoo.calibration"] == "mfcc.npz (5 samples)"


def test_unusable_calibration_files_are_zoo_errors(tmp_path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 3, 32, 32), np.float32))
    with pytest.raises(ZooError) as err:
        load_calibration_npz(wrong, (1, 1, 49, 10))
    assert str(err.value) == (f"{wrong}: no array of shape Nx1x49x10 (samples x network input) in the file; "
                              "found x[4, 3, 32, 32]")
    with pytest.raises(ZooError, match="calibration file not found"):
        load_calibration_npz(tmp_path / "missing.npz", (1, 640))
    bad = tmp_path / "nan.npz"
    np.savez(bad, x=np.full((2, 640), np.nan, np.float32))
    with pytest.raises(ZooError, match="array 'x' contains NaN or infinite values"):
        load_calibration_npz(bad, (1, 640))
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    with pytest.raises(ZooError, match=r"text\.npz: not a readable \.npz file"):
        load_calibration_npz(text, (1, 640))
    with pytest.raises(ZooError):
        zoo_build("autoencoder-ad", tmp_path / "out", calibrate=wrong, progress=False)
    assert not (tmp_path / "out").exists()


def _onnxruntime_output(path, x):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@functools.lru_cache(maxsize=None)
def _reference_model(name):
    """The calibrated, folded Brevitas model that zoo_build exports by default (built once per test session)."""
    return calibrated_model(name, progress=False)


def _output_scale(model):
    layer = model.output if hasattr(model, "output") else model.head
    layer = getattr(layer, "fc", layer)  # the CNNs' head wraps its QuantLinear; the transformers' head is one
    return float(layer.output_quant.scale().detach())


def test_zoo_build_resnet8_is_fast_reproducible_and_exact(tmp_path):
    start = time.perf_counter()
    first = zoo_build("resnet8", tmp_path / "a", progress=False)
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"zoo_build('resnet8') took {elapsed:.1f} s"
    second = zoo_build("resnet8", tmp_path / "b", progress=False)
    assert first == tmp_path / "a" / MODEL_FILE
    assert first.read_bytes() == second.read_bytes()
    assert first.stat().st_size < 1_000_000
    model_proto = onnx.load(str(first))
    onnx.checker.check_model(model_proto, full_check=True)
    ops = {n.op_type for n in model_proto.graph.node}
    assert {"Div", "Round", "Clip", "Sub", "Mul", "Conv", "Add", "Gemm"} <= ops  # decomposed QCDQ
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}
    assert [i.name for i in model_proto.graph.input] == ["input"]
    assert [o.name for o in model_proto.graph.output] == ["output"]
    # the file computes what the calibrated Brevitas model computes
    model, note = _reference_model("resnet8")
    assert note.startswith("synthetic (16 uniform samples")
    x = synthetic_samples((1, 3, 32, 32), 4, seed=11)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    for i in range(len(x)):
        got = _onnxruntime_output(first, x[i:i + 1])
        assert np.abs(got - expected[i:i + 1]).max() <= 1e-3 * _output_scale(model)


def test_per_channel_and_activation_bits(tmp_path):
    path = zoo_build("dscnn-xs", tmp_path, format="qdq", per_channel=True, act_bits=4, progress=False)
    model_proto = onnx.load(str(path))
    inits = {t.name: t for t in model_proto.graph.initializer}
    per_axis = [n for n in model_proto.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits
                and list(inits[n.input[1]].dims) not in ([], [1])]
    # the weights and the int32 biases (scale s_in * s_w[c]) of the 9 convs and the dense layer
    assert len(per_axis) == 2 * 10
    # 4-bit activations: Clip nodes bound the QuantizeLinear outputs to -8..7 / 0..15
    clip_bounds = set()
    for node in model_proto.graph.node:
        if node.op_type == "Clip" and node.input[1] in inits:
            clip_bounds.add((int(onnx.numpy_helper.to_array(inits[node.input[1]])),
                             int(onnx.numpy_helper.to_array(inits[node.input[2]]))))
    assert {(-8, 7), (0, 15)} <= clip_bounds
    meta = {p.key: p.value for p in model_proto.metadata_props}
    assert meta["qirc.zoo.weights"] == "int8 per-channel, random (seed 0)"
    assert meta["qirc.zoo.activations"] == "4-bit"


# Every network but the MobileNets and the transformers (tests/test_zoo_transformers.py) in the main (decomposed
# QCDQ) format; two small networks in every format.  The rest of the matrix (the MobileNets in any format) takes tens
# of seconds per case on a shared 2-core machine and runs with -m slow.
FAST_EXPORTS = [(name, "qcdq") for name in NETWORKS
                if name not in ("mobilenetv1-vww", "mobilenetv2-vww", "kwt-tiny", "vit-tiny")] + [
    (name, fmt) for name in ("resnet8", "dscnn-xs") for fmt in ("qdq", "qonnx")]
SLOW_EXPORTS = [(name, fmt) for name in NETWORKS for fmt in FORMATS if (name, fmt) not in FAST_EXPORTS]
EXPORT_CASES = FAST_EXPORTS + [pytest.param(*case, marks=pytest.mark.slow) for case in SLOW_EXPORTS]


@pytest.mark.parametrize("name,fmt", EXPORT_CASES)
def test_every_network_exports_in_every_format(tmp_path, name, fmt):
    from qirc.frontends.onnx import import_onnx

    path = zoo_build(name, tmp_path, format=fmt, progress=False)
    model_proto = onnx.load(str(path))
    shape = [d.dim_value for d in model_proto.graph.input[0].type.tensor_type.shape.dim]
    assert shape == list(NETWORKS[name].input_shape)
    ops = {n.op_type for n in model_proto.graph.node}
    expected_quant_op = {"qcdq": "Round", "qdq": "QuantizeLinear", "qonnx": "Quant"}[fmt]
    assert expected_quant_op in ops
    module = import_onnx(model_proto)  # qirc's frontend reads every format the zoo writes
    assert [op.results[0].type.shape for op in module.inputs] == [tuple(NETWORKS[name].input_shape)]
    if fmt != "qonnx":
        model, _ = _reference_model(name)
        x = synthetic_samples(NETWORKS[name].input_shape, 1, seed=5)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert np.abs(_onnxruntime_output(path, x) - expected).max() <= 1e-3 * _output_scale(model)


# Compiling the zoo files for every Deeploy target.  On cortex-m, whose CMSIS platform rejects the depthwise Convs
# it transposes itself, the DS-CNN's depthwise convolutions are written already channels-last (Transpose -> Conv
# with channels_first = 0 -> RequantShift -> Transpose); its global average pool is an all-ones MatMul fused with
# its requant.


class _Built(dict):
    """name -> the zoo's qcdq file, built on first use (a deselected network costs nothing)."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name):
        self[name] = zoo_build(name, self.root / name, progress=False)
        return self[name]


@pytest.fixture(scope="module")
def qcdq_files(tmp_path_factory):
    return _Built(tmp_path_factory.mktemp("zoo-qcdq"))


# ResNet-8 compiles for every target in test_zoo_matrix.py already; here it joins the slow run
@pytest.mark.parametrize("name", [pytest.param("resnet8", marks=pytest.mark.slow), "dscnn-xs", "autoencoder-ad"])
@pytest.mark.parametrize("target", ["deeploy-siracusa", "deeploy-generic", "deeploy-cortexm"])
def test_zoo_models_compile_for_every_target(qcdq_files, tmp_path, name, target):
    driver = pytest.importorskip("qirc.driver")

    summary = driver.compile_model(qcdq_files[name], target, tmp_path / "out")
    if target == "deeploy-cortexm":
        # every depthwise Conv is written channels-last (the form CMSIS maps to arm_depthwise_conv)
        nodes = onnx.load(str(tmp_path / "out" / "network.onnx")).graph.node
        depthwise = [n for n in nodes
                     if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
        assert all(n.domain == "ai.deeploy" and any(a.name == "channels_first" and a.i == 0 for a in n.attribute)
                   for n in depthwise)
        assert len(depthwise) == (4 if name == "dscnn-xs" else 0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(summary.files)
    (report,) = summary.accuracy["outputs"]
    assert report["max_error_steps"] <= 1.0 + 1e-4
    assert report["argmax_agreement"] >= 0.99 or name.startswith("autoencoder")


@pytest.mark.parametrize("folder", [pytest.param(folder, marks=[] if folder == "resnet8" else [pytest.mark.slow])
                                    for _, folder in __import__("qirc.zoo.make_examples").zoo.make_examples.EXAMPLES])
def test_committed_example_means_what_the_zoo_builds(folder):
    """A rebuild has the same graph, integer tensors and float tensors within a relative 1e-6 (not the same bytes:
    torch's float arithmetic may differ in the last bit between CPUs and builds)."""
    from qirc.zoo.make_examples import check_examples

    assert check_examples(only=[folder]) == []


def test_committed_example_compiles_and_its_vectors_reproduce(tmp_path):
    from qirc.driver import compile_model, simulate
    from qirc.zoo.make_examples import EXAMPLES_DIR

    out = tmp_path / "out"
    summary = compile_model(str(EXAMPLES_DIR / "resnet8" / MODEL_FILE), "deeploy-siracusa", out, accuracy_samples=4)
    (record,) = summary.accuracy["outputs"]
    assert record["max_error_steps"] <= 4
    got = simulate(out / "network.onnx", out / "inputs.npz")
    with np.load(out / "outputs.npz") as want:
        assert list(got) == want.files
        for name in want.files:
            np.testing.assert_array_equal(got[name], want[name])


def _perturbed_copy(src: Path, dst: Path, relative: float) -> str:
    """Copy `src` to `dst` with its first scale initializer scaled by (1 + relative); returns its name."""
    model = onnx.load(str(src))
    tensor = next(t for t in model.graph.initializer if t.name.endswith("/scale"))
    value = onnx.numpy_helper.to_array(tensor)
    tensor.CopyFrom(onnx.numpy_helper.from_array((value * np.float32(1 + relative)).astype(np.float32), tensor.name))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return tensor.name


def test_examples_check_accepts_last_bit_differences_and_names_real_ones(tmp_path, capsys):
    from qirc.zoo.make_examples import EXAMPLES_DIR, compare_models, main

    committed = EXAMPLES_DIR / "resnet8" / MODEL_FILE
    ulp = tmp_path / "ulp" / "resnet8" / MODEL_FILE
    _perturbed_copy(committed, ulp, 1e-7)  # one float32 ulp or so: torch on another CPU
    assert compare_models(committed, ulp) is None
    far = tmp_path / "far" / "resnet8" / MODEL_FILE
    name = _perturbed_copy(committed, far, 1e-3)
    difference = compare_models(committed, far)
    assert difference is not None and name in difference and "relative" in difference

    assert main(["--check", "--out", str(tmp_path / "far"), "--only", "resnet8"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{far}: a rebuild from the zoo differs: initializer ") and name in line
    assert "make_examples" not in line  # it must not tell the user to overwrite the committed file
    assert main(["--check", "--out", str(tmp_path / "ulp"), "--only", "resnet8"]) == 0
