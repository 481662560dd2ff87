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
    criterion could not do as asked (e.g. groups it scored by a fallback).

    Scores are always finite: a prunable group whose scores are not (non-finite activations on
    calibration data, a scorer returning NaN) is scored by ``FINITE_FALLBACK`` from its weights,
    or, where those are not finite either, kept whole with the reason."""
    with np.errstate(all="ignore"):  # non-finite statistics are caught below, group by group
        if criterion in CUSTOM_CRITERIA:
            per_class = CUSTOM_CRITERIA[criterion][0](analysis, stats or {})
        elif criterion in GRAM_CRITERIA:
            per_class = GRAM_CRITERIA[criterion](analysis, stats, notes)
        elif criterion in ACTIVATION_CRITERIA:
            per_class = ACTIVATION_CRITERIA[criterion](analysis, stats)
        else:
            per_class = WEIGHT_CRITERIA[criterion](analysis)
    scores = {g.id: np.array([per_class.get(r, 0.0) for r in g.classes], dtype=np.float64) for g in analysis.groups}
    _make_finite(analysis, scores, stats or {}, criterion, notes if notes is not None else [])
    return scores


#: The weight criterion a group falls back to when its activation scores are not finite.
FINITE_FALLBACK = "l1"


def _make_finite(analysis: Analysis, scores: dict[int, np.ndarray], stats: dict, criterion: str,
                 notes: list[str]) -> None:
    """Replace the scores of prunable groups that are not finite (see ``score_groups``)."""
    fallback = None
    for group in analysis.prunable_groups:
        if np.isfinite(scores[group.id]).all():
            continue
        if fallback is None:
            with np.errstate(all="ignore"):
                fallback = WEIGHT_CRITERIA[FINITE_FALLBACK](analysis)
        seen = _non_finite_tensors(analysis, group, stats)
        why = (f"non-finite activations on calibration data at {', '.join(seen)}" if seen
               else "scores not finite (a Gram matrix or statistic overflowed or is degenerate)")
        values = np.array([fallback.get(r, 0.0) for r in group.classes], dtype=np.float64)
        if np.isfinite(values).all():
            scores[group.id] = values
            notes.append(f"group {group.id} ({group.name}) scored by {FINITE_FALLBACK}: {criterion} {why}")
        else:
            scores[group.id] = np.zeros(group.channels)
            group.reasons.append(f"kept whole: {criterion} {why}, and its weights are not finite either")
            notes.append(f"group {group.id} ({group.name}) kept whole: {why} (weights not finite either)")


def _non_finite_tensors(analysis: Analysis, group, stats: dict) -> list[str]:
    """The tensors entering the group's consumers where calibration saw NaN or Inf."""
    members = set(group.classes)
    names: dict[str, str] = {}
    for site in analysis.sites:
        name = site.node.inputs[0].name if site.role == "weight_in" else None
        s = stats.get(name) if name is not None else None
        if s is not None and getattr(s, "non_finite", 0) and not members.isdisjoint(analysis.root[site.atoms].tolist()):
            names[name] = f"{name} ({s.non_finite} values)"
    return list(names.values())


__all__ = ["CRITERIA", "needs_activations", "needs_grams", "register_criterion", "score_groups", "sink_tensors"]
