"""Post-training calibration of zoo networks with Brevitas' calibration mode.

The activation quantizers of a freshly built network have their untrained default scales (1/128 signed, 1/255
unsigned: a range of 1.0).  Calibration runs float samples through the network with quantization disabled while
each activation quantizer records a percentile of the values it sees, and sets its scale from that on exit
(`brevitas.graph.calibrate.calibration_mode`).  Optionally `bias_correction_mode` then shifts each layer's bias by
the mean error that weight quantization causes on the same samples.

Samples come from the user's .npz file (any array: the first axis indexes the samples) or, when none is given,
from seeded synthetic inputs.  Synthetic calibration only makes the scales non-default and the exported model
reproducible; it does not make the network accurate (its weights are random anyway).
"""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np

from qirc.qir.diagnostics import QircError


class ZooError(QircError):
    """A zoo input the user supplied cannot be used (for example a calibration file of the wrong shape)."""


class ProgressBar:
    """A one-line text progress bar on a stream (stderr by default): `label [#####.....] 5/10`."""

    def __init__(self, total: int, label: str, stream=None, width: int = 30):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        filled = self.width * self.done // self.total
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def load_calibration_npz(path, input_shape) -> np.ndarray:
    """The float32 samples of the .npz file `path`, shaped (N,) + input_shape[1:].

    The file may hold any number of arrays under any keys: the first array (in the file's order) whose trailing
    dimensions equal the network input's (without the batch axis) is used, its first axis being the samples.  An
    array of exactly the input shape is one sample.  Anything else is a ZooError naming the file.
    """
    path = Path(path)
    sample_shape = tuple(input_shape[1:])
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise ZooError("calibration file not found", file=str(path)) from None
    except OSError as exc:
        raise ZooError(f"cannot read the calibration file ({exc.strerror})", file=str(path)) from None
    if magic != b"PK\x03\x04":
        raise ZooError("not a readable .npz file (expected a zip archive of .npy arrays, as numpy.savez writes)",
                       file=str(path))
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ZooError(f"not a readable .npz file ({' '.join(str(exc).split())})", file=str(path)) from None
    with archive:
        seen = []
        for key in archive.files:
            try:
                array = archive[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise ZooError(f"array '{key}' cannot be read ({' '.join(str(exc).split())})",
                               file=str(path)) from None
            seen.append(f"{key}{list(array.shape)}")
            if array.ndim >= 1 and tuple(array.shape[1:]) == sample_shape:
                samples = array
            elif tuple(array.shape) == sample_shape:
                samples = array[None]
            else:
                continue
            if samples.shape[0] == 0:
                raise ZooError(f"array '{key}' holds no samples", file=str(path))
            if not (np.issubdtype(samples.dtype, np.floating) or np.issubdtype(samples.dtype, np.integer)):
                raise ZooError(f"array '{key}' has dtype {samples.dtype}, expected numbers", file=str(path))
            samples = samples.astype(np.float32)
            if not np.all(np.isfinite(samples)):
                raise ZooError(f"array '{key}' contains NaN or infinite values", file=str(path))
            return samples
    shape_text = "x".join(str(d) for d in sample_shape)
    found = ", ".join(seen) if seen else "no arrays"
    raise ZooError(f"no array of shape Nx{shape_text} (samples x network input) in the file; found {found}",
                   file=str(path))


def synthetic_samples(input_shape, count: int = 16, seed: int = 0) -> np.ndarray:
    """`count` seeded synthetic samples, uniform in [-1, 1): only to give the quantizers non-default scales."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(count,) + tuple(input_shape[1:])).astype(np.float32)


def calibrate(model, samples: np.ndarray, batch_size: int = 8, bias_correction: bool = False,
              progress: bool = True, label: str = "calibrating", stream=None):
    """Calibrate the activation scales of `model` (a Brevitas module in eval mode) on `samples`; returns `model`.

    `samples` is a float array (N,) + input shape without the batch axis.  With `bias_correction` a second pass
    corrects the biases (call it on the exported, BatchNorm-folded form).  A progress bar goes to `stream`, or to
    stderr when that is a terminal, unless `progress` is False.
    """
    import warnings

    import torch
    with warnings.catch_warnings():
        # brevitas.graph warns about optional packages (fast_hadamard_transform) the zoo does not use
        warnings.simplefilter("ignore")
        from brevitas.graph.calibrate import bias_correction_mode, calibration_mode

    batches = [torch.from_numpy(np.ascontiguousarray(samples[i:i + batch_size]))
               for i in range(0, len(samples), batch_size)]
    passes = [("calibration", calibration_mode)]
    if bias_correction:
        passes.append(("bias correction", bias_correction_mode))
    # the bar redraws one line with \r: on a terminal only (a log or a pipe would collect every frame)
    draw = progress and (stream is not None or _is_terminal(sys.stderr))
    bar = ProgressBar(len(batches) * len(passes), label, stream) if draw else None
    model.eval()
    with torch.no_grad():
        for _, mode in passes:
            with mode(model):
                for batch in batches:
                    model(batch)
                    if bar:
                        bar.update()
    return model


def activation_scales(model) -> dict:
    """{module name: scale} of every activation quantizer of `model` (input, ReLU, requantizers, outputs)."""
    import torch
    from brevitas.proxy.runtime_quant import ActQuantProxyFromInjectorBase

    scales = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, ActQuantProxyFromInjectorBase) and module.is_quant_enabled:
                scale = module.scale()
                if scale is not None:
                    scales[name] = float(scale.detach().reshape(-1)[0])
    return scales
