"""Channel importance criteria. Each returns, per group, one score per channel (higher = keep)."""

from .magnitude import CRITERIA, score_groups

__all__ = ["CRITERIA", "score_groups"]
