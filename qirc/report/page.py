"""The `qirc report` page: one self-contained HTML file with per-layer error figures and plots.

    data = build_report("model.onnx", "deeploy-siracusa", samples=4)
    html = render_html(data)

The page holds, in this order: the model, target, samples and the pass pipeline that produced the integer graph; a
summary (worst layer, layers over one step, saturation, accumulator use); the summary table (one row per
int.requant_shift, graph order, linking to its section); an overview plot over all layers; and one section per tensor
with its figures and an error histogram.  Numbers come from `qirc.report.figures.layer_figures`.

Self-contained: styles are inline, plots are matplotlib SVGs embedded as `data:image/svg+xml;base64` images (an <img>
keeps each SVG's internal ids to itself), nothing is loaded from anywhere.  matplotlib is imported only when a page
is drawn (`require_matplotlib`), with the Agg backend; without it the user gets a QircError naming the extra to
install.
"""
from __future__ import annotations

import base64
import html
import io
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..outputs import REPORT_MARK
from ..qir.diagnostics import QircError, UsageError
from ..qir.ir import Module
from .figures import layer_figures

__all__ = ["ReportData", "build_report", "render_html", "require_matplotlib", "worst_layer"]

#: local error (steps) above which a layer breaks the per-requant contract of DESIGN.md section 3
CONTRACT_STEPS = 1.0


@dataclass
class ReportData:
    """Everything the page shows."""

    model_name: str
    model_path: str
    target: str
    platform: str
    passes: List[str]
    samples: int
    inputs: str
    layers: List[Dict]
    outputs: List[Dict] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    approximations: List[Dict] = field(default_factory=list)  # iSoftmax / iLayerNorm / iGELU vs their float ops
    exact_kernels: List[Dict] = field(default_factory=list)  # the network with each kind of them computed exactly


