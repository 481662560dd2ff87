"""Searching for the pruning that meets a target: latency measured on a provider, FLOPs or params.

``targets`` parses what the user asks for, ``probes`` builds one-layer models at reduced widths,
``latency_table`` measures them (``onnxprune profile``), ``cost`` turns tables or counts into a
per-group cost model, ``allocate`` spends the budget across groups by importance per unit of
cost, ``target_search`` builds a fixed ladder of candidates and times them end to end for the
least-pruned one that meets the target, and ``guard`` keeps a collapsed allocation from winning.
"""

from .targets import Target, parse_target

__all__ = ["Target", "parse_target"]
