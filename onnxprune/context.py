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
    #: None: "l1" without calibration data, DEFAULT_CALIBRATED_CRITERION with it
    criterion: str | None = None
    round_to: int = 1
    #: a .npz file, a folder of .npz files, a .py file defining load_data(), or an iterable of dicts
    calibration: Any = None
    calib_samples: int | None = None
    #: input rows per layer and calibration sample for Gram matrices (conv patches are subsampled)
    calib_rows: int = 256
    #: None: "lstsq" with calibration data, "none" without; or "none", "bias", "lstsq"
    reconstruct: str | None = None
    #: None: chosen per layer on held-out calibration rows
    ridge: float | None = None
    #: a ``search.Target`` (latency, FLOPs or params) instead of ``ratio``
    target: Any = None
    #: where latency is measured: ONNX Runtime provider ("cpu" or "cuda") and intra-op threads
    provider: str = "cpu"
    threads: int | None = None
    #: shapes for inputs with dynamic dimensions, {name: [dims]} (else a calibration batch's)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    #: a latency table profiled on the target device (``onnxprune profile``) instead of measuring here
    latency_table: Any = None
    #: time the original and the pruned model side by side at the end (the benchmark pass)
    benchmark: bool = False
    #: which kinds of group to prune: "heads" (whole attention heads), "channels" (everything else)
    prune: tuple[str, ...] = ("heads", "channels")


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
    #: the validated calibration source (re-iterable), when one was given
    calibration: Any = None
    #: per-channel statistics of the activations entering each consuming layer
    stats: dict[str, Any] = field(default_factory=dict)
    #: the normalized graph before the rewrite, kept for reconstruction
    original: gs.Graph | None = None
    #: the pruned graph, which reconstruction refines
    pruned_graph: gs.Graph | None = None
    report: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
