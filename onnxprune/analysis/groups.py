"""The propagation engine and the groups it finds.

Runs every node's rule in topological order, then turns the union-find classes of atoms into
groups: the classes seen at exactly the same tensors form one group (e.g. all output channels of
one conv and everything tied to them by residual adds). A group is prunable unless one of its
classes was blocked; blocked groups keep their reasons for the report.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import BadInputError
from ..ops import rule_for, spec_for, spec_key as rule_key
from .blocks import Block, find_blocks
from .sharing import ConstantPlan, constant_plans
from .plan import Plan, make_plan
from .state import SliceSite, State, UnsupportedPattern

log = logging.getLogger(__name__)

#: Set (to anything but "" or "0") to make a rule that raises anything but ``UnsupportedPattern``
#: fail the analysis instead of refusing the node's channels; the test suite sets it, so a bug
#: in a rule fails a test rather than passing as a refused group.
STRICT_RULES_ENV = "ONNXPRUNE_STRICT_RULES"
#: What a rule's bug may raise: refused (with the reason "internal error") outside strict mode.
RULE_BUGS = (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError)


def strict_rules() -> bool:
    return os.environ.get(STRICT_RULES_ENV, "") not in ("", "0")


@dataclass
class Group:
    """Channels that must lose the same indices together."""

    id: int
    #: union-find root of each removable channel, in channel order
    classes: list[int]
    #: (tensor name, axis) positions the channels occupy
    positions: list[tuple[str, int]]
    #: nodes whose weights are sliced for these channels
    nodes: list[str]
    #: nodes that create the channels (weight layers)
    sources: list[str]
    reasons: list[str] = field(default_factory=list)
    params: int = 0
    flops: int = 0
    #: "channels", or "heads" when the classes are whole attention heads (a Reshape split them)
    kind: str = "channels"

    @property
    def channels(self) -> int:
        return len(self.classes)

    @property
    def prunable(self) -> bool:
        return not self.reasons and self.channels > 1

    @property
    def name(self) -> str:
        return ", ".join(self.sources[:3]) + (f" (+{len(self.sources) - 3})" if len(self.sources) > 3 else "")


@dataclass
class Analysis:
    """Everything the scoring, selection and rewrite need to know about a graph."""

    graph: gs.Graph
    state: State
    groups: list[Group]
    #: root of every atom
    root: np.ndarray
    #: every floating-point constant a site slices, with its readers (what the rewrite will store)
    plans: list[ConstantPlan] = field(default_factory=list)
    #: groups that must keep one count (group ids), e.g. every layer's heads where a config file
    #: beside the model fixes it (``model_config.tie_groups``); the selection enforces it
    ties: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def sites(self) -> list[SliceSite]:
        return self.state.sites

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @cached_property
    def blocks(self) -> list[Block]:
        """The residual branches that can be removed whole, and those refused (``analysis.blocks``)."""
        return find_blocks(self.graph)

    @property
    def removable_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.removable]

    @cached_property
    def plan(self) -> Plan:
        """The frozen pruning plan (cuts, edits and blocks by node name) that ``rewrite.apply`` applies."""
        return make_plan(self.state.sites, self.state.edits, self.root, self.blocks)

    def keep_fn(self, removed_roots: set[int]):
        """The ``keep`` mask function for a set of removed classes."""
        return self.plan.keep_fn(removed_roots)


def analyze_graph(graph: gs.Graph, opset: int, cache_io: bool = True) -> Analysis:
    """Propagate channels through ``graph`` (normalized: constants folded, shapes inferred).
    ``cache_io``: KV-cache graph inputs/outputs may change shape (``analysis.cache_io``)."""
    state = State(opset=opset, graph=graph, cache_io_allowed=cache_io)
    graph.toposort()
    for node in graph.nodes:
        _run_rule(node, state)
    for use in state.count_uses:
        if not use.checked:
            state.block(use.atoms, f"the channel count is read by Shape into the shape of {use.node.op} "
                                   f"'{use.node.name}', which does not carry these channels")
    for out in graph.outputs:
        tr = state.track(out)
        if tr is None:
            continue
        if not state.is_cache_name(out):
            state.block(tr.atoms, f"reaches graph output '{out.name}'")
            continue
        try:  # a KV-cache output may change shape (analysis.cache_io)
            state.cache_io(out, tr.axis, tr.atoms)
        except UnsupportedPattern as exc:
            state.block(tr.atoms, f"reaches graph output '{out.name}': {exc}")
    state.finish_cache_io()
    root = state.roots(np.arange(len(state.parent), dtype=np.int64)) if state.parent else np.zeros(0, np.int64)
    groups = _build_groups(state, root)
    _attach_costs(state, root, groups)
    group_of = {r: g.id for g in groups for r in g.classes}
    return Analysis(graph, state, groups, root, constant_plans(graph, state.sites, root, group_of))


def _run_rule(node: gs.Node, state: State) -> None:
    tracked_inputs = [(i, t) for i, t in enumerate(node.inputs) if state.track(t) is not None]
    implicit = [state.track(t) for t in _outer_scope_inputs(node)]
    for tr in implicit:
        if tr is not None:
            state.block(tr.atoms, f"used inside the subgraph of {node.op} '{node.name}'")
    rule = rule_for(node)
    if rule is None:
        for _, t in tracked_inputs:
            state.block(state.track(t).atoms, f"op {rule_key(node)} ('{node.name}') is not supported")
        return
    if rule.channel_inputs is not None:
        for i, t in tracked_inputs:
            if i not in rule.channel_inputs:
                state.block(state.track(t).atoms,
                            f"{node.op} '{node.name}' input {i} carries channels where none are expected")
    n_blocks = len(state.blocks)
    try:
        rule.fn(node, state)
    except UnsupportedPattern as exc:  # the rule's own refusal, with its reason
        _refuse_node(node, state, tracked_inputs, n_blocks, str(exc))
    except RULE_BUGS as exc:
        if strict_rules():
            raise
        # A bug in the rule: the channels it touches are refused rather than the whole analysis
        # failing, and the reason says it is a bug, not something the model did.
        log.warning("internal error in the rule for %s ('%s'): %s: %s; its channels are refused",
                    node.op, node.name, type(exc).__name__, exc)
        log.debug("the rule's traceback", exc_info=True)
        _refuse_node(node, state, tracked_inputs, n_blocks,
                     f"internal error in the rule for {node.op}: {type(exc).__name__}: {exc}")


def _refuse_node(node: gs.Node, state: State, tracked_inputs: list, n_blocks: int, reason: str) -> None:
    """Block every tracked input of ``node`` with ``reason``, dropping what its rule had done."""
    del state.blocks[n_blocks:]
    for _, t in tracked_inputs:
        state.block(state.track(t).atoms, f"{reason} ('{node.name}')")
    for out in node.outputs:  # nothing downstream may believe in half-mapped channels
        state.tracks.pop(out.name, None)


def _outer_scope_inputs(node: gs.Node) -> list:
    """Tensors a control-flow node's subgraphs read from the enclosing graph."""
    found = []
    for attr in node.attrs.values():
        graphs = attr if isinstance(attr, list) else [attr]
        for sub in graphs:
            if not isinstance(sub, gs.Graph):
                continue
            produced = {t.name for n in sub.nodes for t in n.outputs} | {t.name for t in sub.inputs}
            for n in sub.nodes:
                for t in n.inputs:
                    if not isinstance(t, gs.Constant) and t.name and t.name not in produced:
                        found.append(t)
                found.extend(_outer_scope_inputs(n))
    return found


