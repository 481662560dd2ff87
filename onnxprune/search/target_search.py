"""The target search: allocate by importance per unit of cost, verify end to end, choose.

Latency measured here: a fixed *ladder* of candidates, the allocations (importance per unit of
FLOPs, widths on the latency steps of ``cost.candidate_counts``) at FLOPs budgets of
:data:`LADDER`, so the same inputs, settings and calibration data always give the same
candidates, whatever the clock says. The least-pruned candidate that meets the target is found
by bisection over the ladder (at most :data:`MAX_MEASURED` candidates measured); each is timed
side by side with the original, interleaved in the same rounds (``runtime.timing``), and meets
the target when the upper end of its measured interval (the 95% confidence interval of its
median round median, ``Timing.median_interval``) is at most the target, so noise that does not
straddle the target cannot change the choice. The figures reported (summary, JSON, HTML) are that one
interleaved measurement of the chosen candidate. A result measured under
:data:`OVER_PRUNED_BELOW` of the target is reported as over-pruned; with calibration data the
accuracy guard (``search.guard``) may prefer the uniform allocation of the same cost.

FLOPs and params targets are counted exactly on the rewritten model. With a latency table from
another device nothing can be measured here: the result is the table's prediction, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..analysis import Analysis
from ..errors import OnnxPruneError
from ..io import has_external_values
from ..metrics import count_flops, count_flops_at, count_params
from ..selection import Selection, select_by_counts
from .allocate import allocate, allocate_uniform, greedy_path, importance_curves
from .cost import CostModel, channel_block, counted_model, latency_steps, static_layer_shapes, uniform_curve
from .settings import SearchProblem, SearchSettings
from .targets import Target

#: end-to-end corrections of a counted (FLOPs, params) search before giving up
MAX_ITERATIONS = 8
#: a table's prediction is asked to sit this much under the target
FIRST_MARGIN = 0.97
#: the candidate ladder: FLOPs budgets as fractions of the original's, least pruned first
LADDER = tuple(round(1.0 - 0.05 * i, 2) for i in range(1, 20))  # 0.95 ... 0.05
#: at most this many candidates are timed by the bisection (enough for the whole ladder)
MAX_MEASURED = 5
assert len(LADDER) < 2 ** MAX_MEASURED
#: a timing round of a fast model runs it enough times to take about this many ms
ROUND_MS = 2.0
#: at most this many one-step widenings of the chosen rung are timed (see ``_widen``)
MAX_WIDEN = 3
#: a result measured under this fraction of the target is reported as over-pruned
OVER_PRUNED_BELOW = 0.8


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
    #: measured far under the target (see OVER_PRUNED_BELOW)
    over_pruned: bool = False
    #: the accuracy guard's comparison (``search.guard``), with calibration data
    fidelity_check: dict | None = None
    #: what the candidates were timed as: "pruned", or "quantized" (``--quantize``: the model that ships)
    shipped: str = "pruned"
    #: with residual blocks (``search.blocks``): each block set that met the target, with its cosine
    block_sets: list[dict] = field(default_factory=list)

    def as_report(self) -> dict:
        return {"target": {"kind": self.target.kind, "value": self.target.value, "fraction": self.target.fraction},
                "status": self.status, "baseline": self.baseline, "achieved": self.achieved,
                "counts": {str(k): v for k, v in sorted(self.counts.items())}, "iterations": self.iterations,
                "measurement": self.measurement, "curve": self.curve, "seconds": round(self.seconds, 3),
                "over_pruned": self.over_pruned, "fidelity_check": self.fidelity_check, "timed_as": self.shipped,
                "block_sets": self.block_sets}


@dataclass
class Candidate:
    """One rung of the ladder: the allocation at a FLOPs budget, and what was measured of it."""

    #: the FLOPs budget, as a fraction of the original's
    level: float
    counts: dict[int, int]
    #: the counted model's FLOPs for ``counts``
    flops: float
    #: "ladder" (importance per unit of FLOPs), "widened" (``_widen``) or "uniform" (the guard's)
    kind: str = "ladder"
    selection: Selection | None = None
    measurement: dict | None = None
    model_bytes: bytes | None = field(default=None, repr=False)

    def kept_fraction(self, analysis: Analysis) -> float:
        total = sum(g.channels for g in analysis.prunable_groups) or 1
        return sum(self.counts.get(g.id, g.channels) for g in analysis.prunable_groups) / total

    def as_iteration(self) -> dict:
        m = self.measurement
        return {"kind": self.kind, "counts": {str(g): c for g, c in sorted(self.counts.items())},
                "flops_budget": self.level, "predicted": self.flops,
                "achieved": m["pruned"]["p50_ms"], "original_ms": m["original"]["p50_ms"],
                "interval_ms": m["pruned"]["median_ci_ms"],
                "decided_on_ms": m["decided_on_ms"], "meets": m["meets"]}


class Trials:
    """Builds pruned variants of one normalized graph without touching it: each trial is one
    ``apply`` of the analysis' frozen plan to a copy, then serialized (no re-analysis)."""

    def __init__(self, graph: gs.Graph, analysis: Analysis, opset: int, template: onnx.ModelProto,
                 blocks: frozenset = frozenset()):
        self._graph = graph
        self._plan = analysis.plan
        self._ir_version = max(template.ir_version, 4)
        #: the residual blocks every trial removes (the selections it builds carry them)
        self.blocks = frozenset(blocks)
        #: weights left in their files: trials are run as graphs, never serialized (see ``build``)
        self.by_reference = has_external_values(graph)
        self._template = template

    def original(self) -> bytes | gs.Graph:
        """The unpruned model to compare trials with, in the form ``build`` gives them."""
        return self._graph if self.by_reference else self._template.SerializeToString()

    def build(self, selection: Selection) -> tuple[gs.Graph, bytes | gs.Graph]:
        """The trial's graph, and its model to run: serialized, or (a model left in its files,
        too large for one protobuf) the graph itself, run with its weights by reference and
        its sliced weights read from the input's file only while a session runs it."""
        from ..rewrite import apply

        selection.blocks = set(self.blocks)
        pruned = apply(self._plan, selection.removed, self._graph, self.blocks)
        if self.by_reference:
            return pruned, pruned
        model = gs.export_onnx(pruned, do_type_check=False)
        model.ir_version = self._ir_version
        return pruned, model.SerializeToString()

    def io_cuts(self, selection: Selection | None) -> dict:
        """The graph inputs/outputs the selection resizes (``Plan.io_cuts``: KV-cache I/O)."""
        return {} if selection is None else self._plan.io_cuts(selection.removed)

    def build_bytes(self, candidate: Candidate, analysis: Analysis, scores: dict[int, np.ndarray]) -> bytes:
        """The candidate's pruned model (its selection is kept on it)."""
        if candidate.model_bytes is None:
            candidate.selection = select_by_counts(analysis, scores, candidate.counts)
            candidate.model_bytes = self.build(candidate.selection)[1]
        return candidate.model_bytes


