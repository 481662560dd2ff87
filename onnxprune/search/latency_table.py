"""Latency tables: every modelled layer timed at every candidate width of the groups touching it.

``onnxprune profile`` builds one on the device that will run the model and writes it as JSON;
pruning on another machine reads it with ``--latency-table``. Each layer is timed as a one-node
model on the chosen provider, all its widths interleaved in rounds (see ``runtime.timing``), so
the steps where a width matters (kernels often speed up only when a count crosses a multiple
of 8 or 16) show up against the same background load.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis import Analysis
from ..errors import BadInputError, OnnxPruneError
from .settings import SearchSettings
from .cost import CostModel, layer_variants
from .probes import probe_model

FORMAT = "onnxprune-latency-table"
VERSION = 1
#: a narrower width is kept as a step only if it measures at least this much faster than every wider one
STEP_GAIN = 0.01


@dataclass
class LatencyTable:
    """Measured milliseconds: per layer its full width, per group touching it each candidate width."""

    provider: str
    threads: int | None
    model_sha256: str
    input_shapes: dict[str, list[int]]
    baseline_ms: float
    #: layer -> {"full_ms": float, "groups": {group id: {"counts": [...], "ms": [...]}}}
    layers: dict[str, dict] = field(default_factory=dict)
    #: group id -> channels of every group, to check the table belongs to the same analysis
    groups: dict[int, int] = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    #: layers whose probe could not be built or run, with the reason (their time is in the scale)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {"format": FORMAT, "version": VERSION, "provider": self.provider, "threads": self.threads,
                "model_sha256": self.model_sha256, "input_shapes": self.input_shapes,
                "baseline_ms": self.baseline_ms, "environment": self.environment,
                "groups": {str(k): v for k, v in self.groups.items()}, "layers": self.layers,
                "skipped": self.skipped}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise BadInputError(f"{path}: latency table not found") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInputError(f"{path}: not a readable latency table ({type(exc).__name__})") from exc
        except RecursionError as exc:
            raise BadInputError(f"{path}: not a readable latency table (JSON nested too deeply)") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BadInputError(f"{path}: not an onnxprune latency table (write one with 'onnxprune profile')")
        if data.get("version") != VERSION:
            raise BadInputError(f"{path}: latency table version {data.get('version')} is not supported "
                                f"(this onnxprune reads version {VERSION})")
        try:
            layers = {name: {"full_ms": float(entry["full_ms"]),
                             "groups": {int(g): {"counts": [int(c) for c in curve["counts"]],
                                                 "ms": [float(m) for m in curve["ms"]]}
                                        for g, curve in entry["groups"].items()}}
                      for name, entry in data["layers"].items()}
            return cls(str(data["provider"]), data.get("threads"), str(data["model_sha256"]),
                       {str(k): [int(d) for d in v] for k, v in data.get("input_shapes", {}).items()},
                       float(data["baseline_ms"]), layers, {int(k): int(v) for k, v in data["groups"].items()},
                       dict(data.get("environment", {})), {str(k): str(v) for k, v in data.get("skipped", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInputError(f"{path}: malformed latency table ({type(exc).__name__}: {exc})") from exc

    def check_matches(self, analysis: Analysis, model_sha256: str) -> None:
        """Refuse a table measured for another model (or another analysis of it)."""
        if model_sha256 != self.model_sha256:
            raise BadInputError("the latency table was profiled for a different model "
                                f"(sha256 {self.model_sha256[:12]}…, this model {model_sha256[:12]}…)")
        ours = {g.id: g.channels for g in analysis.groups}
        if ours != self.groups:
            raise BadInputError("the latency table's channel groups differ from this model's analysis "
                                "(profile it again with this version of onnxprune)")

    def cost_model(self, analysis: Analysis, round_to: int = 1) -> CostModel:
        """The latency model: measured curves, steps where a width measurably pays, scaled to the
        measured baseline."""
        full = {name: entry["full_ms"] for name, entry in self.layers.items()}
        curves: dict[str, dict[int, dict[int, float]]] = {}
        sums: dict[int, dict[int, float]] = {}
        prunable = {g.id for g in analysis.prunable_groups}  # --prune may keep some whole
        for name, entry in self.layers.items():
            curves[name] = {}
            for g, curve in entry["groups"].items():
                if g not in prunable:
                    continue
                base = entry["full_ms"] or 1.0
                curves[name][g] = {c: ms / base for c, ms in zip(curve["counts"], curve["ms"])}
                per = sums.setdefault(g, {})
                for c, ms in zip(curve["counts"], curve["ms"]):
                    per[c] = per.get(c, 0.0) + ms - entry["full_ms"]
        steps = {}
        for g in analysis.prunable_groups:
            total = g.channels
            widths = [total]
            if round_to > 1:
                allowed = [c for c in sorted(sums.get(g.id, {}), reverse=True) if c % round_to == 0]
            else:
                allowed = sorted(sums.get(g.id, {}), reverse=True)
            best = 0.0  # change vs full width, ms (negative: faster)
            scale_ms = sum(self.layers[n]["full_ms"] for n in self.layers if g.id in self.layers[n]["groups"])
            for c in allowed:
                delta = sums[g.id][c]
                if delta < best - STEP_GAIN * scale_ms:
                    widths.append(c)
                    best = delta
            steps[g.id] = widths
        layers_sum = sum(full.values())
        scale = self.baseline_ms / layers_sum if layers_sum > 0 else 1.0
        return CostModel("latency", "ms", full, curves, steps, scale, 0.0)


def layer_shapes(graph, analysis: Analysis, feeds: dict[str, np.ndarray], threads: int | None) -> dict[str, tuple]:
    """Each modelled layer's concrete input and output shapes, from one run on ``feeds``."""
    from ..runtime.capture import capture_session, run_captures
    from .probes import layer_nodes

    nodes = layer_nodes(analysis)
    names = sorted({n.inputs[0].name for n in nodes.values()} | {n.outputs[0].name for n in nodes.values()})
    if not names:
        return {}
    session = capture_session(graph, names, threads)
    captured = next(run_captures(session, [feeds]))
    return {name: (list(captured[n.inputs[0].name].shape), list(captured[n.outputs[0].name].shape))
            for name, n in nodes.items()}


