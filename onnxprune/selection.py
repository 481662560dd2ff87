"""Selection: which channels of each group to remove, given scores and a ratio.

Every selection passes the size guard (:func:`keep_whole_where_growing`): a group whose removal
would store more weight than it removes (by un-sharing a constant other nodes read) is kept
whole, with the reason, so that a pruned model never has more parameters than its input.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .analysis import Analysis
from .analysis.sharing import ConstantPlan


@dataclass
class Selection:
    """The classes to remove, and per group how many channels are kept."""

    removed: set[int] = field(default_factory=set)
    #: group id -> (kept, total)
    kept: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: group id -> why a group the scores would have pruned is kept whole (the size guard)
    kept_whole: dict[int, str] = field(default_factory=dict)
    #: ids of the residual blocks removed whole (``analysis.blocks``)
    blocks: set[int] = field(default_factory=set)

    @property
    def changes(self) -> bool:
        """Whether anything is removed: channels or blocks."""
        return bool(self.removed or self.blocks)


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
    not in ``counts``); ties: later channels go first. Groups tied to one count
    (``Analysis.ties``: a config file beside the model fixes it for all layers) all keep the
    smallest count any of them gets, each its own best channels; one kept whole keeps them whole."""
    counts = _tied_counts(analysis, counts)
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
    keep_whole_where_growing(analysis, selection)
    _keep_ties_whole(analysis, selection)
    return selection


def _tied_counts(analysis: Analysis, counts: dict[int, int]) -> dict[int, int]:
    if not analysis.ties:
        return counts
    size = {g.id: g.channels for g in analysis.groups}
    prunable = {g.id for g in analysis.prunable_groups}
    counts = dict(counts)
    for tie in analysis.ties:
        if not all(gid in prunable for gid in tie):  # one of them is kept whole: all are
            for gid in tie:
                counts[gid] = size[gid]
            continue
        width = min(min(counts.get(gid, size[gid]), size[gid]) for gid in tie)
        for gid in tie:
            counts[gid] = width
    return counts


def _keep_ties_whole(analysis: Analysis, selection: Selection) -> None:
    """A tied group the size guard kept whole keeps the others of its tie whole too."""
    classes = {g.id: set(g.classes) for g in analysis.groups}
    for tie in analysis.ties:
        whole = [gid for gid in tie if gid in selection.kept_whole]
        if not whole:
            continue
        for gid in tie:
            if gid in selection.kept_whole or not classes[gid] & selection.removed:
                continue
            selection.removed -= classes[gid]
            selection.kept[gid] = (len(classes[gid]), len(classes[gid]))
            selection.kept_whole[gid] = (f"kept whole with group {whole[0]}: one count for all layers "
                                         "(a config file beside the model)")


def keep_whole_where_growing(analysis: Analysis, selection: Selection) -> None:
    """Keep whole the groups whose removal would make the model bigger, and say why.

    Only constants that several nodes read and that a removal can cut differently for them
    (``ConstantPlan.diverges``) can grow; groups are coupled through them. A group whose own
    removal stores more than it frees is kept whole first; then, while a coupled set of groups
    together stores more than it frees, the one whose removal helps least. Elsewhere slicing
    only shrinks, so the whole model then has at most the parameters it had.
    """
    plans_of: dict[int, list[ConstantPlan]] = defaultdict(list)
    for plan in analysis.plans:
        for gid in plan.groups:
            plans_of[gid].append(plan)
    classes = {g.id: set(g.classes) for g in analysis.groups}
    for component in _coupled_groups(analysis.plans):
        while True:
            active = [g for g in sorted(component) if classes[g] & selection.removed]
            if not active:
                break
            own = {g: _change(analysis, plans_of, classes, [g], selection.removed)[0] for g in active}
            gid = max(active, key=own.get)
            together, _ = _change(analysis, plans_of, classes, active, selection.removed)
            if own[gid] <= 0 and together <= 0:
                break
            culprits = [gid] if own[gid] > 0 else active
            _, worst = _change(analysis, plans_of, classes, culprits, selection.removed)
            added, freed = _growth(analysis, plans_of, classes, culprits, selection.removed)
            selection.removed -= classes[gid]
            total = len(classes[gid])
            selection.kept[gid] = (total, total)
            selection.kept_whole[gid] = (
                f"kept whole: pruning it would un-share constant '{worst.tensor.name}' (read "
                f"{len(worst.cuts)} times, cut differently), storing {added} parameters where {freed} are "
                "removed")


def _coupled_groups(plans: list[ConstantPlan]) -> list[set[int]]:
    """Sets of groups tied by constants that can be un-shared (connected components)."""
    parent: dict[int, int] = {}

    def find(g: int) -> int:
        while parent.setdefault(g, g) != g:
            g = parent[g]
        return g

    for plan in plans:
        if plan.diverges:
            first, *rest = sorted(plan.groups)
            find(first)
            for g in rest:
                parent[find(g)] = find(first)
    components: dict[int, set[int]] = defaultdict(set)
    for g in list(parent):
        components[find(g)].add(g)
    return list(components.values())


def _deltas(analysis, plans_of, classes, gids, removed) -> list[tuple[ConstantPlan, int]]:
    """Per constant the groups touch: elements stored with their removal minus without it."""
    without = set(removed)
    for g in gids:
        without -= classes[g]
    plans = list({id(p): p for g in gids for p in plans_of[g]}.values())
    if not plans:
        return []
    keep_with, keep_without = analysis.keep_fn(removed), analysis.keep_fn(without)
    return [(p, p.stored(keep_with) - p.stored(keep_without)) for p in plans]


def _change(analysis, plans_of, classes, gids, removed) -> tuple[int, ConstantPlan | None]:
    """Net change in stored elements the groups' removal causes, and the constant growing most."""
    deltas = _deltas(analysis, plans_of, classes, gids, removed) if gids else []
    worst = max(deltas, key=lambda d: d[1], default=(None, 0))[0]
    return sum(d for _, d in deltas), worst


def _growth(analysis, plans_of, classes, gids, removed) -> tuple[int, int]:
    deltas = [d for _, d in _deltas(analysis, plans_of, classes, gids, removed)]
    return sum(d for d in deltas if d > 0), -sum(d for d in deltas if d < 0)


def select_by_ratio(analysis: Analysis, scores: dict[int, np.ndarray], ratio: float,
                    round_to: int = 1) -> Selection:
    """Remove the lowest-scored ``ratio`` of every prunable group."""
    counts = {g.id: kept_count(g.channels, ratio, round_to) for g in analysis.prunable_groups}
    return select_by_counts(analysis, scores, counts)


def block_count(analysis: Analysis, ratio: float, count: int | None) -> int:
    """How many residual blocks go: ``count`` (``--blocks``), else ``ratio`` of the removable
    ones, rounded; never all of them."""
    total = len(analysis.removable_blocks)
    wanted = math.floor(ratio * total + 0.5) if count is None else count
    return max(0, min(wanted, total - 1)) if total else 0


def select_blocks(analysis: Analysis, scores: dict[int, float], count: int) -> set[int]:
    """The ``count`` removable blocks whose removal changes least (lowest scores; ties: later first)."""
    blocks = sorted(analysis.removable_blocks, key=lambda b: (scores[b.id], -b.id))
    return {b.id for b in blocks[:count]}