def search_counted(problem: SearchProblem, target: Target, settings: SearchSettings) -> SearchResult:
    """FLOPs or params target: allocate on the counted model, count the rewritten model exactly
    (and with calibration data, the accuracy guard of ``search.guard``). FLOPs are counted at
    ``settings.flop_shapes`` (:func:`count_flops_at`), as the summary counts them, so "met" is
    judged on the figures the user sees."""
    analysis, graph, opset, template, scores = (problem.analysis, problem.graph, problem.opset, problem.template,
                                                problem.scores)
    round_to, calibration, flop_shapes = settings.round_to, problem.calibration, settings.flop_shapes
    start = time.perf_counter()
    count = (lambda g: count_flops_at(g, flop_shapes).flops) if target.kind == "flops" else count_params
    baseline = float(count(graph))
    goal = target.absolute(baseline)
    result = SearchResult(target, "already_met", baseline, baseline)
    if baseline <= goal:
        return result
    trials = Trials(graph, analysis, opset, template, problem.blocks)
    rest = float(count(trials.build(Selection())[0])) if problem.blocks else baseline  # blocks removed
    if rest <= goal:  # the blocks alone meet it
        result.status, result.achieved, result.selection = "met", rest, Selection(blocks=set(problem.blocks))
        result.iterations.append({"budget": goal, "predicted": rest, "achieved": rest})
        result.seconds = time.perf_counter() - start
        return result
    shapes = kept_layer_shapes(analysis, static_layer_shapes(analysis, flop_shapes if target.kind == "flops" else None),
                               problem.blocks)
    model = counted_model(analysis, shapes, target.kind, rest, round_to)
    result.curve = uniform_curve(model)
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
            if calibration is not None:
                _guard_counted(result, model, trials, analysis, scores, template, calibration, count, goal)
            result.seconds = time.perf_counter() - start
            return result
        if not plan.met:
            break
        budget *= goal / achieved
    raise TargetUnreachable(f"{target.kind} target {_human(goal)} is out of reach: the most pruning allowed "
                            f"gives {_human(best[0])} (original {_human(baseline)})"
                            + (f" with {len(problem.blocks)} residual block(s) removed" if problem.blocks else ""))


