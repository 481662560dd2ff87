"""The pruning plan: what the rewrite does for any removal, as plain frozen data.

The analysis runs once on the normalized graph; its weight sites and edits are then frozen here,
keyed by node names (unique after normalization) and atom ids, with no graph objects in them. A
plan can be applied to any copy of the graph it was made from (``rewrite.apply``), as many
times as a search needs, without analysing again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .state import Edit, KeepFn


def frozen_atoms(atoms) -> np.ndarray:
    """A read-only int64 copy: a plan's atom arrays cannot be changed behind its back."""
    out = np.array(atoms, dtype=np.int64)
    out.flags.writeable = False
    return out


def node_name(node) -> str:
    """The name a plan keys a node by (accepts a name already)."""
    return node if isinstance(node, str) else node.name


@dataclass(frozen=True, eq=False)
class Cut:
    """A constant input of node ``node`` whose ``axis`` is indexed by ``atoms``, to be sliced."""

    node: str
    input_index: int
    axis: int
    atoms: np.ndarray
    #: weight_out / weight_in / bias / bn_scale / bn_shift / bn_stat / channel_const
    role: str


@dataclass(frozen=True, eq=False)
class Plan:
    """Every cut and edit of one analysis, and the union-find root of every atom."""

    cuts: tuple[Cut, ...]
    edits: tuple[Edit, ...]
    root: np.ndarray
    #: the residual blocks found (``analysis.blocks.Block``), by id; removed ones by ``apply``
    blocks: tuple = ()

    def keep_fn(self, removed_roots: set[int]) -> KeepFn:
        """The ``keep`` mask function for a set of removed classes."""
        removed = np.zeros(len(self.root), dtype=bool)
        if removed_roots:
            removed[np.isin(self.root, np.fromiter(removed_roots, dtype=np.int64))] = True
        return lambda atoms: ~removed[atoms]

    def io_cuts(self, removed_roots: set[int]) -> dict[str, tuple[int, np.ndarray]]:
        """Graph inputs and outputs whose shape the removal changes (KV-cache I/O, see
        ``analysis.cache_io``): name -> (axis, kept mask). ``cache_io.cut_feeds`` turns the
        original's inputs (or outputs) into the pruned model's."""
        from .edits import SetIOShape

        keep = self.keep_fn(removed_roots)
        cuts = {}
        for edit in self.edits:
            if isinstance(edit, SetIOShape):
                mask = keep(edit.atoms)
                if not mask.all():
                    cuts[edit.tensor] = (edit.axis, mask)
        return cuts


def make_plan(sites, edits, root: np.ndarray, blocks=()) -> Plan:
    """Freeze the sites (``SliceSite``, holding nodes), edits and blocks an analysis collected."""
    cuts = tuple(Cut(s.node.name, int(s.input_index), int(s.axis), frozen_atoms(s.atoms), s.role) for s in sites)
    return Plan(cuts, tuple(edits), frozen_atoms(root), tuple(blocks))
