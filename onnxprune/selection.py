"""Selection: which channels of each group to remove, given scores and a ratio."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .analysis import Analysis


@dataclass
class Selection:
    """The classes to remove, and per group how many channels are kept."""

    removed: set[int] = field(default_factory=set)
    #: group id -> (kept, total)
    kept: dict[int, tuple[int, int]] = field(default_factory=dict)


def kept_count(total: int, ratio: float, round_to: int = 1) -> int:
    """Channels kept when removing ``ratio`` of ``total``: rounded, at least one (or ``round_to``).

    With ``round_to`` N the kept count is a multiple of N (the nearest one), since hardware
    kernels are often fastest at such widths; a group narrower than N keeps all its channels.
    """
    if ratio <= 0:
        return total
    keep = total - math.floor(ratio * total + 0.5)
    keep = max(1, keep)
    if round_to > 1:
        if total <= round_to:
            return total
        keep = max(round_to, int(math.floor(keep / round_to + 0.5)) * round_to)
        keep = min(keep, total)
    return keep


def select_by_counts(analysis: Analysis, scores: dict[int, np.ndarray], counts: dict[int, int]) -> Selection:
    """Keep the ``counts[g]`` best-scored channels of each prunable group ``g`` (all of a group
    not in ``counts``); ties: later channels go first."""
    selection = Selection()
    for group in analysis.prunable_groups:
        total = group.channels
        keep = min(counts.get(group.id, total), total)
        selection.kept[group.id] = (keep, total)
        if keep >= total:
            continue
        order = np.argsort(-scores[group.id], kind="stable")  # best first, stable for ties
        for index in order[keep:]:
            selection.removed.add(group.classes[int(index)])
    return selection


def select_by_ratio(analysis: Analysis, scores: dict[int, np.ndarray], ratio: float,
                    round_to: int = 1) -> Selection:
    """Remove the lowest-scored ``ratio`` of every prunable group."""
    counts = {g.id: kept_count(g.channels, ratio, round_to) for g in analysis.prunable_groups}
    return select_by_counts(analysis, scores, counts)
