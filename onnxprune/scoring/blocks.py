"""How much each residual block changes the stream: the score that chooses which blocks go.

On calibration data a block's score is the relative change it makes to the stream,
``‖y − p‖ / ‖y‖`` over all samples (``p`` the stream in, ``y = p + q`` the stream out, ``q`` the
branch's output plus any bias a fused join adds with it): what dropping
the block alone does to the stream there, one minus a cosine in spirit (ShortGPT's block
influence), but without needing to know which axis holds the channels. Without data, the RMS of
the weights that zero the branch (its output projection and what follows it) stands in: a
rough ranking, said so in a warning.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis import Analysis
from ..io import read_values

#: blocks captured per session: their stream and output tensors are held for one batch at a time
BLOCKS_PER_PASS = 8


def block_scores_from_weights(analysis: Analysis) -> dict[int, float]:
    """Per removable block, the RMS of its zeroing constants (higher = keep)."""
    nodes = {n.name: n for n in analysis.graph.nodes}
    scores = {}
    for block in analysis.removable_blocks:
        values = [np.asarray(read_values(nodes[name].inputs[index]), dtype=np.float64).ravel()
                  for name, index in block.zeroed]
        flat = np.concatenate(values) if values else np.zeros(1)
        scores[block.id] = float(np.sqrt(np.mean(flat ** 2)))
    return scores


def block_scores_from_data(analysis: Analysis, graph: gs.Graph, batches: Iterable[dict],
                           threads: int | None = None) -> dict[int, float]:
    """Per removable block, ``‖y − p‖ / ‖y‖`` on the calibration batches (higher = keep)."""
    from ..runtime.capture import capture, capture_session

    blocks = analysis.removable_blocks
    bias = _fused_biases(analysis, graph)
    scores: dict[int, float] = {}
    for start in range(0, len(blocks), BLOCKS_PER_PASS):
        chunk = blocks[start:start + BLOCKS_PER_PASS]
        session = capture_session(graph, sorted({b.stream for b in chunk} | {b.branch for b in chunk}), threads)
        change = {b.id: 0.0 for b in chunk}
        total = dict(change)
        for feeds in batches:
            got = capture(session, feeds)
            for b in chunk:  # y = p + q (+ the bias a fused join adds): the stream out
                p, q = got[b.stream].astype(np.float64), got[b.branch].astype(np.float64) + bias[b.id]
                change[b.id] += float(np.sum(np.broadcast_to(q, p.shape) ** 2))
                total[b.id] += float(np.sum((p + q) ** 2))
        for bid, moved in change.items():
            score = float(np.sqrt(moved / total[bid])) if total[bid] > 0 else 0.0
            scores[bid] = score if np.isfinite(score) else float("inf")  # not finite: kept
    return scores


def _fused_biases(analysis: Analysis, graph: gs.Graph) -> dict[int, np.ndarray | float]:
    """Per removable block, the bias its join adds with the branch (a fused Skip*LayerNorm's),
    or 0: the join's output there is normalised, so the stream out is computed as p + q + bias."""
    from ..ops import spec_for

    nodes = {n.name: n for n in graph.nodes}
    out: dict[int, np.ndarray | float] = {}
    for block in analysis.removable_blocks:
        join = nodes[block.join]
        spec = spec_for(join).join
        values = [np.asarray(read_values(join.inputs[i]), dtype=np.float64) for i in (spec.bias if spec else ())
                  if i < len(join.inputs) and isinstance(join.inputs[i], gs.Constant)]
        out[block.id] = sum(values) if values else 0.0
    return out
