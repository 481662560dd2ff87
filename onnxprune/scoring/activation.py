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

import numpy as np

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


def _pooled(site, per_channel: np.ndarray, how) -> np.ndarray:
    """Per-channel statistics pooled over the channels each index of ``site`` covers (a
    quantization block, ``SliceSite.unit``); unchanged where an index is one channel."""
    if site.unit == 1:
        return per_channel
    return how(per_channel, np.arange(0, len(per_channel), site.unit))


def _mean(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(x, starts) / np.diff(np.append(starts, len(x)))


def _root_sum_square(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.sqrt(np.add.reduceat(x * x, starts))


def activation(analysis: Analysis, stats: dict[str, ChannelStats]) -> dict[int, float]:
    return _accumulate(analysis, stats, lambda site, s: _pooled(site, s.mean_abs, _mean))


def apoz(analysis: Analysis, stats: dict[str, ChannelStats]) -> dict[int, float]:
    return _accumulate(analysis, stats, lambda site, s: 1.0 - _pooled(site, s.zero_fraction, _mean))


def wanda(analysis: Analysis, stats: dict[str, ChannelStats]) -> dict[int, float]:
    return _accumulate(analysis, stats, lambda site, s: _per_index_norm(site.values, site.axis, 1)
                       * _pooled(site, s.l2, _root_sum_square))


def fluctuation(analysis: Analysis, stats: dict[str, ChannelStats]) -> dict[int, float]:
    return _accumulate(analysis, stats, lambda site, s: _pooled(site, s.var, np.add.reduceat)
                       * _per_index_norm(site.values, site.axis, 2) ** 2)


ACTIVATION_CRITERIA = {"activation": activation, "apoz": apoz, "wanda": wanda, "fluctuation": fluctuation}
