"""How much each residual block changes the stream: the score that chooses which blocks go.

On calibration data a block's score is the relative change it makes to the stream,
``‖y − p‖ / ‖y‖`` over all samples (``p`` the stream in, ``y`` the join's output): what dropping
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

    nodes = {n.name: n for n in graph.nodes}
    blocks = analysis.removable_blocks
    scores: dict[int, float] = {}
    for start in range(0, len(blocks), BLOCKS_PER_PASS):
        chunk = blocks[start:start + BLOCKS_PER_PASS]
        outs = {b.id: nodes[b.join].outputs[0].name for b in chunk}
        names = sorted({b.stream for b in chunk} | set(outs.values()))
        session = capture_session(graph, names, threads)
        change = dict.fromkeys(outs, 0.0)
        total = dict.fromkeys(outs, 0.0)
        for feeds in batches:
            got = capture(session, feeds)
            for b in chunk:
                p, y = got[b.stream].astype(np.float64), got[outs[b.id]].astype(np.float64)
                change[b.id] += float(np.sum((y - p) ** 2))
                total[b.id] += float(np.sum(y ** 2))
        for bid in outs:
            score = float(np.sqrt(change[bid] / total[bid])) if total[bid] > 0 else 0.0
            scores[bid] = score if np.isfinite(score) else float("inf")  # not finite: kept
    return scores