def profile(graph, analysis: Analysis, opset: int, baseline_ms: float, settings: SearchSettings,
            progress: Callable[[int, int], None] | None = None) -> LatencyTable:
    """Time every modelled layer at every candidate width (see the module docstring), on
    ``settings.feeds`` with ``settings.provider`` and ``threads``, widths of ``round_to``."""
    from ..runtime.session import onnxruntime

    feeds, model_sha256 = settings.feeds, settings.model_sha256
    provider, threads, round_to = settings.provider, settings.threads, settings.round_to

    shapes = layer_shapes(graph, analysis, feeds, threads)
    full, variants, _ = layer_variants(analysis, shapes, round_to)
    table = LatencyTable(provider, threads, model_sha256, {k: list(v.shape) for k, v in feeds.items()},
                         baseline_ms, groups={g.id: g.channels for g in analysis.groups},
                         environment={"onnxruntime": onnxruntime().__version__, "cpus": os.cpu_count(),
                                      "machine": platform.machine(), "processor": platform.processor()})
    from ..report.progress import Progress

    with Progress("profiling layers", len(full)) as bar:
        for index, (name, spec) in enumerate(full.items()):
            try:
                table.layers[name] = _time_layer(spec, variants[name], opset, provider, threads)
            except OnnxPruneError:
                raise
            except Exception as exc:  # a probe ONNX Runtime cannot build or run: leave the layer unmodelled
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                table.skipped[name] = f"{type(exc).__name__}: {first}"[:300]
            bar.advance()
            if progress:
                progress(index + 1, len(full))
    return table


def _time_layer(spec, variants: dict, opset: int, provider: str, threads: int | None) -> dict:
    """One layer at full width and at every candidate width of each group, interleaved."""
    from ..runtime.session import make_runner
    from ..runtime.timing import interleaved

    configs = [("full", None, spec)] + [(g, c, s) for g, per in variants.items() for c, s in per.items()]
    unique: dict[str, int] = {}
    runners = []
    keys = []
    for _, _, s in configs:
        key = repr((s.x_shape, s.w_shape, sorted(s.attrs.items()), s.has_bias))
        if key not in unique:
            unique[key] = len(runners)
            runners.append((key, make_runner(probe_model(s, opset).SerializeToString(), provider, threads)))
        keys.append(unique[key])
    runs = _runs_per_round(runners[0][1])
    timings = interleaved(runners, warmup=2, runs_per_round=runs, min_rounds=3, max_rounds=9,
                          min_seconds=0.0, stable_within=0.03, progress=False)
    ms = [float(np.median(t.round_medians_ms)) for t in timings]
    entry: dict = {"full_ms": ms[keys[0]], "groups": {}}
    for (g, c, _), k in zip(configs[1:], keys[1:]):
        curve = entry["groups"].setdefault(g, {"counts": [], "ms": []})
        curve["counts"].append(c)
        curve["ms"].append(ms[k])
    return entry


def _runs_per_round(runner, target_ms: float = 2.0) -> int:
    """Enough runs that a round of the widest variant takes about ``target_ms``."""
    import time

    runner.run()
    t0 = time.perf_counter()
    runner.run()
    elapsed = (time.perf_counter() - t0) * 1000.0
    return int(min(20, max(1, round(target_ms / max(elapsed, 1e-3)))))


def profile_model(path: str | os.PathLike, provider: str = "cpu", threads: int | None = None,
                  input_shapes: dict[str, list[int]] | None = None, round_to: int = 1,
                  progress: Callable[[int, int], None] | None = None) -> LatencyTable:
    """``onnxprune profile``: load, analyze, measure the baseline, time every layer's widths."""
    from ..analysis import analyze_graph
    from ..io import check_opset, load_model, model_fingerprint
    from ..ops.registry import runtime_extensions
    from ..normalize import normalize
    from ..runtime.session import make_runner
    from ..runtime.timing import interleaved

    model = load_model(path, runtime_extensions())
    opset = check_opset(model)
    graph = normalize(model)
    analysis = analyze_graph(graph, opset)
    original = make_runner(model.SerializeToString(), provider, threads, input_shapes or {})
    baseline = interleaved([("original", original)], min_seconds=1.0, max_rounds=30)[0].percentile(50)
    settings = SearchSettings(round_to=round_to, provider=provider, threads=threads, input_shapes=input_shapes,
                              feeds=original.feeds, model_sha256=model_fingerprint(model))
    return profile(graph, analysis, opset, baseline, settings, progress)