def kept_layer_shapes(analysis: Analysis, shapes: dict[str, tuple], blocks: frozenset) -> dict[str, tuple]:
    """``shapes`` without the layers of the residual blocks ``blocks`` (removed, they cost nothing
    and their widths buy nothing: the cost model leaves them out)."""
    gone = {name for b in analysis.blocks if b.id in blocks for name in b.nodes}
    return {name: s for name, s in shapes.items() if name not in gone}


def _guard_counted(result: SearchResult, model: CostModel, trials: Trials, analysis: Analysis,
                   scores: dict[int, np.ndarray], template: onnx.ModelProto, calibration, count, goal: float) -> None:
    """The accuracy guard for a counted target: the uniform allocation that also meets it."""
    chosen = trials.build(result.selection)[1]
    plan = allocate_uniform(model, goal)
    uniform = select_by_counts(analysis, scores, plan.counts) if plan.met and plan.counts != result.counts else None
    built = trials.build(uniform) if uniform is not None else None

    def acceptable(check: dict) -> bool:
        check["alternative"]["achieved"] = float(count(built[0]))
        return check["alternative"]["achieved"] <= goal

    result.fidelity_check = fidelity_guard(trials.original(), chosen, built[1] if built else None, calibration, None,
                                           acceptable, (trials.io_cuts(result.selection), trials.io_cuts(uniform)))
    if result.fidelity_check["switched"]:
        result.achieved = result.fidelity_check["alternative"]["achieved"]
        result.counts, result.selection = plan.counts, uniform


