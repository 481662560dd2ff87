"""The ``--report FILE.json`` document: everything a build log or a dashboard needs, versioned.

Schema ``onnxprune-report`` version 1 (documented in ``docs/report.md``). Fields are only ever
added within a version; a change of meaning or removal bumps the version.
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from ..context import PruningContext

SCHEMA = "onnxprune-report"
VERSION = 1


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("onnxprune", "onnx", "onnx-graphsurgeon", "numpy", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _settings(ctx: PruningContext) -> dict[str, Any]:
    o = ctx.options
    target = None
    if o.target is not None:
        target = {"kind": o.target.kind, "value": o.target.value, "fraction": o.target.fraction}
    return {"ratio": None if o.target is not None else o.ratio, "target": target, "criterion": o.criterion,
            "prune": list(o.prune), "blocks": o.blocks, "allocate": o.allocate, "round_to": o.round_to, "reconstruct": o.reconstruct, "calib_samples": o.calib_samples,
            "calib_rows": o.calib_rows,
            "calibration": ctx.calibration.description if ctx.calibration is not None else None,
            "quantize": o.quantize,
            "provider": o.provider, "threads": o.threads, "input_shapes": o.input_shapes or None,
            "latency_table": str(o.latency_table) if o.latency_table is not None and
            not hasattr(o.latency_table, "layers") else None}


def _groups(ctx: PruningContext) -> list[dict[str, Any]]:
    rows = []
    kept = ctx.selection.kept if ctx.selection is not None else {}
    for g in ctx.analysis.groups:
        after = kept.get(g.id, (g.channels, g.channels))[0]
        row: dict[str, Any] = {"id": g.id, "name": g.name, "prunable": g.prunable, "channels_before": g.channels,
                               "channels_after": after if g.prunable else g.channels, "nodes": list(g.nodes),
                               "sources": list(g.sources), "params": int(g.params), "flops": int(g.flops),
                               "reasons": list(g.reasons)}
        scores = ctx.scores.get(g.id) if ctx.scores else None
        if scores is not None and len(scores):
            s = np.asarray(scores, dtype=np.float64)
            row["score"] = {"min": float(s.min()), "mean": float(s.mean()), "max": float(s.max())}
        rows.append(row)
    return rows


def _blocks(ctx: PruningContext) -> list[dict[str, Any]]:
    removed = ctx.selection.blocks if ctx.selection is not None else set()
    return [{"id": b.id, "join": b.join, "stream": b.stream, "projection": list(b.projection),
             "nodes": len(b.nodes), "params": int(b.params), "flops": int(b.flops), "removable": b.removable,
             "removed": b.id in removed, "score": ctx.block_scores.get(b.id), "reasons": list(b.reasons)}
            for b in ctx.analysis.blocks]


def quantize_steps(report: dict[str, Any]) -> list[dict[str, Any]] | None:
    """With ``--quantize``: original -> pruned -> pruned+quantized, each step's model size (bytes),
    p50 latency where it was timed (``--bench``: all three in the same rounds; a measured latency
    target: the original and the model that ships) and fidelity against the original on
    calibration data (per output: mean cosine, relative error). None without quantization."""
    q = report.get("quantization")
    if not q:
        return None
    bench = report.get("benchmark") or {}
    search = report.get("search") or {}
    measured = search.get("measurement") or {}
    shipped_timed = search.get("timed_as") == "quantized" and "pruned" in measured

    def p50(timing: dict | None) -> float | None:
        return None if not timing else timing.get("p50_ms")

    def outputs(fidelity: dict | None) -> dict | None:
        if not fidelity:
            return None
        return {name: {"mean_cosine": v["mean_cosine"], "relative_error": v["relative_error"]}
                for name, v in fidelity.get("outputs", {}).items()}

    params = (report.get("before") or {}).get("params"), (report.get("after") or {}).get("params")
    steps = [{"step": "original", "bytes": q["bytes"]["original"], "params": params[0],
              "p50_ms": p50(bench.get("original")) or p50(measured.get("original")), "fidelity": None},
             {"step": "pruned", "bytes": q["bytes"]["pruned"], "params": params[1],
              "p50_ms": p50(bench.get("pruned")), "fidelity": outputs(report.get("fidelity"))}]
    if q["bytes"].get("quantized") is not None:
        steps.append({"step": f"pruned+{q['method']}", "bytes": q["bytes"]["quantized"], "params": params[1],
                      "p50_ms": p50(bench.get("quantized")) or (p50(measured.get("pruned")) if shipped_timed else None),
                      "fidelity": outputs(q.get("fidelity"))})
    return steps


def build_report(ctx: PruningContext, input_path: str | None = None, output_path: str | None = None,
                 written: bool = True) -> dict[str, Any]:
    """The report for one pruning run (see the module docstring)."""
    report = ctx.report
    return {
        "schema": SCHEMA, "version": VERSION, "versions": _versions(),
        "input": input_path, "output": output_path if written else None, "written": written,
        "settings": _settings(ctx),
        "before": report.get("before"), "after": report.get("after"), "flops_at": report.get("flops_at"),
        "io_shapes": list(report.get("io_shapes") or []),
        "model_configs": list(report.get("model_configs") or []),
        "groups": _groups(ctx),
        "blocks": _blocks(ctx),
        "search": report.get("search"),
        "allocation": report.get("allocation"),
        "memory": report.get("memory"),
        "reconstruction": report.get("reconstruction"),
        "fidelity": report.get("fidelity"),
        "benchmark": report.get("benchmark"),
        "quantization": report.get("quantization"),
        "steps": quantize_steps(report),
        "warnings": list(ctx.warnings),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(report: dict[str, Any]) -> str:
    import json

    return json.dumps(report, indent=1, default=_plain) + "\n"
