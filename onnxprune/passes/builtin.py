"""The built-in passes: small objects with a name and ``run(ctx)``, composed by a Pipeline."""

from __future__ import annotations

from ..analysis import analyze_graph
from ..context import PruningContext
from ..errors import BadInputError
from ..io import check_opset
from ..metrics import count_flops, count_params
from ..scoring import CRITERIA, score_groups
from ..selection import select_by_ratio
from .normalize import normalize
from .rewrite import export_checked, rewrite


class Pass:
    """One step of the pipeline. Subclasses set ``name`` and implement ``run``."""

    name = "pass"

    def run(self, ctx: PruningContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Normalize(Pass):
    """Fold constants into initializers and infer shapes."""

    name = "normalize"

    def run(self, ctx: PruningContext) -> None:
        ctx.opset = check_opset(ctx.model)
        ctx.graph = normalize(ctx.model)
        ctx.report["before"] = {"params": count_params(ctx.graph), "flops": count_flops(ctx.graph)}


class Analyze(Pass):
    """Find channel groups and the reasons blocked ones are refused."""

    name = "analyze"

    def run(self, ctx: PruningContext) -> None:
        ctx.analysis = analyze_graph(ctx.graph, ctx.opset)


class Score(Pass):
    """Score every channel of every group with the chosen criterion."""

    name = "score"

    def run(self, ctx: PruningContext) -> None:
        if ctx.options.criterion not in CRITERIA:
            raise BadInputError(f"unknown criterion '{ctx.options.criterion}' (choose from {', '.join(CRITERIA)})")
        ctx.scores = score_groups(ctx.analysis, ctx.options.criterion)


class Select(Pass):
    """Remove ``ratio`` of every prunable group, lowest scores first."""

    name = "select"

    def run(self, ctx: PruningContext) -> None:
        ratio = ctx.options.ratio
        if not 0 <= ratio < 1:
            raise BadInputError(f"ratio must be in [0, 1), got {ratio}")
        if ctx.options.round_to < 1:
            raise BadInputError(f"round-to must be a positive integer, got {ctx.options.round_to}")
        ctx.selection = select_by_ratio(ctx.analysis, ctx.scores, ratio, ctx.options.round_to)


class Rewrite(Pass):
    """Slice weights, fix attributes and shape constants, re-infer shapes, validate."""

    name = "rewrite"

    def run(self, ctx: PruningContext) -> None:
        graph = rewrite(ctx.analysis, ctx.selection.removed)
        ctx.pruned = export_checked(graph, ctx.model)
        ctx.report["after"] = {"params": count_params(graph), "flops": count_flops(graph)}


def default_passes() -> list[Pass]:
    return [Normalize(), Analyze(), Score(), Select(), Rewrite()]
