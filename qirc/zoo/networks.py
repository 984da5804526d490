"""Brevitas definitions of the MLPerf Tiny v1.x reference networks and the variants the DeepQuant exporter shipped.

Every network is built in its *training form*: quantized conv/linear layers followed by float BatchNorm, then a
quantized activation.  That is the form that is calibrated; `qirc.zoo.fold.fold_batchnorm` then folds each BatchNorm
into the layer before it, which is the form that is exported.  The quantizers are the ones DeepQuant-style models
use: int8 weights (per tensor by default, per output channel on request), signed int8 activations where a tensor can
be negative (the network input, residual-add operands, the logits), unsigned activations after every ReLU, and int32
biases whose scale is s_in * s_w (`Int32Bias`), so that a bias is exactly representable in the accumulator.

Architectures follow the Keras reference definitions of mlcommons/tiny (benchmark/training/*): layer order, kernel
sizes, strides, channel counts, biases (Keras layers have a bias by default) and BatchNorm placement.  Where a Keras
form has no one-node PyTorch equivalent the difference is stated at the class; none changes a parameter or MAC count.

This module imports torch and brevitas at import time; `qirc.zoo` imports it lazily.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import brevitas.nn as qnn
from brevitas.quant import Int8ActPerTensorFloat
from brevitas.quant import Int8WeightPerChannelFloat
from brevitas.quant import Int8WeightPerTensorFloat
from brevitas.quant import Int32Bias
from brevitas.quant import Uint8ActPerTensorFloat
from brevitas.quant_tensor import QuantTensor


@dataclass(frozen=True)
class QuantOptions:
    """How a zoo network is quantized: weight granularity and activation bit width (weights stay 8-bit)."""

    per_channel: bool = False
    act_bits: int = 8

    @property
    def weight_quant(self):
        return Int8WeightPerChannelFloat if self.per_channel else Int8WeightPerTensorFloat


def dequant(x):
    """The float value of `x`: float ops (add, pooling, BatchNorm) take plain tensors, never QuantTensors."""
    return x.value if isinstance(x, QuantTensor) else x


def signed_act(opts: QuantOptions, return_quant_tensor: bool = True) -> nn.Module:
    """A signed per-tensor activation quantizer (int8 by default)."""
    return qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=opts.act_bits,
                             return_quant_tensor=return_quant_tensor)


def unsigned_act(opts: QuantOptions, return_quant_tensor: bool = True) -> nn.Module:
    """An unsigned per-tensor quantizer for tensors known to be non-negative (a pooled ReLU output)."""
    return qnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat, bit_width=opts.act_bits,
                             return_quant_tensor=return_quant_tensor)


def quant_relu(opts: QuantOptions, return_quant_tensor: bool = True) -> nn.Module:
    """ReLU followed by an unsigned per-tensor quantizer (uint8 by default)."""
    return qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, bit_width=opts.act_bits,
                         return_quant_tensor=return_quant_tensor)


def quant_conv(opts: QuantOptions, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
               groups: int = 1) -> nn.Module:
    """A conv with quantized weights and an int32 bias at s_in * s_w; its output stays float (BatchNorm follows)."""
    return qnn.QuantConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                           bias=True, weight_quant=opts.weight_quant, bias_quant=Int32Bias,
                           return_quant_tensor=False)


def quant_linear(opts: QuantOptions, in_features: int, out_features: int, output_quant: bool = False) -> nn.Module:
    """A dense layer with quantized weights and an int32 bias; with `output_quant` its output is quantized (signed)."""
    extra = {}
    if output_quant:
        extra = dict(output_quant=Int8ActPerTensorFloat, output_bit_width=opts.act_bits)
    return qnn.QuantLinear(in_features, out_features, bias=True, weight_quant=opts.weight_quant,
                           bias_quant=Int32Bias, return_quant_tensor=False, **extra)


class ConvBN(nn.Module):
    """A quantized conv followed by float BatchNorm: the unit `fold_batchnorm` folds into one conv."""

    def __init__(self, opts: QuantOptions, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 groups: int = 1):
        super().__init__()
        self.conv = quant_conv(opts, in_channels, out_channels, kernel_size, stride, padding, groups)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return self.bn(self.conv(x))


class LinearBN(nn.Module):
    """A quantized dense layer followed by float BatchNorm1d, folded like `ConvBN`."""

    def __init__(self, opts: QuantOptions, in_features: int, out_features: int):
        super().__init__()
        self.linear = quant_linear(opts, in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x):
        return self.bn(self.linear(x))


class ClassifierHead(nn.Module):
    """Global average pool -> unsigned requantizer -> flatten -> dense with a signed (int8) output quantizer.

    The Keras references pool with AveragePooling2D over the whole feature map and then Dense; softmax is left out
    (it does not change the argmax and has no integer form).
    """

    def __init__(self, opts: QuantOptions, in_features: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pool_quant = unsigned_act(opts)
        self.fc = quant_linear(opts, in_features, num_classes, output_quant=True)

    def forward(self, x):
        x = self.pool_quant(self.pool(dequant(x)))
        return self.fc(torch.flatten(x, 1))


# ----------------------------------------------------------------------------------------------------------------
# ResNet-8 (image classification, CIFAR-10)
# ----------------------------------------------------------------------------------------------------------------

class ResidualStack(nn.Module):
    """One ResNet v1 stack: conv3x3-BN-ReLU, conv3x3-BN, a shortcut, add, ReLU.

    As in the reference, the shortcut is the identity when the shape is kept and an un-normalised 1x1 conv of stride 2
    (no BatchNorm) when it changes.  Both add operands that are not already quantized pass through a signed
    requantizer, so the add sees two quantized tensors (the residual branch and the 1x1 shortcut); the identity
    shortcut is the previous stack's unsigned ReLU output as it is.
    """

    def __init__(self, opts: QuantOptions, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(opts, in_channels, out_channels, 3, stride, 1)
        self.relu1 = quant_relu(opts)
        self.conv2 = ConvBN(opts, out_channels, out_channels, 3, 1, 1)
        self.residual_quant = signed_act(opts, return_quant_tensor=False)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = quant_conv(opts, in_channels, out_channels, 1, stride, 0)
            self.shortcut_quant = signed_act(opts, return_quant_tensor=False)
        else:
            self.shortcut = None
            self.shortcut_quant = None
        self.relu_out = quant_relu(opts)

    def forward(self, x):
        y = self.relu1(self.conv1(x))
        y = self.residual_quant(self.conv2(y))
        s = dequant(x) if self.shortcut is None else self.shortcut_quant(self.shortcut(x))
        return self.relu_out(y + s)


class ResNet8(nn.Module):
    """MLPerf Tiny image classification: ResNet v1 with stem 16 and stacks of 16/32/64 filters, 10 classes.

    Keras pads stride-2 3x3 convs 'same' as (0, 1); here they pad (1, 1): same output shape, one-pixel shift.
    """

    input_shape = (1, 3, 32, 32)

    def __init__(self, opts: QuantOptions = QuantOptions(), num_classes: int = 10, filters=(16, 32, 64)):
        super().__init__()
        self.input_quant = signed_act(opts)
        self.stem = ConvBN(opts, 3, filters[0], 3, 1, 1)
        self.stem_relu = quant_relu(opts)
        self.stack1 = ResidualStack(opts, filters[0], filters[0], 1)
        self.stack2 = ResidualStack(opts, filters[0], filters[1], 2)
        self.stack3 = ResidualStack(opts, filters[1], filters[2], 2)
        self.head = ClassifierHead(opts, filters[2], num_classes)

    def forward(self, x):
        x = self.stem_relu(self.stem(self.input_quant(x)))
        x = self.stack3(self.stack2(self.stack1(x)))
        return self.head(x)


# ----------------------------------------------------------------------------------------------------------------
# DS-CNN (keyword spotting)
# ----------------------------------------------------------------------------------------------------------------

class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv-BN-ReLU then pointwise 1x1 conv-BN-ReLU (MobileNetV1 and DS-CNN building block)."""

    def __init__(self, opts: QuantOptions, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.dw = ConvBN(opts, in_channels, in_channels, 3, stride, 1, groups=in_channels)
        self.dw_relu = quant_relu(opts)
        self.pw = ConvBN(opts, in_channels, out_channels, 1, 1, 0)
        self.pw_relu = quant_relu(opts)

    def forward(self, x):
        return self.pw_relu(self.pw(self.dw_relu(self.dw(x))))


class DSCNN(nn.Module):
    """Keyword spotting DS-CNN: conv 10x4 stride 2 -> BN -> ReLU, 4 depthwise-separable blocks, pool, dense.

    `stem_padding` (5, 1) reproduces the output shape of Keras' padding='same' (25x5 from 49x10; Keras pads rows
    4/5, here 5/5).  The reference pools with AveragePooling2D(pool_size=(24, 5)), which on a 25x5 map averages the
    first 24 rows only; here the pool is global (all 25 rows), the form an integer backend sums exactly.
    """

    def __init__(self, opts: QuantOptions = QuantOptions(), channels: int = 64, input_hw=(49, 10),
                 stem_padding=(5, 1), num_classes: int = 12, blocks: int = 4):
        super().__init__()
        self.input_shape = (1, 1) + tuple(input_hw)
        self.input_quant = signed_act(opts)
        self.stem = ConvBN(opts, 1, channels, (10, 4), 2, stem_padding)
        self.stem_relu = quant_relu(opts)
        self.blocks = nn.Sequential(*[DepthwiseSeparable(opts, channels, channels) for _ in range(blocks)])
        self.head = ClassifierHead(opts, channels, num_classes)

    def forward(self, x):
        x = self.stem_relu(self.stem(self.input_quant(x)))
        return self.head(self.blocks(x))


# ----------------------------------------------------------------------------------------------------------------
# MobileNetV1 0.25 (visual wake words)
# ----------------------------------------------------------------------------------------------------------------

class MobileNetV1(nn.Module):
    """MLPerf Tiny visual wake words: MobileNetV1 width 0.25 (8 stem filters) at 96x96, 2 classes.

    13 depthwise-separable blocks; the pointwise widths double at the strided blocks (8 -> 16 -> ... -> 256).
    Keras pads stride-2 convs 'same' as (0, 1); here (1, 1): same shapes.
    """

    input_shape = (1, 3, 96, 96)
    # (stride of the depthwise conv, pointwise output channels) for width 1.0; scaled by `width`
    BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
              (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))

    def __init__(self, opts: QuantOptions = QuantOptions(), width: float = 0.25, num_classes: int = 2):
        super().__init__()
        stem_channels = int(32 * width)
        self.input_quant = signed_act(opts)
        self.stem = ConvBN(opts, 3, stem_channels, 3, 2, 1)
        self.stem_relu = quant_relu(opts)
        blocks, channels = [], stem_channels
        for stride, out in self.BLOCKS:
            blocks.append(DepthwiseSeparable(opts, channels, int(out * width), stride))
            channels = int(out * width)
        self.blocks = nn.Sequential(*blocks)
        self.head = ClassifierHead(opts, channels, num_classes)

    def forward(self, x):
        x = self.stem_relu(self.stem(self.input_quant(x)))
        return self.head(self.blocks(x))


