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
from .options import PruneOptions
from .selection import Selection


@dataclass
class PruningContext:
    model: onnx.ModelProto
    #: the options given (frozen: ``PruneOptions`` cannot be changed), defaults resolved by the passes into copies
    options: PruneOptions = field(default_factory=PruneOptions)
    opset: int = 0
    graph: gs.Graph | None = None
    analysis: Analysis | None = None
    scores: dict[int, np.ndarray] = field(default_factory=dict)
    #: residual block id -> how much removing it changes the stream (``scoring.blocks``)
    block_scores: dict[int, float] = field(default_factory=dict)
    selection: Selection | None = None
    pruned: onnx.ModelProto | None = None
    #: ``pruned`` quantized (``--quantize``): the model that ships, when there is one
    quantized: onnx.ModelProto | None = None
    #: the validated calibration source (re-iterable), when one was given
    calibration: Any = None
    #: per-channel statistics of the activations entering each consuming layer
    stats: dict[str, Any] = field(default_factory=dict)
    #: the normalized graph, for reconstruction (``graph`` itself: the rewrite works on a copy)
    original: gs.Graph | None = None
    #: the pruned graph (a new one, ``graph`` stays the original), which reconstruction refines
    pruned_graph: gs.Graph | None = None
    report: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: the file the model was read from (None for a proto): config files beside it are read
    source: Any = None
    #: the config files beside the model that fix per-layer counts (``model_config.ModelConfig``)
    model_configs: list = field(default_factory=list)