def _build_groups(state: State, root: np.ndarray) -> list[Group]:
    positions: dict[int, set] = defaultdict(set)
    for name, tr in state.tracks.items():
        for r in np.unique(root[tr.atoms]).tolist():
            positions[r].add((name, tr.axis))
    reasons: dict[int, list[str]] = defaultdict(list)
    for atoms, reason in state.blocks:
        for r in np.unique(root[atoms]).tolist():
            if reason not in reasons[r]:
                reasons[r].append(reason)
    site_nodes: dict[int, list[str]] = defaultdict(list)
    for site in state.sites:
        for r in np.unique(root[site.atoms]).tolist():
            if site.node.name not in site_nodes[r]:
                site_nodes[r].append(site.node.name)
    first_atom: dict[int, int] = {}
    sources: dict[int, list[str]] = defaultdict(list)
    for atom, r in enumerate(root.tolist()):
        first_atom.setdefault(r, atom)
        src = state.atom_source[atom]
        if src not in sources[r]:
            sources[r].append(src)

    head_roots = {r for atoms in state.heads for r in root[atoms].tolist()}
    by_signature: dict[frozenset, list[int]] = defaultdict(list)
    for r in sorted(first_atom, key=first_atom.get):
        by_signature[frozenset(positions[r])].append(r)
    groups = []
    for classes in by_signature.values():
        group_reasons, nodes, srcs = [], [], []
        for r in classes:
            for lst, src in ((group_reasons, reasons[r]), (nodes, site_nodes[r]), (srcs, sources[r])):
                lst.extend(x for x in src if x not in lst)
        poss = sorted(positions[classes[0]])
        kind = "heads" if any(r in head_roots for r in classes) else "channels"
        groups.append(Group(len(groups), classes, poss, nodes, srcs, group_reasons, kind=kind))
    return groups


def _attach_costs(state: State, root: np.ndarray, groups: list[Group]) -> None:
    """Params and FLOPs that each group's channels account for (all of them removed)."""
    from ..metrics import node_flops

    group_of = {r: g for g in groups for r in g.classes}
    flops_cache: dict[str, int] = {}
    for site in state.sites:
        values = site.node.inputs[site.input_index]
        dims = values.shape
        packed = spec_for(site.node).packed_params  # packed integer weights: the parameters they hold
        size = packed(site.node).get(site.input_index) if packed is not None else None
        per_index = int(np.prod(dims, dtype=np.int64) if size is None else size) // max(dims[site.axis], 1)
        flops = 0
        if site.role in ("weight_out", "weight_in"):
            if site.node.name not in flops_cache:
                flops_cache[site.node.name] = node_flops(site.node)
            flops = flops_cache[site.node.name] / max(dims[site.axis], 1)
        for r in root[site.atoms].tolist():
            g = group_of[r]
            g.params += per_index
            g.flops += flops
    for g in groups:
        g.flops = int(round(g.flops))


#: what ``--prune`` can name: kinds of group, and whole residual blocks
KINDS = ("heads", "channels", "blocks")


def restrict(analysis: Analysis, kinds) -> None:
    """Leave only groups of the given kinds prunable (``--prune heads``, ``--prune channels``);
    the others are kept whole, with the reason in the report. Blocks are removed only when
    ``blocks`` is named (the selection reads the kinds)."""
    kinds = set(kinds)
    unknown = kinds - set(KINDS)
    if unknown:
        raise BadInputError(f"unknown kind(s) to prune: {', '.join(sorted(unknown))} (choose from {', '.join(KINDS)})")
    for group in analysis.groups:
        if group.kind not in kinds and group.prunable:
            group.reasons.append(f"{group.kind} are not pruned (--prune {','.join(k for k in KINDS if k in kinds)})")
