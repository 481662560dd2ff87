"""``onnxprune bench``: latency of one or more models, measured side by side."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from .io import load_model
from .ops.registry import runtime_extensions
from .runtime.session import make_runner, onnxruntime, parse_input_shapes
from .runtime.timing import interleaved, ratios


def bench_models(paths: list[Path] | tuple[Path, ...], provider: str = "cpu", threads: int | None = None,
                 input_shapes: tuple[str, ...] | list[str] = (), max_rounds: int = 50,
                 min_seconds: float = 2.0) -> dict:
    """Time the models interleaved; the first model is the baseline for ratios."""
    shapes = parse_input_shapes(input_shapes)
    runners = []
    for path in paths:
        model = load_model(path, runtime_extensions())  # validates the file, one-line errors
        runners.append((str(path), make_runner(model.SerializeToString(), provider, threads, shapes)))
    timings = interleaved(runners, max_rounds=max_rounds, min_seconds=min_seconds)
    ort = onnxruntime()
    result = {
        "provider": provider, "threads": threads,
        "environment": {"onnxruntime": ort.__version__, "cpus": os.cpu_count(), "machine": platform.machine()},
        "models": [t.summary() for t in timings],
    }
    if len(timings) > 1:
        result["ratios_vs_first"] = [dict(name=t.name, **ratios(timings[0], t)) for t in timings[1:]]
    return result


def format_bench(result: dict) -> str:
    width = max([5] + [len(m["name"]) for m in result["models"]])
    rows = [f"provider {result['provider']}, threads {result['threads'] or 'default'}; "
            f"{result['models'][0]['rounds']} interleaved rounds",
            f"{'model':{width}} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'per s':>8}  round medians"]
    for m in result["models"]:
        name = m["name"]  # whole: two models often differ only at the end or only in the folder
        rows.append(f"{name:{width}} {m['p50_ms']:9.3f} {m['p90_ms']:9.3f} {m['p99_ms']:9.3f} "
                    f"{m['throughput_per_s']:8.1f}  {m['round_median_min_ms']:.3f}–{m['round_median_max_ms']:.3f}")
    for r in result.get("ratios_vs_first", []):
        rows.append(f"{r['name']} / {result['models'][0]['name']}: "
                    f"{r['median']:.3f}x (per-round min–max {r['min']:.3f}–{r['max']:.3f})")
    return "\n".join(rows)