def search_latency(problem: SearchProblem, target: Target, settings: SearchSettings) -> SearchResult:
    """Latency target, measured on ``settings.provider`` (see the module docstring), or predicted
    by ``settings.table``. Inputs are ``settings.feeds`` or random ones of ``input_shapes``."""
    analysis, graph, opset, template, scores = (problem.analysis, problem.graph, problem.opset, problem.template,
                                                problem.scores)
    provider, threads, round_to, table, log = (settings.provider, settings.threads, settings.round_to,
                                               settings.table, settings.log)
    input_shapes, feeds, model_sha256, calibration = (settings.input_shapes, settings.feeds, settings.model_sha256,
                                                      problem.calibration)
    from ..runtime.session import make_runner
    from ..runtime.timing import interleaved

    log = log or (lambda message: None)
    start = time.perf_counter()
    if table is not None:
        return _predict_latency(analysis, scores, target, model_sha256, round_to, table, start)
    goal = target.value
    original = make_runner(template.SerializeToString(), provider, threads, input_shapes, feeds=feeds)
    base = interleaved([("original", original)], min_seconds=1.0, max_rounds=30)[0]
    upper = base.median_interval()[1]
    log(f"baseline p50 {base.percentile(50):.3f} ms on {provider} (round medians up to {upper:.3f} ms)")
    result = SearchResult(target, "already_met", base.percentile(50), base.percentile(50))
    result.shipped = "quantized" if settings.ship is not None else "pruned"
    if upper <= goal and settings.ship is None:
        result.measurement = {"original": base.summary(), "decided_on_ms": upper}
        return result
    runs_per_round = int(min(50, max(5, round(ROUND_MS / max(base.percentile(50), 1e-3)))))
    if settings.ship is not None and _met_unpruned(result, template, original, settings, goal, runs_per_round, log):
        result.seconds = time.perf_counter() - start
        return result
    trials = Trials(graph, analysis, opset, template, problem.blocks)
    flops_model, ladder = flops_ladder(analysis, graph, scores, round_to, channel_block(provider), problem.blocks)

    timed: dict[tuple, dict] = {}  # a candidate met again (a widening back to a rung) is not timed again

    def measure(candidate: Candidate) -> dict:
        key = tuple(sorted(candidate.counts.items()))
        if candidate.measurement is None and key in timed:
            candidate.measurement = timed[key]
        if candidate.measurement is None:
            model_bytes = trials.build_bytes(candidate, analysis, scores)
            if settings.ship is not None:
                model_bytes = settings.ship(model_bytes, trials.io_cuts(candidate.selection))
            pruned = make_runner(model_bytes, provider, threads, feeds=original.feeds)
            candidate.measurement = _measure_pair(original, pruned, goal, runs_per_round)
            m = candidate.measurement
            log(f"  {candidate.kind} at {candidate.flops:.4g} FLOPs: p50 {m['pruned']['p50_ms']:.3f} ms (95% up to "
                f"{m['decided_on_ms']:.3f} ms), the original {m['original']['p50_ms']:.3f} ms in the same rounds: "
                + ("meets" if m["meets"] else "misses") + " the target")
            result.iterations.append(candidate.as_iteration())
            timed[key] = candidate.measurement
        return candidate.measurement

    ladder = _blocks_alone(problem, flops_model, measure) or ladder
    if not ladder:
        raise TargetUnreachable(f"latency target {goal:g} ms is out of reach on {provider}: no prunable group "
                                f"has a narrower width to try (original {base.percentile(50):.3f} ms)"
                                + (f", {len(problem.blocks)} residual block(s) removed" if problem.blocks else ""))
    chosen = _least_pruned_meeting(ladder, measure)
    if chosen is None:
        best = min((c for c in ladder if c.measurement), key=lambda c: c.measurement["pruned"]["p50_ms"])
        m = best.measurement
        raise TargetUnreachable(f"latency target {goal:g} ms is out of reach on {provider}: the best measured is "
                                f"{m['pruned']['p50_ms']:.3f} ms, 95% interval up to {m['decided_on_ms']:.3f} ms "
                                f"(original {m['original']['p50_ms']:.3f} ms in the same rounds)")
    chosen = _widen(chosen, flops_model, scores, measure)
    if calibration is not None:
        chosen, result.fidelity_check = _guard_latency(chosen, flops_model, trials, analysis, scores, template,
                                                       calibration, threads, measure)
    if chosen.selection is None:  # met as a rung timed before, never built under this name
        chosen.selection = select_by_counts(analysis, scores, chosen.counts)
    m = chosen.measurement
    result.status, result.counts, result.selection = "met", chosen.counts, chosen.selection
    result.baseline, result.achieved, result.measurement = m["original"]["p50_ms"], m["pruned"]["p50_ms"], m
    result.over_pruned = result.achieved < OVER_PRUNED_BELOW * goal
    result.curve = [{"kept": c.kept_fraction(analysis), "measured": c.measurement["pruned"]["p50_ms"]}
                    for c in ladder if c.measurement]
    result.seconds = time.perf_counter() - start
    return result


def _blocks_alone(problem: SearchProblem, model: CostModel, measure: Callable[[Candidate], dict]) -> list[Candidate]:
    """With residual blocks removed by every candidate, the one that cuts no channel, as the only
    rung where it meets the target already; else none."""
    if not problem.blocks:
        return []
    alone = Candidate(1.0, {}, model.total({}), kind="blocks")
    return [alone] if measure(alone)["meets"] else []


