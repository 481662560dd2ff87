"""The search pass: pruning to a target instead of a ratio.

``Search`` replaces ``Select`` when a latency, FLOPs or params target is given.
"""

from __future__ import annotations

import numpy as np

from ..context import PruningContext
from ..errors import BadInputError
from ..io import model_fingerprint
from .base import Pass
from .builtin import flop_shapes


def latency_feeds(ctx: PruningContext) -> dict[str, np.ndarray] | None:
    """Inputs to time the model on when no ``input_shapes`` are given: the first calibration
    batch, cut to one sample where the batch dimension is dynamic (latency is usually wanted per
    request; ``input_shapes`` sets another batch size). None without calibration data."""
    if ctx.calibration is None:
        return None
    for batch in ctx.calibration:
        dynamic = {spec.name for spec in ctx.calibration.specs
                   if spec.shape and not (isinstance(spec.shape[0], int) and spec.shape[0] > 0)}
        return {k: (v[:1] if k in dynamic and np.ndim(v) else v) for k, v in batch.items()}
    return None


class Search(Pass):
    """Choose each group's width to meet ``options.target`` while losing the least importance."""

    name = "search"
    requires = ("graph", "opset", "analysis", "scores")
    provides = ("selection",)

    def __init__(self, log=None, work_dir=None):
        self.log = log
        self.work_dir = work_dir

    def run(self, ctx: PruningContext) -> None:
        from ..search.blocks import search_with_blocks
        from ..search.latency_table import LatencyTable
        from ..search.target_search import (
            SearchProblem,
            SearchSettings,
            search_counted,
            search_latency,
        )

        opts = ctx.options
        target = opts.target
        if target is None:
            raise BadInputError("the search pass needs a target (latency, FLOPs or params)")
        problem = SearchProblem(ctx.analysis, ctx.graph, ctx.opset, ctx.model, ctx.scores, ctx.calibration)
        if target.kind == "latency":
            table = opts.latency_table
            if table is not None and not isinstance(table, LatencyTable):
                table = LatencyTable.load(table)
            feeds = None
            if not opts.input_shapes:
                feeds = latency_feeds(ctx)
            settings = SearchSettings.from_options(opts, feeds=feeds, table=table,
                                                   model_sha256=model_fingerprint(ctx.model), log=self.log,
                                                   ship=shipping(ctx, self.work_dir))
            search = search_latency
        else:
            settings = SearchSettings.from_options(opts, flop_shapes=flop_shapes(ctx))
            search = search_counted
        if "blocks" in opts.prune and ctx.block_scores:
            result = search_with_blocks(problem, target, settings, ctx.block_scores, opts.blocks)
        else:
            result = search(problem, target, settings)
        ctx.selection = result.selection
        ctx.report["search"] = result.as_report()
        ctx.warnings.extend(search_warnings(result))


def shipping(ctx: PruningContext, work_dir=None):
    """With ``--quantize``, what a latency candidate becomes before it is timed, so that the
    target is met by the model that ships: ``(model bytes, io cuts) -> quantized model bytes``.
    Static int8 takes its ranges from the first calibration samples only
    (``runtime.quantize.TIMING_SAMPLES``): they set scales, not the graph that is timed."""
    method = ctx.options.quantize
    if method is None:
        return None
    import onnx

    from ..runtime.quantize import TIMING_SAMPLES, quantize
    from .quantize import CutBatches

    calibration = ctx.calibration if method == "int8" else None

    def ship(model_bytes: bytes, cuts: dict) -> bytes:
        batches = CutBatches(calibration, cuts) if calibration is not None else None
        done = quantize(onnx.load_from_string(model_bytes), method, batches, work_dir, max_samples=TIMING_SAMPLES)
        return done.model.SerializeToString() if done.layers else model_bytes

    return ship


def search_warnings(result) -> list[str]:
    """What a build should not miss about the search's choice: over-pruning, a fidelity collapse."""
    out = []
    if result.over_pruned:
        m = result.measurement
        out.append(f"target search: the least-pruned candidate that meets the target measures "
                   f"{result.achieved:.3f} ms, far under the target {result.target.value:g} ms "
                   f"(the original {m['original']['p50_ms']:.3f} ms in the same rounds): latency falls in "
                   "steps here, and the model was pruned more than the target needs")
    check = result.fidelity_check
    if check and check["collapsed"] and not check["switched"] and check["chosen"]["cosine"] is not None:
        out.append(f"target search: the chosen model's fidelity (cosine {check['chosen']['cosine']:.4f} before "
                   f"reconstruction) collapsed against the uniform allocation's ({check['alternative']['cosine']:.4f}), "
                   "which was not nearly as fast or missed the target")
    return out
