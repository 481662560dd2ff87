"""What a search (or a profile) is given: the problem it prunes and how it steps and measures.

Small frozen values instead of long positional parameter lists; ``SearchSettings.from_options``
reads them from ``PruneOptions``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..analysis import Analysis


@dataclass(frozen=True)
class SearchProblem:
    """What a search prunes: the analysed graph, the model it came from, the channels' scores,
    and the calibration data (with it, the accuracy guard of ``search.guard`` runs)."""

    analysis: Analysis
    graph: gs.Graph
    opset: int
    template: onnx.ModelProto
    scores: dict[int, np.ndarray]
    calibration: Any = None
    #: ids of the residual blocks every candidate removes (``search.blocks`` tries several sets)
    blocks: frozenset = frozenset()


@dataclass(frozen=True)
class SearchSettings:
    """How a search steps and measures: widths in multiples of ``round_to``; latency on ``provider``
    with ``threads``, on ``feeds`` (e.g. a calibration batch) or random inputs of ``input_shapes``,
    or predicted by ``table`` (profiled for the model of ``model_sha256``); ``log`` gets progress."""

    round_to: int = 1
    provider: str = "cpu"
    threads: int | None = None
    input_shapes: dict[str, list[int]] | None = None
    feeds: dict[str, np.ndarray] | None = None
    table: Any = None
    model_sha256: str | None = None
    log: Callable[[str], None] | None = None
    #: the input shapes a FLOPs target is counted at: the summary's (``--input-shape`` or a calibration sample's)
    flop_shapes: dict[str, list[int]] | None = None
    #: (model bytes, io cuts) -> the model that ships (quantized), timed in place of each candidate
    ship: Callable[[bytes, dict], bytes] | None = None

    @classmethod
    def from_options(cls, options: Any, **found: Any) -> SearchSettings:
        """From ``PruneOptions``, plus what the search pass found (feeds, table, fingerprint, log)."""
        return cls(round_to=options.round_to, provider=options.provider, threads=options.threads,
                   input_shapes=options.input_shapes, **found)
