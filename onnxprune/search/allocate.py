"""Spend a cost budget across groups: cut where a unit of importance buys the most cost.

Greedy, in the spirit of NetAdapt and Torch-Pruning's global pruning: every group sits at one
of its candidate widths; each step moves the one group whose next narrower width saves the most
cost per unit of importance lost, until the model's predicted cost is within budget. Scores are
normalised to mean 1 within each group, so importance is comparable across groups, and a group
loses its lowest-scored channels first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cost import CostModel


@dataclass
class Allocation:
    """Widths chosen per group, the model's prediction for them, and whether the budget was met."""

    counts: dict[int, int]
    predicted: float
    met: bool


def _importance_curves(scores: dict[int, np.ndarray], steps: dict[int, list[int]]) -> dict[int, np.ndarray]:
    """Per group: the importance lost by removing its ``k`` lowest-scored channels, for every ``k``."""
    lost = {}
    for g, widths in steps.items():
        s = np.clip(np.asarray(scores[g], dtype=np.float64), 0.0, None)
        mean = s.mean() if len(s) and s.mean() > 0 else 1.0
        lost[g] = np.concatenate([[0.0], np.cumsum(np.sort(s / mean))])
    return lost


def allocate(model: CostModel, scores: dict[int, np.ndarray], budget: float) -> Allocation:
    """Narrow groups step by step until ``model.total(counts) <= budget`` or none can narrow."""
    counts = {g: widths[0] for g, widths in model.steps.items()}
    position = {g: 0 for g in model.steps}
    lost = _importance_curves(scores, model.steps)
    total = model.total(counts)
    while total > budget:
        best, best_value = None, -1.0
        for g, widths in model.steps.items():
            i = position[g]
            if i + 1 >= len(widths):
                continue
            full = widths[0]
            saving = model.saving(g, widths[i + 1], counts)
            if saving <= 0:
                continue
            cost = lost[g][full - widths[i + 1]] - lost[g][full - widths[i]]
            value = saving / cost if cost > 0 else float("inf")
            if value > best_value or (value == best_value and best is not None and g < best):
                best, best_value = g, value
        if best is None:
            return Allocation(counts, total, False)
        position[best] += 1
        counts[best] = model.steps[best][position[best]]
        total = model.total(counts)
    return Allocation(counts, total, True)
