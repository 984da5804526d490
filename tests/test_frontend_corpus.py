"""Every real model (the shipped DeepQuant exporter output and the committed zoo examples) imports, and the interpreter on the imported IR equals onnxruntime on the file.

The reference is onnxruntime on the very file with graph optimisations disabled.  Every quantizer is compared, not
only the outputs: onnxruntime also returns each quantizer's Clip output (the stored integers, as floats), which is the
`quant.qcast` whose location is that Clip node.  Criteria: quantized values identical in at least 99.9% of elements
and never more than one step apart; float outputs within 1e-5 of the output's scale.

Inputs: 20 seeded uniform samples over [-1.1, 1.1] plus the `reference.npz` input where the folder has one.
MobileNetV2 (the largest model) runs 10 random samples to keep this file short.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from qirc.frontends.onnx import import_onnx

from onnx_builders import ort_session

from real_models import deepquant_params, example_params

MODELS = deepquant_params() + example_params()
SAMPLES = {"MobileNetV2-VWW": 10, "mobilenetv2-vww": 10}
DEFAULT_SAMPLES = 20


def corpus_inputs(path: Path, shape):
    rng = np.random.default_rng(20260101)
    samples = [rng.uniform(-1.1, 1.1, size=shape).astype(np.float32)
               for _ in range(SAMPLES.get(path.parent.name, DEFAULT_SAMPLES))]
    reference = path.parent / "reference.npz"
    if reference.exists():
        samples.append(np.load(reference)["input"].astype(np.float32).reshape(shape))
    return samples


@pytest.mark.parametrize("path", MODELS)
def test_corpus_model_matches_onnxruntime(path):
    from qirc.qir.interpreter import run_values

    from qirc.qir.verifier import verify

    module = import_onnx(path)
    verify(module)
    model = onnx.load(path)
    clip_outputs = {n.name: n.output[0] for n in model.graph.node if n.op_type == "Clip"}
    qcasts = module.walk("quant.qcast")
    assert qcasts and all(op.loc in clip_outputs for op in qcasts)
    compared = [clip_outputs[op.loc] for op in qcasts]
    session = ort_session(model, compared)
    names = [o.name for o in session.get_outputs()]
    (input_op,) = module.inputs
    graph_input = input_op.attrs["name"]
    (output_op,) = module.outputs
    output_name = output_op.attrs["name"]
    assert [o.name for o in model.graph.output] == [output_name]
    last = output_op.operands[0].owner
    assert last.name == "quant.dcast"
    out_scale = last.operands[0].type.quant.scale

    total = differing = 0
    for x in corpus_inputs(path, input_op.results[0].type.shape):
        ref = dict(zip(names, session.run(None, {graph_input: x})))
        values = run_values(module, {graph_input: x})
        for op, tensor in zip(qcasts, compared):
            got = values[op.results[0]]
            expected = ref[tensor].astype(np.int64)
            diff = np.abs(got - expected)
            assert diff.max() <= 1, f"{op.loc}: quantized values {diff.max()} steps apart"
            total += diff.size
            differing += int(np.count_nonzero(diff))
        got_out = values[output_op.operands[0]]
        np.testing.assert_allclose(got_out, ref[output_name], rtol=0, atol=1e-5 * out_scale,
                                   err_msg=f"output {output_name}")
    assert differing <= 0.001 * total, f"{differing} of {total} quantized values differ"
