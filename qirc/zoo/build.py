"""Building zoo networks: seeded construction, BatchNorm folding, parameter and MAC counts.

Imports torch and brevitas; `qirc.zoo` imports this module only when a network is built.
"""
from __future__ import annotations

import torch
from torch import nn

import brevitas.nn as qnn

from qirc.qir.diagnostics import UsageError
from qirc.zoo import networks
from qirc.zoo.networks import ConvBN, LinearBN, QuantOptions
from qirc.zoo.registry import get_spec

DEFAULT_SEED = 0


def build_model(name: str, per_channel: bool = False, act_bits: int = 8, seed: int = DEFAULT_SEED) -> nn.Module:
    """The zoo network `name` in its training form (float BatchNorm after each conv/dense), in eval mode.

    Deterministic: the weights come from torch's default initialisers under `torch.manual_seed(seed)`, and the
    BatchNorm statistics and affine parameters from a generator seeded with `seed`, so two builds are identical.
    The BatchNorm values are drawn (not left at mean 0 / var 1 / gamma 1 / beta 0) so that folding them changes the
    weights as a trained network's would; LayerNorm's gamma and beta are drawn the same way.
    """
    if not isinstance(act_bits, int) or not 2 <= act_bits <= 16:
        raise UsageError(f"activation bit width must be an integer in 2..16, got {act_bits!r}")
    spec = get_spec(name)
    opts = QuantOptions(per_channel=bool(per_channel), act_bits=act_bits)
    torch.manual_seed(seed)
    model = getattr(networks, spec.builder)(opts, **spec.kwargs)
    model.zoo_name = name
    model.input_shape = spec.input_shape
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=generator))
                module.bias.copy_(torch.empty(n).uniform_(-0.1, 0.1, generator=generator))
                module.running_mean.copy_(torch.empty(n).uniform_(-0.1, 0.1, generator=generator))
                module.running_var.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=generator))
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                # drawn like BatchNorm's affine parameters: every LayerNorm gets its own gamma and beta
                n = module.weight.numel()
                module.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=generator).view_as(module.weight))
                module.bias.copy_(torch.empty(n).uniform_(-0.1, 0.1, generator=generator).view_as(module.bias))
    return model.eval()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm of `model` into the conv or dense layer before it, in place; returns `model`.

    For y = gamma * (W x + b - mean) / sqrt(var + eps) + beta the folded layer has W' = W * g and
    b' = (b - mean) * g + beta with g = gamma / sqrt(var + eps) per output channel; the BatchNorm becomes an
    Identity.  The weight quantizer's scale is computed from the weights at run time, so it follows the folded
    weights; the activation quantizers after the fold see the same values as before it.  Idempotent.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ConvBN):
                layer, bn = module.conv, module.bn
            elif isinstance(module, LinearBN):
                layer, bn = module.linear, module.bn
            else:
                continue
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
                continue
            g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            layer.weight.mul_(g.reshape((-1,) + (1,) * (layer.weight.dim() - 1)))
            # every zoo conv/dense layer has a bias (Keras' default), which absorbs the BatchNorm shift
            layer.bias.copy_((layer.bias - bn.running_mean) * g + bn.bias)
            module.bn = nn.Identity()
    return model


def count_params_and_macs(model: nn.Module, input_shape) -> dict:
    """Parameter and multiply-accumulate counts of `model`, by walking its conv and dense layers.

    MACs: a conv costs Cout * Hout * Wout * (Cin / groups) * Kh * Kw, a dense layer in * out per row (token), an
    attention's two activation products 2 * L * L * E (output shapes from one forward pass on zeros).  `params`
    counts the weights and biases of those layers, i.e. the deployed network with BatchNorm folded, plus a
    transformer's LayerNorm parameters, class token and positional embedding; `keras_params` adds 4 per BatchNorm channel (gamma, beta, moving mean and variance), which is
    what Keras' count_params() reports for the reference definitions.
    """
    counts = {"params": 0, "macs": 0, "keras_params": 0}
    hooks = []

    def on_forward(module, inputs, output):
        if isinstance(module, qnn.QuantMultiheadAttention):
            # the two activation x activation products: Q K^T and P V, each L x L x E per batch element
            query = networks.dequant(inputs[0])
            tokens, batch = (query.shape[1], query.shape[0]) if module.batch_first else query.shape[:2]
            counts["macs"] += 2 * batch * tokens * tokens * module.embed_dim
            return
        out = networks.dequant(output)
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            _, cout, hout, wout = out.shape
            counts["macs"] += cout * hout * wout * (module.in_channels // module.groups) * kh * kw
        else:
            # a dense layer costs in * out per row it is applied to (tokens of a transformer)
            rows = out.numel() // module.out_features
            counts["macs"] += rows * module.in_features * module.out_features

    for module in model.modules():
        if isinstance(module, qnn.QuantMultiheadAttention):
            hooks.append(module.register_forward_hook(on_forward))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            counts["params"] += sum(p.numel() for p in (module.weight, module.bias) if p is not None)
            hooks.append(module.register_forward_hook(on_forward))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            counts["keras_params"] += 4 * module.num_features
        elif isinstance(module, nn.LayerNorm):
            counts["params"] += sum(p.numel() for p in (module.weight, module.bias) if p is not None)
        elif isinstance(module, networks.QuantTransformer):
            counts["params"] += sum(p.numel() for p in module.parameters(recurse=False))  # class token, positions
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    counts["keras_params"] += counts["params"]
    return counts
