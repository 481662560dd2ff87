"""The sensitivity page: one small plot per group (relative output error against the kept
fraction), most sensitive first, and the blocks' errors when removed; self-contained (inline
SVG, no scripts, no network), like the prune report's page."""

from __future__ import annotations

import html

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:2em}.muted{color:#777}
.grid{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;border:1px solid #ddd;padding:4px}
figcaption{font-size:12px;max-width:260px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td.l,th.l{text-align:left}svg text{font:10px system-ui,sans-serif}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _curve(row: dict, top: float) -> str:
    """Error against kept fraction (1.0 at 0 error on the right), one polyline."""
    w, h, pad = 260, 150, 30
    top = top or 1.0

    def pt(f: float, v: float) -> tuple[float, float]:
        return pad + (w - 2 * pad) * f, h - pad - (h - 2 * pad) * min(v, top) / top

    points = sorted([(1.0, 0.0)] + [(p["kept"], p["error"]) for p in row["points"]])
    line = " ".join("{:.1f},{:.1f}".format(*pt(f, v)) for f, v in points)
    parts = [f'<svg role="img" aria-label="sensitivity curve of {_e(row["kind"])} {row["id"]}" width="{w}" '
             f'height="{h}">',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#444"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#444"/>',
             f'<text x="{pad}" y="{h - pad + 12}" text-anchor="middle">0</text>',
             f'<text x="{w - pad}" y="{h - pad + 12}" text-anchor="middle">1</text>',
             f'<text x="{w / 2}" y="{h - 4}" text-anchor="middle">kept fraction</text>',
             f'<text x="{pad - 3}" y="{pad + 4}" text-anchor="end">{top:.2g}</text>',
             f'<polyline class="curve" points="{line}" fill="none" stroke="#3b6ea5" stroke-width="2"/>']
    for f, v in points[:-1]:
        x, y = pt(f, v)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#3b6ea5"><title>kept {f:.2f}: error '
                     f'{v:.4f}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def render_sensitivity(result: dict, model: str) -> str:
    """The page for one sensitivity table (``search.sensitivity.table``)."""
    groups = [r for r in result["rows"] if r["kind"] != "block"]
    blocks = [r for r in result["rows"] if r["kind"] == "block"]
    top = max((p["error"] for r in groups for p in r["points"] if p["error"] != float("inf")), default=1.0)
    figures = "".join(f'<figure>{_curve(r, top)}<figcaption title="{_e(r["name"])}">{_e(r["kind"])} {r["id"]}: '
                      f'{r["sensitivity"]:.4f} · {_e(r["name"])}</figcaption></figure>' for r in groups)
    block_rows = "".join(f'<tr><td>{r["id"]}</td><td class="l">{_e(r["name"])}</td><td>{r["params"]}</td>'
                         f'<td>{r["points"][0]["error"]:.4f}</td><td>{r["points"][0]["cosine"]:.4f}</td></tr>'
                         for r in blocks)
    block_table = (f'<table><tr><th>block</th><th class="l">join (projection)</th><th>params</th>'
                   f'<th>error removed</th><th>cosine</th></tr>{block_rows}</table>' if blocks else
                   '<p class="muted">No removable residual block (or blocks not swept).</p>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>onnxprune sensitivity: {_e(model)}</title>
<style>{_CSS}</style></head><body>
<h1>onnxprune sensitivity: {_e(model)}</h1>
<p>Relative output error on {result["samples"]} calibration samples with one group alone cut to each kept
fraction (its lowest-scored channels, criterion {_e(result.get("criterion"))}), refit {_e(result.get("reconstruct"))}; most sensitive first
(sensitivity: the mean error over the points). Same scale in every plot. {result["seconds"]:.1f} s.</p>
<h2>Groups ({len(groups)})</h2><div class="grid">{figures}</div>
<h2>Residual blocks removed alone ({len(blocks)})</h2>{block_table}
</body></html>
"""
