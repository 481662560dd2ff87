"""Sensitivity: how much the model's outputs move when one group alone is cut, or one block removed.

For every prunable group, its lowest-scored channels are removed (the scores the run already has)
to each kept fraction of a sweep, the rest of the model left whole, and the outputs compared with
the original's on calibration samples; every removable residual block is removed alone too. What
a point reuses: the statistics behind the scores (captured once), the original's outputs (run
once) and the analysis' plan (each point is one ``apply``, never a second analysis), so a point
costs one forward pass of the cut model over the sweep's samples.

A group's sensitivity is the mean relative output error over its points: the order in which a
person, or ``--allocate global``, should cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis import Analysis
from ..runtime.capture import analysis_options

#: kept fractions swept by default
FRACTIONS = (0.9, 0.75, 0.5, 0.25)
#: calibration samples each point is measured on (the first ones)
SWEEP_SAMPLES = 64


@dataclass
class Point:
    #: the kept fraction swept, and the one reached (whole channels)
    fraction: float
    kept: float
    channels: int
    cosine: float
    error: float


@dataclass
class Curve:
    """One group's (or block's) points; ``kind``: heads, channels or block."""

    id: int
    kind: str
    name: str
    channels: int
    params: int
    flops: int
    points: list[Point] = field(default_factory=list)

    @property
    def sensitivity(self) -> float:
        errors = [p.error for p in self.points]
        return float(np.mean(errors)) if errors else 0.0

    def error_at(self, kept: float) -> float:
        """The relative error at ``kept`` channels (a fraction), interpolated between the points
        (0 at 1.0); below the lowest point, that point's error."""
        xs = [1.0] + [p.kept for p in self.points]
        ys = [0.0] + [p.error for p in self.points]
        order = np.argsort(xs)
        return float(np.interp(kept, np.asarray(xs)[order], np.asarray(ys)[order]))


class _Reference:
    """The original's outputs on the sweep's samples, kept for every point."""

    def __init__(self, model_bytes: bytes, batches: Iterable[dict], max_samples: int, threads: int | None):
        from ..runtime.session import onnxruntime

        self.ort = onnxruntime()
        self.threads = threads
        session = self._session(model_bytes)
        self.wanted = {i.name for i in session.get_inputs()}
        self.feeds, self.outputs, samples = [], [], 0
        for feeds in batches:
            if samples >= max_samples:
                break
            feeds = {k: v for k, v in feeds.items() if k in self.wanted}
            self.feeds.append(feeds)
            self.outputs.append([np.asarray(o, dtype=np.float64) for o in session.run(None, feeds)])
            samples += len(next(iter(feeds.values()))) if feeds else 1
        self.samples = samples

    def _session(self, model_bytes: bytes):
        return self.ort.InferenceSession(model_bytes, analysis_options(self.threads),
                                         providers=["CPUExecutionProvider"])

    def compare(self, graph: gs.Graph) -> tuple[float, float]:
        """(mean cosine, relative error) of ``graph``'s outputs against the original's, pooled over outputs."""
        model = gs.export_onnx(graph, do_type_check=False)
        model.ir_version = max(model.ir_version, 4)
        session = self._session(model.SerializeToString())
        cosines, sq_err, sq_norm = [], 0.0, 0.0
        for feeds, want in zip(self.feeds, self.outputs):
            for x, y in zip(want, session.run(None, feeds)):
                y = np.asarray(y, dtype=np.float64)
                if x.shape != y.shape:
                    continue
                xs, ys = x.reshape(len(x), -1) if x.ndim else x.reshape(1, 1), y.reshape(x.shape[0] if x.ndim else 1, -1)
                with np.errstate(all="ignore"):
                    norms = np.linalg.norm(xs, axis=1) * np.linalg.norm(ys, axis=1)
                    cos = np.where(norms > 0, (xs * ys).sum(1) / np.where(norms > 0, norms, 1.0), 1.0)
                cosines.extend(np.nan_to_num(cos, nan=0.0).tolist())
                sq_err += float(((xs - ys) ** 2).sum())
                sq_norm += float((xs ** 2).sum())
        error = math.sqrt(sq_err / sq_norm) if sq_norm else 0.0
        return float(np.mean(cosines)) if cosines else 0.0, error if math.isfinite(error) else float("inf")


