"""The target search: allocate by importance per unit of cost, verify end to end, correct.

For latency, the cost model comes from a latency table (measured here, or read from a table
profiled on the target device). Each iteration allocates widths within a budget, builds the
pruned model, and times it side by side with the original on the chosen provider (its latency
is the baseline times the per-round latency ratio, so load changing during the search does not
decide the outcome); while that is over the target, or well under it (pruned more than needed), the model is refit
to the measurements so far (a line through (predicted layer time, measured p50) pairs,
NetAdapt-style) and the allocation is redone; the least pruning measured to meet the target wins. FLOPs and params targets are counted exactly on the rewritten
model the same way. With a table from another device nothing can be measured here: the result
is the model's prediction, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..analysis import Analysis, analyze_graph
from ..errors import OnnxPruneError
from ..io import copy_model_fields
from ..metrics import count_flops, count_params
from ..selection import Selection, select_by_counts
from .allocate import allocate
from .cost import CostModel, counted_model, static_layer_shapes, uniform_curve
from .targets import Target

#: end-to-end corrections before giving up
MAX_ITERATIONS = 8
#: the first budget sits this much under the target, so that small model errors need no correction
FIRST_MARGIN = 0.97
#: a result measured faster than this fraction of the target was pruned more than needed: relax
RELAX_BELOW = 0.9


class TargetUnreachable(OnnxPruneError):
    """Even the most pruning the search allows does not meet the target."""

    exit_code = 3


@dataclass
class SearchResult:
    """What the search chose and what it measured or counted on the way."""

    target: Target
    #: "met", "already_met" (nothing to do) or "predicted" (latency from a table, not measured here)
    status: str
    baseline: float
    achieved: float | None = None
    counts: dict[int, int] = field(default_factory=dict)
    selection: Selection = field(default_factory=Selection)
    #: per iteration: budget, predicted and achieved cost
    iterations: list[dict] = field(default_factory=list)
    #: the last side-by-side measurement (latency targets): bench summaries and ratio
    measurement: dict | None = None
    #: the cost model's prediction with all groups at the same kept fraction (for the report)
    curve: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def as_report(self) -> dict:
        return {"target": {"kind": self.target.kind, "value": self.target.value, "fraction": self.target.fraction},
                "status": self.status, "baseline": self.baseline, "achieved": self.achieved,
                "counts": {str(k): v for k, v in sorted(self.counts.items())}, "iterations": self.iterations,
                "measurement": self.measurement, "curve": self.curve, "seconds": round(self.seconds, 3)}


class Trials:
    """Builds pruned variants of one normalized graph without touching it."""

    def __init__(self, graph: gs.Graph, analysis: Analysis, opset: int, template: onnx.ModelProto):
        model = gs.export_onnx(graph, do_type_check=False)
        copy_model_fields(template, model)
        model.ir_version = max(template.ir_version, 4)
        self._bytes = model.SerializeToString()
        self._opset = opset
        self._ir_version = model.ir_version
        # all groups, prunable or not: --prune may have kept some whole in the caller's analysis
        self._signature = [(g.id, g.classes) for g in analysis.groups]

    def build(self, selection: Selection) -> tuple[gs.Graph, bytes]:
        from ..passes.rewrite import rewrite

        graph = gs.import_onnx(onnx.load_from_string(self._bytes))
        analysis = analyze_graph(graph, self._opset)
        if [(g.id, g.classes) for g in analysis.groups] != self._signature:
            raise OnnxPruneError("internal error: the analysis of a copy of the graph differs from the original's")
        pruned = rewrite(analysis, selection.removed)
        model = gs.export_onnx(pruned, do_type_check=False)
        model.ir_version = self._ir_version
        return pruned, model.SerializeToString()


def search_counted(analysis: Analysis, graph: gs.Graph, opset: int, template: onnx.ModelProto,
                   scores: dict[int, np.ndarray], target: Target, round_to: int = 1) -> SearchResult:
    """FLOPs or params target: allocate on the counted model, count the rewritten model exactly."""
    start = time.perf_counter()
    count = count_flops if target.kind == "flops" else count_params
    baseline = float(count(graph))
    goal = target.absolute(baseline)
    result = SearchResult(target, "already_met", baseline, baseline)
    if baseline <= goal:
        return result
    model = counted_model(analysis, static_layer_shapes(analysis), target.kind, baseline, round_to)
    result.curve = uniform_curve(model)
    trials = Trials(graph, analysis, opset, template)
    budget, best = goal, None
    for _ in range(MAX_ITERATIONS):
        plan = allocate(model, scores, budget)
        selection = select_by_counts(analysis, scores, plan.counts)
        pruned, _ = trials.build(selection)
        achieved = float(count(pruned))
        result.iterations.append({"budget": budget, "predicted": plan.predicted, "achieved": achieved})
        if best is None or achieved < best[0]:
            best = (achieved, plan.counts, selection)
        if achieved <= goal:
            result.status, result.achieved, result.counts, result.selection = "met", achieved, plan.counts, selection
            result.seconds = time.perf_counter() - start
            return result
        if not plan.met:
            break
        budget *= goal / achieved
    raise TargetUnreachable(f"{target.kind} target {_human(goal)} is out of reach: the most pruning allowed "
                            f"gives {_human(best[0])} (original {_human(baseline)})")


def search_latency(analysis: Analysis, graph: gs.Graph, opset: int, template: onnx.ModelProto,
                   scores: dict[int, np.ndarray], target: Target, model_sha256: str,
                   input_shapes: dict[str, list[int]] | None = None, feeds: dict[str, np.ndarray] | None = None,
                   provider: str = "cpu", threads: int | None = None, round_to: int = 1,
                   table=None, log: Callable[[str], None] | None = None) -> SearchResult:
    """Latency target, measured on ``provider`` (see the module docstring).

    Inputs are ``feeds`` (e.g. a calibration batch) or random ones of ``input_shapes``.
    """
    from ..runtime.session import make_runner
    from ..runtime.timing import interleaved, ratios
    from .latency_table import profile

    log = log or (lambda message: None)
    start = time.perf_counter()
    goal = target.value
    if table is not None:
        table.check_matches(analysis, model_sha256)
        model = table.cost_model(analysis, round_to)
        result = SearchResult(target, "already_met", table.baseline_ms, table.baseline_ms)
        result.curve = uniform_curve(model)
        if table.baseline_ms <= goal:
            return result
        plan = allocate(model, scores, goal * FIRST_MARGIN)
        if plan.predicted > goal:  # the margin is a wish, the target is the bound
            raise TargetUnreachable(f"latency target {goal:g} ms is out of reach on the profiled device: the most "
                                    f"pruning allowed is predicted at {plan.predicted:.3f} ms "
                                    f"(baseline {table.baseline_ms:.3f} ms)")
        result.status, result.achieved, result.counts = "predicted", plan.predicted, plan.counts
        result.selection = select_by_counts(analysis, scores, plan.counts)
        result.iterations.append({"budget": goal * FIRST_MARGIN, "predicted": plan.predicted, "achieved": None})
        result.seconds = time.perf_counter() - start
        return result

    original = make_runner(template.SerializeToString(), provider, threads, input_shapes, feeds=feeds)
    feeds = original.feeds
    base = interleaved([("original", original)], min_seconds=1.0, max_rounds=30)[0]
    baseline = base.percentile(50)
    log(f"baseline p50 {baseline:.3f} ms on {provider}")
    result = SearchResult(target, "already_met", baseline, baseline)
    if baseline <= goal:
        return result
    log("profiling layer latencies")
    table = profile(graph, analysis, opset, feeds, baseline, model_sha256, provider, threads, round_to)
    model = table.cost_model(analysis, round_to)
    trials = Trials(graph, analysis, opset, template)
    full_counts = {g: widths[0] for g, widths in model.steps.items()}
    points: list[tuple[float, float]] = []
    tried: dict[tuple, float] = {}
    budget, best, feasible = goal * FIRST_MARGIN, None, None
    from ..report.progress import track

    for _ in track(range(MAX_ITERATIONS), "searching", unit="iteration"):
        plan = allocate(model, scores, budget)
        key = tuple(sorted(plan.counts.items()))
        if key in tried:
            if tried[key] <= goal or not plan.met:
                break  # nothing new to learn: the best feasible result stands
            budget *= 0.97  # the refit model keeps choosing this: ask for a little more
            continue
        selection = select_by_counts(analysis, scores, plan.counts)
        _, pruned_bytes = trials.build(selection)
        pruned = make_runner(pruned_bytes, provider, threads, feeds=feeds)
        orig_t, pruned_t = interleaved([("original", original), ("pruned", pruned)], min_seconds=2.0, max_rounds=40)
        # the p50 the pruned model would have at the baseline's conditions: its per-round ratio to the
        # original, timed in the same rounds, times the baseline (a load change during the search
        # then moves both models alike instead of deciding the outcome)
        ratio = ratios(orig_t, pruned_t)
        achieved = tried[key] = baseline * ratio["median"]
        result.iterations.append({"budget": budget, "predicted": plan.predicted, "achieved": achieved,
                                  "pruned_ms": pruned_t.percentile(50), "original_ms": orig_t.percentile(50)})
        log(f"  budget {budget:.3f} ms: predicted {plan.predicted:.3f}, measured {achieved:.3f} ms "
            f"(p50 {pruned_t.percentile(50):.3f} ms vs the original's {orig_t.percentile(50):.3f} ms in the same "
            f"rounds: ratio {ratio['median']:.3f})")
        best = achieved if best is None else min(best, achieved)
        if achieved <= goal:
            if feasible is None or achieved > feasible[0]:  # the least pruning that meets the target
                measurement = {"original": orig_t.summary(), "pruned": pruned_t.summary(), "ratio": ratio}
                feasible = (achieved, plan.counts, selection, measurement)
            if achieved >= RELAX_BELOW * goal:
                break
        elif not plan.met:
            break  # the most pruning allowed is still too slow
        # NetAdapt-style correction, both ways: refit the model to what was measured (the original
        # and this model, timed in the same rounds) and allocate again for the target
        points += [(model.layer_sum(full_counts), baseline), (model.layer_sum(plan.counts), achieved)]
        if model.calibrate(points):
            budget = goal * FIRST_MARGIN
        else:
            budget *= goal / achieved
    result.curve = uniform_curve(model)
    if feasible is not None:
        achieved, counts, selection, measurement = feasible
        result.status, result.achieved, result.counts, result.selection = "met", achieved, counts, selection
        result.measurement = measurement
        result.seconds = time.perf_counter() - start
        return result
    raise TargetUnreachable(f"latency target {goal:g} ms is out of reach on {provider}: the best measured is "
                            f"{best:.3f} ms (original {baseline:.3f} ms)" if best is not None else
                            f"latency target {goal:g} ms is out of reach on {provider} (original {baseline:.3f} ms)")


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.4g}"


__all__ = ["CostModel", "SearchResult", "TargetUnreachable", "search_counted", "search_latency"]
