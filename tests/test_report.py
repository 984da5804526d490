"""`qirc report` and `qirc.report.layer_figures`: per-layer error of the integer graph against the fake-quant model.

The test network has three convolutions in DeepQuant's decomposed-QCDQ form; conv2's output quantizer is mis-scaled
(a step 64 times too fine: it saturates on both bounds) and one test tampers with conv1's requant multiplier after
lowering, which the report must name as the worst layer.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

pytest.importorskip("onnx")

from onnx_builders import GraphBuilder  # noqa: E402  (tests/ helper shared by the frontend tests)

from qirc.cli import main  # noqa: E402

TARGET = "deeploy-generic"
LOCS = ["/conv1_output_quant/Clip", "/relu1_quant/Clip", "/conv2_output_quant/Clip", "/conv3_output_quant/Clip"]


def report_net(seed: int = 0):
    """x -> conv1 -> q(1/16) -> relu -> q(u8, 1/32) -> conv2 -> q(1/2048: saturates) -> conv3 -> q(1/16) -> y."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder("report_net")
    s_x = 1 / 64
    x = g.quant(g.input("x", [1, 3, 8, 8]), s_x, prefix="/input_quant")

    def conv(x, s_in, c_in, c_out, name):
        s_w = 0.01
        w = g.quant(g.const(rng.uniform(-1, 1, (c_out, c_in, 3, 3)).astype(np.float32)), s_w, lo=-127, hi=127,
                    prefix=f"/{name}_weight_quant")
        b = g.quant(g.const(rng.uniform(-0.2, 0.2, c_out).astype(np.float32)), s_in * s_w, lo=-2 ** 31,
                    hi=2 ** 31 - 1, prefix=f"/{name}_bias_quant")
        return g.node("Conv", [x, w, b], name=f"/{name}/Conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3])

    y = g.quant(conv(x, s_x, 3, 8, "conv1"), 1 / 16, prefix="/conv1_output_quant")
    y = g.quant(g.node("Relu", [y], name="/relu1/Relu"), 1 / 32, lo=0, hi=255, prefix="/relu1_quant")
    y = g.quant(conv(y, 1 / 32, 8, 8, "conv2"), 1 / 2048, prefix="/conv2_output_quant")
    y = g.quant(conv(y, 1 / 2048, 8, 4, "conv3"), 1 / 16, prefix="/conv3_output_quant")
    g.output(y, "y")
    return g.build()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import onnx
    path = tmp_path_factory.mktemp("report") / "report_net.onnx"
    onnx.save(report_net(), str(path))
    return str(path)


def _lowered(model_path):
    from qirc.backends.deeploy.targets import get_target
    from qirc.driver import build_passes
    from qirc.frontends import load_model
    from qirc.qir.passes import PassManager
    quant = load_model(model_path)
    lowered = quant.clone()
    PassManager(build_passes(get_target(TARGET))).run(lowered)
    return quant, lowered


def _samples(quant, count=3):
    from qirc.backends.deeploy import vectors
    return vectors.float_samples(quant, None, 0, count)


def _tamper(lowered, loc, factor):
    """Scale the multiplier of the requant at `loc`: the integer graph now disagrees with the model there."""
    (requant,) = [op for op in lowered.walk("int.requant_shift") if op.loc == loc]
    requant.attrs["mul"] = np.asarray(requant.attrs["mul"]) * factor
    return requant


# ----- figures -------------------------------------------------------------------------------------------------------
def test_layer_figures_one_entry_per_requant_in_graph_order(model_path):
    from qirc.report import layer_figures
    quant, lowered = _lowered(model_path)
    samples = _samples(quant)
    figures = layer_figures(quant, lowered, samples)
    json.dumps(figures)  # what the driver writes into qirc.json under accuracy.layers
    assert [f["loc"] for f in figures] == [op.loc for op in lowered.walk("int.requant_shift")] == LOCS
    assert all(f["match"] == "location" and f["reference_loc"] == f["loc"] for f in figures)
    for f, size in zip(figures, (8 * 64, 8 * 64, 8 * 64, 4 * 64)):
        assert f["elements"] == size * len(samples)
        assert sum(f["error_histogram"]["counts"]) == f["elements"] == sum(f["local_error_histogram"]["counts"])
        # the lowering keeps the per-requant contract: at most one step given the same integer input
        assert f["local_max_error_steps"] <= 1.0
        assert 0.9 <= f["local_exact_fraction"] <= 1.0
        assert f["acc_limit"] == 2 ** 31 - 1
        # range analysis is a sound bound on what the samples reach
        assert f["acc_bound_peak"] is not None and f["acc_peak"] <= f["acc_bound_peak"] < 2 ** 31
        assert f["acc_min"] <= f["acc_max"] and not f["overflow"]
    conv1, relu1, conv2, conv3 = figures
    assert conv1["scale"] == 1 / 16 and conv1["zero_point"] == 0 and conv1["dtype"] == "int8"
    assert relu1["relu_floor"] and relu1["clip_bounds"] == [0, 255] and relu1["dtype"] == "uint8"
    assert relu1["clipped_rate"] < relu1["saturation_rate"]
    # the mis-scaled quantizer saturates in the fake-quant model and in the integer graph alike
    assert conv2["clipped_rate"] > 0.5 and conv2["reference_saturation_rate"] > 0.5
    assert max(figures, key=lambda f: f["clipped_rate"]) is conv2
    assert conv2["clip_bounds"] == [-128, 127] and not conv2["relu_floor"]


def test_tampered_requant_is_the_worst_layer_and_errors_stay_local(model_path):
    from qirc.report import layer_figures
    from qirc.report.page import worst_layer
    quant, lowered = _lowered(model_path)
    _tamper(lowered, "/conv1_output_quant/Clip", 2)
    figures = layer_figures(quant, lowered, _samples(quant))
    worst = worst_layer(figures)
    assert worst["loc"] == "/conv1_output_quant/Clip" and not worst["overflow"]
    assert worst["local_max_error_steps"] >= 10 and worst["local_exact_fraction"] < 0.5
    # downstream layers inherit the error end to end, but given the model's inputs they are still exact
    relu1 = figures[1]
    assert relu1["max_error_steps"] >= 10
    assert all(f["local_max_error_steps"] <= 1.0 for f in figures[1:])


def test_requant_without_a_quantizer_is_listed_unmatched(model_path):
    from qirc.report import layer_figures
    quant, lowered = _lowered(model_path)
    requant = lowered.walk("int.requant_shift")[2]
    requant.loc = "/inserted/rq"
    figures = layer_figures(quant, lowered, _samples(quant, 1))
    assert figures[2]["match"] is None and figures[2]["max_error_steps"] is None
    assert "no quant.qcast at this location" in figures[2]["note"]
    assert figures[2]["saturation_rate"] > 0.5  # measured on the integer graph all the same
    assert [f["match"] for f in figures] == ["location", "location", None, "location"]


def test_overflow_is_reported_not_raised(model_path):
    from qirc.report import layer_figures
    quant, lowered = _lowered(model_path)
    _tamper(lowered, "/conv3_output_quant/Clip", 1 << 20)
    figures = layer_figures(quant, lowered, _samples(quant, 1))
    assert figures[3]["overflow"] and figures[3]["acc_used_fraction"] > 1.0
    assert not any(f["overflow"] for f in figures[:3])


# ----- the page ------------------------------------------------------------------------------------------------------
class _PageParser(HTMLParser):
    """Collects the title, the summary table's body rows, and every URL-bearing attribute and element."""

    def __init__(self):
        super().__init__()
        self.title, self._in_title = "", False
        self.rows, self._table, self._in_tbody, self._row = [], None, False, None
        self._cell = None
        self.urls, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        for key in ("src", "href", "action", "poster", "data", "srcset"):
            if key in attrs:
                self.urls.append(attrs[key])
        if tag == "title":
            self._in_title = True
        elif tag == "table":
            self._table = attrs.get("id")
        elif tag == "tbody" and self._table == "summary":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self._row = {"class": attrs.get("class"), "cells": []}
        elif tag == "td" and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag == "tbody":
            self._in_tbody = False
        elif tag == "td" and self._row is not None and self._cell is not None:
            self._row["cells"].append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell += data


def _parse(text):
    parser = _PageParser()
    parser.feed(text)
    return parser


def _assert_self_contained(text, parser):
    assert "http://" not in text and "https://" not in text and "file:" not in text
    assert not ({"script", "link", "iframe", "object", "embed"} & parser.tags)
    assert "@import" not in text and "url(" not in text
    for url in parser.urls:
        assert url.startswith("#") or url.startswith("data:image/"), url


def test_page_names_tampered_layer_and_is_self_contained(model_path):
    pytest.importorskip("matplotlib")
    from qirc.report.page import build_report, render_html
    _, lowered = _lowered(model_path)
    _tamper(lowered, "/conv1_output_quant/Clip", 2)
    data = build_report(model_path, TARGET, samples=2, int_module=lowered)
    text = render_html(data)
    parser = _parse(text)
    assert parser.title == "qirc report: report_net"
    assert [row["cells"][1] for row in parser.rows] == LOCS
    assert [row["class"] for row in parser.rows][0] == "worst"
    assert sum(row["class"] == "worst" for row in parser.rows) == 1
    assert "worst layer: <a href=\"#layer-0\"><code>/conv1_output_quant/Clip</code>" in text
    assert "lower-to-int,deeploy-legalize{target=deeploy-generic}" in text
    _assert_self_contained(text, parser)
    # one overview plot and one histogram per matched layer, all inline SVG
    assert sum(u.startswith("data:image/svg+xml;base64,") for u in parser.urls) == 1 + len(LOCS)
    assert all(f'id="layer-{k}"' in text for k in range(len(LOCS)))


def test_missing_matplotlib_is_a_clean_error(model_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    out = tmp_path / "r.html"
    assert main(["report", model_path, "--target", TARGET, "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "qirc report needs matplotlib to draw its plots: pip install -e .[report]"
    assert not out.exists()


def test_report_usage_errors(model_path, tmp_path, capsys):
    assert main(["report", model_path, "-o", str(tmp_path / "r.html")]) == 2
    assert "--target" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    assert main(["report", model_path, "--target", TARGET, "--samples", "0", "-o", str(tmp_path / "r.html")]) == 2
    assert "--samples must be at least 1" in capsys.readouterr().err
    assert main(["report", model_path, "--target", "nope", "-o", str(tmp_path / "r.html")]) == 2
    assert "unknown target 'nope'" in capsys.readouterr().err


def test_compile_path_never_imports_matplotlib():
    code = ("import sys, qirc.cli, qirc.driver, qirc.report, qirc.report.figures, qirc.report.page\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported at module import time'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary")
def test_cli_report_renders_in_headless_chromium(model_path, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(5)
    inputs = tmp_path / "samples.npz"
    np.savez(inputs, x=rng.uniform(-2, 2, (2, 1, 3, 8, 8)).astype(np.float32))
    page = tmp_path / "report.html"
    assert main(["report", model_path, "--target", TARGET, "--inputs", str(inputs), "-o", str(page)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {page} (4 requantized tensors, 2 sample(s))"
    text = page.read_text()
    parser = _parse(text)
    assert parser.title == "qirc report: report_net"
    assert len(parser.rows) == len(LOCS)
    _assert_self_contained(text, parser)

    shot = tmp_path / "report.png"
    profile = tmp_path / "chromium-profile"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.exists() and _png_size(shot) == (1280, 2000)
    # a blank page compresses to a few kB; text, a table and plots do not
    assert shot.stat().st_size > 50_000
    image = pytest.importorskip("PIL.Image")
    pixels = np.asarray(image.open(shot).convert("RGB"))
    non_white = np.any(pixels < 240, axis=2)
    assert 0.02 < non_white.mean() < 0.9
    # the worst row's red background and the plots' colours are drawn
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


# ----- qirc.json -----------------------------------------------------------------------------------------------------
def test_driver_writes_layer_figures_into_qirc_json_only_when_asked(model_path, tmp_path):
    from qirc.driver import compile_model
    plain = tmp_path / "plain"
    compile_model(model_path, TARGET, str(plain), accuracy_samples=2)
    assert "layers" not in json.loads((plain / "qirc.json").read_text())["accuracy"]
    out = tmp_path / "build"
    compile_model(model_path, TARGET, str(out), accuracy_samples=2, layers=True)
    report = json.loads((out / "qirc.json").read_text())
    assert report["accuracy"]["outputs"] == json.loads((plain / "qirc.json").read_text())["accuracy"]["outputs"]
    layers = report["accuracy"]["layers"]
    assert [layer["loc"] for layer in layers] == LOCS
    assert all(layer["local_max_error_steps"] <= 1.0 for layer in layers)
    assert layers[2]["clipped_rate"] > 0.5
