"""`qirc.qir.dot.print_dot`: Graphviz text for a module (quant level, integer level, corpus models)."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from qirc.cli import main
from qirc.qir.dot import format_quant_short, format_type_short, print_dot
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.types import TensorType, UniformQuantType, f32, i8, i32, u8

from real_models import deepquant, example

_NODE = re.compile(r"^\s*(n\d+) \[label=(\"(?:[^\"\\]|\\.)*\")(.*)\];$")
_EDGE = re.compile(r"^\s*(n\d+) -> (n\d+) \[label=(\"(?:[^\"\\]|\\.)*\")\];$")


def parse_dot(text: str):
    """A structural check of print_dot's output: balanced braces outside strings, every statement a node or an edge
    (or a graph-level default), every edge between declared nodes.
    Returns ({id: (label, rest)}, [(src, dst, label)])."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            assert depth >= 0, "closing brace without an opening one"
    assert depth == 0 and not in_string, "unbalanced braces or an unterminated string"
    lines = text.rstrip("\n").split("\n")
    assert re.fullmatch(r'digraph "(?:[^"\\]|\\.)*" \{', lines[0]), lines[0]
    assert lines[-1] == "}"
    nodes, edges = {}, []
    for line in lines[1:-1]:
        if m := _NODE.match(line):
            assert m.group(1) not in nodes, f"node {m.group(1)} declared twice"
            nodes[m.group(1)] = (_unquote(m.group(2)), m.group(3))
        elif m := _EDGE.match(line):
            edges.append((m.group(1), m.group(2), _unquote(m.group(3))))
        else:
            assert re.match(r"^\s*(rankdir=TB|node \[.*\]|edge \[.*\]);$", line), f"unexpected statement: {line}"
    for src, dst, _ in edges:
        assert src in nodes and dst in nodes, f"edge {src} -> {dst} refers to an undeclared node"
    return nodes, edges


def _unquote(s: str) -> str:
    return s[1:-1].replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def _small_int_module() -> Module:
    m = Module("tiny")
    qx = UniformQuantType.per_tensor(i8, 0.0078125, 0)
    x = input_op(m, "input", TensorType((1, 3, 4, 4), qx))
    w = const_op(m, np.ones((16, 3, 1, 1), np.int8), TensorType((16, 3, 1, 1), i8), loc="/w")
    acc_q = UniformQuantType.per_axis(i32, 1, np.linspace(0.0012, 0.0098, 16))
    conv = m.create("int.conv", [x, w], [TensorType((1, 16, 4, 4), acc_q)], {"pads": [0, 0, 0, 0]},
                    loc='/conv1/Conv "a"')
    out_q = UniformQuantType.per_tensor(u8, 0.0039, 0)
    rq = m.create("int.requant_shift", [conv.result], [TensorType((1, 16, 4, 4), out_q)],
                  {"mul": np.ones((1, 16, 1, 1), np.int64), "add": np.zeros((1, 16, 1, 1), np.int64), "div": 256,
                   "signed": False, "n_levels": 256}, loc="/conv1_output_quant/Clip")
    output_op(m, "output", rq.result)
    return m


def test_short_quant_forms():
    assert format_quant_short(UniformQuantType.per_tensor(i8, 0.0078125, 0)) == "i8 s=0.0078 z=0"
    per_axis = UniformQuantType.per_axis(i8, 0, [0.0012, 0.005, 0.0098] + [0.003] * 13)
    assert format_quant_short(per_axis) == "i8 s=[0.0012..0.0098] (16ch) z=0"
    narrow = UniformQuantType.per_tensor(i8, 0.5, 3, storage_min=-127, storage_max=127)
    assert format_quant_short(narrow) == "i8<-127:127> s=0.5 z=3"
    assert format_type_short(TensorType((1, 3, 32, 32), f32)) == "1x3x32x32 f32"
    assert format_type_short(TensorType((), i32)) == "i32"


def test_integer_module_nodes_edges_and_folded_constant():
    text = print_dot(_small_int_module())
    nodes, edges = parse_dot(text)
    labels = {label.split("\n")[0]: (nid, rest) for nid, (label, rest) in nodes.items()}
    # qir.const has no node; the conv's label carries it
    assert set(labels) == {'input "input"', "int.conv", "int.requant_shift", 'output "output"'}
    conv_label = nodes[labels["int.conv"][0]][0]
    assert conv_label.split("\n")[1:] == ['/conv1/Conv "a"', "#1 const 16x3x1x1 i8"]
    assert "shape=invhouse" in labels['input "input"'][1]
    assert "shape=house" in labels['output "output"'][1]
    by_pair = {(s, d): lab for s, d, lab in edges}
    assert by_pair[(labels['input "input"'][0], labels["int.conv"][0])] == "1x3x4x4 i8 s=0.0078 z=0"
    assert by_pair[(labels["int.conv"][0], labels["int.requant_shift"][0])] == \
        "1x16x4x4 i32 s=[0.0012..0.0098] (16ch) z=0"
    assert by_pair[(labels["int.requant_shift"][0], labels['output "output"'][0])] == "1x16x4x4 u8 s=0.0039 z=0"
    assert len(edges) == 3
    assert "rankdir=TB;" in text


def test_resnet8_quant_and_integer_levels_are_valid_and_deterministic():
    from qirc.frontends import load_model
    import qirc.lowering  # noqa: F401  (registers the passes)
    from qirc.qir.passes import PassManager, parse_pipeline

    module = load_model(str(deepquant("ResNet8")))
    text = print_dot(module)
    assert text == print_dot(module.clone())
    nodes, edges = parse_dot(text)
    non_const = [op for op in module.ops() if op.name != "qir.const"
                 and not (op.name == "quant.dcast" and op.operands[0].owner.name == "qir.const")]
    assert len(nodes) == len(non_const)
    # every conv carries its weight and bias, folded
    conv_labels = [label for label, _ in nodes.values() if label.startswith("onnx.Conv\n")]
    assert len(conv_labels) == len(module.walk("onnx.Conv")) == 9
    assert all("#1 dcast(const " in lab and "#2 dcast(const " in lab for lab in conv_labels)

    lowered = module.clone()
    PassManager(parse_pipeline("lower-to-int{signed-normalize=0}")).run(lowered)
    nodes, edges = parse_dot(print_dot(lowered))
    requants = [label for label, _ in nodes.values() if label.startswith("int.requant_shift\n")]
    assert len(requants) == len(lowered.walk("int.requant_shift"))
    assert "/conv1_output_quant_1/Clip" in requants[0]
    assert any(lab.startswith("1x16x32x32 i32 s=1.2e-05 z=0") for _, _, lab in edges)


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz (dot) not installed")
def test_graphviz_renders_it(tmp_path):
    text = print_dot(_small_int_module())
    result = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "<svg" in result.stdout and "int.requant_shift" in result.stdout


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz (dot) not installed")
def test_cli_emit_dot_mobilenet_renders(tmp_path):
    out = tmp_path / "mnv2.dot"
    assert main([str(example("mobilenetv2-vww")), "--emit", "dot", "-o", str(out)]) == 0
    nodes, edges = parse_dot(out.read_text())
    assert len(nodes) > 100 and len(edges) >= len(nodes) - 2
    result = subprocess.run(["dot", "-Tsvg", str(out), "-o", str(tmp_path / "mnv2.svg")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mnv2.svg").stat().st_size > 10000
