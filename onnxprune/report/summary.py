"""Terminal tables: what the analysis found and what pruning did."""

from __future__ import annotations

from ..analysis import Analysis
from ..context import PruningContext


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def analysis_table(analysis: Analysis, params: int, flops: int, verbose: bool = False) -> str:
    """Prunable groups (channels, nodes, params, FLOPs), then blocked groups with reasons."""
    lines = []
    prunable = analysis.prunable_groups
    blocked = [g for g in analysis.groups if not g.prunable]
    lines.append(f"{len(analysis.groups)} channel groups: {len(prunable)} prunable, {len(blocked)} blocked")
    lines.append(f"model: {human(params)} params, {human(flops)} FLOPs")
    lines.append("")
    lines.append(f"{'group':>5}  {'channels':>8}  {'params':>8}  {'FLOPs':>8}  nodes")
    for g in prunable:
        nodes = ", ".join(g.nodes)
        lines.append(f"{g.id:>5}  {g.channels:>8}  {human(g.params):>8}  {human(g.flops):>8}  "
                     f"{nodes if verbose else _shorten(nodes, 70)}")
    lines.append(f"{'total':>5}  {sum(g.channels for g in prunable):>8}  {human(params):>8}  {human(flops):>8}  "
                 "(model; a weight between two groups counts in both rows above)")
    if blocked:
        lines.append("")
        lines.append("blocked:")
        for g in blocked:
            why = "; ".join(g.reasons) if g.reasons else "a single channel cannot be pruned"
            name = ", ".join(g.sources) if verbose else _shorten(g.name, 40)
            lines.append(f"{g.id:>5}  {g.channels:>8}  {name:<40}  {why if verbose else _shorten(why, 100)}")
    lines.extend(block_lines(analysis, verbose))
    return "\n".join(lines)


def block_lines(analysis: Analysis, verbose: bool = False) -> list[str]:
    """Residual blocks (``--prune blocks``): the removable ones with what they hold, then the refused ones."""
    blocks = analysis.blocks
    if not blocks:
        return []
    removable = [b for b in blocks if b.removable]
    lines = ["", f"{len(blocks)} residual blocks: {len(removable)} removable (--prune blocks), "
             f"{len(blocks) - len(removable)} refused",
             f"{'block':>5}  {'nodes':>5}  {'params':>8}  {'FLOPs':>8}  join (output projection)"]
    for b in removable:
        lines.append(f"{b.id:>5}  {len(b.nodes):>5}  {human(b.params):>8}  {human(b.flops):>8}  "
                     f"{b.name if verbose else _shorten(b.name, 70)}")
    refused = [b for b in blocks if not b.removable]
    if refused:
        lines.append("refused blocks:")
        for b in refused:
            why = "; ".join(b.reasons)
            lines.append(f"{b.id:>5}  {_shorten(b.join, 40) if not verbose else b.join:<40}  "
                         f"{why if verbose else _shorten(why, 100)}")
    return lines


def prune_summary(ctx: PruningContext) -> str:
    before, after = ctx.report["before"], ctx.report["after"]
    sel = ctx.selection
    pruned_groups = sum(1 for kept, total in sel.kept.values() if kept < total)
    removed = sum(total - kept for kept, total in sel.kept.values())
    total = sum(total for _, total in sel.kept.values())
    blocked = len(ctx.analysis.groups) - len(ctx.analysis.prunable_groups)
    head = (f"pruned {pruned_groups} of {len(ctx.analysis.groups)} groups ({blocked} blocked): "
            f"removed {removed} of {total} prunable channels")
    if "blocks" in ctx.options.prune:
        head += (f"; removed {len(sel.blocks)} of {len(ctx.analysis.removable_blocks)} removable residual blocks"
                 + (f" ({', '.join(str(b) for b in sorted(sel.blocks))})" if sel.blocks else ""))
    if (ctx.report.get("search") or {}).get("status") == "already_met":
        channels = sum(g.channels for g in ctx.analysis.prunable_groups)
        head = (f"nothing removed: the original already meets the target ({len(ctx.analysis.prunable_groups)} of "
                f"{len(ctx.analysis.groups)} groups prunable, {channels} channels)")
    rows = [
        head,
        f"{'':8}{'before':>12}{'after':>12}{'change':>10}",
    ]
    for key, label in (("params", "params"), ("flops", "FLOPs")):
        b, a = before[key], after[key]
        change = f"{(a - b) / b * 100:+.1f}%" if b else "n/a"
        rows.append(f"{label:8}{human(b):>12}{human(a):>12}{change:>10}")
    if ctx.report.get("flops_at"):
        rows.append(flops_at_line(ctx.report["flops_at"]))
    rows.extend(io_shape_lines(ctx.report.get("io_shapes") or []))
    rows.extend(config_lines(ctx.report.get("model_configs") or []))
    rows.insert(1, f"criterion {ctx.options.criterion}" + (
        f", calibration {ctx.calibration.description}" if ctx.calibration is not None else
        " (from the weights alone: no calibration data)"))
    rows.extend(search_summary(ctx.report))
    rows.extend(step_lines(ctx.report))
    rows.extend(memory_lines(ctx.report.get("memory") or {}))
    recon = ctx.report.get("reconstruction")
    if recon:
        done = [layer for layer in recon["layers"] if layer["error_after"] is not None]
        if done:
            before = sum(layer["error_before"] for layer in done) / len(done)
            after = sum(layer["error_after"] for layer in done) / len(done)
            rows.append(f"reconstruction ({recon['mode']}): {len(done)} layers, mean relative output error "
                        f"{before:.4f} -> {after:.4f}")
        skipped = [layer for layer in recon["layers"] if layer["skipped"]]
        if skipped:
            rows.append(f"  not refit: {len(skipped)} layers ({skipped[0]['node']}: {skipped[0]['skipped']}, ...)")
    return "\n".join(rows)


