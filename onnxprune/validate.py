"""Structural checks of a loaded model: what would make the pruned model (or the input itself)
fail to load in ONNX Runtime, refused up front with the tensor, node or field named.

onnx's own checker is stricter than real models allow (it wants every output's shape, for one),
so these are the specific faults ONNX Runtime refuses: tensors whose data disagrees with their
dims and type, negative dims, unknown data types, a domain imported twice, an IR version too new,
no graph outputs, a tensor read but never defined or defined twice, a cycle, model-local
functions that call themselves, a node that breaks its operator's schema.
"""

from __future__ import annotations

from typing import Collection, Iterable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper

from .errors import BadInputError

_KNOWN_TYPES = frozenset(v for v in TensorProto.DataType.values() if v != TensorProto.UNDEFINED)
#: Element types packed several to a byte (raw data) or to an int32 (int32_data): elements per unit.
_PACKED = {getattr(TensorProto, n): per for n, per in (("INT4", 2), ("UINT4", 2), ("FLOAT4E2M1", 2),
                                                       ("INT2", 4), ("UINT2", 4)) if hasattr(TensorProto, n)}
#: Six-bit floats: their raw packing is not one we check.
_UNCHECKED_RAW = frozenset(getattr(TensorProto, n) for n in ("FLOAT6E2M3", "FLOAT6E3M2") if hasattr(TensorProto, n))


def check_structure(model: onnx.ModelProto, where: str = "model", extension_ops: Collection[str] = ()) -> None:
    """Raise :class:`BadInputError` naming the first structural fault (see the module's doc).
    ``extension_ops``: default-domain op types ONNX Runtime defines beyond ONNX (no schema to check)."""
    _check_opset_imports(model.opset_import, where)
    for function in model.functions:
        _check_opset_imports(function.opset_import, f"{where}: function '{function.name}'")
    if not model.graph.output:
        raise BadInputError(f"{where}: the graph has no outputs")
    for tensor in external_data_helper._get_all_tensors(model):
        check_tensor(tensor, where)
    if model.ir_version > onnx.IR_VERSION:
        raise BadInputError(f"{where}: ir_version {model.ir_version} is newer than this onnx reads "
                            f"(up to {onnx.IR_VERSION})")
    _check_value_types(model.graph, where)
    _check_dag(model.graph, where)
    _check_functions_not_recursive(model, where)
    _check_nodes(model, where, extension_ops)
    _check_types(model, where)


def _check_opset_imports(imports: Iterable[onnx.OperatorSetIdProto], where: str) -> None:
    seen = set()
    for imp in imports:
        domain = "" if imp.domain in ("", "ai.onnx") else imp.domain
        if domain in seen:
            raise BadInputError(f"{where}: opset_import imports domain '{domain or 'ai.onnx'}' more than once")
        seen.add(domain)


def check_tensor(t: TensorProto, where: str = "model") -> None:
    """Known data type, no negative dim, and (for data in the proto) as much data as dims and type need."""
    if t.data_type not in _KNOWN_TYPES:
        raise BadInputError(f"{where}: tensor '{t.name}' has unknown data type {t.data_type}")
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise BadInputError(f"{where}: tensor '{t.name}' has a negative dimension {dims}")
    if t.data_location == TensorProto.EXTERNAL:  # checked against its file when loaded
        return
    count = int(np.prod(dims, dtype=object)) if dims else 1
    type_name = TensorProto.DataType.Name(t.data_type)
    if t.HasField("raw_data"):
        if t.data_type == TensorProto.STRING:
            raise BadInputError(f"{where}: tensor '{t.name}' is a STRING tensor with raw_data (strings are stored "
                                "in string_data)")
        need = _raw_nbytes(t.data_type, count)
        if need is not None and len(t.raw_data) != need:
            raise BadInputError(f"{where}: tensor '{t.name}' has {len(t.raw_data)} bytes of raw_data, its dims "
                                f"{dims} and type {type_name} need {need}")
        return
    field = onnx.helper.tensor_dtype_to_field(t.data_type)
    have = len(getattr(t, field))
    need = _typed_count(t.data_type, count)
    if have != need:
        raise BadInputError(f"{where}: tensor '{t.name}' holds {have} values in {field}, its dims {dims} and type "
                            f"{type_name} need {need}")


