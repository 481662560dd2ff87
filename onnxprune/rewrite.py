"""Rewrite: physically remove the selected channels and check the result.

``apply`` works on a copy of the normalized graph, from the frozen plan alone: the analysed graph
stays the original (reconstruction and the search read it), and a search trial is one ``apply``.
Every weight site is sliced with the kept mask of its atoms, every edit (group attributes, split
sizes, slice bounds, shape constants) is applied, shapes are re-inferred and the model must pass
``onnx.checker`` in full mode (in the mode the input passes, if it fails that); if it does
not, nothing is returned.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .analysis import Analysis
from .analysis.plan import Plan
from .analysis.sharing import readers
from .errors import RewriteError
from .io import (EXTERNAL_DATA_THRESHOLD, ExternalValues, SlicedValues, check_deferred, copy_model_fields,
                  export_deferred, has_external_values, lazy_external_values, read_values, uses_external_data, weights_nbytes)
from .normalize import infer_shapes
from .ops import spec_for


def copy_graph(graph: gs.Graph) -> gs.Graph:
    """A copy of ``graph`` that exports to the same bytes: onnx-graphsurgeon's ``copy`` (weights
    shared, never written in place by the rewrite), plus what it leaves out: tensor types and
    data locations, attributes set on tensors by ``normalize`` (fold records), producer fields,
    and attributes set on the graph by ``io`` (the input's data files, which saving must not
    overwrite)."""
    new = graph.copy()
    for name in set(vars(graph)) - set(vars(new)) | {"producer_name", "producer_version", "name_idx"}:
        setattr(new, name, getattr(graph, name))
    _copy_tensor_fields(graph, new)
    return new


def _copy_tensor_fields(graph: gs.Graph, new: gs.Graph) -> None:
    copies = new.tensors()
    for name, tensor in graph.tensors().items():
        copy = copies[name]
        if isinstance(tensor, gs.Constant):
            copy.data_location = tensor.data_location
        else:
            copy.type = tensor.type
        for attr in set(vars(tensor)) - set(vars(copy)):  # set by normalize (e.g. a fold's record)
            setattr(copy, attr, getattr(tensor, attr))
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


def _slice_constants(graph: gs.Graph, nodes: dict[str, gs.Node], by_input: dict[tuple[str, int], list]) -> None:
    """Slice every cut constant once per distinct cut: readers cut alike share one copy (as
    ``analysis.sharing`` plans it), and a constant all its readers cut alike is changed in place
    (in ``graph``, a copy: the values are replaced, never written into)."""
    by_constant: dict[int, tuple[gs.Tensor, dict]] = {}
    for (name, index), cuts in by_input.items():
        node = nodes[name]
        tensor = node.inputs[index]
        signature = tuple(sorted((axis, mask.tobytes()) for axis, mask in cuts))
        entry = by_constant.setdefault(id(tensor), (tensor, {}))
        entry[1].setdefault(signature, (cuts, []))[1].append((node, index))
    outputs = {id(t) for t in graph.outputs}
    for tensor, by_signature in by_constant.values():
        cut_readers = sum(len(r) for _, r in by_signature.values())
        in_place = isinstance(tensor, gs.Constant) and len(by_signature) == 1 \
            and cut_readers == len(readers(tensor)) and id(tensor) not in outputs
        codec = getattr(tensor, "codec", None)  # stored quantized: the codec is cut with the values
        for cuts, reading in by_signature.values():
            values = _sliced(tensor, cuts, codec)
            if in_place:
                tensor.values = values
                if codec is not None:
                    tensor.codec = codec.sliced(cuts, values)
                continue
            node, index = reading[0]
            # One (node, input) pair is unique, so this name is too, and it is the same on every run.
            copy = gs.Constant(f"{node.name}__input{index}", values)
            if codec is not None:
                copy.codec = codec.sliced(cuts, values)
            for node, index in reading:
                node.inputs[index] = copy


def _sliced(tensor: gs.Tensor, cuts: list, codec) -> np.ndarray | SlicedValues:
    """The kept part of a constant: deferred (read from its file when needed) for a weight left
    in its file, so a large model's sliced weights are never all in memory; an array otherwise."""
    if isinstance(tensor, gs.Constant) and type(tensor._values) is ExternalValues and codec is None:
        return SlicedValues(tensor._values, cuts)
    values = read_values(tensor)  # weights in external data: mapped, not kept
    for axis, mask in cuts:
        values = np.compress(mask, values, axis=axis)
    return np.array(values, order="C")  # 0-d stays 0-d