def memory_lines(memory: dict) -> list[str]:
    """Peak resident memory, against the weights left in their files where there are any."""
    peak = memory.get("peak_rss")
    if not peak:
        return []
    line = f"peak memory {human(peak)}B resident"
    if memory.get("rss_at_start"):
        line += f" ({human(peak - memory['rss_at_start'])}B above the start)"
    if memory.get("weights_in_files"):
        line += f"; weights left in their files: {human(memory['weights_in_files'])}B"
    return [line]


def io_shape_lines(changes: list[dict]) -> list[str]:
    """The graph inputs/outputs whose shape changed (KV-cache I/O), every name listed, one line
    per distinct change."""
    if not changes:
        return []

    def text(dims) -> str:
        return "unknown" if dims is None else "[" + ", ".join(map(str, dims)) + "]"

    by_change: dict[tuple[str, str, str], list[str]] = {}
    for c in changes:
        by_change.setdefault((c["kind"], text(c["before"]), text(c["after"])), []).append(c["name"])
    rows = [f"graph inputs/outputs resized: {len(changes)} (KV cache; --keep-io-shapes keeps them)"]
    for (kind, before, after), names in by_change.items():
        rows.append(f"  {kind}s {before} -> {after}: {', '.join(names)}")
    return rows


def config_lines(configs: list[dict]) -> list[str]:
    """The config files beside the model, updated for the output's folder (model_config)."""
    rows = []
    for c in configs:
        changes = ", ".join(f"{k} {b} -> {a}" if b is not None else f"{k} {a} (added)"
                            for k, (b, a) in c["changes"].items()) or "unchanged"
        rows.append(f"{c['file']} beside the model (one count for every layer), for the output's folder: {changes}")
    return rows


def step_lines(report: dict) -> list[str]:
    """With ``--quantize``: size, latency and fidelity after each step (original -> pruned -> quantized)."""
    from .json_report import quantize_steps

    steps = quantize_steps(report)
    if not steps:
        return []
    q = report["quantization"]
    how = q["scheme"] + (f" on {q['samples']} calibration samples" if q.get("samples") else "")
    rows = [f"quantized {q['method']} ({how}, {q['layers']} layers), by ONNX Runtime's quantizer:",
            f"  {'step':<18}{'size':>10}{'p50 ms':>10}  fidelity vs original (first output)"]
    for step in steps:
        p50 = "–" if step["p50_ms"] is None else f"{step['p50_ms']:.3f}"
        fid = step["fidelity"]
        if fid:
            name, v = next(iter(fid.items()))
            fid_text = f"{name}: cosine {v['mean_cosine']:.4f}, relative error {v['relative_error']:.4f}"
        elif step["step"] == "original":
            fid_text = "–"
        elif step["step"] == "pruned" and not q["pruned"]:
            fid_text = "the original: nothing removed"
        else:
            fid_text = "not measured (no calibration data)"
        rows.append(f"  {step['step']:<18}{human(step['bytes']) + 'B':>10}{p50:>10}  {fid_text}")
    if all(step["p50_ms"] is None for step in steps[1:]):
        rows.append("  (--bench times the three side by side)")
    return rows


