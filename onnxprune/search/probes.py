"""The weight layers a latency search times: which layers, and their one-node probe models.

What a layer's widths mean per op (its probe) and what it costs (its FLOP formula) is op
knowledge, in the op's spec (:mod:`onnxprune.ops`); :mod:`onnxprune.ops.probe` builds the
models. A layer whose op has no probe is not modelled (its time counts in the rest of the
model, which scales with the modelled part).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..analysis import Analysis
from ..ops.probe import WEIGHT_INPUT, LayerSpec, Probe, base_spec, has_probe, probe_model, resized

__all__ = ["WEIGHT_INPUT", "LayerSpec", "Probe", "base_spec", "layer_nodes", "probe_model", "resized"]


def layer_nodes(analysis: Analysis) -> dict[str, gs.Node]:
    """The weight layers that prunable groups touch and that have a probe, by node name."""
    prunable = {r for g in analysis.prunable_groups for r in g.classes}
    found: dict[str, gs.Node] = {}
    for site in analysis.sites:
        if site.role in ("weight_out", "weight_in") and site.input_index == WEIGHT_INPUT \
                and has_probe(site.node) and not prunable.isdisjoint(analysis.root[site.atoms].tolist()):
            found[site.node.name] = site.node
    return found
