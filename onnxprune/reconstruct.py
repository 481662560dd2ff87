"""Retraining-free reconstruction of the layers that consumed removed channels.

Each consuming layer is seen as ``rows @ W + b`` (a Conv through its input patches, a Gemm or
MatMul directly). With calibration data we run the original and the pruned model side by side and
accumulate, over the rows of the pruned model's own input ``X'``, the Gram matrix ``[X',1]ᵀ[X',1]``
and its product with the original layer's output ``T = X W + b``. Then:

- ``bias``: keep the sliced weights, set the bias so the output's mean matches (the mean
  contribution of removed channels, and of any drift upstream, is folded into the bias);
- ``lstsq``: refit weights and bias by ridge-regularised least squares from those matrices;
- ``nonlinear``: ``lstsq``, then each MLP's up- and down-projections fitted together through
  their activation where that does better on held-out rows (``mlp_refit``).

Layers are processed in waves in topological order, each wave on the inputs produced by the
already-reconstructed pruned model, so errors do not compound. A wave runs only the part of each
network beyond the tensors the previous wave kept (``runtime.capture.StagedCapture``), so all
waves together cost about one forward pass of each network.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from .analysis.cache_io import cut_feeds
from .analysis.state import const
from .calibration.data import CalibrationBatch, runs_of, sample_total
from .calibration.stats import PendingRows, cross_product
from .mlp_refit import (MAX_ROW_BYTES, Activation, Params, Rows, finite, find_mlp, fit, hidden_products, params_of,
                        relative_error, replay, store_params)
from .ops import linear_view_for
from .ops.linear_view import MAX_ROWS_PER_SAMPLE, LinearView
from .report.progress import Progress
from .runtime.capture import StagedCapture

@dataclass
class LayerReport:
    node: str
    kept_inputs: int
    total_inputs: int
    error_before: float | None = None  # relative output error with sliced weights, original bias
    error_after: float | None = None
    #: which refit was kept ("current", "bias", "ridge <strength>") and its held-out error
    choice: str | None = None
    error_held_out: float | None = None
    skipped: str | None = None
    #: ``nonlinear``: the joint refit with the up-projection (what it gained, or why none)
    joint: str | None = None


@dataclass
class _Accumulator:
    g: np.ndarray
    b: np.ndarray
    s_t: np.ndarray
    s_tt: float = 0.0
    n: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    #: the original layer's weight and bias (kept outputs) in float32: the target is ``rows_o @ W + b``
    target_weight: tuple[np.ndarray, np.ndarray] | None = None
    pending: PendingRows = field(default_factory=PendingRows)  # rows whose products are not taken yet

    def add(self, rows: np.ndarray, rows_o: np.ndarray, drift: np.ndarray | None) -> None:
        """Hold one batch's rows (pruned input, original input, and the residual's drift where the
        layer has one); their products are taken in blocks of many batches."""
        self.n += rows.shape[0]
        if self.pending.add(rows, rows_o, *(() if drift is None else (drift,))):
            self.flush()

    def flush(self) -> None:
        """Add the held rows' products (float32 products per block, float64 sums across blocks)."""
        if not self.pending.rows:
            return
        rows, rows_o, *drift = self.pending.take()
        w, b = self.target_weight
        with np.errstate(all="ignore"):  # non-finite sums make the layer skip (``_solve``)
            target = rows_o @ w + b
            if drift:
                target += drift[0]
            rows = np.hstack([rows, np.ones((rows.shape[0], 1), np.float32)])
            self.g += cross_product(rows, rows)
            self.b += cross_product(rows, target)
            self.s_t += target.sum(axis=0, dtype=np.float64)
            self.s_tt += float(np.einsum("ij,ij->", target, target, dtype=np.float64))


