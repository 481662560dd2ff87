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


def prune(model: onnx.ModelProto | str | os.PathLike, *, ratio: float = 0.3, criterion: str | None = None,
          round_to: int = 1, calibration=None, calib_samples: int | None = None,
          reconstruct: str | None = None) -> PruneResult:
    """Prune ``ratio`` of the channels of every prunable group; the input is never modified.

    ``calibration`` (a .npz path, a folder of .npz, a .py defining ``load_data()``, or an iterable
    of input dicts) enables activation criteria (default ``fluctuation``) and reconstruction
    (default ``lstsq``; ``"bias"`` or ``"none"`` to change it).
    """
    options = PruneOptions(ratio=ratio, criterion=criterion, round_to=round_to, calibration=calibration,
                           calib_samples=calib_samples, reconstruct=reconstruct)
    ctx = Pipeline().run(model, options)
    return PruneResult(ctx.pruned, ctx)
