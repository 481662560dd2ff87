"""Channel importance criteria. Each returns, per group, one score per channel (higher = keep)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..analysis import Analysis
from .activation import ACTIVATION_CRITERIA as _PER_CHANNEL, sink_tensors
from .magnitude import CRITERIA as WEIGHT_CRITERIA
from .obs import obs as _obs

#: criteria from the Gram matrices of the consumers' inputs (calibration gathers them)
GRAM_CRITERIA = {"obs": _obs}
ACTIVATION_CRITERIA = {**_PER_CHANNEL, **GRAM_CRITERIA}

#: every criterion name; the activation ones need calibration statistics
CRITERIA = [*WEIGHT_CRITERIA, *ACTIVATION_CRITERIA]

#: criteria registered by users: name -> (function, whether it needs calibration statistics)
CUSTOM_CRITERIA: dict[str, tuple[Callable, bool]] = {}


def register_criterion(name: str, fn: Callable[[Analysis, dict], dict[int, float]], *,
                       needs_activations: bool = False) -> None:
    """Make ``fn(analysis, stats) -> {channel class: score}`` usable as ``criterion=name``.

    A channel class is the union-find root the analysis gives a removable channel
    (``group.classes``); higher scores are kept. With ``needs_activations`` the calibrate pass
    runs first and ``stats`` maps each tensor where channels enter a consuming layer to its
    per-channel statistics (``calibration.stats.ChannelStats``); otherwise ``stats`` is empty.
    """
    if name in CRITERIA:
        raise ValueError(f"criterion '{name}' exists already")
    CUSTOM_CRITERIA[name] = (fn, needs_activations)
    CRITERIA.append(name)


def needs_activations(criterion: str) -> bool:
    if criterion in CUSTOM_CRITERIA:
        return CUSTOM_CRITERIA[criterion][1]
    return criterion in ACTIVATION_CRITERIA


def needs_grams(criterion: str) -> bool:
    """Whether calibration must gather each consumer's input Gram matrix for ``criterion``."""
    return criterion in GRAM_CRITERIA


def score_groups(analysis: Analysis, criterion: str, stats: dict | None = None,
                 notes: list[str] | None = None) -> dict[int, np.ndarray]:
    """Per group id: an array of scores aligned with ``group.classes``. ``notes`` collects what a
    criterion could not do as asked (e.g. groups it scored by a fallback)."""
    if criterion in CUSTOM_CRITERIA:
        per_class = CUSTOM_CRITERIA[criterion][0](analysis, stats or {})
    elif criterion in GRAM_CRITERIA:
        per_class = GRAM_CRITERIA[criterion](analysis, stats, notes)
    elif criterion in ACTIVATION_CRITERIA:
        per_class = ACTIVATION_CRITERIA[criterion](analysis, stats)
    else:
        per_class = WEIGHT_CRITERIA[criterion](analysis)
    return {g.id: np.array([per_class.get(r, 0.0) for r in g.classes]) for g in analysis.groups}


__all__ = ["CRITERIA", "needs_activations", "needs_grams", "register_criterion", "score_groups", "sink_tensors"]