def timed_here(search: dict) -> bool:
    """Whether a search timed candidates here (a measured latency target)."""
    return bool(search.get("measurement") and "pruned" in search["measurement"])
def flops_at_line(flops_at: dict) -> str:
    """Which input shapes the FLOPs were counted at, and where they came from."""
    shapes = ", ".join(f"{name} {'x'.join(map(str, dims))}" for name, dims in flops_at["shapes"].items())
    source = {"input-shape": "--input-shape", "calibration": "a calibration sample",
              "model": "the model's input shapes"}[flops_at["source"]]
    if flops_at.get("dynamic_as_one"):
        source += f"; dynamic dimensions of {', '.join(flops_at['dynamic_as_one'])} as 1, set them with --input-shape"
    line = f"FLOPs counted at {shapes or 'no inputs'} ({source})"
    if flops_at["uncounted"]:
        line += (f"; {len(flops_at['uncounted'])} layer(s) of unknown shape counted in part or not at all "
                 f"({flops_at['uncounted'][0]}, ...)")
    return line


def search_summary(report: dict) -> list[str]:
    """Lines on the target search (what was asked, what was reached) and on output fidelity."""
    rows = []
    search = report.get("search")
    if search:
        t = search["target"]
        if t["kind"] == "latency":
            asked = f"latency p50 <= {t['value']:g} ms"
        else:
            asked = f"{t['kind']} <= " + (f"{t['value']:.3g} of the original" if t["fraction"] else human(t["value"]))
        status = {"met": "met", "already_met": "already met by the original",
                  "predicted": "met by the latency table's prediction (not measured here)"}[search["status"]]
        steps = "candidate(s) timed" if timed_here(search) else "iteration(s)"
        rows.append(f"target {asked}: {status} ({len(search['iterations'])} {steps}, {search['seconds']:.1f} s)")
        m = search.get("measurement")
        if m and "pruned" in m:
            p, r = m["pruned"], m["ratio"]
            what = " (quantized: the model that ships)" if search.get("timed_as") == "quantized" else ""
            rows.append(f"latency p50 {search['baseline']:.3f} -> {search['achieved']:.3f} ms{what}, side by side in the "
                        f"same {p['rounds']} rounds (95% interval of the median {p['median_ci_ms'][0]:.3f}–"
                        f"{p['median_ci_ms'][1]:.3f} ms); speedup "
                        f"{1 / r['median']:.2f}x (per round {1 / r['max']:.2f}–{1 / r['min']:.2f}x)")
        elif t["kind"] == "latency" and search.get("achieved") is not None:
            rows.append(f"latency p50 {search['baseline']:.3f} -> {search['achieved']:.3f} ms"
                        + (" (predicted)" if search["status"] == "predicted" else ""))
        check = search.get("fidelity_check")
        if check and check.get("alternative") and None not in (check["chosen"]["cosine"], check["alternative"]["cosine"]):
            rows.append(f"accuracy guard: cosine before reconstruction {check['chosen']['cosine']:.4f} "
                        f"({check['chosen']['kind']}) vs {check['alternative']['cosine']:.4f} (uniform)"
                        + ("; collapsed" if check["collapsed"] else "")
                        + ("; chose the uniform allocation" if check["switched"] else ""))
    bench = report.get("benchmark")
    if bench:
        o, p, r = bench["original"], bench["pruned"], bench["ratio"]
        rows.append(f"benchmark ({bench['provider']}, threads {bench['threads'] or 'default'}): p50 {o['p50_ms']:.3f} -> "
                    f"{p['p50_ms']:.3f} ms side by side, speedup {1 / r['median']:.2f}x "
                    f"(per round {1 / r['max']:.2f}–{1 / r['min']:.2f}x)")
    fidelity = report.get("fidelity")
    if fidelity and fidelity["outputs"]:
        parts = [f"{name}: cosine {v['mean_cosine']:.4f} (min {v['min_cosine']:.4f}), relative error "
                 f"{v['relative_error']:.4f}" for name, v in list(fidelity["outputs"].items())[:3]]
        count = fidelity.get("samples", fidelity["batches"])
        rows.append(f"fidelity on {count} calibration sample{'s' if count != 1 else ''}: " + "; ".join(parts))
    return rows
