"""Constants that the rewrite slices, and what slicing them stores: the plan the size guard reads.

The rewrite stores one copy of a constant per distinct cut among its readers: readers cut the
same way share one copy, and a reader left whole keeps the original. A constant that several
nodes read and that the removal cuts differently for them (a weight shared by nine convs, one
of them pruned) is *un-shared*: the copies can hold more weight than the pruning removes.
:func:`growth_guard` finds the groups whose removal would do that, before anything is rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .state import KeepFn, SliceSite


@dataclass
class ConstantPlan:
    """One constant the rewrite may slice: its readers and, per reader, the sites that cut it."""

    tensor: gs.Constant
    #: (node, input index) of every reader, in the graph's order
    readers: list[tuple[gs.Node, int]]
    #: the slice sites of each reader (empty: the reader keeps the whole constant)
    cuts: list[list[SliceSite]]
    #: groups whose channels cut it
    groups: set[int] = field(default_factory=set)

    @property
    def elements(self) -> int:
        return int(np.prod(self.tensor.shape, dtype=np.int64))

    def stored(self, keep: KeepFn) -> int:
        """Elements the rewrite stores for this constant under ``keep``: one copy per distinct cut."""
        versions: dict[tuple, int] = {}
        for sites in self.cuts:
            dims = list(self.tensor.shape)
            signature = []
            for site in sites:
                mask = keep(site.atoms)
                if not mask.all():
                    signature.append((site.axis, mask.tobytes()))
                    dims[site.axis] = int(mask.sum())
            key = tuple(sorted(signature))
            versions.setdefault(key, int(np.prod(dims, dtype=np.int64)))
        return sum(versions.values())

    @property
    def diverges(self) -> bool:
        """Whether some removal cuts it differently for two readers (so it can be un-shared)."""
        return len(self.cuts) > 1 and len({_cut_signature(c) for c in self.cuts}) > 1


def _cut_signature(sites: list[SliceSite]) -> tuple:
    return tuple(sorted((s.axis, tuple(s.atoms.tolist())) for s in sites))


def readers(tensor: gs.Tensor) -> list[tuple[gs.Node, int]]:
    """Every (node, input index) reading ``tensor`` (a node reading it twice counts twice)."""
    found, seen = [], set()
    for node in tensor.outputs:
        if id(node) in seen:
            continue
        seen.add(id(node))
        found.extend((node, i) for i, t in enumerate(node.inputs) if t is tensor)
    return found


def constant_plans(graph: gs.Graph, sites: list[SliceSite], root: np.ndarray,
                   group_of: dict[int, int]) -> list[ConstantPlan]:
    """The plan of every floating-point constant that some site slices (what ``count_params`` counts).

    ``site.atoms`` are mapped to their classes (``root``) so that two readers cut by the same
    channels compare equal; ``group_of`` maps a class to its group id. A constant that is also
    a graph output has one more reader that keeps it whole.
    """
    from ..metrics import is_floating

    outputs = {id(t) for t in graph.outputs}
    by_tensor: dict[int, ConstantPlan] = {}
    for site in sites:
        tensor = site.node.inputs[site.input_index]
        if not isinstance(tensor, gs.Constant) or not is_floating(tensor.dtype):
            continue
        plan = by_tensor.get(id(tensor))
        if plan is None:
            reads = readers(tensor)
            cuts = [[] for _ in range(len(reads) + (id(tensor) in outputs))]
            plan = by_tensor[id(tensor)] = ConstantPlan(tensor, reads, cuts)
        position = next((i for i, (n, k) in enumerate(plan.readers) if n is site.node and k == site.input_index),
                        None)
        if position is None:  # a reader the tensor does not list: count it all the same
            plan.readers.append((site.node, site.input_index))
            plan.cuts.append([])
            position = len(plan.cuts) - 1
        rooted = SliceSite(site.node, site.input_index, site.axis, root[site.atoms], site.role)
        plan.cuts[position].append(rooted)
        plan.groups.update(group_of[int(r)] for r in np.unique(rooted.atoms).tolist())
    return list(by_tensor.values())