def apply(plan: Plan, removed: set[int], graph: gs.Graph, blocks=frozenset()) -> gs.Graph:
    """The graph with the classes ``removed`` and the residual blocks ``blocks`` (ids) taken out
    as ``plan`` says, shapes re-inferred: a new graph; ``graph`` (the one the plan was made from,
    or a copy) is left as it is."""
    graph = copy_graph(graph)
    nodes = {node.name: node for node in graph.nodes}
    keep = plan.keep_fn(removed)
    _slice_constants(graph, nodes, _cuts_by_input(plan, keep))
    for edit in plan.edits:
        edit.apply(keep, graph, nodes)
    for block in plan.blocks:
        if block.id in blocks:
            _remove_branch(graph, nodes[block.join], block.stream_input)
    io = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in io:
            tensor.shape = None
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return infer_shapes(graph)


def _remove_branch(graph: gs.Graph, join: gs.Node, stream_input: int) -> None:
    """The join's output becomes its stream input: its readers read the stream (the join turns
    into an Identity where its output is a graph output or read inside a subgraph); the branch,
    read by nothing now, goes with the cleanup. The stream is taken from the graph as it is now,
    so that consecutive blocks removed together chain."""
    fused = spec_for(join).join
    if fused is not None and fused.remove is not None:
        fused.remove(graph, join, stream_input)
        return
    stream, out = join.inputs[stream_input], join.outputs[0]
    readers = list(out.outputs)
    if any(out is t for t in graph.outputs) or any(all(t is not out for t in r.inputs) for r in readers):
        join.op, join.domain, join.attrs = "Identity", None, {}
        join.inputs.clear()
        join.inputs.append(stream)
        return
    for reader in readers:
        for i, t in enumerate(reader.inputs):
            if t is out:
                reader.inputs[i] = stream
    join.outputs.clear()
    join.inputs.clear()


def io_shape_changes(original: gs.Graph, pruned: gs.Graph) -> list[dict]:
    """Every graph input and output whose declared shape differs between the two graphs (the
    KV-cache I/O pruned heads resize): ``{"name", "kind": "input"|"output", "before", "after"}``,
    dims as ints or names, in graph order."""
    def dims(tensor) -> list | None:
        return None if tensor.shape is None else [d if d is None or isinstance(d, str) else int(d) for d in tensor.shape]

    changes = []
    for kind, old, new in (("input", original.inputs, pruned.inputs), ("output", original.outputs, pruned.outputs)):
        after = {t.name: t for t in new}
        for t in old:
            if t.name in after and not isinstance(t, gs.Constant) and dims(t) != dims(after[t.name]):
                changes.append({"name": t.name, "kind": kind, "before": dims(t), "after": dims(after[t.name])})
    return changes


def note_kept_whole(analysis: Analysis, selection) -> None:
    """Groups the size guard kept whole become blocked groups with its reason (for the reports)."""
    for group in analysis.groups:
        why = selection.kept_whole.get(group.id)
        if why and why not in group.reasons:
            group.reasons.append(why)


def check_not_bigger(params_before: int, params_after: int) -> None:
    """The last line of defence of "never make a model bigger": the selection's size guard
    should make this unreachable; if it ever fails, nothing is written."""
    if params_after > params_before:
        raise RewriteError(f"refusing to write a pruned model with more parameters than its input "
                           f"({params_before} -> {params_after}); please report this model")


