"""``--html FILE.html``: one self-contained page (no scripts, no network) with the report's plots.

The plots are inline SVG drawn here from the JSON report (``json_report.build_report``), so the
page shows the same numbers as ``--report`` and opens anywhere, offline:

- kept channels per group (before and after);
- per-layer sensitivity: each refit layer's relative output error before reconstruction (what
  removing its inputs cost); without calibration data it says it was not measured;
- latency (or FLOPs/params) against the fraction of channels kept, as the search's cost model
  predicts it, with the end-to-end measurements of the search marked.
"""

from __future__ import annotations

import html
from typing import Any

from .summary import flops_at_line

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.muted{color:#777}
svg text{font:11px system-ui,sans-serif}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _human(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.4g}"


def _bars(rows: list[tuple[str, float, float | None]], title: str, unit: str = "") -> str:
    """Horizontal bars: ``(label, full, part)``; ``part`` drawn over ``full`` when given."""
    if not rows:
        return f'<p class="muted">{_e(title)}: nothing to show.</p>'
    top = max(max(r[1] for r in rows), 1e-12)
    bar_h, label_w, width = 16, 260, 520
    height = len(rows) * (bar_h + 4) + 24
    parts = [f'<svg role="img" aria-label="{_e(title)}" width="{label_w + width + 90}" height="{height}">']
    for i, (label, full, part) in enumerate(rows):
        y = 4 + i * (bar_h + 4)
        short = label if len(label) <= 40 else label[:39] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{_e(short)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{width * full / top:.1f}" height="{bar_h}" fill="#cfd8e3"/>')
        value = full
        if part is not None:
            parts.append(f'<rect x="{label_w}" y="{y}" width="{width * part / top:.1f}" height="{bar_h}" '
                         'fill="#3b6ea5"/>')
            value = part
        text = f"{part:g} / {full:g}" if part is not None else f"{value:.4g}{unit}"
        parts.append(f'<text x="{label_w + width * full / top + 4:.1f}" y="{y + 12}">{_e(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _line_plot(curve: list[dict], measured: list[tuple[float, float]], ylabel: str) -> str:
    """Predicted cost vs kept fraction (line), measured points (dots)."""
    if not curve:
        return '<p class="muted">No cost model: the plot needs a target search.</p>'
    w, h, pad = 560, 300, 50
    ys = [c["predicted"] for c in curve] + [m[1] for m in measured]
    ymax = max(ys) * 1.1 or 1.0

    def pt(f: float, v: float) -> tuple[float, float]:
        return pad + (w - 2 * pad) * f, h - pad - (h - 2 * pad) * v / ymax

    parts = [f'<svg role="img" aria-label="{_e(ylabel)} vs kept fraction" width="{w}" height="{h}">',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#444"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#444"/>']
    for k in range(0, 11, 2):
        x, _ = pt(k / 10, 0)
        parts.append(f'<text x="{x:.1f}" y="{h - pad + 16}" text-anchor="middle">{k / 10:.1f}</text>')
    for k in range(5):
        v = ymax * k / 4
        _, y = pt(0, v)
        parts.append(f'<text x="{pad - 6}" y="{y + 4:.1f}" text-anchor="end">{_human(v)}</text>')
    line = " ".join("{:.1f},{:.1f}".format(*pt(c["kept"], c["predicted"])) for c in sorted(curve, key=lambda c: c["kept"]))
    parts.append(f'<polyline points="{line}" fill="none" stroke="#3b6ea5" stroke-width="2"/>')
    for f, v in measured:
        x, y = pt(f, v)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#d9534f"><title>measured {v:.4g}</title></circle>')
    parts.append(f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">fraction of channels kept</text>')
    parts.append(f'<text x="12" y="{pad - 12}">{_e(ylabel)}</text></svg>')
    return "".join(parts)


def _sensitivity(report: dict) -> tuple[list[tuple[str, float, None]], str]:
    recon = report.get("reconstruction") or {}
    layers = [la for la in recon.get("layers", []) if la.get("error_before") is not None]
    if layers:
        return ([(la["node"], float(la["error_before"]), None) for la in layers],
                "relative output error of each refit layer before reconstruction (what removing its inputs cost)")
    return [], ("not measured: per-layer sensitivity is each refit layer's output error on calibration data, and "
                "this run had none (or no refit); give --calib")


def _setting(value: Any) -> str:
    """A setting as a user writes it on the command line (``heads,channels``, not a Python list)."""
    if isinstance(value, (list, tuple)):
        return ",".join(_setting(v) for v in value)
    if isinstance(value, dict):  # input shapes: name:1x3x224x224
        return ",".join(f"{k}:{'x'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in value.items())
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _io_shapes(report: dict) -> str:
    """The table of graph inputs/outputs whose shape changed (KV-cache I/O), or nothing."""
    def text(dims) -> str:
        return "unknown" if dims is None else "[" + ", ".join(map(str, dims)) + "]"

    rows = "".join(f'<tr><td class="l">{_e(c["name"])}</td><td class="l">{_e(c["kind"])}</td>'
                   f'<td>{_e(text(c["before"]))}</td><td>{_e(text(c["after"]))}</td></tr>'
                   for c in report.get("io_shapes") or [])
    if not rows:
        return ""
    return ('<h2>Graph inputs and outputs resized</h2><p class="muted">KV-cache inputs/outputs carry the pruned '
            'K/V heads (--keep-io-shapes keeps them).</p><table><tr><th class="l">name</th><th class="l">kind</th>'
            f'<th>before</th><th>after</th></tr>{rows}</table>')


def _steps(report: dict) -> str:
    """With ``--quantize``: the table of size, latency and fidelity after each step."""
    steps = report.get("steps")
    if not steps:
        return ""
    q = report.get("quantization") or {}

    def fid(step: dict) -> str:
        if not step["fidelity"]:
            return "<td>–</td><td>–</td>"
        v = next(iter(step["fidelity"].values()))
        return f'<td>{v["mean_cosine"]:.4f}</td><td>{v["relative_error"]:.4f}</td>'

    def p50(step: dict) -> str:
        return "–" if step["p50_ms"] is None else f'{step["p50_ms"]:.3f}'

    rows = "".join(f'<tr><td class="l">{_e(s["step"])}</td><td>{_human(s["bytes"])}B</td><td>{p50(s)}</td>{fid(s)}</tr>'
                   for s in steps)
    how = f'{q.get("method")}, {q.get("scheme")}' + (f' on {q["samples"]} calibration samples' if q.get("samples") else "")
    first = next((next(iter(s["fidelity"])) for s in steps if s["fidelity"]), None)
    return (f'<h2>Build steps</h2><p class="muted">Quantized by ONNX Runtime\'s quantizer ({_e(how)}, '
            f'{_e(q.get("layers"))} layers). Latency: p50 where timed (--bench: side by side in the same rounds); '
            f'fidelity against the original on calibration data{f", output {_e(first)}" if first else ""}.</p>'
            '<table><tr><th class="l">step</th><th>size</th><th>p50 (ms)</th><th>mean cosine</th>'
            f'<th>relative error</th></tr>{rows}</table>')


def render_html(report: dict) -> str:
    """The page for one JSON report."""
    before, after = report.get("before") or {}, report.get("after") or {}
    settings = report.get("settings") or {}
    search = report.get("search")
    rows = [("params", before.get("params"), after.get("params")), ("FLOPs", before.get("flops"), after.get("flops"))]
    if search and search["target"]["kind"] == "latency" and search.get("achieved") is not None:
        label = "latency p50 (ms, predicted)" if search["status"] == "predicted" else "latency p50 (ms)"
        rows.append((label, search["baseline"], search["achieved"]))  # the summary's figures
    summary = "".join(f'<tr><td class="l">{_e(k)}</td><td>{_human(b)}</td><td>{_human(a)}</td>'
                      f'<td>{"" if not b or a is None else f"{(a - b) / b * 100:+.1f}%"}</td></tr>' for k, b, a in rows)
    fidelity = report.get("fidelity") or {}
    fid_rows = "".join(f'<tr><td class="l">{_e(n)}</td><td>{v["mean_cosine"]:.4f}</td><td>{v["min_cosine"]:.4f}</td>'
                       f'<td>{v["relative_error"]:.4f}</td></tr>' for n, v in fidelity.get("outputs", {}).items())
    groups = [g for g in report["groups"] if g["prunable"]]
    kept_plot = _bars([(f'#{g["id"]} {g["name"]}', g["channels_before"], g["channels_after"]) for g in groups],
                      "kept channels per group")
    sens_rows, sens_title = _sensitivity(report)
    sens_plot = _bars(sens_rows, sens_title)
    curve_plot = '<p class="muted">No target search in this run.</p>'
    if search:
        kind = search["target"]["kind"]
        measured = []
        counts = search.get("counts") or {}
        total = sum(g["channels_before"] for g in groups) or 1
        kept = sum(counts.get(str(g["id"]), g["channels_before"]) for g in groups) / total
        if search.get("achieved") is not None and search.get("status") != "already_met":
            measured.append((kept, float(search["achieved"])))
        curve = [{"kept": c["kept"], "predicted": c.get("predicted", c.get("measured"))} for c in search.get("curve") or []]
        curve_plot = _line_plot(curve, measured,
                                "latency (ms)" if kind == "latency" else kind)
    blocked = "".join(f'<tr><td>{g["id"]}</td><td>{g["channels_before"]}</td><td class="l">{_e(g["name"])}</td>'
                      f'<td class="l">{_e("; ".join(g["reasons"]) or "a single channel")}</td></tr>'
                      for g in report["groups"] if not g["prunable"])
    versions = ", ".join(f"{k} {v}" for k, v in (report.get("versions") or {}).items() if v)
    shown = dict(settings)
    t = shown.pop("target", None)
    if t:
        shown["target"] = (f"{t['kind']} {t['value']:g} ms" if t["kind"] == "latency" else
                           f"{t['kind']} {t['value']:g}" + (" of the original" if t["fraction"] else ""))
    settings_text = ", ".join(f"{k.replace('_', '-')} {_setting(v)}" for k, v in shown.items() if v is not None)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>onnxprune report: {_e(report.get("input"))}</title>
<style>{_CSS}</style></head><body>
<h1>onnxprune report: {_e(report.get("input"))}</h1>
<p>{_e("wrote " + str(report["output"]) if report.get("written") else "nothing written")}; {_e(settings_text)}</p>
<h2>Summary</h2>
<table><tr><th class="l"></th><th>before</th><th>after</th><th>change</th></tr>{summary}</table>
{f'<p class="muted">{_e(flops_at_line(report["flops_at"]))}</p>' if report.get("flops_at") else ""}
{_io_shapes(report)}
{_steps(report)}
{f'<h2>Fidelity on calibration data ({fidelity.get("batches")} batches)</h2><table><tr><th class="l">output</th><th>mean cosine</th><th>min cosine</th><th>relative error</th></tr>{fid_rows}</table>' if fid_rows else ''}
<h2>Kept channels per group</h2>{kept_plot}
<h2>Per-layer sensitivity</h2><p class="muted">{_e(sens_title)}</p>{sens_plot if sens_rows else ""}
<h2>Cost against the fraction of channels kept</h2>
<p class="muted">Line: the search's cost model with every group kept at about the same fraction; dot: the result as measured (latency) or counted.</p>
{curve_plot}
<h2>Blocked groups</h2>
{f'<table><tr><th>group</th><th>channels</th><th class="l">layers</th><th class="l">why</th></tr>{blocked}</table>' if blocked else '<p>None.</p>'}
<p class="muted">{_e(versions)}; report schema {_e(report.get("schema"))} v{_e(report.get("version"))}</p>
</body></html>
"""
