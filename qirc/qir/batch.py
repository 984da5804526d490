"""Running many samples through a batch-1 module in one interpreter call.

Models are declared with batch 1.  `rebatch(module, n)` copies a module with its batch axis (axis 0 of every
non-constant value whose axis 0 is 1) set to n, so that the interpreter's vectorised kernels process n samples at once;
`run_samples` uses it and falls back to one call per sample when the module is not batch-agnostic (say, a Reshape that
folds the batch axis into another).  The fallback is safe because the interpreter checks every result against its
declared shape: a module that rebatching got wrong fails loudly instead of computing something else.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Union

import numpy as np

from .diagnostics import InterpretError
from .ir import Module

Sample = Union[Mapping[str, np.ndarray], Sequence[np.ndarray]]


def rebatch(module: Module, n: int) -> Module:
    """A copy of `module` whose batch axis is `n` (reshape targets with a leading 1 follow).  Values computed from
    constants alone (a dequantized weight with one output channel, say) keep their shape."""
    batched = module.clone()
    constant = set()
    for op in batched.ops():
        if op.name == "qir.const" or (op.operands and all(v in constant for v in op.operands)):
            constant.update(op.results)
            continue
        for r in op.results:
            if r.type.rank and r.type.shape[0] == 1:
                r.type = r.type.with_shape((n,) + tuple(r.type.shape[1:]))
        if op.name in ("int.reshape", "onnx.Reshape") and list(op.attrs["shape"])[:1] == [1]:
            op.attrs["shape"] = [n] + list(op.attrs["shape"])[1:]
    return batched


def run_samples(module: Module, samples: Sequence[Sample], check_overflow: bool = True) -> List[Dict[str, np.ndarray]]:
    """`interpreter.run` on each batch-1 sample, as one batched call where the module allows it; same results."""
    from . import interpreter

    samples = [_as_dict(module, s) for s in samples]
    if len(samples) > 1 and all(op.results[0].type.rank and op.results[0].type.shape[0] == 1
                                for op in module.inputs):
        try:
            stacked = {name: np.concatenate([np.asarray(s[name]) for s in samples]) for name in samples[0]}
            if all(a.shape[0] == len(samples) for a in stacked.values()):
                out = interpreter.run(rebatch(module, len(samples)), stacked, check_overflow=check_overflow)
                if all(np.ndim(a) and np.shape(a)[0] == len(samples) for a in out.values()):
                    return [{k: a[i:i + 1] for k, a in out.items()} for i in range(len(samples))]
        except InterpretError:
            pass  # not batch-agnostic (or a real error, which the per-sample run below reports as such)
    return [interpreter.run(module, s, check_overflow=check_overflow) for s in samples]


def _as_dict(module: Module, sample: Sample) -> Dict[str, np.ndarray]:
    if isinstance(sample, Mapping):
        return dict(sample)
    return dict(zip(module.input_names(), sample))
