"""One pass of the model over calibration data, reducing the activations entering each
consuming layer to statistics as they arrive: per-channel sums always, and the Gram matrix of
the layer's input rows where a criterion needs it (never all activations at once)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis import Analysis
from ..analysis.state import SliceSite
from .stats import ChannelStats, GramStats

#: Widest consumer input (rows of its weight as a matrix: channels x kernel area) whose Gram
#: matrix is gathered; wider ones (big conv patches) would cost too much memory and time.
MAX_GRAM_WIDTH = 4096


def sink_tensors(analysis: Analysis) -> dict[str, int]:
    """The activations entering each consuming layer, with their channel axis."""
    out = {}
    for site in analysis.sites:
        if site.role == "weight_in":
            name = site.node.inputs[0].name
            out[name] = analysis.state.tracks[name].axis
    return out


def gram_view(site: SliceSite):
    """The consumer of ``site`` as a linear layer whose Gram matrix can be gathered, and None;
    or None and the reason it cannot."""
    from ..ops import linear_view_for

    view_cls = linear_view_for(site.node)
    if view_cls is None:
        return None, f"{site.node.op} is not seen as a linear layer"
    view = view_cls(site.node)
    why = view.supported()
    if why:
        return None, why
    width = view.weight().shape[0]
    if width > MAX_GRAM_WIDTH:
        return None, f"input rows {width} wide (over {MAX_GRAM_WIDTH})"
    return view, None


def gram_sites(analysis: Analysis) -> list[SliceSite]:
    """Consumers of prunable channels: the layers a reconstruction-aware criterion looks at."""
    prunable = {r for g in analysis.prunable_groups for r in g.classes}
    return [s for s in analysis.sites if s.role == "weight_in"
            and not prunable.isdisjoint(analysis.root[s.atoms].tolist())]


def collect_stats(analysis: Analysis, graph: gs.Graph, batches: Iterable[dict], grams: bool = False,
                  rows_per_sample: int = 256) -> dict[str, ChannelStats]:
    """Per sink tensor, its :class:`ChannelStats` (with ``grams`` filled when asked, from at
    most ``rows_per_sample`` input rows per layer and sample)."""
    from ..runtime.capture import capture, capture_session
    from .data import runs_of, sample_total

    tensors = sink_tensors(analysis)
    stats = {name: ChannelStats(axis) for name, axis in tensors.items()}
    views = []
    if grams:
        for site in gram_sites(analysis):
            view, _ = gram_view(site)
            if view is not None:
                name = site.node.inputs[0].name
                stats[name].grams[site.node.name] = GramStats()
                views.append((name, view, np.random.default_rng(0)))
    if not tensors:
        return stats
    from ..report.progress import Progress

    session = capture_session(graph, sorted(tensors))
    # the model's own NaN/Inf (a Log of zero) are counted in the statistics, not warned of here
    with Progress("calibrating", sample_total(batches), unit="sample") as bar, np.errstate(all="ignore"):
        for run in runs_of(batches):
            captured = capture(session, run.feeds)
            for name, value in captured.items():
                stats[name].update(value)
            for name, view, rng in views:
                x = captured[name]
                pick = view.pick(x, rng, run.samples, rows_per_sample)
                stats[name].grams[view.node.name].update(view.rows(x, pick).astype(np.float32))
            bar.advance(run.samples)
    return stats
