"""The pruning context: the one object that travels through the passes.

Each pass reads what earlier passes left here and adds its part; none reaches back.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, field, fields
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


class FrozenOptions(PruneOptions):
    """A copy of a ``PruneOptions`` that cannot be changed: what the context holds, so that
    resolving defaults (``passes.builtin.resolve_options``) never writes into the caller's
    object, which can be reused for another run. ``dataclasses.replace`` gives a new frozen copy."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "input_shapes", dict(self.input_shapes))  # not the caller's dict
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise FrozenInstanceError(f"cannot assign to field '{name}' of the context's options (a frozen copy)")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field '{name}' of the context's options (a frozen copy)")


def frozen_options(options: PruneOptions | None) -> FrozenOptions:
    """A frozen copy of ``options`` (the defaults if None); a frozen one is returned as it is."""
    if isinstance(options, FrozenOptions):
        return options
    options = options if options is not None else PruneOptions()
    return FrozenOptions(**{f.name: getattr(options, f.name) for f in fields(PruneOptions)})


@dataclass
class PruningContext:
    model: onnx.ModelProto
    #: a frozen copy of the options given (see ``FrozenOptions``), defaults resolved by the passes
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
    #: the normalized graph, for reconstruction (``graph`` itself: the rewrite works on a copy)
    original: gs.Graph | None = None
    #: the pruned graph (a new one, ``graph`` stays the original), which reconstruction refines
    pruned_graph: gs.Graph | None = None
    report: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.options = frozen_options(self.options)