# ----------------------------------------------------------------------------------------------------------------
# MobileNetV2 0.35 (visual wake words; the DeepQuant exporter's variant)
# ----------------------------------------------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand-BN-ReLU] -> depthwise 3x3-BN-ReLU -> 1x1 project-BN (linear bottleneck).

    With a residual connection (stride 1, same width) the projection and the block input are added and the sum
    requantized (signed); without one the projection is requantized directly.  ReLU6 of torchvision is a plain
    quantized ReLU here, as in the DeepQuant corpus model (the unsigned quantizer clips anyway).
    """

    def __init__(self, opts: QuantOptions, in_channels: int, out_channels: int, stride: int, expand: int):
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self.expand = ConvBN(opts, in_channels, hidden, 1, 1, 0)
            self.expand_relu = quant_relu(opts)
        else:
            self.expand = None
            self.expand_relu = None
        self.dw = ConvBN(opts, hidden, hidden, 3, stride, 1, groups=hidden)
        self.dw_relu = quant_relu(opts)
        self.project = ConvBN(opts, hidden, out_channels, 1, 1, 0)
        self.use_residual = stride == 1 and in_channels == out_channels
        if self.use_residual:
            self.project_quant = signed_act(opts, return_quant_tensor=False)
            self.add_quant = signed_act(opts)
        else:
            self.project_quant = signed_act(opts)
            self.add_quant = None

    def forward(self, x):
        y = x
        if self.expand is not None:
            y = self.expand_relu(self.expand(y))
        y = self.project_quant(self.project(self.dw_relu(self.dw(y))))
        if self.use_residual:
            return self.add_quant(dequant(x) + y)
        return y


class MobileNetV2(nn.Module):
    """MobileNetV2 width 0.35 at 96x96 with 2 classes, the layout of the DeepQuant corpus' MobileNetV2-VWW.

    Channels are int(c * width) (11, 5, 8, 11, 22, 33, 56, 112) with a 1280-wide last conv, as in that model.
    """

    input_shape = (1, 3, 96, 96)
    # expansion t, channels c, repeats n, first stride s (torchvision's table)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, opts: QuantOptions = QuantOptions(), width: float = 0.35, num_classes: int = 2,
                 last_channels: int = 1280):
        super().__init__()
        channels = int(32 * width)
        self.input_quant = signed_act(opts)
        self.stem = ConvBN(opts, 3, channels, 3, 2, 1)
        self.stem_relu = quant_relu(opts)
        blocks = []
        for t, c, n, s in self.SETTINGS:
            out = int(c * width)
            for i in range(n):
                blocks.append(InvertedResidual(opts, channels, out, s if i == 0 else 1, t))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.last = ConvBN(opts, channels, last_channels, 1, 1, 0)
        self.last_relu = quant_relu(opts)
        self.head = ClassifierHead(opts, last_channels, num_classes)

    def forward(self, x):
        x = self.stem_relu(self.stem(self.input_quant(x)))
        x = self.last_relu(self.last(self.blocks(x)))
        return self.head(x)


# ----------------------------------------------------------------------------------------------------------------
# Fully connected autoencoders (anomaly detection)
# ----------------------------------------------------------------------------------------------------------------

class FCAutoencoder(nn.Module):
    """A chain of dense layers: every hidden layer is dense [-> BN] -> ReLU, the last is dense with a signed output.

    The MLPerf Tiny anomaly-detection reference (640-128-128-128-128-8-128-128-128-128-640) has BatchNorm and ReLU
    after every dense layer but the last, the 8-wide bottleneck included.  The DeepQuant exporter's 128-wide
    autoencoders have no BatchNorm (`batchnorm=False`).
    """

    def __init__(self, opts: QuantOptions = QuantOptions(), dims=(640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640),
                 batchnorm: bool = True):
        super().__init__()
        self.input_shape = (1, dims[0])
        self.input_quant = signed_act(opts)
        layers = []
        for fan_in, fan_out in zip(dims[:-2], dims[1:-1]):
            layers.append(LinearBN(opts, fan_in, fan_out) if batchnorm else quant_linear(opts, fan_in, fan_out))
            layers.append(quant_relu(opts))
        self.hidden = nn.Sequential(*layers)
        self.output = quant_linear(opts, dims[-2], dims[-1], output_quant=True)

    def forward(self, x):
        return self.output(self.hidden(self.input_quant(x)))


# ----------------------------------------------------------------------------------------------------------------
# Tiny transformers (keyword spotting KWT, vision ViT): pre-norm encoder blocks with the quantizers that Deeploy's
# integer softmax, LayerNorm and GELU need (DESIGN.md section 7)
# ----------------------------------------------------------------------------------------------------------------

#: the smallest GELU input scale Deeploy's iGELU can hold (DESIGN.md section 7), with a margin
GELU_MIN_SCALE = 0.02


class QuantEncoderBlock(nn.Module):
    """A pre-norm transformer encoder block: x + MHA(LN(x)), then x + MLP(LN(x)), MLP = dense -> GELU -> dense.

    Every tensor an integer kernel reads has a quantizer: the residual stream (a signed requantizer after each add),
    each LayerNorm's output (the attention's `in_proj_input_quant`, the MLP's `ln2_quant`), the softmax input
    (`softmax_input_quant`, which Brevitas leaves None by default), both sides of GELU (`fc1`'s output quantizer, whose
    scale is kept >= GELU_MIN_SCALE for iGELU, and `gelu_quant`) and the attention output (`out_proj_output_quant`),
    so that each residual add sees two quantized operands.  `batch_first` is the token layout: [N, L, E] (True, Brevitas adds a Transpose at each end of the
    attention) or [L, N, E].  `packed_in_proj` chooses one [3E, E] in-projection (True) or separate q/k/v ones.
    """

    def __init__(self, opts: QuantOptions, dim: int, heads: int, mlp_dim: int, batch_first: bool = True,
                 packed_in_proj: bool = True):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = qnn.QuantMultiheadAttention(
            dim, heads, batch_first=batch_first, packed_in_proj=packed_in_proj,
            in_proj_weight_quant=opts.weight_quant, out_proj_weight_quant=opts.weight_quant,
            in_proj_input_quant=Int8ActPerTensorFloat, softmax_input_quant=Int8ActPerTensorFloat,
            q_scaled_quant=Int8ActPerTensorFloat, k_transposed_quant=Int8ActPerTensorFloat,
            v_quant=Int8ActPerTensorFloat, out_proj_input_quant=Int8ActPerTensorFloat,
            attn_output_weights_quant=Uint8ActPerTensorFloat, out_proj_output_quant=Int8ActPerTensorFloat,
            return_quant_tensor=False)
        self.attn_add_quant = signed_act(opts, return_quant_tensor=False)
        self.ln2 = nn.LayerNorm(dim)
        self.ln2_quant = signed_act(opts)
        # the GELU input quantizer: Deeploy's iGELU needs its scale >= 0.0196 (b = round(-1.769 sqrt 2 / s) must fit
        # int8); a trained block's MLP activations are that wide, a random one's may not be
        self.fc1 = qnn.QuantLinear(dim, mlp_dim, bias=True, weight_quant=opts.weight_quant, bias_quant=Int32Bias,
                                   output_quant=Int8ActPerTensorFloat, output_bit_width=opts.act_bits,
                                   output_scaling_min_val=GELU_MIN_SCALE, return_quant_tensor=False)
        self.gelu = nn.GELU()
        self.gelu_quant = signed_act(opts)
        self.fc2 = quant_linear(opts, mlp_dim, dim, output_quant=True)
        self.mlp_add_quant = signed_act(opts, return_quant_tensor=False)

    def forward(self, x):
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        x = self.attn_add_quant(x + a)
        h = self.gelu_quant(self.gelu(self.fc1(self.ln2_quant(self.ln2(x)))))
        return self.mlp_add_quant(x + self.fc2(h))


class QuantTransformer(nn.Module):
    """Token embedding -> [class token] -> + positional embedding -> encoder blocks -> LayerNorm -> pooling -> dense.

    `tokens` turns the (quantized) input into [N, L, features]: "frames" reads a [N, 1, T, F] spectrogram as T
    tokens of F features (KWT), "patches" cuts a [N, C, H, W] image into `patch` x `patch` patches with a strided
    conv (ViT).  The class token and the embedded tokens share one quantizer (`token_quant`), so their Concat joins
    two tensors on one grid; the positional embedding has its own quantizer and the sum is requantized.  `pool` is
    "class" (the class token, a Gather of token 0) or "mean" (the mean over tokens, a ReduceMean; no class token).
    With `batch_first` False the blocks run on [L, N, E] (one Transpose after the embedding).
    """

    def __init__(self, opts: QuantOptions = QuantOptions(), input_shape=(1, 1, 49, 10), tokens: str = "frames",
                 patch: int = 4, dim: int = 64, heads: int = 4, mlp_dim: int = 128, depth: int = 2,
                 num_classes: int = 12, pool: str = "class", batch_first: bool = True, packed_in_proj: bool = True):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.tokens, self.pool, self.batch_first = tokens, pool, batch_first
        self.input_quant = signed_act(opts)
        if tokens == "frames":
            _, _, frames, features = self.input_shape
            self.embed = quant_linear(opts, features, dim)
            seq = frames
        elif tokens == "patches":
            _, channels, height, width = self.input_shape
            self.embed = quant_conv(opts, channels, dim, patch, stride=patch)
            seq = (height // patch) * (width // patch)
        else:
            raise ValueError(f"unknown token embedding {tokens!r}")
        self.token_quant = signed_act(opts, return_quant_tensor=False)
        if pool == "class":
            self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
            seq += 1
        elif pool != "mean":
            raise ValueError(f"unknown pooling {pool!r}")
        self.pos_embedding = nn.Parameter(torch.zeros(1, seq, dim))
        self.pos_quant = signed_act(opts, return_quant_tensor=False)
        self.embed_quant = signed_act(opts, return_quant_tensor=False)
        self.blocks = nn.Sequential(*[QuantEncoderBlock(opts, dim, heads, mlp_dim, batch_first, packed_in_proj)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.norm_quant = signed_act(opts, return_quant_tensor=False)
        self.pool_quant = signed_act(opts)
        self.head = quant_linear(opts, dim, num_classes, output_quant=True)
        with torch.no_grad():  # seeded like the weights (torch.manual_seed before construction)
            nn.init.trunc_normal_(self.pos_embedding, std=0.2)
            if pool == "class":
                nn.init.trunc_normal_(self.class_token, std=0.2)

    def forward(self, x):
        x = self.input_quant(x)
        if self.tokens == "frames":
            # [N, 1, T, F] -> [N, T, F] -> [N, T, E] with a constant shape (torch.flatten(x, 1, 2) would export
            # Shape/Slice/Concat arithmetic for it, which qirc folds but other tools may not)
            x = self.embed(x.reshape(-1, self.input_shape[2], self.input_shape[3]))
        else:
            x = torch.flatten(self.embed(x), 2).transpose(1, 2)       # [N, E, h, w] -> [N, h*w, E]
        x = self.token_quant(x)
        if self.pool == "class":
            cls = self.token_quant(self.class_token)
            if x.shape[0] != 1:  # exported at batch 1 without Shape/Where/Expand arithmetic (qirc folds it too)
                cls = cls.expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
        x = self.embed_quant(x + self.pos_quant(self.pos_embedding))
        if not self.batch_first:
            x = x.transpose(0, 1)                                     # [L, N, E]
        x = self.blocks(x)
        x = self.norm_quant(self.norm(x))
        token_axis = 1 if self.batch_first else 0
        if self.pool == "class":
            x = x.select(token_axis, 0)
        else:
            x = x.mean(dim=token_axis)
        return self.head(self.pool_quant(x))
