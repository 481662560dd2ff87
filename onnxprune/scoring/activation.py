"""Scores from activations on calibration data, seen at the layers that consume the channels.

- activation: mean |x| of the channel (Network Trimming's magnitude)
- apoz: 1 - fraction of zeros (Network Trimming's APoZ, higher = more alive)
- wanda: |W| · ‖X‖, the consumer's weights times the channel's input norm (Wanda, per structure)
- fluctuation: Var(X) · ‖W‖² (FLAP): how much the consumer's output moves with the channel
  (``obs`` in ``obs.py`` is its reconstruction-aware refinement, with the full Gram matrix)

Each consuming layer's scores are divided by their mean before summing over a group, so wide and
narrow layers weigh the same and global comparisons across layers are meaningful.
"""

from __future__ import annotations

from collections import defaultdict

from ..analysis import Analysis
from ..calibration.collect import sink_tensors  # noqa: F401  (re-exported)
from ..calibration.stats import ChannelStats
from .magnitude import _per_index_norm, add_site_scores


def _accumulate(analysis: Analysis, stats: dict[str, ChannelStats], per_site) -> dict[int, float]:
    scores: dict[int, float] = defaultdict(float)
    for site in analysis.sites:
        if site.role == "weight_in":
            add_site_scores(scores, analysis, site, per_site(site, stats[site.node.inputs[0].name]))
    return scores


def activation(analysis: Analysis, stats: dict[str, ChannelStats]) -> dict[int, float]:
    return _accumulate(analysis, stats, lambda site, s: s.mean_abs)


def apoz(analysis: Analysis, stats: dict[str, ChannelStats]) -> dict[int, float]:
    return _accumulate(analysis, stats, lambda site, s: 1.0 - s.zero_fraction)


def wanda(analysis: Analysis, stats: dict[str, ChannelStats]) -> dict[int, float]:
    return _accumulate(analysis, stats, lambda site, s: _per_index_norm(site.values, site.axis, 1) * s.l2)


def fluctuation(analysis: Analysis, stats: dict[str, ChannelStats]) -> dict[int, float]:
    return _accumulate(analysis, stats, lambda site, s: s.var * _per_index_norm(site.values, site.axis, 2) ** 2)


ACTIVATION_CRITERIA = {"activation": activation, "apoz": apoz, "wanda": wanda, "fluctuation": fluctuation}