def _met_unpruned(result: SearchResult, template: onnx.ModelProto, original, settings: SearchSettings, goal: float,
                  runs_per_round: int, log: Callable[[str], None]) -> bool:
    """With a model that ships transformed (quantized), the unpruned model transformed is the
    first candidate: where it meets the target, nothing is pruned (status ``met``, no counts)."""
    from ..runtime.session import make_runner

    shipped = make_runner(settings.ship(template.SerializeToString(), {}), settings.provider, settings.threads,
                          feeds=original.feeds)
    m = _measure_pair(original, shipped, goal, runs_per_round)
    log(f"  unpruned, {result.shipped}: p50 {m['pruned']['p50_ms']:.3f} ms (95% up to {m['decided_on_ms']:.3f} ms), "
        f"the original {m['original']['p50_ms']:.3f} ms in the same rounds: " + ("meets" if m["meets"] else "misses")
        + " the target")
    result.iterations.append({"kind": "unpruned", "counts": {}, "flops_budget": 1.0, "predicted": None,
                              "achieved": m["pruned"]["p50_ms"], "original_ms": m["original"]["p50_ms"],
                              "interval_ms": m["pruned"]["median_ci_ms"], "decided_on_ms": m["decided_on_ms"],
                              "meets": m["meets"]})
    if not m["meets"]:
        return False
    result.status, result.measurement = "met", m
    result.baseline, result.achieved = m["original"]["p50_ms"], m["pruned"]["p50_ms"]
    return True  # never over-pruned: nothing was pruned


def _predict_latency(analysis: Analysis, scores: dict[int, np.ndarray], target: Target, model_sha256: str,
                     round_to: int, table, start: float) -> SearchResult:
    """A latency table from the target device: allocate on its prediction, measure nothing."""
    goal = target.value
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


def flops_ladder(analysis: Analysis, graph: gs.Graph, scores: dict[int, np.ndarray], round_to: int = 1,
                 block: int = 8, blocks: frozenset = frozenset()) -> tuple[CostModel, list[Candidate]]:
    """The candidates, least pruned first: one allocation per FLOPs budget of :data:`LADDER`
    (identical allocations once), widths on the kernels' blocks (``cost.latency_steps``);
    deterministic. Params stand in for FLOPs where none can be counted (shapes unknown). With
    ``blocks`` (residual blocks every candidate removes) the budgets are fractions of the model
    without them, whose layers the cost model leaves out."""
    if blocks:
        from ..rewrite import apply

        graph = apply(analysis.plan, set(), graph, blocks)
    kind, baseline = "flops", float(count_flops(graph))
    if baseline <= 0:
        kind, baseline = "params", float(count_params(graph))
    model = counted_model(analysis, kept_layer_shapes(analysis, static_layer_shapes(analysis), blocks), kind,
                          baseline, round_to, steps_of=lambda channels: latency_steps(channels, round_to, block))
    ladder: list[Candidate] = []
    next_level = 0  # each level of LADDER takes the first state of the greedy walk at or under it
    for counts, total in greedy_path(model, scores):
        if all(c == model.steps[g][0] for g, c in counts.items()):
            continue  # the original is no candidate
        for _ in range(len(LADDER) - next_level):
            if total > LADDER[next_level] * baseline:
                break
            if not ladder or ladder[-1].counts != counts:
                ladder.append(Candidate(LADDER[next_level], counts, model.total(counts)))
            next_level += 1
        if next_level == len(LADDER):
            break
    return model, ladder


def _least_pruned_meeting(ladder: list[Candidate], measure: Callable[[Candidate], dict]) -> Candidate | None:
    """Bisection over the ladder's indices for the first candidate that meets the target (the
    ladder is ordered by pruning, so latency falls along it); at most MAX_MEASURED measurements."""
    lo, hi = -1, len(ladder)  # ladder[lo] misses (the original), ladder[hi] meets (a sentinel)
    for _ in range(MAX_MEASURED):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        if measure(ladder[mid])["meets"]:
            hi = mid
        else:
            lo = mid
    return ladder[hi] if hi < len(ladder) and ladder[hi].measurement and ladder[hi].measurement["meets"] else None


