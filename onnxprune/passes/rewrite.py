"""Rewrite: physically remove the selected channels and check the result.

Every weight site is sliced with the kept mask of its atoms, every edit (group attributes, split
sizes, slice bounds, shape constants) is applied, shapes are re-inferred and the model must pass
``onnx.checker`` in full mode; if it does not, nothing is returned.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..analysis import Analysis
from ..analysis.state import set_const_input
from ..errors import RewriteError
from ..io import (EXTERNAL_DATA_THRESHOLD, check_deferred, copy_model_fields, export_deferred, has_external_values,
                  read_values, uses_external_data, weights_nbytes)
from .normalize import infer_shapes


def _slices_by_input(analysis: Analysis, keep) -> dict:
    by_input: dict[tuple[int, int], tuple[gs.Node, int, list]] = {}
    for site in analysis.sites:
        mask = keep(site.atoms)
        if mask.all():
            continue
        key = (id(site.node), site.input_index)
        by_input.setdefault(key, (site.node, site.input_index, []))[2].append((site.axis, mask))
    return by_input


def rewrite(analysis: Analysis, removed: set[int]) -> gs.Graph:
    """Apply the removal to ``analysis.graph`` in place and return it with shapes re-inferred."""
    graph = analysis.graph
    keep = analysis.keep_fn(removed)
    for node, index, cuts in _slices_by_input(analysis, keep).values():
        values = read_values(node.inputs[index])  # weights in external data: mapped, not kept
        for axis, mask in cuts:
            values = np.compress(mask, values, axis=axis)
        set_const_input(node, index, np.asarray(values))
    for edit in analysis.state.edits:
        edit.apply(keep)
    io = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in io:
            tensor.shape = None
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return infer_shapes(graph)


def export_checked(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export with the input model's metadata, and validate fully.

    A model read with external data, or too large for one protobuf, is exported with its large
    weights deferred (references without bytes, see ``io.export_deferred``): the proto stays
    small, and ``io.save_model`` streams the weights from ``graph`` to the data file.
    """
    deferred = uses_external_data(template) or has_external_values(graph) \
        or weights_nbytes(graph) > EXTERNAL_DATA_THRESHOLD
    model = export_deferred(graph) if deferred else gs.export_onnx(graph, do_type_check=False)
    copy_model_fields(template, model)
    model.ir_version = max(template.ir_version, 4)
    try:
        if deferred:
            check_deferred(model, full_check=True)
        else:
            onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RewriteError(f"pruned model failed validation: {first}") from None
    return model