def export_checked(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export with the input model's metadata, and validate fully.

    A model read with external data, or too large for one protobuf, is exported with its large
    weights deferred (references without bytes, see ``io.export_deferred``): the proto stays
    small, and ``io.save_model`` streams the weights from ``graph`` to the data file.
    """
    with _folds_written_back(graph), _encoded_written_back(graph):
        deferred = uses_external_data(template) or has_external_values(graph) \
            or weights_nbytes(graph) > EXTERNAL_DATA_THRESHOLD
        model = export_deferred(graph) if deferred else gs.export_onnx(graph, do_type_check=False)
    copy_model_fields(template, model)
    model.ir_version = max(template.ir_version, 4)
    try:
        if deferred:
            check_deferred(model, full_check=True)
        else:
            _check_like_input(model, template)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RewriteError(f"pruned model failed validation: {first}") from exc
    return model


def _unchanged_fold(tensor) -> bool:
    """A constant folded from a much smaller computation (``normalize.FoldRecord``) that neither
    it nor its inputs have changed since."""
    record = getattr(tensor, "fold_record", None)
    if not isinstance(tensor, gs.Constant) or record is None or tensor._values is not record.values:
        return False
    return all(not isinstance(t, gs.Constant) or getattr(t, "_values", None) is v or _unchanged_fold(t)
               for t, v in zip(record.inputs, record.input_values))


@contextlib.contextmanager
def _folds_written_back(graph: gs.Graph):
    """While exporting, every unchanged large folded constant is its computation again (then the
    graph is as it was): folding for the analysis never makes a model's file bigger."""
    swaps, added, made = [], [], {}
    outputs = {id(t) for t in graph.outputs}

    def computed(tensor: gs.Constant) -> gs.Variable:
        if id(tensor) not in made:
            record = tensor.fold_record
            inputs = [computed(t) if _unchanged_fold(t) else t for t in record.inputs]
            out = gs.Variable(tensor.name, dtype=tensor.dtype, shape=list(tensor.shape))
            added.append(gs.Node(record.op, f"{tensor.name}__compute", dict(record.attrs), inputs, [out],
                                 domain=record.domain))
            made[id(tensor)] = out
        return made[id(tensor)]

    top = {id(n) for n in graph.nodes}
    for node in list(graph.nodes):
        for i, tensor in enumerate(node.inputs):
            if id(tensor) not in outputs and _unchanged_fold(tensor) \
                    and all(id(reader) in top for reader, _ in readers(tensor)):
                swaps.append((node, i, tensor))
    with _inputs_replaced(graph, [(node, i, computed(tensor)) for node, i, tensor in swaps], added):
        yield


@contextlib.contextmanager
def _inputs_replaced(graph: gs.Graph, replacements: list, added: list[gs.Node]):
    """For the duration, each ``(node, index, tensor)`` input replaced and the ``added`` nodes in
    the graph; then the graph as it was (its outputs included)."""
    originals = [(node, i, node.inputs[i]) for node, i, _ in replacements]
    outputs = list(graph.outputs)
    for node, i, tensor in replacements:
        node.inputs[i] = tensor
    if added:
        graph.nodes.extend(added)
        graph.toposort()
    try:
        yield
    finally:
        for node, i, tensor in originals:
            node.inputs[i] = tensor
        for node in added:
            graph.nodes.remove(node)
            node.inputs.clear()
            node.outputs.clear()
        graph.outputs = outputs


@contextlib.contextmanager
def _encoded_written_back(graph: gs.Graph):
    """While exporting, every constant stored in another form (a quantized weight: its ``codec``,
    attached by ``normalize``) is the computation that decodes it again, e.g. a DequantizeLinear
    of its integer values; then the graph is as it was."""
    swaps, added, made, existing = [], [], {}, None
    for node in list(graph.nodes):
        for i, tensor in enumerate(node.inputs):
            codec = getattr(tensor, "codec", None)
            if not isinstance(tensor, gs.Constant) or codec is None:
                continue
            if existing is None:
                existing = {t.name: t for n in graph.nodes for t in n.inputs if isinstance(t, gs.Constant)}
            if id(tensor) not in made:
                decoder, made[id(tensor)] = codec.computation(tensor, existing)
                added.append(decoder)
            swaps.append((node, i, made[id(tensor)]))
    with _inputs_replaced(graph, swaps, added):
        yield


def export_unchanged(template: onnx.ModelProto) -> tuple[gs.Graph, onnx.ModelProto]:
    """The input model as it is, not normalized, with its external weights deferred so that
    ``io.save_model`` writes them beside the output (nothing pruned, the data must still move)."""
    from onnx_graphsurgeon.logger import G_LOGGER

    with G_LOGGER.suppress(G_LOGGER.ERROR):
        graph = gs.import_onnx(template)
    lazy_external_values(graph)
    model = export_deferred(graph)
    copy_model_fields(template, model)
    return graph, model


def _check_like_input(model: onnx.ModelProto, template: onnx.ModelProto) -> None:
    """``onnx.checker`` in full mode, but never stricter than the input passes: where the input
    fails a level (an output of run-time rank fails both), the output may fail it only with the
    same first error; the weaker levels it must still pass."""
    for full_check in (True, False):
        error = _check_error(model, full_check)
        if error is None:
            return
        input_error = _check_error(template, full_check)
        if input_error is None:
            raise error
        if full_check is False and _first_line(input_error) != _first_line(error):
            raise error


def _check_error(model: onnx.ModelProto, full_check: bool) -> Exception | None:
    try:
        onnx.checker.check_model(model, full_check=full_check)
        return None
    except Exception as exc:
        return exc


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