def _widen(chosen: Candidate, model: CostModel, scores: dict[int, np.ndarray],
           measure: Callable[[Candidate], dict]) -> Candidate:
    """Give back what the target does not need: the ladder moves one group at a time in the
    greedy's order, so its first rung that meets the target may have cut a group that buys
    little time. In a fixed order (the groups whose cut lost the most importance first, then by
    id), each cut group is widened by one step and kept wider if that still meets the target; at
    most :data:`MAX_WIDEN` candidates timed."""
    lost = importance_curves(scores, model.steps)

    def importance_lost(g: int) -> float:
        return float(lost[g][model.steps[g][0] - chosen.counts[g]])

    cut = sorted((g for g, c in chosen.counts.items() if c < model.steps[g][0]),
                 key=lambda g: (-importance_lost(g), g))
    current = chosen
    for g in cut[:MAX_WIDEN]:
        widths = model.steps[g]
        counts = {**current.counts, g: widths[widths.index(current.counts[g]) - 1]}
        wider = Candidate(current.level, counts, model.total(counts), kind="widened")
        if measure(wider)["meets"]:
            current = wider
    return current


def _measure_pair(original, pruned, goal: float, runs_per_round: int = 5) -> dict:
    """The original and a candidate timed side by side: summaries, ratio, and the decision."""
    from ..runtime.timing import interleaved, ratios

    orig_t, pruned_t = interleaved([("original", original), ("pruned", pruned)], runs_per_round=runs_per_round,
                                   min_rounds=10, min_seconds=2.0, max_rounds=40)
    upper = pruned_t.median_interval()[1]
    return {"original": orig_t.summary(), "pruned": pruned_t.summary(), "ratio": ratios(orig_t, pruned_t),
            "decided_on_ms": upper, "meets": upper <= goal}


def _guard_latency(chosen: Candidate, flops_model: CostModel, trials: Trials, analysis: Analysis,
                   scores: dict[int, np.ndarray], template: onnx.ModelProto, calibration, threads: int | None,
                   measure: Callable[[Candidate], dict]) -> tuple[Candidate, dict]:
    """The accuracy guard (``search.guard``): the uniform allocation of the same FLOPs replaces
    the chosen candidate when the chosen one's fidelity collapses and the uniform one is nearly
    as fast (measured) and meets the target."""
    from .guard import nearly_as_fast

    plan = allocate_uniform(flops_model, chosen.flops)
    uniform = Candidate(chosen.level, plan.counts, plan.predicted, kind="uniform")
    differs = plan.met and plan.counts != chosen.counts

    def acceptable(check: dict) -> bool:
        m = measure(uniform)
        check["alternative"]["p50_ms"] = m["pruned"]["p50_ms"]
        return m["meets"] and nearly_as_fast(m["pruned"]["p50_ms"], chosen.measurement["pruned"]["p50_ms"])

    check = fidelity_guard(template, trials.build_bytes(chosen, analysis, scores),
                           trials.build_bytes(uniform, analysis, scores) if differs else None,
                           calibration, threads, acceptable,
                           (trials.io_cuts(chosen.selection), trials.io_cuts(uniform.selection if differs else None)))
    return (uniform if check["switched"] else chosen), check


def fidelity_guard(template: onnx.ModelProto | bytes | gs.Graph, chosen: bytes | gs.Graph,
                   alternative: bytes | gs.Graph | None, calibration, threads: int | None,
                   acceptable: Callable[[dict], bool], io_cuts: tuple = ({}, {})) -> dict:
    """Both candidates' fidelity before reconstruction; ``switched`` when the chosen one's
    collapsed against the alternative's (``search.guard.collapses``) and ``acceptable`` (whether
    the alternative meets the target, nearly as fast) says yes."""
    from .guard import candidate_fidelity, collapses

    original = template.SerializeToString() if isinstance(template, onnx.ModelProto) else template
    fid = candidate_fidelity(original, chosen, calibration, threads, io_cuts=io_cuts[0])
    check = {"chosen": {"kind": "importance", "cosine": fid["cosine"]}, "alternative": None, "collapsed": False,
             "switched": False}
    if alternative is None:
        return check
    alt = candidate_fidelity(original, alternative, calibration, threads, io_cuts=io_cuts[1])
    check["alternative"] = {"kind": "uniform", "cosine": alt["cosine"]}
    check["collapsed"] = collapses(fid["cosine"], alt["cosine"])
    check["switched"] = check["collapsed"] and acceptable(check)
    return check


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.4g}"


__all__ = ["CostModel", "SearchProblem", "SearchResult", "SearchSettings", "TargetUnreachable", "search_counted",
           "search_latency"]
