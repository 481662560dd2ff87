"""Residual blocks in a target search: which blocks go on the way to a latency, FLOPs or params target.

Blocks go in the order their scores give (the lowest stream change first, as ``--blocks N``
chooses them). For each candidate set, the k lowest-scored blocks, the target search runs with
those blocks removed by every candidate (``SearchProblem.blocks``: the cost model leaves their
layers out, and the channels make up what the blocks do not):

- ``--blocks N``: exactly the N lowest-scored blocks go, and channels the rest of the way.
- blocks alone (no channel group to cut): the fewest blocks that meet the target.
- with channels: k = 0 (channels alone) up to :data:`MAX_BLOCK_SETS` - 1 blocks; every set that
  meets the target is a candidate, and with calibration data the one whose outputs stay closest
  to the original's (the accuracy guard's measure, before reconstruction) is chosen. Without
  data candidates cannot be compared: the fewest blocks that meet the target go (none where
  channels alone meet it).
"""

from __future__ import annotations

from dataclasses import replace

from .settings import SearchProblem, SearchSettings
from .target_search import (
    SearchResult,
    TargetUnreachable,
    Trials,
    search_counted,
    search_latency,
)
from .targets import Target

#: with channels as well, at most this many block sets are searched (0, 1, 2, ... blocks)
MAX_BLOCK_SETS = 4


def block_sets(problem: SearchProblem, block_scores: dict[int, float], count: int | None) -> list[frozenset]:
    """The candidate sets, fewest blocks first: ``count`` blocks only where given, else 0, 1, ...
    of the lowest-scored (never all of them; at most MAX_BLOCK_SETS sets with channels)."""
    order = sorted(problem.analysis.removable_blocks, key=lambda b: (block_scores[b.id], -b.id))
    most = max(0, len(order) - 1)
    if count is not None:
        return [frozenset(b.id for b in order[:min(count, most)])]
    if problem.analysis.prunable_groups:
        most = min(most, MAX_BLOCK_SETS - 1)
    return [frozenset(b.id for b in order[:k]) for k in range(most + 1)]


def search_with_blocks(problem: SearchProblem, target: Target, settings: SearchSettings,
                       block_scores: dict[int, float], count: int | None = None) -> SearchResult:
    """The target search over the block sets of :func:`block_sets` (see the module docstring)."""
    run = search_latency if target.kind == "latency" else search_counted
    met: list[SearchResult] = []
    failure: TargetUnreachable | None = None
    for blocks in block_sets(problem, block_scores, count):
        try:
            result = run(replace(problem, blocks=blocks), target, settings)
        except TargetUnreachable as error:
            failure = error
            continue
        if result.status == "already_met":
            return result
        result.selection.blocks = set(blocks)
        met.append(result)
        if problem.calibration is None or not problem.analysis.prunable_groups:
            break
    if not met:
        raise failure or TargetUnreachable(f"{target.kind} target is out of reach: no block can be removed")
    if len(met) == 1:
        return met[0]
    return _closest(problem, met)


def _closest(problem: SearchProblem, met: list[SearchResult]) -> SearchResult:
    """Of the results that meet the target, the one whose outputs stay closest to the original's
    on the calibration data (ties: fewer blocks); each result records the comparison."""
    from .guard import candidate_fidelity

    trials = Trials(problem.graph, problem.analysis, problem.opset, problem.template)
    original = trials.original()
    rows = []
    for result in met:
        trials.blocks = frozenset(result.selection.blocks)
        model = trials.build(result.selection)[1]
        fid = candidate_fidelity(original, model, problem.calibration,
                                 io_cuts=trials.io_cuts(result.selection))
        rows.append({"blocks": sorted(result.selection.blocks), "cosine": fid["cosine"]})
    best = max(range(len(met)), key=lambda i: (rows[i]["cosine"] if rows[i]["cosine"] is not None else -2.0, -i))
    chosen = met[best]
    chosen.block_sets = [{**row, "chosen": i == best} for i, row in enumerate(rows)]
    return chosen
