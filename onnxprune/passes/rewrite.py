"""Rewrite: physically remove the selected channels and check the result.

``apply`` works on a copy of the normalized graph, from the frozen plan alone: the analysed graph
stays the original (reconstruction and the search read it), and a search trial is one ``apply``.
Every weight site is sliced with the kept mask of its atoms, every edit (group attributes, split
sizes, slice bounds, shape constants) is applied, shapes are re-inferred and the model must pass
``onnx.checker`` in full mode; if it does not, nothing is returned.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..analysis.plan import Plan
from ..analysis.state import set_const_input
from ..errors import RewriteError
from ..io import (EXTERNAL_DATA_THRESHOLD, check_deferred, copy_model_fields, export_deferred, has_external_values,
                  read_values, uses_external_data, weights_nbytes)
from .normalize import infer_shapes


def copy_graph(graph: gs.Graph) -> gs.Graph:
    """A copy of ``graph`` that exports to the same bytes: onnx-graphsurgeon's ``copy`` (weights
    shared, never written in place by the rewrite), plus what it leaves out: tensor types and
    data locations, producer fields, and attributes set on the graph by ``io`` (the input's data
    files, which saving must not overwrite)."""
    new = graph.copy()
    for name in set(vars(graph)) - set(vars(new)) | {"producer_name", "producer_version", "name_idx"}:
        setattr(new, name, getattr(graph, name))
    _copy_tensor_fields(graph, new)
    return new


def _copy_tensor_fields(graph: gs.Graph, new: gs.Graph) -> None:
    copies = new.tensors()
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Constant):
            copies[name].data_location = tensor.data_location
        else:
            copies[name].type = tensor.type
    for node, node_copy in zip(graph.nodes, new.nodes):
        for attr, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                _copy_tensor_fields(value, node_copy.attrs[attr])


def _cuts_by_input(plan: Plan, keep) -> dict[tuple[str, int], list]:
    by_input: dict[tuple[str, int], list] = {}
    for cut in plan.cuts:
        mask = keep(cut.atoms)
        if not mask.all():
            by_input.setdefault((cut.node, cut.input_index), []).append((cut.axis, mask))
    return by_input


def apply(plan: Plan, removed: set[int], graph: gs.Graph) -> gs.Graph:
    """The graph with the classes ``removed`` taken out as ``plan`` says, shapes re-inferred: a
    new graph; ``graph`` (the one the plan was made from, or a copy) is left as it is."""
    graph = copy_graph(graph)
    nodes = {node.name: node for node in graph.nodes}
    keep = plan.keep_fn(removed)
    for (name, index), cuts in _cuts_by_input(plan, keep).items():
        node = nodes[name]
        values = read_values(node.inputs[index])  # weights in external data: mapped, not kept
        for axis, mask in cuts:
            values = np.compress(mask, values, axis=axis)
        set_const_input(node, index, np.asarray(values))
    for edit in plan.edits:
        edit.apply(keep, graph, nodes)
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
