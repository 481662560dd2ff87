"""Prune only MiniLM's FFN hidden units, as the MiniLM benchmark's target is stated.

``onnxprune.prune`` prunes every prunable group, and attention heads are prunable groups too;
the benchmark's question ("keep the embeddings with half the FFN channels") needs the same
pipeline with the selection restricted to the FFN groups (those as wide as the FFN, 4x hidden).
"""

from __future__ import annotations

import onnx

from onnxprune import Pipeline
from onnxprune.context import PruneOptions, PruningContext
from onnxprune.passes.builtin import Analyze, Calibrate, Normalize, Reconstruct, Rewrite, Score, Select


class SelectFFN(Select):
    """The ratio selection, then every non-FFN group given back its channels."""

    def __init__(self, ffn_width: int):
        self.ffn_width = ffn_width

    def run(self, ctx: PruningContext) -> None:
        super().run(ctx)
        sel = ctx.selection
        for group in ctx.analysis.groups:
            if group.channels != self.ffn_width and group.id in sel.kept:
                sel.removed.difference_update(group.classes)
                sel.kept[group.id] = (group.channels, group.channels)


def prune_ffn(model, ratio: float, criterion: str | None = None, calibration=None, reconstruct: str | None = None,
              calib_samples: int | None = None, hidden: int = 384) -> PruningContext:
    """The pipeline of ``onnxprune.prune`` with only FFN channels removed; ``ctx.pruned`` is the model."""
    opts = PruneOptions(ratio=ratio, criterion=criterion, calibration=calibration, reconstruct=reconstruct,
                        calib_samples=calib_samples)
    passes = [Normalize(), Analyze(), Calibrate(), Score(), SelectFFN(4 * hidden), Rewrite(), Reconstruct()]
    ctx = Pipeline(passes).run(model if isinstance(model, onnx.ModelProto) else str(model), opts)
    if ctx.pruned is None:
        raise RuntimeError("nothing was pruned")
    return ctx
