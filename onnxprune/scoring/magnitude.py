"""Scores from the weights alone: L1/L2 norms over every weight a channel owns, or BN |gamma|.

A channel's weights are spread over several tensors (its conv's output filter, the next layer's
input columns, BN parameters...). Each tensor's per-channel norms are divided by their mean, so a
wide layer does not drown a narrow one, and then summed over the tensors of the group.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..analysis import Analysis

_WEIGHT_ROLES = ("weight_out", "weight_in", "bn_scale")


def _per_index_norm(values: np.ndarray, axis: int, p: int) -> np.ndarray:
    flat = np.moveaxis(values.astype(np.float64), axis, 0).reshape(values.shape[axis], -1)
    if p == 1:
        return np.abs(flat).sum(axis=1)
    return np.sqrt((flat * flat).sum(axis=1))


def add_site_scores(scores: dict[int, float], analysis: Analysis, site, values: np.ndarray) -> None:
    """Add one weight site's per-index values to its channels' scores, after dividing them by
    their mean, so every layer weighs the same whatever its width or scale."""
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean()
    if mean > 0:
        values = values / mean
    for r, v in zip(analysis.root[site.atoms].tolist(), values.tolist()):
        scores[r] += v


def _accumulate(analysis: Analysis, roles: tuple[str, ...], p: int) -> dict[int, float]:
    scores: dict[int, float] = defaultdict(float)
    for site in analysis.sites:
        if site.role in roles:
            add_site_scores(scores, analysis, site, _per_index_norm(site.values, site.axis, p))
    return scores


def l1(analysis: Analysis) -> dict[int, float]:
    return _accumulate(analysis, _WEIGHT_ROLES, 1)


def l2(analysis: Analysis) -> dict[int, float]:
    return _accumulate(analysis, _WEIGHT_ROLES, 2)


def bn(analysis: Analysis) -> dict[int, float]:
    """|gamma| of the group's BatchNorms (Network Slimming); L1 where a group has no BatchNorm."""
    gamma = _accumulate(analysis, ("bn_scale",), 1)
    fallback = l1(analysis)
    out = {}
    for group in analysis.groups:
        source = gamma if any(r in gamma for r in group.classes) else fallback
        for r in group.classes:
            out[r] = source.get(r, 0.0)
    return out


CRITERIA = {"l1": l1, "l2": l2, "bn": bn}