def _raw_nbytes(data_type: int, count: int) -> int | None:
    if data_type in _PACKED:
        return -(-count // _PACKED[data_type])
    if data_type in _UNCHECKED_RAW:
        return None
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def _typed_count(data_type: int, count: int) -> int:
    if data_type in _PACKED:
        return -(-count // _PACKED[data_type])
    if data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        return 2 * count
    return count


def _check_value_types(graph: onnx.GraphProto, where: str) -> None:
    """Declared element types of inputs, outputs and value_info are types ONNX knows."""
    for kind, infos in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
        for info in infos:
            for elem_type in _elem_types(info.type):
                if elem_type not in _KNOWN_TYPES and elem_type != TensorProto.UNDEFINED:
                    raise BadInputError(f"{where}: {kind} '{info.name}' has unknown data type {elem_type}")
    for sub in _subgraphs(graph.node):
        _check_value_types(sub, where)


def _elem_types(tp: onnx.TypeProto) -> Iterator[int]:
    which = tp.WhichOneof("value")
    if which in ("tensor_type", "sparse_tensor_type"):
        yield getattr(tp, which).elem_type
    elif which in ("sequence_type", "optional_type"):
        yield from _elem_types(getattr(tp, which).elem_type)
    elif which == "map_type":
        yield tp.map_type.key_type
        yield from _elem_types(tp.map_type.value_type)


def _subgraphs(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.GraphProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
            elif attr.type == onnx.AttributeProto.GRAPHS:
                yield from attr.graphs


def _check_dag(graph: onnx.GraphProto, where: str, outer: frozenset[str] = frozenset()) -> None:
    """Every tensor defined once and before it is read (inputs, initializers, node outputs, or an
    enclosing graph's names for a subgraph), every graph output defined, and no node depending on
    its own output; in every subgraph too."""
    declared: set[str] = set()
    for kind, names in (("graph input", [t.name for t in graph.input]),
                        ("initializer", [t.name for t in graph.initializer])):
        seen = set()
        for name in names:
            if name in seen:
                raise BadInputError(f"{where}: {kind} '{name}' is declared twice")
            seen.add(name)
        declared |= seen
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.output:
            if not name:
                continue
            if name in producer or name in declared:
                raise BadInputError(f"{where}: tensor '{name}' is produced twice (node '{_node_name(node)}' and "
                                    f"{_node_name(graph.node[producer[name]]) if name in producer else 'an input'})")
            producer[name] = i
    scope = outer | declared | set(producer)
    for node in graph.node:
        missing = next((n for n in node.input if n and n not in scope), None)
        if missing is not None:
            raise BadInputError(f"{where}: node '{_node_name(node)}' reads tensor '{missing}', which no input, "
                                "initializer or node defines")
    for out in graph.output:
        if out.name not in scope:
            raise BadInputError(f"{where}: graph output '{out.name}' is not produced by any node")
    deps = [{producer[n] for n in _node_reads(node) if n in producer} for node in graph.node]
    cycle = _find_cycle(deps)
    if cycle is not None:
        names = " <- ".join(_node_name(graph.node[i]) for i in cycle)  # each reads from the next
        raise BadInputError(f"{where}: the graph has a cycle ({names})")
    for sub in _subgraphs(graph.node):
        _check_dag(sub, where, frozenset(scope))


def _check_nodes(model: onnx.ModelProto, where: str, extension_ops: Collection[str] = ()) -> None:
    """Each node of an ONNX domain against its operator's schema (attributes and their types,
    input and output counts), as ONNX Runtime checks it. Nodes holding subgraphs are left to
    the nodes inside them; custom domains and model-local functions have no schema here."""
    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = model.ir_version
    ctx.opset_imports = {("" if i.domain == "ai.onnx" else i.domain): i.version for i in model.opset_import}
    known = onnx.defs.C.schema_version_map()
    local = {(f.domain, f.name) for f in model.functions}
    nodes = list(model.graph.node)
    while nodes:
        node = nodes.pop()
        subgraphs = list(_subgraphs([node]))
        if subgraphs:
            nodes.extend(n for g in subgraphs for n in g.node)
            continue
        domain = "" if node.domain == "ai.onnx" else node.domain
        if (domain and domain not in known) or (node.domain, node.op_type) in local:
            continue
        if not domain and node.op_type in extension_ops and not _has_schema(node.op_type, ctx.opset_imports[""]):
            continue
        try:
            onnx.checker.check_node(node, ctx)
        except onnx.checker.ValidationError as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
            raise BadInputError(f"{where}: node '{_node_name(node)}' ({node.op_type}): {text}") from exc


def _has_schema(op_type: str, version: int) -> bool:
    try:
        onnx.defs.get_schema(op_type, version, "")
    except onnx.defs.SchemaError:
        return False
    return True


def _node_reads(node: onnx.NodeProto) -> Iterator[str]:
    """A node's inputs, and the outer-scope names its subgraphs read (they run inside it)."""
    yield from node.input
    for sub in _subgraphs([node]):
        for inner in sub.node:
            yield from _node_reads(inner)


def _node_name(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type} -> {node.output[0] if node.output else '?'}"


def _find_cycle(deps: list[set[int]]) -> list[int] | None:
    """A cycle in a dependency graph (node -> the nodes it depends on), iteratively; None if none."""
    state = [0] * len(deps)  # 0 unseen, 1 on the current path, 2 done
    for start in range(len(deps)):
        if state[start]:
            continue
        path, stack = [start], [iter(sorted(deps[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(deps[nxt])))
    return None


#: What ONNX type inference says of type errors (ONNX Runtime refuses them); shape conflicts it
#: merges with a warning, so they are not among these.
_TYPE_ERRORS = ("[TypeInferenceError]", "has unsupported type")
#: Initializers at least this large are given to type inference as typed inputs, not copied.
_COPY_LIMIT = 4096


def _check_types(model: onnx.ModelProto, where: str) -> None:
    """ONNX type inference, strict, as ONNX Runtime runs it when loading: an attribute naming no
    valid type, an input of a type the operator does not take. Conflicting *shapes* are left
    alone (ONNX Runtime merges them with a warning). Runs on a skeleton that holds no large
    weights, so it costs little whatever the model's size."""
    skeleton = onnx.ModelProto(ir_version=max(model.ir_version, 4))
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    inputs = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL and len(t.raw_data) < _COPY_LIMIT and t.ByteSize() < _COPY_LIMIT:
            graph.initializer.append(t)
        elif t.name not in inputs:
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True, data_prop=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        text = str(exc).strip()
        if any(marker in text for marker in _TYPE_ERRORS):
            first = text.splitlines()[0].replace("[ShapeInferenceError] Inference error(s): ", "")
            raise BadInputError(f"{where}: type error: {first}") from exc


def _check_functions_not_recursive(model: onnx.ModelProto, where: str) -> None:
    keys = [(f.domain, f.name) for f in model.functions]
    index = {key: i for i, key in enumerate(keys)}
    deps = []
    for f in model.functions:
        calls = set()
        nodes = list(f.node)
        while nodes:
            node = nodes.pop()
            if (node.domain, node.op_type) in index:
                calls.add(index[(node.domain, node.op_type)])
            for sub in _subgraphs([node]):
                nodes.extend(sub.node)
        deps.append(calls)
    cycle = _find_cycle(deps)
    if cycle is not None:
        names = " -> ".join(f"{keys[i][0]}:{keys[i][1]}" for i in cycle)
        raise BadInputError(f"{where}: model-local function calls itself ({names})")
