"""The MLPerf Tiny zoo: Brevitas definitions of the MLPerf Tiny v1.x reference networks (and the variants the
DeepQuant exporter shipped), calibrated and exported as quantized ONNX that qirc compiles.

    from qirc.zoo import zoo_list, zoo_build
    zoo_list()                                   # [{"name": "resnet8", "task": ..., "params": 77706, ...}, ...]
    zoo_build("resnet8", "build/zoo")            # -> build/zoo/model.onnx, decomposed QCDQ, synthetic calibration
    zoo_build("dscnn-s", "out", format="qdq", calibrate="mfcc.npz", per_channel=True)

The networks have random (seeded) weights: the zoo gives real architectures with real quantizer layouts to compile
and test, not trained models.  Importing this package does not import torch; building or listing does (the
`brevitas` extra).  See docs/zoo.md.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Union

from qirc.zoo.calibrate import ZooError
from qirc.zoo.registry import NETWORKS, NetworkSpec, get_spec

FORMATS = ("qcdq", "qdq", "qonnx")
#: Number of synthetic calibration samples used when no calibration file is given.
SYNTHETIC_SAMPLES = 16
#: The file that `zoo_build` writes in its output directory.
MODEL_FILE = "model.onnx"


def _require_torch():
    """Import torch and brevitas, or say which extra is missing (a UsageError: the command cannot run here)."""
    from qirc.qir.diagnostics import UsageError

    try:
        import torch  # noqa: F401
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import brevitas  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"the zoo needs torch and brevitas ({exc}); install the extra: pip install -e .[brevitas]") \
            from None


def build_model(name: str, per_channel: bool = False, act_bits: int = 8, seed: int = 0):
    """The zoo network `name` as a Brevitas module in its training form (float BatchNorm), seeded, in eval mode."""
    _require_torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from qirc.zoo import build
    return build.build_model(name, per_channel=per_channel, act_bits=act_bits, seed=seed)


def fold_batchnorm(model):
    """Fold every BatchNorm of a zoo model into the conv/dense layer before it, in place (`build.fold_batchnorm`)."""
    from qirc.zoo import build
    return build.fold_batchnorm(model)


def count_params_and_macs(model, input_shape) -> dict:
    """{"params", "keras_params", "macs"} of a zoo model (see `build.count_params_and_macs`)."""
    from qirc.zoo import build
    return build.count_params_and_macs(model, input_shape)


def zoo_list() -> list[dict]:
    """One dict per zoo network: name, task, input_shape, params, keras_params, macs, reference, source, description.

    `params` counts the deployed (BatchNorm-folded) weights and biases, `keras_params` what Keras reports for the
    reference definition (BatchNorm's four values per channel included), `macs` the multiply-accumulates of one
    inference; all three are counted by walking the built model.  `reference` is True for the four MLPerf Tiny v1.x
    reference networks and False for the others; `source` names where the definition comes from (MLPerf Tiny
    reference, DeepQuant variant, or qirc's integer transformers).
    """
    rows = []
    for spec in NETWORKS.values():
        model = build_model(spec.name)
        counts = count_params_and_macs(model, spec.input_shape)
        rows.append({"name": spec.name, "task": spec.task, "input_shape": list(spec.input_shape),
                     "params": counts["params"], "keras_params": counts["keras_params"], "macs": counts["macs"],
                     "reference": spec.reference, "source": spec.source, "description": spec.description})
    return rows


def format_zoo_table(rows: list[dict]) -> str:
    """`zoo_list()` rows as an aligned text table (what `qirc zoo list` prints)."""
    header = ("name", "task", "input", "params", "MACs", "")
    lines = [header]
    for row in rows:
        lines.append((row["name"], row["task"], "x".join(str(d) for d in row["input_shape"]), f"{row['params']:,}",
                      f"{row['macs']:,}", row["source"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {3, 4}
    out = []
    for line in lines:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(line)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def zoo_build(name: str, out_dir: Union[str, os.PathLike], format: str = "qcdq",
              calibrate: Optional[Union[str, os.PathLike]] = None, per_channel: bool = False, act_bits: int = 8,
              *, seed: int = 0, bias_correction: bool = False, num_samples: int = SYNTHETIC_SAMPLES,
              progress: bool = True, opset: Optional[int] = None) -> Path:
    """Build, calibrate, fold and export the zoo network `name` to `out_dir/model.onnx`; returns that path.

    format       "qcdq": DeepQuant's decomposed QCDQ (Div/Add/Round/Clip, Sub/Mul), written by qirc's ONNX backend
                 from the imported Brevitas QDQ export; "qdq": Brevitas' QuantizeLinear/Clip/DequantizeLinear export;
                 "qonnx": Brevitas' QONNX export (`Quant` nodes).
    calibrate    an .npz of float samples (any array whose first axis indexes samples and whose other axes are the
                 network input's without the batch axis); None calibrates on `num_samples` seeded synthetic
                 samples, which only makes the scales non-default and the file reproducible, not the model accurate.
    per_channel  per-output-channel weight scales instead of per-tensor.
    act_bits     activation bit width (signed activations and unsigned ReLU outputs; weights stay int8).
    opset        the ONNX opset of the Brevitas export for "qdq" and "qonnx" (default: Brevitas' QDQ opset 13, the
                 QONNX exporter's own default); it decides how a LayerNorm is spelled: ReduceMean/Sub/Pow/... below
                 17, LayerNormalization from 17 on.  "qcdq" is always written at opset 13.

    The steps: build the training form (seeded), calibrate the activation quantizers with Brevitas'
    calibration_mode, fold BatchNorm, optionally correct biases (bias_correction_mode), export.  The file is
    written atomically; the same arguments give the same graph, and the same bytes with the same torch on the same
    CPU.  `out_dir` must be new, empty or an earlier zoo build (qirc.outputs): nothing qirc did not write is
    overwritten.  Errors are QircErrors (UsageError for a bad name
    or option, ZooError for an unusable calibration file, FrontendError/BackendError from the export).
    """
    from qirc.qir.diagnostics import UsageError

    spec = get_spec(name)
    if format not in FORMATS:
        raise UsageError(f"unknown zoo export format '{format}' (choose one of: {', '.join(FORMATS)})")
    if opset is not None and (format == "qcdq" or not isinstance(opset, int) or not 13 <= opset <= 20):
        raise UsageError(f"opset {opset!r} is not available for format '{format}' (the qdq and qonnx exports take "
                         f"an opset from 13 to 20; qcdq is always written at opset 13)")
    from qirc import outputs
    # a folder that holds anything but an earlier zoo build (model.onnx, DIR/TARGET compile outputs) is refused
    outputs.check_output_dir(out_dir, "zoo")
    _require_torch()
    import torch

    threads = torch.get_num_threads()
    # one thread: float sums in calibration do not depend on how the work was split, so files are reproducible
    torch.set_num_threads(1)
    try:
        model, calibration_note = calibrated_model(name, calibrate, per_channel, act_bits, seed=seed,
                                                   bias_correction=bias_correction, num_samples=num_samples,
                                                   progress=progress)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".qirc-zoo-", dir=out_dir) as tmp:
            model_proto = _export(model, spec, format, Path(tmp), opset)
            _set_metadata(model_proto, spec, format, calibration_note, per_channel, act_bits, seed)
            import onnx
            staged = Path(tmp) / MODEL_FILE
            onnx.save(model_proto, str(staged))
            target = out_dir / MODEL_FILE
            os.replace(staged, target)
    finally:
        torch.set_num_threads(threads)
    return target


def calibrated_model(name: str, calibrate: Optional[Union[str, os.PathLike]] = None, per_channel: bool = False,
                     act_bits: int = 8, *, seed: int = 0, bias_correction: bool = False,
                     num_samples: int = SYNTHETIC_SAMPLES, progress: bool = True):
    """The zoo network `name` built, calibrated and BatchNorm-folded exactly as `zoo_build` exports it.

    Returns (model, calibration note); the note says where the calibration samples came from.
    """
    spec = get_spec(name)
    _require_torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from qirc.zoo import build
        from qirc.zoo import calibrate as calibration

    if calibrate is not None:
        samples = calibration.load_calibration_npz(calibrate, spec.input_shape)
        calibration_note = f"{Path(calibrate).name} ({len(samples)} samples)"
    else:
        samples = calibration.synthetic_samples(spec.input_shape, num_samples, seed)
        calibration_note = (f"synthetic ({num_samples} uniform samples in [-1, 1), seed {seed}): "
                            "scales only, not accuracy")
    model = build.build_model(name, per_channel=per_channel, act_bits=act_bits, seed=seed)
    calibration.calibrate(model, samples, progress=progress, label=f"calibrating {name}")
    build.fold_batchnorm(model)
    if bias_correction:
        calibration.calibrate(model, samples, bias_correction=True, progress=progress,
                              label=f"bias correction {name}")
    return model, calibration_note


def _export(model, spec: NetworkSpec, format: str, tmp: Path, opset: Optional[int] = None):
    """The ONNX ModelProto of the calibrated, folded `model` in `format` (work files go to `tmp`)."""
    import onnx
    import torch
    from qirc.frontends.brevitas import export_onnx

    example = torch.zeros(spec.input_shape)
    if format == "qcdq":
        from qirc.backends.onnx import write_onnx
        from qirc.frontends.onnx import import_onnx

        qdq_path = export_onnx(model, example, tmp / "export.qdq.onnx", format="qdq")
        module = import_onnx(onnx.load(str(qdq_path)), name=spec.name)
        model_proto = write_onnx(module, form="qcdq")
    else:
        path = export_onnx(model, example, tmp / f"export.{format}.onnx", format=format, opset=opset)
        model_proto = onnx.load(str(path))
    model_proto.graph.name = spec.name
    _rename_tensor(model_proto.graph, model_proto.graph.input[0].name, "input")
    _rename_tensor(model_proto.graph, model_proto.graph.output[0].name, "output")
    return model_proto


def _rename_tensor(graph, old: str, new: str) -> None:
    """Rename tensor `old` to `new` everywhere in `graph`: the exporters' generated names ("onnx::QuantizeLinear_0",
    "177") become the "input" and "output" that test vectors and qirc.json then carry."""
    if old == new:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.name == old:
            info.name = new


def _set_metadata(model_proto, spec: NetworkSpec, format: str, calibration_note: str, per_channel: bool,
                  act_bits: int, seed: int) -> None:
    """Record how the file was made in its metadata_props (replacing earlier zoo entries)."""
    entries = {"qirc.zoo.network": spec.name, "qirc.zoo.format": format, "qirc.zoo.calibration": calibration_note,
               "qirc.zoo.weights": f"int8 {'per-channel' if per_channel else 'per-tensor'}, random (seed {seed})",
               "qirc.zoo.activations": f"{act_bits}-bit"}
    kept = [p for p in model_proto.metadata_props if not p.key.startswith("qirc.zoo.")]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(kept)
    for key, value in entries.items():
        prop = model_proto.metadata_props.add()
        prop.key, prop.value = key, value


__all__ = ["NETWORKS", "FORMATS", "MODEL_FILE", "build_model", "fold_batchnorm", "count_params_and_macs",
           "zoo_list", "format_zoo_table", "zoo_build", "calibrated_model", "ZooError"]
