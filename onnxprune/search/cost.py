"""Per-group cost models: how latency, FLOPs or params change as each group keeps fewer channels.

The model is separable by layer: a weight layer's cost at the current widths is its full cost
times, for each group touching it, the fraction that group's width leaves of it (measured on the
provider for latency, counted for FLOPs and params)::

    total(counts) = scale · Σ_layer full_layer · Π_group curve_layer,group(count_group) + rest

Latency of the ops between layers (activations, adds, pooling) is not measured on its own:
``scale`` stretches the layers' sum to the measured baseline, and the search corrects the model
against end-to-end measurements.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..analysis import Analysis, Group
from .probes import WEIGHT_INPUT, LayerSpec, base_spec, layer_nodes, resized

#: no group is cut below this fraction of its channels by a target search
MIN_KEEP_FRACTION = 0.1
#: at most this many widths are measured per group for latency
MAX_STEPS = 16
#: at most this many widths are considered per group for counted costs (FLOPs, params)
FINE_STEPS = 128


def candidate_counts(total: int, round_to: int = 1, min_keep: float = MIN_KEEP_FRACTION,
                     max_steps: int = MAX_STEPS, vector_width: int = 8) -> list[int]:
    """Widths a group may be cut to, widest first (the full width included).

    Steps are multiples of ``round_to``, and of ``vector_width`` for groups of 32 channels or
    more (the vector widths of CPU kernels: latency rarely drops in between), coarsened so there
    are at most ``max_steps`` of them.
    """
    step = max(1, round_to)
    if total >= 32:
        step = max(step, vector_width)
    for _ in range(64):  # doubling: bounded by the bits of ``total``
        if total // step <= max_steps:
            break
        step *= 2
    if total <= step:
        return [total]
    low = max(1, math.ceil(min_keep * total))
    counts = [c for c in range(step * (total // step), 0, -step) if c >= low and c < total]
    if not counts:
        counts = [step * max(1, total // step)] if step * max(1, total // step) < total else []
    return [total, *counts]


def channel_block(provider: str = "cpu") -> int:
    """Channels per vector block of the provider's kernels: ONNX Runtime's CPU convolutions
    (MLAS, NCHWc layout) work in blocks of 16 channels with AVX-512 and of 8 otherwise, and a
    width between two blocks often runs *slower* than the next wider block (measured on the
    digits CNN with AVX-512: 24 channels 1.9 ms, 32 channels 1.6 ms, 16 channels 1.0 ms);
    tensor cores want multiples of 8."""
    if provider == "cpu":
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                head = f.read(1 << 16)
        except OSError:
            return 8
        return 16 if " avx512f" in head else 8
    return 8


def latency_steps(total: int, round_to: int = 1, block: int = 8) -> list[int]:
    """Widths a measured latency search tries, widest first: multiples of ``block`` (of half a
    block for groups of one to two blocks, every width for smaller ones), and of ``round_to``."""
    step = block if total >= 2 * block else max(1, block // 2) if total >= block else 1
    return candidate_counts(total, max(step, round_to), vector_width=1)


@dataclass
class CostModel:
    """See the module docstring. ``steps[g]`` are the widths group ``g`` may take, widest first."""

    kind: str
    unit: str
    full: dict[str, float]
    curves: dict[str, dict[int, dict[int, float]]]
    steps: dict[int, list[int]]
    scale: float = 1.0
    rest: float = 0.0
    #: layers of each group (the inverse of ``curves``)
    layers_of: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layers_of:
            for layer, per_group in self.curves.items():
                for g in per_group:
                    self.layers_of.setdefault(g, []).append(layer)

    def layer_cost(self, layer: str, counts: dict[int, int]) -> float:
        value = self.full[layer]
        for g, curve in self.curves[layer].items():
            value *= curve.get(counts.get(g, self.steps[g][0]), 1.0)
        return value

    def layer_sum(self, counts: dict[int, int]) -> float:
        """The modelled layers' cost, unscaled."""
        return sum(self.layer_cost(layer, counts) for layer in self.full)

    def total(self, counts: dict[int, int]) -> float:
        return self.scale * self.layer_sum(counts) + self.rest

    def calibrate(self, points: list[tuple[float, float]]) -> bool:
        """Refit ``scale`` and ``rest`` to end-to-end measurements: (layer sum, measured) pairs.

        A straight line through them (least squares), used only while it has a positive slope
        and the measured widths differ; otherwise the model stays as it is (returns False).
        """
        xs = np.array([p[0] for p in points])
        ys = np.array([p[1] for p in points])
        if len(points) < 2 or np.ptp(xs) <= 1e-9 * max(abs(xs).max(), 1.0):
            return False
        slope, intercept = np.polyfit(xs, ys, 1)
        if slope <= 0:
            return False
        self.scale, self.rest = float(slope), float(intercept)
        return True

    def saving(self, g: int, new: int, counts: dict[int, int]) -> float:
        """How much the total drops when group ``g`` goes from its current width to ``new``."""
        old = counts.get(g, self.steps[g][0])
        drop = 0.0
        for layer in self.layers_of.get(g, []):
            curve = self.curves[layer][g]
            others = self.layer_cost(layer, counts) / curve.get(old, 1.0) if curve.get(old, 1.0) else 0.0
            drop += others * (curve.get(old, 1.0) - curve.get(new, 1.0))
        return self.scale * drop