def reconstruct(original: gs.Graph, pruned: gs.Graph, consumers: list[tuple], calibration: Iterable[dict],
                mode: str = "lstsq", ridge: float | None = None, threads: int | None = None,
                rows_per_sample: int = MAX_ROWS_PER_SAMPLE, io_cuts: dict | None = None) -> list[LayerReport]:
    """Refit ``consumers`` of ``pruned`` in place, ``rows_per_sample`` input rows per layer and
    calibration sample at most (see :meth:`LinearView.pick`). ``io_cuts`` (``Plan.io_cuts``): the
    graph inputs the pruning resized (a KV cache), cut from the calibration feeds for ``pruned``.

    Each consumer is (node name, kept inputs, total inputs, kept-output mask or None): a layer
    may also have lost output channels, and its target is then the original's kept outputs.
    """
    orig_nodes = {n.name: n for n in original.nodes}
    reports, views = [], {}
    for name, kept, total, out_mask in consumers:
        node_p = next((n for n in pruned.nodes if n.name == name), None)
        view_cls = linear_view_for(node_p) if node_p is not None else None
        report = LayerReport(name, kept, total)
        reports.append(report)
        if view_cls is None:
            report.skipped = "not a linear layer"
            continue
        vp, vo = view_cls(node_p), view_cls(orig_nodes[name], out_mask)
        why = vp.supported()
        if why:
            report.skipped = why
            continue
        views[name] = (vo, vp, report)
    if not views:
        return reports
    upstream = _upstream(pruned, list(views))
    joint = _joint_mlps(pruned, views) if mode == "nonlinear" else {}
    done: set[str] = set()
    networks = StagedCapture(original, threads), StagedCapture(pruned, threads)
    waves = _waves(pruned, list(views))
    runs: list[CalibrationBatch] = []  # the runs' chunks and sizes, once read
    strength = None  # the last ridge chosen: the next layer's walk starts there
    for number, wave in enumerate(waves, 1):
        # the residual a layer's output is added to, where it is already final in the pruned model
        residual = {n: r for n in wave if (r := _residual(views[n][0])) and upstream.get(r, set()) <= done}
        wanted = [{views[n][side].node.inputs[0].name for n in wave} | set(residual.values()) for side in (0, 1)]
        wanted[1] |= {joint[n][0].ups[0].inputs[0].name for n in wave if n in joint}
        # the joint fit's rows: MAX_ROW_BYTES for the whole wave (many experts side by side share it)
        stores = {n: Rows.empty(MAX_ROW_BYTES // max(sum(n in joint for n in wave), 1)) for n in wave if n in joint}
        # each network runs only what the wave needs beyond the cut the previous wave kept
        reads = [net.start(sorted(names)) for net, names in zip(networks, wanted)]
        source = runs_of(calibration) if any(reads) or not runs else iter(runs)
        total = sum(r.samples for r in runs) if runs else sample_total(calibration)
        with Progress(f"reconstructing: wave {number}/{len(waves)}", total, unit="sample") as bar:
            acc, runs = _gather(networks, reads, source, [(views[n], residual.get(n)) for n in wave],
                                rows_per_sample, bar, io_cuts or {},
                                {n: (stores[n], joint[n][1]) for n in stores})
        for net in networks:
            net.finish()
        done |= set(wave)
        for name in wave:
            vo, vp, report = views[name]
            # each layer's matrices are dropped once solved
            sliced = params_of(joint[name][1], vp) if name in stores else None
            strength = _solve(acc.pop(name), vp, report, pruned, mode, ridge, strength) or strength
            if name in stores and report.skipped is None and _fit_jointly(*joint[name], vp, sliced, stores.pop(name),
                                                                        report, pruned, threads):
                networks[1].reset()  # the up-projection changed: the pruned model's kept cut is stale
                for up in joint[name][0].ups:  # an up-projection refit in an earlier wave says so
                    if up.name in views and up.name != name:
                        views[up.name][2].joint = f"{views[up.name][2].joint or ''}; changed again with {name}".lstrip("; ")
    return reports


def _joint_mlps(graph: gs.Graph, views: dict) -> dict[str, tuple]:
    """Per refit layer that is an MLP's down-projection: the MLP and its up-projections' views
    (``nonlinear``); the others say in their report why they are refit alone."""
    found = {}
    for name, (_, vp, report) in views.items():
        mlp, why = find_mlp(graph, vp.node)
        if mlp is not None:
            ups = tuple(linear_view_for(up)(up) for up in mlp.ups)
            weights = [const(n.inputs[1]) for n in (*mlp.ups, vp.node)]
            if not all(v.rows_are_positions for v in (*ups, vp)):
                why = "its rows are not positions (a conv's patches)"
            elif any(w is None or w.dtype != np.float32 for w in weights):
                why = "not float32 weights"
            else:
                found[name] = (mlp, ups)
        report.joint = why
    return found


def _fit_jointly(mlp, ups: tuple[LinearView, ...], vp: LinearView, sliced, rows: Rows, report: LayerReport, graph: gs.Graph,
                 threads: int | None) -> bool:
    """Fit the MLP's two projections together; keep the result where it beats least squares on
    the held-out fold. As for the ridge strength, the choice is made on one fold (from the
    sliced weights refit there as ``_solve`` chose, against that refit) and the chosen epochs are
    then run on all rows from the refit of all. True where the layers changed."""
    fit_rows, check_rows = rows.fold(0), rows.fold(1)
    if fit_rows is None or check_rows is None:
        report.joint = (f"one batch of its rows is over the {rows.limit / 2**20:.3g} MB the joint fit may hold" if rows.dropped
                        else "too few calibration samples for a held-out fold")
        return False
    if not all(np.isfinite(a).all() for a in (*fit_rows, *check_rows)):
        report.joint = "non-finite activations in its calibration rows"
        return False
    act = Activation(graph, mlp, threads)
    start = _refit_down(sliced, fit_rows, act, report.choice)
    result = fit(start, fit_rows, check_rows, act)
    if not result.rates or not result.error < result.start_error * (1 - 1e-3):
        report.joint = f"not kept: held-out error {result.start_error:.4g}, joint {result.error:.4g}"
        return False
    rows_all = (np.concatenate([fit_rows[0], check_rows[0]]), np.concatenate([fit_rows[1], check_rows[1]]))
    lstsq = params_of(ups, vp)
    final = replay(lstsq, rows_all, act, result.rates)
    error, before = relative_error(final, *rows_all, act), relative_error(lstsq, *rows_all, act)
    if not (finite(final) and np.isfinite(error) and error <= before):
        report.joint = "not kept: the joint fit on all rows is not finite or not better"
        return False
    why = store_params(final, ups, vp, graph)
    if why:
        report.joint = f"not kept: {why}"
        return False
    report.joint = (f"with {', '.join(up.name for up in mlp.ups)}: {len(result.rates)} epochs, held-out error "
                    f"{result.start_error:.4g} -> {result.error:.4g}")
    report.choice = f"{report.choice} + joint"
    report.error_held_out, report.error_after = result.error, error
    return True


def _refit_down(params: Params, rows: tuple[np.ndarray, np.ndarray], act: Activation, choice: str | None) -> Params:
    """``params`` with the down-projection refit on ``rows`` as ``_solve`` chose for it ("ridge S":
    :func:`_ridge` toward the current weights, as nonlinear does; "bias": :func:`_bias_only`; else
    as they are): that choice made on one fold, the joint fit's fair start there."""
    if choice != "bias" and not (choice or "").startswith("ridge "):
        return params
    g, b = hidden_products(params, rows, act)
    a = _Accumulator(g, b, b[-1].copy(), n=int(round(g[-1, -1])))  # the ones column: counts and sums
    w = params.w2.astype(np.float64)
    solution = _bias_only(a, w) if choice == "bias" else \
        _ridge(a, float(choice.split()[1]), np.vstack([w, params.b2[None, :].astype(np.float64)]))
    return replace(params, w2=solution[:-1].astype(np.float32), b2=solution[-1].astype(np.float32))


def _gather(networks: tuple[StagedCapture, StagedCapture], reads: list[bool], source: Iterable[CalibrationBatch],
            layers: list[tuple], rows_per_sample: int, bar: Progress,
            io_cuts: dict, joint: dict | None = None) -> tuple[dict, list[CalibrationBatch]]:
    """One wave's Gram statistics over all runs, from both networks' captures (a run's tensors
    are dropped as soon as its layers are done); also the runs' chunks and sizes, for the next wave."""
    acc: dict[str, list[_Accumulator]] = {}
    seen = []
    for index, run in enumerate(source):
        outs_o = networks[0].capture(index, run.feeds if reads[0] else None)
        outs_p = networks[1].capture(index, cut_feeds(run.feeds, io_cuts) if reads[1] else None)
        for (vo, vp, _), r in layers:
            with np.errstate(all="ignore"):  # non-finite sums make the layer skip (``_solve``)
                kept = (joint or {}).get(vo.node.name)
                _accumulate(acc, vo.node.name, run, vo, vp, outs_o[vo.node.inputs[0].name],
                            outs_p[vp.node.inputs[0].name], None if r is None else (outs_o[r], outs_p[r]),
                            rows_per_sample, kept and (*kept, outs_p[kept[1][0].node.inputs[0].name]))
        seen.append(CalibrationBatch(run.chunk, run.samples, {}))
        del outs_o, outs_p
        bar.advance(run.samples)
    return acc, seen


#: ONNX Runtime's fused ops that add their inputs 0 and 1 (the residual and the branch) before
#: normalising the sum: a residual Add to the refit, like a plain one
SKIP_NORMS = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")


def _residual(vo: LinearView) -> str | None:
    """The tensor the layer's output (after its bias Add) is added to, if it goes straight into
    a residual Add (or the sum of ONNX Runtime's SkipLayerNormalization and
    SkipSimplifiedLayerNormalization, which add input and skip before normalising): the refit
    then also makes up for the drift of that residual, so the sum the rest of the model sees
    stays close to the original's."""
    if vo.out_mask is not None and not np.all(vo.out_mask):
        return None  # the residual lost channels too; its drift does not line up with the outputs
    out = vo.node.outputs[0]
    if len(out.outputs) == 1 and out.outputs[0].op == "Add" and any(const(t) is not None for t in out.outputs[0].inputs):
        out = out.outputs[0].outputs[0]  # the bias
    if len(out.outputs) != 1:
        return None
    add = out.outputs[0]
    if add.op in SKIP_NORMS and add.domain == "com.microsoft" and len(add.inputs) > 1 and \
            (add.inputs[0] is out) != (add.inputs[1] is out):
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    elif add.op == "Add":
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    else:
        return None
    if const(other) is not None or not other.inputs or other.shape is None or other.shape != out.shape:
        return None
    return other.name


def _accumulate(acc: dict, name: str, run, vo: LinearView, vp: LinearView, x_o: np.ndarray,
                x_p: np.ndarray, residual: tuple[np.ndarray, np.ndarray] | None = None,
                rows_per_sample: int = MAX_ROWS_PER_SAMPLE, joint: tuple | None = None) -> None:
    """Add one batch to one of two folds (alternate chunks of samples, so the split follows the
    samples, not the files they came in): one fits, the other validates.

    The target is the original layer's output, plus, with ``residual`` (its value in the original
    and the pruned model), how far the residual it is added to has drifted. With ``joint`` (a
    :class:`Rows`, the MLP's up-projection view and its input in the pruned model) the rows of
    that input and the targets are also kept, for the joint refit."""
    folds = acc.get(name)
    if folds is None:
        w_o, b_o = vo.target_weight()
        weight = w_o.astype(np.float32), b_o.astype(np.float32)
        k = vp.weight().shape[0] + 1
        folds = acc[name] = [_Accumulator(np.zeros((k, k)), np.zeros((k, w_o.shape[1])), np.zeros(w_o.shape[1]),
                                          target_weight=weight) for _ in range(2)]
    a = folds[run.chunk % 2]
    pick = vp.pick(x_p, a.rng, run.samples, rows_per_sample)
    rows_o = vo.rows(x_o, pick).astype(np.float32, copy=False)
    drift = None
    if residual is not None:  # a layer with a residual holds a drift for every batch (zero where none)
        m = a.target_weight[0].shape[1]
        drift = np.zeros((rows_o.shape[0], m), np.float32)
        if residual[0].shape == residual[1].shape:
            d = vo.out_rows(residual[0], pick) - vo.out_rows(residual[1], pick)
            if d.shape == drift.shape:
                drift = d.astype(np.float32, copy=False)
    if joint is not None:
        rows, ups, x_up = joint
        x_rows = ups[0].rows(x_up, pick)
        if x_rows.shape[0] == rows_o.shape[0]:
            target = rows_o @ a.target_weight[0] + a.target_weight[1]
            rows.add(run.chunk % 2, x_rows, target if drift is None else target + drift)
    a.add(vp.rows(x_p, pick).astype(np.float32, copy=False), rows_o, drift)


def _merge_into_first(folds: list[_Accumulator]) -> _Accumulator:
    """Both folds' sums, added into the first in place (the second's matrices go): a Gram
    matrix thousands wide is never held three times."""
    a, b = folds
    if b.n:
        a.g += b.g
        a.b += b.b
        a.s_t = a.s_t + b.s_t
        a.s_tt, a.n = a.s_tt + b.s_tt, a.n + b.n
    b.g = b.b = None
    return a


def _relative_error(a: _Accumulator, wa: np.ndarray) -> float:
    """The sum of squared errors of ``wa`` on ``a`` over its total sum of squares."""
    g_wa = a.g @ wa
    sse = float(np.sum(wa * g_wa, dtype=np.float64) - 2 * np.sum(wa * a.b) + a.s_tt)
    sst = a.s_tt - float(a.s_t @ a.s_t) / a.n
    return max(sse, 0.0) / sst if sst > 0 else 0.0


#: Ridge strengths tried (relative to the mean diagonal of the Gram matrix); the one with the
#: lowest error on the held-out fold wins. Too little ridge overfits when rows are few.
RIDGE_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def _bias_only(a: _Accumulator, w: np.ndarray) -> np.ndarray:
    mean_rows = a.g[-1, :-1] / a.n  # column sums of X' (the ones column times X')
    return np.vstack([w, (a.s_t / a.n - mean_rows @ w)[None, :]])


def _ridge(a: _Accumulator, strength: float, prior: np.ndarray | None = None) -> np.ndarray:
    """The ridge solution at ``strength`` from ``a``'s float64 matrices, shrunk toward ``prior``
    (weights, bias row last, which is not shrunk) or toward zero. The ridge goes on the
    diagonal in place and comes off exactly, so no copy of a Gram matrix thousands wide is made
    here (``np.linalg.solve`` makes its own, in float64 whatever the input's type: a float32
    copy would only add a cast and a third matrix)."""
    g, b = a.g, a.b
    k = g.shape[0] - 1
    scale = float(np.trace(g[:k, :k])) / max(k, 1)
    at = np.arange(k)
    diagonal = g[at, at].copy()
    shift = strength * scale if scale > 0 else strength
    g[at, at] += shift
    if prior is not None:
        b = b.copy()
        b[:k] += shift * prior[:k]
    try:
        return np.linalg.solve(g, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(g, b, rcond=None)[0]
    finally:
        g[at, at] = diagonal


def _downhill(grid: list[float], error, start: int | None = None) -> dict[float, float]:
    """The errors of the strengths tried walking downhill from ``start`` (the grid's middle
    unless given) until the next one is no better: held-out error is unimodal in the ridge
    strength in practice, so the walk ends at the same strength from any start, and each solve
    costs a factorisation of a Gram matrix up to thousands wide. Started at the strength the
    previous layer chose (layers of one network often choose alike), it tries 3 where that
    strength wins again."""
    tried = {}

    def at(i: int) -> float:
        if grid[i] not in tried:
            tried[grid[i]] = error(grid[i])
        return tried[grid[i]]

    i = len(grid) // 2 if start is None else start
    at(i)
    for step in (-1, 1):
        while 0 <= i + step < len(grid) and at(i + step) < at(i):
            i += step
    return tried


def _solve(folds: list[_Accumulator], vp: LinearView, report: LayerReport, graph: gs.Graph,
           mode: str, ridge: float | None, start: float | None = None) -> float | None:
    """Pick the refit by its error on the fold it was not fitted on, then fit on all data.

    Candidates: the layer as it is, bias only, and (lstsq, nonlinear) ridge solutions over
    ``RIDGE_GRID`` (or the given ``ridge``), walked from ``start``; nonlinear shrinks them toward
    the sliced weights instead of zero (MiniLM's FFNs at half their units: mean embedding cosine
    0.9551 toward zero, 0.9567 toward the sliced weights; the digits CNN at ratios 0.3, 0.5 and
    0.7: +1, -2 and -2 of 540 images, so lstsq keeps zero). A layer is never changed for the worse on
    held-out rows. Returns the ridge strength the walk found best (None where none was tried).
    """
    for fold in folds:
        fold.flush()
    if not all(_finite(fold) for fold in folds if fold.n):
        report.skipped = NON_FINITE
        return None
    w_p = vp.weight().astype(np.float64)
    current = np.vstack([w_p, vp.bias()[None, :]])
    fit, check = folds if folds[1].n else (folds[0], folds[0])  # one fold: it is the whole
    candidates = {"current": (lambda a: current), "bias": (lambda a: _bias_only(a, w_p))}
    scores = {name: _held_out_error(check, make(fit)) for name, make in candidates.items()}
    strength = None
    if mode in ("lstsq", "nonlinear"):
        # each solution tried is dropped once scored: only the strengths' errors are kept
        grid = [ridge] if ridge else list(RIDGE_GRID)
        # nonlinear: toward the sliced weights, so that a strong ridge keeps them (few rows)
        prior = current if mode == "nonlinear" else None
        tried = _downhill(grid, lambda s: _held_out_error(check, _ridge(fit, s, prior)),
                          grid.index(start) if start in grid else None)
        strength = min(sorted(tried), key=tried.get)  # the first of equals: the weakest
        candidates[f"ridge {strength:g}"] = (lambda a, s=strength: _ridge(a, s, prior))
        scores[f"ridge {strength:g}"] = tried[strength]
    whole = _merge_into_first(folds)  # the folds are not needed from here
    report.error_before = _relative_error(whole, current) if _finite(whole) else float("nan")
    if not np.isfinite(report.error_before):  # sums that overflowed: nothing to compare a refit with
        report.error_before, report.skipped = None, NON_FINITE
        return None
    best = min(scores, key=scores.get)  # the first of equals: "current" wins ties
    solution = candidates[best](whole) if best != "current" else current
    if not np.isfinite(solution).all():
        best, solution = "current", current
    refused = vp.refit_refused(solution[:-1]) if best != "current" else None
    if refused:  # a quantized weight whose scales do not cover the refit: the layer stays
        best, solution, report.skipped = "current", current, refused
    report.choice = best
    report.error_held_out = scores[best]
    if best == "current":
        report.error_after = report.error_before
        return strength
    vp.set_weight(solution[:-1])
    vp.set_bias(solution[-1], graph)
    report.error_after = _relative_error(whole, solution)
    return strength


#: Why a layer is left as it is when its calibration statistics hold NaN or Inf.
NON_FINITE = "non-finite activations on calibration data (its Gram matrix is not finite)"


def _finite(a: _Accumulator) -> bool:
    return bool(np.isfinite(a.g).all() and np.isfinite(a.b).all() and np.isfinite(a.s_t).all()
                and np.isfinite(a.s_tt))


def _held_out_error(check: _Accumulator, solution: np.ndarray) -> float:
    """The error of ``solution`` on ``check``; infinite for a solution that is not finite."""
    if not np.isfinite(solution).all():
        return float("inf")
    error = _relative_error(check, solution)
    return error if np.isfinite(error) else float("inf")


def _upstream(graph: gs.Graph, names: list[str]) -> dict[str, set[str]]:
    """Per tensor name, the layers among ``names`` it depends on."""
    graph.toposort()
    pending = set(names)
    reach: dict[str, set[str]] = {}
    for node in graph.nodes:
        upstream = set().union(*(reach.get(t.name, set()) for t in node.inputs)) if node.inputs else set()
        if node.name in pending:
            upstream = upstream | {node.name}
        for t in node.outputs:
            reach[t.name] = upstream
    return reach


def _waves(graph: gs.Graph, names: list[str]) -> list[list[str]]:
    """Group layers so that none in a wave feeds another in the same or a later-listed wave."""
    graph.toposort()
    pending = set(names)
    depends: dict[str, set[str]] = {}
    reach: dict[str, set[str]] = {}  # tensor name -> pending layers upstream of it
    for node in graph.nodes:
        upstream = set().union(*(reach.get(t.name, set()) for t in node.inputs)) if node.inputs else set()
        if node.name in pending:
            depends[node.name] = set(upstream)
            upstream = upstream | {node.name}
        for t in node.outputs:
            reach[t.name] = upstream
    waves, done = [], set()
    for _ in range(len(names)):  # each wave takes at least one layer
        wave = [n for n in names if n not in done and depends.get(n, set()) <= done]
        if not wave:
            break
        waves.append(wave)
        done |= set(wave)
    return waves
