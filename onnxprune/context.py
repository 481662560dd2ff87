"""The pruning context: the one object that travels through the passes.

Each pass reads what earlier passes left here and adds its part; none reaches back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .analysis import Analysis
from .selection import Selection


@dataclass
class PruneOptions:
    """Settings shared by the CLI and the Python API (same names, same defaults)."""

    ratio: float = 0.3
    criterion: str = "l1"
    round_to: int = 1


@dataclass
class PruningContext:
    model: onnx.ModelProto
    options: PruneOptions = field(default_factory=PruneOptions)
    opset: int = 0
    graph: gs.Graph | None = None
    analysis: Analysis | None = None
    scores: dict[int, np.ndarray] = field(default_factory=dict)
    selection: Selection | None = None
    pruned: onnx.ModelProto | None = None
    report: dict[str, Any] = field(default_factory=dict)
