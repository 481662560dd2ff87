"""Pipeline: runs passes in order over one PruningContext; ``prune()`` is the default pipeline."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable

import onnx

from .context import PruneOptions, PruningContext
from .io import check_weights_only, load_model, save_model
from .passes.builtin import Pass, default_passes


class Pipeline:
    """An ordered list of passes. ``run`` returns the context they filled in."""

    def __init__(self, passes: Iterable[Pass] | None = None):
        self.passes = list(passes) if passes is not None else None

    def run(self, model: onnx.ModelProto | str | os.PathLike, options: PruneOptions | None = None) -> PruningContext:
        if not isinstance(model, onnx.ModelProto):
            model = load_model(model)
        ctx = PruningContext(model=model, options=options or PruneOptions())
        check_weights_only(model, ctx.options)
        passes = self.passes if self.passes is not None else default_passes(ctx.options)
        for p in passes:
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

    def save(self, path: str | os.PathLike) -> list:
        """Write the model; returns the files written (the model, and its data file if any)."""
        return save_model(self.model, path, graph=self.context.pruned_graph)  # weights may wait in the graph


def prune(model: onnx.ModelProto | str | os.PathLike, *, ratio: float | None = None,
          target_latency: str | float | None = None, target_flops: str | float | None = None,
          target_params: str | float | None = None, criterion: str | None = None, round_to: int = 1,
          calibration=None, calib_samples: int | None = None, calib_rows: int = 256, reconstruct: str | None = None,
          provider: str = "cpu", threads: int | None = None, input_shapes: dict[str, list[int]] | None = None,
          latency_table=None, log: Callable[[str], None] | None = None, benchmark: bool = False,
          prune: tuple[str, ...] | str = ("heads", "channels")) -> PruneResult:
    """Prune MODEL; the input is never modified.

    Either ``ratio`` (default 0.3): that fraction of every prunable group's channels; or one
    target: ``target_latency`` ("50ms", or a number of ms) measured on ``provider`` with
    ``threads`` (or predicted from ``latency_table``, a profile of the target device),
    ``target_flops`` / ``target_params`` (a fraction of the original such as 0.5, or a count
    such as "2G"). A target search raises ``TargetUnreachable`` when even the most pruning it
    allows misses; when the model already meets the target, ``report["search"]["status"]`` is
    ``"already_met"`` and nothing is removed.

    ``calibration`` (a .npz path, a folder of .npz, a .py defining ``load_data()``, or an iterable
    of input dicts) enables activation criteria (default ``obs``), reconstruction
    (default ``lstsq``; ``"bias"`` or ``"none"`` to change it) and the fidelity report;
    ``calib_rows`` bounds the input rows per layer and sample that their Gram matrices use.
    ``benchmark=True`` times the original and the pruned model side by side at the end
    (``report["benchmark"]``).
    """
    from .errors import BadInputError
    from .search.targets import parse_target

    target = parse_target(target_latency, target_flops, target_params)
    if target is not None and ratio is not None:
        raise BadInputError("give either a ratio or a target, not both")
    if target is not None and target.kind != "latency" and latency_table is not None:
        raise BadInputError("a latency table only serves a latency target")
    options = PruneOptions(ratio=0.3 if ratio is None else ratio, criterion=criterion, round_to=round_to,
                           calibration=calibration, calib_samples=calib_samples, calib_rows=calib_rows, reconstruct=reconstruct,
                           target=target, provider=provider, threads=threads, input_shapes=dict(input_shapes or {}),
                           latency_table=latency_table, benchmark=benchmark,
                           prune=tuple(prune.split(",")) if isinstance(prune, str) else tuple(prune))
    from .passes.builtin import default_passes

    ctx = Pipeline(default_passes(options, log)).run(model, options)
    return PruneResult(ctx.pruned, ctx)
