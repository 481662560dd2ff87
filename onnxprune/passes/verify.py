"""The verify pass: what pruning cost, in the model's own outputs."""

from __future__ import annotations

from ..context import PruningContext
from ..io import uses_external_data
from .base import Pass


class Verify(Pass):
    """Compare the pruned model's outputs with the original's on calibration data."""

    name = "verify"
    requires = ("selection", "pruned")
    provides = ()

    def run(self, ctx: PruningContext) -> None:
        from ..fidelity import output_fidelity

        if ctx.calibration is None or ctx.pruned is None or not ctx.selection.changes:
            return
        if uses_external_data(ctx.model) and ctx.pruned_graph is not None:
            original, pruned = ctx.graph, ctx.pruned_graph  # weights left in their files: by reference
        else:
            original, pruned = ctx.model.SerializeToString(), ctx.pruned.SerializeToString()
        ctx.report["fidelity"] = {**output_fidelity(original, pruned, ctx.calibration, threads=ctx.options.threads,
                                                    io_cuts=ctx.analysis.plan.io_cuts(ctx.selection.removed)),
                                  "data": ctx.calibration.description}
        for name, counts in ctx.report["fidelity"].get("non_finite", {}).items():
            ctx.warnings.append(f"fidelity of output '{name}': {counts['original']} sample(s) with a non-finite "
                                f"original output left out, {counts['pruned']} where only the pruned output is not "
                                "finite (counted as cosine 0)")
