"""Residual blocks: branches that join the stream only through an Add, removable whole.

A join node (an op whose spec has a ``join``: Add) with inputs ``p`` and ``q``, where ``q``
depends on ``p`` and not the other way round, adds a residual branch ``q = f(p, side inputs)``
to the stream ``p``. Removing the branch makes the join's output ``p`` itself. The branch is
found from the graph alone: its nodes are those both downstream of ``p`` and upstream of ``q``;
what goes is what nothing else reads once ``q`` is no longer read (a tensor the rest of the
graph also uses stays, with the nodes computing it). A block is refused, with the reason, where
``q`` is read elsewhere, where the join's output would change shape or type without ``q``, or
where the walk back from ``q`` through ops that keep zeros (``OpSpec.zero_out``) does not end at
weight layers inside the branch: the oracle, "the branch's output projection zeroed equals the
branch removed", must hold for every removable block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..ops import spec_for


@dataclass(frozen=True)
class Block:
    """One residual branch, by names (part of the frozen plan)."""

    id: int
    #: the join node (the residual Add) and which of its inputs is the stream
    join: str
    stream_input: int
    #: the stream tensor and the branch's output tensor
    stream: str
    branch: str
    #: nodes removed with the branch, in graph order
    nodes: tuple[str, ...]
    #: (node, input) constants whose zeroing zeroes the branch's output (the oracle)
    zeroed: tuple[tuple[str, int], ...]
    #: the weight layers that end the zero walk (the branch's output projection)
    projection: tuple[str, ...]
    params: int = 0
    flops: int = 0
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def removable(self) -> bool:
        return not self.reasons

    @property
    def name(self) -> str:
        return f"{self.join} ({', '.join(self.projection[:2]) or 'no projection'})"


class _Graph:
    """Producers and readers of the top-level graph's tensors, subgraph reads included."""

    def __init__(self, graph: gs.Graph):
        self.nodes = list(graph.nodes)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer: dict[str, gs.Node] = {}
        self.readers: dict[str, list[gs.Node]] = {}
        for node in self.nodes:
            for t in node.outputs:
                self.producer[t.name] = node
            for t in node.inputs:
                if not isinstance(t, gs.Constant) and t.name:
                    self.readers.setdefault(t.name, []).append(node)
            for name in _implicit_reads(node):
                self.readers.setdefault(name, []).append(node)
        self.outputs = {t.name for t in graph.outputs}

    def upstream(self, tensor: str) -> set[int]:
        """Indices of the nodes ``tensor`` depends on."""
        seen, todo = set(), [tensor]
        while todo:
            node = self.producer.get(todo.pop())
            if node is None or self.index[id(node)] in seen:
                continue
            seen.add(self.index[id(node)])
            todo.extend(t.name for t in node.inputs if not isinstance(t, gs.Constant) and t.name)
        return seen

    def downstream(self, tensor: str) -> set[int]:
        """Indices of the nodes that depend on ``tensor`` (through a fused join's other outputs
        too where ``tensor`` is its sum: they are functions of it)."""
        seen, todo = set(), [tensor]
        node = self.producer.get(tensor)
        join = spec_for(node).join if node is not None else None
        if join is not None and join.stream_output is not None and _output_index(node, tensor) == join.stream_output:
            todo = [t.name for t in node.outputs if t.name]
        while todo:
            for node in self.readers.get(todo.pop(), []):
                if self.index[id(node)] not in seen:
                    seen.add(self.index[id(node)])
                    todo.extend(t.name for t in node.outputs)
        return seen


def _has_weights(spec) -> bool:
    """A weight layer: float, integer (MatMulInteger, QLinearConv...) or packed (MatMulNBits)."""
    return spec.weight_layer or spec.integer_layer or spec.packed_params is not None


def _output_index(node: gs.Node, tensor: str) -> int | None:
    return next((i for i, t in enumerate(node.outputs) if t.name == tensor), None)


def _implicit_reads(node: gs.Node) -> set[str]:
    """Tensors a control-flow node's subgraphs read from the enclosing graph."""
    names: set[str] = set()
    for attr in node.attrs.values():
        for sub in attr if isinstance(attr, list) else [attr]:
            if isinstance(sub, gs.Graph):
                inner = {t.name for n in sub.nodes for t in n.outputs} | {t.name for t in sub.inputs}
                for n in sub.nodes:
                    names |= {t.name for t in n.inputs if not isinstance(t, gs.Constant) and t.name not in inner}
                    names |= _implicit_reads(n) - inner
    return names


