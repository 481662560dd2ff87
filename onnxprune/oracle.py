"""The oracle: the original model with the removed channels' contributions zeroed.

A removed channel can only reach the outputs through a layer that contracts over channels
(Conv, Gemm, MatMul input side); everything else it passes through is channel-wise, and any op
that mixes channels otherwise blocks the group. So zeroing the consuming layers' input weights
for the removed channels must give exactly what the pruned model computes. Tests run both.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .analysis import Analysis
from .io import read_values
from .ops import spec_for


def _zeroed_input(site) -> tuple[int, int]:
    """The input and axis whose indices zero the site's weights: the weight itself, or for a
    packed weight the input its spec names (MatMulNBits: the scales; a zero scale zeroes a block)."""
    through = spec_for(site.node).zero_through
    return through(site.input_index, site.axis) if through is not None else (site.input_index, site.axis)


def zeroed_model(analysis: Analysis, removed: set[int], blocks=frozenset()) -> onnx.ModelProto:
    """Export ``analysis.graph`` with removed channels zeroed at their consumers, and the removed
    residual blocks' (ids ``blocks``) output projections zeroed (graph untouched)."""
    if blocks:
        with _blocks_zeroed(analysis, blocks):
            return zeroed_model(analysis, removed)
    keep = analysis.keep_fn(removed)
    swaps = []
    zeroed: dict[tuple[int, int], np.ndarray] = {}
    for site in analysis.sites:
        if site.role != "weight_in":
            continue
        mask = keep(site.atoms)
        if mask.all():
            continue
        index_in, axis = _zeroed_input(site)
        key = (id(site.node), index_in)
        if key not in zeroed:
            zeroed[key] = np.array(read_values(site.node.inputs[index_in]) if index_in != site.input_index
                                   else site.raw_values, copy=True)
        if site.decode is not None:  # an integer weight: zero is its zero point
            zeroed[key] = site.decode.zeroed(zeroed[key], site.axis, np.flatnonzero(~mask))
            continue
        index = [slice(None)] * zeroed[key].ndim
        index[axis] = np.flatnonzero(~mask)
        zeroed[key][tuple(index)] = 0
    try:
        for site in analysis.sites:
            index_in = _zeroed_input(site)[0] if site.role == "weight_in" else None
            key = (id(site.node), index_in)
            if key in zeroed:
                original = site.node.inputs[index_in]
                if isinstance(original, gs.Constant) and original.name.endswith("__zeroed"):
                    continue
                swaps.append((site.node, index_in, original))
                site.node.inputs[index_in] = gs.Constant(f"{site.node.name}__input{index_in}__zeroed", zeroed.pop(key))
        return gs.export_onnx(analysis.graph, do_type_check=False)
    finally:
        for node, index, original in reversed(swaps):
            node.inputs[index] = original


@contextlib.contextmanager
def _blocks_zeroed(analysis: Analysis, blocks):
    """While inside, each removed block's zeroing constants (``Block.zeroed``: its output
    projection's weights and bias, the bias adds and normalisation parameters after it) are
    zeros, a copy per reading node; the branch's output is then zero, as if it were removed."""
    nodes = {n.name: n for n in analysis.graph.nodes}
    swaps = []
    for block in analysis.blocks:
        if block.id not in blocks:
            continue
        for name, index in block.zeroed:
            node = nodes[name]
            original = node.inputs[index]
            zeros = np.zeros_like(np.asarray(read_values(original)))
            swaps.append((node, index, original))
            node.inputs[index] = gs.Constant(f"{name}__input{index}__block_zeroed", zeros)
    try:
        yield
    finally:
        for node, index, original in reversed(swaps):
            node.inputs[index] = original
