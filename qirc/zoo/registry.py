"""The zoo's table of networks: name, task, input shape, and how to build each one.

This module imports neither torch nor brevitas, so the names can be listed (and a wrong name reported) without them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from qirc.qir.diagnostics import UsageError


@dataclass(frozen=True)
class NetworkSpec:
    """One zoo entry.  `builder` names a class of `qirc.zoo.networks`, built with `kwargs` and the quant options."""

    name: str
    task: str
    input_shape: tuple
    builder: str
    kwargs: dict = field(default_factory=dict)
    reference: bool = True  # an MLPerf Tiny v1.x reference network (False: a DeepQuant-exporter variant)
    description: str = ""
    origin: str = ""  # where the definition comes from, when neither MLPerf Tiny nor DeepQuant

    @property
    def source(self) -> str:
        """What `qirc zoo list` prints in its last column."""
        return self.origin or ("MLPerf Tiny reference" if self.reference else "DeepQuant variant")


NETWORKS: dict[str, NetworkSpec] = {spec.name: spec for spec in (
    NetworkSpec("resnet8", "image classification", (1, 3, 32, 32), "ResNet8",
                description="ResNet v1 for CIFAR-10 (10 classes), stem 16, stacks 16/32/64, "
                            "1x1 conv shortcuts on stacks 2 and 3"),
    NetworkSpec("mobilenetv1-vww", "visual wake words", (1, 3, 96, 96), "MobileNetV1",
                dict(width=0.25), description="MobileNetV1 width 0.25, 2 classes, 13 depthwise-separable blocks"),
    NetworkSpec("dscnn-s", "keyword spotting", (1, 1, 49, 10), "DSCNN",
                dict(channels=64, input_hw=(49, 10), stem_padding=(5, 1)),
                description="DS-CNN 64 channels, conv 10x4 stride 2, 4 depthwise-separable blocks, 12 classes"),
    NetworkSpec("autoencoder-ad", "anomaly detection", (1, 640), "FCAutoencoder",
                dict(dims=(640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640), batchnorm=True),
                description="FC autoencoder 640-128-128-128-128-8-128-128-128-128-640 with BatchNorm "
                            "(ToyADMOS log-mel frames)"),
    NetworkSpec("mobilenetv2-vww", "visual wake words", (1, 3, 96, 96), "MobileNetV2",
                dict(width=0.35), reference=False,
                description="MobileNetV2 width 0.35 (DeepQuant corpus MobileNetV2-VWW)"),
    NetworkSpec("dscnn-xs", "keyword spotting", (1, 1, 25, 10), "DSCNN",
                dict(channels=16, input_hw=(25, 10), stem_padding=(0, 0)), reference=False,
                description="DS-CNN 16 channels, unpadded stem (DeepQuant corpus DSCNN-XS)"),
    NetworkSpec("autoencoder-small", "anomaly detection", (1, 128), "FCAutoencoder",
                dict(dims=(128, 64, 32, 64, 64, 32, 64, 128), batchnorm=False), reference=False,
                description="FC autoencoder 128-64-32-64-64-32-64-128 (DeepQuant corpus Autoencoder)"),
    NetworkSpec("kwt-tiny", "keyword spotting", (1, 1, 49, 10), "QuantTransformer",
                dict(input_shape=(1, 1, 49, 10), tokens="frames", dim=64, heads=4, mlp_dim=128, depth=2,
                     num_classes=12, pool="class", batch_first=True, packed_in_proj=True), reference=False,
                origin="integer transformer (issue 13)",
                description="keyword-spotting transformer (KWT) on 49x10 MFCC: 49 frame tokens + class token, "
                            "2 pre-norm blocks, d 64, 4 heads, MLP 128, 12 classes"),
    NetworkSpec("vit-tiny", "image classification", (1, 3, 32, 32), "QuantTransformer",
                dict(input_shape=(1, 3, 32, 32), tokens="patches", patch=4, dim=64, heads=4, mlp_dim=128, depth=2,
                     num_classes=10, pool="mean", batch_first=False, packed_in_proj=False), reference=False,
                origin="integer transformer (issue 13)",
                description="vision transformer: 64 tokens of 4x4 patches of 32x32, 2 pre-norm blocks, d 64, "
                            "4 heads, MLP 128, mean over tokens, 10 classes"),
    NetworkSpec("autoencoder-128", "anomaly detection", (1, 128), "FCAutoencoder",
                dict(dims=(128,) * 8, batchnorm=False), reference=False,
                description="FC autoencoder of seven 128x128 layers (DeepQuant corpus Autoencoder-MLPerf)"),
)}


def get_spec(name: str) -> NetworkSpec:
    """The entry called `name`, or a UsageError listing the names that exist."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise UsageError(f"unknown zoo network '{name}' (known: {', '.join(NETWORKS)})") from None