def uniform_curve(model: CostModel, fractions=(1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)) -> list[dict]:
    """The model's cost with every group kept at about the same fraction (the narrowest step
    at or above it): how cost falls with width, for the report's plot."""
    rows = []
    for f in fractions:
        counts = {}
        for g, widths in model.steps.items():
            at_least = [w for w in widths if w >= f * widths[0]]
            counts[g] = min(at_least) if at_least else min(widths)
        rows.append({"kept": f, "predicted": model.total(counts)})
    return rows


def layer_variants(analysis: Analysis, shapes: dict[str, tuple], round_to: int = 1, fine: bool = False,
                   steps_of: Callable[[int], list[int]] | None = None, group_steps: dict[int, list[int]] | None = None
                   ) -> tuple[dict[str, LayerSpec], dict[str, dict[int, dict[int, LayerSpec]]], dict[int, list[int]]]:
    """For each modelled layer: its full spec, and its spec at every candidate width of every
    prunable group touching it (the other groups at full width); plus each group's candidates.

    ``shapes`` gives each layer's concrete (input, output) shapes by node name. ``fine``: every
    multiple of ``round_to`` is a candidate (counted costs are linear, no need for coarse steps).
    ``steps_of`` (a group's channels -> its widths) overrides both; ``group_steps`` (group id ->
    its widths, widest first) overrides all.
    """
    nodes = layer_nodes(analysis)
    group_of = {r: g for g in analysis.prunable_groups for r in g.classes}
    sites: dict[str, list] = {name: [] for name in nodes}
    touching: dict[str, list[Group]] = {name: [] for name in nodes}
    for site in analysis.sites:
        if site.node.name in nodes and site.input_index == WEIGHT_INPUT and site.role in ("weight_out", "weight_in"):
            sites[site.node.name].append(site)
            for r in np.unique(analysis.root[site.atoms]).tolist():
                g = group_of.get(r)
                if g is not None and g not in touching[site.node.name]:
                    touching[site.node.name].append(g)
    if group_steps is not None:
        steps = {g.id: list(group_steps[g.id]) for g in analysis.prunable_groups}
    elif steps_of is not None:
        steps = {g.id: steps_of(g.channels) for g in analysis.prunable_groups}
    elif fine:
        steps = {g.id: candidate_counts(g.channels, round_to, max_steps=FINE_STEPS, vector_width=1)
                 for g in analysis.prunable_groups}
    else:
        steps = {g.id: candidate_counts(g.channels, round_to) for g in analysis.prunable_groups}
    full: dict[str, LayerSpec] = {}
    variants: dict[str, dict[int, dict[int, LayerSpec]]] = {}
    for name, node in nodes.items():
        if name not in shapes:
            continue
        spec = base_spec(node, *shapes[name])
        full[name] = spec
        variants[name] = {}
        for g in touching[name]:
            per_count = {}
            for count in steps[g.id][1:]:
                keep = analysis.keep_fn(set(g.classes[count:]))
                w_shape = list(spec.w_shape)
                for site in sites[name]:
                    w_shape[site.axis] = int(keep(site.atoms).sum())
                per_count[count] = resized(spec, w_shape)
            variants[name][g.id] = per_count
    return full, variants, steps


def counted_model(analysis: Analysis, shapes: dict[str, tuple], kind: str, total: float,
                  round_to: int = 1, steps_of: Callable[[int], list[int]] | None = None,
                  group_steps: dict[int, list[int]] | None = None) -> CostModel:
    """A FLOPs or params model, counted from the layers' shapes (no measurement); widths: every
    multiple of ``round_to``, ``steps_of(channels)``, or ``group_steps[group id]``."""
    full, variants, steps = layer_variants(analysis, shapes, round_to, fine=True, steps_of=steps_of,
                                           group_steps=group_steps)
    measure = (lambda s: float(s.flops)) if kind == "flops" else (lambda s: float(s.params))
    full_cost = {name: measure(spec) for name, spec in full.items()}
    curves = {name: {g: {c: (measure(s) / full_cost[name] if full_cost[name] else 1.0) for c, s in per.items()}
                     for g, per in variants[name].items()} for name in full}
    rest = max(0.0, total - sum(full_cost.values()))
    return CostModel(kind, "", full_cost, curves, steps, 1.0, rest)


def static_layer_shapes(analysis: Analysis, input_shapes: dict[str, list[int]] | None = None) -> dict[str, tuple]:
    """Input and output shapes of the modelled layers from shape inference, dynamic dims as 1
    (as FLOPs are counted in ``metrics``); with ``input_shapes``, inferred afresh at those shapes
    (as ``metrics.count_flops_at`` counts)."""
    from ..metrics import static_shape, static_shapes_at

    at = {} if input_shapes is None else static_shapes_at(analysis.graph, input_shapes)

    def dims(tensor) -> list[int] | None:
        return at.get(tensor.name) or static_shape(tensor)

    shapes = {}
    for name, node in layer_nodes(analysis).items():
        x = dims(node.inputs[0])
        if x is not None:
            shapes[name] = (x, dims(node.outputs[0]))
    return shapes