def _cut(analysis: Analysis, graph: gs.Graph, removed: set[int], blocks: set[int], refit: str | None,
         batches, threads: int | None) -> gs.Graph:
    """The graph with ``removed`` and ``blocks`` taken out; with ``refit``, the layers that lost
    inputs refit on the calibration data (``reconstruct``), as a prune would."""
    from ..reconstruct import reconstruct
    from ..rewrite import apply

    cut = apply(analysis.plan, removed, graph, blocks)
    if refit in (None, "none"):
        return cut
    keep = analysis.plan.keep_fn(removed)
    lost, outputs = {}, {}
    for c in analysis.plan.cuts:
        mask = keep(c.atoms)
        if c.role == "weight_in" and not mask.all():
            lost[c.node] = (int(mask.sum()), len(mask))
        elif c.role == "weight_out":
            outputs[c.node] = mask
    gone = {name for b in analysis.blocks if b.id in blocks for name in b.nodes}
    layers = [(n.name, *lost[n.name], outputs.get(n.name)) for n in graph.nodes
              if n.name in lost and n.name not in gone]
    reconstruct(graph, cut, layers, batches, mode=refit, threads=threads)
    cut.cleanup(remove_unused_graph_inputs=False).toposort()
    return cut


def sweep(analysis: Analysis, graph: gs.Graph, model_bytes: bytes, scores: dict[int, np.ndarray],
          batches: Iterable[dict], fractions=FRACTIONS, blocks: bool = True, max_samples: int = SWEEP_SAMPLES,
          threads: int | None = None, progress: Callable[[str], None] | None = None,
          refit: str | None = None) -> tuple[list[Curve], int]:
    """Curves for every prunable group (its lowest-scored channels cut to each kept fraction) and,
    with ``blocks``, every removable block (removed alone, one point at kept 0), most sensitive
    first; and the number of samples each point was measured on. ``refit`` ("lstsq", "bias"):
    each point is refit as a prune would before it is measured (a reconstruction per point)."""
    from ..selection import kept_count

    reference = _Reference(model_bytes, batches, max_samples, threads)
    curves = []
    for group in analysis.prunable_groups:
        curve = Curve(group.id, group.kind, group.name, group.channels, group.params, group.flops)
        order = np.argsort(-np.asarray(scores[group.id]), kind="stable")
        for f in fractions:
            keep = kept_count(group.channels, 1.0 - f)
            if keep >= group.channels:
                continue
            removed = {group.classes[int(i)] for i in order[keep:]}
            cosine, error = reference.compare(_cut(analysis, graph, removed, set(), refit, batches, threads))
            curve.points.append(Point(f, keep / group.channels, keep, cosine, error))
        curves.append(curve)
        if progress:
            progress(f"group {group.id}: sensitivity {curve.sensitivity:.4f}")
    if blocks:
        for block in analysis.removable_blocks:
            curve = Curve(block.id, "block", block.name, 1, block.params, block.flops)
            cosine, error = reference.compare(_cut(analysis, graph, set(), {block.id}, refit, batches, threads))
            curve.points.append(Point(0.0, 0.0, 0, cosine, error))
            curves.append(curve)
            if progress:
                progress(f"block {block.id}: error {error:.4f}")
    return sorted(curves, key=lambda c: (-c.sensitivity, c.kind, c.id)), reference.samples


def table(curves: list[Curve], fractions, samples: int, seconds: float) -> dict:
    """The JSON table: one row per group and block, most sensitive first."""
    return {"schema": "onnxprune-sensitivity", "version": 1, "fractions": list(fractions), "samples": samples,
            "seconds": round(seconds, 2),
            "rows": [{"id": c.id, "kind": c.kind, "name": c.name, "channels": c.channels, "params": int(c.params),
                      "flops": int(c.flops), "sensitivity": c.sensitivity,
                      "points": [{"fraction": p.fraction, "kept": p.kept, "channels": p.channels, "cosine": p.cosine, "error": p.error}
                                 for p in c.points]} for c in curves]}