def find_blocks(graph: gs.Graph) -> list[Block]:
    """Every residual branch of ``graph`` (normalized, shapes inferred) with a weight layer in it,
    removable or refused with its reasons, in graph order."""
    graph.toposort()  # producers before readers (as the analysis leaves it)
    g = _Graph(graph)
    blocks: list[Block] = []
    joins: set[int] = set()  # the joins of the blocks found so far
    for node in g.nodes:
        join = spec_for(node).join
        if join is None or len(node.inputs) <= max(join.inputs):
            continue
        found = _branch_of(g, node, join.inputs)
        if found is None:
            continue
        stream_input, branch_input, branch_nodes = found
        if _broadcast(node.inputs[stream_input], node.outputs[0]):
            continue  # the "stream" is widened by the other input: a mask added to scores, not a residual
        if not any(_has_weights(spec_for(g.nodes[i])) for i in branch_nodes):
            continue  # x + f(x) without weights (a scaled copy): nothing to remove
        if branch_nodes & joins:
            continue  # the "branch" spans whole blocks (a mask added to later scores): not one block
        joins.add(g.index[id(node)])
        block = _make_block(g, node, stream_input, branch_input, branch_nodes, len(blocks))
        if join.refuse:
            block = _refused(block, f"{node.op} '{node.name}': {join.refuse}")
        elif join.check is not None and (why := join.check(node, g.outputs)):
            block = _refused(block, why)
        blocks.append(block)
    return blocks


def _branch_of(g: _Graph, node: gs.Node, inputs: tuple[int, int]) -> tuple[int, int, set[int]] | None:
    """(stream input, branch input, branch node indices) where one join input depends on the other."""
    a, b = (node.inputs[i] for i in inputs)
    if isinstance(a, gs.Constant) or isinstance(b, gs.Constant) or a.name == b.name:
        return None
    for stream_input, branch_input in (inputs, inputs[::-1]):
        nodes = g.upstream(node.inputs[branch_input].name) & g.downstream(node.inputs[stream_input].name)
        if nodes:
            return stream_input, branch_input, nodes
    return None


def _make_block(g: _Graph, join: gs.Node, stream_input: int, branch_input: int, branch_nodes: set[int],
                bid: int) -> Block:
    stream, branch = join.inputs[stream_input], join.inputs[branch_input]
    reasons = []
    readers = g.readers.get(branch.name, [])
    if branch.name in g.outputs or len(readers) != 1:
        others = [f"{n.op} '{n.name}'" for n in readers if n is not join] or ["a graph output"]
        reasons.append(f"the branch's output '{branch.name}' is also read by {', '.join(others[:3])}")
    reasons.extend(_shape_reasons(stream, join.outputs[0]))
    spec = spec_for(join).join
    outs = [join.outputs[0]] + [t for i, t in enumerate(join.outputs) if i == spec.stream_output and t.name]
    inside = [n for out in outs for n in g.readers.get(out.name, []) if all(t is not out for t in n.inputs)]
    if inside:
        reasons.append(f"the join's output is read inside the subgraph of {inside[0].op} '{inside[0].name}'")
    dead = _dead_nodes(g, branch.name, branch_nodes, join)
    zeroed, projection, why = _zero_walk(g, branch.name, dead)
    if why:
        reasons.append(why)
    else:  # a bias fused into the join belongs to the branch
        zeroed.extend((join.name, i) for i in spec.bias
                      if i < len(join.inputs) and isinstance(join.inputs[i], gs.Constant))
    nodes = [g.nodes[i] for i in sorted(dead)]
    bias = [join.inputs[i] for i in spec.bias if i < len(join.inputs) and isinstance(join.inputs[i], gs.Constant)]
    return Block(bid, join.name, stream_input, stream.name, branch.name, tuple(n.name for n in nodes),
                 tuple(zeroed), tuple(projection), _params(g, nodes, bias), _flops(nodes), tuple(reasons))


