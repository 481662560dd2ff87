"""Passes for pruning to a target instead of a ratio, and for checking what pruning cost.

``Search`` replaces ``Select`` when a latency, FLOPs or params target is given; ``Verify``
compares the final model's outputs with the original's on calibration data.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx

from ..context import PruningContext
from ..errors import BadInputError
from .builtin import Pass


def model_fingerprint(model: onnx.ModelProto) -> str:
    """sha256 of the model's structure and weights, without serializing it whole (large models)."""
    digest = hashlib.sha256()
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    del skeleton.graph.initializer[:]
    digest.update(skeleton.SerializeToString(deterministic=True))
    for init in model.graph.initializer:
        digest.update(init.name.encode())
        digest.update(onnx.numpy_helper.to_array(init).tobytes() if not init.raw_data else init.raw_data)
    return digest.hexdigest()


def _first_batch(ctx: PruningContext) -> dict[str, np.ndarray] | None:
    if ctx.calibration is None:
        return None
    for batch in ctx.calibration:
        return batch
    return None


class Search(Pass):
    """Choose each group's width to meet ``options.target`` while losing the least importance."""

    name = "search"

    def __init__(self, log=None):
        self.log = log

    def run(self, ctx: PruningContext) -> None:
        from ..search.latency_table import LatencyTable
        from ..search.target_search import search_counted, search_latency

        opts = ctx.options
        target = opts.target
        if target is None:
            raise BadInputError("the search pass needs a target (latency, FLOPs or params)")
        if target.kind == "latency":
            table = opts.latency_table
            if table is not None and not isinstance(table, LatencyTable):
                table = LatencyTable.load(table)
            feeds = None
            if not opts.input_shapes:
                feeds = _first_batch(ctx)
            result = search_latency(ctx.analysis, ctx.graph, ctx.opset, ctx.model, ctx.scores, target,
                                    model_fingerprint(ctx.model), opts.input_shapes, feeds, opts.provider,
                                    opts.threads, opts.round_to, table, self.log)
        else:
            result = search_counted(ctx.analysis, ctx.graph, ctx.opset, ctx.model, ctx.scores, target,
                                    opts.round_to)
        ctx.selection = result.selection
        ctx.report["search"] = result.as_report()


class Verify(Pass):
    """Compare the pruned model's outputs with the original's on calibration data."""

    name = "verify"

    def run(self, ctx: PruningContext) -> None:
        from ..fidelity import output_fidelity

        if ctx.calibration is None or ctx.pruned is None or not ctx.selection.removed:
            return
        ctx.report["fidelity"] = {**output_fidelity(ctx.model.SerializeToString(), ctx.pruned.SerializeToString(),
                                                    ctx.calibration, threads=ctx.options.threads),
                                  "data": ctx.calibration.description}
