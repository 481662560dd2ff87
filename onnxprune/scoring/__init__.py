"""Channel importance criteria. Each returns, per group, one score per channel (higher = keep)."""

from __future__ import annotations

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


def needs_activations(criterion: str) -> bool:
    return criterion in ACTIVATION_CRITERIA


def needs_grams(criterion: str) -> bool:
    """Whether calibration must gather each consumer's input Gram matrix for ``criterion``."""
    return criterion in GRAM_CRITERIA


def score_groups(analysis: Analysis, criterion: str, stats: dict | None = None,
                 notes: list[str] | None = None) -> dict[int, np.ndarray]:
    """Per group id: an array of scores aligned with ``group.classes``. ``notes`` collects what a
    criterion could not do as asked (e.g. groups it scored by a fallback)."""
    if criterion in GRAM_CRITERIA:
        per_class = GRAM_CRITERIA[criterion](analysis, stats, notes)
    elif criterion in ACTIVATION_CRITERIA:
        per_class = ACTIVATION_CRITERIA[criterion](analysis, stats)
    else:
        per_class = WEIGHT_CRITERIA[criterion](analysis)
    return {g.id: np.array([per_class.get(r, 0.0) for r in g.classes]) for g in analysis.groups}


__all__ = ["CRITERIA", "needs_activations", "needs_grams", "score_groups", "sink_tensors"]
