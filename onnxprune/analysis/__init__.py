"""Dependency analysis: which channels must be removed together, and what to slice for each."""

from .groups import Analysis, Group, analyze_graph

__all__ = ["Analysis", "Group", "analyze_graph"]