def _shape_reasons(stream: gs.Tensor, out: gs.Tensor) -> list[str]:
    """Without the branch the join's output is the stream: same shape and type, or refused."""
    if stream.shape is None or out.shape is None:
        return [f"the shape of '{stream.name}' or '{out.name}' is unknown: without the branch the output "
                "could change shape"]
    if list(stream.shape) != list(out.shape) or any(d is None for d in stream.shape):
        return [f"the stream's shape ({_dims(stream.shape)}) is not known to be the output's "
                f"({_dims(out.shape)}): without the branch the output could change shape"]
    if stream.dtype is not None and out.dtype is not None and np.dtype(stream.dtype) != np.dtype(out.dtype):
        return [f"the join changes the type of '{stream.name}'"]
    return []


def _broadcast(stream: gs.Tensor, out: gs.Tensor) -> bool:
    """Known, different shapes: the join broadcasts the stream."""
    if stream.shape is None or out.shape is None or len(stream.shape) != len(out.shape):
        return stream.shape is not None and out.shape is not None
    return any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(stream.shape, out.shape))


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape)


def _dead_nodes(g: _Graph, branch: str, branch_nodes: set[int], join: gs.Node) -> set[int]:
    """The branch's nodes nothing reads once the join no longer reads ``branch``."""
    dead: set[int] = set()
    for i in sorted(branch_nodes, reverse=True):  # readers come after their producers
        node = g.nodes[i]
        alive = False
        for t in node.outputs:
            if t.name in g.outputs:
                alive = True
            for reader in g.readers.get(t.name, []):
                if reader is join and t.name == branch:
                    continue
                if g.index[id(reader)] not in dead:
                    alive = True
        if not alive:
            dead.add(i)
    return dead


def _zero_walk(g: _Graph, branch: str, dead: set[int]) -> tuple[list, list, str | None]:
    """The constants that zero ``branch`` (walking back through ops that keep zeros to the
    branch's weight layers), or the reason there are none."""
    zeroed, projection, todo, seen = [], [], [branch], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        node = g.producer.get(name)
        if node is None or g.index[id(node)] not in dead:
            return [], [], f"the branch's output is not produced by weight layers inside the branch ('{name}')"
        zero_out = spec_for(node).zero_out
        path = zero_out(node) if zero_out is not None else None
        if path is None:
            return [], [], (f"{node.op} '{node.name}' lies between the branch's output projection and the "
                            "residual Add and does not keep zeros")
        zeroed.extend((node.name, i) for i in path.zeroed)
        if not path.through:
            projection.append(node.name)
        todo.extend(node.inputs[i].name for i in path.through)
    return zeroed, projection, None


def _params(g: _Graph, nodes: list[gs.Node], bias: list[gs.Constant]) -> int:
    """Elements of the floating-point constants only removed nodes read (and of integer layers'
    weights and biases: float-equivalent, one parameter per integer), and of the bias fused into
    the join (it goes with the branch) where nothing else reads it."""
    from ..dtypes import is_floating

    removed = {id(n) for n in nodes}
    readers: dict[int, list[gs.Node]] = {}
    for node in g.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant):
                readers.setdefault(id(t), []).append(node)
    total, seen = 0, set()
    for node in nodes:
        spec = spec_for(node)
        packed = spec.packed_params(node) if spec.packed_params is not None else {}
        if spec.integer_layer:
            packed = {i: int(np.prod(node.inputs[i].shape, dtype=np.int64)) for i in spec.parameter_inputs or ()
                      if i < len(node.inputs) and isinstance(node.inputs[i], gs.Constant)} | packed
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant) and id(t) not in seen and (is_floating(t.dtype) or i in packed):
                seen.add(id(t))
                if all(id(r) in removed for r in readers[id(t)]):
                    total += packed[i] if i in packed else int(np.prod(t.shape, dtype=np.int64))
    for t in bias:
        if id(t) not in seen and len(readers[id(t)]) == 1 and is_floating(t.dtype):
            total += int(np.prod(t.shape, dtype=np.int64))
    return total


def _flops(nodes: list[gs.Node]) -> int:
    from ..metrics import node_flops

    return int(sum(node_flops(n) for n in nodes))


def _refused(block: Block, reason: str) -> Block:
    from dataclasses import replace

    return replace(block, reasons=(reason, *block.reasons))
