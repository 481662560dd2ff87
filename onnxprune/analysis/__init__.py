"""Dependency analysis: which channels must be removed together, and what to slice for each."""

from .groups import KINDS, Analysis, Group, analyze_graph, restrict

__all__ = ["KINDS", "Analysis", "Group", "analyze_graph", "restrict"]