def require_matplotlib():
    """matplotlib with the Agg backend, or a QircError telling the user how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise QircError("qirc report needs matplotlib to draw its plots: pip install -e .[report]") from None
    matplotlib.use("Agg", force=True)
    return matplotlib


def worst_layer(layers: Sequence[Dict]) -> Optional[Dict]:
    """The matched layer with the largest local error (then mean local error, then end-to-end error); None if no
    layer has a reference."""
    scored = [layer for layer in layers if layer.get("local_max_error_steps") is not None]
    if not scored:
        return None
    return max(scored, key=lambda e: (e["local_max_error_steps"], e["local_mean_error_steps"],
                                      e["max_error_steps"], -e["index"]))


def build_report(model_path: str, target: str, inputs_npz: Optional[str] = None, samples: int = 4,
                 seed: int = 0, int_module: Optional[Module] = None, input_shapes: Optional[Dict[str, tuple]] = None,
                 note=None) -> ReportData:
    """Import the model, lower it for `target` the way `qirc MODEL --target T` does (the same pass pipeline), run
    both on the samples (`inputs_npz`, else `samples` seeded random ones) and collect the per-layer figures.

    `int_module` replaces the lowering (a graph lowered elsewhere, or tampered with in a test); `passes` then lists
    what the driver would run.  `input_shapes`, `note`: the model's dynamic input dims (`--input-shape`, as
    `compile_model` takes them).
    """
    from ..backends.deeploy import vectors
    from ..backends.deeploy.targets import get_target
    from ..driver import build_passes
    from ..frontends import load_model
    from ..qir.passes import PassManager

    if samples < 1:
        raise UsageError(f"--samples must be at least 1, got {samples}")
    if inputs_npz is not None and not os.path.isfile(inputs_npz):
        raise UsageError(f"--inputs: no such file '{inputs_npz}'")
    seconds: Dict[str, float] = {}
    t0 = time.perf_counter()
    tgt = get_target(target)
    quant_module = load_model(model_path, input_shapes=input_shapes, note=note)
    passes = build_passes(tgt)
    seconds["import"] = time.perf_counter() - t0
    if int_module is None:
        int_module = quant_module.clone()
        PassManager(passes).run(int_module)
    seconds["lower"] = time.perf_counter() - t0 - seconds["import"]
    float_samples = vectors.float_samples(quant_module, inputs_npz, seed, samples)
    t1 = time.perf_counter()
    layers = layer_figures(quant_module, int_module, float_samples)
    seconds["figures"] = time.perf_counter() - t1
    outputs = _output_figures(int_module, layers)
    from ..lowering.approximations import approximation_report
    int_samples = vectors.quantize_samples(quant_module, int_module, float_samples)
    approximations = approximation_report(quant_module, int_module, int_samples)
    from .ablation import exact_kernel_ablation
    exact_kernels = exact_kernel_ablation(quant_module, int_module, float_samples, int_samples)
    name = os.path.splitext(os.path.basename(os.fspath(model_path)))[0] if isinstance(model_path, (str, os.PathLike)) \
        else quant_module.name
    return ReportData(model_name=name, model_path=os.fspath(model_path), target=tgt.name, platform=tgt.platform,
                      passes=[p.spec() for p in passes], samples=len(float_samples),
                      inputs=os.path.basename(inputs_npz) if inputs_npz else f"random (seed {seed})",
                      layers=layers, outputs=outputs, seconds=seconds, approximations=approximations,
                      exact_kernels=exact_kernels)


def _output_figures(int_module: Module, layers: List[Dict]) -> List[Dict]:
    """The end-to-end error at each graph output whose value is a matched requantized tensor."""
    by_loc = {layer["loc"]: layer for layer in layers if layer["match"]}
    out = []
    for op in int_module.outputs:
        producer = op.operands[0].owner
        while producer.name in ("int.reshape", "int.flatten", "int.clip") and producer.operands:
            producer = producer.operands[0].owner
        layer = by_loc.get(producer.loc) if producer.name == "int.requant_shift" else None
        out.append({"name": op.attrs["name"], "layer": None if layer is None else layer["index"],
                    "max_error_steps": None if layer is None else layer["max_error_steps"],
                    "mean_error_steps": None if layer is None else layer["mean_error_steps"]})
    return out


# ----- plots -------------------------------------------------------------------------------------------------------
class _Plotter:
    """matplotlib figures reused across layers (drawing a fresh figure per layer is several times slower)."""

    def __init__(self):
        matplotlib = require_matplotlib()
        matplotlib.rcParams["svg.hashsalt"] = "qirc-report"  # deterministic ids inside the SVGs
        matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small files, the browser's fonts
        matplotlib.rcParams["font.size"] = 8
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator
        matplotlib.rcParams["text.parse_math"] = False
        self._FuncFormatter = FuncFormatter
        self._LogLocator = LogLocator
        self._Figure = Figure
        self._MaxNLocator = MaxNLocator
        self._NullLocator = NullLocator
        self._hist_fig = None

    def _svg(self, fig) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        text = buf.getvalue().decode("utf-8")
        # the DOCTYPE names a DTD by URL; browsers never fetch it, but the page promises no references at all
        start = text.find("<!DOCTYPE")
        if start >= 0:
            text = text[:start] + text[text.index(">", start) + 1:]
        return "data:image/svg+xml;base64," + base64.b64encode(text.encode("utf-8")).decode("ascii")

    def overview(self, layers: List[Dict]) -> str:
        fig = self._Figure(figsize=(11, 4.2), dpi=72)
        fig.subplots_adjust(left=0.06, right=0.99, top=0.9, bottom=0.1, hspace=0.45)
        top, bottom = fig.subplots(2, 1, sharex=True)
        idx = np.array([layer["index"] for layer in layers])
        local = np.array([_nan(layer["local_max_error_steps"]) for layer in layers])
        e2e = np.array([_nan(layer["max_error_steps"]) for layer in layers])
        top.bar(idx, np.nan_to_num(local), width=0.8, color="#d62728", label="local max error (this requant)")
        top.plot(idx, e2e, "o", ms=3, color="#1f77b4", label="end-to-end max error")
        top.axhline(CONTRACT_STEPS, color="#444444", lw=0.8, ls="--")
        top.set_ylabel("steps")
        top.set_title("error per requantized tensor (graph order)", loc="left")
        top.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=7, frameon=False)
        sat = np.array([layer["clipped_rate"] for layer in layers])
        floor = np.array([layer["saturation_rate"] - layer["clipped_rate"] for layer in layers])
        acc = np.array([layer["acc_used_fraction"] for layer in layers])
        bound = np.array([_nan(layer["acc_bound_used_fraction"]) for layer in layers])
        bottom.bar(idx, 100 * floor, width=0.8, color="#c7c7c7", label="% at a ReLU's zero")
        bottom.bar(idx, 100 * sat, bottom=100 * floor, width=0.8, color="#ff7f0e", label="% saturated")
        bottom.plot(idx, 100 * acc, "s", ms=3, color="#2ca02c", label="% of int32 used (observed)")
        bottom.plot(idx, 100 * bound, "_", ms=6, color="#2ca02c", label="% of int32 (range bound)")
        bottom.set_ylabel("%")
        bottom.set_xlabel("layer #")
        bottom.set_ylim(0, max(100.0, float(np.nanmax(np.concatenate([100 * acc, 100 * bound, [0]])) * 1.05)))
        bottom.set_title("saturation and accumulator use", loc="left")
        bottom.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=4, fontsize=7, frameon=False)
        bottom.xaxis.set_major_locator(self._MaxNLocator(20, integer=True))
        return self._svg(fig)

    def histogram(self, layer: Dict) -> str:
        """Error histogram of one layer: local and end-to-end error in steps, counts on a log axis."""
        if self._hist_fig is None:
            fig = self._Figure(figsize=(5.2, 1.9), dpi=72)
            fig.subplots_adjust(left=0.13, right=0.98, top=0.86, bottom=0.22)
            ax = fig.subplots()
            ax.set_yscale("log")
            # plain tick labels: the default log labels are mathtext ($10^{4}$), whose parsing costs most of the time
            ax.yaxis.set_major_locator(self._LogLocator(numticks=5))
            ax.yaxis.set_minor_locator(self._NullLocator())
            ax.yaxis.set_major_formatter(self._FuncFormatter(lambda v, _: f"{v:.0e}".replace("e+0", "e") if v >= 1000
                                                             else f"{v:g}"))
            ax.set_xlabel("error (steps, integer - fake-quant)")
            ax.xaxis.set_major_locator(self._MaxNLocator(9, integer=True))
            ax.xaxis.set_minor_locator(self._NullLocator())
            e2e = ax.stairs([1], [0, 1], fill=True, color="#1f77b4", alpha=0.35, label="end to end")
            local = ax.stairs([1], [0, 1], color="#d62728", lw=1.5, label="local")
            ax.legend(loc="upper right", fontsize=7, frameon=False)
            self._hist_fig = (fig, ax, e2e, local, ax.set_title(""))
        fig, ax, e2e, local, title = self._hist_fig
        hist_e2e, hist_local = layer["error_histogram"], layer["local_error_histogram"]
        steps = sorted(set(hist_e2e["steps"]) | set(hist_local["steps"]))
        lo, hi = min(steps + [-1.0]), max(steps + [1.0])
        edges = np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 1.0, 1.0)
        counts_e2e = _binned(hist_e2e, edges)
        counts_local = _binned(hist_local, edges)
        # log axis: empty bins at 0.5 sit below the axis instead of breaking the step line
        e2e.set_data(np.maximum(counts_e2e, 0.5), edges, baseline=0.5)
        local.set_data(np.maximum(counts_local, 0.5), edges, baseline=0.5)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(0.5, max(counts_e2e.max(), counts_local.max(), 1) * 2.5)
        title.set_text(f"#{layer['index']} {_short(layer['loc'], 60)}")
        return self._svg(fig)


def _binned(hist: Dict, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(np.asarray(hist["steps"], dtype=np.float64), bins=edges,
                             weights=np.asarray(hist["counts"], dtype=np.float64))
    return counts


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


# ----- HTML --------------------------------------------------------------------------------------------------------
_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
h3 { font-size: 14px; margin: 0 0 6px 0; font-family: monospace; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.loc, th.loc { text-align: left; font-family: monospace; }
tr.worst td { background: #fbd5d5; font-weight: bold; }
tr.bad td { background: #fdecea; }
tr.nomatch td { color: #888; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; font-size: 13px; }
dl.meta dt { font-weight: bold; } dl.meta dd { margin: 0; }
code, .pipeline { font-family: monospace; font-size: 12px; }
.layer { border-top: 1px solid #ddd; padding: 10px 0; display: flex; gap: 20px; align-items: flex-start; }
.layer .numbers { font-size: 12px; min-width: 360px; }
.layer .numbers td { border: none; padding: 1px 8px 1px 0; text-align: left; }
.note { color: #666; font-size: 12px; }
.summary li { margin: 2px 0; }
img { max-width: 100%; }
.layer img { width: 520px; flex: none; }
"""


