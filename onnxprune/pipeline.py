"""Pipeline: runs passes in order over one PruningContext; ``prune()`` is the default pipeline."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import onnx

from .context import PruneOptions, PruningContext
from .io import load_model, save_model
from .passes.builtin import Pass, default_passes


class Pipeline:
    """An ordered list of passes. ``run`` returns the context they filled in."""

    def __init__(self, passes: Iterable[Pass] | None = None):
        self.passes = list(passes) if passes is not None else default_passes()

    def run(self, model: onnx.ModelProto | str | os.PathLike, options: PruneOptions | None = None) -> PruningContext:
        if not isinstance(model, onnx.ModelProto):
            model = load_model(model)
        ctx = PruningContext(model=model, options=options or PruneOptions())
        for p in self.passes:
            p.run(ctx)
        return ctx


@dataclass
class PruneResult:
    """The pruned model and what was done to it."""

    model: onnx.ModelProto
    context: PruningContext

    @property
    def report(self) -> dict:
        return self.context.report

    def save(self, path: str | os.PathLike) -> None:
        save_model(self.model, path)


def prune(model: onnx.ModelProto | str | os.PathLike, *, ratio: float = 0.3, criterion: str = "l1",
          round_to: int = 1) -> PruneResult:
    """Prune ``ratio`` of the channels of every prunable group; the input is never modified."""
    ctx = Pipeline().run(model, PruneOptions(ratio=ratio, criterion=criterion, round_to=round_to))
    return PruneResult(ctx.pruned, ctx)