def render_html(data: ReportData) -> str:
    """The whole page as one string (see the module docstring)."""
    t0 = time.perf_counter()
    plotter = _Plotter()
    layers = data.layers
    worst = worst_layer(layers)
    e = html.escape
    title = f"qirc report: {data.model_name}"
    parts: List[str] = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        REPORT_MARK,  # how `qirc report -o` recognises a page it may overwrite (qirc.outputs)
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>{e(title)}</h1>",
        '<dl class="meta">',
        f"<dt>model</dt><dd><code>{e(data.model_path)}</code></dd>",
        f"<dt>target</dt><dd>{e(data.target)} (Deeploy platform {e(data.platform)})</dd>",
        f"<dt>samples</dt><dd>{data.samples} ({e(data.inputs)})</dd>",
        f"<dt>pipeline</dt><dd class=\"pipeline\">{e(','.join(data.passes))}</dd>",
        "<dt>reference</dt><dd>the qirc interpreter on the imported fake-quant model (onnxruntime semantics)</dd>",
        "</dl>",
    ]
    parts += _summary_list(data, worst)
    parts += _approximation_table(data.approximations)
    parts += _ablation_table(data.exact_kernels)
    parts += _summary_table(layers, worst)
    if layers:
        parts += ["<h2>Overview</h2>",
                  f'<img class="overview" alt="per-layer error, saturation and accumulator use" '
                  f'src="{plotter.overview(layers)}">']
    parts.append("<h2>Layers</h2>")
    parts.append('<p class="note">Error in output steps of the fake-quant tensor (integer minus fake-quant). '
                 "<b>Local</b>: this requantizer alone, its inputs taken from the fake-quant model (the contract is "
                 "at most 1 step); <b>end to end</b>: the integer graph run on its own. Saturation: share of the "
                 "integer values at the output's clip bounds (the lower one is a ReLU's zero where a ReLU was "
                 "folded). Accumulator: max |x&middot;mul + add + div/2| against the int32 limit, seen on the "
                 "samples and as bounded by range analysis.</p>")
    for layer in layers:
        parts += _layer_section(layer, plotter, worst)
    draw = time.perf_counter() - t0
    timing = ", ".join(f"{k} {v:.2f} s" for k, v in list(data.seconds.items()) + [("page", draw)])
    parts += [f'<p class="note">Generated by qirc report ({timing}).</p>', "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "&ndash;"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return html.escape(str(x))


def _pct(x) -> str:
    return "&ndash;" if x is None else f"{100 * x:.1f}%"


def _scale_text(layer: Dict) -> str:
    scale = layer["scale"]
    if scale is None:
        return "&ndash;"
    if isinstance(scale, list):
        return f"[{min(scale):.3g}..{max(scale):.3g}] ({len(scale)}ch)"
    return f"{scale:.6g}"


def _zp_text(layer: Dict) -> str:
    zp = layer["zero_point"]
    text = f"[{min(zp)}..{max(zp)}]" if isinstance(zp, list) else str(zp)
    if layer.get("int_zero_point") is not None:
        izp = layer["int_zero_point"]
        text += f" (int {izp if not isinstance(izp, list) else 'per axis'})"
    return html.escape(text)


def _summary_list(data: ReportData, worst: Optional[Dict]) -> List[str]:
    layers = data.layers
    matched = [layer for layer in layers if layer["match"]]
    over = [layer for layer in matched if layer["local_max_error_steps"] > CONTRACT_STEPS]
    items = [f"{len(layers)} requantized tensors (int.requant_shift), {len(matched)} matched to a fake-quant "
             f"quantizer by location"]
    if worst is not None:
        items.append(f'worst layer: <a href="#layer-{worst["index"]}"><code>{html.escape(worst["loc"])}</code></a> '
                     f"(local max error {_fmt(worst['local_max_error_steps'])} steps, mean "
                     f"{_fmt(worst['local_mean_error_steps'])}; end to end {_fmt(worst['max_error_steps'])})"
                     + ("; every layer is within the one-step contract"
                        if worst["local_max_error_steps"] <= CONTRACT_STEPS else ""))
    items.append(f"{len(over)} layer(s) with a local error above {CONTRACT_STEPS:g} step"
                 + (": " + ", ".join(f'<a href="#layer-{layer["index"]}"><code>{html.escape(layer["loc"])}</code></a>'
                                     for layer in over[:8]) + (" ..." if len(over) > 8 else "") if over else ""))
    if layers:
        sat = max(layers, key=lambda layer: (layer["clipped_rate"], -layer["index"]))
        items.append(f"highest saturation: {_pct(sat['clipped_rate'])} "
                     f'at <a href="#layer-{sat["index"]}"><code>{html.escape(sat["loc"])}</code></a> '
                     "(values at a clip bound other than a folded ReLU's zero)")
        acc = max(layers, key=lambda layer: layer["acc_used_fraction"])
        items.append(f"largest accumulator use: {_pct(acc['acc_used_fraction'])} of int32 at "
                     f'<a href="#layer-{acc["index"]}"><code>{html.escape(acc["loc"])}</code></a>'
                     + ("; <b>int32 overflow</b> at " + ", ".join(html.escape(layer["loc"]) for layer in layers
                                                                 if layer["overflow"])
                        if any(layer["overflow"] for layer in layers) else ""))
    for out in data.outputs:
        if out["max_error_steps"] is not None:
            items.append(f"output '{html.escape(out['name'])}': end-to-end max error {_fmt(out['max_error_steps'])} "
                         f"steps, mean {_fmt(out['mean_error_steps'])}")
    return ["<h2>Summary</h2>", '<ul class="summary">'] + [f"<li>{item}</li>" for item in items] + ["</ul>"]


def _approximation_table(entries: List[Dict]) -> List[str]:
    """The integer kernels that approximate a float op, each against that op on its own input."""
    if not entries:
        return []
    rows = ["<h2>Approximating kernels</h2>",
            '<p class="note">Deeploy\'s iSoftmax, iLayerNorm and iGELU approximate the float ops they replace. Error '
            "of each kernel against the float op computed on the kernel's own (dequantized) input, in steps of the "
            "grid its output is read on; <b>wrapped</b>: iLayerNorm outputs that left int8 (the kernel wraps, it "
            "does not saturate).</p>",
            '<table id="approximations">', "<thead><tr><th>kernel</th><th class=loc>location</th><th>mean err</th>"
            "<th>max err</th><th>wrapped</th><th>elements</th></tr></thead>", "<tbody>"]
    for a in entries:
        rows.append(f"<tr><td>{html.escape(a['kernel'])}</td><td class=loc><code>{html.escape(a['node'])}</code>"
                    f"</td><td>{_fmt(a['mean_error_steps'])}</td><td>{_fmt(a['max_error_steps'])}</td>"
                    f"<td>{_fmt(a.get('wrapped'))}</td><td>{a['elements']}</td></tr>")
    return rows + ["</tbody>", "</table>"]


def _ablation_table(rows: List[Dict]) -> List[str]:
    """The network's output error with each kind of approximating kernel computed exactly."""
    if not rows:
        return []
    out = ["<h2>Cost of each approximation</h2>",
           '<p class="note">The integer graph run as emitted, then with one kind of kernel replaced by the float op '
           "it approximates (rounded once onto the kernel's output grid): the network's output error against the "
           "fake-quant model. The difference to the first row is what that approximation costs.</p>",
           '<table id="exact-kernels">', "<thead><tr><th>computed exactly</th><th>output</th><th>mean err</th>"
           "<th>max err</th><th>argmax agreement</th></tr></thead>", "<tbody>"]
    for row in rows:
        for o in row["outputs"]:
            out.append(f"<tr><td>{html.escape(row['computed_exactly'] or 'nothing (as emitted)')}</td>"
                       f"<td>{html.escape(o['name'])}</td><td>{_fmt(o['mean_error_steps'])}</td>"
                       f"<td>{_fmt(o['max_error_steps'])}</td><td>{_pct(o['argmax_agreement'])}</td></tr>")
    return out + ["</tbody>", "</table>"]


_COLUMNS = ("#", "location", "type", "scale", "zero point", "max err", "mean err", "exact", "local max",
            "local mean", "saturation", "acc used", "acc bound")


def _summary_table(layers: List[Dict], worst: Optional[Dict]) -> List[str]:
    rows = ["<h2>Requantized tensors</h2>", '<table id="summary">', "<thead><tr>"
            + "".join(f'<th{" class=loc" if c == "location" else ""}>{c}</th>' for c in _COLUMNS) + "</tr></thead>",
            "<tbody>"]
    for layer in layers:
        cls = _row_class(layer, worst)
        cells = [str(layer["index"]),
                 f'<a href="#layer-{layer["index"]}">{html.escape(_short(layer["loc"], 64))}</a>',
                 html.escape(layer["dtype"]), _scale_text(layer), _zp_text(layer),
                 _fmt(layer["max_error_steps"]), _fmt(layer["mean_error_steps"]), _pct(layer["exact_fraction"]),
                 _fmt(layer["local_max_error_steps"]), _fmt(layer["local_mean_error_steps"]),
                 _pct(layer["saturation_rate"]), _pct(layer["acc_used_fraction"]),
                 _pct(layer["acc_bound_used_fraction"])]
        tds = "".join(f'<td{" class=loc" if i == 1 else ""}>{c}</td>' for i, c in enumerate(cells))
        rows.append(f'<tr{f" class={cls}" if cls else ""}>{tds}</tr>')
    rows += ["</tbody>", "</table>"]
    return rows


def _row_class(layer: Dict, worst: Optional[Dict]) -> str:
    if worst is not None and layer["index"] == worst["index"]:
        return "worst"
    if not layer["match"]:
        return "nomatch"
    if layer["local_max_error_steps"] > CONTRACT_STEPS or layer["overflow"]:
        return "bad"
    return ""


def _saturation_text(layer: Dict) -> str:
    text = f"{_pct(layer['saturation_rate'])} at the clip bounds (lower {_pct(layer['saturation_low_rate'])}"
    if layer["relu_floor"]:
        text += ", a folded ReLU's zero"
    return text + ")"


def _layer_section(layer: Dict, plotter: _Plotter, worst: Optional[Dict]) -> List[str]:
    k = layer["index"]
    heading = f"#{k} {layer['loc']}" + ("  (worst)" if worst is not None and worst["index"] == k else "")
    rows = [("op", html.escape(layer["op"])),
            ("shape", "x".join(str(d) for d in layer["shape"]) + f" {html.escape(layer['dtype'])}"),
            ("scale / zero point", f"{_scale_text(layer)} / {_zp_text(layer)}"),
            ("clip bounds", f"{layer['clip_bounds'][0]} .. {layer['clip_bounds'][1]}")]
    if layer["match"]:
        rows += [("fake-quant quantizer", f"<code>{html.escape(layer['reference_loc'])}</code>"),
                 ("error end to end", f"max {_fmt(layer['max_error_steps'])}, mean {_fmt(layer['mean_error_steps'])}"
                                      f", exact {_pct(layer['exact_fraction'])}"),
                 ("error local", f"max {_fmt(layer['local_max_error_steps'])}, mean "
                                 f"{_fmt(layer['local_mean_error_steps'])}, "
                                 f"exact {_pct(layer['local_exact_fraction'])}"),
                 ("saturation", _saturation_text(layer)
                  + f"; fake-quant {_pct(layer['reference_saturation_rate'])} at its storage bounds")]
    else:
        rows += [("fake-quant quantizer", f"none: {html.escape(layer['note'])}"),
                 ("saturation", _saturation_text(layer))]
    acc = f"{_fmt(layer['acc_min'])} .. {_fmt(layer['acc_max'])}; peak |x&middot;mul+add+div/2| " \
          f"{_fmt(layer['acc_peak'])} = {_pct(layer['acc_used_fraction'])} of int32"
    if layer["acc_bound_peak"] is not None:
        acc += f" (range bound {_pct(layer['acc_bound_used_fraction'])})"
    if layer["overflow"]:
        acc += " <b>OVERFLOW</b>"
    rows.append(("accumulator", acc))
    rows.append(("values compared", f"{layer['elements']}"))
    table = "".join(f"<tr><td><b>{name}</b></td><td>{value}</td></tr>" for name, value in rows)
    out = [f'<section class="layer" id="layer-{k}">', '<div class="numbers">', f"<h3>{html.escape(heading)}</h3>",
           f"<table>{table}</table>", "</div>"]
    if layer["match"] and layer["error_histogram"] is not None:
        out.append(f'<img alt="error histogram of layer {k}" src="{plotter.histogram(layer)}">')
    out.append("</section>")
    return out
